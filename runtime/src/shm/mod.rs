//! Memory shared between a pool and its worker processes.
//!
//! Backed by `memfd` (Linux): nothing is left in `/dev/shm` or the temp dir
//! when a process crashes, and the memory is gone with the last mapping.

mod progress;
// Building blocks shared with other modules (the queue); not all of them
// are used by the shm types themselves.
#[allow(dead_code)]
pub(crate) mod segment;
#[allow(dead_code)]
pub(crate) mod sync;

pub(crate) use progress::{Progress, monotonic_ns as progress_clock};
#[allow(unused_imports)]
pub(crate) use segment::Segment;
#[allow(unused_imports)]
pub(crate) use sync::{OwnerDied, RawCondvar, RawGuard, RawMutex};
