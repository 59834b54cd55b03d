//! Engine counters: the events Linux rxe counts in its `hw_counters`,
//! under the same names, plus NAKs, errors, CNP/ECN counts and bytes per
//! opcode. Each QP keeps its own event counters and the engine its packet
//! and byte counters, all plain integers bumped by the one thread that
//! runs the engine (no atomics, no locks); [`crate::engine::Engine::counters`]
//! sums them on request, and counts of destroyed QPs are kept.

/// Event counters (per QP, or summed over an engine).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counters {
    /// Packets handed out by `poll_transmit`, CNPs included (rxe
    /// `sent_pkts`). Engine-wide only: 0 in a QP's own counters.
    pub sent_pkts: u64,
    /// Packets taken by `handle_packet` for a QP, and CNPs (rxe
    /// `rcvd_pkts`). Engine-wide only: 0 in a QP's own counters.
    pub rcvd_pkts: u64,
    /// Requests whose PSN was already executed (rxe `duplicate_request`).
    pub duplicate_request: u64,
    /// Requests ahead of the expected PSN (rxe `out_of_seq_request`).
    pub out_of_seq_request: u64,
    /// RNR NAKs received (rxe `rcvd_rnr_err`).
    pub rcvd_rnr_err: u64,
    /// RNR NAKs sent (rxe `send_rnr_err`).
    pub send_rnr_err: u64,
    /// PSN sequence error NAKs received (rxe `rcvd_seq_err`).
    pub rcvd_seq_err: u64,
    /// NAKs other than RNR NAKs received (sequence errors included).
    pub rcvd_nak: u64,
    /// NAKs other than RNR NAKs sent (sequence errors included).
    pub send_nak: u64,
    /// ACKs folded into a later one before they were sent (rxe
    /// `ack_deferred` counts the like).
    pub ack_deferred: u64,
    /// Retransmissions started, by timeout or NAK (rxe
    /// `completer_retry_err`).
    pub completer_retry_err: u64,
    /// QPs failed for running out of `retry_cnt` (rxe `retry_exceeded_err`).
    pub retry_exceeded_err: u64,
    /// QPs failed for running out of `rnr_retry` (rxe `rnr_nak_retry_err`).
    pub rnr_nak_retry_err: u64,
    /// Send work requests completed with an error by the requester side
    /// (retries exceeded, remote errors reported by NAK, local errors).
    pub completer_err: u64,
    /// Requests the responder refused: a NAK for an invalid request, a
    /// remote access or operational error (RC), or a dropped message (UC).
    pub responder_err: u64,
    /// CNPs received.
    pub cnp_rcvd: u64,
    /// CNPs sent.
    pub cnp_sent: u64,
    /// Packets received with ECN Congestion Experienced.
    pub ecn_marked: u64,
    /// Times the port went down under the engine (rxe `link_downed`).
    pub link_downed: u64,
}

impl Counters {
    /// Adds `o` to these counters.
    pub fn add(&mut self, o: &Counters) {
        macro_rules! sum {
            ($($f:ident),*) => { $( self.$f += o.$f; )* };
        }
        sum!(
            sent_pkts,
            rcvd_pkts,
            duplicate_request,
            out_of_seq_request,
            rcvd_rnr_err,
            send_rnr_err,
            rcvd_seq_err,
            rcvd_nak,
            send_nak,
            ack_deferred,
            completer_retry_err,
            retry_exceeded_err,
            rnr_nak_retry_err,
            completer_err,
            responder_err,
            cnp_rcvd,
            cnp_sent,
            ecn_marked,
            link_downed
        );
    }

    /// Every counter as (rxe-style name, value), in a fixed order.
    pub fn named(&self) -> [(&'static str, u64); 19] {
        [
            ("sent_pkts", self.sent_pkts),
            ("rcvd_pkts", self.rcvd_pkts),
            ("duplicate_request", self.duplicate_request),
            ("out_of_seq_request", self.out_of_seq_request),
            ("rcvd_rnr_err", self.rcvd_rnr_err),
            ("send_rnr_err", self.send_rnr_err),
            ("rcvd_seq_err", self.rcvd_seq_err),
            ("rcvd_nak", self.rcvd_nak),
            ("send_nak", self.send_nak),
            ("ack_deferred", self.ack_deferred),
            ("completer_retry_err", self.completer_retry_err),
            ("retry_exceeded_err", self.retry_exceeded_err),
            ("rnr_nak_retry_err", self.rnr_nak_retry_err),
            ("completer_err", self.completer_err),
            ("responder_err", self.responder_err),
            ("cnp_rcvd", self.cnp_rcvd),
            ("cnp_sent", self.cnp_sent),
            ("ecn_marked", self.ecn_marked),
            ("link_downed", self.link_downed),
        ]
    }
}

/// Packets and transport bytes per BTH opcode, each way, as the engine
/// keeps them: `[packets, bytes]` side by side, so counting a packet
/// touches one cache line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpcodeCounts {
    /// Sent, indexed by opcode.
    pub tx: [[u64; 2]; 256],
    /// Received and taken, indexed by opcode.
    pub rx: [[u64; 2]; 256],
}

impl Default for OpcodeCounts {
    fn default() -> OpcodeCounts {
        OpcodeCounts {
            tx: [[0; 2]; 256],
            rx: [[0; 2]; 256],
        }
    }
}

impl OpcodeCounts {
    /// Counts one packet of `len` bytes with `opcode`, sent or received.
    #[inline]
    pub fn count(&mut self, sent: bool, opcode: u8, len: usize) {
        let e = if sent {
            &mut self.tx[usize::from(opcode)]
        } else {
            &mut self.rx[usize::from(opcode)]
        };
        e[0] += 1;
        e[1] += len as u64;
    }

    /// Packets (sent, received), summed over the opcodes.
    pub fn packets(&self) -> (u64, u64) {
        (
            self.tx.iter().map(|e| e[0]).sum(),
            self.rx.iter().map(|e| e[0]).sum(),
        )
    }

    /// The bytes alone.
    pub fn bytes(&self) -> OpcodeBytes {
        let mut b = OpcodeBytes::default();
        for i in 0..256 {
            b.tx[i] = self.tx[i][1];
            b.rx[i] = self.rx[i][1];
        }
        b
    }
}

/// Transport bytes (BTH through ICRC) per BTH opcode, each way.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpcodeBytes {
    /// Sent, indexed by opcode.
    pub tx: [u64; 256],
    /// Received and taken for a QP, indexed by opcode.
    pub rx: [u64; 256],
}

impl Default for OpcodeBytes {
    fn default() -> OpcodeBytes {
        OpcodeBytes {
            tx: [0; 256],
            rx: [0; 256],
        }
    }
}
