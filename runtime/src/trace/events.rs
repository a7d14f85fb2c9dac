//! The events and spans the library emits. Each is one function, so that
//! its target, level and fields are decided in one place:
//!
//! | target | level | event |
//! |---|---|---|
//! | `multiproc::pool` | INFO | pool started, pool closed; the span of each `map`, `imap`, `imap_unordered` |
//! | `multiproc::worker` | DEBUG | worker process started, exited |
//! | `multiproc::worker` | INFO | worker process replaced, recycled (task count or memory), item retried |
//! | `multiproc::worker` | WARN | worker process crashed, failed to start; item timed out; forwarded events dropped |
//! | `multiproc::worker` | ERROR | worker process broke the protocol |
//!
//! Fields: `pid` (the worker process), `worker` (the `#[worker]`
//! function), `item` (the input position, when the item has one),
//! `signal` or `code` (how a process ended) and `reason` (the same, in
//! words). Values are passed as they are: nothing is formatted unless a
//! subscriber wants the event.

use std::time::Duration;

use tracing::{Span, debug, error, info, info_span, warn};

use super::{Context, POOL, WORKER};
use crate::error::ExitReason;

/// A pool of `workers` processes is ready.
pub(crate) fn pool_started(workers: usize) {
    info!(target: POOL, workers, "pool started");
}

/// A pool stopped every worker process.
pub(crate) fn pool_closed(workers: usize) {
    info!(target: POOL, workers, "pool closed");
}

/// Which call a span is for.
#[derive(Clone, Copy)]
pub(crate) enum Call {
    Map,
    Imap,
    ImapUnordered,
}

/// The span of one `map`, `imap` or `imap_unordered` of `worker` over
/// `items` items (when the input says how many).
pub(crate) fn call_span(call: Call, worker: &'static str, items: Option<usize>) -> Span {
    match call {
        Call::Map => info_span!(target: POOL, "map", worker, items),
        Call::Imap => info_span!(target: POOL, "imap", worker, items),
        Call::ImapUnordered => info_span!(target: POOL, "imap_unordered", worker, items),
    }
}

/// The items of an input that says exactly how long it is.
pub(crate) fn exact_len(size_hint: (usize, Option<usize>)) -> Option<usize> {
    match size_hint {
        (lo, Some(hi)) if lo == hi => Some(lo),
        _ => None,
    }
}

/// Worker process `pid` started in slot `slot`, in place of `replaced`
/// (which crashed, broke the protocol or was recycled) if given.
pub(crate) fn worker_started(pid: u32, slot: usize, replaced: Option<u32>) {
    match replaced {
        Some(old) => info!(target: WORKER, pid, slot, replaced = old, "worker process replaced"),
        None => debug!(target: WORKER, pid, slot, "worker process started"),
    }
}

/// A worker process for slot `slot` could not be started.
pub(crate) fn worker_start_failed(slot: usize, error: &crate::error::Error) {
    warn!(target: WORKER, slot, error = %error, "worker process failed to start");
}

/// Worker process `pid` exited when asked to (or was stopped).
pub(crate) fn worker_exited(pid: u32, reason: Option<ExitReason>) {
    let (signal, code) = split(reason);
    debug!(target: WORKER, pid, signal, code, "worker process exited");
}

fn split(reason: Option<ExitReason>) -> (Option<i32>, Option<i32>) {
    match reason {
        Some(ExitReason::Signal(s)) => (Some(s), None),
        Some(ExitReason::Code(c)) => (None, Some(c)),
        _ => (None, None),
    }
}

/// How a worker process ended unasked, and what it was running.
pub(crate) struct Death<'a> {
    pub(crate) pid: u32,
    pub(crate) reason: ExitReason,
    /// It broke the protocol, and was killed for it.
    pub(crate) breach: Option<&'a str>,
    /// Its item overstayed this time limit, and it was killed for it.
    pub(crate) timed_out: Option<Duration>,
    pub(crate) worker: Option<&'a str>,
    pub(crate) item: Option<u64>,
}

/// A worker process ended: killed `on_purpose` (a cancel, the pool's
/// `terminate`), or else as [`worker_died`] says; in the context of the
/// batch it was running, if any.
pub(crate) fn report_death(context: Option<&Context>, d: &Death<'_>, on_purpose: bool) {
    let report = || {
        if on_purpose {
            worker_exited(d.pid, Some(d.reason));
        } else {
            worker_died(d);
        }
    };
    match context {
        Some(c) => c.scope(report),
        None => report(),
    }
}

/// A worker process died unasked: it crashed (WARN), overstayed the task
/// time limit (WARN) or broke the protocol (ERROR).
pub(crate) fn worker_died(d: &Death<'_>) {
    let Death {
        pid,
        reason,
        worker,
        item,
        ..
    } = *d;
    if let Some(what) = d.breach {
        error!(target: WORKER, pid, what, worker, item, "worker process broke the protocol");
    } else if let Some(limit) = d.timed_out {
        let limit_ms = u64::try_from(limit.as_millis()).unwrap_or(u64::MAX);
        warn!(target: WORKER, pid, worker, item, limit_ms, "item timed out");
    } else {
        let (signal, code) = split(Some(reason));
        warn!(
            target: WORKER,
            pid,
            signal,
            code,
            reason = %reason,
            worker,
            item,
            "worker process crashed"
        );
    }
}

/// Item `item` of `worker`, whose process `pid` crashed, runs again;
/// `left` more retries after this one.
pub(crate) fn item_retried(pid: u32, worker: &str, item: Option<u64>, left: u32) {
    info!(target: WORKER, pid, worker, item, retries_left = left, "item retried");
}

/// Worker process `pid` is replaced by a fresh one after `tasks` items:
/// its memory was over `over_memory` (`max_worker_memory`), or else it
/// reached `max_tasks_per_worker`.
pub(crate) fn worker_recycled(pid: u32, tasks: u64, over_memory: Option<u64>) {
    match over_memory {
        Some(limit) => {
            let rss = crate::sys::process::rss_bytes(pid);
            info!(
                target: WORKER,
                pid,
                rss,
                limit,
                "worker process recycled: its memory exceeds max_worker_memory"
            );
        }
        None => info!(
            target: WORKER,
            pid,
            tasks,
            "worker process recycled: it reached max_tasks_per_worker"
        ),
    }
}

/// Worker process `pid` dropped `count` events of its tasks: it made them
/// faster than this process read them.
pub(crate) fn events_dropped(pid: u32, count: u64) {
    warn!(target: WORKER, pid, count, "tracing events of a worker process were dropped");
}
