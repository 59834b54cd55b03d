//! Golden vectors from Linux kernel rxe (and one CNP from a ConnectX-4 Lx):
//! every RoCEv2 frame parses, matches the capture's JSON decode,
//! re-emits byte for byte from its reprs, and passes the ICRC; a single
//! flipped bit anywhere the ICRC covers makes it fail.

use std::collections::BTreeSet;

use backend::capture::LinkType;
use roce_tests::{data_path, hex, read_frames};
use transport::wire::{Mtu, Packet, PacketRepr, frame::RoceFrame, icrc};

/// Rebuilds a frame from its parsed reprs and the original payload.
fn re_emit(frame: &[u8]) -> Vec<u8> {
    let rf = RoceFrame::parse_ethernet(frame).unwrap();
    let pkt = Packet::new_checked(rf.ib).unwrap();
    let repr = PacketRepr::parse(&pkt).unwrap();
    repr.check().unwrap();
    let mut out = vec![0u8; rf.repr.header_len() + repr.buffer_len()];
    let ib_at = rf.repr.emit(&mut out, repr.buffer_len()).unwrap();
    repr.emit(&mut out[ib_at..]).unwrap();
    let payload_at = ib_at + repr.header_len();
    out[payload_at..payload_at + repr.payload_len].copy_from_slice(pkt.payload());
    icrc::fill(&mut out[rf.repr.ip_offset()..]).unwrap();
    out
}

#[test]
fn every_rxe_frame_parses_re_emits_and_passes_icrc() {
    let frames = read_frames("rxe-capture.pcap");
    assert_eq!(frames.len(), 194);
    for (i, (link, frame)) in frames.iter().enumerate() {
        assert_eq!(*link, LinkType::Ethernet);
        let rf =
            RoceFrame::parse_ethernet(frame).unwrap_or_else(|e| panic!("frame {}: {e}", i + 1));
        rf.verify_icrc()
            .unwrap_or_else(|e| panic!("frame {}: {e}", i + 1));
        let repr = PacketRepr::parse(&Packet::new_checked(rf.ib).unwrap()).unwrap();
        repr.check_mtu(Mtu::Mtu1024)
            .unwrap_or_else(|e| panic!("frame {}: {e}", i + 1));
        assert_eq!(
            &re_emit(frame),
            frame,
            "frame {} does not re-emit byte for byte",
            i + 1
        );
    }
}

#[test]
fn frames_match_the_json_decode() {
    let frames = read_frames("rxe-capture.pcap");
    let json = std::fs::read_to_string(data_path("rxe-capture.jsonl")).unwrap();
    let mut seen = 0;
    for line in json.lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        let n = v["frame"].as_u64().unwrap() as usize;
        let frame = &frames[n - 1].1;
        assert_eq!(
            hex(v["eth_hex"].as_str().unwrap()),
            *frame,
            "frame {n} bytes"
        );
        let rf = RoceFrame::parse_ethernet(frame).unwrap();
        let repr = PacketRepr::parse(&Packet::new_checked(rf.ib).unwrap()).unwrap();
        let name = repr.bth.opcode.to_string();
        assert_eq!(name, v["opcode_name"].as_str().unwrap(), "frame {n}");
        assert_eq!(u64::from(repr.bth.opcode.0), v["opcode"].as_u64().unwrap());
        assert_eq!(u64::from(repr.bth.dest_qp), v["dqpn"].as_u64().unwrap());
        assert_eq!(u64::from(repr.bth.psn), v["psn"].as_u64().unwrap());
        assert_eq!(u64::from(repr.bth.ack_req), v["ackreq"].as_u64().unwrap());
        assert_eq!(
            u64::from(repr.bth.pad_count),
            v["padcount"].as_u64().unwrap()
        );
        assert_eq!(
            rf.repr.ip.src_addr().to_string(),
            v["src"].as_str().unwrap()
        );
        assert_eq!(
            rf.repr.ip.dst_addr().to_string(),
            v["dst"].as_str().unwrap()
        );
        assert_eq!(
            u64::from(rf.repr.udp.source_port),
            v["sport"].as_u64().unwrap()
        );
        let icrc_hex = v["icrc_hex"].as_str().unwrap();
        assert_eq!(hex(icrc_hex), rf.ib[rf.ib.len() - 4..], "frame {n} ICRC");
        seen += 1;
    }
    assert_eq!(seen, 194);
}

#[test]
fn the_capture_covers_the_promised_opcodes() {
    let names: BTreeSet<String> = read_frames("rxe-capture.pcap")
        .iter()
        .map(|(_, f)| {
            let rf = RoceFrame::parse_ethernet(f).unwrap();
            Packet::new_checked(rf.ib)
                .unwrap()
                .bth()
                .opcode()
                .to_string()
        })
        .collect();
    for want in [
        "RC_SEND_ONLY",
        "RC_SEND_FIRST",
        "RC_SEND_MIDDLE",
        "RC_SEND_LAST",
        "RC_RDMA_WRITE_FIRST",
        "RC_RDMA_WRITE_MIDDLE",
        "RC_RDMA_WRITE_LAST",
        "RC_RDMA_WRITE_ONLY",
        "RC_RDMA_READ_REQUEST",
        "RC_RDMA_READ_RESPONSE_FIRST",
        "RC_RDMA_READ_RESPONSE_MIDDLE",
        "RC_RDMA_READ_RESPONSE_LAST",
        "RC_RDMA_READ_RESPONSE_ONLY",
        "RC_ACKNOWLEDGE",
        "RC_FETCH_ADD",
        "RC_ATOMIC_ACKNOWLEDGE",
        "UC_RDMA_WRITE_ONLY",
        "UD_SEND_ONLY",
    ] {
        assert!(names.contains(want), "{want} missing from the capture");
    }
}

/// Whether byte `i` of an IPv4 RoCEv2 datagram (IP header without options)
/// is one of the fields the ICRC masks.
fn masked_v4(i: usize) -> bool {
    matches!(i, 1 | 8 | 10 | 11 | 26 | 27 | 32)
}

#[test]
fn any_single_bit_flip_in_the_covered_area_fails_the_icrc() {
    let frames = read_frames("rxe-capture.pcap");
    // Exhaustively for the first frame of every opcode; CRC-32 catches
    // every single-bit error, and this checks that we feed it every byte.
    let mut done = BTreeSet::new();
    let mut flips = 0usize;
    for (_, frame) in &frames {
        let rf = RoceFrame::parse_ethernet(frame).unwrap();
        let op = rf.ib[0];
        if !done.insert(op) {
            continue;
        }
        let mut l3 = rf.l3.to_vec();
        for i in 0..l3.len() {
            if masked_v4(i) {
                continue;
            }
            for bit in 0..8 {
                l3[i] ^= 1 << bit;
                assert!(
                    icrc::verify(&l3).is_err(),
                    "opcode {op:#x}: flipping bit {bit} of byte {i} went unnoticed"
                );
                l3[i] ^= 1 << bit;
                flips += 1;
            }
        }
        icrc::verify(&l3).unwrap();
    }
    assert_eq!(done.len(), 18);
    assert!(flips > 50_000, "only {flips} flips tried");
}

#[test]
fn flipping_masked_bits_keeps_the_icrc() {
    for (_, frame) in read_frames("rxe-capture.pcap") {
        let rf = RoceFrame::parse_ethernet(&frame).unwrap();
        let mut l3 = rf.l3.to_vec();
        for i in [1, 8, 10, 11, 26, 27, 32] {
            for bit in 0..8 {
                l3[i] ^= 1 << bit;
                icrc::verify(&l3).unwrap();
                l3[i] ^= 1 << bit;
            }
        }
    }
}

#[test]
fn connectx4_cnp_passes_the_same_icrc() {
    let frames = read_frames("connectx4-lx-cnp.pcap");
    assert_eq!(frames.len(), 1);
    let rf = RoceFrame::parse_ethernet(&frames[0].1).unwrap();
    rf.verify_icrc().unwrap();
    assert_eq!(&rf.ib[rf.ib.len() - 4..], &[0x82, 0xfd, 0x00, 0x2a]);
    let pkt = Packet::new_checked(rf.ib).unwrap();
    let repr = PacketRepr::parse(&pkt).unwrap();
    assert_eq!(repr.bth.opcode, transport::wire::Opcode::CNP);
    assert!(repr.bth.becn);
    assert_eq!(repr.bth.dest_qp, 0x118);
    assert_eq!(re_emit(&frames[0].1), frames[0].1);
}
