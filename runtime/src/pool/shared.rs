//! What a pool's driver threads share with it: the job queue, the
//! options, the initializer, and the runners of its worker slots.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use super::job::JobQueue;
use crate::conn::outcome::Failure;
use crate::conn::runner::Runner;
use crate::error::Result;

/// Checks an initializer's result: `Ok` or the error it reported.
pub(crate) type InitCheck = fn(&'static str, &mut &[u8]) -> Result<()>;

pub(crate) struct Initializer {
    pub(crate) worker: &'static str,
    pub(crate) payload: Vec<u8>,
    pub(crate) fds: Vec<std::os::fd::OwnedFd>,
    pub(crate) check: InitCheck,
}

/// What the driver threads share with the pool.
pub(crate) struct PoolShared {
    pub(crate) queue: JobQueue,
    pub(crate) initializer: Option<Initializer>,
    pub(crate) max_tasks_per_worker: Option<u64>,
    pub(crate) test_name: Option<String>,
    pub(crate) task_timeout: Option<Duration>,
    pub(crate) retries: u32,
    pub(crate) panic_retries: u32,
    pub(crate) max_worker_rss: Option<u64>,
    /// The hard cap on each worker process's private memory, in bytes.
    pub(crate) memory_limit: Option<u64>,
    pub(crate) runners: Vec<Arc<Runner>>,
    pub(crate) slots_alive: AtomicUsize,
    /// Whether `map` and `imap` may send dense batches (see
    /// [`codec::dense_width`](crate::codec::dense_width)): not over MPI, whose messages carry framed
    /// items only.
    pub(crate) dense_batches: bool,
    /// Whether the `tracing` events of tasks are forwarded from the worker
    /// processes (see [`crate::trace`]).
    pub(crate) forward_tracing: bool,
}

impl PoolShared {
    /// Called by an idle driver: splits the batch with the most items left
    /// on another worker. Returns whether any other worker is busy.
    pub(crate) fn steal_for(&self, me: &Runner) -> bool {
        let mut best: Option<(&Arc<Runner>, u64)> = None;
        let mut busy = false;
        for r in &self.runners {
            if std::ptr::eq(Arc::as_ptr(r), me) {
                continue;
            }
            busy |= r.is_busy();
            let left = r.stealable();
            if left >= 2 && best.is_none_or(|(_, b)| left > b) {
                best = Some((r, left));
            }
        }
        if let Some((r, _)) = best {
            r.steal_half(me.id);
        }
        busy
    }

    /// A worker slot gave up restarting its process.
    pub(crate) fn slot_failed(&self, failure: Failure) {
        if self.slots_alive.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.queue.set_fatal(failure);
        }
    }
}
