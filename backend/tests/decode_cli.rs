//! The `decode` subcommand as a user runs it: output lines, summary and
//! exit status on the golden capture, on corrupted and truncated copies,
//! on mixed traffic, and on files that are not captures at all.

use std::{borrow::Cow, path::PathBuf, process::Command, time::Duration};

use pcap_file::{
    DataLink,
    pcap::{PcapHeader, PcapPacket, PcapWriter},
};

fn data(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/data")
        .join(name)
}

struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

fn decode(args: &[&str], file: &std::path::Path) -> Run {
    let out = Command::new(env!("CARGO_BIN_EXE_vhost-user-rdma"))
        .arg("decode")
        .args(args)
        .arg(file)
        .output()
        .expect("run vhost-user-rdma");
    Run {
        code: out.status.code().expect("exit code"),
        stdout: String::from_utf8(out.stdout).unwrap(),
        stderr: String::from_utf8(out.stderr).unwrap(),
    }
}

/// A file in the temporary directory, removed when dropped.
struct TempFile(PathBuf);

impl std::ops::Deref for TempFile {
    type Target = std::path::Path;
    fn deref(&self) -> &std::path::Path {
        &self.0
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn temp(name: &str, bytes: &[u8]) -> TempFile {
    let p = std::env::temp_dir().join(format!("vur-decode-{}-{name}", std::process::id()));
    std::fs::write(&p, bytes).unwrap();
    TempFile(p)
}

/// Offset of the first occurrence of `needle` in `hay`.
fn find(hay: &[u8], needle: &[u8]) -> usize {
    hay.windows(needle.len())
        .position(|w| w == needle)
        .expect("needle present")
}

fn golden() -> Vec<u8> {
    std::fs::read(data("rxe-capture.pcap")).unwrap()
}

/// The first frame of the golden capture (RC SEND_ONLY, 64-byte payload
/// of 0x7b), located by its IP header.
const FRAME1_IP: [u8; 8] = [0x45, 0x00, 0x00, 0x6c, 0xfe, 0x96, 0x40, 0x00];

#[test]
fn golden_capture_passes() {
    let r = decode(&[], &data("rxe-capture.pcap"));
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(r.stdout.matches("icrc=ok").count(), 194);
    assert!(
        r.stdout
            .contains("194 frames: 194 RoCEv2 (194 ok, 0 bad), 0 other, 0 malformed")
    );
    assert!(r.stdout.contains(
        "     1  10.77.0.2:49441 → 10.77.0.1  RC SEND_ONLY  qp=0x000011 psn=5530605 ack=1  payload=64  icrc=ok"
    ));
    assert!(r.stdout.contains("AETH(ACK credits=31 msn=1)"));
    assert!(r.stdout.contains("RC_FETCH_ADD                         5"));
    assert!(r.stdout.ends_with("result: PASS\n"));
}

#[test]
fn verbose_prints_bth_and_ip_details() {
    let r = decode(&["--verbose"], &data("connectx4-lx-cnp.pcap"));
    assert_eq!(r.code, 0);
    assert!(r.stdout.contains("CNP  qp=0x000118"));
    assert!(r.stdout.contains("becn=1"));
    assert!(r.stdout.contains("ecn=2"));
}

#[test]
fn corrupted_payload_fails_icrc_and_exit_status() {
    let mut bytes = golden();
    let at = find(&bytes, &FRAME1_IP) + 40; // inside the payload
    bytes[at] ^= 0x01;
    let r = decode(&[], &temp("corrupt.pcapng", &bytes));
    assert_eq!(r.code, 1);
    let line = r.stdout.lines().next().unwrap();
    assert!(
        line.contains("icrc=BAD (carried 0x16427eb3, computed"),
        "{line}"
    );
    assert!(r.stdout.contains("194 frames: 194 RoCEv2 (193 ok, 1 bad)"));
    assert!(r.stdout.ends_with("result: FAIL\n"));
}

#[test]
fn unknown_opcode_is_reported_with_the_frame() {
    let mut bytes = golden();
    let at = find(&bytes, &FRAME1_IP) + 28; // BTH opcode
    assert_eq!(bytes[at], 0x04);
    bytes[at] = 0x15;
    let r = decode(&[], &temp("badop.pcapng", &bytes));
    assert_eq!(r.code, 1);
    assert!(r.stdout.lines().next().unwrap().starts_with(
        "     1  10.77.0.2:49441 → 10.77.0.1  INVALID: unknown or unsupported opcode 0x15"
    ));
}

#[test]
fn truncated_file_names_the_frame() {
    let bytes = golden();
    let cut = &bytes[..bytes.len() / 2];
    let r = decode(&[], &temp("cut.pcapng", cut));
    assert_eq!(r.code, 1);
    assert!(
        r.stdout
            .contains("the capture file ends inside this record (truncated file)"),
        "{}",
        r.stdout
    );
    assert!(r.stdout.contains("error: frame "));
    assert!(r.stdout.contains("capture incomplete"));
    assert!(!r.stderr.contains("panicked"));
}

#[test]
fn not_a_capture_and_missing_file() {
    let r = decode(&[], &temp("text.txt", b"hello, this is not a capture"));
    assert_eq!(r.code, 1);
    assert!(
        r.stderr.contains("not a pcap or pcapng file"),
        "{}",
        r.stderr
    );
    let r = decode(&[], &temp("empty", b""));
    assert_eq!(r.code, 1);
    assert!(r.stderr.contains("not a pcap or pcapng file"));
    let r = decode(&[], &data("no-such-file.pcap"));
    assert_eq!(r.code, 1);
    assert!(r.stderr.contains("cannot open"));
}

/// A classic pcap with an ARP frame, a DNS-over-UDP frame, the CNP, and a
/// RoCE frame cut by the snap length.
fn mixed_capture(with_cut_frame: bool) -> Vec<u8> {
    let cnp = std::fs::read(data("connectx4-lx-cnp.pcap")).unwrap()[40..].to_vec();
    let mut arp = vec![0xff; 6];
    arp.extend_from_slice(&[0x52, 0x54, 0, 0, 0, 1, 0x08, 0x06]);
    arp.extend_from_slice(&[0, 1, 8, 0, 6, 4, 0, 1]);
    arp.extend_from_slice(&[0x52, 0x54, 0, 0, 0, 1, 10, 0, 0, 1]);
    arp.extend_from_slice(&[0, 0, 0, 0, 0, 0, 10, 0, 0, 2]);
    let mut dns = cnp.clone();
    dns[36..38].copy_from_slice(&53u16.to_be_bytes()); // UDP destination port
    let header = PcapHeader {
        datalink: DataLink::ETHERNET,
        ..Default::default()
    };
    let mut w = PcapWriter::with_header(Vec::new(), header).unwrap();
    let mut put = |d: &[u8], orig: u32| {
        w.write_packet(&PcapPacket {
            timestamp: Duration::ZERO,
            orig_len: orig,
            data: Cow::Borrowed(d),
        })
        .unwrap();
    };
    put(&arp, arp.len() as u32);
    put(&dns, dns.len() as u32);
    put(&cnp, cnp.len() as u32);
    if with_cut_frame {
        put(&cnp[..60], cnp.len() as u32);
    }
    w.into_writer()
}

#[test]
fn non_roce_frames_are_only_counted() {
    let r = decode(&[], &temp("mixed.pcap", &mixed_capture(false)));
    assert_eq!(r.code, 0, "{}", r.stdout);
    assert_eq!(r.stdout.lines().filter(|l| l.contains("icrc=")).count(), 1);
    assert!(
        r.stdout
            .contains("3 frames: 1 RoCEv2 (1 ok, 0 bad), 2 other, 0 malformed")
    );
    let r = decode(&["-v"], &temp("mixed-v.pcap", &mixed_capture(false)));
    assert!(r.stdout.contains("(not RoCEv2: not IP)"));
    assert!(
        r.stdout
            .contains("(not RoCEv2: UDP destination port is not 4791)")
    );
}

#[test]
fn snaplen_cut_frame_fails() {
    let r = decode(&[], &temp("snap.pcap", &mixed_capture(true)));
    assert_eq!(r.code, 1);
    assert!(
        r.stdout
            .contains("     4  MALFORMED: only 60 of 74 bytes were captured (snap length)"),
        "{}",
        r.stdout
    );
}
