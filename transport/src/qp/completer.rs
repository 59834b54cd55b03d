//! The completer (rxe `rxe_comp.c`): consumes ACKs, NAKs, READ responses
//! and atomic ACKs, places READ data and atomic results, completes send
//! WQEs in order, and drives retries: go-back-N on a PSN sequence NAK or a
//! timeout (bounded by `retry_cnt`), and waiting out RNR NAKs (bounded by
//! `rnr_retry`, 7 meaning infinite).

use super::{Ctx, Qp, WqeState, psn_add, psn_diff};
use crate::{
    memory::Memory,
    mr,
    verbs::{QpState, SendOp, WcStatus},
    wire::{AethSyndrome, NakCode, Packet, PacketRepr},
};

impl Qp {
    /// Handles a response packet (ACK, READ response or atomic ACK).
    pub(crate) fn on_response<M: Memory>(
        &mut self,
        ctx: &mut Ctx<'_, M>,
        now: u64,
        pkt: &Packet<&[u8]>,
        repr: &PacketRepr,
    ) {
        if !matches!(self.state, QpState::Rts | QpState::Sqd | QpState::Sqe) {
            return;
        }
        let psn = repr.bth.psn;
        // Responses for PSNs we never sent, or already acknowledged, are
        // dropped (rxe: COMPST_DONE for duplicates and ghosts).
        if psn_diff(psn, self.req.max_psn) >= 0 {
            return;
        }
        let op = repr.bth.opcode.0 & 0x1f;
        match op {
            0x11 => self.on_ack(ctx, now, repr),
            0x0d..=0x10 => self.on_read_response(ctx, now, pkt, repr),
            0x12 => self.on_atomic_ack(ctx, now, repr),
            _ => {}
        }
    }

    fn on_ack<M: Memory>(&mut self, ctx: &mut Ctx<'_, M>, now: u64, repr: &PacketRepr) {
        let Some(aeth) = repr.ext.aeth else { return };
        let psn = repr.bth.psn;
        match aeth.syndrome {
            AethSyndrome::Ack { .. } => {
                if psn_diff(psn, self.comp.psn) < 0 {
                    return; // old ACK
                }
                self.ack_through(ctx, now, psn);
            }
            AethSyndrome::RnrNak { timer } => {
                if psn_diff(psn, self.comp.psn) < 0 {
                    return;
                }
                self.counters.rcvd_rnr_err += 1;
                self.ack_before(ctx, now, psn);
                if self.state != QpState::Rts && self.state != QpState::Sqd {
                    return;
                }
                if self.comp.rnr_left == 0 {
                    self.counters.rnr_nak_retry_err += 1;
                    self.enter_error(ctx, Some(WcStatus::RnrRetryExcErr));
                    return;
                }
                if self.comp.rnr_left != 7 {
                    self.comp.rnr_left -= 1;
                }
                // Like rxe (`req_retry`), restart from the oldest
                // unacknowledged PSN, whatever PSN a late RNR NAK names.
                let from = self.comp.psn;
                self.rewind_to(from);
                self.req.rnr_until = Some(now + super::rnr_timeout_ns(timer));
                self.comp.retrans_at = None;
            }
            AethSyndrome::Nak(code) => {
                if psn_diff(psn, self.comp.psn) < 0 {
                    return;
                }
                self.counters.rcvd_nak += 1;
                if code == NakCode::PsnSequenceError {
                    self.counters.rcvd_seq_err += 1;
                }
                self.ack_before(ctx, now, psn);
                if self.sq.len() == 0 {
                    return;
                }
                let status = match code {
                    NakCode::PsnSequenceError => {
                        let from = self.comp.psn;
                        self.retry(ctx, now, from);
                        return;
                    }
                    NakCode::InvalidRequest => WcStatus::RemInvReqErr,
                    NakCode::RemoteAccessError => WcStatus::RemAccessErr,
                    // rxe `check_ack`: anything else is a remote operational
                    // error.
                    NakCode::RemoteOperationalError
                    | NakCode::InvalidRdRequest
                    | NakCode::Reserved(_) => WcStatus::RemOpErr,
                };
                // The error belongs to the WQE that holds the NAK's PSN. If
                // the head WQE ends before it (a READ or atomic whose
                // response is missing), retry instead (rxe `check_psn`).
                let w = self.sq.at(self.sq.head);
                let holds = w.sent_once || w.state != WqeState::Posted;
                let in_head = holds
                    && psn_diff(psn, w.first_psn) >= 0
                    && (!w.sent_once || psn_diff(psn, w.last_psn) <= 0);
                if !in_head {
                    let from = self.comp.psn;
                    self.retry(ctx, now, from);
                    return;
                }
                self.enter_error(ctx, Some(status));
            }
            AethSyndrome::Reserved(_) => {}
        }
    }

    /// An ACK for `psn`: every WQE whose last PSN is at or before it is
    /// done, unless it is a READ or atomic whose response we have not seen,
    /// in which case that response was lost and we go back for it.
    fn ack_through<M: Memory>(&mut self, ctx: &mut Ctx<'_, M>, now: u64, psn: u32) {
        let mut progressed = false;
        while self.sq.head < self.sq.tail {
            let w = self.sq.at(self.sq.head);
            if !w.sent_once {
                break;
            }
            let covered = psn_diff(psn, w.last_psn) >= 0;
            if w.op.is_read_or_atomic() {
                if covered && w.state == WqeState::Sent {
                    // The ACK passes a READ/atomic whose response is missing.
                    let from = self.comp.psn;
                    self.retry(ctx, now, from);
                    return;
                }
                break;
            }
            if !covered {
                break;
            }
            self.complete_head(ctx, WcStatus::Success);
            progressed = true;
        }
        // A partial ACK of a SEND or WRITE moves the oldest unacknowledged
        // PSN, but never past a READ or atomic still waiting for its
        // response, nor past what the requester has sent since a rewind.
        let head_is_rd =
            self.sq.head < self.sq.tail && self.sq.at(self.sq.head).op.is_read_or_atomic();
        let next = psn_add(psn, 1);
        if !head_is_rd && psn_diff(next, self.comp.psn) > 0 && psn_diff(next, self.req.psn) <= 0 {
            self.comp.psn = next;
            progressed = true;
        }
        if progressed {
            self.on_progress(now);
        }
    }

    /// Implicit acknowledgement of everything before `psn` (carried by a
    /// NAK or an RNR NAK).
    fn ack_before<M: Memory>(&mut self, ctx: &mut Ctx<'_, M>, now: u64, psn: u32) {
        if psn_diff(psn, self.comp.psn) > 0 {
            self.ack_through(ctx, now, psn_add(psn, 0xff_ffff));
        }
    }

    fn on_read_response<M: Memory>(
        &mut self,
        ctx: &mut Ctx<'_, M>,
        now: u64,
        pkt: &Packet<&[u8]>,
        repr: &PacketRepr,
    ) {
        let psn = repr.bth.psn;
        let d = psn_diff(psn, self.comp.psn);
        if d < 0 {
            // A duplicate. If it belongs to the READ we wait on, the
            // responder is busy replaying it (perhaps for an earlier
            // request of ours): asking again now would only queue another
            // replay behind this one.
            if self.head_read_holds(psn) {
                self.keep_waiting(now);
            }
            return;
        }
        // Complete the SENDs and WRITEs before the READ: the response
        // implies their ACK.
        self.ack_before(ctx, now, psn);
        if self.sq.head >= self.sq.tail {
            return;
        }
        let head = self.sq.head;
        let w = self.sq.at(head);
        if w.op.is_read_response_acked() && w.sent_once {
            // ATOMIC_WRITE and FLUSH: one empty READ response ONLY.
            let op = repr.bth.opcode.0 & 0x1f;
            if psn != w.first_psn {
                self.retry(ctx, now, self.comp.psn);
                return;
            }
            if op != 0x10 || !pkt.payload().is_empty() {
                self.enter_error(ctx, Some(WcStatus::BadRespErr));
                return;
            }
            self.comp.psn = psn_add(psn, 1);
            self.req.rd_inflight = self.req.rd_inflight.saturating_sub(1);
            self.complete_head(ctx, WcStatus::Success);
            self.on_progress(now);
            return;
        }
        if w.op != SendOp::Read || !w.sent_once {
            return;
        }
        if psn != self.comp.psn {
            // A response went missing: go back for it, once per replay.
            // The responder streams every replay to the READ's last PSN,
            // so after asking we wait for the end of the replay we asked
            // for (or the timer) before asking again.
            let end = psn == w.last_psn;
            self.keep_waiting(now);
            let ask = match self.comp.replay_from {
                None => true,
                Some(_) => self.comp.replay_started && end,
            };
            if ask {
                let from = self.comp.psn;
                let again = self.comp.replay_from.is_some();
                self.comp.replay_from = Some(from);
                self.comp.replay_started = false;
                self.retry_inner(ctx, now, from, again);
            }
            return;
        }
        if self.comp.replay_from == Some(psn) {
            self.comp.replay_started = true;
        }
        let op = repr.bth.opcode.0 & 0x1f;
        let first_expected = w.read_done == 0 && psn == w.first_psn;
        let is_first = matches!(op, 0x0d | 0x10);
        if is_first != first_expected && !(w.read_done > 0 && op == 0x10) {
            // Opcode out of sequence for this READ: bad response.
            self.enter_error(ctx, Some(WcStatus::BadRespErr));
            return;
        }
        if let Some(aeth) = repr.ext.aeth
            && let AethSyndrome::Nak(_) = aeth.syndrome
        {
            self.enter_error(ctx, Some(WcStatus::BadRespErr));
            return;
        }
        let data = pkt.payload();
        let remaining = w.len - w.read_done;
        let last = matches!(op, 0x0f | 0x10);
        let mtu = self.attrs.path_mtu.bytes() as u64;
        let ok_len = if last {
            data.len() as u64 == remaining
        } else {
            data.len() as u64 == mtu && remaining > mtu
        };
        if !ok_len {
            self.enter_error(ctx, Some(WcStatus::BadRespErr));
            return;
        }
        let offset = w.read_done;
        if mr::scatter(ctx.mem, ctx.mrs, self.pd, &w.sges, offset, data).is_err() {
            self.enter_error(ctx, Some(WcStatus::LocProtErr));
            return;
        }
        let w = self.sq.at_mut(head);
        w.read_done += data.len() as u64;
        self.comp.psn = psn_add(psn, 1);
        if last {
            self.req.rd_inflight = self.req.rd_inflight.saturating_sub(1);
            self.complete_head(ctx, WcStatus::Success);
        }
        self.on_progress(now);
    }

    fn on_atomic_ack<M: Memory>(&mut self, ctx: &mut Ctx<'_, M>, now: u64, repr: &PacketRepr) {
        let psn = repr.bth.psn;
        if psn_diff(psn, self.comp.psn) < 0 {
            return;
        }
        self.ack_before(ctx, now, psn);
        if self.sq.head >= self.sq.tail {
            return;
        }
        let w = self.sq.at(self.sq.head);
        if !w.op.is_atomic() || !w.sent_once {
            return;
        }
        if psn != w.first_psn {
            self.retry(ctx, now, self.comp.psn);
            return;
        }
        let Some(orig) = repr.ext.atomic_ack_eth else {
            return;
        };
        // The original value lands in the local buffer in host order.
        let bytes = orig.orig.to_ne_bytes();
        if mr::scatter(ctx.mem, ctx.mrs, self.pd, &w.sges, 0, &bytes).is_err() {
            self.enter_error(ctx, Some(WcStatus::LocProtErr));
            return;
        }
        self.comp.psn = psn_add(psn, 1);
        self.req.rd_inflight = self.req.rd_inflight.saturating_sub(1);
        self.complete_head(ctx, WcStatus::Success);
        self.on_progress(now);
    }

    /// Completes the oldest send WQE.
    fn complete_head<M: Memory>(&mut self, ctx: &mut Ctx<'_, M>, status: WcStatus) {
        let w = self.sq.at(self.sq.head);
        if self.signals(w) || status != WcStatus::Success {
            let wc = self.send_wc(w, status);
            ctx.complete(self.send_cq, wc, false);
        }
        if psn_diff(psn_add(w.last_psn, 1), self.comp.psn) > 0 {
            self.comp.psn = psn_add(w.last_psn, 1);
        }
        self.sq.head += 1;
        self.comp.replay_from = None;
        if self.req.idx < self.sq.head {
            // The requester had been rewound to this WQE: skip past it.
            self.req.idx = self.sq.head;
            self.req.offset = 0;
            self.req.psn = self.comp.psn;
        }
        self.complete_ready_heads(ctx);
        if self.state == QpState::Sqd && self.sq.head == self.req.idx && !self.req.drained_sent {
            self.req.drained_sent = true;
            ctx.events
                .push_back(crate::verbs::AsyncEvent::SqDrained(self.qpn));
        }
    }

    /// Completes the local operations at the head of the send queue, and
    /// reports a WQE that failed locally once everything before it has
    /// completed.
    pub(crate) fn complete_ready_heads<M: Memory>(&mut self, ctx: &mut Ctx<'_, M>) {
        while self.sq.head < self.sq.tail && self.state != QpState::Err {
            let w = self.sq.at(self.sq.head);
            if let Some(status) = w.error {
                self.enter_error(ctx, Some(status));
                return;
            }
            if !w.local_done {
                return;
            }
            if self.signals(w) {
                let wc = self.send_wc(w, WcStatus::Success);
                ctx.complete(self.send_cq, wc, false);
            }
            self.sq.head += 1;
        }
    }

    /// Whether `psn` lies within the READ at the head of the send queue.
    fn head_read_holds(&self, psn: u32) -> bool {
        if self.sq.head >= self.sq.tail {
            return false;
        }
        let w = self.sq.at(self.sq.head);
        w.op == SendOp::Read
            && w.sent_once
            && psn_diff(psn, w.first_psn) >= 0
            && psn_diff(psn, w.last_psn) <= 0
    }

    /// A response shows the responder at work on what we wait for:
    /// restart the retransmit timer, without refilling the retry budget,
    /// but never past [`super::MAX_HOLD`] timeouts since it was armed (a
    /// peer that only replays what we have must not hold us forever).
    fn keep_waiting(&mut self, now: u64) {
        if self.comp.retrans_at.is_none() {
            return;
        }
        if let Some(t) = self.retrans_timeout_ns() {
            let limit = self.comp.armed_at.saturating_add(super::MAX_HOLD * t);
            self.comp.retrans_at = Some((now + t).min(limit).max(now));
        }
    }

    /// Forward progress: refill the retry budget and restart the timer.
    fn on_progress(&mut self, now: u64) {
        self.comp.retry_left = self.attrs.retry_cnt;
        self.comp.rnr_left = self.attrs.rnr_retry;
        self.comp.started_retry = false;
        self.comp.armed_at = now;
        self.comp.retrans_at = if psn_diff(self.req.psn, self.comp.psn) > 0 {
            self.retrans_timeout_ns().map(|t| now + t)
        } else {
            None
        };
    }

    /// Go-back-N from `psn`, counting against `retry_cnt` (7 meaning
    /// infinite, as in rxe). Once a retry has started, only a timeout
    /// starts another before progress is made (rxe `started_retry`).
    pub(crate) fn retry<M: Memory>(&mut self, ctx: &mut Ctx<'_, M>, now: u64, psn: u32) {
        self.retry_inner(ctx, now, psn, false);
    }

    fn retry_inner<M: Memory>(&mut self, ctx: &mut Ctx<'_, M>, now: u64, psn: u32, timeout: bool) {
        if self.comp.started_retry && !timeout {
            return;
        }
        if self.comp.retry_left == 0 {
            self.counters.retry_exceeded_err += 1;
            self.enter_error(ctx, Some(WcStatus::RetryExcErr));
            return;
        }
        if self.comp.retry_left != 7 {
            self.comp.retry_left -= 1;
        }
        self.counters.completer_retry_err += 1;
        self.comp.started_retry = true;
        self.rewind_to(psn);
        self.comp.armed_at = now;
        self.comp.retrans_at = self.retrans_timeout_ns().map(|t| now + t);
    }

    /// Timer expiry for this QP.
    pub(crate) fn on_timeout<M: Memory>(&mut self, ctx: &mut Ctx<'_, M>, now: u64) {
        if let Some(t) = self.comp.retrans_at
            && now >= t
        {
            self.comp.retrans_at = None;
            if psn_diff(self.req.psn, self.comp.psn) > 0
                && matches!(self.state, QpState::Rts | QpState::Sqd)
            {
                let psn = self.comp.psn;
                self.retry_inner(ctx, now, psn, true);
                // Whatever replay we asked for before is given up on; the
                // one just asked for is the one to wait for.
                self.comp.replay_from = self.head_read_holds(psn).then_some(psn);
                self.comp.replay_started = false;
            }
        }
    }
}
