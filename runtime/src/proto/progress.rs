//! A worker's progress page: which item of which batch the child is running
//! and since when. The child writes it before each item; the parent reads it
//! when the child dies or a task overstays its time limit, so that exactly
//! the item that was running is blamed and every other item is re-run.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU64, Ordering};

/// Sentinel: no item is running.
pub(crate) const IDLE: u64 = u64::MAX;

#[repr(C)]
struct Page {
    /// Batch id being run, or 0.
    batch: AtomicU64,
    /// Index of the running item within the batch, or [`IDLE`].
    item: AtomicU64,
    /// `CLOCK_MONOTONIC` nanoseconds when the item started (0 when the
    /// parent has not asked for timing).
    started_ns: AtomicU64,
    /// Non-zero when the parent wants `started_ns` kept up to date.
    want_time: AtomicU64,
    /// `(batch as u32) << 32 | item`: the parent asks the child to stop the
    /// batch before that item (work stealing); the rest is re-queued.
    stop: AtomicU64,
    /// Set as the child aborts: [`ALLOC_FAILED`] if an allocation had
    /// just failed, [`ABORTED`] if not, else 0.
    aborting: AtomicU64,
    /// Bytes of private data and stack the child had mapped then (0 if it
    /// could not tell), stored before `aborting`.
    data_in_use: AtomicU64,
}

/// The words a child stores in its page as it aborts (`SIGABRT`); any
/// other value says nothing.
const ALLOC_FAILED: u64 = u64::from_le_bytes(*b"no-alloc");
const ABORTED: u64 = u64::from_le_bytes(*b"aborting");

/// What a child said of itself as it aborted ([`Progress::abort_note`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct AbortNote {
    /// An allocation had just failed (`errno` was `ENOMEM`).
    pub(crate) alloc_failed: bool,
    /// Bytes of private data and stack it had mapped, if it could tell.
    pub(crate) in_use: Option<u64>,
}

const SIZE: usize = 4096;

/// The items of one batch, as its child records them in the progress page
/// ([`Progress::items`]). Holding the page itself, not the [`Progress`],
/// keeps its address out of memory in the loop of a dense batch: through
/// the `Progress`, it was loaded again after every item's store.
pub(crate) struct ItemLog<'a> {
    page: &'a Page,
    batch: u64,
    timed: bool,
}

impl ItemLog<'_> {
    /// Item `index` starts now — unless the parent asked to stop the batch
    /// at or before it: then `false`.
    #[inline]
    pub(crate) fn begin(&self, index: u64) -> bool {
        let p = self.page;
        let stop = p.stop.load(Ordering::Relaxed);
        if stop >> 32 == self.batch & 0xffff_ffff && index >= stop & 0xffff_ffff {
            return false;
        }
        if self.timed {
            p.started_ns.store(monotonic_ns(), Ordering::Relaxed);
        }
        p.item.store(index, Ordering::Release);
        true
    }
}

/// A mapping of one worker's progress page.
pub(crate) struct Progress {
    page: NonNull<Page>,
    fd: OwnedFd,
}

// SAFETY: the page is only accessed through atomics.
unsafe impl Send for Progress {}
// SAFETY: the page is only accessed through atomics.
unsafe impl Sync for Progress {}

impl Progress {
    /// Creates a new zeroed page (close-on-exec; the spawner lets exactly one
    /// child inherit it).
    ///
    /// The page's size is fixed before anyone else sees it
    /// ([`crate::sys::shmfd`]): a child that could shrink it would make the
    /// parent's next read of its mapping a SIGBUS.
    pub(crate) fn create() -> io::Result<Progress> {
        Progress::map(crate::sys::shmfd::create(c"multiproc-progress", SIZE)?)
    }

    /// Maps a page inherited from the parent.
    ///
    /// # Safety
    ///
    /// `fd` must be a progress page created by [`Progress::create`] and
    /// owned by the caller.
    pub(crate) unsafe fn from_inherited(fd: RawFd) -> io::Result<Progress> {
        // SAFETY: the caller passes ownership of a valid descriptor.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        if !crate::sys::shmfd::fits(&fd, SIZE)? {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "not a progress page",
            ));
        }
        Progress::map(fd)
    }

    fn map(fd: OwnedFd) -> io::Result<Progress> {
        // SAFETY: a fresh shared mapping of a SIZE-byte file we own; checked
        // for MAP_FAILED below.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                SIZE,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd.as_raw_fd(),
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let page = NonNull::new(ptr.cast::<Page>()).ok_or_else(io::Error::last_os_error)?;
        Ok(Progress { page, fd })
    }

    #[cfg(test)]
    pub(crate) fn raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    pub(crate) fn fd(&self) -> std::os::fd::BorrowedFd<'_> {
        std::os::fd::AsFd::as_fd(&self.fd)
    }

    fn page(&self) -> &Page {
        // SAFETY: the mapping is page-aligned, SIZE bytes, lives as long as
        // `self`, and holds only atomics (zero is a valid value for each).
        unsafe { self.page.as_ref() }
    }

    /// Ask the child to timestamp each item. The parent never does: it
    /// times items on its own clock (a child can write any time here).
    #[cfg(test)]
    pub(crate) fn set_want_time(&self, on: bool) {
        self.page()
            .want_time
            .store(u64::from(on), Ordering::Relaxed);
    }

    /// Parent: forget what the previous child wrote.
    pub(crate) fn reset(&self) {
        let p = self.page();
        p.batch.store(0, Ordering::Relaxed);
        p.item.store(IDLE, Ordering::Relaxed);
        p.started_ns.store(0, Ordering::Relaxed);
        p.stop.store(u64::MAX, Ordering::Relaxed);
        p.aborting.store(0, Ordering::Relaxed);
        p.data_in_use.store(0, Ordering::Relaxed);
    }

    /// Child: the process is aborting, with `in_use` bytes of private
    /// memory mapped (0: unknown), and an allocation had just failed if
    /// `alloc_failed`. Atomic stores only: called from a signal handler.
    pub(crate) fn note_abort(&self, in_use: u64, alloc_failed: bool) {
        let p = self.page();
        p.data_in_use.store(in_use, Ordering::Relaxed);
        let word = if alloc_failed { ALLOC_FAILED } else { ABORTED };
        p.aborting.store(word, Ordering::Release);
    }

    /// Parent, after the child died: what it noted as it aborted, if it
    /// did. The child's word: believe it only of a child that did die by
    /// `SIGABRT`, and only about itself.
    pub(crate) fn abort_note(&self) -> Option<AbortNote> {
        let p = self.page();
        let alloc_failed = match p.aborting.load(Ordering::Acquire) {
            ALLOC_FAILED => true,
            ABORTED => false,
            _ => return None,
        };
        let in_use = Some(p.data_in_use.load(Ordering::Relaxed)).filter(|&n| n > 0);
        Some(AbortNote {
            alloc_failed,
            in_use,
        })
    }

    /// Child: a batch starts. Returns whether items should be timestamped.
    pub(crate) fn begin_batch(&self, batch: u64) -> bool {
        let p = self.page();
        p.item.store(IDLE, Ordering::Relaxed);
        p.batch.store(batch, Ordering::Release);
        p.want_time.load(Ordering::Relaxed) != 0
    }

    /// Child: where the items of batch `batch` record their start, the
    /// page looked up once for them all.
    pub(crate) fn items(&self, batch: u64, timed: bool) -> ItemLog<'_> {
        ItemLog {
            page: self.page(),
            batch,
            timed,
        }
    }

    /// Parent: asks the child to stop `batch` before item `at`. Whatever
    /// item the child is on when it sees this, it reports how many it ran,
    /// and the parent re-queues the rest: no item is lost or run twice.
    pub(crate) fn request_stop(&self, batch: u64, at: u64) {
        self.page().stop.store(
            (batch & 0xffff_ffff) << 32 | (at & 0xffff_ffff),
            Ordering::Relaxed,
        );
    }

    /// Child: the batch is done.
    pub(crate) fn end_batch(&self) {
        self.page().item.store(IDLE, Ordering::Release);
    }

    /// Parent: what the page says runs, `(batch, item)`, read so that the
    /// two belong together: the batch is read before and after the item,
    /// and a child that moves to another batch in between (which it marks
    /// idle first) is read again. Only a child that keeps rewriting its
    /// page can make this give up, after a few tries, with the item
    /// [`IDLE`]. What it says is the child's word: check it.
    pub(crate) fn snapshot(&self) -> (u64, u64) {
        let p = self.page();
        for _ in 0..8 {
            let batch = p.batch.load(Ordering::Acquire);
            let item = p.item.load(Ordering::Acquire);
            if p.batch.load(Ordering::Acquire) == batch {
                return (batch, item);
            }
        }
        (0, IDLE)
    }

    /// Parent: the item of `batch` that the page says is running, if any.
    pub(crate) fn running(&self, batch: u64) -> Option<u64> {
        match self.snapshot() {
            (b, item) if b == batch && item != IDLE => Some(item),
            _ => None,
        }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        // SAFETY: unmapping the mapping made in `map`, once.
        unsafe { libc::munmap(self.page.as_ptr().cast(), SIZE) };
    }
}

/// Nanoseconds on `CLOCK_MONOTONIC`, which all processes share.
pub(crate) fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the timespec we pass.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    (ts.tv_sec as u64)
        .saturating_mul(1_000_000_000)
        .saturating_add(ts.tv_nsec as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parent_sees_what_the_child_side_writes() {
        let parent = Progress::create().unwrap();
        // SAFETY: dup gives a second descriptor to the same memfd.
        let dup = unsafe { libc::dup(parent.raw_fd()) };
        // SAFETY: `dup` is a fresh descriptor of a progress memfd.
        let child = unsafe { Progress::from_inherited(dup) }.unwrap();
        parent.reset();
        parent.set_want_time(true);
        assert!(child.begin_batch(7));
        let batch_7 = child.items(7, true);
        assert!(batch_7.begin(3));
        assert_eq!(parent.running(7), Some(3));
        assert_eq!(parent.snapshot(), (7, 3));
        assert_eq!(parent.running(8), None);
        parent.request_stop(7, 5);
        assert!(batch_7.begin(4));
        assert!(!batch_7.begin(5), "stopped before item 5");
        assert!(
            child.items(8, true).begin(5),
            "the request was for batch 7 only"
        );
        child.end_batch();
        assert_eq!(parent.running(7), None);
    }

    #[test]
    fn an_abort_is_noted_until_the_page_is_reset() {
        let parent = Progress::create().unwrap();
        // SAFETY: dup gives a second descriptor to the same memfd.
        let dup = unsafe { libc::dup(parent.raw_fd()) };
        // SAFETY: `dup` is a fresh descriptor of a progress memfd.
        let child = unsafe { Progress::from_inherited(dup) }.unwrap();
        parent.reset();
        assert_eq!(parent.abort_note(), None);
        child.note_abort(12 << 20, true);
        let note = |alloc_failed, in_use| {
            Some(AbortNote {
                alloc_failed,
                in_use,
            })
        };
        assert_eq!(parent.abort_note(), note(true, Some(12 << 20)));
        child.note_abort(0, false);
        assert_eq!(parent.abort_note(), note(false, None));
        parent.reset();
        assert_eq!(parent.abort_note(), None, "the next child starts clean");
        // Any other word is no note.
        for word in [1, u64::MAX, ALLOC_FAILED ^ 1] {
            child.page().aborting.store(word, Ordering::Relaxed);
            assert_eq!(parent.abort_note(), None);
        }
    }

    #[test]
    // Not with `multiproc_portable`: on Linux the portable back end's
    // POSIX shared memory cannot be sealed (see `crate::sys::shmfd`).
    #[cfg(not(all(target_os = "linux", multiproc_portable)))]
    fn the_page_cannot_be_resized() {
        // Seals refuse with EPERM; macOS sizes an object once, then EINVAL.
        let refused = if cfg!(target_os = "macos") {
            libc::EINVAL
        } else {
            libc::EPERM
        };
        let page = Progress::create().unwrap();
        for len in [0, 1, 2 * SIZE as libc::off_t] {
            // SAFETY: ftruncate on a descriptor we own.
            let rc = unsafe { libc::ftruncate(page.raw_fd(), len) };
            assert_eq!(rc, -1, "resized to {len}");
            assert_eq!(io::Error::last_os_error().raw_os_error(), Some(refused));
        }
    }
}
