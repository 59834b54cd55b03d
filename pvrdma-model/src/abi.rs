//! The structures the PVRDMA guest driver and the device share in guest
//! memory, as explicit little-endian layouts.
//!
//! This module owns the byte layout of: the device shared region
//! ([`Dsr`]) with its [`DeviceCaps`] and ring page infos; the command
//! header and response header ([`CmdHdr`], [`RespHdr`]); the send and
//! receive WQE headers ([`SqWqeHdr`], [`RqWqeHdr`]), SGEs ([`Sge`]) and
//! the UD address vector ([`Av`]); completions ([`Cqe`]), async events
//! ([`Eqe`]) and CQ notifications ([`Cqne`]); the port and QP attribute
//! blocks ([`PortAttr`], [`QpAttr`], [`AhAttr`]).
//!
//! Every field is a `zerocopy` little-endian integer (alignment 1), so a
//! structure is exactly its listed bytes with no padding, and reading one
//! from guest bytes cannot fail except on length. Sizes are checked at
//! compile time against the driver's. Fields the driver keeps in network
//! order (GUIDs, immediate data, GIDs) are plain byte arrays or marked.

use zerocopy::{
    FromBytes, Immutable, IntoBytes, KnownLayout,
    little_endian::{U16, U32, U64},
};

/// Shorthand for the derives every layout carries, with a compile-time
/// size check.
macro_rules! layout {
    ($(#[$m:meta])* pub struct $name:ident { $($(#[$fm:meta])* pub $f:ident : $t:ty,)* } = $size:expr;) => {
        $(#[$m])*
        ///
        /// Fields carry the driver's ABI names; `docs/pvrdma-abi.md` says
        /// what each holds.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable)]
        #[repr(C)]
        #[allow(missing_docs)]
        pub struct $name {
            $($(#[$fm])* pub $f: $t,)*
        }
        impl Default for $name {
            fn default() -> Self {
                <Self as zerocopy::FromZeros>::new_zeroed()
            }
        }
        const _: () = assert!(core::mem::size_of::<$name>() == $size);
    };
}
pub(crate) use layout;

/// The PCI vendor ID (VMware).
pub const VENDOR_ID: u16 = 0x15ad;
/// The PVRDMA device ID.
pub const DEVICE_ID: u16 = 0x0820;
/// The vmxnet3 device ID, which must sit at function 0 of the same slot.
pub const VMXNET3_DEVICE_ID: u16 = 0x07b0;
/// Guest page size the ABI assumes.
pub const PAGE_SIZE: u64 = 4096;

/// The device version we report in VERSION: 20 adds the separate QP
/// handle (`CREATE_QP` response v2); 19 the 64-bit UAR page numbers; 18
/// RoCE v2.
pub const DEVICE_VERSION: u32 = 20;
/// `caps.mode`: RoCE.
pub const MODE_ROCE: u8 = 0;
/// `caps.gid_types` bit for RoCE v1.
pub const GID_TYPE_ROCE_V1: u8 = 1;
/// `caps.gid_types` bit for RoCE v2.
pub const GID_TYPE_ROCE_V2: u8 = 2;

layout! {
    /// Where a ring's pages are: `num_pages` (including the ring-state
    /// page) and the page directory's guest address.
    pub struct RingPageInfo {
        pub num_pages: U32,
        pub reserved: U32,
        pub pdir_dma: U64,
    } = 16;
}

layout! {
    /// The device's capabilities, written by the device into the DSR when
    /// the driver sets DSRHIGH.
    pub struct DeviceCaps {
        pub fw_ver: U64,
        /// Network order.
        pub node_guid: [u8; 8],
        /// Network order.
        pub sys_image_guid: [u8; 8],
        pub max_mr_size: U64,
        pub page_size_cap: U64,
        pub atomic_arg_sizes: U64,
        pub ex_comp_mask: U32,
        pub device_cap_flags2: U32,
        pub max_fa_bit_boundary: U32,
        pub log_max_atomic_inline_arg: U32,
        pub vendor_id: U32,
        pub vendor_part_id: U32,
        pub hw_ver: U32,
        pub max_qp: U32,
        pub max_qp_wr: U32,
        pub device_cap_flags: U32,
        pub max_sge: U32,
        pub max_sge_rd: U32,
        pub max_cq: U32,
        pub max_cqe: U32,
        pub max_mr: U32,
        pub max_pd: U32,
        pub max_qp_rd_atom: U32,
        pub max_ee_rd_atom: U32,
        pub max_res_rd_atom: U32,
        pub max_qp_init_rd_atom: U32,
        pub max_ee_init_rd_atom: U32,
        pub max_ee: U32,
        pub max_rdd: U32,
        pub max_mw: U32,
        pub max_raw_ipv6_qp: U32,
        pub max_raw_ethy_qp: U32,
        pub max_mcast_grp: U32,
        pub max_mcast_qp_attach: U32,
        pub max_total_mcast_qp_attach: U32,
        pub max_ah: U32,
        pub max_fmr: U32,
        pub max_map_per_fmr: U32,
        pub max_srq: U32,
        pub max_srq_wr: U32,
        pub max_srq_sge: U32,
        /// UAR pages (a power of 2).
        pub max_uar: U32,
        pub gid_tbl_len: U32,
        pub max_pkeys: U16,
        pub local_ca_ack_delay: u8,
        pub phys_port_cnt: u8,
        pub mode: u8,
        pub atomic_ops: u8,
        pub bmme_flags: u8,
        pub gid_types: u8,
        pub max_fast_reg_page_list_len: U32,
    } = 208;
}

layout! {
    /// The device shared region: the driver's half (versions, slots,
    /// rings, UAR) and the device's caps.
    pub struct Dsr {
        pub driver_version: U32,
        pub pad1: U32,
        /// Guest OS bits (64-bit Linux: 0x46).
        pub gos_info: U32,
        pub pad2: U32,
        pub cmd_slot_dma: U64,
        pub resp_slot_dma: U64,
        pub async_ring_pages: RingPageInfo,
        pub cq_ring_pages: RingPageInfo,
        /// `uar_pfn` (32 bits) before version 19, `uar_pfn64` from 19.
        pub uar_pfn64: U64,
        pub caps: DeviceCaps,
    } = 280;
}

/// Byte offset of the caps in the DSR.
pub const DSR_CAPS_OFFSET: u64 = 72;
const _: () = assert!(core::mem::offset_of!(Dsr, caps) as u64 == DSR_CAPS_OFFSET);

layout! {
    /// The command request header.
    pub struct CmdHdr {
        /// Opaque; echoed in the response.
        pub response: U64,
        pub cmd: U32,
        pub reserved: U32,
    } = 16;
}

layout! {
    /// The command response header.
    pub struct RespHdr {
        pub response: U64,
        /// The response code: `0x8000_0000 + cmd`.
        pub ack: U32,
        pub err: u8,
        pub reserved: [u8; 3],
    } = 16;
}

/// Size of the request slot the driver fills (the request union).
pub const CMD_SLOT_LEN: usize = 184;
/// Size of the response slot the device fills (the response union).
pub const RESP_SLOT_LEN: usize = 176;

layout! {
    /// One scatter/gather element.
    pub struct Sge {
        pub addr: U64,
        pub length: U32,
        pub lkey: U32,
    } = 16;
}

layout! {
    /// The UD address vector inside a send WQE.
    pub struct Av {
        /// PD handle in the low 24 bits, port number in the top 8.
        pub port_pd: U32,
        /// traffic_class << 20 | flow_label.
        pub sl_tclass_flowlabel: U32,
        pub dgid: [u8; 16],
        pub src_path_bits: u8,
        /// Source GID table index.
        pub gid_index: u8,
        pub stat_rate: u8,
        pub hop_limit: u8,
        pub dmac: [u8; 6],
        pub reserved: [u8; 6],
    } = 40;
}

layout! {
    /// The send WQE header; `num_sge` [`Sge`]s follow it. The 48-byte
    /// `wr` area holds one of the opcode-specific layouts, read through
    /// the accessors.
    pub struct SqWqeHdr {
        pub wr_id: U64,
        pub num_sge: U32,
        pub total_len: U32,
        pub opcode: U32,
        pub send_flags: U32,
        /// Immediate data (network order, as the bytes are) or the rkey to
        /// invalidate.
        pub ex: [u8; 4],
        pub reserved: U32,
        pub wr: [u8; 48],
    } = 80;
}

fn le64(b: &[u8]) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[..8]);
    u64::from_le_bytes(a)
}

fn le32(b: &[u8]) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[..4]);
    u32::from_le_bytes(a)
}

impl SqWqeHdr {
    /// RDMA: remote address and rkey.
    pub fn rdma(&self) -> (u64, u32) {
        (le64(&self.wr[0..]), le32(&self.wr[8..]))
    }
    /// Atomics: remote address, compare/add, swap, rkey.
    pub fn atomic(&self) -> (u64, u64, u64, u32) {
        (
            le64(&self.wr[0..]),
            le64(&self.wr[8..]),
            le64(&self.wr[16..]),
            le32(&self.wr[24..]),
        )
    }
    /// UD: remote QPN, remote Q_Key and the address vector.
    pub fn ud(&self) -> (u32, u32, Av) {
        let av = Av::read_from_bytes(&self.wr[8..48]).unwrap_or_default();
        (le32(&self.wr[0..]), le32(&self.wr[4..]), av)
    }
    /// Fast registration: iova, page-list directory, page shift, page
    /// count, length, access flags, new rkey.
    pub fn fast_reg(&self) -> FastReg {
        FastReg {
            iova_start: le64(&self.wr[0..]),
            pl_pdir_dma: le64(&self.wr[8..]),
            page_shift: le32(&self.wr[16..]),
            page_list_len: le32(&self.wr[20..]),
            length: le32(&self.wr[24..]),
            access_flags: le32(&self.wr[28..]),
            rkey: le32(&self.wr[32..]),
        }
    }
}

/// The fast-registration fields of a send WQE.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FastReg {
    /// First I/O virtual address.
    pub iova_start: u64,
    /// Page directory of the page list.
    pub pl_pdir_dma: u64,
    /// log2 of the page size.
    pub page_shift: u32,
    /// Pages in the list.
    pub page_list_len: u32,
    /// Bytes.
    pub length: u32,
    /// IB access flags.
    pub access_flags: u32,
    /// The key after registration.
    pub rkey: u32,
}

layout! {
    /// The receive WQE header (QP receive queue and SRQ); `num_sge`
    /// [`Sge`]s follow it.
    pub struct RqWqeHdr {
        pub wr_id: U64,
        pub num_sge: U32,
        pub total_len: U32,
    } = 16;
}

layout! {
    /// A completion.
    pub struct Cqe {
        pub wr_id: U64,
        /// The QP handle in the low 16 bits.
        pub qp: U64,
        pub opcode: U32,
        pub status: U32,
        pub byte_len: U32,
        /// Network order.
        pub imm_data: [u8; 4],
        pub src_qp: U32,
        pub wc_flags: U32,
        pub vendor_err: U32,
        pub pkey_index: U16,
        pub slid: U16,
        pub sl: u8,
        pub dlid_path_bits: u8,
        pub port_num: u8,
        pub smac: [u8; 6],
        /// 0 RoCE v1, 1 IPv4, 2 IPv6.
        pub network_hdr_type: u8,
        pub reserved2: [u8; 6],
    } = 64;
}

layout! {
    /// An async event.
    pub struct Eqe {
        pub event_type: U32,
        /// QP, CQ or SRQ handle, or port number.
        pub info: U32,
    } = 8;
}

layout! {
    /// A CQ notification: the CQ's handle.
    pub struct Cqne {
        pub info: U32,
    } = 4;
}

layout! {
    /// Port attributes (QUERY_PORT).
    pub struct PortAttr {
        pub state: U32,
        pub max_mtu: U32,
        pub active_mtu: U32,
        pub gid_tbl_len: U32,
        pub port_cap_flags: U32,
        pub max_msg_sz: U32,
        pub bad_pkey_cntr: U32,
        pub qkey_viol_cntr: U32,
        pub pkey_tbl_len: U16,
        pub lid: U16,
        pub sm_lid: U16,
        pub lmc: u8,
        pub max_vl_num: u8,
        pub sm_sl: u8,
        pub subnet_timeout: u8,
        pub init_type_reply: u8,
        pub active_width: u8,
        pub active_speed: u8,
        pub phys_state: u8,
        pub reserved: [u8; 2],
    } = 48;
}

layout! {
    /// An address handle's attributes (in QP attributes).
    pub struct AhAttr {
        pub dgid: [u8; 16],
        pub flow_label: U32,
        pub sgid_index: u8,
        pub hop_limit: u8,
        pub traffic_class: u8,
        pub grh_reserved: u8,
        pub dlid: U16,
        pub vlan_id: U16,
        pub sl: u8,
        pub src_path_bits: u8,
        pub static_rate: u8,
        /// 1: a GRH is present.
        pub ah_flags: u8,
        pub port_num: u8,
        pub dmac: [u8; 6],
        pub reserved: u8,
    } = 40;
}

layout! {
    /// QP capacities.
    pub struct QpCap {
        pub max_send_wr: U32,
        pub max_recv_wr: U32,
        pub max_send_sge: U32,
        pub max_recv_sge: U32,
        pub max_inline_data: U32,
        pub reserved: U32,
    } = 24;
}

layout! {
    /// QP attributes (MODIFY_QP, QUERY_QP).
    pub struct QpAttr {
        pub qp_state: U32,
        pub cur_qp_state: U32,
        pub path_mtu: U32,
        pub path_mig_state: U32,
        pub qkey: U32,
        pub rq_psn: U32,
        pub sq_psn: U32,
        pub dest_qp_num: U32,
        pub qp_access_flags: U32,
        pub pkey_index: U16,
        pub alt_pkey_index: U16,
        pub en_sqd_async_notify: u8,
        pub sq_draining: u8,
        pub max_rd_atomic: u8,
        pub max_dest_rd_atomic: u8,
        pub min_rnr_timer: u8,
        pub port_num: u8,
        pub timeout: u8,
        pub retry_cnt: u8,
        pub rnr_retry: u8,
        pub alt_port_num: u8,
        pub alt_timeout: u8,
        pub reserved: [u8; 5],
        pub cap: QpCap,
        pub ah_attr: AhAttr,
        pub alt_ah_attr: AhAttr,
    } = 160;
}

layout! {
    /// SRQ attributes.
    pub struct SrqAttr {
        pub max_wr: U32,
        pub max_sge: U32,
        pub srq_limit: U32,
        pub reserved: U32,
    } = 16;
}

/// Send WQE opcodes (`PVRDMA_WR_*`, kernel QPs; user QPs send raw
/// libibverbs values, equal for 0 to 6).
pub mod wr_opcode {
    /// RDMA WRITE.
    pub const RDMA_WRITE: u32 = 0;
    /// RDMA WRITE with immediate.
    pub const RDMA_WRITE_WITH_IMM: u32 = 1;
    /// SEND.
    pub const SEND: u32 = 2;
    /// SEND with immediate.
    pub const SEND_WITH_IMM: u32 = 3;
    /// RDMA READ.
    pub const RDMA_READ: u32 = 4;
    /// Compare and swap.
    pub const ATOMIC_CMP_AND_SWP: u32 = 5;
    /// Fetch and add.
    pub const ATOMIC_FETCH_AND_ADD: u32 = 6;
    /// SEND with invalidate (kernel numbering).
    pub const SEND_WITH_INV: u32 = 8;
    /// Local invalidate (kernel numbering).
    pub const LOCAL_INV: u32 = 10;
    /// Fast registration (kernel numbering).
    pub const FAST_REG_MR: u32 = 11;
}

/// Completion opcodes (`PVRDMA_WC_*`).
pub mod wc_opcode {
    /// SEND.
    pub const SEND: u32 = 0;
    /// RDMA WRITE.
    pub const RDMA_WRITE: u32 = 1;
    /// RDMA READ.
    pub const RDMA_READ: u32 = 2;
    /// Compare and swap.
    pub const COMP_SWAP: u32 = 3;
    /// Fetch and add.
    pub const FETCH_ADD: u32 = 4;
    /// Local invalidate.
    pub const LOCAL_INV: u32 = 7;
    /// Fast registration.
    pub const FAST_REG_MR: u32 = 8;
    /// Receive.
    pub const RECV: u32 = 128;
    /// Receive of RDMA WRITE with immediate.
    pub const RECV_RDMA_WITH_IMM: u32 = 129;
}

/// Async event types (`PVRDMA_EVENT_*`, numbered as `ib_event_type`).
pub mod event {
    /// CQ error (overrun).
    pub const CQ_ERR: u32 = 0;
    /// QP fatal error.
    pub const QP_FATAL: u32 = 1;
    /// Invalid request on a QP.
    pub const QP_REQ_ERR: u32 = 2;
    /// Access error on a QP.
    pub const QP_ACCESS_ERR: u32 = 3;
    /// Communication established.
    pub const COMM_EST: u32 = 4;
    /// Device fatal.
    pub const DEVICE_FATAL: u32 = 8;
    /// Port active.
    pub const PORT_ACTIVE: u32 = 9;
    /// Port error.
    pub const PORT_ERR: u32 = 10;
    /// SRQ limit reached.
    pub const SRQ_LIMIT_REACHED: u32 = 15;
    /// Last WQE reached.
    pub const QP_LAST_WQE_REACHED: u32 = 16;
    /// GID change.
    pub const GID_CHANGE: u32 = 18;
}

#[cfg(test)]
mod tests {
    use core::mem::offset_of;

    use super::*;

    #[test]
    fn offsets_match_the_driver() {
        // DSR (absolute).
        assert_eq!(offset_of!(Dsr, cmd_slot_dma), 16);
        assert_eq!(offset_of!(Dsr, resp_slot_dma), 24);
        assert_eq!(offset_of!(Dsr, async_ring_pages), 32);
        assert_eq!(offset_of!(Dsr, cq_ring_pages), 48);
        assert_eq!(offset_of!(Dsr, uar_pfn64), 64);
        // Caps (relative).
        assert_eq!(offset_of!(DeviceCaps, max_qp), 76);
        assert_eq!(offset_of!(DeviceCaps, max_uar), 188);
        assert_eq!(offset_of!(DeviceCaps, max_pkeys), 196);
        assert_eq!(offset_of!(DeviceCaps, mode), 200);
        assert_eq!(offset_of!(DeviceCaps, gid_types), 203);
        assert_eq!(offset_of!(DeviceCaps, max_fast_reg_page_list_len), 204);
        // WQE and CQE.
        assert_eq!(offset_of!(SqWqeHdr, opcode), 16);
        assert_eq!(offset_of!(SqWqeHdr, ex), 24);
        assert_eq!(offset_of!(SqWqeHdr, wr), 32);
        assert_eq!(offset_of!(Cqe, opcode), 16);
        assert_eq!(offset_of!(Cqe, wc_flags), 36);
        assert_eq!(offset_of!(Cqe, smac), 51);
        assert_eq!(offset_of!(Cqe, network_hdr_type), 57);
        // QP attributes.
        assert_eq!(offset_of!(QpAttr, dest_qp_num), 28);
        assert_eq!(offset_of!(QpAttr, max_rd_atomic), 42);
        assert_eq!(offset_of!(QpAttr, cap), 56);
        assert_eq!(offset_of!(QpAttr, ah_attr), 80);
        assert_eq!(offset_of!(QpAttr, alt_ah_attr), 120);
        assert_eq!(offset_of!(AhAttr, sgid_index), 20);
        assert_eq!(offset_of!(AhAttr, ah_flags), 31);
        assert_eq!(offset_of!(AhAttr, dmac), 33);
        assert_eq!(offset_of!(PortAttr, pkey_tbl_len), 32);
        assert_eq!(offset_of!(PortAttr, phys_state), 45);
        assert_eq!(offset_of!(Av, gid_index), 25);
        assert_eq!(offset_of!(Av, dmac), 28);
    }

    #[test]
    fn wr_union_accessors_read_their_offsets() {
        let mut h = SqWqeHdr::default();
        h.wr[0..8].copy_from_slice(&0x1122_3344_5566_7788u64.to_le_bytes());
        h.wr[8..12].copy_from_slice(&0xabcdu32.to_le_bytes());
        assert_eq!(h.rdma(), (0x1122_3344_5566_7788, 0xabcd));
        let mut h = SqWqeHdr::default();
        h.wr[0..4].copy_from_slice(&7u32.to_le_bytes());
        h.wr[4..8].copy_from_slice(&0x1111_0000u32.to_le_bytes());
        h.wr[8 + 25] = 3; // av.gid_index
        h.wr[8 + 28..8 + 34].copy_from_slice(&[2, 0, 0, 0, 0, 9]);
        let (qpn, qkey, av) = h.ud();
        assert_eq!(
            (qpn, qkey, av.gid_index, av.dmac),
            (7, 0x1111_0000, 3, [2, 0, 0, 0, 0, 9])
        );
    }

    #[test]
    fn layouts_read_from_guest_bytes_of_any_content() {
        let bytes = [0xa5u8; 280];
        let dsr = Dsr::read_from_bytes(&bytes).unwrap();
        assert_eq!(dsr.driver_version.get(), 0xa5a5_a5a5);
        assert!(Dsr::read_from_bytes(&bytes[..279]).is_err());
    }
}
