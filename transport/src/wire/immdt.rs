//! Immediate Data Extended Transport Header (IBTA 9.3.4), 4 bytes: the
//! immediate value of a SEND or RDMA WRITE with immediate. The value is
//! opaque to the transport and is handed to the receiver's completion as
//! it stood on the wire (big-endian).

use super::{read_u32, write_u32};

value_header!(
    /// A read/write view of an ImmDt header.
    ImmDt,
    ImmDtRepr,
    u32,
    imm,
    set_imm,
    read_u32,
    write_u32,
    "Immediate data, read big-endian."
);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::Error;

    static BYTES: [u8; 4] = [0xde, 0xad, 0xbe, 0xef];
    const REPR: ImmDtRepr = ImmDtRepr { imm: 0xdead_beef };

    #[test]
    fn deconstruct() {
        assert_eq!(ImmDt::new_checked(&BYTES[..]).unwrap().imm(), 0xdead_beef);
    }

    #[test]
    fn construct() {
        let mut buf = [0u8; 4];
        ImmDt::new_unchecked(&mut buf[..]).set_imm(0xdead_beef);
        assert_eq!(buf, BYTES);
    }

    #[test]
    fn parse_and_emit() {
        assert_eq!(
            ImmDtRepr::parse(&ImmDt::new_unchecked(&BYTES[..])),
            Ok(REPR)
        );
        let mut buf = [0xffu8; 4];
        REPR.emit(&mut ImmDt::new_unchecked(&mut buf[..]));
        assert_eq!(buf, BYTES);
        assert_eq!(REPR.buffer_len(), 4);
    }

    #[test]
    fn impossible_len() {
        assert_eq!(
            ImmDt::new_checked(&BYTES[..4 - 1]).unwrap_err(),
            Error::Truncated {
                need: 4,
                have: 4 - 1
            }
        );
    }
}
