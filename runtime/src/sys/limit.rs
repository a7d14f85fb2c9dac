//! A worker process's hard memory limit, and the note its process leaves
//! when an allocation fails: OS calls in one place.
//!
//! The limit is `RLIMIT_DATA`, which the kernel checks on every mapping a
//! process makes (Linux 4.7 and later): it caps the private writable memory
//! the process has mapped (heap, anonymous `mmap`, thread stacks), so an
//! allocation past it fails at once, before any of it is touched. Shared
//! mappings (a pool's arenas and progress page, `SharedArray`,
//! `SharedBytes`) and reservations without write access do not count.

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
    // SAFETY: reads this thread's errno, which nothing has changed since
    // the signal arrived.
    let errno = unsafe { *libc::__errno_location() };
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
/// no allocation, no lock.
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

#[cfg(test)]
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
