//! Who holds a lock, and whether it is still alive: the owner ids a
//! process-shared mutex records, and the probes that find a dead owner.
//!
//! | platform | this thread's id | is that thread alive? | is that process alive? |
//! |---|---|---|---|
//! | Linux (both back ends) | `gettid` | `tgkill(pid, tid, 0)`, and a leader that exited is a zombie in `/proc/<pid>/stat` | `kill(pid, 0)`, and not a zombie with no other thread (`/proc/<pid>/stat`) |
//! | FreeBSD | `thr_self` | `thr_kill2(pid, tid, 0)` | `kill(pid, 0)`, and not a zombie (`sysctl` `KERN_PROC_PID`) |
//! | macOS | a number from a per-process counter | **the process's** liveness: macOS cannot probe another process's thread | `kill(pid, 0)`, and not a zombie (`proc_pidinfo`) |
//!
//! Weaker on macOS, stated: a thread that ends while holding a lock, in a
//! process that lives on (a guard leaked with `mem::forget`, then the
//! thread returns), is not noticed; untimed lockers wait for that process
//! to end, timed ones time out. A process that dies is noticed, as
//! everywhere. The thread field of an owner word there only tells this
//! process's live threads apart, which a counter does exactly (a 64-bit
//! `pthread_threadid_np` folded into the word's 30 bits could not); it
//! repeats after 2^30 threads started in one process.
//!
//! Thread ids fit the word's 30 bits on Linux (`PID_MAX_LIMIT` is 2^22)
//! and on FreeBSD (ids run from `PID_MAX + 2` up by at most `maxthread`).

use std::io;

/// Bits of a thread id in an owner word.
const TID_MASK: u64 = 0x3fff_ffff;

/// This process's pid and this thread's id (non-zero, at most 30 bits,
/// unique among the live threads of this process), the same for every
/// call on one thread. A system call each time: callers cache it per
/// thread.
pub(crate) fn current() -> (u32, u32) {
    // SAFETY: getpid has no preconditions.
    let pid = unsafe { libc::getpid() } as u32;
    (pid, imp::tid())
}

/// `true` if thread `tid` of process `pid` exists and has not exited
/// (macOS: if process `pid` is alive). `false` for ids that name no
/// possible thread.
pub(crate) fn thread_alive(pid: u64, tid: u64) -> bool {
    let (Ok(pid), Ok(tid)) = (libc::pid_t::try_from(pid), libc::pid_t::try_from(tid)) else {
        return false;
    };
    if pid <= 0 || tid <= 0 {
        return false;
    }
    imp::thread_alive(pid, tid)
}

/// `true` if process `pid` exists and has a thread that has not exited.
/// `false` for values that name no possible process.
pub(crate) fn process_alive(pid: u64) -> bool {
    let Ok(pid) = libc::pid_t::try_from(pid) else {
        return false;
    };
    if pid <= 0 {
        return false;
    }
    // SAFETY: signal 0 only checks that the process exists.
    let rc = unsafe { libc::kill(pid, 0) };
    if rc != 0 && io::Error::last_os_error().raw_os_error() != Some(libc::EPERM) {
        return false;
    }
    imp::process_not_dead(pid)
}

#[cfg(target_os = "linux")]
mod imp {
    use std::io;

    pub(super) fn tid() -> u32 {
        // SAFETY: gettid has no preconditions.
        let tid = unsafe { libc::syscall(libc::SYS_gettid) };
        (tid as u64 & super::TID_MASK) as u32
    }

    pub(super) fn thread_alive(pid: libc::pid_t, tid: libc::pid_t) -> bool {
        // SAFETY: signal 0 only checks that the thread exists in that
        // thread group; nothing is delivered.
        let rc = unsafe { libc::syscall(libc::SYS_tgkill, pid, tid, 0) };
        if rc != 0 && io::Error::last_os_error().raw_os_error() != Some(libc::EPERM) {
            return false;
        }
        // A thread other than the leader is gone as soon as it exits; a
        // leader that exited stays, as a zombie, until its whole process
        // is reaped.
        tid != pid || !task_stat(pid).is_some_and(|(zombie, _)| zombie)
    }

    /// A process not yet reaped is a zombie leader with no other thread;
    /// a zombie leader with other threads is a live process whose main
    /// thread exited.
    pub(super) fn process_not_dead(pid: libc::pid_t) -> bool {
        !task_stat(pid).is_some_and(|(zombie, threads)| zombie && threads <= 1)
    }

    /// From `/proc/<pid>/stat`: whether the task is a zombie (or dead), and
    /// the number of threads of its process. `None` if it cannot be read
    /// (no `/proc`, or the process is gone): callers then go by the signal
    /// probe.
    pub(super) fn task_stat(pid: libc::pid_t) -> Option<(bool, u64)> {
        use std::io::Read;
        let mut buf = [0u8; 1024];
        let mut f = std::fs::File::open(format!("/proc/{pid}/stat")).ok()?;
        let n = f.read(&mut buf).ok()?;
        // `pid (comm) state ppid ...`: the fields follow the last ')' (comm
        // may itself hold parentheses); the thread count is the 18th of
        // them.
        let stat = buf.get(..n)?;
        let close = stat.iter().rposition(|&b| b == b')')?;
        let mut fields = stat
            .get(close + 1..)?
            .split(|&b| b == b' ')
            .filter(|f| !f.is_empty());
        let zombie = matches!(fields.next()?, [b'Z' | b'X' | b'x']);
        let threads = std::str::from_utf8(fields.nth(16)?).ok()?.parse().ok()?;
        Some((zombie, threads))
    }
}

#[cfg(target_os = "freebsd")]
mod imp {
    pub(super) fn tid() -> u32 {
        let mut tid: libc::c_long = 0;
        // SAFETY: thr_self writes this thread's id into `tid`.
        unsafe { libc::thr_self(&mut tid) };
        (tid as u64 & super::TID_MASK) as u32
    }

    pub(super) fn thread_alive(pid: libc::pid_t, tid: libc::pid_t) -> bool {
        // SAFETY: signal 0 only checks that the thread exists in that
        // process; nothing is delivered.
        let rc = unsafe { libc::thr_kill2(pid, libc::c_long::from(tid), 0) };
        rc == 0 || crate::sys::errno() == libc::EPERM
    }

    pub(super) fn process_not_dead(pid: libc::pid_t) -> bool {
        // Unreadable (or gone): go by the signal probe.
        !matches!(crate::sys::process::kinfo_proc(pid), Ok(info) if info.ki_stat == libc::SZOMB)
    }
}

#[cfg(target_os = "macos")]
mod imp {
    use std::cell::Cell;
    use std::sync::atomic::{AtomicU32, Ordering};

    pub(super) fn tid() -> u32 {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        thread_local! {
            static TID: Cell<u32> = const { Cell::new(0) };
        }
        TID.with(|t| {
            if t.get() == 0 {
                t.set((NEXT.fetch_add(1, Ordering::Relaxed) % super::TID_MASK as u32) + 1);
            }
            t.get()
        })
    }

    pub(super) fn thread_alive(pid: libc::pid_t, _tid: libc::pid_t) -> bool {
        super::process_alive(pid as u64)
    }

    pub(super) fn process_not_dead(pid: libc::pid_t) -> bool {
        // SAFETY: an all-zero proc_bsdshortinfo is valid (integers and
        // arrays); proc_pidinfo fills it in.
        let mut info: libc::proc_bsdshortinfo = unsafe { std::mem::zeroed() };
        let size = std::mem::size_of::<libc::proc_bsdshortinfo>() as libc::c_int;
        // SAFETY: proc_pidinfo writes at most `size` bytes into `info`,
        // which lives across the call.
        let n = unsafe {
            libc::proc_pidinfo(
                pid,
                libc::PROC_PIDT_SHORTBSDINFO,
                0,
                (&raw mut info).cast(),
                size,
            )
        };
        // Unreadable (or gone): go by the signal probe.
        n != size || info.pbsi_status != libc::SZOMB
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_thread_and_process_are_alive_and_impossible_ids_are_not() {
        let (pid, tid) = current();
        assert!(tid != 0 && u64::from(tid) <= TID_MASK);
        assert!(thread_alive(u64::from(pid), u64::from(tid)));
        assert!(process_alive(u64::from(pid)));
        assert!(!process_alive(0));
        assert!(!process_alive(u64::MAX));
        assert!(!thread_alive(0, 1));
        let other = std::thread::spawn(current).join().unwrap();
        assert_eq!(other.0, pid);
        assert_ne!(other.1, tid);
        assert_eq!(current(), (pid, tid));
    }

    #[test]
    fn a_zombie_is_dead() {
        // SAFETY: the child only calls _exit, which is async-signal-safe.
        let child = unsafe { libc::fork() };
        if child == 0 {
            // SAFETY: ends the forked child at once.
            unsafe { libc::_exit(0) };
        }
        assert!(child > 0);
        // Not reaped yet: a zombie until waitpid below.
        std::thread::sleep(std::time::Duration::from_millis(50));
        assert!(!process_alive(child as u64));
        assert!(!thread_alive(child as u64, child as u64));
        #[cfg(target_os = "linux")]
        {
            assert_eq!(imp::task_stat(child), Some((true, 1)));
            let me = std::process::id() as libc::pid_t;
            assert!(matches!(imp::task_stat(me), Some((false, n)) if n >= 1));
        }
        // SAFETY: reaps the child forked above.
        unsafe { libc::waitpid(child, std::ptr::null_mut(), 0) };
    }
}
