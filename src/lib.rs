//! Python's `multiprocessing` and `concurrent.futures` for Rust: mark a
//! function `#[worker]` and run it in a pool of child processes.
//!
//! Each worker process is your own program started again; a task travels to
//! it as the function's name and its serde-encoded arguments, and the result
//! comes back the same way. Because the work runs in another process, a
//! segfault, an `abort()`, a leak or non-thread-safe C code in a task cannot
//! take the caller down: the task fails with an [`Error`] that says what
//! happened, the pool replaces the process and keeps going, and the other
//! results are kept.
//!
//! Use threads ([rayon], `std::thread::scope`) when the work is trusted,
//! thread-safe Rust: they are cheaper. Use this crate when a task may crash,
//! leak or hang, when it calls a library that is not thread-safe or keeps
//! global state, or when you want to kill a task that runs too long.
//!
//! [rayon]: https://docs.rs/rayon
//!
//! # Example
//!
//! ```no_run
//! use multiproc::{Pool, entry, worker};
//!
//! /// Whether `n` is prime, by slow trial division.
//! #[worker]
//! fn is_prime(n: u64) -> bool {
//!     n >= 2 && (2..=n.isqrt()).all(|i| n % i != 0)
//! }
//!
//! /// Several arguments travel as a tuple.
//! #[worker]
//! fn add(a: u64, b: u64) -> u64 {
//!     a + b
//! }
//!
//! #[entry]
//! fn main() -> Result<(), multiproc::Error> {
//!     assert!(is_prime(7)); // still an ordinary call, in this process
//!
//!     let pool = Pool::new(0)?; // one worker process per CPU
//!     let flags: Vec<bool> = pool.map(is_prime, 1_000_000..2_000_000)?;
//!     println!("{} primes", flags.iter().filter(|&&p| p).count());
//!
//!     let sums = pool.map(add, vec![(1, 2), (3, 4)])?;
//!     assert_eq!(sums, [3, 7]);
//!
//!     let task = pool.submit(add, (5, 6)); // runs while we do other things
//!     assert_eq!(task.wait()?, 11);
//!     Ok(())
//! }
//! ```
//!
//! `cargo run --release --example primes` runs a longer version of this and
//! prints the speedup; `examples/futures.rs` shows [`Pool::submit`] with
//! [`as_completed`].
//!
//! # Concepts
//!
//! ## Workers
//!
//! [`#[worker]`](macro@worker) on a free function (not a method or a
//! closure) registers it under its path (`my_crate::is_prime`) in a table
//! that every copy of the binary carries, and turns its name into a
//! zero-sized value that implements [`Worker`]. The value still derefs to
//! the function, so `is_prime(7)` calls it in-process as before, and
//! `pool.map(is_prime, …)` sends it to worker processes.
//!
//! Arguments and results cross a process boundary, so they must be owned
//! serde types: `Serialize + DeserializeOwned + Send + 'static` (`u64`,
//! `String`, `Vec<T>`, your `#[derive(Serialize, Deserialize)]` structs).
//! Anything else — a reference, an `Rc`, a generic or `async` function — is a
//! compile error at the offending token, with the fix in the message. A
//! worker with several arguments takes them as one tuple in the pool's
//! methods; this replaces Python's `starmap`.
//!
//! ## The entry guard
//!
//! Worker processes run `main` again from the start, so `main` needs
//! [`#[entry]`](macro@entry) — Rust's `if __name__ == "__main__":`. Its first
//! statement asks whether this process is a worker; a worker serves tasks and
//! exits without running any of your startup code. Without the guard,
//! starting a pool fails with [`ErrorKind::GuardMissing`] instead of starting
//! copies of your program recursively. With an async runtime, put
//! `#[multiproc::entry]` above `#[tokio::main]` so that the guard runs first.
//!
//! ## Pools
//!
//! A [`Pool`] is a fixed set of worker processes (`Pool::new(0)`: one per
//! available CPU; [`Pool::builder`] for an initializer or
//! `max_tasks_per_worker`). [`map`](Pool::map) returns every result in input
//! order; [`imap`](Pool::imap) and [`imap_unordered`](Pool::imap_unordered)
//! yield them lazily, one `Result` per item, with a bounded look-ahead, so
//! endless input works; [`apply`](Pool::apply) runs one call. Input is sent
//! in batches to amortise the round trip; choose the size with
//! [`map_chunked`](Pool::map_chunked) or [`Imap::chunk_size`]. A `Pool` is
//! `Send + Sync`; dropping it finishes the queued work and reaps every
//! process, [`terminate`](Pool::terminate) stops at once.
//!
//! ## Tasks
//!
//! [`Pool::submit`] starts one call and returns a [`Task`] at once:
//! Python's `AsyncResult` and `concurrent.futures.Future`. Wait for it
//! ([`wait`](Task::wait), [`wait_timeout`](Task::wait_timeout)), poll it
//! ([`is_finished`](Task::is_finished)), [`cancel`](Task::cancel) it (a
//! running task's process is killed and replaced), or `.await` it — a `Task`
//! is a [`Future`] that does not block the executor.
//! [`as_completed`] yields the results of many tasks as they finish.
//!
//! ## Errors
//!
//! Everything returns [`Result<T, Error>`](Result). Match
//! [`Error::kind`] against [`ErrorKind`], or ask: [`Error::is_panic`],
//! [`Error::is_worker_died`], [`Error::item_index`], [`Error::exit_reason`].
//!
//! ```no_run
//! # use multiproc::{Pool, worker};
//! # #[worker] fn risky(n: u64) -> u64 { n }
//! # fn run(pool: &Pool) {
//! for (i, result) in pool.imap(risky, 0..100).enumerate() {
//!     match result {
//!         Ok(value) => println!("{i}: {value}"),
//!         Err(e) if e.is_panic() => eprintln!("{i} panicked: {}", e.panic_message().unwrap_or("")),
//!         Err(e) if e.is_worker_died() => eprintln!("{i} crashed the worker: {e}"),
//!         Err(e) => eprintln!("{i}: {e}"),
//!     }
//! }
//! # }
//! # fn main() {}
//! ```
//!
//! A task that panics fails alone and its worker keeps serving. A worker
//! process that dies fails only the item it was running; the items batched
//! with it are run again, and the pool starts a new process. Nothing hangs.
//!
//! ## The trust boundary
//!
//! A worker process may be corrupted (a buffer overflow in C code it calls)
//! or hostile (a plugin, a parser fed untrusted files), so **every byte
//! that another process can write is untrusted input**: a worker's frames
//! on its control socket, its progress page and its reply buffers, and the
//! shared state of queues, pipes, locks, events, semaphores, barriers,
//! shared arrays, the [`Manager`] and MPI ranks. It is read once, checked
//! against what this process knows (the batch in flight and its item
//! count, buffer sizes, frame caps), and none of it can make this process:
//!
//! * panic, abort, or read or write outside its own memory;
//! * allocate without bound;
//! * wait past a deadline it was given (deadlines run on this process's
//!   clock, never on a time a worker wrote);
//! * deliver one item's result as another's.
//!
//! A worker that breaks the protocol fails the item it was running with
//! [`ErrorKind::Protocol`] (naming its pid and what it broke), is killed
//! and replaced, and counts as a crash for [`PoolBuilder::retries`].
//! Shared state that fails validation is [`ErrorKind::Corrupted`].
//!
//! What a worker still can do: return wrong values for the items it runs
//! (they are its own results), and hold a lock it was given (as any holder
//! can; operations with a timeout still return within it). A worker runs
//! as the same user as the caller, so without a sandbox it can also send
//! the caller signals or trace it; that is outside what this crate
//! defends. `RELIABILITY.md` lists each hostile act, what happens, and the
//! test that shows it.
//!
//! ## Logging
//!
//! The pool reports what happens to it through
//! [`tracing`](https://docs.rs/tracing) and installs no subscriber: pools
//! opening and closing (target `multiproc::pool`, with a span for each
//! `map`, `imap` and `imap_unordered`), worker processes starting, exiting,
//! crashing, timing out, breaking the protocol and being recycled, items
//! retried (`multiproc::worker`), with the fields `pid`, `worker` and
//! `item`. With no subscriber, this costs next to nothing.
//!
//! A worker process never runs `main`, so a subscriber installed there
//! does not exist in it. The events a task emits are therefore forwarded:
//! the worker sends each to the pool, which emits it again into the
//! subscriber of the thread that called `map` (or `imap`, `submit`),
//! inside the span of that call, with its level, target, message and fields
//! kept and the fields `pid` and `item` added. Forwarding is on by default
//! and bounded (an event a task emits faster than the caller takes it is
//! dropped and counted, never waited for); [`PoolBuilder::forward_tracing`]
//! describes it and turns it off.
//!
//! ```no_run
//! use multiproc::{Pool, entry, worker};
//!
//! #[worker]
//! fn parse(path: String) -> usize {
//!     // Reaches the subscriber of `main`, with `pid` and `item` added.
//!     tracing::info!(%path, "parsing");
//!     path.len()
//! }
//!
//! #[entry]
//! fn main() -> Result<(), multiproc::Error> {
//!     // tracing_subscriber::fmt::init(), or any subscriber.
//! #   let subscriber = tracing::subscriber::NoSubscriber::default();
//!     tracing::subscriber::set_global_default(subscriber).unwrap();
//!     let pool = Pool::new(0)?;
//!     pool.map(parse, vec!["a.txt".to_owned(), "b.txt".to_owned()])?;
//!     Ok(())
//! }
//! ```
//!
//! ## Processes, queues, pipes, shared state
//!
//! The rest of Python's toolbox, each handle passable to a worker as an
//! ordinary argument (it travels as a file descriptor, not as a copy):
//!
//! * [`Process::spawn`] runs one call in a process of its own
//!   (`join`, `join_timeout`, `kill`, `pid`).
//! * [`Queue`] is a multi-producer, multi-consumer queue in shared memory;
//!   [`Queue::close`] ends its consumers' loops, and `task_done`/`join` give
//!   `JoinableQueue` semantics.
//! * [`pipe`] gives two typed duplex [`PipeEnd`]s; a dead peer is an error,
//!   never a hang.
//! * [`SharedArray`] (numbers, atomic access, bulk reads at memory speed
//!   with [`SharedArray::read_chunks`], exclusive chunk leases: the way to
//!   hand workers data too large to copy), [`SharedBytes`] (a large read-only buffer without a copy through the
//!   socket), [`Value`], [`Lock`] (a dead holder is reported as
//!   [`ErrorKind::OwnerDied`], never a deadlock), [`Event`], [`Semaphore`],
//!   [`Barrier`].
//! * [`Manager`] hosts a [`SharedMap`] and [`SharedList`] for several
//!   processes (one round trip per operation).
//!
//! ## Testing
//!
//! A test binary has no `main` to put `#[entry]` on: use
//! [`#[multiproc::test]`](macro@test) instead of `#[test]` for every test that
//! starts a pool. Its worker processes are the test binary re-run for exactly
//! that test, and the guard the attribute inserts turns them into workers.
//!
//! ```no_run
//! use multiproc::{Pool, worker};
//!
//! #[worker]
//! fn double(n: u64) -> u64 {
//!     n * 2
//! }
//!
//! #[multiproc::test]
//! fn doubles_in_worker_processes() -> Result<(), multiproc::Error> {
//!     let pool = Pool::new(2)?;
//!     assert_eq!(pool.map(double, [1, 2, 3])?, [2, 4, 6]);
//!     Ok(())
//! }
//! # fn main() {}
//! ```
//!
//! Run them with plain `cargo test`. Tests that only call a worker as a
//! function (`assert_eq!(double(2), 4)`) need nothing special. Start a
//! test's pools on the test's own thread: a pool started on a thread the
//! test spawned cannot tell which test it belongs to, and its workers re-run
//! whichever test started last.
//!
//! ## Many machines (feature `mpi`)
//!
//! With the `mpi` feature, `Pool::mpi()` (and `PoolBuilder::build_mpi`)
//! gives a pool whose workers are the other ranks of an MPI job started by
//! `mpirun -n N ./app` or `srun --mpi=pmix`: `#[entry]` makes rank 0 run
//! `main`, and every other rank runs the tasks it is sent in a local pool of
//! worker processes. `map`, `imap`, `imap_unordered`, `apply`, `submit` and
//! `as_completed` work as on one machine. The README's "Many machines"
//! section covers installing Open MPI, hostfiles and Slurm;
//! `examples/mpi_primes.rs` is the runnable version.
//!
//! # Platform support
//!
//! Linux (x86-64, arm64), macOS and FreeBSD. Linux is tested; macOS and
//! FreeBSD are type-checked and linted on every commit and the logic of
//! their back end is tested on Linux (`--cfg multiproc_portable`), but they
//! have not run on a real machine yet. Some behaviour differs by platform:
//! how soon a worker dies with its parent, what `memory_limit` counts,
//! whether a lock notices a dead owner thread or only a dead process; the
//! README's "Platform support" lists it. Windows and other targets fail to
//! compile with a message saying why. Worker processes are started by
//! re-executing the program (`/proc/self/exe` on Linux, `current_exe`
//! elsewhere), never by `fork` of a running process. Under `panic = "abort"` a panicking task kills its
//! worker process, so it is reported as [`ErrorKind::WorkerDied`] (signal
//! `SIGABRT`) rather than [`ErrorKind::Panic`].
#![deny(unsafe_op_in_unsafe_fn)]

pub use multiproc_macros::{entry, test, worker};
pub use multiproc_runtime::{
    AsCompleted, AsCompletedStream, CodecSide, Error, ErrorKind, ExitReason, Imap, ImapStream,
    ImapUnordered, ImapUnorderedStream, Indexed, InitOutcome, Manager, PipeEnd, Pool, PoolBuilder,
    Process, Queue, Result, SharedList, SharedMap, Task, WakeLatency, Worker, as_completed, pipe,
};
pub use multiproc_runtime::{
    Barrier, BarrierWaitResult, ChunkMut, Element, Event, IntElement, Lock, LockGuard, Semaphore,
    SharedArray, SharedBytes, Value, ValueGuard,
};

// Not public API. Used by generated code.
#[doc(hidden)]
pub mod __private {
    pub use multiproc_runtime::__private::*;
}
