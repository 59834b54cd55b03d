//! The per-packet path allocates nothing: after a warm-up, thousands of
//! SENDs, WRITEs, READs and atomics (multi-packet included) run between
//! two engines while a counting global allocator sees zero allocations.
//! Posting and polling are counted too, so the whole steady state is
//! covered, not only `handle_packet` and `poll_transmit`.
//!
//! Only the thread that drives the engines is counted: libtest's main
//! thread allocates its own bookkeeping for the running test at a moment
//! that races with the test body, which made a process-wide count flaky.

mod common;

use std::{
    alloc::{GlobalAlloc, Layout, System},
    cell::Cell,
};

use common::{empty_wc, setup};
use transport::{
    sim::LinkConfig,
    verbs::{QpType, RecvWr, SendOp, SendWr, Sge},
    wire::Mtu,
};

struct Counting;

thread_local! {
    /// Set on the test's own thread while the steady state runs. A const
    /// initialiser, so reading it never allocates.
    static COUNTING: Cell<bool> = const { Cell::new(false) };
    /// The allocations counted on this thread (tests run side by side).
    static ALLOCS: Cell<u64> = const { Cell::new(0) };
}

fn count() {
    // `try_with`: a thread being torn down may still allocate.
    if COUNTING.try_with(Cell::get).unwrap_or(false) {
        let _ = ALLOCS.try_with(|n| n.set(n.get() + 1));
    }
}

// SAFETY: forwards to the system allocator unchanged; only counts calls.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count();
        // SAFETY: same contract as our caller's.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as our caller's.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count();
        // SAFETY: same contract as our caller's.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn round(s: &mut common::Setup, wcs: &mut [transport::verbs::Wc], base: u64) -> usize {
    let (ka, kb) = (s.a.key, s.b.key);
    let sge = [Sge {
        addr: 0,
        length: 3000,
        lkey: ka,
    }];
    let small = [Sge {
        addr: 0x4000,
        length: 8,
        lkey: ka,
    }];
    let rsge = [Sge {
        addr: 0x10000,
        length: 4096,
        lkey: kb,
    }];
    for i in 0..8 {
        s.pair
            .b
            .post_recv(
                s.b.qp,
                &RecvWr {
                    wr_id: base + i,
                    sges: &rsge,
                },
            )
            .unwrap();
        s.pair
            .a
            .post_send(s.a.qp, &SendWr::new(base + i, SendOp::Send, &sge))
            .unwrap();
        s.pair
            .a
            .post_send(
                s.a.qp,
                &SendWr::new(base + i, SendOp::Write, &sge).remote(0x20000, kb),
            )
            .unwrap();
        s.pair
            .a
            .post_send(
                s.a.qp,
                &SendWr::new(base + i, SendOp::Read, &sge).remote(0x30000, kb),
            )
            .unwrap();
        s.pair
            .a
            .post_send(
                s.a.qp,
                &SendWr::new(base + i, SendOp::FetchAdd { add: 1 }, &small).remote(0x40000, kb),
            )
            .unwrap();
    }
    let deadline = s.pair.now + 1_000_000_000;
    s.pair.drive(deadline, |_| false);
    let mut n = 0;
    loop {
        let got = s.pair.a.poll_cq(s.a.cq, wcs).unwrap() + s.pair.b.poll_cq(s.b.cq, wcs).unwrap();
        if got == 0 {
            break n;
        }
        n += got;
    }
}

/// Runs `rounds` rounds after a warm-up of `warm`, counting allocations
/// only during the counted rounds; returns (completions, allocations).
fn counted(s: &mut common::Setup, warm: u64, rounds: u64) -> (usize, u64) {
    let mut wcs = [empty_wc(); 64];
    // Warm-up: fills the link's buffer pool and queues to their high mark.
    for r in 0..warm {
        assert_eq!(round(s, &mut wcs, r * 100), 8 * 5);
    }
    ALLOCS.set(0);
    COUNTING.set(true);
    let mut completions = 0;
    for r in warm..warm + rounds {
        completions += round(s, &mut wcs, r * 100);
    }
    COUNTING.set(false);
    (completions, ALLOCS.get())
}

#[test]
fn steady_state_traffic_does_not_allocate() {
    let mut s = setup(
        QpType::Rc,
        LinkConfig::clean(1000),
        1,
        Mtu::Mtu1024,
        1 << 20,
    );
    let (completions, allocs) = counted(&mut s, 20, 200);
    assert_eq!(completions, 200 * 8 * 5);
    assert!(s.pair.stats.sent > 200 * 8 * 10);
    assert_eq!(allocs, 0, "allocations on the steady-state path");
}

/// The same traffic over a link that loses, duplicates, reorders and
/// damages packets: retransmission, go-back-N, NAKs, duplicate requests
/// and the responder's replays of READs and atomics allocate nothing
/// either.
#[test]
fn recovery_paths_do_not_allocate() {
    let mut s = setup(QpType::Rc, common::impaired(), 2, Mtu::Mtu1024, 1 << 20);
    // Duplicates and retransmissions can put more packets in flight than
    // the warm-up did; the simulated link (test support, not the engine)
    // makes room for them beforehand.
    s.pair.reserve(4096);
    let (completions, allocs) = counted(&mut s, 50, 200);
    assert_eq!(completions, 200 * 8 * 5);
    let st = s.pair.stats;
    assert!(
        st.lost > 100 && st.duplicated > 10 && st.reordered > 100 && st.corrupted > 5,
        "{st:?}"
    );
    let c = s.pair.b.qp(s.b.qp).unwrap().counters();
    assert!(c.duplicate_request > 0 && c.out_of_seq_request > 0, "{c:?}");
    assert_eq!(allocs, 0, "allocations on the recovery paths");
}
