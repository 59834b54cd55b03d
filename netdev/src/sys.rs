//! The few raw system interfaces the links share: integer socket options
//! and the `struct ifreq` buffer of the interface ioctls.

use std::os::fd::RawFd;

use crate::LinkError;

/// Sets an integer socket option on `fd`.
pub(crate) fn set_int(
    fd: RawFd,
    level: libc::c_int,
    name: libc::c_int,
    value: libc::c_int,
) -> std::io::Result<()> {
    // SAFETY: the caller passes an open descriptor; the option value is a
    // c_int that lives across the call, and its size is passed exactly.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            (&raw const value).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Size of `struct ifreq` on Linux (the name, then a 24-byte union).
pub(crate) const IFREQ_LEN: usize = 40;

/// A zeroed `struct ifreq` carrying interface `name` (NUL-terminated).
/// Names of 0 or more than 15 bytes are refused.
pub(crate) fn ifreq(name: &str) -> Result<[u8; IFREQ_LEN], LinkError> {
    if name.is_empty() || name.len() >= libc::IFNAMSIZ {
        return Err(LinkError::Unsupported(
            "interface name must be 1 to 15 bytes",
        ));
    }
    let mut ifr = [0u8; IFREQ_LEN];
    ifr[..name.len()].copy_from_slice(name.as_bytes());
    Ok(ifr)
}

/// Classic BPF (linux/filter.h): the instructions and opcodes of the
/// links' socket filters.
pub(crate) mod bpf {
    /// An instruction that does not jump.
    pub(crate) const fn stmt(code: u16, k: u32) -> libc::sock_filter {
        libc::sock_filter {
            code,
            jt: 0,
            jf: 0,
            k,
        }
    }

    /// A conditional jump: `jt` or `jf` instructions on from the next.
    pub(crate) const fn jump(code: u16, k: u32, jt: u8, jf: u8) -> libc::sock_filter {
        libc::sock_filter { code, jt, jf, k }
    }

    pub(crate) const LD_W_ABS: u16 = 0x20;
    pub(crate) const LD_H_ABS: u16 = 0x28;
    pub(crate) const LD_B_ABS: u16 = 0x30;
    pub(crate) const LD_H_IND: u16 = 0x48;
    pub(crate) const LDX_MSH: u16 = 0xb1;
    pub(crate) const JEQ_K: u16 = 0x15;
    pub(crate) const JSET_K: u16 = 0x45;
    pub(crate) const RET_K: u16 = 0x06;
}

/// Attaches the classic BPF program `prog` to socket `fd`.
pub(crate) fn attach_filter(fd: RawFd, prog: &[libc::sock_filter]) -> std::io::Result<()> {
    let fprog = libc::sock_fprog {
        len: u16::try_from(prog.len()).map_err(|_| std::io::ErrorKind::InvalidInput)?,
        // The kernel only reads the program.
        filter: prog.as_ptr().cast_mut(),
    };
    // SAFETY: `fprog` points at `prog`, which outlives the call; the
    // kernel copies the program and never writes through the pointer.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_ATTACH_FILTER,
            (&raw const fprog).cast(),
            std::mem::size_of::<libc::sock_fprog>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// How many datagrams or frames one `recvmmsg` reads at most.
const RX_SLOTS: usize = 32;
/// Room per datagram or frame: a 9000-byte MTU plus link headers.
const RX_SLOT: usize = 9216;

/// Datagrams or frames read ahead from a socket, [`RX_SLOTS`] at a time
/// with one `recvmmsg(2)`, and handed out one by one: one system call per
/// burst instead of one per packet (and one more to learn that nothing is
/// left).
pub(crate) struct RxBatch {
    bufs: Box<[u8]>,
    /// One per slot, pointing into `bufs`; built once.
    iov: Box<[libc::iovec]>,
    /// One per slot, pointing at its `iov`; built once.
    msgs: Box<[libc::mmsghdr]>,
    /// Slots filled by the last `recvmmsg`.
    count: usize,
    /// The next slot to hand out.
    next: usize,
    /// Datagrams longer than a slot, dropped.
    pub truncated: u64,
}

// SAFETY: the raw pointers in `iov` and `msgs` point only into the boxes
// this struct owns (whose heap addresses never change), so moving the
// struct to another thread moves everything they refer to with it.
unsafe impl Send for RxBatch {}
// SAFETY: the pointers are only used by `recvmmsg` in `refill`, which
// takes `&mut self`; through a shared reference nothing can reach them.
unsafe impl Sync for RxBatch {}

impl RxBatch {
    pub(crate) fn new() -> RxBatch {
        let mut bufs = vec![0u8; RX_SLOTS * RX_SLOT].into_boxed_slice();
        let base = bufs.as_mut_ptr();
        let mut iov: Box<[libc::iovec]> = (0..RX_SLOTS)
            .map(|i| libc::iovec {
                // SAFETY: slot `i` lies within `bufs` (RX_SLOTS * RX_SLOT).
                iov_base: unsafe { base.add(i * RX_SLOT) }.cast(),
                iov_len: RX_SLOT,
            })
            .collect();
        let msgs: Box<[libc::mmsghdr]> = iov
            .iter_mut()
            .map(|v| {
                // SAFETY: all-zero is a valid mmsghdr (no name, no control).
                let mut m: libc::mmsghdr = unsafe { std::mem::zeroed() };
                m.msg_hdr.msg_iov = v;
                m.msg_hdr.msg_iovlen = 1;
                m
            })
            .collect();
        RxBatch {
            bufs,
            iov,
            msgs,
            count: 0,
            next: 0,
            truncated: 0,
        }
    }

    /// Copies the next datagram waiting on `fd` into `out` and returns its
    /// length (cut to `out`'s); `None` when nothing is waiting.
    pub(crate) fn next(&mut self, fd: RawFd, out: &mut [u8]) -> std::io::Result<Option<usize>> {
        loop {
            if self.next == self.count {
                self.refill(fd)?;
                if self.count == 0 {
                    return Ok(None);
                }
            }
            let i = self.next;
            self.next += 1;
            let m = &self.msgs[i];
            if m.msg_hdr.msg_flags & libc::MSG_TRUNC != 0 {
                self.truncated += 1;
                continue;
            }
            let n = (m.msg_len as usize).min(out.len());
            out[..n].copy_from_slice(&self.bufs[i * RX_SLOT..i * RX_SLOT + n]);
            return Ok(Some(n));
        }
    }

    fn refill(&mut self, fd: RawFd) -> std::io::Result<()> {
        self.count = 0;
        self.next = 0;
        debug_assert_eq!(self.iov.len(), RX_SLOTS);
        // SAFETY: every header points at its own iovec, and every iovec at
        // its own RX_SLOT bytes of `bufs`; all are owned by `self` and live
        // across the call, which writes at most that much into each (and
        // the headers' output fields).
        let n = unsafe {
            libc::recvmmsg(
                fd,
                self.msgs.as_mut_ptr(),
                RX_SLOTS as libc::c_uint,
                libc::MSG_DONTWAIT,
                std::ptr::null_mut(),
            )
        };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::WouldBlock {
                return Ok(());
            }
            return Err(e);
        }
        self.count = n as usize;
        Ok(())
    }
}

/// How many datagrams one `sendmmsg` sends at most.
const TX_SLOTS: usize = 32;

/// Datagrams queued by `send` and sent together by [`TxBatch::flush`]
/// with one `sendmmsg(2)` (or when the batch is full).
pub(crate) struct TxBatch {
    bufs: Vec<u8>,
    lens: [usize; TX_SLOTS],
    /// Per slot: the destination, or none on a socket bound to its peer
    /// (an AF_PACKET socket bound to an interface).
    to: Vec<Option<socket2::SockAddr>>,
    count: usize,
}

impl TxBatch {
    pub(crate) fn new() -> TxBatch {
        TxBatch {
            bufs: vec![0; TX_SLOTS * RX_SLOT],
            lens: [0; TX_SLOTS],
            to: Vec::with_capacity(TX_SLOTS),
            count: 0,
        }
    }

    /// Whether nothing is queued.
    pub(crate) fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Whether the batch must be flushed before `push` can take more.
    pub(crate) fn is_full(&self) -> bool {
        self.count == TX_SLOTS
    }

    /// Queues `data` for `to`. The caller flushes first if the batch is
    /// full; data longer than a slot is refused.
    pub(crate) fn push(&mut self, data: &[u8], to: socket2::SockAddr) -> Result<(), ()> {
        self.push_parts(&[data], Some(to))
    }

    /// Queues the concatenation of `parts` for `to` (see [`TxBatch::push`]).
    pub(crate) fn push_parts(
        &mut self,
        parts: &[&[u8]],
        to: Option<socket2::SockAddr>,
    ) -> Result<(), ()> {
        let len: usize = parts.iter().map(|p| p.len()).sum();
        if self.is_full() || len > RX_SLOT {
            return Err(());
        }
        let i = self.count;
        let mut at = i * RX_SLOT;
        for p in parts {
            self.bufs[at..at + p.len()].copy_from_slice(p);
            at += p.len();
        }
        self.lens[i] = len;
        if self.to.len() > i {
            self.to[i] = to;
        } else {
            self.to.push(to);
        }
        self.count += 1;
        Ok(())
    }

    /// Sends everything queued on `fd`. On an error the datagrams not yet
    /// sent are dropped (a loss the transport recovers from) and the
    /// error is returned with the destination of the first of them.
    pub(crate) fn flush(
        &mut self,
        fd: RawFd,
    ) -> Result<(), (std::io::Error, Option<std::net::SocketAddr>)> {
        let mut sent = 0;
        let result = loop {
            if sent == self.count {
                break Ok(());
            }
            let base = self.bufs.as_mut_ptr();
            let mut iov: [libc::iovec; TX_SLOTS] = std::array::from_fn(|i| libc::iovec {
                // SAFETY: slot `i` lies within `bufs` (TX_SLOTS * RX_SLOT).
                iov_base: unsafe { base.add(i * RX_SLOT) }.cast(),
                iov_len: self.lens[i],
            });
            // SAFETY: all-zero is a valid mmsghdr.
            let mut msgs: [libc::mmsghdr; TX_SLOTS] = unsafe { std::mem::zeroed() };
            for i in sent..self.count {
                let m = &mut msgs[i].msg_hdr;
                m.msg_iov = &mut iov[i];
                m.msg_iovlen = 1;
                if let Some(to) = &self.to[i] {
                    m.msg_name = to.as_ptr().cast_mut().cast();
                    m.msg_namelen = to.len();
                }
            }
            // SAFETY: headers sent..count point at their iovec (their
            // slot's bytes of `bufs`) and at their destination address,
            // all alive across the call; the kernel only reads them.
            let n = unsafe {
                libc::sendmmsg(
                    fd,
                    msgs[sent..].as_mut_ptr(),
                    (self.count - sent) as libc::c_uint,
                    libc::MSG_DONTWAIT,
                )
            };
            if n <= 0 {
                let e = std::io::Error::last_os_error();
                break Err((e, self.to[sent].as_ref().and_then(|a| a.as_socket())));
            }
            sent += n as usize;
        };
        self.count = 0;
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::{net::UdpSocket, os::fd::AsRawFd};

    fn wait_readable(fd: RawFd) {
        let mut p = libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd for the duration of the call.
        unsafe { libc::poll(&mut p, 1, 2000) };
    }

    #[test]
    fn batches_carry_every_datagram_in_order_and_drop_oversized_ones() {
        let a = UdpSocket::bind("127.0.0.1:0").unwrap();
        let b = UdpSocket::bind("127.0.0.1:0").unwrap();
        b.set_nonblocking(true).unwrap();
        // Room for all 70 at once (each costs a few KiB of buffer).
        let _ = set_int(
            b.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVBUFFORCE,
            4 << 20,
        );
        let to = socket2::SockAddr::from(b.local_addr().unwrap());
        // 70 datagrams: two full batches of 32 flushed on the way, then 6;
        // number 40 is too long for a receive slot.
        let mut tx = TxBatch::new();
        let payload = |i: usize| vec![i as u8; 100 + i * 37];
        for i in 0..70 {
            if tx.is_full() {
                tx.flush(a.as_raw_fd()).unwrap();
            }
            if i == 40 {
                tx.flush(a.as_raw_fd()).unwrap();
                a.send_to(&vec![0xee; RX_SLOT + 1], b.local_addr().unwrap())
                    .unwrap();
                continue;
            }
            tx.push(&payload(i), to.clone()).unwrap();
        }
        assert!(tx.push(&vec![0; RX_SLOT + 1], to.clone()).is_err());
        tx.flush(a.as_raw_fd()).unwrap();
        assert!(tx.is_empty());

        let mut rx = RxBatch::new();
        let mut out = vec![0u8; RX_SLOT];
        let mut got = Vec::new();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while got.len() < 69 && std::time::Instant::now() < deadline {
            match rx.next(b.as_raw_fd(), &mut out).unwrap() {
                Some(n) => got.push(out[..n].to_vec()),
                None => wait_readable(b.as_raw_fd()),
            }
        }
        let want: Vec<Vec<u8>> = (0..70).filter(|&i| i != 40).map(payload).collect();
        assert_eq!(got, want);
        assert_eq!(rx.truncated, 1);
        assert_eq!(rx.next(b.as_raw_fd(), &mut out).unwrap(), None);
    }

    #[test]
    fn a_failed_flush_names_the_first_unsent_destination_and_empties() {
        let a = UdpSocket::bind("127.0.0.1:0").unwrap();
        // IPv6 destinations on an IPv4 socket: the kernel refuses them.
        let to = socket2::SockAddr::from("[::1]:9".parse::<std::net::SocketAddr>().unwrap());
        let mut tx = TxBatch::new();
        tx.push(b"x", to.clone()).unwrap();
        let (e, first) = tx.flush(a.as_raw_fd()).unwrap_err();
        assert!(e.raw_os_error().is_some(), "{e}");
        assert_eq!(first, to.as_socket());
        assert!(tx.is_empty());
    }
}
