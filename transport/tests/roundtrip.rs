//! Property tests of the transport packet format: every valid repr
//! round-trips through emit and parse, and arbitrary bytes never make the
//! parser panic, while whatever parses re-emits to the same repr.

use proptest::prelude::*;
use transport::wire::{
    AethRepr, AethSyndrome, AtomicAckEthRepr, AtomicEthRepr, BthRepr, DethRepr, ExtHeaders,
    FethRepr, HeaderSet, IethRepr, ImmDtRepr, Mtu, OPCODE_TABLE, Opcode, Packet, PacketRepr,
    PayloadRule, RethRepr, pad_len,
};

fn opcode() -> impl Strategy<Value = u8> {
    let codes: Vec<u8> = OPCODE_TABLE.iter().flatten().map(|i| i.code).collect();
    proptest::sample::select(codes)
}

prop_compose! {
    fn bth_for(op: u8)(
        solicited: bool, mig_req: bool, pkey: u16, fecn: bool, becn: bool,
        dest_qp in 0u32..=0xff_ffff, ack_req: bool, psn in 0u32..=0xff_ffff,
    ) -> BthRepr {
        BthRepr { opcode: Opcode(op), solicited, mig_req, pad_count: 0, pkey, fecn, becn, dest_qp, ack_req, psn }
    }
}

prop_compose! {
    fn ext_for(set: HeaderSet)(
        qkey: u32, src_qp in 0u32..=0xff_ffff, plt in 0u8..16, sel in 0u8..4,
        va: u64, rkey: u32, dma_len: u32, swap_add: u64, compare: u64,
        syn in (0u8..0x80), msn in 0u32..=0xff_ffff, orig: u64, imm: u32, inv: u32,
    ) -> ExtHeaders {
        let on = |h| set.contains(h);
        ExtHeaders {
            deth: on(HeaderSet::DETH).then_some(DethRepr { qkey, src_qp }),
            feth: on(HeaderSet::FETH).then_some(FethRepr { placement_type: plt, selectivity_level: sel }),
            reth: on(HeaderSet::RETH).then_some(RethRepr { va, rkey, dma_len }),
            atomic_eth: on(HeaderSet::ATOMIC_ETH).then_some(AtomicEthRepr { va, rkey, swap_add, compare }),
            aeth: on(HeaderSet::AETH).then_some(AethRepr { syndrome: AethSyndrome::from_byte(syn), msn }),
            atomic_ack_eth: on(HeaderSet::ATOMIC_ACK_ETH).then_some(AtomicAckEthRepr { orig }),
            imm_dt: on(HeaderSet::IMM_DT).then_some(ImmDtRepr { imm }),
            ieth: on(HeaderSet::IETH).then_some(IethRepr { rkey: inv }),
        }
    }
}

fn packet_repr() -> impl Strategy<Value = PacketRepr> {
    opcode().prop_flat_map(|op| {
        let info = Opcode(op).info().unwrap();
        let payload = match info.payload {
            PayloadRule::None => Just(0usize).boxed(),
            PayloadRule::Exactly(n) => Just(n).boxed(),
            PayloadRule::UpToMtu => (0usize..=4096).boxed(),
        };
        (bth_for(op), ext_for(info.headers), payload).prop_map(|(bth, ext, payload_len)| {
            PacketRepr {
                bth,
                ext,
                payload_len,
            }
        })
    })
}

proptest! {
    #[test]
    fn valid_reprs_round_trip(repr in packet_repr(), fill: u8) {
        prop_assert!(repr.check().is_ok());
        let mut buf = vec![fill; repr.buffer_len()];
        repr.emit(&mut buf).unwrap();
        let pkt = Packet::new_checked(&buf[..]).unwrap();
        prop_assert_eq!(pkt.payload_len(), repr.payload_len);
        prop_assert!(pkt.pad().iter().all(|&b| b == 0));
        let mut parsed = PacketRepr::parse(&pkt).unwrap();
        prop_assert_eq!(usize::from(parsed.bth.pad_count), pad_len(repr.payload_len));
        parsed.bth.pad_count = 0;
        prop_assert_eq!(parsed, repr);
        // MTU checks are total: they answer, never panic.
        for mtu in Mtu::ALL {
            let _ = parsed.check_mtu(mtu);
        }
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
        let Ok(pkt) = Packet::new_checked(&bytes[..]) else { return Ok(()) };
        let _ = (pkt.payload(), pkt.pad(), pkt.icrc(), pkt.header_len());
        let _ = (pkt.reth().map(|h| h.va()), pkt.aeth().map(|h| h.syndrome()));
        let _ = (pkt.deth().map(|h| h.qkey()), pkt.atomic_eth().map(|h| h.compare()));
        let _ = (pkt.atomic_ack_eth().map(|h| h.orig()), pkt.imm_dt().map(|h| h.imm()));
        let _ = (pkt.ieth().map(|h| h.rkey()), pkt.feth().map(|h| h.placement_type()));
        if let Ok(repr) = PacketRepr::parse(&pkt) {
            prop_assert_eq!(repr.buffer_len(), bytes.len());
            let mut again = vec![0u8; repr.buffer_len()];
            repr.emit(&mut again).unwrap();
            let start = repr.header_len();
            again[start..start + repr.payload_len].copy_from_slice(pkt.payload());
            let reparsed = PacketRepr::parse(&Packet::new_checked(&again[..]).unwrap()).unwrap();
            prop_assert_eq!(reparsed, repr);
        }
    }

    #[test]
    fn emit_never_panics_on_short_buffers(repr in packet_repr(), short in 0usize..64) {
        let len = repr.buffer_len().saturating_sub(short + 1);
        let mut buf = vec![0u8; len];
        prop_assert!(repr.emit(&mut buf).is_err());
    }
}
