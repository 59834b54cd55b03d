//! The `vhost-user-rdma` program as a library: the pieces the binary's
//! subcommands are built from, kept here so that tests and fuzz targets
//! can drive them without a process.
//!
//! - [`capture`]: reading pcap and pcapng files frame by frame;
//! - [`decode`]: the `decode` subcommand, a RoCEv2 capture decoder that
//!   validates headers and ICRCs;
//! - [`perf`]: the `perf` subcommand, two engines on an in-memory link;
//! - [`oob`]: the TCP address records of ibv_*_pingpong and perftest;
//! - [`peer`]: the `peer` subcommand, the engine on a real link standing
//!   in for a stock RDMA tool.
//!
//! - [`daemon`]: the daemon (the default with no subcommand): the
//!   virtio-net face over vhost-user, the link, RoCEv2 steering.
//!
//! Not built yet: the stream port and the vfio-user PVRDMA server; see
//! the README's status table.

pub mod capture;
pub mod daemon;
pub mod decode;
pub mod oob;
pub mod pcap_tap;
pub mod peer;
pub mod perf;
pub mod stats_table;
