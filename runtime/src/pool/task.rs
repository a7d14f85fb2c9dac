//! [`Task`]: the handle of one submitted call, and [`as_completed`] with
//! its stream.

use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use serde::de::DeserializeOwned;

use crate::conn::decode::decode_single;
use crate::conn::outcome::{Failure, Outcome, Reply};
use crate::conn::runner::Runner;
use crate::conn::slot::{TaskSlot, WakingReceiver, waking_channel};
use crate::error::Result;

const QUEUED: u8 = 0;
const RUNNING: u8 = 1;
const FINISHED: u8 = 2;
const SETTLED: u8 = 3; // cancelled or timed out: the result is already decided

/// Cancel state of a submitted task, shared with the driver that runs it.
pub(crate) struct Control {
    state: AtomicU8,
    batch: AtomicU64,
    runner: Mutex<Option<Arc<Runner>>>,
}

impl Control {
    pub(crate) fn new() -> Control {
        Control {
            state: AtomicU8::new(QUEUED),
            batch: AtomicU64::new(0),
            runner: Mutex::new(None),
        }
    }

    /// Called by the driver when it sends the task; `false` if it was
    /// cancelled meanwhile.
    pub(crate) fn start(&self, batch: u64, runner: &Arc<Runner>) -> bool {
        self.batch.store(batch, Ordering::Relaxed);
        *self.runner.lock().unwrap_or_else(|e| e.into_inner()) = Some(runner.clone());
        self.state
            .compare_exchange(QUEUED, RUNNING, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    }

    /// Called by the driver when the child answered.
    pub(crate) fn finish(&self) {
        let _ = self
            .state
            .compare_exchange(RUNNING, FINISHED, Ordering::AcqRel, Ordering::Acquire);
        *self.runner.lock().unwrap_or_else(|e| e.into_inner()) = None;
    }

    /// Called after a crash to make the task runnable again.
    pub(crate) fn requeue(&self) {
        let _ = self
            .state
            .compare_exchange(RUNNING, QUEUED, Ordering::AcqRel, Ordering::Acquire);
    }

    pub(crate) fn is_settled(&self) -> bool {
        self.state.load(Ordering::Acquire) == SETTLED
    }

    /// Settles the task with `failure` unless it already finished; kills the
    /// worker if it is running the task. Returns whether it settled it.
    fn settle(&self) -> bool {
        let mut cur = self.state.load(Ordering::Acquire);
        loop {
            if cur == FINISHED || cur == SETTLED {
                return false;
            }
            match self
                .state
                .compare_exchange(cur, SETTLED, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => break,
                Err(actual) => cur = actual,
            }
        }
        if cur == RUNNING {
            let runner = self
                .runner
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone();
            if let Some(runner) = runner {
                runner.kill_if_running(Some(self.batch.load(Ordering::Relaxed)));
            }
        }
        true
    }
}

/// The handle of one call started with [`Pool::submit`](crate::Pool::submit):
/// Python's `AsyncResult` / `concurrent.futures.Future`.
///
/// Wait for it with [`wait`](Task::wait) or
/// [`wait_timeout`](Task::wait_timeout), poll it with
/// [`is_finished`](Task::is_finished), stop it with
/// [`cancel`](Task::cancel), or `.await` it: `Task` is a [`Future`] that
/// never blocks the executor (the pool's driver thread wakes it).
///
/// Dropping a `Task` detaches it: the call runs to the end and its result
/// is discarded. A task made with [`cancel_on_drop`](Task::cancel_on_drop)
/// is cancelled instead, as async code expects of a future it drops (one
/// that lost a `select!`, or that `tokio::time::timeout` gave up on).
#[must_use = "a Task does nothing unless you wait for it or await it; drop it to discard the result"]
pub struct Task<R> {
    slot: Arc<TaskSlot>,
    control: Arc<Control>,
    worker: &'static str,
    /// Dropping it unfinished cancels the call.
    cancel_on_drop: bool,
    _output: PhantomData<fn() -> R>,
}

impl<R> std::fmt::Debug for Task<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Task")
            .field("worker", &self.worker)
            .field("finished", &self.slot.is_done())
            .field("cancel_on_drop", &self.cancel_on_drop)
            .finish()
    }
}

impl<R> Task<R> {
    /// Settles the call as cancelled unless it finished: see
    /// [`cancel`](Task::cancel).
    fn settle_cancelled(&self) -> bool {
        if self.control.settle() {
            self.slot.fill(Reply {
                first_index: None,
                count: 1,
                outcome: Outcome::Failed(Failure::Cancelled),
            });
            true
        } else {
            false
        }
    }
}

impl<R> Drop for Task<R> {
    fn drop(&mut self) {
        if self.cancel_on_drop && !self.slot.is_done() {
            self.settle_cancelled();
        }
    }
}

impl<R: DeserializeOwned + 'static> Task<R> {
    pub(crate) fn new(slot: Arc<TaskSlot>, control: Arc<Control>, worker: &'static str) -> Task<R> {
        Task {
            slot,
            control,
            worker,
            cancel_on_drop: false,
            _output: PhantomData,
        }
    }

    /// The same task, but cancelled if it is dropped before it finishes:
    /// a queued call is removed from the queue, and a running one has its
    /// worker process killed (the pool starts a new one), as
    /// [`cancel`](Task::cancel) does.
    ///
    /// Without it, dropping a task detaches it: the call runs to the end
    /// and its result is discarded. Use it where dropping means "no longer
    /// wanted": a task awaited under `tokio::time::timeout` or in a
    /// `select!`, or the tasks still in an [`as_completed`] when it is
    /// dropped.
    ///
    /// # Example
    ///
    /// ```no_run
    /// use multiproc_runtime::{Pool, Result, Worker, as_completed};
    ///
    /// // `solve` is a `#[worker] fn solve(strategy: u64) -> u64`.
    /// fn fastest(pool: &Pool, solve: impl Worker<Args = u64, Output = u64>) -> Option<Result<u64>> {
    ///     let tasks = (0..4).map(|strategy| pool.submit(solve, strategy).cancel_on_drop());
    ///     let (_, first) = as_completed(tasks).next()?;
    ///     // Returning drops the other three: their worker processes are
    ///     // killed, and the pool is free at once.
    ///     Some(first)
    /// }
    /// ```
    pub fn cancel_on_drop(mut self) -> Task<R> {
        self.cancel_on_drop = true;
        self
    }

    /// Blocks until the call finishes and returns its result.
    ///
    /// # Errors
    ///
    /// The call's failure: [`Panic`](crate::ErrorKind::Panic),
    /// [`WorkerDied`](crate::ErrorKind::WorkerDied),
    /// [`Cancelled`](crate::ErrorKind::Cancelled),
    /// [`Codec`](crate::ErrorKind::Codec), ...
    pub fn wait(self) -> Result<R> {
        let reply = self.slot.wait(None).expect("a filled slot has a reply");
        decode_single(self.worker, reply)
    }

    /// Like [`wait`](Task::wait), but gives up after `timeout`: the task is
    /// then cancelled — removed from the queue, or, if it is running, its
    /// worker process is killed and replaced — and the result is a
    /// [`Timeout`](crate::ErrorKind::Timeout) error.
    ///
    /// # Errors
    ///
    /// As [`wait`](Task::wait), plus `Timeout`.
    pub fn wait_timeout(self, timeout: Duration) -> Result<R> {
        let deadline = Instant::now().checked_add(timeout);
        if let Some(reply) = self.slot.wait(deadline) {
            return decode_single(self.worker, reply);
        }
        if self.control.settle() {
            self.slot.fill(Reply {
                first_index: None,
                count: 1,
                outcome: Outcome::Failed(Failure::Timeout(timeout)),
            });
        }
        let reply = self.slot.wait(None).expect("a filled slot has a reply");
        decode_single(self.worker, reply)
    }

    /// `true` once the result is there (or the task failed or was cancelled).
    pub fn is_finished(&self) -> bool {
        self.slot.is_done()
    }

    /// Cancels the call. A queued call is removed from the queue; a running
    /// one has its worker process killed (the pool starts a new one). Waiting
    /// on the task then gives a [`Cancelled`](crate::ErrorKind::Cancelled)
    /// error.
    ///
    /// Returns `false` if the call had already finished.
    pub fn cancel(&self) -> bool {
        self.settle_cancelled()
    }
}

impl<R: DeserializeOwned + 'static> Future for Task<R> {
    type Output = Result<R>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<R>> {
        let this = self.get_mut();
        match this.slot.poll_reply(cx.waker()) {
            Some(reply) => Poll::Ready(decode_single(this.worker, reply)),
            None => Poll::Pending,
        }
    }
}

/// Yields the results of `tasks` as they finish, each with the position of
/// its task in `tasks`: Python's `concurrent.futures.as_completed`.
///
/// ```ignore
/// let tasks: Vec<_> = numbers.iter().map(|&n| pool.submit(factorize, n)).collect();
/// for (i, factors) in multiproc::as_completed(tasks) {
///     println!("{} = {:?}", numbers[i], factors?);
/// }
/// ```
pub fn as_completed<R, I>(tasks: I) -> AsCompleted<R>
where
    R: DeserializeOwned + 'static,
    I: IntoIterator<Item = Task<R>>,
{
    let (tx, rx) = waking_channel();
    let tasks: Vec<Option<Task<R>>> = tasks
        .into_iter()
        .enumerate()
        .map(|(i, t)| {
            t.slot.listen(tx.clone(), i);
            Some(t)
        })
        .collect();
    AsCompleted {
        remaining: tasks.len(),
        tasks,
        rx,
    }
}

/// Iterator returned by [`as_completed`]: `(position, result)` in
/// completion order.
pub struct AsCompleted<R> {
    tasks: Vec<Option<Task<R>>>,
    rx: WakingReceiver<usize>,
    remaining: usize,
}

impl<R> std::fmt::Debug for AsCompleted<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AsCompleted")
            .field("remaining", &self.remaining)
            .finish()
    }
}

impl<R: DeserializeOwned + 'static> Iterator for AsCompleted<R> {
    type Item = (usize, Result<R>);

    fn next(&mut self) -> Option<(usize, Result<R>)> {
        if self.remaining == 0 {
            return None;
        }
        let i = self.rx.recv().ok()?;
        self.finished(i)
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (self.remaining, Some(self.remaining))
    }
}

impl<R: DeserializeOwned + 'static> ExactSizeIterator for AsCompleted<R> {}

impl<R: DeserializeOwned + 'static> AsCompleted<R> {
    /// The result of the task at `i`, whose slot is filled.
    fn finished(&mut self, i: usize) -> Option<(usize, Result<R>)> {
        self.remaining -= 1;
        let task = self.tasks[i].take()?;
        // Filled before its listener was told: this does not block.
        Some((i, task.wait()))
    }

    /// The same results as a [`Stream`](futures_core::Stream), for async
    /// code: a task that awaits the next one is woken by the pool's driver
    /// threads when a call finishes, and the thread it runs on is never
    /// blocked. The stream goes on from where the iterator is.
    ///
    /// # Example
    ///
    /// ```no_run
    /// use futures_util::StreamExt;
    /// use multiproc_runtime::{Pool, Result, Worker};
    ///
    /// // `square` is a `#[worker] fn square(x: u64) -> u64`.
    /// async fn squares(
    ///     pool: &Pool,
    ///     square: impl Worker<Args = u64, Output = u64>,
    /// ) -> Result<Vec<u64>> {
    ///     let tasks: Vec<_> = (0..10).map(|x| pool.submit(square, x)).collect();
    ///     let mut done = multiproc_runtime::as_completed(tasks).into_stream();
    ///     let mut squares = vec![0; 10];
    ///     while let Some((i, square)) = done.next().await {
    ///         squares[i] = square?;
    ///     }
    ///     Ok(squares)
    /// }
    /// ```
    pub fn into_stream(self) -> AsCompletedStream<R> {
        AsCompletedStream {
            inner: self,
            ended: false,
        }
    }
}

/// Stream returned by [`AsCompleted::into_stream`]: `(position, result)`
/// in completion order; awaiting the next one never blocks the thread.
///
/// Dropping it drops the tasks not yielded yet: they run on (detached),
/// unless they were made with [`Task::cancel_on_drop`].
///
/// # Example
///
/// ```no_run
/// use futures_util::StreamExt;
/// use multiproc_runtime::{Pool, Worker};
///
/// // `square` is a `#[worker] fn square(x: u64) -> u64`.
/// async fn first_square(
///     pool: &Pool,
///     square: impl Worker<Args = u64, Output = u64>,
/// ) -> Option<u64> {
///     let tasks = [pool.submit(square, 3), pool.submit(square, 4)];
///     let (_, first) = multiproc_runtime::as_completed(tasks).into_stream().next().await?;
///     first.ok()
/// }
/// ```
#[must_use = "streams are lazy: nothing happens until you poll"]
pub struct AsCompletedStream<R> {
    inner: AsCompleted<R>,
    /// `None` was yielded (see `FusedStream`).
    ended: bool,
}

impl<R> std::fmt::Debug for AsCompletedStream<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AsCompletedStream")
            .field("remaining", &self.inner.remaining)
            .finish()
    }
}

impl<R: DeserializeOwned + 'static> futures_core::Stream for AsCompletedStream<R> {
    type Item = (usize, Result<R>);

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        let item = if this.inner.remaining == 0 {
            None
        } else {
            match std::task::ready!(this.inner.rx.poll_recv(cx.waker())) {
                Some(i) => this.inner.finished(i),
                None => None,
            }
        };
        this.ended = item.is_none();
        Poll::Ready(item)
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (self.inner.remaining, Some(self.inner.remaining))
    }
}

impl<R: DeserializeOwned + 'static> futures_core::FusedStream for AsCompletedStream<R> {
    fn is_terminated(&self) -> bool {
        self.ended
    }
}
