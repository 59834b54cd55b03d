//! Two engines on the `packet` link, over a veth pair between two network
//! namespaces that this test creates: each end lives in a namespace of its
//! own (unshared by a thread of this test), and each engine's AF_PACKET
//! socket is opened inside its namespace. The engines resolve each other
//! with ARP or NDP over the veth and run the shared content-checked
//! workload, over IPv4 and over IPv6. Everything vanishes with the
//! sockets and threads.

mod common;

use std::{net::IpAddr, sync::mpsc};

use common::{Counts, ip, unshare_net};
use netdev::{LinkError, eth::EthLink};

impl Counts for EthLink {
    fn counts(&self) -> (u64, u64) {
        (self.stats().received, self.stats().bad)
    }
}

#[test]
fn two_engines_over_veth_between_namespaces() {
    // Namespace B: a thread that unshares, reports its thread ID, waits
    // for its veth end to arrive, then opens links on it on request.
    let (tid_tx, tid_rx) = mpsc::channel();
    let (req_tx, req_rx) = mpsc::channel::<Option<IpAddr>>();
    let (link_tx, link_rx) = mpsc::channel();
    let b = std::thread::spawn(move || {
        unshare_net();
        // SAFETY: gettid has no preconditions.
        tid_tx.send(unsafe { libc::gettid() }).unwrap();
        while let Ok(Some(addr)) = req_rx.recv() {
            ip(&["link", "set", "vb", "up"]);
            link_tx.send(EthLink::packet("vb", vec![addr])).unwrap();
        }
    });
    let tid = tid_rx.recv().unwrap();
    std::thread::spawn(move || {
        unshare_net();
        ip(&["link", "add", "va", "type", "veth", "peer", "name", "vb"]);
        ip(&["link", "set", "vb", "netns", &tid.to_string()]);
        ip(&["link", "set", "va", "up"]);
        // The port MTU follows the interface MTU, read live, as in rxe.
        let probe = EthLink::packet("va", vec!["10.90.0.9".parse().unwrap()]).unwrap();
        assert_eq!(probe.ib_mtu().unwrap(), transport::wire::Mtu::Mtu1024);
        ip(&["link", "set", "va", "mtu", "9000"]);
        assert_eq!(probe.ib_mtu().unwrap(), transport::wire::Mtu::Mtu4096);
        ip(&["link", "set", "va", "mtu", "1500"]);
        drop(probe);
        for (a, b) in [("10.90.0.1", "10.90.0.2"), ("fd00:90::1", "fd00:90::2")] {
            let la = EthLink::packet("va", vec![a.parse().unwrap()]).unwrap();
            req_tx.send(Some(b.parse().unwrap())).unwrap();
            let lb = link_rx.recv().unwrap().unwrap();
            let [sa, sb] = common::run([la, lb], a, b, 50);
            assert!(sa.0 > 100 && sb.0 > 100, "{sa:?} {sb:?}");
        }
        req_tx.send(None).unwrap();
        // An interface that does not exist is a clear error.
        match EthLink::packet("nosuchif0", vec!["10.90.0.9".parse().unwrap()]) {
            Err(e @ LinkError::NoInterface(_)) => assert!(e.to_string().contains("nosuchif0")),
            Err(e) => panic!("expected NoInterface, got {e}"),
            Ok(_) => panic!("expected NoInterface, got a link"),
        }
    })
    .join()
    .unwrap();
    b.join().unwrap();
}
