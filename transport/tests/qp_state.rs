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
    verbs::{
        Access, AhAttr, QpAttr, QpCaps, QpState, QpType, RecvWr, SendOp, SendWr, Sge, WcStatus,
    },
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

const TYPES: [QpType; 4] = [QpType::Rc, QpType::Uc, QpType::Ud, QpType::Gsi];

/// The attributes `QpAttr` carries, by the names ib_core gives them.
const NAMES: [&str; 14] = [
    "ACCESS_FLAGS",
    "PKEY_INDEX",
    "QKEY",
    "AV",
    "PATH_MTU",
    "TIMEOUT",
    "RETRY_CNT",
    "RNR_RETRY",
    "RQ_PSN",
    "MAX_QP_RD_ATOMIC",
    "MIN_RNR_TIMER",
    "SQ_PSN",
    "MAX_DEST_RD_ATOMIC",
    "DEST_QPN",
];

/// The model: Linux ib_core's `qp_state_table` as rxe is held to it,
/// copied row by row (attributes `QpAttr` lacks, such as the port, the
/// alternate path and CUR_STATE, are left out). `None`: not a valid
/// transition; else the required and the optional attributes.
fn ib_core(
    from: QpState,
    to: QpState,
    t: QpType,
) -> Option<(Vec<&'static str>, Vec<&'static str>)> {
    use QpState::*;
    use QpType::*;
    let v = |x: &[&'static str]| x.to_vec();
    let (req, opt): (&[&str], &[&str]) = match (from, to, t) {
        (Reset, Reset, _) => (&[], &[]),
        (Reset, Init, Ud | Gsi) => (&["PKEY_INDEX", "QKEY"], &[]),
        (Reset, Init, Rc | Uc) => (&["PKEY_INDEX", "ACCESS_FLAGS"], &[]),
        (Reset, _, _) => return None,
        (_, Reset | Err, _) => (&[], &[]),
        (Init, Init, Ud | Gsi) => (&[], &["PKEY_INDEX", "QKEY"]),
        (Init, Init, Rc | Uc) => (&[], &["PKEY_INDEX", "ACCESS_FLAGS"]),
        (Init, Rtr, Ud | Gsi) => (&[], &["PKEY_INDEX", "QKEY"]),
        (Init, Rtr, Uc) => (
            &["AV", "PATH_MTU", "DEST_QPN", "RQ_PSN"],
            &["ACCESS_FLAGS", "PKEY_INDEX"],
        ),
        (Init, Rtr, Rc) => (
            &[
                "AV",
                "PATH_MTU",
                "DEST_QPN",
                "RQ_PSN",
                "MAX_DEST_RD_ATOMIC",
                "MIN_RNR_TIMER",
            ],
            &["ACCESS_FLAGS", "PKEY_INDEX"],
        ),
        (Rtr, Rts, Ud | Gsi) => (&["SQ_PSN"], &["QKEY"]),
        (Rtr, Rts, Uc) => (&["SQ_PSN"], &["ACCESS_FLAGS"]),
        (Rtr, Rts, Rc) => (
            &[
                "TIMEOUT",
                "RETRY_CNT",
                "RNR_RETRY",
                "SQ_PSN",
                "MAX_QP_RD_ATOMIC",
            ],
            &["ACCESS_FLAGS", "MIN_RNR_TIMER"],
        ),
        (Rts | Sqd, Rts, Ud | Gsi) | (Sqe, Rts, Ud | Gsi) => (&[], &["QKEY"]),
        (Rts | Sqd, Rts, Uc) | (Sqe, Rts, Uc) => (&[], &["ACCESS_FLAGS"]),
        (Rts | Sqd, Rts, Rc) => (&[], &["ACCESS_FLAGS", "MIN_RNR_TIMER"]),
        (Sqe, Rts, Rc) => (&[], &[]),
        (Rts, Sqd, _) => (&[], &[]),
        (Sqd, Sqd, Ud | Gsi) => (&[], &["PKEY_INDEX", "QKEY"]),
        (Sqd, Sqd, Uc) => (&[], &["AV", "ACCESS_FLAGS", "PKEY_INDEX"]),
        (Sqd, Sqd, Rc) => (
            &[],
            &[
                "AV",
                "TIMEOUT",
                "RETRY_CNT",
                "RNR_RETRY",
                "MAX_QP_RD_ATOMIC",
                "MAX_DEST_RD_ATOMIC",
                "ACCESS_FLAGS",
                "PKEY_INDEX",
                "MIN_RNR_TIMER",
            ],
        ),
        _ => return None,
    };
    Some((v(req), v(opt)))
}

/// A `modify_qp` to `to` that sets the attributes named in `names`, each
/// with a value in range.
fn attr_with(to: QpState, names: &[&str]) -> QpAttr {
    let mut a = QpAttr {
        state: Some(to),
        ..Default::default()
    };
    for n in names {
        match *n {
            "ACCESS_FLAGS" => a.access = Some(Access::REMOTE_WRITE),
            "PKEY_INDEX" => a.pkey_index = Some(0),
            "QKEY" => a.qkey = Some(0x1111_1111),
            "AV" => {
                a.ah = Some(AhAttr {
                    dgid: Pair::gid_b(),
                    ..Default::default()
                })
            }
            "PATH_MTU" => a.path_mtu = Some(Mtu::Mtu1024),
            "TIMEOUT" => a.timeout = Some(14),
            "RETRY_CNT" => a.retry_cnt = Some(7),
            "RNR_RETRY" => a.rnr_retry = Some(7),
            "RQ_PSN" => a.rq_psn = Some(5),
            "MAX_QP_RD_ATOMIC" => a.max_rd_atomic = Some(4),
            "MIN_RNR_TIMER" => a.min_rnr_timer = Some(1),
            "SQ_PSN" => a.sq_psn = Some(7),
            "MAX_DEST_RD_ATOMIC" => a.max_dest_rd_atomic = Some(4),
            "DEST_QPN" => a.dest_qp_num = Some(99),
            other => panic!("unknown attribute {other}"),
        }
    }
    a
}

/// The attributes an RC transition requires, and only those.
fn attr_for(from: QpState, to: QpState) -> QpAttr {
    let (req, _) = ib_core(from, to, QpType::Rc).expect("a valid transition");
    attr_with(to, &req)
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
    /// Random walks of `modify_qp` with random sets of attributes, half of
    /// them built from the model's own required and optional attributes
    /// so that valid transitions are common.
    #[test]
    fn transitions_follow_the_model(
        seq in proptest::collection::vec((0usize..7, any::<bool>(), any::<u16>()), 1..40),
        t in 0usize..4,
    ) {
        let t = TYPES[t];
        let mut e = Engine::new(Default::default(), VecMemory::new(1 << 16));
        let (qp, _, _) = new_qp(&mut e, t);
        let mut state = QpState::Reset;
        for (i, from_model, bits) in seq {
            let to = STATES[i];
            let model = ib_core(state, to, t);
            let names: Vec<&str> = match (&model, from_model) {
                // An invalid transition with nothing else wrong.
                (None, true) => Vec::new(),
                (Some((req, opt)), true) => {
                    // The required ones, a random few of the optional
                    // ones, and now and then one stray attribute.
                    let mut n = req.clone();
                    n.extend(opt.iter().enumerate().filter(|(k, _)| bits >> k & 1 == 1).map(|(_, x)| *x));
                    if bits >> 15 == 1 {
                        n.push(NAMES[usize::from(bits >> 8 & 0xf) % NAMES.len()]);
                    }
                    n.sort_unstable();
                    n.dedup();
                    n
                }
                _ => NAMES.iter().enumerate().filter(|(k, _)| bits >> k & 1 == 1).map(|(_, x)| *x).collect(),
            };
            let ok = model.is_some_and(|(req, opt)| {
                req.iter().all(|r| names.contains(r))
                    && names.iter().all(|n| req.contains(n) || opt.contains(n))
            });
            let r = e.modify_qp(qp, &attr_with(to, &names), 0);
            if ok {
                prop_assert!(r.is_ok(), "{t:?} {state:?} -> {to:?} with {names:?}: {r:?}");
                state = to;
            } else {
                prop_assert!(r.is_err(), "{t:?} {state:?} -> {to:?} with {names:?} accepted");
            }
            prop_assert_eq!(e.qp(qp).unwrap().state(), state);
        }
    }
}

/// Every valid transition of every QP type, from its state reached the
/// normal way, with exactly the required attributes: accepted; with one
/// required attribute left out: refused, and the QP stays where it was.
#[test]
fn every_valid_transition_needs_each_required_attribute() {
    use QpState::*;
    // How to reach each state from RESET.
    let path = |s: QpState| -> &'static [QpState] {
        match s {
            Reset => &[],
            Init => &[Init],
            Rtr => &[Init, Rtr],
            Rts => &[Init, Rtr, Rts],
            Sqd => &[Init, Rtr, Rts, Sqd],
            Err => &[Init, Err],
            Sqe => &[],
        }
    };
    let mut checked = 0;
    for t in TYPES {
        for from in STATES.into_iter().filter(|&s| s != Sqe) {
            for to in STATES {
                let Some((req, _)) = ib_core(from, to, t) else {
                    continue;
                };
                for skip in std::iter::once(None).chain((0..req.len()).map(Some)) {
                    let mut e = Engine::new(Default::default(), VecMemory::new(1 << 16));
                    let (qp, _, _) = new_qp(&mut e, t);
                    let mut cur = Reset;
                    for &s in path(from) {
                        let (r, _) = ib_core(cur, s, t).unwrap();
                        e.modify_qp(qp, &attr_with(s, &r), 0).unwrap();
                        cur = s;
                    }
                    let names: Vec<&str> = req
                        .iter()
                        .enumerate()
                        .filter(|(k, _)| Some(*k) != skip)
                        .map(|(_, x)| *x)
                        .collect();
                    let r = e.modify_qp(qp, &attr_with(to, &names), 0);
                    if let Some(k) = skip {
                        assert!(r.is_err(), "{t:?} {from:?} -> {to:?} without {:?}", req[k]);
                        assert_eq!(e.qp(qp).unwrap().state(), from);
                    } else {
                        assert!(r.is_ok(), "{t:?} {from:?} -> {to:?}: {r:?}");
                        assert_eq!(e.qp(qp).unwrap().state(), to);
                    }
                    checked += 1;
                }
            }
        }
    }
    assert!(checked > 100, "{checked}");
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

/// A path MTU above the port's is refused going to RTR.
#[test]
fn path_mtu_above_the_port_mtu_is_refused() {
    let dev = transport::device::DeviceAttrs {
        max_mtu: Mtu::Mtu1024,
        ..Default::default()
    };
    let mut e = Engine::new(dev, VecMemory::new(1 << 16));
    let (qp, _, _) = new_qp(&mut e, QpType::Rc);
    e.modify_qp(qp, &attr_for(QpState::Reset, QpState::Init), 0)
        .unwrap();
    let mut rtr = attr_for(QpState::Init, QpState::Rtr);
    rtr.path_mtu = Some(Mtu::Mtu2048);
    assert!(matches!(
        e.modify_qp(qp, &rtr, 0),
        Err(transport::verbs::VerbsError::BadTransition {
            why: "path MTU above the port MTU",
            ..
        })
    ));
    rtr.path_mtu = Some(Mtu::Mtu1024);
    e.modify_qp(qp, &rtr, 0).unwrap();
}
