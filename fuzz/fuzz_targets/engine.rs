//! A hostile peer against the engine: the input is a sequence of transport
//! packets (each `len: u16 LE` then bytes, with the first byte of each
//! chunk choosing the target QP and the entry point: ICRC checked by the
//! link, or by the engine with its fused WRITE placement) fed
//! to connected RC, UC and UD QPs of one engine, whose output is drained
//! after every packet. Nothing may panic, and the output queue of every
//! QP must stay bounded.

#![no_main]

use libfuzzer_sys::fuzz_target;
use transport::{
    engine::{Engine, QpInit, RxMeta},
    memory::VecMemory,
    sim::{Conn, Pair, connect},
    verbs::{Access, QpAttr, QpCaps, QpState, QpType, RecvWr, Sge},
    wire::{Mtu, icrc},
};

struct Target {
    e: Engine<VecMemory>,
    qps: [u32; 3],
}

fn target() -> Target {
    let mut e = Engine::new(Default::default(), VecMemory::new(1 << 16));
    let pd = e.alloc_pd().unwrap();
    let cq = e.create_cq(64).unwrap();
    let all = Access::LOCAL_WRITE
        .with(Access::REMOTE_WRITE)
        .with(Access::REMOTE_READ)
        .with(Access::REMOTE_ATOMIC);
    let key = e.reg_mr(pd, 0, 1 << 16, 0, all).unwrap();
    let mut qps = [0u32; 3];
    for (i, t) in [QpType::Rc, QpType::Uc, QpType::Ud].into_iter().enumerate() {
        let qp = e
            .create_qp(&QpInit {
                qp_type: t,
                pd,
                send_cq: cq,
                recv_cq: cq,
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
        if t == QpType::Ud {
            for st in [QpState::Init, QpState::Rtr] {
                let a = QpAttr {
                    state: Some(st),
                    pkey_index: Some(0),
                    qkey: Some(0x1111_1111),
                    ..Default::default()
                };
                e.modify_qp(qp, &a, 0).unwrap();
            }
            let a = QpAttr { state: Some(QpState::Rts), sq_psn: Some(0), ..Default::default() };
            e.modify_qp(qp, &a, 0).unwrap();
        } else {
            let c = Conn {
                dest: 99,
                dgid: Pair::gid_a(),
                mtu: Mtu::Mtu256,
                sq_psn: 0,
                rq_psn: 0,
                timeout: 10,
                retry: 3,
                rnr_retry: 3,
            };
            connect(&mut e, qp, c).unwrap();
        }
        for w in 0..4 {
            let sge = [Sge { addr: 0x1000 * w, length: 0x800, lkey: key }];
            e.post_recv(qp, &RecvWr { wr_id: w, sges: &sge }).unwrap();
        }
        qps[i] = qp;
    }
    Target { e, qps }
}

fuzz_target!(|data: &[u8]| {
    let mut t = target();
    let mut out = [0u8; 512];
    let mut rest = data;
    let mut now = 0u64;
    while rest.len() >= 3 {
        let len = usize::from(u16::from_le_bytes([rest[0], rest[1]])) % 400;
        let sel = rest[2];
        rest = &rest[3..];
        let n = len.min(rest.len());
        let mut pkt = rest[..n].to_vec();
        rest = &rest[n..];
        // Aim at one of our QPs so the packet gets past the lookup.
        if pkt.len() >= 12 {
            let qpn = t.qps[usize::from(sel % 3)];
            pkt[5..8].copy_from_slice(&qpn.to_be_bytes()[1..]);
            pkt[1] &= 0xf0; // transport version 0
            pkt[2] = 0xff;
            pkt[3] = 0xff;
        }
        // The top bits of the selector choose the entry: the link checked
        // the ICRC, or the engine checks it (and places RC WRITE payload
        // while it does), with the ICRC made right or left as it came.
        let prefix = 0x1234_5678;
        match sel >> 6 {
            0 | 1 => {
                let _ = t.e.handle_packet(now, &RxMeta::NONE, &pkt);
            }
            2 => {
                if pkt.len() >= 16 {
                    let n = pkt.len() - 4;
                    if let Ok(reg) = icrc::header_register(prefix, &pkt[..n]) {
                        pkt[n..].copy_from_slice(&(!reg).to_le_bytes());
                    }
                }
                let _ = t.e.handle_packet_unverified(now, &RxMeta::NONE, &pkt, prefix);
            }
            _ => {
                let _ = t.e.handle_packet_unverified(now, &RxMeta::NONE, &pkt, prefix);
            }
        }
        let mut sent = 0;
        while t.e.poll_transmit(now, &mut out).is_some() {
            sent += 1;
            assert!(sent < 10_000, "unbounded output");
        }
        now += 1_000_000;
        if t.e.poll_timeout().is_some_and(|d| d <= now) {
            t.e.handle_timeout(now);
        }
    }
});
