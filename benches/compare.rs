//! The comparison bench: each workload on sequential Rust, rayon,
//! multiproc and — when `python3` is on the machine — Python's
//! `multiprocessing`, in one run, printed as one markdown table with the
//! ratios and a ✓/✗ per target.
//!
//! ```text
//! cargo bench --bench compare                          # the full run (~3 min)
//! MULTIPROC_BENCH_QUICK=1 cargo bench --bench compare  # sizes ÷ 10, fewer repeats
//! PYTHON=python3.12 cargo bench --bench compare        # another interpreter
//! MULTIPROC_BENCH_ONLY=primes,apply cargo bench --bench compare
//!     # some rows: primes apply map imap start bytes f64 f64rt record64
//!     # records strings queue futures memory
//!     # shared (a 1 GiB `SharedArray<f64>` read by a worker; 2 GiB of RAM)
//! ```
//!
//! Each measurement is repeated and the median reported; the contenders of a
//! workload are interleaved round by round. The Python side is
//! `benches/python/compare.py`, run once per workload between the Rust
//! rounds; it prints JSON on stdout.
//!
//! The bench binary plays two more roles, chosen by the environment variable
//! `MULTIPROC_BENCH_ROLE` (checked right after the `#[entry]` guard): `echo`,
//! the far end of the socketpair ping-pong that is the floor for `apply`;
//! `fanout`, one of the two processes of the floor for cost growth; and
//! `peak-map`, a fresh process that maps over 10 M `u64` and reports its peak
//! resident memory.

use std::fmt::Write as _;
use std::hint::black_box;
use std::io::{Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use multiproc::{Pool, SharedBytes, WakeLatency, Worker, as_completed, worker};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

type BoxError = Box<dyn std::error::Error>;

/// Worker processes in every pool of the bench (the targets are for 2).
const WORKERS: usize = 2;
const ROLE: &str = "MULTIPROC_BENCH_ROLE";
const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/benches/python/compare.py");

/// `x + 1`: the tiny task.
#[worker]
fn inc(x: u64) -> u64 {
    x + 1
}

/// Whether `n` is prime, by trial division with every `i` up to √n (the
/// algorithm of `examples/primes.rs` and of the Python script).
#[worker]
fn is_prime(n: u64) -> bool {
    if n < 2 {
        return false;
    }
    for i in 2..=n.isqrt() {
        if n % i == 0 {
            return false;
        }
    }
    true
}

/// Returns its argument: a large payload's round trip.
#[worker]
fn echo_bytes(bytes: Vec<u8>) -> Vec<u8> {
    bytes
}

/// Reads every byte of a buffer in shared memory and returns their sum. (A
/// `SharedBytes` cannot be sent back from a worker — handles travel only as
/// arguments — so its row is a hand-off that the worker reads, not an echo.)
#[worker]
fn sum_shared(bytes: SharedBytes) -> u64 {
    bytes.iter().map(|&b| u64::from(b)).sum()
}

/// Sums the bytes of its argument as little-endian 64-bit words (wrapping):
/// a large payload's one-way trip, read once in the worker as the
/// `Vec<f64>` one is, with as many additions.
#[worker]
fn sum_bytes(bytes: Vec<u8>) -> u64 {
    word_sum(&bytes)
}

/// The wrapping sum of `bytes` as little-endian `u64` words (a short last
/// word padded with zeros).
fn word_sum(bytes: &[u8]) -> u64 {
    let words = bytes.chunks_exact(8);
    let mut tail = [0u8; 8];
    tail[..words.remainder().len()].copy_from_slice(words.remainder());
    words
        .map(|w| u64::from_le_bytes(w.try_into().expect("8 bytes")))
        .fold(u64::from_le_bytes(tail), u64::wrapping_add)
}

/// Sums its argument: a `Vec<f64>` payload's one-way trip. Eight running
/// sums, as a numeric user writes a sum of 8 M values (one running sum is a
/// chain of 8 M dependent additions, 4–11 ms here, where reading the
/// vector takes 2).
#[worker]
fn sum_f64(values: Vec<f64>) -> f64 {
    sum_lanes(&values)
}

/// Doubles every value and returns the vector: a `Vec<f64>` round trip.
#[worker]
fn double_f64(mut values: Vec<f64>) -> Vec<f64> {
    for v in &mut values {
        *v *= 2.0;
    }
    values
}

/// A named series: a struct payload, mostly floats.
#[derive(Serialize, Deserialize, Clone, PartialEq)]
struct Series {
    name: String,
    values: Vec<f64>,
}

/// Returns its argument: a struct payload's round trip.
#[worker]
fn echo_series(series: Series) -> Series {
    series
}

/// A small record, as a `map` over rows of a table sends them.
#[derive(Serialize, Deserialize, Clone)]
struct Record {
    id: u32,
    text: String,
}

/// What `upper_record` makes of a [`Record`].
#[derive(Serialize, Deserialize, PartialEq, Debug)]
struct Upper {
    id: u32,
    text: String,
}

/// The record's text in upper case, with its id.
#[worker]
fn upper_record(record: Record) -> Upper {
    upper_of(&record)
}

/// [`upper_record`] on a borrowed record, as sequential Rust and rayon call it.
fn upper_of(record: &Record) -> Upper {
    Upper {
        id: record.id,
        text: record.text.to_uppercase(),
    }
}

/// The length of a string in bytes.
#[worker]
fn str_len(s: String) -> u64 {
    len_of(&s)
}

/// [`str_len`] on a borrowed string, as sequential Rust and rayon call it
/// (a `&String`: the type `map_beside_rayon` lends).
#[allow(clippy::ptr_arg)]
fn len_of(s: &String) -> u64 {
    s.len() as u64
}

#[multiproc::entry]
fn main() -> ExitCode {
    let result = match std::env::var(ROLE).as_deref() {
        Ok("echo") => echo_child(),
        Ok("fanout") => fanout_child(),
        Ok("peak-map") => peak_map_child(),
        _ => run(),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("compare bench: {e}");
            ExitCode::FAILURE
        }
    }
}

// ---- sizes ------------------------------------------------------------------

struct Sizes {
    quick: bool,
    primes: u64,
    map: u64,
    imap: u64,
    growth: [u64; 4],
    apply_calls: usize,
    ping_pongs: usize,
    payload: usize,
    records: usize,
    strings: usize,
    futures: u64,
    rounds: usize,
    slow_rounds: usize,
}

impl Sizes {
    fn new() -> Sizes {
        let quick = std::env::var_os("MULTIPROC_BENCH_QUICK").is_some_and(|v| v != "0");
        let d = if quick { 10 } else { 1 };
        Sizes {
            quick,
            primes: 3_000_000 / d,
            map: 10_000_000 / d,
            imap: 10_000_000 / d,
            growth: [1_000, 10_000, 100_000, 1_000_000].map(|s| s * 10 / d),
            apply_calls: 10_000 / d as usize,
            ping_pongs: 50_000 / d as usize,
            payload: 64 << 20,
            records: 200_000 / d as usize,
            strings: 1_000_000 / d as usize,
            futures: 20_000 / d,
            rounds: if quick { 3 } else { 7 },
            slow_rounds: if quick { 3 } else { 5 },
        }
    }
}

// ---- measuring --------------------------------------------------------------

/// Lets rayon's threads, which look for work for a while after a job,
/// go to sleep before the next contender is timed: otherwise they take
/// the CPU from the start of its first measurement.
fn settle() {
    std::thread::sleep(Duration::from_millis(20));
}

fn seconds<T>(f: impl FnOnce() -> T) -> f64 {
    let t = Instant::now();
    black_box(f());
    t.elapsed().as_secs_f64()
}

/// CPU time of the calling thread, in seconds (`CLOCK_THREAD_CPUTIME_ID`):
/// how much of a `map` the caller's own encoding and decoding take.
fn thread_cpu() -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec for the call.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    ts.tv_sec as f64 + ts.tv_nsec as f64 * 1e-9
}

fn median(xs: &[f64]) -> f64 {
    let mut v = xs.to_vec();
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

fn progress(what: &str) {
    eprintln!("compare: {what}");
}

/// The Python side of one workload: median seconds, the item count, and
/// what the script says of how it measured (e.g. which array type it sent).
struct PyResult {
    median: f64,
    items: f64,
    note: Option<String>,
}

struct Python {
    program: String,
    version: Option<String>,
    quick: bool,
}

impl Python {
    fn new(quick: bool) -> Python {
        let program = std::env::var("PYTHON").unwrap_or_else(|_| "python3".to_owned());
        let version = Command::new(&program)
            .arg("--version")
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| {
                String::from_utf8_lossy(&o.stdout)
                    .trim()
                    .trim_start_matches("Python ")
                    .to_owned()
            });
        Python {
            program,
            version,
            quick,
        }
    }

    /// Runs the script for one workload; `None` without Python or on failure.
    fn run(&self, name: &str) -> Option<PyResult> {
        self.version.as_ref()?;
        progress(&format!("python {name}"));
        let mut cmd = Command::new(&self.program);
        cmd.arg(SCRIPT).arg(format!("--only={name}"));
        if self.quick {
            cmd.arg("--quick");
        }
        let out = match cmd.stderr(Stdio::inherit()).output() {
            Ok(out) if out.status.success() => out,
            Ok(out) => {
                eprintln!(
                    "compare: the python script failed on {name}: {}",
                    out.status
                );
                return None;
            }
            Err(e) => {
                eprintln!("compare: cannot run the python script: {e}");
                return None;
            }
        };
        let json: serde_json::Value = serde_json::from_slice(&out.stdout)
            .map_err(|e| eprintln!("compare: bad JSON from the python script: {e}"))
            .ok()?;
        let entry = &json["results"][name];
        let secs: Vec<f64> = entry["seconds"]
            .as_array()?
            .iter()
            .filter_map(serde_json::Value::as_f64)
            .collect();
        Some(PyResult {
            median: median(&secs),
            items: entry["items"].as_f64()?,
            note: entry["note"].as_str().map(str::to_owned),
        })
    }
}

// ---- formatting -------------------------------------------------------------

fn fmt_time(s: f64) -> String {
    if s >= 1.0 {
        format!("{s:.2} s")
    } else if s >= 1e-3 {
        format!("{:.2} ms", s * 1e3)
    } else if s >= 1e-6 {
        format!("{:.1} µs", s * 1e6)
    } else {
        format!("{:.1} ns", s * 1e9)
    }
}

fn fmt_rate(per_s: f64) -> String {
    if per_s >= 1e6 {
        format!("{:.1} M/s", per_s / 1e6)
    } else {
        format!("{:.0} k/s", per_s / 1e3)
    }
}

fn fmt_count(n: f64) -> String {
    if n >= 1e6 {
        format!("{}M", n / 1e6)
    } else if n >= 1e3 {
        format!("{}k", n / 1e3)
    } else {
        format!("{n}")
    }
}

fn mib(bytes: f64) -> String {
    format!("{:.1} MiB", bytes / f64::from(1 << 20))
}

/// A duration that may be negative (a difference of two measurements).
fn fmt_signed(s: f64) -> String {
    if s < 0.0 {
        format!("−{}", fmt_time(-s))
    } else {
        fmt_time(s)
    }
}

fn gib_per_s(bytes: f64, seconds: f64) -> f64 {
    bytes / f64::from(1 << 30) / seconds
}

fn mark(ok: bool) -> &'static str {
    if ok { "✓" } else { "✗" }
}

const NO_PY: &str = "— (no python3)";

struct Row {
    workload: String,
    sequential: String,
    rayon: String,
    multiproc: String,
    python: String,
    ratio: String,
    target: String,
    ok: String,
}

// ---- the run ----------------------------------------------------------------

fn run() -> Result<(), BoxError> {
    let sizes = Sizes::new();
    let python = Python::new(sizes.quick);
    let load_before = loadavg();
    let started = Instant::now();
    let threads = rayon::ThreadPoolBuilder::new()
        .num_threads(WORKERS)
        .build()?;
    let pool = Pool::new(WORKERS)?;
    pool.apply(inc, 0)?; // warm

    let only = std::env::var("MULTIPROC_BENCH_ONLY").ok();
    let want = |name: &str| {
        only.as_deref()
            .is_none_or(|o| o.split(',').any(|w| w == name))
    };
    let mut rows = Vec::new();
    // Memory first, while the workers are fresh and idle.
    let idle_rss = idle_worker_rss();
    if want("primes") {
        rows.push(primes(&sizes, &python, &pool, &threads)?);
    }
    if want("apply") {
        rows.push(apply(&sizes, &python, &pool)?);
    }
    let mut growth_row = None;
    if want("map") {
        let (map_row, from_vec, growth) = map_and_growth(&sizes, &python, &pool, &threads)?;
        rows.push(map_row);
        rows.push(from_vec);
        growth_row = Some(growth);
    }
    if want("imap") {
        rows.push(imap(&sizes, &python, &pool)?);
    }
    if want("start") {
        rows.push(start(&python)?);
    }
    if want("bytes") {
        rows.extend(payload(&sizes, &python, &pool)?);
    }
    let typed = TypedPayloads {
        f64: want("f64"),
        f64rt: want("f64rt"),
        record64: want("record64"),
    };
    if typed.f64 || typed.f64rt || typed.record64 {
        rows.extend(typed_payloads(&sizes, &python, &pool, &typed)?);
    }
    if want("records") {
        rows.push(records(&sizes, &python, &pool, &threads)?);
    }
    if want("strings") {
        rows.push(strings(&sizes, &python, &pool, &threads)?);
    }
    if want("shared") {
        rows.push(shared_read(&sizes, &pool)?);
    }
    if want("queue") {
        rows.push(queue(&sizes, &python)?);
    }
    if want("futures") {
        rows.push(futures(&sizes, &python, &pool)?);
    }
    rows.extend(growth_row.into_iter().flatten());
    drop(pool);
    if want("memory") {
        rows.push(memory(&sizes, &python, idle_rss)?);
    }

    let elapsed = started.elapsed().as_secs_f64();
    let load_after = loadavg();
    print_report(&sizes, &python, &rows, elapsed, &load_before, &load_after);
    Ok(())
}

fn print_report(
    sizes: &Sizes,
    python: &Python,
    rows: &[Row],
    elapsed: f64,
    load_before: &str,
    load_after: &str,
) {
    let mut out = String::new();
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let _ = writeln!(
        out,
        "multiproc compare bench{} — {cpus} CPUs ({}), {WORKERS} workers, python {}; \
         load average {load_before} before, {load_after} after; {:.0} s",
        if sizes.quick {
            " (QUICK: sizes ÷ 10)"
        } else {
            ""
        },
        cpu_model(),
        python.version.as_deref().unwrap_or("not found"),
        elapsed,
    );
    let _ = writeln!(out);
    let _ = writeln!(
        out,
        "| workload | sequential / floor | rayon | multiproc | Python | ratio | target | |"
    );
    let _ = writeln!(out, "|---|---|---|---|---|---|---|---|");
    for r in rows {
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} | {} | {} |",
            r.workload, r.sequential, r.rayon, r.multiproc, r.python, r.ratio, r.target, r.ok
        );
    }
    print!("{out}");
}

fn primes(
    sizes: &Sizes,
    python: &Python,
    pool: &Pool,
    threads: &rayon::ThreadPool,
) -> Result<Row, BoxError> {
    let n = sizes.primes;
    progress(&format!("primes below {n}"));
    let (mut seq, mut ray, mut mp) = (Vec::new(), Vec::new(), Vec::new());
    let (mut counts, mut caller) = (Vec::new(), Vec::new());
    for _ in 0..sizes.slow_rounds {
        seq.push(seconds(|| {
            counts.push((0..black_box(n)).filter(|&k| is_prime(k)).count());
        }));
        ray.push(seconds(|| {
            counts.push(threads.install(|| {
                (0..black_box(n))
                    .into_par_iter()
                    .filter(|&k| is_prime(k))
                    .count()
            }));
        }));
        settle();
        let mut r = Ok(());
        let cpu = thread_cpu();
        mp.push(seconds(|| match pool.map(is_prime, 0..black_box(n)) {
            Ok(flags) => counts.push(flags.iter().filter(|&&p| p).count()),
            Err(e) => r = Err(e),
        }));
        caller.push(thread_cpu() - cpu);
        r?;
    }
    if counts.windows(2).any(|w| w[0] != w[1]) {
        return Err(format!("the prime counts differ: {counts:?}").into());
    }
    let py = python.run("primes");
    let (seq, ray, mp) = (median(&seq), median(&ray), median(&mp));
    let ratio = ray / mp;
    Ok(Row {
        workload: format!("CPU-bound: count primes below {}", fmt_count(n as f64)),
        sequential: fmt_time(seq),
        rayon: fmt_time(ray),
        multiproc: format!(
            "{} (caller thread CPU {})",
            fmt_time(mp),
            fmt_time(median(&caller))
        ),
        python: py.as_ref().map_or(NO_PY.to_owned(), |p| fmt_time(p.median)),
        ratio: format!(
            "{ratio:.3}× rayon throughput{}",
            py.as_ref()
                .map_or(String::new(), |p| format!("; {:.1}× Python", p.median / mp))
        ),
        target: "≥ 0.97× rayon".to_owned(),
        ok: mark(ratio >= 0.97).to_owned(),
    })
}

/// The far end of the ping-pong floor: echoes 8-byte messages on the socket
/// it was given as stdin until EOF.
fn echo_child() -> Result<(), BoxError> {
    let mut s = role_socket()?;
    let mut msg = [0u8; 8];
    while next_message(&mut s, &mut msg)? {
        s.write_all(&msg)?;
    }
    Ok(())
}

/// In a role child: the socket it was given as stdin.
fn role_socket() -> Result<UnixStream, BoxError> {
    let fd: OwnedFd = std::io::stdin().as_fd().try_clone_to_owned()?;
    Ok(UnixStream::from(fd))
}

/// In a role child: reads the next message into `msg`; `false` at EOF.
fn next_message(s: &mut UnixStream, msg: &mut [u8]) -> Result<bool, BoxError> {
    match s.read_exact(msg) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// The bench binary re-run in a role (`MULTIPROC_BENCH_ROLE`), with one
/// end of a `UnixStream::pair` as its stdin and the other here.
struct RoleChild {
    child: std::process::Child,
    stream: UnixStream,
}

impl RoleChild {
    fn start(role: &str, envs: &[(&str, &str)]) -> Result<RoleChild, BoxError> {
        let (mine, theirs) = UnixStream::pair()?;
        let child = Command::new(std::env::current_exe()?)
            .env(ROLE, role)
            .envs(envs.iter().copied())
            .stdin(Stdio::from(OwnedFd::from(theirs)))
            .stdout(Stdio::null())
            .spawn()?;
        Ok(RoleChild {
            child,
            stream: mine,
        })
    }

    /// Closes the socket (the child's EOF) and waits for the child.
    fn stop(self) -> Result<(), BoxError> {
        let RoleChild { mut child, stream } = self;
        drop(stream);
        child.wait()?;
        Ok(())
    }
}

/// A child process echoing 8-byte messages over a `UnixStream::pair`.
struct Echo(RoleChild);

impl Echo {
    fn start() -> Result<Echo, BoxError> {
        RoleChild::start("echo", &[]).map(Echo)
    }

    /// Seconds for `n` ping-pongs.
    fn ping_pongs(&mut self, n: usize) -> Result<f64, BoxError> {
        let mut msg = [0u8; 8];
        let t = Instant::now();
        let stream = &mut self.0.stream;
        for i in 0..n as u64 {
            stream.write_all(&i.to_le_bytes())?;
            stream.read_exact(&mut msg)?;
            if u64::from_le_bytes(msg) != i {
                return Err("the echo child answered out of step".into());
            }
        }
        Ok(t.elapsed().as_secs_f64())
    }

    fn stop(self) -> Result<(), BoxError> {
        self.0.stop()
    }
}

/// The far end of the fan-out floor: for each `(first, count)` message on
/// the socket it was given as stdin, writes `first + i + 1` for each `i` in
/// `0..count` at item `first + i` of the shared memory named by
/// `MULTIPROC_BENCH_SHM`, and answers one byte; until EOF.
fn fanout_child() -> Result<(), BoxError> {
    let mut s = role_socket()?;
    let shm = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(std::env::var("MULTIPROC_BENCH_SHM")?)?;
    let items = Shm::map(&shm)?;
    let mut msg = [0u8; 16];
    while next_message(&mut s, &mut msg)? {
        let first = u64::from_le_bytes(msg[..8].try_into()?);
        let count = u64::from_le_bytes(msg[8..].try_into()?);
        let end = first
            .checked_add(count)
            .filter(|&e| e as usize <= items.len);
        let Some(end) = end else {
            return Err("fan-out message out of bounds".into());
        };
        // SAFETY: the parent reads these items only after the answer below,
        // and gives each child its own items.
        let out = unsafe { items.slice_mut(first as usize, end as usize) };
        for (x, v) in (first..end).zip(out) {
            *v = x + 1;
        }
        s.write_all(&[1])?;
    }
    Ok(())
}

/// A shared mapping of `u64` items (a memfd in the parent, the same file
/// opened through `/proc` in the children).
struct Shm {
    ptr: *mut u64,
    len: usize,
}

impl Shm {
    fn map(file: &std::fs::File) -> Result<Shm, BoxError> {
        use std::os::fd::AsRawFd;
        let bytes = usize::try_from(file.metadata()?.len())?;
        // SAFETY: a fresh shared mapping of the whole file; checked below.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                bytes,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                file.as_raw_fd(),
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error().into());
        }
        Ok(Shm {
            ptr: ptr.cast(),
            len: bytes / 8,
        })
    }

    /// # Safety
    ///
    /// No other process may write items `a..b` meanwhile.
    unsafe fn slice(&self, a: usize, b: usize) -> &[u64] {
        assert!(a <= b && b <= self.len);
        // SAFETY: in bounds (asserted); the caller rules out writers.
        unsafe { std::slice::from_raw_parts(self.ptr.add(a), b - a) }
    }

    /// # Safety
    ///
    /// No other process may read or write items `a..b` meanwhile.
    #[allow(clippy::mut_from_ref)]
    unsafe fn slice_mut(&self, a: usize, b: usize) -> &mut [u64] {
        assert!(a <= b && b <= self.len);
        // SAFETY: in bounds (asserted); the caller rules out other users.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.add(a), b - a) }
    }
}

impl Drop for Shm {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `map`, unmapped once.
        unsafe { libc::munmap(self.ptr.cast(), self.len * 8) };
    }
}

/// The floor of a `map` over two processes: one message to each (its half
/// of the items), the results written by them into shared memory, where
/// they stay. No batching, no pipelining, no framing, no failure handling,
/// and no `Vec` to return (copying the results into a fresh one, on one
/// thread, took the 10 M size from 0.3 to 3 ns per item): what is left is
/// two wake-ups each way and the children's writes.
struct Fanout {
    children: Vec<RoleChild>,
    shm: Shm,
    _file: std::fs::File,
}

/// A fresh memfd for the fan-out floor, which its children open through
/// `/proc`: Linux only.
#[cfg(target_os = "linux")]
fn fanout_file() -> Result<std::fs::File, BoxError> {
    use std::os::fd::FromRawFd;
    // SAFETY: a fresh descriptor owned by the `File` at once (checked).
    let fd = unsafe { libc::memfd_create(c"multiproc-bench-fanout".as_ptr(), 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error().into());
    }
    // SAFETY: `fd` is ours and open.
    Ok(unsafe { std::fs::File::from_raw_fd(fd) })
}

#[cfg(not(target_os = "linux"))]
fn fanout_file() -> Result<std::fs::File, BoxError> {
    Err("the fan-out floor needs Linux (memfd, /proc)".into())
}

impl Fanout {
    fn start(max_items: u64) -> Result<Fanout, BoxError> {
        use std::os::fd::AsRawFd;
        let file = fanout_file()?;
        file.set_len(max_items * 8)?;
        let shm = Shm::map(&file)?;
        let path = format!("/proc/{}/fd/{}", std::process::id(), file.as_raw_fd());
        let mut children = Vec::new();
        for _ in 0..WORKERS {
            children.push(RoleChild::start(
                "fanout",
                &[("MULTIPROC_BENCH_SHM", &path)],
            )?);
        }
        Ok(Fanout {
            children,
            shm,
            _file: file,
        })
    }

    /// `x + 1` for `0..n`, through the children; returns the last result.
    fn map(&mut self, n: u64) -> Result<Option<u64>, BoxError> {
        if n as usize > self.shm.len {
            return Err("fan-out floor: too many items".into());
        }
        let k = self.children.len() as u64;
        let part = |i: u64| (n * i / k, n * (i + 1) / k);
        for (i, c) in self.children.iter_mut().enumerate() {
            let (a, b) = part(i as u64);
            let mut msg = [0u8; 16];
            msg[..8].copy_from_slice(&a.to_le_bytes());
            msg[8..].copy_from_slice(&(b - a).to_le_bytes());
            c.stream.write_all(&msg)?;
        }
        for c in &mut self.children {
            let mut answer = [0u8; 1];
            c.stream.read_exact(&mut answer)?;
        }
        // SAFETY: every child answered: they are done with their items, and
        // write them again only after the next message.
        Ok(unsafe { self.shm.slice(0, n as usize) }.last().copied())
    }

    fn stop(self) -> Result<(), BoxError> {
        self.children.into_iter().try_for_each(RoleChild::stop)
    }
}

fn apply(sizes: &Sizes, python: &Python, pool: &Pool) -> Result<Row, BoxError> {
    progress("apply round trip vs socketpair ping-pong");
    let mut echo = Echo::start()?;
    echo.ping_pongs(1000)?; // warm
    let (mut floor, mut mp) = (Vec::new(), Vec::new());
    for _ in 0..sizes.rounds {
        floor.push(echo.ping_pongs(sizes.ping_pongs)? / sizes.ping_pongs as f64);
        let t = Instant::now();
        for i in 0..sizes.apply_calls as u64 {
            black_box(pool.apply(inc, black_box(i))?);
        }
        mp.push(t.elapsed().as_secs_f64() / sizes.apply_calls as f64);
    }
    echo.stop()?;
    let py = python.run("apply");
    let (floor, mp) = (median(&floor), median(&mp));
    let ratio = mp / floor;
    Ok(Row {
        workload: "`apply` round trip, one tiny task at a time".to_owned(),
        sequential: format!("socketpair ping-pong {}", fmt_time(floor)),
        rayon: "—".to_owned(),
        multiproc: fmt_time(mp),
        python: py
            .as_ref()
            .map_or(NO_PY.to_owned(), |p| fmt_time(p.median / p.items)),
        ratio: format!(
            "{ratio:.2}× floor{}",
            py.as_ref().map_or(String::new(), |p| format!(
                "; {:.1}× Python's speed",
                p.median / p.items / mp
            ))
        ),
        target: "≤ 1.5× floor".to_owned(),
        ok: mark(ratio <= 1.5).to_owned(),
    })
}

/// `map(x + 1)` over 10 M `u64` (with sequential and rayon beside it), the
/// same over a `Vec` of them (a range's arguments do not travel: the
/// workers count them out; a `Vec`'s are sent), and the cost growth of the
/// map from 10 k to 10 M items.
fn map_and_growth(
    sizes: &Sizes,
    python: &Python,
    pool: &Pool,
    threads: &rayon::ThreadPool,
) -> Result<(Row, Row, [Row; 2]), BoxError> {
    progress("map(x + 1) and its cost growth");
    let n = sizes.map;
    let (mut seq, mut ray) = (Vec::new(), Vec::new());
    let mut growth: Vec<Vec<f64>> = vec![Vec::new(); sizes.growth.len()];
    let mut floor: Vec<Vec<f64>> = vec![Vec::new(); sizes.growth.len()];
    let mut quick: Vec<Vec<f64>> = vec![Vec::new(); sizes.growth.len()];
    let mut quick_refused = None;
    let mut fanout = Fanout::start(sizes.growth.iter().copied().max().unwrap_or(0))?;
    let mut caller = Vec::new();
    let input: Vec<u64> = (0..n).collect();
    let mut from_vec = Vec::new();
    for _ in 0..sizes.slow_rounds {
        seq.push(seconds(|| {
            (0..black_box(n)).map(*inc).collect::<Vec<u64>>()
        }));
        ray.push(seconds(|| {
            threads.install(|| {
                (0..black_box(n))
                    .into_par_iter()
                    .map(*inc)
                    .collect::<Vec<u64>>()
            })
        }));
        settle();
        for (i, &size) in sizes.growth.iter().enumerate() {
            let cpu = thread_cpu();
            let t = Instant::now();
            let out = pool.map(inc, 0..black_box(size))?;
            growth[i].push(t.elapsed().as_secs_f64());
            if size == n {
                caller.push(thread_cpu() - cpu);
            }
            if out.len() as u64 != size || out.last() != Some(&size) {
                return Err("map(x + 1) returned wrong results".into());
            }
            drop(black_box(out));
        }
        // The floor, in the same order and conditions: after the same
        // 160 MB of sequential and rayon writes, and a settle.
        settle();
        for (i, &size) in sizes.growth.iter().enumerate() {
            let t = Instant::now();
            let last = fanout.map(black_box(size))?;
            floor[i].push(t.elapsed().as_secs_f64());
            if last != Some(size) {
                return Err("the fan-out floor returned wrong results".into());
            }
        }
        // The pool's sizes again with idle CPUs kept quick to wake (the
        // `WakeLatency` opt-in, machine-wide while it is held), in the
        // floor's conditions: not the target's, an extra row.
        match WakeLatency::limit(Duration::ZERO) {
            Ok(held) => {
                settle();
                for (i, &size) in sizes.growth.iter().enumerate() {
                    let t = Instant::now();
                    let out = pool.map(inc, 0..black_box(size))?;
                    quick[i].push(t.elapsed().as_secs_f64());
                    if out.len() as u64 != size || out.last() != Some(&size) {
                        return Err("map(x + 1) returned wrong results".into());
                    }
                }
                drop(held);
            }
            Err(e) => quick_refused = Some(e.to_string()),
        }
        let t = Instant::now();
        let out = pool.map(inc, input.iter().copied())?;
        from_vec.push(t.elapsed().as_secs_f64());
        if out.len() as u64 != n || out.last() != Some(&n) {
            return Err("map(x + 1) over a Vec returned wrong results".into());
        }
    }
    fanout.stop()?;
    let py = python.run("map");
    let medians: Vec<f64> = growth.iter().map(|g| median(g)).collect();
    let mp = medians[sizes.growth.iter().position(|&s| s == n).unwrap_or(3)];
    let mp_rate = n as f64 / mp;
    let (ratio_text, ok) = match &py {
        Some(p) => {
            let ratio = mp_rate / (p.items / p.median);
            (format!("{ratio:.2}× Python per item"), mark(ratio >= 10.0))
        }
        None => ("—".to_owned(), "?"),
    };
    let map_row = Row {
        workload: format!("`map(x + 1)` over {} u64", fmt_count(n as f64)),
        sequential: fmt_time(median(&seq)),
        rayon: fmt_time(median(&ray)),
        multiproc: format!(
            "{} ({}; caller thread CPU {})",
            fmt_time(mp),
            fmt_rate(mp_rate),
            fmt_time(median(&caller))
        ),
        python: py.as_ref().map_or(NO_PY.to_owned(), |p| {
            format!(
                "{} items: {} ({})",
                fmt_count(p.items),
                fmt_time(p.median),
                fmt_rate(p.items / p.median)
            )
        }),
        ratio: ratio_text,
        target: "≥ 10× Python per item".to_owned(),
        ok: ok.to_owned(),
    };

    let vec_time = median(&from_vec);
    let vec_ratio = py
        .as_ref()
        .map(|p| n as f64 / vec_time / (p.items / p.median));
    let vec_row = Row {
        workload: format!(
            "`map(x + 1)` over a `Vec` of {} u64 (its arguments are sent; a range's are not)",
            fmt_count(n as f64)
        ),
        sequential: "—".to_owned(),
        rayon: "—".to_owned(),
        multiproc: format!("{} ({})", fmt_time(vec_time), fmt_rate(n as f64 / vec_time)),
        python: "—".to_owned(),
        ratio: vec_ratio.map_or("—".to_owned(), |r| format!("{r:.2}× Python per item")),
        target: "the `map` target, with its arguments sent".to_owned(),
        ok: vec_ratio.map_or("?", |r| mark(r >= 10.0)).to_owned(),
    };

    // Time per item at each size, and the fixed cost of a map: the time at
    // the second size less that many items at the largest size's time per
    // item.
    let (small, large) = (sizes.growth[1], sizes.growth[sizes.growth.len() - 1]);
    let growth_of = |times: &[Vec<f64>]| {
        let medians: Vec<f64> = times.iter().map(|t| median(t)).collect();
        let text = medians
            .iter()
            .zip(&sizes.growth)
            .map(|(t, &s)| fmt_time(t / s as f64))
            .collect::<Vec<_>>()
            .join(", ");
        let fixed = medians[1] - small as f64 * medians[medians.len() - 1] / large as f64;
        (text, fixed)
    };
    let (per_item, fixed) = growth_of(&growth);
    let (floor_per_item, floor_fixed) = growth_of(&floor);
    // A difference of two medians: on a busy machine the floor's can come
    // out at zero or below (its 10 M items slower per item than its 100 k),
    // and then there is nothing to be 1.5× of: not judged.
    let judge = |fixed: f64| {
        if floor_fixed <= 0.0 {
            return (
                format!(
                    "fixed cost {}; the floor's {} is not positive in this run \
                     (within its noise): not judged",
                    fmt_signed(fixed),
                    fmt_signed(floor_fixed)
                ),
                "?",
            );
        }
        (
            format!(
                "fixed cost {} = {:.2}× the floor's {}",
                fmt_signed(fixed),
                fixed / floor_fixed,
                fmt_signed(floor_fixed)
            ),
            mark(fixed <= 1.5 * floor_fixed),
        )
    };
    let fixed_rule = format!(
        "fixed cost = time at {} − {} × time per item at {}",
        fmt_count(small as f64),
        fmt_count(small as f64),
        fmt_count(large as f64)
    );
    let (ratio, ok) = judge(fixed);
    let growth_row = Row {
        workload: format!(
            "cost growth: `map(x + 1)` at {} ({fixed_rule})",
            sizes
                .growth
                .iter()
                .map(|&s| fmt_count(s as f64))
                .collect::<Vec<_>>()
                .join(", ")
        ),
        sequential: format!(
            "fan-out floor (2 processes, one message each, results left in shared memory): \
             {floor_per_item} per item; fixed cost {}",
            fmt_signed(floor_fixed)
        ),
        rayon: "—".to_owned(),
        multiproc: format!("{per_item} per item; fixed cost {}", fmt_signed(fixed)),
        python: "—".to_owned(),
        ratio,
        target: "fixed cost ≤ 1.5× the floor's".to_owned(),
        ok: ok.to_owned(),
    };
    let (quick_per_item, quick_ratio, quick_ok) = match &quick_refused {
        Some(why) => (format!("not measured: {why}"), "—".to_owned(), "?"),
        None => {
            let (per_item, fixed) = growth_of(&quick);
            let (ratio, ok) = judge(fixed);
            (
                format!("{per_item} per item; fixed cost {}", fmt_signed(fixed)),
                ratio,
                ok,
            )
        }
    };
    let quick_row = Row {
        workload: "cost growth, the same sizes with idle CPUs kept quick to wake \
                   (`WakeLatency::limit(0)`, an opt-in; measured after the floor)"
            .to_owned(),
        sequential: "—".to_owned(),
        rayon: "—".to_owned(),
        multiproc: quick_per_item,
        python: "—".to_owned(),
        ratio: quick_ratio,
        target: "the cost-growth target, with the opt-in".to_owned(),
        ok: quick_ok.to_owned(),
    };
    Ok((map_row, vec_row, [growth_row, quick_row]))
}

fn imap(sizes: &Sizes, python: &Python, pool: &Pool) -> Result<Row, BoxError> {
    let n = sizes.imap;
    progress(&format!("imap over an unsized iterator of {n} items"));
    let mut mp = Vec::new();
    for _ in 0..sizes.slow_rounds {
        let t = Instant::now();
        let mut sum = 0u64;
        // `filter` hides the length: the unsized, adaptive-batch path.
        for r in pool.imap(inc, (0..black_box(n)).filter(|_| true)) {
            sum = sum.wrapping_add(r?);
        }
        mp.push(t.elapsed().as_secs_f64());
        if sum != n * (n + 1) / 2 {
            return Err("imap(x + 1) returned wrong results".into());
        }
    }
    let py = python.run("imap");
    let mp = median(&mp);
    let rate = n as f64 / mp;
    let py_ratio = py.as_ref().map(|p| rate / (p.items / p.median));
    Ok(Row {
        workload: format!(
            "`imap` over an unsized iterator of {} tiny tasks",
            fmt_count(n as f64)
        ),
        sequential: "—".to_owned(),
        rayon: "—".to_owned(),
        multiproc: format!("{} ({})", fmt_time(mp), fmt_rate(rate)),
        python: py.as_ref().map_or(NO_PY.to_owned(), |p| {
            format!(
                "{} items: {} ({})",
                fmt_count(p.items),
                fmt_time(p.median),
                fmt_rate(p.items / p.median)
            )
        }),
        ratio: py_ratio.map_or("—".to_owned(), |r| format!("{r:.0}× Python per item")),
        target: "≥ 20 M/s, ≥ 100× Python".to_owned(),
        ok: mark(rate >= 20e6 && py_ratio.is_none_or(|r| r >= 100.0)).to_owned(),
    })
}

fn start(python: &Python) -> Result<Row, BoxError> {
    progress("pool of 2: start, one task, shut down");
    // Spawning forks this process: its size at the time matters.
    let parent_rss = status_field("self", "VmRSS").unwrap_or(0);
    let (mut mp, mut phases) = (Vec::new(), [Vec::new(), Vec::new(), Vec::new()]);
    for _ in 0..10 {
        let t0 = Instant::now();
        let pool = Pool::new(WORKERS)?;
        let t1 = Instant::now();
        black_box(pool.apply(inc, black_box(1))?);
        let t2 = Instant::now();
        drop(pool);
        let t3 = Instant::now();
        mp.push((t3 - t0).as_secs_f64());
        for (phase, d) in phases.iter_mut().zip([t1 - t0, t2 - t1, t3 - t2]) {
            phase.push(d.as_secs_f64());
        }
    }
    let py = python.run("start");
    let mp = median(&mp);
    let py_ratio = py.as_ref().map(|p| mp / p.median);
    Ok(Row {
        workload: "pool of 2: start, one task, shut down".to_owned(),
        sequential: "—".to_owned(),
        rayon: "—".to_owned(),
        multiproc: format!(
            "{} (start {}, task {}, shut down {}; parent RSS {})",
            fmt_time(mp),
            fmt_time(median(&phases[0])),
            fmt_time(median(&phases[1])),
            fmt_time(median(&phases[2])),
            mib(parent_rss as f64),
        ),
        python: py.as_ref().map_or(NO_PY.to_owned(), |p| {
            format!("{} (fork context)", fmt_time(p.median))
        }),
        ratio: py_ratio.map_or("—".to_owned(), |r| format!("{r:.2}× Python")),
        target: "≤ 0.5× Python; ≤ 3 ms".to_owned(),
        ok: mark(mp <= 3e-3 && py_ratio.is_none_or(|r| r <= 0.5)).to_owned(),
    })
}

/// The 64 MiB payload: a `Vec<u8>` round trip through the socket, and the
/// same `Vec` handed over as a [`SharedBytes`] (the copy into shared memory
/// is timed with it) that the worker reads in full. Two rows, against the
/// same Python figure (a `bytes` round trip).
fn payload(sizes: &Sizes, python: &Python, pool: &Pool) -> Result<Vec<Row>, BoxError> {
    let len = sizes.payload;
    progress(&format!(
        "{} Vec<u8> and SharedBytes argument round trips",
        mib(len as f64)
    ));
    let bytes: Vec<u8> = (0..len).map(|i| i as u8).collect();
    let expected_sum: u64 = bytes.iter().map(|&b| u64::from(b)).sum();
    let (mut mp, mut shared, mut copy_in) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..sizes.slow_rounds {
        let arg = bytes.clone();
        let t = Instant::now();
        let back = pool.apply(echo_bytes, arg)?;
        mp.push(t.elapsed().as_secs_f64());
        if back != bytes {
            return Err("the payload came back changed".into());
        }
        drop(back);

        let arg = bytes.clone();
        let t = Instant::now();
        let buffer = SharedBytes::from_vec(arg)?;
        let made = t.elapsed().as_secs_f64();
        let sum = pool.apply(sum_shared, buffer)?;
        shared.push(t.elapsed().as_secs_f64());
        copy_in.push(made);
        if sum != expected_sum {
            return Err("the worker read other bytes than were shared".into());
        }
    }
    let py = python.run("bytes");
    let shared_row = shared_payload_row(len, &py, median(&shared), median(&copy_in));
    let mp = median(&mp);
    let gib_s = len as f64 / f64::from(1 << 30) / mp;
    let py_ratio = py.as_ref().map(|p| p.median / mp);
    let vec_row = Row {
        workload: format!("{} `Vec<u8>` argument, round trip", mib(len as f64)),
        sequential: "—".to_owned(),
        rayon: "—".to_owned(),
        multiproc: format!("{} ({gib_s:.2} GiB/s)", fmt_time(mp)),
        python: py.as_ref().map_or(NO_PY.to_owned(), |p| {
            format!(
                "{} ({:.2} GiB/s)",
                fmt_time(p.median),
                p.items / f64::from(1 << 30) / p.median
            )
        }),
        ratio: py_ratio.map_or("—".to_owned(), |r| format!("{r:.1}× Python")),
        target: "≥ 10× Python; ≥ 2 GiB/s".to_owned(),
        ok: mark(gib_s >= 2.0 && py_ratio.is_none_or(|r| r >= 10.0)).to_owned(),
    };
    Ok(vec![vec_row, shared_row])
}

/// The `SharedBytes` row: the time from a `Vec<u8>` in the parent to the
/// worker's answer — the one copy into shared memory, a descriptor to the
/// worker, which maps the buffer and reads every byte, and its sum back.
/// Not a round trip of the bytes (a `SharedBytes` cannot be returned); the
/// parent still holds them, in the same shared buffer.
fn shared_payload_row(len: usize, py: &Option<PyResult>, mp: f64, copy_in: f64) -> Row {
    let gib_s = len as f64 / f64::from(1 << 30) / mp;
    let py_ratio = py.as_ref().map(|p| p.median / mp);
    Row {
        workload: format!(
            "{} `SharedBytes::from_vec` argument, read in full by the worker \
             (one way: a handle cannot be returned)",
            mib(len as f64)
        ),
        sequential: "—".to_owned(),
        rayon: "—".to_owned(),
        multiproc: format!(
            "{} ({gib_s:.2} GiB/s; of which {} copying into shared memory)",
            fmt_time(mp),
            fmt_time(copy_in),
        ),
        python: py.as_ref().map_or(NO_PY.to_owned(), |p| {
            format!(
                "{} ({:.2} GiB/s, `bytes`)",
                fmt_time(p.median),
                p.items / f64::from(1 << 30) / p.median
            )
        }),
        ratio: py_ratio.map_or("—".to_owned(), |r| format!("{r:.1}× Python")),
        target: "the 64 MiB target, with `SharedBytes`".to_owned(),
        ok: mark(gib_s >= 2.0 && py_ratio.is_none_or(|r| r >= 10.0)).to_owned(),
    }
}

/// Which of the typed-payload rows to measure (they share their rounds).
struct TypedPayloads {
    f64: bool,
    f64rt: bool,
    record64: bool,
}

/// `pool.apply(worker, arg)` on a copy of `arg` made before the clock
/// starts; its time goes to `times`.
fn time_apply<W: Worker>(
    pool: &Pool,
    worker: W,
    arg: &W::Args,
    times: &mut Vec<f64>,
) -> Result<W::Output, BoxError>
where
    W::Args: Clone,
{
    let arg = arg.clone();
    let t = Instant::now();
    let out = pool.apply(worker, arg)?;
    times.push(t.elapsed().as_secs_f64());
    Ok(out)
}

/// The payloads users send, 64 MiB each: a `Vec<f64>` one way (the worker
/// sums it) against a `Vec<u8>` one way (the worker returns its length);
/// the `Vec<f64>` there and back (doubled by the worker) and a [`Series`]
/// (a name and its floats) there and back, against a `Vec<u8>` round trip.
/// Each round times, in turn, every contender a wanted row needs; the
/// arguments are cloned before the clock starts and the answers checked
/// after it stops.
fn typed_payloads(
    sizes: &Sizes,
    python: &Python,
    pool: &Pool,
    which: &TypedPayloads,
) -> Result<Vec<Row>, BoxError> {
    let len = sizes.payload;
    progress(&format!(
        "{} Vec<f64>, Series and Vec<u8> arguments, one way and round trips",
        mib(len as f64)
    ));
    let bytes: Vec<u8> = (0..len).map(|i| i as u8).collect();
    let bytes_sum = word_sum(&bytes);
    let values: Vec<f64> = (0..len / 8).map(|i| i as f64).collect();
    // Integers below 2^53: the sum is exact in any order.
    let expected_sum: f64 = values.iter().sum();
    let name = format!("{:-<64}", "series");
    let series = Series {
        values: values[..(len - name.len()) / 8].to_vec(),
        name,
    };
    let (mut u8_one, mut f64_one) = (Vec::new(), Vec::new());
    let (mut u8_rt, mut f64_rt, mut series_rt) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..sizes.slow_rounds {
        if which.f64 {
            let n = time_apply(pool, sum_bytes, &bytes, &mut u8_one)?;
            if n != bytes_sum {
                return Err("the worker summed other bytes than were sent".into());
            }
            let sum = time_apply(pool, sum_f64, &values, &mut f64_one)?;
            if sum != expected_sum {
                return Err("the worker summed other floats than were sent".into());
            }
        }
        if which.f64rt || which.record64 {
            let back = time_apply(pool, echo_bytes, &bytes, &mut u8_rt)?;
            if back != bytes {
                return Err("the payload came back changed".into());
            }
        }
        if which.f64rt {
            let back = time_apply(pool, double_f64, &values, &mut f64_rt)?;
            if back.len() != values.len() || back.iter().zip(&values).any(|(b, v)| *b != 2.0 * v) {
                return Err("the floats came back other than doubled".into());
            }
        }
        if which.record64 {
            let back = time_apply(pool, echo_series, &series, &mut series_rt)?;
            if back != series {
                return Err("the series came back changed".into());
            }
        }
    }
    let size = mib(len as f64);
    let timed = |s: f64| format!("{} ({:.2} GiB/s)", fmt_time(s), gib_per_s(len as f64, s));
    let mut rows = Vec::new();
    if which.f64 {
        let py = python.run("f64");
        let (u8_one, mp) = (median(&u8_one), median(&f64_one));
        let ratio = u8_one / mp;
        let (py_ratio, py_ok) = python_payload_part(&py, mp);
        rows.push(Row {
            workload: format!(
                "{size} `Vec<f64>` argument, one way (the worker sums it; a `Vec<u8>` \
                 one way, the worker summing its bytes, in the same rounds)"
            ),
            sequential: "—".to_owned(),
            rayon: "—".to_owned(),
            multiproc: format!("{}; `Vec<u8>` one way {}", timed(mp), timed(u8_one)),
            python: python_payload_cell(&py, len),
            ratio: format!("{ratio:.2}× the `Vec<u8>` one way{py_ratio}"),
            target: "≥ 0.9× the `Vec<u8>` one way; ≥ 10× Python (numpy)".to_owned(),
            ok: format!("{}; Python: {py_ok}", mark(ratio >= 0.9)),
        });
    }
    let u8_rt = median(&u8_rt);
    if which.f64rt {
        let py = python.run("f64rt");
        let mp = median(&f64_rt);
        let ratio = u8_rt / mp;
        let (py_ratio, py_ok) = python_payload_part(&py, mp);
        rows.push(Row {
            workload: format!(
                "{size} `Vec<f64>` argument, round trip (the worker doubles each value; \
                 the `Vec<u8>` round trip in the same rounds)"
            ),
            sequential: "—".to_owned(),
            rayon: "—".to_owned(),
            multiproc: format!("{}; `Vec<u8>` round trip {}", timed(mp), timed(u8_rt)),
            python: python_payload_cell(&py, len),
            ratio: format!("{ratio:.2}× the `Vec<u8>` round trip{py_ratio}"),
            target: "≥ 0.9× the `Vec<u8>` round trip; ≥ 10× Python (numpy)".to_owned(),
            ok: format!("{}; Python: {py_ok}", mark(ratio >= 0.9)),
        });
    }
    if which.record64 {
        let py = python.run("record64");
        let mp = median(&series_rt);
        let ratio = u8_rt / mp;
        let (py_ratio, _) = python_payload_part(&py, mp);
        rows.push(Row {
            workload: format!(
                "{size} `struct {{ name: String, values: Vec<f64> }}` argument, round trip \
                 (the `Vec<u8>` round trip in the same rounds)"
            ),
            sequential: "—".to_owned(),
            rayon: "—".to_owned(),
            multiproc: format!("{}; `Vec<u8>` round trip {}", timed(mp), timed(u8_rt)),
            python: python_payload_cell(&py, len),
            ratio: format!("{ratio:.2}× the `Vec<u8>` round trip{py_ratio}"),
            target: "≥ 0.8× the `Vec<u8>` round trip".to_owned(),
            ok: mark(ratio >= 0.8).to_owned(),
        });
    }
    Ok(rows)
}

/// The Python cell of a float-payload row: its time, throughput, and the
/// array type the script sent.
fn python_payload_cell(py: &Option<PyResult>, len: usize) -> String {
    py.as_ref().map_or(NO_PY.to_owned(), |p| {
        format!(
            "{} ({:.2} GiB/s; {})",
            fmt_time(p.median),
            gib_per_s(len as f64, p.median),
            p.note.as_deref().unwrap_or("array type not reported")
        )
    })
}

/// The "× Python" part of a float-payload row: the text appended to its
/// ratio, and the judgement of ≥ 10× — made only against numpy arrays, the
/// target's Python.
fn python_payload_part(py: &Option<PyResult>, mp: f64) -> (String, String) {
    match py {
        None => (String::new(), "? (no python3)".to_owned()),
        Some(p) => {
            let ratio = p.median / mp;
            let judged = if p.note.as_deref() == Some("numpy") {
                mark(ratio >= 10.0).to_owned()
            } else {
                "? (not measured against numpy)".to_owned()
            };
            (format!("; {ratio:.1}× Python"), judged)
        }
    }
}

/// Deterministic text of `shortest..=longest` lowercase letters for item
/// `i` (the Python script makes the same strings).
fn text_of(i: usize, shortest: usize, longest: usize) -> String {
    const ALPHABET: &str =
        "abcdefghijklmnopqrstuvwxyzabcdefghijklmnopqrstuvwxyzabcdefghijklmnopqrstuvwxyz";
    let len = shortest + (i as u64 * 2_654_435_761 % (longest - shortest + 1) as u64) as usize;
    let start = i % 26;
    ALPHABET[start..start + len].to_owned()
}

/// Medians of a `map` of `worker` beside sequential Rust and rayon on 2
/// threads, in turn in each round, on the same terms: each is handed a
/// clone of `input` made before its clock starts and consumes it, item by
/// item, as the `#[worker]` takes its arguments (sequential Rust with
/// `into_iter`, rayon with `into_par_iter`, calling `by_ref` on each owned
/// item and dropping it; the pool with `map`). Each round checks that the
/// three agree. Returns the medians of
/// sequential, rayon and the pool, and of the caller thread's CPU time
/// during the pool's `map`.
fn map_beside_rayon<W>(
    rounds: usize,
    pool: &Pool,
    threads: &rayon::ThreadPool,
    worker: W,
    by_ref: fn(&W::Args) -> W::Output,
    input: &[W::Args],
) -> Result<[f64; 4], BoxError>
where
    W: multiproc::Worker,
    W::Args: Clone + Sync,
    W::Output: PartialEq + Send,
{
    let (mut seq, mut ray, mut mp, mut caller) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for _ in 0..rounds {
        // Every side is handed its own copy of the input, made before the
        // clock starts, and consumes it as the worker does (`pool.map`
        // takes its items by value, and freeing them is part of the work).
        let owned = input.to_vec();
        let t = Instant::now();
        let expected: Vec<W::Output> = owned.into_iter().map(|a| by_ref(&a)).collect();
        seq.push(t.elapsed().as_secs_f64());

        let owned = input.to_vec();
        let t = Instant::now();
        let out: Vec<W::Output> =
            threads.install(|| owned.into_par_iter().map(|a| by_ref(&a)).collect());
        ray.push(t.elapsed().as_secs_f64());
        if out != expected {
            return Err(
                format!("rayon's map of {} differs from the sequential one", W::NAME).into(),
            );
        }
        drop(out);
        settle();

        let arg = input.to_vec();
        let cpu = thread_cpu();
        let t = Instant::now();
        let out = pool.map(worker, arg)?;
        mp.push(t.elapsed().as_secs_f64());
        caller.push(thread_cpu() - cpu);
        if out != expected {
            return Err(format!(
                "the pool's map of {} differs from the sequential one",
                W::NAME
            )
            .into());
        }
    }
    Ok([median(&seq), median(&ray), median(&mp), median(&caller)])
}

/// A row of a `map` beside rayon, with its target ratio to rayon.
fn beside_rayon_row(
    workload: String,
    n: usize,
    medians: [f64; 4],
    py: &Option<PyResult>,
    target: f64,
) -> Row {
    let [seq, ray, mp, caller] = medians;
    let ratio = ray / mp;
    Row {
        workload,
        sequential: fmt_time(seq),
        rayon: fmt_time(ray),
        multiproc: format!(
            "{} ({}; caller thread CPU {})",
            fmt_time(mp),
            fmt_rate(n as f64 / mp),
            fmt_time(caller)
        ),
        python: py.as_ref().map_or(NO_PY.to_owned(), |p| {
            format!(
                "{} items: {} ({})",
                fmt_count(p.items),
                fmt_time(p.median),
                fmt_rate(p.items / p.median)
            )
        }),
        ratio: format!(
            "{ratio:.2}× rayon throughput{}",
            py.as_ref().map_or(String::new(), |p| format!(
                "; {:.1}× Python per item",
                p.median / p.items / (mp / n as f64)
            ))
        ),
        target: format!("≥ {target}× rayon"),
        ok: mark(ratio >= target).to_owned(),
    }
}

/// `map` over records `{ id: u32, text: String }` (text of 20 to 40
/// letters), each to its text in upper case and its id.
fn records(
    sizes: &Sizes,
    python: &Python,
    pool: &Pool,
    threads: &rayon::ThreadPool,
) -> Result<Row, BoxError> {
    let n = sizes.records;
    progress(&format!("map over {n} records"));
    let input: Vec<Record> = (0..n)
        .map(|i| Record {
            id: i as u32,
            text: text_of(i, 20, 40),
        })
        .collect();
    let medians = map_beside_rayon(
        sizes.slow_rounds,
        pool,
        threads,
        upper_record,
        upper_of,
        &input,
    )?;
    let py = python.run("records");
    Ok(beside_rayon_row(
        format!(
            "`map` over {} records `{{ id: u32, text: String }}` (20–40 letters) \
             → `{{ id, text.to_uppercase() }}`",
            fmt_count(n as f64)
        ),
        n,
        medians,
        &py,
        0.95,
    ))
}

/// `map(len)` over short strings (8 to 24 letters).
fn strings(
    sizes: &Sizes,
    python: &Python,
    pool: &Pool,
    threads: &rayon::ThreadPool,
) -> Result<Row, BoxError> {
    let n = sizes.strings;
    progress(&format!("map(len) over {n} strings"));
    let input: Vec<String> = (0..n).map(|i| text_of(i, 8, 24)).collect();
    let medians = map_beside_rayon(sizes.slow_rounds, pool, threads, str_len, len_of, &input)?;
    let py = python.run("strings");
    Ok(beside_rayon_row(
        format!(
            "`map(len)` over {} `String`s (8–24 letters) → `u64`",
            fmt_count(n as f64)
        ),
        n,
        medians,
        &py,
        0.85,
    ))
}

/// Drains `n` messages from the queue; returns their sum.
#[worker]
fn drain_queue(q: multiproc::Queue<u64>, n: u64) -> u64 {
    (0..n)
        .map(|_| q.get().expect("the producer puts n messages"))
        .sum()
}

fn queue(sizes: &Sizes, python: &Python) -> Result<Row, BoxError> {
    // The same workload as the Python side: one consumer process, the
    // parent puts n integers, the round ends when the consumer has them all.
    let n = 200_000 / if sizes.quick { 10 } else { 1 };
    progress(&format!("Queue 1 → 1, {n} u64 messages"));
    let mut times = Vec::new();
    for _ in 0..sizes.slow_rounds {
        let q: multiproc::Queue<u64> = multiproc::Queue::unbounded()?;
        let t = Instant::now();
        let consumer = multiproc::Process::spawn(drain_queue, (q.clone(), n))?;
        for i in 0..n {
            q.put(&i)?;
        }
        let sum = consumer.join()?;
        times.push(t.elapsed().as_secs_f64());
        assert_eq!(sum, n * (n - 1) / 2);
    }
    let ours = median(&times);
    let rate = n as f64 / ours;
    let py = python.run("queue");
    let py_ratio = py.as_ref().map(|p| rate / (p.items / p.median));
    Ok(Row {
        workload: "Queue, 1 producer → 1 consumer, u64 messages".to_owned(),
        sequential: "—".to_owned(),
        rayon: "—".to_owned(),
        multiproc: format!(
            "{} items: {} ({})",
            fmt_count(n as f64),
            fmt_time(ours),
            fmt_rate(rate)
        ),
        python: py.as_ref().map_or(NO_PY.to_owned(), |p| {
            format!(
                "{} items: {} ({})",
                fmt_count(p.items),
                fmt_time(p.median),
                fmt_rate(p.items / p.median)
            )
        }),
        ratio: py_ratio.map_or("—".to_owned(), |r| format!("{r:.1}× Python")),
        target: "≥ 4× Python".to_owned(),
        ok: py_ratio.map_or("—", |r| mark(r >= 4.0)).to_owned(),
    })
}

fn futures(sizes: &Sizes, python: &Python, pool: &Pool) -> Result<Row, BoxError> {
    let n = sizes.futures;
    progress(&format!("submit + as_completed, {n} tiny tasks"));
    let mut mp = Vec::new();
    for _ in 0..sizes.rounds {
        let t = Instant::now();
        let tasks: Vec<_> = (0..n).map(|i| pool.submit(inc, i)).collect();
        let mut sum = 0u64;
        for (_, r) in as_completed(tasks) {
            sum += r?;
        }
        mp.push(t.elapsed().as_secs_f64());
        if sum != n * (n + 1) / 2 {
            return Err("submit(x + 1) returned wrong results".into());
        }
    }
    let py = python.run("futures");
    let mp = median(&mp);
    let py_ratio = py.as_ref().map(|p| p.median / p.items / (mp / n as f64));
    Ok(Row {
        workload: format!(
            "`submit` + `as_completed`, {} tiny tasks",
            fmt_count(n as f64)
        ),
        sequential: "—".to_owned(),
        rayon: "—".to_owned(),
        multiproc: format!("{} ({})", fmt_time(mp), fmt_rate(n as f64 / mp)),
        python: py.as_ref().map_or(NO_PY.to_owned(), |p| {
            format!(
                "{} ({}, ProcessPoolExecutor)",
                fmt_time(p.median),
                fmt_rate(p.items / p.median)
            )
        }),
        ratio: py_ratio.map_or("—".to_owned(), |r| format!("{r:.1}× Python")),
        target: "≥ 10× Python".to_owned(),
        ok: mark(py_ratio.is_none_or(|r| r >= 10.0)).to_owned(),
    })
}

// ---- memory -----------------------------------------------------------------

/// A `kB` field of `/proc/<pid>/status`, in bytes.
fn status_field(pid: &str, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status.lines().find_map(|line| {
        let rest = line.strip_prefix(field)?.strip_prefix(':')?;
        let kb: u64 = rest.trim().trim_end_matches("kB").trim().parse().ok()?;
        Some(kb * 1024)
    })
}

/// Resident memory of every child process of this one (the pool's workers).
fn idle_worker_rss() -> Vec<u64> {
    let me = std::process::id().to_string();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut rss = Vec::new();
    for entry in dir.flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .filter(|s| s.bytes().all(|b| b.is_ascii_digit()))
        else {
            continue;
        };
        let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) else {
            continue;
        };
        let is_child = status
            .lines()
            .any(|l| l.strip_prefix("PPid:").is_some_and(|p| p.trim() == me));
        if is_child {
            if let Some(r) = status_field(pid, "VmRSS") {
                rss.push(r);
            }
        }
    }
    rss
}

/// In a fresh process: maps `x + 1` over a `Vec` of 10 M `u64` and prints
/// the peak resident memory (`VmHWM`) and the resident memory before.
fn peak_map_child() -> Result<(), BoxError> {
    let n: u64 = std::env::var("MULTIPROC_BENCH_N")?.parse()?;
    let pool = Pool::new(WORKERS)?;
    let input: Vec<u64> = (0..n).collect();
    let before = status_field("self", "VmRSS").unwrap_or(0);
    let out = pool.map(inc, input)?;
    black_box(&out);
    let peak = status_field("self", "VmHWM").ok_or("no VmHWM in /proc/self/status")?;
    println!("{peak} {before}");
    Ok(())
}

fn memory(sizes: &Sizes, python: &Python, idle: Vec<u64>) -> Result<Row, BoxError> {
    progress("peak memory of map over 10M u64");
    let n = sizes.map;
    let out = Command::new(std::env::current_exe()?)
        .env(ROLE, "peak-map")
        .env("MULTIPROC_BENCH_N", n.to_string())
        .stderr(Stdio::inherit())
        .output()?;
    if !out.status.success() {
        return Err(format!("the peak-map process failed: {}", out.status).into());
    }
    let text = String::from_utf8(out.stdout)?;
    let mut fields = text.split_whitespace().map(str::parse::<u64>);
    let (Some(Ok(peak)), Some(Ok(before))) = (fields.next(), fields.next()) else {
        return Err(format!("unexpected output from the peak-map process: {text:?}").into());
    };
    let py = python.run("rss");
    let worker = idle.iter().copied().max().unwrap_or(0);
    let limit = 2 * (2 * 8 * n); // 2 × (input + output)
    let ok = !idle.is_empty() && worker <= 4 << 20 && peak <= limit;
    Ok(Row {
        workload: format!(
            "memory: idle worker RSS; parent peak RSS of `map` over {} u64",
            fmt_count(n as f64)
        ),
        sequential: "—".to_owned(),
        rayon: "—".to_owned(),
        multiproc: format!(
            "worker {}; parent peak {} ({} before the map)",
            idle.iter()
                .map(|&r| mib(r as f64))
                .collect::<Vec<_>>()
                .join(" / "),
            mib(peak as f64),
            mib(before as f64),
        ),
        python: py.as_ref().map_or(NO_PY.to_owned(), |p| {
            format!("worker {} (fork context)", mib(p.items))
        }),
        ratio: format!(
            "peak = {:.2}× (input + output)",
            peak as f64 / (2 * 8 * n) as f64
        ),
        target: "worker ≤ 4 MiB; peak ≤ 2× (input + output)".to_owned(),
        ok: mark(ok).to_owned(),
    })
}

// ---- the machine ------------------------------------------------------------

fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("model name"))
                .map(|l| l.trim_start_matches([' ', '\t', ':']).to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".to_owned())
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

// ---- a large shared array -----------------------------------------------------

/// Sums `xs` in eight lanes, which the compiler vectorises: the one summing
/// loop of the `shared` row, in the caller and in the worker alike, fast
/// enough that memory is what it waits for.
#[inline(never)]
fn sum_lanes(xs: &[f64]) -> f64 {
    let mut lanes = [0.0f64; 8];
    let mut blocks = xs.chunks_exact(8);
    for block in &mut blocks {
        for (lane, x) in lanes.iter_mut().zip(block) {
            *lane += x;
        }
    }
    lanes.iter().chain(blocks.remainder()).sum()
}

/// Sums a shared array through private, cache-sized copies of its chunks.
#[worker]
fn sum_shared_array(values: multiproc::SharedArray<f64>) -> f64 {
    let mut sum = 0.0;
    values.read_chunks(.., |_, chunk| sum += sum_lanes(chunk));
    sum
}

/// A 1 GiB `SharedArray<f64>` (÷ 10 when quick), made once: each round
/// times the worker's `apply` that reads it all — the handle sent, the
/// array mapped, every element read, the mapping dropped, the sum back —
/// against the caller summing a `Vec<f64>` of the same values with the same
/// loop. The values are integers below 2^53, so every order of summing
/// gives the same, exact, sum. At the quick size the caller's `Vec` stays
/// in the cache between rounds, and the ratio says little.
fn shared_read(sizes: &Sizes, pool: &Pool) -> Result<Row, BoxError> {
    let bytes = (1usize << 30) / if sizes.quick { 10 } else { 1 };
    let len = bytes / 8;
    progress(&format!(
        "a {} SharedArray<f64> read by a worker",
        mib(bytes as f64)
    ));
    let values: Vec<f64> = (0..len).map(|i| (i % 1000) as f64).collect();
    let expected: f64 = values.iter().sum();
    let array = multiproc::SharedArray::from_slice(&values)?;
    let (mut caller, mut worker) = (Vec::new(), Vec::new());
    for _ in 0..sizes.rounds {
        let t = Instant::now();
        let sum = sum_lanes(black_box(&values));
        caller.push(t.elapsed().as_secs_f64());
        if sum != expected {
            return Err("the caller's sum is wrong".into());
        }
        let sum = time_apply(pool, sum_shared_array, &array, &mut worker)?;
        if sum != expected {
            return Err("the worker read other values than the array holds".into());
        }
    }
    let (caller, worker) = (median(&caller), median(&worker));
    let ratio = worker / caller;
    let timed = |s: f64| format!("{} ({:.2} GiB/s)", fmt_time(s), gib_per_s(bytes as f64, s));
    Ok(Row {
        workload: format!(
            "{} `SharedArray<f64>`, made once, summed by a worker (`read_chunks`; \
             the `apply` timed) vs the caller summing a `Vec<f64>` of the same values \
             with the same 8-lane loop",
            mib(bytes as f64)
        ),
        sequential: format!("in-process: {}", timed(caller)),
        rayon: "—".to_owned(),
        multiproc: timed(worker),
        python: "—".to_owned(),
        ratio: format!("{ratio:.2}× in-process"),
        target: "≤ 1.2× in-process".to_owned(),
        ok: mark(ratio <= 1.2).to_owned(),
    })
}
