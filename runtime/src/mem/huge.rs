//! Room for large byte buffers, backed by transparent huge pages where the
//! kernel offers them.
//!
//! A fresh buffer of tens of MiB costs one page fault per 4 KiB page when it
//! is first written: on the 2-core VM of BENCHMARKS.md, copying 64 MiB into
//! fresh memory took 25–37 ms against 4 ms into memory already touched, and
//! a 64 MiB round trip fills four such buffers (the encoded arguments, the
//! frame the child reads, the decoded `Vec<u8>`, and the same three back).
//! With `MADV_HUGEPAGE` the same copy takes about 7 ms: one fault per 2 MiB.
//! Where transparent huge pages are off (`never`), the advice does nothing.

/// Buffers at least this large are advised to use huge pages: below it the
/// faults cost little and the advice would split the heap's mappings.
/// (Smaller buffers, from [`SPARE_FROM`], are kept as spares instead.)
#[cfg_attr(not(target_os = "linux"), allow(dead_code))]
const HUGE_FROM: usize = 2 << 20;

/// The huge-page size of x86-64 and arm64 (with 4 KiB base pages).
#[cfg_attr(not(target_os = "linux"), allow(dead_code))]
const HUGE_PAGE: usize = 2 << 20;

/// Reserves room for `additional` more elements in `buf`, as
/// [`Vec::reserve_exact`], and asks the kernel to back the reserved memory
/// with huge pages if it is large.
pub(crate) fn reserve<T>(buf: &mut Vec<T>, additional: usize) {
    buf.reserve_exact(additional);
    // Transparent huge pages are Linux's; elsewhere the memory is left as
    // the allocator gave it.
    #[cfg(target_os = "linux")]
    advise_huge(buf.spare_capacity_mut());
}

/// Asks for huge pages under the whole huge pages inside `spare`, if it
/// is large.
#[cfg(target_os = "linux")]
fn advise_huge<T>(spare: &mut [std::mem::MaybeUninit<T>]) {
    let bytes = std::mem::size_of_val(spare);
    if bytes < HUGE_FROM {
        return;
    }
    let start = spare.as_ptr() as usize;
    let aligned = start.next_multiple_of(HUGE_PAGE);
    let end = (start + bytes) & !(HUGE_PAGE - 1);
    if end > aligned {
        // SAFETY: `aligned..end` lies inside the spare capacity of `buf`,
        // memory this process owns and has not handed out; MADV_HUGEPAGE
        // only changes how the kernel backs the range (it neither frees nor
        // changes its contents), and a failure (THP unsupported) is harmless.
        unsafe {
            libc::madvise(
                aligned as *mut libc::c_void,
                end - aligned,
                libc::MADV_HUGEPAGE,
            );
        }
    }
}

// ---- spare buffers ---------------------------------------------------------
//
// A 64 MiB round trip fills a fresh buffer of that size at each of its
// steps (the encoded argument, the reply copied out of shared memory, the
// decoded result; in the child, the decoded argument), and on the VM of
// BENCHMARKS.md writing into memory just mapped costs about twice what
// writing into memory already touched does. Large byte buffers that the
// runtime is done with (a reply once decoded, a batch once answered, a
// `Vec<u8>` argument once encoded or a result once sent) are kept here
// instead of freed, and the next large buffer starts from one of them. An
// idle pool gives them back (with its shared buffers, see `ARENAS_KEPT_IDLE`
// in the driver), and so does an idle worker.

/// Buffers at least this large are kept as spares. On the VM of
/// BENCHMARKS.md a page touched for the first time (or again after the
/// allocator gave it back) cost 2–5 µs when the machine had been idle a
/// moment: a `map` of 100 k items spent 0.5 ms of its 1.1 ms encoding its
/// eight 100 KB batches into fresh pages, while the workers waited.
const SPARE_FROM: usize = 64 << 10;

/// Most buffers kept: the batches of a `map` (four per worker) and their
/// replies, so that the next one encodes and reads into memory already
/// touched.
const SPARES: usize = 16;
/// Most bytes kept, short of [`SPARES_ANY_SIZE`] buffers of any size.
const SPARE_BYTES: usize = 32 << 20;
/// Buffers kept whatever their size: a round trip of a 64 MiB argument
/// reuses two in the parent (the argument sent, the result decoded), and
/// a vector of numbers cannot take a byte buffer's memory (its alignment
/// differs), so bytes and numbers each need their two. With two in all, a
/// 64 MiB `Vec<f64>` round trip after `Vec<u8>` ones found only byte
/// buffers and faulted in fresh pages: 0.49–0.59× the `Vec<u8>` round
/// trip for a struct holding one, 0.66–0.94× with four.
const SPARES_ANY_SIZE: usize = 4;

/// An allocation of the global allocator kept for reuse: `bytes` bytes
/// aligned to `align`, that is, the memory of a `Vec<T>` of capacity
/// `bytes / size_of::<T>()` for some `T` of that alignment.
struct Spare {
    ptr: std::ptr::NonNull<u8>,
    bytes: usize,
    align: usize,
}

// SAFETY: a spare is plain memory owned by nobody else.
unsafe impl Send for Spare {}

impl Spare {
    /// The allocation of `buf` (emptied first).
    fn of<T>(mut buf: Vec<T>) -> Spare {
        buf.clear();
        let mut buf = std::mem::ManuallyDrop::new(buf);
        Spare {
            ptr: std::ptr::NonNull::new(buf.as_mut_ptr().cast()).expect("a Vec's pointer"),
            bytes: buf.capacity() * size_of::<T>(),
            align: align_of::<T>(),
        }
    }

    /// Whether this allocation can be a `Vec<T>` of room for `additional`
    /// (not many times more: see [`reserve_bytes`]).
    fn fits<T>(&self, additional: usize, most: usize) -> bool {
        self.align == align_of::<T>()
            && self.bytes % size_of::<T>() == 0
            && (additional..=most).contains(&(self.bytes / size_of::<T>()))
    }

    /// This allocation as an empty `Vec<T>`.
    ///
    /// # Safety
    ///
    /// [`Spare::fits`] said so for `T`.
    unsafe fn into_vec<T>(self) -> Vec<T> {
        let this = std::mem::ManuallyDrop::new(self);
        // SAFETY: allocated by the global allocator with the layout of a
        // `Vec<T>` of this capacity: `bytes` bytes aligned to `align`,
        // which is `T`'s, and `bytes` is a multiple of `T`'s size (the
        // caller checked both with `fits`).
        unsafe { Vec::from_raw_parts(this.ptr.as_ptr().cast(), 0, this.bytes / size_of::<T>()) }
    }
}

impl Drop for Spare {
    fn drop(&mut self) {
        // SAFETY: the allocation's own layout (a `Vec`'s, so valid and of
        // non-zero size: `recycle` keeps no empty ones).
        unsafe {
            std::alloc::dealloc(
                self.ptr.as_ptr(),
                std::alloc::Layout::from_size_align_unchecked(self.bytes, self.align),
            );
        }
    }
}

static SPARE: std::sync::Mutex<Vec<Spare>> = std::sync::Mutex::new(Vec::new());

fn spares() -> std::sync::MutexGuard<'static, Vec<Spare>> {
    SPARE.lock().unwrap_or_else(|e| e.into_inner())
}

/// Keeps the memory of `buf` for reuse if it is large; frees it otherwise
/// (or when the spares are full and it is the smallest). `T` is a plain
/// number (or bytes): its elements need no drop.
pub(crate) fn recycle<T: Copy>(buf: Vec<T>) {
    if buf.capacity() * size_of::<T>() < SPARE_FROM {
        return;
    }
    let mut spare = spares();
    spare.push(Spare::of(buf));
    // Keep the largest: they fit the most.
    spare.sort_unstable_by_key(|b| std::cmp::Reverse(b.bytes));
    spare.truncate(SPARES);
    let mut total: usize = spare.iter().map(|b| b.bytes).sum();
    while total > SPARE_BYTES && spare.len() > SPARES_ANY_SIZE {
        total -= spare.pop().map_or(0, |b| b.bytes);
    }
}

/// Whether any spare buffer is kept.
pub(crate) fn has_spares() -> bool {
    !spares().is_empty()
}

/// Frees every spare buffer.
pub(crate) fn release_spares() {
    let freed = std::mem::take(&mut *spares());
    drop(freed);
}

/// [`reserve`] for bytes and plain numbers: an empty `buf` too small for a
/// large buffer takes the smallest spare that fits instead, if there is
/// one.
pub(crate) fn reserve_bytes<T: Copy>(buf: &mut Vec<T>, additional: usize) {
    let size = size_of::<T>().max(1);
    if !buf.is_empty()
        || buf.capacity() >= additional
        || additional.saturating_mul(size) < SPARE_FROM
    {
        reserve(buf, additional);
        return;
    }
    let mut spare = spares();
    // Not one many times too large: a buffer of 64 MiB that carries a
    // batch of 100 KB is one the next 64 MiB frame has to do without.
    let most = additional.saturating_mul(4).max(2 * HUGE_PAGE / size);
    let fit = (0..spare.len())
        .filter(|&i| spare[i].fits::<T>(additional, most))
        .min_by_key(|&i| spare[i].bytes);
    if let Some(i) = fit {
        let taken = spare.swap_remove(i);
        drop(spare);
        // SAFETY: `fits` said so for `T`.
        *buf = unsafe { taken.into_vec() };
        return;
    }
    drop(spare);
    // Whole huge pages: buffers for about the same size (an argument, the
    // frame that carries it, the reply) then fit one another.
    let bytes = additional.saturating_mul(size);
    let room = if bytes >= HUGE_FROM {
        bytes.next_multiple_of(HUGE_PAGE) / size
    } else {
        additional
    };
    reserve(buf, room);
}
