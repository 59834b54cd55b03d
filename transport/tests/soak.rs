//! Soak tests: many random operations between two engines over an
//! impaired simulated link (5% loss, 5% reordering, 1% duplication, 0.5%
//! corruption), with every completion and every byte of memory checked
//! against a shadow model. The seed is printed; rerun one with
//! `SOAK_SEED=<n>`, and change the size with `SOAK_OPS=<n>`.

mod common;

use std::collections::VecDeque;

use common::{drain, setup};
use rand::{Rng, SeedableRng, rngs::SmallRng};
use transport::{
    sim::LinkConfig,
    verbs::{QpType, RecvWr, SendOp, SendWr, Sge, WcOpcode, WcStatus},
    wire::Mtu,
};

const MIB: u64 = 1 << 20;
// Memory layout, the same on both sides.
const SRC: u64 = 0; // A: random source data, 2 MiB
const RDST: u64 = 2 * MIB; // A: READ destinations, 2 MiB
const RES: u64 = 4 * MIB; // A: atomic result slots, 64 KiB
const WDST: u64 = 2 * MIB; // B: WRITE targets, 2 MiB
const RSRC: u64 = 4 * MIB + 64 * 1024; // B: READ source, 2 MiB
const CTR: u64 = 7 * MIB; // B: atomic counters, 4 KiB
// (12.5 MiB on: B's fast-registration pages, mapped and never written.)
const RBUF: u64 = 16 * MIB; // B: receive buffers, 1 MiB each
const RBUF_LEN: u64 = MIB;
const NRBUF: u64 = 64;
const MEM: usize = (RBUF + NRBUF * RBUF_LEN) as usize;

fn impaired() -> LinkConfig {
    if std::env::var("SOAK_CLEAN").is_ok() {
        return LinkConfig::clean(2_000);
    }
    common::impaired()
}

/// A message size: mostly small, sometimes up to `max`.
fn size(rng: &mut SmallRng, max: u64) -> u64 {
    let r: f64 = rng.random();
    let cap = if r < 0.80 {
        64
    } else if r < 0.95 {
        4096
    } else if r < 0.995 {
        65536
    } else {
        max
    };
    rng.random_range(0..=cap.min(max))
}

#[derive(Debug)]
enum Expect {
    /// A SEND: its bytes, and the immediate or invalidated key if any.
    Send {
        data: Vec<u8>,
        imm: Option<u32>,
        inv: Option<u32>,
    },
    /// A WRITE with immediate: consumes a receive with this length.
    WriteImm { len: u32, imm: u32 },
}

struct Pending {
    wr_id: u64,
    op: SendOp,
    /// READ: (dst, src, len) to check on completion; atomics: slot and
    /// expected original value.
    check: Option<(u64, Vec<u8>)>,
    atomic: Option<(u64, u64)>,
    /// Unsignaled WRs complete silently: a later completion implies them.
    signaled: bool,
}

#[test]
fn rc_soak() {
    let seed = common::soak_seed("rc_soak");
    let n = common::soak_ops() as usize;
    eprintln!("rc_soak: {n} operations");
    let mut rng = SmallRng::seed_from_u64(seed);
    let mtu = Mtu::ALL[rng.random_range(0..5)];
    let mut s = setup(QpType::Rc, impaired(), seed, mtu, MEM);
    let (ka, kb) = (s.a.key, s.b.key);
    s.pair.trace = std::env::var("SOAK_PACKETS").is_ok();

    // Random contents; the shadows start equal to memory.
    rng.fill(&mut s.pair.a.memory_mut().as_mut_slice()[..]);
    rng.fill(&mut s.pair.b.memory_mut().as_mut_slice()[..]);
    let mut shadow_a = s.pair.a.memory().as_slice().to_vec();
    let mut shadow_b = s.pair.b.memory().as_slice().to_vec();

    let mut next_rbuf = 0u64;
    for _ in 0..NRBUF {
        let sge = [Sge {
            addr: RBUF + next_rbuf % NRBUF * RBUF_LEN,
            length: RBUF_LEN as u32,
            lkey: kb,
        }];
        s.pair
            .b
            .post_recv(
                s.b.qp,
                &RecvWr {
                    wr_id: next_rbuf,
                    sges: &sge,
                },
            )
            .unwrap();
        next_rbuf += 1;
    }
    // Fast-registration MRs on B for SEND_WITH_INV to invalidate.
    let mut inv_pool = VecDeque::new();
    for i in 0..32u64 {
        let mr = s.pair.b.alloc_mr(s.b.pd, 1).unwrap();
        s.pair
            .b
            .map_mr_pages(
                mr,
                0x7000_0000,
                4096,
                12,
                0,
                &[12 * MIB + 512 * 1024 + i * 4096],
            )
            .unwrap();
        let mut wr = SendWr::new(
            0,
            SendOp::RegMr {
                key: mr,
                access: common::ALL_ACCESS,
            },
            &[],
        );
        wr.signaled = false;
        s.pair.b.post_send(s.b.qp, &wr).unwrap();
        inv_pool.push_back(mr);
    }
    let mut expect_recv: VecDeque<Expect> = VecDeque::new();
    let mut pending: VecDeque<Pending> = VecDeque::new();
    let mut posted = 0usize;
    let mut done = 0usize;
    let mut next_slot = 0u64;
    let mut counts = [0usize; 10];
    let mut unsignaled = 0usize;
    let started = std::time::Instant::now();

    while done < n {
        // Keep up to 48 WRs outstanding.
        while posted < n && pending.len() < 48 {
            let kind = rng.random_range(0..10u8);
            counts[kind as usize] += 1;
            let wr_id = posted as u64;
            let mut p = Pending {
                wr_id,
                op: SendOp::Send,
                check: None,
                atomic: None,
                signaled: true,
            };
            let (op, mut len, remote) = match kind {
                0..=2 => {
                    let len = size(&mut rng, RBUF_LEN);
                    let op = match kind {
                        0 => SendOp::Send,
                        1 => SendOp::SendWithImm(rng.random()),
                        // SEND_WITH_INV names a registered fast-reg MR of B.
                        _ => match inv_pool.pop_front() {
                            Some(key) => SendOp::SendWithInv(key),
                            None => SendOp::Send,
                        },
                    };
                    (op, len, 0)
                }
                3 | 4 => {
                    let len = size(&mut rng, MIB);
                    let op = if kind == 3 {
                        SendOp::Write
                    } else {
                        SendOp::WriteWithImm(rng.random())
                    };
                    let dst = WDST + rng.random_range(0..=(2 * MIB - len));
                    (op, len, dst)
                }
                5 => {
                    let len = size(&mut rng, MIB);
                    let src = RSRC + rng.random_range(0..=(2 * MIB - len));
                    (SendOp::Read, len, src)
                }
                8 => (
                    SendOp::AtomicWrite(rng.random()),
                    0,
                    CTR + 8 * rng.random_range(0..16u64),
                ),
                9 => {
                    let len = rng.random_range(0..4096u32);
                    let sel = rng.random_range(0..2u8);
                    let at = WDST + rng.random_range(0..MIB);
                    (
                        SendOp::Flush {
                            len,
                            placement_type: 1 + rng.random_range(0..3u8),
                            selectivity_level: sel,
                        },
                        0,
                        at,
                    )
                }
                6 => {
                    let add = rng.random_range(0..1000u64);
                    (
                        SendOp::FetchAdd { add },
                        8,
                        CTR + 8 * rng.random_range(0..16u64),
                    )
                }
                _ => {
                    let ctr = CTR + 8 * rng.random_range(0..16u64);
                    let cur = u64::from_ne_bytes(
                        shadow_b[ctr as usize..ctr as usize + 8].try_into().unwrap(),
                    );
                    let compare = if rng.random_bool(0.5) {
                        cur
                    } else {
                        rng.random()
                    };
                    (
                        SendOp::CmpSwap {
                            compare,
                            swap: rng.random(),
                        },
                        8,
                        ctr,
                    )
                }
            };
            p.op = op;
            let mut read_checkable = false;
            let local = match op {
                SendOp::Read => {
                    // Keep in-flight READ destinations apart, so each can
                    // be checked when it completes.
                    let clashes = |dst: u64, len: u64| {
                        pending.iter().any(|q| {
                            q.check
                                .as_ref()
                                .is_some_and(|(d, w)| dst < d + w.len() as u64 && *d < dst + len)
                        })
                    };
                    let mut dst = RDST + rng.random_range(0..=(2 * MIB - len));
                    for _ in 0..32 {
                        if !clashes(dst, len) {
                            break;
                        }
                        dst = RDST + rng.random_range(0..=(2 * MIB - len));
                    }
                    if clashes(dst, len) {
                        // No free room: make it a zero-length READ, which
                        // touches no memory.
                        len = 0;
                    }
                    read_checkable = true;
                    dst
                }
                SendOp::FetchAdd { .. } | SendOp::CmpSwap { .. } => {
                    next_slot = (next_slot + 1) % 8192;
                    RES + next_slot * 8
                }
                _ => SRC + rng.random_range(0..=(2 * MIB - len)),
            };
            // Split the local buffer into up to 3 SGEs.
            let mut sges = Vec::new();
            if len > 0 {
                let cuts = if len > 2 && !op.is_atomic() {
                    rng.random_range(0..3)
                } else {
                    0
                };
                let mut at = 0;
                for i in 0..=cuts {
                    let piece = if i == cuts {
                        len - at
                    } else {
                        rng.random_range(0..=(len - at))
                    };
                    sges.push(Sge {
                        addr: local + at,
                        length: piece as u32,
                        lkey: ka,
                    });
                    at += piece;
                }
            }
            // Model the effect.
            let (l, r) = (local as usize, remote as usize);
            let ln = len as usize;
            match op {
                SendOp::Send | SendOp::SendWithImm(_) | SendOp::SendWithInv(_) => {
                    let imm = match op {
                        SendOp::SendWithImm(i) => Some(i),
                        _ => None,
                    };
                    let inv = match op {
                        SendOp::SendWithInv(k) => Some(k),
                        _ => None,
                    };
                    expect_recv.push_back(Expect::Send {
                        data: shadow_a[l..l + ln].to_vec(),
                        imm,
                        inv,
                    });
                }
                SendOp::Write | SendOp::WriteWithImm(_) => {
                    shadow_b[r..r + ln].copy_from_slice(&shadow_a[l..l + ln]);
                    if let SendOp::WriteWithImm(imm) = op {
                        expect_recv.push_back(Expect::WriteImm {
                            len: len as u32,
                            imm,
                        });
                    }
                }
                SendOp::Read => {
                    shadow_a[l..l + ln].copy_from_slice(&shadow_b[r..r + ln]);
                    if read_checkable {
                        p.check = Some((local, shadow_b[r..r + ln].to_vec()));
                    }
                }
                SendOp::AtomicWrite(v) => {
                    shadow_b[r..r + 8].copy_from_slice(&v.to_ne_bytes());
                }
                SendOp::Flush { .. }
                | SendOp::RegMr { .. }
                | SendOp::LocalInv { .. }
                | SendOp::BindMw { .. } => {}
                SendOp::FetchAdd { add } => {
                    let cur = u64::from_ne_bytes(shadow_b[r..r + 8].try_into().unwrap());
                    shadow_b[r..r + 8].copy_from_slice(&cur.wrapping_add(add).to_ne_bytes());
                    shadow_a[l..l + 8].copy_from_slice(&cur.to_ne_bytes());
                    p.atomic = Some((local, cur));
                }
                SendOp::CmpSwap { compare, swap } => {
                    let cur = u64::from_ne_bytes(shadow_b[r..r + 8].try_into().unwrap());
                    if cur == compare {
                        shadow_b[r..r + 8].copy_from_slice(&swap.to_ne_bytes());
                    }
                    shadow_a[l..l + 8].copy_from_slice(&cur.to_ne_bytes());
                    p.atomic = Some((local, cur));
                }
            }
            let mut wr = SendWr::new(wr_id, op, &sges).remote(remote, kb);
            // A third of the plain WRITEs are unsignaled (never the last WR).
            if op == SendOp::Write && posted + 1 < n && rng.random_bool(1.0 / 3.0) {
                wr.signaled = false;
                p.signaled = false;
                unsignaled += 1;
            }
            s.pair.a.post_send(s.a.qp, &wr).unwrap();
            pending.push_back(p);
            posted += 1;
        }

        // Run the link until something completes.
        let before = done;
        let deadline = s.pair.now + 5_000_000_000;
        let target = s.pair.stats.delivered + 32;
        s.pair.drive(deadline, |p| p.stats.delivered >= target);

        for wc in drain(&mut s.pair.a, s.a.cq) {
            let p = loop {
                let p = pending
                    .pop_front()
                    .unwrap_or_else(|| panic!("seed {seed}: stray completion {wc:?}"));
                if p.signaled || p.wr_id == wc.wr_id {
                    break p;
                }
                // An unsignaled WR before this completion: done with it.
                done += 1;
            };
            assert!(p.signaled, "seed {seed}: completion for unsignaled {wc:?}");
            assert_eq!(wc.wr_id, p.wr_id, "seed {seed}: completions out of order");
            assert_eq!(
                wc.status,
                WcStatus::Success,
                "seed {seed}: {wc:?} for {:?}",
                p.op
            );
            let mem = s.pair.a.memory().as_slice();
            if let Some((dst, want)) = &p.check {
                let d = *dst as usize;
                if mem[d..d + want.len()] != want[..] {
                    let bad: Vec<usize> =
                        (0..want.len()).filter(|&i| mem[d + i] != want[i]).collect();
                    panic!(
                        "seed {seed}: READ {} data: {} of {} bytes differ, first at {}, last at {}, mtu {}",
                        p.wr_id,
                        bad.len(),
                        want.len(),
                        bad[0],
                        bad[bad.len() - 1],
                        mtu.bytes()
                    );
                }
            }
            if let Some((slot, orig)) = p.atomic {
                // Each in-flight atomic has its own result slot.
                let got =
                    u64::from_ne_bytes(mem[slot as usize..slot as usize + 8].try_into().unwrap());
                assert_eq!(got, orig, "seed {seed}: atomic {} original value", p.wr_id);
            }
            done += 1;
        }
        for wc in drain(&mut s.pair.b, s.b.cq) {
            assert_eq!(wc.status, WcStatus::Success, "seed {seed}: receive {wc:?}");
            let e = expect_recv
                .pop_front()
                .unwrap_or_else(|| panic!("seed {seed}: unexpected receive {wc:?}"));
            let buf = RBUF + wc.wr_id % NRBUF * RBUF_LEN;
            match e {
                Expect::Send { data, imm, inv } => {
                    assert_eq!(wc.opcode, WcOpcode::Recv);
                    assert_eq!(wc.byte_len as usize, data.len(), "seed {seed}");
                    assert_eq!(wc.imm_data, imm, "seed {seed}");
                    assert_eq!(wc.invalidated_rkey, inv, "seed {seed}");
                    if let Some(k) = inv {
                        // B registers the MR again under a new key part.
                        let next = (k & !0xff) | (k.wrapping_add(1) & 0xff);
                        let mut wr = SendWr::new(
                            0,
                            SendOp::RegMr {
                                key: next,
                                access: common::ALL_ACCESS,
                            },
                            &[],
                        );
                        wr.signaled = false;
                        s.pair.b.post_send(s.b.qp, &wr).unwrap();
                        inv_pool.push_back(next);
                    }
                    let b = buf as usize;
                    let mem = s.pair.b.memory().as_slice();
                    assert_eq!(&mem[b..b + data.len()], &data[..], "seed {seed}: SEND data");
                    shadow_b[b..b + data.len()].copy_from_slice(&data);
                }
                Expect::WriteImm { len, imm } => {
                    assert_eq!(wc.opcode, WcOpcode::RecvRdmaWithImm, "seed {seed}");
                    assert_eq!((wc.byte_len, wc.imm_data), (len, Some(imm)), "seed {seed}");
                }
            }
            let sge = [Sge {
                addr: RBUF + next_rbuf % NRBUF * RBUF_LEN,
                length: RBUF_LEN as u32,
                lkey: kb,
            }];
            s.pair
                .b
                .post_recv(
                    s.b.qp,
                    &RecvWr {
                        wr_id: next_rbuf,
                        sges: &sge,
                    },
                )
                .unwrap();
            next_rbuf += 1;
        }
        if std::env::var("SOAK_TRACE").is_ok() {
            let q = s.pair.a.qp(s.a.qp).unwrap();
            eprintln!(
                "t={} done={done} posted={posted} pending={} state={:?} sq_psn={} link={:?}",
                s.pair.now,
                pending.len(),
                q.state(),
                q.sq_psn(),
                s.pair.stats
            );
        }
        if done == before && s.pair.next_event().is_none() {
            panic!(
                "seed {seed}: stalled after {done} of {n} operations\nA: {}\nB: {}",
                s.pair.a.qp(s.a.qp).unwrap().debug_progress(),
                s.pair.b.qp(s.b.qp).unwrap().debug_progress()
            );
        }
        assert!(
            started.elapsed().as_secs() < 60,
            "seed {seed}: too slow, {done} of {n} done in a minute"
        );
    }
    assert!(expect_recv.is_empty(), "seed {seed}: receives missing");
    assert_eq!(
        s.pair.a.memory().as_slice(),
        &shadow_a[..],
        "seed {seed}: memory of A"
    );
    assert_eq!(
        s.pair.b.memory().as_slice(),
        &shadow_b[..],
        "seed {seed}: memory of B"
    );
    let st = s.pair.stats;
    eprintln!(
        "rc_soak: mtu {} ops {counts:?} ({unsignaled} unsignaled) link {st:?} virtual {} ms, wall {:?}",
        mtu.bytes(),
        s.pair.now / 1_000_000,
        started.elapsed()
    );
    if n >= 1000 {
        assert!(
            counts.iter().all(|&c| c > 0) && unsignaled > 0,
            "seed {seed}: every opcode ran"
        );
    }
    if std::env::var("SOAK_CLEAN").is_err() {
        assert!(st.lost > 0 && st.corrupted > 0 && st.duplicated > 0 && st.reordered > 0);
    }
    assert_eq!(
        st.undetected, 0,
        "seed {seed}: a corrupted packet got past the ICRC"
    );
    assert!(
        st.rejected >= st.corrupted - st.corrupted_masked,
        "seed {seed}"
    );
}
