//! Every `Pool` method through real worker processes: map, map_chunked,
//! imap, imap_unordered, apply, the builder options, close/join/terminate,
//! sharing a pool between threads, nested pools, and reaping on drop.

use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};

use multiproc::{ErrorKind, Pool, Worker, worker};

mod common;
#[cfg(target_os = "linux")]
use common::{process_state, workers_of};
use serde::{Deserialize, Serialize};

#[worker]
fn square(x: u64) -> u64 {
    x * x
}

#[worker]
fn add(a: u64, b: u64) -> u64 {
    a + b
}

#[worker]
fn answer() -> u32 {
    42
}

/// Sleeps `ms` milliseconds, then returns it.
#[worker]
fn sleep_ms(ms: u64) -> u64 {
    std::thread::sleep(std::time::Duration::from_millis(ms));
    ms
}

#[worker]
fn pid_of(_item: u64) -> u32 {
    std::process::id()
}

#[derive(Serialize, Deserialize, Debug, PartialEq, Clone)]
struct Word {
    text: String,
    repeat: usize,
}

#[worker]
fn expand(word: Word) -> String {
    word.text.repeat(word.repeat)
}

static INIT_VALUE: AtomicU64 = AtomicU64::new(0);

#[worker]
fn init_set(value: u64) {
    INIT_VALUE.store(value, Ordering::SeqCst);
}

#[worker]
fn init_read() -> u64 {
    INIT_VALUE.load(Ordering::SeqCst)
}

#[worker]
fn init_panics() {
    panic!("initializer exploded");
}

#[worker]
fn init_fails(code: u32) -> Result<(), String> {
    Err(format!("cannot open database #{code}"))
}

#[worker]
fn init_aborts() {
    std::process::abort();
}

#[worker]
fn sum_of_squares_in_a_pool(n: u64) -> u64 {
    let pool = Pool::new(2).expect("a worker can start its own pool");
    pool.map(square, 0..n)
        .expect("the nested map succeeds")
        .into_iter()
        .sum()
}

fn squares(n: u64) -> Vec<u64> {
    (0..n).map(|x| x * x).collect()
}

#[multiproc::test]
fn map_returns_results_in_input_order() {
    let pool = Pool::new(2).unwrap();
    assert_eq!(pool.workers(), 2);
    assert_eq!(pool.map(square, 0..1000).unwrap(), squares(1000));
    assert_eq!(pool.map(square, vec![5, 3, 9]).unwrap(), vec![25, 9, 81]);
}

#[multiproc::test]
fn map_accepts_unsized_input() {
    let pool = Pool::new(2).unwrap();
    // `filter` makes the size hint inexact, so map batches adaptively.
    let evens = (0..300u64).filter(|x| x % 2 == 0);
    assert_eq!(evens.size_hint(), (0, Some(300)));
    let expected: Vec<u64> = (0..300u64).filter(|x| x % 2 == 0).map(|x| x * x).collect();
    assert_eq!(pool.map(square, evens).unwrap(), expected);

    let mut n = 0;
    let counter = std::iter::from_fn(move || {
        n += 1;
        (n <= 50).then_some(n)
    });
    let expected: Vec<u64> = (1..=50).map(|x| x * x).collect();
    assert_eq!(pool.map(square, counter).unwrap(), expected);
}

/// An iterator over `0..n` that claims to have `claimed` items.
struct Claims {
    next: u64,
    n: u64,
    claimed: usize,
}

impl Iterator for Claims {
    type Item = u64;
    fn next(&mut self) -> Option<u64> {
        (self.next < self.n).then(|| {
            self.next += 1;
            self.next - 1
        })
    }
    fn size_hint(&self) -> (usize, Option<usize>) {
        (self.claimed, Some(self.claimed))
    }
}

#[multiproc::test]
fn map_survives_input_that_misstates_its_length() {
    // A sized input has its results stored in place by the drivers; one
    // that yields more or fewer items than it said still gets all of them,
    // in order (the extra ones go the ordinary way).
    let pool = Pool::new(2).unwrap();
    for (n, claimed) in [(5_000, 1_000), (1_000, 5_000), (3, 1), (1, 3)] {
        let input = Claims {
            next: 0,
            n,
            claimed,
        };
        assert_eq!(
            pool.map(square, input).unwrap(),
            squares(n),
            "{n} items claiming {claimed}"
        );
    }
    // Strings too (values that own memory): none lost, none doubled.
    let words = (0..2_000).map(|i| Word {
        text: i.to_string(),
        repeat: 2,
    });
    let out = pool.map(expand, words).unwrap();
    assert_eq!(out.len(), 2_000);
    assert!(out.iter().enumerate().all(|(i, s)| *s == format!("{i}{i}")));
}

#[worker]
fn square_unless_13(x: u64) -> String {
    assert!(x % 1000 != 13, "no {x}");
    (x * x).to_string()
}

#[multiproc::test]
fn a_failing_item_in_a_large_sized_map_is_reported_by_position() {
    // Item 13 of 200,000 fails; map reports the first failure by input
    // position (not whichever batch came back first) and gives the rest up.
    let pool = Pool::new(2).unwrap();
    let err = pool.map(square_unless_13, 0..200_000).unwrap_err();
    match err.kind() {
        ErrorKind::Panic { index, message, .. } => {
            assert_eq!(*index, Some(13));
            assert!(message.contains("no 13"), "{message}");
        }
        other => panic!("expected a panic of item 13, got {other:?}"),
    }
    // The pool goes on, and a map of the same size that does not fail is whole.
    let ok = pool
        .map(square_unless_13, (0..200_000).map(|x| x / 1000 * 1000))
        .unwrap();
    assert_eq!(ok.len(), 200_000);
    assert_eq!(ok[199_999], (199_000u64 * 199_000).to_string());
}

#[worker]
fn neg_i64(x: i64) -> i64 {
    x.wrapping_neg()
}

#[worker]
fn half_f64(x: f64) -> f64 {
    x / 2.0
}

#[worker]
fn not(b: bool) -> bool {
    !b
}

#[worker]
fn widen(x: u8) -> u16 {
    u16::from(x) * 256
}

#[worker]
fn even(x: usize) -> bool {
    x % 2 == 0
}

#[worker]
fn panics_on_7(x: u32) -> u32 {
    assert!(x % 10 != 7, "seven");
    x + 1
}

#[multiproc::test]
fn primitive_arguments_and_results_keep_their_values() {
    // Batches of primitives travel dense (fixed-width, no item headers):
    // every type, at its extremes, both ways, through map and imap.
    let pool = Pool::new(2).unwrap();
    let ints = vec![i64::MIN + 1, -1, 0, 1, i64::MAX];
    assert_eq!(
        pool.map(neg_i64, ints.clone()).unwrap(),
        ints.iter().map(|x| -x).collect::<Vec<_>>()
    );
    let floats = vec![-0.0, 1.5, f64::MAX, f64::INFINITY, -3.25e-300];
    let halves = pool.map(half_f64, floats.clone()).unwrap();
    assert_eq!(halves, floats.iter().map(|x| x / 2.0).collect::<Vec<_>>());
    assert!(halves[0].is_sign_negative());
    assert!(pool.apply(half_f64, f64::NAN).unwrap().is_nan());
    assert_eq!(
        pool.map(not, [true, false, true]).unwrap(),
        [false, true, false]
    );
    assert_eq!(
        pool.map(widen, 0..=255u8).unwrap(),
        (0..=255u16).map(|x| x * 256).collect::<Vec<_>>()
    );
    let n = 100_000usize;
    let flags: Vec<bool> = pool.imap(even, 0..n).map(Result::unwrap).collect();
    assert_eq!(flags.len(), n);
    assert!(flags.iter().enumerate().all(|(i, &f)| f == (i % 2 == 0)));
    // Sized and cut into pieces and halves by the scheduler: still in order.
    let big = pool.map(neg_i64, -500_000..500_000i64).unwrap();
    assert!(big.iter().zip(-500_000..500_000i64).all(|(&y, x)| y == -x));
}

#[worker]
fn dec_i8(x: i8) -> i8 {
    x.wrapping_sub(1)
}

#[worker]
fn inc_u16(x: u16) -> u32 {
    u32::from(x) + 1
}

#[worker]
fn neg_i32(x: i32) -> i64 {
    -i64::from(x)
}

#[worker]
fn not_u32(x: u32) -> u32 {
    !x
}

#[worker]
fn not_u64(x: u64) -> u64 {
    !x
}

#[worker]
fn id_isize(x: isize) -> isize {
    x
}

#[multiproc::test]
fn integer_ranges_of_every_width_map_to_the_right_items() {
    // A range goes to the workers as its first integer and a count, and
    // each worker counts on from there: every width, signed ones across
    // zero, up to the very last value of the type, inclusive and not, in
    // batches and pieces of batches, through map, map_chunked and imap.
    let pool = Pool::new(2).unwrap();
    let want = |r: std::ops::RangeInclusive<i8>| r.map(|x| x.wrapping_sub(1)).collect::<Vec<_>>();
    assert_eq!(pool.map(dec_i8, -128..=127).unwrap(), want(-128..=127));
    assert_eq!(pool.map(dec_i8, -3..3).unwrap(), want(-3..=2));
    assert_eq!(
        pool.map(inc_u16, 60_000..=u16::MAX).unwrap(),
        (60_000..=u32::from(u16::MAX))
            .map(|x| x + 1)
            .collect::<Vec<_>>()
    );
    assert_eq!(
        pool.map(neg_i32, -150_000..150_000).unwrap(),
        (-150_000..150_000i64).map(|x| -x).collect::<Vec<_>>()
    );
    assert_eq!(
        pool.map_chunked(not_u32, u32::MAX - 999..=u32::MAX, 7)
            .unwrap(),
        (u32::MAX - 999..=u32::MAX).map(|x| !x).collect::<Vec<_>>()
    );
    let top = pool.map(not_u64, u64::MAX - 300_000..=u64::MAX).unwrap();
    assert_eq!(top.len(), 300_001);
    assert!(top.iter().rev().enumerate().all(|(i, &y)| y == i as u64));
    let low: Vec<isize> = pool
        .imap(id_isize, isize::MIN..isize::MIN + 100_000)
        .map(Result::unwrap)
        .collect();
    assert_eq!(low, (isize::MIN..isize::MIN + 100_000).collect::<Vec<_>>());
    let mut unordered: Vec<isize> = pool
        .imap_unordered(id_isize, -5_000..5_000)
        .map(Result::unwrap)
        .collect();
    unordered.sort_unstable();
    assert_eq!(unordered, (-5_000..5_000).collect::<Vec<_>>());
    // Empty ranges, and a range already partly used.
    assert!(pool.map(not_u64, 5..5).unwrap().is_empty());
    #[allow(clippy::reversed_empty_ranges)]
    let empty = 5..=4;
    assert!(pool.map(not_u64, empty).unwrap().is_empty());
    let mut partly = 10..20u64;
    partly.nth(4);
    assert_eq!(
        pool.map(not_u64, partly).unwrap(),
        (15..20u64).map(|x| !x).collect::<Vec<_>>()
    );
}

#[worker]
fn panics_on_150_007(x: u32) -> u32 {
    assert!(x != 150_007, "the one");
    x + 1
}

#[multiproc::test]
fn dense_results_written_into_shared_memory_survive_a_panic_mid_batch() {
    // Once a worker has sent large replies it has shared reply buffers,
    // and a dense batch's results are written straight into a free one. A
    // panic in the middle of such a batch moves the results so far back
    // into the reply: none is lost or shifted, before or after it.
    let pool = Pool::builder().workers(1).retry_panics(0).build().unwrap();
    for _ in 0..2 {
        let out = pool
            .map(panics_on_7, (0..200_000u32).filter(|x| x % 10 != 7))
            .unwrap();
        assert!(
            out.iter()
                .zip((0..200_000u32).filter(|x| x % 10 != 7))
                .all(|(y, x)| *y == x + 1)
        );
    }
    for _ in 0..2 {
        let results: Vec<_> = pool.imap(panics_on_150_007, 0..200_000u32).collect();
        assert_eq!(results.len(), 200_000);
        for (x, r) in (0..200_000u32).zip(&results) {
            match r {
                Ok(y) => assert_eq!(*y, x + 1, "item {x}"),
                Err(e) => {
                    assert_eq!(x, 150_007, "item {x} failed: {e}");
                    assert_eq!(e.panic_message(), Some("the one"));
                }
            }
        }
        assert_eq!(results.iter().filter(|r| r.is_err()).count(), 1);
        let err = pool.map(panics_on_150_007, 0..200_000u32).unwrap_err();
        assert_eq!(err.item_index(), Some(150_007));
        // And the buffers are fine for the next map.
        let out = pool
            .map(panics_on_7, (0..200_000u32).map(|x| x * 10 + 1))
            .unwrap();
        assert!(out.iter().zip(0..200_000u32).all(|(y, x)| *y == x * 10 + 2));
    }
}

#[multiproc::test]
fn a_panic_in_a_dense_batch_costs_only_its_item() {
    let pool = Pool::builder().workers(2).retry_panics(0).build().unwrap();
    let results: Vec<_> = pool.imap(panics_on_7, 0..1_000u32).collect();
    for (x, r) in (0..1_000u32).zip(&results) {
        match r {
            Ok(y) => assert_eq!(*y, x + 1),
            Err(e) => {
                assert_eq!(x % 10, 7, "item {x} failed: {e}");
                assert_eq!(e.item_index(), Some(u64::from(x)));
                assert_eq!(e.panic_message(), Some("seven"));
            }
        }
    }
    assert_eq!(results.iter().filter(|r| r.is_err()).count(), 100);
    let err = pool.map(panics_on_7, 0..1_000u32).unwrap_err();
    assert_eq!(err.item_index(), Some(7));
}

/// A result whose decoding panics on 4242 (the parent decodes results).
#[derive(Serialize, Debug, PartialEq)]
struct Touchy(u64);

impl<'de> Deserialize<'de> for Touchy {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Touchy, D::Error> {
        let v = u64::deserialize(d)?;
        assert!(v != 4242, "touchy about {v}");
        Ok(Touchy(v))
    }
}

#[worker]
fn touchy(x: u64) -> Touchy {
    Touchy(x)
}

#[multiproc::test]
fn a_panicking_result_decoder_panics_in_the_caller_and_nothing_hangs() {
    // `map` has the drivers decode results into its output: a panic in the
    // result type's `Deserialize` must still come out of `map`, on the
    // caller's thread, and leave the pool working.
    let pool = std::sync::Arc::new(Pool::new(2).unwrap());
    // On a thread of its own, so that a hang fails the test instead.
    let (tx, rx) = std::sync::mpsc::channel();
    let for_thread = pool.clone();
    std::thread::spawn(move || {
        let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            for_thread.map(touchy, 0..10_000).map(|v| v.len())
        }));
        let _ = tx.send(caught);
    });
    let caught = rx
        .recv_timeout(std::time::Duration::from_secs(30))
        .expect("map hung");
    let payload = caught.expect_err("decoding item 4242 panics");
    let message = payload
        .downcast_ref::<String>()
        .cloned()
        .unwrap_or_default();
    assert!(message.contains("touchy about 4242"), "{message:?}");
    let fine = pool.map(touchy, 0..4_000).unwrap();
    assert_eq!(fine.len(), 4_000);
    assert_eq!(fine[3_999], Touchy(3_999));
}

#[multiproc::test]
fn map_takes_tuples_for_several_arguments() {
    let pool = Pool::new(2).unwrap();
    let pairs: Vec<(u64, u64)> = (0..100).map(|i| (i, 1000 * i)).collect();
    let expected: Vec<u64> = (0..100).map(|i| 1001 * i).collect();
    assert_eq!(pool.map(add, pairs).unwrap(), expected);
}

#[multiproc::test]
fn map_of_a_zero_argument_worker_takes_unit_items() {
    let pool = Pool::new(2).unwrap();
    assert_eq!(pool.map(answer, vec![(); 7]).unwrap(), vec![42; 7]);
}

#[multiproc::test]
fn map_of_empty_input_is_empty() {
    let pool = Pool::new(2).unwrap();
    assert_eq!(
        pool.map(square, Vec::<u64>::new()).unwrap(),
        Vec::<u64>::new()
    );
    assert_eq!(
        pool.map_chunked(square, 0..0, 8).unwrap(),
        Vec::<u64>::new()
    );
    assert_eq!(pool.imap(square, 0..0).count(), 0);
    assert_eq!(pool.imap_unordered(square, 0..0).count(), 0);
    // And the pool still works.
    assert_eq!(pool.apply(square, 12).unwrap(), 144);
}

#[multiproc::test]
fn map_carries_structs_and_strings() {
    let pool = Pool::new(2).unwrap();
    let words = vec![
        Word {
            text: "ab".to_owned(),
            repeat: 3,
        },
        Word {
            text: "é".to_owned(),
            repeat: 2,
        },
        Word {
            text: String::new(),
            repeat: 9,
        },
    ];
    assert_eq!(
        pool.map(expand, words).unwrap(),
        vec!["ababab".to_owned(), "éé".to_owned(), String::new()]
    );
}

#[multiproc::test]
fn map_chunked_returns_results_in_input_order() {
    let pool = Pool::new(2).unwrap();
    for chunk in [1, 7, 16, 1000] {
        assert_eq!(
            pool.map_chunked(square, 0..200, chunk).unwrap(),
            squares(200),
            "chunk size {chunk}"
        );
    }
    // A chunk size of 0 is treated as 1 rather than hanging.
    assert_eq!(pool.map_chunked(square, 0..10, 0).unwrap(), squares(10));
}

#[multiproc::test]
fn imap_yields_in_input_order() {
    let pool = Pool::new(2).unwrap();
    let got: Vec<u64> = pool.imap(square, 0..500).map(Result::unwrap).collect();
    assert_eq!(got, squares(500));
}

#[multiproc::test]
fn imap_works_on_endless_input() {
    let pool = Pool::new(2).unwrap();
    let got: Vec<u64> = pool
        .imap(square, 0u64..)
        .take(300)
        .map(Result::unwrap)
        .collect();
    assert_eq!(got, squares(300));
    // Dropping the endless iterator left the pool usable.
    assert_eq!(pool.apply(square, 11).unwrap(), 121);
}

#[multiproc::test]
fn imap_is_exact_size_for_sized_input() {
    let pool = Pool::new(2).unwrap();
    // `Range<u64>` is not an `ExactSizeIterator`; a `Vec`'s iterator is.
    let mut it = pool.imap(square, (0..10u64).collect::<Vec<_>>());
    assert_eq!(it.len(), 10);
    assert_eq!(it.next().unwrap().unwrap(), 0);
    assert_eq!(it.len(), 9);
    let rest: Vec<u64> = it.by_ref().map(Result::unwrap).collect();
    assert_eq!(rest, squares(10)[1..]);
    assert_eq!(it.len(), 0);
    assert!(it.next().is_none());
}

#[multiproc::test]
fn imap_unordered_len_counts_items_not_yet_yielded() {
    let pool = Pool::new(2).unwrap();
    // Item 0 is slow, so items 1 and 2 come out first.
    let mut it = pool
        .imap_unordered(sleep_ms, vec![400u64, 0, 0])
        .chunk_size(1);
    assert_eq!(it.len(), 3);
    assert_eq!(it.next().unwrap().unwrap(), 0);
    assert_eq!(it.len(), 2, "after one of three items");
    assert_eq!(it.next().unwrap().unwrap(), 0);
    assert_eq!(it.len(), 1, "after two of three items");
    assert_eq!(it.next().unwrap().unwrap(), 400);
    assert_eq!(it.len(), 0);
    assert!(it.next().is_none());
}

#[multiproc::test]
fn imap_with_chunk_size() {
    let pool = Pool::new(2).unwrap();
    for chunk in [1, 5, 64] {
        let got: Vec<u64> = pool
            .imap(square, 0..150)
            .chunk_size(chunk)
            .map(Result::unwrap)
            .collect();
        assert_eq!(got, squares(150), "chunk size {chunk}");
    }
    let mut got: Vec<u64> = pool
        .imap_unordered(square, 0..150)
        .chunk_size(1)
        .map(Result::unwrap)
        .collect();
    got.sort_unstable();
    assert_eq!(got, squares(150));
}

#[multiproc::test]
fn imap_unordered_yields_every_item_once() {
    let pool = Pool::new(2).unwrap();
    let mut got: Vec<u64> = pool
        .imap_unordered(square, 0..500)
        .map(Result::unwrap)
        .collect();
    assert_eq!(got.len(), 500);
    got.sort_unstable();
    assert_eq!(got, squares(500));

    let first: Vec<u64> = pool
        .imap_unordered(square, 0u64..)
        .take(20)
        .map(Result::unwrap)
        .collect();
    assert_eq!(first.len(), 20);
    assert_eq!(first.iter().collect::<HashSet<_>>().len(), 20);
}

#[multiproc::test]
fn apply_runs_one_call_in_a_worker() {
    let pool = Pool::new(1).unwrap();
    assert_eq!(pool.apply(add, (2, 3)).unwrap(), 5);
    assert_eq!(pool.apply(answer, ()).unwrap(), 42);
    let worker_pid = pool.apply(pid_of, 0).unwrap();
    assert_ne!(worker_pid, std::process::id(), "apply ran in-process");
}

#[multiproc::test]
fn builder_initializer_runs_in_every_worker() {
    let pool = Pool::builder()
        .workers(2)
        .initializer(init_set, 1234)
        .build()
        .unwrap();
    // Every item reads the value the initializer set in its own process.
    assert_eq!(pool.map(init_read, vec![(); 40]).unwrap(), vec![1234; 40]);
    // Not set in this process: the initializer ran in the children only.
    assert_eq!(INIT_VALUE.load(Ordering::SeqCst), 0);

    let plain = Pool::new(1).unwrap();
    assert_eq!(plain.apply(init_read, ()).unwrap(), 0);
}

/// Builds `builder`, which must fail within 10 s with
/// `ErrorKind::Initializer`; hands `check` that error and the initializer's.
fn build_fails_fast(
    builder: multiproc::PoolBuilder,
    why: &str,
    check: impl FnOnce(&multiproc::Error, &multiproc::Error),
) {
    let started = std::time::Instant::now();
    let err = builder.build().expect_err(why);
    assert!(
        started.elapsed() < std::time::Duration::from_secs(10),
        "build() did not fail fast: {:?}",
        started.elapsed()
    );
    let ErrorKind::Initializer(inner) = err.kind() else {
        panic!("expected ErrorKind::Initializer, got {err:?}");
    };
    check(&err, inner);
}

#[multiproc::test]
fn builder_initializer_that_panics_fails_build() {
    build_fails_fast(
        Pool::builder().workers(2).initializer(init_panics, ()),
        "a panicking initializer must fail build()",
        |err, inner| {
            assert_eq!(inner.panic_message(), Some("initializer exploded"));
            assert!(
                err.to_string().contains("initializer exploded"),
                "message lost: {err}"
            );
        },
    );
}

#[multiproc::test]
fn builder_initializer_that_returns_err_fails_build() {
    let err = Pool::builder()
        .workers(2)
        .initializer(init_fails, 7)
        .build()
        .expect_err("an initializer returning Err must fail build()");
    assert!(
        matches!(err.kind(), ErrorKind::Initializer(_)),
        "expected ErrorKind::Initializer, got {err:?}"
    );
    assert!(
        err.to_string().contains("cannot open database #7"),
        "message lost: {err}"
    );
}

#[multiproc::test]
fn builder_initializer_that_crashes_fails_build() {
    build_fails_fast(
        Pool::builder().workers(2).initializer(init_aborts, ()),
        "an initializer that aborts must fail build()",
        |err, inner| {
            assert_eq!(
                inner.exit_reason(),
                Some(multiproc::ExitReason::Signal(libc::SIGABRT)),
                "{err}"
            );
        },
    );
}

#[multiproc::test]
fn builder_initializer_runs_again_in_replacement_workers() {
    let pool = Pool::builder()
        .workers(1)
        .initializer(init_set, 77)
        .max_tasks_per_worker(1)
        .build()
        .unwrap();
    assert_eq!(pool.map(init_read, vec![(); 6]).unwrap(), vec![77; 6]);
    let pids = pool.map(pid_of, 0..4).unwrap();
    assert_eq!(pids.iter().collect::<HashSet<_>>().len(), 4, "{pids:?}");
}

#[multiproc::test]
fn max_tasks_per_worker_replaces_the_process() {
    let pool = Pool::builder()
        .workers(1)
        .max_tasks_per_worker(2)
        .build()
        .unwrap();
    let pids = pool.map(pid_of, 0..10).unwrap();
    let mut per_pid: BTreeMap<u32, usize> = BTreeMap::new();
    for pid in &pids {
        *per_pid.entry(*pid).or_default() += 1;
    }
    assert_eq!(per_pid.len(), 5, "pids: {pids:?}");
    assert!(per_pid.values().all(|&n| n == 2), "pids: {pids:?}");
    // One worker, so each process ran two consecutive items.
    for pair in pids.chunks(2) {
        assert_eq!(pair[0], pair[1], "pids: {pids:?}");
    }
    assert!(!per_pid.contains_key(&std::process::id()));
}

#[multiproc::test]
fn max_tasks_per_worker_applies_to_imap_and_submit() {
    let pool = Pool::builder()
        .workers(1)
        .max_tasks_per_worker(3)
        .build()
        .unwrap();
    let pids: Vec<u32> = pool.imap(pid_of, 0..9).map(Result::unwrap).collect();
    assert_eq!(pids.iter().collect::<HashSet<_>>().len(), 3, "{pids:?}");
    let submitted: Vec<u32> = (0..3).map(|i| pool.apply(pid_of, i).unwrap()).collect();
    assert_eq!(
        submitted.iter().collect::<HashSet<_>>().len(),
        1,
        "{submitted:?}"
    );
    assert!(!pids.contains(&submitted[0]), "a spent worker was reused");
    assert_ne!(
        pool.apply(pid_of, 0).unwrap(),
        submitted[0],
        "the worker ran a 4th task"
    );
}

#[multiproc::test]
fn max_tasks_per_worker_caps_an_explicit_chunk_size() {
    let pool = Pool::builder()
        .workers(1)
        .max_tasks_per_worker(3)
        .build()
        .unwrap();
    let pids = pool.map_chunked(pid_of, 0..9, 100).unwrap();
    assert_eq!(pids.iter().collect::<HashSet<_>>().len(), 3, "{pids:?}");
    let pids: Vec<u32> = pool
        .imap(pid_of, 0..9)
        .chunk_size(100)
        .map(Result::unwrap)
        .collect();
    assert_eq!(pids.iter().collect::<HashSet<_>>().len(), 3, "{pids:?}");
}

#[multiproc::test]
fn workers_zero_means_available_parallelism() {
    let expected = std::thread::available_parallelism().unwrap().get();
    let pool = Pool::new(0).unwrap();
    assert_eq!(pool.workers(), expected);
    let built = Pool::builder().build().unwrap();
    assert_eq!(built.workers(), expected);
    assert_eq!(pool.map(square, 0..20).unwrap(), squares(20));
}

#[multiproc::test]
fn pool_is_shared_between_threads() {
    fn assert_send_sync<T: Send + Sync>(_: &T) {}
    let pool = Pool::new(2).unwrap();
    assert_send_sync(&pool);
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..4u64)
            .map(|t| {
                let pool = &pool;
                s.spawn(move || {
                    let items: Vec<u64> = (t * 100..t * 100 + 100).collect();
                    let expected: Vec<u64> = items.iter().map(|x| x * x).collect();
                    (pool.map(square, items).unwrap(), expected)
                })
            })
            .collect();
        for h in handles {
            let (got, expected) = h.join().unwrap();
            assert_eq!(got, expected);
        }
    });
    // And moved into a thread behind an Arc.
    let shared = std::sync::Arc::new(pool);
    let other = shared.clone();
    let sum = std::thread::spawn(move || other.map(add, vec![(1, 2), (3, 4)]).unwrap())
        .join()
        .unwrap();
    assert_eq!(sum, vec![3, 7]);
    assert_eq!(shared.apply(square, 3).unwrap(), 9);
}

#[multiproc::test]
fn close_refuses_new_work_but_finishes_queued_work() {
    let pool = Pool::new(1).unwrap();
    let before = pool.submit(square, 6);
    pool.close();
    let after = pool.submit(square, 7);
    assert!(
        matches!(after.wait().unwrap_err().kind(), ErrorKind::PoolClosed),
        "submit after close must fail with PoolClosed"
    );
    let err = pool.apply(square, 8).unwrap_err();
    assert!(matches!(err.kind(), ErrorKind::PoolClosed), "{err:?}");
    let err = pool.map(square, 0..3).unwrap_err();
    assert!(matches!(err.kind(), ErrorKind::PoolClosed), "{err:?}");
    assert_eq!(before.wait().unwrap(), 36);
}

#[multiproc::test]
fn join_waits_for_queued_tasks() {
    let pool = Pool::new(2).unwrap();
    let tasks: Vec<_> = (0..20).map(|i| pool.submit(square, i)).collect();
    pool.join();
    assert!(tasks.iter().all(multiproc::Task::is_finished));
    let got: Vec<u64> = tasks.into_iter().map(|t| t.wait().unwrap()).collect();
    assert_eq!(got, squares(20));
    let err = pool.apply(square, 1).unwrap_err();
    assert!(matches!(err.kind(), ErrorKind::PoolClosed), "{err:?}");
    // Joining twice, and dropping after join, is fine.
    pool.join();
}

#[multiproc::test]
fn worker_can_use_a_pool_of_its_own() {
    let pool = Pool::new(2).unwrap();
    assert_eq!(pool.apply(sum_of_squares_in_a_pool, 10).unwrap(), 285);
    // Two nested pools at once.
    assert_eq!(
        pool.map(sum_of_squares_in_a_pool, vec![3, 4]).unwrap(),
        vec![5, 14]
    );
}

// Linux only: finds the workers in `/proc`.
#[cfg(target_os = "linux")]
#[multiproc::test]
fn drop_reaps_every_worker_process() {
    let pool = Pool::new(3).unwrap();
    assert_eq!(pool.map(square, 0..30).unwrap(), squares(30));
    let children = workers_of("drop_reaps_every_worker_process", true);
    assert_eq!(children.len(), 3, "children: {children:?}");
    let mut from_workers: Vec<u32> = pool.map(pid_of, 0..300).unwrap();
    from_workers.sort_unstable();
    from_workers.dedup();
    assert!(
        from_workers.iter().all(|pid| children.contains(pid)),
        "workers {from_workers:?} are not the children {children:?}"
    );
    drop(pool);
    for pid in &children {
        assert_eq!(process_state(*pid), None, "worker {pid} outlived its pool");
    }
    assert_eq!(workers_of("drop_reaps_every_worker_process", true), vec![]);
}

// Linux only: finds the workers in `/proc`.
#[cfg(target_os = "linux")]
#[multiproc::test]
fn terminate_reaps_every_worker_process() {
    let pool = Pool::new(2).unwrap();
    assert_eq!(pool.apply(square, 2).unwrap(), 4);
    let children = workers_of("terminate_reaps_every_worker_process", true);
    assert_eq!(children.len(), 2, "children: {children:?}");
    pool.terminate();
    for pid in &children {
        assert_eq!(process_state(*pid), None, "worker {pid} outlived terminate");
    }
    let err = pool.apply(square, 2).unwrap_err();
    assert!(matches!(err.kind(), ErrorKind::PoolClosed), "{err:?}");
}

#[test]
fn worker_names_are_module_paths() {
    assert_eq!(<square as Worker>::NAME, "pool::square");
    assert_eq!(<add as Worker>::NAME, "pool::add");
}

#[multiproc::test]
fn indexed_imap_unordered_pairs_each_result_with_its_input_position() {
    let pool = Pool::new(2).unwrap();
    let mut got: Vec<(usize, u64)> = pool
        .imap_unordered(sleep_ms, vec![30, 0, 10, 0])
        .chunk_size(1)
        .indexed()
        .map(|(i, r)| (i, r.unwrap()))
        .collect();
    got.sort();
    assert_eq!(got, vec![(0, 30), (1, 0), (2, 10), (3, 0)]);
    let ordered: Vec<usize> = pool
        .imap(sleep_ms, vec![0, 0, 0])
        .indexed()
        .map(|(i, _)| i)
        .collect();
    assert_eq!(ordered, vec![0, 1, 2]);
}

#[multiproc::worker]
fn slow_pid(x: u64) -> (u64, u32) {
    std::thread::sleep(std::time::Duration::from_millis(2));
    (x, std::process::id())
}

#[multiproc::test]
fn an_idle_worker_takes_half_of_a_busy_workers_batch() {
    // Three equal batches on two workers: without stealing one worker would
    // run two of them while the other idles. The idle one takes the back
    // half of the last batch instead, and every item still runs once.
    let pool = Pool::new(2).unwrap();
    let out = pool.map_chunked(slow_pid, 0..300u64, 100).unwrap();
    assert!(
        out.iter().enumerate().all(|(i, &(x, _))| x == i as u64),
        "every item once, in order"
    );
    let pids_of = |range: std::ops::Range<usize>| {
        out[range]
            .iter()
            .map(|&(_, pid)| pid)
            .collect::<std::collections::HashSet<_>>()
    };
    let split = (0..3)
        .filter(|b| pids_of(b * 100..b * 100 + 100).len() > 1)
        .count();
    assert!(split >= 1, "no batch was shared between the two workers");
    assert_ne!(pids_of(0..300).len(), 1);
}

#[test]
fn a_wake_latency_limit_holds_while_it_lives_and_ends_with_it() {
    use std::io::Read;
    // The machine's current limit, as Linux reports it (root can read it).
    let current = || {
        let mut bytes = [0u8; 4];
        let mut device = std::fs::File::open("/dev/cpu_dma_latency").ok()?;
        device.read_exact(&mut bytes).ok()?;
        Some(i32::from_ne_bytes(bytes))
    };
    let before = current();
    match multiproc::WakeLatency::limit(std::time::Duration::from_micros(7)) {
        Ok(held) => {
            let during = current().expect("readable where it could be written");
            assert!(during <= 7, "{during} µs while a limit of 7 is held");
            drop(held);
            // Back to what it was, unless something else already asked
            // for as much.
            if before.is_some_and(|b| b > 7) {
                assert_eq!(current(), before, "the limit ends with the value");
            }
        }
        // Not root, or not Linux: a clear error, not a silent no-op.
        Err(e) => assert!(matches!(e.kind(), ErrorKind::Io { .. }), "{e:?}"),
    }
}
