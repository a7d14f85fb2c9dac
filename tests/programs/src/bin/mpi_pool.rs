//! The MPI pool under a real launcher: `mpirun -n 3 mpi_pool <scenario>`
//! (feature `mpi`). Rank 0 runs `main` and checks every result itself; the
//! other ranks serve the pool. Prints one `ok: ...` line per check and exits
//! with 0 only if all passed (a failed check panics, and mpirun reports the
//! non-zero exit).
//!
//! Scenarios:
//! - `suite`: map, imap, imap_unordered, submit + as_completed, apply, a
//!   panicking task, a crashing task, an initializer, a task timeout,
//!   terminate, and reopening — on 2 worker ranks.
//! - `kill-rank`: SIGKILLs a worker rank while it runs a batch (the
//!   launcher must end the job: nothing may hang).
//! - `open`: only tries to open the pool and prints the error (outside MPI,
//!   or with one rank).

use std::collections::BTreeSet;
use std::time::Duration;

use multiproc::{ErrorKind, Pool, as_completed, entry, worker};

#[worker]
fn square(x: u64) -> u64 {
    x * x
}

/// Panics on 13, like any task with a bug.
#[worker]
fn picky(x: u64) -> u64 {
    assert!(x != 13, "13 is unlucky");
    x
}

/// Aborts its process on 7: a crash, not a panic.
#[worker]
fn fragile(x: u64) -> u64 {
    if x == 7 {
        std::process::abort();
    }
    x + 1
}

/// The pid of the rank that runs this worker process (its parent), and the
/// worker process's own pid.
#[worker]
fn whereami(_: u64) -> (u32, u32) {
    (std::os::unix::process::parent_id(), std::process::id())
}

#[worker]
fn nap(ms: u64) -> u64 {
    std::thread::sleep(Duration::from_millis(ms));
    ms
}

static SEED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

#[worker]
fn set_seed(seed: u64) -> Result<(), String> {
    if seed == 0 {
        return Err("seed must not be 0".to_owned());
    }
    SEED.store(seed, std::sync::atomic::Ordering::Relaxed);
    Ok(())
}

#[worker]
fn seeded(x: u64) -> u64 {
    x + SEED.load(std::sync::atomic::Ordering::Relaxed)
}

#[entry]
fn main() {
    let scenario = std::env::args().nth(1).unwrap_or_default();
    match scenario.as_str() {
        "suite" => suite(),
        "kill-rank" => kill_rank(),
        "open" => match Pool::mpi() {
            Ok(pool) => println!("opened: {} workers", pool.workers()),
            Err(e) => {
                assert!(matches!(e.kind(), ErrorKind::Mpi(_)), "{e:?}");
                println!("error: {e}");
            }
        },
        other => panic!("unknown scenario {other:?}"),
    }
}

fn suite() {
    let pool = Pool::builder()
        .workers(1)
        .build_mpi()
        .expect("open the MPI pool");
    assert_eq!(pool.workers(), 2, "one worker process on each of 2 ranks");
    println!("ok: opened with {} workers", pool.workers());

    // Both ranks take part.
    let ranks: BTreeSet<u32> = pool
        .map_chunked(whereami, 0..64, 1)
        .unwrap()
        .into_iter()
        .map(|(rank, _)| rank)
        .collect();
    assert_eq!(ranks.len(), 2, "work reached both ranks: {ranks:?}");
    assert!(!ranks.contains(&std::process::id()), "rank 0 ran a task");
    println!("ok: both worker ranks ran tasks");

    let expected: Vec<u64> = (0..20_000u64).map(|x| x * x).collect();
    assert_eq!(pool.map(square, 0..20_000).unwrap(), expected);
    println!("ok: map");

    let ordered: Vec<u64> = pool.imap(square, 0..5_000).map(Result::unwrap).collect();
    assert_eq!(ordered, expected[..5_000]);
    println!("ok: imap");

    let mut unordered: Vec<u64> = pool
        .imap_unordered(square, (0..5_000).filter(|_| true)) // unsized input
        .map(Result::unwrap)
        .collect();
    unordered.sort_unstable();
    assert_eq!(unordered, expected[..5_000]);
    println!("ok: imap_unordered");

    let tasks: Vec<_> = (0..300).map(|x| pool.submit(square, x)).collect();
    let mut done = BTreeSet::new();
    for (i, result) in as_completed(tasks) {
        assert_eq!(result.unwrap(), (i as u64).pow(2));
        assert!(done.insert(i), "task {i} completed twice");
    }
    assert_eq!(done.len(), 300);
    println!("ok: submit + as_completed");

    assert_eq!(pool.apply(square, 12).unwrap(), 144);
    println!("ok: apply");

    // A panicking task fails alone; the others keep their results.
    let results: Vec<_> = pool.imap(picky, 0..40).collect();
    for (i, r) in results.iter().enumerate() {
        if i == 13 {
            let e = r.as_ref().unwrap_err();
            assert!(e.is_panic(), "{e}");
            assert!(e.to_string().contains("13 is unlucky"), "{e}");
        } else {
            assert_eq!(*r.as_ref().unwrap(), i as u64);
        }
    }
    let e = pool.submit(picky, 13).wait().unwrap_err();
    assert!(e.is_panic(), "{e}");
    println!("ok: a panicking task fails alone");

    // A crashing task takes down one worker process on its rank, not the
    // rank: that item fails, the rank replaces the process and goes on.
    let results: Vec<_> = pool.imap(fragile, 0..30).collect();
    for (i, r) in results.iter().enumerate() {
        if i == 7 {
            let e = r.as_ref().unwrap_err();
            assert!(e.is_worker_died(), "{e}");
            assert!(e.to_string().contains("SIGABRT"), "{e}");
        } else {
            assert_eq!(*r.as_ref().unwrap(), i as u64 + 1);
        }
    }
    assert_eq!(pool.map(square, 0..100).unwrap(), expected[..100]);
    println!("ok: a crashing task fails alone and the ranks keep serving");

    // One MPI pool at a time.
    let e = Pool::mpi().unwrap_err();
    assert!(matches!(e.kind(), ErrorKind::Mpi(_)), "{e}");
    println!("ok: a second MPI pool is refused while one is open");

    // terminate: running and queued tasks are cancelled, nothing hangs.
    let slow: Vec<_> = (0..6).map(|_| pool.submit(nap, 2_000)).collect();
    std::thread::sleep(Duration::from_millis(300));
    let t = std::time::Instant::now();
    pool.terminate();
    for task in slow {
        let e = task.wait().unwrap_err();
        assert!(matches!(e.kind(), ErrorKind::Cancelled { .. }), "{e}");
    }
    assert!(t.elapsed() < Duration::from_secs(10), "{:?}", t.elapsed());
    drop(pool);
    println!("ok: terminate cancels running and queued tasks");

    // The ranks serve the next pool, with the options it brings.
    let pool = Pool::builder()
        .workers(1)
        .initializer(set_seed, 1_000)
        .task_timeout(Duration::from_millis(300))
        .build_mpi()
        .expect("reopen with an initializer");
    assert_eq!(
        pool.map(seeded, 0..10).unwrap(),
        (1_000..1_010).collect::<Vec<_>>()
    );
    println!("ok: the initializer ran on every rank");
    let e = pool.apply(nap, 5_000).unwrap_err();
    assert!(e.is_timeout(), "{e}");
    assert_eq!(pool.apply(nap, 1).unwrap(), 1);
    println!("ok: task_timeout applies on the ranks");
    drop(pool);

    let e = Pool::builder()
        .workers(1)
        .initializer(set_seed, 0)
        .build_mpi()
        .unwrap_err();
    assert!(matches!(e.kind(), ErrorKind::Initializer(_)), "{e}");
    assert!(e.to_string().contains("seed must not be 0"), "{e}");
    println!("ok: a failing initializer fails build_mpi");

    let pool = Pool::builder()
        .workers(1)
        .build_mpi()
        .expect("reopen after a failed open");
    assert_eq!(pool.map(square, 0..1_000).unwrap(), expected[..1_000]);
    println!("ok: reopened after a failed open");
    println!("mpi suite passed");
}

fn kill_rank() {
    let pool = Pool::builder()
        .workers(1)
        .build_mpi()
        .expect("open the MPI pool");
    let (rank_pid, _) = pool.apply(whereami, 0).unwrap();
    let slow: Vec<_> = (0..4).map(|_| pool.submit(nap, 10_000)).collect();
    std::thread::sleep(Duration::from_millis(300));
    println!("killing the rank with pid {rank_pid}");
    // SAFETY: kill has no memory-safety preconditions.
    unsafe { libc::kill(rank_pid as libc::pid_t, libc::SIGKILL) };
    // The launcher ends the whole job; rank 0 must not outlive it by much.
    for task in slow {
        let _ = task.wait();
    }
    println!("the tasks returned (the launcher should have ended the job)");
}
