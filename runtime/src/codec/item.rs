//! Items: a LEB128 header `(len << 2) | status` and then the value; the
//! one-copy path of byte vectors; a call's arguments as one item.

use std::any::type_name;

use serde::Serialize;

use super::block::OwnedBlock;
use super::encoder::{Encoder, WIDE_HEADER};
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

/// Appends one item: header, then `value` encoded.
///
/// # Errors
///
/// The message of serde's error if `value` cannot be encoded; `out` is left
/// as it was.
#[inline(always)]
pub(crate) fn put_item<T: Serialize + 'static>(out: &mut Vec<u8>, value: &T) -> Result<(), String> {
    if super::block::maybe_vec::<T>() {
        if let Some((bytes, count)) = super::block::encode_view(&value) {
            put_block(out, bytes, count);
            return Ok(());
        }
    }
    let start = out.len();
    out.push(0); // room for a one-byte header, the common case
    let mut encoder = Encoder::for_item(out, start);
    if let Err(e) = value.serialize(&mut encoder) {
        out.truncate(start);
        return Err(e.0);
    }
    if encoder.wide {
        let len = out.len() - start - WIDE_HEADER;
        wide_header(
            &mut out[start..start + WIDE_HEADER],
            (len as u64) << 2 | u64::from(ITEM_OK),
        );
        return Ok(());
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

// ---- whole blocks ---------------------------------------------------------
//
// A value that is itself a sequence of plain numbers (a `Vec<f64>`, say, as
// the `Args` or `Output` of a worker, or a `map` item) is one block
// ([`super::block`]): its item is written with its header sized up front,
// into a spare buffer when `out` is empty and the block large, instead of
// being encoded behind a one-byte header and moved up.

/// Appends one item holding a block of `count` elements, `bytes` long.
#[inline(never)]
fn put_block(out: &mut Vec<u8>, bytes: &[u8], count: usize) {
    crate::mem::huge::reserve_bytes(out, 20 + bytes.len());
    put_block_head(out, bytes.len(), count);
    crate::mem::copy::extend(out, bytes);
}

/// Appends what comes before the bytes in an item holding a block of
/// `count` elements, `len` bytes long: the item header and the count.
fn put_block_head(out: &mut Vec<u8>, len: usize, count: usize) {
    let mut prefix = [0u8; 10];
    let n = varint_into(&mut prefix, count as u64);
    put_varint(out, ((n + len) as u64) << 2 | u64::from(ITEM_OK));
    out.extend_from_slice(&prefix[..n]);
}

/// Below this, a block argument or result is copied into its frame; from
/// it, the frame takes the vector itself ([`take_block_call`]).
const TAKE_BLOCK_FROM: usize = 64 << 10;

/// The framed item of a call whose arguments (or result) are one large
/// vector of plain numbers, as its head and the vector itself: the vector
/// is not copied (at 64 MiB a copy took about 4 ms of a 25–30 ms round
/// trip). Gives `value` back if it is anything else.
pub(crate) fn take_block_call<T: 'static>(value: T) -> Result<(Vec<u8>, OwnedBlock), T> {
    let (body, count) = super::block::take_block(value, TAKE_BLOCK_FROM)?;
    let mut head = Vec::with_capacity(20);
    put_block_head(&mut head, body.len(), count);
    Ok((head, body))
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

/// Writes `v` as a LEB128 of exactly [`WIDE_HEADER`] bytes into `room`
/// (padded with continuation bytes, which every reader of varints here
/// takes as the same number).
fn wide_header(room: &mut [u8], v: u64) {
    for (i, b) in room.iter_mut().enumerate() {
        let group = (v >> (7 * i)) as u8 & 0x7f;
        *b = if i + 1 < WIDE_HEADER {
            group | 0x80
        } else {
            group
        };
    }
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

/// Appends `value` encoded (no item header): the body of a message.
///
/// # Errors
///
/// The message of serde's error if `value` cannot be encoded; what was
/// appended before the error is left in `out`.
pub(crate) fn encode_into<T: Serialize + ?Sized>(
    out: &mut Vec<u8>,
    value: &T,
) -> Result<(), String> {
    value.serialize(&mut Encoder::new(out)).map_err(|e| e.0)
}

/// `value` encoded (no item header).
///
/// # Errors
///
/// As [`encode_into`].
pub(crate) fn encode_vec<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    encode_into(&mut out, value)?;
    Ok(out)
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::{decode_exact, decode_fast};

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
            // What the serializer writes for the same bytes (a boxed slice
            // is a block inside a value, not a whole one): the same body,
            // behind a header as wide or wider.
            let mut slow = vec![0xAA];
            put_item(&mut slow, &Box::<[u8]>::from(&v[..])).unwrap();
            let mut s = &fast[1..];
            let (status, body, _) = next_item(&mut s).unwrap();
            assert!(s.is_empty() && status == ITEM_OK);
            let mut s = &slow[1..];
            assert_eq!(next_item(&mut s).unwrap().1, body, "len {len}");
            assert!(s.is_empty());
            assert_eq!(decode_exact::<Vec<u8>>(body).unwrap(), v);
            assert_eq!(decode_fast::<Vec<u8>>(body).unwrap(), v);
            assert_eq!(postcard::from_bytes::<Vec<u8>>(body).unwrap(), v);
        }
    }

    #[test]
    fn malformed_byte_vectors_are_refused_with_postcards_message() {
        let body = postcard::to_stdvec(&vec![1u8, 2, 3]).unwrap();
        // Cut short, and with a byte too many.
        let short = decode_exact::<Vec<u8>>(&body[..3]).unwrap_err();
        assert!(short.contains("end"), "{short}");
        assert!(decode_fast::<Vec<u8>>(&body[..3]).is_none());
        let mut long = body.clone();
        long.push(9);
        assert_eq!(
            decode_exact::<Vec<u8>>(&long).unwrap_err(),
            "1 trailing bytes"
        );
        // A bad length prefix.
        assert!(decode_exact::<Vec<u8>>(&[0xFF]).is_err());
        // Other types are not taken for bytes.
        assert_eq!(decode_exact::<(u8, u8)>(&[1, 2]).unwrap(), (1, 2));
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
            let back: Vec<f64> = decode_exact(body).unwrap();
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
            let back: Vec<f32> = decode_exact(body).unwrap();
            assert_eq!(
                back.iter().map(|x| x.to_bits()).collect::<Vec<_>>(),
                v32.iter().map(|x| x.to_bits()).collect::<Vec<_>>()
            );
        }
    }

    #[test]
    fn a_large_block_inside_a_value_is_copied_once_behind_a_wide_header() {
        #[derive(serde::Serialize, serde::Deserialize, PartialEq, Debug)]
        struct Series {
            name: String,
            values: Vec<f64>,
        }
        for n in [10, 8 << 10, 100_000] {
            let v = Series {
                name: "s".repeat(70),
                values: (0..n).map(f64::from).collect(),
            };
            let mut out = vec![0xAB];
            put_item(&mut out, &v).unwrap();
            put_item(&mut out, &7u8).unwrap();
            let mut rest = &out[1..];
            let (status, body, whole) = next_item(&mut rest).unwrap();
            assert_eq!(status, ITEM_OK);
            // Small values keep the shortest header; a block of 64 KiB or
            // more made room for the widest before it was copied.
            let wide = n * 8 >= 64 << 10;
            assert_eq!(whole.len() - body.len(), if wide { WIDE_HEADER } else { 2 });
            assert_eq!(decode_exact::<Series>(body).unwrap(), v);
            let (_, body, _) = next_item(&mut rest).unwrap();
            assert_eq!(decode_exact::<u8>(body).unwrap(), 7);
            assert!(rest.is_empty());
        }
    }
}
