//! `Queue` between real processes: many producers and consumers, close,
//! timeouts, bounded capacity, JoinableQueue semantics.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use multiproc::{ErrorKind, Pool, Process, Queue};

/// Puts `count` distinct numbers starting at `start`.
#[multiproc::worker]
fn produce(q: Queue<u64>, start: u64, count: u64) -> u64 {
    for i in start..start + count {
        q.put(&i).unwrap();
    }
    count
}

/// Takes numbers until the queue is closed and drained; returns them.
#[multiproc::worker]
fn consume(q: Queue<u64>) -> Vec<u64> {
    q.iter().map(Result::unwrap).collect()
}

/// Takes items, marking each done (JoinableQueue consumer).
#[multiproc::worker]
fn work_and_mark(q: Queue<String>, results: Queue<String>) -> usize {
    let mut n = 0;
    while let Ok(item) = q.get() {
        results.put(&item.to_uppercase()).unwrap();
        q.task_done().unwrap();
        n += 1;
    }
    n
}

#[multiproc::test]
fn three_producers_three_consumers_100k_items() {
    let q: Queue<u64> = Queue::bounded(1000).unwrap();
    let consumers: Vec<_> = (0..3)
        .map(|_| Process::spawn(consume, q.clone()).unwrap())
        .collect();
    let per = 100_000 / 3 + 1;
    let producers: Vec<_> = (0..3u64)
        .map(|p| {
            let count = if p == 2 { 100_000 - 2 * per } else { per };
            Process::spawn(produce, (q.clone(), p * per, count)).unwrap()
        })
        .collect();
    let produced: u64 = producers.into_iter().map(|p| p.join().unwrap()).sum();
    assert_eq!(produced, 100_000);
    q.close();
    let mut seen = HashSet::new();
    let mut total = 0;
    for c in consumers {
        let got = c.join().unwrap();
        total += got.len();
        for x in got {
            assert!(seen.insert(x), "{x} received twice");
        }
    }
    assert_eq!(total, 100_000);
    assert_eq!(seen.len(), 100_000);
    assert!(
        (0..100_000u64).all(|x| seen.contains(&x)),
        "an item was lost"
    );
}

#[multiproc::test]
fn close_lets_consumers_drain_then_end() {
    let q: Queue<u64> = Queue::unbounded().unwrap();
    for i in 0..10 {
        q.put(&i).unwrap();
    }
    q.close();
    assert!(q.is_closed());
    let err = q.put(&99).unwrap_err();
    assert!(
        matches!(err.kind(), ErrorKind::Disconnected { what: "queue" }),
        "{err}"
    );
    // A consumer in another process still gets everything, then the end.
    let got = Process::spawn(consume, q.clone()).unwrap().join().unwrap();
    assert_eq!(got, (0..10).collect::<Vec<_>>());
    assert!(matches!(
        q.get().unwrap_err().kind(),
        ErrorKind::Disconnected { .. }
    ));
}

#[test]
fn get_timeout_expires_and_try_get_is_immediate() {
    let q: Queue<String> = Queue::unbounded().unwrap();
    assert_eq!(q.try_get().unwrap(), None);
    let t = Instant::now();
    assert_eq!(q.get_timeout(Duration::from_millis(100)).unwrap(), None);
    let waited = t.elapsed();
    assert!(waited >= Duration::from_millis(100), "{waited:?}");
    assert!(waited < Duration::from_secs(5), "{waited:?}");
    q.put(&"x".to_owned()).unwrap();
    assert_eq!(q.len(), 1);
    assert_eq!(
        q.get_timeout(Duration::from_secs(1)).unwrap().as_deref(),
        Some("x")
    );
    q.close();
    assert!(q.get_timeout(Duration::from_millis(10)).is_err());
}

#[test]
fn bounded_queue_refuses_when_full() {
    let q: Queue<u32> = Queue::bounded(2).unwrap();
    assert!(q.try_put(&1).unwrap());
    assert!(q.try_put(&2).unwrap());
    assert!(!q.try_put(&3).unwrap());
    assert!(!q.put_timeout(&3, Duration::from_millis(20)).unwrap());
    assert_eq!(q.get().unwrap(), 1);
    assert!(q.try_put(&3).unwrap());
    assert_eq!(
        q.iter().take(2).map(Result::unwrap).collect::<Vec<_>>(),
        vec![2, 3]
    );
}

#[test]
fn a_message_larger_than_the_buffer_is_refused() {
    let q: Queue<Vec<u8>> = Queue::with_buffer(0, 1024).unwrap();
    let err = q.put(&vec![0u8; 4096]).unwrap_err();
    assert!(
        matches!(err.kind(), ErrorKind::MessageCodec { encode: true, .. }),
        "{err}"
    );
    // The buffer wraps around correctly for messages that fit.
    for i in 0..1000u32 {
        q.put(&vec![i as u8; 300]).unwrap();
        assert_eq!(q.get().unwrap(), vec![i as u8; 300]);
    }
}

#[multiproc::test]
fn joinable_queue_join_waits_for_task_done() {
    let tasks: Queue<String> = Queue::unbounded().unwrap();
    let results: Queue<String> = Queue::unbounded().unwrap();
    let pool = Pool::new(2).unwrap();
    let workers: Vec<_> = (0..2)
        .map(|_| pool.submit(work_and_mark, (tasks.clone(), results.clone())))
        .collect();
    for word in ["alpha", "beta", "gamma", "delta", "epsilon"] {
        tasks.put(&word.to_owned()).unwrap();
    }
    tasks.join(); // every put has been marked done
    assert_eq!(results.len(), 5);
    let mut got: Vec<String> = (0..5).map(|_| results.get().unwrap()).collect();
    got.sort();
    assert_eq!(got, ["ALPHA", "BETA", "DELTA", "EPSILON", "GAMMA"]);
    tasks.close();
    let handled: usize = workers.into_iter().map(|w| w.wait().unwrap()).sum();
    assert_eq!(handled, 5);
    assert!(
        tasks.task_done().is_err(),
        "more task_done than puts must fail"
    );
}
