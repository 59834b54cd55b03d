//! The `--pcap` tap: every RoCEv2 frame the daemon (or `peer`) sends and
//! receives, written to a classic pcap file (Ethernet, microsecond
//! timestamps) through the `pcap-file` crate, so that Wireshark, tshark
//! and our own `decode` read it. The file has a size cap: when the next
//! frame would pass it, FILE becomes FILE.1 (FILE.1 becomes FILE.2, and
//! so on; the oldest beyond `files` is dropped) and a new FILE begins.
//!
//! Frames are buffered in memory and written to the file when the buffer
//! passes 64 KiB and whenever the owner calls [`FrameTap::flush`] (the
//! daemon does once per wake-up), so a frame reaches the file at most one
//! wake-up after it passed. With the tap off nothing of this runs.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{SystemTime, UNIX_EPOCH};

use log::warn;
use netdev::eth::FrameTap;
use pcap_file::pcap::{PcapPacket, PcapWriter};

/// Where and how much to capture.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PcapConfig {
    /// The file being written.
    pub path: PathBuf,
    /// Bytes per file before it rotates.
    pub max_bytes: u64,
    /// Files kept, the one being written included (at least 1).
    pub files: u32,
}

/// The pcap writer's sink: a buffer the tap drains into the file. The
/// lock is never contended (one thread owns the tap); it is there because
/// `PcapWriter` owns its writer and gives no way back to it.
#[derive(Clone, Default)]
struct Buffer(Arc<Mutex<Vec<u8>>>);

impl Write for Buffer {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// A rotating pcap file fed frame by frame.
pub struct PcapTap {
    cfg: PcapConfig,
    file: File,
    buffer: Buffer,
    writer: PcapWriter<Buffer>,
    /// Bytes in the current file, header included (buffered ones too).
    written: u64,
    /// One frame reassembled from its parts.
    frame: Vec<u8>,
    /// Frames written in all.
    pub frames: u64,
    failed: bool,
}

const HEADER_LEN: u64 = 24;
const RECORD_LEN: u64 = 16;

impl PcapTap {
    /// Creates (truncates) `cfg.path` and writes the pcap header. Rotated
    /// files of an earlier capture to the same path are removed, so the
    /// set never mixes two runs.
    pub fn create(cfg: PcapConfig) -> std::io::Result<PcapTap> {
        let file = File::create(&cfg.path)?;
        for i in 1..cfg.files.max(2) {
            let _ = std::fs::remove_file(rotated(&cfg.path, i));
        }
        let buffer = Buffer::default();
        let writer = PcapWriter::new(buffer.clone()).map_err(std::io::Error::other)?;
        let mut tap = PcapTap {
            cfg,
            file,
            buffer,
            writer,
            written: HEADER_LEN,
            frame: Vec::with_capacity(16384),
            frames: 0,
            failed: false,
        };
        tap.drain()?;
        Ok(tap)
    }

    /// The file being written.
    pub fn path(&self) -> &Path {
        &self.cfg.path
    }

    fn drain(&mut self) -> std::io::Result<()> {
        let mut b = self.buffer.0.lock().unwrap_or_else(PoisonError::into_inner);
        if !b.is_empty() {
            self.file.write_all(&b)?;
            b.clear();
        }
        Ok(())
    }

    fn rotate(&mut self) -> std::io::Result<()> {
        self.drain()?;
        let p = &self.cfg.path;
        let name = |i: u32| rotated(p, i);
        if self.cfg.files <= 1 {
            let _ = std::fs::remove_file(p);
        } else {
            for i in (1..self.cfg.files - 1).rev() {
                let _ = std::fs::rename(name(i), name(i + 1));
            }
            std::fs::rename(p, name(1))?;
        }
        self.file = File::create(p)?;
        self.writer = PcapWriter::new(self.buffer.clone()).map_err(std::io::Error::other)?;
        self.written = HEADER_LEN;
        self.drain()
    }

    fn write(&mut self, parts: &[&[u8]]) -> std::io::Result<()> {
        self.frame.clear();
        for p in parts {
            self.frame.extend_from_slice(p);
        }
        let len = self.frame.len() as u64;
        if self.written + RECORD_LEN + len > self.cfg.max_bytes && self.written > HEADER_LEN {
            self.rotate()?;
        }
        let ts = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        let n = self
            .writer
            .write_packet(&PcapPacket::new(ts, len as u32, &self.frame))
            .map_err(std::io::Error::other)?;
        self.written += n as u64;
        self.frames += 1;
        let big = self
            .buffer
            .0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
            > 65536;
        if big {
            self.drain()?;
        }
        Ok(())
    }

    fn fail(&mut self, e: &std::io::Error) {
        if !self.failed {
            warn!("pcap tap {}: {e}; capturing stops", self.cfg.path.display());
            self.failed = true;
        }
    }
}

/// `path` with `.i` appended.
fn rotated(path: &Path, i: u32) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(format!(".{i}"));
    PathBuf::from(s)
}

impl FrameTap for PcapTap {
    fn frame(&mut self, parts: &[&[u8]]) {
        if self.failed {
            return;
        }
        if let Err(e) = self.write(parts) {
            self.fail(&e);
        }
    }

    fn flush(&mut self) {
        if self.failed {
            return;
        }
        if let Err(e) = self.drain() {
            self.fail(&e);
        }
    }
}

impl Drop for PcapTap {
    fn drop(&mut self) {
        let _ = self.drain();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::capture::Capture;

    #[test]
    fn frames_are_written_read_back_and_rotated_at_the_cap() {
        let dir = std::env::temp_dir().join(format!("vur-pcap-tap-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("t.pcap");
        // Room for the header and three 100-byte frames per file.
        let mut tap = PcapTap::create(PcapConfig {
            path: path.clone(),
            max_bytes: HEADER_LEN + 3 * (RECORD_LEN + 100),
            files: 3,
        })
        .unwrap();
        for i in 0..10u8 {
            let head = [i; 40];
            let rest = [i.wrapping_add(100); 60];
            tap.frame(&[&head, &rest]);
        }
        tap.flush();
        drop(tap);
        // 10 frames: 3 + 3 in the two rotated files, 1 dropped file, 1 now.
        let read = |p: &Path| -> Vec<Vec<u8>> {
            let mut c = Capture::open(File::open(p).unwrap()).unwrap();
            let mut out = Vec::new();
            while let Some(f) = c.next_frame() {
                out.push(f.unwrap().data.to_vec());
            }
            out
        };
        let now = read(&path);
        assert_eq!(now.len(), 1);
        assert_eq!(now[0][..40], [9u8; 40]);
        assert_eq!(now[0][40..], [109u8; 60]);
        let one = read(&dir.join("t.pcap.1"));
        let two = read(&dir.join("t.pcap.2"));
        assert_eq!((one.len(), two.len()), (3, 3));
        assert_eq!((one[0][0], two[0][0]), (6, 3));
        assert!(!dir.join("t.pcap.3").exists());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
