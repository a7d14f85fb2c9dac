//! A worker process is untrusted (DESIGN.md, "The trust boundary"): this
//! file proves that a task which attacks the pool from inside its worker
//! process cannot crash, hang or corrupt the caller.
//!
//! In each test one item of a `map` (item [`BAD`] of [`ITEMS`], in a batch
//! with others) attacks as buggy C code or a hostile plugin would, with
//! raw system calls on what it finds in `/proc/self/fd`: it resizes its
//! progress page or arenas; writes forged, short, oversized, garbage,
//! unsolicited or duplicate frames into its control socket; leaves a frame
//! half-written; forges or scribbles its progress page. Each test asserts
//! the contract for that attack:
//!
//! - the caller survives: no panic, abort or signal, and no hang;
//! - the hostile item fails with the error its attack calls for:
//!   `Protocol` (whose message names the worker's pid) for a breach of the
//!   protocol, `Timeout` within three times the limit under a task time
//!   limit, `WorkerDied` when the process exits; an attack the parent may
//!   or may not notice has both of its outcomes spelled out;
//!   resizing shared memory fails with `EPERM` (it is sealed);
//! - every other item comes back with its own value, and the pool serves
//!   a second `map` correctly;
//! - a breach counts as a crash: it is retried only as `retries` allows;
//! - a forged length does not make the caller allocate it.
//!
//! The caller of each attack is a process of its own: the test re-runs
//! this binary filtered to itself, and that copy builds the pool and makes
//! the assertions. The test watches it with a deadline, so an attack that
//! kills the caller (SIGBUS) or hangs it fails that one test, saying so.
//! The attacks themselves are in `common/hostile.rs`.
//!
//! Linux only: the attacks find their targets in `/proc/self/fd`, and the
//! checks read `/proc/self/statm`.
#![cfg(target_os = "linux")]

use std::io::{BufRead, BufReader, Read};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use multiproc::{ErrorKind, Pool};

#[path = "common/hostile.rs"]
mod attacks;
mod common;

use attacks::{
    Attack, BlockDamage, CHUNK, Fill, Forge, Item, PageForgery, Run, corrupt_block,
    forging_initializer, hostile, payload_len, runs,
};

/// Items of each attacked `map`.
const ITEMS: u64 = 200;
/// The item that attacks: the second of its batch of [`CHUNK`].
const BAD: u64 = 101;
/// The task time limit of the tests that have one.
const LIMIT: Duration = Duration::from_secs(1);
/// Most the caller's resident memory may grow across an attack that
/// forges a frame length.
const MAX_GROWTH: u64 = 64 << 20;
/// How long a test waits for its caller process.
const DEADLINE: Duration = Duration::from_secs(20);
/// How long the test of a stalled partial frame without a task time limit
/// waits for its caller process (the parent gives a stalled frame 5 s).
const STALL_DEADLINE: Duration = Duration::from_secs(45);
/// Set in the caller process's environment, to its run directory.
const CALLER: &str = "MULTIPROC_HOSTILE_CALLER";
/// The caller's last line on stdout when every assertion held.
const PASSED: &str = "hostile scenario passed";

// ---------------------------------------------------------------------------
// The caller's side

/// A pool of one worker process. One, so that the worker that ran the
/// warm-up (and holds the arenas) is the one that meets the hostile item;
/// so that no idle worker asks to take part of the hostile batch away (a
/// stop request makes a reply with fewer items legitimate); and so that
/// the replacement of the hostile worker is what serves the rest.
fn pool_of_one(timeout: Option<Duration>, retries: u32) -> Pool {
    let mut builder = Pool::builder().workers(1).retries(retries);
    if let Some(limit) = timeout {
        builder = builder.task_timeout(limit);
    }
    builder.build().expect("a pool of one worker")
}

/// Makes the worker map its arenas: a 256 KiB argument travels through
/// them. (The attacks on arenas check that they found some.)
fn warm_arenas(pool: &Pool) {
    step("warm the arenas");
    assert_eq!(
        pool.apply(payload_len, vec![7; 256 << 10]).unwrap(),
        256 << 10
    );
}

fn items(attack: Attack, bad: u64, dir: &Path) -> Vec<Item> {
    let dir = dir.to_str().expect("a UTF-8 path").to_owned();
    (0..ITEMS).map(|x| (attack, x, bad, dir.clone())).collect()
}

/// Results of an attacked `imap`, with when each came back.
struct Outcome {
    results: Vec<multiproc::Result<(u64, String)>>,
    at: Vec<Duration>,
}

impl Outcome {
    fn hostile(&self) -> &multiproc::Result<(u64, String)> {
        &self.results[BAD as usize]
    }

    /// The hostile item's error.
    fn error(&self) -> &multiproc::Error {
        match self.hostile() {
            Err(e) => e,
            Ok(value) => panic!("the hostile item succeeded: {value:?}"),
        }
    }
}

/// Prints a step, so that a test whose caller hangs says where.
fn step(what: &str) {
    println!("step: {what}");
}

/// `imap` over [`ITEMS`] items in batches of `chunk`, item [`BAD`]
/// carrying out `attack`.
fn attacked_map(pool: &Pool, dir: &Path, attack: Attack, chunk: usize) -> Outcome {
    step(&format!("map with {attack:?}"));
    let start = Instant::now();
    let mut out = Outcome {
        results: Vec::new(),
        at: Vec::new(),
    };
    for r in pool
        .imap(hostile, items(attack, BAD, dir))
        .chunk_size(chunk)
    {
        out.at.push(start.elapsed());
        out.results.push(r);
    }
    assert_eq!(out.results.len(), ITEMS as usize);
    step(&format!(
        "the hostile item came back after {:?} as {:?}",
        out.at[BAD as usize],
        out.hostile()
    ));
    out
}

/// Every item but the hostile one came back with its own value.
fn check_innocents(out: &Outcome) {
    for (i, r) in out.results.iter().enumerate() {
        if i as u64 == BAD {
            continue;
        }
        match r {
            Ok((value, note)) if *value == 2 * i as u64 && note.is_empty() => {}
            other => panic!("innocent item {i} came back as {other:?}"),
        }
    }
}

/// `err` is `Protocol`, and its message names process `pid`.
fn check_protocol(err: &multiproc::Error, pid: u32) {
    assert!(
        matches!(err.kind(), ErrorKind::Protocol(_)),
        "expected a Protocol error, got {err:?}"
    );
    let text = err.to_string();
    let named = text
        .split(|c: char| !c.is_ascii_digit())
        .any(|word| word == pid.to_string());
    assert!(named, "the message does not name worker {pid}: {text}");
}

/// Process `pid` is gone: killed and reaped.
fn check_gone(pid: u32) {
    let deadline = Instant::now() + Duration::from_secs(2);
    while let Some(state) = common::process_state(pid) {
        assert!(
            Instant::now() < deadline,
            "hostile worker {pid} is still there (state {state})"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A second `map` on the same pool returns every value.
fn check_usable(pool: &Pool, dir: &Path) {
    step("map again");
    let values = pool
        .map(hostile, items(Attack::None, u64::MAX, dir))
        .expect("the pool works after the attack");
    for (i, (value, note)) in values.iter().enumerate() {
        assert_eq!((*value, note.as_str()), (2 * i as u64, ""), "item {i}");
    }
}

/// The one run of the hostile item.
fn only_run(dir: &Path) -> Run {
    let mut runs = runs(dir, BAD);
    assert_eq!(
        runs.len(),
        1,
        "without retries the hostile item runs once: {runs:?}"
    );
    runs.remove(0)
}

/// This process's resident memory in bytes (`/proc/self/statm`).
fn rss_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap();
    let pages: u64 = statm.split_whitespace().nth(1).unwrap().parse().unwrap();
    // SAFETY: sysconf has no memory-safety preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as u64;
    pages * page
}

/// The hostile item writes `forge` into its socket (after the warm-up,
/// for an attack on arenas): it fails with `Protocol` naming its worker,
/// which is replaced; it ran once; nothing else is harmed.
fn protocol_breach(dir: &Path, forge: Forge) -> Outcome {
    let pool = pool_of_one(None, 0);
    if matches!(
        forge,
        Forge::SharedIndexOutOfRange | Forge::SharedBeyondArena | Forge::SharedGarbage
    ) {
        warm_arenas(&pool);
    }
    let out = attacked_map(&pool, dir, Attack::Send(forge), CHUNK);
    check_innocents(&out);
    let run = only_run(dir);
    assert!(
        run.notes.iter().any(|n| n.starts_with("sending")),
        "the attack was not made: {run:?}"
    );
    check_protocol(out.error(), run.pid);
    check_gone(run.pid);
    check_usable(&pool, dir);
    out
}

/// The hostile item resizes its progress page or arenas (`then` what it
/// does next): `ftruncate` fails with `EPERM` (they are sealed); the item
/// returns that, or fails with `WorkerDied` (exit code 3) if it exits.
#[cfg(not(multiproc_portable))]
fn truncation(dir: &Path, attack: Attack) {
    use attacks::Then;
    use multiproc::ExitReason;
    let pool = pool_of_one(None, 0);
    let (then, arenas) = match attack {
        Attack::TruncatePage(then) => (then, false),
        Attack::TruncateArenas(then) => (then, true),
        other => unreachable!("{other:?}"),
    };
    if arenas {
        warm_arenas(&pool);
    }
    let out = attacked_map(&pool, dir, attack, CHUNK);
    check_innocents(&out);
    let run = only_run(dir);
    let said: Vec<&str> = run
        .notes
        .iter()
        .filter_map(|n| n.strip_prefix("ftruncate of "))
        .map(|n| n.rsplit(": ").next().unwrap_or(n))
        .collect();
    if arenas {
        assert!(!said.is_empty(), "no arena was found to truncate: {run:?}");
    } else {
        assert_eq!(said.len(), 1, "{run:?}");
    }
    assert!(
        said.iter().all(|&s| s == "EPERM"),
        "ftruncate of shared memory from a worker: {said:?} (want EPERM)"
    );
    match then {
        Then::Return => match out.hostile() {
            Ok((value, note)) => {
                assert_eq!(*value, 2 * BAD);
                assert_eq!(note, &said.join(" "));
            }
            Err(e) => panic!("the item that tried to truncate failed: {e:?}"),
        },
        Then::Exit => {
            let err = out.error();
            assert!(err.is_worker_died(), "{err:?}");
            assert_eq!(err.item_index(), Some(BAD));
            assert_eq!(err.exit_reason(), Some(ExitReason::Code(3)));
            assert_eq!(err.pid(), Some(run.pid));
            check_gone(run.pid);
        }
    }
    check_usable(&pool, dir);
}

/// Under a task time limit, the hostile item carries out `attack`, which
/// keeps it running: it fails within three times the limit, with
/// `Timeout` for its own index (or `Protocol` naming its worker, where
/// `protocol_too` and the parent notices a forgery before the deadline).
fn overstays(dir: &Path, attack: Attack, protocol_too: bool) -> Outcome {
    let pool = pool_of_one(Some(LIMIT), 0);
    let out = attacked_map(&pool, dir, attack, CHUNK);
    // A page that names the running item blames it at once; one that
    // does not leaves halving the batch of four to find it: two more runs.
    let runs = runs(dir, BAD);
    assert!((1..=3).contains(&runs.len()), "{runs:?}");
    let err = out.error();
    match err.kind() {
        ErrorKind::Timeout { index, after, .. } => {
            assert_eq!(*index, Some(BAD), "{err}");
            assert_eq!(*after, LIMIT);
        }
        ErrorKind::Protocol(_) if protocol_too => {
            let pid = runs.last().unwrap().pid;
            check_protocol(err, pid);
        }
        _ => panic!("expected a Timeout, got {err:?}"),
    }
    let took = out.at[BAD as usize];
    assert!(
        took < 3 * LIMIT,
        "the hostile item failed after {took:?}, over 3 × {LIMIT:?}"
    );
    check_innocents(&out);
    for run in &runs {
        check_gone(run.pid);
    }
    check_usable(&pool, dir);
    out
}

/// The hostile item scribbles its progress page and every arena with
/// `fill` and returns: it comes back with its own value if the parent
/// does not notice, having run once; or, if the parent notices, it fails
/// with `Protocol` naming its last worker, after at most two more runs
/// (the page no longer says which item of the batch did it: halving the
/// batch of four twice finds it); nothing else is harmed.
fn scribble(dir: &Path, fill: Fill) {
    let pool = pool_of_one(None, 0);
    warm_arenas(&pool);
    let out = attacked_map(&pool, dir, Attack::Scribble(fill), CHUNK);
    check_innocents(&out);
    let runs = runs(dir, BAD);
    for run in &runs {
        assert!(
            run.notes.iter().any(|n| n.starts_with("scribbling")),
            "the attack was not made: {run:?}"
        );
    }
    match out.hostile() {
        Ok((value, returned)) => {
            assert_eq!(runs.len(), 1, "{runs:?}");
            assert_eq!((*value, returned), (2 * BAD, &runs[0].notes[0]));
        }
        Err(err) => {
            assert!((1..=3).contains(&runs.len()), "{runs:?}");
            check_protocol(err, runs.last().unwrap().pid);
            for run in &runs {
                check_gone(run.pid);
            }
        }
    }
    check_usable(&pool, dir);
}

// ---------------------------------------------------------------------------
// Each test in a caller process of its own

/// In the test process: runs the test `name` again in a process of its
/// own, with [`CALLER`] set, and fails with what became of that process
/// unless it passes within `limit`. In that process: runs `scenario`.
fn isolated(name: &str, limit: Duration, scenario: impl FnOnce(&Path)) {
    if let Some(dir) = std::env::var_os(CALLER) {
        scenario(Path::new(&dir));
        println!("{PASSED}");
        return;
    }
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("hostile-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create the run directory");
    let mut child = Command::new(std::env::current_exe().expect("the test binary"))
        .args([name, "--exact", "--nocapture", "--test-threads=1", "-q"])
        .env(CALLER, &dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the caller process");
    let (tx, lines) = mpsc::channel();
    let stdout = BufReader::new(child.stdout.take().unwrap());
    std::thread::spawn(move || {
        for line in stdout.lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    let (tx, stderr) = mpsc::channel();
    let mut pipe = child.stderr.take().unwrap();
    std::thread::spawn(move || {
        let mut text = String::new();
        let _ = pipe.read_to_string(&mut text);
        let _ = tx.send(text);
    });
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for the caller") {
            break Some(status);
        }
        if started.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    // Its workers die with it (their parent-death signal), closing stderr.
    let stderr = stderr
        .recv_timeout(Duration::from_secs(5))
        .unwrap_or_default();
    let stdout: Vec<String> =
        std::iter::from_fn(|| lines.recv_timeout(Duration::from_secs(5)).ok()).collect();
    let _ = std::fs::remove_dir_all(&dir);
    let last_step = stdout
        .iter()
        .rev()
        .find(|l| l.starts_with("step: "))
        .map_or("none", String::as_str);
    let report = panics(&stderr);
    match status {
        None => panic!("the caller hung: no result within {limit:?} (at {last_step}){report}"),
        Some(s) if s.signal().is_some() => panic!(
            "the caller was killed by signal {} ({}) at {last_step}{report}",
            s.signal().unwrap_or(0),
            signal_name(s.signal().unwrap_or(0))
        ),
        Some(s) if !s.success() => panic!("the caller failed ({s}) at {last_step}{report}"),
        Some(_) => assert!(
            stdout.iter().any(|l| l == PASSED),
            "the caller did not run the scenario: {stdout:#?}"
        ),
    }
}

/// The panics in a caller's stderr, each with the frames of its
/// backtrace (if any) that are in the runtime: where the caller broke.
fn panics(stderr: &str) -> String {
    let mut out = String::new();
    let mut lines = stderr.lines().peekable();
    while let Some(line) = lines.next() {
        if line.contains("panicked at") {
            out.push('\n');
            out.push_str(line);
            while let Some(next) = lines.next_if(|l| {
                !l.is_empty() && !l.starts_with("stack backtrace:") && !l.starts_with("note:")
            }) {
                out.push_str("\n  ");
                out.push_str(next);
            }
        } else if line.contains("multiproc_runtime::") {
            out.push_str("\n    ");
            out.push_str(line.trim());
            if let Some(at) = lines.next_if(|l| l.trim_start().starts_with("at ")) {
                out.push(' ');
                out.push_str(at.trim());
            }
        }
    }
    out
}

fn signal_name(sig: i32) -> &'static str {
    match sig {
        libc::SIGBUS => "SIGBUS",
        libc::SIGSEGV => "SIGSEGV",
        libc::SIGABRT => "SIGABRT",
        libc::SIGKILL => "SIGKILL",
        _ => "another signal",
    }
}

// ---------------------------------------------------------------------------
// 1. Resizing shared memory
//
// Not with `multiproc_portable`: on Linux the portable back end shares
// POSIX shared memory, a tmpfs file that cannot be sealed, so a worker can
// resize it and the caller's next read of it is a SIGBUS
// (runtime/src/sys/shmfd.rs). macOS fixes an object's size at its first
// `ftruncate` and FreeBSD seals it; the Linux default is what runs here.

#[multiproc::test]
#[cfg(not(multiproc_portable))]
fn truncating_the_progress_page_fails_with_eperm() {
    isolated(
        "truncating_the_progress_page_fails_with_eperm",
        DEADLINE,
        |dir| truncation(dir, Attack::TruncatePage(attacks::Then::Return)),
    );
}

#[multiproc::test]
#[cfg(not(multiproc_portable))]
fn truncating_the_progress_page_and_exiting_fails_worker_died() {
    isolated(
        "truncating_the_progress_page_and_exiting_fails_worker_died",
        DEADLINE,
        |dir| truncation(dir, Attack::TruncatePage(attacks::Then::Exit)),
    );
}

#[multiproc::test]
#[cfg(not(multiproc_portable))]
fn truncating_the_arenas_fails_with_eperm() {
    isolated("truncating_the_arenas_fails_with_eperm", DEADLINE, |dir| {
        truncation(dir, Attack::TruncateArenas(attacks::Then::Return));
    });
}

#[multiproc::test]
#[cfg(not(multiproc_portable))]
fn truncating_the_arenas_and_exiting_fails_worker_died() {
    isolated(
        "truncating_the_arenas_and_exiting_fails_worker_died",
        DEADLINE,
        |dir| truncation(dir, Attack::TruncateArenas(attacks::Then::Exit)),
    );
}

// ---------------------------------------------------------------------------
// 2. Forged frames on the control socket

#[multiproc::test]
fn a_forged_five_byte_done_fails_protocol_and_runs_once() {
    isolated(
        "a_forged_five_byte_done_fails_protocol_and_runs_once",
        DEADLINE,
        |dir| {
            protocol_breach(dir, Forge::FiveByteDone);
        },
    );
}

/// The initializer's answer is read as every other answer is: a forged
/// one fails the build with `Initializer` holding a `Protocol` error,
/// instead of panicking the worker slot's driver thread.
#[multiproc::test]
fn an_initializer_that_forges_its_answer_fails_the_build_with_protocol() {
    isolated(
        "an_initializer_that_forges_its_answer_fails_the_build_with_protocol",
        DEADLINE,
        |_dir| {
            let err = Pool::builder()
                .workers(1)
                .initializer(forging_initializer, ())
                .build()
                .expect_err("a forged initializer answer was accepted");
            match err.kind() {
                ErrorKind::Initializer(inner) => {
                    assert!(inner.is_protocol(), "not a protocol error: {inner}");
                }
                other => panic!("expected Initializer(Protocol), got {other:?}"),
            }
        },
    );
}

#[multiproc::test]
fn a_zero_length_frame_fails_protocol() {
    isolated("a_zero_length_frame_fails_protocol", DEADLINE, |dir| {
        protocol_breach(dir, Forge::ZeroLength);
    });
}

#[multiproc::test]
fn an_oversized_length_fails_protocol_without_allocating_it() {
    isolated(
        "an_oversized_length_fails_protocol_without_allocating_it",
        DEADLINE,
        |dir| {
            // Measured after a first map, so that buffers every map needs
            // are there already.
            let pool = pool_of_one(None, 0);
            check_usable(&pool, dir);
            let before = rss_bytes();
            let out = attacked_map(&pool, dir, Attack::Send(Forge::MaxLength), CHUNK);
            let grown = rss_bytes().saturating_sub(before);
            assert!(
                grown < MAX_GROWTH,
                "the caller grew by {grown} bytes after a forged length of 4 GiB"
            );
            check_innocents(&out);
            let run = only_run(dir);
            check_protocol(out.error(), run.pid);
            check_gone(run.pid);
            check_usable(&pool, dir);
        },
    );
}

#[multiproc::test]
fn garbage_bytes_fail_protocol() {
    isolated("garbage_bytes_fail_protocol", DEADLINE, |dir| {
        protocol_breach(dir, Forge::Garbage);
    });
}

#[multiproc::test]
fn an_unknown_tag_fails_protocol() {
    isolated("an_unknown_tag_fails_protocol", DEADLINE, |dir| {
        protocol_breach(dir, Forge::UnknownTag);
    });
}

#[multiproc::test]
fn a_done_for_a_batch_not_in_flight_fails_protocol() {
    isolated(
        "a_done_for_a_batch_not_in_flight_fails_protocol",
        DEADLINE,
        |dir| {
            protocol_breach(dir, Forge::DoneNotInFlight);
        },
    );
}

#[multiproc::test]
fn a_done_shorter_than_its_header_fails_protocol() {
    isolated(
        "a_done_shorter_than_its_header_fails_protocol",
        DEADLINE,
        |dir| {
            protocol_breach(dir, Forge::DoneShorterThanHeader);
        },
    );
}

#[multiproc::test]
fn a_done_claiming_more_items_than_it_carries_fails_protocol() {
    isolated(
        "a_done_claiming_more_items_than_it_carries_fails_protocol",
        DEADLINE,
        |dir| {
            protocol_breach(dir, Forge::DoneMissingItems);
        },
    );
}

#[multiproc::test]
fn a_done_with_fewer_items_than_its_batch_fails_protocol() {
    isolated(
        "a_done_with_fewer_items_than_its_batch_fails_protocol",
        DEADLINE,
        |dir| {
            protocol_breach(dir, Forge::DoneFewerItems);
        },
    );
}

#[multiproc::test]
fn a_done_with_more_items_than_its_batch_fails_protocol() {
    isolated(
        "a_done_with_more_items_than_its_batch_fails_protocol",
        DEADLINE,
        |dir| {
            protocol_breach(dir, Forge::DoneMoreItems);
        },
    );
}

#[multiproc::test]
fn a_second_done_for_an_answered_batch_harms_no_other_item() {
    isolated(
        "a_second_done_for_an_answered_batch_harms_no_other_item",
        DEADLINE,
        |dir| {
            // Batches of one item: the forged reply is a complete answer
            // to the hostile item's batch, and the runtime's own reply is
            // the second. The item comes back with the forged value or its
            // own, or fails with Protocol if the parent sees the forgery
            // while the item still runs.
            let pool = pool_of_one(None, 0);
            let out = attacked_map(&pool, dir, Attack::Send(Forge::SecondDone), 1);
            check_innocents(&out);
            let run = only_run(dir);
            match out.hostile() {
                Ok((value, note)) => {
                    assert_eq!(*value, 2 * BAD);
                    assert!(note == "forged" || note == "returned", "{note:?}");
                }
                Err(err) => check_protocol(err, run.pid),
            }
            check_usable(&pool, dir);
        },
    );
}

#[multiproc::test]
fn a_shared_done_naming_an_arena_out_of_range_fails_protocol() {
    isolated(
        "a_shared_done_naming_an_arena_out_of_range_fails_protocol",
        DEADLINE,
        |dir| {
            protocol_breach(dir, Forge::SharedIndexOutOfRange);
        },
    );
}

#[multiproc::test]
fn a_shared_done_longer_than_its_arena_fails_protocol() {
    isolated(
        "a_shared_done_longer_than_its_arena_fails_protocol",
        DEADLINE,
        |dir| {
            protocol_breach(dir, Forge::SharedBeyondArena);
        },
    );
}

#[multiproc::test]
fn a_shared_done_pointing_at_garbage_fails_protocol() {
    isolated(
        "a_shared_done_pointing_at_garbage_fails_protocol",
        DEADLINE,
        |dir| {
            protocol_breach(dir, Forge::SharedGarbage);
        },
    );
}

// ---------------------------------------------------------------------------
// 3. A partial frame that stalls

#[multiproc::test]
fn a_stalled_partial_frame_times_out_under_task_timeout() {
    isolated(
        "a_stalled_partial_frame_times_out_under_task_timeout",
        DEADLINE,
        |dir| {
            overstays(dir, Attack::Stall { len: 100, body: 3 }, false);
            assert_eq!(runs(dir, BAD).len(), 1);
        },
    );
}

#[multiproc::test]
fn a_stalled_partial_frame_fails_protocol_without_task_timeout() {
    isolated(
        "a_stalled_partial_frame_fails_protocol_without_task_timeout",
        STALL_DEADLINE,
        |dir| {
            let pool = pool_of_one(None, 0);
            let out = attacked_map(&pool, dir, Attack::Stall { len: 100, body: 3 }, CHUNK);
            let took = out.at[BAD as usize];
            assert!(
                took < Duration::from_secs(20),
                "the stalled frame failed after {took:?}, not within about 5 s"
            );
            check_innocents(&out);
            let run = only_run(dir);
            check_protocol(out.error(), run.pid);
            check_gone(run.pid);
            check_usable(&pool, dir);
        },
    );
}

#[multiproc::test]
fn a_stalled_frame_of_the_largest_length_keeps_memory_bounded() {
    isolated(
        "a_stalled_frame_of_the_largest_length_keeps_memory_bounded",
        DEADLINE,
        |dir| {
            // A header of 1 GiB, the largest length a frame may have; the
            // parent may refuse it at once (Protocol) or wait for the rest
            // until the deadline (Timeout). Measured after a first map, so
            // that buffers every map needs are there already.
            let pool = pool_of_one(Some(LIMIT), 0);
            check_usable(&pool, dir);
            let before = rss_bytes();
            let out = attacked_map(
                &pool,
                dir,
                Attack::Stall {
                    len: 1 << 30,
                    body: 3,
                },
                CHUNK,
            );
            let grown = rss_bytes().saturating_sub(before);
            assert!(
                grown < MAX_GROWTH,
                "the caller grew by {grown} bytes after a forged length of 1 GiB"
            );
            let err = out.error();
            let run = only_run(dir);
            if err.is_protocol() {
                check_protocol(err, run.pid);
            } else {
                assert!(err.is_timeout(), "{err:?}");
                assert_eq!(err.item_index(), Some(BAD));
            }
            let took = out.at[BAD as usize];
            assert!(took < 3 * LIMIT, "failed after {took:?}");
            check_innocents(&out);
            check_gone(run.pid);
            check_usable(&pool, dir);
        },
    );
}

// ---------------------------------------------------------------------------
// 4. A forged progress page under a task time limit
//
// Deadlines run on the parent's clock: a page that names no item, another
// batch, an item past the batch's end or a start in the future cannot keep
// an item from timing out. The parent may also see the forgery for what
// it is first, and fail the item with Protocol.

#[multiproc::test]
fn a_zeroed_progress_page_still_times_out() {
    isolated("a_zeroed_progress_page_still_times_out", DEADLINE, |dir| {
        overstays(dir, Attack::ForgePage(PageForgery::Zeroed), true);
    });
}

#[multiproc::test]
fn a_progress_page_started_in_the_future_still_times_out() {
    isolated(
        "a_progress_page_started_in_the_future_still_times_out",
        DEADLINE,
        |dir| {
            overstays(dir, Attack::ForgePage(PageForgery::FutureStart), true);
        },
    );
}

#[multiproc::test]
fn a_progress_page_naming_another_batch_still_times_out() {
    isolated(
        "a_progress_page_naming_another_batch_still_times_out",
        DEADLINE,
        |dir| {
            overstays(dir, Attack::ForgePage(PageForgery::OtherBatch), true);
        },
    );
}

#[multiproc::test]
fn a_progress_page_naming_an_item_past_the_batch_still_times_out() {
    isolated(
        "a_progress_page_naming_an_item_past_the_batch_still_times_out",
        DEADLINE,
        |dir| {
            overstays(dir, Attack::ForgePage(PageForgery::ItemBeyondBatch), true);
        },
    );
}

#[multiproc::test]
fn a_garbage_progress_page_still_times_out() {
    isolated("a_garbage_progress_page_still_times_out", DEADLINE, |dir| {
        overstays(dir, Attack::ForgePage(PageForgery::Garbage), true);
    });
}

// ---------------------------------------------------------------------------
// 5. Scribbled shared memory

#[multiproc::test]
fn scribbling_shared_memory_with_ones_harms_no_other_item() {
    isolated(
        "scribbling_shared_memory_with_ones_harms_no_other_item",
        DEADLINE,
        |dir| scribble(dir, Fill::Ones),
    );
}

#[multiproc::test]
fn scribbling_shared_memory_with_random_bytes_harms_no_other_item() {
    isolated(
        "scribbling_shared_memory_with_random_bytes_harms_no_other_item",
        DEADLINE,
        |dir| scribble(dir, Fill::Random),
    );
}

// ---------------------------------------------------------------------------
// Respawns are bounded

#[multiproc::test]
fn a_breach_on_every_run_is_retried_twice_then_fails() {
    isolated(
        "a_breach_on_every_run_is_retried_twice_then_fails",
        DEADLINE,
        |dir| {
            // retries(2): a breach counts as a crash, so the item runs
            // three times, each in a fresh process, and then fails.
            let pool = pool_of_one(None, 2);
            let out = attacked_map(&pool, dir, Attack::Send(Forge::FiveByteDone), CHUNK);
            check_innocents(&out);
            let runs = runs(dir, BAD);
            assert_eq!(runs.len(), 3, "1 run + 2 retries, got {runs:?}");
            let mut pids: Vec<u32> = runs.iter().map(|r| r.pid).collect();
            pids.sort_unstable();
            pids.dedup();
            assert_eq!(pids.len(), runs.len(), "a retry ran in a breaching process");
            check_protocol(out.error(), runs.last().unwrap().pid);
            for run in &runs {
                check_gone(run.pid);
            }
            check_usable(&pool, dir);
        },
    );
}

/// A result whose block of floats is damaged fails alone, with a message
/// that says what is wrong, and the pool goes on.
#[multiproc::test]
fn a_damaged_float_block_in_a_result_fails_to_decode() {
    isolated(
        "a_damaged_float_block_in_a_result_fails_to_decode",
        DEADLINE,
        |dir| {
            let pool = pool_of_one(None, 0);
            for (damage, says) in [
                (BlockDamage::CountPastTheBytes, "end of input"),
                (BlockDamage::CountOverflowing, "longer than memory"),
                (BlockDamage::TrailingByte, "trailing"),
            ] {
                step(&format!("{damage:?}"));
                let err = pool
                    .apply(corrupt_block, damage)
                    .expect_err("a damaged block is not a value");
                match err.kind() {
                    ErrorKind::Codec { side, message, .. } => {
                        assert_eq!(*side, multiproc::CodecSide::DecodeOutput, "{err}");
                        assert!(message.contains(says), "{damage:?}: {err}");
                    }
                    ErrorKind::Protocol { .. } => {} // the second answer seen first
                    other => panic!("{damage:?}: {other:?}"),
                }
            }
            check_usable(&pool, dir);
        },
    );
}
