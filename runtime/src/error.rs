//! The one error type of the library.

use std::fmt;
use std::io;

/// A specialised `Result` whose error is [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong when running work in child processes.
///
/// Every failure a caller can meet has its own [`ErrorKind`], so that a panic in
/// a task, a crashed worker process, a timeout or a missing `#[entry]` guard can
/// be told apart with a `match` on [`Error::kind`] or with the `is_*` helpers.
///
/// The error is one pointer wide, so `Result<T, Error>` stays small.
pub struct Error {
    kind: Box<ErrorKind>,
}

/// How a worker process ended, as reported in [`ErrorKind::WorkerDied`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "mpi", derive(serde::Serialize, serde::Deserialize))]
pub enum ExitReason {
    /// The process exited with this code (for example `std::process::exit(3)`).
    Code(i32),
    /// The process was killed by this signal number (for example `9` for
    /// `SIGKILL`, `6` for `SIGABRT` after `abort()`, `11` for `SIGSEGV`).
    Signal(i32),
    /// The status could not be determined.
    Unknown,
}

impl fmt::Display for ExitReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            ExitReason::Code(code) => write!(f, "exit code {code}"),
            ExitReason::Signal(sig) => write!(f, "signal {sig} ({})", signal_name(sig)),
            ExitReason::Unknown => f.write_str("unknown status"),
        }
    }
}

fn signal_name(sig: i32) -> &'static str {
    match sig {
        libc::SIGHUP => "SIGHUP",
        libc::SIGINT => "SIGINT",
        libc::SIGQUIT => "SIGQUIT",
        libc::SIGILL => "SIGILL",
        libc::SIGTRAP => "SIGTRAP",
        libc::SIGABRT => "SIGABRT",
        libc::SIGBUS => "SIGBUS",
        libc::SIGFPE => "SIGFPE",
        libc::SIGKILL => "SIGKILL",
        libc::SIGSEGV => "SIGSEGV",
        libc::SIGPIPE => "SIGPIPE",
        libc::SIGALRM => "SIGALRM",
        libc::SIGTERM => "SIGTERM",
        _ => "other signal",
    }
}

/// Which side of the wire failed to encode or decode a value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CodecSide {
    /// The parent could not encode the arguments of a task.
    EncodeArgs,
    /// The child could not decode the arguments it received.
    DecodeArgs,
    /// The child could not encode the value the worker returned.
    EncodeOutput,
    /// The parent could not decode the value the child sent back.
    DecodeOutput,
}

impl fmt::Display for CodecSide {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            CodecSide::EncodeArgs => "encode the arguments (in the parent)",
            CodecSide::DecodeArgs => "decode the arguments (in the child)",
            CodecSide::EncodeOutput => "encode the result (in the child)",
            CodecSide::DecodeOutput => "decode the result (in the parent)",
        })
    }
}

/// The kinds of [`Error`].
///
/// New kinds may be added in minor releases, so a `match` needs a `_` arm.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ErrorKind {
    /// The task panicked inside the worker process. The worker survived and
    /// keeps serving; other tasks are unaffected.
    #[error("task {} of worker `{worker}` panicked at {}: {message}", index_text(*.index), .location.as_deref().unwrap_or("an unknown location"))]
    Panic {
        /// Name of the worker function (`module::path::name`).
        worker: String,
        /// Position of the item in the input of `map`/`imap`, `None` for
        /// `submit`/`apply`.
        index: Option<u64>,
        /// The panic payload, if it was a string.
        message: String,
        /// `file:line:column` where the panic happened.
        location: Option<String>,
    },
    /// The worker process died (crash, `abort()`, `exit()`, signal) while it
    /// ran this task. The pool replaced it.
    #[error("worker process {pid} running task {} of `{worker}` died with {reason}", index_text(*.index))]
    WorkerDied {
        /// Name of the worker function the process was running.
        worker: String,
        /// Position of the item in the input, `None` for `submit`/`apply`.
        index: Option<u64>,
        /// Process id of the dead worker.
        pid: u32,
        /// Exit code or signal.
        reason: ExitReason,
    },
    /// The task did not finish in time; the process running it was killed.
    #[error("task {} of worker `{worker}` timed out after {after:?}", index_text(*.index))]
    Timeout {
        /// Name of the worker function.
        worker: String,
        /// Position of the item in the input, `None` for `submit`/`apply`.
        index: Option<u64>,
        /// The time limit that expired.
        after: std::time::Duration,
    },
    /// The task was cancelled (by [`Task::cancel`](crate::Task::cancel) or
    /// because the pool was terminated) before it produced a result.
    #[error("task {} of worker `{worker}` was cancelled", index_text(*.index))]
    Cancelled {
        /// Name of the worker function.
        worker: String,
        /// Position of the item in the input, `None` for `submit`/`apply`.
        index: Option<u64>,
    },
    /// A value could not be encoded or decoded with serde + postcard.
    #[error("could not {side} of worker `{worker}` (type `{type_name}`) for task {}: {message}", index_text(*.index))]
    Codec {
        /// Which side failed.
        side: CodecSide,
        /// Name of the worker function.
        worker: String,
        /// Position of the item in the input, if known.
        index: Option<u64>,
        /// The Rust type that failed.
        type_name: &'static str,
        /// What serde or postcard said.
        message: String,
    },
    /// The child process has no worker of this name. This happens when the
    /// child is a different build of the program, or when the worker is
    /// compiled out with `#[cfg]` in the child.
    #[error("the child process knows no worker named `{name}`; it knows: {}", known.join(", "))]
    UnknownWorker {
        /// The name that was asked for.
        name: String,
        /// Every worker the child knows.
        known: Vec<String>,
    },
    /// Two `#[worker]` functions registered the same name.
    #[error(
        "two #[worker] functions are registered as `{name}`; give one of them #[worker(name = \"...\")]"
    )]
    DuplicateWorker {
        /// The duplicated name.
        name: String,
    },
    /// A pool or process was started in a program whose `main` lacks
    /// `#[multiproc::entry]` (or a test without `#[multiproc::test]`).
    /// Without the guard a child would run `main` again.
    #[error(
        "multiproc needs #[multiproc::entry] on `main` (or #[multiproc::test] on the test) before it can start worker processes"
    )]
    GuardMissing,
    /// A worker process could not be started.
    #[error("could not start a worker process: {0}")]
    Spawn(#[source] io::Error),
    /// The pool's initializer failed in a worker process.
    #[error("the pool initializer failed: {0}")]
    Initializer(#[source] Error),
    /// The pool was closed or terminated and takes no more work.
    #[error("the pool is closed and accepts no more tasks")]
    PoolClosed,
    /// The other end of a pipe or queue is gone (closed, or its process
    /// died).
    #[error("the other end of the {what} is closed or its process died")]
    Disconnected {
        /// `"pipe"` or `"queue"`.
        what: &'static str,
    },
    /// A message on a pipe or queue could not be encoded or decoded.
    #[error("could not {} a message of type `{type_name}` on a {what}: {message}", if *.encode { "encode" } else { "decode" })]
    MessageCodec {
        /// `"pipe"` or `"queue"`.
        what: &'static str,
        /// `true` when sending, `false` when receiving.
        encode: bool,
        /// The Rust type of the message.
        type_name: &'static str,
        /// What serde or postcard said.
        message: String,
    },
    /// An operating-system error on a pipe, queue or shared object, or when
    /// asking for a [`WakeLatency`](crate::WakeLatency) limit.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// The previous holder of a process-shared lock (a
    /// [`Lock`](crate::Lock) or [`Value`](crate::Value)) died while holding
    /// it. The lock has been made consistent and released: the next
    /// `lock()` succeeds. The data it protected may be half-updated.
    #[error(
        "the previous holder of the lock died while holding it; the lock works again, but the data it guarded may be half-updated"
    )]
    OwnerDied,
    /// A [`Barrier`](crate::Barrier) is broken: a party timed out or called
    /// [`abort`](crate::Barrier::abort). Every waiter gets this error until
    /// [`reset`](crate::Barrier::reset).
    #[error("the barrier is broken (a party timed out or aborted it)")]
    BarrierBroken,
    /// Shared memory could not be created, mapped or received (out of
    /// memory, too many descriptors, a handle that is not what it claims).
    #[error("shared memory: {0}")]
    SharedMemory(#[source] io::Error),
    /// Another process broke the protocol of a channel it shares with this
    /// one: a worker process sent a frame that is forged, short, oversized,
    /// unsolicited or out of order, left a frame half-written, or scribbled
    /// or resized its progress page or arenas; a peer of a
    /// [`PipeEnd`](crate::PipeEnd) or a [`Manager`](crate::Manager) sent a
    /// message that is not one. The message names the process (its pid,
    /// where known) and what it broke. A pool kills and replaces such a
    /// worker and fails the item it was running; the breach counts as a
    /// crash for [`retries`](crate::PoolBuilder::retries).
    #[error("protocol error: {0}")]
    Protocol(String),
    /// Shared state that another process can write failed validation: the
    /// header of a [`Queue`](crate::Queue)'s ring, a
    /// [`Barrier`](crate::Barrier)'s counters, or a
    /// [`SharedArray`](crate::SharedArray)'s lease table hold values no
    /// correct process writes. (A lock's word that names no live holder is
    /// taken over and reported as [`OwnerDied`](ErrorKind::OwnerDied).) The operation
    /// fails and this process is unharmed; the structure is unusable until
    /// whoever corrupted it is dealt with. The message says which field.
    #[error("corrupted shared state: {0}")]
    Corrupted(String),
    /// An MPI pool cannot be used: the program was not started by an MPI
    /// launcher, the job has no worker ranks, the MPI library lacks thread
    /// support, another MPI pool is open, or a rank refused the pool.
    #[cfg(feature = "mpi")]
    #[error("MPI: {0}")]
    Mpi(String),
}

fn index_text(index: Option<u64>) -> String {
    match index {
        Some(i) => format!("#{i}"),
        None => "(submitted)".to_owned(),
    }
}

impl Error {
    /// Wraps a kind.
    pub fn new(kind: ErrorKind) -> Error {
        Error {
            kind: Box::new(kind),
        }
    }

    /// What went wrong.
    pub fn kind(&self) -> &ErrorKind {
        &self.kind
    }

    /// Unwraps the kind.
    pub fn into_kind(self) -> ErrorKind {
        *self.kind
    }

    /// `true` if the task panicked.
    pub fn is_panic(&self) -> bool {
        matches!(*self.kind, ErrorKind::Panic { .. })
    }

    /// `true` if the worker process died while running the task.
    pub fn is_worker_died(&self) -> bool {
        matches!(*self.kind, ErrorKind::WorkerDied { .. })
    }

    /// `true` if the task timed out.
    pub fn is_timeout(&self) -> bool {
        matches!(*self.kind, ErrorKind::Timeout { .. })
    }

    /// `true` if the task was cancelled.
    pub fn is_cancelled(&self) -> bool {
        matches!(*self.kind, ErrorKind::Cancelled { .. })
    }

    /// `true` if a process-shared lock's previous holder died holding it
    /// ([`ErrorKind::OwnerDied`]).
    pub fn is_owner_died(&self) -> bool {
        matches!(*self.kind, ErrorKind::OwnerDied)
    }

    /// `true` if another process broke a channel's protocol
    /// ([`ErrorKind::Protocol`]).
    pub fn is_protocol(&self) -> bool {
        matches!(*self.kind, ErrorKind::Protocol(_))
    }

    /// `true` if shared state written by another process failed validation
    /// ([`ErrorKind::Corrupted`]).
    pub fn is_corrupted(&self) -> bool {
        matches!(*self.kind, ErrorKind::Corrupted(_))
    }

    /// `true` if a [`Barrier`](crate::Barrier) is broken
    /// ([`ErrorKind::BarrierBroken`]).
    pub fn is_barrier_broken(&self) -> bool {
        matches!(*self.kind, ErrorKind::BarrierBroken)
    }

    /// The panic message, if the task panicked.
    pub fn panic_message(&self) -> Option<&str> {
        match &*self.kind {
            ErrorKind::Panic { message, .. } => Some(message),
            _ => None,
        }
    }

    /// The position of the failed item in the input of `map`/`imap`.
    pub fn item_index(&self) -> Option<u64> {
        match &*self.kind {
            ErrorKind::Panic { index, .. }
            | ErrorKind::WorkerDied { index, .. }
            | ErrorKind::Timeout { index, .. }
            | ErrorKind::Cancelled { index, .. }
            | ErrorKind::Codec { index, .. } => *index,
            _ => None,
        }
    }

    /// The name of the worker function the failed task belonged to.
    pub fn worker_name(&self) -> Option<&str> {
        match &*self.kind {
            ErrorKind::Panic { worker, .. }
            | ErrorKind::WorkerDied { worker, .. }
            | ErrorKind::Timeout { worker, .. }
            | ErrorKind::Cancelled { worker, .. }
            | ErrorKind::Codec { worker, .. } => Some(worker),
            ErrorKind::UnknownWorker { name, .. } | ErrorKind::DuplicateWorker { name } => {
                Some(name)
            }
            _ => None,
        }
    }

    /// The pid of the worker process that died, for [`ErrorKind::WorkerDied`].
    pub fn pid(&self) -> Option<u32> {
        match &*self.kind {
            ErrorKind::WorkerDied { pid, .. } => Some(*pid),
            _ => None,
        }
    }

    /// How the worker process ended, for [`ErrorKind::WorkerDied`].
    pub fn exit_reason(&self) -> Option<ExitReason> {
        match &*self.kind {
            ErrorKind::WorkerDied { reason, .. } => Some(*reason),
            _ => None,
        }
    }
}

impl From<ErrorKind> for Error {
    fn from(kind: ErrorKind) -> Error {
        Error::new(kind)
    }
}

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.kind, f)
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.kind, f)
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        std::error::Error::source(&*self.kind)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_is_one_pointer() {
        assert_eq!(std::mem::size_of::<Error>(), std::mem::size_of::<usize>());
    }

    #[test]
    fn display_names_the_details() {
        let e = Error::new(ErrorKind::WorkerDied {
            worker: "app::f".into(),
            index: Some(7),
            pid: 42,
            reason: ExitReason::Signal(libc::SIGKILL),
        });
        assert_eq!(
            e.to_string(),
            "worker process 42 running task #7 of `app::f` died with signal 9 (SIGKILL)"
        );
        assert!(e.is_worker_died());
        assert_eq!(e.pid(), Some(42));
        assert_eq!(e.item_index(), Some(7));
    }
}
