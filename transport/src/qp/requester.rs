//! The requester (rxe `rxe_req.c`): turns the send queue into request
//! packets. It segments SENDs and WRITEs by the path MTU, asks for an ACK
//! at the end of each message and every `max_pkt_per_ack` packets, keeps
//! at most `max_unacked_psns` PSNs outstanding, honours fences and
//! `max_rd_atomic`, pauses after an RNR NAK, and rewinds for go-back-N.

use super::{Ctx, Qp, WqeState, packets_for, psn_add, psn_diff};
use crate::{
    memory::Memory,
    mr,
    verbs::{QpState, QpType, SendOp, WcStatus},
    wire::{
        AtomicEthRepr, BthRepr, DEFAULT_PKEY, DethRepr, ExtHeaders, IethRepr, ImmDtRepr, Opcode,
        PacketRepr, RethRepr, icrc, pad_len,
    },
};

/// What one call of the requester produced.
pub(crate) struct Request {
    /// Bytes of the transport packet written (BTH..ICRC).
    pub len: usize,
    /// Destination QP (UD: from the WR).
    pub dest_qp: u32,
    /// UD destination, if any.
    pub ud: Option<crate::verbs::UdDest>,
    /// The CRC register of the packet without its ICRC, from zero, where
    /// it was computed while a large payload was copied.
    pub crc: Option<u32>,
}

/// Opcode of a SEND or WRITE packet by position.
fn data_opcode(op: SendOp, first: bool, last: bool) -> u8 {
    let base = match op {
        SendOp::Write | SendOp::WriteWithImm(_) => 0x06,
        _ => 0x00,
    };
    match (op, first, last) {
        (SendOp::Write | SendOp::WriteWithImm(_), true, false) => base,
        (SendOp::Write | SendOp::WriteWithImm(_), false, false) => 0x07,
        (SendOp::Write, false, true) => 0x08,
        (SendOp::WriteWithImm(_), false, true) => 0x09,
        (SendOp::Write, true, true) => 0x0a,
        (SendOp::WriteWithImm(_), true, true) => 0x0b,
        (_, true, false) => 0x00,
        (_, false, false) => 0x01,
        (SendOp::SendWithImm(_), false, true) => 0x03,
        (SendOp::SendWithInv(_), false, true) => 0x16,
        (_, false, true) => 0x02,
        (SendOp::SendWithImm(_), true, true) => 0x05,
        (SendOp::SendWithInv(_), true, true) => 0x17,
        (_, true, true) => 0x04,
    }
}

impl Qp {
    /// Builds the next request packet into `buf`, if the send queue has
    /// one ready and the windows allow it.
    pub(crate) fn poll_request<M: Memory>(
        &mut self,
        ctx: &mut Ctx<'_, M>,
        now: u64,
        buf: &mut [u8],
    ) -> Option<Request> {
        if !matches!(self.state, QpState::Rts | QpState::Sqd) || self.req.halted {
            return None;
        }
        if let Some(t) = self.req.rnr_until {
            if now < t {
                return None;
            }
            self.req.rnr_until = None;
        }
        // Local operations run in order with the sends, and put nothing on
        // the wire.
        while self.req.idx < self.sq.tail && self.sq.at(self.req.idx).op.is_local() {
            if self.state == QpState::Sqd && !self.sq.at(self.req.idx).local_done {
                return None;
            }
            self.run_local_op(ctx);
            if self.state == QpState::Err {
                return None;
            }
        }
        if self.req.idx >= self.sq.tail {
            return None;
        }
        let reliable = self.qp_type == QpType::Rc;
        if reliable && psn_diff(self.req.psn, self.comp.psn) >= ctx.attrs.max_unacked_psns as i32 {
            return None;
        }
        let idx = self.req.idx;
        let w = self.sq.at(idx);
        let starting = self.req.offset == 0 && w.state == WqeState::Posted;
        if self.state == QpState::Sqd && starting && !w.started {
            // SQD finishes what is under way and starts nothing new.
            return None;
        }
        if reliable && w.fence && self.req.rd_inflight > 0 && starting {
            return None;
        }
        if reliable
            && w.op.is_read_or_atomic()
            && !w.rd_counted
            && self.req.rd_inflight >= u32::from(self.attrs.max_rd_atomic)
        {
            return None;
        }
        let mtu = self.attrs.path_mtu;
        let psn = self.req.psn;
        let (op, len, remote, rkey) = (w.op, w.len, w.remote_addr, w.rkey);
        let offset = self.req.offset;
        let dest_qp = w.ud.map_or(self.attrs.dest_qp, |u| u.remote_qpn);
        let ud = w.ud;

        let mut bth = BthRepr {
            opcode: Opcode(0),
            solicited: false,
            mig_req: false,
            pad_count: 0,
            pkey: DEFAULT_PKEY,
            fecn: false,
            becn: false,
            dest_qp,
            ack_req: false,
            psn,
        };
        let mut ext = ExtHeaders::default();
        let transport_bits: u8 = match self.qp_type {
            QpType::Rc => 0x00,
            QpType::Uc => 0x20,
            QpType::Ud | QpType::Gsi => 0x60,
        };
        let (payload_len, npkts, last) = match op {
            SendOp::Read => {
                let remaining = len - offset;
                ext.reth = Some(RethRepr {
                    va: remote.wrapping_add(offset),
                    rkey,
                    dma_len: remaining as u32,
                });
                bth.opcode = Opcode(0x0c);
                bth.ack_req = true;
                (0usize, packets_for(remaining, mtu), true)
            }
            SendOp::CmpSwap { compare, swap } => {
                ext.atomic_eth = Some(AtomicEthRepr {
                    va: remote,
                    rkey,
                    swap_add: swap,
                    compare,
                });
                bth.opcode = Opcode(0x13);
                bth.ack_req = true;
                (0, 1, true)
            }
            SendOp::AtomicWrite(_) => {
                ext.reth = Some(RethRepr {
                    va: remote,
                    rkey,
                    dma_len: 8,
                });
                bth.opcode = Opcode(0x1d);
                bth.ack_req = true;
                (8, 1, true)
            }
            SendOp::Flush {
                len: flen,
                placement_type,
                selectivity_level,
            } => {
                ext.feth = Some(crate::wire::FethRepr {
                    placement_type,
                    selectivity_level,
                });
                ext.reth = Some(RethRepr {
                    va: remote,
                    rkey,
                    dma_len: flen,
                });
                bth.opcode = Opcode(0x1c);
                bth.ack_req = true;
                (0, 1, true)
            }
            SendOp::FetchAdd { add } => {
                ext.atomic_eth = Some(AtomicEthRepr {
                    va: remote,
                    rkey,
                    swap_add: add,
                    compare: 0,
                });
                bth.opcode = Opcode(0x14);
                bth.ack_req = true;
                (0, 1, true)
            }
            _ => {
                let remaining = len - offset;
                let n = remaining.min(mtu.bytes() as u64) as usize;
                let first = offset == 0;
                let last = n as u64 == remaining;
                bth.opcode = Opcode(data_opcode(op, first, last) | transport_bits);
                if matches!(op, SendOp::Write | SendOp::WriteWithImm(_)) && first {
                    ext.reth = Some(RethRepr {
                        va: remote,
                        rkey,
                        dma_len: len as u32,
                    });
                }
                if last {
                    match op {
                        SendOp::SendWithImm(imm) | SendOp::WriteWithImm(imm) => {
                            ext.imm_dt = Some(ImmDtRepr { imm });
                        }
                        SendOp::SendWithInv(key) => ext.ieth = Some(IethRepr { rkey: key }),
                        _ => {}
                    }
                    // SE only on SEND and WRITE with immediate (rxe).
                    bth.solicited = w.solicited && !matches!(op, SendOp::Write);
                }
                if let Some(u) = ud {
                    let qkey = if u.remote_qkey & 0x8000_0000 != 0 {
                        self.attrs.qkey
                    } else {
                        u.remote_qkey
                    };
                    ext.deth = Some(DethRepr {
                        qkey,
                        src_qp: self.qpn,
                    });
                }
                self.req.noack_pkts += 1;
                bth.ack_req =
                    reliable && (last || self.req.noack_pkts >= ctx.attrs.max_pkt_per_ack);
                (n, 1, last)
            }
        };
        if bth.ack_req {
            self.req.noack_pkts = 0;
        }
        let repr = PacketRepr {
            bth,
            ext,
            payload_len,
        };
        if repr.buffer_len() > buf.len() || repr.emit(buf).is_err() {
            return None;
        }
        let mut crc = None;
        if payload_len > 0 {
            let at = repr.header_len();
            let (head, rest) = buf.split_at_mut(at);
            let dst = &mut rest[..payload_len];
            let w = self.sq.at(idx);
            let res = if let SendOp::AtomicWrite(v) = w.op {
                dst.copy_from_slice(&v.to_ne_bytes());
                Ok(())
            } else if w.is_inline {
                let o = offset as usize;
                dst.copy_from_slice(&w.inline_data[o..o + payload_len]);
                Ok(())
            } else if !crate::crc::fused(payload_len) {
                mr::gather(&*ctx.mem, ctx.mrs, self.pd, &w.sges, offset, dst)
            } else {
                // Copy the payload and compute the packet's CRC register
                // in one pass (the link only adds its headers' part).
                let reg = icrc::header_register(0, head).unwrap_or(0);
                mr::gather_crc(&*ctx.mem, ctx.mrs, self.pd, &w.sges, offset, dst, reg).map(|reg| {
                    let pad = pad_len(payload_len);
                    crc = Some(crate::crc::update(
                        reg,
                        &rest[payload_len..payload_len + pad],
                    ));
                })
            };
            if res.is_err() {
                // A bad lkey: the WQE completes with a protection error and
                // the QP goes to ERR, as rxe does, but only after the WQEs
                // before it have completed.
                if idx == self.sq.head {
                    self.enter_error(ctx, Some(WcStatus::LocProtErr));
                } else {
                    self.sq.at_mut(idx).error = Some(WcStatus::LocProtErr);
                    self.req.halted = true;
                }
                return None;
            }
        }
        let len_out = repr.buffer_len();

        // Advance.
        let w = self.sq.at_mut(idx);
        if w.state == WqeState::Posted {
            w.first_psn = psn;
            w.state = WqeState::Sending;
            w.started = true;
        }
        if w.op.is_read_or_atomic() && !w.rd_counted {
            w.rd_counted = true;
            self.req.rd_inflight += 1;
        }
        self.req.psn = psn_add(psn, npkts);
        if psn_diff(self.req.psn, self.req.max_psn) > 0 {
            self.req.max_psn = self.req.psn;
        }
        if last {
            w.last_psn = psn_add(psn, npkts - 1);
            w.sent_once = true;
            w.state = WqeState::Sent;
            self.req.idx += 1;
            self.req.offset = 0;
        } else {
            self.req.offset += payload_len as u64;
        }
        if reliable {
            if self.comp.retrans_at.is_none() {
                self.comp.armed_at = now;
                self.comp.retrans_at = self.retrans_timeout_ns().map(|t| now + t);
            }
        } else if last {
            // UC and UD complete a WQE once it is on the wire.
            self.complete_unreliable_head(ctx);
        }
        Some(Request {
            len: len_out,
            dest_qp,
            ud,
            crc,
        })
    }

    /// Completes the oldest WQE of a UC/UD QP after its last packet left.
    fn complete_unreliable_head<M: Memory>(&mut self, ctx: &mut Ctx<'_, M>) {
        let w = self.sq.at(self.sq.head);
        if self.signals(w) {
            let wc = self.send_wc(w, WcStatus::Success);
            ctx.complete(self.send_cq, wc, false);
        }
        self.sq.head += 1;
    }

    /// Executes the local operation at `req.idx` (once) and moves on.
    fn run_local_op<M: Memory>(&mut self, ctx: &mut Ctx<'_, M>) {
        let idx = self.req.idx;
        let (op, done) = {
            let w = self.sq.at(idx);
            (w.op, w.local_done)
        };
        if !done {
            let ok = match op {
                SendOp::RegMr { key, access } => {
                    let pd = self.pd;
                    match ctx.mrs.by_index_mut(key) {
                        Some((slot_key, mr))
                            if matches!(mr.kind, crate::mr::MrKind::FastReg { .. })
                                && !mr.valid
                                && mr.pd == pd
                                && crate::verbs::Access::ALL.contains(access) =>
                        {
                            *slot_key = key as u8;
                            mr.access = access;
                            mr.valid = true;
                            true
                        }
                        _ => false,
                    }
                }
                SendOp::LocalInv { key } => ctx.mrs.invalidate(key, self.pd, self.qpn),
                SendOp::BindMw { .. } => self.bind_mw(ctx, op),
                _ => true,
            };
            let psn = self.req.psn;
            let w = self.sq.at_mut(idx);
            w.local_done = true;
            w.sent_once = true;
            w.started = true;
            w.state = WqeState::Sent;
            w.first_psn = psn;
            w.last_psn = psn_add(psn, 0xff_ffff);
            if !ok {
                w.error = Some(match op {
                    SendOp::BindMw { .. } => WcStatus::MwBindErr,
                    _ => WcStatus::LocQpOpErr,
                });
            }
        }
        self.req.idx += 1;
        self.req.offset = 0;
        self.complete_ready_heads(ctx);
    }

    /// Binds a memory window (rxe `rxe_bind_mw` checks): the MR must be
    /// valid, of this PD, grant MW_BIND and contain the range; the window
    /// grants only remote access, and remote write or atomic access needs
    /// local write on the MR; a type 2 window must be free.
    fn bind_mw<M: Memory>(&mut self, ctx: &mut Ctx<'_, M>, op: SendOp) -> bool {
        use crate::{mr::MrKind, verbs::Access};
        let SendOp::BindMw {
            mw,
            mr,
            addr,
            len,
            access,
        } = op
        else {
            return false;
        };
        let remote = Access::REMOTE_READ
            .with(Access::REMOTE_WRITE)
            .with(Access::REMOTE_ATOMIC);
        if !remote.contains(access) {
            return false;
        }
        let mr_ok = ctx.mrs.get(mr).is_some_and(|m| {
            m.valid
                && m.pd == self.pd
                && !matches!(m.kind, MrKind::Mw { .. })
                && m.access.contains(Access::MW_BIND)
                && addr >= m.iova
                && addr
                    .checked_add(len)
                    .is_some_and(|end| end <= m.iova + m.length)
                && (!(access.contains(Access::REMOTE_WRITE)
                    || access.contains(Access::REMOTE_ATOMIC))
                    || m.access.contains(Access::LOCAL_WRITE))
        });
        if !mr_ok {
            return false;
        }
        let (pd, qpn) = (self.pd, self.qpn);
        let Some((slot_key, w)) = ctx.mrs.by_index_mut(mw) else {
            return false;
        };
        let MrKind::Mw { mw_type, .. } = w.kind else {
            return false;
        };
        if w.pd != pd || (mw_type == 2 && (w.valid || len == 0)) {
            return false;
        }
        *slot_key = mw as u8;
        w.iova = addr;
        w.length = len;
        w.access = access;
        w.valid = len > 0;
        w.kind = MrKind::Mw {
            mw_type,
            mr_key: mr,
            qpn: if mw_type == 2 { qpn } else { 0 },
        };
        true
    }

    /// Go-back-N: resume sending from PSN `psn`, which lies within the
    /// outstanding WQEs.
    pub(crate) fn rewind_to(&mut self, psn: u32) {
        if psn_diff(psn, self.req.psn) >= 0 {
            return; // nothing sent at or after it
        }
        let mtu = self.attrs.path_mtu.bytes() as u64;
        let mut i = self.sq.head;
        while i < self.req.idx || (i == self.req.idx && self.req.offset > 0) {
            let w = self.sq.at(i);
            let in_wqe = w.state != WqeState::Posted
                && psn_diff(psn, w.first_psn) >= 0
                && (w.state == WqeState::Sending || psn_diff(psn, w.last_psn) <= 0);
            if in_wqe {
                let off = u64::from(psn_diff(psn, w.first_psn) as u32) * mtu;
                let off = match w.op {
                    SendOp::CmpSwap { .. }
                    | SendOp::FetchAdd { .. }
                    | SendOp::AtomicWrite(_)
                    | SendOp::Flush { .. } => 0,
                    _ => off.min(w.len),
                };
                // Everything after it is sent again from scratch.
                let mut j = i + 1;
                while j < self.sq.tail && j <= self.req.idx {
                    let later = self.sq.at_mut(j);
                    if !later.local_done {
                        later.state = WqeState::Posted;
                    }
                    j += 1;
                }
                // Resumed mid-message it keeps its first PSN; from the
                // start it is posted again.
                self.sq.at_mut(i).state = if off == 0 {
                    WqeState::Posted
                } else {
                    WqeState::Sending
                };
                self.req.idx = i;
                self.req.offset = off;
                self.req.psn = psn;
                self.req.noack_pkts = 0;
                return;
            }
            i += 1;
        }
        // Nothing outstanding contains it: resume where the requester is.
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opcodes_by_position() {
        assert_eq!(data_opcode(SendOp::Send, true, true), 0x04);
        assert_eq!(data_opcode(SendOp::Send, true, false), 0x00);
        assert_eq!(data_opcode(SendOp::Send, false, false), 0x01);
        assert_eq!(data_opcode(SendOp::Send, false, true), 0x02);
        assert_eq!(data_opcode(SendOp::SendWithImm(1), false, true), 0x03);
        assert_eq!(data_opcode(SendOp::SendWithImm(1), true, true), 0x05);
        assert_eq!(data_opcode(SendOp::SendWithInv(1), false, true), 0x16);
        assert_eq!(data_opcode(SendOp::SendWithInv(1), true, true), 0x17);
        assert_eq!(data_opcode(SendOp::Write, true, false), 0x06);
        assert_eq!(data_opcode(SendOp::Write, false, false), 0x07);
        assert_eq!(data_opcode(SendOp::Write, false, true), 0x08);
        assert_eq!(data_opcode(SendOp::WriteWithImm(0), false, true), 0x09);
        assert_eq!(data_opcode(SendOp::Write, true, true), 0x0a);
        assert_eq!(data_opcode(SendOp::WriteWithImm(0), true, true), 0x0b);
    }
}
