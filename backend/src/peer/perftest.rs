//! perftest's tools as the peer runs them: `ib_write_bw`, `ib_read_bw`,
//! `ib_send_bw`, `ib_atomic_bw`, `ib_write_lat`, `ib_read_lat`,
//! `ib_send_lat` and `ib_atomic_lat`, against perftest 4.5 (version
//! "6.06") on the other side.
//!
//! This module owns the tools' option handling, their out-of-band TCP
//! sequence (version, page and cache-line sizes, MTU, the 108-byte key
//! records that frame each phase, the bandwidth report, "done"), their QP
//! setup and buffer layout (a send half and a receive half, the key record
//! naming the receive half), their traffic patterns (windowed posting with
//! CQ moderation and address cycling for the bandwidth tests; the
//! ping-pongs of the latency tests) and their result lines.
//!
//! `-b` (bidirectional) runs traffic both ways and prints the sum, and
//! `-q N` (bandwidth tests, up to 64) runs N QPs side by side, each with
//! its own halves of the buffer, as perftest does. `-a` runs every size,
//! `-D` runs for a duration. `-R` (rdma_cm) carries the same sequence
//! over an rdma_cm control connection (binary key records, one SEND per
//! message) and connects each test QP with rdma_cm ([`CmOob`]), or
//! resolves it with SIDR for UD.

use std::{
    fmt::Write as _,
    io::Write,
    net::{IpAddr, TcpStream},
    time::{Duration, Instant},
};

use clap::Parser;
use transport::{
    device::Gid,
    engine::QpInit,
    verbs::{
        Access, AhAttr, QpAttr, QpCaps, QpState, QpType, RecvWr, SendOp, SendWr, Sge, UdDest, Wc,
        WcStatus,
    },
    wire::{Mtu, cm::RDMA_UDP_QKEY},
};

use super::{
    Node, PeerError, PeerOptions,
    cm::{Conn, GSI_MEM, Gsi, RcParams},
    oob, oob_accept, oob_connect, random_psn, verbs,
};
use crate::oob::{
    BwReport, DONE, PERFTEST_VERSION, PerftestDest, Role, encode_mtu, encode_u32, parse_mtu,
    parse_perftest_version,
};

const QKEY: u32 = 0x1111_1111;
const GRH: u64 = 40;
/// Where our buffer sits in the address space the other side sees.
const IOVA: u64 = 0x7f00_0000_0000;
/// The largest size `-a` runs (and the buffer size it sets up), 2^23.
const MAX_SIZE: u64 = 1 << 23;
const PAGE: u32 = 4096;
const CACHE_LINE: u32 = 64;
const RESULT_LINE: &str =
    "---------------------------------------------------------------------------------------";

/// Which operation the tool measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verb {
    Write,
    Read,
    Send,
    Atomic,
}

/// Bandwidth or latency.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Bw,
    Lat,
}

/// A message size with perftest's optional K or M suffix.
fn parse_size(s: &str) -> Result<u64, String> {
    let (num, mul) = match s.chars().last() {
        Some('k' | 'K') => (&s[..s.len() - 1], 1024),
        Some('m' | 'M') => (&s[..s.len() - 1], 1024 * 1024),
        _ => (s, 1),
    };
    num.parse::<u64>()
        .ok()
        .map(|n| n * mul)
        .filter(|&n| (1..=u64::from(u32::MAX / 2)).contains(&n))
        .ok_or_else(|| format!("`{s}` is not a message size (1 to 2^31, K or M suffix)"))
}

/// The options perftest's tools take that the peer knows; any other is
/// refused by name.
#[derive(Debug, Parser)]
#[command(disable_help_flag = true, disable_version_flag = true)]
struct Args {
    /// TCP port of the handshake.
    #[arg(short = 'p', long = "port", default_value_t = 18515)]
    port: u16,
    /// Device name (shown in the test information).
    #[arg(short = 'd', long = "ib-dev")]
    ib_dev: Option<String>,
    /// Device port (only 1 exists).
    #[arg(short = 'i', long = "ib-port", default_value_t = 1)]
    ib_port: u8,
    /// GID index (default: the first IPv4 GID, as perftest picks).
    #[arg(short = 'x', long = "gid-index", value_parser = clap::value_parser!(u8).range(0..=64))]
    gid_index: Option<u8>,
    /// Message size.
    #[arg(short = 's', long = "size", value_parser = parse_size)]
    size: Option<u64>,
    /// Iterations.
    #[arg(short = 'n', long = "iters")]
    iters: Option<u64>,
    /// MTU.
    #[arg(short = 'm', long = "mtu")]
    mtu: Option<usize>,
    /// Connection type.
    #[arg(short = 'c', long = "connection", default_value = "RC")]
    connection: String,
    /// QPs.
    #[arg(short = 'q', long = "qp", default_value_t = 1)]
    qps: u32,
    /// Bidirectional.
    #[arg(short = 'b', long = "bidirectional")]
    bidirectional: bool,
    /// Atomic type.
    #[arg(short = 'A', long = "atomic_type")]
    atomic_type: Option<String>,
    /// Inline size (rxe-like devices disable inline).
    #[arg(short = 'I', long = "inline_size")]
    inline_size: Option<u32>,
    /// Report Gb/s instead of MB/s.
    #[arg(long = "report_gbits")]
    report_gbits: bool,
    /// rdma_cm.
    #[arg(short = 'R', long = "rdma_cm")]
    rdma_cm: bool,
    /// All sizes.
    #[arg(short = 'a', long = "all")]
    all: bool,
    /// Duration.
    #[arg(short = 'D', long = "duration")]
    duration: Option<u32>,
    /// Send queue depth.
    #[arg(short = 't', long = "tx-depth", value_parser = clap::value_parser!(u32).range(1..=15000))]
    tx_depth: Option<u32>,
    /// Receive queue depth.
    #[arg(short = 'r', long = "rx-depth", value_parser = clap::value_parser!(u32).range(1..=16384))]
    rx_depth: Option<u32>,
    /// CQ moderation.
    #[arg(short = 'Q', long = "cq-mod", value_parser = clap::value_parser!(u32).range(1..=1024))]
    cq_mod: Option<u32>,
    /// Do not warn about the CPU frequency (no effect here).
    #[arg(short = 'F', long = "CPU-freq")]
    _cpu_freq: bool,
    /// Outstanding reads / atomics.
    #[arg(short = 'o', long = "outs")]
    outs: Option<u32>,
    /// QP timeout exponent.
    #[arg(short = 'u', long = "qp-timeout", default_value_t = 14)]
    qp_timeout: u8,
    /// Service level (no effect on RoCE).
    #[arg(short = 'S', long = "sl", default_value_t = 0)]
    _sl: u8,
    /// No peak bandwidth.
    #[arg(short = 'N', long = "noPeak")]
    no_peak: bool,
    /// The default GID is the first IPv6 one (perftest's "Use IPv6 GID").
    #[arg(long = "ipv6")]
    ipv6: bool,
    /// The server; none: be the server.
    servername: Option<String>,
}

/// One run's settled parameters.
#[derive(Debug, Clone)]
struct Test {
    verb: Verb,
    kind: Kind,
    qp_type: QpType,
    size: u64,
    iters: u64,
    tx_depth: u32,
    rx_depth: u32,
    cq_mod: u32,
    out_reads: u8,
    cas: bool,
    gbits: bool,
    no_peak: bool,
    bidir: bool,
    /// QPs (`-q`).
    qps: u32,
    dev: String,
    /// `-a`: every size from 2 to 2^23 (UD sends: to the MTU), `size`
    /// being the buffer's.
    all: bool,
    /// `-D`: run for this many seconds instead of `iters` messages.
    duration: Option<u32>,
}

/// Where a duration-mode (`-D`) run stands. perftest moves through these
/// on SIGALRM; the peer reads them off its clock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// The first margin: traffic runs but is not counted.
    Warmup,
    /// Completions are counted.
    Sample,
    /// The last margin: traffic runs but is not counted.
    Cooldown,
    /// The loops stop, leaving whatever is in flight.
    End,
}

/// A duration-mode run's clock: `secs` seconds from `start`, the first and
/// last quarter (perftest's default margin, whole seconds) not counted.
#[derive(Debug, Clone, Copy)]
struct Window {
    start: u64,
    margin: u64,
    total: u64,
}

impl Window {
    fn new(start: u64, secs: u32) -> Window {
        const S: u64 = 1_000_000_000;
        Window {
            start,
            margin: u64::from(secs / 4) * S,
            total: u64::from(secs) * S,
        }
    }

    fn phase(&self, now: u64) -> Phase {
        let t = now.saturating_sub(self.start);
        if t < self.margin {
            Phase::Warmup
        } else if t < self.total - self.margin {
            Phase::Sample
        } else if t < self.total {
            Phase::Cooldown
        } else {
            Phase::End
        }
    }

    /// The counted span, as perftest stamps it: from the end of the first
    /// margin to the start of the last.
    fn sample(&self) -> (u64, u64) {
        (
            self.start + self.margin,
            self.start + self.total - self.margin,
        )
    }

    fn ended(w: Option<Window>, now: u64) -> bool {
        w.is_some_and(|w| w.phase(now) == Phase::End)
    }

    fn sampling(w: Option<Window>, now: u64) -> bool {
        w.is_some_and(|w| w.phase(now) == Phase::Sample)
    }
}

fn cfg(msg: impl Into<String>) -> PeerError {
    PeerError::Config(msg.into())
}

impl Test {
    fn from_args(tool: &str, a: &Args) -> Result<Test, PeerError> {
        let (verb, kind) = match tool {
            "ib_write_bw" => (Verb::Write, Kind::Bw),
            "ib_read_bw" => (Verb::Read, Kind::Bw),
            "ib_send_bw" => (Verb::Send, Kind::Bw),
            "ib_atomic_bw" => (Verb::Atomic, Kind::Bw),
            "ib_write_lat" => (Verb::Write, Kind::Lat),
            "ib_read_lat" => (Verb::Read, Kind::Lat),
            "ib_send_lat" => (Verb::Send, Kind::Lat),
            _ => (Verb::Atomic, Kind::Lat),
        };
        if a.qps != 1 && kind != Kind::Bw {
            return Err(cfg(" Multiple QPs only available on bw tests"));
        }
        if a.qps == 0 {
            return Err(cfg("-q 0: use 1 to 64 QPs"));
        }
        if a.bidirectional && kind != Kind::Bw {
            return Err(cfg(" Bidirectional is only available in BW test"));
        }
        if a.all && a.duration.is_some() {
            return Err(cfg(
                "Duration mode currently doesn't support running on all sizes.",
            ));
        }
        if a.all && verb == Verb::Atomic {
            return Err(cfg("Message size cannot be changed for Atomic tests"));
        }
        if a.duration == Some(0) {
            return Err(cfg(" Duration must be at least 1 second"));
        }
        for (given, name) in [
            // perftest's send_bw exchanges no reports in duration mode
            // with -b; what it prints then is not settled here.
            (
                a.duration.is_some() && a.bidirectional && verb == Verb::Send,
                "-D with -b on ib_send_bw",
            ),
            (a.qps > 64, "-q above 64"),
        ] {
            if given {
                return Err(cfg(format!("{name} is not supported by the peer yet")));
            }
        }
        if a.ib_port != 1 {
            return Err(cfg(format!("-i {}: the device has one port, 1", a.ib_port)));
        }
        let qp_type = match a.connection.as_str() {
            "RC" => QpType::Rc,
            "UC" => QpType::Uc,
            "UD" => QpType::Ud,
            other => {
                return Err(cfg(format!("-c {other}: the peer supports RC, UC and UD")));
            }
        };
        if a.rdma_cm && qp_type == QpType::Uc {
            return Err(cfg(" UC is not supported in librdmacm"));
        }
        if qp_type == QpType::Ud && verb != Verb::Send {
            return Err(cfg(" UD connection only possible in SEND verb"));
        }
        if qp_type == QpType::Uc && matches!(verb, Verb::Read | Verb::Atomic) {
            return Err(cfg(" UC connection not possible in READ/ATOMIC verbs"));
        }
        let iters = a
            .iters
            .unwrap_or(if tool == "ib_write_bw" { 5000 } else { 1000 });
        if !(5..=100_000_000).contains(&iters) {
            return Err(cfg(" Iteration num should be between 5 and 100000000"));
        }
        let size = match (verb, a.size) {
            (Verb::Atomic, Some(s)) if s != 8 => {
                return Err(cfg("Message size cannot be changed for Atomic tests"));
            }
            (Verb::Atomic, _) => 8,
            // perftest sets the buffers up for the largest size; -s is
            // ignored.
            _ if a.all => MAX_SIZE,
            (_, Some(s)) => s,
            (_, None) if kind == Kind::Bw => 65536,
            (_, None) => 2,
        };
        if a.atomic_type.is_some() && verb != Verb::Atomic {
            return Err(cfg(" You are not running the atomic_lat/bw test!"));
        }
        let cas = match a.atomic_type.as_deref() {
            None | Some("FETCH_AND_ADD") => false,
            Some("CMP_AND_SWAP") => true,
            Some(o) => {
                return Err(cfg(format!("-A {o}: use CMP_AND_SWAP or FETCH_AND_ADD")));
            }
        };
        if a.outs.is_some() && !matches!(verb, Verb::Read | Verb::Atomic) {
            return Err(cfg(
                " Setting Outstanding reads only available on READ verb",
            ));
        }
        if a.inline_size.is_some() && matches!(verb, Verb::Read | Verb::Atomic) {
            return Err(cfg(" Inline feature not available on READ/Atomic verbs"));
        }
        if kind == Kind::Lat && a.tx_depth.is_some_and(|t| t != 1) {
            return Err(cfg("-t: the latency tests keep one message in flight"));
        }
        if verb != Verb::Send && a.rx_depth.is_some_and(|r| r > 1) {
            return Err(cfg(" On RDMA verbs rx depth can be only 1"));
        }
        let tx_depth = a
            .tx_depth
            .unwrap_or(if kind == Kind::Bw { 128 } else { 1 })
            .min(iters as u32);
        let mut rx_depth = if verb == Verb::Send {
            let d = a.rx_depth.unwrap_or(if qp_type == QpType::Rc {
                512
            } else {
                iters.min(16000) as u32
            });
            d.min(iters as u32)
        } else {
            1
        };
        if verb == Verb::Send && rx_depth % 2 == 1 {
            rx_depth += 1;
        }
        let mut cq_mod = a.cq_mod.unwrap_or(100);
        if size > 8192 && qp_type != QpType::Ud && a.cq_mod.is_none() {
            cq_mod = 1;
        }
        let cq_mod = cq_mod.min(tx_depth);
        let out_reads = if matches!(verb, Verb::Read | Verb::Atomic) {
            match a.outs {
                Some(o) if (1..=128).contains(&o) => o as u8,
                _ => 128,
            }
        } else {
            1
        };
        if let Some(m) = a.mtu
            && Mtu::from_bytes(m).is_err()
        {
            return Err(cfg(format!("-m {m}: use 256, 512, 1024, 2048 or 4096")));
        }
        Ok(Test {
            verb,
            kind,
            qp_type,
            size,
            iters,
            tx_depth,
            rx_depth,
            cq_mod,
            out_reads,
            cas,
            gbits: a.report_gbits,
            // Duration mode reports no peak.
            no_peak: a.no_peak || iters > 20000 || a.duration.is_some(),
            bidir: a.bidirectional,
            qps: a.qps,
            dev: a.ib_dev.clone().unwrap_or_else(|| "vur0".into()),
            all: a.all,
            duration: a.duration,
        })
    }

    /// The message sizes to run, in order: `size`, or with `-a` 2 to
    /// 2^23 doubling (UD sends stop at the MTU).
    fn sizes(&self, mtu: Mtu) -> Vec<u64> {
        if !self.all {
            return vec![self.size];
        }
        let top = if self.qp_type == QpType::Ud {
            mtu.bytes() as u64
        } else {
            MAX_SIZE
        };
        (1..24).map(|i| 1u64 << i).filter(|&s| s <= top).collect()
    }

    fn verb_name(&self) -> &'static str {
        match self.verb {
            Verb::Write => "RDMA_Write",
            Verb::Read => "RDMA_Read",
            Verb::Send => "Send",
            Verb::Atomic => "Atomic",
        }
    }
}

/// C's `%#0Nx`: no `0x` for zero, else `0x` inside the width.
fn c_alt_hex(v: u64, width: usize) -> String {
    if v == 0 {
        format!("{:0width$x}", 0)
    } else {
        format!("{v:#0width$x}")
    }
}

/// The out-of-band channel: perftest's TCP connection, or with `-R` its
/// rdma_cm control connection.
enum Oob {
    Tcp(TcpStream),
    Cm(Box<CmOob>),
}

/// Bytes of each control-connection buffer (a message is at most a
/// 56-byte key record).
const CTRL_BUF: u64 = 64;
/// Node memory the rdma_cm side needs: QP1's, then a send and a receive
/// buffer for the control connection.
const CM_MEM: u64 = GSI_MEM + 2 * CTRL_BUF;

/// perftest's rdma_cm side (`-R`): QP1 for the CM exchanges, the control
/// RC connection that carries every out-of-band message as one SEND
/// (perftest keeps one 56-byte receive posted and alternates strictly,
/// the client first), and the test QPs' own connections.
struct CmOob {
    gsi: Gsi,
    /// The control QP and its CQ (sends and receives).
    qp: u32,
    cq: u32,
    /// Key of the rdma_cm memory; its addresses are node-memory offsets.
    key: u32,
    /// The control send buffer; the receive buffer follows it.
    sbuf: u64,
    ctrl: Conn,
    /// The test QPs' connections, QP 0 first.
    tests: Vec<Conn>,
    /// Our side of every connection (the QP and PSN change per QP).
    params: RcParams,
    /// The server's address and port (we are the client), or the port
    /// we listen on.
    server: Option<IpAddr>,
    me: IpAddr,
    port: u16,
    stall: Duration,
    wcs: [Wc; 2],
    inbox: Option<Vec<u8>>,
}

impl CmOob {
    fn post_recv(&mut self, node: &mut Node) -> Result<(), PeerError> {
        let sge = [Sge {
            addr: self.sbuf + CTRL_BUF,
            length: CTRL_BUF as u32,
            lkey: self.key,
        }];
        node.engine
            .post_recv(
                self.qp,
                &RecvWr {
                    wr_id: 1,
                    sges: &sge,
                },
            )
            .map_err(verbs("Couldn't post the control receive"))
    }

    fn send(&mut self, node: &mut Node, msg: &[u8]) -> Result<(), PeerError> {
        let at = self.sbuf as usize;
        node.engine.memory_mut().as_mut_slice()[at..at + msg.len()].copy_from_slice(msg);
        let sge = [Sge {
            addr: self.sbuf,
            length: msg.len() as u32,
            lkey: self.key,
        }];
        let wr = SendWr::new(0, SendOp::Send, &sge);
        node.engine
            .post_send(self.qp, &wr)
            .map_err(verbs("Couldn't post the control send"))
    }

    /// Polls the control CQ until our send has completed (`send`) and/or
    /// a message has come in (`recv`; taken from `inbox`). A message
    /// that arrives while we wait for a send completion waits in `inbox`.
    fn wait(
        &mut self,
        node: &mut Node,
        mut send: bool,
        recv: bool,
    ) -> Result<Option<Vec<u8>>, PeerError> {
        let mut last = Instant::now();
        while send || (recv && self.inbox.is_none()) {
            let n = node
                .engine
                .poll_cq(self.cq, &mut self.wcs)
                .map_err(verbs("poll CQ failed"))?;
            for i in 0..n {
                let w = self.wcs[i];
                if w.status != WcStatus::Success {
                    return Err(PeerError::Completion {
                        status: w.status,
                        wr_id: w.wr_id,
                    });
                }
                if w.wr_id == 1 {
                    // The other side sends only after our answer, so at
                    // most one message is ever waiting.
                    let at = (self.sbuf + CTRL_BUF) as usize;
                    let len = w.byte_len as usize;
                    self.inbox = Some(node.engine.memory().as_slice()[at..at + len].to_vec());
                    self.post_recv(node)?;
                } else {
                    send = false;
                }
            }
            if n > 0 {
                continue;
            }
            step(node, &mut last, self.stall, false)?;
        }
        Ok(if recv { self.inbox.take() } else { None })
    }

    /// One lock-step exchange over the control connection.
    fn xchg(
        &mut self,
        node: &mut Node,
        role: Role,
        ours: &[u8],
        len: usize,
        what: &str,
    ) -> Result<Vec<u8>, PeerError> {
        let theirs = if role == Role::Client {
            self.send(node, ours)?;
            self.wait(node, true, true)?
        } else {
            let t = self.wait(node, false, true)?;
            self.send(node, ours)?;
            self.wait(node, true, false)?;
            t
        }
        .expect("waited for a receive");
        if theirs.len() != len {
            return Err(cfg(format!(
                "{what}: the control message has {} bytes, not {len}",
                theirs.len()
            )));
        }
        Ok(theirs)
    }
}

/// The state of one run.
struct Run<'o> {
    t: Test,
    node: Node,
    oob: Oob,
    role: Role,
    out: &'o mut dyn Write,
    /// The QPs (`-q`), QP 0 first.
    qps: Vec<u32>,
    scq: u32,
    rcq: u32,
    key: u32,
    /// Offset of the receive halves (the send halves start at 0): QP i
    /// sends from `i * region` and receives at `half + i * region`.
    half: u64,
    /// Bytes of each QP's half.
    region: u64,
    cache_line: u64,
    cycle: u64,
    /// Our key record per QP.
    mes: Vec<PerftestDest>,
    /// The other side's first key record per QP.
    rems: Vec<Option<PerftestDest>>,
    /// UD destinations per QP.
    ud: Vec<Option<UdDest>>,
    start: Instant,
    wcs: Vec<Wc>,
    /// The MTU both sides settled on.
    mtu: Mtu,
    gid_index: u8,
    qp_timeout: u8,
}

impl Run<'_> {
    fn line(&mut self, s: &str) -> Result<(), PeerError> {
        writeln!(self.out, "{s}").map_err(PeerError::Output)
    }

    fn now(&self) -> u64 {
        self.start.elapsed().as_nanos() as u64
    }

    /// One lock-step exchange of `ours` for `len` bytes, keeping the link
    /// alive meanwhile.
    fn xchg(&mut self, ours: &[u8], len: usize, what: &str) -> Result<Vec<u8>, PeerError> {
        let role = self.role;
        match &mut self.oob {
            Oob::Tcp(stream) => {
                let watch = self.node.watch();
                self.node
                    .while_blocked(|| watch.exchange(stream, role, ours, len))?
                    .map_err(oob(what))
            }
            Oob::Cm(c) => c.xchg(&mut self.node, role, ours, len, what),
        }
    }

    fn cm(&self) -> bool {
        matches!(self.oob, Oob::Cm(_))
    }

    /// One key-record exchange for QP 0 (perftest's syncs use QP 0).
    fn key_xchg(&mut self) -> Result<PerftestDest, PeerError> {
        self.key_xchg_qp(0)
    }

    /// One key-record exchange for QP `i`; the first one received is kept.
    fn key_xchg_qp(&mut self, i: usize) -> Result<PerftestDest, PeerError> {
        const WHAT: &str = "Couldn't exchange the key records";
        let d = if self.cm() {
            let me = self.mes[i].to_cm_wire(u32::from(self.gid_index));
            PerftestDest::parse_cm(&self.xchg(&me, PerftestDest::CM_LEN, WHAT)?)?
        } else {
            let me = self.mes[i].to_wire();
            PerftestDest::parse(&self.xchg(&me, PerftestDest::LEN, WHAT)?)?
        };
        if self.rems[i].is_none() {
            self.rems[i] = Some(d);
        }
        Ok(d)
    }

    /// One key exchange per QP (perftest's loops over the QPs).
    fn key_xchg_all(&mut self) -> Result<Vec<PerftestDest>, PeerError> {
        (0..self.qps.len()).map(|i| self.key_xchg_qp(i)).collect()
    }

    /// Connects every QP to the other side's QP of the same index.
    fn connect_all(&mut self) -> Result<(), PeerError> {
        let rems: Vec<PerftestDest> = self.rems.iter().map(|r| r.expect("exchanged")).collect();
        if let Some(r0) = rems.first() {
            self.gid_check(r0)?;
        }
        for (i, rem) in rems.into_iter().enumerate() {
            self.connect(i, rem)?;
        }
        Ok(())
    }

    fn done(&mut self) -> Result<(), PeerError> {
        // Both sides write "done" and nobody reads it (over TCP; with
        // rdma_cm the last key exchange is all).
        if let Oob::Tcp(stream) = &mut self.oob {
            let _ = stream.write_all(DONE);
        }
        Ok(())
    }

    fn info(&mut self) -> Result<(), PeerError> {
        let t = self.t.clone();
        let mut s = String::new();
        let _ = writeln!(s, "{RESULT_LINE}");
        let what = match (t.kind, t.bidir) {
            (Kind::Bw, true) => "Bidirectional BW ",
            (Kind::Bw, false) => "BW ",
            (Kind::Lat, _) => "Latency ",
        };
        let atomic = match (t.verb, t.cas) {
            (Verb::Atomic, true) => "CMP_AND_SWAP ",
            (Verb::Atomic, false) => "FETCH_AND_ADD ",
            _ => "",
        };
        let _ = writeln!(
            s,
            "                    {} {atomic}{what}Test",
            t.verb_name()
        );
        let _ = writeln!(s, " Dual-port       : OFF\t\tDevice         : {}", t.dev);
        let _ = writeln!(s, " Number of qps   : {}\t\tTransport type : IB", t.qps);
        let ct = match t.qp_type {
            QpType::Uc => "UC",
            QpType::Ud => "UD",
            _ => "RC",
        };
        let _ = writeln!(s, " Connection type : {ct}\t\tUsing SRQ      : OFF");
        let _ = writeln!(s, " PCIe relax order: OFF");
        let _ = writeln!(s, " ibv_wr* API     : OFF");
        if self.role == Role::Client || t.bidir {
            let _ = writeln!(s, " TX depth        : {}", t.tx_depth);
        }
        if t.verb == Verb::Send && (self.role == Role::Server || t.bidir) {
            let _ = writeln!(s, " RX depth        : {}", t.rx_depth);
        }
        if t.kind == Kind::Bw {
            let _ = writeln!(s, " CQ Moderation   : {}", t.cq_mod);
        }
        let _ = writeln!(s, " Mtu             : {}[B]", self.mtu.bytes());
        let _ = writeln!(s, " Link type       : Ethernet");
        let _ = writeln!(s, " GID index       : {}", self.gid_index);
        if matches!(t.verb, Verb::Read | Verb::Atomic) {
            let _ = writeln!(s, " Outstand reads  : {}", t.out_reads);
        } else {
            let _ = writeln!(s, " Max inline data : 0[B]");
        }
        if self.cm() {
            let _ = writeln!(s, " rdma_cm QPs\t : ON");
            let _ = writeln!(s, " Data ex. method : rdma_cm");
        } else {
            let _ = writeln!(s, " rdma_cm QPs\t : OFF");
            let _ = writeln!(s, " Data ex. method : Ethernet");
        }
        let _ = write!(s, "{RESULT_LINE}");
        self.line(&s)
    }

    fn address(&mut self, label: &str, d: PerftestDest) -> Result<(), PeerError> {
        let mut s = format!(
            " {label} address: LID {} QPN {} PSN {}",
            c_alt_hex(u64::from(d.lid), 4),
            c_alt_hex(u64::from(d.qpn), 6),
            c_alt_hex(u64::from(d.psn), 6)
        );
        if self.t.verb == Verb::Read {
            let _ = write!(s, " OUT {}", c_alt_hex(u64::from(d.out_reads), 4));
        }
        if matches!(self.t.verb, Verb::Read | Verb::Write) {
            let _ = write!(
                s,
                " RKey {} VAddr {}",
                c_alt_hex(u64::from(d.rkey), 8),
                c_alt_hex(d.vaddr, 16)
            );
        }
        let gid: Vec<String> = d.gid.0.iter().map(|b| format!("{b:02}")).collect();
        let _ = write!(s, "\n GID: {}", gid.join(":"));
        self.line(&s)
    }

    fn gid_check(&self, rem: &PerftestDest) -> Result<(), PeerError> {
        if self.cm() {
            // The connections came from rdma_cm, not from the records.
            return Ok(());
        }
        let v4 = |g: Gid| g.0[..12] == [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff];
        if v4(self.mes[0].gid) != v4(rem.gid) {
            return Err(cfg(
                "Found Incompatibility issue with GID types. Please Try to use a different IP version.",
            ));
        }
        Ok(())
    }

    /// RTR and RTS (or the address handle for UD) of QP `i` toward `rem`.
    fn connect(&mut self, i: usize, rem: PerftestDest) -> Result<(), PeerError> {
        if self.cm() {
            // rdma_cm connected the QP already (perftest skips
            // ctx_connect with -R).
            return Ok(());
        }
        let qp = self.qps[i];
        let my_psn = self.mes[i].psn;
        if rem.gid.0 == [0; 16] {
            return Err(cfg("the other side sent no GID"));
        }
        let ah = AhAttr {
            dgid: rem.gid,
            sgid_index: self.gid_index,
            hop_limit: 0xff,
            ..Default::default()
        };
        let e = &mut self.node.engine;
        if self.t.qp_type == QpType::Ud {
            super::ready_ud(e, qp, my_psn)?;
            self.ud[i] = Some(UdDest {
                ah,
                remote_qpn: rem.qpn,
                remote_qkey: QKEY,
            });
            return Ok(());
        }
        let path = super::Path {
            mtu: self.mtu,
            dest_qpn: rem.qpn,
            rq_psn: rem.psn,
            sq_psn: my_psn,
            ah,
            max_dest_rd_atomic: self.t.out_reads,
            max_rd_atomic: rem.out_reads.clamp(1, 128) as u8,
            min_rnr_timer: 12,
            timeout: self.qp_timeout,
            retry: 7,
        };
        super::connect_qp(e, qp, self.t.qp_type == QpType::Rc, &path)
    }

    /// Posts one receive on QP `i`, into its receive half.
    fn post_recv(&mut self, i: usize) -> Result<(), PeerError> {
        let ud = self.t.qp_type == QpType::Ud;
        let sge = [Sge {
            addr: IOVA
                + self.half
                + i as u64 * self.region
                + if ud { self.cache_line - GRH } else { 0 },
            length: (self.t.size + if ud { GRH } else { 0 }) as u32,
            lkey: self.key,
        }];
        self.node
            .engine
            .post_recv(
                self.qps[i],
                &RecvWr {
                    wr_id: 0,
                    sges: &sge,
                },
            )
            .map_err(verbs("Couldn't post receive"))
    }

    /// Posts WR number `n` of the measured operation on QP `i`, `offset`
    /// bytes into its send half and the other side's receive half.
    fn post(&mut self, i: usize, n: u64, signaled: bool, offset: u64) -> Result<(), PeerError> {
        let rem = self.rems[i].expect("connected");
        let op = match self.t.verb {
            Verb::Write => SendOp::Write,
            Verb::Read => SendOp::Read,
            Verb::Send => SendOp::Send,
            Verb::Atomic if self.t.cas => SendOp::CmpSwap {
                compare: 0,
                swap: 0,
            },
            Verb::Atomic => SendOp::FetchAdd { add: 1 },
        };
        let sge = [Sge {
            addr: IOVA + i as u64 * self.region + offset,
            length: self.t.size as u32,
            lkey: self.key,
        }];
        // The QP's index rides in the top bits of the WR ID.
        let mut wr =
            SendWr::new((i as u64) << 40 | n, op, &sge).remote(rem.vaddr + offset, rem.rkey);
        wr.signaled = signaled;
        wr.ud = self.ud[i];
        self.node
            .engine
            .post_send(self.qps[i], &wr)
            .map_err(verbs("Couldn't post send"))
    }

    /// Polls `cq` once into `self.wcs`; fails on an error completion.
    fn poll(&mut self, cq: u32) -> Result<usize, PeerError> {
        let n = self
            .node
            .engine
            .poll_cq(cq, &mut self.wcs)
            .map_err(verbs("poll CQ failed"))?;
        if let Some(w) = self.wcs[..n].iter().find(|w| w.status != WcStatus::Success) {
            return Err(PeerError::Completion {
                status: w.status,
                wr_id: w.wr_id,
            });
        }
        Ok(n)
    }

    /// Waits for one completion on `cq`, or (`None`) for the end of the
    /// duration-mode window `until`.
    fn wait_one_until(
        &mut self,
        cq: u32,
        stall: Duration,
        until: Option<Window>,
    ) -> Result<Option<Wc>, PeerError> {
        let mut last = Instant::now();
        loop {
            let n = self
                .node
                .engine
                .poll_cq(cq, &mut self.wcs[..1])
                .map_err(verbs("poll CQ failed"))?;
            if n == 1 {
                let w = self.wcs[0];
                if w.status != WcStatus::Success {
                    return Err(PeerError::Completion {
                        status: w.status,
                        wr_id: w.wr_id,
                    });
                }
                return Ok(Some(w));
            }
            if Window::ended(until, self.now()) {
                return Ok(None);
            }
            step(&mut self.node, &mut last, stall, false)?;
        }
    }

    /// Receives to post before a size's traffic: rx_depth, but no more
    /// than the messages that will come.
    fn first_receives(&self) -> u64 {
        u64::from(self.t.rx_depth).min(self.t.iters)
    }

    /// The address offset of WR `n` in the bandwidth tests: messages of
    /// at most half a page cycle through the page in cache-line steps.
    fn cycled(&self, n: u64) -> u64 {
        let step = if self.t.verb == Verb::Atomic {
            64
        } else {
            self.t
                .size
                .next_multiple_of(self.cache_line)
                .max(self.cache_line)
        };
        if self.t.size <= self.cycle / 2 {
            (n % (self.cycle / step)) * step
        } else {
            0
        }
    }
}

/// One waiting step: pumps the node, failing after `stall` without
/// progress (`progressed` resets the clock).
fn step(
    node: &mut Node,
    last: &mut Instant,
    stall: Duration,
    progressed: bool,
) -> Result<(), PeerError> {
    if progressed {
        *last = Instant::now();
        return Ok(());
    }
    if last.elapsed() > stall {
        return Err(PeerError::Stalled(stall));
    }
    node.progress(Duration::from_millis(20))
}

/// Runs one perftest tool (`tool` is its name) with its arguments.
pub fn run(
    opts: &PeerOptions,
    tool: &str,
    args: &[String],
    out: &mut dyn Write,
) -> Result<(), PeerError> {
    let a = Args::try_parse_from(std::iter::once(tool.to_string()).chain(args.iter().cloned()))
        .map_err(|e| cfg(super::usage_error(&e)))?;
    let t = Test::from_args(tool, &a)?;
    if a.inline_size.is_some_and(|i| i > 0) {
        writeln!(
            out,
            "Device not recognized to implement inline feature. Disabling it"
        )
        .map_err(PeerError::Output)?;
    }
    // Room for pages up to 64 KiB on the other side.
    let region = t.size.max(65536).next_multiple_of(64);
    let nq = u64::from(t.qps);
    let halves = 2 * nq * region + 64;
    // With -R, the rdma_cm side's memory follows the QPs' halves.
    let cm_base = halves.next_multiple_of(4096);
    let mem_len = if a.rdma_cm { cm_base + CM_MEM } else { halves };
    let mut node = Node::new(opts, mem_len as usize)?;
    let gid_index = match a.gid_index {
        Some(i) => i,
        // perftest prefers an IPv4-mapped GID, or with --ipv6 an IPv6
        // one (a global one before the link-local one here).
        None => {
            let ip = |i: u8| node.engine.gids().get(usize::from(i)).map(|g| g.to_ip());
            let v6 = |i: u8| matches!(ip(i), Some(IpAddr::V6(x)) if !x.is_unicast_link_local());
            (0..8u8)
                .find(|&i| {
                    if a.ipv6 {
                        v6(i)
                    } else {
                        ip(i).is_some_and(|x| x.is_ipv4())
                    }
                })
                .unwrap_or(0)
        }
    };
    let my_gid = node.gid(Some(gid_index))?;
    let active = node.active_mtu();
    let my_mtu = match a.mtu.and_then(|m| Mtu::from_bytes(m).ok()) {
        Some(m) if m > active => {
            writeln!(out, "Requested mtu is higher than active mtu ").map_err(PeerError::Output)?;
            active
        }
        Some(m) => m,
        None => active,
    };

    // Resources, as perftest makes them.
    let e = &mut node.engine;
    let pd = e.alloc_pd().map_err(verbs("Couldn't allocate PD"))?;
    let remote = match t.verb {
        Verb::Write => Access::REMOTE_WRITE,
        Verb::Read => Access::REMOTE_READ,
        Verb::Atomic => Access::REMOTE_ATOMIC,
        Verb::Send => Access(0),
    };
    let mem_len = e.memory().as_slice().len() as u64;
    let key = e
        .reg_mr(pd, IOVA, mem_len, 0, Access::LOCAL_WRITE.with(remote))
        .map_err(verbs("Couldn't register MR"))?;
    // One CQ entry per WR that can be outstanding on any QP.
    let scq = e
        .create_cq((t.tx_depth * t.qps).max(16))
        .map_err(verbs("Couldn't create CQ"))?;
    let rcq = if t.verb == Verb::Send {
        e.create_cq((t.rx_depth * t.qps).max(16))
            .map_err(verbs("Couldn't create CQ"))?
    } else {
        scq
    };
    let mut qps = Vec::new();
    for _ in 0..t.qps {
        let qp = e
            .create_qp(&QpInit {
                qp_type: t.qp_type,
                pd,
                send_cq: scq,
                recv_cq: rcq,
                caps: QpCaps {
                    max_send_wr: t.tx_depth,
                    max_recv_wr: t.rx_depth,
                    max_send_sge: 1,
                    max_recv_sge: 1,
                    max_inline_data: 0,
                },
                sq_sig_all: false,
                srq: None,
            })
            .map_err(verbs("Couldn't create QP"))?;
        let ud = t.qp_type == QpType::Ud;
        let init = QpAttr {
            state: Some(QpState::Init),
            pkey_index: Some(0),
            access: (!ud).then_some(if remote == Access(0) {
                Access::REMOTE_WRITE
            } else {
                remote
            }),
            // rdma_cm gives its UD QPs its own Q_Key.
            qkey: ud.then_some(if a.rdma_cm { RDMA_UDP_QKEY } else { QKEY }),
            ..Default::default()
        };
        e.modify_qp(qp, &init, 0)
            .map_err(verbs("Failed to modify QP to INIT"))?;
        qps.push(qp);
    }
    // Random content, except ib_write_lat's zeroed buffer.
    if !(t.verb == Verb::Write && t.kind == Kind::Lat) {
        // Eight bytes per step: -a's 16 MiB would take seconds a byte
        // at a time in a debug build.
        let mut x = u64::from(random_psn()) | 1;
        for w in e.memory_mut().as_mut_slice().chunks_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            w.copy_from_slice(&x.to_le_bytes()[..w.len()]);
        }
    }

    let client = a.servername.is_some();
    let role = if client { Role::Client } else { Role::Server };
    let (oob, my_gid, gid_index) = if a.rdma_cm {
        let c = cm_setup(&mut node, opts, &a, (pd, cm_base), out, t.out_reads)?;
        let sgid = c.params.sgid_index;
        (Oob::Cm(c), node.gid(Some(sgid))?, sgid)
    } else {
        (
            Oob::Tcp(tcp_setup(&mut node, opts, &a, out)?),
            my_gid,
            gid_index,
        )
    };
    let mes: Vec<PerftestDest> = qps
        .iter()
        .map(|&qpn| PerftestDest {
            lid: 0,
            out_reads: u16::from(t.out_reads),
            qpn,
            psn: random_psn(),
            rkey: key,
            vaddr: 0,
            gid: my_gid,
            srqn: 0,
        })
        .collect();
    let n = qps.len();
    let mut r = Run {
        t,
        node,
        oob,
        role,
        out,
        qps,
        scq,
        rcq,
        key,
        half: 0,
        region: 0,
        cache_line: u64::from(CACHE_LINE),
        cycle: u64::from(PAGE),
        mes,
        rems: vec![None; n],
        ud: vec![None; n],
        start: Instant::now(),
        wcs: vec![super::blank_wc(); 16],
        mtu: my_mtu,
        gid_index,
        qp_timeout: a.qp_timeout,
    };
    prefix(&mut r)?;
    let stall = opts.stall_timeout;
    match (r.t.kind, r.t.verb) {
        (Kind::Bw, Verb::Send) => send_bw(&mut r, stall)?,
        (Kind::Bw, _) => rdma_bw(&mut r, stall)?,
        (Kind::Lat, Verb::Write) => write_lat(&mut r, stall)?,
        (Kind::Lat, Verb::Send) => send_lat(&mut r, stall)?,
        (Kind::Lat, _) => read_lat(&mut r, stall)?,
    }
    if let Oob::Cm(c) = &mut r.oob {
        // perftest disconnects every test connection (both sides do);
        // its control connection goes when its process exits.
        let tests = std::mem::take(&mut c.tests);
        c.gsi.disconnect_all(&mut r.node, &tests)?;
        let ctrl = c.ctrl;
        c.gsi.disconnect_nowait(&mut r.node, &ctrl)?;
    }
    // The other side's last packets may still want an ACK.
    r.node
        .linger(Duration::from_millis(300), Duration::from_secs(3))
}

/// What a perftest server prints before the client connects.
fn waiting_banner(out: &mut dyn Write) -> Result<(), PeerError> {
    writeln!(
        out,
        "\n************************************\n* Waiting for client to connect... *\n************************************"
    )
    .map_err(PeerError::Output)?;
    let _ = out.flush();
    Ok(())
}

/// perftest's TCP connection: to the server, or from the client we wait
/// for.
fn tcp_setup(
    node: &mut Node,
    opts: &PeerOptions,
    a: &Args,
    out: &mut dyn Write,
) -> Result<TcpStream, PeerError> {
    match &a.servername {
        Some(server) => oob_connect(server, a.port, opts.connect_timeout),
        None => {
            waiting_banner(out)?;
            let port = a.port;
            node.while_blocked(|| oob_accept(port))?
        }
    }
}

/// perftest's rdma_cm side (`-R`): QP1 and the control QP in the node
/// memory at `cm_base`, and the control connection: to the server's
/// rdma_cm listener on the port, or from the client we wait for.
fn cm_setup(
    node: &mut Node,
    opts: &PeerOptions,
    a: &Args,
    (pd, cm_base): (u32, u64),
    out: &mut dyn Write,
    out_reads: u8,
) -> Result<Box<CmOob>, PeerError> {
    let server = match &a.servername {
        Some(s) => Some(s.parse::<IpAddr>().map_err(|_| {
            cfg(format!(
                "{s}: with -R the peer needs the server's IP address, not a name"
            ))
        })?),
        None => None,
    };
    // Our address: of the server's family (a server answers from the
    // address each REQ names). Stock perftest 6.06 resolves the server
    // as IPv4 only; the peer also takes an IPv6 one.
    let want_v4 = server.is_none_or(|x| x.is_ipv4());
    let me = opts
        .ips
        .iter()
        .map(|p| p.addr)
        .find(|x| x.is_ipv4() == want_v4)
        .ok_or_else(|| cfg("no --ip of the server's IP version"))?;
    let sgid_index = node
        .engine
        .gids()
        .find(Gid::from_ip(me))
        .ok_or_else(|| cfg(format!("{me} has no GID")))? as u8;
    let e = &mut node.engine;
    let key = e
        .reg_mr(pd, cm_base, CM_MEM, cm_base, Access::LOCAL_WRITE)
        .map_err(verbs("Couldn't register MR"))?;
    let cq = e.create_cq(16).map_err(verbs("Couldn't create CQ"))?;
    // perftest's control QP: RC, one send and one receive at a time.
    let qp = e
        .create_qp(&QpInit {
            qp_type: QpType::Rc,
            pd,
            send_cq: cq,
            recv_cq: cq,
            caps: QpCaps {
                max_send_wr: 2,
                max_recv_wr: 2,
                max_send_sge: 1,
                max_recv_sge: 1,
                max_inline_data: 0,
            },
            sq_sig_all: true,
            srq: None,
        })
        .map_err(verbs("Couldn't create QP"))?;
    let init = QpAttr {
        state: Some(QpState::Init),
        pkey_index: Some(0),
        access: Some(Access(0)),
        ..Default::default()
    };
    e.modify_qp(qp, &init, 0)
        .map_err(verbs("Failed to modify QP to INIT"))?;
    let gsi = Gsi::new(node, pd, key, cm_base, sgid_index)?;
    let params = RcParams {
        qp,
        psn: random_psn(),
        mtu: node.active_mtu(),
        responder_resources: out_reads,
        initiator_depth: out_reads,
        sgid_index,
        ca_guid: super::cm::ca_guid(opts),
    };
    let mut c = Box::new(CmOob {
        gsi,
        qp,
        cq,
        key,
        sbuf: cm_base + GSI_MEM,
        ctrl: Conn::default(),
        tests: Vec::new(),
        params,
        server,
        me,
        port: a.port,
        stall: opts.stall_timeout,
        wcs: [super::blank_wc(); 2],
        inbox: None,
    });
    // perftest posts its receive before it connects.
    c.post_recv(node)?;
    // The control connection has no responder resources (SEND only).
    let ctrl = RcParams {
        responder_resources: 0,
        initiator_depth: 0,
        ..params
    };
    c.ctrl = match server {
        Some(dst) => {
            let until = Instant::now() + opts.connect_timeout;
            c.gsi
                .connect_retrying(node, &ctrl, (me, dst, a.port), until)?
        }
        None => {
            waiting_banner(out)?;
            let wait = opts.stall_timeout.max(Duration::from_secs(600));
            let (conn, _tid, rep) = c.gsi.accept(node, &ctrl, a.port, wait)?;
            c.gsi.established(node, &conn, &rep, |_| false)?;
            // Every later connection answers from the GID this one used.
            c.params.sgid_index = c.gsi.sgid_index();
            conn
        }
    };
    Ok(c)
}

/// With `-R -c UD`: each test QP resolved with SIDR (the client asks,
/// the server answers with its QP and rdma_cm's Q_Key). In the latency
/// tests and with `-b` the client then sends its QPN as the immediate
/// of a 4-byte SEND, from which the server takes its address handle.
fn cm_resolve_ud(r: &mut Run<'_>) -> Result<(), PeerError> {
    let Oob::Cm(c) = &mut r.oob else {
        return Ok(());
    };
    let (me, port, stall, server) = (c.me, c.port, c.stall, c.server);
    let sgid = c.params.sgid_index;
    let back = r.t.kind == Kind::Lat || r.t.bidir;
    for i in 0..r.qps.len() {
        let qp = r.qps[i];
        // The receive half of the QP takes the GRH and the QPN.
        let grh_at = r.half + i as u64 * r.region;
        super::ready_ud(&mut r.node.engine, qp, r.mes[i].psn)?;
        let ah = |dgid| AhAttr {
            dgid,
            sgid_index: sgid,
            hop_limit: 0xff,
            ..Default::default()
        };
        let Oob::Cm(c) = &mut r.oob else {
            unreachable!("checked above")
        };
        match server {
            Some(dst) => {
                let until = Instant::now() + stall;
                let p = c
                    .gsi
                    .sidr_resolve(&mut r.node, sgid, (me, dst, port), until)?;
                let dest = UdDest {
                    ah: ah(p.gid),
                    remote_qpn: p.qpn,
                    remote_qkey: p.qkey,
                };
                r.ud[i] = Some(dest);
                if back {
                    let sge = [Sge {
                        addr: IOVA + i as u64 * r.region,
                        length: 4,
                        lkey: r.key,
                    }];
                    let mut wr = SendWr::new(0, SendOp::SendWithImm(qp), &sge);
                    wr.ud = Some(dest);
                    r.node
                        .engine
                        .post_send(qp, &wr)
                        .map_err(verbs("Couldn't post send my QP number"))?;
                    r.wait_one_until(r.scq, stall, None)?;
                }
            }
            None => {
                if back {
                    // perftest's receive for it: a GRH and 4 bytes.
                    let sge = [Sge {
                        addr: IOVA + grh_at,
                        length: (GRH + 4) as u32,
                        lkey: r.key,
                    }];
                    r.node
                        .engine
                        .post_recv(
                            qp,
                            &RecvWr {
                                wr_id: 0,
                                sges: &sge,
                            },
                        )
                        .map_err(verbs("Couldn't post receive"))?;
                }
                c.gsi
                    .sidr_accept(&mut r.node, (qp, RDMA_UDP_QKEY), port, stall)?;
                if back {
                    let w = r
                        .wait_one_until(r.rcq, stall, None)?
                        .expect("no duration window");
                    let at = grh_at as usize;
                    let src =
                        super::cm::grh_source(&r.node.engine.memory().as_slice()[at..at + 40]);
                    let remote_qpn = w
                        .imm_data
                        .ok_or_else(|| cfg("the client's first SEND carried no QP number"))?;
                    r.ud[i] = Some(UdDest {
                        ah: ah(src),
                        remote_qpn,
                        remote_qkey: RDMA_UDP_QKEY,
                    });
                }
            }
        }
    }
    Ok(())
}

/// With `-R`, after the MTU exchange (perftest's
/// create_rdma_cm_connection): a handshake of zeroed records, one
/// rdma_cm connection per test QP on the same port, another handshake.
fn cm_connect_tests(r: &mut Run<'_>) -> Result<(), PeerError> {
    let zero = [0u8; PerftestDest::CM_LEN];
    r.xchg(
        &zero,
        PerftestDest::CM_LEN,
        "Couldn't sync before the rdma_cm QPs",
    )?;
    if r.t.qp_type == QpType::Ud {
        cm_resolve_ud(r)?;
    } else {
        cm_connect_rc(r)?;
    }
    r.xchg(
        &zero,
        PerftestDest::CM_LEN,
        "Couldn't sync after the rdma_cm QPs",
    )?;
    Ok(())
}

/// With `-R` over RC: one rdma_cm connection per test QP, on the port.
fn cm_connect_rc(r: &mut Run<'_>) -> Result<(), PeerError> {
    let Oob::Cm(c) = &mut r.oob else {
        return Ok(());
    };
    for (&qp, me) in r.qps.iter().zip(&r.mes) {
        let p = RcParams {
            qp,
            psn: me.psn,
            ..c.params
        };
        let conn = match c.server {
            Some(dst) => {
                let until = Instant::now() + c.stall;
                c.gsi
                    .connect_retrying(&mut r.node, &p, (c.me, dst, c.port), until)?
            }
            None => {
                let (conn, _tid, rep) = c.gsi.accept(&mut r.node, &p, c.port, c.stall)?;
                c.gsi.established(&mut r.node, &conn, &rep, |_| false)?;
                conn
            }
        };
        c.tests.push(conn);
    }
    Ok(())
}

/// Versions, page and cache-line sizes, MTU; then the buffer layout and
/// the test information.
fn prefix(r: &mut Run<'_>) -> Result<(), PeerError> {
    let v = r.xchg(PERFTEST_VERSION, 16, "Couldn't exchange versions")?;
    let ver = parse_perftest_version(&v)?;
    if ver < 5.70 {
        return Err(cfg(
            "Current implementation is not compatible with versions older than 5.70",
        ));
    }
    let page = r.xchg(&encode_u32(PAGE), 4, "Couldn't exchange the page size")?;
    let line = r.xchg(
        &encode_u32(CACHE_LINE),
        4,
        "Couldn't exchange the cache line",
    )?;
    let be = |b: &[u8]| u32::from_be_bytes([b[0], b[1], b[2], b[3]]);
    r.cycle = u64::from(be(&page).clamp(PAGE, 65536));
    r.cache_line = u64::from(be(&line).clamp(CACHE_LINE, 4096));
    let m = r.xchg(&encode_mtu(r.mtu), 2, "Couldn't exchange the MTU")?;
    let theirs = parse_mtu(&m)?;
    r.mtu = r.mtu.min(theirs);
    if r.t.qp_type == QpType::Ud && !r.t.all && r.t.size > r.mtu.bytes() as u64 {
        return Err(cfg(" Max message size in UD cannot be greater than MTU "));
    }
    let region = r.t.size.max(r.cycle).next_multiple_of(r.cache_line);
    let n = r.qps.len() as u64;
    r.region = region;
    r.half = n * region;
    for (i, me) in r.mes.iter_mut().enumerate() {
        me.vaddr = IOVA + (n + i as u64) * region;
    }
    // After the layout: UD's first SEND and receive use the QPs' halves.
    if r.cm() {
        cm_connect_tests(r)?;
    }
    r.info()
}

/// Our address line per QP, then one key exchange per QP with the other
/// side's line after each, as perftest prints them.
fn print_addresses(r: &mut Run<'_>) -> Result<(), PeerError> {
    for me in r.mes.clone() {
        r.address("local", me)?;
    }
    for i in 0..r.qps.len() {
        let rem = r.key_xchg_qp(i)?;
        r.address("remote", rem)?;
    }
    Ok(())
}

/// ib_write_bw, ib_read_bw and ib_atomic_bw.
fn rdma_bw(r: &mut Run<'_>, stall: Duration) -> Result<(), PeerError> {
    r.key_xchg_all()?;
    r.connect_all()?;
    print_addresses(r)?;
    r.key_xchg()?;
    bw_header(r)?;
    if r.t.bidir {
        // Both sides send: a sync, the traffic, then each side prints the
        // sum of both reports. With -a per size, with one more sync after
        // the traffic.
        for size in r.t.sizes(r.mtu) {
            r.t.size = size;
            r.key_xchg()?;
            let ours = bw_client(r, stall, false)?;
            if r.t.all {
                r.key_xchg()?;
            }
            let theirs = xchg_report(r, &ours)?;
            bw_row(r, &sum_reports(&ours, &theirs))?;
        }
        r.line(RESULT_LINE)?;
    } else if r.role == Role::Client {
        // With -a every size runs back to back, with no handshake in
        // between; the report carries the last.
        let mut rep = None;
        for size in r.t.sizes(r.mtu) {
            r.t.size = size;
            let x = bw_client(r, stall, false)?;
            bw_row(r, &x)?;
            rep = Some(x);
        }
        let rep = rep.expect("at least one size");
        r.line(RESULT_LINE)?;
        r.key_xchg()?;
        // The server's values are junk; only ours count.
        xchg_report(r, &rep)?;
    } else {
        r.key_xchg()?;
        let rep = xchg_report(
            r,
            &BwReport {
                size: 0,
                iters: 0,
                bw_peak: 0.0,
                bw_avg: 0.0,
                msg_rate: 0.0,
            },
        )?;
        bw_row(r, &rep)?;
        r.line(RESULT_LINE)?;
    }
    r.key_xchg()?;
    r.done()
}

/// ib_send_bw: both sides print their own figures; no report exchange.
fn send_bw(r: &mut Run<'_>, stall: Duration) -> Result<(), PeerError> {
    r.key_xchg_all()?;
    r.connect_all()?;
    r.key_xchg()?;
    print_addresses(r)?;
    bw_header(r)?;
    // Per size: receives posted, a handshake, the traffic, each side's
    // row; with -a also a handshake after each size.
    for size in r.t.sizes(r.mtu) {
        r.t.size = size;
        if r.role == Role::Server || r.t.bidir {
            // Never more than the size's messages: a receive left over
            // would be too short for the next size's.
            for i in 0..r.qps.len() {
                for _ in 0..r.first_receives() {
                    r.post_recv(i)?;
                }
            }
        }
        r.key_xchg()?;
        let rep = if r.t.bidir {
            let ours = bw_client(r, stall, true)?;
            let theirs = xchg_report(r, &ours)?;
            sum_reports(&ours, &theirs)
        } else if r.role == Role::Client {
            bw_client(r, stall, false)?
        } else {
            send_bw_server(r, stall)?
        };
        bw_row(r, &rep)?;
        if r.t.all {
            r.key_xchg()?;
        }
    }
    r.line(RESULT_LINE)?;
    r.key_xchg()?;
    r.done()
}

/// The sending side of the bandwidth tests: keeps up to tx_depth WRs in
/// flight, signalling every cq_mod-th and the last. With `receives` (a
/// bidirectional send test) it also takes the other side's iters
/// messages, reposting receives, and a server starts sending only after
/// its first receive, as perftest does. In duration mode (`-D`) it runs
/// from its entry to the end of the window, counts the completions of the
/// sample, and leaves what is in flight at the end.
fn bw_client(r: &mut Run<'_>, stall: Duration, receives: bool) -> Result<BwReport, PeerError> {
    let win = r.t.duration.map(|d| Window::new(r.now(), d));
    let timed = win.is_some();
    let mut sampled = 0u64;
    let nq = r.qps.len();
    let iters = r.t.iters;
    let total = iters * nq as u64;
    let cq_mod = u64::from(r.t.cq_mod);
    let tx = u64::from(r.t.tx_depth);
    let mut tposted = Vec::with_capacity(total as usize);
    let mut done: Vec<(u64, u64)> = Vec::new();
    let (mut scnt, mut ccnt) = (vec![0u64; nq], vec![0u64; nq]);
    let mut completed = 0u64;
    let mut rposted = vec![if receives { r.first_receives() } else { iters }; nq];
    let mut rcnt = if receives { 0 } else { total };
    let mut started = !receives || r.role == Role::Client;
    let mut last = Instant::now();
    loop {
        let more = match win {
            Some(w) => w.phase(r.now()) != Phase::End,
            None => completed < total || rcnt < total,
        };
        if !more {
            break;
        }
        let mut moved = false;
        if receives && (timed || rcnt < total) {
            let n = r.poll(r.rcq)?;
            for k in 0..n {
                let qpn = r.wcs[k].qp_num;
                let i = r.qps.iter().position(|&q| q == qpn).unwrap_or(0);
                rcnt += 1;
                started = true;
                moved = true;
                if timed || rposted[i] < iters {
                    r.post_recv(i)?;
                    rposted[i] += 1;
                }
            }
        }
        for i in 0..nq {
            while started && (timed || scnt[i] < iters) && scnt[i] - ccnt[i] < tx {
                let n = scnt[i];
                let signaled = n % cq_mod == cq_mod - 1 || (!timed && n == iters - 1);
                let off = r.cycled(n);
                if !timed {
                    tposted.push(r.now());
                }
                r.post(i, n, signaled, off)?;
                scnt[i] += 1;
                moved = true;
            }
        }
        let n = r.poll(r.scq)?;
        for k in 0..n {
            let w = r.wcs[k];
            let i = (w.wr_id >> 40) as usize;
            let upto = (w.wr_id & ((1 << 40) - 1)) + 1;
            if let Some(c) = ccnt.get_mut(i) {
                let new = upto.saturating_sub(*c);
                completed += new;
                if Window::sampling(win, r.now()) {
                    sampled += new;
                }
                *c = upto;
            }
            if !timed {
                done.push((completed - 1, r.now()));
            }
            moved = true;
        }
        step(&mut r.node, &mut last, stall, moved)?;
    }
    if let Some(w) = win {
        let (t0, t1) = w.sample();
        return Ok(bw_report(r, sampled, t0, t1, 0.0));
    }
    let t_end = done.last().map_or(0, |d| d.1);
    Ok(bw_report(
        r,
        total,
        tposted[0],
        t_end,
        peak(r, &tposted, &done),
    ))
}

/// perftest's peak: the least time per message over every run of
/// messages from a post to a later completion.
fn peak(r: &Run<'_>, tposted: &[u64], done: &[(u64, u64)]) -> f64 {
    if r.t.no_peak {
        return 0.0;
    }
    let mut best = f64::MAX;
    for (i, &tp) in tposted.iter().enumerate() {
        for &(j, tc) in done.iter().filter(|d| d.0 >= i as u64) {
            let per = tc.saturating_sub(tp) as f64 / (j - i as u64 + 1) as f64;
            if per > 0.0 && per < best {
                best = per;
            }
        }
    }
    if best == f64::MAX {
        return 0.0;
    }
    r.t.size as f64 / (best / 1e9) / format_factor(r)
}

fn format_factor(r: &Run<'_>) -> f64 {
    if r.t.gbits { 125e6 } else { 1_048_576.0 }
}

fn bw_report(r: &Run<'_>, iters: u64, t0: u64, t1: u64, bw_peak: f64) -> BwReport {
    let secs = (t1.saturating_sub(t0) as f64 / 1e9).max(1e-9);
    BwReport {
        size: r.t.size,
        iters,
        bw_peak,
        bw_avg: r.t.size as f64 * iters as f64 / secs / format_factor(r),
        msg_rate: iters as f64 / secs / 1e6,
    }
}

/// The send_bw server: counts receives, reposting while more will come;
/// the clock starts at the first. In duration mode the window starts
/// there too, and receives are reposted until it ends.
fn send_bw_server(r: &mut Run<'_>, stall: Duration) -> Result<BwReport, PeerError> {
    let iters = r.t.iters;
    let nq = r.qps.len();
    let total = iters * nq as u64;
    let timed = r.t.duration;
    let mut win: Option<Window> = None;
    let mut posted = vec![r.first_receives(); nq];
    let (mut rcnt, mut sampled, mut t0, mut t1) = (0u64, 0u64, 0u64, 0u64);
    let mut last = Instant::now();
    while if timed.is_some() {
        !Window::ended(win, r.now())
    } else {
        rcnt < total
    } {
        let n = r.poll(r.rcq)?;
        for k in 0..n {
            let qpn = r.wcs[k].qp_num;
            let i = r.qps.iter().position(|&q| q == qpn).unwrap_or(0);
            if rcnt == 0 {
                t0 = r.now();
                win = timed.map(|d| Window::new(t0, d));
            }
            rcnt += 1;
            t1 = r.now();
            if Window::sampling(win, t1) {
                sampled += 1;
            }
            if timed.is_some() || posted[i] < iters {
                r.post_recv(i)?;
                posted[i] += 1;
            }
        }
        step(&mut r.node, &mut last, stall, n > 0)?;
    }
    if let Some(w) = win {
        let (t0, t1) = w.sample();
        return Ok(bw_report(r, sampled, t0, t1, 0.0));
    }
    Ok(bw_report(r, total, t0, t1, 0.0))
}

/// Five lock-step exchanges of the report; returns the other side's.
fn xchg_report(r: &mut Run<'_>, ours: &BwReport) -> Result<BwReport, PeerError> {
    let mut theirs = [[0u8; 8]; 5];
    for (slot, mine) in theirs.iter_mut().zip(ours.to_wire()) {
        let got = r.xchg(&mine, 8, "Couldn't exchange reports")?;
        slot.copy_from_slice(&got);
    }
    Ok(BwReport::parse(&theirs))
}

/// A bidirectional test's figures: both sides' added up.
fn sum_reports(a: &BwReport, b: &BwReport) -> BwReport {
    BwReport {
        size: a.size,
        iters: a.iters,
        bw_peak: a.bw_peak + b.bw_peak,
        bw_avg: a.bw_avg + b.bw_avg,
        msg_rate: a.msg_rate + b.msg_rate,
    }
}

fn bw_header(r: &mut Run<'_>) -> Result<(), PeerError> {
    let unit = if r.t.gbits { "Gb/sec" } else { "MB/sec" };
    let h = format!(
        "{RESULT_LINE}\n #bytes     #iterations    BW peak[{unit}]    BW average[{unit}]   MsgRate[Mpps]"
    );
    r.line(&h)
}

fn bw_row(r: &mut Run<'_>, rep: &BwReport) -> Result<(), PeerError> {
    let row = if r.t.gbits && rep.bw_avg < 0.1 {
        format!(
            " {:<7}    {}           {:<7.6}            {:<7.6}            {:<7.6}",
            rep.size, rep.iters, rep.bw_peak, rep.bw_avg, rep.msg_rate
        )
    } else {
        format!(
            " {:<7}    {:<10}       {:<7.2}            {:<7.2}\t\t   {:<7.6}",
            rep.size, rep.iters, rep.bw_peak, rep.bw_avg, rep.msg_rate
        )
    };
    r.line(&row)
}

/// The latency tests' opening: two key exchanges, connect, two more.
fn lat_open(r: &mut Run<'_>) -> Result<(), PeerError> {
    let rem = r.key_xchg()?;
    r.key_xchg()?;
    r.gid_check(&rem)?;
    r.connect(0, rem)?;
    let me = r.mes[0];
    r.address("local", me)?;
    let rem2 = r.key_xchg()?;
    r.address("remote", rem2)?;
    r.key_xchg()?;
    Ok(())
}

/// ib_write_lat: each side writes into the other's receive half and
/// watches the last byte of its own for the other's counter. The server
/// writes first. No close handshake.
fn write_lat(r: &mut Run<'_>, stall: Duration) -> Result<(), PeerError> {
    lat_open(r)?;
    lat_header(r)?;
    // With -a both sides run every size, the counter starting again at 1,
    // with nothing exchanged in between.
    for size in r.t.sizes(r.mtu) {
        r.t.size = size;
        let iters = r.t.iters;
        let post_at = (size - 1) as usize;
        let poll_at = (r.half + size - 1) as usize;
        let server = r.role == Role::Server;
        // Duration mode: both sides loop until their own window ends.
        let win = r.t.duration.map(|d| Window::new(r.now(), d));
        let timed = win.is_some();
        let mut sampled = 0u64;
        let mut tposted = Vec::with_capacity(if timed { 0 } else { iters as usize });
        let (mut scnt, mut rcnt) = (0u64, 0u64);
        'run: while if timed {
            !Window::ended(win, r.now())
        } else {
            scnt < iters || rcnt < iters
        } {
            if (timed || rcnt < iters) && !(scnt < 1 && server) {
                rcnt += 1;
                let want = rcnt as u8;
                let mut last = Instant::now();
                while r.node.engine.memory().as_slice()[poll_at] != want {
                    if Window::ended(win, r.now()) {
                        break 'run;
                    }
                    step(&mut r.node, &mut last, stall, false)?;
                }
            }
            if timed || scnt < iters {
                scnt += 1;
                r.node.engine.memory_mut().as_mut_slice()[post_at] = scnt as u8;
                if !post_and_wait(r, scnt, stall, win, &mut tposted, &mut sampled)? {
                    break;
                }
            }
        }
        lat_result(r, win, sampled, &tposted, 2.0)?;
    }
    r.line(RESULT_LINE)
}

/// ib_read_lat and ib_atomic_lat: the client reads (or does an atomic)
/// one message at a time; the server waits in the closing handshake.
fn read_lat(r: &mut Run<'_>, stall: Duration) -> Result<(), PeerError> {
    lat_open(r)?;
    if r.role == Role::Client {
        lat_header(r)?;
        for size in r.t.sizes(r.mtu) {
            r.t.size = size;
            let win = r.t.duration.map(|d| Window::new(r.now(), d));
            let mut tposted =
                Vec::with_capacity(if win.is_some() { 0 } else { r.t.iters as usize });
            let (mut n, mut sampled) = (0u64, 0u64);
            while match win {
                Some(w) => w.phase(r.now()) != Phase::End,
                None => n < r.t.iters,
            } {
                n += 1;
                if !post_and_wait(r, n - 1, stall, win, &mut tposted, &mut sampled)? {
                    break;
                }
            }
            lat_result(r, win, sampled, &tposted, 1.0)?;
        }
        r.key_xchg()?;
        r.done()?;
        r.line(RESULT_LINE)
    } else {
        r.key_xchg()?;
        r.done()?;
        r.line(RESULT_LINE)
    }
}

/// ib_send_lat: a ping-pong of sends; the client sends first.
fn send_lat(r: &mut Run<'_>, stall: Duration) -> Result<(), PeerError> {
    let rem = r.key_xchg()?;
    r.gid_check(&rem)?;
    r.connect(0, rem)?;
    r.key_xchg()?;
    let me = r.mes[0];
    r.address("local", me)?;
    let rem2 = r.key_xchg()?;
    r.address("remote", rem2)?;
    lat_header(r)?;
    // Per size (one, or every size with -a): receives, a handshake, the
    // ping-pong, a row.
    for size in r.t.sizes(r.mtu) {
        r.t.size = size;
        let rx = r.first_receives();
        for _ in 0..rx {
            r.post_recv(0)?;
        }
        r.key_xchg()?;
        let iters = r.t.iters;
        let client = r.role == Role::Client;
        // Duration mode: the window starts at the first receive, and both
        // sides loop until their own ends.
        let timed = r.t.duration;
        let mut win: Option<Window> = None;
        let mut sampled = 0u64;
        let mut tposted = Vec::with_capacity(if timed.is_some() { 0 } else { iters as usize });
        let (mut scnt, mut rcnt) = (0u64, 0u64);
        while if timed.is_some() {
            !Window::ended(win, r.now())
        } else {
            scnt < iters || rcnt < iters
        } {
            if (timed.is_some() || rcnt < iters) && !(scnt == 0 && client) {
                if r.wait_one_until(r.rcq, stall, win)?.is_none() {
                    break;
                }
                rcnt += 1;
                if rcnt == 1 {
                    win = timed.map(|d| Window::new(r.now(), d));
                }
                if timed.is_some() || rcnt + rx <= iters {
                    r.post_recv(0)?;
                }
            }
            if timed.is_some() || scnt < iters {
                scnt += 1;
                if !post_and_wait(r, scnt - 1, stall, win, &mut tposted, &mut sampled)? {
                    break;
                }
            }
        }
        lat_result(r, win, sampled, &tposted, 2.0)?;
    }
    r.line(RESULT_LINE)?;
    r.key_xchg()?;
    r.done()
}

fn lat_header(r: &mut Run<'_>) -> Result<(), PeerError> {
    if r.t.duration.is_some() {
        let h =
            format!("{RESULT_LINE}\n #bytes        #iterations       t_avg[usec]    tps average");
        return r.line(&h);
    }
    let h = format!(
        "{RESULT_LINE}\n #bytes #iterations    t_min[usec]    t_max[usec]  t_typical[usec]    t_avg[usec]    t_stdev[usec]   99% percentile[usec]   99.9% percentile[usec] "
    );
    r.line(&h)
}

/// The latency figures from the post times, perftest's way: the gaps
/// between posts (divided by `rtt_factor`), sorted, the two largest
/// dropped.
pub(crate) fn lat_stats(tposted: &[u64], rtt_factor: f64) -> [f64; 7] {
    let mut d: Vec<f64> = tposted
        .windows(2)
        .map(|w| w[1].saturating_sub(w[0]) as f64 / 1e3 / rtt_factor)
        .collect();
    d.sort_by(f64::total_cmp);
    if d.len() < 3 {
        return [0.0; 7];
    }
    let m = d.len() - 2;
    let kept = &d[..m];
    let typical = if m.is_multiple_of(2) {
        (kept[m / 2 - 1] + kept[m / 2]) / 2.0
    } else {
        kept[m / 2]
    };
    let avg = kept.iter().sum::<f64>() / m as f64;
    let var = kept.iter().map(|x| (x - avg) * (x - avg)).sum::<f64>() / m as f64;
    let pct = |p: f64| d[((p * m as f64).ceil() as usize).min(d.len() - 1)];
    [d[0], d[m], typical, avg, var.sqrt(), pct(0.99), pct(0.999)]
}

/// Posts message `n` of a latency test and waits for its completion; in
/// duration mode it counts if it completed within the sample. Returns
/// false when the window ended first.
fn post_and_wait(
    r: &mut Run<'_>,
    n: u64,
    stall: Duration,
    win: Option<Window>,
    tposted: &mut Vec<u64>,
    sampled: &mut u64,
) -> Result<bool, PeerError> {
    if win.is_none() {
        tposted.push(r.now());
    }
    r.post(0, n, true, 0)?;
    if r.wait_one_until(r.scq, stall, win)?.is_none() {
        return Ok(false);
    }
    if Window::sampling(win, r.now()) {
        *sampled += 1;
    }
    Ok(true)
}

/// A latency test's row: the duration-mode row in a window, else the
/// statistics of the iterations.
fn lat_result(
    r: &mut Run<'_>,
    win: Option<Window>,
    sampled: u64,
    tposted: &[u64],
    rtt_factor: f64,
) -> Result<(), PeerError> {
    match win {
        Some(w) => lat_dur_row(r, &w, sampled, rtt_factor),
        None => lat_row(r, tposted, rtt_factor),
    }
}

/// A duration-mode latency row: the sample's messages, the mean time per
/// message (one way for SEND and WRITE, `rtt_factor` 2) and the
/// transactions per second.
fn lat_dur_row(r: &mut Run<'_>, w: &Window, iters: u64, rtt_factor: f64) -> Result<(), PeerError> {
    let (t0, t1) = w.sample();
    let secs = (t1 - t0) as f64 / 1e9;
    let (avg, tps) = if iters == 0 || secs <= 0.0 {
        (0.0, 0.0)
    } else {
        (secs * 1e6 / rtt_factor / iters as f64, iters as f64 / secs)
    };
    let row = format!(
        " {:<7}       {}            {:<7.2}        {:<7.2}",
        r.t.size, iters, avg, tps
    );
    r.line(&row)
}

fn lat_row(r: &mut Run<'_>, tposted: &[u64], rtt_factor: f64) -> Result<(), PeerError> {
    let [min, max, typ, avg, sd, p99, p999] = lat_stats(tposted, rtt_factor);
    let row = format!(
        " {:<7} {}          {:<7.2}        {:<7.2}      {:<7.2}  \t       {:<7.2}     \t{:<7.2}\t\t{:<7.2} \t\t{:<7.2}",
        r.t.size, r.t.iters, min, max, typ, avg, sd, p99, p999
    );
    r.line(&row)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(v: &[&str]) -> Args {
        Args::try_parse_from(v).unwrap()
    }

    #[test]
    fn defaults_follow_perftest() {
        let t = Test::from_args("ib_write_bw", &args(&["ib_write_bw"])).unwrap();
        assert_eq!(
            (t.size, t.iters, t.tx_depth, t.cq_mod),
            (65536, 5000, 128, 1)
        );
        let t = Test::from_args("ib_write_bw", &args(&["x", "-n", "5", "-s", "64"])).unwrap();
        assert_eq!((t.tx_depth, t.cq_mod), (5, 5));
        let t = Test::from_args("ib_send_lat", &args(&["x"])).unwrap();
        assert_eq!((t.size, t.iters, t.tx_depth, t.rx_depth), (2, 1000, 1, 512));
        let t = Test::from_args("ib_read_bw", &args(&["x"])).unwrap();
        assert_eq!((t.iters, t.out_reads), (1000, 128));
        let t = Test::from_args("ib_atomic_bw", &args(&["x", "-A", "CMP_AND_SWAP"])).unwrap();
        assert!(t.cas && t.size == 8);
        let t = Test::from_args("ib_send_bw", &args(&["x", "-c", "UD", "-n", "7"])).unwrap();
        assert_eq!(t.rx_depth, 8);
    }

    #[test]
    fn refuses_what_perftest_refuses_and_what_we_lack() {
        for (tool, v, want) in [
            ("ib_write_bw", &["x", "-n", "4"][..], "between 5 and"),
            ("ib_atomic_bw", &["x", "-s", "16"], "Atomic"),
            ("ib_read_bw", &["x", "-c", "UD"], "UD connection"),
            ("ib_read_lat", &["x", "-c", "UC"], "UC connection"),
            ("ib_write_lat", &["x", "-b"], "Bidirectional"),
            ("ib_write_lat", &["x", "-q", "2"], "Multiple QPs"),
            ("ib_write_bw", &["x", "-q", "65"], "-q above 64"),
            ("ib_write_bw", &["x", "-A", "CMP_AND_SWAP"], "atomic"),
            ("ib_write_bw", &["x", "-o", "4"], "Outstanding"),
            (
                "ib_atomic_bw",
                &["x", "-a"],
                "Message size cannot be changed",
            ),
            ("ib_write_bw", &["x", "-a", "-D", "3"], "Duration mode"),
            (
                "ib_send_bw",
                &["x", "-D", "3", "-b"],
                "-D with -b on ib_send_bw",
            ),
        ] {
            let e = Test::from_args(tool, &args(v)).unwrap_err().to_string();
            assert!(e.contains(want), "{tool} {v:?}: {e}");
        }
        assert!(Args::try_parse_from(["x", "--odp"]).is_err());
        assert_eq!(parse_size("64K"), Ok(65536));
        assert!(parse_size("0").is_err());
    }

    #[test]
    fn all_sizes_run_2_to_2_pow_23_over_a_buffer_of_the_largest() {
        let t = Test::from_args("ib_write_bw", &args(&["x", "-a", "-s", "100"])).unwrap();
        assert_eq!(t.size, MAX_SIZE, "-s is ignored, the buffer is 8 MiB");
        let sizes = t.sizes(Mtu::Mtu1024);
        assert_eq!(sizes.len(), 23);
        assert_eq!((sizes[0], sizes[22]), (2, 1 << 23));
        assert!(sizes.windows(2).all(|w| w[1] == 2 * w[0]));
        let t = Test::from_args("ib_send_lat", &args(&["x", "-a", "-c", "UD"])).unwrap();
        assert_eq!(
            *t.sizes(Mtu::Mtu1024).last().unwrap(),
            1024,
            "UD stops at the MTU"
        );
        let t = Test::from_args("ib_read_lat", &args(&["x", "-s", "100"])).unwrap();
        assert_eq!(t.sizes(Mtu::Mtu1024), vec![100]);
    }

    #[test]
    fn duration_window_has_quarter_margins_in_whole_seconds() {
        const S: u64 = 1_000_000_000;
        let w = Window::new(5, 8);
        let at = |t: u64| w.phase(5 + t);
        assert_eq!(at(0), Phase::Warmup);
        assert_eq!(at(2 * S - 1), Phase::Warmup);
        assert_eq!(at(2 * S), Phase::Sample);
        assert_eq!(at(6 * S - 1), Phase::Sample);
        assert_eq!(at(6 * S), Phase::Cooldown);
        assert_eq!(at(8 * S), Phase::End);
        assert_eq!(w.sample(), (5 + 2 * S, 5 + 6 * S));
        // Below 4 s the margin is 0: all of it is sampled.
        let w = Window::new(0, 3);
        assert_eq!(w.phase(0), Phase::Sample);
        assert_eq!(w.phase(3 * S), Phase::End);
        let t = Test::from_args("ib_write_bw", &args(&["x", "-D", "5", "-n", "77"])).unwrap();
        assert_eq!(t.duration, Some(5));
        assert!(t.no_peak);
        let e = Test::from_args("ib_write_bw", &args(&["x", "-D", "0"])).unwrap_err();
        assert!(e.to_string().contains("Duration must be at least 1"), "{e}");
    }

    #[test]
    fn c_alt_hex_matches_printf() {
        assert_eq!(c_alt_hex(0, 4), "0000");
        assert_eq!(c_alt_hex(0x11, 6), "0x0011");
        assert_eq!(c_alt_hex(0x3f7c0b, 6), "0x3f7c0b");
        assert_eq!(c_alt_hex(0x7f00_0000_1000, 16), "0x007f0000001000");
    }

    #[test]
    fn latency_statistics() {
        // Gaps of 2, 4, 6, ... µs round trip, one way 1, 2, 3, ...
        let mut t = vec![0u64];
        for i in 1..=10u64 {
            t.push(t[t.len() - 1] + 2000 * i);
        }
        let [min, max, typ, avg, _, p99, _] = lat_stats(&t, 2.0);
        assert_eq!((min, max), (1.0, 9.0));
        assert_eq!(typ, 4.5);
        assert_eq!(avg, 4.5);
        assert_eq!(p99, 9.0);
    }
}
