//! The QP state machine against a model of IBTA 10.3.1: random sequences
//! of `modify_qp` calls land exactly where the model says, required
//! attributes are enforced, and entering ERR flushes every outstanding
//! work request.

mod common;

use proptest::prelude::*;
use transport::{
    engine::{Engine, QpInit},
    memory::VecMemory,
    sim::Pair,
    verbs::{AhAttr, QpAttr, QpCaps, QpState, QpType, RecvWr, SendOp, SendWr, Sge, WcStatus},
    wire::Mtu,
};

const STATES: [QpState; 7] = [
    QpState::Reset,
    QpState::Init,
    QpState::Rtr,
    QpState::Rts,
    QpState::Sqd,
    QpState::Sqe,
    QpState::Err,
];

fn allowed(from: QpState, to: QpState) -> bool {
    use QpState::*;
    matches!(
        (from, to),
        (_, Reset)
            | (_, Err)
            | (Reset, Init)
            | (Init, Init)
            | (Init, Rtr)
            | (Rtr, Rts)
            | (Rts, Rts)
            | (Rts, Sqd)
            | (Sqd, Sqd)
            | (Sqd, Rts)
            | (Sqe, Rts)
    )
}

/// The attributes a transition requires, and only those.
fn attr_for(from: QpState, to: QpState) -> QpAttr {
    let mut a = QpAttr {
        state: Some(to),
        ..Default::default()
    };
    match (from, to) {
        (QpState::Init, QpState::Rtr) => {
            a.dest_qp_num = Some(99);
            a.rq_psn = Some(5);
            a.path_mtu = Some(Mtu::Mtu1024);
            a.ah = Some(AhAttr {
                dgid: Pair::gid_b(),
                ..Default::default()
            });
        }
        (QpState::Rtr, QpState::Rts) => a.sq_psn = Some(7),
        _ => {}
    }
    a
}

fn new_qp(e: &mut Engine<VecMemory>, qp_type: QpType) -> (u32, u32, u32) {
    let side = common::make_side(e, QpType::Rc, 1 << 16, 1024);
    let qp = e
        .create_qp(&QpInit {
            qp_type,
            pd: side.pd,
            send_cq: side.cq,
            recv_cq: side.cq,
            caps: QpCaps {
                max_send_wr: 8,
                max_recv_wr: 8,
                max_send_sge: 1,
                max_recv_sge: 1,
                max_inline_data: 0,
            },
            sq_sig_all: true,
            srq: None,
        })
        .unwrap();
    (qp, side.cq, side.key)
}

proptest! {
    #[test]
    fn transitions_follow_the_model(
        seq in proptest::collection::vec((0usize..7, any::<bool>()), 1..40),
        ud: bool,
    ) {
        let mut e = Engine::new(Default::default(), VecMemory::new(1 << 16));
        let (qp, _, _) = new_qp(&mut e, if ud { QpType::Ud } else { QpType::Rc });
        let mut state = QpState::Reset;
        for (i, stray) in seq {
            let to = STATES[i];
            let mut a = attr_for(state, to);
            // A send-side attribute where the transition does not allow it.
            let forbidden = stray && !matches!((state, to), (QpState::Rtr, QpState::Rts) | (QpState::Sqd, QpState::Sqd))
                && !matches!(to, QpState::Reset | QpState::Err);
            if stray {
                a.timeout = Some(3);
            }
            let r = e.modify_qp(qp, &a, 0);
            if allowed(state, to) && !forbidden {
                prop_assert!(r.is_ok(), "{state:?} -> {to:?}: {r:?}");
                state = to;
            } else {
                prop_assert!(r.is_err(), "{state:?} -> {to:?} accepted");
            }
            prop_assert_eq!(e.qp(qp).unwrap().state(), state);
        }
    }
}

#[test]
fn connected_qps_need_their_attributes() {
    let mut e = Engine::new(Default::default(), VecMemory::new(1 << 16));
    let (qp, _, _) = new_qp(&mut e, QpType::Rc);
    let mut a = attr_for(QpState::Reset, QpState::Init);
    a.sq_psn = Some(1);
    assert!(
        e.modify_qp(qp, &a, 0).is_err(),
        "sq_psn is not set going to INIT"
    );
    e.modify_qp(qp, &attr_for(QpState::Reset, QpState::Init), 0)
        .unwrap();
    let rtr = attr_for(QpState::Init, QpState::Rtr);
    let mut a = rtr;
    a.dest_qp_num = None;
    assert!(e.modify_qp(qp, &a, 0).is_err());
    let mut a = rtr;
    a.ah = None;
    assert!(e.modify_qp(qp, &a, 0).is_err());
    let mut a = rtr;
    a.path_mtu = None;
    assert!(e.modify_qp(qp, &a, 0).is_err());
    e.modify_qp(qp, &rtr, 0).unwrap();
    let rts = attr_for(QpState::Rtr, QpState::Rts);
    let mut a = rts;
    a.sq_psn = None;
    assert!(e.modify_qp(qp, &a, 0).is_err());
    let mut a = rts;
    a.retry_cnt = Some(8);
    assert!(e.modify_qp(qp, &a, 0).is_err(), "retry_cnt is 3 bits");
    let mut a = rts;
    a.max_rd_atomic = Some(255);
    assert!(e.modify_qp(qp, &a, 0).is_err(), "above max_qp_init_rd_atom");
    let mut a = rts;
    a.path_mtu = Some(Mtu::Mtu256);
    assert!(
        e.modify_qp(qp, &a, 0).is_err(),
        "the path is fixed after RTR"
    );
    e.modify_qp(qp, &rts, 0).unwrap();
    assert_eq!(e.qp(qp).unwrap().sq_psn(), 7);
    assert_eq!(e.qp(qp).unwrap().rq_psn(), 5);
    // In RTS the responder resources cannot change under the peer.
    let mut a = attr_for(QpState::Rts, QpState::Rts);
    a.max_dest_rd_atomic = Some(4);
    assert!(e.modify_qp(qp, &a, 0).is_err());
}

#[test]
fn error_flushes_everything_and_reset_empties() {
    let mut e = Engine::new(Default::default(), VecMemory::new(1 << 16));
    let (qp, cq, key) = new_qp(&mut e, QpType::Rc);
    let mut from = QpState::Reset;
    for s in [QpState::Init, QpState::Rtr, QpState::Rts] {
        e.modify_qp(qp, &attr_for(from, s), 0).unwrap();
        from = s;
    }
    let sge = [Sge {
        addr: 0,
        length: 8,
        lkey: key,
    }];
    for i in 0..3 {
        e.post_recv(
            qp,
            &RecvWr {
                wr_id: 100 + i,
                sges: &sge,
            },
        )
        .unwrap();
        e.post_send(qp, &SendWr::new(i, SendOp::Send, &sge))
            .unwrap();
    }
    e.modify_qp(qp, &attr_for(QpState::Rts, QpState::Err), 0)
        .unwrap();
    let wcs = common::drain(&mut e, cq);
    assert_eq!(wcs.len(), 6);
    assert!(wcs.iter().all(|w| w.status == WcStatus::WrFlushErr));
    let mut ids: Vec<u64> = wcs.iter().map(|w| w.wr_id).collect();
    ids.sort_unstable();
    assert_eq!(ids, vec![0, 1, 2, 100, 101, 102]);
    let mut buf = vec![0u8; 4096];
    assert!(
        e.poll_transmit(0, &mut buf).is_none(),
        "nothing goes out of a QP in ERR"
    );
    e.modify_qp(qp, &attr_for(QpState::Err, QpState::Reset), 0)
        .unwrap();
    assert!(common::drain(&mut e, cq).is_empty());
    assert_eq!(e.qp(qp).unwrap().state(), QpState::Reset);
}
