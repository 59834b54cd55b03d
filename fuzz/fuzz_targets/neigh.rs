//! Fuzzes the ARP/NDP parser (`netdev::neigh::Neighbours::handle_frame`):
//! arbitrary byte streams are cut into frames and fed to a neighbour table
//! at increasing times, with resolutions and timeouts in between.
//!
//! Properties asserted, beyond "never panics":
//! - every frame the table sends is a well-formed Ethernet frame from our
//!   MAC, and either ARP or IPv6 (NDP);
//! - a MAC that `resolve` returns is never multicast or all-zero;
//! - the table never sends more than one answer per frame received plus
//!   the requests that resolutions and timeouts allow.
#![no_main]

use std::net::IpAddr;

use etherparse::{EtherType, Ethernet2Header};
use libfuzzer_sys::fuzz_target;
use netdev::neigh::Neighbours;

const MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];

fuzz_target!(|data: &[u8]| {
    let ours: Vec<IpAddr> = vec!["10.0.0.1".parse().unwrap(), "fd00::1".parse().unwrap()];
    let peers: [IpAddr; 2] = ["10.0.0.2".parse().unwrap(), "fd00::2".parse().unwrap()];
    let mut n = Neighbours::new(MAC, ours);
    let mut now = 0u64;
    let mut rest = data;
    let mut budget = 0usize;
    while rest.len() >= 3 {
        let len = usize::from(u16::from_le_bytes([rest[0], rest[1]])) % 256;
        let ctl = rest[2];
        rest = &rest[3..];
        let f = &rest[..len.min(rest.len())];
        rest = &rest[f.len()..];
        now += u64::from(ctl) * 50_000_000;
        if n.handle_frame(f, now) {
            budget += 1;
        }
        if ctl & 1 == 1 {
            let ip = peers[usize::from(ctl >> 1 & 1)];
            budget += 1;
            if let Ok(Some(mac)) = n.resolve(ip, now) {
                assert!(mac != [0; 6] && mac[0] & 1 == 0, "bad MAC {mac:02x?}");
            }
        }
        if n.poll_timeout().is_some_and(|t| t <= now) {
            n.handle_timeout(now);
            budget += 2;
        }
        while let Some(out) = n.poll_transmit() {
            assert!(budget > 0, "more frames sent than asked for");
            budget -= 1;
            let (eth, _) = Ethernet2Header::from_slice(&out).expect("our frame parses");
            assert_eq!(eth.source, MAC);
            assert!(matches!(eth.ether_type, EtherType::ARP | EtherType::IPV6));
        }
    }
});
