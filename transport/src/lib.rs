//! The soft RoCE engine: a sans-IO Rust counterpart of Linux `rdma_rxe`.
//!
//! This crate owns everything between raw RoCEv2 bytes and verbs:
//!
//! - [`wire`]: typed zero-copy views and plain `Repr` structs for the
//!   InfiniBand transport headers carried in RoCEv2, the per-opcode header
//!   table, and the invariant CRC (ICRC) exactly as Linux rxe and RoCE NICs
//!   compute it. Ethernet, IPv4, IPv6 and UDP come from `etherparse`.
//!
//! The verbs objects and the RC/UC/UD/GSI transports are not built yet; the
//! README's status table says what is working.

pub mod wire;
