//! Copies of large buffers that bypass the caches.
//!
//! A 64 MiB round trip copies its bytes four times (into the request
//! arena, out of it into the worker's argument, the result into a reply
//! arena, and out of that into the caller's `Vec`): each copy is written
//! once and read next by another process, often on the other core. A plain
//! `memcpy` reads every destination line into the cache before it writes
//! it; glibc switches to non-temporal stores only above a threshold it
//! derives from the size of the last-level cache, which a virtual machine
//! may report as hundreds of MiB. On the 2-core VM of BENCHMARKS.md (which
//! reports 480 MiB) a 64 MiB copy ran at 6.6 GiB/s through `memcpy` and at
//! 11–12 GiB/s with the stores below, and the round trip took 22 ms
//! instead of 38 (glibc's own threshold lowered to 1 MiB gave the same).
//! Below [`STREAM_FROM`] the copy stays `memcpy`, which is as fast or
//! faster there (and keeps small buffers in the cache for their reader).

/// Copies of at least this many bytes use non-temporal stores.
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
const STREAM_FROM: usize = 16 << 20;

/// Copies `len` bytes from `src` to `dst`, as
/// [`std::ptr::copy_nonoverlapping`], with non-temporal stores if they are
/// many (x86-64; elsewhere a plain copy).
///
/// # Safety
///
/// As for [`std::ptr::copy_nonoverlapping`]: `src` valid for reads and
/// `dst` for writes of `len` bytes, not overlapping.
pub(crate) unsafe fn copy_bytes(src: *const u8, dst: *mut u8, len: usize) {
    #[cfg(target_arch = "x86_64")]
    if len >= STREAM_FROM {
        // SAFETY: the caller's contract.
        unsafe { stream(src, dst, len) };
        return;
    }
    // SAFETY: the caller's contract.
    unsafe { std::ptr::copy_nonoverlapping(src, dst, len) };
}

/// Appends `bytes` to `buf` (which must have room for them already, or it
/// grows as `Vec::reserve` would), through [`copy_bytes`].
pub(crate) fn extend(buf: &mut Vec<u8>, bytes: &[u8]) {
    buf.reserve(bytes.len());
    let len = buf.len();
    // SAFETY: `reserve` made room for `bytes.len()` more bytes after `len`,
    // which a shared borrow of another buffer cannot overlap; they are all
    // written before the length covers them.
    unsafe {
        copy_bytes(bytes.as_ptr(), buf.as_mut_ptr().add(len), bytes.len());
        buf.set_len(len + bytes.len());
    }
}

/// The copy of [`copy_bytes`] for large buffers: 64-byte lines loaded
/// as they are and stored non-temporally (SSE2, which every x86-64 has),
/// four pages at a time, one line of each in turn, which is what makes it
/// as fast as glibc's own (one page at a time reached 8–9 GiB/s).
///
/// # Safety
///
/// As for [`copy_bytes`].
#[cfg(target_arch = "x86_64")]
unsafe fn stream(src: *const u8, dst: *mut u8, len: usize) {
    use std::arch::x86_64::{__m128i, _mm_loadu_si128, _mm_sfence, _mm_stream_si128};
    const PAGE: usize = 4096;
    const LINE: usize = 64;
    // A plain copy up to the first line boundary of `dst` (the stores need
    // 16-byte alignment), and of whatever is left after the last block.
    let head = (dst as usize).wrapping_neg() % LINE;
    // SAFETY: `head < LINE <= len` (len >= STREAM_FROM), within both.
    unsafe { std::ptr::copy_nonoverlapping(src, dst, head) };
    let mut done = head;
    while len - done >= 4 * PAGE {
        for line in (0..PAGE).step_by(LINE) {
            for page in 0..4 {
                let at = done + page * PAGE + line;
                // SAFETY: `at + LINE <= done + 4 * PAGE <= len`, so the
                // line is inside both buffers; `dst + at` is 64-byte
                // aligned (`done` starts at the boundary and moves in
                // whole pages); the loads may be unaligned.
                unsafe {
                    let s = src.add(at).cast::<__m128i>();
                    let d = dst.add(at).cast::<__m128i>();
                    let (a, b) = (_mm_loadu_si128(s), _mm_loadu_si128(s.add(1)));
                    let (c, e) = (_mm_loadu_si128(s.add(2)), _mm_loadu_si128(s.add(3)));
                    _mm_stream_si128(d, a);
                    _mm_stream_si128(d.add(1), b);
                    _mm_stream_si128(d.add(2), c);
                    _mm_stream_si128(d.add(3), e);
                }
            }
        }
        done += 4 * PAGE;
    }
    // SAFETY: non-temporal stores are weakly ordered: the fence makes them
    // visible before anything this thread does next (the reader is told
    // through a later store or system call).
    unsafe { _mm_sfence() };
    // SAFETY: the rest, `done..len`, is inside both buffers.
    unsafe { std::ptr::copy_nonoverlapping(src.add(done), dst.add(done), len - done) };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn large_and_small_copies_are_exact_at_every_alignment() {
        let len = STREAM_FROM + 3 * 4096 + 77;
        let src: Vec<u8> = (0..len + 64).map(|i| (i * 7 % 251) as u8).collect();
        for (from, to) in [(0, 0), (1, 0), (0, 1), (13, 63), (64, 5)] {
            for n in [len, STREAM_FROM, 100, 0] {
                let mut dst = vec![0xEEu8; n + 128];
                // SAFETY: `src[from..from + n]` and `dst[to..to + n]` are
                // in bounds of two separate buffers.
                unsafe { copy_bytes(src.as_ptr().add(from), dst.as_mut_ptr().add(to), n) };
                assert!(dst[to..to + n] == src[from..from + n], "{from} {to} {n}");
                assert!(
                    dst[..to].iter().chain(&dst[to + n..]).all(|&b| b == 0xEE),
                    "{from} {to} {n}"
                );
            }
        }
        let mut buf = vec![1u8, 2];
        extend(&mut buf, &src[..len]);
        assert_eq!(buf.len(), len + 2);
        assert!(buf[..2] == [1, 2] && buf[2..] == src[..len]);
    }
}
