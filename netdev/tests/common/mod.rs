//! The workload shared by the link tests: two engines, one RC QP each,
//! random SENDs, WRITEs, READs and atomics with every byte and completion
//! checked against a shadow model. Each link test supplies the link.

#![allow(dead_code)]

use std::{net::IpAddr, time::Instant};

use netdev::Link;
use rand::{Rng, SeedableRng, rngs::SmallRng};
use transport::{
    device::{DeviceAttrs, Gid},
    engine::{Engine, QpInit, RxMeta},
    memory::VecMemory,
    sim::{Conn, connect},
    verbs::{Access, QpCaps, QpType, RecvWr, SendOp, SendWr, Sge, Wc, WcOpcode, WcStatus},
    wire::Mtu,
};

/// Runs `ip ARGS`; children inherit the calling thread's network
/// namespace.
pub fn ip(args: &[&str]) {
    let st = std::process::Command::new("ip")
        .args(args)
        .status()
        .unwrap();
    assert!(st.success(), "ip {args:?}");
}

/// Moves the calling thread into a new, private network namespace.
pub fn unshare_net() {
    // SAFETY: unshare affects only the calling thread's namespaces.
    let rc = unsafe { libc::unshare(libc::CLONE_NEWNET) };
    let err = std::io::Error::last_os_error();
    assert_eq!(rc, 0, "unshare(CLONE_NEWNET): {err}");
}

/// Runs `f` on a new thread in a private network namespace, which
/// vanishes with the thread and the sockets opened in it.
pub fn in_private_netns(f: impl FnOnce() + Send + 'static) {
    std::thread::spawn(|| {
        unshare_net();
        f();
    })
    .join()
    .unwrap();
}

/// The counters the workload checks at the end: (packets received good,
/// packets dropped as bad).
pub trait Counts {
    /// (received, bad).
    fn counts(&self) -> (u64, u64);
}

const MEM: usize = 4 << 20;
const SRC: u64 = 0; // A: source data, 1 MiB
const RDST: u64 = 1 << 20; // A: READ destinations, 1 MiB
const RES: u64 = 2 << 20; // A: atomic results
const WDST: u64 = 1 << 20; // B: WRITE targets, 1 MiB
const RSRC: u64 = 2 << 20; // B: READ sources, 1 MiB, never written (a
// retransmitted READ is answered from memory as
// it is then, as in rxe)
const CTR: u64 = 3 << 20; // B: counters
const RBUF: u64 = 3 << 20 | 1 << 19; // B: receive buffers, 16 × 32 KiB

struct Node<L> {
    e: Engine<VecMemory>,
    link: L,
    cq: u32,
    key: u32,
    qp: u32,
}

fn node<L: Link + Counts>(ip: &str, link: L) -> Node<L> {
    let ip: IpAddr = ip.parse().unwrap();
    let mut e = Engine::new(DeviceAttrs::default(), VecMemory::new(MEM));
    e.gids_mut().set(0, Some(Gid::from_ip(ip)));
    let pd = e.alloc_pd().unwrap();
    let cq = e.create_cq(1024).unwrap();
    let all = Access::LOCAL_WRITE
        .with(Access::REMOTE_WRITE)
        .with(Access::REMOTE_READ)
        .with(Access::REMOTE_ATOMIC);
    let key = e.reg_mr(pd, 0, MEM as u64, 0, all).unwrap();
    let caps = QpCaps {
        max_send_wr: 256,
        max_recv_wr: 256,
        max_send_sge: 1,
        max_recv_sge: 1,
        max_inline_data: 0,
    };
    let qp = e
        .create_qp(&QpInit {
            qp_type: QpType::Rc,
            pd,
            send_cq: cq,
            recv_cq: cq,
            caps,
            sq_sig_all: false,
            srq: None,
        })
        .unwrap();
    Node {
        e,
        link,
        cq,
        key,
        qp,
    }
}

/// Moves packets and timers once; returns whether anything happened.
fn pump<L: Link + Counts>(nodes: &mut [Node<L>; 2], start: Instant, buf: &mut [u8]) -> bool {
    let now = start.elapsed().as_nanos() as u64;
    let mut any = false;
    for n in nodes.iter_mut() {
        while let Some(t) = n.e.poll_transmit(now, buf) {
            // A send error (a full queue) is a loss the engine recovers from.
            // Queued: the udp and packet links send each burst with one
            // sendmmsg.
            let _ = n.link.send_queued(&t, &mut buf[..t.len], now);
            any = true;
        }
        let _ = n.link.flush();
    }
    for n in nodes.iter_mut() {
        if n.link.poll_timeout().is_some_and(|t| t <= now) {
            let _ = n.link.handle_timeout(now);
        }
        while let Some(r) = n.link.recv(buf, now).unwrap() {
            let meta = RxMeta {
                ip_header: &buf[r.ip_start..r.ip_start + r.ip_len],
                ecn: r.ecn,
            };
            let _ =
                n.e.handle_packet(now, &meta, &buf[r.ib_start..r.ib_start + r.ib_len]);
            any = true;
        }
        if n.e.poll_timeout().is_some_and(|t| t <= now) {
            n.e.handle_timeout(now);
            any = true;
        }
    }
    any
}

/// An epoll set over both links' descriptors: the workload sleeps in it
/// whenever nothing moved, until a link has a packet or the next timer
/// (the engines' or the links') is due. A link whose `fd()` were wrong
/// would leave the loop waiting for retransmission timers, and the
/// per-round deadline would fail the test.
struct Epoll(std::os::fd::OwnedFd);

impl Epoll {
    fn new<L: Link>(nodes: &[Node<L>; 2]) -> Epoll {
        use std::os::fd::{AsRawFd, FromRawFd};
        // SAFETY: plain epoll_create1; the result is checked.
        let fd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        assert!(
            fd >= 0,
            "epoll_create1: {}",
            std::io::Error::last_os_error()
        );
        // SAFETY: `fd` is a fresh descriptor that nothing else owns.
        let ep = Epoll(unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) });
        for n in nodes {
            let mut ev = libc::epoll_event {
                events: libc::EPOLLIN as u32,
                u64: 0,
            };
            // SAFETY: both descriptors are open; `ev` lives across the call.
            let rc = unsafe {
                libc::epoll_ctl(ep.0.as_raw_fd(), libc::EPOLL_CTL_ADD, n.link.fd(), &mut ev)
            };
            assert_eq!(rc, 0, "epoll_ctl: {}", std::io::Error::last_os_error());
        }
        ep
    }
}

/// Sleeps until a link is readable or the next timer is due (at most 1 s).
fn wait<L: Link>(ep: &Epoll, nodes: &[Node<L>; 2], start: Instant) {
    use std::os::fd::AsRawFd;
    let now = start.elapsed().as_nanos() as u64;
    let next = nodes
        .iter()
        .flat_map(|n| [n.e.poll_timeout(), n.link.poll_timeout()])
        .flatten()
        .min();
    let ms = next.map_or(1000, |t| {
        t.saturating_sub(now).div_ceil(1_000_000).min(1000)
    });
    let mut ev = [libc::epoll_event { events: 0, u64: 0 }; 2];
    // SAFETY: `ev` has room for the 2 events asked for.
    unsafe { libc::epoll_wait(ep.0.as_raw_fd(), ev.as_mut_ptr(), 2, ms as i32) };
}

fn drain(e: &mut Engine<VecMemory>, cq: u32) -> Vec<Wc> {
    let mut out = Vec::new();
    let mut buf = [Wc {
        wr_id: 0,
        status: WcStatus::Success,
        opcode: WcOpcode::Send,
        byte_len: 0,
        qp_num: 0,
        src_qp: 0,
        imm_data: None,
        invalidated_rkey: None,
        ip_version: None,
    }; 64];
    loop {
        let n = e.poll_cq(cq, &mut buf).unwrap();
        out.extend_from_slice(&buf[..n]);
        if n < buf.len() {
            return out;
        }
    }
}

/// Runs `rounds` rounds of 16 checked operations between `a` (on
/// `links[0]`) and `b` (on `links[1]`); returns each link's counts.
pub fn run<L: Link + Counts>(links: [L; 2], a: &str, b: &str, rounds: u64) -> [(u64, u64); 2] {
    let seed: u64 = 7;
    let mut rng = SmallRng::seed_from_u64(seed);
    let [la, lb] = links;
    let mut nodes = [node(a, la), node(b, lb)];
    let mtu = Mtu::Mtu1024;
    let (qa, qb) = (nodes[0].qp, nodes[1].qp);
    let c = Conn {
        dest: qb,
        dgid: Gid::from_ip(b.parse().unwrap()),
        mtu,
        sq_psn: 0x10,
        rq_psn: 0x20,
        timeout: 14,
        retry: 7,
        rnr_retry: 7,
    };
    connect(&mut nodes[0].e, qa, c).unwrap();
    let cb = Conn {
        dest: qa,
        dgid: Gid::from_ip(a.parse().unwrap()),
        sq_psn: 0x20,
        rq_psn: 0x10,
        ..c
    };
    connect(&mut nodes[1].e, qb, cb).unwrap();
    rng.fill(&mut nodes[0].e.memory_mut().as_mut_slice()[..]);
    rng.fill(&mut nodes[1].e.memory_mut().as_mut_slice()[..]);
    let mut shadow_b = nodes[1].e.memory().as_slice().to_vec();
    let (ka, kb) = (nodes[0].key, nodes[1].key);
    let start = Instant::now();
    let epoll = Epoll::new(&nodes);
    let mut buf = vec![0u8; 65536];
    let mut done = 0;
    for round in 0..rounds {
        // 16 operations a round; READ destinations and receive buffers
        // never overlap within a round.
        let mut expect_read = Vec::new();
        let mut expect_recv = Vec::new();
        let mut expect_atomic = Vec::new();
        for i in 0..16u64 {
            let id = round * 16 + i;
            let kind = rng.random_range(0..4);
            let len = rng.random_range(0..=32 * 1024u64);
            let src = SRC + rng.random_range(0..=(1 << 20) - len);
            let a = &nodes[0].e.memory().as_slice()[src as usize..(src + len) as usize].to_vec();
            let sge = [Sge {
                addr: src,
                length: len as u32,
                lkey: ka,
            }];
            let wr = match kind {
                0 => {
                    let rbuf = RBUF + i * 32 * 1024;
                    let rsge = [Sge {
                        addr: rbuf,
                        length: 32 * 1024,
                        lkey: kb,
                    }];
                    nodes[1]
                        .e
                        .post_recv(
                            qb,
                            &RecvWr {
                                wr_id: id,
                                sges: &rsge,
                            },
                        )
                        .unwrap();
                    expect_recv.push((rbuf, a.clone()));
                    SendWr::new(id, SendOp::Send, &sge)
                }
                1 => {
                    let dst = WDST + rng.random_range(0..=(1 << 20) - len);
                    shadow_b[dst as usize..(dst + len) as usize].copy_from_slice(a);
                    SendWr::new(id, SendOp::Write, &sge).remote(dst, kb)
                }
                2 => {
                    let from = RSRC + rng.random_range(0..=(1 << 20) - len);
                    let to = RDST + i * 64 * 1024;
                    let rsge = [Sge {
                        addr: to,
                        length: len as u32,
                        lkey: ka,
                    }];
                    expect_read.push((to, shadow_b[from as usize..(from + len) as usize].to_vec()));
                    let wr = SendWr::new(id, SendOp::Read, &rsge).remote(from, kb);
                    nodes[0].e.post_send(qa, &wr).unwrap();
                    continue;
                }
                _ => {
                    let ctr = CTR + 8 * rng.random_range(0..4u64);
                    let cur = u64::from_ne_bytes(
                        shadow_b[ctr as usize..ctr as usize + 8].try_into().unwrap(),
                    );
                    shadow_b[ctr as usize..ctr as usize + 8]
                        .copy_from_slice(&cur.wrapping_add(3).to_ne_bytes());
                    let res = RES + i * 8;
                    expect_atomic.push((res, cur));
                    let rsge = [Sge {
                        addr: res,
                        length: 8,
                        lkey: ka,
                    }];
                    let wr = SendWr::new(id, SendOp::FetchAdd { add: 3 }, &rsge).remote(ctr, kb);
                    nodes[0].e.post_send(qa, &wr).unwrap();
                    continue;
                }
            };
            let mut wr = wr;
            wr.signaled = true;
            nodes[0].e.post_send(qa, &wr).unwrap();
        }
        // Run until all 16 complete (reads and atomics are signaled by
        // default; sends and writes were marked signaled).
        let mut got = Vec::new();
        let deadline = Instant::now() + std::time::Duration::from_secs(20);
        while got.len() < 16 {
            if !pump(&mut nodes, start, &mut buf) {
                wait(&epoll, &nodes, start);
            }
            got.extend(drain(&mut nodes[0].e, nodes[0].cq));
            assert!(
                Instant::now() < deadline,
                "round {round} stalled: {} of 16",
                got.len()
            );
        }
        assert!(got.iter().all(|w| w.status == WcStatus::Success), "{got:?}");
        done += got.len();
        let wb = drain(&mut nodes[1].e, nodes[1].cq);
        assert_eq!(wb.len(), expect_recv.len());
        let ma = nodes[0].e.memory().as_slice();
        let mb = nodes[1].e.memory().as_slice();
        for (w, (rbuf, data)) in wb.iter().zip(&expect_recv) {
            assert_eq!(w.byte_len as usize, data.len());
            assert_eq!(&mb[*rbuf as usize..*rbuf as usize + data.len()], &data[..]);
        }
        for (k, (to, data)) in expect_read.iter().enumerate() {
            let got = &ma[*to as usize..*to as usize + data.len()];
            if got != &data[..] {
                let first = (0..data.len()).find(|&i| got[i] != data[i]).unwrap();
                let bad = (0..data.len()).filter(|&i| got[i] != data[i]).count();
                panic!(
                    "round {round} read {k}: len {} first diff {first} ({bad} bytes)",
                    data.len()
                );
            }
        }
        for (res, cur) in &expect_atomic {
            assert_eq!(
                u64::from_ne_bytes(ma[*res as usize..*res as usize + 8].try_into().unwrap()),
                *cur
            );
        }
        // B's WRITE targets and counters match the model.
        let range = WDST as usize..(CTR + 64) as usize;
        if let Some(i) = (range.clone()).find(|&i| mb[i] != shadow_b[i]) {
            let bad = range.clone().filter(|&i| mb[i] != shadow_b[i]).count();
            panic!("round {round}: B differs from the model at {i:#x} ({bad} bytes)");
        }
    }
    assert_eq!(done, rounds as usize * 16);
    let (sa, sb) = (nodes[0].link.counts(), nodes[1].link.counts());
    assert_eq!((sa.1, sb.1), (0, 0), "every ICRC checked good");
    assert!(sa.0 > 0 && sb.0 > 0);
    eprintln!(
        "{a} <-> {b}: {done} operations, (received, bad) A {sa:?}, B {sb:?}, {:?}",
        start.elapsed()
    );
    [sa, sb]
}
