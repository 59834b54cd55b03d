//! Device and port attributes: every limit of the engine in one place,
//! with Linux rxe's defaults (`rxe_param.h`), and the port's GID table of
//! RoCEv2 GIDs (IPv4-mapped and IPv6).

use std::net::{IpAddr, Ipv6Addr};

use crate::wire::Mtu;

/// Limits and capabilities of the device, as `ibv_query_device` reports
/// them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceAttrs {
    /// Largest memory region.
    pub max_mr_size: u64,
    /// Queue pairs.
    pub max_qp: u32,
    /// Work requests per send or receive queue.
    pub max_qp_wr: u32,
    /// Scatter/gather entries per work request.
    pub max_sge: u32,
    /// Scatter/gather entries per RDMA READ work request.
    pub max_sge_rd: u32,
    /// Completion queues.
    pub max_cq: u32,
    /// Entries per completion queue.
    pub max_cqe: u32,
    /// Memory regions.
    pub max_mr: u32,
    /// Protection domains.
    pub max_pd: u32,
    /// Outstanding RDMA READ and atomic requests a QP may receive.
    pub max_qp_rd_atom: u32,
    /// Outstanding RDMA READ and atomic requests a QP may initiate.
    pub max_qp_init_rd_atom: u32,
    /// Memory windows.
    pub max_mw: u32,
    /// Address handles.
    pub max_ah: u32,
    /// Shared receive queues.
    pub max_srq: u32,
    /// Work requests per shared receive queue.
    pub max_srq_wr: u32,
    /// Scatter/gather entries per shared receive queue work request.
    pub max_srq_sge: u32,
    /// Bytes of inline data per send work request.
    pub max_inline_data: u32,
    /// Pages per fast-registration page list.
    pub max_fast_reg_page_list_len: u32,
    /// Partition keys.
    pub max_pkeys: u16,
    /// Local CA ACK delay (4.096 µs × 2^n).
    pub local_ca_ack_delay: u8,
    /// Largest message.
    pub max_msg_size: u64,
    /// GID table entries.
    pub gid_tbl_len: usize,
    /// Port MTU.
    pub max_mtu: Mtu,
    /// Unacknowledged PSNs a requester may have outstanding.
    pub max_unacked_psns: u32,
    /// Packets a requester sends before asking for an ACK.
    pub max_pkt_per_ack: u32,
    /// Least time between two CNPs from one QP, in nanoseconds.
    pub min_cnp_interval_ns: u64,
}

impl Default for DeviceAttrs {
    /// Linux rxe's defaults.
    fn default() -> Self {
        DeviceAttrs {
            max_mr_size: u64::MAX,
            max_qp: 0x10000,
            max_qp_wr: 0x4000,
            max_sge: 32,
            max_sge_rd: 32,
            max_cq: 16384,
            max_cqe: (1 << 15) - 1,
            max_mr: 256 * 1024,
            max_pd: 0x7ffc,
            max_qp_rd_atom: 128,
            max_qp_init_rd_atom: 128,
            max_mw: 0x1_0000,
            max_ah: 0x7ffc,
            max_srq: 960,
            max_srq_wr: 0x4000,
            max_srq_sge: 27,
            max_inline_data: 512,
            max_fast_reg_page_list_len: 512,
            max_pkeys: 64,
            local_ca_ack_delay: 15,
            max_msg_size: 1 << 31,
            gid_tbl_len: 1024,
            max_mtu: Mtu::Mtu4096,
            max_unacked_psns: 128,
            max_pkt_per_ack: 64,
            min_cnp_interval_ns: 50_000,
        }
    }
}

/// A 16-byte GID. RoCEv2 GIDs are IPv6 addresses or IPv4-mapped IPv6
/// addresses (`::ffff:a.b.c.d`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Gid(pub [u8; 16]);

impl Gid {
    /// The GID of an IP address.
    pub fn from_ip(ip: IpAddr) -> Gid {
        match ip {
            IpAddr::V4(v4) => Gid(v4.to_ipv6_mapped().octets()),
            IpAddr::V6(v6) => Gid(v6.octets()),
        }
    }

    /// The IP address this GID stands for: IPv4 for an IPv4-mapped GID.
    pub fn to_ip(self) -> IpAddr {
        let v6 = Ipv6Addr::from(self.0);
        match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(v6),
        }
    }
}

/// The port's GID table.
#[derive(Debug, Clone)]
pub struct GidTable {
    entries: Vec<Option<Gid>>,
}

impl GidTable {
    /// An empty table of `len` entries.
    pub fn new(len: usize) -> GidTable {
        GidTable {
            entries: vec![None; len],
        }
    }

    /// Sets entry `index`; returns false if out of range.
    pub fn set(&mut self, index: usize, gid: Option<Gid>) -> bool {
        match self.entries.get_mut(index) {
            Some(e) => {
                *e = gid;
                true
            }
            None => false,
        }
    }

    /// Entry `index`, if set.
    pub fn get(&self, index: usize) -> Option<Gid> {
        self.entries.get(index).copied().flatten()
    }

    /// Index of a GID, if present.
    pub fn find(&self, gid: Gid) -> Option<usize> {
        self.entries.iter().position(|e| *e == Some(gid))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gids_map_ipv4_and_ipv6() {
        let v4: IpAddr = "10.77.0.2".parse().unwrap();
        let g = Gid::from_ip(v4);
        assert_eq!(&g.0[..12], &[0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff]);
        assert_eq!(g.to_ip(), v4);
        let v6: IpAddr = "fd77::2".parse().unwrap();
        assert_eq!(Gid::from_ip(v6).to_ip(), v6);
        let mut t = GidTable::new(4);
        assert!(t.set(1, Some(g)));
        assert!(!t.set(4, Some(g)));
        assert_eq!(t.find(g), Some(1));
        assert_eq!(t.get(0), None);
    }
}
