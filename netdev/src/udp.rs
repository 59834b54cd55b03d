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
//! over the real header. A BPF filter on the raw socket ([`raw_filter`])
//! lets only unfragmented datagrams to our address and port 4791 in, so
//! other UDP traffic on the host neither wakes the link nor fills its
//! queue. The UDP socket only holds the port, so the
//! kernel does not answer with ICMP port unreachable; a BPF filter that
//! drops everything keeps the kernel from queueing its copies at all.
//! The raw socket is read with `recvmmsg`, up to 32 datagrams per call,
//! and [`Link::send_queued`] datagrams go out together with `sendmmsg`.
//!
//! IPv6 needs no raw socket. Every IPv6 header field that the ICRC covers
//! is known from the datagram itself: version, payload length, next header
//! (UDP), and the two addresses (traffic class, flow label and hop limit
//! are masked). The link reads through the UDP socket, which is bound to
//! the local address, rebuilds the IPv6 and UDP headers in front of the
//! payload from the sender's address and port, and checks the ICRC over
//! that. Sending uses `IPV6_PMTUDISC_DO`, so the kernel never fragments.
//! Not built yet: the ECN bits of received IPv6 datagrams (they would need
//! `IPV6_RECVTCLASS` control messages); they are reported as 0.

use std::{
    net::{IpAddr, SocketAddr, SocketAddrV4, SocketAddrV6},
    os::fd::AsRawFd,
};

use etherparse::{IpNumber, Ipv4Header, Ipv6Header, UdpHeader};
use socket2::{Domain, Protocol, Socket, Type};
use transport::{
    engine::Transmit,
    wire::{ICRC_LEN, ROCE_V2_UDP_PORT, frame::RoceFrame, icrc},
};

use crate::{
    Link, LinkError, Received,
    sys::{RxBatch, TxBatch, attach_filter, set_int},
};

/// Counters of what the receive path dropped.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct UdpLinkStats {
    /// Datagrams sent (counted when queued).
    pub sent: u64,
    /// RoCEv2 datagrams received with a good ICRC.
    pub received: u64,
    /// Datagrams for us whose ICRC or headers were bad.
    pub bad: u64,
    /// IPv4 datagrams the raw socket delivered that were not for our address
    /// and port (the BPF filter keeps this at zero).
    pub foreign: u64,
}

/// The classic BPF program for the raw IPv4 socket, which sees each
/// datagram from its IP header on (reassembled): accept it whole if it is
/// not a fragment, is addressed to `local` and has UDP destination
/// port 4791; drop anything else.
pub fn raw_filter(local: std::net::Ipv4Addr) -> [libc::sock_filter; 9] {
    use crate::sys::bpf::{
        JEQ_K, JSET_K, LD_H_ABS, LD_H_IND, LD_W_ABS, LDX_MSH, RET_K, jump, stmt,
    };
    [
        stmt(LD_H_ABS, 6),                              // 0: flags, fragment offset
        jump(JSET_K, 0x3fff, 6, 0),                     // 1: a fragment: drop
        stmt(LD_W_ABS, 16),                             // 2: destination address
        jump(JEQ_K, u32::from(local), 0, 4),            // 3: not ours: drop
        stmt(LDX_MSH, 0),                               // 4: X = IP header length
        stmt(LD_H_IND, 2),                              // 5: UDP destination port
        jump(JEQ_K, u32::from(ROCE_V2_UDP_PORT), 0, 1), // 6: not 4791: drop
        stmt(RET_K, 0x4_0000),                          // 7: accept it whole
        stmt(RET_K, 0),                                 // 8: drop
    ]
}

/// A UDP link on one local IPv4 or IPv6 address.
pub struct UdpLink {
    local: IpAddr,
    udp: Socket,
    /// The raw receive socket (IPv4 only).
    raw: Option<Socket>,
    /// Datagrams read ahead from the raw socket.
    rx: RxBatch,
    /// Datagrams queued for one `sendmmsg`.
    tx: TxBatch,
    stats: UdpLinkStats,
}

fn setup(what: &'static str) -> impl Fn(std::io::Error) -> LinkError {
    move |source| LinkError::Setup { what, source }
}

impl UdpLink {
    /// Binds port 4791 on `local`; for IPv4 also opens the raw receive
    /// socket.
    pub fn bind(local: IpAddr) -> Result<UdpLink, LinkError> {
        let domain = match local {
            IpAddr::V4(_) => Domain::IPV4,
            IpAddr::V6(_) => Domain::IPV6,
        };
        let udp = Socket::new(domain, Type::DGRAM, Some(Protocol::UDP)).map_err(setup("UDP"))?;
        if local.is_ipv6() {
            udp.set_only_v6(true).map_err(setup("UDP"))?;
        }
        udp.bind(&SocketAddr::new(local, ROCE_V2_UDP_PORT).into())
            .map_err(setup("UDP"))?;
        udp.set_nonblocking(true).map_err(setup("UDP"))?;
        let raw = match local {
            IpAddr::V4(v4) => {
                set_int(
                    udp.as_raw_fd(),
                    libc::IPPROTO_IP,
                    libc::IP_MTU_DISCOVER,
                    libc::IP_PMTUDISC_DO,
                )
                .map_err(setup("UDP"))?;
                // Every datagram arrives on the raw socket too: the UDP
                // socket's copies are dropped before they are queued.
                let drop_all = [libc::sock_filter {
                    code: 0x06, // BPF_RET | BPF_K
                    jt: 0,
                    jf: 0,
                    k: 0,
                }];
                attach_filter(udp.as_raw_fd(), &drop_all).map_err(setup("UDP (BPF filter)"))?;
                let raw = Socket::new(Domain::IPV4, Type::RAW, Some(Protocol::UDP))
                    .map_err(setup("raw UDP (needs CAP_NET_RAW)"))?;
                raw.set_nonblocking(true).map_err(setup("raw UDP"))?;
                attach_filter(raw.as_raw_fd(), &raw_filter(v4))
                    .map_err(setup("raw UDP (BPF filter)"))?;
                // Bursts of full-MTU datagrams: a larger queue means fewer
                // drops (and retransmissions) when the engine falls behind.
                let _ = raw.set_recv_buffer_size(4 << 20);
                Some(raw)
            }
            IpAddr::V6(_) => {
                set_int(
                    udp.as_raw_fd(),
                    libc::IPPROTO_IPV6,
                    libc::IPV6_MTU_DISCOVER,
                    libc::IPV6_PMTUDISC_DO,
                )
                .map_err(setup("UDP"))?;
                // The traffic class of each datagram, for its ECN bits.
                set_int(
                    udp.as_raw_fd(),
                    libc::IPPROTO_IPV6,
                    libc::IPV6_RECVTCLASS,
                    1,
                )
                .map_err(setup("UDP"))?;
                let _ = udp.set_recv_buffer_size(4 << 20);
                None
            }
        };
        Ok(UdpLink {
            local,
            udp,
            raw,
            rx: RxBatch::new(),
            tx: TxBatch::new(),
            stats: UdpLinkStats::default(),
        })
    }

    /// The local address.
    pub fn local(&self) -> IpAddr {
        self.local
    }

    /// Counters.
    pub fn stats(&self) -> UdpLinkStats {
        self.stats
    }

    /// The file descriptor to wait on for receive: the raw socket for
    /// IPv4, the UDP socket for IPv6.
    pub fn recv_fd(&self) -> std::os::fd::RawFd {
        self.raw.as_ref().unwrap_or(&self.udp).as_raw_fd()
    }

    /// Sends the transport packet `ib` (BTH through ICRC, as the engine
    /// wrote it) per `t`, filling in the ICRC first.
    pub fn send(&mut self, t: &Transmit, ib: &mut [u8]) -> Result<(), LinkError> {
        self.send_queued(t, ib)?;
        self.flush()
    }

    /// Sends what [`UdpLink::send_queued`] queued, with one `sendmmsg`.
    pub fn flush(&mut self) -> Result<(), LinkError> {
        if self.tx.is_empty() {
            return Ok(());
        }
        self.tx.flush(self.udp.as_raw_fd()).map_err(|(source, to)| {
            let to = to.map_or(self.local, |a| a.ip());
            LinkError::Send { to, source }
        })
    }

    /// Like [`UdpLink::send`], but queued until [`UdpLink::flush`] (or
    /// until 32 are queued).
    pub fn send_queued(&mut self, t: &Transmit, ib: &mut [u8]) -> Result<(), LinkError> {
        if ib.len() < ICRC_LEN {
            return Err(LinkError::Unsupported("packet shorter than its ICRC"));
        }
        let dst = t.dgid.to_ip();
        let udp_len = UdpHeader::LEN + ib.len();
        let udp = UdpHeader {
            source_port: ROCE_V2_UDP_PORT,
            destination_port: ROCE_V2_UDP_PORT,
            length: u16::try_from(udp_len)
                .map_err(|_| LinkError::Unsupported("datagram too long"))?,
            checksum: 0,
        };
        let end = ib.len() - ICRC_LEN;
        let crc = match (self.local, dst) {
            (IpAddr::V4(src), IpAddr::V4(dst)) => {
                // The header Linux will put in front: ID 0 and DF for an
                // unconnected socket with PMTU discovery on; TOS, TTL and
                // the checksums are masked by the ICRC.
                let mut ip = Ipv4Header::new(0, 64, IpNumber::UDP, src.octets(), dst.octets())
                    .map_err(|_| LinkError::Unsupported("datagram too long"))?;
                ip.dont_fragment = true;
                ip.identification = 0;
                ip.set_payload_len(udp_len)
                    .map_err(|_| LinkError::Unsupported("datagram too long"))?;
                icrc::compute_joined(&ip.to_bytes(), &udp.to_bytes(), &ib[..end], t.ib_crc)
            }
            (IpAddr::V6(src), IpAddr::V6(dst)) => {
                let ip = v6_header(src.octets(), dst.octets(), udp_len)?;
                icrc::compute_joined(&ip.to_bytes(), &udp.to_bytes(), &ib[..end], t.ib_crc)
            }
            _ => {
                return Err(LinkError::Unsupported(
                    "destination of the other IP version",
                ));
            }
        }
        .map_err(|_| LinkError::Unsupported("malformed transport packet"))?;
        ib[end..].copy_from_slice(&crc.to_le_bytes());
        let to = match dst {
            IpAddr::V4(d) => SocketAddr::V4(SocketAddrV4::new(d, ROCE_V2_UDP_PORT)),
            IpAddr::V6(d) => SocketAddr::V6(SocketAddrV6::new(d, ROCE_V2_UDP_PORT, 0, 0)),
        };
        if self.tx.is_full() {
            self.flush()?;
        }
        self.tx
            .push(ib, to.into())
            .map_err(|()| LinkError::Unsupported("datagram too long"))?;
        self.stats.sent += 1;
        Ok(())
    }

    /// Receives the next good RoCEv2 datagram for us into `buf`, if one is
    /// waiting. Datagrams for other addresses or ports are skipped; ours
    /// with a bad ICRC are counted and dropped.
    pub fn recv(&mut self, buf: &mut [u8]) -> Result<Option<Received>, LinkError> {
        let Some(raw) = &self.raw else {
            return self.recv_v6(buf);
        };
        let fd = raw.as_raw_fd();
        let IpAddr::V4(local) = self.local else {
            unreachable!("the raw socket exists for IPv4 only")
        };
        loop {
            let n = match self.rx.next(fd, buf) {
                Ok(Some(n)) => n,
                Ok(None) => return Ok(None),
                Err(e) => return Err(LinkError::Recv(e)),
            };
            let frame = match RoceFrame::parse_ip(&buf[..n]) {
                Ok(f) => f,
                Err(_) => {
                    // The filter let only our address and port in, so
                    // this is a malformed datagram sent to us.
                    self.stats.bad += 1;
                    continue;
                }
            };
            let for_us = match &frame.repr.ip {
                transport::wire::frame::IpRepr::V4(h) => h.destination == local.octets(),
                transport::wire::frame::IpRepr::V6(_) => false,
            };
            if !for_us {
                self.stats.foreign += 1;
                continue;
            }
            if frame.verify_icrc().is_err() {
                self.stats.bad += 1;
                continue;
            }
            self.stats.received += 1;
            return Ok(Some(Received::locate(buf, &frame)));
        }
    }

    /// The IPv6 receive path: read the payload through the UDP socket and
    /// rebuild the headers in front of it.
    fn recv_v6(&mut self, buf: &mut [u8]) -> Result<Option<Received>, LinkError> {
        const HDRS: usize = Ipv6Header::LEN + UdpHeader::LEN;
        let IpAddr::V6(local) = self.local else {
            unreachable!("recv_v6 runs on IPv6 links only")
        };
        if buf.len() <= HDRS {
            return Err(LinkError::Unsupported("receive buffer too short"));
        }
        loop {
            let Some((n, from, tclass)) = self.recvmsg_v6(&mut buf[HDRS..])? else {
                return Ok(None);
            };
            let udp_len = UdpHeader::LEN + n;
            let (Ok(mut ip), Ok(length)) = (
                v6_header(from.ip().octets(), local.octets(), udp_len),
                u16::try_from(udp_len),
            ) else {
                self.stats.bad += 1;
                continue;
            };
            ip.traffic_class = tclass;
            let udp = UdpHeader {
                source_port: from.port(),
                destination_port: ROCE_V2_UDP_PORT,
                length,
                checksum: 0,
            };
            buf[..Ipv6Header::LEN].copy_from_slice(&ip.to_bytes());
            buf[Ipv6Header::LEN..HDRS].copy_from_slice(&udp.to_bytes());
            let ok = RoceFrame::parse_ip(&buf[..HDRS + n])
                .ok()
                .is_some_and(|f| f.verify_icrc().is_ok());
            if !ok {
                self.stats.bad += 1;
                continue;
            }
            self.stats.received += 1;
            return Ok(Some(Received {
                ip_start: 0,
                ip_len: Ipv6Header::LEN,
                ib_start: HDRS,
                ib_len: n,
                ecn: tclass & 3,
            }));
        }
    }

    /// One datagram from the IPv6 UDP socket into `into`: its length,
    /// sender and traffic class; `None` if none is waiting.
    fn recvmsg_v6(
        &mut self,
        into: &mut [u8],
    ) -> Result<Option<(usize, std::net::SocketAddrV6, u8)>, LinkError> {
        // SAFETY: all-zero is a valid sockaddr_in6 and msghdr.
        let mut from: libc::sockaddr_in6 = unsafe { std::mem::zeroed() };
        let mut control = [0u64; 8];
        let mut iov = libc::iovec {
            iov_base: into.as_mut_ptr().cast(),
            iov_len: into.len(),
        };
        // SAFETY: as above.
        let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
        msg.msg_name = (&mut from as *mut libc::sockaddr_in6).cast();
        msg.msg_namelen = std::mem::size_of::<libc::sockaddr_in6>() as libc::socklen_t;
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control.as_mut_ptr().cast();
        msg.msg_controllen = std::mem::size_of_val(&control);
        // SAFETY: every pointer in `msg` points to a live buffer of the
        // length given next to it, for the duration of the call.
        let n = unsafe { libc::recvmsg(self.udp.as_raw_fd(), &mut msg, 0) };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::WouldBlock {
                return Ok(None);
            }
            return Err(LinkError::Recv(e));
        }
        let mut tclass = 0u8;
        // SAFETY: `msg` was filled by recvmsg; the CMSG macros walk the
        // control buffer within `msg_controllen`, and the IPV6_TCLASS
        // payload is an int.
        unsafe {
            let mut c = libc::CMSG_FIRSTHDR(&msg);
            while !c.is_null() {
                if (*c).cmsg_level == libc::IPPROTO_IPV6 && (*c).cmsg_type == libc::IPV6_TCLASS {
                    let v = std::ptr::read_unaligned(libc::CMSG_DATA(c).cast::<libc::c_int>());
                    tclass = v as u8;
                }
                c = libc::CMSG_NXTHDR(&msg, c);
            }
        }
        let addr = std::net::SocketAddrV6::new(
            std::net::Ipv6Addr::from(from.sin6_addr.s6_addr),
            u16::from_be(from.sin6_port),
            0,
            from.sin6_scope_id,
        );
        Ok(Some((n as usize, addr, tclass)))
    }
}

/// The IPv6 header of a datagram with `udp_len` bytes of UDP, as far as
/// the ICRC sees it (traffic class, flow label and hop limit are masked).
fn v6_header(src: [u8; 16], dst: [u8; 16], udp_len: usize) -> Result<Ipv6Header, LinkError> {
    Ok(Ipv6Header {
        traffic_class: 0,
        flow_label: Default::default(),
        payload_length: u16::try_from(udp_len)
            .map_err(|_| LinkError::Unsupported("datagram too long"))?,
        next_header: IpNumber::UDP,
        hop_limit: 64,
        source: src,
        destination: dst,
    })
}

impl Link for UdpLink {
    fn send(&mut self, t: &Transmit, ib: &mut [u8], _now: u64) -> Result<(), LinkError> {
        UdpLink::send(self, t, ib)
    }
    fn send_queued(&mut self, t: &Transmit, ib: &mut [u8], _now: u64) -> Result<(), LinkError> {
        UdpLink::send_queued(self, t, ib)
    }
    fn flush(&mut self) -> Result<(), LinkError> {
        UdpLink::flush(self)
    }
    fn recv(&mut self, buf: &mut [u8], _now: u64) -> Result<Option<Received>, LinkError> {
        UdpLink::recv(self, buf)
    }
    fn fd(&self) -> std::os::fd::RawFd {
        self.recv_fd()
    }
}
