//! The engine behind `map`, `imap` and `imap_unordered`: pulls the input
//! lazily in batches, keeps a bounded number of batches in flight, and
//! yields per-item results in input or completion order, to a thread that
//! blocks (the iterators) or to a task that is woken (their streams).

use std::collections::{BTreeMap, VecDeque};
use std::iter::FusedIterator;
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, Waker};

use super::collect::{Collector, Store};
use super::job::{Job, MARK_EVERY, Payload, Sink};
use super::shared::PoolShared;
use crate::codec;
use crate::conn::decode::{copy_results, decode_dense_item, decode_item, decode_results};
use crate::conn::outcome::{Outcome, Reply};
use crate::conn::slot::{WakingReceiver, WakingSender, waking_channel};
use crate::error::{Error, Result};
use crate::worker::Worker;

/// Batch duration that adaptive batching aims for, measured in the child.
const TARGET_BATCH_NS: u64 = 4_000_000;
/// Most items in one batch.
const MAX_BATCH_ITEMS: usize = 1 << 16;
/// A batch stops growing once its encoded arguments reach this size.
const MAX_BATCH_BYTES: usize = 512 << 10;
/// Results decoded ahead of the caller in one go: small enough to stay in
/// cache, large enough that the per-run overhead vanishes.
const DECODE_RUN: u32 = 1024;

/// How big the batches of a stream are.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Chunking {
    Fixed(usize),
    /// Grows or shrinks so that a batch takes about [`TARGET_BATCH_NS`].
    Adaptive(usize),
}

impl Chunking {
    /// At most `max_tasks_per_worker` items a batch, which makes the limit
    /// exact: a batch is never cut short for it.
    pub(crate) fn capped(self, max_tasks_per_worker: Option<u64>) -> Chunking {
        match (max_tasks_per_worker, self) {
            (Some(k), Chunking::Fixed(n)) => {
                Chunking::Fixed(n.min(usize::try_from(k).unwrap_or(usize::MAX)))
            }
            (Some(k), Chunking::Adaptive(n)) => {
                Chunking::Fixed(n.min(usize::try_from(k).unwrap_or(usize::MAX)))
            }
            (None, c) => c,
        }
    }
}

/// A reply being yielded item by item.
struct Current {
    reply: Reply,
    pos: usize,
    next_index: u64,
    left: u32,
}

pub(crate) struct Stream<'p, W: Worker, I> {
    shared: &'p PoolShared,
    input: Option<I>,
    next_input: u64,
    chunking: Chunking,
    ordered: bool,
    tx: WakingSender<Reply>,
    rx: WakingReceiver<Reply>,
    /// Batches sent and not fully answered: start → (end, items left).
    open: BTreeMap<u64, (u64, u64)>,
    window: usize,
    /// Replies waiting to be yielded: keyed by first index when ordered.
    ready_ordered: BTreeMap<u64, Reply>,
    ready_unordered: VecDeque<Reply>,
    current: Option<Current>,
    /// Results of `current` already decoded, in order, waiting to be yielded.
    decoded: std::vec::IntoIter<W::Output>,
    /// Input position of `decoded`'s first result.
    decoded_next: u64,
    next_yield: u64,
    /// Items yielded so far.
    yielded: u64,
    /// Encoded size of an item in the last batch, to size the next buffer.
    bytes_per_item: usize,
    /// Items that failed to encode, waiting for their turn.
    pending_errors: VecDeque<Error>,
    abandoned: Arc<AtomicBool>,
    buf: Vec<u8>,
    /// Where the drivers store the results of the first `.1` items
    /// themselves (`map` over a sized input, see [`super::collect`]).
    store: Option<(Arc<Collector>, u64)>,
    /// Items sent in batches whose results go to `store`.
    collected: u64,
    /// Where the events about its batches go: the caller's, when the
    /// stream was made (inside the span of its `map` or `imap`).
    trace: Arc<crate::trace::Context>,
    _worker: PhantomData<W>,
}

impl<'p, W: Worker, I: Iterator<Item = W::Args>> Stream<'p, W, I> {
    pub(crate) fn new(
        shared: &'p PoolShared,
        workers: usize,
        input: I,
        chunking: Chunking,
        ordered: bool,
    ) -> Self {
        let (tx, rx) = waking_channel();
        Stream {
            shared,
            input: Some(input),
            next_input: 0,
            chunking,
            ordered,
            tx,
            rx,
            open: BTreeMap::new(),
            window: (4 * workers).max(4),
            ready_ordered: BTreeMap::new(),
            ready_unordered: VecDeque::new(),
            current: None,
            decoded: Vec::new().into_iter(),
            decoded_next: 0,
            next_yield: 0,
            yielded: 0,
            // Exact for dense batches; a guess for framed ones.
            bytes_per_item: codec::dense_width::<W::Args>().unwrap_or(2),
            pending_errors: VecDeque::new(),
            abandoned: Arc::new(AtomicBool::new(false)),
            buf: Vec::new(),
            store: None,
            collected: 0,
            trace: Arc::new(crate::trace::Context::current()),
            _worker: PhantomData,
        }
    }

    /// Has the drivers store the results of the first `len` items in
    /// `store` ([`Outcome::Stored`] replies then only account for them).
    pub(crate) fn store_into(&mut self, store: Arc<dyn Store>, len: u64) {
        self.store = Some((Arc::new(Collector::new(store, self.tx.clone())), len));
    }

    /// Items taken from the input so far.
    pub(crate) fn taken(&self) -> u64 {
        self.next_input
    }

    pub(crate) fn set_chunk_size(&mut self, size: usize) {
        self.chunking = Chunking::Fixed(size.max(1)).capped(self.shared.max_tasks_per_worker);
    }

    /// Items not yet yielded, if the input knows its length.
    pub(crate) fn remaining_exact(&self) -> (usize, Option<usize>) {
        let in_flight = usize::try_from(self.next_input - self.yielded).unwrap_or(usize::MAX);
        match &self.input {
            None => (in_flight, Some(in_flight)),
            Some(input) => {
                let (lo, hi) = input.size_hint();
                (
                    lo.saturating_add(in_flight),
                    hi.and_then(|h| h.checked_add(in_flight)),
                )
            }
        }
    }

    /// Sends batches until the window is full or the input is exhausted.
    fn fill(&mut self) {
        while self.open.len() < self.window {
            let Some(input) = self.input.as_mut() else {
                return;
            };
            let limit = match self.chunking {
                Chunking::Fixed(n) | Chunking::Adaptive(n) => n.max(1),
            };
            let dense = codec::dense_width::<W::Args>().filter(|_| self.shared.dense_batches);
            // Items of a dense batch: a batch's worth, and no more than
            // MAX_BATCH_BYTES of them.
            let dense_room = dense.map(|width| (width, limit.min(MAX_BATCH_BYTES.div_ceil(width))));
            if let Some((width, room)) = dense_room {
                // A range of integers goes as its first one and a count.
                if let Some((start, count, exhausted)) = codec::take_range(input, room) {
                    if exhausted {
                        self.input = None;
                    }
                    if count == 0 {
                        return;
                    }
                    self.bytes_per_item = width;
                    let payload = Payload::range(start, count as u32, width);
                    self.send(payload, count, Vec::new(), dense, Vec::new());
                    continue;
                }
            }
            let mut payload = std::mem::take(&mut self.buf);
            payload.clear();
            // Size the buffer from the last batch's bytes per item, so that
            // encoding does not reallocate (and copy) as it grows (a spare
            // buffer if it is large, `shm::huge`).
            crate::mem::huge::reserve_bytes(
                &mut payload,
                (limit.min(MAX_BATCH_ITEMS * 16))
                    .saturating_mul(self.bytes_per_item)
                    .min(MAX_BATCH_BYTES + 1024),
            );
            let first = self.next_input;
            let mut marks = Vec::new();
            let ((count, encode_error, exhausted), fds) = if let Some((_, room)) = dense_room {
                // Primitives: no handles to capture, no encoding that fails.
                let (count, exhausted) = codec::fill_dense(&mut payload, input, room);
                ((count, None, exhausted), Vec::new())
            } else {
                crate::sys::fdpass::capture(|| {
                    let mut count = 0usize;
                    let mut encode_error = None;
                    let mut exhausted = false;
                    while count < limit && payload.len() < MAX_BATCH_BYTES {
                        let Some(args) = input.next() else {
                            exhausted = true;
                            break;
                        };
                        if count % MARK_EVERY as usize == 0 && count > 0 {
                            // Lossless: this is checked before the item, so the
                            // payload is under MAX_BATCH_BYTES, and so is the
                            // count (items take a byte at least).
                            marks.push((count as u32, payload.len() as u32));
                        }
                        if let Err(message) = codec::put_item(&mut payload, &args) {
                            // This item fails alone; the batch goes on without it.
                            encode_error =
                                Some(codec::args_error::<W>(Some(first + count as u64), message));
                            break;
                        }
                        count += 1;
                    }
                    (count, encode_error, exhausted)
                })
            };
            if exhausted {
                self.input = None;
            }
            if let Some(per_item) = payload.len().checked_div(count) {
                self.bytes_per_item = per_item.max(1);
            }
            if count > 0 {
                self.send(payload.into(), count, marks, dense, fds);
            } else {
                // Nothing to send: keep the buffer (freeing a large one is
                // a `munmap`, which stalls every thread of the process).
                self.buf = payload;
            }
            if let Some(err) = encode_error {
                // Give the failed item its own slot in the order.
                let index = self.next_input;
                self.next_input += 1;
                self.pending_errors.push_back(err);
                self.open.insert(index, (index + 1, 0));
                self.deliver_local_error(index);
            }
            if count == 0 && self.input.is_none() {
                return;
            }
        }
    }

    /// Queues the next `count` items of the input as one batch.
    fn send(
        &mut self,
        payload: Payload,
        count: usize,
        marks: Vec<(u32, u32)>,
        dense: Option<usize>,
        fds: Vec<std::os::fd::OwnedFd>,
    ) {
        let first = self.next_input;
        let end = first + count as u64;
        let sink = match &self.store {
            Some((store, len)) if end <= *len => {
                self.collected += count as u64;
                Sink::Collect(store.clone())
            }
            _ => Sink::Stream(self.tx.clone()),
        };
        let mut job = Job::new(W::NAME, payload, count as u32, sink);
        job.first_index = Some(first);
        job.marks = marks;
        job.dense = dense;
        job.abandoned = Some(self.abandoned.clone());
        job.retries = self.shared.retries;
        job.panic_retries = self.shared.panic_retries;
        job.fds = Job::fd_table(fds);
        job.trace = self.trace.clone();
        self.next_input = end;
        self.open.insert(first, (end, count as u64));
        self.shared.queue.push(job);
    }

    /// Records an item that failed before it was sent.
    fn deliver_local_error(&mut self, index: u64) {
        let reply = Reply {
            first_index: Some(index),
            count: 1,
            outcome: Outcome::Local(self.pending_errors.pop_front()),
        };
        self.open.remove(&index);
        self.insert_ready(reply);
    }

    fn insert_ready(&mut self, reply: Reply) {
        if self.ordered {
            self.ready_ordered
                .insert(reply.first_index.unwrap_or(0), reply);
        } else {
            self.ready_unordered.push_back(reply);
        }
    }

    /// Accounts for a reply and adapts the batch size.
    fn received(&mut self, reply: Reply) {
        let first = reply.first_index.unwrap_or(0);
        if let Some((&start, &(end, left))) = self.open.range(..=first).next_back() {
            if first < end {
                let left = left.saturating_sub(u64::from(reply.count));
                if left == 0 {
                    self.open.remove(&start);
                } else {
                    self.open.insert(start, (end, left));
                }
            }
        }
        let timing = match &reply.outcome {
            Outcome::Done {
                elapsed_ns,
                data,
                start,
                ..
            } => Some((*elapsed_ns, data.len().saturating_sub(*start))),
            Outcome::Stored {
                elapsed_ns, bytes, ..
            } => Some((*elapsed_ns, *bytes)),
            Outcome::Failed(_) | Outcome::Local(_) => None,
        };
        if let (Chunking::Adaptive(size), Some((elapsed_ns, bytes))) = (&mut self.chunking, timing)
        {
            if reply.count as usize >= *size / 2 {
                let count = reply.count.max(1);
                let per_item = (elapsed_ns / u64::from(count)).max(1);
                let ideal = usize::try_from(TARGET_BATCH_NS / per_item).unwrap_or(MAX_BATCH_ITEMS);
                // Results are capped like arguments: a batch's results stay
                // under MAX_BATCH_BYTES, so that the window of batches in
                // flight bounds the memory they take even when the consumer
                // stalls (the faster the tasks, the larger the batches).
                let result_bytes = (bytes / count as usize).max(1);
                *size = ideal
                    .clamp((*size / 2).max(1), size.saturating_mul(8))
                    .min(MAX_BATCH_ITEMS)
                    .min((MAX_BATCH_BYTES / result_bytes).max(1));
            }
        }
        self.insert_ready(reply);
    }

    /// The next reply to yield from, waiting for one if needed: blocking
    /// the thread without a `waker`, else `Pending` with `waker` registered
    /// to be woken when a reply comes. Every state it returns `Pending` in
    /// is one it may be called again from.
    fn next_reply(&mut self, waker: Option<&Waker>) -> Poll<Option<Reply>> {
        loop {
            if self.ordered {
                if let Some(reply) = self.ready_ordered.remove(&self.next_yield) {
                    return Poll::Ready(Some(reply));
                }
            } else if let Some(reply) = self.ready_unordered.pop_front() {
                return Poll::Ready(Some(reply));
            }
            self.fill();
            if self.open.is_empty() && self.input.is_none() {
                // Nothing in flight; anything still buffered is out of order
                // only if a reply was lost, which would be a bug.
                if self.ordered {
                    if let Some((_, reply)) = self.ready_ordered.pop_first() {
                        return Poll::Ready(Some(reply));
                    }
                }
                return Poll::Ready(None);
            }
            if let (Some((collector, _)), None) = (&self.store, &self.input) {
                // Nothing more to send: hear of the batches stored in
                // place when they are all in (or one fails), not one by
                // one (see `Collector`).
                collector.quiet_until(self.collected);
            }
            let got = match waker {
                None => self.rx.recv().ok(),
                Some(waker) => match self.rx.poll_recv(waker) {
                    Poll::Ready(got) => got,
                    Poll::Pending => return Poll::Pending,
                },
            };
            match got {
                Some(reply) => self.received(reply),
                None => return Poll::Ready(None),
            }
        }
    }

    /// Moves the results decoded ahead (all fine, in order) to `out`: what
    /// [`next_item`](Self::next_item) would yield next, in one copy.
    #[inline]
    pub(crate) fn drain_decoded(&mut self, out: &mut Vec<W::Output>) {
        let n = self.decoded.len() as u64;
        out.extend(self.decoded.by_ref());
        self.decoded_next += n;
        self.yielded += n;
    }

    /// The next result and its input position; `None` at the end.
    #[inline]
    pub(crate) fn next_item(&mut self) -> Option<(u64, Result<W::Output>)> {
        // The common case, small enough to inline into the caller's loop:
        // a result decoded ahead by `decode_results`.
        if let Some(value) = self.decoded.next() {
            let index = self.decoded_next;
            self.decoded_next += 1;
            self.yielded += 1;
            return Some((index, Ok(value)));
        }
        match self.next_item_slow(None) {
            Poll::Ready(item) => item,
            Poll::Pending => unreachable!("a wait without a waker blocks until it is ready"),
        }
    }

    /// [`next_item`](Self::next_item) for a task: `Pending` (with `waker`
    /// registered) instead of blocking the thread.
    pub(crate) fn poll_item(&mut self, waker: &Waker) -> Poll<Option<(u64, Result<W::Output>)>> {
        self.next_item_slow(Some(waker))
    }

    /// [`next_item`](Self::next_item) when nothing is decoded ahead: decodes
    /// the next run, yields an item that failed, or waits for a reply (see
    /// [`next_reply`](Self::next_reply) for `waker`).
    #[inline(never)]
    fn next_item_slow(&mut self, waker: Option<&Waker>) -> Poll<Option<(u64, Result<W::Output>)>> {
        loop {
            if let Some(value) = self.decoded.next() {
                let index = self.decoded_next;
                self.decoded_next += 1;
                self.yielded += 1;
                return Poll::Ready(Some((index, Ok(value))));
            }
            if let Some(cur) = &mut self.current {
                if cur.left > 0 {
                    if let Outcome::Stored { .. } = &cur.reply.outcome {
                        // In the output already: only counted.
                        self.yielded += u64::from(cur.left);
                        cur.left = 0;
                        continue;
                    }
                    if let Outcome::Done { data, dense, .. } = &cur.reply.outcome {
                        let max = cur.left.min(DECODE_RUN);
                        // A fresh buffer per run: one allocation per
                        // DECODE_RUN results, and popping from a
                        // `vec::IntoIter` is a pointer increment.
                        let mut run = Vec::with_capacity(max as usize);
                        let data = &data[cur.pos..];
                        // SAFETY: `run` has room for `max` results, and its
                        // buffer is not the reply's.
                        let copied = unsafe { copy_results(data, max, *dense, run.as_mut_ptr()) };
                        let (n, used) = match copied {
                            Some((n, used)) => {
                                // SAFETY: its first `n` were just written.
                                unsafe { run.set_len(n as usize) };
                                (n, used)
                            }
                            None => decode_results(data, max, *dense, |v| run.push(v)),
                        };
                        self.decoded = run.into_iter();
                        if n > 0 {
                            self.decoded_next = cur.next_index;
                            cur.next_index += u64::from(n);
                            cur.left -= n;
                            cur.pos += used;
                            continue;
                        }
                    }
                    cur.left -= 1;
                    let index = cur.next_index;
                    cur.next_index += 1;
                    let result = match &mut cur.reply.outcome {
                        Outcome::Done { data, dense, .. } => {
                            let mut rest = &data[cur.pos..];
                            let before = rest.len();
                            let r = if *dense {
                                decode_dense_item::<W::Output>(W::NAME, Some(index), &mut rest)
                            } else {
                                decode_item::<W::Output>(W::NAME, Some(index), &mut rest)
                            };
                            cur.pos += before - rest.len();
                            r
                        }
                        Outcome::Local(err) => {
                            Err(err.take().expect("a local error is yielded once"))
                        }
                        Outcome::Failed(f) => Err(f.to_error(W::NAME, Some(index))),
                        Outcome::Stored { .. } => unreachable!("counted above"),
                    };
                    self.yielded += 1;
                    return Poll::Ready(Some((index, result)));
                }
                let spent = self.current.take().and_then(|cur| match cur.reply.outcome {
                    Outcome::Done { data, .. } => data.into_vec(),
                    Outcome::Stored {
                        data: Some(data), ..
                    } => Some(data),
                    Outcome::Stored { data: None, .. } | Outcome::Failed(_) | Outcome::Local(_) => {
                        None
                    }
                });
                if let Some(data) = spent {
                    // Encode the next batch into this reply's buffer: its
                    // pages are already mapped, where a fresh buffer of
                    // megabytes would fault each one in again.
                    if self.buf.capacity() < data.capacity()
                        && data.capacity() <= 2 * MAX_BATCH_BYTES
                    {
                        crate::mem::huge::recycle(std::mem::replace(&mut self.buf, data));
                    } else {
                        crate::mem::huge::recycle(data);
                    }
                }
            }
            let reply = match self.next_reply(waker) {
                Poll::Ready(Some(reply)) => reply,
                Poll::Ready(None) => return Poll::Ready(None),
                Poll::Pending => return Poll::Pending,
            };
            if self.ordered {
                // The reply that follows this one starts where it ends.
                self.next_yield = reply
                    .first_index
                    .unwrap_or(self.next_yield)
                    .saturating_add(u64::from(reply.count));
            }
            let pos = match &reply.outcome {
                Outcome::Done { start, .. } => *start,
                Outcome::Stored { .. } | Outcome::Failed(_) | Outcome::Local(_) => 0,
            };
            self.current = Some(Current {
                next_index: reply.first_index.unwrap_or(0),
                left: reply.count,
                pos,
                reply,
            });
        }
    }
}

impl<W: Worker, I> Drop for Stream<'_, W, I> {
    fn drop(&mut self) {
        // Queued batches of a dropped iterator are skipped by the workers.
        self.abandoned.store(true, Ordering::Relaxed);
        // The next stream starts from this one's buffer.
        crate::mem::huge::recycle(std::mem::take(&mut self.buf));
    }
}

/// The doc example of an `imap` stream, for the pool method `$method`.
macro_rules! stream_example {
    ($method:ident) => {
        concat!(
            "# Example\n",
            "\n",
            "```no_run\n",
            "use futures_util::StreamExt;\n",
            "use multiproc_runtime::{Pool, Result, Worker};\n",
            "\n",
            "// `square` is a `#[worker] fn square(x: u64) -> u64`.\n",
            "async fn sum_of_squares(\n",
            "    pool: &Pool,\n",
            "    square: impl Worker<Args = u64, Output = u64>,\n",
            ") -> Result<u64> {\n",
            "    let mut squares = pool.",
            stringify!($method),
            "(square, 0..10).into_stream();\n",
            "    let mut sum = 0;\n",
            "    while let Some(square) = squares.next().await {\n",
            "        sum += square?;\n",
            "    }\n",
            "    Ok(sum)\n",
            "}\n",
            "```\n",
        )
    };
}

macro_rules! stream_iterator {
    ($(#[$doc:meta])* $name:ident, $method:ident, $(#[$stream_doc:meta])* $stream:ident) => {
        $(#[$doc])*
        #[must_use = "iterators are lazy: nothing runs until you iterate"]
        pub struct $name<'p, W: Worker, I> {
            inner: Stream<'p, W, I>,
        }

        impl<'p, W: Worker, I: Iterator<Item = W::Args>> $name<'p, W, I> {
            pub(crate) fn new(inner: Stream<'p, W, I>) -> Self {
                $name { inner }
            }

            /// Sends the input in batches of exactly `size` items (the last
            /// may be smaller) instead of adapting the batch size. `1` gives
            /// Python's `imap` default; larger batches cost less per item.
            pub fn chunk_size(mut self, size: usize) -> Self {
                self.inner.set_chunk_size(size);
                self
            }

            /// Yields each result together with the position of its item in
            /// the input (the shape of [`as_completed`](crate::as_completed)).
            pub fn indexed(self) -> Indexed<'p, W, I> {
                Indexed { inner: self.inner }
            }

            /// The same results as a [`Stream`](futures_core::Stream), for
            /// async code: a task that awaits the next one is woken by the
            /// pool's driver threads when it lands, and the thread it runs
            /// on is never blocked. The stream goes on from where the
            /// iterator is (results taken with `next()` are not repeated).
            ///
            /// Polling the stream pulls the input and sends it in batches on
            /// the polling thread, as `next()` does: an input iterator that
            /// blocks blocks the task.
            ///
            #[doc = stream_example!($method)]
            pub fn into_stream(self) -> $stream<'p, W, I> {
                $stream { inner: self.inner, ended: false }
            }
        }

        impl<W: Worker, I: Iterator<Item = W::Args>> Iterator for $name<'_, W, I> {
            type Item = Result<W::Output>;

            fn next(&mut self) -> Option<Result<W::Output>> {
                self.inner.next_item().map(|(_, r)| r)
            }

            fn size_hint(&self) -> (usize, Option<usize>) {
                self.inner.remaining_exact()
            }
        }

        impl<W: Worker, I: ExactSizeIterator<Item = W::Args>> ExactSizeIterator for $name<'_, W, I> {}

        impl<W: Worker, I: Iterator<Item = W::Args>> FusedIterator for $name<'_, W, I> {}

        impl<W: Worker, I> std::fmt::Debug for $name<'_, W, I> {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.debug_struct(stringify!($name)).field("worker", &W::NAME).finish_non_exhaustive()
            }
        }

        $(#[$stream_doc])*
        ///
        /// Dropping it stops the rest of the input from being run, as
        /// dropping the iterator does.
        ///
        #[doc = stream_example!($method)]
        #[must_use = "streams are lazy: nothing runs until you poll"]
        pub struct $stream<'p, W: Worker, I> {
            inner: Stream<'p, W, I>,
            /// `None` was yielded (see `FusedStream`).
            ended: bool,
        }

        // Never pinned structurally: nothing in it points into itself.
        impl<W: Worker, I> Unpin for $stream<'_, W, I> {}

        impl<W: Worker, I: Iterator<Item = W::Args>> futures_core::Stream for $stream<'_, W, I> {
            type Item = Result<W::Output>;

            fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
                let this = self.get_mut();
                let item = std::task::ready!(this.inner.poll_item(cx.waker()));
                this.ended = item.is_none();
                Poll::Ready(item.map(|(_, r)| r))
            }

            fn size_hint(&self) -> (usize, Option<usize>) {
                self.inner.remaining_exact()
            }
        }

        impl<W: Worker, I: Iterator<Item = W::Args>> futures_core::FusedStream for $stream<'_, W, I> {
            fn is_terminated(&self) -> bool {
                self.ended
            }
        }

        impl<W: Worker, I> std::fmt::Debug for $stream<'_, W, I> {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.debug_struct(stringify!($stream)).field("worker", &W::NAME).finish_non_exhaustive()
            }
        }
    };
}

stream_iterator! {
    /// Iterator returned by [`Pool::imap`](crate::Pool::imap): one `Result` per input item, in
    /// input order, computed ahead in a bounded window.
    Imap,
    imap,
    /// Stream returned by [`Imap::into_stream`]: one `Result` per input
    /// item, in input order, computed ahead in a bounded window; awaiting
    /// the next one never blocks the thread.
    ImapStream
}

stream_iterator! {
    /// Iterator returned by [`Pool::imap_unordered`](crate::Pool::imap_unordered): one `Result` per input
    /// item, in the order they finish, computed ahead in a bounded window.
    /// Use [`Error::item_index`] to tell which item an error belongs to.
    ImapUnordered,
    imap_unordered,
    /// Stream returned by [`ImapUnordered::into_stream`]: one `Result` per
    /// input item, in the order they finish, computed ahead in a bounded
    /// window; awaiting the next one never blocks the thread. Use
    /// [`Error::item_index`] to tell which item an error belongs to.
    ImapUnorderedStream
}

/// Iterator returned by [`Imap::indexed`] and [`ImapUnordered::indexed`]:
/// `(position in the input, result)`.
#[must_use = "iterators are lazy: nothing runs until you iterate"]
pub struct Indexed<'p, W: Worker, I> {
    inner: Stream<'p, W, I>,
}

impl<W: Worker, I: Iterator<Item = W::Args>> Iterator for Indexed<'_, W, I> {
    type Item = (usize, Result<W::Output>);

    fn next(&mut self) -> Option<(usize, Result<W::Output>)> {
        self.inner
            .next_item()
            .map(|(i, r)| (usize::try_from(i).unwrap_or(usize::MAX), r))
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        self.inner.remaining_exact()
    }
}

impl<W: Worker, I: ExactSizeIterator<Item = W::Args>> ExactSizeIterator for Indexed<'_, W, I> {}

impl<W: Worker, I: Iterator<Item = W::Args>> FusedIterator for Indexed<'_, W, I> {}

impl<W: Worker, I> std::fmt::Debug for Indexed<'_, W, I> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Indexed")
            .field("worker", &W::NAME)
            .finish_non_exhaustive()
    }
}
