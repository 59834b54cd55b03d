//! Memory windows of type 1 and 2: binding through the send queue, remote
//! access through the window's key confined to the window's range and
//! access, type 2 windows tied to their QP and invalidated by LOCAL_INV or
//! SEND_WITH_INV, and the bind checks.

mod common;

use common::{drain, setup};
use transport::{
    sim::LinkConfig,
    verbs::{Access, QpType, RecvWr, SendOp, SendWr, Sge, VerbsError, WcOpcode, WcStatus},
    wire::Mtu,
};

const SEC: u64 = 1_000_000_000;
const MEM: usize = 1 << 20;

/// B gets an MR with MW_BIND at 0x10_0000..0x11_0000 (memory 0x4_0000).
fn bindable(s: &mut common::Setup) -> u32 {
    let access = common::ALL_ACCESS.with(Access::MW_BIND);
    s.pair
        .b
        .reg_mr(s.b.pd, 0x10_0000, 0x1_0000, 0x4_0000, access)
        .unwrap()
}

fn bind(s: &mut common::Setup, id: u64, mw: u32, mr: u32, addr: u64, len: u64, access: Access) {
    let none: [Sge; 0] = [];
    let op = SendOp::BindMw {
        mw,
        mr,
        addr,
        len,
        access,
    };
    s.pair
        .b
        .post_send(s.b.qp, &SendWr::new(id, op, &none))
        .unwrap();
}

fn write(s: &mut common::Setup, id: u64, addr: u64, key: u32) -> WcStatus {
    let sge = [Sge {
        addr: 0,
        length: 16,
        lkey: s.a.key,
    }];
    s.pair
        .a
        .post_send(
            s.a.qp,
            &SendWr::new(id, SendOp::Write, &sge).remote(addr, key),
        )
        .unwrap();
    s.pair.drive(s.pair.now + SEC, |_| false);
    drain(&mut s.pair.a, s.a.cq).last().unwrap().status
}

#[test]
fn type2_window_confines_remote_access() {
    let mut s = setup(QpType::Rc, LinkConfig::clean(1000), 1, Mtu::Mtu1024, MEM);
    let mr = bindable(&mut s);
    let mw = s.pair.b.alloc_mw(s.b.pd, 2).unwrap();
    let key = (mw & !0xff) | 0x77;
    bind(&mut s, 1, key, mr, 0x10_1000, 0x100, Access::REMOTE_WRITE);
    s.pair.drive(SEC, |_| false);
    let wb = drain(&mut s.pair.b, s.b.cq);
    assert_eq!(
        (wb[0].opcode, wb[0].status),
        (WcOpcode::BindMw, WcStatus::Success)
    );

    s.pair.a.memory_mut().as_mut_slice()[..16].fill(0xab);
    assert_eq!(write(&mut s, 1, 0x10_1010, key), WcStatus::Success);
    // The window's range in the MR is at memory 0x4_1000.
    assert_eq!(
        &s.pair.b.memory().as_slice()[0x4_1010..0x4_1020],
        &[0xab; 16]
    );
    // SEND_WITH_INV through the bound QP kills the window.
    let rsge = [Sge {
        addr: 0x8000,
        length: 64,
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
        length: 4,
        lkey: s.a.key,
    }];
    s.pair
        .a
        .post_send(s.a.qp, &SendWr::new(2, SendOp::SendWithInv(key), &sge))
        .unwrap();
    s.pair.drive(s.pair.now + SEC, |_| false);
    assert_eq!(drain(&mut s.pair.b, s.b.cq)[0].invalidated_rkey, Some(key));
    assert_eq!(drain(&mut s.pair.a, s.a.cq)[0].status, WcStatus::Success);
    assert_eq!(write(&mut s, 3, 0x10_1010, key), WcStatus::RemAccessErr);
}

#[test]
fn window_range_and_access_are_enforced() {
    let mut s = setup(QpType::Rc, LinkConfig::clean(1000), 2, Mtu::Mtu1024, MEM);
    let mr = bindable(&mut s);
    let mw = s.pair.b.alloc_mw(s.b.pd, 2).unwrap();
    bind(&mut s, 1, mw, mr, 0x10_1000, 0x100, Access::REMOTE_WRITE);
    s.pair.drive(SEC, |_| false);
    // 16 bytes at window end - 8: past the window.
    assert_eq!(write(&mut s, 1, 0x10_10f8, mw), WcStatus::RemAccessErr);

    let mut s = setup(QpType::Rc, LinkConfig::clean(1000), 3, Mtu::Mtu1024, MEM);
    let mr = bindable(&mut s);
    let mw = s.pair.b.alloc_mw(s.b.pd, 2).unwrap();
    bind(&mut s, 1, mw, mr, 0x10_1000, 0x100, Access::REMOTE_READ);
    s.pair.drive(SEC, |_| false);
    assert_eq!(
        write(&mut s, 1, 0x10_1000, mw),
        WcStatus::RemAccessErr,
        "read-only window"
    );
}

#[test]
fn type1_window_rebinds_and_unbinds() {
    let mut s = setup(QpType::Rc, LinkConfig::clean(1000), 4, Mtu::Mtu1024, MEM);
    let mr = bindable(&mut s);
    let mw = s.pair.b.alloc_mw(s.b.pd, 1).unwrap();
    bind(&mut s, 1, mw, mr, 0x10_2000, 0x100, Access::REMOTE_WRITE);
    s.pair.drive(SEC, |_| false);
    assert_eq!(write(&mut s, 1, 0x10_2000, mw), WcStatus::Success);
    // Bound again elsewhere: the old range is gone.
    bind(&mut s, 2, mw, mr, 0x10_3000, 0x100, Access::REMOTE_WRITE);
    s.pair.drive(s.pair.now + SEC, |_| false);
    assert_eq!(write(&mut s, 2, 0x10_3000, mw), WcStatus::Success);
    assert_eq!(write(&mut s, 3, 0x10_2000, mw), WcStatus::RemAccessErr);
}

#[test]
fn unbind_by_zero_length_and_mr_stays_until_windows_go() {
    let mut s = setup(QpType::Rc, LinkConfig::clean(1000), 5, Mtu::Mtu1024, MEM);
    let mr = bindable(&mut s);
    let mw = s.pair.b.alloc_mw(s.b.pd, 1).unwrap();
    bind(&mut s, 1, mw, mr, 0x10_2000, 0x100, Access::REMOTE_WRITE);
    s.pair.drive(SEC, |_| false);
    assert_eq!(
        s.pair.b.dereg_mr(mr),
        Err(VerbsError::Busy("memory region with bound windows"))
    );
    bind(&mut s, 2, mw, mr, 0x10_2000, 0, Access::REMOTE_WRITE);
    s.pair.drive(s.pair.now + SEC, |_| false);
    assert_eq!(write(&mut s, 1, 0x10_2000, mw), WcStatus::RemAccessErr);
    s.pair.b.dereg_mr(mr).unwrap();
}

#[test]
fn bind_checks() {
    // MR without MW_BIND.
    let mut s = setup(QpType::Rc, LinkConfig::clean(1000), 6, Mtu::Mtu1024, MEM);
    let mw = s.pair.b.alloc_mw(s.b.pd, 2).unwrap();
    let key = s.b.key;
    bind(&mut s, 1, mw, key, 0, 0x100, Access::REMOTE_WRITE);
    s.pair.drive(SEC, |_| false);
    assert_eq!(drain(&mut s.pair.b, s.b.cq)[0].status, WcStatus::MwBindErr);
    // Range outside the MR, local access requested, type 2 bound twice.
    for (addr, len, access) in [
        (0x10_f000u64, 0x2000u64, Access::REMOTE_WRITE),
        (0x10_0000, 0x100, Access::LOCAL_WRITE),
    ] {
        let mut s = setup(QpType::Rc, LinkConfig::clean(1000), 7, Mtu::Mtu1024, MEM);
        let mr = bindable(&mut s);
        let mw = s.pair.b.alloc_mw(s.b.pd, 2).unwrap();
        bind(&mut s, 1, mw, mr, addr, len, access);
        s.pair.drive(SEC, |_| false);
        assert_eq!(
            drain(&mut s.pair.b, s.b.cq)[0].status,
            WcStatus::MwBindErr,
            "{addr:#x} {len}"
        );
    }
    let mut s = setup(QpType::Rc, LinkConfig::clean(1000), 8, Mtu::Mtu1024, MEM);
    let mr = bindable(&mut s);
    let mw = s.pair.b.alloc_mw(s.b.pd, 2).unwrap();
    bind(&mut s, 1, mw, mr, 0x10_0000, 0x100, Access::REMOTE_WRITE);
    bind(&mut s, 2, mw, mr, 0x10_0000, 0x100, Access::REMOTE_WRITE);
    s.pair.drive(SEC, |_| false);
    let wb = drain(&mut s.pair.b, s.b.cq);
    assert_eq!(
        wb.iter().map(|w| w.status).collect::<Vec<_>>(),
        vec![WcStatus::Success, WcStatus::MwBindErr]
    );
    // A window key cannot be used as a local key.
    let mut s = setup(QpType::Rc, LinkConfig::clean(1000), 9, Mtu::Mtu1024, MEM);
    let mr = bindable(&mut s);
    let mw = s.pair.b.alloc_mw(s.b.pd, 2).unwrap();
    bind(&mut s, 1, mw, mr, 0x10_0000, 0x100, Access::REMOTE_READ);
    let sge = [Sge {
        addr: 0x10_0000,
        length: 8,
        lkey: mw,
    }];
    s.pair
        .b
        .post_send(s.b.qp, &SendWr::new(2, SendOp::Send, &sge))
        .unwrap();
    s.pair.drive(SEC, |_| false);
    let wb = drain(&mut s.pair.b, s.b.cq);
    assert_eq!(
        wb.iter().map(|w| w.status).collect::<Vec<_>>(),
        vec![WcStatus::Success, WcStatus::LocProtErr]
    );
}
