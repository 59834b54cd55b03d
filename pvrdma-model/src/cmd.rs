//! The command channel: the request slot parsed into a typed [`Command`],
//! and typed [`Response`]s written into the response slot.
//!
//! This module owns the layouts of every request and response of the
//! PVRDMA command set (QUERY_PORT, QUERY_PKEY, CREATE/DESTROY of PD, MR,
//! CQ, QP, UC, BIND and SRQ, RESIZE_CQ, MODIFY_QP, QUERY_QP, MODIFY_SRQ,
//! QUERY_SRQ) and their codes: a response's code is `0x8000_0000 +` its
//! command's. Parsing checks only the framing (a known command code);
//! what the fields mean (handles, sizes, page counts) is checked by the
//! device that executes the command, which answers a bad one with ERR
//! and `hdr.err`.

use thiserror::Error;
use zerocopy::{
    FromBytes, Immutable, IntoBytes, KnownLayout,
    little_endian::{U16, U32, U64},
};

use crate::abi::{CMD_SLOT_LEN, CmdHdr, PortAttr, QpAttr, RESP_SLOT_LEN, RespHdr, SrqAttr, layout};

/// Command codes.
pub mod code {
    /// Query the port.
    pub const QUERY_PORT: u32 = 0;
    /// Query a P_Key.
    pub const QUERY_PKEY: u32 = 1;
    /// Create a PD.
    pub const CREATE_PD: u32 = 2;
    /// Destroy a PD.
    pub const DESTROY_PD: u32 = 3;
    /// Create an MR.
    pub const CREATE_MR: u32 = 4;
    /// Destroy an MR.
    pub const DESTROY_MR: u32 = 5;
    /// Create a CQ.
    pub const CREATE_CQ: u32 = 6;
    /// Resize a CQ.
    pub const RESIZE_CQ: u32 = 7;
    /// Destroy a CQ.
    pub const DESTROY_CQ: u32 = 8;
    /// Create a QP.
    pub const CREATE_QP: u32 = 9;
    /// Modify a QP.
    pub const MODIFY_QP: u32 = 10;
    /// Query a QP.
    pub const QUERY_QP: u32 = 11;
    /// Destroy a QP.
    pub const DESTROY_QP: u32 = 12;
    /// Create a user context.
    pub const CREATE_UC: u32 = 13;
    /// Destroy a user context.
    pub const DESTROY_UC: u32 = 14;
    /// Bind a GID.
    pub const CREATE_BIND: u32 = 15;
    /// Unbind a GID.
    pub const DESTROY_BIND: u32 = 16;
    /// Create an SRQ.
    pub const CREATE_SRQ: u32 = 17;
    /// Modify an SRQ.
    pub const MODIFY_SRQ: u32 = 18;
    /// Query an SRQ.
    pub const QUERY_SRQ: u32 = 19;
    /// Destroy an SRQ.
    pub const DESTROY_SRQ: u32 = 20;
    /// The first response code.
    pub const FIRST_RESP: u32 = 0x8000_0000;
}

layout! {
    /// QUERY_PORT and QUERY_PKEY.
    pub struct QueryPort {
        pub hdr: CmdHdr,
        pub port_num: u8,
        pub index: u8,
        pub reserved: [u8; 6],
    } = 24;
}

layout! {
    /// Requests that carry one handle (DESTROY_*, QUERY_SRQ, CREATE_PD's
    /// context, DESTROY_UC, RESIZE_CQ's first field) or CREATE_UC's page
    /// number.
    pub struct Handle {
        pub hdr: CmdHdr,
        pub handle: U32,
        pub extra: U32,
    } = 24;
}

layout! {
    /// CREATE_UC (the UAR page number, 32 bits before version 19).
    pub struct CreateUc {
        pub hdr: CmdHdr,
        pub pfn: U64,
    } = 24;
}

layout! {
    /// CREATE_MR.
    pub struct CreateMr {
        pub hdr: CmdHdr,
        pub start: U64,
        pub length: U64,
        pub pdir_dma: U64,
        pub pd_handle: U32,
        pub access_flags: U32,
        /// Bit 0: DMA MR; bit 1: fast-registration MR.
        pub flags: U32,
        pub nchunks: U32,
    } = 56;
}

layout! {
    /// CREATE_CQ.
    pub struct CreateCq {
        pub hdr: CmdHdr,
        pub pdir_dma: U64,
        pub ctx_handle: U32,
        pub cqe: U32,
        pub nchunks: U32,
        pub reserved: U32,
    } = 40;
}

layout! {
    /// CREATE_QP.
    pub struct CreateQp {
        pub hdr: CmdHdr,
        pub pdir_dma: U64,
        pub pd_handle: U32,
        pub send_cq_handle: U32,
        pub recv_cq_handle: U32,
        pub srq_handle: U32,
        pub max_send_wr: U32,
        pub max_recv_wr: U32,
        pub max_send_sge: U32,
        pub max_recv_sge: U32,
        pub max_inline_data: U32,
        pub lkey: U32,
        pub access_flags: U32,
        pub total_chunks: U16,
        pub send_chunks: U16,
        pub max_atomic_arg: U16,
        pub sq_sig_all: u8,
        pub qp_type: u8,
        pub is_srq: u8,
        pub reserved: [u8; 3],
    } = 80;
}

layout! {
    /// MODIFY_QP.
    pub struct ModifyQp {
        pub hdr: CmdHdr,
        pub qp_handle: U32,
        pub attr_mask: U32,
        pub attrs: QpAttr,
    } = 184;
}

layout! {
    /// QUERY_QP.
    pub struct QueryQp {
        pub hdr: CmdHdr,
        pub qp_handle: U32,
        pub attr_mask: U32,
    } = 24;
}

layout! {
    /// CREATE_BIND.
    pub struct CreateBind {
        pub hdr: CmdHdr,
        pub mtu: U32,
        pub vlan: U32,
        pub index: U32,
        pub new_gid: [u8; 16],
        /// 1 RoCE v1, 2 RoCE v2.
        pub gid_type: u8,
        pub reserved: [u8; 3],
    } = 48;
}

layout! {
    /// DESTROY_BIND.
    pub struct DestroyBind {
        pub hdr: CmdHdr,
        pub index: U32,
        pub dest_gid: [u8; 16],
        pub reserved: [u8; 4],
    } = 40;
}

layout! {
    /// CREATE_SRQ.
    pub struct CreateSrq {
        pub hdr: CmdHdr,
        pub pdir_dma: U64,
        pub pd_handle: U32,
        pub nchunks: U32,
        pub attrs: SrqAttr,
        pub srq_type: u8,
        pub reserved: [u8; 7],
    } = 56;
}

layout! {
    /// MODIFY_SRQ.
    pub struct ModifySrq {
        pub hdr: CmdHdr,
        pub srq_handle: U32,
        pub attr_mask: U32,
        pub attrs: SrqAttr,
    } = 40;
}

/// A parsed command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// QUERY_PORT.
    QueryPort(QueryPort),
    /// QUERY_PKEY.
    QueryPkey(QueryPort),
    /// CREATE_PD (`handle` = context, 0 for the kernel).
    CreatePd(Handle),
    /// DESTROY_PD.
    DestroyPd(Handle),
    /// CREATE_MR.
    CreateMr(CreateMr),
    /// DESTROY_MR.
    DestroyMr(Handle),
    /// CREATE_CQ.
    CreateCq(CreateCq),
    /// RESIZE_CQ (`handle`, `extra` = new cqe).
    ResizeCq(Handle),
    /// DESTROY_CQ.
    DestroyCq(Handle),
    /// CREATE_QP.
    CreateQp(Box<CreateQp>),
    /// MODIFY_QP.
    ModifyQp(Box<ModifyQp>),
    /// QUERY_QP.
    QueryQp(QueryQp),
    /// DESTROY_QP.
    DestroyQp(Handle),
    /// CREATE_UC.
    CreateUc(CreateUc),
    /// DESTROY_UC.
    DestroyUc(Handle),
    /// CREATE_BIND.
    CreateBind(CreateBind),
    /// DESTROY_BIND.
    DestroyBind(DestroyBind),
    /// CREATE_SRQ.
    CreateSrq(CreateSrq),
    /// MODIFY_SRQ.
    ModifySrq(ModifySrq),
    /// QUERY_SRQ.
    QuerySrq(Handle),
    /// DESTROY_SRQ.
    DestroySrq(Handle),
}

/// Why a request slot is not a command.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum CmdError {
    /// An unknown command code.
    #[error("unknown command code {0}")]
    Unknown(u32),
}

fn take<T: FromBytes + Copy>(slot: &[u8; CMD_SLOT_LEN]) -> T {
    // Every request layout is at most CMD_SLOT_LEN bytes (checked at
    // compile time below), so the prefix read cannot fail.
    match T::read_from_prefix(slot) {
        Ok((v, _)) => v,
        Err(_) => unreachable!("request layouts fit the slot"),
    }
}

const _: () = assert!(core::mem::size_of::<ModifyQp>() == CMD_SLOT_LEN);

impl Command {
    /// Parses the request slot.
    pub fn parse(slot: &[u8; CMD_SLOT_LEN]) -> Result<Command, CmdError> {
        let hdr: CmdHdr = take(slot);
        Ok(match hdr.cmd.get() {
            code::QUERY_PORT => Command::QueryPort(take(slot)),
            code::QUERY_PKEY => Command::QueryPkey(take(slot)),
            code::CREATE_PD => Command::CreatePd(take(slot)),
            code::DESTROY_PD => Command::DestroyPd(take(slot)),
            code::CREATE_MR => Command::CreateMr(take(slot)),
            code::DESTROY_MR => Command::DestroyMr(take(slot)),
            code::CREATE_CQ => Command::CreateCq(take(slot)),
            code::RESIZE_CQ => Command::ResizeCq(take(slot)),
            code::DESTROY_CQ => Command::DestroyCq(take(slot)),
            code::CREATE_QP => Command::CreateQp(Box::new(take(slot))),
            code::MODIFY_QP => Command::ModifyQp(Box::new(take(slot))),
            code::QUERY_QP => Command::QueryQp(take(slot)),
            code::DESTROY_QP => Command::DestroyQp(take(slot)),
            code::CREATE_UC => Command::CreateUc(take(slot)),
            code::DESTROY_UC => Command::DestroyUc(take(slot)),
            code::CREATE_BIND => Command::CreateBind(take(slot)),
            code::DESTROY_BIND => Command::DestroyBind(take(slot)),
            code::CREATE_SRQ => Command::CreateSrq(take(slot)),
            code::MODIFY_SRQ => Command::ModifySrq(take(slot)),
            code::QUERY_SRQ => Command::QuerySrq(take(slot)),
            code::DESTROY_SRQ => Command::DestroySrq(take(slot)),
            other => return Err(CmdError::Unknown(other)),
        })
    }

    /// The command's header.
    pub fn hdr(&self) -> CmdHdr {
        match self {
            Command::QueryPort(c) | Command::QueryPkey(c) => c.hdr,
            Command::CreatePd(c)
            | Command::DestroyPd(c)
            | Command::DestroyMr(c)
            | Command::ResizeCq(c)
            | Command::DestroyCq(c)
            | Command::DestroyQp(c)
            | Command::DestroyUc(c)
            | Command::QuerySrq(c)
            | Command::DestroySrq(c) => c.hdr,
            Command::CreateMr(c) => c.hdr,
            Command::CreateCq(c) => c.hdr,
            Command::CreateQp(c) => c.hdr,
            Command::ModifyQp(c) => c.hdr,
            Command::QueryQp(c) => c.hdr,
            Command::CreateUc(c) => c.hdr,
            Command::CreateBind(c) => c.hdr,
            Command::DestroyBind(c) => c.hdr,
            Command::CreateSrq(c) => c.hdr,
            Command::ModifySrq(c) => c.hdr,
        }
    }
}

/// A response body (after the header).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Response {
    /// QUERY_PORT.
    QueryPort(PortAttr),
    /// QUERY_PKEY.
    QueryPkey(u16),
    /// One handle: CREATE_PD, CREATE_UC, CREATE_SRQ (srqn).
    Handle(u32),
    /// CREATE_MR: handle, lkey, rkey.
    CreateMr(u32, u32, u32),
    /// CREATE_CQ: handle and entries.
    CreateCq(u32, u32),
    /// RESIZE_CQ: entries.
    ResizeCq(u32),
    /// CREATE_QP: QPN, QP handle (written only in the version-20 layout),
    /// and the capacities granted.
    CreateQp {
        /// Wire QP number.
        qpn: u32,
        /// Handle the guest uses in doorbells and sees in CQEs.
        handle: u32,
        /// max_send_wr, max_recv_wr, max_send_sge, max_recv_sge,
        /// max_inline_data.
        caps: [u32; 5],
        /// The version-20 layout (separate handle).
        v2: bool,
    },
    /// QUERY_QP.
    QueryQp(Box<QpAttr>),
    /// QUERY_SRQ.
    QuerySrq(SrqAttr),
    /// DESTROY_QP: events reported.
    DestroyQp(u32),
    /// A command without response data.
    Empty,
}

impl Response {
    /// Writes the response to `cmd` (whose header is `req`) with status
    /// `err` (0 = success) into `slot`: the header (the request's
    /// `response` echoed, the ack code) then the body.
    pub fn write(&self, req: &CmdHdr, err: u8, slot: &mut [u8; RESP_SLOT_LEN]) {
        slot.fill(0);
        let hdr = RespHdr {
            response: req.response,
            ack: U32::new(code::FIRST_RESP | req.cmd.get()),
            err,
            reserved: [0; 3],
        };
        slot[..16].copy_from_slice(hdr.as_bytes());
        let body = &mut slot[16..];
        let put32 =
            |b: &mut [u8], at: usize, v: u32| b[at..at + 4].copy_from_slice(&v.to_le_bytes());
        match self {
            Response::QueryPort(p) => body[..48].copy_from_slice(p.as_bytes()),
            Response::QueryPkey(k) => body[..2].copy_from_slice(&k.to_le_bytes()),
            Response::Handle(h) | Response::ResizeCq(h) | Response::DestroyQp(h) => {
                put32(body, 0, *h)
            }
            Response::CreateMr(h, l, r) => {
                put32(body, 0, *h);
                put32(body, 4, *l);
                put32(body, 8, *r);
            }
            Response::CreateCq(h, n) => {
                put32(body, 0, *h);
                put32(body, 4, *n);
            }
            Response::CreateQp {
                qpn,
                handle,
                caps,
                v2,
            } => {
                put32(body, 0, *qpn);
                let mut at = 4;
                if *v2 {
                    put32(body, 4, *handle);
                    at = 8;
                }
                for c in caps {
                    put32(body, at, *c);
                    at += 4;
                }
            }
            Response::QueryQp(a) => body[..160].copy_from_slice(a.as_bytes()),
            Response::QuerySrq(a) => body[..16].copy_from_slice(a.as_bytes()),
            Response::Empty => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use core::mem::offset_of;

    use super::*;

    fn slot(cmd: u32, body: &[(usize, &[u8])]) -> [u8; CMD_SLOT_LEN] {
        let mut s = [0u8; CMD_SLOT_LEN];
        s[0..8].copy_from_slice(&0xdead_beefu64.to_le_bytes());
        s[8..12].copy_from_slice(&cmd.to_le_bytes());
        for (at, b) in body {
            s[*at..*at + b.len()].copy_from_slice(b);
        }
        s
    }

    #[test]
    fn request_offsets_match_the_driver() {
        assert_eq!(offset_of!(CreateMr, pd_handle), 40);
        assert_eq!(offset_of!(CreateMr, nchunks), 52);
        assert_eq!(offset_of!(CreateCq, cqe), 28);
        assert_eq!(offset_of!(CreateQp, max_send_wr), 40);
        assert_eq!(offset_of!(CreateQp, total_chunks), 68);
        assert_eq!(offset_of!(CreateQp, qp_type), 75);
        assert_eq!(offset_of!(CreateQp, is_srq), 76);
        assert_eq!(offset_of!(ModifyQp, attrs), 24);
        assert_eq!(offset_of!(CreateBind, new_gid), 28);
        assert_eq!(offset_of!(CreateBind, gid_type), 44);
        assert_eq!(offset_of!(CreateSrq, attrs), 32);
        assert_eq!(offset_of!(CreateSrq, srq_type), 48);
        assert_eq!(offset_of!(ModifySrq, attrs), 24);
    }

    #[test]
    fn every_code_parses_and_unknown_ones_are_refused() {
        for c in 0..=20 {
            let cmd = Command::parse(&slot(c, &[])).unwrap();
            assert_eq!(cmd.hdr().cmd.get(), c);
            assert_eq!(cmd.hdr().response.get(), 0xdead_beef);
        }
        assert_eq!(Command::parse(&slot(21, &[])), Err(CmdError::Unknown(21)));
        assert_eq!(
            Command::parse(&slot(u32::MAX, &[])),
            Err(CmdError::Unknown(u32::MAX))
        );
    }

    #[test]
    fn create_qp_fields_land_where_the_driver_puts_them() {
        let s = slot(
            code::CREATE_QP,
            &[
                (16, &0x5000u64.to_le_bytes()),
                (40, &64u32.to_le_bytes()),
                (75, &[2]),
            ],
        );
        let Command::CreateQp(q) = Command::parse(&s).unwrap() else {
            panic!("not CREATE_QP");
        };
        assert_eq!(q.pdir_dma.get(), 0x5000);
        assert_eq!(q.max_send_wr.get(), 64);
        assert_eq!(q.qp_type, 2);
    }

    #[test]
    fn responses_echo_the_request_and_ack_its_code() {
        let req = Command::parse(&slot(code::CREATE_QP, &[])).unwrap().hdr();
        let mut out = [0xffu8; RESP_SLOT_LEN];
        Response::CreateQp {
            qpn: 17,
            handle: 3,
            caps: [64, 32, 2, 1, 0],
            v2: true,
        }
        .write(&req, 0, &mut out);
        assert_eq!(&out[0..8], &0xdead_beefu64.to_le_bytes());
        assert_eq!(&out[8..12], &0x8000_0009u32.to_le_bytes());
        assert_eq!(out[12], 0);
        assert_eq!(&out[16..20], &17u32.to_le_bytes());
        assert_eq!(&out[20..24], &3u32.to_le_bytes());
        assert_eq!(&out[24..28], &64u32.to_le_bytes());
        assert_eq!(&out[40..44], &0u32.to_le_bytes());
        assert!(out[44..].iter().all(|b| *b == 0));
        // The version-17 layout: capacities right after the QPN.
        Response::CreateQp {
            qpn: 17,
            handle: 3,
            caps: [64, 32, 2, 1, 0],
            v2: false,
        }
        .write(&req, 0, &mut out);
        assert_eq!(&out[20..24], &64u32.to_le_bytes());
    }
}
