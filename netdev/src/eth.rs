//! The links that carry our own Ethernet frames: `tap` (a TAP device that
//! we open or create, here) and `packet` (an AF_PACKET socket on an
//! existing interface, opened in [`crate::packet`]). Both are an
//! [`EthLink`] around a file descriptor that reads and writes whole
//! Ethernet frames.
//!
//! This module owns the framing of outgoing packets and the filtering of
//! incoming frames. Neighbour resolution is
//! [`crate::neigh`]'s; this link feeds it every frame and sends what it
//! asks.
//!
//! - Sending: Ethernet (our MAC to the neighbour's), then IPv4 with DF and
//!   ID 0, or IPv6; the traffic class and hop limit come from the engine,
//!   and the UDP source port is the engine's per-QP port, as in rxe. The
//!   ICRC is computed over exactly these headers. IPv6 also gets a real UDP
//!   checksum (a zero one is not allowed there). Headers and packet go out
//!   in one `writev`, without copying the packet.
//! - Batching on a TAP (opened with a virtio-net header): packets sent
//!   with [`EthLink::send_queued`] that belong to one flow and have one
//!   size (the last may be shorter) are gathered into a GSO train, which
//!   [`EthLink::flush_queued`] writes as one frame (`GSO_UDP_L4`); the
//!   kernel cuts it back into one datagram per packet, numbering the IPv4
//!   IDs up from the first, so each packet's ICRC is computed with the ID
//!   it will carry (0, 1, 2, ...). On `packet` the burst goes out with one
//!   `sendmmsg` instead.
//! - A packet for a neighbour not yet resolved waits in a small queue (at
//!   most [`MAX_PENDING`] packets) and goes out when the answer comes; a
//!   neighbour that never answers gives [`LinkError::Neighbour`].
//! - Receiving: frames to our MAC (or broadcast/multicast for ARP and NDP)
//!   with our IP address and UDP port 4791, whose ICRC checks out.

use std::{
    collections::VecDeque,
    fs::File,
    io::Read,
    net::IpAddr,
    os::fd::{AsRawFd, RawFd},
    sync::Arc,
};

use etherparse::{EtherType, Ethernet2Header, IpNumber, Ipv4Header, Ipv6Header, UdpHeader};
use transport::{
    engine::Transmit,
    wire::{
        ICRC_LEN, Mtu, ROCE_V2_UDP_PORT,
        frame::{IpRepr, RoceFrame},
        icrc,
    },
};

use crate::{
    Link, LinkError, Received,
    neigh::{NeighError, Neighbours},
    port::{FramePort, VNET_HDR_LEN, open_tap, read_with_vnet_hdr, write_frame},
    sys::ifreq,
};

/// Header bytes rxe sets aside when it derives the port MTU from the
/// interface MTU (`RXE_MAX_HDR_LENGTH`).
pub const HDR_RESERVE: u32 = 80;

/// The IB MTU that an interface MTU carries, derived as rxe does: the
/// largest IB MTU not above the interface MTU less [`HDR_RESERVE`], at
/// least 256 (1500 gives 1024; 9000 gives 4096).
pub fn ib_mtu_for(if_mtu: u32) -> Mtu {
    let room = if_mtu.saturating_sub(HDR_RESERVE) as usize;
    Mtu::ALL
        .into_iter()
        .rev()
        .find(|m| m.bytes() <= room)
        .unwrap_or(Mtu::Mtu256)
}

/// The MTU of interface `name`, read with SIOCGIFMTU.
pub(crate) fn interface_mtu(name: &str) -> Result<u32, LinkError> {
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::DGRAM, None)
        .map_err(setup("ioctl"))?;
    let mut ifr = ifreq(name)?;
    // SAFETY: `ifr` is laid out as `struct ifreq` (the NUL-terminated name,
    // then the int that SIOCGIFMTU fills) and lives across the call.
    let rc = unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFMTU, ifr.as_mut_ptr()) };
    if rc != 0 {
        return Err(setup("SIOCGIFMTU")(std::io::Error::last_os_error()));
    }
    let mtu = i32::from_ne_bytes(ifr[16..20].try_into().expect("4 bytes"));
    Ok(mtu.max(0) as u32)
}

/// Packets that may wait for neighbour resolution.
pub const MAX_PENDING: usize = 64;

/// Longest header we put in front of a packet: Ethernet + IPv6 + UDP.
const MAX_HDR: usize = Ethernet2Header::LEN + Ipv6Header::LEN + UdpHeader::LEN;

/// Packets one GSO train holds at most: 64, the kernel's
/// `UDP_MAX_SEGMENTS` in older kernels (newer ones take more); the 64 KiB
/// of an IP datagram bound a train too.
const GSO_MAX_SEGS: usize = 64;

/// The flow a GSO train belongs to: every packet of a train has these.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Flow {
    mac: [u8; 6],
    src: IpAddr,
    dst: IpAddr,
    sport: u16,
    traffic_class: u8,
    hop_limit: u8,
}

/// Packets of one flow and one size waiting to be written to a TAP as one
/// GSO frame: the virtio-net header, the first packet's Ethernet, IP and
/// UDP headers, then the packets back to back.
struct GsoTrain {
    buf: Vec<u8>,
    /// Ethernet + IP + UDP header bytes after the virtio-net header.
    hlen: usize,
    flow: Option<Flow>,
    /// Every packet's size but the last one's (`gso_size`).
    seg: usize,
    /// Packets in the train.
    n: usize,
    /// A shorter packet ended the train.
    closed: bool,
}

impl GsoTrain {
    fn new() -> GsoTrain {
        GsoTrain {
            buf: Vec::with_capacity(VNET_HDR_LEN + MAX_HDR + 65536),
            hlen: 0,
            flow: None,
            seg: 0,
            n: 0,
            closed: false,
        }
    }

    /// Where a packet of `flow` and `len` bytes goes: its index in the
    /// train, or `None` when the train must be written first.
    fn slot(&self, flow: &Flow, len: usize) -> Option<usize> {
        let ip_hdr = if flow.dst.is_ipv4() { 20 } else { 0 };
        match self.flow {
            None => Some(0),
            Some(_)
                if self.buf.len() + len - VNET_HDR_LEN - self.hlen + ip_hdr + UdpHeader::LEN
                    > usize::from(u16::MAX) =>
            {
                None
            }
            Some(f) if f == *flow && !self.closed && len <= self.seg && self.n < GSO_MAX_SEGS => {
                Some(self.n)
            }
            Some(_) => None,
        }
    }
}

/// The one's-complement sum of `bytes` as 16-bit big-endian words, folded.
fn ones_sum(parts: &[&[u8]]) -> u16 {
    let mut sum = 0u32;
    for p in parts {
        for w in p.chunks(2) {
            let v = if w.len() == 2 {
                u16::from_be_bytes([w[0], w[1]])
            } else {
                u16::from_be_bytes([w[0], 0])
            };
            sum += u32::from(v);
        }
    }
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum as u16
}

/// Counters of one TAP link.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EthLinkStats {
    /// RoCEv2 frames sent.
    pub sent: u64,
    /// RoCEv2 frames received with a good ICRC.
    pub received: u64,
    /// Frames for us whose ICRC or headers were bad.
    pub bad: u64,
    /// Packets dropped because their neighbour did not answer, or the
    /// pending queue was full.
    pub unresolved: u64,
}

/// What sees every RoCEv2 frame a link sends or takes for us (a capture):
/// the `parts`, concatenated, are the whole Ethernet frame.
pub trait FrameTap: Send + Sync {
    /// One frame.
    fn frame(&mut self, parts: &[&[u8]]);
    /// Makes what was handed over so far durable (called between bursts).
    fn flush(&mut self) {}
}

/// A RoCEv2 link that frames its own Ethernet: on a TAP or on AF_PACKET.
pub struct EthLink {
    file: Arc<File>,
    /// Whether every frame starts with a (zero) virtio-net header.
    vnet_hdr: bool,
    name: String,
    mac: [u8; 6],
    addrs: Vec<IpAddr>,
    neigh: Neighbours,
    pending: VecDeque<(Transmit, Vec<u8>)>,
    stats: EthLinkStats,
    tap: Option<Box<dyn FrameTap>>,
    /// Frames queued by `send_queued` for one `sendmmsg` (sockets only:
    /// the `packet` link).
    pub(crate) tx: Option<crate::sys::TxBatch>,
    /// Packets queued by `send_queued` on a TAP with a virtio-net header,
    /// for one GSO write.
    gso: GsoTrain,
    /// Whether `send_queued` gathers GSO trains (a TAP we opened, so with
    /// a virtio-net header and no `sendmmsg` batch; not a port shared
    /// with the daemon's switch, whose captures and peers expect one
    /// frame per packet there).
    gso_on: bool,
}

fn setup(what: &'static str) -> impl Fn(std::io::Error) -> LinkError {
    move |source| LinkError::Setup { what, source }
}

impl EthLink {
    /// Opens TAP `name` (creating it if it does not exist) without the
    /// packet-information header and with a virtio-net header (for GSO
    /// trains); we are `mac` and own `addrs` on it.
    pub fn tap(name: &str, mac: [u8; 6], addrs: Vec<IpAddr>) -> Result<EthLink, LinkError> {
        // With a virtio-net header, for GSO trains. Without TUNSETOFFLOAD
        // the kernel hands us plain frames (a zero header in front).
        let (file, name, _created) = open_tap(name, true)?;
        let mut link = EthLink::from_file(file, name, mac, addrs);
        link.vnet_hdr = true;
        link.gso_on = true;
        Ok(link)
    }

    /// The engine's link on a device that a [`FramePort`] already has
    /// open (the daemon's switch), sharing its descriptor: this link only
    /// writes to it, and sees incoming frames through
    /// [`EthLink::handle_frame`], which the switch calls for the frames
    /// it steers here.
    pub fn on_port(port: &FramePort, mac: [u8; 6], addrs: Vec<IpAddr>) -> EthLink {
        let mut link = EthLink::on_file(port.file(), port.name().to_string(), mac, addrs);
        link.vnet_hdr = port.vnet_hdr_len() > 0;
        link
    }

    /// A link on `file`, which reads and writes whole Ethernet frames of
    /// interface `name`, where we are `mac` and own `addrs`.
    pub(crate) fn from_file(file: File, name: String, mac: [u8; 6], addrs: Vec<IpAddr>) -> EthLink {
        EthLink::on_file(Arc::new(file), name, mac, addrs)
    }

    fn on_file(file: Arc<File>, name: String, mac: [u8; 6], addrs: Vec<IpAddr>) -> EthLink {
        EthLink {
            file,
            vnet_hdr: false,
            name,
            mac,
            neigh: Neighbours::new(mac, addrs.clone()),
            addrs,
            pending: VecDeque::new(),
            stats: EthLinkStats::default(),
            tap: None,
            tx: None,
            gso: GsoTrain::new(),
            gso_on: false,
        }
    }

    /// Turns GSO trains on a TAP we opened off (or back on): then every
    /// packet is written on its own (for comparisons).
    pub fn set_gso(&mut self, on: bool) {
        self.gso_on = on && self.vnet_hdr;
    }

    /// Replaces our addresses on the link (as a guest binds and unbinds
    /// GIDs): ARP/NDP answers and source addresses follow.
    pub fn set_addrs(&mut self, addrs: Vec<IpAddr>) {
        self.neigh.set_addrs(addrs.clone());
        self.addrs = addrs;
    }

    /// Our MAC address on the link.
    pub fn mac(&self) -> [u8; 6] {
        self.mac
    }

    /// The interface's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The IB MTU the interface carries now (see [`ib_mtu_for`]): set the
    /// engine's port MTU from it, so that no QP picks a path MTU whose
    /// frames the interface would refuse.
    pub fn ib_mtu(&self) -> Result<Mtu, LinkError> {
        Ok(ib_mtu_for(interface_mtu(&self.name)?))
    }

    /// Counters.
    pub fn stats(&self) -> EthLinkStats {
        self.stats
    }

    /// The descriptor to wait on.
    pub fn fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }

    /// When [`EthLink::handle_timeout`] next has work.
    pub fn poll_timeout(&self) -> Option<u64> {
        self.neigh.poll_timeout()
    }

    /// Sends neighbour requests that are due and drops packets waiting for
    /// neighbours that have stopped answering.
    pub fn handle_timeout(&mut self, now: u64) -> Result<(), LinkError> {
        self.neigh.handle_timeout(now);
        self.flush(now)
    }

    /// Sends the transport packet `ib` (BTH through ICRC, as the engine
    /// wrote it) per `t`, filling in the ICRC first. If the neighbour is
    /// not resolved yet, the packet is queued.
    pub fn send(&mut self, t: &Transmit, ib: &mut [u8], now: u64) -> Result<(), LinkError> {
        self.send_to_neighbour(t, ib, now, false)
    }

    /// [`EthLink::send`], with the frame queued for `sendmmsg` if `queue`.
    fn send_to_neighbour(
        &mut self,
        t: &Transmit,
        ib: &mut [u8],
        now: u64,
        queue: bool,
    ) -> Result<(), LinkError> {
        let dst = t.dgid.to_ip();
        match self.neigh.resolve(dst, now) {
            Ok(Some(mac)) => {
                let r = self.emit(t, ib, mac, queue);
                self.flush_control()?;
                r
            }
            Ok(None) => {
                self.flush_control()?;
                if self.pending.len() >= MAX_PENDING {
                    self.stats.unresolved += 1;
                } else {
                    self.pending.push_back((*t, ib.to_vec()));
                }
                Ok(())
            }
            Err(e) => {
                self.stats.unresolved += 1;
                Err(LinkError::Neighbour(e))
            }
        }
    }

    /// Sends the neighbour table's frames, then the pending packets whose
    /// neighbours are known.
    fn flush(&mut self, now: u64) -> Result<(), LinkError> {
        self.flush_control()?;
        let mut result = Ok(());
        for _ in 0..self.pending.len() {
            let Some((t, mut ib)) = self.pending.pop_front() else {
                break;
            };
            match self.neigh.resolve(t.dgid.to_ip(), now) {
                Ok(Some(mac)) => {
                    if let Err(e) = self.emit(&t, &mut ib, mac, false) {
                        result = Err(e);
                    }
                }
                Ok(None) => self.pending.push_back((t, ib)),
                Err(e @ NeighError::Unreachable(_)) | Err(e @ NeighError::NoSource(..)) => {
                    self.stats.unresolved += 1;
                    result = Err(LinkError::Neighbour(e));
                }
            }
        }
        self.flush_control()?;
        result
    }

    fn flush_control(&mut self) -> Result<(), LinkError> {
        while let Some(f) = self.neigh.poll_transmit() {
            self.write_frame(&[&f])?;
        }
        Ok(())
    }

    fn write_frame(&mut self, parts: &[&[u8]]) -> Result<(), LinkError> {
        if self.vnet_hdr {
            const ZERO: [u8; VNET_HDR_LEN] = [0; VNET_HDR_LEN];
            let mut all: [&[u8]; 3] = [&ZERO, &[], &[]];
            for (slot, p) in all[1..].iter_mut().zip(parts) {
                *slot = p;
            }
            return write_frame(&self.file, &self.name, &all[..1 + parts.len().min(2)]);
        }
        write_frame(&self.file, &self.name, parts)
    }

    /// Frames and sends one packet to `mac`; with `queue`, into the
    /// `sendmmsg` batch if the link has one.
    fn emit(
        &mut self,
        t: &Transmit,
        ib: &mut [u8],
        mac: [u8; 6],
        queue: bool,
    ) -> Result<(), LinkError> {
        if ib.len() < ICRC_LEN {
            return Err(LinkError::Unsupported("packet shorter than its ICRC"));
        }
        let udp_len = UdpHeader::LEN + ib.len();
        let mut udp = UdpHeader {
            source_port: t.udp_sport,
            destination_port: ROCE_V2_UDP_PORT,
            length: u16::try_from(udp_len)
                .map_err(|_| LinkError::Unsupported("datagram too long"))?,
            checksum: 0,
        };
        let end = ib.len() - ICRC_LEN;
        let mut hdr = [0u8; MAX_HDR];
        let eth = Ethernet2Header {
            source: self.mac,
            destination: mac,
            ether_type: EtherType::IPV4,
        };
        let too_long = |_| LinkError::Unsupported("datagram too long");
        let (src, dst) = (self.source(t)?, t.dgid.to_ip());
        // On a TAP with a virtio-net header, a queued packet joins the GSO
        // train (written first if this packet cannot join it); anything
        // else goes out after the train, in order.
        let train = queue && self.gso_on;
        let flow = Flow {
            mac,
            src,
            dst,
            sport: t.udp_sport,
            traffic_class: t.traffic_class,
            hop_limit: t.hop_limit,
        };
        let pos = if train {
            match self.gso.slot(&flow, ib.len()) {
                Some(i) => i,
                None => {
                    self.flush_gso()?;
                    0
                }
            }
        } else {
            self.flush_gso()?;
            0
        };
        let hlen = match (src, dst) {
            (IpAddr::V4(src), IpAddr::V4(dst)) => {
                let mut ip =
                    Ipv4Header::new(0, t.hop_limit, IpNumber::UDP, src.octets(), dst.octets())
                        .map_err(too_long)?;
                // The ID the kernel gives this packet when it cuts the
                // train (the ICRC covers it).
                ip.identification = pos as u16;
                ip.dont_fragment = true;
                ip.dscp = etherparse::IpDscp::try_new(t.traffic_class >> 2).unwrap_or_default();
                ip.ecn = etherparse::IpEcn::try_new(t.traffic_class & 3).unwrap_or_default();
                ip.set_payload_len(udp_len)
                    .map_err(|_| LinkError::Unsupported("datagram too long"))?;
                ip.header_checksum = ip.calc_header_checksum();
                let crc =
                    icrc::compute_joined(&ip.to_bytes(), &udp.to_bytes(), &ib[..end], t.ib_crc)
                        .map_err(|_| LinkError::Unsupported("malformed transport packet"))?;
                ib[end..].copy_from_slice(&crc.to_le_bytes());
                hdr[..14].copy_from_slice(&eth.to_bytes());
                hdr[14..34].copy_from_slice(&ip.to_bytes());
                hdr[34..42].copy_from_slice(&udp.to_bytes());
                42
            }
            (IpAddr::V6(src), IpAddr::V6(dst)) => {
                let ip = Ipv6Header {
                    traffic_class: t.traffic_class,
                    flow_label: Default::default(),
                    payload_length: udp.length,
                    next_header: IpNumber::UDP,
                    hop_limit: t.hop_limit,
                    source: src.octets(),
                    destination: dst.octets(),
                };
                let crc =
                    icrc::compute_joined(&ip.to_bytes(), &udp.to_bytes(), &ib[..end], t.ib_crc)
                        .map_err(|_| LinkError::Unsupported("malformed transport packet"))?;
                ib[end..].copy_from_slice(&crc.to_le_bytes());
                udp.checksum = udp
                    .calc_checksum_ipv6(&ip, ib)
                    .map_err(|_| LinkError::Unsupported("datagram too long"))?;
                let eth = Ethernet2Header {
                    ether_type: EtherType::IPV6,
                    ..eth
                };
                hdr[..14].copy_from_slice(&eth.to_bytes());
                hdr[14..54].copy_from_slice(&ip.to_bytes());
                hdr[54..62].copy_from_slice(&udp.to_bytes());
                62
            }
            _ => unreachable!("source() returns an address of the destination's family"),
        };
        if train {
            let g = &mut self.gso;
            if pos == 0 {
                g.buf.clear();
                g.buf.resize(VNET_HDR_LEN, 0);
                g.buf.extend_from_slice(&hdr[..hlen]);
                g.hlen = hlen;
                g.flow = Some(flow);
                g.seg = ib.len();
                g.n = 0;
                g.closed = false;
            }
            g.buf.extend_from_slice(ib);
            g.n += 1;
            g.closed |= ib.len() < g.seg;
        } else if queue && self.tx.is_some() {
            if self.tx.as_ref().is_some_and(|tx| tx.is_full()) {
                self.flush_queued()?;
            }
            if let Some(tx) = &mut self.tx {
                tx.push_parts(&[&hdr[..hlen], ib], None)
                    .map_err(|()| LinkError::Unsupported("frame too long"))?;
            }
        } else {
            self.write_frame(&[&hdr[..hlen], ib])?;
        }
        self.stats.sent += 1;
        if let Some(tap) = &mut self.tap {
            tap.frame(&[&hdr[..hlen], ib]);
        }
        Ok(())
    }

    /// Like [`EthLink::send`], but the packet may wait for
    /// [`EthLink::flush_queued`]: on the `packet` link to go out with
    /// others in one `sendmmsg`, on a TAP we opened in a GSO train.
    pub fn send_queued(&mut self, t: &Transmit, ib: &mut [u8], now: u64) -> Result<(), LinkError> {
        self.send_to_neighbour(t, ib, now, true)
    }

    /// Writes the GSO train, if any: one plain frame for a single packet,
    /// else one `GSO_UDP_L4` frame whose headers cover the whole train
    /// (lengths of all of it, the UDP checksum field holding the
    /// pseudo-header sum for the kernel to finish per packet).
    fn flush_gso(&mut self) -> Result<(), LinkError> {
        let g = &mut self.gso;
        let n = std::mem::take(&mut g.n);
        let Some(flow) = g.flow.take() else {
            return Ok(());
        };
        if n == 0 {
            return Ok(());
        }
        if n > 1 {
            let (v, eth) = (VNET_HDR_LEN, Ethernet2Header::LEN);
            let udp_len = (UdpHeader::LEN + g.buf.len() - v - g.hlen) as u16;
            let ip = v + eth;
            // The addresses, for the pseudo-header, where the header
            // already holds them (no copy on the send path).
            let (ip_len, addrs) = if flow.dst.is_ipv4() {
                (20, ip + 12..ip + 20)
            } else {
                (40, ip + 8..ip + 40)
            };
            let pseudo = ones_sum(&[&g.buf[addrs], &[0, 17], &udp_len.to_be_bytes()]);
            if ip_len == 20 {
                let tot = 20 + udp_len;
                g.buf[ip + 2..ip + 4].copy_from_slice(&tot.to_be_bytes());
                g.buf[ip + 10..ip + 12].fill(0);
                let c = !ones_sum(&[&g.buf[ip..ip + 20]]);
                g.buf[ip + 10..ip + 12].copy_from_slice(&c.to_be_bytes());
            } else {
                g.buf[ip + 4..ip + 6].copy_from_slice(&udp_len.to_be_bytes());
            }
            let udp = ip + ip_len;
            g.buf[udp + 4..udp + 6].copy_from_slice(&udp_len.to_be_bytes());
            g.buf[udp + 6..udp + 8].copy_from_slice(&pseudo.to_be_bytes());
            // virtio_net_hdr: NEEDS_CSUM, GSO_UDP_L4, header length, the
            // segment size, where the UDP checksum starts and sits.
            let le = |x: usize| (x as u16).to_le_bytes();
            g.buf[0] = 1;
            g.buf[1] = 5;
            g.buf[2..4].copy_from_slice(&le(g.hlen));
            g.buf[4..6].copy_from_slice(&le(g.seg));
            g.buf[6..8].copy_from_slice(&le(eth + ip_len));
            g.buf[8..10].copy_from_slice(&le(6));
        }
        write_frame(&self.file, &self.name, &[&self.gso.buf])
    }

    /// Sends the frames [`EthLink::send_queued`] queued (one `sendmmsg`
    /// on `packet`, one GSO write per train on a TAP).
    pub fn flush_queued(&mut self) -> Result<(), LinkError> {
        self.flush_gso()?;
        let Some(tx) = &mut self.tx else {
            return Ok(());
        };
        if tx.is_empty() {
            return Ok(());
        }
        tx.flush(self.file.as_raw_fd())
            .map_err(|(source, _)| LinkError::Device {
                name: self.name.clone(),
                source,
            })
    }

    /// Hands every RoCEv2 frame this link sends, and every good one it
    /// receives for us, to `tap` too (`None` stops that).
    pub fn set_tap(&mut self, tap: Option<Box<dyn FrameTap>>) {
        self.tap = tap;
    }

    /// Flushes the tap, if there is one.
    pub fn flush_tap(&mut self) {
        if let Some(tap) = &mut self.tap {
            tap.flush();
        }
    }

    /// Hands `frame` to the tap, if there is one (for frames that reach
    /// the engine by another way than [`EthLink::recv`]).
    pub fn tap_frame(&mut self, frame: &[u8]) {
        if let Some(tap) = &mut self.tap {
            tap.frame(&[frame]);
        }
    }

    /// The source GID's address if it is ours and of the destination's
    /// family, else our first address of that family.
    fn source(&self, t: &Transmit) -> Result<IpAddr, LinkError> {
        let dst = t.dgid.to_ip();
        let sgid = t.sgid.to_ip();
        if sgid.is_ipv4() == dst.is_ipv4() && self.addrs.contains(&sgid) {
            return Ok(sgid);
        }
        self.addrs
            .iter()
            .copied()
            .find(|a| a.is_ipv4() == dst.is_ipv4())
            .ok_or(LinkError::Unsupported(
                "no local address of the destination's IP version",
            ))
    }

    /// Feeds one incoming frame to neighbour handling: ARP and NDP for or
    /// from our addresses are answered or learnt (which may release
    /// pending packets). Returns whether the frame was one of those.
    pub fn handle_frame(&mut self, frame: &[u8], now: u64) -> Result<bool, LinkError> {
        if self.neigh.handle_frame(frame, now) {
            self.flush(now)?;
            return Ok(true);
        }
        Ok(false)
    }

    /// Receives the next good RoCEv2 frame for us into `buf`, if one is
    /// waiting. ARP and NDP are handled on the way (and may release
    /// pending packets); other frames are skipped; ours with a bad ICRC
    /// are counted and dropped.
    pub fn recv(&mut self, buf: &mut [u8], now: u64) -> Result<Option<Received>, LinkError> {
        loop {
            let r = if self.vnet_hdr {
                // The (zero) virtio-net header first.
                read_with_vnet_hdr(&self.file, &mut [0u8; VNET_HDR_LEN], buf)
            } else {
                (&*self.file).read(buf)
            };
            let n = match r {
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return Ok(None),
                Err(source) => {
                    return Err(LinkError::Device {
                        name: self.name.clone(),
                        source,
                    });
                }
            };
            if self.handle_frame(&buf[..n], now)? {
                continue;
            }
            let Ok(frame) = RoceFrame::parse_ethernet(&buf[..n]) else {
                continue; // not RoCEv2
            };
            let to_us = frame
                .repr
                .ethernet
                .as_ref()
                .is_some_and(|e| e.destination == self.mac);
            let dst = match &frame.repr.ip {
                IpRepr::V4(h) => IpAddr::from(h.destination),
                IpRepr::V6(h) => IpAddr::from(h.destination),
            };
            if !to_us || !self.addrs.contains(&dst) {
                continue;
            }
            if frame.verify_icrc().is_err() {
                self.stats.bad += 1;
                continue;
            }
            self.stats.received += 1;
            if let Some(tap) = &mut self.tap {
                tap.frame(&[&buf[..n]]);
            }
            return Ok(Some(Received::locate(buf, &frame)));
        }
    }
}

impl Link for EthLink {
    fn send(&mut self, t: &Transmit, ib: &mut [u8], now: u64) -> Result<(), LinkError> {
        EthLink::send(self, t, ib, now)
    }
    fn send_queued(&mut self, t: &Transmit, ib: &mut [u8], now: u64) -> Result<(), LinkError> {
        EthLink::send_queued(self, t, ib, now)
    }
    fn flush(&mut self) -> Result<(), LinkError> {
        EthLink::flush_queued(self)
    }
    fn recv(&mut self, buf: &mut [u8], now: u64) -> Result<Option<Received>, LinkError> {
        EthLink::recv(self, buf, now)
    }
    fn fd(&self) -> RawFd {
        EthLink::fd(self)
    }
    fn poll_timeout(&self) -> Option<u64> {
        EthLink::poll_timeout(self)
    }
    fn handle_timeout(&mut self, now: u64) -> Result<(), LinkError> {
        EthLink::handle_timeout(self, now)
    }
    fn flush_tap(&mut self) {
        EthLink::flush_tap(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ib_mtu_follows_rxe() {
        for (if_mtu, ib) in [
            (0, Mtu::Mtu256),
            (300, Mtu::Mtu256),
            (1500, Mtu::Mtu1024),
            (2127, Mtu::Mtu1024),
            (2128, Mtu::Mtu2048),
            (4175, Mtu::Mtu2048),
            (4176, Mtu::Mtu4096),
            (9000, Mtu::Mtu4096),
            (65536, Mtu::Mtu4096),
        ] {
            assert_eq!(ib_mtu_for(if_mtu), ib, "interface MTU {if_mtu}");
        }
    }
}
