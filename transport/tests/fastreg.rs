//! Fast-registration MRs over page lists, LOCAL_INV and SEND_WITH_INV:
//! registration through the send queue, remote access through the new
//! key landing in the right pages, and invalidation by either side.

mod common;

use common::{drain, setup};
use transport::{
    sim::LinkConfig,
    verbs::{Access, QpState, QpType, RecvWr, SendOp, SendWr, Sge, WcOpcode, WcStatus},
    wire::Mtu,
};

const SEC: u64 = 1_000_000_000;
const MEM: usize = 1 << 20;

fn rw() -> Access {
    Access::LOCAL_WRITE
        .with(Access::REMOTE_WRITE)
        .with(Access::REMOTE_READ)
}

#[test]
fn register_write_and_invalidate_remotely() {
    let mut s = setup(QpType::Rc, LinkConfig::clean(1000), 1, Mtu::Mtu1024, MEM);
    let none: [Sge; 0] = [];
    // Three 4 KiB pages, scattered and out of order in B's memory.
    let mr = s.pair.b.alloc_mr(s.b.pd, 4).unwrap();
    s.pair
        .b
        .map_mr_pages(
            mr,
            0x5000_0000,
            3 * 4096,
            12,
            0,
            &[0x3_0000, 0x1_0000, 0x2_0000],
        )
        .unwrap();
    let key = (mr & !0xff) | 0x42;
    let mut reg = SendWr::new(9, SendOp::RegMr { key, access: rw() }, &none);
    reg.signaled = true;
    s.pair.b.post_send(s.b.qp, &reg).unwrap();
    s.pair.drive(SEC, |_| false);
    let wb = drain(&mut s.pair.b, s.b.cq);
    assert_eq!(
        wb.iter()
            .map(|w| (w.wr_id, w.status, w.opcode))
            .collect::<Vec<_>>(),
        vec![(9, WcStatus::Success, WcOpcode::RegMr)]
    );
    assert_eq!(s.pair.stats.sent, 0, "registration is local");

    // A writes 6000 bytes across the first two pages.
    let data: Vec<u8> = (0..6000u32).map(|i| (i * 7) as u8).collect();
    s.pair.a.memory_mut().as_mut_slice()[..6000].copy_from_slice(&data);
    let sge = [Sge {
        addr: 0,
        length: 6000,
        lkey: s.a.key,
    }];
    s.pair
        .a
        .post_send(
            s.a.qp,
            &SendWr::new(1, SendOp::Write, &sge).remote(0x5000_0000, key),
        )
        .unwrap();
    s.pair.drive(SEC, |_| false);
    assert_eq!(drain(&mut s.pair.a, s.a.cq)[0].status, WcStatus::Success);
    let m = s.pair.b.memory().as_slice();
    assert_eq!(&m[0x3_0000..0x3_1000], &data[..4096]);
    assert_eq!(&m[0x1_0000..0x1_0000 + 1904], &data[4096..]);
    // The old key part is refused.
    assert!(
        s.pair
            .b
            .post_send(s.b.qp, &SendWr::new(0, SendOp::LocalInv { key: mr }, &none))
            .is_ok()
    );
    s.pair.drive(SEC, |_| false);
    assert_eq!(
        drain(&mut s.pair.b, s.b.cq)[0].status,
        WcStatus::LocQpOpErr,
        "wrong key part"
    );
}

#[test]
fn send_with_invalidate_and_local_invalidate() {
    let mut s = setup(QpType::Rc, LinkConfig::clean(1000), 2, Mtu::Mtu1024, MEM);
    let none: [Sge; 0] = [];
    let mr = s.pair.b.alloc_mr(s.b.pd, 1).unwrap();
    s.pair
        .b
        .map_mr_pages(mr, 0x1000, 4096, 12, 0, &[0x4_0000])
        .unwrap();
    let mut reg = SendWr::new(
        1,
        SendOp::RegMr {
            key: mr,
            access: rw(),
        },
        &none,
    );
    reg.signaled = false;
    s.pair.b.post_send(s.b.qp, &reg).unwrap();
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
                wr_id: 5,
                sges: &rsge,
            },
        )
        .unwrap();
    let sge = [Sge {
        addr: 0,
        length: 16,
        lkey: s.a.key,
    }];
    s.pair
        .a
        .post_send(s.a.qp, &SendWr::new(1, SendOp::SendWithInv(mr), &sge))
        .unwrap();
    s.pair
        .a
        .post_send(
            s.a.qp,
            &SendWr::new(2, SendOp::Write, &sge).remote(0x1000, mr),
        )
        .unwrap();
    s.pair.drive(SEC, |_| false);
    let wb = drain(&mut s.pair.b, s.b.cq);
    assert_eq!(wb.len(), 1);
    assert_eq!(
        (wb[0].wr_id, wb[0].status, wb[0].invalidated_rkey),
        (5, WcStatus::Success, Some(mr))
    );
    let wa = drain(&mut s.pair.a, s.a.cq);
    assert_eq!(
        common::statuses(&wa),
        vec![(1, WcStatus::Success), (2, WcStatus::RemAccessErr)],
        "the key is dead after SEND_WITH_INV"
    );

    // LOCAL_INV: register again, invalidate locally, remote access fails.
    let mut s = setup(QpType::Rc, LinkConfig::clean(1000), 3, Mtu::Mtu1024, MEM);
    let mr = s.pair.b.alloc_mr(s.b.pd, 1).unwrap();
    s.pair
        .b
        .map_mr_pages(mr, 0x1000, 4096, 12, 0, &[0x4_0000])
        .unwrap();
    s.pair
        .b
        .post_send(
            s.b.qp,
            &SendWr::new(
                1,
                SendOp::RegMr {
                    key: mr,
                    access: rw(),
                },
                &none,
            ),
        )
        .unwrap();
    s.pair
        .b
        .post_send(s.b.qp, &SendWr::new(2, SendOp::LocalInv { key: mr }, &none))
        .unwrap();
    s.pair.drive(SEC, |_| false);
    let wb = drain(&mut s.pair.b, s.b.cq);
    assert_eq!(
        wb.iter()
            .map(|w| (w.wr_id, w.opcode, w.status))
            .collect::<Vec<_>>(),
        vec![
            (1, WcOpcode::RegMr, WcStatus::Success),
            (2, WcOpcode::LocalInv, WcStatus::Success)
        ]
    );
    s.pair
        .a
        .post_send(
            s.a.qp,
            &SendWr::new(3, SendOp::Write, &sge).remote(0x1000, mr),
        )
        .unwrap();
    s.pair.drive(SEC, |_| false);
    assert_eq!(
        drain(&mut s.pair.a, s.a.cq)[0].status,
        WcStatus::RemAccessErr
    );
}

#[test]
fn invalidating_a_user_mr_is_an_invalid_request() {
    let mut s = setup(QpType::Rc, LinkConfig::clean(1000), 4, Mtu::Mtu1024, MEM);
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
                wr_id: 5,
                sges: &rsge,
            },
        )
        .unwrap();
    let sge = [Sge {
        addr: 0,
        length: 16,
        lkey: s.a.key,
    }];
    s.pair
        .a
        .post_send(s.a.qp, &SendWr::new(1, SendOp::SendWithInv(s.b.key), &sge))
        .unwrap();
    s.pair.drive(SEC, |_| false);
    assert_eq!(
        drain(&mut s.pair.a, s.a.cq)[0].status,
        WcStatus::RemInvReqErr
    );
    assert_eq!(
        drain(&mut s.pair.b, s.b.cq)[0].status,
        WcStatus::RemInvReqErr
    );
    assert_eq!(s.pair.b.qp(s.b.qp).unwrap().state(), QpState::Err);
    // The user MR is untouched.
    assert!(s.pair.b.memory().as_slice().len() == MEM);
}

#[test]
fn registering_twice_fails_and_errors_the_qp() {
    let mut s = setup(QpType::Rc, LinkConfig::clean(1000), 5, Mtu::Mtu1024, MEM);
    let none: [Sge; 0] = [];
    let mr = s.pair.b.alloc_mr(s.b.pd, 1).unwrap();
    s.pair
        .b
        .map_mr_pages(mr, 0x1000, 4096, 12, 0, &[0x4_0000])
        .unwrap();
    for i in 0..2 {
        s.pair
            .b
            .post_send(
                s.b.qp,
                &SendWr::new(
                    i,
                    SendOp::RegMr {
                        key: mr,
                        access: rw(),
                    },
                    &none,
                ),
            )
            .unwrap();
    }
    s.pair.drive(SEC, |_| false);
    let wb = drain(&mut s.pair.b, s.b.cq);
    assert_eq!(
        common::statuses(&wb),
        vec![(0, WcStatus::Success), (1, WcStatus::LocQpOpErr)]
    );
    assert_eq!(s.pair.b.qp(s.b.qp).unwrap().state(), QpState::Err);
    // Mapping a registered MR is refused; bad page lists are refused.
    assert!(s.pair.b.map_mr_pages(mr, 0, 4096, 12, 0, &[0]).is_err());
    let mr2 = s.pair.b.alloc_mr(s.b.pd, 2).unwrap();
    assert!(
        s.pair
            .b
            .map_mr_pages(mr2, 0, 3 * 4096, 12, 0, &[0, 4096])
            .is_err(),
        "length past the pages"
    );
    assert!(
        s.pair
            .b
            .map_mr_pages(mr2, 0, 4096, 12, 0, &[0, 1, 2])
            .is_err(),
        "more pages than allocated"
    );
    assert!(
        s.pair.b.map_mr_pages(mr2, 0, 4096, 11, 0, &[0]).is_err(),
        "page below 4 KiB"
    );
    assert!(
        s.pair
            .b
            .map_mr_pages(s.b.key, 0, 4096, 12, 0, &[0])
            .is_err(),
        "a user MR"
    );
}

#[test]
fn a_page_list_mr_is_valid_at_once_and_lands_in_its_pages() {
    let mut s = setup(QpType::Rc, LinkConfig::clean(1000), 1, Mtu::Mtu1024, MEM);
    // A user MR over three scattered pages, starting 100 bytes into the
    // first (as a paravirtual device registers a guest's buffer).
    let key = s
        .pair
        .b
        .reg_mr_pages(
            s.b.pd,
            0x7f00_0000_0064,
            3 * 4096 - 200,
            list(12, 100, vec![0x3_0000, 0x1_0000, 0x2_0000]),
            rw(),
        )
        .unwrap();
    let data: Vec<u8> = (0..5000u32).map(|i| (i * 13) as u8).collect();
    s.pair.a.memory_mut().as_mut_slice()[..5000].copy_from_slice(&data);
    let sge = [Sge {
        addr: 0,
        length: 5000,
        lkey: s.a.key,
    }];
    s.pair
        .a
        .post_send(
            s.a.qp,
            &SendWr::new(1, SendOp::Write, &sge).remote(0x7f00_0000_0064, key),
        )
        .unwrap();
    s.pair.drive(SEC, |_| false);
    assert_eq!(drain(&mut s.pair.a, s.a.cq)[0].status, WcStatus::Success);
    let m = s.pair.b.memory().as_slice();
    assert_eq!(&m[0x3_0064..0x3_1000], &data[..3996]);
    assert_eq!(&m[0x1_0000..0x1_0000 + 1004], &data[3996..]);
    // Past the end of the list, and bad page sizes, are refused.
    let pd = s.b.pd;
    let b = &mut s.pair.b;
    assert!(
        b.reg_mr_pages(pd, 0, 8193, list(12, 0, vec![0, 4096]), rw())
            .is_err()
    );
    assert!(
        b.reg_mr_pages(pd, 0, 10, list(11, 0, vec![0]), rw())
            .is_err()
    );
    assert!(
        b.reg_mr_pages(pd, 0, 10, list(12, 4096, vec![0]), rw())
            .is_err()
    );
}

fn list(page_shift: u8, first_offset: u64, pages: Vec<u64>) -> transport::engine::PageList {
    transport::engine::PageList {
        page_shift,
        first_offset,
        pages,
    }
}
