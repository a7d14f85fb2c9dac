//! The runtime of [multiproc](https://docs.rs/multiproc): everything that runs
//! when a `#[worker]` function is dispatched to a child process.
//!
//! Use it through the `multiproc` facade crate; this crate's API is
//! re-exported there and documented with examples.
//!
//! It reports through `tracing` under the targets `multiproc::pool` and
//! `multiproc::worker`, installs no subscriber in the caller, and forwards
//! the events of tasks from their worker processes (see
//! [`PoolBuilder::forward_tracing`]).
#![deny(unsafe_op_in_unsafe_fn)]
#![warn(missing_docs)]

#[cfg(windows)]
compile_error!(
    "multiproc does not support Windows: its workers are this executable re-run with an inherited Unix socket, and it passes descriptors over it (SCM_RIGHTS) and shares memory and locks through POSIX shared memory and futex-like waits, none of which Windows has"
);
#[cfg(not(any(
    windows,
    target_os = "linux",
    target_os = "macos",
    target_os = "freebsd"
)))]
compile_error!(
    "multiproc supports Linux, macOS and FreeBSD; this target has no back end in `sys/` yet"
);

mod child;
mod codec;
mod conn;
mod error;
mod exec;
mod guard;
mod latency;
mod manager;
mod mem;
#[cfg(feature = "mpi")]
mod mpi;
mod pipe;
mod pool;
mod process;
mod proto;
mod queue;
mod registry;
mod shm;
mod sys;
mod trace;
mod worker;

pub use error::{CodecSide, Error, ErrorKind, ExitReason, Result};
pub use latency::WakeLatency;
pub use manager::{Manager, SharedList, SharedMap};
pub use pipe::{PipeEnd, pipe};
pub use pool::{
    AsCompleted, AsCompletedStream, Imap, ImapStream, ImapUnordered, ImapUnorderedStream, Indexed,
    InitOutcome, Pool, PoolBuilder, Task, as_completed,
};
pub use process::Process;
pub use queue::{DEFAULT_BUFFER_BYTES, Queue};
pub use shm::{
    Barrier, BarrierWaitResult, ChunkMut, Element, Event, IntElement, Lock, LockGuard, Semaphore,
    SharedArray, SharedBytes, Value, ValueGuard,
};
pub use worker::Worker;

// Not public API. Used by generated code.
#[doc(hidden)]
pub mod __private {
    pub use crate::child::test_entry;

    /// Called by `#[entry]` before anything else in `main`.
    ///
    /// In a worker process this never returns: it serves tasks, then
    /// exits. Under an MPI launcher, ranks other than 0 serve pools and
    /// exit here too. In the parent it records that the guard is in place
    /// and returns.
    pub fn entry() {
        crate::child::entry();
        #[cfg(feature = "mpi")]
        crate::mpi::entry();
    }
    pub use crate::registry::WorkerEntry;
    pub use crate::worker::Worker;
    pub use inventory;

    /// Makes the next pool driver thread that sends a batch panic: for the
    /// test that such a bug fails the work instead of hanging.
    pub fn panic_a_driver() {
        crate::pool::driver::panic_a_driver();
    }
}
