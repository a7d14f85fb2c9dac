//! Waiting on descriptors and on processes, and what the kernel says of a
//! process: OS calls in one place.
//!
//! | platform | a child's exit ([`exit_watch`]) | resident memory ([`rss_bytes`]) | this executable ([`executable`]) |
//! |---|---|---|---|
//! | Linux | a pidfd (Linux 5.3) | `/proc/<pid>/statm` | `/proc/self/exe` |
//! | macOS, FreeBSD | a `kqueue` with `EVFILT_PROC` / `NOTE_EXIT` | `proc_pidinfo(PROC_PIDTASKINFO)`; `sysctl` `KERN_PROC_PID` `ki_rssize` | `current_exe` (`_NSGetExecutablePath`; `KERN_PROC_PATHNAME`) |
//! | Linux with `multiproc_portable` | none: the caller waits for the control socket's end | `/proc/<pid>/statm` | `current_exe` |

use std::io;
use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::process::Child;
use std::time::Duration;

/// A descriptor that turns readable once `child` has exited: a pidfd on
/// Linux, a `kqueue` watching the child's exit on macOS and FreeBSD.
/// `None` where there is none (kernels before 5.3, Linux with
/// `multiproc_portable`, or a child that has exited already on macOS),
/// and the caller falls back to other signs. The child is not reaped yet,
/// so its pid cannot name another process.
pub(crate) fn exit_watch(child: &Child) -> Option<OwnedFd> {
    #[cfg(all(target_os = "linux", not(multiproc_portable)))]
    {
        let pid = rustix::process::Pid::from_raw(i32::try_from(child.id()).ok()?)?;
        rustix::process::pidfd_open(pid, rustix::process::PidfdFlags::empty()).ok()
    }
    #[cfg(all(target_os = "linux", multiproc_portable))]
    {
        let _ = child;
        None
    }
    #[cfg(any(target_os = "macos", target_os = "freebsd"))]
    {
        kqueue_exit(child.id())
    }
}

/// A `kqueue` with one `EVFILT_PROC` / `NOTE_EXIT` filter on `pid`: it
/// polls readable once that process has exited.
#[cfg(any(target_os = "macos", target_os = "freebsd"))]
fn kqueue_exit(pid: u32) -> Option<OwnedFd> {
    use std::os::fd::{AsFd, AsRawFd, FromRawFd};
    // SAFETY: kqueue has no preconditions; checked below.
    let kq = unsafe { libc::kqueue() };
    if kq < 0 {
        return None;
    }
    // SAFETY: `kq` was just created and is owned by nobody else.
    let kq = unsafe { OwnedFd::from_raw_fd(kq) };
    // kqueue has no close-on-exec flag at creation on macOS.
    super::set_cloexec(kq.as_fd()).ok()?;
    // SAFETY: an all-zero kevent is valid (integers and a null pointer).
    let mut change: libc::kevent = unsafe { std::mem::zeroed() };
    change.ident = pid as libc::uintptr_t;
    change.filter = libc::EVFILT_PROC;
    change.flags = libc::EV_ADD | libc::EV_ONESHOT;
    change.fflags = libc::NOTE_EXIT;
    // SAFETY: registers one change that lives across the call and asks
    // for no events back. A process that has exited already makes it fail
    // (ESRCH): then there is nothing to wait for.
    let rc = unsafe {
        libc::kevent(
            kq.as_raw_fd(),
            &change,
            1,
            std::ptr::null_mut(),
            0,
            std::ptr::null(),
        )
    };
    (rc == 0).then_some(kq)
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
    #[cfg(target_os = "linux")]
    {
        let statm = std::fs::read_to_string(format!("/proc/{pid}/statm")).ok()?;
        let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
        Some(pages * page_size())
    }
    #[cfg(target_os = "macos")]
    {
        // SAFETY: an all-zero proc_taskinfo is valid (integers).
        let mut info: libc::proc_taskinfo = unsafe { std::mem::zeroed() };
        let size = std::mem::size_of::<libc::proc_taskinfo>() as libc::c_int;
        // SAFETY: proc_pidinfo writes at most `size` bytes into `info`,
        // which lives across the call.
        let n = unsafe {
            libc::proc_pidinfo(
                libc::c_int::try_from(pid).ok()?,
                libc::PROC_PIDTASKINFO,
                0,
                (&raw mut info).cast(),
                size,
            )
        };
        (n == size).then_some(info.pti_resident_size)
    }
    #[cfg(target_os = "freebsd")]
    {
        let info = kinfo_proc(libc::pid_t::try_from(pid).ok()?).ok()?;
        Some(u64::try_from(info.ki_rssize).ok()? * page_size())
    }
}

/// What the kernel says of process `pid` (`sysctl` `KERN_PROC_PID`).
///
/// # Errors
///
/// If `sysctl` fails (no such process, say) or fills in less than a whole
/// `kinfo_proc`.
#[cfg(target_os = "freebsd")]
pub(crate) fn kinfo_proc(pid: libc::pid_t) -> io::Result<libc::kinfo_proc> {
    let mut mib = [libc::CTL_KERN, libc::KERN_PROC, libc::KERN_PROC_PID, pid];
    // SAFETY: an all-zero kinfo_proc is valid (integers, arrays and null
    // pointers); sysctl fills it in.
    let mut info: libc::kinfo_proc = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::kinfo_proc>();
    // SAFETY: sysctl writes at most `len` bytes into `info`, which lives
    // across the call.
    let rc = unsafe {
        libc::sysctl(
            mib.as_mut_ptr(),
            mib.len() as libc::c_uint,
            (&raw mut info).cast(),
            &mut len,
            std::ptr::null(),
            0,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    if len < std::mem::size_of::<libc::kinfo_proc>() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "a short kinfo_proc",
        ));
    }
    Ok(info)
}

/// The page size in bytes.
#[cfg(not(target_os = "macos"))]
fn page_size() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    u64::try_from(page).unwrap_or(4096)
}

/// The path that starts this executable again: `/proc/self/exe` on Linux
/// (right even if the file was renamed or replaced since), elsewhere what
/// `current_exe` finds, else `argv[0]`.
pub(crate) fn executable() -> PathBuf {
    #[cfg(all(target_os = "linux", not(multiproc_portable)))]
    {
        let proc_exe = PathBuf::from("/proc/self/exe");
        if proc_exe.exists() {
            return proc_exe;
        }
    }
    std::env::current_exe()
        .unwrap_or_else(|_| PathBuf::from(std::env::args_os().next().unwrap_or_default()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;

    #[test]
    fn a_child_is_seen_to_exit_and_its_memory_is_read() {
        let mut child = std::process::Command::new("sleep")
            .arg("0.2")
            .spawn()
            .expect("sleep starts");
        assert!(rss_bytes(child.id()).is_some_and(|n| n > 0));
        let watch = exit_watch(&child);
        // Linux with `multiproc_portable` waits for the control socket.
        assert_eq!(watch.is_none(), cfg!(multiproc_portable));
        if let Some(fd) = watch {
            assert!(!wait_readable(fd.as_raw_fd(), Duration::ZERO).unwrap());
            assert!(wait_readable(fd.as_raw_fd(), Duration::from_secs(10)).unwrap());
        }
        child.wait().unwrap();
        assert!(executable().exists());
    }
}
