//! A worker dies with its parent, even when the parent is killed with
//! `SIGKILL` and even while the worker is busy with a task.
//!
//! | platform | how | when |
//! |---|---|---|
//! | Linux | `PR_SET_PDEATHSIG` = `SIGKILL`, set first thing in the worker | the kernel kills the worker as the **thread** that started it (the pool's driver) ends |
//! | macOS, FreeBSD; Linux with `multiproc_portable` | a thread of the worker's own blocks reading a pipe whose write end only the parent holds, and `SIGKILL`s its process at end of file | as the parent **process** ends (every descriptor of it is closed then, by the kernel) |
//!
//! On the portable back end the pipe is created once per parent process,
//! close-on-exec, and a duplicate of its read end travels to each worker
//! in the setup frame, after the progress page ([`SETUP_FDS`]). Its latency
//! is a thread wake-up: the worker is gone within about a millisecond of
//! its parent, as on Linux, however long its task runs. Weaker, stated:
//!
//! * it follows the parent process, not the thread that started the
//!   worker; a worker whose driver thread ends while its process lives is
//!   stopped by its connection instead (closed with the driver: the
//!   worker exits when it next reads, after its current task);
//! * a child the parent forks without exec keeps the write end, and with
//!   it every worker, alive until that child ends too; on macOS, which
//!   has no `pipe2`, so does a child that another thread of the parent
//!   spawns between the pipe's creation and its `FD_CLOEXEC`, once;
//! * before the setup frame arrives the worker only reads its control
//!   socket, which the parent's death ends at once as well.

use std::io;
use std::os::fd::OwnedFd;

/// Descriptors the setup frame carries: the progress page, then on the
/// portable back end the read end of the parent's watch pipe.
#[cfg(all(target_os = "linux", not(multiproc_portable)))]
pub(crate) const SETUP_FDS: usize = 1;
/// Descriptors the setup frame carries: the progress page, then on the
/// portable back end the read end of the parent's watch pipe.
#[cfg(any(not(target_os = "linux"), multiproc_portable))]
pub(crate) const SETUP_FDS: usize = 2;

/// In a worker, first thing: on Linux, asks the kernel to kill this
/// process when the thread that started it ends. Elsewhere nothing yet:
/// [`watch`] starts the watching thread once the setup frame is in.
pub(crate) fn die_with_parent() {
    #[cfg(all(target_os = "linux", not(multiproc_portable)))]
    // SAFETY: prctl has no memory-safety preconditions.
    unsafe {
        libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong);
    }
}

/// In the parent: what the setup frame carries after the progress page
/// ([`SETUP_FDS`] in all).
///
/// # Errors
///
/// If the watch pipe cannot be created or its read end duplicated.
pub(crate) fn setup_fds() -> io::Result<Vec<OwnedFd>> {
    #[cfg(all(target_os = "linux", not(multiproc_portable)))]
    return Ok(Vec::new());
    #[cfg(any(not(target_os = "linux"), multiproc_portable))]
    return Ok(vec![watch_pipe()?.try_clone()?]);
}

/// In a worker: starts watching the parent with what the setup frame
/// carried after the progress page. Nothing on Linux.
pub(crate) fn watch(extra: impl IntoIterator<Item = OwnedFd>) {
    #[cfg(all(target_os = "linux", not(multiproc_portable)))]
    drop(extra.into_iter());
    #[cfg(any(not(target_os = "linux"), multiproc_portable))]
    if let Some(fd) = extra.into_iter().next() {
        watch_pipe_end(fd);
    }
}

/// The read end of this process's watch pipe; the write end stays in
/// this process, never sent anywhere, until it exits.
#[cfg(any(not(target_os = "linux"), multiproc_portable))]
fn watch_pipe() -> io::Result<&'static OwnedFd> {
    use std::os::fd::FromRawFd;
    use std::sync::OnceLock;
    static PIPE: OnceLock<(OwnedFd, OwnedFd)> = OnceLock::new();
    if let Some((read, _)) = PIPE.get() {
        return Ok(read);
    }
    let mut fds = [0 as libc::c_int; 2];
    #[cfg(target_os = "freebsd")]
    // SAFETY: pipe2 writes two descriptors into `fds`.
    let rc = unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) };
    #[cfg(not(target_os = "freebsd"))]
    // SAFETY: pipe writes two descriptors into `fds`.
    let rc = unsafe { libc::pipe(fds.as_mut_ptr()) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: both descriptors were just created and are owned by nobody
    // else.
    let (read, write) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    #[cfg(not(target_os = "freebsd"))]
    {
        use std::os::fd::AsFd;
        super::set_cloexec(read.as_fd())?;
        super::set_cloexec(write.as_fd())?;
    }
    // Another thread may have won the race: its pipe stays, this one
    // closes.
    let _ = PIPE.set((read, write));
    Ok(&PIPE.get().expect("set above").0)
}

/// Starts the thread that kills this process when `fd` (the read end of
/// the parent's watch pipe) reaches end of file. If no thread can be
/// started, the control socket still ends an idle worker.
#[cfg(any(not(target_os = "linux"), multiproc_portable))]
fn watch_pipe_end(fd: OwnedFd) {
    use std::os::fd::AsRawFd;
    let _ = std::thread::Builder::new()
        .name("multiproc-parent".into())
        .stack_size(64 * 1024)
        .spawn(move || {
            let mut byte = 0u8;
            loop {
                // SAFETY: reads at most one byte into `byte`.
                let n = unsafe { libc::read(fd.as_raw_fd(), (&raw mut byte).cast(), 1) };
                // The parent never writes: data is ignored, and so is an
                // interrupted read; end of file, or any other failure,
                // means the write end is closed.
                if n > 0 || (n < 0 && super::errno() == libc::EINTR) {
                    continue;
                }
                break;
            }
            // SAFETY: kill of this very process; SIGKILL, as Linux's
            // parent-death signal is, so it ends the same way everywhere.
            unsafe { libc::kill(libc::getpid(), libc::SIGKILL) };
        });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_setup_carries_the_page_and_the_watch() {
        let extra = setup_fds().unwrap();
        assert_eq!(extra.len() + 1, SETUP_FDS);
        #[cfg(any(not(target_os = "linux"), multiproc_portable))]
        {
            // The read end blocks while this process holds the write end.
            let fd = &extra[0];
            assert!(
                !super::super::process::wait_readable(
                    std::os::fd::AsRawFd::as_raw_fd(fd),
                    std::time::Duration::from_millis(20)
                )
                .unwrap()
            );
        }
    }
}
