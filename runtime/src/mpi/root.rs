//! Rank 0's side of an MPI pool: opening it on every worker rank, the
//! `multiproc-mpi` thread that feeds the ranks batches and delivers their
//! replies, and closing the ranks' pools.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use crate::conn::outcome::{Failure, Outcome};
use crate::conn::runner::Runner;
use crate::error::{Error, ErrorKind, Result};
use crate::pool::job::{Job, JobQueue, Next};
use crate::pool::{Pool, PoolBuilder, PoolShared};
use crate::registry;

use super::message::{CLOSE, CLOSED, Config, OPEN, OPENED, Opened, RUN, TERMINATE};
use super::reply::{Answered, Flight, deliver_reply, fail_unanswered};
use super::transport::{Backoff, Outbox, try_receive};
use super::world::{POOL_OPEN, WORLD, World};

/// Batches kept in flight per worker process of a rank, so that its local
/// queue does not run dry while a reply travels back.
const IN_FLIGHT_PER_WORKER: usize = 2;

/// The most worker processes rank 0 believes a rank has, whatever it
/// answers: the count only sizes what is kept in flight, and must not
/// overflow a sum.
const MAX_RANK_WORKERS: usize = 1 << 16;

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

/// Opens a pool on the worker ranks: [`PoolBuilder::build_mpi`].
pub(crate) fn open(builder: PoolBuilder) -> Result<Pool> {
    if !crate::guard::guard_installed() {
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
        memory_limit: builder.memory_limit,
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
        queue: JobQueue::new(),
        initializer,
        max_tasks_per_worker: builder.max_tasks_per_worker,
        test_name: None,
        task_timeout: builder.task_timeout,
        retries: builder.retries,
        panic_retries: builder.panic_retries,
        max_worker_rss: builder.max_worker_rss,
        memory_limit: builder.memory_limit,
        runners: Vec::new(),
        slots_alive: AtomicUsize::new(slots.len()),
        dense_batches: false,
        // A rank's events stay on its machine.
        forward_tracing: false,
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

#[cfg(test)]
mod tests {
    use std::sync::mpsc;

    use crate::pool::job::Sink;

    use super::*;

    #[test]
    fn run_message_refuses_handles_and_lays_out_the_batch() {
        let (tx, _rx) = mpsc::channel();
        let mut job = Job::new(
            "w",
            vec![9, 9].into(),
            2,
            Sink::Relay(1, tx, crate::codec::reframe::<u64>),
        );
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
}
