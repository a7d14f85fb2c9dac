//! Four processes each add 1 to a shared counter 10,000 times: 40,000, every
//! time. Ports the seeds' `Value` + `Lock` example, twice:
//!
//! * lock-free, with an atomic `fetch_add` on a [`SharedArray`] element;
//! * with a [`Lock`]-guarded [`Value`] (`with lock: counter.value += 1`).
//!
//! And the seeds' `Array('d', [0.0] * 5)`, which every process bumps under
//! the same lock: `[4.0; 5]` at the end.
//!
//! ```text
//! cargo run --release --example shared_counter
//! ```

use std::time::Instant;

use multiproc::{Lock, Process, SharedArray, Value};

const PROCESSES: usize = 4;
const INCREMENTS: u64 = 10_000;

/// Lock-free: one atomic read-modify-write per increment.
#[multiproc::worker]
fn add_atomically(counter: SharedArray<u64>) {
    for _ in 0..INCREMENTS {
        counter.fetch_add(0, 1);
    }
}

/// The seeds' version: `with lock: counter.value += 1`, then bump the array.
#[multiproc::worker]
fn add_under_lock(counter: Value<u64>, array: SharedArray<f64>, lock: Lock) {
    for _ in 0..INCREMENTS {
        let _held = lock.lock().expect("nobody dies holding the lock here");
        counter
            .set(counter.get().expect("read") + 1)
            .expect("write");
    }
    let _held = lock.lock().expect("nobody dies holding the lock here");
    for i in 0..array.len() {
        array.store(i, array.load(i) + 1.0);
    }
}

#[multiproc::entry]
fn main() -> Result<(), multiproc::Error> {
    // 1. Atomics.
    let started = Instant::now();
    let counter = SharedArray::<u64>::zeroed(1)?;
    let procs: Vec<_> = (0..PROCESSES)
        .map(|_| Process::spawn(add_atomically, counter.clone()))
        .collect::<Result<_, _>>()?;
    for p in procs {
        p.join()?;
    }
    let atomic_total = counter.load(0);
    println!(
        "atomic fetch_add: counter = {atomic_total} ({:.1?})",
        started.elapsed()
    );

    // 2. A Lock around a Value, plus the shared array.
    let started = Instant::now();
    let value = Value::new(0u64)?;
    let array = SharedArray::<f64>::zeroed(5)?;
    let lock = Lock::new()?;
    let procs: Vec<_> = (0..PROCESSES)
        .map(|_| Process::spawn(add_under_lock, (value.clone(), array.clone(), lock.clone())))
        .collect::<Result<_, _>>()?;
    for p in procs {
        p.join()?;
    }
    let locked_total = value.get()?;
    println!(
        "lock + value:     counter = {locked_total} ({:.1?})",
        started.elapsed()
    );
    println!("array = {:?}", array.to_vec());

    let expected = PROCESSES as u64 * INCREMENTS;
    assert_eq!(atomic_total, expected);
    assert_eq!(locked_total, expected);
    assert_eq!(array.to_vec(), vec![PROCESSES as f64; 5]);
    println!("both counters are exactly {expected} ✓");
    Ok(())
}
