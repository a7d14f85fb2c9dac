//! Rank 0's reading of a worker rank's `REPLY`: each one is checked against
//! the batch in flight that it answers before any result in it is
//! delivered, so a rank that breaks the protocol fails only its own batch's
//! unanswered items.

use std::collections::HashMap;

use crate::codec;
use crate::conn::outcome::{Failure, Outcome};
use crate::pool::job::Job;
use crate::proto;

use super::message::{REPLY, REPLY_DONE, REPLY_FAILED, REPLY_HEAD};

/// A batch sent to a rank and not fully answered.
pub(super) struct Flight {
    pub(super) job: Job,
    pub(super) slot: usize,
    /// The rank it was sent to: the only one whose replies count for it.
    pub(super) rank: i32,
    pub(super) answered: Answered,
}

/// Which items of a batch of `items` have been answered: each item must
/// be answered exactly once, by parts that lie inside the batch.
#[derive(Debug)]
pub(super) struct Answered {
    items: u32,
    /// Items not answered yet.
    left: u32,
    /// One bit per item, set when answered; allocated by the first part
    /// that does not answer the whole batch at once.
    bits: Vec<u64>,
}

impl Answered {
    pub(super) fn new(items: u32) -> Answered {
        Answered {
            items,
            left: items,
            bits: Vec::new(),
        }
    }

    /// Marks items `offset..offset + count` answered, or says why they
    /// cannot be (outside the batch, or answered before).
    fn claim(&mut self, offset: u32, count: u32) -> std::result::Result<(), String> {
        let items = self.items;
        let end = offset
            .checked_add(count)
            .filter(|&end| end <= items)
            .ok_or_else(|| {
                format!("it answered items {offset}..{offset}+{count} of a batch of {items}")
            })?;
        if count == 0 {
            return Ok(());
        }
        if self.bits.is_empty() {
            if self.left != items {
                return Err("it answered the whole batch already".to_owned());
            }
            if count == items {
                self.left = 0; // the whole batch in one part: no bits needed
                return Ok(());
            }
            self.bits = vec![0; (items as usize).div_ceil(64)];
        }
        let bit = |i: u32| (i as usize / 64, 1u64 << (i % 64));
        if let Some(i) = (offset..end).find(|&i| {
            let (word, mask) = bit(i);
            self.bits[word] & mask != 0
        }) {
            return Err(format!("it answered item {i} of the batch twice"));
        }
        for i in offset..end {
            let (word, mask) = bit(i);
            self.bits[word] |= mask;
        }
        self.left -= count;
        Ok(())
    }

    /// The items not answered yet, as `(offset, count)` ranges.
    fn unanswered(&self) -> Vec<(u32, u32)> {
        if self.left == 0 {
            return Vec::new();
        }
        if self.bits.is_empty() {
            return vec![(0, self.items)];
        }
        let mut gaps: Vec<(u32, u32)> = Vec::new();
        for i in 0..self.items {
            if self.bits[i as usize / 64] & (1 << (i % 64)) != 0 {
                continue;
            }
            match gaps.last_mut() {
                Some((start, count)) if *start + *count == i => *count += 1,
                _ => gaps.push((i, 1)),
            }
        }
        gaps
    }
}

/// The fixed head of a `REPLY`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct ReplyHead {
    batch: u64,
    offset: u32,
    count: u32,
    status: u8,
}

/// The head of a `REPLY`; `None` if `bytes` is another message (`CLOSED`,
/// a straggler) or too short to be one.
fn reply_head(bytes: &[u8]) -> Option<ReplyHead> {
    if bytes.first() != Some(&REPLY) || bytes.len() < REPLY_HEAD {
        return None;
    }
    let mut cur = proto::Cursor(&bytes[1..]);
    Some(ReplyHead {
        batch: cur.u64().ok()?,
        offset: cur.u32().ok()?,
        count: cur.u32().ok()?,
        status: bytes[REPLY_HEAD - 1],
    })
}

/// What a `REPLY` reports for its items, checked.
#[derive(Debug)]
enum ReplyBody {
    /// `count` framed results fill `bytes[start..]` exactly.
    Done {
        elapsed_ns: u64,
        start: usize,
    },
    Failed(Failure),
}

/// Checks a `REPLY` (`bytes`, whose head is `head`) against the batch it
/// answers, before anything is sliced or handed on: its items lie inside
/// the batch and none was answered before (they are marked in `answered`
/// only if the whole reply is valid), its status is known, a `DONE` holds
/// its time and exactly `count` framed results and nothing after them, and
/// a `FAILED` holds exactly one postcard [`Failure`]. The error says what
/// the rank broke.
fn check_reply(
    bytes: &[u8],
    head: &ReplyHead,
    answered: &mut Answered,
) -> std::result::Result<ReplyBody, String> {
    let body = match head.status {
        REPLY_DONE => {
            let start = REPLY_HEAD + 8;
            let elapsed = bytes
                .get(REPLY_HEAD..start)
                .ok_or("its DONE reply ends before the time it took")?;
            let elapsed_ns = u64::from_le_bytes(elapsed.try_into().expect("8 bytes"));
            let mut rest = &bytes[start..];
            for i in 0..head.count {
                if codec::next_item(&mut rest).is_none() {
                    return Err(format!(
                        "its DONE reply holds {i} results where it announced {}",
                        head.count
                    ));
                }
            }
            if !rest.is_empty() {
                return Err(format!(
                    "its DONE reply has {} bytes after its {} results",
                    rest.len(),
                    head.count
                ));
            }
            ReplyBody::Done { elapsed_ns, start }
        }
        REPLY_FAILED => ReplyBody::Failed(
            codec::decode_exact(&bytes[REPLY_HEAD..])
                .map_err(|e| format!("its failure report is not one: {e}"))?,
        ),
        other => return Err(format!("its reply has an unknown status {other}")),
    };
    answered.claim(head.offset, head.count)?;
    Ok(body)
}

/// Hands a `REPLY` from `rank` to the job it answers. A reply that breaks
/// the protocol fails the batch's unanswered items with
/// [`Failure::Protocol`]; a reply for a batch that is not in flight, or
/// that went to another rank, is dropped (nothing waits for it, and one
/// rank cannot answer or fail another's work). Returns the job's rank slot
/// when the job is complete.
pub(super) fn deliver_reply(
    rank: i32,
    bytes: &[u8],
    flights: &mut HashMap<u64, Flight>,
) -> Option<usize> {
    let head = reply_head(bytes)?;
    let flight = flights.get_mut(&head.batch)?;
    if flight.rank != rank {
        return None;
    }
    match check_reply(bytes, &head, &mut flight.answered) {
        Ok(body) => {
            let outcome = match body {
                ReplyBody::Done { elapsed_ns, start } => Outcome::Done {
                    elapsed_ns,
                    data: bytes.to_vec().into(),
                    start,
                    dense: false, // relayed batches are framed (`dense_batches`)
                },
                ReplyBody::Failed(failure) => Outcome::Failed(failure),
            };
            flight.job.deliver_part(head.offset, head.count, outcome);
        }
        Err(why) => {
            let failure = Failure::Protocol(format!("MPI rank {rank} broke the protocol: {why}"));
            fail_unanswered(flight, &failure);
        }
    }
    if flight.answered.left > 0 {
        return None;
    }
    let flight = flights.remove(&head.batch)?;
    flight.job.settle();
    if let Some(control) = &flight.job.control {
        control.finish();
    }
    Some(flight.slot)
}

/// Fails every item of `flight` that no reply answered yet.
pub(super) fn fail_unanswered(flight: &mut Flight, failure: &Failure) {
    for (offset, count) in flight.answered.unanswered() {
        flight
            .job
            .deliver_part(offset, count, Outcome::Failed(failure.clone()));
    }
    flight.answered.left = 0;
}

#[cfg(test)]
mod tests {
    use std::sync::mpsc::{self, Receiver};

    use crate::conn::outcome::Reply;
    use crate::mpi::rank::encode_reply;
    use crate::pool::job::Sink;

    use super::*;

    /// A `REPLY` as a rank sends it, for `items` framed results.
    fn done_reply(batch: u64, offset: u32, results: &[Vec<u8>], elapsed_ns: u64) -> Vec<u8> {
        let mut data = Vec::new();
        for r in results {
            codec::put_raw_item(&mut data, codec::ITEM_OK, r);
        }
        let mut relay = Vec::new();
        encode_reply(
            &mut relay,
            batch,
            Reply {
                first_index: Some(u64::from(offset)),
                count: results.len() as u32,
                outcome: Outcome::Done {
                    data: data.into(),
                    start: 0,
                    elapsed_ns,
                    dense: false,
                },
            },
        );
        relay
    }

    fn flight(batch: u64, rank: i32, items: u32) -> (Flight, Receiver<(u64, Reply)>) {
        let (tx, rx) = mpsc::channel();
        let mut job = Job::new(
            "w",
            vec![0; 4].into(),
            items,
            Sink::Relay(batch, tx, crate::codec::reframe::<u64>),
        );
        job.first_index = Some(0);
        let flight = Flight {
            job,
            slot: 3,
            rank,
            answered: Answered::new(items),
        };
        (flight, rx)
    }

    /// `(first index, count, failed with Protocol?)` of each part delivered.
    fn parts(rx: &Receiver<(u64, Reply)>) -> Vec<(u64, u32, bool)> {
        rx.try_iter()
            .map(|(_, r)| {
                let failed = match &r.outcome {
                    Outcome::Failed(Failure::Protocol(why)) => {
                        assert!(why.contains("rank 1"), "{why}");
                        true
                    }
                    Outcome::Done { .. } => false,
                    _ => panic!("unexpected outcome"),
                };
                (r.first_index.unwrap(), r.count, failed)
            })
            .collect()
    }

    #[test]
    fn a_reply_outside_its_batch_fails_the_batch() {
        let (f, rx) = flight(7, 1, 4);
        let mut flights = HashMap::from([(7, f)]);
        let forged = done_reply(7, 3, &vec![vec![1]; 5], 0);
        assert_eq!(deliver_reply(1, &forged, &mut flights), Some(3));
        assert!(flights.is_empty());
        assert_eq!(parts(&rx), [(0, 4, true)]);
    }

    #[test]
    fn overlapping_parts_fail_only_what_is_unanswered() {
        let (f, rx) = flight(7, 1, 4);
        let mut flights = HashMap::from([(7, f)]);
        let first = done_reply(7, 0, &[vec![1], vec![2]], 0);
        assert_eq!(deliver_reply(1, &first, &mut flights), None);
        let again = done_reply(7, 1, &[vec![1], vec![2]], 0);
        assert_eq!(deliver_reply(1, &again, &mut flights), Some(3));
        assert_eq!(parts(&rx), [(0, 2, false), (2, 2, true)]);
    }

    #[test]
    fn short_results_and_other_ranks_replies() {
        let (f, rx) = flight(7, 1, 2);
        let mut flights = HashMap::from([(7, f)]);
        // Rank 2 cannot answer (or fail) rank 1's batch.
        let mut reply = done_reply(7, 0, &[vec![1], vec![2]], 0);
        assert_eq!(deliver_reply(2, &reply, &mut flights), None);
        assert!(parts(&rx).is_empty());
        // Announces 2 results and holds 1 and a half.
        reply.truncate(reply.len() - 1);
        assert_eq!(deliver_reply(1, &reply, &mut flights), Some(3));
        assert_eq!(parts(&rx), [(0, 2, true)]);
        // A DONE cut inside its time.
        let (f, rx) = flight(8, 1, 1);
        let mut flights = HashMap::from([(8, f)]);
        let reply = done_reply(8, 0, &[vec![1]], 0);
        assert_eq!(
            deliver_reply(1, &reply[..REPLY_HEAD + 3], &mut flights),
            Some(3)
        );
        assert_eq!(parts(&rx), [(0, 1, true)]);
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(256))]

        /// Whatever a rank sends: no panic, and what is accepted lies
        /// inside the batch, answers no item twice, and holds exactly the
        /// results it announced.
        #[test]
        fn arbitrary_replies_are_checked(
            mut bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..96),
            as_reply in proptest::prelude::any::<bool>(),
            items in 0u32..80,
            before in proptest::collection::vec((0u32..100, 0u32..100), 0..4),
        ) {
            if as_reply && !bytes.is_empty() {
                bytes[0] = REPLY;
            }
            let mut answered = Answered::new(items);
            for (offset, count) in before {
                let _ = answered.claim(offset, count);
            }
            let left = answered.left;
            let Some(head) = reply_head(&bytes) else { return Ok(()) };
            match check_reply(&bytes, &head, &mut answered) {
                Ok(body) => {
                    proptest::prop_assert!(u64::from(head.offset) + u64::from(head.count) <= u64::from(items));
                    proptest::prop_assert_eq!(answered.left, left - head.count);
                    if let ReplyBody::Done { start, .. } = body {
                        let mut rest = &bytes[start..];
                        for _ in 0..head.count {
                            proptest::prop_assert!(codec::next_item(&mut rest).is_some());
                        }
                        proptest::prop_assert!(rest.is_empty());
                    }
                }
                Err(_) => proptest::prop_assert_eq!(answered.left, left),
            }
        }

        /// Replies as a rank encodes them, for any split of a batch into
        /// parts, are accepted with their results intact; answering any
        /// part again is refused.
        #[test]
        fn replies_round_trip(
            results in proptest::collection::vec(
                proptest::collection::vec(proptest::prelude::any::<u8>(), 0..20), 1..40),
            cuts in proptest::collection::vec(0usize..40, 0..5),
            elapsed in proptest::prelude::any::<u64>(),
        ) {
            let items = results.len() as u32;
            let mut bounds: Vec<usize> = cuts.into_iter().map(|c| c % results.len()).collect();
            bounds.extend([0, results.len()]);
            bounds.sort_unstable();
            bounds.dedup();
            let mut answered = Answered::new(items);
            for w in bounds.windows(2) {
                let bytes = done_reply(9, w[0] as u32, &results[w[0]..w[1]], elapsed);
                let head = reply_head(&bytes).unwrap();
                proptest::prop_assert_eq!(head.batch, 9);
                proptest::prop_assert_eq!(head.offset, w[0] as u32);
                let body = check_reply(&bytes, &head, &mut answered);
                let Ok(ReplyBody::Done { elapsed_ns, start }) = body else {
                    return Err(proptest::test_runner::TestCaseError::fail(format!("{body:?}")));
                };
                proptest::prop_assert_eq!(elapsed_ns, elapsed);
                let mut rest = &bytes[start..];
                for r in &results[w[0]..w[1]] {
                    let (status, body, _) = codec::next_item(&mut rest).unwrap();
                    proptest::prop_assert_eq!(status, codec::ITEM_OK);
                    proptest::prop_assert_eq!(body, &r[..]);
                }
                proptest::prop_assert!(check_reply(&bytes, &head, &mut answered).is_err());
            }
            proptest::prop_assert_eq!(answered.left, 0);
            proptest::prop_assert!(answered.unanswered().is_empty());
        }
    }
}
