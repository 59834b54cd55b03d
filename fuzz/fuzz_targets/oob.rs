//! Fuzzes the out-of-band record parsers the peer runs on what a stock
//! tool (or anyone on its TCP port or rdma_cm control connection) sends:
//! the pingpong tools' 52-byte records, perftest's 108-byte text and
//! 56-byte binary (`-R`) key records, its version string and its MTU.
//!
//! Properties asserted, beyond "never panics": a record that parses
//! re-emits to bytes that parse to the same record (for the text
//! records only when the fields fit the widths perftest prints).
#![no_main]

use backend::oob::{PerftestDest, PingpongDest, parse_mtu, parse_perftest_version};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(d) = PingpongDest::parse(data) {
        assert_eq!(PingpongDest::parse(&d.to_wire()), Ok(d));
    }
    if let Ok(d) = PerftestDest::parse(data) {
        if d.qpn <= 0xff_ffff && d.psn <= 0xff_ffff {
            assert_eq!(PerftestDest::parse(&d.to_wire()), Ok(d));
        }
    }
    if let Ok(d) = PerftestDest::parse_cm(data) {
        assert_eq!(PerftestDest::parse_cm(&d.to_cm_wire(0)), Ok(d));
    }
    let _ = parse_perftest_version(data);
    let _ = parse_mtu(data);
});
