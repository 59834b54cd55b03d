//! RoCEv2 steering: which frames from the network the engine takes.
//!
//! This module owns one decision, made for every frame that arrives on
//! the link: a frame that is IPv4 or IPv6 UDP to port 4791 and addressed
//! to one of the VM's RDMA addresses goes to the engine; every other frame
//! (including ARP and NDP, which the guest answers for its own addresses)
//! goes to the guest, untouched. The decision reads headers in place and
//! allocates nothing.

use std::net::IpAddr;

use etherparse::{NetSlice, SlicedPacket, TransportSlice};
use transport::wire::ROCE_V2_UDP_PORT;

/// Where a frame from the link goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Steer {
    /// To the guest's NIC.
    Guest,
    /// To the RDMA engine: RoCEv2 for one of `rdma` addresses.
    Engine,
}

/// Steers `frame` (an Ethernet frame from the link). `rdma` holds the
/// VM's RDMA addresses; when it is empty the engine is off and everything
/// goes to the guest. IPv4 fragments, which RoCEv2 never uses (it sets
/// DF), go to the guest.
pub fn steer(frame: &[u8], rdma: &[IpAddr]) -> Steer {
    if rdma.is_empty() {
        return Steer::Guest;
    }
    let Ok(p) = SlicedPacket::from_ethernet(frame) else {
        return Steer::Guest;
    };
    let dst = match &p.net {
        Some(NetSlice::Ipv4(v4)) => {
            let h = v4.header();
            if h.more_fragments() || h.fragments_offset().value() != 0 {
                return Steer::Guest;
            }
            IpAddr::from(h.destination())
        }
        Some(NetSlice::Ipv6(v6)) => IpAddr::from(v6.header().destination()),
        _ => return Steer::Guest,
    };
    match &p.transport {
        Some(TransportSlice::Udp(u))
            if u.destination_port() == ROCE_V2_UDP_PORT && rdma.contains(&dst) =>
        {
            Steer::Engine
        }
        _ => Steer::Guest,
    }
}

#[cfg(test)]
mod tests {
    use etherparse::PacketBuilder;

    use super::*;

    const MAC_A: [u8; 6] = [2, 0, 0, 0, 0, 1];
    const MAC_B: [u8; 6] = [2, 0, 0, 0, 0, 2];

    fn udp4(dst: [u8; 4], port: u16) -> Vec<u8> {
        let b = PacketBuilder::ethernet2(MAC_A, MAC_B)
            .ipv4([10, 0, 0, 1], dst, 64)
            .udp(5000, port);
        let mut out = Vec::new();
        b.write(&mut out, &[0u8; 40]).unwrap();
        out
    }

    fn udp6(dst: [u8; 16], port: u16) -> Vec<u8> {
        let mut src = [0u8; 16];
        src[0] = 0xfd;
        src[15] = 1;
        let b = PacketBuilder::ethernet2(MAC_A, MAC_B)
            .ipv6(src, dst, 64)
            .udp(5000, port);
        let mut out = Vec::new();
        b.write(&mut out, &[0u8; 40]).unwrap();
        out
    }

    #[test]
    fn roce_to_the_rdma_address_goes_to_the_engine() {
        let rdma: Vec<IpAddr> = vec!["10.0.0.2".parse().unwrap(), "fd00::2".parse().unwrap()];
        assert_eq!(steer(&udp4([10, 0, 0, 2], 4791), &rdma), Steer::Engine);
        let mut v6 = [0u8; 16];
        v6[0] = 0xfd;
        v6[15] = 2;
        assert_eq!(steer(&udp6(v6, 4791), &rdma), Steer::Engine);
    }

    #[test]
    fn everything_else_goes_to_the_guest() {
        let rdma: Vec<IpAddr> = vec!["10.0.0.2".parse().unwrap()];
        // Another port, another address, the engine off.
        assert_eq!(steer(&udp4([10, 0, 0, 2], 4792), &rdma), Steer::Guest);
        assert_eq!(steer(&udp4([10, 0, 0, 3], 4791), &rdma), Steer::Guest);
        assert_eq!(steer(&udp4([10, 0, 0, 2], 4791), &[]), Steer::Guest);
        // IPv6 RoCE to an address that is not ours.
        let mut v6 = [0u8; 16];
        v6[0] = 0xfd;
        v6[15] = 2;
        assert_eq!(steer(&udp6(v6, 4791), &rdma), Steer::Guest);
        // An IPv4 fragment, ARP, garbage and an empty frame.
        let mut frag = udp4([10, 0, 0, 2], 4791);
        frag[20] |= 0x20; // MF
        assert_eq!(steer(&frag, &rdma), Steer::Guest);
        let mut arp = vec![0xff; 6];
        arp.extend_from_slice(&MAC_A);
        arp.extend_from_slice(&[0x08, 0x06]);
        arp.extend_from_slice(&[0; 28]);
        assert_eq!(steer(&arp, &rdma), Steer::Guest);
        assert_eq!(steer(&[0x45; 7], &rdma), Steer::Guest);
        assert_eq!(steer(&[], &rdma), Steer::Guest);
    }

    #[test]
    fn truncated_roce_frames_go_to_the_guest_without_panicking() {
        let rdma: Vec<IpAddr> = vec!["10.0.0.2".parse().unwrap()];
        let f = udp4([10, 0, 0, 2], 4791);
        for n in 0..f.len() {
            let _ = steer(&f[..n], &rdma);
        }
    }
}
