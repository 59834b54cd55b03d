//! Fuzzes the outer RoCEv2 framing: arbitrary bytes are parsed both as an
//! Ethernet frame (`RoceFrame::parse_ethernet`) and as a bare IP datagram
//! (`RoceFrame::parse_ip`), and every frame that parses is taken through
//! the transport layer (`Packet::new_checked`, `PacketRepr::parse`, the
//! ICRC check, `check_mtu` for every MTU).
//!
//! Properties asserted, beyond "never panics":
//! - `RoceFrame::locate_ip` finds what `parse_ip` finds (the same
//!   datagram, IP header length, ECN bits and transport packet) or fails
//!   with the same error;
//! - the transport packet `ib` is the tail of the IP datagram `l3`;
//! - the outer headers round-trip: `FrameRepr::emit` writes exactly
//!   `header_len()` bytes in front of the original transport packet, the
//!   result parses again to the same transport packet, and emitting the
//!   re-parsed headers gives the same bytes; `icrc::fill` then
//!   `verify_icrc` on the rebuilt frame succeeds;
//! - for a packet that `PacketRepr::parse` accepts: `buffer_len()` equals
//!   the original transport packet's length, `check()` accepts the repr,
//!   `emit` into a buffer of exactly `buffer_len()` bytes succeeds, and,
//!   with the original payload copied in, re-parsing the emitted bytes
//!   gives an equal repr.
#![no_main]

use libfuzzer_sys::fuzz_target;
use transport::wire::{Mtu, Packet, PacketRepr, frame::RoceFrame, icrc};

fuzz_target!(|data: &[u8]| {
    if let Ok(f) = RoceFrame::parse_ethernet(data) {
        check_frame(&f);
    }
    let located = RoceFrame::locate_ip(data);
    match RoceFrame::parse_ip(data) {
        Ok(f) => {
            let l =
                located.unwrap_or_else(|e| panic!("locate_ip failed where parse_ip did not: {e}"));
            assert_eq!(
                (l.l3, l.ip_len, l.ecn, l.ib),
                (f.l3, f.repr.ip.header_len(), f.repr.ip.ecn(), f.ib),
                "locate_ip and parse_ip disagree"
            );
            assert_eq!(l.udp_header().len(), 8);
            check_frame(&f);
        }
        Err(e) => assert_eq!(located, Err(e), "locate_ip and parse_ip fail differently"),
    }
});

fn reparse(repr_has_ethernet: bool, bytes: &[u8]) -> RoceFrame<'_> {
    let r = if repr_has_ethernet {
        RoceFrame::parse_ethernet(bytes)
    } else {
        RoceFrame::parse_ip(bytes)
    };
    r.unwrap_or_else(|e| panic!("re-parsing emitted frame {bytes:02x?} failed: {e}"))
}

fn check_frame(f: &RoceFrame<'_>) {
    let _ = f.verify_icrc();
    assert!(f.l3.ends_with(f.ib), "ib is not the tail of l3");

    check_outer_round_trip(f);
    check_transport(f.ib);
}

fn check_outer_round_trip(f: &RoceFrame<'_>) {
    let hlen = f.repr.header_len();
    let mut buf = vec![0u8; hlen + f.ib.len()];
    let n = match f.repr.emit(&mut buf, f.ib.len()) {
        Ok(n) => n,
        Err(e) => panic!("emit of parsed outer headers {:?} failed: {e}", f.repr),
    };
    assert_eq!(n, hlen);
    buf[hlen..].copy_from_slice(f.ib);
    let eth = f.repr.ethernet.is_some();
    let g = reparse(eth, &buf);
    assert_eq!(g.ib, f.ib, "transport packet changed in the round trip");
    assert_eq!(g.repr.header_len(), hlen);
    let mut again = vec![0u8; buf.len()];
    g.repr.emit(&mut again, g.ib.len()).expect("second emit");
    again[hlen..].copy_from_slice(g.ib);
    assert_eq!(again, buf, "emit(parse(emit(x))) != emit(x)");

    // The rebuilt frame takes an ICRC and then verifies.
    let ip_off = f.repr.ip_offset();
    if icrc::fill(&mut buf[ip_off..]).is_ok() {
        reparse(eth, &buf).verify_icrc().expect("verify after fill");
    }
}

fn check_transport(ib: &[u8]) {
    let Ok(pkt) = Packet::new_checked(ib) else {
        return;
    };
    let Ok(repr) = PacketRepr::parse(&pkt) else {
        return;
    };
    for mtu in Mtu::ALL {
        let _ = repr.check_mtu(mtu);
    }
    repr.check()
        .unwrap_or_else(|e| panic!("parsed repr fails check(): {e}: {repr:?}"));
    assert_eq!(
        repr.buffer_len(),
        ib.len(),
        "buffer_len() != original length: {repr:?}"
    );

    let mut buf = vec![0u8; repr.buffer_len()];
    repr.emit(&mut buf)
        .unwrap_or_else(|e| panic!("emit into buffer_len() bytes failed: {e}: {repr:?}"));
    let mut out = Packet::new_checked(&mut buf[..])
        .unwrap_or_else(|e| panic!("emitted packet fails new_checked: {e}: {repr:?}"));
    out.payload_mut().copy_from_slice(pkt.payload());
    let back = PacketRepr::parse(&out)
        .unwrap_or_else(|e| panic!("emitted packet fails parse: {e}: {repr:?}"));
    assert_eq!(back, repr, "emit/parse round trip changed the repr");
    assert_eq!(out.payload(), pkt.payload());
}
