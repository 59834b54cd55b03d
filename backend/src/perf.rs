//! The `perf` subcommand: two engines on an in-memory link on one core,
//! measuring RC WRITE, READ and SEND bandwidth, the 64-byte message rate
//! and the round-trip latency. Every figure is printed as one JSON object
//! per line, next to memcpy and CRC-32 baselines measured in the same run,
//! so results can be judged as ratios.
//!
//! Every packet takes the full path a real link would: the engine builds
//! it, it is framed in IPv4/UDP with a real ICRC, parsed and ICRC-checked
//! on the other side, and handed to the peer engine.
//!
//! With `--link udp` the two engines talk over the real `udp` link on
//! loopback; with `--link veth` over the real `packet` link on a veth
//! pair between two private network namespaces that the run creates (and
//! that vanish with it). Both add raw UDP stream and ping-pong baselines
//! measured over the same path in the same run.

use std::{
    hint::black_box,
    io::{self, Write},
    time::{Duration, Instant},
};

use transport::{
    engine::{Engine, QpInit},
    memory::VecMemory,
    sim::{Conn, LinkConfig, Pair, connect},
    verbs::{Access, QpCaps, QpType, RecvWr, SendOp, SendWr, Sge, Wc, WcOpcode, WcStatus},
    wire::Mtu,
};

/// Which measurements to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum PerfTest {
    /// RC RDMA WRITE bandwidth over message sizes.
    Write,
    /// RC RDMA READ bandwidth over message sizes.
    Read,
    /// RC SEND bandwidth over message sizes.
    Send,
    /// 64-byte SEND message rate.
    Rate,
    /// 64-byte SEND round-trip latency (reported one way, as perftest does).
    Lat,
}

/// The link between the two engines.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum PerfLink {
    /// In memory, one core, every packet framed and ICRC-checked.
    Memory,
    /// The real `udp` link over loopback (127.0.0.1 and 127.0.0.2; needs
    /// CAP_NET_RAW), in real time.
    Udp,
    /// The real `packet` link over a veth pair between two private network
    /// namespaces created for the run (needs root and `ip`), in real time.
    Veth,
    /// The real `tap` link: two TAPs on a Linux bridge in a private network
    /// namespace created for the run (needs root and `ip`), in real time.
    Tap,
}

impl PerfLink {
    fn name(self) -> &'static str {
        match self {
            PerfLink::Memory => "memory",
            PerfLink::Udp => "udp",
            PerfLink::Veth => "veth",
            PerfLink::Tap => "tap",
        }
    }
}

/// Options of a run.
#[derive(Debug, Clone)]
pub struct PerfOptions {
    /// The link.
    pub link: PerfLink,
    /// Tests to run, in order.
    pub tests: Vec<PerfTest>,
    /// Path MTU.
    pub mtu: Mtu,
    /// Smallest message for the bandwidth tests.
    pub min_size: u32,
    /// Largest message for the bandwidth tests.
    pub max_size: u32,
    /// Time spent on each measurement.
    pub duration: Duration,
    /// On the `tap` link: gather queued packets into GSO trains (the
    /// default) or write every packet on its own.
    pub tap_gso: bool,
}

/// Why a run failed.
#[derive(Debug, thiserror::Error)]
pub enum PerfError {
    /// The engines refused a verb.
    #[error("engine setup failed: {0}")]
    Verbs(#[from] transport::verbs::VerbsError),
    /// A work request completed in error.
    #[error("work request completed with {0:?}")]
    Completion(WcStatus),
    /// Traffic stopped moving.
    #[error("no progress: the engines stalled")]
    Stalled,
    /// Writing the results failed.
    #[error("cannot write the results")]
    Output(#[source] io::Error),
    /// The link could not be set up.
    #[error("link setup failed")]
    Link(#[from] netdev::LinkError),
    /// A UDP baseline socket failed.
    #[error("UDP baseline failed")]
    Baseline(#[source] io::Error),
    /// Creating the namespaces or the veth pair failed.
    #[error("veth setup failed: {0}")]
    Namespace(String),
}

const RBUF: u64 = 8 << 20;
/// How long nothing may move before a run counts as stalled.
const STALL: Duration = Duration::from_secs(5);
const MEM: usize = 12 << 20;

struct Side {
    cq: u32,
    key: u32,
    qp: u32,
}

fn side(e: &mut Engine<VecMemory>) -> Result<Side, PerfError> {
    let pd = e.alloc_pd()?;
    let cq = e.create_cq(4096)?;
    let all = Access::LOCAL_WRITE
        .with(Access::REMOTE_WRITE)
        .with(Access::REMOTE_READ)
        .with(Access::REMOTE_ATOMIC);
    let key = e.reg_mr(pd, 0, MEM as u64, 0, all)?;
    let qp = e.create_qp(&QpInit {
        qp_type: QpType::Rc,
        pd,
        send_cq: cq,
        recv_cq: cq,
        caps: QpCaps {
            max_send_wr: 1024,
            max_recv_wr: 1024,
            max_send_sge: 1,
            max_recv_sge: 1,
            max_inline_data: 0,
        },
        sq_sig_all: false,
        srq: None,
    })?;
    Ok(Side { cq, key, qp })
}

/// Two engines joined by some link, driven one step at a time.
trait Duo {
    /// Engine A.
    fn a(&mut self) -> &mut Engine<VecMemory>;
    /// Engine B.
    fn b(&mut self) -> &mut Engine<VecMemory>;
    /// Moves packets and timers once; returns whether anything happened.
    fn step(&mut self) -> bool;
    /// The GIDs of A and B.
    fn gids(&self) -> (transport::device::Gid, transport::device::Gid);
}

impl Duo for Pair {
    fn a(&mut self) -> &mut Engine<VecMemory> {
        &mut self.a
    }
    fn b(&mut self) -> &mut Engine<VecMemory> {
        &mut self.b
    }
    fn step(&mut self) -> bool {
        Pair::step(self)
    }
    fn gids(&self) -> (transport::device::Gid, transport::device::Gid) {
        (Pair::gid_a(), Pair::gid_b())
    }
}

/// Two engines over a real link, in real time.
struct NetDuo<L> {
    a: Engine<VecMemory>,
    b: Engine<VecMemory>,
    la: L,
    lb: L,
    ips: (std::net::IpAddr, std::net::IpAddr),
    start: Instant,
    buf: Vec<u8>,
}

const UDP_A: [u8; 4] = [127, 0, 0, 1];
const UDP_B: [u8; 4] = [127, 0, 0, 2];
/// The engines' addresses on the veth (the kernels' are .1 and .2).
const TAP_A: [u8; 4] = [10, 92, 0, 11];
const TAP_B: [u8; 4] = [10, 92, 0, 12];
const VETH_A: [u8; 4] = [10, 91, 0, 11];
const VETH_B: [u8; 4] = [10, 91, 0, 12];

impl<L: netdev::Link> NetDuo<L> {
    fn new(ia: std::net::IpAddr, ib: std::net::IpAddr, la: L, lb: L) -> NetDuo<L> {
        use transport::device::Gid;
        let mut a = Engine::new(Default::default(), VecMemory::new(MEM));
        let mut b = Engine::new(Default::default(), VecMemory::new(MEM));
        a.gids_mut().set(0, Some(Gid::from_ip(ia)));
        b.gids_mut().set(0, Some(Gid::from_ip(ib)));
        NetDuo {
            a,
            b,
            la,
            lb,
            ips: (ia, ib),
            start: Instant::now(),
            buf: vec![0; 65536],
        }
    }
}

impl<L: netdev::Link> Duo for NetDuo<L> {
    fn a(&mut self) -> &mut Engine<VecMemory> {
        &mut self.a
    }
    fn b(&mut self) -> &mut Engine<VecMemory> {
        &mut self.b
    }
    fn step(&mut self) -> bool {
        let now = self.start.elapsed().as_nanos() as u64;
        let mut any = false;
        for (e, l) in [(&mut self.a, &mut self.la), (&mut self.b, &mut self.lb)] {
            while let Some(t) = e.poll_transmit(now, &mut self.buf) {
                // A send error (e.g. a full queue) is a loss the engine
                // recovers from.
                let _ = l.send_queued(&t, &mut self.buf[..t.len], now);
                any = true;
            }
            let _ = l.flush();
        }
        for (e, l) in [(&mut self.a, &mut self.la), (&mut self.b, &mut self.lb)] {
            if l.poll_timeout().is_some_and(|t| t <= now) {
                let _ = l.handle_timeout(now);
            }
            while let Ok(Some(r)) = l.recv(&mut self.buf, now) {
                let meta = transport::engine::RxMeta {
                    ip_header: &self.buf[r.ip_start..r.ip_start + r.ip_len],
                    ecn: r.ecn,
                };
                let _ = e.handle_packet(now, &meta, &self.buf[r.ib_start..r.ib_start + r.ib_len]);
                any = true;
            }
            if e.poll_timeout().is_some_and(|t| t <= now) {
                e.handle_timeout(now);
                any = true;
            }
        }
        any
    }
    fn gids(&self) -> (transport::device::Gid, transport::device::Gid) {
        (
            transport::device::Gid::from_ip(self.ips.0),
            transport::device::Gid::from_ip(self.ips.1),
        )
    }
}

fn ns_err(what: impl std::fmt::Display) -> PerfError {
    PerfError::Namespace(what.to_string())
}

/// Runs `ip ARGS` (in the calling thread's network namespace).
fn ip(args: &[&str]) -> Result<(), PerfError> {
    let st = std::process::Command::new("ip")
        .args(args)
        .status()
        .map_err(|e| ns_err(format!("cannot run `ip`: {e}")))?;
    if !st.success() {
        return Err(ns_err(format!("`ip {}` failed ({st})", args.join(" "))));
    }
    Ok(())
}

/// Moves the calling thread into a new, private network namespace.
fn unshare_net() -> Result<(), PerfError> {
    // SAFETY: unshare only changes the calling thread's namespaces.
    if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
        let e = io::Error::last_os_error();
        return Err(ns_err(format!("unshare(CLONE_NEWNET): {e} (needs root)")));
    }
    Ok(())
}

/// The veth setup: this thread moves into a new namespace holding `va`
/// (kernel address 10.91.0.1); a helper thread makes a second namespace
/// holding `vb` (10.91.0.2) and opens its side there. Returns the two
/// `packet` links (the engines are .11 and .12) and a kernel UDP socket on
/// each side for the baselines. Everything vanishes with the process.
fn veth_setup() -> Result<
    (
        netdev::eth::EthLink,
        netdev::eth::EthLink,
        std::net::UdpSocket,
        std::net::UdpSocket,
    ),
    PerfError,
> {
    use std::{net::UdpSocket, sync::mpsc};
    unshare_net()?;
    let (tid_tx, tid_rx) = mpsc::channel();
    let (go_tx, go_rx) = mpsc::channel::<()>();
    let helper = std::thread::spawn(move || -> Result<_, PerfError> {
        unshare_net()?;
        // SAFETY: gettid has no preconditions.
        let _ = tid_tx.send(unsafe { libc::gettid() });
        go_rx.recv().map_err(|_| ns_err("setup abandoned"))?;
        ip(&["link", "set", "vb", "up"])?;
        ip(&["addr", "add", "10.91.0.2/24", "dev", "vb"])?;
        let link = netdev::eth::EthLink::packet("vb", vec![VETH_B.into()])?;
        let sock = UdpSocket::bind("10.91.0.2:0").map_err(PerfError::Baseline)?;
        Ok((link, sock))
    });
    let tid = tid_rx.recv();
    let setup = tid
        .map_err(|_| ns_err("the helper thread failed before reporting"))
        .and_then(|tid| {
            // MTU 9000, so that RoCE MTU 4096 frames fit.
            ip(&[
                "link", "add", "va", "mtu", "9000", "type", "veth", "peer", "name", "vb", "mtu",
                "9000",
            ])?;
            ip(&["link", "set", "vb", "netns", &tid.to_string()])?;
            ip(&["link", "set", "va", "up"])?;
            ip(&["addr", "add", "10.91.0.1/24", "dev", "va"])
        });
    if setup.is_ok() {
        let _ = go_tx.send(());
    }
    drop(go_tx);
    let joined = helper
        .join()
        .map_err(|_| ns_err("the helper thread panicked"))?;
    setup?;
    let (lb, sb) = joined?;
    let la = netdev::eth::EthLink::packet("va", vec![VETH_A.into()])?;
    let sa = UdpSocket::bind("10.91.0.1:0").map_err(PerfError::Baseline)?;
    Ok((la, lb, sa, sb))
}

/// The TAP setup: this thread moves into a new namespace with bridge br0
/// (kernel addresses 10.92.0.1 and .2, for the baselines' UDP sockets)
/// and two TAPs on it, MTU 9000, opened as `tap` links (the engines are
/// .11 and .12). Everything vanishes with the process.
fn tap_setup(
    gso: bool,
) -> Result<
    (
        netdev::eth::EthLink,
        netdev::eth::EthLink,
        std::net::UdpSocket,
        std::net::UdpSocket,
    ),
    PerfError,
> {
    unshare_net()?;
    ip(&["link", "set", "lo", "up"])?;
    ip(&["link", "add", "br0", "type", "bridge"])?;
    let mut la =
        netdev::eth::EthLink::tap("vpa", [2, 0x76, 0x75, 0x72, 0x92, 0xa], vec![TAP_A.into()])?;
    let mut lb =
        netdev::eth::EthLink::tap("vpb", [2, 0x76, 0x75, 0x72, 0x92, 0xb], vec![TAP_B.into()])?;
    la.set_gso(gso);
    lb.set_gso(gso);
    for t in ["vpa", "vpb"] {
        ip(&["link", "set", t, "mtu", "9000"])?;
        ip(&["link", "set", t, "master", "br0", "up"])?;
    }
    ip(&["link", "set", "br0", "up"])?;
    ip(&["addr", "add", "10.92.0.1/24", "dev", "br0"])?;
    ip(&["addr", "add", "10.92.0.2/24", "dev", "br0"])?;
    let sa = std::net::UdpSocket::bind("10.92.0.1:0").map_err(PerfError::Baseline)?;
    let sb = std::net::UdpSocket::bind("10.92.0.2:0").map_err(PerfError::Baseline)?;
    Ok((la, lb, sa, sb))
}

struct Bench {
    duo: Box<dyn Duo>,
    a: Side,
    b: Side,
    wcs: Vec<Wc>,
    next_recv: u64,
    /// Receives posted on B and not yet consumed.
    b_recvs: usize,
}

impl Bench {
    fn new(mtu: Mtu, mut duo: Box<dyn Duo>) -> Result<Bench, PerfError> {
        let (gid_a, gid_b) = duo.gids();
        let a = side(duo.a())?;
        let b = side(duo.b())?;
        let c = Conn {
            dest: b.qp,
            dgid: gid_b,
            mtu,
            sq_psn: 0,
            rq_psn: 0,
            timeout: 14,
            retry: 7,
            rnr_retry: 7,
        };
        connect(duo.a(), a.qp, c)?;
        connect(
            duo.b(),
            b.qp,
            Conn {
                dest: a.qp,
                dgid: gid_a,
                ..c
            },
        )?;
        Ok(Bench {
            duo,
            a,
            b,
            wcs: vec![
                Wc {
                    wr_id: 0,
                    status: WcStatus::Success,
                    opcode: WcOpcode::Send,
                    byte_len: 0,
                    qp_num: 0,
                    src_qp: 0,
                    imm_data: None,
                    invalidated_rkey: None,
                    ip_version: None,
                };
                256
            ],
            next_recv: 0,
            b_recvs: 0,
        })
    }

    /// Posts a receive of the largest size, so a receive left over from
    /// one measurement fits the messages of the next.
    fn post_recv(&mut self, on_b: bool) -> Result<(), PerfError> {
        const SLOT: u64 = 1 << 20;
        let (e, s) = if on_b {
            self.b_recvs += 1;
            (self.duo.b(), &self.b)
        } else {
            (self.duo.a(), &self.a)
        };
        let sge = [Sge {
            addr: RBUF + (self.next_recv % 4) * SLOT,
            length: SLOT as u32,
            lkey: s.key,
        }];
        e.post_recv(
            s.qp,
            &RecvWr {
                wr_id: self.next_recv,
                sges: &sge,
            },
        )?;
        self.next_recv += 1;
        Ok(())
    }

    /// Streams `op` messages of `size` bytes with `depth` outstanding for
    /// `duration`; returns (messages, elapsed, per-message latencies).
    fn stream(
        &mut self,
        op: SendOp,
        size: u32,
        depth: usize,
        duration: Duration,
    ) -> Result<(u64, Duration, Vec<f64>), PerfError> {
        let sge = [Sge {
            addr: 0,
            length: size,
            lkey: self.a.key,
        }];
        let is_send = op == SendOp::Send;
        if is_send {
            while self.b_recvs < depth {
                self.post_recv(true)?;
            }
        }
        let mut posted_at = std::collections::VecDeque::with_capacity(depth);
        let mut lat = Vec::with_capacity(1 << 16);
        let start = Instant::now();
        let mut done = 0u64;
        let mut posted = 0u64;
        let mut idle = 0u32;
        let mut last_progress = Instant::now();
        loop {
            let running = start.elapsed() < duration;
            while running && posted_at.len() < depth {
                let wr = SendWr::new(posted, op, &sge).remote(0x40_0000, self.b.key);
                self.duo.a().post_send(self.a.qp, &wr)?;
                posted_at.push_back(Instant::now());
                posted += 1;
            }
            if !running && posted_at.is_empty() {
                break;
            }
            let moved = self.duo.step();
            let n = self.duo.a().poll_cq(self.a.cq, &mut self.wcs)?;
            for wc in &self.wcs[..n] {
                if wc.status != WcStatus::Success {
                    return Err(PerfError::Completion(wc.status));
                }
                if let Some(t) = posted_at.pop_front() {
                    lat.push(t.elapsed().as_secs_f64() * 1e6);
                }
                done += 1;
            }
            if is_send {
                let m = self.duo.b().poll_cq(self.b.cq, &mut self.wcs)?;
                self.b_recvs -= m;
                for _ in 0..m {
                    self.post_recv(true)?;
                }
            }
            if moved || n > 0 {
                idle = 0;
                last_progress = Instant::now();
            } else {
                idle += 1;
                // Real links wait for neighbours and retransmission
                // timers, so a stall is judged by time, not by steps.
                if idle > 1000 && last_progress.elapsed() > STALL {
                    return Err(PerfError::Stalled);
                }
            }
        }
        Ok((done, start.elapsed(), lat))
    }

    /// Ping-pong of 64-byte SENDs; returns one-way latencies in µs.
    fn ping_pong(&mut self, duration: Duration) -> Result<(u64, Duration, Vec<f64>), PerfError> {
        let size = 64;
        let sa = [Sge {
            addr: 0,
            length: size,
            lkey: self.a.key,
        }];
        let sb = [Sge {
            addr: 0,
            length: size,
            lkey: self.b.key,
        }];
        let mut lat = Vec::with_capacity(1 << 16);
        let start = Instant::now();
        let mut iters = 0u64;
        while start.elapsed() < duration {
            if self.b_recvs == 0 {
                self.post_recv(true)?;
            }
            self.post_recv(false)?;
            let t = Instant::now();
            let mut wr = SendWr::new(iters, SendOp::Send, &sa);
            wr.signaled = false;
            self.duo.a().post_send(self.a.qp, &wr)?;
            // B answers as soon as the ping lands.
            self.wait_recv(true)?;
            let mut wr = SendWr::new(iters, SendOp::Send, &sb);
            wr.signaled = false;
            self.duo.b().post_send(self.b.qp, &wr)?;
            self.wait_recv(false)?;
            lat.push(t.elapsed().as_secs_f64() * 1e6 / 2.0);
            iters += 1;
        }
        Ok((iters, start.elapsed(), lat))
    }

    fn wait_recv(&mut self, on_b: bool) -> Result<(), PerfError> {
        let mut last_progress = Instant::now();
        let mut steps = 0u32;
        while steps < 100_000 || last_progress.elapsed() < STALL {
            steps += 1;
            if self.duo.step() {
                last_progress = Instant::now();
            }
            let (e, cq) = if on_b {
                (self.duo.b(), self.b.cq)
            } else {
                (self.duo.a(), self.a.cq)
            };
            let n = e.poll_cq(cq, &mut self.wcs)?;
            if let Some(wc) = self.wcs[..n].iter().find(|w| w.opcode == WcOpcode::Recv) {
                if wc.status != WcStatus::Success {
                    return Err(PerfError::Completion(wc.status));
                }
                if on_b {
                    self.b_recvs -= 1;
                }
                return Ok(());
            }
        }
        Err(PerfError::Stalled)
    }
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[i]
}

/// memcpy and CRC-32 throughput over 1 MiB, in Gbit/s.
pub fn baselines(duration: Duration) -> (f64, f64) {
    let src = vec![0x5au8; 1 << 20];
    let mut dst = vec![0u8; 1 << 20];
    let start = Instant::now();
    let mut n = 0u64;
    while start.elapsed() < duration {
        dst.copy_from_slice(black_box(&src));
        black_box(&dst);
        n += 1;
    }
    let memcpy = (n << 20) as f64 * 8.0 / start.elapsed().as_secs_f64() / 1e9;
    let start = Instant::now();
    let mut n = 0u64;
    while start.elapsed() < duration {
        black_box(crc32fast::hash(black_box(&src)));
        n += 1;
    }
    let crc = (n << 20) as f64 * 8.0 / start.elapsed().as_secs_f64() / 1e9;
    (memcpy, crc)
}

/// Raw UDP between kernel sockets `a` and `b` over the same path as the
/// link under test: stream throughput of 8 KiB datagrams in Gbit/s, and
/// one-way latency of a 64-byte ping-pong in µs, measured like the engine
/// (one thread, polling).
pub fn udp_baselines(
    a: &std::net::UdpSocket,
    b: &std::net::UdpSocket,
    duration: Duration,
) -> Result<(f64, f64), PerfError> {
    a.set_nonblocking(true).map_err(PerfError::Baseline)?;
    b.set_nonblocking(true).map_err(PerfError::Baseline)?;
    let (aa, ba) = (
        a.local_addr().map_err(PerfError::Baseline)?,
        b.local_addr().map_err(PerfError::Baseline)?,
    );
    let msg = vec![0x5au8; 8192];
    let mut buf = vec![0u8; 65536];
    let start = Instant::now();
    let mut bytes = 0u64;
    while start.elapsed() < duration {
        for _ in 0..16 {
            let _ = a.send_to(&msg, ba);
        }
        while let Ok(n) = b.recv(&mut buf) {
            bytes += n as u64;
        }
    }
    let stream = bytes as f64 * 8.0 / start.elapsed().as_secs_f64() / 1e9;
    let mut lat = Vec::new();
    let start = Instant::now();
    while start.elapsed() < duration {
        let t = Instant::now();
        a.send_to(&msg[..64], ba).map_err(PerfError::Baseline)?;
        while b.recv(&mut buf).is_err() {}
        b.send_to(&msg[..64], aa).map_err(PerfError::Baseline)?;
        while a.recv(&mut buf).is_err() {}
        lat.push(t.elapsed().as_secs_f64() * 1e6 / 2.0);
    }
    lat.sort_by(f64::total_cmp);
    Ok((stream, percentile(&lat, 0.5)))
}

/// Runs the measurements and prints one JSON object per line.
pub fn run<W: Write>(opts: &PerfOptions, out: &mut W) -> Result<(), PerfError> {
    let (memcpy, crc) = baselines(Duration::from_millis(200));
    let base = Duration::from_millis(300);
    let (duo, udp): (Box<dyn Duo>, _) = match opts.link {
        PerfLink::Memory => (Box::new(Pair::new(LinkConfig::clean(0), 1, MEM)), None),
        PerfLink::Udp => {
            let (ia, ib) = (std::net::IpAddr::from(UDP_A), std::net::IpAddr::from(UDP_B));
            let sa = std::net::UdpSocket::bind((ia, 0)).map_err(PerfError::Baseline)?;
            let sb = std::net::UdpSocket::bind((ib, 0)).map_err(PerfError::Baseline)?;
            let baseline = udp_baselines(&sa, &sb, base)?;
            let la = netdev::udp::UdpLink::bind(ia)?;
            let lb = netdev::udp::UdpLink::bind(ib)?;
            (Box::new(NetDuo::new(ia, ib, la, lb)), Some(baseline))
        }
        PerfLink::Veth => {
            let (la, lb, sa, sb) = veth_setup()?;
            let baseline = udp_baselines(&sa, &sb, base)?;
            let (ia, ib) = (VETH_A.into(), VETH_B.into());
            (Box::new(NetDuo::new(ia, ib, la, lb)), Some(baseline))
        }
        PerfLink::Tap => {
            let (la, lb, sa, sb) = tap_setup(opts.tap_gso)?;
            let baseline = udp_baselines(&sa, &sb, base)?;
            let (ia, ib) = (TAP_A.into(), TAP_B.into());
            (Box::new(NetDuo::new(ia, ib, la, lb)), Some(baseline))
        }
    };
    let extra = udp.map_or(String::new(), |(s, l)| {
        format!(",\"udp_stream_gbit_per_s\":{s:.3},\"udp_pingpong_lat_us\":{l:.3}")
    });
    let link = opts.link.name();
    let mut bench = Bench::new(opts.mtu, duo)?;
    let mut line = |test: &str,
                    bytes: u32,
                    msgs: u64,
                    elapsed: Duration,
                    mut lat: Vec<f64>|
     -> Result<(), PerfError> {
        lat.sort_by(f64::total_cmp);
        let secs = elapsed.as_secs_f64();
        let rate = msgs as f64 / secs;
        writeln!(
            out,
            "{{\"test\":\"{test}\",\"link\":\"{link}\",\"bytes\":{bytes},\"mtu\":{},\"iters\":{msgs},\"gbit_per_s\":{:.3},\"msgs_per_s\":{:.0},\"lat_us_p50\":{:.3},\"lat_us_p99\":{:.3},\"memcpy_gbit_per_s\":{memcpy:.1},\"crc32_gbit_per_s\":{crc:.1}{extra}}}",
            opts.mtu.bytes(),
            rate * f64::from(bytes) * 8.0 / 1e9,
            rate,
            percentile(&lat, 0.5),
            percentile(&lat, 0.99),
        )
        .and_then(|()| out.flush())
        .map_err(PerfError::Output)
    };
    for test in &opts.tests {
        match test {
            PerfTest::Write | PerfTest::Read | PerfTest::Send => {
                let (op, name) = match test {
                    PerfTest::Write => (SendOp::Write, "rc_write_bw"),
                    PerfTest::Read => (SendOp::Read, "rc_read_bw"),
                    _ => (SendOp::Send, "rc_send_bw"),
                };
                let mut size = opts.min_size.max(1);
                while size <= opts.max_size {
                    let depth = if size >= 65536 { 16 } else { 128 };
                    let (n, el, lat) = bench.stream(op, size, depth, opts.duration)?;
                    line(name, size, n, el, lat)?;
                    size = size.saturating_mul(4);
                }
            }
            PerfTest::Rate => {
                let (n, el, lat) = bench.stream(SendOp::Send, 64, 256, opts.duration)?;
                line("rc_send_rate", 64, n, el, lat)?;
            }
            PerfTest::Lat => {
                let (n, el, lat) = bench.ping_pong(opts.duration)?;
                line("rc_send_lat", 64, n, el, lat)?;
            }
        }
    }
    Ok(())
}
