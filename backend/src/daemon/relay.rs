//! A relay on the vhost-user socket between QEMU and rust-vmm's
//! `vhost-user-backend`, which mends one disagreement between them.
//!
//! QEMU's virtio-net sends `SET_VRING_ENABLE` when the device is realized,
//! long before `SET_FEATURES`, and (up to at least 11.1) never sets
//! `VHOST_USER_F_PROTOCOL_FEATURES` in `SET_FEATURES` although it did
//! negotiate protocol features. The library refuses `SET_VRING_ENABLE`
//! while that bit is not acked and drops the connection, so QEMU's
//! virtio-net cannot start on it. This module owns the fix, and nothing
//! else: it passes every message through unchanged (with its file
//! descriptors), except that
//! - once `SET_PROTOCOL_FEATURES` was seen, `SET_FEATURES` also carries
//!   the protocol-features bit (QEMU did negotiate them);
//! - a `SET_VRING_ENABLE` before `SET_FEATURES` is held back (acked to
//!   QEMU if it asked for a reply) and replayed right after
//!   `SET_FEATURES`, so the rings end up as QEMU asked.
//!
//! Messages are the vhost-user framing: a 12-byte header (request, flags,
//! payload size, little-endian u32s), then the payload; descriptors ride
//! on the header.

use std::{
    io::{self, Read, Write},
    os::{
        fd::{AsRawFd, FromRawFd, OwnedFd, RawFd},
        unix::net::UnixStream,
    },
};

use vmm_sys_util::sock_ctrl_msg::ScmSocket;

const SET_FEATURES: u32 = 2;
const SET_MEM_TABLE: u32 = 5;
const SET_PROTOCOL_FEATURES: u32 = 16;
const SET_VRING_ENABLE: u32 = 18;
const PROTOCOL_FEATURES_BIT: u64 = 1 << 30;
const FLAG_VERSION: u32 = 0x1;
const FLAG_REPLY: u32 = 0x4;
const FLAG_NEED_REPLY: u32 = 0x8;
const HDR_LEN: usize = 12;
/// Largest payload we relay (the biggest real message, a memory table or
/// a config-space access, is well under 1 KiB).
const MAX_PAYLOAD: usize = 64 * 1024;
/// Most descriptors on one message (a memory table carries up to 8; the
/// vhost-user limit on a message is 32).
const MAX_FDS: usize = 32;

/// One message read from a socket.
struct Message {
    hdr: [u8; HDR_LEN],
    payload: Vec<u8>,
    fds: Vec<OwnedFd>,
}

impl Message {
    fn request(&self) -> u32 {
        u32::from_le_bytes([self.hdr[0], self.hdr[1], self.hdr[2], self.hdr[3]])
    }

    fn flags(&self) -> u32 {
        u32::from_le_bytes([self.hdr[4], self.hdr[5], self.hdr[6], self.hdr[7]])
    }

    fn with_flags(mut self, flags: u32) -> Message {
        self.hdr[4..8].copy_from_slice(&flags.to_le_bytes());
        self
    }
}

fn bad(msg: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.to_string())
}

/// The payload size a header announces, refused above [`MAX_PAYLOAD`].
fn payload_size(hdr: &[u8; HDR_LEN]) -> io::Result<usize> {
    let size = u32::from_le_bytes([hdr[8], hdr[9], hdr[10], hdr[11]]) as usize;
    if size > MAX_PAYLOAD {
        return Err(bad("vhost-user message too large"));
    }
    Ok(size)
}

/// Runs the relay's rewriting over `stream`, a byte stream of messages
/// from a frontend, as if it came over the socket (for fuzzing and
/// tests). Returns how many messages would reach the library and how many
/// answers would go back to the frontend; stops at the first malformed
/// or truncated message. Every message it would send is well-formed: its
/// header's size is its payload's length.
pub fn rewrite_stream(mut stream: &[u8]) -> (usize, usize) {
    let mut state = State::default();
    let (mut to_lib, mut to_fe) = (0, 0);
    while stream.len() >= HDR_LEN {
        let mut hdr = [0u8; HDR_LEN];
        hdr.copy_from_slice(&stream[..HDR_LEN]);
        let Ok(size) = payload_size(&hdr) else { break };
        let Some(payload) = stream.get(HDR_LEN..HDR_LEN + size) else {
            break;
        };
        let m = Message {
            hdr,
            payload: payload.to_vec(),
            fds: Vec::new(),
        };
        stream = &stream[HDR_LEN + size..];
        let (out, ack) = state.on_frontend(m);
        for m in out.iter().chain(ack.iter()) {
            let announced = u32::from_le_bytes([m.hdr[8], m.hdr[9], m.hdr[10], m.hdr[11]]);
            assert_eq!(announced as usize, m.payload.len(), "well-formed output");
        }
        to_lib += out.len();
        to_fe += usize::from(ack.is_some());
    }
    (to_lib, to_fe)
}

/// Reads one message; `None` at end of stream.
fn read_message(s: &mut UnixStream) -> io::Result<Option<Message>> {
    let mut hdr = [0u8; HDR_LEN];
    let mut raw = [0 as RawFd; MAX_FDS];
    let mut iov = [libc::iovec {
        iov_base: hdr.as_mut_ptr().cast(),
        iov_len: HDR_LEN,
    }];
    // SAFETY: the iovec points into `hdr`, which is borrowed mutably for
    // the call and may hold any bytes.
    let (n, nfds) = unsafe { s.recv_with_fds(&mut iov, &mut raw) }.map_err(io::Error::from)?;
    let fds: Vec<OwnedFd> = raw[..nfds]
        .iter()
        // SAFETY: recvmsg gave us these descriptors; nothing else owns
        // them, and each is wrapped exactly once.
        .map(|fd| unsafe { OwnedFd::from_raw_fd(*fd) })
        .collect();
    if n == 0 {
        return Ok(None);
    }
    if n < HDR_LEN {
        s.read_exact(&mut hdr[n..])?;
    }
    let size = payload_size(&hdr)?;
    let mut payload = vec![0u8; size];
    s.read_exact(&mut payload)?;
    Ok(Some(Message { hdr, payload, fds }))
}

fn write_message(s: &mut UnixStream, m: &Message) -> io::Result<()> {
    let fds: Vec<RawFd> = m.fds.iter().map(|f| f.as_raw_fd()).collect();
    let mut first: Vec<&[u8]> = vec![&m.hdr[..]];
    if !m.payload.is_empty() {
        first.push(&m.payload);
    }
    let sent = s.send_with_fds(&first, &fds).map_err(io::Error::from)?;
    let total = HDR_LEN + m.payload.len();
    if sent < total {
        // The descriptors went with the first bytes; the rest is plain.
        let mut all = Vec::with_capacity(total);
        all.extend_from_slice(&m.hdr);
        all.extend_from_slice(&m.payload);
        s.write_all(&all[sent..])?;
    }
    Ok(())
}

/// How long after `SET_FEATURES` the guest's memory must arrive.
pub const MEMORY_GRACE: std::time::Duration = std::time::Duration::from_secs(2);

/// The relay's memory of the conversation.
#[derive(Default)]
struct State {
    protocol_negotiated: bool,
    features_set: bool,
    /// When the device was started (first `SET_FEATURES`) with no memory
    /// table yet.
    started_without_memory: Option<std::time::Instant>,
    memory_seen: bool,
    /// SET_VRING_ENABLE messages held back until SET_FEATURES.
    held: Vec<Message>,
}

impl State {
    /// What to send to the library for `m` from QEMU, and what to answer
    /// QEMU directly.
    fn on_frontend(&mut self, mut m: Message) -> (Vec<Message>, Option<Message>) {
        match m.request() {
            SET_MEM_TABLE => {
                self.memory_seen = true;
                self.started_without_memory = None;
                (vec![m], None)
            }
            SET_PROTOCOL_FEATURES => {
                self.protocol_negotiated = true;
                (vec![m], None)
            }
            SET_FEATURES if m.payload.len() == 8 => {
                if self.protocol_negotiated {
                    let mut v = [0u8; 8];
                    v.copy_from_slice(&m.payload);
                    let f = u64::from_le_bytes(v) | PROTOCOL_FEATURES_BIT;
                    m.payload.copy_from_slice(&f.to_le_bytes());
                }
                self.features_set = true;
                if !self.memory_seen && self.started_without_memory.is_none() {
                    self.started_without_memory = Some(std::time::Instant::now());
                }
                let mut out = vec![m];
                out.append(&mut self.held);
                (out, None)
            }
            SET_VRING_ENABLE if !self.features_set => {
                let flags = m.flags();
                let ack = (flags & FLAG_NEED_REPLY != 0).then(|| {
                    let mut hdr = [0u8; HDR_LEN];
                    hdr[..4].copy_from_slice(&SET_VRING_ENABLE.to_le_bytes());
                    hdr[4..8].copy_from_slice(&(FLAG_VERSION | FLAG_REPLY).to_le_bytes());
                    hdr[8..12].copy_from_slice(&8u32.to_le_bytes());
                    Message {
                        hdr,
                        payload: vec![0; 8],
                        fds: Vec::new(),
                    }
                });
                // Replayed without asking for a reply: QEMU has its ack.
                self.held.push(m.with_flags(flags & !FLAG_NEED_REPLY));
                (Vec::new(), ack)
            }
            _ => (vec![m], None),
        }
    }
}

/// Why the relay stopped.
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    /// A socket failed.
    #[error("vhost-user socket I/O failed")]
    Io(#[from] io::Error),
    /// The frontend started the device but never shared guest memory:
    /// QEMU does that when its memory is not shared (it then falls back to
    /// its own emulation, and the guest's NIC is dead).
    #[error(
        "QEMU started the NIC but sent no guest memory: its memory is not shared with the daemon; start QEMU with -object memory-backend-memfd,id=mem0,size=SIZE,share=on -numa node,memdev=mem0"
    )]
    MemoryNotShared,
}

/// Relays between `frontend` (QEMU) and `library` (the vhost-user
/// library's end) until either side closes.
pub fn relay(mut frontend: UnixStream, mut library: UnixStream) -> Result<(), RelayError> {
    let mut state = State::default();
    let mut fds = [
        libc::pollfd {
            fd: frontend.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        },
        libc::pollfd {
            fd: library.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        },
    ];
    let result = loop {
        // SAFETY: `fds` is a valid array of two pollfd for the call.
        let rc = unsafe { libc::poll(fds.as_mut_ptr(), 2, 250) };
        if rc < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            break Err(e.into());
        }
        if state
            .started_without_memory
            .is_some_and(|t| t.elapsed() > MEMORY_GRACE)
        {
            break Err(RelayError::MemoryNotShared);
        }
        if fds[0].revents != 0 {
            match read_message(&mut frontend) {
                Ok(Some(m)) => {
                    let (to_lib, to_qemu) = state.on_frontend(m);
                    let mut r = Ok(());
                    for m in &to_lib {
                        r = r.and_then(|()| write_message(&mut library, m));
                    }
                    if let Some(a) = to_qemu {
                        r = r.and_then(|()| write_message(&mut frontend, &a));
                    }
                    if let Err(e) = r {
                        break Err(e.into());
                    }
                }
                Ok(None) => break Ok(()),
                Err(e) => break Err(e.into()),
            }
        }
        if fds[1].revents != 0 {
            match read_message(&mut library) {
                Ok(Some(m)) => {
                    if let Err(e) = write_message(&mut frontend, &m) {
                        break Err(e.into());
                    }
                }
                Ok(None) => break Ok(()),
                Err(e) => break Err(e.into()),
            }
        }
    };
    let _ = frontend.shutdown(std::net::Shutdown::Both);
    let _ = library.shutdown(std::net::Shutdown::Both);
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(req: u32, flags: u32, payload: &[u8]) -> Message {
        let mut hdr = [0u8; HDR_LEN];
        hdr[..4].copy_from_slice(&req.to_le_bytes());
        hdr[4..8].copy_from_slice(&flags.to_le_bytes());
        hdr[8..12].copy_from_slice(&(payload.len() as u32).to_le_bytes());
        Message {
            hdr,
            payload: payload.to_vec(),
            fds: Vec::new(),
        }
    }

    #[test]
    fn early_vring_enable_is_acked_held_and_replayed_after_set_features() {
        let mut s = State::default();
        let (out, ack) = s.on_frontend(msg(SET_PROTOCOL_FEATURES, 1, &8u64.to_le_bytes()));
        assert_eq!(out.len(), 1);
        assert!(ack.is_none());
        let mut enable = [0u8; 8];
        enable[4] = 1; // index 0, num 1
        let (out, ack) = s.on_frontend(msg(SET_VRING_ENABLE, 1 | FLAG_NEED_REPLY, &enable));
        assert!(out.is_empty());
        let ack = ack.expect("ack for NEED_REPLY");
        assert_eq!(ack.request(), SET_VRING_ENABLE);
        assert_eq!(ack.flags(), FLAG_VERSION | FLAG_REPLY);
        assert_eq!(ack.payload, vec![0; 8]);
        let (out, ack) = s.on_frontend(msg(SET_FEATURES, 1, &(1u64 << 32).to_le_bytes()));
        assert!(ack.is_none());
        assert_eq!(out.len(), 2);
        assert_eq!(out[0].request(), SET_FEATURES);
        let f = u64::from_le_bytes(out[0].payload[..8].try_into().unwrap());
        assert_eq!(f, 1 << 32 | PROTOCOL_FEATURES_BIT);
        assert_eq!(out[1].request(), SET_VRING_ENABLE);
        assert_eq!(out[1].flags() & FLAG_NEED_REPLY, 0);
        assert_eq!(out[1].payload, enable.to_vec());
        // After SET_FEATURES, enables pass straight through.
        let (out, ack) = s.on_frontend(msg(SET_VRING_ENABLE, 1 | FLAG_NEED_REPLY, &enable));
        assert_eq!(out.len(), 1);
        assert!(ack.is_none());
    }

    #[test]
    fn without_protocol_features_set_features_is_untouched() {
        let mut s = State::default();
        let (out, _) = s.on_frontend(msg(SET_FEATURES, 1, &(1u64 << 32).to_le_bytes()));
        let f = u64::from_le_bytes(out[0].payload[..8].try_into().unwrap());
        assert_eq!(f, 1 << 32);
    }

    #[test]
    fn messages_and_descriptors_cross_a_socket_intact() {
        let (mut a, mut b) = UnixStream::pair().unwrap();
        let file = std::fs::File::open("/dev/null").unwrap();
        let mut m = msg(5, 1, &[7u8; 300]);
        m.fds.push(OwnedFd::from(file));
        write_message(&mut a, &m).unwrap();
        let got = read_message(&mut b).unwrap().unwrap();
        assert_eq!(got.hdr, m.hdr);
        assert_eq!(got.payload, m.payload);
        assert_eq!(got.fds.len(), 1);
        drop(a);
        assert!(read_message(&mut b).unwrap().is_none());
    }

    #[test]
    fn an_oversized_message_is_refused() {
        let (mut a, mut b) = UnixStream::pair().unwrap();
        let mut hdr = [0u8; HDR_LEN];
        hdr[8..12].copy_from_slice(&(1u32 << 30).to_le_bytes());
        a.write_all(&hdr).unwrap();
        assert!(read_message(&mut b).is_err());
    }
}
