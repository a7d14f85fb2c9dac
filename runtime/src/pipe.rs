//! [`pipe`]: a typed, duplex channel between two processes, Python's
//! `multiprocessing.Pipe`.

use std::any::type_name;
use std::io::{self, BufReader, Read, Write};
use std::marker::PhantomData;
use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::error::{Error, ErrorKind, Result};
use crate::{fdpass, spawn};

/// Largest message accepted (1 GiB).
const MAX_MESSAGE: usize = 1 << 30;

/// Creates a connected pair of pipe ends: the first sends `A` and receives
/// `B`, the second sends `B` and receives `A`.
///
/// Pass an end to a worker as an ordinary `#[worker]` argument (it travels
/// as a file descriptor, not as a copy of its contents) and keep the other.
/// When every copy of one end is gone — dropped, or its process died — the
/// other end's `recv` fails with [`Disconnected`](ErrorKind::Disconnected)
/// instead of hanging.
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
    let (a, b) = UnixStream::pair().map_err(|source| {
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
    reader: BufReader<UnixStream>,
    writer: UnixStream,
    buf: Vec<u8>,
    _types: PhantomData<fn(S) -> R>,
}

impl<S, R> std::fmt::Debug for PipeEnd<S, R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PipeEnd")
            .field("fd", &self.writer.as_raw_fd())
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
        let reader = stream.try_clone().expect("duplicating a fresh socket");
        PipeEnd {
            reader: BufReader::new(reader),
            writer: stream,
            buf: Vec::new(),
            _types: PhantomData,
        }
    }

    /// Sends a message. Does not wait for the other end to receive it
    /// unless the socket buffer is full.
    ///
    /// # Errors
    ///
    /// [`Disconnected`](ErrorKind::Disconnected) if the other end is gone;
    /// [`MessageCodec`](ErrorKind::MessageCodec) if `msg` cannot be encoded.
    pub fn send(&mut self, msg: &S) -> Result<()> {
        self.buf.clear();
        self.buf.extend_from_slice(&[0; 4]);
        postcard::to_io(msg, &mut self.buf).map_err(|e| {
            Error::new(ErrorKind::MessageCodec {
                what: "pipe",
                encode: true,
                type_name: type_name::<S>(),
                message: e.to_string(),
            })
        })?;
        let len = self.buf.len() - 4;
        if len > MAX_MESSAGE {
            return Err(Error::new(ErrorKind::MessageCodec {
                what: "pipe",
                encode: true,
                type_name: type_name::<S>(),
                message: format!("{len} bytes is over the 1 GiB limit"),
            }));
        }
        self.buf[..4].copy_from_slice(&(len as u32).to_le_bytes());
        self.writer
            .write_all(&self.buf)
            .map_err(|e| io_error("sending on a pipe", e))
    }

    /// Waits for the next message.
    ///
    /// # Errors
    ///
    /// [`Disconnected`](ErrorKind::Disconnected) once the other end is gone
    /// and every message it sent has been received;
    /// [`MessageCodec`](ErrorKind::MessageCodec) if a message cannot be
    /// decoded.
    pub fn recv(&mut self) -> Result<R> {
        let mut len = [0u8; 4];
        self.reader
            .read_exact(&mut len)
            .map_err(|e| io_error("receiving on a pipe", e))?;
        let len = u32::from_le_bytes(len) as usize;
        if len > MAX_MESSAGE {
            return Err(Error::new(ErrorKind::Protocol(format!(
                "pipe message of {len} bytes"
            ))));
        }
        self.buf.clear();
        self.buf.resize(len, 0);
        self.reader
            .read_exact(&mut self.buf)
            .map_err(|e| io_error("receiving on a pipe", e))?;
        crate::codec::decode_exact::<R>(&self.buf).map_err(|message| {
            Error::new(ErrorKind::MessageCodec {
                what: "pipe",
                encode: false,
                type_name: type_name::<R>(),
                message,
            })
        })
    }

    /// Waits at most `timeout` for the next message; `Ok(None)` if none
    /// came.
    ///
    /// # Errors
    ///
    /// As [`recv`](PipeEnd::recv).
    pub fn recv_timeout(&mut self, timeout: Duration) -> Result<Option<R>> {
        let deadline = Instant::now() + timeout;
        if self.reader.buffer().is_empty() {
            let fd = self.reader.get_ref().as_raw_fd();
            loop {
                let left = deadline.saturating_duration_since(Instant::now());
                if spawn::wait_readable(fd, left).map_err(|e| io_error("waiting on a pipe", e))? {
                    break;
                }
                if left.is_zero() {
                    return Ok(None);
                }
            }
        }
        self.recv().map(Some)
    }

    /// The next message if one is waiting, else `Ok(None)` at once.
    ///
    /// # Errors
    ///
    /// As [`recv`](PipeEnd::recv).
    pub fn try_recv(&mut self) -> Result<Option<R>> {
        self.recv_timeout(Duration::ZERO)
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
        if !self.reader.buffer().is_empty() {
            return Err(serde::ser::Error::custom(
                "this pipe end has received data that was not read yet; it cannot be handed over",
            ));
        }
        fdpass::serialize_fd(self.writer.as_fd(), serializer)
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
