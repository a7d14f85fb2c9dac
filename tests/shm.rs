//! Shared memory and process-shared synchronisation through real child
//! processes: shared counters (atomic and locked), in-place writes through
//! chunk leases, a 64 MiB `SharedBytes` argument, a lock holder killed by
//! SIGKILL, barrier, event, semaphore, and no files left behind by a crash.

use std::time::{Duration, Instant};

use multiproc::{
    Barrier, Event, ExitReason, Lock, Process, Semaphore, SharedArray, SharedBytes, Value,
};

/// `CLOCK_MONOTONIC` in nanoseconds: the same clock in every process.
fn now_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the timespec we pass.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

fn die_by_sigkill() -> ! {
    // SAFETY: killing ourselves.
    unsafe { libc::kill(libc::getpid(), libc::SIGKILL) };
    unreachable!("SIGKILL cannot be caught")
}

#[multiproc::worker]
fn count_atomic(counter: SharedArray<u64>, n: u64) {
    for _ in 0..n {
        counter.fetch_add(0, 1);
    }
}

/// A read-modify-write that is only correct because of the `Lock`.
#[multiproc::worker]
fn count_locked(lock: Lock, value: Value<u64>, n: u64) {
    for _ in 0..n {
        let _g = lock.lock().unwrap();
        let v = value.get().unwrap();
        value.set(v + 1).unwrap();
    }
}

#[multiproc::worker]
fn count_update(value: Value<i64>, n: u64) {
    for _ in 0..n {
        value.update(|v| v + 1).unwrap();
    }
}

#[multiproc::test]
fn four_processes_count_exactly_with_atomics() {
    let counter = SharedArray::<u64>::zeroed(1).unwrap();
    let ps: Vec<_> = (0..4)
        .map(|_| Process::spawn(count_atomic, (counter.clone(), 10_000)).unwrap())
        .collect();
    for p in ps {
        p.join().unwrap();
    }
    assert_eq!(counter.load(0), 40_000);
}

#[multiproc::test]
fn four_processes_count_exactly_with_a_lock_and_a_value() {
    let lock = Lock::new().unwrap();
    let value = Value::<u64>::new(0).unwrap();
    let ps: Vec<_> = (0..4)
        .map(|_| Process::spawn(count_locked, (lock.clone(), value.clone(), 10_000)).unwrap())
        .collect();
    for p in ps {
        p.join().unwrap();
    }
    assert_eq!(value.get().unwrap(), 40_000);

    let cell = Value::<i64>::new(-5).unwrap();
    let ps: Vec<_> = (0..4)
        .map(|_| Process::spawn(count_update, (cell.clone(), 10_000)).unwrap())
        .collect();
    for p in ps {
        p.join().unwrap();
    }
    assert_eq!(cell.get().unwrap(), 39_995);
}

/// Doubles the chunks `first, first + step, ...` in place; returns how many
/// elements it touched.
#[multiproc::worker]
fn double_chunks(data: SharedArray<f64>, chunk_len: usize, first: usize, step: usize) -> usize {
    let mut touched = 0;
    for index in (first..data.chunk_count(chunk_len)).step_by(step) {
        let mut chunk = data.chunk(chunk_len, index).unwrap();
        for x in chunk.iter_mut() {
            *x *= 2.0;
        }
        touched += chunk.len();
    }
    touched
}

#[multiproc::test]
fn workers_double_a_shared_array_in_place() {
    let values: Vec<f64> = (0..10_007).map(|i| i as f64).collect();
    let data = SharedArray::from_slice(&values).unwrap();
    let ps: Vec<_> = (0..4)
        .map(|k| Process::spawn(double_chunks, (data.clone(), 1000, k, 4)).unwrap())
        .collect();
    let touched: usize = ps.into_iter().map(|p| p.join().unwrap()).sum();
    assert_eq!(touched, 10_007);
    let doubled = data.to_vec();
    for (i, x) in doubled.iter().enumerate() {
        assert_eq!(*x, 2.0 * i as f64, "element {i}");
    }
}

/// Tries to lease chunk 0 and chunk 1 of 10 elements.
#[multiproc::worker]
fn try_two_chunks(data: SharedArray<u32>) -> (bool, bool) {
    let first = data.try_chunk(10, 0).unwrap().is_some();
    let second = data.try_chunk(10, 1).unwrap().map(|mut c| {
        c.fill(7);
        c.len()
    });
    (first, second == Some(10))
}

#[multiproc::test]
fn two_leases_on_one_chunk_cannot_coexist() {
    let data = SharedArray::<u32>::zeroed(30).unwrap();
    let held = data.chunk(10, 0).unwrap();
    assert!(data.try_chunk(10, 0).unwrap().is_none());
    let (first, second) = Process::spawn(try_two_chunks, data.clone())
        .unwrap()
        .join()
        .unwrap();
    assert!(!first, "another process leased a chunk this process holds");
    assert!(second);
    assert_eq!(data.load(15), 7);
    drop(held);
    let (first, _) = Process::spawn(try_two_chunks, data.clone())
        .unwrap()
        .join()
        .unwrap();
    assert!(first, "a released chunk is free again");
}

/// Returns the length and a position-weighted checksum of the bytes.
#[multiproc::worker]
fn checksum(data: SharedBytes) -> (usize, u64) {
    let sum = data.iter().enumerate().fold(0u64, |acc, (i, &b)| {
        acc.wrapping_add(u64::from(b).wrapping_mul(i as u64 | 1))
    });
    (data.len(), sum)
}

#[multiproc::test]
fn a_64_mib_argument_travels_through_shared_memory() {
    let len = 64 << 20;
    let bytes: Vec<u8> = (0..len).map(|i| (i * 31 % 251) as u8).collect();
    let expected = checksum(SharedBytes::copy_from_slice(&bytes[..1000]).unwrap());
    assert_eq!(expected.0, 1000);
    let local = bytes.iter().enumerate().fold(0u64, |acc, (i, &b)| {
        acc.wrapping_add(u64::from(b).wrapping_mul(i as u64 | 1))
    });
    let started = Instant::now();
    let shared = SharedBytes::from_vec(bytes).unwrap();
    let created = started.elapsed();
    let (got_len, got_sum) = Process::spawn(checksum, shared.clone())
        .unwrap()
        .join()
        .unwrap();
    println!(
        "64 MiB SharedBytes: created in {created:?}, spawn + checksum + join in {:?}",
        started.elapsed() - created
    );
    assert_eq!(got_len, len);
    assert_eq!(got_sum, local);
}

/// Locks, then dies by SIGKILL while holding the lock.
#[multiproc::worker]
fn lock_and_die(lock: Lock) {
    let guard = lock.lock().unwrap();
    std::mem::forget(guard);
    die_by_sigkill()
}

/// Reports what the first lock() said and whether a second one works.
#[multiproc::worker]
fn lock_twice(lock: Lock) -> (bool, bool) {
    let first_owner_died = match lock.lock() {
        Ok(_) => false,
        Err(e) => e.is_owner_died(),
    };
    let second_ok = lock.lock_timeout(Duration::from_secs(5)).unwrap().is_some();
    (first_owner_died, second_ok)
}

#[multiproc::test]
fn a_lock_holder_killed_by_sigkill_gives_the_next_locker_owner_died() {
    let lock = Lock::new().unwrap();
    let err = Process::spawn(lock_and_die, lock.clone())
        .unwrap()
        .join()
        .unwrap_err();
    assert_eq!(err.exit_reason(), Some(ExitReason::Signal(libc::SIGKILL)));
    let (owner_died, then_ok) = Process::spawn(lock_twice, lock.clone())
        .unwrap()
        .join()
        .unwrap();
    assert!(owner_died, "the next locker must see owner-died");
    assert!(then_ok, "after owner-died the lock must work");
    // And in this process, with no error left over.
    let _g = lock.lock().unwrap();
}

#[multiproc::test]
fn a_value_holder_killed_by_sigkill_does_not_deadlock() {
    let value = Value::<u32>::new(3).unwrap();
    let err = Process::spawn(value_lock_and_die, value.clone())
        .unwrap()
        .join()
        .unwrap_err();
    assert!(err.is_worker_died());
    assert!(value.get().unwrap_err().is_owner_died());
    // The holder's set(9) happened before it died; the cell is whole.
    assert_eq!(value.get().unwrap(), 9);
}

#[multiproc::worker]
fn value_lock_and_die(value: Value<u32>) {
    let mut guard = value.lock().unwrap();
    guard.set(9);
    std::mem::forget(guard);
    die_by_sigkill()
}

/// Arrives at the barrier after `delay_ms`, recording arrival and pass
/// times in `times[2 * party]` and `times[2 * party + 1]`.
#[multiproc::worker]
fn barrier_party(barrier: Barrier, times: SharedArray<u64>, party: usize, delay_ms: u64) -> bool {
    std::thread::sleep(Duration::from_millis(delay_ms));
    times.store(2 * party, now_ns());
    let leader = barrier.wait().unwrap().is_leader();
    times.store(2 * party + 1, now_ns());
    leader
}

#[multiproc::test]
fn a_barrier_of_four_processes_releases_all_after_the_last_arrival() {
    let barrier = Barrier::new(4).unwrap();
    let times = SharedArray::<u64>::zeroed(8).unwrap();
    let ps: Vec<_> = (0..4)
        .map(|party| {
            Process::spawn(
                barrier_party,
                (barrier.clone(), times.clone(), party, 100 * party as u64),
            )
            .unwrap()
        })
        .collect();
    let leaders = ps
        .into_iter()
        .map(|p| p.join().unwrap())
        .filter(|&l| l)
        .count();
    assert_eq!(leaders, 1);
    let t = times.to_vec();
    let last_arrival = (0..4).map(|p| t[2 * p]).max().unwrap();
    let first_pass = (0..4).map(|p| t[2 * p + 1]).min().unwrap();
    assert!(t.iter().all(|&x| x > 0));
    assert!(
        first_pass >= last_arrival,
        "a party passed at {first_pass} before the last arrived at {last_arrival}"
    );
}

#[multiproc::test]
fn a_barrier_timeout_breaks_it_instead_of_hanging() {
    let barrier = Barrier::new(2).unwrap();
    let err = barrier.wait_timeout(Duration::from_millis(50)).unwrap_err();
    assert!(err.is_barrier_broken());
    // A party arriving later sees the broken barrier at once.
    let times = SharedArray::<u64>::zeroed(2).unwrap();
    let p = Process::spawn(barrier_party, (barrier.clone(), times, 0, 0)).unwrap();
    assert!(p.join().unwrap_err().is_panic());
}

/// Waits for the event; returns whether it was set and when it woke.
#[multiproc::worker]
fn wait_for(event: Event, started: Event) -> (bool, u64) {
    started.set();
    let set = event.wait_timeout(Duration::from_secs(30));
    (set, now_ns())
}

#[multiproc::test]
fn an_event_set_in_one_process_wakes_a_waiter_in_another() {
    let event = Event::new().unwrap();
    let started = Event::new().unwrap();
    let p = Process::spawn(wait_for, (event.clone(), started.clone())).unwrap();
    assert!(started.wait_timeout(Duration::from_secs(30)));
    std::thread::sleep(Duration::from_millis(100));
    assert!(
        !p.is_finished(),
        "the waiter returned before the event was set"
    );
    let set_at = now_ns();
    event.set();
    let (was_set, woke_at) = p.join().unwrap();
    assert!(was_set);
    assert!(woke_at >= set_at);
    assert!(event.is_set());
}

/// Takes the semaphore `rounds` times, tracking concurrent holders in
/// `stats[0]` (now) and `stats[1]` (most seen), and holds in `stats[2]`.
#[multiproc::worker]
fn hold_semaphore(sem: Semaphore, stats: SharedArray<u64>, rounds: u32) {
    for _ in 0..rounds {
        sem.acquire();
        let now = stats.fetch_add(0, 1) + 1;
        let mut max = stats.load(1);
        while now > max {
            match stats.compare_exchange(1, max, now) {
                Ok(_) => break,
                Err(actual) => max = actual,
            }
        }
        stats.fetch_add(2, 1);
        std::thread::sleep(Duration::from_millis(5));
        stats.fetch_sub(0, 1);
        sem.release();
    }
}

#[multiproc::test]
fn a_semaphore_limits_concurrency_across_processes() {
    let sem = Semaphore::new(2).unwrap();
    let stats = SharedArray::<u64>::zeroed(3).unwrap();
    let ps: Vec<_> = (0..5)
        .map(|_| Process::spawn(hold_semaphore, (sem.clone(), stats.clone(), 10)).unwrap())
        .collect();
    for p in ps {
        p.join().unwrap();
    }
    assert_eq!(stats.load(2), 50);
    assert_eq!(stats.load(0), 0);
    let max = stats.load(1);
    assert!((1..=2).contains(&max), "{max} holders at once");
    assert_eq!(sem.available(), 2);
}

#[cfg(target_os = "linux")]
fn listing(dir: &std::path::Path) -> std::collections::BTreeSet<String> {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// Creates shared objects of every kind, checks that their mappings have
/// no name in any file system, then dies by SIGKILL while holding a lock
/// and a lease.
// Linux only: reads its own mappings in `/proc/self/maps`.
#[cfg(target_os = "linux")]
#[multiproc::worker]
fn create_everything_and_crash(received: SharedArray<u8>, lock: Lock) {
    let array = SharedArray::<u64>::zeroed(1 << 16).unwrap();
    let bytes = SharedBytes::from_vec(vec![1; 1 << 20]).unwrap();
    let (_v, _e, _s, _b) = (
        Value::<f64>::new(1.0).unwrap(),
        Event::new().unwrap(),
        Semaphore::new(1).unwrap(),
        Barrier::new(2).unwrap(),
    );
    let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
    let ours: Vec<&str> = maps.lines().filter(|l| l.contains("multiproc-")).collect();
    assert!(ours.len() >= 7, "{ours:?}");
    // Memfds; with `multiproc_portable`, POSIX shared memory unlinked at
    // once.
    let kind = if cfg!(multiproc_portable) {
        "/dev/shm/multiproc-"
    } else {
        "/memfd:"
    };
    assert!(ours.iter().all(|l| l.contains(kind)), "{ours:?}");
    let _lease = received.chunk(4, 0).unwrap();
    let _held = lock.lock().unwrap();
    std::mem::forget((array, bytes, _lease, _held));
    die_by_sigkill()
}

// Linux only: its worker reads `/proc/self/maps`.
#[cfg(target_os = "linux")]
#[multiproc::test]
fn a_crashed_process_leaves_nothing_in_dev_shm_or_the_temp_dir() {
    let shm = std::path::Path::new("/dev/shm");
    let tmp = std::env::temp_dir();
    let (shm_before, tmp_before) = (listing(shm), listing(&tmp));
    let received = SharedArray::<u8>::zeroed(8).unwrap();
    let lock = Lock::new().unwrap();
    let err = Process::spawn(
        create_everything_and_crash,
        (received.clone(), lock.clone()),
    )
    .unwrap()
    .join()
    .unwrap_err();
    assert_eq!(err.exit_reason(), Some(ExitReason::Signal(libc::SIGKILL)));
    let new_shm: Vec<_> = listing(shm).difference(&shm_before).cloned().collect();
    assert!(new_shm.is_empty(), "new in /dev/shm: {new_shm:?}");
    // Other test binaries may use the temp dir at the same time: only names
    // this crate could have made count.
    let new_tmp: Vec<_> = listing(&tmp)
        .difference(&tmp_before)
        .filter(|n| n.contains("multiproc") || n.contains("memfd") || n.starts_with("sem."))
        .cloned()
        .collect();
    assert!(new_tmp.is_empty(), "new in the temp dir: {new_tmp:?}");
    // The dead process's lease was reclaimed and its lock reports it.
    assert!(received.try_chunk(4, 0).unwrap().is_some());
    assert!(lock.lock().unwrap_err().is_owner_died());
}
