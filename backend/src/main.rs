//! The `vhost-user-rdma` binary: parses the command line with clap and
//! runs the chosen subcommand.
//!
//! With no subcommand it runs the daemon (the virtio-net face over
//! vhost-user, or with `--pvrdma` a vmxnet3 stream port and the PVRDMA
//! function); `stats`, `decode`, `perf` and `peer` are the tools around it.

use std::{
    fs::File,
    io::{self, Write},
    path::PathBuf,
    process::ExitCode,
};

use backend::{
    daemon::{DaemonConfig, PortSpec},
    decode::{decode, error_chain},
    perf::{PerfOptions, PerfTest},
};
use clap::{Parser, Subcommand};

/// Paravirtual RDMA for QEMU guests over a soft RoCEv2 engine.
///
/// With no subcommand, runs the daemon for one VM. With --pvrdma it gives
/// the guest RDMA: QEMU's vmxnet3 on a `-netdev stream` socket and, beside
/// it, the VMware PVRDMA function over vfio-user, which the guest's stock
/// vmw_pvrdma driver and rdma-core use; its RoCEv2 goes out on a TAP (or a
/// NIC). Without it, it serves the guest's virtio-net NIC on a vhost-user
/// socket. Either way, with no other options it creates a TAP, picks a MAC
/// and socket paths, prints the QEMU options that attach a guest, and
/// serves. SIGINT or SIGTERM stop it, removing its sockets (and the TAP it
/// made).
///
/// Example: vhost-user-rdma --pvrdma --tap vur0 --mac 52:54:00:12:34:56
#[derive(Debug, Parser)]
#[command(
    name = "vhost-user-rdma",
    version,
    args_conflicts_with_subcommands = true
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    daemon: DaemonArgs,
}

/// The daemon's options (no subcommand).
#[derive(Debug, clap::Args)]
struct DaemonArgs {
    /// The vhost-user socket to listen on (QEMU connects to it). Default:
    /// /run/vhost-user-rdma/TAP.sock as root, else under $XDG_RUNTIME_DIR
    /// or /tmp.
    ///
    /// Example: --socket /run/vhost-user-rdma/vm1.sock
    #[arg(long, value_name = "PATH")]
    socket: Option<PathBuf>,
    /// The TAP device the guest's frames go to, created (and brought up)
    /// if it does not exist; `%d` lets the kernel number it. Default:
    /// vur%d.
    ///
    /// Example: --tap vur0
    #[arg(long, value_name = "NAME", conflicts_with = "packet")]
    tap: Option<String>,
    /// Instead of a TAP, an existing interface (a physical NIC) that the
    /// guest's frames go to through AF_PACKET, in promiscuous mode.
    ///
    /// Example: --packet eth1
    #[arg(long, value_name = "IFNAME")]
    packet: Option<String>,
    /// The guest NIC's MAC (give the same one to QEMU). Default: a random
    /// 52:54:00:xx:xx:xx.
    ///
    /// Example: --mac 52:54:00:12:34:56
    #[arg(long)]
    mac: Option<backend::peer::Mac>,
    /// The MTU: set on the TAP and given to the guest (68 to 65535).
    /// Default: the interface's.
    ///
    /// Example: --mtu 9000
    #[arg(long, value_parser = clap::value_parser!(u16).range(68..))]
    mtu: Option<u16>,
    /// An address of the VM for RDMA: RoCEv2 (UDP port 4791) to it goes to
    /// the engine instead of the guest. Repeat for more. Default: none (the
    /// engine is off and every frame goes to the guest).
    ///
    /// Example: --rdma-ip 10.77.0.1
    #[arg(long = "rdma-ip", value_name = "ADDR")]
    rdma_ip: Vec<std::net::IpAddr>,
    /// The largest virtqueue the guest may set up (a power of 2, 64 to
    /// 32768).
    ///
    /// Example: --queue-size 256
    #[arg(long, default_value_t = 1024, value_parser = parse_queue_size)]
    queue_size: u16,
    /// The guest memory size to show in the printed QEMU options.
    ///
    /// Example: --guest-mem 4G
    #[arg(long, default_value = "1G", value_name = "SIZE")]
    guest_mem: String,
    /// Also serve the PVRDMA RDMA function (15ad:0820) over vfio-user on
    /// this socket, for QEMU ≥ 10.1's `vfio-user-pci` (put it at function 1
    /// of the slot whose function 0 is the paired vmxnet3). The device
    /// answers the stock vmw_pvrdma driver's commands and carries its
    /// RoCEv2 traffic on the link, with the vmxnet3's MAC (`--mac`) and
    /// the addresses the guest gives that NIC.
    ///
    /// Example: --pvrdma-socket /run/vhost-user-rdma/vm1-rdma.sock
    #[arg(long, value_name = "PATH")]
    pvrdma_socket: Option<PathBuf>,
    /// Serve the guest's NIC as QEMU's `-netdev stream` (frames with a
    /// 4-byte big-endian length) on this socket instead of vhost-user, for
    /// an emulated NIC such as the vmxnet3 the PVRDMA function pairs with.
    ///
    /// Example: --stream-socket /run/vhost-user-rdma/vm1-net.sock
    #[arg(long, value_name = "PATH", conflicts_with = "socket")]
    stream_socket: Option<PathBuf>,
    /// Give the guest RDMA: serve a vmxnet3's `-netdev stream` port and
    /// the PVRDMA function beside it, on sockets named after the link
    /// (`<link>-net.sock` and `<link>-rdma.sock` in the default socket
    /// directory) unless --stream-socket / --pvrdma-socket name them. The
    /// QEMU options printed need QEMU ≥ 10.1 (vfio-user-pci).
    ///
    /// Example: vhost-user-rdma --pvrdma --qemu qemu-configs/qemu11
    #[arg(long, conflicts_with = "socket")]
    pvrdma: bool,
    /// Where to serve the control socket that `vhost-user-rdma stats`
    /// reads (mode 0600). Default: beside the guest NIC's socket,
    /// `NAME-ctl.sock` for `NAME.sock` or `NAME-net.sock`.
    ///
    /// Example: --control /run/vhost-user-rdma/vm1-ctl.sock
    #[arg(long, value_name = "PATH")]
    control: Option<PathBuf>,
    #[command(flatten)]
    pcap: PcapArgs,
    /// The QEMU binary whose option syntax to print (its `--version`
    /// decides `reconnect-ms=` or `reconnect=`, and `vectors=0` before
    /// 8.0).
    ///
    /// Example: --qemu qemu-configs/qemu11
    #[arg(long, default_value = "qemu-system-x86_64", value_name = "PATH")]
    qemu: PathBuf,
}

/// The `--pcap` options (daemon and `peer`).
#[derive(Debug, clap::Args)]
struct PcapArgs {
    /// Write every RoCEv2 frame sent and received to this pcap file
    /// (Ethernet; Wireshark shows it as RRoCE; `vhost-user-rdma decode`
    /// reads it). The daemon captures its PVRDMA function's traffic (RDMA
    /// mode); `peer` its tap or packet link.
    ///
    /// Example: --pcap /var/tmp/vm1.pcap
    #[arg(long, value_name = "FILE")]
    pcap: Option<PathBuf>,
    /// Size at which the pcap file rotates: FILE becomes FILE.1, FILE.1
    /// becomes FILE.2, and so on.
    #[arg(long, value_name = "MIB", default_value_t = 64, value_parser = clap::value_parser!(u64).range(1..=1 << 20))]
    pcap_max_mib: u64,
    /// Pcap files kept, the one being written included; older ones are
    /// deleted.
    #[arg(long, value_name = "N", default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pcap_files: u32,
}

impl PcapArgs {
    fn config(&self) -> Option<backend::pcap_tap::PcapConfig> {
        self.pcap
            .as_ref()
            .map(|path| backend::pcap_tap::PcapConfig {
                path: path.clone(),
                max_bytes: self.pcap_max_mib << 20,
                files: self.pcap_files,
            })
    }
}

fn parse_queue_size(s: &str) -> Result<u16, String> {
    let n: u16 = s
        .parse()
        .map_err(|_| format!("{s} is not a number from 64 to 32768"))?;
    if !(64..=32768).contains(&n) || !n.is_power_of_two() {
        return Err(format!("{n} is not a power of 2 from 64 to 32768"));
    }
    Ok(n)
}

/// A random locally administered MAC with QEMU's 52:54:00 prefix.
fn random_mac() -> [u8; 6] {
    let mut r = [0u8; 3];
    // SAFETY: getrandom writes at most `r.len()` bytes into `r`, which is
    // valid for writes for the whole call.
    let n = unsafe { libc::getrandom(r.as_mut_ptr().cast(), r.len(), 0) };
    if n != r.len() as isize {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos() ^ std::process::id())
            .unwrap_or(1);
        r.copy_from_slice(&t.to_le_bytes()[..3]);
    }
    [0x52, 0x54, 0x00, r[0], r[1], r[2]]
}

fn run_daemon(a: DaemonArgs) -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let port = match (a.tap, a.packet) {
        (_, Some(p)) => PortSpec::Packet(p),
        (Some(t), None) => PortSpec::Tap(t),
        (None, None) => PortSpec::Tap("vur%d".to_string()),
    };
    let cfg = DaemonConfig {
        socket: a.socket,
        port,
        mac: a.mac.map(|m| m.0).unwrap_or_else(random_mac),
        mtu: a.mtu,
        rdma: a.rdma_ip,
        queue_size: a.queue_size,
        guest_mem: a.guest_mem,
        qemu: a.qemu,
        pvrdma_socket: a.pvrdma_socket,
        stream_socket: a.stream_socket,
        pvrdma: a.pvrdma,
        control: a.control,
        pcap: a.pcap.config(),
    };
    let mut out = io::stdout();
    match backend::daemon::run(cfg, &mut out) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", error_chain(&e));
            ExitCode::from(1)
        }
    }
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Decode a pcap or pcapng capture: one line per RoCEv2 frame with
    /// its headers and ICRC check, then a summary. Exits 1 if any RoCEv2
    /// frame is invalid or the file is truncated.
    ///
    /// Example: vhost-user-rdma decode tests/data/rxe-capture.pcap
    Decode {
        /// The capture file (pcap or pcapng; Ethernet or raw IP).
        file: PathBuf,
        /// Also print every BTH flag and the IP/UDP details of each frame.
        #[arg(short, long)]
        verbose: bool,
    },
    /// Measure the engine: two engines on one link, one JSON object per
    /// line with bandwidth, message rate and latency next to memcpy and
    /// CRC-32 baselines from the same run.
    ///
    /// Example: vhost-user-rdma perf --link memory --test write --max-size 1048576
    Perf {
        /// The link between the engines: `memory` (one core, in memory),
        /// `udp` (the real UDP link over loopback; needs CAP_NET_RAW),
        /// `veth` (the `packet` link on a veth pair between two private
        /// namespaces) or `tap` (two TAPs on a bridge in a private
        /// namespace); the last two need root.
        #[arg(long, value_enum, default_value = "memory")]
        link: backend::perf::PerfLink,
        /// Tests to run (repeat or comma-separate); all by default.
        #[arg(long, value_enum, value_delimiter = ',')]
        test: Vec<PerfTest>,
        /// Path MTU: 256, 512, 1024, 2048 or 4096.
        #[arg(long, default_value_t = 4096, value_parser = parse_mtu)]
        mtu: usize,
        /// Smallest message of the bandwidth tests, in bytes.
        #[arg(long, default_value_t = 64)]
        min_size: u32,
        /// Largest message of the bandwidth tests, in bytes (at most 1 MiB).
        #[arg(long, default_value_t = 1 << 20, value_parser = clap::value_parser!(u32).range(1..=1 << 20))]
        max_size: u32,
        /// Seconds spent on each measurement.
        #[arg(long, default_value_t = 0.5)]
        seconds: f64,
        /// On `--link tap`: write every packet on its own instead of
        /// gathering a burst's packets into GSO trains (for comparisons).
        #[arg(long)]
        no_tap_gso: bool,
    },
    /// Stand in for a stock RDMA tool on the other end of a real link:
    /// run our engine, speak the tool's TCP handshake, take the tool's
    /// arguments and print its result lines. Interoperates with the stock
    /// tool on kernel rxe or a RoCE NIC.
    ///
    /// Example (client): vhost-user-rdma peer --link tap:t0 --ip 10.77.0.2/24 ibv_rc_pingpong -g 1 -n 100 10.77.0.1
    Peer(PeerArgs),
    /// Show a running daemon's counters and verbs objects (PDs, CQs, MRs,
    /// QPs with their state and PSNs), read from its control socket.
    ///
    /// Example: vhost-user-rdma stats --json /run/vhost-user-rdma/vur0-ctl.sock
    Stats {
        /// The daemon's control socket (`--control`; by default
        /// `<link>-ctl.sock` in the daemon's socket directory, named in its
        /// log).
        socket: PathBuf,
        /// Print the daemon's JSON as is, one object per line.
        #[arg(long)]
        json: bool,
        /// Print again every SECS seconds until interrupted.
        #[arg(long, value_name = "SECS")]
        watch: Option<f64>,
    },
    /// Print the manual page (roff, built from these clap definitions).
    ///
    /// Example: vhost-user-rdma man > vhost-user-rdma.1
    Man,
}

/// The `peer` options, before the tool's name.
#[derive(Debug, clap::Args)]
struct PeerArgs {
    /// Where RoCEv2 goes: `tap:IFNAME` (a TAP device, created if missing;
    /// we answer ARP and NDP on it), `packet:IFNAME` (AF_PACKET on an
    /// existing interface, e.g. a NIC or veth) or `udp` (a kernel UDP
    /// socket on port 4791).
    #[arg(long)]
    link: backend::peer::LinkSpec,
    /// Our address on the link, ADDR[/PREFIX]; repeat for more (IPv4 and
    /// IPv6). On tap and packet, GID 0 is our link-local fe80:: address and
    /// these follow from GID 1, as on kernel rxe.
    #[arg(long = "ip", required = true)]
    ips: Vec<backend::peer::IpPrefix>,
    /// Our MAC on a TAP (default 02:76:72 and the address's last 3 bytes).
    #[arg(long)]
    mac: Option<backend::peer::Mac>,
    /// The port's active MTU (256 to 4096; default: what the interface
    /// carries, e.g. 1024 at interface MTU 1500; 4096 on udp).
    #[arg(long, value_parser = parse_mtu)]
    mtu: Option<usize>,
    /// As client, keep retrying the TCP connection for this many seconds
    /// while the server is not listening yet (the stock tools try once).
    #[arg(long, default_value_t = 0.0)]
    connect_timeout: f64,
    /// Fail when the RDMA traffic makes no progress for this many seconds.
    #[arg(long, default_value_t = 60.0)]
    stall_timeout: f64,
    #[command(flatten)]
    pcap: PcapArgs,
    /// The tool to stand in for (ibv_rc_pingpong, ibv_uc_pingpong or
    /// ibv_ud_pingpong), then its own arguments, then the server's address
    /// when we are the client.
    #[arg(
        required = true,
        trailing_var_arg = true,
        allow_hyphen_values = true,
        value_name = "TOOL [ARGS]..."
    )]
    tool: Vec<String>,
}

fn parse_mtu(s: &str) -> Result<usize, String> {
    let n: usize = s.parse().map_err(|_| format!("{s} is not a number"))?;
    transport::wire::Mtu::from_bytes(n)
        .map(|_| n)
        .map_err(|e| e.to_string())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let Some(command) = cli.command else {
        return run_daemon(cli.daemon);
    };
    match command {
        Command::Peer(p) => run_peer(p),
        Command::Man => {
            use clap::CommandFactory;
            let mut out = io::stdout();
            match clap_mangen::Man::new(Cli::command()).render(&mut out) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("error: cannot write the manual page: {e}");
                    ExitCode::from(1)
                }
            }
        }
        Command::Stats {
            socket,
            json,
            watch,
        } => run_stats(&socket, json, watch),
        Command::Decode { file, verbose } => run_decode(&file, verbose),
        Command::Perf {
            link,
            test,
            mtu,
            min_size,
            max_size,
            seconds,
            no_tap_gso,
        } => {
            let tests = if test.is_empty() {
                vec![
                    PerfTest::Write,
                    PerfTest::Read,
                    PerfTest::Send,
                    PerfTest::Rate,
                    PerfTest::Lat,
                ]
            } else {
                test
            };
            let Ok(mtu) = transport::wire::Mtu::from_bytes(mtu) else {
                return ExitCode::from(2);
            };
            if !(seconds > 0.0 && seconds <= 60.0) {
                eprintln!("error: --seconds must be between 0 and 60");
                return ExitCode::from(2);
            }
            let opts = PerfOptions {
                link,
                tests,
                mtu,
                min_size,
                max_size,
                duration: std::time::Duration::from_secs_f64(seconds),
                tap_gso: !no_tap_gso,
            };
            let mut out = io::stdout().lock();
            match backend::perf::run(&opts, &mut out) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("error: perf: {}", error_chain(&e));
                    ExitCode::from(1)
                }
            }
        }
    }
}

fn run_peer(p: PeerArgs) -> ExitCode {
    let secs = |what: &str, v: f64| {
        if (0.0..=86400.0).contains(&v) {
            Ok(std::time::Duration::from_secs_f64(v))
        } else {
            Err(format!(
                "error: --{what} must be between 0 and 86400 seconds"
            ))
        }
    };
    let (connect_timeout, stall_timeout) = match (
        secs("connect-timeout", p.connect_timeout),
        secs("stall-timeout", p.stall_timeout),
    ) {
        (Ok(c), Ok(s)) => (c, s),
        (Err(e), _) | (_, Err(e)) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    let opts = backend::peer::PeerOptions {
        link: p.link,
        ips: p.ips,
        mac: p.mac,
        mtu: p.mtu.and_then(|m| transport::wire::Mtu::from_bytes(m).ok()),
        connect_timeout,
        stall_timeout,
        pcap: p.pcap.config(),
    };
    let (tool, args) = p.tool.split_first().expect("clap requires the tool");
    let mut out = io::stdout().lock();
    match backend::peer::run(&opts, tool, args, &mut out) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let _ = out.flush();
            eprintln!("error: {tool}: {}", error_chain(&e));
            ExitCode::from(1)
        }
    }
}

fn run_decode(file: &std::path::Path, verbose: bool) -> ExitCode {
    let input = match File::open(file) {
        Ok(f) => io::BufReader::new(f),
        Err(e) => {
            eprintln!("error: cannot open {}: {e}", file.display());
            return ExitCode::from(1);
        }
    };
    let stdout = io::stdout();
    let mut out = io::BufWriter::new(stdout.lock());
    match decode(input, &mut out, verbose) {
        Ok(summary) if summary.success() => ExitCode::SUCCESS,
        Ok(_) => ExitCode::from(1),
        Err(e) => {
            drop(out);
            eprintln!("error: {}: {}", file.display(), error_chain(&e));
            ExitCode::from(1)
        }
    }
}

fn run_stats(socket: &std::path::Path, json: bool, watch: Option<f64>) -> ExitCode {
    if let Some(w) = watch
        && !(w > 0.0 && w.is_finite())
    {
        eprintln!("error: --watch needs a positive number of seconds");
        return ExitCode::from(2);
    }
    loop {
        let line = match backend::daemon::control::ask(socket, backend::daemon::control::STATS) {
            Ok(l) => l,
            Err(e) => {
                eprintln!(
                    "error: cannot read the daemon's control socket {}: {e}",
                    socket.display()
                );
                return ExitCode::from(1);
            }
        };
        let v: serde_json::Value = match serde_json::from_str(&line) {
            Ok(v) => v,
            Err(e) => {
                eprintln!("error: the daemon's answer is not JSON ({e}): {line}");
                return ExitCode::from(1);
            }
        };
        if let Some(err) = v.get("error").and_then(|e| e.as_str()) {
            eprintln!("error: the daemon refused the request: {err}");
            return ExitCode::from(1);
        }
        if json {
            println!("{v}");
        } else {
            print!("{}", backend::stats_table::render(&v));
        }
        match watch {
            Some(w) => std::thread::sleep(std::time::Duration::from_secs_f64(w)),
            None => return ExitCode::SUCCESS,
        }
    }
}
