//! Communication Management MADs (IBTA vol. 1 chapter 12) as rdma_cm uses
//! them on RoCE: the 24-byte MAD header and the REQ, REP, RTU, DREQ, DREP
//! and REJ messages, SIDR_REQ and SIDR_REP (how rdma_cm resolves a UD
//! QP), plus the rdma_cm header that a REQ or SIDR_REQ carries in its
//! private data (the IP addresses and port of the connection).
//!
//! Each message is a plain `Repr` with `parse` and `emit` over the whole
//! 256-byte MAD (header included); fields sit at the fixed big-endian
//! offsets of the specification, checked against REQ/REP/RTU/DREQ/DREP
//! frames that Linux 6.1 sent. Fields the peer never needs (alternate
//! path, EE contexts) are written as zero and not parsed.

use core::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use super::{Error, Result, check_room};

/// Size of every MAD.
pub const MAD_LEN: usize = 256;
/// Management class of the CM.
pub const CM_CLASS: u8 = 0x07;
/// MAD method Send (every CM message uses it).
pub const METHOD_SEND: u8 = 0x03;
/// The rdma_cm service ID of the TCP port space: 0x0106 then the port.
pub const RDMA_PS_TCP: u64 = 0x0000_0000_0106_0000;
/// The rdma_cm service ID of the UDP port space (UD QPs, resolved with
/// SIDR): 0x0111 then the port.
pub const RDMA_PS_UDP: u64 = 0x0000_0000_0111_0000;
/// The Q_Key rdma_cm gives the UD QPs of its UDP port space.
pub const RDMA_UDP_QKEY: u32 = 0x0123_4567;
/// SIDR_REP status: the QP was found.
pub const SIDR_SUCCESS: u8 = 0;
/// SIDR_REP status: no listener for the service ID.
pub const SIDR_UNSUPPORTED: u8 = 1;

/// The CM attribute IDs the peer knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CmAttr {
    /// Connection request.
    Req = 0x0010,
    /// Message receipt acknowledgement (request for more time).
    Mra = 0x0011,
    /// Reject.
    Rej = 0x0012,
    /// Reply.
    Rep = 0x0013,
    /// Ready to use.
    Rtu = 0x0014,
    /// Disconnect request.
    Dreq = 0x0015,
    /// Disconnect reply.
    Drep = 0x0016,
    /// Service ID resolution request (UD).
    SidrReq = 0x0017,
    /// Service ID resolution reply (UD).
    SidrRep = 0x0018,
}

impl CmAttr {
    fn from_u16(v: u16) -> Option<CmAttr> {
        Some(match v {
            0x0010 => CmAttr::Req,
            0x0011 => CmAttr::Mra,
            0x0012 => CmAttr::Rej,
            0x0013 => CmAttr::Rep,
            0x0014 => CmAttr::Rtu,
            0x0015 => CmAttr::Dreq,
            0x0016 => CmAttr::Drep,
            0x0017 => CmAttr::SidrReq,
            0x0018 => CmAttr::SidrRep,
            _ => return None,
        })
    }
}

fn bad(what: &'static str) -> Error {
    Error::Malformed {
        layer: "CM MAD",
        reason: super::Reason::Fixed(what),
    }
}

fn be16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}
fn be24(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([0, b[at], b[at + 1], b[at + 2]])
}
fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}
fn be64(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_be_bytes(a)
}
fn put24(b: &mut [u8], at: usize, v: u32) {
    b[at..at + 3].copy_from_slice(&v.to_be_bytes()[1..]);
}

/// Offset of the message body (after the MAD header).
const BODY: usize = 24;

/// The MAD header of a CM message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MadHeader {
    /// Method (3, Send, for every CM message).
    pub method: u8,
    /// Transaction ID: a reply carries the request's.
    pub tid: u64,
    /// Which message.
    pub attr: CmAttr,
}

impl MadHeader {
    /// Parses the header of a CM MAD; anything other than a base version
    /// 1, class 7, class version 2 MAD with a known attribute is an error.
    pub fn parse(mad: &[u8]) -> Result<MadHeader> {
        check_room(mad.len(), MAD_LEN)?;
        if mad[0] != 1 || mad[1] != CM_CLASS || mad[2] != 2 {
            return Err(bad(
                "not a CM MAD (base version 1, class 7, class version 2)",
            ));
        }
        let attr = CmAttr::from_u16(be16(mad, 16)).ok_or(bad("unknown CM attribute"))?;
        Ok(MadHeader {
            method: mad[3],
            tid: be64(mad, 8),
            attr,
        })
    }

    /// Writes the header into the first 24 bytes of `mad`.
    pub fn emit(&self, mad: &mut [u8]) {
        mad[..BODY].fill(0);
        mad[0] = 1;
        mad[1] = CM_CLASS;
        mad[2] = 2;
        mad[3] = self.method;
        mad[8..16].copy_from_slice(&self.tid.to_be_bytes());
        mad[16..18].copy_from_slice(&(self.attr as u16).to_be_bytes());
    }
}

/// Clears `mad`, writes the header of a Send of `attr` with `tid`, and
/// returns the message body for the caller's fields.
fn start_send(mad: &mut [u8], attr: CmAttr, tid: u64) -> &mut [u8] {
    mad[..MAD_LEN].fill(0);
    MadHeader {
        method: METHOD_SEND,
        tid,
        attr,
    }
    .emit(mad);
    &mut mad[BODY..MAD_LEN]
}

/// A connection request (the fields an RC connection over RoCE uses).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReqRepr {
    /// The sender's communication ID.
    pub local_comm_id: u32,
    /// Service ID (rdma_cm: [`RDMA_PS_TCP`] | port).
    pub service_id: u64,
    /// The sender's CA GUID.
    pub local_ca_guid: u64,
    /// The sender's QP number.
    pub local_qpn: u32,
    /// Incoming READ/atomic resources the sender offers.
    pub responder_resources: u8,
    /// Outgoing READ/atomic depth the sender wants.
    pub initiator_depth: u8,
    /// How long the sender waits for a reply (4.096 µs × 2^n).
    pub remote_cm_response_timeout: u8,
    /// Transport service type (0: RC, 1: UC).
    pub transport: u8,
    /// The sender's first PSN.
    pub starting_psn: u32,
    /// How long the receiver may take to reply (4.096 µs × 2^n).
    pub local_cm_response_timeout: u8,
    /// Transport retry count.
    pub retry_count: u8,
    /// Partition key.
    pub pkey: u16,
    /// Path MTU as the IB enum (1 = 256 … 5 = 4096).
    pub path_mtu: u8,
    /// RNR retry count.
    pub rnr_retry_count: u8,
    /// How often the CM retransmits.
    pub max_cm_retries: u8,
    /// The sender's GID.
    pub local_gid: [u8; 16],
    /// The receiver's GID.
    pub remote_gid: [u8; 16],
    /// Flow label.
    pub flow_label: u32,
    /// Traffic class.
    pub traffic_class: u8,
    /// Hop limit.
    pub hop_limit: u8,
    /// Local ACK timeout (4.096 µs × 2^n).
    pub local_ack_timeout: u8,
    /// Private data (rdma_cm: [`CmaHeader`] first).
    pub private_data: [u8; 92],
}

impl ReqRepr {
    /// Parses a REQ MAD.
    pub fn parse(mad: &[u8]) -> Result<ReqRepr> {
        check_room(mad.len(), MAD_LEN)?;
        let b = &mad[BODY..];
        let mut local_gid = [0; 16];
        local_gid.copy_from_slice(&b[56..72]);
        let mut remote_gid = [0; 16];
        remote_gid.copy_from_slice(&b[72..88]);
        let mut private_data = [0; 92];
        private_data.copy_from_slice(&b[140..232]);
        Ok(ReqRepr {
            local_comm_id: be32(b, 0),
            service_id: be64(b, 8),
            local_ca_guid: be64(b, 16),
            local_qpn: be24(b, 32),
            responder_resources: b[35],
            initiator_depth: b[39],
            remote_cm_response_timeout: b[43] >> 3,
            transport: (b[43] >> 1) & 3,
            starting_psn: be24(b, 44),
            local_cm_response_timeout: b[47] >> 3,
            retry_count: b[47] & 7,
            pkey: be16(b, 48),
            path_mtu: b[50] >> 4,
            rnr_retry_count: b[50] & 7,
            max_cm_retries: b[51] >> 4,
            local_gid,
            remote_gid,
            flow_label: be32(b, 88) >> 12,
            traffic_class: b[92],
            hop_limit: b[93],
            local_ack_timeout: b[95] >> 3,
            private_data,
        })
    }

    /// Writes the REQ (header with `tid` included) into `mad`.
    pub fn emit(&self, tid: u64, mad: &mut [u8]) {
        let b = start_send(mad, CmAttr::Req, tid);
        b[0..4].copy_from_slice(&self.local_comm_id.to_be_bytes());
        b[8..16].copy_from_slice(&self.service_id.to_be_bytes());
        b[16..24].copy_from_slice(&self.local_ca_guid.to_be_bytes());
        put24(b, 32, self.local_qpn);
        b[35] = self.responder_resources;
        b[39] = self.initiator_depth;
        b[43] = (self.remote_cm_response_timeout << 3) | ((self.transport & 3) << 1);
        put24(b, 44, self.starting_psn);
        b[47] = (self.local_cm_response_timeout << 3) | (self.retry_count & 7);
        b[48..50].copy_from_slice(&self.pkey.to_be_bytes());
        b[50] = (self.path_mtu << 4) | (self.rnr_retry_count & 7);
        b[51] = self.max_cm_retries << 4;
        // RoCE has no LIDs: both are the permissive LID.
        b[52..56].fill(0xff);
        b[56..72].copy_from_slice(&self.local_gid);
        b[72..88].copy_from_slice(&self.remote_gid);
        b[88..92].copy_from_slice(&(self.flow_label << 12).to_be_bytes());
        b[92] = self.traffic_class;
        b[93] = self.hop_limit;
        b[95] = self.local_ack_timeout << 3;
        b[140..232].copy_from_slice(&self.private_data);
    }
}

/// A connection reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RepRepr {
    /// The sender's communication ID.
    pub local_comm_id: u32,
    /// The REQ sender's communication ID.
    pub remote_comm_id: u32,
    /// The sender's QP number.
    pub local_qpn: u32,
    /// The sender's first PSN.
    pub starting_psn: u32,
    /// Incoming READ/atomic resources the sender offers.
    pub responder_resources: u8,
    /// Outgoing READ/atomic depth the sender uses.
    pub initiator_depth: u8,
    /// Target ACK delay.
    pub target_ack_delay: u8,
    /// RNR retry count.
    pub rnr_retry_count: u8,
    /// The sender's CA GUID.
    pub local_ca_guid: u64,
}

impl RepRepr {
    /// Parses a REP MAD.
    pub fn parse(mad: &[u8]) -> Result<RepRepr> {
        check_room(mad.len(), MAD_LEN)?;
        let b = &mad[BODY..];
        Ok(RepRepr {
            local_comm_id: be32(b, 0),
            remote_comm_id: be32(b, 4),
            local_qpn: be24(b, 12),
            starting_psn: be24(b, 20),
            responder_resources: b[24],
            initiator_depth: b[25],
            target_ack_delay: b[26] >> 3,
            rnr_retry_count: b[27] >> 5,
            local_ca_guid: be64(b, 28),
        })
    }

    /// Writes the REP (header with `tid` included) into `mad`.
    pub fn emit(&self, tid: u64, mad: &mut [u8]) {
        let b = start_send(mad, CmAttr::Rep, tid);
        b[0..4].copy_from_slice(&self.local_comm_id.to_be_bytes());
        b[4..8].copy_from_slice(&self.remote_comm_id.to_be_bytes());
        put24(b, 12, self.local_qpn);
        put24(b, 20, self.starting_psn);
        b[24] = self.responder_resources;
        b[25] = self.initiator_depth;
        b[26] = self.target_ack_delay << 3;
        b[27] = self.rnr_retry_count << 5;
        b[28..36].copy_from_slice(&self.local_ca_guid.to_be_bytes());
    }
}

/// The messages that carry only the two communication IDs (RTU, DREP),
/// or those and the remote QPN (DREQ), or those and a reason (REJ).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IdsRepr {
    /// Which message.
    pub attr: CmAttr,
    /// The sender's communication ID.
    pub local_comm_id: u32,
    /// The other side's communication ID.
    pub remote_comm_id: u32,
    /// DREQ: the receiver's QP number; REJ: the reason code.
    pub extra: u32,
}

impl IdsRepr {
    /// Parses an RTU, DREQ, DREP or REJ MAD.
    pub fn parse(mad: &[u8]) -> Result<IdsRepr> {
        let h = MadHeader::parse(mad)?;
        let b = &mad[BODY..];
        let extra = match h.attr {
            CmAttr::Dreq => be24(b, 8),
            CmAttr::Rej => u32::from(be16(b, 10)),
            CmAttr::Rtu | CmAttr::Drep => 0,
            _ => return Err(bad("not an RTU, DREQ, DREP or REJ")),
        };
        Ok(IdsRepr {
            attr: h.attr,
            local_comm_id: be32(b, 0),
            remote_comm_id: be32(b, 4),
            extra,
        })
    }

    /// Writes the message (header with `tid` included) into `mad`.
    pub fn emit(&self, tid: u64, mad: &mut [u8]) {
        let b = start_send(mad, self.attr, tid);
        b[0..4].copy_from_slice(&self.local_comm_id.to_be_bytes());
        b[4..8].copy_from_slice(&self.remote_comm_id.to_be_bytes());
        match self.attr {
            CmAttr::Dreq => put24(b, 8, self.extra),
            CmAttr::Rej => {
                // Message REJected: 0 (the REQ).
                b[10..12].copy_from_slice(&(self.extra as u16).to_be_bytes());
            }
            _ => {}
        }
    }
}

/// A service ID resolution request: which UD QP serves a service ID (for
/// rdma_cm, [`RDMA_PS_UDP`] | port; the rdma_cm header opens the private
/// data).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SidrReqRepr {
    /// The sender's request ID (the reply carries it).
    pub request_id: u32,
    /// P_Key.
    pub pkey: u16,
    /// Service ID.
    pub service_id: u64,
    /// Private data (216 bytes).
    pub private_data: [u8; 216],
}

impl SidrReqRepr {
    /// Parses a SIDR_REQ MAD.
    pub fn parse(mad: &[u8]) -> Result<SidrReqRepr> {
        let h = MadHeader::parse(mad)?;
        if h.attr != CmAttr::SidrReq {
            return Err(bad("not a SIDR_REQ"));
        }
        let b = &mad[BODY..];
        let mut private_data = [0u8; 216];
        private_data.copy_from_slice(&b[16..232]);
        Ok(SidrReqRepr {
            request_id: be32(b, 0),
            pkey: be16(b, 4),
            service_id: be64(b, 8),
            private_data,
        })
    }

    /// Writes the message (header with `tid` included) into `mad`.
    pub fn emit(&self, tid: u64, mad: &mut [u8]) {
        let b = start_send(mad, CmAttr::SidrReq, tid);
        b[0..4].copy_from_slice(&self.request_id.to_be_bytes());
        b[4..6].copy_from_slice(&self.pkey.to_be_bytes());
        b[8..16].copy_from_slice(&self.service_id.to_be_bytes());
        b[16..232].copy_from_slice(&self.private_data);
    }
}

/// A service ID resolution reply: the UD QP and Q_Key that serve the
/// request's service ID, or a status saying why not. Additional
/// information and private data are written as zero and not parsed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SidrRepRepr {
    /// The request ID of the SIDR_REQ answered.
    pub request_id: u32,
    /// [`SIDR_SUCCESS`], [`SIDR_UNSUPPORTED`] or another IBTA status.
    pub status: u8,
    /// The QP (24 bits).
    pub qpn: u32,
    /// Service ID.
    pub service_id: u64,
    /// The QP's Q_Key.
    pub qkey: u32,
}

impl SidrRepRepr {
    /// Parses a SIDR_REP MAD.
    pub fn parse(mad: &[u8]) -> Result<SidrRepRepr> {
        let h = MadHeader::parse(mad)?;
        if h.attr != CmAttr::SidrRep {
            return Err(bad("not a SIDR_REP"));
        }
        let b = &mad[BODY..];
        Ok(SidrRepRepr {
            request_id: be32(b, 0),
            status: b[4],
            qpn: be24(b, 8),
            service_id: be64(b, 12),
            qkey: be32(b, 20),
        })
    }

    /// Writes the message (header with `tid` included) into `mad`.
    pub fn emit(&self, tid: u64, mad: &mut [u8]) {
        let b = start_send(mad, CmAttr::SidrRep, tid);
        b[0..4].copy_from_slice(&self.request_id.to_be_bytes());
        b[4] = self.status;
        put24(b, 8, self.qpn);
        b[12..20].copy_from_slice(&self.service_id.to_be_bytes());
        b[20..24].copy_from_slice(&self.qkey.to_be_bytes());
    }
}

/// The rdma_cm header at the start of a REQ's private data: version 0,
/// IP version, the active side's port and both addresses (IPv4 in the
/// last 4 bytes of each 16).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CmaHeader {
    /// The active side's (source) port.
    pub src_port: u16,
    /// The active side's address.
    pub src: IpAddr,
    /// The passive side's address.
    pub dst: IpAddr,
}

impl CmaHeader {
    /// Length in the private data.
    pub const LEN: usize = 36;

    /// Parses the header from a REQ's private data.
    pub fn parse(p: &[u8]) -> Result<CmaHeader> {
        check_room(p.len(), Self::LEN)?;
        if p[0] != 0 {
            return Err(bad("rdma_cm header version is not 0"));
        }
        let addr = |at: usize, v4: bool| -> IpAddr {
            let mut a = [0u8; 16];
            a.copy_from_slice(&p[at..at + 16]);
            if v4 {
                IpAddr::V4(Ipv4Addr::new(a[12], a[13], a[14], a[15]))
            } else {
                IpAddr::V6(Ipv6Addr::from(a))
            }
        };
        let v4 = match p[1] >> 4 {
            4 => true,
            6 => false,
            _ => return Err(bad("rdma_cm header IP version is not 4 or 6")),
        };
        Ok(CmaHeader {
            src_port: be16(p, 2),
            src: addr(4, v4),
            dst: addr(20, v4),
        })
    }

    /// Writes the header into the start of `p`.
    pub fn emit(&self, p: &mut [u8]) {
        p[..Self::LEN].fill(0);
        p[1] = if self.src.is_ipv4() { 0x40 } else { 0x60 };
        p[2..4].copy_from_slice(&self.src_port.to_be_bytes());
        for (at, a) in [(4, self.src), (20, self.dst)] {
            match a {
                IpAddr::V4(v) => p[at + 12..at + 16].copy_from_slice(&v.octets()),
                IpAddr::V6(v) => p[at..at + 16].copy_from_slice(&v.octets()),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    /// The MAD of a REQ Linux 6.1 sent (ib_send_lat -R, 10.77.0.2 to .1).
    fn linux_req() -> Vec<u8> {
        let mut m = hex(concat!(
            "010702030000000000000002fdd10b150010000000000000",
            "150bd1fd000000000000000001064853505400fffe770002",
            "000000000000000000001a0000000000000000a0b94fb6a7ffff37f0ffffffff",
            "00000000000000000000ffff0a4d000200000000000000000000ffff0a4d0001",
            "ba93b00000400098",
        ));
        m.resize(BODY + 140, 0);
        m.extend(hex(concat!(
            "0040e218000000000000000000000000",
            "0a4d0002000000000000000000000000",
            "0a4d0001"
        )));
        m.resize(MAD_LEN, 0);
        m
    }

    #[test]
    fn linux_req_parses_and_re_emits() {
        let mad = linux_req();
        let h = MadHeader::parse(&mad).unwrap();
        assert_eq!((h.attr, h.tid), (CmAttr::Req, 0x0000_0002_fdd1_0b15));
        let r = ReqRepr::parse(&mad).unwrap();
        assert_eq!(r.local_comm_id, 0x150b_d1fd);
        assert_eq!(r.service_id, RDMA_PS_TCP | 18515);
        assert_eq!(r.local_qpn, 0x1a);
        assert_eq!(r.starting_psn, 0xb94fb6);
        assert_eq!((r.path_mtu, r.retry_count, r.rnr_retry_count), (3, 7, 7));
        assert_eq!((r.local_cm_response_timeout, r.max_cm_retries), (20, 15));
        assert_eq!((r.hop_limit, r.local_ack_timeout, r.pkey), (64, 19, 0xffff));
        let c = CmaHeader::parse(&r.private_data).unwrap();
        assert_eq!(c.src_port, 0xe218);
        assert_eq!(c.src, IpAddr::V4(Ipv4Addr::new(10, 77, 0, 2)));
        assert_eq!(c.dst, IpAddr::V4(Ipv4Addr::new(10, 77, 0, 1)));
        let mut out = vec![0u8; MAD_LEN];
        r.emit(h.tid, &mut out);
        assert_eq!(out, mad);
    }

    #[test]
    fn linux_rep_rtu_dreq_round_trip() {
        let mut rep = hex(concat!(
            "010702030000000000000002fdd10b150013000000000000",
            "8940a1d4150bd1fd000000000000190000000000",
            "95cfae00000078e0505400fffe770001"
        ));
        rep.resize(MAD_LEN, 0);
        let r = RepRepr::parse(&rep).unwrap();
        assert_eq!(
            (r.local_comm_id, r.remote_comm_id),
            (0x8940_a1d4, 0x150b_d1fd)
        );
        assert_eq!((r.local_qpn, r.starting_psn), (0x19, 0x95cfae));
        assert_eq!((r.target_ack_delay, r.rnr_retry_count), (15, 7));
        let mut out = vec![0u8; MAD_LEN];
        r.emit(0x0000_0002_fdd1_0b15, &mut out);
        assert_eq!(out, rep);

        let mut dreq = hex(concat!(
            "010702030000000000000002fdd10b140015000000000000",
            "140bd1fd8b40a1d400001a00"
        ));
        dreq.resize(MAD_LEN, 0);
        let d = IdsRepr::parse(&dreq).unwrap();
        assert_eq!((d.attr, d.extra), (CmAttr::Dreq, 0x1a));
        d.emit(0x0000_0002_fdd1_0b14, &mut out);
        assert_eq!(out, dreq);
    }

    #[test]
    fn rejects_other_mads() {
        let mut m = linux_req();
        m[1] = 0x81;
        assert!(MadHeader::parse(&m).is_err());
        let mut m = linux_req();
        m[17] = 0x99;
        assert!(MadHeader::parse(&m).is_err());
        assert!(MadHeader::parse(&[0u8; 100]).is_err());
        let mut p = [0u8; 92];
        p[1] = 0x50;
        assert!(CmaHeader::parse(&p).is_err());
    }

    #[test]
    fn sidr_round_trip_at_the_spec_offsets() {
        let mut private_data = [0u8; 216];
        CmaHeader {
            src_port: 0x9abc,
            src: "10.77.0.2".parse().unwrap(),
            dst: "10.77.0.1".parse().unwrap(),
        }
        .emit(&mut private_data);
        let req = SidrReqRepr {
            request_id: 0x1122_3344,
            pkey: 0xffff,
            service_id: RDMA_PS_UDP | 18515,
            private_data,
        };
        let mut m = [0u8; MAD_LEN];
        req.emit(7, &mut m);
        assert_eq!(&m[16..18], &[0x00, 0x17]);
        assert_eq!(&m[24..28], &[0x11, 0x22, 0x33, 0x44]);
        assert_eq!(&m[28..30], &[0xff, 0xff]);
        assert_eq!(&m[32..40], &[0, 0, 0, 0, 0x01, 0x11, 0x48, 0x53]);
        assert_eq!(m[41], 0x40);
        assert_eq!(SidrReqRepr::parse(&m).unwrap(), req);
        let h = CmaHeader::parse(&SidrReqRepr::parse(&m).unwrap().private_data).unwrap();
        assert_eq!(h.src_port, 0x9abc);

        let rep = SidrRepRepr {
            request_id: 0x1122_3344,
            status: SIDR_SUCCESS,
            qpn: 0x00ab_cdef,
            service_id: RDMA_PS_UDP | 18515,
            qkey: RDMA_UDP_QKEY,
        };
        rep.emit(7, &mut m);
        assert_eq!(&m[16..18], &[0x00, 0x18]);
        assert_eq!(m[28], 0);
        assert_eq!(&m[32..36], &[0xab, 0xcd, 0xef, 0]);
        assert_eq!(&m[36..44], &[0, 0, 0, 0, 0x01, 0x11, 0x48, 0x53]);
        assert_eq!(&m[44..48], &[0x01, 0x23, 0x45, 0x67]);
        assert_eq!(SidrRepRepr::parse(&m).unwrap(), rep);
        // One is not the other.
        assert!(SidrReqRepr::parse(&m).is_err());
        assert!(IdsRepr::parse(&m).is_err());
    }
}
