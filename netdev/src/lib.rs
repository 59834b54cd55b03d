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
//! - [`tap`]: a TAP device with our own Ethernet, IP and UDP headers,
//!   resolving neighbours through [`neigh`].
//!
//! Not built yet: the `packet` link (AF_PACKET with a BPF filter), batching. See
//! the README's status table.

pub mod neigh;
pub mod tap;
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
    /// Reading or writing the TAP device failed.
    #[error("TAP device {name} failed")]
    Tap {
        /// The TAP's name.
        name: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The destination's MAC could not be resolved.
    #[error(transparent)]
    Neighbour(#[from] neigh::NeighError),
    /// The link cannot carry this packet.
    #[error("unsupported: {0}")]
    Unsupported(&'static str),
}
