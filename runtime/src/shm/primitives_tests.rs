//! Unit tests of `shm::primitives`.

use super::*;
use crate::shm::segment::tests::round_trip;
use crate::shm::sync::thread_alive;
use proptest::prelude::*;
use std::sync::Arc;
use std::sync::atomic::AtomicUsize;

/// Slack allowed over a timeout: scheduling on a loaded machine.
const MARGIN: Duration = Duration::from_millis(250);

/// Runs `f`, asserting that it returned within `limit` plus `MARGIN`.
fn within<R>(limit: Duration, f: impl FnOnce() -> R) -> R {
    let started = Instant::now();
    let r = f();
    let took = started.elapsed();
    assert!(took <= limit + MARGIN, "took {took:?}, limit {limit:?}");
    r
}

/// Byte offset of the mutex's owner word.
const OWNER: usize = MUTEX_AT + 8;

#[test]
fn a_barrier_counting_too_many_arrivals_is_corrupted_until_reset() {
    let b = Barrier::new(3).unwrap();
    b.round().store(3 << ARRIVED_SHIFT, Ordering::Relaxed);
    let err = b.wait_timeout(Duration::from_millis(10)).unwrap_err();
    assert!(err.is_corrupted(), "{err}");
    assert!(err.to_string().contains("3 parties arrived of 3"), "{err}");
    b.reset();
    // A lone party now just times out (and breaks the round).
    assert!(
        b.wait_timeout(Duration::from_millis(10))
            .unwrap_err()
            .is_barrier_broken()
    );
}

#[test]
fn a_barrier_keeps_its_own_party_count() {
    let b = Barrier::new(2).unwrap();
    b.cell.word(PARTIES).store(1, Ordering::Relaxed);
    assert_eq!(b.parties(), 2);
    assert!(
        b.wait_timeout(Duration::from_millis(10))
            .unwrap_err()
            .is_barrier_broken()
    );
    // A handle arriving in a process reads the count once, and refuses
    // a count no barrier has.
    assert_eq!(round_trip(&b).parties(), 1);
    b.cell.word(PARTIES).store(0, Ordering::Relaxed);
    let (bytes, fds) = crate::sys::fdpass::capture(|| postcard::to_stdvec(&b).unwrap());
    let got =
        crate::sys::fdpass::with_table(fds, || postcard::from_bytes::<Barrier>(&bytes).map(|_| ()));
    assert!(got.is_err());
}

#[test]
fn a_semaphore_count_neither_wraps_nor_goes_below_zero() {
    let s = Semaphore::new(u64::MAX).unwrap();
    s.release();
    assert_eq!(s.available(), u64::MAX);
    let s = Semaphore::new(0).unwrap();
    assert!(!s.try_acquire());
    assert_eq!(s.available(), 0);
}

#[test]
fn event_semaphore_and_barrier_ignore_a_held_mutex() {
    let e = Event::new().unwrap();
    let s = Semaphore::new(1).unwrap();
    let b = Barrier::new(1).unwrap();
    for seg in [&e.cell.seg, &s.cell.seg, &b.cell.seg] {
        // pid 1 never unlocks.
        seg.atomic_u64(OWNER).store(1 << 32 | 1, Ordering::Relaxed);
    }
    let limit = Duration::from_millis(20);
    e.set();
    assert!(within(limit, || e.wait_timeout(limit)));
    e.clear();
    assert!(!within(limit, || e.wait_timeout(limit)));
    assert!(within(limit, || s.acquire_timeout(limit)));
    assert!(!within(limit, || s.acquire_timeout(limit)));
    s.release();
    assert!(within(limit, || b.wait_timeout(limit)).unwrap().is_leader());
    b.abort();
    b.reset();
}

/// Every timed or non-blocking operation of every handle, over a page
/// whose first bytes are `header`.
fn every_operation_returns_on_time(header: &[u8], value_too: bool) {
    let limit = Duration::from_millis(5);
    let scribble = |seg: &Segment| seg.copy_in(0, header);

    let lock = Lock::new().unwrap();
    scribble(&lock.cell.seg);
    drop(within(limit, || lock.lock_timeout(limit)));
    drop(within(limit, || lock.try_lock()));

    if value_too {
        let value = Value::<u64>::new(1).unwrap();
        scribble(&value.cell.seg);
        drop(within(limit, || value.get()));
        drop(within(limit, || value.update(|v| v.wrapping_add(1))));
    }

    let event = Event::new().unwrap();
    scribble(&event.cell.seg);
    let set = event.is_set();
    assert_eq!(within(limit, || event.wait_timeout(limit)), set);
    within(limit, || event.set());
    assert!(within(limit, || event.wait_timeout(limit)));
    within(limit, || event.clear());
    assert!(!within(limit, || event.wait_timeout(limit)));

    let sem = Semaphore::new(0).unwrap();
    scribble(&sem.cell.seg);
    let had = sem.available();
    assert_eq!(within(limit, || sem.try_acquire()), had > 0);
    within(limit, || sem.acquire_timeout(limit));
    within(limit, || sem.release());
    assert!(within(limit, || sem.acquire_timeout(limit)));

    let barrier = Barrier::new(2).unwrap();
    scribble(&barrier.cell.seg);
    match within(limit, || barrier.wait_timeout(limit)) {
        Ok(_) => {}
        Err(e) => assert!(e.is_barrier_broken() || e.is_corrupted(), "{e}"),
    }
    within(limit, || barrier.abort());
    assert!(barrier.wait_timeout(limit).unwrap_err().is_barrier_broken());
    within(limit, || barrier.reset());
    assert!(
        within(limit, || barrier.wait_timeout(limit))
            .unwrap_err()
            .is_barrier_broken()
    );
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Whatever bytes cover the tag, mutex, condvar and state words of
    /// a handle, every operation with a timeout returns within it and
    /// nothing panics.
    #[test]
    fn any_bytes_over_a_handle(header in proptest::collection::vec(any::<u8>(), 256)) {
        let word = u64::from_ne_bytes(header[OWNER..OWNER + 8].try_into().unwrap());
        // `Value` has no timed operation: it waits for a live owner,
        // as any lock does, so it is only tried when the word names
        // none.
        let value_too = !thread_alive(word >> 32, word & 0x3fff_ffff);
        every_operation_returns_on_time(&header, value_too);
    }
}

#[test]
fn special_headers() {
    for fill in [0x00, 0xFF, 0x01, 0x80] {
        every_operation_returns_on_time(&[fill; 256], fill != 0x01);
    }
    let mut header = [0u8; 256];
    header[OWNER..OWNER + 8].copy_from_slice(&(1u64 << 32 | 1).to_ne_bytes());
    header[STATE_AT..STATE_AT + 8].copy_from_slice(&u64::MAX.to_ne_bytes());
    header[STATE_AT + 8..STATE_AT + 16].copy_from_slice(&(u64::MAX << 32).to_ne_bytes());
    every_operation_returns_on_time(&header, false);
}

#[test]
fn value_counts_exactly_across_threads() {
    let v = Value::<u64>::new(5).unwrap();
    let handles: Vec<_> = (0..4)
        .map(|_| {
            let v = round_trip(&v);
            std::thread::spawn(move || {
                for _ in 0..1000 {
                    v.update(|x| x + 1).unwrap();
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    assert_eq!(v.get().unwrap(), 4005);
    let f = Value::<f64>::new(0.5).unwrap();
    f.set(2.25).unwrap();
    assert_eq!(round_trip(&f).get().unwrap(), 2.25);
}

#[test]
fn a_dead_holder_gives_owner_died_once() {
    let lock = Lock::new().unwrap();
    let l2 = round_trip(&lock);
    std::thread::spawn(move || std::mem::forget(l2.lock().unwrap()))
        .join()
        .unwrap();
    assert!(lock.lock().unwrap_err().is_owner_died());
    let _g = lock.lock().unwrap();
    assert!(lock.try_lock().unwrap().is_none());
}

#[test]
fn handles_of_another_kind_are_refused() {
    let e = Event::new().unwrap();
    let (bytes, fds) = crate::sys::fdpass::capture(|| postcard::to_stdvec(&e).unwrap());
    let got =
        crate::sys::fdpass::with_table(fds, || postcard::from_bytes::<Lock>(&bytes).map(|_| ()));
    assert!(got.is_err());
}

#[test]
fn event_semaphore_and_barrier_work_across_threads() {
    let e = Event::new().unwrap();
    assert!(!e.wait_timeout(Duration::from_millis(10)));
    let e2 = round_trip(&e);
    let t = std::thread::spawn(move || e2.wait());
    std::thread::sleep(Duration::from_millis(20));
    e.set();
    t.join().unwrap();
    assert!(e.is_set());
    e.clear();
    assert!(!e.is_set());

    let s = Semaphore::new(1).unwrap();
    s.acquire();
    assert!(!s.try_acquire());
    assert!(!s.acquire_timeout(Duration::from_millis(10)));
    s.release();
    assert!(s.try_acquire());

    let b = Barrier::new(3).unwrap();
    let leaders = Arc::new(AtomicUsize::new(0));
    let ts: Vec<_> = (0..3)
        .map(|_| {
            let (b, leaders) = (round_trip(&b), leaders.clone());
            std::thread::spawn(move || {
                for _ in 0..5 {
                    if b.wait().unwrap().is_leader() {
                        leaders.fetch_add(1, Ordering::SeqCst);
                    }
                }
            })
        })
        .collect();
    for t in ts {
        t.join().unwrap();
    }
    assert_eq!(leaders.load(Ordering::SeqCst), 5);

    let lonely = Barrier::new(2).unwrap();
    assert!(
        lonely
            .wait_timeout(Duration::from_millis(10))
            .unwrap_err()
            .is_barrier_broken()
    );
    assert!(lonely.wait().unwrap_err().is_barrier_broken());
    lonely.reset();
    let l2 = lonely.clone();
    let t = std::thread::spawn(move || l2.wait().unwrap());
    lonely.wait().unwrap();
    t.join().unwrap();
}
