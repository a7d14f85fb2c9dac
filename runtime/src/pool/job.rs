//! Jobs (batches of encoded items), their replies, and the queue that the
//! per-worker drivers take them from.

use std::collections::VecDeque;
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

use super::collect::Collector;
use super::task::Control;
use crate::codec;
use crate::conn::outcome::{Failure, Outcome, Reply};
use crate::conn::runner::STEAL_AFTER;
use crate::conn::slot::{TaskSlot, WakingSender};
use crate::proto;
use crate::trace::Context;

/// A batch of framed argument items for one worker function.
pub(crate) struct Job {
    pub(crate) worker: &'static str,
    /// Framed argument items (see [`crate::codec`]).
    pub(crate) payload: Payload,
    /// Where some items start in `payload`, as (item, byte offset) in
    /// ascending order: a split walks the items from the last mark before
    /// it, not from the front (see [`MARK_EVERY`]). May be empty.
    pub(crate) marks: Vec<(u32, u32)>,
    /// `Some(width)` if the arguments are dense: item `k` is the `width`
    /// bytes at `k * width` (see [`codec::dense_width`]).
    pub(crate) dense: Option<usize>,
    pub(crate) count: u32,
    /// Input position of the first item; `None` for `submit`/`apply`.
    pub(crate) first_index: Option<u64>,
    pub(crate) sink: Sink,
    /// Cancel/kill state of a submitted task.
    pub(crate) control: Option<Arc<Control>>,
    /// Set when the `imap` iterator that made this job was dropped.
    pub(crate) abandoned: Option<Arc<AtomicBool>>,
    /// How many more times an item may be re-run after crashing its worker.
    pub(crate) retries: u32,
    /// How many more times an item may be re-run after panicking.
    pub(crate) panic_retries: u32,
    /// Descriptors that handles in the arguments refer to (shared by the
    /// parts of a split batch, whose indices stay valid).
    pub(crate) fds: Option<Arc<Vec<OwnedFd>>>,
    /// Kept for the worker slot that stole it, for a short while.
    pub(crate) reserved: Option<(usize, std::time::Instant)>,
    /// Every item was answered or handed to other jobs: see the `Drop`
    /// impl.
    pub(crate) settled: AtomicBool,
    /// Where the events about it go (the caller's dispatcher and span).
    pub(crate) trace: Arc<Context>,
}

/// A job dropped while its thread unwinds from a panic (a bug in a driver
/// thread, say) is answered with an error: whoever waits for its items
/// hears of it, instead of waiting for ever.
impl Drop for Job {
    fn drop(&mut self) {
        if std::thread::panicking() && !self.settled.load(Ordering::Relaxed) && !self.is_dropped() {
            self.deliver(Outcome::Failed(Failure::Protocol(
                "the thread that ran this batch for the pool panicked (a bug in multiproc); \
                 the batch was lost"
                    .to_owned(),
            )));
        }
    }
}

/// The encoded arguments of a [`Job`]: a buffer of its own, or a part of
/// one that it shares with the other parts of a batch it was split from.
/// Cutting a long batch into pieces used to copy each piece out (into
/// memory faulted in afresh) on the driver's thread while its child
/// waited; now a split only counts a reference.
#[derive(Debug)]
pub(crate) enum Payload {
    Owned(Vec<u8>),
    Shared {
        buf: Arc<Vec<u8>>,
        start: usize,
        end: usize,
    },
    /// One item in two pieces: its head, and the large vector of plain
    /// numbers it holds, taken as it is instead of copied after the head
    /// ([`codec::take_block_call`]). The sends write both pieces; what
    /// needs the bytes in one piece (a failed call's retry, say) joins them
    /// once, the first time.
    Split(Box<Split>),
    /// The dense arguments of a batch of consecutive integers (`map` over
    /// `a..b`, see [`codec::take_range`]), not written out: the driver sends
    /// the first and the count, and the child makes the rest. What needs
    /// the bytes themselves (one item's retry, a batch for an MPI rank)
    /// has them written out, once.
    Range(Box<RangeArgs>),
}

/// The integers of a [`Payload::Range`].
#[derive(Debug)]
pub(crate) struct RangeArgs {
    /// The first one's dense bytes, zero-extended.
    first: u64,
    count: u32,
    /// Bytes of one in a dense batch.
    width: usize,
    written: std::sync::OnceLock<Vec<u8>>,
}

/// The pieces of a [`Payload::Split`].
#[derive(Debug)]
pub(crate) struct Split {
    head: Vec<u8>,
    body: codec::OwnedBlock,
    joined: std::sync::OnceLock<Vec<u8>>,
}

impl Default for Payload {
    fn default() -> Self {
        Payload::Owned(Vec::new())
    }
}

impl From<Vec<u8>> for Payload {
    fn from(buf: Vec<u8>) -> Self {
        Payload::Owned(buf)
    }
}

impl std::ops::Deref for Payload {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        match self {
            Payload::Owned(buf) => buf,
            Payload::Shared { buf, start, end } => &buf[*start..*end],
            Payload::Split(s) => s.joined.get_or_init(|| [&s.head[..], &s.body].concat()),
            Payload::Range(r) => r
                .written
                .get_or_init(|| codec::range_bytes(r.first, r.count, r.width)),
        }
    }
}

impl PartialEq for Payload {
    fn eq(&self, other: &Payload) -> bool {
        **self == **other
    }
}

impl Payload {
    /// An item of `head` then `body`, not copied together.
    pub(crate) fn split(head: Vec<u8>, body: codec::OwnedBlock) -> Payload {
        Payload::Split(Box::new(Split {
            head,
            body,
            joined: std::sync::OnceLock::new(),
        }))
    }

    /// `count` consecutive integers of `width` bytes from `first`.
    pub(crate) fn range(first: u64, count: u32, width: usize) -> Payload {
        Payload::Range(Box::new(RangeArgs {
            first,
            count,
            width,
            written: std::sync::OnceLock::new(),
        }))
    }

    /// The first integer, count and width of a [`Payload::Range`].
    pub(crate) fn as_range(&self) -> Option<(u64, u32, usize)> {
        match self {
            Payload::Range(r) => Some((r.first, r.count, r.width)),
            _ => None,
        }
    }

    /// Its length in bytes (a range's, written out).
    pub(crate) fn len(&self) -> usize {
        match self {
            Payload::Split(s) => s.head.len() + s.body.len(),
            Payload::Range(r) => r.count as usize * r.width,
            _ => (**self).len(),
        }
    }

    /// The bytes it takes on the socket: a range's first integer and count.
    pub(crate) fn sent_len(&self) -> usize {
        match self {
            Payload::Range(_) => proto::RANGE_BODY,
            _ => self.len(),
        }
    }

    /// Its bytes, as two pieces to send one after the other.
    pub(crate) fn parts(&self) -> [&[u8]; 2] {
        match self {
            Payload::Split(s) => [&s.head, &s.body],
            _ => [self, &[]],
        }
    }

    /// Splits off the bytes from `at` on (`at <= len`), without copying
    /// them: both parts then share the buffer.
    fn split_off(&mut self, at: usize) -> Payload {
        assert!(at <= self.len(), "split beyond the payload");
        if let Payload::Range(r) = self {
            // Two ranges: the items from `at / width` on start further up.
            let k = u32::try_from(at / r.width.max(1)).expect("within the count");
            let rest = Payload::range(r.first.wrapping_add(u64::from(k)), r.count - k, r.width);
            r.count = k;
            r.written = std::sync::OnceLock::new();
            return rest;
        }
        let (buf, start, end) = match std::mem::take(self) {
            Payload::Owned(buf) => {
                let end = buf.len();
                (Arc::new(buf), 0, end)
            }
            Payload::Shared { buf, start, end } => (buf, start, end),
            Payload::Split(s) => {
                let buf = [&s.head[..], &s.body].concat();
                let end = buf.len();
                (Arc::new(buf), 0, end)
            }
            Payload::Range(_) => unreachable!("split above"),
        };
        *self = Payload::Shared {
            buf: buf.clone(),
            start,
            end: start + at,
        };
        Payload::Shared {
            buf,
            start: start + at,
            end,
        }
    }

    /// Gives its memory to the spare buffers (see
    /// [`crate::mem::huge::recycle`]) once no other part shares it.
    pub(crate) fn recycle(self) {
        match self {
            Payload::Split(s) => s.body.recycle(),
            other => {
                if let Some(buf) = other.into_vec() {
                    crate::mem::huge::recycle(buf);
                }
            }
        }
    }

    /// The whole buffer back, for reuse, once no other part shares it.
    pub(crate) fn into_vec(self) -> Option<Vec<u8>> {
        match self {
            Payload::Owned(buf) => Some(buf),
            Payload::Shared { buf, .. } => Arc::try_unwrap(buf).ok(),
            Payload::Split(s) => s.body.into_byte_vec(),
            Payload::Range(r) => r.written.into_inner(),
        }
    }
}

/// A batch's encoder marks where every this many items start (see
/// [`Job::marks`]): cutting a long batch into pieces, and stealing half of
/// one, used to walk up to hundreds of thousands of items on the driver's
/// thread while its child waited (as much time as decoding the results,
/// in the primes bench).
pub(crate) const MARK_EVERY: u32 = 512;

impl Job {
    /// A batch of `count` items of `worker` going to `sink`, with no marks,
    /// framed items, no input position, no control, no retries and no
    /// descriptors: the callers set what differs.
    pub(crate) fn new(worker: &'static str, payload: Payload, count: u32, sink: Sink) -> Job {
        Job {
            worker,
            payload,
            marks: Vec::new(),
            dense: None,
            count,
            first_index: None,
            sink,
            control: None,
            abandoned: None,
            retries: 0,
            panic_retries: 0,
            fds: None,
            reserved: None,
            settled: AtomicBool::new(false),
            trace: Arc::new(Context::current()),
        }
    }

    /// Splits a batch after its first `n` items (`0 < n < count`).
    pub(crate) fn split_at(self, n: u32) -> (Job, Job) {
        debug_assert!(n > 0 && n < self.count);
        if let Some(width) = self.dense {
            return self.cut_at(n, n as usize * width, 0);
        }
        let marked = self.marks.partition_point(|&(item, _)| item <= n);
        let (mut item, offset) = marked.checked_sub(1).map_or((0, 0), |i| self.marks[i]);
        let mut rest = &self.payload[offset as usize..];
        while item < n {
            codec::next_item(&mut rest).expect("the parent framed this payload itself");
            item += 1;
        }
        let cut = self.payload.len() - rest.len();
        self.cut_at(n, cut, marked)
    }

    /// [`split_at`](Job::split_at) item `n`, which starts at byte `cut`;
    /// the marks from `marked` on are the second part's.
    fn cut_at(self, n: u32, cut: usize, marked: usize) -> (Job, Job) {
        let marks = self.marks[marked.min(self.marks.len())..]
            .iter()
            .map(|&(item, offset)| (item - n, offset - cut as u32))
            .collect();
        let mut first = self;
        let second = Job {
            worker: first.worker,
            payload: first.payload.split_off(cut),
            marks,
            dense: first.dense,
            count: first.count - n,
            first_index: first.first_index.map(|i| i + u64::from(n)),
            sink: first.sink.clone(),
            control: None,
            abandoned: first.abandoned.clone(),
            retries: first.retries,
            panic_retries: first.panic_retries,
            fds: first.fds.clone(),
            reserved: None,
            settled: AtomicBool::new(false),
            trace: first.trace.clone(),
        };
        first.marks.retain(|&(item, _)| item < n);
        first.count = n;
        (first, second)
    }

    /// The descriptor table for a job, `None` when there is none.
    pub(crate) fn fd_table(fds: Vec<OwnedFd>) -> Option<Arc<Vec<OwnedFd>>> {
        (!fds.is_empty()).then(|| Arc::new(fds))
    }

    /// The descriptors to send with this job.
    pub(crate) fn fds(&self) -> &[OwnedFd] {
        self.fds.as_deref().map_or(&[], Vec::as_slice)
    }

    /// `true` if nobody waits for the result any more.
    pub(crate) fn is_dropped(&self) -> bool {
        self.abandoned
            .as_ref()
            .is_some_and(|a| a.load(Ordering::Relaxed))
            || self.control.as_ref().is_some_and(|c| c.is_settled())
    }

    /// The encoded arguments of each item, in order.
    pub(crate) fn item_args(&self) -> Vec<&[u8]> {
        match self.dense {
            Some(width) => self.payload.chunks_exact(width).collect(),
            None => {
                let mut rest = &self.payload[..];
                let mut args = Vec::with_capacity(self.count as usize);
                while let Some((_, _, whole)) = codec::next_item(&mut rest) {
                    args.push(whole);
                }
                args
            }
        }
    }

    /// A one-item job for item `k` of this batch, with its arguments as
    /// [`item_args`](Job::item_args) gives them (the task's control goes
    /// with it when the batch is one call).
    pub(crate) fn part(&self, k: u32, payload: Vec<u8>) -> Job {
        Job {
            worker: self.worker,
            payload: payload.into(),
            marks: Vec::new(),
            dense: self.dense,
            count: 1,
            first_index: self.first_index.map(|i| i + u64::from(k)),
            sink: self.sink.clone(),
            control: if self.count == 1 {
                self.control.clone()
            } else {
                None
            },
            abandoned: self.abandoned.clone(),
            retries: self.retries,
            panic_retries: self.panic_retries,
            fds: self.fds.clone(),
            reserved: None,
            settled: AtomicBool::new(false),
            trace: self.trace.clone(),
        }
    }

    /// Delivers the outcome of items `offset..offset + count` of this batch.
    pub(crate) fn deliver_part(&self, offset: u32, count: u32, outcome: Outcome) {
        let reply = Reply {
            first_index: self.first_index.map(|i| i + u64::from(offset)),
            count,
            outcome,
        };
        match &self.sink {
            Sink::Stream(tx) => {
                let _ = tx.send(reply);
            }
            Sink::Task(slot) => slot.fill(reply),
            Sink::Collect(collector) => collector.deliver(reply),
            #[cfg(feature = "mpi")]
            Sink::Relay(batch, tx, reframe) => {
                let _ = tx.send((*batch, framed(reply, *reframe)));
            }
        }
    }

    /// Delivers the outcome of the whole batch.
    pub(crate) fn deliver(&self, outcome: Outcome) {
        self.settle();
        self.deliver_part(0, self.count, outcome);
    }

    /// Records that every item was answered (or handed to other jobs), by
    /// [`deliver`](Job::deliver) or by parts.
    pub(crate) fn settle(&self) {
        self.settled.store(true, Ordering::Relaxed);
    }
}

/// Where the result of a job goes.
#[derive(Clone)]
pub(crate) enum Sink {
    /// An `imap`/`map` stream, which reassembles by item index.
    Stream(WakingSender<Reply>),
    /// A submitted task.
    Task(Arc<TaskSlot>),
    /// A `map` batch whose results the driver decodes straight into the
    /// output (see [`super::collect`]); the stream hears what was stored.
    Collect(Arc<Collector>),
    /// A batch that an MPI rank runs for rank 0: replies go back tagged
    /// with rank 0's batch id.
    /// Relayed to MPI rank 0, which reads framed results only: dense ones
    /// are framed with the function given (the worker's output type's).
    #[cfg(feature = "mpi")]
    Relay(
        u64,
        std::sync::mpsc::Sender<(u64, Reply)>,
        crate::registry::ReframeFn,
    ),
}

/// `reply` with dense results turned into framed items by `reframe`.
#[cfg(feature = "mpi")]
fn framed(mut reply: Reply, reframe: crate::registry::ReframeFn) -> Reply {
    if let Outcome::Done {
        data,
        start,
        dense: dense @ true,
        ..
    } = &mut reply.outcome
    {
        let mut items = data[*start..].to_vec();
        reframe(&mut items, 0);
        *data = crate::conn::outcome::ReplyBytes::Owned(items);
        *start = 0;
        *dense = false;
    }
    reply
}

/// How long the stolen half of a batch waits for the worker that stole it
/// before any worker may take it.
const RESERVE_FOR: std::time::Duration = std::time::Duration::from_millis(20);

/// What [`JobQueue::next`] found. Returned by value and taken apart at
/// once: boxing the job would cost an allocation per batch.
#[allow(clippy::large_enum_variant)]
pub(crate) enum Next {
    /// A job to run.
    Job(Job),
    /// Nothing to run now: the queue is closed, or the call did not block,
    /// or the first job is too large to send ahead.
    Nothing,
    /// Nothing to run for the `idle` time the caller gave.
    Idle,
}

/// State shared by a pool, its drivers, its tasks and streams.
pub(crate) struct JobQueue {
    state: Mutex<QueueState>,
    cond: Condvar,
    batch_ids: AtomicU64,
}

struct QueueState {
    jobs: VecDeque<Job>,
    closed: bool,
    terminated: bool,
    /// Set when no worker can be started any more: every job fails with it.
    fatal: Option<Failure>,
    /// Drivers waiting on the condition variable: a push wakes one only if
    /// there is one (a notify is a system call even with nobody to wake,
    /// and `map` pushes its batches in a burst).
    sleeping: usize,
}

impl JobQueue {
    pub(crate) fn new() -> JobQueue {
        JobQueue {
            state: Mutex::new(QueueState {
                jobs: VecDeque::new(),
                closed: false,
                terminated: false,
                fatal: None,
                sleeping: 0,
            }),
            cond: Condvar::new(),
            batch_ids: AtomicU64::new(1),
        }
    }

    fn lock(&self) -> MutexGuard<'_, QueueState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn next_batch_id(&self) -> u64 {
        self.batch_ids.fetch_add(1, Ordering::Relaxed)
    }

    /// Queues a job; if the pool refuses it, the job fails at once with
    /// the reason.
    pub(crate) fn push(&self, job: Job) {
        let mut s = self.lock();
        let refused = match &s.fatal {
            Some(f) => Some(f.clone()),
            None if s.closed || s.terminated => Some(Failure::Closed),
            None => None,
        };
        if let Some(failure) = refused {
            drop(s);
            job.deliver(Outcome::Failed(failure));
            return;
        }
        s.jobs.push_back(job);
        let wake = s.sleeping > 0;
        drop(s);
        if wake {
            self.cond.notify_one();
        }
    }

    /// Puts jobs back at the front (after a crash), keeping their order.
    pub(crate) fn requeue_front(&self, jobs: Vec<Job>) {
        let mut s = self.lock();
        if s.terminated || s.fatal.is_some() {
            let f = s.fatal.clone().unwrap_or(Failure::Cancelled);
            drop(s);
            for job in jobs {
                job.deliver(Outcome::Failed(f.clone()));
            }
            return;
        }
        for job in jobs.into_iter().rev() {
            s.jobs.push_front(job);
        }
        drop(s);
        self.cond.notify_all();
    }

    /// The next live job. Blocks while the queue is empty and open when
    /// `block`; `None` when there is nothing (more) to do. While it waits,
    /// `steal` may split another worker's batch (it returns whether other
    /// workers are still busy, so that it is worth trying again soon).
    ///
    /// A job whose arguments of `n` bytes fail `fits(n)` is left in the
    /// queue (and `None` returned): sending ahead, the driver takes only
    /// what it can send without blocking.
    ///
    /// With `idle`, a blocking call that has waited that long with nothing
    /// to do returns [`Next::Idle`] (the driver then frees what it keeps
    /// for busy times, and asks again without `idle`).
    pub(crate) fn next(
        &self,
        me: usize,
        block: bool,
        fits: &dyn Fn(usize) -> bool,
        steal: &dyn Fn() -> bool,
        idle: Option<std::time::Duration>,
    ) -> Next {
        let mut s = self.lock();
        let mut waited = std::time::Duration::ZERO;
        loop {
            if s.terminated {
                return Next::Nothing;
            }
            // Skip jobs nobody waits for; then take the first job not kept
            // for another worker that stole it (a reservation lapses after
            // RESERVE_FOR). Reserved jobs sit at the front, so the scan is
            // short: it stops at the first job that is not reserved.
            while s.jobs.front().is_some_and(Job::is_dropped) {
                s.jobs.pop_front();
            }
            let mut pick = None;
            for (i, job) in s.jobs.iter().enumerate() {
                match job.reserved {
                    Some((owner, at)) if owner != me && at.elapsed() < RESERVE_FOR => continue,
                    _ => {
                        pick = Some(i);
                        break;
                    }
                }
            }
            if let Some(i) = pick {
                if !fits(s.jobs[i].payload.sent_len()) {
                    return Next::Nothing;
                }
                let job = s.jobs.remove(i).expect("the index was just found");
                if job.is_dropped() {
                    continue;
                }
                return Next::Job(job);
            }
            if !block || s.closed {
                return Next::Nothing;
            }
            drop(s);
            let others_busy = steal();
            s = self.lock();
            if s.jobs
                .iter()
                .any(|j| j.reserved.is_none_or(|(o, _)| o == me))
                || s.closed
                || s.terminated
            {
                continue;
            }
            if idle.is_some_and(|idle| waited >= idle) {
                return Next::Idle;
            }
            // Wake up to steal again while others are busy, and when `idle`
            // is up; otherwise sleep until there is work.
            let steal_in = others_busy.then_some(STEAL_AFTER);
            let idle_in = idle.map(|idle| idle - waited);
            let since = std::time::Instant::now();
            s.sleeping += 1;
            s = match steal_in.into_iter().chain(idle_in).min() {
                Some(limit) => {
                    self.cond
                        .wait_timeout(s, limit)
                        .unwrap_or_else(|e| e.into_inner())
                        .0
                }
                None => self.cond.wait(s).unwrap_or_else(|e| e.into_inner()),
            };
            s.sleeping -= 1;
            waited += since.elapsed();
        }
    }

    pub(crate) fn close(&self) {
        self.lock().closed = true;
        self.cond.notify_all();
    }

    pub(crate) fn is_terminated(&self) -> bool {
        self.lock().terminated
    }

    /// Stops everything: queued jobs fail as cancelled.
    pub(crate) fn terminate(&self) {
        let jobs: Vec<Job> = {
            let mut s = self.lock();
            s.terminated = true;
            s.closed = true;
            s.jobs.drain(..).collect()
        };
        self.cond.notify_all();
        for job in jobs {
            job.deliver(Outcome::Failed(Failure::Cancelled));
        }
    }

    /// No worker can be started: fail everything queued and to come.
    pub(crate) fn set_fatal(&self, failure: Failure) {
        let jobs: Vec<Job> = {
            let mut s = self.lock();
            s.fatal.get_or_insert(failure.clone());
            s.jobs.drain(..).collect()
        };
        self.cond.notify_all();
        for job in jobs {
            job.deliver(Outcome::Failed(failure.clone()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch(values: std::ops::Range<u64>) -> Job {
        let mut payload = Vec::new();
        let mut marks = Vec::new();
        for (k, v) in values.clone().enumerate() {
            if k > 0 && k as u32 % MARK_EVERY == 0 {
                marks.push((k as u32, payload.len() as u32));
            }
            codec::put_item(&mut payload, &(v * 1000)).unwrap();
        }
        let count = (values.end - values.start) as u32;
        let sink = Sink::Stream(crate::conn::slot::waking_channel().0);
        let mut job = Job::new("w", payload.into(), count, sink);
        job.marks = marks;
        job.first_index = Some(values.start);
        job
    }

    fn items(job: &Job) -> Vec<u64> {
        let mut rest = &job.payload[..];
        let mut out = Vec::new();
        while let Some((_, body, _)) = codec::next_item(&mut rest) {
            out.push(codec::decode_exact::<u64>(body).unwrap() / 1000);
        }
        assert_eq!(out.len(), job.count as usize);
        for &(item, offset) in &job.marks {
            let mut at = &job.payload[offset as usize..];
            let (_, body, _) = codec::next_item(&mut at).expect("a mark points at an item");
            assert_eq!(
                codec::decode_exact::<u64>(body).unwrap() / 1000,
                out[item as usize]
            );
        }
        out
    }

    #[test]
    fn a_payload_in_two_pieces_reads_as_one() {
        let body: Vec<u8> = (0..=255).collect();
        let ptr = body.as_ptr();
        let payload = Payload::split(vec![7, 8], body.into());
        assert_eq!(payload.len(), 258);
        let [head, rest] = payload.parts();
        assert_eq!((head, rest.as_ptr()), (&[7u8, 8][..], ptr), "not copied");
        assert_eq!(&payload[..3], &[7, 8, 0]);
        assert_eq!(payload[257], 255);
        assert_eq!(payload.into_vec().map(|v| v.as_ptr()), Some(ptr));
        let mut payload = Payload::split(vec![1], vec![2, 3, 4].into());
        let tail = payload.split_off(2);
        assert_eq!((&payload[..], &tail[..]), (&[1u8, 2][..], &[3u8, 4][..]));
    }

    #[test]
    fn a_range_payload_splits_into_ranges_and_reads_as_its_dense_batch() {
        // -3..5 as i16: two bytes each, zero-extended bits for the first.
        let first = u64::from(u16::from_le_bytes((-3i16).to_le_bytes()));
        let dense: Vec<u8> = (-3i16..5).flat_map(i16::to_le_bytes).collect();
        let sink = Sink::Stream(crate::conn::slot::waking_channel().0);
        let mut job = Job::new("w", Payload::range(first, 8, 2), 8, sink);
        job.dense = Some(2);
        job.first_index = Some(0);
        assert_eq!(job.payload.len(), 16);
        assert_eq!(job.payload.sent_len(), proto::RANGE_BODY);
        let (head, tail) = job.split_at(3);
        // Both parts are still ranges: nothing was written out to cut them.
        assert_eq!(head.payload.as_range(), Some((first, 3, 2)));
        assert_eq!(tail.payload.as_range(), Some((first.wrapping_add(3), 5, 2)));
        assert_eq!(tail.first_index, Some(3));
        assert_eq!(&head.payload[..], &dense[..6]);
        assert_eq!(&tail.payload[..], &dense[6..]);
        assert_eq!(tail.item_args()[2], &2i16.to_le_bytes()[..]);
        assert_eq!(tail.payload.parts()[0], &dense[6..]);
    }

    #[test]
    fn a_split_shares_the_buffer_and_gives_it_back_when_the_parts_are_done() {
        let job = batch(0..2000);
        let (len, ptr) = (job.payload.len(), job.payload.as_ptr());
        let (head, mut tail) = job.split_at(1500);
        let (mut head, mut middle) = head.split_at(700);
        assert_eq!(head.payload.as_ptr(), ptr, "not copied");
        assert_eq!(
            head.payload.len() + middle.payload.len() + tail.payload.len(),
            len
        );
        assert_eq!(items(&middle), (700..1500).collect::<Vec<_>>());
        assert_eq!(items(&tail), (1500..2000).collect::<Vec<_>>());
        assert!(
            std::mem::take(&mut tail.payload).into_vec().is_none(),
            "still shared"
        );
        assert!(
            std::mem::take(&mut head.payload).into_vec().is_none(),
            "still shared"
        );
        let whole = std::mem::take(&mut middle.payload)
            .into_vec()
            .expect("the last part gets the buffer");
        assert_eq!((whole.as_ptr(), whole.len()), (ptr, len));
    }

    #[test]
    fn splits_cut_at_the_same_item_with_or_without_marks() {
        let n = 3 * u64::from(MARK_EVERY) + 17;
        for cut in [
            1,
            5,
            MARK_EVERY - 1,
            MARK_EVERY,
            MARK_EVERY + 1,
            2 * MARK_EVERY + 3,
            n as u32 - 1,
        ] {
            let (head, tail) = batch(0..n).split_at(cut);
            assert_eq!(items(&head), (0..u64::from(cut)).collect::<Vec<_>>());
            assert_eq!(items(&tail), (u64::from(cut)..n).collect::<Vec<_>>());
            assert_eq!(tail.first_index, Some(u64::from(cut)));
            // Splitting a part again still finds its items.
            if tail.count > 2 {
                let half = tail.count / 2;
                let (a, b) = tail.split_at(half);
                assert_eq!(
                    items(&a).len() + items(&b).len(),
                    (n - u64::from(cut)) as usize
                );
                assert_eq!(items(&b)[0], u64::from(cut + half));
            }
            let mut plain = batch(0..n);
            plain.marks.clear();
            let (h, t) = plain.split_at(cut);
            assert_eq!(
                (&h.payload, &t.payload),
                (&head.payload, &batch(0..n).split_at(cut).1.payload)
            );
        }
    }
}
