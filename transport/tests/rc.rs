//! RC between two engines on a clean simulated link: every opcode, with
//! the bytes and completions checked on both sides.

mod common;

use common::{drain, setup};
use transport::{
    sim::LinkConfig,
    verbs::{QpType, RecvWr, SendOp, SendWr, Sge, WcOpcode, WcStatus},
    wire::Mtu,
};

const SEC: u64 = 1_000_000_000;

fn fill(mem: &mut [u8], seed: u8) {
    for (i, b) in mem.iter_mut().enumerate() {
        *b = (i as u8).wrapping_mul(31).wrapping_add(seed);
    }
}

#[test]
fn send_multi_packet_with_imm() {
    let mut s = setup(
        QpType::Rc,
        LinkConfig::clean(1000),
        1,
        Mtu::Mtu1024,
        1 << 20,
    );
    fill(&mut s.pair.a.memory_mut().as_mut_slice()[..8192], 7);
    let rsge = [Sge {
        addr: 0x10000,
        length: 8192,
        lkey: s.b.key,
    }];
    s.pair
        .b
        .post_recv(
            s.b.qp,
            &RecvWr {
                wr_id: 9,
                sges: &rsge,
            },
        )
        .unwrap();
    let sge = [Sge {
        addr: 0,
        length: 3000,
        lkey: s.a.key,
    }];
    s.pair
        .a
        .post_send(s.a.qp, &SendWr::new(1, SendOp::SendWithImm(0xabcd), &sge))
        .unwrap();
    assert!(
        s.pair
            .drive(SEC, |p| p.a.poll_timeout().is_none() && p.stats.sent > 3)
    );
    let wa = drain(&mut s.pair.a, s.a.cq);
    let wb = drain(&mut s.pair.b, s.b.cq);
    assert_eq!(wa.len(), 1);
    assert_eq!(
        (wa[0].wr_id, wa[0].status, wa[0].opcode),
        (1, WcStatus::Success, WcOpcode::Send)
    );
    assert_eq!(wb.len(), 1);
    assert_eq!(wb[0].status, WcStatus::Success);
    assert_eq!(wb[0].byte_len, 3000);
    assert_eq!(wb[0].imm_data, Some(0xabcd));
    assert_eq!(
        &s.pair.b.memory().as_slice()[0x10000..0x10000 + 3000],
        &s.pair.a.memory().as_slice()[..3000]
    );
    assert_eq!(s.pair.stats.sent, 4, "3 data packets and one ACK");
}

#[test]
fn write_read_and_atomics() {
    let mut s = setup(QpType::Rc, LinkConfig::clean(1000), 2, Mtu::Mtu256, 1 << 20);
    fill(&mut s.pair.a.memory_mut().as_mut_slice()[..4096], 3);
    fill(
        &mut s.pair.b.memory_mut().as_mut_slice()[0x20000..0x21000],
        99,
    );
    let (ka, kb) = (s.a.key, s.b.key);
    let wsge = [Sge {
        addr: 0,
        length: 1000,
        lkey: ka,
    }];
    s.pair
        .a
        .post_send(
            s.a.qp,
            &SendWr::new(1, SendOp::Write, &wsge).remote(0x30000, kb),
        )
        .unwrap();
    let rsge = [Sge {
        addr: 0x8000,
        length: 777,
        lkey: ka,
    }];
    s.pair
        .a
        .post_send(
            s.a.qp,
            &SendWr::new(2, SendOp::Read, &rsge).remote(0x20000, kb),
        )
        .unwrap();
    // An 8-byte counter at 0x40000 on B.
    s.pair.b.memory_mut().as_mut_slice()[0x40000..0x40008].copy_from_slice(&5u64.to_ne_bytes());
    let asge = [Sge {
        addr: 0x9000,
        length: 8,
        lkey: ka,
    }];
    s.pair
        .a
        .post_send(
            s.a.qp,
            &SendWr::new(3, SendOp::FetchAdd { add: 10 }, &asge).remote(0x40000, kb),
        )
        .unwrap();
    let csge = [Sge {
        addr: 0x9008,
        length: 8,
        lkey: ka,
    }];
    s.pair
        .a
        .post_send(
            s.a.qp,
            &SendWr::new(
                4,
                SendOp::CmpSwap {
                    compare: 15,
                    swap: 77,
                },
                &csge,
            )
            .remote(0x40000, kb),
        )
        .unwrap();
    let zsge: [Sge; 0] = [];
    s.pair
        .a
        .post_send(s.a.qp, &SendWr::new(5, SendOp::Write, &zsge).remote(0, 0))
        .unwrap();
    s.pair.drive(SEC, |_| false);
    let wa = drain(&mut s.pair.a, s.a.cq);
    let ids = common::statuses(&wa);
    assert_eq!(
        ids,
        (1..=5).map(|i| (i, WcStatus::Success)).collect::<Vec<_>>(),
        "{wa:?}"
    );
    assert_eq!(wa[1].opcode, WcOpcode::RdmaRead);
    assert_eq!(wa[1].byte_len, 777);
    let (ma, mb) = (s.pair.a.memory().as_slice(), s.pair.b.memory().as_slice());
    assert_eq!(&mb[0x30000..0x30000 + 1000], &ma[..1000]);
    assert_eq!(&ma[0x8000..0x8000 + 777], &mb[0x20000..0x20000 + 777]);
    assert_eq!(
        u64::from_ne_bytes(ma[0x9000..0x9008].try_into().unwrap()),
        5
    );
    assert_eq!(
        u64::from_ne_bytes(ma[0x9008..0x9010].try_into().unwrap()),
        15
    );
    assert_eq!(
        u64::from_ne_bytes(mb[0x40000..0x40008].try_into().unwrap()),
        77
    );
    assert!(drain(&mut s.pair.b, s.b.cq).is_empty());
}

#[test]
fn write_with_imm_consumes_a_receive() {
    let mut s = setup(QpType::Rc, LinkConfig::clean(1000), 3, Mtu::Mtu512, 1 << 20);
    fill(&mut s.pair.a.memory_mut().as_mut_slice()[..2048], 1);
    let rsge: [Sge; 0] = [];
    s.pair
        .b
        .post_recv(
            s.b.qp,
            &RecvWr {
                wr_id: 70,
                sges: &rsge,
            },
        )
        .unwrap();
    let sge = [Sge {
        addr: 0,
        length: 1500,
        lkey: s.a.key,
    }];
    s.pair
        .a
        .post_send(
            s.a.qp,
            &SendWr::new(1, SendOp::WriteWithImm(42), &sge).remote(0x5000, s.b.key),
        )
        .unwrap();
    s.pair.drive(SEC, |_| false);
    let wb = drain(&mut s.pair.b, s.b.cq);
    assert_eq!(wb.len(), 1);
    assert_eq!(
        (wb[0].wr_id, wb[0].opcode, wb[0].byte_len),
        (70, WcOpcode::RecvRdmaWithImm, 1500)
    );
    assert_eq!(wb[0].imm_data, Some(42));
    assert_eq!(
        &s.pair.b.memory().as_slice()[0x5000..0x5000 + 1500],
        &s.pair.a.memory().as_slice()[..1500]
    );
}

#[test]
fn inline_and_unsignaled() {
    let mut s = setup(
        QpType::Rc,
        LinkConfig::clean(1000),
        4,
        Mtu::Mtu1024,
        1 << 20,
    );
    s.pair.a.memory_mut().as_mut_slice()[..5].copy_from_slice(b"hello");
    let rsge = [Sge {
        addr: 0x100,
        length: 64,
        lkey: s.b.key,
    }];
    s.pair
        .b
        .post_recv(
            s.b.qp,
            &RecvWr {
                wr_id: 1,
                sges: &rsge,
            },
        )
        .unwrap();
    s.pair
        .b
        .post_recv(
            s.b.qp,
            &RecvWr {
                wr_id: 2,
                sges: &rsge,
            },
        )
        .unwrap();
    let sge = [Sge {
        addr: 0,
        length: 5,
        lkey: s.a.key,
    }];
    let mut wr = SendWr::new(10, SendOp::Send, &sge);
    wr.inline = true;
    wr.signaled = false;
    s.pair.a.post_send(s.a.qp, &wr).unwrap();
    // Changing the buffer after posting must not change an inline send.
    s.pair.a.memory_mut().as_mut_slice()[..5].copy_from_slice(b"HELLO");
    wr.wr_id = 11;
    wr.signaled = true;
    s.pair.a.post_send(s.a.qp, &wr).unwrap();
    s.pair.drive(SEC, |_| false);
    let wa = drain(&mut s.pair.a, s.a.cq);
    assert_eq!(wa.iter().map(|w| w.wr_id).collect::<Vec<_>>(), vec![11]);
    let wb = drain(&mut s.pair.b, s.b.cq);
    assert_eq!(wb.len(), 2);
    assert_eq!(&s.pair.b.memory().as_slice()[0x100..0x105], b"HELLO");
}

#[test]
fn atomic_write_and_flush() {
    use transport::verbs::{Access, QpAttr};
    let mut s = setup(
        QpType::Rc,
        LinkConfig::clean(1000),
        5,
        Mtu::Mtu1024,
        1 << 20,
    );
    let flushable = common::ALL_ACCESS
        .with(Access::FLUSH_GLOBAL)
        .with(Access::FLUSH_PERSISTENT);
    let kf = s
        .pair
        .b
        .reg_mr(s.b.pd, 0x9_0000, 0x1000, 0x9_0000, flushable)
        .unwrap();
    let qp_access = Access::REMOTE_WRITE
        .with(Access::REMOTE_READ)
        .with(Access::REMOTE_ATOMIC)
        .with(Access::FLUSH_GLOBAL);
    s.pair
        .b
        .modify_qp(
            s.b.qp,
            &QpAttr {
                access: Some(qp_access),
                ..Default::default()
            },
            0,
        )
        .unwrap();
    let none: [Sge; 0] = [];
    let v = 0x1122_3344_5566_7788u64;
    s.pair
        .a
        .post_send(
            s.a.qp,
            &SendWr::new(1, SendOp::AtomicWrite(v), &none).remote(0x9_0010, kf),
        )
        .unwrap();
    let flush = |sel| SendOp::Flush {
        len: 64,
        placement_type: 1,
        selectivity_level: sel,
    };
    s.pair
        .a
        .post_send(
            s.a.qp,
            &SendWr::new(2, flush(0), &none).remote(0x9_0000, kf),
        )
        .unwrap();
    s.pair
        .a
        .post_send(s.a.qp, &SendWr::new(3, flush(1), &none).remote(0, kf))
        .unwrap();
    s.pair.drive(SEC, |_| false);
    let wa = drain(&mut s.pair.a, s.a.cq);
    assert_eq!(
        wa.iter()
            .map(|w| (w.wr_id, w.status, w.opcode))
            .collect::<Vec<_>>(),
        vec![
            (1, WcStatus::Success, WcOpcode::AtomicWrite),
            (2, WcStatus::Success, WcOpcode::Flush),
            (3, WcStatus::Success, WcOpcode::Flush),
        ]
    );
    assert_eq!(
        &s.pair.b.memory().as_slice()[0x9_0010..0x9_0018],
        &v.to_ne_bytes()
    );

    // Persistence was not granted to the QP: an invalid request.
    let persist = SendOp::Flush {
        len: 64,
        placement_type: 2,
        selectivity_level: 0,
    };
    s.pair
        .a
        .post_send(s.a.qp, &SendWr::new(4, persist, &none).remote(0x9_0000, kf))
        .unwrap();
    s.pair.drive(SEC, |_| false);
    assert_eq!(
        drain(&mut s.pair.a, s.a.cq)[0].status,
        WcStatus::RemInvReqErr
    );

    // ATOMIC_WRITE through a key without remote write: access error.
    let mut s = setup(
        QpType::Rc,
        LinkConfig::clean(1000),
        6,
        Mtu::Mtu1024,
        1 << 20,
    );
    let ro = s
        .pair
        .b
        .reg_mr(s.b.pd, 0x9_0000, 0x1000, 0x9_0000, Access::REMOTE_READ)
        .unwrap();
    s.pair
        .a
        .post_send(
            s.a.qp,
            &SendWr::new(1, SendOp::AtomicWrite(1), &none).remote(0x9_0000, ro),
        )
        .unwrap();
    s.pair.drive(SEC, |_| false);
    assert_eq!(
        drain(&mut s.pair.a, s.a.cq)[0].status,
        WcStatus::RemAccessErr
    );
}

#[test]
fn fence_waits_for_earlier_reads() {
    // A READ, then a fenced WRITE of the READ's destination to B: the
    // WRITE must carry the data the READ brought back.
    let mut s = setup(QpType::Rc, LinkConfig::clean(5000), 7, Mtu::Mtu256, 1 << 20);
    fill(
        &mut s.pair.b.memory_mut().as_mut_slice()[0x20000..0x21000],
        42,
    );
    let rsge = [Sge {
        addr: 0x8000,
        length: 2000,
        lkey: s.a.key,
    }];
    s.pair
        .a
        .post_send(
            s.a.qp,
            &SendWr::new(1, SendOp::Read, &rsge).remote(0x20000, s.b.key),
        )
        .unwrap();
    let mut wr = SendWr::new(2, SendOp::Write, &rsge).remote(0x30000, s.b.key);
    wr.fence = true;
    s.pair.a.post_send(s.a.qp, &wr).unwrap();
    s.pair.drive(SEC, |_| false);
    let wa = drain(&mut s.pair.a, s.a.cq);
    assert_eq!(
        wa.iter().map(|w| w.status).collect::<Vec<_>>(),
        vec![WcStatus::Success; 2]
    );
    let m = s.pair.b.memory().as_slice();
    assert_eq!(&m[0x30000..0x30000 + 2000], &m[0x20000..0x20000 + 2000]);
}

#[test]
fn armed_cq_notifies_once_per_arming() {
    let mut s = setup(
        QpType::Rc,
        LinkConfig::clean(1000),
        8,
        Mtu::Mtu1024,
        1 << 20,
    );
    let sge = [Sge {
        addr: 0,
        length: 8,
        lkey: s.a.key,
    }];
    s.pair.a.req_notify_cq(s.a.cq, false).unwrap();
    for i in 0..3 {
        s.pair
            .a
            .post_send(
                s.a.qp,
                &SendWr::new(i, SendOp::Write, &sge).remote(0, s.b.key),
            )
            .unwrap();
    }
    s.pair.drive(SEC, |_| false);
    assert_eq!(
        s.pair.a.poll_notification(),
        Some(transport::verbs::CqNotification(s.a.cq))
    );
    assert_eq!(
        s.pair.a.poll_notification(),
        None,
        "one notification per arming"
    );
    assert_eq!(drain(&mut s.pair.a, s.a.cq).len(), 3);
    // Solicited-only arming ignores an unsolicited receive.
    let rsge = [Sge {
        addr: 0x100,
        length: 64,
        lkey: s.b.key,
    }];
    s.pair
        .b
        .post_recv(
            s.b.qp,
            &RecvWr {
                wr_id: 1,
                sges: &rsge,
            },
        )
        .unwrap();
    s.pair
        .b
        .post_recv(
            s.b.qp,
            &RecvWr {
                wr_id: 2,
                sges: &rsge,
            },
        )
        .unwrap();
    s.pair.b.req_notify_cq(s.b.cq, true).unwrap();
    s.pair
        .a
        .post_send(s.a.qp, &SendWr::new(10, SendOp::Send, &sge))
        .unwrap();
    s.pair.drive(SEC, |_| false);
    assert_eq!(s.pair.b.poll_notification(), None);
    let mut wr = SendWr::new(11, SendOp::Send, &sge);
    wr.solicited = true;
    s.pair.a.post_send(s.a.qp, &wr).unwrap();
    s.pair.drive(SEC, |_| false);
    assert_eq!(
        s.pair.b.poll_notification(),
        Some(transport::verbs::CqNotification(s.b.cq))
    );
}
