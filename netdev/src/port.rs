//! Raw Ethernet ports: a device that reads and writes whole frames of
//! every kind, for the daemon's switch, which forwards a guest's traffic
//! and hands only RoCEv2 for the guest's RDMA address to the engine.
//!
//! This module owns opening such a device and moving single frames
//! through it:
//! - `tap`: a TAP device (created if it does not exist, brought up), so
//!   the host kernel sees the guest's frames on it;
//! - `packet`: an AF_PACKET socket on an existing interface (a physical
//!   NIC, a veth), in promiscuous mode so that frames to the guest's MAC
//!   arrive, with our own outgoing frames ignored.
//!
//! The engine's framing on the same device is [`crate::eth::EthLink`],
//! made with [`crate::eth::EthLink::on_port`] over [`FramePort::file`].

use std::{
    ffi::CString,
    fs::File,
    io::Read,
    os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd},
    sync::Arc,
};

use crate::{
    LinkError,
    sys::{ifreq, set_int},
};

fn setup(what: &'static str) -> impl Fn(std::io::Error) -> LinkError {
    move |source| LinkError::Setup { what, source }
}

/// A device that carries whole Ethernet frames, non-blocking.
#[derive(Debug, Clone)]
pub struct FramePort {
    file: Arc<File>,
    name: String,
    created: bool,
    vnet: bool,
}

/// Length of the virtio-net header a TAP opened with
/// [`FramePort::tap_vnet`] puts in front of every frame
/// (`struct virtio_net_hdr_v1`).
pub const VNET_HDR_LEN: usize = 12;

/// Offloads the reader of a vnet-header TAP accepts
/// ([`FramePort::set_offload`]); the kernel then hands it frames with
/// partial checksums or TCP segments up to 64 KiB.
pub mod offload {
    /// Partial checksums (`NEEDS_CSUM`); required by the others.
    pub const CSUM: u32 = libc::TUN_F_CSUM;
    /// TCP over IPv4 segmentation.
    pub const TSO4: u32 = libc::TUN_F_TSO4;
    /// TCP over IPv6 segmentation.
    pub const TSO6: u32 = libc::TUN_F_TSO6;
    /// TSO with ECN.
    pub const TSO_ECN: u32 = libc::TUN_F_TSO_ECN;
}

/// Opens TAP `name` without the packet-information header (with a
/// virtio-net header on every frame if `vnet`), creating it if it does
/// not exist (a name with `%d` lets the kernel pick the number). Returns
/// the file, the interface's name and whether we created it.
pub(crate) fn open_tap(name: &str, vnet: bool) -> Result<(File, String, bool), LinkError> {
    let existed = !name.contains('%') && interface_exists(name);
    let mut ifr = ifreq(name)?;
    let file = File::options()
        .read(true)
        .write(true)
        .open("/dev/net/tun")
        .map_err(setup("/dev/net/tun"))?;
    let mut flags = libc::IFF_TAP | libc::IFF_NO_PI;
    if vnet {
        flags |= libc::IFF_VNET_HDR;
    }
    let flags = flags as libc::c_short;
    ifr[16..18].copy_from_slice(&flags.to_ne_bytes());
    // SAFETY: `ifr` is a 40-byte buffer laid out as `struct ifreq` (the
    // NUL-terminated name, then the flags short), valid for the kernel to
    // read and write during the call.
    let rc = unsafe { libc::ioctl(file.as_raw_fd(), libc::TUNSETIFF, ifr.as_mut_ptr()) };
    if rc != 0 {
        return Err(setup("TAP (TUNSETIFF)")(std::io::Error::last_os_error()));
    }
    set_nonblocking(file.as_raw_fd()).map_err(setup("TAP (O_NONBLOCK)"))?;
    if vnet {
        let len = VNET_HDR_LEN as libc::c_int;
        // SAFETY: TUNSETVNETHDRSZ reads one int through the pointer, which
        // points at `len` for the whole call.
        let rc = unsafe { libc::ioctl(file.as_raw_fd(), libc::TUNSETVNETHDRSZ, &len) };
        if rc != 0 {
            return Err(setup("TAP (TUNSETVNETHDRSZ)")(
                std::io::Error::last_os_error(),
            ));
        }
    }
    let end = ifr[..libc::IFNAMSIZ]
        .iter()
        .position(|b| *b == 0)
        .unwrap_or(libc::IFNAMSIZ);
    let name = String::from_utf8_lossy(&ifr[..end]).into_owned();
    Ok((file, name, !existed))
}

fn set_nonblocking(fd: RawFd) -> std::io::Result<()> {
    // SAFETY: fcntl on a descriptor the caller owns, with plain integer
    // flags.
    let rc = unsafe {
        let fl = libc::fcntl(fd, libc::F_GETFL);
        libc::fcntl(fd, libc::F_SETFL, fl | libc::O_NONBLOCK)
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Whether an interface of this name exists (in our network namespace).
pub fn interface_exists(name: &str) -> bool {
    let Ok(cname) = CString::new(name) else {
        return false;
    };
    // SAFETY: `cname` is a valid NUL-terminated string for the call.
    unsafe { libc::if_nametoindex(cname.as_ptr()) != 0 }
}

/// Sets interface `name`'s MTU.
pub fn set_mtu(name: &str, mtu: u32) -> Result<(), LinkError> {
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::DGRAM, None)
        .map_err(setup("interface control"))?;
    let mut ifr = ifreq(name)?;
    let mtu = i32::try_from(mtu).map_err(|_| LinkError::Unsupported("MTU too large"))?;
    ifr[16..20].copy_from_slice(&mtu.to_ne_bytes());
    // SAFETY: `ifr` is laid out as `struct ifreq` with the MTU int after
    // the name; SIOCSIFMTU only reads it.
    let rc = unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFMTU, ifr.as_mut_ptr()) };
    if rc != 0 {
        return Err(setup("interface MTU (SIOCSIFMTU)")(
            std::io::Error::last_os_error(),
        ));
    }
    Ok(())
}

/// Sets interface `name` administratively up.
pub fn set_up(name: &str) -> Result<(), LinkError> {
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::DGRAM, None)
        .map_err(setup("interface control"))?;
    let mut ifr = ifreq(name)?;
    // SAFETY: `ifr` is laid out as `struct ifreq`; SIOCGIFFLAGS fills its
    // flags short, which lives across the call.
    let rc = unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS, ifr.as_mut_ptr()) };
    if rc != 0 {
        return Err(setup("interface flags (SIOCGIFFLAGS)")(
            std::io::Error::last_os_error(),
        ));
    }
    let flags = i16::from_ne_bytes([ifr[16], ifr[17]]) | libc::IFF_UP as i16;
    ifr[16..18].copy_from_slice(&flags.to_ne_bytes());
    // SAFETY: as above; SIOCSIFFLAGS only reads the buffer.
    let rc = unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS, ifr.as_mut_ptr()) };
    if rc != 0 {
        return Err(setup("interface flags (SIOCSIFFLAGS)")(
            std::io::Error::last_os_error(),
        ));
    }
    Ok(())
}

impl FramePort {
    /// Opens TAP `name` (creating it if it does not exist; a TAP we
    /// create vanishes when the last copy of this port is dropped) and
    /// sets it up.
    pub fn tap(name: &str) -> Result<FramePort, LinkError> {
        FramePort::open_tap(name, false)
    }

    /// As [`FramePort::tap`], but every frame read or written carries a
    /// [`VNET_HDR_LEN`]-byte virtio-net header first, so that checksum and
    /// segmentation offloads pass through ([`FramePort::set_offload`]).
    pub fn tap_vnet(name: &str) -> Result<FramePort, LinkError> {
        FramePort::open_tap(name, true)
    }

    fn open_tap(name: &str, vnet: bool) -> Result<FramePort, LinkError> {
        let (file, name, created) = open_tap(name, vnet)?;
        set_up(&name)?;
        Ok(FramePort {
            file: Arc::new(file),
            name,
            created,
            vnet,
        })
    }

    /// The virtio-net header length in front of every frame: 0, or
    /// [`VNET_HDR_LEN`] on a TAP opened with [`FramePort::tap_vnet`].
    pub fn vnet_hdr_len(&self) -> usize {
        if self.vnet { VNET_HDR_LEN } else { 0 }
    }

    /// Tells the kernel which [`offload`]s we accept in frames we read.
    pub fn set_offload(&self, flags: u32) -> Result<(), LinkError> {
        // SAFETY: TUNSETOFFLOAD takes the flags as the integer argument.
        let rc = unsafe {
            libc::ioctl(
                self.file.as_raw_fd(),
                libc::TUNSETOFFLOAD,
                flags as libc::c_ulong,
            )
        };
        if rc != 0 {
            return Err(setup("TAP (TUNSETOFFLOAD)")(std::io::Error::last_os_error()));
        }
        Ok(())
    }

    /// Opens an AF_PACKET socket on the existing interface `ifname`,
    /// promiscuous, ignoring the frames we send.
    pub fn packet(ifname: &str) -> Result<FramePort, LinkError> {
        let cname =
            CString::new(ifname).map_err(|_| LinkError::Unsupported("interface name has a NUL"))?;
        // SAFETY: `cname` is a valid NUL-terminated string for the call.
        let ifindex = unsafe { libc::if_nametoindex(cname.as_ptr()) };
        if ifindex == 0 {
            return Err(LinkError::NoInterface(ifname.to_string()));
        }
        let proto = (libc::ETH_P_ALL as u16).to_be();
        // SAFETY: plain socket(2); the result is checked before use.
        let fd = unsafe {
            libc::socket(
                libc::AF_PACKET,
                libc::SOCK_RAW | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
                i32::from(proto),
            )
        };
        if fd < 0 {
            return Err(setup("AF_PACKET (needs CAP_NET_RAW)")(
                std::io::Error::last_os_error(),
            ));
        }
        // SAFETY: `fd` is a fresh descriptor that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let _ = set_int(
            fd.as_raw_fd(),
            libc::SOL_PACKET,
            libc::PACKET_IGNORE_OUTGOING,
            1,
        );
        for opt in [libc::SO_RCVBUFFORCE, libc::SO_RCVBUF] {
            if set_int(fd.as_raw_fd(), libc::SOL_SOCKET, opt, 4 << 20).is_ok() {
                break;
            }
        }
        // SAFETY: all-zero is a valid `sockaddr_ll`; the fields we need are
        // set below.
        let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        sll.sll_family = libc::AF_PACKET as u16;
        sll.sll_protocol = proto;
        sll.sll_ifindex = ifindex as i32;
        // SAFETY: `sll` is a valid sockaddr_ll and its size is passed exactly.
        let rc = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                (&raw const sll).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
            )
        };
        if rc != 0 {
            return Err(setup("AF_PACKET (bind)")(std::io::Error::last_os_error()));
        }
        let mreq = libc::packet_mreq {
            mr_ifindex: ifindex as i32,
            mr_type: libc::PACKET_MR_PROMISC as u16,
            mr_alen: 0,
            mr_address: [0; 8],
        };
        // SAFETY: `mreq` is a valid packet_mreq that lives across the
        // call, and its size is passed exactly.
        let rc = unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_PACKET,
                libc::PACKET_ADD_MEMBERSHIP,
                (&raw const mreq).cast(),
                std::mem::size_of::<libc::packet_mreq>() as libc::socklen_t,
            )
        };
        if rc != 0 {
            return Err(setup("AF_PACKET (promiscuous mode)")(
                std::io::Error::last_os_error(),
            ));
        }
        Ok(FramePort {
            file: Arc::new(File::from(fd)),
            name: ifname.to_string(),
            created: false,
            vnet: false,
        })
    }

    /// The interface's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Whether opening the port created the interface (a TAP that did not
    /// exist), so that it goes away with the port.
    pub fn created(&self) -> bool {
        self.created
    }

    /// The shared descriptor, for an [`crate::eth::EthLink`] on the same
    /// device.
    pub fn file(&self) -> Arc<File> {
        self.file.clone()
    }

    /// The descriptor to wait on.
    pub fn fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }

    /// Reads the next frame into `buf`; `None` when none is waiting. A
    /// frame longer than `buf` is cut short (the caller sizes `buf` for
    /// the interface MTU plus the Ethernet header).
    pub fn read(&self, buf: &mut [u8]) -> Result<Option<usize>, LinkError> {
        match (&*self.file).read(buf) {
            Ok(n) => Ok(Some(n)),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => Ok(None),
            Err(source) => Err(LinkError::Device {
                name: self.name.clone(),
                source,
            }),
        }
    }

    /// Reads the next frame's virtio-net header into `hdr` and the frame
    /// into `buf` with one `readv`; the frame's length, or `None` when
    /// none is waiting. For a port with [`FramePort::vnet_hdr_len`] 0,
    /// `hdr` is left alone.
    pub fn read_vnet(
        &self,
        hdr: &mut [u8; VNET_HDR_LEN],
        buf: &mut [u8],
    ) -> Result<Option<usize>, LinkError> {
        if !self.vnet {
            return self.read(buf);
        }
        match read_with_vnet_hdr(&self.file, hdr, buf) {
            Ok(n) => Ok(Some(n)),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => Ok(None),
            Err(source) => Err(LinkError::Device {
                name: self.name.clone(),
                source,
            }),
        }
    }

    /// Writes one frame, given in up to four parts, with one `writev`
    /// (on a vnet-header port, the first part is the header).
    pub fn write(&self, parts: &[&[u8]]) -> Result<(), LinkError> {
        write_frame(&self.file, &self.name, parts)
    }

    /// The interface's MTU now.
    pub fn mtu(&self) -> Result<u32, LinkError> {
        crate::eth::interface_mtu(&self.name)
    }
}

/// Reads one frame from a TAP opened with a virtio-net header: the header
/// into `hdr`, the frame into `buf`, with one `readv`; the frame's length.
pub(crate) fn read_with_vnet_hdr(
    file: &File,
    hdr: &mut [u8; VNET_HDR_LEN],
    buf: &mut [u8],
) -> std::io::Result<usize> {
    let iov = [
        libc::iovec {
            iov_base: hdr.as_mut_ptr().cast(),
            iov_len: VNET_HDR_LEN,
        },
        libc::iovec {
            iov_base: buf.as_mut_ptr().cast(),
            iov_len: buf.len(),
        },
    ];
    // SAFETY: both iovecs point into buffers borrowed mutably for the
    // call, with their exact lengths.
    let n = unsafe { libc::readv(file.as_raw_fd(), iov.as_ptr(), 2) };
    if n < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok((n as usize).saturating_sub(VNET_HDR_LEN))
}

/// Writes one frame of up to four parts to `file` with one `writev`.
pub(crate) fn write_frame(file: &File, name: &str, parts: &[&[u8]]) -> Result<(), LinkError> {
    let parts = &parts[..parts.len().min(4)];
    let iov: [libc::iovec; 4] = std::array::from_fn(|i| match parts.get(i) {
        Some(p) => libc::iovec {
            iov_base: p.as_ptr() as *mut libc::c_void,
            iov_len: p.len(),
        },
        None => libc::iovec {
            iov_base: std::ptr::null_mut(),
            iov_len: 0,
        },
    });
    // SAFETY: each iovec points into a slice borrowed for the whole call
    // (or is empty); the kernel only reads them.
    let n = unsafe { libc::writev(file.as_raw_fd(), iov.as_ptr(), parts.len() as i32) };
    if n < 0 {
        return Err(LinkError::Device {
            name: name.to_string(),
            source: std::io::Error::last_os_error(),
        });
    }
    Ok(())
}
