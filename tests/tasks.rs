//! `Pool::submit` and its `Task`: wait, wait_timeout, is_finished, cancel,
//! `.await`, `as_completed`, and what terminate does to pending tasks.

use std::time::{Duration, Instant};

use multiproc::{ErrorKind, Pool, as_completed, worker};

#[worker]
fn square(x: u64) -> u64 {
    x * x
}

/// Sleeps `ms` milliseconds, then returns it.
#[worker]
fn sleep_ms(ms: u64) -> u64 {
    std::thread::sleep(Duration::from_millis(ms));
    ms
}

#[worker]
fn pid_of(_item: u64) -> u32 {
    std::process::id()
}

/// Generous bound for "this did not wait for the 60 s sleep".
const PROMPTLY: Duration = Duration::from_secs(10);

/// Long enough that a test would time out rather than pass by waiting.
const FOREVER_MS: u64 = 60_000;

#[multiproc::test]
fn submit_and_wait() {
    let pool = Pool::new(2).unwrap();
    let tasks: Vec<_> = (0..10).map(|i| pool.submit(square, i)).collect();
    let got: Vec<u64> = tasks.into_iter().map(|t| t.wait().unwrap()).collect();
    assert_eq!(got, (0..10).map(|i| i * i).collect::<Vec<_>>());
}

#[multiproc::test]
fn is_finished_turns_true_when_the_result_is_there() {
    let pool = Pool::new(1).unwrap();
    let task = pool.submit(sleep_ms, 300);
    assert!(!task.is_finished(), "a 300 ms task finished at once");
    let deadline = Instant::now() + PROMPTLY;
    while !task.is_finished() {
        assert!(Instant::now() < deadline, "task never finished");
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(task.wait().unwrap(), 300);
}

#[multiproc::test]
fn wait_timeout_gives_a_timeout_error_and_the_pool_recovers() {
    let pool = Pool::new(1).unwrap();
    let task = pool.submit(sleep_ms, FOREVER_MS);
    let started = Instant::now();
    let err = task.wait_timeout(Duration::from_millis(200)).unwrap_err();
    let waited = started.elapsed();
    assert!(err.is_timeout(), "{err:?}");
    assert!(
        waited >= Duration::from_millis(200),
        "gave up early: {waited:?}"
    );
    assert!(waited < PROMPTLY, "timeout fired late: {waited:?}");
    match err.kind() {
        ErrorKind::Timeout { after, index, .. } => {
            assert_eq!(*after, Duration::from_millis(200));
            assert_eq!(*index, None);
        }
        other => panic!("expected a timeout, got {other:?}"),
    }
    // The worker that ran the sleep was replaced; the pool still works.
    let started = Instant::now();
    assert_eq!(pool.apply(square, 9).unwrap(), 81);
    assert!(started.elapsed() < PROMPTLY);
}

#[multiproc::test]
fn wait_timeout_returns_the_result_when_in_time() {
    let pool = Pool::new(1).unwrap();
    let task = pool.submit(sleep_ms, 10);
    assert_eq!(task.wait_timeout(PROMPTLY).unwrap(), 10);
}

#[multiproc::test]
fn cancel_a_queued_task() {
    let pool = Pool::new(1).unwrap();
    let running = pool.submit(sleep_ms, 500);
    let queued = pool.submit(square, 5);
    assert!(queued.cancel(), "a queued task could not be cancelled");
    assert!(queued.is_finished());
    assert!(!queued.cancel(), "cancelled twice");
    let err = queued.wait().unwrap_err();
    assert!(err.is_cancelled(), "{err:?}");
    // The task ahead of it is unaffected.
    assert_eq!(running.wait().unwrap(), 500);
    assert_eq!(pool.apply(square, 6).unwrap(), 36);
}

#[multiproc::test]
fn cancel_a_running_task_kills_its_worker() {
    let pool = Pool::new(1).unwrap();
    let before = pool.apply(pid_of, 0).unwrap();
    let task = pool.submit(sleep_ms, FOREVER_MS);
    // Give the only worker time to start it.
    std::thread::sleep(Duration::from_millis(300));
    assert!(!task.is_finished());
    let started = Instant::now();
    assert!(task.cancel(), "a running task could not be cancelled");
    let err = task.wait().unwrap_err();
    assert!(err.is_cancelled(), "{err:?}");
    // The pool replaced the killed worker and keeps working.
    let after = pool.apply(pid_of, 0).unwrap();
    assert!(started.elapsed() < PROMPTLY, "{:?}", started.elapsed());
    assert_ne!(
        before, after,
        "the worker running the task was not replaced"
    );
    assert_eq!(pool.map(square, 0..5).unwrap(), vec![0, 1, 4, 9, 16]);
}

#[multiproc::test]
fn cancel_a_finished_task_returns_false() {
    let pool = Pool::new(1).unwrap();
    let task = pool.submit(square, 4);
    let deadline = Instant::now() + PROMPTLY;
    while !task.is_finished() {
        assert!(Instant::now() < deadline, "task never finished");
        std::thread::sleep(Duration::from_millis(5));
    }
    assert!(!task.cancel());
    assert_eq!(task.wait().unwrap(), 16);
}

#[multiproc::test]
fn as_completed_yields_in_completion_order() {
    let pool = Pool::new(2).unwrap();
    // The slow task is submitted first and must come out last.
    let mut tasks = vec![pool.submit(sleep_ms, 1500)];
    tasks.extend((1..=3).map(|i| pool.submit(sleep_ms, i)));
    let done = as_completed(tasks);
    assert_eq!(done.len(), 4);
    let order: Vec<(usize, u64)> = done.map(|(i, r)| (i, r.unwrap())).collect();
    assert_eq!(order.len(), 4);
    assert_eq!(order[3], (0, 1500), "order: {order:?}");
    let mut fast: Vec<(usize, u64)> = order[..3].to_vec();
    fast.sort_unstable();
    assert_eq!(fast, vec![(1, 1), (2, 2), (3, 3)]);
}

#[multiproc::test]
fn as_completed_reports_failures_in_place() {
    let pool = Pool::new(1).unwrap();
    let slow = pool.submit(sleep_ms, 200);
    let cancelled = pool.submit(sleep_ms, 1);
    assert!(cancelled.cancel());
    let results: Vec<(usize, bool)> = as_completed([slow, cancelled])
        .map(|(i, r)| (i, r.is_ok()))
        .collect();
    // The cancelled one was settled before the slow one finished.
    assert_eq!(results, vec![(1, false), (0, true)]);
    assert_eq!(as_completed(Vec::<multiproc::Task<u64>>::new()).count(), 0);
}

#[multiproc::test]
#[tokio::test(flavor = "current_thread")]
async fn task_is_a_future_that_does_not_block_the_runtime() {
    let pool = Pool::new(2).unwrap();
    assert_eq!(pool.submit(square, 12).await.unwrap(), 144);

    // While one task is awaited, other futures on this single thread run.
    let task = pool.submit(sleep_ms, 400);
    let mut ticks = 0u32;
    let counting = async {
        loop {
            tokio::time::sleep(Duration::from_millis(10)).await;
            ticks += 1;
        }
    };
    let result = tokio::select! {
        r = task => r,
        () = counting => unreachable!(),
    };
    assert_eq!(result.unwrap(), 400);
    assert!(ticks >= 5, "the runtime was blocked: only {ticks} ticks");

    let both = tokio::join!(pool.submit(square, 2), pool.submit(square, 3));
    assert_eq!((both.0.unwrap(), both.1.unwrap()), (4, 9));
}

#[multiproc::test]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn task_awaited_under_a_multi_thread_runtime() {
    let pool = std::sync::Arc::new(Pool::new(2).unwrap());
    let handles: Vec<_> = (0..8u64)
        .map(|i| {
            let pool = pool.clone();
            tokio::spawn(async move { pool.submit(square, i).await })
        })
        .collect();
    let mut got = Vec::new();
    for h in handles {
        got.push(h.await.unwrap().unwrap());
    }
    assert_eq!(got, vec![0, 1, 4, 9, 16, 25, 36, 49]);
    let err = tokio::time::timeout(
        Duration::from_millis(100),
        pool.submit(sleep_ms, FOREVER_MS),
    )
    .await;
    assert!(err.is_err(), "a 60 s task finished within 100 ms");
    // Dropping the pool (in a blocking context) after the abandoned task.
    let pool = std::sync::Arc::try_unwrap(pool).unwrap();
    tokio::task::spawn_blocking(move || pool.terminate())
        .await
        .unwrap();
}

#[multiproc::test]
fn terminate_fails_pending_tasks_as_cancelled() {
    let pool = Pool::new(1).unwrap();
    let running = pool.submit(sleep_ms, FOREVER_MS);
    std::thread::sleep(Duration::from_millis(200));
    let queued: Vec<_> = (0..3).map(|i| pool.submit(square, i)).collect();
    let started = Instant::now();
    pool.terminate();
    assert!(
        started.elapsed() < PROMPTLY,
        "terminate waited for the task"
    );
    let err = running.wait().unwrap_err();
    assert!(err.is_cancelled(), "running task: {err:?}");
    for task in queued {
        let err = task.wait().unwrap_err();
        assert!(err.is_cancelled(), "queued task: {err:?}");
    }
    let err = pool.submit(square, 1).wait().unwrap_err();
    assert!(matches!(err.kind(), ErrorKind::PoolClosed), "{err:?}");
}

#[multiproc::test]
fn drop_waits_for_submitted_tasks() {
    let pool = Pool::new(1).unwrap();
    let task = pool.submit(sleep_ms, 100);
    drop(pool);
    assert!(task.is_finished());
    assert_eq!(task.wait().unwrap(), 100);
}

#[multiproc::test]
fn wait_timeout_on_a_queued_task_removes_it() {
    let pool = Pool::new(1).unwrap();
    let ahead = pool.submit(sleep_ms, 400);
    let queued = pool.submit(square, 3);
    let err = queued.wait_timeout(Duration::from_millis(50)).unwrap_err();
    assert!(err.is_timeout(), "{err:?}");
    // The running task was not disturbed by its neighbour's timeout.
    assert_eq!(ahead.wait().unwrap(), 400);
    assert_eq!(pool.apply(square, 4).unwrap(), 16);
}

#[multiproc::test]
fn terminate_while_another_thread_maps() {
    let pool = Pool::new(2).unwrap();
    std::thread::scope(|s| {
        let mapping = s.spawn(|| pool.map(sleep_ms, vec![FOREVER_MS; 4]));
        std::thread::sleep(Duration::from_millis(300));
        let started = Instant::now();
        pool.terminate();
        let result = mapping.join().unwrap();
        assert!(started.elapsed() < PROMPTLY, "{:?}", started.elapsed());
        let err = result.unwrap_err();
        assert!(err.is_cancelled(), "{err:?}");
    });
}

#[multiproc::test]
fn dropping_an_imap_midway_leaves_the_pool_usable() {
    let pool = Pool::new(2).unwrap();
    let mut it = pool.imap(sleep_ms, vec![200; 40]).chunk_size(1);
    assert_eq!(it.next().unwrap().unwrap(), 200);
    drop(it);
    let started = Instant::now();
    assert_eq!(pool.map(square, 0..4).unwrap(), vec![0, 1, 4, 9]);
    // Running all 39 abandoned 200 ms items would take about 4 s on two
    // workers; only those already sent may still run.
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "abandoned items were run: {:?}",
        started.elapsed()
    );
}

#[multiproc::test]
fn dropped_tasks_do_not_disturb_the_pool() {
    let pool = Pool::new(1).unwrap();
    drop(pool.submit(sleep_ms, 100));
    drop(pool.submit(square, 2));
    assert_eq!(pool.apply(square, 3).unwrap(), 9);
}

#[multiproc::test]
fn as_completed_over_tasks_already_finished() {
    let pool = Pool::new(2).unwrap();
    let tasks: Vec<_> = (0..5).map(|i| pool.submit(square, i)).collect();
    pool.join();
    let mut got: Vec<(usize, u64)> = as_completed(tasks).map(|(i, r)| (i, r.unwrap())).collect();
    got.sort_unstable();
    assert_eq!(got, vec![(0, 0), (1, 1), (2, 4), (3, 9), (4, 16)]);
}

#[multiproc::test]
#[tokio::test(flavor = "current_thread")]
async fn awaiting_a_cancelled_task_gives_cancelled() {
    let pool = Pool::new(1).unwrap();
    let task = pool.submit(sleep_ms, FOREVER_MS);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(task.cancel());
    let err = tokio::time::timeout(PROMPTLY, task)
        .await
        .expect("a cancelled task resolves at once")
        .unwrap_err();
    assert!(err.is_cancelled(), "{err:?}");
    assert_eq!(pool.submit(square, 5).await.unwrap(), 25);
}

#[multiproc::test]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn terminate_wakes_an_awaiting_task() {
    let pool = std::sync::Arc::new(Pool::new(1).unwrap());
    let awaiting = tokio::spawn(pool.submit(sleep_ms, FOREVER_MS));
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!awaiting.is_finished());
    let for_terminate = pool.clone();
    tokio::task::spawn_blocking(move || for_terminate.terminate())
        .await
        .unwrap();
    let err = tokio::time::timeout(PROMPTLY, awaiting)
        .await
        .expect("terminate woke the awaiting task")
        .unwrap()
        .unwrap_err();
    assert!(err.is_cancelled(), "{err:?}");
}
