//! Factorizes large numbers in worker processes and prints each result as
//! soon as it is ready: `Pool::submit` and `multiproc::as_completed`, the
//! Rust side of Python's `ProcessPoolExecutor.submit` + `as_completed`.
//!
//! The Python it ports:
//!
//! ```python
//! with ProcessPoolExecutor(max_workers=4) as executor:
//!     futures = {executor.submit(factorize, n): n for n in numbers}
//!     for future in as_completed(futures):
//!         n = futures[future]
//!         factors = future.result()
//!         print(f"{n} = {' × '.join(map(str, factors))}")
//! ```
//!
//! ```text
//! cargo run --release --example futures
//! ```

use std::time::Instant;

use multiproc::{Pool, Task, entry, worker};

/// The numbers of the tutorial (primes near 10^14), led by a much larger
/// prime that takes longest, and followed by two with small factors, so that
/// the completion order differs from the submission order.
const NUMBERS: [u64; 9] = [
    9_007_199_254_740_881, // 2^53 - 111, prime
    112_272_535_095_293,
    112_582_705_942_171,
    112_272_535_095_293,
    115_280_095_190_773,
    115_797_848_077_099,
    117_450_548_693_743,
    1_099_726_899_285_419, // 3306091 × 332636609
    600_851_475_143,       // 71 × 839 × 1471 × 6857
];

/// The prime factors of `n` in ascending order, by trial division.
#[worker]
fn factorize(mut n: u64) -> Vec<u64> {
    let mut factors = Vec::new();
    let mut d = 2;
    while d * d <= n {
        while n % d == 0 {
            factors.push(d);
            n /= d;
        }
        d += 1;
    }
    if n > 1 {
        factors.push(n);
    }
    factors
}

#[entry]
fn main() -> Result<(), multiproc::Error> {
    let pool = Pool::new(0)?;
    println!(
        "factorizing {} numbers with {} worker processes",
        NUMBERS.len(),
        pool.workers()
    );
    let start = Instant::now();

    // `submit` returns at once with a `Task` (Python's `Future`); the call
    // runs in a worker process.
    let tasks: Vec<Task<Vec<u64>>> = NUMBERS.iter().map(|&n| pool.submit(factorize, n)).collect();

    // `as_completed` yields each result as its task finishes, with the task's
    // position in the input — the role of Python's `{future: n}` dict.
    for (i, factors) in multiproc::as_completed(tasks) {
        let n = NUMBERS[i];
        let factors = factors?;
        let product: u64 = factors.iter().product();
        assert_eq!(product, n, "the factors of {n} must multiply back to it");
        let shown: Vec<String> = factors.iter().map(u64::to_string).collect();
        println!(
            "[{:>6.3} s] #{i} {n} = {}",
            start.elapsed().as_secs_f64(),
            shown.join(" × ")
        );
    }
    Ok(())
}
