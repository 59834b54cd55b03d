//! Packet I/O for the RoCE engine.
//!
//! This crate owns the links that carry RoCEv2 between the engine in
//! `transport` and a real network. Built so far:
//!
//! - [`udp`]: a kernel UDP socket on port 4791 (IPv4 and IPv6). The
//!   kernel builds IP and UDP; we compute the ICRC over exactly the header
//!   it sends. IPv4 receives through a raw socket so that a peer's ICRC is
//!   checked over the header it really sent; IPv6 rebuilds the header,
//!   since every field the ICRC covers is known.
//! - [`neigh`]: ARP and NDP, sans-IO: answering for our addresses and
//!   resolving neighbours with retries and a clear error, for the links
//!   that build their own Ethernet frames.
//!
//! - [`eth`]: the links with our own Ethernet, IP and UDP headers,
//!   resolving neighbours through [`neigh`]: `tap` (a TAP device) and
//!   `packet` (AF_PACKET on an existing interface, see [`packet`]).
//!
//! Not built yet: batching (sendmmsg/recvmmsg, vnet headers), the link
//! down → QP error path. See the README's status table.

pub mod eth;
pub mod neigh;
pub mod packet;
pub mod udp;

/// Why a link failed.
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    /// Creating or configuring a socket failed.
    #[error("cannot set up the {what} socket")]
    Setup {
        /// Which socket.
        what: &'static str,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// Sending failed.
    #[error("cannot send to {to}")]
    Send {
        /// Destination.
        to: std::net::IpAddr,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// Receiving failed.
    #[error("cannot receive")]
    Recv(#[source] std::io::Error),
    /// Reading or writing the network device failed.
    #[error("network device {name} failed")]
    Device {
        /// The device's name.
        name: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The destination's MAC could not be resolved.
    #[error(transparent)]
    Neighbour(#[from] neigh::NeighError),
    /// No interface of that name.
    #[error("no network interface named {0}")]
    NoInterface(String),
    /// The link cannot carry this packet.
    #[error("unsupported: {0}")]
    Unsupported(&'static str),
}
