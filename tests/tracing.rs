//! `tracing` through real worker processes: the events the library emits
//! (pool, worker processes, crashes, retries, recycling, the spans of
//! `map` and `imap`), and the events a task emits in its worker process,
//! forwarded to the subscriber of the caller with their level, target,
//! message and fields, plus `pid` and `item`. A task that floods the
//! pool with events neither hangs it nor exhausts memory, and a worker
//! that forges event records fails its item with a protocol error.
//!
//! Each test installs a collecting subscriber on its own thread
//! (`with_default`), so tests running side by side do not see each
//! other's events.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use multiproc::{Pool, worker};
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Level, Metadata, Subscriber};
use tracing_core::span::Current;

// ---------------------------------------------------------------------------
// A subscriber that keeps what it sees

/// A field's value as a subscriber saw it.
#[derive(Clone, Debug, PartialEq)]
enum Val {
    Str(String),
    I64(i64),
    U64(u64),
    F64(f64),
    Bool(bool),
    /// Recorded through `Debug` (a message, a `%` or `?` field).
    Text(String),
}

impl Val {
    fn u64(&self) -> Option<u64> {
        match *self {
            Val::U64(n) => Some(n),
            Val::I64(n) => u64::try_from(n).ok(),
            _ => None,
        }
    }

    fn text(&self) -> Option<&str> {
        match self {
            Val::Str(s) | Val::Text(s) => Some(s),
            _ => None,
        }
    }
}

#[derive(Default)]
struct Values(BTreeMap<String, Val>);

impl Visit for Values {
    fn record_f64(&mut self, f: &Field, v: f64) {
        self.0.insert(f.name().to_owned(), Val::F64(v));
    }
    fn record_i64(&mut self, f: &Field, v: i64) {
        self.0.insert(f.name().to_owned(), Val::I64(v));
    }
    fn record_u64(&mut self, f: &Field, v: u64) {
        self.0.insert(f.name().to_owned(), Val::U64(v));
    }
    fn record_bool(&mut self, f: &Field, v: bool) {
        self.0.insert(f.name().to_owned(), Val::Bool(v));
    }
    fn record_str(&mut self, f: &Field, v: &str) {
        self.0.insert(f.name().to_owned(), Val::Str(v.to_owned()));
    }
    fn record_debug(&mut self, f: &Field, v: &dyn std::fmt::Debug) {
        self.0
            .insert(f.name().to_owned(), Val::Text(format!("{v:?}")));
    }
}

/// One event a subscriber saw.
#[derive(Clone, Debug)]
struct Seen {
    level: Level,
    target: String,
    module_path: Option<String>,
    file: Option<String>,
    fields: BTreeMap<String, Val>,
    /// The name of its parent span (explicit, or the one entered).
    span: Option<String>,
}

impl Seen {
    fn get(&self, name: &str) -> Option<&Val> {
        self.fields.get(name)
    }

    fn message(&self) -> Option<&str> {
        self.get("message").and_then(Val::text)
    }
}

#[derive(Default)]
struct State {
    events: Vec<Seen>,
    /// Events of each target, counted even when not kept.
    counts: BTreeMap<String, u64>,
    spans: BTreeMap<u64, (String, BTreeMap<String, Val>)>,
    span_meta: BTreeMap<u64, &'static Metadata<'static>>,
}

/// Keeps every event (except those of targets it only counts), and the
/// name and fields of every span.
#[derive(Clone, Default)]
struct Collector {
    state: Arc<Mutex<State>>,
    next_span: Arc<AtomicU64>,
    /// Events of this target are counted, not kept.
    count_only: Option<&'static str>,
}

thread_local! {
    static ENTERED: std::cell::RefCell<Vec<u64>> = const { std::cell::RefCell::new(Vec::new()) };
}

impl Collector {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap()
    }

    fn events(&self) -> Vec<Seen> {
        self.lock().events.clone()
    }

    fn count(&self, target: &str) -> u64 {
        self.lock().counts.get(target).copied().unwrap_or(0)
    }

    fn with_message(&self, message: &str) -> Vec<Seen> {
        self.events()
            .into_iter()
            .filter(|e| e.message() == Some(message))
            .collect()
    }

    fn span(&self, name: &str) -> Option<BTreeMap<String, Val>> {
        self.lock()
            .spans
            .values()
            .find(|(n, _)| n == name)
            .map(|(_, f)| f.clone())
    }
}

impl Subscriber for Collector {
    fn enabled(&self, _: &Metadata<'_>) -> bool {
        true
    }

    fn new_span(&self, span: &Attributes<'_>) -> Id {
        let id = self.next_span.fetch_add(1, Ordering::Relaxed) + 1;
        let mut values = Values::default();
        span.record(&mut values);
        let mut state = self.lock();
        state
            .spans
            .insert(id, (span.metadata().name().to_owned(), values.0));
        state.span_meta.insert(id, span.metadata());
        Id::from_u64(id)
    }

    fn record(&self, _: &Id, _: &Record<'_>) {}

    fn record_follows_from(&self, _: &Id, _: &Id) {}

    fn event(&self, event: &Event<'_>) {
        let meta = event.metadata();
        let mut state = self.lock();
        *state.counts.entry(meta.target().to_owned()).or_default() += 1;
        if self.count_only == Some(meta.target()) {
            return;
        }
        let mut values = Values::default();
        event.record(&mut values);
        let parent = event
            .parent()
            .map(Id::into_u64)
            .or_else(|| ENTERED.with(|e| e.borrow().last().copied()));
        let span = parent.and_then(|id| state.spans.get(&id).map(|(n, _)| n.clone()));
        state.events.push(Seen {
            level: *meta.level(),
            target: meta.target().to_owned(),
            module_path: meta.module_path().map(str::to_owned),
            file: meta.file().map(str::to_owned),
            fields: values.0,
            span,
        });
    }

    fn enter(&self, span: &Id) {
        ENTERED.with(|e| e.borrow_mut().push(span.into_u64()));
    }

    fn exit(&self, _: &Id) {
        ENTERED.with(|e| e.borrow_mut().pop());
    }

    fn current_span(&self) -> Current {
        let Some(id) = ENTERED.with(|e| e.borrow().last().copied()) else {
            return Current::none();
        };
        match self.lock().span_meta.get(&id) {
            Some(meta) => Current::new(Id::from_u64(id), meta),
            None => Current::none(),
        }
    }
}

/// Waits up to 10 s for `done` to hold (events that arrive after a call
/// returns: a worker's last words, a count of dropped events).
fn eventually(what: &str, done: impl Fn() -> bool) {
    let end = Instant::now() + Duration::from_secs(10);
    while !done() {
        assert!(Instant::now() < end, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

// ---------------------------------------------------------------------------
// Workers

/// Emits one INFO event with a field of each kind, and a DEBUG one;
/// returns its pid.
#[worker]
fn greet(x: u64) -> u32 {
    tracing::info!(
        target: "tracing_tests::task",
        x,
        label = "hello",
        ratio = 0.5,
        ok = true,
        neg = -3i64,
        shown = %format_args!("<{x}>"),
        "item {x} says hi"
    );
    tracing::debug!(target: "tracing_tests::task", x, "a detail");
    std::process::id()
}

/// Says so, then aborts its process on `bad`.
#[worker]
fn abort_on(x: u64, bad: u64) -> u64 {
    if x == bad {
        tracing::error!(target: "tracing_tests::task", x, "about to abort");
        std::process::abort();
    }
    x
}

/// Emits `n` events of a KiB each as fast as it can, then returns `n`.
#[worker]
fn flood(n: u64) -> u64 {
    let pad = "x".repeat(1024);
    for i in 0..n {
        tracing::info!(target: "tracing_tests::flood", i, pad = &*pad, "tick");
    }
    n
}

/// Whether it could install a global subscriber of its own in its worker
/// process.
#[worker]
fn install_own() -> bool {
    tracing::subscriber::set_global_default(tracing::subscriber::NoSubscriber::default()).is_ok()
}

#[worker]
fn pid_of(_x: u64) -> u32 {
    std::process::id()
}

#[worker]
fn sleep_ms(ms: u64) -> u64 {
    std::thread::sleep(Duration::from_millis(ms));
    ms
}

/// Leaks `mib` MiB, written to (so resident).
#[worker]
fn hold_mib(mib: u64) -> u64 {
    std::mem::forget(vec![1u8; (mib as usize) << 20]);
    mib
}

// ---------------------------------------------------------------------------
// Tests

#[multiproc::test]
fn a_tasks_events_reach_the_callers_subscriber_with_pid_and_item() {
    let collector = Collector::default();
    let pids = tracing::subscriber::with_default(collector.clone(), || {
        let pool = Pool::new(2).unwrap();
        // Batches of 8: an event's item is its batch's first plus its own
        // place in the batch.
        pool.map_chunked(greet, 0..40, 8).unwrap()
    });
    let events: Vec<Seen> = collector
        .events()
        .into_iter()
        .filter(|e| e.target == "tracing_tests::task" && e.level == Level::INFO)
        .collect();
    assert_eq!(events.len(), 40, "{events:#?}");
    let me = std::process::id();
    for e in &events {
        let x = e.get("x").and_then(Val::u64).expect("the field x");
        assert_eq!(e.message(), Some(&*format!("item {x} says hi")));
        assert_eq!(e.get("item").and_then(Val::u64), Some(x), "{e:?}");
        let pid = e.get("pid").and_then(Val::u64).expect("a pid") as u32;
        assert_eq!(pid, pids[x as usize], "the pid of the process that ran it");
        assert_ne!(pid, me);
        assert_eq!(e.get("label"), Some(&Val::Str("hello".into())));
        assert_eq!(e.get("ratio"), Some(&Val::F64(0.5)));
        assert_eq!(e.get("ok"), Some(&Val::Bool(true)));
        assert_eq!(e.get("neg"), Some(&Val::I64(-3)));
        assert_eq!(e.get("shown").and_then(Val::text), Some(&*format!("<{x}>")));
        assert_eq!(e.module_path.as_deref(), Some("tracing"));
        assert!(e.file.as_deref().is_some_and(|f| f.ends_with("tracing.rs")));
        assert_eq!(e.span.as_deref(), Some("map"), "inside the map's span");
    }
    let debug = collector
        .events()
        .into_iter()
        .filter(|e| e.target == "tracing_tests::task" && e.level == Level::DEBUG)
        .count();
    assert_eq!(
        debug, 40,
        "DEBUG events are forwarded to a subscriber that wants them"
    );
    let span = collector.span("map").expect("a map span");
    assert_eq!(
        span.get("worker").and_then(Val::text),
        Some("tracing::greet")
    );
    assert_eq!(span.get("items").and_then(Val::u64), Some(40));
}

#[multiproc::test]
fn imap_and_submit_events_are_forwarded_too() {
    let collector = Collector::default();
    tracing::subscriber::with_default(collector.clone(), || {
        let pool = Pool::new(1).unwrap();
        let got: Vec<u32> = pool.imap(greet, 100..103).map(Result::unwrap).collect();
        assert_eq!(got.len(), 3);
        pool.submit(greet, 7).wait().unwrap();
        let unordered = pool.imap_unordered(greet, 200..202).count();
        assert_eq!(unordered, 2);
    });
    let said = |x: u64| collector.with_message(&format!("item {x} says hi"));
    for x in 100..103 {
        let e = &said(x)[0];
        assert_eq!(e.get("item").and_then(Val::u64), Some(x - 100));
        assert_eq!(e.span.as_deref(), Some("imap"));
    }
    let submitted = &said(7)[0];
    assert!(submitted.get("pid").is_some());
    assert_eq!(submitted.get("item"), None, "a submitted call has no index");
    assert_eq!(said(201)[0].span.as_deref(), Some("imap_unordered"));
    let span = collector.span("imap").expect("an imap span");
    assert_eq!(span.get("items").and_then(Val::u64), Some(3));
}

#[multiproc::test]
fn a_crash_is_a_warn_event_naming_the_pid_and_the_signal() {
    let collector = Collector::default();
    let err = tracing::subscriber::with_default(collector.clone(), || {
        let pool = Pool::new(1).unwrap();
        let items: Vec<(u64, u64)> = (0..10).map(|x| (x, 5)).collect();
        let err = pool.map_chunked(abort_on, items, 4).unwrap_err();
        // The pool goes on with a new process.
        assert_eq!(pool.map(pid_of, 0..2).unwrap().len(), 2);
        err
    });
    assert!(err.is_worker_died(), "{err:?}");
    let pid = u64::from(err.pid().expect("the dead worker's pid"));
    let crashes = collector.with_message("worker process crashed");
    assert_eq!(crashes.len(), 1, "{crashes:#?}");
    let crash = &crashes[0];
    assert_eq!(crash.level, Level::WARN);
    assert_eq!(crash.target, "multiproc::worker");
    assert_eq!(crash.get("pid").and_then(Val::u64), Some(pid));
    assert_eq!(
        crash.get("signal"),
        Some(&Val::I64(i64::from(libc::SIGABRT)))
    );
    assert_eq!(crash.get("item").and_then(Val::u64), Some(5));
    assert_eq!(
        crash.get("worker").and_then(Val::text),
        Some("tracing::abort_on")
    );
    assert_eq!(crash.span.as_deref(), Some("map"));
    assert!(
        crash
            .module_path
            .as_deref()
            .is_some_and(|m| m.starts_with("multiproc_runtime"))
    );
    assert!(crash.file.is_some());
    // Its last words came first, from that process, naming the item.
    let last = &collector.with_message("about to abort")[0];
    assert_eq!(last.level, Level::ERROR);
    assert_eq!(last.get("pid").and_then(Val::u64), Some(pid));
    assert_eq!(last.get("item").and_then(Val::u64), Some(5));
    let replaced = collector.with_message("worker process replaced");
    assert_eq!(replaced.len(), 1);
    assert_eq!(replaced[0].get("replaced").and_then(Val::u64), Some(pid));
}

#[multiproc::test]
fn retries_and_recycling_are_reported() {
    let collector = Collector::default();
    tracing::subscriber::with_default(collector.clone(), || {
        let pool = Pool::builder().workers(1).retries(1).build().unwrap();
        let err = pool.map(abort_on, vec![(1, 1)]).unwrap_err();
        assert!(err.is_worker_died());
        drop(pool);
        let pool = Pool::builder()
            .workers(1)
            .max_tasks_per_worker(2)
            .build()
            .unwrap();
        pool.map_chunked(pid_of, 0..4, 1).unwrap();
    });
    let retried = collector.with_message("item retried");
    assert_eq!(retried.len(), 1, "{retried:#?}");
    assert_eq!(retried[0].get("item").and_then(Val::u64), Some(0));
    assert_eq!(retried[0].get("retries_left").and_then(Val::u64), Some(0));
    assert_eq!(collector.with_message("worker process crashed").len(), 2);
    let recycled =
        collector.with_message("worker process recycled: it reached max_tasks_per_worker");
    assert!(!recycled.is_empty());
    assert_eq!(recycled[0].get("tasks").and_then(Val::u64), Some(2));
}

#[multiproc::test]
fn timeouts_and_memory_recycling_are_reported() {
    let collector = Collector::default();
    tracing::subscriber::with_default(collector.clone(), || {
        let pool = Pool::builder()
            .workers(1)
            .task_timeout(Duration::from_millis(300))
            .build()
            .unwrap();
        let err = pool.map_chunked(sleep_ms, [1, 5_000, 1], 3).unwrap_err();
        assert!(err.is_timeout(), "{err:?}");
        let pool = Pool::builder()
            .workers(1)
            .max_worker_memory(64 << 20)
            .build()
            .unwrap();
        pool.apply(hold_mib, 128).unwrap();
        pool.apply(hold_mib, 1).unwrap();
    });
    let timed_out = collector.with_message("item timed out");
    assert_eq!(timed_out.len(), 1, "{timed_out:#?}");
    assert_eq!(timed_out[0].level, Level::WARN);
    assert_eq!(timed_out[0].get("item").and_then(Val::u64), Some(1));
    assert_eq!(timed_out[0].get("limit_ms").and_then(Val::u64), Some(300));
    let recycled =
        collector.with_message("worker process recycled: its memory exceeds max_worker_memory");
    assert_eq!(recycled.len(), 1, "{recycled:#?}");
    assert_eq!(recycled[0].get("limit").and_then(Val::u64), Some(64 << 20));
    assert!(recycled[0].get("rss").and_then(Val::u64) > Some(64 << 20));
}

#[multiproc::test]
fn a_pool_built_before_the_subscriber_forwards_to_it() {
    let pool = Pool::new(1).unwrap();
    pool.map(pid_of, 0..2).unwrap();
    let collector = Collector::default();
    tracing::subscriber::with_default(collector.clone(), || {
        pool.map(greet, 0..3).unwrap();
    });
    for x in 0..3 {
        let said = collector.with_message(&format!("item {x} says hi"));
        assert_eq!(said.len(), 1, "item {x}");
        assert_eq!(said[0].get("item").and_then(Val::u64), Some(x));
    }
}

#[multiproc::test]
fn a_pool_reports_its_start_and_close_and_its_workers() {
    let collector = Collector::default();
    tracing::subscriber::with_default(collector.clone(), || {
        let pool = Pool::new(2).unwrap();
        pool.map(pid_of, 0..4).unwrap();
        drop(pool);
    });
    let started = collector.with_message("pool started");
    assert_eq!(started.len(), 1);
    assert_eq!(started[0].target, "multiproc::pool");
    assert_eq!(started[0].get("workers").and_then(Val::u64), Some(2));
    assert_eq!(collector.with_message("pool closed").len(), 1);
    let up = collector.with_message("worker process started");
    let down = collector.with_message("worker process exited");
    assert_eq!((up.len(), down.len()), (2, 2));
    let pids = |v: &[Seen]| {
        let mut p: Vec<u64> = v.iter().filter_map(|e| e.get("pid")?.u64()).collect();
        p.sort_unstable();
        p
    };
    assert_eq!(pids(&up), pids(&down));
    assert!(down.iter().all(|e| e.get("code") == Some(&Val::I64(0))));
    let span = collector.span("map").expect("a map span");
    assert_eq!(
        span.get("worker").and_then(Val::text),
        Some("tracing::pid_of")
    );
    assert_eq!(span.get("items").and_then(Val::u64), Some(4));
}

#[multiproc::test]
fn without_forwarding_a_worker_may_install_its_own_subscriber() {
    let collector = Collector::default();
    let (own, forwarded) = tracing::subscriber::with_default(collector.clone(), || {
        let off = Pool::builder()
            .workers(1)
            .forward_tracing(false)
            .build()
            .unwrap();
        let own = off.apply(install_own, ()).unwrap();
        off.map(greet, 0..2).unwrap();
        let on = Pool::new(1).unwrap();
        (own, on.apply(install_own, ()).unwrap())
    });
    assert!(
        own,
        "with forwarding off, a worker's global default is free"
    );
    assert!(
        !forwarded,
        "with forwarding on, multiproc's subscriber has it"
    );
    assert_eq!(collector.count("tracing_tests::task"), 0);
    assert_eq!(collector.with_message("pool started").len(), 2);
}

/// Resident memory of process `pid`, and its peak, in bytes.
fn rss(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kb = |key: &str| -> u64 {
        let line = status.lines().find(|l| l.starts_with(key)).unwrap();
        line.split_whitespace()
            .nth(1)
            .unwrap()
            .parse::<u64>()
            .unwrap()
            * 1024
    };
    (kb("VmRSS:"), kb("VmHWM:"))
}

#[multiproc::test]
fn a_flood_of_events_neither_hangs_nor_exhausts_memory() {
    const N: u64 = 1_000_000;
    let collector = Collector {
        count_only: Some("tracing_tests::flood"),
        ..Collector::default()
    };
    let started = Instant::now();
    let me = std::process::id();
    let before = rss(me).0;
    tracing::subscriber::with_default(collector.clone(), || {
        let pool = Pool::new(1).unwrap();
        let worker_pid = pool.apply(pid_of, 0).unwrap();
        assert_eq!(pool.apply(flood, N).unwrap(), N);
        let dropped = || {
            collector
                .with_message("tracing events of a worker process were dropped")
                .iter()
                .filter_map(|e| e.get("count")?.u64())
                .sum::<u64>()
        };
        // Every event arrives, or is counted as dropped.
        eventually("every event to be delivered or counted", || {
            collector.count("tracing_tests::flood") + dropped() == N
        });
        // A GiB of events went through neither process.
        let (_, peak) = rss(worker_pid);
        assert!(peak < 128 << 20, "the worker peaked at {peak} bytes");
        // The pool still works, and events still flow.
        assert_eq!(pool.map(pid_of, 0..4).unwrap(), vec![worker_pid; 4]);
        pool.apply(greet, 1).unwrap();
    });
    let grown = rss(me).0.saturating_sub(before);
    // Other tests run beside this one in this process: the bound leaves
    // room for their pools.
    assert!(grown < 192 << 20, "the caller grew by {grown} bytes");
    assert_eq!(collector.with_message("item 1 says hi").len(), 1);
    assert!(
        started.elapsed() < Duration::from_secs(120),
        "took {:?}",
        started.elapsed()
    );
}

/// How [`forge`] breaks the event protocol.
#[derive(serde::Serialize, serde::Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
enum Forgery {
    /// A record of 100 KiB, past the 64 KiB cap.
    Oversized,
    /// A record whose target length runs past its end.
    LyingLength,
    /// A record of level 9.
    BadLevel,
}

/// Returns `x`; on `bad`, writes a forged record on its event socket and
/// lingers, for the parent to kill it.
#[worker]
fn forge(x: u64, bad: u64, how: Forgery) -> u64 {
    if x == bad {
        let bytes = match how {
            Forgery::Oversized => vec![1; 100 << 10],
            Forgery::LyingLength => {
                let mut r = vec![1, 3];
                r.extend_from_slice(&[0; 20]);
                r.extend_from_slice(&500u16.to_le_bytes());
                r.extend_from_slice(b"short");
                r
            }
            Forgery::BadLevel => vec![1, 9, 0, 0, 0, 0],
        };
        let fd = event_socket();
        // SAFETY: send reads at most `bytes.len()` bytes from `bytes`.
        let sent = unsafe { libc::send(fd, bytes.as_ptr().cast(), bytes.len(), 0) };
        assert_eq!(
            sent,
            bytes.len() as isize,
            "{}",
            std::io::Error::last_os_error()
        );
        std::thread::sleep(Duration::from_secs(10));
    }
    x
}

/// The worker's event socket: its one datagram socket.
fn event_socket() -> std::os::fd::RawFd {
    let fds = std::fs::read_dir("/proc/self/fd").unwrap().flatten();
    fds.filter_map(|e| e.file_name().to_str()?.parse().ok())
        .find(|&fd: &std::os::fd::RawFd| {
            let mut kind: libc::c_int = 0;
            let mut len = size_of::<libc::c_int>() as libc::socklen_t;
            // SAFETY: getsockopt writes at most `len` bytes into `kind`.
            let got = unsafe {
                libc::getsockopt(
                    fd,
                    libc::SOL_SOCKET,
                    libc::SO_TYPE,
                    (&raw mut kind).cast(),
                    &mut len,
                )
            };
            got == 0 && kind == libc::SOCK_DGRAM
        })
        .expect("a worker that forwards events has a datagram socket")
}

#[multiproc::test]
fn a_forged_event_record_fails_its_item_with_a_protocol_error() {
    for how in [Forgery::Oversized, Forgery::LyingLength, Forgery::BadLevel] {
        let collector = Collector::default();
        let started = Instant::now();
        let results: Vec<_> = tracing::subscriber::with_default(collector.clone(), || {
            let pool = Pool::new(1).unwrap();
            let items: Vec<(u64, u64, Forgery)> = (0..12).map(|x| (x, 5, how)).collect();
            let results: Vec<_> = pool.imap(forge, items).chunk_size(4).collect();
            // The pool goes on.
            assert_eq!(pool.map(pid_of, 0..3).unwrap().len(), 3);
            results
        });
        assert!(
            started.elapsed() < Duration::from_secs(8),
            "{how:?}: the forging worker was not stopped ({:?})",
            started.elapsed()
        );
        for (x, result) in results.into_iter().enumerate() {
            match result {
                Ok(v) => assert_eq!(v, x as u64, "{how:?}"),
                Err(e) => {
                    assert_eq!(x, 5, "{how:?}: an innocent item failed: {e}");
                    assert!(e.is_protocol(), "{how:?}: {e:?}");
                    let text = e.to_string();
                    assert!(text.contains("tracing event socket"), "{how:?}: {text}");
                }
            }
        }
        let breach = collector.with_message("worker process broke the protocol");
        assert_eq!(breach.len(), 1, "{how:?}");
        assert_eq!(breach[0].level, Level::ERROR);
        assert_eq!(breach[0].get("item").and_then(Val::u64), Some(5));
    }
}
