//! Criterion micro-benches of the hot paths:
//!
//! - `round_trip`: one tiny task through `apply`, and through `submit` +
//!   `wait`, on a pool of 1 — the cost a single call pays;
//! - `batch`: one batch of 65,536 `x + 1` items through `map_chunked`, from
//!   a range (sent as its first integer and a count; the child counts the
//!   arguments out) and from a `Vec` (the arguments are written out dense
//!   and sent); the results come back dense and are decoded in the parent;
//! - `codec`: postcard's own encoder and decoder on the wire's item format,
//!   without any process: a batch of 65,536 `u64` items, and a 1 MiB
//!   `Vec<u8>` (which serde encodes element by element). The runtime now
//!   writes and reads that format with its own serde `Encoder`/`Decoder`
//!   (`wire.rs`, internal): these rows are postcard's baseline; the
//!   runtime's codec is measured through `batch` and the compare bench.
//!
//! - `queue`: one `put` and one `get` of a `u64` through a `Queue`, in one
//!   process.
//!
//! ```text
//! cargo bench --bench micro
//! cargo bench --bench micro -- round_trip   # one group
//! ```

use std::hint::black_box;

use criterion::{BatchSize, Criterion, Throughput};
use multiproc::{Pool, worker};

const BATCH: u64 = 65_536;

/// `x + 1`: the tiny task.
#[worker]
fn inc(x: u64) -> u64 {
    x + 1
}

fn round_trip(c: &mut Criterion, pool: &Pool) {
    let mut g = c.benchmark_group("round_trip");
    g.bench_function("apply", |b| {
        b.iter(|| pool.apply(inc, black_box(1)).expect("apply"))
    });
    g.bench_function("submit_wait", |b| {
        b.iter(|| pool.submit(inc, black_box(1)).wait().expect("submit"))
    });
    g.finish();
}

fn batch(c: &mut Criterion, pool: &Pool) {
    let mut g = c.benchmark_group("batch");
    g.throughput(Throughput::Elements(BATCH));
    g.bench_function("map_chunked_65536", |b| {
        b.iter(|| {
            pool.map_chunked(inc, 0..black_box(BATCH), BATCH as usize)
                .expect("map")
        })
    });
    // The same batch from a `Vec`: its arguments are sent (a range's are
    // not: the worker counts them out).
    let input: Vec<u64> = (0..BATCH).collect();
    g.bench_function("map_chunked_vec_65536", |b| {
        b.iter(|| {
            pool.map_chunked(inc, black_box(&input).iter().copied(), BATCH as usize)
                .expect("map")
        })
    });
    g.finish();
}

/// Each item as the wire frames it: a length byte, then postcard.
fn encode_items(items: impl Iterator<Item = u64>, out: &mut Vec<u8>) {
    for x in items {
        let at = out.len();
        out.push(0);
        postcard::to_io(&x, &mut *out).expect("encode");
        out[at] = ((out.len() - at - 1) << 2) as u8;
    }
}

fn decode_items(mut input: &[u8], out: &mut Vec<u64>) {
    while let Some((&header, rest)) = input.split_first() {
        let (body, rest) = rest.split_at(usize::from(header >> 2));
        out.push(postcard::from_bytes(body).expect("decode"));
        input = rest;
    }
}

fn codec(c: &mut Criterion) {
    let mut g = c.benchmark_group("codec");
    g.throughput(Throughput::Elements(BATCH));
    let mut buf = Vec::with_capacity(10 * BATCH as usize);
    g.bench_function("encode_u64_batch_65536", |b| {
        b.iter(|| {
            buf.clear();
            encode_items(0..black_box(BATCH), &mut buf);
        })
    });
    let mut encoded = Vec::new();
    encode_items(0..BATCH, &mut encoded);
    let mut decoded = Vec::with_capacity(BATCH as usize);
    g.bench_function("decode_u64_batch_65536", |b| {
        b.iter(|| {
            decoded.clear();
            decode_items(black_box(&encoded), &mut decoded);
        })
    });

    let bytes: Vec<u8> = (0..1 << 20).map(|i: u32| i as u8).collect();
    g.throughput(Throughput::Bytes(bytes.len() as u64));
    g.bench_function("encode_vec_u8_1mib", |b| {
        b.iter(|| postcard::to_stdvec(black_box(&bytes)).expect("encode"))
    });
    let encoded = postcard::to_stdvec(&bytes).expect("encode");
    g.bench_function("decode_vec_u8_1mib", |b| {
        b.iter_batched(
            || (),
            |()| postcard::from_bytes::<Vec<u8>>(black_box(&encoded)).expect("decode"),
            BatchSize::SmallInput,
        )
    });
    g.finish();
}

/// Queue put + get in one process: the cost of the shared-memory ring
/// itself (lock, copy, unlock; no waiting).
fn queue(c: &mut Criterion) {
    let mut g = c.benchmark_group("queue");
    let q: multiproc::Queue<u64> = multiproc::Queue::unbounded().expect("a queue");
    g.bench_function("put_get_u64", |b| {
        b.iter(|| {
            q.put(black_box(&42)).expect("put");
            black_box(q.get().expect("get"))
        });
    });
    g.finish();
}

#[multiproc::entry]
fn main() {
    let mut c = Criterion::default().configure_from_args();
    let pool = Pool::new(1).expect("a pool of 1");
    round_trip(&mut c, &pool);
    batch(&mut c, &pool);
    drop(pool);
    codec(&mut c);
    queue(&mut c);
    c.final_summary();
}
