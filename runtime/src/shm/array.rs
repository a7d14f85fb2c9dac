//! [`SharedArray`]: a fixed-length array of plain numbers in shared memory,
//! read and written in place by any number of processes.

use std::fmt;
use std::marker::PhantomData;
use std::ops::{Deref, DerefMut, Range};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::element::{Element, IntElement, private::IntSealed};
use super::segment::Segment;
use super::segment::shm_error;
use super::sync::{OwnerDied, RawCondvar, RawGuard, RawMutex, lock_recovering, process_alive};
use crate::error::{Error, ErrorKind, Result};

// Segment layout. The header is one page; the data starts at DATA_AT, so it
// is aligned for every element type. Bytes 16..64 are reserved.
const MAGIC: u64 = 0x4d50_4152_5241_5900; // "MPARRAY\0"
const TAG_AT: usize = 0;
const LEN_AT: usize = 8;
const MUTEX_AT: usize = 64;
const CONDVAR_AT: usize = 128;
const TABLE_AT: usize = 192;
/// Most leases held at once, over all processes.
const LEASES: usize = 120;
/// A lease: holder pid (0 = free), start, end (element indices).
const ENTRY: usize = 32;
const DATA_AT: usize = 4096;
const _: () = assert!(TABLE_AT + LEASES * ENTRY <= DATA_AT);
/// How long a waiting lease sleeps before it looks for dead holders again.
const RECHECK: Duration = Duration::from_millis(100);

/// A lease this process holds: the array's segment identity, the table
/// slot, and the range. The shared table is where other processes see the
/// lease; this private list is what this process trusts about its own.
#[derive(PartialEq, Eq)]
struct OwnLease {
    array: (u64, u64),
    slot: usize,
    start: usize,
    end: usize,
}

/// Every lease held by this process, in any array.
static OWN_LEASES: Mutex<Vec<OwnLease>> = Mutex::new(Vec::new());
/// `OWN_LEASES.len()`, readable without the mutex: unleased writes skip the
/// list while it is 0.
static OWN_LEASE_COUNT: AtomicUsize = AtomicUsize::new(0);

fn own_leases() -> std::sync::MutexGuard<'static, Vec<OwnLease>> {
    // The list is valid after any panic: every change is one push or one
    // remove.
    OWN_LEASES.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A fixed-length array of plain numbers ([`Element`]: integers, floats) in
/// shared memory. Every process that holds a handle sees the same elements;
/// nothing is copied when a handle is passed to a worker.
///
/// This is the way to hand a worker data too large to copy (Python's
/// `shared_memory` with a numpy array over it): the caller fills the array
/// once, workers receive handles, read it in bulk with
/// [`read_chunks`](Self::read_chunks) at the speed of reading their own
/// memory, and write their parts in place through leases.
///
/// # Access model
///
/// Three ways in, all safe:
///
/// * **Element by element, through atomics**: [`load`](Self::load),
///   [`store`](Self::store), [`iter`](Self::iter), and for integers
///   [`fetch_add`](Self::fetch_add), [`fetch_sub`](Self::fetch_sub),
///   [`compare_exchange`](Self::compare_exchange) (shared counters without
///   locks). Atomic access is what makes reading while another process
///   writes well-defined: a read returns either the old or the new value of
///   an element, never a torn one.
/// * **In bulk, as private copies**: [`read_chunks`](Self::read_chunks)
///   (cache-sized copies handed to a callback, for reading any amount at
///   memory speed), [`copy_to_slice`](Self::copy_to_slice) and
///   [`to_vec`](Self::to_vec). Each element is read whole, as by `load`,
///   but many times faster; the copy is this process's memory, so what
///   other processes write meanwhile can change neither it nor what the
///   code using it may assume. Safe code never gets shared memory as
///   `&[T]` outside a lease: another process could change it under a
///   borrow that the compiler assumes is frozen.
///
///   Reading a whole array while others write gives a mix of old and new
///   elements; order it with a [`Lock`](crate::Lock), a
///   [`Barrier`](crate::Barrier) or `join()` when a consistent snapshot
///   matters. Reads take no lease and never wait for one.
/// * **Disjoint parts, as `&mut [T]`**: [`chunk`](Self::chunk) /
///   [`lease`](Self::lease) hand out a [`ChunkMut`], an exclusive lease on
///   a range of elements recorded in the segment's header, so no two
///   holders (in any processes) ever overlap. It derefs to `&mut [T]` for
///   fast plain loops, and dropping it releases the range. Writing an
///   element that this process has leased through [`store`](Self::store)
///   or `fetch_*` panics (see their `# Panics`). Reads of a leased range,
///   atomic or in bulk, are allowed and see the holder's progress.
///
/// [`as_mut_slice_unchecked`](Self::as_mut_slice_unchecked) is the
/// `unsafe` escape hatch.
///
/// A lease whose holder process died is reclaimed by the next process that
/// wants an overlapping range.
///
/// # The lease table is untrusted
///
/// Every process holding the array can write the lease table. This process
/// keeps its own leases in a private list and checks its writes against
/// that list only: an entry another process claims (or forged) never makes
/// this process panic. An entry naming no process, a dead one, or this
/// process when its private list has no such lease, is reclaimed. An entry
/// of a live process whose range lies outside the array is reported as
/// [`Corrupted`](crate::ErrorKind::Corrupted). An entry of a live process
/// is honoured as a lease, forged or not: [`lease`](Self::lease) waits for
/// it, [`lease_timeout`](Self::lease_timeout) returns on time. Releasing a
/// lease takes no lock.
///
/// ```ignore
/// #[worker]
/// fn double(data: SharedArray<f64>, index: usize) -> multiproc::Result<()> {
///     let mut chunk = data.chunk(1000, index)?;
///     for x in chunk.iter_mut() { *x *= 2.0; }
///     Ok(())
/// }
/// let data = SharedArray::from_slice(&values)?;
/// for p in (0..data.chunk_count(1000)).map(|i| Process::spawn(double, (data.clone(), i))) { p?.join()??; }
/// ```
pub struct SharedArray<T: Element> {
    seg: Segment,
    leases: RawMutex,
    released: RawCondvar,
    len: usize,
    _t: PhantomData<T>,
}

impl<T: Element> Clone for SharedArray<T> {
    fn clone(&self) -> Self {
        SharedArray {
            seg: self.seg.clone(),
            leases: self.leases.clone(),
            released: self.released.clone(),
            len: self.len,
            _t: PhantomData,
        }
    }
}

impl<T: Element> fmt::Debug for SharedArray<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SharedArray")
            .field("type", &std::any::type_name::<T>())
            .field("len", &self.len)
            .finish()
    }
}

fn my_pid() -> u64 {
    u64::from(std::process::id())
}

/// How long a lease attempt may wait.
#[derive(Clone, Copy)]
enum LeaseWait {
    /// Not for other leases (`try_lease`).
    No,
    /// Until this instant, for everything.
    Until(Instant),
    /// As long as it takes.
    Forever,
}

impl<T: Element> SharedArray<T> {
    /// A new array of `len` zeros.
    ///
    /// # Errors
    ///
    /// [`SharedMemory`](crate::ErrorKind::SharedMemory) if the memory cannot be
    /// created (out of memory, descriptor limit).
    pub fn zeroed(len: usize) -> Result<SharedArray<T>> {
        let bytes = len
            .checked_mul(size_of::<T>())
            .and_then(|b| b.checked_add(DATA_AT))
            .ok_or_else(|| shm_error(std::io::Error::other("array too large")))?;
        let seg = Segment::create(c"multiproc-array", bytes).map_err(shm_error)?;
        // Large arrays are unmapped behind their last handle: a worker
        // drops its handle just before it answers.
        seg.unmap_behind();
        seg.atomic_u64(LEN_AT).store(len as u64, Ordering::Relaxed);
        seg.atomic_u64(TAG_AT)
            .store(MAGIC | T::TAG, Ordering::Relaxed);
        let leases = RawMutex::init(&seg, MUTEX_AT).map_err(shm_error)?;
        let released = RawCondvar::init(&seg, CONDVAR_AT);
        Ok(SharedArray {
            seg,
            leases,
            released,
            len,
            _t: PhantomData,
        })
    }

    /// A new array holding a copy of `values`.
    ///
    /// # Errors
    ///
    /// As [`zeroed`](Self::zeroed).
    pub fn from_slice(values: &[T]) -> Result<SharedArray<T>> {
        let a = SharedArray::zeroed(values.len())?;
        // SAFETY: the array was just created and is not shared with any
        // other handle, thread or process yet.
        unsafe { a.as_mut_slice_unchecked() }.copy_from_slice(values);
        Ok(a)
    }

    fn open(seg: Segment) -> std::io::Result<SharedArray<T>> {
        let bad = |m: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, m.to_owned());
        if !seg.is_writable() || seg.len() < DATA_AT {
            return Err(bad("not a shared array"));
        }
        if seg.atomic_u64(TAG_AT).load(Ordering::Relaxed) != MAGIC | T::TAG {
            return Err(bad(&format!(
                "not a shared array of {}",
                std::any::type_name::<T>()
            )));
        }
        let len = usize::try_from(seg.atomic_u64(LEN_AT).load(Ordering::Relaxed))
            .map_err(|_| bad("bad array length"))?;
        if len
            .checked_mul(size_of::<T>())
            .and_then(|b| b.checked_add(DATA_AT))
            != Some(seg.len())
        {
            return Err(bad("shared array length does not match its segment"));
        }
        let leases = RawMutex::open(&seg, MUTEX_AT)?;
        let released = RawCondvar::open(&seg, CONDVAR_AT);
        seg.unmap_behind();
        Ok(SharedArray {
            seg,
            leases,
            released,
            len,
            _t: PhantomData,
        })
    }

    /// Number of elements.
    pub fn len(&self) -> usize {
        self.len
    }

    /// `true` if the array has no elements.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The first element. Every access to the elements goes through this
    /// pointer, atomically or under the rules of the accessor that uses it.
    pub(super) fn data(&self) -> *mut T {
        // SAFETY: DATA_AT is inside the segment (checked at creation and in
        // `open`).
        unsafe { self.seg.as_ptr().add(DATA_AT).cast::<T>() }
    }

    fn cell(&self, index: usize) -> &T::Atomic {
        assert!(
            index < self.len,
            "index {index} out of bounds for a shared array of length {}",
            self.len
        );
        // SAFETY: in bounds (checked); DATA_AT is page-aligned and T::Atomic
        // has T's size and alignment (const assertions in `element`); any
        // bit pattern is valid; the mapping lives as long as `&self`.
        unsafe { &*self.data().add(index).cast::<T::Atomic>() }
    }

    /// Reads element `index` (an atomic load with `Acquire` ordering).
    ///
    /// # Panics
    ///
    /// If `index >= len()`.
    pub fn load(&self, index: usize) -> T {
        T::load(self.cell(index), Ordering::Acquire)
    }

    /// Writes element `index` (an atomic store with `Release` ordering).
    ///
    /// # Panics
    ///
    /// If `index >= len()`, or if the element is inside a range leased by
    /// a [`ChunkMut`] alive in this process: its holder has it as `&mut`.
    /// A lease taken at the same instant as the store may escape this
    /// check. Leases of other processes are not checked: their table
    /// entries are claims this process cannot verify.
    pub fn store(&self, index: usize, value: T) {
        self.check_not_leased(index);
        T::store(self.cell(index), value, Ordering::Release);
    }

    /// The segment under the array: its header page, then the elements.
    pub(super) fn segment(&self) -> &Segment {
        &self.seg
    }

    /// Where element `index` starts in the segment, in bytes.
    pub(super) fn offset_of(index: usize) -> usize {
        DATA_AT + index * size_of::<T>()
    }

    /// A copy of every element, read as [`copy_to_slice`](Self::copy_to_slice)
    /// reads them (each element whole; see the type's access model about
    /// concurrent writers).
    pub fn to_vec(&self) -> Vec<T> {
        let mut v = vec![T::default(); self.len];
        self.copy_to_slice(0, &mut v);
        v
    }

    /// The elements in order, each read atomically when the iterator
    /// reaches it. To read many elements,
    /// [`read_chunks`](Self::read_chunks) is many times faster.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = T> + '_ {
        (0..self.len).map(move |i| T::load(self.cell(i), Ordering::Acquire))
    }

    fn entry(&self, slot: usize) -> (&AtomicU64, &AtomicU64, &AtomicU64) {
        let at = TABLE_AT + slot * ENTRY;
        (
            self.seg.atomic_u64(at),
            self.seg.atomic_u64(at + 8),
            self.seg.atomic_u64(at + 16),
        )
    }

    /// Panics if this process holds a lease on element `index`.
    fn check_not_leased(&self, index: usize) {
        if OWN_LEASE_COUNT.load(Ordering::Relaxed) == 0 {
            return;
        }
        let array = self.seg.identity();
        if own_leases()
            .iter()
            .any(|l| l.array == array && l.start <= index && index < l.end)
        {
            panic!(
                "element {index} of a shared array is leased by a ChunkMut of this process; write it through that lease"
            );
        }
    }

    /// Clears table slot `slot` if it still names `holder`; `true` if the
    /// slot is free afterwards.
    fn reclaim(&self, slot: usize, holder: u64) -> bool {
        let (pid, _, _) = self.entry(slot);
        let _ = pid.compare_exchange(holder, 0, Ordering::AcqRel, Ordering::Relaxed);
        pid.load(Ordering::Acquire) == 0
    }

    /// Takes the lease on `range` if it is free. Called with the table
    /// lock. Every entry is validated before it counts (see the type's
    /// docs); a probe of the holder's liveness is made only for entries
    /// that would block or are malformed.
    fn take(&self, range: &Range<usize>) -> Result<Option<usize>> {
        let me = my_pid();
        let array = self.seg.identity();
        let (lo, hi) = (range.start as u64, range.end as u64);
        let mut free = None;
        for slot in 0..LEASES {
            let (pid, start, end) = self.entry(slot);
            let holder = pid.load(Ordering::Acquire);
            if holder == 0 {
                free.get_or_insert(slot);
                continue;
            }
            if holder == me {
                let own = own_leases()
                    .iter()
                    .find(|l| l.array == array && l.slot == slot)
                    .map(|l| (l.start as u64, l.end as u64));
                match own {
                    // Ours: the private range counts, not the shared one.
                    Some((s, e)) if s < hi && lo < e => return Ok(None),
                    Some(_) => {}
                    // This process holds no such lease: a forgery.
                    None => {
                        if self.reclaim(slot, holder) {
                            free.get_or_insert(slot);
                        }
                    }
                }
                continue;
            }
            let (s, e) = (start.load(Ordering::Relaxed), end.load(Ordering::Relaxed));
            let malformed = s > e || e > self.len as u64;
            let overlaps = s < hi && lo < e;
            if !malformed && !overlaps {
                continue;
            }
            if !process_alive(holder) {
                // The holder died with its lease (or never existed).
                if self.reclaim(slot, holder) {
                    free.get_or_insert(slot);
                }
                continue;
            }
            if malformed {
                return Err(Error::new(ErrorKind::Corrupted(format!(
                    "shared array lease table slot {slot}: process {holder} holds elements {s}..{e} of an array of {}",
                    self.len
                ))));
            }
            return Ok(None);
        }
        let Some(slot) = free else {
            return Err(shm_error(std::io::Error::other(format!(
                "more than {LEASES} shared array leases held at once"
            ))));
        };
        let (pid, start, end) = self.entry(slot);
        start.store(lo, Ordering::Relaxed);
        end.store(hi, Ordering::Relaxed);
        pid.store(me, Ordering::Release);
        own_leases().push(OwnLease {
            array,
            slot,
            start: range.start,
            end: range.end,
        });
        OWN_LEASE_COUNT.fetch_add(1, Ordering::Relaxed);
        Ok(Some(slot))
    }

    fn lease_inner(&self, range: Range<usize>, wait: LeaseWait) -> Result<Option<ChunkMut<'_, T>>> {
        assert!(
            range.start <= range.end && range.end <= self.len,
            "range {range:?} out of bounds for a shared array of length {}",
            self.len
        );
        loop {
            // Read before the scan: a release after it moves the sequence
            // on, so the wait below cannot miss it.
            let seen = self.released.sequence();
            let guard: RawGuard<'_> = match wait {
                LeaseWait::Until(deadline) => match self.leases.lock_until(deadline) {
                    Ok(Some(guard)) => guard,
                    Ok(None) => return Ok(None),
                    Err(died) => OwnerDied::into_guard(died),
                },
                LeaseWait::No | LeaseWait::Forever => lock_recovering(&self.leases),
            };
            let taken = self.take(&range);
            drop(guard);
            if let Some(slot) = taken? {
                return Ok(Some(ChunkMut {
                    array: self,
                    slot,
                    range,
                }));
            }
            let deadline = match wait {
                LeaseWait::No => return Ok(None),
                LeaseWait::Until(deadline) => Some(deadline),
                LeaseWait::Forever => None,
            };
            let now = Instant::now();
            if deadline.is_some_and(|d| now >= d) {
                return Ok(None);
            }
            // Woken by every release; the recheck looks for holders that
            // died without releasing.
            let recheck = now + RECHECK;
            let until = deadline.map_or(recheck, |d| d.min(recheck));
            self.released.wait_changed(seen, Some(until));
        }
    }

    /// An exclusive lease on the elements in `range`, waiting while any of
    /// them is leased by someone else.
    ///
    /// # Errors
    ///
    /// [`SharedMemory`](crate::ErrorKind::SharedMemory) if 120 leases are
    /// already held (over all processes);
    /// [`Corrupted`](crate::ErrorKind::Corrupted) if a live process's
    /// entry in the lease table has a range outside the array.
    ///
    /// # Panics
    ///
    /// If `range` is out of bounds. Waits forever if this thread already
    /// holds an overlapping lease (use [`try_lease`](Self::try_lease)), and
    /// for as long as a live process's entry (real or forged) overlaps it
    /// (use [`lease_timeout`](Self::lease_timeout)).
    pub fn lease(&self, range: Range<usize>) -> Result<ChunkMut<'_, T>> {
        self.lease_inner(range, LeaseWait::Forever)
            .map(|c| c.expect("a blocking lease returns a chunk"))
    }

    /// An exclusive lease on `range`, or `Ok(None)` at once if any element
    /// of it is leased by someone else (including this thread). It waits
    /// only for the lease table's lock, which correct processes hold just
    /// to scan the table.
    ///
    /// # Errors
    ///
    /// As [`lease`](Self::lease).
    ///
    /// # Panics
    ///
    /// If `range` is out of bounds.
    pub fn try_lease(&self, range: Range<usize>) -> Result<Option<ChunkMut<'_, T>>> {
        self.lease_inner(range, LeaseWait::No)
    }

    /// An exclusive lease on `range`, waiting at most `timeout` (for the
    /// lease table's lock and for overlapping leases together); `Ok(None)`
    /// if it expired. Returns on time whatever other processes wrote into
    /// the table.
    ///
    /// # Errors
    ///
    /// As [`lease`](Self::lease).
    ///
    /// # Panics
    ///
    /// If `range` is out of bounds.
    pub fn lease_timeout(
        &self,
        range: Range<usize>,
        timeout: Duration,
    ) -> Result<Option<ChunkMut<'_, T>>> {
        let wait = Instant::now()
            .checked_add(timeout)
            .map_or(LeaseWait::Forever, LeaseWait::Until);
        self.lease_inner(range, wait)
    }

    /// How many chunks of `chunk_len` elements cover the array (the last
    /// may be shorter).
    ///
    /// # Panics
    ///
    /// If `chunk_len` is 0.
    pub fn chunk_count(&self, chunk_len: usize) -> usize {
        assert!(chunk_len > 0, "chunk_len must be positive");
        self.len.div_ceil(chunk_len)
    }

    fn chunk_range(&self, chunk_len: usize, index: usize) -> Range<usize> {
        assert!(
            index < self.chunk_count(chunk_len),
            "chunk {index} of {chunk_len} elements is past the end of a shared array of length {}",
            self.len
        );
        let start = index * chunk_len;
        start..(start + chunk_len).min(self.len)
    }

    /// The lease on chunk `index` when the array is cut in chunks of
    /// `chunk_len` elements: [`lease`](Self::lease) of
    /// `index * chunk_len .. min((index + 1) * chunk_len, len)`.
    ///
    /// # Errors
    ///
    /// As [`lease`](Self::lease).
    ///
    /// # Panics
    ///
    /// If `chunk_len` is 0 or `index >= chunk_count(chunk_len)`.
    pub fn chunk(&self, chunk_len: usize, index: usize) -> Result<ChunkMut<'_, T>> {
        self.lease(self.chunk_range(chunk_len, index))
    }

    /// [`try_lease`](Self::try_lease) of chunk `index`, see
    /// [`chunk`](Self::chunk).
    ///
    /// # Errors
    ///
    /// As [`lease`](Self::lease).
    ///
    /// # Panics
    ///
    /// As [`chunk`](Self::chunk).
    pub fn try_chunk(&self, chunk_len: usize, index: usize) -> Result<Option<ChunkMut<'_, T>>> {
        self.try_lease(self.chunk_range(chunk_len, index))
    }

    /// The elements as a plain slice, without any lease.
    ///
    /// # Safety
    ///
    /// For as long as the slice lives, no thread in any process may write
    /// any element (no `store`, `fetch_*`, `ChunkMut`, or mutable slice).
    pub unsafe fn as_slice_unchecked(&self) -> &[T] {
        // SAFETY: `len` elements from DATA_AT are inside the mapping, which
        // lives as long as `&self`; the caller promises no writers.
        unsafe { std::slice::from_raw_parts(self.data(), self.len) }
    }

    /// The elements as a mutable slice, without any lease.
    ///
    /// # Safety
    ///
    /// For as long as the slice lives, no thread in any process may read or
    /// write any element by any other means (other handles, leases, other
    /// slices from this method).
    #[allow(clippy::mut_from_ref)]
    pub unsafe fn as_mut_slice_unchecked(&self) -> &mut [T] {
        // SAFETY: as in `as_slice_unchecked`; the caller promises exclusive
        // access.
        unsafe { std::slice::from_raw_parts_mut(self.data(), self.len) }
    }
}

impl<T: IntElement> SharedArray<T> {
    /// Adds `value` to element `index` atomically (wrapping on overflow) and
    /// returns the previous value. Lock-free, across processes.
    ///
    /// # Panics
    ///
    /// As [`store`](Self::store).
    pub fn fetch_add(&self, index: usize, value: T) -> T {
        self.check_not_leased(index);
        <T as IntSealed>::fetch_add(self.cell(index), value, Ordering::AcqRel)
    }

    /// Subtracts `value` from element `index` atomically (wrapping) and
    /// returns the previous value.
    ///
    /// # Panics
    ///
    /// As [`store`](Self::store).
    pub fn fetch_sub(&self, index: usize, value: T) -> T {
        self.check_not_leased(index);
        <T as IntSealed>::fetch_sub(self.cell(index), value, Ordering::AcqRel)
    }

    /// Stores `new` in element `index` if it holds `current`. Returns the
    /// previous value: `Ok` if it was `current` (and was replaced), `Err`
    /// with the actual value otherwise.
    ///
    /// # Errors
    ///
    /// `Err(actual)` when the element did not hold `current`.
    ///
    /// # Panics
    ///
    /// As [`store`](Self::store).
    pub fn compare_exchange(&self, index: usize, current: T, new: T) -> Result<T, T> {
        self.check_not_leased(index);
        <T as IntSealed>::compare_exchange(self.cell(index), current, new)
    }
}

/// Serialises as a reference to the shared memory (its descriptor), not as
/// the elements: the receiving worker maps the same memory.
impl<T: Element> Serialize for SharedArray<T> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.seg.serialize(serializer)
    }
}

impl<'de, T: Element> Deserialize<'de> for SharedArray<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let seg = Segment::deserialize(deserializer)?;
        SharedArray::open(seg).map_err(serde::de::Error::custom)
    }
}

/// An exclusive lease on a range of a [`SharedArray`], usable as
/// `&mut [T]`. No other lease (in any process) overlaps it while it lives;
/// dropping it releases the range.
pub struct ChunkMut<'a, T: Element> {
    array: &'a SharedArray<T>,
    slot: usize,
    range: Range<usize>,
}

impl<T: Element> ChunkMut<'_, T> {
    /// The element indices this lease covers.
    pub fn range(&self) -> Range<usize> {
        self.range.clone()
    }
}

impl<T: Element> Deref for ChunkMut<'_, T> {
    type Target = [T];
    fn deref(&self) -> &[T] {
        // SAFETY: the range is in bounds (checked when leased) and, while
        // the lease lives, nobody else may write it (leases never overlap;
        // atomic writes into it panic).
        unsafe {
            std::slice::from_raw_parts(self.array.data().add(self.range.start), self.range.len())
        }
    }
}

impl<T: Element> DerefMut for ChunkMut<'_, T> {
    fn deref_mut(&mut self) -> &mut [T] {
        // SAFETY: as in `deref`; `&mut self` makes this the only slice of
        // the range in this process.
        unsafe {
            std::slice::from_raw_parts_mut(
                self.array.data().add(self.range.start),
                self.range.len(),
            )
        }
    }
}

/// Releases the lease without the table lock (which another process may
/// hold, or claim to hold, for as long as it likes): the slot is cleared
/// only if it still names this process, and only then dropped from the
/// private list, so a scan by another thread of this process never sees a
/// slot of this process that the list does not explain. Waiters read the
/// release sequence before they scan, so the notify reaches them.
impl<T: Element> Drop for ChunkMut<'_, T> {
    fn drop(&mut self) {
        let (pid, _, _) = self.array.entry(self.slot);
        let _ = pid.compare_exchange(my_pid(), 0, Ordering::AcqRel, Ordering::Relaxed);
        let array = self.array.seg.identity();
        let mut own = own_leases();
        if let Some(i) = own
            .iter()
            .position(|l| l.array == array && l.slot == self.slot)
        {
            own.swap_remove(i);
            OWN_LEASE_COUNT.fetch_sub(1, Ordering::Relaxed);
        }
        drop(own);
        self.array.released.notify_all();
    }
}

impl<T: Element> fmt::Debug for ChunkMut<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ChunkMut")
            .field("range", &self.range)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shm::segment::tests::round_trip;

    #[test]
    fn elements_are_shared_between_handles() {
        let a = SharedArray::<u32>::from_slice(&[1, 2, 3]).unwrap();
        let b = round_trip(&a);
        b.store(1, 20);
        assert_eq!(a.to_vec(), vec![1, 20, 3]);
        assert_eq!(a.fetch_add(2, 4), 3);
        assert_eq!(b.load(2), 7);
        assert_eq!(b.compare_exchange(0, 1, 10), Ok(1));
        assert_eq!(b.compare_exchange(0, 1, 11), Err(10));
        let f = SharedArray::<f64>::from_slice(&[1.5]).unwrap();
        assert_eq!(round_trip(&f).load(0), 1.5);
    }

    #[test]
    fn leases_never_overlap() {
        let a = SharedArray::<u8>::zeroed(10).unwrap();
        let b = round_trip(&a);
        let mut c = a.chunk(4, 1).unwrap();
        assert_eq!(c.range(), 4..8);
        c.fill(7);
        assert!(b.try_chunk(4, 1).unwrap().is_none());
        assert!(b.try_lease(7..9).unwrap().is_none());
        let last = b.try_chunk(4, 2).unwrap().unwrap();
        assert_eq!(last.len(), 2);
        drop(c);
        assert!(b.try_lease(0..10).unwrap().is_none()); // `last` still held
        drop(last);
        assert!(b.try_lease(0..10).unwrap().is_some());
        assert_eq!(a.to_vec(), [0, 0, 0, 0, 7, 7, 7, 7, 0, 0]);
    }

    #[test]
    #[should_panic(expected = "leased")]
    fn writing_a_leased_element_panics() {
        let a = SharedArray::<u64>::zeroed(4).unwrap();
        let _c = a.lease(0..2).unwrap();
        a.fetch_add(1, 1);
    }

    /// Writes a lease table entry, as another process could.
    fn forge(a: &SharedArray<u64>, slot: usize, pid: u64, start: u64, end: u64) {
        let (p, s, e) = a.entry(slot);
        s.store(start, Ordering::Relaxed);
        e.store(end, Ordering::Relaxed);
        p.store(pid, Ordering::Release);
    }

    #[test]
    fn another_process_lease_blocks_leases_but_never_panics_a_store() {
        let a = SharedArray::<u64>::zeroed(16).unwrap();
        forge(&a, 5, 1, 0, 8); // pid 1: alive, never releases
        a.store(3, 7);
        assert_eq!(a.fetch_add(3, 1), 7);
        assert!(a.try_lease(4..12).unwrap().is_none());
        assert!(a.try_lease(8..16).unwrap().is_some());
        let limit = Duration::from_millis(50);
        let t = Instant::now();
        assert!(a.lease_timeout(0..1, limit).unwrap().is_none());
        assert!(t.elapsed() >= limit && t.elapsed() < limit + Duration::from_millis(250));
    }

    #[test]
    fn forged_dead_and_malformed_entries() {
        let a = SharedArray::<u64>::zeroed(16).unwrap();
        // This process, which holds no such lease: reclaimed.
        forge(&a, 0, my_pid(), 0, 16);
        // No process at all, and a pid no process has: reclaimed.
        forge(&a, 1, u64::MAX, 0, 16);
        forge(&a, 2, (1 << 22) + 1000, 0, 16);
        let c = a.try_lease(0..16).unwrap().expect("every entry reclaimed");
        assert_eq!(c.range(), 0..16);
        // The chunk's slot is the first free one, and it is ours.
        assert_eq!(a.entry(c.slot).0.load(Ordering::Relaxed), my_pid());
        drop(c);
        // A live holder with a range past the end: corrupted, named.
        forge(&a, 9, 1, 4, 17);
        let err = a.try_lease(0..1).unwrap_err();
        assert!(
            err.is_corrupted() && err.to_string().contains("slot 9"),
            "{err}"
        );
        forge(&a, 9, 1, 9, 3);
        assert!(a.try_lease(0..1).unwrap_err().is_corrupted());
        // A dead holder's malformed entry is just reclaimed.
        forge(&a, 9, (1 << 22) + 1000, 9, 3);
        assert!(a.try_lease(0..1).unwrap().is_some());
    }

    #[test]
    fn own_leases_are_judged_by_the_private_range() {
        let a = SharedArray::<u64>::zeroed(16).unwrap();
        let mut c = a.lease(0..4).unwrap();
        // Another process shrinks our entry: our range still counts.
        a.entry(c.slot).2.store(1, Ordering::Relaxed);
        assert!(a.try_lease(2..3).unwrap().is_none());
        c[3] = 9;
        drop(c);
        assert_eq!(a.load(3), 9);
        // A release when another process overwrote our slot leaves their
        // entry alone.
        let c = a.lease(0..4).unwrap();
        let slot = c.slot;
        forge(&a, slot, 1, 8, 12);
        drop(c);
        assert_eq!(a.entry(slot).0.load(Ordering::Relaxed), 1);
        a.store(2, 1);
    }

    #[test]
    fn releasing_needs_no_table_lock_and_wakes_a_waiter() {
        let a = SharedArray::<u64>::zeroed(16).unwrap();
        let c = a.lease(0..8).unwrap();
        let b = round_trip(&a);
        let waiter = std::thread::spawn(move || {
            let t = Instant::now();
            let got = b
                .lease_timeout(0..8, Duration::from_secs(5))
                .unwrap()
                .is_some();
            (got, t.elapsed())
        });
        std::thread::sleep(Duration::from_millis(20));
        // The table lock is held by a live process that never lets go.
        a.seg
            .atomic_u64(MUTEX_AT + 8)
            .store(1 << 32 | 1, Ordering::Relaxed);
        drop(c);
        // The waiter needs the table lock to take the lease: give it back.
        std::thread::sleep(Duration::from_millis(20));
        a.seg.atomic_u64(MUTEX_AT + 8).store(0, Ordering::Relaxed);
        let (got, took) = waiter.join().unwrap();
        assert!(got);
        // Well before the 100 ms recheck plus slack: it was woken.
        assert!(took < Duration::from_secs(1), "{took:?}");
    }

    #[test]
    fn the_wrong_element_type_is_refused() {
        let a = SharedArray::<u32>::zeroed(4).unwrap();
        let (bytes, fds) = crate::sys::fdpass::capture(|| postcard::to_stdvec(&a).unwrap());
        let got = crate::sys::fdpass::with_table(fds, || {
            postcard::from_bytes::<SharedArray<f32>>(&bytes).map(|_| ())
        });
        assert!(got.is_err());
    }
}
