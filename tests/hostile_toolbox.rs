//! Hostile peers of the toolbox, through real processes: a pipe peer that
//! forges frames, a Manager client that forges requests, and a worker that
//! scribbles on a queue's shared header. Each must cost this process an
//! error — never a panic, a hang past a deadline, or memory it did not
//! receive — and leave everything else working.
//!
//! Linux only: the attackers find their targets in `/proc/self/maps`, and
//! the checks read `/proc/self/statm`.
#![cfg(target_os = "linux")]

use std::io::{Read, Write};
use std::os::fd::FromRawFd;
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use multiproc::{ErrorKind, Manager, PipeEnd, Process, Queue, SharedMap, pipe};
use rand::{RngExt, SeedableRng};

/// Time a test may take before its watchdog aborts the test binary.
const WATCHDOG: Duration = Duration::from_secs(30);

/// How late past its timeout a timed call may return: scheduling on a
/// busy machine, not a wait.
const MARGIN: Duration = Duration::from_millis(750);

/// Aborts the test binary, naming the test, if the test is not done within
/// [`WATCHDOG`]: a hang fails loudly instead of stalling the suite.
struct Watchdog(mpsc::Sender<()>);

fn watchdog(test: &'static str) -> Watchdog {
    let (tx, rx) = mpsc::channel::<()>();
    std::thread::spawn(move || {
        if let Err(mpsc::RecvTimeoutError::Timeout) = rx.recv_timeout(WATCHDOG) {
            eprintln!("{test}: still running after {WATCHDOG:?}; a peer made it hang");
            std::process::abort();
        }
    });
    Watchdog(tx)
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        let _ = self.0.send(());
    }
}

/// Runs `f` on a thread; its value, or `None` if it took longer than
/// `limit` (the thread is left behind, stuck).
fn within<T: Send + 'static>(limit: Duration, f: impl FnOnce() -> T + Send + 'static) -> Option<T> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(limit).ok()
}

/// Resident memory of this process, in bytes.
fn rss() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").expect("read /proc/self/statm");
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .expect("resident pages in statm");
    // SAFETY: sysconf has no preconditions.
    pages * u64::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).expect("page size")
}

/// The descriptor a handle shows in its `Debug` output (`fd: N`).
fn debug_fd(handle: &impl std::fmt::Debug) -> i32 {
    let text = format!("{handle:?}");
    let at = text.find("fd: ").expect("the handle shows its descriptor") + 4;
    text[at..]
        .split(|c: char| !c.is_ascii_digit())
        .next()
        .and_then(|n| n.parse().ok())
        .expect("a descriptor number")
}

/// A socket of our own on the connection behind `handle`, which is
/// dropped: the test then speaks raw bytes where the handle would have
/// spoken frames.
fn raw_socket(handle: impl std::fmt::Debug) -> UnixStream {
    // SAFETY: dup of a descriptor that `handle` owns and keeps open here.
    let fd = unsafe { libc::dup(debug_fd(&handle)) };
    assert!(fd >= 0, "dup failed");
    drop(handle);
    // SAFETY: `fd` is a fresh descriptor of a Unix socket that nothing else
    // owns.
    unsafe { UnixStream::from_raw_fd(fd) }
}

fn frame(body: &[u8]) -> Vec<u8> {
    let mut out = (body.len() as u32).to_le_bytes().to_vec();
    out.extend_from_slice(body);
    out
}

// ---------------------------------------------------------------------------
// Pipe.
// ---------------------------------------------------------------------------

/// A forged pipe peer in its own process: writes `bytes` raw into its end,
/// says so on `ready`, holds the end open for `hold_ms`, then exits
/// (closing it).
#[multiproc::worker]
fn forge_pipe(
    end: PipeEnd<u64, Vec<u8>>,
    mut ready: PipeEnd<u8, u8>,
    bytes: Vec<u8>,
    hold_ms: u64,
) {
    let fd = debug_fd(&end);
    let mut written = 0;
    while written < bytes.len() {
        // SAFETY: writes from a live buffer to the socket `end` owns.
        let n = unsafe { libc::write(fd, bytes[written..].as_ptr().cast(), bytes.len() - written) };
        assert!(n > 0, "write failed");
        written += n as usize;
    }
    ready.send(&1).unwrap();
    std::thread::sleep(Duration::from_millis(hold_ms));
    drop(end);
}

#[multiproc::test]
fn a_forged_gigabyte_header_costs_what_arrived_and_the_deadline_holds() {
    let _w = watchdog("a_forged_gigabyte_header_costs_what_arrived_and_the_deadline_holds");
    let (mut mine, theirs) = pipe::<Vec<u8>, u64>().unwrap();
    let mut forged = (1u32 << 30).to_le_bytes().to_vec(); // the cap exactly
    forged.extend_from_slice(&[0xab; 10]);
    let (mut ready, theirs_ready) = pipe::<u8, u8>().unwrap();
    let peer = Process::spawn(forge_pipe, (theirs, theirs_ready, forged, 1500)).unwrap();
    assert_eq!(ready.recv().unwrap(), 1); // the forged bytes are in the socket
    let before = rss();
    let timeout = Duration::from_millis(300);
    let (got, took, mut mine) = within(timeout + Duration::from_secs(5), move || {
        let t = Instant::now();
        let got = mine.recv_timeout(timeout);
        (got, t.elapsed(), mine)
    })
    .expect("recv_timeout(300 ms) did not return within 5 s of its timeout");
    assert!(matches!(got, Ok(None)), "{got:?}");
    assert!(took >= timeout, "returned after {took:?}");
    assert!(took < timeout + MARGIN, "returned after {took:?}");
    let grew = rss().saturating_sub(before);
    assert!(
        grew < 64 << 20,
        "a forged 1 GiB header on 10 bytes grew RSS by {grew} bytes"
    );
    // The peer exits inside the frame: a protocol breach, not a clean end.
    peer.join().unwrap();
    let err = mine.recv().unwrap_err();
    assert!(err.is_protocol(), "{err}");
    assert!(err.to_string().contains("inside a frame"), "{err}");
    // And it stays broken rather than resynchronising on garbage.
    assert!(mine.recv().unwrap_err().is_protocol());
}

#[multiproc::test]
fn a_peer_that_stalls_inside_a_frame_cannot_hold_recv_timeout() {
    let _w = watchdog("a_peer_that_stalls_inside_a_frame_cannot_hold_recv_timeout");
    let (mine, theirs) = pipe::<u64, Vec<u8>>().unwrap();
    let mut raw = raw_socket(theirs);
    let message = vec![5u8; 100];
    let whole = frame(&postcard::to_stdvec(&message).unwrap());
    // Stalls after two header bytes, then after the header and some body.
    let mut mine = Some(mine);
    let mut sent = 0;
    for cut in [2, 4 + 30] {
        raw.write_all(&whole[sent..cut]).unwrap();
        sent = cut;
        let timeout = Duration::from_millis(250);
        let mut end = mine.take().unwrap();
        let (got, took, end) = within(timeout + Duration::from_secs(5), move || {
            let t = Instant::now();
            let got = end.recv_timeout(timeout);
            (got, t.elapsed(), end)
        })
        .expect("recv_timeout hung after part of a frame arrived");
        assert!(matches!(got, Ok(None)), "{got:?}");
        assert!(took < timeout + MARGIN, "returned after {took:?}");
        mine = Some(end);
    }
    // The rest arrives: the frame was kept, not lost.
    raw.write_all(&whole[sent..]).unwrap();
    let mut mine = mine.unwrap();
    assert_eq!(
        mine.recv_timeout(Duration::from_secs(5)).unwrap(),
        Some(message)
    );
}

#[multiproc::test]
fn truncation_garbage_and_over_cap_are_errors_of_their_own() {
    let _w = watchdog("truncation_garbage_and_over_cap_are_errors_of_their_own");
    // Closed inside a frame: a breach; closed between frames: the end.
    let (mut mine, theirs) = pipe::<u64, Vec<u8>>().unwrap();
    let mut raw = raw_socket(theirs);
    raw.write_all(&100u32.to_le_bytes()).unwrap();
    raw.write_all(&[1; 10]).unwrap();
    drop(raw);
    let err = mine.recv().unwrap_err();
    assert!(err.is_protocol(), "{err}");
    assert!(
        err.to_string().contains("after 14 of its 104 bytes"),
        "{err}"
    );
    let (mut mine, theirs) = pipe::<u64, Vec<u8>>().unwrap();
    drop(raw_socket(theirs));
    let err = mine.recv().unwrap_err();
    assert!(
        matches!(err.kind(), ErrorKind::Disconnected { what: "pipe" }),
        "{err}"
    );

    // Garbage in a well-formed frame: that message fails, the next works.
    let (mut mine, theirs) = pipe::<u64, Vec<u8>>().unwrap();
    let mut raw = raw_socket(theirs);
    raw.write_all(&frame(&[0xff, 0xff, 0xff])).unwrap();
    raw.write_all(&frame(&postcard::to_stdvec(&vec![1u8, 2]).unwrap()))
        .unwrap();
    let err = mine.recv().unwrap_err();
    assert!(
        matches!(err.kind(), ErrorKind::MessageCodec { encode: false, .. }),
        "{err}"
    );
    assert_eq!(mine.recv().unwrap(), vec![1, 2]);

    // Over the cap: refused from the header alone.
    let (mut mine, theirs) = pipe::<u64, Vec<u8>>().unwrap();
    let mut raw = raw_socket(theirs);
    raw.write_all(&u32::MAX.to_le_bytes()).unwrap();
    let err = mine.recv_timeout(Duration::from_secs(5)).unwrap_err();
    assert!(err.is_protocol(), "{err}");
    assert!(err.to_string().contains("over the cap"), "{err}");
}

// ---------------------------------------------------------------------------
// Manager.
// ---------------------------------------------------------------------------

#[multiproc::worker]
fn read_back(scores: SharedMap<String, Vec<u8>>, name: String) -> Option<usize> {
    scores.get(&name).unwrap().map(|v| v.len())
}

/// `true` once the broker closed `raw`'s connection (reads reach the end,
/// after whatever replies were on the way), within 5 s.
fn closed_by_broker(raw: &mut UnixStream) -> bool {
    raw.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut sink = [0u8; 4096];
    loop {
        match raw.read(&mut sink) {
            Ok(0) => return true,
            Ok(_) => {}
            Err(_) => return false,
        }
    }
}

#[multiproc::test]
fn forged_manager_clients_do_not_hold_up_the_others() {
    let _w = watchdog("forged_manager_clients_do_not_hold_up_the_others");
    let manager = Manager::new().unwrap();
    let map: SharedMap<String, Vec<u8>> = manager.map().unwrap();
    let big = vec![9u8; 1 << 20];
    map.insert(&"big".to_owned(), &big).unwrap();
    // Every use of the broker runs under a time limit, so that a broker
    // that hangs fails the test instead of stalling it.
    let map = std::sync::Arc::new(map);
    let check = |map: &std::sync::Arc<SharedMap<String, Vec<u8>>>, what: &str| {
        let map = map.clone();
        let ok = within(Duration::from_secs(5), move || {
            map.insert(&"k".to_owned(), &vec![1]).unwrap();
            map.get(&"big".to_owned()).unwrap().map(|v| v.len())
        });
        assert_eq!(ok, Some(Some(1 << 20)), "other handles hang after {what}");
    };
    let forge = |map: &std::sync::Arc<SharedMap<String, Vec<u8>>>| {
        let map = map.clone();
        within(Duration::from_secs(5), move || raw_socket((*map).clone()))
            .expect("connecting to the broker hangs")
    };

    // A client that stalls inside a request.
    let mut stalled = forge(&map);
    stalled.write_all(&100u32.to_le_bytes()).unwrap();
    stalled.write_all(&[1; 10]).unwrap();
    check(&map, "a stalled request");

    // A client that announces a 4 GiB request: closed, nothing allocated.
    let before = rss();
    let mut huge = forge(&map);
    huge.write_all(&u32::MAX.to_le_bytes()).unwrap();
    // The broker may have closed the connection already.
    let _ = huge.write_all(&[0; 64]);
    assert!(
        closed_by_broker(&mut huge),
        "the broker kept a 4 GiB request"
    );
    assert!(rss().saturating_sub(before) < 64 << 20);
    check(&map, "a 4 GiB header");

    // A client that sends a frame that is no request.
    let mut garbage = forge(&map);
    garbage.write_all(&frame(&[200, 1, 2, 3, 4])).unwrap();
    assert!(closed_by_broker(&mut garbage), "the broker kept garbage");
    check(&map, "garbage");

    // A client that asks for the 1 MiB map over and over and never reads
    // a reply: the broker must not block writing to it.
    let id: u32 = {
        let text = format!("{map:?}");
        let at = text.find("id: ").unwrap() + 4;
        text[at..]
            .split(|c: char| !c.is_ascii_digit())
            .next()
            .unwrap()
            .parse()
            .unwrap()
    };
    let mut greedy = forge(&map);
    // postcard: Request::Map (variant 3), the id, MapOp::Items (variant 5).
    let mut request = vec![3];
    request.extend(postcard::to_stdvec(&id).unwrap());
    request.push(5);
    let requests: Vec<u8> = (0..32).flat_map(|_| frame(&request)).collect();
    greedy.write_all(&requests).unwrap();
    std::thread::sleep(Duration::from_millis(200));
    check(&map, "a client that does not read its replies");

    // The broker survived all of them: a worker process still uses it.
    let handle = (*map).clone();
    let got = Process::spawn(read_back, (handle, "big".to_owned()))
        .unwrap()
        .join()
        .unwrap();
    assert_eq!(got, Some(1 << 20));
    drop((stalled, greedy));
}

// ---------------------------------------------------------------------------
// Queue.
// ---------------------------------------------------------------------------

/// The queue's header layout, as any process holding it can write it.
const HEAD: u64 = 256;
const TAIL: u64 = 264;
const COUNT: u64 = 272;
const MAX_ITEMS: u64 = 280;
const CLOSED: u64 = 296;
const RING_LEN: u64 = 304;
const WAIT_NOT_EMPTY: u64 = 312;
const RING: u64 = 512;
/// The header words from `HEAD` to the last waiter count.
const WORDS: std::ops::Range<u64> = 256..336;

/// A worker that corrupts the queue it was given: stores each `(offset,
/// word)` of `words` and each `(offset, byte)` of `bytes` straight into the
/// queue's shared memory. Returns how many queue mappings it found (one).
#[multiproc::worker]
fn scribble(q: Queue<u64>, words: Vec<(u64, u64)>, bytes: Vec<(u64, u8)>) -> usize {
    let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
    let found: Vec<(usize, usize)> = maps
        .lines()
        .filter(|l| l.contains("multiproc-queue"))
        .map(|l| {
            let range = l.split_whitespace().next().unwrap();
            let (a, b) = range.split_once('-').unwrap();
            (
                usize::from_str_radix(a, 16).unwrap(),
                usize::from_str_radix(b, 16).unwrap(),
            )
        })
        .collect();
    if let [(start, end)] = found[..] {
        for (offset, word) in words {
            let at = start + offset as usize;
            assert!(at + 8 <= end && at % 8 == 0);
            // SAFETY: an aligned word inside the queue's live shared
            // mapping, written atomically as the queue itself does.
            unsafe { AtomicU64::from_ptr(at as *mut u64) }.store(word, Ordering::Relaxed);
        }
        for (offset, byte) in bytes {
            let at = start + offset as usize;
            assert!(at < end);
            // SAFETY: a byte inside the queue's live shared mapping.
            unsafe { AtomicU8::from_ptr(at as *mut u8) }.store(byte, Ordering::Relaxed);
        }
    }
    drop(q);
    found.len()
}

fn corrupt(q: &Queue<u64>, words: Vec<(u64, u64)>, bytes: Vec<(u64, u8)>) {
    let found = Process::spawn(scribble, (q.clone(), words, bytes))
        .unwrap()
        .join()
        .unwrap();
    assert_eq!(found, 1, "the worker found {found} queue mappings");
}

/// A queue holding the messages 1, 2 and 3.
fn three() -> Queue<u64> {
    let q = Queue::with_buffer(0, 4096).unwrap();
    for i in 1..=3 {
        q.put(&i).unwrap();
    }
    q
}

/// `get_timeout` and `put_timeout` both fail with `Corrupted` naming
/// `field`, at once.
fn assert_corrupted(q: &Queue<u64>, field: &str) {
    let timeout = Duration::from_millis(200);
    let t = Instant::now();
    let err = q.get_timeout(timeout).unwrap_err();
    assert!(err.is_corrupted(), "{err}");
    assert!(err.to_string().contains(field), "{err}");
    let err = q.put_timeout(&4, timeout).unwrap_err();
    assert!(err.is_corrupted(), "{err}");
    assert!(err.to_string().contains(field), "{err}");
    assert!(t.elapsed() < 2 * timeout + MARGIN, "took {:?}", t.elapsed());
}

#[multiproc::test]
fn a_scribbled_queue_header_is_corrupted_not_a_panic() {
    let _w = watchdog("a_scribbled_queue_header_is_corrupted_not_a_panic");
    let q = three();
    corrupt(&q, vec![(RING_LEN, 0)], vec![]);
    assert_corrupted(&q, "RING_LEN");

    let q = three();
    corrupt(&q, vec![(HEAD, 100), (TAIL, 50)], vec![]);
    assert_corrupted(&q, "HEAD");

    // The first message's length prefix says 4 GiB.
    let q = three();
    let len = u32::MAX.to_le_bytes();
    corrupt(
        &q,
        vec![],
        (0..4).map(|i| (RING + i, len[i as usize])).collect(),
    );
    let before = rss();
    let err = q.get_timeout(Duration::from_millis(200)).unwrap_err();
    assert!(err.is_corrupted(), "{err}");
    assert!(err.to_string().contains("message length"), "{err}");
    assert!(rss().saturating_sub(before) < 64 << 20);

    // More messages than bytes, and a count with an empty ring.
    let q = three();
    corrupt(&q, vec![(COUNT, 1 << 40)], vec![]);
    assert_corrupted(&q, "COUNT");
    let q = three();
    corrupt(&q, vec![(HEAD, 0), (TAIL, 0), (COUNT, 5)], vec![]);
    assert_corrupted(&q, "COUNT");

    // Consistent words that say "full" and "empty": the timeouts hold.
    let q = three();
    corrupt(&q, vec![(MAX_ITEMS, 3)], vec![]);
    let t = Instant::now();
    assert!(!q.put_timeout(&4, Duration::from_millis(200)).unwrap());
    assert!(t.elapsed() < Duration::from_millis(200) + MARGIN);
    let q: Queue<u64> = Queue::with_buffer(0, 4096).unwrap();
    corrupt(&q, vec![(CLOSED, 0)], vec![]);
    let t = Instant::now();
    assert_eq!(q.get_timeout(Duration::from_millis(200)).unwrap(), None);
    assert!(t.elapsed() < Duration::from_millis(200) + MARGIN);

    // A fresh queue is unharmed, across processes.
    let fresh: Queue<u64> = Queue::unbounded().unwrap();
    fresh.put(&42).unwrap();
    let found = Process::spawn(scribble, (fresh.clone(), vec![], vec![]))
        .unwrap()
        .join()
        .unwrap();
    assert_eq!(found, 1);
    assert_eq!(fresh.get().unwrap(), 42);
}

#[multiproc::test]
fn random_scribbles_cost_an_error_at_most() {
    let _w = watchdog("random_scribbles_cost_an_error_at_most");
    let mut rng = rand::rngs::StdRng::seed_from_u64(0x5eed);
    for round in 0..24 {
        let q = three();
        let words: Vec<(u64, u64)> = (0..rng.random_range(1..5))
            .map(|_| {
                let at = WORDS.start + 8 * rng.random_range(0..(WORDS.end - WORDS.start) / 8);
                let word = match rng.random_range(0..3) {
                    0 => rng.random::<u64>(),
                    1 => rng.random_range(0..64),
                    _ => rng.random_range(0..5000),
                };
                (at, word)
            })
            .collect();
        let bytes: Vec<(u64, u8)> = (0..rng.random_range(0..8))
            .map(|_| (RING + rng.random_range(0..32), rng.random()))
            .collect();
        corrupt(&q, words.clone(), bytes.clone());
        let timeout = Duration::from_millis(50);
        for _ in 0..4 {
            let t = Instant::now();
            let got = q.get_timeout(timeout);
            let put = q.put_timeout(&7, timeout);
            let took = t.elapsed();
            assert!(
                took < 2 * timeout + MARGIN,
                "round {round} ({words:?}, {bytes:?}) took {took:?}"
            );
            for e in [got.err(), put.err()].into_iter().flatten() {
                assert!(
                    e.is_corrupted()
                        || matches!(
                            e.kind(),
                            ErrorKind::MessageCodec { .. } | ErrorKind::Disconnected { .. }
                        ),
                    "round {round} ({words:?}, {bytes:?}): {e}"
                );
            }
        }
        let _ = (q.len(), q.is_closed());
    }
    let fresh: Queue<u64> = Queue::bounded(4).unwrap();
    fresh.put(&1).unwrap();
    assert_eq!(fresh.get_timeout(Duration::from_secs(5)).unwrap(), Some(1));
}

/// A worker zeroes the count of sleepers that a `put` reads to decide
/// whether to wake anyone, while a consumer sleeps in an untimed `get`:
/// the put skips its wake-up, and the consumer still gets the message,
/// within one of its wait slices. (Before waits were sliced, it slept for
/// ever.)
#[multiproc::test]
fn a_zeroed_sleeper_count_cannot_strand_a_waiting_get() {
    let _w = watchdog("a_zeroed_sleeper_count_cannot_strand_a_waiting_get");
    let q: Queue<u64> = Queue::with_buffer(0, 4096).unwrap();
    let waiting = {
        let q = q.clone();
        std::thread::spawn(move || q.get())
    };
    // Let the consumer go to sleep first.
    std::thread::sleep(Duration::from_millis(200));
    corrupt(&q, vec![(WAIT_NOT_EMPTY, 0)], vec![]);
    let put = Instant::now();
    q.put(&7).unwrap();
    let got = within(Duration::from_secs(5), move || waiting.join().unwrap());
    let took = put.elapsed();
    assert_eq!(
        got.map(|r| r.unwrap()),
        Some(7),
        "the waiting get missed the message ({took:?})"
    );
    assert!(took < Duration::from_millis(100) + MARGIN, "took {took:?}");
}
