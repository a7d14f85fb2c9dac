//! This process's place in an MPI job: whether a launcher started it, and
//! what MPI gave it in `#[entry]`.

use std::sync::OnceLock;
use std::sync::atomic::AtomicBool;

use mpi::topology::SimpleCommunicator;

/// What MPI gave this process in `#[entry]`.
pub(super) struct World {
    /// A private duplicate of `MPI_COMM_WORLD`: multiproc's traffic never
    /// mixes with the program's own.
    pub(super) comm: SimpleCommunicator,
    pub(super) size: i32,
    /// The library grants calls from any one thread at a time (rank 0's
    /// MPI thread is not the main thread).
    pub(super) threads_ok: bool,
}

// SAFETY: `comm` is a handle to a process-wide MPI communicator; MPI was
// initialised with at least `MPI_THREAD_SERIALIZED` (checked through
// `threads_ok` before rank 0 uses it off the main thread), and every use is
// serialised: worker ranks use it on the main thread only, rank 0 from the
// one thread that holds `POOL_OPEN`, or at exit after that thread ended.
unsafe impl Send for World {}
// SAFETY: as above.
unsafe impl Sync for World {}

pub(super) static WORLD: OnceLock<World> = OnceLock::new();

/// Set while rank 0 has an MPI pool open (one at a time).
pub(super) static POOL_OPEN: AtomicBool = AtomicBool::new(false);

/// Environment variables that MPI launchers set in the processes they start.
const LAUNCHER_VARS: [&str; 4] = ["OMPI_COMM_WORLD_SIZE", "PMIX_RANK", "PMI_RANK", "PMI_SIZE"];

/// `true` if an MPI launcher (`mpirun`, `mpiexec`, `srun --mpi=...`)
/// started this process.
pub(super) fn launched() -> bool {
    LAUNCHER_VARS.iter().any(|v| std::env::var_os(v).is_some()) || slurm_tasks() > 1
}

/// How many tasks the enclosing Slurm job step has (`0` outside Slurm).
pub(super) fn slurm_tasks() -> u64 {
    std::env::var("SLURM_STEP_NUM_TASKS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}
