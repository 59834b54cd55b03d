//! The `udp` link: RoCEv2 over a kernel UDP socket bound to port 4791.
//!
//! Sending: the socket is unconnected and sets `IP_PMTUDISC_DO`, so Linux
//! sends every datagram with DF set and IP ID 0 (checked on this machine).
//! The ICRC is therefore computed over exactly the header the kernel will
//! send: ID 0, DF, the socket's source port, and the real lengths (the
//! variant fields are masked anyway).
//!
//! Receiving: a peer such as kernel rxe sends non-zero IP IDs, which a UDP
//! socket never shows. The link therefore reads datagrams through a raw
//! `IPPROTO_UDP` socket (needs CAP_NET_RAW), which delivers the whole IP
//! packet, keeps those for our address and port 4791, and checks the ICRC
//! over the real header. The UDP socket only holds the port, so the
//! kernel does not answer with ICMP port unreachable; what it queues is
//! discarded.

use std::{
    io::Read,
    mem::MaybeUninit,
    net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4},
    os::fd::AsRawFd,
};

use etherparse::{IpNumber, Ipv4Header, UdpHeader};
use socket2::{Domain, Protocol, Socket, Type};
use transport::{
    engine::Transmit,
    wire::{ICRC_LEN, ROCE_V2_UDP_PORT, frame::RoceFrame, icrc},
};

use crate::LinkError;

/// A received RoCEv2 datagram, checked.
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

/// Counters of what the receive path dropped.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct UdpLinkStats {
    /// Datagrams sent.
    pub sent: u64,
    /// RoCEv2 datagrams received with a good ICRC.
    pub received: u64,
    /// Datagrams for us whose ICRC or headers were bad.
    pub bad: u64,
}

/// A UDP link on one local IPv4 address.
pub struct UdpLink {
    local: Ipv4Addr,
    udp: Socket,
    raw: Socket,
    stats: UdpLinkStats,
    discard: Vec<MaybeUninit<u8>>,
}

fn setup(what: &'static str) -> impl Fn(std::io::Error) -> LinkError {
    move |source| LinkError::Setup { what, source }
}

impl UdpLink {
    /// Binds port 4791 on `local` and opens the raw receive socket.
    pub fn bind(local: IpAddr) -> Result<UdpLink, LinkError> {
        let IpAddr::V4(local) = local else {
            return Err(LinkError::Unsupported("IPv6 on the UDP link"));
        };
        let udp =
            Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP)).map_err(setup("UDP"))?;
        let addr = SocketAddr::V4(SocketAddrV4::new(local, ROCE_V2_UDP_PORT));
        udp.bind(&addr.into()).map_err(setup("UDP"))?;
        udp.set_nonblocking(true).map_err(setup("UDP"))?;
        let mode: libc::c_int = libc::IP_PMTUDISC_DO;
        // SAFETY: `udp` is an open socket; the option value is a c_int that
        // lives across the call, and its size is passed exactly.
        let rc = unsafe {
            libc::setsockopt(
                udp.as_raw_fd(),
                libc::IPPROTO_IP,
                libc::IP_MTU_DISCOVER,
                (&raw const mode).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if rc != 0 {
            return Err(setup("UDP")(std::io::Error::last_os_error()));
        }
        let raw = Socket::new(Domain::IPV4, Type::RAW, Some(Protocol::UDP))
            .map_err(setup("raw UDP (needs CAP_NET_RAW)"))?;
        raw.set_nonblocking(true).map_err(setup("raw UDP"))?;
        // Bursts of full-MTU datagrams: a larger queue means fewer drops
        // (and retransmissions) when the engine falls behind.
        let _ = raw.set_recv_buffer_size(4 << 20);
        Ok(UdpLink {
            local,
            udp,
            raw,
            stats: UdpLinkStats::default(),
            discard: vec![MaybeUninit::uninit(); 65536],
        })
    }

    /// The local address.
    pub fn local(&self) -> IpAddr {
        IpAddr::V4(self.local)
    }

    /// Counters.
    pub fn stats(&self) -> UdpLinkStats {
        self.stats
    }

    /// File descriptors to wait on for receive: the raw socket.
    pub fn recv_fd(&self) -> std::os::fd::RawFd {
        self.raw.as_raw_fd()
    }

    /// Sends the transport packet `ib` (BTH through ICRC, as the engine
    /// wrote it) per `t`, filling in the ICRC first.
    pub fn send(&mut self, t: &Transmit, ib: &mut [u8]) -> Result<(), LinkError> {
        let IpAddr::V4(dst) = t.dgid.to_ip() else {
            return Err(LinkError::Unsupported("IPv6 on the UDP link"));
        };
        if ib.len() < ICRC_LEN {
            return Err(LinkError::Unsupported("packet shorter than its ICRC"));
        }
        let udp_len = UdpHeader::LEN + ib.len();
        // The header Linux will put in front: ID 0 and DF for an
        // unconnected socket with PMTU discovery on; TOS, TTL and the
        // checksums are masked by the ICRC.
        let mut ip = Ipv4Header::new(0, 64, IpNumber::UDP, self.local.octets(), dst.octets())
            .map_err(|_| LinkError::Unsupported("datagram too long"))?;
        ip.dont_fragment = true;
        ip.identification = 0;
        ip.set_payload_len(udp_len)
            .map_err(|_| LinkError::Unsupported("datagram too long"))?;
        let udp = UdpHeader {
            source_port: ROCE_V2_UDP_PORT,
            destination_port: ROCE_V2_UDP_PORT,
            length: udp_len as u16,
            checksum: 0,
        };
        let end = ib.len() - ICRC_LEN;
        let crc = icrc::compute_parts(&ip.to_bytes(), &udp.to_bytes(), &ib[..end])
            .map_err(|_| LinkError::Unsupported("malformed transport packet"))?;
        ib[end..].copy_from_slice(&crc.to_le_bytes());
        let to = SocketAddr::V4(SocketAddrV4::new(dst, ROCE_V2_UDP_PORT));
        self.udp
            .send_to(ib, &to.into())
            .map_err(|source| LinkError::Send {
                to: IpAddr::V4(dst),
                source,
            })?;
        self.stats.sent += 1;
        Ok(())
    }

    /// Receives the next good RoCEv2 datagram for us into `buf`, if one is
    /// waiting. Datagrams for other addresses or ports are skipped; ours
    /// with a bad ICRC are counted and dropped.
    pub fn recv(&mut self, buf: &mut [u8]) -> Result<Option<Received>, LinkError> {
        // The UDP socket's copies are never read otherwise.
        while self.udp.recv(&mut self.discard).is_ok() {}
        loop {
            let n = match (&self.raw).read(buf) {
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return Ok(None),
                Err(e) => return Err(LinkError::Recv(e)),
            };
            let frame = match RoceFrame::parse_ip(&buf[..n]) {
                Ok(f) => f,
                Err(_) => continue, // not RoCEv2: another UDP user's datagram
            };
            let for_us = match &frame.repr.ip {
                transport::wire::frame::IpRepr::V4(h) => h.destination == self.local.octets(),
                transport::wire::frame::IpRepr::V6(_) => false,
            };
            if !for_us {
                continue;
            }
            if frame.verify_icrc().is_err() {
                self.stats.bad += 1;
                continue;
            }
            self.stats.received += 1;
            let base = buf.as_ptr() as usize;
            let ip_start = frame.l3.as_ptr() as usize - base;
            let ib_start = frame.ib.as_ptr() as usize - base;
            return Ok(Some(Received {
                ip_start,
                ip_len: frame.repr.ip.header_len(),
                ib_start,
                ib_len: frame.ib.len(),
                ecn: frame.repr.ip.ecn(),
            }));
        }
    }
}
