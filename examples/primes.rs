//! Counts the primes in a range twice — in this process, then with a pool of
//! worker processes — and prints both times and the speedup.
//!
//! This is the quick start of the README, and a port of the classic Python
//! tutorial example:
//!
//! ```python
//! def is_prime(n):
//!     if n < 2:
//!         return False
//!     for i in range(2, int(math.sqrt(n)) + 1):
//!         if n % i == 0:
//!             return False
//!     return True
//!
//! if __name__ == "__main__":
//!     with Pool(4) as pool:
//!         results = pool.map(is_prime, numbers)
//! ```
//!
//! ```text
//! cargo run --release --example primes                     # 1_000_000..7_000_000
//! cargo run --release --example primes -- 2000000 2100000  # START END
//! ```

use std::process::ExitCode;
use std::time::{Duration, Instant};

use multiproc::{Pool, entry, worker};

const DEFAULT_START: u64 = 1_000_000;
const DEFAULT_END: u64 = 7_000_000;

/// Whether `n` is prime, by trial division with every `i` up to √n:
/// deliberately slow, so that there is work worth spreading.
#[worker]
fn is_prime(n: u64) -> bool {
    if n < 2 {
        return false;
    }
    for i in 2..=n.isqrt() {
        if n % i == 0 {
            return false;
        }
    }
    true
}

// `#[entry]` makes `main` safe to start worker processes from: the workers
// are this program started again, and in them the guard serves tasks
// instead of running `main`.
#[entry]
fn main() -> ExitCode {
    let (start, end) = match parse_args() {
        Ok(range) => range,
        Err(message) => {
            eprintln!(
                "{message}\nusage: primes [START [END]]  (default {DEFAULT_START} {DEFAULT_END})"
            );
            return ExitCode::from(2);
        }
    };
    match run(start, end) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(start: u64, end: u64) -> Result<(), multiproc::Error> {
    println!("counting the primes in {start}..{end}");

    // An ordinary call: `is_prime` is still a plain function.
    let t = Instant::now();
    let sequential = (start..end).filter(|&n| is_prime(n)).count();
    let sequential_time = t.elapsed();
    println!(
        "  sequential        {:>8}   {sequential} primes",
        secs(sequential_time)
    );

    // The same function, in worker processes: one per CPU. The time includes
    // starting the pool, as Python's `with Pool() as pool:` would.
    let t = Instant::now();
    let pool = Pool::new(0)?;
    let startup = t.elapsed();
    let flags: Vec<bool> = pool.map(is_prime, start..end)?;
    let parallel = flags.iter().filter(|&&prime| prime).count();
    let parallel_time = t.elapsed();
    println!(
        "  pool of {:<2}        {:>8}   {parallel} primes  (starting the workers: {})",
        pool.workers(),
        secs(parallel_time),
        secs(startup),
    );

    assert_eq!(
        sequential, parallel,
        "the pool must find exactly the primes the sequential loop found"
    );
    println!(
        "  speedup           {:>7.2}×",
        sequential_time.as_secs_f64() / parallel_time.as_secs_f64()
    );
    Ok(())
}

fn parse_args() -> Result<(u64, u64), String> {
    let mut args = std::env::args().skip(1);
    let mut next = |default: u64| -> Result<u64, String> {
        match args.next() {
            None => Ok(default),
            Some(a) => a
                .replace('_', "")
                .parse()
                .map_err(|e| format!("`{a}` is not a number: {e}")),
        }
    };
    let start = next(DEFAULT_START)?;
    let end = next(DEFAULT_END.max(start))?;
    if args.next().is_some() {
        return Err("too many arguments".to_owned());
    }
    if end < start {
        return Err(format!("END ({end}) is below START ({start})"));
    }
    Ok((start, end))
}

fn secs(d: Duration) -> String {
    format!("{:.3} s", d.as_secs_f64())
}
