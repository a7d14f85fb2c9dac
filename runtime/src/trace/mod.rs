//! `tracing` in a pool: what the library itself reports.
//!
//! - [`events`]: the library's events and spans, under the targets
//!   [`POOL`] and [`WORKER`].
//!
//! A library installs no global subscriber in its caller. Events go to the
//! dispatcher that was the default where the work came from: each job
//! carries the caller's [`Context`], and a pool's driver threads take the
//! dispatcher of the thread that built the pool as their default.

pub(crate) mod events;

use tracing::{Dispatch, Span};

/// Target of the events about a pool and its calls.
pub(crate) const POOL: &str = "multiproc::pool";
/// Target of the events about worker processes.
pub(crate) const WORKER: &str = "multiproc::worker";

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
