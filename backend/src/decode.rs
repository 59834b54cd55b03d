//! The `decode` subcommand: prints one line per RoCEv2 frame of a capture,
//! validates every header and ICRC, and summarises.
//!
//! A frame is RoCEv2 when it is UDP to port 4791. Other well-formed frames
//! are only counted. A RoCEv2 frame that fails header validation or its
//! ICRC, a frame whose outer headers are malformed or cut by the snap
//! length, and a capture that ends inside a record all make the run fail.

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    io::{self, Read, Write},
};

use transport::wire::{
    AethSyndrome, Error as WireError, ExtHeaders, Packet, PacketRepr, frame::RoceFrame,
};

use crate::capture::{Capture, CaptureError, Frame, LinkType};

/// Why decoding stopped before the end of the capture.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    /// The capture cannot be opened at all.
    #[error(transparent)]
    Capture(#[from] CaptureError),
    /// Writing the report failed.
    #[error("cannot write the report")]
    Output(#[source] io::Error),
}

/// Counts gathered over a capture.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Summary {
    /// Frames read.
    pub frames: usize,
    /// RoCEv2 frames.
    pub roce: usize,
    /// RoCEv2 frames whose headers and ICRC are valid.
    pub roce_ok: usize,
    /// RoCEv2 frames that failed header validation or the ICRC.
    pub roce_bad: usize,
    /// Well-formed frames that are not RoCEv2.
    pub other: usize,
    /// Frames whose outer headers are malformed or were cut by the snap
    /// length, so they cannot be classified.
    pub malformed: usize,
    /// Valid RoCEv2 frames per opcode name.
    pub by_opcode: BTreeMap<String, usize>,
    /// Set when the capture ended with an error (e.g. truncated file).
    pub file_error: Option<String>,
}

impl Summary {
    /// Whether every RoCEv2 frame was valid and the whole file was read.
    pub fn success(&self) -> bool {
        self.roce_bad == 0 && self.malformed == 0 && self.file_error.is_none()
    }
}

/// Decodes a capture, writing the per-frame lines and the summary to
/// `out`.
pub fn decode<R: Read, W: Write>(
    input: R,
    out: &mut W,
    verbose: bool,
) -> Result<Summary, DecodeError> {
    let mut capture = Capture::open(input)?;
    let mut summary = Summary::default();
    let mut line = String::new();
    while let Some(next) = capture.next_frame() {
        match next {
            Ok(frame) => {
                line.clear();
                summary.frames += 1;
                decode_frame(&frame, verbose, &mut summary, &mut line);
                out.write_all(line.as_bytes())
                    .map_err(DecodeError::Output)?;
            }
            Err(e) => {
                let msg = error_chain(&e);
                writeln!(out, "error: {msg}").map_err(DecodeError::Output)?;
                summary.file_error = Some(msg);
                break;
            }
        }
    }
    write_summary(&summary, out).map_err(DecodeError::Output)?;
    Ok(summary)
}

/// Formats an error with its chain of causes on one line.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let _ = write!(s, ": {c}");
        cur = c.source();
    }
    s
}

fn decode_frame(frame: &Frame<'_>, verbose: bool, summary: &mut Summary, out: &mut String) {
    let n = frame.number;
    let data: &[u8] = &frame.data;
    let parsed = match frame.link {
        LinkType::Ethernet => RoceFrame::parse_ethernet(data),
        LinkType::RawIp => RoceFrame::parse_ip(data),
        LinkType::Other(t) => {
            summary.other += 1;
            if verbose {
                let _ = writeln!(out, "{n:>6}  (link type {t}, not decoded)");
            }
            return;
        }
    };
    let cut = (data.len() as u64) < u64::from(frame.orig_len);
    let rf = match parsed {
        Ok(rf) => rf,
        Err(WireError::NotRoce(why)) if !cut => {
            summary.other += 1;
            if verbose {
                let _ = writeln!(out, "{n:>6}  (not RoCEv2: {why})");
            }
            return;
        }
        Err(e) => {
            summary.malformed += 1;
            let _ = if cut {
                writeln!(
                    out,
                    "{n:>6}  MALFORMED: only {} of {} bytes were captured (snap length); cannot check",
                    data.len(),
                    frame.orig_len
                )
            } else {
                writeln!(out, "{n:>6}  MALFORMED: {e}")
            };
            return;
        }
    };
    summary.roce += 1;
    let ip = &rf.repr.ip;
    let _ = write!(
        out,
        "{n:>6}  {}:{} → {}  ",
        ip.src_addr(),
        rf.repr.udp.source_port,
        ip.dst_addr()
    );
    if cut {
        summary.roce_bad += 1;
        let _ = writeln!(
            out,
            "INVALID: only {} of {} bytes were captured (snap length)",
            data.len(),
            frame.orig_len
        );
        return;
    }
    let packet =
        match Packet::new_checked(rf.ib).and_then(|p| PacketRepr::parse(&p).map(|r| (p, r))) {
            Ok(v) => v,
            Err(e) => {
                summary.roce_bad += 1;
                let _ = writeln!(out, "INVALID: {e}");
                return;
            }
        };
    let (pkt, repr) = packet;
    let op = repr.bth.opcode;
    let info = pkt.info();
    let name = match op.transport() {
        transport::wire::Transport::Cnp => info.name.to_string(),
        t => format!("{} {}", t.name(), info.name),
    };
    let _ = write!(
        out,
        "{name}  qp={:#08x} psn={} ack={}",
        repr.bth.dest_qp,
        repr.bth.psn,
        u8::from(repr.bth.ack_req)
    );
    write_ext_headers(&repr.ext, out);
    let _ = write!(out, "  payload={}", repr.payload_len);
    match rf.verify_icrc() {
        Ok(()) => {
            summary.roce_ok += 1;
            *summary.by_opcode.entry(op.to_string()).or_default() += 1;
            let _ = writeln!(out, "  icrc=ok");
        }
        Err(WireError::BadIcrc { computed, found }) => {
            summary.roce_bad += 1;
            let _ = writeln!(
                out,
                "  icrc=BAD (carried {found:#010x}, computed {computed:#010x})"
            );
        }
        Err(e) => {
            summary.roce_bad += 1;
            let _ = writeln!(out, "  icrc=BAD ({e})");
        }
    }
    if verbose {
        let b = &repr.bth;
        let _ = writeln!(
            out,
            "        bth: se={} m={} pad={} pkey={:#06x} fecn={} becn={}  ip: ecn={} ttl/hops={}  udp: sport={} csum={:#06x}  icrc={:#010x}",
            u8::from(b.solicited),
            u8::from(b.mig_req),
            b.pad_count,
            b.pkey,
            u8::from(b.fecn),
            u8::from(b.becn),
            ip.ecn(),
            match ip {
                transport::wire::frame::IpRepr::V4(h) => h.time_to_live,
                transport::wire::frame::IpRepr::V6(h) => h.hop_limit,
            },
            rf.repr.udp.source_port,
            rf.repr.udp.checksum,
            pkt.icrc()
        );
    }
}

fn write_ext_headers(e: &ExtHeaders, out: &mut String) {
    if let Some(h) = e.deth {
        let _ = write!(out, " DETH(qkey={:#x} sqp={:#x})", h.qkey, h.src_qp);
    }
    if let Some(h) = e.feth {
        let _ = write!(
            out,
            " FETH(plt={} sel={})",
            h.placement_type, h.selectivity_level
        );
    }
    if let Some(h) = e.reth {
        let _ = write!(
            out,
            " RETH(va={:#x} rkey={:#x} len={})",
            h.va, h.rkey, h.dma_len
        );
    }
    if let Some(h) = e.atomic_eth {
        let _ = write!(
            out,
            " AtomicETH(va={:#x} rkey={:#x} swap_add={:#x} cmp={:#x})",
            h.va, h.rkey, h.swap_add, h.compare
        );
    }
    if let Some(h) = e.aeth {
        let _ = match h.syndrome {
            AethSyndrome::Ack { credits } => {
                write!(out, " AETH(ACK credits={credits} msn={})", h.msn)
            }
            AethSyndrome::RnrNak { timer } => {
                write!(out, " AETH(RNR-NAK timer={timer} msn={})", h.msn)
            }
            AethSyndrome::Nak(code) => write!(out, " AETH(NAK {code:?} msn={})", h.msn),
            AethSyndrome::Reserved(v) => write!(out, " AETH(reserved {v} msn={})", h.msn),
        };
    }
    if let Some(h) = e.atomic_ack_eth {
        let _ = write!(out, " AtomicAckETH(orig={:#x})", h.orig);
    }
    if let Some(h) = e.imm_dt {
        let _ = write!(out, " ImmDt({:#010x})", h.imm);
    }
    if let Some(h) = e.ieth {
        let _ = write!(out, " IETH(rkey={:#x})", h.rkey);
    }
}

fn write_summary<W: Write>(s: &Summary, out: &mut W) -> io::Result<()> {
    writeln!(
        out,
        "{} frames: {} RoCEv2 ({} ok, {} bad), {} other, {} malformed",
        s.frames, s.roce, s.roce_ok, s.roce_bad, s.other, s.malformed
    )?;
    for (name, count) in &s.by_opcode {
        writeln!(out, "  {name:<36} {count}")?;
    }
    if let Some(e) = &s.file_error {
        writeln!(out, "capture incomplete: {e}")?;
    }
    writeln!(out, "result: {}", if s.success() { "PASS" } else { "FAIL" })
}
