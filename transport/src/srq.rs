//! Shared receive queues: one pool of receive WQEs that several QPs draw
//! from, with the limit event that fires once when the pool drops below an
//! armed watermark.

use crate::qp::{RecvWqe, Ring};

/// A shared receive queue.
#[derive(Debug)]
pub struct Srq {
    pub(crate) pd: u32,
    pub(crate) ring: Ring<RecvWqe>,
    pub(crate) max_sge: u32,
    /// Armed limit; 0 means not armed.
    pub(crate) limit: u32,
}

impl Srq {
    pub(crate) fn new(pd: u32, max_wr: u32, max_sge: u32) -> Srq {
        let mut ring: Ring<RecvWqe> = Ring::new(max_wr as usize);
        for w in &mut ring.slots {
            w.sges.reserve_exact(crate::qp::RECV_SGE_CAPACITY);
        }
        Srq {
            pd,
            ring,
            max_sge,
            limit: 0,
        }
    }

    /// Receive WQEs waiting.
    pub fn len(&self) -> u32 {
        self.ring.len() as u32
    }

    /// Whether no receive WQE waits.
    pub fn is_empty(&self) -> bool {
        self.ring.len() == 0
    }

    /// Capacity.
    pub fn max_wr(&self) -> u32 {
        self.ring.capacity() as u32
    }

    /// The armed limit (0: not armed).
    pub fn limit(&self) -> u32 {
        self.limit
    }
}
