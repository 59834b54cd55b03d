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
