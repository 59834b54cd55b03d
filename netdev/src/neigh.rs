//! Neighbour resolution for the links that build their own Ethernet frames
//! (`tap` and `packet`): ARP for IPv4, NDP for IPv6.
//!
//! This module owns the neighbour table and the control frames around it,
//! sans-IO in the quinn-proto manner: frames come in through
//! [`Neighbours::handle_frame`], frames to send come out of
//! [`Neighbours::poll_transmit`], and time is passed in explicitly (in
//! nanoseconds, like the engine's clock).
//!
//! - We answer ARP requests and NDP neighbour solicitations for our own
//!   addresses, and learn the sender from them.
//! - [`Neighbours::resolve`] returns a neighbour's MAC, or starts a
//!   resolution: a request every [`RETRANS_NS`], up to [`MAX_PROBES`]
//!   times. A neighbour that never answers gives
//!   [`NeighError::Unreachable`], and stays failed for [`FAILED_NS`] so
//!   that a dead peer does not cause a storm of requests.
//! - Learned entries are trusted for [`REACHABLE_NS`], then resolved again
//!   (the old MAC stays in use meanwhile).
//!
//! Only resolution frames are built here; the hot path of a resolved
//! neighbour is one hash lookup without allocation.

use std::{
    collections::{HashMap, VecDeque},
    net::{IpAddr, Ipv6Addr},
};

use etherparse::{
    ArpEthIpv4Packet, ArpOperation, ArpPacket, EtherType, Ethernet2Header, Icmpv6Header,
    Icmpv6Type, IpNumber, Ipv6Header, icmpv6::NeighborAdvertisementHeader,
};

/// How long to wait for an answer before asking again.
pub const RETRANS_NS: u64 = 1_000_000_000;
/// How many requests to send before giving up.
pub const MAX_PROBES: u32 = 3;
/// How long a learned entry is trusted.
pub const REACHABLE_NS: u64 = 30_000_000_000;
/// How long a failed resolution is remembered.
pub const FAILED_NS: u64 = 3_000_000_000;

const ICMPV6_NS: u8 = 135;
const ICMPV6_NA: u8 = 136;
const OPT_SOURCE_LL: u8 = 1;
const OPT_TARGET_LL: u8 = 2;

/// Why a neighbour cannot be used.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum NeighError {
    /// Nobody answered our requests.
    #[error("neighbour {0} does not answer ARP/NDP ({MAX_PROBES} requests, 1 s apart)")]
    Unreachable(IpAddr),
    /// We have no local address of that IP version to ask from.
    #[error("no local {0} address to resolve {1} from")]
    NoSource(&'static str, IpAddr),
}

#[derive(Debug, Clone, Copy)]
enum State {
    /// Known; `at` is when it was learned.
    Reachable { mac: [u8; 6], at: u64 },
    /// Being resolved; `old` is a previous MAC that still works meanwhile.
    Probing {
        old: Option<[u8; 6]>,
        sent: u32,
        last: u64,
    },
    /// Gave up at `at`.
    Failed { at: u64 },
}

/// The neighbour table of one link.
pub struct Neighbours {
    mac: [u8; 6],
    addrs: Vec<IpAddr>,
    table: HashMap<IpAddr, State>,
    out: VecDeque<Vec<u8>>,
}

impl Neighbours {
    /// A table for a link with hardware address `mac` and our addresses
    /// `addrs`.
    pub fn new(mac: [u8; 6], addrs: Vec<IpAddr>) -> Neighbours {
        Neighbours {
            mac,
            addrs,
            table: HashMap::new(),
            out: VecDeque::new(),
        }
    }

    /// Replaces the addresses we answer for and send from.
    pub fn set_addrs(&mut self, addrs: Vec<IpAddr>) {
        self.addrs = addrs;
    }

    /// Our hardware address.
    pub fn mac(&self) -> [u8; 6] {
        self.mac
    }

    /// The MAC of `ip`, if known. Otherwise a resolution starts (or goes
    /// on) and `Ok(None)` says to try again later.
    pub fn resolve(&mut self, ip: IpAddr, now: u64) -> Result<Option<[u8; 6]>, NeighError> {
        match self.table.get(&ip).copied() {
            Some(State::Reachable { mac, at }) => {
                if now.saturating_sub(at) >= REACHABLE_NS {
                    self.start(ip, Some(mac), now)?;
                }
                Ok(Some(mac))
            }
            Some(State::Probing { old, .. }) => Ok(old),
            Some(State::Failed { at }) if now.saturating_sub(at) < FAILED_NS => {
                Err(NeighError::Unreachable(ip))
            }
            Some(State::Failed { .. }) | None => {
                self.start(ip, None, now)?;
                Ok(None)
            }
        }
    }

    fn start(&mut self, ip: IpAddr, old: Option<[u8; 6]>, now: u64) -> Result<(), NeighError> {
        self.request(ip)?;
        self.table.insert(
            ip,
            State::Probing {
                old,
                sent: 1,
                last: now,
            },
        );
        Ok(())
    }

    /// When [`Neighbours::handle_timeout`] next has work.
    pub fn poll_timeout(&self) -> Option<u64> {
        self.table
            .values()
            .filter_map(|s| match s {
                State::Probing { last, .. } => Some(last + RETRANS_NS),
                _ => None,
            })
            .min()
    }

    /// Sends the next requests and gives up on silent neighbours.
    pub fn handle_timeout(&mut self, now: u64) {
        let due: Vec<(IpAddr, u32)> = self
            .table
            .iter()
            .filter_map(|(ip, s)| match *s {
                State::Probing { sent, last, .. } if now >= last + RETRANS_NS => Some((*ip, sent)),
                _ => None,
            })
            .collect();
        for (ip, sent) in due {
            if sent >= MAX_PROBES {
                self.table.insert(ip, State::Failed { at: now });
            } else if self.request(ip).is_ok()
                && let Some(State::Probing { sent, last, .. }) = self.table.get_mut(&ip)
            {
                *sent += 1;
                *last = now;
            }
        }
    }

    /// The next control frame to send, if any.
    pub fn poll_transmit(&mut self) -> Option<Vec<u8>> {
        self.out.pop_front()
    }

    /// Looks at a received Ethernet frame. Returns whether it was ARP or
    /// NDP (consumed here); anything else is left to the caller.
    pub fn handle_frame(&mut self, frame: &[u8], now: u64) -> bool {
        let Ok((eth, rest)) = Ethernet2Header::from_slice(frame) else {
            return false;
        };
        match eth.ether_type {
            EtherType::ARP => {
                self.handle_arp(rest, now);
                true
            }
            EtherType::IPV6 => self.handle_ndp(eth.source, rest, now),
            _ => false,
        }
    }

    fn learn(&mut self, ip: IpAddr, mac: [u8; 6], now: u64, only_if_known: bool) {
        if mac == [0; 6] || mac[0] & 1 != 0 {
            return; // never learn a multicast or zero address
        }
        if only_if_known && !self.table.contains_key(&ip) {
            return;
        }
        self.table.insert(ip, State::Reachable { mac, at: now });
    }

    fn ours(&self, ip: IpAddr) -> bool {
        self.addrs.contains(&ip)
    }

    fn handle_arp(&mut self, body: &[u8], now: u64) {
        let Some(arp) = ArpPacket::from_slice(body)
            .ok()
            .and_then(|a| a.try_eth_ipv4().ok())
        else {
            return;
        };
        let sender = IpAddr::V4(arp.sender_ipv4_addr());
        let target = IpAddr::V4(arp.target_ipv4_addr());
        let for_us = self.ours(target);
        // RFC 826: update a known sender; add it if the request is for us.
        self.learn(sender, arp.sender_mac, now, !for_us);
        if for_us && arp.operation == ArpOperation::REQUEST {
            let reply = ArpEthIpv4Packet {
                operation: ArpOperation::REPLY,
                sender_mac: self.mac,
                sender_ipv4: arp.target_ipv4,
                target_mac: arp.sender_mac,
                target_ipv4: arp.sender_ipv4,
            };
            self.out
                .push_back(arp_frame(self.mac, arp.sender_mac, reply));
        }
    }

    fn handle_ndp(&mut self, eth_src: [u8; 6], body: &[u8], now: u64) -> bool {
        let Ok((ip6, payload)) = Ipv6Header::from_slice(body) else {
            return false;
        };
        if ip6.next_header != IpNumber::IPV6_ICMP || payload.len() < 24 {
            return false;
        }
        let icmp_type = payload[0];
        if icmp_type != ICMPV6_NS && icmp_type != ICMPV6_NA {
            return false;
        }
        let len = usize::from(ip6.payload_length).min(payload.len());
        let payload = &payload[..len];
        // RFC 4861 §7.1: hop limit 255, code 0, a good checksum.
        if ip6.hop_limit != 255 || payload.len() < 24 || payload[1] != 0 {
            return true;
        }
        if !icmpv6_checksum_ok(ip6.source, ip6.destination, payload) {
            return true;
        }
        let target = IpAddr::V6(Ipv6Addr::from(
            <[u8; 16]>::try_from(&payload[8..24]).unwrap(),
        ));
        let option = |want: u8| -> Option<[u8; 6]> {
            let mut opts = &payload[24..];
            while opts.len() >= 8 {
                let units = usize::from(opts[1]) * 8;
                if units == 0 || units > opts.len() {
                    return None;
                }
                if opts[0] == want && units == 8 {
                    return Some(opts[2..8].try_into().unwrap());
                }
                opts = &opts[units..];
            }
            None
        };
        if icmp_type == ICMPV6_NS {
            if !self.ours(target) {
                return true;
            }
            let src = Ipv6Addr::from(ip6.source);
            if src.is_unspecified() {
                return true; // duplicate address detection: not ours to answer here
            }
            let src_mac = option(OPT_SOURCE_LL).unwrap_or(eth_src);
            self.learn(IpAddr::V6(src), src_mac, now, false);
            let IpAddr::V6(t) = target else { return true };
            self.out.push_back(ndp_frame(
                self.mac,
                src_mac,
                t,
                src,
                ICMPV6_NA,
                t,
                OPT_TARGET_LL,
            ));
        } else if let Some(mac) = option(OPT_TARGET_LL) {
            self.learn(target, mac, now, true);
        }
        true
    }

    /// Queues one request for `ip`.
    fn request(&mut self, ip: IpAddr) -> Result<(), NeighError> {
        match ip {
            IpAddr::V4(t) => {
                let Some(IpAddr::V4(src)) = self.addrs.iter().find(|a| a.is_ipv4()).copied() else {
                    return Err(NeighError::NoSource("IPv4", ip));
                };
                let req = ArpEthIpv4Packet {
                    operation: ArpOperation::REQUEST,
                    sender_mac: self.mac,
                    sender_ipv4: src.octets(),
                    target_mac: [0; 6],
                    target_ipv4: t.octets(),
                };
                self.out.push_back(arp_frame(self.mac, [0xff; 6], req));
            }
            IpAddr::V6(t) => {
                let Some(IpAddr::V6(src)) = self.addrs.iter().find(|a| a.is_ipv6()).copied() else {
                    return Err(NeighError::NoSource("IPv6", ip));
                };
                let o = t.octets();
                let snm = Ipv6Addr::new(
                    0xff02,
                    0,
                    0,
                    0,
                    0,
                    1,
                    0xff00 | u16::from(o[13]),
                    u16::from_be_bytes([o[14], o[15]]),
                );
                let mac = [0x33, 0x33, 0xff, o[13], o[14], o[15]];
                self.out.push_back(ndp_frame(
                    self.mac,
                    mac,
                    src,
                    snm,
                    ICMPV6_NS,
                    t,
                    OPT_SOURCE_LL,
                ));
            }
        }
        Ok(())
    }
}

fn arp_frame(src: [u8; 6], dst: [u8; 6], arp: ArpEthIpv4Packet) -> Vec<u8> {
    let eth = Ethernet2Header {
        source: src,
        destination: dst,
        ether_type: EtherType::ARP,
    };
    let mut f = eth.to_bytes().to_vec();
    f.extend_from_slice(&ArpPacket::from(arp).to_bytes());
    f.resize(60, 0); // the Ethernet minimum, as the kernel pads
    f
}

/// An NS or NA with one link-layer address option carrying our MAC.
fn ndp_frame(
    src_mac: [u8; 6],
    dst_mac: [u8; 6],
    src: Ipv6Addr,
    dst: Ipv6Addr,
    icmp_type: u8,
    target: Ipv6Addr,
    option: u8,
) -> Vec<u8> {
    let mut body = Vec::with_capacity(24);
    body.extend_from_slice(&target.octets());
    body.extend_from_slice(&[option, 1]);
    body.extend_from_slice(&src_mac);
    let ty = if icmp_type == ICMPV6_NS {
        Icmpv6Type::NeighborSolicitation
    } else {
        Icmpv6Type::NeighborAdvertisement(NeighborAdvertisementHeader {
            router: false,
            solicited: true,
            r#override: true,
        })
    };
    let icmp = Icmpv6Header::with_checksum(ty, src.octets(), dst.octets(), &body)
        .expect("a 24-byte payload");
    let ip = Ipv6Header {
        traffic_class: 0,
        flow_label: Default::default(),
        payload_length: (icmp.header_len() + body.len()) as u16,
        next_header: IpNumber::IPV6_ICMP,
        hop_limit: 255,
        source: src.octets(),
        destination: dst.octets(),
    };
    let eth = Ethernet2Header {
        source: src_mac,
        destination: dst_mac,
        ether_type: EtherType::IPV6,
    };
    let mut f = eth.to_bytes().to_vec();
    f.extend_from_slice(&ip.to_bytes());
    f.extend_from_slice(&icmp.to_bytes());
    f.extend_from_slice(&body);
    f
}

/// Whether an ICMPv6 message's checksum (over the pseudo-header) is good.
fn icmpv6_checksum_ok(src: [u8; 16], dst: [u8; 16], msg: &[u8]) -> bool {
    let mut sum: u32 = 0;
    let mut add = |b: &[u8]| {
        for c in b.chunks(2) {
            let w = if c.len() == 2 {
                u16::from_be_bytes([c[0], c[1]])
            } else {
                u16::from(c[0]) << 8
            };
            sum += u32::from(w);
        }
    };
    add(&src);
    add(&dst);
    add(&(msg.len() as u32).to_be_bytes());
    add(&[0, 0, 0, 58]);
    add(msg);
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum == 0xffff
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAC_A: [u8; 6] = [0x02, 0, 0, 0, 0, 0xa];
    const MAC_B: [u8; 6] = [0x02, 0, 0, 0, 0, 0xb];

    fn pair() -> (Neighbours, Neighbours) {
        let a = Neighbours::new(
            MAC_A,
            vec!["10.0.0.1".parse().unwrap(), "fd00::1".parse().unwrap()],
        );
        let b = Neighbours::new(
            MAC_B,
            vec!["10.0.0.2".parse().unwrap(), "fd00::2".parse().unwrap()],
        );
        (a, b)
    }

    /// Moves every queued frame from one side to the other.
    fn deliver(from: &mut Neighbours, to: &mut Neighbours, now: u64) -> usize {
        let mut n = 0;
        while let Some(f) = from.poll_transmit() {
            assert!(to.handle_frame(&f, now));
            n += 1;
        }
        n
    }

    #[test]
    fn resolves_both_families_each_way() {
        for (ip_a, ip_b) in [("10.0.0.1", "10.0.0.2"), ("fd00::1", "fd00::2")] {
            let (mut a, mut b) = pair();
            let (ip_a, ip_b): (IpAddr, IpAddr) = (ip_a.parse().unwrap(), ip_b.parse().unwrap());
            assert_eq!(a.resolve(ip_b, 0), Ok(None));
            assert_eq!(deliver(&mut a, &mut b, 1), 1);
            assert_eq!(deliver(&mut b, &mut a, 2), 1);
            assert_eq!(a.resolve(ip_b, 3), Ok(Some(MAC_B)));
            // B learned A from the request.
            assert_eq!(b.resolve(ip_a, 3), Ok(Some(MAC_A)));
            assert!(b.poll_transmit().is_none());
        }
    }

    #[test]
    fn silent_neighbour_fails_after_three_probes_then_retries_later() {
        let (mut a, _) = pair();
        let ip: IpAddr = "10.0.0.9".parse().unwrap();
        assert_eq!(a.resolve(ip, 0), Ok(None));
        let mut sent = 0;
        let mut now = 0;
        while let Some(t) = a.poll_timeout() {
            while a.poll_transmit().is_some() {
                sent += 1;
            }
            now = t;
            a.handle_timeout(now);
        }
        assert_eq!(sent, MAX_PROBES);
        assert_eq!(now, u64::from(MAX_PROBES) * RETRANS_NS);
        assert_eq!(a.resolve(ip, now + 1), Err(NeighError::Unreachable(ip)));
        assert!(a.poll_transmit().is_none());
        assert_eq!(a.resolve(ip, now + FAILED_NS), Ok(None));
        assert!(a.poll_transmit().is_some());
    }

    #[test]
    fn requests_for_other_addresses_are_not_answered_or_learned() {
        let (mut a, mut b) = pair();
        let other: IpAddr = "10.0.0.3".parse().unwrap();
        a.resolve(other, 0).unwrap();
        deliver(&mut a, &mut b, 0);
        assert!(b.poll_transmit().is_none());
        assert_eq!(b.table.len(), 0);
        // An unsolicited NA for an address we never asked about is ignored.
        let na = ndp_frame(
            MAC_A,
            MAC_B,
            "fd00::1".parse().unwrap(),
            "fd00::2".parse().unwrap(),
            ICMPV6_NA,
            "fd00::1".parse().unwrap(),
            OPT_TARGET_LL,
        );
        assert!(b.handle_frame(&na, 0));
        assert_eq!(b.table.len(), 0);
    }

    #[test]
    fn bad_checksum_and_hop_limit_are_ignored() {
        let (mut a, mut b) = pair();
        a.resolve("fd00::2".parse().unwrap(), 0).unwrap();
        let good = a.poll_transmit().unwrap();
        let mut bad_sum = good.clone();
        *bad_sum.last_mut().unwrap() ^= 1;
        let mut bad_hops = good.clone();
        bad_hops[14 + 7] = 64;
        for f in [bad_sum, bad_hops] {
            assert!(b.handle_frame(&f, 0));
            assert!(b.poll_transmit().is_none());
        }
        assert!(b.handle_frame(&good, 0));
        assert!(b.poll_transmit().is_some());
    }

    #[test]
    fn truncated_frames_never_panic() {
        let (mut a, mut b) = pair();
        a.resolve("fd00::2".parse().unwrap(), 0).unwrap();
        a.resolve("10.0.0.2".parse().unwrap(), 0).unwrap();
        while let Some(f) = a.poll_transmit() {
            for n in 0..f.len() {
                b.handle_frame(&f[..n], 0);
            }
        }
    }

    #[test]
    fn entries_are_refreshed_after_reachable_time() {
        let (mut a, mut b) = pair();
        let ip: IpAddr = "10.0.0.2".parse().unwrap();
        a.resolve(ip, 0).unwrap();
        deliver(&mut a, &mut b, 0);
        deliver(&mut b, &mut a, 0);
        assert_eq!(a.resolve(ip, REACHABLE_NS - 1), Ok(Some(MAC_B)));
        assert!(a.poll_transmit().is_none());
        // Stale: the old MAC is still used while a new request goes out.
        assert_eq!(a.resolve(ip, REACHABLE_NS), Ok(Some(MAC_B)));
        assert!(a.poll_transmit().is_some());
        assert_eq!(a.resolve(ip, REACHABLE_NS + 1), Ok(Some(MAC_B)));
    }
}
