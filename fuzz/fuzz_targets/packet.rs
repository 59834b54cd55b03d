//! Fuzzes the zero-copy transport packet view with raw bytes taken as a
//! transport packet (BTH through ICRC).
//!
//! Checks the wire module's contract: once `Packet::new_checked` has
//! succeeded, no accessor panics (BTH fields, header length, payload, pad,
//! ICRC, every extension header view and its getters), and
//! `PacketRepr::parse` never panics. Also: payload + pad + headers + ICRC
//! cover the buffer exactly, and the ICRC helpers never panic on the same
//! bytes taken as an IP datagram, with `fill` followed by `verify` always
//! succeeding.
#![no_main]

use libfuzzer_sys::fuzz_target;
use transport::wire::{HeaderSet, ICRC_LEN, Mtu, Packet, PacketRepr, icrc};

fuzz_target!(|data: &[u8]| {
    // The same bytes as an IP datagram, for the ICRC helpers.
    let _ = icrc::compute(data);
    let _ = icrc::verify(data);
    let mut copy = data.to_vec();
    if icrc::fill(&mut copy).is_ok() {
        icrc::verify(&copy).expect("verify after fill");
    }

    let Ok(p) = Packet::new_checked(data) else {
        return;
    };
    let bth = p.bth();
    let _ = (
        bth.opcode(),
        bth.solicited(),
        bth.mig_req(),
        bth.pad_count(),
        bth.tver(),
        bth.pkey(),
        bth.fecn(),
        bth.becn(),
        bth.resv6(),
        bth.dest_qp(),
        bth.ack_req(),
        bth.resv7(),
        bth.psn(),
    );
    let info = p.info();
    let header_len = p.header_len();
    assert_eq!(header_len, 12 + info.headers.len());
    for (which, len, _) in HeaderSet::ORDER {
        if let Some(h) = p.ext_header(which) {
            assert_eq!(h.len(), len);
        }
    }
    if let Some(h) = p.reth() {
        let _ = (h.va(), h.rkey(), h.dma_len());
    }
    if let Some(h) = p.aeth() {
        let _ = (h.syndrome_byte(), h.syndrome(), h.msn());
    }
    if let Some(h) = p.atomic_eth() {
        let _ = (h.va(), h.rkey(), h.swap_add(), h.compare());
    }
    if let Some(h) = p.atomic_ack_eth() {
        let _ = h.orig();
    }
    if let Some(h) = p.deth() {
        let _ = (h.qkey(), h.src_qp());
    }
    if let Some(h) = p.imm_dt() {
        let _ = h.imm();
    }
    if let Some(h) = p.ieth() {
        let _ = h.rkey();
    }
    if let Some(h) = p.feth() {
        let _ = (h.placement_type(), h.selectivity_level());
    }
    let payload = p.payload();
    let pad = p.pad();
    let _ = p.icrc();
    assert_eq!(payload.len(), p.payload_len());
    assert_eq!(pad.len(), usize::from(bth.pad_count()));
    assert_eq!(header_len + payload.len() + pad.len() + ICRC_LEN, data.len());

    if let Ok(repr) = PacketRepr::parse(&p) {
        assert_eq!(repr.payload_len, payload.len());
        assert_eq!(repr.header_len(), header_len);
        for mtu in Mtu::ALL {
            let _ = repr.check_mtu(mtu);
        }
    }
});
