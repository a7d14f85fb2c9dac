//! Unit tests of `shm::sync`.

use super::*;
use crate::shm::segment::tests::round_trip;
use proptest::prelude::*;

/// Slack allowed over a timeout: scheduling on a loaded machine.
const MARGIN: Duration = Duration::from_millis(250);

fn pair() -> (RawMutex, RawCondvar, Segment) {
    let seg = Segment::create(c"test", 4096).unwrap();
    let m = RawMutex::init(&seg, 0).unwrap();
    let c = RawCondvar::init(&seg, 64);
    (m, c, seg)
}

fn owner(pid: u32, tid: u32) -> u64 {
    (u64::from(pid) << 32) | u64::from(tid)
}

/// Runs `f`, asserting that it returned within `limit` plus `MARGIN`.
fn within<R>(limit: Duration, f: impl FnOnce() -> R) -> R {
    let started = Instant::now();
    let r = f();
    let took = started.elapsed();
    assert!(took <= limit + MARGIN, "took {took:?}, limit {limit:?}");
    r
}

/// What a lock attempt said: 0 busy or timed out, 1 locked, 2 owner
/// died.
fn outcome(r: Result<Option<RawGuard<'_>>, OwnerDied<'_>>) -> u8 {
    match r {
        Ok(None) => 0,
        Ok(Some(_)) => 1,
        Err(_) => 2,
    }
}

#[test]
fn open_needs_init_and_init_happens_once() {
    let seg = Segment::create(c"test", 4096).unwrap();
    assert!(RawMutex::open(&seg, 128).is_err());
    RawMutex::init(&seg, 128).unwrap();
    assert!(RawMutex::init(&seg, 128).is_err());
    let other = round_trip(&seg);
    let m = RawMutex::open(&other, 128).unwrap();
    let g = m.lock().unwrap();
    assert!(!g.recovered());
    assert!(
        RawMutex::open(&seg, 128)
            .unwrap()
            .try_lock()
            .unwrap()
            .is_none()
    );
    drop(g);
    assert!(
        RawMutex::open(&seg, 128)
            .unwrap()
            .try_lock()
            .unwrap()
            .is_some()
    );
}

#[test]
fn a_thread_dying_with_the_lock_gives_owner_died_once() {
    let (m, _c, _seg) = pair();
    let m2 = m.clone();
    std::thread::spawn(move || std::mem::forget(m2.lock().unwrap()))
        .join()
        .unwrap();
    let died = m.lock().unwrap_err();
    assert!(died.into_guard().recovered());
    // The error unlocked on drop (via its guard); the mutex works again.
    let g = m.lock().unwrap();
    assert!(!g.recovered());
}

#[test]
fn timeouts_expire() {
    let (m, c, _seg) = pair();
    let g = m.lock().unwrap();
    let t = Instant::now();
    assert!(!c.wait_timeout(&g, Duration::from_millis(50)));
    assert!(t.elapsed() >= Duration::from_millis(50));
    assert!(g.held());
    let m2 = m.clone();
    let timed_out = std::thread::spawn(move || {
        m2.lock_timeout(Duration::from_millis(30))
            .unwrap()
            .is_none()
    });
    assert!(timed_out.join().unwrap());
}

#[test]
fn notify_wakes_waiters() {
    let (m, c, seg) = pair();
    let waiters: Vec<_> = (0..3)
        .map(|_| {
            let (m, c, seg) = (m.clone(), c.clone(), seg.clone());
            std::thread::spawn(move || {
                let g = m.lock().unwrap();
                while seg.atomic_u64(256).load(Ordering::Relaxed) == 0 {
                    c.wait(&g);
                }
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(20));
    {
        let _g = m.lock().unwrap();
        seg.atomic_u64(256).store(1, Ordering::Relaxed);
        c.notify_all();
    }
    for w in waiters {
        w.join().unwrap();
    }
}

#[test]
#[should_panic(expected = "locked twice")]
fn relocking_in_one_thread_panics() {
    let (m, _c, _seg) = pair();
    let _a = m.lock().unwrap();
    let _b = m.lock();
}

#[test]
fn many_threads_exclude_each_other() {
    let (m, _c, seg) = pair();
    let threads: Vec<_> = (0..4)
        .map(|_| {
            let (m, seg) = (m.clone(), seg.clone());
            std::thread::spawn(move || {
                for _ in 0..2000 {
                    let _g = m.lock().unwrap();
                    let v = seg.atomic_u64(256).load(Ordering::Relaxed);
                    seg.atomic_u64(256).store(v + 1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    assert_eq!(seg.atomic_u64(256).load(Ordering::Relaxed), 8000);
    assert_eq!(m.word().load(Ordering::Relaxed), 0);
}

#[test]
fn words_naming_no_thread_are_taken_over_at_once() {
    let (m, _c, _seg) = pair();
    let ghost = (1u32 << 22) + 1000;
    for word in [
        u64::MAX,
        owner(ghost, ghost),
        owner(0, 5),
        owner(5, 0),
        owner(1, 1) | RESERVED,
        owner(u32::MAX, 1),
        WAITERS | owner(ghost, ghost),
    ] {
        m.word().store(word, Ordering::Relaxed);
        let died = within(Duration::ZERO, || m.try_lock()).unwrap_err();
        assert!(died.into_guard().recovered(), "{word:#x}");
        assert_eq!(m.word().load(Ordering::Relaxed), 0, "{word:#x}");
    }
    // A free word with stray waiters bit is just free.
    m.word().store(WAITERS, Ordering::Relaxed);
    assert!(!m.lock().unwrap().recovered());
}

#[test]
fn a_word_forged_to_name_this_thread_is_taken_over_not_a_panic() {
    let (m, _c, _seg) = pair();
    m.word().store(this_thread(), Ordering::Relaxed);
    assert!(within(Duration::ZERO, || m.lock()).is_err());
    m.word().store(this_thread() | WAITERS, Ordering::Relaxed);
    let r = within(Duration::ZERO, || m.lock_timeout(Duration::from_secs(5)));
    assert!(r.is_err());
    drop(r);
    m.word().store(this_thread(), Ordering::Relaxed);
    assert!(m.try_lock().is_err());
    assert!(m.try_lock().unwrap().is_some());
}

#[test]
fn a_live_foreign_owner_is_waited_for_only_until_the_deadline() {
    let (m, _c, _seg) = pair();
    m.word().store(owner(1, 1), Ordering::Relaxed);
    let limit = Duration::from_millis(60);
    assert_eq!(within(limit, || outcome(m.lock_timeout(limit))), 0);
    assert_eq!(within(Duration::ZERO, || outcome(m.try_lock())), 0);
    let past = Instant::now();
    assert_eq!(within(Duration::ZERO, || outcome(m.lock_until(past))), 0);
    // The waiter left its waiters bit; the word still names pid 1.
    assert_eq!(m.word().load(Ordering::Relaxed) & !WAITERS, owner(1, 1));
}

#[test]
fn a_zombie_owner_is_dead() {
    let (m, _c, _seg) = pair();
    // SAFETY: the child only calls _exit, which is async-signal-safe.
    let child = unsafe { libc::fork() };
    if child == 0 {
        // SAFETY: ends the forked child at once.
        unsafe { libc::_exit(0) };
    }
    assert!(child > 0);
    // Not reaped yet: a zombie until waitpid below.
    std::thread::sleep(Duration::from_millis(50));
    let pid = child as u32;
    assert!(!process_alive(u64::from(pid)));
    m.word().store(owner(pid, pid), Ordering::Relaxed);
    let r = within(Duration::from_secs(1), || {
        outcome(m.lock_timeout(Duration::from_secs(1)))
    });
    assert_eq!(r, 2);
    // SAFETY: reaps the child forked above.
    unsafe { libc::waitpid(child, std::ptr::null_mut(), 0) };
    assert!(process_alive(u64::from(std::process::id())));
    assert!(!process_alive(0));
    assert!(!process_alive(u64::MAX));
}

#[test]
fn scribbling_the_word_while_held_does_not_disturb_the_unlock() {
    let (m, _c, seg) = pair();
    let g = m.lock().unwrap();
    for at in (0..RawMutex::SIZE).step_by(8) {
        seg.atomic_u64(at)
            .store(0x0000_7fff_dead_0000, Ordering::Relaxed);
    }
    drop(g);
    assert_eq!(m.word().load(Ordering::Relaxed), 0);
    assert!(!m.lock().unwrap().recovered());
}

#[test]
fn a_timed_condvar_wait_gives_up_the_lock_rather_than_overrun() {
    let (m, c, seg) = pair();
    let g = m.lock().unwrap();
    // Once the waiter has unlocked, another "process" takes the word
    // for a live owner that never lets go, and notifies.
    let (m2, c2) = (m.clone(), c.clone());
    let thief = std::thread::spawn(move || {
        while m2
            .word()
            .compare_exchange(0, owner(1, 1), Ordering::AcqRel, Ordering::Relaxed)
            .is_err()
        {
            std::thread::yield_now();
        }
        c2.notify_all();
    });
    let limit = Duration::from_millis(80);
    let woken = within(limit, || c.wait_timeout(&g, limit));
    thief.join().unwrap();
    assert!(!woken);
    assert!(!g.held());
    drop(g);
    // The inert guard did not clear the other owner's word.
    assert_eq!(m.word().load(Ordering::Relaxed) & !WAITERS, owner(1, 1));
    seg.atomic_u64(OWNER_AT).store(0, Ordering::Relaxed);
    let g = m.lock().unwrap();
    // A second wait on a guard works as usual.
    assert!(!c.wait_timeout(&g, Duration::from_millis(1)));
    assert!(g.held());
}

#[test]
fn a_storm_of_notifies_does_not_stretch_timed_waits() {
    let (m, c, _seg) = pair();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let storm = {
        let (c, stop) = (c.clone(), stop.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                c.notify_all();
            }
        })
    };
    let limit = Duration::from_millis(50);
    let deadline = Instant::now() + limit;
    within(
        limit,
        || while c.wait_changed(c.sequence(), Some(deadline)) {},
    );
    let g = m.lock().unwrap();
    let deadline = Instant::now() + limit;
    within(limit, || {
        while Instant::now() < deadline {
            c.wait_timeout(&g, deadline.saturating_duration_since(Instant::now()));
        }
    });
    stop.store(true, Ordering::Relaxed);
    storm.join().unwrap();
}

/// Owner words to try: special ones and random ones.
fn owner_words() -> impl Strategy<Value = u64> {
    prop_oneof![
        Just(0),
        Just(u64::MAX),
        Just(owner(1, 1)),
        Just(owner(1, 1) | WAITERS),
        Just(owner(std::process::id(), std::process::id())),
        Just(owner((1 << 22) + 7, (1 << 22) + 7)),
        Just(owner(0, 42)),
        any::<u64>(),
        (1u32..1 << 22, 1u32..1 << 22).prop_map(|(p, t)| owner(p, t)),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Whatever bytes cover a mutex and its condvar, every operation
    /// returns, within its time, without panicking, and a zeroed word
    /// works again.
    #[test]
    fn any_bytes_over_a_mutex_and_condvar(
        region in proptest::collection::vec(any::<u8>(), 128),
        word in owner_words(),
        this_thread_owns in any::<bool>(),
    ) {
        let (m, c, seg) = pair();
        seg.copy_in(0, &region);
        let word = if this_thread_owns { this_thread() } else { word };
        seg.atomic_u64(OWNER_AT).store(word, Ordering::Relaxed);
        let limit = Duration::from_millis(5);
        let got = within(limit, || m.lock_timeout(limit));
        if let Some(g) = match got {
            Ok(g) => g,
            Err(died) => Some(died.into_guard()),
        } {
            // Scribbled again while held, then a timed wait.
            seg.copy_in(0, &region);
            within(limit, || c.wait_timeout(&g, limit));
            drop(g);
        }
        within(Duration::ZERO, || drop(m.try_lock()));
        seg.atomic_u64(OWNER_AT).store(0, Ordering::Relaxed);
        prop_assert!(m.lock().is_ok());
    }
}
