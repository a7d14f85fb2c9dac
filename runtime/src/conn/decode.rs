//! Decoding a batch's results in the parent: one submitted call's, an
//! item at a time, or runs of them in one tight loop.

use std::any::type_name;

use serde::de::DeserializeOwned;

use super::outcome::{Outcome, Reply};
use crate::codec;
use crate::error::{CodecSide, Error, ErrorKind, Result};
use crate::proto::PanicReport;

/// Decodes the result of a single submitted call.
pub(crate) fn decode_single<R: DeserializeOwned + 'static>(
    worker: &'static str,
    reply: Reply,
) -> Result<R> {
    match reply.outcome {
        Outcome::Failed(f) => Err(f.to_error(worker, None)),
        Outcome::Local(err) => Err(err.expect("a local error is decoded once")),
        Outcome::Stored { .. } => Err(Error::new(ErrorKind::Protocol(format!(
            "the result of a call of worker `{worker}` went to a map's output"
        )))),
        Outcome::Done {
            data, start, dense, ..
        } => {
            let mut rest = &data[start..];
            let result = if dense {
                decode_dense_item(worker, None, &mut rest)
            } else {
                decode_item(worker, None, &mut rest)
            };
            if let Some(buf) = data.into_vec() {
                crate::mem::huge::recycle(buf);
            }
            result
        }
    }
}

/// Decodes the next result of a dense `DONE` body (see
/// [`codec::dense_width`]).
pub(crate) fn decode_dense_item<R: DeserializeOwned + 'static>(
    worker: &'static str,
    index: Option<u64>,
    rest: &mut &[u8],
) -> Result<R> {
    let width = codec::dense_width::<R>().unwrap_or(usize::MAX);
    let value = rest.split_at_checked(width).and_then(|(bytes, after)| {
        *rest = after;
        codec::get_dense::<R>(bytes)
    });
    value.ok_or_else(|| {
        *rest = &[];
        Error::new(ErrorKind::Protocol(format!(
            "worker `{worker}` sent a result for task {index:?} that is not a `{}`",
            type_name::<R>()
        )))
    })
}

/// Decodes the next framed result item of a `DONE` body.
pub(crate) fn decode_item<R: DeserializeOwned + 'static>(
    worker: &'static str,
    index: Option<u64>,
    rest: &mut &[u8],
) -> Result<R> {
    let Some((status, body, _)) = codec::next_item(rest) else {
        *rest = &[];
        return Err(Error::new(ErrorKind::Protocol(format!(
            "the reply of worker `{worker}` is missing the result of task {index:?}"
        ))));
    };
    let codec = |side, type_name, message: String| {
        Error::new(ErrorKind::Codec {
            side,
            worker: worker.to_owned(),
            index,
            type_name,
            message,
        })
    };
    match status {
        codec::ITEM_OK => codec::decode_exact::<R>(body)
            .map_err(|m| codec(CodecSide::DecodeOutput, type_name::<R>(), m)),
        codec::ITEM_PANIC => {
            let report: PanicReport = codec::decode_exact(body).unwrap_or(PanicReport {
                message: "<the panic report could not be decoded>".to_owned(),
                location: None,
            });
            Err(Error::new(ErrorKind::Panic {
                worker: worker.to_owned(),
                index,
                message: report.message,
                location: report.location,
            }))
        }
        codec::ITEM_ENCODE_ERROR => Err(codec(
            CodecSide::EncodeOutput,
            type_name::<R>(),
            String::from_utf8_lossy(body).into_owned(),
        )),
        _ => Err(codec(
            CodecSide::DecodeArgs,
            "arguments",
            String::from_utf8_lossy(body).into_owned(),
        )),
    }
}

/// Decodes up to `max` consecutive results that came back fine from the
/// front of `data` (dense if `dense`, else framed items), handing each to
/// `put`, and stops early at the first one that did not (a panic, an
/// encode error in the child, a value that does not decode): those take
/// the per-item path, which reports them. Returns how many it decoded and
/// how many bytes they took.
///
/// This is the hot loop of `map` and `imap` in the parent (on the caller's
/// thread, or a driver's for a `map` stored in place): one tight loop per
/// run of results instead of a trip through the iterator's state machine
/// and the error handling for each.
#[inline(always)]
pub(crate) fn decode_results<R: DeserializeOwned + 'static>(
    data: &[u8],
    max: u32,
    dense: bool,
    mut put: impl FnMut(R),
) -> (u32, usize) {
    let mut n = 0;
    if let (true, Some(width)) = (dense, codec::dense_width::<R>()) {
        for bytes in data.chunks_exact(width).take(max as usize) {
            let Some(value) = codec::get_dense::<R>(bytes) else {
                break;
            };
            put(value);
            n += 1;
        }
        return (n, n as usize * width);
    }
    let mut rest = data;
    while n < max {
        let mut after = rest;
        let Some((len, body)) = codec::next_ok_item(&mut after) else {
            break;
        };
        match codec::decode_fast_at::<R>(body, len) {
            Some(value) => put(value),
            None => break,
        }
        rest = after;
        n += 1;
    }
    (n, data.len() - rest.len())
}

/// Copies the first `max` results in `data` to `dst` in one go if they
/// are dense and of a plain type ([`codec::copy_plain`]), and returns how
/// many it copied and the bytes they took; `None` (nothing copied): decode
/// them with [`decode_results`].
///
/// # Safety
///
/// As for [`codec::copy_plain`]: `dst` valid for writes of `max` results,
/// not overlapping `data`.
pub(crate) unsafe fn copy_results<R: 'static>(
    data: &[u8],
    max: u32,
    dense: bool,
    dst: *mut R,
) -> Option<(u32, usize)> {
    if !dense {
        return None;
    }
    // SAFETY: the caller's contract.
    let n = unsafe { codec::copy_plain(data, max as usize, dst) }?;
    // Lossless: n <= max.
    Some((n as u32, n * size_of::<R>()))
}
