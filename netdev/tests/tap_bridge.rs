//! Two engines on the `tap` link: two TAP devices that this test creates,
//! joined by a Linux bridge, all in a private network namespace (a thread
//! of this test unshares it, so everything vanishes with the thread).
//! The engines resolve each other with ARP or NDP through the kernel's
//! bridge and run the shared content-checked workload, over IPv4 and over
//! IPv6. A third check: a destination that never answers gives a clear
//! neighbour error.

mod common;

use std::{net::IpAddr, time::Instant};

use common::{Counts, in_private_netns, ip};
use netdev::{LinkError, eth::EthLink, neigh::NeighError};
use transport::{device::Gid, engine::Transmit};

impl Counts for EthLink {
    fn counts(&self) -> (u64, u64) {
        (self.stats().received, self.stats().bad)
    }
}

/// Opens two TAPs for addresses `a` and `b` and puts them on bridge br0.
fn bridged(a: &str, b: &str) -> [EthLink; 2] {
    let links = [("vurt0", a, 0xa), ("vurt1", b, 0xb)].map(|(name, addr, m)| {
        let addr: IpAddr = addr.parse().unwrap();
        EthLink::tap(name, [0x02, 0x76, 0x75, 0x72, 0, m], vec![addr]).unwrap()
    });
    for l in &links {
        ip(&["link", "set", l.name(), "master", "br0", "up"]);
    }
    links
}

/// An AF_PACKET socket seeing every frame in the namespace.
fn capture() -> socket2::Socket {
    let proto = socket2::Protocol::from(i32::from((libc::ETH_P_ALL as u16).to_be()));
    let cap = socket2::Socket::new(socket2::Domain::PACKET, socket2::Type::RAW, Some(proto))
        .expect("AF_PACKET capture socket");
    cap.set_nonblocking(true).unwrap();
    let _ = cap.set_recv_buffer_size(8 << 20);
    cap
}

/// The next frame the capture saw as sent by the kernel to a TAP (the
/// receiving engine's side): after the kernel cut the sender's GSO
/// trains back into datagrams, so each RoCEv2 packet is seen once, as it
/// reached the other engine. `None` when nothing more is waiting.
fn next_delivered(cap: &socket2::Socket, bridge: i32, frame: &mut [u8]) -> Option<usize> {
    loop {
        // SAFETY: an all-zero sockaddr_ll is valid; recvfrom writes at
        // most `len` bytes into it and into `frame`, both borrowed
        // mutably for the call.
        let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        let mut len = std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t;
        // SAFETY: see above; the pointers and lengths describe the two
        // buffers exactly.
        let n = unsafe {
            libc::recvfrom(
                std::os::fd::AsRawFd::as_raw_fd(cap),
                frame.as_mut_ptr().cast(),
                frame.len(),
                0,
                (&raw mut sll).cast(),
                &mut len,
            )
        };
        if n < 0 {
            return None;
        }
        if sll.sll_pkttype == libc::PACKET_OUTGOING && sll.sll_ifindex != bridge {
            return Some(n as usize);
        }
    }
}

fn bridge_index() -> i32 {
    std::fs::read_to_string("/sys/class/net/br0/ifindex")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(-1)
}

/// An independent look at our framing as the kernel carried it to the
/// other TAP: every RoCEv2 frame has a good ICRC (which, for the packets
/// of a GSO train, depends on the IPv4 IDs the kernel gave them), IPv4
/// frames a good header checksum and DF, IPv6 frames a good UDP checksum,
/// and the UDP source port is not the fixed 4791 (it is the engine's
/// per-QP port). Also counts the frames the sender batched: IPv4 IDs
/// above 0 only come from cutting a train.
fn check_captured(cap: &socket2::Socket, family_of: &str) {
    use etherparse::{NetSlice, SlicedPacket, TransportSlice};
    let v6 = family_of.contains(':');
    let mut frame = vec![0u8; 65536];
    let mut good = 0;
    let mut batched = 0;
    let bridge = bridge_index();
    while let Some(n) = next_delivered(cap, bridge, &mut frame) {
        let f = &frame[..n];
        let Ok(p) = SlicedPacket::from_ethernet(f) else {
            continue;
        };
        let Some(TransportSlice::Udp(udp)) = &p.transport else {
            continue;
        };
        if udp.destination_port() != 4791 {
            continue;
        }
        assert_ne!(udp.source_port(), 4791);
        let roce = transport::wire::frame::RoceFrame::parse_ethernet(f).unwrap();
        roce.verify_icrc().expect("ICRC of a captured frame");
        match &p.net {
            Some(NetSlice::Ipv4(ip)) => {
                assert!(!v6);
                let h = ip.header().to_header();
                assert_eq!(h.header_checksum, h.calc_header_checksum());
                assert!(h.dont_fragment);
                if h.identification > 0 {
                    batched += 1;
                }
            }
            Some(NetSlice::Ipv6(ip)) => {
                assert!(v6);
                let h = ip.header().to_header();
                let want = udp
                    .to_header()
                    .calc_checksum_ipv6(&h, udp.payload())
                    .unwrap();
                assert_eq!(udp.checksum(), want, "IPv6 UDP checksum");
            }
            _ => continue,
        }
        good += 1;
    }
    eprintln!(
        "captured {good} RoCEv2 frames for {family_of}: all well-formed ({batched} IPv4 ones cut from GSO trains)"
    );
    assert!(good >= 100, "only {good} frames captured");
    if !v6 {
        assert!(batched > 0, "no GSO train among {good} frames");
    }
}

#[test]
fn two_engines_over_bridged_taps_ipv4_and_ipv6() {
    in_private_netns(|| {
        ip(&["link", "add", "br0", "type", "bridge"]);
        ip(&["link", "set", "br0", "up"]);
        for (a, b) in [("10.89.0.1", "10.89.0.2"), ("fd00:89::1", "fd00:89::2")] {
            let cap = capture();
            let [sa, sb] = common::run(bridged(a, b), a, b, 50);
            assert!(sa.0 > 100 && sb.0 > 100, "{sa:?} {sb:?}");
            check_captured(&cap, a);
        }

        // A silent destination: the packet waits, three requests go out,
        // then the next send reports the neighbour clearly.
        let mut l = EthLink::tap(
            "vurt2",
            [2, 0, 0, 0, 0, 0xc],
            vec!["10.89.0.3".parse().unwrap()],
        )
        .unwrap();
        ip(&["link", "set", "vurt2", "master", "br0", "up"]);
        let silent: IpAddr = "10.89.0.99".parse().unwrap();
        let t = Transmit {
            len: 32,
            src_qp: 17,
            dest_qp: 18,
            dgid: Gid::from_ip(silent),
            sgid_index: 0,
            sgid: transport::device::Gid([0; 16]),
            udp_sport: 0xc000,
            traffic_class: 0,
            hop_limit: 64,
            ib_crc: None,
        };
        let mut pkt = [0u8; 32];
        pkt[0] = 0x04; // RC SEND Only
        let t = Transmit {
            ib_crc: Some(transport::wire::icrc::header_register(0, &pkt[..28]).unwrap()),
            ..t
        };
        l.send(&t, &mut pkt, 0).unwrap();
        let start = Instant::now();
        let mut now = 0;
        while let Some(due) = l.poll_timeout() {
            now = due;
            let _ = l.handle_timeout(now);
            assert!(start.elapsed().as_secs() < 5);
        }
        assert_eq!(l.stats().unresolved, 1, "the waiting packet was dropped");
        match l.send(&t, &mut pkt, now) {
            Err(LinkError::Neighbour(NeighError::Unreachable(ip))) => assert_eq!(ip, silent),
            other => panic!("expected an unreachable neighbour, got {other:?}"),
        }
    });
}
