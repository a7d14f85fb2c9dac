//! Process-shared synchronisation handles: [`Lock`], [`Value`], [`Event`],
//! [`Semaphore`], [`Barrier`]. Each lives in a small segment of its own
//! (one page) and is passed to workers as an ordinary argument.
//!
//! Segment layout, shared by all of them:
//!
//! | bytes | content |
//! |---|---|
//! | `0..8` | kind tag (so an `Event` cannot be received as a `Lock`) |
//! | `64..128` | [`RawMutex`] |
//! | `128..192` | [`RawCondvar`] |
//! | `192..` | the handle's own state words (`u64` each) |

use std::fmt;
use std::marker::PhantomData;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::element::Element;
use super::segment::Segment;
use super::sync::{RawCondvar, RawGuard, RawMutex};
use super::{lock_recovering, shm_error};
use crate::error::{Error, ErrorKind, Result};

const SIZE: usize = 4096;
const TAG_AT: usize = 0;
const MUTEX_AT: usize = 64;
const CONDVAR_AT: usize = 128;
const STATE_AT: usize = 192;

const MAGIC: u64 = 0x4d50_5359_4e43_0000; // "MPSYNC\0\0"
const LOCK: u64 = 1;
const EVENT: u64 = 2;
const SEMAPHORE: u64 = 3;
const BARRIER: u64 = 4;
/// `VALUE | T::TAG << 8`.
const VALUE: u64 = 5;

/// The segment, mutex and condvar behind every handle here.
#[derive(Clone)]
struct Cell {
    seg: Segment,
    mutex: RawMutex,
    cond: RawCondvar,
}

impl Cell {
    fn create(kind: u64, name: &std::ffi::CStr) -> Result<Cell> {
        let seg = Segment::create(name, SIZE).map_err(shm_error)?;
        seg.atomic_u64(TAG_AT)
            .store(MAGIC | kind, Ordering::Relaxed);
        let mutex = RawMutex::init(&seg, MUTEX_AT).map_err(shm_error)?;
        let cond = RawCondvar::init(&seg, CONDVAR_AT);
        Ok(Cell { seg, mutex, cond })
    }

    fn open(seg: Segment, kind: u64) -> std::io::Result<Cell> {
        if !seg.is_writable()
            || seg.len() != SIZE
            || seg.atomic_u64(TAG_AT).load(Ordering::Relaxed) != MAGIC | kind
        {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                "the handle's shared memory is not of the expected kind",
            ));
        }
        let mutex = RawMutex::open(&seg, MUTEX_AT)?;
        let cond = RawCondvar::open(&seg, CONDVAR_AT);
        Ok(Cell { seg, mutex, cond })
    }

    fn word(&self, i: usize) -> &AtomicU64 {
        self.seg.atomic_u64(STATE_AT + 8 * i)
    }

    /// Locks for internal bookkeeping. The critical sections of `Event`,
    /// `Semaphore` and `Barrier` only store whole words, so a holder that
    /// died cannot leave them half-updated: recover silently.
    fn lock(&self) -> RawGuard<'_> {
        lock_recovering(&self.mutex)
    }

    /// Waits on the condvar until `done()` or the deadline; returns
    /// `done()`.
    fn wait_until(
        &self,
        guard: &RawGuard<'_>,
        deadline: Option<Instant>,
        mut done: impl FnMut() -> bool,
    ) -> bool {
        while !done() {
            match deadline {
                None => self.cond.wait(guard),
                Some(d) => {
                    let now = Instant::now();
                    if now >= d {
                        return false;
                    }
                    self.cond.wait_timeout(guard, d - now);
                }
            }
        }
        true
    }
}

fn deadline(timeout: Duration) -> Option<Instant> {
    // A timeout too far away to represent is no timeout.
    Instant::now().checked_add(timeout)
}

macro_rules! handle_serde {
    ($t:ident, $kind:expr) => {
        /// Serialises as a reference to the shared memory (its descriptor),
        /// so every process that receives it shares the same object.
        impl Serialize for $t {
            fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                self.cell.seg.serialize(serializer)
            }
        }
        impl<'de> Deserialize<'de> for $t {
            fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                let seg = Segment::deserialize(deserializer)?;
                let cell = Cell::open(seg, $kind).map_err(serde::de::Error::custom)?;
                Ok($t { cell })
            }
        }
        impl fmt::Debug for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.debug_struct(stringify!($t)).finish_non_exhaustive()
            }
        }
    };
}

fn owner_died() -> Error {
    Error::new(ErrorKind::OwnerDied)
}

/// A mutual-exclusion lock shared by processes (Python's
/// `multiprocessing.Lock`), with a guard that unlocks on drop.
///
/// If a process dies while holding the lock, the next `lock()` (in any
/// process) fails with [`ErrorKind::OwnerDied`] instead of waiting
/// forever; the lock is then consistent and free again, so the call after
/// that succeeds. Whatever the lock protected may be half-updated.
///
/// Locking a `Lock` twice from the same thread panics instead of
/// deadlocking. The guard is not `Send`: unlock in the thread that locked.
///
/// Built on a robust, process-shared pthread mutex.
#[derive(Clone)]
pub struct Lock {
    cell: Cell,
}

handle_serde!(Lock, LOCK);

/// Holds a [`Lock`]; unlocks when dropped.
#[must_use = "the lock is released as soon as the guard is dropped"]
pub struct LockGuard<'a> {
    _guard: RawGuard<'a>,
}

impl fmt::Debug for LockGuard<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("LockGuard")
    }
}

impl Lock {
    /// A new, unlocked lock.
    ///
    /// # Errors
    ///
    /// [`SharedMemory`](ErrorKind::SharedMemory) if its memory cannot be
    /// created.
    pub fn new() -> Result<Lock> {
        Ok(Lock {
            cell: Cell::create(LOCK, c"multiproc-lock")?,
        })
    }

    /// Locks, waiting as long as it takes.
    ///
    /// # Errors
    ///
    /// [`OwnerDied`](ErrorKind::OwnerDied) if the previous holder died
    /// while holding the lock; the lock is left unlocked and usable.
    ///
    /// # Panics
    ///
    /// If this thread already holds the lock.
    pub fn lock(&self) -> Result<LockGuard<'_>> {
        match self.cell.mutex.lock() {
            Ok(g) => Ok(LockGuard { _guard: g }),
            Err(_died) => Err(owner_died()),
        }
    }

    /// Locks if the lock is free; `Ok(None)` at once if it is held
    /// (including by this thread).
    ///
    /// # Errors
    ///
    /// As [`lock`](Self::lock).
    pub fn try_lock(&self) -> Result<Option<LockGuard<'_>>> {
        match self.cell.mutex.try_lock() {
            Ok(g) => Ok(g.map(|g| LockGuard { _guard: g })),
            Err(_died) => Err(owner_died()),
        }
    }

    /// Locks, waiting at most `timeout`; `Ok(None)` if it expired.
    ///
    /// # Errors
    ///
    /// As [`lock`](Self::lock).
    ///
    /// # Panics
    ///
    /// If this thread already holds the lock.
    pub fn lock_timeout(&self, timeout: Duration) -> Result<Option<LockGuard<'_>>> {
        match self.cell.mutex.lock_timeout(timeout) {
            Ok(g) => Ok(g.map(|g| LockGuard { _guard: g })),
            Err(_died) => Err(owner_died()),
        }
    }
}

/// A number in shared memory behind its own lock (Python's
/// `multiprocessing.Value`): [`get`](Self::get), [`set`](Self::set),
/// [`update`](Self::update) each take the lock; [`lock`](Self::lock) holds
/// it across several steps.
///
/// The lock behaves as a [`Lock`]: if a holder dies, the next call fails
/// once with [`OwnerDied`](ErrorKind::OwnerDied) and then works again. The
/// number itself is always a whole value (it is stored atomically), either
/// the one before or the one after the dead holder's last `set`.
pub struct Value<T: Element> {
    cell: Cell,
    _t: PhantomData<T>,
}

impl<T: Element> Clone for Value<T> {
    fn clone(&self) -> Self {
        Value {
            cell: self.cell.clone(),
            _t: PhantomData,
        }
    }
}

impl<T: Element> fmt::Debug for Value<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Value")
            .field("type", &std::any::type_name::<T>())
            .finish_non_exhaustive()
    }
}

/// Holds the lock of a [`Value`]; read and write the number while held.
#[must_use = "the lock is released as soon as the guard is dropped"]
pub struct ValueGuard<'a, T: Element> {
    value: &'a Value<T>,
    _guard: RawGuard<'a>,
}

impl<T: Element> ValueGuard<'_, T> {
    /// The number.
    pub fn get(&self) -> T {
        self.value.load()
    }

    /// Replaces the number.
    pub fn set(&mut self, value: T) {
        self.value.store(value);
    }
}

impl<T: Element> fmt::Debug for ValueGuard<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("ValueGuard").field(&self.get()).finish()
    }
}

impl<T: Element> Value<T> {
    /// A new cell holding `value`.
    ///
    /// # Errors
    ///
    /// [`SharedMemory`](ErrorKind::SharedMemory) if its memory cannot be
    /// created.
    pub fn new(value: T) -> Result<Value<T>> {
        let v = Value {
            cell: Cell::create(VALUE | T::TAG << 8, c"multiproc-value")?,
            _t: PhantomData,
        };
        v.store(value);
        Ok(v)
    }

    fn atomic(&self) -> &T::Atomic {
        let word = self.cell.word(0);
        // SAFETY: an 8-aligned u64 word of the live mapping; T::Atomic is at
        // most 8 bytes with alignment equal to its size (const assertions
        // in `element`), so it fits the word; any bit pattern is valid.
        unsafe { &*(word as *const AtomicU64).cast::<T::Atomic>() }
    }

    fn load(&self) -> T {
        T::load(self.atomic(), Ordering::Acquire)
    }

    fn store(&self, value: T) {
        T::store(self.atomic(), value, Ordering::Release);
    }

    /// Locks the cell and returns a guard to read and write it.
    ///
    /// # Errors
    ///
    /// [`OwnerDied`](ErrorKind::OwnerDied) as for [`Lock::lock`].
    ///
    /// # Panics
    ///
    /// If this thread already holds the lock.
    pub fn lock(&self) -> Result<ValueGuard<'_, T>> {
        match self.cell.mutex.lock() {
            Ok(g) => Ok(ValueGuard {
                value: self,
                _guard: g,
            }),
            Err(_died) => Err(owner_died()),
        }
    }

    /// The number, read under the lock.
    ///
    /// # Errors
    ///
    /// As [`lock`](Self::lock).
    ///
    /// # Panics
    ///
    /// As [`lock`](Self::lock).
    pub fn get(&self) -> Result<T> {
        Ok(self.lock()?.get())
    }

    /// Replaces the number under the lock.
    ///
    /// # Errors
    ///
    /// As [`lock`](Self::lock).
    ///
    /// # Panics
    ///
    /// As [`lock`](Self::lock).
    pub fn set(&self, value: T) -> Result<()> {
        self.lock()?.set(value);
        Ok(())
    }

    /// Replaces the number with `f(number)` under the lock, and returns the
    /// new number (`value.update(|v| v + 1)` is an exact shared counter).
    ///
    /// # Errors
    ///
    /// As [`lock`](Self::lock).
    ///
    /// # Panics
    ///
    /// As [`lock`](Self::lock), and if `f` panics (the lock is released).
    pub fn update(&self, f: impl FnOnce(T) -> T) -> Result<T> {
        let mut g = self.lock()?;
        let new = f(g.get());
        g.set(new);
        Ok(new)
    }
}

/// Serialises as a reference to the shared memory (its descriptor).
impl<T: Element> Serialize for Value<T> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.cell.seg.serialize(serializer)
    }
}

impl<'de, T: Element> Deserialize<'de> for Value<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let seg = Segment::deserialize(deserializer)?;
        let cell = Cell::open(seg, VALUE | T::TAG << 8).map_err(serde::de::Error::custom)?;
        Ok(Value {
            cell,
            _t: PhantomData,
        })
    }
}

/// A flag that processes wait for (Python's `multiprocessing.Event`):
/// [`set`](Self::set) wakes every waiter, [`clear`](Self::clear) resets.
#[derive(Clone)]
pub struct Event {
    cell: Cell,
}

handle_serde!(Event, EVENT);

impl Event {
    /// A new event, not set.
    ///
    /// # Errors
    ///
    /// [`SharedMemory`](ErrorKind::SharedMemory) if its memory cannot be
    /// created.
    pub fn new() -> Result<Event> {
        Ok(Event {
            cell: Cell::create(EVENT, c"multiproc-event")?,
        })
    }

    fn flag(&self) -> &AtomicU64 {
        self.cell.word(0)
    }

    /// Sets the flag and wakes every waiter, in every process.
    pub fn set(&self) {
        let _g = self.cell.lock();
        self.flag().store(1, Ordering::Release);
        self.cell.cond.notify_all();
    }

    /// Clears the flag.
    pub fn clear(&self) {
        let _g = self.cell.lock();
        self.flag().store(0, Ordering::Release);
    }

    /// `true` if the flag is set.
    pub fn is_set(&self) -> bool {
        self.flag().load(Ordering::Acquire) != 0
    }

    /// Waits until the flag is set (returns at once if it is).
    pub fn wait(&self) {
        let g = self.cell.lock();
        self.cell.wait_until(&g, None, || self.is_set());
    }

    /// Waits at most `timeout` for the flag; returns whether it is set.
    pub fn wait_timeout(&self, timeout: Duration) -> bool {
        let g = self.cell.lock();
        self.cell
            .wait_until(&g, deadline(timeout), || self.is_set())
    }
}

/// A counter of permits shared by processes (Python's
/// `multiprocessing.Semaphore`): [`acquire`](Self::acquire) takes one,
/// waiting while there are none; [`release`](Self::release) gives one back.
///
/// A process that dies holding permits does not give them back: there is
/// no owner to detect. Use a [`Lock`] when a dead holder must be noticed.
#[derive(Clone)]
pub struct Semaphore {
    cell: Cell,
}

handle_serde!(Semaphore, SEMAPHORE);

impl Semaphore {
    /// A new semaphore with `permits` permits.
    ///
    /// # Errors
    ///
    /// [`SharedMemory`](ErrorKind::SharedMemory) if its memory cannot be
    /// created.
    pub fn new(permits: u64) -> Result<Semaphore> {
        let s = Semaphore {
            cell: Cell::create(SEMAPHORE, c"multiproc-semaphore")?,
        };
        s.permits().store(permits, Ordering::Relaxed);
        Ok(s)
    }

    fn permits(&self) -> &AtomicU64 {
        self.cell.word(0)
    }

    /// Permits available right now.
    pub fn available(&self) -> u64 {
        self.permits().load(Ordering::Acquire)
    }

    fn take(&self, deadline: Option<Instant>) -> bool {
        let g = self.cell.lock();
        if !self.cell.wait_until(&g, deadline, || self.available() > 0) {
            return false;
        }
        self.permits().fetch_sub(1, Ordering::AcqRel);
        true
    }

    /// Takes a permit, waiting while there is none.
    pub fn acquire(&self) {
        self.take(None);
    }

    /// Takes a permit if one is available; returns whether it did.
    pub fn try_acquire(&self) -> bool {
        self.take(Some(Instant::now()))
    }

    /// Takes a permit, waiting at most `timeout`; returns whether it did.
    pub fn acquire_timeout(&self, timeout: Duration) -> bool {
        self.take(deadline(timeout))
    }

    /// Gives a permit back and wakes one waiter.
    pub fn release(&self) {
        let _g = self.cell.lock();
        self.permits().fetch_add(1, Ordering::AcqRel);
        self.cell.cond.notify_one();
    }
}

/// A meeting point for a fixed number of parties (Python's
/// `multiprocessing.Barrier`): each [`wait`](Self::wait) blocks until
/// `parties` waits have been made, then all return together and the
/// barrier is ready for the next round.
///
/// # If a party dies
///
/// A party that dies before arriving never arrives: the others would wait
/// forever in [`wait`](Self::wait). Use [`wait_timeout`](Self::wait_timeout)
/// (which *breaks* the barrier when it expires, so every other waiter gets
/// [`BarrierBroken`](ErrorKind::BarrierBroken) too, as in Python), or call
/// [`abort`](Self::abort) from a process that noticed the death (for
/// example after `Process::join` reported it).
#[derive(Clone)]
pub struct Barrier {
    cell: Cell,
}

handle_serde!(Barrier, BARRIER);

/// What [`Barrier::wait`] returns: exactly one party of each round is the
/// leader.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BarrierWaitResult {
    leader: bool,
}

impl BarrierWaitResult {
    /// `true` for one party (the last to arrive) of each round.
    pub fn is_leader(&self) -> bool {
        self.leader
    }
}

const PARTIES: usize = 0;
const ARRIVED: usize = 1;
const GENERATION: usize = 2;
const BROKEN: usize = 3;

impl Barrier {
    /// A new barrier for `parties` parties.
    ///
    /// # Errors
    ///
    /// [`SharedMemory`](ErrorKind::SharedMemory) if its memory cannot be
    /// created.
    ///
    /// # Panics
    ///
    /// If `parties` is 0.
    pub fn new(parties: u64) -> Result<Barrier> {
        assert!(parties > 0, "a barrier needs at least one party");
        let b = Barrier {
            cell: Cell::create(BARRIER, c"multiproc-barrier")?,
        };
        b.cell.word(PARTIES).store(parties, Ordering::Relaxed);
        Ok(b)
    }

    /// The number of parties.
    pub fn parties(&self) -> u64 {
        self.cell.word(PARTIES).load(Ordering::Relaxed)
    }

    fn wait_inner(&self, deadline: Option<Instant>) -> Result<BarrierWaitResult> {
        let w = |i| self.cell.word(i);
        let g = self.cell.lock();
        if w(BROKEN).load(Ordering::Acquire) != 0 {
            return Err(Error::new(ErrorKind::BarrierBroken));
        }
        let generation = w(GENERATION).load(Ordering::Acquire);
        let arrived = w(ARRIVED).load(Ordering::Relaxed) + 1;
        if arrived >= self.parties() {
            w(ARRIVED).store(0, Ordering::Relaxed);
            w(GENERATION).store(generation + 1, Ordering::Release);
            self.cell.cond.notify_all();
            return Ok(BarrierWaitResult { leader: true });
        }
        w(ARRIVED).store(arrived, Ordering::Relaxed);
        let passed = self.cell.wait_until(&g, deadline, || {
            w(GENERATION).load(Ordering::Acquire) != generation
                || w(BROKEN).load(Ordering::Acquire) != 0
        });
        if w(GENERATION).load(Ordering::Acquire) != generation {
            return Ok(BarrierWaitResult { leader: false });
        }
        if !passed {
            // Timed out: break the barrier for everyone, as Python does.
            w(BROKEN).store(1, Ordering::Release);
            self.cell.cond.notify_all();
        }
        Err(Error::new(ErrorKind::BarrierBroken))
    }

    /// Waits until all parties have called `wait`.
    ///
    /// # Errors
    ///
    /// [`BarrierBroken`](ErrorKind::BarrierBroken) if the barrier is or
    /// becomes broken ([`abort`](Self::abort), or another party's
    /// [`wait_timeout`](Self::wait_timeout) expired).
    pub fn wait(&self) -> Result<BarrierWaitResult> {
        self.wait_inner(None)
    }

    /// As [`wait`](Self::wait), for at most `timeout`; when it expires the
    /// barrier is broken for every party.
    ///
    /// # Errors
    ///
    /// [`BarrierBroken`](ErrorKind::BarrierBroken) on timeout, or as
    /// [`wait`](Self::wait).
    pub fn wait_timeout(&self, timeout: Duration) -> Result<BarrierWaitResult> {
        self.wait_inner(deadline(timeout))
    }

    /// Breaks the barrier: every current and future waiter gets
    /// [`BarrierBroken`](ErrorKind::BarrierBroken) until
    /// [`reset`](Self::reset).
    pub fn abort(&self) {
        let _g = self.cell.lock();
        self.cell.word(BROKEN).store(1, Ordering::Release);
        self.cell.cond.notify_all();
    }

    /// Mends a broken barrier and starts a new round with nobody waiting.
    /// Parties waiting in the current round (if it was not broken) are
    /// released as if the round had completed.
    pub fn reset(&self) {
        let _g = self.cell.lock();
        let w = |i| self.cell.word(i);
        w(ARRIVED).store(0, Ordering::Relaxed);
        w(BROKEN).store(0, Ordering::Release);
        w(GENERATION).fetch_add(1, Ordering::AcqRel);
        self.cell.cond.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shm::segment::tests::round_trip;
    use std::sync::Arc;
    use std::sync::atomic::AtomicUsize;

    #[test]
    fn value_counts_exactly_across_threads() {
        let v = Value::<u64>::new(5).unwrap();
        let handles: Vec<_> = (0..4)
            .map(|_| {
                let v = round_trip(&v);
                std::thread::spawn(move || {
                    for _ in 0..1000 {
                        v.update(|x| x + 1).unwrap();
                    }
                })
            })
            .collect();
        for h in handles {
            h.join().unwrap();
        }
        assert_eq!(v.get().unwrap(), 4005);
        let f = Value::<f64>::new(0.5).unwrap();
        f.set(2.25).unwrap();
        assert_eq!(round_trip(&f).get().unwrap(), 2.25);
    }

    #[test]
    fn a_dead_holder_gives_owner_died_once() {
        let lock = Lock::new().unwrap();
        let l2 = round_trip(&lock);
        std::thread::spawn(move || std::mem::forget(l2.lock().unwrap()))
            .join()
            .unwrap();
        assert!(lock.lock().unwrap_err().is_owner_died());
        let _g = lock.lock().unwrap();
        assert!(lock.try_lock().unwrap().is_none());
    }

    #[test]
    fn handles_of_another_kind_are_refused() {
        let e = Event::new().unwrap();
        let (bytes, fds) = crate::fdpass::capture(|| postcard::to_stdvec(&e).unwrap());
        let got =
            crate::fdpass::with_table(fds, || postcard::from_bytes::<Lock>(&bytes).map(|_| ()));
        assert!(got.is_err());
    }

    #[test]
    fn event_semaphore_and_barrier_work_across_threads() {
        let e = Event::new().unwrap();
        assert!(!e.wait_timeout(Duration::from_millis(10)));
        let e2 = round_trip(&e);
        let t = std::thread::spawn(move || e2.wait());
        std::thread::sleep(Duration::from_millis(20));
        e.set();
        t.join().unwrap();
        assert!(e.is_set());
        e.clear();
        assert!(!e.is_set());

        let s = Semaphore::new(1).unwrap();
        s.acquire();
        assert!(!s.try_acquire());
        assert!(!s.acquire_timeout(Duration::from_millis(10)));
        s.release();
        assert!(s.try_acquire());

        let b = Barrier::new(3).unwrap();
        let leaders = Arc::new(AtomicUsize::new(0));
        let ts: Vec<_> = (0..3)
            .map(|_| {
                let (b, leaders) = (round_trip(&b), leaders.clone());
                std::thread::spawn(move || {
                    for _ in 0..5 {
                        if b.wait().unwrap().is_leader() {
                            leaders.fetch_add(1, Ordering::SeqCst);
                        }
                    }
                })
            })
            .collect();
        for t in ts {
            t.join().unwrap();
        }
        assert_eq!(leaders.load(Ordering::SeqCst), 5);

        let lonely = Barrier::new(2).unwrap();
        assert!(
            lonely
                .wait_timeout(Duration::from_millis(10))
                .unwrap_err()
                .is_barrier_broken()
        );
        assert!(lonely.wait().unwrap_err().is_barrier_broken());
        lonely.reset();
        let l2 = lonely.clone();
        let t = std::thread::spawn(move || l2.wait().unwrap());
        lonely.wait().unwrap();
        t.join().unwrap();
    }
}
