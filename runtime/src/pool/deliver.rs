//! Handing a finished batch to its sink: at once, or once the child has
//! its next batch ([`Delivery`]); with `retry_panics`, the items that
//! panicked go back to the queue alone.

use super::job::Job;
use super::shared::PoolShared;
use crate::conn::outcome::{Failure, Outcome, ReplyBytes};
use crate::{codec, proto};

/// A reply whose results are handed over once the next batch is on its
/// way, when the child has nothing else queued: delivering wakes the
/// caller's thread, which on a busy machine may take this thread's CPU
/// (decoding the results) before it has fed the child again, and the child
/// would wait that long (about 1 ms per piece in the primes bench).
pub(crate) struct Delivery {
    pub(crate) job: Job,
    pub(crate) data: ReplyBytes,
    pub(crate) elapsed_ns: u64,
    pub(crate) dense: bool,
}

impl Delivery {
    pub(crate) fn flush(pending: &mut Option<Delivery>, shared: &PoolShared) {
        if let Some(d) = pending.take() {
            deliver_done(shared, d.job, d.data, d.elapsed_ns, d.dense);
        }
    }
}

/// Hands a finished batch to its sink; with `retry_panics`, items that
/// panicked go back to the queue instead (each alone) and the others are
/// delivered in contiguous runs.
pub(crate) fn deliver_done(
    shared: &PoolShared,
    mut job: Job,
    data: ReplyBytes,
    elapsed_ns: u64,
    dense: bool,
) {
    const START: usize = proto::DONE_HEADER;
    let mut results: Vec<(bool, &[u8])> = Vec::new();
    // Dense results are all fine (a panic turns a reply back to framed).
    // The reply was checked to hold `count` items; one read in place from
    // a reply arena that its child rewrote since may hold fewer now, and
    // those missing fail below.
    if job.panic_retries > 0 && !dense {
        let mut rest = data.get(START..).unwrap_or_default();
        for _ in 0..job.count {
            let Some((status, _, whole)) = codec::next_item(&mut rest) else {
                break;
            };
            results.push((status == codec::ITEM_PANIC, whole));
        }
    }
    if !results.iter().any(|&(p, _)| p) {
        if let Some(control) = &job.control {
            control.finish();
        }
        drop(results);
        // Answered: its arguments are not needed again (and the caller,
        // about to decode, may want their buffer).
        std::mem::take(&mut job.payload).recycle();
        job.deliver(Outcome::Done {
            data,
            start: START,
            elapsed_ns,
            dense,
        });
        return;
    }
    let args = job.item_args();
    let mut retry = Vec::new();
    let mut run_start = 0;
    for k in 0..=results.len() {
        let ends_run = k == results.len() || results[k].0;
        if ends_run && run_start < k {
            let bytes: Vec<u8> = results[run_start..k]
                .iter()
                .flat_map(|&(_, w)| w.iter().copied())
                .collect();
            job.deliver_part(
                run_start as u32,
                (k - run_start) as u32,
                Outcome::Done {
                    data: bytes.into(),
                    start: 0,
                    elapsed_ns,
                    dense: false,
                },
            );
        }
        if k < results.len() && results[k].0 {
            let mut again = job.part(k as u32, args.get(k).map_or(&[][..], |a| a).to_vec());
            again.panic_retries -= 1;
            if let Some(control) = &again.control {
                control.requeue();
            }
            retry.push(again);
            run_start = k + 1;
        }
    }
    let read = results.len() as u32;
    if read < job.count {
        job.deliver_part(
            read,
            job.count - read,
            Outcome::Failed(Failure::Protocol(
                "a worker process rewrote its reply while it was being read".to_owned(),
            )),
        );
    }
    job.settle();
    shared.queue.requeue_front(retry);
}
