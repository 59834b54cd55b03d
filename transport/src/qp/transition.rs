//! Which `modify_qp` transitions are valid, and which attributes each one
//! requires and allows (IBTA 10.3.1 and 11.2.4.2). The table is the one
//! Linux's ib_core checks for rxe (`ib_modify_qp_is_ok`), restricted to
//! the attributes [`QpAttr`] carries: there is one port, no alternate
//! path, no path migration and no SQD notification flag, so those rows
//! have nothing to say here.

use crate::verbs::{QpAttr, QpState, QpType};

/// One attribute of a `modify_qp` call, as a bit of a mask.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Attrs(u16);

impl Attrs {
    const NONE: Attrs = Attrs(0);
    const ACCESS: Attrs = Attrs(1 << 0);
    const PKEY: Attrs = Attrs(1 << 1);
    const QKEY: Attrs = Attrs(1 << 2);
    const AV: Attrs = Attrs(1 << 3);
    const PATH_MTU: Attrs = Attrs(1 << 4);
    const TIMEOUT: Attrs = Attrs(1 << 5);
    const RETRY_CNT: Attrs = Attrs(1 << 6);
    const RNR_RETRY: Attrs = Attrs(1 << 7);
    const RQ_PSN: Attrs = Attrs(1 << 8);
    const MAX_RD_ATOMIC: Attrs = Attrs(1 << 9);
    const MIN_RNR_TIMER: Attrs = Attrs(1 << 10);
    const SQ_PSN: Attrs = Attrs(1 << 11);
    const MAX_DEST_RD_ATOMIC: Attrs = Attrs(1 << 12);
    const DEST_QPN: Attrs = Attrs(1 << 13);

    const fn or(self, o: Attrs) -> Attrs {
        Attrs(self.0 | o.0)
    }

    /// The attributes `a` sets.
    pub(crate) fn of(a: &QpAttr) -> Attrs {
        let given = [
            (a.access.is_some(), Self::ACCESS),
            (a.pkey_index.is_some(), Self::PKEY),
            (a.qkey.is_some(), Self::QKEY),
            (a.ah.is_some(), Self::AV),
            (a.path_mtu.is_some(), Self::PATH_MTU),
            (a.timeout.is_some(), Self::TIMEOUT),
            (a.retry_cnt.is_some(), Self::RETRY_CNT),
            (a.rnr_retry.is_some(), Self::RNR_RETRY),
            (a.rq_psn.is_some(), Self::RQ_PSN),
            (a.max_rd_atomic.is_some(), Self::MAX_RD_ATOMIC),
            (a.min_rnr_timer.is_some(), Self::MIN_RNR_TIMER),
            (a.sq_psn.is_some(), Self::SQ_PSN),
            (a.max_dest_rd_atomic.is_some(), Self::MAX_DEST_RD_ATOMIC),
            (a.dest_qp_num.is_some(), Self::DEST_QPN),
        ];
        given
            .iter()
            .filter(|(set, _)| *set)
            .fold(Self::NONE, |m, (_, bit)| m.or(*bit))
    }
}

/// What each attribute is called in the errors: (bit, missing, not allowed).
const NAMES: [(Attrs, &str, &str); 14] = [
    (
        Attrs::ACCESS,
        "missing required attribute: access flags",
        "attribute not allowed in this transition: access flags",
    ),
    (
        Attrs::PKEY,
        "missing required attribute: pkey_index",
        "attribute not allowed in this transition: pkey_index",
    ),
    (
        Attrs::QKEY,
        "missing required attribute: qkey",
        "attribute not allowed in this transition: qkey",
    ),
    (
        Attrs::AV,
        "missing required attribute: the address vector",
        "attribute not allowed in this transition: the address vector",
    ),
    (
        Attrs::PATH_MTU,
        "missing required attribute: path_mtu",
        "attribute not allowed in this transition: path_mtu",
    ),
    (
        Attrs::TIMEOUT,
        "missing required attribute: timeout",
        "attribute not allowed in this transition: timeout",
    ),
    (
        Attrs::RETRY_CNT,
        "missing required attribute: retry_cnt",
        "attribute not allowed in this transition: retry_cnt",
    ),
    (
        Attrs::RNR_RETRY,
        "missing required attribute: rnr_retry",
        "attribute not allowed in this transition: rnr_retry",
    ),
    (
        Attrs::RQ_PSN,
        "missing required attribute: rq_psn",
        "attribute not allowed in this transition: rq_psn",
    ),
    (
        Attrs::MAX_RD_ATOMIC,
        "missing required attribute: max_rd_atomic",
        "attribute not allowed in this transition: max_rd_atomic",
    ),
    (
        Attrs::MIN_RNR_TIMER,
        "missing required attribute: min_rnr_timer",
        "attribute not allowed in this transition: min_rnr_timer",
    ),
    (
        Attrs::SQ_PSN,
        "missing required attribute: sq_psn",
        "attribute not allowed in this transition: sq_psn",
    ),
    (
        Attrs::MAX_DEST_RD_ATOMIC,
        "missing required attribute: max_dest_rd_atomic",
        "attribute not allowed in this transition: max_dest_rd_atomic",
    ),
    (
        Attrs::DEST_QPN,
        "missing required attribute: dest_qp_num",
        "attribute not allowed in this transition: dest_qp_num",
    ),
];

/// The attributes a transition requires and those it also allows, or
/// `None` where the transition is not valid.
fn params(from: QpState, to: QpState, ty: QpType) -> Option<(Attrs, Attrs)> {
    use QpState::{Err, Init, Reset, Rtr, Rts, Sqd, Sqe};
    use QpType::{Gsi, Rc, Uc, Ud};
    let none = (Attrs::NONE, Attrs::NONE);
    let a = Attrs::ACCESS;
    let p = Attrs::PKEY;
    let q = Attrs::QKEY;
    // The send side of RC, as RTR -> RTS requires it and SQD may change it.
    let rc_send = Attrs::TIMEOUT
        .or(Attrs::RETRY_CNT)
        .or(Attrs::RNR_RETRY)
        .or(Attrs::MAX_RD_ATOMIC);
    let uc_path = Attrs::AV
        .or(Attrs::PATH_MTU)
        .or(Attrs::DEST_QPN)
        .or(Attrs::RQ_PSN);
    let rc_path = uc_path
        .or(Attrs::MAX_DEST_RD_ATOMIC)
        .or(Attrs::MIN_RNR_TIMER);
    Some(match (from, to) {
        (Reset, Reset) => none,
        (Reset, Init) => match ty {
            Rc | Uc => (p.or(a), Attrs::NONE),
            Ud | Gsi => (p.or(q), Attrs::NONE),
        },
        (Reset, _) => return None,
        (_, Reset | Err) => none,
        (Init, Init) => match ty {
            Rc | Uc => (Attrs::NONE, p.or(a)),
            Ud | Gsi => (Attrs::NONE, p.or(q)),
        },
        (Init, Rtr) => match ty {
            Rc => (rc_path, a.or(p)),
            Uc => (uc_path, a.or(p)),
            Ud | Gsi => (Attrs::NONE, p.or(q)),
        },
        (Rtr, Rts) => match ty {
            Rc => (rc_send.or(Attrs::SQ_PSN), a.or(Attrs::MIN_RNR_TIMER)),
            Uc => (Attrs::SQ_PSN, a),
            Ud | Gsi => (Attrs::SQ_PSN, q),
        },
        (Rts | Sqd, Rts) | (Sqe, Rts) => match ty {
            Rc if from == Sqe => none,
            Rc => (Attrs::NONE, a.or(Attrs::MIN_RNR_TIMER)),
            Uc => (Attrs::NONE, a),
            Ud | Gsi => (Attrs::NONE, q),
        },
        (Rts, Sqd) => none,
        (Sqd, Sqd) => match ty {
            Rc => (
                Attrs::NONE,
                rc_send
                    .or(Attrs::AV)
                    .or(Attrs::MAX_DEST_RD_ATOMIC)
                    .or(a)
                    .or(p)
                    .or(Attrs::MIN_RNR_TIMER),
            ),
            Uc => (Attrs::NONE, Attrs::AV.or(a).or(p)),
            Ud | Gsi => (Attrs::NONE, p.or(q)),
        },
        _ => return None,
    })
}

/// Checks a `modify_qp` from `from` with `a` on a QP of type `ty`: the
/// transition must be valid, carry every attribute it requires and no
/// attribute it does not allow. Returns why not.
pub(crate) fn check(from: QpState, a: &QpAttr, ty: QpType) -> Result<(), &'static str> {
    let to = a.state.unwrap_or(from);
    let (req, opt) = params(from, to, ty).ok_or("transition not allowed")?;
    let given = Attrs::of(a);
    for (bit, missing, not_allowed) in NAMES {
        let set = given.0 & bit.0 != 0;
        if req.0 & bit.0 != 0 && !set {
            return Err(missing);
        }
        if set && (req.0 | opt.0) & bit.0 == 0 {
            return Err(not_allowed);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_cover_every_bit_once() {
        let all = NAMES.iter().fold(0u16, |m, (b, _, _)| {
            assert_eq!(m & b.0, 0, "bit named twice");
            m | b.0
        });
        assert_eq!(all, (1 << 14) - 1);
    }

    #[test]
    fn reset_to_error_is_not_a_transition() {
        let a = QpAttr {
            state: Some(QpState::Err),
            ..Default::default()
        };
        for ty in [QpType::Rc, QpType::Uc, QpType::Ud, QpType::Gsi] {
            assert_eq!(check(QpState::Reset, &a, ty), Err("transition not allowed"));
            assert_eq!(check(QpState::Init, &a, ty), Ok(()));
        }
    }
}
