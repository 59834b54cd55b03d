//! Memory regions: registration with an 8-bit key part that changes each
//! time a slot is reused, access-flag and bounds checks on every access,
//! and the copies between packet buffers and scatter/gather lists.
//!
//! An MR maps the virtual range `[iova, iova + length)` linearly onto the
//! address space of a [`Memory`] starting at `base`. lkey and rkey are the
//! same value, `index << 8 | key`, as in rxe.

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

/// A registered memory region.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mr {
    /// Protection domain handle.
    pub pd: u32,
    /// First virtual address.
    pub iova: u64,
    /// Length in bytes.
    pub length: u64,
    /// Address in [`Memory`] of `iova`.
    pub base: u64,
    /// Granted access.
    pub access: Access,
}

#[derive(Debug, Clone, Copy)]
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
        self.slots.iter().any(|s| s.mr.is_some_and(|m| m.pd == pd))
    }

    /// Checks key, PD, access and bounds, and returns the memory address
    /// of `va`.
    pub fn check(
        &self,
        key: u32,
        pd: u32,
        need: Access,
        va: u64,
        len: u64,
    ) -> Result<u64, AccessError> {
        let mr = self.get(key).ok_or(AccessError::BadKey(key))?;
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
        Ok(mr.base + off)
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
    walk(
        mrs,
        pd,
        Access(0),
        sges,
        offset,
        dst.len(),
        |addr, at, n| mem.read(addr, &mut dst[at..at + n]).is_ok(),
    )
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
    walk(
        mrs,
        pd,
        Access::LOCAL_WRITE,
        sges,
        offset,
        src.len(),
        |addr, at, n| mem.write(addr, &src[at..at + n]).is_ok(),
    )
}

/// Visits the pieces of `[offset, offset + len)` of a scatter/gather list,
/// checking each piece's key; `f(mem_addr, buf_offset, n)` does the copy
/// and returns false if the memory refused it.
fn walk(
    mrs: &MrTable,
    pd: u32,
    need: Access,
    sges: &[Sge],
    offset: u64,
    len: usize,
    mut f: impl FnMut(u64, usize, usize) -> bool,
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
        let va = sge.addr.wrapping_add(skip);
        let addr = mrs.check(sge.lkey, pd, need, va, n as u64)?;
        if !f(addr, done, n) {
            return Err(AccessError::OutOfBounds {
                key: sge.lkey,
                va,
                len: n as u64,
            });
        }
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
        Mr {
            pd,
            iova: 0x1000,
            length: 256,
            base: 64,
            access,
        }
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
        assert_eq!(t.check(k, 1, Access::REMOTE_READ, 0x1000, 256), Ok(64));
        assert_eq!(t.check(k, 1, Access::REMOTE_READ, 0x10ff, 1), Ok(64 + 255));
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
