//! What a driver sends its worker process: where a batch's payload goes
//! (the request arena's ring or the socket), the `RUN` frame, and how a
//! long batch is cut into pieces.

use std::collections::VecDeque;

use super::job::Job;
use super::shared::PoolShared;
use crate::conn::{Conn, ring_offset};
use crate::proto;
use crate::proto::arena::ARENA_FROM;
use crate::proto::message;

/// A batch of a `map`/`imap` that would run longer than twice this (by the
/// time per item of the last batch of the same function in this worker) is
/// sent in pieces of about this long; the other pieces go back to the front
/// of the queue, where any worker that is free takes the next. So a large
/// batch of slow items (Python's ⌈n / 4w⌉ for a sized input) no longer
/// decides how unevenly the workers finish: the last pieces do, and the
/// work stealing halves what is left of them. Each piece costs a round
/// trip with the child idle (a few hundred µs on a busy 2-core VM: pieces
/// of 1.5 and 4 ms made the primes bench slower than no pieces at all;
/// 8, 16 and 32 ms made it faster, 32 ms the most).
const PIECE_NS: u64 = 32_000_000;

pub(super) struct Sent {
    pub(super) job: Job,
    pub(super) batch: u64,
    /// Where its payload lies in the request arena (`None`: it went on the
    /// socket).
    pub(super) region: Option<(usize, usize)>,
}

/// The request arena is made to hold this many batches of the size that
/// needed it (short of [`RING_MOST`]): one running, the next ones waiting.
const RING_BATCHES: usize = 3;
/// Largest request arena made for waiting batches (one batch may need a
/// larger one).
const RING_MOST: usize = 32 << 20;

/// The request arena regions of the batches in flight, oldest first.
pub(super) fn regions(
    in_flight: &VecDeque<Sent>,
) -> impl DoubleEndedIterator<Item = (usize, usize)> + '_ {
    in_flight.iter().filter_map(|s| s.region)
}

/// Sends `job` as a `RUN` frame, and returns where in the request arena
/// its payload went (`None`: on the socket, after the head). A payload of
/// [`ARENA_FROM`] bytes or more goes through the request arena if it fits
/// after those of the batches in flight ([`ring_offset`]); with nothing in
/// flight, the arenas may be made or grown for it first.
pub(super) fn send_job(
    worker: &mut Conn,
    buf: &mut Vec<u8>,
    batch: u64,
    job: &Job,
    in_flight: &VecDeque<Sent>,
) -> std::io::Result<Option<(usize, usize)>> {
    if let Some(events) = &mut worker.events {
        events.sync_level(&mut worker.writer)?;
    }
    let len = job.payload.len();
    let range = job.payload.as_range();
    // A range is sent as its first integer and count: no request arena.
    let large = len >= ARENA_FROM && range.is_none();
    if in_flight.is_empty() {
        if len >= ARENA_FROM {
            // Results are usually about as large as their arguments.
            worker.reply_wanted = worker.reply_wanted.max(len + proto::DONE_HEADER + 64);
        }
        if worker.reply_wanted.max(len) >= ARENA_FROM {
            let ring = len.saturating_mul(RING_BATCHES).min(RING_MOST.max(len));
            // Without them (`false`), frames go through the socket.
            worker.ensure_arenas(if large { ring } else { 0 })?;
        }
    }
    let region = match &worker.arenas {
        Some(arenas) if large => ring_offset(regions(in_flight), arenas.request.capacity(), len),
        _ => None,
    }
    .map(|at| (at, at + len));
    // A range's first integer and count follow the head; other payloads go
    // in the request arena, or on the socket after the head.
    let range_body = range.map(|(first, count, width)| proto::range_body(first, count, width));
    let (tag, inline) = match (&range_body, &worker.arenas, region) {
        (Some(body), _, _) => (proto::TAG_RUN_RANGE, [&body[..], &[]]),
        (None, Some(arenas), Some((at, _))) => {
            let parts = job.payload.parts();
            // SAFETY: no batch in flight has its payload in these bytes
            // (`ring_offset`), and the child has answered, and so finished
            // reading, every earlier one (proto::arena).
            unsafe {
                arenas.request.write_at(at, parts[0]);
                arenas.request.write_at(at + parts[0].len(), parts[1]);
            }
            (proto::TAG_RUN_SHARED, [&[][..], &[]])
        }
        _ => (proto::TAG_RUN, job.payload.parts()),
    };
    message::run_head(
        buf,
        tag | dense_flag(job),
        batch,
        job.worker,
        job.fds().len(),
    );
    if let Some((at, _)) = region {
        message::shared_args(buf, at, len);
    }
    proto::finish_frame_with(buf, inline[0].len() + inline[1].len())?;
    crate::sys::fdpass::write_parts_with_fds(
        &mut worker.writer,
        &[buf, inline[0], inline[1]],
        job.fds(),
    )?;
    Ok(region)
}

/// [`proto::DENSE`] for a job whose arguments are dense.
pub(super) fn dense_flag(job: &Job) -> u8 {
    if job.dense.is_some() { proto::DENSE } else { 0 }
}

/// Cuts the first piece off a long `map`/`imap` batch (see [`PIECE_NS`])
/// and puts the other pieces back at the front of the queue, in order.
/// Other jobs, and batches whose time per item is not known yet, go as
/// they are.
pub(super) fn cut_piece(shared: &PoolShared, worker: &Conn, job: Job) -> Job {
    let Some((name, item_ns)) = worker.last_item else {
        return job;
    };
    if job.control.is_some() || job.first_index.is_none() || name != job.worker {
        return job;
    }
    let per_piece = PIECE_NS / item_ns.max(1);
    if u64::from(job.count) <= 2 * per_piece.max(1) {
        return job;
    }
    // Equal pieces, cut from the back: each cut copies only its own piece's
    // arguments (the front keeps its buffer, truncated).
    let pieces = u64::from(job.count).div_ceil(per_piece.max(1));
    let size = u32::try_from(u64::from(job.count).div_ceil(pieces)).unwrap_or(u32::MAX);
    let mut rest = job;
    let mut back = Vec::new();
    while rest.count > size {
        let cut = rest.count - (rest.count - 1) % size - 1;
        let (head, piece) = rest.split_at(cut);
        back.push(piece);
        rest = head;
    }
    back.reverse();
    shared.queue.requeue_front(back);
    rest
}
