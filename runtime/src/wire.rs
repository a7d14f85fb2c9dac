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
    if let Err(e) = postcard::serialize_with_flavor(value, Append(out)) {
        out.truncate(start);
        return Err(e.to_string());
    }
    let len = out.len() - start - 1;
    let header = (len as u64) << 2 | u64::from(ITEM_OK);
    if header < 0x80 {
        out[start] = header as u8;
    } else {
        let mut h = Vec::with_capacity(10);
        put_varint(&mut h, header);
        out.splice(start..start + 1, h);
    }
    Ok(())
}

/// A postcard flavor that appends to a borrowed `Vec`, so a failed encode
/// can be rolled back without losing what the buffer already held.
struct Append<'a>(&'a mut Vec<u8>);

impl postcard::ser_flavors::Flavor for Append<'_> {
    type Output = ();

    #[inline]
    fn try_extend(&mut self, data: &[u8]) -> postcard::Result<()> {
        // Varints and small fields come as 1–10 bytes: a call to memcpy for
        // each was the top cost of encoding a batch, so copy those inline.
        if data.len() <= 16 {
            self.0.reserve(data.len());
            for &byte in data {
                self.0.push(byte);
            }
        } else {
            self.0.extend_from_slice(data);
        }
        Ok(())
    }

    #[inline]
    fn try_push(&mut self, data: u8) -> postcard::Result<()> {
        self.0.push(data);
        Ok(())
    }

    fn finalize(self) -> postcard::Result<()> {
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
pub(crate) fn decode_exact<T: DeserializeOwned>(body: &[u8]) -> Result<T, String> {
    match postcard::take_from_bytes::<T>(body) {
        Ok((v, [])) => Ok(v),
        Ok((_, rest)) => Err(format!("{} trailing bytes", rest.len())),
        Err(e) => Err(e.to_string()),
    }
}

/// Runs the items of a `RUN` body through worker `W` and appends one result
/// item per argument item to `out`; returns how many it ran (all, unless
/// the parent asked it to stop early). Runs in the child.
pub(crate) fn invoke_batch<W: Worker>(mut input: &[u8], out: &mut Vec<u8>) -> Result<u32, String> {
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
