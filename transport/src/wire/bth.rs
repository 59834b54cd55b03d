//! Base Transport Header (IBTA 9.2), 12 bytes, present in every packet.

use super::{Error, Opcode, Result, read_u24, write_u24};

/// Length of the BTH.
pub const HEADER_LEN: usize = 12;

/// Byte ranges of the BTH fields.
///
/// ```text
///  0               1               2               3
/// +---------------+-+-+---+-------+-------------------------------+
/// |    OpCode     |S|M|Pad| TVer  |           P_Key               |
/// +-+-+-----------+-+-+---+-------+-------------------------------+
/// |F|B|  Resv6    |              Destination QP                   |
/// +-+-------------+-----------------------------------------------+
/// |A|  Resv7      |         Packet Sequence Number                |
/// +-+-------------+-----------------------------------------------+
/// ```
///
/// F and B are the RoCEv2 FECN and BECN bits; byte 4 as a whole is masked
/// out of the ICRC.
mod field {
    use core::ops::Range;
    pub const OPCODE: usize = 0;
    pub const FLAGS: usize = 1;
    pub const PKEY: Range<usize> = 2..4;
    pub const RESV8A: usize = 4;
    pub const DEST_QP: Range<usize> = 5..8;
    pub const ACK: usize = 8;
    pub const PSN: Range<usize> = 9..12;
}

const SE: u8 = 0x80;
const MIG: u8 = 0x40;
const PAD_MASK: u8 = 0x30;
const TVER_MASK: u8 = 0x0f;
const FECN: u8 = 0x80;
const BECN: u8 = 0x40;
const ACK_REQ: u8 = 0x80;

header_view!(
    /// A read/write view of a BTH.
    Bth,
    HEADER_LEN
);

impl<T: AsRef<[u8]>> Bth<T> {
    /// The opcode.
    pub fn opcode(&self) -> Opcode {
        Opcode(self.buffer.as_ref()[field::OPCODE])
    }

    /// Solicited event.
    pub fn solicited(&self) -> bool {
        self.buffer.as_ref()[field::FLAGS] & SE != 0
    }

    /// Migration state.
    pub fn mig_req(&self) -> bool {
        self.buffer.as_ref()[field::FLAGS] & MIG != 0
    }

    /// Pad count: bytes added to the payload to reach a 4-byte boundary.
    pub fn pad_count(&self) -> u8 {
        (self.buffer.as_ref()[field::FLAGS] & PAD_MASK) >> 4
    }

    /// Transport header version, 0 for this specification.
    pub fn tver(&self) -> u8 {
        self.buffer.as_ref()[field::FLAGS] & TVER_MASK
    }

    /// Partition key.
    pub fn pkey(&self) -> u16 {
        let b = self.buffer.as_ref();
        u16::from_be_bytes([b[field::PKEY.start], b[field::PKEY.start + 1]])
    }

    /// RoCEv2 forward explicit congestion notification.
    pub fn fecn(&self) -> bool {
        self.buffer.as_ref()[field::RESV8A] & FECN != 0
    }

    /// RoCEv2 backward explicit congestion notification.
    pub fn becn(&self) -> bool {
        self.buffer.as_ref()[field::RESV8A] & BECN != 0
    }

    /// The six reserved bits after FECN and BECN.
    pub fn resv6(&self) -> u8 {
        self.buffer.as_ref()[field::RESV8A] & 0x3f
    }

    /// Destination QP number.
    pub fn dest_qp(&self) -> u32 {
        read_u24(&self.buffer.as_ref()[field::DEST_QP])
    }

    /// Acknowledge request.
    pub fn ack_req(&self) -> bool {
        self.buffer.as_ref()[field::ACK] & ACK_REQ != 0
    }

    /// The seven reserved bits after AckReq.
    pub fn resv7(&self) -> u8 {
        self.buffer.as_ref()[field::ACK] & 0x7f
    }

    /// Packet sequence number.
    pub fn psn(&self) -> u32 {
        read_u24(&self.buffer.as_ref()[field::PSN])
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Bth<T> {
    fn set_flag(&mut self, idx: usize, mask: u8, on: bool) {
        let b = &mut self.buffer.as_mut()[idx];
        *b = if on { *b | mask } else { *b & !mask };
    }

    /// Sets the opcode.
    pub fn set_opcode(&mut self, op: Opcode) {
        self.buffer.as_mut()[field::OPCODE] = op.0;
    }

    /// Sets the solicited event bit.
    pub fn set_solicited(&mut self, on: bool) {
        self.set_flag(field::FLAGS, SE, on);
    }

    /// Sets the migration bit.
    pub fn set_mig_req(&mut self, on: bool) {
        self.set_flag(field::FLAGS, MIG, on);
    }

    /// Sets the pad count (0..=3).
    pub fn set_pad_count(&mut self, pad: u8) {
        let b = &mut self.buffer.as_mut()[field::FLAGS];
        *b = (*b & !PAD_MASK) | ((pad << 4) & PAD_MASK);
    }

    /// Sets the transport version.
    pub fn set_tver(&mut self, tver: u8) {
        let b = &mut self.buffer.as_mut()[field::FLAGS];
        *b = (*b & !TVER_MASK) | (tver & TVER_MASK);
    }

    /// Sets the partition key.
    pub fn set_pkey(&mut self, pkey: u16) {
        self.buffer.as_mut()[field::PKEY].copy_from_slice(&pkey.to_be_bytes());
    }

    /// Sets FECN.
    pub fn set_fecn(&mut self, on: bool) {
        self.set_flag(field::RESV8A, FECN, on);
    }

    /// Sets BECN.
    pub fn set_becn(&mut self, on: bool) {
        self.set_flag(field::RESV8A, BECN, on);
    }

    /// Sets the six reserved bits of byte 4.
    pub fn set_resv6(&mut self, v: u8) {
        let b = &mut self.buffer.as_mut()[field::RESV8A];
        *b = (*b & 0xc0) | (v & 0x3f);
    }

    /// Sets the destination QP (low 24 bits of `qpn`).
    pub fn set_dest_qp(&mut self, qpn: u32) {
        write_u24(&mut self.buffer.as_mut()[field::DEST_QP], qpn);
    }

    /// Sets AckReq.
    pub fn set_ack_req(&mut self, on: bool) {
        self.set_flag(field::ACK, ACK_REQ, on);
    }

    /// Sets the seven reserved bits of byte 8.
    pub fn set_resv7(&mut self, v: u8) {
        let b = &mut self.buffer.as_mut()[field::ACK];
        *b = (*b & ACK_REQ) | (v & 0x7f);
    }

    /// Sets the PSN (low 24 bits of `psn`).
    pub fn set_psn(&mut self, psn: u32) {
        write_u24(&mut self.buffer.as_mut()[field::PSN], psn);
    }
}

/// A parsed BTH.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct BthRepr {
    /// Opcode.
    pub opcode: Opcode,
    /// Solicited event.
    pub solicited: bool,
    /// Migration request.
    pub mig_req: bool,
    /// Pad count.
    pub pad_count: u8,
    /// Partition key.
    pub pkey: u16,
    /// FECN.
    pub fecn: bool,
    /// BECN.
    pub becn: bool,
    /// Destination QP, 24 bits.
    pub dest_qp: u32,
    /// AckReq.
    pub ack_req: bool,
    /// PSN, 24 bits.
    pub psn: u32,
}

impl BthRepr {
    /// Parses a BTH. The transport version must be 0; the reserved bits
    /// are ignored on receive as the IBTA requires.
    pub fn parse<T: AsRef<[u8]>>(bth: &Bth<T>) -> Result<BthRepr> {
        bth.check_len()?;
        if bth.tver() != 0 {
            return Err(Error::BadVersion(bth.tver()));
        }
        Ok(BthRepr {
            opcode: bth.opcode(),
            solicited: bth.solicited(),
            mig_req: bth.mig_req(),
            pad_count: bth.pad_count(),
            pkey: bth.pkey(),
            fecn: bth.fecn(),
            becn: bth.becn(),
            dest_qp: bth.dest_qp(),
            ack_req: bth.ack_req(),
            psn: bth.psn(),
        })
    }

    /// Length of the emitted header.
    pub const fn buffer_len(&self) -> usize {
        HEADER_LEN
    }

    /// Writes the BTH; reserved bits are written as zero.
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(&self, bth: &mut Bth<T>) {
        // Built in registers and written as two stores, so that whoever
        // reads the header next in words (the ICRC) is not stalled by a
        // dozen narrow stores.
        let bit = |on: bool, b: u8| if on { b } else { 0 };
        let flags =
            bit(self.solicited, SE) | bit(self.mig_req, MIG) | ((self.pad_count << 4) & PAD_MASK);
        let [k0, k1] = self.pkey.to_be_bytes();
        let b4 = bit(self.fecn, FECN) | bit(self.becn, BECN);
        let [_, q0, q1, q2] = self.dest_qp.to_be_bytes();
        let [_, p0, p1, p2] = self.psn.to_be_bytes();
        let w0 = [self.opcode.0, flags, k0, k1, b4, q0, q1, q2];
        let w1 = [bit(self.ack_req, ACK_REQ), p0, p1, p2];
        let buf = bth.buffer.as_mut();
        buf[..8].copy_from_slice(&w0);
        buf[8..HEADER_LEN].copy_from_slice(&w1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // RC SEND_ONLY from the rxe capture, frame 1.
    static BYTES: [u8; 12] = [
        0x04, 0x00, 0xff, 0xff, 0x00, 0x00, 0x00, 0x11, 0x80, 0x54, 0x63, 0xed,
    ];

    fn repr() -> BthRepr {
        BthRepr {
            opcode: Opcode(0x04),
            solicited: false,
            mig_req: false,
            pad_count: 0,
            pkey: 0xffff,
            fecn: false,
            becn: false,
            dest_qp: 0x11,
            ack_req: true,
            psn: 0x5463ed,
        }
    }

    #[test]
    fn deconstruct() {
        let b = Bth::new_checked(&BYTES[..]).unwrap();
        assert_eq!(b.opcode(), Opcode(4));
        assert!(!b.solicited());
        assert_eq!(b.pad_count(), 0);
        assert_eq!(b.tver(), 0);
        assert_eq!(b.pkey(), 0xffff);
        assert_eq!(b.dest_qp(), 0x11);
        assert!(b.ack_req());
        assert_eq!(b.psn(), 0x5463ed);
    }

    #[test]
    fn construct() {
        let mut buf = [0xa5u8; 12];
        let mut b = Bth::new_unchecked(&mut buf[..]);
        b.set_opcode(Opcode(4));
        b.set_solicited(false);
        b.set_mig_req(false);
        b.set_pad_count(0);
        b.set_tver(0);
        b.set_pkey(0xffff);
        b.set_fecn(false);
        b.set_becn(false);
        b.set_resv6(0);
        b.set_dest_qp(0x11);
        b.set_ack_req(true);
        b.set_resv7(0);
        b.set_psn(0x5463ed);
        assert_eq!(buf, BYTES);
    }

    #[test]
    fn parse_and_emit() {
        assert_eq!(BthRepr::parse(&Bth::new_unchecked(&BYTES[..])), Ok(repr()));
        let mut buf = [0xffu8; 12];
        repr().emit(&mut Bth::new_unchecked(&mut buf[..]));
        assert_eq!(buf, BYTES);
    }

    #[test]
    fn emit_writes_what_the_setters_write() {
        let mut x = 0x2545_f491_4f6c_dd1du64;
        for _ in 0..5000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let r = BthRepr {
                opcode: Opcode(x as u8),
                solicited: x & (1 << 8) != 0,
                mig_req: x & (1 << 9) != 0,
                pad_count: (x >> 10) as u8 & 3,
                pkey: (x >> 12) as u16,
                fecn: x & (1 << 28) != 0,
                becn: x & (1 << 29) != 0,
                dest_qp: (x >> 30) as u32 & 0xff_ffff,
                ack_req: x & (1 << 54) != 0,
                psn: (x >> 40) as u32 & 0xff_ffff,
            };
            // The setters, on a buffer whose reserved bits start as zero.
            let mut want = [0u8; HEADER_LEN];
            let mut b = Bth::new_unchecked(&mut want[..]);
            b.set_opcode(r.opcode);
            b.set_solicited(r.solicited);
            b.set_mig_req(r.mig_req);
            b.set_pad_count(r.pad_count);
            b.set_pkey(r.pkey);
            b.set_fecn(r.fecn);
            b.set_becn(r.becn);
            b.set_dest_qp(r.dest_qp);
            b.set_ack_req(r.ack_req);
            b.set_psn(r.psn);
            let mut got = [0xa5u8; HEADER_LEN];
            r.emit(&mut Bth::new_unchecked(&mut got[..]));
            assert_eq!(got, want, "{r:?}");
        }
    }

    #[test]
    fn flags_are_independent() {
        let mut buf = [0u8; 12];
        let mut b = Bth::new_unchecked(&mut buf[..]);
        b.set_pad_count(3);
        b.set_solicited(true);
        b.set_tver(0xf);
        b.set_fecn(true);
        b.set_becn(true);
        b.set_dest_qp(0xffff_ffff);
        b.set_psn(0x0123_4567);
        assert_eq!(b.pad_count(), 3);
        assert!(b.solicited() && !b.mig_req());
        assert_eq!(b.tver(), 0xf);
        assert!(b.fecn() && b.becn());
        assert_eq!(b.resv6(), 0);
        assert_eq!(b.dest_qp(), 0xff_ffff);
        assert_eq!(b.psn(), 0x23_4567);
        assert!(!b.ack_req());
    }

    #[test]
    fn impossible_len() {
        assert_eq!(
            Bth::new_checked(&BYTES[..11]).unwrap_err(),
            Error::Truncated { need: 12, have: 11 }
        );
    }

    #[test]
    fn rejects_other_tver() {
        let mut buf = BYTES;
        buf[1] = 0x01;
        assert_eq!(
            BthRepr::parse(&Bth::new_unchecked(&buf[..])),
            Err(Error::BadVersion(1))
        );
    }
}
