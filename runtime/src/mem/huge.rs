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
const HUGE_FROM: usize = 2 << 20;

/// The huge-page size of x86-64 and arm64 (with 4 KiB base pages).
const HUGE_PAGE: usize = 2 << 20;

/// Reserves room for `additional` more elements in `buf`, as
/// [`Vec::reserve_exact`], and asks the kernel to back the reserved memory
/// with huge pages if it is large.
pub(crate) fn reserve<T>(buf: &mut Vec<T>, additional: usize) {
    buf.reserve_exact(additional);
    let spare = buf.spare_capacity_mut();
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
/// reuses two in the parent (the encoded argument, the decoded result).
const SPARES_ANY_SIZE: usize = 2;

static SPARE: std::sync::Mutex<Vec<Vec<u8>>> = std::sync::Mutex::new(Vec::new());

fn spares() -> std::sync::MutexGuard<'static, Vec<Vec<u8>>> {
    SPARE.lock().unwrap_or_else(|e| e.into_inner())
}

/// Keeps `buf` for reuse if it is large; frees it otherwise (or when the
/// spares are full and it is the smallest).
pub(crate) fn recycle(mut buf: Vec<u8>) {
    if buf.capacity() < SPARE_FROM {
        return;
    }
    buf.clear();
    let mut spare = spares();
    spare.push(buf);
    // Keep the largest: they fit the most.
    spare.sort_unstable_by_key(|b| std::cmp::Reverse(b.capacity()));
    spare.truncate(SPARES);
    let mut total: usize = spare.iter().map(Vec::capacity).sum();
    while total > SPARE_BYTES && spare.len() > SPARES_ANY_SIZE {
        total -= spare.pop().map_or(0, |b| b.capacity());
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

/// [`reserve`] for bytes: an empty `buf` too small for a large buffer
/// takes the smallest spare that fits instead, if there is one.
pub(crate) fn reserve_bytes(buf: &mut Vec<u8>, additional: usize) {
    if !buf.is_empty() || buf.capacity() >= additional || additional < SPARE_FROM {
        reserve(buf, additional);
        return;
    }
    let mut spare = spares();
    // Not one many times too large: a buffer of 64 MiB that carries a
    // batch of 100 KB is one the next 64 MiB frame has to do without.
    let most = additional.saturating_mul(4).max(2 * HUGE_PAGE);
    let fit = (0..spare.len())
        .filter(|&i| (additional..=most).contains(&spare[i].capacity()))
        .min_by_key(|&i| spare[i].capacity());
    if let Some(i) = fit {
        *buf = spare.swap_remove(i);
        return;
    }
    drop(spare);
    // Whole huge pages: buffers for about the same size (an argument, the
    // frame that carries it, the reply) then fit one another.
    let size = if additional >= HUGE_FROM {
        additional.next_multiple_of(HUGE_PAGE)
    } else {
        additional
    };
    reserve(buf, size);
}
