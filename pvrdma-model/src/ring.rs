//! Ring indices and page directories, computed exactly as the guest
//! driver computes them.
//!
//! This module owns two pieces of arithmetic the device must share with
//! the driver bit for bit:
//! - [`RingIdx`]: a ring of `N` elements keeps `prod_tail` and
//!   `cons_head` in `[0, 2N)`; the bit above the slot bits tells a full
//!   ring from an empty one. An index outside that range is the guest's
//!   error, reported as `None`, never a panic. The DSR's async and
//!   CQ-notification rings have an `N` that is not a power of two; the
//!   driver masks anyway, and so do we (their usable size is then 512 and
//!   1024 elements).
//! - [`PageDir`]: a two-level page directory (a directory page of table
//!   addresses, each table of 512 page addresses) turned into the guest
//!   address of byte `offset` of the object it describes, with every
//!   index checked against the object's page count.

use thiserror::Error;

use crate::abi::PAGE_SIZE;

/// One ring's index arithmetic for `n` elements.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RingIdx {
    n: u32,
}

impl RingIdx {
    /// A ring of `n` elements (`n` ≥ 1).
    pub fn new(n: u32) -> RingIdx {
        RingIdx { n: n.max(1) }
    }

    /// Elements.
    pub fn len(&self) -> u32 {
        self.n
    }

    /// Whether the ring has no elements (never: [`RingIdx::new`] makes at
    /// least one).
    pub fn is_empty(&self) -> bool {
        false
    }

    fn wrap_mask(&self) -> u32 {
        (self.n << 1).wrapping_sub(1)
    }

    /// Whether `idx` is a valid index (`idx < 2N` for a power of two).
    pub fn valid(&self, idx: u32) -> bool {
        idx & !self.wrap_mask() == 0
    }

    /// The slot an index names.
    pub fn slot(&self, idx: u32) -> u32 {
        idx & (self.n - 1)
    }

    /// The index after `idx`.
    pub fn next(&self, idx: u32) -> u32 {
        idx.wrapping_add(1) & self.wrap_mask()
    }

    /// The slot to consume, if the ring holds data; `Err` if an index is
    /// invalid.
    pub fn has_data(&self, prod: u32, cons: u32) -> Result<Option<u32>, RingError> {
        self.check(prod, cons)?;
        Ok((prod != cons).then(|| self.slot(cons)))
    }

    /// The slot to produce into, if the ring has room; `Err` if an index
    /// is invalid.
    pub fn has_space(&self, prod: u32, cons: u32) -> Result<Option<u32>, RingError> {
        self.check(prod, cons)?;
        Ok((prod != cons ^ self.n).then(|| self.slot(prod)))
    }

    fn check(&self, prod: u32, cons: u32) -> Result<(), RingError> {
        if !self.valid(prod) || !self.valid(cons) {
            return Err(RingError::BadIndex {
                prod,
                cons,
                n: self.n,
            });
        }
        Ok(())
    }
}

/// Why a ring or directory access was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum RingError {
    /// A ring index outside `[0, 2N)`.
    #[error("ring index out of range: prod {prod}, cons {cons}, {n} elements")]
    BadIndex {
        /// Producer index.
        prod: u32,
        /// Consumer index.
        cons: u32,
        /// Elements.
        n: u32,
    },
    /// A byte offset past the object's pages.
    #[error("offset {offset} is past the object's {pages} pages")]
    PastEnd {
        /// Offset asked for.
        offset: u64,
        /// Pages of the object.
        pages: u32,
    },
    /// More pages than one directory holds (512 × 512).
    #[error("{0} pages do not fit one page directory")]
    TooManyPages(u32),
    /// Guest memory could not be read where a directory said.
    #[error("page directory entry at {0:#x} is outside guest memory")]
    BadDirectory(u64),
    /// A directory entry was zero (no page there).
    #[error("page directory has no page for page {0}")]
    NoPage(u32),
}

/// Reading the guest's page-directory entries.
pub trait ReadU64 {
    /// The little-endian u64 at guest address `addr`, if it is in guest
    /// memory.
    fn read_u64(&self, addr: u64) -> Option<u64>;

    /// `out.len()` consecutive little-endian u64s from `addr`.
    fn read_u64s(&self, addr: u64, out: &mut [u64]) -> Option<()> {
        for (i, v) in out.iter_mut().enumerate() {
            *v = self.read_u64(addr.checked_add(8 * i as u64)?)?;
        }
        Some(())
    }
}

/// Entries per directory or table page.
pub const PDIR_ENTRIES: u32 = 512;

/// A two-level page directory over `pages` pages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageDir {
    /// Guest address of the directory page.
    pub dir: u64,
    /// Pages the object has.
    pub pages: u32,
}

impl PageDir {
    /// A directory at `dir` describing `pages` pages.
    pub fn new(dir: u64, pages: u32) -> Result<PageDir, RingError> {
        if pages > PDIR_ENTRIES * PDIR_ENTRIES {
            return Err(RingError::TooManyPages(pages));
        }
        Ok(PageDir { dir, pages })
    }

    /// The guest address of page `i`.
    pub fn page(&self, mem: &impl ReadU64, i: u32) -> Result<u64, RingError> {
        if i >= self.pages {
            return Err(RingError::PastEnd {
                offset: u64::from(i) * PAGE_SIZE,
                pages: self.pages,
            });
        }
        let table_at = self.dir + 8 * u64::from(i / PDIR_ENTRIES);
        let table = mem
            .read_u64(table_at)
            .ok_or(RingError::BadDirectory(table_at))?;
        if table == 0 {
            return Err(RingError::NoPage(i));
        }
        let entry_at = table.wrapping_add(8 * u64::from(i % PDIR_ENTRIES));
        let page = mem
            .read_u64(entry_at)
            .ok_or(RingError::BadDirectory(entry_at))?;
        if page == 0 {
            return Err(RingError::NoPage(i));
        }
        Ok(page)
    }

    /// Every page's guest address, in order, reading each table once.
    pub fn pages(&self, mem: &impl ReadU64) -> Result<Vec<u64>, RingError> {
        let mut out = vec![0u64; self.pages as usize];
        let ntables = self.pages.div_ceil(PDIR_ENTRIES);
        let mut dir = vec![0u64; ntables as usize];
        mem.read_u64s(self.dir, &mut dir)
            .ok_or(RingError::BadDirectory(self.dir))?;
        for (t, chunk) in out.chunks_mut(PDIR_ENTRIES as usize).enumerate() {
            let table = dir[t];
            if table == 0 {
                return Err(RingError::NoPage(t as u32 * PDIR_ENTRIES));
            }
            mem.read_u64s(table, chunk)
                .ok_or(RingError::BadDirectory(table))?;
            if let Some(i) = chunk.iter().position(|p| *p == 0) {
                return Err(RingError::NoPage(t as u32 * PDIR_ENTRIES + i as u32));
            }
        }
        Ok(out)
    }

    /// The guest address of byte `offset` of the object, and how many
    /// bytes from there stay in the same page.
    pub fn addr(&self, mem: &impl ReadU64, offset: u64) -> Result<(u64, u64), RingError> {
        let i = offset / PAGE_SIZE;
        if i >= u64::from(self.pages) {
            return Err(RingError::PastEnd {
                offset,
                pages: self.pages,
            });
        }
        let page = self.page(mem, i as u32)?;
        let within = offset % PAGE_SIZE;
        Ok((page.wrapping_add(within), PAGE_SIZE - within))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    #[test]
    fn indices_wrap_through_twice_the_size() {
        let r = RingIdx::new(4);
        assert_eq!(r.has_data(0, 0), Ok(None));
        assert_eq!(r.has_space(0, 0), Ok(Some(0)));
        // Full: prod is cons with the wrap bit flipped.
        assert_eq!(r.has_space(4, 0), Ok(None));
        assert_eq!(r.has_data(4, 0), Ok(Some(0)));
        assert_eq!(r.has_data(5, 1), Ok(Some(1)));
        let mut i = 0;
        for _ in 0..8 {
            i = r.next(i);
        }
        assert_eq!(i, 0);
        assert!(r.has_data(8, 0).is_err());
        assert!(r.has_space(0, 100).is_err());
    }

    #[test]
    fn the_dsr_rings_mask_as_the_driver_does() {
        // The async ring: 3 pages of 8-byte events, N = 1536.
        let r = RingIdx::new(1536);
        let mut i = 0;
        let mut max_slot = 0;
        for _ in 0..5000 {
            max_slot = max_slot.max(r.slot(i));
            i = r.next(i);
        }
        assert_eq!(max_slot, 511);
    }

    struct Mem(HashMap<u64, u64>);
    impl ReadU64 for Mem {
        fn read_u64(&self, addr: u64) -> Option<u64> {
            self.0.get(&addr).copied()
        }
    }

    #[test]
    fn a_directory_maps_offsets_to_pages_and_refuses_the_rest() {
        // 513 pages: two tables.
        let mut m = HashMap::new();
        m.insert(0x1000, 0x10_0000); // table 0
        m.insert(0x1008, 0x20_0000); // table 1
        for i in 0..512u64 {
            m.insert(0x10_0000 + 8 * i, 0x100_0000 + i * 0x1000);
        }
        m.insert(0x20_0000, 0x900_0000);
        let mem = Mem(m);
        let d = PageDir::new(0x1000, 513).unwrap();
        assert_eq!(d.addr(&mem, 0), Ok((0x100_0000, 4096)));
        assert_eq!(d.addr(&mem, 4096 + 10), Ok((0x100_1000 + 10, 4086)));
        assert_eq!(d.addr(&mem, 512 * 4096 + 5), Ok((0x900_0005, 4091)));
        assert!(matches!(
            d.addr(&mem, 513 * 4096),
            Err(RingError::PastEnd { .. })
        ));
        assert!(PageDir::new(0, 512 * 512 + 1).is_err());
        // A directory pointing outside memory.
        let d = PageDir::new(0x5000, 1).unwrap();
        assert_eq!(d.page(&mem, 0), Err(RingError::BadDirectory(0x5000)));
    }
}
