//! [`Arena`]: a shared buffer that carries large frames between a pool's
//! driver and its worker process instead of the control socket.
//!
//! A unix socket moves at most its buffer (about 208 KiB) per wake-up of
//! the reader: a 64 MiB result crossed it in ~1,800 reads of 36 KiB, each a
//! wake-up and a context switch, which took 50–220 ms on the 2-core VM of
//! BENCHMARKS.md. Through an arena, the same bytes are one copy into memory
//! that both processes keep mapped (its pages stay faulted in from one frame
//! to the next), one small frame on the socket, and one copy out.
//!
//! Each worker has five, all created by the parent and sent to the child:
//! the *request* arena (parent → child) and four *reply* arenas (child →
//! parent, `proto::REPLY_ARENAS`), which the child uses in turn. Who may
//! touch which bytes when:
//!
//! - request: a ring. The parent writes a batch where no batch still in
//!   flight with that child lies (the child answers them in order, and
//!   has finished reading a batch once it has answered it), and says where
//!   in the `RUN_SHARED` frame; the child reads it while it runs that
//!   batch. So batches can wait there for the child, as small ones wait in
//!   the socket, without the parent ever blocking on a full socket.
//! - reply: the child writes a reply into an arena only when the parent
//!   has released the previous one there (the release counter in the
//!   arena's first word equals the number of replies it wrote there); it
//!   tries them in turn, and if none is free it sends the reply
//!   through the socket. The parent copies the reply out (or decodes it in
//!   place), then stores its sequence number in the counter (release),
//!   which the child loads (acquire).
//!
//! So no byte is ever written by one process while the other reads it.

use std::io;
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::shm::segment::Segment;

/// Frames with a body at least this large go through the arenas: below it
/// a frame is a single write and read on the socket. (From 1 MiB, a `map`
/// of 1 M integers sent its 1 MB batches and replies through the socket,
/// a few reads and wake-ups each, and cost 40–70% more per item than one
/// of 10 M, whose 4 MiB batches went through the arenas.)
pub(crate) const ARENA_FROM: usize = 64 << 10;

/// Largest arena: the largest frame the protocol allows, plus the header.
const MAX_ARENA: usize = (1 << 30) + HEADER;

/// Bytes before the data: the release counter, on its own cache line.
const HEADER: usize = 64;

/// One shared buffer of an [`ARENA_FROM`]-or-larger frame.
#[derive(Debug)]
pub(crate) struct Arena {
    seg: Segment,
}

impl Arena {
    /// An arena for frames of up to `capacity` bytes (rounded up to a power
    /// of two: the pages that are never written cost nothing).
    ///
    /// # Errors
    ///
    /// If the memfd cannot be created or mapped, or `capacity` is over the
    /// largest frame.
    pub(crate) fn create(capacity: usize) -> io::Result<Arena> {
        let len = (capacity + HEADER).next_power_of_two().max(2 << 20);
        if len > MAX_ARENA.next_power_of_two() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "frame too large for a shared buffer",
            ));
        }
        Ok(Arena {
            seg: Segment::create(c"multiproc-frames", len)?,
        })
    }

    /// Maps an arena received from the parent; `len` is its whole length.
    ///
    /// # Errors
    ///
    /// If the descriptor is not a sealed memfd of `len` bytes, or `len` is
    /// not a size [`create`](Arena::create) makes.
    pub(crate) fn from_fd(fd: OwnedFd, len: usize) -> io::Result<Arena> {
        if len <= HEADER || !len.is_power_of_two() || len > MAX_ARENA.next_power_of_two() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "a shared frame buffer arrived with a bad length",
            ));
        }
        Ok(Arena {
            seg: Segment::from_fd(fd, len)?,
        })
    }

    /// The whole length, to send with the descriptor.
    pub(crate) fn len(&self) -> usize {
        self.seg.len()
    }

    /// The memfd, to send to the child.
    pub(crate) fn fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.seg.fd()
    }

    /// Largest frame body it holds.
    pub(crate) fn capacity(&self) -> usize {
        self.seg.len() - HEADER
    }

    fn released(&self) -> &AtomicU64 {
        self.seg.atomic_u64(0)
    }

    /// How many replies the parent has released.
    pub(crate) fn released_count(&self) -> u64 {
        self.released().load(Ordering::Acquire)
    }

    /// Releases the replies up to and including number `seq`.
    pub(crate) fn release(&self, seq: u64) {
        self.released().store(seq, Ordering::Release);
    }

    /// Copies `bytes` to `offset` in the data.
    ///
    /// # Panics
    ///
    /// If they do not fit below [`capacity`](Arena::capacity).
    ///
    /// # Safety
    ///
    /// No other process may read or write those bytes of the data until
    /// this process hands them over (see the module docs).
    pub(crate) unsafe fn write_at(&self, offset: usize, bytes: &[u8]) {
        assert!(
            offset
                .checked_add(bytes.len())
                .is_some_and(|end| end <= self.capacity()),
            "frame over the arena"
        );
        // SAFETY: in bounds (checked above) of a writable mapping that
        // lives as long as `self`; nobody else touches the range (the
        // caller's contract), and `bytes` is private memory, so the two
        // cannot overlap.
        unsafe {
            crate::mem::copy::copy_bytes(
                bytes.as_ptr(),
                self.seg.as_ptr().add(HEADER + offset),
                bytes.len(),
            );
        }
    }

    /// The data from `offset` to the capacity, to be written in place;
    /// `None` if `offset` is over the capacity.
    ///
    /// # Safety
    ///
    /// As for [`write_at`](Arena::write_at), for all of those bytes, for
    /// as long as the pointer is used; and no reference to them may live
    /// meanwhile.
    pub(crate) unsafe fn room_at(
        &self,
        offset: usize,
    ) -> Option<(*mut std::mem::MaybeUninit<u8>, usize)> {
        let len = self.capacity().checked_sub(offset)?;
        // SAFETY: in bounds of a writable mapping that lives as long as
        // `self` (`offset` is at most the capacity).
        let ptr = unsafe { self.seg.as_ptr().add(HEADER + offset) };
        Some((ptr.cast(), len))
    }

    /// The first `len` bytes of the data, or `None` if `len` is over the
    /// capacity.
    ///
    /// # Safety
    ///
    /// No other process may write those bytes while the slice lives (see
    /// the module docs).
    pub(crate) unsafe fn bytes(&self, len: usize) -> Option<&[u8]> {
        // SAFETY: the caller's contract.
        unsafe { self.bytes_at(0, len) }
    }

    /// The `len` bytes at `offset` in the data, or `None` if they are not
    /// all below the capacity.
    ///
    /// # Safety
    ///
    /// No other process may write those bytes while the slice lives (see
    /// the module docs).
    pub(crate) unsafe fn bytes_at(&self, offset: usize, len: usize) -> Option<&[u8]> {
        let fits = offset
            .checked_add(len)
            .is_some_and(|end| end <= self.capacity());
        fits.then(|| {
            // SAFETY: in bounds (checked) of a mapping that lives as long
            // as `&self`; nobody writes the range meanwhile (the caller's
            // contract), so it may be read as plain bytes.
            unsafe { std::slice::from_raw_parts(self.seg.as_ptr().add(HEADER + offset), len) }
        })
    }
}

/// A reply left in the reply arena for its reader to decode in place
/// (instead of being copied out first): released to the child when it is
/// dropped. Until then the child sends its replies through the socket.
#[derive(Debug)]
pub(crate) struct Lease {
    arena: std::sync::Arc<Arena>,
    seq: u64,
    len: usize,
}

impl Lease {
    /// The `len` bytes of reply number `seq` in `arena`; `None` if `len`
    /// is over its capacity.
    ///
    /// # Safety
    ///
    /// The child wrote reply `seq` there and has not been told it is
    /// released (so it does not write the arena until this lease drops).
    pub(crate) unsafe fn new(arena: std::sync::Arc<Arena>, seq: u64, len: usize) -> Option<Lease> {
        (len <= arena.capacity()).then_some(Lease { arena, seq, len })
    }
}

impl std::ops::Deref for Lease {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        // SAFETY: in range (checked in `new`); the child does not write the
        // arena before `drop` releases it (the contract of `new`).
        unsafe { self.arena.bytes(self.len) }.unwrap_or_default()
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.arena.release(self.seq);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_other_side_sees_the_bytes_and_the_release() {
        let a = Arena::create(3 << 20).unwrap();
        assert_eq!(a.len(), 4 << 20);
        assert!(a.capacity() >= 3 << 20);
        let fd = a.fd().try_clone_to_owned().unwrap();
        let b = Arena::from_fd(fd, a.len()).unwrap();
        let data: Vec<u8> = (0..3 << 20).map(|i| (i % 253) as u8).collect();
        // SAFETY: single-threaded test; nothing else touches the arena.
        unsafe { a.write_at(0, &data) };
        // SAFETY: as above.
        assert_eq!(unsafe { b.bytes(data.len()) }.unwrap(), &data[..]);
        // SAFETY: as above.
        assert!(unsafe { b.bytes(b.capacity() + 1) }.is_none());
        // SAFETY: as above.
        unsafe { a.write_at(5, b"tail") };
        // SAFETY: as above.
        assert_eq!(unsafe { b.bytes_at(5, 4) }.unwrap(), b"tail");
        // SAFETY: as above.
        assert!(unsafe { b.bytes_at(b.capacity() - 3, 4) }.is_none());
        // SAFETY: as above.
        assert!(unsafe { b.bytes_at(usize::MAX, 2) }.is_none());
        assert_eq!(b.released_count(), 0);
        a.release(7);
        assert_eq!(b.released_count(), 7);
    }

    #[test]
    fn bad_lengths_are_refused() {
        let a = Arena::create(1).unwrap();
        let fd = || a.fd().try_clone_to_owned().unwrap();
        assert!(Arena::from_fd(fd(), a.len() / 2).is_err()); // not its length
        assert!(Arena::from_fd(fd(), 3 << 20).is_err()); // not a power of two
        assert!(Arena::from_fd(fd(), 0).is_err());
        assert!(Arena::create(2 << 30).is_err());
    }
}
