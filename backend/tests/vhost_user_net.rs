//! The daemon's virtio-net face, driven the way QEMU and a guest driver
//! drive it: a vhost-user frontend (rust-vmm's `vhost` crate) negotiates
//! features, shares memfd "guest memory" and sets up split vrings in it,
//! and a small driver model puts frames on the TX ring and buffers on the
//! RX ring. The daemon is the real binary, on a real TAP in a private
//! network namespace; the host side of the TAP is read and written with
//! AF_PACKET.
//!
//! Checked: frames both ways byte for byte (one and several descriptors,
//! mergeable RX buffers), RoCEv2 steering to the engine, malformed
//! descriptors of every kind (each dropped with a clear log line, the
//! daemon alive and still forwarding), a broken avail index, a reconnect,
//! and SIGTERM cleanup. Needs root (namespaces, TAP).
//!
//! Also prints guest-to-host throughput through the daemon at MTU 1500
//! and 9000 next to a raw TAP write baseline (`VUR_NET_BENCH_SECS` sets
//! the seconds per figure, default 1).

use std::{
    fs::File,
    io::Read,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::atomic::{Ordering, fence},
    time::{Duration, Instant},
};

use vhost::{
    VhostBackend, VhostUserMemoryRegionInfo, VringConfigData,
    vhost_user::{Frontend, VhostUserFrontend, message::VhostUserProtocolFeatures},
};
use vmm_sys_util::eventfd::EventFd;

const BIN: &str = env!("CARGO_BIN_EXE_vhost-user-rdma");
const MEM_SIZE: usize = 64 << 20;
const QSIZE: u16 = 256;
const HDR: usize = 12;
const F_NEXT: u16 = 1;
const F_WRITE: u16 = 2;
const MAC: [u8; 6] = [0x52, 0x54, 0x00, 0x12, 0x34, 0x56];
const TAP: &str = "vut0";

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// Guest memory: a shared memfd mapped here.
struct GuestMem {
    fd: OwnedFd,
    base: *mut u8,
}

impl GuestMem {
    fn new() -> GuestMem {
        // SAFETY: memfd_create with a valid C string; the result is checked.
        let fd = unsafe { libc::memfd_create(c"guest".as_ptr(), libc::MFD_CLOEXEC) };
        assert!(fd >= 0);
        // SAFETY: `fd` is a fresh descriptor we own.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        // SAFETY: ftruncate on our own memfd.
        let rc = unsafe { libc::ftruncate(fd.as_raw_fd(), MEM_SIZE as i64) };
        assert_eq!(rc, 0);
        // SAFETY: a fresh shared mapping of the whole memfd, checked below.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                MEM_SIZE,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd.as_raw_fd(),
                0,
            )
        };
        assert_ne!(base, libc::MAP_FAILED);
        GuestMem {
            fd,
            base: base.cast(),
        }
    }

    /// A pointer to `len` bytes at `gpa`, checked to lie in the mapping.
    fn at(&self, gpa: u64, len: usize) -> *mut u8 {
        assert!(gpa as usize + len <= MEM_SIZE);
        // SAFETY: the offset stays inside the mapping (checked above).
        unsafe { self.base.add(gpa as usize) }
    }

    fn slice(&self, gpa: u64, len: usize) -> &[u8] {
        let p = self.at(gpa, len);
        // SAFETY: the range lies in our mapping; the daemon writes only
        // into buffers we handed it, and we read them after it returned
        // them.
        unsafe { std::slice::from_raw_parts(p, len) }
    }

    fn write(&self, gpa: u64, data: &[u8]) {
        let p = self.at(gpa, data.len());
        // SAFETY: the destination lies in our mapping and does not overlap
        // `data`, which is ordinary process memory.
        unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), p, data.len()) };
    }

    fn u16_at(&self, gpa: u64) -> u16 {
        let p = self.at(gpa, 2);
        // SAFETY: aligned 2-byte location inside the mapping.
        let v = unsafe { std::ptr::read_volatile(p.cast::<u16>()) };
        u16::from_le(v)
    }

    fn set_u16(&self, gpa: u64, v: u16) {
        let p = self.at(gpa, 2);
        // SAFETY: aligned 2-byte location inside the mapping.
        unsafe { std::ptr::write_volatile(p.cast::<u16>(), v.to_le()) };
    }

    fn uaddr(&self, gpa: u64) -> u64 {
        self.base as u64 + gpa
    }
}

impl Drop for GuestMem {
    fn drop(&mut self) {
        // SAFETY: unmapping exactly the mapping made in `new`.
        unsafe { libc::munmap(self.base.cast(), MEM_SIZE) };
    }
}

/// The driver's side of one split virtqueue.
struct Vq {
    desc: u64,
    avail: u64,
    used: u64,
    next_desc: u16,
    avail_idx: u16,
    used_seen: u16,
    kick: EventFd,
    call: EventFd,
}

impl Vq {
    fn new(base: u64) -> Vq {
        Vq {
            desc: base,
            avail: base + 0x1000,
            used: base + 0x2000,
            next_desc: 0,
            avail_idx: 0,
            used_seen: 0,
            kick: EventFd::new(libc::EFD_NONBLOCK).unwrap(),
            call: EventFd::new(libc::EFD_NONBLOCK).unwrap(),
        }
    }

    /// Writes a chain of (gpa, len, write) descriptors and makes it
    /// available (not kicked).
    fn push(&mut self, m: &GuestMem, bufs: &[(u64, u32, bool)]) -> u16 {
        let head = self.next_desc;
        for (i, (gpa, len, write)) in bufs.iter().enumerate() {
            let idx = (self.next_desc as u64 + i as u64) % QSIZE as u64;
            let next = ((idx + 1) % QSIZE as u64) as u16;
            let mut flags = if *write { F_WRITE } else { 0 };
            if i + 1 < bufs.len() {
                flags |= F_NEXT;
            }
            self.raw_desc(m, idx as u16, *gpa, *len, flags, next);
        }
        self.next_desc = ((self.next_desc as usize + bufs.len()) % QSIZE as usize) as u16;
        self.publish(m, head);
        head
    }

    fn raw_desc(&self, m: &GuestMem, idx: u16, gpa: u64, len: u32, flags: u16, next: u16) {
        let mut d = [0u8; 16];
        d[..8].copy_from_slice(&gpa.to_le_bytes());
        d[8..12].copy_from_slice(&len.to_le_bytes());
        d[12..14].copy_from_slice(&flags.to_le_bytes());
        d[14..16].copy_from_slice(&next.to_le_bytes());
        m.write(self.desc + 16 * idx as u64, &d);
    }

    fn publish(&mut self, m: &GuestMem, head: u16) {
        m.set_u16(self.avail + 4 + 2 * (self.avail_idx % QSIZE) as u64, head);
        self.avail_idx = self.avail_idx.wrapping_add(1);
        fence(Ordering::SeqCst);
        m.set_u16(self.avail + 2, self.avail_idx);
        fence(Ordering::SeqCst);
    }

    fn kick(&self) {
        self.kick.write(1).unwrap();
    }

    /// Waits for the next used element: (id, len).
    fn wait_used(&mut self, m: &GuestMem, within: Duration) -> Option<(u16, u32)> {
        let t = Instant::now();
        loop {
            fence(Ordering::SeqCst);
            if m.u16_at(self.used + 2) != self.used_seen {
                let e = self.used + 4 + 8 * (self.used_seen % QSIZE) as u64;
                let s = m.slice(e, 8);
                let id = u32::from_le_bytes(s[..4].try_into().unwrap()) as u16;
                let len = u32::from_le_bytes(s[4..].try_into().unwrap());
                self.used_seen = self.used_seen.wrapping_add(1);
                return Some((id, len));
            }
            if t.elapsed() > within {
                return None;
            }
            std::thread::sleep(Duration::from_micros(200));
        }
    }
}

/// The frontend: the connection plus the two queues.
struct Guest {
    /// Kept open: dropping it is QEMU going away.
    _fe: Frontend,
    mem: GuestMem,
    rx: Vq,
    tx: Vq,
}

impl Guest {
    fn connect(socket: &Path, features: u64) -> Guest {
        let mem = GuestMem::new();
        let mut fe = Frontend::connect(socket, 2).expect("connect to the daemon");
        fe.set_owner().unwrap();
        let offered = fe.get_features().unwrap();
        assert_ne!(offered & 1 << 32, 0, "VERSION_1 offered");
        assert_ne!(offered & 1 << 15, 0, "MRG_RXBUF offered");
        assert_ne!(offered & 1 << 30, 0, "PROTOCOL_FEATURES offered");
        for bit in [0, 1, 7, 11] {
            assert_ne!(
                offered & 1 << bit,
                0,
                "offload feature {bit} offered on a TAP"
            );
        }
        let pf = fe.get_protocol_features().unwrap();
        fe.set_protocol_features(pf & VhostUserProtocolFeatures::REPLY_ACK)
            .unwrap();
        fe.set_features(features & offered | 1 << 30).unwrap();
        let region = VhostUserMemoryRegionInfo {
            guest_phys_addr: 0,
            memory_size: MEM_SIZE as u64,
            userspace_addr: mem.base as u64,
            mmap_offset: 0,
            mmap_handle: mem.fd.as_raw_fd(),
        };
        fe.set_mem_table(&[region]).unwrap();
        let rx = Vq::new(0);
        let tx = Vq::new(0x10000);
        for (i, q) in [&rx, &tx].into_iter().enumerate() {
            fe.set_vring_num(i, QSIZE).unwrap();
            fe.set_vring_addr(
                i,
                &VringConfigData {
                    queue_max_size: QSIZE,
                    queue_size: QSIZE,
                    flags: 0,
                    desc_table_addr: mem.uaddr(q.desc),
                    used_ring_addr: mem.uaddr(q.used),
                    avail_ring_addr: mem.uaddr(q.avail),
                    log_addr: None,
                },
            )
            .unwrap();
            fe.set_vring_base(i, 0).unwrap();
            fe.set_vring_call(i, &q.call).unwrap();
            fe.set_vring_kick(i, &q.kick).unwrap();
            fe.set_vring_enable(i, true).unwrap();
        }
        Guest {
            _fe: fe,
            mem,
            rx,
            tx,
        }
    }

    /// Sends `frame` on TX as the descriptors `split` describes (lengths
    /// of each part of header + frame); returns the used element.
    fn send(&mut self, frame: &[u8], split: &[usize]) -> Option<(u16, u32)> {
        let mut data = vec![0u8; HDR];
        data.extend_from_slice(frame);
        assert_eq!(split.iter().sum::<usize>(), data.len());
        let mut gpa = 0x100_0000u64;
        let mut off = 0;
        let mut bufs = Vec::new();
        for &n in split {
            self.mem.write(gpa, &data[off..off + n]);
            bufs.push((gpa, n as u32, false));
            off += n;
            gpa += 0x10000;
        }
        self.tx.push(&self.mem, &bufs);
        self.tx.kick();
        self.tx.wait_used(&self.mem, Duration::from_secs(5))
    }
}

/// The daemon under test, in the test thread's network namespace.
struct Daemon {
    child: Child,
    socket: PathBuf,
    log: PathBuf,
}

impl Daemon {
    fn start(dir: &Path, extra: &[&str]) -> Daemon {
        let socket = dir.join("net.sock");
        let log = dir.join("daemon.log");
        let child = Command::new(BIN)
            .args(["--tap", TAP, "--socket"])
            .arg(&socket)
            .args(["--mac", "52:54:00:12:34:56"])
            .args(extra)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let t = Instant::now();
        while !socket.exists() {
            assert!(
                t.elapsed() < Duration::from_secs(10),
                "daemon never listened"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Daemon { child, socket, log }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Whether the log shows `what` within 3 s: the daemon may write its
    /// line just after the effect the test saw (a buffer returned).
    fn log_shows(&self, what: &str) -> bool {
        let t0 = std::time::Instant::now();
        loop {
            if self.log().contains(what) {
                return true;
            }
            if t0.elapsed() > Duration::from_secs(3) {
                return false;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn alive(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }

    /// SIGTERM, then the exit status and the final log.
    fn stop(mut self) -> (i32, String) {
        // SAFETY: kill(2) on the PID of the child we started.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let st = self.child.wait().unwrap();
        (st.code().unwrap_or(-1), self.log())
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A child process killed (by its PID) if the test fails first.
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// AF_PACKET on the TAP's host side.
struct HostSide {
    fd: OwnedFd,
    ifindex: i32,
}

impl HostSide {
    fn open(ifname: &str) -> HostSide {
        let name = std::ffi::CString::new(ifname).unwrap();
        // SAFETY: valid C string.
        let ifindex = unsafe { libc::if_nametoindex(name.as_ptr()) } as i32;
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
        HostSide { fd, ifindex }
    }

    /// The next frame the guest sent (outgoing on the TAP is incoming
    /// here), skipping the kernel's own (IPv6 autoconf etc.), within
    /// `within`.
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

    /// Sends `frame` into the TAP (so that the daemon reads it).
    fn send_to_guest(&self, frame: &[u8]) {
        // SAFETY: zeroed sockaddr_ll is valid; fields set below.
        let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        sll.sll_family = libc::AF_PACKET as u16;
        sll.sll_ifindex = self.ifindex;
        sll.sll_halen = 6;
        sll.sll_addr[..6].copy_from_slice(&frame[..6]);
        // SAFETY: the frame and the address are valid for the call.
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
        assert_eq!(
            n,
            frame.len() as isize,
            "{}",
            std::io::Error::last_os_error()
        );
    }
}

fn frame_to_host(len: usize, seed: u8) -> Vec<u8> {
    let mut f = vec![0xff; 6]; // broadcast
    f.extend_from_slice(&MAC);
    f.extend_from_slice(&[0x88, 0xb5]); // local experimental ethertype
    f.extend((0..len - 14).map(|i| (i as u8).wrapping_mul(7).wrapping_add(seed)));
    f
}

fn frame_to_guest(len: usize, seed: u8) -> Vec<u8> {
    let mut f = MAC.to_vec();
    f.extend_from_slice(&[0x02, 0, 0, 0, 0, 0x99]);
    f.extend_from_slice(&[0x88, 0xb5]);
    f.extend((0..len - 14).map(|i| (i as u8).wrapping_mul(13).wrapping_add(seed)));
    f
}

/// A RoCEv2 frame to `dst` (a valid-looking header is enough: the switch
/// only reads Ethernet, IP and UDP).
fn roce_to(dst: [u8; 4]) -> Vec<u8> {
    let b = etherparse::PacketBuilder::ethernet2([2, 0, 0, 0, 0, 0x99], MAC)
        .ipv4([10, 9, 0, 2], dst, 64)
        .udp(49152, 4791);
    let mut out = Vec::new();
    b.write(&mut out, &[0u8; 40]).unwrap();
    out
}

fn ip(args: &[&str]) {
    let st = Command::new("ip").args(args).status().unwrap();
    assert!(st.success(), "ip {args:?}");
}

/// Runs `f` on a thread in a fresh network namespace (children started
/// there inherit it); the namespace goes with the thread and its sockets.
fn in_netns(f: impl FnOnce() + Send + 'static) {
    std::thread::spawn(|| {
        // SAFETY: unshare affects only this thread's namespaces.
        assert_eq!(unsafe { libc::unshare(libc::CLONE_NEWNET) }, 0);
        ip(&["link", "set", "lo", "up"]);
        // No IPv6 autoconf chatter from the kernel on the TAPs: the
        // frames a test expects are then the only ones.
        for k in ["default", "all"] {
            let _ = std::fs::write(format!("/proc/sys/net/ipv6/conf/{k}/disable_ipv6"), "1");
        }
        f();
    })
    .join()
    .unwrap();
}

fn tempdir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("vur-net-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Posts `n` RX buffers of `size` bytes from `base`.
fn post_rx(g: &mut Guest, n: usize, size: u32, base: u64) {
    for i in 0..n {
        g.rx.push(&g.mem, &[(base + i as u64 * 0x10000, size, true)]);
    }
    g.rx.kick();
}

#[test]
fn frames_flow_both_ways_and_bad_descriptors_are_refused() {
    if !is_root() {
        eprintln!("skipped: needs root");
        return;
    }
    in_netns(|| {
        let dir = tempdir("flow");
        let ctl = dir.join("ctl.sock");
        let mut d = Daemon::start(
            &dir,
            &[
                "--rdma-ip",
                "10.9.0.1",
                "--mtu",
                "1500",
                "--control",
                ctl.to_str().unwrap(),
            ],
        );
        let host = HostSide::open(TAP);
        let features = 1 << 32 | 1 << 15 | 1 << 5 | 1 << 3; // VERSION_1, MRG_RXBUF, MAC, MTU
        let mut g = Guest::connect(&d.socket, features);

        // TX: one descriptor, then header and frame split over three.
        for (i, split) in [vec![HDR + 1000], vec![HDR, 500, 500], vec![5, 7, 1000]]
            .into_iter()
            .enumerate()
        {
            let f = frame_to_host(1000, i as u8);
            let (_, len) = g.send(&f, &split).expect("TX used");
            assert_eq!(len, 0);
            let got = host
                .recv_from_guest(Duration::from_secs(3))
                .expect("frame on the TAP");
            assert_eq!(got, f, "TX frame {i}");
        }

        // RX: one buffer per frame, then a 1400-byte frame merged over
        // 512-byte buffers (3 of them, num_buffers 3).
        post_rx(&mut g, 4, 2048, 0x200_0000);
        let f = frame_to_guest(200, 1);
        host.send_to_guest(&f);
        let (id, len) =
            g.rx.wait_used(&g.mem, Duration::from_secs(3))
                .expect("RX used");
        assert_eq!(id, 0);
        assert_eq!(len as usize, HDR + f.len());
        let b = g.mem.slice(0x200_0000, HDR + f.len()).to_vec();
        assert_eq!(u16::from_le_bytes([b[10], b[11]]), 1, "num_buffers");
        assert_eq!(&b[HDR..], &f[..]);
        // Use up the other three buffers so the next frame needs small ones.
        for s in 2..5u8 {
            host.send_to_guest(&frame_to_guest(100, s));
            g.rx.wait_used(&g.mem, Duration::from_secs(3))
                .expect("RX used");
        }
        post_rx(&mut g, 4, 512, 0x300_0000);
        let f = frame_to_guest(1400, 9);
        host.send_to_guest(&f);
        let mut got = Vec::new();
        let mut parts = Vec::new();
        for _ in 0..3 {
            let (id, len) =
                g.rx.wait_used(&g.mem, Duration::from_secs(3))
                    .expect("merged");
            parts.push((id, len));
        }
        for (k, (_, len)) in parts.iter().enumerate() {
            got.extend_from_slice(g.mem.slice(0x300_0000 + k as u64 * 0x10000, *len as usize));
        }
        assert_eq!(u16::from_le_bytes([got[10], got[11]]), 3, "num_buffers");
        assert_eq!(&got[HDR..], &f[..]);

        // Steering: RoCEv2 to the RDMA address goes to the engine, not
        // the guest; RoCEv2 to another address and plain UDP reach the
        // guest.
        host.send_to_guest(&roce_to([10, 9, 0, 1]));
        let other = roce_to([10, 9, 0, 7]);
        host.send_to_guest(&other);
        let (_, len) =
            g.rx.wait_used(&g.mem, Duration::from_secs(3))
                .expect("RX used");
        let first = g.mem.slice(0x300_0000 + 3 * 0x10000, len as usize).to_vec();
        assert_eq!(
            &first[HDR..],
            &other[..],
            "only the other address's RoCE reaches the guest"
        );

        // Malformed TX chains: each is returned, nothing reaches the TAP,
        // and a good frame passes right after.
        type Make = Box<dyn Fn(&mut Guest)>;
        let bad_cases: Vec<(&str, Make)> = vec![
            (
                "outside guest memory",
                Box::new(|g: &mut Guest| {
                    g.tx.push(&g.mem, &[(MEM_SIZE as u64 + 0x1000, 100, false)]);
                }),
            ),
            (
                "loops",
                Box::new(|g: &mut Guest| {
                    let a = g.tx.next_desc;
                    let b = (a + 1) % QSIZE;
                    g.tx.raw_desc(&g.mem, a, 0x100_0000, 64, F_NEXT, b);
                    g.tx.raw_desc(&g.mem, b, 0x100_0000, 64, F_NEXT, a);
                    g.tx.next_desc = (a + 2) % QSIZE;
                    g.tx.publish(&g.mem, a);
                }),
            ),
            (
                "longer than",
                Box::new(|g: &mut Guest| {
                    g.tx.push(
                        &g.mem,
                        &[
                            (0x100_0000, 30000, false),
                            (0x110_0000, 30000, false),
                            (0x120_0000, 30000, false),
                        ],
                    );
                }),
            ),
            (
                "holds no frame",
                Box::new(|g: &mut Guest| {
                    g.tx.push(&g.mem, &[(0x100_0000, 0, false)]);
                }),
            ),
            (
                "device-writable",
                Box::new(|g: &mut Guest| {
                    g.tx.push(&g.mem, &[(0x100_0000, 100, true)]);
                }),
            ),
        ];
        for (what, make) in &bad_cases {
            make(&mut g);
            g.tx.kick();
            let (_, len) = g.tx.wait_used(&g.mem, Duration::from_secs(3)).expect(what);
            assert_eq!(len, 0);
            assert!(
                host.recv_from_guest(Duration::from_millis(200)).is_none(),
                "{what}"
            );
            assert!(d.alive(), "daemon died on a chain that {what}");
            assert!(
                d.log_shows(what),
                "no log line for a chain that {what}:\n{}",
                d.log()
            );
            let f = frame_to_host(300, 77);
            g.send(&f, &[HDR + 300])
                .expect("good frame after a bad one");
            assert_eq!(
                host.recv_from_guest(Duration::from_secs(3)).as_deref(),
                Some(&f[..])
            );
        }

        // Malformed RX buffers: a read-only one and one outside memory are
        // returned empty and the frame dropped; a good buffer then works.
        g.rx.push(&g.mem, &[(0x380_0000, 2048, false)]);
        g.rx.kick();
        host.send_to_guest(&frame_to_guest(100, 3));
        let (_, len) =
            g.rx.wait_used(&g.mem, Duration::from_secs(3))
                .expect("RX returned");
        assert_eq!(len, 0);
        assert!(d.log_shows("read-only descriptor"), "{}", d.log());
        g.rx.push(&g.mem, &[(MEM_SIZE as u64 - 100, 2048, true)]);
        g.rx.kick();
        host.send_to_guest(&frame_to_guest(300, 4));
        let (_, len) =
            g.rx.wait_used(&g.mem, Duration::from_secs(3))
                .expect("RX returned");
        assert_eq!(len, 0);
        post_rx(&mut g, 1, 2048, 0x3c0_0000);
        let f = frame_to_guest(300, 5);
        host.send_to_guest(&f);
        let (_, len) =
            g.rx.wait_used(&g.mem, Duration::from_secs(3))
                .expect("RX used");
        assert_eq!(&g.mem.slice(0x3c0_0000, len as usize)[HDR..], &f[..]);

        // An avail index far ahead of the ring breaks the TX queue (and
        // only it); the daemon lives, and a new connection works again.
        g.mem
            .set_u16(g.tx.avail + 2, g.tx.avail_idx.wrapping_add(QSIZE + 10));
        g.tx.kick();
        assert!(d.log_shows("queue is broken"), "{}", d.log());
        assert!(d.alive());
        drop(g);
        std::thread::sleep(Duration::from_millis(300));
        let mut g = Guest::connect(&d.socket, features);
        let f = frame_to_host(600, 8);
        g.send(&f, &[HDR + 600]).expect("TX after reconnect");
        assert_eq!(
            host.recv_from_guest(Duration::from_secs(3)).as_deref(),
            Some(&f[..])
        );
        drop(g);

        // `stats` on the control socket shows the same counts the log
        // line below gives at exit.
        let out = Command::new(BIN)
            .args(["stats", "--json"])
            .arg(&ctl)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(
            (
                &v["nic"]["to_engine"],
                &v["nic"]["tx_bad"],
                &v["nic"]["rx_bad"]
            ),
            (&1.into(), &5.into(), &2.into()),
            "{v}"
        );
        assert_eq!(v["link"], TAP);
        let table = Command::new(BIN).arg("stats").arg(&ctl).output().unwrap();
        let t = String::from_utf8_lossy(&table.stdout);
        assert!(t.contains("nic: ") && t.contains("to_engine=1"), "{t}");

        let (code, log) = d.stop();
        assert_eq!(code, 0, "{log}");
        assert!(!dir.join("net.sock").exists(), "socket removed on SIGTERM");
        assert!(!ctl.exists(), "control socket removed on SIGTERM");
        let counters = log.lines().rev().find(|l| l.contains("counters:")).unwrap();
        assert!(counters.contains("to_engine=1 "), "{counters}");
        assert!(counters.contains("tx_bad=5 "), "{counters}");
        assert!(counters.contains("rx_bad=2 "), "{counters}");
        let _ = std::fs::remove_dir_all(&dir);
    });
}

/// A UDP/IPv4 frame from the guest (10.9.0.1) to 10.9.0.254:`port`
/// with the UDP checksum field set to `csum`.
/// A jumbo frame that needs more mergeable buffers than the guest has
/// given yet must not stop the device: the frames before it are handed
/// over with an interrupt (the guest refills only after taking them), TX
/// keeps flowing, and with EVENT_IDX the kick threshold is set where the
/// guest's next buffer crosses it, so the frame lands once it fits. (The
/// daemon once spun in its RX loop here, holding the interrupt back and
/// starving TX: the guest's network died under jumbo frames.)
#[test]
fn a_frame_waiting_for_more_mergeable_buffers_stalls_nothing() {
    if !is_root() {
        eprintln!("skipped: needs root");
        return;
    }
    in_netns(|| {
        let dir = tempdir("jumbo");
        let d = Daemon::start(&dir, &["--mtu", "9000"]);
        let host = HostSide::open(TAP);
        // VERSION_1, EVENT_IDX, MRG_RXBUF, MAC, MTU.
        let features = 1 << 32 | 1 << 29 | 1 << 15 | 1 << 5 | 1 << 3;
        let mut g = Guest::connect(&d.socket, features);
        // used_event 0: interrupt on the first used buffer.
        g.mem.set_u16(g.rx.avail + 4 + 2 * u64::from(QSIZE), 0);

        // Three 2 KiB buffers: a small frame takes one, the 9000-byte
        // frame behind it needs five.
        post_rx(&mut g, 3, 2048, 0x200_0000);
        let small = frame_to_guest(300, 1);
        let big = frame_to_guest(9000, 2);
        host.send_to_guest(&small);
        host.send_to_guest(&big);
        let (_, len) =
            g.rx.wait_used(&g.mem, Duration::from_secs(3))
                .expect("the small frame");
        assert_eq!(len as usize, HDR + small.len());
        let t = Instant::now();
        while g.rx.call.read().is_err() {
            assert!(
                t.elapsed() < Duration::from_secs(3),
                "no interrupt for the small frame"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        // TX still flows while the big frame waits.
        let f = frame_to_host(1000, 3);
        g.send(&f, &[HDR + 1000]).expect("TX used while RX waits");
        assert_eq!(
            host.recv_from_guest(Duration::from_secs(3)).as_deref(),
            Some(&f[..])
        );
        // The driver adds three more buffers and kicks only if the
        // device's avail_event says so (vring_need_event).
        std::thread::sleep(Duration::from_millis(100));
        fence(Ordering::SeqCst);
        let avail_event = g.mem.u16_at(g.rx.used + 4 + 8 * u64::from(QSIZE));
        let old = g.rx.avail_idx;
        for i in 0..3u64 {
            g.rx.push(&g.mem, &[(0x300_0000 + i * 0x10000, 2048, true)]);
        }
        let new = g.rx.avail_idx;
        assert!(
            new.wrapping_sub(avail_event).wrapping_sub(1) < new.wrapping_sub(old),
            "avail_event {avail_event} is not crossed by {old}..{new}: the guest would not kick"
        );
        g.rx.kick();
        let mut got = Vec::new();
        for k in 0..5 {
            let (id, len) =
                g.rx.wait_used(&g.mem, Duration::from_secs(3))
                    .unwrap_or_else(|| panic!("big frame part {k}"));
            // Descriptors 1 and 2 are the first buffers, then 3, 4, 5.
            let gpa = if id < 3 {
                0x200_0000 + u64::from(id) * 0x10000
            } else {
                0x300_0000 + u64::from(id - 3) * 0x10000
            };
            got.extend_from_slice(g.mem.slice(gpa, len as usize));
        }
        assert_eq!(u16::from_le_bytes([got[10], got[11]]), 5, "num_buffers");
        assert_eq!(&got[HDR..], &big[..]);
        drop(g);
        let (code, log) = d.stop();
        assert_eq!(code, 0, "{log}");
        let _ = std::fs::remove_dir_all(&dir);
    });
}

/// Frames that reach the TAP while the driver is still setting its
/// queues up wait for them: "not set up yet" is not a broken queue.
#[test]
fn frames_during_queue_setup_wait_for_the_queue() {
    if !is_root() {
        eprintln!("skipped: needs root");
        return;
    }
    in_netns(|| {
        let dir = tempdir("setup");
        let d = Daemon::start(&dir, &[]);
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let sender = {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let host = HostSide::open(TAP);
                let mut n = 0u8;
                while !stop.load(Ordering::Relaxed) {
                    host.send_to_guest(&frame_to_guest(200, n));
                    n = n.wrapping_add(1);
                    std::thread::sleep(Duration::from_micros(200));
                }
            })
        };
        std::thread::sleep(Duration::from_millis(50));
        let features = 1 << 32 | 1 << 29 | 1 << 15 | 1 << 5;
        let mut g = Guest::connect(&d.socket, features);
        post_rx(&mut g, 8, 2048, 0x200_0000);
        let got = g.rx.wait_used(&g.mem, Duration::from_secs(3));
        stop.store(true, Ordering::Relaxed);
        sender.join().unwrap();
        assert!(got.is_some(), "no frame reached the guest: {}", d.log());
        drop(g);
        let (code, log) = d.stop();
        assert_eq!(code, 0, "{log}");
        assert!(!log.contains("queue is broken"), "{log}");
        let _ = std::fs::remove_dir_all(&dir);
    });
}

fn udp_from_guest(port: u16, payload: &[u8], csum: u16) -> Vec<u8> {
    let b = etherparse::PacketBuilder::ethernet2(MAC, [0xff; 6])
        .ipv4([10, 9, 0, 1], [10, 9, 0, 254], 64)
        .udp(40000, port);
    let mut f = Vec::new();
    b.write(&mut f, payload).unwrap();
    f[40..42].copy_from_slice(&csum.to_be_bytes());
    f
}

#[test]
fn checksum_offload_passes_between_guest_and_kernel() {
    if !is_root() {
        eprintln!("skipped: needs root");
        return;
    }
    in_netns(|| {
        let dir = tempdir("offload");
        let d = Daemon::start(&dir, &["--mtu", "1500"]);
        ip(&["addr", "add", "10.9.0.254/24", "dev", TAP]);
        ip(&[
            "neigh",
            "add",
            "10.9.0.1",
            "lladdr",
            "52:54:00:12:34:56",
            "dev",
            TAP,
            "nud",
            "permanent",
        ]);
        // VERSION_1, MRG_RXBUF, CSUM, GUEST_CSUM, HOST_TSO4, GUEST_TSO4.
        let features = 1 << 32 | 1 << 15 | 1 << 0 | 1 << 1 | 1 << 11 | 1 << 7;
        let mut g = Guest::connect(&d.socket, features);
        let sock = std::net::UdpSocket::bind("10.9.0.254:7777").unwrap();
        sock.set_read_timeout(Some(Duration::from_millis(500)))
            .unwrap();

        // Guest to host: a frame whose UDP checksum is left to the host
        // (NEEDS_CSUM, start 34, offset 6) is delivered; the same frame
        // without the flag has a wrong checksum and is dropped.
        let payload = b"partial checksum from the guest";
        let frame = udp_from_guest(7777, payload, 0x1234);
        let mut hdr = [0u8; HDR];
        hdr[0] = 1; // NEEDS_CSUM
        hdr[6..8].copy_from_slice(&34u16.to_le_bytes());
        hdr[8..10].copy_from_slice(&6u16.to_le_bytes());
        let mut data = hdr.to_vec();
        data.extend_from_slice(&frame);
        g.mem.write(0x100_0000, &data);
        g.tx.push(&g.mem, &[(0x100_0000, data.len() as u32, false)]);
        g.tx.kick();
        g.tx.wait_used(&g.mem, Duration::from_secs(3))
            .expect("TX used");
        let mut buf = [0u8; 128];
        let (n, _) = sock
            .recv_from(&mut buf)
            .expect("datagram with a partial checksum");
        assert_eq!(&buf[..n], payload);
        g.send(&frame, &[HDR + frame.len()]).expect("TX used");
        assert!(
            sock.recv_from(&mut buf).is_err(),
            "bad checksum without NEEDS_CSUM"
        );

        // Host to guest: the kernel leaves the checksum to the guest and
        // says so in the header.
        // (The kernel's own IPv6 chatter on the TAP may come first.)
        post_rx(&mut g, 16, 2048, 0x200_0000);
        sock.send_to(b"to the guest", "10.9.0.1:9").unwrap();
        let mut k = 0u64;
        let got = loop {
            let (id, len) =
                g.rx.wait_used(&g.mem, Duration::from_secs(3))
                    .expect("RX used");
            k += 1;
            assert!(k <= 16, "no UDP frame among the first 16");
            let f = g
                .mem
                .slice(0x200_0000 + u64::from(id) * 0x10000, len as usize)
                .to_vec();
            if f.len() > HDR + 42 && f[HDR + 12..HDR + 14] == [0x08, 0x00] && f[HDR + 23] == 17 {
                break f;
            }
        };
        assert_eq!(got[0] & 1, 1, "NEEDS_CSUM: header {:?}", &got[..HDR]);
        assert_eq!(u16::from_le_bytes([got[6], got[7]]), 34, "csum_start");
        assert_eq!(u16::from_le_bytes([got[8], got[9]]), 6, "csum_offset");
        assert_eq!(&got[HDR + 42..], b"to the guest");
        drop(g);
        let (code, _) = d.stop();
        assert_eq!(code, 0);
        let _ = std::fs::remove_dir_all(&dir);
    });
}

#[test]
fn misconfiguration_gets_one_clear_line_and_a_nonzero_exit() {
    if !is_root() {
        eprintln!("skipped: needs root");
        return;
    }
    in_netns(|| {
        let dir = tempdir("misconf");
        let d = Daemon::start(&dir, &[]);
        // The same socket again: in use.
        let out = Command::new(BIN)
            .args(["--tap", "vut1", "--socket"])
            .arg(&d.socket)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("is in use by another process"), "{err}");
        assert_eq!(err.trim().lines().count(), 1, "{err}");
        // A bad MAC, a multicast MAC, a bad queue size.
        for (args, needle) in [
            (vec!["--mac", "52:54:00:zz:00:01"], "is not a MAC address"),
            (vec!["--mac", "01:00:5e:00:00:01"], "multicast"),
            (vec!["--queue-size", "1000"], "power of 2"),
        ] {
            let out = Command::new(BIN).args(&args).output().unwrap();
            assert_eq!(out.status.code(), Some(2), "{args:?}");
            let err = String::from_utf8_lossy(&out.stderr);
            assert!(err.contains(needle), "{args:?}: {err}");
        }
        // Not a socket.
        let file = dir.join("plain");
        std::fs::write(&file, b"x").unwrap();
        let out = Command::new(BIN)
            .args(["--tap", "vut2", "--socket"])
            .arg(&file)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1));
        assert!(String::from_utf8_lossy(&out.stderr).contains("is not a socket"));
        let (code, _) = d.stop();
        assert_eq!(code, 0);

        // No permission to create a TAP (run as nobody, no capabilities).
        let open = dir.join("open");
        std::fs::create_dir(&open).unwrap();
        Command::new("chmod")
            .arg("777")
            .arg(&open)
            .status()
            .unwrap();
        let out = Command::new("setpriv")
            .args([
                "--reuid=65534",
                "--regid=65534",
                "--clear-groups",
                "--inh-caps=-all",
            ])
            .arg(BIN)
            .args(["--tap", "vutperm", "--socket"])
            .arg(open.join("s.sock"))
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{err}");
        assert!(err.contains("no permission to open TAP vutperm"), "{err}");
        assert_eq!(err.trim().lines().count(), 1, "{err}");

        // Guest memory not shared: QEMU then starts the device (features)
        // but never sends a memory table; the daemon says so and exits.
        let mut d = Daemon::start(&dir, &[]);
        let mut fe = Frontend::connect(&d.socket, 2).unwrap();
        fe.set_owner().unwrap();
        let f = fe.get_features().unwrap();
        let pf = fe.get_protocol_features().unwrap();
        fe.set_protocol_features(pf & VhostUserProtocolFeatures::REPLY_ACK)
            .unwrap();
        fe.set_features(f & (1 << 32 | 1 << 30)).unwrap();
        let t = Instant::now();
        let status = loop {
            if let Some(st) = d.child.try_wait().unwrap() {
                break st;
            }
            assert!(
                t.elapsed() < Duration::from_secs(10),
                "daemon did not give up"
            );
            std::thread::sleep(Duration::from_millis(100));
        };
        assert_eq!(status.code(), Some(1));
        let log = d.log();
        let line = log.lines().last().unwrap_or_default();
        assert!(
            line.contains("its memory is not shared") && line.contains("share=on"),
            "{log}"
        );
        assert!(!d.socket.exists(), "socket removed");
        drop(fe);
        let _ = std::fs::remove_dir_all(&dir);
    });
}

#[test]
fn without_options_it_makes_a_tap_and_prints_the_qemu_options() {
    if !is_root() {
        eprintln!("skipped: needs root");
        return;
    }
    in_netns(|| {
        let child = Command::new(BIN)
            .env("RUST_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let mut child = KillOnDrop(child);
        let mut out = child.0.stdout.take().unwrap();
        let mut line = Vec::new();
        let mut b = [0u8; 1];
        while out.read(&mut b).unwrap() == 1 && b[0] != b'\n' {
            line.push(b[0]);
        }
        let line = String::from_utf8(line).unwrap();
        for part in [
            "memory-backend-memfd",
            "share=on",
            "-numa node,memdev=mem0",
            "-netdev vhost-user",
            "virtio-net-pci",
            "mac=52:54:00:",
        ] {
            assert!(line.contains(part), "{part} missing from: {line}");
        }
        let sock = line
            .split([',', ' '])
            .find_map(|p| p.strip_prefix("path="))
            .expect("socket path")
            .to_string();
        assert!(Path::new(&sock).exists());
        let tap = Path::new(&sock)
            .file_stem()
            .unwrap()
            .to_str()
            .unwrap()
            .to_string();
        assert!(tap.starts_with("vur"));
        assert!(netdev::port::interface_exists(&tap), "TAP {tap} created");
        // SAFETY: kill(2) on our child's PID.
        unsafe { libc::kill(child.0.id() as i32, libc::SIGINT) };
        assert_eq!(child.0.wait().unwrap().code(), Some(0));
        assert!(!Path::new(&sock).exists(), "socket removed");
        assert!(!netdev::port::interface_exists(&tap), "TAP removed");
    });
}

/// Raw TAP write rate: frames of `len` bytes written straight to a TAP
/// for `secs` (the baseline for the daemon's TX path).
fn tap_write_baseline(len: usize, secs: f64) -> (f64, f64) {
    let port = netdev::port::FramePort::tap("vutb").unwrap();
    let f = frame_to_host(len, 1);
    let t = Instant::now();
    let mut n = 0u64;
    while t.elapsed().as_secs_f64() < secs {
        for _ in 0..64 {
            port.write(&[&f]).unwrap();
        }
        n += 64;
    }
    let s = t.elapsed().as_secs_f64();
    (n as f64 / s, n as f64 * len as f64 * 8.0 / s / 1e9)
}

#[test]
fn guest_to_host_throughput_next_to_raw_tap() {
    if !is_root() {
        eprintln!("skipped: needs root");
        return;
    }
    let secs: f64 = std::env::var("VUR_NET_BENCH_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1.0);
    in_netns(move || {
        for mtu in [1500usize, 9000] {
            let dir = tempdir(&format!("bench{mtu}"));
            let d = Daemon::start(&dir, &["--mtu", &mtu.to_string()]);
            let mut g = Guest::connect(&d.socket, 1 << 32 | 1 << 15);
            let len = mtu + 14;
            let f = frame_to_host(len, 3);
            let mut data = vec![0u8; HDR];
            data.extend_from_slice(&f);
            // 128 TX buffers, reused round-robin.
            for i in 0..128u64 {
                g.mem.write(0x100_0000 + i * 0x10000, &data);
            }
            let t = Instant::now();
            let (mut sent, mut done) = (0u64, 0u64);
            while t.elapsed().as_secs_f64() < secs {
                while sent - done < 128 {
                    let slot = sent % 128;
                    g.tx.push(
                        &g.mem,
                        &[(0x100_0000 + slot * 0x10000, data.len() as u32, false)],
                    );
                    sent += 1;
                }
                g.tx.kick();
                while g.tx.wait_used(&g.mem, Duration::ZERO).is_some() {
                    done += 1;
                }
                std::thread::yield_now();
            }
            while done < sent {
                g.tx.wait_used(&g.mem, Duration::from_secs(5))
                    .expect("drain");
                done += 1;
            }
            let s = t.elapsed().as_secs_f64();
            let (fps, gbps) = (done as f64 / s, done as f64 * len as f64 * 8.0 / s / 1e9);
            drop(g);
            let (code, log) = d.stop();
            assert_eq!(code, 0);
            let counters = log.lines().rev().find(|l| l.contains("counters:")).unwrap();
            assert!(
                counters.contains(&format!("tx_frames={done} ")),
                "{done} frames: {counters}"
            );
            let (bfps, bgbps) = tap_write_baseline(len, secs);
            println!(
                "{{\"bench\":\"vhost-user-net guest-to-host\",\"mtu\":{mtu},\"frames_per_s\":{fps:.0},\"gbit_per_s\":{gbps:.3},\"baseline_raw_tap_write_frames_per_s\":{bfps:.0},\"baseline_gbit_per_s\":{bgbps:.3}}}"
            );
            let _ = std::fs::remove_dir_all(&dir);
        }
    });
}
