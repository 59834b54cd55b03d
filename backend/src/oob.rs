//! The out-of-band messages the stock RDMA tools exchange over TCP before
//! any RDMA traffic: each side's LID, QPN, PSN, GID (and for perftest the
//! rkey, buffer address and outstanding-reads limit), as fixed-size ASCII
//! records. The `peer` command will speak them; the formats here are
//! checked byte for byte against a capture of the real tools.

use std::fmt::Write as _;

use transport::device::Gid;

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

#[cfg(test)]
mod tests {
    use super::*;

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
}
