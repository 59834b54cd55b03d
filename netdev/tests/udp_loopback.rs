//! Two engines over the real UDP link on loopback (127.0.0.1 and
//! 127.0.0.2, and fd00:77::1 and ::2; port 4791), each pair in a private
//! network namespace of its own, in real time: random SENDs, WRITEs,
//! READs and atomics, with every byte and completion checked against a
//! shadow model, and every datagram's ICRC checked over the header the
//! kernel sent. Also: the IPv4 link's raw socket takes in only datagrams
//! for its own address and port.

mod common;

use std::time::Instant;

use common::Counts;
use netdev::udp::UdpLink;

impl Counts for UdpLink {
    fn counts(&self) -> (u64, u64) {
        (self.stats().received, self.stats().bad)
    }
}

fn links(a: &str, b: &str) -> [UdpLink; 2] {
    [a, b].map(|ip| {
        UdpLink::bind(ip.parse().unwrap()).expect("UDP link (needs CAP_NET_RAW for the raw socket)")
    })
}

/// In a private namespace: the raw sockets would otherwise see every
/// UDP datagram of the host's loopback (other tests, other users), and
/// the port could be taken.
#[test]
fn two_engines_over_udp_loopback() {
    in_private_v4_netns(|| {
        common::run(
            links("127.0.0.1", "127.0.0.2"),
            "127.0.0.1",
            "127.0.0.2",
            100,
        );
    })
}

/// The IPv4 link's raw socket is filtered in the kernel: datagrams to
/// another port or another local address never reach it, while an
/// unfiltered raw socket beside it (the witness) sees them all. A bad
/// datagram to our own address and port still gets in, and is counted.
#[test]
fn ipv4_raw_socket_takes_only_our_address_and_port() {
    in_private_v4_netns(|| {
        let mut link = UdpLink::bind("127.0.0.2".parse().unwrap()).unwrap();
        let witness = socket2::Socket::new(
            socket2::Domain::IPV4,
            socket2::Type::RAW,
            Some(socket2::Protocol::UDP),
        )
        .unwrap();
        witness.set_nonblocking(true).unwrap();
        let from = std::net::UdpSocket::bind("127.0.0.1:5002").unwrap();
        // Not ours: another port on our address, and port 4791 on
        // another address.
        for i in 0..50u8 {
            from.send_to(&[i; 40], "127.0.0.2:5555").unwrap();
            from.send_to(&[i; 40], "127.0.0.3:4791").unwrap();
        }
        // Ours, but with a zero ICRC: RC SEND Only to QP 0x11.
        let mut pkt = vec![0x04, 0, 0xff, 0xff, 0, 0, 0, 0x11, 0, 0, 0, 5];
        pkt.extend_from_slice(&[0xab; 16]);
        pkt.extend_from_slice(&[0; 4]);
        from.send_to(&pkt, "127.0.0.2:4791").unwrap();
        let mut buf = vec![0u8; 65536];
        let t0 = Instant::now();
        while link.stats().bad == 0 && t0.elapsed().as_secs() < 10 {
            assert_eq!(link.recv(&mut buf).unwrap(), None);
        }
        let mut seen = 0;
        while std::io::Read::read(&mut &witness, &mut buf).is_ok() {
            seen += 1;
        }
        let st = link.stats();
        assert_eq!(seen, 101, "the witness sees every datagram");
        assert_eq!(st.bad, 1, "{st:?}");
        assert_eq!(st.foreign, 0, "{st:?}");
        assert_eq!(st.received, 0, "{st:?}");
    })
}

/// Runs `f` on a new thread in a private network namespace whose loopback
/// is up (127.0.0.0/8 is local there).
fn in_private_v4_netns(f: impl FnOnce() + Send + 'static) {
    common::in_private_netns(|| {
        common::ip(&["link", "set", "lo", "up"]);
        f();
    });
}

/// The same over IPv6, in a private network namespace of a thread of its
/// own (so the host's loopback keeps its addresses): the namespace goes
/// away with the thread's sockets.
#[test]
fn two_engines_over_udp_loopback_ipv6() {
    in_private_v6_netns(|| {
        // An independent witness: the IPv6 frames as they really crossed
        // loopback, whose ICRC must check out over the real headers
        // (traffic class, flow label and hop limit as the kernel set them).
        let proto = socket2::Protocol::from(i32::from((libc::ETH_P_ALL as u16).to_be()));
        let cap = socket2::Socket::new(socket2::Domain::PACKET, socket2::Type::RAW, Some(proto))
            .expect("AF_PACKET capture socket");
        cap.set_nonblocking(true).unwrap();
        let _ = cap.set_recv_buffer_size(8 << 20);
        common::run(
            links("fd00:77::1", "fd00:77::2"),
            "fd00:77::1",
            "fd00:77::2",
            100,
        );
        let (mut good, mut bad) = (0, 0);
        let mut frame = vec![0u8; 65536];
        while let Ok(n) = std::io::Read::read(&mut &cap, &mut frame) {
            match transport::wire::frame::RoceFrame::parse_ethernet(&frame[..n]) {
                Ok(f) if f.verify_icrc().is_ok() => good += 1,
                Ok(_) => bad += 1,
                Err(_) => {}
            }
        }
        eprintln!("captured IPv6 RoCEv2 frames: {good} with a good ICRC, {bad} bad");
        assert_eq!(bad, 0);
        assert!(good >= 100, "only {good} frames captured");
    })
}

/// Runs `f` on a new thread in a private network namespace whose loopback
/// is up and carries fd00:77::1 and fd00:77::2.
fn in_private_v6_netns(f: impl FnOnce() + Send + 'static) {
    common::in_private_netns(|| {
        common::ip(&["link", "set", "lo", "up"]);
        common::ip(&["addr", "add", "fd00:77::1/128", "dev", "lo", "nodad"]);
        common::ip(&["addr", "add", "fd00:77::2/128", "dev", "lo", "nodad"]);
        f();
    });
}

/// An IPv6 datagram on port 4791 whose ICRC is wrong is counted and
/// dropped, never delivered. (UDP may lose it while the other tests load
/// loopback, so it is sent again every 100 ms until it is seen.)
#[test]
fn ipv6_bad_icrc_is_dropped() {
    in_private_v6_netns(|| {
        let mut link = UdpLink::bind("fd00:77::2".parse().unwrap()).unwrap();
        let from = std::net::UdpSocket::bind("[fd00:77::1]:5000").unwrap();
        // RC SEND Only to QP 0x11, PSN 5, 16 bytes of payload, ICRC zero.
        let mut pkt = vec![0x04, 0, 0xff, 0xff, 0, 0, 0, 0x11, 0, 0, 0, 5];
        pkt.extend_from_slice(&[0xab; 16]);
        pkt.extend_from_slice(&[0; 4]);
        let mut buf = vec![0u8; 65536];
        let t0 = Instant::now();
        let mut sent = 0;
        while link.stats().bad == 0 && t0.elapsed().as_secs() < 10 {
            if t0.elapsed().as_millis() >= 100 * sent {
                from.send_to(&pkt, "[fd00:77::2]:4791").unwrap();
                sent += 1;
            }
            assert_eq!(link.recv(&mut buf).unwrap(), None);
        }
        assert!(
            link.stats().bad >= 1,
            "{sent} bad datagrams sent, none seen"
        );
        assert_eq!(link.stats().received, 0);
    })
}

/// An ECN-marked (CE) IPv6 datagram reports its ECN bits: the link reads
/// each datagram's traffic class, so the engine can answer with a CNP.
#[test]
fn ipv6_ecn_bits_are_reported() {
    in_private_v6_netns(|| {
        use std::os::fd::AsRawFd;
        let mut link = UdpLink::bind("fd00:77::2".parse().unwrap()).unwrap();
        let from = std::net::UdpSocket::bind("[fd00:77::1]:5001").unwrap();
        let ce: libc::c_int = 0x03;
        // SAFETY: setsockopt with a pointer to an int that outlives the call.
        let rc = unsafe {
            libc::setsockopt(
                from.as_raw_fd(),
                libc::IPPROTO_IPV6,
                libc::IPV6_TCLASS,
                (&ce as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        assert_eq!(rc, 0);
        // RC SEND Only to QP 0x11 with a good ICRC over the header the
        // link rebuilds (traffic class and UDP checksum are masked).
        let mut ib = vec![0x04, 0, 0xff, 0xff, 0, 0, 0, 0x11, 0, 0, 0, 5];
        ib.extend_from_slice(&[0xab; 16]);
        ib.extend_from_slice(&[0; 4]);
        let udp_len = 8 + ib.len();
        let mut dgram = vec![0x60, 0, 0, 0];
        dgram.extend_from_slice(&(udp_len as u16).to_be_bytes());
        dgram.extend_from_slice(&[17, 64]);
        dgram.extend_from_slice(&"fd00:77::1".parse::<std::net::Ipv6Addr>().unwrap().octets());
        dgram.extend_from_slice(&"fd00:77::2".parse::<std::net::Ipv6Addr>().unwrap().octets());
        dgram.extend_from_slice(&5001u16.to_be_bytes());
        dgram.extend_from_slice(&4791u16.to_be_bytes());
        dgram.extend_from_slice(&(udp_len as u16).to_be_bytes());
        dgram.extend_from_slice(&[0, 0]);
        dgram.extend_from_slice(&ib);
        transport::wire::icrc::fill(&mut dgram).unwrap();
        let pkt = dgram[48..].to_vec();
        let mut buf = vec![0u8; 65536];
        let t0 = Instant::now();
        let mut sent = 0;
        let got = loop {
            assert!(
                t0.elapsed().as_secs() < 10,
                "{sent} datagrams sent, none received"
            );
            if t0.elapsed().as_millis() >= 100 * sent {
                from.send_to(&pkt, "[fd00:77::2]:4791").unwrap();
                sent += 1;
            }
            if let Some(r) = link.recv(&mut buf).unwrap() {
                break r;
            }
        };
        assert_eq!(got.ecn, 3, "{got:?}");
        assert_eq!(&buf[got.ib_start..got.ib_start + got.ib_len], &pkt[..]);
        assert_eq!(link.stats().bad, 0);
    })
}
