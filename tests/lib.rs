//! Helpers shared by the cross-crate tests: locating the bundled test
//! data and reading every frame of a capture.

use std::path::PathBuf;

use backend::capture::{Capture, LinkType};

/// Path of a file under `tests/data/`.
pub fn data_path(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("data")
        .join(name)
}

/// Every frame of a bundled capture, as (link type, bytes).
pub fn read_frames(name: &str) -> Vec<(LinkType, Vec<u8>)> {
    let file = std::fs::File::open(data_path(name)).expect("open capture");
    let mut cap = Capture::open(std::io::BufReader::new(file)).expect("capture header");
    let mut frames = Vec::new();
    while let Some(f) = cap.next_frame() {
        let f = f.expect("capture record");
        frames.push((f.link, f.data.into_owned()));
    }
    frames
}

/// Decodes a hex string.
pub fn hex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex digit"))
        .collect()
}
