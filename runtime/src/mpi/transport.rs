//! How multiproc's messages travel: non-blocking sends on its own tag and
//! communicator, and polling with a back-off instead of a blocking receive.

use std::time::Duration;

use mpi::point_to_point::{Destination, MatchedReceiveVec, Source};
use mpi::request::{Request, StaticScope};
use mpi::topology::{Communicator, SimpleCommunicator};

/// The one MPI tag of multiproc's messages (on its own communicator).
const TAG: i32 = 0x6d70;

/// Non-blocking sends whose buffers live until MPI is done with them.
#[derive(Default)]
pub(super) struct Outbox {
    pub(super) pending: Vec<Request<'static, [u8], StaticScope>>,
}

impl Outbox {
    pub(super) fn send(&mut self, comm: &SimpleCommunicator, rank: i32, message: Vec<u8>) {
        // Leaked until the request completes (`reclaim`): MPI reads the
        // buffer in the background.
        let buf: &'static [u8] = Box::leak(message.into_boxed_slice());
        let request = comm
            .process_at_rank(rank)
            .immediate_send_with_tag(StaticScope, buf, TAG);
        self.pending.push(request);
    }

    /// Frees the buffers of completed sends; `true` if any completed.
    pub(super) fn poll(&mut self) -> bool {
        let before = self.pending.len();
        let mut still = Vec::with_capacity(before);
        for request in self.pending.drain(..) {
            match request.test_with_data() {
                Ok((_, buf)) => reclaim(buf),
                Err(request) => still.push(request),
            }
        }
        self.pending = still;
        self.pending.len() < before
    }

    /// Waits until every send has completed.
    pub(super) fn flush(&mut self) {
        for request in self.pending.drain(..) {
            reclaim(request.wait_for_data());
        }
    }
}

fn reclaim(buf: &'static [u8]) {
    // SAFETY: `buf` was leaked from a `Box<[u8]>` in `Outbox::send`, and its
    // request has completed, so MPI no longer reads it and nothing else
    // refers to it.
    drop(unsafe { Box::from_raw(std::ptr::from_ref(buf).cast_mut()) });
}

/// Sleeps a little longer each time nothing happened, up to a cap: a few
/// dozen yields first (a reply is often microseconds away), then sleeps
/// from 5 µs doubling to the cap.
pub(super) struct Backoff {
    idle: u32,
    pub(super) cap: Duration,
}

impl Backoff {
    /// The cap while work is in flight: bounds the latency a poll adds to a
    /// round trip, at about one `MPI_Iprobe` per 100 µs.
    pub(super) const BUSY: Duration = Duration::from_micros(100);
    /// The cap of a worker rank with no pool open (rank 0 may run for
    /// minutes before it opens one): a poll costs nothing measurable.
    pub(super) const IDLE: Duration = Duration::from_millis(2);

    pub(super) fn new(cap: Duration) -> Backoff {
        Backoff { idle: 0, cap }
    }

    pub(super) fn reset(&mut self) {
        self.idle = 0;
    }

    pub(super) fn pause(&mut self) -> Duration {
        self.idle = self.idle.saturating_add(1);
        if self.idle < 32 {
            Duration::ZERO
        } else {
            Duration::from_micros(5u64 << (self.idle - 32).min(12)).min(self.cap)
        }
    }

    pub(super) fn wait(&mut self) {
        match self.pause() {
            Duration::ZERO => std::thread::yield_now(),
            d => std::thread::sleep(d),
        }
    }
}

/// The next multiproc message from `from` (any rank if `None`), if one
/// has arrived.
pub(super) fn try_receive(comm: &SimpleCommunicator, from: Option<i32>) -> Option<(i32, Vec<u8>)> {
    let probed = match from {
        Some(rank) => comm
            .process_at_rank(rank)
            .immediate_matched_probe_with_tag(TAG),
        None => comm.any_process().immediate_matched_probe_with_tag(TAG),
    }?;
    let (bytes, status) = probed.matched_receive_vec::<u8>();
    Some((status.source_rank(), bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_yields_first_then_sleeps_up_to_its_cap() {
        let mut b = Backoff::new(Backoff::BUSY);
        assert_eq!(b.pause(), Duration::ZERO);
        let waits: Vec<Duration> = (0..100).map(|_| b.pause()).collect();
        assert!(waits.windows(2).all(|w| w[0] <= w[1]), "{waits:?}");
        assert!(waits.contains(&Duration::from_micros(5)), "{waits:?}");
        assert_eq!(b.pause(), Backoff::BUSY);
        b.cap = Backoff::IDLE;
        assert_eq!(b.pause(), Backoff::IDLE);
        b.reset();
        assert_eq!(b.pause(), Duration::ZERO);
    }
}
