//! The InfiniBand transport packet carried as the UDP payload of RoCEv2:
//! BTH, the extension headers the opcode calls for, the payload, the pad,
//! and the 4-byte ICRC.
//!
//! ```text
//! +-----+-----------------+----------------------+-----+------+
//! | BTH | extension hdrs  |       payload        | pad | ICRC |
//! +-----+-----------------+----------------------+-----+------+
//!  12 B   per opcode table   0..=MTU bytes         0-3    4 B
//! ```

use super::{
    Aeth, AethRepr, AtomicAckEth, AtomicAckEthRepr, AtomicEth, AtomicEthRepr, Bth, BthRepr, Deth,
    DethRepr, Error, Feth, FethRepr, HeaderSet, ICRC_LEN, Ieth, IethRepr, ImmDt, ImmDtRepr, Mtu,
    Opcode, OpcodeInfo, PayloadRule, Position, Reason, Result, Reth, RethRepr, bth::HEADER_LEN,
    check_room, pad_len,
};

/// A read/write view of a whole transport packet, BTH through ICRC.
#[derive(Debug, Clone)]
pub struct Packet<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Packet<T> {
    /// Wraps a buffer without any check.
    pub const fn new_unchecked(buffer: T) -> Packet<T> {
        Packet { buffer }
    }

    /// Wraps a buffer and runs [`Packet::check_len`].
    pub fn new_checked(buffer: T) -> Result<Packet<T>> {
        let p = Packet::new_unchecked(buffer);
        p.check_len()?;
        Ok(p)
    }

    /// Checks everything the accessors rely on: the opcode is in the
    /// table, the buffer holds the BTH, the extension headers and the ICRC,
    /// its length is a multiple of 4, and the pad fits. After this
    /// succeeds no accessor panics.
    pub fn check_len(&self) -> Result<()> {
        let len = self.buffer.as_ref().len();
        check_room(len, HEADER_LEN)?;
        let info = self.bth().opcode().checked_info()?;
        check_room(len, info.header_len() + ICRC_LEN)?;
        if len % 4 != 0 {
            return Err(Error::Unaligned(len));
        }
        let room = len - info.header_len() - ICRC_LEN;
        let pad = self.bth().pad_count();
        if usize::from(pad) > room {
            return Err(Error::BadPad { pad, room });
        }
        Ok(())
    }

    /// Returns the underlying buffer.
    pub fn into_inner(self) -> T {
        self.buffer
    }

    /// The BTH.
    pub fn bth(&self) -> Bth<&[u8]> {
        Bth::new_unchecked(&self.buffer.as_ref()[..HEADER_LEN])
    }

    /// The opcode table row. Panics only if `check_len` was skipped.
    pub fn info(&self) -> &'static OpcodeInfo {
        let op = self.bth().opcode();
        op.info()
            .unwrap_or_else(|| panic!("unchecked packet with opcode {op}"))
    }

    /// Length of the BTH plus the extension headers.
    pub fn header_len(&self) -> usize {
        self.info().header_len()
    }

    /// The BTH and the extension headers.
    pub fn header(&self) -> &[u8] {
        &self.buffer.as_ref()[..self.header_len()]
    }

    /// The packet without its ICRC (what the ICRC covers of it).
    pub fn without_icrc(&self) -> &[u8] {
        let b = self.buffer.as_ref();
        &b[..b.len() - ICRC_LEN]
    }

    /// The bytes of one extension header, if the opcode has it.
    pub fn ext_header(&self, which: HeaderSet) -> Option<&[u8]> {
        let info = self.info();
        let off = HEADER_LEN + info.headers.offset_of(which)?;
        let len = HeaderSet::ORDER.iter().find(|(h, _, _)| *h == which)?.1;
        Some(&self.buffer.as_ref()[off..off + len])
    }

    /// The RETH, if present.
    pub fn reth(&self) -> Option<Reth<&[u8]>> {
        self.ext_header(HeaderSet::RETH).map(Reth::new_unchecked)
    }

    /// The AETH, if present.
    pub fn aeth(&self) -> Option<Aeth<&[u8]>> {
        self.ext_header(HeaderSet::AETH).map(Aeth::new_unchecked)
    }

    /// The AtomicETH, if present.
    pub fn atomic_eth(&self) -> Option<AtomicEth<&[u8]>> {
        self.ext_header(HeaderSet::ATOMIC_ETH)
            .map(AtomicEth::new_unchecked)
    }

    /// The AtomicAckETH, if present.
    pub fn atomic_ack_eth(&self) -> Option<AtomicAckEth<&[u8]>> {
        self.ext_header(HeaderSet::ATOMIC_ACK_ETH)
            .map(AtomicAckEth::new_unchecked)
    }

    /// The DETH, if present.
    pub fn deth(&self) -> Option<Deth<&[u8]>> {
        self.ext_header(HeaderSet::DETH).map(Deth::new_unchecked)
    }

    /// The ImmDt, if present.
    pub fn imm_dt(&self) -> Option<ImmDt<&[u8]>> {
        self.ext_header(HeaderSet::IMM_DT).map(ImmDt::new_unchecked)
    }

    /// The IETH, if present.
    pub fn ieth(&self) -> Option<Ieth<&[u8]>> {
        self.ext_header(HeaderSet::IETH).map(Ieth::new_unchecked)
    }

    /// The FETH, if present.
    pub fn feth(&self) -> Option<Feth<&[u8]>> {
        self.ext_header(HeaderSet::FETH).map(Feth::new_unchecked)
    }

    /// Payload length, without the pad.
    pub fn payload_len(&self) -> usize {
        self.buffer.as_ref().len()
            - self.header_len()
            - ICRC_LEN
            - usize::from(self.bth().pad_count())
    }

    /// The payload, without the pad.
    pub fn payload(&self) -> &[u8] {
        let start = self.header_len();
        &self.buffer.as_ref()[start..start + self.payload_len()]
    }

    /// The pad bytes.
    pub fn pad(&self) -> &[u8] {
        let b = self.buffer.as_ref();
        let start = self.header_len() + self.payload_len();
        &b[start..b.len() - ICRC_LEN]
    }

    /// The ICRC as carried on the wire (least-significant byte first).
    pub fn icrc(&self) -> u32 {
        let b = self.buffer.as_ref();
        let t = &b[b.len() - ICRC_LEN..];
        u32::from_le_bytes([t[0], t[1], t[2], t[3]])
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Packet<T> {
    /// The BTH, writable.
    pub fn bth_mut(&mut self) -> Bth<&mut [u8]> {
        Bth::new_unchecked(&mut self.buffer.as_mut()[..HEADER_LEN])
    }

    /// The bytes of one extension header, writable.
    pub fn ext_header_mut(&mut self, which: HeaderSet) -> Option<&mut [u8]> {
        let info = self.info();
        let off = HEADER_LEN + info.headers.offset_of(which)?;
        let len = HeaderSet::ORDER.iter().find(|(h, _, _)| *h == which)?.1;
        Some(&mut self.buffer.as_mut()[off..off + len])
    }

    /// The payload, writable.
    pub fn payload_mut(&mut self) -> &mut [u8] {
        let start = self.header_len();
        let len = self.payload_len();
        &mut self.buffer.as_mut()[start..start + len]
    }

    /// Writes the ICRC trailer (least-significant byte first).
    pub fn set_icrc(&mut self, icrc: u32) {
        let b = self.buffer.as_mut();
        let n = b.len();
        b[n - ICRC_LEN..].copy_from_slice(&icrc.to_le_bytes());
    }
}

/// The parsed extension headers of one packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ExtHeaders {
    /// DETH (UD).
    pub deth: Option<DethRepr>,
    /// FETH (FLUSH).
    pub feth: Option<FethRepr>,
    /// RETH (RDMA WRITE/READ, FLUSH, ATOMIC_WRITE).
    pub reth: Option<RethRepr>,
    /// AtomicETH (COMPARE_SWAP, FETCH_ADD).
    pub atomic_eth: Option<AtomicEthRepr>,
    /// AETH (ACKs and READ responses).
    pub aeth: Option<AethRepr>,
    /// AtomicAckETH.
    pub atomic_ack_eth: Option<AtomicAckEthRepr>,
    /// Immediate data.
    pub imm_dt: Option<ImmDtRepr>,
    /// Invalidate ETH.
    pub ieth: Option<IethRepr>,
}

impl ExtHeaders {
    /// Which headers are present.
    pub fn set(&self) -> HeaderSet {
        let mut s = HeaderSet::NONE;
        let mut add = |present: bool, h: HeaderSet| {
            if present {
                s = s.with(h);
            }
        };
        add(self.deth.is_some(), HeaderSet::DETH);
        add(self.feth.is_some(), HeaderSet::FETH);
        add(self.reth.is_some(), HeaderSet::RETH);
        add(self.atomic_eth.is_some(), HeaderSet::ATOMIC_ETH);
        add(self.aeth.is_some(), HeaderSet::AETH);
        add(self.atomic_ack_eth.is_some(), HeaderSet::ATOMIC_ACK_ETH);
        add(self.imm_dt.is_some(), HeaderSet::IMM_DT);
        add(self.ieth.is_some(), HeaderSet::IETH);
        s
    }
}

/// A parsed transport packet: everything but the payload bytes and the
/// ICRC, which the caller copies and computes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PacketRepr {
    /// The BTH. On emit its pad count is taken from `payload_len`.
    pub bth: BthRepr,
    /// The extension headers; must match the opcode's row of the table.
    pub ext: ExtHeaders,
    /// Payload length in bytes, without the pad.
    pub payload_len: usize,
}

impl PacketRepr {
    /// Parses and validates a packet: BTH version, extension headers, and
    /// the payload length against the opcode's rule. The payload against
    /// the path MTU is checked separately by [`PacketRepr::check_mtu`],
    /// since only the receiving QP knows its MTU.
    #[inline]
    pub fn parse<T: AsRef<[u8]>>(packet: &Packet<T>) -> Result<PacketRepr> {
        packet.check_len()?;
        let bth = BthRepr::parse(&packet.bth())?;
        let info = packet.info();
        // One walk over the opcode's headers in wire order (most data
        // packets have none).
        let mut ext = ExtHeaders::default();
        let mut off = HEADER_LEN;
        let buf = packet.buffer.as_ref();
        for &(h, len, _) in HeaderSet::ORDER.iter() {
            if info.headers.is_empty() {
                break;
            }
            if !info.headers.contains(h) {
                continue;
            }
            let b = &buf[off..off + len];
            off += len;
            if h == HeaderSet::DETH {
                ext.deth = Some(DethRepr::parse(&Deth::new_unchecked(b))?);
            } else if h == HeaderSet::FETH {
                ext.feth = Some(FethRepr::parse(&Feth::new_unchecked(b))?);
            } else if h == HeaderSet::RETH {
                ext.reth = Some(RethRepr::parse(&Reth::new_unchecked(b))?);
            } else if h == HeaderSet::ATOMIC_ETH {
                ext.atomic_eth = Some(AtomicEthRepr::parse(&AtomicEth::new_unchecked(b))?);
            } else if h == HeaderSet::AETH {
                ext.aeth = Some(AethRepr::parse(&Aeth::new_unchecked(b))?);
            } else if h == HeaderSet::ATOMIC_ACK_ETH {
                ext.atomic_ack_eth =
                    Some(AtomicAckEthRepr::parse(&AtomicAckEth::new_unchecked(b))?);
            } else if h == HeaderSet::IMM_DT {
                ext.imm_dt = Some(ImmDtRepr::parse(&ImmDt::new_unchecked(b))?);
            } else if h == HeaderSet::IETH {
                ext.ieth = Some(IethRepr::parse(&Ieth::new_unchecked(b))?);
            }
        }
        let payload_len = packet.payload_len();
        check_payload_rule(info, payload_len)?;
        Ok(PacketRepr {
            bth,
            ext,
            payload_len,
        })
    }

    /// The opcode's table row, or `BadOpcode`.
    pub fn info(&self) -> Result<&'static OpcodeInfo> {
        self.bth.opcode.checked_info()
    }

    /// Checks that the extension headers match the opcode and that the
    /// payload length fits the opcode's rule.
    pub fn check(&self) -> Result<()> {
        let info = self.info()?;
        if self.ext.set() != info.headers.without(HeaderSet::CNP_RESERVED) {
            return Err(Error::Malformed {
                layer: "transport",
                reason: Reason::Text(format!(
                    "{} needs headers [{}], the repr has [{}]",
                    self.bth.opcode,
                    info.headers.names().collect::<Vec<_>>().join(" "),
                    self.ext.set().names().collect::<Vec<_>>().join(" ")
                )),
            });
        }
        check_payload_rule(info, self.payload_len)
    }

    /// Checks the payload length against a path MTU, as rxe's responder
    /// does: an only or last packet carries at most one MTU (a last packet
    /// at least one byte), a first or middle packet exactly one MTU.
    pub fn check_mtu(&self, mtu: Mtu) -> Result<()> {
        let info = self.info()?;
        let (len, mtu) = (self.payload_len, mtu.bytes());
        if info.payload == PayloadRule::None {
            return Ok(());
        }
        match info.position {
            Position::First | Position::Middle if len != mtu => Err(Error::ShortSegment {
                opcode: info.name,
                mtu,
                len,
            }),
            _ if len > mtu => Err(Error::PayloadTooLong { len, mtu }),
            Position::Last if len == 0 => Err(Error::BadPayloadLength {
                opcode: info.name,
                expected: "at least one byte",
                len,
            }),
            _ => Ok(()),
        }
    }

    /// Length of the BTH and extension headers that `emit` writes.
    pub fn header_len(&self) -> usize {
        HEADER_LEN + self.ext_len()
    }

    fn ext_len(&self) -> usize {
        // The sizes of the headers present, summed without building their
        // set (this runs for every packet sent).
        // The sizes come from `HeaderSet::ORDER`, at compile time.
        let e = &self.ext;
        let n = |present: bool, len: usize| if present { len } else { 0 };
        n(e.deth.is_some(), const { HeaderSet::DETH.len() })
            + n(e.feth.is_some(), const { HeaderSet::FETH.len() })
            + n(e.reth.is_some(), const { HeaderSet::RETH.len() })
            + n(
                e.atomic_eth.is_some(),
                const { HeaderSet::ATOMIC_ETH.len() },
            )
            + n(e.aeth.is_some(), const { HeaderSet::AETH.len() })
            + n(
                e.atomic_ack_eth.is_some(),
                const { HeaderSet::ATOMIC_ACK_ETH.len() },
            )
            + n(e.imm_dt.is_some(), const { HeaderSet::IMM_DT.len() })
            + n(e.ieth.is_some(), const { HeaderSet::IETH.len() })
            + n(
                self.bth.opcode == Opcode::CNP,
                const { HeaderSet::CNP_RESERVED.len() },
            )
    }

    /// Length of the whole packet: headers, payload, pad and ICRC.
    pub fn buffer_len(&self) -> usize {
        self.header_len() + self.payload_len + pad_len(self.payload_len) + ICRC_LEN
    }

    /// Writes the BTH and extension headers, zeroes the pad (and a CNP's
    /// reserved bytes), and leaves the payload and the ICRC to the caller.
    /// `buf` must be at least [`PacketRepr::buffer_len`] bytes; the packet
    /// occupies exactly that prefix.
    pub fn emit(&self, buf: &mut [u8]) -> Result<()> {
        let total = self.buffer_len();
        check_room(buf.len(), total)?;
        let buf = &mut buf[..total];
        let mut bth = self.bth;
        bth.pad_count = pad_len(self.payload_len) as u8;
        bth.emit(&mut Bth::new_unchecked(&mut buf[..HEADER_LEN]));
        let mut off = HEADER_LEN;
        let mut take = |n: usize| {
            let r = off..off + n;
            off += n;
            r
        };
        let e = &self.ext;
        if let Some(h) = e.deth {
            h.emit(&mut Deth::new_unchecked(&mut buf[take(8)]));
        }
        if let Some(h) = e.feth {
            h.emit(&mut Feth::new_unchecked(&mut buf[take(4)]));
        }
        if let Some(h) = e.reth {
            h.emit(&mut Reth::new_unchecked(&mut buf[take(16)]));
        }
        if let Some(h) = e.atomic_eth {
            h.emit(&mut AtomicEth::new_unchecked(&mut buf[take(28)]));
        }
        if let Some(h) = e.aeth {
            h.emit(&mut Aeth::new_unchecked(&mut buf[take(4)]));
        }
        if let Some(h) = e.atomic_ack_eth {
            h.emit(&mut AtomicAckEth::new_unchecked(&mut buf[take(8)]));
        }
        if let Some(h) = e.imm_dt {
            h.emit(&mut ImmDt::new_unchecked(&mut buf[take(4)]));
        }
        if let Some(h) = e.ieth {
            h.emit(&mut Ieth::new_unchecked(&mut buf[take(4)]));
        }
        if self.bth.opcode == Opcode::CNP {
            buf[take(16)].fill(0);
        }
        let pad_start = off + self.payload_len;
        buf[pad_start..total - ICRC_LEN].fill(0);
        Ok(())
    }
}

fn check_payload_rule(info: &OpcodeInfo, len: usize) -> Result<()> {
    let ok = match info.payload {
        PayloadRule::None => len == 0,
        PayloadRule::UpToMtu => len <= Mtu::Mtu4096.bytes(),
        PayloadRule::Exactly(n) => len == n,
    };
    if ok {
        return Ok(());
    }
    let expected = match info.payload {
        PayloadRule::None => "no payload",
        PayloadRule::UpToMtu => "at most 4096 bytes",
        PayloadRule::Exactly(_) => "exactly 8 bytes",
    };
    Err(Error::BadPayloadLength {
        opcode: info.name,
        expected,
        len,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::AethSyndrome;

    fn bth(op: u8) -> BthRepr {
        BthRepr {
            opcode: Opcode(op),
            solicited: false,
            mig_req: false,
            pad_count: 0,
            pkey: 0xffff,
            fecn: false,
            becn: false,
            dest_qp: 0x12,
            ack_req: true,
            psn: 0xff_fffe,
        }
    }

    fn write_imm(payload_len: usize) -> PacketRepr {
        PacketRepr {
            bth: bth(0x0b),
            ext: ExtHeaders {
                reth: Some(RethRepr {
                    va: 0x1000,
                    rkey: 0x77,
                    dma_len: payload_len as u32,
                }),
                imm_dt: Some(ImmDtRepr { imm: 0xabcd }),
                ..Default::default()
            },
            payload_len,
        }
    }

    #[test]
    fn header_len_is_that_of_the_header_set() {
        // Every combination of extension headers, and the CNP.
        for bits in 0u16..256 {
            let has = |i: u16| bits & (1 << i) != 0;
            let mut r = write_imm(0);
            r.ext = ExtHeaders {
                deth: has(0).then_some(DethRepr { qkey: 1, src_qp: 2 }),
                feth: has(1).then_some(FethRepr {
                    placement_type: 1,
                    selectivity_level: 0,
                }),
                reth: has(2).then_some(RethRepr {
                    va: 1,
                    rkey: 2,
                    dma_len: 3,
                }),
                atomic_eth: has(3).then_some(AtomicEthRepr {
                    va: 8,
                    rkey: 1,
                    swap_add: 2,
                    compare: 3,
                }),
                aeth: has(4).then_some(AethRepr {
                    syndrome: AethSyndrome::Ack { credits: 0 },
                    msn: 1,
                }),
                atomic_ack_eth: has(5).then_some(AtomicAckEthRepr { orig: 5 }),
                imm_dt: has(6).then_some(ImmDtRepr { imm: 1 }),
                ieth: has(7).then_some(IethRepr { rkey: 1 }),
            };
            for op in [0x0b, 0x81] {
                r.bth.opcode = Opcode(op);
                let cnp = if op == 0x81 {
                    HeaderSet::CNP_RESERVED.len()
                } else {
                    0
                };
                assert_eq!(
                    r.header_len(),
                    HEADER_LEN + r.ext.set().len() + cnp,
                    "headers {bits:#x}, opcode {op:#x}"
                );
            }
        }
    }

    #[test]
    fn emit_then_parse() {
        for len in [0usize, 1, 2, 3, 4, 5, 1023, 1024] {
            let repr = write_imm(len);
            repr.check().unwrap();
            let mut buf = vec![0xeeu8; repr.buffer_len()];
            repr.emit(&mut buf).unwrap();
            let mut p = Packet::new_checked(&mut buf[..]).unwrap();
            p.payload_mut().fill(0x5a);
            assert_eq!(p.payload_len(), len);
            assert_eq!(p.pad().len(), pad_len(len));
            assert!(p.pad().iter().all(|&b| b == 0));
            let mut parsed = PacketRepr::parse(&p).unwrap();
            assert_eq!(parsed.bth.pad_count as usize, pad_len(len));
            parsed.bth.pad_count = 0;
            assert_eq!(parsed, repr);
        }
    }

    #[test]
    fn cnp_layout() {
        let repr = PacketRepr {
            bth: BthRepr {
                becn: true,
                ack_req: false,
                psn: 0,
                ..bth(0x81)
            },
            ext: ExtHeaders::default(),
            payload_len: 0,
        };
        repr.check().unwrap();
        assert_eq!(repr.buffer_len(), 12 + 16 + 4);
        let mut buf = vec![0xeeu8; repr.buffer_len()];
        repr.emit(&mut buf).unwrap();
        assert!(buf[12..28].iter().all(|&b| b == 0));
        let p = Packet::new_checked(&buf[..]).unwrap();
        assert!(p.bth().becn());
        assert_eq!(PacketRepr::parse(&p).unwrap().payload_len, 0);
    }

    #[test]
    fn check_rejects_mismatched_headers() {
        let mut repr = write_imm(8);
        repr.ext.aeth = Some(AethRepr {
            syndrome: AethSyndrome::Ack { credits: 0 },
            msn: 0,
        });
        assert!(matches!(repr.check(), Err(Error::Malformed { .. })));
    }

    #[test]
    fn payload_rules() {
        // An ACK with payload is invalid.
        let ack = PacketRepr {
            bth: bth(0x11),
            ext: ExtHeaders {
                aeth: Some(AethRepr {
                    syndrome: AethSyndrome::Ack { credits: 31 },
                    msn: 1,
                }),
                ..Default::default()
            },
            payload_len: 4,
        };
        let mut buf = vec![0u8; ack.buffer_len()];
        ack.emit(&mut buf).unwrap();
        let err = PacketRepr::parse(&Packet::new_checked(&buf[..]).unwrap()).unwrap_err();
        assert!(
            matches!(err, Error::BadPayloadLength { len: 4, .. }),
            "{err}"
        );
    }

    #[test]
    fn mtu_rules() {
        let mut first = PacketRepr {
            bth: bth(0x06),
            ..write_imm(1024)
        };
        first.ext.imm_dt = None;
        assert_eq!(first.check_mtu(Mtu::Mtu1024), Ok(()));
        assert!(matches!(
            first.check_mtu(Mtu::Mtu2048),
            Err(Error::ShortSegment { .. })
        ));
        let only = write_imm(1025);
        assert_eq!(
            only.check_mtu(Mtu::Mtu1024),
            Err(Error::PayloadTooLong {
                len: 1025,
                mtu: 1024
            })
        );
        assert_eq!(only.check_mtu(Mtu::Mtu2048), Ok(()));
        let last = PacketRepr {
            bth: bth(0x02),
            ext: ExtHeaders::default(),
            payload_len: 0,
        };
        assert!(matches!(
            last.check_mtu(Mtu::Mtu256),
            Err(Error::BadPayloadLength { .. })
        ));
    }

    #[test]
    fn impossible_lengths() {
        let repr = write_imm(5);
        let mut buf = vec![0u8; repr.buffer_len()];
        repr.emit(&mut buf).unwrap();
        assert_eq!(
            Packet::new_checked(&buf[..11]).unwrap_err(),
            Error::Truncated { need: 12, have: 11 }
        );
        assert_eq!(
            Packet::new_checked(&buf[..35]).unwrap_err(),
            Error::Truncated { need: 36, have: 35 }
        );
        assert_eq!(
            Packet::new_checked(&buf[..37]).unwrap_err(),
            Error::Unaligned(37)
        );
        // Pad count 3 with no payload room.
        let mut short = buf[..36].to_vec();
        Bth::new_unchecked(&mut short[..12]).set_pad_count(3);
        assert_eq!(
            Packet::new_checked(&short[..]).unwrap_err(),
            Error::BadPad { pad: 3, room: 0 }
        );
        assert_eq!(
            repr.emit(&mut buf[..10]),
            Err(Error::Truncated { need: 44, have: 10 })
        );
        let mut bad_op = buf.clone();
        bad_op[0] = 0x15;
        assert_eq!(
            Packet::new_checked(&bad_op[..]).unwrap_err(),
            Error::BadOpcode(0x15)
        );
    }
}
