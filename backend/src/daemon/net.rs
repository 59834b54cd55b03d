//! The virtio-net face: a virtio-net device (ID 1) served over vhost-user
//! with rust-vmm's `vhost-user-backend`, whose frames go to and from the
//! link's [`FramePort`], and from whose incoming traffic the switch takes
//! RoCEv2 for the VM's RDMA addresses ([`super::switch`]).
//!
//! This module owns the two vrings (RX 0, TX 1), the virtio-net header,
//! mergeable RX buffers, the config space, offloads, and the checks that
//! keep a hostile guest's descriptors from doing harm.
//!
//! Offloads (on a TAP, which carries a virtio-net header per frame): the
//! guest's header goes to the kernel untouched and the kernel's to the
//! guest, so partial checksums and TCP segments up to 64 KiB pass both
//! ways (CSUM, HOST_TSO4/6, GUEST_CSUM, GUEST_TSO4/6 and ECN). On an
//! AF_PACKET port none are offered.
//!
//! The checks:
//! - every guest address goes through vm-memory, which refuses anything
//!   outside the guest's regions;
//! - a TX chain with a device-writable descriptor, a chain that still
//!   points on after as many descriptors as the queue holds (a loop), a
//!   frame longer than 64 KiB and a frame with no data past its header
//!   are dropped and counted;
//! - an RX chain with a read-only descriptor is returned unused, and the
//!   frame is dropped;
//! - an avail index that runs more than the queue size ahead marks the
//!   queue broken until the driver resets the device.
//!
//! The first few of each kind are logged at `warn`, then only counted,
//! so a guest cannot flood the log.
//!
//! One worker thread (the library's epoll loop) handles both queues and
//! the port; everything it touches is in [`NetBackend`], behind one lock
//! taken once per event, never per frame.

use std::{io, net::IpAddr, time::Instant};

use log::{info, warn};
use netdev::{
    eth::EthLink,
    port::{FramePort, offload},
};
use transport::{
    device::{DeviceAttrs, Gid},
    engine::{Engine, RxMeta},
    memory::VecMemory,
    wire::frame::RoceFrame,
};
use vhost::vhost_user::message::{VhostUserProtocolFeatures, VhostUserVirtioFeatures};
use vhost_user_backend::{VhostUserBackendMut, VringRwLock, VringT};
use virtio_bindings::{
    virtio_config::VIRTIO_F_VERSION_1,
    virtio_net::{
        VIRTIO_NET_F_CSUM, VIRTIO_NET_F_GUEST_CSUM, VIRTIO_NET_F_GUEST_ECN,
        VIRTIO_NET_F_GUEST_TSO4, VIRTIO_NET_F_GUEST_TSO6, VIRTIO_NET_F_HOST_ECN,
        VIRTIO_NET_F_HOST_TSO4, VIRTIO_NET_F_HOST_TSO6, VIRTIO_NET_F_MAC, VIRTIO_NET_F_MRG_RXBUF,
        VIRTIO_NET_F_MTU, VIRTIO_NET_F_STATUS, VIRTIO_NET_S_LINK_UP,
    },
    virtio_ring::{VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC},
};
use virtio_queue::{QueueOwnedT, QueueT};
use vm_memory::{Address, Bytes, GuestAddressSpace, GuestMemoryAtomic, GuestMemoryMmap};
use vmm_sys_util::{
    epoll::EventSet,
    event::{EventConsumer, EventFlag, EventNotifier, new_event_consumer_and_notifier},
};

use super::switch::{Steer, steer};

/// The RX queue's index.
pub const RX_QUEUE: u16 = 0;
/// The TX queue's index.
pub const TX_QUEUE: u16 = 1;
/// Number of queues (one RX/TX pair).
pub const NUM_QUEUES: usize = 2;
/// The event of the link's port in the worker's epoll set. Values up to
/// [`NUM_QUEUES`] belong to the queues and the exit event.
pub const PORT_EVENT: u16 = NUM_QUEUES as u16 + 1;

/// The virtio-net header with VERSION_1 or MRG_RXBUF
/// (`struct virtio_net_hdr_v1`).
pub const VNET_HDR_LEN: usize = 12;
/// The legacy header without MRG_RXBUF.
const VNET_HDR_LEGACY_LEN: usize = 10;
/// Offset of `num_buffers` in the header.
const NUM_BUFFERS_OFF: u64 = 10;
/// The largest frame either way: a 64 KiB IP packet plus Ethernet and a
/// VLAN tag.
pub const MAX_FRAME: usize = 65535 + 18;
/// The most RX buffers one frame may be merged over.
const MAX_MERGE: usize = 64;
/// Log lines per kind of guest error before they are only counted.
const LOG_LIMIT: u64 = 8;

/// The guest memory type of the daemon.
pub type GuestMem = GuestMemoryAtomic<GuestMemoryMmap>;

/// What the net face is configured with.
#[derive(Debug, Clone)]
pub struct NetConfig {
    /// The guest NIC's MAC (config space; also the engine's MAC).
    pub mac: [u8; 6],
    /// The MTU in config space.
    pub mtu: u16,
    /// Largest queue the driver may set up.
    pub queue_size: u16,
    /// The VM's RDMA addresses; empty when the engine is off.
    pub rdma: Vec<IpAddr>,
}

/// Counters of the net face.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NetStats {
    /// Frames from the guest written to the link.
    pub tx_frames: u64,
    /// Bytes of those frames.
    pub tx_bytes: u64,
    /// Frames from the link delivered to the guest.
    pub rx_frames: u64,
    /// Bytes of those frames.
    pub rx_bytes: u64,
    /// Frames from the link steered to the engine.
    pub to_engine: u64,
    /// Of those, frames that were not valid RoCEv2 (bad ICRC, truncated).
    pub engine_bad: u64,
    /// Guest TX chains dropped as malformed.
    pub tx_bad: u64,
    /// Guest RX chains refused as malformed (frame dropped).
    pub rx_bad: u64,
    /// Frames from the link dropped because the guest had no RX buffer
    /// (only while the engine is on; otherwise the port waits).
    pub rx_no_buffer: u64,
    /// Frames the link refused.
    pub link_errors: u64,
    /// Times a queue was marked broken.
    pub broken: u64,
}

/// Why a guest chain was refused.
#[derive(Debug, thiserror::Error)]
pub enum ChainError {
    /// A descriptor points outside guest memory.
    #[error("descriptor {addr:#x}+{len} is outside guest memory")]
    BadAddress {
        /// Guest address.
        addr: u64,
        /// Length.
        len: u32,
    },
    /// A TX descriptor is device-writable.
    #[error("TX chain has a device-writable descriptor")]
    WriteOnlyInTx,
    /// An RX descriptor is read-only.
    #[error("RX chain has a read-only descriptor at {addr:#x}")]
    ReadOnlyInRx {
        /// Guest address.
        addr: u64,
    },
    /// The chain still points on after as many descriptors as the queue
    /// has: it loops.
    #[error("descriptor chain loops or is longer than the queue")]
    Loop,
    /// The frame is longer than [`MAX_FRAME`].
    #[error("frame longer than {MAX_FRAME} bytes")]
    TooLong,
    /// No data past the virtio-net header.
    #[error("chain of {0} bytes holds no frame past the virtio-net header")]
    Empty(usize),
    /// The RX buffer is too small for the header, or (without mergeable
    /// buffers) for the frame.
    #[error("RX buffer of {have} bytes cannot hold {need}")]
    RxTooSmall {
        /// Needed.
        need: usize,
        /// Offered.
        have: usize,
    },
    /// More RX buffers than [`MAX_MERGE`] would be needed.
    #[error("frame needs more than {MAX_MERGE} RX buffers")]
    TooManyBuffers,
}

/// The engine's side of the switch: RoCEv2 for the VM's RDMA addresses
/// arrives here, and the engine's packets leave through an [`EthLink`] on
/// the same port.
///
/// Until the PVRDMA device drives it (not built yet), the engine has no
/// QPs: it checks every packet steered to it and drops it, as rxe does
/// for a QP that does not exist.
pub struct EngineFace {
    engine: Engine<VecMemory>,
    link: EthLink,
    clock: Instant,
}

impl EngineFace {
    /// An engine owning `rdma` (GIDs in that order) with `mac` on `port`.
    pub fn new(port: &FramePort, mac: [u8; 6], rdma: &[IpAddr]) -> EngineFace {
        let mut engine = Engine::new(DeviceAttrs::default(), VecMemory::new(0));
        for (i, ip) in rdma.iter().enumerate() {
            engine.gids_mut().set(i, Some(Gid::from_ip(*ip)));
        }
        EngineFace {
            engine,
            link: EthLink::on_port(port, mac, rdma.to_vec()),
            clock: Instant::now(),
        }
    }

    fn now(&self) -> u64 {
        self.clock.elapsed().as_nanos() as u64
    }

    /// Feeds ARP and NDP to the link's neighbour table (the frame also
    /// goes to the guest).
    pub(crate) fn control(&mut self, frame: &[u8]) {
        let now = self.now();
        let _ = self.link.handle_frame(frame, now);
    }

    /// Hands a steered frame to the engine; false if it was not valid
    /// RoCEv2.
    pub(crate) fn packet(&mut self, frame: &[u8]) -> bool {
        let Ok(f) = RoceFrame::parse_ethernet(frame) else {
            return false;
        };
        if f.verify_icrc().is_err() {
            return false;
        }
        let now = self.now();
        let meta = RxMeta {
            ip_header: &f.l3[..f.repr.ip.header_len()],
            ecn: f.repr.ip.ecn(),
        };
        let _ = self.engine.handle_packet(now, &meta, f.ib);
        true
    }
}

/// The vhost-user backend of the net face.
pub struct NetBackend {
    cfg: NetConfig,
    port: FramePort,
    engine: Option<EngineFace>,
    mem: Option<GuestMem>,
    acked: u64,
    event_idx: bool,
    /// Whether the port carries virtio-net headers (a TAP), so that
    /// checksum and segmentation offloads pass between guest and kernel.
    offload: bool,
    /// The port's header of the pending frame (zero without offload).
    rx_hdr: [u8; VNET_HDR_LEN],
    /// A frame read from the port, not yet delivered: `rx_buf[..rx_len]`.
    rx_buf: Box<[u8]>,
    rx_len: usize,
    tx_buf: Box<[u8]>,
    broken: [bool; NUM_QUEUES],
    stats: NetStats,
    logged: u64,
}

/// Whether the driver has finished setting the queue up (enabled, with
/// its rings): only then can anything in it be the guest's error.
fn queue_set_up(q: &impl QueueT) -> bool {
    q.ready() && q.avail_ring() != 0
}

impl NetBackend {
    /// A backend serving `cfg` on `port`, with the engine on if
    /// `cfg.rdma` is not empty.
    pub fn new(cfg: NetConfig, port: FramePort) -> NetBackend {
        let engine = (!cfg.rdma.is_empty()).then(|| EngineFace::new(&port, cfg.mac, &cfg.rdma));
        NetBackend {
            offload: port.vnet_hdr_len() == VNET_HDR_LEN,
            rx_hdr: [0; VNET_HDR_LEN],
            cfg,
            port,
            engine,
            mem: None,
            acked: 0,
            event_idx: false,
            rx_buf: vec![0; MAX_FRAME].into_boxed_slice(),
            rx_len: 0,
            tx_buf: vec![0; MAX_FRAME + VNET_HDR_LEN].into_boxed_slice(),
            broken: [false; NUM_QUEUES],
            stats: NetStats::default(),
            logged: 0,
        }
    }

    /// Counters so far.
    pub fn stats(&self) -> NetStats {
        self.stats
    }

    /// The link's port.
    pub fn port(&self) -> &FramePort {
        &self.port
    }

    /// Forgets the connection's queues and memory (QEMU went away); the
    /// port, the engine and the counters stay.
    pub fn disconnected(&mut self) {
        self.mem = None;
        self.rx_len = 0;
        self.broken = [false; NUM_QUEUES];
    }

    fn hdr_len(&self) -> usize {
        if self.acked & (1 << VIRTIO_F_VERSION_1 | 1 << VIRTIO_NET_F_MRG_RXBUF) != 0 {
            VNET_HDR_LEN
        } else {
            VNET_HDR_LEGACY_LEN
        }
    }

    fn mergeable(&self) -> bool {
        self.acked & (1 << VIRTIO_NET_F_MRG_RXBUF) != 0
    }

    fn guest_error(&mut self, queue: &str, e: &ChainError) {
        self.logged += 1;
        if self.logged <= LOG_LIMIT {
            warn!("guest {queue} queue: {e}; frame dropped");
        } else if self.logged == LOG_LIMIT + 1 {
            warn!("guest queue errors continue; counting them without logging");
        }
    }

    fn mark_broken(&mut self, q: u16, e: &dyn std::fmt::Display) {
        if !self.broken[q as usize] {
            self.broken[q as usize] = true;
            self.stats.broken += 1;
            warn!(
                "guest {} queue is broken ({e}); it stays stopped until the driver resets the device",
                if q == RX_QUEUE { "RX" } else { "TX" }
            );
        }
    }

    /// Moves the guest's frames from the TX queue to the port.
    fn tx(&mut self, vring: &VringRwLock<GuestMem>) {
        loop {
            if self.event_idx {
                let _ = vring.disable_notification();
            }
            self.tx_batch(vring);
            if self.broken[TX_QUEUE as usize] || !self.event_idx {
                break;
            }
            match vring.enable_notification() {
                Ok(true) => continue,
                Ok(false) => break,
                Err(e) => {
                    self.mark_broken(TX_QUEUE, &e);
                    break;
                }
            }
        }
    }

    fn tx_batch(&mut self, vring: &VringRwLock<GuestMem>) {
        let Some(mem) = self.mem.as_ref().map(|m| m.memory()) else {
            return;
        };
        let hdr_len = self.hdr_len();
        let mut used = false;
        while !self.broken[TX_QUEUE as usize] {
            let chain = {
                let mut st = vring.get_mut();
                if !queue_set_up(st.get_queue()) {
                    // Not a guest error: the queue is being set up (or
                    // reset); its kick brings us back.
                    break;
                }
                match st.get_queue_mut().iter(mem.clone()) {
                    Ok(mut it) => it.next(),
                    Err(e) => {
                        drop(st);
                        self.mark_broken(TX_QUEUE, &e);
                        break;
                    }
                }
            };
            let Some(chain) = chain else { break };
            let head = chain.head_index();
            match gather(chain, &mem, &mut self.tx_buf) {
                Ok(n) if n <= hdr_len => {
                    self.stats.tx_bad += 1;
                    self.guest_error("TX", &ChainError::Empty(n));
                }
                Ok(n) => {
                    let frame = &self.tx_buf[hdr_len..n];
                    // With offload the guest's header goes to the kernel
                    // as it is (a legacy 10-byte one padded to 12).
                    let mut hdr = [0u8; VNET_HDR_LEN];
                    hdr[..hdr_len].copy_from_slice(&self.tx_buf[..hdr_len]);
                    let written = if self.offload {
                        self.port.write(&[&hdr, frame])
                    } else {
                        self.port.write(&[frame])
                    };
                    match written {
                        Ok(()) => {
                            self.stats.tx_frames += 1;
                            self.stats.tx_bytes += frame.len() as u64;
                        }
                        Err(_) => self.stats.link_errors += 1,
                    }
                }
                Err(e) => {
                    self.stats.tx_bad += 1;
                    self.guest_error("TX", &e);
                }
            }
            if let Err(e) = vring.add_used(head, 0) {
                self.mark_broken(TX_QUEUE, &e);
                break;
            }
            used = true;
        }
        if used && vring.needs_notification().unwrap_or(true) {
            let _ = vring.signal_used_queue();
        }
    }

    /// Reads frames from the port: RoCEv2 for the RDMA addresses to the
    /// engine, the rest into the guest's RX queue. Without RX buffers the
    /// port is left unread until the guest adds some (it kicks the RX
    /// queue), unless the engine is on: then the guest's frame is dropped
    /// so that the engine's traffic never waits on the guest.
    fn rx(&mut self, vring: &VringRwLock<GuestMem>) {
        let mut delivered = false;
        loop {
            if self.rx_len == 0 {
                match self.port.read_vnet(&mut self.rx_hdr, &mut self.rx_buf) {
                    Ok(Some(n)) => self.rx_len = n,
                    Ok(None) => break,
                    Err(e) => {
                        self.stats.link_errors += 1;
                        warn!("reading the link failed: {e}");
                        break;
                    }
                }
                let frame = &self.rx_buf[..self.rx_len];
                if let Some(engine) = self.engine.as_mut() {
                    match steer(frame, &self.cfg.rdma) {
                        Steer::Engine => {
                            self.stats.to_engine += 1;
                            if !engine.packet(frame) {
                                self.stats.engine_bad += 1;
                            }
                            self.rx_len = 0;
                            continue;
                        }
                        Steer::Guest => engine.control(frame),
                    }
                }
            }
            match self.deliver(vring) {
                Ok(true) => {
                    self.stats.rx_frames += 1;
                    self.stats.rx_bytes += self.rx_len as u64;
                    self.rx_len = 0;
                    delivered = true;
                }
                Ok(false) => {
                    // Too few buffers (or no queue yet). First let the
                    // guest take what it has been given: it refills only
                    // after it has, so holding the interrupt back until
                    // the frame fits would wait forever.
                    if delivered {
                        if vring.needs_notification().unwrap_or(true) {
                            let _ = vring.signal_used_queue();
                        }
                        delivered = false;
                    }
                    // Then ask for a kick, and look again in case buffers
                    // came meanwhile.
                    let more = !self.broken[RX_QUEUE as usize] && self.want_rx_kick(vring);
                    if more {
                        continue;
                    }
                    if self.engine.is_some() {
                        self.stats.rx_no_buffer += 1;
                        self.rx_len = 0;
                        continue;
                    }
                    break;
                }
                Err(e) => {
                    self.stats.rx_bad += 1;
                    self.guest_error("RX", &e);
                    self.rx_len = 0;
                    delivered = true;
                }
            }
        }
        if delivered && vring.needs_notification().unwrap_or(true) {
            let _ = vring.signal_used_queue();
        }
    }

    /// Asks the guest to kick the RX queue when it adds buffers beyond
    /// those there now, and says whether some came meanwhile. A frame
    /// that needs several mergeable buffers may find some but not enough:
    /// with EVENT_IDX the kick threshold must then be the avail index, not
    /// our position before those buffers (the guest would never cross it
    /// again, and the frame would wait forever).
    fn want_rx_kick(&self, vring: &VringRwLock<GuestMem>) -> bool {
        let Some(mem) = self.mem.as_ref().map(|m| m.memory()) else {
            return false;
        };
        let mut st = vring.get_mut();
        let q = st.get_queue_mut();
        if !queue_set_up(q) {
            // No rings to write the threshold into yet.
            return false;
        }
        let next = q.next_avail();
        let Ok(avail) = q.avail_idx(&*mem, std::sync::atomic::Ordering::Acquire) else {
            return false;
        };
        q.set_next_avail(avail.0);
        let more = q.enable_notification(&*mem).unwrap_or(false);
        q.set_next_avail(next);
        more
    }

    /// Writes the pending frame into the RX queue, over as many chains as
    /// it takes when buffers are mergeable. `Ok(false)` when the queue
    /// has too few buffers (nothing is consumed then).
    fn deliver(&mut self, vring: &VringRwLock<GuestMem>) -> Result<bool, ChainError> {
        if self.broken[RX_QUEUE as usize] {
            return Ok(false);
        }
        let Some(mem) = self.mem.as_ref().map(|m| m.memory()) else {
            return Ok(false);
        };
        let hdr_len = self.hdr_len();
        let mergeable = self.mergeable();
        let frame = &self.rx_buf[..self.rx_len];
        let total = hdr_len + frame.len();
        let mut hdr = if self.offload {
            self.rx_hdr
        } else {
            [0u8; VNET_HDR_LEN]
        };
        hdr[NUM_BUFFERS_OFF as usize..].copy_from_slice(&1u16.to_le_bytes());
        let hdr = &hdr[..hdr_len];

        let mut st = vring.get_mut();
        let q = st.get_queue_mut();
        if !queue_set_up(q) {
            // A frame before the driver finished the queue (or during a
            // reset) waits; it is not the guest's fault.
            return Ok(false);
        }
        let mut used = [(0u16, 0u32); MAX_MERGE];
        let mut n = 0;
        let mut off = 0;
        let mut hdr_at = None;
        let mut failure = None;
        while off < total {
            if n == MAX_MERGE {
                failure = Some(ChainError::TooManyBuffers);
                break;
            }
            let chain = match q.iter(mem.clone()) {
                Ok(mut it) => it.next(),
                Err(e) => {
                    for _ in 0..n {
                        q.go_to_previous_position();
                    }
                    drop(st);
                    self.mark_broken(RX_QUEUE, &e);
                    return Ok(false);
                }
            };
            let Some(chain) = chain else {
                // Too few buffers: put back what was taken.
                for _ in 0..n {
                    q.go_to_previous_position();
                }
                return Ok(false);
            };
            let head = chain.head_index();
            let mut written = 0u32;
            let mut last_next = false;
            for desc in chain {
                last_next = desc.has_next();
                if !desc.is_write_only() {
                    failure = Some(ChainError::ReadOnlyInRx {
                        addr: desc.addr().raw_value(),
                    });
                    break;
                }
                if hdr_at.is_none() {
                    if (desc.len() as usize) < hdr_len {
                        failure = Some(ChainError::RxTooSmall {
                            need: hdr_len,
                            have: desc.len() as usize,
                        });
                        break;
                    }
                    hdr_at = Some(desc.addr());
                }
                let mut at = desc.addr();
                let mut room = desc.len() as usize;
                while room > 0 && off < total {
                    let src = if off < hdr_len {
                        &hdr[off..]
                    } else {
                        &frame[off - hdr_len..]
                    };
                    let k = room.min(src.len());
                    if mem.write_slice(&src[..k], at).is_err() {
                        failure = Some(ChainError::BadAddress {
                            addr: at.raw_value(),
                            len: k as u32,
                        });
                        break;
                    }
                    off += k;
                    room -= k;
                    written += k as u32;
                    at = at.unchecked_add(k as u64);
                }
                if failure.is_some() || off == total {
                    break;
                }
            }
            if failure.is_none() && off < total && last_next {
                failure = Some(ChainError::Loop);
            }
            used[n] = (head, written);
            n += 1;
            if failure.is_some() {
                break;
            }
            if !mergeable && off < total {
                failure = Some(ChainError::RxTooSmall {
                    need: total,
                    have: written as usize,
                });
                break;
            }
        }
        if let Some(e) = failure {
            // Return every chain taken, empty.
            for &(head, _) in &used[..n] {
                let _ = q.add_used(&*mem, head, 0);
            }
            return Err(e);
        }
        if let Some(at) = hdr_at.filter(|_| mergeable && n > 1) {
            let _ = mem.write_obj((n as u16).to_le(), at.unchecked_add(NUM_BUFFERS_OFF));
        }
        for &(head, len) in &used[..n] {
            if let Err(e) = q.add_used(&*mem, head, len) {
                drop(st);
                self.mark_broken(RX_QUEUE, &e);
                return Ok(true);
            }
        }
        Ok(true)
    }
}

/// Copies a TX chain into `buf`; returns its length.
fn gather<M>(
    chain: virtio_queue::DescriptorChain<M>,
    mem: &GuestMemoryMmap,
    buf: &mut [u8],
) -> Result<usize, ChainError>
where
    M: std::ops::Deref,
    M::Target: vm_memory::GuestMemory,
{
    let mut len = 0usize;
    let mut last_next = false;
    for desc in chain {
        last_next = desc.has_next();
        if desc.is_write_only() {
            return Err(ChainError::WriteOnlyInTx);
        }
        let dlen = desc.len() as usize;
        let Some(dst) = buf.get_mut(len..len.saturating_add(dlen)) else {
            return Err(ChainError::TooLong);
        };
        mem.read_slice(dst, desc.addr())
            .map_err(|_| ChainError::BadAddress {
                addr: desc.addr().raw_value(),
                len: desc.len(),
            })?;
        len += dlen;
    }
    if last_next {
        return Err(ChainError::Loop);
    }
    Ok(len)
}

impl VhostUserBackendMut for NetBackend {
    type Bitmap = ();
    type Vring = VringRwLock<GuestMem>;

    fn num_queues(&self) -> usize {
        NUM_QUEUES
    }

    fn max_queue_size(&self) -> usize {
        self.cfg.queue_size as usize
    }

    fn features(&self) -> u64 {
        let offloads = if self.offload {
            1 << VIRTIO_NET_F_CSUM
                | 1 << VIRTIO_NET_F_GUEST_CSUM
                | 1 << VIRTIO_NET_F_GUEST_TSO4
                | 1 << VIRTIO_NET_F_GUEST_TSO6
                | 1 << VIRTIO_NET_F_GUEST_ECN
                | 1 << VIRTIO_NET_F_HOST_TSO4
                | 1 << VIRTIO_NET_F_HOST_TSO6
                | 1 << VIRTIO_NET_F_HOST_ECN
        } else {
            0
        };
        offloads
            | 1 << VIRTIO_F_VERSION_1
            | 1 << VIRTIO_NET_F_MAC
            | 1 << VIRTIO_NET_F_MTU
            | 1 << VIRTIO_NET_F_STATUS
            | 1 << VIRTIO_NET_F_MRG_RXBUF
            | 1 << VIRTIO_RING_F_EVENT_IDX
            | 1 << VIRTIO_RING_F_INDIRECT_DESC
            | VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits()
    }

    fn acked_features(&mut self, features: u64) {
        self.acked = features;
        if self.offload {
            // What the guest takes in, the kernel may hand us.
            let mut tun = 0;
            if features & 1 << VIRTIO_NET_F_GUEST_CSUM != 0 {
                tun |= offload::CSUM;
                for (bit, f) in [
                    (VIRTIO_NET_F_GUEST_TSO4, offload::TSO4),
                    (VIRTIO_NET_F_GUEST_TSO6, offload::TSO6),
                    (VIRTIO_NET_F_GUEST_ECN, offload::TSO_ECN),
                ] {
                    if features & 1 << bit != 0 {
                        tun |= f;
                    }
                }
            }
            match self.port.set_offload(tun) {
                Ok(()) => info!("guest features {features:#x}; TAP offloads {tun:#x}"),
                Err(e) => warn!("cannot set the TAP's offloads: {e}"),
            }
        }
    }

    /// REPLY_ACK only. QEMU's virtio-net needs
    /// `VHOST_USER_F_PROTOCOL_FEATURES` (it enables rings with
    /// SET_VRING_ENABLE; see [`super::relay`]) but takes MAC and MTU from
    /// its own options: it warns about CONFIG and never uses it.
    fn protocol_features(&self) -> VhostUserProtocolFeatures {
        VhostUserProtocolFeatures::REPLY_ACK
    }

    fn reset_device(&mut self) {
        info!("driver reset the device");
        self.disconnected();
    }

    fn set_event_idx(&mut self, enabled: bool) {
        self.event_idx = enabled;
    }

    fn get_config(&self, offset: u32, size: u32) -> Vec<u8> {
        // struct virtio_net_config: mac, status, max_virtqueue_pairs, mtu.
        let mut cfg = [0u8; 12];
        cfg[..6].copy_from_slice(&self.cfg.mac);
        cfg[6..8].copy_from_slice(&(VIRTIO_NET_S_LINK_UP as u16).to_le_bytes());
        cfg[8..10].copy_from_slice(&1u16.to_le_bytes());
        cfg[10..12].copy_from_slice(&self.cfg.mtu.to_le_bytes());
        let start = (offset as usize).min(cfg.len());
        let end = start.saturating_add(size as usize).min(cfg.len());
        cfg[start..end].to_vec()
    }

    fn update_memory(&mut self, mem: GuestMem) -> io::Result<()> {
        self.mem = Some(mem);
        Ok(())
    }

    fn queues_per_thread(&self) -> Vec<u64> {
        vec![(1 << NUM_QUEUES) - 1]
    }

    fn exit_event(&self, _thread_index: usize) -> Option<(EventConsumer, EventNotifier)> {
        new_event_consumer_and_notifier(EventFlag::NONBLOCK).ok()
    }

    fn handle_event(
        &mut self,
        device_event: u16,
        _evset: EventSet,
        vrings: &[VringRwLock<GuestMem>],
        _thread_id: usize,
    ) -> io::Result<()> {
        let [rx, tx] = vrings else {
            return Ok(());
        };
        match device_event {
            RX_QUEUE | PORT_EVENT => self.rx(rx),
            TX_QUEUE => self.tx(tx),
            other => warn!("unexpected event {other}"),
        }
        Ok(())
    }
}
