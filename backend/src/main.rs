//! The `vhost-user-rdma` binary: parses the command line with clap and
//! runs the chosen subcommand.
//!
//! Only `decode` exists so far; the daemon (the default with no
//! subcommand, once built) and `peer` are not built yet.

use std::{fs::File, io, path::PathBuf, process::ExitCode};

use backend::decode::{decode, error_chain};
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
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Decode { file, verbose } => run_decode(&file, verbose),
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
