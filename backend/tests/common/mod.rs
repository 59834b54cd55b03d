//! What the PVRDMA tests share: the "VM" they build from a daemon and a
//! vfio-user client. This module owns memfd guest memory ([`Ram`]), the
//! daemon child ([`Daemon`], killed by PID on drop), named network
//! namespaces ([`Netns`], deleted on drop), and [`VfioBus`], which puts
//! `pvrdma_model::driver` on a vfio-user connection: BAR1 and BAR2
//! accesses become vfio-user region messages, guest memory is the memfd
//! shared with the daemon by DMA map, and the three MSI-X vectors are
//! eventfds.

#![allow(dead_code)]

use std::{
    fs::File,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use vfio_bindings::bindings::vfio::{
    VFIO_IRQ_SET_ACTION_TRIGGER, VFIO_IRQ_SET_DATA_EVENTFD, VFIO_PCI_BAR1_REGION_INDEX,
    VFIO_PCI_BAR2_REGION_INDEX, VFIO_PCI_MSIX_IRQ_INDEX,
};
use vfio_user::Client;
use vmm_sys_util::eventfd::EventFd;

/// The daemon binary.
pub const BIN: &str = env!("CARGO_BIN_EXE_vhost-user-rdma");
/// The daemon to start: `VUR_BIN` if set (to compare two builds), else
/// this build's.
pub fn daemon_bin() -> String {
    std::env::var("VUR_BIN").unwrap_or_else(|_| BIN.to_string())
}

/// Where guest memory starts (above 4 GiB, as QEMU puts high RAM).
pub const GPA: u64 = 0x1_0000_0000;

/// Whether the test runs as root (the ones that need it skip otherwise).
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// A daemon child, killed (by PID) and reaped on drop.
pub struct Daemon(pub Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Daemon {
    /// SIGTERM, then the exit code.
    pub fn stop(&mut self) -> Option<i32> {
        // SAFETY: kill(2) on the PID of the child we started.
        unsafe { libc::kill(self.0.id() as i32, libc::SIGTERM) };
        self.0.wait().ok().and_then(|s| s.code())
    }
}

/// Waits up to 10 s for `path` to appear.
pub fn wait_for(path: &Path) {
    let t = Instant::now();
    while !path.exists() {
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "{} never appeared",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Guest memory: a memfd of `len` bytes at [`GPA`], mapped here too.
pub struct Ram {
    pub fd: OwnedFd,
    base: *mut u8,
    pub len: u64,
}

// SAFETY: the mapping is plain shared memory owned by this value; moving
// it to another thread moves the only handle this process uses.
unsafe impl Send for Ram {}

impl Ram {
    pub fn new(len: u64) -> Ram {
        // SAFETY: memfd_create with a valid C string; checked.
        let fd = unsafe { libc::memfd_create(c"guest".as_ptr(), libc::MFD_CLOEXEC) };
        assert!(fd >= 0);
        // SAFETY: a fresh descriptor we own.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        // SAFETY: ftruncate on our memfd.
        assert_eq!(unsafe { libc::ftruncate(fd.as_raw_fd(), len as i64) }, 0);
        // SAFETY: a fresh shared mapping of the whole memfd, checked.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len as usize,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd.as_raw_fd(),
                0,
            )
        };
        assert_ne!(base, libc::MAP_FAILED);
        Ram {
            fd,
            base: base.cast(),
            len,
        }
    }

    fn ptr(&self, gpa: u64, len: usize) -> *mut u8 {
        let off = gpa.checked_sub(GPA).expect("below guest memory");
        assert!(off + len as u64 <= self.len, "past guest memory");
        // SAFETY: inside the mapping (checked above).
        unsafe { self.base.add(off as usize) }
    }

    pub fn write(&self, gpa: u64, data: &[u8]) {
        // SAFETY: the destination is inside our mapping and does not
        // overlap `data`. The daemon may touch the same bytes only where
        // the driver protocol lets it (rings it owns, buffers in flight).
        unsafe {
            std::ptr::copy_nonoverlapping(data.as_ptr(), self.ptr(gpa, data.len()), data.len())
        }
    }

    pub fn read_into(&self, gpa: u64, buf: &mut [u8]) {
        // SAFETY: the source is inside our mapping; see `write`.
        unsafe {
            std::ptr::copy_nonoverlapping(self.ptr(gpa, buf.len()), buf.as_mut_ptr(), buf.len())
        };
    }

    pub fn read(&self, gpa: u64, len: usize) -> Vec<u8> {
        let mut v = vec![0u8; len];
        self.read_into(gpa, &mut v);
        v
    }
}

impl Drop for Ram {
    fn drop(&mut self) {
        // SAFETY: unmapping exactly the mapping made in `new`.
        unsafe { libc::munmap(self.base.cast(), self.len as usize) };
    }
}

pub fn rd32(c: &mut Client, region: u32, off: u64) -> u32 {
    let mut b = [0u8; 4];
    c.region_read(region, off, &mut b).unwrap();
    u32::from_le_bytes(b)
}

pub fn wr32(c: &mut Client, region: u32, off: u64, v: u32) {
    c.region_write(region, off, &v.to_le_bytes()).unwrap();
}

/// The driver's bus over vfio-user, as QEMU gives it to a guest.
pub struct VfioBus {
    pub client: Client,
    pub ram: Ram,
    /// MSI-X vectors 0 (commands), 1 (async events), 2 (CQ notifications).
    pub irqs: Vec<EventFd>,
    /// Doorbells written.
    pub doorbells: u64,
}

impl VfioBus {
    /// Connects to `sock`, maps `ram` at [`GPA`] and hands over three
    /// MSI-X eventfds, as QEMU does before the guest probes.
    pub fn attach(sock: &Path, ram: Ram) -> VfioBus {
        let mut client = Client::new(sock).expect("vfio-user handshake");
        client.dma_map(0, GPA, ram.len, ram.fd.as_raw_fd()).unwrap();
        let irqs: Vec<EventFd> = (0..3)
            .map(|_| EventFd::new(libc::EFD_NONBLOCK).unwrap())
            .collect();
        let fds: Vec<i32> = irqs.iter().map(|e| e.as_raw_fd()).collect();
        client
            .set_irqs(
                VFIO_PCI_MSIX_IRQ_INDEX,
                VFIO_IRQ_SET_DATA_EVENTFD | VFIO_IRQ_SET_ACTION_TRIGGER,
                0,
                3,
                &fds,
            )
            .unwrap();
        VfioBus {
            client,
            ram,
            irqs,
            doorbells: 0,
        }
    }

    /// Waits up to `ms` for vector `v`; true if it fired (and clears it).
    pub fn wait_irq(&self, v: usize, ms: i32) -> bool {
        let mut p = libc::pollfd {
            fd: self.irqs[v].as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: poll(2) on one valid pollfd for the call's duration.
        let n = unsafe { libc::poll(&mut p, 1, ms) };
        n == 1 && self.irqs[v].read().is_ok()
    }
}

impl pvrdma_model::driver::Bus for VfioBus {
    fn reg_read(&mut self, offset: u64) -> u32 {
        rd32(&mut self.client, VFIO_PCI_BAR1_REGION_INDEX, offset)
    }

    fn reg_write(&mut self, offset: u64, value: u32) {
        wr32(&mut self.client, VFIO_PCI_BAR1_REGION_INDEX, offset, value)
    }

    fn uar_write(&mut self, offset: u64, value: u32) {
        self.doorbells += 1;
        wr32(&mut self.client, VFIO_PCI_BAR2_REGION_INDEX, offset, value)
    }

    fn mem_read(&mut self, gpa: u64, buf: &mut [u8]) {
        self.ram.read_into(gpa, buf)
    }

    fn mem_write(&mut self, gpa: u64, data: &[u8]) {
        self.ram.write(gpa, data)
    }
}

/// A named network namespace, deleted on drop.
pub struct Netns(pub String);

impl Netns {
    pub fn new(name: String) -> Netns {
        let _ = Command::new("ip")
            .args(["netns", "del", &name])
            .stderr(Stdio::null())
            .status();
        sh(&["ip", "netns", "add", &name]);
        sh(&["ip", "-n", &name, "link", "set", "lo", "up"]);
        Netns(name)
    }

    /// A command to run inside the namespace.
    pub fn command(&self, program: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.0, program]);
        c
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.0])
            .stderr(Stdio::null())
            .status();
    }
}

/// Runs a command that must succeed.
pub fn sh(args: &[&str]) {
    let out = Command::new(args[0]).args(&args[1..]).output().unwrap();
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A PVRDMA daemon on `--packet ifname` inside `ns`, its sockets in
/// `dir`; returns it and its vfio-user socket once that is listening.
pub fn pvrdma_daemon(ns: &Netns, ifname: &str, mac: &str, dir: &Path) -> (Daemon, PathBuf) {
    let sock = dir.join("rdma.sock");
    let child = ns
        .command(&daemon_bin())
        .args(["--packet", ifname, "--mac", mac, "--stream-socket"])
        .arg(dir.join("net.sock"))
        .arg("--pvrdma-socket")
        .arg(&sock)
        .arg("--control")
        .arg(dir.join("ctl.sock"))
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(File::create(dir.join("daemon.log")).unwrap())
        .spawn()
        .unwrap();
    let d = Daemon(child);
    wait_for(&sock);
    (d, sock)
}
