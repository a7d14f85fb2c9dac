//! The wire protocol between a pool and its worker processes.
//!
//! Frames on the control socket: `u32` little-endian body length, one tag
//! byte, then the body. Inside `RUN` and `DONE` bodies, each item is framed
//! as a LEB128 header `(len << 2) | status` followed by `len` bytes of
//! postcard, so one bad item can be skipped without losing the others, and
//! a batch can be split after a crash without re-encoding.

use std::any::type_name;
use std::io::{self, Read};
use std::panic::{AssertUnwindSafe, catch_unwind};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::worker::Worker;

/// Bumped whenever the frame layout changes.
pub(crate) const PROTOCOL_VERSION: u32 = 4;

/// Tag, batch id, elapsed ns and items run: where a `DONE` frame's result
/// items start.
pub(crate) const DONE_HEADER: usize = 1 + 8 + 8 + 4;

// Parent → child.
pub(crate) const TAG_RUN: u8 = 1;
pub(crate) const TAG_SHUTDOWN: u8 = 2;
/// First frame to a new child: carries its progress page as a descriptor.
pub(crate) const TAG_SETUP: u8 = 3;
// Child → parent.
pub(crate) const TAG_HELLO: u8 = 16;
pub(crate) const TAG_DONE: u8 = 17;
pub(crate) const TAG_FAILED: u8 = 18;

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
#[inline]
pub(crate) fn put_item<T: Serialize + ?Sized>(out: &mut Vec<u8>, value: &T) -> Result<(), String> {
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

#[cold]
fn trailing_bytes(n: usize) -> String {
    format!("{n} trailing bytes")
}

#[cold]
fn decode_error(e: &postcard::Error) -> String {
    e.to_string()
}

/// Runs the items of a `RUN` body through worker `W` and appends one result
/// item per argument item to `out`; returns how many it ran (all, unless
/// the parent asked it to stop early). Runs in the child.
pub(crate) fn invoke_batch<W: Worker>(mut input: &[u8], out: &mut Vec<u8>) -> Result<u32, String> {
    // Results are usually about as large as their arguments: room for that
    // up front saves growing (and copying) the buffer several times.
    out.reserve(input.len());
    let mut index = 0u64;
    while !input.is_empty() {
        if !crate::child::item_started(index) {
            break; // the parent took the rest of the batch for another worker
        }
        index += 1;
        let Some((status, body, _)) = next_item(&mut input) else {
            return Err("truncated argument item".to_owned());
        };
        if status != ITEM_OK {
            return Err(format!("argument item with status {status}"));
        }
        let args = match decode_exact::<W::Args>(body) {
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
            Ok(value) => {
                if let Err(e) = put_item(out, &value) {
                    put_raw_item(
                        out,
                        ITEM_ENCODE_ERROR,
                        format!("{e} (type `{}`)", type_name::<W::Output>()).as_bytes(),
                    );
                }
            }
            Err(payload) => {
                let report = crate::child::take_panic_report(&*payload);
                let bytes = postcard::to_stdvec(&report).unwrap_or_default();
                put_raw_item(out, ITEM_PANIC, &bytes);
            }
        }
    }
    Ok(index as u32)
}

// ---- frames ---------------------------------------------------------------

/// Starts a frame in `buf` (cleared): reserves the length and writes the tag.
pub(crate) fn begin_frame(buf: &mut Vec<u8>, tag: u8) {
    buf.clear();
    buf.extend_from_slice(&[0, 0, 0, 0, tag]);
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

/// Reads one frame into `buf`; returns its tag, or `None` on a clean EOF
/// before the first byte.
pub(crate) fn read_frame(r: &mut impl Read, buf: &mut Vec<u8>) -> io::Result<Option<u8>> {
    let mut len = [0u8; 4];
    let mut got = 0;
    while got < 4 {
        match r.read(&mut len[got..]) {
            Ok(0) if got == 0 => return Ok(None),
            Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    let len = u32::from_le_bytes(len) as usize;
    if len == 0 || len > MAX_FRAME {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("bad frame length {len}"),
        ));
    }
    buf.clear();
    buf.reserve(len);
    // `take` + `read_to_end` fills spare capacity without zeroing it first.
    let got = r.take(len as u64).read_to_end(buf)?;
    if got < len {
        return Err(io::ErrorKind::UnexpectedEof.into());
    }
    Ok(Some(buf[0]))
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

    /// Encodes `v` with [`Encoder`] and checks it against postcard's own
    /// serializer, byte for byte, and that postcard decodes it back.
    fn same_as_postcard<T>(v: &T)
    where
        T: Serialize + DeserializeOwned + PartialEq + std::fmt::Debug,
    {
        let mut ours = vec![0xAA]; // appends after what is there
        v.serialize(&mut Encoder { out: &mut ours }).unwrap();
        let theirs = postcard::to_stdvec(v).unwrap();
        assert_eq!(&ours[1..], &theirs[..], "{v:?}");
        assert_eq!(&decode_exact::<T>(&ours[1..]).unwrap(), v);
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
