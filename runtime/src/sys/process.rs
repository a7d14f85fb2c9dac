//! Waiting on descriptors and on processes, and what the kernel says of a
//! process: OS calls in one place.

use std::io;
use std::os::fd::OwnedFd;
use std::process::Child;
use std::time::Duration;

/// A pidfd for `child` (readable once it has exited), where the kernel has
/// them (Linux 5.3); `None` otherwise. The child is not reaped yet, so its
/// pid cannot name another process.
pub(crate) fn pidfd(child: &Child) -> Option<OwnedFd> {
    let pid = rustix::process::Pid::from_raw(i32::try_from(child.id()).ok()?)?;
    rustix::process::pidfd_open(pid, rustix::process::PidfdFlags::empty()).ok()
}

/// Waits until `fd` has data (or EOF) to read, for at most `timeout`.
/// Returns `false` on timeout.
pub(crate) fn wait_readable(fd: std::os::fd::RawFd, timeout: Duration) -> io::Result<bool> {
    let mut pfd = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    // At least 1 ms unless asked not to wait at all.
    let ms = libc::c_int::try_from(timeout.as_millis())
        .unwrap_or(libc::c_int::MAX)
        .max(libc::c_int::from(!timeout.is_zero()));
    loop {
        // SAFETY: poll on one valid pollfd that lives across the call.
        let n = unsafe { libc::poll(&mut pfd, 1, ms) };
        if n >= 0 {
            return Ok(n > 0);
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// Resident memory of process `pid` in bytes, if it can be read.
pub(crate) fn rss_bytes(pid: u32) -> Option<u64> {
    let statm = std::fs::read_to_string(format!("/proc/{pid}/statm")).ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    Some(pages * u64::try_from(page).unwrap_or(4096))
}
