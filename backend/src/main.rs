//! The `vhost-user-rdma` binary: parses the command line with clap and
//! runs the chosen subcommand.
//!
//! Only `decode` exists so far; the daemon (the default with no
//! subcommand, once built) and `peer` are not built yet.

use std::{fs::File, io, path::PathBuf, process::ExitCode};

use backend::{
    decode::{decode, error_chain},
    perf::{PerfOptions, PerfTest},
};
use clap::{Parser, Subcommand};

/// Paravirtual RDMA for QEMU guests over a soft RoCEv2 engine.
#[derive(Debug, Parser)]
#[command(name = "vhost-user-rdma", version, arg_required_else_help = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
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
        /// The link between the engines: `memory` (one core, in memory) or
        /// `udp` (the real UDP link over loopback; needs CAP_NET_RAW).
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
    },
}

fn parse_mtu(s: &str) -> Result<usize, String> {
    let n: usize = s.parse().map_err(|_| format!("{s} is not a number"))?;
    transport::wire::Mtu::from_bytes(n)
        .map(|_| n)
        .map_err(|e| e.to_string())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Decode { file, verbose } => run_decode(&file, verbose),
        Command::Perf {
            link,
            test,
            mtu,
            min_size,
            max_size,
            seconds,
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
