//! UC and UD between two engines, and congestion notification. Over an
//! impaired link their own semantics hold: losses are visible (messages
//! go missing), corruption never is (every message that arrives is exact).

mod common;

use common::{Setup, drain, impaired, setup};
use rand::{Rng, RngCore, SeedableRng, rngs::SmallRng};
use transport::{
    sim::{LinkConfig, Pair},
    verbs::{AhAttr, QpType, RecvWr, SendOp, SendWr, Sge, UdDest, WcOpcode, WcStatus},
    wire::Mtu,
};

const SEC: u64 = 1_000_000_000;
const MEM: usize = 8 << 20;
const RBUF: u64 = 4 << 20;

/// The bytes of message `seq`: its number, then seeded noise.
fn message(seq: u64, len: usize) -> Vec<u8> {
    let mut v = vec![0u8; len];
    SmallRng::seed_from_u64(seq ^ 0x5eed).fill_bytes(&mut v);
    let n = len.min(8);
    v[..n].copy_from_slice(&seq.to_le_bytes()[..n]);
    v
}

fn ud_dest(s: &Setup) -> UdDest {
    UdDest {
        ah: AhAttr {
            dgid: Pair::gid_b(),
            hop_limit: 64,
            ..Default::default()
        },
        remote_qpn: s.b.qp,
        remote_qkey: 0x1111_1111,
    }
}

fn post_recvs(s: &mut Setup, n: u64, size: u32, first_id: u64) {
    for i in first_id..first_id + n {
        let sge = [Sge {
            addr: RBUF + (i % 64) * u64::from(size),
            length: size,
            lkey: s.b.key,
        }];
        s.pair
            .b
            .post_recv(
                s.b.qp,
                &RecvWr {
                    wr_id: i,
                    sges: &sge,
                },
            )
            .unwrap();
    }
}

#[test]
fn ud_send_places_the_grh_and_checks_the_qkey() {
    let mut s = setup(QpType::Ud, LinkConfig::clean(1000), 1, Mtu::Mtu1024, MEM);
    post_recvs(&mut s, 2, 2048, 0);
    let data = message(7, 300);
    s.pair.a.memory_mut().as_mut_slice()[..300].copy_from_slice(&data);
    let sge = [Sge {
        addr: 0,
        length: 300,
        lkey: s.a.key,
    }];
    let mut wr = SendWr::new(1, SendOp::SendWithImm(9), &sge);
    wr.ud = Some(ud_dest(&s));
    s.pair.a.post_send(s.a.qp, &wr).unwrap();
    // A wrong Q_Key is dropped silently.
    let mut bad = wr.clone();
    bad.wr_id = 2;
    bad.ud = Some(UdDest {
        remote_qkey: 0x2222,
        ..ud_dest(&s)
    });
    s.pair.a.post_send(s.a.qp, &bad).unwrap();
    s.pair.drive(SEC, |_| false);
    let wa = drain(&mut s.pair.a, s.a.cq);
    assert_eq!(
        common::statuses(&wa),
        vec![(1, WcStatus::Success), (2, WcStatus::Success)]
    );
    let wb = drain(&mut s.pair.b, s.b.cq);
    assert_eq!(wb.len(), 1);
    assert_eq!(
        (wb[0].byte_len, wb[0].src_qp, wb[0].imm_data),
        (340, s.a.qp, Some(9))
    );
    let m = s.pair.b.memory().as_slice();
    let at = RBUF as usize;
    assert!(
        m[at..at + 20].iter().all(|&b| b == 0),
        "IPv4 GRH: 20 zero bytes"
    );
    assert_eq!(m[at + 20] >> 4, 4, "then the IPv4 header");
    assert_eq!(
        &m[at + 20 + 12..at + 20 + 16],
        &[10, 0, 0, 1],
        "source address"
    );
    assert_eq!(&m[at + 40..at + 340], &data[..]);
    // Longer than the MTU is refused at post time. A UD QP takes no path
    // MTU (ib_core refuses one) and uses the port's, as rxe does.
    let big = [Sge {
        addr: 0,
        length: s.pair.a.attrs().max_mtu.bytes() as u32 + 1,
        lkey: s.a.key,
    }];
    let mut wr = SendWr::new(3, SendOp::Send, &big);
    wr.ud = Some(ud_dest(&s));
    assert!(s.pair.a.post_send(s.a.qp, &wr).is_err());
}

#[test]
fn ud_soak_losses_visible_corruption_never() {
    let seed = common::soak_seed("ud_soak");
    let mut rng = SmallRng::seed_from_u64(seed);
    // A UD QP sends at the port MTU (4096 here); it takes no path MTU.
    let mut s = setup(QpType::Ud, impaired(), seed, Mtu::Mtu4096, MEM);
    const SLOT: u64 = 8192;
    post_recvs(&mut s, 64, SLOT as u32, 0);
    let mut next_recv = 64;
    let n = common::soak_ops();
    let mut imms = 0u64;
    let mut sent = 0u64;
    let mut got = 0u64;
    let mut seen = std::collections::HashSet::new();
    while sent < n {
        for _ in 0..16 {
            let len = rng.random_range(8..=4096usize);
            let data = message(sent, len);
            let at = (sent % 256) * 4096;
            s.pair.a.memory_mut().as_mut_slice()[at as usize..at as usize + len]
                .copy_from_slice(&data);
            let sge = [Sge {
                addr: at,
                length: len as u32,
                lkey: s.a.key,
            }];
            // With immediate data, the sequence number, half of the time.
            let op = if rng.random_bool(0.5) {
                SendOp::SendWithImm(sent as u32)
            } else {
                SendOp::Send
            };
            let mut wr = SendWr::new(sent, op, &sge);
            wr.ud = Some(ud_dest(&s));
            wr.signaled = false;
            s.pair.a.post_send(s.a.qp, &wr).unwrap();
            sent += 1;
        }
        s.pair.drive(s.pair.now + SEC, |_| false);
        for wc in drain(&mut s.pair.b, s.b.cq) {
            assert_eq!(wc.status, WcStatus::Success, "seed {seed}");
            let at = (RBUF + (wc.wr_id % 64) * SLOT) as usize + 40;
            let len = wc.byte_len as usize - 40;
            let m = s.pair.b.memory().as_slice();
            let seq = u64::from_le_bytes(m[at..at + 8].try_into().unwrap());
            if let Some(imm) = wc.imm_data {
                assert_eq!(imm, seq as u32, "seed {seed}: immediate of {seq}");
                imms += 1;
            }
            assert_eq!(
                &m[at..at + len],
                &message(seq, len)[..],
                "seed {seed}: UD message {seq} arrived damaged"
            );
            seen.insert(seq);
            got += 1;
            post_recvs(&mut s, 1, SLOT as u32, next_recv);
            next_recv += 1;
        }
        assert!(
            drain(&mut s.pair.a, s.a.cq).is_empty(),
            "unsignaled sends complete silently"
        );
    }
    let st = s.pair.stats;
    eprintln!(
        "ud_soak: {} of {n} arrived ({imms} with immediate), link {st:?}",
        seen.len()
    );
    assert_eq!(st.undetected, 0, "seed {seed}");
    assert!(st.corrupted > 0 && st.lost > 0);
    assert!(imms > 0);
    assert!((seen.len() as u64) < n, "losses are visible");
    assert!(
        seen.len() as u64 > n * 9 / 10,
        "{} of {n} arrived",
        seen.len()
    );
    assert!(got >= seen.len() as u64, "duplicates may arrive twice");
}

#[test]
fn uc_send_and_write_with_imm() {
    let mut s = setup(QpType::Uc, LinkConfig::clean(1000), 3, Mtu::Mtu256, MEM);
    post_recvs(&mut s, 2, 4096, 0);
    let data = message(1, 1000);
    s.pair.a.memory_mut().as_mut_slice()[..1000].copy_from_slice(&data);
    let sge = [Sge {
        addr: 0,
        length: 1000,
        lkey: s.a.key,
    }];
    s.pair
        .a
        .post_send(s.a.qp, &SendWr::new(1, SendOp::Send, &sge))
        .unwrap();
    s.pair
        .a
        .post_send(
            s.a.qp,
            &SendWr::new(2, SendOp::WriteWithImm(5), &sge).remote(0x10000, s.b.key),
        )
        .unwrap();
    s.pair.drive(SEC, |_| false);
    assert_eq!(drain(&mut s.pair.a, s.a.cq).len(), 2);
    let wb = drain(&mut s.pair.b, s.b.cq);
    assert_eq!(
        wb.iter()
            .map(|w| (w.opcode, w.byte_len, w.imm_data))
            .collect::<Vec<_>>(),
        vec![
            (WcOpcode::Recv, 1000, None),
            (WcOpcode::RecvRdmaWithImm, 1000, Some(5))
        ]
    );
    let m = s.pair.b.memory().as_slice();
    assert_eq!(&m[RBUF as usize..RBUF as usize + 1000], &data[..]);
    assert_eq!(&m[0x10000..0x10000 + 1000], &data[..]);
    // No ACKs on UC: 4 + 4 data packets and nothing back.
    assert_eq!(s.pair.stats.sent, 8);
}

#[test]
fn uc_soak_losses_visible_corruption_never() {
    let seed = common::soak_seed("uc_soak");
    let mut rng = SmallRng::seed_from_u64(seed);
    let mtu = Mtu::ALL[rng.random_range(0..5)];
    let mut s = setup(QpType::Uc, impaired(), seed, mtu, MEM);
    const SLOT: u64 = 16 * 1024;
    // B: WRITE_WITH_IMM targets, plain WRITE targets (their bytes may be
    // left half written by a loss, so only their bounds are checked),
    // receive buffers; nothing else of B's memory may change.
    const WIMM: u64 = 0x20_0000;
    const WPLAIN: u64 = 0x30_0000;
    post_recvs(&mut s, 64, SLOT as u32, 0);
    let mut next_recv = 64;
    let n = common::soak_ops();
    let mut plain = 0u64;
    let mut sent = 0u64;
    let mut delivered = 0u64;
    let mut last_seq: Option<u64> = None;
    let mut replays = 0u64;
    while sent < n {
        for _ in 0..16 {
            let len = rng.random_range(8..=SLOT as usize);
            let data = message(sent, len);
            let at = (sent % 64) * SLOT;
            s.pair.a.memory_mut().as_mut_slice()[at as usize..at as usize + len]
                .copy_from_slice(&data);
            let sge = [Sge {
                addr: at,
                length: len as u32,
                lkey: s.a.key,
            }];
            let (op, remote) = match rng.random_range(0..4u8) {
                0 => (SendOp::Send, 0),
                1 => (SendOp::SendWithImm(sent as u32), 0),
                2 => (SendOp::WriteWithImm(sent as u32), WIMM + (sent % 64) * SLOT),
                _ => {
                    plain += 1;
                    (SendOp::Write, WPLAIN + (sent % 64) * SLOT)
                }
            };
            let mut wr = SendWr::new(sent, op, &sge).remote(remote, s.b.key);
            wr.signaled = false;
            s.pair.a.post_send(s.a.qp, &wr).unwrap();
            sent += 1;
        }
        s.pair.drive(s.pair.now + SEC, |_| false);
        for wc in drain(&mut s.pair.b, s.b.cq) {
            assert_eq!(wc.status, WcStatus::Success);
            let m = s.pair.b.memory().as_slice();
            let (seq, at) = match wc.opcode {
                WcOpcode::Recv => {
                    let at = (RBUF + (wc.wr_id % 64) * SLOT) as usize;
                    let seq = u64::from_le_bytes(m[at..at + 8].try_into().unwrap());
                    if let Some(imm) = wc.imm_data {
                        assert_eq!(imm, seq as u32, "seed {seed}: immediate of {seq}");
                    }
                    (seq, at)
                }
                _ => {
                    let seq = u64::from(wc.imm_data.unwrap());
                    (seq, (WIMM + (seq % 64) * SLOT) as usize)
                }
            };
            let len = wc.byte_len as usize;
            assert_eq!(
                &m[at..at + len],
                &message(seq, len)[..],
                "seed {seed}: UC message {seq} arrived damaged"
            );
            // Like rxe, a UC responder restarts on any first or only
            // packet, so a duplicated or late old message can arrive again.
            if last_seq.is_some_and(|l| seq <= l) {
                replays += 1;
            }
            last_seq = Some(seq);
            delivered += 1;
            post_recvs(&mut s, 1, SLOT as u32, next_recv);
            next_recv += 1;
        }
    }
    let st = s.pair.stats;
    eprintln!(
        "uc_soak: mtu {} {delivered} of {n} completed at B ({plain} plain WRITEs), {replays} replays, link {st:?}",
        mtu.bytes()
    );
    assert_eq!(st.undetected, 0, "seed {seed}");
    let m = s.pair.b.memory().as_slice();
    let touched = |a: usize| {
        let a = a as u64;
        (WIMM..WPLAIN + 64 * SLOT).contains(&a) || (RBUF..RBUF + 64 * SLOT).contains(&a)
    };
    assert!(
        (0..m.len()).all(|a| touched(a) || m[a] == 0),
        "seed {seed}: B's memory changed outside the WRITE targets and receive buffers"
    );
    assert!(
        m[WPLAIN as usize..(WPLAIN + 64 * SLOT) as usize]
            .iter()
            .any(|&b| b != 0),
        "seed {seed}: plain WRITEs arrived"
    );
    assert!(delivered < n, "losses are visible");
    // Three quarters of the operations complete at B when they arrive
    // whole; a message of k packets does with about 0.9^k at 5% loss and
    // 5% reordering. Seen here: 10.3-10.5% of n at MTU 256 (up to 64
    // packets), 20% at 512, 34% at 1024, 48% at 2048, 59% at 4096.
    let floor = match mtu {
        Mtu::Mtu256 => n / 15,
        Mtu::Mtu512 => n / 7,
        _ => n / 4,
    };
    assert!(
        delivered > floor,
        "seed {seed}: {delivered} of {n} delivered at MTU {}",
        mtu.bytes()
    );
    // A message arriving again or late comes from the 1% duplication or
    // the 5% reordering of its first packet (seen: 0.3-1.5%).
    assert!(
        replays < delivered / 20,
        "seed {seed}: {replays} late or duplicated messages"
    );
}

#[test]
fn ecn_marks_produce_rate_limited_cnps() {
    let mut link = LinkConfig::clean(1000);
    link.ecn_mark = 1.0;
    let mut s = setup(QpType::Rc, link, 5, Mtu::Mtu1024, MEM);
    let sge = [Sge {
        addr: 0,
        length: 64,
        lkey: s.a.key,
    }];
    for i in 0..100 {
        s.pair
            .a
            .post_send(
                s.a.qp,
                &SendWr::new(i, SendOp::Write, &sge).remote(0, s.b.key),
            )
            .unwrap();
    }
    s.pair.drive(SEC, |_| false);
    assert_eq!(drain(&mut s.pair.a, s.a.cq).len(), 100);
    assert_eq!(s.pair.b.ecn_marked(), 100);
    let sent = s.pair.b.cnps_sent();
    assert!(sent >= 1, "B answers CE marks with CNPs");
    // At most one CNP per 50 µs from a QP.
    assert!(
        sent <= 1 + s.pair.now / 50_000,
        "{sent} CNPs in {} ns",
        s.pair.now
    );
    assert_eq!(s.pair.a.cnps_received(), sent);
}

#[test]
fn gsi_qp1_exchanges_mads() {
    use transport::{
        engine::{GSI_QPN, QpInit},
        verbs::{QpAttr, QpCaps, QpState, VerbsError},
        wire::GSI_QKEY,
    };
    let mut s = setup(QpType::Ud, LinkConfig::clean(1000), 9, Mtu::Mtu1024, MEM);
    let gsi = |e: &mut transport::engine::Engine<transport::memory::VecMemory>,
               side: &common::Side| {
        let init = QpInit {
            qp_type: QpType::Gsi,
            pd: side.pd,
            send_cq: side.cq,
            recv_cq: side.cq,
            caps: QpCaps {
                max_send_wr: 16,
                max_recv_wr: 16,
                max_send_sge: 1,
                max_recv_sge: 1,
                max_inline_data: 0,
            },
            sq_sig_all: true,
            srq: None,
        };
        let qpn = e.create_qp(&init).unwrap();
        assert_eq!(qpn, GSI_QPN);
        assert_eq!(e.create_qp(&init), Err(VerbsError::Busy("QP1 (GSI)")));
        for st in [QpState::Init, QpState::Rtr] {
            e.modify_qp(
                qpn,
                &QpAttr {
                    state: Some(st),
                    pkey_index: Some(0),
                    qkey: Some(transport::wire::GSI_QKEY),
                    ..Default::default()
                },
                0,
            )
            .unwrap();
        }
        e.modify_qp(
            qpn,
            &QpAttr {
                state: Some(QpState::Rts),
                sq_psn: Some(0),
                ..Default::default()
            },
            0,
        )
        .unwrap();
        qpn
    };
    let (a, b) = (gsi(&mut s.pair.a, &s.a), gsi(&mut s.pair.b, &s.b));
    let rsge = [Sge {
        addr: RBUF,
        length: 40 + 256,
        lkey: s.b.key,
    }];
    s.pair
        .b
        .post_recv(
            b,
            &RecvWr {
                wr_id: 77,
                sges: &rsge,
            },
        )
        .unwrap();
    let mad = message(5, 256);
    s.pair.a.memory_mut().as_mut_slice()[..256].copy_from_slice(&mad);
    let sge = [Sge {
        addr: 0,
        length: 256,
        lkey: s.a.key,
    }];
    let mut wr = SendWr::new(1, SendOp::Send, &sge);
    wr.ud = Some(UdDest {
        remote_qpn: GSI_QPN,
        remote_qkey: GSI_QKEY,
        ..ud_dest(&s)
    });
    s.pair.a.post_send(a, &wr).unwrap();
    s.pair.drive(SEC, |_| false);
    let wb = drain(&mut s.pair.b, s.b.cq);
    assert_eq!(wb.len(), 1);
    assert_eq!(
        (wb[0].wr_id, wb[0].qp_num, wb[0].src_qp, wb[0].byte_len),
        (77, GSI_QPN, GSI_QPN, 296)
    );
    let at = RBUF as usize + 40;
    assert_eq!(&s.pair.b.memory().as_slice()[at..at + 256], &mad[..]);
}

#[test]
fn address_handles() {
    use transport::verbs::VerbsError;
    let mut s = setup(QpType::Ud, LinkConfig::clean(1000), 10, Mtu::Mtu1024, MEM);
    let attr = AhAttr {
        dgid: Pair::gid_b(),
        hop_limit: 64,
        ..Default::default()
    };
    let ah = s.pair.a.create_ah(s.a.pd, attr).unwrap();
    assert_eq!(s.pair.a.ah(ah), Some(attr));
    let bad = AhAttr {
        sgid_index: 7,
        ..attr
    };
    assert!(
        s.pair.a.create_ah(s.a.pd, bad).is_err(),
        "no GID at index 7"
    );
    // A send through the handle's attributes arrives.
    post_recvs(&mut s, 1, 2048, 0);
    let sge = [Sge {
        addr: 0,
        length: 10,
        lkey: s.a.key,
    }];
    let mut wr = SendWr::new(1, SendOp::Send, &sge);
    wr.ud = Some(UdDest {
        ah: s.pair.a.ah(ah).unwrap(),
        ..ud_dest(&s)
    });
    s.pair.a.post_send(s.a.qp, &wr).unwrap();
    s.pair.drive(SEC, |_| false);
    assert_eq!(drain(&mut s.pair.b, s.b.cq).len(), 1);
    assert_eq!(
        s.pair.a.dealloc_pd(s.a.pd),
        Err(VerbsError::Busy("protection domain"))
    );
    s.pair.a.destroy_ah(ah).unwrap();
    assert!(s.pair.a.destroy_ah(ah).is_err());
    assert_eq!(s.pair.a.ah(ah), None);
}

/// UC after a lost packet in the middle of a message: the responder drops
/// the rest of that message (its receive is not completed and is used by
/// the next message instead), takes the next message whole, and sends
/// nothing back; the requester completes both, as UC does.
#[test]
fn uc_loss_drops_the_message_up_to_the_next() {
    let mut s = setup(QpType::Uc, LinkConfig::clean(1000), 7, Mtu::Mtu256, MEM);
    post_recvs(&mut s, 2, 4096, 0);
    for (i, seq) in [10u64, 11].into_iter().enumerate() {
        let data = message(seq, 1000);
        s.pair.a.memory_mut().as_mut_slice()[i * 1000..(i + 1) * 1000].copy_from_slice(&data);
    }
    // A's second packet: the middle of the first message (4 packets).
    s.pair.drop_nth.push((true, 2));
    for i in 0..2u64 {
        let sge = [Sge {
            addr: i * 1000,
            length: 1000,
            lkey: s.a.key,
        }];
        s.pair
            .a
            .post_send(s.a.qp, &SendWr::new(i, SendOp::Send, &sge))
            .unwrap();
    }
    s.pair.drive(SEC, |_| false);
    let wa = drain(&mut s.pair.a, s.a.cq);
    assert_eq!(
        common::statuses(&wa),
        vec![(0, WcStatus::Success), (1, WcStatus::Success)]
    );
    let wb = drain(&mut s.pair.b, s.b.cq);
    assert_eq!(
        wb.iter()
            .map(|w| (w.wr_id, w.status, w.byte_len))
            .collect::<Vec<_>>(),
        vec![(0, WcStatus::Success, 1000)],
        "only the second message completes, in the first receive"
    );
    let m = s.pair.b.memory().as_slice();
    assert_eq!(
        &m[RBUF as usize..RBUF as usize + 1000],
        &message(11, 1000)[..]
    );
    assert_eq!(s.pair.launched, (8, 0), "no ACKs, no retransmission");
    assert_eq!(
        s.pair.b.qp(s.b.qp).unwrap().state(),
        transport::verbs::QpState::Rts
    );
}
