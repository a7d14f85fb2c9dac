//! Estimates π by throwing random points at the unit square in a pool of
//! worker processes, each task with a random generator seeded of its own —
//! and prints the seeds, so you can see that they differ.
//!
//! The Python it ports (the tutorials' Monte Carlo benchmark, and their
//! pitfall "re-seed the random generator in every child"):
//!
//! ```python
//! def monte_carlo_pi(num_samples):
//!     inside = 0
//!     random.seed()  # every process must re-seed!
//!     for _ in range(num_samples):
//!         x = random.random()
//!         y = random.random()
//!         if x * x + y * y <= 1.0:
//!             inside += 1
//!     return inside
//!
//! if __name__ == "__main__":
//!     with Pool(num_workers) as pool:
//!         results = pool.map(monte_carlo_pi, [samples_per_worker] * num_workers)
//!     pi = 4.0 * sum(results) / total_samples
//! ```
//!
//! ```text
//! cargo run --release --example monte_carlo_pi              # 40 million points
//! cargo run --release --example monte_carlo_pi -- 100000000
//! ```

use std::collections::HashSet;
use std::process::ExitCode;
use std::time::Instant;

use multiproc::{Pool, entry, worker};
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

const DEFAULT_SAMPLES: u64 = 40_000_000;

/// The samples are split into this many tasks: more than there are worker
/// processes, so that each process runs several tasks.
const TASKS: u32 = 8;

/// What one task reports: who drew the points, from which seed, and how
/// many fell inside the quarter circle.
type Draw = (u32, u64, u64);

/// Draws `samples` points in [0, 1)² and counts those inside the quarter
/// circle of radius 1; returns the pid, the seed and the count.
#[worker]
fn monte_carlo_pi(task: u32, samples: u64) -> Draw {
    // Why seed here, from the task index and the pid?
    //
    // In Python, `fork` copies the parent's `random` state into every child,
    // so unless each child calls `random.seed()` they all draw the *same*
    // "random" points — the tutorials' pitfall. A multiproc worker is a
    // fresh start of this program, not a fork, so no generator state is
    // inherited. But a generator seeded with a constant would make every
    // task draw the same points again, and 8 copies of one sample are no
    // better than one. So each task seeds its own generator, from:
    // - the task index: distinct for every task of this run, even for two
    //   tasks that run one after the other in the same worker process;
    // - the pid: differs from run to run, as Python's argument-less
    //   `random.seed()` does. Use a fixed number instead to make a run
    //   reproducible.
    let pid = std::process::id();
    let seed = (u64::from(pid) << 32) | u64::from(task);
    let mut rng = StdRng::seed_from_u64(seed);
    let mut inside = 0;
    for _ in 0..samples {
        let x: f64 = rng.random();
        let y: f64 = rng.random();
        if x * x + y * y <= 1.0 {
            inside += 1;
        }
    }
    (pid, seed, inside)
}

#[entry]
fn main() -> ExitCode {
    let samples = match std::env::args()
        .nth(1)
        .map(|a| a.replace('_', "").parse::<u64>())
    {
        None => DEFAULT_SAMPLES,
        Some(Ok(n)) if n >= u64::from(TASKS) => n,
        Some(_) => {
            eprintln!(
                "usage: monte_carlo_pi [SAMPLES]  (at least {TASKS}, default {DEFAULT_SAMPLES})"
            );
            return ExitCode::from(2);
        }
    };
    match run(samples) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(samples: u64) -> Result<(), multiproc::Error> {
    let t = Instant::now();
    let pool = Pool::new(0)?;
    println!(
        "estimating π from {samples} random points: {TASKS} tasks on {} worker processes",
        pool.workers()
    );

    // Split the samples into TASKS nearly equal parts (Python's starmap).
    let per_task = samples / u64::from(TASKS);
    let tasks: Vec<(u32, u64)> = (0..TASKS)
        .map(|i| {
            let extra = u64::from(u64::from(i) < samples % u64::from(TASKS));
            (i, per_task + extra)
        })
        .collect();
    let draws = pool.map(monte_carlo_pi, tasks.clone())?;

    let mut inside = 0;
    for ((task, n), (pid, seed, hits)) in tasks.iter().zip(&draws) {
        println!(
            "  task {task}  pid {pid:>7}  seed {seed:#018x}  {hits:>9} of {n} inside  (π ≈ {:.5})",
            4.0 * *hits as f64 / *n as f64
        );
        inside += hits;
    }
    let seeds: HashSet<u64> = draws.iter().map(|&(_, seed, _)| seed).collect();
    assert_eq!(
        seeds.len(),
        draws.len(),
        "every task must have its own seed"
    );

    let estimate = 4.0 * inside as f64 / samples as f64;
    let error = (estimate - std::f64::consts::PI).abs();
    println!(
        "π ≈ {estimate:.6}  (off by {error:.6}; {:.3} s including the pool's start)",
        t.elapsed().as_secs_f64()
    );

    // The estimate's standard deviation is 4·√(p(1−p)/N) with p = π/4, about
    // 1.642/√N: 0.00026 for the default 40 million points, so 0.01 is far out
    // of reach of bad luck — only a broken sample (say, every task drawing
    // the same points, or none) misses it. Fewer points get 6 deviations.
    let tolerance = (6.0 * 1.642 / (samples as f64).sqrt()).max(0.01);
    assert!(
        error < tolerance,
        "π ≈ {estimate} is off by {error}, more than {tolerance}"
    );
    Ok(())
}
