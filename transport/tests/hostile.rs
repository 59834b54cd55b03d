//! A hostile or confused peer, played by hand-built packets injected into
//! one engine: duplicate requests after a READ, oversized DMA lengths,
//! floods of requests that earn RNR NAKs, packets from the wrong address
//! or partition, and UC errors. None may panic, grow memory without bound,
//! or break a healthy connection.

mod common;

use common::{drain, setup};
use transport::{
    engine::RxMeta,
    sim::LinkConfig,
    verbs::{QpState, QpType, SendOp, SendWr, Sge, WcStatus},
    wire::{AethSyndrome, BthRepr, ExtHeaders, NakCode, Opcode, Packet, PacketRepr, RethRepr},
};

const SEC: u64 = 1_000_000_000;
const MEM: usize = 1 << 20;

fn bth(op: u8, qp: u32, psn: u32) -> BthRepr {
    BthRepr {
        opcode: Opcode(op),
        solicited: false,
        mig_req: false,
        pad_count: 0,
        pkey: 0xffff,
        fecn: false,
        becn: false,
        dest_qp: qp,
        ack_req: true,
        psn,
    }
}

fn packet(repr: PacketRepr) -> Vec<u8> {
    let mut buf = vec![0u8; repr.buffer_len()];
    repr.emit(&mut buf).unwrap();
    buf
}

/// Everything engine B wants to send now, parsed.
fn outputs(e: &mut transport::engine::Engine<transport::memory::VecMemory>) -> Vec<PacketRepr> {
    let mut out = Vec::new();
    let mut buf = vec![0u8; 8192];
    while let Some(t) = e.poll_transmit(0, &mut buf) {
        out.push(PacketRepr::parse(&Packet::new_checked(&buf[..t.len]).unwrap()).unwrap());
    }
    out
}

#[test]
fn duplicate_send_after_a_read_is_not_acked_past_the_read() {
    let mut s = setup(
        QpType::Rc,
        LinkConfig::clean(1000),
        1,
        transport::wire::Mtu::Mtu256,
        MEM,
    );
    let rsge = [Sge {
        addr: 0x8000,
        length: 64,
        lkey: s.b.key,
    }];
    s.pair
        .b
        .post_recv(
            s.b.qp,
            &transport::verbs::RecvWr {
                wr_id: 1,
                sges: &rsge,
            },
        )
        .unwrap();
    let psn = s.pair.b.qp(s.b.qp).unwrap().rq_psn();
    let send = packet(PacketRepr {
        bth: bth(0x04, s.b.qp, psn),
        ext: ExtHeaders::default(),
        payload_len: 8,
    });
    let read = packet(PacketRepr {
        bth: bth(0x0c, s.b.qp, psn + 1),
        ext: ExtHeaders {
            reth: Some(RethRepr {
                va: 0,
                rkey: s.b.key,
                dma_len: 1000,
            }),
            ..Default::default()
        },
        payload_len: 0,
    });
    s.pair.b.handle_packet(0, &RxMeta::NONE, &send).unwrap();
    s.pair.b.handle_packet(0, &RxMeta::NONE, &read).unwrap();
    let first = outputs(&mut s.pair.b);
    assert_eq!(first.len(), 1 + 4, "ACK, then four READ responses");
    // The SEND again: its ACK names the SEND, not the READ's last PSN.
    s.pair.b.handle_packet(0, &RxMeta::NONE, &send).unwrap();
    let again = outputs(&mut s.pair.b);
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].bth.opcode, Opcode::RC_ACKNOWLEDGE);
    assert_eq!(again[0].bth.psn, psn);
}

#[test]
fn oversized_dma_length_is_an_invalid_request() {
    let mut s = setup(
        QpType::Rc,
        LinkConfig::clean(1000),
        2,
        transport::wire::Mtu::Mtu256,
        MEM,
    );
    let psn = s.pair.b.qp(s.b.qp).unwrap().rq_psn();
    let read = packet(PacketRepr {
        bth: bth(0x0c, s.b.qp, psn),
        ext: ExtHeaders {
            reth: Some(RethRepr {
                va: 0,
                rkey: s.b.key,
                dma_len: u32::MAX,
            }),
            ..Default::default()
        },
        payload_len: 0,
    });
    s.pair.b.handle_packet(0, &RxMeta::NONE, &read).unwrap();
    let out = outputs(&mut s.pair.b);
    assert_eq!(out.len(), 1);
    assert_eq!(
        out[0].ext.aeth.unwrap().syndrome,
        AethSyndrome::Nak(NakCode::InvalidRequest)
    );
    assert_eq!(s.pair.b.qp(s.b.qp).unwrap().state(), QpState::Err);
}

#[test]
fn a_flood_of_rnr_requests_queues_one_answer() {
    let mut s = setup(
        QpType::Rc,
        LinkConfig::clean(1000),
        3,
        transport::wire::Mtu::Mtu256,
        MEM,
    );
    let psn = s.pair.b.qp(s.b.qp).unwrap().rq_psn();
    let send = packet(PacketRepr {
        bth: bth(0x04, s.b.qp, psn),
        ext: ExtHeaders::default(),
        payload_len: 8,
    });
    for _ in 0..100_000 {
        s.pair.b.handle_packet(0, &RxMeta::NONE, &send).unwrap();
    }
    let out = outputs(&mut s.pair.b);
    assert_eq!(out.len(), 1, "latest answer wins");
    assert!(matches!(
        out[0].ext.aeth.unwrap().syndrome,
        AethSyndrome::RnrNak { .. }
    ));
}

#[test]
fn packets_from_the_wrong_address_or_partition_are_dropped() {
    let mut s = setup(
        QpType::Rc,
        LinkConfig::clean(1000),
        4,
        transport::wire::Mtu::Mtu256,
        MEM,
    );
    let psn = s.pair.b.qp(s.b.qp).unwrap().rq_psn();
    let write = |pkey: u16| {
        let mut b = bth(0x0a, s.b.qp, psn);
        b.pkey = pkey;
        let mut p = packet(PacketRepr {
            bth: b,
            ext: ExtHeaders {
                reth: Some(RethRepr {
                    va: 0x100,
                    rkey: s.b.key,
                    dma_len: 4,
                }),
                ..Default::default()
            },
            payload_len: 4,
        });
        let n = p.len();
        p[n - 8..n - 4].copy_from_slice(b"evil");
        p
    };
    // 10.0.0.66 is not A (10.0.0.1).
    let mut ip = [0u8; 20];
    ip[0] = 0x45;
    ip[12..16].copy_from_slice(&[10, 0, 0, 66]);
    let meta = RxMeta {
        ip_header: &ip,
        ecn: 0,
    };
    assert!(matches!(
        s.pair.b.handle_packet(0, &meta, &write(0xffff)),
        Err(transport::engine::DropReason::WrongSource(_))
    ));
    assert!(matches!(
        s.pair.b.handle_packet(0, &RxMeta::NONE, &write(0x1234)),
        Err(transport::engine::DropReason::BadPkey(0x1234))
    ));
    assert!(outputs(&mut s.pair.b).is_empty());
    assert_ne!(&s.pair.b.memory().as_slice()[0x100..0x104], b"evil");
    // From the right address it lands.
    ip[12..16].copy_from_slice(&[10, 0, 0, 1]);
    let meta = RxMeta {
        ip_header: &ip,
        ecn: 0,
    };
    s.pair.b.handle_packet(0, &meta, &write(0xffff)).unwrap();
    assert_eq!(&s.pair.b.memory().as_slice()[0x100..0x104], b"evil");
}

#[test]
fn uc_errors_drop_the_message_and_keep_the_qp() {
    let mut s = setup(
        QpType::Uc,
        LinkConfig::clean(1000),
        5,
        transport::wire::Mtu::Mtu256,
        MEM,
    );
    let sge = [Sge {
        addr: 0,
        length: 16,
        lkey: s.a.key,
    }];
    // A WRITE through a bad rkey, then a good one.
    s.pair
        .a
        .post_send(
            s.a.qp,
            &SendWr::new(1, SendOp::Write, &sge).remote(0x100, s.b.key ^ 0x100),
        )
        .unwrap();
    s.pair.a.memory_mut().as_mut_slice()[..16].fill(7);
    s.pair
        .a
        .post_send(
            s.a.qp,
            &SendWr::new(2, SendOp::Write, &sge).remote(0x200, s.b.key),
        )
        .unwrap();
    s.pair.drive(SEC, |_| false);
    assert_eq!(s.pair.b.qp(s.b.qp).unwrap().state(), QpState::Rts);
    assert_eq!(&s.pair.b.memory().as_slice()[0x200..0x210], &[7; 16]);
    assert!(drain(&mut s.pair.b, s.b.cq).is_empty());
}

#[test]
fn a_bad_lkey_fails_after_the_wqes_before_it() {
    let mut s = setup(
        QpType::Rc,
        LinkConfig::clean(1000),
        6,
        transport::wire::Mtu::Mtu256,
        MEM,
    );
    let ok = [Sge {
        addr: 0,
        length: 16,
        lkey: s.a.key,
    }];
    let bad = [Sge {
        addr: 0,
        length: 16,
        lkey: s.a.key ^ 0x100,
    }];
    s.pair
        .a
        .post_send(
            s.a.qp,
            &SendWr::new(1, SendOp::Write, &ok).remote(0, s.b.key),
        )
        .unwrap();
    s.pair
        .a
        .post_send(
            s.a.qp,
            &SendWr::new(2, SendOp::Write, &bad).remote(0, s.b.key),
        )
        .unwrap();
    s.pair
        .a
        .post_send(
            s.a.qp,
            &SendWr::new(3, SendOp::Write, &ok).remote(0, s.b.key),
        )
        .unwrap();
    s.pair.drive(SEC, |_| false);
    let wa = drain(&mut s.pair.a, s.a.cq);
    assert_eq!(
        common::statuses(&wa),
        vec![
            (1, WcStatus::Success),
            (2, WcStatus::LocProtErr),
            (3, WcStatus::WrFlushErr)
        ]
    );
}

#[test]
fn sqd_finishes_what_is_under_way_and_reports_drained() {
    use transport::verbs::{AsyncEvent, QpAttr};
    let mut link = LinkConfig::clean(1000);
    link.loss = 0.3;
    let mut s = setup(QpType::Rc, link, 7, transport::wire::Mtu::Mtu256, MEM);
    s.pair.trace = std::env::var("TRACE").is_ok();
    let sge = [Sge {
        addr: 0,
        length: 4000,
        lkey: s.a.key,
    }];
    s.pair
        .a
        .post_send(
            s.a.qp,
            &SendWr::new(1, SendOp::Write, &sge).remote(0, s.b.key),
        )
        .unwrap();
    s.pair.drive(SEC, |p| p.stats.sent >= 3);
    s.pair
        .a
        .modify_qp(
            s.a.qp,
            &QpAttr {
                state: Some(QpState::Sqd),
                ..Default::default()
            },
            s.pair.now,
        )
        .unwrap();
    // Posted in SQD: waits.
    s.pair
        .a
        .post_send(
            s.a.qp,
            &SendWr::new(2, SendOp::Write, &sge).remote(0, s.b.key),
        )
        .unwrap();
    s.pair.drive(s.pair.now + 10 * SEC, |_| false);
    let wa = drain(&mut s.pair.a, s.a.cq);
    assert_eq!(common::statuses(&wa), vec![(1, WcStatus::Success)]);
    assert_eq!(s.pair.a.poll_event(), Some(AsyncEvent::SqDrained(s.a.qp)));
    s.pair
        .a
        .modify_qp(
            s.a.qp,
            &QpAttr {
                state: Some(QpState::Rts),
                ..Default::default()
            },
            s.pair.now,
        )
        .unwrap();
    s.pair.drive(s.pair.now + 10 * SEC, |_| false);
    assert_eq!(drain(&mut s.pair.a, s.a.cq)[0].wr_id, 2);
}

#[test]
fn a_duplicate_read_must_match_the_original() {
    let mut s = setup(
        QpType::Rc,
        LinkConfig::clean(1000),
        8,
        transport::wire::Mtu::Mtu256,
        MEM,
    );
    let psn = s.pair.b.qp(s.b.qp).unwrap().rq_psn();
    let read = |va: u64, len: u32, psn: u32| {
        packet(PacketRepr {
            bth: bth(0x0c, s.b.qp, psn),
            ext: ExtHeaders {
                reth: Some(RethRepr {
                    va,
                    rkey: s.b.key,
                    dma_len: len,
                }),
                ..Default::default()
            },
            payload_len: 0,
        })
    };
    s.pair
        .b
        .handle_packet(0, &RxMeta::NONE, &read(0x1000, 1000, psn))
        .unwrap();
    assert_eq!(outputs(&mut s.pair.b).len(), 4);
    // The same READ again, from its second packet: replayed (3 packets).
    s.pair
        .b
        .handle_packet(0, &RxMeta::NONE, &read(0x1100, 744, psn + 1))
        .unwrap();
    assert_eq!(outputs(&mut s.pair.b).len(), 3);
    // A "duplicate" that names other memory is not served.
    s.pair
        .b
        .handle_packet(0, &RxMeta::NONE, &read(0x9000, 744, psn + 1))
        .unwrap();
    assert!(outputs(&mut s.pair.b).is_empty());
}
