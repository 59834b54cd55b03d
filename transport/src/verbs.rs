//! The verbs vocabulary the engine speaks: access flags, scatter/gather
//! entries, send and receive work requests, work completions and their
//! statuses, QP types, states and attributes, async events, and the
//! engine's error type for rejected verbs.

use crate::{device::Gid, wire::Mtu};

/// Memory access flags, with the values of `ibv_access_flags`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Access(pub u32);

impl Access {
    /// Local write (needed for any remote write or for receive buffers).
    pub const LOCAL_WRITE: Access = Access(1);
    /// Remote RDMA WRITE.
    pub const REMOTE_WRITE: Access = Access(1 << 1);
    /// Remote RDMA READ.
    pub const REMOTE_READ: Access = Access(1 << 2);
    /// Remote atomics.
    pub const REMOTE_ATOMIC: Access = Access(1 << 3);
    /// Memory window binding.
    pub const MW_BIND: Access = Access(1 << 4);
    /// Remote FLUSH to global visibility.
    pub const FLUSH_GLOBAL: Access = Access(1 << 8);
    /// Remote FLUSH to persistence.
    pub const FLUSH_PERSISTENT: Access = Access(1 << 9);
    /// Every flag this engine knows.
    pub const ALL: Access = Access(0x31f);

    /// Union.
    pub const fn with(self, o: Access) -> Access {
        Access(self.0 | o.0)
    }

    /// Whether all of `o` is granted.
    pub const fn contains(self, o: Access) -> bool {
        self.0 & o.0 == o.0
    }
}

/// A scatter/gather entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Sge {
    /// Virtual address within the MR.
    pub addr: u64,
    /// Length in bytes.
    pub length: u32,
    /// Local key of the MR.
    pub lkey: u32,
}

/// The operation of a send work request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SendOp {
    /// SEND.
    Send,
    /// SEND with immediate data.
    SendWithImm(u32),
    /// SEND with invalidate of the given remote key.
    SendWithInv(u32),
    /// RDMA WRITE.
    Write,
    /// RDMA WRITE with immediate data.
    WriteWithImm(u32),
    /// RDMA READ.
    Read,
    /// Atomic compare and swap.
    CmpSwap {
        /// Compared with the remote value.
        compare: u64,
        /// Written if equal.
        swap: u64,
    },
    /// Atomic fetch and add.
    FetchAdd {
        /// Added to the remote value.
        add: u64,
    },
    /// Atomic 8-byte write: the bytes of the value (native order, as they
    /// stand in memory) replace the 8 aligned bytes at the remote address.
    AtomicWrite(u64),
    /// Fast registration: makes the fast-registration MR of `key`'s index
    /// valid with the page list staged by `map_mr_pages`, the key part of
    /// `key`, and `access`. A local operation: nothing goes on the wire.
    RegMr {
        /// The MR's new key (index and new 8-bit key part).
        key: u32,
        /// Access to grant.
        access: Access,
    },
    /// Binds a memory window to `[addr, addr + len)` of an MR with
    /// remote `access`. A type 2 window takes the key part of `mw`; a type
    /// 1 window may be bound again (length 0 unbinds it). A local
    /// operation.
    BindMw {
        /// The window's (new) key.
        mw: u32,
        /// The MR's key; the MR needs MW_BIND access.
        mr: u32,
        /// Start of the window.
        addr: u64,
        /// Length of the window.
        len: u64,
        /// Remote access through the window.
        access: Access,
    },
    /// Local invalidation of a fast-registration MR.
    LocalInv {
        /// The key to invalidate.
        key: u32,
    },
    /// FLUSH of `len` bytes at the remote address to the placement type
    /// (bit 0 global visibility, bit 1 persistence); selectivity level 1
    /// flushes the whole region.
    Flush {
        /// Bytes to flush.
        len: u32,
        /// Placement type bits.
        placement_type: u8,
        /// Selectivity level (0: the range, 1: the whole MR).
        selectivity_level: u8,
    },
}

impl SendOp {
    /// Whether the operation carries local data out (SEND or WRITE).
    pub const fn sends_payload(self) -> bool {
        matches!(
            self,
            SendOp::Send
                | SendOp::SendWithImm(_)
                | SendOp::SendWithInv(_)
                | SendOp::Write
                | SendOp::WriteWithImm(_)
        )
    }

    /// Whether the operation waits for a response from the responder
    /// (READ, atomics, ATOMIC_WRITE, FLUSH); these count against
    /// max_rd_atomic.
    pub const fn is_read_or_atomic(self) -> bool {
        matches!(
            self,
            SendOp::Read
                | SendOp::CmpSwap { .. }
                | SendOp::FetchAdd { .. }
                | SendOp::AtomicWrite(_)
                | SendOp::Flush { .. }
        )
    }

    /// Whether it is a local operation, executed without any packet.
    pub const fn is_local(self) -> bool {
        matches!(
            self,
            SendOp::RegMr { .. } | SendOp::LocalInv { .. } | SendOp::BindMw { .. }
        )
    }

    /// Whether the response is an empty READ response (ATOMIC_WRITE and
    /// FLUSH are acknowledged that way).
    pub const fn is_read_response_acked(self) -> bool {
        matches!(self, SendOp::AtomicWrite(_) | SendOp::Flush { .. })
    }

    /// Whether it is an atomic.
    pub const fn is_atomic(self) -> bool {
        matches!(self, SendOp::CmpSwap { .. } | SendOp::FetchAdd { .. })
    }
}

/// Destination of a UD send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UdDest {
    /// Address vector.
    pub ah: AhAttr,
    /// Remote QP number.
    pub remote_qpn: u32,
    /// Remote Q_Key (high bit set: use the QP's own Q_Key).
    pub remote_qkey: u32,
}

/// A send work request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SendWr<'a> {
    /// Caller's identifier, returned in the completion.
    pub wr_id: u64,
    /// Operation.
    pub op: SendOp,
    /// Local buffers.
    pub sges: &'a [Sge],
    /// Generate a completion even if the QP does not signal all.
    pub signaled: bool,
    /// Solicited event.
    pub solicited: bool,
    /// Wait for earlier READs and atomics to complete first.
    pub fence: bool,
    /// Copy the data of the SGEs into the WR at post time.
    pub inline: bool,
    /// Remote address for RDMA and atomics.
    pub remote_addr: u64,
    /// Remote key for RDMA and atomics.
    pub rkey: u32,
    /// UD destination.
    pub ud: Option<UdDest>,
}

impl<'a> SendWr<'a> {
    /// A signaled work request with no remote part.
    pub fn new(wr_id: u64, op: SendOp, sges: &'a [Sge]) -> SendWr<'a> {
        SendWr {
            wr_id,
            op,
            sges,
            signaled: true,
            solicited: false,
            fence: false,
            inline: false,
            remote_addr: 0,
            rkey: 0,
            ud: None,
        }
    }

    /// Sets the remote address and key.
    pub fn remote(mut self, addr: u64, rkey: u32) -> Self {
        self.remote_addr = addr;
        self.rkey = rkey;
        self
    }
}

/// A receive work request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecvWr<'a> {
    /// Caller's identifier, returned in the completion.
    pub wr_id: u64,
    /// Buffers to scatter the message into.
    pub sges: &'a [Sge],
}

/// Completion status, with the meaning of `ibv_wc_status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum WcStatus {
    /// Success.
    Success,
    /// Local length error: the message does not fit the receive buffers.
    LocLenErr,
    /// Local QP operation error.
    LocQpOpErr,
    /// Local protection error: a bad lkey or access.
    LocProtErr,
    /// Flushed because the QP went to the error state.
    WrFlushErr,
    /// Bad response from the responder.
    BadRespErr,
    /// Local access error (on the responder side, for incoming RDMA).
    LocAccessErr,
    /// Remote invalid request (NAK invalid request).
    RemInvReqErr,
    /// Remote access error (NAK remote access error).
    RemAccessErr,
    /// Remote operational error.
    RemOpErr,
    /// Transport retries exhausted.
    RetryExcErr,
    /// RNR retries exhausted.
    RnrRetryExcErr,
    /// Memory window bind error.
    MwBindErr,
    /// Local memory management operation error.
    MwMgmtErr,
    /// General error.
    GeneralErr,
}

/// What a completion completes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum WcOpcode {
    /// A SEND.
    Send,
    /// An RDMA WRITE.
    RdmaWrite,
    /// An RDMA READ.
    RdmaRead,
    /// A compare and swap.
    CompSwap,
    /// A fetch and add.
    FetchAdd,
    /// An atomic write.
    AtomicWrite,
    /// A flush.
    Flush,
    /// A fast registration.
    RegMr,
    /// A local invalidation.
    LocalInv,
    /// A memory window bind.
    BindMw,
    /// A received message.
    Recv,
    /// A received RDMA WRITE with immediate.
    RecvRdmaWithImm,
}

/// A work completion.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Wc {
    /// The WR's identifier.
    pub wr_id: u64,
    /// Status.
    pub status: WcStatus,
    /// Opcode.
    pub opcode: WcOpcode,
    /// Bytes received (receive completions).
    pub byte_len: u32,
    /// Local QP number.
    pub qp_num: u32,
    /// Source QP (UD receives).
    pub src_qp: u32,
    /// Immediate data, as it was on the wire.
    pub imm_data: Option<u32>,
    /// The rkey invalidated by a SEND with invalidate.
    pub invalidated_rkey: Option<u32>,
    /// UD and GSI receives: the IP version of the packet's header (4 or
    /// 6), which the receive buffer's 40-byte GRH area holds.
    pub ip_version: Option<u8>,
}

/// QP transport service.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum QpType {
    /// Reliable connected.
    Rc,
    /// Unreliable connected.
    Uc,
    /// Unreliable datagram.
    Ud,
    /// General services interface (QP1).
    Gsi,
}

/// QP states (IBTA 10.3.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum QpState {
    /// Reset.
    Reset,
    /// Initialized.
    Init,
    /// Ready to receive.
    Rtr,
    /// Ready to send.
    Rts,
    /// Send queue drained.
    Sqd,
    /// Send queue error.
    Sqe,
    /// Error.
    Err,
}

/// An address vector (RoCEv2: GIDs, no LIDs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct AhAttr {
    /// Destination GID.
    pub dgid: Gid,
    /// Source GID index.
    pub sgid_index: u8,
    /// IP hop limit / TTL.
    pub hop_limit: u8,
    /// Traffic class (DSCP + ECN).
    pub traffic_class: u8,
    /// Flow label (0: derive the UDP source port from the QPNs).
    pub flow_label: u32,
}

/// Capacities of a QP's queues.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QpCaps {
    /// Send queue depth.
    pub max_send_wr: u32,
    /// Receive queue depth.
    pub max_recv_wr: u32,
    /// SGEs per send WR.
    pub max_send_sge: u32,
    /// SGEs per receive WR.
    pub max_recv_sge: u32,
    /// Inline bytes per send WR.
    pub max_inline_data: u32,
}

/// Attributes for `modify_qp`; `None` fields are left unchanged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct QpAttr {
    /// Target state.
    pub state: Option<QpState>,
    /// Access flags granted to incoming RDMA.
    pub access: Option<Access>,
    /// Partition key index.
    pub pkey_index: Option<u16>,
    /// Q_Key (UD).
    pub qkey: Option<u32>,
    /// Path MTU.
    pub path_mtu: Option<Mtu>,
    /// Remote QP number.
    pub dest_qp_num: Option<u32>,
    /// Expected PSN of the receive side.
    pub rq_psn: Option<u32>,
    /// First PSN of the send side.
    pub sq_psn: Option<u32>,
    /// Incoming READ/atomic resources.
    pub max_dest_rd_atomic: Option<u8>,
    /// Outgoing READ/atomic limit.
    pub max_rd_atomic: Option<u8>,
    /// RNR NAK timer code this QP sends.
    pub min_rnr_timer: Option<u8>,
    /// Local ACK timeout: 4.096 µs × 2^timeout (0: infinite).
    pub timeout: Option<u8>,
    /// Transport retry count (0..=7).
    pub retry_cnt: Option<u8>,
    /// RNR retry count (7: infinite).
    pub rnr_retry: Option<u8>,
    /// Path to the remote side.
    pub ah: Option<AhAttr>,
}

/// Asynchronous events.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AsyncEvent {
    /// A QP entered the error state on its own (fatal).
    QpFatal(u32),
    /// A request to the QP was invalid.
    QpReqErr(u32),
    /// An access violation on the QP.
    QpAccessErr(u32),
    /// A CQ overflowed.
    CqErr(u32),
    /// The send queue drained.
    SqDrained(u32),
    /// The last WQE of an SRQ-attached QP in error was reached.
    QpLastWqeReached(u32),
    /// An SRQ dropped below its armed limit.
    SrqLimitReached(u32),
    /// The port went down: its link failed or vanished (rxe raises
    /// IB_EVENT_PORT_ERR when its netdev does).
    PortError,
}

/// A completion notification for a CQ armed with `req_notify_cq`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CqNotification(pub u32);

/// Why a verb was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerbsError {
    /// A handle names no live object.
    #[error("no such {kind} {handle}")]
    NoSuchObject {
        /// Object type.
        kind: &'static str,
        /// Handle or number.
        handle: u32,
    },
    /// A limit of the device was reached.
    #[error("{what} exceeds the device limit of {limit}")]
    Limit {
        /// What was asked for.
        what: &'static str,
        /// The limit.
        limit: u64,
    },
    /// An argument is invalid.
    #[error("invalid argument: {0}")]
    Invalid(&'static str),
    /// A QP state transition is not allowed, or an attribute does not fit
    /// it.
    #[error("invalid QP transition {from:?} -> {to:?}: {why}")]
    BadTransition {
        /// Current state.
        from: QpState,
        /// Requested state.
        to: QpState,
        /// What is wrong.
        why: &'static str,
    },
    /// A work request was posted in a state that does not accept it.
    #[error("cannot post to a QP in state {0:?}")]
    WrongState(QpState),
    /// The queue is full.
    #[error("queue full")]
    QueueFull,
    /// The object is still in use.
    #[error("{0} is still in use")]
    Busy(&'static str),
}
