//! Failures inside workers: a panic fails only its item and names it; a
//! worker process that dies (abort, exit, SIGSEGV, SIGKILL) fails only the
//! item it was running, with pid and exit reason, and is replaced.

use multiproc::{ErrorKind, ExitReason, Pool, Worker, worker};

/// Returns `x`, but panics on `bad`.
#[worker]
fn panic_on(x: u64, bad: u64) -> u64 {
    assert!(x != bad, "item {x} is bad");
    x
}

/// How a worker process should die.
#[derive(serde::Serialize, serde::Deserialize, Clone, Copy, Debug)]
enum Death {
    Abort,
    Exit3,
    Segfault,
    SigKill,
}

/// Returns `2 * x`, but kills its own process on `bad`.
#[worker]
fn die_on(x: u64, bad: u64, how: Death) -> u64 {
    if x == bad {
        die(how);
    }
    2 * x
}

#[worker]
fn die_now(how: Death) -> u64 {
    die(how)
}

fn die(how: Death) -> ! {
    match how {
        Death::Abort => std::process::abort(),
        Death::Exit3 => std::process::exit(3),
        Death::Segfault => {
            // A write to an unmapped address: the kernel delivers SIGSEGV.
            // (std's stack-overflow handler sees a fault outside any guard
            // page, restores the default action, and the write faults again.)
            let unmapped = std::ptr::without_provenance_mut::<u8>(8);
            // SAFETY: deliberately invalid; this process is meant to die.
            unsafe { unmapped.write_volatile(1) };
            unreachable!("the write to address 8 did not fault")
        }
        Death::SigKill => {
            // SAFETY: getpid and kill have no memory-safety preconditions.
            unsafe { libc::kill(libc::getpid(), libc::SIGKILL) };
            unreachable!("SIGKILL did not kill")
        }
    }
}

#[worker]
fn pid_of(_item: u64) -> u32 {
    std::process::id()
}

#[multiproc::test]
fn panic_error_names_message_location_worker_and_item() {
    let pool = Pool::new(2).unwrap();
    let items: Vec<(u64, u64)> = (0..50).map(|x| (x, 17)).collect();
    let err = pool.map(panic_on, items).unwrap_err();
    assert!(err.is_panic(), "{err:?}");
    assert_eq!(err.panic_message(), Some("item 17 is bad"));
    assert_eq!(err.item_index(), Some(17));
    assert_eq!(err.worker_name(), Some(<panic_on as Worker>::NAME));
    assert_eq!(<panic_on as Worker>::NAME, "errors::panic_on");
    match err.kind() {
        ErrorKind::Panic {
            worker,
            index,
            message,
            location,
        } => {
            assert_eq!(worker, "errors::panic_on");
            assert_eq!(*index, Some(17));
            assert_eq!(message, "item 17 is bad");
            let location = location.as_deref().expect("a panic location");
            assert!(
                location.starts_with(&format!("{}:", file!())),
                "location {location:?} is not in {}",
                file!()
            );
        }
        other => panic!("expected a panic, got {other:?}"),
    }
    let text = err.to_string();
    for part in ["#17", "errors::panic_on", "item 17 is bad", file!()] {
        assert!(text.contains(part), "{text:?} lacks {part:?}");
    }
}

#[multiproc::test]
fn panic_fails_only_its_item() {
    let pool = Pool::new(2).unwrap();
    let items: Vec<(u64, u64)> = (0..100).map(|x| (x, 42)).collect();
    let results: Vec<_> = pool.imap(panic_on, items.clone()).chunk_size(16).collect();
    assert_eq!(results.len(), 100);
    for (i, r) in results.iter().enumerate() {
        if i == 42 {
            let err = r.as_ref().unwrap_err();
            assert!(err.is_panic(), "{err:?}");
            assert_eq!(err.item_index(), Some(42));
        } else {
            assert_eq!(*r.as_ref().unwrap(), i as u64);
        }
    }
    let mut unordered: Vec<_> = pool.imap_unordered(panic_on, items).collect();
    let failed: Vec<_> = unordered
        .iter()
        .filter_map(|r| r.as_ref().err())
        .map(|e| e.item_index())
        .collect();
    assert_eq!(failed, vec![Some(42)]);
    unordered.retain(Result::is_ok);
    assert_eq!(unordered.len(), 99);
}

#[multiproc::test]
fn panic_in_a_submitted_task() {
    let pool = Pool::new(1).unwrap();
    let before = pool.apply(pid_of, 0).unwrap();
    let err = pool.apply(panic_on, (3, 3)).unwrap_err();
    assert!(err.is_panic(), "{err:?}");
    assert_eq!(err.panic_message(), Some("item 3 is bad"));
    assert_eq!(err.item_index(), None);
    assert_eq!(pool.apply(panic_on, (4, 3)).unwrap(), 4);
    let failed = pool
        .imap(panic_on, (0..10).map(|x| (x, x - x % 3)))
        .filter(Result::is_err)
        .count();
    assert_eq!(failed, 4, "items 0, 3, 6, 9 panic");
    // Panics did not cost the worker its process.
    assert_eq!(pool.apply(pid_of, 0).unwrap(), before);
}

/// Checks one crash of `die_on`: exactly `bad` failed, as `reason`.
fn assert_only_item_died(results: &[multiproc::Result<u64>], bad: usize, reason: ExitReason) {
    for (i, r) in results.iter().enumerate() {
        if i == bad {
            let err = r.as_ref().unwrap_err();
            assert!(err.is_worker_died(), "item {i}: {err:?}");
            assert_eq!(err.item_index(), Some(bad as u64));
            assert_eq!(err.exit_reason(), Some(reason), "{err}");
            let pid = err.pid().expect("the dead worker's pid");
            assert_ne!(pid, std::process::id());
            assert_eq!(err.worker_name(), Some(<die_on as Worker>::NAME));
        } else {
            match r {
                Ok(v) => assert_eq!(*v, 2 * i as u64, "item {i}"),
                Err(e) => panic!("item {i} failed with the crash of item {bad}: {e}"),
            }
        }
    }
}

#[multiproc::test]
fn abort_in_a_batched_imap_fails_exactly_that_item() {
    let pool = Pool::new(2).unwrap();
    let items: Vec<(u64, u64, Death)> = (0..100).map(|x| (x, 37, Death::Abort)).collect();
    let results: Vec<_> = pool.imap(die_on, items).chunk_size(16).collect();
    assert_eq!(results.len(), 100);
    assert_only_item_died(&results, 37, ExitReason::Signal(libc::SIGABRT));
    // The pool replaced the worker and keeps working.
    let ok: Vec<u64> = pool
        .map(die_on, (0..50).map(|x| (x, 1000, Death::Abort)))
        .unwrap();
    assert_eq!(ok, (0..50).map(|x| 2 * x).collect::<Vec<_>>());
}

#[multiproc::test]
fn abort_in_a_batched_map_chunked_fails_with_that_item() {
    let pool = Pool::new(2).unwrap();
    let items: Vec<(u64, u64, Death)> = (0..100).map(|x| (x, 61, Death::Abort)).collect();
    let err = pool.map_chunked(die_on, items, 16).unwrap_err();
    assert!(err.is_worker_died(), "{err:?}");
    assert_eq!(err.item_index(), Some(61));
    assert_eq!(err.exit_reason(), Some(ExitReason::Signal(libc::SIGABRT)));
    assert!(err.pid().is_some());
    let text = err.to_string();
    assert!(text.contains("#61") && text.contains("SIGABRT"), "{text}");
    // The pool works afterwards, with the same chunking.
    let items: Vec<(u64, u64, Death)> = (0..100).map(|x| (x, 1000, Death::Abort)).collect();
    let ok = pool.map_chunked(die_on, items, 16).unwrap();
    assert_eq!(ok, (0..100).map(|x| 2 * x).collect::<Vec<_>>());
}

#[multiproc::test]
fn crash_in_imap_unordered_fails_exactly_that_item() {
    let pool = Pool::new(2).unwrap();
    let items: Vec<(u64, u64, Death)> = (0..100).map(|x| (x, 5, Death::Abort)).collect();
    let results: Vec<_> = pool.imap_unordered(die_on, items).chunk_size(16).collect();
    assert_eq!(results.len(), 100);
    let mut ok: Vec<u64> = results
        .iter()
        .filter_map(|r| r.as_ref().ok().copied())
        .collect();
    ok.sort_unstable();
    let expected: Vec<u64> = (0..100).filter(|&x| x != 5).map(|x| 2 * x).collect();
    assert_eq!(ok, expected);
    let errs: Vec<_> = results.iter().filter_map(|r| r.as_ref().err()).collect();
    assert_eq!(errs.len(), 1);
    assert!(errs[0].is_worker_died());
    assert_eq!(errs[0].item_index(), Some(5));
}

#[multiproc::test]
fn exit_code_is_reported() {
    let pool = Pool::new(2).unwrap();
    let items: Vec<(u64, u64, Death)> = (0..40).map(|x| (x, 9, Death::Exit3)).collect();
    let results: Vec<_> = pool.imap(die_on, items).chunk_size(8).collect();
    assert_only_item_died(&results, 9, ExitReason::Code(3));

    let err = pool.apply(die_now, Death::Exit3).unwrap_err();
    assert!(err.is_worker_died(), "{err:?}");
    assert_eq!(err.exit_reason(), Some(ExitReason::Code(3)));
    assert_eq!(err.item_index(), None);
    assert!(err.to_string().contains("exit code 3"), "{err}");
    assert_eq!(pool.apply(die_on, (4, 0, Death::Exit3)).unwrap(), 8);
}

#[multiproc::test]
fn segfault_is_reported() {
    let pool = Pool::new(2).unwrap();
    let items: Vec<(u64, u64, Death)> = (0..40).map(|x| (x, 30, Death::Segfault)).collect();
    let results: Vec<_> = pool.imap(die_on, items).chunk_size(8).collect();
    assert_only_item_died(&results, 30, ExitReason::Signal(libc::SIGSEGV));

    let err = pool.apply(die_now, Death::Segfault).unwrap_err();
    assert_eq!(err.exit_reason(), Some(ExitReason::Signal(libc::SIGSEGV)));
    assert!(err.to_string().contains("SIGSEGV"), "{err}");
    assert_eq!(pool.apply(die_on, (4, 0, Death::Segfault)).unwrap(), 8);
}

#[multiproc::test]
fn sigkill_is_reported() {
    let pool = Pool::new(2).unwrap();
    let items: Vec<(u64, u64, Death)> = (0..40).map(|x| (x, 0, Death::SigKill)).collect();
    let results: Vec<_> = pool.imap(die_on, items).chunk_size(8).collect();
    assert_only_item_died(&results, 0, ExitReason::Signal(libc::SIGKILL));

    let task = pool.submit(die_now, Death::SigKill);
    let err = task.wait().unwrap_err();
    assert_eq!(err.exit_reason(), Some(ExitReason::Signal(libc::SIGKILL)));
    assert_eq!(pool.apply(die_on, (4, 0, Death::SigKill)).unwrap(), 8);
}

#[multiproc::test]
fn several_crashes_in_one_map() {
    let pool = Pool::new(2).unwrap();
    // Three items die, in different batches and ways; all others survive.
    #[worker]
    fn die_on_some(x: u64) -> u64 {
        match x {
            3 => std::process::abort(),
            50 => std::process::exit(3),
            51 => std::process::abort(),
            _ => x + 1,
        }
    }
    let results: Vec<_> = pool.imap(die_on_some, 0..80).chunk_size(16).collect();
    for (i, r) in results.iter().enumerate() {
        match i {
            3 | 51 => assert_eq!(
                r.as_ref().unwrap_err().exit_reason(),
                Some(ExitReason::Signal(libc::SIGABRT)),
                "item {i}"
            ),
            50 => assert_eq!(
                r.as_ref().unwrap_err().exit_reason(),
                Some(ExitReason::Code(3))
            ),
            _ => assert_eq!(*r.as_ref().unwrap(), i as u64 + 1),
        }
    }
}

#[multiproc::test]
fn dead_worker_is_reaped() {
    let pool = Pool::new(1).unwrap();
    let err = pool.apply(die_now, Death::Abort).unwrap_err();
    let pid = err.pid().unwrap();
    // The pool already started a replacement; the dead one must not linger
    // as a zombie, even while the pool is alive.
    assert_eq!(pool.apply(die_on, (1, 0, Death::Abort)).unwrap(), 2);
    // Signal 0 reaches a zombie too: ESRCH only once it is reaped.
    // SAFETY: kill with signal 0 delivers nothing.
    let probe = unsafe { libc::kill(pid as libc::pid_t, 0) };
    let errno = std::io::Error::last_os_error().raw_os_error();
    assert!(
        probe == -1 && errno == Some(libc::ESRCH),
        "dead worker {pid} still exists"
    );
}

/// Serialises like a `u64`, except that 13 refuses to be encoded.
#[derive(Debug, PartialEq)]
struct NoThirteen(u64);

impl serde::Serialize for NoThirteen {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if self.0 == 13 {
            return Err(serde::ser::Error::custom("13 is unlucky"));
        }
        s.serialize_u64(self.0)
    }
}

impl<'de> serde::Deserialize<'de> for NoThirteen {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        u64::deserialize(d).map(NoThirteen)
    }
}

/// Deserialises like a `u64`, except that 7 refuses to be decoded.
#[derive(Debug, PartialEq, serde::Serialize)]
struct NoSeven(u64);

impl<'de> serde::Deserialize<'de> for NoSeven {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let n = u64::deserialize(d)?;
        if n == 7 {
            return Err(serde::de::Error::custom("7 is not welcome"));
        }
        Ok(NoSeven(n))
    }
}

#[worker]
fn take_no_thirteen(x: NoThirteen) -> u64 {
    x.0
}

#[worker]
fn give_no_thirteen(x: u64) -> NoThirteen {
    NoThirteen(x)
}

#[worker]
fn take_no_seven(x: NoSeven) -> u64 {
    x.0
}

#[worker]
fn give_no_seven(x: u64) -> NoSeven {
    NoSeven(x)
}

/// Checks that exactly item `bad` failed with a codec error on `side`.
fn assert_only_codec_error<T: std::fmt::Debug>(
    results: &[multiproc::Result<T>],
    bad: usize,
    side: multiproc::CodecSide,
    ok: impl Fn(usize, &T),
) {
    assert_eq!(results.len(), 20);
    for (i, r) in results.iter().enumerate() {
        match r {
            Ok(v) if i != bad => ok(i, v),
            Err(e) if i == bad => match e.kind() {
                ErrorKind::Codec {
                    side: got,
                    index,
                    message,
                    ..
                } => {
                    assert_eq!(*got, side, "{e}");
                    assert_eq!(*index, Some(bad as u64), "{e}");
                    assert!(!message.is_empty(), "{e}");
                }
                other => panic!("item {i}: expected a codec error, got {other:?}"),
            },
            other => panic!("item {i}: unexpected {other:?}"),
        }
    }
}

#[multiproc::test]
fn codec_errors_fail_only_their_item() {
    use multiproc::CodecSide;
    let pool = Pool::new(2).unwrap();

    let results: Vec<_> = pool
        .imap(take_no_thirteen, (0..20).map(NoThirteen))
        .chunk_size(8)
        .collect();
    assert_only_codec_error(&results, 13, CodecSide::EncodeArgs, |i, v| {
        assert_eq!(*v, i as u64);
    });

    let results: Vec<_> = pool
        .imap(take_no_seven, (0..20).map(NoSeven))
        .chunk_size(8)
        .collect();
    assert_only_codec_error(&results, 7, CodecSide::DecodeArgs, |i, v| {
        assert_eq!(*v, i as u64);
    });

    let results: Vec<_> = pool.imap(give_no_thirteen, 0..20).chunk_size(8).collect();
    assert_only_codec_error(&results, 13, CodecSide::EncodeOutput, |i, v| {
        assert_eq!(*v, NoThirteen(i as u64));
    });

    let results: Vec<_> = pool.imap(give_no_seven, 0..20).chunk_size(8).collect();
    assert_only_codec_error(&results, 7, CodecSide::DecodeOutput, |i, v| {
        assert_eq!(*v, NoSeven(i as u64));
    });

    let err = pool.apply(take_no_thirteen, NoThirteen(13)).unwrap_err();
    assert!(
        matches!(
            err.kind(),
            ErrorKind::Codec {
                side: CodecSide::EncodeArgs,
                ..
            }
        ),
        "{err:?}"
    );
    let err = pool.map(give_no_seven, 0..20).unwrap_err();
    assert_eq!(err.item_index(), Some(7), "{err}");
    assert_eq!(pool.apply(give_no_seven, 8).unwrap(), NoSeven(8));
}

#[multiproc::test]
fn map_returns_an_argument_that_failed_to_encode_after_all_the_others() {
    // Every other item goes to batches whose results the drivers store in
    // the output; the one that never left the parent must not be waited
    // for (that would hang) nor lost (the map would then succeed).
    let mut pool = Pool::new(2).unwrap();
    for n in [20u64, 5_000] {
        // On a thread, so that a hang fails the test instead of stalling it.
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let result = pool.map(take_no_thirteen, (0..n).rev().map(NoThirteen));
            let _ = tx.send((result, pool));
        });
        let (result, back) = rx
            .recv_timeout(std::time::Duration::from_secs(30))
            .expect("the map hung");
        pool = back;
        let err = result.unwrap_err();
        assert_eq!(err.item_index(), Some(n - 14), "{err}");
        assert!(
            matches!(
                err.kind(),
                ErrorKind::Codec {
                    side: multiproc::CodecSide::EncodeArgs,
                    ..
                }
            ),
            "{err:?}"
        );
    }
    // The pool is fine afterwards, and a map that fails nowhere succeeds.
    let out = pool
        .map(take_no_thirteen, (14..5_000).map(NoThirteen))
        .unwrap();
    assert_eq!(out, (14..5_000).collect::<Vec<u64>>());
}

#[worker]
fn panic_with_a_number(x: u64) -> u64 {
    std::panic::panic_any(x)
}

#[multiproc::test]
fn panic_with_a_non_string_payload() {
    let pool = Pool::new(1).unwrap();
    let err = pool.apply(panic_with_a_number, 5).unwrap_err();
    assert!(err.is_panic(), "{err:?}");
    assert_eq!(err.panic_message(), Some("Box<dyn Any>"));
    assert_eq!(pool.apply(panic_on, (1, 0)).unwrap(), 1);
}

#[worker]
fn big_vec(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i % 251) as u8).collect()
}

#[worker]
fn byte_sum(bytes: Vec<u8>) -> u64 {
    bytes.iter().map(|&b| u64::from(b)).sum()
}

#[multiproc::test]
fn large_payloads_both_ways() {
    let pool = Pool::new(2).unwrap();
    // 2 MiB results (far above the socket buffers), several in flight.
    let sizes = vec![2 << 20; 4];
    for (got, &len) in pool.imap(big_vec, sizes.clone()).zip(&sizes) {
        let got = got.unwrap();
        assert_eq!(got.len(), len);
        assert!(got.iter().enumerate().all(|(i, &b)| b == (i % 251) as u8));
    }
    // 2 MiB arguments.
    let input: Vec<Vec<u8>> = (0..4u8).map(|k| vec![k; 2 << 20]).collect();
    let expected: Vec<u64> = (0..4u64).map(|k| k * (2 << 20)).collect();
    assert_eq!(pool.map(byte_sum, input).unwrap(), expected);
    // A 9 MiB buffer out and back: above the size where byte buffers are
    // copied into huge-page backed memory, on both sides.
    let bytes: Vec<u8> = (0..9usize << 20).map(|i| (i * 13 % 256) as u8).collect();
    assert_eq!(pool.apply(echo_bytes, bytes.clone()).unwrap(), bytes);
    assert_eq!(
        pool.apply(echo_bytes, Vec::new()).unwrap(),
        Vec::<u8>::new()
    );
}

#[worker]
fn echo_bytes(bytes: Vec<u8>) -> Vec<u8> {
    bytes
}

/// Returns `bytes` unless its first byte says to fail: 1 panics, 2 aborts
/// the worker process.
#[worker]
fn echo_or_fail(bytes: Vec<u8>) -> Vec<u8> {
    match bytes.first() {
        Some(1) => panic!("refused {} bytes", bytes.len()),
        Some(2) => std::process::abort(),
        _ => bytes,
    }
}

#[multiproc::test]
fn large_byte_results_followed_by_others_in_one_batch() {
    // A worker writes a large `Vec<u8>` result after its reply rather than
    // into it; an item after it in the same batch (small, large, empty, a
    // panic) must come after those bytes, not in the middle of them.
    let pool = Pool::new(2).unwrap();
    let items = vec![
        pattern(300_000, 1),
        pattern(10, 2),
        pattern(200_000, 3),
        Vec::new(),
        {
            let mut refused = pattern(100_000, 4);
            refused[0] = 1;
            refused
        },
        pattern(150_000, 5),
    ];
    let expected = items.clone();
    for (i, result) in pool.imap(echo_or_fail, items).chunk_size(6).enumerate() {
        if i == 4 {
            let err = result.unwrap_err();
            assert_eq!(err.panic_message(), Some("refused 100000 bytes"), "{err:?}");
            assert_eq!(err.item_index(), Some(4));
        } else {
            assert!(result.unwrap() == expected[i], "item {i} came back changed");
        }
    }
    // The same batch again: nothing was left over from the last one.
    let again: Vec<Vec<u8>> = vec![pattern(80_000, 6), pattern(5, 7)];
    assert_eq!(
        pool.map_chunked(echo_or_fail, again.clone(), 2).unwrap(),
        again
    );
}

fn pattern(len: usize, seed: usize) -> Vec<u8> {
    (0..len)
        .map(|i| ((i * 31 + seed) % 251) as u8 + 3)
        .collect()
}

// Linux only: reads the worker's mappings in `/proc/<pid>/maps`.
#[cfg(target_os = "linux")]
#[multiproc::test]
fn large_frames_go_through_shared_buffers_that_grow() {
    // Large frames travel through per-worker shared buffers; each size
    // here is larger than the last buffer, so they are replaced, and
    // smaller ones in between reuse them. One worker: every frame goes
    // through the same buffers.
    let pool = Pool::new(1).unwrap();
    for (k, len) in [
        1 << 20,
        3 << 20,
        100,
        9 << 20,
        2 << 20,
        17 << 20,
        (1 << 20) - 1,
    ]
    .into_iter()
    .enumerate()
    {
        let bytes = pattern(len, k);
        assert_eq!(
            pool.apply(echo_bytes, bytes.clone()).unwrap(),
            bytes,
            "{len}"
        );
    }
    // The worker did map them (a memfd named for them; with
    // `multiproc_portable`, POSIX shared memory).
    let pid = pool.apply(pid_of, 0).unwrap();
    let name = if cfg!(multiproc_portable) {
        "/dev/shm/multiproc-frames."
    } else {
        "memfd:multiproc-frames"
    };
    let mapped = || {
        let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap();
        maps.matches(name).count()
    };
    assert_eq!(mapped(), 5, "the request buffer and the four reply buffers");
    // An idle pool gives their memory back after three seconds, and makes new
    // ones when a large frame comes again.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while mapped() != 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "still mapped after 10 s"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let bytes = pattern(5 << 20, 9);
    assert_eq!(pool.apply(echo_bytes, bytes.clone()).unwrap(), bytes);
    assert_eq!(pool.apply(pid_of, 0).unwrap(), pid, "the same worker");
    assert_eq!(mapped(), 5);
    // Large results from small arguments, several in flight: a reply that
    // finds every buffer still held takes the socket.
    let sizes = vec![3 << 20; 6];
    let got: Vec<Vec<u8>> = pool.map_chunked(big_vec, sizes.clone(), 1).unwrap();
    for (got, &len) in got.iter().zip(&sizes) {
        assert_eq!(got.len(), len);
        assert!(got.iter().enumerate().all(|(i, &b)| b == (i % 251) as u8));
    }
}

#[multiproc::test]
fn a_large_result_not_yet_waited_for_holds_its_buffer_and_others_go_around() {
    // A submitted task's large result is decoded where the worker left it;
    // until it is, that reply buffer is not the worker's: its next large
    // results take the other three, and the one after those (all four
    // held) the socket; once decoded, a buffer is the worker's again. One
    // worker: all of it through the same buffers.
    let pool = Pool::new(1).unwrap();
    let sizes = [6 << 20, 5 << 20, 6 << 20, 3 << 20, 4 << 20];
    let tasks: Vec<_> = (0..sizes.len())
        .map(|k| pool.submit(echo_bytes, pattern(sizes[k], k + 1)))
        .collect();
    // Waited for out of order: the first four hold the reply buffers.
    for (k, task) in tasks.into_iter().enumerate().rev() {
        assert!(task.wait().unwrap() == pattern(sizes[k], k + 1), "{k}");
    }
    // Dropped without a wait: the buffer is released all the same.
    drop(pool.submit(echo_bytes, pattern(5 << 20, 4)));
    for k in 5..8 {
        let bytes = pattern(5 << 20, k);
        assert!(
            pool.apply(echo_bytes, bytes.clone()).unwrap() == bytes,
            "{k}"
        );
    }
}

#[multiproc::test]
fn a_worker_that_fails_on_a_large_frame_loses_nothing_else() {
    let pool = Pool::new(2).unwrap();
    let mut panicking = pattern(5 << 20, 0);
    panicking[0] = 1;
    let err = pool.apply(echo_or_fail, panicking).unwrap_err();
    assert_eq!(
        err.panic_message(),
        Some("refused 5242880 bytes"),
        "{err:?}"
    );
    let mut aborting = pattern(6 << 20, 0);
    aborting[0] = 2;
    let err = pool.apply(echo_or_fail, aborting).unwrap_err();
    assert!(err.is_worker_died(), "{err:?}");
    // The replacement worker starts without shared buffers and gets new
    // ones; both workers still echo large frames correctly.
    let inputs: Vec<Vec<u8>> = (0..4).map(|k| pattern(4 << 20, k)).collect();
    let tasks: Vec<_> = inputs
        .iter()
        .map(|b| pool.submit(echo_or_fail, b.clone()))
        .collect();
    for (task, input) in tasks.into_iter().zip(&inputs) {
        assert_eq!(&task.wait().unwrap(), input);
    }
}

/// Panics the first time it runs in a process, then returns the length.
#[worker]
fn panic_once_then_len(bytes: Vec<u8>) -> usize {
    static RAN: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    if !RAN.swap(true, std::sync::atomic::Ordering::Relaxed) {
        panic!("first try");
    }
    bytes.len()
}

#[multiproc::test]
fn a_large_byte_argument_is_sent_again_whole_when_its_task_is_retried() {
    // A large `Vec<u8>` argument travels without being copied into its
    // frame; a panic retry has to send the same bytes again from it.
    let pool = Pool::builder().workers(1).retry_panics(1).build().unwrap();
    let bytes = pattern(300_000, 5);
    assert_eq!(
        pool.apply(panic_once_then_len, bytes.clone()).unwrap(),
        300_000
    );
    // And without retries, the panic is the answer.
    let strict = Pool::builder().workers(1).build().unwrap();
    let err = strict.apply(panic_once_then_len, bytes).unwrap_err();
    assert_eq!(err.panic_message(), Some("first try"), "{err:?}");
}
