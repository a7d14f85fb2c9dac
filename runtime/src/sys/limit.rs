//! A worker process's hard memory limit, and the note its process leaves
//! when an allocation fails: OS calls in one place.
//!
//! | platform | limit | who sets it | what it counts |
//! |---|---|---|---|
//! | Linux | `RLIMIT_DATA` | the parent, with `prlimit`, before the setup | private writable memory mapped (heap, anonymous `mmap`, thread stacks), checked on every mapping since Linux 4.7 |
//! | Linux with `multiproc_portable` | `RLIMIT_DATA` | the worker itself, first thing | as on Linux |
//! | macOS 12 and later | `RLIMIT_AS` | the worker itself, first thing | the growth of its whole address space from then on |
//! | FreeBSD | `RLIMIT_AS` | the worker itself, first thing | the growth of its whole address space from then on |
//!
//! On Linux, shared mappings (a pool's arenas and progress page,
//! `SharedArray`, `SharedBytes`) and reservations without write access do
//! not count. macOS and FreeBSD have no such limit: macOS applies both
//! `RLIMIT_DATA` and `RLIMIT_AS` to the size of the whole address space
//! and refuses a limit below what is mapped already (and a process starts
//! with gigabytes of shared libraries mapped), FreeBSD applies
//! `RLIMIT_DATA` to `brk` alone. There the worker measures what it has
//! mapped as it starts and sets `RLIMIT_AS` to that plus the limit: every
//! mapping it makes later counts, shared ones and reservations included,
//! so a limit must leave room for the pool's arenas (up to five times the
//! largest frame) on top of what the tasks allocate. On macOS what is
//! mapped is found as the lowest limit the kernel accepts. The parent
//! passes the limit in an environment variable, which the worker removes.
//! The worker setting its own limit is no weaker than the parent setting
//! it: soft and hard limit alike, which it cannot raise again without
//! privilege.

use std::io;
use std::sync::OnceLock;

/// Caps the private writable memory of process `pid` (a child of this
/// process, not reaped yet) at `bytes`: soft and hard limit alike, so the
/// process cannot raise it without `CAP_SYS_RESOURCE`. A hard limit the
/// process had already that is lower stays.
///
/// # Errors
///
/// What `prlimit` says (the process is gone, or this process may not
/// change its limits).
#[cfg(all(target_os = "linux", not(multiproc_portable)))]
pub(crate) fn limit_data(pid: u32, bytes: u64) -> io::Result<()> {
    let pid = libc::pid_t::try_from(pid)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "pid out of range"))?;
    let mut old = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: prlimit reads no new limit (null) and writes the old one into
    // `old`, which lives across the call.
    if unsafe { libc::prlimit(pid, libc::RLIMIT_DATA, std::ptr::null(), &mut old) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let bytes = bytes.min(old.rlim_max);
    let new = libc::rlimit {
        rlim_cur: bytes,
        rlim_max: bytes,
    };
    // SAFETY: prlimit reads `new`, which lives across the call, and writes
    // nothing (null).
    if unsafe { libc::prlimit(pid, libc::RLIMIT_DATA, &new, std::ptr::null_mut()) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The environment variable in which a worker is told its limit, in
/// bytes, on the portable back end.
#[cfg(any(not(target_os = "linux"), multiproc_portable))]
const ENV: &str = "MULTIPROC_MEMORY_LIMIT";

/// In the parent, before a worker is started: on the portable back end,
/// tells it its limit (it sets the limit itself, [`from_parent`]).
pub(crate) fn pass(cmd: &mut std::process::Command, bytes: u64) {
    #[cfg(all(target_os = "linux", not(multiproc_portable)))]
    let _ = (cmd, bytes);
    #[cfg(any(not(target_os = "linux"), multiproc_portable))]
    cmd.env(ENV, bytes.to_string());
}

/// In the parent, once a worker has started and before it is sent its
/// setup: on Linux, sets its limit ([`limit_data`]).
///
/// # Errors
///
/// As [`limit_data`].
pub(crate) fn apply(pid: u32, bytes: u64) -> io::Result<()> {
    #[cfg(all(target_os = "linux", not(multiproc_portable)))]
    return limit_data(pid, bytes);
    #[cfg(any(not(target_os = "linux"), multiproc_portable))]
    {
        let _ = (pid, bytes);
        Ok(())
    }
}

/// In a worker, first thing: sets the limit the parent passed, if any,
/// and removes it from the environment (on the portable back end; on
/// Linux the parent sets it).
///
/// # Errors
///
/// If the value is malformed, or what `setrlimit` says.
///
/// # Safety
///
/// No other thread of this process may read or write the environment
/// meanwhile: call it before any can have started.
pub(crate) unsafe fn from_parent() -> io::Result<()> {
    #[cfg(any(not(target_os = "linux"), multiproc_portable))]
    if let Some(value) = std::env::var_os(ENV) {
        // SAFETY: the caller guarantees no other thread uses the
        // environment.
        unsafe { std::env::remove_var(ENV) };
        let bytes: u64 = value.to_str().and_then(|v| v.parse().ok()).ok_or_else(|| {
            io::Error::new(io::ErrorKind::InvalidInput, format!("{ENV} is malformed"))
        })?;
        return limit_self(bytes);
    }
    Ok(())
}

/// Sets this process's limit to `bytes` (see the module docs for what it
/// counts on each platform).
#[cfg(any(not(target_os = "linux"), multiproc_portable))]
fn limit_self(bytes: u64) -> io::Result<()> {
    #[cfg(target_os = "linux")]
    let (resource, base) = (libc::RLIMIT_DATA, 0u64);
    #[cfg(target_os = "freebsd")]
    let (resource, base) = (libc::RLIMIT_AS, address_space()?);
    #[cfg(target_os = "macos")]
    let (resource, base) = (libc::RLIMIT_AS, address_space()?);
    let old = getrlimit(resource)?;
    // rlim_t is i64 on FreeBSD.
    #[allow(clippy::useless_conversion)]
    let max = u64::try_from(old.rlim_max).unwrap_or(u64::MAX);
    let bytes = base.saturating_add(bytes).min(max);
    let bytes = libc::rlim_t::try_from(bytes).unwrap_or(libc::rlim_t::MAX);
    setrlimit(resource, bytes, bytes)
}

#[cfg(any(not(target_os = "linux"), multiproc_portable))]
fn getrlimit(resource: Resource) -> io::Result<libc::rlimit> {
    let mut old = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes the limit into `old`, which lives across
    // the call.
    if unsafe { libc::getrlimit(resource, &mut old) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(old)
}

#[cfg(any(not(target_os = "linux"), multiproc_portable))]
fn setrlimit(resource: Resource, cur: libc::rlim_t, max: libc::rlim_t) -> io::Result<()> {
    let new = libc::rlimit {
        rlim_cur: cur,
        rlim_max: max,
    };
    // SAFETY: setrlimit reads `new`, which lives across the call.
    if unsafe { libc::setrlimit(resource, &new) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The type of a resource id in `getrlimit` (glibc spells it its own way).
#[cfg(all(target_os = "linux", multiproc_portable))]
type Resource = libc::__rlimit_resource_t;
#[cfg(any(target_os = "macos", target_os = "freebsd"))]
type Resource = libc::c_int;

/// Bytes of address space this process has mapped: the virtual size
/// `sysctl` `KERN_PROC_PID` reports (`ki_size`), which is what FreeBSD
/// checks `RLIMIT_AS` against.
#[cfg(target_os = "freebsd")]
fn address_space() -> io::Result<u64> {
    // SAFETY: getpid has no preconditions.
    let info = super::process::kinfo_proc(unsafe { libc::getpid() })?;
    u64::try_from(info.ki_size)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "negative virtual size"))
}

/// Bytes of address space this process has mapped, as the kernel counts
/// it for `RLIMIT_AS`: the lowest soft limit it accepts (it refuses one
/// below what is mapped), found by bisection with the hard limit left as
/// it is. Called while the worker has one thread, so nothing maps memory
/// meanwhile; the soft limit is set again right after.
#[cfg(target_os = "macos")]
fn address_space() -> io::Result<u64> {
    let old = getrlimit(libc::RLIMIT_AS)?;
    let (mut lo, mut hi) = (0u64, old.rlim_cur);
    if setrlimit(libc::RLIMIT_AS, hi, old.rlim_max).is_err() {
        return Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "the current address-space limit is refused",
        ));
    }
    // Invariant: `hi` is accepted, `lo` is not (or is 0).
    while hi - lo > 4096 {
        let mid = lo + (hi - lo) / 2;
        if setrlimit(libc::RLIMIT_AS, mid, old.rlim_max).is_ok() {
            hi = mid;
        } else {
            lo = mid;
        }
    }
    setrlimit(libc::RLIMIT_AS, old.rlim_cur, old.rlim_max)?;
    Ok(hi)
}

/// What [`on_abort`] calls: with the bytes of private data and stack the
/// process has mapped (`0` if that cannot be read), and whether an
/// allocation had just failed.
static NOTE: OnceLock<fn(u64, bool)> = OnceLock::new();
/// The page size, read before any signal can need it (`sysconf` is not
/// async-signal-safe).
static PAGE: OnceLock<u64> = OnceLock::new();

/// Has `note` called when this process gets `SIGABRT`, with the private
/// memory it has mapped and whether `errno` says `ENOMEM`. Rust ends a
/// process whose allocation failed by printing "memory allocation of N
/// bytes failed" and calling `abort`, and a stable program cannot hook in
/// earlier; `errno` still says `ENOMEM` then, unless printing a backtrace
/// (`RUST_BACKTRACE`) changed it. `note` runs in a signal handler: it must
/// be async-signal-safe (atomic stores only). The abort goes on after it,
/// and a `SIGABRT` sent by another process still ends this one.
///
/// # Errors
///
/// What `sigaction` says.
pub(crate) fn on_abort(note: fn(u64, bool)) -> io::Result<()> {
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    let _ = PAGE.set(u64::try_from(page).unwrap_or(4096));
    let _ = NOTE.set(note);
    // SAFETY: a zeroed sigaction is a valid value (empty mask, no flags),
    // filled in below before use.
    let mut action: libc::sigaction = unsafe { std::mem::zeroed() };
    action.sa_sigaction = abort_handler as extern "C" fn(libc::c_int) as libc::sighandler_t;
    // Reset to the default on entry: the handler raises the signal again,
    // and that one ends the process.
    action.sa_flags = libc::SA_RESETHAND;
    // SAFETY: installs a handler that only does async-signal-safe things
    // (see `abort_handler`); the old action is not wanted.
    if unsafe { libc::sigaction(libc::SIGABRT, &action, std::ptr::null_mut()) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

extern "C" fn abort_handler(_signal: libc::c_int) {
    // This thread's errno, which nothing has changed since the signal
    // arrived.
    let errno = crate::sys::errno();
    if let Some(note) = NOTE.get() {
        note(data_in_use().unwrap_or(0), errno == libc::ENOMEM);
    }
    // The disposition is the default again (`SA_RESETHAND`): this one is
    // delivered as the handler returns, so the process ends by `SIGABRT`
    // whoever sent the first.
    // SAFETY: raise is async-signal-safe.
    unsafe { libc::raise(libc::SIGABRT) };
}

/// Bytes of private data and stack this process has mapped (the `data`
/// field of `/proc/self/statm`), read with async-signal-safe calls only:
/// no allocation, no lock. `None` off Linux, where the note then says
/// nothing of the memory in use.
#[cfg(not(target_os = "linux"))]
fn data_in_use() -> Option<u64> {
    None
}

/// Bytes of private data and stack this process has mapped (the `data`
/// field of `/proc/self/statm`), read with async-signal-safe calls only:
/// no allocation, no lock.
#[cfg(target_os = "linux")]
fn data_in_use() -> Option<u64> {
    let mut buf = [0u8; 256];
    // SAFETY: open with a static NUL-terminated path.
    let fd = unsafe {
        libc::open(
            c"/proc/self/statm".as_ptr(),
            libc::O_RDONLY | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        return None;
    }
    // SAFETY: reads at most `buf.len()` bytes into `buf`, then closes the
    // descriptor opened above.
    let n = unsafe {
        let n = libc::read(fd, buf.as_mut_ptr().cast(), buf.len());
        libc::close(fd);
        n
    };
    let text = buf.get(..usize::try_from(n).ok()?)?;
    // size resident shared text lib data dt
    let field = text.split(|&b| b == b' ').nth(5)?;
    let mut pages = 0u64;
    for &b in field {
        if !b.is_ascii_digit() {
            return None;
        }
        pages = pages.checked_mul(10)?.checked_add(u64::from(b - b'0'))?;
    }
    pages.checked_mul(*PAGE.get()?)
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;

    #[test]
    fn data_in_use_grows_with_a_private_mapping() {
        let _ = PAGE.set(4096);
        let before = data_in_use().expect("statm is readable");
        let big: Vec<u8> = Vec::with_capacity(64 << 20);
        let after = data_in_use().expect("statm is readable");
        assert!(after >= before + (60 << 20), "{before} -> {after}");
        drop(big);
    }

    #[test]
    #[cfg(not(multiproc_portable))]
    fn a_child_gets_the_limit_and_no_more() {
        let mut child = std::process::Command::new("sleep")
            .arg("10")
            .spawn()
            .expect("sleep starts");
        limit_data(child.id(), 64 << 20).expect("prlimit on our own child");
        let limits = std::fs::read_to_string(format!("/proc/{}/limits", child.id())).unwrap();
        let line = limits
            .lines()
            .find(|l| l.starts_with("Max data size"))
            .expect("a data size line");
        let words: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(words[3..5], ["67108864", "67108864"], "{line}");
        let _ = child.kill();
        let _ = child.wait();
    }
}
