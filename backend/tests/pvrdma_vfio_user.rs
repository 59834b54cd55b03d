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
    start_on(dir, "vupv0")
}

fn start_on(dir: &std::path::Path, tap: &str) -> (Daemon, PathBuf) {
    let sock = dir.join("rdma.sock");
    let child = Command::new(BIN)
        .args([
            "--tap",
            tap,
            "--mac",
            "52:54:00:aa:bb:01",
            "--stream-socket",
        ])
        .arg(dir.join("net.sock"))
        .arg("--pvrdma-socket")
        .arg(&sock)
        .arg("--control")
        .arg(dir.join("ctl.sock"))
        .arg("--pcap")
        .arg(dir.join("cap.pcap"))
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
        let dir = std::env::temp_dir().join(format!("vur-pvrdma-probe-{}", std::process::id()));
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

/// The driver's probe over vfio-user: DMA map, MSI-X eventfds, DSR,
/// ACTIVATE. Returns the three eventfds.
fn probe(c: &mut Client, ram: &Ram) -> Vec<EventFd> {
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
    let mut dsr = [0u8; 280];
    dsr[0..4].copy_from_slice(&20u32.to_le_bytes());
    dsr[16..24].copy_from_slice(&CMD.to_le_bytes());
    dsr[24..32].copy_from_slice(&RESP.to_le_bytes());
    dsr[64..72].copy_from_slice(&0xfe000u64.to_le_bytes());
    ram.write(DSR, &dsr);
    wr32(c, VFIO_PCI_BAR1_REGION_INDEX, 0x04, DSR as u32);
    wr32(c, VFIO_PCI_BAR1_REGION_INDEX, 0x08, (DSR >> 32) as u32);
    wr32(c, VFIO_PCI_BAR1_REGION_INDEX, 0x1c, 0);
    wr32(c, VFIO_PCI_BAR1_REGION_INDEX, 0x0c, 0);
    assert_eq!(rd32(c, VFIO_PCI_BAR1_REGION_INDEX, 0x14), 0, "ACTIVATE ok");
    irqs
}

/// Guest pages from 1 MiB up, and directories over them.
struct Pages(u64);

impl Pages {
    fn page(&mut self) -> u64 {
        self.0 += 4096;
        self.0
    }

    /// `n` pages with a gap after each, and a directory: (dir, pages).
    fn dir(&mut self, ram: &Ram, n: usize) -> (u64, Vec<u64>) {
        let dir = self.page();
        let table = self.page();
        ram.write(dir, &table.to_le_bytes());
        let pages: Vec<u64> = (0..n)
            .map(|_| {
                let p = self.page();
                self.page();
                p
            })
            .collect();
        for (i, p) in pages.iter().enumerate() {
            ram.write(table + 8 * i as u64, &p.to_le_bytes());
        }
        (dir, pages)
    }
}

fn ok(c: &mut Client, ram: &Ram, irq0: &EventFd, cmd: u32, body: &[(usize, &[u8])]) -> Vec<u8> {
    let (err, r, _) = command(c, ram, irq0, cmd, body);
    assert_eq!(err, 0, "command {cmd}: hdr.err {}", r[12]);
    r
}

/// Writes a signaled RDMA WRITE WQE (one SGE `sge` = (addr, len, lkey),
/// to `remote` = (addr, rkey)) into the send ring at `qp_pages` and
/// publishes the producer index; the caller rings the doorbell.
fn post_write(
    ram: &Ram,
    qp_pages: &[u64],
    prod: &mut u32,
    wr_id: u64,
    remote: (u64, u32),
    sge: (u64, u32, u32),
) {
    let slot = u64::from(*prod % 16);
    let mut w = [0u8; 80];
    w[..8].copy_from_slice(&wr_id.to_le_bytes());
    w[8..12].copy_from_slice(&1u32.to_le_bytes());
    w[16..20].copy_from_slice(&0u32.to_le_bytes()); // RDMA_WRITE
    w[20..24].copy_from_slice(&2u32.to_le_bytes());
    w[32..40].copy_from_slice(&remote.0.to_le_bytes());
    w[40..44].copy_from_slice(&remote.1.to_le_bytes());
    let mut g = [0u8; 16];
    g[..8].copy_from_slice(&sge.0.to_le_bytes());
    g[8..12].copy_from_slice(&sge.1.to_le_bytes());
    g[12..16].copy_from_slice(&sge.2.to_le_bytes());
    ram.write(qp_pages[1] + 128 * slot, &w);
    ram.write(qp_pages[1] + 128 * slot + 80, &g);
    *prod = (*prod + 1) % 32;
    ram.write(qp_pages[0], &prod.to_le_bytes());
}

/// Hands every RoCEv2 packet waiting on `link` to the peer engine `e`.
fn deliver(
    link: &mut netdev::eth::EthLink,
    e: &mut transport::engine::Engine<transport::memory::VecMemory>,
    buf: &mut [u8],
    now: u64,
) {
    while let Ok(Some(r)) = link.recv(buf, now) {
        let meta = transport::engine::RxMeta {
            ip_header: &buf[r.ip_start..r.ip_start + r.ip_len],
            ecn: r.ecn,
        };
        let _ = e.handle_packet(now, &meta, &buf[r.ib_start..r.ib_start + r.ib_len]);
    }
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
}

#[test]
fn a_guest_qp_talks_rc_to_an_engine_across_the_tap() {
    use netdev::eth::EthLink;
    use transport::{
        device::{DeviceAttrs, Gid},
        engine::{Engine, QpInit, RxMeta},
        memory::VecMemory,
        sim::{Conn, connect},
        verbs::{Access, QpCaps, QpType, RecvWr, SendOp, SendWr, Sge as ESge, WcStatus},
        wire::Mtu,
    };

    if !is_root() {
        eprintln!("skipped: needs root");
        return;
    }
    in_netns(|| {
        let dir = std::env::temp_dir().join(format!("vur-pvrdma-net-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let _ = std::fs::write("/proc/sys/net/ipv6/conf/default/disable_ipv6", "1");
        let (mut d, sock) = start_on(&dir, "vupw0");
        let mut c = Client::new(&sock).expect("vfio-user handshake");
        let ram = Ram::new();
        let irqs = probe(&mut c, &ram);
        let irq0 = &irqs[0];
        let mut pg = Pages(GPA + 0x10_0000);

        // The peer: our engine on the TAP's host side (AF_PACKET), 10.66.0.2.
        let peer_ip: std::net::IpAddr = "10.66.0.2".parse().unwrap();
        let guest_ip: std::net::IpAddr = "10.66.0.1".parse().unwrap();
        let mut link = EthLink::packet("vupw0", vec![peer_ip]).unwrap();
        let mut e = Engine::new(DeviceAttrs::default(), VecMemory::new(1 << 20));
        e.gids_mut().set(0, Some(Gid::from_ip(peer_ip)));
        let epd = e.alloc_pd().unwrap();
        let ecq = e.create_cq(64).unwrap();
        let ekey = e
            .reg_mr(
                epd,
                0,
                1 << 20,
                0,
                Access::LOCAL_WRITE.with(Access::REMOTE_WRITE),
            )
            .unwrap();
        let eqp = e
            .create_qp(&QpInit {
                qp_type: QpType::Rc,
                pd: epd,
                send_cq: ecq,
                recv_cq: ecq,
                caps: QpCaps {
                    max_send_wr: 16,
                    max_recv_wr: 16,
                    max_send_sge: 1,
                    max_recv_sge: 1,
                    max_inline_data: 0,
                },
                sq_sig_all: true,
                srq: None,
            })
            .unwrap();

        // The guest: GID 0 = ::ffff:10.66.0.1, PD, CQ, MR, RC QP.
        let mut gid = [0u8; 16];
        gid[10] = 0xff;
        gid[11] = 0xff;
        gid[12..].copy_from_slice(&[10, 66, 0, 1]);
        ok(
            &mut c,
            &ram,
            irq0,
            15,
            &[(24, &0u32.to_le_bytes()), (28, &gid), (44, &[2])],
        );
        let pd = u32_at(&ok(&mut c, &ram, irq0, 2, &[]), 16);
        let (cq_dir, cq_pages) = pg.dir(&ram, 2);
        let r = ok(
            &mut c,
            &ram,
            irq0,
            6,
            &[
                (16, &cq_dir.to_le_bytes()),
                (28, &64u32.to_le_bytes()),
                (32, &2u32.to_le_bytes()),
            ],
        );
        let cq = u32_at(&r, 16);
        let (mr_dir, mr_pages) = pg.dir(&ram, 2);
        let va = 0x7f00_0000_0000u64;
        let r = ok(
            &mut c,
            &ram,
            irq0,
            4,
            &[
                (16, &va.to_le_bytes()),
                (24, &8192u64.to_le_bytes()),
                (32, &mr_dir.to_le_bytes()),
                (40, &pd.to_le_bytes()),
                (44, &1u32.to_le_bytes()),
                (52, &2u32.to_le_bytes()),
            ],
        );
        let lkey = u32_at(&r, 20);
        let (qp_dir, qp_pages) = pg.dir(&ram, 3);
        let r = ok(
            &mut c,
            &ram,
            irq0,
            9,
            &[
                (16, &qp_dir.to_le_bytes()),
                (24, &pd.to_le_bytes()),
                (28, &cq.to_le_bytes()),
                (32, &cq.to_le_bytes()),
                (40, &16u32.to_le_bytes()),
                (44, &16u32.to_le_bytes()),
                (48, &1u32.to_le_bytes()),
                (52, &1u32.to_le_bytes()),
                (68, &3u16.to_le_bytes()),
                (70, &1u16.to_le_bytes()),
                (75, &[2]),
            ],
        );
        let (gqpn, gqp) = (u32_at(&r, 16), u32_at(&r, 20));
        // INIT, RTR (to the peer), RTS.
        let mut attr = [0u8; 160];
        let modify = |c: &mut Client, attr: &[u8; 160], mask: u32| {
            ok(
                c,
                &ram,
                irq0,
                10,
                &[
                    (16, &gqp.to_le_bytes()),
                    (20, &mask.to_le_bytes()),
                    (24, attr),
                ],
            );
        };
        attr[0..4].copy_from_slice(&1u32.to_le_bytes());
        attr[32..36].copy_from_slice(&0xfu32.to_le_bytes());
        attr[45] = 1;
        modify(&mut c, &attr, 1 | 1 << 3 | 1 << 4 | 1 << 5);
        attr[0..4].copy_from_slice(&2u32.to_le_bytes());
        attr[8..12].copy_from_slice(&3u32.to_le_bytes());
        attr[20..24].copy_from_slice(&500u32.to_le_bytes());
        attr[28..32].copy_from_slice(&eqp.to_le_bytes());
        attr[43] = 4;
        attr[44] = 1;
        attr[80 + 10] = 0xff;
        attr[80 + 11] = 0xff;
        attr[80 + 12..80 + 16].copy_from_slice(&[10, 66, 0, 2]);
        attr[80 + 21] = 64;
        attr[80 + 31] = 1;
        modify(
            &mut c,
            &attr,
            1 | 1 << 7 | 1 << 8 | 1 << 12 | 1 << 15 | 1 << 17 | 1 << 20,
        );
        attr[0..4].copy_from_slice(&3u32.to_le_bytes());
        attr[24..28].copy_from_slice(&700u32.to_le_bytes());
        attr[42] = 4;
        attr[46] = 14;
        attr[47] = 7;
        attr[48] = 7;
        modify(
            &mut c,
            &attr,
            1 | 1 << 9 | 1 << 10 | 1 << 11 | 1 << 13 | 1 << 16,
        );
        connect(
            &mut e,
            eqp,
            Conn {
                dest: gqpn,
                dgid: Gid::from_ip(guest_ip),
                mtu: Mtu::Mtu1024,
                sq_psn: 500,
                rq_psn: 700,
                timeout: 14,
                retry: 7,
                rnr_retry: 7,
            },
        )
        .unwrap();

        // Guest: a receive, then a SEND of 5000 bytes from its MR.
        let data: Vec<u8> = (0..5000u32).map(|i| (i * 17 + 1) as u8).collect();
        ram.write(mr_pages[0], &data[..4096]);
        ram.write(mr_pages[1], &data[4096..]);
        let sge = |addr: u64, len: u32| {
            let mut b = [0u8; 16];
            b[..8].copy_from_slice(&addr.to_le_bytes());
            b[8..12].copy_from_slice(&len.to_le_bytes());
            b[12..16].copy_from_slice(&lkey.to_le_bytes());
            b
        };
        let mut rq = [0u8; 16];
        rq[..8].copy_from_slice(&77u64.to_le_bytes());
        rq[8..12].copy_from_slice(&1u32.to_le_bytes());
        ram.write(qp_pages[2], &rq);
        ram.write(qp_pages[2] + 16, &sge(va + 6000, 2000));
        ram.write(qp_pages[0] + 8, &1u32.to_le_bytes());
        wr32(&mut c, VFIO_PCI_BAR2_REGION_INDEX, 0, gqp | 1 << 31);
        let mut wqe = [0u8; 80];
        wqe[..8].copy_from_slice(&55u64.to_le_bytes());
        wqe[8..12].copy_from_slice(&1u32.to_le_bytes());
        wqe[16..20].copy_from_slice(&2u32.to_le_bytes()); // SEND
        wqe[20..24].copy_from_slice(&2u32.to_le_bytes()); // SIGNALED
        ram.write(qp_pages[1], &wqe);
        ram.write(qp_pages[1] + 80, &sge(va, 5000));
        // The peer's receive first.
        let rsge = [ESge {
            addr: 0,
            length: 8192,
            lkey: ekey,
        }];
        e.post_recv(
            eqp,
            &RecvWr {
                wr_id: 9,
                sges: &rsge,
            },
        )
        .unwrap();
        ram.write(qp_pages[0], &1u32.to_le_bytes());
        wr32(&mut c, VFIO_PCI_BAR2_REGION_INDEX, 0, gqp | 1 << 30);

        // Pump the peer until it has the message, then answer with 300
        // bytes; the guest's ring gets both completions.
        let clock = Instant::now();
        let mut buf = vec![0u8; 16384];
        let mut wcs = Vec::new();
        let mut answered = false;
        let cq_prod =
            |ram: &Ram| u32::from_le_bytes(ram.read(cq_pages[0] + 8, 4).try_into().unwrap());
        while clock.elapsed() < Duration::from_secs(10) {
            let now = clock.elapsed().as_nanos() as u64;
            deliver(&mut link, &mut e, &mut buf, now);
            if e.poll_timeout().is_some_and(|t| t <= now) {
                e.handle_timeout(now);
            }
            if link.poll_timeout().is_some_and(|t| t <= now) {
                let _ = link.handle_timeout(now);
            }
            while let Some(t) = e.poll_transmit(now, &mut buf) {
                let _ = link.send(&t, &mut buf[..t.len], now);
            }
            let mut out = [transport::verbs::Wc {
                wr_id: 0,
                status: WcStatus::Success,
                opcode: transport::verbs::WcOpcode::Send,
                byte_len: 0,
                qp_num: 0,
                src_qp: 0,
                imm_data: None,
                invalidated_rkey: None,
                ip_version: None,
            }];
            if e.poll_cq(ecq, &mut out).unwrap() == 1 {
                wcs.push(out[0]);
            }
            if !answered && wcs.iter().any(|w| w.wr_id == 9) {
                answered = true;
                e.memory_mut().as_mut_slice()[8192..8492].copy_from_slice(&[0xab; 300]);
                let s = [ESge {
                    addr: 8192,
                    length: 300,
                    lkey: ekey,
                }];
                e.post_send(eqp, &SendWr::new(10, SendOp::Send, &s))
                    .unwrap();
            }
            if cq_prod(&ram) >= 2 && wcs.len() >= 2 {
                break;
            }
            std::thread::sleep(Duration::from_micros(200));
        }
        let w9 = wcs
            .iter()
            .find(|w| w.wr_id == 9)
            .expect("the peer received the guest's SEND");
        assert_eq!((w9.status, w9.byte_len), (WcStatus::Success, 5000));
        assert_eq!(&e.memory().as_slice()[..5000], &data[..]);
        // The guest's CQ ring: its SEND and its receive (300 bytes).
        assert_eq!(cq_prod(&ram), 2, "two CQEs in the guest's ring");
        let cqes: Vec<Vec<u8>> = (0..2).map(|i| ram.read(cq_pages[1] + 64 * i, 64)).collect();
        let find = |id: u64| {
            cqes.iter()
                .find(|c| u64::from_le_bytes(c[..8].try_into().unwrap()) == id)
                .unwrap()
        };
        let (send, recv) = (find(55), find(77));
        assert_eq!(u32_at(send, 20), 0, "SEND status");
        assert_eq!(u32_at(recv, 20), 0, "RECV status");
        assert_eq!(u32_at(recv, 16), 128, "RECV opcode");
        assert_eq!(u32_at(recv, 24), 300);
        assert_eq!(
            u64::from_le_bytes(recv[8..16].try_into().unwrap()),
            u64::from(gqp)
        );
        assert_eq!(ram.read(mr_pages[1] + (6000 - 4096), 300), vec![0xab; 300]);

        // Doorbell to wire: 64-byte unsignaled SENDs, each timed from the
        // doorbell write until its packet reaches the peer's socket, next
        // to a plain BAR1 read's vfio-user round trip.
        let mut lat = Vec::new();
        let mut prod = 1u32;
        for i in 0..200u64 {
            e.post_recv(
                eqp,
                &RecvWr {
                    wr_id: 1000 + i,
                    sges: &rsge,
                },
            )
            .unwrap();
            let slot = u64::from(prod % 16);
            let mut w = [0u8; 80];
            w[..8].copy_from_slice(&(2000 + i).to_le_bytes());
            w[8..12].copy_from_slice(&1u32.to_le_bytes());
            w[16..20].copy_from_slice(&2u32.to_le_bytes());
            ram.write(qp_pages[1] + 128 * slot, &w);
            ram.write(qp_pages[1] + 128 * slot + 80, &sge(va, 64));
            prod = (prod + 1) % 32;
            ram.write(qp_pages[0], &prod.to_le_bytes());
            let t0 = Instant::now();
            wr32(&mut c, VFIO_PCI_BAR2_REGION_INDEX, 0, gqp | 1 << 30);
            let got = loop {
                let now = clock.elapsed().as_nanos() as u64;
                if let Ok(Some(r)) = link.recv(&mut buf, now) {
                    break Some(r);
                }
                if t0.elapsed() > Duration::from_secs(2) {
                    break None;
                }
            };
            let r = got.expect("the SEND reached the wire");
            lat.push(t0.elapsed().as_secs_f64() * 1e6);
            // Deliver it and let the peer ACK and complete.
            let now = clock.elapsed().as_nanos() as u64;
            let meta = RxMeta {
                ip_header: &buf[r.ip_start..r.ip_start + r.ip_len],
                ecn: r.ecn,
            };
            let _ = e.handle_packet(now, &meta, &buf[r.ib_start..r.ib_start + r.ib_len]);
            while let Some(t) = e.poll_transmit(now, &mut buf) {
                let _ = link.send(&t, &mut buf[..t.len], now);
            }
            let mut out = [transport::verbs::Wc {
                wr_id: 0,
                status: WcStatus::Success,
                opcode: transport::verbs::WcOpcode::Send,
                byte_len: 0,
                qp_num: 0,
                src_qp: 0,
                imm_data: None,
                invalidated_rkey: None,
                ip_version: None,
            }];
            while e.poll_cq(ecq, &mut out).unwrap() == 1 {
                assert_eq!(out[0].status, WcStatus::Success);
            }
        }
        let mut bar = Vec::new();
        for _ in 0..200 {
            let t0 = Instant::now();
            let _ = rd32(&mut c, VFIO_PCI_BAR1_REGION_INDEX, 0);
            bar.push(t0.elapsed().as_secs_f64() * 1e6);
        }
        lat.sort_by(f64::total_cmp);
        bar.sort_by(f64::total_cmp);
        println!(
            "{{\"bench\":\"pvrdma doorbell to wire (64 B SEND)\",\"median_us\":{:.1},\"p99_us\":{:.1},\"baseline_bar1_read_roundtrip_median_us\":{:.1}}}",
            lat[100], lat[197], bar[100]
        );

        // RC WRITE bandwidth, 64 KiB messages from a 16-page guest MR into
        // the peer's memory, 8 in flight, every one signaled; the test
        // consumes the guest's CQ ring as a driver would.
        let (big_dir, big_pages) = pg.dir(&ram, 16);
        let bva = 0x7e00_0000_0000u64;
        let r = ok(
            &mut c,
            &ram,
            irq0,
            4,
            &[
                (16, &bva.to_le_bytes()),
                (24, &65536u64.to_le_bytes()),
                (32, &big_dir.to_le_bytes()),
                (40, &pd.to_le_bytes()),
                (44, &1u32.to_le_bytes()),
                (52, &16u32.to_le_bytes()),
            ],
        );
        let bkey = u32_at(&r, 20);
        for (i, p) in big_pages.iter().enumerate() {
            ram.write(*p, &vec![i as u8; 4096]);
        }
        // Consume what the ring holds from before.
        let mut cq_cons = u32::from_le_bytes(ram.read(cq_pages[0] + 8, 4).try_into().unwrap());
        ram.write(cq_pages[0] + 12, &cq_cons.to_le_bytes());
        let total = 400u32;
        let (mut posted, mut done) = (0u32, 0u32);
        let t0 = Instant::now();
        while done < total && t0.elapsed() < Duration::from_secs(30) {
            while posted < total && posted - done < 8 {
                post_write(
                    &ram,
                    &qp_pages,
                    &mut prod,
                    5000 + u64::from(posted),
                    (0, ekey),
                    (bva, 65536, bkey),
                );
                posted += 1;
                wr32(&mut c, VFIO_PCI_BAR2_REGION_INDEX, 0, gqp | 1 << 30);
            }
            let now = clock.elapsed().as_nanos() as u64;
            deliver(&mut link, &mut e, &mut buf, now);
            if e.poll_timeout().is_some_and(|t| t <= now) {
                e.handle_timeout(now);
            }
            while let Some(t) = e.poll_transmit(now, &mut buf) {
                let _ = link.send(&t, &mut buf[..t.len], now);
            }
            let p = u32::from_le_bytes(ram.read(cq_pages[0] + 8, 4).try_into().unwrap());
            while cq_cons != p {
                let cqe = ram.read(cq_pages[1] + 64 * u64::from(cq_cons % 64), 64);
                assert_eq!(u32_at(&cqe, 20), 0, "WRITE status");
                done += 1;
                cq_cons = (cq_cons + 1) % 128;
            }
            ram.write(cq_pages[0] + 12, &cq_cons.to_le_bytes());
        }
        let secs = t0.elapsed().as_secs_f64();
        assert_eq!(done, total, "every WRITE completed");
        assert_eq!(e.memory().as_slice()[4096 * 15], 15, "the last page landed");
        // The engine alone, in the same run: two engines in memory.
        let perf = Command::new(BIN)
            .args(["perf", "--link", "memory", "--test", "write"])
            .args([
                "--min-size",
                "65536",
                "--max-size",
                "65536",
                "--seconds",
                "0.3",
            ])
            .output()
            .unwrap();
        let engine_only = String::from_utf8_lossy(&perf.stdout)
            .lines()
            .find(|l| l.contains("\"gbit_per_s\""))
            .and_then(|l| l.split("\"gbit_per_s\":").nth(1))
            .and_then(|v| v.split([',', '}']).next())
            .unwrap_or("null")
            .to_string();
        println!(
            "{{\"bench\":\"pvrdma RC WRITE 64 KiB, guest over vfio-user to an engine across the TAP\",\"gbit_per_s\":{:.3},\"messages\":{total},\"engine_only_memory_link_gbit_per_s\":{engine_only}}}",
            f64::from(total) * 65536.0 * 8.0 / secs / 1e9
        );

        // Placed faults, each with an exact count to find in `stats`:
        // the peer's ACK of one 4 KiB WRITE (4 packets) is lost, so the
        // daemon's engine times out (67 ms) and sends the 4 packets again,
        // which the peer counts as duplicates; then a frame for the guest's
        // GID arrives with one payload bit flipped (an ICRC error).
        let before = e.counters();
        post_write(
            &ram,
            &qp_pages,
            &mut prod,
            9999,
            (0, ekey),
            (bva, 4096, bkey),
        );
        wr32(&mut c, VFIO_PCI_BAR2_REGION_INDEX, 0, gqp | 1 << 30);
        let (mut ack_dropped, mut done_fault) = (false, false);
        let mut last_frame = Vec::new();
        let t0 = Instant::now();
        while !done_fault && t0.elapsed() < Duration::from_secs(5) {
            let now = clock.elapsed().as_nanos() as u64;
            while let Ok(Some(r)) = link.recv(&mut buf, now) {
                last_frame = buf[..r.ib_start + r.ib_len + 4].to_vec();
                let meta = RxMeta {
                    ip_header: &buf[r.ip_start..r.ip_start + r.ip_len],
                    ecn: r.ecn,
                };
                let _ = e.handle_packet(now, &meta, &buf[r.ib_start..r.ib_start + r.ib_len]);
            }
            if e.poll_timeout().is_some_and(|t| t <= now) {
                e.handle_timeout(now);
            }
            while let Some(t) = e.poll_transmit(now, &mut buf) {
                if !ack_dropped && buf[0] == 0x11 {
                    ack_dropped = true;
                    continue;
                }
                let _ = link.send(&t, &mut buf[..t.len], now);
            }
            let p = u32::from_le_bytes(ram.read(cq_pages[0] + 8, 4).try_into().unwrap());
            while cq_cons != p {
                let cqe = ram.read(cq_pages[1] + 64 * u64::from(cq_cons % 64), 64);
                assert_eq!(u32_at(&cqe, 20), 0, "WRITE status after the lost ACK");
                done_fault = true;
                cq_cons = (cq_cons + 1) % 128;
            }
            ram.write(cq_pages[0] + 12, &cq_cons.to_le_bytes());
        }
        assert!(
            ack_dropped && done_fault,
            "the WRITE completed after its lost ACK"
        );
        assert_eq!(e.counters().duplicate_request - before.duplicate_request, 4);
        // The corrupt frame: the daemon's last frame sent back to it
        // (Ethernet and IPv4 addresses swapped; the IPv4 checksum holds)
        // with a payload bit flipped, written straight onto the TAP.
        let f = &mut last_frame;
        assert!(f.len() > 60, "a frame from the daemon to reflect");
        let (dst, src) = (f[0..6].to_vec(), f[6..12].to_vec());
        f[0..6].copy_from_slice(&src);
        f[6..12].copy_from_slice(&dst);
        let (sip, dip) = (f[26..30].to_vec(), f[30..34].to_vec());
        f[26..30].copy_from_slice(&dip);
        f[30..34].copy_from_slice(&sip);
        let n = f.len();
        f[n - 5] ^= 0x01;
        netdev::port::FramePort::packet("vupw0")
            .unwrap()
            .write(&[f])
            .unwrap();
        std::thread::sleep(Duration::from_millis(100));

        // `stats`: the daemon's control socket (0600) reports what the
        // guest created and what went over the wire, and the peer engine
        // here saw the same packets.
        let ctl = dir.join("ctl.sock");
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&ctl).unwrap().permissions().mode() & 0o777,
            0o600
        );
        // Let the last ACKs reach the daemon.
        let settle = Instant::now();
        while settle.elapsed() < Duration::from_millis(200) {
            let now = clock.elapsed().as_nanos() as u64;
            deliver(&mut link, &mut e, &mut buf, now);
            while let Some(t) = e.poll_transmit(now, &mut buf) {
                let _ = link.send(&t, &mut buf[..t.len], now);
            }
        }
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
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("stats JSON");
        let r = &v["rdma"];
        let peer = e.counters();
        assert_eq!(r["counters"]["sent_pkts"], peer.rcvd_pkts, "{v}");
        // Everything the peer sent arrived, but the one ACK it lost.
        assert_eq!(r["counters"]["rcvd_pkts"], peer.sent_pkts - 1, "{v}");
        assert_eq!(r["counters"]["completer_retry_err"], 1, "{v}");
        assert_eq!(r["link"]["icrc_err"], 1, "{v}");
        assert_eq!(r["link"]["send_err"], 0, "{v}");
        assert_eq!(r["link"]["received"], peer.sent_pkts - 1, "{v}");
        assert_eq!(r["link"]["sent"], r["counters"]["sent_pkts"], "{v}");
        assert_eq!(r["objects"]["qps"], 1, "{v}");
        let q = &r["qps"][0];
        assert_eq!(
            (&q["handle"], &q["type"], &q["state"], &q["dest_qp"]),
            (&gqp.into(), &"RC".into(), &"RTS".into(), &eqp.into()),
            "{v}"
        );
        // 400 WRITEs of 64 KiB at MTU 1024: 64 packets each, FIRST (0x06)
        // with its RETH, 62 MIDDLE (0x07), LAST (0x08); and the 4 KiB
        // WRITE twice: FIRST, 2 MIDDLE, LAST.
        let tx = &r["bytes_per_opcode"]["tx"];
        assert_eq!(tx["0x07"], (400 * 62 + 2 * 2) * (12 + 1024 + 4), "{v}");
        assert_eq!(tx["0x08"], (400 + 2) * (12 + 1024 + 4), "{v}");
        assert_eq!(v["port"]["bad_streams"], 0);
        let table = Command::new(BIN).arg("stats").arg(&ctl).output().unwrap();
        let t = String::from_utf8_lossy(&table.stdout);
        assert!(t.contains("qps: 1\n") && t.contains(" RC   RTS "), "{t}");
        let bad = backend::daemon::control::ask(&ctl, "GIVE ME EVERYTHING").unwrap();
        let bad: serde_json::Value = serde_json::from_str(&bad).unwrap();
        assert_eq!(
            bad["error"],
            "unknown request \"GIVE ME EVERYTHING\": this socket understands only \"stats\""
        );
        // The --pcap capture holds every frame the function sent and every
        // one that came for its GIDs, the corrupt one included, and
        // `decode` finds exactly that one bad.
        let frames = r["link"]["sent"].as_u64().unwrap()
            + r["link"]["received"].as_u64().unwrap()
            + r["link"]["icrc_err"].as_u64().unwrap();
        let dec = Command::new(BIN)
            .arg("decode")
            .arg(dir.join("cap.pcap"))
            .output()
            .unwrap();
        let dec_out = String::from_utf8_lossy(&dec.stdout);
        let summary = dec_out
            .lines()
            .rev()
            .find(|l| l.contains("frames:"))
            .unwrap_or("");
        assert!(
            summary.contains(&format!(
                "{frames} frames: {frames} RoCEv2 ({} ok, 1 bad), 0 other, 0 malformed",
                frames - 1
            )),
            "{summary}"
        );
        assert_eq!(
            dec.status.code(),
            Some(1),
            "decode exits 1 for the bad frame"
        );
        let missing = Command::new(BIN)
            .arg("stats")
            .arg(dir.join("nothing.sock"))
            .output()
            .unwrap();
        assert_eq!(missing.status.code(), Some(1));
        assert!(
            String::from_utf8_lossy(&missing.stderr)
                .contains("cannot read the daemon's control socket"),
        );
        drop(c);
        // SAFETY: kill(2) on the PID of the child we started.
        unsafe { libc::kill(d.0.id() as i32, libc::SIGTERM) };
        assert_eq!(d.0.wait().unwrap().code(), Some(0));
        assert!(!ctl.exists(), "the control socket is removed on SIGTERM");
        let _ = std::fs::remove_dir_all(&dir);
    });
}
