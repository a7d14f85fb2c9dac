//! Bulk reads of a [`SharedArray`]: its elements copied out at memory
//! speed, soundly whatever other processes write meanwhile.
//!
//! Memory that another process can write is never handed out as `&[T]`:
//! the compiler may assume that a shared slice does not change while it is
//! borrowed (and, say, read an element once for a bounds check and again
//! for its use), which a concurrent write from elsewhere would break. A
//! bulk read copies the elements into memory of this process and hands out
//! that copy instead: [`read_chunks`](SharedArray::read_chunks) one piece
//! small enough to stay in the L1 cache at a time, so the copy costs next
//! to nothing beside reading the shared memory itself.
//!
//! The copy reads each element as an atomic load of its type would: whole,
//! the old value or the new one, never a mix of the two. On x86-64 it does
//! so with aligned 16-byte SSE loads and a prefetch ahead of them, which
//! never split an aligned element (an `asm!` block: a compiler treats it as
//! opaque, so it can neither turn the loads into anything else nor assume
//! anything about what they read); elsewhere, and at the unaligned ends,
//! with one relaxed atomic load per element.
//!
//! A process that has just received an array has no page table entries
//! for it, and faulting its pages in as the reader reaches them adds about
//! a quarter to a read from memory. A large read therefore has a helper
//! thread map the range ahead of the reader (see [`Segment::populate`]),
//! which the kernel does several times faster than the faults, on another
//! core.

use std::ops::{Bound, Range, RangeBounds};
use std::sync::atomic::{AtomicBool, Ordering};

use super::array::SharedArray;
use super::element::Element;
use super::segment::Segment;

/// Bytes of each private copy `read_chunks` hands out: they stay in the L1
/// cache between the copy and the callback's use.
const CHUNK_BYTES: usize = 16 << 10;
/// How far ahead of its loads the copy asks for lines, in bytes.
#[cfg(target_arch = "x86_64")]
const PREFETCH: usize = 2048;
/// Reads of at least this many bytes map their pages on a helper thread,
/// ahead of the reader.
const POPULATE_FROM: usize = 8 << 20;
/// The helper maps this many bytes at a time and stops between two steps
/// once the read has ended.
const POPULATE_STEP: usize = 4 << 20;

impl<T: Element> SharedArray<T> {
    /// Copies the `dst.len()` elements that start at index `start` into
    /// `dst`, at memory speed.
    ///
    /// Each element is read whole, as [`load`](Self::load) would read it:
    /// a concurrent writer (in any process) can make the copy a mix of old
    /// and new elements, but no element is torn between two writes. No
    /// lease is taken or waited for: see the type's access model for how
    /// to get a consistent snapshot.
    ///
    /// A copy of 8 MiB or more maps its pages ahead of the copy, as
    /// [`read_chunks`](Self::read_chunks) does.
    ///
    /// # Panics
    ///
    /// If `start + dst.len() > len()`. Never because of anything another
    /// process wrote.
    pub fn copy_to_slice(&self, start: usize, dst: &mut [T]) {
        let range = self.checked(start, dst.len());
        self.populating(&range, || {
            // SAFETY: `range` is inside the array (checked).
            unsafe { copy_elements(self.data().add(range.start), dst) }
        });
    }

    /// Reads the elements in `range` in order, calling `f(index, chunk)`
    /// with private copies of them, at most 16 KiB at a time; `index` is
    /// the array index of `chunk[0]`. This is how a worker reads an array
    /// too large to copy whole, at the speed of reading its own memory:
    ///
    /// ```ignore
    /// #[worker]
    /// fn total(data: SharedArray<f64>) -> f64 {
    ///     let mut sum = 0.0;
    ///     data.read_chunks(.., |_, chunk| sum += chunk.iter().sum::<f64>());
    ///     sum
    /// }
    /// ```
    ///
    /// The chunks are this process's memory: `f` may do anything with
    /// them, and nothing another process writes can change them under it.
    /// Each element is read as by [`copy_to_slice`](Self::copy_to_slice):
    /// whole, without any lease, so writers active during the read leave a
    /// mix of old and new elements.
    ///
    /// A read of 8 MiB or more starts a helper thread that maps the
    /// range's pages into this process ahead of the reader (so that the
    /// reader takes no page faults), and ends it before returning; if the
    /// thread cannot start, the reader faults the pages in itself.
    ///
    /// # Panics
    ///
    /// If `range` is out of bounds or decreasing, and if `f` panics. Never
    /// because of anything another process wrote.
    pub fn read_chunks<F>(&self, range: impl RangeBounds<usize>, mut f: F)
    where
        F: FnMut(usize, &[T]),
    {
        let range = self.resolve(range);
        if range.is_empty() {
            return;
        }
        let per = (CHUNK_BYTES / size_of::<T>()).min(range.len());
        let mut buf = vec![T::default(); per];
        self.populating(&range, || {
            let mut at = range.start;
            while at < range.end {
                let piece = &mut buf[..per.min(range.end - at)];
                // SAFETY: `at + piece.len() <= range.end <= len` (checked
                // in `resolve`).
                unsafe { copy_elements(self.data().add(at), piece) };
                f(at, piece);
                at += piece.len();
            }
        });
    }

    /// `start .. start + count`, checked against the length.
    fn checked(&self, start: usize, count: usize) -> Range<usize> {
        match start.checked_add(count) {
            Some(end) if end <= self.len() => start..end,
            _ => panic!(
                "{count} elements from index {start} are out of bounds for a shared array of length {}",
                self.len()
            ),
        }
    }

    /// The indices `range` names, checked against the length.
    fn resolve(&self, range: impl RangeBounds<usize>) -> Range<usize> {
        let start = match range.start_bound() {
            Bound::Included(&s) => Some(s),
            Bound::Excluded(&s) => s.checked_add(1),
            Bound::Unbounded => Some(0),
        };
        let end = match range.end_bound() {
            Bound::Included(&e) => e.checked_add(1),
            Bound::Excluded(&e) => Some(e),
            Bound::Unbounded => Some(self.len()),
        };
        match (start, end) {
            (Some(s), Some(e)) if s <= e && e <= self.len() => s..e,
            _ => panic!(
                "range ({:?}, {:?}) is out of bounds for a shared array of length {}",
                range.start_bound(),
                range.end_bound(),
                self.len()
            ),
        }
    }

    /// Runs `read` (which reads the elements in `range`), with a helper
    /// thread mapping the range's pages ahead of it if the range is large.
    /// If the thread cannot be started, `read` faults the pages in itself.
    fn populating<R>(&self, range: &Range<usize>, read: impl FnOnce() -> R) -> R {
        let from = Self::offset_of(range.start);
        let to = Self::offset_of(range.end);
        if to - from < POPULATE_FROM {
            return read();
        }
        let seg: &Segment = self.segment();
        let done = AtomicBool::new(false);
        std::thread::scope(|scope| {
            let _helper = std::thread::Builder::new()
                .name("multiproc-populate".to_owned())
                .spawn_scoped(scope, || {
                    let mut at = from;
                    while at < to && !done.load(Ordering::Relaxed) {
                        let step = POPULATE_STEP.min(to - at);
                        seg.populate(at, step);
                        at += step;
                    }
                });
            // Stops the helper when the read ends, also by a panic of the
            // callback: the scope waits for it either way.
            let _done = SetOnDrop(&done);
            read()
        })
    }
}

/// Sets its flag when dropped.
struct SetOnDrop<'a>(&'a AtomicBool);

impl Drop for SetOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// Copies `dst.len()` elements from `src` into `dst`, reading each element
/// whole, as a relaxed atomic load of it would.
///
/// # Safety
///
/// `src` is aligned for `T` and points to `dst.len()` elements inside a
/// live mapping of a shared segment, which this process accesses only
/// atomically, through this function, or through a lease's slice.
unsafe fn copy_elements<T: Element>(src: *const T, dst: &mut [T]) {
    // SAFETY: the caller's contract.
    let done = unsafe { copy_body(src, dst) };
    for (i, d) in dst.iter_mut().enumerate().skip(done) {
        // SAFETY: `i < dst.len()`: inside the source (the caller's
        // contract).
        *d = unsafe { load(src.add(i)) };
    }
}

/// Copies the first elements of `dst` from `src` as [`copy_elements`]
/// does, with 16-byte loads from the first 16-byte boundary on, and returns
/// how many it copied (all but fewer than 64 bytes of them).
///
/// # Safety
///
/// As for [`copy_elements`].
#[cfg(target_arch = "x86_64")]
unsafe fn copy_body<T: Element>(src: *const T, dst: &mut [T]) -> usize {
    let size = size_of::<T>();
    // Elements up to the first 16-byte boundary (`src` is aligned for `T`,
    // whose size divides 16, so the count is whole).
    let head = ((src as usize).wrapping_neg() % 16 / size).min(dst.len());
    for (i, d) in dst[..head].iter_mut().enumerate() {
        // SAFETY: `i < dst.len()`: inside the source (the caller's
        // contract).
        *d = unsafe { load(src.add(i)) };
    }
    let body = (dst.len() - head) * size / 64 * 64;
    if body > 0 {
        // SAFETY: `src + head` is 16-byte aligned, and `body` bytes from it
        // lie inside the source, and from `dst[head]` inside `dst`, which
        // is this process's own memory, borrowed exclusively.
        unsafe {
            copy_lines(
                src.add(head).cast(),
                dst.as_mut_ptr().add(head).cast(),
                body,
            );
        }
    }
    head + body / size
}

/// Copies nothing: without a vector copy, every element is loaded alone.
///
/// # Safety
///
/// None needed; the signature matches the vector copy's.
#[cfg(not(target_arch = "x86_64"))]
unsafe fn copy_body<T: Element>(_src: *const T, _dst: &mut [T]) -> usize {
    0
}

/// A relaxed atomic load of the element at `src`.
///
/// # Safety
///
/// As for [`copy_elements`], for one element.
unsafe fn load<T: Element>(src: *const T) -> T {
    // SAFETY: `T::Atomic` has `T`'s size and alignment (asserted in
    // `element`), every bit pattern is valid for both, and this process
    // accesses the element only atomically or through a lease's slice.
    T::load(unsafe { &*src.cast::<T::Atomic>() }, Ordering::Relaxed)
}

/// Copies `len` bytes, a multiple of 64, from `src` (16-byte aligned) to
/// `dst` with aligned 16-byte loads, 64 bytes a round, each round asking
/// for the line [`PREFETCH`] bytes ahead: a plain load loop waits on memory
/// more than the processor's own copy (`rep movs`) does, and the prefetch
/// closes that gap.
///
/// # Safety
///
/// `src` is 16-byte aligned and readable for `len` bytes, `dst` writable
/// for `len` bytes, and they do not overlap; `len` is a non-zero multiple
/// of 64.
#[cfg(target_arch = "x86_64")]
unsafe fn copy_lines(src: *const u8, dst: *mut u8, len: usize) {
    debug_assert!(len > 0 && len % 64 == 0 && src as usize % 16 == 0);
    // SAFETY: the caller's contract bounds every access; the loads are
    // aligned (MOVDQA faults otherwise), and an aligned 16-byte load never
    // splits an element of 8 bytes or less: x86-64 reads an aligned
    // quadword whole, and processors with AVX the whole 16 bytes. SSE2 is
    // part of x86-64. A prefetch is a hint that never faults, also past the
    // end of a mapping. The block touches only the registers it names.
    unsafe {
        std::arch::asm!(
            "2:",
            "prefetcht0 [{src} + {ahead}]",
            "movdqa {a}, xmmword ptr [{src}]",
            "movdqa {b}, xmmword ptr [{src} + 16]",
            "movdqa {c}, xmmword ptr [{src} + 32]",
            "movdqa {d}, xmmword ptr [{src} + 48]",
            "movdqu xmmword ptr [{dst}], {a}",
            "movdqu xmmword ptr [{dst} + 16], {b}",
            "movdqu xmmword ptr [{dst} + 32], {c}",
            "movdqu xmmword ptr [{dst} + 48], {d}",
            "add {src}, 64",
            "add {dst}, 64",
            "sub {len}, 64",
            "jnz 2b",
            src = inout(reg) src => _,
            dst = inout(reg) dst => _,
            len = inout(reg) len => _,
            ahead = const PREFETCH,
            a = out(xmm_reg) _,
            b = out(xmm_reg) _,
            c = out(xmm_reg) _,
            d = out(xmm_reg) _,
            options(nostack),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shm::segment::tests::round_trip;

    fn pattern<T: Element>(len: usize, of: impl Fn(usize) -> T) -> SharedArray<T> {
        let values: Vec<T> = (0..len).map(of).collect();
        SharedArray::from_slice(&values).unwrap()
    }

    fn check_copies<T: Element>(of: impl Fn(usize) -> T) {
        let a = pattern(300, &of);
        for start in [0, 1, 2, 3, 5, 8, 15, 16, 17, 31] {
            for count in [0, 1, 7, 15, 16, 17, 63, 64, 65, 128, 200, 300 - start] {
                if start + count > a.len() {
                    continue;
                }
                let mut dst = vec![T::default(); count];
                a.copy_to_slice(start, &mut dst);
                let want: Vec<T> = (start..start + count).map(&of).collect();
                assert_eq!(dst, want, "from {start}, {count} elements");
            }
        }
    }

    #[test]
    fn copies_are_exact_at_every_alignment_and_length() {
        check_copies(|i| i as u8);
        check_copies(|i| (i * 257) as u16);
        check_copies(|i| (i * 65_537) as u32);
        check_copies(|i| i as f32 * 0.5);
        check_copies(|i| (i as u64) << 33 | i as u64);
        check_copies(|i| -(i as f64) / 3.0);
    }

    #[test]
    fn chunks_cover_the_range_once_in_order() {
        let per = CHUNK_BYTES / 8;
        for len in [0, 1, per - 1, per, per + 1, 3 * per + 5] {
            let a = round_trip(&pattern(len, |i| i as u64));
            let mut next = 0;
            a.read_chunks(.., |at, chunk| {
                assert_eq!(at, next);
                assert!(!chunk.is_empty() && chunk.len() <= per);
                assert!(chunk.iter().zip(at..).all(|(&v, i)| v == i as u64));
                next += chunk.len();
            });
            assert_eq!(next, len);
            assert_eq!(a.to_vec(), (0..len as u64).collect::<Vec<_>>());
        }
        let a = pattern(100, |i| i as u16);
        let mut seen = Vec::new();
        a.read_chunks(10..=20, |_, c| seen.extend_from_slice(c));
        a.read_chunks(90.., |_, c| seen.extend_from_slice(c));
        a.read_chunks(5..5, |_, _| panic!("an empty range has no chunks"));
        let want: Vec<u16> = (10..=20).chain(90..100).collect();
        assert_eq!(seen, want);
    }

    #[test]
    fn a_large_read_maps_its_pages_ahead_and_is_exact() {
        let len = 3 * POPULATE_FROM / 8 + 5;
        let a = round_trip(&pattern(len, |i| (i % 1000) as f64));
        let mut sum = 0.0;
        a.read_chunks(.., |_, c| sum += c.iter().sum::<f64>());
        let want: f64 = (0..len).map(|i| (i % 1000) as f64).sum();
        assert_eq!(sum, want);
        let mut tail = vec![0.0; len - 1];
        a.copy_to_slice(1, &mut tail);
        assert_eq!(tail[len - 2], ((len - 1) % 1000) as f64);
    }

    #[test]
    #[should_panic(expected = "out of bounds")]
    fn a_copy_past_the_end_panics() {
        pattern(10, |i| i as u32).copy_to_slice(8, &mut [0; 3]);
    }

    #[test]
    #[should_panic(expected = "out of bounds")]
    fn a_range_past_the_end_panics() {
        pattern(10, |i| i as u32).read_chunks(5..11, |_, _| {});
    }

    #[test]
    #[should_panic(expected = "out of bounds")]
    fn a_decreasing_range_panics() {
        #[allow(clippy::reversed_empty_ranges)]
        pattern(10, |i| i as u32).read_chunks(6..5, |_, _| {});
    }

    #[test]
    fn a_concurrent_writer_never_tears_an_element() {
        let a = SharedArray::<u64>::zeroed(4099).unwrap();
        let writer = round_trip(&a);
        let stop = AtomicBool::new(false);
        std::thread::scope(|s| {
            s.spawn(|| {
                let mut v = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    v = !v;
                    for i in 0..writer.len() {
                        writer.store(i, v);
                    }
                }
            });
            for _ in 0..200 {
                a.read_chunks(1.., |at, c| {
                    for (i, &x) in c.iter().enumerate() {
                        assert!(x == 0 || x == u64::MAX, "element {}: {x:#x}", at + i);
                    }
                });
            }
            stop.store(true, Ordering::Relaxed);
        });
    }
}
