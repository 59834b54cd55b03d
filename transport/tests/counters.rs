//! The engine's counters under losses placed on purpose on the simulated
//! link: each expected count follows from the protocol (which packet was
//! lost, what the receiver must answer), and the link's own tallies are
//! checked against the engines' packet counters.

mod common;

use common::{drain, setup, setup_with};
use transport::{
    counters::Counters,
    sim::LinkConfig,
    verbs::{QpType, RecvWr, SendOp, SendWr, Sge, WcStatus},
    wire::Mtu,
};

const MEM: usize = 1 << 20;
const SEC: u64 = 1_000_000_000;

fn write(s: &mut common::Setup, wr_id: u64, len: u32) {
    let sge = [Sge {
        addr: 0,
        length: len,
        lkey: s.a.key,
    }];
    s.pair
        .a
        .post_send(
            s.a.qp,
            &SendWr::new(wr_id, SendOp::Write, &sge).remote(0x1_0000, s.b.key),
        )
        .unwrap();
}

fn run_to_completion(s: &mut common::Setup) -> Vec<WcStatus> {
    let cq = s.a.cq;
    let mut got = Vec::new();
    s.pair.drive(10 * SEC, |p| {
        got.extend(drain(&mut p.a, cq).into_iter().map(|w| w.status));
        !got.is_empty()
    });
    // Let the last ACKs and timers settle.
    s.pair.drive(s.pair.now + SEC / 10, |_| false);
    got
}

/// The link's tallies agree with the engines' packet counters.
fn check_link(s: &common::Setup) {
    let (a, b) = (s.pair.a.counters(), s.pair.b.counters());
    assert_eq!(s.pair.launched, (a.sent_pkts, b.sent_pkts));
    assert_eq!(s.pair.stats.sent, a.sent_pkts + b.sent_pkts);
    assert_eq!(s.pair.stats.delivered, a.rcvd_pkts + b.rcvd_pkts);
}

#[test]
fn a_lost_request_packet_gives_out_of_sequence_requests_one_nak_and_one_retry() {
    let mut s = setup(QpType::Rc, LinkConfig::clean(1000), 1, Mtu::Mtu1024, MEM);
    // Eight packets; the third is lost.
    s.pair.drop_nth.push((true, 3));
    write(&mut s, 1, 8192);
    assert_eq!(run_to_completion(&mut s), vec![WcStatus::Success]);
    let (a, b) = (s.pair.a.counters(), s.pair.b.counters());
    // B: packets 4..8 arrive ahead of 3; one sequence NAK for them all.
    assert_eq!(b.out_of_seq_request, 5, "{b:?}");
    assert_eq!(b.send_nak, 1, "{b:?}");
    assert_eq!(b.duplicate_request, 0, "{b:?}");
    // A: the NAK starts one go-back-N from packet 3 (six packets again).
    assert_eq!(
        (a.rcvd_nak, a.rcvd_seq_err, a.completer_retry_err),
        (1, 1, 1),
        "{a:?}"
    );
    assert_eq!(a.sent_pkts, 8 + 6, "{a:?}");
    assert_eq!(b.rcvd_pkts, 7 + 6, "{b:?}");
    assert_eq!((a.completer_err, b.responder_err), (0, 0));
    assert_eq!(s.pair.stats.lost, 1);
    check_link(&s);
}

#[test]
fn a_lost_ack_gives_a_timeout_retry_and_duplicate_requests() {
    let mut s = setup(QpType::Rc, LinkConfig::clean(1000), 1, Mtu::Mtu1024, MEM);
    // Four packets; B's ACK of the message is lost.
    s.pair.drop_nth.push((false, 1));
    write(&mut s, 1, 4096);
    assert_eq!(run_to_completion(&mut s), vec![WcStatus::Success]);
    let (a, b) = (s.pair.a.counters(), s.pair.b.counters());
    assert_eq!(a.completer_retry_err, 1, "{a:?}");
    assert_eq!(a.sent_pkts, 8, "{a:?}");
    // All four resent packets are duplicates at B.
    assert_eq!(b.duplicate_request, 4, "{b:?}");
    assert_eq!((a.rcvd_nak, b.send_nak, b.out_of_seq_request), (0, 0, 0));
    check_link(&s);
}

#[test]
fn a_corrupted_packet_fails_the_icrc_and_counts_as_a_loss() {
    let mut s = setup(QpType::Rc, LinkConfig::clean(1000), 1, Mtu::Mtu1024, MEM);
    s.pair.corrupt_nth.push((true, 2));
    write(&mut s, 1, 4096);
    assert_eq!(run_to_completion(&mut s), vec![WcStatus::Success]);
    let (a, b) = (s.pair.a.counters(), s.pair.b.counters());
    // B's engine checks the ICRC (the link only adds its headers' part)
    // and drops the packet without counting it.
    assert_eq!(s.pair.stats.rejected, 1);
    assert_eq!(b.out_of_seq_request, 2, "{b:?}");
    assert_eq!(
        (b.send_nak, a.rcvd_seq_err, a.completer_retry_err),
        (1, 1, 1)
    );
    assert_eq!(a.sent_pkts, 4 + 3, "{a:?}");
    assert_eq!(b.rcvd_pkts, 3 + 3, "{b:?}");
    assert_eq!(
        s.pair.stats.sent,
        s.pair.stats.delivered + s.pair.stats.rejected
    );
}

/// Each packet of a WRITE in turn, and B's ACK, damaged on the way: the
/// WRITE still completes with every byte right. A damaged WRITE middle or
/// last packet is placed while its ICRC is computed (one pass), so this
/// also shows that such a placement is undone by the retransmission and
/// never completes the message.
#[test]
fn a_damaged_packet_in_any_position_leaves_the_write_intact() {
    for (from_a, nth) in [(true, 1), (true, 2), (true, 3), (true, 4), (false, 1)] {
        let mut s = setup(QpType::Rc, LinkConfig::clean(1000), 1, Mtu::Mtu1024, MEM);
        let src: Vec<u8> = (0..4096u32).map(|i| (i * 13 + 5) as u8).collect();
        s.pair.a.memory_mut().as_mut_slice()[..4096].copy_from_slice(&src);
        s.pair.b.memory_mut().as_mut_slice()[0x1_0000..0x1_1000].fill(0xee);
        s.pair.corrupt_nth.push((from_a, nth));
        write(&mut s, 1, 4096);
        assert_eq!(
            run_to_completion(&mut s),
            vec![WcStatus::Success],
            "packet {nth} from A: {from_a}"
        );
        assert_eq!(s.pair.stats.rejected, 1, "packet {nth} from A: {from_a}");
        assert_eq!(s.pair.stats.undetected, 0);
        assert_eq!(
            &s.pair.b.memory().as_slice()[0x1_0000..0x1_1000],
            &src[..],
            "packet {nth} from A: {from_a}"
        );
        check_link(&s);
    }
}

#[test]
fn rnr_naks_are_counted_on_both_sides() {
    let mut s = setup(QpType::Rc, LinkConfig::clean(1000), 1, Mtu::Mtu1024, MEM);
    let sge = [Sge {
        addr: 0,
        length: 100,
        lkey: s.a.key,
    }];
    s.pair
        .a
        .post_send(s.a.qp, &SendWr::new(1, SendOp::Send, &sge))
        .unwrap();
    // No receive posted: B answers with an RNR NAK.
    assert!(s.pair.drive(SEC, |p| p.b.counters().send_rnr_err == 1));
    let rsge = [Sge {
        addr: 0x8000,
        length: 4096,
        lkey: s.b.key,
    }];
    s.pair
        .b
        .post_recv(
            s.b.qp,
            &RecvWr {
                wr_id: 9,
                sges: &rsge,
            },
        )
        .unwrap();
    assert_eq!(run_to_completion(&mut s), vec![WcStatus::Success]);
    let (a, b) = (s.pair.a.counters(), s.pair.b.counters());
    assert_eq!((a.rcvd_rnr_err, b.send_rnr_err), (1, 1));
    assert_eq!(
        (a.rcvd_nak, b.send_nak),
        (0, 0),
        "RNR NAKs are counted apart"
    );
    check_link(&s);
}

#[test]
fn exhausted_retries_are_counted_and_survive_the_qp() {
    let mut s = setup_with(
        QpType::Rc,
        LinkConfig::clean(1000),
        1,
        Mtu::Mtu1024,
        MEM,
        64,
        |c| c.retry = 2,
    );
    // Every packet A sends is lost: the first try and two retries.
    for n in 1..=3 {
        s.pair.drop_nth.push((true, n));
    }
    write(&mut s, 1, 100);
    assert_eq!(run_to_completion(&mut s), vec![WcStatus::RetryExcErr]);
    let a = s.pair.a.counters();
    assert_eq!(
        (a.completer_retry_err, a.retry_exceeded_err, a.completer_err),
        (2, 1, 1),
        "{a:?}"
    );
    assert_eq!(a.sent_pkts, 3);
    // The QP's own counters are its events (packets are counted per
    // opcode, engine-wide); destroying it keeps them in the totals.
    let own = Counters {
        sent_pkts: 0,
        rcvd_pkts: 0,
        ..a
    };
    assert_eq!(s.pair.a.qp_counters(s.a.qp), Some(own));
    s.pair.a.destroy_qp(s.a.qp).unwrap();
    assert_eq!(s.pair.a.counters(), a);
    assert_eq!(s.pair.a.qp_counters(s.a.qp), None);
}

#[test]
fn bytes_are_counted_per_opcode() {
    let mut s = setup(QpType::Rc, LinkConfig::clean(1000), 1, Mtu::Mtu1024, MEM);
    write(&mut s, 1, 2048);
    assert_eq!(run_to_completion(&mut s), vec![WcStatus::Success]);
    // RDMA WRITE FIRST (0x06) with RETH, WRITE LAST (0x08): BTH 12 +
    // RETH 16 + 1024 + ICRC 4, and BTH 12 + 1024 + ICRC 4.
    let (a, b) = (s.pair.a.opcode_bytes(), s.pair.b.opcode_bytes());
    assert_eq!((a.tx[0x06], a.tx[0x08]), (1056, 1040));
    assert_eq!((b.rx[0x06], b.rx[0x08]), (1056, 1040));
    // One ACK (0x11): BTH 12 + AETH 4 + ICRC 4.
    assert_eq!((b.tx[0x11], a.rx[0x11]), (20, 20));
    assert_eq!(a.tx.iter().sum::<u64>(), 1056 + 1040);
}
