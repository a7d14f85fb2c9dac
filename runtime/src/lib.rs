//! The runtime of [multiproc](https://docs.rs/multiproc): everything that runs
//! when a `#[worker]` function is dispatched to a child process.
//!
//! Use it through the `multiproc` facade crate; this crate's API is
//! re-exported there and documented with examples.
#![deny(unsafe_op_in_unsafe_fn)]
#![warn(missing_docs)]

#[cfg(not(target_os = "linux"))]
compile_error!(
    "multiproc supports Linux only for now (it relies on memfd, futex, prctl and SCM_RIGHTS); macOS is planned"
);

mod child;
mod error;
mod fdpass;
mod latency;
mod manager;
#[cfg(feature = "mpi")]
mod mpi;
mod pipe;
mod pool;
mod process;
mod proto;
mod queue;
mod registry;
mod shm;
mod spawn;
mod wire;
mod worker;

pub use error::{CodecSide, Error, ErrorKind, ExitReason, Result};
pub use latency::WakeLatency;
pub use manager::{Manager, SharedList, SharedMap};
pub use pipe::{PipeEnd, pipe};
pub use pool::{
    AsCompleted, Imap, ImapUnordered, Indexed, InitOutcome, Pool, PoolBuilder, Task, as_completed,
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
    pub use crate::child::{entry, test_entry};
    pub use crate::registry::WorkerEntry;
    pub use crate::worker::Worker;
    pub use inventory;

    /// Makes the next pool driver thread that sends a batch panic: for the
    /// test that such a bug fails the work instead of hanging.
    pub fn panic_a_driver() {
        crate::pool::driver::panic_a_driver();
    }
}
