//! The VMware PVRDMA device model (PCI 15ad:0820), as plain Rust with no
//! I/O.
//!
//! This crate owns the guest-facing RDMA device's interface as the stock
//! Linux `vmw_pvrdma` driver and rdma-core's `vmw_pvrdma` provider see it
//! (facts in `docs/pvrdma-abi.md`):
//!
//! - [`abi`]: every structure the guest and the device share, as explicit
//!   little-endian layouts (zerocopy) with compile-time size checks: the
//!   device shared region (DSR) and its caps, the command request and
//!   response slots, the send and receive WQEs, SGEs, CQEs, EQEs and
//!   CQNEs;
//! - [`regs`]: the BAR1 register file and the BAR2 doorbells, decoded into
//!   the actions the device must take;
//! - [`ring`]: the ring indices (2×N encoding with a wrap bit) exactly as
//!   the driver computes them, and two-level page directories;
//! - [`cmd`]: the command channel: a request slot parsed into a typed
//!   command, and typed responses written back;
//! - [`device`]: the device itself: the DSR handshake, activation and
//!   reset, the command set executed synchronously in the REQUEST write
//!   with checked handle tables (contexts, PDs, CQs, MRs, QPs, SRQs,
//!   GIDs), and the translation onto the engine in `transport`: WQEs read
//!   from guest rings on doorbells, CQEs, async events and CQ
//!   notifications written back, MRs as page lists over guest memory;
//! - `driver` (tests, or the `driver-model` feature): the guest driver's
//!   side of all of the above, over any bus.

pub mod abi;
pub mod cmd;
pub mod device;
#[cfg(any(test, feature = "driver-model"))]
pub mod driver;
pub mod regs;
pub mod ring;
