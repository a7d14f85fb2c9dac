//! Memory shared between a pool and its worker processes.
//!
//! Backed by `memfd` (Linux): nothing is left in `/dev/shm` or the temp dir
//! when a process crashes, and the memory is gone with the last mapping.

mod progress;

pub(crate) use progress::{Progress, monotonic_ns as progress_clock};
