//! The PVRDMA function over vfio-user, driven the way QEMU and the
//! vmw_pvrdma driver drive it: rust-vmm's `vfio_user` client connects to
//! the daemon's `--pvrdma-socket`, reads config space, shares memfd guest
//! memory (DMA map) and MSI-X eventfds, then does the driver's probe
//! through BAR1 (VERSION, DSR, IMR, ACTIVATE) and commands through the
//! command slot, each answered with the command interrupt. Also: a
//! hostile guest's out-of-memory DSR and command slot, reconnect, reset.
//! Needs root (the daemon makes a TAP; everything runs in a private
//! network namespace).

mod common;

use std::{
    path::PathBuf,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use common::{BIN, Daemon, GPA, Ram, VfioBus, is_root, rd32, wr32};
use pvrdma_model::{
    abi::{Cqe, wc_opcode, wr_opcode},
    cmd::code,
    driver::{Bus, Driver, Mr, Qp, QpSpec, gid_v4, send_wqe, sge, with_rdma},
    regs::reg,
};
use vfio_bindings::bindings::vfio::{
    VFIO_PCI_BAR1_REGION_INDEX, VFIO_PCI_BAR2_REGION_INDEX, VFIO_PCI_CONFIG_REGION_INDEX,
};
use vfio_user::Client;

const MEM: u64 = 16 << 20;

fn in_netns(f: impl FnOnce() + Send + 'static) {
    std::thread::spawn(|| {
        // SAFETY: unshare affects only this thread's namespaces.
        assert_eq!(unsafe { libc::unshare(libc::CLONE_NEWNET) }, 0);
        f();
    })
    .join()
    .unwrap();
}

/// The daemon on TAP `tap` (it makes it) with its sockets in `dir`.
fn start_on(dir: &std::path::Path, tap: &str) -> (Daemon, PathBuf) {
    let sock = dir.join("rdma.sock");
    let child = Command::new(common::daemon_bin())
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
        .stderr(std::fs::File::create(dir.join("daemon.log")).unwrap())
        .spawn()
        .unwrap();
    let d = Daemon(child);
    common::wait_for(&sock);
    (d, sock)
}

/// A guest: its memory attached over vfio-user and the driver probed.
fn guest(sock: &std::path::Path) -> Driver<VfioBus> {
    let mut drv = Driver::new(VfioBus::attach(sock, Ram::new(MEM)), GPA, MEM);
    drv.probe(0xfe000).expect("ACTIVATE ok");
    drv
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
        let (mut d, sock) = start_on(&dir, "vupv0");
        let mut drv = Driver::new(VfioBus::attach(&sock, Ram::new(MEM)), GPA, MEM);

        // Config space: the PVRDMA IDs, and an MSI-X capability.
        let c = &mut drv.bus.client;
        let id = rd32(c, VFIO_PCI_CONFIG_REGION_INDEX, 0);
        assert_eq!(id, 0x0820_15ad);
        let cap = rd32(c, VFIO_PCI_CONFIG_REGION_INDEX, 0x34) & 0xff;
        assert_eq!(
            rd32(c, VFIO_PCI_CONFIG_REGION_INDEX, u64::from(cap)) & 0xff,
            0x11
        );
        assert!(c.region(VFIO_PCI_BAR2_REGION_INDEX).unwrap().size >= 4096);

        // The probe: VERSION, DSR (caps appear on DSRHIGH), IMR, ACTIVATE.
        let (version, caps) = drv.probe(0xfe000).expect("ACTIVATE ok");
        assert_eq!(version, 20);
        assert_eq!(caps.mode, 0, "mode RoCE");
        assert_eq!(caps.gid_types, 2, "gid_types RoCE v2");

        // QUERY_PORT and CREATE_PD answer, with the command interrupt.
        let r = drv
            .command_at(code::QUERY_PORT, &[(16, &[1])])
            .expect("QUERY_PORT");
        assert!(drv.bus.irqs[0].read().is_ok(), "vector 0 after a command");
        assert_eq!(u32_at(&r, 8), 0x8000_0000);
        assert_eq!(u32_at(&r, 16), 4, "port ACTIVE");
        assert_ne!(drv.create_pd(0).unwrap(), 0, "PD handle");
        // A command naming an object that does not exist: ERR, still
        // answered and interrupted.
        let e = drv.destroy(code::DESTROY_CQ, 77).unwrap_err();
        assert_ne!(e.err_reg, 0);
        assert_ne!(e.resp_err, 0, "hdr.err");
        assert!(drv.bus.irqs[0].read().is_ok());

        // A hostile guest: the command slot moved outside guest memory
        // (a new DSR pointing there) gets ERR, not a crash.
        let (dsr, _, _) = drv.slots();
        drv.bus
            .mem_write(dsr + 16, &0xdead_0000_0000u64.to_le_bytes());
        drv.bus.reg_write(reg::DSRLOW, dsr as u32);
        drv.bus.reg_write(reg::DSRHIGH, (dsr >> 32) as u32);
        drv.bus.reg_write(reg::REQUEST, 0);
        assert_ne!(drv.bus.reg_read(reg::ERR), 0);
        // Doorbells for nothing, and reads and writes past the BARs.
        drv.bus.uar_write(0, 5 | 1 << 30);
        drv.bus.uar_write(4096 * 300 + 4, 1 << 31);
        assert_eq!(drv.bus.reg_read(0xf0), 0);

        // Reset, then a reconnect: the device serves the new client.
        drv.bus.client.reset().unwrap();
        drop(drv);
        std::thread::sleep(Duration::from_millis(200));
        let mut c = Client::new(&sock).expect("reconnect");
        assert_eq!(rd32(&mut c, VFIO_PCI_CONFIG_REGION_INDEX, 0), 0x0820_15ad);
        assert_eq!(rd32(&mut c, VFIO_PCI_BAR1_REGION_INDEX, 0), 20);
        // Not active: a command fails until the next probe.
        wr32(&mut c, VFIO_PCI_BAR1_REGION_INDEX, reg::REQUEST, 0);
        assert_ne!(
            rd32(&mut c, VFIO_PCI_BAR1_REGION_INDEX, reg::ERR),
            0,
            "not active after reset"
        );
        drop(c);
        // SIGTERM: a clean exit that removes the socket.
        assert_eq!(d.stop(), Some(0));
        assert!(!sock.exists(), "vfio-user socket removed");
        let _ = std::fs::remove_dir_all(&dir);
    });
}

/// Posts a signaled RDMA WRITE of `sge` = (addr, len, lkey) to
/// `remote` = (addr, rkey) and rings the send doorbell.
fn post_write(
    drv: &mut Driver<VfioBus>,
    qp: &mut Qp,
    wr_id: u64,
    remote: (u64, u32),
    sge_: (u64, u32, u32),
) {
    let h = with_rdma(
        send_wqe(wr_id, wr_opcode::RDMA_WRITE, true),
        remote.0,
        remote.1,
    );
    drv.post_send(qp, &h, &[sge(sge_.0, sge_.1, sge_.2)]);
    drv.ring_sq(qp);
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
        let mut drv = guest(&sock);

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

        // The guest: GID 0 = ::ffff:10.66.0.1, PD, CQ, MR, RC QP, then
        // INIT, RTR (to the peer, PSN 500), RTS (PSN 700).
        drv.bind_gid(0, gid_v4([10, 66, 0, 1])).unwrap();
        let pd = drv.create_pd(0).unwrap();
        let cq = drv.create_cq(64).unwrap();
        let mr: Mr = drv.create_mr(pd, 0x7f00_0000_0000, 2, 1).unwrap();
        let (va, lkey) = (mr.va, mr.lkey);
        let mut qp = drv
            .create_qp(&QpSpec {
                qp_type: 2,
                pd,
                send_cq: cq.handle,
                recv_cq: cq.handle,
                max_send_wr: 16,
                max_recv_wr: 16,
                max_send_sge: 1,
                max_recv_sge: 1,
                sq_sig_all: false,
                srq: None,
            })
            .unwrap();
        let gqp = qp.handle;
        // Local ACK timeout 16 (268 ms), not the usual 14 (67 ms): the
        // exact counts below hold only if the daemon never retransmits on
        // its own, and this thread (the peer) may be descheduled for tens
        // of milliseconds on a loaded CI machine.
        drv.connect_with_timeout(gqp, true, eqp, gid_v4([10, 66, 0, 2]), 3, 700, 500, 16)
            .unwrap();
        connect(
            &mut e,
            eqp,
            Conn {
                dest: qp.qpn,
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
        drv.bus.mem_write(mr.pages[0], &data[..4096]);
        drv.bus.mem_write(mr.pages[1], &data[4096..]);
        drv.post_recv(&mut qp, 77, &[sge(va + 6000, 2000, lkey)]);
        drv.ring_rq(&qp);
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
        drv.post_send(
            &mut qp,
            &send_wqe(55, wr_opcode::SEND, true),
            &[sge(va, 5000, lkey)],
        );
        drv.ring_sq(&qp);

        // Pump the peer until it has the message, then answer with 300
        // bytes; the guest's ring gets both completions.
        let clock = Instant::now();
        let mut buf = vec![0u8; 16384];
        let mut wcs = Vec::new();
        let mut answered = false;
        let mut cqes: Vec<Cqe> = Vec::new();
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
            drv.poll_cq(&cq, 64, &mut cqes);
            if cqes.len() >= 2 && wcs.len() >= 2 {
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
        assert_eq!(cqes.len(), 2, "two CQEs in the guest's ring");
        let find = |id: u64| cqes.iter().find(|c| c.wr_id.get() == id).unwrap();
        let (send, recv) = (find(55), find(77));
        assert_eq!(send.status.get(), 0, "SEND status");
        assert_eq!(recv.status.get(), 0, "RECV status");
        assert_eq!(recv.opcode.get(), wc_opcode::RECV, "RECV opcode");
        assert_eq!(recv.byte_len.get(), 300);
        assert_eq!(recv.qp.get(), u64::from(gqp));
        let mut got = vec![0u8; 300];
        drv.bus.mem_read(mr.gpa(6000), &mut got);
        assert_eq!(got, vec![0xab; 300]);

        // Doorbell to wire: 64-byte unsignaled SENDs, each timed from the
        // doorbell write until its packet reaches the peer's socket, next
        // to a plain BAR1 read's vfio-user round trip.
        let (mut lat, mut ring) = (Vec::new(), Vec::new());
        for i in 0..200u64 {
            e.post_recv(
                eqp,
                &RecvWr {
                    wr_id: 1000 + i,
                    sges: &rsge,
                },
            )
            .unwrap();
            drv.post_send(
                &mut qp,
                &send_wqe(2000 + i, wr_opcode::SEND, false),
                &[sge(va, 64, lkey)],
            );
            let t0 = Instant::now();
            drv.ring_sq(&qp);
            ring.push(t0.elapsed().as_secs_f64() * 1e6);
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
            let _ = drv.bus.reg_read(reg::VERSION);
            bar.push(t0.elapsed().as_secs_f64() * 1e6);
        }
        lat.sort_by(f64::total_cmp);
        ring.sort_by(f64::total_cmp);
        bar.sort_by(f64::total_cmp);
        println!(
            "{{\"bench\":\"pvrdma doorbell to wire (64 B SEND)\",\"median_us\":{:.1},\"p99_us\":{:.1},\"doorbell_write_median_us\":{:.1},\"baseline_bar1_read_roundtrip_median_us\":{:.1}}}",
            lat[100], lat[197], ring[100], bar[100]
        );

        // RC WRITE bandwidth, 64 KiB messages from a 16-page guest MR into
        // the peer's memory, 8 in flight, every one signaled; the test
        // consumes the guest's CQ ring as a driver would.
        let big = drv.create_mr(pd, 0x7e00_0000_0000, 16, 1).unwrap();
        let (bva, bkey) = (big.va, big.lkey);
        for (i, p) in big.pages.iter().enumerate() {
            drv.bus.mem_write(*p, &vec![i as u8; 4096]);
        }
        let total = 400u32;
        let (mut posted, mut done) = (0u32, 0u32);
        let t0 = Instant::now();
        while done < total && t0.elapsed() < Duration::from_secs(30) {
            while posted < total && posted - done < 8 {
                post_write(
                    &mut drv,
                    &mut qp,
                    5000 + u64::from(posted),
                    (0, ekey),
                    (bva, 65536, bkey),
                );
                posted += 1;
            }
            let now = clock.elapsed().as_nanos() as u64;
            deliver(&mut link, &mut e, &mut buf, now);
            if e.poll_timeout().is_some_and(|t| t <= now) {
                e.handle_timeout(now);
            }
            while let Some(t) = e.poll_transmit(now, &mut buf) {
                let _ = link.send(&t, &mut buf[..t.len], now);
            }
            cqes.clear();
            drv.poll_cq(&cq, 64, &mut cqes);
            for c in &cqes {
                assert_eq!(c.status.get(), 0, "WRITE status");
                done += 1;
            }
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
        // daemon's engine times out (268 ms) and sends the 4 packets again,
        // which the peer counts as duplicates; then a frame for the guest's
        // GID arrives with one payload bit flipped (an ICRC error).
        let before = e.counters();
        post_write(&mut drv, &mut qp, 9999, (0, ekey), (bva, 4096, bkey));
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
            cqes.clear();
            drv.poll_cq(&cq, 64, &mut cqes);
            for c in &cqes {
                assert_eq!(c.status.get(), 0, "WRITE status after the lost ACK");
                done_fault = true;
            }
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
        drop(drv);
        assert_eq!(d.stop(), Some(0));
        assert!(!ctl.exists(), "the control socket is removed on SIGTERM");
        let _ = std::fs::remove_dir_all(&dir);
    });
}
