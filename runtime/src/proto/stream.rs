//! Length-prefixed frames on a byte stream: the one framing of every
//! channel whose peer writes into a socket — the two ends of a
//! [`pipe`](crate::pipe()), a [`Manager`](crate::Manager)'s broker and its
//! handles.
//!
//! A frame is a 4-byte little-endian length `n`, then `n` bytes of body
//! (a postcard message for [`FrameReader::read_message`]).
//!
//! The peer is another process, so every byte it sends is untrusted:
//! - a length over the reader's cap is an error before anything is
//!   allocated for it;
//! - memory follows the bytes that arrived, not the length announced: the
//!   buffer holds what arrived plus at most one read of [`READ_MAX`]
//!   bytes, so a forged 1 GiB header followed by ten bytes costs about
//!   [`READ_MAX`], not 1 GiB;
//! - a deadline (this process's monotonic clock) holds for the whole
//!   frame, also once part of its header or body has arrived; what
//!   arrived stays buffered, and the next call goes on from there;
//! - the end of the stream at a frame boundary ([`FrameError::Closed`]),
//!   inside a frame ([`FrameError::Truncated`]), a length over the cap
//!   ([`FrameError::OverCap`]) and a body that is not a message
//!   ([`FrameError::Garbage`]) are distinct errors. After any of them the
//!   stream cannot be resynchronised, and the reader repeats the error.
//!
//! # Caps
//!
//! The cap is the caller's: [`PIPE_CAP`] and [`MANAGER_CAP`] are 1 GiB.
//! A pipe carries values of the user's types, and a Manager stores such
//! values and returns whole containers (`to_vec`), so the cap is a limit on
//! honest messages, large enough for any value that fits a process's
//! memory comfortably and small enough that one frame cannot make the
//! reader hold more than 1 GiB. Because memory follows arrived bytes, a
//! large cap costs nothing against a forged header: the peer has to send
//! (and the kernel to carry) every byte it makes this process hold.

use std::io;
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use rustix::event::{PollFd, PollFlags, Timespec};
use rustix::net::RecvFlags;
use serde::Serialize;
use serde::de::DeserializeOwned;

/// Bytes of a frame's length prefix.
pub(crate) const HEADER: usize = 4;

/// Largest message on a [`pipe`](crate::pipe()) (1 GiB; see the module docs).
pub(crate) const PIPE_CAP: usize = 1 << 30;

/// Largest request or reply between a [`Manager`](crate::Manager)'s broker
/// and a handle (1 GiB; see the module docs).
pub(crate) const MANAGER_CAP: usize = 1 << 30;

/// Each read asks for at least this much: several small frames per system
/// call, as a `BufReader` would.
const READ_MIN: usize = 8 << 10;

/// Each read asks for at most this much: the most the buffer grows past
/// the bytes that arrived. A socket rarely returns more in one read.
pub(crate) const READ_MAX: usize = 256 << 10;

/// A buffer that grew past this for a large frame is released once every
/// byte in it was consumed, so that a long-lived connection keeps only
/// what small frames need.
const KEEP: usize = 1 << 20;

/// What a frame reader reads from: a socket, with or without descriptor
/// passing.
pub(crate) trait Source {
    /// Reads what is there, up to `buf.len()` bytes; `Ok(0)` at the end of
    /// the stream. Without `wait`, fails with `WouldBlock` instead of
    /// waiting for data.
    fn read_some(&mut self, buf: &mut [u8], wait: bool) -> io::Result<usize>;

    /// Waits until there is something to read (or the end of the stream),
    /// at most `timeout` (`None`: no limit). Returns early spuriously at
    /// worst; the reader checks its deadline itself.
    fn wait_readable(&self, timeout: Option<Duration>) -> io::Result<()>;
}

impl Source for crate::sys::fdpass::FdReader {
    fn read_some(&mut self, buf: &mut [u8], wait: bool) -> io::Result<usize> {
        crate::sys::fdpass::FdReader::read_some(self, buf, wait)
    }

    fn wait_readable(&self, timeout: Option<Duration>) -> io::Result<()> {
        poll_readable(self.socket(), timeout).map(|_| ())
    }
}

impl Source for UnixStream {
    fn read_some(&mut self, buf: &mut [u8], wait: bool) -> io::Result<usize> {
        let flags = if wait {
            RecvFlags::empty()
        } else {
            RecvFlags::DONTWAIT
        };
        loop {
            match rustix::net::recv(&*self, &mut *buf, flags) {
                Ok((n, _)) => return Ok(n),
                Err(rustix::io::Errno::INTR) => {}
                Err(e) => return Err(e.into()),
            }
        }
    }

    fn wait_readable(&self, timeout: Option<Duration>) -> io::Result<()> {
        poll_readable(self.as_fd(), timeout).map(|_| ())
    }
}

/// Waits until `fd` is readable (data, end of stream or an error to
/// report), at most `timeout`; `false` if the time ran out.
pub(crate) fn poll_readable(fd: BorrowedFd<'_>, timeout: Option<Duration>) -> io::Result<bool> {
    let timeout = timeout.map(|t| {
        Timespec::try_from(t).unwrap_or(Timespec {
            tv_sec: i64::MAX,
            tv_nsec: 0,
        })
    });
    let mut fds = [PollFd::new(&fd, PollFlags::IN)];
    loop {
        match rustix::event::poll(&mut fds, timeout.as_ref()) {
            Ok(n) => return Ok(n > 0),
            Err(rustix::io::Errno::INTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
}

/// Why no frame was read.
#[derive(Debug)]
pub(crate) enum FrameError {
    /// The peer closed the stream between frames.
    Closed,
    /// The stream ended inside a frame: `got` of the `expected` bytes of
    /// its header and body had arrived (`expected` is [`HEADER`] while the
    /// header itself is incomplete).
    Truncated {
        /// Bytes of the frame that arrived.
        got: usize,
        /// Bytes the frame needed.
        expected: u64,
    },
    /// A frame announced a body longer than the cap.
    OverCap {
        /// The announced length.
        len: u64,
        /// The reader's cap.
        cap: usize,
    },
    /// A frame's body is not a valid message (what the decoder said).
    Garbage(String),
    /// The operating system failed (not the end of the stream).
    Io(io::Error),
}

impl FrameError {
    /// What the peer did wrong, for an error message; `peer` names it
    /// ("pipe peer", "manager client").
    pub(crate) fn describe(&self, peer: &str) -> String {
        match self {
            FrameError::Closed => format!("the {peer} closed the stream"),
            FrameError::Truncated { got, expected } => format!(
                "the {peer} closed the stream inside a frame, after {got} of its {expected} bytes"
            ),
            FrameError::OverCap { len, cap } => {
                format!("the {peer} announced a frame of {len} bytes, over the cap of {cap} bytes")
            }
            FrameError::Garbage(why) => {
                format!("the {peer} sent a frame that is not a valid message: {why}")
            }
            FrameError::Io(e) => format!("reading from the {peer}: {e}"),
        }
    }
}

/// Reads frames of at most `cap` body bytes from a stream; see the module
/// docs for what it guarantees against a hostile peer.
///
/// Invariants: `buf[..filled]` holds bytes received, of which
/// `buf[start..filled]` are not consumed yet; `buf[filled..]` is
/// initialised scratch room (its length is what the buffer commits).
#[derive(Debug)]
pub(crate) struct FrameReader {
    cap: usize,
    buf: Vec<u8>,
    start: usize,
    filled: usize,
    /// The stream ended; nothing more will arrive.
    eof: bool,
}

impl FrameReader {
    /// A reader that refuses bodies over `cap` bytes.
    pub(crate) fn new(cap: usize) -> FrameReader {
        FrameReader {
            cap,
            buf: Vec::new(),
            start: 0,
            filled: 0,
            eof: false,
        }
    }

    /// Bytes received and not returned in a frame yet (a partial frame, or
    /// whole frames not read yet).
    pub(crate) fn buffered(&self) -> usize {
        self.filled - self.start
    }

    /// `true` if a whole frame (or a broken one, whose error is due) is
    /// buffered: reading it needs no data from the stream.
    pub(crate) fn has_frame(&self) -> bool {
        !matches!(self.parse(), Ok(None))
    }

    /// Bytes the buffer commits (initialised), for tests of the memory
    /// bound.
    #[cfg(test)]
    pub(crate) fn committed(&self) -> usize {
        self.buf.len()
    }

    /// The body range of the first buffered frame, `Ok(None)` if it is not
    /// all there; the missing byte count is [`missing`](Self::missing).
    fn parse(&self) -> Result<Option<(usize, usize)>, FrameError> {
        let avail = &self.buf[self.start..self.filled];
        let Some(header) = avail.first_chunk::<HEADER>() else {
            return Ok(None);
        };
        let len = u32::from_le_bytes(*header);
        if u64::from(len) > self.cap as u64 {
            return Err(FrameError::OverCap {
                len: u64::from(len),
                cap: self.cap,
            });
        }
        let len = len as usize;
        if avail.len() - HEADER < len {
            return Ok(None);
        }
        Ok(Some((self.start + HEADER, len)))
    }

    /// Bytes still missing from the first frame (its header first), and the
    /// frame's size so far as it is known (for [`FrameError::Truncated`]).
    fn missing(&self) -> (usize, u64) {
        let avail = &self.buf[self.start..self.filled];
        match avail.first_chunk::<HEADER>() {
            None => (HEADER - avail.len(), HEADER as u64),
            // `parse` checked the length against the cap.
            Some(header) => {
                let total = HEADER + u32::from_le_bytes(*header) as usize;
                (total.saturating_sub(avail.len()), total as u64)
            }
        }
    }

    /// Makes room for the next read and returns the span to read into: at
    /// least the bytes `missing` (within [`READ_MIN`]..=[`READ_MAX`]).
    fn room(&mut self, missing: usize) -> &mut [u8] {
        if self.start > 0 {
            self.buf.copy_within(self.start..self.filled, 0);
            self.filled -= self.start;
            self.start = 0;
        }
        let want = missing.clamp(READ_MIN, READ_MAX);
        let end = self.filled + want;
        if self.buf.len() < end {
            self.buf.resize(end, 0);
        }
        &mut self.buf[self.filled..end]
    }

    /// The error for the end of the stream: `Closed` between frames, else
    /// `Truncated`.
    fn end_error(&self) -> FrameError {
        if self.start == self.filled {
            FrameError::Closed
        } else {
            let (_, expected) = self.missing();
            FrameError::Truncated {
                got: self.filled - self.start,
                expected,
            }
        }
    }

    /// Reads the next frame's body. With a `deadline`, returns `Ok(None)`
    /// once it passed without a whole frame (what arrived stays buffered
    /// for the next call); it tries a read without waiting first, so a
    /// deadline in the past takes what is already there. The body is valid
    /// until the next call.
    ///
    /// # Errors
    ///
    /// The [`FrameError`]s: the stream ended ([`Closed`](FrameError::Closed)
    /// between frames, [`Truncated`](FrameError::Truncated) inside one), a
    /// frame is over the cap, or the OS failed.
    pub(crate) fn read_frame<S: Source + ?Sized>(
        &mut self,
        src: &mut S,
        deadline: Option<Instant>,
    ) -> Result<Option<&[u8]>, FrameError> {
        if self.start == self.filled {
            self.start = 0;
            self.filled = 0;
            if self.buf.len() > KEEP {
                self.buf = Vec::new();
            }
        }
        let (at, len) = loop {
            if let Some(found) = self.parse()? {
                break found;
            }
            if self.eof {
                return Err(self.end_error());
            }
            let (missing, _) = self.missing();
            let room = self.room(missing);
            match src.read_some(room, deadline.is_none()) {
                Ok(0) => self.eof = true,
                Ok(n) => self.filled += n,
                Err(e) => match e.kind() {
                    io::ErrorKind::Interrupted => {}
                    io::ErrorKind::WouldBlock => {
                        let left = deadline.map(|d| d.saturating_duration_since(Instant::now()));
                        if left.is_some_and(|left| left.is_zero()) {
                            return Ok(None);
                        }
                        src.wait_readable(left).map_err(FrameError::Io)?;
                    }
                    // The peer is gone: as the end of the stream.
                    io::ErrorKind::ConnectionReset | io::ErrorKind::BrokenPipe => self.eof = true,
                    _ => return Err(FrameError::Io(e)),
                },
            }
        };
        self.start = at + len;
        Ok(Some(&self.buf[at..at + len]))
    }

    /// Reads the next frame and decodes its body as one postcard `T` that
    /// fills it exactly. Deadline as [`read_frame`](Self::read_frame).
    ///
    /// # Errors
    ///
    /// As [`read_frame`](Self::read_frame), and
    /// [`Garbage`](FrameError::Garbage) if the body is not a `T` (the frame
    /// is consumed).
    pub(crate) fn read_message<T: DeserializeOwned, S: Source + ?Sized>(
        &mut self,
        src: &mut S,
        deadline: Option<Instant>,
    ) -> Result<Option<T>, FrameError> {
        match self.read_frame(src, deadline)? {
            None => Ok(None),
            Some(body) => crate::codec::decode_exact(body)
                .map(Some)
                .map_err(FrameError::Garbage),
        }
    }
}

/// Why a message could not be framed.
#[derive(Debug)]
pub(crate) enum EncodeError {
    /// The encoded message is longer than the cap.
    OverCap {
        /// Its length.
        len: usize,
        /// The writer's cap.
        cap: usize,
    },
    /// Serde or postcard failed (what they said).
    Codec(String),
}

/// Encodes messages as frames of at most `cap` body bytes, into a buffer
/// it keeps between messages.
#[derive(Debug)]
pub(crate) struct FrameWriter {
    cap: usize,
    buf: Vec<u8>,
}

impl FrameWriter {
    /// A writer that refuses bodies over `cap` bytes (at most `u32::MAX`:
    /// the header is 4 bytes).
    pub(crate) fn new(cap: usize) -> FrameWriter {
        FrameWriter {
            cap: cap.min(u32::MAX as usize),
            buf: Vec::new(),
        }
    }

    /// Encodes `msg` as one frame (header and body) and returns its bytes,
    /// valid until the next call.
    ///
    /// # Errors
    ///
    /// [`EncodeError::Codec`] if postcard cannot encode `msg`,
    /// [`EncodeError::OverCap`] if it is too long.
    pub(crate) fn encode<T: Serialize + ?Sized>(&mut self, msg: &T) -> Result<&[u8], EncodeError> {
        if self.buf.capacity() > KEEP {
            self.buf = Vec::new();
        }
        self.buf.clear();
        self.buf.extend_from_slice(&[0; HEADER]);
        crate::codec::encode_into(&mut self.buf, msg).map_err(EncodeError::Codec)?;
        let len = self.buf.len() - HEADER;
        if len > self.cap {
            return Err(EncodeError::OverCap { len, cap: self.cap });
        }
        // `cap` is at most `u32::MAX`.
        self.buf[..HEADER].copy_from_slice(&(len as u32).to_le_bytes());
        Ok(&self.buf)
    }

    /// Frames a body that is already encoded (for tests of the reader with
    /// raw bodies).
    #[cfg(test)]
    pub(crate) fn frame_raw(&mut self, body: &[u8]) -> Result<&[u8], EncodeError> {
        if body.len() > self.cap {
            return Err(EncodeError::OverCap {
                len: body.len(),
                cap: self.cap,
            });
        }
        self.buf.clear();
        self.buf
            .extend_from_slice(&(body.len() as u32).to_le_bytes());
        self.buf.extend_from_slice(body);
        Ok(&self.buf)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::io::Write;

    /// A stream in memory that hands out its bytes in the chunks given,
    /// and says "would block" between chunks when not asked to wait.
    struct Chunks {
        chunks: std::collections::VecDeque<Vec<u8>>,
        /// Bytes handed out so far.
        given: usize,
        /// The next non-waiting read finds nothing (a chunk boundary).
        gap: bool,
        /// Ask the reader to wait this many times (each a "would block").
        waits: usize,
    }

    impl Chunks {
        fn new(bytes: &[u8], splits: &[usize]) -> Chunks {
            let mut cuts: Vec<usize> = splits.iter().map(|&s| s % (bytes.len() + 1)).collect();
            cuts.push(0);
            cuts.push(bytes.len());
            cuts.sort_unstable();
            cuts.dedup();
            let chunks = cuts
                .windows(2)
                .map(|w| bytes[w[0]..w[1]].to_vec())
                .collect();
            Chunks {
                chunks,
                given: 0,
                gap: false,
                waits: 0,
            }
        }
    }

    impl Source for Chunks {
        fn read_some(&mut self, buf: &mut [u8], wait: bool) -> io::Result<usize> {
            if !wait && self.gap {
                self.gap = false;
                self.waits += 1;
                return Err(io::ErrorKind::WouldBlock.into());
            }
            let Some(chunk) = self.chunks.front_mut() else {
                return Ok(0);
            };
            let n = chunk.len().min(buf.len());
            buf[..n].copy_from_slice(&chunk[..n]);
            chunk.drain(..n);
            if chunk.is_empty() {
                self.chunks.pop_front();
                self.gap = true;
            }
            self.given += n;
            Ok(n)
        }

        fn wait_readable(&self, _: Option<Duration>) -> io::Result<()> {
            Ok(())
        }
    }

    /// The memory bound of the module docs: committed bytes never exceed
    /// what arrived plus one read.
    fn assert_bounded(reader: &FrameReader, src: &Chunks) {
        assert!(
            reader.committed() <= src.given + READ_MAX,
            "{} bytes committed after {} arrived",
            reader.committed(),
            src.given
        );
    }

    #[test]
    fn a_forged_length_costs_what_arrived() {
        let mut stream = (1u32 << 30).to_le_bytes().to_vec();
        stream.extend_from_slice(&[7; 10]);
        let mut src = Chunks::new(&stream, &[]);
        let mut reader = FrameReader::new(PIPE_CAP);
        match reader.read_frame(&mut src, None) {
            Err(FrameError::Truncated { got, expected }) => {
                assert_eq!(got, 14);
                assert_eq!(expected, 4 + (1 << 30));
            }
            other => panic!("{other:?}"),
        }
        assert_bounded(&reader, &src);
        assert!(reader.committed() <= READ_MAX + 14);
    }

    #[test]
    fn over_the_cap_is_refused_from_the_header() {
        let mut src = Chunks::new(&1001u32.to_le_bytes(), &[]);
        let mut reader = FrameReader::new(1000);
        assert!(matches!(
            reader.read_frame(&mut src, None),
            Err(FrameError::OverCap {
                len: 1001,
                cap: 1000
            })
        ));
        // And again: the stream cannot be resynchronised.
        assert!(matches!(
            reader.read_frame(&mut src, None),
            Err(FrameError::OverCap { .. })
        ));
        assert!(reader.committed() <= READ_MIN);
    }

    #[test]
    fn a_deadline_holds_inside_a_frame_and_the_frame_resumes() {
        let (mut a, mut b) = UnixStream::pair().unwrap();
        let mut reader = FrameReader::new(PIPE_CAP);
        let mut writer = FrameWriter::new(PIPE_CAP);
        let frame = writer.encode(&"hello".to_owned()).unwrap().to_vec();
        for cut in [2, HEADER, HEADER + 3] {
            a.write_all(&frame[..cut]).unwrap();
            let t = Instant::now();
            let got = reader
                .read_message::<String, _>(&mut b, Some(t + Duration::from_millis(50)))
                .unwrap();
            assert!(got.is_none());
            let took = t.elapsed();
            assert!(took >= Duration::from_millis(50), "{took:?}");
            assert!(took < Duration::from_secs(2), "{took:?}");
            a.write_all(&frame[cut..]).unwrap();
            let got = reader
                .read_message::<String, _>(&mut b, Some(Instant::now() + Duration::from_secs(5)))
                .unwrap();
            assert_eq!(got.as_deref(), Some("hello"));
        }
        drop(a);
        assert!(matches!(
            reader.read_frame(&mut b, None),
            Err(FrameError::Closed)
        ));
    }

    #[test]
    fn end_inside_a_frame_and_garbage_are_their_own_errors() {
        let mut src = Chunks::new(&[5, 0, 0, 0, 1, 2], &[]);
        let mut reader = FrameReader::new(100);
        assert!(matches!(
            reader.read_frame(&mut src, None),
            Err(FrameError::Truncated {
                got: 6,
                expected: 9
            })
        ));
        let mut src = Chunks::new(&[5, 0], &[]);
        let mut reader = FrameReader::new(100);
        assert!(matches!(
            reader.read_frame(&mut src, None),
            Err(FrameError::Truncated {
                got: 2,
                expected: 4
            })
        ));
        // A `String` whose length varint says 200 bytes, in a 2-byte body.
        let mut src = Chunks::new(&[2, 0, 0, 0, 0xc8, 0x01], &[]);
        let mut reader = FrameReader::new(100);
        assert!(matches!(
            reader.read_message::<String, _>(&mut src, None),
            Err(FrameError::Garbage(_))
        ));
    }

    #[test]
    fn a_large_buffer_is_released_once_drained() {
        let body = vec![3u8; 4 * KEEP];
        let mut writer = FrameWriter::new(PIPE_CAP);
        let mut stream = writer.frame_raw(&body).unwrap().to_vec();
        stream.extend_from_slice(writer.frame_raw(b"x").unwrap());
        let mut src = Chunks::new(&stream, &[]);
        let mut reader = FrameReader::new(PIPE_CAP);
        assert_eq!(
            reader.read_frame(&mut src, None).unwrap().unwrap(),
            &body[..]
        );
        assert_eq!(reader.read_frame(&mut src, None).unwrap().unwrap(), b"x");
        assert!(matches!(
            reader.read_frame(&mut src, None),
            Err(FrameError::Closed)
        ));
        assert!(reader.committed() <= READ_MAX);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        /// Whatever the bytes and however they are split: no panic, every
        /// frame within the cap, memory within arrived bytes plus one read,
        /// and the reader ends with an error or a deadline, never a loop.
        #[test]
        fn arbitrary_streams_are_read_safely(
            bytes in proptest::collection::vec(any::<u8>(), 0..2048),
            splits in proptest::collection::vec(any::<usize>(), 0..16),
            cap in 0usize..4096,
            deadline in any::<bool>(),
        ) {
            let mut src = Chunks::new(&bytes, &splits);
            let mut reader = FrameReader::new(cap);
            let deadline = deadline.then(Instant::now);
            let mut calls = 0;
            loop {
                calls += 1;
                prop_assert!(calls <= 2 * bytes.len() + 40, "no progress");
                match reader.read_frame(&mut src, deadline) {
                    Ok(Some(body)) => prop_assert!(body.len() <= cap),
                    Ok(None) => prop_assert!(deadline.is_some()),
                    Err(FrameError::Closed | FrameError::Truncated { .. } | FrameError::OverCap { .. }) => break,
                    Err(e) => prop_assert!(false, "{e:?}"),
                }
                assert_bounded(&reader, &src);
            }
            assert_bounded(&reader, &src);
        }

        /// What the writer wrote, the reader reads back, however the stream
        /// is split and with or without a deadline; then `Closed`.
        #[test]
        fn frames_round_trip(
            messages in proptest::collection::vec(
                proptest::collection::vec(any::<u8>(), 0..600), 0..12),
            splits in proptest::collection::vec(any::<usize>(), 0..24),
            deadline in any::<bool>(),
        ) {
            let cap = 700;
            let mut writer = FrameWriter::new(cap);
            let mut stream = Vec::new();
            for m in &messages {
                stream.extend_from_slice(writer.encode(m).unwrap());
            }
            let mut src = Chunks::new(&stream, &splits);
            let mut reader = FrameReader::new(cap);
            let deadline = deadline.then(Instant::now);
            let mut got = Vec::new();
            let mut calls = 0;
            loop {
                calls += 1;
                prop_assert!(calls <= 2 * stream.len() + 40, "no progress");
                match reader.read_message::<Vec<u8>, _>(&mut src, deadline) {
                    Ok(Some(m)) => got.push(m),
                    Ok(None) => prop_assert!(deadline.is_some()),
                    Err(FrameError::Closed) => break,
                    Err(e) => prop_assert!(false, "{e:?}"),
                }
                assert_bounded(&reader, &src);
            }
            prop_assert_eq!(got, messages);
        }

        /// The writer refuses what is over its cap and frames the rest.
        #[test]
        fn the_writer_keeps_its_cap(len in 0usize..300, cap in 0usize..300) {
            let mut writer = FrameWriter::new(cap);
            match writer.frame_raw(&vec![1; len]) {
                Ok(frame) => {
                    prop_assert!(len <= cap);
                    prop_assert_eq!(frame.len(), HEADER + len);
                }
                Err(EncodeError::OverCap { .. }) => prop_assert!(len > cap),
                Err(e) => prop_assert!(false, "{e:?}"),
            }
        }
    }
}
