//! ARP and NDP against the real Linux kernel through a real TAP device, in
//! a private network namespace (a thread of this test unshares it, so the
//! TAP and its addresses vanish with the thread).
//!
//! - The kernel resolves us: it sends UDP to our addresses, which needs
//!   our ARP reply / neighbour advertisement; the datagram then arrives
//!   addressed to our MAC.
//! - We resolve the kernel: our request gets the kernel's answer, and the
//!   MAC we learn is the TAP's own.
//! - A silent address fails after three probes with a clear error.

mod common;

use common::ip;
use std::{
    fs::File,
    io::{Read, Write},
    net::{IpAddr, UdpSocket},
    os::fd::AsRawFd,
    time::{Duration, Instant},
};

use etherparse::{EtherType, Ethernet2Header};
use netdev::neigh::{MAX_PROBES, NeighError, Neighbours, RETRANS_NS};

const OUR_MAC: [u8; 6] = [0x02, 0x76, 0x75, 0x72, 0, 0x02];

/// Creates TAP `name` (no packet-info header) and returns its file.
fn open_tap(name: &str) -> File {
    let f = File::options()
        .read(true)
        .write(true)
        .open("/dev/net/tun")
        .expect("/dev/net/tun");
    let mut ifr = [0u8; 40];
    ifr[..name.len()].copy_from_slice(name.as_bytes());
    let flags = (libc::IFF_TAP | libc::IFF_NO_PI) as libc::c_short;
    ifr[16..18].copy_from_slice(&flags.to_ne_bytes());
    // SAFETY: `ifr` is a 40-byte buffer laid out as `struct ifreq` (name,
    // then the flags short), valid for the kernel to read and write.
    let rc = unsafe { libc::ioctl(f.as_raw_fd(), libc::TUNSETIFF, ifr.as_mut_ptr()) };
    assert_eq!(rc, 0, "TUNSETIFF: {}", std::io::Error::last_os_error());
    // SAFETY: plain fcntl on a descriptor we own.
    unsafe {
        let fl = libc::fcntl(f.as_raw_fd(), libc::F_GETFL);
        libc::fcntl(f.as_raw_fd(), libc::F_SETFL, fl | libc::O_NONBLOCK);
    }
    f
}

/// Reads frames for up to `limit`, handing ARP/NDP to `n` and sending its
/// answers; returns the first other frame that `want` accepts.
fn pump(
    tap: &mut File,
    n: &mut Neighbours,
    start: Instant,
    limit: Duration,
    want: impl Fn(&[u8]) -> bool,
) -> Option<Vec<u8>> {
    let mut buf = vec![0u8; 65536];
    let t0 = Instant::now();
    while t0.elapsed() < limit {
        let now = start.elapsed().as_nanos() as u64;
        while let Some(f) = n.poll_transmit() {
            tap.write_all(&f).unwrap();
        }
        match tap.read(&mut buf) {
            Ok(len) => {
                let f = &buf[..len];
                if !n.handle_frame(f, now) && want(f) {
                    return Some(f.to_vec());
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(2));
            }
            Err(e) => panic!("tap read: {e}"),
        }
    }
    None
}

#[test]
fn arp_and_ndp_against_the_kernel_over_a_real_tap() {
    common::in_private_netns(|| {
        let mut tap = open_tap("vur0");
        ip(&["link", "set", "vur0", "up"]);
        ip(&["addr", "add", "10.88.0.1/24", "dev", "vur0"]);
        ip(&["addr", "add", "fd00:88::1/64", "dev", "vur0", "nodad"]);
        // (/sys shows the host's namespace, so ask `ip` for the MAC.)
        let out = std::process::Command::new("ip")
            .args(["-o", "link", "show", "vur0"])
            .output()
            .unwrap();
        let out = String::from_utf8(out.stdout).unwrap();
        let kmac_s = out
            .split_whitespace()
            .skip_while(|w| *w != "link/ether")
            .nth(1)
            .expect("link/ether in `ip link` output")
            .to_string();
        let kmac: Vec<u8> = kmac_s
            .trim()
            .split(':')
            .map(|h| u8::from_str_radix(h, 16).unwrap())
            .collect();
        let ours: [IpAddr; 2] = ["10.88.0.2".parse().unwrap(), "fd00:88::2".parse().unwrap()];
        let kernel: [IpAddr; 2] = ["10.88.0.1".parse().unwrap(), "fd00:88::1".parse().unwrap()];
        let mut n = Neighbours::new(OUR_MAC, ours.to_vec());
        let start = Instant::now();

        // The kernel resolves us, then its datagram reaches our MAC.
        for (k, o) in kernel.iter().zip(&ours) {
            let sock = UdpSocket::bind((*k, 0)).unwrap();
            sock.send_to(b"hello", (*o, 9)).unwrap();
            let got = pump(&mut tap, &mut n, start, Duration::from_secs(5), |f| {
                let Ok((eth, _)) = Ethernet2Header::from_slice(f) else {
                    return false;
                };
                eth.destination == OUR_MAC
                    && matches!(eth.ether_type, EtherType::IPV4 | EtherType::IPV6)
                    && f.ends_with(b"hello")
            });
            assert!(got.is_some(), "the kernel never sent to our MAC for {o}");
        }

        // We resolve the kernel's addresses. (They may be known already
        // from the kernel's requests; forget nothing, just check the MAC.)
        let mut fresh = Neighbours::new(OUR_MAC, ours.to_vec());
        for k in kernel {
            let now = start.elapsed().as_nanos() as u64;
            assert_eq!(fresh.resolve(k, now), Ok(None));
            let t0 = Instant::now();
            let mac = loop {
                let now = start.elapsed().as_nanos() as u64;
                if let Some(m) = fresh.resolve(k, now).unwrap() {
                    break m;
                }
                assert!(t0.elapsed() < Duration::from_secs(5), "no answer for {k}");
                pump(
                    &mut tap,
                    &mut fresh,
                    start,
                    Duration::from_millis(20),
                    |_| false,
                );
            };
            assert_eq!(mac.as_slice(), kmac.as_slice(), "learned MAC for {k}");
        }

        // A silent address on the link: three probes go out, then a clear
        // error (time is explicit, so this does not wait 3 s).
        let silent: IpAddr = "10.88.0.77".parse().unwrap();
        let mut now = start.elapsed().as_nanos() as u64;
        assert_eq!(fresh.resolve(silent, now), Ok(None));
        let mut probes = 0;
        for _ in 0..MAX_PROBES {
            while let Some(f) = fresh.poll_transmit() {
                tap.write_all(&f).unwrap();
                probes += 1;
            }
            now += RETRANS_NS;
            fresh.handle_timeout(now);
        }
        assert_eq!(probes, MAX_PROBES);
        let e = fresh.resolve(silent, now).unwrap_err();
        assert_eq!(e, NeighError::Unreachable(silent));
        assert!(e.to_string().contains("10.88.0.77"));
    });
}
