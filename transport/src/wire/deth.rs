//! Datagram Extended Transport Header (IBTA 9.3.2), 8 bytes: the Q_Key and
//! source QP of a UD packet.

use super::{Result, read_u24, read_u32, write_u24, write_u32};

/// ```text
/// +---------------------------------------------------------------+
/// |                          Q_Key (32)                           |
/// +---------------+-----------------------------------------------+
/// |   Reserved    |               Source QP (24)                  |
/// +---------------+-----------------------------------------------+
/// ```
mod field {
    use core::ops::Range;
    pub const QKEY: usize = 0;
    pub const RESERVED: usize = 4;
    pub const SRC_QP: Range<usize> = 5..8;
}

header_view!(
    /// A read/write view of a DETH.
    Deth,
    8
);

impl<T: AsRef<[u8]>> Deth<T> {
    /// Queue key.
    pub fn qkey(&self) -> u32 {
        read_u32(self.buffer.as_ref(), field::QKEY)
    }

    /// Source QP number.
    pub fn src_qp(&self) -> u32 {
        read_u24(&self.buffer.as_ref()[field::SRC_QP])
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Deth<T> {
    /// Sets the queue key.
    pub fn set_qkey(&mut self, v: u32) {
        write_u32(self.buffer.as_mut(), field::QKEY, v);
    }

    /// Sets the source QP (low 24 bits) and clears the reserved byte.
    pub fn set_src_qp(&mut self, v: u32) {
        self.buffer.as_mut()[field::RESERVED] = 0;
        write_u24(&mut self.buffer.as_mut()[field::SRC_QP], v);
    }
}

/// A parsed DETH.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct DethRepr {
    /// Queue key.
    pub qkey: u32,
    /// Source QP, 24 bits.
    pub src_qp: u32,
}

impl DethRepr {
    /// Parses a DETH; the reserved byte is ignored.
    pub fn parse<T: AsRef<[u8]>>(h: &Deth<T>) -> Result<DethRepr> {
        h.check_len()?;
        Ok(DethRepr {
            qkey: h.qkey(),
            src_qp: h.src_qp(),
        })
    }

    /// Length of the emitted header.
    pub const fn buffer_len(&self) -> usize {
        8
    }

    /// Writes the DETH.
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(&self, h: &mut Deth<T>) {
        h.set_qkey(self.qkey);
        h.set_src_qp(self.src_qp);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::Error;

    // A GSI (QP1) DETH: Q_Key 0x80010000 from source QP 1.
    static BYTES: [u8; 8] = [0x80, 0x01, 0x00, 0x00, 0x00, 0x00, 0x00, 0x01];
    const REPR: DethRepr = DethRepr {
        qkey: 0x8001_0000,
        src_qp: 1,
    };

    #[test]
    fn deconstruct() {
        let h = Deth::new_checked(&BYTES[..]).unwrap();
        assert_eq!((h.qkey(), h.src_qp()), (0x8001_0000, 1));
    }

    #[test]
    fn construct() {
        let mut buf = [0xffu8; 8];
        let mut h = Deth::new_unchecked(&mut buf[..]);
        h.set_qkey(0x8001_0000);
        h.set_src_qp(1);
        assert_eq!(buf, BYTES);
    }

    #[test]
    fn parse_and_emit() {
        assert_eq!(DethRepr::parse(&Deth::new_unchecked(&BYTES[..])), Ok(REPR));
        let mut buf = [0xffu8; 8];
        REPR.emit(&mut Deth::new_unchecked(&mut buf[..]));
        assert_eq!(buf, BYTES);
    }

    #[test]
    fn impossible_len() {
        assert_eq!(
            Deth::new_checked(&BYTES[..7]).unwrap_err(),
            Error::Truncated { need: 8, have: 7 }
        );
    }
}
