//! Crash isolation: a task that segfaults, hangs or eats memory takes only
//! its own item down. The pool reports each such item with what happened
//! to it (the signal, the timeout, the memory limit), replaces the worker
//! process, and every other result arrives.
//!
//! - `parse` writes through an invalid pointer on some inputs, as buggy C
//!   code behind an FFI call would: the item fails with `WorkerDied` and
//!   signal 11 (`SIGSEGV`);
//! - `retries(1)` runs a crashed item once more, in a fresh process, which
//!   saves the items whose crash was a one-off;
//! - `task_timeout` kills the process of a task that hangs;
//! - `memory_limit` stops a task that asks for too much memory.
//!
//! The program checks its own results and exits with status 1 if one is
//! wrong.
//!
//! ```text
//! cargo run --release --example crash_isolation
//! ```

use std::time::{Duration, Instant};

use multiproc::{Error, ErrorKind, ExitReason, Pool, SharedArray, worker};

/// Squares `n`, but crashes its process on every input that is 3 modulo 7.
#[worker]
fn parse(n: u64) -> u64 {
    if n % 7 == 3 {
        segfault();
    }
    n * n
}

/// Adds one to `n`, but crashes the first time it sees a multiple of 5
/// (`runs` counts the runs of each input, across processes).
#[worker]
fn flaky(runs: SharedArray<u64>, n: u64) -> u64 {
    let earlier = runs.fetch_add(n as usize, 1);
    if earlier == 0 && n % 5 == 0 {
        segfault();
    }
    n + 1
}

/// Returns `n`, but never returns for `n == 2`.
#[worker]
fn sometimes_hangs(n: u64) -> u64 {
    if n == 2 {
        loop {
            std::thread::sleep(Duration::from_secs(1));
        }
    }
    n
}

/// Allocates and fills `mib` MiB.
#[worker]
fn greedy(mib: usize) -> usize {
    let block = vec![1u8; mib << 20];
    std::hint::black_box(&block).len() >> 20
}

fn segfault() -> ! {
    let invalid = std::ptr::without_provenance_mut::<u8>(8);
    // SAFETY: deliberately invalid: address 8 is never mapped, so the write
    // faults and the kernel kills this worker process with SIGSEGV.
    unsafe { invalid.write_volatile(1) };
    unreachable!("the write to address 8 did not fault")
}

/// Records a check that failed.
struct Checks(Vec<String>);

impl Checks {
    fn expect(&mut self, ok: bool, what: impl FnOnce() -> String) {
        if !ok {
            let what = what();
            eprintln!("WRONG: {what}");
            self.0.push(what);
        }
    }
}

fn crashed_with(e: &Error, signal: i32) -> bool {
    e.exit_reason() == Some(ExitReason::Signal(signal))
}

#[multiproc::entry]
fn main() -> Result<(), Error> {
    let started = Instant::now();
    let mut checks = Checks(Vec::new());

    println!("1. segfaults in a plain pool");
    let pool = Pool::new(2)?;
    for (n, result) in (0..30u64).zip(pool.imap(parse, 0..30u64)) {
        match result {
            Ok(square) => checks.expect(n % 7 != 3 && square == n * n, || {
                format!("parse({n}) = {square}")
            }),
            Err(e) => {
                println!("   item {n}: {e}");
                checks.expect(n % 7 == 3 && crashed_with(&e, libc::SIGSEGV), || {
                    format!("parse({n}) failed: {e}")
                });
            }
        }
    }
    // The same pool goes on.
    let again = pool.map(parse, [1u64, 2, 4])?;
    checks.expect(again == [1, 4, 16], || {
        format!("after the crashes: {again:?}")
    });

    println!("2. retries(1): a crash that does not come back is survived");
    let pool = Pool::builder().workers(2).retries(1).build()?;
    let runs = SharedArray::<u64>::zeroed(20)?;
    let items: Vec<_> = (0..20u64).map(|n| (runs.clone(), n)).collect();
    let plus_one = pool.map(flaky, items)?;
    checks.expect(plus_one == (1..=20).collect::<Vec<u64>>(), || {
        format!("flaky: {plus_one:?}")
    });
    // At least once, not exactly once: the items of a crashed batch that
    // had finished lost their results with the process, and ran again.
    for n in 0..20 {
        let least = if n % 5 == 0 { 2 } else { 1 };
        checks.expect(runs.load(n) >= least, || {
            format!("input {n} ran {} times", runs.load(n))
        });
    }
    println!("   items 0, 5, 10 and 15 crashed once and passed on their second run");
    // A crash that comes back every time still fails, after its retry.
    let e = pool.apply(parse, 3).unwrap_err();
    println!("   parse(3), retried once: {e}");
    checks.expect(crashed_with(&e, libc::SIGSEGV), || format!("parse(3): {e}"));

    println!("3. task_timeout: a task that hangs is killed");
    let limit = Duration::from_millis(500);
    let pool = Pool::builder().workers(2).task_timeout(limit).build()?;
    let timed = Instant::now();
    for (n, result) in (0..6u64).zip(pool.imap(sometimes_hangs, 0..6u64)) {
        match result {
            Ok(v) => checks.expect(n != 2 && v == n, || format!("sometimes_hangs({n}) = {v}")),
            Err(e) => {
                println!("   item {n}: {e}");
                let ok = n == 2
                    && matches!(e.kind(), ErrorKind::Timeout { after, .. } if *after == limit);
                checks.expect(ok, || format!("sometimes_hangs({n}) failed: {e}"));
            }
        }
    }
    let took = timed.elapsed();
    checks.expect(took < Duration::from_secs(5), || {
        format!("the hung task held the pool for {took:?}")
    });

    println!("4. memory_limit: a task that asks for too much memory");
    let pool = Pool::builder().workers(2).memory_limit(64 << 20).build()?;
    for (mib, result) in [1usize, 1024, 8]
        .into_iter()
        .zip(pool.imap(greedy, [1usize, 1024, 8]))
    {
        match result {
            Ok(got) => checks.expect(mib < 64 && got == mib, || format!("greedy({mib}) = {got}")),
            Err(e) => {
                println!("   {mib} MiB: {e}");
                checks.expect(mib == 1024 && e.is_out_of_memory(), || {
                    format!("greedy({mib}) failed: {e}")
                });
            }
        }
    }

    if checks.0.is_empty() {
        println!("all results as expected, in {:.2?}", started.elapsed());
        Ok(())
    } else {
        eprintln!("{} results were wrong", checks.0.len());
        std::process::exit(1)
    }
}
