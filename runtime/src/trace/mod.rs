//! `tracing` in a pool: what the library itself reports, and the events a
//! task emits in its worker process, forwarded to the caller's subscriber.
//!
//! - [`events`]: the library's events and spans, under the targets
//!   [`POOL`] and [`WORKER`];
//! - [`outbox`]: in a worker process, the subscriber that sends each event
//!   of a task to the parent, one datagram each on the worker's event
//!   socket, without ever blocking the task;
//! - [`inbox`]: in the parent, the reader of that socket, which checks each
//!   record ([`proto::log`](crate::proto::log)) and emits it again into the
//!   dispatcher of the call that sent the item;
//! - [`callsite`]: the callsites those events are emitted at.
//!
//! A library installs no global subscriber in its caller. Events go to the
//! dispatcher that was the default where the work came from: each job
//! carries the caller's [`Context`], and a pool's driver threads take the
//! dispatcher of the thread that built the pool as their default.

pub(crate) mod callsite;
pub(crate) mod events;
pub(crate) mod inbox;
pub(crate) mod outbox;

use tracing::{Dispatch, Span};

/// Target of the events about a pool and its calls.
pub(crate) const POOL: &str = "multiproc::pool";
/// Target of the events about worker processes.
pub(crate) const WORKER: &str = "multiproc::worker";
/// Target of a forwarded event once the process holds as many forwarded
/// callsites as it may ([`callsite::MAX_SITES`]); its own target is then a
/// field.
pub(crate) const TASK: &str = "multiproc::task";

/// Where the events about a job go: the dispatcher that was the default
/// where it was made, and the span it was made in (a `map`'s, say).
#[derive(Clone)]
pub(crate) struct Context {
    pub(crate) dispatch: Dispatch,
    pub(crate) span: Span,
}

impl Context {
    /// The calling thread's default dispatcher and current span.
    pub(crate) fn current() -> Context {
        Context {
            dispatch: tracing::dispatcher::get_default(Dispatch::clone),
            span: Span::current(),
        }
    }

    /// Runs `f` with this context's dispatcher as the default, inside its
    /// span.
    pub(crate) fn scope<R>(&self, f: impl FnOnce() -> R) -> R {
        tracing::dispatcher::with_default(&self.dispatch, || self.span.in_scope(f))
    }
}

/// What the parent knows of a batch that a forwarded event names.
pub(crate) struct Batch<'a> {
    pub(crate) context: &'a Context,
    /// Input position of its first item (`None`: a submitted call).
    pub(crate) first_index: Option<u64>,
    pub(crate) count: u32,
}

impl<'a> Batch<'a> {
    pub(crate) fn of(context: &'a Context, first_index: Option<u64>, count: u32) -> Batch<'a> {
        Batch {
            context,
            first_index,
            count,
        }
    }
}
