//! [`SharedArray`]: a fixed-length array of plain numbers in shared memory,
//! read and written in place by any number of processes.

use std::fmt;
use std::marker::PhantomData;
use std::ops::{Deref, DerefMut, Range};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::element::{Element, IntElement, private::IntSealed};
use super::segment::Segment;
use super::sync::{RawCondvar, RawGuard, RawMutex};
use super::{lock_recovering, shm_error};
use crate::error::Result;

// Segment layout. The header is one page; the data starts at DATA_AT, so it
// is aligned for every element type.
const MAGIC: u64 = 0x4d50_4152_5241_5900; // "MPARRAY\0"
const TAG_AT: usize = 0;
const LEN_AT: usize = 8;
/// Number of leases held right now (a hint that lets unleased writes skip
/// the table).
const ACTIVE_AT: usize = 16;
const MUTEX_AT: usize = 64;
const CONDVAR_AT: usize = 128;
const TABLE_AT: usize = 192;
/// Most leases held at once, over all processes.
const LEASES: usize = 120;
/// A lease: holder pid (0 = free), start, end (element indices).
const ENTRY: usize = 32;
const DATA_AT: usize = 4096;
const _: () = assert!(TABLE_AT + LEASES * ENTRY <= DATA_AT);

/// A fixed-length array of plain numbers ([`Element`]: integers, floats) in
/// shared memory. Every process that holds a handle sees the same elements;
/// nothing is copied when a handle is passed to a worker.
///
/// # Access model
///
/// Two ways in, both safe:
///
/// * **Element by element, through atomics**: [`load`](Self::load),
///   [`store`](Self::store), [`to_vec`](Self::to_vec), [`iter`](Self::iter),
///   and for integers [`fetch_add`](Self::fetch_add),
///   [`fetch_sub`](Self::fetch_sub), [`compare_exchange`](Self::compare_exchange)
///   (shared counters without locks). Atomic access is what makes reading
///   while another process writes well-defined: a read returns either the
///   old or the new value of an element, never a torn one. Reading a whole
///   array while others write gives a mix of old and new elements; order it
///   with a [`Lock`](crate::Lock), a [`Barrier`](crate::Barrier) or
///   `join()` when a consistent snapshot matters.
/// * **Disjoint parts, as `&mut [T]`**: [`chunk`](Self::chunk) /
///   [`lease`](Self::lease) hand out a [`ChunkMut`], an exclusive lease on
///   a range of elements recorded in the segment's header, so no two
///   holders (in any processes) ever overlap. It derefs to `&mut [T]` for
///   fast plain loops, and dropping it releases the range. Writing an
///   element of a leased range through [`store`](Self::store) or `fetch_*`
///   from elsewhere panics (see their `# Panics`). Atomic *reads* of a
///   leased range are allowed and see the holder's progress.
///
/// [`as_mut_slice_unchecked`](Self::as_mut_slice_unchecked) is the
/// `unsafe` escape hatch.
///
/// A lease whose holder process died is reclaimed by the next process that
/// wants an overlapping range.
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

fn alive(pid: u64) -> bool {
    let Ok(pid) = libc::pid_t::try_from(pid) else {
        return false;
    };
    // SAFETY: signal 0 only checks that the process exists.
    let rc = unsafe { libc::kill(pid, 0) };
    rc == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
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

    fn data(&self) -> *mut T {
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
    /// a [`ChunkMut`] that is alive (in any process): its holder has it as
    /// `&mut`. A lease taken at the same instant as the store may escape
    /// this check.
    pub fn store(&self, index: usize, value: T) {
        self.check_not_leased(index);
        T::store(self.cell(index), value, Ordering::Release);
    }

    /// A copy of every element (each read atomically; see the type's
    /// access model about concurrent writers).
    pub fn to_vec(&self) -> Vec<T> {
        self.iter().collect()
    }

    /// The elements in order, each read atomically when the iterator
    /// reaches it.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = T> + '_ {
        (0..self.len).map(move |i| T::load(self.cell(i), Ordering::Acquire))
    }

    fn active(&self) -> &AtomicU64 {
        self.seg.atomic_u64(ACTIVE_AT)
    }

    fn entry(&self, slot: usize) -> (&AtomicU64, &AtomicU64, &AtomicU64) {
        let at = TABLE_AT + slot * ENTRY;
        (
            self.seg.atomic_u64(at),
            self.seg.atomic_u64(at + 8),
            self.seg.atomic_u64(at + 16),
        )
    }

    fn check_not_leased(&self, index: usize) {
        if self.active().load(Ordering::Acquire) == 0 {
            return;
        }
        let i = index as u64;
        for slot in 0..LEASES {
            let (pid, start, end) = self.entry(slot);
            let holder = pid.load(Ordering::Acquire);
            if holder != 0
                && start.load(Ordering::Relaxed) <= i
                && i < end.load(Ordering::Relaxed)
                && alive(holder)
            {
                panic!(
                    "element {index} of a shared array is leased by a ChunkMut (process {holder}); write it through that lease"
                );
            }
        }
    }

    /// Takes the lease on `range` if it is free. Called with the table lock.
    fn take(&self, range: &Range<usize>) -> Result<Option<usize>> {
        let (lo, hi) = (range.start as u64, range.end as u64);
        let mut free = None;
        for slot in 0..LEASES {
            let (pid, start, end) = self.entry(slot);
            let holder = pid.load(Ordering::Relaxed);
            if holder == 0 {
                free.get_or_insert(slot);
                continue;
            }
            let overlaps = start.load(Ordering::Relaxed) < hi && lo < end.load(Ordering::Relaxed);
            if !overlaps {
                continue;
            }
            if holder != my_pid() && !alive(holder) {
                // The holder died with its lease: reclaim it.
                pid.store(0, Ordering::Relaxed);
                self.active().fetch_sub(1, Ordering::AcqRel);
                free.get_or_insert(slot);
                continue;
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
        pid.store(my_pid(), Ordering::Release);
        self.active().fetch_add(1, Ordering::AcqRel);
        Ok(Some(slot))
    }

    fn lease_inner(&self, range: Range<usize>, block: bool) -> Result<Option<ChunkMut<'_, T>>> {
        assert!(
            range.start <= range.end && range.end <= self.len,
            "range {range:?} out of bounds for a shared array of length {}",
            self.len
        );
        let guard: RawGuard<'_> = lock_recovering(&self.leases);
        loop {
            if let Some(slot) = self.take(&range)? {
                return Ok(Some(ChunkMut {
                    array: self,
                    slot,
                    range,
                }));
            }
            if !block {
                return Ok(None);
            }
            // Woken by every release; the timeout re-checks for holders
            // that died without releasing.
            self.released
                .wait_timeout(&guard, Duration::from_millis(100));
        }
    }

    /// An exclusive lease on the elements in `range`, waiting while any of
    /// them is leased by someone else.
    ///
    /// # Errors
    ///
    /// [`SharedMemory`](crate::ErrorKind::SharedMemory) if 120 leases are already
    /// held (over all processes).
    ///
    /// # Panics
    ///
    /// If `range` is out of bounds. Waits forever if this thread already
    /// holds an overlapping lease (use [`try_lease`](Self::try_lease)).
    pub fn lease(&self, range: Range<usize>) -> Result<ChunkMut<'_, T>> {
        self.lease_inner(range, true)
            .map(|c| c.expect("a blocking lease returns a chunk"))
    }

    /// An exclusive lease on `range`, or `Ok(None)` at once if any element
    /// of it is leased by someone else (including this thread).
    ///
    /// # Errors
    ///
    /// As [`lease`](Self::lease).
    ///
    /// # Panics
    ///
    /// If `range` is out of bounds.
    pub fn try_lease(&self, range: Range<usize>) -> Result<Option<ChunkMut<'_, T>>> {
        self.lease_inner(range, false)
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

impl<T: Element> Drop for ChunkMut<'_, T> {
    fn drop(&mut self) {
        let _guard = lock_recovering(&self.array.leases);
        let (pid, _, _) = self.array.entry(self.slot);
        pid.store(0, Ordering::Release);
        self.array.active().fetch_sub(1, Ordering::AcqRel);
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

    #[test]
    fn the_wrong_element_type_is_refused() {
        let a = SharedArray::<u32>::zeroed(4).unwrap();
        let (bytes, fds) = crate::fdpass::capture(|| postcard::to_stdvec(&a).unwrap());
        let got = crate::fdpass::with_table(fds, || {
            postcard::from_bytes::<SharedArray<f32>>(&bytes).map(|_| ())
        });
        assert!(got.is_err());
    }
}
