//! Bulk reads of a `SharedArray` (`read_chunks`, `copy_to_slice`,
//! `to_vec`) by worker processes: a worker reads an array the caller made
//! and gets exactly its values (odd lengths, empty, large enough for the
//! pages to be mapped ahead); a range out of bounds fails the task with a
//! panic and nothing else; a lease held elsewhere neither blocks the read
//! nor hides what its holder wrote; and a reader racing another process's
//! writes, atomic or scribbled, neither panics nor sees a torn element.

use std::time::{Duration, Instant};

use multiproc::{Pool, Process, SharedArray};

/// A value that differs in every bit position and is not an integer, so
/// that the sums below depend on their order and any misplaced element
/// shows.
fn value(i: usize) -> f64 {
    i as f64 * 0.37 - (i % 13) as f64 * 1e-3
}

/// What a reader saw: the sum in index order, how many elements, and the
/// elements at the indices asked for.
type Seen = (f64, usize, Vec<f64>);

/// Reads the whole array through `read_chunks`, summing in index order.
#[multiproc::worker]
fn read_all(data: SharedArray<f64>, spots: Vec<usize>) -> Seen {
    let mut sum = 0.0;
    let mut count = 0;
    let mut found = vec![f64::NAN; spots.len()];
    data.read_chunks(.., |at, chunk| {
        assert_eq!(at, count, "chunks arrive in order");
        for x in chunk {
            sum += x;
        }
        for (k, &s) in spots.iter().enumerate() {
            if (at..at + chunk.len()).contains(&s) {
                found[k] = chunk[s - at];
            }
        }
        count += chunk.len();
    });
    (sum, count, found)
}

/// Copies `count` elements from `start` out of the array.
#[multiproc::worker]
fn copy_part(data: SharedArray<f64>, start: usize, count: usize) -> Vec<f64> {
    let mut out = vec![0.0; count];
    data.copy_to_slice(start, &mut out);
    out
}

/// Reads a range through `read_chunks` into a vector.
#[multiproc::worker]
fn read_range(data: SharedArray<f64>, start: usize, end: usize) -> Vec<f64> {
    let mut out = Vec::new();
    data.read_chunks(start..end, |_, chunk| out.extend_from_slice(chunk));
    out
}

fn expected(len: usize, spots: &[usize]) -> Seen {
    let sum = (0..len).map(value).fold(0.0, |s, x| s + x);
    (sum, len, spots.iter().map(|&i| value(i)).collect())
}

#[multiproc::test]
fn a_worker_reads_exactly_what_the_caller_wrote() {
    let pool = Pool::new(2).unwrap();
    // Odd lengths around the 2048-element chunks, a large one (24 MiB and
    // a bit, whose pages are mapped ahead of the reader), and empty.
    for len in [1, 2047, 2049, 100_003, 3_145_731] {
        let values: Vec<f64> = (0..len).map(value).collect();
        let data = SharedArray::from_slice(&values).unwrap();
        let spots = vec![0, len / 3, (len / 2 + 1).min(len - 1), len - 1];
        let seen = pool.apply(read_all, (data.clone(), spots.clone())).unwrap();
        assert_eq!(seen, expected(len, &spots), "{len} elements");

        let (start, count) = (len / 4 + 1, len / 2);
        let part = pool.apply(copy_part, (data.clone(), start, count)).unwrap();
        assert!(part == values[start..start + count], "{len} elements");
        let range = pool.apply(read_range, (data.clone(), 1, len)).unwrap();
        assert!(range == values[1..], "{len} elements");
        assert!(data.to_vec() == values, "{len} elements");
    }
    let empty = SharedArray::<f64>::zeroed(0).unwrap();
    assert_eq!(
        pool.apply(read_all, (empty.clone(), Vec::new())).unwrap(),
        (0.0, 0, Vec::new())
    );
    assert!(
        pool.apply(copy_part, (empty.clone(), 0, 0))
            .unwrap()
            .is_empty()
    );
    assert!(pool.apply(read_range, (empty, 0, 0)).unwrap().is_empty());
}

#[multiproc::test]
fn a_range_out_of_bounds_fails_only_its_task() {
    let pool = Pool::new(1).unwrap();
    let data = SharedArray::from_slice(&[1.0, 2.0, 3.0]).unwrap();
    let err = pool.apply(read_range, (data.clone(), 2, 4)).unwrap_err();
    assert!(err.is_panic(), "{err}");
    assert!(
        err.panic_message().unwrap().contains("out of bounds"),
        "{err}"
    );
    let err = pool.apply(copy_part, (data.clone(), 1, 3)).unwrap_err();
    assert!(
        err.panic_message().unwrap().contains("out of bounds"),
        "{err}"
    );
    let err = pool
        .apply(copy_part, (data.clone(), usize::MAX, 2))
        .unwrap_err();
    assert!(err.is_panic(), "{err}");
    // The worker is still there, and reads the array.
    assert_eq!(
        pool.apply(read_range, (data, 0, 3)).unwrap(),
        [1.0, 2.0, 3.0]
    );
}

#[multiproc::test]
fn a_lease_held_elsewhere_neither_blocks_a_read_nor_hides_its_writes() {
    let pool = Pool::new(1).unwrap();
    let data = SharedArray::<f64>::zeroed(10_000).unwrap();
    let mut chunk = data.lease(2_000..6_000).unwrap();
    for (x, i) in chunk.iter_mut().zip(2_000..) {
        *x = value(i);
    }
    // The lease is still held: the worker reads through it, at once.
    let started = Instant::now();
    let seen = pool
        .submit(read_range, (data.clone(), 0, 10_000))
        .wait_timeout(Duration::from_secs(20))
        .unwrap();
    assert!(started.elapsed() < Duration::from_secs(20));
    for (i, x) in seen.iter().enumerate() {
        let want = if (2_000..6_000).contains(&i) {
            value(i)
        } else {
            0.0
        };
        assert_eq!(*x, want, "element {i}");
    }
    drop(chunk);
}

/// Writes over the whole array for `millis`, alternating two patterns,
/// with atomic stores.
#[multiproc::worker]
fn flip_atomically(data: SharedArray<u64>, millis: u64) {
    let until = Instant::now() + Duration::from_millis(millis);
    let mut r = 0;
    while Instant::now() < until {
        let v = if r % 2 == 0 {
            u64::MAX
        } else {
            0x0123_4567_89ab_cdef
        };
        for i in 0..data.len() {
            data.store(i, v);
        }
        r += 1;
    }
}

#[multiproc::test]
fn another_process_writing_atomically_never_tears_an_element() {
    let data = SharedArray::<u64>::zeroed(100_001).unwrap();
    let writer = Process::spawn(flip_atomically, (data.clone(), 500)).unwrap();
    let mut reads = 0;
    while reads < 20 || !writer.is_finished() {
        data.read_chunks(1.., |at, chunk| {
            for (i, &x) in chunk.iter().enumerate() {
                assert!(
                    x == 0 || x == u64::MAX || x == 0x0123_4567_89ab_cdef,
                    "element {}: {x:#x}",
                    at + i
                );
            }
        });
        reads += 1;
    }
    writer.join().unwrap();
}

/// Scribbles the array as a hostile process would: plain (non-atomic)
/// writes of NaNs, infinities and negative zeros, for `millis`.
#[multiproc::worker]
fn scribble(data: SharedArray<f64>, millis: u64) {
    let patterns = [
        f64::from_bits(0x7ff8_dead_beef_0001),
        f64::NEG_INFINITY,
        -0.0,
        f64::from_bits(0xfff0_0000_0000_0001),
    ];
    let until = Instant::now() + Duration::from_millis(millis);
    let mut k = 0;
    while Instant::now() < until {
        // SAFETY: none — this is the attack: writes nobody may make while
        // others read. The reader must survive them.
        unsafe { data.as_mut_slice_unchecked() }.fill(patterns[k % patterns.len()]);
        k += 1;
    }
}

#[multiproc::test]
fn a_reader_survives_a_process_scribbling_the_array() {
    let len = 1_000_003;
    let data = SharedArray::<f64>::zeroed(len).unwrap();
    let attacker = Process::spawn(scribble, (data.clone(), 500)).unwrap();
    let mut reads = 0;
    while reads < 5 || !attacker.is_finished() {
        // Whatever the attacker wrote is some f64: summing it is no fault.
        let mut seen = 0;
        let mut sum = 0.0;
        data.read_chunks(.., |_, chunk| {
            seen += chunk.len();
            sum += chunk.iter().sum::<f64>();
        });
        assert_eq!(seen, len);
        assert!(sum.is_nan() || sum == 0.0 || sum.is_infinite(), "{sum}");
        let mut copy = vec![0.0; len];
        data.copy_to_slice(0, &mut copy);
        assert!(
            copy.iter()
                .all(|x| x.is_nan() || *x == 0.0 || x.is_infinite())
        );
        reads += 1;
    }
    attacker.join().unwrap();
}
