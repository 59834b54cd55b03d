//! Shared receive queues: two QPs draw from one SRQ, the limit event fires
//! once below the armed watermark, and an empty SRQ makes RC answer with
//! RNR NAKs until receives are posted.

mod common;

use common::{Conn, connect, drain};
use transport::{
    engine::QpInit,
    sim::{LinkConfig, Pair},
    verbs::{AsyncEvent, QpCaps, QpType, RecvWr, SendOp, SendWr, Sge, VerbsError, WcStatus},
    wire::Mtu,
};

const SEC: u64 = 1_000_000_000;

fn caps() -> QpCaps {
    QpCaps {
        max_send_wr: 64,
        max_recv_wr: 64,
        max_send_sge: 1,
        max_recv_sge: 1,
        max_inline_data: 0,
    }
}

#[test]
fn two_qps_share_one_srq() {
    let mut pair = Pair::new(LinkConfig::clean(1000), 1, 1 << 20);
    let a = common::make_side(&mut pair.a, QpType::Rc, 1 << 20, 256);
    let b = common::make_side(&mut pair.b, QpType::Rc, 1 << 20, 256);
    let srq = pair.b.create_srq(b.pd, 8, 1).unwrap();
    let init = |pd, cq, srq| QpInit {
        qp_type: QpType::Rc,
        pd,
        send_cq: cq,
        recv_cq: cq,
        caps: caps(),
        sq_sig_all: true,
        srq,
    };
    let a2 = pair.a.create_qp(&init(a.pd, a.cq, None)).unwrap();
    let b1 = pair.b.create_qp(&init(b.pd, b.cq, Some(srq))).unwrap();
    let b2 = pair.b.create_qp(&init(b.pd, b.cq, Some(srq))).unwrap();
    let c = Conn {
        dest: b1,
        dgid: Pair::gid_b(),
        mtu: Mtu::Mtu1024,
        sq_psn: 100,
        rq_psn: 200,
        timeout: 12,
        retry: 7,
        rnr_retry: 7,
    };
    connect(&mut pair.a, a.qp, c);
    connect(
        &mut pair.a,
        a2,
        Conn {
            dest: b2,
            sq_psn: 300,
            rq_psn: 400,
            ..c
        },
    );
    let cb = Conn {
        dgid: Pair::gid_a(),
        ..c
    };
    connect(
        &mut pair.b,
        b1,
        Conn {
            dest: a.qp,
            sq_psn: 200,
            rq_psn: 100,
            ..cb
        },
    );
    connect(
        &mut pair.b,
        b2,
        Conn {
            dest: a2,
            sq_psn: 400,
            rq_psn: 300,
            ..cb
        },
    );

    // Receives go to the SRQ, not to the QP.
    let rsge = [Sge {
        addr: 0x8000,
        length: 64,
        lkey: b.key,
    }];
    assert_eq!(
        pair.b.post_recv(
            b1,
            &RecvWr {
                wr_id: 0,
                sges: &rsge
            }
        ),
        Err(VerbsError::Invalid("the QP receives from an SRQ"))
    );
    for i in 0..8 {
        pair.b
            .post_srq_recv(
                srq,
                &RecvWr {
                    wr_id: i,
                    sges: &rsge,
                },
            )
            .unwrap();
    }
    assert_eq!(
        pair.b.post_srq_recv(
            srq,
            &RecvWr {
                wr_id: 9,
                sges: &rsge
            }
        ),
        Err(VerbsError::QueueFull)
    );
    pair.b.modify_srq(srq, 4).unwrap();

    let sge = [Sge {
        addr: 0,
        length: 16,
        lkey: a.key,
    }];
    for i in 0..3 {
        pair.a
            .post_send(a.qp, &SendWr::new(i, SendOp::Send, &sge))
            .unwrap();
        pair.a
            .post_send(a2, &SendWr::new(10 + i, SendOp::Send, &sge))
            .unwrap();
    }
    pair.drive(SEC, |_| false);
    let wb = drain(&mut pair.b, b.cq);
    assert_eq!(wb.len(), 6);
    let mut ids: Vec<u64> = wb.iter().map(|w| w.wr_id).collect();
    ids.sort_unstable();
    assert_eq!(ids, vec![0, 1, 2, 3, 4, 5], "each SRQ WQE used once");
    assert_eq!(wb.iter().filter(|w| w.qp_num == b1).count(), 3);
    assert_eq!(wb.iter().filter(|w| w.qp_num == b2).count(), 3);
    assert_eq!(pair.b.srq(srq).unwrap().len(), 2);
    assert_eq!(pair.b.poll_event(), Some(AsyncEvent::SrqLimitReached(srq)));
    assert_eq!(pair.b.poll_event(), None, "the limit fires once");
    assert_eq!(pair.b.srq(srq).unwrap().limit(), 0, "and disarms");

    // Drain the SRQ: further SENDs wait on RNR until receives arrive.
    for i in 3..6 {
        pair.a
            .post_send(a.qp, &SendWr::new(i, SendOp::Send, &sge))
            .unwrap();
    }
    pair.drive(pair.now + SEC / 100, |_| false);
    assert_eq!(drain(&mut pair.b, b.cq).len(), 2);
    for i in 20..22 {
        pair.b
            .post_srq_recv(
                srq,
                &RecvWr {
                    wr_id: i,
                    sges: &rsge,
                },
            )
            .unwrap();
    }
    pair.drive(pair.now + SEC, |_| false);
    assert_eq!(drain(&mut pair.b, b.cq).len(), 1);
    let wa = drain(&mut pair.a, a.cq);
    assert_eq!(wa.len(), 9);
    assert!(wa.iter().all(|w| w.status == WcStatus::Success));
    // A QP attached to the SRQ keeps it alive.
    assert_eq!(
        pair.b.destroy_srq(srq),
        Err(VerbsError::Busy("shared receive queue"))
    );
}
