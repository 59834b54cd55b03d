//! Packet I/O for the RoCE engine.
//!
//! This crate will own the links that carry RoCEv2 frames between the
//! engine in `transport` and a real network: a kernel UDP socket on port
//! 4791 (`udp`), a TAP device with our own Ethernet/IP/UDP framing and
//! ARP/NDP (`tap`), and AF_PACKET with a BPF filter on an existing NIC
//! (`packet`).
//!
//! Nothing is built here yet; see the status table in the README.
