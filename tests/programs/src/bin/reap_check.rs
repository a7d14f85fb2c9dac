//! Starts pools and checks with `/proc` that their worker processes are
//! gone, not zombies, after drop, terminate, and a crash. Prints one line per
//! check and exits non-zero if any fails.

use multiproc::{Pool, entry, worker};
use multiproc_test_programs::{children, process_state};

#[worker]
fn pid_of(_item: u64) -> u32 {
    std::process::id()
}

#[worker]
fn abort_now() -> u32 {
    std::process::abort()
}

fn check(what: &str, ok: bool, detail: String) -> bool {
    println!("{what}: {}", if ok { "ok" } else { "FAILED" });
    if !ok {
        eprintln!("{what}: {detail}");
    }
    ok
}

/// Every pid in `pids` is gone (no process, no zombie).
fn all_gone(pids: &[u32]) -> (bool, String) {
    let left: Vec<(u32, Option<char>)> = pids
        .iter()
        .map(|&p| (p, process_state(p)))
        .filter(|(_, s)| s.is_some())
        .collect();
    (
        left.is_empty(),
        format!("still there (pid, state): {left:?}"),
    )
}

#[entry]
fn main() -> Result<(), multiproc::Error> {
    let mut ok = true;

    let pool = Pool::new(3)?;
    let workers = children();
    ok &= check(
        "three children after Pool::new(3)",
        workers.len() == 3,
        format!("{workers:?}"),
    );
    let mut used = pool.map(pid_of, 0..300)?;
    used.sort_unstable();
    used.dedup();
    ok &= check(
        "tasks ran in those children",
        used.iter().all(|p| workers.contains(p)),
        format!("{used:?} vs {workers:?}"),
    );
    drop(pool);
    let (gone, detail) = all_gone(&workers);
    ok &= check("children gone after drop", gone, detail);
    ok &= check(
        "no children left after drop",
        children().is_empty(),
        format!("{:?}", children()),
    );

    let pool = Pool::new(2)?;
    let workers = children();
    pool.terminate();
    let (gone, detail) = all_gone(&workers);
    ok &= check("children gone after terminate", gone, detail);

    let pool = Pool::new(1)?;
    let err = pool.apply(abort_now, ()).expect_err("abort_now aborts");
    let dead = err.pid().unwrap_or(0);
    let replacement = pool.apply(pid_of, 0)?;
    let (gone, detail) = all_gone(&[dead]);
    ok &= check("crashed child reaped while the pool lives", gone, detail);
    ok &= check(
        "replacement is the only child",
        children() == vec![replacement],
        format!("{:?} vs {replacement}", children()),
    );
    drop(pool);
    ok &= check(
        "no children left at the end",
        children().is_empty(),
        format!("{:?}", children()),
    );

    std::process::exit(if ok { 0 } else { 1 })
}
