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
//! - [`port`]: raw Ethernet ports (TAP, AF_PACKET) that carry every
//!   frame, for the daemon's switch; the engine's [`eth::EthLink`] can
//!   share one ([`eth::EthLink::on_port`]).
//!
//! A link that goes down or vanishes reports errors for which
//! [`LinkError::is_link_down`] holds; the loop driving the engine then
//! takes the port down.
//!
//! Batching: the `udp` link receives with recvmmsg and sends bursts with
//! sendmmsg ([`Link::send_queued`] and [`Link::flush`]), the `packet`
//! link sends bursts with sendmmsg, the `tap` link writes each burst of
//! one flow as one GSO frame through the TAP's virtio-net header. See the
//! README's status table.

pub mod eth;
pub mod neigh;
pub mod packet;
pub mod port;
mod sys;
pub mod udp;

use std::os::fd::RawFd;

use transport::engine::Transmit;

/// A received RoCEv2 packet, checked, located in the caller's buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Received {
    /// Where the IP header starts in the buffer.
    pub ip_start: usize,
    /// Length of the IP header.
    pub ip_len: usize,
    /// Where the transport packet starts.
    pub ib_start: usize,
    /// Length of the transport packet (BTH through ICRC).
    pub ib_len: usize,
    /// ECN bits.
    pub ecn: u8,
}

impl Received {
    /// Where `frame`, parsed from `buf`, lies in `buf`.
    pub(crate) fn locate(buf: &[u8], frame: &transport::wire::frame::RoceFrame<'_>) -> Received {
        let base = buf.as_ptr() as usize;
        Received {
            ip_start: frame.l3.as_ptr() as usize - base,
            ip_len: frame.repr.ip.header_len(),
            ib_start: frame.ib.as_ptr() as usize - base,
            ib_len: frame.ib.len(),
            ecn: frame.repr.ip.ecn(),
        }
    }
}

impl LinkError {
    /// Whether the error means the link itself is down or gone (the
    /// interface was set down or deleted), rather than a full queue or one
    /// packet the kernel refused. The caller then takes the port down
    /// (`Engine::port_down`), as rxe does when its netdev goes away.
    pub fn is_link_down(&self) -> bool {
        let code = match self {
            LinkError::Device { source, .. }
            | LinkError::Recv(source)
            | LinkError::Send { source, .. } => source.raw_os_error(),
            LinkError::NoInterface(_) => return true,
            _ => None,
        };
        matches!(
            code,
            Some(
                libc::ENETDOWN
                    | libc::ENXIO
                    | libc::ENODEV
                    | libc::EIO
                    | libc::EBADFD
                    | libc::EBADF
            )
        )
    }
}

/// What every link mode offers the loop that drives an engine: sending a
/// packet as the engine wrote it, receiving checked packets, one
/// descriptor to wait on (epoll), and the link's own timers (neighbour
/// resolution). Time is the engine's clock, in nanoseconds.
pub trait Link {
    /// Frames and sends one transport packet (BTH through ICRC); the link
    /// fills in the ICRC.
    fn send(&mut self, t: &Transmit, ib: &mut [u8], now: u64) -> Result<(), LinkError>;
    /// Like [`Link::send`], but the link may hold the packet back to send
    /// it with others in one system call: the caller calls
    /// [`Link::flush`] once it has nothing more to send for now.
    fn send_queued(&mut self, t: &Transmit, ib: &mut [u8], now: u64) -> Result<(), LinkError> {
        self.send(t, ib, now)
    }
    /// Sends what [`Link::send_queued`] held back.
    fn flush(&mut self) -> Result<(), LinkError> {
        Ok(())
    }
    /// The next good RoCEv2 packet for us, if one is waiting.
    fn recv(&mut self, buf: &mut [u8], now: u64) -> Result<Option<Received>, LinkError>;
    /// The descriptor that becomes readable when `recv` has work.
    fn fd(&self) -> RawFd;
    /// When [`Link::handle_timeout`] next has work.
    fn poll_timeout(&self) -> Option<u64> {
        None
    }
    /// Runs the link's timers.
    fn handle_timeout(&mut self, _now: u64) -> Result<(), LinkError> {
        Ok(())
    }
    /// Makes what the link's capture tap holds durable (no-op without one).
    fn flush_tap(&mut self) {}
}

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
