//! Process-shared building blocks: [`RawMutex`] (a robust pthread mutex) and
//! [`RawCondvar`] (a futex), placed at an offset of a [`Segment`].
//!
//! The public `Lock`, `Event`, `Semaphore`, `Barrier` and `Value` are built
//! on these, and so can any other cross-process structure (a ring buffer in
//! a segment): create the segment, [`RawMutex::init`] /
//! [`RawCondvar::init`] the regions in the creating process, send the
//! segment, and [`RawMutex::open`] / [`RawCondvar::open`] them at the same
//! offsets on the other side.
//!
//! # Layout
//!
//! A `RawMutex` takes [`RawMutex::SIZE`] (64) bytes at an offset that is a
//! multiple of 8 (64 keeps it on a cache line of its own):
//!
//! | bytes | content |
//! |---|---|
//! | `0..4` | state word: 0 never initialised, 1 initialising, 2 ready |
//! | `8..48` | `pthread_mutex_t` (`PTHREAD_PROCESS_SHARED`, `PTHREAD_MUTEX_ROBUST`, `PTHREAD_MUTEX_ERRORCHECK`) |
//!
//! A `RawCondvar` takes [`RawCondvar::SIZE`] (64) bytes at a multiple of 4:
//! bytes `0..4` are a sequence number used as the futex word; the rest is
//! padding. A zeroed region is a valid condvar.
//!
//! # Why a robust pthread mutex and a futex condvar
//!
//! Only the kernel can tell that the holder of a lock died: glibc registers
//! a *robust list* for every thread, and when a thread or process dies the
//! kernel marks each robust mutex it held, so the next locker gets
//! `EOWNERDEAD` instead of waiting forever. That machinery belongs to glibc,
//! so the mutex is a pthread one.
//!
//! The condvar is a bare futex (a sequence number bumped by every notify)
//! rather than a `pthread_cond_t`: glibc's condvar keeps waiter groups in
//! the shared memory, and a waiter that dies in the middle leaves them
//! inconsistent, so a later signal can be swallowed by the dead waiter. With
//! a futex the kernel keeps the list of waiters and a dead waiter simply is
//! not on it. Futex timeouts are relative and measured on
//! `CLOCK_MONOTONIC`, so a change of the wall clock does not affect them.
//! (`pthread_mutex_timedlock`, used by [`RawMutex::lock_timeout`], takes a
//! `CLOCK_REALTIME` deadline; it is computed just before the call.)

use std::cell::Cell;
use std::fmt;
use std::io;
use std::marker::PhantomData;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use super::segment::Segment;

const UNINIT: u32 = 0;
const INITIALISING: u32 = 1;
const READY: u32 = 2;

/// Offset of the `pthread_mutex_t` inside a `RawMutex` region.
const PTHREAD_AT: usize = 8;

const _: () = assert!(PTHREAD_AT + std::mem::size_of::<libc::pthread_mutex_t>() <= RawMutex::SIZE);
const _: () = assert!(std::mem::align_of::<libc::pthread_mutex_t>() <= 8);

/// A robust, process-shared mutex living in a [`Segment`].
///
/// Locking returns [`OwnerDied`] when the previous holder died while
/// holding it: the mutex has then already been made consistent again
/// (`pthread_mutex_consistent`), and the error carries the guard, so the
/// caller can repair the protected data ([`OwnerDied::into_guard`]) or just
/// drop the error, which unlocks. Either way later lockers proceed.
///
/// Locking twice from one thread panics instead of deadlocking
/// (`PTHREAD_MUTEX_ERRORCHECK`).
///
/// A mapping in which this process holds a mutex is never unmapped (it is
/// leaked if a guard is forgotten): the thread's robust list runs through
/// the mutex's memory.
#[derive(Clone)]
pub(crate) struct RawMutex {
    seg: Segment,
    offset: usize,
}

impl fmt::Debug for RawMutex {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RawMutex")
            .field("offset", &self.offset)
            .finish_non_exhaustive()
    }
}

fn check_errno(what: &str, rc: libc::c_int) -> io::Result<()> {
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::other(format!(
            "{what} failed: {}",
            io::Error::from_raw_os_error(rc)
        )))
    }
}

impl RawMutex {
    /// Bytes a mutex takes in a segment.
    pub(crate) const SIZE: usize = 64;

    /// Initialises a mutex at `offset` of `seg` (a fresh, zeroed region) and
    /// returns a handle to it. Call this once, in the process that created
    /// the segment, before the segment is shared.
    ///
    /// # Errors
    ///
    /// If the region was already initialised, or pthread refuses.
    ///
    /// # Panics
    ///
    /// If the region is outside the segment or `offset` is not a multiple
    /// of 8.
    pub(crate) fn init(seg: &Segment, offset: usize) -> io::Result<RawMutex> {
        let state = RawMutex::state_word(seg, offset);
        if state
            .compare_exchange(UNINIT, INITIALISING, Ordering::Acquire, Ordering::Relaxed)
            .is_err()
        {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                "a mutex was already initialised at this offset",
            ));
        }
        let m = RawMutex {
            seg: seg.clone(),
            offset,
        };
        // SAFETY: the attribute object is initialised by
        // pthread_mutexattr_init before use and destroyed after; the mutex
        // pointer is in bounds and aligned (checked by `state_word`), and no
        // other process can use the region yet (state is INITIALISING).
        unsafe {
            let mut attr = std::mem::MaybeUninit::<libc::pthread_mutexattr_t>::uninit();
            check_errno(
                "pthread_mutexattr_init",
                libc::pthread_mutexattr_init(attr.as_mut_ptr()),
            )?;
            let attr_ptr = attr.as_mut_ptr();
            let set = check_errno(
                "pthread_mutexattr_setpshared",
                libc::pthread_mutexattr_setpshared(attr_ptr, libc::PTHREAD_PROCESS_SHARED),
            )
            .and_then(|()| {
                check_errno(
                    "pthread_mutexattr_setrobust",
                    libc::pthread_mutexattr_setrobust(attr_ptr, libc::PTHREAD_MUTEX_ROBUST),
                )
            })
            .and_then(|()| {
                check_errno(
                    "pthread_mutexattr_settype",
                    libc::pthread_mutexattr_settype(attr_ptr, libc::PTHREAD_MUTEX_ERRORCHECK),
                )
            })
            .and_then(|()| {
                check_errno(
                    "pthread_mutex_init",
                    libc::pthread_mutex_init(m.raw(), attr_ptr),
                )
            });
            libc::pthread_mutexattr_destroy(attr_ptr);
            set?;
        }
        state.store(READY, Ordering::Release);
        Ok(m)
    }

    /// A handle to the mutex that [`init`](RawMutex::init) placed at
    /// `offset` of `seg` (in this or another process).
    ///
    /// # Errors
    ///
    /// If no mutex was initialised there.
    ///
    /// # Panics
    ///
    /// As [`init`](RawMutex::init).
    pub(crate) fn open(seg: &Segment, offset: usize) -> io::Result<RawMutex> {
        if RawMutex::state_word(seg, offset).load(Ordering::Acquire) != READY {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "no initialised mutex at this offset of the segment",
            ));
        }
        Ok(RawMutex {
            seg: seg.clone(),
            offset,
        })
    }

    fn state_word(seg: &Segment, offset: usize) -> &AtomicU32 {
        assert!(
            offset
                .checked_add(RawMutex::SIZE)
                .is_some_and(|end| end <= seg.len()),
            "a mutex at {offset} does not fit in a segment of {} bytes",
            seg.len()
        );
        assert!(
            offset % 8 == 0,
            "a mutex needs an offset that is a multiple of 8"
        );
        seg.atomic_u32(offset)
    }

    fn raw(&self) -> *mut libc::pthread_mutex_t {
        // SAFETY: `open`/`init` checked that the region is in bounds and
        // 8-aligned (the mapping is page-aligned), and PTHREAD_AT + the
        // mutex fits in SIZE (const assertion above).
        unsafe {
            self.seg
                .as_ptr()
                .add(self.offset + PTHREAD_AT)
                .cast::<libc::pthread_mutex_t>()
        }
    }

    /// The segment the mutex lives in.
    pub(crate) fn segment(&self) -> &Segment {
        &self.seg
    }

    /// Turns a pthread return code into a guard, `None` (busy / timed
    /// out), or owner-died.
    fn outcome(&self, rc: libc::c_int, op: &str) -> Result<Option<RawGuard<'_>>, OwnerDied<'_>> {
        match rc {
            0 => Ok(Some(RawGuard::new(self, false))),
            libc::EBUSY | libc::ETIMEDOUT => Ok(None),
            libc::EOWNERDEAD => {
                self.make_consistent();
                Err(OwnerDied {
                    guard: RawGuard::new(self, true),
                })
            }
            libc::EDEADLK => panic!("a multiproc lock was locked twice by the same thread"),
            _ => panic!(
                "{op} on a process-shared mutex failed: {}",
                io::Error::from_raw_os_error(rc)
            ),
        }
    }

    fn make_consistent(&self) {
        // SAFETY: we hold the mutex (EOWNERDEAD hands it over) and it is an
        // initialised robust mutex.
        let rc = unsafe { libc::pthread_mutex_consistent(self.raw()) };
        assert_eq!(rc, 0, "pthread_mutex_consistent failed");
    }

    /// `pthread_mutex_lock`, retried on `EINTR`/`EAGAIN`.
    fn raw_lock(&self) -> libc::c_int {
        loop {
            // SAFETY: an initialised process-shared mutex in a live mapping.
            let rc = unsafe { libc::pthread_mutex_lock(self.raw()) };
            if rc != libc::EINTR && rc != libc::EAGAIN {
                return rc;
            }
        }
    }

    /// Locks, blocking until the mutex is free.
    ///
    /// # Errors
    ///
    /// [`OwnerDied`] (holding the lock) if the previous holder died while
    /// holding it.
    ///
    /// # Panics
    ///
    /// If this thread already holds the mutex.
    pub(crate) fn lock(&self) -> Result<RawGuard<'_>, OwnerDied<'_>> {
        self.outcome(self.raw_lock(), "pthread_mutex_lock")
            .map(|g| g.expect("a blocking lock returns a guard"))
    }

    /// Locks if the mutex is free, else returns `Ok(None)` at once.
    ///
    /// # Errors
    ///
    /// As [`lock`](RawMutex::lock).
    pub(crate) fn try_lock(&self) -> Result<Option<RawGuard<'_>>, OwnerDied<'_>> {
        // SAFETY: an initialised process-shared mutex in a live mapping.
        let rc = unsafe { libc::pthread_mutex_trylock(self.raw()) };
        if rc == libc::EDEADLK {
            // Held by this very thread: busy, as far as a try is concerned.
            return Ok(None);
        }
        self.outcome(rc, "pthread_mutex_trylock")
    }

    /// Locks, waiting at most `timeout`; `Ok(None)` if it expired.
    ///
    /// # Errors
    ///
    /// As [`lock`](RawMutex::lock).
    ///
    /// # Panics
    ///
    /// As [`lock`](RawMutex::lock).
    pub(crate) fn lock_timeout(
        &self,
        timeout: Duration,
    ) -> Result<Option<RawGuard<'_>>, OwnerDied<'_>> {
        let mut now = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: clock_gettime writes into the timespec we pass.
        unsafe { libc::clock_gettime(libc::CLOCK_REALTIME, &mut now) };
        let nanos = now.tv_nsec as u64 + u64::from(timeout.subsec_nanos());
        let secs = (now.tv_sec as u64)
            .saturating_add(timeout.as_secs())
            .saturating_add(nanos / 1_000_000_000);
        let deadline = libc::timespec {
            tv_sec: libc::time_t::try_from(secs).unwrap_or(libc::time_t::MAX),
            tv_nsec: (nanos % 1_000_000_000) as libc::c_long,
        };
        loop {
            // SAFETY: an initialised process-shared mutex in a live mapping;
            // the deadline is a valid timespec.
            let rc = unsafe { libc::pthread_mutex_timedlock(self.raw(), &deadline) };
            if rc == libc::EINTR || rc == libc::EAGAIN {
                continue;
            }
            return self.outcome(rc, "pthread_mutex_timedlock");
        }
    }

    /// Unlocks after a `RawCondvar` wait (or for good, from the guard).
    fn unlock(&self) {
        // SAFETY: called only by a guard of this mutex, which this thread
        // holds.
        let rc = unsafe { libc::pthread_mutex_unlock(self.raw()) };
        debug_assert_eq!(rc, 0, "pthread_mutex_unlock failed");
    }

    /// Locks again after a `RawCondvar` wait; returns whether the owner had
    /// died (the mutex is consistent again either way).
    fn relock(&self) -> bool {
        match self.raw_lock() {
            0 => false,
            libc::EOWNERDEAD => {
                self.make_consistent();
                true
            }
            rc => panic!(
                "pthread_mutex_lock on a process-shared mutex failed: {}",
                io::Error::from_raw_os_error(rc)
            ),
        }
    }
}

/// Holds a [`RawMutex`]; unlocks on drop. Not `Send`: a pthread mutex must
/// be unlocked by the thread that locked it.
pub(crate) struct RawGuard<'a> {
    mutex: &'a RawMutex,
    recovered: Cell<bool>,
    _not_send: PhantomData<*const ()>,
}

impl<'a> RawGuard<'a> {
    fn new(mutex: &'a RawMutex, recovered: bool) -> RawGuard<'a> {
        mutex.seg.locked();
        RawGuard {
            mutex,
            recovered: Cell::new(recovered),
            _not_send: PhantomData,
        }
    }

    /// The locked mutex.
    pub(crate) fn mutex(&self) -> &'a RawMutex {
        self.mutex
    }

    /// `true` if a previous holder died while holding the mutex, either
    /// before this guard took it or while this guard waited on a
    /// [`RawCondvar`]. The protected data may be half-updated.
    pub(crate) fn recovered(&self) -> bool {
        self.recovered.get()
    }
}

impl Drop for RawGuard<'_> {
    fn drop(&mut self) {
        self.mutex.unlock();
        self.mutex.seg.unlocked();
    }
}

impl fmt::Debug for RawGuard<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RawGuard")
            .field("mutex", self.mutex)
            .finish()
    }
}

/// The previous holder of a [`RawMutex`] died while holding it. The mutex
/// is consistent again and held by this value: take the guard with
/// [`into_guard`](OwnerDied::into_guard) to repair the data, or drop this
/// to unlock.
pub(crate) struct OwnerDied<'a> {
    guard: RawGuard<'a>,
}

impl<'a> OwnerDied<'a> {
    /// The guard of the (now consistent) mutex.
    pub(crate) fn into_guard(self) -> RawGuard<'a> {
        self.guard
    }
}

impl fmt::Debug for OwnerDied<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("OwnerDied")
    }
}

impl fmt::Display for OwnerDied<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("the previous holder of the lock died while holding it")
    }
}

/// A process-shared condition variable for a [`RawMutex`], living in a
/// [`Segment`]: a futex word bumped by every notify. Wake-ups may be
/// spurious; wait in a loop that re-checks the condition.
#[derive(Clone)]
pub(crate) struct RawCondvar {
    seg: Segment,
    offset: usize,
}

impl fmt::Debug for RawCondvar {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RawCondvar")
            .field("offset", &self.offset)
            .finish_non_exhaustive()
    }
}

impl RawCondvar {
    /// Bytes a condvar takes in a segment.
    pub(crate) const SIZE: usize = 64;

    /// A condvar at `offset` of `seg`. A zeroed region is a valid condvar,
    /// so this only resets the word; call it in the creating process before
    /// sharing the segment.
    ///
    /// # Panics
    ///
    /// If the region is outside the segment or `offset` is not a multiple
    /// of 4.
    pub(crate) fn init(seg: &Segment, offset: usize) -> RawCondvar {
        let c = RawCondvar::open(seg, offset);
        c.word().store(0, Ordering::Relaxed);
        c
    }

    /// A handle to the condvar at `offset` of `seg` (any value of the word
    /// is valid, so this cannot fail).
    ///
    /// # Panics
    ///
    /// As [`init`](RawCondvar::init).
    pub(crate) fn open(seg: &Segment, offset: usize) -> RawCondvar {
        assert!(
            offset
                .checked_add(RawCondvar::SIZE)
                .is_some_and(|end| end <= seg.len()),
            "a condvar at {offset} does not fit in a segment of {} bytes",
            seg.len()
        );
        let _ = seg.atomic_u32(offset);
        RawCondvar {
            seg: seg.clone(),
            offset,
        }
    }

    fn word(&self) -> &AtomicU32 {
        self.seg.atomic_u32(self.offset)
    }

    /// Unlocks the guard's mutex, sleeps until notified (or spuriously),
    /// and locks it again before returning.
    ///
    /// If the mutex's holder died meanwhile, the mutex is made consistent
    /// and [`RawGuard::recovered`] turns `true`.
    pub(crate) fn wait(&self, guard: &RawGuard<'_>) {
        self.wait_inner(guard, None);
    }

    /// As [`wait`](RawCondvar::wait), for at most `timeout`. Returns `false`
    /// if the time ran out, `true` if woken (or spuriously woken) before.
    pub(crate) fn wait_timeout(&self, guard: &RawGuard<'_>, timeout: Duration) -> bool {
        self.wait_inner(guard, Some(timeout))
    }

    fn wait_inner(&self, guard: &RawGuard<'_>, timeout: Option<Duration>) -> bool {
        let seq = self.word().load(Ordering::Acquire);
        guard.mutex.unlock();
        let woken = futex_wait(self.word(), seq, timeout);
        if guard.mutex.relock() {
            guard.recovered.set(true);
        }
        woken
    }

    /// Wakes one waiter, if any.
    pub(crate) fn notify_one(&self) {
        self.word().fetch_add(1, Ordering::Release);
        futex_wake(self.word(), 1);
    }

    /// Wakes every waiter.
    pub(crate) fn notify_all(&self) {
        self.word().fetch_add(1, Ordering::Release);
        futex_wake(self.word(), i32::MAX);
    }
}

/// Sleeps while `*word == expected`, at most `timeout` (monotonic).
/// Returns `false` only if the timeout expired.
fn futex_wait(word: &AtomicU32, expected: u32, timeout: Option<Duration>) -> bool {
    let ts = timeout.map(|d| libc::timespec {
        tv_sec: libc::time_t::try_from(d.as_secs()).unwrap_or(libc::time_t::MAX),
        tv_nsec: libc::c_long::from(d.subsec_nanos() as i32),
    });
    let ts_ptr = ts
        .as_ref()
        .map_or(std::ptr::null(), |t| t as *const libc::timespec);
    // SAFETY: FUTEX_WAIT (shared, not FUTEX_PRIVATE_FLAG: the word lives in
    // a MAP_SHARED mapping used by several processes) on a live, aligned
    // u32; the timeout pointer is null or points to a valid timespec.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_futex,
            word.as_ptr(),
            libc::FUTEX_WAIT,
            expected,
            ts_ptr,
            std::ptr::null::<u32>(),
            0u32,
        )
    };
    !(rc < 0 && io::Error::last_os_error().raw_os_error() == Some(libc::ETIMEDOUT))
}

fn futex_wake(word: &AtomicU32, n: i32) {
    // SAFETY: FUTEX_WAKE on a live, aligned u32 (shared futex, see
    // `futex_wait`).
    unsafe {
        libc::syscall(libc::SYS_futex, word.as_ptr(), libc::FUTEX_WAKE, n);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shm::segment::tests::round_trip;
    use std::time::Instant;

    fn pair() -> (RawMutex, RawCondvar, Segment) {
        let seg = Segment::create(c"test", 4096).unwrap();
        let m = RawMutex::init(&seg, 0).unwrap();
        let c = RawCondvar::init(&seg, 64);
        (m, c, seg)
    }

    #[test]
    fn open_needs_init_and_init_happens_once() {
        let seg = Segment::create(c"test", 4096).unwrap();
        assert!(RawMutex::open(&seg, 128).is_err());
        RawMutex::init(&seg, 128).unwrap();
        assert!(RawMutex::init(&seg, 128).is_err());
        let other = round_trip(&seg);
        let m = RawMutex::open(&other, 128).unwrap();
        let g = m.lock().unwrap();
        assert!(!g.recovered());
        assert!(
            RawMutex::open(&seg, 128)
                .unwrap()
                .try_lock()
                .unwrap()
                .is_none()
        );
        drop(g);
        assert!(
            RawMutex::open(&seg, 128)
                .unwrap()
                .try_lock()
                .unwrap()
                .is_some()
        );
    }

    #[test]
    fn a_thread_dying_with_the_lock_gives_owner_died_once() {
        let (m, _c, _seg) = pair();
        let m2 = m.clone();
        std::thread::spawn(move || std::mem::forget(m2.lock().unwrap()))
            .join()
            .unwrap();
        let died = m.lock().unwrap_err();
        assert!(died.into_guard().recovered());
        // The error unlocked on drop (via its guard); the mutex works again.
        let g = m.lock().unwrap();
        assert!(!g.recovered());
    }

    #[test]
    fn timeouts_expire() {
        let (m, c, _seg) = pair();
        let g = m.lock().unwrap();
        let t = Instant::now();
        assert!(!c.wait_timeout(&g, Duration::from_millis(50)));
        assert!(t.elapsed() >= Duration::from_millis(50));
        let m2 = m.clone();
        let timed_out = std::thread::spawn(move || {
            m2.lock_timeout(Duration::from_millis(30))
                .unwrap()
                .is_none()
        });
        assert!(timed_out.join().unwrap());
    }

    #[test]
    fn notify_wakes_waiters() {
        let (m, c, seg) = pair();
        let waiters: Vec<_> = (0..3)
            .map(|_| {
                let (m, c, seg) = (m.clone(), c.clone(), seg.clone());
                std::thread::spawn(move || {
                    let g = m.lock().unwrap();
                    while seg.atomic_u64(256).load(Ordering::Relaxed) == 0 {
                        c.wait(&g);
                    }
                })
            })
            .collect();
        std::thread::sleep(Duration::from_millis(20));
        {
            let _g = m.lock().unwrap();
            seg.atomic_u64(256).store(1, Ordering::Relaxed);
            c.notify_all();
        }
        for w in waiters {
            w.join().unwrap();
        }
    }

    #[test]
    #[should_panic(expected = "locked twice")]
    fn relocking_in_one_thread_panics() {
        let (m, _c, _seg) = pair();
        let _a = m.lock().unwrap();
        let _b = m.lock();
    }
}
