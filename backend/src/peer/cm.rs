//! The connection manager the peer's rdma_cm tools need: QP1 (GSI) on the
//! engine, and the CM exchanges of an RC connection as rdma_cm runs them
//! over RoCE (REQ, REP, RTU to connect; DREQ, DREP to disconnect; a REJ
//! received ends the attempt with an error). MADs are retransmitted every
//! second until answered, up to [`RETRIES`] times.
//!
//! The active side sends a REQ naming the service (the rdma_cm TCP port
//! space and the port) with the rdma_cm header (addresses and source
//! port) in its private data; the passive side answers the REQ for its
//! port with a REP and moves its QP to RTS; the RTU (or the first data
//! packet) completes it. Several connections can be set up one after the
//! other on one port (a REQ that comes early waits for its turn).
//!
//! A UD QP is resolved with SIDR instead (the rdma_cm UDP port space):
//! a SIDR_REQ with the same rdma_cm header, answered by a SIDR_REP that
//! names the QP and its Q_Key.

use std::{
    collections::VecDeque,
    net::IpAddr,
    time::{Duration, Instant},
};

use transport::{
    device::Gid,
    engine::{GSI_QPN, QpInit},
    verbs::{
        AhAttr, QpAttr, QpCaps, QpState, QpType, RecvWr, SendOp, SendWr, Sge, UdDest, Wc, WcOpcode,
        WcStatus,
    },
    wire::{
        GSI_QKEY, Mtu,
        cm::{
            CmAttr, CmaHeader, IdsRepr, MAD_LEN, MadHeader, RDMA_PS_TCP, RDMA_PS_UDP, RepRepr,
            ReqRepr, SIDR_SUCCESS, SIDR_UNSUPPORTED, SidrRepRepr, SidrReqRepr,
        },
    },
};

use super::{Node, PeerError, verbs};

/// How often an unanswered MAD is sent again.
pub const RETRIES: u32 = 15;
const RESEND: Duration = Duration::from_secs(1);
/// Receive slots on QP1 (GRH + MAD each).
const SLOTS: u64 = 16;
const SLOT: u64 = 512;
/// Bytes of node memory QP1 needs at its base.
pub const GSI_MEM: u64 = (SLOTS + 2) * SLOT;

/// QP1 and the MADs moving through it.
pub struct Gsi {
    qp: u32,
    cq: u32,
    key: u32,
    base: u64,
    sgid_index: u8,
    tid: u64,
    wcs: [Wc; 8],
    /// REQs that arrived while another connection was being set up, for
    /// the next [`Gsi::accept`].
    pending: VecDeque<(Gid, [u8; MAD_LEN])>,
    /// The connections accepted so far (the REQ's sender and comm ID)
    /// and our REP to each, so that a repeated REQ gets the same REP
    /// instead of a second connection.
    accepted: Vec<(Gid, u32, [u8; MAD_LEN])>,
    /// The same for SIDR: the asker, its request ID and our SIDR_REP.
    resolved: Vec<(Gid, u32, [u8; MAD_LEN])>,
}

/// An established RC connection's parameters.
#[derive(Debug, Clone, Copy, Default)]
pub struct Conn {
    /// The other side's QP.
    pub remote_qpn: u32,
    /// The other side's GID.
    pub remote_gid: Gid,
    local_comm_id: u32,
    remote_comm_id: u32,
}

fn cm_err(msg: impl Into<String>) -> PeerError {
    PeerError::Config(msg.into())
}

/// The RC parameters both sides agree on.
#[derive(Debug, Clone, Copy)]
pub struct RcParams {
    /// Our QP.
    pub qp: u32,
    /// The first PSN we expect to receive (the starting PSN our REQ or
    /// REP carries).
    pub psn: u32,
    /// Path MTU we offer (the passive side takes the smaller).
    pub mtu: Mtu,
    /// Incoming READ/atomic resources we offer.
    pub responder_resources: u8,
    /// Outgoing READ/atomic depth we want.
    pub initiator_depth: u8,
    /// Our GID index.
    pub sgid_index: u8,
    /// Our CA GUID (EUI-64 of our MAC).
    pub ca_guid: u64,
}

fn mtu_enum(m: Mtu) -> u8 {
    match m {
        Mtu::Mtu256 => 1,
        Mtu::Mtu512 => 2,
        Mtu::Mtu1024 => 3,
        Mtu::Mtu2048 => 4,
        Mtu::Mtu4096 => 5,
    }
}

impl Gsi {
    /// Creates QP1 with its own CQ, using node memory at
    /// `[base, base + GSI_MEM)` under `key` (an MR with local write).
    pub fn new(
        node: &mut Node,
        pd: u32,
        key: u32,
        base: u64,
        sgid_index: u8,
    ) -> Result<Gsi, PeerError> {
        let e = &mut node.engine;
        let cq = e
            .create_cq(64)
            .map_err(verbs("Couldn't create the QP1 CQ"))?;
        let qp = e
            .create_qp(&QpInit {
                qp_type: QpType::Gsi,
                pd,
                send_cq: cq,
                recv_cq: cq,
                caps: QpCaps {
                    max_send_wr: 16,
                    max_recv_wr: SLOTS as u32,
                    max_send_sge: 1,
                    max_recv_sge: 1,
                    max_inline_data: 0,
                },
                sq_sig_all: true,
                srq: None,
            })
            .map_err(verbs("Couldn't create QP1"))?;
        for st in [QpState::Init, QpState::Rtr] {
            let a = QpAttr {
                state: Some(st),
                pkey_index: Some(0),
                qkey: Some(transport::wire::GSI_QKEY),
                ..Default::default()
            };
            e.modify_qp(qp, &a, 0)
                .map_err(verbs("Couldn't bring up QP1"))?;
        }
        let rts = QpAttr {
            state: Some(QpState::Rts),
            sq_psn: Some(0),
            ..Default::default()
        };
        e.modify_qp(qp, &rts, 0)
            .map_err(verbs("Couldn't bring up QP1"))?;
        let mut g = Gsi {
            qp,
            cq,
            key,
            base,
            sgid_index,
            tid: u64::from(super::random_psn()) << 8,
            wcs: [super::blank_wc(); 8],
            pending: VecDeque::new(),
            accepted: Vec::new(),
            resolved: Vec::new(),
        };
        for slot in 0..SLOTS {
            g.post_recv(node, slot)?;
        }
        Ok(g)
    }

    fn post_recv(&mut self, node: &mut Node, slot: u64) -> Result<(), PeerError> {
        let sge = [Sge {
            addr: self.base + slot * SLOT,
            length: 40 + MAD_LEN as u32,
            lkey: self.key,
        }];
        node.engine
            .post_recv(
                self.qp,
                &RecvWr {
                    wr_id: slot,
                    sges: &sge,
                },
            )
            .map_err(verbs("Couldn't post a QP1 receive"))
    }

    fn next_tid(&mut self) -> u64 {
        self.tid += 1;
        self.tid
    }

    /// Sends `mad` to QP1 at `dgid`, from our GID of the same family
    /// (the GID the connection uses once one is chosen), at once.
    fn send(&mut self, node: &mut Node, dgid: Gid, mad: &[u8]) -> Result<(), PeerError> {
        let at = self.base + SLOTS * SLOT;
        let a = at as usize;
        node.engine.memory_mut().as_mut_slice()[a..a + MAD_LEN].copy_from_slice(&mad[..MAD_LEN]);
        let sge = [Sge {
            addr: at,
            length: MAD_LEN as u32,
            lkey: self.key,
        }];
        let mut wr = SendWr::new(u64::MAX, SendOp::Send, &sge);
        wr.ud = Some(UdDest {
            ah: AhAttr {
                dgid,
                sgid_index: self.sgid_index,
                hop_limit: 64,
                ..Default::default()
            },
            remote_qpn: GSI_QPN,
            remote_qkey: GSI_QKEY,
        });
        node.engine
            .post_send(self.qp, &wr)
            .map_err(verbs("Couldn't send a CM MAD"))?;
        // Out now: the next MAD reuses the buffer, and the engine reads
        // a WR's data only when it transmits it.
        node.pump().map(|_| ())
    }

    /// The next MAD received, with its sender's GID; send completions are
    /// consumed on the way.
    fn recv(&mut self, node: &mut Node) -> Result<Option<(Gid, [u8; MAD_LEN])>, PeerError> {
        loop {
            let n = node
                .engine
                .poll_cq(self.cq, &mut self.wcs[..1])
                .map_err(verbs("poll CQ failed"))?;
            if n == 0 {
                return Ok(None);
            }
            let w = self.wcs[0];
            if w.opcode != WcOpcode::Recv {
                continue;
            }
            let slot = w.wr_id;
            let at = (self.base + slot * SLOT) as usize;
            let mem = node.engine.memory().as_slice();
            let src = grh_source(&mem[at..at + 40]);
            let mut mad = [0u8; MAD_LEN];
            mad.copy_from_slice(&mem[at + 40..at + 40 + MAD_LEN]);
            self.post_recv(node, slot)?;
            if w.status != WcStatus::Success {
                continue;
            }
            return Ok(Some((src, mad)));
        }
    }

    /// Pumps until a MAD arrives or `wait` passes.
    fn wait_mad(
        &mut self,
        node: &mut Node,
        wait: Duration,
    ) -> Result<Option<(Gid, [u8; MAD_LEN])>, PeerError> {
        let until = Instant::now() + wait;
        loop {
            if let Some(m) = self.recv(node)? {
                return Ok(Some(m));
            }
            if Instant::now() >= until {
                return Ok(None);
            }
            node.progress(Duration::from_millis(20))?;
        }
    }

    /// Active side: connects `p.qp` to the rdma_cm listener at
    /// `dst`:`port`, as `src` (with source port `src_port`).
    pub fn connect(
        &mut self,
        node: &mut Node,
        p: &RcParams,
        src: IpAddr,
        dst: IpAddr,
        port: u16,
    ) -> Result<Conn, PeerError> {
        let local_comm_id = super::random_psn() | 0x0100_0000;
        let src_port = 0x8000 | (super::random_psn() as u16 & 0x7fff);
        let mut private_data = [0u8; 92];
        CmaHeader { src_port, src, dst }.emit(&mut private_data);
        let dgid = Gid::from_ip(dst);
        let req = ReqRepr {
            local_comm_id,
            service_id: RDMA_PS_TCP | u64::from(port),
            local_ca_guid: p.ca_guid,
            local_qpn: p.qp,
            responder_resources: p.responder_resources,
            initiator_depth: p.initiator_depth,
            remote_cm_response_timeout: 20,
            transport: 0,
            starting_psn: p.psn,
            local_cm_response_timeout: 20,
            retry_count: 7,
            pkey: 0xffff,
            path_mtu: mtu_enum(p.mtu),
            rnr_retry_count: 7,
            max_cm_retries: 15,
            local_gid: node.gid(Some(p.sgid_index))?.0,
            remote_gid: dgid.0,
            flow_label: 0,
            traffic_class: 0,
            hop_limit: 64,
            local_ack_timeout: 19,
            private_data,
        };
        let tid = self.next_tid();
        let mut mad = [0u8; MAD_LEN];
        req.emit(tid, &mut mad);
        for _ in 0..RETRIES {
            self.send(node, dgid, &mad)?;
            let until = Instant::now() + RESEND;
            while let Some((_, m)) =
                self.wait_mad(node, until.saturating_duration_since(Instant::now()))?
            {
                let Ok(h) = MadHeader::parse(&m) else {
                    continue;
                };
                match h.attr {
                    CmAttr::Rep => {
                        let rep = RepRepr::parse(&m)?;
                        if rep.remote_comm_id != local_comm_id {
                            continue;
                        }
                        let conn = Conn {
                            remote_qpn: rep.local_qpn,
                            remote_gid: dgid,
                            local_comm_id,
                            remote_comm_id: rep.local_comm_id,
                        };
                        let rd = p.initiator_depth.min(rep.responder_resources).max(1);
                        let dest_rd = p.responder_resources.max(1);
                        // Each side's starting PSN is the one it expects
                        // to receive (as Linux fills them): we send from
                        // the REP's and receive from the REQ's.
                        let psns = (p.psn, rep.starting_psn);
                        modify_rc(node, p, &conn, psns, p.mtu, dest_rd, rd, 19)?;
                        let rtu = IdsRepr {
                            attr: CmAttr::Rtu,
                            local_comm_id,
                            remote_comm_id: rep.local_comm_id,
                            extra: 0,
                        };
                        let mut out = [0u8; MAD_LEN];
                        rtu.emit(h.tid, &mut out);
                        self.send(node, dgid, &out)?;
                        return Ok(conn);
                    }
                    CmAttr::Rej => {
                        let r = IdsRepr::parse(&m)?;
                        if r.remote_comm_id == local_comm_id {
                            return Err(PeerError::Rejected(r.extra));
                        }
                    }
                    _ => {}
                }
            }
        }
        Err(cm_err(format!(
            "no CM reply from {dst} after {RETRIES} REQs"
        )))
    }

    /// [`Gsi::connect`], again every half second while the other side
    /// rejects the REQ (nobody listens on the port yet) or cannot be
    /// reached (its host is not up yet), until `until`.
    pub fn connect_retrying(
        &mut self,
        node: &mut Node,
        p: &RcParams,
        (src, dst, port): (IpAddr, IpAddr, u16),
        until: Instant,
    ) -> Result<Conn, PeerError> {
        loop {
            match self.connect(node, p, src, dst, port) {
                Err(PeerError::Rejected(_) | PeerError::Link(netdev::LinkError::Neighbour(_)))
                    if Instant::now() < until =>
                {
                    pump_for(node, RETRY_PAUSE)?;
                }
                other => return other,
            }
        }
    }

    /// Passive side: waits up to `wait` for a REQ to `port`, connects
    /// `p.qp` to its sender and answers with a REP; the RTU is awaited by
    /// [`Gsi::established`].
    pub fn accept(
        &mut self,
        node: &mut Node,
        p: &RcParams,
        port: u16,
        wait: Duration,
    ) -> Result<(Conn, u64, [u8; MAD_LEN]), PeerError> {
        let until = Instant::now() + wait;
        loop {
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(PeerError::Stalled(wait));
            }
            let next = match self.pending.pop_front() {
                Some(m) => Some(m),
                None => self.wait_mad(node, left)?,
            };
            let Some((src, m)) = next else {
                continue;
            };
            let Ok(h) = MadHeader::parse(&m) else {
                continue;
            };
            if h.attr != CmAttr::Req {
                continue;
            }
            let req = ReqRepr::parse(&m)?;
            let from = Gid(req.local_gid);
            if let Some(rep) = answered(&self.accepted, from, req.local_comm_id) {
                self.send(node, from, &rep)?;
                continue;
            }
            if req.service_id != RDMA_PS_TCP | u64::from(port) {
                // Nobody listens there: reject (reason 8, invalid service ID).
                let rej = IdsRepr {
                    attr: CmAttr::Rej,
                    local_comm_id: 0,
                    remote_comm_id: req.local_comm_id,
                    extra: 8,
                };
                let mut out = [0u8; MAD_LEN];
                rej.emit(h.tid, &mut out);
                self.send(node, src, &out)?;
                continue;
            }
            // Answer from the address the client asked for.
            let Some(sgid) = node.engine.gids().find(Gid(req.remote_gid)) else {
                continue;
            };
            self.sgid_index = sgid as u8;
            let p = &RcParams {
                sgid_index: sgid as u8,
                ..*p
            };
            let local_comm_id = super::random_psn() | 0x0200_0000;
            let conn = Conn {
                remote_qpn: req.local_qpn,
                remote_gid: Gid(req.local_gid),
                local_comm_id,
                remote_comm_id: req.local_comm_id,
            };
            let mtu = Mtu::ALL
                .get(usize::from(req.path_mtu.clamp(1, 5) - 1))
                .copied()
                .unwrap_or(Mtu::Mtu1024)
                .min(p.mtu);
            let rd = p.initiator_depth.min(req.responder_resources).max(1);
            let dest_rd = p.responder_resources.max(1);
            // We send from the REQ's starting PSN and receive from ours.
            let psns = (p.psn, req.starting_psn);
            modify_rc(
                node,
                p,
                &conn,
                psns,
                mtu,
                dest_rd,
                rd,
                req.local_ack_timeout,
            )?;
            let rep = RepRepr {
                local_comm_id,
                remote_comm_id: req.local_comm_id,
                local_qpn: p.qp,
                starting_psn: p.psn,
                responder_resources: p.responder_resources,
                initiator_depth: p.initiator_depth,
                target_ack_delay: 15,
                rnr_retry_count: 7,
                local_ca_guid: p.ca_guid,
            };
            let mut out = [0u8; MAD_LEN];
            rep.emit(h.tid, &mut out);
            self.send(node, conn.remote_gid, &out)?;
            self.accepted
                .push((conn.remote_gid, conn.remote_comm_id, out));
            return Ok((conn, h.tid, out));
        }
    }

    /// Passive side: waits for the RTU, resending the REP `rep` (and
    /// answering a repeated REQ with it) until it comes. `data_seen` lets
    /// the caller end the wait when traffic arrives on the QP (which
    /// implies the RTU).
    pub fn established(
        &mut self,
        node: &mut Node,
        conn: &Conn,
        rep: &[u8; MAD_LEN],
        mut data_seen: impl FnMut(&mut Node) -> bool,
    ) -> Result<(), PeerError> {
        for _ in 0..RETRIES {
            let until = Instant::now() + RESEND;
            while Instant::now() < until {
                if data_seen(node) {
                    return Ok(());
                }
                let Some((_, m)) = self.wait_mad(node, Duration::from_millis(50))? else {
                    continue;
                };
                let Ok(h) = MadHeader::parse(&m) else {
                    continue;
                };
                match h.attr {
                    CmAttr::Rtu => {
                        let r = IdsRepr::parse(&m)?;
                        if r.remote_comm_id == conn.local_comm_id {
                            return Ok(());
                        }
                    }
                    CmAttr::Req => {
                        let req = ReqRepr::parse(&m)?;
                        if req.local_comm_id == conn.remote_comm_id {
                            self.send(node, conn.remote_gid, rep)?;
                        } else if self.pending.len() < 64 {
                            // Another connection's REQ (rdma_cm sends
                            // the REQs of several QPs back to back).
                            self.pending.push_back((Gid(req.local_gid), m));
                        }
                    }
                    _ => {}
                }
            }
            self.send(node, conn.remote_gid, rep)?;
        }
        Err(cm_err("no RTU after the REP was sent 15 times"))
    }

    /// The GID index the last accepted connection answers from.
    pub fn sgid_index(&self) -> u8 {
        self.sgid_index
    }

    /// Whether a DREQ for `conn` has arrived; answers it with a DREP.
    pub fn poll_dreq(&mut self, node: &mut Node, conn: &Conn) -> Result<bool, PeerError> {
        while let Some((_, m)) = self.recv(node)? {
            let Ok(h) = MadHeader::parse(&m) else {
                continue;
            };
            if h.attr != CmAttr::Dreq {
                continue;
            }
            let d = IdsRepr::parse(&m)?;
            if d.remote_comm_id != conn.local_comm_id {
                continue;
            }
            self.drep(node, conn, h.tid)?;
            return Ok(true);
        }
        Ok(false)
    }

    fn drep(&mut self, node: &mut Node, conn: &Conn, tid: u64) -> Result<(), PeerError> {
        let drep = IdsRepr {
            attr: CmAttr::Drep,
            local_comm_id: conn.local_comm_id,
            remote_comm_id: conn.remote_comm_id,
            extra: 0,
        };
        let mut out = [0u8; MAD_LEN];
        drep.emit(tid, &mut out);
        self.send(node, conn.remote_gid, &out)
    }

    /// Sends a DREQ and waits for the DREP (or the other side's own DREQ).
    pub fn disconnect(&mut self, node: &mut Node, conn: &Conn) -> Result<(), PeerError> {
        self.disconnect_all(node, std::slice::from_ref(conn))
    }

    /// A DREQ for `conn`, with a new transaction ID.
    fn dreq(&mut self, conn: &Conn) -> [u8; MAD_LEN] {
        let tid = self.next_tid();
        let dreq = IdsRepr {
            attr: CmAttr::Dreq,
            local_comm_id: conn.local_comm_id,
            remote_comm_id: conn.remote_comm_id,
            extra: conn.remote_qpn,
        };
        let mut mad = [0u8; MAD_LEN];
        dreq.emit(tid, &mut mad);
        mad
    }

    /// Disconnects every connection in `conns` at once, as a process
    /// tearing down several rdma_cm connections does: a DREQ for each,
    /// then until each is closed (its DREP, or the other side's own
    /// DREQ, which gets a DREP) DREQs again every second, three times
    /// at most. A DREQ for one of them that comes in meanwhile is
    /// answered whatever its state.
    pub fn disconnect_all(&mut self, node: &mut Node, conns: &[Conn]) -> Result<(), PeerError> {
        let mut open: Vec<(Conn, [u8; MAD_LEN])> = Vec::with_capacity(conns.len());
        for c in conns {
            let mad = self.dreq(c);
            open.push((*c, mad));
        }
        for _ in 0..3 {
            if open.is_empty() {
                break;
            }
            for (c, mad) in &open {
                self.send(node, c.remote_gid, mad)?;
            }
            let until = Instant::now() + RESEND;
            while !open.is_empty() {
                let left = until.saturating_duration_since(Instant::now());
                let Some((_, m)) = self.wait_mad(node, left)? else {
                    break;
                };
                let (Ok(h), Ok(r)) = (MadHeader::parse(&m), IdsRepr::parse(&m)) else {
                    continue;
                };
                let Some(c) = conns.iter().find(|c| c.local_comm_id == r.remote_comm_id) else {
                    continue;
                };
                match h.attr {
                    CmAttr::Drep => {}
                    CmAttr::Dreq => self.drep(node, c, h.tid)?,
                    _ => continue,
                }
                open.retain(|(o, _)| o.local_comm_id != c.local_comm_id);
            }
        }
        Ok(())
    }

    /// Sends a DREQ for `conn` once, without waiting for the answer (the
    /// other side may answer only when its process exits).
    pub fn disconnect_nowait(&mut self, node: &mut Node, conn: &Conn) -> Result<(), PeerError> {
        let mad = self.dreq(conn);
        self.send(node, conn.remote_gid, &mad)
    }
}

/// How long an active side waits before asking again a listener that is
/// not there yet.
const RETRY_PAUSE: Duration = Duration::from_millis(500);

/// Keeps `node` moving for `d` (ARP, retransmissions, answers).
fn pump_for(node: &mut Node, d: Duration) -> Result<(), PeerError> {
    let end = Instant::now() + d;
    while Instant::now() < end {
        node.progress(Duration::from_millis(20))?;
    }
    Ok(())
}

/// The answer already sent to the request `id` from `from`, if any: a
/// repeated REQ or SIDR_REQ (our answer was late or lost) gets it again,
/// not a second connection.
fn answered(list: &[(Gid, u32, [u8; MAD_LEN])], from: Gid, id: u32) -> Option<[u8; MAD_LEN]> {
    list.iter()
        .find(|(g, i, _)| *g == from && *i == id)
        .map(|(_, _, m)| *m)
}

/// The source GID in the 40-byte GRH area of a UD receive: the IPv6
/// header there, or the IPv4 header in its last 20 bytes.
pub fn grh_source(grh: &[u8]) -> Gid {
    if grh[20] >> 4 == 4 {
        Gid::from_ip(IpAddr::from([grh[32], grh[33], grh[34], grh[35]]))
    } else {
        let mut g = [0u8; 16];
        g.copy_from_slice(&grh[8..24]);
        Gid(g)
    }
}

/// The other side's UD QP as SIDR resolved it.
#[derive(Debug, Clone, Copy)]
pub struct UdPeer {
    /// Its GID.
    pub gid: Gid,
    /// Its QP.
    pub qpn: u32,
    /// Its Q_Key.
    pub qkey: u32,
}

impl Gsi {
    /// Active side of a UD "connection": asks the rdma_cm listener at
    /// `dst`:`port` (UDP port space) with SIDR_REQs, once a second, for
    /// the UD QP that serves it. A reply saying nobody listens there
    /// (yet) is asked again every half second until `until`.
    pub fn sidr_resolve(
        &mut self,
        node: &mut Node,
        sgid_index: u8,
        (src, dst, port): (IpAddr, IpAddr, u16),
        until: Instant,
    ) -> Result<UdPeer, PeerError> {
        self.sgid_index = sgid_index;
        let dgid = Gid::from_ip(dst);
        let service_id = RDMA_PS_UDP | u64::from(port);
        loop {
            let request_id = super::random_psn() | 0x0300_0000;
            let src_port = 0x8000 | (super::random_psn() as u16 & 0x7fff);
            let mut private_data = [0u8; 216];
            CmaHeader { src_port, src, dst }.emit(&mut private_data);
            let req = SidrReqRepr {
                request_id,
                pkey: 0xffff,
                service_id,
                private_data,
            };
            let mut mad = [0u8; MAD_LEN];
            req.emit(self.next_tid(), &mut mad);
            let mut status = None;
            'ask: for _ in 0..RETRIES {
                self.send(node, dgid, &mad)?;
                let by = Instant::now() + RESEND;
                while let Some((_, m)) =
                    self.wait_mad(node, by.saturating_duration_since(Instant::now()))?
                {
                    let Ok(r) = SidrRepRepr::parse(&m) else {
                        continue;
                    };
                    if r.request_id != request_id {
                        continue;
                    }
                    if r.status == SIDR_SUCCESS {
                        return Ok(UdPeer {
                            gid: dgid,
                            qpn: r.qpn,
                            qkey: r.qkey,
                        });
                    }
                    status = Some(r.status);
                    break 'ask;
                }
            }
            match status {
                Some(SIDR_UNSUPPORTED) if Instant::now() < until => pump_for(node, RETRY_PAUSE)?,
                Some(st) => {
                    return Err(cm_err(format!(
                        "SIDR: {dst} answered status {st} for port {port} (1: nobody listens)"
                    )));
                }
                None => {
                    return Err(cm_err(format!(
                        "no SIDR reply from {dst} after {RETRIES} SIDR_REQs"
                    )));
                }
            }
        }
    }

    /// Passive side: waits up to `wait` for a SIDR_REQ to `port` (UDP
    /// port space) and answers it with our UD QP `qpn` and `qkey`; a
    /// SIDR_REQ for another port is answered "unsupported".
    pub fn sidr_accept(
        &mut self,
        node: &mut Node,
        (qpn, qkey): (u32, u32),
        port: u16,
        wait: Duration,
    ) -> Result<(), PeerError> {
        let until = Instant::now() + wait;
        let service_id = RDMA_PS_UDP | u64::from(port);
        loop {
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(PeerError::Stalled(wait));
            }
            let Some((src, m)) = self.wait_mad(node, left)? else {
                continue;
            };
            let Ok(req) = SidrReqRepr::parse(&m) else {
                continue;
            };
            let tid = MadHeader::parse(&m)?.tid;
            if let Some(rep) = answered(&self.resolved, src, req.request_id) {
                self.send(node, src, &rep)?;
                continue;
            }
            let ours = req.service_id == service_id;
            // Answer from the address the asker named.
            let sgid = CmaHeader::parse(&req.private_data)
                .ok()
                .and_then(|h| node.engine.gids().find(Gid::from_ip(h.dst)));
            let (status, sgid) = match (ours, sgid) {
                (true, Some(g)) => (SIDR_SUCCESS, g as u8),
                _ => (SIDR_UNSUPPORTED, self.sgid_index),
            };
            self.sgid_index = sgid;
            let rep = SidrRepRepr {
                request_id: req.request_id,
                status,
                qpn: if status == SIDR_SUCCESS { qpn } else { 0 },
                service_id: req.service_id,
                qkey: if status == SIDR_SUCCESS { qkey } else { 0 },
            };
            let mut out = [0u8; MAD_LEN];
            rep.emit(tid, &mut out);
            self.send(node, src, &out)?;
            if status == SIDR_SUCCESS {
                self.resolved.push((src, req.request_id, out));
                return Ok(());
            }
        }
    }
}

/// Our CA GUID: the EUI-64 of our MAC (`--mac`, else the one derived
/// from the first `--ip`), as rxe takes it from its netdev.
pub fn ca_guid(opts: &super::PeerOptions) -> u64 {
    let mac = match opts.mac {
        Some(m) => m.0,
        None => super::default_mac(opts.ips[0].addr),
    };
    u64::from_be_bytes(super::link_local(mac).octets()[8..].try_into().expect("8"))
}

/// RTR and RTS toward the other side of `conn`, receiving from
/// `psns.0` and sending from `psns.1`.
#[allow(clippy::too_many_arguments)]
fn modify_rc(
    node: &mut Node,
    p: &RcParams,
    conn: &Conn,
    psns: (u32, u32),
    mtu: Mtu,
    max_dest_rd_atomic: u8,
    max_rd_atomic: u8,
    timeout: u8,
) -> Result<(), PeerError> {
    let path = super::Path {
        mtu,
        dest_qpn: conn.remote_qpn,
        rq_psn: psns.0,
        sq_psn: psns.1,
        ah: AhAttr {
            dgid: conn.remote_gid,
            sgid_index: p.sgid_index,
            hop_limit: 64,
            ..Default::default()
        },
        max_dest_rd_atomic,
        max_rd_atomic,
        min_rnr_timer: 12,
        timeout,
        retry: 7,
    };
    super::connect_qp(&mut node.engine, p.qp, true, &path)
}
