//! The `peer` subcommand: one engine on a real link, speaking the
//! out-of-band TCP handshake of a stock RDMA tool, so that the stock tool
//! on another machine (or in a guest on kernel rxe) can run against it.
//!
//! This module owns the parts every tool shares: the link and GID setup
//! ([`Node`]), the loop that moves packets and timers between the engine
//! and the link, and the TCP connection of the handshake. The tools live
//! in submodules: [`pingpong`] (`ibv_rc_pingpong`, `ibv_uc_pingpong`,
//! `ibv_ud_pingpong`) and [`perftest`] (perftest's `ib_*_bw` and
//! `ib_*_lat`).
//!
//! GID table, as Linux rxe builds it on a NIC: on the `tap` and `packet`
//! links index 0 is the link-local fe80:: address from our MAC's EUI-64,
//! then the `--ip` addresses in the order given; on the `udp` link only the
//! `--ip` addresses. So `--ip 10.77.0.2/24` puts `::ffff:10.77.0.2` at
//! index 1, as on a kernel rxe device.

pub mod cm;
pub mod perftest;
pub mod pingpong;
pub mod rping;

use std::{
    hash::{BuildHasher, Hasher},
    io::{self, Read, Write},
    net::{IpAddr, Ipv6Addr, SocketAddr, TcpListener, TcpStream, ToSocketAddrs},
    os::fd::RawFd,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use netdev::{Link, LinkError};
use transport::{
    device::{DeviceAttrs, Gid},
    engine::{Engine, RxMeta},
    memory::VecMemory,
    verbs::{VerbsError, WcStatus},
    wire::Mtu,
};

use crate::oob::OobError;

/// Where the peer sends and receives RoCEv2.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LinkSpec {
    /// A TAP device, created if it does not exist.
    Tap(String),
    /// AF_PACKET on an existing interface.
    Packet(String),
    /// A kernel UDP socket on port 4791.
    Udp,
}

impl std::str::FromStr for LinkSpec {
    type Err = String;
    fn from_str(s: &str) -> Result<LinkSpec, String> {
        let bad_name = |n: &str| n.is_empty() || n.len() > 15 || n.contains(['/', ' ']);
        match s.split_once(':') {
            None if s == "udp" => Ok(LinkSpec::Udp),
            Some(("tap", n)) if !bad_name(n) => Ok(LinkSpec::Tap(n.to_string())),
            Some(("packet", n)) if !bad_name(n) => Ok(LinkSpec::Packet(n.to_string())),
            _ => Err(format!(
                "`{s}` is not a link: use tap:IFNAME, packet:IFNAME or udp \
                 (interface names are 1 to 15 characters)"
            )),
        }
    }
}

/// An address of ours with its prefix length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IpPrefix {
    /// The address.
    pub addr: IpAddr,
    /// The prefix length.
    pub prefix: u8,
}

impl std::str::FromStr for IpPrefix {
    type Err = String;
    fn from_str(s: &str) -> Result<IpPrefix, String> {
        let (a, p) = s.split_once('/').map_or((s, None), |(a, p)| (a, Some(p)));
        let addr: IpAddr = a
            .parse()
            .map_err(|_| format!("`{a}` is not an IPv4 or IPv6 address"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match p {
            None => max,
            Some(p) => p
                .parse::<u8>()
                .ok()
                .filter(|&n| n <= max)
                .ok_or_else(|| format!("`/{p}` is not a prefix length of 0 to {max}"))?,
        };
        if addr.is_unspecified() || addr.is_multicast() {
            return Err(format!("{addr} cannot be a RoCE address"));
        }
        Ok(IpPrefix { addr, prefix })
    }
}

/// A MAC address as `aa:bb:cc:dd:ee:ff`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mac(pub [u8; 6]);

impl std::str::FromStr for Mac {
    type Err = String;
    fn from_str(s: &str) -> Result<Mac, String> {
        let bad = || format!("`{s}` is not a MAC address like 02:00:00:00:00:01");
        let mut m = [0u8; 6];
        let mut parts = s.split(':');
        for b in &mut m {
            let p = parts.next().ok_or_else(bad)?;
            if p.len() != 2 {
                return Err(bad());
            }
            *b = u8::from_str_radix(p, 16).map_err(|_| bad())?;
        }
        if parts.next().is_some() {
            return Err(bad());
        }
        if m[0] & 1 != 0 || m == [0; 6] {
            return Err(format!("{s} is a multicast or zero MAC"));
        }
        Ok(Mac(m))
    }
}

/// The options `peer` takes before the tool's name.
#[derive(Debug, Clone)]
pub struct PeerOptions {
    /// The link.
    pub link: LinkSpec,
    /// Our addresses, in GID order (after the link-local one).
    pub ips: Vec<IpPrefix>,
    /// Our MAC on a TAP (default: 02:76:72 and the low bytes of the first
    /// address).
    pub mac: Option<Mac>,
    /// The port's active MTU (default: what the interface carries; 4096 on
    /// `udp`).
    pub mtu: Option<Mtu>,
    /// How long a client keeps retrying the TCP connection to a server
    /// that is not listening yet (the stock tools try once).
    pub connect_timeout: Duration,
    /// How long the RDMA traffic may make no progress before the run fails.
    pub stall_timeout: Duration,
    /// Capture every RoCEv2 frame sent and received (tap and packet links).
    pub pcap: Option<crate::pcap_tap::PcapConfig>,
}

/// Why a `peer` run failed.
#[derive(Debug, thiserror::Error)]
pub enum PeerError {
    /// The options cannot work together.
    #[error("{0}")]
    Config(String),
    /// The link failed.
    #[error("link")]
    Link(#[from] LinkError),
    /// The link went down or vanished; the port went down with it.
    #[error("the link went down; the port is down and {qps} QP(s) moved to the error state")]
    LinkDown {
        /// QPs moved to the error state.
        qps: usize,
        /// What the link reported.
        #[source]
        source: LinkError,
    },
    /// The engine refused a verb.
    #[error("{what}")]
    Verbs {
        /// Which step.
        what: &'static str,
        /// The cause.
        #[source]
        source: VerbsError,
    },
    /// The TCP handshake failed.
    #[error("{what}")]
    Oob {
        /// Which step.
        what: String,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// The other side sent a malformed handshake record.
    #[error("bad handshake record from the other side")]
    Record(#[from] OobError),
    /// The other side rejected the connection (CM REJ).
    #[error(
        "the server rejected the connection (CM REJ reason {0}); is it listening on that port?"
    )]
    Rejected(u32),
    /// The other side sent a malformed CM message.
    #[error("malformed CM message from the other side")]
    Mad(#[from] transport::wire::Error),
    /// A work request completed in error.
    #[error("Failed status {status:?} for wr_id {wr_id}")]
    Completion {
        /// The status.
        status: WcStatus,
        /// The work request.
        wr_id: u64,
    },
    /// Data arrived that is not what was sent.
    #[error("data check failed: {0}")]
    Data(String),
    /// Nothing moved for too long.
    #[error("no progress for {0:?}: the other side stopped answering")]
    Stalled(Duration),
    /// Writing the tool's output failed.
    #[error("cannot write the output")]
    Output(#[source] io::Error),
}

/// Shorthand for mapping a verbs error to the step that failed.
pub(crate) fn verbs(what: &'static str) -> impl FnOnce(VerbsError) -> PeerError {
    move |source| PeerError::Verbs { what, source }
}

/// The link-local IPv6 address of `mac` (EUI-64), as rxe's GID 0.
pub fn link_local(mac: [u8; 6]) -> Ipv6Addr {
    Ipv6Addr::from([
        0xfe,
        0x80,
        0,
        0,
        0,
        0,
        0,
        0,
        mac[0] ^ 2,
        mac[1],
        mac[2],
        0xff,
        0xfe,
        mac[3],
        mac[4],
        mac[5],
    ])
}

/// The default MAC for `ip`: locally administered, 02:76:72 ("vr") and
/// the address's last three bytes.
pub fn default_mac(ip: IpAddr) -> [u8; 6] {
    let o = match ip {
        IpAddr::V4(a) => a.octets()[1..].to_vec(),
        IpAddr::V6(a) => a.octets()[13..].to_vec(),
    };
    [0x02, 0x76, 0x72, o[0], o[1], o[2]]
}

/// A 24-bit PSN that differs from run to run.
pub(crate) fn random_psn() -> u32 {
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(Instant::now().elapsed().as_nanos() as u64);
    (h.finish() as u32) & 0xff_ffff
}

/// What a handshake thread blocked on TCP checks to tell a slow other
/// side from a dead one: the other side is alive while RDMA packets keep
/// arriving (the node stamps each) or the stall timeout has not run out
/// since the last one. A guest that vanishes sends no FIN, so without
/// this a read would wait forever.
#[derive(Debug, Clone)]
pub struct Watch {
    start: Instant,
    last_rx_ms: Arc<AtomicU64>,
    stall: Duration,
}

impl Watch {
    fn stamp(&self) {
        self.last_rx_ms
            .store(self.start.elapsed().as_millis() as u64, Ordering::Relaxed);
    }

    /// Whether the other side still counts as alive.
    pub fn alive(&self) -> bool {
        let now = self.start.elapsed().as_millis() as u64;
        now.saturating_sub(self.last_rx_ms.load(Ordering::Relaxed)) < self.stall.as_millis() as u64
    }

    /// Reads exactly `buf.len()` bytes, giving up with `TimedOut` once
    /// the other side stops counting as alive.
    pub fn read_exact(&self, s: &mut TcpStream, buf: &mut [u8]) -> io::Result<()> {
        // The wait counts from here (a server may have sat in accept()).
        self.stamp();
        s.set_read_timeout(Some(Duration::from_millis(500)))?;
        let mut off = 0;
        while off < buf.len() {
            match s.read(&mut buf[off..]) {
                Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
                Ok(n) => off += n,
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock
                            | io::ErrorKind::TimedOut
                            | io::ErrorKind::Interrupted
                    ) =>
                {
                    if !self.alive() {
                        return Err(io::Error::new(
                            io::ErrorKind::TimedOut,
                            format!(
                                "the other side went silent: no handshake message and no RDMA packet for {:?}",
                                self.stall
                            ),
                        ));
                    }
                }
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// One lock-step exchange (see [`crate::oob::exchange`]) with
    /// [`Watch::read_exact`] for the read.
    pub fn exchange(
        &self,
        s: &mut TcpStream,
        role: crate::oob::Role,
        ours: &[u8],
        theirs_len: usize,
    ) -> io::Result<Vec<u8>> {
        let mut theirs = vec![0u8; theirs_len];
        if role == crate::oob::Role::Client {
            s.write_all(ours)?;
            self.read_exact(s, &mut theirs)?;
        } else {
            self.read_exact(s, &mut theirs)?;
            s.write_all(ours)?;
        }
        Ok(theirs)
    }
}

/// One engine on one link, in real time.
pub struct Node {
    /// The engine.
    pub engine: Engine<VecMemory>,
    link: Box<dyn Link>,
    fd: RawFd,
    start: Instant,
    buf: Vec<u8>,
    active_mtu: Mtu,
    last_rx: Instant,
    watch: Watch,
    /// Packets the link refused to send (a full queue); the engine's
    /// retransmission recovers them.
    pub send_errors: u64,
}

impl Node {
    /// Opens the link, builds the GID table and an engine whose memory is
    /// `mem_len` bytes.
    pub fn new(opts: &PeerOptions, mem_len: usize) -> Result<Node, PeerError> {
        let first = opts
            .ips
            .first()
            .ok_or_else(|| PeerError::Config("--ip is required".into()))?;
        let mut gids: Vec<IpAddr> = Vec::new();
        let (link, fd, carried): (Box<dyn Link>, RawFd, Option<Mtu>) = match &opts.link {
            LinkSpec::Udp => {
                if opts.ips.len() != 1 {
                    return Err(PeerError::Config(
                        "the udp link takes exactly one --ip".into(),
                    ));
                }
                if opts.mac.is_some() {
                    return Err(PeerError::Config("--mac needs a tap link".into()));
                }
                gids.push(first.addr);
                if opts.pcap.is_some() {
                    return Err(PeerError::Config(
                        "--pcap needs a tap or packet link (the udp link has no frames to capture)"
                            .into(),
                    ));
                }
                let l = netdev::udp::UdpLink::bind(first.addr)?;
                let fd = Link::fd(&l);
                (Box::new(l), fd, None)
            }
            LinkSpec::Tap(name) | LinkSpec::Packet(name) => {
                let mac = opts.mac.map_or_else(|| default_mac(first.addr), |m| m.0);
                gids.push(IpAddr::V6(link_local(mac)));
                gids.extend(opts.ips.iter().map(|p| p.addr));
                let mut l = match &opts.link {
                    LinkSpec::Tap(_) => netdev::eth::EthLink::tap(name, mac, gids.clone())?,
                    _ => {
                        if opts.mac.is_some() {
                            return Err(PeerError::Config(
                                "--mac needs a tap link (packet uses the interface's MAC)".into(),
                            ));
                        }
                        netdev::eth::EthLink::packet(name, gids.clone())?
                    }
                };
                if let Some(p) = &opts.pcap {
                    let tap = crate::pcap_tap::PcapTap::create(p.clone()).map_err(|e| {
                        PeerError::Config(format!("cannot create {}: {e}", p.path.display()))
                    })?;
                    l.set_tap(Some(Box::new(tap)));
                }
                let carried = l.ib_mtu()?;
                let fd = l.fd();
                (Box::new(l), fd, Some(carried))
            }
        };
        let active_mtu = match (opts.mtu, carried) {
            (Some(m), Some(c)) if m > c => {
                return Err(PeerError::Config(format!(
                    "--mtu {} does not fit the interface, which carries IB MTU {} at most \
                     (raise the interface MTU: 9000 carries 4096)",
                    m.bytes(),
                    c.bytes()
                )));
            }
            (Some(m), _) => m,
            (None, Some(c)) => c,
            (None, None) => Mtu::Mtu4096,
        };
        let attrs = DeviceAttrs {
            max_mtu: active_mtu,
            ..DeviceAttrs::default()
        };
        let mut engine = Engine::new(attrs, VecMemory::new(mem_len));
        for (i, ip) in gids.iter().enumerate() {
            engine.gids_mut().set(i, Some(Gid::from_ip(*ip)));
        }
        Ok(Node {
            engine,
            link,
            fd,
            start: Instant::now(),
            buf: vec![0; 65536],
            active_mtu,
            last_rx: Instant::now(),
            watch: Watch {
                start: Instant::now(),
                last_rx_ms: Arc::new(AtomicU64::new(0)),
                stall: opts.stall_timeout,
            },
            send_errors: 0,
        })
    }

    /// The liveness check for handshake reads made while this node runs.
    pub fn watch(&self) -> Watch {
        self.watch.clone()
    }

    /// The port's active MTU.
    pub fn active_mtu(&self) -> Mtu {
        self.active_mtu
    }

    /// The GID at `index`, or the zero GID (as the stock tools use when
    /// given no GID index).
    pub fn gid(&self, index: Option<u8>) -> Result<Gid, PeerError> {
        match index {
            None => Ok(Gid([0; 16])),
            Some(i) => self.engine.gids().get(usize::from(i)).ok_or_else(|| {
                PeerError::Config(format!("can't read sgid of index {i}: no such GID"))
            }),
        }
    }

    fn now(&self) -> u64 {
        self.start.elapsed().as_nanos() as u64
    }

    /// Moves every packet and timer that is ready; returns whether
    /// anything happened.
    pub fn pump(&mut self) -> Result<bool, PeerError> {
        let now = self.now();
        let mut any = false;
        while let Some(t) = self.engine.poll_transmit(now, &mut self.buf) {
            any = true;
            let sent = self.link.send_queued(&t, &mut self.buf[..t.len], now);
            self.sent(sent)?;
        }
        let flushed = self.link.flush();
        self.sent(flushed)?;
        if self.link.poll_timeout().is_some_and(|t| t <= now) {
            self.link.handle_timeout(now)?;
        }
        loop {
            let r = match self.link.recv(&mut self.buf, now) {
                Ok(Some(r)) => r,
                Ok(None) => break,
                Err(e) if e.is_link_down() => return Err(self.link_down(e)),
                Err(e) => return Err(e.into()),
            };
            let meta = RxMeta {
                ip_header: &self.buf[r.ip_start..r.ip_start + r.ip_len],
                ecn: r.ecn,
            };
            // A packet the engine drops (bad key, wrong PSN, ...) is
            // answered or counted by the engine itself.
            let _ =
                self.engine
                    .handle_packet(now, &meta, &self.buf[r.ib_start..r.ib_start + r.ib_len]);
            self.last_rx = Instant::now();
            self.watch.stamp();
            any = true;
        }
        if self.engine.poll_timeout().is_some_and(|t| t <= now) {
            self.engine.handle_timeout(now);
            any = true;
        }
        Ok(any)
    }

    /// A send's outcome: a dead link or an unreachable neighbour ends the
    /// run; anything else is a loss the transport recovers from.
    fn sent(&mut self, r: Result<(), LinkError>) -> Result<(), PeerError> {
        match r {
            Ok(()) => Ok(()),
            Err(e) if e.is_link_down() => Err(self.link_down(e)),
            Err(e @ LinkError::Neighbour(_)) => Err(e.into()),
            Err(_) => {
                self.send_errors += 1;
                Ok(())
            }
        }
    }

    /// The link went down or vanished: the port goes down (every QP to
    /// the error state, as rxe's do) and the run ends with the cause.
    fn link_down(&mut self, source: LinkError) -> PeerError {
        let qps = self.engine.port_down();
        PeerError::LinkDown { qps, source }
    }

    /// Pumps; if nothing moved, sleeps until the link has a packet, a
    /// timer is due, or `max` has passed.
    pub fn progress(&mut self, max: Duration) -> Result<(), PeerError> {
        if self.pump()? {
            return Ok(());
        }
        // Spin briefly after recent traffic: a sleep costs tens of µs.
        if self.last_rx.elapsed() < Duration::from_micros(200) {
            return Ok(());
        }
        // About to sleep: the capture (if any) reaches its file first.
        self.link.flush_tap();
        let now = self.now();
        let mut wait = max.as_nanos() as u64;
        for t in [self.engine.poll_timeout(), self.link.poll_timeout()]
            .into_iter()
            .flatten()
        {
            wait = wait.min(t.saturating_sub(now));
        }
        let ts = libc::timespec {
            tv_sec: (wait / 1_000_000_000) as libc::time_t,
            tv_nsec: (wait % 1_000_000_000) as libc::c_long,
        };
        let mut pfd = libc::pollfd {
            fd: self.fd,
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: `pfd` and `ts` are valid for the call; a null signal
        // mask leaves the mask unchanged.
        let rc = unsafe { libc::ppoll(&mut pfd, 1, &ts, std::ptr::null()) };
        if rc < 0 {
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(LinkError::Recv(e).into());
            }
        }
        Ok(())
    }

    /// Runs `f` (a blocking step of the TCP handshake) on a helper thread
    /// while this thread keeps the link alive: the other side resolves our
    /// address (ARP, NDP) while it connects its QP, in the middle of the
    /// handshake, and fails if nobody answers.
    pub fn while_blocked<T: Send>(&mut self, f: impl FnOnce() -> T + Send) -> Result<T, PeerError> {
        self.watch.stamp();
        std::thread::scope(|scope| {
            let h = scope.spawn(f);
            while !h.is_finished() {
                self.progress(Duration::from_millis(5))?;
            }
            h.join()
                .map_err(|_| PeerError::Config("the handshake thread panicked".into()))
        })
    }

    /// Keeps answering (ACKs, duplicate requests) until the other side
    /// has been quiet for `quiet`, or `max` has passed: the last ACK of a
    /// run must reach the other side, or its final send never completes.
    pub fn linger(&mut self, quiet: Duration, max: Duration) -> Result<(), PeerError> {
        let until = Instant::now() + max;
        self.last_rx = Instant::now();
        while Instant::now() < until && self.last_rx.elapsed() < quiet {
            self.progress(Duration::from_millis(10))?;
        }
        Ok(())
    }
}

/// The out-of-band TCP connection: connects as a client (retrying until
/// `timeout` if the server is not listening yet) or accepts one client.
pub fn oob_connect(server: &str, port: u16, timeout: Duration) -> Result<TcpStream, PeerError> {
    let addrs: Vec<SocketAddr> = (server, port)
        .to_socket_addrs()
        .map_err(|source| PeerError::Oob {
            what: format!("cannot resolve {server}"),
            source,
        })?
        .collect();
    let until = Instant::now() + timeout;
    loop {
        let mut last = None;
        for a in &addrs {
            match TcpStream::connect(a) {
                Ok(s) => {
                    let _ = s.set_nodelay(true);
                    return Ok(s);
                }
                Err(e) => last = Some(e),
            }
        }
        let source = last.unwrap_or_else(|| io::Error::other("no address"));
        if Instant::now() >= until {
            return Err(PeerError::Oob {
                what: format!("Couldn't connect to {server}:{port}"),
                source,
            });
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Listens on `port` (IPv6 and IPv4) and accepts one client.
pub fn oob_accept(port: u16) -> Result<TcpStream, PeerError> {
    let l = TcpListener::bind(("::", port))
        .or_else(|_| TcpListener::bind(("0.0.0.0", port)))
        .map_err(|source| PeerError::Oob {
            what: format!("Couldn't listen to port {port}"),
            source,
        })?;
    let (s, _) = l.accept().map_err(|source| PeerError::Oob {
        what: "accept() failed".into(),
        source,
    })?;
    let _ = s.set_nodelay(true);
    Ok(s)
}

/// Maps a handshake I/O error to the step that failed.
pub(crate) fn oob(what: &str) -> impl FnOnce(io::Error) -> PeerError + '_ {
    move |source| PeerError::Oob {
        what: what.to_string(),
        source,
    }
}

/// Where an RC or UC QP connects to and with what; the RC-only fields are
/// ignored for UC. The tools differ only in these values.
pub(crate) struct Path {
    /// Path MTU.
    pub mtu: Mtu,
    /// The other side's QP.
    pub dest_qpn: u32,
    /// First PSN we expect to receive.
    pub rq_psn: u32,
    /// First PSN we send.
    pub sq_psn: u32,
    /// Address vector toward the other side.
    pub ah: transport::verbs::AhAttr,
    /// RC: incoming READ/atomic resources.
    pub max_dest_rd_atomic: u8,
    /// RC: outgoing READ/atomic depth.
    pub max_rd_atomic: u8,
    /// RC: RNR NAK timer code.
    pub min_rnr_timer: u8,
    /// RC: local ACK timeout.
    pub timeout: u8,
    /// RC: transport and RNR retry counts.
    pub retry: u8,
}

/// Moves an RC (`rc`) or UC QP from INIT to RTR and RTS along `p`, with
/// the stock tools' error messages.
pub(crate) fn connect_qp(
    e: &mut Engine<VecMemory>,
    qp: u32,
    rc: bool,
    p: &Path,
) -> Result<(), PeerError> {
    use transport::verbs::{QpAttr, QpState};
    let rtr = QpAttr {
        state: Some(QpState::Rtr),
        path_mtu: Some(p.mtu),
        dest_qp_num: Some(p.dest_qpn),
        rq_psn: Some(p.rq_psn),
        max_dest_rd_atomic: rc.then_some(p.max_dest_rd_atomic),
        min_rnr_timer: rc.then_some(p.min_rnr_timer),
        ah: Some(p.ah),
        ..Default::default()
    };
    e.modify_qp(qp, &rtr, 0)
        .map_err(verbs("Failed to modify QP to RTR"))?;
    let rts = QpAttr {
        state: Some(QpState::Rts),
        sq_psn: Some(p.sq_psn),
        timeout: rc.then_some(p.timeout),
        retry_cnt: rc.then_some(p.retry),
        rnr_retry: rc.then_some(p.retry),
        max_rd_atomic: rc.then_some(p.max_rd_atomic),
        ..Default::default()
    };
    e.modify_qp(qp, &rts, 0)
        .map_err(verbs("Failed to modify QP to RTS"))
}

/// Moves a UD QP from INIT to RTR and RTS (it needs nothing from the
/// other side).
pub(crate) fn ready_ud(e: &mut Engine<VecMemory>, qp: u32, sq_psn: u32) -> Result<(), PeerError> {
    use transport::verbs::{QpAttr, QpState};
    let rtr = QpAttr {
        state: Some(QpState::Rtr),
        ..Default::default()
    };
    e.modify_qp(qp, &rtr, 0)
        .map_err(verbs("Failed to modify QP to RTR"))?;
    let rts = QpAttr {
        state: Some(QpState::Rts),
        sq_psn: Some(sq_psn),
        ..Default::default()
    };
    e.modify_qp(qp, &rts, 0)
        .map_err(verbs("Failed to modify QP to RTS"))
}

/// A clap error about a tool's arguments as one line plus the usage,
/// without clap's "error:" prefix and tips.
pub(crate) fn usage_error(e: &clap::Error) -> String {
    let text = e.render().to_string();
    let mut lines = text
        .lines()
        .filter(|l| !l.trim_start().starts_with("tip:") && !l.trim().is_empty());
    let first = lines.next().unwrap_or_default();
    let first = first.strip_prefix("error: ").unwrap_or(first);
    let rest: Vec<&str> = lines.collect();
    if rest.is_empty() {
        first.to_string()
    } else {
        format!("{first} ({})", rest.join("; "))
    }
}

/// An empty work completion, to fill arrays that `poll_cq` writes.
pub(crate) fn blank_wc() -> transport::verbs::Wc {
    transport::verbs::Wc {
        wr_id: 0,
        status: WcStatus::Success,
        opcode: transport::verbs::WcOpcode::Send,
        byte_len: 0,
        qp_num: 0,
        src_qp: 0,
        imm_data: None,
        invalidated_rkey: None,
        ip_version: None,
    }
}

/// The tools `peer` can stand in for.
pub const TOOLS: &[&str] = &[
    "ibv_rc_pingpong",
    "ibv_uc_pingpong",
    "ibv_ud_pingpong",
    "ib_write_bw",
    "ib_read_bw",
    "ib_send_bw",
    "ib_atomic_bw",
    "ib_write_lat",
    "ib_read_lat",
    "ib_send_lat",
    "ib_atomic_lat",
    "rping",
];

/// Runs `tool` with its own arguments `args` against the stock tool on
/// the other side, writing the tool's result lines to `out`.
pub fn run(
    opts: &PeerOptions,
    tool: &str,
    args: &[String],
    out: &mut dyn Write,
) -> Result<(), PeerError> {
    match tool {
        "ibv_rc_pingpong" | "ibv_uc_pingpong" | "ibv_ud_pingpong" => {
            pingpong::run(opts, tool, args, out)
        }
        "ib_write_bw" | "ib_read_bw" | "ib_send_bw" | "ib_atomic_bw" | "ib_write_lat"
        | "ib_read_lat" | "ib_send_lat" | "ib_atomic_lat" => perftest::run(opts, tool, args, out),
        "rping" => rping::run(opts, args, out),
        t => Err(PeerError::Config(format!(
            "unknown tool `{t}`; supported: {}",
            TOOLS.join(", ")
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_link_ip_and_mac() {
        assert_eq!("udp".parse::<LinkSpec>(), Ok(LinkSpec::Udp));
        assert_eq!("tap:t0".parse::<LinkSpec>(), Ok(LinkSpec::Tap("t0".into())));
        assert_eq!(
            "packet:eth0".parse::<LinkSpec>(),
            Ok(LinkSpec::Packet("eth0".into()))
        );
        for bad in ["tap:", "tap", "eth0", "packet:a/b", "tap:sixteen-chars-xy"] {
            assert!(bad.parse::<LinkSpec>().is_err(), "{bad}");
        }
        let p: IpPrefix = "10.77.0.2/24".parse().unwrap();
        assert_eq!((p.addr, p.prefix), ("10.77.0.2".parse().unwrap(), 24));
        assert_eq!("fd00::2".parse::<IpPrefix>().unwrap().prefix, 128);
        for bad in ["10.0.0.1/33", "0.0.0.0", "224.0.0.1", "fe80::/129", "x"] {
            assert!(bad.parse::<IpPrefix>().is_err(), "{bad}");
        }
        assert_eq!(
            "02:00:00:00:00:01".parse::<Mac>(),
            Ok(Mac([2, 0, 0, 0, 0, 1]))
        );
        for bad in [
            "01:00:00:00:00:01",
            "00:00:00:00:00:00",
            "02:00:00:00:00",
            "2:0:0:0:0:1",
        ] {
            assert!(bad.parse::<Mac>().is_err(), "{bad}");
        }
    }

    #[test]
    fn link_local_is_eui64() {
        assert_eq!(
            link_local([0x52, 0x54, 0x00, 0x77, 0x00, 0x01]),
            "fe80::5054:ff:fe77:1".parse::<Ipv6Addr>().unwrap()
        );
        assert_eq!(
            default_mac("10.77.0.2".parse().unwrap()),
            [0x02, 0x76, 0x72, 77, 0, 2]
        );
    }
}
