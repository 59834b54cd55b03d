//! Shared setup for the engine tests: two engines on a simulated link
//! with one connected QP each.

#![allow(dead_code)]

use transport::{
    engine::{Engine, QpInit},
    memory::VecMemory,
    sim::{LinkConfig, Pair},
    verbs::{Access, QpCaps, QpType, Wc, WcOpcode, WcStatus},
    wire::Mtu,
};

pub struct Side {
    pub pd: u32,
    pub cq: u32,
    pub key: u32,
    pub qp: u32,
}

pub struct Setup {
    pub pair: Pair,
    pub a: Side,
    pub b: Side,
}

pub const ALL_ACCESS: Access = Access(
    Access::LOCAL_WRITE.0
        | Access::REMOTE_WRITE.0
        | Access::REMOTE_READ.0
        | Access::REMOTE_ATOMIC.0
        | Access::FLUSH_GLOBAL.0
        | Access::FLUSH_PERSISTENT.0,
);

pub fn make_side(e: &mut Engine<VecMemory>, qp_type: QpType, mem: u64, cq_depth: u32) -> Side {
    let pd = e.alloc_pd().unwrap();
    let cq = e.create_cq(cq_depth).unwrap();
    let key = e.reg_mr(pd, 0, mem, 0, ALL_ACCESS).unwrap();
    let qp = e
        .create_qp(&QpInit {
            qp_type,
            pd,
            send_cq: cq,
            recv_cq: cq,
            caps: QpCaps {
                max_send_wr: 512,
                max_recv_wr: 512,
                max_send_sge: 4,
                max_recv_sge: 4,
                max_inline_data: 256,
            },
            sq_sig_all: false,
            srq: None,
        })
        .unwrap();
    Side { pd, cq, key, qp }
}

pub use transport::sim::Conn;

/// The link the soaks run on (as the issue sets it): 5% loss, 5%
/// reordering, 1% duplication, 0.5% corruption, 2 µs delay.
pub fn impaired() -> LinkConfig {
    LinkConfig {
        loss: 0.05,
        duplicate: 0.01,
        reorder: 0.05,
        corrupt: 0.005,
        delay_ns: 2_000,
        reorder_delay_ns: 5_000,
        ecn_mark: 0.0,
    }
}

/// Connects a QP (see `transport::sim::connect`); panics on failure.
pub fn connect(e: &mut Engine<VecMemory>, qp: u32, c: Conn) {
    transport::sim::connect(e, qp, c).expect("connect QP");
}

/// Two engines with one QP each of `qp_type`, connected, PSNs chosen near
/// the 24-bit wrap.
pub fn setup(qp_type: QpType, link: LinkConfig, seed: u64, mtu: Mtu, mem: usize) -> Setup {
    setup_with(qp_type, link, seed, mtu, mem, 4096, |_| {})
}

/// Like [`setup`], with the CQ depth and A's connection parameters
/// adjustable.
pub fn setup_with(
    qp_type: QpType,
    link: LinkConfig,
    seed: u64,
    mtu: Mtu,
    mem: usize,
    cq_depth: u32,
    tweak_a: impl Fn(&mut Conn),
) -> Setup {
    let mut pair = Pair::new(link, seed, mem);
    let a = make_side(&mut pair.a, qp_type, mem as u64, cq_depth);
    let b = make_side(&mut pair.b, qp_type, mem as u64, cq_depth);
    let (pa, pb) = (0xff_fff0, 0x12_3456);
    let c = Conn {
        dest: b.qp,
        dgid: Pair::gid_b(),
        mtu,
        sq_psn: pa,
        rq_psn: pb,
        timeout: 12,
        retry: 7,
        rnr_retry: 7,
    };
    let mut ca = c;
    tweak_a(&mut ca);
    connect(&mut pair.a, a.qp, ca);
    let c = Conn {
        dest: a.qp,
        dgid: Pair::gid_a(),
        sq_psn: pb,
        rq_psn: pa,
        ..c
    };
    connect(&mut pair.b, b.qp, c);
    Setup { pair, a, b }
}

pub fn empty_wc() -> Wc {
    Wc {
        wr_id: 0,
        status: WcStatus::Success,
        opcode: WcOpcode::Send,
        byte_len: 0,
        qp_num: 0,
        src_qp: 0,
        imm_data: None,
        invalidated_rkey: None,
        ip_version: None,
    }
}

/// Each completion's wr_id and status, in order: what most error tests
/// compare against a literal list.
pub fn statuses(wcs: &[Wc]) -> Vec<(u64, WcStatus)> {
    wcs.iter().map(|w| (w.wr_id, w.status)).collect()
}

/// Drains every completion of a CQ.
pub fn drain(e: &mut Engine<VecMemory>, cq: u32) -> Vec<Wc> {
    let mut out = Vec::new();
    let mut buf = [empty_wc(); 64];
    loop {
        let n = e.poll_cq(cq, &mut buf).unwrap();
        out.extend_from_slice(&buf[..n]);
        if n < buf.len() {
            return out;
        }
    }
}

/// The soaks' seed: `SOAK_SEED`, or else the clock. Printed with `test`'s
/// name, so that a failure can be rerun.
pub fn soak_seed(test: &str) -> u64 {
    let seed = std::env::var("SOAK_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(1)
        });
    eprintln!("{test}: seed {seed} (rerun with SOAK_SEED={seed})");
    seed
}

/// The soaks' operation count: `SOAK_OPS`, or 100,000.
pub fn soak_ops() -> u64 {
    std::env::var("SOAK_OPS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(100_000)
}
