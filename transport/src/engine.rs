//! The engine: one RDMA device with its verbs objects, driven sans-IO.
//!
//! Methods fall into four groups, as in quinn-proto:
//!
//! - **getters**: [`Engine::attrs`], [`Engine::qp`], [`Engine::memory`]...
//! - **inputs**: [`Engine::handle_packet`] (a transport packet that
//!   arrived, its ICRC already checked by the link) and
//!   [`Engine::handle_timeout`];
//! - **application commands**: the verbs, from [`Engine::alloc_pd`] to
//!   [`Engine::post_send`], [`Engine::post_recv`] and [`Engine::poll_cq`];
//! - **outputs**: [`Engine::poll_transmit`] (the next packet to send),
//!   [`Engine::poll_timeout`] (when to call `handle_timeout`),
//!   [`Engine::poll_event`] and [`Engine::poll_notification`].
//!
//! A driver loops: feed packets and expired timers in, then drain
//! `poll_transmit` until it returns `None`, then sleep until
//! `poll_timeout` or the next packet. Time is nanoseconds on any
//! monotonic clock the caller chooses.

use std::collections::VecDeque;

use crate::{
    counters::{Counters, OpcodeBytes, OpcodeCounts},
    cq::Cq,
    device::{DeviceAttrs, Gid, GidTable},
    memory::Memory,
    mr::{self, Mr, MrTable},
    qp::{Ctx, Qp, RecvWqe, SendWqe, WqeState},
    srq::Srq,
    verbs::{
        Access, AhAttr, AsyncEvent, CqNotification, QpAttr, QpCaps, QpState, QpType, RecvWr,
        SendWr, VerbsError, Wc,
    },
    wire::{DEFAULT_PKEY, Packet, PacketRepr, Transport},
};

/// The first QP number handed out to ordinary QPs, as in rxe.
pub const FIRST_QPN: u32 = 17;

/// The QP number of the general services interface.
pub const GSI_QPN: u32 = 1;

/// Slot of a QP number in the QP table: slot 0 is QP1 (GSI), slot k > 0
/// is QPN 16 + k. Numbers that name no slot map past the end.
fn slot_of(qpn: u32) -> usize {
    if qpn == GSI_QPN {
        0
    } else if qpn >= FIRST_QPN {
        (qpn - FIRST_QPN + 1) as usize
    } else {
        usize::MAX
    }
}

/// The QP number of a slot.
fn qpn_of(slot: usize) -> u32 {
    if slot == 0 {
        GSI_QPN
    } else {
        FIRST_QPN + slot as u32 - 1
    }
}

/// Parameters of `create_qp`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QpInit {
    /// Transport service.
    pub qp_type: QpType,
    /// Protection domain.
    pub pd: u32,
    /// CQ for send completions.
    pub send_cq: u32,
    /// CQ for receive completions.
    pub recv_cq: u32,
    /// Queue capacities.
    pub caps: QpCaps,
    /// Signal every send WR.
    pub sq_sig_all: bool,
    /// Shared receive queue to draw receives from, instead of the QP's own.
    pub srq: Option<u32>,
}

/// The pages behind a page-list MR ([`Engine::reg_mr_pages`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PageList {
    /// log2 of the page size (12 to 30).
    pub page_shift: u8,
    /// Where the MR's first byte lies in the first page.
    pub first_offset: u64,
    /// Memory addresses of the pages, in order.
    pub pages: Vec<u64>,
}

/// Where a packet from `poll_transmit` goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use]
pub struct Transmit {
    /// Bytes of the transport packet written into the buffer (BTH through
    /// ICRC; the link fills in the ICRC once it knows the IP header).
    pub len: usize,
    /// Sending QP.
    pub src_qp: u32,
    /// Destination QP.
    pub dest_qp: u32,
    /// Destination GID.
    pub dgid: Gid,
    /// Source GID index.
    pub sgid_index: u8,
    /// The source GID at that index (zero if the entry is empty): the
    /// link sends from this address.
    pub sgid: Gid,
    /// UDP source port (rxe's flow-label hash of the two QPNs).
    pub udp_sport: u16,
    /// IP traffic class.
    pub traffic_class: u8,
    /// IP hop limit.
    pub hop_limit: u8,
    /// The CRC register (see [`crate::crc`]) over the transport packet
    /// without its ICRC, with the BTH masked as the ICRC masks it, started
    /// from zero, where the engine computed it while it copied a large
    /// payload in one pass ([`crate::crc::fused`]). A link joins it to its
    /// own headers' part ([`crate::wire::icrc::compute_joined`]) instead
    /// of reading the payload again; `None`: the link computes the ICRC
    /// over the packet.
    pub ib_crc: Option<u32>,
}

/// What the link knows about a received packet besides its transport
/// bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RxMeta<'a> {
    /// The IP header as received (20 bytes for IPv4, 40 for IPv6). UD
    /// receives place it in the 40-byte GRH area of the receive buffer, as
    /// rxe does.
    pub ip_header: &'a [u8],
    /// The ECN bits of the IP header (3 = congestion experienced).
    pub ecn: u8,
}

impl RxMeta<'_> {
    /// Metadata for a packet that came without an IP header (tests).
    pub const NONE: RxMeta<'static> = RxMeta {
        ip_header: &[],
        ecn: 0,
    };
}

/// Why an incoming packet was dropped.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DropReason {
    /// Its headers do not parse.
    #[error("malformed: {0}")]
    Malformed(#[from] crate::wire::Error),
    /// No QP has that number.
    #[error("no QP {0}")]
    NoQp(u32),
    /// The opcode's transport does not match the QP.
    #[error("opcode {opcode:#04x} does not fit QP {qpn}")]
    WrongTransport {
        /// Opcode.
        opcode: u8,
        /// QP number.
        qpn: u32,
    },
    /// CNPs are only counted.
    #[error("congestion notification")]
    Cnp,
    /// The P_Key is not in the partition table.
    #[error("P_Key {0:#06x} not in the partition table")]
    BadPkey(u16),
    /// A connected QP got a packet from another address than its peer's.
    #[error("packet for QP {0} from an address other than its peer")]
    WrongSource(u32),
    /// The ICRC the engine checked does not match.
    #[error("bad ICRC")]
    BadIcrc,
}

/// Checks a packet's ICRC from the link's prefix register (see
/// [`Engine::handle_packet_unverified`]).
#[inline]
fn check_icrc(prefix: u32, pkt: &Packet<&[u8]>) -> Result<(), DropReason> {
    let reg = crate::wire::icrc::header_register(prefix, pkt.without_icrc())?;
    if !reg == pkt.icrc() {
        Ok(())
    } else {
        Err(DropReason::BadIcrc)
    }
}

/// Whether the source address in a raw IPv4 or IPv6 header is `gid`
/// (an IPv4 source as its IPv4-mapped GID); `None` for neither header.
/// Compared in place: a GID built on the stack and read back as one wide
/// word stalled the receive path.
fn source_is(ip: &[u8], gid: &Gid) -> Option<bool> {
    const MAPPED: [u8; 12] = [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff];
    match (ip.first()? >> 4, ip.len()) {
        (4, 20..) => Some(gid.0[..12] == MAPPED && gid.0[12..] == ip[12..16]),
        (6, 40..) => Some(gid.0[..] == ip[8..24]),
        _ => None,
    }
}

/// The UDP source port rxe uses for a QP pair (`rdma_get_udp_sport`).
pub fn roce_udp_sport(flow_label: u32, lqpn: u32, rqpn: u32) -> u16 {
    let fl = if flow_label != 0 {
        flow_label
    } else {
        let mut v = u64::from(lqpn) * u64::from(rqpn);
        v ^= v >> 20;
        v ^= v >> 40;
        (v & 0xf_ffff) as u32
    };
    let low = (fl & 0x3fff) ^ ((fl & 0xf_c000) >> 14);
    (low | 0xc000) as u16
}

/// A soft RoCE device.
pub struct Engine<M: Memory> {
    attrs: DeviceAttrs,
    gids: GidTable,
    mem: M,
    pds: Vec<bool>,
    mrs: MrTable,
    cqs: Vec<Option<Cq>>,
    srqs: Vec<Option<Srq>>,
    ahs: Vec<Option<(u32, AhAttr)>>,
    qps: Vec<Option<Qp>>,
    events: VecDeque<AsyncEvent>,
    notifications: VecDeque<CqNotification>,
    /// Round-robin cursor for `poll_transmit`.
    next_tx: usize,
    /// Engine-wide counts (CNPs, ECN marks, link downs) and those of
    /// destroyed QPs; live QPs keep their own.
    counters: Counters,
    /// Transport bytes per opcode, each way.
    per_op: OpcodeCounts,
}

macro_rules! ctx {
    ($s:ident) => {
        Ctx {
            mem: &mut $s.mem,
            mrs: &mut $s.mrs,
            cqs: &mut $s.cqs,
            srqs: &mut $s.srqs,
            events: &mut $s.events,
            notifications: &mut $s.notifications,
            attrs: &$s.attrs,
        }
    };
}

impl<M: Memory> Engine<M> {
    /// A device over `mem` with the given limits.
    pub fn new(attrs: DeviceAttrs, mem: M) -> Engine<M> {
        Engine {
            gids: GidTable::new(attrs.gid_tbl_len),
            mrs: MrTable::new(attrs.max_mr),
            attrs,
            mem,
            pds: vec![false],
            cqs: vec![None],
            srqs: vec![None],
            ahs: vec![None],
            qps: vec![None],
            events: VecDeque::new(),
            notifications: VecDeque::new(),
            next_tx: 0,
            counters: Counters::default(),
            per_op: OpcodeCounts::default(),
        }
    }

    // ----- getters -----

    /// Device limits.
    pub fn attrs(&self) -> &DeviceAttrs {
        &self.attrs
    }

    /// The memory the MRs point into.
    pub fn memory(&self) -> &M {
        &self.mem
    }

    /// The memory, writable (for the application's own buffers).
    pub fn memory_mut(&mut self) -> &mut M {
        &mut self.mem
    }

    /// A QP by number.
    pub fn qp(&self, qpn: u32) -> Option<&Qp> {
        self.qps.get(slot_of(qpn))?.as_ref()
    }

    /// The GID table.
    pub fn gids(&self) -> &GidTable {
        &self.gids
    }

    /// The GID table, writable.
    pub fn gids_mut(&mut self) -> &mut GidTable {
        &mut self.gids
    }

    /// CNPs received.
    pub fn cnps_received(&self) -> u64 {
        self.counters.cnp_rcvd
    }

    /// CNPs sent.
    pub fn cnps_sent(&self) -> u64 {
        self.counters.cnp_sent
    }

    /// ECN-CE marked packets received.
    pub fn ecn_marked(&self) -> u64 {
        self.counters.ecn_marked
    }

    /// Every counter, summed over the engine, its live QPs and the QPs
    /// destroyed before (computed on request; the packet path only bumps
    /// plain integers).
    pub fn counters(&self) -> Counters {
        let mut c = self.counters;
        (c.sent_pkts, c.rcvd_pkts) = self.per_op.packets();
        for q in self.qps.iter().flatten() {
            c.add(&q.all_counters());
        }
        c
    }

    /// The live QPs, in QPN order.
    pub fn qps(&self) -> impl Iterator<Item = &Qp> {
        self.qps.iter().flatten()
    }

    /// One live QP's counters.
    pub fn qp_counters(&self, qpn: u32) -> Option<Counters> {
        self.qp(qpn).map(Qp::all_counters)
    }

    /// Transport bytes per opcode, each way.
    pub fn opcode_bytes(&self) -> OpcodeBytes {
        self.per_op.bytes()
    }

    fn qp_mut(&mut self, qpn: u32) -> Result<&mut Qp, VerbsError> {
        let nf = VerbsError::NoSuchObject {
            kind: "QP",
            handle: qpn,
        };
        self.qps
            .get_mut(slot_of(qpn))
            .and_then(Option::as_mut)
            .ok_or(nf)
    }

    // ----- application commands -----

    /// Allocates a protection domain.
    pub fn alloc_pd(&mut self) -> Result<u32, VerbsError> {
        if let Some(i) = self.pds.iter().skip(1).position(|u| !u) {
            self.pds[i + 1] = true;
            return Ok(i as u32 + 1);
        }
        if self.pds.len() as u32 > self.attrs.max_pd {
            return Err(VerbsError::Limit {
                what: "protection domains",
                limit: u64::from(self.attrs.max_pd),
            });
        }
        self.pds.push(true);
        Ok(self.pds.len() as u32 - 1)
    }

    /// Frees a protection domain that no MR or QP uses.
    pub fn dealloc_pd(&mut self, pd: u32) -> Result<(), VerbsError> {
        self.check_pd(pd)?;
        if self.mrs.uses_pd(pd)
            || self.qps.iter().flatten().any(|q| q.pd == pd)
            || self.srqs.iter().flatten().any(|s| s.pd == pd)
            || self.ahs.iter().flatten().any(|(p, _)| *p == pd)
        {
            return Err(VerbsError::Busy("protection domain"));
        }
        self.pds[pd as usize] = false;
        Ok(())
    }

    fn check_pd(&self, pd: u32) -> Result<(), VerbsError> {
        if self.pds.get(pd as usize).copied().unwrap_or(false) && pd != 0 {
            Ok(())
        } else {
            Err(VerbsError::NoSuchObject {
                kind: "PD",
                handle: pd,
            })
        }
    }

    /// Registers `[iova, iova + length)` mapped at `base` in memory.
    /// Returns the key (lkey = rkey).
    pub fn reg_mr(
        &mut self,
        pd: u32,
        iova: u64,
        length: u64,
        base: u64,
        access: Access,
    ) -> Result<u32, VerbsError> {
        self.check_pd(pd)?;
        if !Access::ALL.contains(access) {
            return Err(VerbsError::Invalid("unknown access flags"));
        }
        // Remote write and atomic access require local write (IBTA 10.6.3.1).
        if (access.contains(Access::REMOTE_WRITE) || access.contains(Access::REMOTE_ATOMIC))
            && !access.contains(Access::LOCAL_WRITE)
        {
            return Err(VerbsError::Invalid("remote write/atomic needs local write"));
        }
        if length > self.attrs.max_mr_size
            || iova.checked_add(length).is_none()
            || base.checked_add(length).is_none()
        {
            return Err(VerbsError::Invalid("region too large"));
        }
        self.mrs
            .insert(Mr::linear(pd, iova, length, base, access))
            .ok_or(VerbsError::Limit {
                what: "memory regions",
                limit: u64::from(self.attrs.max_mr),
            })
    }

    /// Registers `[iova, iova + length)` mapped page by page: `iova` lies
    /// `list.first_offset` bytes into the first of `list.pages` (memory
    /// addresses of pages of `1 << list.page_shift` bytes). This is how a paravirtual device
    /// registers a guest's user MR: the guest's pages are listed, not
    /// copied. Returns the key (lkey = rkey).
    pub fn reg_mr_pages(
        &mut self,
        pd: u32,
        iova: u64,
        length: u64,
        list: PageList,
        access: Access,
    ) -> Result<u32, VerbsError> {
        let PageList {
            page_shift,
            first_offset,
            pages,
        } = list;
        self.check_pd(pd)?;
        if !Access::ALL.contains(access) {
            return Err(VerbsError::Invalid("unknown access flags"));
        }
        if (access.contains(Access::REMOTE_WRITE) || access.contains(Access::REMOTE_ATOMIC))
            && !access.contains(Access::LOCAL_WRITE)
        {
            return Err(VerbsError::Invalid("remote write/atomic needs local write"));
        }
        if !(12..=30).contains(&page_shift) {
            return Err(VerbsError::Invalid("page size must be 4 KiB to 1 GiB"));
        }
        let size = 1u64 << page_shift;
        if first_offset >= size
            || length > self.attrs.max_mr_size
            || iova.checked_add(length).is_none()
            || length > (pages.len() as u64 * size).saturating_sub(first_offset)
        {
            return Err(VerbsError::Invalid("length past the page list"));
        }
        let mr = Mr {
            pd,
            iova,
            length,
            map: mr::MrMap::Pages {
                page_shift,
                first_offset,
                pages,
            },
            access,
            kind: mr::MrKind::User,
            valid: true,
        };
        self.mrs.insert(mr).ok_or(VerbsError::Limit {
            what: "memory regions",
            limit: u64::from(self.attrs.max_mr),
        })
    }

    /// Allocates a fast-registration MR of up to `max_pages` pages. It is
    /// invalid until a `SendOp::RegMr` work request registers it.
    pub fn alloc_mr(&mut self, pd: u32, max_pages: u32) -> Result<u32, VerbsError> {
        self.check_pd(pd)?;
        if max_pages == 0 || max_pages > self.attrs.max_fast_reg_page_list_len {
            return Err(VerbsError::Limit {
                what: "fast-registration pages",
                limit: u64::from(self.attrs.max_fast_reg_page_list_len),
            });
        }
        let mr = Mr {
            pd,
            iova: 0,
            length: 0,
            map: mr::MrMap::Pages {
                page_shift: 12,
                first_offset: 0,
                pages: Vec::new(),
            },
            access: Access(0),
            kind: mr::MrKind::FastReg { max_pages },
            valid: false,
        };
        self.mrs.insert(mr).ok_or(VerbsError::Limit {
            what: "memory regions",
            limit: u64::from(self.attrs.max_mr),
        })
    }

    /// Stages the page list of an invalid fast-registration MR
    /// (`ib_map_mr_sg`): `length` bytes from `iova`, which lies
    /// `first_offset` bytes into the first of `pages` (memory addresses of
    /// pages of `1 << page_shift` bytes). A REG_MR work request makes it
    /// valid.
    pub fn map_mr_pages(
        &mut self,
        key: u32,
        iova: u64,
        length: u64,
        page_shift: u8,
        first_offset: u64,
        pages: &[u64],
    ) -> Result<(), VerbsError> {
        let nf = VerbsError::NoSuchObject {
            kind: "MR",
            handle: key,
        };
        let (_, mr) = self.mrs.by_index_mut(key).ok_or(nf)?;
        let mr::MrKind::FastReg { max_pages } = mr.kind else {
            return Err(VerbsError::Invalid("not a fast-registration MR"));
        };
        if mr.valid {
            return Err(VerbsError::Busy("registered MR"));
        }
        if !(12..=30).contains(&page_shift) {
            return Err(VerbsError::Invalid("page size must be 4 KiB to 1 GiB"));
        }
        let size = 1u64 << page_shift;
        if pages.len() > max_pages as usize || first_offset >= size {
            return Err(VerbsError::Invalid(
                "page list too long or offset past a page",
            ));
        }
        if length > pages.len() as u64 * size - first_offset || iova.checked_add(length).is_none() {
            return Err(VerbsError::Invalid("length past the page list"));
        }
        mr.iova = iova;
        mr.length = length;
        mr.map = mr::MrMap::Pages {
            page_shift,
            first_offset,
            pages: pages.to_vec(),
        };
        Ok(())
    }

    /// Creates an address handle. The source GID index must name a GID.
    pub fn create_ah(&mut self, pd: u32, attr: AhAttr) -> Result<u32, VerbsError> {
        self.check_pd(pd)?;
        if self.gids.get(usize::from(attr.sgid_index)).is_none() {
            return Err(VerbsError::Invalid("source GID index names no GID"));
        }
        if attr.flow_label > 0xf_ffff {
            return Err(VerbsError::Invalid("flow labels are 20 bits"));
        }
        let entry = Some((pd, attr));
        if let Some(i) = self.ahs.iter().skip(1).position(Option::is_none) {
            self.ahs[i + 1] = entry;
            return Ok(i as u32 + 1);
        }
        if self.ahs.len() as u32 > self.attrs.max_ah {
            return Err(VerbsError::Limit {
                what: "address handles",
                limit: u64::from(self.attrs.max_ah),
            });
        }
        self.ahs.push(entry);
        Ok(self.ahs.len() as u32 - 1)
    }

    /// The attributes of an address handle.
    pub fn ah(&self, ah: u32) -> Option<AhAttr> {
        self.ahs.get(ah as usize)?.map(|(_, a)| a)
    }

    /// Destroys an address handle.
    pub fn destroy_ah(&mut self, ah: u32) -> Result<(), VerbsError> {
        match self.ahs.get_mut(ah as usize) {
            Some(slot @ Some(_)) if ah != 0 => {
                *slot = None;
                Ok(())
            }
            _ => Err(VerbsError::NoSuchObject {
                kind: "AH",
                handle: ah,
            }),
        }
    }

    /// Allocates a memory window of type 1 or 2, unbound. Returns its key.
    pub fn alloc_mw(&mut self, pd: u32, mw_type: u8) -> Result<u32, VerbsError> {
        self.check_pd(pd)?;
        if !matches!(mw_type, 1 | 2) {
            return Err(VerbsError::Invalid("memory windows are of type 1 or 2"));
        }
        let mw = Mr {
            pd,
            iova: 0,
            length: 0,
            map: mr::MrMap::Linear { base: 0 },
            access: Access(0),
            kind: mr::MrKind::Mw {
                mw_type,
                mr_key: 0,
                qpn: 0,
            },
            valid: false,
        };
        self.mrs.insert(mw).ok_or(VerbsError::Limit {
            what: "memory regions and windows",
            limit: u64::from(self.attrs.max_mr),
        })
    }

    /// Deregisters a region.
    pub fn dereg_mr(&mut self, key: u32) -> Result<(), VerbsError> {
        if self.mrs.has_bound_windows(key) {
            return Err(VerbsError::Busy("memory region with bound windows"));
        }
        self.mrs
            .remove(key)
            .map(|_| ())
            .ok_or(VerbsError::NoSuchObject {
                kind: "MR",
                handle: key,
            })
    }

    /// Creates a completion queue of `depth` entries.
    pub fn create_cq(&mut self, depth: u32) -> Result<u32, VerbsError> {
        if depth == 0 || depth > self.attrs.max_cqe {
            return Err(VerbsError::Limit {
                what: "CQ depth",
                limit: u64::from(self.attrs.max_cqe),
            });
        }
        let cq = Cq::new(depth as usize);
        if let Some(i) = self.cqs.iter().skip(1).position(Option::is_none) {
            self.cqs[i + 1] = Some(cq);
            return Ok(i as u32 + 1);
        }
        if self.cqs.len() as u32 > self.attrs.max_cq {
            return Err(VerbsError::Limit {
                what: "completion queues",
                limit: u64::from(self.attrs.max_cq),
            });
        }
        self.cqs.push(Some(cq));
        Ok(self.cqs.len() as u32 - 1)
    }

    /// Destroys a CQ that no QP uses.
    pub fn destroy_cq(&mut self, cq: u32) -> Result<(), VerbsError> {
        self.cq_mut(cq)?;
        if self
            .qps
            .iter()
            .flatten()
            .any(|q| q.send_cq == cq || q.recv_cq == cq)
        {
            return Err(VerbsError::Busy("completion queue"));
        }
        self.cqs[cq as usize] = None;
        Ok(())
    }

    fn cq_mut(&mut self, cq: u32) -> Result<&mut Cq, VerbsError> {
        self.cqs
            .get_mut(cq as usize)
            .and_then(Option::as_mut)
            .ok_or(VerbsError::NoSuchObject {
                kind: "CQ",
                handle: cq,
            })
    }

    /// Polls up to `out.len()` completions.
    pub fn poll_cq(&mut self, cq: u32, out: &mut [Wc]) -> Result<usize, VerbsError> {
        Ok(self.cq_mut(cq)?.poll(out))
    }

    /// Arms a CQ for the next (or next solicited) completion.
    pub fn req_notify_cq(&mut self, cq: u32, solicited_only: bool) -> Result<(), VerbsError> {
        self.cq_mut(cq)?.arm(solicited_only);
        Ok(())
    }

    fn srq_ref(&self, srq: u32) -> Result<&Srq, VerbsError> {
        self.srqs
            .get(srq as usize)
            .and_then(Option::as_ref)
            .ok_or(VerbsError::NoSuchObject {
                kind: "SRQ",
                handle: srq,
            })
    }

    fn srq_mut(&mut self, srq: u32) -> Result<&mut Srq, VerbsError> {
        self.srqs
            .get_mut(srq as usize)
            .and_then(Option::as_mut)
            .ok_or(VerbsError::NoSuchObject {
                kind: "SRQ",
                handle: srq,
            })
    }

    /// Creates a shared receive queue of `max_wr` WQEs with up to
    /// `max_sge` SGEs each.
    pub fn create_srq(&mut self, pd: u32, max_wr: u32, max_sge: u32) -> Result<u32, VerbsError> {
        self.check_pd(pd)?;
        if max_wr == 0 || max_wr > self.attrs.max_srq_wr {
            return Err(VerbsError::Limit {
                what: "SRQ depth",
                limit: u64::from(self.attrs.max_srq_wr),
            });
        }
        if max_sge == 0 || max_sge > self.attrs.max_srq_sge {
            return Err(VerbsError::Limit {
                what: "SRQ SGEs",
                limit: u64::from(self.attrs.max_srq_sge),
            });
        }
        let srq = Srq::new(pd, max_wr, max_sge);
        if let Some(i) = self.srqs.iter().skip(1).position(Option::is_none) {
            self.srqs[i + 1] = Some(srq);
            return Ok(i as u32 + 1);
        }
        if self.srqs.len() as u32 > self.attrs.max_srq {
            return Err(VerbsError::Limit {
                what: "shared receive queues",
                limit: u64::from(self.attrs.max_srq),
            });
        }
        self.srqs.push(Some(srq));
        Ok(self.srqs.len() as u32 - 1)
    }

    /// Arms the SRQ limit: `AsyncEvent::SrqLimitReached` fires once when
    /// fewer than `limit` WQEs remain (0 disarms).
    pub fn modify_srq(&mut self, srq: u32, limit: u32) -> Result<(), VerbsError> {
        let s = self.srq_mut(srq)?;
        if limit > s.max_wr() {
            return Err(VerbsError::Invalid("SRQ limit above its depth"));
        }
        s.limit = limit;
        Ok(())
    }

    /// An SRQ, for queries.
    pub fn srq(&self, srq: u32) -> Option<&Srq> {
        self.srq_ref(srq).ok()
    }

    /// Posts a receive WQE to an SRQ.
    pub fn post_srq_recv(&mut self, srq: u32, wr: &RecvWr<'_>) -> Result<(), VerbsError> {
        let s = self.srq_mut(srq)?;
        if s.ring.is_full() {
            return Err(VerbsError::QueueFull);
        }
        if wr.sges.len() > s.max_sge as usize {
            return Err(VerbsError::Invalid("too many SGEs"));
        }
        let tail = s.ring.tail;
        let w = s.ring.at_mut(tail);
        w.wr_id = wr.wr_id;
        w.sges.clear();
        w.sges.extend_from_slice(wr.sges);
        w.len = mr::sge_total(wr.sges);
        s.ring.tail += 1;
        Ok(())
    }

    /// Destroys an SRQ that no QP uses.
    pub fn destroy_srq(&mut self, srq: u32) -> Result<(), VerbsError> {
        self.srq_mut(srq)?;
        if self.qps.iter().flatten().any(|q| q.srq == Some(srq)) {
            return Err(VerbsError::Busy("shared receive queue"));
        }
        self.srqs[srq as usize] = None;
        Ok(())
    }

    /// Creates a QP in RESET.
    pub fn create_qp(&mut self, init: &QpInit) -> Result<u32, VerbsError> {
        self.check_pd(init.pd)?;
        self.cq_mut(init.send_cq)?;
        self.cq_mut(init.recv_cq)?;
        let c = &init.caps;
        let a = &self.attrs;
        if c.max_send_wr == 0 || c.max_send_wr > a.max_qp_wr || c.max_recv_wr > a.max_qp_wr {
            return Err(VerbsError::Limit {
                what: "queue depth",
                limit: u64::from(a.max_qp_wr),
            });
        }
        if c.max_send_sge > a.max_sge || c.max_recv_sge > a.max_sge {
            return Err(VerbsError::Limit {
                what: "SGEs per WR",
                limit: u64::from(a.max_sge),
            });
        }
        if c.max_inline_data > a.max_inline_data {
            return Err(VerbsError::Limit {
                what: "inline data",
                limit: u64::from(a.max_inline_data),
            });
        }
        let free = if init.qp_type == QpType::Gsi {
            if self.qps[0].is_some() {
                return Err(VerbsError::Busy("QP1 (GSI)"));
            }
            Some(0)
        } else {
            self.qps
                .iter()
                .skip(1)
                .position(Option::is_none)
                .map(|i| i + 1)
        };
        let slot = match free {
            Some(i) => i,
            None => {
                if self.qps.len() as u32 > a.max_qp {
                    return Err(VerbsError::Limit {
                        what: "queue pairs",
                        limit: u64::from(a.max_qp),
                    });
                }
                self.qps.push(None);
                self.qps.len() - 1
            }
        };
        if let Some(srq) = init.srq {
            let s = self.srq_ref(srq)?;
            if s.pd != init.pd {
                return Err(VerbsError::Invalid("SRQ of another protection domain"));
            }
        }
        let qpn = qpn_of(slot);
        let mut qp = Qp::new(
            qpn,
            init.qp_type,
            init.pd,
            (init.send_cq, init.recv_cq),
            init.srq,
            init.caps,
            init.sq_sig_all,
        );
        if matches!(init.qp_type, QpType::Ud | QpType::Gsi) {
            // Datagrams use the port MTU (rxe `get_mtu`).
            qp.attrs.path_mtu = self.attrs.max_mtu;
        }
        if init.qp_type == QpType::Gsi {
            qp.attrs.qkey = crate::wire::GSI_QKEY;
        }
        self.qps[slot] = Some(qp);
        Ok(qpn)
    }

    /// Destroys a QP.
    pub fn destroy_qp(&mut self, qpn: u32) -> Result<(), VerbsError> {
        let gone = self.qp_mut(qpn)?.all_counters();
        self.counters.add(&gone);
        self.qps[slot_of(qpn)] = None;
        Ok(())
    }

    /// Modifies a QP. Moving to ERR flushes every outstanding WR. `now` is
    /// unused today and keeps the command in line with the others.
    pub fn modify_qp(&mut self, qpn: u32, attr: &QpAttr, _now: u64) -> Result<(), VerbsError> {
        let attrs = self.attrs.clone();
        let i = slot_of(qpn);
        let qp = self
            .qps
            .get_mut(i)
            .and_then(Option::as_mut)
            .ok_or(VerbsError::NoSuchObject {
                kind: "QP",
                handle: qpn,
            })?;
        let changed = qp.modify(attr, &attrs)?;
        if changed == Some(QpState::Sqd) {
            qp.req.drained_sent = qp.sq.head == qp.req.idx;
            if qp.req.drained_sent {
                self.events.push_back(AsyncEvent::SqDrained(qpn));
            }
        }
        if changed == Some(QpState::Err) {
            let mut ctx = ctx!(self);
            if let Some(Some(qp)) = self.qps.get_mut(i) {
                qp.flush(&mut ctx);
            }
        }
        Ok(())
    }

    /// The link under the port went down or vanished. As rxe's QPs do
    /// when their netdev goes away, every QP that is not in RESET or ERR
    /// moves to ERR (its outstanding work requests complete with
    /// FLUSH_ERR) and raises a fatal event; then a port error event is
    /// queued. Returns how many QPs were moved.
    pub fn port_down(&mut self) -> usize {
        let qpns: Vec<u32> = self
            .qps
            .iter()
            .flatten()
            .filter(|q| !matches!(q.state(), QpState::Reset | QpState::Err))
            .map(|q| q.qpn)
            .collect();
        let err = QpAttr {
            state: Some(QpState::Err),
            ..Default::default()
        };
        for &qpn in &qpns {
            if self.modify_qp(qpn, &err, 0).is_ok() {
                self.events.push_back(AsyncEvent::QpFatal(qpn));
            }
        }
        self.events.push_back(AsyncEvent::PortError);
        self.counters.link_downed += 1;
        qpns.len()
    }

    /// Posts a send work request.
    pub fn post_send(&mut self, qpn: u32, wr: &SendWr<'_>) -> Result<(), VerbsError> {
        let max_inline = self.attrs.max_inline_data;
        let i = slot_of(qpn);
        let Some(Some(qp)) = self.qps.get_mut(i) else {
            return Err(VerbsError::NoSuchObject {
                kind: "QP",
                handle: qpn,
            });
        };
        match qp.state {
            QpState::Rts | QpState::Sqd | QpState::Err | QpState::Sqe => {}
            s => return Err(VerbsError::WrongState(s)),
        }
        if qp.sq.is_full() {
            return Err(VerbsError::QueueFull);
        }
        if wr.sges.len() > qp.caps.max_send_sge as usize {
            return Err(VerbsError::Invalid("too many SGEs"));
        }
        let ud = matches!(qp.qp_type, QpType::Ud | QpType::Gsi);
        if ud != wr.ud.is_some() {
            return Err(VerbsError::Invalid(
                "UD QPs need a UD destination, others none",
            ));
        }
        if ud
            && !matches!(
                wr.op,
                crate::verbs::SendOp::Send | crate::verbs::SendOp::SendWithImm(_)
            )
        {
            return Err(VerbsError::Invalid("UD QPs only send"));
        }
        if qp.qp_type == QpType::Uc && wr.op.is_read_or_atomic() {
            return Err(VerbsError::Invalid("UC QPs do not READ or atomic"));
        }
        if wr.op.is_local() && !wr.sges.is_empty() {
            return Err(VerbsError::Invalid("local operations take no SGEs"));
        }
        let len = mr::sge_total(wr.sges);
        if len > self.attrs.max_msg_size {
            return Err(VerbsError::Invalid("message too long"));
        }
        // A message's PSNs must stay within half the 24-bit PSN space, so
        // that serial-number comparisons place them. 2^23 packets (2^31
        // bytes at MTU 256) fit; a READ takes its response PSNs at once
        // and its last one would sit exactly half the space ahead of the
        // completer, so a READ stops one packet short (as the responder
        // checks).
        let packets = u64::from(crate::qp::packets_for(len, qp.attrs.path_mtu));
        if packets > 1 << 23 || (wr.op == crate::verbs::SendOp::Read && packets >= 1 << 23) {
            return Err(VerbsError::Invalid(
                "message needs more packets than half the PSN space at this path MTU",
            ));
        }
        if ud && len > qp.attrs.path_mtu.bytes() as u64 {
            return Err(VerbsError::Invalid("UD message longer than the path MTU"));
        }
        if wr.op.is_atomic() && (len != 8 || wr.sges.len() != 1) {
            return Err(VerbsError::Invalid("atomics need one 8-byte SGE"));
        }
        if wr.op.is_read_response_acked() {
            if qp.qp_type != QpType::Rc {
                return Err(VerbsError::Invalid("ATOMIC_WRITE and FLUSH are RC only"));
            }
            if !wr.sges.is_empty() {
                return Err(VerbsError::Invalid("ATOMIC_WRITE and FLUSH take no SGEs"));
            }
        }
        if wr.inline
            && (len > u64::from(qp.caps.max_inline_data.min(max_inline)) || !wr.op.sends_payload())
        {
            return Err(VerbsError::Invalid(
                "inline data too long or not a SEND/WRITE",
            ));
        }
        let pd = qp.pd;
        let tail = qp.sq.tail;
        let w: &mut SendWqe = qp.sq.at_mut(tail);
        w.wr_id = wr.wr_id;
        w.op = wr.op;
        w.sges.clear();
        w.sges.extend_from_slice(wr.sges);
        w.is_inline = wr.inline;
        w.inline_data.clear();
        w.signaled = wr.signaled;
        w.solicited = wr.solicited;
        w.fence = wr.fence;
        w.remote_addr = wr.remote_addr;
        w.rkey = wr.rkey;
        w.ud = wr.ud;
        w.len = len;
        w.first_psn = 0;
        w.last_psn = 0;
        w.state = WqeState::Posted;
        w.sent_once = false;
        w.local_done = false;
        w.started = false;
        w.error = None;
        w.rd_counted = false;
        w.read_done = 0;
        if wr.inline {
            w.inline_data.resize(len as usize, 0);
            if mr::gather(&self.mem, &self.mrs, pd, wr.sges, 0, &mut w.inline_data).is_err() {
                return Err(VerbsError::Invalid("inline SGE not readable"));
            }
        }
        qp.sq.tail += 1;
        if qp.state == QpState::Err {
            let mut ctx = ctx!(self);
            if let Some(Some(qp)) = self.qps.get_mut(i) {
                qp.flush(&mut ctx);
            }
        }
        Ok(())
    }

    /// Posts a receive work request.
    pub fn post_recv(&mut self, qpn: u32, wr: &RecvWr<'_>) -> Result<(), VerbsError> {
        let i = slot_of(qpn);
        let Some(Some(qp)) = self.qps.get_mut(i) else {
            return Err(VerbsError::NoSuchObject {
                kind: "QP",
                handle: qpn,
            });
        };
        if qp.state == QpState::Reset {
            return Err(VerbsError::WrongState(qp.state));
        }
        if qp.srq.is_some() {
            return Err(VerbsError::Invalid("the QP receives from an SRQ"));
        }
        if qp.rq.is_full() {
            return Err(VerbsError::QueueFull);
        }
        if wr.sges.len() > qp.caps.max_recv_sge as usize {
            return Err(VerbsError::Invalid("too many SGEs"));
        }
        let tail = qp.rq.tail;
        let w: &mut RecvWqe = qp.rq.at_mut(tail);
        w.wr_id = wr.wr_id;
        w.sges.clear();
        w.sges.extend_from_slice(wr.sges);
        w.len = mr::sge_total(wr.sges);
        qp.rq.tail += 1;
        if qp.state == QpState::Err {
            let mut ctx = ctx!(self);
            if let Some(Some(qp)) = self.qps.get_mut(i) {
                qp.flush(&mut ctx);
            }
        }
        Ok(())
    }

    // ----- inputs -----

    /// Handles a transport packet (BTH through ICRC) whose ICRC the link
    /// has verified.
    pub fn handle_packet(
        &mut self,
        now: u64,
        meta: &RxMeta<'_>,
        ib: &[u8],
    ) -> Result<(), DropReason> {
        self.handle(now, meta, ib, None)
    }

    /// Handles a transport packet (BTH through ICRC) whose ICRC nobody
    /// has checked yet: `prefix` is the CRC register after the link's part
    /// (see [`crate::wire::icrc::prefix_register`]). The engine checks the
    /// rest, and drops the packet with [`DropReason::BadIcrc`] before it
    /// changes any state. An RC WRITE middle or last packet that continues
    /// the expected message is placed while its CRC is computed, in one
    /// pass; if the check then fails, only bytes of the WRITE's own target
    /// range that its retransmission rewrites have changed (a WRITE's
    /// target is undefined until it completes).
    pub fn handle_packet_unverified(
        &mut self,
        now: u64,
        meta: &RxMeta<'_>,
        ib: &[u8],
        prefix: u32,
    ) -> Result<(), DropReason> {
        self.handle(now, meta, ib, Some(prefix))
    }

    fn handle(
        &mut self,
        now: u64,
        meta: &RxMeta<'_>,
        ib: &[u8],
        unverified: Option<u32>,
    ) -> Result<(), DropReason> {
        // `PacketRepr::parse` runs `Packet::check_len` first.
        let pkt = Packet::new_unchecked(ib);
        let repr = PacketRepr::parse(&pkt)?;
        let opcode = repr.bth.opcode;
        if opcode.transport() == Transport::Cnp {
            if let Some(prefix) = unverified {
                check_icrc(prefix, &pkt)?;
            }
            self.counters.cnp_rcvd += 1;
            self.per_op.count(false, opcode.0, ib.len());
            return Err(DropReason::Cnp);
        }
        let qpn = repr.bth.dest_qp;
        let i = slot_of(qpn);
        let mut ctx = ctx!(self);
        let Some(Some(qp)) = self.qps.get_mut(i) else {
            return Err(DropReason::NoQp(qpn));
        };
        let fits = matches!(
            (opcode.transport(), qp.qp_type),
            (Transport::Rc, QpType::Rc)
                | (Transport::Uc, QpType::Uc)
                | (Transport::Ud, QpType::Ud | QpType::Gsi)
        );
        if !fits {
            return Err(DropReason::WrongTransport {
                opcode: opcode.0,
                qpn,
            });
        }
        // Only the default partition exists (rxe `check_keys`).
        if repr.bth.pkey & 0x7fff != DEFAULT_PKEY & 0x7fff {
            return Err(DropReason::BadPkey(repr.bth.pkey));
        }
        // A connected QP only takes packets from its peer (rxe
        // `check_addr`).
        if matches!(qp.qp_type, QpType::Rc | QpType::Uc)
            && source_is(meta.ip_header, &qp.attrs.ah.dgid) == Some(false)
        {
            return Err(DropReason::WrongSource(qpn));
        }
        let mut placed = false;
        if let Some(prefix) = unverified {
            match qp.place_unverified(&mut ctx, &pkt, &repr, prefix) {
                Some(reg) if !reg == pkt.icrc() => placed = true,
                Some(_) => return Err(DropReason::BadIcrc),
                None => check_icrc(prefix, &pkt)?,
            }
        }
        if meta.ecn == 3 {
            // Congestion experienced: tell the sender with a CNP.
            self.counters.ecn_marked += 1;
            qp.cnp_pending = true;
        }
        self.per_op.count(false, opcode.0, ib.len());
        let info = pkt.info();
        if info.request {
            qp.on_request(&mut ctx, meta, &pkt, &repr, placed);
        } else {
            qp.on_response(&mut ctx, now, &pkt, &repr);
        }
        Ok(())
    }

    /// Runs the timers that have expired by `now`.
    pub fn handle_timeout(&mut self, now: u64) {
        let mut ctx = ctx!(self);
        for qp in self.qps.iter_mut().flatten() {
            if qp.next_timeout().is_some_and(|t| t <= now) {
                qp.on_timeout(&mut ctx, now);
            }
        }
    }

    // ----- outputs -----

    /// Writes the next packet to send into `buf` (which should hold the
    /// port MTU plus headers), round-robin over the QPs; responder output
    /// goes before new requests.
    pub fn poll_transmit(&mut self, now: u64, buf: &mut [u8]) -> Option<Transmit> {
        let n = self.qps.len();
        // `next_tx < n`, so one subtraction wraps (no division per QP).
        let start = self.next_tx.min(n);
        for k in 0..n {
            let i = if start + k >= n {
                start + k - n
            } else {
                start + k
            };
            let mut ctx = ctx!(self);
            let Some(Some(qp)) = self.qps.get_mut(i) else {
                continue;
            };
            let mut tclass = None;
            let mut crc = None;
            let (len, dest_qp, ah) = if let Some(len) = qp.poll_cnp(now, ctx.attrs, buf) {
                self.counters.cnp_sent += 1;
                // CNPs go out with DSCP 48 and ECT(0), as RoCE NICs send them.
                tclass = Some(0xc2);
                (len, qp.attrs.dest_qp, qp.attrs.ah)
            } else if let Some(len) = qp.poll_response(&mut ctx, buf, &mut crc) {
                (len, qp.attrs.dest_qp, qp.attrs.ah)
            } else if let Some(r) = qp.poll_request(&mut ctx, now, buf) {
                crc = r.crc;
                (r.len, r.dest_qp, r.ud.map_or(qp.attrs.ah, |u| u.ah))
            } else {
                continue;
            };
            self.next_tx = if i + 1 == n { 0 } else { i + 1 };
            if let Some(&op) = buf.first() {
                self.per_op.count(true, op, len);
            }
            let src_qp = qp.qpn;
            return Some(Transmit {
                len,
                src_qp,
                dest_qp,
                dgid: ah.dgid,
                sgid_index: ah.sgid_index,
                sgid: self
                    .gids
                    .get(usize::from(ah.sgid_index))
                    .unwrap_or(Gid([0; 16])),
                udp_sport: roce_udp_sport(ah.flow_label, src_qp, dest_qp),
                traffic_class: tclass.unwrap_or(ah.traffic_class),
                hop_limit: ah.hop_limit,
                ib_crc: crc,
            });
        }
        None
    }

    /// The earliest time `handle_timeout` should be called.
    pub fn poll_timeout(&self) -> Option<u64> {
        self.qps.iter().flatten().filter_map(Qp::next_timeout).min()
    }

    /// The next asynchronous event.
    pub fn poll_event(&mut self) -> Option<AsyncEvent> {
        self.events.pop_front()
    }

    /// The next CQ notification.
    pub fn poll_notification(&mut self) -> Option<CqNotification> {
        self.notifications.pop_front()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn udp_sport_matches_the_rxe_capture() {
        // Frame 1 of the rxe capture: QP 17 to QP 17 uses port 49441.
        assert_eq!(roce_udp_sport(0, 17, 17), 49441);
        assert_eq!(roce_udp_sport(0, 0x12, 0x13), 0xc000 | (0x12 * 0x13));
    }

    #[test]
    fn source_is_compares_ipv4_mapped_and_ipv6_sources() {
        let mut v4 = [0u8; 20];
        v4[0] = 0x45;
        v4[12..16].copy_from_slice(&[10, 0, 0, 1]);
        let mut v6 = [0u8; 40];
        v6[0] = 0x60;
        v6[8..24].copy_from_slice(&[0xfd, 0x77, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]);
        let a = Gid::from_ip("10.0.0.1".parse().unwrap());
        let b = Gid::from_ip("10.0.0.2".parse().unwrap());
        let c = Gid::from_ip("fd77::1".parse().unwrap());
        // An IPv6 GID whose last four bytes are the IPv4 source.
        let d = Gid::from_ip("fd77::a00:1".parse().unwrap());
        assert_eq!(source_is(&v4, &a), Some(true));
        assert_eq!(source_is(&v4, &b), Some(false));
        assert_eq!(source_is(&v4, &d), Some(false));
        assert_eq!(source_is(&v6, &c), Some(true));
        assert_eq!(source_is(&v6, &a), Some(false));
        assert_eq!(source_is(&v4[..19], &a), None);
        assert_eq!(source_is(&[0x55; 40], &a), None);
        assert_eq!(source_is(&[], &a), None);
    }
}
