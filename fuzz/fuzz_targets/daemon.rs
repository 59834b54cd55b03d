//! The daemon's own parsers under hostile input: RoCEv2 steering of any
//! frame from the network (first byte 0), and the vhost-user relay's
//! message framing and rewriting of any byte stream from a frontend
//! (first byte 1). Neither may panic; the relay's output must stay
//! well-formed (checked inside `rewrite_stream`).
#![no_main]

use std::net::IpAddr;

use backend::daemon::{relay::rewrite_stream, switch::steer};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&sel, rest)) = data.split_first() else {
        return;
    };
    if sel & 1 == 0 {
        let rdma: [IpAddr; 2] = [
            IpAddr::from([10, 0, 0, 2]),
            IpAddr::from([0xfd00, 0, 0, 0, 0, 0, 0, 2]),
        ];
        let _ = steer(rest, &rdma);
    } else {
        let _ = rewrite_stream(rest);
    }
});
