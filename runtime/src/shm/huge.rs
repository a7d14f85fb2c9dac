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
const HUGE_FROM: usize = 4 << 20;

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

/// A `Vec<u8>` holding a copy of `bytes`, huge-page backed if it is large.
pub(crate) fn to_vec(bytes: &[u8]) -> Vec<u8> {
    let mut v = Vec::new();
    reserve(&mut v, bytes.len());
    v.extend_from_slice(bytes);
    v
}
