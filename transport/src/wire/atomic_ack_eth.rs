//! Atomic Acknowledge Extended Transport Header (IBTA 9.3.5.3), 8 bytes:
//! the original remote value returned by a COMPARE_SWAP or FETCH_ADD.

use super::{read_u64, write_u64};

value_header!(
    /// A read/write view of an AtomicAckETH.
    AtomicAckEth,
    AtomicAckEthRepr,
    u64,
    orig,
    set_orig,
    read_u64,
    write_u64,
    "The value the target held before the atomic operation."
);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::Error;

    static BYTES: [u8; 8] = [1, 2, 3, 4, 5, 6, 7, 8];
    const REPR: AtomicAckEthRepr = AtomicAckEthRepr {
        orig: 0x0102_0304_0506_0708,
    };

    #[test]
    fn deconstruct() {
        assert_eq!(
            AtomicAckEth::new_checked(&BYTES[..]).unwrap().orig(),
            0x0102_0304_0506_0708
        );
    }

    #[test]
    fn construct() {
        let mut buf = [0u8; 8];
        AtomicAckEth::new_unchecked(&mut buf[..]).set_orig(0x0102_0304_0506_0708);
        assert_eq!(buf, BYTES);
    }

    #[test]
    fn parse_and_emit() {
        assert_eq!(
            AtomicAckEthRepr::parse(&AtomicAckEth::new_unchecked(&BYTES[..])),
            Ok(REPR)
        );
        let mut buf = [0xffu8; 8];
        REPR.emit(&mut AtomicAckEth::new_unchecked(&mut buf[..]));
        assert_eq!(buf, BYTES);
        assert_eq!(REPR.buffer_len(), 8);
    }

    #[test]
    fn impossible_len() {
        assert_eq!(
            AtomicAckEth::new_checked(&BYTES[..8 - 1]).unwrap_err(),
            Error::Truncated {
                need: 8,
                have: 8 - 1
            }
        );
    }
}
