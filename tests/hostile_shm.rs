//! Shared objects attacked by a hostile worker process.
//!
//! The attacker is a `#[worker]` in a real child process: it receives the
//! object as an ordinary argument, finds the object's `memfd` among its own
//! descriptors, maps it and scribbles it (0xFF everywhere, random bytes, an
//! owner that does not exist, this process's own thread, a live process
//! that never unlocks, pointer-shaped garbage, huge counts), or tries to
//! resize or reseal it. This process must survive every attack: no panic,
//! no abort, the documented outcome (`OwnerDied`, `Corrupted`, a timeout
//! result), every `*_timeout` call back within its timeout plus
//! [`MARGIN`], and the object (or a fresh one) usable afterwards.
//!
//! The attacker writes at the offsets of the objects' layouts (see the
//! module docs of `runtime/src/shm/{primitives,array,sync}.rs`):
//! primitives keep their mutex at 64 (owner word at 72: thread id in the
//! low half, pid in the high half), their condvar word at 128 and their
//! state words from 192; a shared array keeps its mutex at 64, condvar at
//! 128 and a lease table of 32-byte entries (pid, start, end) from 192.
//!
//! A process that receives an object checks its kind tag (bytes `0..8`,
//! and an array's length at `8..16`) and that its mutex was initialised
//! (bytes `64..68`). An attack that overwrites those bytes is the last one
//! a test makes on that object: the next attacker could not receive it.
//!
//! Linux only: the attacker finds its target through `/proc/self/fd` and
//! attacks with Linux's calls (`fallocate`, seals, `futex`). With
//! `multiproc_portable` the objects are POSIX shared memory, found under
//! `/dev/shm`, and the expectations that differ say why.
#![cfg(target_os = "linux")]

use std::os::fd::RawFd;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use multiproc::{Barrier, Event, Lock, Process, Semaphore, SharedArray, SharedBytes, Value};
use serde::{Deserialize, Serialize};

/// Slack allowed over a timeout: scheduling on a loaded machine.
const MARGIN: Duration = Duration::from_millis(250);

/// Owner word of a primitive's or an array's mutex.
const OWNER_AT: usize = 72;
/// Condvar (sequence) word of a primitive or an array.
const CONDVAR_AT: usize = 128;
/// First state word of a primitive; the lease table of an array.
const STATE_AT: usize = 192;
/// A thread id no Linux system hands out: above `PID_MAX_LIMIT` (2^22).
const NO_SUCH_THREAD: u32 = (1 << 22) + 1000;

/// Aborts the test binary if the test is still running after 30 s, so a
/// regression that hangs fails instead of stalling CI. Dropping it disarms
/// it.
struct Watchdog(#[allow(dead_code)] mpsc::Sender<()>);

fn watchdog(test: &'static str) -> Watchdog {
    let (tx, rx) = mpsc::channel::<()>();
    std::thread::spawn(move || {
        if rx.recv_timeout(Duration::from_secs(30)) == Err(mpsc::RecvTimeoutError::Timeout) {
            // Straight to descriptor 2: the test harness captures what
            // this thread prints, and the abort would swallow it.
            let msg = format!("\n{test}: still running after 30 s (a hang); aborting\n");
            // SAFETY: write(2) of a live buffer to standard error.
            unsafe { libc::write(2, msg.as_ptr().cast(), msg.len()) };
            std::process::abort();
        }
    });
    Watchdog(tx)
}

/// Runs `f`, asserting that it returned within `limit` plus [`MARGIN`].
fn within<T>(limit: Duration, what: &str, f: impl FnOnce() -> T) -> T {
    let started = Instant::now();
    let out = f();
    let took = started.elapsed();
    assert!(
        took <= limit + MARGIN,
        "{what} took {took:?}; its limit was {limit:?}"
    );
    out
}

/// A mutex owner word: `tid` in the low half, `pid` in the high half.
fn owner(pid: u32, tid: u32) -> u64 {
    (u64::from(pid) << 32) | u64::from(tid)
}

fn my_tid() -> u32 {
    // SAFETY: gettid has no preconditions.
    (unsafe { libc::syscall(libc::SYS_gettid) }) as u32
}

/// The object under attack.
#[derive(Serialize, Deserialize, Debug)]
enum Target {
    Lock(Lock),
    Value(Value<u64>),
    Event(Event),
    Semaphore(Semaphore),
    Barrier(Barrier),
    Array(SharedArray<u64>),
    Bytes(SharedBytes),
}

impl Target {
    /// The name its memfd carries.
    fn memfd_name(&self) -> &'static str {
        match self {
            Target::Lock(_) => "multiproc-lock",
            Target::Value(_) => "multiproc-value",
            Target::Event(_) => "multiproc-event",
            Target::Semaphore(_) => "multiproc-semaphore",
            Target::Barrier(_) => "multiproc-barrier",
            Target::Array(_) => "multiproc-array",
            Target::Bytes(_) => "multiproc-bytes",
        }
    }
}

/// What the attacker does to the object's memory.
#[derive(Serialize, Deserialize, Debug, Clone)]
enum Attack {
    /// Every byte of the segment.
    Fill(u8),
    /// `u64` stores at byte offsets.
    Words(Vec<(usize, u64)>),
    /// Random bytes over `from..to`, from `seed`.
    Random { seed: u64, from: usize, to: usize },
    /// Writes `word` at `word_at` and then, for `millis`, bumps the `u32`
    /// futex word at `bump_at` and wakes every sleeper on it.
    Storm {
        word_at: usize,
        word: u64,
        bump_at: usize,
        millis: u64,
    },
    /// Tries to resize the memfd and to add seals; reports each outcome.
    Resize,
    /// Tries every way to write a sealed memfd; reports each outcome.
    WriteSealed,
}

/// Descriptors of the shared-memory objects named `name` in this process
/// (a received descriptor may be open more than once), and their lengths:
/// one object, except with `multiproc_portable`, where a `SharedBytes`
/// that arrives is copied into a second one of the receiver's own (no
/// seal proves its sender kept no writable descriptor).
fn find_memfds(name: &str) -> Vec<(RawFd, usize)> {
    // With `multiproc_portable`: `/dev/shm/<name>.<random> (deleted)`.
    let prefix = if cfg!(multiproc_portable) {
        format!("/dev/shm/{name}.")
    } else {
        format!("/memfd:{name} ")
    };
    let mut found: Vec<(RawFd, libc::stat)> = std::fs::read_dir("/proc/self/fd")
        .expect("/proc/self/fd is readable")
        .flatten()
        .filter_map(|e| {
            let link = std::fs::read_link(e.path()).ok()?;
            let fd: RawFd = e.file_name().to_str()?.parse().ok()?;
            if !link.to_str()?.starts_with(&prefix) {
                return None;
            }
            // SAFETY: fstat writes into the zeroed stat we pass.
            let st = unsafe {
                let mut st: libc::stat = std::mem::zeroed();
                (libc::fstat(fd, &mut st) == 0).then_some(st)?
            };
            Some((fd, st))
        })
        .collect();
    found.sort_by_key(|(_, st)| (st.st_dev, st.st_ino));
    found.dedup_by_key(|(_, st)| (st.st_dev, st.st_ino));
    let most = if cfg!(multiproc_portable) && name == "multiproc-bytes" {
        2
    } else {
        1
    };
    assert!(
        (1..=most).contains(&found.len()),
        "objects named {name}: {}",
        found.len()
    );
    found
        .into_iter()
        .map(|(fd, st)| (fd, st.st_size as usize))
        .collect()
}

fn errno() -> i32 {
    std::io::Error::last_os_error().raw_os_error().unwrap_or(-1)
}

/// `0` if `rc` says success, else the errno.
fn outcome(rc: libc::c_long) -> i32 {
    if rc < 0 { errno() } else { 0 }
}

/// Maps `len` bytes of `fd` read-write and shared.
fn map_rw(fd: RawFd, len: usize) -> *mut u8 {
    // SAFETY: a fresh shared mapping of a descriptor this process holds.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED,
            fd,
            0,
        )
    };
    assert_ne!(p, libc::MAP_FAILED, "map the target: {}", errno());
    p.cast()
}

/// A small deterministic generator (splitmix64), so a failing seed can be
/// replayed.
fn splitmix(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The attacker: does `attack` to `target`'s memory and reports, for the
/// resize and write attempts, each operation with its errno (0: it worked).
#[multiproc::worker]
fn scribble(target: Target, how: Attack) -> Vec<(String, i32)> {
    let objects = find_memfds(target.memfd_name());
    let mut report = Vec::new();
    if let Attack::WriteSealed = how {
        for &(fd, len) in &objects {
            write_sealed(fd, len, &mut report);
        }
        return report;
    }
    let (fd, len) = objects[0];
    match how {
        Attack::Fill(byte) => {
            let p = map_rw(fd, len);
            for i in 0..len {
                // SAFETY: inside the mapping made above.
                unsafe { p.add(i).write_volatile(byte) };
            }
        }
        Attack::Words(words) => {
            let p = map_rw(fd, len);
            for (at, word) in words {
                assert!(at % 8 == 0 && at + 8 <= len);
                // SAFETY: an aligned word inside the mapping made above.
                unsafe { p.add(at).cast::<u64>().write_volatile(word) };
            }
        }
        Attack::Random { seed, from, to } => {
            let p = map_rw(fd, len);
            let mut state = seed;
            for i in from..to.min(len) {
                // SAFETY: inside the mapping made above.
                unsafe { p.add(i).write_volatile(splitmix(&mut state) as u8) };
            }
        }
        Attack::Storm {
            word_at,
            word,
            bump_at,
            millis,
        } => {
            let p = map_rw(fd, len);
            // SAFETY: an aligned word inside the mapping made above.
            unsafe { p.add(word_at).cast::<u64>().write_volatile(word) };
            // SAFETY: an aligned u32 inside the mapping, which outlives the
            // loop; any bit pattern is a valid AtomicU32.
            let futex = unsafe { &*p.add(bump_at).cast::<std::sync::atomic::AtomicU32>() };
            let until = Instant::now() + Duration::from_millis(millis);
            while Instant::now() < until {
                futex.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                // SAFETY: FUTEX_WAKE on a live, aligned u32.
                unsafe {
                    libc::syscall(libc::SYS_futex, futex.as_ptr(), libc::FUTEX_WAKE, i32::MAX)
                };
            }
        }
        Attack::Resize => {
            // SAFETY: plain system calls on a descriptor this process holds.
            unsafe {
                report.push(("shrink".into(), outcome(libc::ftruncate(fd, 0).into())));
                report.push((
                    "grow".into(),
                    outcome(libc::ftruncate(fd, (2 * len) as libc::off_t).into()),
                ));
                report.push((
                    "fallocate past the end".into(),
                    outcome(libc::fallocate(fd, 0, len as libc::off_t, 4096).into()),
                ));
                report.push((
                    "add F_SEAL_FUTURE_WRITE".into(),
                    outcome(libc::fcntl(fd, libc::F_ADD_SEALS, libc::F_SEAL_FUTURE_WRITE).into()),
                ));
            }
        }
        Attack::WriteSealed => unreachable!("handled above"),
    }
    report
}

/// Tries every way to write the sealed object `fd` of `len` bytes, and
/// reports each outcome.
fn write_sealed(fd: RawFd, len: usize, report: &mut Vec<(String, i32)>) {
    // SAFETY: plain system calls on a descriptor this process holds
    // and on a mapping made here.
    unsafe {
        report.push((
            "pwrite".into(),
            outcome(libc::pwrite(fd, b"x".as_ptr().cast(), 1, 0) as libc::c_long),
        ));
        let p = libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED,
            fd,
            0,
        );
        report.push((
            "mmap writable".into(),
            if p == libc::MAP_FAILED { errno() } else { 0 },
        ));
        let r = libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ,
            libc::MAP_SHARED,
            fd,
            0,
        );
        assert_ne!(r, libc::MAP_FAILED);
        report.push((
            "mprotect to writable".into(),
            outcome(libc::mprotect(r, len, libc::PROT_READ | libc::PROT_WRITE).into()),
        ));
        report.push((
            "punch a hole".into(),
            outcome(
                libc::fallocate(
                    fd,
                    libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                    0,
                    len as libc::off_t,
                )
                .into(),
            ),
        ));
        report.push(("shrink".into(), outcome(libc::ftruncate(fd, 0).into())));
    }
}

/// Runs `how` against `target` in a worker process and returns its report.
fn run_attack(target: Target, how: Attack) -> Vec<(String, i32)> {
    Process::spawn(scribble, (target, how))
        .expect("spawn the attacker")
        .join()
        .expect("the attacker ran")
}

/// Starts `how` against `target` in a worker process without waiting.
fn start_attack(target: Target, how: Attack) -> Process<Vec<(String, i32)>> {
    Process::spawn(scribble, (target, how)).expect("spawn the attacker")
}

#[multiproc::test]
fn a_scribbled_lock_reports_owner_died_or_times_out_and_never_panics() {
    let _w = watchdog("lock");
    let lock = Lock::new().unwrap();

    // An owner thread that does not exist: taken over, not waited for.
    let ghost = owner(NO_SUCH_THREAD, NO_SUCH_THREAD);
    run_attack(
        Target::Lock(lock.clone()),
        Attack::Words(vec![(OWNER_AT, ghost)]),
    );
    let got = within(Duration::from_secs(2), "lock_timeout, ghost owner", || {
        lock.lock_timeout(Duration::from_secs(2))
            .map(|g| g.is_some())
    });
    assert!(got.unwrap_err().is_owner_died());

    // This very thread, which does not hold it: a forgery, taken over.
    let me = owner(std::process::id(), my_tid());
    run_attack(
        Target::Lock(lock.clone()),
        Attack::Words(vec![(OWNER_AT, me)]),
    );
    let got = within(
        Duration::from_secs(2),
        "lock_timeout, own tid forged",
        || {
            lock.lock_timeout(Duration::from_secs(2))
                .map(|g| g.is_some())
        },
    );
    assert!(got.unwrap_err().is_owner_died());
    assert!(lock.try_lock().unwrap().is_some());

    // A live process that will never unlock (pid 1): the timeout holds.
    let init = owner(1, 1);
    run_attack(
        Target::Lock(lock.clone()),
        Attack::Words(vec![(OWNER_AT, init)]),
    );
    let got = within(
        Duration::from_millis(300),
        "lock_timeout, owner pid 1",
        || {
            lock.lock_timeout(Duration::from_millis(300))
                .map(|g| g.is_some())
        },
    );
    assert!(!got.unwrap(), "a lock held by a live process was taken");
    assert!(within(Duration::ZERO, "try_lock, owner pid 1", || {
        lock.try_lock().unwrap().is_none()
    }));
    let fresh = Lock::new().unwrap();
    drop(fresh.lock().unwrap());
    run_attack(
        Target::Lock(lock.clone()),
        Attack::Words(vec![(OWNER_AT, 0)]),
    );
    drop(lock.lock().unwrap());

    // 0xFF everywhere: no thread is named; the lock is taken over.
    run_attack(Target::Lock(lock.clone()), Attack::Fill(0xFF));
    let got = within(Duration::from_secs(2), "lock_timeout over 0xFF", || {
        lock.lock_timeout(Duration::from_secs(2))
            .map(|g| g.is_some())
    });
    assert!(got.unwrap_err().is_owner_died());
    drop(lock.lock().unwrap());
}

#[multiproc::test]
fn pointer_garbage_written_while_this_process_holds_the_lock_is_never_followed() {
    let _w = watchdog("pointer garbage");
    let lock = Lock::new().unwrap();
    // Pointer-shaped words where a robust pthread mutex at 72 would keep
    // the links of its holder's robust list (96..112), which a pthread
    // unlock follows and writes through.
    let guard = lock.lock().unwrap();
    let links = vec![(96, 0x0000_7fff_dead_0000), (104, 0x0000_7fff_dead_0100)];
    run_attack(Target::Lock(lock.clone()), Attack::Words(links));
    within(Duration::ZERO, "unlock after list garbage", || drop(guard));
    drop(lock.lock().unwrap());

    // Pointer-shaped words over the whole mutex region but its owner word.
    let guard = lock.lock().unwrap();
    let words = (64..128)
        .step_by(8)
        .filter(|&at| at != OWNER_AT)
        .map(|at| (at, 0x0000_7fff_dead_0000 + at as u64))
        .collect();
    run_attack(Target::Lock(lock.clone()), Attack::Words(words));
    within(Duration::ZERO, "unlock after pointer garbage", || {
        drop(guard)
    });
    drop(lock.lock().unwrap());

    // The owner word itself rewritten while held: unlocking still works.
    let lock = Lock::new().unwrap();
    let guard = lock.lock().unwrap();
    run_attack(Target::Lock(lock.clone()), Attack::Fill(0xA5));
    within(Duration::ZERO, "unlock after 0xA5", || drop(guard));
    let got = within(Duration::from_secs(1), "lock after 0xA5", || {
        lock.lock_timeout(Duration::from_secs(1))
            .map(|g| g.is_some())
    });
    assert!(matches!(got, Ok(true)) || got.unwrap_err().is_owner_died());
    drop(lock.lock().unwrap());
}

#[multiproc::test]
fn random_bytes_over_a_lock_never_panic_and_every_timeout_holds() {
    let _w = watchdog("random lock");
    let lock = Lock::new().unwrap();
    let limit = Duration::from_millis(100);
    for seed in 0..12u64 {
        run_attack(
            Target::Lock(lock.clone()),
            Attack::Random {
                seed,
                from: 68,
                to: 128,
            },
        );
        let got = within(limit, &format!("lock_timeout, seed {seed}"), || {
            lock.lock_timeout(limit).map(|g| g.is_some())
        });
        // Locked, timed out (a live owner named by chance), or taken over.
        assert!(
            got.is_ok() || got.unwrap_err().is_owner_died(),
            "seed {seed}"
        );
    }
    run_attack(Target::Lock(lock.clone()), Attack::Fill(0));
    drop(lock.lock().unwrap());
}

#[multiproc::test]
fn a_scribbled_value_reports_owner_died_and_keeps_any_number() {
    let _w = watchdog("value");
    let value = Value::<u64>::new(7).unwrap();
    let me = owner(std::process::id(), my_tid());
    run_attack(
        Target::Value(value.clone()),
        Attack::Words(vec![(OWNER_AT, me), (STATE_AT, 0xDEAD)]),
    );
    assert!(value.set(1).unwrap_err().is_owner_died());
    assert_eq!(value.get().unwrap(), 0xDEAD);
    assert_eq!(value.update(|v| v + 1).unwrap(), 0xDEAE);

    run_attack(Target::Value(value.clone()), Attack::Fill(0xFF));
    assert!(value.get().unwrap_err().is_owner_died());
    // Any bit pattern is a number.
    assert_eq!(value.get().unwrap(), u64::MAX);
    value.set(3).unwrap();
    assert_eq!(value.get().unwrap(), 3);
}

#[multiproc::test]
fn an_event_ignores_its_lock_word_and_a_storm_of_wakes() {
    let _w = watchdog("event");
    let event = Event::new().unwrap();
    // A live process named as the owner of the mutex in the event's page,
    // and its futex word bumped and woken for a second.
    let storm = start_attack(
        Target::Event(event.clone()),
        Attack::Storm {
            word_at: OWNER_AT,
            word: owner(1, 1),
            bump_at: CONDVAR_AT,
            millis: 1000,
        },
    );
    std::thread::sleep(Duration::from_millis(100));
    let limit = Duration::from_millis(300);
    let set = within(limit, "Event::wait_timeout in a storm", || {
        event.wait_timeout(limit)
    });
    assert!(!set);
    within(Duration::ZERO, "Event::set in a storm", || event.set());
    assert!(within(limit, "Event::wait_timeout once set", || {
        event.wait_timeout(limit)
    }));
    within(Duration::ZERO, "Event::wait once set", || event.wait());
    within(Duration::ZERO, "Event::clear in a storm", || event.clear());
    assert!(!event.is_set());
    storm.join().unwrap();

    // A flag of 0xFF bytes reads as set (any non-zero flag is set).
    run_attack(Target::Event(event.clone()), Attack::Fill(0xFF));
    assert!(event.is_set());
    assert!(within(limit, "Event::wait_timeout, 0xFF", || {
        event.wait_timeout(limit)
    }));
    within(Duration::ZERO, "Event::clear, 0xFF", || event.clear());
    assert!(!within(limit, "Event::wait_timeout, cleared", || {
        event.wait_timeout(limit)
    }));
}

#[multiproc::test]
fn a_semaphore_survives_huge_counts_a_held_lock_word_and_a_storm() {
    let _w = watchdog("semaphore");
    let sem = Semaphore::new(0).unwrap();
    let limit = Duration::from_millis(300);

    // A live owner of the (unused) mutex and a storm of wakes: a timed
    // acquire of an empty semaphore still ends on time.
    let storm = start_attack(
        Target::Semaphore(sem.clone()),
        Attack::Storm {
            word_at: OWNER_AT,
            word: owner(1, 1),
            bump_at: CONDVAR_AT,
            millis: 1000,
        },
    );
    std::thread::sleep(Duration::from_millis(100));
    assert!(!within(limit, "acquire_timeout in a storm", || {
        sem.acquire_timeout(limit)
    }));
    assert!(!within(Duration::ZERO, "try_acquire in a storm", || {
        sem.try_acquire()
    }));
    within(Duration::ZERO, "release in a storm", || sem.release());
    assert!(within(
        limit,
        "acquire_timeout of a released permit",
        || { sem.acquire_timeout(limit) }
    ));
    storm.join().unwrap();

    // A count of u64::MAX: permits are taken and given back, and the count
    // saturates instead of wrapping to zero.
    run_attack(
        Target::Semaphore(sem.clone()),
        Attack::Words(vec![(STATE_AT, u64::MAX)]),
    );
    assert_eq!(sem.available(), u64::MAX);
    assert!(sem.try_acquire());
    sem.release();
    sem.release();
    assert_eq!(sem.available(), u64::MAX);

    // 0xFF everywhere: the same huge count, and nothing else matters.
    run_attack(Target::Semaphore(sem.clone()), Attack::Fill(0xFF));
    within(limit, "acquire, 0xFF", || sem.acquire());
    assert!(sem.acquire_timeout(limit));
}

#[multiproc::test]
fn a_barrier_reports_corrupted_counts_and_keeps_its_own_party_count() {
    let _w = watchdog("barrier");
    let barrier = Barrier::new(2).unwrap();
    let limit = Duration::from_millis(300);
    // The barrier's state word: generation and broken flag in the low half,
    // parties arrived in the high half.
    let state_at = STATE_AT + 8;

    // More parties arrived than the barrier has: no correct process writes
    // that.
    run_attack(
        Target::Barrier(barrier.clone()),
        Attack::Words(vec![(state_at, 0xFFFF_FFFF_0000_0000)]),
    );
    let err = within(limit, "Barrier::wait_timeout, huge arrived", || {
        barrier.wait_timeout(limit)
    })
    .unwrap_err();
    assert!(err.is_corrupted(), "{err}");
    assert!(err.to_string().contains("arrived"), "{err}");

    // Every bit set: the broken flag among them.
    run_attack(
        Target::Barrier(barrier.clone()),
        Attack::Words(vec![(state_at, u64::MAX)]),
    );
    let err = within(limit, "Barrier::wait_timeout, all ones", || {
        barrier.wait_timeout(limit)
    })
    .unwrap_err();
    assert!(err.is_barrier_broken(), "{err}");

    // A live owner of the (unused) mutex and a storm of wakes.
    barrier.reset();
    let storm = start_attack(
        Target::Barrier(barrier.clone()),
        Attack::Storm {
            word_at: OWNER_AT,
            word: owner(1, 1),
            bump_at: CONDVAR_AT,
            millis: 1000,
        },
    );
    std::thread::sleep(Duration::from_millis(100));
    let err = within(limit, "Barrier::wait_timeout in a storm", || {
        barrier.wait_timeout(limit)
    })
    .unwrap_err();
    assert!(err.is_barrier_broken(), "{err}");
    storm.join().unwrap();

    // Usable again after a reset.
    barrier.reset();
    let other = barrier.clone();
    let t = std::thread::spawn(move || other.wait_timeout(Duration::from_secs(5)));
    let mine = barrier.wait_timeout(Duration::from_secs(5)).unwrap();
    let theirs = t.join().unwrap().unwrap();
    assert!(mine.is_leader() != theirs.is_leader());

    // The shared party count is not this handle's: it keeps 2. (A process
    // receiving the barrier from now on refuses it.)
    run_attack(
        Target::Barrier(barrier.clone()),
        Attack::Words(vec![(STATE_AT, 0), (state_at, 0)]),
    );
    assert_eq!(barrier.parties(), 2);
    let err = within(limit, "Barrier::wait_timeout, parties 0", || {
        barrier.wait_timeout(limit)
    })
    .unwrap_err();
    assert!(err.is_barrier_broken(), "a lone party passed: {err}");
}

/// A lease table entry at `slot`: holder pid, start, end.
fn lease(slot: usize, pid: u64, start: u64, end: u64) -> Vec<(usize, u64)> {
    let at = STATE_AT + 32 * slot;
    vec![(at, pid), (at + 8, start), (at + 16, end)]
}

#[multiproc::test]
fn forged_leases_never_panic_or_hang_and_a_forged_own_pid_is_reclaimed() {
    let _w = watchdog("leases");
    let array = SharedArray::<u64>::zeroed(64).unwrap();
    let limit = Duration::from_millis(300);

    // A lease of pid 1 (alive, never releases) over everything, and the
    // count of active leases (bytes 16..24, a hint older code trusted) set.
    let mut words = lease(0, 1, 0, 64);
    words.push((16, 1));
    run_attack(Target::Array(array.clone()), Attack::Words(words));
    // Another process's lease is not this process's to enforce: no panic.
    array.store(5, 1);
    assert_eq!(array.fetch_add(5, 1), 1);
    assert!(array.try_lease(0..8).unwrap().is_none());
    let got = within(limit, "lease_timeout under pid 1's lease", || {
        array.lease_timeout(0..8, limit).map(|c| c.is_some())
    });
    assert!(!got.unwrap());

    // A lease naming this process that this process does not hold.
    run_attack(
        Target::Array(array.clone()),
        Attack::Words(lease(0, u64::from(std::process::id()), 0, 64)),
    );
    let got = within(limit, "lease_timeout under a forged own lease", || {
        array.lease_timeout(0..8, limit).map(|c| c.is_some())
    });
    assert!(
        got.unwrap(),
        "a forged lease of this process was not reclaimed"
    );

    // A dead holder's lease is reclaimed.
    run_attack(
        Target::Array(array.clone()),
        Attack::Words(lease(3, u64::from(NO_SUCH_THREAD), 0, 64)),
    );
    assert!(array.try_lease(0..64).unwrap().is_some());

    // A live holder with a range no correct process writes.
    run_attack(
        Target::Array(array.clone()),
        Attack::Words(lease(7, 1, 50, 10)),
    );
    let err = within(limit, "lease_timeout, malformed lease", || {
        array.lease_timeout(0..8, limit).map(|c| c.is_some())
    })
    .unwrap_err();
    assert!(err.is_corrupted(), "{err}");
    assert!(err.to_string().contains("slot 7"), "{err}");

    // 0xFF over the header: pids that name no process, a mutex owned by
    // nobody. Leases work again.
    run_attack(Target::Array(array.clone()), Attack::Fill(0xFF));
    let mut chunk = within(Duration::from_secs(1), "lease_timeout, 0xFF", || {
        array.lease_timeout(0..8, Duration::from_secs(1))
    })
    .unwrap()
    .expect("a lease over 0xFF");
    chunk.fill(3);
    drop(chunk);
    assert_eq!(array.load(7), 3);
    assert_eq!(array.len(), 64);
}

#[multiproc::test]
fn a_held_lease_table_lock_delays_no_release_and_no_timed_lease() {
    let _w = watchdog("lease table lock");
    let array = SharedArray::<u64>::zeroed(64).unwrap();
    let limit = Duration::from_millis(300);
    let chunk = array.lease(0..8).unwrap();
    run_attack(
        Target::Array(array.clone()),
        Attack::Words(vec![(OWNER_AT, owner(1, 1))]),
    );
    within(Duration::ZERO, "dropping a lease", || drop(chunk));
    let got = within(limit, "lease_timeout, table lock held by pid 1", || {
        array.lease_timeout(8..16, limit).map(|c| c.is_some())
    });
    assert!(!got.unwrap());
    run_attack(
        Target::Array(array.clone()),
        Attack::Words(vec![(OWNER_AT, 0)]),
    );
    assert!(array.lease(0..64).is_ok());

    for seed in 0..8u64 {
        run_attack(
            Target::Array(array.clone()),
            Attack::Random {
                seed,
                from: 68,
                to: 4096,
            },
        );
        let limit = Duration::from_millis(100);
        let got = within(limit, &format!("lease_timeout, seed {seed}"), || {
            array.lease_timeout(0..8, limit).map(|c| c.is_some())
        });
        match got {
            Ok(_) => {}
            Err(e) => assert!(e.is_corrupted() || e.is_owner_died(), "seed {seed}: {e}"),
        }
        array.store(63, seed);
        assert_eq!(array.to_vec().len(), 64);
    }
}

#[multiproc::test]
fn a_worker_cannot_write_resize_or_reseal_shared_bytes() {
    let _w = watchdog("bytes");
    let data: Vec<u8> = (0..3 * 4096 + 5).map(|i| (i % 251) as u8).collect();
    let bytes = SharedBytes::copy_from_slice(&data).unwrap();
    let report = run_attack(Target::Bytes(bytes.clone()), Attack::WriteSealed);
    // Five attempts on each object (two with `multiproc_portable`: the
    // received one and the worker's copy of it).
    assert!(!report.is_empty() && report.len() % 5 == 0, "{report:?}");
    for (what, errno) in &report {
        assert_ne!(*errno, 0, "the worker could {what} sealed bytes");
    }
    assert_eq!(&*bytes, &data[..]);
}

#[multiproc::test]
fn a_worker_cannot_resize_or_reseal_a_writable_segment() {
    let _w = watchdog("resize");
    let array = SharedArray::<u64>::from_slice(&[9; 2048]).unwrap();
    let report = run_attack(Target::Array(array.clone()), Attack::Resize);
    assert_eq!(report.len(), 4);
    if cfg!(multiproc_portable) {
        // The portable back end on Linux shares POSIX shared memory, a
        // tmpfs file that cannot be sealed: a worker that can map it
        // writable can resize it (runtime/src/sys/shmfd.rs). macOS fixes
        // an object's size at its first `ftruncate`; FreeBSD seals it.
        // Only the Linux default is tested against this attack.
        assert_eq!(report[0], ("shrink".to_owned(), 0), "{report:?}");
        return;
    }
    for (what, errno) in &report {
        assert_eq!(*errno, libc::EPERM, "{what}: {report:?}");
    }
    // Every page is still there: reading the last one does not SIGBUS.
    assert!(array.to_vec().iter().all(|&x| x == 9));
    // And a second worker can still map it writable.
    let lock = Lock::new().unwrap();
    let report = run_attack(Target::Lock(lock.clone()), Attack::Resize);
    assert!(report.iter().all(|&(_, e)| e == libc::EPERM), "{report:?}");
    run_attack(Target::Lock(lock.clone()), Attack::Fill(0));
    drop(lock.lock().unwrap());
    run_attack(Target::Array(array.clone()), Attack::Fill(0));
    assert!(array.to_vec().iter().all(|&x| x == 0));
}
