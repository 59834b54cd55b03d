//! A link whose interface goes away reports it: after the TAP is deleted
//! (and, for AF_PACKET, after its veth is set down), the link's errors
//! satisfy `LinkError::is_link_down`, so the loop driving the engine can
//! take the port down. Runs in a private network namespace (needs root).

mod common;

use common::{in_private_netns, ip};
use netdev::eth::EthLink;

fn root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

#[test]
fn deleted_tap_is_link_down() {
    if !root() {
        eprintln!("skipped: needs root");
        return;
    }
    in_private_netns(|| {
        let mut l = EthLink::tap(
            "vdown0",
            [2, 0, 0, 0, 0, 9],
            vec!["10.93.0.2".parse().unwrap()],
        )
        .expect("tap");
        ip(&["link", "set", "vdown0", "up"]);
        let mut buf = vec![0u8; 4096];
        assert!(matches!(l.recv(&mut buf, 0), Ok(None)));
        ip(&["link", "del", "vdown0"]);
        let e = l.recv(&mut buf, 0).expect_err("recv on a deleted TAP");
        assert!(e.is_link_down(), "{e:?}");
    });
}

#[test]
fn packet_link_on_a_downed_veth_is_link_down() {
    if !root() {
        eprintln!("skipped: needs root");
        return;
    }
    in_private_netns(|| {
        ip(&[
            "link", "add", "vdn0", "type", "veth", "peer", "name", "vdn1",
        ]);
        ip(&["link", "set", "vdn0", "up"]);
        ip(&["link", "set", "vdn1", "up"]);
        let mut l = EthLink::packet("vdn0", vec!["10.94.0.2".parse().unwrap()]).expect("packet");
        let mut buf = vec![0u8; 4096];
        assert!(matches!(l.recv(&mut buf, 0), Ok(None)));
        ip(&["link", "del", "vdn0"]);
        let e = l
            .recv(&mut buf, 0)
            .expect_err("recv on a deleted interface");
        assert!(e.is_link_down(), "{e:?}");
        assert!(
            EthLink::packet("vdn0", vec![]).is_err_and(|e| e.is_link_down()),
            "opening a missing interface"
        );
    });
}
