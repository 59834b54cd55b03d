//! Error paths, each giving the work-completion status Linux rxe gives on
//! both sides and sending the QP to ERR where rxe does: bad keys, access
//! violations, out-of-bounds accesses, WRs posted in the wrong state, RNR
//! and transport retries exhausted, and CQ overflow.

mod common;

use common::{drain, setup, setup_with};
use transport::{
    sim::LinkConfig,
    verbs::{
        Access, AsyncEvent, QpAttr, QpState, QpType, RecvWr, SendOp, SendWr, Sge, VerbsError,
        WcStatus,
    },
    wire::Mtu,
};

const SEC: u64 = 1_000_000_000;
const MEM: usize = 1 << 20;

fn clean() -> LinkConfig {
    LinkConfig::clean(1000)
}

/// Posts `wr` plus a second WR behind it, runs, and returns A's and B's
/// completions and QP states.
fn run_write_error(
    remote: u64,
    rkey_of: impl Fn(u32) -> u32,
    op: SendOp,
) -> (Vec<WcStatus>, Vec<WcStatus>, QpState, QpState) {
    let mut s = setup(QpType::Rc, clean(), 1, Mtu::Mtu1024, MEM);
    let rsge = [Sge {
        addr: 0x8000,
        length: 64,
        lkey: s.b.key,
    }];
    s.pair
        .b
        .post_recv(
            s.b.qp,
            &RecvWr {
                wr_id: 100,
                sges: &rsge,
            },
        )
        .unwrap();
    let len = if op.is_atomic() { 8 } else { 100 };
    let sge = [Sge {
        addr: 0,
        length: len,
        lkey: s.a.key,
    }];
    let rkey = rkey_of(s.b.key);
    s.pair
        .a
        .post_send(s.a.qp, &SendWr::new(1, op, &sge).remote(remote, rkey))
        .unwrap();
    s.pair
        .a
        .post_send(
            s.a.qp,
            &SendWr::new(2, SendOp::Write, &sge).remote(0, s.b.key),
        )
        .unwrap();
    s.pair.drive(SEC, |_| false);
    let wa = drain(&mut s.pair.a, s.a.cq)
        .iter()
        .map(|w| w.status)
        .collect();
    let wb = drain(&mut s.pair.b, s.b.cq)
        .iter()
        .map(|w| w.status)
        .collect();
    let sa = s.pair.a.qp(s.a.qp).unwrap().state();
    let sb = s.pair.b.qp(s.b.qp).unwrap().state();
    (wa, wb, sa, sb)
}

#[test]
fn bad_rkey_on_write_and_read() {
    for op in [SendOp::Write, SendOp::Read, SendOp::FetchAdd { add: 1 }] {
        let (wa, wb, sa, sb) = run_write_error(0x1000, |k| k ^ 0x100, op);
        assert_eq!(
            wa,
            vec![WcStatus::RemAccessErr, WcStatus::WrFlushErr],
            "{op:?}"
        );
        assert_eq!(
            wb,
            vec![WcStatus::WrFlushErr],
            "{op:?}: B's receive is flushed"
        );
        assert_eq!((sa, sb), (QpState::Err, QpState::Err), "{op:?}");
    }
}

#[test]
fn stale_key_after_reregistration() {
    let mut s = setup(QpType::Rc, clean(), 12, Mtu::Mtu1024, MEM);
    let all = common::ALL_ACCESS;
    let old = s
        .pair
        .b
        .reg_mr(s.b.pd, 0x10_0000, 0x1000, 0x1000, all)
        .unwrap();
    s.pair.b.dereg_mr(old).unwrap();
    let new = s
        .pair
        .b
        .reg_mr(s.b.pd, 0x10_0000, 0x1000, 0x1000, all)
        .unwrap();
    assert_eq!(old >> 8, new >> 8, "same slot");
    assert_ne!(old, new, "new key part");
    let sge = [Sge {
        addr: 0,
        length: 16,
        lkey: s.a.key,
    }];
    s.pair
        .a
        .post_send(
            s.a.qp,
            &SendWr::new(1, SendOp::Write, &sge).remote(0x10_0000, old),
        )
        .unwrap();
    s.pair.drive(SEC, |_| false);
    assert_eq!(
        drain(&mut s.pair.a, s.a.cq)[0].status,
        WcStatus::RemAccessErr
    );
    // A class C error on both sides, as rxe's: each QP goes to ERR.
    assert_eq!(s.pair.a.qp(s.a.qp).unwrap().state(), QpState::Err);
    assert_eq!(s.pair.b.qp(s.b.qp).unwrap().state(), QpState::Err);
    assert_eq!(
        &s.pair.b.memory().as_slice()[0x1000..0x1010],
        &[0u8; 16],
        "nothing written through the stale key"
    );
}

#[test]
fn out_of_bounds_remote_access() {
    for op in [
        SendOp::Write,
        SendOp::Read,
        SendOp::CmpSwap {
            compare: 0,
            swap: 1,
        },
    ] {
        let (wa, wb, sa, sb) = run_write_error(MEM as u64, |k| k, op);
        assert_eq!(
            wa,
            vec![WcStatus::RemAccessErr, WcStatus::WrFlushErr],
            "{op:?}"
        );
        assert_eq!(wb, vec![WcStatus::WrFlushErr], "{op:?}");
        assert_eq!((sa, sb), (QpState::Err, QpState::Err));
    }
}

#[test]
fn misaligned_atomic_is_an_invalid_request() {
    let (wa, wb, sa, sb) = run_write_error(0x1004, |k| k, SendOp::FetchAdd { add: 1 });
    assert_eq!(wa, vec![WcStatus::RemInvReqErr, WcStatus::WrFlushErr]);
    assert_eq!(wb, vec![WcStatus::WrFlushErr]);
    assert_eq!((sa, sb), (QpState::Err, QpState::Err));
}

#[test]
fn mr_without_remote_write_access() {
    let mut s = setup(QpType::Rc, clean(), 2, Mtu::Mtu1024, MEM);
    let ro = s
        .pair
        .b
        .reg_mr(s.b.pd, 0x10_0000, 0x1000, 0x1000, Access::REMOTE_READ)
        .unwrap();
    let sge = [Sge {
        addr: 0,
        length: 16,
        lkey: s.a.key,
    }];
    s.pair
        .a
        .post_send(
            s.a.qp,
            &SendWr::new(1, SendOp::Write, &sge).remote(0x10_0000, ro),
        )
        .unwrap();
    s.pair.drive(SEC, |_| false);
    let wa = drain(&mut s.pair.a, s.a.cq);
    assert_eq!(wa[0].status, WcStatus::RemAccessErr);
    assert_eq!(s.pair.a.qp(s.a.qp).unwrap().state(), QpState::Err);
    assert_eq!(s.pair.b.qp(s.b.qp).unwrap().state(), QpState::Err);
    // READ through the same key is allowed.
    let mut s = setup(QpType::Rc, clean(), 3, Mtu::Mtu1024, MEM);
    let ro = s
        .pair
        .b
        .reg_mr(s.b.pd, 0x10_0000, 0x1000, 0x1000, Access::REMOTE_READ)
        .unwrap();
    s.pair
        .a
        .post_send(
            s.a.qp,
            &SendWr::new(1, SendOp::Read, &sge).remote(0x10_0000, ro),
        )
        .unwrap();
    s.pair.drive(SEC, |_| false);
    assert_eq!(drain(&mut s.pair.a, s.a.cq)[0].status, WcStatus::Success);
}

#[test]
fn qp_without_remote_access_flags_rejects_rdma() {
    let mut s = setup(QpType::Rc, clean(), 4, Mtu::Mtu1024, MEM);
    s.pair
        .b
        .modify_qp(
            s.b.qp,
            &QpAttr {
                access: Some(Access(0)),
                ..Default::default()
            },
            0,
        )
        .unwrap();
    let sge = [Sge {
        addr: 0,
        length: 16,
        lkey: s.a.key,
    }];
    s.pair
        .a
        .post_send(
            s.a.qp,
            &SendWr::new(1, SendOp::Write, &sge).remote(0, s.b.key),
        )
        .unwrap();
    s.pair.drive(SEC, |_| false);
    assert_eq!(
        drain(&mut s.pair.a, s.a.cq)[0].status,
        WcStatus::RemInvReqErr
    );
    assert_eq!(s.pair.a.qp(s.a.qp).unwrap().state(), QpState::Err);
    assert_eq!(s.pair.b.qp(s.b.qp).unwrap().state(), QpState::Err);
}

#[test]
fn send_longer_than_the_receive_buffer() {
    let mut s = setup(QpType::Rc, clean(), 5, Mtu::Mtu256, MEM);
    let rsge = [Sge {
        addr: 0x8000,
        length: 100,
        lkey: s.b.key,
    }];
    s.pair
        .b
        .post_recv(
            s.b.qp,
            &RecvWr {
                wr_id: 7,
                sges: &rsge,
            },
        )
        .unwrap();
    s.pair
        .b
        .post_recv(
            s.b.qp,
            &RecvWr {
                wr_id: 8,
                sges: &rsge,
            },
        )
        .unwrap();
    let sge = [Sge {
        addr: 0,
        length: 600,
        lkey: s.a.key,
    }];
    s.pair
        .a
        .post_send(s.a.qp, &SendWr::new(1, SendOp::Send, &sge))
        .unwrap();
    s.pair.drive(SEC, |_| false);
    assert_eq!(
        drain(&mut s.pair.a, s.a.cq)[0].status,
        WcStatus::RemInvReqErr
    );
    let wb = drain(&mut s.pair.b, s.b.cq);
    assert_eq!(
        common::statuses(&wb),
        // rxe reports REM_INV_REQ_ERR on the receive as well (class A/C
        // error with the invalid-request NAK).
        vec![(7, WcStatus::RemInvReqErr), (8, WcStatus::WrFlushErr)]
    );
}

#[test]
fn bad_local_key_on_send() {
    let mut s = setup(QpType::Rc, clean(), 6, Mtu::Mtu1024, MEM);
    let sge = [Sge {
        addr: 0,
        length: 16,
        lkey: s.a.key + 0x100,
    }];
    s.pair
        .a
        .post_send(s.a.qp, &SendWr::new(1, SendOp::Send, &sge))
        .unwrap();
    let ok = [Sge {
        addr: 0,
        length: 16,
        lkey: s.a.key,
    }];
    s.pair
        .a
        .post_send(s.a.qp, &SendWr::new(2, SendOp::Send, &ok))
        .unwrap();
    s.pair.drive(SEC, |_| false);
    let wa = drain(&mut s.pair.a, s.a.cq);
    assert_eq!(
        common::statuses(&wa),
        vec![(1, WcStatus::LocProtErr), (2, WcStatus::WrFlushErr)]
    );
    assert_eq!(s.pair.stats.sent, 0, "nothing went on the wire");
}

#[test]
fn posting_in_the_wrong_state() {
    let mut s = setup(QpType::Rc, clean(), 7, Mtu::Mtu1024, MEM);
    let sge = [Sge {
        addr: 0,
        length: 16,
        lkey: s.a.key,
    }];
    // A fresh QP in RESET, then INIT, then RTR refuses sends.
    let qp = s
        .pair
        .a
        .create_qp(&transport::engine::QpInit {
            qp_type: QpType::Rc,
            pd: s.a.pd,
            send_cq: s.a.cq,
            recv_cq: s.a.cq,
            caps: transport::verbs::QpCaps {
                max_send_wr: 4,
                max_recv_wr: 4,
                max_send_sge: 1,
                max_recv_sge: 1,
                max_inline_data: 0,
            },
            sq_sig_all: true,
            srq: None,
        })
        .unwrap();
    let wr = SendWr::new(1, SendOp::Send, &sge);
    assert_eq!(
        s.pair.a.post_send(qp, &wr),
        Err(VerbsError::WrongState(QpState::Reset))
    );
    assert_eq!(
        s.pair.a.post_recv(
            qp,
            &RecvWr {
                wr_id: 1,
                sges: &sge
            }
        ),
        Err(VerbsError::WrongState(QpState::Reset))
    );
    s.pair
        .a
        .modify_qp(
            qp,
            &QpAttr {
                state: Some(QpState::Init),
                pkey_index: Some(0),
                access: Some(transport::verbs::Access::REMOTE_WRITE),
                ..Default::default()
            },
            0,
        )
        .unwrap();
    assert_eq!(
        s.pair.a.post_send(qp, &wr),
        Err(VerbsError::WrongState(QpState::Init))
    );
    // RTR receives but does not send.
    s.pair
        .a
        .modify_qp(
            qp,
            &QpAttr {
                state: Some(QpState::Rtr),
                dest_qp_num: Some(s.b.qp),
                rq_psn: Some(0),
                path_mtu: Some(Mtu::Mtu1024),
                max_dest_rd_atomic: Some(1),
                min_rnr_timer: Some(1),
                ah: Some(transport::verbs::AhAttr {
                    dgid: transport::sim::Pair::gid_b(),
                    ..Default::default()
                }),
                ..Default::default()
            },
            0,
        )
        .unwrap();
    assert_eq!(
        s.pair.a.post_send(qp, &wr),
        Err(VerbsError::WrongState(QpState::Rtr))
    );
    s.pair
        .a
        .post_recv(
            qp,
            &RecvWr {
                wr_id: 5,
                sges: &sge,
            },
        )
        .unwrap();
    // A QP in ERR accepts WRs and flushes them at once.
    s.pair
        .a
        .modify_qp(
            qp,
            &QpAttr {
                state: Some(QpState::Err),
                ..Default::default()
            },
            0,
        )
        .unwrap();
    s.pair.a.post_send(qp, &wr).unwrap();
    let w = drain(&mut s.pair.a, s.a.cq);
    assert_eq!(
        common::statuses(&w),
        vec![(5, WcStatus::WrFlushErr), (1, WcStatus::WrFlushErr)]
    );
    // Illegal transitions are refused and change nothing.
    assert!(matches!(
        s.pair.a.modify_qp(
            qp,
            &QpAttr {
                state: Some(QpState::Rts),
                ..Default::default()
            },
            0
        ),
        Err(VerbsError::BadTransition { .. })
    ));
    assert_eq!(s.pair.a.qp(qp).unwrap().state(), QpState::Err);
}

#[test]
fn rnr_retries_exhausted() {
    let mut s = setup_with(QpType::Rc, clean(), 8, Mtu::Mtu1024, MEM, 64, |c| {
        c.rnr_retry = 2
    });
    let sge = [Sge {
        addr: 0,
        length: 16,
        lkey: s.a.key,
    }];
    s.pair
        .a
        .post_send(s.a.qp, &SendWr::new(1, SendOp::Send, &sge))
        .unwrap();
    s.pair.drive(10 * SEC, |_| false);
    let wa = drain(&mut s.pair.a, s.a.cq);
    assert_eq!(wa[0].status, WcStatus::RnrRetryExcErr);
    assert_eq!(s.pair.a.qp(s.a.qp).unwrap().state(), QpState::Err);
    // The responder stays up: RNR is not an error on its side.
    assert_eq!(s.pair.b.qp(s.b.qp).unwrap().state(), QpState::Rts);
    // Three sends of the request: the first and two retries.
    assert_eq!(s.pair.stats.sent, 6);
}

#[test]
fn rnr_then_receive_posted_succeeds() {
    let mut s = setup(QpType::Rc, clean(), 9, Mtu::Mtu1024, MEM);
    let sge = [Sge {
        addr: 0,
        length: 16,
        lkey: s.a.key,
    }];
    s.pair
        .a
        .post_send(s.a.qp, &SendWr::new(1, SendOp::Send, &sge))
        .unwrap();
    s.pair.drive(SEC, |p| p.stats.sent >= 2);
    let rsge = [Sge {
        addr: 0x8000,
        length: 64,
        lkey: s.b.key,
    }];
    s.pair
        .b
        .post_recv(
            s.b.qp,
            &RecvWr {
                wr_id: 3,
                sges: &rsge,
            },
        )
        .unwrap();
    s.pair.drive(10 * SEC, |_| false);
    assert_eq!(drain(&mut s.pair.a, s.a.cq)[0].status, WcStatus::Success);
    assert_eq!(drain(&mut s.pair.b, s.b.cq)[0].byte_len, 16);
}

#[test]
fn transport_retries_exhausted() {
    let mut link = clean();
    link.loss = 1.0;
    let mut s = setup_with(QpType::Rc, link, 10, Mtu::Mtu1024, MEM, 64, |c| {
        c.retry = 3;
        c.timeout = 8;
    });
    let sge = [Sge {
        addr: 0,
        length: 16,
        lkey: s.a.key,
    }];
    s.pair
        .a
        .post_send(
            s.a.qp,
            &SendWr::new(1, SendOp::Write, &sge).remote(0, s.b.key),
        )
        .unwrap();
    s.pair
        .a
        .post_send(
            s.a.qp,
            &SendWr::new(2, SendOp::Write, &sge).remote(0, s.b.key),
        )
        .unwrap();
    s.pair.drive(10 * SEC, |_| false);
    let wa = drain(&mut s.pair.a, s.a.cq);
    assert_eq!(
        common::statuses(&wa),
        vec![(1, WcStatus::RetryExcErr), (2, WcStatus::WrFlushErr)]
    );
    // 2 packets, then 3 retries of both.
    assert_eq!(s.pair.stats.sent, 8);
    // Timeout 8 is 4.096 µs × 2^8 ≈ 1.05 ms per try.
    assert!(
        s.pair.now >= 4 * (4096 << 8) && s.pair.now < 5 * (4096 << 8),
        "{}",
        s.pair.now
    );
}

#[test]
fn cq_overflow_raises_an_async_event() {
    let mut s = setup_with(QpType::Rc, clean(), 11, Mtu::Mtu1024, MEM, 2, |_| {});
    let sge = [Sge {
        addr: 0,
        length: 16,
        lkey: s.a.key,
    }];
    for i in 0..4 {
        s.pair
            .a
            .post_send(
                s.a.qp,
                &SendWr::new(i, SendOp::Write, &sge).remote(0, s.b.key),
            )
            .unwrap();
    }
    s.pair.drive(SEC, |_| false);
    assert_eq!(s.pair.a.poll_event(), Some(AsyncEvent::CqErr(s.a.cq)));
    assert_eq!(drain(&mut s.pair.a, s.a.cq).len(), 2);
    // A full send CQ loses completions but, as in rxe, leaves the QP be.
    assert_eq!(s.pair.a.qp(s.a.qp).unwrap().state(), QpState::Rts);
}

/// A full receive CQ is a class G error, as in rxe: the CQ raises its
/// event and the responder's QP goes to ERR without acknowledging the
/// request that found it full. Every earlier message was delivered,
/// completed and acknowledged, so the requester completes those with
/// success, retries the unacknowledged one until its retries run out and
/// flushes the rest.
#[test]
fn receive_cq_overflow_moves_the_responder_to_error() {
    let mut s = setup_with(QpType::Rc, clean(), 12, Mtu::Mtu1024, MEM, 4, |c| {
        c.retry = 2
    });
    for i in 0..6u64 {
        let r = [Sge {
            addr: 0x10_000 + i * 0x100,
            length: 0x100,
            lkey: s.b.key,
        }];
        s.pair
            .b
            .post_recv(
                s.b.qp,
                &RecvWr {
                    wr_id: 100 + i,
                    sges: &r,
                },
            )
            .unwrap();
    }
    for i in 0..6u64 {
        s.pair.a.memory_mut().as_mut_slice()[i as usize * 0x100..][..0x40].fill(i as u8 + 1);
        let sge = [Sge {
            addr: i * 0x100,
            length: 0x40,
            lkey: s.a.key,
        }];
        s.pair
            .a
            .post_send(s.a.qp, &SendWr::new(i, SendOp::Send, &sge))
            .unwrap();
    }
    // A's CQ is as small as B's: take its completions as they come.
    let mut wa = Vec::new();
    let a_cq = s.a.cq;
    s.pair.drive(10 * SEC, |p| {
        wa.extend(drain(&mut p.a, a_cq));
        false
    });
    wa.extend(drain(&mut s.pair.a, a_cq));
    assert_eq!(
        common::statuses(&wa),
        vec![
            (0, WcStatus::Success),
            (1, WcStatus::Success),
            (2, WcStatus::Success),
            (3, WcStatus::Success),
            (4, WcStatus::RetryExcErr),
            (5, WcStatus::WrFlushErr),
        ]
    );
    assert_eq!(s.pair.a.qp(s.a.qp).unwrap().state(), QpState::Err);
    // One event, though the flush of B's last receive was lost too.
    assert_eq!(s.pair.b.poll_event(), Some(AsyncEvent::CqErr(s.b.cq)));
    assert_eq!(s.pair.b.poll_event(), None);
    assert_eq!(s.pair.b.qp(s.b.qp).unwrap().state(), QpState::Err);
    let wb = drain(&mut s.pair.b, s.b.cq);
    assert_eq!(
        common::statuses(&wb),
        (100..104)
            .map(|i| (i, WcStatus::Success))
            .collect::<Vec<_>>()
    );
    let m = s.pair.b.memory().as_slice();
    for i in 0..4 {
        let at = 0x10_000 + i * 0x100;
        assert!(m[at..at + 0x40].iter().all(|&b| b == i as u8 + 1));
    }
}

/// The link under a port fails: every live QP moves to ERR and flushes
/// its outstanding work with FLUSH_ERR, each raises a fatal event, and a
/// port error follows; QPs in RESET are left alone.
#[test]
fn port_down_moves_live_qps_to_error() {
    let mut s = setup(QpType::Rc, clean(), 3, Mtu::Mtu1024, MEM);
    let sge = [Sge {
        addr: 0,
        length: 64,
        lkey: s.a.key,
    }];
    for id in 0..3 {
        s.pair
            .a
            .post_send(
                s.a.qp,
                &SendWr::new(id, SendOp::Write, &sge).remote(0, s.b.key),
            )
            .unwrap();
    }
    s.pair
        .a
        .post_recv(
            s.a.qp,
            &RecvWr {
                wr_id: 9,
                sges: &sge,
            },
        )
        .unwrap();
    assert_eq!(s.pair.a.port_down(), 1);
    assert_eq!(s.pair.a.qp(s.a.qp).unwrap().state(), QpState::Err);
    let wcs = drain(&mut s.pair.a, s.a.cq);
    let mut ids: Vec<u64> = wcs.iter().map(|w| w.wr_id).collect();
    ids.sort_unstable();
    assert_eq!(ids, vec![0, 1, 2, 9]);
    assert!(
        wcs.iter().all(|w| w.status == WcStatus::WrFlushErr),
        "{wcs:?}"
    );
    assert_eq!(s.pair.a.poll_event(), Some(AsyncEvent::QpFatal(s.a.qp)));
    assert_eq!(s.pair.a.poll_event(), Some(AsyncEvent::PortError));
    assert_eq!(s.pair.a.poll_event(), None);
    // Nothing more goes out from a port that is down.
    assert!(s.pair.a.poll_transmit(0, &mut [0u8; 4096]).is_none());
}

/// A receive WQE whose SGE names no valid local key: the SEND cannot be
/// placed, which rxe calls a malformed WQE. The requester gets the remote
/// operational error NAK (REM_OP_ERR), the responder's receive completes
/// with LOC_QP_OP_ERR, and both QPs go to ERR.
#[test]
fn send_into_a_receive_with_a_bad_lkey_is_a_remote_operational_error() {
    let mut s = setup(QpType::Rc, clean(), 13, Mtu::Mtu1024, MEM);
    let bad = [Sge {
        addr: 0x8000,
        length: 64,
        lkey: s.b.key ^ 0x100,
    }];
    s.pair
        .b
        .post_recv(
            s.b.qp,
            &RecvWr {
                wr_id: 100,
                sges: &bad,
            },
        )
        .unwrap();
    let sge = [Sge {
        addr: 0,
        length: 16,
        lkey: s.a.key,
    }];
    for id in [1, 2] {
        s.pair
            .a
            .post_send(s.a.qp, &SendWr::new(id, SendOp::Send, &sge))
            .unwrap();
    }
    s.pair.drive(SEC, |_| false);
    let wa = drain(&mut s.pair.a, s.a.cq);
    assert_eq!(
        common::statuses(&wa),
        vec![(1, WcStatus::RemOpErr), (2, WcStatus::WrFlushErr)]
    );
    let wb = drain(&mut s.pair.b, s.b.cq);
    assert_eq!(common::statuses(&wb), vec![(100, WcStatus::LocQpOpErr)]);
    assert_eq!(s.pair.a.qp(s.a.qp).unwrap().state(), QpState::Err);
    assert_eq!(s.pair.b.qp(s.b.qp).unwrap().state(), QpState::Err);
}
