//! The TCP address records of the stock tools, as captured between two
//! Linux hosts running `ibv_rc_pingpong` and perftest 4.5: every record
//! parses, re-formats byte for byte, and names the QPs whose RoCEv2
//! traffic follows in the same capture.

use std::collections::BTreeSet;

use backend::oob::{PerftestDest, PingpongDest};
use etherparse::{SlicedPacket, TransportSlice};
use roce_tests::read_frames;
use transport::{device::Gid, wire::frame::RoceFrame};

/// Payloads of TCP segments to or from port 18515, in capture order.
fn handshake_payloads() -> Vec<Vec<u8>> {
    read_frames("rxe-with-handshakes.pcap")
        .into_iter()
        .filter_map(|(_, f)| {
            let s = SlicedPacket::from_ethernet(&f).ok()?;
            let Some(TransportSlice::Tcp(t)) = s.transport else {
                return None;
            };
            let ours = t.destination_port() == 18515 || t.source_port() == 18515;
            (ours && !t.payload().is_empty()).then(|| t.payload().to_vec())
        })
        .collect()
}

#[test]
fn pingpong_records_round_trip() {
    let recs: Vec<_> = handshake_payloads()
        .into_iter()
        .filter(|p| p.len() == PingpongDest::LEN)
        .collect();
    assert!(recs.len() >= 4, "{} pingpong records", recs.len());
    let hosts = [
        Gid::from_ip("10.77.0.1".parse().unwrap()),
        Gid::from_ip("10.77.0.2".parse().unwrap()),
    ];
    for r in &recs {
        let d = PingpongDest::parse(r).unwrap();
        assert_eq!(&d.to_wire()[..], &r[..]);
        assert!(hosts.contains(&d.gid));
        assert_eq!(d.lid, 0);
    }
    let first = PingpongDest::parse(&recs[0]).unwrap();
    assert_eq!((first.qpn, first.psn), (0x11, 0x5463ed));
}

#[test]
fn perftest_records_round_trip_and_match_the_traffic() {
    let recs: Vec<_> = handshake_payloads()
        .into_iter()
        .filter(|p| p.len() == PerftestDest::LEN)
        .collect();
    assert!(recs.len() >= 8, "{} perftest records", recs.len());
    let mut qpns = BTreeSet::new();
    for r in &recs {
        let d = PerftestDest::parse(r).unwrap();
        assert_eq!(&d.to_wire()[..], &r[..]);
        qpns.insert(d.qpn);
    }
    // Every QP the records announce carries RoCEv2 traffic in the capture.
    let seen: BTreeSet<u32> = read_frames("rxe-with-handshakes.pcap")
        .iter()
        .filter_map(|(_, f)| RoceFrame::parse_ethernet(f).ok())
        .map(|rf| u32::from_be_bytes([0, rf.ib[5], rf.ib[6], rf.ib[7]]))
        .collect();
    for q in &qpns {
        assert!(seen.contains(q), "QP {q:#x} announced but never used");
    }
}
