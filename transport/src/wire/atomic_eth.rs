//! Atomic Extended Transport Header (IBTA 9.3.3.4), 28 bytes: the target
//! of a COMPARE_SWAP or FETCH_ADD and its operands.

use super::{Result, read_u32, read_u64, write_u32, write_u64};

/// ```text
/// +---------------------------------------------------------------+
/// |                    Virtual Address (64)                       |
/// +---------------------------------------------------------------+
/// |                         R_Key (32)                            |
/// +---------------------------------------------------------------+
/// |                 Swap (or Add) Data (64)                       |
/// +---------------------------------------------------------------+
/// |                      Compare Data (64)                        |
/// +---------------------------------------------------------------+
/// ```
mod field {
    pub const VA: usize = 0;
    pub const RKEY: usize = 8;
    pub const SWAP_ADD: usize = 12;
    pub const COMPARE: usize = 20;
}

header_view!(
    /// A read/write view of an AtomicETH.
    AtomicEth,
    28
);

impl<T: AsRef<[u8]>> AtomicEth<T> {
    /// Remote virtual address (8-byte aligned for a valid request).
    pub fn va(&self) -> u64 {
        read_u64(self.buffer.as_ref(), field::VA)
    }

    /// Remote key.
    pub fn rkey(&self) -> u32 {
        read_u32(self.buffer.as_ref(), field::RKEY)
    }

    /// Swap data (COMPARE_SWAP) or add data (FETCH_ADD).
    pub fn swap_add(&self) -> u64 {
        read_u64(self.buffer.as_ref(), field::SWAP_ADD)
    }

    /// Compare data (COMPARE_SWAP only).
    pub fn compare(&self) -> u64 {
        read_u64(self.buffer.as_ref(), field::COMPARE)
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> AtomicEth<T> {
    /// Sets the remote virtual address.
    pub fn set_va(&mut self, v: u64) {
        write_u64(self.buffer.as_mut(), field::VA, v);
    }

    /// Sets the remote key.
    pub fn set_rkey(&mut self, v: u32) {
        write_u32(self.buffer.as_mut(), field::RKEY, v);
    }

    /// Sets the swap or add data.
    pub fn set_swap_add(&mut self, v: u64) {
        write_u64(self.buffer.as_mut(), field::SWAP_ADD, v);
    }

    /// Sets the compare data.
    pub fn set_compare(&mut self, v: u64) {
        write_u64(self.buffer.as_mut(), field::COMPARE, v);
    }
}

/// A parsed AtomicETH.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct AtomicEthRepr {
    /// Remote virtual address.
    pub va: u64,
    /// Remote key.
    pub rkey: u32,
    /// Swap or add data.
    pub swap_add: u64,
    /// Compare data.
    pub compare: u64,
}

impl AtomicEthRepr {
    /// Parses an AtomicETH.
    pub fn parse<T: AsRef<[u8]>>(h: &AtomicEth<T>) -> Result<AtomicEthRepr> {
        h.check_len()?;
        Ok(AtomicEthRepr {
            va: h.va(),
            rkey: h.rkey(),
            swap_add: h.swap_add(),
            compare: h.compare(),
        })
    }

    /// Length of the emitted header.
    pub const fn buffer_len(&self) -> usize {
        28
    }

    /// Writes the AtomicETH.
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(&self, h: &mut AtomicEth<T>) {
        h.set_va(self.va);
        h.set_rkey(self.rkey);
        h.set_swap_add(self.swap_add);
        h.set_compare(self.compare);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::Error;

    static BYTES: [u8; 28] = [
        0, 0, 0x55, 0x5d, 0x6d, 0x60, 0, 0x08, // va
        0, 0, 0x05, 0xa2, // rkey
        0, 0, 0, 0, 0, 0, 0, 1, // add
        0x11, 0x22, 0x33, 0x44, 0x55, 0x66, 0x77, 0x88, // compare
    ];
    const REPR: AtomicEthRepr = AtomicEthRepr {
        va: 0x0000_555d_6d60_0008,
        rkey: 0x5a2,
        swap_add: 1,
        compare: 0x1122_3344_5566_7788,
    };

    #[test]
    fn deconstruct() {
        let h = AtomicEth::new_checked(&BYTES[..]).unwrap();
        assert_eq!(
            (h.va(), h.rkey(), h.swap_add(), h.compare()),
            (REPR.va, REPR.rkey, REPR.swap_add, REPR.compare)
        );
    }

    #[test]
    fn construct() {
        let mut buf = [0u8; 28];
        let mut h = AtomicEth::new_unchecked(&mut buf[..]);
        h.set_va(REPR.va);
        h.set_rkey(REPR.rkey);
        h.set_swap_add(REPR.swap_add);
        h.set_compare(REPR.compare);
        assert_eq!(buf, BYTES);
    }

    #[test]
    fn parse_and_emit() {
        assert_eq!(
            AtomicEthRepr::parse(&AtomicEth::new_unchecked(&BYTES[..])),
            Ok(REPR)
        );
        let mut buf = [0xffu8; 28];
        REPR.emit(&mut AtomicEth::new_unchecked(&mut buf[..]));
        assert_eq!(buf, BYTES);
    }

    #[test]
    fn impossible_len() {
        assert_eq!(
            AtomicEth::new_checked(&BYTES[..27]).unwrap_err(),
            Error::Truncated { need: 28, have: 27 }
        );
    }
}
