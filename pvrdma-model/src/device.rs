//! The device: BAR1 and BAR2 accesses in, guest-memory updates and
//! interrupts out, with the command set executed synchronously inside
//! the REQUEST write as the driver expects.
//!
//! This module owns the device's state machine and object tables:
//! - the DSR handshake (DSRHIGH: read the driver's half, write the caps),
//!   ACTIVATE, UNQUIESCE and RESET;
//! - the command channel: read the request slot, execute, write the
//!   response slot, set ERR, raise vector 0;
//! - the object tables (user contexts, PDs, CQs, MRs, GIDs), each handle
//!   checked against its table and its owning context, so a guest's
//!   mistake (or malice) gets a command error and never a panic.
//!
//! Built so far: everything above for contexts, PDs, CQs (ring pages
//! validated), MRs (DMA, user page-list and fast-registration; the page
//! directory is only recorded, so registering 1 GiB touches nothing) and
//! the GID table. Not built yet: QPs and SRQs (their commands answer an
//! error), doorbells, and the translation onto the engine.

use thiserror::Error;
use zerocopy::{FromBytes, IntoBytes, little_endian::U32};

use crate::{
    abi::{
        CMD_SLOT_LEN, DEVICE_VERSION, DSR_CAPS_OFFSET, DeviceCaps, Dsr, GID_TYPE_ROCE_V2,
        MODE_ROCE, PAGE_SIZE, PortAttr, RESP_SLOT_LEN,
    },
    cmd::{Command, Response},
    regs::{Ctl, RegAction, Registers, vector},
    ring::{PageDir, ReadU64, RingError},
};

/// Guest memory as the device reaches it (DMA).
pub trait GuestMemory {
    /// Reads `buf.len()` bytes at guest address `addr`.
    fn read(&self, addr: u64, buf: &mut [u8]) -> Result<(), Fault>;
    /// Writes `data` at guest address `addr`.
    fn write(&mut self, addr: u64, data: &[u8]) -> Result<(), Fault>;
}

/// A guest address outside guest memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
#[error("guest address {addr:#x}+{len} is outside guest memory")]
pub struct Fault {
    /// Address.
    pub addr: u64,
    /// Length.
    pub len: usize,
}

struct Dma<'a, M: GuestMemory>(&'a M);

impl<M: GuestMemory> ReadU64 for Dma<'_, M> {
    fn read_u64(&self, addr: u64) -> Option<u64> {
        let mut b = [0u8; 8];
        self.0.read(addr, &mut b).ok()?;
        Some(u64::from_le_bytes(b))
    }
}

/// Limits the device reports (and enforces).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// QPs (handles stay below this and below 65536).
    pub max_qp: u32,
    /// Work requests per queue.
    pub max_qp_wr: u32,
    /// SGEs per WQE.
    pub max_sge: u32,
    /// CQs.
    pub max_cq: u32,
    /// Entries per CQ.
    pub max_cqe: u32,
    /// MRs.
    pub max_mr: u32,
    /// PDs.
    pub max_pd: u32,
    /// SRQs.
    pub max_srq: u32,
    /// UAR pages (user contexts + the kernel's), a power of 2.
    pub max_uar: u32,
    /// GID table entries.
    pub gid_tbl_len: u32,
    /// Largest MR.
    pub max_mr_size: u64,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_qp: 1024,
            max_qp_wr: 4096,
            max_sge: 32,
            max_cq: 2048,
            max_cqe: 65536,
            max_mr: 16384,
            max_pd: 1024,
            max_srq: 1024,
            max_uar: 512,
            gid_tbl_len: 16,
            max_mr_size: u64::MAX,
        }
    }
}

/// What a register access asks the transport (vfio-user server) to do.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Effects {
    /// MSI-X vectors to signal.
    pub interrupts: Vec<u32>,
}

/// Why a command failed (reported to the guest as ERR and `hdr.err`).
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum CmdFailure {
    /// The device is not active.
    #[error("device not active")]
    NotActive,
    /// The slot could not be read or written.
    #[error(transparent)]
    Fault(#[from] Fault),
    /// Unknown command code.
    #[error("unknown command")]
    Unknown,
    /// A handle that does not exist (or belongs to another context).
    #[error("no {kind} with handle {handle}")]
    BadHandle {
        /// What was named.
        kind: &'static str,
        /// The handle.
        handle: u32,
    },
    /// A table is full.
    #[error("no free {0}")]
    Full(&'static str),
    /// A size or count the device cannot accept.
    #[error("invalid {0}")]
    Invalid(&'static str),
    /// A ring or page directory the guest described badly.
    #[error(transparent)]
    Ring(#[from] RingError),
    /// Not built yet.
    #[error("command not supported yet")]
    Unsupported,
}

impl CmdFailure {
    /// The errno-like byte in `hdr.err`.
    fn code(&self) -> u8 {
        match self {
            CmdFailure::BadHandle { .. } | CmdFailure::Invalid(_) | CmdFailure::Ring(_) => 22,
            CmdFailure::Full(_) => 12,
            CmdFailure::Fault(_) => 14,
            CmdFailure::NotActive => 19,
            CmdFailure::Unknown | CmdFailure::Unsupported => 95,
        }
    }
}

/// A handle table with handles from 1 to `max - 1`.
#[derive(Debug, Clone)]
struct Table<T> {
    slots: Vec<Option<T>>,
    max: u32,
}

impl<T> Table<T> {
    fn new(max: u32) -> Table<T> {
        Table {
            slots: Vec::new(),
            max,
        }
    }

    fn insert(&mut self, v: T) -> Option<u32> {
        if let Some(i) = self.slots.iter().skip(1).position(Option::is_none) {
            self.slots[i + 1] = Some(v);
            return Some(i as u32 + 1);
        }
        let h = self.slots.len().max(1) as u32;
        if h >= self.max {
            return None;
        }
        self.slots.resize_with(h as usize, || None);
        self.slots.push(Some(v));
        Some(h)
    }

    fn get(&self, h: u32) -> Option<&T> {
        self.slots.get(h as usize)?.as_ref()
    }

    fn remove(&mut self, h: u32) -> Option<T> {
        self.slots.get_mut(h as usize)?.take()
    }

    fn clear(&mut self) {
        self.slots.clear();
    }

    fn count(&self) -> usize {
        self.slots.iter().filter(|s| s.is_some()).count()
    }
}

/// A protection domain: its context (0 = the kernel).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Pd {
    ctx: u32,
}

/// A completion queue's guest ring.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Cq {
    ctx: u32,
    entries: u32,
    pdir: PageDir,
}

/// How an MR maps its addresses.
#[derive(Debug, Clone, PartialEq, Eq)]
enum MrKind {
    /// Guest bus addresses 1:1 (the kernel's DMA MR).
    Dma,
    /// `start` is the first byte, in pages from a directory.
    Pages {
        start: u64,
        length: u64,
        pdir: PageDir,
    },
    /// Fast registration: pages come later in a FAST_REG WQE.
    FastReg { max_pages: u32 },
}

/// A memory region.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Mr {
    pd: u32,
    access: u32,
    kind: MrKind,
}

/// A GID table entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GidEntry {
    /// The GID (network order).
    pub gid: [u8; 16],
    /// 1 RoCE v1, 2 RoCE v2.
    pub gid_type: u8,
}

/// The device.
pub struct Device {
    regs: Registers,
    limits: Limits,
    node_guid: [u8; 8],
    active: bool,
    port_up: bool,
    driver_version: u32,
    cmd_slot: u64,
    resp_slot: u64,
    uar_pfn: u64,
    ucs: Table<u32>,
    pds: Table<Pd>,
    cqs: Table<Cq>,
    mrs: Table<Mr>,
    gids: Vec<Option<GidEntry>>,
    key_gen: u8,
}

impl Device {
    /// A device paired with a NIC of `mac`.
    pub fn new(mac: [u8; 6], limits: Limits) -> Device {
        // EUI-64 from the MAC, as for a link-local address.
        let node_guid = [
            mac[0] ^ 2,
            mac[1],
            mac[2],
            0xff,
            0xfe,
            mac[3],
            mac[4],
            mac[5],
        ];
        Device {
            regs: Registers::new(DEVICE_VERSION, mac),
            ucs: Table::new(limits.max_uar),
            pds: Table::new(limits.max_pd),
            cqs: Table::new(limits.max_cq),
            mrs: Table::new(limits.max_mr),
            gids: vec![None; limits.gid_tbl_len as usize],
            limits,
            node_guid,
            active: false,
            port_up: true,
            driver_version: 0,
            cmd_slot: 0,
            resp_slot: 0,
            uar_pfn: 0,
            key_gen: 0,
        }
    }

    /// Whether ACTIVATE succeeded (and no RESET since).
    pub fn active(&self) -> bool {
        self.active
    }

    /// The GID table.
    pub fn gids(&self) -> &[Option<GidEntry>] {
        &self.gids
    }

    /// Live objects: (contexts, PDs, CQs, MRs).
    pub fn counts(&self) -> (usize, usize, usize, usize) {
        (
            self.ucs.count(),
            self.pds.count(),
            self.cqs.count(),
            self.mrs.count(),
        )
    }

    /// Sets whether the paired NIC's link is up (QUERY_PORT's state).
    pub fn set_port_up(&mut self, up: bool) {
        self.port_up = up;
    }

    /// A 32-bit BAR1 read.
    pub fn bar1_read(&mut self, offset: u64) -> u32 {
        self.regs.read(offset)
    }

    /// A 32-bit BAR1 write.
    pub fn bar1_write(&mut self, mem: &mut impl GuestMemory, offset: u64, value: u32) -> Effects {
        let mut fx = Effects::default();
        match self.regs.write(offset, value) {
            RegAction::DsrSet(addr) => {
                let ok = self.dsr_set(mem, addr).is_ok();
                self.regs.set_err(u32::from(!ok));
            }
            RegAction::Ctl(Ctl::Activate) => {
                self.active = self.cmd_slot != 0 && self.resp_slot != 0;
                self.regs.set_err(u32::from(!self.active));
            }
            RegAction::Ctl(Ctl::Unquiesce) => self.regs.set_err(0),
            RegAction::Ctl(Ctl::Reset) => {
                self.reset();
                self.regs.set_err(0);
            }
            RegAction::BadCtl(_) => self.regs.set_err(1),
            RegAction::Request => {
                let err = match self.request(mem) {
                    Ok(()) => 0,
                    Err(_) => 1,
                };
                self.regs.set_err(err);
                if self.regs.raise(vector::COMMAND) {
                    fx.interrupts.push(vector::COMMAND);
                }
            }
            RegAction::None | RegAction::Mask(_) | RegAction::Ignored { .. } => {}
        }
        fx
    }

    fn reset(&mut self) {
        self.active = false;
        self.cmd_slot = 0;
        self.resp_slot = 0;
        self.ucs.clear();
        self.pds.clear();
        self.cqs.clear();
        self.mrs.clear();
        self.gids.iter_mut().for_each(|g| *g = None);
    }

    /// DSRHIGH: read the driver's half of the DSR and write our caps.
    fn dsr_set(&mut self, mem: &mut impl GuestMemory, addr: u64) -> Result<(), Fault> {
        let mut raw = [0u8; core::mem::size_of::<Dsr>()];
        mem.read(addr, &mut raw)?;
        let Ok(dsr) = Dsr::read_from_bytes(&raw) else {
            return Err(Fault {
                addr,
                len: raw.len(),
            });
        };
        self.driver_version = dsr.driver_version.get();
        self.cmd_slot = dsr.cmd_slot_dma.get();
        self.resp_slot = dsr.resp_slot_dma.get();
        self.uar_pfn = if DEVICE_VERSION >= 19 {
            dsr.uar_pfn64.get()
        } else {
            dsr.uar_pfn64.get() & 0xffff_ffff
        };
        let caps = self.caps();
        mem.write(addr + DSR_CAPS_OFFSET, caps.as_bytes())
    }

    /// The caps we report.
    pub fn caps(&self) -> DeviceCaps {
        let l = &self.limits;
        let u = U32::new;
        DeviceCaps {
            fw_ver: (1u64 << 32).into(),
            node_guid: self.node_guid,
            sys_image_guid: self.node_guid,
            max_mr_size: l.max_mr_size.into(),
            page_size_cap: (!(PAGE_SIZE - 1)).into(),
            atomic_arg_sizes: 8u64.into(),
            vendor_id: u(0x15ad),
            vendor_part_id: u(0x0820),
            hw_ver: u(DEVICE_VERSION),
            max_qp: u(l.max_qp),
            max_qp_wr: u(l.max_qp_wr),
            // IB_DEVICE_MEM_MGT_EXTENSIONS.
            device_cap_flags: u(1 << 21),
            max_sge: u(l.max_sge),
            max_sge_rd: u(l.max_sge),
            max_cq: u(l.max_cq),
            max_cqe: u(l.max_cqe),
            max_mr: u(l.max_mr),
            max_pd: u(l.max_pd),
            max_qp_rd_atom: u(128),
            max_res_rd_atom: u(128 * l.max_qp),
            max_qp_init_rd_atom: u(128),
            max_mw: u(0),
            max_ah: u(l.max_qp * 64),
            max_srq: u(l.max_srq),
            max_srq_wr: u(l.max_qp_wr),
            max_srq_sge: u(l.max_sge),
            max_uar: u(l.max_uar),
            gid_tbl_len: u(l.gid_tbl_len),
            max_pkeys: 1.into(),
            local_ca_ack_delay: 15,
            phys_port_cnt: 1,
            mode: MODE_ROCE,
            // CMP_SWAP and FETCH_ADD.
            atomic_ops: 0b11,
            // LOCAL_INV, REMOTE_INV, FAST_REG_WR.
            bmme_flags: 0b111,
            gid_types: GID_TYPE_ROCE_V2,
            max_fast_reg_page_list_len: u(512),
            ..DeviceCaps::default()
        }
    }

    /// REQUEST: execute the command in the slot and answer it.
    fn request(&mut self, mem: &mut impl GuestMemory) -> Result<(), CmdFailure> {
        if !self.active {
            return Err(CmdFailure::NotActive);
        }
        let mut slot = [0u8; CMD_SLOT_LEN];
        mem.read(self.cmd_slot, &mut slot)?;
        let cmd = Command::parse(&slot).map_err(|_| CmdFailure::Unknown)?;
        let hdr = cmd.hdr();
        let result = self.execute(mem, cmd);
        let mut out = [0u8; RESP_SLOT_LEN];
        match &result {
            Ok(resp) => resp.write(&hdr, 0, &mut out),
            Err(e) => Response::Empty.write(&hdr, e.code(), &mut out),
        }
        mem.write(self.resp_slot, &out)?;
        result.map(|_| ())
    }

    fn execute(
        &mut self,
        mem: &mut impl GuestMemory,
        cmd: Command,
    ) -> Result<Response, CmdFailure> {
        match cmd {
            Command::QueryPort(q) => {
                if q.port_num != 1 {
                    return Err(CmdFailure::Invalid("port"));
                }
                Ok(Response::QueryPort(self.port_attr()))
            }
            Command::QueryPkey(q) => {
                if q.port_num != 1 || q.index != 0 {
                    return Err(CmdFailure::Invalid("pkey index"));
                }
                Ok(Response::QueryPkey(0xffff))
            }
            Command::CreateUc(c) => {
                let pfn = c.pfn.get();
                let index = pfn.wrapping_sub(self.uar_pfn);
                if index == 0 || index >= u64::from(self.limits.max_uar) {
                    return Err(CmdFailure::Invalid("UAR page"));
                }
                let h = self
                    .ucs
                    .insert(index as u32)
                    .ok_or(CmdFailure::Full("context"))?;
                Ok(Response::Handle(h))
            }
            Command::DestroyUc(c) => {
                let h = c.handle.get();
                self.ucs.get(h).ok_or(CmdFailure::BadHandle {
                    kind: "context",
                    handle: h,
                })?;
                // Its objects go with it.
                let owned = |ctx: u32| ctx == h;
                let pds: Vec<u32> = (0..self.pds.slots.len() as u32)
                    .filter(|p| self.pds.get(*p).is_some_and(|pd| owned(pd.ctx)))
                    .collect();
                for p in &pds {
                    self.pds.remove(*p);
                }
                for i in 0..self.mrs.slots.len() as u32 {
                    if self.mrs.get(i).is_some_and(|m| pds.contains(&m.pd)) {
                        self.mrs.remove(i);
                    }
                }
                for i in 0..self.cqs.slots.len() as u32 {
                    if self.cqs.get(i).is_some_and(|c| owned(c.ctx)) {
                        self.cqs.remove(i);
                    }
                }
                self.ucs.remove(h);
                Ok(Response::Empty)
            }
            Command::CreatePd(c) => {
                let ctx = c.handle.get();
                self.check_ctx(ctx)?;
                let h = self.pds.insert(Pd { ctx }).ok_or(CmdFailure::Full("PD"))?;
                Ok(Response::Handle(h))
            }
            Command::DestroyPd(c) => {
                let h = c.handle.get();
                if self.mrs.slots.iter().flatten().any(|m| m.pd == h) {
                    return Err(CmdFailure::Invalid("PD still in use"));
                }
                self.pds.remove(h).ok_or(CmdFailure::BadHandle {
                    kind: "PD",
                    handle: h,
                })?;
                Ok(Response::Empty)
            }
            Command::CreateCq(c) => {
                let ctx = c.ctx_handle.get();
                self.check_ctx(ctx)?;
                let entries = c.cqe.get();
                if entries == 0 || !entries.is_power_of_two() || entries > self.limits.max_cqe {
                    return Err(CmdFailure::Invalid("CQ size"));
                }
                let need = 1 + (u64::from(entries) * 64).div_ceil(PAGE_SIZE);
                let pages = c.nchunks.get();
                if u64::from(pages) < need {
                    return Err(CmdFailure::Invalid("CQ ring pages"));
                }
                let pdir = PageDir::new(c.pdir_dma.get(), pages)?;
                // The ring-state page must be reachable now.
                pdir.page(&Dma(&*mem), 0)?;
                let h = self
                    .cqs
                    .insert(Cq { ctx, entries, pdir })
                    .ok_or(CmdFailure::Full("CQ"))?;
                Ok(Response::CreateCq(h, entries))
            }
            Command::DestroyCq(c) => {
                let h = c.handle.get();
                self.cqs.remove(h).ok_or(CmdFailure::BadHandle {
                    kind: "CQ",
                    handle: h,
                })?;
                Ok(Response::Empty)
            }
            Command::ResizeCq(_) => Err(CmdFailure::Unsupported),
            Command::CreateMr(c) => {
                let pd = c.pd_handle.get();
                self.pds.get(pd).ok_or(CmdFailure::BadHandle {
                    kind: "PD",
                    handle: pd,
                })?;
                let flags = c.flags.get();
                let kind = if flags & 1 != 0 {
                    MrKind::Dma
                } else if flags & 2 != 0 {
                    let max_pages = c.nchunks.get();
                    if max_pages == 0 || max_pages > 512 {
                        return Err(CmdFailure::Invalid("fast-reg page count"));
                    }
                    MrKind::FastReg { max_pages }
                } else {
                    let (start, length) = (c.start.get(), c.length.get());
                    if length == 0 || length > self.limits.max_mr_size {
                        return Err(CmdFailure::Invalid("MR length"));
                    }
                    let first = start & (PAGE_SIZE - 1);
                    let need = (first + length).div_ceil(PAGE_SIZE);
                    let pages = c.nchunks.get();
                    if u64::from(pages) != need {
                        return Err(CmdFailure::Invalid("MR page count"));
                    }
                    // Only the directory is recorded: no page is touched.
                    let pdir = PageDir::new(c.pdir_dma.get(), pages)?;
                    MrKind::Pages {
                        start,
                        length,
                        pdir,
                    }
                };
                let mr = Mr {
                    pd,
                    access: c.access_flags.get(),
                    kind,
                };
                let h = self.mrs.insert(mr).ok_or(CmdFailure::Full("MR"))?;
                // Handle in the top 24 bits, a generation in the low 8.
                self.key_gen = self.key_gen.wrapping_add(1);
                let key = h << 8 | u32::from(self.key_gen);
                Ok(Response::CreateMr(h, key, key))
            }
            Command::DestroyMr(c) => {
                let h = c.handle.get();
                self.mrs.remove(h).ok_or(CmdFailure::BadHandle {
                    kind: "MR",
                    handle: h,
                })?;
                Ok(Response::Empty)
            }
            Command::CreateBind(c) => {
                let i = c.index.get() as usize;
                let slot = self
                    .gids
                    .get_mut(i)
                    .ok_or(CmdFailure::Invalid("GID index"))?;
                if c.gid_type != 1 && c.gid_type != 2 {
                    return Err(CmdFailure::Invalid("GID type"));
                }
                *slot = Some(GidEntry {
                    gid: c.new_gid,
                    gid_type: c.gid_type,
                });
                Ok(Response::Empty)
            }
            Command::DestroyBind(c) => {
                let i = c.index.get() as usize;
                let slot = self
                    .gids
                    .get_mut(i)
                    .ok_or(CmdFailure::Invalid("GID index"))?;
                *slot = None;
                Ok(Response::Empty)
            }
            Command::CreateQp(_)
            | Command::ModifyQp(_)
            | Command::QueryQp(_)
            | Command::DestroyQp(_)
            | Command::CreateSrq(_)
            | Command::ModifySrq(_)
            | Command::QuerySrq(_)
            | Command::DestroySrq(_) => Err(CmdFailure::Unsupported),
        }
    }

    /// Context 0 is the kernel's; any other must exist.
    fn check_ctx(&self, ctx: u32) -> Result<(), CmdFailure> {
        if ctx != 0 && self.ucs.get(ctx).is_none() {
            return Err(CmdFailure::BadHandle {
                kind: "context",
                handle: ctx,
            });
        }
        Ok(())
    }

    fn port_attr(&self) -> PortAttr {
        let u = U32::new;
        PortAttr {
            state: u(if self.port_up { 4 } else { 1 }),
            max_mtu: u(5),
            active_mtu: u(3),
            gid_tbl_len: u(self.limits.gid_tbl_len),
            port_cap_flags: u(1 << 16 | 1 << 26),
            max_msg_sz: u(1 << 31),
            pkey_tbl_len: 1.into(),
            active_width: 1,
            active_speed: 32,
            phys_state: if self.port_up { 5 } else { 3 },
            ..PortAttr::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        abi::{CmdHdr, Dsr},
        cmd::code,
        regs::reg,
    };

    /// 64 MiB of guest memory.
    struct Mem(Vec<u8>);

    impl GuestMemory for Mem {
        fn read(&self, addr: u64, buf: &mut [u8]) -> Result<(), Fault> {
            let a = addr as usize;
            let s = self.0.get(a..a.wrapping_add(buf.len())).ok_or(Fault {
                addr,
                len: buf.len(),
            })?;
            buf.copy_from_slice(s);
            Ok(())
        }
        fn write(&mut self, addr: u64, data: &[u8]) -> Result<(), Fault> {
            let a = addr as usize;
            let s = self.0.get_mut(a..a.wrapping_add(data.len())).ok_or(Fault {
                addr,
                len: data.len(),
            })?;
            s.copy_from_slice(data);
            Ok(())
        }
    }

    const DSR: u64 = 0x1000;
    const CMD: u64 = 0x2000;
    const RESP: u64 = 0x3000;
    const UAR_PFN: u64 = 0xfe000;

    /// A driver's probe: DSR, caps check, IMR, ACTIVATE.
    fn probe() -> (Device, Mem) {
        let mut mem = Mem(vec![0; 64 << 20]);
        let dsr = Dsr {
            driver_version: 20.into(),
            cmd_slot_dma: CMD.into(),
            resp_slot_dma: RESP.into(),
            uar_pfn64: UAR_PFN.into(),
            ..Dsr::default()
        };
        mem.write(DSR, dsr.as_bytes()).unwrap();
        let mut d = Device::new([0x52, 0x54, 0, 1, 2, 3], Limits::default());
        assert_eq!(d.bar1_read(reg::VERSION), 20);
        d.bar1_write(&mut mem, reg::DSRLOW, DSR as u32);
        d.bar1_write(&mut mem, reg::DSRHIGH, 0);
        let mut raw = [0u8; 280];
        mem.read(DSR, &mut raw).unwrap();
        let back = Dsr::read_from_bytes(&raw).unwrap();
        assert_eq!(back.caps.mode, MODE_ROCE);
        assert_eq!(back.caps.gid_types, GID_TYPE_ROCE_V2);
        assert!(back.caps.max_uar.get().is_power_of_two());
        assert_eq!(
            back.driver_version.get(),
            20,
            "the driver's half is untouched"
        );
        d.bar1_write(&mut mem, reg::IMR, 0);
        d.bar1_write(&mut mem, reg::CTL, 0);
        assert_eq!(d.bar1_read(reg::ERR), 0);
        assert!(d.active());
        (d, mem)
    }

    /// Posts a command; returns (ERR, response bytes, interrupts).
    fn command(
        d: &mut Device,
        mem: &mut Mem,
        cmd: u32,
        body: &[(usize, &[u8])],
    ) -> (u32, Vec<u8>, Vec<u32>) {
        let mut slot = [0u8; CMD_SLOT_LEN];
        let hdr = CmdHdr {
            response: 0x77u64.into(),
            cmd: cmd.into(),
            reserved: 0.into(),
        };
        slot[..16].copy_from_slice(hdr.as_bytes());
        for (at, b) in body {
            slot[*at..*at + b.len()].copy_from_slice(b);
        }
        mem.write(CMD, &slot).unwrap();
        let fx = d.bar1_write(mem, reg::REQUEST, 0);
        let mut out = vec![0u8; RESP_SLOT_LEN];
        mem.read(RESP, &mut out).unwrap();
        (d.bar1_read(reg::ERR), out, fx.interrupts)
    }

    fn u32_at(b: &[u8], at: usize) -> u32 {
        u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
    }

    #[test]
    fn probe_query_port_and_pkey() {
        let (mut d, mut mem) = probe();
        let (err, r, irq) = command(&mut d, &mut mem, code::QUERY_PORT, &[(16, &[1])]);
        assert_eq!((err, irq), (0, vec![vector::COMMAND]));
        assert_eq!(u32_at(&r, 8), 0x8000_0000);
        assert_eq!(&r[0..8], &0x77u64.to_le_bytes(), "response echoed");
        assert_eq!(u32_at(&r, 16), 4, "port ACTIVE");
        d.set_port_up(false);
        let (_, r, _) = command(&mut d, &mut mem, code::QUERY_PORT, &[(16, &[1])]);
        assert_eq!(u32_at(&r, 16), 1, "port DOWN");
        let (err, r, _) = command(&mut d, &mut mem, code::QUERY_PKEY, &[(16, &[1, 0])]);
        assert_eq!(err, 0);
        assert_eq!(&r[16..18], &[0xff, 0xff]);
        let (err, r, _) = command(&mut d, &mut mem, code::QUERY_PORT, &[(16, &[2])]);
        assert_ne!(err, 0, "no port 2");
        assert_ne!(r[12], 0, "hdr.err set");
    }

    #[test]
    fn commands_before_activation_and_unknown_ones_fail() {
        let mut mem = Mem(vec![0; 1 << 20]);
        let mut d = Device::new([2, 0, 0, 0, 0, 1], Limits::default());
        let fx = d.bar1_write(&mut mem, reg::REQUEST, 0);
        assert_ne!(d.bar1_read(reg::ERR), 0);
        assert!(
            fx.interrupts.is_empty(),
            "IMR masks everything before probe"
        );
        let (mut d, mut mem) = probe();
        let (err, _, irq) = command(&mut d, &mut mem, 99, &[]);
        assert_ne!(err, 0);
        assert_eq!(irq, vec![vector::COMMAND]);
        // A DSR outside guest memory is refused, not a panic.
        d.bar1_write(&mut mem, reg::DSRLOW, 0xffff_f000);
        d.bar1_write(&mut mem, reg::DSRHIGH, 0xffff);
        assert_ne!(d.bar1_read(reg::ERR), 0);
    }

    #[test]
    fn contexts_pds_cqs_and_mrs_check_their_handles() {
        let (mut d, mut mem) = probe();
        // A user context on UAR page 3.
        let (err, r, _) = command(
            &mut d,
            &mut mem,
            code::CREATE_UC,
            &[(16, &(UAR_PFN + 3).to_le_bytes())],
        );
        assert_eq!(err, 0);
        let uc = u32_at(&r, 16);
        assert_ne!(uc, 0);
        // UAR page 0 is the kernel's; pages past max_uar do not exist.
        for pfn in [UAR_PFN, UAR_PFN + 512, 0] {
            let (err, _, _) = command(
                &mut d,
                &mut mem,
                code::CREATE_UC,
                &[(16, &pfn.to_le_bytes())],
            );
            assert_ne!(err, 0, "pfn {pfn:#x}");
        }
        // PDs: kernel (ctx 0), ours, and a context that does not exist.
        let (err, r, _) = command(
            &mut d,
            &mut mem,
            code::CREATE_PD,
            &[(16, &0u32.to_le_bytes())],
        );
        assert_eq!(err, 0);
        let kpd = u32_at(&r, 16);
        let (_, r, _) = command(
            &mut d,
            &mut mem,
            code::CREATE_PD,
            &[(16, &uc.to_le_bytes())],
        );
        let upd = u32_at(&r, 16);
        let (err, _, _) = command(
            &mut d,
            &mut mem,
            code::CREATE_PD,
            &[(16, &999u32.to_le_bytes())],
        );
        assert_ne!(err, 0);
        // A CQ of 64 entries: 1 state page + 1 page of CQEs.
        mem.write(0x10_0000, &0x10_1000u64.to_le_bytes()).unwrap(); // dir -> table
        mem.write(0x10_1000, &0x20_0000u64.to_le_bytes()).unwrap(); // page 0
        mem.write(0x10_1008, &0x20_1000u64.to_le_bytes()).unwrap(); // page 1
        let cq = |d: &mut Device, mem: &mut Mem, cqe: u32, pages: u32, ctx: u32| {
            command(
                d,
                mem,
                code::CREATE_CQ,
                &[
                    (16, &0x10_0000u64.to_le_bytes()),
                    (24, &ctx.to_le_bytes()),
                    (28, &cqe.to_le_bytes()),
                    (32, &pages.to_le_bytes()),
                ],
            )
        };
        let (err, r, _) = cq(&mut d, &mut mem, 64, 2, uc);
        assert_eq!(err, 0);
        assert_eq!(u32_at(&r, 20), 64, "cqe echoed");
        let cqh = u32_at(&r, 16);
        assert_ne!(cq(&mut d, &mut mem, 100, 2, uc).0, 0, "not a power of 2");
        assert_ne!(cq(&mut d, &mut mem, 128, 2, uc).0, 0, "too few pages");
        assert_ne!(cq(&mut d, &mut mem, 64, 2, 12345).0, 0, "no such context");
        // MRs: a user MR of 1 GiB is recorded without touching its pages.
        let gib = 1u64 << 30;
        let (err, r, _) = command(
            &mut d,
            &mut mem,
            code::CREATE_MR,
            &[
                (16, &0x7f00_0000_0000u64.to_le_bytes()),
                (24, &gib.to_le_bytes()),
                (32, &0x30_0000u64.to_le_bytes()),
                (40, &upd.to_le_bytes()),
                (44, &7u32.to_le_bytes()),
                (52, &((gib / PAGE_SIZE) as u32).to_le_bytes()),
            ],
        );
        assert_eq!(err, 0);
        let (mrh, lkey) = (u32_at(&r, 16), u32_at(&r, 20));
        assert_eq!(lkey >> 8, mrh);
        // A page count that does not cover the range is refused.
        let (err, _, _) = command(
            &mut d,
            &mut mem,
            code::CREATE_MR,
            &[
                (24, &gib.to_le_bytes()),
                (40, &upd.to_le_bytes()),
                (52, &5u32.to_le_bytes()),
            ],
        );
        assert_ne!(err, 0);
        // The kernel's DMA MR.
        let (err, _, _) = command(
            &mut d,
            &mut mem,
            code::CREATE_MR,
            &[(40, &kpd.to_le_bytes()), (48, &1u32.to_le_bytes())],
        );
        assert_eq!(err, 0);
        assert_eq!(d.counts(), (1, 2, 1, 2));
        // A PD in use cannot go; destroying the context takes its objects.
        let (err, _, _) = command(
            &mut d,
            &mut mem,
            code::DESTROY_PD,
            &[(16, &upd.to_le_bytes())],
        );
        assert_ne!(err, 0);
        let (err, _, _) = command(
            &mut d,
            &mut mem,
            code::DESTROY_UC,
            &[(16, &uc.to_le_bytes())],
        );
        assert_eq!(err, 0);
        assert_eq!(d.counts(), (0, 1, 0, 1));
        let (err, _, _) = command(
            &mut d,
            &mut mem,
            code::DESTROY_CQ,
            &[(16, &cqh.to_le_bytes())],
        );
        assert_ne!(err, 0, "already gone with its context");
        // RESET forgets everything.
        d.bar1_write(&mut mem, reg::CTL, 2);
        assert!(!d.active());
        assert_eq!(d.counts(), (0, 0, 0, 0));
    }

    #[test]
    fn gid_binds_fill_the_table_within_its_length() {
        let (mut d, mut mem) = probe();
        let mut gid = [0u8; 16];
        gid[10] = 0xff;
        gid[11] = 0xff;
        gid[12..].copy_from_slice(&[10, 77, 0, 1]);
        let bind = |d: &mut Device, mem: &mut Mem, index: u32, t: u8| {
            command(
                d,
                mem,
                code::CREATE_BIND,
                &[(24, &index.to_le_bytes()), (28, &gid), (44, &[t])],
            )
            .0
        };
        assert_eq!(bind(&mut d, &mut mem, 1, 2), 0);
        assert_eq!(d.gids()[1], Some(GidEntry { gid, gid_type: 2 }));
        assert_ne!(bind(&mut d, &mut mem, 16, 2), 0, "past gid_tbl_len");
        assert_ne!(bind(&mut d, &mut mem, 2, 7), 0, "bad type");
        let (err, _, _) = command(
            &mut d,
            &mut mem,
            code::DESTROY_BIND,
            &[(16, &1u32.to_le_bytes())],
        );
        assert_eq!(err, 0);
        assert_eq!(d.gids()[1], None);
    }
}
