//! Process-shared synchronisation handles: [`Lock`], [`Value`], [`Event`],
//! [`Semaphore`], [`Barrier`]. Each lives in a small segment of its own
//! (one page) and is passed to workers as an ordinary argument.
//!
//! Segment layout, shared by all of them:
//!
//! | bytes | content |
//! |---|---|
//! | `0..8` | kind tag (so an `Event` cannot be received as a `Lock`) |
//! | `64..128` | [`RawMutex`] (used by `Lock` and `Value`) |
//! | `128..192` | [`RawCondvar`] (its sequence word wakes waiters of `Event`, `Semaphore` and `Barrier`) |
//! | `192..` | the handle's own state words (`u64` each) |
//!
//! # Shared words are untrusted
//!
//! Any process holding a handle can write any of these bytes. The kind tag
//! is checked once, when a handle arrives; the mutex is
//! [`RawMutex`], which trusts nothing in its words; and every state word
//! is read as follows:
//!
//! * `Value`: the number. Every bit pattern is a number.
//! * `Event`: the flag. Non-zero is set.
//! * `Semaphore`: the count of permits. Every value is a count; taking a
//!   permit never goes below zero, and giving one back saturates at
//!   `u64::MAX` rather than wrapping.
//! * `Barrier`: the number of parties (written once, at creation, and read
//!   once into the handle when it arrives; the handle never reads it
//!   again), and one state word packing the generation (bits `0..31`), the
//!   broken flag (bit 31) and the parties arrived (bits `32..64`). More
//!   parties arrived than the barrier has is no state a correct process
//!   writes: [`Barrier::wait`] fails with
//!   [`Corrupted`](ErrorKind::Corrupted), and [`Barrier::reset`] repairs
//!   it.
//!
//! `Event`, `Semaphore` and `Barrier` take no lock at all: each change is
//! one atomic operation on one word followed by a notify of the condvar's
//! sequence word, and a waiter reads the sequence before it checks its
//! condition (an event count), so no wake-up is lost and no word another
//! process holds can keep them from returning on time.

use std::fmt;
use std::marker::PhantomData;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::element::Element;
use super::segment::{Segment, shm_error};
use super::sync::{RawCondvar, RawGuard, RawMutex};
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

    /// Sleeps until the condvar's sequence moves on from `seen` (or
    /// spuriously), at most until `deadline`; `false` once it has passed.
    fn wait_changed(&self, seen: u32, deadline: Option<Instant>) -> bool {
        self.cond.wait_changed(seen, deadline)
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
/// # Another process's writes
///
/// The lock is a word in shared memory naming its holder (thread id and
/// pid), which any process holding the lock can overwrite. This process
/// never trusts it beyond the word's value: a word naming no live thread,
/// or naming this very thread when this thread does not hold the lock, is
/// taken over and reported as [`OwnerDied`](ErrorKind::OwnerDied); a word
/// naming a live thread is waited for like a real holder, so
/// [`lock_timeout`](Self::lock_timeout) and [`try_lock`](Self::try_lock)
/// return on time and [`lock`](Self::lock) waits. A dead holder is noticed
/// within about ten milliseconds of waiting; a holder whose pid the kernel
/// has already given to a new process is taken for that process.
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
///
/// Takes no lock, so no other process can hold up [`set`](Self::set),
/// [`clear`](Self::clear) or [`is_set`](Self::is_set), and
/// [`wait_timeout`](Self::wait_timeout) returns on time whatever is
/// written into its memory. Any non-zero flag word reads as set.
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
        self.flag().store(1, Ordering::Release);
        self.cell.cond.notify_all();
    }

    /// Clears the flag.
    pub fn clear(&self) {
        self.flag().store(0, Ordering::Release);
    }

    /// `true` if the flag is set.
    pub fn is_set(&self) -> bool {
        self.flag().load(Ordering::Acquire) != 0
    }

    fn wait_until(&self, deadline: Option<Instant>) -> bool {
        loop {
            let seen = self.cell.cond.sequence();
            if self.is_set() {
                return true;
            }
            if !self.cell.wait_changed(seen, deadline) {
                return self.is_set();
            }
        }
    }

    /// Waits until the flag is set (returns at once if it is).
    pub fn wait(&self) {
        self.wait_until(None);
    }

    /// Waits at most `timeout` for the flag; returns whether it is set.
    pub fn wait_timeout(&self, timeout: Duration) -> bool {
        self.wait_until(deadline(timeout))
    }
}

/// A counter of permits shared by processes (Python's
/// `multiprocessing.Semaphore`): [`acquire`](Self::acquire) takes one,
/// waiting while there are none; [`release`](Self::release) gives one back.
///
/// A process that dies holding permits does not give them back: there is
/// no owner to detect. Use a [`Lock`] when a dead holder must be noticed.
///
/// Takes no lock: the count is one word changed by compare-and-swap, so
/// no other process can keep [`try_acquire`](Self::try_acquire) or
/// [`acquire_timeout`](Self::acquire_timeout) from returning on time. Any
/// value of the word is a count of permits; it never goes below zero and
/// saturates at `u64::MAX` instead of wrapping.
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

    /// Takes a permit if there is one, never below zero.
    fn take_one(&self) -> bool {
        self.permits()
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |p| p.checked_sub(1))
            .is_ok()
    }

    fn take(&self, deadline: Option<Instant>) -> bool {
        loop {
            let seen = self.cell.cond.sequence();
            if self.take_one() {
                return true;
            }
            if !self.cell.wait_changed(seen, deadline) {
                // A wake-up aimed at this waiter may have come with the
                // deadline: take the permit it announced rather than
                // leave it to nobody.
                return self.take_one();
            }
        }
    }

    /// Takes a permit, waiting while there is none.
    pub fn acquire(&self) {
        self.take(None);
    }

    /// Takes a permit if one is available; returns whether it did.
    pub fn try_acquire(&self) -> bool {
        self.take_one()
    }

    /// Takes a permit, waiting at most `timeout`; returns whether it did.
    pub fn acquire_timeout(&self, timeout: Duration) -> bool {
        self.take(deadline(timeout))
    }

    /// Gives a permit back and wakes one waiter. The count saturates at
    /// `u64::MAX`.
    pub fn release(&self) {
        let _ = self
            .permits()
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |p| {
                Some(p.saturating_add(1))
            });
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
///
/// # Shared state
///
/// The number of parties is kept in the handle (from its creation, or read
/// once when the handle arrives in a process). The round's state is one
/// word changed by compare-and-swap, without a lock, so no other process
/// can keep [`wait_timeout`](Self::wait_timeout) from returning on time.
/// A state word that counts as many parties arrived as the barrier has, or
/// more, was written by no correct process: `wait` fails with
/// [`Corrupted`](ErrorKind::Corrupted) until [`reset`](Self::reset).
#[derive(Clone)]
pub struct Barrier {
    cell: Cell,
    parties: u64,
}

/// Serialises as a reference to the shared memory (its descriptor); the
/// number of parties is read from it once, on arrival.
impl Serialize for Barrier {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.cell.seg.serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for Barrier {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let seg = Segment::deserialize(deserializer)?;
        let cell = Cell::open(seg, BARRIER).map_err(serde::de::Error::custom)?;
        let parties = cell.word(PARTIES).load(Ordering::Acquire);
        if !(1..=MAX_PARTIES).contains(&parties) {
            return Err(serde::de::Error::custom(format!(
                "a barrier arrived with {parties} parties"
            )));
        }
        Ok(Barrier { cell, parties })
    }
}

impl fmt::Debug for Barrier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Barrier")
            .field("parties", &self.parties)
            .finish_non_exhaustive()
    }
}

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

/// State word index of the number of parties.
const PARTIES: usize = 0;
/// State word index of the round's state: generation, broken, arrived.
const ROUND: usize = 1;
/// Generation bits of the round word.
const GENERATION: u64 = (1 << 31) - 1;
/// Broken bit of the round word.
const BROKEN: u64 = 1 << 31;
/// Shift of the arrived count in the round word.
const ARRIVED_SHIFT: u32 = 32;
/// Most parties a barrier can have: the arrived count is 32 bits.
const MAX_PARTIES: u64 = u32::MAX as u64;

fn generation(round: u64) -> u64 {
    round & GENERATION
}

/// The round word of a fresh round after `round`: next generation, nobody
/// arrived, not broken.
fn next_round(round: u64) -> u64 {
    generation(round).wrapping_add(1) & GENERATION
}

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
    /// If `parties` is 0 or more than `u32::MAX`.
    pub fn new(parties: u64) -> Result<Barrier> {
        assert!(parties > 0, "a barrier needs at least one party");
        assert!(
            parties <= MAX_PARTIES,
            "a barrier has at most {MAX_PARTIES} parties"
        );
        let b = Barrier {
            cell: Cell::create(BARRIER, c"multiproc-barrier")?,
            parties,
        };
        b.cell.word(PARTIES).store(parties, Ordering::Relaxed);
        Ok(b)
    }

    /// The number of parties.
    pub fn parties(&self) -> u64 {
        self.parties
    }

    fn round(&self) -> &AtomicU64 {
        self.cell.word(ROUND)
    }

    fn wait_inner(&self, deadline: Option<Instant>) -> Result<BarrierWaitResult> {
        let round = self.round();
        // Arrive: count this party in, or complete the round.
        let mut seen = round.load(Ordering::Acquire);
        let mine = loop {
            if seen & BROKEN != 0 {
                return Err(Error::new(ErrorKind::BarrierBroken));
            }
            let arrived = seen >> ARRIVED_SHIFT;
            if arrived >= self.parties {
                return Err(Error::new(ErrorKind::Corrupted(format!(
                    "barrier: the round word counts {arrived} parties arrived of {}",
                    self.parties
                ))));
            }
            let last = arrived + 1 == self.parties;
            let new = if last {
                next_round(seen)
            } else {
                seen + (1 << ARRIVED_SHIFT)
            };
            match round.compare_exchange_weak(seen, new, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) if last => {
                    self.cell.cond.notify_all();
                    return Ok(BarrierWaitResult { leader: true });
                }
                Ok(_) => break generation(seen),
                Err(now) => seen = now,
            }
        };
        // Wait for the generation to move on, or the barrier to break.
        loop {
            let seq = self.cell.cond.sequence();
            let now = round.load(Ordering::Acquire);
            if generation(now) != mine {
                return Ok(BarrierWaitResult { leader: false });
            }
            if now & BROKEN != 0 {
                return Err(Error::new(ErrorKind::BarrierBroken));
            }
            if !self.cell.wait_changed(seq, deadline) {
                break;
            }
        }
        // Timed out: break the round for everyone, as Python does, unless
        // it completed meanwhile.
        let broke = round.fetch_update(Ordering::AcqRel, Ordering::Acquire, |now| {
            (generation(now) == mine).then_some(now | BROKEN)
        });
        match broke {
            Ok(_) => {
                self.cell.cond.notify_all();
                Err(Error::new(ErrorKind::BarrierBroken))
            }
            Err(_) => Ok(BarrierWaitResult { leader: false }),
        }
    }

    /// Waits until all parties have called `wait`.
    ///
    /// # Errors
    ///
    /// [`BarrierBroken`](ErrorKind::BarrierBroken) if the barrier is or
    /// becomes broken ([`abort`](Self::abort), or another party's
    /// [`wait_timeout`](Self::wait_timeout) expired);
    /// [`Corrupted`](ErrorKind::Corrupted) if the shared round word counts
    /// as many parties arrived as the barrier has, or more.
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
        self.round().fetch_or(BROKEN, Ordering::AcqRel);
        self.cell.cond.notify_all();
    }

    /// Mends a broken (or corrupted) barrier and starts a new round with
    /// nobody waiting. Parties waiting in the current round (if it was not
    /// broken) are released as if the round had completed.
    pub fn reset(&self) {
        let _ = self
            .round()
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |now| {
                Some(next_round(now))
            });
        self.cell.cond.notify_all();
    }
}

#[cfg(test)]
#[path = "primitives_tests.rs"]
mod tests;
