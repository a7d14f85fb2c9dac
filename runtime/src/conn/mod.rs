//! One connection to one worker process: starting it, what travels to and
//! from it, its results, and its end.

pub(crate) mod decode;
pub(crate) mod outcome;
pub(crate) mod reap;
pub(crate) mod runner;
pub(crate) mod slot;
pub(crate) mod spawn;
pub(crate) mod watch;

use std::io::{BufReader, Write};
use std::os::unix::net::UnixStream;
use std::process::Child;
use std::sync::Arc;

use crate::proto;
use crate::proto::arena::{ARENA_FROM, Arena, Lease};
use crate::proto::reply;

/// Where `len` bytes fit in a request arena of `capacity` bytes after the
/// payloads of the batches in flight (their regions, oldest first): a
/// ring, since the child answers them in the order they were sent and is
/// done with a payload once answered.
pub(crate) fn ring_offset(
    mut regions: impl DoubleEndedIterator<Item = (usize, usize)>,
    capacity: usize,
    len: usize,
) -> Option<usize> {
    let Some((oldest, oldest_end)) = regions.next() else {
        return (len <= capacity).then_some(0);
    };
    let newest_end = regions.next_back().map_or(oldest_end, |(_, end)| end);
    if newest_end > oldest {
        // Not wrapped: room after the newest, or else before the oldest.
        if newest_end + len <= capacity {
            Some(newest_end)
        } else {
            (len <= oldest).then_some(0)
        }
    } else {
        // Wrapped: the room is between the newest and the oldest.
        (newest_end + len <= oldest).then_some(newest_end)
    }
}

pub(crate) struct Conn {
    pub(crate) child: Child,
    pub(crate) writer: UnixStream,
    pub(crate) reader: BufReader<UnixStream>,
    pub(crate) pid: u32,
    /// Items finished by this process.
    pub(crate) done: u64,
    /// How long the child took for its last batch.
    pub(crate) last_batch_ns: u64,
    /// Time per item of the last batch, and the function it ran.
    pub(crate) last_item: Option<(&'static str, u64)>,
    /// Over its memory limit: finish what is in flight, then retire.
    pub(crate) retiring: bool,
    /// The shared buffers for large frames, once one is needed.
    pub(crate) arenas: Option<Arenas>,
    /// Largest reply body each reply arena should hold.
    pub(crate) reply_wanted: usize,
    /// Its stderr, passed on and watched, under a pool's memory limit.
    pub(crate) stderr: Option<watch::StderrWatch>,
    /// Its event socket, when its tasks' `tracing` events are forwarded.
    pub(crate) events: Option<crate::trace::inbox::Inbox>,
}

/// The request and reply arenas of one worker process (see
/// [`crate::proto::arena`]).
pub(crate) struct Arenas {
    pub(crate) request: Arena,
    /// [`proto::REPLY_ARENAS`] of them, which the child uses in turn: it
    /// can write its next replies while the last one is still being read
    /// (with one, those went through the socket instead, a few wake-ups
    /// per 200 KiB). Shared with the leases of replies decoded in place.
    pub(crate) reply: [Arc<Arena>; proto::REPLY_ARENAS],
}

impl Conn {
    /// Drops the arenas, and tells the child to drop its mappings: their
    /// memory is freed (after the pool's idle time).
    ///
    /// # Errors
    ///
    /// If the child cannot be written to (it is gone).
    pub(crate) fn release_arenas(&mut self) -> std::io::Result<()> {
        self.arenas = None;
        self.reply_wanted = 0;
        let mut buf = Vec::new();
        proto::arenas_frame(&mut buf, 0, 0)?;
        self.writer.write_all(&buf)
    }

    /// Makes sure the arenas hold a request of `request` bytes and a reply
    /// of [`Conn::reply_wanted`], making bigger ones and sending them to
    /// the child if not. Only while no batch is in flight (the child maps
    /// the new ones between batches). `Ok(false)` if they could not be
    /// made: large frames then go through the socket.
    ///
    /// # Errors
    ///
    /// If the child cannot be written to (it is gone).
    pub(crate) fn ensure_arenas(&mut self, request: usize) -> std::io::Result<bool> {
        let (have_request, have_reply) = self
            .arenas
            .as_ref()
            .map_or((0, 0), |a| (a.request.capacity(), a.reply[0].capacity()));
        if request <= have_request && self.reply_wanted <= have_reply {
            return Ok(true);
        }
        let reply_len = self.reply_wanted.max(have_reply).max(ARENA_FROM);
        let Ok(request) = Arena::create(request.max(have_request).max(ARENA_FROM)) else {
            return Ok(false);
        };
        let Ok(reply) = (0..proto::REPLY_ARENAS)
            .map(|_| Arena::create(reply_len).map(Arc::new))
            .collect::<std::io::Result<Vec<_>>>()
        else {
            return Ok(false);
        };
        let Ok(fds) = std::iter::once(&request)
            .chain(reply.iter().map(|a| &**a))
            .map(|a| a.fd().try_clone_to_owned())
            .collect::<std::io::Result<Vec<_>>>()
        else {
            return Ok(false);
        };
        let mut buf = Vec::new();
        proto::arenas_frame(&mut buf, request.len() as u64, reply[0].len() as u64)?;
        crate::sys::fdpass::write_with_fds(&mut self.writer, &buf, &fds)?;
        let reply = reply
            .try_into()
            .unwrap_or_else(|_| unreachable!("REPLY_ARENAS made"));
        self.arenas = Some(Arenas { request, reply });
        Ok(true)
    }
}

/// Builds the head of a `RUN` frame in `buf`; the payload follows it on the
/// wire without being copied next to it (see [`send_run`]).
pub(crate) fn encode_run(
    buf: &mut Vec<u8>,
    batch: u64,
    worker: &str,
    payload: &[u8],
    fds: usize,
) -> std::io::Result<()> {
    proto::message::run_head(buf, proto::TAG_RUN, batch, worker, fds);
    proto::finish_frame_with(buf, payload.len())
}

/// Sends a `RUN` frame: the head built by [`encode_run`], then the payload.
pub(crate) fn send_run(
    stream: &mut UnixStream,
    head: &[u8],
    payload: &[u8],
    fds: &[std::os::fd::OwnedFd],
) -> std::io::Result<()> {
    crate::sys::fdpass::write_parts_with_fds(stream, &[head, payload], fds)
}

/// The reply number and body length a `DONE_SHARED` frame gives, and the
/// reply arena it is in.
pub(crate) fn shared_reply(
    worker: &Conn,
    frame: &[u8],
) -> std::io::Result<(u64, usize, Arc<Arena>)> {
    let arenas = worker.arenas.as_ref();
    let capacity = arenas.map_or(0, |a| a.reply[0].capacity());
    let count = arenas.map_or(0, |a| a.reply.len());
    let at = reply::read_shared_done(frame, count, capacity)
        .map_err(|b| std::io::Error::new(std::io::ErrorKind::InvalidData, b.message))?;
    let arena = arenas
        .and_then(|a| a.reply.get(at.arena))
        .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::InvalidData, "no reply arena"))?;
    Ok((at.seq, at.len, arena.clone()))
}

/// Leaves the `DONE` frame of a `DONE_SHARED` one in its reply arena, held
/// by `lease` until it is decoded; `frame` gets a copy of its head.
pub(crate) fn lease_reply(
    worker: &Conn,
    frame: &mut Vec<u8>,
    lease: &mut Option<Lease>,
) -> std::io::Result<u8> {
    let (seq, len, arena) = shared_reply(worker, frame)?;
    // SAFETY: the child wrote reply `seq` before sending the frame, and
    // writes the reply arena again only once it is released (the lease's
    // drop).
    let held = unsafe { Lease::new(arena, seq, len) }.ok_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "a shared reply does not fit",
        )
    })?;
    frame.clear();
    frame.extend_from_slice(&held[..proto::DONE_HEADER]);
    *lease = Some(held);
    match frame.first() {
        Some(&tag) if tag & !proto::DENSE == proto::TAG_DONE => Ok(tag),
        _ => Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "a shared reply is not a DONE frame",
        )),
    }
}

/// Replaces a `DONE_SHARED` frame with the `DONE` frame in the reply arena,
/// and releases the arena to the child.
pub(crate) fn copy_out_reply(worker: &Conn, frame: &mut Vec<u8>) -> std::io::Result<u8> {
    let mut lease = None;
    let tag = lease_reply(worker, frame, &mut lease)?;
    if let Some(held) = lease {
        frame.clear();
        crate::mem::huge::reserve_bytes(frame, held.len());
        crate::mem::copy::extend(frame, &held);
    } // released here
    Ok(tag)
}

impl Conn {
    /// Reads the next frame; a `DONE_SHARED` one is resolved to the `DONE`
    /// frame in its reply arena: left there under `lease` if `lease_ok`,
    /// else copied out into `frame`.
    ///
    /// # Errors
    ///
    /// As [`proto::read_frame`], and `InvalidData` for a shared reply that
    /// does not fit its arena or is not a `DONE` frame.
    pub(crate) fn receive(
        &mut self,
        frame: &mut Vec<u8>,
        lease: &mut Option<Lease>,
        lease_ok: bool,
    ) -> std::io::Result<Option<u8>> {
        let tag = proto::read_frame(&mut self.reader, frame)?;
        if tag == Some(proto::TAG_DONE_SHARED) {
            if lease_ok {
                return lease_reply(self, frame, lease).map(Some);
            }
            return copy_out_reply(self, frame).map(Some);
        }
        if tag.is_some_and(|t| t & !proto::DENSE == proto::TAG_DONE) && frame.len() >= ARENA_FROM {
            // A large reply that came through the socket: have a reply arena
            // for the next one.
            self.reply_wanted = self.reply_wanted.max(frame.len());
        }
        Ok(tag)
    }
}

#[cfg(test)]
mod tests {
    use super::ring_offset;

    #[test]
    fn the_request_ring_never_overlaps_a_batch_in_flight() {
        let at = |regions: &[(usize, usize)], len| ring_offset(regions.iter().copied(), 100, len);
        // Empty: from the start, if it fits at all.
        assert_eq!(at(&[], 100), Some(0));
        assert_eq!(at(&[], 101), None);
        // After the newest, then wrapping to before the oldest.
        assert_eq!(at(&[(0, 40)], 60), Some(40));
        assert_eq!(at(&[(0, 40)], 61), None);
        assert_eq!(at(&[(30, 60), (60, 90)], 10), Some(90));
        assert_eq!(at(&[(30, 60), (60, 90)], 30), Some(0));
        assert_eq!(at(&[(30, 60), (60, 90)], 31), None);
        // Wrapped: only the gap between the newest and the oldest.
        assert_eq!(at(&[(30, 60), (60, 90), (0, 20)], 10), Some(20));
        assert_eq!(at(&[(30, 60), (60, 90), (0, 20)], 11), None);
        assert_eq!(at(&[(50, 100), (0, 50)], 1), None);
        // Whatever it answers, the new region overlaps none in flight.
        let mut in_flight = std::collections::VecDeque::new();
        let mut next = 0u64;
        for step in 0..10_000u64 {
            let len = 1 + (step * 7919 % 45) as usize;
            match ring_offset(in_flight.iter().copied(), 100, len) {
                Some(start) => {
                    let end = start + len;
                    assert!(end <= 100);
                    for &(s, e) in &in_flight {
                        assert!(end <= s || start >= e, "{start}..{end} overlaps {s}..{e}");
                    }
                    in_flight.push_back((start, end));
                }
                None => {
                    assert!(!in_flight.is_empty(), "an empty ring takes {len} of 100");
                    in_flight.pop_front();
                }
            }
            next = next
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            if next >> 62 == 0 {
                in_flight.pop_front();
            }
        }
    }
}
