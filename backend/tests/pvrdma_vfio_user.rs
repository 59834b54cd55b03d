//! The PVRDMA function over vfio-user, driven the way QEMU and the
//! vmw_pvrdma driver drive it: rust-vmm's `vfio_user` client connects to
//! the daemon's `--pvrdma-socket`, reads config space, shares memfd guest
//! memory (DMA map) and MSI-X eventfds, then does the driver's probe
//! through BAR1 (VERSION, DSR, IMR, ACTIVATE) and commands through the
//! command slot, each answered with the command interrupt. Also: a
//! hostile guest's out-of-memory DSR and command slot, reconnect, reset.
//! Needs root (the daemon makes a TAP; everything runs in a private
//! network namespace).

use std::{
    fs::File,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use vfio_bindings::bindings::vfio::{
    VFIO_IRQ_SET_ACTION_TRIGGER, VFIO_IRQ_SET_DATA_EVENTFD, VFIO_PCI_BAR1_REGION_INDEX,
    VFIO_PCI_BAR2_REGION_INDEX, VFIO_PCI_CONFIG_REGION_INDEX, VFIO_PCI_MSIX_IRQ_INDEX,
};
use vfio_user::Client;
use vmm_sys_util::eventfd::EventFd;

const BIN: &str = env!("CARGO_BIN_EXE_vhost-user-rdma");
const MEM: u64 = 16 << 20;
const GPA: u64 = 0x1_0000_0000;

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

struct Daemon(Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Guest memory: a memfd mapped here too.
struct Ram {
    fd: OwnedFd,
    base: *mut u8,
}

impl Ram {
    fn new() -> Ram {
        // SAFETY: memfd_create with a valid C string; checked.
        let fd = unsafe { libc::memfd_create(c"guest".as_ptr(), libc::MFD_CLOEXEC) };
        assert!(fd >= 0);
        // SAFETY: a fresh descriptor we own.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        // SAFETY: ftruncate on our memfd.
        assert_eq!(unsafe { libc::ftruncate(fd.as_raw_fd(), MEM as i64) }, 0);
        // SAFETY: a fresh shared mapping of the whole memfd, checked.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                MEM as usize,
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
        }
    }

    fn ptr(&self, gpa: u64, len: usize) -> *mut u8 {
        let off = gpa - GPA;
        assert!(off + len as u64 <= MEM);
        // SAFETY: inside the mapping (checked above).
        unsafe { self.base.add(off as usize) }
    }

    fn write(&self, gpa: u64, data: &[u8]) {
        // SAFETY: the destination is inside our mapping and does not
        // overlap `data`.
        unsafe {
            std::ptr::copy_nonoverlapping(data.as_ptr(), self.ptr(gpa, data.len()), data.len())
        }
    }

    fn read(&self, gpa: u64, len: usize) -> Vec<u8> {
        let mut v = vec![0u8; len];
        // SAFETY: the source is inside our mapping; the daemon writes it
        // only while handling the request we are waiting on.
        unsafe { std::ptr::copy_nonoverlapping(self.ptr(gpa, len), v.as_mut_ptr(), len) };
        v
    }
}

impl Drop for Ram {
    fn drop(&mut self) {
        // SAFETY: unmapping exactly the mapping made in `new`.
        unsafe { libc::munmap(self.base.cast(), MEM as usize) };
    }
}

fn in_netns(f: impl FnOnce() + Send + 'static) {
    std::thread::spawn(|| {
        // SAFETY: unshare affects only this thread's namespaces.
        assert_eq!(unsafe { libc::unshare(libc::CLONE_NEWNET) }, 0);
        f();
    })
    .join()
    .unwrap();
}

fn start(dir: &std::path::Path) -> (Daemon, PathBuf) {
    let sock = dir.join("rdma.sock");
    let child = Command::new(BIN)
        .args(["--tap", "vupv0", "--mac", "52:54:00:aa:bb:01", "--socket"])
        .arg(dir.join("net.sock"))
        .arg("--pvrdma-socket")
        .arg(&sock)
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(File::create(dir.join("daemon.log")).unwrap())
        .spawn()
        .unwrap();
    let t = Instant::now();
    while !sock.exists() {
        assert!(t.elapsed() < Duration::from_secs(10), "no vfio-user socket");
        std::thread::sleep(Duration::from_millis(20));
    }
    (Daemon(child), sock)
}

fn rd32(c: &mut Client, region: u32, off: u64) -> u32 {
    let mut b = [0u8; 4];
    c.region_read(region, off, &mut b).unwrap();
    u32::from_le_bytes(b)
}

fn wr32(c: &mut Client, region: u32, off: u64, v: u32) {
    c.region_write(region, off, &v.to_le_bytes()).unwrap();
}

const DSR: u64 = GPA + 0x1000;
const CMD: u64 = GPA + 0x2000;
const RESP: u64 = GPA + 0x3000;

/// Posts a command; returns ERR, the response and whether vector 0 fired.
fn command(
    c: &mut Client,
    ram: &Ram,
    irq0: &EventFd,
    cmd: u32,
    body: &[(usize, &[u8])],
) -> (u32, Vec<u8>, bool) {
    let mut slot = [0u8; 184];
    slot[0..8].copy_from_slice(&0x1234u64.to_le_bytes());
    slot[8..12].copy_from_slice(&cmd.to_le_bytes());
    for (at, b) in body {
        slot[*at..*at + b.len()].copy_from_slice(b);
    }
    ram.write(CMD, &slot);
    wr32(c, VFIO_PCI_BAR1_REGION_INDEX, 0x10, 0);
    let err = rd32(c, VFIO_PCI_BAR1_REGION_INDEX, 0x14);
    let fired = irq0.read().is_ok();
    (err, ram.read(RESP, 176), fired)
}

#[test]
fn the_driver_probe_and_commands_over_vfio_user() {
    if !is_root() {
        eprintln!("skipped: needs root");
        return;
    }
    in_netns(|| {
        let dir = std::env::temp_dir().join(format!("vur-pvrdma-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let (mut d, sock) = start(&dir);
        let mut c = Client::new(&sock).expect("vfio-user handshake");

        // Config space: the PVRDMA IDs, and an MSI-X capability.
        let id = rd32(&mut c, VFIO_PCI_CONFIG_REGION_INDEX, 0);
        assert_eq!(id, 0x0820_15ad);
        let cap = rd32(&mut c, VFIO_PCI_CONFIG_REGION_INDEX, 0x34) & 0xff;
        assert_eq!(
            rd32(&mut c, VFIO_PCI_CONFIG_REGION_INDEX, u64::from(cap)) & 0xff,
            0x11
        );
        assert!(c.region(VFIO_PCI_BAR2_REGION_INDEX).unwrap().size >= 4096);

        // Guest memory and the three MSI-X vectors.
        let ram = Ram::new();
        c.dma_map(0, GPA, MEM, ram.fd.as_raw_fd()).unwrap();
        let irqs: Vec<EventFd> = (0..3)
            .map(|_| EventFd::new(libc::EFD_NONBLOCK).unwrap())
            .collect();
        let fds: Vec<i32> = irqs.iter().map(|e| e.as_raw_fd()).collect();
        c.set_irqs(
            VFIO_PCI_MSIX_IRQ_INDEX,
            VFIO_IRQ_SET_DATA_EVENTFD | VFIO_IRQ_SET_ACTION_TRIGGER,
            0,
            3,
            &fds,
        )
        .unwrap();

        // The probe: VERSION, DSR (caps appear on DSRHIGH), IMR, ACTIVATE.
        assert_eq!(rd32(&mut c, VFIO_PCI_BAR1_REGION_INDEX, 0), 20);
        let mut dsr = [0u8; 280];
        dsr[0..4].copy_from_slice(&20u32.to_le_bytes());
        dsr[16..24].copy_from_slice(&CMD.to_le_bytes());
        dsr[24..32].copy_from_slice(&RESP.to_le_bytes());
        dsr[64..72].copy_from_slice(&0xfe000u64.to_le_bytes());
        ram.write(DSR, &dsr);
        wr32(&mut c, VFIO_PCI_BAR1_REGION_INDEX, 0x04, DSR as u32);
        wr32(&mut c, VFIO_PCI_BAR1_REGION_INDEX, 0x08, (DSR >> 32) as u32);
        let caps = ram.read(DSR + 72, 208);
        assert_eq!(caps[200], 0, "mode RoCE");
        assert_eq!(caps[203], 2, "gid_types RoCE v2");
        wr32(&mut c, VFIO_PCI_BAR1_REGION_INDEX, 0x1c, 0);
        wr32(&mut c, VFIO_PCI_BAR1_REGION_INDEX, 0x0c, 0);
        assert_eq!(
            rd32(&mut c, VFIO_PCI_BAR1_REGION_INDEX, 0x14),
            0,
            "ACTIVATE ok"
        );

        // QUERY_PORT and CREATE_PD answer, with the command interrupt.
        let (err, r, fired) = command(&mut c, &ram, &irqs[0], 0, &[(16, &[1])]);
        assert_eq!(err, 0);
        assert!(fired, "vector 0 after a command");
        assert_eq!(
            u32::from_le_bytes(r[8..12].try_into().unwrap()),
            0x8000_0000
        );
        assert_eq!(
            u32::from_le_bytes(r[16..20].try_into().unwrap()),
            4,
            "port ACTIVE"
        );
        let (err, r, _) = command(&mut c, &ram, &irqs[0], 2, &[]);
        assert_eq!(err, 0);
        assert_ne!(
            u32::from_le_bytes(r[16..20].try_into().unwrap()),
            0,
            "PD handle"
        );
        // A command naming an object that does not exist: ERR, still
        // answered and interrupted.
        let (err, r, fired) = command(&mut c, &ram, &irqs[0], 8, &[(16, &77u32.to_le_bytes())]);
        assert_ne!(err, 0);
        assert!(fired);
        assert_ne!(r[12], 0, "hdr.err");

        // A hostile guest: the command slot moved outside guest memory
        // (a new DSR pointing there) gets ERR, not a crash.
        let mut bad = dsr;
        bad[16..24].copy_from_slice(&0xdead_0000_0000u64.to_le_bytes());
        ram.write(DSR, &bad);
        wr32(&mut c, VFIO_PCI_BAR1_REGION_INDEX, 0x04, DSR as u32);
        wr32(&mut c, VFIO_PCI_BAR1_REGION_INDEX, 0x08, (DSR >> 32) as u32);
        wr32(&mut c, VFIO_PCI_BAR1_REGION_INDEX, 0x10, 0);
        assert_ne!(rd32(&mut c, VFIO_PCI_BAR1_REGION_INDEX, 0x14), 0);
        // Doorbells for nothing, and reads and writes past the BARs.
        wr32(&mut c, VFIO_PCI_BAR2_REGION_INDEX, 0, 5 | 1 << 30);
        wr32(&mut c, VFIO_PCI_BAR2_REGION_INDEX, 4096 * 300 + 4, 1 << 31);
        assert_eq!(rd32(&mut c, VFIO_PCI_BAR1_REGION_INDEX, 0xf0), 0);

        // Reset, then a reconnect: the device serves the new client.
        c.reset().unwrap();
        drop(c);
        std::thread::sleep(Duration::from_millis(200));
        let mut c = Client::new(&sock).expect("reconnect");
        assert_eq!(rd32(&mut c, VFIO_PCI_CONFIG_REGION_INDEX, 0), 0x0820_15ad);
        assert_eq!(rd32(&mut c, VFIO_PCI_BAR1_REGION_INDEX, 0), 20);
        // Not active: a command fails until the next probe.
        wr32(&mut c, VFIO_PCI_BAR1_REGION_INDEX, 0x10, 0);
        assert_ne!(
            rd32(&mut c, VFIO_PCI_BAR1_REGION_INDEX, 0x14),
            0,
            "not active after reset"
        );
        drop(c);
        // SIGTERM: a clean exit that removes the socket.
        // SAFETY: kill(2) on the PID of the child we started.
        unsafe { libc::kill(d.0.id() as i32, libc::SIGTERM) };
        assert_eq!(d.0.wait().unwrap().code(), Some(0));
        assert!(!sock.exists(), "vfio-user socket removed");
        let _ = std::fs::remove_dir_all(&dir);
    });
}
