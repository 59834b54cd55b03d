//! Recovering a long READ whose responses go missing. The responder
//! replays from the requested PSN to the READ's end for every request it
//! gets (Linux rxe queues one whole replay per request), so the requester
//! asks again at most once per pass of that stream, and a stream still
//! arriving keeps its retransmit timer from firing. Responses are carried
//! by hand between two engines so that each loss is exact.

mod common;

use common::{drain, setup};
use transport::{
    engine::{Engine, RxMeta},
    memory::VecMemory,
    sim::LinkConfig,
    verbs::{SendOp, SendWr, Sge, WcOpcode, WcStatus},
    wire::{Mtu, Opcode, Packet, PacketRepr},
};

const MEM: usize = 1 << 20;
const LEN: u32 = 16 * 256;

/// Everything `e` wants to send at `now`, as raw transport packets.
fn out(e: &mut Engine<VecMemory>, now: u64) -> Vec<Vec<u8>> {
    let mut v = Vec::new();
    let mut buf = vec![0u8; 8192];
    while let Some(t) = e.poll_transmit(now, &mut buf) {
        v.push(buf[..t.len].to_vec());
    }
    v
}

fn repr(p: &[u8]) -> PacketRepr {
    PacketRepr::parse(&Packet::new_checked(p).unwrap()).unwrap()
}

fn feed(e: &mut Engine<VecMemory>, now: u64, pkts: &[Vec<u8>]) {
    for p in pkts {
        e.handle_packet(now, &RxMeta::NONE, p).unwrap();
    }
}

/// The READ requests among `pkts`, as (PSN, remote address, length).
fn reads(pkts: &[Vec<u8>]) -> Vec<(u32, u64, u32)> {
    pkts.iter()
        .map(|p| repr(p))
        .filter(|r| r.bth.opcode == Opcode(0x0c))
        .map(|r| {
            let reth = r.ext.reth.unwrap();
            (r.bth.psn, reth.va, reth.dma_len)
        })
        .collect()
}

/// Two connected engines (seed `seed`, MTU 256) with a READ of [`LEN`]
/// bytes from B's 0x1000 into A's 0x8000 posted on A (WR ID `wr_id`);
/// returns them and A's request packets at `now`.
fn post_read(seed: u64, wr_id: u64, now: u64) -> (common::Setup, Vec<Vec<u8>>) {
    let mut s = setup(
        transport::verbs::QpType::Rc,
        LinkConfig::clean(1000),
        seed,
        Mtu::Mtu256,
        MEM,
    );
    let sge = [Sge {
        addr: 0x8000,
        length: LEN,
        lkey: s.a.key,
    }];
    let wr = SendWr::new(wr_id, SendOp::Read, &sge).remote(0x1000, s.b.key);
    s.pair.a.post_send(s.a.qp, &wr).unwrap();
    let req = out(&mut s.pair.a, now);
    (s, req)
}

#[test]
fn a_long_read_asks_again_once_per_pass_and_a_live_stream_holds_the_timer() {
    let mut now = 1_000;
    // The request, and B's 16 responses.
    let (mut s, req) = post_read(1, 9, now);
    let pattern: Vec<u8> = (0..LEN).map(|i| (i * 7 + 3) as u8).collect();
    s.pair.b.memory_mut().as_mut_slice()[0x1000..0x1000 + LEN as usize].copy_from_slice(&pattern);
    let [(f, va, len)] = reads(&req)[..] else {
        panic!("one READ request: {:?}", reads(&req));
    };
    assert_eq!((va, len), (0x1000, LEN));
    let psn = |k: u32| (f + k) & 0xff_ffff;
    feed(&mut s.pair.b, now, &req);
    let pass1 = out(&mut s.pair.b, now);
    assert_eq!(pass1.len(), 16);

    // Pass 1 loses response 4: one request for the rest, from PSN f+4.
    feed(&mut s.pair.a, now, &pass1[..4]);
    feed(&mut s.pair.a, now, &pass1[5..]);
    let again = out(&mut s.pair.a, now);
    assert_eq!(
        reads(&again),
        vec![(psn(4), 0x1000 + 4 * 256, LEN - 4 * 256)]
    );

    // Pass 2 (the replay from f+4) loses f+6. Gaps inside a pass ask for
    // nothing more; its end (f+15) asks once, from f+6.
    feed(&mut s.pair.b, now, &again);
    let pass2 = out(&mut s.pair.b, now);
    assert_eq!(pass2.len(), 12);
    assert_eq!(repr(&pass2[0]).bth.psn, psn(4));
    feed(&mut s.pair.a, now, &pass2[..2]);
    feed(&mut s.pair.a, now, &pass2[3..11]);
    assert!(
        reads(&out(&mut s.pair.a, now)).is_empty(),
        "a gap within a pass asked again"
    );

    // Meanwhile the stream holds the timer: a response of this READ
    // arriving just before the deadline (a duplicate, here) moves it on.
    let deadline = s.pair.a.poll_timeout().expect("a retransmit timer");
    now = deadline - 10;
    feed(&mut s.pair.a, now, &pass1[..1]);
    let later = s.pair.a.poll_timeout().expect("a retransmit timer");
    assert!(later > deadline, "{later} <= {deadline}");
    s.pair.a.handle_timeout(deadline);
    assert!(reads(&out(&mut s.pair.a, deadline)).is_empty(), "timed out");

    // The end of pass 2 asks once, from the first missing PSN.
    feed(&mut s.pair.a, now, &pass2[11..]);
    let third = out(&mut s.pair.a, now);
    assert_eq!(
        reads(&third),
        vec![(psn(6), 0x1000 + 6 * 256, LEN - 6 * 256)]
    );

    // Pass 3 completes the READ, with every byte in place.
    feed(&mut s.pair.b, now, &third);
    let pass3 = out(&mut s.pair.b, now);
    assert_eq!(pass3.len(), 10);
    feed(&mut s.pair.a, now, &pass3);
    let wcs = drain(&mut s.pair.a, s.a.cq);
    assert_eq!(wcs.len(), 1, "{wcs:?}");
    assert_eq!(
        (wcs[0].wr_id, wcs[0].status, wcs[0].opcode, wcs[0].byte_len),
        (9, WcStatus::Success, WcOpcode::RdmaRead, LEN)
    );
    assert_eq!(
        &s.pair.a.memory().as_slice()[0x8000..0x8000 + LEN as usize],
        &pattern[..]
    );
    // Three requests in all: the first and one per lossy pass.
    assert_eq!(s.pair.a.counters().completer_retry_err, 2);
}

#[test]
fn with_no_stream_left_the_timer_asks_again() {
    let (mut s, req) = post_read(2, 1, 0);
    let f = reads(&req)[0].0;
    feed(&mut s.pair.b, 0, &req);
    let pass1 = out(&mut s.pair.b, 0);
    // Responses 3 and 9 and the tail after 12 are lost: one request at
    // the first gap, then silence; the timer asks again from f+3.
    feed(&mut s.pair.a, 0, &pass1[..3]);
    feed(&mut s.pair.a, 0, &pass1[4..9]);
    feed(&mut s.pair.a, 0, &pass1[10..12]);
    assert_eq!(reads(&out(&mut s.pair.a, 0)).len(), 1);
    let deadline = s.pair.a.poll_timeout().expect("a retransmit timer");
    s.pair.a.handle_timeout(deadline);
    let r = reads(&out(&mut s.pair.a, deadline));
    assert_eq!(
        r,
        vec![((f + 3) & 0xff_ffff, 0x1000 + 3 * 256, LEN - 3 * 256)]
    );
}

#[test]
fn a_responder_that_only_replays_cannot_hold_the_timer_forever() {
    let (mut s, req) = post_read(3, 1, 0);
    feed(&mut s.pair.b, 0, &req);
    let pass1 = out(&mut s.pair.b, 0);
    // The first two responses arrive, then only their duplicates, over
    // and over: the timer gives in after at most 8 timeouts and asks
    // again from the third.
    feed(&mut s.pair.a, 0, &pass1[..2]);
    let first = s.pair.a.poll_timeout().expect("a retransmit timer");
    let mut now = 0;
    let mut asked = None;
    for _ in 0..10_000 {
        now += first / 4;
        feed(&mut s.pair.a, now, &pass1[..1]);
        if s.pair.a.poll_timeout().is_some_and(|t| t <= now) {
            s.pair.a.handle_timeout(now);
        }
        let r = reads(&out(&mut s.pair.a, now));
        if !r.is_empty() {
            asked = Some((now, r));
            break;
        }
    }
    let (when, r) = asked.expect("the duplicates held the timer forever");
    assert_eq!(r[0].1, 0x1000 + 2 * 256);
    assert!(when <= 9 * first, "asked only at {when} (timeout {first})");
    assert!(
        when > first,
        "asked at {when}, before one timeout ({first})"
    );
}
