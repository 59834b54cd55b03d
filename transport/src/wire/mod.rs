//! RoCEv2 wire formats: the InfiniBand transport headers, the opcode
//! table, the ICRC, and the outer Ethernet/IP/UDP framing.
//!
//! Written in the style of smoltcp's `wire` module. Every header has a
//! zero-copy view `Header<T: AsRef<[u8]>>` (getters on `AsRef`, setters on
//! `AsMut`, plus `new_unchecked`, `new_checked`, `check_len` and
//! `into_inner`) and a plain `Repr` struct with `parse`, `emit` and
//! `buffer_len`.
//!
//! Contract: once `check_len` (or `new_checked`) has succeeded, no accessor
//! of that view panics, and a `Repr`'s `emit` never panics on a buffer of
//! exactly `buffer_len()` bytes.
//!
//! The outer headers (Ethernet, IPv4, IPv6, UDP) are parsed and written by
//! `etherparse`; [`frame`] only glues them to the transport packet.

/// Declares a zero-copy header view with the common constructors
/// (`new_unchecked`, `new_checked`, `check_len`, `into_inner`).
macro_rules! header_view {
    ($(#[$meta:meta])* $name:ident, $len:expr) => {
        $(#[$meta])*
        #[derive(Debug, Clone)]
        pub struct $name<T: AsRef<[u8]>> {
            buffer: T,
        }

        impl<T: AsRef<[u8]>> $name<T> {
            /// Length of this header in bytes.
            pub const LEN: usize = $len;

            /// Wraps a buffer without checking its length.
            pub const fn new_unchecked(buffer: T) -> Self {
                Self { buffer }
            }

            /// Wraps a buffer and checks that it holds the whole header.
            pub fn new_checked(buffer: T) -> $crate::wire::Result<Self> {
                let header = Self::new_unchecked(buffer);
                header.check_len()?;
                Ok(header)
            }

            /// Checks that the buffer holds the whole header.
            pub fn check_len(&self) -> $crate::wire::Result<()> {
                $crate::wire::check_room(self.buffer.as_ref().len(), $len)
            }

            /// Returns the underlying buffer.
            pub fn into_inner(self) -> T {
                self.buffer
            }
        }
    };
}

/// Declares a header that is one big-endian value (ImmDt, IETH,
/// AtomicAckETH): its view with getter and setter, and its `Repr`.
macro_rules! value_header {
    (
        $(#[$meta:meta])* $name:ident, $repr:ident, $ty:ty, $get:ident, $set:ident,
        $read:path, $write:path, $doc:literal
    ) => {
        header_view!($(#[$meta])* $name, core::mem::size_of::<$ty>());

        impl<T: AsRef<[u8]>> $name<T> {
            #[doc = $doc]
            pub fn $get(&self) -> $ty {
                $read(self.buffer.as_ref(), 0)
            }
        }

        impl<T: AsRef<[u8]> + AsMut<[u8]>> $name<T> {
            #[doc = concat!("Sets: ", $doc)]
            pub fn $set(&mut self, v: $ty) {
                $write(self.buffer.as_mut(), 0, v);
            }
        }

        #[doc = concat!("A parsed ", stringify!($name), ".")]
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub struct $repr {
            #[doc = $doc]
            pub $get: $ty,
        }

        impl $repr {
            /// Parses the header.
            pub fn parse<T: AsRef<[u8]>>(h: &$name<T>) -> $crate::wire::Result<$repr> {
                h.check_len()?;
                Ok($repr { $get: h.$get() })
            }

            /// Length of the emitted header.
            pub const fn buffer_len(&self) -> usize {
                core::mem::size_of::<$ty>()
            }

            /// Writes the header.
            pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(&self, h: &mut $name<T>) {
                h.$set(self.$get);
            }
        }
    };
}

mod aeth;
mod atomic_ack_eth;
mod atomic_eth;
mod bth;
pub mod cm;
mod deth;
mod feth;
pub mod frame;
pub mod icrc;
mod ieth;
mod immdt;
mod opcode;
mod packet;
mod reth;

pub use aeth::{Aeth, AethRepr, AethSyndrome, INVALID_CREDITS, NakCode};
pub use atomic_ack_eth::{AtomicAckEth, AtomicAckEthRepr};
pub use atomic_eth::{AtomicEth, AtomicEthRepr};
pub use bth::{Bth, BthRepr};
pub use deth::{Deth, DethRepr};
pub use feth::{Feth, FethRepr};
pub use ieth::{Ieth, IethRepr};
pub use immdt::{ImmDt, ImmDtRepr};
pub use opcode::{HeaderSet, OPCODE_TABLE, Opcode, OpcodeInfo, PayloadRule, Position, Transport};
pub use packet::{ExtHeaders, Packet, PacketRepr};
pub use reth::{Reth, RethRepr};

/// UDP destination port that identifies RoCEv2.
pub const ROCE_V2_UDP_PORT: u16 = 4791;
/// Size of the invariant CRC that ends every RoCEv2 packet.
pub const ICRC_LEN: usize = 4;
/// The PSN is 24 bits wide.
pub const PSN_MASK: u32 = 0x00ff_ffff;
/// Queue pair numbers are 24 bits wide.
pub const QPN_MASK: u32 = 0x00ff_ffff;
/// The default partition key, full membership.
pub const DEFAULT_PKEY: u16 = 0xffff;
/// The Q_Key of the general services interface (QP1).
pub const GSI_QKEY: u32 = 0x8001_0000;

/// What can be wrong with bytes on the wire. Each variant says exactly
/// which check failed, so a caller can tell truncation from corruption.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// The buffer ends before the structure it should hold.
    #[error("truncated: need {need} bytes, have {have}")]
    Truncated {
        /// Bytes the structure needs.
        need: usize,
        /// Bytes that are there.
        have: usize,
    },
    /// The BTH opcode is not one this implementation knows (RD, XRC,
    /// reserved and vendor opcodes are all unknown).
    #[error("unknown or unsupported opcode {0:#04x}")]
    BadOpcode(u8),
    /// The BTH transport header version is not 0.
    #[error("BTH transport version {0}, expected 0")]
    BadVersion(u8),
    /// The transport packet is not a whole number of 4-byte words.
    #[error("transport packet of {0} bytes is not a multiple of 4")]
    Unaligned(usize),
    /// The pad count is larger than the bytes that follow the headers.
    #[error("pad count {pad} is larger than the {room} bytes after the headers")]
    BadPad {
        /// Pad count from the BTH.
        pad: u8,
        /// Bytes between the last header and the ICRC.
        room: usize,
    },
    /// The payload length does not fit what the opcode allows.
    #[error("{opcode} must carry {expected}, but carries {len} payload bytes")]
    BadPayloadLength {
        /// Opcode name.
        opcode: &'static str,
        /// What the opcode requires, in words.
        expected: &'static str,
        /// Actual payload length.
        len: usize,
    },
    /// The payload is larger than the path MTU.
    #[error("payload of {len} bytes exceeds the path MTU of {mtu}")]
    PayloadTooLong {
        /// Actual payload length.
        len: usize,
        /// Path MTU in bytes.
        mtu: usize,
    },
    /// A first or middle packet is not exactly one path MTU long.
    #[error("{opcode} must carry exactly the path MTU of {mtu} bytes, carries {len}")]
    ShortSegment {
        /// Opcode name.
        opcode: &'static str,
        /// Path MTU in bytes.
        mtu: usize,
        /// Actual payload length.
        len: usize,
    },
    /// Not one of the five IB MTUs.
    #[error("invalid MTU {0}: valid values are 256, 512, 1024, 2048 and 4096")]
    BadMtu(usize),
    /// The ICRC carried in the packet differs from the one computed.
    #[error("bad ICRC: computed {computed:#010x}, packet carries {found:#010x}")]
    BadIcrc {
        /// ICRC computed over the packet.
        computed: u32,
        /// ICRC found in the packet (little-endian as on the wire).
        found: u32,
    },
    /// The frame is well formed but is not RoCEv2 (not IP, not UDP, or not
    /// to port 4791).
    #[error("not RoCEv2: {0}")]
    NotRoce(&'static str),
    /// An outer header (Ethernet, IP, UDP) is malformed.
    #[error("malformed {layer} header: {reason}")]
    Malformed {
        /// Which layer.
        layer: &'static str,
        /// What etherparse or our own check reported.
        reason: Reason,
    },
}

/// What is wrong with a malformed header. Every variant a received packet
/// can produce is built without allocating, so a stream of damaged or
/// hostile packets costs no allocation; only checks of what the caller
/// builds (`PacketRepr::check`) spell out a longer text.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Reason {
    /// etherparse's report on the outer headers, kept as it was.
    #[error("{0}")]
    Outer(etherparse::err::packet::SliceError),
    /// A fixed description.
    #[error("{0}")]
    Fixed(&'static str),
    /// A description and the value that broke it.
    #[error("{0} {1}")]
    Value(&'static str, u64),
    /// A longer text, for checks of reprs the caller built.
    #[error("{0}")]
    Text(String),
}

/// Result type of the wire layer.
pub type Result<T> = core::result::Result<T, Error>;

/// Returns `Err(Truncated)` unless `have >= need`.
#[inline]
pub(crate) fn check_room(have: usize, need: usize) -> Result<()> {
    if have < need {
        Err(Error::Truncated { need, have })
    } else {
        Ok(())
    }
}

/// Reads a big-endian u32 at `at`.
#[inline]
pub(crate) fn read_u32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// Reads a big-endian u64 at `at`.
#[inline]
pub(crate) fn read_u64(b: &[u8], at: usize) -> u64 {
    (u64::from(read_u32(b, at)) << 32) | u64::from(read_u32(b, at + 4))
}

/// Writes a big-endian u32 at `at`.
#[inline]
pub(crate) fn write_u32(b: &mut [u8], at: usize, v: u32) {
    b[at..at + 4].copy_from_slice(&v.to_be_bytes());
}

/// Writes a big-endian u64 at `at`.
#[inline]
pub(crate) fn write_u64(b: &mut [u8], at: usize, v: u64) {
    b[at..at + 8].copy_from_slice(&v.to_be_bytes());
}

/// Reads a big-endian 24-bit value from three bytes.
#[inline]
pub(crate) fn read_u24(b: &[u8]) -> u32 {
    u32::from_be_bytes([0, b[0], b[1], b[2]])
}

/// Writes the low 24 bits of `v` big-endian into three bytes.
#[inline]
pub(crate) fn write_u24(b: &mut [u8], v: u32) {
    b[..3].copy_from_slice(&v.to_be_bytes()[1..]);
}

/// The InfiniBand path MTUs (IBTA 7.7.2, `enum ib_mtu`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Mtu {
    /// 256 bytes.
    Mtu256,
    /// 512 bytes.
    Mtu512,
    /// 1024 bytes.
    Mtu1024,
    /// 2048 bytes.
    Mtu2048,
    /// 4096 bytes.
    Mtu4096,
}

impl Mtu {
    /// Every MTU, smallest first.
    pub const ALL: [Mtu; 5] = [
        Mtu::Mtu256,
        Mtu::Mtu512,
        Mtu::Mtu1024,
        Mtu::Mtu2048,
        Mtu::Mtu4096,
    ];

    /// The MTU in bytes.
    pub const fn bytes(self) -> usize {
        match self {
            Mtu::Mtu256 => 256,
            Mtu::Mtu512 => 512,
            Mtu::Mtu1024 => 1024,
            Mtu::Mtu2048 => 2048,
            Mtu::Mtu4096 => 4096,
        }
    }

    /// The MTU from its size in bytes.
    pub fn from_bytes(bytes: usize) -> Result<Mtu> {
        Mtu::ALL
            .into_iter()
            .find(|m| m.bytes() == bytes)
            .ok_or(Error::BadMtu(bytes))
    }

    /// The largest IB MTU for a netdev MTU, as rxe picks it
    /// (`eth_mtu_int_to_enum`): the netdev MTU less the 80-byte worst-case
    /// header allowance, rounded down to an IB MTU. `None` if not even 256
    /// fits.
    pub fn for_ethernet_mtu(eth_mtu: usize) -> Option<Mtu> {
        let room = eth_mtu.checked_sub(80)?;
        Mtu::ALL.into_iter().rev().find(|m| m.bytes() <= room)
    }
}

/// Number of pad bytes that bring `payload_len` to a multiple of 4.
#[inline]
pub const fn pad_len(payload_len: usize) -> usize {
    (4 - (payload_len & 3)) & 3
}
