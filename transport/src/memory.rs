//! How the engine reaches the memory behind memory regions: a small trait
//! over a flat address space. The backend implements it over guest memory
//! (vm-memory); tests implement it over a `Vec`. Payload moves between a
//! packet buffer and this memory with exactly one copy.

/// An access fell outside the memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("memory access of {len} bytes at {addr:#x} is out of range")]
pub struct OutOfRange {
    /// Start address.
    pub addr: u64,
    /// Length.
    pub len: usize,
}

/// A flat address space the engine copies to and from.
pub trait Memory {
    /// Copies `dst.len()` bytes starting at `addr` into `dst`.
    fn read(&self, addr: u64, dst: &mut [u8]) -> Result<(), OutOfRange>;
    /// Copies `src` to `addr`.
    fn write(&mut self, addr: u64, src: &[u8]) -> Result<(), OutOfRange>;

    /// As [`Memory::read`], and returns the CRC register (see
    /// [`crate::crc`]) after the bytes read, started from `reg`.
    /// Implementations that can see their bytes should read them once,
    /// with [`crate::crc::copy_update`].
    fn read_crc(&self, addr: u64, dst: &mut [u8], reg: u32) -> Result<u32, OutOfRange> {
        self.read(addr, dst)?;
        Ok(crate::crc::update(reg, dst))
    }

    /// As [`Memory::write`], and returns the CRC register after `src`,
    /// started from `reg`.
    fn write_crc(&mut self, addr: u64, src: &[u8], reg: u32) -> Result<u32, OutOfRange> {
        self.write(addr, src)?;
        Ok(crate::crc::update(reg, src))
    }
}

/// Memory backed by a `Vec`, addressed from 0.
#[derive(Debug, Clone, Default)]
pub struct VecMemory {
    bytes: Vec<u8>,
}

impl VecMemory {
    /// Zeroed memory of `len` bytes.
    pub fn new(len: usize) -> VecMemory {
        VecMemory {
            bytes: vec![0; len],
        }
    }

    /// The whole memory.
    pub fn as_slice(&self) -> &[u8] {
        &self.bytes
    }

    /// The whole memory, writable.
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        &mut self.bytes
    }

    fn range(&self, addr: u64, len: usize) -> Result<std::ops::Range<usize>, OutOfRange> {
        let err = OutOfRange { addr, len };
        let start = usize::try_from(addr).map_err(|_| err)?;
        let end = start.checked_add(len).ok_or(err)?;
        if end > self.bytes.len() {
            return Err(err);
        }
        Ok(start..end)
    }
}

impl Memory for VecMemory {
    fn read(&self, addr: u64, dst: &mut [u8]) -> Result<(), OutOfRange> {
        let r = self.range(addr, dst.len())?;
        dst.copy_from_slice(&self.bytes[r]);
        Ok(())
    }

    fn write(&mut self, addr: u64, src: &[u8]) -> Result<(), OutOfRange> {
        let r = self.range(addr, src.len())?;
        self.bytes[r].copy_from_slice(src);
        Ok(())
    }

    fn read_crc(&self, addr: u64, dst: &mut [u8], reg: u32) -> Result<u32, OutOfRange> {
        let r = self.range(addr, dst.len())?;
        Ok(crate::crc::copy_update(reg, dst, &self.bytes[r]))
    }

    fn write_crc(&mut self, addr: u64, src: &[u8], reg: u32) -> Result<u32, OutOfRange> {
        let r = self.range(addr, src.len())?;
        Ok(crate::crc::copy_update(reg, &mut self.bytes[r], src))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounds() {
        let mut m = VecMemory::new(16);
        m.write(12, &[1, 2, 3, 4]).unwrap();
        let mut b = [0u8; 4];
        m.read(12, &mut b).unwrap();
        assert_eq!(b, [1, 2, 3, 4]);
        assert_eq!(m.write(13, &[0; 4]), Err(OutOfRange { addr: 13, len: 4 }));
        assert!(m.read(u64::MAX, &mut b).is_err());
    }

    #[test]
    fn crc_variants_copy_and_count_the_same_bytes() {
        let mut m = VecMemory::new(8192);
        let src: Vec<u8> = (0..5000u32).map(|i| (i * 7) as u8).collect();
        let reg = m.write_crc(100, &src, 0x1234_5678).unwrap();
        assert_eq!(reg, crate::crc::update(0x1234_5678, &src));
        let mut back = vec![0u8; 5000];
        assert_eq!(m.read_crc(100, &mut back, 0x1234_5678).unwrap(), reg);
        assert_eq!(back, src);
        assert!(m.write_crc(4000, &src, 0).is_err());
        assert!(m.read_crc(u64::MAX, &mut back, 0).is_err());
    }
}
