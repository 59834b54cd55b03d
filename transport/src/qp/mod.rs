//! Queue pairs: the QP state, its attributes and state machine, and the
//! send and receive queues. The work is split as in Linux rxe:
//! [`requester`] turns send WQEs into request packets, [`completer`]
//! consumes ACKs and responses and completes send WQEs, and [`responder`]
//! executes incoming requests and produces ACKs and responses. This file
//! only holds the shared state and routes between them.

pub(crate) mod completer;
pub(crate) mod requester;
pub(crate) mod responder;
mod transition;

use std::collections::VecDeque;

use crate::{
    cq::{Cq, Pushed},
    device::DeviceAttrs,
    memory::Memory,
    mr::MrTable,
    verbs::{
        Access, AhAttr, AsyncEvent, CqNotification, QpAttr, QpCaps, QpState, QpType, SendOp, Sge,
        UdDest, VerbsError, Wc, WcOpcode, WcStatus,
    },
    wire::{Mtu, PSN_MASK},
};

/// SGE capacity reserved in every receive WQE slot, so that swapping WQEs
/// between a queue and a QP never allocates: the device's `max_sge`.
pub(crate) const RECV_SGE_CAPACITY: usize = 32;

/// Signed distance from PSN `b` to PSN `a` in 24-bit sequence space.
pub(crate) fn psn_diff(a: u32, b: u32) -> i32 {
    ((a.wrapping_sub(b)) << 8) as i32 >> 8
}

/// `psn + n` modulo 2^24.
pub(crate) fn psn_add(psn: u32, n: u32) -> u32 {
    psn.wrapping_add(n) & PSN_MASK
}

/// Packets needed to carry `len` bytes at `mtu` (at least one).
pub(crate) fn packets_for(len: u64, mtu: Mtu) -> u32 {
    let m = mtu.bytes() as u64;
    len.div_ceil(m).max(1) as u32
}

/// The RNR NAK timer values of IBTA table 45, in nanoseconds, by code.
pub(crate) fn rnr_timeout_ns(code: u8) -> u64 {
    const US_X100: [u64; 32] = [
        65_536, 1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512, 768, 1_024,
        1_536, 2_048, 3_072, 4_096, 6_144, 8_192, 12_288, 16_384, 24_576, 32_768, 49_152,
    ];
    // Codes 1..=31 are 0.01 ms × value; code 0 is 655.36 ms.
    US_X100[(code & 31) as usize] * 10_000
}

/// A fixed-capacity ring addressed by ever-increasing u64 counters. It
/// has a power-of-two number of slots (at least its capacity), so that a
/// counter finds its slot with a mask rather than a division (which the
/// send path did several times per packet).
#[derive(Debug, Clone)]
pub(crate) struct Ring<T> {
    pub slots: Vec<T>,
    cap: u64,
    pub head: u64,
    pub tail: u64,
}

impl<T: Default> Ring<T> {
    pub fn new(cap: usize) -> Ring<T> {
        let n = cap.checked_next_power_of_two().unwrap_or(cap).max(1);
        Ring {
            slots: (0..n).map(|_| T::default()).collect(),
            cap: cap as u64,
            head: 0,
            tail: 0,
        }
    }
}

impl<T> Ring<T> {
    pub fn len(&self) -> u64 {
        self.tail - self.head
    }
    pub fn capacity(&self) -> u64 {
        self.cap
    }
    pub fn is_full(&self) -> bool {
        self.len() >= self.cap
    }
    fn slot(&self, i: u64) -> usize {
        // At most `cap` counters are live, and `cap` <= the slot count,
        // so live counters never share a slot.
        (i & (self.slots.len() as u64 - 1)) as usize
    }
    pub fn at(&self, i: u64) -> &T {
        &self.slots[self.slot(i)]
    }
    pub fn at_mut(&mut self, i: u64) -> &mut T {
        let s = self.slot(i);
        &mut self.slots[s]
    }
}

/// Progress of a send WQE.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) enum WqeState {
    /// Not started, or rewound for a retry.
    #[default]
    Posted,
    /// Some packets sent.
    Sending,
    /// All packets sent; waiting for the ACK or response.
    Sent,
}

/// A send work queue element.
#[derive(Debug, Clone)]
pub(crate) struct SendWqe {
    pub wr_id: u64,
    pub op: SendOp,
    pub sges: Vec<Sge>,
    pub inline_data: Vec<u8>,
    pub is_inline: bool,
    pub signaled: bool,
    pub solicited: bool,
    pub fence: bool,
    pub remote_addr: u64,
    pub rkey: u32,
    pub ud: Option<UdDest>,
    pub len: u64,
    pub first_psn: u32,
    pub last_psn: u32,
    pub state: WqeState,
    /// Its last packet has been sent at least once, so `last_psn` is
    /// known even after a rewind.
    pub sent_once: bool,
    /// A local operation that has been executed.
    pub local_done: bool,
    /// Its first packet has been sent at least once (SQD finishes such
    /// WQEs and starts no others).
    pub started: bool,
    /// Counted against max_rd_atomic.
    pub rd_counted: bool,
    /// Bytes of the READ response placed so far.
    pub read_done: u64,
    /// The WQE failed locally (e.g. a bad lkey); it is reported with this
    /// status when it reaches the head of the queue.
    pub error: Option<WcStatus>,
}

impl Default for SendWqe {
    fn default() -> Self {
        SendWqe {
            wr_id: 0,
            op: SendOp::Send,
            sges: Vec::new(),
            inline_data: Vec::new(),
            is_inline: false,
            signaled: false,
            solicited: false,
            fence: false,
            remote_addr: 0,
            rkey: 0,
            ud: None,
            len: 0,
            first_psn: 0,
            last_psn: 0,
            state: WqeState::Posted,
            sent_once: false,
            local_done: false,
            started: false,
            rd_counted: false,
            read_done: 0,
            error: None,
        }
    }
}

/// A receive work queue element.
#[derive(Debug, Clone, Default)]
pub(crate) struct RecvWqe {
    pub wr_id: u64,
    pub sges: Vec<Sge>,
    pub len: u64,
}

/// What the engine lends a QP while it works: memory, MRs, CQs and the
/// event queues.
pub(crate) struct Ctx<'a, M: Memory> {
    pub mem: &'a mut M,
    pub mrs: &'a mut MrTable,
    pub cqs: &'a mut [Option<Cq>],
    pub srqs: &'a mut [Option<crate::srq::Srq>],
    pub events: &'a mut VecDeque<AsyncEvent>,
    pub notifications: &'a mut VecDeque<CqNotification>,
    pub attrs: &'a DeviceAttrs,
}

impl<M: Memory> Ctx<'_, M> {
    /// Posts a completion to CQ `cq`; a full CQ raises `CqErr` (once for
    /// consecutive losses) and loses it. Returns whether it was stored.
    /// As in rxe, only the responder acts on a loss (its QP goes to ERR);
    /// the requester's and the flushes' completions are lost with the
    /// event alone.
    pub fn complete(&mut self, cq: u32, wc: Wc, solicited: bool) -> bool {
        let Some(Some(q)) = self.cqs.get_mut(cq as usize) else {
            return false;
        };
        match q.push(wc, solicited) {
            Pushed::Stored { notify } => {
                if notify {
                    self.notifications.push_back(CqNotification(cq));
                }
                true
            }
            Pushed::Overflow => {
                // One event for a run of lost completions (a flush into a
                // full CQ loses one per WQE), so the queue stays short.
                if self.events.back() != Some(&AsyncEvent::CqErr(cq)) {
                    self.events.push_back(AsyncEvent::CqErr(cq));
                }
                false
            }
        }
    }
}

/// Requester state (rxe `qp->req`).
#[derive(Debug, Clone, Default)]
pub(crate) struct ReqState {
    /// Index of the WQE being sent.
    pub idx: u64,
    /// Bytes of that WQE already sent.
    pub offset: u64,
    /// Next PSN to send.
    pub psn: u32,
    /// One past the highest PSN ever sent: responses at or beyond it are
    /// ghosts.
    pub max_psn: u32,
    /// Packets sent since the last AckReq.
    pub noack_pkts: u32,
    /// READ and atomic WQEs outstanding.
    pub rd_inflight: u32,
    /// Requester paused by an RNR NAK until this time.
    pub rnr_until: Option<u64>,
    /// A WQE failed locally: send nothing more.
    pub halted: bool,
    /// The SQ-drained event for the current SQD was raised.
    pub drained_sent: bool,
}

/// Completer state (rxe `qp->comp`).
#[derive(Debug, Clone, Default)]
pub(crate) struct CompState {
    /// Oldest PSN not yet acknowledged.
    pub psn: u32,
    /// Transport retries left.
    pub retry_left: u8,
    /// RNR retries left (7: infinite).
    pub rnr_left: u8,
    /// Retransmit deadline.
    pub retrans_at: Option<u64>,
    /// A retry is under way: only a timeout may start another.
    pub started_retry: bool,
    /// We asked again for the responses of the READ at the head from this
    /// PSN on. The responder replays from there to the READ's end (rxe
    /// queues one whole replay per request), so further gaps wait for the
    /// end of that replay, or for the timer, before we ask once more.
    pub replay_from: Option<u32>,
    /// The response at `replay_from` has arrived since we asked: the
    /// stream now arriving is the replay we asked for, not the one that
    /// was already on its way.
    pub replay_started: bool,
    /// When the retransmit timer was last armed by progress or a retry:
    /// responses that only show the responder busy may hold it off for
    /// at most [`MAX_HOLD`] timeouts from then.
    pub armed_at: u64,
}

/// How many retransmit timeouts a stream of responses that makes no
/// progress (duplicates, or responses past a gap) may hold off a retry.
pub(crate) const MAX_HOLD: u64 = 8;

/// QP attributes as set by `modify_qp`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Attrs {
    pub access: Access,
    pub qkey: u32,
    pub path_mtu: Mtu,
    pub dest_qp: u32,
    pub max_rd_atomic: u8,
    pub max_dest_rd_atomic: u8,
    pub min_rnr_timer: u8,
    pub timeout: u8,
    pub retry_cnt: u8,
    pub rnr_retry: u8,
    pub ah: AhAttr,
    pub pkey_index: u16,
}

/// A queue pair.
#[derive(Debug)]
pub struct Qp {
    pub(crate) qpn: u32,
    pub(crate) qp_type: QpType,
    pub(crate) state: QpState,
    pub(crate) pd: u32,
    pub(crate) send_cq: u32,
    pub(crate) recv_cq: u32,
    pub(crate) srq: Option<u32>,
    pub(crate) sq_sig_all: bool,
    pub(crate) caps: QpCaps,
    pub(crate) attrs: Attrs,
    pub(crate) sq: Ring<SendWqe>,
    pub(crate) rq: Ring<RecvWqe>,
    pub(crate) req: ReqState,
    pub(crate) comp: CompState,
    pub(crate) resp: responder::RespState,
    /// An ECN-marked packet arrived: a CNP is owed to the sender.
    pub(crate) cnp_pending: bool,
    pub(crate) last_cnp_at: Option<u64>,
    /// This QP's event counters.
    pub(crate) counters: crate::counters::Counters,
}

impl Qp {
    /// This QP's counters, the responder's coalesced ACKs included.
    pub(crate) fn all_counters(&self) -> crate::counters::Counters {
        let mut c = self.counters;
        c.ack_deferred += self.resp.coalesced;
        c
    }

    pub(crate) fn new(
        qpn: u32,
        qp_type: QpType,
        pd: u32,
        (send_cq, recv_cq): (u32, u32),
        srq: Option<u32>,
        caps: QpCaps,
        sq_sig_all: bool,
    ) -> Qp {
        let mut sq: Ring<SendWqe> = Ring::new(caps.max_send_wr as usize);
        for w in &mut sq.slots {
            w.sges.reserve_exact(caps.max_send_sge as usize);
            w.inline_data.reserve_exact(caps.max_inline_data as usize);
        }
        let mut rq: Ring<RecvWqe> = Ring::new(caps.max_recv_wr as usize);
        for w in &mut rq.slots {
            w.sges.reserve_exact(RECV_SGE_CAPACITY);
        }
        Qp {
            qpn,
            qp_type,
            state: QpState::Reset,
            pd,
            send_cq,
            recv_cq,
            srq,
            sq_sig_all,
            caps,
            attrs: Attrs {
                access: Access(0),
                qkey: 0,
                path_mtu: Mtu::Mtu1024,
                dest_qp: 0,
                max_rd_atomic: 1,
                max_dest_rd_atomic: 1,
                min_rnr_timer: 0,
                timeout: 0,
                retry_cnt: 7,
                rnr_retry: 7,
                ah: AhAttr::default(),
                pkey_index: 0,
            },
            sq,
            rq,
            req: ReqState::default(),
            comp: CompState::default(),
            resp: responder::RespState::new(1),
            cnp_pending: false,
            last_cnp_at: None,
            counters: crate::counters::Counters::default(),
        }
    }

    /// The QP number.
    pub fn qpn(&self) -> u32 {
        self.qpn
    }

    /// Requester and completer progress, for diagnostics.
    pub fn debug_progress(&self) -> String {
        format!(
            "req {:?} comp {:?} sq head {} tail {} rq head {} tail {} resp psn {}",
            self.req,
            self.comp,
            self.sq.head,
            self.sq.tail,
            self.rq.head,
            self.rq.tail,
            self.resp.psn
        )
    }

    /// The current state.
    pub fn state(&self) -> QpState {
        self.state
    }

    /// The transport service.
    pub fn qp_type(&self) -> QpType {
        self.qp_type
    }

    /// The path MTU.
    pub fn path_mtu(&self) -> Mtu {
        self.attrs.path_mtu
    }

    /// Next PSN the requester will send.
    pub fn sq_psn(&self) -> u32 {
        self.req.psn
    }

    /// Next PSN the responder expects.
    pub fn rq_psn(&self) -> u32 {
        self.resp.psn
    }

    /// The connected peer's QP number (0 before RTR, and for UD).
    pub fn dest_qp(&self) -> u32 {
        self.attrs.dest_qp
    }

    /// Send work requests posted and not yet completed.
    pub fn sq_outstanding(&self) -> u64 {
        self.sq.len()
    }

    /// Receive work requests posted and not yet consumed (0 on an SRQ).
    pub fn rq_posted(&self) -> u64 {
        self.rq.len()
    }

    /// This QP's counters (see [`crate::counters`]).
    pub fn counters(&self) -> crate::counters::Counters {
        self.all_counters()
    }

    /// Applies `modify_qp`, validating the transition and the attributes
    /// it requires and allows ([`transition`]: IBTA 11.2.4.2, as rxe
    /// checks them through ib_core) and their ranges.
    pub(crate) fn modify(
        &mut self,
        a: &QpAttr,
        dev: &DeviceAttrs,
    ) -> Result<Option<QpState>, VerbsError> {
        use QpState::Reset;
        let from = self.state;
        let to = a.state.unwrap_or(from);
        let bad = |why| VerbsError::BadTransition { from, to, why };
        transition::check(from, a, self.qp_type).map_err(bad)?;
        if let Some(m) = a.path_mtu
            && m > dev.max_mtu
        {
            return Err(bad("path MTU above the port MTU"));
        }
        if let Some(n) = a.max_rd_atomic
            && u32::from(n) > dev.max_qp_init_rd_atom
        {
            return Err(bad("max_rd_atomic above the device limit"));
        }
        if let Some(n) = a.max_dest_rd_atomic
            && u32::from(n) > dev.max_qp_rd_atom
        {
            return Err(bad("max_dest_rd_atomic above the device limit"));
        }
        if a.retry_cnt.is_some_and(|r| r > 7) || a.rnr_retry.is_some_and(|r| r > 7) {
            return Err(bad("retry counts are 0..=7"));
        }
        if a.timeout.is_some_and(|t| t > 31) || a.min_rnr_timer.is_some_and(|t| t > 31) {
            return Err(bad("timer codes are 0..=31"));
        }
        if a.dest_qp_num.is_some_and(|q| q > crate::wire::QPN_MASK) {
            return Err(bad("QP numbers are 24 bits"));
        }
        if a.access.is_some_and(|x| !Access::ALL.contains(x)) {
            return Err(bad("unknown access flags"));
        }
        if a.pkey_index.is_some_and(|i| i >= dev.max_pkeys) {
            return Err(bad("pkey index out of range"));
        }

        let at = &mut self.attrs;
        if let Some(v) = a.access {
            at.access = v;
        }
        if let Some(v) = a.qkey {
            at.qkey = v;
        }
        if let Some(v) = a.path_mtu {
            at.path_mtu = v;
        }
        if let Some(v) = a.dest_qp_num {
            at.dest_qp = v;
        }
        if let Some(v) = a.max_rd_atomic {
            at.max_rd_atomic = v.max(1);
        }
        if let Some(v) = a.max_dest_rd_atomic {
            at.max_dest_rd_atomic = v;
            self.resp.resize(usize::from(v));
        }
        if let Some(v) = a.min_rnr_timer {
            at.min_rnr_timer = v;
        }
        if let Some(v) = a.timeout {
            at.timeout = v;
        }
        if let Some(v) = a.retry_cnt {
            at.retry_cnt = v;
            self.comp.retry_left = v;
        }
        if let Some(v) = a.rnr_retry {
            at.rnr_retry = v;
            self.comp.rnr_left = v;
        }
        if let Some(v) = a.ah {
            at.ah = v;
        }
        if let Some(v) = a.pkey_index {
            at.pkey_index = v;
        }
        if let Some(p) = a.rq_psn {
            self.resp.psn = p & PSN_MASK;
            self.resp.ack_psn = p & PSN_MASK;
        }
        if let Some(p) = a.sq_psn {
            self.req.psn = p & PSN_MASK;
            self.req.max_psn = p & PSN_MASK;
            self.comp.psn = p & PSN_MASK;
        }
        if to == Reset && from != Reset {
            self.reset();
        }
        self.state = to;
        Ok((from != to).then_some(to))
    }

    /// Back to RESET: empty queues, fresh state.
    fn reset(&mut self) {
        self.sq.head = 0;
        self.sq.tail = 0;
        self.rq.head = 0;
        self.rq.tail = 0;
        self.req = ReqState::default();
        self.comp = CompState {
            retry_left: self.attrs.retry_cnt,
            rnr_left: self.attrs.rnr_retry,
            ..CompState::default()
        };
        // Keep the coalesced-ACK count the old responder state held.
        self.counters.ack_deferred += self.resp.coalesced;
        self.resp = responder::RespState::new(usize::from(self.attrs.max_dest_rd_atomic.max(1)));
    }

    /// Whether a completion for this send WQE is generated.
    pub(crate) fn signals(&self, w: &SendWqe) -> bool {
        self.sq_sig_all || w.signaled
    }

    /// A receive completion with nothing but an identifier and a status.
    pub(crate) fn recv_wc(&self, wr_id: u64, status: WcStatus) -> Wc {
        Wc {
            wr_id,
            status,
            opcode: WcOpcode::Recv,
            byte_len: 0,
            qp_num: self.qpn,
            src_qp: 0,
            imm_data: None,
            invalidated_rkey: None,
            ip_version: None,
        }
    }

    /// Whether a receive WQE is available, from the SRQ or the RQ.
    pub(crate) fn recv_available<M: Memory>(&self, ctx: &Ctx<'_, M>) -> bool {
        if self.resp.have_cur {
            return true;
        }
        match self.srq {
            Some(h) => ctx
                .srqs
                .get(h as usize)
                .and_then(Option::as_ref)
                .is_some_and(|s| !s.is_empty()),
            None => self.rq.len() > 0,
        }
    }

    /// Length of the next receive WQE, if there is one.
    pub(crate) fn peek_recv_len<M: Memory>(&self, ctx: &Ctx<'_, M>) -> Option<u64> {
        if self.resp.have_cur {
            return Some(self.resp.cur.len);
        }
        match self.srq {
            Some(h) => {
                let s = ctx.srqs.get(h as usize)?.as_ref()?;
                (!s.is_empty()).then(|| s.ring.at(s.ring.head).len)
            }
            None => (self.rq.len() > 0).then(|| self.rq.at(self.rq.head).len),
        }
    }

    /// Makes sure the QP holds a current receive WQE: the one it already
    /// holds, or the next one from the SRQ or the RQ, moved in by swapping
    /// slots, which never allocates. Fires the SRQ
    /// limit event when the SRQ drops below its armed limit.
    pub(crate) fn take_recv<M: Memory>(&mut self, ctx: &mut Ctx<'_, M>) -> bool {
        if self.resp.have_cur {
            // A WQE kept from a dropped UC message is used first.
            return true;
        }
        let ring = match self.srq {
            Some(h) => match ctx.srqs.get_mut(h as usize).and_then(Option::as_mut) {
                Some(s) => {
                    if s.is_empty() {
                        return false;
                    }
                    if s.limit != 0 && s.len() - 1 < s.limit {
                        s.limit = 0;
                        ctx.events.push_back(AsyncEvent::SrqLimitReached(h));
                    }
                    &mut s.ring
                }
                None => return false,
            },
            None => {
                if self.rq.len() == 0 {
                    return false;
                }
                &mut self.rq
            }
        };
        let head = ring.head;
        std::mem::swap(&mut self.resp.cur, ring.at_mut(head));
        ring.head += 1;
        self.resp.have_cur = true;
        true
    }

    pub(crate) fn send_wc(&self, w: &SendWqe, status: WcStatus) -> Wc {
        Wc {
            wr_id: w.wr_id,
            status,
            opcode: match w.op {
                SendOp::Send | SendOp::SendWithImm(_) | SendOp::SendWithInv(_) => WcOpcode::Send,
                SendOp::Write | SendOp::WriteWithImm(_) => WcOpcode::RdmaWrite,
                SendOp::Read => WcOpcode::RdmaRead,
                SendOp::CmpSwap { .. } => WcOpcode::CompSwap,
                SendOp::FetchAdd { .. } => WcOpcode::FetchAdd,
                SendOp::AtomicWrite(_) => WcOpcode::AtomicWrite,
                SendOp::Flush { .. } => WcOpcode::Flush,
                SendOp::RegMr { .. } => WcOpcode::RegMr,
                SendOp::LocalInv { .. } => WcOpcode::LocalInv,
                SendOp::BindMw { .. } => WcOpcode::BindMw,
            },
            byte_len: if w.op == SendOp::Read {
                w.len as u32
            } else {
                0
            },
            qp_num: self.qpn,
            src_qp: 0,
            imm_data: None,
            invalidated_rkey: None,
            ip_version: None,
        }
    }

    /// Moves the QP to ERR: completes the failed WQE (if any) with
    /// `status`, flushes every other outstanding send and receive WQE with
    /// `WrFlushErr`, and stops the timers.
    pub(crate) fn enter_error<M: Memory>(
        &mut self,
        ctx: &mut Ctx<'_, M>,
        failed: Option<WcStatus>,
    ) {
        if let Some(status) = failed
            && self.sq.len() > 0
        {
            self.counters.completer_err += 1;
            let w = self.sq.at(self.sq.head).clone();
            let wc = self.send_wc(&w, status);
            ctx.complete(self.send_cq, wc, true);
            self.sq.head += 1;
        }
        self.state = QpState::Err;
        self.flush(ctx);
    }

    /// Flushes every outstanding WQE of a QP in ERR and drops the
    /// responder's pending output.
    pub(crate) fn flush<M: Memory>(&mut self, ctx: &mut Ctx<'_, M>) {
        self.flush_queues(ctx);
        self.resp.clear_output();
    }

    /// Flushes every outstanding WQE of a QP in ERR, stops the requester
    /// and its timers, and leaves the responder's queued output alone.
    pub(crate) fn flush_queues<M: Memory>(&mut self, ctx: &mut Ctx<'_, M>) {
        while self.sq.len() > 0 {
            let w = self.sq.at(self.sq.head);
            let wc = self.send_wc(w, WcStatus::WrFlushErr);
            ctx.complete(self.send_cq, wc, true);
            self.sq.head += 1;
        }
        if self.resp.have_cur {
            self.resp.have_cur = false;
            let wc = self.recv_wc(self.resp.cur.wr_id, WcStatus::WrFlushErr);
            ctx.complete(self.recv_cq, wc, true);
        }
        while self.rq.len() > 0 {
            let wc = self.recv_wc(self.rq.at(self.rq.head).wr_id, WcStatus::WrFlushErr);
            ctx.complete(self.recv_cq, wc, true);
            self.rq.head += 1;
        }
        if self.srq.is_some() && self.state == QpState::Err {
            // The SRQ keeps its WQEs; the QP will take no more of them.
            ctx.events.push_back(AsyncEvent::QpLastWqeReached(self.qpn));
        }
        self.req.idx = self.sq.head;
        self.req.offset = 0;
        self.req.rd_inflight = 0;
        self.req.rnr_until = None;
        self.comp.retrans_at = None;
    }

    /// Builds a CNP for the sender of an ECN-marked packet, at most one per
    /// `min_cnp_interval_ns`.
    pub(crate) fn poll_cnp(
        &mut self,
        now: u64,
        dev: &DeviceAttrs,
        buf: &mut [u8],
    ) -> Option<usize> {
        if !self.cnp_pending {
            return None;
        }
        if self
            .last_cnp_at
            .is_some_and(|t| now < t + dev.min_cnp_interval_ns)
        {
            self.cnp_pending = false;
            return None;
        }
        let repr = crate::wire::PacketRepr {
            bth: crate::wire::BthRepr {
                opcode: crate::wire::Opcode::CNP,
                solicited: false,
                mig_req: false,
                pad_count: 0,
                pkey: crate::wire::DEFAULT_PKEY,
                fecn: false,
                becn: true,
                dest_qp: self.attrs.dest_qp,
                ack_req: false,
                psn: 0,
            },
            ext: crate::wire::ExtHeaders::default(),
            payload_len: 0,
        };
        repr.emit(buf).ok()?;
        self.cnp_pending = false;
        self.last_cnp_at = Some(now);
        Some(repr.buffer_len())
    }

    /// Earliest timer of this QP.
    pub(crate) fn next_timeout(&self) -> Option<u64> {
        match (self.comp.retrans_at, self.req.rnr_until) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// The retransmit timeout in nanoseconds (`None`: infinite).
    pub(crate) fn retrans_timeout_ns(&self) -> Option<u64> {
        (self.attrs.timeout != 0).then(|| 4096u64 << self.attrs.timeout)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn psn_arithmetic_wraps() {
        assert_eq!(psn_diff(0, 0xff_ffff), 1);
        assert_eq!(psn_diff(0xff_ffff, 0), -1);
        assert_eq!(psn_diff(5, 3), 2);
        assert_eq!(psn_add(0xff_fffe, 3), 1);
        assert_eq!(packets_for(0, Mtu::Mtu256), 1);
        assert_eq!(packets_for(256, Mtu::Mtu256), 1);
        assert_eq!(packets_for(257, Mtu::Mtu256), 2);
    }

    #[test]
    fn rnr_table() {
        assert_eq!(rnr_timeout_ns(0), 655_360_000);
        assert_eq!(rnr_timeout_ns(1), 10_000);
        assert_eq!(rnr_timeout_ns(13), 960_000);
        assert_eq!(rnr_timeout_ns(14), 1_280_000);
        assert_eq!(rnr_timeout_ns(31), 491_520_000);
    }
}
