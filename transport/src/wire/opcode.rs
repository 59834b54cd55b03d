//! The BTH opcode and the one table that says, for every opcode this
//! implementation accepts (RC, UC, UD and the RoCEv2 CNP), which extension
//! headers follow the BTH, in which order, and what payload it may carry.
//!
//! The opcode's top three bits name the transport (IBTA 9.2, table 38):
//! 000 RC, 001 UC, 010 RD, 011 UD, 100 CNP (RoCEv2 annex A17), 101 XRC.
//! RD and XRC are not supported, as in Linux rxe.

use core::fmt;

/// The transport an opcode belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Transport {
    /// Reliable connected.
    Rc,
    /// Unreliable connected.
    Uc,
    /// Reliable datagram (not supported).
    Rd,
    /// Unreliable datagram.
    Ud,
    /// RoCEv2 congestion notification packet.
    Cnp,
    /// Extended reliable connected (not supported).
    Xrc,
    /// Manufacturer-specific opcodes 0xc0..=0xff.
    Vendor,
}

impl Transport {
    /// Short upper-case name, as decoders print it.
    pub const fn name(self) -> &'static str {
        match self {
            Transport::Rc => "RC",
            Transport::Uc => "UC",
            Transport::Rd => "RD",
            Transport::Ud => "UD",
            Transport::Cnp => "CNP",
            Transport::Xrc => "XRC",
            Transport::Vendor => "VENDOR",
        }
    }
}

/// A BTH opcode byte.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Opcode(pub u8);

/// A set of extension headers, in wire order. The order of the constants
/// below is the order in which the headers follow the BTH.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct HeaderSet(u16);

impl HeaderSet {
    /// No extension header.
    pub const NONE: HeaderSet = HeaderSet(0);
    /// Datagram ETH, 8 bytes.
    pub const DETH: HeaderSet = HeaderSet(1 << 0);
    /// Flush ETH, 4 bytes.
    pub const FETH: HeaderSet = HeaderSet(1 << 1);
    /// RDMA ETH, 16 bytes.
    pub const RETH: HeaderSet = HeaderSet(1 << 2);
    /// Atomic ETH, 28 bytes.
    pub const ATOMIC_ETH: HeaderSet = HeaderSet(1 << 3);
    /// ACK ETH, 4 bytes.
    pub const AETH: HeaderSet = HeaderSet(1 << 4);
    /// Atomic acknowledge ETH, 8 bytes.
    pub const ATOMIC_ACK_ETH: HeaderSet = HeaderSet(1 << 5);
    /// Immediate data, 4 bytes.
    pub const IMM_DT: HeaderSet = HeaderSet(1 << 6);
    /// Invalidate ETH, 4 bytes.
    pub const IETH: HeaderSet = HeaderSet(1 << 7);
    /// The 16 reserved bytes that follow the BTH of a CNP.
    pub const CNP_RESERVED: HeaderSet = HeaderSet(1 << 8);

    /// Every header, in wire order, with its size in bytes.
    pub const ORDER: [(HeaderSet, usize, &'static str); 9] = [
        (HeaderSet::DETH, 8, "DETH"),
        (HeaderSet::FETH, 4, "FETH"),
        (HeaderSet::RETH, 16, "RETH"),
        (HeaderSet::ATOMIC_ETH, 28, "AtomicETH"),
        (HeaderSet::AETH, 4, "AETH"),
        (HeaderSet::ATOMIC_ACK_ETH, 8, "AtomicAckETH"),
        (HeaderSet::IMM_DT, 4, "ImmDt"),
        (HeaderSet::IETH, 4, "IETH"),
        (HeaderSet::CNP_RESERVED, 16, "CNP-reserved"),
    ];

    /// The union of two sets.
    pub const fn with(self, other: HeaderSet) -> HeaderSet {
        HeaderSet(self.0 | other.0)
    }

    /// The set less the headers of `other`.
    pub const fn without(self, other: HeaderSet) -> HeaderSet {
        HeaderSet(self.0 & !other.0)
    }

    /// Whether every header of `other` is in `self`.
    pub const fn contains(self, other: HeaderSet) -> bool {
        self.0 & other.0 == other.0
    }

    /// Total length of the extension headers in the set.
    pub const fn len(self) -> usize {
        let mut total = 0;
        let mut i = 0;
        while i < Self::ORDER.len() {
            if self.contains(Self::ORDER[i].0) {
                total += Self::ORDER[i].1;
            }
            i += 1;
        }
        total
    }

    /// Whether the set is empty.
    pub const fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// Offset of `header` counted from the end of the BTH, if present.
    pub const fn offset_of(self, header: HeaderSet) -> Option<usize> {
        if !self.contains(header) || header.0.count_ones() != 1 {
            return None;
        }
        let mut off = 0;
        let mut i = 0;
        while i < Self::ORDER.len() {
            if Self::ORDER[i].0.0 == header.0 {
                return Some(off);
            }
            if self.contains(Self::ORDER[i].0) {
                off += Self::ORDER[i].1;
            }
            i += 1;
        }
        None
    }

    /// Iterates the names of the headers in the set, in wire order.
    pub fn names(self) -> impl Iterator<Item = &'static str> {
        Self::ORDER
            .into_iter()
            .filter(move |(h, _, _)| self.contains(*h))
            .map(|(_, _, n)| n)
    }
}

/// What payload an opcode may carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PayloadRule {
    /// No payload.
    None,
    /// Up to one path MTU.
    UpToMtu,
    /// Exactly `n` bytes (ATOMIC_WRITE carries 8).
    Exactly(usize),
}

/// Where a packet sits within its message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Position {
    /// First packet of a multi-packet message: payload is exactly one MTU.
    First,
    /// Middle packet: payload is exactly one MTU.
    Middle,
    /// Last packet: 1..=MTU bytes.
    Last,
    /// The whole message in one packet.
    Only,
}

/// One row of the opcode table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OpcodeInfo {
    /// The opcode byte.
    pub code: u8,
    /// Name without the transport prefix, e.g. `SEND_ONLY`.
    pub name: &'static str,
    /// Extension headers after the BTH.
    pub headers: HeaderSet,
    /// Payload rule.
    pub payload: PayloadRule,
    /// Position within a message.
    pub position: Position,
    /// Whether a requester sends it (as opposed to a responder).
    pub request: bool,
    /// BTH plus extension headers, computed once with the table.
    header_len: usize,
}

impl OpcodeInfo {
    /// Length of the BTH plus the extension headers.
    pub const fn header_len(&self) -> usize {
        self.header_len
    }

    /// The transport of this opcode.
    pub const fn transport(&self) -> Transport {
        Opcode(self.code).transport()
    }
}

const fn row(
    code: u8,
    name: &'static str,
    headers: HeaderSet,
    payload: PayloadRule,
    position: Position,
    request: bool,
) -> OpcodeInfo {
    OpcodeInfo {
        code,
        name,
        headers,
        payload,
        position,
        request,
        header_len: super::bth::HEADER_LEN + headers.len(),
    }
}

use HeaderSet as H;
use PayloadRule::{Exactly, None as NoPay, UpToMtu as Pay};
use Position::{First, Last, Middle, Only};

const NO: HeaderSet = H::NONE;
const RETH_IMM: HeaderSet = H::RETH.with(H::IMM_DT);
const FETH_RETH: HeaderSet = H::FETH.with(H::RETH);
const AETH_ATOMIC: HeaderSet = H::AETH.with(H::ATOMIC_ACK_ETH);
const DETH_IMM: HeaderSet = H::DETH.with(H::IMM_DT);

/// Every opcode this implementation accepts: the header layout for RC, UC,
/// UD and CNP, as in IBTA 9.2 / table 38 plus the FLUSH and ATOMIC_WRITE
/// extensions and RoCEv2 annex A17 for the CNP.
const ROWS: [OpcodeInfo; 40] = [
    // RC
    row(0x00, "SEND_FIRST", NO, Pay, First, true),
    row(0x01, "SEND_MIDDLE", NO, Pay, Middle, true),
    row(0x02, "SEND_LAST", NO, Pay, Last, true),
    row(0x03, "SEND_LAST_WITH_IMMEDIATE", H::IMM_DT, Pay, Last, true),
    row(0x04, "SEND_ONLY", NO, Pay, Only, true),
    row(0x05, "SEND_ONLY_WITH_IMMEDIATE", H::IMM_DT, Pay, Only, true),
    row(0x06, "RDMA_WRITE_FIRST", H::RETH, Pay, First, true),
    row(0x07, "RDMA_WRITE_MIDDLE", NO, Pay, Middle, true),
    row(0x08, "RDMA_WRITE_LAST", NO, Pay, Last, true),
    row(
        0x09,
        "RDMA_WRITE_LAST_WITH_IMMEDIATE",
        H::IMM_DT,
        Pay,
        Last,
        true,
    ),
    row(0x0a, "RDMA_WRITE_ONLY", H::RETH, Pay, Only, true),
    row(
        0x0b,
        "RDMA_WRITE_ONLY_WITH_IMMEDIATE",
        RETH_IMM,
        Pay,
        Only,
        true,
    ),
    row(0x0c, "RDMA_READ_REQUEST", H::RETH, NoPay, Only, true),
    row(0x0d, "RDMA_READ_RESPONSE_FIRST", H::AETH, Pay, First, false),
    row(0x0e, "RDMA_READ_RESPONSE_MIDDLE", NO, Pay, Middle, false),
    row(0x0f, "RDMA_READ_RESPONSE_LAST", H::AETH, Pay, Last, false),
    row(0x10, "RDMA_READ_RESPONSE_ONLY", H::AETH, Pay, Only, false),
    row(0x11, "ACKNOWLEDGE", H::AETH, NoPay, Only, false),
    row(0x12, "ATOMIC_ACKNOWLEDGE", AETH_ATOMIC, NoPay, Only, false),
    row(0x13, "COMPARE_SWAP", H::ATOMIC_ETH, NoPay, Only, true),
    row(0x14, "FETCH_ADD", H::ATOMIC_ETH, NoPay, Only, true),
    row(0x16, "SEND_LAST_WITH_INVALIDATE", H::IETH, Pay, Last, true),
    row(0x17, "SEND_ONLY_WITH_INVALIDATE", H::IETH, Pay, Only, true),
    row(0x1c, "FLUSH", FETH_RETH, NoPay, Only, true),
    row(0x1d, "ATOMIC_WRITE", H::RETH, Exactly(8), Only, true),
    // UC
    row(0x20, "SEND_FIRST", NO, Pay, First, true),
    row(0x21, "SEND_MIDDLE", NO, Pay, Middle, true),
    row(0x22, "SEND_LAST", NO, Pay, Last, true),
    row(0x23, "SEND_LAST_WITH_IMMEDIATE", H::IMM_DT, Pay, Last, true),
    row(0x24, "SEND_ONLY", NO, Pay, Only, true),
    row(0x25, "SEND_ONLY_WITH_IMMEDIATE", H::IMM_DT, Pay, Only, true),
    row(0x26, "RDMA_WRITE_FIRST", H::RETH, Pay, First, true),
    row(0x27, "RDMA_WRITE_MIDDLE", NO, Pay, Middle, true),
    row(0x28, "RDMA_WRITE_LAST", NO, Pay, Last, true),
    row(
        0x29,
        "RDMA_WRITE_LAST_WITH_IMMEDIATE",
        H::IMM_DT,
        Pay,
        Last,
        true,
    ),
    row(0x2a, "RDMA_WRITE_ONLY", H::RETH, Pay, Only, true),
    row(
        0x2b,
        "RDMA_WRITE_ONLY_WITH_IMMEDIATE",
        RETH_IMM,
        Pay,
        Only,
        true,
    ),
    // UD
    row(0x64, "SEND_ONLY", H::DETH, Pay, Only, true),
    row(0x65, "SEND_ONLY_WITH_IMMEDIATE", DETH_IMM, Pay, Only, true),
    // CNP (RoCEv2): BTH, 16 reserved bytes, ICRC.
    row(0x81, "CNP", H::CNP_RESERVED, NoPay, Only, false),
];

const fn build_table() -> [Option<OpcodeInfo>; 256] {
    let mut table = [None; 256];
    let mut i = 0;
    while i < ROWS.len() {
        table[ROWS[i].code as usize] = Some(ROWS[i]);
        i += 1;
    }
    table
}

/// The opcode table indexed by opcode byte; `None` for opcodes we reject.
pub static OPCODE_TABLE: [Option<OpcodeInfo>; 256] = build_table();

impl Opcode {
    /// RC SEND_ONLY.
    pub const RC_SEND_ONLY: Opcode = Opcode(0x04);
    /// RC ACKNOWLEDGE.
    pub const RC_ACKNOWLEDGE: Opcode = Opcode(0x11);
    /// UD SEND_ONLY.
    pub const UD_SEND_ONLY: Opcode = Opcode(0x64);
    /// RoCEv2 congestion notification packet.
    pub const CNP: Opcode = Opcode(0x81);

    /// The transport this opcode belongs to.
    pub const fn transport(self) -> Transport {
        match self.0 >> 5 {
            0 => Transport::Rc,
            1 => Transport::Uc,
            2 => Transport::Rd,
            3 => Transport::Ud,
            4 => Transport::Cnp,
            5 => Transport::Xrc,
            _ => Transport::Vendor,
        }
    }

    /// The table row, or `None` if the opcode is not supported.
    pub fn info(self) -> Option<&'static OpcodeInfo> {
        OPCODE_TABLE[self.0 as usize].as_ref()
    }

    /// The row, or [`super::Error::BadOpcode`].
    pub fn checked_info(self) -> super::Result<&'static OpcodeInfo> {
        self.info().ok_or(super::Error::BadOpcode(self.0))
    }
}

impl fmt::Display for Opcode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.info() {
            Some(_) if *self == Opcode::CNP => f.write_str("CNP"),
            Some(info) => write!(f, "{}_{}", self.transport().name(), info.name),
            None => write!(f, "UNKNOWN({:#04x})", self.0),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_matches_ibta_layouts() {
        let info = |c: u8| Opcode(c).info().copied().unwrap();
        assert_eq!(info(0x04).header_len(), 12);
        assert_eq!(info(0x0b).header_len(), 12 + 16 + 4);
        assert_eq!(info(0x12).header_len(), 12 + 4 + 8);
        assert_eq!(info(0x13).header_len(), 12 + 28);
        assert_eq!(info(0x1c).header_len(), 12 + 4 + 16);
        assert_eq!(info(0x65).header_len(), 12 + 8 + 4);
        assert_eq!(info(0x81).header_len(), 12 + 16);
        assert_eq!(info(0x1c).headers.offset_of(H::RETH), Some(4));
        assert_eq!(info(0x65).headers.offset_of(H::IMM_DT), Some(8));
        assert_eq!(info(0x12).headers.offset_of(H::ATOMIC_ACK_ETH), Some(4));
        assert_eq!(info(0x0b).headers.offset_of(H::AETH), None);
    }

    #[test]
    fn unsupported_opcodes_are_unknown() {
        for c in [
            0x15u8, 0x18, 0x1a, 0x1b, 0x1e, 0x2c, 0x40, 0x60, 0x66, 0x80, 0xa0, 0xff,
        ] {
            assert!(Opcode(c).info().is_none(), "{c:#x}");
            assert_eq!(
                Opcode(c).checked_info(),
                Err(super::super::Error::BadOpcode(c))
            );
        }
        assert_eq!(OPCODE_TABLE.iter().flatten().count(), 40);
    }

    #[test]
    fn uc_rows_mirror_rc_rows() {
        for c in 0x00u8..=0x0b {
            let rc = Opcode(c).info().unwrap();
            let uc = Opcode(c | 0x20).info().unwrap();
            assert_eq!(
                (rc.name, rc.headers, rc.payload),
                (uc.name, uc.headers, uc.payload)
            );
        }
    }

    #[test]
    fn display_names() {
        assert_eq!(Opcode(0x04).to_string(), "RC_SEND_ONLY");
        assert_eq!(Opcode(0x2a).to_string(), "UC_RDMA_WRITE_ONLY");
        assert_eq!(Opcode(0x64).to_string(), "UD_SEND_ONLY");
        assert_eq!(Opcode(0x81).to_string(), "CNP");
        assert_eq!(Opcode(0x99).to_string(), "UNKNOWN(0x99)");
    }
}
