//! The daemon: one process per VM, serving the guest's virtio-net NIC over
//! a vhost-user socket, forwarding its frames to a TAP or a physical NIC,
//! and steering RoCEv2 for the VM's RDMA addresses to the engine.
//!
//! This module owns the daemon's life: the validated [`DaemonConfig`]
//! (built from the CLI in `main.rs`), checking the socket path, opening
//! the link's port, printing the QEMU options that attach to it, serving
//! QEMU again and again (a QEMU that disconnects and reconnects, as with
//! `reconnect-ms=` on its chardev, finds the same port, engine and
//! counters), and a clean exit on SIGINT or SIGTERM that removes the
//! socket and the TAP it created.
//!
//! Not built yet: the `-netdev stream` port for vmxnet3 and the PVRDMA
//! function over vfio-user (so the engine has no verbs consumer yet).

pub mod control;
pub mod net;
pub mod rdma;
pub mod relay;
pub mod stream;
pub mod switch;

use std::{
    io::{self, Write},
    net::IpAddr,
    os::unix::{
        fs::FileTypeExt,
        net::{UnixListener, UnixStream},
    },
    path::{Path, PathBuf},
    sync::{Arc, RwLock},
};

use log::{error, info};
use net::{NUM_QUEUES, NetBackend, NetConfig, PORT_EVENT};
use netdev::{LinkError, port::FramePort};
use vhost::vhost_user::Listener;
use vhost_user_backend::VhostUserDaemon;
use vm_memory::{GuestMemoryAtomic, GuestMemoryMmap};
use vmm_sys_util::epoll::EventSet;

/// Where the guest's frames go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PortSpec {
    /// A TAP device, created if it does not exist. A name with `%d` lets
    /// the kernel pick the number.
    Tap(String),
    /// AF_PACKET on an existing interface (a physical NIC).
    Packet(String),
}

/// The daemon's validated configuration.
#[derive(Debug, Clone)]
pub struct DaemonConfig {
    /// The vhost-user socket we listen on; [`default_socket`] when `None`.
    pub socket: Option<PathBuf>,
    /// The link.
    pub port: PortSpec,
    /// The guest NIC's MAC.
    pub mac: [u8; 6],
    /// The MTU to give the guest; the interface's when `None`.
    pub mtu: Option<u16>,
    /// The VM's RDMA addresses; the engine is off when empty.
    pub rdma: Vec<IpAddr>,
    /// Largest virtqueue.
    pub queue_size: u16,
    /// Guest memory size to print in the QEMU options.
    pub guest_mem: String,
    /// The QEMU whose option syntax to print.
    pub qemu: PathBuf,
    /// Where to serve the PVRDMA function over vfio-user, if at all.
    pub pvrdma_socket: Option<PathBuf>,
    /// Serve the guest's NIC as a `-netdev stream` port on this socket
    /// instead of vhost-user.
    pub stream_socket: Option<PathBuf>,
    /// Serve a vmxnet3's stream port and the PVRDMA function, at the
    /// default socket paths unless `stream_socket`/`pvrdma_socket` say.
    pub pvrdma: bool,
    /// The control socket (`vhost-user-rdma stats`); in the stream mode
    /// `<link>-ctl.sock` in the default socket directory when `None`.
    pub control: Option<PathBuf>,
    /// Capture the PVRDMA function's RoCEv2 frames (RDMA mode).
    pub pcap: Option<crate::pcap_tap::PcapConfig>,
}

/// Why the daemon stopped or could not start.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// Another process is serving the socket path.
    #[error("socket {0} is in use by another process: stop that daemon or pick another --socket")]
    SocketInUse(PathBuf),
    /// The socket path holds something that is not a socket.
    #[error("{0} exists and is not a socket: remove it or pick another --socket")]
    NotASocket(PathBuf),
    /// The socket's directory cannot be made or used.
    #[error("cannot use the socket directory {0}")]
    SocketDir(PathBuf, #[source] io::Error),
    /// No permission to create or attach the TAP.
    #[error(
        "no permission to open TAP {0}: run as root or with CAP_NET_ADMIN, or create it first with `ip tuntap add {0} mode tap user $USER`"
    )]
    TapPermission(String),
    /// No permission for AF_PACKET.
    #[error("no permission to open an AF_PACKET socket on {0}: run as root or with CAP_NET_RAW")]
    PacketPermission(String),
    /// The link's port could not be opened.
    #[error("cannot open the link {0}")]
    Port(String, #[source] LinkError),
    /// Setting the MTU failed.
    #[error("cannot set MTU {mtu} on {name}")]
    Mtu {
        /// Interface.
        name: String,
        /// Wanted MTU.
        mtu: u16,
        /// Cause.
        #[source]
        source: LinkError,
    },
    /// vhost-user failed (the library's error is not a `std::error::Error`,
    /// so it is kept as its message).
    #[error("vhost-user failed: {0}")]
    VhostUser(String),
    /// Setting up the worker's events failed.
    #[error("cannot watch the link in the worker thread")]
    Epoll(#[source] io::Error),
    /// QEMU's guest memory is not shared with us.
    #[error(
        "QEMU started the NIC but sent no guest memory: its memory is not shared with the daemon; start QEMU with -object memory-backend-memfd,id=mem0,size=SIZE,share=on -numa node,memdev=mem0"
    )]
    MemoryNotShared,
    /// The vfio-user server could not start.
    #[error("vfio-user failed: {0}")]
    VfioUser(String),
    /// The PVRDMA function pairs with an emulated NIC on the stream port.
    #[error(
        "--pvrdma-socket needs --stream-socket: the PVRDMA function pairs with QEMU's vmxnet3 on the stream port"
    )]
    PvrdmaNeedsStream,
    /// `--pcap` without the PVRDMA function.
    #[error("--pcap captures the PVRDMA function's RoCEv2 traffic: use it with --pvrdma")]
    PcapNeedsPvrdma,
    /// The pcap file cannot be created.
    #[error("cannot create the pcap file {0}")]
    Pcap(PathBuf, #[source] io::Error),
    /// The stream port's loop failed.
    #[error("the stream port failed")]
    Stream(#[source] io::Error),
    /// The relay between QEMU and the library failed.
    #[error("the vhost-user relay failed")]
    Relay(#[source] io::Error),
    /// Signal handling (or a thread) could not be set up.
    #[error("cannot set up signal handling")]
    Signals(#[source] io::Error),
}

/// Checks that `path` is free to listen on: absent, or a stale socket
/// (which is removed). A socket someone answers on is in use.
pub fn check_socket(path: &Path) -> Result<(), DaemonError> {
    let Ok(meta) = std::fs::symlink_metadata(path) else {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| DaemonError::SocketDir(dir.into(), e))?;
        }
        return Ok(());
    };
    if !meta.file_type().is_socket() {
        return Err(DaemonError::NotASocket(path.into()));
    }
    if UnixStream::connect(path).is_ok() {
        return Err(DaemonError::SocketInUse(path.into()));
    }
    std::fs::remove_file(path).map_err(|e| DaemonError::SocketDir(path.into(), e))?;
    Ok(())
}

/// The socket path used when none is given: `/run/vhost-user-rdma/`
/// as root, else `$XDG_RUNTIME_DIR/vhost-user-rdma/` (or `/tmp/`), then
/// `IFNAME.sock`.
pub fn default_socket(ifname: &str) -> PathBuf {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    let dir = if root {
        PathBuf::from("/run")
    } else {
        std::env::var_os("XDG_RUNTIME_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(std::env::temp_dir)
    };
    dir.join("vhost-user-rdma").join(format!("{ifname}.sock"))
}

/// The control socket's default path: beside the guest NIC's socket,
/// `NAME-ctl.sock` for `NAME.sock` or `NAME-net.sock`.
pub fn control_beside(nic: &Path) -> PathBuf {
    let name = nic
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let stem = name.strip_suffix(".sock").unwrap_or(&name);
    let stem = stem.strip_suffix("-net").unwrap_or(stem);
    nic.with_file_name(format!("{stem}-ctl.sock"))
}

/// Opens the link's port, turning permission errors into advice.
pub fn open_port(spec: &PortSpec) -> Result<FramePort, DaemonError> {
    let denied = |e: &LinkError| {
        matches!(e, LinkError::Setup { source, .. }
            if source.raw_os_error() == Some(libc::EPERM)
                || source.raw_os_error() == Some(libc::EACCES))
    };
    match spec {
        PortSpec::Tap(name) => FramePort::tap_vnet(name).map_err(|e| {
            if denied(&e) {
                DaemonError::TapPermission(name.clone())
            } else {
                DaemonError::Port(name.clone(), e)
            }
        }),
        PortSpec::Packet(name) => FramePort::packet(name).map_err(|e| {
            if denied(&e) {
                DaemonError::PacketPermission(name.clone())
            } else {
                DaemonError::Port(name.clone(), e)
            }
        }),
    }
}

/// Formats a MAC as `52:54:00:12:34:56`.
pub fn mac_string(mac: &[u8; 6]) -> String {
    let parts: Vec<String> = mac.iter().map(|b| format!("{b:02x}")).collect();
    parts.join(":")
}

/// The QEMU version the printed options are written for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QemuVersion {
    /// Major.
    pub major: u32,
    /// Minor.
    pub minor: u32,
}

impl QemuVersion {
    /// Asks `qemu` (a `qemu-system-*` binary or wrapper) for its version
    /// (`--version`); `None` if it cannot be run or says nothing usable.
    pub fn of(qemu: &Path) -> Option<QemuVersion> {
        let out = std::process::Command::new(qemu)
            .arg("--version")
            .output()
            .ok()?;
        let text = String::from_utf8_lossy(&out.stdout);
        let version = text
            .split_whitespace()
            .skip_while(|w| *w != "version")
            .nth(1)?;
        let mut it = version.split('.').map(|p| p.parse::<u32>().ok());
        Some(QemuVersion {
            major: it.next()??,
            minor: it.next().flatten().unwrap_or(0),
        })
    }
}

/// The QEMU options that attach a guest to this daemon, in the syntax of
/// `qemu` (the newest syntax when unknown): `reconnect-ms=1000` from 9.2,
/// `reconnect=1` before; before 8.0, also `vectors=0` on the NIC, because
/// those QEMUs crash starting a vhost-user virtio-net with MSI-X.
pub fn qemu_options(
    cfg: &DaemonConfig,
    socket: &Path,
    mtu: u16,
    qemu: Option<QemuVersion>,
) -> String {
    let v = qemu.map(|q| (q.major, q.minor)).unwrap_or((u32::MAX, 0));
    let reconnect = reconnect_option(qemu);
    let vectors = if v < (8, 0) { ",vectors=0" } else { "" };
    format!(
        "-object memory-backend-memfd,id=mem0,size={mem},share=on -numa node,memdev=mem0 -m {mem} \
         -chardev socket,id=vur0,path={sock},{reconnect} \
         -netdev vhost-user,id=vur0,chardev=vur0 \
         -device virtio-net-pci,netdev=vur0,mac={mac},host_mtu={mtu}{vectors}",
        mem = cfg.guest_mem,
        sock = socket.display(),
        mac = mac_string(&cfg.mac),
    )
}

/// How `qemu` (the newest when unknown) is told to reconnect a client
/// socket once a second: `reconnect-ms=1000` from 9.2, `reconnect=1`
/// before (chardev since long ago; `-netdev stream` since 8.0).
fn reconnect_option(qemu: Option<QemuVersion>) -> &'static str {
    let v = qemu.map(|q| (q.major, q.minor)).unwrap_or((u32::MAX, 0));
    if v >= (9, 2) {
        "reconnect-ms=1000"
    } else {
        "reconnect=1"
    }
}

/// The QEMU options that attach a guest to the stream port at `path` (a
/// vmxnet3 at 05.0) and, if `pvrdma` names a socket, the PVRDMA function
/// at 05.1 over vfio-user. The NIC reconnects after a daemon restart; the
/// vfio-user client of QEMU 11.1 does not (see docs/device.md).
pub fn stream_qemu_options(
    cfg: &DaemonConfig,
    path: &Path,
    pvrdma: Option<&Path>,
    qemu: Option<QemuVersion>,
) -> String {
    let mut opts = format!(
        "-object memory-backend-memfd,id=mem0,size={mem},share=on -numa node,memdev=mem0 -m {mem} \
         -netdev stream,id=n0,server=off,addr.type=unix,addr.path={path},{reconnect} \
         -device vmxnet3,netdev=n0,mac={mac},addr=5.0,multifunction=on",
        mem = cfg.guest_mem,
        path = path.display(),
        reconnect = reconnect_option(qemu),
        mac = mac_string(&cfg.mac),
    );
    if let Some(p) = pvrdma {
        opts.push_str(&format!(
            " -device {{\"driver\":\"vfio-user-pci\",\"socket\":{{\"type\":\"unix\",\"path\":\"{}\"}},\"addr\":\"5.1\",\"x-no-posted-writes\":true}}",
            p.display()
        ));
    }
    opts
}

/// Blocks SIGINT and SIGTERM in this thread (and so in every thread it
/// starts later) and starts a thread that waits for them; on either it
/// runs `on_signal` and exits the process with status 0.
fn handle_signals(on_signal: impl FnOnce(i32) + Send + 'static) -> Result<(), DaemonError> {
    // SAFETY: an all-zero sigset_t is valid storage; sigemptyset and
    // sigaddset initialise it, and pthread_sigmask only reads it.
    let set = unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::sigaddset(&mut set, libc::SIGTERM);
        let rc = libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        if rc != 0 {
            return Err(DaemonError::Signals(io::Error::from_raw_os_error(rc)));
        }
        set
    };
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            let mut sig = 0;
            // SAFETY: `set` is an initialised signal set and `sig` a valid
            // out-pointer; both live across the call.
            let rc = unsafe { libc::sigwait(&set, &mut sig) };
            if rc == 0 {
                on_signal(sig);
            }
            std::process::exit(0);
        })
        .map_err(DaemonError::Signals)?;
    Ok(())
}

/// Logs the counters.
fn log_stats(backend: &RwLock<NetBackend>) {
    let Ok(b) = backend.read() else { return };
    let s = b.stats();
    info!(
        "counters: tx_frames={} tx_bytes={} rx_frames={} rx_bytes={} to_engine={} engine_bad={} tx_bad={} rx_bad={} rx_no_buffer={} link_errors={} broken={}",
        s.tx_frames,
        s.tx_bytes,
        s.rx_frames,
        s.rx_bytes,
        s.to_engine,
        s.engine_bad,
        s.tx_bad,
        s.rx_bad,
        s.rx_no_buffer,
        s.link_errors,
        s.broken
    );
}

/// Runs the daemon until SIGINT or SIGTERM (which exit the process) or
/// a fatal error. `announce` receives the QEMU options once the daemon is
/// ready for QEMU.
pub fn run(mut cfg: DaemonConfig, announce: &mut dyn Write) -> Result<(), DaemonError> {
    if cfg.stream_socket.is_some() || cfg.pvrdma {
        return run_stream(cfg, announce);
    }
    if let Some(s) = &cfg.socket {
        check_socket(s)?;
    }
    let port = open_port(&cfg.port)?;
    let socket = match cfg.socket.clone() {
        Some(s) => s,
        None => {
            let s = default_socket(port.name());
            check_socket(&s)?;
            s
        }
    };
    cfg.socket = Some(socket.clone());
    if let Some(mtu) = cfg.mtu {
        netdev::port::set_mtu(port.name(), u32::from(mtu)).map_err(|source| DaemonError::Mtu {
            name: port.name().to_string(),
            mtu,
            source,
        })?;
    }
    let mtu = match cfg.mtu {
        Some(m) => m,
        None => port
            .mtu()
            .map_err(|e| DaemonError::Port(port.name().to_string(), e))?
            .min(u32::from(u16::MAX)) as u16,
    };
    let net_cfg = NetConfig {
        mac: cfg.mac,
        mtu,
        queue_size: cfg.queue_size,
        rdma: cfg.rdma.clone(),
    };
    info!(
        "link {} ({}), guest MAC {}, MTU {mtu}, RDMA addresses {:?}",
        port.name(),
        if port.created() {
            "created"
        } else {
            "existing"
        },
        mac_string(&cfg.mac),
        cfg.rdma
    );
    let port_fd = port.fd();
    let port_name = port.name().to_string();
    let backend = Arc::new(RwLock::new(NetBackend::new(net_cfg, port)));
    if cfg.pvrdma_socket.is_some() {
        return Err(DaemonError::PvrdmaNeedsStream);
    }
    if cfg.pcap.is_some() {
        return Err(DaemonError::PcapNeedsPvrdma);
    }

    // The control socket: `stats` reads the NIC's counters straight
    // from the backend (a read lock, on the control thread).
    let control = cfg
        .control
        .clone()
        .unwrap_or_else(|| control_beside(&socket));
    check_socket(&control)?;
    let stats_backend = backend.clone();
    let sock = socket.clone();
    let ctl_path = control.clone();
    let pvrdma_path = cfg.pvrdma_socket.clone();
    handle_signals(move |sig| {
        info!(
            "{} received: shutting down",
            if sig == libc::SIGINT {
                "SIGINT"
            } else {
                "SIGTERM"
            }
        );
        log_stats(&stats_backend);
        let _ = std::fs::remove_file(&sock);
        let _ = std::fs::remove_file(&ctl_path);
        if let Some(p) = &pvrdma_path {
            let _ = std::fs::remove_file(p);
        }
    })?;
    // After the signal thread: threads started from here on inherit the
    // blocked SIGINT/SIGTERM.
    let (snap_backend, snap_link, snap_mac, started) = (
        backend.clone(),
        port_name.clone(),
        mac_string(&cfg.mac),
        std::time::Instant::now(),
    );
    control::serve_with(&control, move || {
        let Ok(b) = snap_backend.read() else {
            return serde_json::json!({"error": "the NIC backend is not readable"}).to_string();
        };
        let s = b.stats();
        serde_json::json!({
            "link": snap_link,
            "mac": snap_mac,
            "uptime_s": started.elapsed().as_secs(),
            "nic": {
                "tx_frames": s.tx_frames, "tx_bytes": s.tx_bytes,
                "rx_frames": s.rx_frames, "rx_bytes": s.rx_bytes,
                "to_engine": s.to_engine, "engine_bad": s.engine_bad,
                "tx_bad": s.tx_bad, "rx_bad": s.rx_bad,
                "rx_no_buffer": s.rx_no_buffer, "link_errors": s.link_errors,
                "broken": s.broken,
            },
        })
        .to_string()
    })
    .map_err(|e| DaemonError::SocketDir(control.clone(), e))?;

    let listener =
        UnixListener::bind(&socket).map_err(|e| DaemonError::SocketDir(socket.clone(), e))?;
    let _ = writeln!(
        announce,
        "{}",
        qemu_options(&cfg, &socket, mtu, QemuVersion::of(&cfg.qemu))
    );
    let _ = announce.flush();
    loop {
        info!("waiting for QEMU on {}", socket.display());
        let qemu = match listener.accept() {
            Ok((s, _)) => s,
            Err(e) => {
                error!("accepting on {} failed: {e}", socket.display());
                std::thread::sleep(std::time::Duration::from_millis(100));
                continue;
            }
        };
        info!("QEMU connected");
        match serve_one(&backend, port_fd, qemu) {
            Err(e @ DaemonError::MemoryNotShared) => {
                let _ = std::fs::remove_file(&socket);
                let _ = std::fs::remove_file(&control);
                return Err(e);
            }
            Err(e) => error!(
                "vhost-user connection ended: {}",
                crate::decode::error_chain(&e)
            ),
            Ok(()) => info!("QEMU disconnected; waiting for it to reconnect"),
        }
        if let Ok(mut b) = backend.write() {
            b.disconnected();
        }
        log_stats(&backend);
    }
}

/// The daemon with a `-netdev stream` port as the guest's NIC (for a
/// vmxnet3, with the PVRDMA function beside it).
fn run_stream(mut cfg: DaemonConfig, announce: &mut dyn Write) -> Result<(), DaemonError> {
    for p in [&cfg.stream_socket, &cfg.pvrdma_socket, &cfg.control]
        .into_iter()
        .flatten()
    {
        check_socket(p)?;
    }
    let port = open_port(&cfg.port)?;
    // `--pvrdma` alone: both sockets named after the link, beside the
    // vhost-user default.
    let path = match cfg.stream_socket.clone() {
        Some(p) => p,
        None => {
            let p = default_socket(&format!("{}-net", port.name()));
            check_socket(&p)?;
            p
        }
    };
    if cfg.pvrdma && cfg.pvrdma_socket.is_none() {
        let p = default_socket(&format!("{}-rdma", port.name()));
        check_socket(&p)?;
        cfg.pvrdma_socket = Some(p);
    }
    let control = cfg.control.clone().unwrap_or_else(|| control_beside(&path));
    check_socket(&control)?;
    if cfg.pcap.is_some() && cfg.pvrdma_socket.is_none() {
        return Err(DaemonError::PcapNeedsPvrdma);
    }
    // The capture file before any socket exists, so a bad path fails
    // cleanly.
    let pcap = match &cfg.pcap {
        Some(p) => Some(
            crate::pcap_tap::PcapTap::create(p.clone())
                .map_err(|e| DaemonError::Pcap(p.path.clone(), e))?,
        ),
        None => None,
    };
    if let Some(mtu) = cfg.mtu {
        netdev::port::set_mtu(port.name(), u32::from(mtu)).map_err(|source| DaemonError::Mtu {
            name: port.name().to_string(),
            mtu,
            source,
        })?;
    }
    // From here on the sockets exist; they go on any error return (and on
    // SIGINT/SIGTERM, from the signal thread).
    let mut made = SocketFiles(vec![path.clone(), control.clone()]);
    made.0.extend(cfg.pvrdma_socket.clone());
    let listener =
        UnixListener::bind(&path).map_err(|e| DaemonError::SocketDir(path.clone(), e))?;
    info!(
        "link {}, guest MAC {}, stream port {}, RDMA addresses {:?}",
        port.name(),
        mac_string(&cfg.mac),
        path.display(),
        cfg.rdma
    );
    let (sp, pp, cp) = (path.clone(), cfg.pvrdma_socket.clone(), control.clone());
    let published: Arc<stream::PublishedStats> = Arc::default();
    let seen = published.clone();
    handle_signals(move |sig| {
        info!(
            "{} received: shutting down",
            if sig == libc::SIGINT {
                "SIGINT"
            } else {
                "SIGTERM"
            }
        );
        let s = seen.load();
        info!(
            "counters: tx_frames={} rx_frames={} to_engine={} rx_dropped={} bad_streams={}",
            s.tx_frames, s.rx_frames, s.to_engine, s.rx_dropped, s.bad_streams
        );
        let _ = std::fs::remove_file(&sp);
        let _ = std::fs::remove_file(&cp);
        if let Some(p) = &pp {
            let _ = std::fs::remove_file(p);
        }
    })?;
    let ctl = control::serve(&control).map_err(|e| DaemonError::SocketDir(control.clone(), e))?;
    let device = match &cfg.pvrdma_socket {
        Some(p) => Some(serve_pvrdma(p.clone(), cfg.mac)?),
        None => None,
    };
    let opts = stream_qemu_options(
        &cfg,
        &path,
        cfg.pvrdma_socket.as_deref(),
        QemuVersion::of(&cfg.qemu),
    );
    let mut stream =
        stream::StreamPort::new(listener, port, cfg.mac, cfg.rdma.clone(), device, published)
            .with_control(ctl);
    if let Some(tap) = pcap {
        info!(
            "capturing the PVRDMA function's RoCEv2 frames to {}",
            tap.path().display()
        );
        stream = stream.with_pcap(Box::new(tap));
    }
    let _ = writeln!(announce, "{opts}");
    let _ = announce.flush();
    let r = stream.run().map_err(DaemonError::Stream);
    drop(made);
    r
}

/// Socket files this daemon made, removed when dropped (on an error
/// return; SIGINT/SIGTERM end the process from the signal thread, which
/// removes them itself).
struct SocketFiles(Vec<PathBuf>);

impl Drop for SocketFiles {
    fn drop(&mut self) {
        for p in &self.0 {
            let _ = std::fs::remove_file(p);
        }
    }
}

/// Serves the PVRDMA function on `path` over vfio-user, on its own
/// thread, again after each disconnect; returns the device (to be owned by
/// the port's thread) and its end of the channel. QEMU must find the
/// socket listening when it starts.
pub fn serve_pvrdma(
    path: PathBuf,
    mac: [u8; 6],
) -> Result<(rdma::DeviceHost, rdma::DeviceEnd), DaemonError> {
    let limits = pvrdma_model::device::Limits::default();
    let (mut backend, end) = rdma::PvrdmaBackend::new(limits.max_uar)
        .map_err(|e| DaemonError::VfioUser(e.to_string()))?;
    let server = vfio_user::Server::new(&path, true, rdma::irqs(), rdma::regions(backend.config()))
        .map_err(|e| DaemonError::VfioUser(e.to_string()))?;
    info!("PVRDMA function (15ad:0820) on {}", path.display());
    std::thread::Builder::new()
        .name("pvrdma".into())
        .spawn(move || {
            loop {
                match server.run(&mut backend) {
                    Ok(()) => info!("vfio-user client disconnected; waiting for it to reconnect"),
                    Err(e) => error!("vfio-user connection ended: {e}"),
                }
                if backend.call(rdma::DevReq::Disconnected).is_err() {
                    return;
                }
            }
        })
        .map_err(DaemonError::Signals)?;
    Ok((rdma::DeviceHost::new(mac, limits), end))
}

/// A fresh directory only we can enter, for the library's end of the
/// relay (removed by the caller as soon as the connection is made).
fn private_dir() -> io::Result<PathBuf> {
    use std::os::unix::fs::DirBuilderExt;
    let dir = std::env::temp_dir().join(format!("vhost-user-rdma-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::DirBuilder::new().mode(0o700).create(&dir)?;
    Ok(dir)
}

/// Serves one QEMU connection: a new library daemon (and worker thread
/// watching the port) behind the relay, until either side hangs up.
fn serve_one(
    backend: &Arc<RwLock<NetBackend>>,
    port_fd: std::os::fd::RawFd,
    qemu: UnixStream,
) -> Result<(), DaemonError> {
    let mut daemon = VhostUserDaemon::new(
        "vhost-user-rdma".to_string(),
        backend.clone(),
        GuestMemoryAtomic::new(GuestMemoryMmap::new()),
    )
    .map_err(|e| DaemonError::VhostUser(e.to_string()))?;
    for h in daemon.get_epoll_handlers() {
        h.register_listener(
            port_fd,
            EventSet::IN | EventSet::EDGE_TRIGGERED,
            u64::from(PORT_EVENT),
        )
        .map_err(DaemonError::Epoll)?;
    }
    debug_assert!(usize::from(PORT_EVENT) > NUM_QUEUES);
    // The library's end: a listener in a fresh private directory,
    // connected at once; socket and directory are removed right away, so
    // only our relay ever reaches it and nothing stays behind even if we
    // are killed.
    let dir = private_dir().map_err(|e| DaemonError::SocketDir(std::env::temp_dir(), e))?;
    let inner = dir.join("lib.sock");
    let bound = UnixListener::bind(&inner).and_then(|ul| Ok((UnixStream::connect(&inner)?, ul)));
    let _ = std::fs::remove_file(&inner);
    let _ = std::fs::remove_dir(&dir);
    let (lib_end, ul) = bound.map_err(|e| DaemonError::SocketDir(inner.clone(), e))?;
    let mut listener = Listener::from(ul);
    daemon
        .start(&mut listener)
        .map_err(|e| DaemonError::VhostUser(e.to_string()))?;
    let relay = std::thread::Builder::new()
        .name("vhost-user relay".into())
        .spawn(move || relay::relay(qemu, lib_end))
        .map_err(DaemonError::Signals)?;
    let waited = daemon.wait();
    for h in daemon.get_epoll_handlers() {
        h.send_exit_event();
    }
    let relayed = relay
        .join()
        .unwrap_or_else(|_| Err(io::Error::other("relay panicked").into()));
    match waited {
        Ok(())
        | Err(vhost_user_backend::Error::HandleRequest(
            vhost::vhost_user::Error::Disconnected | vhost::vhost_user::Error::PartialMessage,
        )) => {}
        Err(e) => return Err(DaemonError::VhostUser(e.to_string())),
    }
    match relayed {
        Err(relay::RelayError::MemoryNotShared) => Err(DaemonError::MemoryNotShared),
        Err(relay::RelayError::Io(e))
            if e.kind() != io::ErrorKind::BrokenPipe
                && e.kind() != io::ErrorKind::ConnectionReset =>
        {
            Err(DaemonError::Relay(e))
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> DaemonConfig {
        DaemonConfig {
            socket: None,
            port: PortSpec::Tap("t".into()),
            mac: [0x52, 0x54, 0, 1, 2, 3],
            mtu: None,
            rdma: Vec::new(),
            queue_size: 256,
            guest_mem: "2G".into(),
            qemu: "qemu-system-x86_64".into(),
            pvrdma_socket: None,
            stream_socket: None,
            pvrdma: false,
            control: None,
            pcap: None,
        }
    }

    #[test]
    fn qemu_options_follow_the_qemu_version() {
        let s = Path::new("/run/x.sock");
        let new = qemu_options(
            &cfg(),
            s,
            1500,
            Some(QemuVersion {
                major: 11,
                minor: 1,
            }),
        );
        assert!(new.contains("path=/run/x.sock,reconnect-ms=1000 "), "{new}");
        assert!(new.contains("mac=52:54:00:01:02:03,host_mtu=1500"), "{new}");
        assert!(
            new.contains("size=2G,share=on") && new.contains("-m 2G"),
            "{new}"
        );
        assert!(!new.contains("vectors"), "{new}");
        let old = qemu_options(&cfg(), s, 9000, Some(QemuVersion { major: 7, minor: 2 }));
        assert!(
            old.contains(",reconnect=1 ") && old.ends_with("host_mtu=9000,vectors=0"),
            "{old}"
        );
        let mid = qemu_options(&cfg(), s, 1500, Some(QemuVersion { major: 9, minor: 1 }));
        assert!(
            mid.contains(",reconnect=1 ") && !mid.contains("vectors"),
            "{mid}"
        );
        let stream = stream_qemu_options(
            &cfg(),
            Path::new("/run/n.sock"),
            Some(Path::new("/run/r.sock")),
            Some(QemuVersion {
                major: 11,
                minor: 1,
            }),
        );
        assert!(
            stream.contains("addr.path=/run/n.sock,reconnect-ms=1000 ")
                && stream.contains(
                    "\"path\":\"/run/r.sock\"},\"addr\":\"5.1\",\"x-no-posted-writes\":true}"
                ),
            "{stream}"
        );
        assert_eq!(
            control_beside(Path::new("/run/v/vur0-net.sock")),
            Path::new("/run/v/vur0-ctl.sock")
        );
        assert_eq!(
            control_beside(Path::new("/run/v/vm1.sock")),
            Path::new("/run/v/vm1-ctl.sock")
        );
        assert_eq!(control_beside(Path::new("x")), Path::new("x-ctl.sock"));
        let unknown = qemu_options(&cfg(), s, 1500, None);
        assert!(unknown.contains("reconnect-ms"), "{unknown}");
    }
}
