//! Process-shared building blocks: [`RawMutex`] (a futex mutex that notices
//! a dead owner) and [`RawCondvar`] (a futex sequence word), placed at an
//! offset of a [`Segment`].
//!
//! The public `Lock` and `Value` are built on these, `Event`, `Semaphore`
//! and `Barrier` on the condvar's word alone, and so can any other
//! cross-process structure (a ring buffer in a segment): create the
//! segment, [`RawMutex::init`] / [`RawCondvar::init`] the regions in the
//! creating process, send the segment, and [`RawMutex::open`] /
//! [`RawCondvar::open`] them at the same offsets on the other side.
//!
//! # Layout
//!
//! A `RawMutex` takes [`RawMutex::SIZE`] (64) bytes at an offset that is a
//! multiple of 8 (64 keeps it on a cache line of its own):
//!
//! | bytes | content |
//! |---|---|
//! | `0..4` | state word: 0 never initialised, 1 initialising, 2 ready |
//! | `8..16` | owner word (`u64`): 0 when free; else the owner's thread id (bits `0..30`), a waiters bit (bit 31), and the owner's pid (bits `32..64`) |
//!
//! The low half of the owner word is the futex that waiters sleep on. The
//! thread id and the pid share one 64-bit word so that one compare-and-swap
//! sets, clears or takes over both: a waiter never pairs one owner's thread
//! id with another owner's pid.
//!
//! A `RawCondvar` takes [`RawCondvar::SIZE`] (64) bytes at a multiple of 4:
//! bytes `0..4` are a sequence number used as the futex word; the rest is
//! padding. A zeroed region is a valid condvar.
//!
//! "Futex" here means the kernel's shared wait on a 32-bit word: `futex` on
//! Linux, `os_sync_wait_on_address` or `__ulock_wait` on macOS, `_umtx_op`
//! on FreeBSD ([`crate::sys::futex`]).
//!
//! # The trust boundary
//!
//! Every process that holds the segment can write every byte of these
//! regions, and a worker may be corrupted or hostile. So this process never
//! dereferences a pointer read from the segment, never lets a value read
//! there decide where it writes, and never lets one decide how long it
//! waits past a deadline:
//!
//! * Locking is a compare-and-swap of the owner word; unlocking is a swap
//!   to 0 followed, if the old value had the waiters bit, by a wake.
//! * Deadlines are `Instant`s of this process (`CLOCK_MONOTONIC`); every
//!   sleep is a relative futex wait bounded by the time left, so
//!   [`RawMutex::lock_timeout`] and [`RawCondvar::wait_timeout`] return
//!   within their timeout whatever the shared words say.
//! * "This thread already holds the mutex" is decided from a private,
//!   thread-local list of held mutexes (by segment identity and offset),
//!   never from the owner word, which any process can set to our thread id.
//!
//! # Why not a robust pthread mutex
//!
//! glibc trusts the memory of a `pthread_mutex_t`, and here every worker
//! can write it:
//!
//! * a robust mutex is linked into its holder's robust list *through the
//!   mutex's memory*: a worker that rewrites the links while this process
//!   holds the lock chooses the addresses glibc writes on unlock;
//! * a robust priority-inheritance kind together with a dead owner trips an
//!   assertion inside glibc, which aborts;
//! * an owner thread id that does not exist makes `pthread_mutex_lock`
//!   wait forever (only the kernel's robust-list walk at the real owner's
//!   death would mark it), and a garbled kind makes every call fail with
//!   `EINVAL`.
//!
//! # How a dead owner is noticed
//!
//! Nothing marks the word when its owner dies (the kernel marks only the
//! mutexes on the robust list glibc registers for each thread, and that
//! list runs through the mutexes' memory). Waiters sleep in slices of
//! at most [`SLICE`] and, when the same owner has held the word for a whole
//! slice, probe it ([`crate::sys::thread`]): on Linux `tgkill(pid, tid, 0)`
//! fails with `ESRCH` once that thread is gone, and a thread-group leader
//! that died and is not yet reaped shows as a zombie in `/proc/<pid>/stat`;
//! FreeBSD probes the thread with `thr_kill2`; macOS can probe only the
//! owner's process, so there a thread that ends holding the mutex in a
//! process that lives on is not noticed. A dead owner, and a word
//! that names no possible thread (a thread id of 0 or above the 30-bit
//! range, a pid of 0 or above `i32::MAX`, the reserved bit 30 set), is
//! taken over with a compare-and-swap and reported as [`OwnerDied`], as is
//! a word naming this very thread when the private list says it does not
//! hold the mutex (a forgery). `try_lock`, and a timed lock at its
//! deadline, probe at once.
//!
//! Limits, stated: a pid is recycled by the kernel once its process is
//! reaped, so a dead owner whose pid and thread id now belong to a new
//! thread looks alive until that thread ends (timed locks still return on
//! time). A word forged to name another live thread (of any process, this
//! one included) cannot be told from a real owner: untimed locks wait for
//! that thread, as they would for a real holder, and timed ones time out.
//! The probe needs the owner in this process's pid namespace.
//!
//! # The condvar
//!
//! The condvar is a bare futex (a sequence number bumped by every notify)
//! rather than a `pthread_cond_t`: glibc's condvar keeps waiter groups in
//! the shared memory, and a waiter that dies in the middle leaves them
//! inconsistent, so a later signal can be swallowed by the dead waiter. With
//! a futex the kernel keeps the list of waiters and a dead waiter simply is
//! not on it. Any value of the word is valid; a process that bumps it only
//! causes spurious wake-ups, which every waiter re-checks against its own
//! deadline. Used without a mutex, it is an event count:
//! [`sequence`](RawCondvar::sequence) before checking a condition, then
//! [`wait_changed`](RawCondvar::wait_changed) from that sequence, and a
//! notify after every change of the condition cannot be missed.

use std::cell::{Cell, RefCell};
use std::fmt;
use std::io;
use std::marker::PhantomData;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use super::segment::Segment;

const UNINIT: u32 = 0;
const INITIALISING: u32 = 1;
const READY: u32 = 2;

/// Offset of the owner word inside a `RawMutex` region.
const OWNER_AT: usize = 8;

/// Waiters bit of the owner word: someone may sleep on the futex.
const WAITERS: u64 = 1 << 31;
/// Thread-id bits of the owner word (the kernel's `FUTEX_TID_MASK`).
const TID_MASK: u64 = 0x3fff_ffff;
/// Owner-word bits that no owner sets: the reserved bit 30.
const RESERVED: u64 = 1 << 30;

/// Longest sleep of a waiter before it looks at the owner again.
const SLICE: Duration = Duration::from_millis(10);

thread_local! {
    /// The owner word of this thread, `pid << 32 | tid` (0: not yet
    /// computed).
    static ME: Cell<u64> = const { Cell::new(0) };
    /// Mutexes this thread holds: (segment identity, offset).
    static HELD: RefCell<Vec<((u64, u64), usize)>> = const { RefCell::new(Vec::new()) };
}

/// The owner word of this thread, cached (no system call after the first).
fn this_thread() -> u64 {
    ME.with(|me| {
        if me.get() == 0 {
            let (pid, tid) = crate::sys::thread::current();
            me.set((u64::from(pid) << 32) | (u64::from(tid) & TID_MASK));
            register_fork_handler();
        }
        me.get()
    })
}

/// After a `fork` (without exec), the child's one thread has a new pid and
/// thread id and holds none of the parent's mutexes: it forgets the cached
/// owner word and the held list it inherited.
fn register_fork_handler() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    extern "C" fn in_child() {
        let _ = ME.try_with(|me| me.set(0));
        let _ = HELD.try_with(|held| {
            if let Ok(mut held) = held.try_borrow_mut() {
                held.clear();
            }
        });
    }
    ONCE.call_once(|| {
        // SAFETY: registers a function with no captured state; it runs in
        // the child after fork and only touches that thread's
        // thread-locals.
        unsafe { libc::pthread_atfork(None, None, Some(in_child)) };
    });
}

pub(crate) use crate::sys::thread::{process_alive, thread_alive};

/// A process-shared mutex living in a [`Segment`], that notices when its
/// holder dies and trusts nothing it reads from the segment (see the
/// module docs).
///
/// Locking returns [`OwnerDied`] when the previous holder died while
/// holding it, or when the owner word was found naming no live thread (or
/// forged to name this one): the mutex is then held by the error, which
/// carries the guard, so the caller can repair the protected data
/// ([`OwnerDied::into_guard`]) or just drop the error, which unlocks.
/// Either way later lockers proceed.
///
/// Locking twice from one thread panics instead of deadlocking; this is
/// decided from this thread's own record of what it holds.
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

/// How long a lock attempt may wait.
#[derive(Clone, Copy)]
enum Wait {
    /// Not at all (`try_lock`).
    No,
    /// Until this instant.
    Until(Instant),
    /// As long as it takes.
    Forever,
}

impl Wait {
    fn timeout(timeout: Duration) -> Wait {
        // A timeout too far away to represent is no timeout.
        Instant::now()
            .checked_add(timeout)
            .map_or(Wait::Forever, Wait::Until)
    }

    /// Time left, `None` for no limit; zero once expired.
    fn left(self) -> Option<Duration> {
        match self {
            Wait::No => Some(Duration::ZERO),
            Wait::Until(d) => Some(d.saturating_duration_since(Instant::now())),
            Wait::Forever => None,
        }
    }
}

/// `true` if an owner word (without its waiters bit) can name a thread.
fn well_formed(owner: u64) -> bool {
    let tid = owner & TID_MASK;
    let pid = owner >> 32;
    owner & RESERVED == 0 && tid != 0 && pid != 0 && pid <= i32::MAX as u64
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
    /// If the region was already initialised.
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
        m.word().store(0, Ordering::Relaxed);
        state.store(READY, Ordering::Release);
        Ok(m)
    }

    /// A handle to the mutex that [`init`](RawMutex::init) placed at
    /// `offset` of `seg` (in this or another process). The state word is
    /// checked here only; a process that scribbles it later changes
    /// nothing.
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

    /// The owner word.
    fn word(&self) -> &AtomicU64 {
        self.seg.atomic_u64(self.offset + OWNER_AT)
    }

    /// The futex half of the owner word (thread id and waiters bit).
    fn futex(&self) -> *const u32 {
        let half = if cfg!(target_endian = "little") { 0 } else { 4 };
        // SAFETY: the owner word is 8 bytes inside the segment (checked in
        // `init`/`open`), so its half at `half` is too.
        unsafe { self.word().as_ptr().cast::<u8>().add(half).cast::<u32>() }
    }

    /// The segment the mutex lives in.
    pub(crate) fn segment(&self) -> &Segment {
        &self.seg
    }

    fn key(&self) -> ((u64, u64), usize) {
        (self.seg.identity(), self.offset)
    }

    /// `true` if this thread holds the mutex, by its own record.
    fn held_here(&self) -> bool {
        let key = self.key();
        HELD.with(|h| h.borrow().contains(&key))
    }

    /// Records that this thread now holds the mutex.
    fn acquired(&self, recovered: bool) -> RawGuard<'_> {
        HELD.with(|h| h.borrow_mut().push(self.key()));
        self.seg.locked();
        RawGuard {
            mutex: self,
            recovered: Cell::new(recovered),
            held: Cell::new(true),
            _not_send: PhantomData,
        }
    }

    /// Releases the mutex this thread holds: drops it from the record,
    /// clears the owner word and wakes a waiter if the word said there was
    /// one. Whatever another process wrote into the word meanwhile is
    /// overwritten, never followed.
    fn release(&self) {
        let key = self.key();
        HELD.with(|h| {
            let mut h = h.borrow_mut();
            if let Some(i) = h.iter().rposition(|k| *k == key) {
                h.swap_remove(i);
            }
        });
        let old = self.word().swap(0, Ordering::Release);
        if old & WAITERS != 0 {
            futex_wake(self.futex(), 1);
        }
        self.seg.unlocked();
    }

    /// Takes the mutex, waiting as `wait` allows. `Ok(None)`: busy, or
    /// timed out.
    fn acquire(&self, wait: Wait) -> Result<Option<RawGuard<'_>>, OwnerDied<'_>> {
        if self.held_here() {
            match wait {
                Wait::No => return Ok(None),
                _ => panic!("a multiproc lock was locked twice by the same thread"),
            }
        }
        let me = this_thread();
        let word = self.word();
        if word
            .compare_exchange(0, me, Ordering::Acquire, Ordering::Relaxed)
            .is_ok()
        {
            return Ok(Some(self.acquired(false)));
        }
        self.acquire_slow(me, wait)
    }

    fn acquire_slow(&self, me: u64, wait: Wait) -> Result<Option<RawGuard<'_>>, OwnerDied<'_>> {
        let word = self.word();
        // Once this thread has slept, other waiters may sleep too: it takes
        // the word with the waiters bit set, so its unlock wakes them.
        let mut slept = false;
        // The owner being watched, and since when without a probe.
        let mut watching: Option<(u64, Instant)> = None;
        loop {
            let cur = word.load(Ordering::Relaxed);
            let owner = cur & !WAITERS;
            if owner == 0 {
                let new = if slept { me | WAITERS } else { me };
                if word
                    .compare_exchange(cur, new, Ordering::Acquire, Ordering::Relaxed)
                    .is_ok()
                {
                    return Ok(Some(self.acquired(false)));
                }
                continue;
            }
            let left = wait.left();
            let expired = left == Some(Duration::ZERO);
            let dead = if !well_formed(owner) || owner == me {
                // Names no possible thread, or names this one, which by its
                // own record does not hold the mutex: a forgery.
                true
            } else {
                let now = Instant::now();
                let due = match watching {
                    Some((o, since)) if o == owner => now.duration_since(since) >= SLICE,
                    _ => {
                        watching = Some((owner, now));
                        false
                    }
                };
                if due || expired {
                    watching = Some((owner, now));
                    !thread_alive(owner >> 32, owner & TID_MASK)
                } else {
                    false
                }
            };
            if dead {
                if word
                    .compare_exchange(cur, me | WAITERS, Ordering::Acquire, Ordering::Relaxed)
                    .is_ok()
                {
                    return Err(OwnerDied {
                        guard: self.acquired(true),
                    });
                }
                continue;
            }
            if expired {
                return Ok(None);
            }
            if cur & WAITERS == 0
                && word
                    .compare_exchange(cur, cur | WAITERS, Ordering::Relaxed, Ordering::Relaxed)
                    .is_err()
            {
                continue;
            }
            let nap = left.map_or(SLICE, |l| l.min(SLICE));
            futex_wait(self.futex(), (cur | WAITERS) as u32, Some(nap));
            slept = true;
        }
    }

    /// Locks, blocking until the mutex is free (or its owner is found
    /// dead).
    ///
    /// # Errors
    ///
    /// [`OwnerDied`] (holding the lock) if the previous holder died while
    /// holding it, or the owner word named no live thread.
    ///
    /// # Panics
    ///
    /// If this thread already holds the mutex.
    pub(crate) fn lock(&self) -> Result<RawGuard<'_>, OwnerDied<'_>> {
        self.acquire(Wait::Forever)
            .map(|g| g.expect("a blocking lock returns a guard"))
    }

    /// Locks if the mutex is free (or its owner is dead), else returns
    /// `Ok(None)` at once; also `Ok(None)` if this thread holds it.
    ///
    /// # Errors
    ///
    /// As [`lock`](RawMutex::lock).
    pub(crate) fn try_lock(&self) -> Result<Option<RawGuard<'_>>, OwnerDied<'_>> {
        self.acquire(Wait::No)
    }

    /// Locks, waiting at most `timeout`; `Ok(None)` if it expired. Returns
    /// within `timeout` (plus scheduling) whatever the owner word says.
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
        self.acquire(Wait::timeout(timeout))
    }

    /// Locks, waiting until `deadline` at most (one attempt if it has
    /// passed); `Ok(None)` if it expired.
    ///
    /// # Errors
    ///
    /// As [`lock`](RawMutex::lock).
    ///
    /// # Panics
    ///
    /// As [`lock`](RawMutex::lock).
    pub(crate) fn lock_until(
        &self,
        deadline: Instant,
    ) -> Result<Option<RawGuard<'_>>, OwnerDied<'_>> {
        self.acquire(Wait::Until(deadline))
    }

    /// Retakes the mutex for `guard` after a condvar wait, waiting as
    /// `wait` allows. Returns `false` if the wait expired first: the guard
    /// then no longer holds the mutex.
    fn relock(&self, guard: &RawGuard<'_>, wait: Wait) -> bool {
        let taken = match self.acquire(wait) {
            Ok(Some(g)) => Some(g),
            Ok(None) => None,
            Err(died) => {
                guard.recovered.set(true);
                Some(died.guard)
            }
        };
        match taken {
            Some(g) => {
                // `guard` holds it from now on; `g` only recorded it.
                g.held.set(false);
                guard.held.set(true);
                true
            }
            None => false,
        }
    }
}

/// Holds a [`RawMutex`]; unlocks on drop. Not `Send`: the thread that
/// locked keeps the record of holding it.
pub(crate) struct RawGuard<'a> {
    mutex: &'a RawMutex,
    recovered: Cell<bool>,
    /// `false` once a timed [`RawCondvar::wait_timeout`] could not retake
    /// the mutex before its deadline.
    held: Cell<bool>,
    _not_send: PhantomData<*const ()>,
}

impl<'a> RawGuard<'a> {
    /// The locked mutex.
    pub(crate) fn mutex(&self) -> &'a RawMutex {
        self.mutex
    }

    /// `true` if a previous holder died while holding the mutex (or the
    /// owner word named no live thread), either before this guard took it
    /// or while this guard waited on a [`RawCondvar`]. The protected data
    /// may be half-updated.
    pub(crate) fn recovered(&self) -> bool {
        self.recovered.get()
    }

    /// `true` while the guard holds the mutex: always, except after a
    /// [`RawCondvar::wait_timeout`] that returned `false` because the
    /// mutex was still held by another thread at the deadline. A guard
    /// that does not hold the mutex must not touch what it protects;
    /// dropping it does nothing.
    pub(crate) fn held(&self) -> bool {
        self.held.get()
    }

    /// Unlocks for a condvar wait; the guard no longer holds the mutex.
    fn unlock_for_wait(&self) {
        if self.held.replace(false) {
            self.mutex.release();
        }
    }
}

impl Drop for RawGuard<'_> {
    fn drop(&mut self) {
        if self.held.get() {
            self.mutex.release();
        }
    }
}

impl fmt::Debug for RawGuard<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RawGuard")
            .field("mutex", self.mutex)
            .field("held", &self.held.get())
            .finish()
    }
}

/// The previous holder of a [`RawMutex`] died while holding it (or the
/// owner word named no live thread). The mutex is held by this value: take
/// the guard with [`into_guard`](OwnerDied::into_guard) to repair the data,
/// or drop this to unlock.
pub(crate) struct OwnerDied<'a> {
    guard: RawGuard<'a>,
}

impl<'a> OwnerDied<'a> {
    /// The guard of the (now held) mutex.
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
    /// and locks it again before returning (waiting for it as
    /// [`RawMutex::lock`] does).
    ///
    /// If the mutex's holder died meanwhile, [`RawGuard::recovered`] turns
    /// `true`.
    pub(crate) fn wait(&self, guard: &RawGuard<'_>) {
        let seq = self.word().load(Ordering::Acquire);
        guard.unlock_for_wait();
        futex_wait(self.word().as_ptr(), seq, None);
        guard.mutex.relock(guard, Wait::Forever);
    }

    /// As [`wait`](RawCondvar::wait), for at most `timeout` in all: the
    /// sleep and the relock together. Returns `true` if woken (or
    /// spuriously woken) and relocked before the deadline, `false` if the
    /// time ran out. The mutex is then retaken if it is free (one attempt);
    /// if another thread still holds it, the guard no longer holds it
    /// ([`RawGuard::held`] is `false`) and the caller must give up as on
    /// any timeout, without touching the protected data.
    pub(crate) fn wait_timeout(&self, guard: &RawGuard<'_>, timeout: Duration) -> bool {
        let wait = Wait::timeout(timeout);
        let seq = self.word().load(Ordering::Acquire);
        guard.unlock_for_wait();
        if futex_wait(self.word().as_ptr(), seq, wait.left()) {
            guard.mutex.relock(guard, wait)
        } else {
            guard.mutex.relock(guard, Wait::No);
            false
        }
    }

    /// As [`wait_timeout`](RawCondvar::wait_timeout) until `deadline`
    /// (`None`: no limit), but sleeps at most `slice` before taking the
    /// lock back: for a caller that re-checks its condition in a loop,
    /// a notify that was skipped or lost (another process can rewrite the
    /// words that decide whether to notify) costs at most `slice`. Returns
    /// `true` holding the mutex, `false` (not holding it) once `deadline`
    /// has passed.
    pub(crate) fn wait_sliced(
        &self,
        guard: &RawGuard<'_>,
        deadline: Option<Instant>,
        slice: Duration,
    ) -> bool {
        let sleep = match deadline {
            Some(d) => d.saturating_duration_since(Instant::now()).min(slice),
            None => slice,
        };
        let seq = self.word().load(Ordering::Acquire);
        guard.unlock_for_wait();
        futex_wait(self.word().as_ptr(), seq, Some(sleep));
        let wait = deadline.map_or(Wait::Forever, Wait::Until);
        guard.mutex.relock(guard, wait)
    }

    /// The sequence number, for [`wait_changed`](RawCondvar::wait_changed):
    /// read it before checking the condition.
    pub(crate) fn sequence(&self) -> u32 {
        self.word().load(Ordering::Acquire)
    }

    /// Sleeps (without any mutex) while the sequence number is still
    /// `seen`, at most until `deadline` (`None`: no limit). Returns `false`
    /// if the deadline has passed, `true` otherwise (a notify since `seen`
    /// was read, or a spurious wake-up): re-check the condition.
    pub(crate) fn wait_changed(&self, seen: u32, deadline: Option<Instant>) -> bool {
        let left = match deadline {
            None => None,
            Some(d) => {
                let left = d.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return false;
                }
                Some(left)
            }
        };
        futex_wait(self.word().as_ptr(), seen, left) || deadline.is_none_or(|d| Instant::now() < d)
    }

    /// Wakes one waiter, if any.
    pub(crate) fn notify_one(&self) {
        self.word().fetch_add(1, Ordering::Release);
        futex_wake(self.word().as_ptr(), 1);
    }

    /// Wakes every waiter.
    pub(crate) fn notify_all(&self) {
        self.word().fetch_add(1, Ordering::Release);
        futex_wake(self.word().as_ptr(), i32::MAX);
    }
}

/// Sleeps while `*word == expected`, at most `timeout` (monotonic,
/// relative): the kernel's shared wait on a word ([`crate::sys::futex`]).
/// Returns `false` only if the timeout expired.
#[inline]
fn futex_wait(word: *const u32, expected: u32, timeout: Option<Duration>) -> bool {
    crate::sys::futex::wait(word, expected, timeout)
}

/// Wakes one sleeper on `word` (`n == 1`) or all of them.
#[inline]
fn futex_wake(word: *const u32, n: i32) {
    if n == 1 {
        crate::sys::futex::wake_one(word);
    } else {
        crate::sys::futex::wake_all(word);
    }
}

/// Locks `mutex`, taking over (and making consistent) a mutex whose holder
/// died: for bookkeeping whose critical sections only store whole words.
pub(crate) fn lock_recovering(mutex: &RawMutex) -> RawGuard<'_> {
    mutex.lock().unwrap_or_else(OwnerDied::into_guard)
}

#[cfg(test)]
#[path = "sync_tests.rs"]
mod tests;
