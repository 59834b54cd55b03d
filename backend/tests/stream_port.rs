//! The `-netdev stream` port, driven the way QEMU drives it: the test
//! connects to the daemon's `--stream-socket` as QEMU's
//! `-netdev stream,server=off` does, and exchanges length-prefixed frames
//! with the host side of the daemon's TAP (AF_PACKET), in a private
//! network namespace. Checked: frames both ways byte for byte, several
//! frames in one write and one frame over several, RoCEv2 for the RDMA
//! address kept from the guest, a malformed length ending only that
//! connection, and SIGTERM removing the sockets. Needs root.

use std::{
    fs::File,
    io::{Read, Write},
    os::{
        fd::{AsRawFd, FromRawFd, OwnedFd},
        unix::net::UnixStream,
    },
    process::{Command, Stdio},
    time::{Duration, Instant},
};

const BIN: &str = env!("CARGO_BIN_EXE_vhost-user-rdma");
const MAC: [u8; 6] = [0x52, 0x54, 0x00, 0x12, 0x34, 0x99];

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// AF_PACKET on the TAP's host side.
struct Host {
    fd: OwnedFd,
    ifindex: i32,
}

impl Host {
    fn open(name: &str) -> Host {
        let c = std::ffi::CString::new(name).unwrap();
        // SAFETY: valid C string.
        let ifindex = unsafe { libc::if_nametoindex(c.as_ptr()) } as i32;
        assert!(ifindex > 0);
        let proto = (libc::ETH_P_ALL as u16).to_be();
        // SAFETY: plain socket(2), checked.
        let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, i32::from(proto)) };
        assert!(fd >= 0);
        // SAFETY: fresh descriptor.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        // SAFETY: zeroed sockaddr_ll is valid; fields set below.
        let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        sll.sll_family = libc::AF_PACKET as u16;
        sll.sll_protocol = proto;
        sll.sll_ifindex = ifindex;
        // SAFETY: valid sockaddr_ll and its size.
        let rc = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                (&raw const sll).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as u32,
            )
        };
        assert_eq!(rc, 0);
        let tv = libc::timeval {
            tv_sec: 0,
            tv_usec: 100_000,
        };
        // SAFETY: valid timeval and its size.
        unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                (&raw const tv).cast(),
                std::mem::size_of::<libc::timeval>() as u32,
            )
        };
        Host { fd, ifindex }
    }

    fn recv_from_guest(&self, within: Duration) -> Option<Vec<u8>> {
        let t = Instant::now();
        let mut buf = vec![0u8; 70000];
        while t.elapsed() < within {
            // SAFETY: recv into our buffer, of its length.
            let n =
                unsafe { libc::recv(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
            if n > 0 && buf[6..12] == MAC {
                return Some(buf[..n as usize].to_vec());
            }
        }
        None
    }

    fn send_to_guest(&self, frame: &[u8]) {
        // SAFETY: zeroed sockaddr_ll is valid; fields set below.
        let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        sll.sll_family = libc::AF_PACKET as u16;
        sll.sll_ifindex = self.ifindex;
        sll.sll_halen = 6;
        sll.sll_addr[..6].copy_from_slice(&frame[..6]);
        // SAFETY: the frame and address are valid for the call.
        let n = unsafe {
            libc::sendto(
                self.fd.as_raw_fd(),
                frame.as_ptr().cast(),
                frame.len(),
                0,
                (&raw const sll).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as u32,
            )
        };
        assert_eq!(n, frame.len() as isize);
    }
}

fn from_guest(len: usize, seed: u8) -> Vec<u8> {
    let mut f = vec![0xff; 6];
    f.extend_from_slice(&MAC);
    f.extend_from_slice(&[0x88, 0xb5]);
    f.extend((0..len - 14).map(|i| (i as u8).wrapping_mul(3).wrapping_add(seed)));
    f
}

fn to_guest(len: usize, seed: u8) -> Vec<u8> {
    let mut f = MAC.to_vec();
    f.extend_from_slice(&[2, 0, 0, 0, 0, 7]);
    f.extend_from_slice(&[0x88, 0xb5]);
    f.extend((0..len - 14).map(|i| (i as u8).wrapping_mul(7).wrapping_add(seed)));
    f
}

fn framed(f: &[u8]) -> Vec<u8> {
    let mut v = (f.len() as u32).to_be_bytes().to_vec();
    v.extend_from_slice(f);
    v
}

fn read_frame(s: &mut UnixStream) -> Vec<u8> {
    let mut len = [0u8; 4];
    s.read_exact(&mut len).unwrap();
    let mut f = vec![0u8; u32::from_be_bytes(len) as usize];
    s.read_exact(&mut f).unwrap();
    f
}

#[test]
fn frames_cross_the_stream_port_both_ways() {
    if !is_root() {
        eprintln!("skipped: needs root");
        return;
    }
    std::thread::spawn(|| {
        // SAFETY: unshare affects only this thread's namespaces.
        assert_eq!(unsafe { libc::unshare(libc::CLONE_NEWNET) }, 0);
        let _ = std::fs::write("/proc/sys/net/ipv6/conf/default/disable_ipv6", "1");
        let dir = std::env::temp_dir().join(format!("vur-stream-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let sock = dir.join("net.sock");
        let mut child = Command::new(BIN)
            .args([
                "--tap",
                "vsp0",
                "--mac",
                "52:54:00:12:34:99",
                "--rdma-ip",
                "10.9.0.1",
                "--stream-socket",
            ])
            .arg(&sock)
            .env("RUST_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(File::create(dir.join("daemon.log")).unwrap())
            .spawn()
            .unwrap();
        let mut line = String::new();
        let mut out = child.stdout.take().unwrap();
        let mut b = [0u8; 1];
        while out.read(&mut b).unwrap() == 1 && b[0] != b'\n' {
            line.push(b[0] as char);
        }
        assert!(
            line.contains("-netdev stream,id=n0,server=off,addr.type=unix"),
            "{line}"
        );
        assert!(
            line.contains("-device vmxnet3,netdev=n0,mac=52:54:00:12:34:99"),
            "{line}"
        );
        let host = Host::open("vsp0");
        let mut q = UnixStream::connect(&sock).unwrap();
        q.set_read_timeout(Some(Duration::from_secs(3))).unwrap();

        // Guest to host: two frames in one write, then one in pieces.
        let (f1, f2, f3) = (from_guest(60, 1), from_guest(1514, 2), from_guest(900, 3));
        let mut both = framed(&f1);
        both.extend(framed(&f2));
        q.write_all(&both).unwrap();
        let f3w = framed(&f3);
        q.write_all(&f3w[..3]).unwrap();
        std::thread::sleep(Duration::from_millis(50));
        q.write_all(&f3w[3..500]).unwrap();
        std::thread::sleep(Duration::from_millis(50));
        q.write_all(&f3w[500..]).unwrap();
        for f in [&f1, &f2, &f3] {
            assert_eq!(
                host.recv_from_guest(Duration::from_secs(3)).as_ref(),
                Some(f)
            );
        }

        // Host to guest, and RoCEv2 for the RDMA address kept back.
        let roce = {
            let b = etherparse::PacketBuilder::ethernet2([2, 0, 0, 0, 0, 7], MAC)
                .ipv4([10, 9, 0, 2], [10, 9, 0, 1], 64)
                .udp(49152, 4791);
            let mut v = Vec::new();
            b.write(&mut v, &[0u8; 40]).unwrap();
            v
        };
        host.send_to_guest(&roce);
        let g = to_guest(1000, 9);
        host.send_to_guest(&g);
        assert_eq!(
            read_frame(&mut q),
            g,
            "RoCE for 10.9.0.1 went to the engine"
        );

        // A malformed length ends this connection only; a new one works.
        q.write_all(&0u32.to_be_bytes()).unwrap();
        let mut probe = [0u8; 1];
        let _ = q.read(&mut probe);
        std::thread::sleep(Duration::from_millis(100));
        let mut q = UnixStream::connect(&sock).unwrap();
        q.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
        std::thread::sleep(Duration::from_millis(100));
        let f4 = from_guest(100, 4);
        q.write_all(&framed(&f4)).unwrap();
        assert_eq!(host.recv_from_guest(Duration::from_secs(3)), Some(f4));
        let g2 = to_guest(200, 5);
        host.send_to_guest(&g2);
        assert_eq!(read_frame(&mut q), g2);

        // SAFETY: kill(2) on the PID of the child we started.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        assert_eq!(child.wait().unwrap().code(), Some(0));
        assert!(!sock.exists(), "stream socket removed");
        let log = std::fs::read_to_string(dir.join("daemon.log")).unwrap();
        assert!(log.contains("is invalid"), "{log}");
        assert!(
            log.contains("counters: tx_frames=4 rx_frames=2 to_engine=1 ")
                && log.contains(" bad_streams=1"),
            "{log}"
        );
        let _ = std::fs::remove_dir_all(&dir);
    })
    .join()
    .unwrap();
}
