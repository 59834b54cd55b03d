//! The invariant CRC (ICRC) of RoCEv2, computed exactly as Linux rxe
//! (`rxe_icrc.c`) and RoCE NICs compute it.
//!
//! The ICRC is the standard CRC-32 (IEEE 802.3 polynomial, reflected,
//! initial value and final XOR all ones) over:
//!
//! 1. eight bytes of 0xFF standing in for the masked LRH of native IB;
//! 2. the IP header with its variant fields set to all ones: IPv4 TOS, TTL
//!    and header checksum; IPv6 traffic class, flow label and hop limit;
//! 3. the UDP header with its checksum set to all ones;
//! 4. the BTH with byte 4 (FECN, BECN and the reserved bits) set to all
//!    ones;
//! 5. the extension headers, payload and pad, unmasked.
//!
//! It is written after the pad, least-significant byte first.

use super::{Error, ICRC_LEN, Reason, Result, bth::HEADER_LEN, check_room};

const UDP_LEN: usize = 8;
const MAX_IPV4_HEADER: usize = 60;
const IPV6_HEADER: usize = 40;
/// CRC-32 of the eight 0xFF bytes that stand in for the LRH, in the
/// finalized form `crc32fast` resumes from. (rxe seeds with 0xdebb20e3,
/// the same state before the final inversion.)
const LRH_STANDIN_CRC: u32 = 0x2144_df1c;

/// Computes the ICRC from the IP header, the UDP header and the transport
/// packet without its ICRC (BTH through pad). Use this where the headers
/// are not contiguous with the packet, e.g. when the kernel builds them.
pub fn compute_parts(ip_header: &[u8], udp_header: &[u8], ib: &[u8]) -> Result<u32> {
    check_room(udp_header.len(), UDP_LEN)?;
    check_room(ib.len(), HEADER_LEN)?;
    // Masked copy of IP + UDP + BTH, at most 60 + 8 + 12 bytes, on the stack.
    let mut masked = [0u8; MAX_IPV4_HEADER + UDP_LEN + HEADER_LEN];
    let ip_len = masked_ip_header(ip_header, &mut masked)?;
    let udp = &mut masked[ip_len..ip_len + UDP_LEN];
    udp.copy_from_slice(&udp_header[..UDP_LEN]);
    udp[6..8].fill(0xff);
    let bth_at = ip_len + UDP_LEN;
    let bth = &mut masked[bth_at..bth_at + HEADER_LEN];
    bth.copy_from_slice(&ib[..HEADER_LEN]);
    bth[4] = 0xff;

    let mut h = crc32fast::Hasher::new_with_initial(LRH_STANDIN_CRC);
    h.update(&masked[..bth_at + HEADER_LEN]);
    h.update(&ib[HEADER_LEN..]);
    Ok(h.finalize())
}

/// The CRC register (see [`crate::crc`]) after the part of the ICRC that
/// a link owns: the LRH stand-in and the masked IP and UDP headers. An
/// engine continues it over the transport packet
/// ([`crate::engine::Engine::handle_packet_unverified`]).
pub fn prefix_register(ip_header: &[u8], udp_header: &[u8]) -> Result<u32> {
    let mut masked = [0u8; MAX_IPV4_HEADER + UDP_LEN];
    let n = masked_prefix(ip_header, udp_header, &mut masked)?;
    Ok(crate::crc::update(!LRH_STANDIN_CRC, &masked[..n]))
}

/// The masked IP and UDP headers, as the ICRC covers them, into `out`;
/// returns their length.
fn masked_prefix(
    ip_header: &[u8],
    udp_header: &[u8],
    out: &mut [u8; MAX_IPV4_HEADER + UDP_LEN],
) -> Result<usize> {
    check_room(udp_header.len(), UDP_LEN)?;
    let ip_len = masked_ip_header(ip_header, out)?;
    let udp = &mut out[ip_len..ip_len + UDP_LEN];
    udp.copy_from_slice(&udp_header[..UDP_LEN]);
    udp[6..8].fill(0xff);
    Ok(ip_len + UDP_LEN)
}

/// [`prefix_register`] with a memory of the last headers: a run of
/// packets of one flow and size has the same masked headers (IPv4 IDs
/// aside), so a link keeps one of these per flow direction and pays for a
/// comparison instead of a CRC.
#[derive(Debug, Clone)]
pub struct PrefixCache {
    /// A plain IPv4 header (20 bytes) and the UDP header, masked, as
    /// three 64-bit words and one 32-bit word (IPv4 bytes 0-7, 8-15,
    /// UDP 0-7, IPv4 16-19), valid when `len` is 28.
    words: [u64; 3],
    word32: u32,
    key: [u8; MAX_IPV4_HEADER + UDP_LEN],
    len: usize,
    reg: u32,
    /// `reg` moved over `shifted.0` zero bytes, for [`join`]: a run of
    /// same-size packets needs the same shift.
    shifted: (usize, u32),
}

impl Default for PrefixCache {
    fn default() -> PrefixCache {
        PrefixCache {
            words: [0; 3],
            word32: 0,
            key: [0; MAX_IPV4_HEADER + UDP_LEN],
            len: 0,
            reg: 0,
            shifted: (usize::MAX, 0),
        }
    }
}

/// Word masks (native byte order) that set the bytes the ICRC masks to
/// ones: the TOS in IPv4 bytes 0-7; the TTL and the header checksum in
/// bytes 8-15; the checksum in the UDP header.
const IPV4_MASKS: [u64; 3] = [
    u64::from_ne_bytes([0, 0xff, 0, 0, 0, 0, 0, 0]),
    u64::from_ne_bytes([0xff, 0, 0xff, 0xff, 0, 0, 0, 0]),
    u64::from_ne_bytes([0, 0, 0, 0, 0, 0, 0xff, 0xff]),
];

impl PrefixCache {
    /// As [`prefix_register`].
    pub fn register(&mut self, ip_header: &[u8], udp_header: &[u8]) -> Result<u32> {
        // The usual case, a 20-byte IPv4 header: the headers are masked
        // and compared with the last ones in registers, with no masked
        // copy (and no small stores read back as one wide load, which
        // stalls).
        if let (Some(ip), Some(udp)) =
            (ip_header.first_chunk::<20>(), udp_header.first_chunk::<8>())
            && ip[0] == 0x45
        {
            // Whole-word loads (`ip` and `udp` are arrays: the conversions
            // cannot fail).
            let u64_at = |b: &[u8], i: usize| {
                b.get(i..i + 8)
                    .and_then(|s| <[u8; 8]>::try_from(s).ok())
                    .map_or(0, u64::from_ne_bytes)
            };
            let w = [
                u64_at(ip, 0) | IPV4_MASKS[0],
                u64_at(ip, 8) | IPV4_MASKS[1],
                u64_at(udp, 0) | IPV4_MASKS[2],
            ];
            let w32 = u32::from_ne_bytes(*ip.last_chunk::<4>().unwrap_or(&[0; 4]));
            let differ = (w[0] ^ self.words[0])
                | (w[1] ^ self.words[1])
                | (w[2] ^ self.words[2])
                | u64::from(w32 ^ self.word32);
            if self.len != 20 + UDP_LEN || differ != 0 {
                let mut bytes = [0u8; 20 + UDP_LEN];
                bytes[..8].copy_from_slice(&w[0].to_ne_bytes());
                bytes[8..16].copy_from_slice(&w[1].to_ne_bytes());
                bytes[16..20].copy_from_slice(&w32.to_ne_bytes());
                bytes[20..].copy_from_slice(&w[2].to_ne_bytes());
                self.reg = crate::crc::update(!LRH_STANDIN_CRC, &bytes);
                self.shifted.0 = usize::MAX;
                self.words = w;
                self.word32 = w32;
                // No byte key (see below) is 28 bytes long.
                self.len = 20 + UDP_LEN;
            }
            return Ok(self.reg);
        }
        let mut masked = [0u8; MAX_IPV4_HEADER + UDP_LEN];
        let n = masked_prefix(ip_header, udp_header, &mut masked)?;
        // Word by word, without a library call (headers are whole words).
        let word = |c: &[u8]| u32::from_ne_bytes([c[0], c[1], c[2], c[3]]);
        let same = masked
            .chunks_exact(4)
            .zip(self.key.chunks_exact(4))
            .take(n.div_ceil(4))
            .all(|(a, b)| word(a) == word(b));
        if n != self.len || !same {
            self.reg = crate::crc::update(!LRH_STANDIN_CRC, &masked[..n]);
            self.shifted.0 = usize::MAX;
            self.key = masked;
            self.len = n;
        }
        Ok(self.reg)
    }

    /// As [`fill_joined`]; without a register, the packet's part is
    /// computed here, continuing the remembered prefix.
    pub fn fill_joined(&mut self, l3: &mut [u8], ib_crc: Option<u32>) -> Result<u32> {
        let (ip, udp, ib) = split(l3)?;
        let ib = &ib[..ib.len() - ICRC_LEN];
        let prefix = self.register(ip, udp)?;
        let icrc = match ib_crc {
            Some(reg) => {
                if self.shifted.0 != ib.len() {
                    self.shifted = (ib.len(), crate::crc::shift(prefix, ib.len()));
                }
                // As `join`, with the prefix's shift remembered.
                !(self.shifted.1 ^ reg)
            }
            None => !header_register(prefix, ib)?,
        };
        debug_assert_eq!(
            Ok(icrc),
            compute_parts(ip, udp, ib),
            "the transport packet's register does not match its bytes"
        );
        let n = l3.len();
        l3[n - ICRC_LEN..].copy_from_slice(&icrc.to_le_bytes());
        Ok(icrc)
    }
}

/// The CRC register over transport headers `hdr` (BTH first, its byte 4
/// masked as the ICRC masks it), started from `reg`.
pub fn header_register(reg: u32, hdr: &[u8]) -> Result<u32> {
    check_room(hdr.len(), HEADER_LEN)?;
    let (bth, rest) = hdr.split_at(HEADER_LEN);
    // The BTH as two words in registers, byte 4 set to ones there (a
    // masked copy in memory, read back wider than it was written, stalls).
    let w0 = u64::from_le_bytes([bth[0], bth[1], bth[2], bth[3], 0xff, bth[5], bth[6], bth[7]]);
    let w1 = u32::from_le_bytes([bth[8], bth[9], bth[10], bth[11]]);
    let reg = crate::crc::update_u32(crate::crc::update_u64(reg, w0), w1);
    Ok(crate::crc::update(reg, rest))
}

/// Joins a link's prefix register (see [`prefix_register`]) and the
/// register of a transport packet without its ICRC, computed on its own
/// from zero over `ib_len` bytes ([`crate::engine::Transmit::ib_crc`]),
/// into the ICRC.
pub fn join(prefix: u32, ib_crc: u32, ib_len: usize) -> u32 {
    !(crate::crc::shift(prefix, ib_len) ^ ib_crc)
}

/// The ICRC of a transport packet `ib` (without its ICRC) behind the
/// given IP and UDP headers. With the packet's register `ib_crc` (as
/// [`crate::engine::Transmit::ib_crc`] carries it) only the headers are
/// read, and debug builds check the result against [`compute_parts`];
/// without it this is [`compute_parts`].
pub fn compute_joined(
    ip_header: &[u8],
    udp_header: &[u8],
    ib: &[u8],
    ib_crc: Option<u32>,
) -> Result<u32> {
    let Some(reg) = ib_crc else {
        return compute_parts(ip_header, udp_header, ib);
    };
    let icrc = join(prefix_register(ip_header, udp_header)?, reg, ib.len());
    debug_assert_eq!(
        Ok(icrc),
        compute_parts(ip_header, udp_header, ib),
        "the transport packet's register does not match its bytes"
    );
    Ok(icrc)
}

/// Fills in the ICRC of an IP datagram. With its transport packet's
/// register (`ib_crc`, from zero over the packet without its ICRC) only
/// the headers are read; without it the whole packet is. Returns the
/// value written.
pub fn fill_joined(l3: &mut [u8], ib_crc: Option<u32>) -> Result<u32> {
    let (ip, udp, ib) = split(l3)?;
    let icrc = compute_joined(ip, udp, &ib[..ib.len() - ICRC_LEN], ib_crc)?;
    let n = l3.len();
    l3[n - ICRC_LEN..].copy_from_slice(&icrc.to_le_bytes());
    Ok(icrc)
}

/// Copies the IP header into `out` with the variant fields masked and
/// returns its length.
fn masked_ip_header(ip: &[u8], out: &mut [u8]) -> Result<usize> {
    check_room(ip.len(), 1)?;
    match ip[0] >> 4 {
        4 => {
            let len = usize::from(ip[0] & 0x0f) * 4;
            if len < 20 {
                return Err(Error::Malformed {
                    layer: "IPv4",
                    reason: Reason::Value("header length below 20:", len as u64),
                });
            }
            check_room(ip.len(), len)?;
            out[..len].copy_from_slice(&ip[..len]);
            out[1] = 0xff; // TOS (DSCP + ECN)
            out[8] = 0xff; // TTL
            out[10..12].fill(0xff); // header checksum
            Ok(len)
        }
        6 => {
            check_room(ip.len(), IPV6_HEADER)?;
            out[..IPV6_HEADER].copy_from_slice(&ip[..IPV6_HEADER]);
            out[0] |= 0x0f; // traffic class, high nibble
            out[1..4].fill(0xff); // traffic class, low nibble + flow label
            out[7] = 0xff; // hop limit
            Ok(IPV6_HEADER)
        }
        v => Err(Error::Malformed {
            layer: "IP",
            reason: Reason::Value("version", u64::from(v)),
        }),
    }
}

/// Splits an IP datagram carrying RoCEv2 into (IP header, UDP header,
/// transport packet including its ICRC). IPv6 extension headers are not
/// supported, as in rxe.
fn split(l3: &[u8]) -> Result<(&[u8], &[u8], &[u8])> {
    check_room(l3.len(), 1)?;
    let ip_len = match l3[0] >> 4 {
        4 => usize::from(l3[0] & 0x0f) * 4,
        6 => IPV6_HEADER,
        v => {
            return Err(Error::Malformed {
                layer: "IP",
                reason: Reason::Value("version", u64::from(v)),
            });
        }
    };
    check_room(l3.len(), ip_len + UDP_LEN + HEADER_LEN + ICRC_LEN)?;
    let (ip, rest) = l3.split_at(ip_len);
    let (udp, ib) = rest.split_at(UDP_LEN);
    Ok((ip, udp, ib))
}

/// Computes the ICRC of an IP datagram (IP header through ICRC; the last
/// four bytes, the ICRC itself, are not covered).
pub fn compute(l3: &[u8]) -> Result<u32> {
    let (ip, udp, ib) = split(l3)?;
    compute_parts(ip, udp, &ib[..ib.len() - ICRC_LEN])
}

/// Checks the ICRC carried at the end of an IP datagram.
pub fn verify(l3: &[u8]) -> Result<()> {
    let computed = compute(l3)?;
    let t = &l3[l3.len() - ICRC_LEN..];
    let found = u32::from_le_bytes([t[0], t[1], t[2], t[3]]);
    if computed == found {
        Ok(())
    } else {
        Err(Error::BadIcrc { computed, found })
    }
}

/// Computes the ICRC of an IP datagram and writes it into its last four
/// bytes, least-significant byte first. Returns the value written.
pub fn fill(l3: &mut [u8]) -> Result<u32> {
    let icrc = compute(l3)?;
    let n = l3.len();
    l3[n - ICRC_LEN..].copy_from_slice(&icrc.to_le_bytes());
    Ok(icrc)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Frame 2 of the rxe capture (an RC ACK), from the IP header on.
    const ACK: &str = "45000030103f4000401115e20a4d00010a4d0002c12112b7001c00001100ffff00000011005463ed1f000001d795c908";

    fn hex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    #[test]
    fn lrh_standin_seed() {
        assert_eq!(crc32fast::hash(&[0xff; 8]), LRH_STANDIN_CRC);
        assert_eq!(!LRH_STANDIN_CRC, 0xdebb_20e3);
    }

    #[test]
    fn rxe_ack_verifies() {
        let pkt = hex(ACK);
        assert_eq!(compute(&pkt).unwrap(), 0x08c9_95d7);
        verify(&pkt).unwrap();
    }

    #[test]
    fn fill_rewrites_the_same_value() {
        let mut pkt = hex(ACK);
        let n = pkt.len();
        pkt[n - 4..].fill(0);
        assert!(matches!(verify(&pkt), Err(Error::BadIcrc { .. })));
        fill(&mut pkt).unwrap();
        assert_eq!(pkt, hex(ACK));
    }

    #[test]
    fn masked_fields_do_not_matter() {
        let pkt = hex(ACK);
        for (i, v) in [
            (1, 0x02),
            (8, 0x01),
            (10, 0x00),
            (11, 0x12),
            (26, 0xab),
            (27, 0xcd),
            (32, 0xc0),
        ] {
            let mut p = pkt.clone();
            p[i] = v;
            verify(&p).unwrap_or_else(|e| panic!("byte {i}: {e}"));
        }
    }

    #[test]
    fn registers_join_to_the_icrc() {
        let pkt = hex(ACK);
        let (ip, udp, ib) = split(&pkt).unwrap();
        let body = &ib[..ib.len() - ICRC_LEN];
        let whole = compute(&pkt).unwrap();
        // Receive side: the engine continues the link's register.
        let reg = header_register(prefix_register(ip, udp).unwrap(), body).unwrap();
        assert_eq!(!reg, whole);
        // Send side: the engine's register from zero, joined by the link.
        let ib_crc = header_register(0, body).unwrap();
        let mut p = pkt.clone();
        let n = p.len();
        p[n - 4..].fill(0);
        assert_eq!(fill_joined(&mut p, Some(ib_crc)).unwrap(), whole);
        assert_eq!(p, pkt);
        // The cache gives the same answers, also after the headers change.
        let mut cache = PrefixCache::default();
        for _ in 0..2 {
            assert_eq!(
                cache.register(ip, udp).unwrap(),
                prefix_register(ip, udp).unwrap()
            );
            let mut other = ip.to_vec();
            other[15] ^= 1; // destination address
            assert_eq!(
                cache.register(&other, udp).unwrap(),
                prefix_register(&other, udp).unwrap()
            );
            // A masked field alone does not change the register.
            other[8] = 1; // TTL
            assert_eq!(
                cache.register(&other, udp).unwrap(),
                prefix_register(&other, udp).unwrap()
            );
        }
        p[n - 4..].fill(0);
        assert_eq!(cache.fill_joined(&mut p, Some(ib_crc)).unwrap(), whole);
        p[n - 4..].fill(0);
        assert_eq!(cache.fill_joined(&mut p, None).unwrap(), whole);
        p[n - 4..].fill(0);
        assert_eq!(fill_joined(&mut p, None).unwrap(), whole);
    }

    #[test]
    fn prefix_cache_agrees_with_prefix_register_under_mutation() {
        // Headers of every kind the cache sees (plain IPv4, IPv4 with
        // options, IPv6), one random byte changed at a time: the cache
        // must hit exactly when the masked bytes are unchanged, which
        // shows as its register always equalling the uncached one.
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let mut cache = PrefixCache::default();
        let mut udp = [0x12u8, 0x34, 0x12, 0xb7, 0, 40, 0, 0];
        let mut v4 = [0u8; 24];
        v4[0] = 0x45;
        let mut v6 = [0u8; 40];
        v6[0] = 0x60;
        for round in 0..20_000 {
            let r = next();
            let kind = (r % 3) as usize;
            let i = (r >> 8) as usize;
            let b = (r >> 32) as u8;
            let ip: &[u8] = match kind {
                0 => {
                    if i % 29 < 28 {
                        let j = i % 28;
                        if j < 20 {
                            if j != 0 {
                                v4[j] = b;
                            }
                        } else {
                            udp[j - 20] = b;
                        }
                    }
                    v4[0] = 0x45;
                    &v4[..20]
                }
                1 => {
                    v4[20 + i % 4] = b;
                    v4[0] = 0x46;
                    &v4[..24]
                }
                _ => {
                    v6[1 + i % 39] = b;
                    &v6[..]
                }
            };
            assert_eq!(
                cache.register(ip, &udp).unwrap(),
                prefix_register(ip, &udp).unwrap(),
                "round {round}, kind {kind}"
            );
        }
    }

    #[test]
    fn truncated_and_bad_version() {
        assert!(matches!(compute(&[]), Err(Error::Truncated { .. })));
        assert!(matches!(
            compute(&hex(ACK)[..40]),
            Err(Error::Truncated { .. })
        ));
        assert!(matches!(compute(&[0x55; 64]), Err(Error::Malformed { .. })));
        assert!(matches!(compute(&[0x41; 64]), Err(Error::Malformed { .. })));
    }
}
