//! `ibv_rc_pingpong`, `ibv_uc_pingpong` and `ibv_ud_pingpong` as the peer
//! runs them: the same options, the same 52-byte address records on TCP
//! port 18515, the same QP attributes (hop limit 1, RNR timer 12, ACK
//! timeout 14, retry and RNR retry 7, Q_Key 0x11111111), the same strict
//! ping-pong of `-n` messages each way, and the same result lines.
//!
//! Unlike the stock tools, the peer also checks the data: the stock tools
//! send from the buffer they receive into, so whatever the client sends
//! comes back in the next message. As client the peer sends a different
//! pattern in every message and checks that each reply carries the
//! message it answers; as server it echoes what it received. The pattern
//! keeps a zero at every 4 KiB page start, which is all the stock tools'
//! `-c` checks.

use std::{
    io::{Read, Write},
    net::TcpStream,
    time::{Duration, Instant},
};

use clap::Parser;
use transport::{
    engine::QpInit,
    verbs::{
        Access, AhAttr, QpAttr, QpCaps, QpState, QpType, RecvWr, SendOp, SendWr, Sge, UdDest,
        WcStatus,
    },
    wire::Mtu,
};

use super::{Node, PeerError, PeerOptions, oob, oob_accept, oob_connect, random_psn, verbs};
use crate::oob::PingpongDest;

/// The stock tools' Q_Key for UD.
const QKEY: u32 = 0x1111_1111;
/// The GRH space at the start of every UD receive buffer.
const GRH: u64 = 40;
const RECV_WRID: u64 = 1;
const SEND_WRID: u64 = 2;

/// The options the pingpong tools take (rdma-core's getopt strings);
/// options not listed here are refused by name.
#[derive(Debug, Parser)]
#[command(disable_help_flag = true, disable_version_flag = true)]
struct Args {
    /// TCP port of the handshake.
    #[arg(short = 'p', long = "port", default_value_t = 18515)]
    port: u16,
    /// IB device name (the peer has one device; any name is accepted).
    #[arg(short = 'd', long = "ib-dev")]
    _ib_dev: Option<String>,
    /// Port of the device (only 1 exists).
    #[arg(short = 'i', long = "ib-port", default_value_t = 1)]
    ib_port: u8,
    /// Message size (default 4096; 2048 for UD).
    #[arg(short = 's', long = "size")]
    size: Option<u32>,
    /// Path MTU (RC and UC).
    #[arg(short = 'm', long = "mtu")]
    mtu: Option<usize>,
    /// Receives posted at a time.
    #[arg(short = 'r', long = "rx-depth", default_value_t = 500)]
    rx_depth: u32,
    /// Exchanges.
    #[arg(short = 'n', long = "iters", default_value_t = 1000)]
    iters: u32,
    /// Service level (no effect on RoCE).
    #[arg(short = 'l', long = "sl", default_value_t = 0)]
    _sl: u8,
    /// Wait for completion events instead of polling.
    #[arg(short = 'e', long = "events")]
    events: bool,
    /// Local GID index.
    #[arg(short = 'g', long = "gid-idx")]
    gid_idx: Option<u8>,
    /// Validate the received buffer (page starts are zero).
    #[arg(short = 'c', long = "chk")]
    chk: bool,
    /// The server to connect to; none: be the server.
    servername: Option<String>,
}

/// The pattern byte `j` of message `k`: zero at every page start.
fn pattern(k: u32, j: usize, ud: bool) -> u8 {
    if j.is_multiple_of(4096) || (ud && (j + GRH as usize).is_multiple_of(4096)) {
        0
    } else {
        ((k as u8).wrapping_mul(31))
            .wrapping_add((j as u8).wrapping_mul(7))
            .wrapping_add(1)
            ^ 0x5a
    }
}

struct Pp {
    node: Node,
    qp_type: QpType,
    qp: u32,
    key: u32,
    size: u32,
    /// Start of the send buffer's payload.
    send_at: u64,
    /// Start of the receive buffer (for UD, the GRH comes first).
    recv_at: u64,
    ud: Option<UdDest>,
}

impl Pp {
    fn post_recvs(&mut self, n: u32) -> Result<u32, PeerError> {
        let len = u64::from(self.size) + if self.qp_type == QpType::Ud { GRH } else { 0 };
        let sge = [Sge {
            addr: self.recv_at,
            length: len as u32,
            lkey: self.key,
        }];
        for i in 0..n {
            let wr = RecvWr {
                wr_id: RECV_WRID,
                sges: &sge,
            };
            if self.node.engine.post_recv(self.qp, &wr).is_err() {
                return Ok(i);
            }
        }
        Ok(n)
    }

    fn post_send(&mut self) -> Result<(), PeerError> {
        let sge = [Sge {
            addr: self.send_at,
            length: self.size,
            lkey: self.key,
        }];
        let mut wr = SendWr::new(SEND_WRID, SendOp::Send, &sge);
        wr.ud = self.ud;
        self.node
            .engine
            .post_send(self.qp, &wr)
            .map_err(verbs("Couldn't post send"))
    }

    fn fill(&mut self, k: u32) {
        let ud = self.qp_type == QpType::Ud;
        let at = self.send_at as usize;
        let buf = &mut self.node.engine.memory_mut().as_mut_slice()[at..at + self.size as usize];
        for (j, b) in buf.iter_mut().enumerate() {
            *b = pattern(k, j, ud);
        }
    }

    /// The payload of the last message received.
    fn received(&self) -> &[u8] {
        let off = if self.qp_type == QpType::Ud { GRH } else { 0 };
        let at = (self.recv_at + off) as usize;
        &self.node.engine.memory().as_slice()[at..at + self.size as usize]
    }

    /// Copies the last message received into the send buffer.
    fn echo(&mut self) {
        let off = if self.qp_type == QpType::Ud { GRH } else { 0 };
        let from = (self.recv_at + off) as usize;
        let to = self.send_at as usize;
        let n = self.size as usize;
        self.node
            .engine
            .memory_mut()
            .as_mut_slice()
            .copy_within(from..from + n, to);
    }
}

/// Runs one pingpong tool (`tool` is its name) with its arguments.
pub fn run(
    opts: &PeerOptions,
    tool: &str,
    args: &[String],
    out: &mut dyn Write,
) -> Result<(), PeerError> {
    let a = Args::try_parse_from(std::iter::once(tool.to_string()).chain(args.iter().cloned()))
        .map_err(|e| PeerError::Config(super::usage_error(&e)))?;
    let qp_type = match tool {
        "ibv_rc_pingpong" => QpType::Rc,
        "ibv_uc_pingpong" => QpType::Uc,
        _ => QpType::Ud,
    };
    let ud = qp_type == QpType::Ud;
    if ud && a.mtu.is_some() {
        return Err(PeerError::Config(
            "ibv_ud_pingpong has no -m: UD messages use the port MTU".into(),
        ));
    }
    if a.ib_port != 1 {
        return Err(PeerError::Config(format!(
            "-i {}: the device has one port, 1",
            a.ib_port
        )));
    }
    if a.iters == 0 || a.rx_depth < 2 {
        return Err(PeerError::Config(
            "-n must be at least 1 and -r at least 2".into(),
        ));
    }
    let size = a.size.unwrap_or(if ud { 2048 } else { 4096 });
    if size == 0 || size > 1 << 30 {
        return Err(PeerError::Config(format!("-s {size}: use 1 to 2^30 bytes")));
    }
    let path_mtu = match a.mtu {
        None => Mtu::Mtu1024,
        Some(m) => Mtu::from_bytes(m)
            .map_err(|_| PeerError::Config(format!("-m {m}: use 256, 512, 1024, 2048 or 4096")))?,
    };
    let region = (u64::from(size) + GRH).next_multiple_of(4096);
    let mut node = Node::new(opts, 2 * region as usize)?;
    let active = node.active_mtu();
    if ud && size as usize > active.bytes() {
        return Err(PeerError::Config(format!(
            "Requested size larger than port MTU ({})",
            active.bytes()
        )));
    }
    // rxe accepts a path MTU above the port's active MTU and then sends
    // frames the interface cannot carry; the peer lowers it instead.
    let path_mtu = if path_mtu > active {
        eprintln!(
            "note: path MTU {} lowered to the port's active MTU {}",
            path_mtu.bytes(),
            active.bytes()
        );
        active
    } else {
        path_mtu
    };
    node.engine.memory_mut().as_mut_slice().fill(0x7b);

    let e = &mut node.engine;
    let pd = e.alloc_pd().map_err(verbs("Couldn't allocate PD"))?;
    let key = e
        .reg_mr(pd, 0, 2 * region, 0, Access::LOCAL_WRITE)
        .map_err(verbs("Couldn't register MR"))?;
    let cq = e
        .create_cq(a.rx_depth + 1)
        .map_err(verbs("Couldn't create CQ"))?;
    let qp = e
        .create_qp(&QpInit {
            qp_type,
            pd,
            send_cq: cq,
            recv_cq: cq,
            caps: QpCaps {
                max_send_wr: 1,
                max_recv_wr: a.rx_depth,
                max_send_sge: 1,
                max_recv_sge: 1,
                max_inline_data: 0,
            },
            sq_sig_all: false,
            srq: None,
        })
        .map_err(verbs("Couldn't create QP"))?;
    let init = QpAttr {
        state: Some(QpState::Init),
        pkey_index: Some(0),
        access: (!ud).then_some(Access(0)),
        qkey: ud.then_some(QKEY),
        ..Default::default()
    };
    e.modify_qp(qp, &init, 0)
        .map_err(verbs("Failed to modify QP to INIT"))?;
    let my_psn = random_psn();
    if ud {
        super::ready_ud(e, qp, my_psn)?;
    }
    let mut pp = Pp {
        node,
        qp_type,
        qp,
        key,
        size,
        send_at: if ud { GRH } else { 0 },
        recv_at: region,
        ud: None,
    };
    let mut routs = pp.post_recvs(a.rx_depth)?;
    if routs < a.rx_depth {
        return Err(PeerError::Config(format!(
            "Couldn't post receive ({routs})"
        )));
    }
    if a.events {
        pp.node
            .engine
            .req_notify_cq(cq, false)
            .map_err(verbs("Couldn't request CQ notification"))?;
    }

    let me = PingpongDest {
        lid: 0,
        qpn: qp,
        psn: my_psn,
        gid: pp.node.gid(a.gid_idx)?,
    };
    let w = |out: &mut dyn Write, s: String| writeln!(out, "{s}").map_err(PeerError::Output);
    w(out, address_line("local address: ", &me))?;

    let connect = |pp: &mut Pp, rem: &PingpongDest| -> Result<(), PeerError> {
        if rem.gid.0 == [0; 16] {
            return Err(PeerError::Config(
                "the other side sent no GID: RoCE needs one, so pass -g on both sides \
                 (index 1 is the IPv4 address on kernel rxe)"
                    .into(),
            ));
        }
        let ah = AhAttr {
            dgid: rem.gid,
            sgid_index: a.gid_idx.unwrap_or(0),
            hop_limit: 1,
            ..Default::default()
        };
        connect_qp(pp, rem, ah, my_psn, path_mtu)
    };

    let rem = match &a.servername {
        Some(server) => {
            let timeout = opts.connect_timeout;
            let port = a.port;
            let watch = pp.node.watch();
            let rec = pp.node.while_blocked(|| -> Result<_, PeerError> {
                let mut s = oob_connect(server, port, timeout)?;
                s.write_all(&me.to_wire())
                    .map_err(oob("Couldn't send local address"))?;
                let mut rec = [0u8; PingpongDest::LEN];
                watch
                    .read_exact(&mut s, &mut rec)
                    .map_err(oob("Couldn't read remote address"))?;
                s.write_all(b"done\0").map_err(oob("Couldn't write done"))?;
                Ok(rec)
            })??;
            let rem = PingpongDest::parse(&rec)?;
            connect(&mut pp, &rem)?;
            rem
        }
        None => {
            let port = a.port;
            let watch = pp.node.watch();
            let (mut s, rec) = pp.node.while_blocked(|| -> Result<_, PeerError> {
                let mut s = oob_accept(port)?;
                let mut rec = [0u8; PingpongDest::LEN];
                watch
                    .read_exact(&mut s, &mut rec)
                    .map_err(oob("Couldn't read remote address"))?;
                Ok((s, rec))
            })??;
            let rem = PingpongDest::parse(&rec)?;
            connect(&mut pp, &rem)?;
            pp.node.while_blocked(|| -> Result<_, PeerError> {
                s.write_all(&me.to_wire())
                    .map_err(oob("Couldn't send local address"))?;
                read_done(&mut s)
            })??;
            rem
        }
    };
    w(out, address_line("remote address:", &rem))?;

    let client = a.servername.is_some();
    let mut pending = RECV_WRID;
    let mut sent_k = 0u32;
    if client {
        pp.fill(0);
        pp.post_send()?;
        pending |= SEND_WRID;
    }
    let start = Instant::now();
    let (mut rcnt, mut scnt) = (0u32, 0u32);
    let mut wcs = [super::blank_wc(); 2];
    let mut last = Instant::now();
    while rcnt < a.iters || scnt < a.iters {
        if a.events {
            if pp.node.engine.poll_notification().is_none() {
                wait_step(&mut pp, &mut last, opts.stall_timeout)?;
                continue;
            }
            pp.node
                .engine
                .req_notify_cq(cq, false)
                .map_err(verbs("Couldn't request CQ notification"))?;
        }
        let n = pp
            .node
            .engine
            .poll_cq(cq, &mut wcs)
            .map_err(verbs("poll CQ failed"))?;
        if n == 0 {
            if !a.events {
                wait_step(&mut pp, &mut last, opts.stall_timeout)?;
            }
            continue;
        }
        last = Instant::now();
        for wc in &wcs[..n] {
            if wc.status != WcStatus::Success {
                return Err(PeerError::Completion {
                    status: wc.status,
                    wr_id: wc.wr_id,
                });
            }
            match wc.wr_id {
                SEND_WRID => scnt += 1,
                RECV_WRID => {
                    routs -= 1;
                    if routs <= 1 {
                        routs += pp.post_recvs(a.rx_depth - routs)?;
                        if routs < a.rx_depth {
                            return Err(PeerError::Config(format!(
                                "Couldn't post receive ({routs})"
                            )));
                        }
                    }
                    rcnt += 1;
                    check_received(&pp, client, sent_k, rcnt, a.chk)?;
                    if !client {
                        // Echo, as the stock tools do by sending from the
                        // buffer they receive into.
                        pp.echo();
                    }
                }
                other => {
                    return Err(PeerError::Data(format!(
                        "Completion for unknown wr_id {other}"
                    )));
                }
            }
            pending &= !wc.wr_id;
            if scnt < a.iters && pending == 0 {
                if client {
                    sent_k += 1;
                    pp.fill(sent_k);
                }
                pp.post_send()?;
                pending = RECV_WRID | SEND_WRID;
            }
        }
    }
    let usec = start.elapsed().as_secs_f64() * 1e6;
    // The last ACK must reach the other side before the QP goes away.
    pp.node
        .linger(Duration::from_millis(300), Duration::from_secs(3))?;
    let bytes = u64::from(size) * u64::from(a.iters) * 2;
    w(
        out,
        format!(
            "{bytes} bytes in {:.2} seconds = {:.2} Mbit/sec",
            usec / 1e6,
            bytes as f64 * 8.0 / usec
        ),
    )?;
    w(
        out,
        format!(
            "{} iters in {:.2} seconds = {:.2} usec/iter",
            a.iters,
            usec / 1e6,
            usec / f64::from(a.iters)
        ),
    )?;
    Ok(())
}

/// One step of waiting for completions, failing after `stall` without one.
fn wait_step(pp: &mut Pp, last: &mut Instant, stall: Duration) -> Result<(), PeerError> {
    if last.elapsed() > stall {
        return Err(PeerError::Stalled(stall));
    }
    pp.node.progress(Duration::from_millis(50))
}

/// Checks a received message: as client it must be the echo of the
/// message just sent; with `-c` the page starts must be zero.
fn check_received(
    pp: &Pp,
    client: bool,
    sent_k: u32,
    rcnt: u32,
    chk: bool,
) -> Result<(), PeerError> {
    let data = pp.received();
    let ud = pp.qp_type == QpType::Ud;
    if client && let Some(j) = (0..data.len()).find(|&j| data[j] != pattern(sent_k, j, ud)) {
        return Err(PeerError::Data(format!(
            "reply {rcnt}: byte {j} is {:#04x}, the message sent had {:#04x}",
            data[j],
            pattern(sent_k, j, ud)
        )));
    }
    if chk && let Some(j) = (0..data.len()).step_by(4096).find(|&j| data[j] != 0) {
        return Err(PeerError::Data(format!(
            "message {rcnt}: byte {j} (a page start) is {:#04x}, not 0",
            data[j]
        )));
    }
    Ok(())
}

/// RESET..INIT happened at setup; this moves an RC or UC QP to RTR and RTS
/// toward `rem` as the stock tools do, or for UD makes the destination.
fn connect_qp(
    pp: &mut Pp,
    rem: &PingpongDest,
    ah: AhAttr,
    my_psn: u32,
    path_mtu: Mtu,
) -> Result<(), PeerError> {
    if pp.qp_type == QpType::Ud {
        pp.ud = Some(UdDest {
            ah,
            remote_qpn: rem.qpn,
            remote_qkey: QKEY,
        });
        return Ok(());
    }
    let path = super::Path {
        mtu: path_mtu,
        dest_qpn: rem.qpn,
        rq_psn: rem.psn,
        sq_psn: my_psn,
        ah,
        max_dest_rd_atomic: 1,
        max_rd_atomic: 1,
        min_rnr_timer: 12,
        timeout: 14,
        retry: 7,
    };
    super::connect_qp(&mut pp.node.engine, pp.qp, pp.qp_type == QpType::Rc, &path)
}

/// The server's last handshake step: the client's "done".
fn read_done(s: &mut TcpStream) -> Result<(), PeerError> {
    let mut done = [0u8; PingpongDest::LEN];
    let n = s
        .read(&mut done)
        .map_err(oob("Couldn't send/recv local address"))?;
    if n == 0 {
        return Err(PeerError::Oob {
            what: "Couldn't send/recv local address".into(),
            source: std::io::ErrorKind::UnexpectedEof.into(),
        });
    }
    Ok(())
}

/// The tools' address line, e.g. `  local address:  LID 0x0000, QPN
/// 0x000011, PSN 0x3f7c0b, GID ::ffff:10.77.0.1`.
fn address_line(label: &str, d: &PingpongDest) -> String {
    format!(
        "  {label} LID 0x{:04x}, QPN 0x{:06x}, PSN 0x{:06x}, GID {}",
        d.lid,
        d.qpn,
        d.psn,
        std::net::Ipv6Addr::from(d.gid.0)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pattern_keeps_page_starts_zero() {
        for k in [0, 1, 77] {
            assert_eq!(pattern(k, 0, false), 0);
            assert_eq!(pattern(k, 4096, false), 0);
            assert_eq!(pattern(k, 4056, true), 0);
        }
        assert_ne!(
            (1..64).map(|j| pattern(1, j, false)).collect::<Vec<_>>(),
            (1..64).map(|j| pattern(2, j, false)).collect::<Vec<_>>()
        );
    }

    #[test]
    fn address_line_matches_the_tools() {
        let d = PingpongDest {
            lid: 0,
            qpn: 0x11,
            psn: 0x3f7c0b,
            gid: transport::device::Gid::from_ip("10.77.0.1".parse().unwrap()),
        };
        assert_eq!(
            address_line("local address: ", &d),
            "  local address:  LID 0x0000, QPN 0x000011, PSN 0x3f7c0b, GID ::ffff:10.77.0.1"
        );
    }

    #[test]
    fn unknown_options_are_named() {
        let e = Args::try_parse_from(["ibv_rc_pingpong", "-o"]).unwrap_err();
        assert!(e.to_string().contains("'-o'"), "{e}");
        let a =
            Args::try_parse_from(["ibv_rc_pingpong", "-g", "1", "-n", "5", "10.0.0.1"]).unwrap();
        assert_eq!((a.gid_idx, a.iters), (Some(1), 5));
        assert_eq!(a.servername.as_deref(), Some("10.0.0.1"));
    }
}
