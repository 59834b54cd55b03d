//! The VMware PVRDMA device model (PCI 15ad:0820).
//!
//! This crate will own the guest-facing RDMA device as plain Rust with no
//! I/O: the BAR1 register file and the device shared region (DSR), the
//! command set, the two-level page directories, the WQE/CQE/EQE ring
//! formats, and the translation from guest rings onto the verbs of the
//! soft RoCE engine in `transport`.
//!
//! Nothing is built here yet; see the status table in the README.
