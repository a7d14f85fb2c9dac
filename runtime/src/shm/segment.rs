//! [`Segment`]: a shared-memory object mapped `MAP_SHARED`, the storage
//! under every shared-memory type.
//!
//! A segment has no name in any file system: nothing is left in `/dev/shm`
//! or the temp dir when a process crashes, and the memory is freed with the
//! last descriptor and mapping. Clones share one mapping (an [`Arc`]); a
//! segment sent to a worker travels as its descriptor (see
//! [`fdpass`]) plus its length, and the worker maps it again.
//!
//! Every segment's size is fixed, so no process can truncate it under a
//! mapping (which would turn reads into `SIGBUS`). A frozen segment (made
//! by [`Segment::sealed_copy`]) is also read-only everywhere: its bytes
//! can never change again, in any process. [`Segment::from_fd`] refuses a
//! descriptor that is not such an object of the length announced, so a
//! worker cannot hand this process memory it could still resize. What
//! upholds each of these on each platform (seals on Linux and FreeBSD,
//! one-time sizing and read-only descriptors on macOS) is in
//! [`crate::sys::shmfd`].

use std::ffi::CStr;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::ptr::NonNull;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU32, AtomicU64, AtomicUsize, Ordering};

use serde::de::{self, SeqAccess, Visitor};
use serde::ser::SerializeTuple;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::sys::{fdpass, shmfd};

/// A shared mapping of a shared-memory object. Cheap to clone (one
/// [`Arc`]).
#[derive(Clone)]
pub(crate) struct Segment {
    map: Arc<Mapping>,
}

struct Mapping {
    /// Start of the mapping; dangling (and never dereferenced) when
    /// `len == 0`.
    ptr: NonNull<u8>,
    len: usize,
    writable: bool,
    /// Its bytes can never change, in any process.
    frozen: bool,
    fd: OwnedFd,
    /// The object's identity ([`shmfd::identity`]): the same for every
    /// mapping of it in this process, so private bookkeeping keyed by it
    /// (the mutexes a thread holds, the leases this process holds) sees
    /// every handle of one object as one.
    identity: (u64, u64),
    /// Process-shared mutexes in this mapping that a thread of this process
    /// holds. A held mutex is recorded, by the segment's identity, in its
    /// thread's private list of held mutexes; a mapping with a held mutex
    /// (a guard that was `mem::forget`-ten) is leaked rather than unmapped,
    /// so the object, and with it the identity, is never reused by another
    /// segment while the record stands.
    held_locks: AtomicUsize,
    /// Unmap on a thread of its own if large: see [`Segment::unmap_behind`].
    unmap_behind: AtomicBool,
}

// SAFETY: the mapping is plain shared memory owned by this value; every
// access through a `Segment` is either atomic or covered by the safety
// contract of the unsafe accessor that hands out the pointer.
unsafe impl Send for Mapping {}
// SAFETY: as above.
unsafe impl Sync for Mapping {}

impl std::fmt::Debug for Segment {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Segment")
            .field("fd", &self.map.fd.as_raw_fd())
            .field("len", &self.map.len)
            .field("writable", &self.map.writable)
            .finish()
    }
}

fn invalid(msg: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.to_owned())
}

impl Segment {
    /// Creates a zeroed, writable segment of `len` bytes.
    ///
    /// # Errors
    ///
    /// If the object cannot be created, sized, sealed or mapped (out of
    /// memory, descriptor limit, `len` too large).
    pub(crate) fn create(name: &CStr, len: usize) -> io::Result<Segment> {
        let fd = shmfd::create(name, len)?;
        Segment::map(fd, len, true, false)
    }

    /// Creates a read-only segment holding a copy of `bytes`, frozen
    /// against any further change ([`shmfd::frozen_copy`]).
    ///
    /// # Errors
    ///
    /// As [`create`](Segment::create).
    pub(crate) fn sealed_copy(name: &CStr, bytes: &[u8]) -> io::Result<Segment> {
        let fd = shmfd::frozen_copy(name, bytes)?;
        Segment::map(fd, bytes.len(), false, true)
    }

    /// Maps a segment received from another process, checking that it is
    /// `len` bytes long and cannot be resized ([`shmfd::check_received`]).
    ///
    /// # Errors
    ///
    /// If the descriptor is not such a segment, or cannot be mapped.
    pub(crate) fn from_fd(fd: OwnedFd, len: usize) -> io::Result<Segment> {
        let got = shmfd::check_received(&fd, len)?;
        Segment::map(fd, len, got.writable, got.frozen)
    }

    fn map(fd: OwnedFd, len: usize, writable: bool, frozen: bool) -> io::Result<Segment> {
        let identity = shmfd::identity(&fd)?;
        let ptr = if len == 0 {
            NonNull::dangling()
        } else {
            let prot = if writable {
                libc::PROT_READ | libc::PROT_WRITE
            } else {
                libc::PROT_READ
            };
            // SAFETY: a fresh shared mapping of `len` bytes of an object
            // that holds them and whose size is fixed; checked for
            // MAP_FAILED below.
            let ptr = unsafe {
                libc::mmap(
                    std::ptr::null_mut(),
                    len,
                    prot,
                    libc::MAP_SHARED,
                    fd.as_raw_fd(),
                    0,
                )
            };
            if ptr == libc::MAP_FAILED {
                return Err(io::Error::last_os_error());
            }
            NonNull::new(ptr.cast::<u8>()).ok_or_else(|| invalid("mmap returned null"))?
        };
        Ok(Segment {
            map: Arc::new(Mapping {
                ptr,
                len,
                writable,
                frozen,
                fd,
                identity,
                held_locks: AtomicUsize::new(0),
                unmap_behind: AtomicBool::new(false),
            }),
        })
    }

    /// Length in bytes.
    pub(crate) fn len(&self) -> usize {
        self.map.len
    }

    /// `false` for a segment mapped read-only.
    pub(crate) fn is_writable(&self) -> bool {
        self.map.writable
    }

    /// `true` if the segment's bytes can never change, in any process
    /// (made by [`sealed_copy`](Segment::sealed_copy) here, or received
    /// with proof of it, see [`shmfd::check_received`]).
    pub(crate) fn is_frozen(&self) -> bool {
        self.map.frozen
    }

    /// Start of the mapping (page-aligned). Dangling when the segment is
    /// empty. Valid as long as this segment (or a clone) lives.
    pub(crate) fn as_ptr(&self) -> *mut u8 {
        self.map.ptr.as_ptr()
    }

    /// The object's descriptor.
    pub(crate) fn fd(&self) -> BorrowedFd<'_> {
        self.map.fd.as_fd()
    }

    /// The object's identity in this process ([`shmfd::identity`]): equal
    /// for every mapping of one object, whoever sent it.
    pub(crate) fn identity(&self) -> (u64, u64) {
        self.map.identity
    }

    /// Records that this process now holds a mutex in the segment; the
    /// mapping will not be unmapped until [`unlocked`](Segment::unlocked)
    /// balances it.
    pub(crate) fn locked(&self) {
        self.map.held_locks.fetch_add(1, Ordering::Relaxed);
    }

    /// Balances a [`locked`](Segment::locked).
    pub(crate) fn unlocked(&self) {
        self.map.held_locks.fetch_sub(1, Ordering::Relaxed);
    }

    /// Has this mapping, once its last handle is dropped, unmapped on a
    /// thread of its own if it is [`UNMAP_BEHIND_FROM`] bytes or more:
    /// tearing down the page tables of a GiB takes milliseconds, which the
    /// thread that drops the last handle (a worker about to answer) need
    /// not wait for. The memory stays mapped, and unused, until then.
    pub(crate) fn unmap_behind(&self) {
        self.map.unmap_behind.store(true, Ordering::Relaxed);
    }

    /// `true` if both handles share one mapping.
    pub(crate) fn same_mapping(&self, other: &Segment) -> bool {
        Arc::ptr_eq(&self.map, &other.map)
    }

    /// Panics unless `[offset, offset + size)` is inside the segment and
    /// `offset` is a multiple of `align`.
    fn check(&self, offset: usize, size: usize, align: usize) {
        let end = offset.checked_add(size).expect("offset overflows");
        assert!(
            end <= self.len(),
            "range {offset}..{end} is outside a segment of {} bytes",
            self.len()
        );
        assert!(
            offset % align == 0,
            "offset {offset} is not aligned to {align}"
        );
    }

    /// The `u32` at `offset`, as an atomic.
    ///
    /// # Panics
    ///
    /// If the word is outside the segment or misaligned, or the segment is
    /// read-only.
    pub(crate) fn atomic_u32(&self, offset: usize) -> &AtomicU32 {
        assert!(self.is_writable(), "atomics need a writable segment");
        self.check(offset, 4, 4);
        // SAFETY: in bounds and aligned (checked), inside a writable shared
        // mapping that lives as long as `&self`; any bit pattern is a valid
        // AtomicU32, and all accesses to shared words are atomic.
        unsafe { &*self.as_ptr().add(offset).cast::<AtomicU32>() }
    }

    /// The `u64` at `offset`, as an atomic.
    ///
    /// # Panics
    ///
    /// As [`atomic_u32`](Segment::atomic_u32).
    pub(crate) fn atomic_u64(&self, offset: usize) -> &AtomicU64 {
        assert!(self.is_writable(), "atomics need a writable segment");
        self.check(offset, 8, 8);
        // SAFETY: as in `atomic_u32`.
        unsafe { &*self.as_ptr().add(offset).cast::<AtomicU64>() }
    }

    fn atomic_u8(&self, offset: usize) -> &AtomicU8 {
        self.check(offset, 1, 1);
        // SAFETY: in bounds (checked) inside a shared mapping that lives as
        // long as `&self`; any bit pattern is a valid AtomicU8. Only loads
        // are made through it in a read-only mapping (`copy_out`).
        unsafe { &*self.as_ptr().add(offset).cast::<AtomicU8>() }
    }

    /// Maps the pages holding bytes `offset .. offset + len` into this
    /// process now (`MADV_POPULATE_READ`), so that reading them takes no
    /// page faults: the kernel fills the page tables in one pass, several
    /// times faster than one fault per page. Advice only: on a kernel
    /// without it (before Linux 5.14), or if it fails, nothing changes and
    /// reads fault the pages in as usual.
    ///
    /// # Panics
    ///
    /// If the range is outside the segment.
    pub(crate) fn populate(&self, offset: usize, len: usize) {
        self.check(offset, len, 1);
        if len == 0 {
            return;
        }
        // SAFETY: sysconf only reads a constant of the system.
        let page = usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) })
            .ok()
            .filter(|p| p.is_power_of_two())
            .unwrap_or(4096);
        let start = offset & !(page - 1);
        // The mapping covers whole pages, so rounding the end up stays
        // inside it.
        let end = (offset + len).next_multiple_of(page);
        // SAFETY: `start..end` lies inside this segment's mapping (checked,
        // rounded to the pages the mapping covers), which lives as long as
        // `&self`; MADV_POPULATE_READ only fills page tables, as reading
        // the bytes would, and changes no byte.
        #[cfg(target_os = "linux")]
        unsafe {
            libc::madvise(
                self.as_ptr().add(start).cast(),
                end - start,
                libc::MADV_POPULATE_READ,
            );
        }
        // Elsewhere (no MADV_POPULATE_READ) reads fault the pages in.
        #[cfg(not(target_os = "linux"))]
        let _ = (start, end);
    }

    /// The `u64` at `offset` (in bounds, aligned), for loads only: also in
    /// a read-only mapping, where atomic loads are allowed.
    fn load_u64(&self, offset: usize) -> u64 {
        self.check(offset, 8, 8);
        // SAFETY: in bounds and aligned (checked) inside a shared mapping
        // that lives as long as `&self`; any bit pattern is a valid
        // AtomicU64, and only a load is made through it.
        unsafe { &*self.as_ptr().add(offset).cast::<AtomicU64>() }.load(Ordering::Relaxed)
    }

    /// Copies `src` into the segment at `offset` with relaxed atomic stores
    /// (eight bytes at a time where aligned), so that it is sound even while
    /// other processes access the same bytes; they may see a torn mix of old
    /// and new bytes unless the caller orders the accesses (a lock, or a
    /// release store of an index after the copy).
    ///
    /// # Panics
    ///
    /// If the range is outside the segment, or the segment is read-only.
    pub(crate) fn copy_in(&self, offset: usize, src: &[u8]) {
        assert!(self.is_writable(), "cannot write a sealed segment");
        self.check(offset, src.len(), 1);
        let mut i = 0;
        while i < src.len() {
            let at = offset + i;
            if at % 8 == 0 && src.len() - i >= 8 {
                let word = u64::from_ne_bytes(src[i..i + 8].try_into().expect("8 bytes"));
                self.atomic_u64(at).store(word, Ordering::Relaxed);
                i += 8;
            } else {
                self.atomic_u8(at).store(src[i], Ordering::Relaxed);
                i += 1;
            }
        }
    }

    /// Copies bytes of the segment at `offset` into `dst` with relaxed
    /// atomic loads; see [`copy_in`](Segment::copy_in).
    ///
    /// # Panics
    ///
    /// If the range is outside the segment.
    pub(crate) fn copy_out(&self, offset: usize, dst: &mut [u8]) {
        self.check(offset, dst.len(), 1);
        if self.is_frozen() {
            // SAFETY: in bounds (checked); a frozen segment's bytes never
            // change, so a plain copy races with nothing.
            unsafe {
                std::ptr::copy_nonoverlapping(
                    self.as_ptr().add(offset),
                    dst.as_mut_ptr(),
                    dst.len(),
                );
            }
            return;
        }
        let mut i = 0;
        while i < dst.len() {
            let at = offset + i;
            if at % 8 == 0 && dst.len() - i >= 8 {
                let word = self.load_u64(at);
                dst[i..i + 8].copy_from_slice(&word.to_ne_bytes());
                i += 8;
            } else {
                dst[i] = self.atomic_u8(at).load(Ordering::Relaxed);
                i += 1;
            }
        }
    }
}

/// Mappings of at least this many bytes may be unmapped behind the thread
/// that drops them (see [`Segment::unmap_behind`]).
const UNMAP_BEHIND_FROM: usize = 64 << 20;

impl Drop for Mapping {
    fn drop(&mut self) {
        if self.len == 0 || *self.held_locks.get_mut() != 0 {
            return;
        }
        let (at, len) = (self.ptr.as_ptr() as usize, self.len);
        // SAFETY: unmapping the mapping made in `Segment::map`, once; no
        // reference into it outlives the last `Segment` clone, and nothing
        // else can be mapped at its addresses before this unmaps them.
        let unmap = move || unsafe { libc::munmap(at as *mut libc::c_void, len) };
        let behind = *self.unmap_behind.get_mut() && len >= UNMAP_BEHIND_FROM;
        if behind
            && std::thread::Builder::new()
                .name("multiproc-unmap".to_owned())
                .spawn(unmap)
                .is_ok()
        {
            return;
        }
        unmap();
    }
}

/// Serialises as `(descriptor, length)`; see [`fdpass`].
impl Serialize for Segment {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        struct Fd<'a>(BorrowedFd<'a>);
        impl Serialize for Fd<'_> {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                fdpass::serialize_fd(self.0, s)
            }
        }
        let mut t = serializer.serialize_tuple(2)?;
        t.serialize_element(&Fd(self.fd()))?;
        t.serialize_element(&(self.len() as u64))?;
        t.end()
    }
}

impl<'de> Deserialize<'de> for Segment {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Segment, D::Error> {
        struct Fd(OwnedFd);
        impl<'de> Deserialize<'de> for Fd {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Fd, D::Error> {
                fdpass::deserialize_fd(d).map(Fd)
            }
        }
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Segment;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a shared memory segment (descriptor, length)")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Segment, A::Error> {
                let Fd(fd) = seq
                    .next_element()?
                    .ok_or_else(|| de::Error::invalid_length(0, &self))?;
                let len: u64 = seq
                    .next_element()?
                    .ok_or_else(|| de::Error::invalid_length(1, &self))?;
                let len = usize::try_from(len).map_err(de::Error::custom)?;
                Segment::from_fd(fd, len).map_err(de::Error::custom)
            }
        }
        deserializer.deserialize_tuple(2, V)
    }
}

/// Wraps an OS error of shared memory.
pub(crate) fn shm_error(e: io::Error) -> crate::error::Error {
    crate::error::Error::new(crate::error::ErrorKind::SharedMemory(e))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Sends `value` through postcard + the descriptor table, as a task
    /// argument would travel.
    pub(crate) fn round_trip<T: Serialize + serde::de::DeserializeOwned>(value: &T) -> T {
        let (bytes, fds) = fdpass::capture(|| postcard::to_stdvec(value).unwrap());
        fdpass::with_table(fds, || postcard::from_bytes(&bytes).unwrap())
    }

    #[test]
    fn a_sent_segment_maps_the_same_memory() {
        let a = Segment::create(c"test", 4096).unwrap();
        let b = round_trip(&a);
        assert!(!a.same_mapping(&b));
        assert_ne!(a.as_ptr(), b.as_ptr());
        a.atomic_u64(8).store(42, Ordering::SeqCst);
        assert_eq!(b.atomic_u64(8).load(Ordering::SeqCst), 42);
        b.copy_in(13, b"hello, shared world");
        let mut got = [0u8; 19];
        a.copy_out(13, &mut got);
        assert_eq!(&got, b"hello, shared world");
    }

    #[test]
    fn sealed_segments_stay_read_only() {
        let s = Segment::sealed_copy(c"test", b"abc").unwrap();
        assert!(!s.is_writable());
        let r = round_trip(&s);
        assert!(!r.is_writable());
        let mut got = [0u8; 3];
        r.copy_out(0, &mut got);
        assert_eq!(&got, b"abc");
        // Writes through the descriptor are refused by the kernel.
        let mut f = std::fs::File::from(s.fd().try_clone_to_owned().unwrap());
        assert!(std::io::Write::write_all(&mut f, b"x").is_err());
        let empty = Segment::sealed_copy(c"test", b"").unwrap();
        assert_eq!(round_trip(&empty).len(), 0);
    }

    #[test]
    fn a_segment_of_another_length_is_refused() {
        let a = Segment::create(c"test", 4096).unwrap();
        let fd = a.fd().try_clone_to_owned().unwrap();
        let err = Segment::from_fd(fd, 8192).unwrap_err();
        assert!(err.to_string().contains("length"), "{err}");
    }

    #[test]
    fn a_segment_keeps_its_identity_across_handles() {
        let a = Segment::create(c"test", 4096).unwrap();
        assert_eq!(a.identity(), round_trip(&a).identity());
        assert_ne!(
            a.identity(),
            Segment::create(c"test", 64).unwrap().identity()
        );
    }

    /// How many mappings of the memfd with inode `ino` this process has.
    fn mappings_of(ino: u64) -> usize {
        let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
        maps.lines()
            .filter(|l| l.split_whitespace().nth(4) == Some(&ino.to_string()))
            .count()
    }

    #[test]
    fn a_large_mapping_is_unmapped_behind_its_last_handle() {
        let big = Segment::create(c"test", UNMAP_BEHIND_FROM).unwrap();
        big.unmap_behind();
        big.populate(0, big.len());
        let ino = big.identity().1;
        let received = round_trip(&big);
        assert_eq!(mappings_of(ino), 2);
        // Not marked: unmapped at once.
        drop(received);
        assert_eq!(mappings_of(ino), 1);
        let clone = big.clone();
        drop(big);
        assert_eq!(mappings_of(ino), 1, "a clone still holds the mapping");
        drop(clone);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while mappings_of(ino) > 0 {
            assert!(std::time::Instant::now() < deadline, "never unmapped");
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        // Marked but small: unmapped at once.
        let small = Segment::create(c"test", 4096).unwrap();
        small.unmap_behind();
        let ino = small.identity().1;
        drop(small);
        assert_eq!(mappings_of(ino), 0);
    }

    #[test]
    fn a_received_read_only_segment_reads_the_same_bytes() {
        let s = Segment::sealed_copy(c"test", b"0123456789abcdef").unwrap();
        assert!(s.is_frozen());
        let r = round_trip(&s);
        let mut got = [0u8; 13];
        r.copy_out(3, &mut got);
        assert_eq!(&got, b"3456789abcdef");
    }

    #[test]
    #[should_panic(expected = "outside a segment")]
    fn out_of_bounds_atomics_panic() {
        let s = Segment::create(c"test", 64).unwrap();
        let _ = s.atomic_u64(64);
    }
}
