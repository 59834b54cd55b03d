//! The responder (rxe `rxe_resp.c`): executes incoming requests in PSN
//! order and queues what goes back: coalesced ACKs, RNR NAKs, NAKs, READ
//! responses and atomic ACKs. Duplicate requests are answered from a
//! cache of `max_dest_rd_atomic` resources that replays READ responses and
//! atomic results without executing them again.

use std::collections::VecDeque;

use super::{Ctx, Qp, packets_for, psn_add, psn_diff};
use crate::{
    engine::RxMeta,
    memory::Memory,
    mr,
    verbs::{Access, QpState, QpType, Wc, WcOpcode, WcStatus},
    wire::{
        AethRepr, AethSyndrome, AtomicAckEthRepr, BthRepr, DEFAULT_PKEY, ExtHeaders,
        INVALID_CREDITS, NakCode, Opcode, PSN_MASK, Packet, PacketRepr,
    },
};

/// A READ or atomic the responder has executed, kept for replay.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Resource {
    Free,
    Read {
        first_psn: u32,
        last_psn: u32,
        va: u64,
        rkey: u32,
        len: u64,
        next_psn: u32,
        next_off: u64,
        msn: u32,
    },
    Atomic {
        psn: u32,
        orig: u64,
        msn: u32,
    },
    /// ATOMIC_WRITE or FLUSH: acknowledged by an empty READ response.
    Done {
        psn: u32,
        msn: u32,
    },
}

/// One item of the responder's output, in PSN order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RespOut {
    Ack {
        psn: u32,
        syndrome: AethSyndrome,
        msn: u32,
    },
    Resource(usize),
}

/// An RDMA WRITE in progress.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct WriteCtx {
    va: u64,
    rkey: u32,
    remaining: u64,
    total: u64,
}

/// Responder state (rxe `qp->resp`).
#[derive(Debug, Clone)]
pub(crate) struct RespState {
    /// Next expected PSN.
    pub psn: u32,
    /// Message sequence number.
    pub msn: u32,
    /// One past the last executed request that is not a READ: what a
    /// duplicate SEND or WRITE is acknowledged with (rxe `ack_psn`).
    pub ack_psn: u32,
    sent_psn_nak: bool,
    /// ACKs replaced by a later one before they went out.
    pub(crate) coalesced: u64,
    /// Bytes placed into the receive WQE of the SEND in progress.
    recv_offset: Option<u64>,
    write: Option<WriteCtx>,
    /// UC: drop packets until the next first/only packet.
    drop_msg: bool,
    resources: Vec<Resource>,
    res_next: usize,
    out: VecDeque<RespOut>,
    /// The receive WQE being filled (taken from the RQ or SRQ).
    pub(crate) cur: super::RecvWqe,
    /// Whether `cur` holds a WQE.
    pub(crate) have_cur: bool,
    /// A receive completion of this packet found the CQ full.
    cq_overflow: bool,
}

impl RespState {
    pub(crate) fn new(resources: usize) -> RespState {
        RespState {
            cur: super::RecvWqe {
                sges: Vec::with_capacity(super::RECV_SGE_CAPACITY),
                ..Default::default()
            },
            have_cur: false,
            cq_overflow: false,
            psn: 0,
            msn: 0,
            ack_psn: 0,
            sent_psn_nak: false,
            coalesced: 0,
            recv_offset: None,
            write: None,
            drop_msg: false,
            resources: vec![Resource::Free; resources],
            res_next: 0,
            out: VecDeque::with_capacity(2 * resources + 2),
        }
    }

    pub(crate) fn clear_output(&mut self) {
        self.out.clear();
        self.recv_offset = None;
        self.write = None;
    }

    /// Queues an ACK, RNR NAK or NAK. A later one replaces an ACK-type
    /// entry still waiting at the back of the queue (ACKs coalesce, and a
    /// peer repeating a request cannot grow the queue), except a fatal NAK,
    /// which is always sent.
    fn queue_ack(&mut self, psn: u32, syndrome: AethSyndrome) {
        let msn = self.msn;
        if let Some(RespOut::Ack { syndrome: back, .. }) = self.out.back() {
            let fatal = matches!(
                back,
                AethSyndrome::Nak(
                    NakCode::InvalidRequest
                        | NakCode::RemoteAccessError
                        | NakCode::RemoteOperationalError
                )
            );
            if fatal {
                return;
            }
            if matches!(back, AethSyndrome::Ack { .. }) {
                self.coalesced += 1;
            }
            self.out.pop_back();
        }
        self.out.push_back(RespOut::Ack { psn, syndrome, msn });
    }

    /// Changes the number of READ/atomic resources, keeping PSNs.
    pub(crate) fn resize(&mut self, resources: usize) {
        self.resources = vec![Resource::Free; resources.max(1)];
        self.res_next = 0;
        self.out.clear();
        self.out.reserve(2 * resources + 2);
    }

    fn alloc_resource(&mut self, r: Resource) -> usize {
        let slot = self.res_next;
        self.res_next = (self.res_next + 1) % self.resources.len();
        self.out.retain(|o| *o != RespOut::Resource(slot));
        self.resources[slot] = r;
        self.out.push_back(RespOut::Resource(slot));
        slot
    }
}

/// The largest RDMA length (IBTA C9-94: 2^31 bytes).
const MAX_DMA_LEN: u64 = 1 << 31;

const ACK: AethSyndrome = AethSyndrome::Ack {
    credits: INVALID_CREDITS,
};

/// The access a FLUSH needs: the flags of its placement type (rxe
/// `check_qp_attr_access`).
fn flush_access(repr: &PacketRepr) -> Access {
    let plt = repr.ext.feth.map_or(0, |f| f.placement_type);
    let mut need = Access(0);
    if plt & 1 != 0 {
        need = need.with(Access::FLUSH_GLOBAL);
    }
    if plt & 2 != 0 {
        need = need.with(Access::FLUSH_PERSISTENT);
    }
    need
}

/// Whether opcode (low 5 bits) continues a SEND or a WRITE.
fn continues_send(op: u8) -> bool {
    matches!(op, 0x01 | 0x02 | 0x03 | 0x16)
}
fn continues_write(op: u8) -> bool {
    matches!(op, 0x07..=0x09)
}

impl Qp {
    /// Handles an incoming request packet.
    pub(crate) fn on_request<M: Memory>(
        &mut self,
        ctx: &mut Ctx<'_, M>,
        meta: &RxMeta<'_>,
        pkt: &Packet<&[u8]>,
        repr: &PacketRepr,
        placed: bool,
    ) {
        if !matches!(self.state, QpState::Rtr | QpState::Rts | QpState::Sqd) {
            return;
        }
        let msn = self.resp.msn;
        match self.qp_type {
            QpType::Rc => self.on_rc_request(ctx, pkt, repr, placed),
            QpType::Uc => self.on_uc_request(ctx, pkt, repr),
            QpType::Ud | QpType::Gsi => self.on_ud_request(ctx, meta, pkt, repr),
        }
        if std::mem::take(&mut self.resp.cq_overflow) {
            self.on_recv_cq_overflow(ctx, repr.bth.psn, msn);
        }
    }

    /// A receive completion for the packet with `psn` found the CQ full: a
    /// class G error (rxe RESPST_ERR_CQ_OVERFLOW). The CQ has raised its
    /// event; the QP goes to ERR and flushes its queues. rxe acknowledges
    /// packet by packet, so everything before this one had its ACK and
    /// this one gets none: the ACK queued for it is replaced by one for
    /// the packet before (`msn` as it was then), and responses already
    /// queued for earlier requests still go out.
    #[cold]
    #[inline(never)]
    fn on_recv_cq_overflow<M: Memory>(&mut self, ctx: &mut Ctx<'_, M>, psn: u32, msn: u32) {
        self.state = QpState::Err;
        self.flush_queues(ctx);
        self.resp.recv_offset = None;
        self.resp.write = None;
        if self.qp_type == QpType::Rc {
            if let Some(RespOut::Ack { psn: p, .. }) = self.resp.out.back()
                && *p == psn
            {
                self.resp.out.pop_back();
            }
            self.resp.msn = msn;
            self.resp.queue_ack(psn_add(psn, PSN_MASK), ACK);
        }
    }

    /// Places the payload of an RC WRITE middle or last packet that
    /// continues the expected message and passes every check that
    /// [`Qp::on_request`] makes on it, computing the packet's CRC register
    /// in the same pass from `prefix` (the link's part). Returns the
    /// register after the pad, or `None` (nothing placed) for any other
    /// packet. The caller compares it with the ICRC before it lets the
    /// packet change any state, and then hands it to `on_request` with
    /// `placed` set.
    pub(crate) fn place_unverified<M: Memory>(
        &self,
        ctx: &mut Ctx<'_, M>,
        pkt: &Packet<&[u8]>,
        repr: &PacketRepr,
        prefix: u32,
    ) -> Option<u32> {
        let op = repr.bth.opcode.0;
        let w = self.resp.write?;
        let data = pkt.payload();
        let n = data.len() as u64;
        let last = op == 0x08;
        let fits = self.qp_type == QpType::Rc
            && matches!(op, 0x07 | 0x08)
            && matches!(self.state, QpState::Rtr | QpState::Rts | QpState::Sqd)
            && repr.bth.psn == self.resp.psn
            && self.resp.recv_offset.is_none()
            && self.attrs.access.contains(Access::REMOTE_WRITE)
            && repr.check_mtu(self.attrs.path_mtu).is_ok()
            && n > 0
            && n <= w.remaining
            && (!last || n == w.remaining);
        if !fits {
            return None;
        }
        let reg = crate::wire::icrc::header_register(prefix, pkt.header()).ok()?;
        let reg = ctx
            .mrs
            .remote_write_crc(
                ctx.mem,
                w.rkey,
                self.pd,
                self.qpn,
                Access::REMOTE_WRITE,
                w.va,
                data,
                reg,
            )
            .ok()?;
        Some(crate::crc::update(reg, pkt.pad()))
    }

    fn on_rc_request<M: Memory>(
        &mut self,
        ctx: &mut Ctx<'_, M>,
        pkt: &Packet<&[u8]>,
        repr: &PacketRepr,
        placed: bool,
    ) {
        let psn = repr.bth.psn;
        let d = psn_diff(psn, self.resp.psn);
        if d > 0 {
            self.counters.out_of_seq_request += 1;
            if !self.resp.sent_psn_nak {
                self.resp.sent_psn_nak = true;
                let expected = self.resp.psn;
                self.resp
                    .queue_ack(expected, AethSyndrome::Nak(NakCode::PsnSequenceError));
            }
            return;
        }
        if d < 0 {
            self.counters.duplicate_request += 1;
            self.on_duplicate(repr);
            return;
        }
        self.resp.sent_psn_nak = false;
        let op = repr.bth.opcode.0 & 0x1f;
        let in_send = self.resp.recv_offset.is_some();
        let in_write = self.resp.write.is_some();
        if in_send != continues_send(op) || in_write != continues_write(op) {
            return self.nak_error(ctx, NakCode::InvalidRequest, None);
        }
        let need = match op {
            0x06..=0x0b | 0x1d => Access::REMOTE_WRITE,
            0x0c => Access::REMOTE_READ,
            0x13 | 0x14 => Access::REMOTE_ATOMIC,
            0x1c => flush_access(repr),
            0x00..=0x05 | 0x16 | 0x17 => Access(0),
            _ => return self.nak_error(ctx, NakCode::InvalidRequest, None),
        };
        if !self.attrs.access.contains(need) {
            return self.nak_error(ctx, NakCode::InvalidRequest, None);
        }
        if repr.check_mtu(self.attrs.path_mtu).is_err() {
            return self.nak_error(ctx, NakCode::InvalidRequest, None);
        }
        let info = pkt.info();
        let first = matches!(
            info.position,
            crate::wire::Position::First | crate::wire::Position::Only
        );
        let last = matches!(
            info.position,
            crate::wire::Position::Last | crate::wire::Position::Only
        );
        match op {
            0x00..=0x05 | 0x16 | 0x17 => {
                if first && !self.recv_available(ctx) {
                    return self.rnr_nak(psn);
                }
                if !self.place_send(ctx, pkt.payload(), first) {
                    return;
                }
                if last {
                    let imm = repr.ext.imm_dt.map(|i| i.imm);
                    let inv = repr.ext.ieth.map(|i| i.rkey);
                    if let Some(key) = inv
                        && !ctx.mrs.invalidate(key, self.pd, self.qpn)
                    {
                        // Only a valid fast-registration MR of this PD can
                        // be invalidated (rxe class J error).
                        return self.nak_error(ctx, NakCode::InvalidRequest, None);
                    }
                    self.complete_recv(ctx, WcOpcode::Recv, None, imm, inv, repr.bth.solicited);
                }
            }
            0x06..=0x0b => {
                let with_imm = matches!(op, 0x09 | 0x0b);
                if with_imm && !self.recv_available(ctx) {
                    return self.rnr_nak(psn);
                }
                if !self.write_message(ctx, repr, pkt.payload(), last, with_imm, placed) {
                    return;
                }
            }
            0x0c => return self.start_read(ctx, repr),
            0x13 | 0x14 => return self.do_atomic(ctx, repr, op == 0x13),
            0x1d => return self.do_atomic_write(ctx, repr, pkt.payload()),
            0x1c => return self.do_flush(ctx, repr),
            _ => {}
        }
        if last {
            self.resp.msn = psn_add(self.resp.msn, 1);
        }
        self.resp.psn = psn_add(psn, 1);
        self.resp.ack_psn = self.resp.psn;
        if repr.bth.ack_req {
            self.resp.queue_ack(psn, ACK);
        }
    }

    /// Places SEND payload into the current receive WQE, taking the next
    /// one from the RQ or SRQ on the first packet.
    fn place_send<M: Memory>(&mut self, ctx: &mut Ctx<'_, M>, data: &[u8], first: bool) -> bool {
        if first && !self.take_recv(ctx) {
            return false;
        }
        let off = if first {
            0
        } else {
            self.resp.recv_offset.unwrap_or(0)
        };
        let w = &self.resp.cur;
        if off + data.len() as u64 > w.len {
            self.nak_error(ctx, NakCode::InvalidRequest, Some(WcStatus::RemInvReqErr));
            return false;
        }
        if mr::scatter(ctx.mem, ctx.mrs, self.pd, &w.sges, off, data).is_err() {
            self.nak_error(
                ctx,
                NakCode::RemoteOperationalError,
                Some(WcStatus::LocQpOpErr),
            );
            return false;
        }
        self.resp.recv_offset = Some(off + data.len() as u64);
        true
    }

    /// Places a WRITE packet and, at the end of a WRITE with immediate,
    /// completes a receive WQE with the whole length and the immediate.
    fn write_message<M: Memory>(
        &mut self,
        ctx: &mut Ctx<'_, M>,
        repr: &PacketRepr,
        data: &[u8],
        last: bool,
        with_imm: bool,
        placed: bool,
    ) -> bool {
        if !self.place_write(ctx, repr, data, last, placed) {
            return false;
        }
        if with_imm {
            let total = self.resp.write.map_or(0, |w| w.total);
            let imm = repr.ext.imm_dt.map(|i| i.imm);
            self.resp.recv_offset = None;
            self.take_recv(ctx);
            self.complete_recv(
                ctx,
                WcOpcode::RecvRdmaWithImm,
                Some(total),
                imm,
                None,
                repr.bth.solicited,
            );
        }
        if last {
            self.resp.write = None;
        }
        true
    }

    /// Places WRITE payload into the MR named by the RETH of the first
    /// packet; `placed`: [`Qp::place_unverified`] already copied it.
    fn place_write<M: Memory>(
        &mut self,
        ctx: &mut Ctx<'_, M>,
        repr: &PacketRepr,
        data: &[u8],
        last: bool,
        placed: bool,
    ) -> bool {
        if let Some(reth) = repr.ext.reth {
            let len = u64::from(reth.dma_len);
            if len > MAX_DMA_LEN {
                self.nak_error(ctx, NakCode::InvalidRequest, None);
                return false;
            }
            if len > 0
                && ctx
                    .mrs
                    .remote_check(
                        reth.rkey,
                        self.pd,
                        self.qpn,
                        Access::REMOTE_WRITE,
                        reth.va,
                        len,
                    )
                    .is_err()
            {
                self.nak_error(ctx, NakCode::RemoteAccessError, None);
                return false;
            }
            self.resp.write = Some(WriteCtx {
                va: reth.va,
                rkey: reth.rkey,
                remaining: len,
                total: len,
            });
        }
        let Some(mut w) = self.resp.write else {
            self.nak_error(ctx, NakCode::InvalidRequest, None);
            return false;
        };
        let n = data.len() as u64;
        if n > w.remaining || (last && n != w.remaining) {
            self.nak_error(ctx, NakCode::InvalidRequest, None);
            return false;
        }
        if n > 0 && !placed {
            let ok = ctx
                .mrs
                .remote_write(
                    ctx.mem,
                    w.rkey,
                    self.pd,
                    self.qpn,
                    Access::REMOTE_WRITE,
                    w.va,
                    data,
                )
                .is_ok();
            if !ok {
                self.nak_error(ctx, NakCode::RemoteAccessError, None);
                return false;
            }
        }
        w.va = w.va.wrapping_add(n);
        w.remaining -= n;
        self.resp.write = Some(w);
        true
    }

    fn start_read<M: Memory>(&mut self, ctx: &mut Ctx<'_, M>, repr: &PacketRepr) {
        let Some(reth) = repr.ext.reth else { return };
        let len = u64::from(reth.dma_len);
        if len > MAX_DMA_LEN
            || u64::from(packets_for(len, self.attrs.path_mtu)) >= 1 << 23
            || self.attrs.max_dest_rd_atomic == 0
        {
            return self.nak_error(ctx, NakCode::InvalidRequest, None);
        }
        if len > 0
            && ctx
                .mrs
                .remote_check(
                    reth.rkey,
                    self.pd,
                    self.qpn,
                    Access::REMOTE_READ,
                    reth.va,
                    len,
                )
                .is_err()
        {
            return self.nak_error(ctx, NakCode::RemoteAccessError, None);
        }
        let psn = repr.bth.psn;
        let npkts = packets_for(len, self.attrs.path_mtu);
        self.resp.msn = psn_add(self.resp.msn, 1);
        self.resp.alloc_resource(Resource::Read {
            first_psn: psn,
            last_psn: psn_add(psn, npkts - 1),
            va: reth.va,
            rkey: reth.rkey,
            len,
            next_psn: psn,
            next_off: 0,
            msn: self.resp.msn,
        });
        self.resp.psn = psn_add(psn, npkts);
    }

    fn do_atomic<M: Memory>(&mut self, ctx: &mut Ctx<'_, M>, repr: &PacketRepr, cmp_swap: bool) {
        let Some(a) = repr.ext.atomic_eth else { return };
        if a.va % 8 != 0 || self.attrs.max_dest_rd_atomic == 0 {
            return self.nak_error(ctx, NakCode::InvalidRequest, None);
        }
        let mut cur = [0u8; 8];
        let (rkey, pd) = (a.rkey, self.pd);
        if ctx
            .mrs
            .remote_read(
                ctx.mem,
                rkey,
                pd,
                self.qpn,
                Access::REMOTE_ATOMIC,
                a.va,
                &mut cur,
            )
            .is_err()
        {
            return self.nak_error(ctx, NakCode::RemoteAccessError, None);
        }
        let orig = u64::from_ne_bytes(cur);
        let new = if cmp_swap {
            if orig == a.compare { a.swap_add } else { orig }
        } else {
            orig.wrapping_add(a.swap_add)
        };
        if ctx
            .mrs
            .remote_write(
                ctx.mem,
                rkey,
                pd,
                self.qpn,
                Access::REMOTE_ATOMIC,
                a.va,
                &new.to_ne_bytes(),
            )
            .is_err()
        {
            return self.nak_error(ctx, NakCode::RemoteAccessError, None);
        }
        let psn = repr.bth.psn;
        self.resp.msn = psn_add(self.resp.msn, 1);
        let msn = self.resp.msn;
        self.resp
            .alloc_resource(Resource::Atomic { psn, orig, msn });
        self.resp.psn = psn_add(psn, 1);
    }

    fn do_atomic_write<M: Memory>(&mut self, ctx: &mut Ctx<'_, M>, repr: &PacketRepr, data: &[u8]) {
        let Some(reth) = repr.ext.reth else { return };
        if reth.va % 8 != 0 || data.len() != 8 {
            return self.nak_error(ctx, NakCode::InvalidRequest, None);
        }
        if ctx
            .mrs
            .remote_write(
                ctx.mem,
                reth.rkey,
                self.pd,
                self.qpn,
                Access::REMOTE_WRITE,
                reth.va,
                data,
            )
            .is_err()
        {
            return self.nak_error(ctx, NakCode::RemoteAccessError, None);
        }
        self.finish_done(repr.bth.psn);
    }

    fn do_flush<M: Memory>(&mut self, ctx: &mut Ctx<'_, M>, repr: &PacketRepr) {
        let (Some(reth), Some(feth)) = (repr.ext.reth, repr.ext.feth) else {
            return;
        };
        // Selectivity level 1 flushes the whole region: only the key is
        // checked. Memory here is coherent, so placement needs no work
        // once the access is allowed.
        let need = flush_access(repr);
        let ok = if feth.selectivity_level == 1 {
            ctx.mrs
                .get(reth.rkey)
                .is_some_and(|m| m.valid && m.pd == self.pd && m.access.contains(need))
        } else {
            ctx.mrs
                .remote_check(
                    reth.rkey,
                    self.pd,
                    self.qpn,
                    need,
                    reth.va,
                    u64::from(reth.dma_len),
                )
                .is_ok()
        };
        if !ok {
            return self.nak_error(ctx, NakCode::RemoteAccessError, None);
        }
        self.finish_done(repr.bth.psn);
    }

    fn finish_done(&mut self, psn: u32) {
        self.resp.msn = psn_add(self.resp.msn, 1);
        let msn = self.resp.msn;
        self.resp.alloc_resource(Resource::Done { psn, msn });
        self.resp.psn = psn_add(psn, 1);
        self.resp.ack_psn = self.resp.psn;
    }

    /// A request with a PSN we have already executed.
    fn on_duplicate(&mut self, repr: &PacketRepr) {
        let op = repr.bth.opcode.0 & 0x1f;
        let psn = repr.bth.psn;
        match op {
            0x0c => {
                // Replay from the requested PSN, but only if the request
                // names what the original did from that point on (rxe
                // `duplicate_request`): same key, the matching address and
                // the remaining length.
                let mtu = self.attrs.path_mtu.bytes() as u64;
                let Some(reth) = repr.ext.reth else { return };
                let found = self.resp.resources.iter().position(|r| match *r {
                    Resource::Read {
                        first_psn,
                        last_psn,
                        va,
                        rkey,
                        len,
                        ..
                    } if psn_diff(psn, first_psn) >= 0 && psn_diff(psn, last_psn) <= 0 => {
                        let off = u64::from(psn_diff(psn, first_psn) as u32) * mtu;
                        rkey == reth.rkey
                            && va.wrapping_add(off) == reth.va
                            && len.saturating_sub(off) == u64::from(reth.dma_len)
                    }
                    _ => false,
                });
                if let Some(slot) = found {
                    if let Resource::Read {
                        first_psn,
                        next_psn,
                        next_off,
                        ..
                    } = &mut self.resp.resources[slot]
                    {
                        *next_psn = psn;
                        *next_off = u64::from(psn_diff(psn, *first_psn) as u32) * mtu;
                    }
                    if !self.resp.out.contains(&RespOut::Resource(slot)) {
                        self.resp.out.push_back(RespOut::Resource(slot));
                    }
                }
            }
            0x13 | 0x14 | 0x1c | 0x1d => {
                // Atomics replay their saved result; ATOMIC_WRITE and FLUSH
                // their empty READ response. Nothing executes twice.
                let found = self.resp.resources.iter().position(|r| {
                    matches!(*r, Resource::Atomic { psn: p, .. } | Resource::Done { psn: p, .. } if p == psn)
                });
                if let Some(slot) = found
                    && !self.resp.out.contains(&RespOut::Resource(slot))
                {
                    self.resp.out.push_back(RespOut::Resource(slot));
                }
            }
            _ => {
                // SEND or WRITE: acknowledge again what we have (C9-105),
                // never past a READ whose responses are still owed.
                let prev = psn_add(self.resp.ack_psn, 0xff_ffff);
                self.resp.queue_ack(prev, ACK);
            }
        }
    }

    fn rnr_nak(&mut self, psn: u32) {
        let timer = self.attrs.min_rnr_timer;
        self.resp.queue_ack(psn, AethSyndrome::RnrNak { timer });
    }

    /// A class B/C error: complete the receive WQE in progress with
    /// `recv_status` (if any), move the QP to ERR, and NAK.
    fn nak_error<M: Memory>(
        &mut self,
        ctx: &mut Ctx<'_, M>,
        code: NakCode,
        recv_status: Option<WcStatus>,
    ) {
        self.counters.responder_err += 1;
        if self.qp_type != QpType::Rc {
            // UC (rxe): drop the rest of the message, keep the receive WQE
            // for the next one, stay up.
            self.resp.drop_msg = true;
            self.resp.recv_offset = None;
            self.resp.write = None;
            return;
        }
        let psn = self.resp.psn;
        if self.resp.have_cur {
            // The receive in progress completes with the error (rxe
            // `do_class_ac_error`).
            let status = recv_status.unwrap_or(match code {
                NakCode::RemoteAccessError => WcStatus::RemAccessErr,
                NakCode::RemoteOperationalError => WcStatus::RemOpErr,
                _ => WcStatus::RemInvReqErr,
            });
            self.resp.have_cur = false;
            let wc = self.recv_wc(self.resp.cur.wr_id, status);
            ctx.complete(self.recv_cq, wc, true);
        }
        self.enter_error(ctx, None);
        self.resp.queue_ack(psn, AethSyndrome::Nak(code));
    }

    /// Completes the receive WQE at the head of the RQ.
    fn complete_recv<M: Memory>(
        &mut self,
        ctx: &mut Ctx<'_, M>,
        opcode: WcOpcode,
        byte_len: Option<u64>,
        imm: Option<u32>,
        inv: Option<u32>,
        solicited: bool,
    ) {
        if !self.resp.have_cur {
            return;
        }
        self.resp.have_cur = false;
        let len = byte_len.or(self.resp.recv_offset).unwrap_or(0);
        let wc = Wc {
            wr_id: self.resp.cur.wr_id,
            status: WcStatus::Success,
            opcode,
            byte_len: len as u32,
            qp_num: self.qpn,
            src_qp: self.attrs.dest_qp,
            imm_data: imm,
            invalidated_rkey: inv,
            ip_version: None,
        };
        self.resp.recv_offset = None;
        self.resp.cq_overflow |= !ctx.complete(self.recv_cq, wc, solicited);
    }

    fn on_uc_request<M: Memory>(
        &mut self,
        ctx: &mut Ctx<'_, M>,
        pkt: &Packet<&[u8]>,
        repr: &PacketRepr,
    ) {
        let psn = repr.bth.psn;
        let op = repr.bth.opcode.0 & 0x1f;
        let info = pkt.info();
        let first = matches!(
            info.position,
            crate::wire::Position::First | crate::wire::Position::Only
        );
        let last = matches!(
            info.position,
            crate::wire::Position::Last | crate::wire::Position::Only
        );
        if psn != self.resp.psn || (self.resp.drop_msg && !first) {
            // A loss: abandon the message in progress and resynchronise on
            // the next first or only packet.
            self.resp.recv_offset = None;
            self.resp.write = None;
            self.resp.drop_msg = !first;
            self.resp.psn = psn_add(psn, 1);
            if !first {
                return;
            }
        }
        self.resp.drop_msg = false;
        self.resp.psn = psn_add(psn, 1);
        let in_send = self.resp.recv_offset.is_some();
        let in_write = self.resp.write.is_some();
        if in_send != continues_send(op) || in_write != continues_write(op) {
            self.resp.drop_msg = true;
            self.resp.recv_offset = None;
            self.resp.write = None;
            return;
        }
        if repr.check_mtu(self.attrs.path_mtu).is_err() {
            self.resp.drop_msg = true;
            return;
        }
        match op {
            0x00..=0x05 => {
                if first && !self.recv_available(ctx) {
                    self.resp.drop_msg = !last;
                    return;
                }
                if !self.place_send(ctx, pkt.payload(), first) {
                    return;
                }
                if last {
                    let imm = repr.ext.imm_dt.map(|i| i.imm);
                    self.complete_recv(ctx, WcOpcode::Recv, None, imm, None, repr.bth.solicited);
                }
            }
            0x06..=0x0b => {
                if !self.attrs.access.contains(Access::REMOTE_WRITE) {
                    self.resp.drop_msg = !last;
                    return;
                }
                let with_imm = matches!(op, 0x09 | 0x0b);
                if with_imm && !self.recv_available(ctx) {
                    self.resp.write = None;
                    return;
                }
                // A failed write has already dropped the message.
                let _ = self.write_message(ctx, repr, pkt.payload(), last, with_imm, false);
            }
            _ => {}
        }
    }

    fn on_ud_request<M: Memory>(
        &mut self,
        ctx: &mut Ctx<'_, M>,
        meta: &RxMeta<'_>,
        pkt: &Packet<&[u8]>,
        repr: &PacketRepr,
    ) {
        let Some(deth) = repr.ext.deth else { return };
        if deth.qkey != self.attrs.qkey {
            return; // Q_Key violation: silently dropped, as rxe does.
        }
        // The first 40 bytes of the receive buffer hold the GRH. A message
        // that does not fit is dropped without consuming the WQE (rxe,
        // class D).
        let data = pkt.payload();
        let total = 40 + data.len() as u64;
        if repr.check_mtu(self.attrs.path_mtu).is_err()
            || self.peek_recv_len(ctx).is_none_or(|len| total > len)
            || !self.take_recv(ctx)
        {
            return;
        }
        self.resp.have_cur = false;
        let w = &self.resp.cur;
        // The GRH area: an IPv6 header whole, or 20 zero bytes and then
        // the IPv4 header (rxe `rxe_resp.c`, send_data_in for UD).
        let mut grh = [0u8; 40];
        match meta.ip_header.len() {
            40 => grh.copy_from_slice(meta.ip_header),
            20 => grh[20..].copy_from_slice(meta.ip_header),
            _ => {}
        }
        if mr::scatter(ctx.mem, ctx.mrs, self.pd, &w.sges, 0, &grh).is_err()
            || mr::scatter(ctx.mem, ctx.mrs, self.pd, &w.sges, 40, data).is_err()
        {
            return;
        }
        let wc = Wc {
            wr_id: w.wr_id,
            status: WcStatus::Success,
            opcode: WcOpcode::Recv,
            byte_len: total as u32,
            qp_num: self.qpn,
            src_qp: deth.src_qp,
            imm_data: repr.ext.imm_dt.map(|i| i.imm),
            invalidated_rkey: None,
            ip_version: match meta.ip_header.len() {
                20 => Some(4),
                40 => Some(6),
                _ => None,
            },
        };
        self.resp.cq_overflow |= !ctx.complete(self.recv_cq, wc, repr.bth.solicited);
    }

    /// Builds the next responder packet (ACK, NAK, READ response or atomic
    /// ACK) into `buf`.
    pub(crate) fn poll_response<M: Memory>(
        &mut self,
        ctx: &mut Ctx<'_, M>,
        buf: &mut [u8],
        crc: &mut Option<u32>,
    ) -> Option<usize> {
        let item = *self.resp.out.front()?;
        let mut bth = BthRepr {
            opcode: Opcode(0x11),
            solicited: false,
            mig_req: false,
            pad_count: 0,
            pkey: DEFAULT_PKEY,
            fecn: false,
            becn: false,
            dest_qp: self.attrs.dest_qp,
            ack_req: false,
            psn: 0,
        };
        let mut ext = ExtHeaders::default();
        let mut payload = None;
        match item {
            RespOut::Ack { psn, syndrome, msn } => {
                match syndrome {
                    AethSyndrome::RnrNak { .. } => self.counters.send_rnr_err += 1,
                    AethSyndrome::Nak(_) => self.counters.send_nak += 1,
                    _ => {}
                }
                bth.psn = psn;
                ext.aeth = Some(AethRepr { syndrome, msn });
                self.resp.out.pop_front();
            }
            RespOut::Resource(slot) => match self.resp.resources[slot] {
                Resource::Atomic { psn, orig, msn } => {
                    bth.opcode = Opcode(0x12);
                    bth.psn = psn;
                    ext.aeth = Some(AethRepr { syndrome: ACK, msn });
                    ext.atomic_ack_eth = Some(AtomicAckEthRepr { orig });
                    self.resp.out.pop_front();
                }
                Resource::Done { psn, msn } => {
                    bth.opcode = Opcode(0x10);
                    bth.psn = psn;
                    ext.aeth = Some(AethRepr { syndrome: ACK, msn });
                    self.resp.out.pop_front();
                }
                Resource::Read {
                    first_psn,
                    va,
                    rkey,
                    len,
                    next_psn,
                    next_off,
                    msn,
                    ..
                } => {
                    let mtu = self.attrs.path_mtu.bytes() as u64;
                    if next_off > len {
                        // The path MTU changed under a replay: give up on it.
                        self.resp.out.pop_front();
                        return None;
                    }
                    let rem = len - next_off;
                    let n = rem.min(mtu);
                    let first = next_psn == first_psn;
                    let last = n == rem;
                    bth.opcode = Opcode(match (first, last) {
                        (true, true) => 0x10,
                        (true, false) => 0x0d,
                        (false, false) => 0x0e,
                        (false, true) => 0x0f,
                    });
                    bth.psn = next_psn;
                    if first || last {
                        ext.aeth = Some(AethRepr { syndrome: ACK, msn });
                    }
                    payload = Some((va.wrapping_add(next_off), rkey, n as usize));
                    if let Resource::Read {
                        next_psn, next_off, ..
                    } = &mut self.resp.resources[slot]
                    {
                        *next_psn = psn_add(*next_psn, 1);
                        *next_off += n;
                    }
                    if last {
                        self.resp.out.pop_front();
                    }
                }
                Resource::Free => {
                    self.resp.out.pop_front();
                    return None;
                }
            },
        }
        let repr = PacketRepr {
            bth,
            ext,
            payload_len: payload.map_or(0, |p| p.2),
        };
        repr.emit(buf).ok()?;
        if let Some((va, rkey, n)) = payload {
            let at = repr.header_len();
            // A large payload is copied and the packet's CRC register
            // computed in one pass.
            let (head, rest) = buf.split_at_mut(at);
            let read = if crate::crc::fused(n) {
                let reg = crate::wire::icrc::header_register(0, head).unwrap_or(0);
                ctx.mrs
                    .remote_read_crc(
                        &*ctx.mem,
                        rkey,
                        self.pd,
                        self.qpn,
                        Access::REMOTE_READ,
                        va,
                        &mut rest[..n],
                        reg,
                    )
                    .map(|reg| {
                        let pad = &rest[n..n + crate::wire::pad_len(n)];
                        *crc = Some(crate::crc::update(reg, pad));
                    })
            } else {
                ctx.mrs.remote_read(
                    &*ctx.mem,
                    rkey,
                    self.pd,
                    self.qpn,
                    Access::REMOTE_READ,
                    va,
                    &mut rest[..n],
                )
            };
            let ok = n == 0 || read.is_ok();
            if !ok {
                // The region went away under an ongoing READ: NAK, and the
                // QP goes to ERR as rxe's does.
                self.state = QpState::Err;
                self.resp.out.clear();
                let msn = self.resp.msn;
                let nak = PacketRepr {
                    bth: BthRepr {
                        opcode: Opcode(0x11),
                        ..bth
                    },
                    ext: ExtHeaders {
                        aeth: Some(AethRepr {
                            syndrome: AethSyndrome::Nak(NakCode::RemoteAccessError),
                            msn,
                        }),
                        ..Default::default()
                    },
                    payload_len: 0,
                };
                nak.emit(buf).ok()?;
                return Some(nak.buffer_len());
            }
        }
        Some(repr.buffer_len())
    }
}
