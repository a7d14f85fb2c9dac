//! What came back for a batch: its results' bytes, or the failure that
//! applies to every item of it.

use crate::error::{Error, ErrorKind, ExitReason};
use crate::proto::{AbortNote, BatchFailure};

/// What came back for a job (or for a part of it, after a split).
pub(crate) struct Reply {
    pub(crate) first_index: Option<u64>,
    pub(crate) count: u32,
    pub(crate) outcome: Outcome,
}

pub(crate) enum Outcome {
    /// The child ran the batch: its results start at `data[start..]`,
    /// dense or as framed items.
    Done {
        data: ReplyBytes,
        start: usize,
        elapsed_ns: u64,
        dense: bool,
    },
    /// The results were decoded into a `map`'s output by the driver
    /// (`Sink::Collect`): `bytes` of them, and the buffer they came in,
    /// for the caller to encode into again.
    Stored {
        elapsed_ns: u64,
        bytes: usize,
        data: Option<Vec<u8>>,
    },
    /// Every item of the batch failed the same way.
    Failed(Failure),
    /// One item that failed in the parent before it was sent.
    Local(Option<Error>),
}

/// The bytes of a `DONE` frame: owned, or still in the worker's reply
/// arena (a large result of a submitted task, decoded from there).
#[derive(Debug)]
pub(crate) enum ReplyBytes {
    Owned(Vec<u8>),
    Shared(crate::proto::arena::Lease),
}

impl ReplyBytes {
    /// The buffer, if it is one of this process's own (to reuse).
    pub(crate) fn into_vec(self) -> Option<Vec<u8>> {
        match self {
            ReplyBytes::Owned(v) => Some(v),
            ReplyBytes::Shared(_) => None,
        }
    }
}

impl std::ops::Deref for ReplyBytes {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        match self {
            ReplyBytes::Owned(v) => v,
            ReplyBytes::Shared(lease) => lease,
        }
    }
}

impl From<Vec<u8>> for ReplyBytes {
    fn from(v: Vec<u8>) -> ReplyBytes {
        ReplyBytes::Owned(v)
    }
}

/// A failure that applies to every item of a batch.
#[derive(Clone, Debug)]
#[cfg_attr(feature = "mpi", derive(serde::Serialize, serde::Deserialize))]
pub(crate) enum Failure {
    Died {
        pid: u32,
        reason: ExitReason,
    },
    /// It died of an allocation that failed (see
    /// [`ErrorKind::OutOfMemory`]).
    OutOfMemory {
        pid: u32,
        limit: Option<u64>,
        requested: Option<u64>,
        in_use: Option<u64>,
    },
    Cancelled,
    Timeout(std::time::Duration),
    UnknownWorker {
        name: String,
        known: Vec<String>,
    },
    Protocol(String),
    Closed,
    Spawn(String),
}

impl Failure {
    /// The error for one item of a failed batch.
    pub(crate) fn to_error(&self, worker: &str, index: Option<u64>) -> Error {
        let worker = worker.to_owned();
        Error::new(match self {
            Failure::Died { pid, reason } => ErrorKind::WorkerDied {
                worker,
                index,
                pid: *pid,
                reason: *reason,
            },
            Failure::OutOfMemory {
                pid,
                limit,
                requested,
                in_use,
            } => ErrorKind::OutOfMemory {
                worker,
                index,
                pid: *pid,
                limit: *limit,
                requested: *requested,
                in_use: *in_use,
            },
            Failure::Cancelled => ErrorKind::Cancelled { worker, index },
            Failure::Timeout(after) => ErrorKind::Timeout {
                worker,
                index,
                after: *after,
            },
            Failure::UnknownWorker { name, known } => ErrorKind::UnknownWorker {
                name: name.clone(),
                known: known.clone(),
            },
            Failure::Protocol(msg) => ErrorKind::Protocol(msg.clone()),
            Failure::Closed => ErrorKind::PoolClosed,
            Failure::Spawn(msg) => ErrorKind::Spawn(std::io::Error::other(msg.clone())),
        })
    }
}

impl Failure {
    /// How a worker process that died of `reason` failed the item it ran:
    /// [`Failure::OutOfMemory`] if it died by `SIGABRT` and said, in its
    /// progress page (`note`) or on its stderr (`requested`, the size in
    /// Rust's report), that an allocation had failed; else
    /// [`Failure::Died`]. What it said is its own word, believed of an
    /// abort only.
    pub(crate) fn of_death(
        pid: u32,
        reason: ExitReason,
        note: Option<AbortNote>,
        requested: Option<u64>,
        limit: Option<u64>,
    ) -> Failure {
        let said = note.is_some_and(|n| n.alloc_failed) || requested.is_some();
        if reason == ExitReason::Signal(libc::SIGABRT) && said {
            Failure::OutOfMemory {
                pid,
                limit,
                requested,
                in_use: note.and_then(|n| n.in_use),
            }
        } else {
            Failure::Died { pid, reason }
        }
    }

    /// The failure of the item a worker process was running when it broke
    /// the protocol.
    pub(crate) fn breach(pid: u32, what: &str) -> Failure {
        Failure::Protocol(format!(
            "worker process {pid} broke the protocol and was killed: {what}"
        ))
    }
}

impl From<BatchFailure> for Failure {
    fn from(failure: BatchFailure) -> Failure {
        match failure {
            BatchFailure::UnknownWorker { name, known } => Failure::UnknownWorker { name, known },
            BatchFailure::Malformed(msg) => Failure::Protocol(msg),
        }
    }
}
