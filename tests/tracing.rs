//! `tracing` through real worker processes: the events the library emits
//! about pools, worker processes, crashes, retries, timeouts and
//! recycling, and the spans of `map` and `imap`.
//!
//! Each test installs a collecting subscriber on its own thread
//! (`with_default`), so tests running side by side do not see each
//! other's events.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

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
    spans: BTreeMap<u64, (String, BTreeMap<String, Val>)>,
    span_meta: BTreeMap<u64, &'static Metadata<'static>>,
}

/// Keeps every event, and the name and fields of every span.
#[derive(Clone, Default)]
struct Collector {
    state: Arc<Mutex<State>>,
    next_span: Arc<AtomicU64>,
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

// ---------------------------------------------------------------------------
// Workers

/// Aborts its process on `bad`.
#[worker]
fn abort_on(x: u64, bad: u64) -> u64 {
    if x == bad {
        std::process::abort();
    }
    x
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
