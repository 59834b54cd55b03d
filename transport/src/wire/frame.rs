//! The outer framing of RoCEv2: Ethernet II (optionally one 802.1Q tag),
//! IPv4 or IPv6, and UDP to port 4791, around the transport packet.
//!
//! Parsing and writing of these headers is done by `etherparse`; this
//! module only classifies frames as RoCEv2, locates the IP datagram and the
//! transport packet inside them for the ICRC, and writes the outer headers
//! in front of a transport packet.

use etherparse::{
    Ethernet2Header, IpNumber, Ipv4Header, Ipv6Header, LinkExtSlice, LinkSlice, NetSlice,
    SingleVlanHeader, SlicedPacket, TransportSlice, UdpHeader,
};

use super::{Error, ROCE_V2_UDP_PORT, Reason, Result, check_room, icrc};

/// The IP header of a RoCEv2 frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IpRepr {
    /// IPv4, possibly with options.
    V4(Ipv4Header),
    /// IPv6 without extension headers.
    V6(Ipv6Header),
}

impl IpRepr {
    /// Length of the serialized header.
    pub fn header_len(&self) -> usize {
        match self {
            IpRepr::V4(h) => h.header_len(),
            IpRepr::V6(_) => Ipv6Header::LEN,
        }
    }

    /// Source address.
    pub fn src_addr(&self) -> std::net::IpAddr {
        match self {
            IpRepr::V4(h) => h.source.into(),
            IpRepr::V6(h) => h.source.into(),
        }
    }

    /// Destination address.
    pub fn dst_addr(&self) -> std::net::IpAddr {
        match self {
            IpRepr::V4(h) => h.destination.into(),
            IpRepr::V6(h) => h.destination.into(),
        }
    }

    /// The two ECN bits (IPv4 TOS or IPv6 traffic class, low bits).
    pub fn ecn(&self) -> u8 {
        match self {
            IpRepr::V4(h) => h.ecn.value(),
            IpRepr::V6(h) => h.traffic_class & 0x3,
        }
    }
}

/// The headers in front of the transport packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FrameRepr {
    /// Ethernet II header; `None` for a bare IP datagram.
    pub ethernet: Option<Ethernet2Header>,
    /// One 802.1Q tag, if present.
    pub vlan: Option<SingleVlanHeader>,
    /// IPv4 or IPv6 header.
    pub ip: IpRepr,
    /// UDP header.
    pub udp: UdpHeader,
}

/// A RoCEv2 frame located inside a buffer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoceFrame<'a> {
    /// The outer headers.
    pub repr: FrameRepr,
    /// The IP datagram: IP header through ICRC (Ethernet padding removed).
    pub l3: &'a [u8],
    /// The transport packet: BTH through ICRC (the UDP payload).
    pub ib: &'a [u8],
}

fn malformed(reason: Reason) -> Error {
    Error::Malformed {
        layer: "Ethernet/IP/UDP",
        reason,
    }
}

/// etherparse's report on a frame or datagram it could not slice.
fn unsliced(e: etherparse::err::packet::SliceError) -> Error {
    malformed(Reason::Outer(e))
}

/// A datagram with IP extension headers (an IPv4 AH, IPv6 extensions),
/// which the repr has no place for: not RoCEv2 unless it carries UDP, and
/// malformed (`what`) if it does.
fn behind_extensions(payload: IpNumber, what: &'static str) -> Error {
    if payload == IpNumber::UDP {
        malformed(Reason::Fixed(what))
    } else {
        Error::NotRoce("not UDP")
    }
}

/// The UDP length of a frame being built does not fit its headers.
fn too_long<E>(_: E) -> Error {
    malformed(Reason::Fixed("UDP payload too long for the IP header"))
}

/// Byte offset of `inner` within `outer`; `inner` must be a subslice.
fn offset_in(outer: &[u8], inner: &[u8]) -> usize {
    inner.as_ptr() as usize - outer.as_ptr() as usize
}

/// The parts of a RoCEv2 IP datagram, located without building its
/// headers ([`RoceFrame::locate_ip`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RoceDatagram<'a> {
    /// The IP datagram: IP header through ICRC.
    pub l3: &'a [u8],
    /// Length of the IP header.
    pub ip_len: usize,
    /// The ECN bits of the IP header.
    pub ecn: u8,
    /// The transport packet: BTH through ICRC.
    pub ib: &'a [u8],
}

impl RoceDatagram<'_> {
    /// The IP header.
    pub fn ip_header(&self) -> &[u8] {
        &self.l3[..self.ip_len]
    }

    /// The UDP header.
    pub fn udp_header(&self) -> &[u8] {
        &self.l3[self.ip_len..self.ip_len + UdpHeader::LEN]
    }
}

/// The length of an IPv4 header without options.
const PLAIN_IP: usize = 20;

/// The common case in a few comparisons: an IPv4 header without options,
/// not fragmented, whose total length is the datagram's and which carries
/// exactly one UDP datagram to port 4791. Anything else takes the general
/// path, which gives the same result for these (a unit test compares the
/// two on damaged frames).
fn is_plain_ipv4(d: &[u8]) -> bool {
    d.len() >= PLAIN_IP + UdpHeader::LEN
        && d[0] == 0x45
        && d[9] == IpNumber::UDP.0
        && usize::from(u16::from_be_bytes([d[2], d[3]])) == d.len()
        && u16::from_be_bytes([d[6], d[7]]) & 0x3fff == 0
        && usize::from(u16::from_be_bytes([d[24], d[25]])) == d.len() - PLAIN_IP
        && u16::from_be_bytes([d[22], d[23]]) == ROCE_V2_UDP_PORT
}

impl<'a> RoceFrame<'a> {
    /// Parses an Ethernet II frame. Returns `NotRoce` for a well-formed
    /// frame that is not UDP to port 4791 (ARP, TCP, other UDP...), and
    /// `Malformed` for truncated or inconsistent outer headers.
    pub fn parse_ethernet(frame: &'a [u8]) -> Result<RoceFrame<'a>> {
        let sliced = SlicedPacket::from_ethernet(frame).map_err(unsliced)?;
        let ethernet = match &sliced.link {
            Some(LinkSlice::Ethernet2(e)) => Some(e.to_header()),
            _ => return Err(Error::NotRoce("not an Ethernet II frame")),
        };
        let vlan = match sliced.link_exts.as_slice() {
            [] => None,
            [LinkExtSlice::Vlan(v)] => Some(v.to_header()),
            _ => return Err(Error::NotRoce("stacked VLAN or MACsec")),
        };
        Self::from_sliced(frame, ethernet, vlan, sliced)
    }

    /// Parses a bare IP datagram (as a UDP socket or a raw-IP capture
    /// delivers it).
    pub fn parse_ip(datagram: &'a [u8]) -> Result<RoceFrame<'a>> {
        if let Some(f) = Self::plain_ipv4(datagram) {
            return Ok(f);
        }
        Self::parse_ip_sliced(datagram)
    }

    /// The general path of [`RoceFrame::parse_ip`], through etherparse's
    /// slicing.
    fn parse_ip_sliced(datagram: &'a [u8]) -> Result<RoceFrame<'a>> {
        let sliced = SlicedPacket::from_ip(datagram).map_err(unsliced)?;
        Self::from_sliced(datagram, None, None, sliced)
    }

    /// Where the parts of a bare IP datagram lie, as [`RoceFrame::parse_ip`]
    /// finds them but without building the outer headers: what a link's
    /// receive path needs.
    pub fn locate_ip(datagram: &'a [u8]) -> Result<RoceDatagram<'a>> {
        if is_plain_ipv4(datagram) {
            return Ok(RoceDatagram {
                l3: datagram,
                ip_len: PLAIN_IP,
                ecn: datagram[1] & 3,
                ib: &datagram[PLAIN_IP + UdpHeader::LEN..],
            });
        }
        let f = Self::parse_ip_sliced(datagram)?;
        Ok(RoceDatagram {
            l3: f.l3,
            ip_len: f.repr.ip.header_len(),
            ecn: f.repr.ip.ecn(),
            ib: f.ib,
        })
    }

    /// A datagram [`is_plain_ipv4`] accepts, with its headers built.
    fn plain_ipv4(d: &'a [u8]) -> Option<RoceFrame<'a>> {
        if !is_plain_ipv4(d) {
            return None;
        }
        let (ip, _) = Ipv4Header::from_slice(&d[..PLAIN_IP]).ok()?;
        let (udp, _) = UdpHeader::from_slice(&d[PLAIN_IP..PLAIN_IP + UdpHeader::LEN]).ok()?;
        Some(RoceFrame {
            repr: FrameRepr {
                ethernet: None,
                vlan: None,
                ip: IpRepr::V4(ip),
                udp,
            },
            l3: d,
            ib: &d[PLAIN_IP + UdpHeader::LEN..],
        })
    }

    fn from_sliced(
        whole: &'a [u8],
        ethernet: Option<Ethernet2Header>,
        vlan: Option<SingleVlanHeader>,
        sliced: SlicedPacket<'a>,
    ) -> Result<RoceFrame<'a>> {
        let (ip, ip_start) = match &sliced.net {
            Some(NetSlice::Ipv4(v4)) => {
                if v4.is_payload_fragmented() {
                    return Err(malformed(Reason::Fixed("fragmented IPv4 datagram")));
                }
                // An authentication header sits between IPv4 and UDP; the
                // repr has no place for it, and rxe never sends one.
                if !v4.extensions().is_empty() {
                    return Err(behind_extensions(
                        v4.payload().ip_number,
                        "IPv4 authentication header in a RoCEv2 packet",
                    ));
                }
                let h = v4.header();
                (IpRepr::V4(h.to_header()), offset_in(whole, h.slice()))
            }
            Some(NetSlice::Ipv6(v6)) => {
                if !v6.extensions().is_empty() {
                    return Err(behind_extensions(
                        v6.payload().ip_number,
                        "IPv6 extension headers in a RoCEv2 packet",
                    ));
                }
                let h = v6.header();
                (IpRepr::V6(h.to_header()), offset_in(whole, h.slice()))
            }
            _ => return Err(Error::NotRoce("not IP")),
        };
        let udp = match &sliced.transport {
            Some(TransportSlice::Udp(u)) => u,
            _ => return Err(Error::NotRoce("not UDP")),
        };
        if udp.destination_port() != ROCE_V2_UDP_PORT {
            return Err(Error::NotRoce("UDP destination port is not 4791"));
        }
        let ib = udp.payload();
        let end = offset_in(whole, ib) + ib.len();
        Ok(RoceFrame {
            repr: FrameRepr {
                ethernet,
                vlan,
                ip,
                udp: udp.to_header(),
            },
            l3: &whole[ip_start..end],
            ib,
        })
    }

    /// Verifies the ICRC.
    pub fn verify_icrc(&self) -> Result<()> {
        icrc::verify(self.l3)
    }
}

impl FrameRepr {
    /// Length of the Ethernet, VLAN, IP and UDP headers.
    pub fn header_len(&self) -> usize {
        self.ip_offset() + self.ip.header_len() + UdpHeader::LEN
    }

    /// Writes the outer headers for a transport packet of `ib_len` bytes
    /// (BTH through ICRC) into the front of `buf`, fixing up the IP and
    /// UDP lengths and the IPv4 header checksum; the UDP checksum is
    /// written as the repr holds it (rxe sends 0). Returns the header
    /// length, where the transport packet starts.
    pub fn emit(&self, buf: &mut [u8], ib_len: usize) -> Result<usize> {
        let hlen = self.header_len();
        check_room(buf.len(), hlen)?;
        let mut off = 0;
        let mut put = |bytes: &[u8]| {
            buf[off..off + bytes.len()].copy_from_slice(bytes);
            off += bytes.len();
        };
        if let Some(e) = &self.ethernet {
            put(&e.to_bytes());
        }
        if let Some(v) = &self.vlan {
            put(&v.to_bytes());
        }
        let udp_len = UdpHeader::LEN + ib_len;
        match &self.ip {
            IpRepr::V4(h) => {
                let mut h = h.clone();
                h.set_payload_len(udp_len).map_err(too_long)?;
                h.header_checksum = h.calc_header_checksum();
                put(&h.to_bytes());
            }
            IpRepr::V6(h) => {
                let mut h = h.clone();
                h.set_payload_length(udp_len).map_err(too_long)?;
                put(&h.to_bytes());
            }
        }
        let mut udp = self.udp.clone();
        udp.length = u16::try_from(udp_len).map_err(too_long)?;
        put(&udp.to_bytes());
        Ok(hlen)
    }

    /// Byte offset of the IP header within an emitted frame.
    pub fn ip_offset(&self) -> usize {
        self.ethernet.as_ref().map_or(0, |_| Ethernet2Header::LEN)
            + self.vlan.as_ref().map_or(0, |_| SingleVlanHeader::LEN)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An IPv4 datagram whose UDP part follows an authentication header
    /// (found by the `frame` fuzz target: it parsed, and its headers were
    /// then written back without the AH) is refused, as IPv6 extension
    /// headers are.
    #[test]
    fn ipv4_authentication_header_is_refused() {
        let hex = "45c20030718c400040332f9115120011010c000011010c00000000000000000001\
                   0012b700000000810a0012010023000000000085002f60";
        let ip: Vec<u8> = (0..hex.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
            .collect();
        assert_eq!(ip[9], 51, "IPv4 protocol 51 (AH)");
        let mut frame = vec![2, 0, 0, 0, 0, 1, 2, 0, 0, 0, 0, 2, 0x08, 0x00];
        frame.extend_from_slice(&ip);
        for r in [RoceFrame::parse_ethernet(&frame), RoceFrame::parse_ip(&ip)] {
            match r {
                Err(Error::Malformed { reason, .. }) => {
                    assert!(reason.to_string().contains("authentication header"))
                }
                other => panic!("AH datagram not refused: {other:?}"),
            }
        }
        assert!(RoceFrame::locate_ip(&ip).is_err());
    }

    /// An IPv6 datagram with a hop-by-hop options header is refused as
    /// malformed when UDP follows it, and is not RoCEv2 when SCTP does.
    #[test]
    fn ipv6_extension_headers_are_refused() {
        for (next, want_malformed) in [(17u8, true), (132, false)] {
            let mut d = vec![0x60, 0, 0, 0, 0, 32, 0, 64];
            d.extend_from_slice(&[0xfe; 32]); // source and destination
            d.extend_from_slice(&[next, 0, 1, 4, 0, 0, 0, 0]); // hop-by-hop, PadN
            d.extend_from_slice(&[0xc0, 0x11, 0x12, 0xb7, 0, 24, 0, 0]); // UDP to 4791
            d.extend_from_slice(&[0; 16]);
            assert_eq!(d.len(), 40 + 32);
            match RoceFrame::parse_ip(&d) {
                Err(Error::Malformed { reason, .. }) if want_malformed => {
                    assert!(reason.to_string().contains("IPv6 extension headers"))
                }
                Err(Error::NotRoce(_)) if !want_malformed => {}
                other => panic!("next header {next}: {other:?}"),
            }
        }
    }

    /// The fast IPv4 path and etherparse's general path agree on every
    /// frame the fast path takes, including damaged ones.
    #[test]
    fn plain_ipv4_agrees_with_the_general_path() {
        let mut ip = Ipv4Header::new(0, 64, IpNumber::UDP, [10, 0, 0, 1], [10, 0, 0, 2]).unwrap();
        ip.dont_fragment = true;
        let repr = FrameRepr {
            ethernet: None,
            vlan: None,
            ip: IpRepr::V4(ip),
            udp: UdpHeader {
                source_port: 0xc011,
                destination_port: ROCE_V2_UDP_PORT,
                length: 0,
                checksum: 0,
            },
        };
        let ib_len = 44;
        let mut good = vec![0u8; 28 + ib_len];
        repr.emit(&mut good, ib_len).unwrap();
        let fast = RoceFrame::plain_ipv4(&good).expect("a plain frame");
        assert_eq!(Ok(fast), RoceFrame::parse_ip_sliced(&good));
        let mut taken = 0;
        let mut rng = 0x2545_f491_4f6c_dd1du64;
        for _ in 0..200_000 {
            let mut f = good.clone();
            for _ in 0..1 + (rng % 3) {
                rng ^= rng << 13;
                rng ^= rng >> 7;
                rng ^= rng << 17;
                // Mostly the outer headers.
                let at = (rng >> 8) as usize % if rng & 1 == 0 { 28 } else { f.len() };
                f[at] ^= 1 << ((rng >> 40) % 8);
            }
            let cut = (rng >> 20) as usize % 8;
            let f = if rng & 2 == 0 {
                &f[..]
            } else {
                &f[..f.len() - cut]
            };
            if let Some(fast) = RoceFrame::plain_ipv4(f) {
                taken += 1;
                assert_eq!(Ok(fast), RoceFrame::parse_ip_sliced(f), "{f:02x?}");
            }
            // locate_ip finds what parse_ip finds, on every frame.
            let located = RoceFrame::locate_ip(f);
            match RoceFrame::parse_ip(f) {
                Ok(p) => {
                    let l = located.expect("parse_ip took it");
                    assert_eq!(
                        (l.l3, l.ip_len, l.ecn, l.ib),
                        (p.l3, p.repr.ip.header_len(), p.repr.ip.ecn(), p.ib),
                        "{f:02x?}"
                    );
                    assert_eq!(l.udp_header(), &p.l3[l.ip_len..l.ip_len + 8]);
                }
                Err(e) => assert_eq!(located, Err(e), "{f:02x?}"),
            }
        }
        assert!(
            taken > 10_000,
            "only {taken} damaged frames took the fast path"
        );
    }
}
