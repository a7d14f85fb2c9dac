//! `Process` and `pipe` through real child processes.

use std::time::{Duration, Instant};

use multiproc::{ErrorKind, ExitReason, PipeEnd, Pool, Process, pipe};

#[multiproc::worker]
fn greet(name: String) -> String {
    format!("hello {name} from {}", std::process::id())
}

#[multiproc::worker]
fn sleep_ms(ms: u64) -> u64 {
    std::thread::sleep(Duration::from_millis(ms));
    ms
}

#[multiproc::worker]
fn crash(code: i32) {
    std::process::exit(code)
}

#[multiproc::worker]
fn boom(msg: String) {
    panic!("{msg}")
}

/// Answers every ping with a pong until the other end goes away.
#[multiproc::worker]
fn pong(mut end: PipeEnd<String, String>) -> u32 {
    let mut n = 0;
    while let Ok(msg) = end.recv() {
        n += 1;
        end.send(&format!("pong {msg}")).unwrap();
    }
    n
}

/// Receives one message, then dies by SIGKILL.
#[multiproc::worker]
fn recv_then_die(mut end: PipeEnd<u64, u64>) {
    let _ = end.recv();
    // SAFETY: killing ourselves.
    unsafe { libc::kill(libc::getpid(), libc::SIGKILL) };
}

#[multiproc::test]
fn process_runs_in_another_process_and_joins() {
    let p = Process::spawn(greet, "A".to_owned()).unwrap();
    let pid = p.pid();
    assert_ne!(pid, std::process::id());
    assert_eq!(p.join().unwrap(), format!("hello A from {pid}"));
}

#[multiproc::test]
fn many_processes_at_once() {
    let ps: Vec<_> = (0..8)
        .map(|i| Process::spawn(greet, i.to_string()).unwrap())
        .collect();
    let pids: std::collections::HashSet<u32> = ps.iter().map(Process::pid).collect();
    assert_eq!(pids.len(), 8);
    for (i, p) in ps.into_iter().enumerate() {
        assert!(p.join().unwrap().starts_with(&format!("hello {i} from")));
    }
}

#[multiproc::test]
fn killed_process_reports_the_signal() {
    let p = Process::spawn(sleep_ms, 60_000).unwrap();
    let pid = p.pid();
    assert!(!p.is_finished());
    p.kill();
    let err = p.join().unwrap_err();
    assert!(err.is_worker_died(), "{err}");
    assert_eq!(err.pid(), Some(pid));
    assert_eq!(err.exit_reason(), Some(ExitReason::Signal(libc::SIGKILL)));
}

#[multiproc::test]
fn exit_code_and_panic_are_reported() {
    let err = Process::spawn(crash, 3).unwrap().join().unwrap_err();
    assert_eq!(err.exit_reason(), Some(ExitReason::Code(3)));
    let err = Process::spawn(boom, "kaputt".to_owned())
        .unwrap()
        .join()
        .unwrap_err();
    assert_eq!(err.panic_message(), Some("kaputt"));
}

#[multiproc::test]
fn join_timeout_kills_an_overdue_process() {
    let started = Instant::now();
    let p = Process::spawn(sleep_ms, 60_000).unwrap();
    let pid = p.pid();
    let err = p.join_timeout(Duration::from_millis(200)).unwrap_err();
    assert!(err.is_timeout(), "{err}");
    assert!(started.elapsed() < Duration::from_secs(10));
    // The process is gone (reaped), not orphaned.
    // Signal 0 reaches a zombie too: ESRCH only once it is reaped.
    let exists = || {
        // SAFETY: kill with signal 0 delivers nothing.
        let probe = unsafe { libc::kill(pid as libc::pid_t, 0) };
        probe == 0 || std::io::Error::last_os_error().raw_os_error() != Some(libc::ESRCH)
    };
    let deadline = Instant::now() + Duration::from_secs(5);
    while exists() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(!exists());
    // A quick one finishes within its limit.
    assert_eq!(
        Process::spawn(sleep_ms, 1)
            .unwrap()
            .join_timeout(Duration::from_secs(30))
            .unwrap(),
        1
    );
}

#[multiproc::test]
fn ping_pong_over_a_pipe() {
    let (mut mine, theirs) = pipe::<String, String>().unwrap();
    let p = Process::spawn(pong, theirs).unwrap();
    for i in 0..100 {
        mine.send(&format!("ping {i}")).unwrap();
        assert_eq!(mine.recv().unwrap(), format!("pong ping {i}"));
    }
    drop(mine); // the worker sees the end of the pipe and returns
    assert_eq!(p.join().unwrap(), 100);
}

#[multiproc::test]
fn pipe_end_works_through_a_pool_too() {
    let pool = Pool::new(1).unwrap();
    let (mut mine, theirs) = pipe::<String, String>().unwrap();
    let task = pool.submit(pong, theirs);
    mine.send(&"x".to_owned()).unwrap();
    assert_eq!(
        mine.recv_timeout(Duration::from_secs(30))
            .unwrap()
            .as_deref(),
        Some("pong x")
    );
    drop(mine);
    assert_eq!(task.wait().unwrap(), 1);
}

#[multiproc::test]
fn dead_peer_is_an_error_not_a_hang() {
    let (mut mine, theirs) = pipe::<u64, u64>().unwrap();
    let p = Process::spawn(recv_then_die, theirs).unwrap();
    mine.send(&1).unwrap();
    let err = p.join().unwrap_err();
    assert_eq!(err.exit_reason(), Some(ExitReason::Signal(libc::SIGKILL)));
    let started = Instant::now();
    let err = mine.recv().unwrap_err();
    assert!(
        matches!(err.kind(), ErrorKind::Disconnected { what: "pipe" }),
        "{err}"
    );
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[test]
fn try_recv_and_timeout_in_one_process() {
    let (mut a, mut b) = pipe::<u32, String>().unwrap();
    assert_eq!(b.try_recv().unwrap(), None);
    let t = Instant::now();
    assert_eq!(b.recv_timeout(Duration::from_millis(50)).unwrap(), None);
    assert!(t.elapsed() >= Duration::from_millis(50));
    a.send(&7).unwrap();
    assert_eq!(b.try_recv().unwrap(), Some(7));
    b.send(&"back".to_owned()).unwrap();
    assert_eq!(a.recv().unwrap(), "back");
    drop(b);
    assert!(matches!(
        a.recv().unwrap_err().kind(),
        ErrorKind::Disconnected { .. }
    ));
}
