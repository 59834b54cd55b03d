//! A simulated link between two engines, on virtual (or real) time, with
//! seeded loss, duplication, reordering, corruption and delay: the test
//! support that lets the transports be checked end to end without a
//! network, and the in-memory link of the `perf` command.
//!
//! Packets travel as real IPv4/UDP datagrams with a real ICRC, so a
//! corrupted bit is caught exactly where a real receiver catches it: by
//! the ICRC check, before the engine sees the packet.

use std::{cmp::Reverse, collections::BinaryHeap, net::IpAddr};

use etherparse::{IpNumber, Ipv4Header};
use rand::{Rng, SeedableRng, rngs::SmallRng};

use crate::{
    device::{DeviceAttrs, Gid},
    engine::{DropReason, Engine, RxMeta, Transmit},
    memory::VecMemory,
    wire::{ROCE_V2_UDP_PORT, frame::RoceFrame, icrc},
};

/// Impairments of the simulated link. Probabilities are per packet.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LinkConfig {
    /// Probability that a packet is lost.
    pub loss: f64,
    /// Probability that a packet is delivered twice.
    pub duplicate: f64,
    /// Probability that a packet is held back by `reorder_delay_ns`.
    pub reorder: f64,
    /// Probability that one bit of the IP datagram is flipped.
    pub corrupt: f64,
    /// One-way delay.
    pub delay_ns: u64,
    /// Extra delay of a reordered packet.
    pub reorder_delay_ns: u64,
    /// Probability that a packet is marked ECN congestion-experienced.
    pub ecn_mark: f64,
}

impl LinkConfig {
    /// A perfect link with the given delay.
    pub const fn clean(delay_ns: u64) -> LinkConfig {
        LinkConfig {
            loss: 0.0,
            duplicate: 0.0,
            reorder: 0.0,
            corrupt: 0.0,
            delay_ns,
            reorder_delay_ns: 0,
            ecn_mark: 0.0,
        }
    }
}

/// What the link did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LinkStats {
    /// Packets handed to the link.
    pub sent: u64,
    /// Packets dropped by simulated loss.
    pub lost: u64,
    /// Extra copies delivered.
    pub duplicated: u64,
    /// Packets delayed out of order.
    pub reordered: u64,
    /// Packets with a flipped bit.
    pub corrupted: u64,
    /// Corrupted packets the ICRC (or header checks) caught.
    pub rejected: u64,
    /// Packets whose flipped bit lies in a field the ICRC masks (TOS,
    /// TTL, IP checksum, UDP checksum, BTH byte 4); these are delivered.
    pub corrupted_masked: u64,
    /// Packets corrupted outside the masked fields that were delivered
    /// anyway. Must stay 0.
    pub undetected: u64,
    /// Packets delivered to an engine.
    pub delivered: u64,
}

#[derive(Debug, PartialEq, Eq, PartialOrd, Ord)]
struct InFlight {
    at: u64,
    seq: u64,
    to_b: bool,
    buf: usize,
    len: usize,
    /// Corrupted outside the masked fields.
    damaged: bool,
}

/// Two engines joined by a simulated link.
pub struct Pair {
    /// Side A (IPv4 10.0.0.1).
    pub a: Engine<VecMemory>,
    /// Side B (IPv4 10.0.0.2).
    pub b: Engine<VecMemory>,
    /// Current time in nanoseconds.
    pub now: u64,
    /// Link impairments; may be changed between steps.
    pub link: LinkConfig,
    /// Counters.
    pub stats: LinkStats,
    /// Print every packet and its fate to stderr (for debugging a seed).
    pub trace: bool,
    /// Packets to lose on purpose: (from A, n) loses the n-th packet
    /// (counting from 1) that side puts on the link.
    pub drop_nth: Vec<(bool, u64)>,
    /// Packets to damage on purpose (one payload bit flipped, so the
    /// receiver's ICRC check fails): (from A, n) as for `drop_nth`.
    pub corrupt_nth: Vec<(bool, u64)>,
    /// Packets each side has put on the link: (A, B).
    pub launched: (u64, u64),
    rng: SmallRng,
    queue: BinaryHeap<Reverse<InFlight>>,
    /// The ICRC prefix of each direction's last headers (A to B, B to A).
    prefix: [icrc::PrefixCache; 2],
    pool: Vec<Vec<u8>>,
    free: Vec<usize>,
    seq: u64,
}

/// How to connect a QP to its peer with [`connect`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Conn {
    /// The peer's QP number.
    pub dest: u32,
    /// The peer's GID.
    pub dgid: Gid,
    /// Path MTU.
    pub mtu: crate::wire::Mtu,
    /// First PSN this QP sends.
    pub sq_psn: u32,
    /// First PSN this QP expects.
    pub rq_psn: u32,
    /// Retransmit timeout code (4.096 µs × 2^timeout).
    pub timeout: u8,
    /// Transport retries (7: infinite, as in rxe).
    pub retry: u8,
    /// RNR retries (7: infinite).
    pub rnr_retry: u8,
}

/// Takes a QP from RESET through INIT and RTR to RTS, granting remote
/// read, write, atomic and flush access, 16 READ/atomic resources each way,
/// Q_Key 0x11111111 and the RNR timer code 1.
pub fn connect(
    e: &mut Engine<VecMemory>,
    qp: u32,
    c: Conn,
) -> Result<(), crate::verbs::VerbsError> {
    use crate::verbs::{Access, AhAttr, QpAttr, QpState, QpType};
    let remote = Access::REMOTE_WRITE
        .with(Access::REMOTE_READ)
        .with(Access::REMOTE_ATOMIC)
        .with(Access::FLUSH_GLOBAL)
        .with(Access::FLUSH_PERSISTENT);
    let ty = e
        .qp(qp)
        .map(|q| q.qp_type())
        .ok_or(crate::verbs::VerbsError::NoSuchObject {
            kind: "QP",
            handle: qp,
        })?;
    // Each transition with exactly the attributes its QP type takes.
    let (rc, connected) = (ty == QpType::Rc, matches!(ty, QpType::Rc | QpType::Uc));
    let steps = [
        QpAttr {
            state: Some(QpState::Init),
            access: connected.then_some(remote),
            pkey_index: Some(0),
            qkey: (!connected).then_some(0x1111_1111),
            ..Default::default()
        },
        QpAttr {
            state: Some(QpState::Rtr),
            dest_qp_num: connected.then_some(c.dest),
            rq_psn: connected.then_some(c.rq_psn),
            path_mtu: connected.then_some(c.mtu),
            max_dest_rd_atomic: rc.then_some(16),
            min_rnr_timer: rc.then_some(1),
            ah: connected.then_some(AhAttr {
                dgid: c.dgid,
                hop_limit: 64,
                ..Default::default()
            }),
            ..Default::default()
        },
        QpAttr {
            state: Some(QpState::Rts),
            sq_psn: Some(c.sq_psn),
            timeout: rc.then_some(c.timeout),
            retry_cnt: rc.then_some(c.retry),
            rnr_retry: rc.then_some(c.rnr_retry),
            max_rd_atomic: rc.then_some(16),
            ..Default::default()
        },
    ];
    for a in &steps {
        e.modify_qp(qp, a, 0)?;
    }
    Ok(())
}

/// The addresses of the two sides.
pub const ADDR_A: [u8; 4] = [10, 0, 0, 1];
/// The address of side B.
pub const ADDR_B: [u8; 4] = [10, 0, 0, 2];

const HEADROOM: usize = 20 + 8;

impl Pair {
    /// Two engines with `mem` bytes of memory each, rxe's default limits,
    /// and GID index 0 set to their IPv4 addresses.
    pub fn new(link: LinkConfig, seed: u64, mem: usize) -> Pair {
        let mut a = Engine::new(DeviceAttrs::default(), VecMemory::new(mem));
        let mut b = Engine::new(DeviceAttrs::default(), VecMemory::new(mem));
        a.gids_mut()
            .set(0, Some(Gid::from_ip(IpAddr::from(ADDR_A))));
        b.gids_mut()
            .set(0, Some(Gid::from_ip(IpAddr::from(ADDR_B))));
        Pair {
            a,
            b,
            now: 0,
            link,
            stats: LinkStats::default(),
            trace: false,
            drop_nth: Vec::new(),
            corrupt_nth: Vec::new(),
            launched: (0, 0),
            rng: SmallRng::seed_from_u64(seed),
            queue: BinaryHeap::new(),
            prefix: Default::default(),
            pool: Vec::new(),
            free: Vec::new(),
            seq: 0,
        }
    }

    /// The GID of side A.
    pub fn gid_a() -> Gid {
        Gid::from_ip(IpAddr::from(ADDR_A))
    }

    /// The GID of side B.
    pub fn gid_b() -> Gid {
        Gid::from_ip(IpAddr::from(ADDR_B))
    }

    /// Makes room for `packets` packets in flight at once: the buffers
    /// and the queue grow now instead of when the link first carries that
    /// many (for tests that count allocations).
    pub fn reserve(&mut self, packets: usize) {
        while self.pool.len() < packets {
            self.free.push(self.pool.len());
            self.pool.push(vec![0; 4096 + 256]);
        }
        self.free.reserve(packets);
        self.queue.reserve(packets.saturating_sub(self.queue.len()));
    }

    fn take_buf(&mut self) -> usize {
        match self.free.pop() {
            Some(i) => i,
            None => {
                self.pool.push(vec![0; 4096 + 256]);
                self.pool.len() - 1
            }
        }
    }

    /// Moves every packet both engines want to send onto the link.
    fn transmit_all(&mut self) -> bool {
        let mut any = false;
        for from_a in [true, false] {
            loop {
                let idx = self.take_buf();
                let mut buf = std::mem::take(&mut self.pool[idx]);
                let engine = if from_a { &mut self.a } else { &mut self.b };
                let t = engine.poll_transmit(self.now, &mut buf[HEADROOM..]);
                let Some(t) = t else {
                    self.pool[idx] = buf;
                    self.free.push(idx);
                    break;
                };
                any = true;
                let len = frame_ipv4(&mut buf, &t, from_a, &mut self.prefix[usize::from(!from_a)]);
                self.pool[idx] = buf;
                self.launch(idx, len, from_a);
                if self.link.delay_ns == 0 {
                    // A zero-delay link hands the packet over at once, while
                    // its bytes are still in cache.
                    self.deliver_due();
                }
            }
        }
        any
    }

    fn describe(&self, idx: usize, len: usize) -> String {
        match RoceFrame::parse_ip(&self.pool[idx][..len]) {
            Ok(rf) => match crate::wire::Packet::new_checked(rf.ib) {
                Ok(p) => {
                    let b = p.bth();
                    let aeth = p
                        .aeth()
                        .map(|a| format!(" {:?} msn {}", a.syndrome(), a.msn()));
                    format!(
                        "{} qp {} psn {}{} len {}",
                        b.opcode(),
                        b.dest_qp(),
                        b.psn(),
                        aeth.unwrap_or_default(),
                        p.payload_len()
                    )
                }
                Err(e) => e.to_string(),
            },
            Err(e) => e.to_string(),
        }
    }

    fn launch(&mut self, idx: usize, len: usize, to_b: bool) {
        self.stats.sent += 1;
        let cfg = self.link;
        let nth = if to_b {
            self.launched.0 += 1;
            self.launched.0
        } else {
            self.launched.1 += 1;
            self.launched.1
        };
        if self.drop_nth.contains(&(to_b, nth)) {
            self.stats.lost += 1;
            self.free.push(idx);
            return;
        }
        let forced_damage = self.corrupt_nth.contains(&(to_b, nth));
        if forced_damage {
            // A bit in the last payload byte before the ICRC.
            self.stats.corrupted += 1;
            self.pool[idx][len - 5] ^= 0x10;
        }
        if self.trace {
            let dir = if to_b { "A->B" } else { "B->A" };
            eprintln!("{:>10} {dir} {}", self.now, self.describe(idx, len));
        }
        if cfg.loss > 0.0 && self.rng.random_bool(cfg.loss) {
            if self.trace {
                eprintln!("{:>10}      lost", self.now);
            }
            self.stats.lost += 1;
            self.free.push(idx);
            return;
        }
        if cfg.ecn_mark > 0.0 && self.rng.random_bool(cfg.ecn_mark) {
            // Mark CE and fix the IPv4 header checksum as a router would.
            let b = &mut self.pool[idx];
            b[1] |= 3;
            b[10..12].fill(0);
            if let Ok((h, _)) = Ipv4Header::from_slice(&b[..20]) {
                let sum = h.calc_header_checksum();
                b[10..12].copy_from_slice(&sum.to_be_bytes());
            }
        }
        let mut damaged = forced_damage;
        if cfg.corrupt > 0.0 && self.rng.random_bool(cfg.corrupt) {
            self.stats.corrupted += 1;
            let bit = self.rng.random_range(0..len * 8);
            self.pool[idx][bit / 8] ^= 1 << (bit % 8);
            // IPv4 TOS, TTL, header checksum; UDP checksum; BTH byte 4.
            if matches!(bit / 8, 1 | 8 | 10 | 11 | 26 | 27 | 32) {
                self.stats.corrupted_masked += 1;
            } else {
                damaged = true;
            }
        }
        let mut at = self.now + cfg.delay_ns;
        if cfg.reorder > 0.0 && self.rng.random_bool(cfg.reorder) {
            self.stats.reordered += 1;
            at += cfg.reorder_delay_ns;
        }
        if cfg.duplicate > 0.0 && self.rng.random_bool(cfg.duplicate) {
            self.stats.duplicated += 1;
            let copy = self.take_buf();
            let (src, dst) = if copy < idx {
                let (l, r) = self.pool.split_at_mut(idx);
                (&r[0], &mut l[copy])
            } else {
                let (l, r) = self.pool.split_at_mut(copy);
                (&l[idx], &mut r[0])
            };
            dst[..len].copy_from_slice(&src[..len]);
            self.push(copy, len, to_b, at + 1, damaged);
        }
        self.push(idx, len, to_b, at, damaged);
    }

    fn push(&mut self, buf: usize, len: usize, to_b: bool, at: u64, damaged: bool) {
        self.seq += 1;
        let p = InFlight {
            at,
            seq: self.seq,
            to_b,
            buf,
            len,
            damaged,
        };
        if at <= self.now && self.queue.is_empty() {
            // Due now and nothing ahead of it: handed over at once.
            self.deliver(p);
        } else {
            self.queue.push(Reverse(p));
        }
    }

    /// Delivers every packet due by `now`.
    fn deliver_due(&mut self) -> bool {
        let mut any = false;
        while let Some(Reverse(p)) = self.queue.peek() {
            if p.at > self.now {
                break;
            }
            let Some(Reverse(p)) = self.queue.pop() else {
                break;
            };
            any = true;
            self.deliver(p);
        }
        any
    }

    /// Hands one packet to its receiver and counts its fate.
    fn deliver(&mut self, p: InFlight) {
        let len = p.len;
        // Take the buffer out of the pool while the engine reads it.
        let buf = std::mem::take(&mut self.pool[p.buf]);
        // The link computes its headers' part of the ICRC; the engine
        // checks the rest while it takes the packet.
        let parsed = RoceFrame::locate_ip(&buf[..len]).and_then(|rf| {
            let cache = &mut self.prefix[usize::from(!p.to_b)];
            cache
                .register(rf.ip_header(), rf.udp_header())
                .map(|reg| (rf, rf.ip_len, reg))
        });
        // Taken: the engine checked the ICRC and acted on the packet.
        // Dropped before that (no QP, wrong source, ...): left alone.
        let (taken, refused) = match parsed {
            Ok((rf, ip_len, reg)) => {
                let meta = RxMeta {
                    ip_header: &rf.l3[..ip_len],
                    ecn: rf.ecn,
                };
                let engine = if p.to_b { &mut self.b } else { &mut self.a };
                match engine.handle_packet_unverified(self.now, &meta, rf.ib, reg) {
                    Ok(()) | Err(DropReason::Cnp) => (true, false),
                    Err(DropReason::BadIcrc | DropReason::Malformed(_)) => (false, true),
                    Err(_) => (false, false),
                }
            }
            Err(_) => (false, true),
        };
        if refused || (p.damaged && !taken) {
            self.stats.rejected += 1;
        } else {
            self.stats.delivered += 1;
            if p.damaged {
                self.stats.undetected += 1;
            }
        }
        self.pool[p.buf] = buf;
        self.free.push(p.buf);
    }

    /// One round: transmit, deliver what is due, run expired timers.
    /// Returns whether anything happened.
    pub fn step(&mut self) -> bool {
        let sent = self.transmit_all();
        let delivered = self.deliver_due();
        let mut timed = false;
        for e in [&mut self.a, &mut self.b] {
            if e.poll_timeout().is_some_and(|t| t <= self.now) {
                e.handle_timeout(self.now);
                timed = true;
            }
        }
        sent || delivered || timed
    }

    /// The next time something is scheduled: a delivery or a timer.
    pub fn next_event(&self) -> Option<u64> {
        let q = self.queue.peek().map(|Reverse(p)| p.at);
        [q, self.a.poll_timeout(), self.b.poll_timeout()]
            .into_iter()
            .flatten()
            .min()
    }

    /// Runs on virtual time until nothing is left to do or `until` holds,
    /// at most up to virtual time `deadline`. Returns whether `until` held.
    pub fn drive(&mut self, deadline: u64, mut until: impl FnMut(&mut Pair) -> bool) -> bool {
        loop {
            while self.step() {
                if until(self) {
                    return true;
                }
            }
            if until(self) {
                return true;
            }
            match self.next_event() {
                Some(t) if t <= deadline => self.now = self.now.max(t),
                _ => return false,
            }
        }
    }
}

/// Wraps the transport packet at `buf[HEADROOM..]` in IPv4 and UDP
/// headers as rxe builds them (DF, TTL 64, ID 0, UDP checksum 0) and fills
/// in the ICRC. Returns the datagram length. The 28 header bytes are
/// written directly (a test checks them against etherparse's).
fn frame_ipv4(buf: &mut [u8], t: &Transmit, from_a: bool, prefix: &mut icrc::PrefixCache) -> usize {
    let (src, dst) = if from_a {
        (ADDR_A, ADDR_B)
    } else {
        (ADDR_B, ADDR_A)
    };
    let total = HEADROOM + t.len;
    let (Ok(total16), Some(h)) = (u16::try_from(total), buf.get_mut(..HEADROOM)) else {
        return total;
    };
    // The header's 16-bit words, summed for the checksum; then the 28
    // bytes written as whole words (the ICRC reads them back as words
    // right away, which narrow stores would stall).
    let be16 = |a: u8, b: u8| u32::from(u16::from_be_bytes([a, b]));
    let mut sum = be16(0x45, t.traffic_class)
        + u32::from(total16)
        + 0x4000 // DF
        + be16(64, IpNumber::UDP.0)
        + be16(src[0], src[1])
        + be16(src[2], src[3])
        + be16(dst[0], dst[1])
        + be16(dst[2], dst[3]);
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    let [t0, t1] = total16.to_be_bytes();
    let [c0, c1] = (!(sum as u16)).to_be_bytes();
    let [s0, s1] = t.udp_sport.to_be_bytes();
    let [d0, d1] = ROCE_V2_UDP_PORT.to_be_bytes();
    let [l0, l1] = (total16 - 20).to_be_bytes();
    h[..8].copy_from_slice(&[0x45, t.traffic_class, t0, t1, 0, 0, 0x40, 0]);
    h[8..16].copy_from_slice(&[64, IpNumber::UDP.0, c0, c1, src[0], src[1], src[2], src[3]]);
    h[16..24].copy_from_slice(&[dst[0], dst[1], dst[2], dst[3], s0, s1, d0, d1]);
    h[24..28].copy_from_slice(&[l0, l1, 0, 0]);
    let _ = prefix.fill_joined(&mut buf[..total], t.ib_crc);
    total
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::frame::{FrameRepr, IpRepr};
    use etherparse::UdpHeader;

    #[test]
    fn frame_ipv4_writes_what_etherparse_writes() {
        for (tclass, len, from_a) in [(0u8, 48usize, true), (0xc2, 4124, false), (0x03, 16, true)] {
            let t = Transmit {
                len,
                src_qp: 17,
                dest_qp: 18,
                dgid: Gid([0; 16]),
                sgid_index: 0,
                sgid: Gid([0; 16]),
                udp_sport: 0xc123,
                traffic_class: tclass,
                hop_limit: 64,
                ib_crc: None,
            };
            let mut ours = vec![0u8; HEADROOM + len];
            frame_ipv4(&mut ours, &t, from_a, &mut icrc::PrefixCache::default());
            let (src, dst) = if from_a {
                (ADDR_A, ADDR_B)
            } else {
                (ADDR_B, ADDR_A)
            };
            let mut ip = Ipv4Header::new(0, 64, IpNumber::UDP, src, dst).unwrap();
            ip.dont_fragment = true;
            ip.dscp = etherparse::IpDscp::try_new(tclass >> 2).unwrap();
            ip.ecn = etherparse::IpEcn::try_new(tclass & 3).unwrap();
            let outer = FrameRepr {
                ethernet: None,
                vlan: None,
                ip: IpRepr::V4(ip),
                udp: UdpHeader {
                    source_port: 0xc123,
                    destination_port: ROCE_V2_UDP_PORT,
                    length: 0,
                    checksum: 0,
                },
            };
            let mut theirs = vec![0u8; HEADROOM + len];
            outer.emit(&mut theirs, len).unwrap();
            assert_eq!(
                ours[..HEADROOM],
                theirs[..HEADROOM],
                "tclass {tclass:#x} len {len}"
            );
        }
    }
}
