//! The out-of-band messages the stock RDMA tools exchange over TCP around
//! their RDMA traffic: each side's LID, QPN, PSN, GID (and for perftest the
//! rkey, buffer address and outstanding-reads limit) as fixed-size ASCII
//! records, and perftest's version, system data, MTU and result messages.
//! Every message is one write of a fixed size with no framing; in each
//! exchange the client writes first and the server reads first
//! ([`exchange`]). The `peer` command will speak them; the formats here
//! are checked byte for byte against a capture of the real tools.

use std::{
    fmt::Write as _,
    io::{self, Read, Write},
};

use transport::{device::Gid, wire::Mtu};

/// A record that does not have the expected form.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OobError {
    /// The record has the wrong length.
    #[error("{what}: expected {expected} bytes, got {got}")]
    Length {
        /// Which record.
        what: &'static str,
        /// Expected length.
        expected: usize,
        /// Actual length.
        got: usize,
    },
    /// A field is not the hexadecimal number of the expected width.
    #[error("{what}: field {field} is not {width} hex digits")]
    Field {
        /// Which record.
        what: &'static str,
        /// Field index.
        field: usize,
        /// Expected number of digits.
        width: usize,
    },
}

/// Parses `fields` colon-terminated hex fields of the given widths from a
/// NUL-terminated ASCII record; `last_unterminated` allows the final field
/// to end at the NUL instead of a colon.
fn fields(
    what: &'static str,
    rec: &[u8],
    widths: &[usize],
    last_unterminated: bool,
) -> Result<Vec<u64>, OobError> {
    let mut out = Vec::with_capacity(widths.len());
    let mut at = 0;
    for (i, &w) in widths.iter().enumerate() {
        let bad = OobError::Field {
            what,
            field: i,
            width: w,
        };
        let digits = rec.get(at..at + w).ok_or(bad.clone())?;
        if !digits.iter().all(u8::is_ascii_hexdigit) {
            return Err(bad);
        }
        let text = std::str::from_utf8(digits).map_err(|_| bad.clone())?;
        out.push(u64::from_str_radix(text, 16).map_err(|_| bad.clone())?);
        at += w;
        let last = i + 1 == widths.len();
        let sep = rec.get(at).copied();
        match (last && last_unterminated, sep) {
            (true, Some(0)) => {}
            (_, Some(b':')) => at += 1,
            _ => return Err(bad),
        }
    }
    Ok(out)
}

/// What `ibv_rc_pingpong`, `ibv_uc_pingpong` and `ibv_ud_pingpong` send:
/// `LID:QPN:PSN:GID` as `%04x:%06x:%06x:` plus the GID as 32 hex digits and
/// a NUL, 52 bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PingpongDest {
    /// LID (0 on RoCE).
    pub lid: u16,
    /// QP number.
    pub qpn: u32,
    /// First PSN.
    pub psn: u32,
    /// GID.
    pub gid: Gid,
}

impl PingpongDest {
    /// Size of the record.
    pub const LEN: usize = 52;

    /// The record as the tools send it.
    pub fn to_wire(&self) -> [u8; Self::LEN] {
        let mut s = String::with_capacity(Self::LEN);
        let _ = write!(
            s,
            "{:04x}:{:06x}:{:06x}:",
            self.lid,
            self.qpn & 0xff_ffff,
            self.psn & 0xff_ffff
        );
        for b in self.gid.0 {
            let _ = write!(s, "{b:02x}");
        }
        let mut out = [0u8; Self::LEN];
        out[..s.len()].copy_from_slice(s.as_bytes());
        out
    }

    /// Parses a record.
    pub fn parse(rec: &[u8]) -> Result<PingpongDest, OobError> {
        const WHAT: &str = "pingpong address";
        if rec.len() != Self::LEN {
            return Err(OobError::Length {
                what: WHAT,
                expected: Self::LEN,
                got: rec.len(),
            });
        }
        let f = fields(WHAT, &rec[..19], &[4, 6, 6], false)?;
        let gid_hex = &rec[19..51];
        let bad = OobError::Field {
            what: WHAT,
            field: 3,
            width: 32,
        };
        if rec[51] != 0 || !gid_hex.iter().all(u8::is_ascii_hexdigit) {
            return Err(bad);
        }
        let mut gid = [0u8; 16];
        for (i, g) in gid.iter_mut().enumerate() {
            let pair = std::str::from_utf8(&gid_hex[2 * i..2 * i + 2]).map_err(|_| bad.clone())?;
            *g = u8::from_str_radix(pair, 16).map_err(|_| bad.clone())?;
        }
        Ok(PingpongDest {
            lid: f[0] as u16,
            qpn: f[1] as u32,
            psn: f[2] as u32,
            gid: Gid(gid),
        })
    }
}

/// What perftest 4.5 sends for each QP (`KEY_PRINT_FMT_GID`):
/// `%04x:%04x:%06x:%06x:%08x:%016llx:` (LID, outstanding reads, QPN, PSN,
/// rkey, buffer address), the 16 GID bytes as `%02x:`, the SRQ number as
/// `%08x:`, and a NUL; 108 bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PerftestDest {
    /// LID (0 on RoCE).
    pub lid: u16,
    /// Outstanding RDMA READs / atomics the side accepts.
    pub out_reads: u16,
    /// QP number.
    pub qpn: u32,
    /// First PSN.
    pub psn: u32,
    /// Remote key of the buffer.
    pub rkey: u32,
    /// Address of the buffer.
    pub vaddr: u64,
    /// GID.
    pub gid: Gid,
    /// SRQ number (0 without SRQ).
    pub srqn: u32,
}

impl PerftestDest {
    /// Size of the record.
    pub const LEN: usize = 108;

    /// The record as perftest sends it.
    pub fn to_wire(&self) -> [u8; Self::LEN] {
        let mut s = String::with_capacity(Self::LEN);
        let _ = write!(
            s,
            "{:04x}:{:04x}:{:06x}:{:06x}:{:08x}:{:016x}:",
            self.lid,
            self.out_reads,
            self.qpn & 0xff_ffff,
            self.psn & 0xff_ffff,
            self.rkey,
            self.vaddr
        );
        for b in self.gid.0 {
            let _ = write!(s, "{b:02x}:");
        }
        let _ = write!(s, "{:08x}:", self.srqn);
        let mut out = [0u8; Self::LEN];
        out[..s.len()].copy_from_slice(s.as_bytes());
        out
    }

    /// Parses a record.
    pub fn parse(rec: &[u8]) -> Result<PerftestDest, OobError> {
        const WHAT: &str = "perftest address";
        if rec.len() != Self::LEN {
            return Err(OobError::Length {
                what: WHAT,
                expected: Self::LEN,
                got: rec.len(),
            });
        }
        let mut widths = vec![4, 4, 6, 6, 8, 16];
        widths.extend([2; 16]);
        widths.push(8);
        let f = fields(WHAT, rec, &widths, false)?;
        if rec[107] != 0 {
            return Err(OobError::Field {
                what: WHAT,
                field: widths.len(),
                width: 0,
            });
        }
        let mut gid = [0u8; 16];
        for (g, v) in gid.iter_mut().zip(&f[6..22]) {
            *g = *v as u8;
        }
        Ok(PerftestDest {
            lid: f[0] as u16,
            out_reads: f[1] as u16,
            qpn: f[2] as u32,
            psn: f[3] as u32,
            rkey: f[4] as u32,
            vaddr: f[5],
            gid: Gid(gid),
            srqn: f[22] as u32,
        })
    }
}

impl PerftestDest {
    /// Size of the binary record (`struct pingpong_dest` on x86-64) that
    /// perftest sends over its rdma_cm control connection (`-R`).
    pub const CM_LEN: usize = 56;

    /// The binary record perftest sends with `-R`: LID, outstanding
    /// reads, QPN, PSN and rkey as big-endian 32-bit words, 4 bytes of
    /// padding, the buffer address as a big-endian 64-bit word, the 16 GID
    /// bytes, the SRQ number and the GID index (big-endian 32-bit words).
    pub fn to_cm_wire(&self, gid_index: u32) -> [u8; Self::CM_LEN] {
        let mut out = [0u8; Self::CM_LEN];
        out[0..4].copy_from_slice(&u32::from(self.lid).to_be_bytes());
        out[4..8].copy_from_slice(&u32::from(self.out_reads).to_be_bytes());
        out[8..12].copy_from_slice(&self.qpn.to_be_bytes());
        out[12..16].copy_from_slice(&self.psn.to_be_bytes());
        out[16..20].copy_from_slice(&self.rkey.to_be_bytes());
        out[24..32].copy_from_slice(&self.vaddr.to_be_bytes());
        out[32..48].copy_from_slice(&self.gid.0);
        out[48..52].copy_from_slice(&self.srqn.to_be_bytes());
        out[52..56].copy_from_slice(&gid_index.to_be_bytes());
        out
    }

    /// Parses the binary record of [`PerftestDest::to_cm_wire`]. The
    /// padding and the GID index are not read (perftest ignores them
    /// too); the LID and the outstanding reads must fit 16 bits.
    pub fn parse_cm(rec: &[u8]) -> Result<PerftestDest, OobError> {
        const WHAT: &str = "perftest rdma_cm address";
        let rec: &[u8; Self::CM_LEN] = rec.try_into().map_err(|_| OobError::Length {
            what: WHAT,
            expected: Self::CM_LEN,
            got: rec.len(),
        })?;
        let w = |at: usize| u32::from_be_bytes(rec[at..at + 4].try_into().expect("4"));
        let narrow = |field: usize, v: u32| {
            u16::try_from(v).map_err(|_| OobError::Field {
                what: WHAT,
                field,
                width: 4,
            })
        };
        let mut gid = [0u8; 16];
        gid.copy_from_slice(&rec[32..48]);
        Ok(PerftestDest {
            lid: narrow(0, w(0))?,
            out_reads: narrow(1, w(4))?,
            qpn: w(8),
            psn: w(12),
            rkey: w(16),
            vaddr: u64::from_be_bytes(rec[24..32].try_into().expect("8")),
            gid: Gid(gid),
            srqn: w(48),
        })
    }
}

/// Which end of the TCP connection we are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Connected to the server; writes first in every exchange.
    Client,
    /// Accepted the connection; reads first in every exchange.
    Server,
}

/// One exchange of fixed-size messages: the client writes `ours` then
/// reads, the server reads then writes. Returns the peer's message.
pub fn exchange<S: Read + Write>(
    stream: &mut S,
    role: Role,
    ours: &[u8],
    theirs_len: usize,
) -> io::Result<Vec<u8>> {
    let mut theirs = vec![0u8; theirs_len];
    match role {
        Role::Client => {
            stream.write_all(ours)?;
            stream.read_exact(&mut theirs)?;
        }
        Role::Server => {
            stream.read_exact(&mut theirs)?;
            stream.write_all(ours)?;
        }
    }
    Ok(theirs)
}

/// The version perftest 4.5 reports and that we present: 16 bytes,
/// NUL-padded ASCII.
pub const PERFTEST_VERSION: &[u8; 16] = b"6.06\0\0\0\0\0\0\0\0\0\0\0\0";

/// The version number in a peer's 16-byte version message.
pub fn parse_perftest_version(msg: &[u8]) -> Result<f64, OobError> {
    let bad = OobError::Field {
        what: "perftest version",
        field: 0,
        width: 16,
    };
    if msg.len() != 16 {
        return Err(OobError::Length {
            what: "perftest version",
            expected: 16,
            got: msg.len(),
        });
    }
    let end = msg.iter().position(|&b| b == 0).unwrap_or(16);
    std::str::from_utf8(&msg[..end])
        .ok()
        .and_then(|t| t.parse().ok())
        .ok_or(bad)
}

/// A 4-byte big-endian integer (perftest's `hton_int`), as the system-data
/// exchange sends the page size and cache-line size.
pub fn encode_u32(v: u32) -> [u8; 4] {
    v.to_be_bytes()
}

/// The MTU message: the `enum ibv_mtu` value (1 = 256 … 5 = 4096) as a
/// decimal string with its NUL, 2 bytes.
pub fn encode_mtu(mtu: Mtu) -> [u8; 2] {
    let code = match mtu {
        Mtu::Mtu256 => b'1',
        Mtu::Mtu512 => b'2',
        Mtu::Mtu1024 => b'3',
        Mtu::Mtu2048 => b'4',
        Mtu::Mtu4096 => b'5',
    };
    [code, 0]
}

/// Parses the MTU message.
pub fn parse_mtu(msg: &[u8]) -> Result<Mtu, OobError> {
    let bad = OobError::Field {
        what: "perftest MTU",
        field: 0,
        width: 1,
    };
    match msg {
        [c @ b'1'..=b'5', 0] => Ok(Mtu::ALL[usize::from(c - b'1')]),
        [_, _] => Err(bad),
        _ => Err(OobError::Length {
            what: "perftest MTU",
            expected: 2,
            got: msg.len(),
        }),
    }
}

/// perftest's bandwidth report (`struct bw_report_data`), exchanged after
/// a one-way bandwidth test as five 8-byte big-endian values, client
/// first. A one-way server sends whatever its stack held; only the
/// client's report is meaningful.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BwReport {
    /// Message size in bytes.
    pub size: u64,
    /// Iterations.
    pub iters: u64,
    /// Peak bandwidth in MiB/s.
    pub bw_peak: f64,
    /// Average bandwidth in MiB/s.
    pub bw_avg: f64,
    /// Average message rate in millions per second.
    pub msg_rate: f64,
}

impl BwReport {
    /// The five messages, in order.
    pub fn to_wire(&self) -> [[u8; 8]; 5] {
        [
            self.size.to_be_bytes(),
            self.iters.to_be_bytes(),
            self.bw_peak.to_bits().to_be_bytes(),
            self.bw_avg.to_bits().to_be_bytes(),
            self.msg_rate.to_bits().to_be_bytes(),
        ]
    }

    /// Parses the five messages.
    pub fn parse(msgs: &[[u8; 8]; 5]) -> BwReport {
        let u = |i: usize| u64::from_be_bytes(msgs[i]);
        BwReport {
            size: u(0),
            iters: u(1),
            bw_peak: f64::from_bits(u(2)),
            bw_avg: f64::from_bits(u(3)),
            msg_rate: f64::from_bits(u(4)),
        }
    }
}

/// What both sides write when they close: `"done"` and its NUL. Nobody
/// reads it back.
pub const DONE: &[u8; 5] = b"done\0";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_messages() {
        assert_eq!(parse_perftest_version(PERFTEST_VERSION), Ok(6.06));
        assert!(parse_perftest_version(b"6.06").is_err());
        assert!(parse_perftest_version(&[b'x'; 16]).is_err());
        for m in Mtu::ALL {
            assert_eq!(parse_mtu(&encode_mtu(m)), Ok(m));
        }
        assert_eq!(encode_mtu(Mtu::Mtu1024), *b"3\0");
        assert!(parse_mtu(b"6\0").is_err());
        assert!(parse_mtu(b"3").is_err());
        assert_eq!(encode_u32(4096), [0, 0, 0x10, 0]);
    }

    #[test]
    fn exchange_order() {
        // A stream that logs writes and serves reads from a script.
        struct Script {
            input: std::io::Cursor<Vec<u8>>,
            log: Vec<(char, usize)>,
        }
        impl Read for Script {
            fn read(&mut self, b: &mut [u8]) -> io::Result<usize> {
                let n = self.input.read(b)?;
                self.log.push(('r', n));
                Ok(n)
            }
        }
        impl Write for Script {
            fn write(&mut self, b: &[u8]) -> io::Result<usize> {
                self.log.push(('w', b.len()));
                Ok(b.len())
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        let mut s = Script {
            input: std::io::Cursor::new(b"peer".to_vec()),
            log: vec![],
        };
        assert_eq!(exchange(&mut s, Role::Client, b"me", 4).unwrap(), b"peer");
        assert_eq!(s.log.first(), Some(&('w', 2)));
        let mut s = Script {
            input: std::io::Cursor::new(b"peer".to_vec()),
            log: vec![],
        };
        exchange(&mut s, Role::Server, b"me", 4).unwrap();
        assert_eq!(s.log.first().map(|e| e.0), Some('r'));
        let mut s = Script {
            input: std::io::Cursor::new(b"pe".to_vec()),
            log: vec![],
        };
        assert!(
            exchange(&mut s, Role::Server, b"me", 4).is_err(),
            "short read"
        );
    }

    #[test]
    fn pingpong_round_trip_and_errors() {
        let d = PingpongDest {
            lid: 0,
            qpn: 0x11,
            psn: 0x5463ed,
            gid: Gid::from_ip("10.77.0.2".parse().unwrap()),
        };
        let w = d.to_wire();
        assert_eq!(
            &w[..],
            &b"0000:000011:5463ed:00000000000000000000ffff0a4d0002\0"[..]
        );
        assert_eq!(PingpongDest::parse(&w), Ok(d));
        assert!(matches!(
            PingpongDest::parse(&w[..51]),
            Err(OobError::Length { .. })
        ));
        let mut bad = w;
        bad[7] = b'g';
        assert!(matches!(
            PingpongDest::parse(&bad),
            Err(OobError::Field { field: 1, .. })
        ));
        let mut bad = w;
        bad[51] = b'0';
        assert!(PingpongDest::parse(&bad).is_err());
    }

    #[test]
    fn perftest_round_trip_and_errors() {
        let d = PerftestDest {
            lid: 0,
            out_reads: 1,
            qpn: 0x14,
            psn: 0x79aab4,
            rkey: 0x5a2,
            vaddr: 0x0000_555d_6d60_0000,
            gid: Gid::from_ip("10.77.0.2".parse().unwrap()),
            srqn: 0,
        };
        let w = d.to_wire();
        assert_eq!(
            &w[..],
            &b"0000:0001:000014:79aab4:000005a2:0000555d6d600000:00:00:00:00:00:00:00:00:00:00:ff:ff:0a:4d:00:02:00000000:\0"[..]
        );
        assert_eq!(PerftestDest::parse(&w), Ok(d));
        let mut bad = w;
        bad[4] = b'-';
        assert!(PerftestDest::parse(&bad).is_err());
        assert!(PerftestDest::parse(&[0u8; 108]).is_err());
    }

    #[test]
    fn perftest_cm_record_layout_and_errors() {
        let d = PerftestDest {
            lid: 0,
            out_reads: 16,
            qpn: 0x11,
            psn: 0x886150,
            rkey: 0x20b,
            vaddr: 0x7f27_b0c0_b000,
            gid: Gid::from_ip("10.77.0.1".parse().unwrap()),
            srqn: 0,
        };
        let w = d.to_cm_wire(1);
        let mut want = Vec::new();
        for v in [0u32, 16, 0x11, 0x886150, 0x20b, 0] {
            want.extend(v.to_be_bytes());
        }
        want.extend(0x7f27_b0c0_b000u64.to_be_bytes());
        want.extend([0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 10, 77, 0, 1]);
        want.extend([0, 0, 0, 0, 0, 0, 0, 1]);
        assert_eq!(&w[..], &want[..]);
        assert_eq!(PerftestDest::parse_cm(&w), Ok(d));
        // perftest leaves the padding uninitialised: ignored.
        let mut padded = w;
        padded[20..24].copy_from_slice(&[0xde, 0xad, 0xbe, 0xef]);
        assert_eq!(PerftestDest::parse_cm(&padded), Ok(d));
        let mut bad = w;
        bad[0] = 1;
        assert!(PerftestDest::parse_cm(&bad).is_err());
        assert!(PerftestDest::parse_cm(&w[..55]).is_err());
    }
}
