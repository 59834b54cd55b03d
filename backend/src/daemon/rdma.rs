//! The RDMA face: the PVRDMA PCI function (15ad:0820) served over
//! vfio-user with rust-vmm's `vfio_user` server, driving
//! [`pvrdma_model::device::Device`].
//!
//! This module owns what vfio-user carries and the device model does not
//! know about:
//! - PCI config space ([`PciConfig`]): IDs, class, BAR types and sizes,
//!   and an MSI-X capability (3 vectors: command, async, CQ) whose table
//!   and PBA sit in BAR0, as the driver expects;
//! - the regions: BAR0 (MSI-X, emulated by QEMU; PBA reads are zero),
//!   BAR1 (registers) and BAR2 (one 4 KiB UAR page per context);
//! - guest memory ([`GuestRam`]): the DMA maps QEMU sends (the guest's
//!   memfd, mapped here with vm-memory), which the engine copies to and
//!   from; an address outside every map is an error, never an access;
//! - interrupts: the eventfds QEMU gives for the MSI-X vectors;
//! - device reset.
//!
//! The device itself lives in a [`DeviceHost`] on the thread that owns
//! the network port (the stream port's), so that the engine's packets,
//! its timers and the guest's accesses meet on one thread without locks;
//! [`PvrdmaBackend`], on the vfio-user thread, answers config space itself
//! and forwards every other access over a channel, waiting for the answer
//! (a command must be complete before the guest reads ERR).

use std::{fs::File, io::Write, sync::Arc};

use log::{debug, info, warn};
use pvrdma_model::{
    abi::{DEVICE_ID, VENDOR_ID},
    device::{Device, Effects, Limits},
    regs::{BAR1_SIZE, Doorbell, UAR_PAGE, vector},
};
use transport::memory::{Memory, OutOfRange};
use vfio_bindings::bindings::vfio::{
    VFIO_IRQ_INFO_EVENTFD, VFIO_IRQ_SET_DATA_EVENTFD, VFIO_PCI_BAR0_REGION_INDEX,
    VFIO_PCI_BAR1_REGION_INDEX, VFIO_PCI_BAR2_REGION_INDEX, VFIO_PCI_CONFIG_REGION_INDEX,
    VFIO_PCI_MSIX_IRQ_INDEX, VFIO_PCI_NUM_IRQS, VFIO_PCI_NUM_REGIONS, VFIO_REGION_INFO_FLAG_READ,
    VFIO_REGION_INFO_FLAG_WRITE, vfio_region_info,
};
use vfio_user::{DmaMapFlags, DmaUnmapFlags, IrqInfo, ServerBackend, ServerRegion};
use vm_memory::{
    Bytes, FileOffset, GuestAddress, GuestMemoryMmap, GuestRegionCollection, GuestRegionMmap,
};

/// BAR0's size: the MSI-X table at 0 and the PBA at [`PBA_OFFSET`].
pub const BAR0_SIZE: u64 = 0x4000;
/// The PBA's offset in BAR0.
pub const PBA_OFFSET: u32 = 0x2000;
/// Where the MSI-X capability sits in config space.
const MSIX_CAP: usize = 0x40;

/// Guest memory as QEMU shares it: its DMA maps, each a piece of the
/// guest's memfd mapped here.
#[derive(Default)]
pub struct GuestRam {
    regions: Vec<Arc<GuestRegionMmap>>,
    mem: GuestMemoryMmap,
}

impl GuestRam {
    /// Maps `size` bytes of `file` from `offset` at guest address `gpa`.
    pub fn map(&mut self, gpa: u64, size: u64, file: File, offset: u64) -> std::io::Result<()> {
        let region = GuestRegionMmap::from_range(
            GuestAddress(gpa),
            size as usize,
            Some(FileOffset::new(file, offset)),
        )
        .map_err(|e| std::io::Error::other(format!("cannot map guest memory: {e}")))?;
        let mut regions = self.regions.clone();
        regions.push(Arc::new(region));
        // The collection wants its regions in address order, and QEMU maps
        // them in whatever order its memory listener sees them.
        regions.sort_by_key(|r| {
            use vm_memory::GuestMemoryRegion;
            r.start_addr().0
        });
        let mem = GuestRegionCollection::from_arc_regions(regions.clone())
            .map_err(|e| std::io::Error::other(format!("overlapping guest memory: {e}")))?;
        self.regions = regions;
        self.mem = mem;
        Ok(())
    }

    /// Drops the maps inside `[gpa, gpa + size)`.
    pub fn unmap(&mut self, gpa: u64, size: u64) {
        use vm_memory::GuestMemoryRegion;
        self.regions.retain(|r| {
            let start = r.start_addr().0;
            !(start >= gpa && start < gpa.saturating_add(size))
        });
        self.mem =
            GuestRegionCollection::from_arc_regions(self.regions.clone()).unwrap_or_default();
    }

    /// Bytes mapped.
    pub fn mapped(&self) -> u64 {
        use vm_memory::GuestMemoryRegion;
        self.regions.iter().map(|r| r.len()).sum()
    }
}

impl Memory for GuestRam {
    fn read(&self, addr: u64, dst: &mut [u8]) -> Result<(), OutOfRange> {
        self.mem
            .read_slice(dst, GuestAddress(addr))
            .map_err(|_| OutOfRange {
                addr,
                len: dst.len(),
            })
    }

    fn write(&mut self, addr: u64, src: &[u8]) -> Result<(), OutOfRange> {
        self.mem
            .write_slice(src, GuestAddress(addr))
            .map_err(|_| OutOfRange {
                addr,
                len: src.len(),
            })
    }
}

/// PCI configuration space of the PVRDMA function.
pub struct PciConfig {
    space: [u8; 256],
    /// Bits the guest may write.
    writable: [u8; 256],
    /// BAR sizes (0 = no BAR).
    bars: [u64; 6],
}

impl PciConfig {
    /// The PVRDMA function's config space with BAR0 (MSI-X), BAR1
    /// (registers) and BAR2 (`uar_pages` UAR pages).
    pub fn pvrdma(uar_pages: u32) -> PciConfig {
        let mut c = PciConfig {
            space: [0; 256],
            writable: [0; 256],
            bars: [0; 6],
        };
        let s = &mut c.space;
        s[0..2].copy_from_slice(&VENDOR_ID.to_le_bytes());
        s[2..4].copy_from_slice(&DEVICE_ID.to_le_bytes());
        // Status: capabilities list.
        s[6] = 0x10;
        // Class: network controller, other.
        s[0x09] = 0x00;
        s[0x0a] = 0x80;
        s[0x0b] = 0x02;
        // Subsystem IDs.
        s[0x2c..0x2e].copy_from_slice(&VENDOR_ID.to_le_bytes());
        s[0x2e..0x30].copy_from_slice(&DEVICE_ID.to_le_bytes());
        s[0x34] = MSIX_CAP as u8;
        s[0x3d] = 1; // INTA
        // MSI-X: 3 vectors, table in BAR0 at 0, PBA in BAR0.
        s[MSIX_CAP] = 0x11;
        s[MSIX_CAP + 1] = 0;
        s[MSIX_CAP + 2..MSIX_CAP + 4].copy_from_slice(&(vector::COUNT as u16 - 1).to_le_bytes());
        s[MSIX_CAP + 4..MSIX_CAP + 8].copy_from_slice(&0u32.to_le_bytes());
        s[MSIX_CAP + 8..MSIX_CAP + 12].copy_from_slice(&PBA_OFFSET.to_le_bytes());
        c.bars[0] = BAR0_SIZE;
        c.bars[1] = BAR1_SIZE.max(4096);
        c.bars[2] = u64::from(uar_pages) * UAR_PAGE;
        // Writable: command, BARs (sizing), interrupt line, MSI-X control.
        c.writable[4] = 0xff;
        c.writable[5] = 0x07;
        c.writable[0x3c] = 0xff;
        c.writable[MSIX_CAP + 3] = 0xc0;
        for b in 0..3 {
            let mask = !(c.bars[b] - 1) as u32;
            c.writable[0x10 + 4 * b..0x14 + 4 * b].copy_from_slice(&mask.to_le_bytes());
        }
        c
    }

    /// The size of BAR `i`.
    pub fn bar_size(&self, i: usize) -> u64 {
        self.bars.get(i).copied().unwrap_or(0)
    }

    /// Reads config space.
    pub fn read(&self, offset: u64, data: &mut [u8]) {
        for (i, b) in data.iter_mut().enumerate() {
            *b = self.space.get(offset as usize + i).copied().unwrap_or(0);
        }
    }

    /// Writes config space, keeping read-only bits.
    pub fn write(&mut self, offset: u64, data: &[u8]) {
        for (i, b) in data.iter().enumerate() {
            let at = offset as usize + i;
            if at < 256 {
                let w = self.writable[at];
                self.space[at] = self.space[at] & !w | b & w;
            }
        }
    }
}

/// The regions QEMU asks about.
pub fn regions(cfg: &PciConfig) -> Vec<ServerRegion> {
    (0..VFIO_PCI_NUM_REGIONS)
        .map(|index| {
            let mut info = vfio_region_info {
                argsz: std::mem::size_of::<vfio_region_info>() as u32,
                index,
                ..Default::default()
            };
            let size = match index {
                VFIO_PCI_BAR0_REGION_INDEX
                | VFIO_PCI_BAR1_REGION_INDEX
                | VFIO_PCI_BAR2_REGION_INDEX => cfg.bar_size(index as usize),
                VFIO_PCI_CONFIG_REGION_INDEX => 256,
                _ => 0,
            };
            if size > 0 {
                info.size = size;
                info.flags = VFIO_REGION_INFO_FLAG_READ | VFIO_REGION_INFO_FLAG_WRITE;
            }
            ServerRegion {
                region_info: info,
                sparse_areas: Vec::new(),
                mmap_fd: None,
            }
        })
        .collect()
}

/// The interrupts QEMU asks about: MSI-X with 3 vectors.
pub fn irqs() -> Vec<IrqInfo> {
    (0..VFIO_PCI_NUM_IRQS)
        .map(|index| IrqInfo {
            index,
            flags: if index == VFIO_PCI_MSIX_IRQ_INDEX {
                VFIO_IRQ_INFO_EVENTFD
            } else {
                0
            },
            count: if index == VFIO_PCI_MSIX_IRQ_INDEX {
                vector::COUNT
            } else {
                0
            },
        })
        .collect()
}

/// What the vfio-user thread asks of the thread that owns the device.
#[derive(Debug)]
pub enum DevReq {
    /// A 32-bit BAR1 read.
    Bar1Read(u64),
    /// A 32-bit BAR1 write.
    Bar1Write(u64, u32),
    /// A 32-bit BAR2 (doorbell) write.
    Bar2Write(u64, u32),
    /// A DMA map of `size` bytes of `file` from `offset` at `gpa`.
    DmaMap {
        /// Guest address.
        gpa: u64,
        /// Bytes.
        size: u64,
        /// QEMU's memory file.
        file: File,
        /// Offset in the file.
        offset: u64,
    },
    /// A DMA unmap.
    DmaUnmap(u64, u64),
    /// Device reset.
    Reset,
    /// MSI-X eventfds for vectors from `start`.
    SetIrqs(u32, Vec<File>),
    /// Drop all MSI-X eventfds.
    ClearIrqs,
    /// The client went away.
    Disconnected,
}

impl DevReq {
    /// Whether the guest's access completes without waiting for the
    /// device: the QP and SRQ doorbells, which PCI posts. The device
    /// thread takes requests in order, so any later access (a command, a
    /// BAR read, a reset) still sees the doorbell done, and it takes them
    /// before each frame from the link, so a peer's answer to a posted
    /// receive finds it. CQ doorbells (arming) stay synchronous: a driver
    /// arms, then looks at the ring once more for a completion that beat
    /// the arm, and that look is only sound if the arm has taken effect.
    pub fn posted(&self) -> bool {
        matches!(self, DevReq::Bar2Write(off, v)
            if !matches!(Doorbell::decode(*off, *v), Doorbell::Cq { .. }))
    }
}

/// The device and its interrupts, owned by the thread that also owns the
/// network port, so that packets, timers and guest accesses meet without
/// locks.
pub struct DeviceHost {
    device: Device<GuestRam>,
    msix: [Option<File>; vector::COUNT as usize],
}

impl DeviceHost {
    /// A device paired with a NIC of `mac`.
    pub fn new(mac: [u8; 6], limits: Limits) -> DeviceHost {
        DeviceHost {
            device: Device::new(mac, limits, GuestRam::default()),
            msix: [None, None, None],
        }
    }

    /// The device model.
    pub fn device(&self) -> &Device<GuestRam> {
        &self.device
    }

    /// The device model, mutably (its engine takes packets and time).
    pub fn device_mut(&mut self) -> &mut Device<GuestRam> {
        &mut self.device
    }

    /// Executes one request; the value read, or 0.
    pub fn handle(&mut self, req: DevReq) -> std::io::Result<u32> {
        match req {
            DevReq::Bar1Read(off) => return Ok(self.device.bar1_read(off)),
            DevReq::Bar1Write(off, v) => {
                let fx = self.device.bar1_write(off, v);
                self.fire(fx);
            }
            DevReq::Bar2Write(off, v) => {
                let fx = self.device.bar2_write(off, v);
                self.fire(fx);
            }
            DevReq::DmaMap {
                gpa,
                size,
                file,
                offset,
            } => {
                self.device
                    .engine_mut()
                    .memory_mut()
                    .map(gpa, size, file, offset)?;
                info!("guest memory mapped: {size:#x} bytes at {gpa:#x}");
            }
            DevReq::DmaUnmap(gpa, size) => self.device.engine_mut().memory_mut().unmap(gpa, size),
            DevReq::Reset => {
                info!("device reset: {}", self.objects());
                let fx = self.device.bar1_write(pvrdma_model::regs::reg::CTL, 2);
                self.fire(fx);
            }
            DevReq::SetIrqs(start, fds) => {
                for (i, f) in fds.into_iter().enumerate() {
                    if let Some(slot) = self.msix.get_mut(start as usize + i) {
                        *slot = Some(f);
                    }
                }
            }
            DevReq::ClearIrqs => self.msix = [None, None, None],
            DevReq::Disconnected => {
                info!(
                    "QEMU disconnected from the PVRDMA function: {}",
                    self.objects()
                );
                let _ = self.device.bar1_write(pvrdma_model::regs::reg::CTL, 2);
                self.device.engine_mut().memory_mut().unmap(0, u64::MAX);
                self.msix = [None, None, None];
            }
        }
        Ok(0)
    }

    /// The live verbs objects, for the lifecycle log lines (the objects
    /// are released right after, so a leak in the guest shows up here).
    fn objects(&self) -> String {
        let (uc, pd, cq, mr, qp) = self.device.counts();
        format!(
            "objects released: contexts={uc} pds={pd} cqs={cq} mrs={mr} qps={qp} srqs={}",
            self.device.srq_count()
        )
    }

    /// Signals the MSI-X vectors in `fx`.
    pub fn fire(&mut self, fx: Effects) {
        for v in 0..vector::COUNT {
            if fx.interrupts & 1 << v != 0
                && let Some(f) = self.msix[v as usize].as_mut()
            {
                let _ = f.write_all(&1u64.to_ne_bytes());
            }
        }
    }

    /// The IP addresses of the GIDs the guest bound (RoCE v2 GIDs are IP
    /// addresses; IPv4 ones are IPv4-mapped).
    pub fn gid_ips(&self) -> Vec<std::net::IpAddr> {
        self.device
            .gids()
            .iter()
            .flatten()
            .map(|g| transport::device::Gid(g.gid).to_ip())
            .collect()
    }
}

/// The device owner's end of the channel from the vfio-user thread.
pub struct DeviceEnd {
    /// Requests.
    pub req: std::sync::mpsc::Receiver<DevReq>,
    /// Replies, one per request that is not [`DevReq::posted`], in order.
    pub reply: std::sync::mpsc::SyncSender<std::io::Result<u32>>,
    /// Readable when requests are waiting.
    pub wake: Arc<vmm_sys_util::eventfd::EventFd>,
}

/// The vfio-user backend of the PVRDMA function: config space is answered
/// here; every other access is forwarded to the thread that owns the
/// device, which answers before the guest's access completes (doorbells
/// only queue: see [`DevReq::posted`]).
pub struct PvrdmaBackend {
    cfg: PciConfig,
    req: std::sync::mpsc::SyncSender<DevReq>,
    reply: std::sync::mpsc::Receiver<std::io::Result<u32>>,
    wake: Arc<vmm_sys_util::eventfd::EventFd>,
    /// Whether a DMA map with a file (shared guest RAM) has arrived.
    ram_seen: bool,
}

impl PvrdmaBackend {
    /// A backend and the device owner's end of its channel.
    pub fn new(uar_pages: u32) -> std::io::Result<(PvrdmaBackend, DeviceEnd)> {
        let (req_tx, req_rx) = std::sync::mpsc::sync_channel(64);
        let (rep_tx, rep_rx) = std::sync::mpsc::sync_channel(64);
        let wake = Arc::new(vmm_sys_util::eventfd::EventFd::new(libc::EFD_NONBLOCK)?);
        Ok((
            PvrdmaBackend {
                cfg: PciConfig::pvrdma(uar_pages),
                req: req_tx,
                reply: rep_rx,
                wake: wake.clone(),
                ram_seen: false,
            },
            DeviceEnd {
                req: req_rx,
                reply: rep_tx,
                wake,
            },
        ))
    }

    /// The config space (for the regions).
    pub fn config(&self) -> &PciConfig {
        &self.cfg
    }

    /// Forwards `req` and waits for its answer, or only queues it if it
    /// is [`DevReq::posted`] (the answer is then 0).
    pub fn call(&mut self, req: DevReq) -> std::io::Result<u32> {
        let gone = || std::io::Error::other("the device thread is gone");
        if matches!(req, DevReq::Disconnected) {
            // The next client shares its memory afresh.
            self.ram_seen = false;
        }
        let posted = req.posted();
        self.req.send(req).map_err(|_| gone())?;
        self.wake.write(1)?;
        if posted {
            return Ok(0);
        }
        self.reply.recv().map_err(|_| gone())?
    }
}

fn dword(data: &[u8]) -> Option<u32> {
    Some(u32::from_le_bytes(data.get(..4)?.try_into().ok()?))
}

impl ServerBackend for PvrdmaBackend {
    fn region_read(&mut self, region: u32, offset: u64, data: &mut [u8]) -> std::io::Result<()> {
        data.fill(0);
        match region {
            VFIO_PCI_CONFIG_REGION_INDEX => self.cfg.read(offset, data),
            VFIO_PCI_BAR1_REGION_INDEX if data.len() == 4 => {
                let v = self.call(DevReq::Bar1Read(offset))?;
                data.copy_from_slice(&v.to_le_bytes());
            }
            // The MSI-X table is QEMU's; the PBA reads as nothing pending;
            // doorbells read as zero.
            _ => {}
        }
        Ok(())
    }

    fn region_write(&mut self, region: u32, offset: u64, data: &[u8]) -> std::io::Result<()> {
        match region {
            VFIO_PCI_CONFIG_REGION_INDEX => self.cfg.write(offset, data),
            VFIO_PCI_BAR1_REGION_INDEX => {
                if let Some(v) = dword(data) {
                    self.call(DevReq::Bar1Write(offset, v))?;
                }
            }
            VFIO_PCI_BAR2_REGION_INDEX => {
                if let Some(v) = dword(data) {
                    self.call(DevReq::Bar2Write(offset, v))?;
                }
            }
            _ => {}
        }
        Ok(())
    }

    fn dma_map(
        &mut self,
        _flags: DmaMapFlags,
        offset: u64,
        address: u64,
        size: u64,
        fd: Option<File>,
    ) -> std::io::Result<()> {
        let Some(file) = fd else {
            // QEMU also announces sections that are not shareable RAM
            // (option ROMs, other devices' BARs); the device cannot reach
            // those, as on real hardware without peer-to-peer DMA. Only
            // when no RAM came with a file is guest memory not shared.
            if self.ram_seen {
                debug!(
                    "DMA map of {size:#x} bytes at {address:#x} without a file: not guest RAM, not reachable"
                );
            } else {
                warn!(
                    "DMA map of {size:#x} bytes at {address:#x} without a file: guest memory must be shared (memory-backend-memfd,share=on)"
                );
            }
            return Ok(());
        };
        self.ram_seen = true;
        self.call(DevReq::DmaMap {
            gpa: address,
            size,
            file,
            offset,
        })
        .map(|_| ())
    }

    fn dma_unmap(&mut self, _flags: DmaUnmapFlags, address: u64, size: u64) -> std::io::Result<()> {
        self.call(DevReq::DmaUnmap(address, size)).map(|_| ())
    }

    fn reset(&mut self) -> std::io::Result<()> {
        self.call(DevReq::Reset).map(|_| ())
    }

    fn set_irqs(
        &mut self,
        index: u32,
        flags: u32,
        start: u32,
        count: u32,
        fds: Vec<File>,
    ) -> std::io::Result<()> {
        if index != VFIO_PCI_MSIX_IRQ_INDEX {
            return Ok(());
        }
        if flags & VFIO_IRQ_SET_DATA_EVENTFD != 0 {
            self.call(DevReq::SetIrqs(start, fds))?;
        } else if count == 0 {
            self.call(DevReq::ClearIrqs)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn qp_and_srq_doorbells_are_posted_cq_arming_and_registers_are_not() {
        for (off, v) in [(0, 1 << 30 | 3), (4096, 1 << 31 | 9), (8, 1 << 30 | 2)] {
            assert!(DevReq::Bar2Write(off, v).posted(), "{off:#x}");
        }
        for (off, v) in [(4, 1 << 30 | 1), (4096 + 4, 1 << 29 | 1)] {
            assert!(!DevReq::Bar2Write(off, v).posted(), "{off:#x}");
        }
        assert!(!DevReq::Bar1Write(0x10, 0).posted());
        assert!(!DevReq::Bar1Read(0x14).posted());
    }

    #[test]
    fn config_space_names_the_device_and_sizes_its_bars() {
        let mut c = PciConfig::pvrdma(512);
        let mut id = [0u8; 4];
        c.read(0, &mut id);
        assert_eq!(id, [0xad, 0x15, 0x20, 0x08]);
        // BAR sizing: all ones written, the size mask read back.
        c.write(0x18, &[0xff; 4]);
        let mut bar2 = [0u8; 4];
        c.read(0x18, &mut bar2);
        assert_eq!(u32::from_le_bytes(bar2), !(512 * 4096 - 1) as u32);
        // Read-only IDs stay.
        c.write(0, &[0; 4]);
        c.read(0, &mut id);
        assert_eq!(id, [0xad, 0x15, 0x20, 0x08]);
        // MSI-X: 3 vectors, PBA in BAR0.
        let mut cap = [0u8; 12];
        c.read(MSIX_CAP as u64, &mut cap);
        assert_eq!(cap[0], 0x11);
        assert_eq!(u16::from_le_bytes([cap[2], cap[3]]) & 0x7ff, 2);
        assert_eq!(
            u32::from_le_bytes(cap[8..12].try_into().unwrap()),
            PBA_OFFSET
        );
        assert_eq!(regions(&c)[2].region_info.size, 512 * 4096);
        assert_eq!(irqs()[VFIO_PCI_MSIX_IRQ_INDEX as usize].count, 3);
    }

    #[test]
    fn guest_ram_refuses_what_is_not_mapped() {
        // SAFETY: memfd_create with a valid C string; checked below.
        let fd = unsafe { libc::memfd_create(c"g".as_ptr(), 0) };
        assert!(fd >= 0);
        // SAFETY: a fresh descriptor we own.
        let file = unsafe { <File as std::os::fd::FromRawFd>::from_raw_fd(fd) };
        file.set_len(1 << 20).unwrap();
        let mut ram = GuestRam::default();
        ram.map(0x10_0000, 1 << 20, file, 0).unwrap();
        ram.write(0x10_0010, b"hello").unwrap();
        let mut b = [0u8; 5];
        ram.read(0x10_0010, &mut b).unwrap();
        assert_eq!(&b, b"hello");
        assert!(ram.read(0x20_0000, &mut b).is_err());
        assert!(ram.write(0x1f_fffe, b"xyz").is_err());
        assert!(ram.read(0, &mut b).is_err());
        ram.unmap(0x10_0000, 1 << 20);
        assert!(ram.read(0x10_0010, &mut b).is_err());
    }
}
