//! Counts the primes in a range with a local pool, then with a pool on the
//! ranks of an MPI job, and checks that both find the same count: the
//! scale-out version of `primes`, and a port of the `mpi4py.futures` tutorial:
//!
//! ```python
//! from mpi4py.futures import MPIPoolExecutor
//!
//! if __name__ == "__main__":
//!     with MPIPoolExecutor() as executor:
//!         flags = executor.map(is_prime, numbers, chunksize=...)
//! ```
//!
//! ```text
//! cargo build --release --features mpi --example mpi_primes
//! mpirun -n 3 target/release/examples/mpi_primes                   # 1_000_000..4_000_000
//! mpirun -n 3 target/release/examples/mpi_primes -- 2000000 2100000
//! mpirun --hostfile hosts -n 9 target/release/examples/mpi_primes  # across machines
//! srun --mpi=pmix -N 4 -n 5 target/release/examples/mpi_primes     # under Slurm
//! ```
//!
//! Rank 0 runs `main`; ranks 1.. each run a local pool of worker processes
//! for the MPI pool (`Pool::mpi()`).

use std::process::ExitCode;
use std::time::{Duration, Instant};

use multiproc::{Pool, entry, worker};

const DEFAULT_START: u64 = 1_000_000;
const DEFAULT_END: u64 = 4_000_000;

/// Whether `n` is prime, by trial division with every `i` up to √n.
#[worker]
fn is_prime(n: u64) -> bool {
    n >= 2 && (2..=n.isqrt()).all(|i| n % i != 0)
}

// Under `mpirun`, `#[entry]` makes rank 0 run `main` and every other rank
// serve the MPI pool; outside MPI it only guards the local pool's workers.
#[entry]
fn main() -> ExitCode {
    let mut args = std::env::args().skip(1).filter(|a| a != "--");
    let mut next = |default: u64| {
        args.next()
            .map_or(Ok(default), |a| a.replace('_', "").parse())
    };
    let (Ok(start), Ok(end)) = (next(DEFAULT_START), next(DEFAULT_END)) else {
        eprintln!("usage: mpi_primes [START [END]]  (default {DEFAULT_START} {DEFAULT_END})");
        return ExitCode::from(2);
    };
    match run(start, end.max(start)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(start: u64, end: u64) -> Result<(), multiproc::Error> {
    println!("counting the primes in {start}..{end}");

    let t = Instant::now();
    let local = Pool::new(0)?;
    let local_count = count(&local, start, end)?;
    println!(
        "  local pool of {:<3} {:>8}   {local_count} primes",
        local.workers(),
        secs(t.elapsed())
    );
    drop(local);

    // The same call on the MPI job's other ranks.
    let t = Instant::now();
    let pool = Pool::mpi()?;
    let startup = t.elapsed();
    let mpi_count = count(&pool, start, end)?;
    println!(
        "  MPI pool of {:<3}   {:>8}   {mpi_count} primes  (opening the pool: {})",
        pool.workers(),
        secs(t.elapsed()),
        secs(startup),
    );

    assert_eq!(
        local_count, mpi_count,
        "the MPI pool must find exactly the primes the local pool found"
    );
    println!("  same count: {mpi_count}");
    Ok(())
}

fn count(pool: &Pool, start: u64, end: u64) -> Result<usize, multiproc::Error> {
    let flags = pool.map(is_prime, start..end)?;
    Ok(flags.into_iter().filter(|&p| p).count())
}

fn secs(d: Duration) -> String {
    format!("{:.3} s", d.as_secs_f64())
}
