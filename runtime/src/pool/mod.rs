//! [`Pool`]: a fixed set of worker processes that run `#[worker]` functions.

pub(crate) mod collect;
pub(crate) mod deliver;
pub(crate) mod driver;
pub(crate) mod forward;
pub(crate) mod job;
pub(crate) mod send;
pub(crate) mod shared;
pub(crate) mod stream;
pub(crate) mod task;

use crate::conn::{decode, outcome, runner};

use std::num::NonZeroUsize;
use std::sync::atomic::AtomicUsize;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use crate::codec;
use serde::de::DeserializeOwned;

pub use stream::{Imap, ImapStream, ImapUnordered, ImapUnorderedStream, Indexed};
pub use task::{AsCompleted, AsCompletedStream, Task, as_completed};

use crate::conn::slot::TaskSlot;
use job::{Job, JobQueue, Sink};
use outcome::Outcome;
use runner::Runner;
use stream::{Chunking, Stream};
use task::Control;

pub(crate) use shared::{Initializer, PoolShared};

use crate::error::{Error, ErrorKind, Result};
use crate::trace::events::{self, Call};
use crate::worker::Worker;
use crate::{guard, registry, trace};

/// A pool of worker processes: Python's `multiprocessing.Pool` and
/// `concurrent.futures.ProcessPoolExecutor` in one.
///
/// Each worker is a child process running this same binary; tasks are
/// `#[worker]` functions, found by name in the child. A task that panics
/// fails alone; a worker process that crashes fails only the item it was
/// running and is replaced.
///
/// `Pool` is `Send + Sync`: share it between threads by reference or in an
/// `Arc`. Dropping it finishes the queued work, then stops and reaps every
/// worker process; [`terminate`](Pool::terminate) stops at once.
///
/// # Example
///
/// ```ignore
/// use multiproc::{entry, worker, Pool};
///
/// #[worker]
/// fn square(x: u64) -> u64 { x * x }
///
/// #[entry]
/// fn main() -> Result<(), multiproc::Error> {
///     let pool = Pool::new(0)?;
///     let squares = pool.map(square, 0..10)?;
///     assert_eq!(squares[3], 9);
///     Ok(())
/// }
/// ```
pub struct Pool {
    pub(crate) shared: Arc<PoolShared>,
    drivers: Mutex<Vec<JoinHandle<()>>>,
    workers: usize,
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool")
            .field("workers", &self.workers)
            .finish_non_exhaustive()
    }
}

/// Builds a [`Pool`] with options: [`Pool::builder`].
#[must_use = "call .build() to start the pool"]
pub struct PoolBuilder {
    pub(crate) workers: usize,
    pub(crate) initializer: Option<Result<Initializer>>,
    pub(crate) max_tasks_per_worker: Option<u64>,
    pub(crate) task_timeout: Option<Duration>,
    pub(crate) retries: u32,
    pub(crate) panic_retries: u32,
    pub(crate) max_worker_rss: Option<u64>,
    pub(crate) memory_limit: Option<u64>,
    pub(crate) forward_tracing: bool,
}

impl std::fmt::Debug for PoolBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PoolBuilder")
            .field("workers", &self.workers)
            .field(
                "initializer",
                &self
                    .initializer
                    .as_ref()
                    .map(|i| i.as_ref().map(|i| i.worker).ok()),
            )
            .field("max_tasks_per_worker", &self.max_tasks_per_worker)
            .field("task_timeout", &self.task_timeout)
            .field("retries", &self.retries)
            .field("panic_retries", &self.panic_retries)
            .field("max_worker_rss", &self.max_worker_rss)
            .field("memory_limit", &self.memory_limit)
            .field("forward_tracing", &self.forward_tracing)
            .finish()
    }
}

/// What an initializer may return: `()`, or a `Result` whose error fails
/// pool creation.
pub trait InitOutcome: DeserializeOwned {
    /// `Err(message)` if the initializer failed.
    fn into_outcome(self) -> std::result::Result<(), String>;
}

impl InitOutcome for () {
    fn into_outcome(self) -> std::result::Result<(), String> {
        Ok(())
    }
}

impl<E: std::fmt::Display + DeserializeOwned> InitOutcome for std::result::Result<(), E> {
    fn into_outcome(self) -> std::result::Result<(), String> {
        self.map_err(|e| e.to_string())
    }
}

fn check_init<W: Worker>(worker: &'static str, rest: &mut &[u8]) -> Result<()>
where
    W::Output: InitOutcome,
{
    let out: W::Output = decode::decode_item(worker, None, rest)?;
    out.into_outcome().map_err(|message| {
        Error::new(ErrorKind::Panic {
            worker: worker.to_owned(),
            index: None,
            message,
            location: None,
        })
    })
}

impl PoolBuilder {
    /// Number of worker processes; `0` (the default) means
    /// [`std::thread::available_parallelism`].
    pub fn workers(mut self, n: usize) -> Self {
        self.workers = n;
        self
    }

    /// Runs `worker(args)` once in every worker process when it starts,
    /// before any task (Python's `initializer`/`initargs`). If it panics or
    /// returns `Err`, [`build`](PoolBuilder::build) fails with
    /// [`ErrorKind::Initializer`].
    pub fn initializer<W>(mut self, worker: W, args: W::Args) -> Self
    where
        W: Worker,
        W::Output: InitOutcome,
    {
        let _ = worker;
        let init = codec::encode_call::<W>(&args).map(|(payload, fds)| Initializer {
            worker: W::NAME,
            payload,
            fds,
            check: check_init::<W>,
        });
        self.initializer = Some(init);
        self
    }

    /// Replaces each worker process after it has run `k` tasks (items), like
    /// Python's `maxtasksperchild`: a cure for leaks in code you cannot fix.
    /// Batches are capped at `k` items so the limit is exact.
    ///
    /// # Panics
    ///
    /// If `k` is zero.
    pub fn max_tasks_per_worker(mut self, k: u64) -> Self {
        assert!(k > 0, "max_tasks_per_worker must be at least 1");
        self.max_tasks_per_worker = Some(k);
        self
    }

    /// Limits how long one task (one item of a `map`, or one `submit`) may
    /// run. When a task overstays, the worker process running it is killed
    /// and replaced; that item fails with [`Timeout`](ErrorKind::Timeout),
    /// and the other items of its batch are re-run. Checked every
    /// `limit / 8`, and at most 100 ms apart, on this process's clock.
    pub fn task_timeout(mut self, limit: Duration) -> Self {
        self.task_timeout = Some(limit);
        self
    }

    /// Re-runs a task whose worker process crashed (abort, segfault, signal,
    /// `exit`) up to `n` more times, on whichever worker is free, before
    /// reporting [`WorkerDied`](ErrorKind::WorkerDied). Panics, timeouts
    /// and allocations that failed ([`OutOfMemory`](ErrorKind::OutOfMemory))
    /// are never retried. Default: `0`.
    pub fn retries(mut self, n: u32) -> Self {
        self.retries = n;
        self
    }

    /// Re-runs a task that panicked up to `n` more times (each time alone,
    /// on whichever worker is free) before reporting the last
    /// [`Panic`](ErrorKind::Panic): for flaky code. Default: `0` — a panic
    /// is a result, not a crash, and is normally reported at once.
    pub fn retry_panics(mut self, n: u32) -> Self {
        self.panic_retries = n;
        self
    }

    /// Replaces a worker process whose resident memory exceeds `bytes`
    /// after a batch (a guard against leaks, like loky's): the worker
    /// finishes its batch, exits, and a fresh one takes its place.
    ///
    /// A soft limit: it is read between batches, so a task can go far
    /// over it, and the task itself never fails for it. For a cap no task
    /// can pass, see [`memory_limit`](PoolBuilder::memory_limit).
    pub fn max_worker_memory(mut self, bytes: u64) -> Self {
        self.max_worker_rss = Some(bytes);
        self
    }

    /// A hard cap on the memory of each worker process, enforced by the
    /// kernel: an allocation that would take the process's private memory
    /// past `bytes` fails at once, before any of it is used. The task that
    /// asked fails alone with [`OutOfMemory`](ErrorKind::OutOfMemory),
    /// naming the limit; its process is replaced, and the caller and the
    /// other workers are untouched.
    ///
    /// What counts is the private writable memory a worker has mapped
    /// (Linux's `RLIMIT_DATA`): its heap, anonymous `mmap`s, thread stacks,
    /// and the buffers its arguments and results pass through, whether
    /// touched or not (`Vec::with_capacity(n)` counts `n`). Shared memory
    /// does not count: the pool's buffers for large frames, `SharedArray`,
    /// `SharedBytes`. Neither does address space reserved without write
    /// access, which a limit on the whole address space (`RLIMIT_AS`)
    /// would count: glibc reserves 64 MiB of it for each thread that
    /// allocates, and a worker maps tens of MiB of shared buffers for large
    /// frames. An idle worker has well under 1 MiB of private memory; give
    /// it some MiB more than its tasks need. The limit is set before the
    /// worker runs anything of the caller's (the initializer included),
    /// and programs the worker starts inherit it. A worker running with
    /// `CAP_SYS_RESOURCE` (as root) could raise it again.
    ///
    /// Independent of [`max_worker_memory`](PoolBuilder::max_worker_memory),
    /// the soft limit that retires a worker between batches; both can be
    /// set.
    ///
    /// # Panics
    ///
    /// If `bytes` is zero.
    pub fn memory_limit(mut self, bytes: u64) -> Self {
        assert!(bytes > 0, "memory_limit must be at least 1 byte");
        self.memory_limit = Some(bytes);
        self
    }

    /// Whether the [`tracing`](https://docs.rs/tracing) events that tasks
    /// emit in the worker processes reach this process's subscriber.
    /// Default: `true`.
    ///
    /// A worker process never runs `main`, so a subscriber installed there
    /// does not exist in it: without forwarding, a task's events are
    /// silently lost. With it, each worker process installs a subscriber
    /// of multiproc's as its global default, which sends every event at a
    /// level some subscriber of this process wants to the pool. There it
    /// is emitted again, with its level, target, fields and message, plus
    /// the fields `pid` (the worker process) and `item` (the item's input
    /// position, for `map` and `imap`), into the dispatcher of the thread
    /// that sent the item, inside the span of its `map` or `imap`. While no
    /// subscriber of this process wants an event, a worker makes and sends
    /// nothing. Spans inside a worker are not forwarded.
    ///
    /// Forwarding drops events rather than slow a task down: a task that
    /// emits them faster than this process takes them loses the excess,
    /// and a WARN event under `multiproc::worker` says how many. Turn it
    /// off to install a subscriber of your own in the worker processes (in
    /// an [`initializer`](PoolBuilder::initializer)), or to keep this
    /// process from handling the events of workers.
    pub fn forward_tracing(mut self, on: bool) -> Self {
        self.forward_tracing = on;
        self
    }

    /// Starts the worker processes (concurrently) and waits until each has
    /// started and run the initializer.
    ///
    /// # Errors
    ///
    /// [`GuardMissing`](ErrorKind::GuardMissing) without `#[entry]` on
    /// `main`; [`DuplicateWorker`](ErrorKind::DuplicateWorker);
    /// [`Spawn`](ErrorKind::Spawn) if a process cannot be started (also
    /// under a [`memory_limit`](PoolBuilder::memory_limit) too small for it
    /// to start, or one that cannot be set);
    /// [`Initializer`](ErrorKind::Initializer) if the initializer fails.
    pub fn build(self) -> Result<Pool> {
        if !guard::guard_installed() {
            return Err(Error::new(ErrorKind::GuardMissing));
        }
        registry::validate()?;
        let initializer = self.initializer.transpose()?;
        let workers = match self.workers {
            0 => std::thread::available_parallelism().map_or(1, NonZeroUsize::get),
            n => n,
        };
        let runners: Vec<Arc<Runner>> = (0..workers).map(|id| Arc::new(Runner::new(id))).collect();
        let shared = Arc::new(PoolShared {
            queue: JobQueue::new(),
            initializer,
            max_tasks_per_worker: self.max_tasks_per_worker,
            test_name: guard::current_test(),
            task_timeout: self.task_timeout,
            retries: self.retries,
            panic_retries: self.panic_retries,
            max_worker_rss: self.max_worker_rss,
            memory_limit: self.memory_limit,
            runners: runners.clone(),
            slots_alive: AtomicUsize::new(workers),
            dense_batches: true,
            forward_tracing: self.forward_tracing,
        });
        let (ready_tx, ready_rx) = mpsc::channel();
        let mut drivers = Vec::with_capacity(workers);
        // The library's events from the driver threads go where this
        // thread's would; with no subscriber here, to the global default
        // that may be set later.
        let dispatch = tracing::dispatcher::get_default(|d| {
            (!d.is::<tracing::subscriber::NoSubscriber>()).then(|| d.clone())
        });
        for (i, runner) in runners.into_iter().enumerate() {
            let for_driver = shared.clone();
            let ready = ready_tx.clone();
            let dispatch = dispatch.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("multiproc-worker-{i}"))
                .spawn(move || {
                    let _default = dispatch.as_ref().map(tracing::dispatcher::set_default);
                    driver::run(for_driver, runner, ready);
                });
            match spawned {
                Ok(handle) => drivers.push(handle),
                Err(e) => {
                    let pool = Pool::from_parts(shared, drivers, workers);
                    pool.terminate();
                    return Err(Error::new(ErrorKind::Spawn(e)));
                }
            }
        }
        drop(ready_tx);
        let pool = Pool::from_parts(shared, drivers, workers);
        let mut first_error = None;
        for _ in 0..workers {
            match ready_rx.recv() {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    first_error.get_or_insert(e);
                }
                Err(_) => {
                    first_error.get_or_insert(Error::new(ErrorKind::Protocol(
                        "a worker thread exited".to_owned(),
                    )));
                }
            }
        }
        if let Some(e) = first_error {
            pool.terminate();
            return Err(e);
        }
        trace::events::pool_started(workers);
        Ok(pool)
    }
}

impl Pool {
    pub(crate) fn from_parts(
        shared: Arc<PoolShared>,
        drivers: Vec<JoinHandle<()>>,
        workers: usize,
    ) -> Pool {
        Pool {
            shared,
            drivers: Mutex::new(drivers),
            workers,
        }
    }

    /// Starts a pool of `workers` processes (`0`: one per available CPU).
    ///
    /// # Errors
    ///
    /// As [`PoolBuilder::build`].
    pub fn new(workers: usize) -> Result<Pool> {
        Pool::builder().workers(workers).build()
    }

    /// A builder for a pool with options (initializer, worker recycling).
    pub fn builder() -> PoolBuilder {
        PoolBuilder {
            workers: 0,
            initializer: None,
            max_tasks_per_worker: None,
            task_timeout: None,
            retries: 0,
            panic_retries: 0,
            max_worker_rss: None,
            memory_limit: None,
            forward_tracing: true,
        }
    }

    /// Number of worker processes.
    pub fn workers(&self) -> usize {
        self.workers
    }

    pub(crate) fn cap_chunk(&self, chunking: Chunking) -> Chunking {
        chunking.capped(self.shared.max_tasks_per_worker)
    }

    /// Applies `worker` to every item and returns the results in input
    /// order: Python's `Pool.map`. Several arguments are passed as tuples.
    ///
    /// Sized input (an exact `size_hint`) is cut into batches of
    /// ⌈n / (4 · workers)⌉ items, Python's formula; unsized input is batched
    /// adaptively. Use [`map_chunked`](Pool::map_chunked) to choose.
    ///
    /// # Errors
    ///
    /// The first failed item (by input position) — a panic, a crashed
    /// worker, a codec error. The remaining queued work is dropped. To keep
    /// every item's result, use [`imap`](Pool::imap).
    pub fn map<W, I>(&self, worker: W, items: I) -> Result<Vec<W::Output>>
    where
        W: Worker,
        I: IntoIterator<Item = W::Args>,
    {
        let items = items.into_iter();
        let chunking = match items.size_hint() {
            (lo, Some(hi)) if lo == hi => Chunking::Fixed(lo.div_ceil(4 * self.workers).max(1)),
            _ => Chunking::Adaptive(1),
        };
        self.collect(worker, items, chunking)
    }

    /// [`map`](Pool::map) with batches of exactly `chunk_size` items
    /// (Python's `chunksize`).
    ///
    /// # Errors
    ///
    /// As [`map`](Pool::map).
    pub fn map_chunked<W, I>(
        &self,
        worker: W,
        items: I,
        chunk_size: usize,
    ) -> Result<Vec<W::Output>>
    where
        W: Worker,
        I: IntoIterator<Item = W::Args>,
    {
        self.collect(
            worker,
            items.into_iter(),
            Chunking::Fixed(chunk_size.max(1)),
        )
    }

    fn collect<W, I>(&self, worker: W, items: I, chunking: Chunking) -> Result<Vec<W::Output>>
    where
        W: Worker,
        I: Iterator<Item = W::Args>,
    {
        let span = events::call_span(Call::Map, W::NAME, events::exact_len(items.size_hint()));
        let _in_span = span.enter();
        match items.size_hint() {
            (len, Some(hi)) if len == hi && len > 0 => {
                self.collect_stored(worker, items, chunking, len)
            }
            _ => self.collect_here(worker, items, chunking),
        }
    }

    /// [`collect`](Pool::collect) for an input that says how long it is:
    /// the drivers decode the results into the output themselves (see
    /// [`collect::Slots`]); this thread only encodes, keeps count, and
    /// stores what reaches it (items past `len`, should the input yield
    /// more than it said, come after).
    fn collect_stored<W, I>(
        &self,
        _worker: W,
        items: I,
        chunking: Chunking,
        len: usize,
    ) -> Result<Vec<W::Output>>
    where
        W: Worker,
        I: Iterator<Item = W::Args>,
    {
        let slots = Arc::new(collect::Slots::<W::Output>::new(len));
        let mut stream = Stream::<W, I>::new(
            &self.shared,
            self.workers,
            items,
            self.cap_chunk(chunking),
            true,
        );
        stream.store_into(slots.clone(), len as u64);
        let mut extra = Vec::new();
        while let Some((index, result)) = stream.next_item() {
            if let Err(value) = slots.put(index, result?) {
                extra.push(value);
            }
        }
        let stored = usize::try_from(stream.taken()).map_or(len, |n| n.min(len));
        drop(stream);
        let mut out = slots.take(stored).ok_or_else(|| {
            Error::new(ErrorKind::Protocol(format!(
                "the results of a map of worker `{}` do not add up",
                W::NAME
            )))
        })?;
        out.append(&mut extra);
        Ok(out)
    }

    /// [`collect`](Pool::collect) with every result decoded on this thread.
    fn collect_here<W, I>(&self, _worker: W, items: I, chunking: Chunking) -> Result<Vec<W::Output>>
    where
        W: Worker,
        I: Iterator<Item = W::Args>,
    {
        let mut out = Vec::new();
        // The results of a large map are tens of MiB: huge pages save most
        // of the page faults of filling them.
        crate::mem::huge::reserve(&mut out, items.size_hint().0);
        let mut stream = Stream::<W, I>::new(
            &self.shared,
            self.workers,
            items,
            self.cap_chunk(chunking),
            true,
        );
        loop {
            // Results decoded ahead are moved over in one copy.
            stream.drain_decoded(&mut out);
            match stream.next_item() {
                Some((_, result)) => out.push(result?),
                None => return Ok(out),
            }
        }
    }

    /// Lazily applies `worker` to every item, yielding each result in input
    /// order as soon as it and those before it are done: Python's
    /// `Pool.imap`. The input is pulled in batches, with a bounded number in
    /// flight, so an endless iterator works (`.take(n)` on the output).
    ///
    /// Each item gets its own `Result`: one failure does not lose the others.
    /// The iterator is an [`ExactSizeIterator`] when the input is one (so
    /// progress bars work), and batches adapt to the task duration unless
    /// [`Imap::chunk_size`] is set.
    pub fn imap<W, I>(&self, worker: W, items: I) -> Imap<'_, W, I::IntoIter>
    where
        W: Worker,
        I: IntoIterator<Item = W::Args>,
    {
        let _ = worker;
        let items = items.into_iter();
        let span = events::call_span(Call::Imap, W::NAME, events::exact_len(items.size_hint()));
        let _in_span = span.enter();
        Imap::new(Stream::new(
            &self.shared,
            self.workers,
            items,
            self.cap_chunk(Chunking::Adaptive(1)),
            true,
        ))
    }

    /// Like [`imap`](Pool::imap), but yields results in the order they
    /// finish: Python's `Pool.imap_unordered`.
    pub fn imap_unordered<W, I>(&self, worker: W, items: I) -> ImapUnordered<'_, W, I::IntoIter>
    where
        W: Worker,
        I: IntoIterator<Item = W::Args>,
    {
        let _ = worker;
        let items = items.into_iter();
        let span = events::call_span(
            Call::ImapUnordered,
            W::NAME,
            events::exact_len(items.size_hint()),
        );
        let _in_span = span.enter();
        ImapUnordered::new(Stream::new(
            &self.shared,
            self.workers,
            items,
            self.cap_chunk(Chunking::Adaptive(1)),
            false,
        ))
    }

    /// Runs one call in a worker process and waits for it: Python's
    /// `Pool.apply`.
    ///
    /// # Errors
    ///
    /// As [`Task::wait`].
    pub fn apply<W: Worker>(&self, worker: W, args: W::Args) -> Result<W::Output> {
        self.submit(worker, args).wait()
    }

    /// Starts one call in a worker process and returns its [`Task`] at once:
    /// Python's `apply_async` / `executor.submit`. Several arguments are
    /// passed as a tuple.
    ///
    /// Errors (closed pool, arguments that cannot be encoded) come out of the
    /// task.
    pub fn submit<W: Worker>(&self, worker: W, args: W::Args) -> Task<W::Output> {
        let _ = worker;
        let (payload, fds) = match codec::take_block_call(args) {
            Ok((head, body)) => (job::Payload::split(head, body), Vec::new()),
            Err(args) => match codec::encode_call::<W>(&args) {
                Ok((payload, fds)) => (payload.into(), fds),
                Err(error) => {
                    let slot = Arc::new(TaskSlot::new());
                    slot.fill(outcome::Reply {
                        first_index: None,
                        count: 1,
                        outcome: Outcome::Local(Some(error)),
                    });
                    return Task::new(slot, Arc::new(Control::new()), W::NAME);
                }
            },
        };
        let slot = Arc::new(TaskSlot::new());
        let control = Arc::new(Control::new());
        let mut job = Job::new(W::NAME, payload, 1, Sink::Task(slot.clone()));
        job.control = Some(control.clone());
        job.retries = self.shared.retries;
        job.panic_retries = self.shared.panic_retries;
        job.fds = Job::fd_table(fds);
        self.shared.queue.push(job);
        Task::new(slot, control, W::NAME)
    }

    /// Stops taking new work; queued and running tasks still finish. New
    /// submissions fail with [`PoolClosed`](ErrorKind::PoolClosed).
    pub fn close(&self) {
        self.shared.queue.close();
    }

    /// Closes the pool, waits for every queued task to finish, and stops and
    /// reaps every worker process.
    pub fn join(&self) {
        self.close();
        let drivers = std::mem::take(&mut *self.drivers.lock().unwrap_or_else(|e| e.into_inner()));
        let stopped = !drivers.is_empty();
        for d in drivers {
            let _ = d.join();
        }
        if stopped {
            trace::events::pool_closed(self.workers);
        }
    }

    /// Stops at once: queued and running tasks fail with
    /// [`Cancelled`](ErrorKind::Cancelled), worker processes are killed and
    /// reaped.
    pub fn terminate(&self) {
        self.shared.queue.terminate();
        for runner in &self.shared.runners {
            runner.kill_if_running(None);
        }
        self.join();
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        self.join();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assert_send_sync<T: Send + Sync>() {}

    #[test]
    fn pool_is_send_and_sync() {
        assert_send_sync::<Pool>();
        assert_send_sync::<Task<u64>>();
    }
}
