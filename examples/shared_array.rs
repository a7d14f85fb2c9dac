//! Workers double a shared array in place: each takes an exclusive lease on
//! one chunk and writes it through `&mut [f64]`, no copy in or out. Ports the
//! seeds' `shared_memory` + numpy example (`array *= 2` in the child).
//!
//! The array lives in shared memory without a name (a `memfd` on Linux):
//! there is nothing to `unlink`, and nothing is left in `/dev/shm` even if
//! a worker crashes.
//!
//! ```text
//! cargo run --release --example shared_array [LEN]
//! ```

use std::time::Instant;

use multiproc::{Pool, SharedArray};

const CHUNK: usize = 100_000;

/// Doubles chunk `index` of the array in place; returns how many elements.
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

#[multiproc::entry]
fn main() -> Result<(), multiproc::Error> {
    let len: usize = match std::env::args().nth(1) {
        Some(arg) => arg.parse().unwrap_or_else(|_| {
            eprintln!("usage: shared_array [LEN]");
            std::process::exit(2)
        }),
        None => 1_000_000,
    };
    let original: Vec<f64> = (1..=len).map(|i| i as f64).collect();
    let array = SharedArray::from_slice(&original)?;
    println!(
        "before: {:?} … ({} elements)",
        &array.to_vec()[..5.min(len)],
        array.len()
    );

    let pool = Pool::new(0)?;
    let started = Instant::now();
    let chunks = array.chunk_count(CHUNK);
    let done: usize = pool
        .map(double_chunk, (0..chunks).map(|i| (array.clone(), i)))?
        .into_iter()
        .sum();
    println!(
        "doubled {done} elements in {chunks} chunks on {} workers in {:.1?}",
        pool.workers(),
        started.elapsed()
    );

    let after = array.to_vec();
    println!("after:  {:?} …", &after[..5.min(len)]);
    assert_eq!(done, len);
    assert!(
        after.iter().zip(&original).all(|(a, o)| *a == 2.0 * o),
        "every element doubled exactly once"
    );
    println!("every element is exactly twice the original ✓");
    Ok(())
}
