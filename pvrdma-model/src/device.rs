//! The device: BAR1 and BAR2 accesses in, guest-memory updates and
//! interrupts out, with the command set executed synchronously inside
//! the REQUEST write as the driver expects, and the guest's rings
//! translated onto the soft RoCE engine.
//!
//! This module owns the device's state machine and object tables:
//! - the DSR handshake (DSRHIGH: read the driver's half, write the caps),
//!   ACTIVATE, UNQUIESCE and RESET;
//! - the command channel: read the request slot, execute, write the
//!   response slot, set ERR, raise vector 0;
//! - the object tables (user contexts, PDs, CQs, MRs, QPs, GIDs), each
//!   handle checked against its table and its owning context, so that a
//!   guest's mistake (or malice) gets a command error, an error CQE or an
//!   async event, and never a panic or an access outside guest memory;
//! - the data path: a QP doorbell reads WQEs from the guest's send or
//!   receive ring and posts them to the engine; [`Device::service`] moves
//!   the engine's completions into the guest's CQ rings, its CQ
//!   notifications into the CQ-notification ring and its async events
//!   into the async ring, with the interrupts the IMR allows.
//!
//! The device owns the [`Engine`], whose memory is the guest's physical
//! memory: MRs are page lists over it (registration reads the page
//! directory only), so payload moves between packets and guest pages with
//! one copy. The I/O loop drives the engine through
//! [`Device::engine_mut`] (packets, timers) and calls
//! [`Device::service`] after.
//!
//! RESIZE_CQ grants sizes within the ring given at creation (the command
//! carries no new pages) and refuses larger ones. Not built: memory
//! windows and masked atomics (their WQEs get an error completion); the
//! stock Linux driver uses neither, nor UC QPs or RESIZE_CQ, which the
//! device does serve.

use thiserror::Error;
use transport::{
    device::{DeviceAttrs, Gid},
    engine::{Engine, PageList, QpInit},
    memory::{Memory, OutOfRange},
    verbs::{
        Access, AhAttr, AsyncEvent, QpAttr as EQpAttr, QpCaps, QpState, QpType, RecvWr, SendOp,
        SendWr, Sge as ESge, UdDest, Wc, WcOpcode, WcStatus,
    },
    wire::Mtu,
};
use zerocopy::{FromBytes, IntoBytes, little_endian::U32};

use crate::{
    abi::{
        CMD_SLOT_LEN, Cqe, Cqne, DEVICE_VERSION, DSR_CAPS_OFFSET, DeviceCaps, Dsr, Eqe,
        GID_TYPE_ROCE_V2, MODE_ROCE, PAGE_SIZE, PortAttr, QpAttr, RESP_SLOT_LEN, RqWqeHdr, Sge,
        SqWqeHdr, event, wc_opcode, wr_opcode,
    },
    cmd::{Command, CreateQp, ModifyQp, Response},
    regs::{Ctl, Doorbell, RegAction, Registers, vector},
    ring::{PageDir, ReadU64, RingError, RingIdx},
};

struct Dma<'a, M: Memory>(&'a M);

impl<M: Memory> ReadU64 for Dma<'_, M> {
    fn read_u64(&self, addr: u64) -> Option<u64> {
        let mut b = [0u8; 8];
        self.0.read(addr, &mut b).ok()?;
        Some(u64::from_le_bytes(b))
    }

    fn read_u64s(&self, addr: u64, out: &mut [u64]) -> Option<()> {
        let mut raw = [0u8; 8 * 512];
        for (chunk, at) in out.chunks_mut(512).zip((0u64..).step_by(8 * 512)) {
            let bytes = &mut raw[..8 * chunk.len()];
            self.0.read(addr.checked_add(at)?, bytes).ok()?;
            for (v, b) in chunk.iter_mut().zip(bytes.chunks_exact(8)) {
                *v = u64::from_le_bytes(b.try_into().ok()?);
            }
        }
        Some(())
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
            max_mr_size: 1 << 40,
        }
    }
}

/// What an access asks the transport (vfio-user server) to do.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Effects {
    /// MSI-X vectors to signal, one bit per vector.
    pub interrupts: u32,
}

impl Effects {
    fn raise(&mut self, regs: &mut Registers, v: u32) {
        if regs.raise(v) {
            self.interrupts |= 1 << v;
        }
    }

    /// Both sets of interrupts.
    pub fn merge(self, other: Effects) -> Effects {
        Effects {
            interrupts: self.interrupts | other.interrupts,
        }
    }
}

/// How many failed work requests [`Device::take_qp_errors`] holds at most.
pub const MAX_NOTICES: usize = 64;

/// A work request that completed with an error (not a flush): what the
/// host logs as a QP error with its reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QpError {
    /// The guest's QP handle (0 if gone).
    pub handle: u32,
    /// The engine's QP number.
    pub qpn: u32,
    /// Why it failed.
    pub status: WcStatus,
    /// What it was.
    pub opcode: WcOpcode,
    /// The guest's work request id.
    pub wr_id: u64,
}

/// Counters of the guest's mistakes the device absorbed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DeviceStats {
    /// Commands that failed.
    pub cmd_errors: u64,
    /// Doorbells naming no object of their context.
    pub bad_doorbells: u64,
    /// WQEs refused (bad SGE count, opcode, unreadable).
    pub bad_wqes: u64,
    /// Rings with invalid indices.
    pub bad_rings: u64,
    /// Completions that waited for room in a full guest CQ.
    pub cq_full: u64,
}

/// Why a command failed (reported to the guest as ERR and `hdr.err`).
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum CmdFailure {
    /// The device is not active.
    #[error("device not active")]
    NotActive,
    /// The slot could not be read or written.
    #[error(transparent)]
    Fault(#[from] OutOfRange),
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
    /// The engine refused.
    #[error("engine: {0}")]
    Engine(String),
    /// Not built yet.
    #[error("command not supported yet")]
    Unsupported,
}

impl CmdFailure {
    /// The errno-like byte in `hdr.err`.
    fn code(&self) -> u8 {
        match self {
            CmdFailure::BadHandle { .. }
            | CmdFailure::Invalid(_)
            | CmdFailure::Ring(_)
            | CmdFailure::Engine(_) => 22,
            CmdFailure::Full(_) => 12,
            CmdFailure::Fault(_) => 14,
            CmdFailure::NotActive => 19,
            CmdFailure::Unknown | CmdFailure::Unsupported => 95,
        }
    }
}

fn engine_err(e: impl std::fmt::Display) -> CmdFailure {
    CmdFailure::Engine(e.to_string())
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

    fn get_mut(&mut self, h: u32) -> Option<&mut T> {
        self.slots.get_mut(h as usize)?.as_mut()
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

    fn handles(&self) -> impl Iterator<Item = u32> + '_ {
        self.slots
            .iter()
            .enumerate()
            .filter(|(_, s)| s.is_some())
            .map(|(i, _)| i as u32)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Pd {
    ctx: u32,
    epd: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Cq {
    ctx: u32,
    ring: RingIdx,
    pdir: PageDir,
    ecq: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Mr {
    pd: u32,
    key: u32,
    fast_reg: bool,
}

#[derive(Debug, Clone, PartialEq)]
struct Qp {
    ctx: u32,
    eqpn: u32,
    qp_type: QpType,
    send_cq: u32,
    recv_cq: u32,
    pdir: PageDir,
    sq: RingIdx,
    sq_stride: u64,
    max_send_sge: u32,
    rq: RingIdx,
    rq_stride: u64,
    rq_base: u64,
    max_recv_sge: u32,
    srq: Option<u32>,
    attrs: QpAttr,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Srq {
    ctx: u32,
    pd: u32,
    esrq: u32,
    pdir: PageDir,
    ring: RingIdx,
    stride: u64,
    max_sge: u32,
    limit: u32,
}

/// A GID table entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GidEntry {
    /// The GID (network order).
    pub gid: [u8; 16],
    /// 1 RoCE v1, 2 RoCE v2.
    pub gid_type: u8,
}

/// A DSR ring the device produces into (async events, CQ notifications).
#[derive(Debug, Clone, Copy)]
struct DsrRing {
    pdir: PageDir,
    ring: RingIdx,
    elem: u64,
}

/// Ring-state offsets in page 0 of a ring object.
const TX_PROD: u64 = 0;
const TX_CONS: u64 = 4;
const RX_PROD: u64 = 8;
const RX_CONS: u64 = 12;

/// The device.
pub struct Device<M: Memory> {
    engine: Engine<M>,
    regs: Registers,
    limits: Limits,
    node_guid: [u8; 8],
    active: bool,
    port_up: bool,
    driver_version: u32,
    cmd_slot: u64,
    resp_slot: u64,
    uar_pfn: u64,
    async_ring: Option<DsrRing>,
    cq_ring: Option<DsrRing>,
    ucs: Table<u32>,
    pds: Table<Pd>,
    cqs: Table<Cq>,
    mrs: Table<Mr>,
    qps: Table<Qp>,
    srqs: Table<Srq>,
    /// Engine QPN → QP handle.
    qp_of: std::collections::HashMap<u32, u32>,
    /// Engine CQ → CQ handle.
    cq_of: std::collections::HashMap<u32, u32>,
    /// Engine SRQ → SRQ handle.
    srq_of: std::collections::HashMap<u32, u32>,
    gids: Vec<Option<GidEntry>>,
    stats: DeviceStats,
    /// Work requests that failed (not flushed), for the host's log.
    notices: std::collections::VecDeque<QpError>,
}

impl<M: Memory> Device<M> {
    /// A device paired with a NIC of `mac`, over guest memory `mem`.
    pub fn new(mac: [u8; 6], limits: Limits, mem: M) -> Device<M> {
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
        let attrs = DeviceAttrs::default();
        Device {
            engine: Engine::new(attrs, mem),
            regs: Registers::new(DEVICE_VERSION, mac),
            ucs: Table::new(limits.max_uar),
            pds: Table::new(limits.max_pd),
            cqs: Table::new(limits.max_cq),
            mrs: Table::new(limits.max_mr),
            qps: Table::new(limits.max_qp.min(0xffff)),
            srqs: Table::new(limits.max_srq),
            qp_of: Default::default(),
            cq_of: Default::default(),
            srq_of: Default::default(),
            gids: vec![None; limits.gid_tbl_len as usize],
            limits,
            node_guid,
            active: false,
            port_up: true,
            driver_version: 0,
            cmd_slot: 0,
            resp_slot: 0,
            uar_pfn: 0,
            async_ring: None,
            cq_ring: None,
            stats: DeviceStats::default(),
            notices: std::collections::VecDeque::with_capacity(MAX_NOTICES),
        }
    }

    // ----- getters -----

    /// The engine (the I/O loop feeds it packets and time).
    pub fn engine(&self) -> &Engine<M> {
        &self.engine
    }

    /// The engine, mutably.
    pub fn engine_mut(&mut self) -> &mut Engine<M> {
        &mut self.engine
    }

    /// Whether ACTIVATE succeeded (and no RESET since).
    pub fn active(&self) -> bool {
        self.active
    }

    /// The GID table.
    pub fn gids(&self) -> &[Option<GidEntry>] {
        &self.gids
    }

    /// Live SRQs.
    pub fn srq_count(&self) -> usize {
        self.srqs.count()
    }

    /// The guest's handle for the engine QP `eqpn`.
    pub fn qp_handle(&self, eqpn: u32) -> Option<u32> {
        self.qp_of.get(&eqpn).copied()
    }

    /// Live objects: (contexts, PDs, CQs, MRs, QPs).
    pub fn counts(&self) -> (usize, usize, usize, usize, usize) {
        (
            self.ucs.count(),
            self.pds.count(),
            self.cqs.count(),
            self.mrs.count(),
            self.qps.count(),
        )
    }

    /// Counters of absorbed guest mistakes.
    pub fn stats(&self) -> DeviceStats {
        self.stats
    }

    /// Sets whether the paired NIC's link is up (QUERY_PORT's state).
    pub fn set_port_up(&mut self, up: bool) {
        self.port_up = up;
    }

    // ----- guest memory -----

    fn read(&self, addr: u64, buf: &mut [u8]) -> Result<(), OutOfRange> {
        self.engine.memory().read(addr, buf)
    }

    fn write(&mut self, addr: u64, data: &[u8]) -> Result<(), OutOfRange> {
        self.engine.memory_mut().write(addr, data)
    }

    /// Reads `buf` from byte `offset` of the object `pdir` describes.
    fn obj_read(&self, pdir: &PageDir, mut offset: u64, buf: &mut [u8]) -> Result<(), RingError> {
        let mut done = 0;
        while done < buf.len() {
            let (addr, room) = pdir.addr(&Dma(self.engine.memory()), offset)?;
            let n = (room as usize).min(buf.len() - done);
            self.read(addr, &mut buf[done..done + n])
                .map_err(|_| RingError::BadDirectory(addr))?;
            done += n;
            offset += n as u64;
        }
        Ok(())
    }

    fn obj_write(&mut self, pdir: &PageDir, mut offset: u64, data: &[u8]) -> Result<(), RingError> {
        let mut done = 0;
        while done < data.len() {
            let (addr, room) = pdir.addr(&Dma(self.engine.memory()), offset)?;
            let n = (room as usize).min(data.len() - done);
            self.write(addr, &data[done..done + n])
                .map_err(|_| RingError::BadDirectory(addr))?;
            done += n;
            offset += n as u64;
        }
        Ok(())
    }

    fn obj_u32(&self, pdir: &PageDir, offset: u64) -> Result<u32, RingError> {
        let mut b = [0u8; 4];
        self.obj_read(pdir, offset, &mut b)?;
        Ok(u32::from_le_bytes(b))
    }

    fn obj_set_u32(&mut self, pdir: &PageDir, offset: u64, v: u32) -> Result<(), RingError> {
        self.obj_write(pdir, offset, &v.to_le_bytes())
    }

    // ----- registers -----

    /// A 32-bit BAR1 read.
    pub fn bar1_read(&mut self, offset: u64) -> u32 {
        self.regs.read(offset)
    }

    /// A 32-bit BAR1 write.
    pub fn bar1_write(&mut self, offset: u64, value: u32) -> Effects {
        let mut fx = Effects::default();
        match self.regs.write(offset, value) {
            RegAction::DsrSet(addr) => {
                let ok = self.dsr_set(addr).is_ok();
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
                let err = match self.request() {
                    Ok(()) => 0,
                    Err(_) => {
                        self.stats.cmd_errors += 1;
                        1
                    }
                };
                self.regs.set_err(err);
                fx.raise(&mut self.regs, vector::COMMAND);
            }
            RegAction::None | RegAction::Mask(_) | RegAction::Ignored { .. } => {}
        }
        fx
    }

    /// A 32-bit BAR2 (doorbell) write.
    pub fn bar2_write(&mut self, offset: u64, value: u32) -> Effects {
        if !self.active {
            return Effects::default();
        }
        match Doorbell::decode(offset, value) {
            Doorbell::Qp {
                uar,
                handle,
                send,
                recv,
            } => match self.qp_in_uar(uar, handle) {
                Some(h) => {
                    if recv {
                        self.drain_rq(h);
                    }
                    if send {
                        self.drain_sq(h);
                    }
                }
                None => self.stats.bad_doorbells += 1,
            },
            Doorbell::Cq {
                uar,
                handle,
                arm,
                arm_solicited,
                poll: _,
            } => match self.cq_in_uar(uar, handle) {
                Some(ecq) => {
                    if arm || arm_solicited {
                        let _ = self.engine.req_notify_cq(ecq, !arm);
                    }
                }
                None => self.stats.bad_doorbells += 1,
            },
            Doorbell::Srq { uar, handle } => {
                let ctx = self.ctx_of_uar(uar);
                if ctx.is_some() && self.srqs.get(handle).map(|s| s.ctx) == ctx {
                    self.drain_srq(handle);
                } else {
                    self.stats.bad_doorbells += 1;
                }
            }
            Doorbell::Unknown(..) => self.stats.bad_doorbells += 1,
        }
        self.service()
    }

    /// The context a UAR page belongs to (0: the kernel's page).
    fn ctx_of_uar(&self, uar: u32) -> Option<u32> {
        if uar == 0 {
            return Some(0);
        }
        self.ucs.handles().find(|h| self.ucs.get(*h) == Some(&uar))
    }

    fn qp_in_uar(&self, uar: u32, handle: u32) -> Option<u32> {
        let ctx = self.ctx_of_uar(uar)?;
        self.qps
            .get(handle)
            .filter(|q| q.ctx == ctx)
            .map(|_| handle)
    }

    fn cq_in_uar(&self, uar: u32, handle: u32) -> Option<u32> {
        let ctx = self.ctx_of_uar(uar)?;
        self.cqs.get(handle).filter(|c| c.ctx == ctx).map(|c| c.ecq)
    }

    fn reset(&mut self) {
        for h in self.qps.handles().collect::<Vec<_>>() {
            if let Some(q) = self.qps.remove(h) {
                let _ = self.engine.destroy_qp(q.eqpn);
            }
        }
        for h in self.srqs.handles().collect::<Vec<_>>() {
            if let Some(q) = self.srqs.remove(h) {
                let _ = self.engine.destroy_srq(q.esrq);
            }
        }
        for h in self.mrs.handles().collect::<Vec<_>>() {
            if let Some(m) = self.mrs.remove(h) {
                let _ = self.engine.dereg_mr(m.key);
            }
        }
        for h in self.cqs.handles().collect::<Vec<_>>() {
            if let Some(c) = self.cqs.remove(h) {
                let _ = self.engine.destroy_cq(c.ecq);
            }
        }
        for h in self.pds.handles().collect::<Vec<_>>() {
            if let Some(p) = self.pds.remove(h) {
                let _ = self.engine.dealloc_pd(p.epd);
            }
        }
        self.qps.clear();
        self.mrs.clear();
        self.cqs.clear();
        self.pds.clear();
        self.ucs.clear();
        self.srqs.clear();
        self.qp_of.clear();
        self.cq_of.clear();
        self.srq_of.clear();
        self.gids.iter_mut().for_each(|g| *g = None);
        for i in 0..self.limits.gid_tbl_len as usize {
            self.engine.gids_mut().set(i, None);
        }
        self.active = false;
        self.cmd_slot = 0;
        self.resp_slot = 0;
        self.async_ring = None;
        self.cq_ring = None;
    }

    /// DSRHIGH: read the driver's half of the DSR and write our caps.
    fn dsr_set(&mut self, addr: u64) -> Result<(), OutOfRange> {
        let mut raw = [0u8; core::mem::size_of::<Dsr>()];
        self.read(addr, &mut raw)?;
        let Ok(dsr) = Dsr::read_from_bytes(&raw) else {
            return Err(OutOfRange {
                addr,
                len: raw.len(),
            });
        };
        self.driver_version = dsr.driver_version.get();
        self.cmd_slot = dsr.cmd_slot_dma.get();
        self.resp_slot = dsr.resp_slot_dma.get();
        self.uar_pfn = dsr.uar_pfn64.get();
        let dsr_ring = |info: &crate::abi::RingPageInfo, elem: u64| {
            let pages = info.num_pages.get();
            let pdir = PageDir::new(info.pdir_dma.get(), pages).ok()?;
            let n = u64::from(pages.checked_sub(1)?) * PAGE_SIZE / elem;
            Some(DsrRing {
                pdir,
                ring: RingIdx::new(n.min(u64::from(u32::MAX)) as u32),
                elem,
            })
        };
        self.async_ring = dsr_ring(&dsr.async_ring_pages, 8);
        self.cq_ring = dsr_ring(&dsr.cq_ring_pages, 4);
        let caps = self.caps();
        self.write(addr + DSR_CAPS_OFFSET, caps.as_bytes())
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
            max_qp: u(l.max_qp.min(0xffff)),
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

    // ----- commands -----

    /// REQUEST: execute the command in the slot and answer it.
    fn request(&mut self) -> Result<(), CmdFailure> {
        if !self.active {
            return Err(CmdFailure::NotActive);
        }
        let mut slot = [0u8; CMD_SLOT_LEN];
        self.read(self.cmd_slot, &mut slot)?;
        let cmd = Command::parse(&slot).map_err(|_| CmdFailure::Unknown)?;
        let hdr = cmd.hdr();
        let result = self.execute(cmd);
        let mut out = [0u8; RESP_SLOT_LEN];
        match &result {
            Ok(resp) => resp.write(&hdr, 0, &mut out),
            Err(e) => Response::Empty.write(&hdr, e.code(), &mut out),
        }
        self.write(self.resp_slot, &out)?;
        result.map(|_| ())
    }

    fn execute(&mut self, cmd: Command) -> Result<Response, CmdFailure> {
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
                let index = c.pfn.get().wrapping_sub(self.uar_pfn);
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
                if h == 0 || self.ucs.get(h).is_none() {
                    return Err(CmdFailure::BadHandle {
                        kind: "context",
                        handle: h,
                    });
                }
                self.destroy_context(h);
                Ok(Response::Empty)
            }
            Command::CreatePd(c) => {
                let ctx = c.handle.get();
                self.check_ctx(ctx)?;
                let epd = self.engine.alloc_pd().map_err(engine_err)?;
                match self.pds.insert(Pd { ctx, epd }) {
                    Some(h) => Ok(Response::Handle(h)),
                    None => {
                        let _ = self.engine.dealloc_pd(epd);
                        Err(CmdFailure::Full("PD"))
                    }
                }
            }
            Command::DestroyPd(c) => {
                let h = c.handle.get();
                let pd = self.pds.get(h).ok_or(CmdFailure::BadHandle {
                    kind: "PD",
                    handle: h,
                })?;
                let busy = self.mrs.slots.iter().flatten().any(|m| m.pd == h)
                    || self.srqs.slots.iter().flatten().any(|s| s.pd == h);
                if busy {
                    return Err(CmdFailure::Invalid("PD still in use"));
                }
                self.engine.dealloc_pd(pd.epd).map_err(engine_err)?;
                self.pds.remove(h);
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
                pdir.page(&Dma(self.engine.memory()), 0)?;
                let ecq = self.engine.create_cq(entries).map_err(engine_err)?;
                let cq = Cq {
                    ctx,
                    ring: RingIdx::new(entries),
                    pdir,
                    ecq,
                };
                match self.cqs.insert(cq) {
                    Some(h) => {
                        self.cq_of.insert(ecq, h);
                        Ok(Response::CreateCq(h, entries))
                    }
                    None => {
                        let _ = self.engine.destroy_cq(ecq);
                        Err(CmdFailure::Full("CQ"))
                    }
                }
            }
            Command::DestroyCq(c) => {
                let h = c.handle.get();
                let cq = self.cqs.get(h).ok_or(CmdFailure::BadHandle {
                    kind: "CQ",
                    handle: h,
                })?;
                let used = self
                    .qps
                    .slots
                    .iter()
                    .flatten()
                    .any(|q| q.send_cq == h || q.recv_cq == h);
                if used {
                    return Err(CmdFailure::Invalid("CQ still in use"));
                }
                let ecq = cq.ecq;
                self.engine.destroy_cq(ecq).map_err(engine_err)?;
                self.cq_of.remove(&ecq);
                self.cqs.remove(h);
                Ok(Response::Empty)
            }
            Command::ResizeCq(c) => {
                // RESIZE_CQ carries no new page directory, so the ring the
                // guest gave at creation is all there is: a size it already
                // holds is granted as the current size (verbs let a
                // resize return more than asked); a larger one is refused.
                let h = c.handle.get();
                let cq = self.cqs.get(h).ok_or(CmdFailure::BadHandle {
                    kind: "CQ",
                    handle: h,
                })?;
                let want = c.extra.get();
                let have = cq.ring.len();
                if want == 0 || want > have {
                    return Err(CmdFailure::Invalid(
                        "CQ size (the ring's pages are fixed at creation)",
                    ));
                }
                Ok(Response::ResizeCq(have))
            }
            Command::CreateMr(c) => self.create_mr(&c),
            Command::DestroyMr(c) => {
                let h = c.handle.get();
                let mr = self.mrs.remove(h).ok_or(CmdFailure::BadHandle {
                    kind: "MR",
                    handle: h,
                })?;
                let _ = self.engine.dereg_mr(mr.key);
                Ok(Response::Empty)
            }
            Command::CreateBind(c) => {
                let i = c.index.get() as usize;
                if i >= self.gids.len() {
                    return Err(CmdFailure::Invalid("GID index"));
                }
                if c.gid_type != 1 && c.gid_type != 2 {
                    return Err(CmdFailure::Invalid("GID type"));
                }
                self.gids[i] = Some(GidEntry {
                    gid: c.new_gid,
                    gid_type: c.gid_type,
                });
                self.engine.gids_mut().set(i, Some(Gid(c.new_gid)));
                Ok(Response::Empty)
            }
            Command::DestroyBind(c) => {
                let i = c.index.get() as usize;
                if i >= self.gids.len() {
                    return Err(CmdFailure::Invalid("GID index"));
                }
                self.gids[i] = None;
                self.engine.gids_mut().set(i, None);
                Ok(Response::Empty)
            }
            Command::CreateQp(c) => self.create_qp(&c),
            Command::ModifyQp(c) => self.modify_qp(&c),
            Command::QueryQp(c) => {
                let h = c.qp_handle.get();
                let qp = self.qps.get(h).ok_or(CmdFailure::BadHandle {
                    kind: "QP",
                    handle: h,
                })?;
                let mut attrs = qp.attrs;
                if let Some(q) = self.engine.qp(qp.eqpn) {
                    attrs.qp_state = U32::new(state_code(q.state()));
                }
                Ok(Response::QueryQp(Box::new(attrs)))
            }
            Command::DestroyQp(c) => {
                let h = c.handle.get();
                let qp = self.qps.remove(h).ok_or(CmdFailure::BadHandle {
                    kind: "QP",
                    handle: h,
                })?;
                let _ = self.engine.destroy_qp(qp.eqpn);
                self.qp_of.remove(&qp.eqpn);
                Ok(Response::DestroyQp(0))
            }
            Command::CreateSrq(c) => self.create_srq(&c),
            Command::ModifySrq(c) => {
                let h = c.srq_handle.get();
                let srq = self.srqs.get(h).ok_or(CmdFailure::BadHandle {
                    kind: "SRQ",
                    handle: h,
                })?;
                // IB_SRQ_LIMIT is the only change the device takes.
                if c.attr_mask.get() & 2 == 0 {
                    return Err(CmdFailure::Invalid("SRQ attribute mask"));
                }
                let limit = c.attrs.srq_limit.get();
                self.engine
                    .modify_srq(srq.esrq, limit)
                    .map_err(engine_err)?;
                if let Some(s) = self.srqs.get_mut(h) {
                    s.limit = limit;
                }
                Ok(Response::Empty)
            }
            Command::QuerySrq(c) => {
                let h = c.handle.get();
                let srq = self.srqs.get(h).ok_or(CmdFailure::BadHandle {
                    kind: "SRQ",
                    handle: h,
                })?;
                Ok(Response::QuerySrq(crate::abi::SrqAttr {
                    max_wr: srq.ring.len().into(),
                    max_sge: srq.max_sge.into(),
                    srq_limit: srq.limit.into(),
                    reserved: 0.into(),
                }))
            }
            Command::DestroySrq(c) => {
                let h = c.handle.get();
                let srq = self.srqs.get(h).ok_or(CmdFailure::BadHandle {
                    kind: "SRQ",
                    handle: h,
                })?;
                let esrq = srq.esrq;
                if self.qps.slots.iter().flatten().any(|q| q.srq == Some(h)) {
                    return Err(CmdFailure::Invalid("SRQ still in use"));
                }
                self.engine.destroy_srq(esrq).map_err(engine_err)?;
                self.srq_of.remove(&esrq);
                self.srqs.remove(h);
                Ok(Response::Empty)
            }
        }
    }

    fn destroy_context(&mut self, ctx: u32) {
        for h in self.qps.handles().collect::<Vec<_>>() {
            if self.qps.get(h).is_some_and(|q| q.ctx == ctx)
                && let Some(q) = self.qps.remove(h)
            {
                let _ = self.engine.destroy_qp(q.eqpn);
                self.qp_of.remove(&q.eqpn);
            }
        }
        for h in self.srqs.handles().collect::<Vec<_>>() {
            if self.srqs.get(h).is_some_and(|s| s.ctx == ctx)
                && let Some(s) = self.srqs.remove(h)
            {
                let _ = self.engine.destroy_srq(s.esrq);
                self.srq_of.remove(&s.esrq);
            }
        }
        let pds: Vec<u32> = self
            .pds
            .handles()
            .filter(|p| self.pds.get(*p).is_some_and(|pd| pd.ctx == ctx))
            .collect();
        for h in self.mrs.handles().collect::<Vec<_>>() {
            if self.mrs.get(h).is_some_and(|m| pds.contains(&m.pd))
                && let Some(m) = self.mrs.remove(h)
            {
                let _ = self.engine.dereg_mr(m.key);
            }
        }
        for h in self.cqs.handles().collect::<Vec<_>>() {
            if self.cqs.get(h).is_some_and(|c| c.ctx == ctx)
                && let Some(c) = self.cqs.remove(h)
            {
                let _ = self.engine.destroy_cq(c.ecq);
                self.cq_of.remove(&c.ecq);
            }
        }
        for p in pds {
            if let Some(pd) = self.pds.remove(p) {
                let _ = self.engine.dealloc_pd(pd.epd);
            }
        }
        self.ucs.remove(ctx);
    }

    fn create_mr(&mut self, c: &crate::cmd::CreateMr) -> Result<Response, CmdFailure> {
        let pdh = c.pd_handle.get();
        let epd = self
            .pds
            .get(pdh)
            .ok_or(CmdFailure::BadHandle {
                kind: "PD",
                handle: pdh,
            })?
            .epd;
        let flags = c.flags.get();
        let access = Access(c.access_flags.get() & 0x1f);
        let (key, fast_reg) = if flags & 1 != 0 {
            // The kernel's DMA MR: guest bus addresses as they are.
            let key = self
                .engine
                .reg_mr(epd, 0, 1 << 48, 0, Access::LOCAL_WRITE)
                .map_err(engine_err)?;
            (key, false)
        } else if flags & 2 != 0 {
            let key = self
                .engine
                .alloc_mr(epd, c.nchunks.get())
                .map_err(engine_err)?;
            (key, true)
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
            // The page list is read from the directory; no page itself
            // is touched.
            let pdir = PageDir::new(c.pdir_dma.get(), pages)?;
            let list = pdir.pages(&Dma(self.engine.memory()))?;
            let key = self
                .engine
                .reg_mr_pages(
                    epd,
                    start,
                    length,
                    PageList {
                        page_shift: 12,
                        first_offset: first,
                        pages: list,
                    },
                    access,
                )
                .map_err(engine_err)?;
            (key, false)
        };
        match self.mrs.insert(Mr {
            pd: pdh,
            key,
            fast_reg,
        }) {
            Some(h) => Ok(Response::CreateMr(h, key, key)),
            None => {
                let _ = self.engine.dereg_mr(key);
                Err(CmdFailure::Full("MR"))
            }
        }
    }

    fn create_srq(&mut self, c: &crate::cmd::CreateSrq) -> Result<Response, CmdFailure> {
        let pdh = c.pd_handle.get();
        let pd = self.pds.get(pdh).ok_or(CmdFailure::BadHandle {
            kind: "PD",
            handle: pdh,
        })?;
        let (ctx, epd) = (pd.ctx, pd.epd);
        let (wr, sge) = (c.attrs.max_wr.get().max(1), c.attrs.max_sge.get().max(1));
        if c.srq_type != 0
            || !wr.is_power_of_two()
            || wr > self.limits.max_qp_wr
            || sge > self.limits.max_sge
        {
            return Err(CmdFailure::Invalid("SRQ capacities"));
        }
        let stride = u64::from(16 + 16 * sge).next_power_of_two();
        let pages = c.nchunks.get();
        if u64::from(pages) < 1 + (u64::from(wr) * stride).div_ceil(PAGE_SIZE) {
            return Err(CmdFailure::Invalid("SRQ ring pages"));
        }
        let pdir = PageDir::new(c.pdir_dma.get(), pages)?;
        pdir.page(&Dma(self.engine.memory()), 0)?;
        let esrq = self.engine.create_srq(epd, wr, sge).map_err(engine_err)?;
        let limit = c.attrs.srq_limit.get();
        if limit > 0 {
            let _ = self.engine.modify_srq(esrq, limit);
        }
        let srq = Srq {
            ctx,
            pd: pdh,
            esrq,
            pdir,
            ring: RingIdx::new(wr),
            stride,
            max_sge: sge,
            limit,
        };
        match self.srqs.insert(srq) {
            Some(h) => {
                self.srq_of.insert(esrq, h);
                Ok(Response::Handle(h))
            }
            None => {
                let _ = self.engine.destroy_srq(esrq);
                Err(CmdFailure::Full("SRQ"))
            }
        }
    }

    fn create_qp(&mut self, c: &CreateQp) -> Result<Response, CmdFailure> {
        let pdh = c.pd_handle.get();
        let pd = self.pds.get(pdh).ok_or(CmdFailure::BadHandle {
            kind: "PD",
            handle: pdh,
        })?;
        let (ctx, epd) = (pd.ctx, pd.epd);
        let cq = |h: u32| {
            self.cqs
                .get(h)
                .filter(|c| c.ctx == ctx)
                .map(|c| c.ecq)
                .ok_or(CmdFailure::BadHandle {
                    kind: "CQ",
                    handle: h,
                })
        };
        let (scq, rcq) = (c.send_cq_handle.get(), c.recv_cq_handle.get());
        let (escq, ercq) = (cq(scq)?, cq(rcq)?);
        let srq = if c.is_srq != 0 {
            let sh = c.srq_handle.get();
            let s = self
                .srqs
                .get(sh)
                .filter(|s| s.ctx == ctx)
                .ok_or(CmdFailure::BadHandle {
                    kind: "SRQ",
                    handle: sh,
                })?;
            Some((sh, s.esrq))
        } else {
            None
        };
        let qp_type = match c.qp_type {
            1 => QpType::Gsi,
            2 => QpType::Rc,
            3 => QpType::Uc,
            4 => QpType::Ud,
            _ => return Err(CmdFailure::Invalid("QP type")),
        };
        let l = &self.limits;
        let (swr, rwr) = (c.max_send_wr.get().max(1), c.max_recv_wr.get().max(1));
        let (ssge, rsge) = (c.max_send_sge.get().max(1), c.max_recv_sge.get().max(1));
        // With an SRQ the QP has no receive ring of its own.
        let (rwr, rsge) = if srq.is_some() { (1, 1) } else { (rwr, rsge) };
        if !swr.is_power_of_two()
            || !rwr.is_power_of_two()
            || swr > l.max_qp_wr
            || rwr > l.max_qp_wr
            || ssge > l.max_sge
            || rsge > l.max_sge
        {
            return Err(CmdFailure::Invalid("QP capacities"));
        }
        let sq_stride = u64::from(80 + 16 * ssge).next_power_of_two();
        let rq_stride = u64::from(16 + 16 * rsge).next_power_of_two();
        let total = u32::from(c.total_chunks.get());
        let send = u32::from(c.send_chunks.get());
        let sq_need = (u64::from(swr) * sq_stride).div_ceil(PAGE_SIZE);
        let rq_need = if srq.is_some() {
            0
        } else {
            (u64::from(rwr) * rq_stride).div_ceil(PAGE_SIZE)
        };
        if u64::from(send) < sq_need || u64::from(total) < 1 + u64::from(send) + rq_need {
            return Err(CmdFailure::Invalid("QP ring pages"));
        }
        let pdir = PageDir::new(c.pdir_dma.get(), total)?;
        pdir.page(&Dma(self.engine.memory()), 0)?;
        let init = QpInit {
            qp_type,
            pd: epd,
            send_cq: escq,
            recv_cq: ercq,
            caps: QpCaps {
                max_send_wr: swr,
                max_recv_wr: rwr,
                max_send_sge: ssge,
                max_recv_sge: rsge,
                max_inline_data: 0,
            },
            sq_sig_all: c.sq_sig_all != 0,
            srq: srq.map(|(_, e)| e),
        };
        let eqpn = self.engine.create_qp(&init).map_err(engine_err)?;
        let qp = Qp {
            ctx,
            eqpn,
            qp_type,
            send_cq: scq,
            recv_cq: rcq,
            pdir,
            sq: RingIdx::new(swr),
            sq_stride,
            max_send_sge: ssge,
            rq: RingIdx::new(rwr),
            rq_stride,
            rq_base: u64::from(send + 1) * PAGE_SIZE,
            max_recv_sge: rsge,
            srq: srq.map(|(h, _)| h),
            attrs: QpAttr::default(),
        };
        let Some(h) = self.qps.insert(qp) else {
            let _ = self.engine.destroy_qp(eqpn);
            return Err(CmdFailure::Full("QP"));
        };
        self.qp_of.insert(eqpn, h);
        Ok(Response::CreateQp {
            qpn: eqpn,
            handle: h,
            caps: [swr, rwr, ssge, rsge, 0],
            v2: self.driver_version >= 20 && DEVICE_VERSION >= 20,
        })
    }

    fn modify_qp(&mut self, c: &ModifyQp) -> Result<Response, CmdFailure> {
        let h = c.qp_handle.get();
        let qp = self.qps.get(h).ok_or(CmdFailure::BadHandle {
            kind: "QP",
            handle: h,
        })?;
        let eqpn = qp.eqpn;
        let mask = c.attr_mask.get();
        let a = &c.attrs;
        let has = |bit: u32| mask & (1 << bit) != 0;
        let mut ea = EQpAttr::default();
        if has(0) {
            ea.state = Some(state_from(a.qp_state.get()).ok_or(CmdFailure::Invalid("QP state"))?);
        }
        if has(3) {
            ea.access = Some(Access(a.qp_access_flags.get() & 0x0f));
        }
        if has(4) {
            ea.pkey_index = Some(a.pkey_index.get());
        }
        if has(6) {
            ea.qkey = Some(a.qkey.get());
        }
        if has(7) {
            let ah = &a.ah_attr;
            ea.ah = Some(AhAttr {
                dgid: Gid(ah.dgid),
                sgid_index: ah.sgid_index,
                hop_limit: ah.hop_limit,
                traffic_class: ah.traffic_class,
                flow_label: ah.flow_label.get() & 0xf_ffff,
            });
        }
        if has(8) {
            ea.path_mtu = Some(mtu_from(a.path_mtu.get()).ok_or(CmdFailure::Invalid("path MTU"))?);
        }
        if has(9) {
            ea.timeout = Some(a.timeout);
        }
        if has(10) {
            ea.retry_cnt = Some(a.retry_cnt);
        }
        if has(11) {
            ea.rnr_retry = Some(a.rnr_retry);
        }
        if has(12) {
            ea.rq_psn = Some(a.rq_psn.get());
        }
        if has(13) {
            ea.max_rd_atomic = Some(a.max_rd_atomic);
        }
        if has(15) {
            ea.min_rnr_timer = Some(a.min_rnr_timer);
        }
        if has(16) {
            ea.sq_psn = Some(a.sq_psn.get());
        }
        if has(17) {
            ea.max_dest_rd_atomic = Some(a.max_dest_rd_atomic);
        }
        if has(20) {
            ea.dest_qp_num = Some(a.dest_qp_num.get());
        }
        self.engine.modify_qp(eqpn, &ea, 0).map_err(engine_err)?;
        if let Some(q) = self.qps.get_mut(h) {
            merge_attrs(&mut q.attrs, a, mask);
        }
        Ok(Response::Empty)
    }

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

    // ----- data path -----

    /// Posts the send WQEs the guest added to QP `h`.
    fn drain_sq(&mut self, h: u32) {
        let Some(qp) = self.qps.get(h).cloned() else {
            return;
        };
        let (Ok(prod), Ok(mut cons)) = (
            self.obj_u32(&qp.pdir, TX_PROD),
            self.obj_u32(&qp.pdir, TX_CONS),
        ) else {
            self.stats.bad_rings += 1;
            return;
        };
        loop {
            let slot = match qp.sq.has_data(prod, cons) {
                Ok(Some(s)) => s,
                Ok(None) => break,
                Err(_) => {
                    self.stats.bad_rings += 1;
                    break;
                }
            };
            let at = PAGE_SIZE + u64::from(slot) * qp.sq_stride;
            if self.post_one_send(&qp, at).is_err() {
                self.stats.bad_wqes += 1;
            }
            cons = qp.sq.next(cons);
            if self.obj_set_u32(&qp.pdir, TX_CONS, cons).is_err() {
                self.stats.bad_rings += 1;
                break;
            }
        }
    }

    /// Reads `out.len()` SGEs from byte `at` of the object `pdir` describes.
    fn read_sges(&self, pdir: &PageDir, at: u64, out: &mut [ESge]) -> Result<(), ()> {
        for (i, s) in out.iter_mut().enumerate() {
            let mut b = [0u8; 16];
            self.obj_read(pdir, at + 16 * i as u64, &mut b)
                .map_err(|_| ())?;
            let g = Sge::read_from_bytes(&b).map_err(|_| ())?;
            *s = ESge {
                addr: g.addr.get(),
                length: g.length.get(),
                lkey: g.lkey.get(),
            };
        }
        Ok(())
    }

    /// Reads one send WQE at byte `at` of the QP and posts it; a WQE the
    /// engine refuses completes with an error.
    fn post_one_send(&mut self, qp: &Qp, at: u64) -> Result<(), ()> {
        let mut raw = [0u8; 80];
        self.obj_read(&qp.pdir, at, &mut raw).map_err(|_| ())?;
        let hdr = SqWqeHdr::read_from_bytes(&raw).map_err(|_| ())?;
        let n = hdr.num_sge.get();
        let wr_id = hdr.wr_id.get();
        let mut sges = [ESge::default(); 32];
        let op = send_op(&hdr, qp.ctx != 0);
        let (Some(op), true) = (op, n <= qp.max_send_sge && n <= 32) else {
            self.error_cqe(qp.send_cq, qp, wr_id, WcStatus::LocQpOpErr, wc_opcode::SEND);
            return Err(());
        };
        self.read_sges(&qp.pdir, at + 80, &mut sges[..n as usize])?;
        if let SendOp::RegMr { key, .. } = op {
            // Stage the page list the WQE's directory names.
            let fr = hdr.fast_reg();
            if self.stage_fast_reg(key, &fr).is_err() {
                self.error_cqe(
                    qp.send_cq,
                    qp,
                    wr_id,
                    WcStatus::LocQpOpErr,
                    wc_opcode::FAST_REG_MR,
                );
                return Err(());
            }
        }
        let flags = hdr.send_flags.get();
        let mut wr = SendWr::new(wr_id, op, &sges[..n as usize]);
        wr.fence = flags & 1 != 0;
        wr.signaled = flags & 2 != 0;
        wr.solicited = flags & 4 != 0;
        match op {
            SendOp::Write | SendOp::WriteWithImm(_) | SendOp::Read => {
                let (addr, rkey) = hdr.rdma();
                wr = wr.remote(addr, rkey);
            }
            SendOp::CmpSwap { .. } | SendOp::FetchAdd { .. } => {
                let (addr, _, _, rkey) = hdr.atomic();
                wr = wr.remote(addr, rkey);
            }
            _ => {}
        }
        if matches!(qp.qp_type, QpType::Ud | QpType::Gsi) {
            let (remote_qpn, remote_qkey, av) = hdr.ud();
            let tcfl = av.sl_tclass_flowlabel.get();
            wr.ud = Some(UdDest {
                ah: AhAttr {
                    dgid: Gid(av.dgid),
                    sgid_index: av.gid_index,
                    hop_limit: av.hop_limit,
                    traffic_class: (tcfl >> 20) as u8,
                    flow_label: tcfl & 0xf_ffff,
                },
                remote_qpn,
                remote_qkey,
            });
        }
        if self.engine.post_send(qp.eqpn, &wr).is_err() {
            self.error_cqe(qp.send_cq, qp, wr_id, WcStatus::LocQpOpErr, wc_opcode::SEND);
            return Err(());
        }
        Ok(())
    }

    /// Reads a fast-registration WQE's page list and stages it on the
    /// MR its key names.
    fn stage_fast_reg(&mut self, key: u32, fr: &crate::abi::FastReg) -> Result<(), ()> {
        if !(12..=30).contains(&fr.page_shift) || fr.page_list_len == 0 || fr.page_list_len > 512 {
            return Err(());
        }
        let pdir = PageDir::new(fr.pl_pdir_dma, fr.page_list_len).map_err(|_| ())?;
        let pages = pdir.pages(&Dma(self.engine.memory())).map_err(|_| ())?;
        let size = 1u64 << fr.page_shift;
        self.engine
            .map_mr_pages(
                key,
                fr.iova_start,
                u64::from(fr.length),
                fr.page_shift as u8,
                fr.iova_start & (size - 1),
                &pages,
            )
            .map_err(|_| ())
    }

    /// Posts the receive WQEs the guest added to SRQ `h`.
    fn drain_srq(&mut self, h: u32) {
        let Some(srq) = self.srqs.get(h).cloned() else {
            return;
        };
        let (Ok(prod), Ok(mut cons)) = (
            self.obj_u32(&srq.pdir, RX_PROD),
            self.obj_u32(&srq.pdir, RX_CONS),
        ) else {
            self.stats.bad_rings += 1;
            return;
        };
        loop {
            let slot = match srq.ring.has_data(prod, cons) {
                Ok(Some(s)) => s,
                Ok(None) => break,
                Err(_) => {
                    self.stats.bad_rings += 1;
                    break;
                }
            };
            let at = PAGE_SIZE + u64::from(slot) * srq.stride;
            if self.post_one_srq(&srq, at).is_err() {
                self.stats.bad_wqes += 1;
            }
            cons = srq.ring.next(cons);
            if self.obj_set_u32(&srq.pdir, RX_CONS, cons).is_err() {
                self.stats.bad_rings += 1;
                break;
            }
        }
    }

    fn post_one_srq(&mut self, srq: &Srq, at: u64) -> Result<(), ()> {
        let mut raw = [0u8; 16];
        self.obj_read(&srq.pdir, at, &mut raw).map_err(|_| ())?;
        let hdr = RqWqeHdr::read_from_bytes(&raw).map_err(|_| ())?;
        let n = hdr.num_sge.get();
        if n > srq.max_sge || n > 32 {
            return Err(());
        }
        let mut sges = [ESge::default(); 32];
        self.read_sges(&srq.pdir, at + 16, &mut sges[..n as usize])?;
        let wr = RecvWr {
            wr_id: hdr.wr_id.get(),
            sges: &sges[..n as usize],
        };
        self.engine.post_srq_recv(srq.esrq, &wr).map_err(|_| ())
    }

    /// Posts the receive WQEs the guest added to QP `h`.
    fn drain_rq(&mut self, h: u32) {
        let Some(qp) = self.qps.get(h).cloned() else {
            return;
        };
        let (Ok(prod), Ok(mut cons)) = (
            self.obj_u32(&qp.pdir, RX_PROD),
            self.obj_u32(&qp.pdir, RX_CONS),
        ) else {
            self.stats.bad_rings += 1;
            return;
        };
        loop {
            let slot = match qp.rq.has_data(prod, cons) {
                Ok(Some(s)) => s,
                Ok(None) => break,
                Err(_) => {
                    self.stats.bad_rings += 1;
                    break;
                }
            };
            let at = qp.rq_base + u64::from(slot) * qp.rq_stride;
            if self.post_one_recv(&qp, at).is_err() {
                self.stats.bad_wqes += 1;
            }
            cons = qp.rq.next(cons);
            if self.obj_set_u32(&qp.pdir, RX_CONS, cons).is_err() {
                self.stats.bad_rings += 1;
                break;
            }
        }
    }

    fn post_one_recv(&mut self, qp: &Qp, at: u64) -> Result<(), ()> {
        let mut raw = [0u8; 16];
        self.obj_read(&qp.pdir, at, &mut raw).map_err(|_| ())?;
        let hdr = RqWqeHdr::read_from_bytes(&raw).map_err(|_| ())?;
        let n = hdr.num_sge.get();
        let wr_id = hdr.wr_id.get();
        if n > qp.max_recv_sge || n > 32 {
            self.error_cqe(qp.recv_cq, qp, wr_id, WcStatus::LocQpOpErr, wc_opcode::RECV);
            return Err(());
        }
        let mut sges = [ESge::default(); 32];
        self.read_sges(&qp.pdir, at + 16, &mut sges[..n as usize])?;
        let wr = RecvWr {
            wr_id,
            sges: &sges[..n as usize],
        };
        if self.engine.post_recv(qp.eqpn, &wr).is_err() {
            self.error_cqe(qp.recv_cq, qp, wr_id, WcStatus::LocQpOpErr, wc_opcode::RECV);
            return Err(());
        }
        Ok(())
    }

    /// Writes an error completion for a WQE the engine never saw.
    fn error_cqe(&mut self, cq: u32, qp: &Qp, wr_id: u64, status: WcStatus, opcode: u32) {
        let h = self.qp_of.get(&qp.eqpn).copied().unwrap_or(0);
        let cqe = Cqe {
            wr_id: wr_id.into(),
            qp: u64::from(h).into(),
            opcode: opcode.into(),
            status: U32::new(status_code(status)),
            ..Cqe::default()
        };
        if !self.push_cqe(cq, &cqe) {
            self.stats.cq_full += 1;
        }
    }

    /// Appends `cqe` to guest CQ `h`; false if the ring is full or bad.
    fn push_cqe(&mut self, h: u32, cqe: &Cqe) -> bool {
        let Some(cq) = self.cqs.get(h).cloned() else {
            return false;
        };
        let (Ok(prod), Ok(cons)) = (
            self.obj_u32(&cq.pdir, RX_PROD),
            self.obj_u32(&cq.pdir, RX_CONS),
        ) else {
            return false;
        };
        let Ok(Some(slot)) = cq.ring.has_space(prod, cons) else {
            return false;
        };
        let at = PAGE_SIZE + 64 * u64::from(slot);
        if self.obj_write(&cq.pdir, at, cqe.as_bytes()).is_err() {
            return false;
        }
        self.obj_set_u32(&cq.pdir, RX_PROD, cq.ring.next(prod))
            .is_ok()
    }

    /// The failed work requests noticed since the last call (at most
    /// [`MAX_NOTICES`]; older ones beyond that are dropped), oldest first.
    pub fn take_qp_errors(&mut self) -> impl Iterator<Item = QpError> + '_ {
        self.notices.drain(..)
    }

    /// Moves the engine's completions, CQ notifications and async events
    /// into the guest's rings; returns the interrupts to raise. Call after
    /// feeding the engine packets or time.
    pub fn service(&mut self) -> Effects {
        let mut fx = Effects::default();
        if !self.active {
            return fx;
        }
        for h in self.cqs.handles().collect::<Vec<_>>() {
            let Some(ecq) = self.cqs.get(h).map(|c| c.ecq) else {
                continue;
            };
            loop {
                // Only take a completion the guest ring has room for.
                if !self.cq_has_room(h) {
                    break;
                }
                let mut wc = [blank_wc()];
                match self.engine.poll_cq(ecq, &mut wc) {
                    Ok(1) => {
                        let w = &wc[0];
                        if !matches!(w.status, WcStatus::Success | WcStatus::WrFlushErr) {
                            if self.notices.len() == MAX_NOTICES {
                                self.notices.pop_front();
                            }
                            self.notices.push_back(QpError {
                                handle: self.qp_of.get(&w.qp_num).copied().unwrap_or(0),
                                qpn: w.qp_num,
                                status: w.status,
                                opcode: w.opcode,
                                wr_id: w.wr_id,
                            });
                        }
                        let cqe = self.cqe_of(&wc[0]);
                        if !self.push_cqe(h, &cqe) {
                            self.stats.cq_full += 1;
                        }
                    }
                    _ => break,
                }
            }
        }
        while let Some(n) = self.engine.poll_notification() {
            if let Some(&h) = self.cq_of.get(&n.0)
                && self.push_dsr(false, Cqne { info: h.into() }.as_bytes())
            {
                fx.raise(&mut self.regs, vector::CQ);
            }
        }
        while let Some(ev) = self.engine.poll_event() {
            if let Some(eqe) = self.eqe_of(ev)
                && self.push_dsr(true, eqe.as_bytes())
            {
                fx.raise(&mut self.regs, vector::ASYNC);
            }
        }
        fx
    }

    fn cq_has_room(&self, h: u32) -> bool {
        let Some(cq) = self.cqs.get(h) else {
            return false;
        };
        match (
            self.obj_u32(&cq.pdir, RX_PROD),
            self.obj_u32(&cq.pdir, RX_CONS),
        ) {
            (Ok(p), Ok(c)) => matches!(cq.ring.has_space(p, c), Ok(Some(_))),
            _ => false,
        }
    }

    /// Appends an element to the async ring (`true`) or the
    /// CQ-notification ring.
    fn push_dsr(&mut self, async_ring: bool, elem: &[u8]) -> bool {
        let Some(r) = (if async_ring {
            self.async_ring
        } else {
            self.cq_ring
        }) else {
            return false;
        };
        let (Ok(prod), Ok(cons)) = (
            self.obj_u32(&r.pdir, RX_PROD),
            self.obj_u32(&r.pdir, RX_CONS),
        ) else {
            return false;
        };
        let Ok(Some(slot)) = r.ring.has_space(prod, cons) else {
            return false;
        };
        let at = PAGE_SIZE + r.elem * u64::from(slot);
        self.obj_write(&r.pdir, at, elem).is_ok()
            && self
                .obj_set_u32(&r.pdir, RX_PROD, r.ring.next(prod))
                .is_ok()
    }

    fn cqe_of(&self, wc: &Wc) -> Cqe {
        let h = self.qp_of.get(&wc.qp_num).copied().unwrap_or(0);
        let user = self.qps.get(h).is_some_and(|q| q.ctx != 0);
        let ud = self
            .qps
            .get(h)
            .is_some_and(|q| matches!(q.qp_type, QpType::Ud | QpType::Gsi));
        let mut flags = 0u32;
        if wc.imm_data.is_some() {
            flags |= 2;
        }
        if wc.invalidated_rkey.is_some() {
            flags |= 4;
        }
        let recv = matches!(wc.opcode, WcOpcode::Recv | WcOpcode::RecvRdmaWithImm);
        // The header type of a UD/GSI receive (PVRDMA numbering: 1 IPv4,
        // 2 IPv6), which the guest needs to read the GRH area (rdma_cm).
        let mut network_hdr_type = 0;
        if ud && recv {
            flags |= 1; // GRH
            if let Some(v) = wc.ip_version {
                flags |= 64; // WITH_NETWORK_HDR_TYPE
                network_hdr_type = if v == 4 { 1 } else { 2 };
            }
        }
        Cqe {
            wr_id: wc.wr_id.into(),
            qp: u64::from(h).into(),
            opcode: U32::new(wc_code(wc.opcode, user)),
            status: U32::new(status_code(wc.status)),
            byte_len: wc.byte_len.into(),
            imm_data: wc
                .imm_data
                .or(wc.invalidated_rkey)
                .unwrap_or(0)
                .to_be_bytes(),
            src_qp: wc.src_qp.into(),
            wc_flags: flags.into(),
            port_num: 1,
            network_hdr_type,
            ..Cqe::default()
        }
    }

    fn eqe_of(&self, ev: AsyncEvent) -> Option<Eqe> {
        let qp = |q: u32| self.qp_of.get(&q).copied();
        let (t, info) = match ev {
            AsyncEvent::QpFatal(q) => (event::QP_FATAL, qp(q)?),
            AsyncEvent::QpReqErr(q) => (event::QP_REQ_ERR, qp(q)?),
            AsyncEvent::QpAccessErr(q) => (event::QP_ACCESS_ERR, qp(q)?),
            AsyncEvent::QpLastWqeReached(q) => (event::QP_LAST_WQE_REACHED, qp(q)?),
            AsyncEvent::CqErr(c) => (event::CQ_ERR, self.cq_of.get(&c).copied()?),
            AsyncEvent::SrqLimitReached(s) => {
                (event::SRQ_LIMIT_REACHED, self.srq_of.get(&s).copied()?)
            }
            AsyncEvent::PortError => (event::PORT_ERR, 1),
            _ => return None,
        };
        Some(Eqe {
            event_type: t.into(),
            info: info.into(),
        })
    }
}

fn blank_wc() -> Wc {
    Wc {
        wr_id: 0,
        status: WcStatus::Success,
        opcode: WcOpcode::Send,
        byte_len: 0,
        qp_num: 0,
        src_qp: 0,
        imm_data: None,
        invalidated_rkey: None,
        ip_version: None,
    }
}

/// The engine op of a send WQE; kernel QPs use PVRDMA numbering, user QPs
/// libibverbs numbering (equal for 0 to 6).
fn send_op(h: &SqWqeHdr, user: bool) -> Option<SendOp> {
    let imm = u32::from_be_bytes(h.ex);
    let inv = u32::from_le_bytes(h.ex);
    let (_, cmp, swap, _) = h.atomic();
    Some(match (h.opcode.get(), user) {
        (wr_opcode::RDMA_WRITE, _) => SendOp::Write,
        (wr_opcode::RDMA_WRITE_WITH_IMM, _) => SendOp::WriteWithImm(imm),
        (wr_opcode::SEND, _) => SendOp::Send,
        (wr_opcode::SEND_WITH_IMM, _) => SendOp::SendWithImm(imm),
        (wr_opcode::RDMA_READ, _) => SendOp::Read,
        (wr_opcode::ATOMIC_CMP_AND_SWP, _) => SendOp::CmpSwap { compare: cmp, swap },
        (wr_opcode::ATOMIC_FETCH_AND_ADD, _) => SendOp::FetchAdd { add: cmp },
        (wr_opcode::SEND_WITH_INV, false) | (9, true) => SendOp::SendWithInv(inv),
        (wr_opcode::LOCAL_INV, false) | (7, true) => SendOp::LocalInv { key: inv },
        (wr_opcode::FAST_REG_MR, false) => {
            let fr = h.fast_reg();
            SendOp::RegMr {
                key: fr.rkey,
                access: Access(fr.access_flags & 0x1f),
            }
        }
        _ => return None,
    })
}

fn wc_code(op: WcOpcode, user: bool) -> u32 {
    match op {
        WcOpcode::Send => wc_opcode::SEND,
        WcOpcode::RdmaWrite => wc_opcode::RDMA_WRITE,
        WcOpcode::RdmaRead => wc_opcode::RDMA_READ,
        WcOpcode::CompSwap => wc_opcode::COMP_SWAP,
        WcOpcode::FetchAdd => wc_opcode::FETCH_ADD,
        WcOpcode::BindMw => 5,
        WcOpcode::LocalInv if user => 6,
        WcOpcode::LocalInv => wc_opcode::LOCAL_INV,
        WcOpcode::RegMr => wc_opcode::FAST_REG_MR,
        WcOpcode::Recv => wc_opcode::RECV,
        WcOpcode::RecvRdmaWithImm => wc_opcode::RECV_RDMA_WITH_IMM,
        WcOpcode::AtomicWrite | WcOpcode::Flush => wc_opcode::RDMA_WRITE,
    }
}

fn status_code(s: WcStatus) -> u32 {
    match s {
        WcStatus::Success => 0,
        WcStatus::LocLenErr => 1,
        WcStatus::LocQpOpErr => 2,
        WcStatus::LocProtErr => 4,
        WcStatus::WrFlushErr => 5,
        WcStatus::MwBindErr => 6,
        WcStatus::BadRespErr => 7,
        WcStatus::LocAccessErr => 8,
        WcStatus::RemInvReqErr => 9,
        WcStatus::RemAccessErr => 10,
        WcStatus::RemOpErr => 11,
        WcStatus::RetryExcErr => 12,
        WcStatus::RnrRetryExcErr => 13,
        WcStatus::MwMgmtErr | WcStatus::GeneralErr => 21,
    }
}

fn state_from(v: u32) -> Option<QpState> {
    Some(match v {
        0 => QpState::Reset,
        1 => QpState::Init,
        2 => QpState::Rtr,
        3 => QpState::Rts,
        4 => QpState::Sqd,
        5 => QpState::Sqe,
        6 => QpState::Err,
        _ => return None,
    })
}

fn state_code(s: QpState) -> u32 {
    match s {
        QpState::Reset => 0,
        QpState::Init => 1,
        QpState::Rtr => 2,
        QpState::Rts => 3,
        QpState::Sqd => 4,
        QpState::Sqe => 5,
        QpState::Err => 6,
    }
}

fn mtu_from(v: u32) -> Option<Mtu> {
    Some(match v {
        1 => Mtu::Mtu256,
        2 => Mtu::Mtu512,
        3 => Mtu::Mtu1024,
        4 => Mtu::Mtu2048,
        5 => Mtu::Mtu4096,
        _ => return None,
    })
}

/// Keeps the attributes a MODIFY_QP set, for QUERY_QP.
fn merge_attrs(into: &mut QpAttr, a: &QpAttr, mask: u32) {
    let has = |bit: u32| mask & (1 << bit) != 0;
    if has(0) {
        into.qp_state = a.qp_state;
    }
    if has(3) {
        into.qp_access_flags = a.qp_access_flags;
    }
    if has(4) {
        into.pkey_index = a.pkey_index;
    }
    if has(5) {
        into.port_num = a.port_num;
    }
    if has(6) {
        into.qkey = a.qkey;
    }
    if has(7) {
        into.ah_attr = a.ah_attr;
    }
    if has(8) {
        into.path_mtu = a.path_mtu;
    }
    if has(9) {
        into.timeout = a.timeout;
    }
    if has(10) {
        into.retry_cnt = a.retry_cnt;
    }
    if has(11) {
        into.rnr_retry = a.rnr_retry;
    }
    if has(12) {
        into.rq_psn = a.rq_psn;
    }
    if has(13) {
        into.max_rd_atomic = a.max_rd_atomic;
    }
    if has(15) {
        into.min_rnr_timer = a.min_rnr_timer;
    }
    if has(16) {
        into.sq_psn = a.sq_psn;
    }
    if has(17) {
        into.max_dest_rd_atomic = a.max_dest_rd_atomic;
    }
    if has(19) {
        into.cap = a.cap;
    }
    if has(20) {
        into.dest_qp_num = a.dest_qp_num;
    }
}

#[cfg(test)]
mod tests {
    use transport::{engine::RxMeta, memory::VecMemory};

    use super::*;
    use crate::{
        cmd::code,
        driver::{Bus, Driver, Qp, QpSpec, gid_v4},
        regs::reg,
    };

    const MEM: usize = 16 << 20;
    const DSR: u64 = 0x1000;
    const CMD: u64 = 0x2000;
    const RESP: u64 = 0x3000;
    const UAR_PFN: u64 = 0xfe000;

    /// The device as the driver model's bus: register and doorbell writes
    /// go straight to it, and their effects are kept for the test.
    struct DeviceBus {
        d: Device<VecMemory>,
        fx: Effects,
    }

    impl crate::driver::Bus for DeviceBus {
        fn reg_read(&mut self, offset: u64) -> u32 {
            self.d.bar1_read(offset)
        }

        fn reg_write(&mut self, offset: u64, value: u32) {
            let fx = self.d.bar1_write(offset, value);
            self.fx = std::mem::take(&mut self.fx).merge(fx);
        }

        fn uar_write(&mut self, offset: u64, value: u32) {
            let fx = self.d.bar2_write(offset, value);
            self.fx = std::mem::take(&mut self.fx).merge(fx);
        }

        fn mem_read(&mut self, gpa: u64, buf: &mut [u8]) {
            self.d.engine().memory().read(gpa, buf).unwrap();
        }

        fn mem_write(&mut self, gpa: u64, data: &[u8]) {
            self.d.engine_mut().memory_mut().write(gpa, data).unwrap();
        }
    }

    /// A guest: the driver model on the device, with the shorthands these
    /// tests use (one SGE per WQE, 16-WR queues, IPv4 GIDs).
    struct Guest {
        drv: Driver<DeviceBus>,
    }

    fn u32_at(b: &[u8], at: usize) -> u32 {
        u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
    }

    impl Guest {
        fn d(&mut self) -> &mut Device<VecMemory> {
            &mut self.drv.bus.d
        }

        fn take_fx(&mut self) -> Effects {
            std::mem::take(&mut self.drv.bus.fx)
        }

        fn wr(&mut self, addr: u64, data: &[u8]) {
            self.drv.bus.mem_write(addr, data);
        }

        fn rd(&mut self, addr: u64, len: usize) -> Vec<u8> {
            self.drv.read(addr, len)
        }

        fn page(&mut self) -> u64 {
            self.drv.alloc(1)
        }

        /// `n` scattered pages and a directory over them.
        fn pdir(&mut self, n: u32) -> (u64, Vec<u64>) {
            let pages = self.drv.scattered(n);
            (self.drv.page_dir(&pages), pages)
        }

        /// The driver's probe (4-page async and CQ-notification rings).
        fn probe(mac: [u8; 6]) -> Guest {
            let bus = DeviceBus {
                d: Device::new(mac, Limits::default(), VecMemory::new(MEM)),
                fx: Effects::default(),
            };
            let mut g = Guest {
                drv: Driver::new(bus, DSR, MEM as u64 - DSR),
            };
            let (version, caps) = g.drv.probe(UAR_PFN).expect("ACTIVATE");
            assert_eq!(version, 20);
            assert_eq!(caps.mode, MODE_ROCE);
            assert_eq!(caps.gid_types, GID_TYPE_ROCE_V2);
            assert!(caps.max_uar.get().is_power_of_two());
            let back = Dsr::read_from_bytes(&g.rd(DSR, 280)).unwrap();
            assert_eq!(
                back.driver_version.get(),
                20,
                "the driver's half is untouched"
            );
            assert!(g.d().active());
            g.take_fx();
            g
        }

        /// Posts a command; returns (ERR, response, interrupts).
        fn cmd(&mut self, cmd: u32, body: &[(usize, &[u8])]) -> (u32, Vec<u8>, u32) {
            self.take_fx();
            let err = match self.drv.command_at(cmd, body) {
                Ok(_) => 0,
                Err(e) => e.err_reg,
            };
            let r = self.rd(RESP, RESP_SLOT_LEN);
            (err, r, self.take_fx().interrupts)
        }

        fn ok(&mut self, cmd: u32, body: &[(usize, &[u8])]) -> Vec<u8> {
            let (err, r, _) = self.cmd(cmd, body);
            assert_eq!(err, 0, "command {cmd} failed: hdr.err {}", r[12]);
            r
        }

        fn bind_gid(&mut self, ip: [u8; 4]) {
            self.drv.bind_gid(0, gid_v4(ip)).unwrap();
        }

        fn create_pd(&mut self) -> u32 {
            self.drv.create_pd(0).unwrap()
        }

        /// A CQ of `n` entries; (handle, ring pages).
        fn create_cq(&mut self, n: u32) -> (u32, Vec<u64>) {
            let cq = self.drv.create_cq(n).unwrap();
            assert_eq!(cq.entries, n);
            (cq.handle, cq.pages)
        }

        /// A user-style MR of `pages` pages at virtual address `va`;
        /// (key, pages).
        fn create_mr(&mut self, pd: u32, va: u64, pages: u32, access: u32) -> (u32, Vec<u64>) {
            let mr = self.drv.create_mr(pd, va, pages, access).unwrap();
            assert_eq!(mr.lkey, mr.rkey, "lkey = rkey");
            (mr.lkey, mr.pages)
        }

        /// An RC (2), UC (3) or UD (4) QP with 16 WRs and 1 SGE each way.
        fn create_qp(&mut self, pd: u32, cq: u32, qp_type: u8) -> Qp {
            self.create_qp_on(pd, cq, qp_type, None)
        }

        fn create_qp_on(&mut self, pd: u32, cq: u32, qp_type: u8, srq: Option<u32>) -> Qp {
            self.drv
                .create_qp(&QpSpec {
                    qp_type,
                    pd,
                    send_cq: cq,
                    recv_cq: cq,
                    max_send_wr: 16,
                    max_recv_wr: 16,
                    max_send_sge: 1,
                    max_recv_sge: 1,
                    sq_sig_all: false,
                    srq,
                })
                .unwrap()
        }

        fn modify(&mut self, qp: u32, mask: u32, attrs: &QpAttr) {
            self.drv.modify_qp(qp, mask, attrs).unwrap();
        }

        /// RESET → INIT → RTR → RTS towards `peer` (QPN, IPv4), PSNs 100.
        fn connect_rc(&mut self, qp: u32, dest_qpn: u32, peer_ip: [u8; 4]) {
            self.drv
                .connect(qp, true, dest_qpn, gid_v4(peer_ip), 3, 100, 100)
                .unwrap();
        }

        /// The same for a UC QP, with only the attributes the IBTA allows
        /// UC in each transition.
        fn connect_uc(&mut self, qp: u32, dest_qpn: u32, peer_ip: [u8; 4]) {
            self.drv
                .connect(qp, false, dest_qpn, gid_v4(peer_ip), 3, 100, 100)
                .unwrap();
        }

        /// Writes a send WQE (its header as given) with one SGE and rings
        /// the bell.
        fn post_send(&mut self, q: &mut Qp, hdr: SqWqeHdr, sge: Sge) -> Effects {
            self.take_fx();
            self.drv.post_send_verbatim(q, &hdr, &[sge]);
            self.drv.ring_sq(q);
            self.take_fx()
        }

        fn post_recv(&mut self, q: &mut Qp, wr_id: u64, sge: Sge) -> Effects {
            self.take_fx();
            self.drv.post_recv(q, wr_id, &[sge]);
            self.drv.ring_rq(q);
            self.take_fx()
        }

        /// Takes the CQEs waiting in CQ `pages` (of `n` entries).
        fn poll(&mut self, pages: &[u64], n: u32) -> Vec<Cqe> {
            let cq = crate::driver::Cq {
                handle: 0,
                entries: n,
                pages: pages.to_vec(),
            };
            let mut out = Vec::new();
            self.drv.poll_cq(&cq, usize::MAX, &mut out);
            out
        }
    }

    /// Moves packets between the two engines until both are quiet, with
    /// IPv4 headers built from each packet's GIDs.
    fn shuttle(a: &mut Guest, b: &mut Guest) -> (Effects, Effects) {
        let mut buf = vec![0u8; 8192];
        let (mut fa, mut fb) = (Effects::default(), Effects::default());
        for _ in 0..1000 {
            let mut moved = false;
            for dir in 0..2 {
                let (src, dst) = if dir == 0 {
                    (&mut *a, &mut *b)
                } else {
                    (&mut *b, &mut *a)
                };
                while let Some(t) = src.d().engine_mut().poll_transmit(0, &mut buf) {
                    moved = true;
                    let mut ip = [0u8; 20];
                    ip[0] = 0x45;
                    ip[9] = 17;
                    ip[12..16].copy_from_slice(&t.sgid.0[12..]);
                    ip[16..20].copy_from_slice(&t.dgid.0[12..]);
                    let meta = RxMeta {
                        ip_header: &ip,
                        ecn: 0,
                    };
                    let _ = dst.d().engine_mut().handle_packet(0, &meta, &buf[..t.len]);
                }
            }
            fa = fa.merge(a.d().service());
            fb = fb.merge(b.d().service());
            if !moved {
                break;
            }
        }
        (fa, fb)
    }

    fn send_wqe(wr_id: u64, opcode: u32, signaled: bool) -> SqWqeHdr {
        SqWqeHdr {
            wr_id: wr_id.into(),
            num_sge: 1.into(),
            opcode: opcode.into(),
            send_flags: (if signaled { 2u32 } else { 0 }).into(),
            ..SqWqeHdr::default()
        }
    }

    #[test]
    fn two_guests_send_and_write_over_rc_through_their_rings() {
        let mut a = Guest::probe([2, 0, 0, 0, 0, 1]);
        let mut b = Guest::probe([2, 0, 0, 0, 0, 2]);
        a.bind_gid([10, 0, 0, 1]);
        b.bind_gid([10, 0, 0, 2]);
        let (pa, pb) = (a.create_pd(), b.create_pd());
        let (cqa, cqa_pages) = a.create_cq(64);
        let (cqb, cqb_pages) = b.create_cq(64);
        let (ka, pages_a) = a.create_mr(pa, 0x7f00_0000_0000, 4, 1);
        let (kb, pages_b) = b.create_mr(pb, 0x7e00_0000_0000, 4, 0xf);
        let mut qa = a.create_qp(pa, cqa, 2);
        let mut qb = b.create_qp(pb, cqb, 2);
        assert_ne!(qa.handle, 0);
        a.connect_rc(qa.handle, qb.qpn, [10, 0, 0, 2]);
        b.connect_rc(qb.handle, qa.qpn, [10, 0, 0, 1]);

        // SEND 6000 bytes from A's MR (spanning its first two pages) into
        // a receive on B.
        let data: Vec<u8> = (0..6000u32).map(|i| (i * 11 + 3) as u8).collect();
        a.wr(pages_a[0], &data[..4096]);
        a.wr(pages_a[1], &data[4096..]);
        b.post_recv(
            &mut qb,
            55,
            Sge {
                addr: 0x7e00_0000_0000.into(),
                length: 16384.into(),
                lkey: kb.into(),
            },
        );
        a.post_send(
            &mut qa,
            send_wqe(7, wr_opcode::SEND, true),
            Sge {
                addr: 0x7f00_0000_0000.into(),
                length: 6000.into(),
                lkey: ka.into(),
            },
        );
        shuttle(&mut a, &mut b);
        let ca = a.poll(&cqa_pages, 64);
        assert_eq!(ca.len(), 1);
        assert_eq!((ca[0].wr_id.get(), ca[0].status.get()), (7, 0));
        assert_eq!(ca[0].opcode.get(), wc_opcode::SEND);
        assert_eq!(ca[0].qp.get(), u64::from(qa.handle));
        let cb = b.poll(&cqb_pages, 64);
        assert_eq!(cb.len(), 1);
        assert_eq!((cb[0].wr_id.get(), cb[0].status.get()), (55, 0));
        assert_eq!(cb[0].opcode.get(), wc_opcode::RECV);
        assert_eq!(cb[0].byte_len.get(), 6000);
        assert_eq!(cb[0].qp.get(), u64::from(qb.handle));
        let mut got = b.rd(pages_b[0], 4096);
        got.extend(b.rd(pages_b[1], 1904));
        assert_eq!(got, data);

        // RDMA WRITE 3000 bytes into B's MR at offset 8192 + 100 (third
        // page), by its rkey; B sees nothing, A gets the completion.
        let mut w = send_wqe(8, wr_opcode::RDMA_WRITE, true);
        w.wr[..8].copy_from_slice(&(0x7e00_0000_0000u64 + 8292).to_le_bytes());
        w.wr[8..12].copy_from_slice(&kb.to_le_bytes());
        a.post_send(
            &mut qa,
            w,
            Sge {
                addr: 0x7f00_0000_0000.into(),
                length: 3000.into(),
                lkey: ka.into(),
            },
        );
        shuttle(&mut a, &mut b);
        let ca = a.poll(&cqa_pages, 64);
        assert_eq!(
            (ca.len(), ca[0].status.get(), ca[0].opcode.get()),
            (1, 0, wc_opcode::RDMA_WRITE)
        );
        assert_eq!(b.rd(pages_b[2] + 100, 3000), data[..3000].to_vec());
        assert!(b.poll(&cqb_pages, 64).is_empty());

        // A WRITE with a wrong rkey completes with a remote access error,
        // and QUERY_QP then reports the error state.
        let mut w = send_wqe(9, wr_opcode::RDMA_WRITE, true);
        w.wr[..8].copy_from_slice(&0x7e00_0000_0000u64.to_le_bytes());
        w.wr[8..12].copy_from_slice(&(kb ^ 0x100).to_le_bytes());
        a.post_send(
            &mut qa,
            w,
            Sge {
                addr: 0x7f00_0000_0000.into(),
                length: 100.into(),
                lkey: ka.into(),
            },
        );
        shuttle(&mut a, &mut b);
        let ca = a.poll(&cqa_pages, 64);
        assert_eq!(ca[0].status.get(), status_code(WcStatus::RemAccessErr));
        let r = a.ok(code::QUERY_QP, &[(16, &qa.handle.to_le_bytes())]);
        assert_eq!(u32_at(&r, 16), 6, "QP in ERR");
        // The host hears of it once, with the reason (for its log).
        let errs: Vec<QpError> = a.d().take_qp_errors().collect();
        assert_eq!(errs.len(), 1, "{errs:?}");
        assert_eq!(
            (errs[0].handle, errs[0].status, errs[0].wr_id),
            (qa.handle, WcStatus::RemAccessErr, 9)
        );
        assert_eq!(a.d().take_qp_errors().count(), 0);
    }

    #[test]
    fn two_guests_send_and_write_over_uc_and_uc_refuses_read() {
        let mut a = Guest::probe([2, 0, 0, 0, 0, 1]);
        let mut b = Guest::probe([2, 0, 0, 0, 0, 2]);
        a.bind_gid([10, 0, 0, 1]);
        b.bind_gid([10, 0, 0, 2]);
        let (pa, pb) = (a.create_pd(), b.create_pd());
        let (cqa, cqa_pages) = a.create_cq(64);
        let (cqb, cqb_pages) = b.create_cq(64);
        let (ka, pages_a) = a.create_mr(pa, 0x7f00_0000_0000, 4, 1);
        let (kb, pages_b) = b.create_mr(pb, 0x7e00_0000_0000, 4, 0xf);
        let mut qa = a.create_qp(pa, cqa, 3);
        let mut qb = b.create_qp(pb, cqb, 3);
        assert_ne!(qa.handle, 0);
        a.connect_uc(qa.handle, qb.qpn, [10, 0, 0, 2]);
        b.connect_uc(qb.handle, qa.qpn, [10, 0, 0, 1]);
        let r = a.ok(code::QUERY_QP, &[(16, &qa.handle.to_le_bytes())]);
        assert_eq!(u32_at(&r, 16), 3, "UC QP in RTS");

        // SEND 5000 bytes (five packets at MTU 1024) into a receive on B.
        let data: Vec<u8> = (0..5000u32).map(|i| (i * 7 + 1) as u8).collect();
        a.wr(pages_a[0], &data[..4096]);
        a.wr(pages_a[1], &data[4096..]);
        b.post_recv(
            &mut qb,
            71,
            Sge {
                addr: 0x7e00_0000_0000.into(),
                length: 8192.into(),
                lkey: kb.into(),
            },
        );
        a.post_send(
            &mut qa,
            send_wqe(70, wr_opcode::SEND, true),
            Sge {
                addr: 0x7f00_0000_0000.into(),
                length: 5000.into(),
                lkey: ka.into(),
            },
        );
        shuttle(&mut a, &mut b);
        let ca = a.poll(&cqa_pages, 64);
        assert_eq!(
            (ca.len(), ca[0].wr_id.get(), ca[0].status.get()),
            (1, 70, 0)
        );
        let cb = b.poll(&cqb_pages, 64);
        assert_eq!(cb.len(), 1);
        assert_eq!((cb[0].wr_id.get(), cb[0].status.get()), (71, 0));
        assert_eq!(
            (cb[0].opcode.get(), cb[0].byte_len.get()),
            (wc_opcode::RECV, 5000)
        );
        let mut got = b.rd(pages_b[0], 4096);
        got.extend(b.rd(pages_b[1], 904));
        assert_eq!(got, data);

        // RDMA WRITE 2000 bytes into B's third page by rkey.
        let mut w = send_wqe(72, wr_opcode::RDMA_WRITE, true);
        w.wr[..8].copy_from_slice(&(0x7e00_0000_0000u64 + 8192 + 40).to_le_bytes());
        w.wr[8..12].copy_from_slice(&kb.to_le_bytes());
        a.post_send(
            &mut qa,
            w,
            Sge {
                addr: 0x7f00_0000_0000.into(),
                length: 2000.into(),
                lkey: ka.into(),
            },
        );
        shuttle(&mut a, &mut b);
        let ca = a.poll(&cqa_pages, 64);
        assert_eq!((ca.len(), ca[0].status.get()), (1, 0));
        assert_eq!(b.rd(pages_b[2] + 40, 2000), data[..2000].to_vec());
        assert!(b.poll(&cqb_pages, 64).is_empty());

        // RDMA READ is not a UC operation: an error completion, no packet.
        let mut w = send_wqe(73, wr_opcode::RDMA_READ, true);
        w.wr[..8].copy_from_slice(&0x7e00_0000_0000u64.to_le_bytes());
        w.wr[8..12].copy_from_slice(&kb.to_le_bytes());
        a.post_send(
            &mut qa,
            w,
            Sge {
                addr: 0x7f00_0000_0000.into(),
                length: 100.into(),
                lkey: ka.into(),
            },
        );
        shuttle(&mut a, &mut b);
        let ca = a.poll(&cqa_pages, 64);
        assert_eq!(ca.len(), 1);
        assert_eq!(ca[0].wr_id.get(), 73);
        assert_ne!(ca[0].status.get(), 0, "READ on UC must fail");
    }

    #[test]
    fn two_guests_exchange_ud_datagrams_with_the_address_in_the_wqe() {
        let mut a = Guest::probe([2, 0, 0, 0, 0, 1]);
        let mut b = Guest::probe([2, 0, 0, 0, 0, 2]);
        a.bind_gid([10, 0, 0, 1]);
        b.bind_gid([10, 0, 0, 2]);
        let (pa, pb) = (a.create_pd(), b.create_pd());
        let (cqa, cqa_pages) = a.create_cq(64);
        let (cqb, cqb_pages) = b.create_cq(64);
        let (ka, pages_a) = a.create_mr(pa, 0x1000_0000, 1, 1);
        let (kb, pages_b) = b.create_mr(pb, 0x2000_0000, 1, 1);
        let mut qa = a.create_qp(pa, cqa, 4);
        let mut qb = b.create_qp(pb, cqb, 4);
        for (g, q) in [(&mut a, &qa), (&mut b, &qb)] {
            let mut at = QpAttr {
                qp_state: 1.into(),
                qkey: 0x1111.into(),
                port_num: 1,
                ..QpAttr::default()
            };
            // STATE | PKEY | PORT | QKEY
            g.modify(q.handle, 1 | 1 << 4 | 1 << 5 | 1 << 6, &at);
            at.qp_state = 2.into();
            g.modify(q.handle, 1, &at);
            at.qp_state = 3.into();
            at.sq_psn = 1.into();
            g.modify(q.handle, 1 | 1 << 16, &at);
        }
        let msg = b"a datagram through the guest rings";
        a.wr(pages_a[0], msg);
        b.post_recv(
            &mut qb,
            9,
            Sge {
                addr: 0x2000_0000.into(),
                length: 4096.into(),
                lkey: kb.into(),
            },
        );
        let mut w = send_wqe(4, wr_opcode::SEND, true);
        w.wr[0..4].copy_from_slice(&qb.qpn.to_le_bytes());
        w.wr[4..8].copy_from_slice(&0x1111u32.to_le_bytes());
        // AV: port 1, dgid ::ffff:10.0.0.2, source GID index 0, hop limit 64.
        w.wr[8..12].copy_from_slice(&(1u32 << 24 | pa).to_le_bytes());
        w.wr[16 + 10] = 0xff;
        w.wr[16 + 11] = 0xff;
        w.wr[16 + 12..16 + 16].copy_from_slice(&[10, 0, 0, 2]);
        w.wr[8 + 27] = 64;
        a.post_send(
            &mut qa,
            w,
            Sge {
                addr: 0x1000_0000.into(),
                length: (msg.len() as u32).into(),
                lkey: ka.into(),
            },
        );
        shuttle(&mut a, &mut b);
        let ca = a.poll(&cqa_pages, 64);
        assert_eq!((ca.len(), ca[0].status.get()), (1, 0));
        let cb = b.poll(&cqb_pages, 64);
        assert_eq!(cb.len(), 1);
        assert_eq!((cb[0].wr_id.get(), cb[0].status.get()), (9, 0));
        assert_eq!(
            cb[0].byte_len.get() as usize,
            40 + msg.len(),
            "GRH area + payload"
        );
        assert_eq!(cb[0].src_qp.get(), qa.qpn);
        assert_eq!(cb[0].wc_flags.get() & 1, 1, "GRH flag");
        assert_eq!(cb[0].wc_flags.get() & 64, 64, "WITH_NETWORK_HDR_TYPE");
        assert_eq!(cb[0].network_hdr_type, 1, "IPv4");
        assert_eq!(b.rd(pages_b[0] + 40, msg.len()), msg.to_vec());
        // A wrong Q_Key is dropped: no receive completion.
        b.post_recv(
            &mut qb,
            10,
            Sge {
                addr: 0x2000_0000.into(),
                length: 4096.into(),
                lkey: kb.into(),
            },
        );
        w.wr[4..8].copy_from_slice(&0x2222u32.to_le_bytes());
        a.post_send(
            &mut qa,
            w,
            Sge {
                addr: 0x1000_0000.into(),
                length: 8.into(),
                lkey: ka.into(),
            },
        );
        shuttle(&mut a, &mut b);
        assert_eq!(a.poll(&cqa_pages, 64).len(), 1);
        assert!(b.poll(&cqb_pages, 64).is_empty());
    }

    #[test]
    fn a_fast_registration_wqe_maps_pages_for_the_peer() {
        let mut a = Guest::probe([2, 0, 0, 0, 0, 1]);
        let mut b = Guest::probe([2, 0, 0, 0, 0, 2]);
        a.bind_gid([10, 0, 0, 1]);
        b.bind_gid([10, 0, 0, 2]);
        let (pa, pb) = (a.create_pd(), b.create_pd());
        let (cqa, cqa_pages) = a.create_cq(64);
        let (cqb, cqb_pages) = b.create_cq(64);
        let (ka, pages_a) = a.create_mr(pa, 0x1000_0000, 2, 1);
        let mut qa = a.create_qp(pa, cqa, 2);
        let mut qb = b.create_qp(pb, cqb, 2);
        a.connect_rc(qa.handle, qb.qpn, [10, 0, 0, 2]);
        b.connect_rc(qb.handle, qa.qpn, [10, 0, 0, 1]);
        // B: a fast-registration MR of up to 4 pages (kernel context).
        let r = b.ok(
            code::CREATE_MR,
            &[
                (40, &pb.to_le_bytes()),
                (48, &2u32.to_le_bytes()),
                (52, &4u32.to_le_bytes()),
            ],
        );
        let frmr = u32_at(&r, 20);
        // Its page list: two scattered pages, then REG_MR with a new key.
        let (pl_dir, pages) = b.pdir(2);
        let new_key = (frmr & !0xff) | 0x5a;
        let mut w = send_wqe(3, wr_opcode::FAST_REG_MR, true);
        w.num_sge = 0.into();
        w.wr[0..8].copy_from_slice(&0x9000_0000u64.to_le_bytes()); // iova
        w.wr[8..16].copy_from_slice(&pl_dir.to_le_bytes());
        w.wr[16..20].copy_from_slice(&12u32.to_le_bytes());
        w.wr[20..24].copy_from_slice(&2u32.to_le_bytes());
        w.wr[24..28].copy_from_slice(&8192u32.to_le_bytes());
        w.wr[28..32].copy_from_slice(&3u32.to_le_bytes()); // LOCAL_WRITE | REMOTE_WRITE
        w.wr[32..36].copy_from_slice(&new_key.to_le_bytes());
        b.post_send(&mut qb, w, Sge::default());
        shuttle(&mut a, &mut b);
        let cb = b.poll(&cqb_pages, 64);
        assert_eq!(cb.len(), 1);
        assert_eq!(
            (cb[0].status.get(), cb[0].opcode.get()),
            (0, wc_opcode::FAST_REG_MR)
        );
        // A writes 6000 bytes through the new key; they land in B's pages.
        let data: Vec<u8> = (0..6000u32).map(|i| (i * 5) as u8).collect();
        a.wr(pages_a[0], &data[..4096]);
        a.wr(pages_a[1], &data[4096..]);
        let mut w = send_wqe(4, wr_opcode::RDMA_WRITE, true);
        w.wr[..8].copy_from_slice(&0x9000_0000u64.to_le_bytes());
        w.wr[8..12].copy_from_slice(&new_key.to_le_bytes());
        a.post_send(
            &mut qa,
            w,
            Sge {
                addr: 0x1000_0000.into(),
                length: 6000.into(),
                lkey: ka.into(),
            },
        );
        shuttle(&mut a, &mut b);
        let ca = a.poll(&cqa_pages, 64);
        assert_eq!(ca[0].status.get(), 0);
        assert_eq!(b.rd(pages[0], 4096), data[..4096].to_vec());
        assert_eq!(b.rd(pages[1], 1904), data[4096..].to_vec());
    }

    #[test]
    fn a_qp_on_an_srq_receives_from_it_and_the_limit_raises_an_event() {
        let mut a = Guest::probe([2, 0, 0, 0, 0, 1]);
        let mut b = Guest::probe([2, 0, 0, 0, 0, 2]);
        a.bind_gid([10, 0, 0, 1]);
        b.bind_gid([10, 0, 0, 2]);
        let (pa, pb) = (a.create_pd(), b.create_pd());
        let (cqa, _) = a.create_cq(64);
        let (cqb, cqb_pages) = b.create_cq(64);
        let (ka, pages_a) = a.create_mr(pa, 0x1000_0000, 1, 1);
        let (kb, pages_b) = b.create_mr(pb, 0x2000_0000, 1, 1);
        // B: an SRQ of 8 WRs, 1 SGE (stride 32: one page of WQEs).
        let mut srq = b.drv.create_srq(pb, 8, 1, 0).unwrap();
        let r = b.ok(code::QUERY_SRQ, &[(16, &srq.handle.to_le_bytes())]);
        assert_eq!((u32_at(&r, 16), u32_at(&r, 20)), (8, 1));
        // B's QP on the SRQ: no receive ring pages.
        let qb = b.create_qp_on(pb, cqb, 2, Some(srq.handle));
        assert_eq!(qb.pages.len(), 2, "state page and one SQ page");
        let mut qa = a.create_qp(pa, cqa, 2);
        a.connect_rc(qa.handle, qb.qpn, [10, 0, 0, 2]);
        b.connect_rc(qb.handle, qa.qpn, [10, 0, 0, 1]);
        // Post 3 SRQ receives, arm the limit at 2, and send two messages.
        for i in 0..3u32 {
            let sge = Sge {
                addr: (0x2000_0000 + 1024 * u64::from(i)).into(),
                length: 1024.into(),
                lkey: kb.into(),
            };
            b.drv.post_srq_recv(&mut srq, 100 + u64::from(i), &[sge]);
        }
        b.drv.ring_srq(&srq);
        let srq = srq.handle;
        let mut lim = [0u8; 16];
        lim[8..12].copy_from_slice(&2u32.to_le_bytes());
        b.ok(
            code::MODIFY_SRQ,
            &[
                (16, &srq.to_le_bytes()),
                (20, &2u32.to_le_bytes()),
                (24, &lim),
            ],
        );
        a.wr(pages_a[0], b"first message, second message");
        for (i, (off, len)) in [(0u64, 13u32), (15, 14)].into_iter().enumerate() {
            a.post_send(
                &mut qa,
                send_wqe(i as u64, wr_opcode::SEND, true),
                Sge {
                    addr: (0x1000_0000 + off).into(),
                    length: len.into(),
                    lkey: ka.into(),
                },
            );
        }
        let (_, fb) = shuttle(&mut a, &mut b);
        let cb = b.poll(&cqb_pages, 64);
        assert_eq!(cb.len(), 2);
        assert_eq!((cb[0].wr_id.get(), cb[0].byte_len.get()), (100, 13));
        assert_eq!(
            cb[0].qp.get(),
            u64::from(qb.handle),
            "the QP's handle, not 0"
        );
        assert_eq!((cb[1].wr_id.get(), cb[1].byte_len.get()), (101, 14));
        assert_eq!(b.rd(pages_b[0] + 1024, 14), b"second message".to_vec());
        // One receive left, below the limit of 2: SRQ_LIMIT_REACHED.
        assert_ne!(fb.interrupts & 1 << vector::ASYNC, 0, "async vector");
        // The SRQ cannot go while the QP uses it.
        assert_ne!(b.cmd(code::DESTROY_SRQ, &[(16, &srq.to_le_bytes())]).0, 0);
        b.ok(code::DESTROY_QP, &[(16, &qb.handle.to_le_bytes())]);
        b.ok(code::DESTROY_SRQ, &[(16, &srq.to_le_bytes())]);
        assert_eq!(b.d().srq_count(), 0);
    }

    #[test]
    fn completions_notify_only_when_armed() {
        let mut a = Guest::probe([2, 0, 0, 0, 0, 1]);
        let mut b = Guest::probe([2, 0, 0, 0, 0, 2]);
        a.bind_gid([10, 0, 0, 1]);
        b.bind_gid([10, 0, 0, 2]);
        let (pa, pb) = (a.create_pd(), b.create_pd());
        let (cqa, cqa_pages) = a.create_cq(64);
        let (cqb, _) = b.create_cq(64);
        let (ka, _) = a.create_mr(pa, 0x1000_0000, 1, 1);
        let (kb, _) = b.create_mr(pb, 0x2000_0000, 1, 0xf);
        let mut qa = a.create_qp(pa, cqa, 2);
        let mut qb = b.create_qp(pb, cqb, 2);
        a.connect_rc(qa.handle, qb.qpn, [10, 0, 0, 2]);
        b.connect_rc(qb.handle, qa.qpn, [10, 0, 0, 1]);
        let sge = |k: u32, addr: u64| Sge {
            addr: addr.into(),
            length: 64.into(),
            lkey: k.into(),
        };
        // Not armed: the completion lands, no CQ interrupt.
        b.post_recv(&mut qb, 1, sge(kb, 0x2000_0000));
        a.post_send(
            &mut qa,
            send_wqe(1, wr_opcode::SEND, true),
            sge(ka, 0x1000_0000),
        );
        let (fa, _) = shuttle(&mut a, &mut b);
        assert_eq!(fa.interrupts & 1 << vector::CQ, 0);
        assert_eq!(a.poll(&cqa_pages, 64).len(), 1);
        // Armed (CQ doorbell, ARM): the next completion interrupts once.
        a.d().bar2_write(4, cqa | 1 << 30);
        b.post_recv(&mut qb, 2, sge(kb, 0x2000_0000));
        a.post_send(
            &mut qa,
            send_wqe(2, wr_opcode::SEND, true),
            sge(ka, 0x1000_0000),
        );
        let (fa, _) = shuttle(&mut a, &mut b);
        assert_ne!(fa.interrupts & 1 << vector::CQ, 0);
        assert_eq!(a.poll(&cqa_pages, 64).len(), 1);
        b.post_recv(&mut qb, 3, sge(kb, 0x2000_0000));
        a.post_send(
            &mut qa,
            send_wqe(3, wr_opcode::SEND, true),
            sge(ka, 0x1000_0000),
        );
        let (fa, _) = shuttle(&mut a, &mut b);
        assert_eq!(fa.interrupts & 1 << vector::CQ, 0, "one-shot");
    }

    #[test]
    fn hostile_doorbells_and_wqes_are_absorbed() {
        let mut a = Guest::probe([2, 0, 0, 0, 0, 1]);
        a.bind_gid([10, 0, 0, 1]);
        let pa = a.create_pd();
        let (cqa, cqa_pages) = a.create_cq(64);
        let (ka, _) = a.create_mr(pa, 0x1000_0000, 1, 1);
        let mut qa = a.create_qp(pa, cqa, 2);
        // Doorbells for handles that do not exist, on UAR pages no context
        // owns, and SRQ doorbells: counted, nothing else.
        a.d().bar2_write(0, 999 | 1 << 30);
        a.d().bar2_write(5 * 4096, qa.handle | 1 << 30);
        a.d().bar2_write(8, 1 << 30 | 3);
        a.d().bar2_write(4, 12345 | 1 << 30);
        assert_eq!(a.d().stats().bad_doorbells, 4);
        // A WQE with more SGEs than the QP has, and an unknown opcode: each
        // completes with an error on the send CQ.
        let mut w = send_wqe(5, wr_opcode::SEND, true);
        w.num_sge = 7.into();
        let sge = Sge {
            addr: 0x1000_0000.into(),
            length: 8.into(),
            lkey: ka.into(),
        };
        a.post_send(&mut qa, w, sge);
        a.post_send(&mut qa, send_wqe(6, 99, true), sge);
        // The opcodes the device does not advertise (max_mw 0, atomic_ops
        // without the masked bits), so no stock driver posts them: masked
        // compare-and-swap, masked fetch-and-add, BIND_MW.
        for op in [12, 13, 14] {
            a.post_send(&mut qa, send_wqe(op.into(), op, true), sge);
        }
        let c = a.poll(&cqa_pages, 64);
        assert_eq!(c.len(), 5);
        assert!(
            c.iter()
                .all(|e| e.status.get() == status_code(WcStatus::LocQpOpErr))
        );
        assert_eq!(a.d().stats().bad_wqes, 5);
        let caps = a.d().caps();
        assert_eq!(caps.max_mw.get(), 0, "no memory windows");
        assert_eq!(caps.atomic_ops, 0b11, "CMP_SWAP and FETCH_ADD only");
        // A producer index outside the ring: counted, nothing posted.
        a.wr(qa.pages[0] + TX_PROD, &1000u32.to_le_bytes());
        a.d().bar2_write(0, qa.handle | 1 << 30);
        assert_eq!(a.d().stats().bad_rings, 1);
        // A QP whose directory points outside guest memory is refused at
        // creation; CQ handles of nothing are refused.
        let r = a.cmd(
            code::CREATE_QP,
            &[
                (16, &(MEM as u64 + 0x1000).to_le_bytes()),
                (24, &pa.to_le_bytes()),
                (28, &cqa.to_le_bytes()),
                (32, &cqa.to_le_bytes()),
                (40, &16u32.to_le_bytes()),
                (44, &16u32.to_le_bytes()),
                (48, &1u32.to_le_bytes()),
                (52, &1u32.to_le_bytes()),
                (68, &3u16.to_le_bytes()),
                (70, &1u16.to_le_bytes()),
                (75, &[2]),
            ],
        );
        assert_ne!(r.0, 0);
        let r = a.cmd(
            code::CREATE_QP,
            &[
                (24, &pa.to_le_bytes()),
                (28, &777u32.to_le_bytes()),
                (75, &[2]),
            ],
        );
        assert_ne!(r.0, 0);
        // Destroying a QP with WQEs in flight, then its CQ: fine, and
        // doorbells for it are refused afterwards.
        a.post_send(&mut qa, send_wqe(7, wr_opcode::SEND, true), sge);
        a.ok(code::DESTROY_QP, &[(16, &qa.handle.to_le_bytes())]);
        a.d().bar2_write(0, qa.handle | 1 << 30);
        assert_eq!(a.d().stats().bad_doorbells, 5);
        a.ok(code::DESTROY_CQ, &[(16, &cqa.to_le_bytes())]);
    }

    #[test]
    fn probe_query_port_and_pkey() {
        let mut g = Guest::probe([0x52, 0x54, 0, 1, 2, 3]);
        let (err, r, irq) = g.cmd(code::QUERY_PORT, &[(16, &[1])]);
        assert_eq!((err, irq), (0, 1 << vector::COMMAND));
        assert_eq!(u32_at(&r, 8), 0x8000_0000);
        let cookie = g.rd(CMD, 8);
        assert_eq!(&r[0..8], &cookie[..], "response echoed");
        assert_eq!(u32_at(&r, 16), 4, "port ACTIVE");
        g.d().set_port_up(false);
        let (_, r, _) = g.cmd(code::QUERY_PORT, &[(16, &[1])]);
        assert_eq!(u32_at(&r, 16), 1, "port DOWN");
        let (err, r, _) = g.cmd(code::QUERY_PKEY, &[(16, &[1, 0])]);
        assert_eq!(err, 0);
        assert_eq!(&r[16..18], &[0xff, 0xff]);
        let (err, r, _) = g.cmd(code::QUERY_PORT, &[(16, &[2])]);
        assert_ne!(err, 0, "no port 2");
        assert_ne!(r[12], 0, "hdr.err set");
    }

    #[test]
    fn commands_before_activation_and_unknown_ones_fail() {
        let mut d = Device::new(
            [2, 0, 0, 0, 0, 1],
            Limits::default(),
            VecMemory::new(1 << 20),
        );
        let fx = d.bar1_write(reg::REQUEST, 0);
        assert_ne!(d.bar1_read(reg::ERR), 0);
        assert_eq!(fx.interrupts, 0, "IMR masks everything before probe");
        let mut g = Guest::probe([2, 0, 0, 0, 0, 1]);
        let (err, _, irq) = g.cmd(99, &[]);
        assert_ne!(err, 0);
        assert_eq!(irq, 1 << vector::COMMAND);
        // A DSR outside guest memory is refused, not a panic.
        g.d().bar1_write(reg::DSRLOW, 0xffff_f000);
        g.d().bar1_write(reg::DSRHIGH, 0xffff);
        assert_ne!(g.d().bar1_read(reg::ERR), 0);
    }

    #[test]
    fn resize_cq_grants_sizes_within_its_ring_and_refuses_larger() {
        let mut g = Guest::probe([2, 0, 0, 0, 0, 1]);
        let (cq, _) = g.create_cq(64);
        // Smaller or equal: granted, at the ring's size.
        for want in [1u32, 40, 64] {
            let r = g.ok(
                code::RESIZE_CQ,
                &[(16, &cq.to_le_bytes()), (20, &want.to_le_bytes())],
            );
            assert_eq!(u32_at(&r, 16), 64, "granted size for {want}");
        }
        // Larger than the ring, zero, or an unknown CQ: a command error.
        for (h, want) in [(cq, 65u32), (cq, 0), (cq + 100, 8)] {
            let (err, r, _) = g.cmd(
                code::RESIZE_CQ,
                &[(16, &h.to_le_bytes()), (20, &want.to_le_bytes())],
            );
            assert_eq!(err, 1, "RESIZE_CQ {h} to {want} must fail");
            assert_ne!(r[12], 0, "response err for {h}/{want}");
        }
    }

    #[test]
    fn contexts_own_their_objects_and_reset_forgets_everything() {
        let mut g = Guest::probe([2, 0, 0, 0, 0, 1]);
        let r = g.ok(code::CREATE_UC, &[(16, &(UAR_PFN + 3).to_le_bytes())]);
        let uc = u32_at(&r, 16);
        assert_ne!(uc, 0);
        for pfn in [UAR_PFN, UAR_PFN + 512, 0] {
            assert_ne!(
                g.cmd(code::CREATE_UC, &[(16, &pfn.to_le_bytes())]).0,
                0,
                "pfn {pfn:#x}"
            );
        }
        let kpd = g.create_pd();
        let upd = u32_at(&g.ok(code::CREATE_PD, &[(16, &uc.to_le_bytes())]), 16);
        assert_ne!(g.cmd(code::CREATE_PD, &[(16, &999u32.to_le_bytes())]).0, 0);
        // A user CQ, and CQ sizes the device refuses.
        let (dir, _) = g.pdir(2);
        let cq = |g: &mut Guest, n: u32, pages: u32, ctx: u32| {
            g.cmd(
                code::CREATE_CQ,
                &[
                    (16, &dir.to_le_bytes()),
                    (24, &ctx.to_le_bytes()),
                    (28, &n.to_le_bytes()),
                    (32, &pages.to_le_bytes()),
                ],
            )
        };
        assert_eq!(cq(&mut g, 64, 2, uc).0, 0);
        assert_ne!(cq(&mut g, 100, 2, uc).0, 0, "not a power of 2");
        assert_ne!(cq(&mut g, 128, 2, uc).0, 0, "too few pages");
        assert_ne!(cq(&mut g, 64, 2, 12345).0, 0, "no such context");
        // A user MR of 1 GiB: the directory is read, no page is touched.
        let gib = 1u64 << 30;
        let pages = (gib / PAGE_SIZE) as u32;
        let dir = g.page();
        for t in 0..(pages / 512) {
            let table = g.page();
            g.wr(dir + 8 * u64::from(t), &table.to_le_bytes());
            let entries: Vec<u8> = (0..512u64)
                .flat_map(|i| ((u64::from(t) * 512 + i) * PAGE_SIZE + (1 << 40)).to_le_bytes())
                .collect();
            g.wr(table, &entries);
        }
        let r = g.ok(
            code::CREATE_MR,
            &[
                (16, &0x7f00_0000_0000u64.to_le_bytes()),
                (24, &gib.to_le_bytes()),
                (32, &dir.to_le_bytes()),
                (40, &upd.to_le_bytes()),
                (44, &7u32.to_le_bytes()),
                (52, &pages.to_le_bytes()),
            ],
        );
        assert_ne!(u32_at(&r, 20), 0);
        // A page count that does not cover the range is refused.
        let r = g.cmd(
            code::CREATE_MR,
            &[
                (24, &gib.to_le_bytes()),
                (40, &upd.to_le_bytes()),
                (52, &5u32.to_le_bytes()),
            ],
        );
        assert_ne!(r.0, 0);
        // The kernel's DMA MR.
        g.ok(
            code::CREATE_MR,
            &[(40, &kpd.to_le_bytes()), (48, &1u32.to_le_bytes())],
        );
        assert_eq!(g.d().counts(), (1, 2, 1, 2, 0));
        // Destroying the context takes its objects with it.
        g.ok(code::DESTROY_UC, &[(16, &uc.to_le_bytes())]);
        assert_eq!(g.d().counts(), (0, 1, 0, 1, 0));
        g.d().bar1_write(reg::CTL, 2);
        assert!(!g.d().active());
        assert_eq!(g.d().counts(), (0, 0, 0, 0, 0));
    }

    /// Prints the time to register a 1 GiB user MR (its directory is
    /// read, its pages are not) next to the time to read the 2 MiB of
    /// directory entries alone. `cargo test --release -p pvrdma-model
    /// register_1gib -- --nocapture` for the figure.
    #[test]
    fn register_1gib_timing() {
        let mut g = Guest::probe([2, 0, 0, 0, 0, 1]);
        let pd = g.create_pd();
        let pages = (1u64 << 30) / PAGE_SIZE;
        let dir = g.page();
        for t in 0..pages / 512 {
            let table = g.page();
            g.wr(dir + 8 * t, &table.to_le_bytes());
            let entries: Vec<u8> = (0..512u64)
                .flat_map(|i| ((t * 512 + i) * PAGE_SIZE + (1 << 40)).to_le_bytes())
                .collect();
            g.wr(table, &entries);
        }
        let t0 = std::time::Instant::now();
        let (err, _, _) = g.cmd(
            code::CREATE_MR,
            &[
                (16, &0x7f00_0000_0000u64.to_le_bytes()),
                (24, &(1u64 << 30).to_le_bytes()),
                (32, &dir.to_le_bytes()),
                (40, &pd.to_le_bytes()),
                (44, &1u32.to_le_bytes()),
                (52, &(pages as u32).to_le_bytes()),
            ],
        );
        let reg = t0.elapsed();
        assert_eq!(err, 0);
        // Baseline: reading the same 2 MiB of entries in one go.
        let t1 = std::time::Instant::now();
        let mut sum = 0u64;
        for t in 0..pages / 512 {
            let mut b = [0u8; 8];
            g.d().engine().memory().read(dir + 8 * t, &mut b).unwrap();
            let table = u64::from_le_bytes(b);
            let raw = g.rd(table, 4096);
            sum = sum.wrapping_add(raw.iter().map(|x| u64::from(*x)).sum::<u64>());
        }
        let base = t1.elapsed();
        assert_ne!(sum, 0);
        println!(
            "{{\"bench\":\"pvrdma register 1 GiB MR\",\"register_us\":{},\"baseline_read_directory_us\":{}}}",
            reg.as_micros(),
            base.as_micros()
        );
    }

    #[test]
    fn gid_binds_fill_the_table_within_its_length() {
        let mut g = Guest::probe([2, 0, 0, 0, 0, 1]);
        let mut gid = [0u8; 16];
        gid[10] = 0xff;
        gid[11] = 0xff;
        gid[12..].copy_from_slice(&[10, 77, 0, 1]);
        let bind = |g: &mut Guest, index: u32, t: u8| {
            g.cmd(
                code::CREATE_BIND,
                &[(24, &index.to_le_bytes()), (28, &gid), (44, &[t])],
            )
            .0
        };
        assert_eq!(bind(&mut g, 1, 2), 0);
        assert_eq!(g.d().gids()[1], Some(GidEntry { gid, gid_type: 2 }));
        assert_eq!(g.d().engine().gids().get(1), Some(Gid(gid)));
        assert_ne!(bind(&mut g, 16, 2), 0, "past gid_tbl_len");
        assert_ne!(bind(&mut g, 2, 7), 0, "bad type");
        g.ok(code::DESTROY_BIND, &[(16, &1u32.to_le_bytes())]);
        assert_eq!(g.d().gids()[1], None);
    }
}
