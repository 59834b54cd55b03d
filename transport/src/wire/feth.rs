//! Flush Extended Transport Header (IBTA 1.5 annex A19), 4 bytes: the
//! placement type and selectivity level of an RC FLUSH.

use super::{Result, read_u32, write_u32};

/// ```text
/// +-----------------------------------------------+---+-------+
/// |                 Reserved (26)                 |Sel|  PLT  |
/// +-----------------------------------------------+---+-------+
/// ```
mod field {
    pub const BITS: usize = 0;
    pub const PLT_MASK: u32 = 0x0f;
    pub const SEL_MASK: u32 = 0x30;
    pub const SEL_SHIFT: u32 = 4;
}

header_view!(
    /// A read/write view of a FETH.
    Feth,
    4
);

impl<T: AsRef<[u8]>> Feth<T> {
    /// Placement type: bit 0 global visibility, bit 1 persistence.
    pub fn placement_type(&self) -> u8 {
        (read_u32(self.buffer.as_ref(), field::BITS) & field::PLT_MASK) as u8
    }

    /// Selectivity level: 0 the memory region range, 1 the whole region.
    pub fn selectivity_level(&self) -> u8 {
        ((read_u32(self.buffer.as_ref(), field::BITS) & field::SEL_MASK) >> field::SEL_SHIFT) as u8
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Feth<T> {
    /// Writes both fields and clears the reserved bits.
    pub fn set_fields(&mut self, placement_type: u8, selectivity_level: u8) {
        let bits = (u32::from(placement_type) & field::PLT_MASK)
            | ((u32::from(selectivity_level) << field::SEL_SHIFT) & field::SEL_MASK);
        write_u32(self.buffer.as_mut(), field::BITS, bits);
    }
}

/// A parsed FETH.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FethRepr {
    /// Placement type, 4 bits.
    pub placement_type: u8,
    /// Selectivity level, 2 bits.
    pub selectivity_level: u8,
}

impl FethRepr {
    /// Parses a FETH; reserved bits are ignored.
    pub fn parse<T: AsRef<[u8]>>(h: &Feth<T>) -> Result<FethRepr> {
        h.check_len()?;
        Ok(FethRepr {
            placement_type: h.placement_type(),
            selectivity_level: h.selectivity_level(),
        })
    }

    /// Length of the emitted header.
    pub const fn buffer_len(&self) -> usize {
        4
    }

    /// Writes the FETH.
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(&self, h: &mut Feth<T>) {
        h.set_fields(self.placement_type, self.selectivity_level);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::Error;

    // Persistence (PLT 2), whole-region selectivity (1).
    static BYTES: [u8; 4] = [0, 0, 0, 0x12];
    const REPR: FethRepr = FethRepr {
        placement_type: 2,
        selectivity_level: 1,
    };

    #[test]
    fn deconstruct() {
        let h = Feth::new_checked(&BYTES[..]).unwrap();
        assert_eq!((h.placement_type(), h.selectivity_level()), (2, 1));
    }

    #[test]
    fn construct() {
        let mut buf = [0xffu8; 4];
        Feth::new_unchecked(&mut buf[..]).set_fields(2, 1);
        assert_eq!(buf, BYTES);
    }

    #[test]
    fn parse_and_emit() {
        assert_eq!(FethRepr::parse(&Feth::new_unchecked(&BYTES[..])), Ok(REPR));
        let mut buf = [0xffu8; 4];
        REPR.emit(&mut Feth::new_unchecked(&mut buf[..]));
        assert_eq!(buf, BYTES);
    }

    #[test]
    fn impossible_len() {
        assert_eq!(
            Feth::new_checked(&BYTES[..3]).unwrap_err(),
            Error::Truncated { need: 4, have: 3 }
        );
    }
}
