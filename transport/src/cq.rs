//! Completion queues: a bounded ring of work completions, overflow
//! detection, and arming for the next or the next solicited completion.

use std::collections::VecDeque;

use crate::verbs::Wc;

/// How a CQ is armed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arm {
    /// Not armed.
    Off,
    /// Notify on the next completion.
    Next,
    /// Notify on the next solicited (or error) completion.
    Solicited,
}

/// A completion queue.
#[derive(Debug, Clone)]
pub struct Cq {
    ring: VecDeque<Wc>,
    depth: usize,
    arm: Arm,
    overflowed: bool,
}

/// What pushing a completion did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pushed {
    /// Stored; `notify` says whether the armed CQ fired.
    Stored {
        /// The CQ was armed and this completion triggers a notification.
        notify: bool,
    },
    /// The CQ was full; the completion is lost.
    Overflow,
}

impl Cq {
    /// A CQ of `depth` entries.
    pub fn new(depth: usize) -> Cq {
        Cq {
            ring: VecDeque::with_capacity(depth),
            depth,
            arm: Arm::Off,
            overflowed: false,
        }
    }

    /// Depth.
    pub fn depth(&self) -> usize {
        self.depth
    }

    /// Completions waiting.
    pub fn len(&self) -> usize {
        self.ring.len()
    }

    /// Whether no completion waits.
    pub fn is_empty(&self) -> bool {
        self.ring.is_empty()
    }

    /// Whether the CQ has ever overflowed.
    pub fn overflowed(&self) -> bool {
        self.overflowed
    }

    /// Adds a completion.
    pub fn push(&mut self, wc: Wc, solicited: bool) -> Pushed {
        if self.ring.len() >= self.depth {
            self.overflowed = true;
            return Pushed::Overflow;
        }
        let is_err = wc.status != crate::verbs::WcStatus::Success;
        self.ring.push_back(wc);
        let notify = match self.arm {
            Arm::Off => false,
            Arm::Next => true,
            Arm::Solicited => solicited || is_err,
        };
        if notify {
            self.arm = Arm::Off;
        }
        Pushed::Stored { notify }
    }

    /// Moves up to `out.len()` completions into `out`; returns how many.
    pub fn poll(&mut self, out: &mut [Wc]) -> usize {
        let n = out.len().min(self.ring.len());
        for slot in out.iter_mut().take(n) {
            if let Some(wc) = self.ring.pop_front() {
                *slot = wc;
            }
        }
        n
    }

    /// Arms the CQ.
    pub fn arm(&mut self, solicited_only: bool) {
        self.arm = if solicited_only {
            Arm::Solicited
        } else {
            Arm::Next
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::verbs::{WcOpcode, WcStatus};

    fn wc(id: u64, status: WcStatus) -> Wc {
        Wc {
            wr_id: id,
            status,
            opcode: WcOpcode::Send,
            byte_len: 0,
            qp_num: 1,
            src_qp: 0,
            imm_data: None,
            invalidated_rkey: None,
            ip_version: None,
        }
    }

    #[test]
    fn overflow_and_notify() {
        let mut cq = Cq::new(2);
        assert_eq!(
            cq.push(wc(1, WcStatus::Success), false),
            Pushed::Stored { notify: false }
        );
        cq.arm(true);
        assert_eq!(
            cq.push(wc(2, WcStatus::Success), false),
            Pushed::Stored { notify: false }
        );
        assert_eq!(cq.push(wc(3, WcStatus::Success), true), Pushed::Overflow);
        assert!(cq.overflowed());
        let mut out = [wc(0, WcStatus::Success); 4];
        assert_eq!(cq.poll(&mut out), 2);
        assert_eq!((out[0].wr_id, out[1].wr_id), (1, 2));
        assert_eq!(
            cq.push(wc(4, WcStatus::Success), true),
            Pushed::Stored { notify: true }
        );
        assert_eq!(
            cq.push(wc(5, WcStatus::Success), true),
            Pushed::Stored { notify: false }
        );
        cq.poll(&mut out);
        cq.arm(false);
        assert_eq!(
            cq.push(wc(6, WcStatus::Success), false),
            Pushed::Stored { notify: true }
        );
        cq.arm(true);
        assert_eq!(
            cq.push(wc(7, WcStatus::RemAccessErr), false),
            Pushed::Stored { notify: true }
        );
    }
}
