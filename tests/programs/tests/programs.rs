//! Runs the helper programs in `src/bin` as real processes: `main` runs once,
//! a missing `#[entry]` is an error, `#[entry]` works over `#[tokio::main]`,
//! a forged child marker is refused, and pools leave no processes behind.

use std::path::PathBuf;
use std::process::Command;

use multiproc_test_programs::run;

/// A fresh path for a log file, unique to `name`.
fn log_file(name: &str) -> PathBuf {
    let path = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("{name}-{}.log", std::process::id()));
    let _ = std::fs::remove_file(&path);
    path
}

fn lines(path: &PathBuf) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(str::to_owned)
        .collect()
}

#[test]
fn entry_main_runs_once() {
    let log = log_file("main-once");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_main_once"));
    cmd.arg(&log);
    let run = run(cmd);
    assert!(run.status.success(), "{:?}\n{}", run.status, run.stderr);
    // Σ x² for x in 0..100.
    assert_eq!(run.stdout.trim(), "sum of squares: 328350");
    let lines = lines(&log);
    assert_eq!(lines.len(), 1, "main ran more than once: {lines:?}");
    assert!(lines[0].starts_with("main ran in "), "{lines:?}");
    let _ = std::fs::remove_file(&log);
}

#[test]
fn pool_without_entry_is_guard_missing() {
    let log = log_file("no-entry");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_no_entry"));
    cmd.arg(&log);
    let run = run(cmd);
    assert_eq!(run.status.code(), Some(2), "stderr: {}", run.stderr);
    assert_eq!(
        run.stderr.trim(),
        "error: multiproc needs #[multiproc::entry] on `main` (or #[multiproc::test] on \
         the test) before it can start worker processes"
    );
    assert_eq!(run.stdout.trim(), "children: 0");
    assert_eq!(lines(&log).len(), 1, "a child ran main: {:?}", lines(&log));
    let _ = std::fs::remove_file(&log);
}

#[test]
fn entry_over_tokio_main_awaits_tasks() {
    let run = run(Command::new(env!("CARGO_BIN_EXE_tokio_entry")));
    assert!(run.status.success(), "{:?}\n{}", run.status, run.stderr);
    assert_eq!(
        run.stdout.lines().collect::<Vec<_>>(),
        vec![
            "awaited: 49",
            "runtime ticked while waiting: true",
            "last completed: 0=1",
            "completed: 0=1 1=4 2=9",
        ],
        "stderr: {}",
        run.stderr
    );
}

#[test]
fn forged_child_marker_is_refused() {
    // Old protocols, garbage, and the current protocol naming a process that
    // is not the parent (pid 1).
    for marker in ["1:99", "1:0", "garbage", "999:3", "4:1"] {
        let log = log_file("forged-marker");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_main_once"));
        cmd.arg(&log).env("MULTIPROC_CHILD", marker);
        let run = run(cmd);
        assert_eq!(
            run.status.code(),
            Some(97),
            "MULTIPROC_CHILD={marker}: {:?}\nstdout: {}\nstderr: {}",
            run.status,
            run.stdout,
            run.stderr
        );
        assert!(
            run.stderr.contains("MULTIPROC_CHILD"),
            "MULTIPROC_CHILD={marker}: the error does not name the variable: {}",
            run.stderr
        );
        assert_eq!(run.stdout, "", "MULTIPROC_CHILD={marker}: main ran");
        assert!(!log.exists(), "MULTIPROC_CHILD={marker}: main ran");
    }
}

// Linux only: `reap_check` finds the workers in `/proc`.
#[cfg(target_os = "linux")]
#[test]
fn pools_leave_no_processes_behind() {
    let run = run(Command::new(env!("CARGO_BIN_EXE_reap_check")));
    assert!(
        run.status.success(),
        "{:?}\nstdout:\n{}\nstderr:\n{}",
        run.status,
        run.stdout,
        run.stderr
    );
    assert_eq!(
        run.stdout.lines().collect::<Vec<_>>(),
        vec![
            "three children after Pool::new(3): ok",
            "tasks ran in those children: ok",
            "children gone after drop: ok",
            "no children left after drop: ok",
            "children gone after terminate: ok",
            "crashed child reaped while the pool lives: ok",
            "replacement is the only child: ok",
            "no children left at the end: ok",
        ]
    );
}

#[test]
fn duplicate_worker_names_are_refused() {
    let run = run(Command::new(env!("CARGO_BIN_EXE_duplicate_worker")));
    assert!(run.status.success(), "{:?}\n{}", run.status, run.stderr);
    assert_eq!(
        run.stdout.lines().collect::<Vec<_>>(),
        vec![
            "duplicate: twice",
            "error: two #[worker] functions are registered as `twice`; give one of them \
             #[worker(name = \"...\")]",
            "children: 0",
        ]
    );
}
