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
    /// The task ran out of memory: an allocation failed in the worker
    /// process running it, which Rust answers by printing "memory
    /// allocation of N bytes failed" (on the worker's stderr) and aborting.
    /// Under [`memory_limit`](crate::PoolBuilder::memory_limit) this is the
    /// task going over the limit; without one, the system refused the
    /// memory. The pool replaced the process; other tasks are unaffected.
    /// Not retried by [`retries`](crate::PoolBuilder::retries): the task
    /// would ask for as much again.
    ///
    /// The parent reports this when the worker died by `SIGABRT` and said
    /// that an allocation had failed: in its progress page (`errno` was
    /// `ENOMEM` as it aborted) or, under a `memory_limit`, with Rust's
    /// report on its stderr, which the pool passes on and reads. A worker
    /// killed by the kernel's OOM killer dies by `SIGKILL` and is reported
    /// as [`WorkerDied`](ErrorKind::WorkerDied): nothing the kernel tells
    /// the parent of one process says why it was killed.
    #[error("task {} of worker `{worker}` ran out of memory: {} failed in worker process {pid}{}", index_text(*.index), request_text(*.requested), memory_text(*.limit, *.in_use))]
    OutOfMemory {
        /// Name of the worker function.
        worker: String,
        /// Position of the item in the input, `None` for `submit`/`apply`.
        index: Option<u64>,
        /// Process id of the worker process, which has died.
        pid: u32,
        /// The pool's [`memory_limit`](crate::PoolBuilder::memory_limit)
        /// in bytes; `None` if it has none.
        limit: Option<u64>,
        /// The size of the allocation that failed, from Rust's report on
        /// the worker's stderr, which a pool reads under a `memory_limit`;
        /// `None` otherwise, or if the report was not seen.
        requested: Option<u64>,
        /// Bytes of private memory (data and stack) the process had mapped
        /// as it aborted (after Rust printed its report, and a backtrace if
        /// `RUST_BACKTRACE` asked for one), as it reported them; `None` if
        /// it could not tell.
        in_use: Option<u64>,
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

fn request_text(requested: Option<u64>) -> String {
    match requested {
        Some(n) => format!("an allocation of {}", bytes_text(n)),
        None => "an allocation".to_owned(),
    }
}

fn memory_text(limit: Option<u64>, in_use: Option<u64>) -> String {
    match (limit, in_use) {
        (Some(limit), Some(used)) => format!(
            " with {} in use, under its memory_limit of {}",
            bytes_text(used),
            bytes_text(limit)
        ),
        (Some(limit), None) => format!(" under its memory_limit of {}", bytes_text(limit)),
        (None, Some(used)) => format!(
            " with {} in use (the pool sets no memory_limit: the system refused the memory)",
            bytes_text(used)
        ),
        (None, None) => {
            " (the pool sets no memory_limit: the system refused the memory)".to_owned()
        }
    }
}

/// `n` bytes for people: `4 GiB (4294967296 bytes)`, `256 MiB (268435456
/// bytes)`, `12.5 MiB`, `900 bytes`.
fn bytes_text(n: u64) -> String {
    const MIB: u64 = 1 << 20;
    const GIB: u64 = 1 << 30;
    if n < MIB {
        return format!("{n} bytes");
    }
    if n % GIB == 0 {
        return format!("{} GiB ({n} bytes)", n / GIB);
    }
    if n % MIB == 0 {
        return format!("{} MiB ({n} bytes)", n / MIB);
    }
    format!("{:.1} MiB", n as f64 / MIB as f64)
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

    /// `true` if the task ran out of memory ([`ErrorKind::OutOfMemory`]).
    pub fn is_out_of_memory(&self) -> bool {
        matches!(*self.kind, ErrorKind::OutOfMemory { .. })
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
            | ErrorKind::OutOfMemory { index, .. }
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
            | ErrorKind::OutOfMemory { worker, .. }
            | ErrorKind::Timeout { worker, .. }
            | ErrorKind::Cancelled { worker, .. }
            | ErrorKind::Codec { worker, .. } => Some(worker),
            ErrorKind::UnknownWorker { name, .. } | ErrorKind::DuplicateWorker { name } => {
                Some(name)
            }
            _ => None,
        }
    }

    /// The pid of the worker process that died, for [`ErrorKind::WorkerDied`]
    /// and [`ErrorKind::OutOfMemory`].
    pub fn pid(&self) -> Option<u32> {
        match &*self.kind {
            ErrorKind::WorkerDied { pid, .. } | ErrorKind::OutOfMemory { pid, .. } => Some(*pid),
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

    #[test]
    fn out_of_memory_names_the_limit_and_what_was_in_use() {
        let e = Error::new(ErrorKind::OutOfMemory {
            worker: "app::f".into(),
            index: Some(3),
            pid: 42,
            limit: Some(256 << 20),
            requested: Some(4 << 30),
            in_use: Some(9 << 19),
        });
        assert_eq!(
            e.to_string(),
            "task #3 of worker `app::f` ran out of memory: an allocation of 4 GiB \
             (4294967296 bytes) failed in worker process 42 with 4.5 MiB in use, under its \
             memory_limit of 256 MiB (268435456 bytes)"
        );
        assert!(e.is_out_of_memory() && !e.is_worker_died());
        assert_eq!((e.pid(), e.item_index()), (Some(42), Some(3)));
        assert_eq!(e.worker_name(), Some("app::f"));
        let e = Error::new(ErrorKind::OutOfMemory {
            worker: "app::f".into(),
            index: None,
            pid: 42,
            limit: None,
            requested: None,
            in_use: None,
        });
        assert!(e.to_string().ends_with(
            "an allocation failed in worker process 42 (the pool sets no memory_limit: the \
             system refused the memory)"
        ));
    }
}
