//! Producer/consumer pipeline over a [`Queue`]: one producer process, several
//! consumer processes, a result queue. Ports the seeds' `producer_worker` /
//! `consumer_worker` example — without its `None` sentinels: closing a
//! queue ends the consumers' loops once they have drained it.
//!
//! ```text
//! cargo run --release --example producer_consumer
//! ```

use std::time::Instant;

use multiproc::{Process, Queue};

/// Slow trial division, as in the seeds.
fn is_prime(n: u64) -> bool {
    n >= 2 && (2..).take_while(|i| i * i <= n).all(|i| n % i != 0)
}

/// Puts 50 tasks (the start of each 10,000-number block), then closes.
#[multiproc::worker]
fn producer(tasks: Queue<u64>) -> u64 {
    for i in 1..=50 {
        tasks.put(&(i * 10_000)).expect("the task queue is open");
    }
    tasks.close(); // consumers stop once they have taken everything
    50
}

/// Counts the primes in each block it takes; reports (worker, block, count).
#[multiproc::worker]
fn consumer(tasks: Queue<u64>, results: Queue<(usize, u64, usize)>, worker_id: usize) -> usize {
    let mut done = 0;
    for task in tasks.iter() {
        let start = task.expect("tasks decode");
        let count = (start..start + 10_000).filter(|&n| is_prime(n)).count();
        results
            .put(&(worker_id, start, count))
            .expect("the result queue is open");
        done += 1;
    }
    done
}

#[multiproc::entry]
fn main() -> Result<(), multiproc::Error> {
    let n_consumers = std::thread::available_parallelism()
        .map_or(2, |n| n.get())
        .min(4);
    let tasks: Queue<u64> = Queue::bounded(20)?; // like mp.Queue(maxsize=20)
    let results: Queue<(usize, u64, usize)> = Queue::unbounded()?;
    let started = Instant::now();

    let producing = Process::spawn(producer, tasks.clone())?;
    let consumers: Vec<_> = (0..n_consumers)
        .map(|id| Process::spawn(consumer, (tasks.clone(), results.clone(), id)))
        .collect::<Result<_, _>>()?;

    let produced = producing.join()?;
    let mut per_consumer = Vec::new();
    for c in consumers {
        per_consumer.push(c.join()?);
    }
    results.close();
    let mut all: Vec<(usize, u64, usize)> = results.iter().collect::<Result<_, _>>()?;
    all.sort_by_key(|&(_, start, _)| start);

    println!(
        "{n_consumers} consumers handled {per_consumer:?} tasks ({} in all)",
        all.len()
    );
    for &(worker, start, count) in all.iter().take(3) {
        println!(
            "  block {start:>6}..{:<6} {count:>4} primes (consumer {worker})",
            start + 10_000
        );
    }
    let total: usize = all.iter().map(|&(_, _, c)| c).sum();
    println!("found {total} primes in {:.2?}", started.elapsed());

    // Check: every task done exactly once, and the same count sequentially.
    assert_eq!(produced, 50);
    assert_eq!(all.len(), 50);
    assert!(
        all.iter()
            .map(|&(_, s, _)| s)
            .eq((1..=50).map(|i| i * 10_000))
    );
    let expected = (10_000..510_000u64).filter(|&n| is_prime(n)).count();
    assert_eq!(
        total, expected,
        "the pipeline must find exactly the sequential count"
    );
    println!("sequential check: {expected} primes ✓");
    Ok(())
}
