//! The stream port: the guest's NIC as QEMU's `-netdev stream` sees it,
//! for NIC models QEMU emulates itself, in particular the vmxnet3 that the
//! PVRDMA driver pairs with.
//!
//! This module owns one unix socket the daemon listens on; QEMU connects
//! with `-netdev stream,id=n0,server=off,addr.type=unix,addr.path=PATH`.
//! Frames travel in both directions as a 4-byte big-endian length and the
//! frame. Frames from the guest go to the link's port; frames from the
//! link are steered as on the virtio-net face (RoCEv2 for the VM's RDMA
//! addresses to the engine, the rest to the guest). One thread owns the
//! socket and the port and polls both. A frame from the guest longer than
//! [`MAX_FRAME`] or a malformed length ends that connection (the next
//! QEMU is served); without a connected QEMU, frames for the guest are
//! dropped and counted.

use std::{
    io::{self, Read, Write},
    net::IpAddr,
    os::{
        fd::AsRawFd,
        unix::net::{UnixListener, UnixStream},
    },
};

use std::time::Instant;

use log::{debug, error, info, warn};
use netdev::{
    eth::EthLink,
    port::{FramePort, VNET_HDR_LEN},
};
use transport::{engine::RxMeta, wire::frame::RoceFrame};

use super::{
    net::EngineFace,
    rdma::{DeviceEnd, DeviceHost},
    switch::{Steer, steer},
};

/// The PVRDMA device on this port's thread: its engine sends through an
/// [`EthLink`] on the port, and RoCEv2 for the GIDs the guest bound comes
/// to it.
struct RdmaSide {
    host: DeviceHost,
    end: DeviceEnd,
    link: EthLink,
    gids: Vec<IpAddr>,
    clock: Instant,
    buf: Box<[u8]>,
    /// Frames for the guest's GIDs that failed the ICRC check.
    icrc_err: u64,
    /// Frames for the guest's GIDs that did not parse as RoCEv2.
    bad_frames: u64,
    /// Frames for the guest's GIDs with a good ICRC, handed to the engine.
    received: u64,
    /// Packets the link could not send (the engine's retransmission
    /// recovers them; rxe `send_err`).
    send_err: u64,
    /// QP error lines logged in the current second, when it began, and
    /// those left out of the log since the last summary.
    errs_logged: u32,
    errs_window: Instant,
    errs_suppressed: u64,
    /// A send found the link gone: why (the port loop takes the port
    /// down).
    link_lost: Option<String>,
}

/// QP error lines logged per second at most; the rest are counted and
/// summed up in one line, so a guest cannot flood the host's log.
const QP_ERR_LINES_PER_SEC: u32 = 10;

impl RdmaSide {
    fn now(&self) -> u64 {
        self.clock.elapsed().as_nanos() as u64
    }

    /// Counts a failed send; the first one that found the link gone is
    /// kept for the port loop.
    fn send_failed(&mut self, e: &netdev::LinkError) {
        self.send_err += 1;
        if e.is_link_down() && self.link_lost.is_none() {
            self.link_lost = Some(e.to_string());
        }
    }

    /// The link is gone: the PVRDMA port goes down (QUERY_PORT says
    /// DOWN) and, as rxe's do, every live QP moves to ERR; the flushed
    /// completions, a fatal event per QP and a port error reach the
    /// guest's rings. Returns how many QPs moved.
    fn port_down(&mut self) -> usize {
        let dev = self.host.device_mut();
        dev.set_port_up(false);
        let n = dev.engine_mut().port_down();
        let fx = self.host.device_mut().service();
        self.host.fire(fx);
        n
    }

    /// Answers the vfio-user thread's waiting requests.
    fn requests(&mut self) {
        let _ = self.end.wake.read();
        self.drain();
    }

    /// Executes the guest's queued accesses, in order. Doorbells are
    /// posted (the guest goes on before they run), so this also runs
    /// before every frame from the link is taken: a frame that arrives
    /// because of a doorbell (a peer's SEND after this guest posted the
    /// receive and told it so) must find that doorbell done. No syscall
    /// when nothing is queued.
    fn drain(&mut self) {
        let mut commands = false;
        while let Ok(req) = self.end.req.try_recv() {
            let posted = req.posted();
            let r = self.host.handle(req);
            if !posted {
                commands = true;
                let _ = self.end.reply.send(r);
            } else if let Err(e) = r {
                debug!("doorbell: {e}");
            }
        }
        // A command may have bound or removed a GID: steer by the new
        // table from the next frame on.
        if commands {
            let gids = self.host.gid_ips();
            if gids != self.gids {
                info!("PVRDMA GIDs now {gids:?}");
                self.link.set_addrs(gids.clone());
                self.gids = gids;
            }
        }
    }

    /// Sends what the engine has queued, runs due timers, and moves
    /// completions and events into the guest's rings.
    fn pump(&mut self) {
        let now = self.now();
        let dev = self.host.device_mut();
        if dev.engine().poll_timeout().is_some_and(|t| t <= now) {
            dev.engine_mut().handle_timeout(now);
        }
        if self.link.poll_timeout().is_some_and(|t| t <= now) {
            let _ = self.link.handle_timeout(now);
        }
        while let Some(t) = self
            .host
            .device_mut()
            .engine_mut()
            .poll_transmit(now, &mut self.buf)
        {
            // On a `packet` port the frames of a burst go out together
            // (one sendmmsg); on a TAP one by one.
            if let Err(e) = self.link.send_queued(&t, &mut self.buf[..t.len], now) {
                self.send_failed(&e);
            }
        }
        if let Err(e) = self.link.flush_queued() {
            self.send_failed(&e);
        }
        let fx = self.host.device_mut().service();
        self.host.fire(fx);
        let errs: Vec<_> = self.host.device_mut().take_qp_errors().collect();
        if errs.is_empty() {
            return;
        }
        if self.errs_window.elapsed() >= std::time::Duration::from_secs(1) {
            if self.errs_suppressed > 0 {
                warn!(
                    "{} more QP errors in the last second were not logged one by one",
                    self.errs_suppressed
                );
            }
            self.errs_window = Instant::now();
            self.errs_logged = 0;
            self.errs_suppressed = 0;
        }
        for e in errs {
            if self.errs_logged < QP_ERR_LINES_PER_SEC {
                self.errs_logged += 1;
                warn!(
                    "QP {} (QPN {}) error: {:?} on a {:?} work request (wr_id {:#x})",
                    e.handle, e.qpn, e.status, e.opcode, e.wr_id
                );
            } else {
                self.errs_suppressed += 1;
            }
        }
    }

    /// A RoCEv2 frame for one of the guest's GIDs.
    fn packet(&mut self, frame: &[u8]) {
        self.link.tap_frame(frame);
        let Ok(f) = RoceFrame::parse_ethernet(frame) else {
            self.bad_frames += 1;
            return;
        };
        if f.verify_icrc().is_err() {
            self.icrc_err += 1;
            return;
        }
        self.received += 1;
        let now = self.now();
        let meta = RxMeta {
            ip_header: &f.l3[..f.repr.ip.header_len()],
            ecn: f.repr.ip.ecn(),
        };
        let _ = self
            .host
            .device_mut()
            .engine_mut()
            .handle_packet(now, &meta, f.ib);
    }

    /// Milliseconds until the next timer, for poll.
    fn timeout_ms(&self) -> i32 {
        let now = self.now();
        [
            self.host.device().engine().poll_timeout(),
            self.link.poll_timeout(),
        ]
        .into_iter()
        .flatten()
        .map(|t| (t.saturating_sub(now) / 1_000_000).min(1000) as i32)
        .min()
        .unwrap_or(-1)
    }
}

/// The longest frame either way.
pub const MAX_FRAME: usize = 65535 + 18;

/// The counters as another thread reads them: the port's thread stores
/// its plain counters here once per wake-up (no read-modify-write on the
/// packet path).
#[derive(Debug, Default)]
pub struct PublishedStats([std::sync::atomic::AtomicU64; 5]);

impl PublishedStats {
    fn store(&self, s: &StreamStats) {
        use std::sync::atomic::Ordering::Relaxed;
        for (a, v) in self.0.iter().zip([
            s.tx_frames,
            s.rx_frames,
            s.to_engine,
            s.rx_dropped,
            s.bad_streams,
        ]) {
            a.store(v, Relaxed);
        }
    }

    /// The counters last stored.
    pub fn load(&self) -> StreamStats {
        use std::sync::atomic::Ordering::Relaxed;
        let v: Vec<u64> = self.0.iter().map(|a| a.load(Relaxed)).collect();
        StreamStats {
            tx_frames: v[0],
            rx_frames: v[1],
            to_engine: v[2],
            rx_dropped: v[3],
            bad_streams: v[4],
        }
    }
}

/// Counters of the stream port.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StreamStats {
    /// Frames from the guest written to the link.
    pub tx_frames: u64,
    /// Frames from the link delivered to the guest.
    pub rx_frames: u64,
    /// Frames steered to the engine.
    pub to_engine: u64,
    /// Frames for the guest dropped (no QEMU connected, or it is not
    /// reading).
    pub rx_dropped: u64,
    /// Connections ended for a malformed length.
    pub bad_streams: u64,
}

/// The stream port and its link.
pub struct StreamPort {
    listener: UnixListener,
    conn: Option<UnixStream>,
    port: FramePort,
    engine: Option<EngineFace>,
    rdma: Vec<IpAddr>,
    device: Option<RdmaSide>,
    /// Bytes read from QEMU not yet forming a whole frame.
    inbuf: Vec<u8>,
    frame: Box<[u8]>,
    stats: StreamStats,
    published: std::sync::Arc<PublishedStats>,
    control: Option<super::control::ControlEnd>,
    mac: [u8; 6],
    started: Instant,
    /// The link went down or vanished: no more reads or writes on it.
    link_down: bool,
}

impl StreamPort {
    /// A stream port listening on `listener`, forwarding to `port` as
    /// `mac`, with the PVRDMA `device` (if any) taking RoCEv2 for the GIDs
    /// its guest binds, or else an engine for `rdma` (if not empty).
    pub fn new(
        listener: UnixListener,
        port: FramePort,
        mac: [u8; 6],
        rdma: Vec<IpAddr>,
        device: Option<(DeviceHost, DeviceEnd)>,
        published: std::sync::Arc<PublishedStats>,
    ) -> StreamPort {
        // With the PVRDMA device, its engine (and the GIDs its guest binds)
        // take RoCEv2; otherwise `--rdma-ip` and an engine without QPs.
        let engine =
            (!rdma.is_empty() && device.is_none()).then(|| EngineFace::new(&port, mac, &rdma));
        let device = device.map(|(host, end)| RdmaSide {
            host,
            end,
            link: EthLink::on_port(&port, mac, Vec::new()),
            gids: Vec::new(),
            clock: Instant::now(),
            buf: vec![0; 16384].into_boxed_slice(),
            icrc_err: 0,
            bad_frames: 0,
            received: 0,
            send_err: 0,
            errs_logged: 0,
            errs_window: Instant::now(),
            errs_suppressed: 0,
            link_lost: None,
        });
        StreamPort {
            listener,
            conn: None,
            port,
            engine,
            rdma,
            device,
            inbuf: Vec::with_capacity(2 * MAX_FRAME),
            frame: vec![0; MAX_FRAME].into_boxed_slice(),
            stats: StreamStats::default(),
            published,
            control: None,
            mac,
            started: Instant::now(),
            link_down: false,
        }
    }

    /// The link went down or vanished (`why`): once, the RDMA port goes
    /// down under the guest and the port is no longer polled (frames
    /// from the guest are dropped from then on).
    fn take_link_down(&mut self, why: &str) {
        if self.link_down {
            return;
        }
        self.link_down = true;
        let qps = self.device.as_mut().map_or(0, |d| d.port_down());
        error!(
            "the link {} went down or vanished ({why}): the PVRDMA port is down, {qps} QP(s) moved to the error state (their work requests complete with FLUSH_ERR; the guest gets a fatal event per QP and a port error); frames from the guest are dropped from now on",
            self.port.name()
        );
    }

    /// Counters so far.
    pub fn stats(&self) -> StreamStats {
        self.stats
    }

    /// Answers the control socket's snapshot requests from this port's
    /// thread.
    pub fn with_control(mut self, control: super::control::ControlEnd) -> StreamPort {
        self.control = Some(control);
        self
    }

    /// Captures the PVRDMA function's RoCEv2 frames, both ways, to `tap`.
    pub fn with_pcap(mut self, tap: Box<dyn netdev::eth::FrameTap>) -> StreamPort {
        if let Some(d) = &mut self.device {
            d.link.set_tap(Some(tap));
        }
        self
    }

    /// Everything `vhost-user-rdma stats` shows, as one JSON object.
    pub fn snapshot(&self) -> serde_json::Value {
        use serde_json::{Map, Value, json};
        let s = self.stats;
        let mut v = json!({
            "link": self.port.name(),
            "mac": super::mac_string(&self.mac),
            "uptime_s": self.started.elapsed().as_secs(),
            "guest_connected": self.conn.is_some(),
            "link_down": self.link_down,
            "port": {
                "tx_frames": s.tx_frames,
                "rx_frames": s.rx_frames,
                "to_engine": s.to_engine,
                "rx_dropped": s.rx_dropped,
                "bad_streams": s.bad_streams,
            },
        });
        let Some(d) = &self.device else {
            return v;
        };
        let dev = d.host.device();
        let e = dev.engine();
        let named = |c: &transport::counters::Counters| -> Map<String, Value> {
            c.named()
                .iter()
                .map(|(k, n)| (k.to_string(), json!(n)))
                .collect()
        };
        let l = d.link.stats();
        let (uc, pd, cq, mr, qp) = dev.counts();
        let ds = dev.stats();
        let bytes = e.opcode_bytes();
        let per_op = |b: &[u64; 256]| -> Map<String, Value> {
            b.iter()
                .enumerate()
                .filter(|(_, n)| **n != 0)
                .map(|(op, n)| (format!("{op:#04x}"), json!(n)))
                .collect()
        };
        let qps: Vec<Value> = e
            .qps()
            .map(|q| {
                json!({
                    "qpn": q.qpn(),
                    "handle": dev.qp_handle(q.qpn()),
                    "type": format!("{:?}", q.qp_type()).to_uppercase(),
                    "state": format!("{:?}", q.state()).to_uppercase(),
                    "dest_qp": q.dest_qp(),
                    "sq_psn": q.sq_psn(),
                    "rq_psn": q.rq_psn(),
                    "sq_outstanding": q.sq_outstanding(),
                    "rq_posted": q.rq_posted(),
                    "counters": named(&q.counters())
                        .into_iter()
                        .filter(|(_, n)| n != &json!(0))
                        .collect::<Map<String, Value>>(),
                })
            })
            .collect();
        v["rdma"] = json!({
            "gids": d.gids.iter().map(|g| g.to_string()).collect::<Vec<_>>(),
            "counters": named(&e.counters()),
            "link": {
                "sent": l.sent,
                "received": d.received + l.received,
                "icrc_err": d.icrc_err + l.bad,
                "bad_frames": d.bad_frames,
                "unresolved": l.unresolved,
                "send_err": d.send_err,
            },
            "bytes_per_opcode": { "tx": per_op(&bytes.tx), "rx": per_op(&bytes.rx) },
            "objects": {
                "contexts": uc, "pds": pd, "cqs": cq, "mrs": mr, "qps": qp,
                "srqs": dev.srq_count(),
            },
            "guest_errors": {
                "cmd_errors": ds.cmd_errors,
                "bad_doorbells": ds.bad_doorbells,
                "bad_wqes": ds.bad_wqes,
                "bad_rings": ds.bad_rings,
                "cq_full": ds.cq_full,
            },
            "qps": qps,
        });
        v
    }

    /// Serves forever (until the process ends).
    pub fn run(&mut self) -> io::Result<()> {
        loop {
            let wake = self.device.as_ref().map(|d| d.end.wake.as_raw_fd());
            let ctl = self.control.as_ref().map(|c| c.wake.as_raw_fd());
            let timeout = self.device.as_ref().map_or(-1, |d| d.timeout_ms());
            let mut fds = [
                libc::pollfd {
                    fd: self
                        .conn
                        .as_ref()
                        .map_or(self.listener.as_raw_fd(), |c| c.as_raw_fd()),
                    events: libc::POLLIN,
                    revents: 0,
                },
                libc::pollfd {
                    // A gone link is not polled (it would report an
                    // error forever).
                    fd: if self.link_down { -1 } else { self.port.fd() },
                    events: libc::POLLIN,
                    revents: 0,
                },
                libc::pollfd {
                    fd: wake.unwrap_or(-1),
                    events: libc::POLLIN,
                    revents: 0,
                },
                libc::pollfd {
                    fd: ctl.unwrap_or(-1),
                    events: libc::POLLIN,
                    revents: 0,
                },
            ];
            // SAFETY: `fds` is a valid array of four pollfd for the call
            // (a negative fd is ignored by poll).
            let rc = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, timeout) };
            if rc < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            if fds[0].revents != 0 {
                if self.conn.is_some() {
                    self.pump_guest();
                } else if let Ok((c, _)) = self.listener.accept() {
                    info!("QEMU connected to the stream port");
                    self.inbuf.clear();
                    self.conn = Some(c);
                }
            }
            // The guest's accesses before the link's frames (see `drain`).
            if let Some(d) = self.device.as_mut()
                && fds[2].revents != 0
            {
                d.requests();
            }
            if fds[1].revents != 0 {
                self.pump_link();
            }
            if let Some(d) = self.device.as_mut() {
                d.pump();
                d.link.flush_tap();
            }
            if let Some(why) = self.device.as_mut().and_then(|d| d.link_lost.take()) {
                self.take_link_down(&why);
            }
            if fds[3].revents != 0
                && let Some(c) = &self.control
            {
                c.answer(|| self.snapshot().to_string());
            }
            self.published.store(&self.stats);
        }
    }

    fn drop_conn(&mut self, why: &str) {
        info!("stream port: {why}; waiting for QEMU to reconnect");
        self.conn = None;
        self.inbuf.clear();
    }

    /// Reads what QEMU sent and forwards every whole frame.
    fn pump_guest(&mut self) {
        let Some(conn) = self.conn.as_mut() else {
            return;
        };
        let mut chunk = [0u8; 65536];
        let n = match conn.read(&mut chunk) {
            Ok(0) => return self.drop_conn("QEMU disconnected"),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
            Err(e) => return self.drop_conn(&format!("read failed: {e}")),
        };
        self.inbuf.extend_from_slice(&chunk[..n]);
        let mut at = 0;
        let mut lost = None;
        while self.inbuf.len() - at >= 4 {
            let len =
                u32::from_be_bytes(self.inbuf[at..at + 4].try_into().unwrap_or([0; 4])) as usize;
            if len == 0 || len > MAX_FRAME {
                self.stats.bad_streams += 1;
                warn!("stream port: frame length {len} from QEMU is invalid");
                return self.drop_conn("malformed stream");
            }
            if self.inbuf.len() - at - 4 < len {
                break;
            }
            let frame = &self.inbuf[at + 4..at + 4 + len];
            at += 4 + len;
            if self.link_down {
                continue;
            }
            let hdr = [0u8; VNET_HDR_LEN];
            let r = if self.port.vnet_hdr_len() > 0 {
                self.port.write(&[&hdr, frame])
            } else {
                self.port.write(&[frame])
            };
            match r {
                Ok(()) => self.stats.tx_frames += 1,
                Err(e) if e.is_link_down() => lost = Some(e.to_string()),
                Err(_) => {}
            }
        }
        self.inbuf.drain(..at);
        if let Some(why) = lost {
            self.take_link_down(&why);
        }
    }

    /// Reads the link's frames: RoCEv2 for us to the engine, the rest to
    /// QEMU.
    fn pump_link(&mut self) {
        let mut hdr = [0u8; VNET_HDR_LEN];
        loop {
            if let Some(d) = self.device.as_mut() {
                d.drain();
            }
            let n = match self.port.read_vnet(&mut hdr, &mut self.frame) {
                Ok(Some(n)) => n,
                Ok(None) => return,
                Err(e) if e.is_link_down() => return self.take_link_down(&e.to_string()),
                Err(e) => {
                    warn!("reading the link failed: {e}");
                    return;
                }
            };
            let frame = &self.frame[..n];
            if let Some(d) = self.device.as_mut() {
                let now = d.now();
                let _ = d.link.handle_frame(frame, now);
                if steer(frame, &d.gids) == Steer::Engine {
                    self.stats.to_engine += 1;
                    d.packet(frame);
                    continue;
                }
            }
            if let Some(engine) = self.engine.as_mut() {
                if steer(frame, &self.rdma) == Steer::Engine {
                    self.stats.to_engine += 1;
                    let _ = engine.packet(frame);
                    continue;
                }
                engine.control(frame);
            }
            let Some(conn) = self.conn.as_mut() else {
                self.stats.rx_dropped += 1;
                continue;
            };
            let len = (n as u32).to_be_bytes();
            // One write of prefix and frame, so frames never interleave.
            let iov = [
                libc::iovec {
                    iov_base: len.as_ptr() as *mut libc::c_void,
                    iov_len: 4,
                },
                libc::iovec {
                    iov_base: frame.as_ptr() as *mut libc::c_void,
                    iov_len: n,
                },
            ];
            // SAFETY: both iovecs point into buffers borrowed for the
            // call; the kernel only reads them.
            let w = unsafe { libc::writev(conn.as_raw_fd(), iov.as_ptr(), 2) };
            if w == (n + 4) as isize {
                self.stats.rx_frames += 1;
            } else if w < 0 {
                self.stats.rx_dropped += 1;
                let e = io::Error::last_os_error();
                self.drop_conn(&format!("write failed: {e}"));
            } else {
                // A short write on a blocking stream: finish it.
                let rest: Vec<u8> = len
                    .iter()
                    .chain(frame.iter())
                    .copied()
                    .skip(w as usize)
                    .collect();
                if conn.write_all(&rest).is_ok() {
                    self.stats.rx_frames += 1;
                } else {
                    self.drop_conn("write failed");
                }
            }
        }
    }
}
