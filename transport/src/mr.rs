//! Memory regions: registration with an 8-bit key part that changes each
//! time a slot is reused, access-flag and bounds checks on every access,
//! and the copies between packet buffers and scatter/gather lists.
//!
//! An MR maps the virtual range `[iova, iova + length)` onto the address
//! space of a [`Memory`], either linearly from `base` or through a page
//! list (as guest memory and fast-registration MRs are mapped). Accesses
//! are resolved into physically contiguous pieces, so a page list costs no
//! copy and registering a large region touches none of it. lkey and rkey
//! are the same value, `index << 8 | key`, as in rxe.

use crate::{
    memory::Memory,
    verbs::{Access, Sge},
};

/// Why an access through a key was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AccessError {
    /// No valid MR has this key (wrong index, stale key part, or
    /// deregistered/invalidated).
    #[error("key {0:#x} names no valid memory region")]
    BadKey(u32),
    /// The MR belongs to another protection domain.
    #[error("key {0:#x} belongs to another protection domain")]
    WrongPd(u32),
    /// The MR does not grant the access.
    #[error("key {key:#x} does not grant access {need:#x}")]
    NoAccess {
        /// The key.
        key: u32,
        /// Flags needed.
        need: u32,
    },
    /// The range lies outside the MR.
    #[error("range {va:#x}+{len} is outside the region of key {key:#x}")]
    OutOfBounds {
        /// The key.
        key: u32,
        /// Start.
        va: u64,
        /// Length.
        len: u64,
    },
    /// The scatter/gather list is shorter than the data.
    #[error("{need} bytes do not fit a scatter/gather list of {have}")]
    Length {
        /// Bytes needed.
        need: u64,
        /// Bytes the list holds.
        have: u64,
    },
}

/// How an MR's virtual range maps onto [`Memory`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MrMap {
    /// `iova` lies at `base`, and the range is contiguous.
    Linear {
        /// Address of `iova`.
        base: u64,
    },
    /// Pages of `1 << page_shift` bytes; `iova` lies `first_offset` bytes
    /// into the first page.
    Pages {
        /// log2 of the page size (12 for 4 KiB).
        page_shift: u8,
        /// Offset of `iova` within the first page.
        first_offset: u64,
        /// Memory address of each page.
        pages: Vec<u64>,
    },
}

/// What kind of region an MR is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MrKind {
    /// Registered by `reg_mr`: always valid until deregistered; cannot be
    /// invalidated.
    User,
    /// Allocated by `alloc_mr` for fast registration: valid between a
    /// REG_MR work request and a LOCAL_INV or SEND_WITH_INV.
    FastReg {
        /// Most pages a registration may map.
        max_pages: u32,
    },
    /// A memory window: while bound, `[iova, iova + length)` of the MR
    /// `mr_key` is reachable remotely through the window's own key with
    /// the window's access.
    Mw {
        /// 1 or 2.
        mw_type: u8,
        /// The MR it is bound to.
        mr_key: u32,
        /// For type 2, the only QP that may use it.
        qpn: u32,
    },
}

/// A registered memory region.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mr {
    /// Protection domain handle.
    pub pd: u32,
    /// First virtual address.
    pub iova: u64,
    /// Length in bytes.
    pub length: u64,
    /// The mapping onto memory.
    pub map: MrMap,
    /// Granted access.
    pub access: Access,
    /// Kind.
    pub kind: MrKind,
    /// Whether accesses through its key are allowed now.
    pub valid: bool,
}

impl Mr {
    /// A valid user MR mapped linearly at `base`.
    pub fn linear(pd: u32, iova: u64, length: u64, base: u64, access: Access) -> Mr {
        Mr {
            pd,
            iova,
            length,
            map: MrMap::Linear { base },
            access,
            kind: MrKind::User,
            valid: true,
        }
    }

    /// Calls `f(memory address, offset into the range, bytes)` for each
    /// contiguous piece of `[off, off + len)` of the region (offsets from
    /// `iova`, already bounds-checked). Stops at the first `false`.
    fn pieces(&self, off: u64, len: u64, mut f: impl FnMut(u64, usize, usize) -> bool) -> bool {
        match &self.map {
            MrMap::Linear { base } => len == 0 || f(base.wrapping_add(off), 0, len as usize),
            MrMap::Pages {
                page_shift,
                first_offset,
                pages,
            } => {
                let size = 1u64 << page_shift;
                let mut pos = first_offset + off;
                let mut done = 0u64;
                while done < len {
                    let page = (pos >> page_shift) as usize;
                    let within = pos & (size - 1);
                    let n = (size - within).min(len - done);
                    let Some(&addr) = pages.get(page) else {
                        return false;
                    };
                    if !f(addr.wrapping_add(within), done as usize, n as usize) {
                        return false;
                    }
                    done += n;
                    pos += n;
                }
                true
            }
        }
    }
}

#[derive(Debug, Clone)]
struct Slot {
    key: u8,
    mr: Option<Mr>,
}

/// The table of memory regions of one device.
#[derive(Debug, Clone)]
pub struct MrTable {
    slots: Vec<Slot>,
    free: Vec<u32>,
    max: u32,
}

impl MrTable {
    /// An empty table that holds at most `max` regions.
    pub fn new(max: u32) -> MrTable {
        MrTable {
            slots: Vec::new(),
            free: Vec::new(),
            max,
        }
    }

    /// Registers a region; returns its key (lkey = rkey). `None` when the
    /// table is full.
    pub fn insert(&mut self, mr: Mr) -> Option<u32> {
        let index = match self.free.pop() {
            Some(i) => i,
            None => {
                // Index 0 is never used, so no key is 0..=0xff.
                let i = self.slots.len() as u32 + 1;
                if i > self.max || i > 0x00ff_ffff {
                    return None;
                }
                self.slots.push(Slot { key: 0, mr: None });
                i
            }
        };
        let slot = &mut self.slots[(index - 1) as usize];
        slot.key = slot.key.wrapping_add(1);
        slot.mr = Some(mr);
        Some(index << 8 | u32::from(slot.key))
    }

    /// Deregisters the region of `key`.
    pub fn remove(&mut self, key: u32) -> Option<Mr> {
        let index = key >> 8;
        let slot = self.slot_mut(key)?;
        let mr = slot.mr.take();
        if mr.is_some() {
            self.free.push(index);
        }
        mr
    }

    fn slot_mut(&mut self, key: u32) -> Option<&mut Slot> {
        let index = (key >> 8) as usize;
        let slot = self.slots.get_mut(index.checked_sub(1)?)?;
        (slot.key == key as u8).then_some(slot)
    }

    /// The region of `key`, if valid.
    pub fn get(&self, key: u32) -> Option<&Mr> {
        let index = (key >> 8) as usize;
        let slot = self.slots.get(index.checked_sub(1)?)?;
        if slot.key != key as u8 {
            return None;
        }
        slot.mr.as_ref()
    }

    /// Number of live regions.
    pub fn len(&self) -> usize {
        self.slots.iter().filter(|s| s.mr.is_some()).count()
    }

    /// Whether no region is live.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether any live region belongs to `pd`.
    pub fn uses_pd(&self, pd: u32) -> bool {
        self.slots
            .iter()
            .any(|s| s.mr.as_ref().is_some_and(|m| m.pd == pd))
    }

    /// The region of `key` (valid or not), writable.
    pub fn get_mut_any(&mut self, key: u32) -> Option<&mut Mr> {
        self.slot_mut(key)?.mr.as_mut()
    }

    /// Invalidates, through its exact key, a valid fast-registration MR
    /// or type 2 memory window of `pd` (LOCAL_INV, SEND_WITH_INV). A type 2
    /// window can only be invalidated through the QP it is bound to. User
    /// MRs and type 1 windows cannot be invalidated.
    pub fn invalidate(&mut self, key: u32, pd: u32, qpn: u32) -> bool {
        match self.get_mut_any(key) {
            Some(mr) if mr.valid && mr.pd == pd => {
                let ok = match mr.kind {
                    MrKind::FastReg { .. } => true,
                    MrKind::Mw {
                        mw_type: 2, qpn: q, ..
                    } => q == qpn,
                    _ => false,
                };
                if ok {
                    mr.valid = false;
                }
                ok
            }
            _ => false,
        }
    }

    /// Whether a bound memory window refers to the MR of `key`.
    pub fn has_bound_windows(&self, key: u32) -> bool {
        self.slots.iter().any(|s| {
            s.mr.as_ref().is_some_and(|m| {
                m.valid && matches!(m.kind, MrKind::Mw { mr_key, .. } if mr_key == key)
            })
        })
    }

    /// The slot's region whatever its key part, with the key part.
    pub fn by_index_mut(&mut self, key: u32) -> Option<(&mut u8, &mut Mr)> {
        let index = (key >> 8) as usize;
        let slot = self.slots.get_mut(index.checked_sub(1)?)?;
        let mr = slot.mr.as_mut()?;
        Some((&mut slot.key, mr))
    }

    /// Checks key, validity, PD, access and bounds; returns the MR that
    /// maps the memory and the offset of `va` within it. `qpn` is the QP of
    /// a remote access, which may go through a memory window; local
    /// accesses (`None`) only take MR keys.
    fn checked(
        &self,
        key: u32,
        pd: u32,
        qpn: Option<u32>,
        need: Access,
        va: u64,
        len: u64,
    ) -> Result<(&Mr, u64), AccessError> {
        let mr = self
            .get(key)
            .filter(|m| m.valid)
            .ok_or(AccessError::BadKey(key))?;
        if let MrKind::Mw {
            mw_type,
            mr_key,
            qpn: bound,
        } = mr.kind
        {
            let Some(q) = qpn else {
                return Err(AccessError::BadKey(key));
            };
            if mw_type == 2 && bound != q {
                return Err(AccessError::BadKey(key));
            }
            if mr.pd != pd {
                return Err(AccessError::WrongPd(key));
            }
            if !mr.access.contains(need) {
                return Err(AccessError::NoAccess { key, need: need.0 });
            }
            let oob = AccessError::OutOfBounds { key, va, len };
            let off = va.checked_sub(mr.iova).ok_or(oob)?;
            if off.checked_add(len).ok_or(oob)? > mr.length {
                return Err(oob);
            }
            // Through the window to its MR, whose own remote access does
            // not matter.
            return self.checked(mr_key, pd, None, Access(0), va, len);
        }
        if mr.pd != pd {
            return Err(AccessError::WrongPd(key));
        }
        if !mr.access.contains(need) {
            return Err(AccessError::NoAccess { key, need: need.0 });
        }
        let oob = AccessError::OutOfBounds { key, va, len };
        let off = va.checked_sub(mr.iova).ok_or(oob)?;
        let end = off.checked_add(len).ok_or(oob)?;
        if end > mr.length {
            return Err(oob);
        }
        Ok((mr, off))
    }

    /// Checks a local access: key, validity, PD, access and bounds.
    pub fn check(
        &self,
        key: u32,
        pd: u32,
        need: Access,
        va: u64,
        len: u64,
    ) -> Result<(), AccessError> {
        self.checked(key, pd, None, need, va, len).map(|_| ())
    }

    /// Checks a remote access by QP `qpn`, which may use a memory window.
    pub fn remote_check(
        &self,
        key: u32,
        pd: u32,
        qpn: u32,
        need: Access,
        va: u64,
        len: u64,
    ) -> Result<(), AccessError> {
        self.checked(key, pd, Some(qpn), need, va, len).map(|_| ())
    }

    /// A remote read (see [`MrTable::read`]) by QP `qpn`.
    #[allow(clippy::too_many_arguments)]
    pub fn remote_read<M: Memory>(
        &self,
        mem: &M,
        key: u32,
        pd: u32,
        qpn: u32,
        need: Access,
        va: u64,
        dst: &mut [u8],
    ) -> Result<(), AccessError> {
        self.read_as(mem, key, pd, Some(qpn), need, va, dst)
    }

    /// A remote write (see [`MrTable::write`]) by QP `qpn`.
    #[allow(clippy::too_many_arguments)]
    pub fn remote_write<M: Memory>(
        &self,
        mem: &mut M,
        key: u32,
        pd: u32,
        qpn: u32,
        need: Access,
        va: u64,
        src: &[u8],
    ) -> Result<(), AccessError> {
        self.write_as(mem, key, pd, Some(qpn), need, va, src)
    }

    /// Checks a local access, then copies `[va, va + dst.len())` into
    /// `dst`.
    pub fn read<M: Memory>(
        &self,
        mem: &M,
        key: u32,
        pd: u32,
        need: Access,
        va: u64,
        dst: &mut [u8],
    ) -> Result<(), AccessError> {
        self.read_as(mem, key, pd, None, need, va, dst)
    }

    #[allow(clippy::too_many_arguments)]
    fn read_as<M: Memory>(
        &self,
        mem: &M,
        key: u32,
        pd: u32,
        qpn: Option<u32>,
        need: Access,
        va: u64,
        dst: &mut [u8],
    ) -> Result<(), AccessError> {
        self.read_as_crc(mem, key, pd, qpn, need, va, dst, None)
            .map(|_| ())
    }

    /// As [`MrTable::read_as`]; with a register, also returns the CRC
    /// register after the bytes read, started from it (see
    /// [`Memory::read_crc`]).
    #[allow(clippy::too_many_arguments)]
    fn read_as_crc<M: Memory>(
        &self,
        mem: &M,
        key: u32,
        pd: u32,
        qpn: Option<u32>,
        need: Access,
        va: u64,
        dst: &mut [u8],
        mut reg: Option<u32>,
    ) -> Result<Option<u32>, AccessError> {
        let len = dst.len() as u64;
        let (mr, off) = self.checked(key, pd, qpn, need, va, len)?;
        let ok = mr.pieces(off, len, |addr, at, n| {
            let dst = &mut dst[at..at + n];
            match reg {
                Some(r) => mem.read_crc(addr, dst, r).map(|r| reg = Some(r)),
                None => mem.read(addr, dst),
            }
            .is_ok()
        });
        ok.then_some(reg)
            .ok_or(AccessError::OutOfBounds { key, va, len })
    }

    /// A remote read by QP `qpn` that also returns the CRC register after
    /// the bytes read, started from `reg` (see [`Memory::read_crc`]).
    #[allow(clippy::too_many_arguments)]
    pub fn remote_read_crc<M: Memory>(
        &self,
        mem: &M,
        key: u32,
        pd: u32,
        qpn: u32,
        need: Access,
        va: u64,
        dst: &mut [u8],
        reg: u32,
    ) -> Result<u32, AccessError> {
        self.read_as_crc(mem, key, pd, Some(qpn), need, va, dst, Some(reg))
            .map(|r| r.unwrap_or(reg))
    }

    /// A remote write by QP `qpn` that also returns the CRC register after
    /// `src`, started from `reg` (see [`Memory::write_crc`]): the receive
    /// side's fused placement and ICRC check.
    #[allow(clippy::too_many_arguments)]
    pub fn remote_write_crc<M: Memory>(
        &self,
        mem: &mut M,
        key: u32,
        pd: u32,
        qpn: u32,
        need: Access,
        va: u64,
        src: &[u8],
        reg: u32,
    ) -> Result<u32, AccessError> {
        self.write_as_crc(mem, key, pd, Some(qpn), need, va, src, Some(reg))
            .map(|r| r.unwrap_or(reg))
    }

    /// Checks a local access, then copies `src` to `va`.
    pub fn write<M: Memory>(
        &self,
        mem: &mut M,
        key: u32,
        pd: u32,
        need: Access,
        va: u64,
        src: &[u8],
    ) -> Result<(), AccessError> {
        self.write_as(mem, key, pd, None, need, va, src)
    }

    #[allow(clippy::too_many_arguments)]
    fn write_as<M: Memory>(
        &self,
        mem: &mut M,
        key: u32,
        pd: u32,
        qpn: Option<u32>,
        need: Access,
        va: u64,
        src: &[u8],
    ) -> Result<(), AccessError> {
        self.write_as_crc(mem, key, pd, qpn, need, va, src, None)
            .map(|_| ())
    }

    /// As [`MrTable::write_as`]; with a register, also returns the CRC
    /// register after `src`, started from it (see [`Memory::write_crc`]).
    #[allow(clippy::too_many_arguments)]
    fn write_as_crc<M: Memory>(
        &self,
        mem: &mut M,
        key: u32,
        pd: u32,
        qpn: Option<u32>,
        need: Access,
        va: u64,
        src: &[u8],
        mut reg: Option<u32>,
    ) -> Result<Option<u32>, AccessError> {
        let len = src.len() as u64;
        let (mr, off) = self.checked(key, pd, qpn, need, va, len)?;
        let ok = mr.pieces(off, len, |addr, at, n| {
            let src = &src[at..at + n];
            match reg {
                Some(r) => mem.write_crc(addr, src, r).map(|r| reg = Some(r)),
                None => mem.write(addr, src),
            }
            .is_ok()
        });
        ok.then_some(reg)
            .ok_or(AccessError::OutOfBounds { key, va, len })
    }
}

/// Total length of a scatter/gather list.
pub fn sge_total(sges: &[Sge]) -> u64 {
    sges.iter().map(|s| u64::from(s.length)).sum()
}

/// Copies `dst.len()` bytes starting at byte `offset` of the message
/// described by `sges` into `dst` (gather, for sending).
pub fn gather<M: Memory>(
    mem: &M,
    mrs: &MrTable,
    pd: u32,
    sges: &[Sge],
    offset: u64,
    dst: &mut [u8],
) -> Result<(), AccessError> {
    gather_as(mem, mrs, pd, sges, offset, dst, None).map(|_| ())
}

/// As [`gather`], and returns the CRC register after the bytes gathered,
/// started from `reg`: the send side's fused copy and ICRC.
pub fn gather_crc<M: Memory>(
    mem: &M,
    mrs: &MrTable,
    pd: u32,
    sges: &[Sge],
    offset: u64,
    dst: &mut [u8],
    reg: u32,
) -> Result<u32, AccessError> {
    gather_as(mem, mrs, pd, sges, offset, dst, Some(reg)).map(|r| r.unwrap_or(reg))
}

fn gather_as<M: Memory>(
    mem: &M,
    mrs: &MrTable,
    pd: u32,
    sges: &[Sge],
    offset: u64,
    dst: &mut [u8],
    mut reg: Option<u32>,
) -> Result<Option<u32>, AccessError> {
    let len = dst.len();
    walk(sges, offset, len, |sge, va, at, n| {
        let piece = &mut dst[at..at + n];
        reg = mrs.read_as_crc(mem, sge.lkey, pd, None, Access(0), va, piece, reg)?;
        Ok(())
    })?;
    Ok(reg)
}

/// Copies `src` into the message described by `sges`, starting at byte
/// `offset` (scatter, for receiving). The SGEs need LOCAL_WRITE.
pub fn scatter<M: Memory>(
    mem: &mut M,
    mrs: &MrTable,
    pd: u32,
    sges: &[Sge],
    offset: u64,
    src: &[u8],
) -> Result<(), AccessError> {
    walk(sges, offset, src.len(), |sge, va, at, n| {
        mrs.write(mem, sge.lkey, pd, Access::LOCAL_WRITE, va, &src[at..at + n])
    })
}

/// Visits the SGE pieces of `[offset, offset + len)` of a scatter/gather
/// list: `f(sge, va, buffer offset, bytes)`.
fn walk(
    sges: &[Sge],
    offset: u64,
    len: usize,
    mut f: impl FnMut(&Sge, u64, usize, usize) -> Result<(), AccessError>,
) -> Result<(), AccessError> {
    let mut skip = offset;
    let mut done = 0usize;
    for sge in sges {
        if done == len {
            break;
        }
        let sl = u64::from(sge.length);
        if skip >= sl {
            skip -= sl;
            continue;
        }
        let n = ((sl - skip) as usize).min(len - done);
        f(sge, sge.addr.wrapping_add(skip), done, n)?;
        done += n;
        skip = 0;
    }
    if done < len {
        return Err(AccessError::Length {
            need: offset + len as u64,
            have: sge_total(sges),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory::VecMemory;

    fn mr(pd: u32, access: Access) -> Mr {
        Mr::linear(pd, 0x1000, 256, 64, access)
    }

    #[test]
    fn keys_change_on_reuse() {
        let mut t = MrTable::new(4);
        let k1 = t.insert(mr(1, Access::LOCAL_WRITE)).unwrap();
        assert!(t.get(k1).is_some());
        t.remove(k1).unwrap();
        assert!(t.get(k1).is_none());
        let k2 = t.insert(mr(1, Access::LOCAL_WRITE)).unwrap();
        assert_eq!(k1 >> 8, k2 >> 8);
        assert_ne!(k1, k2);
        assert!(t.get(k1).is_none());
        assert!(t.remove(k1).is_none());
        assert!(t.get(0).is_none());
        assert!(t.get(u32::MAX).is_none());
    }

    #[test]
    fn checks() {
        let mut t = MrTable::new(4);
        let k = t.insert(mr(1, Access::REMOTE_READ)).unwrap();
        assert_eq!(t.check(k, 1, Access::REMOTE_READ, 0x1000, 256), Ok(()));
        assert_eq!(t.check(k, 1, Access::REMOTE_READ, 0x10ff, 1), Ok(()));
        assert!(matches!(
            t.check(k, 1, Access::REMOTE_READ, 0x10ff, 2),
            Err(AccessError::OutOfBounds { .. })
        ));
        assert!(matches!(
            t.check(k, 1, Access::REMOTE_READ, 0xfff, 1),
            Err(AccessError::OutOfBounds { .. })
        ));
        assert!(matches!(
            t.check(k, 1, Access::REMOTE_READ, u64::MAX, 2),
            Err(AccessError::OutOfBounds { .. })
        ));
        assert!(matches!(
            t.check(k, 2, Access::REMOTE_READ, 0x1000, 1),
            Err(AccessError::WrongPd(_))
        ));
        assert!(matches!(
            t.check(k, 1, Access::REMOTE_WRITE, 0x1000, 1),
            Err(AccessError::NoAccess { .. })
        ));
        assert!(matches!(
            t.check(k ^ 1, 1, Access::REMOTE_READ, 0x1000, 1),
            Err(AccessError::BadKey(_))
        ));
    }

    #[test]
    fn page_lists_split_accesses_at_page_boundaries() {
        let mut mem = VecMemory::new(1 << 16);
        let mut t = MrTable::new(4);
        // iova 0x7000_0100, 3 pages of 4 KiB scattered in memory, in
        // reverse order, starting 0x100 into the first page.
        let pages = vec![0x8000, 0x4000, 0x0000];
        let k = t
            .insert(Mr {
                pd: 1,
                iova: 0x7000_0100,
                length: 3 * 4096 - 0x100,
                map: MrMap::Pages {
                    page_shift: 12,
                    first_offset: 0x100,
                    pages,
                },
                access: Access::LOCAL_WRITE.with(Access::REMOTE_READ),
                kind: MrKind::User,
                valid: true,
            })
            .unwrap();
        let data: Vec<u8> = (0..6000u32).map(|i| i as u8).collect();
        t.write(
            &mut mem,
            k,
            1,
            Access::LOCAL_WRITE,
            0x7000_0100 + 3000,
            &data,
        )
        .unwrap();
        // 3000 + 0x100 = 3256 into page 0: 840 bytes there, 4096 in page 1,
        // the rest (1064) in page 2.
        assert_eq!(&mem.as_slice()[0x8000 + 3256..0x8000 + 4096], &data[..840]);
        assert_eq!(&mem.as_slice()[0x4000..0x5000], &data[840..840 + 4096]);
        assert_eq!(&mem.as_slice()[0..1064], &data[840 + 4096..]);
        let mut back = vec![0u8; 6000];
        t.read(
            &mem,
            k,
            1,
            Access::REMOTE_READ,
            0x7000_0100 + 3000,
            &mut back,
        )
        .unwrap();
        assert_eq!(back, data);
        assert!(
            t.read(
                &mem,
                k,
                1,
                Access::REMOTE_READ,
                0x7000_0100 + 9000,
                &mut back
            )
            .is_err()
        );
    }

    #[test]
    fn gather_and_scatter_across_sges() {
        let mut mem = VecMemory::new(1024);
        let mut t = MrTable::new(4);
        let k = t.insert(mr(1, Access::LOCAL_WRITE)).unwrap();
        let sges = [
            Sge {
                addr: 0x1000,
                length: 3,
                lkey: k,
            },
            Sge {
                addr: 0x1010,
                length: 5,
                lkey: k,
            },
        ];
        scatter(&mut mem, &t, 1, &sges, 1, &[1, 2, 3, 4, 5]).unwrap();
        assert_eq!(&mem.as_slice()[64..67], &[0, 1, 2]);
        assert_eq!(&mem.as_slice()[80..85], &[3, 4, 5, 0, 0]);
        let mut out = [0u8; 6];
        gather(&mem, &t, 1, &sges, 2, &mut out).unwrap();
        assert_eq!(out, [2, 3, 4, 5, 0, 0]);
        assert!(matches!(
            gather(&mem, &t, 1, &sges, 4, &mut out),
            Err(AccessError::Length { need: 10, have: 8 })
        ));
    }
}
