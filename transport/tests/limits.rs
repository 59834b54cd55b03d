//! Limits, timers and replies that the random tests only reach by chance,
//! each placed on purpose: the max_rd_atomic bound on READs in flight
//! (set through SQD), rnr_retry 7 retrying forever at the responder's
//! min_rnr_timer, a duplicate atomic answered from the responder's cache,
//! ACK coalescing, the AckReq spacing, UD's privileged Q_Key, and the
//! largest message.

mod common;

use common::{drain, setup};
use transport::{
    sim::{LinkConfig, Pair},
    verbs::{
        AhAttr, QpAttr, QpState, QpType, RecvWr, SendOp, SendWr, Sge, UdDest, WcOpcode, WcStatus,
    },
    wire::Mtu,
};

const SEC: u64 = 1_000_000_000;
const MEM: usize = 1 << 20;

/// Posts `n` 64-byte `op`s on A: the i-th from A's `i * 64` to B's
/// `0x8000 + i * 64`, with wr_id i.
fn post_64(s: &mut common::Setup, n: u64, op: SendOp) {
    for i in 0..n {
        let sge = [Sge {
            addr: i * 64,
            length: 64,
            lkey: s.a.key,
        }];
        s.pair
            .a
            .post_send(
                s.a.qp,
                &SendWr::new(i, op, &sge).remote(0x8000 + i * 64, s.b.key),
            )
            .unwrap();
    }
}

/// Eight READs posted at once; returns the most READ requests A had put
/// on the link beyond the responses B had (A sends nothing else here).
fn most_reads_in_flight(limit: Option<u8>) -> u64 {
    let mut s = setup(QpType::Rc, LinkConfig::clean(5_000), 1, Mtu::Mtu1024, MEM);
    if let Some(n) = limit {
        // The send side's limit may change in SQD (IBTA 11.2.4.2).
        for a in [
            QpAttr {
                state: Some(QpState::Sqd),
                ..Default::default()
            },
            QpAttr {
                state: Some(QpState::Sqd),
                max_rd_atomic: Some(n),
                ..Default::default()
            },
            QpAttr {
                state: Some(QpState::Rts),
                ..Default::default()
            },
        ] {
            s.pair.a.modify_qp(s.a.qp, &a, 0).unwrap();
        }
    }
    post_64(&mut s, 8, SendOp::Read);
    let mut most = 0;
    s.pair.drive(SEC, |p| {
        most = most.max(p.launched.0.saturating_sub(p.launched.1));
        false
    });
    let wa = drain(&mut s.pair.a, s.a.cq);
    assert_eq!(wa.len(), 8);
    assert!(wa.iter().all(|w| w.status == WcStatus::Success), "{wa:?}");
    most
}

#[test]
fn max_rd_atomic_bounds_reads_in_flight() {
    assert_eq!(most_reads_in_flight(Some(1)), 1);
    assert_eq!(most_reads_in_flight(Some(3)), 3);
    // The simulated link's default (16) lets all eight go at once.
    assert_eq!(most_reads_in_flight(None), 8);
}

/// rnr_retry 7 means retry for ever (IBTA 9.7.5.2.8, as rxe): with no
/// receive posted the SEND is retried far more than 7 times, each retry
/// waiting the responder's min_rnr_timer (code 1: 10 µs, set by
/// `sim::connect`), and it completes once a receive is posted.
#[test]
fn rnr_retry_7_retries_for_ever_at_the_rnr_timer() {
    let mut s = setup(QpType::Rc, LinkConfig::clean(1_000), 2, Mtu::Mtu1024, MEM);
    let sge = [Sge {
        addr: 0,
        length: 16,
        lkey: s.a.key,
    }];
    s.pair
        .a
        .post_send(s.a.qp, &SendWr::new(1, SendOp::Send, &sge))
        .unwrap();
    let mut sends = Vec::new();
    s.pair.drive(s.pair.now + 10_000_000, |p| {
        if sends.len() < p.launched.0 as usize {
            sends.push(p.now);
        }
        false
    });
    assert!(drain(&mut s.pair.a, s.a.cq).is_empty());
    assert_eq!(s.pair.a.qp(s.a.qp).unwrap().state(), QpState::Rts);
    let c = s.pair.a.qp(s.a.qp).unwrap().counters();
    assert!(c.rcvd_rnr_err > 100, "{c:?}");
    assert_eq!(c.rnr_nak_retry_err, 0);
    assert!(sends.len() > 100, "{} sends", sends.len());
    // Each retry waits at least the RNR timer after the NAK, which itself
    // comes a link delay after the request.
    let min_gap = sends.windows(2).map(|w| w[1] - w[0]).min().unwrap();
    assert!(min_gap >= 10_000, "retried after {min_gap} ns");
    assert!(min_gap < 10_000 + 10_000, "retried after {min_gap} ns");
    let rsge = [Sge {
        addr: 0x8000,
        length: 64,
        lkey: s.b.key,
    }];
    s.pair
        .b
        .post_recv(
            s.b.qp,
            &RecvWr {
                wr_id: 7,
                sges: &rsge,
            },
        )
        .unwrap();
    s.pair.drive(s.pair.now + SEC, |_| false);
    let wa = drain(&mut s.pair.a, s.a.cq);
    assert_eq!(common::statuses(&wa), vec![(1, WcStatus::Success)]);
    assert_eq!(drain(&mut s.pair.b, s.b.cq).len(), 1);
}

/// The atomic ACK is lost: the requester retransmits the FETCH_ADD, and the
/// responder answers the duplicate from its cache with the original value
/// instead of adding again.
#[test]
fn a_duplicate_atomic_is_answered_from_the_cache() {
    let mut s = setup(QpType::Rc, LinkConfig::clean(1_000), 3, Mtu::Mtu1024, MEM);
    s.pair.b.memory_mut().as_mut_slice()[0x100..0x108].copy_from_slice(&40u64.to_ne_bytes());
    // B's first packet on the link is the atomic ACK.
    s.pair.drop_nth.push((false, 1));
    let sge = [Sge {
        addr: 0x10,
        length: 8,
        lkey: s.a.key,
    }];
    s.pair
        .a
        .post_send(
            s.a.qp,
            &SendWr::new(5, SendOp::FetchAdd { add: 2 }, &sge).remote(0x100, s.b.key),
        )
        .unwrap();
    s.pair.drive(10 * SEC, |_| false);
    let wa = drain(&mut s.pair.a, s.a.cq);
    assert_eq!(common::statuses(&wa), vec![(5, WcStatus::Success)]);
    assert_eq!(s.pair.launched, (2, 2), "one retransmission, one replay");
    let got = u64::from_ne_bytes(s.pair.a.memory().as_slice()[0x10..0x18].try_into().unwrap());
    assert_eq!(got, 40, "the original value");
    let now = u64::from_ne_bytes(
        s.pair.b.memory().as_slice()[0x100..0x108]
            .try_into()
            .unwrap(),
    );
    assert_eq!(now, 42, "added once");
    assert_eq!(s.pair.b.qp(s.b.qp).unwrap().counters().duplicate_request, 1);
}

/// Sixteen WRITEs arrive together; the responder acknowledges them with
/// far fewer ACKs (a later ACK replaces one still queued), and every one
/// completes.
#[test]
fn acks_coalesce() {
    let mut s = setup(QpType::Rc, LinkConfig::clean(1_000), 4, Mtu::Mtu1024, MEM);
    post_64(&mut s, 16, SendOp::Write);
    s.pair.drive(SEC, |_| false);
    let wa = drain(&mut s.pair.a, s.a.cq);
    assert_eq!(wa.len(), 16);
    assert!(wa.iter().all(|w| w.status == WcStatus::Success));
    assert_eq!(s.pair.launched.0, 16);
    assert!(s.pair.launched.1 < 4, "{} ACKs", s.pair.launched.1);
    let deferred = s.pair.b.qp(s.b.qp).unwrap().counters().ack_deferred;
    assert_eq!(
        deferred + s.pair.launched.1,
        16,
        "each WRITE's ACK sent or merged"
    );
}

/// The requester asks for an ACK (BTH AckReq) on the last packet of
/// every message and on every 64th packet inside a long one, counting
/// afresh after each request. A 1000-packet WRITE asks 16 times (15 in
/// its body, then at its end); one of 129 asks at 64, 128 and 129 (a
/// request every 65 would give 2). WRITEs of 70 and then 60 packets ask
/// 3 times (a count carried over the first end would give 4). The
/// responder answers each request with an ACK, sent or merged into a
/// later one still queued, so B's ACKs plus its merges count the
/// requests.
#[test]
fn ack_requested_every_64_packets_and_at_each_end() {
    let mut asked = Vec::new();
    for messages in [&[1000u32][..], &[129], &[70, 60]] {
        let mut s = setup(QpType::Rc, LinkConfig::clean(1_000), 7, Mtu::Mtu1024, MEM);
        for (i, &packets) in messages.iter().enumerate() {
            let sge = [Sge {
                addr: 0,
                length: packets * 1024,
                lkey: s.a.key,
            }];
            let wr = SendWr::new(i as u64, SendOp::Write, &sge).remote(0, s.b.key);
            s.pair.a.post_send(s.a.qp, &wr).unwrap();
        }
        s.pair.drive(SEC, |_| false);
        let wa = drain(&mut s.pair.a, s.a.cq);
        assert_eq!(wa.len(), messages.len());
        assert!(wa.iter().all(|w| w.status == WcStatus::Success), "{wa:?}");
        let sent: u32 = messages.iter().sum();
        assert_eq!(s.pair.launched.0, u64::from(sent));
        let merged = s.pair.b.qp(s.b.qp).unwrap().counters().ack_deferred;
        asked.push(s.pair.launched.1 + merged);
    }
    assert_eq!(asked, vec![16, 3, 3]);
}

/// A UD work request whose Q_Key has the high bit set sends with the QP's
/// own Q_Key instead (IBTA 10.2.5, as rxe); one without it uses its own.
#[test]
fn ud_privileged_qkey_sends_the_qps_own() {
    let mut s = setup(QpType::Ud, LinkConfig::clean(1_000), 5, Mtu::Mtu1024, MEM);
    for i in 0..2 {
        let r = [Sge {
            addr: 0x8000 + i * 0x1000,
            length: 0x1000,
            lkey: s.b.key,
        }];
        s.pair
            .b
            .post_recv(s.b.qp, &RecvWr { wr_id: i, sges: &r })
            .unwrap();
    }
    let sge = [Sge {
        addr: 0,
        length: 32,
        lkey: s.a.key,
    }];
    let dest = |qkey| UdDest {
        ah: AhAttr {
            dgid: Pair::gid_b(),
            hop_limit: 64,
            ..Default::default()
        },
        remote_qpn: s.b.qp,
        remote_qkey: qkey,
    };
    // Both QPs hold Q_Key 0x11111111 (`sim::connect`).
    for (id, qkey) in [(1, 0x8000_0000), (2, 0x8000_1234), (3, 0x0000_1234)] {
        let mut wr = SendWr::new(id, SendOp::Send, &sge);
        wr.ud = Some(dest(qkey));
        s.pair.a.post_send(s.a.qp, &wr).unwrap();
    }
    s.pair.drive(SEC, |_| false);
    assert_eq!(drain(&mut s.pair.a, s.a.cq).len(), 3);
    let wb = drain(&mut s.pair.b, s.b.cq);
    assert_eq!(
        wb.iter()
            .map(|w| (w.wr_id, w.status, w.opcode))
            .collect::<Vec<_>>(),
        vec![
            (0, WcStatus::Success, WcOpcode::Recv),
            (1, WcStatus::Success, WcOpcode::Recv)
        ],
        "the two privileged sends arrive, the third's Q_Key is wrong"
    );
}

/// The largest message, 2^31 bytes, as one RDMA WRITE at path MTU 256:
/// 2^23 packets, exactly half the PSN space, starting 16 PSNs before the
/// wrap. B's 2 GiB are all written (A's untouched pages stay
/// unallocated); about 10 s here.
#[test]
fn the_largest_message_at_mtu_256() {
    const LEN: u64 = 1 << 31;
    let mut s = common::setup(
        QpType::Rc,
        LinkConfig::clean(1_000),
        6,
        Mtu::Mtu256,
        LEN as usize + 4096,
    );
    // Marks at the start, the middle, near the end and in the last bytes.
    let marks = [0, LEN / 2 - 3, LEN - 300, LEN - 8];
    for (i, &at) in marks.iter().enumerate() {
        s.pair.a.memory_mut().as_mut_slice()[at as usize..at as usize + 8]
            .copy_from_slice(&(0x1111_2222_3333_4444 + i as u64).to_le_bytes());
    }
    let sge = [Sge {
        addr: 0,
        length: 0x8000_0000,
        lkey: s.a.key,
    }];
    s.pair
        .a
        .post_send(
            s.a.qp,
            &SendWr::new(1, SendOp::Write, &sge).remote(0, s.b.key),
        )
        .unwrap();
    s.pair.drive(1_000 * SEC, |_| false);
    let wa = drain(&mut s.pair.a, s.a.cq);
    assert_eq!(common::statuses(&wa), vec![(1, WcStatus::Success)]);
    assert_eq!(s.pair.launched.0, 1 << 23, "one packet per 256 bytes");
    let m = s.pair.b.memory().as_slice();
    for (i, &at) in marks.iter().enumerate() {
        assert_eq!(
            u64::from_le_bytes(m[at as usize..at as usize + 8].try_into().unwrap()),
            0x1111_2222_3333_4444 + i as u64
        );
    }
    // A READ of the same size would be one PSN too many.
    assert!(
        s.pair
            .a
            .post_send(
                s.a.qp,
                &SendWr::new(2, SendOp::Read, &sge).remote(0, s.b.key)
            )
            .is_err()
    );
}
