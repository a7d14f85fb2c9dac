//! The async side, through real worker processes: the streams of `imap`,
//! `imap_unordered` and `as_completed` on a single-threaded runtime whose
//! timers keep running while they wait, streams whose pool is terminated;
//! and `Task::cancel_on_drop` (queued tasks removed, running ones' worker
//! processes killed) against the default of detaching.

use std::cell::Cell;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::{Stream, StreamExt};
use multiproc::{Pool, Queue, Value, as_completed, worker};
use tokio::time::MissedTickBehavior;

/// Sleeps `ms` milliseconds, then returns `x`.
#[worker]
fn sleep_then(x: u64, ms: u64) -> u64 {
    std::thread::sleep(Duration::from_millis(ms));
    x
}

/// Puts its process id in `pids`, sleeps `ms` milliseconds, and returns
/// the id.
#[worker]
fn report_pid_then_sleep(pids: Queue<u32>, ms: u64) -> u32 {
    pids.put(&std::process::id()).unwrap();
    std::thread::sleep(Duration::from_millis(ms));
    std::process::id()
}

#[worker]
fn pid_of(_item: u64) -> u32 {
    std::process::id()
}

/// Sleeps `ms` milliseconds, then adds one to `runs`.
#[worker]
fn count_run(runs: Value<u64>, ms: u64) {
    std::thread::sleep(Duration::from_millis(ms));
    runs.update(|n| n + 1).unwrap();
}

/// Generous bound for "this did not wait for the 60 s sleep".
const PROMPTLY: Duration = Duration::from_secs(10);

/// Long enough that a test would time out rather than pass by waiting.
const FOREVER_MS: u64 = 60_000;

/// The tick of the timer that runs beside a stream.
const TICK: Duration = Duration::from_millis(10);

/// Runs `consume` beside a timer that ticks every [`TICK`] on the same
/// thread, and returns its output with the ticks counted between the
/// first item and the last (`consume` calls `item` as each arrives).
///
/// A stream that blocked the thread while it waited would let no tick run
/// between two items, however far apart the worker spaced them.
async fn beside_a_timer<T>(consume: impl AsyncFnOnce(&dyn Fn()) -> T) -> (T, u32) {
    let ticks = Cell::new(0u32);
    let first_item_at = Cell::new(None::<u32>);
    let last_item_at = Cell::new(0u32);
    let item = || {
        first_item_at.set(first_item_at.get().or(Some(ticks.get())));
        last_item_at.set(ticks.get());
    };
    let ticker = async {
        let mut timer = tokio::time::interval(TICK);
        // A tick missed while the thread was blocked is not made up for
        // in a burst afterwards.
        timer.set_missed_tick_behavior(MissedTickBehavior::Skip);
        loop {
            timer.tick().await;
            ticks.set(ticks.get() + 1);
        }
    };
    let consuming = tokio::time::timeout(PROMPTLY, consume(&item));
    let out = tokio::select! {
        out = consuming => out.expect("the stream was never woken"),
        () = ticker => unreachable!("the timer never ends"),
    };
    let during = last_item_at.get() - first_item_at.get().unwrap_or(0);
    (out, during)
}

/// Items that take 100 to 300 ms each in the worker, as `(value, ms)`.
fn slow_items() -> Vec<(u64, u64)> {
    vec![(0, 300), (1, 100), (2, 200), (3, 100), (4, 150), (5, 100)]
}

#[multiproc::test]
#[tokio::test(flavor = "current_thread")]
async fn imap_stream_yields_in_order_without_blocking_the_runtime() {
    let pool = Pool::new(2).unwrap();
    let (got, ticks) = beside_a_timer(async |item| {
        let mut stream = pool
            .imap(sleep_then, slow_items())
            .chunk_size(1)
            .into_stream();
        assert_eq!(stream.size_hint(), (6, Some(6)));
        let mut got = Vec::new();
        while let Some(r) = stream.next().await {
            item();
            got.push(r.unwrap());
        }
        assert_eq!(stream.size_hint(), (0, Some(0)));
        got
    })
    .await;
    assert_eq!(got, vec![0, 1, 2, 3, 4, 5]);
    // The items come out over about 400 ms (two workers): 40 ticks.
    assert!(ticks >= 8, "the runtime was blocked: {ticks} ticks");
}

#[multiproc::test]
#[tokio::test(flavor = "current_thread")]
async fn imap_unordered_stream_yields_as_they_finish_without_blocking_the_runtime() {
    let pool = Pool::new(2).unwrap();
    // The first item is the slowest by far: it comes out last.
    let mut items = slow_items();
    items[0].1 = 700;
    let (got, ticks) = beside_a_timer(async |item| {
        let mut stream = pool
            .imap_unordered(sleep_then, items)
            .chunk_size(1)
            .into_stream();
        let mut got = Vec::new();
        while let Some(r) = stream.next().await {
            item();
            got.push(r.unwrap());
        }
        got
    })
    .await;
    assert_eq!(got.last(), Some(&0), "order: {got:?}");
    let mut sorted = got.clone();
    sorted.sort_unstable();
    assert_eq!(sorted, vec![0, 1, 2, 3, 4, 5]);
    assert!(ticks >= 8, "the runtime was blocked: {ticks} ticks");
}

#[multiproc::test]
#[tokio::test(flavor = "current_thread")]
async fn as_completed_stream_yields_as_they_finish_without_blocking_the_runtime() {
    let pool = Pool::new(2).unwrap();
    let mut items = slow_items();
    items[0].1 = 700;
    let tasks: Vec<_> = items.iter().map(|&a| pool.submit(sleep_then, a)).collect();
    let (got, ticks) = beside_a_timer(async |item| {
        let mut stream = as_completed(tasks).into_stream();
        assert_eq!(stream.size_hint(), (6, Some(6)));
        let mut got = Vec::new();
        while let Some((i, r)) = stream.next().await {
            item();
            got.push((i, r.unwrap()));
        }
        got
    })
    .await;
    assert_eq!(got.last(), Some(&(0, 0)), "order: {got:?}");
    let mut sorted = got.clone();
    sorted.sort_unstable();
    assert_eq!(sorted, (0..6).map(|i| (i, i as u64)).collect::<Vec<_>>());
    assert!(ticks >= 8, "the runtime was blocked: {ticks} ticks");
}

#[multiproc::test]
#[tokio::test(flavor = "current_thread")]
async fn a_stream_goes_on_from_where_its_iterator_is() {
    let pool = Pool::new(2).unwrap();
    let mut it = pool.imap(sleep_then, (0..20).map(|x| (x, 0)));
    assert_eq!(it.next().unwrap().unwrap(), 0);
    assert_eq!(it.next().unwrap().unwrap(), 1);
    let rest: Vec<u64> = it.into_stream().map(Result::unwrap).collect().await;
    assert_eq!(rest, (2..20).collect::<Vec<_>>());

    let tasks: Vec<_> = (0..4).map(|x| pool.submit(sleep_then, (x, 0))).collect();
    let mut done = as_completed(tasks);
    let (first, _) = done.next().unwrap();
    let mut rest: Vec<usize> = done.into_stream().map(|(i, _)| i).collect().await;
    rest.push(first);
    rest.sort_unstable();
    assert_eq!(rest, vec![0, 1, 2, 3]);
    let none: Vec<(usize, multiproc::Result<u64>)> =
        as_completed(Vec::new()).into_stream().collect().await;
    assert!(none.is_empty());
}

/// Terminates `pool` from another thread after `after`.
fn terminate_later(pool: &Arc<Pool>, after: Duration) -> std::thread::JoinHandle<()> {
    let pool = pool.clone();
    std::thread::spawn(move || {
        std::thread::sleep(after);
        pool.terminate();
    })
}

#[multiproc::test]
#[tokio::test(flavor = "current_thread")]
async fn streams_end_when_their_pool_is_terminated() {
    let pool = Arc::new(Pool::new(2).unwrap());
    let forever = vec![(7, FOREVER_MS); 4];
    let started = Instant::now();
    let terminating = terminate_later(&pool, Duration::from_millis(300));
    let imap: Vec<_> = tokio::time::timeout(
        PROMPTLY,
        pool.imap(sleep_then, forever.clone())
            .chunk_size(1)
            .into_stream()
            .collect::<Vec<_>>(),
    )
    .await
    .expect("the stream of a terminated pool did not end");
    assert!(started.elapsed() < PROMPTLY, "{:?}", started.elapsed());
    assert_eq!(imap.len(), 4, "one result per item");
    for r in imap {
        let err = r.unwrap_err();
        assert!(err.is_cancelled(), "{err:?}");
    }
    terminating.join().unwrap();

    // A stream over a pool that is terminated already ends at once too.
    let unordered: Vec<_> = tokio::time::timeout(
        PROMPTLY,
        pool.imap_unordered(sleep_then, forever)
            .into_stream()
            .collect::<Vec<_>>(),
    )
    .await
    .expect("the stream of a terminated pool did not end");
    assert_eq!(unordered.len(), 4);
    assert!(unordered.iter().all(Result::is_err), "{unordered:?}");

    let pool = Arc::new(Pool::new(2).unwrap());
    let tasks: Vec<_> = (0..3)
        .map(|x| pool.submit(sleep_then, (x, FOREVER_MS)))
        .collect();
    let terminating = terminate_later(&pool, Duration::from_millis(300));
    let done: Vec<_> = tokio::time::timeout(
        PROMPTLY,
        as_completed(tasks).into_stream().collect::<Vec<_>>(),
    )
    .await
    .expect("the as_completed stream of a terminated pool did not end");
    assert_eq!(done.len(), 3);
    for (_, r) in done {
        let err = r.unwrap_err();
        assert!(err.is_cancelled(), "{err:?}");
    }
    terminating.join().unwrap();
}

/// Whether no process has the id `pid` any more (it was killed and
/// reaped), waiting up to [`PROMPTLY`] for it.
fn gone(pid: u32) -> bool {
    let deadline = Instant::now() + PROMPTLY;
    loop {
        // SAFETY: signal 0 sends nothing; it only asks whether the
        // process exists.
        let alive = unsafe { libc::kill(pid as libc::pid_t, 0) } == 0;
        if !alive {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[multiproc::test]
#[tokio::test(flavor = "current_thread")]
async fn a_running_task_cancelled_on_drop_under_a_timeout_frees_its_worker() {
    let pool = Pool::new(1).unwrap();
    let pids = Queue::<u32>::unbounded().unwrap();
    let task = pool
        .submit(report_pid_then_sleep, (pids.clone(), FOREVER_MS))
        .cancel_on_drop();
    // Running: its worker process said so.
    let ran_on = pids
        .get_timeout(PROMPTLY)
        .unwrap()
        .expect("the task never started");
    let timed_out = tokio::time::timeout(Duration::from_millis(200), task).await;
    assert!(timed_out.is_err(), "a 60 s task finished: {timed_out:?}");
    // Dropped by the timeout, so cancelled: its worker process was killed.
    assert!(gone(ran_on), "the worker process {ran_on} still runs");
    // The pool's only worker slot took a new process, free at once.
    let started = Instant::now();
    let next = tokio::time::timeout(PROMPTLY, pool.submit(pid_of, 0))
        .await
        .expect("the next task waited for the dropped one")
        .unwrap();
    assert!(started.elapsed() < PROMPTLY, "{:?}", started.elapsed());
    assert_ne!(next, ran_on, "the next task ran on the killed worker");
}

#[multiproc::test]
#[tokio::test(flavor = "current_thread")]
async fn a_queued_task_cancelled_on_drop_never_runs() {
    let pool = Pool::new(1).unwrap();
    let runs = Value::new(0u64).unwrap();
    let pids = Queue::<u32>::unbounded().unwrap();
    // Holds the only worker while the others are queued behind it.
    let ahead = pool.submit(report_pid_then_sleep, (pids.clone(), 400));
    let timed_out = pool.submit(count_run, (runs.clone(), 0)).cancel_on_drop();
    let dropped = pool.submit(count_run, (runs.clone(), 0)).cancel_on_drop();
    assert!(
        tokio::time::timeout(Duration::from_millis(50), timed_out)
            .await
            .is_err(),
        "a task queued behind 400 ms finished within 50 ms"
    );
    drop(dropped);
    let ran_on = ahead.await.unwrap();
    // On one worker, whatever was queued before this task has run by now.
    let next = pool.submit(pid_of, 0).await.unwrap();
    assert_eq!(runs.get().unwrap(), 0, "a dropped queued task ran");
    // Removing queued tasks did not disturb the worker running another.
    assert_eq!(next, ran_on, "the worker was replaced");
    assert_eq!(pids.len(), 1);
}

#[multiproc::test]
#[tokio::test(flavor = "current_thread")]
async fn a_dropped_task_runs_to_completion_by_default() {
    let pool = Pool::new(1).unwrap();
    let runs = Value::new(0u64).unwrap();
    let pids = Queue::<u32>::unbounded().unwrap();
    let running = pool.submit(report_pid_then_sleep, (pids.clone(), 300));
    let ran_on = pids
        .get_timeout(PROMPTLY)
        .unwrap()
        .expect("the task never started");
    // A running task given up on by a timeout, and queued ones dropped.
    assert!(
        tokio::time::timeout(Duration::from_millis(50), running)
            .await
            .is_err()
    );
    let timed_out = pool.submit(count_run, (runs.clone(), 100));
    assert!(
        tokio::time::timeout(Duration::from_millis(50), timed_out)
            .await
            .is_err()
    );
    drop(pool.submit(count_run, (runs.clone(), 0)));
    // Detached: they all ran, on the same worker process, before this one.
    let next = pool.submit(pid_of, 0).await.unwrap();
    assert_eq!(runs.get().unwrap(), 2, "a dropped task did not run");
    assert_eq!(next, ran_on, "a dropped task killed its worker");
}
