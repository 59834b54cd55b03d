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
//! Not built yet: the engine's packets and timers (the device is not yet
//! wired to the network port, so QPs can be created and posted to but
//! nothing leaves the daemon), and the `-netdev stream` port for the
//! paired vmxnet3.

use std::{fs::File, io::Write, sync::Arc};

use log::{info, warn};
use pvrdma_model::{
    abi::{DEVICE_ID, VENDOR_ID},
    device::{Device, Effects, Limits},
    regs::{BAR1_SIZE, UAR_PAGE, vector},
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

/// The vfio-user backend of the PVRDMA function.
pub struct PvrdmaBackend {
    cfg: PciConfig,
    device: Device<GuestRam>,
    msix: [Option<File>; vector::COUNT as usize],
}

impl PvrdmaBackend {
    /// A function paired with a NIC of `mac`.
    pub fn new(mac: [u8; 6], limits: Limits) -> PvrdmaBackend {
        PvrdmaBackend {
            cfg: PciConfig::pvrdma(limits.max_uar),
            device: Device::new(mac, limits, GuestRam::default()),
            msix: [None, None, None],
        }
    }

    /// The config space (for the regions).
    pub fn config(&self) -> &PciConfig {
        &self.cfg
    }

    /// The device model.
    pub fn device(&self) -> &Device<GuestRam> {
        &self.device
    }

    /// The client went away: its memory and eventfds are gone, and the
    /// next client is a new guest, so the device is reset.
    pub fn disconnected(&mut self) {
        let _ = self.device.bar1_write(pvrdma_model::regs::reg::CTL, 2);
        let ram = self.device.engine_mut().memory_mut();
        ram.unmap(0, u64::MAX);
        self.msix = [None, None, None];
    }

    fn fire(&mut self, fx: Effects) {
        for v in 0..vector::COUNT {
            if fx.interrupts & 1 << v != 0
                && let Some(f) = self.msix[v as usize].as_mut()
            {
                let _ = f.write_all(&1u64.to_ne_bytes());
            }
        }
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
                let v = self.device.bar1_read(offset);
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
                    let fx = self.device.bar1_write(offset, v);
                    self.fire(fx);
                }
            }
            VFIO_PCI_BAR2_REGION_INDEX => {
                if let Some(v) = dword(data) {
                    let fx = self.device.bar2_write(offset, v);
                    self.fire(fx);
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
        let Some(fd) = fd else {
            warn!(
                "DMA map of {size:#x} bytes at {address:#x} without a file: guest memory must be shared (memory-backend-memfd,share=on)"
            );
            return Err(std::io::Error::other("DMA map without a file descriptor"));
        };
        self.device
            .engine_mut()
            .memory_mut()
            .map(address, size, fd, offset)?;
        info!("guest memory mapped: {size:#x} bytes at {address:#x}");
        Ok(())
    }

    fn dma_unmap(&mut self, _flags: DmaUnmapFlags, address: u64, size: u64) -> std::io::Result<()> {
        self.device.engine_mut().memory_mut().unmap(address, size);
        Ok(())
    }

    fn reset(&mut self) -> std::io::Result<()> {
        info!("device reset");
        let fx = self.device.bar1_write(pvrdma_model::regs::reg::CTL, 2);
        self.fire(fx);
        Ok(())
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
            for (i, f) in fds.into_iter().enumerate() {
                if let Some(slot) = self.msix.get_mut(start as usize + i) {
                    *slot = Some(f);
                }
            }
        } else if count == 0 {
            self.msix = [None, None, None];
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
