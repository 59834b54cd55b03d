//! The readable form of a daemon's stats snapshot (the JSON object its
//! control socket answers with): a few aligned sections, zero counters
//! left out so that what happened stands out.

use serde_json::Value;
use std::fmt::Write;

/// Renders `v` (one snapshot) as text.
pub fn render(v: &Value) -> String {
    let mut o = String::new();
    let s = |k: &str| v.get(k).map(plain).unwrap_or_default();
    let guest = match v["guest_connected"].as_bool() {
        Some(true) => "  guest connected",
        Some(false) => "  guest not connected",
        None => "",
    };
    let _ = writeln!(
        o,
        "link {}  mac {}  up {} s{guest}",
        s("link"),
        s("mac"),
        s("uptime_s"),
    );
    section(&mut o, "port", &v["port"], false);
    section(&mut o, "nic", &v["nic"], false);
    let r = &v["rdma"];
    if r.is_null() {
        let _ = writeln!(o, "rdma: no PVRDMA function on this daemon");
        return o;
    }
    if let Some(g) = r["gids"].as_array() {
        let gids: Vec<String> = g.iter().map(plain).collect();
        let _ = writeln!(o, "gids: {}", gids.join(", "));
    }
    section(&mut o, "objects", &r["objects"], false);
    section(&mut o, "engine counters (non-zero)", &r["counters"], true);
    section(&mut o, "rdma link", &r["link"], false);
    section(&mut o, "guest errors (non-zero)", &r["guest_errors"], true);
    for dir in ["tx", "rx"] {
        section(
            &mut o,
            &format!("bytes per opcode, {dir}"),
            &r["bytes_per_opcode"][dir],
            true,
        );
    }
    let qps = r["qps"].as_array().map(Vec::as_slice).unwrap_or_default();
    let _ = writeln!(o, "qps: {}", qps.len());
    if !qps.is_empty() {
        let _ = writeln!(
            o,
            "  {:>6} {:>6} {:<4} {:<5} {:>7} {:>8} {:>8} {:>5} {:>5}  counters",
            "qpn", "handle", "type", "state", "dest", "sq_psn", "rq_psn", "sq", "rq"
        );
        for q in qps {
            let c = q["counters"]
                .as_object()
                .map(|m| {
                    m.iter()
                        .map(|(k, n)| format!("{k}={}", plain(n)))
                        .collect::<Vec<_>>()
                        .join(" ")
                })
                .unwrap_or_default();
            let _ = writeln!(
                o,
                "  {:>6} {:>6} {:<4} {:<5} {:>7} {:>8} {:>8} {:>5} {:>5}  {c}",
                plain(&q["qpn"]),
                plain(&q["handle"]),
                plain(&q["type"]),
                plain(&q["state"]),
                plain(&q["dest_qp"]),
                plain(&q["sq_psn"]),
                plain(&q["rq_psn"]),
                plain(&q["sq_outstanding"]),
                plain(&q["rq_posted"]),
            );
        }
    }
    o
}

fn plain(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => "-".into(),
        other => other.to_string(),
    }
}

fn section(o: &mut String, title: &str, v: &Value, skip_zero: bool) {
    let Some(m) = v.as_object() else { return };
    let items: Vec<String> = m
        .iter()
        .filter(|(_, n)| !(skip_zero && n.as_u64() == Some(0)))
        .map(|(k, n)| format!("{k}={}", plain(n)))
        .collect();
    let _ = writeln!(
        o,
        "{title}: {}",
        if items.is_empty() {
            "(none)".to_string()
        } else {
            items.join(" ")
        }
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_the_sections_and_leaves_zero_counters_out() {
        let v = serde_json::json!({
            "link": "vur0", "mac": "52:54:00:00:00:01", "uptime_s": 5,
            "guest_connected": true,
            "port": {"tx_frames": 3, "rx_frames": 0},
            "rdma": {
                "gids": ["10.0.0.1"],
                "counters": {"sent_pkts": 7, "duplicate_request": 0},
                "objects": {"qps": 1},
                "link": {"icrc_err": 0},
                "guest_errors": {"cmd_errors": 0},
                "bytes_per_opcode": {"tx": {"0x06": 1056}, "rx": {}},
                "qps": [{"qpn": 17, "handle": 1, "type": "RC", "state": "RTS",
                         "dest_qp": 18, "sq_psn": 5, "rq_psn": 9,
                         "sq_outstanding": 0, "rq_posted": 2,
                         "counters": {"sent_pkts": 7}}],
            }
        });
        let t = render(&v);
        assert!(
            t.starts_with("link vur0  mac 52:54:00:00:00:01  up 5 s  guest connected\n"),
            "{t}"
        );
        assert!(t.contains("port: rx_frames=0 tx_frames=3\n"), "{t}");
        assert!(
            t.contains("engine counters (non-zero): sent_pkts=7\n"),
            "{t}"
        );
        assert!(t.contains("guest errors (non-zero): (none)\n"), "{t}");
        assert!(t.contains("bytes per opcode, tx: 0x06=1056\n"), "{t}");
        assert!(t.contains("gids: 10.0.0.1\n"), "{t}");
        assert!(
            t.contains(
                "     17      1 RC   RTS        18        5        9     0     2  sent_pkts=7"
            ),
            "{t}"
        );
    }
}
