//! The wire protocol between a pool and its worker processes.
//!
//! Frames on the control socket: `u32` little-endian body length, one tag
//! byte, then the body. Inside `RUN` and `DONE` bodies, each item is framed
//! as a LEB128 header `(len << 2) | status` followed by `len` bytes of
//! postcard, so one bad item can be skipped without losing the others, and
//! a batch can be split after a crash without re-encoding.
//!
//! A batch of `map` or `imap` whose arguments are all of one primitive type
//! (integers, floats, `bool`) is *dense* instead: the values little-endian
//! one after the other, no headers, and the [`DENSE`] bit set in the tag;
//! its results come back dense too when they are primitive and none failed
//! (see [`dense_width`]).
//!
//! A `RUN` or `DONE` body of 64 KiB or more may travel through a shared
//! buffer of the worker's instead ([`shm::arena`](crate::shm::arena)): the
//! socket then carries a small `RUN_SHARED` or `DONE_SHARED` frame that says
//! where it is.

use std::any::{Any, TypeId, type_name};
use std::io::{self, Read};
use std::panic::{AssertUnwindSafe, catch_unwind};

use serde::de::{DeserializeOwned, DeserializeSeed, Visitor};
use serde::{Deserialize, Serialize};

use crate::worker::Worker;

/// Bumped whenever the frame layout changes.
pub(crate) const PROTOCOL_VERSION: u32 = 10;

/// Tag, batch id, elapsed ns and items run: where a `DONE` frame's result
/// items start.
pub(crate) const DONE_HEADER: usize = 1 + 8 + 8 + 4;

// Parent → child.
pub(crate) const TAG_RUN: u8 = 1;
pub(crate) const TAG_SHUTDOWN: u8 = 2;
/// First frame to a new child: carries its progress page as a descriptor.
pub(crate) const TAG_SETUP: u8 = 3;
/// A `RUN` frame whose payload is in the request arena (see
/// [`shm::arena`](crate::shm::arena)): the head of a `RUN` frame, then the
/// payload's offset in the arena and its length, as `u64`s.
pub(crate) const TAG_RUN_SHARED: u8 = 4;
/// New arenas for the child: the request arena's length and that of each
/// of the [`REPLY_ARENAS`] reply arenas (`u64` each), their descriptors
/// attached (the request arena's first); two zero lengths and no
/// descriptors to drop them.
pub(crate) const TAG_ARENAS: u8 = 5;
/// Reply arenas per child, which it uses in turn: as many as the batches
/// the parent sends ahead (`PIPELINE_DEPTH` in the driver), so that a
/// child that runs ahead of the thread reading its replies still finds a
/// free one. With two, a quarter of the replies of a `map` over 10 M items
/// (and two to four of the eight of one over 100 k) went through the
/// socket instead: copied into and out of the kernel, with more wake-ups.
pub(crate) const REPLY_ARENAS: usize = 4;
/// A `RUN` frame whose arguments are consecutive integers (see
/// [`take_range`]): the head of a `RUN` frame, then the width of one
/// (`u8`), the first one's dense bytes as a `u64`, and how many (`u32`).
/// Always [`DENSE`]: the child makes the arguments itself.
pub(crate) const TAG_RUN_RANGE: u8 = 6;
/// Bytes of a `RUN_RANGE` frame after the head of a `RUN` frame.
pub(crate) const RANGE_BODY: usize = 1 + 8 + 4;
// Child → parent.
pub(crate) const TAG_HELLO: u8 = 16;
pub(crate) const TAG_DONE: u8 = 17;
pub(crate) const TAG_FAILED: u8 = 18;
/// A `DONE` frame whose body is in a reply arena: which one (`u32`),
/// the reply's sequence number in it and the body's length (`u64` each).
pub(crate) const TAG_DONE_SHARED: u8 = 19;

/// Set in the tag of a `RUN` (or `RUN_SHARED`) frame whose arguments are
/// dense, and of a `DONE` frame whose results are (see [`dense_width`]).
pub(crate) const DENSE: u8 = 0x40;

/// Item status in a framed item header.
pub(crate) const ITEM_OK: u8 = 0;
/// The task panicked; the body is a [`PanicReport`].
pub(crate) const ITEM_PANIC: u8 = 1;
/// The result could not be encoded; the body is the message.
pub(crate) const ITEM_ENCODE_ERROR: u8 = 2;
/// The arguments could not be decoded; the body is the message.
pub(crate) const ITEM_DECODE_ERROR: u8 = 3;

/// Largest frame body accepted (1 GiB); anything larger is a protocol error.
const MAX_FRAME: usize = 1 << 30;

/// A panic caught in the child.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct PanicReport {
    pub(crate) message: String,
    pub(crate) location: Option<String>,
}

/// Why the child refused a whole batch.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum BatchFailure {
    UnknownWorker { name: String, known: Vec<String> },
    Malformed(String),
}

// ---- LEB128 ---------------------------------------------------------------

#[inline]
pub(crate) fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

#[inline]
pub(crate) fn get_varint(input: &mut &[u8]) -> Option<u64> {
    // Item headers and small integers: one byte.
    match input.split_first() {
        Some((&b, rest)) if b < 0x80 => {
            *input = rest;
            Some(u64::from(b))
        }
        _ => get_varint_long(input),
    }
}

#[inline(never)]
fn get_varint_long(input: &mut &[u8]) -> Option<u64> {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        let (&b, rest) = input.split_first()?;
        *input = rest;
        v |= u64::from(b & 0x7f) << shift;
        if b & 0x80 == 0 {
            return Some(v);
        }
    }
    None
}

// ---- items ----------------------------------------------------------------

/// Appends one item: header, then `value` encoded with postcard.
///
/// # Errors
///
/// The message of serde's error if `value` cannot be encoded; `out` is left
/// as it was.
#[inline(always)]
pub(crate) fn put_item<T: Serialize + 'static>(out: &mut Vec<u8>, value: &T) -> Result<(), String> {
    if is_byte_vec::<T>() {
        if let Some(bytes) = (value as &dyn Any).downcast_ref::<Vec<u8>>() {
            put_byte_vec(out, bytes);
            return Ok(());
        }
    }
    let start = out.len();
    out.push(0); // room for a one-byte header, the common case
    if let Err(e) = value.serialize(&mut Encoder { out: &mut *out }) {
        out.truncate(start);
        return Err(e.0);
    }
    let len = out.len() - start - 1;
    let header = (len as u64) << 2 | u64::from(ITEM_OK);
    if header < 0x80 {
        out[start] = header as u8;
    } else {
        long_header(out, start, header);
    }
    Ok(())
}

// ---- dense batches --------------------------------------------------------
//
// `map(is_prime, 0..n)` moves one integer each way per item; framed, each
// took a header and a varint to write and to read, in the caller, the
// child and the driver: at millions of items that was most of what the
// pool cost on top of the work (see BENCHMARKS.md). A batch whose
// arguments are all of one primitive type (integers, floats, `bool`) is
// sent dense instead: the values little-endian, one after the other, with
// no headers, so that item `k` is at `k * width`. Its results come back
// dense too when they are primitive and every item ran fine; one that
// panicked turns the rest of the reply back into framed items (which say
// what went wrong). `submit` and `apply` send framed items as before.

/// The width of a `T` in a dense batch, if it goes in one: the primitive
/// numbers and `bool`. A comparison of constants, folded away in every
/// instance.
#[inline(always)]
pub(crate) fn dense_width<T: 'static>() -> Option<usize> {
    let t = TypeId::of::<T>();
    macro_rules! widths {
        ($($ty:ty),*) => {$(
            if t == TypeId::of::<$ty>() {
                return Some(std::mem::size_of::<$ty>());
            }
        )*};
    }
    widths!(u64, u32, u16, u8, i64, i32, i16, i8, f64, f32, bool);
    if t == TypeId::of::<usize>() || t == TypeId::of::<isize>() {
        return Some(8); // as 64-bit, whatever this machine's width
    }
    None
}

/// `value` little-endian in the first [`dense_width`] bytes (all zero for a
/// `T` without one).
#[inline(always)]
fn dense_bytes<T: 'static>(value: &T) -> [u8; 8] {
    let any = value as &dyn Any;
    let t = TypeId::of::<T>();
    let mut out = [0u8; 8];
    macro_rules! le {
        ($($ty:ty),*) => {$(
            if t == TypeId::of::<$ty>() {
                if let Some(v) = any.downcast_ref::<$ty>() {
                    let bytes = v.to_le_bytes();
                    out[..bytes.len()].copy_from_slice(&bytes);
                }
                return out;
            }
        )*};
    }
    le!(u64, u32, u16, u8, i64, i32, i16, i8, f64, f32);
    if let Some(&v) = any.downcast_ref::<usize>() {
        out = (v as u64).to_le_bytes();
    } else if let Some(&v) = any.downcast_ref::<isize>() {
        out = (v as i64).to_le_bytes();
    } else if let Some(&v) = any.downcast_ref::<bool>() {
        out[0] = u8::from(v);
    }
    out
}

/// Appends `value` to a dense batch; does nothing for a `T` without a
/// [`dense_width`]. (The hot paths write dense items in place instead:
/// [`fill_dense`], `run_dense`.)
#[cfg(test)]
pub(crate) fn put_dense<T: 'static>(out: &mut Vec<u8>, value: &T) {
    if let Some(width) = dense_width::<T>() {
        out.extend_from_slice(&dense_bytes(value)[..width]);
    }
}

/// Appends up to `limit` items of `input` to a dense batch in `out`, in one
/// tight loop over space reserved beforehand (no capacity check per item:
/// `map` over millions of integers spent most of its caller's time
/// appending them one at a time). Returns how many it appended, and
/// whether `input` ran out first. Appends nothing for a `T` without a
/// [`dense_width`].
pub(crate) fn fill_dense<T: 'static>(
    out: &mut Vec<u8>,
    input: &mut impl Iterator<Item = T>,
    limit: usize,
) -> (usize, bool) {
    let Some(width) = dense_width::<T>() else {
        return (0, false);
    };
    out.reserve(limit.saturating_mul(width));
    let room = &mut out.spare_capacity_mut()[..limit * width];
    let mut count = 0;
    for (slot, value) in room.chunks_exact_mut(width).zip(input.by_ref()) {
        // `zip` asks `room` first: no item is taken that has no slot.
        let bytes = dense_bytes(&value);
        for (dst, &src) in slot.iter_mut().zip(&bytes[..width]) {
            dst.write(src);
        }
        count += 1;
    }
    // SAFETY: the loop initialised the first `count * width` bytes of the
    // spare capacity (`room` is within it).
    unsafe { out.set_len(out.len() + count * width) };
    (count, count < limit)
}

// ---- ranges ---------------------------------------------------------------
//
// `pool.map(f, 0..n)` is the commonest call there is, and its arguments
// need not travel: a batch of a range is its first integer and a count, and
// the child counts on from there. Written out dense, a `map` over 10 M
// `u64` had the caller write 80 MB, the drivers copy them into the request
// buffers and the workers read them back from another core (the caller's
// and the drivers' own CPU time was about a third of the map's).

/// Whether `I` is a range (`a..b` or `a..=b`) of integers with a
/// [`dense_width`]: its items are consecutive, each the one before plus 1.
fn is_integer_range<I: Iterator>() -> bool
where
    I::Item: 'static,
{
    if dense_width::<I::Item>().is_none() {
        return false;
    }
    // `typeid::of` also takes types that are not `'static` (it sees them
    // with their lifetimes made `'static`; a range has none).
    let t = typeid::of::<I>();
    t == typeid::of::<std::ops::Range<I::Item>>()
        || t == typeid::of::<std::ops::RangeInclusive<I::Item>>()
}

/// Takes up to `limit` items of `input` (`limit >= 1`) if it is a range of
/// integers ([`is_integer_range`]), without writing them out: the first
/// one's dense bytes as a `u64` (zero-extended: the child adds to it and
/// keeps the low bytes, which is right for signed types too), how many, and
/// whether `input` ran out. `None` if `input` is not such a range.
pub(crate) fn take_range<I: Iterator>(input: &mut I, limit: usize) -> Option<(u64, usize, bool)>
where
    I::Item: 'static,
{
    if !is_integer_range::<I>() {
        return None;
    }
    let Some(first) = input.next() else {
        return Some((0, 0, true));
    };
    // A range knows its length exactly (or that it is at least
    // `usize::MAX`), and `nth` steps over items without making each.
    let more = input.size_hint().0.min(limit.saturating_sub(1));
    if more > 0 {
        input.nth(more - 1);
    }
    let exhausted = input.size_hint().1 == Some(0);
    Some((u64::from_le_bytes(dense_bytes(&first)), more + 1, exhausted))
}

/// The body of a `RUN_RANGE` frame after its head: the width of one
/// integer, the first one (see [`take_range`]) and how many.
pub(crate) fn range_body(first: u64, count: u32, width: usize) -> [u8; RANGE_BODY] {
    let mut body = [0; RANGE_BODY];
    body[0] = u8::try_from(width).expect("a dense width is at most 8");
    body[1..9].copy_from_slice(&first.to_le_bytes());
    body[9..].copy_from_slice(&count.to_le_bytes());
    body
}

/// The `k`-th integer of a range batch that starts at `first`, as the
/// dense bytes of its type (the first `width` of the eight).
#[inline(always)]
fn range_item(first: u64, k: u64) -> [u8; 8] {
    first.wrapping_add(k).to_le_bytes()
}

/// The dense batch of `count` integers of `width` bytes from `first` (see
/// [`take_range`]), written out.
pub(crate) fn range_bytes(first: u64, count: u32, width: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(count as usize * width);
    for k in 0..u64::from(count) {
        out.extend_from_slice(&range_item(first, k)[..width]);
    }
    out
}

/// The `T` in `bytes` (exactly its [`dense_width`]); `None` if they are
/// not one (a `bool` other than 0 or 1, a `usize` too large for this
/// machine) or `T` has no dense form.
#[inline(always)]
pub(crate) fn get_dense<T: 'static>(bytes: &[u8]) -> Option<T> {
    #[inline(always)]
    fn cast<T: 'static, U: 'static>(value: U) -> Option<T> {
        (&mut Some(value) as &mut dyn Any)
            .downcast_mut::<Option<T>>()?
            .take()
    }
    let t = TypeId::of::<T>();
    macro_rules! le {
        ($($ty:ty),*) => {$(
            if t == TypeId::of::<$ty>() {
                return cast(<$ty>::from_le_bytes(bytes.try_into().ok()?));
            }
        )*};
    }
    le!(u64, u32, u16, u8, i64, i32, i16, i8, f64, f32);
    if t == TypeId::of::<usize>() {
        return cast(usize::try_from(u64::from_le_bytes(bytes.try_into().ok()?)).ok()?);
    }
    if t == TypeId::of::<isize>() {
        return cast(isize::try_from(i64::from_le_bytes(bytes.try_into().ok()?)).ok()?);
    }
    if t == TypeId::of::<bool>() {
        return match bytes {
            [0] => cast(false),
            [1] => cast(true),
            _ => None,
        };
    }
    None
}

/// Whether a `T`'s dense form is its bytes in memory: every bit pattern of
/// its [`dense_width`] is a `T`, and this machine is little-endian (the
/// integers and floats; `usize` and `isize` where they are 64 bits wide;
/// not `bool`, whose bytes must be 0 or 1). Such results are copied out
/// of a reply in one go instead of one at a time ([`copy_plain`]).
#[inline(always)]
pub(crate) fn dense_is_plain<T: 'static>() -> bool {
    // The dense types are all numbers but `bool`; `usize` and `isize` go
    // as 8 bytes, which is their size only on a 64-bit machine.
    cfg!(target_endian = "little")
        && dense_width::<T>() == Some(size_of::<T>())
        && TypeId::of::<T>() != TypeId::of::<bool>()
}

/// Copies the dense `T`s at the start of `bytes`, at most `max` of them,
/// to `dst` in one go, and returns how many; `None` (nothing copied) if
/// `T`'s dense form is not plain ([`dense_is_plain`]).
///
/// # Safety
///
/// `dst` must be valid for writes of `max` `T`s that do not overlap
/// `bytes`; what was there is overwritten, not dropped.
#[inline]
pub(crate) unsafe fn copy_plain<T: 'static>(
    bytes: &[u8],
    max: usize,
    dst: *mut T,
) -> Option<usize> {
    if !dense_is_plain::<T>() {
        return None;
    }
    let n = (bytes.len() / size_of::<T>()).min(max);
    // SAFETY: `n` whole `T`s are in `bytes` and fit at `dst` (the caller's
    // contract: `max` do); every bit pattern of them is a `T` on this
    // machine (`dense_is_plain`), which is what the dense encoding wrote.
    unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), dst.cast::<u8>(), n * size_of::<T>()) };
    Some(n)
}

/// Turns the first `n` dense results at `out[start..]` into framed items,
/// in place: the reply goes on framed once an item has failed.
#[cold]
fn reframe<R: Serialize + 'static>(out: &mut Vec<u8>, start: usize) {
    let Some(width) = dense_width::<R>() else {
        return;
    };
    let dense = out.split_off(start);
    for bytes in dense.chunks_exact(width) {
        let value: R = get_dense(bytes).expect("written as dense just now");
        put_item(out, &value).expect("a primitive always encodes");
    }
}

// ---- byte buffers ---------------------------------------------------------
//
// serde's impls for `Vec<T>` visit a `Vec<u8>` one byte at a time, each way:
// a 64 MiB buffer took ~0.4 s to go to a worker and back. A `Vec<u8>` that is
// a whole argument or result (the `Args` or `Output` of a worker, or a `map`
// item) is recognised by its type and copied in one go instead. The bytes on
// the wire are the same (postcard writes any `u8` sequence as its length and
// then the bytes), so either side may take either path.

/// Whether `T` is `Vec<u8>`: a comparison of constants, folded away in
/// every other instance of the hot paths.
#[inline(always)]
fn is_byte_vec<T: 'static>() -> bool {
    TypeId::of::<T>() == TypeId::of::<Vec<u8>>()
}

/// Appends one item holding `bytes` as postcard encodes a `Vec<u8>`.
#[inline(never)]
fn put_byte_vec(out: &mut Vec<u8>, bytes: &[u8]) {
    crate::shm::huge::reserve_bytes(out, 20 + bytes.len());
    put_byte_vec_head(out, bytes.len());
    out.extend_from_slice(bytes);
}

/// Appends what comes before the bytes in an item holding a `Vec<u8>` of
/// `len` bytes: the item header and postcard's length prefix.
fn put_byte_vec_head(out: &mut Vec<u8>, len: usize) {
    let mut prefix = [0u8; 10];
    let n = varint_into(&mut prefix, len as u64);
    put_varint(out, ((n + len) as u64) << 2 | u64::from(ITEM_OK));
    out.extend_from_slice(&prefix[..n]);
}

/// Below this, a `Vec<u8>` argument or result is copied into its frame;
/// from it, the frame takes the vector itself ([`take_byte_vec_call`]).
const TAKE_BYTES_FROM: usize = 64 << 10;

/// The framed item of a call whose arguments are one large `Vec<u8>`, as
/// its head and the vector itself: the argument is not copied (at 64 MiB a
/// copy took about 4 ms of a 25–30 ms round trip). Gives `args` back if
/// they are anything else.
pub(crate) fn take_byte_vec_call<T: 'static>(args: T) -> Result<(Vec<u8>, Vec<u8>), T> {
    if !is_byte_vec::<T>() {
        return Err(args);
    }
    let mut slot = Some(args);
    match (&mut slot as &mut dyn Any).downcast_mut::<Option<Vec<u8>>>() {
        Some(bytes) if bytes.as_ref().is_some_and(|b| b.len() >= TAKE_BYTES_FROM) => {
            let body = bytes.take().expect("checked just above");
            let mut head = Vec::with_capacity(20);
            put_byte_vec_head(&mut head, body.len());
            Ok((head, body))
        }
        _ => Err(slot.expect("still there")),
    }
}

/// Gives `value` to the spare buffers if it is a large `Vec<u8>` (an
/// argument once encoded, a result once sent); drops it otherwise.
#[inline(always)]
pub(crate) fn recycle_value<T: 'static>(value: T) {
    if is_byte_vec::<T>() {
        if let Some(bytes) = (&mut Some(value) as &mut dyn Any)
            .downcast_mut::<Option<Vec<u8>>>()
            .and_then(Option::take)
        {
            crate::shm::huge::recycle(bytes);
        }
    }
}

/// `body` as a `T`, if `T` is `Vec<u8>` and `body` is a well-formed one;
/// `None` otherwise, and the caller decodes with serde (which, for a
/// malformed `Vec<u8>`, says what is wrong with it).
#[inline(always)]
fn take_byte_vec<T: 'static>(body: &[u8]) -> Option<T> {
    if !is_byte_vec::<T>() {
        return None;
    }
    byte_vec(body).and_then(|v| {
        (&mut Some(v) as &mut dyn Any)
            .downcast_mut::<Option<T>>()?
            .take()
    })
}

#[inline(never)]
fn byte_vec(body: &[u8]) -> Option<Vec<u8>> {
    let mut rest = body;
    let len = get_varint(&mut rest)?;
    (len == rest.len() as u64).then(|| crate::shm::huge::to_vec(rest))
}

/// Writes a header of more than one byte at `start`, moving the body that
/// follows the one byte reserved for it up to make room (rare: items of 32
/// bytes or more, where this copy is small next to encoding them). Kept out
/// of line so that [`put_item`] stays small enough to inline.
#[cold]
#[inline(never)]
fn long_header(out: &mut Vec<u8>, start: usize, header: u64) {
    let mut h = [0u8; 10];
    let n = varint_into(&mut h, header);
    let end = out.len();
    out.resize(end + n - 1, 0);
    out.copy_within(start + 1..end, start + n);
    out[start..start + n].copy_from_slice(&h[..n]);
}

/// Writes `v` as LEB128 into `buf`; returns how many bytes it took.
#[inline]
fn varint_into(buf: &mut [u8; 10], mut v: u64) -> usize {
    let mut i = 0;
    while v >= 0x80 {
        buf[i] = (v as u8) | 0x80;
        v >>= 7;
        i += 1;
    }
    buf[i] = v as u8;
    i + 1
}

/// Why a value could not be encoded: serde's message (kept, unlike
/// postcard's own serializer, which replaces custom messages with a fixed
/// text).
#[derive(Debug)]
pub(crate) struct EncodeError(String);

impl std::fmt::Display for EncodeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for EncodeError {}

impl serde::ser::Error for EncodeError {
    fn custom<T: std::fmt::Display>(msg: T) -> Self {
        EncodeError(msg.to_string())
    }
}

/// A serde serializer that writes postcard's format (1.x wire format:
/// LEB128 varints for integers wider than a byte, zigzag for signed ones,
/// little-endian floats, length-prefixed strings, sequences and maps,
/// varint variant indices) straight into a `Vec`, without postcard's flavor
/// layer: one capacity check per varint instead of a call per byte range.
/// What it writes is byte for byte what `postcard::to_stdvec` writes (see
/// the tests), and postcard decodes it.
pub(crate) struct Encoder<'a> {
    out: &'a mut Vec<u8>,
}

impl Encoder<'_> {
    #[inline]
    fn varint(&mut self, mut v: u64) {
        if v < 0x80 {
            self.out.push(v as u8);
            return;
        }
        self.out.reserve(10);
        let len = self.out.len();
        let spare = self.out.spare_capacity_mut();
        let mut i = 0;
        while v >= 0x80 {
            spare[i].write((v as u8) | 0x80);
            v >>= 7;
            i += 1;
        }
        spare[i].write(v as u8);
        // SAFETY: the `i + 1` bytes after `len` were just written (the
        // writes above are bounds-checked against the spare capacity, which
        // `reserve(10)` made at least 10 bytes, the longest u64 varint).
        unsafe { self.out.set_len(len + i + 1) };
    }

    #[inline]
    fn varint128(&mut self, mut v: u128) {
        while v >= 0x80 {
            self.out.push((v as u8) | 0x80);
            v >>= 7;
        }
        self.out.push(v as u8);
    }

    #[inline]
    fn len(&mut self, len: Option<usize>) -> Result<(), EncodeError> {
        match len {
            Some(n) => {
                self.varint(n as u64);
                Ok(())
            }
            None => Err(EncodeError(
                "The length of a sequence must be known".to_owned(),
            )),
        }
    }

    #[inline]
    fn bytes(&mut self, v: &[u8]) {
        self.varint(v.len() as u64);
        self.out.extend_from_slice(v);
    }
}

impl serde::Serializer for &mut Encoder<'_> {
    type Ok = ();
    type Error = EncodeError;
    type SerializeSeq = Self;
    type SerializeTuple = Self;
    type SerializeTupleStruct = Self;
    type SerializeTupleVariant = Self;
    type SerializeMap = Self;
    type SerializeStruct = Self;
    type SerializeStructVariant = Self;

    fn is_human_readable(&self) -> bool {
        false
    }

    #[inline]
    fn serialize_bool(self, v: bool) -> Result<(), EncodeError> {
        self.out.push(u8::from(v));
        Ok(())
    }
    #[inline]
    fn serialize_i8(self, v: i8) -> Result<(), EncodeError> {
        self.out.push(v as u8);
        Ok(())
    }
    #[inline]
    fn serialize_i16(self, v: i16) -> Result<(), EncodeError> {
        self.varint(u64::from(((v << 1) ^ (v >> 15)) as u16));
        Ok(())
    }
    #[inline]
    fn serialize_i32(self, v: i32) -> Result<(), EncodeError> {
        self.varint(u64::from(((v << 1) ^ (v >> 31)) as u32));
        Ok(())
    }
    #[inline]
    fn serialize_i64(self, v: i64) -> Result<(), EncodeError> {
        self.varint(((v << 1) ^ (v >> 63)) as u64);
        Ok(())
    }
    #[inline]
    fn serialize_i128(self, v: i128) -> Result<(), EncodeError> {
        self.varint128(((v << 1) ^ (v >> 127)) as u128);
        Ok(())
    }
    #[inline]
    fn serialize_u8(self, v: u8) -> Result<(), EncodeError> {
        self.out.push(v);
        Ok(())
    }
    #[inline]
    fn serialize_u16(self, v: u16) -> Result<(), EncodeError> {
        self.varint(u64::from(v));
        Ok(())
    }
    #[inline]
    fn serialize_u32(self, v: u32) -> Result<(), EncodeError> {
        self.varint(u64::from(v));
        Ok(())
    }
    #[inline]
    fn serialize_u64(self, v: u64) -> Result<(), EncodeError> {
        self.varint(v);
        Ok(())
    }
    #[inline]
    fn serialize_u128(self, v: u128) -> Result<(), EncodeError> {
        self.varint128(v);
        Ok(())
    }
    #[inline]
    fn serialize_f32(self, v: f32) -> Result<(), EncodeError> {
        self.out.extend_from_slice(&v.to_bits().to_le_bytes());
        Ok(())
    }
    #[inline]
    fn serialize_f64(self, v: f64) -> Result<(), EncodeError> {
        self.out.extend_from_slice(&v.to_bits().to_le_bytes());
        Ok(())
    }
    #[inline]
    fn serialize_char(self, v: char) -> Result<(), EncodeError> {
        let mut buf = [0u8; 4];
        self.bytes(v.encode_utf8(&mut buf).as_bytes());
        Ok(())
    }
    #[inline]
    fn serialize_str(self, v: &str) -> Result<(), EncodeError> {
        self.bytes(v.as_bytes());
        Ok(())
    }
    #[inline]
    fn serialize_bytes(self, v: &[u8]) -> Result<(), EncodeError> {
        self.bytes(v);
        Ok(())
    }
    #[inline]
    fn serialize_none(self) -> Result<(), EncodeError> {
        self.out.push(0);
        Ok(())
    }
    #[inline]
    fn serialize_some<T: Serialize + ?Sized>(self, value: &T) -> Result<(), EncodeError> {
        self.out.push(1);
        value.serialize(self)
    }
    #[inline]
    fn serialize_unit(self) -> Result<(), EncodeError> {
        Ok(())
    }
    #[inline]
    fn serialize_unit_struct(self, _name: &'static str) -> Result<(), EncodeError> {
        Ok(())
    }
    #[inline]
    fn serialize_unit_variant(
        self,
        _name: &'static str,
        variant_index: u32,
        _variant: &'static str,
    ) -> Result<(), EncodeError> {
        self.varint(u64::from(variant_index));
        Ok(())
    }
    #[inline]
    fn serialize_newtype_struct<T: Serialize + ?Sized>(
        self,
        _name: &'static str,
        value: &T,
    ) -> Result<(), EncodeError> {
        value.serialize(self)
    }
    #[inline]
    fn serialize_newtype_variant<T: Serialize + ?Sized>(
        self,
        _name: &'static str,
        variant_index: u32,
        _variant: &'static str,
        value: &T,
    ) -> Result<(), EncodeError> {
        self.varint(u64::from(variant_index));
        value.serialize(self)
    }
    #[inline]
    fn serialize_seq(self, len: Option<usize>) -> Result<Self, EncodeError> {
        self.len(len)?;
        Ok(self)
    }
    #[inline]
    fn serialize_tuple(self, _len: usize) -> Result<Self, EncodeError> {
        Ok(self)
    }
    #[inline]
    fn serialize_tuple_struct(self, _name: &'static str, _len: usize) -> Result<Self, EncodeError> {
        Ok(self)
    }
    #[inline]
    fn serialize_tuple_variant(
        self,
        _name: &'static str,
        variant_index: u32,
        _variant: &'static str,
        _len: usize,
    ) -> Result<Self, EncodeError> {
        self.varint(u64::from(variant_index));
        Ok(self)
    }
    #[inline]
    fn serialize_map(self, len: Option<usize>) -> Result<Self, EncodeError> {
        self.len(len)?;
        Ok(self)
    }
    #[inline]
    fn serialize_struct(self, _name: &'static str, _len: usize) -> Result<Self, EncodeError> {
        Ok(self)
    }
    #[inline]
    fn serialize_struct_variant(
        self,
        _name: &'static str,
        variant_index: u32,
        _variant: &'static str,
        _len: usize,
    ) -> Result<Self, EncodeError> {
        self.varint(u64::from(variant_index));
        Ok(self)
    }
    fn collect_str<T: std::fmt::Display + ?Sized>(self, value: &T) -> Result<(), EncodeError> {
        self.bytes(value.to_string().as_bytes());
        Ok(())
    }
}

/// The compound serializers: every element, field, key and value is simply
/// the next value in the stream.
macro_rules! compound {
    ($($trait:ident $method:ident $(($key:ty))?),* $(,)?) => {$(
        impl serde::ser::$trait for &mut Encoder<'_> {
            type Ok = ();
            type Error = EncodeError;
            #[inline]
            fn $method<T: Serialize + ?Sized>(
                &mut self,
                $(_key: $key,)?
                value: &T,
            ) -> Result<(), EncodeError> {
                value.serialize(&mut **self)
            }
            #[inline]
            fn end(self) -> Result<(), EncodeError> {
                Ok(())
            }
        }
    )*};
}

compound! {
    SerializeSeq serialize_element,
    SerializeTuple serialize_element,
    SerializeTupleStruct serialize_field,
    SerializeTupleVariant serialize_field,
    SerializeStruct serialize_field (&'static str),
    SerializeStructVariant serialize_field (&'static str),
}

impl serde::ser::SerializeMap for &mut Encoder<'_> {
    type Ok = ();
    type Error = EncodeError;
    #[inline]
    fn serialize_key<T: Serialize + ?Sized>(&mut self, key: &T) -> Result<(), EncodeError> {
        key.serialize(&mut **self)
    }
    #[inline]
    fn serialize_value<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), EncodeError> {
        value.serialize(&mut **self)
    }
    #[inline]
    fn end(self) -> Result<(), EncodeError> {
        Ok(())
    }
}

// ---- decoding -------------------------------------------------------------

/// Decodes a value that must fill `body` exactly, with [`Decoder`]; `None`
/// if it does not decode. The hot paths (a batch's arguments in the child,
/// a run of results in the parent) try this first and fall back to
/// [`decode_exact`] for anything it refuses, which then reports postcard's
/// error: so this only has to be right on what it accepts.
#[inline]
pub(crate) fn decode_fast<T: DeserializeOwned + 'static>(body: &[u8]) -> Option<T> {
    decode_fast_at(body, body.len())
}

/// [`decode_fast`] of the `len` bytes at the start of `input`, which may go
/// on past them (the items that follow in the batch): the decoder can then
/// read a varint as one 8-byte word even at the end of a short item. What
/// a value that overruns its `len` bytes read past them does not matter: it
/// is refused.
#[inline]
pub(crate) fn decode_fast_at<T: DeserializeOwned + 'static>(input: &[u8], len: usize) -> Option<T> {
    if is_byte_vec::<T>() {
        return take_byte_vec(input.get(..len)?);
    }
    let mut d = Decoder { input };
    let value = T::deserialize(&mut d).ok()?;
    (input.len() - d.input.len() == len).then_some(value)
}

/// Splits the next item off `input` if it is an `ITEM_OK` one:
/// `(its length, input from its body on)`; `input` moves past it.
#[inline]
pub(crate) fn next_ok_item<'a>(input: &mut &'a [u8]) -> Option<(usize, &'a [u8])> {
    let mut after = *input;
    let header = get_varint(&mut after)?;
    let len = usize::try_from(header >> 2).ok()?;
    if header & 3 != u64::from(ITEM_OK) || after.len() < len {
        return None;
    }
    *input = &after[len..];
    Some((len, after))
}

/// Why [`Decoder`] refused its input (the message is not shown: the caller
/// asks postcard again for one).
#[derive(Debug)]
pub(crate) struct DecodeError;

impl std::fmt::Display for DecodeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("malformed postcard data")
    }
}

impl std::error::Error for DecodeError {}

impl serde::de::Error for DecodeError {
    fn custom<T: std::fmt::Display>(_msg: T) -> Self {
        DecodeError
    }
}

/// A serde deserializer for what [`Encoder`] (and postcard) writes, over a
/// byte slice: the varints are read with one bounds check per byte and no
/// flavor layer, which made postcard's own `try_take_varint_u64` the largest
/// single cost of decoding a batch of integers.
pub(crate) struct Decoder<'de> {
    input: &'de [u8],
}

impl<'de> Decoder<'de> {
    #[inline]
    fn byte(&mut self) -> Result<u8, DecodeError> {
        let (&b, rest) = self.input.split_first().ok_or(DecodeError)?;
        self.input = rest;
        Ok(b)
    }

    #[inline]
    fn take(&mut self, n: usize) -> Result<&'de [u8], DecodeError> {
        if self.input.len() < n {
            return Err(DecodeError);
        }
        let (head, rest) = self.input.split_at(n);
        self.input = rest;
        Ok(head)
    }

    #[inline]
    fn varint(&mut self) -> Result<u64, DecodeError> {
        match self.input.split_first() {
            Some((&b, rest)) if b < 0x80 => {
                self.input = rest;
                Ok(u64::from(b))
            }
            _ => self.varint_long(),
        }
    }

    #[inline]
    fn varint_long(&mut self) -> Result<u64, DecodeError> {
        // Up to 8 bytes (56 bits) at once: load a word, find the first
        // byte without the continuation bit, squeeze out the 7-bit groups.
        if let Some(word) = self.input.first_chunk::<8>() {
            let word = u64::from_le_bytes(*word);
            let ends = !word & 0x8080_8080_8080_8080;
            if ends != 0 {
                let n = ends.trailing_zeros() as usize / 8 + 1;
                let keep = if n == 8 {
                    u64::MAX
                } else {
                    (1u64 << (8 * n)) - 1
                };
                let mut x = word & keep & 0x7f7f_7f7f_7f7f_7f7f;
                x = (x & 0x007f_007f_007f_007f) | ((x & 0x7f00_7f00_7f00_7f00) >> 1);
                x = (x & 0x0000_3fff_0000_3fff) | ((x & 0x3fff_0000_3fff_0000) >> 2);
                x = (x & 0x0000_0000_0fff_ffff) | ((x & 0x0fff_ffff_0000_0000) >> 4);
                self.input = &self.input[n..];
                return Ok(x);
            }
        }
        let mut v = 0u64;
        for i in 0..10 {
            let b = self.byte()?;
            v |= u64::from(b & 0x7f) << (7 * i);
            if b < 0x80 {
                // The tenth byte holds the top bit only.
                return if i == 9 && b > 1 {
                    Err(DecodeError)
                } else {
                    Ok(v)
                };
            }
        }
        Err(DecodeError)
    }

    fn varint128(&mut self) -> Result<u128, DecodeError> {
        let mut v = 0u128;
        for i in 0..19 {
            let b = self.byte()?;
            v |= u128::from(b & 0x7f) << (7 * i);
            if b < 0x80 {
                return if i == 18 && b > 3 {
                    Err(DecodeError)
                } else {
                    Ok(v)
                };
            }
        }
        Err(DecodeError)
    }

    #[inline]
    fn varint_as<T: TryFrom<u64>>(&mut self) -> Result<T, DecodeError> {
        T::try_from(self.varint()?).map_err(|_| DecodeError)
    }

    #[inline]
    fn len(&mut self) -> Result<usize, DecodeError> {
        self.varint_as()
    }

    #[inline]
    fn str(&mut self) -> Result<&'de str, DecodeError> {
        let n = self.len()?;
        std::str::from_utf8(self.take(n)?).map_err(|_| DecodeError)
    }
}

impl<'de> serde::Deserializer<'de> for &mut Decoder<'de> {
    type Error = DecodeError;

    fn is_human_readable(&self) -> bool {
        false
    }

    fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, DecodeError> {
        Err(DecodeError) // postcard is not self-describing
    }
    #[inline]
    fn deserialize_bool<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DecodeError> {
        match self.byte()? {
            0 => visitor.visit_bool(false),
            1 => visitor.visit_bool(true),
            _ => Err(DecodeError),
        }
    }
    #[inline]
    fn deserialize_i8<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DecodeError> {
        visitor.visit_i8(self.byte()? as i8)
    }
    #[inline]
    fn deserialize_i16<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DecodeError> {
        let n: u16 = self.varint_as()?;
        visitor.visit_i16(((n >> 1) as i16) ^ -((n & 1) as i16))
    }
    #[inline]
    fn deserialize_i32<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DecodeError> {
        let n: u32 = self.varint_as()?;
        visitor.visit_i32(((n >> 1) as i32) ^ -((n & 1) as i32))
    }
    #[inline]
    fn deserialize_i64<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DecodeError> {
        let n = self.varint()?;
        visitor.visit_i64(((n >> 1) as i64) ^ -((n & 1) as i64))
    }
    fn deserialize_i128<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DecodeError> {
        let n = self.varint128()?;
        visitor.visit_i128(((n >> 1) as i128) ^ -((n & 1) as i128))
    }
    #[inline]
    fn deserialize_u8<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DecodeError> {
        visitor.visit_u8(self.byte()?)
    }
    #[inline]
    fn deserialize_u16<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DecodeError> {
        visitor.visit_u16(self.varint_as()?)
    }
    #[inline]
    fn deserialize_u32<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DecodeError> {
        visitor.visit_u32(self.varint_as()?)
    }
    #[inline]
    fn deserialize_u64<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DecodeError> {
        visitor.visit_u64(self.varint()?)
    }
    fn deserialize_u128<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DecodeError> {
        visitor.visit_u128(self.varint128()?)
    }
    #[inline]
    fn deserialize_f32<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DecodeError> {
        let b = self.take(4)?.try_into().map_err(|_| DecodeError)?;
        visitor.visit_f32(f32::from_le_bytes(b))
    }
    #[inline]
    fn deserialize_f64<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DecodeError> {
        let b = self.take(8)?.try_into().map_err(|_| DecodeError)?;
        visitor.visit_f64(f64::from_le_bytes(b))
    }
    fn deserialize_char<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DecodeError> {
        let mut chars = self.str()?.chars();
        match (chars.next(), chars.next()) {
            (Some(c), None) => visitor.visit_char(c),
            _ => Err(DecodeError),
        }
    }
    #[inline]
    fn deserialize_str<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DecodeError> {
        visitor.visit_borrowed_str(self.str()?)
    }
    #[inline]
    fn deserialize_string<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DecodeError> {
        visitor.visit_borrowed_str(self.str()?)
    }
    #[inline]
    fn deserialize_bytes<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DecodeError> {
        let n = self.len()?;
        visitor.visit_borrowed_bytes(self.take(n)?)
    }
    #[inline]
    fn deserialize_byte_buf<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DecodeError> {
        let n = self.len()?;
        visitor.visit_borrowed_bytes(self.take(n)?)
    }
    #[inline]
    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DecodeError> {
        match self.byte()? {
            0 => visitor.visit_none(),
            1 => visitor.visit_some(self),
            _ => Err(DecodeError),
        }
    }
    #[inline]
    fn deserialize_unit<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DecodeError> {
        visitor.visit_unit()
    }
    #[inline]
    fn deserialize_unit_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, DecodeError> {
        visitor.visit_unit()
    }
    #[inline]
    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, DecodeError> {
        visitor.visit_newtype_struct(self)
    }
    #[inline]
    fn deserialize_seq<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DecodeError> {
        let left = self.len()?;
        visitor.visit_seq(Counted { de: self, left })
    }
    #[inline]
    fn deserialize_tuple<V: Visitor<'de>>(
        self,
        len: usize,
        visitor: V,
    ) -> Result<V::Value, DecodeError> {
        visitor.visit_seq(Counted {
            de: self,
            left: len,
        })
    }
    #[inline]
    fn deserialize_tuple_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        len: usize,
        visitor: V,
    ) -> Result<V::Value, DecodeError> {
        visitor.visit_seq(Counted {
            de: self,
            left: len,
        })
    }
    #[inline]
    fn deserialize_map<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DecodeError> {
        let left = self.len()?;
        visitor.visit_map(Counted { de: self, left })
    }
    #[inline]
    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, DecodeError> {
        visitor.visit_seq(Counted {
            de: self,
            left: fields.len(),
        })
    }
    #[inline]
    fn deserialize_enum<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, DecodeError> {
        visitor.visit_enum(self)
    }
    fn deserialize_identifier<V: Visitor<'de>>(self, _: V) -> Result<V::Value, DecodeError> {
        Err(DecodeError) // postcard writes no identifiers
    }
    fn deserialize_ignored_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, DecodeError> {
        Err(DecodeError) // as postcard: nothing says how long the value is
    }
}

/// A sequence, tuple, struct or map of `left` more elements (or entries).
struct Counted<'a, 'de> {
    de: &'a mut Decoder<'de>,
    left: usize,
}

impl<'de> serde::de::SeqAccess<'de> for Counted<'_, 'de> {
    type Error = DecodeError;
    #[inline]
    fn next_element_seed<T: DeserializeSeed<'de>>(
        &mut self,
        seed: T,
    ) -> Result<Option<T::Value>, DecodeError> {
        if self.left == 0 {
            return Ok(None);
        }
        self.left -= 1;
        seed.deserialize(&mut *self.de).map(Some)
    }
    fn size_hint(&self) -> Option<usize> {
        Some(self.left)
    }
}

impl<'de> serde::de::MapAccess<'de> for Counted<'_, 'de> {
    type Error = DecodeError;
    #[inline]
    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, DecodeError> {
        if self.left == 0 {
            return Ok(None);
        }
        self.left -= 1;
        seed.deserialize(&mut *self.de).map(Some)
    }
    #[inline]
    fn next_value_seed<V: DeserializeSeed<'de>>(
        &mut self,
        seed: V,
    ) -> Result<V::Value, DecodeError> {
        seed.deserialize(&mut *self.de)
    }
    fn size_hint(&self) -> Option<usize> {
        Some(self.left)
    }
}

impl<'de> serde::de::EnumAccess<'de> for &mut Decoder<'de> {
    type Error = DecodeError;
    type Variant = Self;
    #[inline]
    fn variant_seed<V: DeserializeSeed<'de>>(
        self,
        seed: V,
    ) -> Result<(V::Value, Self), DecodeError> {
        let index: u32 = self.varint_as()?;
        let value =
            seed.deserialize(serde::de::value::U32Deserializer::<DecodeError>::new(index))?;
        Ok((value, self))
    }
}

impl<'de> serde::de::VariantAccess<'de> for &mut Decoder<'de> {
    type Error = DecodeError;
    #[inline]
    fn unit_variant(self) -> Result<(), DecodeError> {
        Ok(())
    }
    #[inline]
    fn newtype_variant_seed<T: DeserializeSeed<'de>>(
        self,
        seed: T,
    ) -> Result<T::Value, DecodeError> {
        seed.deserialize(self)
    }
    #[inline]
    fn tuple_variant<V: Visitor<'de>>(
        self,
        len: usize,
        visitor: V,
    ) -> Result<V::Value, DecodeError> {
        visitor.visit_seq(Counted {
            de: self,
            left: len,
        })
    }
    #[inline]
    fn struct_variant<V: Visitor<'de>>(
        self,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, DecodeError> {
        visitor.visit_seq(Counted {
            de: self,
            left: fields.len(),
        })
    }
}

/// Encodes the arguments of one call of `W` as a single item, capturing
/// the descriptors of any handles in them.
///
/// # Errors
///
/// [`Codec`](crate::ErrorKind::Codec) with side `EncodeArgs`.
pub(crate) fn encode_call<W: Worker>(
    args: &W::Args,
) -> crate::Result<(Vec<u8>, Vec<std::os::fd::OwnedFd>)> {
    let mut payload = Vec::new();
    let (encoded, fds) = crate::fdpass::capture(|| put_item(&mut payload, args));
    encoded.map_err(|message| args_error::<W>(None, message))?;
    Ok((payload, fds))
}

/// The error for arguments of `W` that could not be encoded.
pub(crate) fn args_error<W: Worker>(index: Option<u64>, message: String) -> crate::Error {
    crate::Error::new(crate::ErrorKind::Codec {
        side: crate::CodecSide::EncodeArgs,
        worker: W::NAME.to_owned(),
        index,
        type_name: type_name::<W::Args>(),
        message,
    })
}

/// Appends one item with raw bytes and a status.
pub(crate) fn put_raw_item(out: &mut Vec<u8>, status: u8, body: &[u8]) {
    put_varint(out, (body.len() as u64) << 2 | u64::from(status));
    out.extend_from_slice(body);
}

/// Splits the next framed item off `input`: `(status, body, whole item)`.
#[inline]
pub(crate) fn next_item<'a>(input: &mut &'a [u8]) -> Option<(u8, &'a [u8], &'a [u8])> {
    let whole = *input;
    let header = get_varint(input)?;
    let len = usize::try_from(header >> 2).ok()?;
    if input.len() < len {
        return None;
    }
    let (body, rest) = input.split_at(len);
    *input = rest;
    let used = whole.len() - rest.len();
    Some(((header & 3) as u8, body, &whole[..used]))
}

/// Decodes a value that must fill `body` exactly.
#[inline]
pub(crate) fn decode_exact<T: DeserializeOwned>(body: &[u8]) -> Result<T, String> {
    match postcard::take_from_bytes::<T>(body) {
        Ok((v, [])) => Ok(v),
        Ok((_, rest)) => Err(trailing_bytes(rest.len())),
        Err(e) => Err(decode_error(&e)),
    }
}

/// [`decode_exact`] of an argument or result, with the one-copy path for a
/// `Vec<u8>`.
#[inline]
pub(crate) fn decode_value<T: DeserializeOwned + 'static>(body: &[u8]) -> Result<T, String> {
    match take_byte_vec(body) {
        Some(v) => Ok(v),
        None => decode_exact(body),
    }
}

#[cold]
fn trailing_bytes(n: usize) -> String {
    format!("{n} trailing bytes")
}

#[cold]
fn decode_error(e: &postcard::Error) -> String {
    e.to_string()
}

/// The arguments of a batch, as the child received them.
pub(crate) enum Args<'a> {
    /// Framed items.
    Framed(&'a [u8]),
    /// Dense values (see [`dense_width`]).
    Dense(&'a [u8]),
    /// `count` consecutive integers of `width` bytes from `first` (see
    /// [`take_range`]).
    Range {
        first: u64,
        count: u32,
        width: usize,
    },
}

/// Runs the arguments of a batch through worker `W` and appends one result
/// per argument to `out`; returns how many it ran (all, unless the parent
/// asked it to stop early), and whether the results are dense (only if the
/// arguments were). Runs in the child.
pub(crate) fn invoke_batch<W: Worker>(
    args: Args<'_>,
    out: &mut Vec<u8>,
) -> Result<(u32, bool), String> {
    match args {
        Args::Framed(input) => invoke_framed::<W>(input, out).map(|ran| (ran, false)),
        Args::Dense(input) => invoke_dense::<W>(input, out),
        Args::Range {
            first,
            count,
            width,
        } => invoke_range::<W>(first, count, width, out),
    }
}

/// [`invoke_batch`] of framed argument items.
fn invoke_framed<W: Worker>(mut input: &[u8], out: &mut Vec<u8>) -> Result<u32, String> {
    // Results are usually about as large as their arguments: room for that
    // up front saves growing (and copying) the buffer several times.
    crate::shm::huge::reserve(out, input.len());
    let mut index = 0u64;
    let items = crate::child::Items::current();
    // A failed batch leaves its sender to drop what it deferred; nothing
    // of an earlier batch may end up in this one.
    drop(DEFERRED.take());
    while !input.is_empty() {
        if !items.started(index) {
            break; // the parent took the rest of the batch for another worker
        }
        index += 1;
        // What was deferred is followed by this item's result.
        flush_deferred(out);
        let Some((status, body, _)) = next_item(&mut input) else {
            return Err("truncated argument item".to_owned());
        };
        if status != ITEM_OK {
            return Err(format!("argument item with status {status}"));
        }
        let args = match decode_fast::<W::Args>(body)
            .ok_or(())
            .or_else(|()| decode_value(body))
        {
            Ok(args) => args,
            Err(e) => {
                put_raw_item(
                    out,
                    ITEM_DECODE_ERROR,
                    format!("{e} (type `{}`)", type_name::<W::Args>()).as_bytes(),
                );
                continue;
            }
        };
        match catch_unwind(AssertUnwindSafe(|| W::call(args))) {
            Ok(value) => put_call_result::<W>(out, value),
            Err(payload) => put_panic(out, &*payload),
        }
    }
    Ok(index as u32)
}

/// [`invoke_batch`] of a dense batch (see [`dense_width`]).
fn invoke_dense<W: Worker>(input: &[u8], out: &mut Vec<u8>) -> Result<(u32, bool), String> {
    let Some(width) = dense_width::<W::Args>().filter(|&w| w > 0 && input.len() % w == 0) else {
        return Err(format!(
            "a dense batch of {} bytes for arguments of type `{}`",
            input.len(),
            type_name::<W::Args>()
        ));
    };
    run_dense::<W, _>(input.len() / width, width, input.chunks_exact(width), out)
}

/// [`invoke_batch`] of a range: `count` integers of `width` bytes from
/// `first` ([`take_range`]), made here one at a time.
fn invoke_range<W: Worker>(
    first: u64,
    count: u32,
    width: usize,
    out: &mut Vec<u8>,
) -> Result<(u32, bool), String> {
    if dense_width::<W::Args>() != Some(width) {
        return Err(format!(
            "a range of {width}-byte integers for arguments of type `{}`",
            type_name::<W::Args>()
        ));
    }
    let args = (0..u64::from(count)).map(|k| range_item(first, k));
    run_dense::<W, _>(count as usize, width, args, out)
}

/// The loop of [`invoke_dense`] and [`invoke_range`]: `count` arguments,
/// each the first `width` bytes of what `args` yields.
#[inline(always)]
fn run_dense<W: Worker, B: AsRef<[u8]>>(
    count: usize,
    width: usize,
    args: impl Iterator<Item = B>,
    out: &mut Vec<u8>,
) -> Result<(u32, bool), String> {
    let results = dense_width::<W::Output>();
    let start = out.len();
    crate::shm::huge::reserve(out, count * results.map_or(width + 1, |w| w));
    let mut args = args;
    let mut index = 0u64;
    let items = crate::child::Items::current();
    let not_dense = |index: u64| {
        format!(
            "argument {index} of a dense batch is not a `{}`",
            type_name::<W::Args>()
        )
    };
    let mut panicked = None;
    if let Some(rw) = results {
        // Dense results go straight into the room reserved for them (in
        // the reply arena if the child offered it, else in `out`), and are
        // counted here: appended one by one, `out`'s length was stored and
        // loaded again for every item, most of what the loop cost (`perf
        // annotate` of a child: 2–3 ns per `x + 1`).
        let direct = match DIRECT.replace(Direct::None) {
            Direct::Offered { room, len } if len >= count * rw => Some(room),
            _ => None,
        };
        let room = match direct {
            // SAFETY: the child offered these bytes for this batch's
            // results alone (`offer_direct`), and nothing else refers to
            // them until it sends the reply.
            Some(room) => unsafe { std::slice::from_raw_parts_mut(room, count * rw) },
            None => &mut out.spare_capacity_mut()[..count * rw],
        };
        let mut bad = false;
        for (slot, bytes) in room.chunks_exact_mut(rw).zip(args.by_ref()) {
            if !items.started(index) {
                break; // the parent took the rest of the batch for another worker
            }
            let Some(args) = get_dense::<W::Args>(&bytes.as_ref()[..width]) else {
                bad = true;
                break;
            };
            match catch_unwind(AssertUnwindSafe(|| W::call(args))) {
                Ok(value) => {
                    for (dst, &src) in slot.iter_mut().zip(&dense_bytes(&value)[..rw]) {
                        dst.write(src);
                    }
                    index += 1;
                }
                Err(payload) => {
                    panicked = Some(payload);
                    break;
                }
            }
        }
        let written = index as usize * rw;
        match direct {
            Some(_) if bad => return Err(not_dense(index)),
            Some(_) if panicked.is_none() => {
                DIRECT.set(Direct::Used(written));
                return Ok((index as u32, true));
            }
            Some(_) => {
                // The results so far go on framed in `out`, after a copy.
                // SAFETY: the loop initialised the first `written` bytes.
                let done =
                    unsafe { std::slice::from_raw_parts(room.as_ptr().cast::<u8>(), written) };
                out.extend_from_slice(done);
            }
            // SAFETY: the loop initialised one slot of `rw` bytes per item
            // counted in `index`, from the start of the spare capacity.
            None => unsafe { out.set_len(start + written) },
        }
        if bad {
            return Err(not_dense(index));
        }
        let Some(payload) = panicked.take() else {
            return Ok((index as u32, true));
        };
        // From the first panic on, every result is framed.
        reframe::<W::Output>(out, start);
        put_panic(out, &*payload);
        index += 1;
    }
    for bytes in args {
        if !items.started(index) {
            break;
        }
        let Some(args) = get_dense::<W::Args>(&bytes.as_ref()[..width]) else {
            return Err(not_dense(index));
        };
        index += 1;
        match catch_unwind(AssertUnwindSafe(|| W::call(args))) {
            Ok(value) => put_result::<W>(out, &value),
            Err(payload) => put_panic(out, &*payload),
        }
    }
    Ok((index as u32, false))
}

/// Room outside `out` for a batch's dense results ([`offer_direct`]).
#[derive(Clone, Copy)]
enum Direct {
    None,
    /// Offered for the batch about to run: `len` bytes at `room`.
    Offered {
        room: *mut std::mem::MaybeUninit<u8>,
        len: usize,
    },
    /// The batch just run wrote this many bytes of results there.
    Used(usize),
}

thread_local! {
    /// The room of this thread's batch: the free reply arena its reply
    /// will go through.
    static DIRECT: std::cell::Cell<Direct> = const { std::cell::Cell::new(Direct::None) };
}

/// Offers the `len` bytes at `room` to the next [`invoke_batch`] on this
/// thread for its results, if they are dense and fit: they are written
/// there instead of after the head in `out`, which saves the child a copy
/// of them into the reply arena. [`take_direct`] says whether they were.
///
/// # Safety
///
/// The bytes must stay writable, and be touched by nothing else (no other
/// process, no reference in this one), until [`take_direct`] is called and
/// then until the reply is sent.
pub(crate) unsafe fn offer_direct(room: *mut std::mem::MaybeUninit<u8>, len: usize) {
    DIRECT.set(Direct::Offered { room, len });
}

/// How many bytes of results the batch just run wrote to the room offered
/// with [`offer_direct`] (`None`: none, they are in `out`); withdraws the
/// offer.
pub(crate) fn take_direct() -> Option<usize> {
    match DIRECT.replace(Direct::None) {
        Direct::Used(n) => Some(n),
        Direct::None | Direct::Offered { .. } => None,
    }
}

thread_local! {
    /// The bytes of a large `Vec<u8>` result that belong at the end of the
    /// reply being built, not copied there: the child writes them after it,
    /// into the reply buffer or the socket ([`take_deferred`]), which saves
    /// one copy of them (about 4 ms at 64 MiB).
    static DEFERRED: std::cell::RefCell<Option<Vec<u8>>> = const { std::cell::RefCell::new(None) };
}

/// Copies a deferred result into `out`: something follows it.
fn flush_deferred(out: &mut Vec<u8>) {
    if let Some(bytes) = DEFERRED.take() {
        out.extend_from_slice(&bytes);
        crate::shm::huge::recycle(bytes);
    }
}

/// The deferred end of the reply just built by [`invoke_batch`], if any:
/// its sender writes these bytes right after it (and counts them in the
/// frame's length).
pub(crate) fn take_deferred() -> Option<Vec<u8>> {
    DEFERRED.take()
}

/// Appends the framed result of a task (or why it could not be encoded),
/// deferring the bytes of a large `Vec<u8>` ([`take_deferred`]).
fn put_call_result<W: Worker>(out: &mut Vec<u8>, value: W::Output) {
    match take_byte_vec_call(value) {
        Ok((head, bytes)) => {
            out.extend_from_slice(&head);
            DEFERRED.set(Some(bytes));
        }
        Err(value) => {
            put_result::<W>(out, &value);
            recycle_value(value);
        }
    }
}

/// Appends the framed result of a task, or why it could not be encoded.
fn put_result<W: Worker>(out: &mut Vec<u8>, value: &W::Output) {
    if let Err(e) = put_item(out, value) {
        put_raw_item(
            out,
            ITEM_ENCODE_ERROR,
            format!("{e} (type `{}`)", type_name::<W::Output>()).as_bytes(),
        );
    }
}

/// Appends the report of a panic caught in a task.
fn put_panic(out: &mut Vec<u8>, payload: &(dyn Any + Send)) {
    let report = crate::child::take_panic_report(payload);
    let bytes = postcard::to_stdvec(&report).unwrap_or_default();
    put_raw_item(out, ITEM_PANIC, &bytes);
}

// ---- frames ---------------------------------------------------------------

/// Starts a frame in `buf` (cleared): reserves the length and writes the tag.
pub(crate) fn begin_frame(buf: &mut Vec<u8>, tag: u8) {
    buf.clear();
    buf.extend_from_slice(&[0, 0, 0, 0, tag]);
}

/// Builds an `ARENAS` frame in `buf`: the request and reply arenas'
/// lengths, both zero to drop them (then no descriptors go with it).
pub(crate) fn arenas_frame(buf: &mut Vec<u8>, request: u64, reply: u64) -> io::Result<()> {
    begin_frame(buf, TAG_ARENAS);
    buf.extend_from_slice(&request.to_le_bytes());
    buf.extend_from_slice(&reply.to_le_bytes());
    finish_frame(buf)
}

/// The request and reply lengths of an `ARENAS` frame (`frame` from its
/// tag on); `(0, 0)` drops the arenas.
pub(crate) fn arena_lengths(frame: &[u8]) -> io::Result<(u64, u64)> {
    let mut cur = Cursor(frame.get(1..).unwrap_or_default());
    Ok((cur.u64()?, cur.u64()?))
}

/// Fills in the length of a frame built with [`begin_frame`].
pub(crate) fn finish_frame(buf: &mut [u8]) -> io::Result<()> {
    finish_frame_with(buf, 0)
}

/// Fills in the length of a frame whose body continues with `more` bytes
/// that are written separately (see `fdpass::write_parts_with_fds`).
pub(crate) fn finish_frame_with(buf: &mut [u8], more: usize) -> io::Result<()> {
    let body = buf.len() - 4 + more;
    let len = u32::try_from(body)
        .ok()
        .filter(|&l| (l as usize) <= MAX_FRAME)
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "frame larger than 1 GiB"))?;
    buf[..4].copy_from_slice(&len.to_le_bytes());
    Ok(())
}

/// Most of a frame's length reserved before its bytes arrive: the buffer
/// grows with what actually comes, so a forged length costs nothing.
const RESERVE_AHEAD: usize = 8 << 20;

/// How long a frame that has begun may go without a byte: a child writes
/// each frame from memory in one go, so a frame that stops halfway is a
/// broken or hostile child. Applies where the socket has this read timeout
/// (a parent's end of a worker's socket, see `spawn`).
pub(crate) const FRAME_STALL: std::time::Duration = std::time::Duration::from_secs(5);

/// Reads one frame into `buf`; returns its tag, or `None` on a clean EOF
/// before the first byte.
///
/// On a socket with a read timeout, waiting for a frame to begin is not
/// limited (the timeout only wakes the wait), but a frame that stops for
/// that long once it has begun fails with [`io::ErrorKind::TimedOut`].
///
/// # Errors
///
/// `InvalidData` for a length of zero or over 1 GiB, `UnexpectedEof` for a
/// stream that ends inside a frame, `TimedOut` for one that stalls there,
/// and the reader's own errors.
pub(crate) fn read_frame(r: &mut impl Read, buf: &mut Vec<u8>) -> io::Result<Option<u8>> {
    let mut len = [0u8; 4];
    let mut got = 0;
    while got < 4 {
        match r.read(&mut len[got..]) {
            Ok(0) if got == 0 => return Ok(None),
            Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if got == 0 && is_timeout(&e) => {}
            Err(e) if is_timeout(&e) => return Err(stalled(got)),
            Err(e) => return Err(e),
        }
    }
    let len = u32::from_le_bytes(len) as usize;
    if len == 0 || len > MAX_FRAME {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("a frame length of {len} bytes (at most {MAX_FRAME})"),
        ));
    }
    buf.clear();
    crate::shm::huge::reserve_bytes(buf, len.min(RESERVE_AHEAD));
    // `take` + `read_to_end` fills spare capacity without zeroing it first.
    let got = match r.take(len as u64).read_to_end(buf) {
        Ok(got) => got,
        Err(e) if is_timeout(&e) => return Err(stalled(4 + buf.len())),
        Err(e) => return Err(e),
    };
    if got < len {
        return Err(io::ErrorKind::UnexpectedEof.into());
    }
    Ok(Some(buf[0]))
}

/// `true` for a [`read_frame`] error that only a peer breaking the
/// protocol causes (a bad length, a frame that stalls halfway), as opposed
/// to the peer's end.
pub(crate) fn is_breach(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::InvalidData || is_timeout(e)
}

fn is_timeout(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    )
}

#[cold]
fn stalled(got: usize) -> io::Error {
    io::Error::new(
        io::ErrorKind::TimedOut,
        format!("a frame stalled after {got} bytes"),
    )
}

/// A cursor over a frame body.
pub(crate) struct Cursor<'a>(pub(crate) &'a [u8]);

impl<'a> Cursor<'a> {
    pub(crate) fn u32(&mut self) -> io::Result<u32> {
        Ok(u32::from_le_bytes(
            self.take(4)?.try_into().expect("4 bytes"),
        ))
    }
    pub(crate) fn u64(&mut self) -> io::Result<u64> {
        Ok(u64::from_le_bytes(
            self.take(8)?.try_into().expect("8 bytes"),
        ))
    }
    pub(crate) fn take(&mut self, n: usize) -> io::Result<&'a [u8]> {
        if self.0.len() < n {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "truncated frame",
            ));
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }
    pub(crate) fn rest(self) -> &'a [u8] {
        self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varint_round_trip() {
        for v in [0u64, 1, 127, 128, 300, u32::MAX as u64, u64::MAX] {
            let mut out = Vec::new();
            put_varint(&mut out, v);
            let mut s = &out[..];
            assert_eq!(get_varint(&mut s), Some(v));
            assert!(s.is_empty());
        }
    }

    #[test]
    fn items_round_trip_small_and_large() {
        let mut out = Vec::new();
        put_item(&mut out, &5u64).unwrap();
        let big = vec![7u8; 1000];
        put_item(&mut out, &big).unwrap();
        put_raw_item(&mut out, ITEM_PANIC, b"boom");
        let mut s = &out[..];
        let (st, body, _) = next_item(&mut s).unwrap();
        assert_eq!((st, decode_exact::<u64>(body).unwrap()), (ITEM_OK, 5));
        let (st, body, _) = next_item(&mut s).unwrap();
        assert_eq!((st, decode_exact::<Vec<u8>>(body).unwrap()), (ITEM_OK, big));
        let (st, body, _) = next_item(&mut s).unwrap();
        assert_eq!((st, body), (ITEM_PANIC, &b"boom"[..]));
        assert!(s.is_empty());
    }

    #[test]
    fn byte_vectors_take_one_copy_and_match_serdes_bytes() {
        // Lengths around the varint boundaries of the length prefix and of
        // the item header, and one above the huge-page threshold.
        for len in [0, 1, 29, 30, 31, 127, 128, 16_381, 16_382, 16_384, 5 << 20] {
            let v: Vec<u8> = (0..len).map(|i| (i * 7 % 251) as u8).collect();
            let mut fast = vec![0xAA];
            put_item(&mut fast, &v).unwrap();
            // What the serde path writes for the same bytes (a slice is not
            // a `Vec<u8>`, so it takes the serializer).
            let mut slow = vec![0xAA];
            put_item(&mut slow, &Box::<[u8]>::from(&v[..])).unwrap();
            assert_eq!(fast, slow, "len {len}");
            let mut s = &fast[1..];
            let (status, body, _) = next_item(&mut s).unwrap();
            assert!(s.is_empty() && status == ITEM_OK);
            assert_eq!(decode_value::<Vec<u8>>(body).unwrap(), v);
            assert_eq!(decode_fast::<Vec<u8>>(body).unwrap(), v);
            assert_eq!(postcard::from_bytes::<Vec<u8>>(body).unwrap(), v);
        }
    }

    fn dense_round_trip<T: Serialize + DeserializeOwned + PartialEq + std::fmt::Debug + 'static>(
        values: &[T],
        width: usize,
    ) {
        assert_eq!(dense_width::<T>(), Some(width), "{}", type_name::<T>());
        let mut out = vec![0xAA];
        for v in values {
            put_dense(&mut out, v);
        }
        assert_eq!(out.len(), 1 + width * values.len(), "{}", type_name::<T>());
        for (v, bytes) in values.iter().zip(out[1..].chunks_exact(width)) {
            assert_eq!(get_dense::<T>(bytes).as_ref(), Some(v));
        }
        // The batch encoder writes the same bytes, in one go.
        let mut filled = vec![0xAA];
        let mut input = values
            .iter()
            .map(|v| postcard::from_bytes::<T>(&postcard::to_allocvec(v).unwrap()).unwrap());
        assert_eq!(
            fill_dense(&mut filled, &mut input, values.len() + 1),
            (values.len(), true)
        );
        assert_eq!(filled, out, "{}", type_name::<T>());
        // Copied out in one go where the type allows it: the same values,
        // and no more than asked for or than the bytes hold.
        let mut copied: Vec<T> = Vec::with_capacity(values.len());
        // SAFETY: room for `values.len()` values, not overlapping `out`.
        let n = unsafe { copy_plain(&out[1..], values.len(), copied.as_mut_ptr()) };
        if let Some(n) = n {
            assert_eq!(n, values.len(), "{}", type_name::<T>());
            // SAFETY: `copy_plain` wrote the first `n`.
            unsafe { copied.set_len(n) };
            assert_eq!(copied, values, "{}", type_name::<T>());
            let mut two: Vec<T> = Vec::with_capacity(2);
            // SAFETY: room for 2; the bytes hold fewer when `values` does.
            let n = unsafe { copy_plain(&out[1..], 2, two.as_mut_ptr()) };
            assert_eq!(n, Some(values.len().min(2)));
        }
        assert_eq!(n.is_some(), dense_is_plain::<T>());
    }

    #[test]
    fn plain_dense_types_are_the_numbers_and_not_bool() {
        assert!(dense_is_plain::<u8>() && dense_is_plain::<i64>() && dense_is_plain::<f32>());
        assert_eq!(dense_is_plain::<usize>(), cfg!(target_pointer_width = "64"));
        assert!(!dense_is_plain::<bool>(), "a bool's byte must be checked");
        assert!(!dense_is_plain::<String>() && !dense_is_plain::<(u8, u8)>());
        let mut out: Vec<bool> = Vec::with_capacity(1);
        // SAFETY: room for one; nothing is written for a bool.
        assert_eq!(unsafe { copy_plain(&[2], 1, out.as_mut_ptr()) }, None);
    }

    #[test]
    fn fill_dense_stops_at_its_limit_without_taking_more() {
        let mut out = vec![7];
        let mut input = 10u32..15;
        assert_eq!(fill_dense(&mut out, &mut input, 3), (3, false));
        assert_eq!(input.next(), Some(13), "no item taken beyond the limit");
        assert_eq!(out, [7, 10, 0, 0, 0, 11, 0, 0, 0, 12, 0, 0, 0]);
        // Exactly as many as are left: not known to be exhausted yet.
        assert_eq!(fill_dense(&mut out, &mut input, 1), (1, false));
        assert_eq!(fill_dense(&mut out, &mut input, 4), (0, true));
        assert_eq!(out.len(), 1 + 4 * 4);
        assert_eq!(fill_dense(&mut out, &mut (0u8..0), 0), (0, false));
        // No dense form: nothing taken.
        let mut strings = ["a".to_owned()].into_iter();
        assert_eq!(fill_dense(&mut out, &mut strings, 5), (0, false));
        assert_eq!(strings.len(), 1);
    }

    #[test]
    fn dense_values_round_trip_at_their_extremes() {
        dense_round_trip(&[0u64, 1, u64::MAX], 8);
        dense_round_trip(&[0u32, u32::MAX], 4);
        dense_round_trip(&[0u16, u16::MAX], 2);
        dense_round_trip(&[0u8, 255], 1);
        dense_round_trip(&[i64::MIN, -1, 0, i64::MAX], 8);
        dense_round_trip(&[i32::MIN, i32::MAX], 4);
        dense_round_trip(&[i16::MIN, i16::MAX], 2);
        dense_round_trip(&[i8::MIN, i8::MAX], 1);
        dense_round_trip(&[usize::MAX, 0], 8);
        dense_round_trip(&[isize::MIN, isize::MAX], 8);
        dense_round_trip(&[-0.0f64, f64::MIN_POSITIVE, f64::INFINITY], 8);
        dense_round_trip(&[1.5f32, f32::MAX], 4);
        dense_round_trip(&[false, true], 1);
        let nan = get_dense::<f64>(&f64::NAN.to_le_bytes()).unwrap();
        assert!(nan.is_nan());
        // Not one of them.
        assert_eq!(get_dense::<bool>(&[2]), None);
        assert_eq!(get_dense::<u64>(&[1, 2, 3]), None, "too short");
        assert_eq!(dense_width::<()>(), None);
        assert_eq!(dense_width::<(u64, u64)>(), None);
        assert_eq!(dense_width::<String>(), None);
        assert_eq!(dense_width::<char>(), None);
    }

    /// A stand-in for `#[worker]`: panics on 13, doubles the rest.
    #[derive(Clone, Copy)]
    struct Double;

    impl Worker for Double {
        type Args = u32;
        type Output = u64;
        const NAME: &'static str = "double";
        fn call(x: u32) -> u64 {
            assert!(x != 13, "thirteen");
            u64::from(x) * 2
        }
    }

    /// A stand-in for `#[worker]` on `bool`: panics on `false`.
    #[derive(Clone, Copy)]
    struct Not;

    impl Worker for Not {
        type Args = bool;
        type Output = bool;
        const NAME: &'static str = "not";
        fn call(x: bool) -> bool {
            assert!(x, "false");
            !x
        }
    }

    #[test]
    fn a_dense_argument_that_is_not_one_fails_the_batch_and_names_it() {
        // Dense results, and after a panic framed ones: both loops check.
        for input in [[1u8, 1, 2, 1], [1, 0, 2, 1]] {
            let mut out = vec![7];
            let err = invoke_batch::<Not>(Args::Dense(&input), &mut out).unwrap_err();
            assert!(
                err.contains("argument 2 of a dense batch is not a `bool`"),
                "{err}"
            );
        }
        let mut out = Vec::new();
        assert_eq!(
            invoke_batch::<Not>(Args::Dense(&[1, 1]), &mut out),
            Ok((2, true))
        );
        assert_eq!(out, [0, 0]);
    }

    /// What `take_range` takes of `input` with `limit`, written out as
    /// the dense bytes the child would make, with the items it left.
    fn taken<I: Iterator + Clone>(mut input: I, limit: usize) -> Option<(Vec<u8>, bool, Vec<u8>)>
    where
        I::Item: Serialize + 'static,
    {
        let width = dense_width::<I::Item>()?;
        let (first, count, exhausted) = take_range(&mut input, limit)?;
        let mut left = Vec::new();
        for x in input {
            put_dense(&mut left, &x);
        }
        Some((range_bytes(first, count as u32, width), exhausted, left))
    }

    fn dense_of<T: Serialize + 'static>(values: impl IntoIterator<Item = T>) -> Vec<u8> {
        let mut out = Vec::new();
        for v in values {
            put_dense(&mut out, &v);
        }
        out
    }

    #[test]
    fn ranges_are_taken_as_their_first_integer_and_a_count() {
        // Signed types across zero and at their ends, unsigned at the top,
        // inclusive ranges up to the last value, limits short of the end.
        assert_eq!(taken(-3i8..3, 100), Some((dense_of(-3i8..3), true, vec![])));
        assert_eq!(
            taken(i8::MIN..=i8::MAX, 1_000),
            Some((dense_of(i8::MIN..=i8::MAX), true, vec![]))
        );
        assert_eq!(
            taken(-70_000i32..70_000, 100_000),
            Some((
                dense_of(-70_000i32..30_000),
                false,
                dense_of(30_000i32..70_000)
            ))
        );
        assert_eq!(
            taken(u64::MAX - 5..=u64::MAX, 4),
            Some((
                dense_of(u64::MAX - 5..u64::MAX - 1),
                false,
                dense_of(u64::MAX - 1..=u64::MAX)
            ))
        );
        assert_eq!(
            taken(u16::MAX - 2..=u16::MAX, 3),
            Some((dense_of(u16::MAX - 2..=u16::MAX), true, vec![]))
        );
        assert_eq!(
            taken(isize::MIN..isize::MIN + 3, 1),
            Some((
                dense_of([isize::MIN]),
                false,
                dense_of(isize::MIN + 1..isize::MIN + 3)
            ))
        );
        assert_eq!(taken(7u32..7, 5), Some((vec![], true, vec![])));
        // Not ranges of integers: nothing is taken.
        assert_eq!(taken((0u64..10).map(|x| x + 1), 5), None);
        assert_eq!(taken((0u64..10).step_by(2), 5), None);
        assert_eq!(taken(vec![1u64, 2].into_iter(), 5), None);
        assert_eq!(taken('a'..='z', 5), None);
        let mut untouched = (0u64..10).rev();
        assert_eq!(take_range(&mut untouched, 5), None);
        assert_eq!(untouched.next(), Some(9));
    }

    #[test]
    fn a_range_batch_runs_as_its_dense_batch_would() {
        let mut dense_out = vec![7];
        let input = dense_of(1u32..13);
        let want = invoke_batch::<Double>(Args::Dense(&input), &mut dense_out);
        let mut range_out = vec![7];
        let first = u64::from_le_bytes(dense_bytes(&1u32));
        assert_eq!(
            invoke_batch::<Double>(
                Args::Range {
                    first,
                    count: 12,
                    width: 4
                },
                &mut range_out
            ),
            want
        );
        assert_eq!(range_out, dense_out);
        // Through the panicking item, too: framed from there on, the same.
        let mut dense_out = Vec::new();
        let want = invoke_batch::<Double>(Args::Dense(&dense_of(10u32..20)), &mut dense_out);
        let mut range_out = Vec::new();
        assert_eq!(
            invoke_batch::<Double>(
                Args::Range {
                    first: 10,
                    count: 10,
                    width: 4
                },
                &mut range_out
            ),
            want
        );
        assert_eq!(want, Ok((10, false)));
        assert_eq!(range_out, dense_out);
        // A width that is not the arguments' is refused.
        let err = invoke_batch::<Double>(
            Args::Range {
                first: 0,
                count: 3,
                width: 8,
            },
            &mut Vec::new(),
        )
        .unwrap_err();
        assert!(err.contains("range of 8-byte integers"), "{err}");
    }

    #[test]
    fn dense_results_go_to_the_room_offered_if_they_fit() {
        let input = dense_of([1u32, 2, 3]);
        let mut room = [std::mem::MaybeUninit::new(0xEEu8); 32];
        // Written there, not in `out`, and counted.
        let mut out = vec![7];
        // SAFETY: `room` outlives the batch, and is not touched meanwhile.
        unsafe { offer_direct(room.as_mut_ptr(), 24) };
        let ran = invoke_batch::<Double>(Args::Dense(&input), &mut out);
        assert_eq!((ran, take_direct()), (Ok((3, true)), Some(24)));
        assert_eq!(out, [7]);
        // SAFETY: initialised above (every byte of `room` was).
        let room_bytes: Vec<u8> = room.iter().map(|b| unsafe { b.assume_init() }).collect();
        assert_eq!(room_bytes[..24], dense_of([2u64, 4, 6])[..]);
        assert_eq!(room_bytes[24..], [0xEE; 8], "nothing past the results");
        // The offer is withdrawn: the next batch writes to `out`.
        assert_eq!(
            invoke_batch::<Double>(Args::Dense(&input), &mut out),
            Ok((3, true))
        );
        assert_eq!(out[1..], dense_of([2u64, 4, 6])[..]);
        // Too small a room: `out`, as without one.
        let mut out = vec![7];
        // SAFETY: as above.
        unsafe { offer_direct(room.as_mut_ptr(), 23) };
        let ran = invoke_batch::<Double>(Args::Dense(&input), &mut out);
        assert_eq!((ran, take_direct()), (Ok((3, true)), None));
        assert_eq!(out[1..], dense_of([2u64, 4, 6])[..]);
        // A panic: the results so far are copied to `out` and the batch
        // goes on framed there, as without a room.
        let input = dense_of([1u32, 2, 13, 20]);
        let mut without = vec![7];
        let want = invoke_batch::<Double>(Args::Dense(&input), &mut without);
        let mut out = vec![7];
        // SAFETY: as above.
        unsafe { offer_direct(room.as_mut_ptr(), 32) };
        let ran = invoke_batch::<Double>(Args::Dense(&input), &mut out);
        assert_eq!((ran, take_direct()), (want.clone(), None));
        assert_eq!(want, Ok((4, false)));
        assert_eq!(out, without);
        // A range batch uses it too.
        let mut out = vec![7];
        // SAFETY: as above.
        unsafe { offer_direct(room.as_mut_ptr(), 32) };
        let range = Args::Range {
            first: 5,
            count: 2,
            width: 4,
        };
        let ran = invoke_batch::<Double>(range, &mut out);
        assert_eq!((ran, take_direct()), (Ok((2, true)), Some(16)));
        assert_eq!(out, [7]);
    }

    #[test]
    fn dense_batches_run_dense_until_an_item_fails() {
        let mut input = Vec::new();
        for x in [1u32, 2, 3] {
            put_dense(&mut input, &x);
        }
        let mut out = vec![7];
        assert_eq!(
            invoke_batch::<Double>(Args::Dense(&input), &mut out),
            Ok((3, true))
        );
        assert_eq!(
            out[1..],
            [2u64, 4, 6]
                .iter()
                .flat_map(|v| v.to_le_bytes())
                .collect::<Vec<_>>()
        );

        // A panic turns the results so far, and those after, into items.
        put_dense(&mut input, &13u32);
        put_dense(&mut input, &20u32);
        let mut out = vec![7];
        assert_eq!(
            invoke_batch::<Double>(Args::Dense(&input), &mut out),
            Ok((5, false))
        );
        let mut rest = &out[1..];
        for want in [2u64, 4, 6] {
            let (status, body, _) = next_item(&mut rest).unwrap();
            assert_eq!(
                (status, decode_exact::<u64>(body).unwrap()),
                (ITEM_OK, want)
            );
        }
        let (status, body, _) = next_item(&mut rest).unwrap();
        assert_eq!(status, ITEM_PANIC);
        let report: PanicReport = decode_exact(body).unwrap();
        assert!(report.message.contains("thirteen"), "{report:?}");
        let (status, body, _) = next_item(&mut rest).unwrap();
        assert_eq!((status, decode_exact::<u64>(body).unwrap()), (ITEM_OK, 40));
        assert!(rest.is_empty());

        // A dense batch whose length is not a whole number of arguments.
        let err = invoke_batch::<Double>(Args::Dense(&input[..7]), &mut out).unwrap_err();
        assert!(err.contains("dense batch of 7 bytes"), "{err}");
        // The same items framed: framed results.
        let mut framed = Vec::new();
        for x in [1u32, 2] {
            put_item(&mut framed, &x).unwrap();
        }
        let mut out = Vec::new();
        assert_eq!(
            invoke_batch::<Double>(Args::Framed(&framed), &mut out),
            Ok((2, false))
        );
        assert_eq!(next_item(&mut &out[..]).map(|i| i.0), Some(ITEM_OK));
    }

    #[test]
    fn malformed_byte_vectors_are_refused_with_postcards_message() {
        let body = postcard::to_stdvec(&vec![1u8, 2, 3]).unwrap();
        // Cut short, and with a byte too many.
        let short = decode_value::<Vec<u8>>(&body[..3]).unwrap_err();
        assert!(short.contains("end"), "{short}");
        assert!(decode_fast::<Vec<u8>>(&body[..3]).is_none());
        let mut long = body.clone();
        long.push(9);
        assert_eq!(
            decode_value::<Vec<u8>>(&long).unwrap_err(),
            "1 trailing bytes"
        );
        // A bad length prefix.
        assert!(decode_value::<Vec<u8>>(&[0xFF]).is_err());
        // Other types are not taken for bytes.
        assert_eq!(decode_value::<(u8, u8)>(&[1, 2]).unwrap(), (1, 2));
    }

    /// Encodes `v` with [`Encoder`] and checks it against postcard's own
    /// serializer, byte for byte, and that postcard decodes it back.
    fn same_as_postcard<T>(v: &T)
    where
        T: Serialize + DeserializeOwned + PartialEq + std::fmt::Debug + 'static,
    {
        let mut ours = vec![0xAA]; // appends after what is there
        v.serialize(&mut Encoder { out: &mut ours }).unwrap();
        let theirs = postcard::to_stdvec(v).unwrap();
        assert_eq!(&ours[1..], &theirs[..], "{v:?}");
        assert_eq!(&decode_exact::<T>(&ours[1..]).unwrap(), v);
        assert_eq!(&decode_fast::<T>(&ours[1..]).unwrap(), v);
        // Every strict prefix is refused, as postcard refuses it.
        for cut in 0..ours.len() - 1 {
            let short = &ours[1..1 + cut];
            assert_eq!(
                decode_fast::<T>(short).is_some(),
                decode_exact::<T>(short).is_ok(),
                "{v:?} cut at {cut}"
            );
        }
    }

    #[test]
    fn encoder_writes_what_postcard_writes() {
        use std::collections::BTreeMap;
        #[derive(Serialize, Deserialize, PartialEq, Debug)]
        struct Unit;
        #[derive(Serialize, Deserialize, PartialEq, Debug)]
        struct Newtype(i32);
        #[derive(Serialize, Deserialize, PartialEq, Debug)]
        struct Tuple(u8, i64, String);
        #[derive(Serialize, Deserialize, PartialEq, Debug)]
        struct Named {
            a: u16,
            b: Option<Vec<u32>>,
            c: (char, bool, f32, f64),
            d: BTreeMap<String, i128>,
            e: u128,
            unit: Unit,
            n: Newtype,
        }
        #[derive(Serialize, Deserialize, PartialEq, Debug)]
        enum E {
            A,
            B(u64),
            C(i8, i16),
            D { x: Option<u8> },
        }
        for v in [0u64, 1, 127, 128, 16_383, 16_384, u32::MAX as u64, u64::MAX] {
            same_as_postcard(&v);
            same_as_postcard(&(v as u32));
            same_as_postcard(&(v as u16));
            same_as_postcard(&(v as i64));
            same_as_postcard(&(v as i64).wrapping_neg());
            same_as_postcard(&(v as i32));
            same_as_postcard(&(v as i16));
            same_as_postcard(&(v as i8));
            same_as_postcard(&(u128::from(v) << 64 | u128::from(v)));
            same_as_postcard(&(i128::from(v) << 63).wrapping_neg());
            same_as_postcard(&(v as usize, v as isize));
        }
        same_as_postcard(&i128::MIN);
        same_as_postcard(&i64::MIN);
        same_as_postcard(&());
        same_as_postcard(&Unit);
        same_as_postcard(&Newtype(-5));
        same_as_postcard(&Tuple(3, -300, "héllo".to_owned()));
        same_as_postcard(&"x".repeat(300));
        same_as_postcard(&vec![7u8; 1000]);
        same_as_postcard(&Some(E::A));
        same_as_postcard(&None::<E>);
        same_as_postcard(&vec![
            E::A,
            E::B(1 << 40),
            E::C(-1, 300),
            E::D { x: Some(9) },
        ]);
        same_as_postcard(&Named {
            a: 65_535,
            b: Some(vec![1, 200, 70_000]),
            c: ('€', true, -1.5, f64::MAX),
            d: [("k".to_owned(), -7), ("long key".to_owned(), i128::MAX)]
                .into_iter()
                .collect(),
            e: u128::MAX,
            unit: Unit,
            n: Newtype(i32::MIN),
        });
    }

    #[test]
    fn decoder_reads_every_varint_length() {
        for bits in 0..64 {
            for v in [1u64 << bits, (1u64 << bits) - 1, (1u64 << bits) | 0x55] {
                let mut bytes = postcard::to_stdvec(&(v, 7u8)).unwrap();
                assert_eq!(decode_fast::<(u64, u8)>(&bytes), Some((v, 7)), "{v}");
                bytes.extend_from_slice(&[0xff; 9]);
                let mut d = Decoder { input: &bytes };
                assert_eq!(d.varint().ok(), Some(v), "{v}");
            }
        }
    }

    #[test]
    fn encoder_keeps_custom_messages_and_rolls_back() {
        struct Refuse;
        impl Serialize for Refuse {
            fn serialize<S: serde::Serializer>(&self, _: S) -> Result<S::Ok, S::Error> {
                Err(serde::ser::Error::custom("no thanks"))
            }
        }
        let mut out = vec![1, 2, 3];
        assert_eq!(
            put_item(&mut out, &(5u64, Refuse)).unwrap_err(),
            "no thanks"
        );
        assert_eq!(out, [1, 2, 3]);
        struct Unsized;
        impl Serialize for Unsized {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_seq(std::iter::from_fn(|| Some(1u8)).take(3).filter(|_| true))
            }
        }
        assert!(put_item(&mut out, &Unsized).is_err());
        assert_eq!(out, [1, 2, 3]);
    }

    #[test]
    fn long_item_headers() {
        let mut out = vec![9];
        for len in [0usize, 30, 31, 32, 33, 4095, 5000, 70_000] {
            put_item(&mut out, &vec![3u8; len]).unwrap();
        }
        let mut s = &out[1..];
        for len in [0usize, 30, 31, 32, 33, 4095, 5000, 70_000] {
            let (st, body, _) = next_item(&mut s).unwrap();
            assert_eq!(st, ITEM_OK);
            assert_eq!(decode_exact::<Vec<u8>>(body).unwrap(), vec![3u8; len]);
        }
        assert!(s.is_empty());
    }

    #[test]
    fn frame_round_trip() {
        let mut buf = Vec::new();
        begin_frame(&mut buf, TAG_RUN);
        buf.extend_from_slice(&42u64.to_le_bytes());
        finish_frame(&mut buf).unwrap();
        let mut r = &buf[..];
        let mut got = Vec::new();
        assert_eq!(read_frame(&mut r, &mut got).unwrap(), Some(TAG_RUN));
        let mut c = Cursor(&got[1..]);
        assert_eq!(c.u64().unwrap(), 42);
        assert_eq!(read_frame(&mut r, &mut got).unwrap(), None);
    }
}
