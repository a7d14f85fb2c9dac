//! Items: a LEB128 header `(len << 2) | status` and then the value in
//! postcard's format; the one-copy path of byte vectors; a call's
//! arguments as one item.

use std::any::{Any, TypeId, type_name};

use serde::Serialize;
use serde::de::DeserializeOwned;

use super::encoder::Encoder;
use crate::worker::Worker;

/// Item status in a framed item header.
pub(crate) const ITEM_OK: u8 = 0;
/// The task panicked; the body is a [`PanicReport`](crate::proto::PanicReport).
pub(crate) const ITEM_PANIC: u8 = 1;
/// The result could not be encoded; the body is the message.
pub(crate) const ITEM_ENCODE_ERROR: u8 = 2;
/// The arguments could not be decoded; the body is the message.
pub(crate) const ITEM_DECODE_ERROR: u8 = 3;

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
    if is_float_vec::<T>() {
        if let Some(v) = (value as &dyn Any).downcast_ref::<Vec<f64>>() {
            put_float_vec(out, v);
            return Ok(());
        }
        if let Some(v) = (value as &dyn Any).downcast_ref::<Vec<f32>>() {
            put_float_vec(out, v);
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
pub(crate) fn is_byte_vec<T: 'static>() -> bool {
    TypeId::of::<T>() == TypeId::of::<Vec<u8>>()
}

/// Appends one item holding `bytes` as postcard encodes a `Vec<u8>`.
#[inline(never)]
fn put_byte_vec(out: &mut Vec<u8>, bytes: &[u8]) {
    crate::mem::huge::reserve_bytes(out, 20 + bytes.len());
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

// Floats: postcard writes an `f32` or `f64` as its little-endian bytes, so
// on a little-endian machine a `Vec<f32>` or `Vec<f64>` on the wire is its
// length and then its memory as it is. Such a vector is copied in one go
// each way, bit for bit (NaN payloads and -0.0 included), where serde
// visited one element at a time; the bytes stay postcard's, so either side
// may take either path. A big-endian machine takes serde's path.

/// Whether `T` is `Vec<f32>` or `Vec<f64>` on a little-endian machine.
#[inline(always)]
pub(crate) fn is_float_vec<T: 'static>() -> bool {
    cfg!(target_endian = "little")
        && (TypeId::of::<T>() == TypeId::of::<Vec<f64>>()
            || TypeId::of::<T>() == TypeId::of::<Vec<f32>>())
}

/// A float type whose every bit pattern is a value: the elements of the
/// vectors [`is_float_vec`] takes.
trait Float: Copy + 'static {}
impl Float for f32 {}
impl Float for f64 {}

/// Appends one item holding `v` as postcard encodes it (little-endian
/// machines only, see [`is_float_vec`]).
#[inline(never)]
fn put_float_vec<E: Float>(out: &mut Vec<u8>, v: &[E]) {
    // SAFETY: `E` is `f32` or `f64`: no padding, every byte initialised.
    let bytes = unsafe { std::slice::from_raw_parts(v.as_ptr().cast::<u8>(), size_of_val(v)) };
    crate::mem::huge::reserve_bytes(out, 20 + bytes.len());
    let mut prefix = [0u8; 10];
    let n = varint_into(&mut prefix, v.len() as u64);
    put_varint(out, ((n + bytes.len()) as u64) << 2 | u64::from(ITEM_OK));
    out.extend_from_slice(&prefix[..n]);
    out.extend_from_slice(bytes);
}

/// `body` as a `Vec<E>`, if it is exactly postcard's length prefix and
/// that many elements; `None` otherwise (serde then says what is wrong).
#[inline(never)]
fn float_vec<E: Float>(body: &[u8]) -> Option<Vec<E>> {
    let mut rest = body;
    let count = usize::try_from(get_varint(&mut rest)?).ok()?;
    let len = count.checked_mul(size_of::<E>())?;
    if len != rest.len() {
        return None;
    }
    let mut v = Vec::<E>::new();
    // Huge pages for a large one: a fresh 64 MiB vector faulted in 4 KiB
    // pages cost as much as its copy.
    crate::mem::huge::reserve(&mut v, count);
    // SAFETY: `v` has room for `count` elements, which are `len` bytes, all
    // copied from `rest` (checked to be that long); every bit pattern is an
    // `E` (`Float`), so all `count` are initialised values.
    unsafe {
        std::ptr::copy_nonoverlapping(rest.as_ptr(), v.as_mut_ptr().cast::<u8>(), len);
        v.set_len(count);
    }
    Some(v)
}

/// `body` as a `T`, if `T` is a float vector ([`is_float_vec`]) and `body`
/// a well-formed one.
#[inline(always)]
fn take_float_vec<T: 'static>(body: &[u8]) -> Option<T> {
    if !is_float_vec::<T>() {
        return None;
    }
    let mut slot: Option<T> = None;
    let any = &mut slot as &mut dyn Any;
    if let Some(s) = any.downcast_mut::<Option<Vec<f64>>>() {
        *s = Some(float_vec(body)?);
    } else if let Some(s) = any.downcast_mut::<Option<Vec<f32>>>() {
        *s = Some(float_vec(body)?);
    }
    slot
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
            crate::mem::huge::recycle(bytes);
        }
    }
}

/// `body` as a `T`, if `T` is `Vec<u8>` or a float vector
/// ([`is_float_vec`]) and `body` is a well-formed one; `None` otherwise,
/// and the caller decodes with serde (which, for a malformed vector, says
/// what is wrong with it).
#[inline(always)]
pub(crate) fn take_byte_vec<T: 'static>(body: &[u8]) -> Option<T> {
    if is_float_vec::<T>() {
        return take_float_vec(body);
    }
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
    (len == rest.len() as u64).then(|| crate::mem::huge::to_vec(rest))
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
    let (encoded, fds) = crate::sys::fdpass::capture(|| put_item(&mut payload, args));
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
/// `Vec<u8>`, `Vec<f32>` or `Vec<f64>`.
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::decode_fast;

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

    /// Floats whose bits matter: NaNs with payloads and both signs, -0.0,
    /// the infinities, the extremes, a subnormal.
    fn awkward_f64() -> Vec<f64> {
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
        v.extend((0..1001).map(|i| f64::from(i) * 0.1 - 7.0));
        v
    }

    #[test]
    fn float_vectors_take_one_copy_and_match_postcards_bytes() {
        let f64s = awkward_f64();
        let f32s: Vec<f32> = f64s
            .iter()
            .map(|&x| x as f32)
            .chain([f32::from_bits(0x7fc0_1234)])
            .collect();
        for n in [0, 1, 7, 10, f64s.len()] {
            let v64 = f64s[..n].to_vec();
            let mut out = Vec::new();
            put_item(&mut out, &v64).unwrap();
            let mut rest = &out[..];
            let (status, body, _) = next_item(&mut rest).unwrap();
            assert_eq!(status, ITEM_OK);
            assert!(rest.is_empty());
            assert_eq!(body, &postcard::to_allocvec(&v64).unwrap()[..], "{n} f64s");
            let back: Vec<f64> = decode_value(body).unwrap();
            assert_eq!(
                back.iter().map(|x| x.to_bits()).collect::<Vec<_>>(),
                v64.iter().map(|x| x.to_bits()).collect::<Vec<_>>()
            );
            let fast: Vec<f64> = decode_fast(body).unwrap();
            assert_eq!(fast.len(), n);

            let v32 = f32s[..n.min(f32s.len())].to_vec();
            let mut out = Vec::new();
            put_item(&mut out, &v32).unwrap();
            let mut rest = &out[..];
            let (_, body, _) = next_item(&mut rest).unwrap();
            assert_eq!(body, &postcard::to_allocvec(&v32).unwrap()[..], "{n} f32s");
            let back: Vec<f32> = decode_value(body).unwrap();
            assert_eq!(
                back.iter().map(|x| x.to_bits()).collect::<Vec<_>>(),
                v32.iter().map(|x| x.to_bits()).collect::<Vec<_>>()
            );
        }
    }

    #[test]
    fn malformed_float_vectors_are_errors() {
        let good = postcard::to_allocvec(&vec![1.5f64, 2.5]).unwrap();
        // One byte short, one byte over, a count past the bytes, a count
        // whose byte length overflows.
        let mut over = good.clone();
        over.push(0);
        let mut huge = vec![0xff; 9];
        huge.push(0x01);
        for body in [
            &good[..good.len() - 1],
            &over[..],
            &[3, 0, 0, 0, 0, 0, 0, 0, 0][..],
            &huge[..],
        ] {
            assert!(decode_value::<Vec<f64>>(body).is_err(), "{body:?}");
            assert!(decode_fast::<Vec<f64>>(body).is_none(), "{body:?}");
        }
    }
}
