//! The messages between rank 0 and a worker rank; the first byte of each
//! is its kind:
//!
//! | kind | from | body |
//! |---|---|---|
//! | `OPEN` | 0 | postcard [`Config`] |
//! | `OPENED` | rank | postcard [`Opened`] |
//! | `RUN` | 0 | batch u64, items u32, name length u32, name, items |
//! | `REPLY` | rank | batch u64, offset u32, count u32, status u8, then elapsed u64 and result items, or a postcard `Failure` |
//! | `CLOSE` / `TERMINATE` | 0 | — |
//! | `CLOSED` | rank | — (after every `REPLY` of the closed pool) |
//! | `EXIT` | 0 | — (rank 0's program is ending: finalise and exit) |

use std::time::Duration;

use serde::{Deserialize, Serialize};

pub(super) const OPEN: u8 = 1;
pub(super) const OPENED: u8 = 2;
pub(super) const RUN: u8 = 3;
pub(super) const REPLY: u8 = 4;
pub(super) const CLOSE: u8 = 5;
pub(super) const TERMINATE: u8 = 6;
pub(super) const CLOSED: u8 = 7;
pub(super) const EXIT: u8 = 8;

pub(super) const REPLY_DONE: u8 = 0;
pub(super) const REPLY_FAILED: u8 = 1;
/// Bytes of a `REPLY` before the status-specific part.
pub(super) const REPLY_HEAD: usize = 1 + 8 + 4 + 4 + 1;

/// Pool options that a worker rank applies to its local pool.
#[derive(Serialize, Deserialize)]
pub(super) struct Config {
    /// Worker processes per rank; `0` for the rank's share of its node's CPUs.
    pub(super) workers: u64,
    pub(super) initializer: Option<(String, Vec<u8>)>,
    pub(super) max_tasks_per_worker: Option<u64>,
    pub(super) task_timeout: Option<Duration>,
    pub(super) retries: u32,
    pub(super) panic_retries: u32,
    pub(super) max_worker_rss: Option<u64>,
    pub(super) memory_limit: Option<u64>,
}

/// A worker rank's answer to `OPEN`.
#[derive(Serialize, Deserialize)]
pub(super) enum Opened {
    /// The local pool runs: its size, the host, and what the initializer
    /// returned in its first run (checked by rank 0, which knows the type).
    Ready {
        workers: u64,
        host: String,
        init_output: Option<Vec<u8>>,
    },
    /// The initializer failed (panicked, or its worker is unknown).
    InitializerFailed(String),
    /// The local pool could not be started.
    Failed(String),
}
