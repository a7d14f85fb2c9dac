//! Sleeping until a 32-bit word in shared memory changes, and waking the
//! sleepers: across processes, so always the kernel's shared variant
//! (keyed by the physical page, not by this process's address).
//!
//! | platform | wait | wake |
//! |---|---|---|
//! | Linux (both back ends) | `futex(FUTEX_WAIT)` | `futex(FUTEX_WAKE)` |
//! | macOS 14.4 and later | `os_sync_wait_on_address[_with_timeout]` with `OS_SYNC_WAIT_ON_ADDRESS_SHARED` | `os_sync_wake_by_address_{any,all}` with `OS_SYNC_WAKE_BY_ADDRESS_SHARED` |
//! | older macOS | `__ulock_wait(UL_COMPARE_AND_WAIT_SHARED)` | `__ulock_wake(UL_COMPARE_AND_WAIT_SHARED)` |
//! | FreeBSD | `_umtx_op(UMTX_OP_WAIT_UINT)` | `_umtx_op(UMTX_OP_WAKE)` |
//!
//! macOS's functions are looked up once, at run time (`dlsym`), so one
//! binary runs on every version: the public `os_sync` ones where they
//! exist, else the older `ulock` ones. Should neither be found, a wait
//! sleeps for at most a millisecond and reports a spurious wake-up, which
//! every caller re-checks.
//!
//! The kernel only reads the word, and fails with `EFAULT` on an address
//! that is not mapped, so these functions are safe to call with any
//! pointer; callers pass words inside a live mapping.

use std::time::Duration;

/// Sleeps while `*word == expected`, at most `timeout` (monotonic,
/// relative). Returns `false` only if the timeout expired; `true` on a
/// wake-up, a spurious one included.
#[inline]
pub(crate) fn wait(word: *const u32, expected: u32, timeout: Option<Duration>) -> bool {
    imp::wait(word, expected, timeout)
}

/// Wakes one sleeper on `word`, if any.
#[inline]
pub(crate) fn wake_one(word: *const u32) {
    imp::wake(word, false);
}

/// Wakes every sleeper on `word`.
#[inline]
pub(crate) fn wake_all(word: *const u32) {
    imp::wake(word, true);
}

#[cfg(target_os = "linux")]
mod imp {
    use std::io;
    use std::time::Duration;

    pub(super) fn wait(word: *const u32, expected: u32, timeout: Option<Duration>) -> bool {
        let ts = timeout.map(|d| libc::timespec {
            tv_sec: libc::time_t::try_from(d.as_secs()).unwrap_or(libc::time_t::MAX),
            tv_nsec: libc::c_long::from(d.subsec_nanos() as i32),
        });
        let ts_ptr = ts
            .as_ref()
            .map_or(std::ptr::null(), |t| t as *const libc::timespec);
        // SAFETY: FUTEX_WAIT (shared, not FUTEX_PRIVATE_FLAG: the word lives
        // in a MAP_SHARED mapping used by several processes); the kernel
        // only reads the word. The timeout pointer is null or points to a
        // valid timespec.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_futex,
                word,
                libc::FUTEX_WAIT,
                expected,
                ts_ptr,
                std::ptr::null::<u32>(),
                0u32,
            )
        };
        !(rc < 0 && io::Error::last_os_error().raw_os_error() == Some(libc::ETIMEDOUT))
    }

    pub(super) fn wake(word: *const u32, all: bool) {
        let n: i32 = if all { i32::MAX } else { 1 };
        // SAFETY: FUTEX_WAKE (shared, see `wait`); the kernel does not
        // touch the word.
        unsafe {
            libc::syscall(libc::SYS_futex, word, libc::FUTEX_WAKE, n);
        }
    }
}

#[cfg(target_os = "macos")]
mod imp {
    use std::ffi::{CStr, c_void};
    use std::sync::OnceLock;
    use std::time::Duration;

    type WaitFn = unsafe extern "C" fn(*mut c_void, u64, libc::size_t, u32) -> libc::c_int;
    type WaitTimeoutFn =
        unsafe extern "C" fn(*mut c_void, u64, libc::size_t, u32, u32, u64) -> libc::c_int;
    type WakeFn = unsafe extern "C" fn(*mut c_void, libc::size_t, u32) -> libc::c_int;
    type UlockWaitFn = unsafe extern "C" fn(u32, *mut c_void, u64, u32) -> libc::c_int;
    type UlockWakeFn = unsafe extern "C" fn(u32, *mut c_void, u64) -> libc::c_int;

    /// `UL_COMPARE_AND_WAIT_SHARED` of XNU's `<sys/ulock.h>`.
    const UL_COMPARE_AND_WAIT_SHARED: u32 = 3;
    /// `ULF_WAKE_ALL` of XNU's `<sys/ulock.h>`.
    const ULF_WAKE_ALL: u32 = 0x100;

    enum Calls {
        /// macOS 14.4 and later.
        OsSync {
            wait: WaitFn,
            wait_timeout: WaitTimeoutFn,
            wake_any: WakeFn,
            wake_all: WakeFn,
        },
        /// Earlier macOS.
        Ulock {
            wait: UlockWaitFn,
            wake: UlockWakeFn,
        },
        /// Neither found: sleep briefly and let the caller re-check.
        Poll,
    }

    fn lookup(name: &CStr) -> Option<*mut c_void> {
        // SAFETY: dlsym with the default search order and a NUL-terminated
        // name; it returns null for a symbol it does not find.
        let p = unsafe { libc::dlsym(libc::RTLD_DEFAULT, name.as_ptr()) };
        (!p.is_null()).then_some(p)
    }

    fn calls() -> &'static Calls {
        static CALLS: OnceLock<Calls> = OnceLock::new();
        CALLS.get_or_init(|| {
            let os_sync = (|| {
                Some((
                    lookup(c"os_sync_wait_on_address")?,
                    lookup(c"os_sync_wait_on_address_with_timeout")?,
                    lookup(c"os_sync_wake_by_address_any")?,
                    lookup(c"os_sync_wake_by_address_all")?,
                ))
            })();
            if let Some((wait, wait_timeout, wake_any, wake_all)) = os_sync {
                // SAFETY: the symbols are libSystem's functions of these
                // names, whose C signatures the types spell out.
                return unsafe {
                    Calls::OsSync {
                        wait: std::mem::transmute::<*mut c_void, WaitFn>(wait),
                        wait_timeout: std::mem::transmute::<*mut c_void, WaitTimeoutFn>(
                            wait_timeout,
                        ),
                        wake_any: std::mem::transmute::<*mut c_void, WakeFn>(wake_any),
                        wake_all: std::mem::transmute::<*mut c_void, WakeFn>(wake_all),
                    }
                };
            }
            match (lookup(c"__ulock_wait"), lookup(c"__ulock_wake")) {
                // SAFETY: as above, for the ulock functions.
                (Some(wait), Some(wake)) => unsafe {
                    Calls::Ulock {
                        wait: std::mem::transmute::<*mut c_void, UlockWaitFn>(wait),
                        wake: std::mem::transmute::<*mut c_void, UlockWakeFn>(wake),
                    }
                },
                _ => Calls::Poll,
            }
        })
    }

    pub(super) fn wait(word: *const u32, expected: u32, timeout: Option<Duration>) -> bool {
        let addr = word.cast_mut().cast::<c_void>();
        let timed_out = || crate::sys::errno() == libc::ETIMEDOUT;
        match calls() {
            Calls::OsSync {
                wait, wait_timeout, ..
            } => {
                let rc = match timeout {
                    // SAFETY: waits on a 4-byte word (the kernel only reads
                    // it), shared across processes.
                    None => unsafe {
                        wait(
                            addr,
                            u64::from(expected),
                            4,
                            libc::OS_SYNC_WAIT_ON_ADDRESS_SHARED,
                        )
                    },
                    Some(d) => {
                        let ns = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX).max(1);
                        // SAFETY: as above, with a relative timeout in
                        // nanoseconds of the monotonic clock.
                        unsafe {
                            wait_timeout(
                                addr,
                                u64::from(expected),
                                4,
                                libc::OS_SYNC_WAIT_ON_ADDRESS_SHARED,
                                libc::OS_CLOCK_MACH_ABSOLUTE_TIME,
                                ns,
                            )
                        }
                    }
                };
                !(rc < 0 && timed_out())
            }
            Calls::Ulock { wait, .. } => {
                // Microseconds, 0 meaning no limit: a timeout is at least
                // 1 µs, and one past u32::MAX µs (71 minutes) ends there as
                // a spurious wake-up.
                let (us, capped) = match timeout {
                    None => (0, false),
                    Some(d) => {
                        let us = d.as_micros().max(1);
                        (
                            u32::try_from(us).unwrap_or(u32::MAX),
                            us > u128::from(u32::MAX),
                        )
                    }
                };
                // SAFETY: waits on a 4-byte word (the kernel only reads it),
                // shared across processes.
                let rc = unsafe { wait(UL_COMPARE_AND_WAIT_SHARED, addr, u64::from(expected), us) };
                !(rc < 0 && timed_out() && !capped)
            }
            Calls::Poll => {
                let nap = Duration::from_millis(1);
                match timeout {
                    Some(d) if d <= nap => {
                        std::thread::sleep(d);
                        false
                    }
                    _ => {
                        std::thread::sleep(nap);
                        true
                    }
                }
            }
        }
    }

    pub(super) fn wake(word: *const u32, all: bool) {
        let addr = word.cast_mut().cast::<c_void>();
        match calls() {
            Calls::OsSync {
                wake_any, wake_all, ..
            } => {
                let f = if all { wake_all } else { wake_any };
                // SAFETY: wakes sleepers on a 4-byte shared word; the
                // kernel does not touch it. ENOENT (nobody waits) is fine.
                unsafe { f(addr, 4, libc::OS_SYNC_WAKE_BY_ADDRESS_SHARED) };
            }
            Calls::Ulock { wake, .. } => {
                let op = UL_COMPARE_AND_WAIT_SHARED | if all { ULF_WAKE_ALL } else { 0 };
                // SAFETY: as above.
                unsafe { wake(op, addr, 0) };
            }
            Calls::Poll => {}
        }
    }
}

#[cfg(target_os = "freebsd")]
mod imp {
    use std::ffi::c_void;
    use std::time::Duration;

    pub(super) fn wait(word: *const u32, expected: u32, timeout: Option<Duration>) -> bool {
        let mut time = timeout.map(|d| libc::_umtx_time {
            _timeout: libc::timespec {
                tv_sec: libc::time_t::try_from(d.as_secs()).unwrap_or(libc::time_t::MAX),
                tv_nsec: libc::c_long::from(d.subsec_nanos() as i32),
            },
            // Relative (no UMTX_ABSTIME), on the monotonic clock.
            _flags: 0,
            _clockid: libc::CLOCK_MONOTONIC as u32,
        });
        let (size, time_ptr) = match time.as_mut() {
            Some(t) => (
                std::mem::size_of::<libc::_umtx_time>() as *mut c_void,
                (t as *mut libc::_umtx_time).cast::<c_void>(),
            ),
            None => (std::ptr::null_mut(), std::ptr::null_mut()),
        };
        // SAFETY: UMTX_OP_WAIT_UINT (the shared variant, not _PRIVATE: the
        // word lives in a MAP_SHARED mapping used by several processes);
        // the kernel only reads the word. The timeout is null or a valid
        // _umtx_time whose size travels in `uaddr`, as the call expects.
        let rc = unsafe {
            libc::_umtx_op(
                word.cast_mut().cast(),
                libc::UMTX_OP_WAIT_UINT,
                libc::c_ulong::from(expected),
                size,
                time_ptr,
            )
        };
        !(rc < 0 && crate::sys::errno() == libc::ETIMEDOUT)
    }

    pub(super) fn wake(word: *const u32, all: bool) {
        let n: libc::c_ulong = if all { i32::MAX as libc::c_ulong } else { 1 };
        // SAFETY: UMTX_OP_WAKE (shared, see `wait`); the kernel does not
        // touch the word.
        unsafe {
            libc::_umtx_op(
                word.cast_mut().cast(),
                libc::UMTX_OP_WAKE,
                n,
                std::ptr::null_mut(),
                std::ptr::null_mut(),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::time::Instant;

    #[test]
    fn a_wait_on_a_changed_word_returns_at_once_and_a_timeout_expires() {
        let word = AtomicU32::new(1);
        let t = Instant::now();
        assert!(wait(word.as_ptr(), 0, Some(Duration::from_secs(5))));
        assert!(t.elapsed() < Duration::from_secs(1));
        let t = Instant::now();
        assert!(!wait(word.as_ptr(), 1, Some(Duration::from_millis(20))));
        assert!(t.elapsed() >= Duration::from_millis(15));
    }

    #[test]
    fn a_wake_ends_a_wait() {
        let word = Arc::new(AtomicU32::new(0));
        let w = word.clone();
        let waiter = std::thread::spawn(move || {
            while w.load(Ordering::Acquire) == 0 {
                wait(w.as_ptr(), 0, Some(Duration::from_secs(10)));
            }
        });
        std::thread::sleep(Duration::from_millis(20));
        word.store(1, Ordering::Release);
        wake_all(word.as_ptr());
        waiter.join().unwrap();
        wake_one(word.as_ptr());
    }
}
