//! Frames on a worker's control socket: `u32` little-endian body length,
//! one tag byte, then the body; the tags, the protocol version and the
//! frame cap; the messages every frame kind carries.
//!
//! A `RUN` or `DONE` body of 64 KiB or more may travel through a shared
//! buffer of the worker's instead ([`proto::arena`](crate::proto::arena)): the
//! socket then carries a small `RUN_SHARED` or `DONE_SHARED` frame that says
//! where it is.

use std::io::{self, Read};

use serde::{Deserialize, Serialize};

/// Bumped whenever the frame layout changes.
pub(crate) const PROTOCOL_VERSION: u32 = 12;

/// Tag, batch id, elapsed ns and items run: where a `DONE` frame's result
/// items start.
pub(crate) const DONE_HEADER: usize = 1 + 8 + 8 + 4;

// Parent → child.
pub(crate) const TAG_RUN: u8 = 1;
pub(crate) const TAG_SHUTDOWN: u8 = 2;
/// First frame to a new child: carries its progress page as a descriptor.
pub(crate) const TAG_SETUP: u8 = 3;
/// A `RUN` frame whose payload is in the request arena (see
/// [`proto::arena`](crate::proto::arena)): the head of a `RUN` frame, then the
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
/// [`take_range`](crate::codec::take_range)): the head of a `RUN` frame, then the width of one
/// (`u8`), the first one's dense bytes as a `u64`, and how many (`u32`).
/// Always [`DENSE`]: the child makes the arguments itself.
pub(crate) const TAG_RUN_RANGE: u8 = 6;
/// Bytes of a `RUN_RANGE` frame after the head of a `RUN` frame.
pub(crate) const RANGE_BODY: usize = 1 + 8 + 4;
/// Which `tracing` events the child forwards (see [`crate::trace`]): the
/// most verbose level (`u8`), and whether its end of the event socket
/// goes with the frame as a descriptor (`u8`, 0 or 1).
pub(crate) const TAG_TRACE: u8 = 7;
// Child → parent.
pub(crate) const TAG_HELLO: u8 = 16;
pub(crate) const TAG_DONE: u8 = 17;
pub(crate) const TAG_FAILED: u8 = 18;
/// A `DONE` frame whose body is in a reply arena: which one (`u32`),
/// the reply's sequence number in it and the body's length (`u64` each).
pub(crate) const TAG_DONE_SHARED: u8 = 19;

/// Set in the tag of a `RUN` (or `RUN_SHARED`) frame whose arguments are
/// dense, and of a `DONE` frame whose results are (see [`dense_width`](crate::codec::dense_width)).
pub(crate) const DENSE: u8 = 0x40;

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

// ---- frames ---------------------------------------------------------------

/// The body of a `RUN_RANGE` frame after its head: the width of one
/// integer, the first one (see [`take_range`](crate::codec::take_range)) and how many.
pub(crate) fn range_body(first: u64, count: u32, width: usize) -> [u8; RANGE_BODY] {
    let mut body = [0; RANGE_BODY];
    body[0] = u8::try_from(width).expect("a dense width is at most 8");
    body[1..9].copy_from_slice(&first.to_le_bytes());
    body[9..].copy_from_slice(&count.to_le_bytes());
    body
}

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
    crate::mem::huge::reserve_bytes(buf, len.min(RESERVE_AHEAD));
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

    /// A reader that hands out at most `step` bytes a call, then, once its
    /// bytes are spent, reports a read timeout (as a parent's end of a
    /// worker's socket does when the child stalls) `stalls` times before
    /// the end of the stream.
    struct Trickle<'a> {
        bytes: &'a [u8],
        step: usize,
        stalls: u32,
    }

    impl Read for Trickle<'_> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            if self.bytes.is_empty() && self.stalls > 0 {
                self.stalls -= 1;
                return Err(io::ErrorKind::WouldBlock.into());
            }
            let n = self.step.min(buf.len()).min(self.bytes.len());
            buf[..n].copy_from_slice(&self.bytes[..n]);
            self.bytes = &self.bytes[n..];
            Ok(n)
        }
    }

    #[test]
    fn a_frame_that_stalls_halfway_is_an_error() {
        let mut buf = Vec::new();
        begin_frame(&mut buf, TAG_DONE);
        buf.extend_from_slice(&[7; 30]);
        finish_frame(&mut buf).unwrap();
        for cut in 1..buf.len() {
            let mut r = Trickle {
                bytes: &buf[..cut],
                step: 3,
                stalls: 1,
            };
            let err = read_frame(&mut r, &mut Vec::new()).unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::TimedOut, "cut at {cut}");
            assert!(is_breach(&err));
        }
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(512))]

        /// Any bytes, in any slices, with or without stalls after them:
        /// a frame, a clean end, or an error — never a panic, never a
        /// frame over the cap, and never more reserved ahead than
        /// `RESERVE_AHEAD` beyond what arrived.
        #[test]
        fn arbitrary_streams_never_panic(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..64),
                                         step in 1usize..9, stalls in 0u32..3) {
            let mut r = Trickle { bytes: &bytes, step, stalls };
            let mut got = Vec::new();
            loop {
                match read_frame(&mut r, &mut got) {
                    Ok(Some(tag)) => {
                        proptest::prop_assert!(!got.is_empty() && got.len() <= MAX_FRAME);
                        proptest::prop_assert_eq!(tag, got[0]);
                    }
                    Ok(None) => break,
                    Err(e) => {
                        proptest::prop_assert!(got.capacity() <= RESERVE_AHEAD + bytes.len() + 64, "{e}");
                        break;
                    }
                }
            }
        }
    }
}
