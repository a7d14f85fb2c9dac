//! Worker processes from async code, on one thread: the streams of
//! `imap`, `imap_unordered` and `as_completed` awaited with `StreamExt`, a
//! stream raced against a timer in `tokio::select!`, and a task given up on
//! by `tokio::time::timeout` whose worker process `cancel_on_drop` frees.
//!
//! The runtime is tokio's current-thread one: nothing here blocks its only
//! thread, so the timer keeps ticking while the workers compute.
//!
//! The Python it ports, where `wait_for` cannot stop a call that a process
//! pool already runs (here the worker process is killed):
//!
//! ```python
//! loop = asyncio.get_running_loop()
//! with ProcessPoolExecutor() as executor:
//!     futures = [loop.run_in_executor(executor, slow_echo, x, ms) for x, ms in items]
//!     for next_done in asyncio.as_completed(futures):
//!         print(await next_done)
//!     await asyncio.wait_for(loop.run_in_executor(executor, slow_echo, 0, hour), 0.2)
//! ```
//!
//! ```text
//! cargo run --release --example tokio
//! ```

use std::time::{Duration, Instant};

use futures_util::StreamExt;
use multiproc::{Pool, as_completed, entry, worker};

#[worker]
fn square(x: u64) -> u64 {
    x * x
}

/// Sleeps `ms` milliseconds (a stand-in for real work), then returns `x`.
#[worker]
fn slow_echo(x: u64, ms: u64) -> u64 {
    std::thread::sleep(Duration::from_millis(ms));
    x
}

#[worker]
fn pid_of(_item: u64) -> u32 {
    std::process::id()
}

/// `#[entry]` goes above `#[tokio::main]`: a worker process serves tasks
/// before any runtime starts.
#[entry]
#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), multiproc::Error> {
    let pool = Pool::new(2)?;

    // 1. An imap stream, in input order.
    let mut squares = pool.imap(square, 0..100).into_stream();
    let mut sum = 0;
    while let Some(s) = squares.next().await {
        sum += s?;
    }
    assert_eq!(sum, (0..100u64).map(|x| x * x).sum::<u64>());
    println!("sum of the squares of 0..100: {sum}");

    // 2. An imap_unordered stream raced against a timer: results print as
    //    they finish, the timer ticks in between.
    let items: Vec<(u64, u64)> = (0..8).map(|x| (x, 40 + 20 * (x % 3))).collect();
    let mut results = pool.imap_unordered(slow_echo, items).into_stream();
    let mut timer = tokio::time::interval(Duration::from_millis(25));
    timer.tick().await; // the first tick is immediate
    let (mut got, mut ticks) = (Vec::new(), 0);
    loop {
        tokio::select! {
            r = results.next() => match r {
                Some(x) => {
                    let x = x?;
                    println!("  result {x} (after {ticks} ticks)");
                    got.push(x);
                }
                None => break,
            },
            _ = timer.tick() => ticks += 1,
        }
    }
    got.sort_unstable();
    assert_eq!(got, (0..8).collect::<Vec<_>>());
    assert!(ticks > 0, "the timer never ticked: the thread was blocked");
    println!("8 results, {ticks} timer ticks while waiting for them");

    // 3. as_completed as a stream: each task's position and result.
    let tasks: Vec<_> = [(0, 120), (1, 10), (2, 60)]
        .into_iter()
        .map(|a| pool.submit(slow_echo, a))
        .collect();
    let mut done = as_completed(tasks).into_stream();
    let mut order = Vec::new();
    while let Some((i, r)) = done.next().await {
        assert_eq!(r?, i as u64);
        order.push(i);
    }
    println!("as_completed order: {order:?}");
    assert_eq!(order.len(), 3);

    // 4. A timeout with cancel_on_drop: the task that took too long is
    //    cancelled when the timeout drops it, and its worker process is
    //    killed and replaced, so the one-worker pool is free at once.
    let single = Pool::new(1)?;
    let before = single.submit(pid_of, 0).await?;
    let hour = 3_600_000;
    let task = single.submit(slow_echo, (0, hour)).cancel_on_drop();
    let gave_up = tokio::time::timeout(Duration::from_millis(200), task).await;
    assert!(gave_up.is_err(), "an hour-long task finished");
    let start = Instant::now();
    let after = single.submit(pid_of, 0).await?;
    let waited = start.elapsed();
    println!(
        "timed out after 200 ms; the next task ran {waited:.0?} later, on worker process {after} \
         (the cancelled task's was {before})"
    );
    assert!(
        waited < Duration::from_secs(10),
        "the next task waited for the dropped one: {waited:?}"
    );
    Ok(())
}
