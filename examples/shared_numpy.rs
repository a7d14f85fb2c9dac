//! A large array in shared memory, worked on by pool workers without being
//! copied: the seeds' `shared_memory` + numpy example at scale. The parent
//! fills a `SharedArray<f64>` in place; each worker receives a handle (the
//! memory's descriptor, not the data), reads its chunk at memory speed
//! (numpy's `chunk.sum()`, `.min()`, `.max()`), then doubles it in place
//! (`chunk *= 2`); the parent sees the result in the same memory and
//! checks every element.
//!
//! This is the path for data too large to copy: sending a `Vec<f64>` of the
//! same size to each worker would copy it there and back.
//!
//! ```text
//! cargo run --release --example shared_numpy [MIB]    # default 64 MiB
//! ```

use std::time::Instant;

use multiproc::{Pool, SharedArray};

/// Elements a task works on: 8 MiB of `f64`.
const CHUNK: usize = 1 << 20;

/// The value the parent writes at `index`: an integer plus a half, so that
/// sums of a few million are exact in any order.
fn original(index: usize) -> f64 {
    (index % 1000) as f64 + 0.5
}

/// Sum, minimum, maximum and count of a chunk.
type Stats = (f64, f64, f64, usize);

/// Reads chunk `index` (private, cache-sized copies of it, one at a time)
/// and returns its statistics.
#[multiproc::worker]
fn chunk_stats(array: SharedArray<f64>, index: usize) -> Stats {
    let start = index * CHUNK;
    let end = (start + CHUNK).min(array.len());
    let (mut sum, mut min, mut max) = (0.0, f64::INFINITY, f64::NEG_INFINITY);
    array.read_chunks(start..end, |_, values| {
        for &x in values {
            sum += x;
            min = min.min(x);
            max = max.max(x);
        }
    });
    (sum, min, max, end - start)
}

/// Doubles chunk `index` in place, through an exclusive lease on it.
#[multiproc::worker]
fn double_chunk(array: SharedArray<f64>, index: usize) -> usize {
    let mut chunk = array
        .chunk(CHUNK, index)
        .expect("each chunk is leased once");
    for x in chunk.iter_mut() {
        *x *= 2.0;
    }
    chunk.len()
}

/// Adds up the workers' statistics.
fn total(stats: &[Stats]) -> Stats {
    stats.iter().fold(
        (0.0, f64::INFINITY, f64::NEG_INFINITY, 0),
        |(s, lo, hi, n), &(cs, clo, chi, cn)| (s + cs, lo.min(clo), hi.max(chi), n + cn),
    )
}

#[multiproc::entry]
fn main() -> Result<(), multiproc::Error> {
    let mib: usize = match std::env::args().nth(1) {
        Some(arg) => arg.parse().ok().filter(|&m| m > 0).unwrap_or_else(|| {
            eprintln!("usage: shared_numpy [MIB]   (MIB ≥ 1)");
            std::process::exit(2)
        }),
        None => 64,
    };
    let len = (mib << 20) / size_of::<f64>();

    // The parent puts the data into shared memory: written in place
    // through a lease on the whole array, never held in a Vec.
    let started = Instant::now();
    let array = SharedArray::<f64>::zeroed(len)?;
    for (i, x) in array.lease(0..len)?.iter_mut().enumerate() {
        *x = original(i);
    }
    println!(
        "{len} f64 ({mib} MiB) in shared memory in {:.1?}",
        started.elapsed()
    );

    let pool = Pool::new(0)?;
    let chunks = array.chunk_count(CHUNK);
    let tasks = || (0..chunks).map(|i| (array.clone(), i));

    let started = Instant::now();
    let before = total(&pool.map(chunk_stats, tasks())?);
    println!(
        "workers read {chunks} chunks in {:.1?}: sum {}, min {}, max {}",
        started.elapsed(),
        before.0,
        before.1,
        before.2
    );

    let started = Instant::now();
    let doubled: usize = pool.map(double_chunk, tasks())?.into_iter().sum();
    println!(
        "workers doubled {doubled} elements in place in {:.1?}",
        started.elapsed()
    );
    let after = total(&pool.map(chunk_stats, tasks())?);

    // The parent sees the workers' writes in its own mapping.
    let expected_sum: f64 = (0..len).map(original).sum();
    let mut wrong = None;
    array.read_chunks(.., |at, values| {
        if wrong.is_none() {
            wrong = (at..)
                .zip(values)
                .find(|&(i, &x)| x != 2.0 * original(i))
                .map(|(i, &x)| (i, x));
        }
    });
    let ok = before == (expected_sum, 0.5, 999.5, len)
        && after == (2.0 * expected_sum, 1.0, 1999.0, len)
        && doubled == len
        && wrong.is_none();
    if !ok {
        eprintln!(
            "wrong result: before {before:?}, after {after:?}, {doubled} doubled, \
             expected sum {expected_sum}; first wrong element {wrong:?}"
        );
        std::process::exit(1);
    }
    println!("every element is exactly twice the original, and the sums agree ✓");
    Ok(())
}
