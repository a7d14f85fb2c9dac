//! The end of a worker process: waiting for its exit (on a pidfd or a
//! kqueue where the kernel has them), reaping it, and saying how it ended.

use std::os::fd::AsRawFd;
use std::os::unix::process::ExitStatusExt;
use std::process::Child;
use std::time::Duration;

use crate::error::ExitReason;

/// Waits for the exit of a child that is on its way out and reaps it.
/// `None` if it is still alive after `limit`.
///
/// It waits on a descriptor readable the moment the child has exited
/// ([`crate::sys::process::exit_watch`]: a pidfd on Linux 5.3, a kqueue
/// on macOS and FreeBSD): polling `waitpid` with sleeps in between reaped a worker
/// 200–360 µs after its exit on the machine of BENCHMARKS.md (a sleep
/// there lasts 50 µs more than asked), a third of what shutting a pool
/// down took. Where there is no such descriptor, it waits for `socket` (the
/// child's control socket, if given) to reach its end, which happens as the
/// child exits, and then polls with a short back-off.
pub(crate) fn wait_exit(
    child: &mut Child,
    socket: Option<std::os::fd::RawFd>,
    limit: Duration,
) -> Option<std::process::ExitStatus> {
    let deadline = std::time::Instant::now() + limit;
    match child.try_wait() {
        Ok(Some(status)) => return Some(status),
        Ok(None) => {}
        Err(_) => return None,
    }
    match crate::sys::process::exit_watch(child) {
        Some(watch) => {
            if !crate::sys::process::wait_readable(watch.as_raw_fd(), limit).unwrap_or(false) {
                // Still running after `limit`, or the wait failed: let the
                // loop below decide without sleeping.
                return child.try_wait().ok().flatten();
            }
        }
        None => {
            if let Some(fd) = socket {
                let _ = crate::sys::process::wait_readable(fd, limit);
            }
        }
    }
    let mut pause = Duration::from_micros(20);
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return Some(status),
            Ok(None) if std::time::Instant::now() < deadline => {
                std::thread::sleep(pause);
                pause = (pause * 2).min(Duration::from_millis(5));
            }
            _ => return None,
        }
    }
}

/// Waits for a child that is exiting and says how it ended.
pub(crate) fn reap(child: &mut Child) -> ExitReason {
    // It closed its socket, so it is on its way out; do not trust it blindly.
    if let Some(status) = wait_exit(child, None, Duration::from_secs(2)) {
        return exit_reason(status);
    }
    let _ = child.kill();
    child.wait().map(exit_reason).unwrap_or(ExitReason::Unknown)
}

pub(crate) fn exit_reason(status: std::process::ExitStatus) -> ExitReason {
    match (status.code(), status.signal()) {
        (Some(code), _) => ExitReason::Code(code),
        (None, Some(sig)) => ExitReason::Signal(sig),
        _ => ExitReason::Unknown,
    }
}
