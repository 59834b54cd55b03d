//! Misuse of the verbs gets a clear error and changes nothing: busy
//! objects, unknown handles, limits, bad access flags, malformed work
//! requests.

mod common;

use common::setup;
use transport::{
    engine::{Engine, QpInit},
    memory::VecMemory,
    sim::LinkConfig,
    verbs::{Access, QpCaps, QpType, RecvWr, SendOp, SendWr, Sge, VerbsError},
    wire::Mtu,
};

fn caps(sge: u32, inline: u32) -> QpCaps {
    QpCaps {
        max_send_wr: 2,
        max_recv_wr: 2,
        max_send_sge: sge,
        max_recv_sge: sge,
        max_inline_data: inline,
    }
}

#[test]
fn objects_in_use_cannot_be_destroyed() {
    let mut e = Engine::new(Default::default(), VecMemory::new(4096));
    let pd = e.alloc_pd().unwrap();
    let cq = e.create_cq(4).unwrap();
    let mr = e.reg_mr(pd, 0, 4096, 0, Access::LOCAL_WRITE).unwrap();
    let qp = e
        .create_qp(&QpInit {
            qp_type: QpType::Rc,
            pd,
            send_cq: cq,
            recv_cq: cq,
            caps: caps(1, 0),
            sq_sig_all: true,
            srq: None,
        })
        .unwrap();
    assert_eq!(e.dealloc_pd(pd), Err(VerbsError::Busy("protection domain")));
    assert_eq!(e.destroy_cq(cq), Err(VerbsError::Busy("completion queue")));
    e.destroy_qp(qp).unwrap();
    assert!(matches!(
        e.destroy_qp(qp),
        Err(VerbsError::NoSuchObject { kind: "QP", .. })
    ));
    assert_eq!(
        e.dealloc_pd(pd),
        Err(VerbsError::Busy("protection domain")),
        "the MR"
    );
    e.dereg_mr(mr).unwrap();
    assert!(e.dereg_mr(mr).is_err());
    e.destroy_cq(cq).unwrap();
    e.dealloc_pd(pd).unwrap();
    assert!(e.dealloc_pd(pd).is_err());
    assert!(e.dealloc_pd(0).is_err(), "handle 0 is never valid");
}

#[test]
fn registration_checks() {
    let mut e = Engine::new(Default::default(), VecMemory::new(4096));
    let pd = e.alloc_pd().unwrap();
    assert!(
        matches!(
            e.reg_mr(pd, 0, 4096, 0, Access::REMOTE_WRITE),
            Err(VerbsError::Invalid(_))
        ),
        "remote write needs local write"
    );
    assert!(
        e.reg_mr(pd, u64::MAX - 10, 100, 0, Access::LOCAL_WRITE)
            .is_err(),
        "iova overflow"
    );
    assert!(
        e.reg_mr(pd, 0, 100, u64::MAX - 10, Access::LOCAL_WRITE)
            .is_err(),
        "base overflow"
    );
    assert!(
        e.reg_mr(pd, 0, 100, 0, Access(1 << 20)).is_err(),
        "unknown flag"
    );
    assert!(
        e.reg_mr(pd + 1, 0, 100, 0, Access::LOCAL_WRITE).is_err(),
        "unknown PD"
    );
    assert!(e.create_cq(0).is_err());
    assert!(e.create_cq(1 << 20).is_err());
    assert!(e.alloc_mr(pd, 0).is_err());
    assert!(e.alloc_mr(pd, 100_000).is_err());
    assert!(e.alloc_mw(pd, 3).is_err());
}

#[test]
fn work_request_checks() {
    let mut s = setup(
        QpType::Rc,
        LinkConfig::clean(1000),
        1,
        Mtu::Mtu1024,
        1 << 16,
    );
    let cq = s.a.cq;
    assert!(matches!(
        s.pair.a.create_qp(&QpInit {
            qp_type: QpType::Rc,
            pd: s.a.pd,
            send_cq: cq,
            recv_cq: cq,
            caps: caps(33, 0),
            sq_sig_all: false,
            srq: None
        }),
        Err(VerbsError::Limit {
            what: "SGEs per WR",
            ..
        })
    ));
    assert!(
        s.pair
            .a
            .create_qp(&QpInit {
                qp_type: QpType::Rc,
                pd: s.a.pd,
                send_cq: cq,
                recv_cq: 999,
                caps: caps(1, 0),
                sq_sig_all: false,
                srq: None
            })
            .is_err()
    );
    let sge = [Sge {
        addr: 0,
        length: 8,
        lkey: s.a.key,
    }; 5];
    let wr = SendWr::new(1, SendOp::Send, &sge);
    assert_eq!(
        s.pair.a.post_send(s.a.qp, &wr),
        Err(VerbsError::Invalid("too many SGEs"))
    );
    let one = &sge[..1];
    let mut inline = SendWr::new(1, SendOp::Read, one);
    inline.inline = true;
    assert!(s.pair.a.post_send(s.a.qp, &inline).is_err(), "inline READ");
    // Inline data beyond the QP's max_inline_data (256 here), and a QP
    // asking for more than the device's 512 bytes.
    let long = [Sge {
        addr: 0,
        length: 257,
        lkey: s.a.key,
    }];
    let mut inline = SendWr::new(1, SendOp::Send, &long);
    inline.inline = true;
    assert_eq!(
        s.pair.a.post_send(s.a.qp, &inline),
        Err(VerbsError::Invalid(
            "inline data too long or not a SEND/WRITE"
        ))
    );
    assert!(matches!(
        s.pair.a.create_qp(&QpInit {
            qp_type: QpType::Rc,
            pd: s.a.pd,
            send_cq: cq,
            recv_cq: cq,
            caps: caps(1, 513),
            sq_sig_all: false,
            srq: None
        }),
        Err(VerbsError::Limit {
            what: "inline data",
            ..
        })
    ));
    // A message beyond max_msg_size (2^31 bytes, as rxe).
    let huge = [Sge {
        addr: 0,
        length: 0x8000_0000,
        lkey: s.a.key,
    }; 2];
    assert_eq!(
        s.pair
            .a
            .post_send(s.a.qp, &SendWr::new(1, SendOp::Write, &huge).remote(0, 0)),
        Err(VerbsError::Invalid("message too long"))
    );
    let two = [Sge {
        addr: 0,
        length: 4,
        lkey: s.a.key,
    }; 2];
    assert_eq!(
        s.pair
            .a
            .post_send(s.a.qp, &SendWr::new(1, SendOp::FetchAdd { add: 1 }, &two)),
        Err(VerbsError::Invalid("atomics need one 8-byte SGE"))
    );
    let mut ud = SendWr::new(1, SendOp::Send, one);
    ud.ud = Some(transport::verbs::UdDest {
        ah: Default::default(),
        remote_qpn: 1,
        remote_qkey: 0,
    });
    assert!(
        s.pair.a.post_send(s.a.qp, &ud).is_err(),
        "RC QPs take no UD destination"
    );
    assert!(
        s.pair
            .a
            .post_send(12345, &SendWr::new(1, SendOp::Send, one))
            .is_err()
    );
    // A full send queue.
    for i in 0..512 {
        s.pair
            .a
            .post_send(s.a.qp, &SendWr::new(i, SendOp::Send, one))
            .unwrap();
    }
    assert_eq!(
        s.pair
            .a
            .post_send(s.a.qp, &SendWr::new(0, SendOp::Send, one)),
        Err(VerbsError::QueueFull)
    );
    for i in 0..512 {
        s.pair
            .a
            .post_recv(
                s.a.qp,
                &RecvWr {
                    wr_id: i,
                    sges: one,
                },
            )
            .unwrap();
    }
    assert_eq!(
        s.pair.a.post_recv(
            s.a.qp,
            &RecvWr {
                wr_id: 0,
                sges: one
            }
        ),
        Err(VerbsError::QueueFull)
    );
}
