//! The BAR1 register file and the BAR2 doorbells.
//!
//! This module owns decoding the guest's MMIO accesses into what the
//! device must do. [`Registers`] holds BAR1's state (VERSION, the DSR
//! address assembled from DSRLOW and DSRHIGH, ERR, ICR, IMR, MAC) and
//! turns each 32-bit write into a [`RegAction`]; a write to DSRHIGH is the
//! moment the DSR is complete. [`Doorbell::decode`] turns a BAR2 write
//! (one 4 KiB UAR page per context: QP at offset 0, CQ at 4, SRQ at 8)
//! into the handle and flags it carries. Accesses the device does not know
//! are reported, never fatal.

/// BAR1 register offsets.
pub mod reg {
    /// Device version (read-only).
    pub const VERSION: u64 = 0x00;
    /// Low half of the DSR's guest address.
    pub const DSRLOW: u64 = 0x04;
    /// High half; writing it completes the DSR address.
    pub const DSRHIGH: u64 = 0x08;
    /// Control ([`super::Ctl`]).
    pub const CTL: u64 = 0x0c;
    /// Command doorbell.
    pub const REQUEST: u64 = 0x10;
    /// Status of the last CTL or REQUEST (0 = success).
    pub const ERR: u64 = 0x14;
    /// Interrupt cause (non-MSI-X mode), clear on read.
    pub const ICR: u64 = 0x18;
    /// Interrupt mask (bit per vector).
    pub const IMR: u64 = 0x1c;
    /// MAC, low 4 bytes.
    pub const MACL: u64 = 0x20;
    /// MAC, high 2 bytes.
    pub const MACH: u64 = 0x24;
}

/// BAR1's size.
pub const BAR1_SIZE: u64 = 0x100;
/// A UAR page's size (one per context in BAR2).
pub const UAR_PAGE: u64 = 4096;

/// Interrupt vectors (MSI-X) and their ICR/IMR bits (`1 << vector`).
pub mod vector {
    /// Command responses.
    pub const COMMAND: u32 = 0;
    /// Async events.
    pub const ASYNC: u32 = 1;
    /// CQ notifications.
    pub const CQ: u32 = 2;
    /// Vectors the device has.
    pub const COUNT: u32 = 3;
}

/// CTL commands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ctl {
    /// Start the device (the driver then reads ERR).
    Activate,
    /// The paired NIC came up.
    Unquiesce,
    /// Stop all DMA and forget every object.
    Reset,
}

/// What a BAR1 write asks of the device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RegAction {
    /// Nothing beyond the register's new value.
    None,
    /// The DSR is at this guest address: read it and fill its caps.
    DsrSet(u64),
    /// A CTL command; the device sets ERR by [`Registers::set_err`].
    Ctl(Ctl),
    /// An unknown CTL value.
    BadCtl(u32),
    /// Execute the command in the command slot.
    Request,
    /// IMR changed.
    Mask(u32),
    /// A write to a read-only or unknown register (ignored).
    Ignored {
        /// Offset.
        offset: u64,
        /// Value.
        value: u32,
    },
}

/// BAR1's state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Registers {
    version: u32,
    dsr_low: u32,
    dsr_high: u32,
    err: u32,
    icr: u32,
    imr: u32,
    mac: [u8; 6],
}

impl Registers {
    /// Registers of a device of `version` whose paired NIC has `mac`.
    /// Everything is masked and ERR reads non-zero until activation.
    pub fn new(version: u32, mac: [u8; 6]) -> Registers {
        Registers {
            version,
            dsr_low: 0,
            dsr_high: 0,
            err: 0xffff,
            icr: 0,
            imr: u32::MAX,
            mac,
        }
    }

    /// A 32-bit read at `offset` (ICR clears on read).
    pub fn read(&mut self, offset: u64) -> u32 {
        match offset {
            reg::VERSION => self.version,
            reg::DSRLOW => self.dsr_low,
            reg::DSRHIGH => self.dsr_high,
            reg::ERR => self.err,
            reg::ICR => std::mem::take(&mut self.icr),
            reg::IMR => self.imr,
            reg::MACL => u32::from_le_bytes([self.mac[0], self.mac[1], self.mac[2], self.mac[3]]),
            reg::MACH => u32::from(u16::from_le_bytes([self.mac[4], self.mac[5]])),
            _ => 0,
        }
    }

    /// A 32-bit write of `value` at `offset`.
    pub fn write(&mut self, offset: u64, value: u32) -> RegAction {
        match offset {
            reg::DSRLOW => {
                self.dsr_low = value;
                RegAction::None
            }
            reg::DSRHIGH => {
                self.dsr_high = value;
                RegAction::DsrSet(u64::from(self.dsr_high) << 32 | u64::from(self.dsr_low))
            }
            reg::CTL => match value {
                0 => RegAction::Ctl(Ctl::Activate),
                1 => RegAction::Ctl(Ctl::Unquiesce),
                2 => RegAction::Ctl(Ctl::Reset),
                v => RegAction::BadCtl(v),
            },
            reg::REQUEST => RegAction::Request,
            reg::IMR => {
                self.imr = value;
                RegAction::Mask(value)
            }
            _ => RegAction::Ignored { offset, value },
        }
    }

    /// Sets ERR (the result of the last CTL or REQUEST).
    pub fn set_err(&mut self, err: u32) {
        self.err = err;
    }

    /// Whether `vector`'s interrupt may be raised now (IMR bit clear).
    /// In non-MSI-X mode the cause is also latched in ICR.
    pub fn raise(&mut self, vector: u32) -> bool {
        if vector >= vector::COUNT {
            return false;
        }
        let bit = 1u32 << vector;
        self.icr |= bit;
        self.imr & bit == 0
    }

    /// The DSR address last written.
    pub fn dsr(&self) -> u64 {
        u64::from(self.dsr_high) << 32 | u64::from(self.dsr_low)
    }
}

/// A doorbell from a BAR2 write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Doorbell {
    /// QP: post sends and/or receives.
    Qp {
        /// UAR page (context).
        uar: u32,
        /// QP handle.
        handle: u32,
        /// New send WQEs.
        send: bool,
        /// New receive WQEs.
        recv: bool,
    },
    /// CQ: arm and/or poll.
    Cq {
        /// UAR page.
        uar: u32,
        /// CQ handle.
        handle: u32,
        /// Arm for the next completion.
        arm: bool,
        /// Arm for the next solicited completion.
        arm_solicited: bool,
        /// The guest found the CQ empty.
        poll: bool,
    },
    /// SRQ: new receive WQEs.
    Srq {
        /// UAR page.
        uar: u32,
        /// SRQ handle.
        handle: u32,
    },
    /// A write the device does not know (offset, value).
    Unknown(u64, u32),
}

const HANDLE_MASK: u32 = 0x00ff_ffff;

impl Doorbell {
    /// Decodes a 32-bit write of `value` at `offset` in BAR2.
    pub fn decode(offset: u64, value: u32) -> Doorbell {
        let uar = (offset / UAR_PAGE) as u32;
        let handle = value & HANDLE_MASK;
        match offset % UAR_PAGE {
            0 => Doorbell::Qp {
                uar,
                handle,
                send: value & 1 << 30 != 0,
                recv: value & 1 << 31 != 0,
            },
            4 => Doorbell::Cq {
                uar,
                handle,
                arm_solicited: value & 1 << 29 != 0,
                arm: value & 1 << 30 != 0,
                poll: value & 1 << 31 != 0,
            },
            8 if value & 1 << 30 != 0 => Doorbell::Srq { uar, handle },
            _ => Doorbell::Unknown(offset, value),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_dsr_address_completes_on_dsrhigh() {
        let mut r = Registers::new(20, [2, 0, 0, 0, 0, 1]);
        assert_eq!(r.read(reg::VERSION), 20);
        assert_ne!(r.read(reg::ERR), 0, "ERR is non-zero before activation");
        assert_eq!(r.write(reg::DSRLOW, 0x1234_5000), RegAction::None);
        assert_eq!(r.write(reg::DSRHIGH, 0x1), RegAction::DsrSet(0x1_1234_5000));
        assert_eq!(r.write(reg::CTL, 0), RegAction::Ctl(Ctl::Activate));
        assert_eq!(r.write(reg::CTL, 2), RegAction::Ctl(Ctl::Reset));
        assert_eq!(r.write(reg::CTL, 7), RegAction::BadCtl(7));
        assert_eq!(r.write(reg::REQUEST, 0), RegAction::Request);
        assert_eq!(
            r.write(reg::VERSION, 5),
            RegAction::Ignored {
                offset: 0,
                value: 5
            }
        );
        assert_eq!(r.read(reg::MACL), 0x0000_0002);
        assert_eq!(r.read(reg::MACH), 0x0100);
    }

    #[test]
    fn interrupts_honour_the_mask_and_icr_clears_on_read() {
        let mut r = Registers::new(20, [0; 6]);
        assert!(!r.raise(vector::COMMAND), "masked until IMR is written");
        r.write(reg::IMR, 0);
        assert!(r.raise(vector::CQ));
        assert_eq!(r.read(reg::ICR), 0b101);
        assert_eq!(r.read(reg::ICR), 0);
        r.write(reg::IMR, 1 << vector::CQ);
        assert!(!r.raise(vector::CQ));
        assert!(r.raise(vector::ASYNC));
        assert!(!r.raise(99));
    }

    #[test]
    fn doorbells_carry_handle_and_flags() {
        assert_eq!(
            Doorbell::decode(0x3000, 1 << 30 | 5),
            Doorbell::Qp {
                uar: 3,
                handle: 5,
                send: true,
                recv: false
            }
        );
        assert_eq!(
            Doorbell::decode(4, 1 << 29 | 0xff_ffff),
            Doorbell::Cq {
                uar: 0,
                handle: 0xff_ffff,
                arm: false,
                arm_solicited: true,
                poll: false
            }
        );
        assert_eq!(
            Doorbell::decode(0x1008, 1 << 30 | 9),
            Doorbell::Srq { uar: 1, handle: 9 }
        );
        assert_eq!(Doorbell::decode(0x100c, 1), Doorbell::Unknown(0x100c, 1));
    }
}
