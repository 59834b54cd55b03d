//! Invalidate Extended Transport Header (IBTA 9.3.6), 4 bytes: the R_Key
//! that a SEND with invalidate asks the responder to invalidate.

use super::{read_u32, write_u32};

value_header!(
    /// A read/write view of an IETH.
    Ieth,
    IethRepr,
    u32,
    rkey,
    set_rkey,
    read_u32,
    write_u32,
    "The R_Key to invalidate."
);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::Error;

    static BYTES: [u8; 4] = [0x00, 0x01, 0x23, 0x45];
    const REPR: IethRepr = IethRepr { rkey: 0x0001_2345 };

    #[test]
    fn deconstruct() {
        assert_eq!(Ieth::new_checked(&BYTES[..]).unwrap().rkey(), 0x0001_2345);
    }

    #[test]
    fn construct() {
        let mut buf = [0u8; 4];
        Ieth::new_unchecked(&mut buf[..]).set_rkey(0x0001_2345);
        assert_eq!(buf, BYTES);
    }

    #[test]
    fn parse_and_emit() {
        assert_eq!(IethRepr::parse(&Ieth::new_unchecked(&BYTES[..])), Ok(REPR));
        let mut buf = [0xffu8; 4];
        REPR.emit(&mut Ieth::new_unchecked(&mut buf[..]));
        assert_eq!(buf, BYTES);
        assert_eq!(REPR.buffer_len(), 4);
    }

    #[test]
    fn impossible_len() {
        assert_eq!(
            Ieth::new_checked(&BYTES[..4 - 1]).unwrap_err(),
            Error::Truncated {
                need: 4,
                have: 4 - 1
            }
        );
    }
}
