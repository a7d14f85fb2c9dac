//! [`pipe`]: a typed, duplex channel between two processes, Python's
//! `multiprocessing.Pipe`.

use std::any::type_name;
use std::io::{self, Write};
use std::marker::PhantomData;
use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::error::{Error, ErrorKind, Result};
use crate::proto::stream::{EncodeError, FrameError, FrameReader, FrameWriter, PIPE_CAP};
use crate::sys::fdpass;

/// Creates a connected pair of pipe ends: the first sends `A` and receives
/// `B`, the second sends `B` and receives `A`.
///
/// Pass an end to a worker as an ordinary `#[worker]` argument (it travels
/// as a file descriptor, not as a copy of its contents) and keep the other.
/// When every copy of one end is gone — dropped, or its process died — the
/// other end's `recv` fails with [`Disconnected`](ErrorKind::Disconnected)
/// instead of hanging.
///
/// A message is at most 1 GiB encoded. The peer is another process and is
/// not trusted: what it sends is checked as it arrives (see
/// [`PipeEnd::recv`]), and memory is committed only for bytes that arrived.
///
/// ```ignore
/// let (mut parent, child) = multiproc::pipe::<String, String>()?;
/// let p = Process::spawn(pong, child)?;        // fn pong(end: PipeEnd<String, String>)
/// parent.send(&"ping".to_owned())?;
/// assert_eq!(parent.recv()?, "pong");
/// ```
///
/// # Errors
///
/// [`Io`](ErrorKind::Io) if the socket pair cannot be created.
pub fn pipe<A, B>() -> Result<(PipeEnd<A, B>, PipeEnd<B, A>)>
where
    A: Serialize + DeserializeOwned,
    B: Serialize + DeserializeOwned,
{
    let (a, b) = crate::sys::socket_pair().map_err(|source| {
        Error::new(ErrorKind::Io {
            what: "creating a pipe",
            source,
        })
    })?;
    Ok((PipeEnd::new(a), PipeEnd::new(b)))
}

/// One end of a [`pipe`]: sends `S`, receives `R`.
///
/// An end is owned by one process at a time and is not `Clone`; move it
/// into a worker's arguments to hand it over.
pub struct PipeEnd<S, R> {
    stream: UnixStream,
    reader: FrameReader,
    writer: FrameWriter,
    _types: PhantomData<fn(S) -> R>,
}

impl<S, R> std::fmt::Debug for PipeEnd<S, R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PipeEnd")
            .field("fd", &self.stream.as_raw_fd())
            .finish()
    }
}

fn io_error(what: &'static str, source: io::Error) -> Error {
    match source.kind() {
        io::ErrorKind::BrokenPipe
        | io::ErrorKind::ConnectionReset
        | io::ErrorKind::UnexpectedEof => Error::new(ErrorKind::Disconnected { what: "pipe" }),
        _ => Error::new(ErrorKind::Io { what, source }),
    }
}

impl<S, R> PipeEnd<S, R>
where
    S: Serialize + DeserializeOwned,
    R: Serialize + DeserializeOwned,
{
    fn new(stream: UnixStream) -> Self {
        PipeEnd {
            stream,
            reader: FrameReader::new(PIPE_CAP),
            writer: FrameWriter::new(PIPE_CAP),
            _types: PhantomData,
        }
    }

    /// Sends a message. Does not wait for the other end to receive it
    /// unless the socket buffer is full.
    ///
    /// # Errors
    ///
    /// [`Disconnected`](ErrorKind::Disconnected) if the other end is gone;
    /// [`MessageCodec`](ErrorKind::MessageCodec) if `msg` cannot be encoded
    /// or is over 1 GiB encoded.
    pub fn send(&mut self, msg: &S) -> Result<()> {
        let frame = self.writer.encode(msg).map_err(|e| {
            let message = match e {
                EncodeError::Codec(message) => message,
                EncodeError::OverCap { len, .. } => {
                    format!("{len} bytes is over the 1 GiB limit")
                }
            };
            Error::new(ErrorKind::MessageCodec {
                what: "pipe",
                encode: true,
                type_name: type_name::<S>(),
                message,
            })
        })?;
        self.stream
            .write_all(frame)
            .map_err(|e| io_error("sending on a pipe", e))
    }

    /// The next message, waiting until `deadline` (`None`: as long as it
    /// takes); `Ok(None)` if it passed.
    fn recv_until(&mut self, deadline: Option<Instant>) -> Result<Option<R>> {
        let body = match self.reader.read_frame(&mut self.stream, deadline) {
            Ok(Some(body)) => body,
            Ok(None) => return Ok(None),
            Err(FrameError::Closed) => {
                return Err(Error::new(ErrorKind::Disconnected { what: "pipe" }));
            }
            Err(FrameError::Io(e)) => return Err(io_error("receiving on a pipe", e)),
            Err(e) => return Err(Error::new(ErrorKind::Protocol(e.describe("pipe peer")))),
        };
        crate::codec::decode_exact::<R>(body)
            .map(Some)
            .map_err(|message| {
                Error::new(ErrorKind::MessageCodec {
                    what: "pipe",
                    encode: false,
                    type_name: type_name::<R>(),
                    message,
                })
            })
    }

    /// Waits for the next message.
    ///
    /// # Errors
    ///
    /// [`Disconnected`](ErrorKind::Disconnected) once the other end is gone
    /// and every message it sent has been received;
    /// [`Protocol`](ErrorKind::Protocol) if the other end announced a
    /// message over 1 GiB, or closed the pipe in the middle of a message
    /// (from then on the pipe keeps failing: it cannot find the start of
    /// the next message); [`MessageCodec`](ErrorKind::MessageCodec) if a
    /// message cannot be decoded as `R` (it is consumed).
    pub fn recv(&mut self) -> Result<R> {
        self.recv_until(None)?
            .ok_or_else(|| Error::new(ErrorKind::Disconnected { what: "pipe" }))
    }

    /// Waits at most `timeout` for the next message; `Ok(None)` if none
    /// came. The limit holds for the whole message: a message that is
    /// partly received when it runs out is kept, and a later call goes on
    /// receiving it.
    ///
    /// # Errors
    ///
    /// As [`recv`](PipeEnd::recv).
    pub fn recv_timeout(&mut self, timeout: Duration) -> Result<Option<R>> {
        match Instant::now().checked_add(timeout) {
            Some(deadline) => self.recv_until(Some(deadline)),
            None => self.recv().map(Some),
        }
    }

    /// The next message if one is waiting, else `Ok(None)` at once.
    ///
    /// # Errors
    ///
    /// As [`recv`](PipeEnd::recv).
    pub fn try_recv(&mut self) -> Result<Option<R>> {
        self.recv_until(Some(Instant::now()))
    }

    /// Iterates over received messages until the other end is gone.
    pub fn iter(&mut self) -> impl Iterator<Item = Result<R>> + '_ {
        std::iter::from_fn(move || match self.recv() {
            Err(e) if matches!(e.kind(), ErrorKind::Disconnected { .. }) => None,
            other => Some(other),
        })
    }
}

impl<S, R> Serialize for PipeEnd<S, R> {
    fn serialize<Z: Serializer>(&self, serializer: Z) -> std::result::Result<Z::Ok, Z::Error> {
        if self.reader.buffered() > 0 {
            return Err(serde::ser::Error::custom(
                "this pipe end has received data that was not read yet; it cannot be handed over",
            ));
        }
        fdpass::serialize_fd(self.stream.as_fd(), serializer)
    }
}

impl<'de, S, R> Deserialize<'de> for PipeEnd<S, R>
where
    S: Serialize + DeserializeOwned,
    R: Serialize + DeserializeOwned,
{
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> std::result::Result<Self, D::Error> {
        let fd = fdpass::deserialize_fd(deserializer)?;
        Ok(PipeEnd::new(UnixStream::from(fd)))
    }
}
