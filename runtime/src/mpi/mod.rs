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
//! The parts: [`world`] is this process's place in the MPI job, [`message`]
//! the messages between rank 0 and a worker rank, [`transport`] how they
//! travel, [`root`] rank 0's side of a pool, [`reply`] rank 0's reading of a
//! rank's reply, and [`rank`] what a worker rank runs.

mod message;
mod rank;
mod reply;
mod root;
mod transport;
mod world;

use std::sync::atomic::Ordering;

use mpi::environment::Threading;
use mpi::topology::{Communicator, SimpleCommunicator};

use crate::error::Result;
use crate::pool::{Pool, PoolBuilder};

use message::EXIT;
use rank::serve_rank;
use root::open;
use transport::Outbox;
use world::{POOL_OPEN, WORLD, World, launched, slurm_tasks};

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
    // Finalised by hand (`finish` on rank 0, `serve_rank` on exit elsewhere), after
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
    /// fail that task. [`Task::cancel`](crate::Task::cancel) cannot
    /// interrupt a task that a rank already runs: it settles the task, and
    /// the result is dropped.
    /// One MPI pool may be open at a time; dropping it frees the ranks for
    /// the next.
    ///
    /// # Errors
    ///
    /// [`Mpi`](crate::error::ErrorKind::Mpi) if the program was not started
    /// by an MPI launcher, the job has a single rank, the MPI library lacks
    /// `MPI_THREAD_SERIALIZED`, another MPI pool is open, or a rank cannot
    /// start its worker processes;
    /// [`Initializer`](crate::error::ErrorKind::Initializer) if the
    /// initializer fails on a rank; and the errors of
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
