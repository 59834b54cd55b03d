//! `rping` (rdma-core's rdma_cm example) as the peer runs it: the
//! connection through the CM ([`super::cm`]) on the rdma_cm TCP port
//! space, then rping's own exchange, one round per ping:
//!
//! 1. the client fills its start buffer with `rdma-ping-N: ` and a
//!    rotating run of the characters `A`..`z`, and SENDs its address, rkey
//!    and size (16 bytes, big-endian);
//! 2. the server RDMA READs that buffer and SENDs a go-ahead;
//! 3. the client SENDs the address of its second buffer;
//! 4. the server RDMA WRITEs what it read there (the string and its NUL)
//!    and SENDs a go-ahead;
//! 5. the client checks (with `-V`) that the second buffer equals the
//!    first, and prints it with `-v`.
//!
//! After `-C` rounds the client disconnects (DREQ); the server ends on the
//! DREQ. Options: `-s`, `-c`, `-a`, `-p`, `-C`, `-S`, `-v`, `-V`, `-d`.

use std::{
    io::Write,
    net::IpAddr,
    time::{Duration, Instant},
};

use clap::Parser;
use transport::{
    engine::QpInit,
    verbs::{
        Access, QpAttr, QpCaps, QpState, QpType, RecvWr, SendOp, SendWr, Sge, Wc, WcOpcode,
        WcStatus,
    },
};

use super::{
    Node, PeerError, PeerOptions,
    cm::{GSI_MEM, Gsi, RcParams},
    random_psn, verbs,
};

/// rping's default port.
const PORT: u16 = 7174;
/// The largest buffer rping allows (its RPING_BUFSIZE is 64 KiB).
const MAX_SIZE: u32 = 64 * 1024 - 1;
/// The smallest: room for "rdma-ping-2147483647: " and a NUL.
const MIN_SIZE: u32 = 24;

#[derive(Debug, Parser)]
#[command(disable_help_flag = true, disable_version_flag = true)]
struct Args {
    /// Server.
    #[arg(short = 's')]
    server: bool,
    /// Client.
    #[arg(short = 'c')]
    client: bool,
    /// Address: the server's (client) or the one to bind (server).
    #[arg(short = 'a')]
    addr: Option<IpAddr>,
    /// Port.
    #[arg(short = 'p', default_value_t = PORT)]
    port: u16,
    /// Pings (0: forever).
    #[arg(short = 'C', default_value_t = 0)]
    count: u32,
    /// Buffer size.
    #[arg(short = 'S', default_value_t = 64, value_parser = clap::value_parser!(u32).range(i64::from(MIN_SIZE)..=i64::from(MAX_SIZE)))]
    size: u32,
    /// Print the ping data.
    #[arg(short = 'v')]
    verbose: bool,
    /// Validate the ping data.
    #[arg(short = 'V')]
    validate: bool,
    /// Debug output (accepted; the peer prints its progress on stderr).
    #[arg(short = 'd')]
    debug: bool,
    /// Persistent server (not supported by the peer).
    #[arg(short = 'P')]
    persistent: bool,
}

/// The buffers, at fixed offsets of the node memory after QP1's area.
struct Layout {
    recv: u64,
    send: u64,
    rdma: u64,
    start: u64,
    end: u64,
}

fn layout(size: u32) -> Layout {
    let recv = GSI_MEM;
    let send = recv + 64;
    let rdma = send + 64;
    let start = (rdma + u64::from(size)).next_multiple_of(64);
    Layout {
        recv,
        send,
        rdma,
        start,
        end: (start + u64::from(size)).next_multiple_of(64),
    }
}

/// The client's start buffer for ping `ping`, whose pattern begins at
/// `first` (which moves on by one per ping, `A`..`z`).
fn ping_text(ping: u32, first: u8, size: usize) -> Vec<u8> {
    let mut b = format!("rdma-ping-{ping}: ").into_bytes();
    b.truncate(size - 1);
    let mut c = first;
    while b.len() < size {
        b.push(c);
        c = if c >= b'z' { b'A' } else { c + 1 };
    }
    b[size - 1] = 0;
    b
}

struct Rping {
    node: Node,
    gsi: Gsi,
    qp: u32,
    cq: u32,
    key: u32,
    l: Layout,
    wcs: [Wc; 4],
    stall: Duration,
}

impl Rping {
    fn post_recv(&mut self) -> Result<(), PeerError> {
        let sge = [Sge {
            addr: self.l.recv,
            length: 16,
            lkey: self.key,
        }];
        self.node
            .engine
            .post_recv(
                self.qp,
                &RecvWr {
                    wr_id: 1,
                    sges: &sge,
                },
            )
            .map_err(verbs("Couldn't post receive"))
    }

    /// SENDs the 16-byte address record of `buf` (or whatever the send
    /// buffer holds, for a go-ahead).
    fn send_info(&mut self, buf: Option<(u64, u32)>) -> Result<(), PeerError> {
        if let Some((addr, len)) = buf {
            let mut rec = [0u8; 16];
            rec[..8].copy_from_slice(&addr.to_be_bytes());
            rec[8..12].copy_from_slice(&self.key.to_be_bytes());
            rec[12..].copy_from_slice(&len.to_be_bytes());
            let at = self.l.send as usize;
            self.node.engine.memory_mut().as_mut_slice()[at..at + 16].copy_from_slice(&rec);
        }
        let sge = [Sge {
            addr: self.l.send,
            length: 16,
            lkey: self.key,
        }];
        self.node
            .engine
            .post_send(self.qp, &SendWr::new(2, SendOp::Send, &sge))
            .map_err(verbs("post send error"))
    }

    /// Waits for the next completion of `opcode`; `None` if the other side
    /// disconnected first (answering its DREQ).
    fn wait(&mut self, opcode: WcOpcode, conn: &super::cm::Conn) -> Result<Option<Wc>, PeerError> {
        let mut last = Instant::now();
        loop {
            let n = self
                .node
                .engine
                .poll_cq(self.cq, &mut self.wcs[..1])
                .map_err(verbs("poll CQ failed"))?;
            if n == 1 {
                let w = self.wcs[0];
                if w.status != WcStatus::Success {
                    return Err(PeerError::Completion {
                        status: w.status,
                        wr_id: w.wr_id,
                    });
                }
                if w.opcode == opcode {
                    return Ok(Some(w));
                }
                last = Instant::now();
                continue;
            }
            if self.gsi.poll_dreq(&mut self.node, conn)? {
                return Ok(None);
            }
            if last.elapsed() > self.stall {
                return Err(PeerError::Stalled(self.stall));
            }
            self.node.progress(Duration::from_millis(20))?;
        }
    }

    /// The address record the other side sent last.
    fn remote_info(&self) -> (u64, u32, u32) {
        let at = self.l.recv as usize;
        let b = &self.node.engine.memory().as_slice()[at..at + 16];
        (
            u64::from_be_bytes(b[..8].try_into().expect("8 bytes")),
            u32::from_be_bytes(b[8..12].try_into().expect("4 bytes")),
            u32::from_be_bytes(b[12..16].try_into().expect("4 bytes")),
        )
    }

    fn rdma(&mut self, op: SendOp, remote: (u64, u32), len: u32) -> Result<(), PeerError> {
        let sge = [Sge {
            addr: self.l.rdma,
            length: len,
            lkey: self.key,
        }];
        let wr = SendWr::new(3, op, &sge).remote(remote.0, remote.1);
        self.node
            .engine
            .post_send(self.qp, &wr)
            .map_err(verbs("post send error"))
    }

    fn text_at(&self, at: u64, len: u32) -> String {
        let a = at as usize;
        let b = &self.node.engine.memory().as_slice()[a..a + len as usize];
        let end = b.iter().position(|&c| c == 0).unwrap_or(b.len());
        String::from_utf8_lossy(&b[..end]).into_owned()
    }
}

/// Runs rping with its arguments.
pub fn run(opts: &PeerOptions, args: &[String], out: &mut dyn Write) -> Result<(), PeerError> {
    let a = Args::try_parse_from(std::iter::once("rping".to_string()).chain(args.iter().cloned()))
        .map_err(|e| PeerError::Config(super::usage_error(&e)))?;
    if a.server == a.client {
        return Err(PeerError::Config(
            "give exactly one of -s (server) and -c (client)".into(),
        ));
    }
    if a.persistent {
        return Err(PeerError::Config(
            "-P (persistent server) is not supported by the peer".into(),
        ));
    }
    if a.client && a.addr.is_none() {
        return Err(PeerError::Config(
            "-c needs -a with the server's address".into(),
        ));
    }
    // A server takes whatever size the client announces, up to rping's
    // largest.
    let l = layout(if a.server { MAX_SIZE } else { a.size });
    let mut node = Node::new(opts, l.end as usize)?;
    // Our address: the -a of a server, else the first --ip of the
    // server's family.
    let want_v4 = a.addr.is_none_or(|x| x.is_ipv4());
    let me = match (a.server, a.addr) {
        (true, Some(x)) => x,
        _ => opts
            .ips
            .iter()
            .map(|p| p.addr)
            .find(|x| x.is_ipv4() == want_v4)
            .ok_or_else(|| PeerError::Config("no --ip of the server's IP version".into()))?,
    };
    let sgid_index = (0..64u8)
        .find(|&i| {
            node.engine
                .gids()
                .get(usize::from(i))
                .is_some_and(|g| g.to_ip() == me)
        })
        .ok_or_else(|| PeerError::Config(format!("{me} is not one of our addresses (--ip)")))?;
    let ca_guid = super::cm::ca_guid(opts);

    let e = &mut node.engine;
    let pd = e.alloc_pd().map_err(verbs("Couldn't allocate PD"))?;
    let gsi_key = e
        .reg_mr(pd, 0, GSI_MEM, 0, Access::LOCAL_WRITE)
        .map_err(verbs("Couldn't register MR"))?;
    let data = l.end - l.recv;
    let key = e
        .reg_mr(
            pd,
            l.recv,
            data,
            l.recv,
            Access::LOCAL_WRITE
                .with(Access::REMOTE_READ)
                .with(Access::REMOTE_WRITE),
        )
        .map_err(verbs("Couldn't register MR"))?;
    let cq = e.create_cq(32).map_err(verbs("Couldn't create CQ"))?;
    let qp = e
        .create_qp(&QpInit {
            qp_type: QpType::Rc,
            pd,
            send_cq: cq,
            recv_cq: cq,
            caps: QpCaps {
                max_send_wr: 16,
                max_recv_wr: 2,
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
        access: Some(Access::REMOTE_READ.with(Access::REMOTE_WRITE)),
        ..Default::default()
    };
    e.modify_qp(qp, &init, 0)
        .map_err(verbs("Failed to modify QP to INIT"))?;
    let gsi = Gsi::new(&mut node, pd, gsi_key, 0, sgid_index)?;
    let params = RcParams {
        qp,
        psn: random_psn(),
        mtu: node.active_mtu(),
        responder_resources: 1,
        initiator_depth: 1,
        sgid_index,
        ca_guid,
    };
    let mut r = Rping {
        node,
        gsi,
        qp,
        cq,
        key,
        l,
        wcs: [super::blank_wc(); 4],
        stall: opts.stall_timeout,
    };
    r.post_recv()?;
    let w = |out: &mut dyn Write, s: String| writeln!(out, "{s}").map_err(PeerError::Output);
    if a.client {
        let dst = a.addr.expect("checked");
        // Like the tools' TCP handshake, retry while the server is not
        // listening yet, for --connect-timeout.
        let until = Instant::now() + opts.connect_timeout;
        let conn = r
            .gsi
            .connect_retrying(&mut r.node, &params, (me, dst, a.port), until)?;
        if a.debug {
            eprintln!("connected to {dst}:{} (QP {:#x})", a.port, conn.remote_qpn);
        }
        let mut first = b'A';
        let mut ping = 0u32;
        while a.count == 0 || ping < a.count {
            let text = ping_text(ping, first, a.size as usize);
            first = if first >= b'z' { b'A' } else { first + 1 };
            let at = r.l.start as usize;
            r.node.engine.memory_mut().as_mut_slice()[at..at + text.len()].copy_from_slice(&text);
            r.node.engine.memory_mut().as_mut_slice()
                [r.l.rdma as usize..r.l.rdma as usize + text.len()]
                .fill(0);
            r.send_info(Some((r.l.start, a.size)))?;
            if r.wait(WcOpcode::Recv, &conn)?.is_none() {
                return Err(PeerError::Config("the server disconnected".into()));
            }
            r.post_recv()?;
            r.send_info(Some((r.l.rdma, a.size)))?;
            if r.wait(WcOpcode::Recv, &conn)?.is_none() {
                return Err(PeerError::Config("the server disconnected".into()));
            }
            r.post_recv()?;
            let got = r.text_at(r.l.rdma, a.size);
            let sent = r.text_at(r.l.start, a.size);
            if got != sent {
                // rping checks only with -V; the peer always does.
                return Err(PeerError::Data(format!(
                    "ping {ping}: the server wrote back `{got}`, the client sent `{sent}`"
                )));
            }
            if a.verbose {
                w(out, format!("ping data: {got}"))?;
            }
            ping += 1;
        }
        r.gsi.disconnect(&mut r.node, &conn)?;
        let _ = a.validate;
        r.node
            .linger(Duration::from_millis(200), Duration::from_secs(2))
    } else {
        let (conn, _tid, rep) = r.gsi.accept(
            &mut r.node,
            &params,
            a.port,
            r.stall.max(Duration::from_secs(600)),
        )?;
        let cq = r.cq;
        let mut pending: Option<Wc> = None;
        r.gsi.established(&mut r.node, &conn, &rep, |node| {
            let mut one = [super::blank_wc()];
            if pending.is_none() && node.engine.poll_cq(cq, &mut one).unwrap_or(0) == 1 {
                pending = Some(one[0]);
            }
            pending.is_some()
        })?;
        if a.debug {
            eprintln!("accepted QP {:#x}", conn.remote_qpn);
        }
        let mut pings = 0u32;
        loop {
            // The client's start buffer address.
            let got = match pending.take() {
                Some(w) if w.opcode == WcOpcode::Recv && w.status == WcStatus::Success => Some(w),
                Some(w) if w.status != WcStatus::Success => {
                    return Err(PeerError::Completion {
                        status: w.status,
                        wr_id: w.wr_id,
                    });
                }
                _ => r.wait(WcOpcode::Recv, &conn)?,
            };
            if got.is_none() {
                break;
            }
            r.post_recv()?;
            let (addr, rkey, len) = r.remote_info();
            if len == 0 || len > MAX_SIZE {
                return Err(PeerError::Data(format!(
                    "the client announced a {len}-byte buffer; rping allows 1 to {MAX_SIZE}"
                )));
            }
            r.rdma(SendOp::Read, (addr, rkey), len)?;
            if r.wait(WcOpcode::RdmaRead, &conn)?.is_none() {
                break;
            }
            let text = r.text_at(r.l.rdma, len);
            if a.verbose {
                w(out, format!("server ping data: {text}"))?;
            }
            r.send_info(None)?;
            if r.wait(WcOpcode::Recv, &conn)?.is_none() {
                break;
            }
            r.post_recv()?;
            let (addr, rkey, _) = r.remote_info();
            let wlen = (text.len() as u32 + 1).min(len);
            r.rdma(SendOp::Write, (addr, rkey), wlen)?;
            if r.wait(WcOpcode::RdmaWrite, &conn)?.is_none() {
                break;
            }
            r.send_info(None)?;
            pings += 1;
        }
        if a.debug {
            eprintln!("{pings} pings served; the client disconnected");
        }
        r.node
            .linger(Duration::from_millis(200), Duration::from_secs(2))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ping_text_rotates_like_rping() {
        let t = ping_text(0, b'A', 64);
        assert_eq!(&t[..14], b"rdma-ping-0: A");
        assert_eq!(t.len(), 64);
        assert_eq!(t[63], 0);
        // "rdma-ping-0: " is 13 bytes; the run starts there.
        assert_eq!(t[13 + 25], b'Z');
        assert_eq!(t[13 + 26], b'[');
        let t = ping_text(7, b'z', 30);
        assert_eq!(&t[..15], b"rdma-ping-7: zA");
    }
}
