//! `#[multiproc::entry]` stacked above `#[tokio::main]`: the guard runs
//! before the runtime starts, and tasks are awaited without blocking it.

use std::time::Duration;

use multiproc::{Pool, as_completed, worker};

#[worker]
fn slow_square(x: u64, sleep_ms: u64) -> u64 {
    std::thread::sleep(Duration::from_millis(sleep_ms));
    x * x
}

#[multiproc::entry]
#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), multiproc::Error> {
    let pool = Pool::new(2)?;

    // Awaiting a task leaves the (single) runtime thread free for others.
    let ticks = std::cell::Cell::new(0u32);
    let ticker = async {
        loop {
            tokio::time::sleep(Duration::from_millis(10)).await;
            ticks.set(ticks.get() + 1);
        }
    };
    let awaited = tokio::select! {
        r = pool.submit(slow_square, (7, 300)) => r?,
        () = ticker => unreachable!(),
    };
    println!("awaited: {awaited}");
    println!("runtime ticked while waiting: {}", ticks.get() >= 5);

    // The slow task is submitted first and completes last.
    let tasks = vec![
        pool.submit(slow_square, (1, 800)),
        pool.submit(slow_square, (2, 0)),
        pool.submit(slow_square, (3, 0)),
    ];
    let order: Vec<String> = tokio::task::spawn_blocking(move || {
        as_completed(tasks)
            .map(|(i, r)| r.map(|v| format!("{i}={v}")))
            .collect::<Result<Vec<_>, _>>()
    })
    .await
    .expect("as_completed thread")?;
    println!("last completed: {}", order.last().expect("three results"));
    let mut sorted = order.clone();
    sorted.sort();
    println!("completed: {}", sorted.join(" "));
    Ok(())
}
