//! Memory shared between processes: shared arrays, large immutable
//! arguments, and process-shared locks, events, semaphores and barriers.
//!
//! Backed by `memfd` (Linux): nothing is left in `/dev/shm` or the temp dir
//! when a process crashes, and the memory is gone with the last mapping.
//! `unsafe` in this crate lives here; every block says why it is sound.

mod array;
mod bytes;
mod element;
mod primitives;
mod read;
// Building blocks shared with other modules (the queue); not all of them
// are used by the shm types themselves.
#[allow(dead_code)]
pub(crate) mod segment;
#[allow(dead_code)]
pub(crate) mod sync;

pub use array::{ChunkMut, SharedArray};
pub use bytes::SharedBytes;
pub use element::{Element, IntElement};
pub use primitives::{
    Barrier, BarrierWaitResult, Event, Lock, LockGuard, Semaphore, Value, ValueGuard,
};
#[allow(unused_imports)]
pub(crate) use segment::{Segment, shm_error};
#[allow(unused_imports)]
pub(crate) use sync::{OwnerDied, RawCondvar, RawGuard, RawMutex, lock_recovering};
