//! The `packet` link: RoCEv2 on an existing interface (a physical NIC, a
//! veth) through an AF_PACKET socket, with the same framing and neighbour
//! handling as the `tap` link ([`crate::eth::EthLink`]).
//!
//! This module owns opening that socket: bound to the interface, our own
//! outgoing frames ignored (`PACKET_IGNORE_OUTGOING`), and a classic BPF
//! filter so that the kernel only queues what the link can use: ARP,
//! ICMPv6 (for NDP), and unfragmented IPv4 or IPv6 UDP to port 4791. Our
//! MAC is the interface's.

use std::{
    ffi::CString,
    fs::File,
    net::IpAddr,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
};

use crate::{
    LinkError,
    eth::EthLink,
    sys::{
        attach_filter,
        bpf::{JEQ_K, JSET_K, LD_B_ABS, LD_H_ABS, LD_H_IND, LDX_MSH, RET_K, jump, stmt},
        ifreq, set_int,
    },
};

fn setup(what: &'static str) -> impl Fn(std::io::Error) -> LinkError {
    move |source| LinkError::Setup { what, source }
}

/// ARP, ICMPv6, and UDP to port 4791 over unfragmented IPv4 or IPv6.
const FILTER: [libc::sock_filter; 17] = [
    stmt(LD_H_ABS, 12),          // 0: ethertype
    jump(JEQ_K, 0x0806, 14, 0),  // 1: ARP -> accept
    jump(JEQ_K, 0x0800, 0, 7),   // 2: IPv4 -> 3, else -> 10
    stmt(LD_B_ABS, 23),          // 3: IPv4 protocol
    jump(JEQ_K, 17, 0, 12),      // 4: UDP -> 5, else drop
    stmt(LD_H_ABS, 20),          // 5: flags and fragment offset
    jump(JSET_K, 0x3fff, 10, 0), // 6: MF or offset -> drop
    stmt(LDX_MSH, 14),           // 7: X = IPv4 header length
    stmt(LD_H_IND, 16),          // 8: UDP destination port
    jump(JEQ_K, 4791, 6, 7),     // 9: -> accept / drop
    jump(JEQ_K, 0x86dd, 0, 6),   // 10: IPv6 -> 11, else drop
    stmt(LD_B_ABS, 20),          // 11: next header
    jump(JEQ_K, 58, 3, 0),       // 12: ICMPv6 -> accept
    jump(JEQ_K, 17, 0, 3),       // 13: UDP -> 14, else drop
    stmt(LD_H_ABS, 56),          // 14: UDP destination port
    jump(JEQ_K, 4791, 0, 1),     // 15: -> accept / drop
    stmt(RET_K, 0x4_0000),       // 16: accept
];
// (17: drop) is appended at run time to keep the table readable.

impl EthLink {
    /// Opens the `packet` link on interface `ifname`; we own `addrs` there.
    pub fn packet(ifname: &str, addrs: Vec<IpAddr>) -> Result<EthLink, LinkError> {
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

        let mut prog: Vec<libc::sock_filter> = FILTER.to_vec();
        prog.push(stmt(RET_K, 0));
        attach_filter(fd.as_raw_fd(), &prog).map_err(setup("AF_PACKET (BPF filter)"))?;
        // Older kernels lack this option; then our own frames are
        // filtered by MAC in `recv`.
        let _ = set_int(
            fd.as_raw_fd(),
            libc::SOL_PACKET,
            libc::PACKET_IGNORE_OUTGOING,
            1,
        );
        // Bursts of full-MTU frames: a queue larger than the default 208 KiB
        // means fewer drops (and retransmissions) when the engine falls
        // behind. SO_RCVBUFFORCE passes rmem_max for root; otherwise keep
        // whatever SO_RCVBUF gives.
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
        // The interface's MAC.
        let mut ifr = ifreq(ifname)?;
        // SAFETY: `ifr` is laid out as `struct ifreq` (name, then the
        // `sockaddr` that SIOCGIFHWADDR fills) and lives across the call.
        let rc = unsafe { libc::ioctl(fd.as_raw_fd(), libc::SIOCGIFHWADDR, ifr.as_mut_ptr()) };
        if rc != 0 {
            return Err(setup("AF_PACKET (SIOCGIFHWADDR)")(
                std::io::Error::last_os_error(),
            ));
        }
        let mac: [u8; 6] = ifr[18..24].try_into().expect("6 bytes");
        // Frames are read one by one: reading them in bursts with
        // recvmmsg (as the `udp` link does, crate::sys::RxBatch) was
        // measured on a veth pair at +2 to 7% message rate but +0.55 µs
        // (6%) on the 64-byte one-way latency, so it is not used here.
        let mut link = EthLink::from_file(File::from(fd), ifname.to_string(), mac, addrs);
        // Frames sent with `send_queued` go out with one sendmmsg.
        link.tx = Some(crate::sys::TxBatch::new());
        Ok(link)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs the filter the way the kernel's classic BPF does, for the
    /// opcodes it uses; out-of-range loads drop, as in the kernel.
    fn accepts(frame: &[u8]) -> bool {
        let mut prog = FILTER.to_vec();
        prog.push(stmt(RET_K, 0));
        let (mut a, mut x, mut pc) = (0u32, 0u32, 0usize);
        let byte = |off: usize| frame.get(off).map(|b| u32::from(*b));
        let half = |off: usize| Some(byte(off)? << 8 | byte(off + 1)?);
        loop {
            let i = prog[pc];
            pc += 1;
            let cond = match i.code {
                LD_H_ABS | LD_B_ABS | LD_H_IND | LDX_MSH => {
                    let off = i.k as usize + if i.code == LD_H_IND { x as usize } else { 0 };
                    let v = match i.code {
                        LD_B_ABS | LDX_MSH => byte(off),
                        _ => half(off),
                    };
                    let Some(v) = v else { return false };
                    if i.code == LDX_MSH {
                        x = 4 * (v & 0xf);
                    } else {
                        a = v;
                    }
                    continue;
                }
                JEQ_K => a == i.k,
                JSET_K => a & i.k != 0,
                RET_K => return i.k != 0,
                c => panic!("opcode {c:#x} not modelled"),
            };
            pc += usize::from(if cond { i.jt } else { i.jf });
        }
    }

    fn eth(ty: u16, rest: &[u8]) -> Vec<u8> {
        let mut f = vec![0u8; 12];
        f.extend_from_slice(&ty.to_be_bytes());
        f.extend_from_slice(rest);
        f
    }

    fn v4(ihl: u8, proto: u8, frag: u16, dport: u16) -> Vec<u8> {
        let mut ip = vec![0u8; usize::from(ihl) * 4];
        ip[0] = 0x40 | ihl;
        ip[6..8].copy_from_slice(&frag.to_be_bytes());
        ip[9] = proto;
        ip.extend_from_slice(&[0x12, 0x34]);
        ip.extend_from_slice(&dport.to_be_bytes());
        ip.extend_from_slice(&[0; 16]);
        eth(0x0800, &ip)
    }

    fn v6(next: u8, dport: u16) -> Vec<u8> {
        let mut ip = vec![0u8; 40];
        ip[0] = 0x60;
        ip[6] = next;
        ip.extend_from_slice(&[0x12, 0x34]);
        ip.extend_from_slice(&dport.to_be_bytes());
        ip.extend_from_slice(&[0; 16]);
        eth(0x86dd, &ip)
    }

    #[test]
    fn filter_keeps_roce_arp_and_icmpv6_only() {
        assert!(accepts(&v4(5, 17, 0x4000, 4791)), "IPv4 RoCEv2 with DF");
        assert!(accepts(&v4(6, 17, 0, 4791)), "IPv4 with options");
        assert!(accepts(&v6(17, 4791)), "IPv6 RoCEv2");
        assert!(accepts(&v6(58, 0)), "ICMPv6 (NDP)");
        assert!(accepts(&eth(0x0806, &[0; 28])), "ARP");
        assert!(!accepts(&v4(5, 17, 0, 9)), "other UDP port");
        assert!(!accepts(&v4(5, 6, 0, 4791)), "TCP");
        assert!(!accepts(&v4(5, 17, 0x2000, 4791)), "first fragment");
        assert!(!accepts(&v4(5, 17, 0x0010, 4791)), "later fragment");
        assert!(!accepts(&v6(17, 9)), "other IPv6 UDP port");
        assert!(!accepts(&v6(6, 4791)), "IPv6 TCP");
        assert!(!accepts(&eth(0x88cc, &[0; 40])), "LLDP");
        assert!(!accepts(&[0u8; 10]), "runt");
        assert!(
            !accepts(&v4(5, 17, 0, 4791)[..36]),
            "truncated before the port"
        );
    }
}
