//! RDMA Extended Transport Header (IBTA 9.3.3.3), 16 bytes: the remote
//! address, R_Key and DMA length of an RDMA WRITE, READ, FLUSH or
//! ATOMIC_WRITE.

use super::{Result, read_u32, read_u64, write_u32, write_u64};

/// ```text
/// +---------------------------------------------------------------+
/// |                    Virtual Address (64)                       |
/// +---------------------------------------------------------------+
/// |                         R_Key (32)                            |
/// +---------------------------------------------------------------+
/// |                       DMA Length (32)                         |
/// +---------------------------------------------------------------+
/// ```
mod field {
    pub const VA: usize = 0;
    pub const RKEY: usize = 8;
    pub const DMA_LEN: usize = 12;
}

header_view!(
    /// A read/write view of a RETH.
    Reth,
    16
);

impl<T: AsRef<[u8]>> Reth<T> {
    /// Remote virtual address.
    pub fn va(&self) -> u64 {
        read_u64(self.buffer.as_ref(), field::VA)
    }

    /// Remote key.
    pub fn rkey(&self) -> u32 {
        read_u32(self.buffer.as_ref(), field::RKEY)
    }

    /// Length of the whole DMA transfer.
    pub fn dma_len(&self) -> u32 {
        read_u32(self.buffer.as_ref(), field::DMA_LEN)
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Reth<T> {
    /// Sets the remote virtual address.
    pub fn set_va(&mut self, v: u64) {
        write_u64(self.buffer.as_mut(), field::VA, v);
    }

    /// Sets the remote key.
    pub fn set_rkey(&mut self, v: u32) {
        write_u32(self.buffer.as_mut(), field::RKEY, v);
    }

    /// Sets the DMA length.
    pub fn set_dma_len(&mut self, v: u32) {
        write_u32(self.buffer.as_mut(), field::DMA_LEN, v);
    }
}

/// A parsed RETH.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RethRepr {
    /// Remote virtual address.
    pub va: u64,
    /// Remote key.
    pub rkey: u32,
    /// DMA length.
    pub dma_len: u32,
}

impl RethRepr {
    /// Parses a RETH.
    pub fn parse<T: AsRef<[u8]>>(h: &Reth<T>) -> Result<RethRepr> {
        h.check_len()?;
        Ok(RethRepr {
            va: h.va(),
            rkey: h.rkey(),
            dma_len: h.dma_len(),
        })
    }

    /// Length of the emitted header.
    pub const fn buffer_len(&self) -> usize {
        16
    }

    /// Writes the RETH.
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(&self, h: &mut Reth<T>) {
        h.set_va(self.va);
        h.set_rkey(self.rkey);
        h.set_dma_len(self.dma_len);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::Error;

    static BYTES: [u8; 16] = [
        0x00, 0x00, 0x55, 0x5d, 0x6d, 0x60, 0x00, 0x00, 0x00, 0x00, 0x05, 0xa2, 0x00, 0x01, 0x00,
        0x00,
    ];
    const REPR: RethRepr = RethRepr {
        va: 0x0000_555d_6d60_0000,
        rkey: 0x5a2,
        dma_len: 65536,
    };

    #[test]
    fn deconstruct() {
        let h = Reth::new_checked(&BYTES[..]).unwrap();
        assert_eq!(
            (h.va(), h.rkey(), h.dma_len()),
            (REPR.va, REPR.rkey, REPR.dma_len)
        );
    }

    #[test]
    fn construct() {
        let mut buf = [0u8; 16];
        let mut h = Reth::new_unchecked(&mut buf[..]);
        h.set_va(REPR.va);
        h.set_rkey(REPR.rkey);
        h.set_dma_len(REPR.dma_len);
        assert_eq!(buf, BYTES);
    }

    #[test]
    fn parse_and_emit() {
        assert_eq!(RethRepr::parse(&Reth::new_unchecked(&BYTES[..])), Ok(REPR));
        let mut buf = [0xffu8; 16];
        REPR.emit(&mut Reth::new_unchecked(&mut buf[..]));
        assert_eq!(buf, BYTES);
    }

    #[test]
    fn impossible_len() {
        assert_eq!(
            Reth::new_checked(&BYTES[..15]).unwrap_err(),
            Error::Truncated { need: 16, have: 15 }
        );
    }
}
