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

/// The TCP payloads of one perftest connection, in order, with whether
/// the client sent each.
fn perftest_session(client_port: u16) -> Vec<(bool, Vec<u8>)> {
    read_frames("rxe-with-handshakes.pcap")
        .into_iter()
        .filter_map(|(_, f)| {
            let s = SlicedPacket::from_ethernet(&f).ok()?;
            let Some(TransportSlice::Tcp(t)) = s.transport else {
                return None;
            };
            let from_client = t.source_port() == client_port;
            let ours = from_client || t.destination_port() == client_port;
            (ours && !t.payload().is_empty()).then(|| (from_client, t.payload().to_vec()))
        })
        .collect()
}

#[test]
fn perftest_session_decodes_message_by_message() {
    use backend::oob::{
        BwReport, DONE, PERFTEST_VERSION, encode_mtu, encode_u32, parse_mtu, parse_perftest_version,
    };
    use transport::wire::Mtu;

    let msgs = perftest_session(39060);
    let mut it = msgs.iter();
    let mut next = |from_client: bool| {
        let (c, m) = it.next().expect("message");
        assert_eq!(*c, from_client, "direction of {m:?}");
        m.clone()
    };
    // Versions, client first.
    for side in [true, false] {
        let v = next(side);
        assert_eq!(&v[..], &PERFTEST_VERSION[..]);
        assert_eq!(parse_perftest_version(&v), Ok(6.06));
    }
    // System data: page size, then cache line, each way.
    for value in [4096, 64] {
        for side in [true, false] {
            assert_eq!(next(side), encode_u32(value));
        }
    }
    // MTU: ibv_mtu 3 (1024), each way.
    for side in [true, false] {
        let m = next(side);
        assert_eq!(parse_mtu(&m), Ok(Mtu::Mtu1024));
        assert_eq!(m, encode_mtu(Mtu::Mtu1024));
    }
    // Three key exchanges before traffic, one after.
    for _ in 0..4 {
        for side in [true, false] {
            let r = next(side);
            assert_eq!(&PerftestDest::parse(&r).unwrap().to_wire()[..], &r[..]);
        }
    }
    // Five report exchanges; only the client's values mean anything.
    let mut client = [[0u8; 8]; 5];
    for slot in &mut client {
        *slot = next(true).try_into().unwrap();
        let _server_junk = next(false);
    }
    let rep = BwReport::parse(&client);
    assert_eq!((rep.size, rep.iters), (64, 5));
    assert!(rep.bw_avg > 0.0 && rep.bw_peak >= rep.bw_avg);
    let rate = rep.bw_avg * f64::from(1 << 20) / 64.0 / 1e6;
    assert!(
        (rate - rep.msg_rate).abs() < 1e-9,
        "{rate} vs {}",
        rep.msg_rate
    );
    assert_eq!(rep.to_wire(), client);
    // The close handshake: one more key exchange, then "done" both ways.
    for side in [true, false] {
        let r = next(side);
        assert!(PerftestDest::parse(&r).is_ok());
    }
    let rest: Vec<_> = it.collect();
    assert_eq!(rest.len(), 2);
    assert!(rest.iter().all(|(_, m)| &m[..] == DONE));
}
