//! The output of a `map` over a sized input, filled by the driver threads.
//!
//! A `map` that decodes every result on the caller's thread has that one
//! thread decode them all, and fault in the pages of its output, while the
//! workers wait for it (10 M `u64` results: about a third of the caller's
//! time each, `BENCHMARKS.md`). When the input says how long it is, the
//! output is allocated up front instead, and each driver decodes the
//! replies of its own worker straight into their places: the decoding is
//! spread over the drivers, the caller's thread only encodes and keeps
//! count, and nothing is copied twice. What cannot be stored that way (a
//! failed item, a value only postcard's own decoder accepts, items past
//! the length the input announced) reaches the caller as before.

use std::sync::{Arc, Mutex, MutexGuard};

use serde::de::DeserializeOwned;

use crate::conn::decode::{copy_results, decode_results};
use crate::conn::outcome::{Outcome, Reply};
use crate::conn::slot::WakingSender;

/// What a driver calls with each reply of a batch whose results go
/// straight into a `map`'s output.
pub(crate) trait Store: Send + Sync {
    /// Stores what it can of `reply`'s results and returns what the caller
    /// is to be told: an [`Outcome::Stored`] reply for the items stored,
    /// then a reply with the items it left (from the first one it could
    /// not store on), as they came.
    fn store(&self, reply: Reply) -> [Option<Reply>; 2];
}

/// The sink of a `map`'s batches that go to a [`Store`]: stores each
/// reply, and tells the caller's stream what was stored.
///
/// Once the caller has sent its whole input it has nothing to do until the
/// last result is in, so it need not hear of each batch: waking its thread
/// for every reply (eight for a `map` of 100 k items, each a futex wake-up
/// and a context switch that took a core from the workers) was a large
/// part of what a small `map` cost. After [`quiet_until`](Self::quiet_until),
/// stored replies are held back until every item is accounted for, and
/// sent together; anything else (a failed item, items the store left) goes
/// at once, with what was held.
pub(crate) struct Collector {
    store: Arc<dyn Store>,
    tx: WakingSender<Reply>,
    quiet: Mutex<Quiet>,
}

#[derive(Default)]
struct Quiet {
    /// Items accounted for by replies so far (sent or held).
    delivered: u64,
    /// Hold stored replies until `delivered` reaches this.
    until: Option<u64>,
    held: Vec<Reply>,
}

impl Collector {
    pub(crate) fn new(store: Arc<dyn Store>, tx: WakingSender<Reply>) -> Collector {
        Collector {
            store,
            tx,
            quiet: Mutex::new(Quiet::default()),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Quiet> {
        self.quiet.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Stores what it can of `reply` and tells the caller (now, or with
    /// the last reply once it is quiet).
    pub(crate) fn deliver(&self, reply: Reply) {
        for reply in self.store.store(reply).into_iter().flatten() {
            let mut q = self.lock();
            q.delivered += u64::from(reply.count);
            let stored = matches!(reply.outcome, Outcome::Stored { .. });
            if stored && q.until.is_some_and(|until| q.delivered < until) {
                q.held.push(reply);
                continue;
            }
            let held = std::mem::take(&mut q.held);
            drop(q);
            for r in held.into_iter().chain([reply]) {
                let _ = self.tx.send(r);
            }
        }
    }

    /// The caller has sent all its `total` items and waits for the rest:
    /// from now on stored replies are held until every item is in.
    pub(crate) fn quiet_until(&self, total: u64) {
        let mut q = self.lock();
        q.until = Some(total);
        if q.delivered >= total {
            let held = std::mem::take(&mut q.held);
            drop(q);
            for r in held {
                let _ = self.tx.send(r);
            }
        }
    }
}

/// Room for the `cap` results of a `map`, written by several threads at
/// once, each to its own items.
///
/// A writer claims a range with [`begin`](Slots::begin) and records what it
/// wrote with [`end`](Slots::end); every input position is delivered once,
/// so claimed ranges never overlap. The caller takes the finished `Vec`
/// when every position has been answered ([`take`](Slots::take)); if it
/// gives up early, the items written so far are dropped with the last
/// reference (a driver still writing holds one).
pub(crate) struct Slots<R> {
    ptr: *mut R,
    cap: usize,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// Writers between `begin` and `end`.
    writers: usize,
    /// The caller has taken the output: nothing may be written any more.
    taken: bool,
    /// Ranges written, as (start, length).
    written: Vec<(usize, usize)>,
}

// SAFETY: the buffer holds `R`s that were made on one thread and are
// dropped or handed out on another (so `R: Send`); concurrent writers
// write disjoint ranges they claimed under the lock, and the buffer is
// read only by `take` and `drop`, when no writer is left.
unsafe impl<R: Send> Send for Slots<R> {}
// SAFETY: as above; `&Slots` only gives access through the lock and
// claimed ranges.
unsafe impl<R: Send> Sync for Slots<R> {}

impl<R> Slots<R> {
    /// Room for `len` results.
    pub(crate) fn new(len: usize) -> Slots<R> {
        let mut buf = Vec::<R>::new();
        // Tens of MiB for a large map: huge pages save most of the faults
        // (taken by the drivers now, as they write).
        crate::mem::huge::reserve(&mut buf, len);
        let mut buf = std::mem::ManuallyDrop::new(buf);
        Slots {
            ptr: buf.as_mut_ptr(),
            cap: buf.capacity(),
            state: Mutex::new(State::default()),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Claims positions `start..start + len` for writing; `false` if they
    /// are out of range or the output was taken.
    fn begin(&self, start: usize, len: usize) -> bool {
        let mut s = self.lock();
        if s.taken || start.checked_add(len).is_none_or(|end| end > self.cap) {
            return false;
        }
        s.writers += 1;
        true
    }

    /// Ends a claim made by [`begin`](Slots::begin): its first `written`
    /// positions now hold values.
    fn end(&self, start: usize, written: usize) {
        let mut s = self.lock();
        s.writers -= 1;
        if written > 0 {
            s.written.push((start, written));
        }
    }

    /// Stores one result at `index`; gives it back if it has no place.
    pub(crate) fn put(&self, index: u64, value: R) -> Result<(), R> {
        let Ok(index) = usize::try_from(index) else {
            return Err(value);
        };
        if !self.begin(index, 1) {
            return Err(value);
        }
        // SAFETY: `index` was claimed just now and is in range.
        unsafe { self.ptr.add(index).write(value) };
        self.end(index, 1);
        Ok(())
    }

    /// The output, once positions `0..len` (and no others) hold values and
    /// no writer is left; `None` otherwise (which would be a bug: some
    /// result was lost or written twice).
    pub(crate) fn take(&self, len: usize) -> Option<Vec<R>> {
        let mut s = self.lock();
        if s.taken || s.writers > 0 {
            return None;
        }
        s.written.sort_unstable();
        let mut end = 0;
        for &(start, n) in &s.written {
            if start != end {
                return None;
            }
            end += n;
        }
        if end != len {
            return None;
        }
        s.taken = true;
        // SAFETY: `ptr` and `cap` come from a `Vec<R>` that was never freed
        // (`taken` was false), positions 0..len were written exactly once,
        // and from now on nobody else touches the buffer (`taken`).
        Some(unsafe { Vec::from_raw_parts(self.ptr, len, self.cap) })
    }
}

impl<R> Drop for Slots<R> {
    fn drop(&mut self) {
        let s = self.state.get_mut().unwrap_or_else(|e| e.into_inner());
        if s.taken {
            return;
        }
        for &(start, n) in &s.written {
            // SAFETY: these positions were written once and not handed out;
            // `&mut self`: no writer is left.
            unsafe {
                std::ptr::drop_in_place(std::ptr::slice_from_raw_parts_mut(self.ptr.add(start), n))
            };
        }
        // SAFETY: the allocation of the `Vec` made in `new`, with no
        // elements left in it.
        drop(unsafe { Vec::from_raw_parts(self.ptr, 0, self.cap) });
    }
}

impl<R: DeserializeOwned + Send + 'static> Store for Slots<R> {
    fn store(&self, reply: Reply) -> [Option<Reply>; 2] {
        let Reply {
            first_index: Some(first),
            count,
            outcome:
                Outcome::Done {
                    data,
                    start,
                    elapsed_ns,
                    dense,
                },
        } = reply
        else {
            return [Some(reply), None];
        };
        // What is not stored goes to the caller as it came.
        let unchanged = |data| {
            let outcome = Outcome::Done {
                data,
                start,
                elapsed_ns,
                dense,
            };
            [Some(reply_of(first, count, outcome)), None]
        };
        let claimed = usize::try_from(first)
            .ok()
            .filter(|&at| self.begin(at, count as usize));
        let Some(at) = claimed else {
            return unchanged(data);
        };
        let dst = self.ptr.wrapping_add(at);
        let mut k = 0;
        // The results' `Deserialize` is the caller's code, run on a
        // driver's thread here: if it panics, the reply goes to the caller
        // as it came, and the panic happens again there, where `map` was
        // called (the values decoded before it are not dropped: a leak,
        // never a double drop), instead of taking the driver down.
        let decoded = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            // SAFETY: positions at..at + count were claimed above, and the
            // output is not the reply's buffer.
            if let Some(copied) = unsafe { copy_results(&data[start..], count, dense, dst) } {
                return copied;
            }
            decode_results(&data[start..], count, dense, |value: R| {
                // SAFETY: positions at..at + count were claimed above, and
                // `decode_results` hands over at most `count` values.
                unsafe { dst.add(k).write(value) };
                k += 1;
            })
        }));
        let Ok((stored, used)) = decoded else {
            self.end(at, 0);
            return unchanged(data);
        };
        self.end(at, stored as usize);
        let bytes = data.len() - start;
        if stored == count {
            // The buffer goes back to the caller, to encode into again.
            let data = data.into_vec();
            let done = Outcome::Stored {
                elapsed_ns,
                bytes,
                data,
            };
            return [Some(reply_of(first, count, done)), None];
        }
        let done = (stored > 0).then(|| {
            let data = None;
            reply_of(
                first,
                stored,
                Outcome::Stored {
                    elapsed_ns,
                    bytes,
                    data,
                },
            )
        });
        let rest = Outcome::Done {
            data,
            start: start + used,
            elapsed_ns,
            dense,
        };
        [
            done,
            Some(reply_of(first + u64::from(stored), count - stored, rest)),
        ]
    }
}

fn reply_of(first: u64, count: u32, outcome: Outcome) -> Reply {
    Reply {
        first_index: Some(first),
        count,
        outcome,
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;
    use crate::codec;

    /// Counts its drops.
    struct Counted(Arc<AtomicUsize>);

    impl Drop for Counted {
        fn drop(&mut self) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn done_reply(first: u64, values: &[u64]) -> Reply {
        done_reply_with(first, values, &[])
    }

    /// A reply with `values`, then the framed items `more`.
    fn done_reply_with(first: u64, values: &[u64], more: &[u8]) -> Reply {
        let mut data = vec![0xee; 3]; // a header the store must skip
        for v in values {
            codec::put_item(&mut data, v).unwrap();
        }
        data.extend_from_slice(more);
        let data = data.into();
        Reply {
            first_index: Some(first),
            count: values.len() as u32,
            outcome: Outcome::Done {
                data,
                start: 3,
                elapsed_ns: 5,
                dense: false,
            },
        }
    }

    #[test]
    fn replies_land_in_place_and_the_output_is_taken_whole() {
        let slots = Slots::<u64>::new(6);
        for (first, values) in [(3, &[30, 40, 50][..]), (0, &[0, 10, 20][..])] {
            let [done, rest] = slots.store(done_reply(first, values));
            assert!(rest.is_none());
            let done = done.expect("stored");
            assert_eq!((done.first_index, done.count), (Some(first), 3));
            assert!(matches!(done.outcome, Outcome::Stored { bytes: 6, .. }));
        }
        assert_eq!(slots.take(6), Some(vec![0, 10, 20, 30, 40, 50]));
    }

    #[test]
    fn what_cannot_be_stored_comes_back_from_the_first_such_item() {
        let slots = Slots::<u64>::new(4);
        let mut more = Vec::new();
        codec::put_raw_item(&mut more, codec::ITEM_PANIC, b"report");
        codec::put_item(&mut more, &9u64).unwrap();
        let mut reply = done_reply_with(0, &[7, 8], &more);
        reply.count = 4;
        let [done, rest] = slots.store(reply);
        assert_eq!(done.map(|d| d.count), Some(2));
        let rest = rest.expect("the panic and what follows");
        assert_eq!((rest.first_index, rest.count), (Some(2), 2));
        let Outcome::Done { data, start, .. } = &rest.outcome else {
            panic!("the rest comes back as it was");
        };
        let mut tail = &data[*start..];
        assert_eq!(
            codec::next_item(&mut tail).map(|i| i.0),
            Some(codec::ITEM_PANIC)
        );
        // The caller stores what it decodes itself; out of range is refused.
        assert!(slots.put(2, 1).is_ok());
        assert!(slots.put(3, 2).is_ok());
        assert_eq!(slots.put(4, 3), Err(3));
        assert_eq!(slots.take(4), Some(vec![7, 8, 1, 2]));
        // Taken: nothing more goes in.
        assert_eq!(slots.put(0, 5), Err(5));
    }

    #[test]
    fn out_of_range_replies_are_passed_on_untouched() {
        let slots = Slots::<u64>::new(2);
        let [done, rest] = slots.store(done_reply(1, &[1, 2]));
        assert!(rest.is_none());
        let done = done.expect("passed on");
        assert!(matches!(done.outcome, Outcome::Done { start: 3, .. }));
        assert_eq!(slots.take(2), None, "nothing was stored");
    }

    #[test]
    fn take_refuses_gaps_and_a_short_count() {
        let slots = Slots::<u64>::new(3);
        assert!(slots.put(0, 1).is_ok());
        assert!(slots.put(2, 3).is_ok());
        assert_eq!(slots.take(3), None);
        assert_eq!(
            slots.take(1),
            None,
            "position 2 is written but not asked for"
        );
        assert!(slots.put(1, 2).is_ok());
        assert_eq!(slots.take(3), Some(vec![1, 2, 3]));
    }

    #[test]
    fn values_not_taken_are_dropped_once() {
        let drops = Arc::new(AtomicUsize::new(0));
        let slots = Slots::<Counted>::new(10);
        for i in [0, 3, 4, 9] {
            assert!(slots.put(i, Counted(drops.clone())).is_ok());
        }
        drop(slots);
        assert_eq!(drops.load(Ordering::SeqCst), 4);

        let slots = Slots::<Counted>::new(2);
        for i in 0..2 {
            assert!(slots.put(i, Counted(drops.clone())).is_ok());
        }
        let out = slots.take(2).expect("full");
        drop(slots);
        assert_eq!(drops.load(Ordering::SeqCst), 4, "the taken ones live on");
        drop(out);
        assert_eq!(drops.load(Ordering::SeqCst), 6);
    }
}
