//! `vhost-user-rdma peer` against itself over the real udp link on
//! loopback: every tool runs as server and client, exits 0 and prints
//! the stock tool's result lines; bad options give a clear error. (The
//! same tools against Linux kernel rxe run in tests/interop/run.sh.)
//! Needs root (raw sockets).

use std::{
    process::{Command, Output, Stdio},
    time::Duration,
};

const BIN: &str = env!("CARGO_BIN_EXE_vhost-user-rdma");

fn peer(ip: &str, tool_args: &[&str]) -> Command {
    let mut c = Command::new(BIN);
    c.args([
        "peer",
        "--link",
        "udp",
        "--ip",
        ip,
        "--connect-timeout",
        "10",
    ])
    .args(["--stall-timeout", "20"])
    .args(tool_args)
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    c
}

/// Runs `tool_args` as server on 127.0.0.`net`1 and client on
/// 127.0.0.`net`2 (each test its own addresses and TCP ports, the
/// servers listening on every address: the tests run in
/// parallel) with TCP port `port`; returns (server, client) output.
fn pair(net: u8, port: u16, tool_args: &[&str]) -> (Output, Output) {
    let p = port.to_string();
    let (sip, cip) = (format!("127.0.0.{net}1"), format!("127.0.0.{net}2"));
    let mut args: Vec<&str> = tool_args.to_vec();
    args.extend(["-p", &p]);
    let server = peer(&sip, &args).spawn().expect("server");
    std::thread::sleep(Duration::from_millis(200));
    args.push(&sip);
    let client = peer(&cip, &args).output().expect("client");
    let server = server.wait_with_output().expect("server");
    (server, client)
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

#[test]
fn pingpong_tools_against_ourselves() {
    if !root() {
        eprintln!("skipped: needs root");
        return;
    }
    for (i, (tool, size)) in [
        ("ibv_rc_pingpong", "9000"),
        ("ibv_uc_pingpong", "3000"),
        ("ibv_ud_pingpong", "1000"),
    ]
    .into_iter()
    .enumerate()
    {
        let (s, c) = pair(
            1,
            19100 + i as u16,
            &[tool, "-g", "0", "-n", "50", "-s", size],
        );
        for (o, who) in [(&s, "server"), (&c, "client")] {
            let t = text(o);
            assert!(o.status.success(), "{tool} {who}: {t}");
            assert!(t.contains("  remote address: LID 0x0000, QPN 0x"), "{t}");
            let bytes = 50 * 2 * size.parse::<u64>().unwrap();
            assert!(t.contains(&format!("{bytes} bytes in ")), "{t}");
            assert!(t.contains("50 iters in "), "{t}");
        }
    }
}

#[test]
fn perftest_tools_against_ourselves() {
    if !root() {
        eprintln!("skipped: needs root");
        return;
    }
    let tools: &[&[&str]] = &[
        &["ib_write_bw", "-n", "200", "-s", "8192"],
        &["ib_write_bw", "-n", "200", "-s", "4096", "-b"],
        &["ib_send_bw", "-n", "200", "-s", "2048", "-b"],
        &["ib_write_bw", "-n", "200", "-s", "4096", "-q", "3"],
        &["ib_send_bw", "-n", "200", "-s", "1024", "-q", "2"],
        &["ib_read_bw", "-n", "200", "-s", "3000"],
        &["ib_send_bw", "-n", "200", "-s", "100"],
        &["ib_atomic_bw", "-n", "100", "-A", "CMP_AND_SWAP"],
        &["ib_write_lat", "-n", "100"],
        &["ib_read_lat", "-n", "100", "-s", "64"],
        &["ib_send_lat", "-n", "100", "-c", "UD", "-s", "512"],
        &["ib_atomic_lat", "-n", "100"],
    ];
    for (i, args) in tools.iter().enumerate() {
        let (s, c) = pair(2, 19200 + i as u16, args);
        let tool = args[0];
        for (o, who) in [(&s, "server"), (&c, "client")] {
            let t = text(o);
            assert!(o.status.success(), "{tool} {who}: {t}");
            assert!(
                t.contains(" remote address: LID 0000 QPN 0x"),
                "{tool} {who}: {t}"
            );
        }
        // The client always prints a result row under the header; the
        // server does too except in read and atomic latency.
        let header = if tool.ends_with("_bw") {
            " #bytes     #iterations    BW peak[MB/sec]"
        } else {
            " #bytes #iterations    t_min[usec]"
        };
        let quiet_server = matches!(tool, "ib_read_lat" | "ib_atomic_lat");
        for (o, who) in [(&c, "client"), (&s, "server")] {
            let t = text(o);
            if who == "server" && quiet_server {
                assert!(!t.contains(header), "{tool} server printed figures: {t}");
                continue;
            }
            let row = t
                .lines()
                .skip_while(|l| !l.starts_with(header))
                .nth(1)
                .unwrap_or_default()
                .to_string();
            // perftest counts the iterations of every QP.
            let qps: u64 = args
                .iter()
                .position(|&a| a == "-q")
                .map_or(1, |i| args[i + 1].parse().unwrap());
            let n = args[2].parse::<u64>().unwrap() * qps;
            let fields: Vec<&str> = row.split_whitespace().collect();
            assert!(fields.len() >= 5, "{tool} {who}: row `{row}`");
            assert_eq!(
                fields[1],
                n.to_string(),
                "{tool} {who}: iterations in `{row}`"
            );
            let avg: f64 = fields[3].parse().unwrap();
            assert!(avg > 0.0, "{tool} {who}: `{row}`");
        }
    }
}

#[test]
fn rping_against_ourselves() {
    if !root() {
        eprintln!("skipped: needs root");
        return;
    }
    let server = peer("127.0.0.31", &["rping", "-s", "-v", "-p", "19301"])
        .spawn()
        .expect("server");
    std::thread::sleep(Duration::from_millis(200));
    let c = peer(
        "127.0.0.32",
        &[
            "rping",
            "-c",
            "-a",
            "127.0.0.31",
            "-p",
            "19301",
            "-C",
            "4",
            "-v",
            "-V",
            "-S",
            "100",
        ],
    )
    .output()
    .unwrap();
    let s = server.wait_with_output().unwrap();
    let (ct, st) = (text(&c), text(&s));
    assert!(c.status.success(), "client: {ct}");
    assert!(s.status.success(), "server: {st}");
    // Four rounds, each echoed through READ and WRITE.
    for i in 0..4 {
        let line = format!("ping data: rdma-ping-{i}: ");
        assert!(ct.contains(&line), "client: {ct}");
        assert!(st.contains(&format!("server {line}")), "server: {st}");
    }
    assert!(ct.contains("rdma-ping-1: BCDEF"), "{ct}");
    // A client aimed at a port nobody listens on is rejected, by name.
    let server = peer("127.0.0.31", &["rping", "-s", "-p", "19302"])
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(200));
    let mut cmd = Command::new(BIN);
    cmd.args([
        "peer",
        "--link",
        "udp",
        "--ip",
        "127.0.0.32",
        "--stall-timeout",
        "5",
    ])
    .args(["rping", "-c", "-a", "127.0.0.31", "-p", "19399", "-C", "1"]);
    let bad = cmd.output().unwrap();
    assert_eq!(bad.status.code(), Some(1));
    assert!(
        text(&bad).contains("rejected the connection"),
        "{}",
        text(&bad)
    );
    // The listening server is still there; connect it properly to end it.
    let ok = peer(
        "127.0.0.32",
        &["rping", "-c", "-a", "127.0.0.31", "-p", "19302", "-C", "1"],
    )
    .output()
    .unwrap();
    assert!(ok.status.success(), "{}", text(&ok));
    assert!(server.wait_with_output().unwrap().status.success());
}

/// The result rows under the header: (size, iterations).
fn rows(t: &str) -> Vec<(u64, u64)> {
    t.lines()
        .skip_while(|l| !l.starts_with(" #bytes"))
        .skip(1)
        .map_while(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            Some((f.first()?.parse().ok()?, f.get(1)?.parse().ok()?))
        })
        .collect()
}

#[test]
fn perftest_all_sizes_against_ourselves() {
    if !root() {
        eprintln!("skipped: needs root");
        return;
    }
    let all: Vec<u64> = (1..24).map(|i| 1u64 << i).collect();
    // (tool, its arguments, rows the server prints, rows the client prints)
    let runs: &[(&[&str], Option<usize>, usize)] = &[
        // The passive server prints the client's last row only.
        (&["ib_write_bw", "-a", "-n", "5"], Some(1), 23),
        (&["ib_read_bw", "-a", "-n", "5"], Some(1), 23),
        (&["ib_send_bw", "-a", "-n", "5"], Some(23), 23),
        (&["ib_write_lat", "-a", "-n", "5"], Some(23), 23),
        (&["ib_read_lat", "-a", "-n", "5"], None, 23),
        (&["ib_send_lat", "-a", "-n", "5"], Some(23), 23),
    ];
    for (i, (args, server_rows, client_rows)) in runs.iter().enumerate() {
        let (s, c) = pair(5, 19500 + i as u16, args);
        let tool = args[0];
        for (o, who, want) in [
            (&s, "server", *server_rows),
            (&c, "client", Some(*client_rows)),
        ] {
            let t = text(o);
            assert!(
                o.status.success(),
                "{tool} {who}: {t}\n--- the other side:\n{}",
                text(if who == "server" { &c } else { &s })
            );
            let r = rows(&t);
            let Some(n) = want else {
                assert!(r.is_empty(), "{tool} {who}: {t}");
                continue;
            };
            assert_eq!(r.len(), n, "{tool} {who}: {t}");
            let sizes: Vec<u64> = r.iter().map(|x| x.0).collect();
            assert_eq!(sizes, all[23 - n..].to_vec(), "{tool} {who}");
            assert!(r.iter().all(|x| x.1 == 5), "{tool} {who}: {t}");
        }
    }
    // -a -b: each side prints the sum of both reports for every size.
    for (i, tool) in ["ib_write_bw", "ib_read_bw", "ib_send_bw"]
        .iter()
        .enumerate()
    {
        let (s, c) = pair(5, 19510 + i as u16, &[tool, "-a", "-b", "-n", "5"]);
        for (o, who) in [(&s, "server"), (&c, "client")] {
            let t = text(o);
            assert!(o.status.success(), "{tool} -b {who}: {t}");
            let r = rows(&t);
            let sizes: Vec<u64> = r.iter().map(|x| x.0).collect();
            assert_eq!(sizes, all, "{tool} -b {who}: {t}");
            assert!(r.iter().all(|x| x.1 == 5), "{tool} -b {who}: {t}");
        }
    }
    // UD sends stop at the MTU.
    let (s, c) = pair(5, 19520, &["ib_send_lat", "-a", "-n", "5", "-c", "UD"]);
    for o in [&s, &c] {
        let t = text(o);
        assert!(o.status.success(), "{t}");
        let r = rows(&t);
        assert!(!r.is_empty() && r.len() < 23, "{t}");
        assert_eq!(r[0].0, 2);
    }
}

/// `-R`: the handshake over an rdma_cm control connection and every
/// test QP connected by rdma_cm (CM MADs on QP1), as perftest does.
#[test]
fn perftest_rdma_cm_against_ourselves() {
    if !root() {
        eprintln!("skipped: needs root");
        return;
    }
    let tools: &[&[&str]] = &[
        &["ib_write_bw", "-R", "-n", "200", "-s", "8192"],
        &["ib_read_bw", "-R", "-n", "200", "-s", "4096", "-q", "3"],
        &["ib_send_bw", "-R", "-n", "200", "-s", "2048", "-b"],
        &["ib_atomic_bw", "-R", "-n", "100"],
        &["ib_write_lat", "-R", "-n", "100"],
        &["ib_read_lat", "-R", "-n", "100"],
        &["ib_send_lat", "-R", "-n", "100"],
        // UD: SIDR resolves the QPs; the latency test and -b send the
        // client's QPN back as an immediate.
        &["ib_send_bw", "-R", "-c", "UD", "-n", "200", "-s", "1024"],
        &[
            "ib_send_bw",
            "-R",
            "-c",
            "UD",
            "-n",
            "200",
            "-s",
            "512",
            "-b",
            "-q",
            "2",
        ],
        &["ib_send_lat", "-R", "-c", "UD", "-n", "100"],
    ];
    for (i, args) in tools.iter().enumerate() {
        let t0 = std::time::Instant::now();
        let (s, c) = pair(7, 19700 + i as u16, args);
        let tool = args[0];
        for (o, who) in [(&s, "server"), (&c, "client")] {
            let t = text(o);
            assert!(
                o.status.success(),
                "{tool} {who}: {t}\n--- the other side:\n{}",
                text(if who == "server" { &c } else { &s })
            );
            assert!(t.contains(" rdma_cm QPs\t : ON"), "{tool} {who}: {t}");
            assert!(
                t.contains(" Data ex. method : rdma_cm"),
                "{tool} {who}: {t}"
            );
        }
        // The client prints its row; the iterations of every QP count.
        let qps: u64 = args
            .iter()
            .position(|&a| a == "-q")
            .map_or(1, |i| args[i + 1].parse().unwrap());
        let n: u64 = args[args.iter().position(|&a| a == "-n").unwrap() + 1]
            .parse()
            .unwrap();
        let r = rows(&text(&c));
        assert_eq!(r.len(), 1, "{tool}: {}", text(&c));
        assert_eq!(r[0].1, n * qps, "{tool}: {}", text(&c));
        // Both sides disconnect every connection at the end (DREQ and
        // DREP both ways), without waiting out the CM's retries.
        assert!(
            t0.elapsed() < Duration::from_secs(15),
            "{tool}: {:?}",
            t0.elapsed()
        );
    }
}

/// `-D`: duration mode, one row per side with the sample's count.
#[test]
fn perftest_duration_mode_against_ourselves() {
    if !root() {
        eprintln!("skipped: needs root");
        return;
    }
    // (arguments, the server prints a row, latency columns)
    let runs: &[(&[&str], bool, bool)] = &[
        (&["ib_write_bw", "-D", "2", "-s", "4096"], true, false),
        (&["ib_read_bw", "-D", "2", "-s", "4096"], true, false),
        (&["ib_send_bw", "-D", "2", "-s", "4096"], true, false),
        (
            &["ib_send_bw", "-D", "2", "-s", "1000", "-c", "UD"],
            true,
            false,
        ),
        (&["ib_write_lat", "-D", "2"], true, true),
        (&["ib_read_lat", "-D", "2"], false, true),
        (&["ib_send_lat", "-D", "2"], true, true),
        (&["ib_atomic_bw", "-D", "2"], true, false),
    ];
    for (i, (args, server_row, lat)) in runs.iter().enumerate() {
        let t0 = std::time::Instant::now();
        let (s, c) = pair(6, 19600 + i as u16, args);
        let took = t0.elapsed();
        let tool = args[0];
        // Two seconds each, plus setup: not the default 1000 or 5000
        // iterations' worth, and not forever.
        assert!(
            took >= Duration::from_secs(2) && took < Duration::from_secs(30),
            "{tool}: {took:?}"
        );
        for (o, who, want) in [(&c, "client", true), (&s, "server", *server_row)] {
            let t = text(o);
            assert!(o.status.success(), "{tool} {who}: {t}");
            if *lat {
                assert_eq!(
                    t.contains(" #bytes        #iterations       t_avg[usec]    tps average"),
                    want,
                    "{tool} {who}: {t}"
                );
            } else {
                assert!(t.contains("BW peak"), "{tool} {who}: {t}");
            }
            let r = rows(&t);
            if !want {
                assert!(r.is_empty(), "{tool} {who}: {t}");
                continue;
            }
            assert_eq!(r.len(), 1, "{tool} {who}: {t}");
            // Messages were counted, and neither -n's default nor zero.
            assert!(
                r[0].1 > 0 && r[0].1 != 1000 && r[0].1 != 5000,
                "{tool} {who}: {t}"
            );
            let row = t
                .lines()
                .skip_while(|l| !l.starts_with(" #bytes"))
                .nth(1)
                .unwrap_or_default();
            let f: Vec<f64> = row
                .split_whitespace()
                .filter_map(|x| x.parse().ok())
                .collect();
            if *lat {
                // bytes, iterations, t_avg, tps: tps matches the count over
                // the 2 s sample (no margin below 4 s).
                assert_eq!(f.len(), 4, "{tool} {who}: {row}");
                assert!(f[2] > 0.0, "{tool} {who}: {row}");
                let tps = f[1] / 2.0;
                assert!((f[3] - tps).abs() < tps * 0.01 + 1.0, "{tool} {who}: {row}");
            } else {
                // No peak in duration mode; an average above zero.
                assert_eq!(f[2], 0.0, "{tool} {who}: {row}");
                assert!(f[3] > 0.0, "{tool} {who}: {row}");
            }
        }
    }
}

#[test]
fn bad_options_are_named() {
    for (args, want) in [
        (&["ibv_rc_pingpong", "-o"][..], "'-o'"),
        (&["ib_write_bw", "-q", "65"], "-q above 64 is not supported"),
        (
            &["ib_write_bw", "-n", "3"],
            "Iteration num should be between 5",
        ),
        (
            &["ib_read_bw", "-c", "UD"],
            "UD connection only possible in SEND verb",
        ),
        (&["ib_frob"], "unknown tool `ib_frob`"),
        (
            &["ib_send_bw", "-R", "-c", "UC"],
            "UC is not supported in librdmacm",
        ),
        (
            &["ib_write_bw", "-R", "server.example"],
            "with -R the peer needs the server's IP address",
        ),
    ] {
        let o = peer("127.0.0.9", args).output().unwrap();
        let t = text(&o);
        assert_eq!(o.status.code(), Some(1), "{args:?}: {t}");
        assert!(t.contains(want), "{args:?}: {t}");
    }
    let o = Command::new(BIN)
        .args([
            "peer",
            "--link",
            "tap",
            "--ip",
            "10.0.0.1",
            "ibv_rc_pingpong",
        ])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("tap:IFNAME"));
}

#[test]
fn a_silent_other_side_ends_the_run() {
    if !root() {
        eprintln!("skipped: needs root");
        return;
    }
    // A "server" that accepts the handshake connection and then says
    // nothing, like a guest that vanished.
    let l = std::net::TcpListener::bind("127.0.0.1:19401").unwrap();
    let holder = std::thread::spawn(move || {
        let (s, _) = l.accept().unwrap();
        std::thread::sleep(Duration::from_secs(6));
        drop(s);
    });
    let t0 = std::time::Instant::now();
    let o = Command::new(BIN)
        .args([
            "peer",
            "--link",
            "udp",
            "--ip",
            "127.0.0.42",
            "--stall-timeout",
            "2",
        ])
        .args(["ib_write_bw", "-n", "10", "-p", "19401", "127.0.0.1"])
        .output()
        .unwrap();
    let t = text(&o);
    assert_eq!(o.status.code(), Some(1), "{t}");
    assert!(t.contains("went silent"), "{t}");
    assert!(
        t0.elapsed() < Duration::from_secs(5),
        "took {:?}",
        t0.elapsed()
    );
    holder.join().unwrap();
}
