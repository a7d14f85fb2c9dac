//! The messages of a worker's control socket, each written by one function
//! here, and the `RUN` frame read by one (the child's). A worker's answers
//! are read in [`reply`](super::reply), against what the parent knows.
//!
//! | message | direction | body after the tag |
//! |---|---|---|
//! | `SETUP` | parent → child | nothing; the progress page's descriptor goes with it |
//! | `HELLO` | child → parent | protocol version (`u32`), pid (`u32`) |
//! | `ARENAS` | parent → child | request and reply arena lengths (`u64` each); descriptors go with it ([`arenas_frame`](super::arenas_frame)) |
//! | `RUN` | parent → child | batch (`u64`), descriptor count (`u32`), worker name (`u32` length, bytes), then the arguments |
//! | `RUN_SHARED` | parent → child | as `RUN`, then where the arguments are in the request arena: offset, length (`u64` each) |
//! | `RUN_RANGE` | parent → child | as `RUN`, then the integers' width (`u8`), the first one (`u64`), how many (`u32`) ([`range_body`](super::range_body)) |
//! | `DONE` | child → parent | batch (`u64`), elapsed ns (`u64`), items run (`u32`), then the results |
//! | `DONE_SHARED` | child → parent | reply arena (`u32`), reply number there (`u64`), the `DONE` frame's length (`u64`) |
//! | `FAILED` | child → parent | batch (`u64`), a postcard [`BatchFailure`] |
//! | `SHUTDOWN` | parent → child | nothing |
//! | `TRACE` | parent → child | the most verbose level of `tracing` events to forward (`u8`: 0 = none, 1 = ERROR … 5 = TRACE), whether the event socket's descriptor goes with it (`u8`) |
//!
//! A `RUN` or `DONE` tag may carry [`DENSE`](super::DENSE).

use std::io;

use super::{
    BatchFailure, Cursor, PROTOCOL_VERSION, TAG_DONE, TAG_DONE_SHARED, TAG_FAILED, TAG_HELLO,
    TAG_RUN, TAG_RUN_RANGE, TAG_RUN_SHARED, TAG_SETUP, TAG_SHUTDOWN, TAG_TRACE, begin_frame,
    finish_frame,
};

/// Builds a `SETUP` frame in `buf`.
pub(crate) fn setup(buf: &mut Vec<u8>) -> io::Result<()> {
    begin_frame(buf, TAG_SETUP);
    finish_frame(buf)
}

/// Builds the `HELLO` frame of process `pid` in `buf`.
pub(crate) fn hello(buf: &mut Vec<u8>, pid: u32) -> io::Result<()> {
    begin_frame(buf, TAG_HELLO);
    buf.extend_from_slice(&PROTOCOL_VERSION.to_le_bytes());
    buf.extend_from_slice(&pid.to_le_bytes());
    finish_frame(buf)
}

/// Builds a `SHUTDOWN` frame in `buf`.
pub(crate) fn shutdown(buf: &mut Vec<u8>) -> io::Result<()> {
    begin_frame(buf, TAG_SHUTDOWN);
    finish_frame(buf)
}

/// Builds a `TRACE` frame in `buf`: forward events up to `level` (0 =
/// none, 1 = ERROR … 5 = TRACE); `socket` if the event socket goes with it.
pub(crate) fn trace(buf: &mut Vec<u8>, level: u8, socket: bool) -> io::Result<()> {
    begin_frame(buf, TAG_TRACE);
    buf.extend_from_slice(&[level, u8::from(socket)]);
    finish_frame(buf)
}

/// Reads a `TRACE` frame (from its tag on): the level, and whether a
/// descriptor came with it.
///
/// # Errors
///
/// `InvalidData` for a frame that is not one.
pub(crate) fn read_trace(frame: &[u8]) -> io::Result<(u8, bool)> {
    match frame {
        [TAG_TRACE, level @ 0..=5, socket @ 0..=1] => Ok((*level, *socket == 1)),
        _ => Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "a malformed TRACE frame",
        )),
    }
}

/// Starts a `RUN`, `RUN_SHARED` or `RUN_RANGE` frame (`tag`, with
/// [`DENSE`](super::DENSE) if so) in `buf`: batch, descriptor count, worker
/// name. The caller appends the rest and finishes the frame.
pub(crate) fn run_head(buf: &mut Vec<u8>, tag: u8, batch: u64, worker: &str, fds: usize) {
    begin_frame(buf, tag);
    buf.extend_from_slice(&batch.to_le_bytes());
    buf.extend_from_slice(&(fds as u32).to_le_bytes());
    buf.extend_from_slice(&(worker.len() as u32).to_le_bytes());
    buf.extend_from_slice(worker.as_bytes());
}

/// Appends where a `RUN_SHARED` frame's arguments are in the request
/// arena.
pub(crate) fn shared_args(buf: &mut Vec<u8>, offset: usize, len: usize) {
    buf.extend_from_slice(&(offset as u64).to_le_bytes());
    buf.extend_from_slice(&(len as u64).to_le_bytes());
}

/// Starts the `DONE` frame of `batch` in `buf`, with room for its elapsed
/// time and item count, and returns where that room is (see
/// [`done_timing`]).
pub(crate) fn done_head(buf: &mut Vec<u8>, batch: u64) -> usize {
    begin_frame(buf, TAG_DONE);
    buf.extend_from_slice(&batch.to_le_bytes());
    let at = buf.len();
    buf.extend_from_slice(&0u64.to_le_bytes());
    buf.extend_from_slice(&0u32.to_le_bytes());
    at
}

/// Fills in the elapsed time and item count of a `DONE` frame started by
/// [`done_head`] (`at` is what it returned).
pub(crate) fn done_timing(buf: &mut [u8], at: usize, elapsed_ns: u64, ran: u32) {
    buf[at..at + 8].copy_from_slice(&elapsed_ns.to_le_bytes());
    buf[at + 8..at + 12].copy_from_slice(&ran.to_le_bytes());
}

/// Starts a `DONE_SHARED` frame in `buf`: the reply is number `seq` of
/// reply arena `arena`, `len` bytes from its tag on.
pub(crate) fn shared_done(buf: &mut Vec<u8>, arena: usize, seq: u64, len: usize) {
    begin_frame(buf, TAG_DONE_SHARED);
    buf.extend_from_slice(&(arena as u32).to_le_bytes());
    buf.extend_from_slice(&seq.to_le_bytes());
    buf.extend_from_slice(&(len as u64).to_le_bytes());
}

/// Builds the `FAILED` frame of `batch` in `buf`.
pub(crate) fn failed(buf: &mut Vec<u8>, batch: u64, failure: &BatchFailure) -> io::Result<()> {
    begin_frame(buf, TAG_FAILED);
    buf.extend_from_slice(&batch.to_le_bytes());
    let head = buf.len();
    if crate::codec::encode_into(buf, failure).is_err() {
        buf.truncate(head);
    }
    finish_frame(buf)
}

/// A `RUN`, `RUN_SHARED` or `RUN_RANGE` frame, as the child reads it.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Run<'a> {
    pub(crate) batch: u64,
    /// The worker function's name (`<invalid utf-8>` if it is not text).
    pub(crate) worker: &'a str,
    /// The arguments are dense.
    pub(crate) dense: bool,
    pub(crate) args: RunArgs<'a>,
}

/// Where a batch's arguments are.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum RunArgs<'a> {
    /// In the frame.
    Inline(&'a [u8]),
    /// In the request arena: offset and length.
    Shared { offset: usize, len: usize },
    /// Consecutive integers: the first one's dense bytes as a `u64`, how
    /// many, and their width.
    Range {
        first: u64,
        count: u32,
        width: usize,
    },
}

/// Reads a `RUN`, `RUN_SHARED` or `RUN_RANGE` frame (from its tag on).
///
/// # Errors
///
/// `InvalidData` if it is not one, or is cut short.
pub(crate) fn read_run(frame: &[u8]) -> io::Result<Run<'_>> {
    let Some((&tag, body)) = frame.split_first() else {
        return Err(io::Error::new(io::ErrorKind::InvalidData, "an empty frame"));
    };
    let dense = tag & super::DENSE != 0;
    let kind = tag & !super::DENSE;
    let mut cur = Cursor(body);
    let batch = cur.u64()?;
    let _fds = cur.u32()?;
    let name_len = cur.u32()? as usize;
    let worker = std::str::from_utf8(cur.take(name_len)?).unwrap_or("<invalid utf-8>");
    let args = match kind {
        TAG_RUN => RunArgs::Inline(cur.rest()),
        TAG_RUN_SHARED => RunArgs::Shared {
            offset: usize::try_from(cur.u64()?).unwrap_or(usize::MAX),
            len: usize::try_from(cur.u64()?).unwrap_or(usize::MAX),
        },
        TAG_RUN_RANGE => {
            let width = usize::from(cur.take(1)?[0]);
            RunArgs::Range {
                first: cur.u64()?,
                count: cur.u32()?,
                width,
            }
        }
        _ => {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("a frame with tag {tag} where a batch was expected"),
            ));
        }
    };
    Ok(Run {
        batch,
        worker,
        dense,
        args,
    })
}

#[cfg(test)]
mod tests {
    use super::super::{DENSE, finish_frame_with, range_body};
    use super::*;

    #[test]
    fn each_run_form_is_read_as_it_was_written() {
        let read =
            |buf: &[u8]| read_run(&buf[4..]).map(|r| (r.batch, r.worker.to_owned(), r.dense));
        let mut buf = Vec::new();
        run_head(&mut buf, TAG_RUN, 7, "m::f", 0);
        buf.extend_from_slice(b"args");
        finish_frame_with(&mut buf, 0).unwrap();
        assert_eq!(read(&buf).unwrap(), (7, "m::f".to_owned(), false));
        assert_eq!(read_run(&buf[4..]).unwrap().args, RunArgs::Inline(b"args"));

        run_head(&mut buf, TAG_RUN_SHARED | DENSE, 8, "g", 2);
        shared_args(&mut buf, 4096, 100);
        finish_frame_with(&mut buf, 0).unwrap();
        assert_eq!(read(&buf).unwrap(), (8, "g".to_owned(), true));
        assert_eq!(
            read_run(&buf[4..]).unwrap().args,
            RunArgs::Shared {
                offset: 4096,
                len: 100
            }
        );

        run_head(&mut buf, TAG_RUN_RANGE | DENSE, 9, "h", 0);
        buf.extend_from_slice(&range_body(5, 3, 4));
        finish_frame_with(&mut buf, 0).unwrap();
        assert_eq!(
            read_run(&buf[4..]).unwrap().args,
            RunArgs::Range {
                first: 5,
                count: 3,
                width: 4
            }
        );
        // Cut short, or not a batch at all.
        assert!(read_run(&buf[4..buf.len() - 1]).is_err());
        assert!(read_run(&[TAG_SHUTDOWN]).is_err());
        assert!(read_run(&[]).is_err());
    }

    #[test]
    fn done_frames_carry_their_timing() {
        let mut buf = Vec::new();
        let at = done_head(&mut buf, 3);
        done_timing(&mut buf, at, 99, 2);
        finish_frame(&mut buf).unwrap();
        let mut cur = Cursor(&buf[5..]);
        assert_eq!(
            (cur.u64().unwrap(), cur.u64().unwrap(), cur.u32().unwrap()),
            (3, 99, 2)
        );
    }
}
