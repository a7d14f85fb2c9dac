//! Passing OS handles (file descriptors) to worker processes inside task
//! arguments.
//!
//! A handle type (a queue, a pipe end, a shared array) serialises as an
//! index into a side table of descriptors. While the parent encodes a batch,
//! [`capture`] collects duplicates of the descriptors; the driver sends them
//! with the `RUN` frame as `SCM_RIGHTS`; the child's reader receives them
//! with `recvmsg` and [`with_table`] makes them available while the batch's
//! arguments are decoded. Outside such a scope, a handle refuses to
//! serialise: it is meaningless as bytes.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::io::{self, IoSlice, IoSliceMut, Read, Write};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::net::UnixStream;

use rustix::net::{
    RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, SendAncillaryBuffer,
    SendAncillaryMessage, SendFlags,
};
use serde::de::Error as _;
use serde::ser::Error as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Most descriptors one frame may carry.
pub(crate) const MAX_FDS: usize = 253;

/// Flags of every send: no `SIGPIPE` if the peer is gone. macOS has no
/// `MSG_NOSIGNAL`; its sockets are made with `SO_NOSIGPIPE` instead
/// ([`super::socket_pair`]).
#[cfg(not(target_os = "macos"))]
pub(crate) const NO_SIGPIPE: SendFlags = SendFlags::NOSIGNAL;
#[cfg(target_os = "macos")]
pub(crate) const NO_SIGPIPE: SendFlags = SendFlags::empty();

/// Flags of every receive: received descriptors close-on-exec, where the
/// kernel sets that atomically (`MSG_CMSG_CLOEXEC`); elsewhere
/// [`FdReader::recv`] sets it right after.
#[cfg(all(not(target_os = "macos"), not(multiproc_portable)))]
const RECV_CLOEXEC: RecvFlags = RecvFlags::CMSG_CLOEXEC;
#[cfg(any(target_os = "macos", multiproc_portable))]
const RECV_CLOEXEC: RecvFlags = RecvFlags::empty();

thread_local! {
    static OUTGOING: RefCell<Option<Vec<OwnedFd>>> = const { RefCell::new(None) };
    static INCOMING: RefCell<Option<Vec<Option<OwnedFd>>>> = const { RefCell::new(None) };
}

/// Runs `encode` with descriptor capture on, and returns the descriptors
/// that the handles in it serialised.
pub(crate) fn capture<T>(encode: impl FnOnce() -> T) -> (T, Vec<OwnedFd>) {
    let outer = OUTGOING.with(|o| o.borrow_mut().replace(Vec::new()));
    let value = encode();
    let fds = OUTGOING
        .with(|o| std::mem::replace(&mut *o.borrow_mut(), outer))
        .unwrap_or_default();
    (value, fds)
}

/// Runs `decode` with `fds` available to the handles being deserialised.
pub(crate) fn with_table<T>(fds: Vec<OwnedFd>, decode: impl FnOnce() -> T) -> T {
    let outer = INCOMING.with(|i| i.borrow_mut().replace(fds.into_iter().map(Some).collect()));
    let value = decode();
    INCOMING.with(|i| *i.borrow_mut() = outer);
    value
}

/// Serialises a descriptor as its index in the frame's descriptor table.
///
/// # Errors
///
/// Outside a task's arguments (for example with `serde_json`), or if the
/// descriptor cannot be duplicated, or if a frame would carry too many.
pub(crate) fn serialize_fd<S: Serializer>(
    fd: BorrowedFd<'_>,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    let index = OUTGOING.with(|o| {
        let mut o = o.borrow_mut();
        let Some(table) = o.as_mut() else {
            return Err(
                "multiproc handles can only be sent as arguments of a #[worker] call".to_owned(),
            );
        };
        if table.len() >= MAX_FDS {
            return Err(format!("one batch can carry at most {MAX_FDS} handles"));
        }
        let dup = fd
            .try_clone_to_owned()
            .map_err(|e| format!("could not duplicate a handle: {e}"))?;
        table.push(dup);
        Ok(table.len() - 1)
    });
    match index {
        Ok(i) => (i as u32).serialize(serializer),
        Err(msg) => Err(S::Error::custom(msg)),
    }
}

/// Deserialises a descriptor sent with [`serialize_fd`]; the caller owns a
/// duplicate (the same handle may appear in several items of a batch).
///
/// # Errors
///
/// Outside a task's arguments, or if the index is not in the table.
pub(crate) fn deserialize_fd<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<OwnedFd, D::Error> {
    let index = u32::deserialize(deserializer)? as usize;
    INCOMING.with(|i| {
        let i = i.borrow();
        let fd = i
            .as_ref()
            .and_then(|table| table.get(index))
            .and_then(Option::as_ref)
            .ok_or_else(|| D::Error::custom("a multiproc handle arrived without its descriptor"))?;
        fd.try_clone()
            .map_err(|e| D::Error::custom(format!("could not duplicate a handle: {e}")))
    })
}

/// Writes a whole frame, attaching `fds` to its first byte.
pub(crate) fn write_with_fds(
    stream: &mut UnixStream,
    buf: &[u8],
    fds: &[OwnedFd],
) -> io::Result<()> {
    write_parts_with_fds(stream, &[buf], fds)
}

/// Writes `parts` back to back (one `writev`, no copy into one buffer),
/// attaching `fds` to the first byte.
pub(crate) fn write_parts_with_fds(
    stream: &mut UnixStream,
    parts: &[&[u8]],
    fds: &[OwnedFd],
) -> io::Result<()> {
    let mut storage: Vec<IoSlice<'_>> = parts
        .iter()
        .filter(|p| !p.is_empty())
        .map(|p| IoSlice::new(p))
        .collect();
    let mut slices = &mut storage[..];
    if !fds.is_empty() {
        let borrowed: Vec<BorrowedFd<'_>> = fds.iter().map(AsFd::as_fd).collect();
        let mut space = vec![MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS))];
        let mut control = SendAncillaryBuffer::new(&mut space);
        if !control.push(SendAncillaryMessage::ScmRights(&borrowed)) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "too many handles in one frame",
            ));
        }
        let sent = loop {
            match rustix::net::sendmsg(&*stream, slices, &mut control, NO_SIGPIPE) {
                Ok(n) => break n,
                Err(rustix::io::Errno::INTR) => {}
                Err(e) => return Err(e.into()),
            }
        };
        IoSlice::advance_slices(&mut slices, sent);
    }
    while !slices.is_empty() {
        match stream.write_vectored(slices) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => IoSlice::advance_slices(&mut slices, n),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Sends what the socket takes of `buf` now, without waiting, attaching
/// `fds` (if any) to its first byte; returns the bytes sent (`WouldBlock`
/// if none: then the descriptors were not sent either).
pub(crate) fn send_now(stream: &UnixStream, buf: &[u8], fds: &[OwnedFd]) -> io::Result<usize> {
    let borrowed: Vec<BorrowedFd<'_>> = fds.iter().map(AsFd::as_fd).collect();
    let mut space = if fds.is_empty() {
        Vec::new()
    } else {
        vec![MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS))]
    };
    let mut control = SendAncillaryBuffer::new(&mut space);
    if !borrowed.is_empty() && !control.push(SendAncillaryMessage::ScmRights(&borrowed)) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "too many handles in one frame",
        ));
    }
    loop {
        match rustix::net::sendmsg(
            stream,
            &[IoSlice::new(buf)],
            &mut control,
            NO_SIGPIPE | SendFlags::DONTWAIT,
        ) {
            Ok(n) => return Ok(n),
            Err(rustix::io::Errno::INTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
}

/// A reader that also collects descriptors sent with `SCM_RIGHTS`.
pub(crate) struct FdReader {
    stream: UnixStream,
    fds: VecDeque<OwnedFd>,
    space: Vec<MaybeUninit<u8>>,
}

impl FdReader {
    pub(crate) fn new(stream: UnixStream) -> FdReader {
        FdReader {
            stream,
            fds: VecDeque::new(),
            space: vec![MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS))],
        }
    }

    /// Takes the next `n` received descriptors.
    pub(crate) fn take_fds(&mut self, n: usize) -> io::Result<Vec<OwnedFd>> {
        if self.fds.len() < n {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "a frame announced handles that did not arrive",
            ));
        }
        Ok(self.fds.drain(..n).collect())
    }
}

impl FdReader {
    /// Receives into `buf`, keeping the descriptors that come with the
    /// bytes; with `RecvFlags::DONTWAIT`, fails with `WouldBlock` rather
    /// than wait.
    fn recv(&mut self, buf: &mut [u8], flags: RecvFlags) -> io::Result<usize> {
        let mut control = RecvAncillaryBuffer::new(&mut self.space);
        let msg = loop {
            match rustix::net::recvmsg(
                &self.stream,
                &mut [IoSliceMut::new(buf)],
                &mut control,
                flags | RECV_CLOEXEC,
            ) {
                Ok(msg) => break msg,
                Err(rustix::io::Errno::INTR) => {}
                Err(e) => return Err(e.into()),
            }
        };
        for message in control.drain() {
            if let RecvAncillaryMessage::ScmRights(fds) = message {
                for fd in fds {
                    #[cfg(any(target_os = "macos", multiproc_portable))]
                    let _ = super::set_cloexec(fd.as_fd());
                    self.fds.push_back(fd);
                }
            }
        }
        Ok(msg.bytes)
    }
}

impl Read for FdReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.recv(buf, RecvFlags::empty())
    }
}

impl FdReader {
    /// Reads what has arrived, taking the descriptors that came with it;
    /// without `wait`, returns `WouldBlock` at once if nothing has.
    pub(crate) fn read_some(&mut self, buf: &mut [u8], wait: bool) -> io::Result<usize> {
        let flags = if wait {
            RecvFlags::empty()
        } else {
            RecvFlags::DONTWAIT
        };
        self.recv(buf, flags)
    }

    /// The socket read from.
    pub(crate) fn socket(&self) -> std::os::fd::BorrowedFd<'_> {
        self.stream.as_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::{AsRawFd, FromRawFd};

    #[test]
    fn descriptors_travel_with_their_frame() {
        let (mut a, b) = UnixStream::pair().unwrap();
        let (p1, _p2) = UnixStream::pair().unwrap();
        let (value, fds) = capture(|| postcard::to_stdvec(&Wrapped(p1.as_fd())).unwrap());
        assert_eq!(fds.len(), 1);
        write_with_fds(&mut a, b"hello", &fds).unwrap();
        let mut reader = FdReader::new(b);
        let mut got = [0u8; 5];
        reader.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"hello");
        let received = reader.take_fds(1).unwrap();
        let fd = with_table(received, || {
            let mut de = postcard::Deserializer::from_bytes(&value);
            deserialize_fd(&mut de).unwrap()
        });
        assert_ne!(fd.as_raw_fd(), p1.as_raw_fd());
        // The received descriptor is the same socket: write through it.
        // SAFETY: `fd` is an owned socket descriptor.
        let mut s = unsafe { UnixStream::from_raw_fd(std::os::fd::IntoRawFd::into_raw_fd(fd)) };
        s.write_all(b"x").unwrap();
    }

    #[test]
    fn a_handle_outside_a_task_refuses_to_serialise() {
        let (p1, _p2) = UnixStream::pair().unwrap();
        assert!(postcard::to_stdvec(&Wrapped(p1.as_fd())).is_err());
    }

    struct Wrapped<'a>(BorrowedFd<'a>);
    impl Serialize for Wrapped<'_> {
        fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            serialize_fd(self.0, s)
        }
    }
}
