//! [`SharedBytes`]: an immutable byte buffer in shared memory, for large
//! worker arguments.

use std::fmt;
use std::ops::Deref;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::segment::{Segment, shm_error};
use crate::error::Result;

/// An immutable byte buffer in shared memory: passing it to a worker sends
/// a descriptor, not the bytes, so a 64 MiB argument costs no copy through
/// the socket (the worker maps the same pages).
///
/// The buffer is written once, when it is created, and then frozen by the
/// kernel against any change (on Linux and FreeBSD the seals
/// `F_SEAL_WRITE`, `F_SEAL_GROW`, `F_SEAL_SHRINK`, `F_SEAL_SEAL`; on macOS
/// a read-only descriptor of memory sized once): no process can write,
/// resize or unseal it again, so it is read as a plain `&[u8]` without
/// locks. A buffer that arrives from another process is refused unless the
/// kernel reports all of these seals and the announced length. Where no
/// seal can prove that its sender kept no writable descriptor (macOS),
/// a buffer that arrives is copied once into memory of the receiver's own,
/// frozen like the sender's. Clones share one mapping.
///
/// ```ignore
/// #[worker]
/// fn checksum(data: SharedBytes) -> u64 { data.iter().map(|&b| u64::from(b)).sum() }
/// let big = SharedBytes::from_vec(vec![1u8; 64 << 20])?;
/// let sum = Process::spawn(checksum, big.clone())?.join()?;
/// ```
#[derive(Clone)]
pub struct SharedBytes {
    seg: Segment,
}

impl SharedBytes {
    /// Moves `bytes` into shared memory (one copy, into the kernel's pages;
    /// the `Vec` is freed).
    ///
    /// # Errors
    ///
    /// [`SharedMemory`](crate::ErrorKind::SharedMemory) if the memory
    /// cannot be created (out of memory, descriptor limit).
    pub fn from_vec(bytes: Vec<u8>) -> Result<SharedBytes> {
        SharedBytes::copy_from_slice(&bytes)
    }

    /// Copies `bytes` into shared memory.
    ///
    /// # Errors
    ///
    /// As [`from_vec`](Self::from_vec).
    pub fn copy_from_slice(bytes: &[u8]) -> Result<SharedBytes> {
        let seg = Segment::sealed_copy(c"multiproc-bytes", bytes).map_err(shm_error)?;
        Ok(SharedBytes { seg })
    }

    /// The bytes (also available through `Deref`).
    pub fn as_slice(&self) -> &[u8] {
        // SAFETY: the segment is frozen against writes and resizing (checked
        // on receipt in `deserialize`; set by `sealed_copy` on creation), so
        // its `len` mapped bytes never change; the mapping lives as long as
        // `&self`. For an empty segment the pointer is dangling but
        // non-null and aligned, which a zero-length slice allows.
        unsafe { std::slice::from_raw_parts(self.seg.as_ptr(), self.seg.len()) }
    }
}

impl Deref for SharedBytes {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        self.as_slice()
    }
}

impl AsRef<[u8]> for SharedBytes {
    fn as_ref(&self) -> &[u8] {
        self.as_slice()
    }
}

impl fmt::Debug for SharedBytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SharedBytes")
            .field("len", &self.seg.len())
            .finish()
    }
}

/// Serialises as a reference to the shared memory (its descriptor and
/// length), never as the bytes.
impl Serialize for SharedBytes {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.seg.serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for SharedBytes {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let seg = Segment::deserialize(deserializer)?;
        if seg.is_writable() {
            return Err(serde::de::Error::custom(
                "SharedBytes arrived as memory that is not sealed against writes",
            ));
        }
        if !seg.is_frozen() {
            // Read-only here, but nothing proves the sender holds no
            // writable descriptor: a private frozen copy, read once.
            let mut bytes = vec![0u8; seg.len()];
            seg.copy_out(0, &mut bytes);
            return SharedBytes::copy_from_slice(&bytes).map_err(serde::de::Error::custom);
        }
        populate(&seg);
        Ok(SharedBytes { seg })
    }
}

/// Buffers from this size on are mapped in full when they arrive.
#[cfg_attr(not(target_os = "linux"), allow(dead_code))]
const POPULATE_FROM: usize = 1 << 20;

/// Maps every page of a large buffer that just arrived, in one call
/// (`MADV_POPULATE_READ`) instead of one page fault per 4 KiB page as the
/// worker first reads it: for 64 MiB, 16,384 faults. The pages already
/// exist (the sender wrote them); this only fills in the page tables.
/// Best effort, and Linux only: kernels before 5.14 do not know the advice,
/// and the buffer then faults in as it is read, as it does elsewhere.
#[cfg(target_os = "linux")]
fn populate(seg: &Segment) {
    if seg.len() < POPULATE_FROM {
        return;
    }
    // SAFETY: `as_ptr()..as_ptr() + len()` is this segment's own mapping,
    // alive for the call; MADV_POPULATE_READ only prefaults it for reading
    // and changes no data.
    unsafe { libc::madvise(seg.as_ptr().cast(), seg.len(), libc::MADV_POPULATE_READ) };
}

#[cfg(not(target_os = "linux"))]
fn populate(_seg: &Segment) {}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shm::segment::tests::round_trip;

    #[test]
    fn bytes_arrive_intact() {
        let b = SharedBytes::from_vec((0..=255u8).cycle().take(10_000).collect()).unwrap();
        let r = round_trip(&b);
        assert_eq!(&*r, &*b);
        assert_eq!(r.len(), 10_000);
        assert_eq!(r[300], 44);
        assert!(round_trip(&SharedBytes::from_vec(Vec::new()).unwrap()).is_empty());
    }

    #[test]
    fn large_buffers_arrive_populated_and_intact() {
        let len = POPULATE_FROM * 2 + 3;
        let b = SharedBytes::from_vec((0..len).map(|i| (i % 251) as u8).collect()).unwrap();
        let r = round_trip(&b);
        assert_eq!(r.len(), len);
        assert!(r.iter().enumerate().all(|(i, &x)| x == (i % 251) as u8));
    }

    #[test]
    fn writable_memory_is_refused() {
        let seg = Segment::create(c"test", 16).unwrap();
        let (bytes, fds) = crate::sys::fdpass::capture(|| postcard::to_stdvec(&seg).unwrap());
        let got = crate::sys::fdpass::with_table(fds, || {
            postcard::from_bytes::<SharedBytes>(&bytes).map(|_| ())
        });
        assert!(got.is_err());
    }
}
