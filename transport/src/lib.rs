//! The soft RoCE engine: a sans-IO Rust counterpart of Linux `rdma_rxe`.
//!
//! This crate owns everything between raw RoCEv2 bytes and verbs. It does
//! no I/O and starts no threads: packets go in and out as bytes, and time
//! only enters as an explicit `now`.
//!
//! - [`wire`]: typed zero-copy views and plain `Repr` structs for the
//!   InfiniBand transport headers carried in RoCEv2, the per-opcode header
//!   table, and the invariant CRC (ICRC) exactly as Linux rxe and RoCE NICs
//!   compute it. Ethernet, IPv4, IPv6 and UDP come from `etherparse`.
//! - [`engine`]: the device and its verbs objects, driven by
//!   `handle_packet` / `poll_transmit` / `poll_timeout` / `handle_timeout`.
//! - [`qp`]: queue pairs split as rxe splits them (requester, completer,
//!   responder).
//! - [`sim`]: two engines on a simulated, seeded, impaired link.
//! - [`mr`], [`cq`], [`srq`], [`memory`], [`device`], [`verbs`]: memory regions,
//!   completion queues, the memory trait, limits and GIDs, and the verbs
//!   vocabulary.
//!
//! The README's status table says what is working and what is not yet.

pub mod counters;
pub mod cq;
pub mod crc;
pub mod device;
pub mod engine;
pub mod memory;
pub mod mr;
pub mod qp;
pub mod sim;
pub mod srq;
pub mod verbs;
pub mod wire;
