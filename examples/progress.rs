//! A progress bar over `imap_unordered`: Collatz stopping times of the
//! numbers up to 1,000,000, computed in worker processes, with an
//! `indicatif` bar that advances as results come in (in the order they
//! finish). Each result is checked against the same function run here.
//!
//! The bar is drawn only when stderr is a terminal.
//!
//! The Python it ports:
//!
//! ```python
//! with Pool() as pool:
//!     for steps in tqdm(pool.imap_unordered(collatz_steps, range(1, n + 1)), total=n):
//!         ...
//! ```
//!
//! ```text
//! cargo run --release --example progress
//! ```

use std::io::IsTerminal;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use multiproc::{Pool, entry, worker};

const LIMIT: u32 = 1_000_000;

/// How many steps of `n → n / 2` (even) or `n → 3n + 1` (odd) take
/// `start` to 1.
#[worker]
fn collatz_steps(start: u32) -> u32 {
    let mut n = u64::from(start);
    let mut steps = 0;
    while n > 1 {
        n = if n % 2 == 0 { n / 2 } else { 3 * n + 1 };
        steps += 1;
    }
    steps
}

#[entry]
fn main() -> Result<(), multiproc::Error> {
    let pool = Pool::new(0)?;
    // A `Range<u32>` knows its length, and so does the iterator over its
    // results: the bar's length.
    let results = pool.imap_unordered(collatz_steps, 1..LIMIT + 1).indexed();

    let bar = ProgressBar::new(results.len() as u64);
    if !std::io::stderr().is_terminal() {
        bar.set_draw_target(ProgressDrawTarget::hidden());
    }
    bar.set_style(
        ProgressStyle::with_template("{bar:40} {pos}/{len} [{elapsed_precise}, eta {eta}]")
            .expect("a valid template"),
    );

    let mut steps = vec![None; LIMIT as usize];
    for (i, r) in results {
        // `i` is the position in the input: the number `i + 1`.
        steps[i] = Some(r?);
        bar.inc(1);
    }
    bar.finish();

    // Every number answered once, with what the function computes here.
    for (i, got) in steps.iter().enumerate() {
        let n = i as u32 + 1;
        assert_eq!(*got, Some(collatz_steps(n)), "the steps of {n}");
    }
    let (longest, n) = steps
        .iter()
        .zip(1..)
        .map(|(s, n)| (s.expect("checked above"), n))
        .max()
        .expect("numbers to check");
    println!(
        "{} results over {} worker processes; the longest: {n} takes {longest} steps",
        steps.len(),
        pool.workers()
    );
    assert_eq!(bar.position(), u64::from(LIMIT));
    Ok(())
}
