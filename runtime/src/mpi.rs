//! Scale-out over MPI: the same [`Pool`], with workers on the other ranks of
//! an MPI job (`mpirun -n N ./app`, or `srun` under Slurm).
//!
//! `#[entry]` initialises MPI when the process was started by an MPI
//! launcher. Rank 0 returns to `main`; every other rank becomes a *worker
//! rank*: it waits for rank 0 to open a pool, then runs the batches it is
//! sent in a local process pool of its own (one or more child processes on
//! its node, exactly like [`Pool::new`]'s), and sends the results back. So a
//! task that crashes its process fails alone, as on one machine, and the
//! rank itself survives.
//!
//! Rank 0's side is one thread, `multiproc-mpi`, which takes batches from
//! the pool's queue, sends them to the ranks and hands the replies to the
//! waiting `map`, `imap` or `Task`. All traffic runs over a private duplicate
//! of `MPI_COMM_WORLD`, with non-blocking sends, so two sides that send to
//! each other at the same time cannot deadlock. Waiting for a message polls
//! with a short back-off instead of spinning in `MPI_Recv`, which would burn
//! a core on every rank.
//!
//! Messages (first byte) between rank 0 and a worker rank:
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

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use mpi::environment::Threading;
use mpi::point_to_point::{Destination, MatchedReceiveVec, Source};
use mpi::request::{Request, StaticScope};
use mpi::topology::{Communicator, SimpleCommunicator};
use serde::{Deserialize, Serialize};

use crate::codec;
use crate::error::{Error, ErrorKind, Result};
use crate::pool::job::{Job, Next, Queue, Sink};
use crate::pool::outcome::{Failure, Outcome, Reply};
use crate::pool::runner::Runner;
use crate::pool::{Initializer, Pool, PoolBuilder, PoolShared};
use crate::proto;
use crate::registry;

/// The one MPI tag of multiproc's messages (on its own communicator).
const TAG: i32 = 0x6d70;

const OPEN: u8 = 1;
const OPENED: u8 = 2;
const RUN: u8 = 3;
const REPLY: u8 = 4;
const CLOSE: u8 = 5;
const TERMINATE: u8 = 6;
const CLOSED: u8 = 7;
const EXIT: u8 = 8;

const REPLY_DONE: u8 = 0;
const REPLY_FAILED: u8 = 1;
/// Bytes of a `REPLY` before the status-specific part.
const REPLY_HEAD: usize = 1 + 8 + 4 + 4 + 1;

/// Batches kept in flight per worker process of a rank, so that its local
/// queue does not run dry while a reply travels back.
const IN_FLIGHT_PER_WORKER: usize = 2;

/// The most worker processes rank 0 believes a rank has, whatever it
/// answers: the count only sizes what is kept in flight, and must not
/// overflow a sum.
const MAX_RANK_WORKERS: usize = 1 << 16;

/// Pool options that a worker rank applies to its local pool.
#[derive(Serialize, Deserialize)]
struct Config {
    /// Worker processes per rank; `0` for the rank's share of its node's CPUs.
    workers: u64,
    initializer: Option<(String, Vec<u8>)>,
    max_tasks_per_worker: Option<u64>,
    task_timeout: Option<Duration>,
    retries: u32,
    panic_retries: u32,
    max_worker_rss: Option<u64>,
}

/// A worker rank's answer to `OPEN`.
#[derive(Serialize, Deserialize)]
enum Opened {
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

/// What MPI gave this process in `#[entry]`.
struct World {
    /// A private duplicate of `MPI_COMM_WORLD`: multiproc's traffic never
    /// mixes with the program's own.
    comm: SimpleCommunicator,
    size: i32,
    /// The library grants calls from any one thread at a time (rank 0's
    /// MPI thread is not the main thread).
    threads_ok: bool,
}

// SAFETY: `comm` is a handle to a process-wide MPI communicator; MPI was
// initialised with at least `MPI_THREAD_SERIALIZED` (checked through
// `threads_ok` before rank 0 uses it off the main thread), and every use is
// serialised: worker ranks use it on the main thread only, rank 0 from the
// one thread that holds `POOL_OPEN`, or at exit after that thread ended.
unsafe impl Send for World {}
// SAFETY: as above.
unsafe impl Sync for World {}

static WORLD: OnceLock<World> = OnceLock::new();

/// Set while rank 0 has an MPI pool open (one at a time).
static POOL_OPEN: AtomicBool = AtomicBool::new(false);

/// Environment variables that MPI launchers set in the processes they start.
const LAUNCHER_VARS: [&str; 4] = ["OMPI_COMM_WORLD_SIZE", "PMIX_RANK", "PMI_RANK", "PMI_SIZE"];

/// `true` if an MPI launcher (`mpirun`, `mpiexec`, `srun --mpi=...`)
/// started this process.
fn launched() -> bool {
    LAUNCHER_VARS.iter().any(|v| std::env::var_os(v).is_some()) || slurm_tasks() > 1
}

/// How many tasks the enclosing Slurm job step has (`0` outside Slurm).
fn slurm_tasks() -> u64 {
    std::env::var("SLURM_STEP_NUM_TASKS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// Called by `#[entry]` after the guard is set. Outside an MPI job it does
/// nothing. On rank 0 it initialises MPI and returns; on every other rank it
/// serves pools until rank 0's program ends, then exits.
pub(crate) fn entry() {
    if !launched() {
        return;
    }
    let Some((universe, threading)) = mpi::initialize_with_threading(Threading::Serialized) else {
        return; // the program initialised MPI itself: leave it alone
    };
    // Finalised by hand (`finish` on rank 0, `exit_rank` elsewhere), after
    // the last message, not when some scope ends.
    std::mem::forget(universe);
    let world = SimpleCommunicator::world();
    let (rank, size) = (world.rank(), world.size());
    if size == 1 && slurm_tasks() > 1 {
        eprintln!(
            "multiproc: srun started {} tasks, but MPI sees each as a job of one process: \
             run `srun --mpi=pmix` (or the PMI plugin your MPI library was built with)",
            slurm_tasks()
        );
        std::process::exit(2);
    }
    let comm = world.duplicate();
    let threads_ok = matches!(threading, Threading::Serialized | Threading::Multiple);
    let _ = WORLD.set(World {
        comm,
        size,
        threads_ok,
    });
    if rank == 0 {
        // SAFETY: `finish` is an `extern "C" fn()` that does not unwind.
        unsafe { libc::atexit(finish) };
    } else {
        serve_rank();
    }
}

/// At the exit of rank 0's program: tells the worker ranks to finish, then
/// finalises MPI.
extern "C" fn finish() {
    let Some(world) = WORLD.get() else { return };
    if POOL_OPEN.swap(true, Ordering::AcqRel) {
        // A pool is still open (leaked, or exit() from another thread): its
        // thread may be inside MPI. mpirun ends the job when we exit.
        return;
    }
    let mut out = Outbox::default();
    for rank in 1..world.size {
        out.send(&world.comm, rank, vec![EXIT]);
    }
    out.flush();
    // SAFETY: every multiproc request is complete and no other thread uses
    // MPI any more; MPI_Finalize is the last MPI call of this process.
    unsafe { mpi::ffi::MPI_Finalize() };
}

/// Non-blocking sends whose buffers live until MPI is done with them.
#[derive(Default)]
struct Outbox {
    pending: Vec<Request<'static, [u8], StaticScope>>,
}

impl Outbox {
    fn send(&mut self, comm: &SimpleCommunicator, rank: i32, message: Vec<u8>) {
        // Leaked until the request completes (`reclaim`): MPI reads the
        // buffer in the background.
        let buf: &'static [u8] = Box::leak(message.into_boxed_slice());
        let request = comm
            .process_at_rank(rank)
            .immediate_send_with_tag(StaticScope, buf, TAG);
        self.pending.push(request);
    }

    /// Frees the buffers of completed sends; `true` if any completed.
    fn poll(&mut self) -> bool {
        let before = self.pending.len();
        let mut still = Vec::with_capacity(before);
        for request in self.pending.drain(..) {
            match request.test_with_data() {
                Ok((_, buf)) => reclaim(buf),
                Err(request) => still.push(request),
            }
        }
        self.pending = still;
        self.pending.len() < before
    }

    /// Waits until every send has completed.
    fn flush(&mut self) {
        for request in self.pending.drain(..) {
            reclaim(request.wait_for_data());
        }
    }
}

fn reclaim(buf: &'static [u8]) {
    // SAFETY: `buf` was leaked from a `Box<[u8]>` in `Outbox::send`, and its
    // request has completed, so MPI no longer reads it and nothing else
    // refers to it.
    drop(unsafe { Box::from_raw(std::ptr::from_ref(buf).cast_mut()) });
}

/// Sleeps a little longer each time nothing happened, up to a cap: a few
/// dozen yields first (a reply is often microseconds away), then sleeps
/// from 5 µs doubling to the cap.
struct Backoff {
    idle: u32,
    cap: Duration,
}

impl Backoff {
    /// The cap while work is in flight: bounds the latency a poll adds to a
    /// round trip, at about one `MPI_Iprobe` per 100 µs.
    const BUSY: Duration = Duration::from_micros(100);
    /// The cap of a worker rank with no pool open (rank 0 may run for
    /// minutes before it opens one): a poll costs nothing measurable.
    const IDLE: Duration = Duration::from_millis(2);

    fn new(cap: Duration) -> Backoff {
        Backoff { idle: 0, cap }
    }

    fn reset(&mut self) {
        self.idle = 0;
    }

    fn pause(&mut self) -> Duration {
        self.idle = self.idle.saturating_add(1);
        if self.idle < 32 {
            Duration::ZERO
        } else {
            Duration::from_micros(5u64 << (self.idle - 32).min(12)).min(self.cap)
        }
    }

    fn wait(&mut self) {
        match self.pause() {
            Duration::ZERO => std::thread::yield_now(),
            d => std::thread::sleep(d),
        }
    }
}

/// The next multiproc message from `from` (any rank if `None`), if one
/// has arrived.
fn try_receive(comm: &SimpleCommunicator, from: Option<i32>) -> Option<(i32, Vec<u8>)> {
    let probed = match from {
        Some(rank) => comm
            .process_at_rank(rank)
            .immediate_matched_probe_with_tag(TAG),
        None => comm.any_process().immediate_matched_probe_with_tag(TAG),
    }?;
    let (bytes, status) = probed.matched_receive_vec::<u8>();
    Some((status.source_rank(), bytes))
}

// ---------------------------------------------------------------------------
// Rank 0: the pool's side.
// ---------------------------------------------------------------------------

fn mpi_error(message: impl Into<String>) -> Error {
    Error::new(ErrorKind::Mpi(message.into()))
}

/// One worker rank, as rank 0 sees it.
struct RankSlot {
    rank: i32,
    workers: usize,
    in_flight: usize,
    /// For `Task` cancellation bookkeeping (an MPI rank has no local pid to
    /// kill: a cancelled running task is abandoned, not interrupted).
    runner: Arc<Runner>,
}

/// A batch sent to a rank and not fully answered.
struct Flight {
    job: Job,
    slot: usize,
    /// The rank it was sent to: the only one whose replies count for it.
    rank: i32,
    answered: Answered,
}

/// Which items of a batch of `items` have been answered: each item must
/// be answered exactly once, by parts that lie inside the batch.
#[derive(Debug)]
struct Answered {
    items: u32,
    /// Items not answered yet.
    left: u32,
    /// One bit per item, set when answered; allocated by the first part
    /// that does not answer the whole batch at once.
    bits: Vec<u64>,
}

impl Answered {
    fn new(items: u32) -> Answered {
        Answered {
            items,
            left: items,
            bits: Vec::new(),
        }
    }

    /// Marks items `offset..offset + count` answered, or says why they
    /// cannot be (outside the batch, or answered before).
    fn claim(&mut self, offset: u32, count: u32) -> std::result::Result<(), String> {
        let items = self.items;
        let end = offset
            .checked_add(count)
            .filter(|&end| end <= items)
            .ok_or_else(|| {
                format!("it answered items {offset}..{offset}+{count} of a batch of {items}")
            })?;
        if count == 0 {
            return Ok(());
        }
        if self.bits.is_empty() {
            if self.left != items {
                return Err("it answered the whole batch already".to_owned());
            }
            if count == items {
                self.left = 0; // the whole batch in one part: no bits needed
                return Ok(());
            }
            self.bits = vec![0; (items as usize).div_ceil(64)];
        }
        let bit = |i: u32| (i as usize / 64, 1u64 << (i % 64));
        if let Some(i) = (offset..end).find(|&i| {
            let (word, mask) = bit(i);
            self.bits[word] & mask != 0
        }) {
            return Err(format!("it answered item {i} of the batch twice"));
        }
        for i in offset..end {
            let (word, mask) = bit(i);
            self.bits[word] |= mask;
        }
        self.left -= count;
        Ok(())
    }

    /// The items not answered yet, as `(offset, count)` ranges.
    fn unanswered(&self) -> Vec<(u32, u32)> {
        if self.left == 0 {
            return Vec::new();
        }
        if self.bits.is_empty() {
            return vec![(0, self.items)];
        }
        let mut gaps: Vec<(u32, u32)> = Vec::new();
        for i in 0..self.items {
            if self.bits[i as usize / 64] & (1 << (i % 64)) != 0 {
                continue;
            }
            match gaps.last_mut() {
                Some((start, count)) if *start + *count == i => *count += 1,
                _ => gaps.push((i, 1)),
            }
        }
        gaps
    }
}

/// Opens a pool on the worker ranks: [`PoolBuilder::build_mpi`].
pub(crate) fn open(builder: PoolBuilder) -> Result<Pool> {
    if !crate::child::guard_installed() {
        return Err(Error::new(ErrorKind::GuardMissing));
    }
    registry::validate()?;
    let Some(world) = WORLD.get() else {
        return Err(mpi_error(
            "this program was not started by an MPI launcher: run it with \
             `mpirun -n <ranks> <program>` (or `srun --mpi=pmix` under Slurm)",
        ));
    };
    if world.size < 2 {
        return Err(mpi_error(
            "the MPI job has only one rank, and rank 0 runs `main`: start at least 2 ranks",
        ));
    }
    if !world.threads_ok {
        return Err(mpi_error(
            "the MPI library does not support MPI_THREAD_SERIALIZED, which the pool's \
             MPI thread needs",
        ));
    }
    if POOL_OPEN.swap(true, Ordering::AcqRel) {
        return Err(mpi_error(
            "another MPI pool is open; the worker ranks serve one pool at a time",
        ));
    }
    let opened = open_ranks(world, builder);
    if opened.is_err() {
        POOL_OPEN.store(false, Ordering::Release);
    }
    opened
}

fn open_ranks(world: &'static World, builder: PoolBuilder) -> Result<Pool> {
    let initializer = builder.initializer.transpose()?;
    if initializer.as_ref().is_some_and(|i| !i.fds.is_empty()) {
        return Err(mpi_error(
            "the initializer's arguments hold handles (queues, pipes, shared memory), \
             which cannot reach other machines",
        ));
    }
    let config = Config {
        workers: builder.workers as u64,
        initializer: initializer
            .as_ref()
            .map(|i| (i.worker.to_owned(), i.payload.clone())),
        max_tasks_per_worker: builder.max_tasks_per_worker,
        task_timeout: builder.task_timeout,
        retries: builder.retries,
        panic_retries: builder.panic_retries,
        max_worker_rss: builder.max_worker_rss,
    };
    let mut message = vec![OPEN];
    message.extend(postcard::to_stdvec(&config).map_err(|e| mpi_error(e.to_string()))?);
    let mut out = Outbox::default();
    for rank in 1..world.size {
        out.send(&world.comm, rank, message.clone());
    }
    // Every rank answers, also when it fails, so that all of them stay in
    // step; a rank that dies makes the launcher end the job.
    let mut answers: HashMap<i32, Opened> = HashMap::new();
    let mut backoff = Backoff::new(Backoff::BUSY);
    while answers.len() < (world.size - 1) as usize {
        out.poll();
        match try_receive(&world.comm, None) {
            Some((rank, bytes)) if bytes.first() == Some(&OPENED) => {
                let answer = postcard::from_bytes(&bytes[1..]).unwrap_or_else(|e| {
                    Opened::Failed(format!("undecodable answer from rank {rank}: {e}"))
                });
                answers.insert(rank, answer);
                backoff.reset();
            }
            Some(_) => {} // a straggler of an earlier pool
            None => backoff.wait(),
        }
    }
    out.flush();

    let mut slots = Vec::new();
    let mut failure = None;
    for rank in 1..world.size {
        let error = match answers.remove(&rank) {
            Some(Opened::Ready {
                workers,
                host,
                init_output,
            }) => {
                let checked = match (&initializer, init_output) {
                    (Some(init), Some(bytes)) => (init.check)(init.worker, &mut &bytes[..])
                        .map_err(|e| {
                            Error::new(ErrorKind::Initializer(mpi_error(format!(
                                "rank {rank} on {host}: {e}"
                            ))))
                        }),
                    _ => Ok(()),
                };
                slots.push(RankSlot {
                    rank,
                    workers: usize::try_from(workers)
                        .unwrap_or(1)
                        .clamp(1, MAX_RANK_WORKERS),
                    in_flight: 0,
                    runner: Arc::new(Runner::new(slots.len())),
                });
                checked.err()
            }
            Some(Opened::InitializerFailed(message)) => Some(Error::new(ErrorKind::Initializer(
                mpi_error(format!("rank {rank}: {message}")),
            ))),
            Some(Opened::Failed(message)) => Some(mpi_error(format!(
                "rank {rank} could not start its worker processes: {message}"
            ))),
            None => Some(mpi_error(format!("rank {rank} did not answer"))),
        };
        if let Some(e) = error {
            failure.get_or_insert(e);
        }
    }
    if let Some(e) = failure {
        // Close the pools that did start; the others closed themselves.
        let open: Vec<i32> = slots.iter().map(|s| s.rank).collect();
        close_ranks(world, &open, CLOSE, &mut HashMap::new());
        return Err(e);
    }

    let workers: usize = slots.iter().map(|s| s.workers).sum();
    let shared = Arc::new(PoolShared {
        queue: Queue::new(),
        initializer,
        max_tasks_per_worker: builder.max_tasks_per_worker,
        test_name: None,
        task_timeout: builder.task_timeout,
        retries: builder.retries,
        panic_retries: builder.panic_retries,
        max_worker_rss: builder.max_worker_rss,
        runners: Vec::new(),
        slots_alive: AtomicUsize::new(slots.len()),
        dense_batches: false,
    });
    let for_thread = shared.clone();
    let thread = std::thread::Builder::new()
        .name("multiproc-mpi".to_owned())
        .spawn(move || {
            let driven = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                drive(world, &for_thread, slots);
            }));
            if driven.is_err() {
                // A bug: fail what is queued rather than leave callers waiting.
                for_thread.queue.set_fatal(Failure::Protocol(
                    "the pool's MPI thread panicked".to_owned(),
                ));
            }
            POOL_OPEN.store(false, Ordering::Release);
        });
    match thread {
        Ok(handle) => Ok(Pool::from_parts(shared, vec![handle], workers)),
        Err(e) => Err(Error::new(ErrorKind::Spawn(e))),
    }
}

/// Rank 0's MPI thread: feeds the ranks from the queue and delivers their
/// replies, until the pool is closed and drained, or terminated.
fn drive(world: &World, shared: &PoolShared, mut slots: Vec<RankSlot>) {
    let comm = &world.comm;
    let mut flights: HashMap<u64, Flight> = HashMap::new();
    let mut out = Outbox::default();
    let mut backoff = Backoff::new(Backoff::BUSY);
    let ranks: Vec<i32> = slots.iter().map(|s| s.rank).collect();
    loop {
        if shared.queue.is_terminated() {
            out.flush();
            close_ranks(world, &ranks, TERMINATE, &mut flights);
            return;
        }
        let mut busy = false;
        let mut closed = false;
        for (i, slot) in slots.iter_mut().enumerate() {
            while slot.in_flight < slot.workers.saturating_mul(IN_FLIGHT_PER_WORKER) {
                // With nothing in flight there is nothing to poll for:
                // sleep on the queue until work (or the end) comes.
                let block = flights.is_empty() && out.pending.is_empty();
                let Next::Job(job) =
                    shared
                        .queue
                        .next(slot.runner.id, block, &|_| true, &|| false, None)
                else {
                    closed = block;
                    break;
                };
                busy = true;
                let batch = shared.queue.next_batch_id();
                if let Some(control) = &job.control {
                    if !control.start(batch, &slot.runner) {
                        continue; // cancelled while queued; already answered
                    }
                }
                match run_message(&job, batch) {
                    Ok(message) => out.send(comm, slot.rank, message),
                    Err(failure) => {
                        if let Some(control) = &job.control {
                            control.finish();
                        }
                        job.deliver(Outcome::Failed(failure));
                        continue;
                    }
                }
                slot.in_flight += 1;
                let answered = Answered::new(job.count);
                flights.insert(
                    batch,
                    Flight {
                        job,
                        slot: i,
                        rank: slot.rank,
                        answered,
                    },
                );
            }
            if closed {
                break;
            }
        }
        if closed && flights.is_empty() {
            out.flush();
            close_ranks(world, &ranks, CLOSE, &mut flights);
            return;
        }
        while let Some((rank, bytes)) = try_receive(comm, None) {
            busy = true;
            if let Some(slot) = deliver_reply(rank, &bytes, &mut flights) {
                slots[slot].in_flight -= 1;
            }
        }
        busy |= out.poll();
        if busy {
            backoff.reset();
        } else {
            backoff.wait();
        }
    }
}

/// The `RUN` message for a batch, or why it cannot go to another machine.
fn run_message(job: &Job, batch: u64) -> std::result::Result<Vec<u8>, Failure> {
    if !job.fds().is_empty() {
        return Err(Failure::Protocol(
            "the arguments hold handles (queues, pipes, shared memory), which cannot \
             reach an MPI rank on another machine"
                .to_owned(),
        ));
    }
    let name = job.worker.as_bytes();
    let len = 1 + 8 + 4 + 4 + name.len() + job.payload.len();
    if i32::try_from(len).is_err() {
        return Err(Failure::Protocol(format!(
            "a batch of {len} bytes is larger than one MPI message can be (2 GiB)"
        )));
    }
    let mut message = Vec::with_capacity(len);
    message.push(RUN);
    message.extend_from_slice(&batch.to_le_bytes());
    message.extend_from_slice(&job.count.to_le_bytes());
    message.extend_from_slice(&(name.len() as u32).to_le_bytes());
    message.extend_from_slice(name);
    for part in job.payload.parts() {
        message.extend_from_slice(part);
    }
    Ok(message)
}

/// The fixed head of a `REPLY`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct ReplyHead {
    batch: u64,
    offset: u32,
    count: u32,
    status: u8,
}

/// The head of a `REPLY`; `None` if `bytes` is another message (`CLOSED`,
/// a straggler) or too short to be one.
fn reply_head(bytes: &[u8]) -> Option<ReplyHead> {
    if bytes.first() != Some(&REPLY) || bytes.len() < REPLY_HEAD {
        return None;
    }
    let mut cur = proto::Cursor(&bytes[1..]);
    Some(ReplyHead {
        batch: cur.u64().ok()?,
        offset: cur.u32().ok()?,
        count: cur.u32().ok()?,
        status: bytes[REPLY_HEAD - 1],
    })
}

/// What a `REPLY` reports for its items, checked.
#[derive(Debug)]
enum ReplyBody {
    /// `count` framed results fill `bytes[start..]` exactly.
    Done {
        elapsed_ns: u64,
        start: usize,
    },
    Failed(Failure),
}

/// Checks a `REPLY` (`bytes`, whose head is `head`) against the batch it
/// answers, before anything is sliced or handed on: its items lie inside
/// the batch and none was answered before (they are marked in `answered`
/// only if the whole reply is valid), its status is known, a `DONE` holds
/// its time and exactly `count` framed results and nothing after them, and
/// a `FAILED` holds exactly one postcard [`Failure`]. The error says what
/// the rank broke.
fn check_reply(
    bytes: &[u8],
    head: &ReplyHead,
    answered: &mut Answered,
) -> std::result::Result<ReplyBody, String> {
    let body = match head.status {
        REPLY_DONE => {
            let start = REPLY_HEAD + 8;
            let elapsed = bytes
                .get(REPLY_HEAD..start)
                .ok_or("its DONE reply ends before the time it took")?;
            let elapsed_ns = u64::from_le_bytes(elapsed.try_into().expect("8 bytes"));
            let mut rest = &bytes[start..];
            for i in 0..head.count {
                if codec::next_item(&mut rest).is_none() {
                    return Err(format!(
                        "its DONE reply holds {i} results where it announced {}",
                        head.count
                    ));
                }
            }
            if !rest.is_empty() {
                return Err(format!(
                    "its DONE reply has {} bytes after its {} results",
                    rest.len(),
                    head.count
                ));
            }
            ReplyBody::Done { elapsed_ns, start }
        }
        REPLY_FAILED => ReplyBody::Failed(
            codec::decode_exact(&bytes[REPLY_HEAD..])
                .map_err(|e| format!("its failure report is not one: {e}"))?,
        ),
        other => return Err(format!("its reply has an unknown status {other}")),
    };
    answered.claim(head.offset, head.count)?;
    Ok(body)
}

/// Hands a `REPLY` from `rank` to the job it answers. A reply that breaks
/// the protocol fails the batch's unanswered items with
/// [`Failure::Protocol`]; a reply for a batch that is not in flight, or
/// that went to another rank, is dropped (nothing waits for it, and one
/// rank cannot answer or fail another's work). Returns the job's rank slot
/// when the job is complete.
fn deliver_reply(rank: i32, bytes: &[u8], flights: &mut HashMap<u64, Flight>) -> Option<usize> {
    let head = reply_head(bytes)?;
    let flight = flights.get_mut(&head.batch)?;
    if flight.rank != rank {
        return None;
    }
    match check_reply(bytes, &head, &mut flight.answered) {
        Ok(body) => {
            let outcome = match body {
                ReplyBody::Done { elapsed_ns, start } => Outcome::Done {
                    elapsed_ns,
                    data: bytes.to_vec().into(),
                    start,
                    dense: false, // relayed batches are framed (`dense_batches`)
                },
                ReplyBody::Failed(failure) => Outcome::Failed(failure),
            };
            flight.job.deliver_part(head.offset, head.count, outcome);
        }
        Err(why) => {
            let failure = Failure::Protocol(format!("MPI rank {rank} broke the protocol: {why}"));
            fail_unanswered(flight, &failure);
        }
    }
    if flight.answered.left > 0 {
        return None;
    }
    let flight = flights.remove(&head.batch)?;
    flight.job.settle();
    if let Some(control) = &flight.job.control {
        control.finish();
    }
    Some(flight.slot)
}

/// Fails every item of `flight` that no reply answered yet.
fn fail_unanswered(flight: &mut Flight, failure: &Failure) {
    for (offset, count) in flight.answered.unanswered() {
        flight
            .job
            .deliver_part(offset, count, Outcome::Failed(failure.clone()));
    }
    flight.answered.left = 0;
}

/// Sends `kind` (`CLOSE` or `TERMINATE`) to `ranks` and waits until each
/// has closed its local pool, delivering the replies that come before.
/// Batches still in flight after that fail as cancelled.
fn close_ranks(world: &World, ranks: &[i32], kind: u8, flights: &mut HashMap<u64, Flight>) {
    let mut out = Outbox::default();
    for &rank in ranks {
        out.send(&world.comm, rank, vec![kind]);
    }
    let mut open = ranks.len();
    let mut backoff = Backoff::new(Backoff::BUSY);
    while open > 0 {
        out.poll();
        match try_receive(&world.comm, None) {
            Some((_, bytes)) if bytes.first() == Some(&CLOSED) => open -= 1,
            Some((rank, bytes)) => {
                deliver_reply(rank, &bytes, flights);
            }
            None => backoff.wait(),
        }
    }
    out.flush();
    for (_, mut flight) in flights.drain() {
        if let Some(control) = &flight.job.control {
            control.finish();
        }
        fail_unanswered(&mut flight, &Failure::Cancelled);
        flight.job.settle();
    }
}

// ---------------------------------------------------------------------------
// Worker ranks.
// ---------------------------------------------------------------------------

/// The first successful initializer output of this rank's pool, for rank 0
/// to check.
static INIT_OUTPUT: Mutex<Option<Vec<u8>>> = Mutex::new(None);

/// The initializer check of a worker rank's local pool: a panic fails it;
/// a value is kept for rank 0, which knows its type.
fn keep_init_output(worker: &'static str, rest: &mut &[u8]) -> Result<()> {
    let whole = *rest;
    match codec::next_item(&mut &whole[..]) {
        Some((codec::ITEM_OK, _, item)) => {
            INIT_OUTPUT
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .get_or_insert_with(|| item.to_vec());
            Ok(())
        }
        _ => crate::pool::decode::decode_item::<serde::de::IgnoredAny>(worker, None, rest)
            .map(|_| ()),
    }
}

/// A worker rank's open pool.
struct RankPool {
    pool: Pool,
    retries: u32,
    panic_retries: u32,
}

/// Serves rank 0 until it says `EXIT`.
fn serve_rank() -> ! {
    let world = WORLD.get().expect("set before serve_rank");
    let comm = &world.comm;
    let (tx, rx) = mpsc::channel::<(u64, Reply)>();
    let mut pool: Option<RankPool> = None;
    let mut out = Outbox::default();
    let mut backoff = Backoff::new(Backoff::BUSY);
    let mut relay = Vec::new();
    loop {
        let mut busy = false;
        while let Some((_, message)) = try_receive(comm, Some(0)) {
            busy = true;
            match message.first().copied() {
                Some(OPEN) => {
                    let opened = open_local(&message[1..]);
                    let answer = match opened {
                        Ok(p) => {
                            let ready = Opened::Ready {
                                workers: p.pool.workers() as u64,
                                host: host_name(),
                                init_output: INIT_OUTPUT
                                    .lock()
                                    .unwrap_or_else(|e| e.into_inner())
                                    .take(),
                            };
                            pool = Some(p);
                            ready
                        }
                        Err(answer) => answer,
                    };
                    let mut bytes = vec![OPENED];
                    bytes.extend(postcard::to_stdvec(&answer).unwrap_or_default());
                    out.send(comm, 0, bytes);
                }
                Some(RUN) => run_batch(&message, pool.as_ref(), &tx),
                Some(kind @ (CLOSE | TERMINATE)) => {
                    if let Some(p) = pool.take() {
                        if kind == TERMINATE {
                            p.pool.terminate();
                        }
                        drop(p);
                    }
                    // Every reply of the closed pool goes before CLOSED (MPI
                    // keeps the order of messages between two ranks).
                    forward(comm, &rx, &mut out, &mut relay);
                    out.send(comm, 0, vec![CLOSED]);
                }
                Some(EXIT) => {
                    drop(pool.take());
                    out.flush();
                    // SAFETY: the last MPI call of this process; every
                    // request is complete.
                    unsafe { mpi::ffi::MPI_Finalize() };
                    std::process::exit(0);
                }
                _ => {}
            }
        }
        busy |= forward(comm, &rx, &mut out, &mut relay);
        busy |= out.poll();
        backoff.cap = if pool.is_some() {
            Backoff::BUSY
        } else {
            Backoff::IDLE
        };
        if busy {
            backoff.reset();
        } else {
            // Sleep on the local replies; rank 0's messages are polled.
            if let Ok(reply) = rx.recv_timeout(backoff.pause().max(Duration::from_micros(1))) {
                send_reply(comm, &mut out, &mut relay, reply);
                backoff.reset();
            }
        }
    }
}

/// Starts the local pool that `OPEN` asks for.
fn open_local(body: &[u8]) -> std::result::Result<RankPool, Opened> {
    let config: Config = postcard::from_bytes(body)
        .map_err(|e| Opened::Failed(format!("undecodable pool options: {e}")))?;
    *INIT_OUTPUT.lock().unwrap_or_else(|e| e.into_inner()) = None;
    let mut builder = Pool::builder()
        .workers(match config.workers {
            0 => default_workers(),
            n => usize::try_from(n).unwrap_or(1),
        })
        .retries(config.retries)
        .retry_panics(config.panic_retries);
    if let Some(k) = config.max_tasks_per_worker {
        builder = builder.max_tasks_per_worker(k);
    }
    if let Some(limit) = config.task_timeout {
        builder = builder.task_timeout(limit);
    }
    if let Some(bytes) = config.max_worker_rss {
        builder = builder.max_worker_memory(bytes);
    }
    if let Some((name, payload)) = config.initializer {
        let Some(entry) = registry::lookup(&name) else {
            return Err(Opened::InitializerFailed(
                Error::new(ErrorKind::UnknownWorker {
                    name,
                    known: registry::known_names(),
                })
                .to_string(),
            ));
        };
        builder.initializer = Some(Ok(Initializer {
            worker: entry.name(),
            payload,
            fds: Vec::new(),
            check: keep_init_output,
        }));
    }
    match builder.build() {
        Ok(pool) => Ok(RankPool {
            pool,
            retries: config.retries,
            panic_retries: config.panic_retries,
        }),
        Err(e) => match e.kind() {
            ErrorKind::Initializer(inner) => Err(Opened::InitializerFailed(inner.to_string())),
            _ => Err(Opened::Failed(e.to_string())),
        },
    }
}

/// Set at launch (`mpirun -x MULTIPROC_WORKERS_PER_RANK=8 ...`) to choose
/// the worker processes per rank of pools that do not set `workers(n)`.
const WORKERS_PER_RANK: &str = "MULTIPROC_WORKERS_PER_RANK";

/// Worker processes per rank by default: [`WORKERS_PER_RANK`] if set, else
/// this node's CPUs shared among the worker ranks on it.
fn default_workers() -> usize {
    static DEFAULT: OnceLock<usize> = OnceLock::new();
    *DEFAULT.get_or_init(|| {
        if let Some(n) = std::env::var(WORKERS_PER_RANK)
            .ok()
            .and_then(|v| v.trim().parse::<usize>().ok())
            .filter(|&n| n > 0)
        {
            return n;
        }
        let cpus = std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get);
        let local: usize = [
            "OMPI_COMM_WORLD_LOCAL_SIZE",
            "MPI_LOCALNRANKS",
            "SLURM_NTASKS_PER_NODE",
        ]
        .iter()
        .find_map(|v| std::env::var(v).ok()?.parse().ok())
        .unwrap_or(1);
        // Rank 0 mostly waits; do not count it against the node's CPUs.
        let ranks = if local > 1 { local - 1 } else { 1 };
        (cpus / ranks).max(1)
    })
}

fn host_name() -> String {
    mpi::environment::processor_name().unwrap_or_else(|_| "an unknown host".to_owned())
}

/// Queues a `RUN` batch on the local pool; its replies go to `tx`.
fn run_batch(message: &[u8], pool: Option<&RankPool>, tx: &Sender<(u64, Reply)>) {
    let parsed = (|| {
        let mut cur = proto::Cursor(message.get(1..)?);
        let batch = cur.u64().ok()?;
        let count = cur.u32().ok()?;
        let len = cur.u32().ok()? as usize;
        let name = std::str::from_utf8(cur.take(len).ok()?).ok()?;
        Some((batch, count, name, cur.rest()))
    })();
    let Some((batch, count, name, payload)) = parsed else {
        return; // rank 0 built it: cannot happen short of memory corruption
    };
    let fail = |failure| {
        let _ = tx.send((
            batch,
            Reply {
                first_index: Some(0),
                count,
                outcome: Outcome::Failed(failure),
            },
        ));
    };
    let Some(p) = pool else {
        fail(Failure::Closed);
        return;
    };
    let Some(entry) = registry::lookup(name) else {
        fail(Failure::UnknownWorker {
            name: name.to_owned(),
            known: registry::known_names(),
        });
        return;
    };
    let sink = Sink::Relay(batch, tx.clone());
    let mut job = Job::new(entry.name(), payload.to_vec().into(), count, sink);
    job.first_index = Some(0);
    job.retries = p.retries;
    job.panic_retries = p.panic_retries;
    p.pool.shared.queue.push(job);
}

/// Sends every local reply that is ready; `true` if there was one.
fn forward(
    comm: &SimpleCommunicator,
    rx: &Receiver<(u64, Reply)>,
    out: &mut Outbox,
    relay: &mut Vec<u8>,
) -> bool {
    let mut any = false;
    while let Ok(reply) = rx.try_recv() {
        send_reply(comm, out, relay, reply);
        any = true;
    }
    any
}

fn send_reply(
    comm: &SimpleCommunicator,
    out: &mut Outbox,
    relay: &mut Vec<u8>,
    (batch, reply): (u64, Reply),
) {
    encode_reply(relay, batch, reply);
    out.send(comm, 0, std::mem::take(relay));
}

/// Encodes a local reply as a `REPLY` for rank 0 into `relay` (cleared
/// first).
fn encode_reply(relay: &mut Vec<u8>, batch: u64, reply: Reply) {
    let offset = reply.first_index.unwrap_or(0) as u32;
    relay.clear();
    relay.push(REPLY);
    relay.extend_from_slice(&batch.to_le_bytes());
    relay.extend_from_slice(&offset.to_le_bytes());
    relay.extend_from_slice(&reply.count.to_le_bytes());
    let failure = match reply.outcome {
        Outcome::Done { dense: true, .. } => Some(Failure::Protocol(
            "a relayed batch came back dense (a bug)".to_owned(),
        )),
        Outcome::Done {
            data,
            start,
            elapsed_ns,
            dense: false,
        } => {
            let results = &data[start..];
            if i32::try_from(REPLY_HEAD + 8 + results.len()).is_ok() {
                relay.push(REPLY_DONE);
                relay.extend_from_slice(&elapsed_ns.to_le_bytes());
                relay.extend_from_slice(results);
                None
            } else {
                Some(Failure::Protocol(format!(
                    "results of {} bytes are larger than one MPI message can be (2 GiB)",
                    results.len()
                )))
            }
        }
        Outcome::Failed(failure) => Some(failure),
        Outcome::Stored { .. } => Some(Failure::Protocol(
            "a relayed batch was stored in place (a bug)".to_owned(),
        )),
        Outcome::Local(error) => Some(Failure::Protocol(
            error.map_or_else(|| "lost result".to_owned(), |e| e.to_string()),
        )),
    };
    if let Some(failure) = failure {
        relay.truncate(REPLY_HEAD - 1);
        relay.push(REPLY_FAILED);
        relay.extend(postcard::to_stdvec(&failure).unwrap_or_default());
    }
}

impl PoolBuilder {
    /// Starts a pool whose workers are the other ranks of the MPI job this
    /// program runs in (feature `mpi`): Python's `MPIPoolExecutor`.
    ///
    /// Start the program with an MPI launcher, e.g. `mpirun -n 3 ./app` or
    /// `srun --mpi=pmix -n 3 ./app`. `#[entry]` makes rank 0 run `main`;
    /// every other rank serves this pool. Each worker rank runs its batches
    /// in a local pool of [`workers`](PoolBuilder::workers) child processes
    /// (default `0`: the `MULTIPROC_WORKERS_PER_RANK` environment variable
    /// if the launcher sets it, else that node's CPUs shared among the worker
    /// ranks on it),
    /// so a task that crashes fails alone and its rank keeps serving. The
    /// pool's size ([`Pool::workers`]) is the sum over the ranks, and batch
    /// sizes follow from it as on one machine.
    ///
    /// The other options apply on every rank: the initializer runs in each
    /// worker process (its result is checked when the pool opens), and
    /// `task_timeout`, `retries`, `retry_panics`, `max_tasks_per_worker`
    /// and `max_worker_memory` work as on a local pool. Arguments that hold
    /// handles (queues, pipes, shared memory) cannot cross machines and
    /// fail that task. [`Task::cancel`] cannot interrupt a task that a
    /// rank already runs: it settles the task, and the result is dropped.
    /// One MPI pool may be open at a time; dropping it frees the ranks for
    /// the next.
    ///
    /// # Errors
    ///
    /// [`Mpi`](ErrorKind::Mpi) if the program was not started by an MPI
    /// launcher, the job has a single rank, the MPI library lacks
    /// `MPI_THREAD_SERIALIZED`, another MPI pool is open, or a rank cannot
    /// start its worker processes; [`Initializer`](ErrorKind::Initializer)
    /// if the initializer fails on a rank; and the errors of
    /// [`build`](PoolBuilder::build).
    pub fn build_mpi(self) -> Result<Pool> {
        open(self)
    }
}

impl Pool {
    /// A pool on the other ranks of the MPI job, with default options:
    /// [`PoolBuilder::build_mpi`].
    ///
    /// # Errors
    ///
    /// As [`PoolBuilder::build_mpi`].
    pub fn mpi() -> Result<Pool> {
        Pool::builder().build_mpi()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_yields_first_then_sleeps_up_to_its_cap() {
        let mut b = Backoff::new(Backoff::BUSY);
        assert_eq!(b.pause(), Duration::ZERO);
        let waits: Vec<Duration> = (0..100).map(|_| b.pause()).collect();
        assert!(waits.windows(2).all(|w| w[0] <= w[1]), "{waits:?}");
        assert!(waits.contains(&Duration::from_micros(5)), "{waits:?}");
        assert_eq!(b.pause(), Backoff::BUSY);
        b.cap = Backoff::IDLE;
        assert_eq!(b.pause(), Backoff::IDLE);
        b.reset();
        assert_eq!(b.pause(), Duration::ZERO);
    }

    #[test]
    fn run_message_refuses_handles_and_lays_out_the_batch() {
        let (tx, _rx) = mpsc::channel();
        let mut job = Job::new("w", vec![9, 9].into(), 2, Sink::Relay(1, tx));
        job.first_index = Some(0);
        let m = run_message(&job, 7).expect("no handles");
        assert_eq!(m[0], RUN);
        assert_eq!(u64::from_le_bytes(m[1..9].try_into().unwrap()), 7);
        assert_eq!(u32::from_le_bytes(m[9..13].try_into().unwrap()), 2);
        assert_eq!(&m[17..18], b"w");
        assert_eq!(&m[18..], &[9, 9]);

        let null = std::fs::File::open("/dev/null").expect("open /dev/null");
        let mut with_handle = job;
        with_handle.fds = Job::fd_table(vec![null.into()]);
        match run_message(&with_handle, 8) {
            Err(Failure::Protocol(why)) => assert!(why.contains("handles"), "{why}"),
            other => panic!("a handle was sent: {:?}", other.map(|m| m.len())),
        }
    }

    /// A `REPLY` as a rank sends it, for `items` framed results.
    fn done_reply(batch: u64, offset: u32, results: &[Vec<u8>], elapsed_ns: u64) -> Vec<u8> {
        let mut data = Vec::new();
        for r in results {
            codec::put_raw_item(&mut data, codec::ITEM_OK, r);
        }
        let mut relay = Vec::new();
        encode_reply(
            &mut relay,
            batch,
            Reply {
                first_index: Some(u64::from(offset)),
                count: results.len() as u32,
                outcome: Outcome::Done {
                    data: data.into(),
                    start: 0,
                    elapsed_ns,
                    dense: false,
                },
            },
        );
        relay
    }

    fn flight(batch: u64, rank: i32, items: u32) -> (Flight, Receiver<(u64, Reply)>) {
        let (tx, rx) = mpsc::channel();
        let mut job = Job::new("w", vec![0; 4].into(), items, Sink::Relay(batch, tx));
        job.first_index = Some(0);
        let flight = Flight {
            job,
            slot: 3,
            rank,
            answered: Answered::new(items),
        };
        (flight, rx)
    }

    /// `(first index, count, failed with Protocol?)` of each part delivered.
    fn parts(rx: &Receiver<(u64, Reply)>) -> Vec<(u64, u32, bool)> {
        rx.try_iter()
            .map(|(_, r)| {
                let failed = match &r.outcome {
                    Outcome::Failed(Failure::Protocol(why)) => {
                        assert!(why.contains("rank 1"), "{why}");
                        true
                    }
                    Outcome::Done { .. } => false,
                    _ => panic!("unexpected outcome"),
                };
                (r.first_index.unwrap(), r.count, failed)
            })
            .collect()
    }

    #[test]
    fn a_reply_outside_its_batch_fails_the_batch() {
        let (f, rx) = flight(7, 1, 4);
        let mut flights = HashMap::from([(7, f)]);
        let forged = done_reply(7, 3, &vec![vec![1]; 5], 0);
        assert_eq!(deliver_reply(1, &forged, &mut flights), Some(3));
        assert!(flights.is_empty());
        assert_eq!(parts(&rx), [(0, 4, true)]);
    }

    #[test]
    fn overlapping_parts_fail_only_what_is_unanswered() {
        let (f, rx) = flight(7, 1, 4);
        let mut flights = HashMap::from([(7, f)]);
        let first = done_reply(7, 0, &[vec![1], vec![2]], 0);
        assert_eq!(deliver_reply(1, &first, &mut flights), None);
        let again = done_reply(7, 1, &[vec![1], vec![2]], 0);
        assert_eq!(deliver_reply(1, &again, &mut flights), Some(3));
        assert_eq!(parts(&rx), [(0, 2, false), (2, 2, true)]);
    }

    #[test]
    fn short_results_and_other_ranks_replies() {
        let (f, rx) = flight(7, 1, 2);
        let mut flights = HashMap::from([(7, f)]);
        // Rank 2 cannot answer (or fail) rank 1's batch.
        let mut reply = done_reply(7, 0, &[vec![1], vec![2]], 0);
        assert_eq!(deliver_reply(2, &reply, &mut flights), None);
        assert!(parts(&rx).is_empty());
        // Announces 2 results and holds 1 and a half.
        reply.truncate(reply.len() - 1);
        assert_eq!(deliver_reply(1, &reply, &mut flights), Some(3));
        assert_eq!(parts(&rx), [(0, 2, true)]);
        // A DONE cut inside its time.
        let (f, rx) = flight(8, 1, 1);
        let mut flights = HashMap::from([(8, f)]);
        let reply = done_reply(8, 0, &[vec![1]], 0);
        assert_eq!(
            deliver_reply(1, &reply[..REPLY_HEAD + 3], &mut flights),
            Some(3)
        );
        assert_eq!(parts(&rx), [(0, 1, true)]);
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(256))]

        /// Whatever a rank sends: no panic, and what is accepted lies
        /// inside the batch, answers no item twice, and holds exactly the
        /// results it announced.
        #[test]
        fn arbitrary_replies_are_checked(
            mut bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..96),
            as_reply in proptest::prelude::any::<bool>(),
            items in 0u32..80,
            before in proptest::collection::vec((0u32..100, 0u32..100), 0..4),
        ) {
            if as_reply && !bytes.is_empty() {
                bytes[0] = REPLY;
            }
            let mut answered = Answered::new(items);
            for (offset, count) in before {
                let _ = answered.claim(offset, count);
            }
            let left = answered.left;
            let Some(head) = reply_head(&bytes) else { return Ok(()) };
            match check_reply(&bytes, &head, &mut answered) {
                Ok(body) => {
                    proptest::prop_assert!(u64::from(head.offset) + u64::from(head.count) <= u64::from(items));
                    proptest::prop_assert_eq!(answered.left, left - head.count);
                    if let ReplyBody::Done { start, .. } = body {
                        let mut rest = &bytes[start..];
                        for _ in 0..head.count {
                            proptest::prop_assert!(codec::next_item(&mut rest).is_some());
                        }
                        proptest::prop_assert!(rest.is_empty());
                    }
                }
                Err(_) => proptest::prop_assert_eq!(answered.left, left),
            }
        }

        /// Replies as a rank encodes them, for any split of a batch into
        /// parts, are accepted with their results intact; answering any
        /// part again is refused.
        #[test]
        fn replies_round_trip(
            results in proptest::collection::vec(
                proptest::collection::vec(proptest::prelude::any::<u8>(), 0..20), 1..40),
            cuts in proptest::collection::vec(0usize..40, 0..5),
            elapsed in proptest::prelude::any::<u64>(),
        ) {
            let items = results.len() as u32;
            let mut bounds: Vec<usize> = cuts.into_iter().map(|c| c % results.len()).collect();
            bounds.extend([0, results.len()]);
            bounds.sort_unstable();
            bounds.dedup();
            let mut answered = Answered::new(items);
            for w in bounds.windows(2) {
                let bytes = done_reply(9, w[0] as u32, &results[w[0]..w[1]], elapsed);
                let head = reply_head(&bytes).unwrap();
                proptest::prop_assert_eq!(head.batch, 9);
                proptest::prop_assert_eq!(head.offset, w[0] as u32);
                let body = check_reply(&bytes, &head, &mut answered);
                let Ok(ReplyBody::Done { elapsed_ns, start }) = body else {
                    return Err(proptest::test_runner::TestCaseError::fail(format!("{body:?}")));
                };
                proptest::prop_assert_eq!(elapsed_ns, elapsed);
                let mut rest = &bytes[start..];
                for r in &results[w[0]..w[1]] {
                    let (status, body, _) = codec::next_item(&mut rest).unwrap();
                    proptest::prop_assert_eq!(status, codec::ITEM_OK);
                    proptest::prop_assert_eq!(body, &r[..]);
                }
                proptest::prop_assert!(check_reply(&bytes, &head, &mut answered).is_err());
            }
            proptest::prop_assert_eq!(answered.left, 0);
            proptest::prop_assert!(answered.unanswered().is_empty());
        }
    }
}
