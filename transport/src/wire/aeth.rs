//! ACK Extended Transport Header (IBTA 9.3.5), 4 bytes: the syndrome of an
//! ACK, RNR NAK or NAK, and the message sequence number.
//!
//! Syndrome bits 6..5 select the kind: 00 ACK (bits 4..0 are the credit
//! count), 01 RNR NAK (bits 4..0 are the RNR timer code), 11 NAK (bits
//! 4..0 are the NAK code). Bit 7 is reserved, and kind 10 is reserved.

use super::{Result, read_u24, write_u24};

/// ```text
/// +-+---+---------+-----------------------------------------------+
/// |0|Typ| Value   |                 MSN (24)                      |
/// +-+---+---------+-----------------------------------------------+
/// ```
mod field {
    use core::ops::Range;
    pub const SYNDROME: usize = 0;
    pub const MSN: Range<usize> = 1..4;
}

/// The credit count that means "no credit information" (IBTA 9.7.7.2.2).
pub const INVALID_CREDITS: u8 = 31;

/// A NAK code (syndrome 011xxxxx).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum NakCode {
    /// PSN sequence error: the requester must go back and resend.
    PsnSequenceError,
    /// Invalid request.
    InvalidRequest,
    /// Remote access error.
    RemoteAccessError,
    /// Remote operational error.
    RemoteOperationalError,
    /// Invalid RD request.
    InvalidRdRequest,
    /// Any reserved code 5..=31.
    Reserved(u8),
}

impl NakCode {
    const fn from_bits(v: u8) -> NakCode {
        match v & 0x1f {
            0 => NakCode::PsnSequenceError,
            1 => NakCode::InvalidRequest,
            2 => NakCode::RemoteAccessError,
            3 => NakCode::RemoteOperationalError,
            4 => NakCode::InvalidRdRequest,
            n => NakCode::Reserved(n),
        }
    }

    const fn bits(self) -> u8 {
        match self {
            NakCode::PsnSequenceError => 0,
            NakCode::InvalidRequest => 1,
            NakCode::RemoteAccessError => 2,
            NakCode::RemoteOperationalError => 3,
            NakCode::InvalidRdRequest => 4,
            NakCode::Reserved(n) => n & 0x1f,
        }
    }
}

/// A decoded AETH syndrome.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AethSyndrome {
    /// Positive acknowledgement with the credit count (0..=30, 31 invalid).
    Ack {
        /// End-to-end credit count code.
        credits: u8,
    },
    /// Receiver not ready, with the RNR timer code.
    RnrNak {
        /// Minimum RNR NAK timer code (IBTA table 45).
        timer: u8,
    },
    /// Negative acknowledgement.
    Nak(NakCode),
    /// Reserved kind 10, with its low five bits.
    Reserved(u8),
}

impl AethSyndrome {
    /// Decodes a syndrome byte. Bit 7 is reserved and ignored.
    pub const fn from_byte(b: u8) -> AethSyndrome {
        let value = b & 0x1f;
        match (b >> 5) & 0x3 {
            0 => AethSyndrome::Ack { credits: value },
            1 => AethSyndrome::RnrNak { timer: value },
            2 => AethSyndrome::Reserved(value),
            _ => AethSyndrome::Nak(NakCode::from_bits(value)),
        }
    }

    /// Encodes the syndrome byte.
    pub const fn to_byte(self) -> u8 {
        match self {
            AethSyndrome::Ack { credits } => credits & 0x1f,
            AethSyndrome::RnrNak { timer } => 0x20 | (timer & 0x1f),
            AethSyndrome::Reserved(v) => 0x40 | (v & 0x1f),
            AethSyndrome::Nak(code) => 0x60 | code.bits(),
        }
    }
}

header_view!(
    /// A read/write view of an AETH.
    Aeth,
    4
);

impl<T: AsRef<[u8]>> Aeth<T> {
    /// Raw syndrome byte.
    pub fn syndrome_byte(&self) -> u8 {
        self.buffer.as_ref()[field::SYNDROME]
    }

    /// Decoded syndrome.
    pub fn syndrome(&self) -> AethSyndrome {
        AethSyndrome::from_byte(self.syndrome_byte())
    }

    /// Message sequence number.
    pub fn msn(&self) -> u32 {
        read_u24(&self.buffer.as_ref()[field::MSN])
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Aeth<T> {
    /// Sets the syndrome.
    pub fn set_syndrome(&mut self, s: AethSyndrome) {
        self.buffer.as_mut()[field::SYNDROME] = s.to_byte();
    }

    /// Sets the MSN (low 24 bits).
    pub fn set_msn(&mut self, msn: u32) {
        write_u24(&mut self.buffer.as_mut()[field::MSN], msn);
    }
}

/// A parsed AETH.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct AethRepr {
    /// Syndrome.
    pub syndrome: AethSyndrome,
    /// Message sequence number, 24 bits.
    pub msn: u32,
}

impl AethRepr {
    /// Parses an AETH.
    pub fn parse<T: AsRef<[u8]>>(h: &Aeth<T>) -> Result<AethRepr> {
        h.check_len()?;
        Ok(AethRepr {
            syndrome: h.syndrome(),
            msn: h.msn(),
        })
    }

    /// Length of the emitted header.
    pub const fn buffer_len(&self) -> usize {
        4
    }

    /// Writes the AETH.
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(&self, h: &mut Aeth<T>) {
        h.set_syndrome(self.syndrome);
        h.set_msn(self.msn);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::Error;

    // The ACK in frame 2 of the rxe capture: credits 31 (invalid), MSN 1.
    static BYTES: [u8; 4] = [0x1f, 0x00, 0x00, 0x01];
    const REPR: AethRepr = AethRepr {
        syndrome: AethSyndrome::Ack { credits: 31 },
        msn: 1,
    };

    #[test]
    fn deconstruct() {
        let h = Aeth::new_checked(&BYTES[..]).unwrap();
        assert_eq!(h.syndrome(), AethSyndrome::Ack { credits: 31 });
        assert_eq!(h.msn(), 1);
    }

    #[test]
    fn construct() {
        let mut buf = [0u8; 4];
        let mut h = Aeth::new_unchecked(&mut buf[..]);
        h.set_syndrome(AethSyndrome::Ack { credits: 31 });
        h.set_msn(1);
        assert_eq!(buf, BYTES);
    }

    #[test]
    fn parse_and_emit() {
        assert_eq!(AethRepr::parse(&Aeth::new_unchecked(&BYTES[..])), Ok(REPR));
        let mut buf = [0xffu8; 4];
        REPR.emit(&mut Aeth::new_unchecked(&mut buf[..]));
        assert_eq!(buf, BYTES);
    }

    #[test]
    fn syndromes() {
        assert_eq!(
            AethSyndrome::from_byte(0x20 | 14),
            AethSyndrome::RnrNak { timer: 14 }
        );
        assert_eq!(
            AethSyndrome::from_byte(0x60),
            AethSyndrome::Nak(NakCode::PsnSequenceError)
        );
        assert_eq!(
            AethSyndrome::from_byte(0x61),
            AethSyndrome::Nak(NakCode::InvalidRequest)
        );
        assert_eq!(
            AethSyndrome::from_byte(0x62),
            AethSyndrome::Nak(NakCode::RemoteAccessError)
        );
        assert_eq!(
            AethSyndrome::from_byte(0x63),
            AethSyndrome::Nak(NakCode::RemoteOperationalError)
        );
        assert_eq!(
            AethSyndrome::from_byte(0x64),
            AethSyndrome::Nak(NakCode::InvalidRdRequest)
        );
        assert_eq!(
            AethSyndrome::from_byte(0x7f),
            AethSyndrome::Nak(NakCode::Reserved(31))
        );
        assert_eq!(AethSyndrome::from_byte(0x45), AethSyndrome::Reserved(5));
        // Every byte with bit 7 clear survives a decode/encode round trip.
        for b in 0u8..0x80 {
            assert_eq!(AethSyndrome::from_byte(b).to_byte(), b);
        }
    }

    #[test]
    fn impossible_len() {
        assert_eq!(
            Aeth::new_checked(&BYTES[..3]).unwrap_err(),
            Error::Truncated { need: 4, have: 3 }
        );
    }
}
