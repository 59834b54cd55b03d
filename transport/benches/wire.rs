//! Benchmark of the ICRC and of header parse/emit, printed as one JSON
//! object per line next to baselines measured in the same run: memcpy and
//! plain crc32fast over the same number of bytes. Judge the results as
//! ratios to those baselines; absolute numbers are noisy on shared hosts.
//!
//! Run: `cargo bench -p transport --bench wire` (add `-- --quick` for a
//! short smoke run).

use std::{
    hint::black_box,
    time::{Duration, Instant},
};

use transport::wire::{
    BthRepr, ExtHeaders, Opcode, Packet, PacketRepr, RethRepr,
    frame::{FrameRepr, IpRepr, RoceFrame},
    icrc,
};

/// Runs `f` repeatedly for about `budget` and returns nanoseconds per call.
fn measure(budget: Duration, mut f: impl FnMut()) -> f64 {
    // Calibrate the batch size so that timer reads are negligible.
    let mut batch = 1u64;
    loop {
        let t = Instant::now();
        for _ in 0..batch {
            f();
        }
        if t.elapsed() > Duration::from_millis(5) || batch > 1 << 30 {
            break;
        }
        batch *= 2;
    }
    let start = Instant::now();
    let mut calls = 0u64;
    while start.elapsed() < budget {
        for _ in 0..batch {
            f();
        }
        calls += batch;
    }
    start.elapsed().as_nanos() as f64 / calls as f64
}

fn gbps(bytes: usize, ns: f64) -> f64 {
    bytes as f64 / ns
}

/// An IPv4 RDMA WRITE FIRST frame with `payload` bytes and a valid ICRC.
fn frame(payload: usize) -> Vec<u8> {
    let repr = PacketRepr {
        bth: BthRepr {
            opcode: Opcode(0x06),
            solicited: false,
            mig_req: false,
            pad_count: 0,
            pkey: 0xffff,
            fecn: false,
            becn: false,
            dest_qp: 0x11,
            ack_req: false,
            psn: 1,
        },
        ext: ExtHeaders {
            reth: Some(RethRepr {
                va: 0x1000,
                rkey: 0x42,
                dma_len: 1 << 20,
            }),
            ..Default::default()
        },
        payload_len: payload,
    };
    let mut ip = etherparse::Ipv4Header::new(
        0,
        64,
        etherparse::IpNumber::UDP,
        [10, 0, 0, 1],
        [10, 0, 0, 2],
    )
    .unwrap();
    ip.dont_fragment = true;
    let outer = FrameRepr {
        ethernet: Some(etherparse::Ethernet2Header {
            source: [2, 0, 0, 0, 0, 1],
            destination: [2, 0, 0, 0, 0, 2],
            ether_type: etherparse::EtherType::IPV4,
        }),
        vlan: None,
        ip: IpRepr::V4(ip),
        udp: etherparse::UdpHeader {
            source_port: 49152,
            destination_port: 4791,
            length: 0,
            checksum: 0,
        },
    };
    let mut buf = vec![0x5au8; outer.header_len() + repr.buffer_len()];
    let at = outer.emit(&mut buf, repr.buffer_len()).unwrap();
    repr.emit(&mut buf[at..]).unwrap();
    icrc::fill(&mut buf[outer.ip_offset()..]).unwrap();
    buf
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let budget = Duration::from_millis(if quick { 100 } else { 1000 });

    for payload in [64usize, 1024, 4096] {
        let f = frame(payload);
        let l3 = &f[14..];
        let covered = l3.len() - 4;

        let mut dst = vec![0u8; covered];
        let memcpy_ns = measure(budget, || {
            dst.copy_from_slice(black_box(&l3[..covered]));
            black_box(&dst);
        });
        let crc_ns = measure(budget, || {
            black_box(crc32fast::hash(black_box(&l3[..covered])));
        });
        let icrc_ns = measure(budget, || {
            black_box(icrc::compute(black_box(l3)).unwrap());
        });
        println!(
            "{{\"bench\":\"icrc\",\"payload\":{payload},\"bytes\":{covered},\"icrc_ns\":{icrc_ns:.1},\"icrc_gbps\":{:.3},\"baseline_crc32fast_gbps\":{:.3},\"baseline_memcpy_gbps\":{:.3},\"icrc_vs_crc32fast\":{:.3}}}",
            gbps(covered, icrc_ns),
            gbps(covered, crc_ns),
            gbps(covered, memcpy_ns),
            crc_ns / icrc_ns
        );
    }

    let f = frame(1024);
    let ib_at = 14 + 20 + 8;
    let parse_ns = measure(budget, || {
        let p = Packet::new_checked(black_box(&f[ib_at..])).unwrap();
        black_box(PacketRepr::parse(&p).unwrap());
    });
    let repr = PacketRepr::parse(&Packet::new_checked(&f[ib_at..]).unwrap()).unwrap();
    let mut out = vec![0u8; repr.buffer_len()];
    let emit_ns = measure(budget, || {
        black_box(&repr).emit(&mut out).unwrap();
        black_box(&out);
    });
    let frame_ns = measure(budget, || {
        black_box(RoceFrame::parse_ethernet(black_box(&f)).unwrap());
    });
    let hdr = repr.header_len();
    let mut hdr_copy = vec![0u8; hdr];
    let memcpy_hdr_ns = measure(budget, || {
        hdr_copy.copy_from_slice(black_box(&f[ib_at..ib_at + hdr]));
        black_box(&hdr_copy);
    });
    println!(
        "{{\"bench\":\"headers\",\"opcode\":\"RC_RDMA_WRITE_FIRST\",\"header_bytes\":{hdr},\"parse_ns\":{parse_ns:.1},\"emit_ns\":{emit_ns:.1},\"frame_parse_ns\":{frame_ns:.1},\"baseline_memcpy_header_ns\":{memcpy_hdr_ns:.1},\"parse_mpps\":{:.2},\"emit_mpps\":{:.2},\"frame_parse_mpps\":{:.2}}}",
        1e3 / parse_ns,
        1e3 / emit_ns,
        1e3 / frame_ns
    );
}
