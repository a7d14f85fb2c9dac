//! OS calls: passing descriptors over a socket, waiting for one to be
//! readable, a child's exit and resident memory, shared-memory objects,
//! waiting on a shared word, lock owners, dying with the parent, and a
//! worker's hard memory limit.
//!
//! # Back ends
//!
//! Two back ends sit behind the same functions:
//!
//! * **Linux** (the default on Linux): `memfd` with seals, `futex`,
//!   `gettid`/`tgkill`, pidfds, `PR_SET_PDEATHSIG`, `/proc/self/exe`,
//!   `/proc/<pid>/statm`, `MSG_CMSG_CLOEXEC`, and `prlimit` from the parent.
//! * **Portable** (macOS, FreeBSD; on Linux with
//!   `RUSTFLAGS="--cfg multiproc_portable"`, which runs every piece of it
//!   that Linux can run, so that its logic is tested there):
//!
//! | piece | macOS | FreeBSD | Linux with `multiproc_portable` |
//! |---|---|---|---|
//! | shared memory ([`shmfd`]) | `shm_open` (random name, unlinked at once) | `memfd_create` with seals (FreeBSD 13) | `shm_open`, no seals |
//! | waiting on a word ([`futex`]) | `os_sync_wait_on_address` (macOS 14.4, found at run time), else `__ulock_wait` | `_umtx_op` `UMTX_OP_WAIT_UINT` | `futex` |
//! | lock owner ([`thread`]) | `pthread_threadid_np`; liveness by pid | `thr_self`, `thr_kill2` | `gettid`, `tgkill` |
//! | a child's exit ([`process`]) | `kqueue` `EVFILT_PROC` | `kqueue` `EVFILT_PROC` | the control socket's end |
//! | dying with the parent ([`parent`]) | a watching thread | a watching thread | a watching thread |
//! | this executable | `current_exe` | `current_exe` | `current_exe` |
//! | resident memory | `proc_pidinfo` | `sysctl` `KERN_PROC_PID` | `/proc/<pid>/statm` |
//! | received descriptors | `fcntl(FD_CLOEXEC)` after `recvmsg` | `MSG_CMSG_CLOEXEC` | `fcntl(FD_CLOEXEC)` after `recvmsg` |
//! | memory limit ([`limit`]) | `RLIMIT_AS` set by the worker: growth of its address space | `RLIMIT_AS` set by the worker: growth of its address space | `RLIMIT_DATA` set by the worker |
//!
//! Each module says, per platform, what protects each invariant and what
//! is weaker than on Linux.

pub(crate) mod fdpass;
pub(crate) mod futex;
pub(crate) mod limit;
pub(crate) mod parent;
pub(crate) mod process;
pub(crate) mod shmfd;
pub(crate) mod thread;

/// This thread's `errno`. Async-signal-safe.
pub(crate) fn errno() -> libc::c_int {
    // SAFETY: reads this thread's errno through the pointer libc returns
    // for it, which is valid for the thread's lifetime.
    unsafe {
        #[cfg(target_os = "linux")]
        let at = libc::__errno_location();
        #[cfg(any(target_os = "macos", target_os = "freebsd"))]
        let at = libc::__error();
        *at
    }
}

/// Sets close-on-exec on `fd`: for descriptors that come from a call that
/// cannot set it atomically on this platform. A `fork` by another thread
/// between that call and this one leaks the descriptor into the child;
/// `spawn` re-executes (never forks a running process), so only other code
/// of the program can do that.
#[cfg(any(not(target_os = "linux"), multiproc_portable))]
pub(crate) fn set_cloexec(fd: std::os::fd::BorrowedFd<'_>) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    // SAFETY: fcntl on a descriptor the caller holds.
    if unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETFD, libc::FD_CLOEXEC) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// A connected pair of Unix stream sockets, both close-on-exec. On macOS
/// both also have `SO_NOSIGPIPE`, which it has instead of `MSG_NOSIGNAL`:
/// a write to a socket whose peer is gone fails with `EPIPE` rather than
/// raise `SIGPIPE`, whatever the program does with that signal.
///
/// # Errors
///
/// What `socketpair` (or `setsockopt`) says.
pub(crate) fn socket_pair() -> std::io::Result<(
    std::os::unix::net::UnixStream,
    std::os::unix::net::UnixStream,
)> {
    let (a, b) = std::os::unix::net::UnixStream::pair()?;
    no_sigpipe(&a)?;
    no_sigpipe(&b)?;
    Ok((a, b))
}

/// Sets `SO_NOSIGPIPE` on `socket` where the system has it instead of
/// `MSG_NOSIGNAL` (macOS); nothing elsewhere, where every send passes
/// [`fdpass::NO_SIGPIPE`].
///
/// # Errors
///
/// What `setsockopt` says.
pub(crate) fn no_sigpipe(socket: &impl std::os::fd::AsFd) -> std::io::Result<()> {
    #[cfg(target_os = "macos")]
    {
        use std::os::fd::AsRawFd;
        let on: libc::c_int = 1;
        // SAFETY: setsockopt reads one c_int that lives across the call.
        let rc = unsafe {
            libc::setsockopt(
                socket.as_fd().as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_NOSIGPIPE,
                (&raw const on).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if rc != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    #[cfg(not(target_os = "macos"))]
    let _ = socket;
    Ok(())
}
