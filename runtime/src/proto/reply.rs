//! The parent's one reader of a worker's answer to a batch: a `DONE` or
//! `FAILED` frame, checked against the batch in flight before any result
//! in it is delivered.
//!
//! What is checked, and why each rule holds for a correct child:
//! - the tag is `DONE` (dense or framed) or `FAILED`: a child sends nothing
//!   else while a batch is in flight;
//! - the batch id is the oldest batch in flight: a child answers batches in
//!   the order it received them, once each;
//! - a `DONE` has its whole head, and says it ran at most the batch's
//!   count, and fewer only when the parent asked it to stop early;
//! - a framed `DONE` holds exactly that many items, each with its body
//!   inside the frame, and nothing after them;
//! - a dense `DONE` holds a whole number of results of the width the
//!   parent expects, exactly as many as it ran, when the parent knows that
//!   width;
//! - a `FAILED` body decodes as a [`BatchFailure`] and fills the frame.
//!
//! A reply decoded in place from a reply arena is checked there; the
//! decoders that read it afterwards check every length again, so a child
//! that rewrites its reply after this check can only change its own
//! results, never make the parent read outside the reply.

use std::fmt;

use crate::proto::BatchFailure;
use crate::{codec, proto};

/// What the parent knows of the batch a reply must answer.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Expect {
    /// The oldest batch in flight.
    pub(crate) batch: u64,
    /// Its item count.
    pub(crate) count: u32,
    /// The parent asked the child to stop it early (work stealing).
    pub(crate) stop_asked: bool,
}

/// A checked answer to the batch in flight.
#[derive(Debug)]
pub(crate) enum Answer {
    /// The batch ran; its results follow the head (`proto::DONE_HEADER`).
    Done {
        /// Items run, at most the batch's count.
        ran: u32,
        /// The child's own measure of the batch's time (a scheduling hint
        /// only: nothing that bounds a wait is taken from it).
        elapsed_ns: u64,
        /// The results are dense.
        dense: bool,
    },
    /// The child refused the whole batch.
    Failed(BatchFailure),
}

/// A rule of the protocol that a worker process broke.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Breach {
    /// Which rule, and how.
    pub(crate) message: String,
    /// The batch an answer to another batch than the one in flight named:
    /// the caller can tell a repeated answer (to a batch it has settled)
    /// from one that names a batch never sent.
    pub(crate) other_batch: Option<u64>,
}

impl fmt::Display for Breach {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

fn breach(message: String) -> Breach {
    Breach {
        message,
        other_batch: None,
    }
}

/// Reads a reply `frame` (from its tag on, the length prefix removed) to
/// the batch `expect` describes. `dense_width` is the width of one dense
/// result when the parent knows it (`None`: the decoders check each
/// result's length as they go).
///
/// # Errors
///
/// A [`Breach`] naming the broken rule.
pub(crate) fn read_answer(
    frame: &[u8],
    expect: Expect,
    dense_width: Option<usize>,
) -> Result<Answer, Breach> {
    let Some((&tag, rest)) = frame.split_first() else {
        return Err(breach("an empty frame".to_owned()));
    };
    let dense = tag & proto::DENSE != 0;
    let kind = tag & !proto::DENSE;
    let known = kind == proto::TAG_DONE || (kind == proto::TAG_FAILED && !dense);
    if !known {
        return Err(breach(format!(
            "a frame with tag {tag} while batch {} was in flight",
            expect.batch
        )));
    }
    let Some(batch) = rest.get(..8) else {
        return Err(breach(format!(
            "a {} byte answer has no batch id",
            frame.len()
        )));
    };
    let batch = u64::from_le_bytes(batch.try_into().unwrap_or_default());
    if batch != expect.batch {
        return Err(Breach {
            other_batch: Some(batch),
            ..breach(format!(
                "an answer to batch {batch}, but batch {} is the one in flight (a reply that is unsolicited, duplicated or out of order)",
                expect.batch
            ))
        });
    }
    if kind == proto::TAG_FAILED {
        return match codec::decode_exact::<BatchFailure>(&rest[8..]) {
            Ok(failure) => Ok(Answer::Failed(failure)),
            Err(e) => Err(breach(format!(
                "an undecodable failure report for batch {batch}: {e}"
            ))),
        };
    }
    let Some(head) = frame.get(..proto::DONE_HEADER) else {
        return Err(breach(format!(
            "a DONE frame of {} bytes for batch {batch}, shorter than its {} byte head",
            frame.len(),
            proto::DONE_HEADER
        )));
    };
    let elapsed_ns = u64::from_le_bytes(head[9..17].try_into().unwrap_or_default());
    let ran = u32::from_le_bytes(head[17..21].try_into().unwrap_or_default());
    if ran > expect.count || (ran < expect.count && !expect.stop_asked) {
        return Err(breach(format!(
            "a DONE frame that claims {ran} items run of batch {batch}, which has {}{}",
            expect.count,
            if expect.stop_asked {
                ""
            } else {
                " (and no early stop was asked)"
            }
        )));
    }
    let body = &frame[proto::DONE_HEADER..];
    if dense {
        if let Some(width) = dense_width {
            let want = (ran as usize).checked_mul(width);
            if want != Some(body.len()) {
                return Err(breach(format!(
                    "a dense DONE frame of {} result bytes for {ran} results of {width} bytes in batch {batch}",
                    body.len()
                )));
            }
        }
    } else {
        check_items(body, ran).map_err(|e| breach(format!("batch {batch}: {e}")))?;
    }
    Ok(Answer::Done {
        ran,
        elapsed_ns,
        dense,
    })
}

/// The answer to a batch of one item (a `Process`'s call, a pool's
/// initializer), from what [`read_frame`](super::read_frame) gave for it.
///
/// # Errors
///
/// `Some(what)` if the child broke the protocol (a bad frame, or an answer
/// that breaks a rule of [`read_answer`]); `None` if it ended without an
/// answer.
pub(crate) fn read_single(
    read: std::io::Result<Option<u8>>,
    frame: &[u8],
    batch: u64,
) -> Result<Answer, Option<String>> {
    let expect = Expect {
        batch,
        count: 1,
        stop_asked: false,
    };
    match read {
        Ok(Some(_)) => read_answer(frame, expect, None).map_err(|b| Some(b.message)),
        Err(e) if proto::is_breach(&e) => Err(Some(e.to_string())),
        Ok(None) | Err(_) => Err(None),
    }
}

/// Where a `DONE_SHARED` frame says its `DONE` frame is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct SharedDone {
    /// Which reply arena.
    pub(crate) arena: usize,
    /// The reply's number in that arena (the child's count of replies it
    /// wrote there), which the parent stores back to release it.
    pub(crate) seq: u64,
    /// The `DONE` frame's length, from its tag on.
    pub(crate) len: usize,
}

/// Reads a `DONE_SHARED` frame (from its tag on) against the reply arenas
/// the parent gave this child: `arenas` of them, each holding up to
/// `capacity` bytes.
///
/// # Errors
///
/// A [`Breach`] if the frame is not exactly one, names an arena the child
/// does not have, or a length that does not fit one or cannot hold a
/// `DONE` frame's head.
pub(crate) fn read_shared_done(
    frame: &[u8],
    arenas: usize,
    capacity: usize,
) -> Result<SharedDone, Breach> {
    let body = match frame.split_first() {
        Some((&proto::TAG_DONE_SHARED, body)) if body.len() == 4 + 8 + 8 => body,
        _ => {
            return Err(breach(format!(
                "a shared-reply frame of {} bytes (one is {})",
                frame.len(),
                1 + 4 + 8 + 8
            )));
        }
    };
    let mut cur = proto::Cursor(body);
    let (Ok(arena), Ok(seq), Ok(len)) = (cur.u32(), cur.u64(), cur.u64()) else {
        unreachable!("the length was checked");
    };
    let arena = arena as usize;
    let len = usize::try_from(len).unwrap_or(usize::MAX);
    if arena >= arenas {
        return Err(breach(format!(
            "a shared reply in arena {arena}, of the {arenas} it was given"
        )));
    }
    if !(proto::DONE_HEADER..=capacity).contains(&len) {
        return Err(breach(format!(
            "a shared reply of {len} bytes, in an arena of {capacity} (a DONE frame takes {} to {capacity})",
            proto::DONE_HEADER
        )));
    }
    Ok(SharedDone { arena, seq, len })
}

/// Reads a `HELLO` frame (from its tag on): the child must speak this
/// build's protocol and be the process `pid` that was started.
///
/// # Errors
///
/// A [`Breach`] naming what does not match.
pub(crate) fn read_hello(frame: &[u8], pid: u32) -> Result<(), Breach> {
    let body = match frame.split_first() {
        Some((&proto::TAG_HELLO, body)) if body.len() == 8 => body,
        _ => {
            return Err(breach(format!(
                "expected a hello of 9 bytes, got a frame of {} with tag {:?}",
                frame.len(),
                frame.first()
            )));
        }
    };
    let mut cur = proto::Cursor(body);
    let (Ok(version), Ok(child_pid)) = (cur.u32(), cur.u32()) else {
        unreachable!("the length was checked");
    };
    if version != proto::PROTOCOL_VERSION || child_pid != pid {
        return Err(breach(format!(
            "hello from pid {child_pid} with protocol {version}, expected pid {pid} with protocol {}",
            proto::PROTOCOL_VERSION
        )));
    }
    Ok(())
}

/// Checks that `body` is exactly `count` framed items, each with its body
/// inside `body`.
fn check_items(mut body: &[u8], count: u32) -> Result<(), String> {
    // Every status a two-bit field can hold is a known one.
    for k in 0..count {
        if codec::next_item(&mut body).is_none() {
            return Err(format!(
                "item {k} of {count} is missing or runs past the end of the frame"
            ));
        }
    }
    if body.is_empty() {
        Ok(())
    } else {
        Err(format!("{} bytes after its {count} items", body.len()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn done(batch: u64, ran: u32, dense: bool, body: &[u8]) -> Vec<u8> {
        let mut f = vec![proto::TAG_DONE | if dense { proto::DENSE } else { 0 }];
        f.extend_from_slice(&batch.to_le_bytes());
        f.extend_from_slice(&7u64.to_le_bytes());
        f.extend_from_slice(&ran.to_le_bytes());
        f.extend_from_slice(body);
        f
    }

    fn items(n: u32) -> Vec<u8> {
        let mut out = Vec::new();
        for k in 0..n {
            codec::put_raw_item(&mut out, codec::ITEM_OK, &[k as u8]);
        }
        out
    }

    const EXPECT: Expect = Expect {
        batch: 5,
        count: 3,
        stop_asked: false,
    };

    #[test]
    fn a_correct_reply_is_read() {
        let a = read_answer(&done(5, 3, false, &items(3)), EXPECT, None).unwrap();
        assert!(matches!(
            a,
            Answer::Done {
                ran: 3,
                elapsed_ns: 7,
                dense: false
            }
        ));
        let a = read_answer(&done(5, 3, true, &[0; 24]), EXPECT, Some(8)).unwrap();
        assert!(matches!(
            a,
            Answer::Done {
                ran: 3,
                dense: true,
                ..
            }
        ));
        let mut failed = vec![proto::TAG_FAILED];
        failed.extend_from_slice(&5u64.to_le_bytes());
        failed.extend(postcard::to_allocvec(&BatchFailure::Malformed("x".into())).unwrap());
        assert!(matches!(
            read_answer(&failed, EXPECT, None),
            Ok(Answer::Failed(BatchFailure::Malformed(_)))
        ));
    }

    #[test]
    fn every_broken_rule_is_a_breach() {
        let bad: Vec<(&str, Vec<u8>, Option<usize>)> = vec![
            ("empty", vec![], None),
            ("forged 5-byte frame", vec![proto::TAG_DONE], None),
            (
                "unknown tag",
                done(5, 3, false, &items(3))[..]
                    .iter()
                    .enumerate()
                    .map(|(i, &b)| if i == 0 { 99 } else { b })
                    .collect(),
                None,
            ),
            ("other batch", done(6, 3, false, &items(3)), None),
            ("short head", done(5, 3, false, &[])[..15].to_vec(), None),
            (
                "more items than the batch",
                done(5, 4, false, &items(4)),
                None,
            ),
            ("fewer without a stop", done(5, 2, false, &items(2)), None),
            ("missing item", done(5, 3, false, &items(2)), None),
            (
                "trailing bytes",
                done(5, 3, false, &[items(3), vec![0]].concat()),
                None,
            ),
            ("short dense", done(5, 3, true, &[0; 23]), Some(8)),
            (
                "an item past the end",
                done(5, 1, false, &[9 << 2, 0]),
                None,
            ),
            (
                "garbage failure",
                [
                    vec![proto::TAG_FAILED],
                    5u64.to_le_bytes().to_vec(),
                    vec![0xff; 9],
                ]
                .concat(),
                None,
            ),
        ];
        for (what, frame, width) in bad {
            assert!(
                read_answer(&frame, EXPECT, width).is_err(),
                "{what} was accepted"
            );
        }
    }

    #[test]
    fn fewer_items_are_read_when_a_stop_was_asked() {
        let expect = Expect {
            stop_asked: true,
            ..EXPECT
        };
        assert!(matches!(
            read_answer(&done(5, 1, false, &items(1)), expect, None),
            Ok(Answer::Done { ran: 1, .. })
        ));
    }

    #[test]
    fn shared_replies_and_hellos_are_checked() {
        let shared = |arena: u32, seq: u64, len: u64| {
            let mut f = vec![proto::TAG_DONE_SHARED];
            f.extend_from_slice(&arena.to_le_bytes());
            f.extend_from_slice(&seq.to_le_bytes());
            f.extend_from_slice(&len.to_le_bytes());
            f
        };
        assert_eq!(
            read_shared_done(&shared(3, 9, 100), 4, 1000),
            Ok(SharedDone {
                arena: 3,
                seq: 9,
                len: 100
            })
        );
        assert!(read_shared_done(&shared(4, 9, 100), 4, 1000).is_err());
        assert!(read_shared_done(&shared(0, 9, 1001), 4, 1000).is_err());
        assert!(read_shared_done(&shared(0, 9, 3), 4, 1000).is_err());
        assert!(read_shared_done(&shared(0, 9, u64::MAX), 4, 1000).is_err());
        assert!(read_shared_done(&shared(0, 9, 100)[..20], 4, 1000).is_err());
        let mut hello = vec![proto::TAG_HELLO];
        hello.extend_from_slice(&proto::PROTOCOL_VERSION.to_le_bytes());
        hello.extend_from_slice(&77u32.to_le_bytes());
        assert!(read_hello(&hello, 77).is_ok());
        assert!(read_hello(&hello, 78).is_err());
        assert!(read_hello(&hello[..8], 77).is_err());
        assert!(read_hello(&[], 77).is_err());
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        /// Any bytes: an answer or a breach, never a panic; an accepted
        /// framed answer holds exactly the items it claims.
        #[test]
        fn arbitrary_frames_never_panic(frame in proptest::collection::vec(any::<u8>(), 0..96),
                                        count in 0u32..8, stop_asked: bool, width in proptest::option::of(1usize..9)) {
            let expect = Expect { batch: 5, count, stop_asked };
            if let Ok(Answer::Done { ran, dense: false, .. }) = read_answer(&frame, expect, width) {
                prop_assert!(ran <= count);
                let mut body = &frame[proto::DONE_HEADER..];
                for _ in 0..ran {
                    prop_assert!(codec::next_item(&mut body).is_some());
                }
                prop_assert!(body.is_empty());
            }
        }

        /// Any bytes as a shared-reply or hello frame: read or refused,
        /// never a panic, and what is read fits what the parent gave.
        #[test]
        fn arbitrary_shared_replies_and_hellos_never_panic(frame in proptest::collection::vec(any::<u8>(), 0..32),
                                                           arenas in 0usize..6, capacity in 0usize..4096) {
            if let Ok(s) = read_shared_done(&frame, arenas, capacity) {
                prop_assert!(s.arena < arenas && s.len <= capacity && s.len >= proto::DONE_HEADER);
            }
            let _ = read_hello(&frame, 77);
        }

        /// A correct reply with one byte changed, cut or added is read as a
        /// breach or as an answer that still obeys every rule.
        #[test]
        fn mutated_replies_obey_the_rules(n in 0u32..6, at in any::<prop::sample::Index>(), byte: u8, cut in 0usize..4) {
            let mut frame = done(5, n, false, &items(n));
            let i = at.index(frame.len());
            frame[i] = byte;
            frame.truncate(frame.len() - cut.min(frame.len()));
            let expect = Expect { batch: 5, count: n, stop_asked: false };
            if let Ok(Answer::Done { ran, .. }) = read_answer(&frame, expect, Some(8)) {
                prop_assert_eq!(ran, n);
            }
        }
    }
}
