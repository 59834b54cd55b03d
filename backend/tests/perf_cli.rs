//! The `perf` subcommand prints one JSON object per measurement with the
//! fields the issue names, and real (non-zero) figures.

use std::process::Command;

#[test]
fn perf_prints_json_lines_with_baselines() {
    let out = Command::new(env!("CARGO_BIN_EXE_vhost-user-rdma"))
        .args([
            "perf",
            "--link",
            "memory",
            "--seconds",
            "0.05",
            "--max-size",
            "4096",
        ])
        .output()
        .expect("run perf");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).expect("each line is JSON"))
        .collect();
    // write, read, send at 64, 256, 1024, 4096 bytes; rate; latency.
    assert_eq!(lines.len(), 3 * 4 + 2, "{text}");
    for v in &lines {
        for key in [
            "gbit_per_s",
            "msgs_per_s",
            "lat_us_p50",
            "lat_us_p99",
            "memcpy_gbit_per_s",
            "crc32_gbit_per_s",
        ] {
            let x = v[key].as_f64().unwrap_or_else(|| panic!("{key} in {v}"));
            assert!(x > 0.0, "{key} = {x} in {v}");
        }
        assert_eq!(v["link"], "memory");
        assert_eq!(v["mtu"], 4096);
        assert!(v["test"].is_string() && v["bytes"].as_u64().unwrap() > 0);
        assert!(v["lat_us_p99"].as_f64() >= v["lat_us_p50"].as_f64());
    }
    let tests: Vec<&str> = lines.iter().map(|v| v["test"].as_str().unwrap()).collect();
    assert!(tests.contains(&"rc_write_bw") && tests.contains(&"rc_read_bw"));
    assert!(tests.contains(&"rc_send_bw") && tests.contains(&"rc_send_rate"));
    assert!(tests.contains(&"rc_send_lat"));
}

#[test]
fn perf_rejects_a_bad_mtu() {
    let out = Command::new(env!("CARGO_BIN_EXE_vhost-user-rdma"))
        .args(["perf", "--mtu", "1500"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("invalid MTU 1500"));
}

/// Runs `perf --link LINK` briefly and checks every line it prints.
fn perf_over(link: &str) {
    let out = Command::new(env!("CARGO_BIN_EXE_vhost-user-rdma"))
        .args([
            "perf",
            "--link",
            link,
            "--test",
            "write,lat",
            "--seconds",
            "0.1",
            "--max-size",
            "4096",
            "--min-size",
            "4096",
        ])
        .output()
        .expect("run perf");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2, "{text}");
    for v in &lines {
        assert_eq!(v["link"], link);
        assert!(v["gbit_per_s"].as_f64().unwrap() > 0.0);
        assert!(v["udp_stream_gbit_per_s"].as_f64().unwrap() > 0.0);
        assert!(v["udp_pingpong_lat_us"].as_f64().unwrap() > 0.0);
    }
}

#[test]
fn perf_over_the_udp_link_reports_udp_baselines() {
    perf_over("udp");
}

/// The `packet` link on a veth pair between two namespaces that the run
/// creates (and that vanish with the process).
#[test]
fn perf_over_veth_reports_udp_baselines() {
    perf_over("veth");
}

/// The `tap` link: two TAPs on a bridge in a namespace that the run
/// creates (and that vanishes with the process).
#[test]
fn perf_over_taps_reports_udp_baselines() {
    perf_over("tap");
}
