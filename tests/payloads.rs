//! Numeric payloads through real worker processes, compared bit for bit.
//!
//! Every value goes through the public API only (`Pool::apply` and
//! `Pool::map` of a two-worker pool), so the checks hold whatever the wire
//! format is: a value goes in, the worker computes on it, and the result is
//! compared with the same computation done here, word by word on the bits
//! (floats by `to_bits`, never by `==`, so NaN payloads, signalling NaNs and
//! `-0.0` count).
//!
//! Each worker either flips every bit of what it receives and sends it back
//! (both directions at once, and the result differs from the argument, so an
//! echo does not pass), digests what it received (the argument direction
//! alone), or builds a value from a length (the result direction alone).
//!
//! Covered, for each of `u8` … `u128`, `usize`, `i8` … `i128`, `isize`,
//! `f32` and `f64`:
//! - the edge values one by one, as arguments and (sent flipped) as results:
//!   `MIN`, `MAX`, 0, 1, -1, every power of two and its neighbours (the
//!   varint length boundaries); for floats ±0, ±infinity, `MIN_POSITIVE`,
//!   subnormals, and NaNs of both signs, quiet and signalling, with
//!   payloads; then many scalars in one `map`;
//! - `Vec<T>` of every length that could trip a length prefix or a size
//!   threshold: empty, 1, odd, around 127/128 and 16383/16384, around 64 KiB
//!   of data, and 3 MiB of data (past every size threshold of the transport,
//!   into shared memory);
//! - `Box<[T]>`, `[T; 0]`, `[T; 1]`, `[T; 3]`, `[T; 32]`, `Vec<[T; 3]>`,
//!   `Vec<[T; 16]>`, `Vec<Vec<T>>` and `Option<Vec<T>>` (`Some` and `None`).
//!
//! And, once each: a struct mixing number vectors with strings, nested and
//! optional vectors and a `bool`; an enum whose variants hold vectors; a
//! three-argument worker taking `(Vec<u32>, String, Vec<f64>)`; and types
//! whose serde code takes other paths than the derived one (a sequence
//! written element by element with `serialize_seq` and read back by the
//! default `Vec` deserializer, and a `Vec` read back as a `VecDeque`), as
//! whole arguments and as fields, so that a codec with a fast path for
//! number sequences is checked against the element-by-element one.
//!
//! Last, the first checks of this file: `f64` and `f32` vectors negated
//! (a sign flip, NaN payloads kept), and a struct of a string and floats.

use std::collections::VecDeque;
use std::fmt::Debug;

use multiproc::{Pool, Worker, worker};
use serde::de::DeserializeOwned;
use serde::ser::SerializeSeq;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

// ---------------------------------------------------------------------------
// Values as bits, and the computation the workers do

/// A value that can be compared bit for bit and transformed the same way
/// here and in a worker.
trait Payload: Sized {
    /// Feeds `f` the value as words: every scalar's bits, every length, every
    /// variant index, so two values agree word for word iff they are the same
    /// bits in the same shape.
    fn walk(&self, f: &mut dyn FnMut(u128));
    /// The value with every number's bits inverted (strings reversed, bools
    /// negated), the shape kept: what a flipping worker returns.
    fn flip(self) -> Self;
    /// Whether `self` and `other` are the same words: [`words`] of both,
    /// compared (the containers of many values compare as they go).
    fn same(&self, other: &Self) -> bool {
        words(self) == words(other)
    }
}

/// A primitive number.
trait Scalar: Payload + Copy + Debug + Serialize + DeserializeOwned + Send + 'static {
    /// Its bits, in the low bits of a `u128` (sign-extended for signed
    /// integers).
    fn raw(self) -> u128;
    /// The value whose bits are the low bits of `raw`.
    fn from_raw(raw: u128) -> Self;
    /// The values most likely to be mangled by a codec.
    fn edges() -> Vec<Self>;
}

/// Every power of two below `2^bits`, one either side of it, and their
/// negations (wrapped): for integers, the values at which a varint or
/// zigzag encoding changes length.
fn around_powers_of_two<T: Scalar>(bits: u32) -> impl Iterator<Item = T> {
    (0..bits)
        .flat_map(|k| {
            let p = 1u128 << k;
            [p - 1, p, p + 1]
                .into_iter()
                .flat_map(|x| [x, x.wrapping_neg()])
        })
        .map(T::from_raw)
}

macro_rules! integers {
    ($($t:ty),* $(,)?) => {$(
        impl Scalar for $t {
            fn raw(self) -> u128 {
                self as u128
            }
            fn from_raw(raw: u128) -> Self {
                raw as $t
            }
            fn edges() -> Vec<Self> {
                // `from_raw(u128::MAX)` is -1 (`MAX` again if unsigned).
                let mut edges = vec![<$t>::MIN, <$t>::MAX, 0, 1, Self::from_raw(u128::MAX)];
                edges.extend(around_powers_of_two::<Self>(<$t>::BITS));
                edges
            }
        }
    )*};
}

integers!(
    u8, u16, u32, u64, u128, usize, i8, i16, i32, i64, i128, isize
);

macro_rules! floats {
    ($($t:ident: $nans:expr),* $(,)?) => {$(
        impl Scalar for $t {
            fn raw(self) -> u128 {
                self.to_bits().into()
            }
            fn from_raw(raw: u128) -> Self {
                $t::from_bits(raw as _)
            }
            fn edges() -> Vec<Self> {
                let mut edges = vec![
                    0.0,
                    -0.0,
                    1.0,
                    -1.0,
                    $t::INFINITY,
                    $t::NEG_INFINITY,
                    $t::MIN,
                    $t::MAX,
                    $t::EPSILON,
                    $t::MIN_POSITIVE,
                    -$t::MIN_POSITIVE,
                    // The smallest and the largest subnormal, both signs.
                    $t::from_bits(1),
                    -$t::from_bits(1),
                    $t::from_bits($t::MIN_POSITIVE.to_bits() - 1),
                    -$t::from_bits($t::MIN_POSITIVE.to_bits() - 1),
                    $t::NAN,
                ];
                edges.extend($nans.into_iter().map($t::from_bits));
                edges
            }
        }
    )*};
}

floats! {
    // Signalling (quiet bit clear) and quiet NaNs with payloads, both signs,
    // and the all-ones patterns.
    f32: [
        0x7f80_0001_u32,
        0xff80_0001,
        0x7fa0_0000,
        0x7fc0_dead,
        0xffc0_dead,
        0x7fff_ffff,
        0xffff_ffff,
    ],
    f64: [
        0x7ff0_0000_0000_0001_u64,
        0xfff0_0000_0000_0001,
        0x7ff4_0000_0000_0000,
        0x7ff8_0000_dead_beef,
        0xfff8_0000_dead_beef,
        0x7fff_ffff_ffff_ffff,
        0xffff_ffff_ffff_ffff,
    ],
}

/// Every scalar is a payload of one word; its flip inverts all its bits
/// (for floats: NaNs become numbers and back, payloads and all).
impl<T: Scalar> Payload for T {
    fn walk(&self, f: &mut dyn FnMut(u128)) {
        f(self.raw());
    }
    fn flip(self) -> Self {
        Self::from_raw(!self.raw())
    }
    fn same(&self, other: &Self) -> bool {
        self.raw() == other.raw()
    }
}

fn walk_items<X: Payload>(items: &[X], f: &mut dyn FnMut(u128)) {
    f(items.len() as u128);
    for item in items {
        item.walk(f);
    }
}

fn same_items<X: Payload>(a: &[X], b: &[X]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(a, b)| a.same(b))
}

impl<X: Payload> Payload for Vec<X> {
    fn walk(&self, f: &mut dyn FnMut(u128)) {
        walk_items(self, f);
    }
    fn same(&self, other: &Self) -> bool {
        same_items(self, other)
    }
    fn flip(self) -> Self {
        self.into_iter().map(Payload::flip).collect()
    }
}

impl<X: Payload> Payload for Box<[X]> {
    fn walk(&self, f: &mut dyn FnMut(u128)) {
        walk_items(self, f);
    }
    fn same(&self, other: &Self) -> bool {
        same_items(self, other)
    }
    fn flip(self) -> Self {
        self.into_vec().flip().into_boxed_slice()
    }
}

impl<X: Payload, const N: usize> Payload for [X; N] {
    fn walk(&self, f: &mut dyn FnMut(u128)) {
        walk_items(self, f);
    }
    fn same(&self, other: &Self) -> bool {
        same_items(self, other)
    }
    fn flip(self) -> Self {
        self.map(Payload::flip)
    }
}

impl<X: Payload> Payload for Option<X> {
    fn walk(&self, f: &mut dyn FnMut(u128)) {
        f(u128::from(self.is_some()));
        if let Some(x) = self {
            x.walk(f);
        }
    }
    fn flip(self) -> Self {
        self.map(Payload::flip)
    }
    fn same(&self, other: &Self) -> bool {
        match (self, other) {
            (Some(a), Some(b)) => a.same(b),
            (a, b) => a.is_none() && b.is_none(),
        }
    }
}

impl Payload for String {
    fn walk(&self, f: &mut dyn FnMut(u128)) {
        walk_items(self.as_bytes(), f);
    }
    fn flip(self) -> Self {
        self.chars().rev().collect()
    }
}

impl Payload for bool {
    fn walk(&self, f: &mut dyn FnMut(u128)) {
        f(u128::from(*self));
    }
    fn flip(self) -> Self {
        !self
    }
}

impl<A: Payload, B: Payload> Payload for (A, B) {
    fn walk(&self, f: &mut dyn FnMut(u128)) {
        self.0.walk(f);
        self.1.walk(f);
    }
    fn flip(self) -> Self {
        (self.0.flip(), self.1.flip())
    }
    fn same(&self, other: &Self) -> bool {
        self.0.same(&other.0) && self.1.same(&other.1)
    }
}

impl<A: Payload, B: Payload, C: Payload> Payload for (A, B, C) {
    fn walk(&self, f: &mut dyn FnMut(u128)) {
        self.0.walk(f);
        self.1.walk(f);
        self.2.walk(f);
    }
    fn flip(self) -> Self {
        (self.0.flip(), self.1.flip(), self.2.flip())
    }
    fn same(&self, other: &Self) -> bool {
        self.0.same(&other.0) && self.1.same(&other.1) && self.2.same(&other.2)
    }
}

/// The words of `value` ([`Payload::walk`]).
fn words<P: Payload>(value: &P) -> Vec<u128> {
    let mut out = Vec::new();
    value.walk(&mut |w| out.push(w));
    out
}

/// How many words `value` has and a hash of them: what a digesting worker
/// returns about its argument.
fn digest<P: Payload>(value: &P) -> (u64, u64) {
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    let (mut count, mut hash) = (0u64, 0xcbf2_9ce4_8422_2325_u64);
    value.walk(&mut |w| {
        count += 1;
        hash = (hash ^ w as u64).wrapping_mul(PRIME);
        hash = (hash ^ (w >> 64) as u64).wrapping_mul(PRIME);
    });
    (count, hash)
}

/// The edge values, then each of them flipped: a flipping worker given
/// these returns every edge value too (a flip alone maps a signalling NaN
/// to a number, so without the second half no NaN payload of
/// [`Scalar::edges`] would be a result).
fn edges_both_ways<T: Scalar>() -> Vec<T> {
    let edges = T::edges();
    let flipped = edges.iter().map(|x| x.flip());
    edges.iter().copied().chain(flipped).collect()
}

/// `n` numbers: [`edges_both_ways`] first, then pseudo-random bit patterns
/// of every magnitude with an edge value every fourth element.
fn pattern<T: Scalar>(n: usize) -> Vec<T> {
    let edges = edges_both_ways::<T>();
    (0..n)
        .map(|i| match i.checked_sub(edges.len()) {
            None => edges[i],
            Some(k) if k % 4 == 0 => edges[(k / 4) % edges.len()],
            Some(k) => {
                let (a, b) = (mix(k as u64), mix(!(k as u64)));
                T::from_raw(((u128::from(a) << 64) | u128::from(b)) >> (a % 128))
            }
        })
        .collect()
}

/// splitmix64's output function.
fn mix(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// [`pattern`] cut into `count` arrays of `N`.
fn arrays<T: Scalar, const N: usize>(count: usize) -> Vec<[T; N]> {
    let flat = pattern::<T>(count * N);
    (0..count)
        .map(|k| std::array::from_fn(|i| flat[k * N + i]))
        .collect()
}

/// Vector lengths for `T`: the small and boundary ones, then about 64 KiB
/// of data either side (where the transport of this version starts to put
/// frames in shared memory), then 3 MiB of data.
fn lengths<T>() -> Vec<usize> {
    let size = std::mem::size_of::<T>();
    let around_64k = (64 << 10) / size;
    let mut lengths = vec![0, 1, 2, 7, 127, 128, 129, 1001, 16383, 16384, 16385];
    lengths.extend([around_64k - 1, around_64k, around_64k + 1, (3 << 20) / size]);
    lengths
}

#[track_caller]
fn assert_same_bits<P: Payload>(got: &P, want: &P, what: &str) {
    if got.same(want) {
        return;
    }
    let (got, want) = (words(got), words(want));
    if let Some(i) = got.iter().zip(&want).position(|(g, w)| g != w) {
        panic!(
            "{what}: word {i} of {} is {:#x}, expected {:#x}",
            want.len(),
            got[i],
            want[i]
        );
    }
    assert_eq!(got.len(), want.len(), "{what}: word count");
}

// ---------------------------------------------------------------------------
// Calls through the pool

/// Runs `worker` on each input with `apply`.
#[track_caller]
fn check_apply<W>(pool: &Pool, worker: W, inputs: &[W::Args], expected: &[W::Output], what: &str)
where
    W: Worker + Debug,
    W::Args: Clone,
    W::Output: Payload,
{
    assert_eq!(inputs.len(), expected.len(), "{what}: one result per input");
    for (k, (input, want)) in inputs.iter().zip(expected).enumerate() {
        let got = pool
            .apply(worker, input.clone())
            .unwrap_or_else(|e| panic!("{what}: apply {worker:?} to input {k}: {e}"));
        assert_same_bits(&got, want, &format!("{what}: apply to input {k}"));
    }
}

/// Runs `worker` on all the inputs in one `map`.
#[track_caller]
fn check_map<W>(pool: &Pool, worker: W, inputs: Vec<W::Args>, expected: &[W::Output], what: &str)
where
    W: Worker + Debug,
    W::Output: Payload,
{
    let got = pool
        .map(worker, inputs)
        .unwrap_or_else(|e| panic!("{what}: map {worker:?}: {e}"));
    assert_eq!(got.len(), expected.len(), "{what}: map result count");
    for (k, (got, want)) in got.iter().zip(expected).enumerate() {
        assert_same_bits(got, want, &format!("{what}: map item {k}"));
    }
}

/// Runs `worker` on each input with `apply`, then on all of them in one
/// `map`, and checks every result against `expected` computed here.
#[track_caller]
fn check_calls<W>(
    pool: &Pool,
    worker: W,
    inputs: Vec<W::Args>,
    expected: impl Fn(&W::Args) -> W::Output,
    what: &str,
) where
    W: Worker + Debug,
    W::Args: Clone,
    W::Output: Payload,
{
    let want: Vec<W::Output> = inputs.iter().map(expected).collect();
    check_apply(pool, worker, &inputs, &want, what);
    check_map(pool, worker, inputs, &want, what);
}

/// [`check_calls`] for a worker that flips its argument.
#[track_caller]
fn check_flips<W, P>(pool: &Pool, worker: W, inputs: Vec<P>, what: &str)
where
    W: Worker<Args = P, Output = P> + Debug,
    P: Payload + Clone,
{
    check_calls(pool, worker, inputs, |v| v.clone().flip(), what);
}

/// A `#[worker]` per `name: Type` that returns its argument flipped.
macro_rules! flipping_workers {
    ($($name:ident: $ty:ty),* $(,)?) => {$(
        #[worker]
        fn $name(v: $ty) -> $ty {
            v.flip()
        }
    )*};
}

// ---------------------------------------------------------------------------
// Every numeric type, in every container

/// A module per numeric type `T`: its workers and three tests.
macro_rules! numeric_type {
    ($($module:ident: $t:ty),* $(,)?) => {$(
        mod $module {
            use super::*;

            type T = $t;

            flipping_workers! {
                scalar: T,
                vector: Vec<T>,
                boxed: Box<[T]>,
                array0: [T; 0],
                array1: [T; 1],
                array3: [T; 3],
                array32: [T; 32],
                triples: Vec<[T; 3]>,
                sixteens: Vec<[T; 16]>,
                nested: Vec<Vec<T>>,
                optional: Option<Vec<T>>,
            }

            /// What the worker received, digested there.
            #[worker]
            fn digested(v: Vec<T>) -> (u64, u64) {
                digest(&v)
            }

            /// A vector made in the worker.
            #[worker]
            fn made(n: u64) -> Vec<T> {
                pattern(n as usize)
            }

            /// Each edge value alone (`apply`) and all in one `map`, then
            /// many scalars in one `map` (several batches).
            #[multiproc::test]
            fn edge_values() {
                let pool = Pool::new(2).unwrap();
                check_flips(&pool, scalar, edges_both_ways(), stringify!($t));
                let many = pattern::<T>(20_000);
                let want: Vec<T> = many.iter().map(|x| x.flip()).collect();
                check_map(&pool, scalar, many, &want, concat!("20000 ", stringify!($t)));
            }

            /// `Vec<T>` of every length: both ways, then each way alone. To
            /// save time the 3 MiB one takes each path once: both ways by
            /// `map`, one way at a time by `apply`.
            #[multiproc::test]
            fn vector_lengths() {
                let pool = Pool::new(2).unwrap();
                let what = concat!("Vec<", stringify!($t), ">");
                let vectors: Vec<Vec<T>> = lengths::<T>().into_iter().map(pattern).collect();
                let flipped: Vec<Vec<T>> = vectors.iter().map(|v| v.clone().flip()).collect();
                let sizes: Vec<u64> = vectors.iter().map(|v| v.len() as u64).collect();
                let digests: Vec<(u64, u64)> = vectors.iter().map(digest).collect();
                let small = vectors.len() - 1;
                check_apply(&pool, vector, &vectors[..small], &flipped[..small], what);
                check_calls(&pool, made, sizes[..small].to_vec(), |&n| pattern(n as usize), what);
                check_calls(&pool, digested, vectors[..small].to_vec(), digest, what);
                check_apply(&pool, made, &sizes[small..], &vectors[small..], what);
                check_apply(&pool, digested, &vectors[small..], &digests[small..], what);
                check_map(&pool, vector, vectors, &flipped, what);
            }

            /// Boxed slices, arrays, vectors of arrays and of vectors, and
            /// optional vectors.
            #[multiproc::test]
            fn containers() {
                let pool = Pool::new(2).unwrap();
                let what = stringify!($t);
                let boxes = [0, 1, 7, 128, 1001].map(|n| pattern::<T>(n).into_boxed_slice());
                check_flips(&pool, boxed, boxes.into(), what);
                check_flips(&pool, array0, arrays(3), what);
                let edges = edges_both_ways::<T>().len();
                check_flips(&pool, array1, arrays(edges), what);
                check_flips(&pool, array3, arrays(edges / 3 + 1), what);
                check_flips(&pool, array32, arrays(edges / 32 + 1), what);
                check_flips(&pool, triples, [0, 1, 7, 129, 1001].map(arrays).into(), what);
                check_flips(&pool, sixteens, [0, 1, 7, 129, 1001].map(arrays).into(), what);
                let ragged: Vec<Vec<T>> = (0..40).map(|k| pattern(k * k % 37)).collect();
                let nests = vec![vec![], vec![vec![]], ragged, vec![pattern(16384), vec![]]];
                check_flips(&pool, nested, nests, what);
                let options = vec![None, Some(vec![]), Some(pattern(1)), Some(pattern(1001))];
                check_flips(&pool, optional, options, what);
            }
        }
    )*};
}

numeric_type! {
    of_u8: u8,
    of_u16: u16,
    of_u32: u32,
    of_u64: u64,
    of_u128: u128,
    of_usize: usize,
    of_i8: i8,
    of_i16: i16,
    of_i32: i32,
    of_i64: i64,
    of_i128: i128,
    of_isize: isize,
    of_f32: f32,
    of_f64: f64,
}

// ---------------------------------------------------------------------------
// Vectors among other fields

/// Number vectors (which a codec may copy whole) among fields that go
/// element by element.
#[derive(Serialize, Deserialize, Debug, Clone)]
struct Mixed {
    id: u32,
    name: String,
    samples: Vec<f64>,
    counts: Vec<u16>,
    tags: Vec<String>,
    points: Vec<[f32; 3]>,
    maybe: Option<Vec<i64>>,
    nested: Vec<Vec<u8>>,
    flag: bool,
}

impl Payload for Mixed {
    fn walk(&self, f: &mut dyn FnMut(u128)) {
        self.id.walk(f);
        self.name.walk(f);
        self.samples.walk(f);
        self.counts.walk(f);
        self.tags.walk(f);
        self.points.walk(f);
        self.maybe.walk(f);
        self.nested.walk(f);
        self.flag.walk(f);
    }
    fn flip(self) -> Self {
        Mixed {
            id: self.id.flip(),
            name: self.name.flip(),
            samples: self.samples.flip(),
            counts: self.counts.flip(),
            tags: self.tags.flip(),
            points: self.points.flip(),
            maybe: self.maybe.flip(),
            nested: self.nested.flip(),
            flag: self.flag.flip(),
        }
    }
}

impl Mixed {
    /// A `Mixed` whose vectors have about `n` elements each.
    fn of_size(n: usize) -> Mixed {
        Mixed {
            id: n as u32,
            name: format!("naïve №{n}"),
            samples: pattern(n),
            counts: pattern(n + 1),
            tags: (0..n % 5).map(|k| "é".repeat(k)).collect(),
            points: arrays(n / 3),
            maybe: (n % 2 == 0).then(|| pattern(n)),
            nested: vec![pattern(n), vec![], pattern(n / 2)],
            flag: n % 3 == 0,
        }
    }
}

flipping_workers! {
    mixed: Mixed,
}

#[worker]
fn mixed_digest(m: Mixed) -> (u64, u64) {
    digest(&m)
}

/// Vectors in enum variants, among other fields.
#[derive(Serialize, Deserialize, Debug, Clone)]
enum Shape {
    Empty,
    Ints(Vec<i32>),
    Pair(u8, Vec<f64>),
    Named {
        label: String,
        points: Vec<[f32; 3]>,
    },
    Maybe(Option<Vec<u64>>),
}

impl Payload for Shape {
    fn walk(&self, f: &mut dyn FnMut(u128)) {
        match self {
            Shape::Empty => f(0),
            Shape::Ints(v) => {
                f(1);
                v.walk(f);
            }
            Shape::Pair(tag, v) => {
                f(2);
                tag.walk(f);
                v.walk(f);
            }
            Shape::Named { label, points } => {
                f(3);
                label.walk(f);
                points.walk(f);
            }
            Shape::Maybe(v) => {
                f(4);
                v.walk(f);
            }
        }
    }
    fn flip(self) -> Self {
        match self {
            Shape::Empty => Shape::Empty,
            Shape::Ints(v) => Shape::Ints(v.flip()),
            Shape::Pair(tag, v) => Shape::Pair(tag.flip(), v.flip()),
            Shape::Named { label, points } => Shape::Named {
                label: label.flip(),
                points: points.flip(),
            },
            Shape::Maybe(v) => Shape::Maybe(v.flip()),
        }
    }
}

flipping_workers! {
    shape: Shape,
}

/// Three arguments: the call's arguments travel as one tuple.
#[worker]
fn three(ints: Vec<u32>, text: String, floats: Vec<f64>) -> (Vec<u32>, String, Vec<f64>) {
    (ints, text, floats).flip()
}

#[multiproc::test]
fn a_struct_mixing_number_vectors_and_other_fields() {
    let pool = Pool::new(2).unwrap();
    // The largest has about 1.8 MiB of numbers.
    let values = || -> Vec<Mixed> { [0, 1, 2, 7, 128, 1001, 100_000].map(Mixed::of_size).into() };
    check_flips(&pool, mixed, values(), "Mixed");
    check_calls(&pool, mixed_digest, values(), digest, "Mixed");
}

#[multiproc::test]
fn enum_variants_holding_vectors() {
    let pool = Pool::new(2).unwrap();
    let shapes = vec![
        Shape::Empty,
        Shape::Ints(vec![]),
        Shape::Ints(pattern(1001)),
        Shape::Pair(7, pattern(129)),
        Shape::Named {
            label: "triangle".into(),
            points: arrays(3),
        },
        Shape::Maybe(None),
        Shape::Maybe(Some(pattern(16384))),
        Shape::Ints(pattern(300_000)),
    ];
    check_flips(&pool, shape, shapes, "Shape");
}

#[multiproc::test]
fn tuples_of_vectors_as_arguments() {
    let pool = Pool::new(2).unwrap();
    let tuples = [0, 1, 127, 16385, 200_000]
        .map(|n| (pattern(n), "ünïcode".repeat(n % 7), pattern(n / 2)))
        .into();
    check_flips(&pool, three, tuples, "(Vec<u32>, String, Vec<f64>)");
}

// ---------------------------------------------------------------------------
// Sequences whose serde code is not the derived one

/// Writes `items` one `serialize_element` at a time (what a hand-written
/// `Serialize` does, rather than `collect_seq` or `Vec`'s own impl).
fn write_by_element<T: Serialize, S: Serializer>(items: &[T], s: S) -> Result<S::Ok, S::Error> {
    let mut seq = s.serialize_seq(Some(items.len()))?;
    for item in items {
        seq.serialize_element(item)?;
    }
    seq.end()
}

/// Reads a sequence as a `VecDeque` (element by element through its own
/// visitor) and gives it back as a `Vec`.
fn read_as_deque<'de, T: Deserialize<'de>, D: Deserializer<'de>>(d: D) -> Result<Vec<T>, D::Error> {
    VecDeque::<T>::deserialize(d).map(Vec::from)
}

/// A vector written by [`write_by_element`] and read by `Vec`'s own
/// `Deserialize`.
#[derive(Debug, Clone)]
struct ByElement<T>(Vec<T>);

impl<T: Serialize> Serialize for ByElement<T> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        write_by_element(&self.0, s)
    }
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for ByElement<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Vec::deserialize(d).map(ByElement)
    }
}

/// A vector written by `Vec`'s own `Serialize` and read by
/// [`read_as_deque`].
#[derive(Debug, Clone)]
struct ViaDeque<T>(Vec<T>);

impl<T: Serialize> Serialize for ViaDeque<T> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.0.serialize(s)
    }
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for ViaDeque<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        read_as_deque(d).map(ViaDeque)
    }
}

macro_rules! newtype_payload {
    ($($name:ident),*) => {$(
        impl<T: Scalar> Payload for $name<T> {
            fn walk(&self, f: &mut dyn FnMut(u128)) {
                self.0.walk(f);
            }
            fn flip(self) -> Self {
                $name(self.0.flip())
            }
            fn same(&self, other: &Self) -> bool {
                self.0.same(&other.0)
            }
        }
    )*};
}

newtype_payload!(ByElement, ViaDeque);

/// The same paths as fields, beside derived ones.
#[derive(Serialize, Deserialize, Debug, Clone)]
struct OtherPaths {
    #[serde(serialize_with = "write_by_element")]
    ints: Vec<u32>,
    #[serde(serialize_with = "write_by_element")]
    floats: Vec<f64>,
    #[serde(serialize_with = "write_by_element")]
    wide: Vec<i128>,
    derived: Vec<u16>,
    #[serde(deserialize_with = "read_as_deque")]
    longs: Vec<u64>,
    #[serde(deserialize_with = "read_as_deque")]
    singles: Vec<f32>,
    #[serde(
        serialize_with = "write_by_element",
        deserialize_with = "read_as_deque"
    )]
    both: Vec<i16>,
}

impl OtherPaths {
    fn of_size(n: usize) -> OtherPaths {
        OtherPaths {
            ints: pattern(n),
            floats: pattern(n + 1),
            wide: pattern(n / 2),
            derived: pattern(n),
            longs: pattern(n + 3),
            singles: pattern(n),
            both: pattern(n / 3),
        }
    }
}

impl Payload for OtherPaths {
    fn walk(&self, f: &mut dyn FnMut(u128)) {
        self.ints.walk(f);
        self.floats.walk(f);
        self.wide.walk(f);
        self.derived.walk(f);
        self.longs.walk(f);
        self.singles.walk(f);
        self.both.walk(f);
    }
    fn flip(self) -> Self {
        OtherPaths {
            ints: self.ints.flip(),
            floats: self.floats.flip(),
            wide: self.wide.flip(),
            derived: self.derived.flip(),
            longs: self.longs.flip(),
            singles: self.singles.flip(),
            both: self.both.flip(),
        }
    }
}

flipping_workers! {
    by_element_u32: ByElement<u32>,
    by_element_f64: ByElement<f64>,
    via_deque_u64: ViaDeque<u64>,
    via_deque_f32: ViaDeque<f32>,
    other_paths: OtherPaths,
}

/// A `Vec<u32>` argument flipped into a `ByElement` result: `Vec`'s own
/// serde one way, the hand-written `Serialize` the other.
#[worker]
fn into_by_element(v: Vec<u32>) -> ByElement<u32> {
    ByElement(v.flip())
}

/// A `ViaDeque` argument flipped into a `Vec<u64>` result: read as a
/// `VecDeque` one way, `Vec`'s own serde the other.
#[worker]
fn from_via_deque(v: ViaDeque<u64>) -> Vec<u64> {
    v.0.flip()
}

const OTHER_LENGTHS: [usize; 8] = [0, 1, 7, 128, 1001, 16384, 16385, 40_000];

/// `n` elements of [`pattern`] in a newtype.
fn wrapped<T: Scalar, W>(wrap: fn(Vec<T>) -> W) -> Vec<W> {
    OTHER_LENGTHS.iter().map(|&n| wrap(pattern(n))).collect()
}

#[multiproc::test]
fn sequences_written_or_read_element_by_element() {
    let pool = Pool::new(2).unwrap();
    check_flips(&pool, by_element_u32, wrapped(ByElement), "ByElement<u32>");
    check_flips(&pool, by_element_f64, wrapped(ByElement), "ByElement<f64>");
    check_flips(&pool, via_deque_u64, wrapped(ViaDeque), "ViaDeque<u64>");
    check_flips(&pool, via_deque_f32, wrapped(ViaDeque), "ViaDeque<f32>");
    let others = OTHER_LENGTHS.map(OtherPaths::of_size).into();
    check_flips(&pool, other_paths, others, "OtherPaths");
    check_calls(
        &pool,
        into_by_element,
        wrapped(|v| v),
        |v| ByElement(v.clone().flip()),
        "Vec<u32> -> ByElement<u32>",
    );
    check_calls(
        &pool,
        from_via_deque,
        wrapped(ViaDeque),
        |v| v.0.clone().flip(),
        "ViaDeque<u64> -> Vec<u64>",
    );
}

// ---------------------------------------------------------------------------
// Float vectors at their awkward values, negated

/// Returns `v` with every element negated (NaN payloads and all: a sign
/// flip keeps the other bits).
#[worker]
fn negate64(v: Vec<f64>) -> Vec<f64> {
    v.into_iter().map(|x| -x).collect()
}

#[worker]
fn negate32(v: Vec<f32>) -> Vec<f32> {
    v.into_iter().map(|x| -x).collect()
}

/// The bits of each element, computed in the worker.
#[worker]
fn bits64(v: Vec<f64>) -> Vec<u64> {
    v.iter().map(|x| x.to_bits()).collect()
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
struct Record {
    name: String,
    values: Vec<f64>,
}

#[worker]
fn rename(r: Record) -> Record {
    Record {
        name: r.name.to_uppercase(),
        values: r.values,
    }
}

fn awkward() -> Vec<f64> {
    let mut v = vec![
        0.0,
        -0.0,
        f64::INFINITY,
        f64::NEG_INFINITY,
        f64::MIN,
        f64::MAX,
        f64::MIN_POSITIVE,
        f64::from_bits(1),
        f64::from_bits(0x7ff8_0000_dead_beef),
        f64::from_bits(0xfff0_0000_0000_0001),
    ];
    v.extend((0..100_003).map(|i| f64::from(i) * 0.25 - 11.0));
    v
}

fn negated_bits64(v: &[f64]) -> Vec<u64> {
    v.iter().map(|x| (-x).to_bits()).collect()
}

#[multiproc::test]
fn float_vectors_come_back_bit_for_bit() {
    let pool = Pool::new(2).unwrap();
    let all = awkward();
    // Empty, odd and large lengths; the large one goes through the
    // workers' shared buffers.
    for n in [0, 1, 3, 10, 1001, all.len()] {
        let v = all[..n].to_vec();
        let back = pool.apply(negate64, v.clone()).unwrap();
        let got: Vec<u64> = back.iter().map(|x| x.to_bits()).collect();
        assert_eq!(got, negated_bits64(&v), "{n} f64s");
        // What the worker received, as the worker saw it.
        let seen = pool.apply(bits64, v.clone()).unwrap();
        assert_eq!(
            seen,
            v.iter().map(|x| x.to_bits()).collect::<Vec<_>>(),
            "{n} f64s sent"
        );

        let v32: Vec<f32> = v.iter().map(|&x| x as f32).collect();
        let back = pool.apply(negate32, v32.clone()).unwrap();
        assert_eq!(
            back.iter().map(|x| x.to_bits()).collect::<Vec<_>>(),
            v32.iter().map(|x| (-x).to_bits()).collect::<Vec<_>>(),
            "{n} f32s"
        );
    }
    // Many vectors in one map: items of a batch, one after the other.
    let inputs: Vec<Vec<f64>> = (0..200).map(|k| all[k..k + k % 17].to_vec()).collect();
    let outputs = pool.map(negate64, inputs.clone()).unwrap();
    for (input, output) in inputs.iter().zip(&outputs) {
        assert_eq!(
            output.iter().map(|x| x.to_bits()).collect::<Vec<_>>(),
            negated_bits64(input)
        );
    }
}

#[multiproc::test]
fn a_struct_mixing_a_string_and_floats_round_trips() {
    let pool = Pool::new(2).unwrap();
    let r = Record {
        name: "naïve".to_owned(),
        values: awkward(),
    };
    let back = pool.apply(rename, r.clone()).unwrap();
    assert_eq!(back.name, "NAÏVE");
    assert_eq!(
        back.values.iter().map(|x| x.to_bits()).collect::<Vec<_>>(),
        r.values.iter().map(|x| x.to_bits()).collect::<Vec<_>>()
    );
}
