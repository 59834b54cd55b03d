//! Fuzzes the `decode` subcommand's library entry point,
//! `backend::decode::decode`, with arbitrary bytes as a capture file
//! (classic pcap or pcapng, told apart by the magic number).
//!
//! Checks: decoding never panics, whatever the file holds; it either
//! returns a summary or a `DecodeError` (writing to `io::sink()` cannot
//! fail, so only `DecodeError::Capture` is possible), and the summary's
//! counters add up.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    for verbose in [false, true] {
        match backend::decode::decode(data, &mut std::io::sink(), verbose) {
            Ok(s) => {
                assert_eq!(
                    s.frames,
                    s.roce + s.other + s.malformed,
                    "every frame is counted exactly once: {s:?}"
                );
                assert_eq!(s.roce, s.roce_ok + s.roce_bad, "{s:?}");
            }
            Err(backend::decode::DecodeError::Capture(_)) => {}
            Err(e) => panic!("writing to io::sink() failed: {e}"),
        }
    }
});
