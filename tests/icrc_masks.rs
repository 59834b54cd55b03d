//! ICRC over frames the project builds itself, IPv4 and IPv6: the masked
//! fields (IPv4 TOS/TTL/checksum, IPv6 traffic class/flow label/hop limit,
//! UDP checksum, BTH byte 4 with FECN/BECN) do not change the ICRC, and
//! every other bit does. The IPv6 ICRC is also checked against an
//! independent bit-by-bit CRC-32 over a masked header built field by field.

use etherparse::{
    EtherType, Ethernet2Header, IpDscp, IpEcn, IpNumber, Ipv4Header, Ipv6FlowLabel, Ipv6Header,
    UdpHeader,
};
use transport::wire::{
    AethRepr, AethSyndrome, AtomicEthRepr, BthRepr, DethRepr, ExtHeaders, ImmDtRepr, Opcode,
    Packet, PacketRepr, RethRepr,
    frame::{FrameRepr, IpRepr, RoceFrame},
    icrc,
};

fn bth(op: u8, qp: u32, psn: u32) -> BthRepr {
    BthRepr {
        opcode: Opcode(op),
        solicited: false,
        mig_req: false,
        pad_count: 0,
        pkey: 0xffff,
        fecn: false,
        becn: false,
        dest_qp: qp,
        ack_req: true,
        psn,
    }
}

fn sample_packets() -> Vec<PacketRepr> {
    let reth = RethRepr {
        va: 0x7f00_dead_b000,
        rkey: 0x1234,
        dma_len: 333,
    };
    vec![
        PacketRepr {
            bth: bth(0x04, 0x11, 1),
            ext: ExtHeaders::default(),
            payload_len: 61,
        },
        PacketRepr {
            bth: bth(0x0b, 0x12, 0xff_ffff),
            ext: ExtHeaders {
                reth: Some(reth),
                imm_dt: Some(ImmDtRepr { imm: 0xcafe_f00d }),
                ..Default::default()
            },
            payload_len: 333,
        },
        PacketRepr {
            bth: bth(0x11, 0x13, 77),
            ext: ExtHeaders {
                aeth: Some(AethRepr {
                    syndrome: AethSyndrome::Ack { credits: 31 },
                    msn: 9,
                }),
                ..Default::default()
            },
            payload_len: 0,
        },
        PacketRepr {
            bth: bth(0x13, 0x14, 78),
            ext: ExtHeaders {
                atomic_eth: Some(AtomicEthRepr {
                    va: 0x1000,
                    rkey: 7,
                    swap_add: 5,
                    compare: 6,
                }),
                ..Default::default()
            },
            payload_len: 0,
        },
        PacketRepr {
            bth: bth(0x65, 0x15, 79),
            ext: ExtHeaders {
                deth: Some(DethRepr {
                    qkey: 0x1111_1111,
                    src_qp: 0x22,
                }),
                imm_dt: Some(ImmDtRepr { imm: 1 }),
                ..Default::default()
            },
            payload_len: 256,
        },
    ]
}

fn ipv6() -> IpRepr {
    IpRepr::V6(Ipv6Header {
        traffic_class: 0,
        flow_label: Ipv6FlowLabel::try_new(0).unwrap(),
        payload_length: 0,
        next_header: IpNumber::UDP,
        hop_limit: 64,
        source: [0xfd, 0x77, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2],
        destination: [0xfd, 0x77, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1],
    })
}

fn ipv4() -> IpRepr {
    let mut h = Ipv4Header::new(0, 64, IpNumber::UDP, [10, 77, 0, 2], [10, 77, 0, 1]).unwrap();
    h.dont_fragment = true;
    h.identification = 0x1234;
    IpRepr::V4(h)
}

/// Builds a whole Ethernet frame with a valid ICRC.
fn build(ip: IpRepr, repr: &PacketRepr) -> Vec<u8> {
    let frame = FrameRepr {
        ethernet: Some(Ethernet2Header {
            source: [0x52, 0x54, 0, 0x77, 0, 2],
            destination: [0x52, 0x54, 0, 0x77, 0, 1],
            ether_type: match ip {
                IpRepr::V4(_) => EtherType::IPV4,
                IpRepr::V6(_) => EtherType::IPV6,
            },
        }),
        vlan: None,
        ip,
        udp: UdpHeader {
            source_port: 0xc000 | (repr.bth.dest_qp as u16 & 0x3fff),
            destination_port: 4791,
            length: 0,
            checksum: 0,
        },
    };
    let mut out = vec![0u8; frame.header_len() + repr.buffer_len()];
    let at = frame.emit(&mut out, repr.buffer_len()).unwrap();
    repr.emit(&mut out[at..]).unwrap();
    let p = at + repr.header_len();
    for (i, b) in out[p..p + repr.payload_len].iter_mut().enumerate() {
        *b = (i * 7 + 3) as u8;
    }
    icrc::fill(&mut out[frame.ip_offset()..]).unwrap();
    out
}

/// Bitwise reflected CRC-32 (poly 0xEDB88320), independent of crc32fast.
fn crc32_reference(data: &[u8]) -> u32 {
    let mut crc = 0xffff_ffffu32;
    for &b in data {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xedb8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

#[test]
fn ipv6_frames_pass_and_match_a_reference_crc() {
    for repr in sample_packets() {
        let frame = build(ipv6(), &repr);
        let rf = RoceFrame::parse_ethernet(&frame).unwrap();
        rf.verify_icrc().unwrap();
        assert_eq!(
            PacketRepr::parse(&Packet::new_checked(rf.ib).unwrap())
                .unwrap()
                .ext,
            repr.ext
        );
        // The masked pseudo-packet, built field by field from the reprs.
        let IpRepr::V6(mut ip) = rf.repr.ip.clone() else {
            unreachable!()
        };
        ip.traffic_class = 0xff;
        ip.flow_label = Ipv6FlowLabel::try_new(0xf_ffff).unwrap();
        ip.hop_limit = 0xff;
        let mut udp = rf.repr.udp.clone();
        udp.checksum = 0xffff;
        let mut data = vec![0xffu8; 8];
        data.extend_from_slice(&ip.to_bytes());
        data.extend_from_slice(&udp.to_bytes());
        let mut ib = rf.ib[..rf.ib.len() - 4].to_vec();
        ib[4] = 0xff;
        data.extend_from_slice(&ib);
        let want = crc32_reference(&data).to_le_bytes();
        assert_eq!(&rf.ib[rf.ib.len() - 4..], &want);
    }
}

/// Applies `f` to the frame's IP datagram and reports whether the ICRC
/// still verifies.
fn still_valid(frame: &[u8], f: impl Fn(&mut [u8])) -> bool {
    let mut l3 = frame[14..].to_vec();
    f(&mut l3);
    icrc::verify(&l3).is_ok()
}

#[test]
fn masked_fields_do_not_change_the_icrc() {
    for repr in sample_packets() {
        let v6 = build(ipv6(), &repr);
        // Traffic class (8 bits across bytes 0-1), flow label (20 bits), hop limit.
        for tc in [0x01u8, 0x03, 0x10, 0xb8, 0xff] {
            assert!(still_valid(&v6, |p| {
                p[0] = (p[0] & 0xf0) | (tc >> 4);
                p[1] = (p[1] & 0x0f) | (tc << 4);
            }));
        }
        for fl in [1u32, 0x8_0000, 0xf_ffff, 0x1_2345] {
            assert!(still_valid(&v6, |p| {
                p[1] = (p[1] & 0xf0) | ((fl >> 16) as u8 & 0x0f);
                p[2] = (fl >> 8) as u8;
                p[3] = fl as u8;
            }));
        }
        assert!(still_valid(&v6, |p| p[7] = 1));
        // UDP checksum (bytes 6-7 of the UDP header).
        assert!(still_valid(&v6, |p| p[46..48].copy_from_slice(&[0xbe, 0xef])));
        // FECN, BECN and the reserved bits of BTH byte 4.
        for b in [0x80u8, 0x40, 0xc0, 0x3f] {
            assert!(still_valid(&v6, |p| p[48 + 4] = b));
        }

        let v4 = build(ipv4(), &repr);
        for tos in [0x01u8, 0x02, 0x03, 0xb8, 0xff] {
            assert!(still_valid(&v4, |p| p[1] = tos));
        }
        assert!(still_valid(&v4, |p| p[8] = 1));
        assert!(still_valid(&v4, |p| p[10..12].copy_from_slice(&[0, 0])));
        assert!(still_valid(&v4, |p| p[26..28].copy_from_slice(&[1, 2])));
        assert!(still_valid(&v4, |p| p[28 + 4] = 0x80));
        assert!(still_valid(&v4, |p| p[28 + 4] = 0x40));
    }
}

fn masked_bit(v6: bool, byte: usize, bit: u8) -> bool {
    if v6 {
        match byte {
            0 => bit < 4,
            1..=3 | 7 | 46 | 47 | 52 => true,
            _ => false,
        }
    } else {
        matches!(byte, 1 | 8 | 10 | 11 | 26 | 27 | 32)
    }
}

#[test]
fn every_other_bit_changes_the_icrc() {
    for repr in sample_packets() {
        for (v6, frame) in [(true, build(ipv6(), &repr)), (false, build(ipv4(), &repr))] {
            let l3 = &frame[14..];
            let mut checked = 0;
            for byte in 0..l3.len() {
                for bit in 0..8u8 {
                    if masked_bit(v6, byte, bit) {
                        assert!(still_valid(&frame, |p| p[byte] ^= 1 << bit));
                    } else {
                        assert!(
                            !still_valid(&frame, |p| p[byte] ^= 1 << bit),
                            "v6={v6} byte {byte} bit {bit}"
                        );
                        checked += 1;
                    }
                }
            }
            assert!(checked > 8 * (l3.len() - 12));
        }
    }
}

#[test]
fn ipv4_header_is_what_rxe_sends() {
    let frame = build(ipv4(), &sample_packets()[0]);
    let rf = RoceFrame::parse_ethernet(&frame).unwrap();
    let IpRepr::V4(h) = &rf.repr.ip else {
        unreachable!()
    };
    assert!(h.dont_fragment);
    assert_eq!(h.time_to_live, 64);
    assert_eq!(h.header_checksum, h.calc_header_checksum());
    assert_eq!((h.dscp, h.ecn), (IpDscp::ZERO, IpEcn::NotEct));
    assert_eq!(rf.repr.udp.checksum, 0);
    assert_eq!(usize::from(rf.repr.udp.length), 8 + rf.ib.len());
}
