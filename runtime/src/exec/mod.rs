//! The child's batch executor: runs the items of a batch through a
//! worker function, catches their panics, and writes their results.

use std::any::{Any, type_name};
use std::panic::{AssertUnwindSafe, catch_unwind};

mod state;

pub(crate) use state::{
    Items, begin_batch, end_batch, install_panic_hook, progress, running, set_progress,
    take_panic_report,
};

use crate::codec::*;
use crate::worker::Worker;

/// The arguments of a batch, as the child received them.
pub(crate) enum BatchArgs<'a> {
    /// Framed items.
    Framed(&'a [u8]),
    /// Dense values (see [`dense_width`]).
    Dense(&'a [u8]),
    /// `count` consecutive integers of `width` bytes from `first` (see
    /// [`take_range`]).
    Range {
        first: u64,
        count: u32,
        width: usize,
    },
}

/// Runs the arguments of a batch through worker `W` and appends one result
/// per argument to `out`; returns how many it ran (all, unless the parent
/// asked it to stop early), and whether the results are dense (only if the
/// arguments were). Runs in the child.
pub(crate) fn invoke_batch<W: Worker>(
    args: BatchArgs<'_>,
    out: &mut Vec<u8>,
) -> Result<(u32, bool), String> {
    match args {
        BatchArgs::Framed(input) => invoke_framed::<W>(input, out),
        BatchArgs::Dense(input) => invoke_dense::<W>(input, out),
        BatchArgs::Range {
            first,
            count,
            width,
        } => invoke_range::<W>(first, count, width, out),
    }
}

/// [`invoke_batch`] of framed argument items. Results of a primitive type
/// are dense (their fixed-width bytes, no item headers) until an item
/// fails, from which on every result is framed: the parent then neither
/// walks nor checks a header per result (`map(len)` over strings, say).
fn invoke_framed<W: Worker>(mut input: &[u8], out: &mut Vec<u8>) -> Result<(u32, bool), String> {
    // Results are usually about as large as their arguments: room for that
    // up front saves growing (and copying) the buffer several times.
    crate::mem::huge::reserve(out, input.len());
    let start = out.len();
    let dense = dense_width::<W::Output>();
    let mut dense_so_far = dense.is_some();
    let mut index = 0u64;
    let items = Items::current();
    // A failed batch leaves its sender to drop what it deferred; nothing
    // of an earlier batch may end up in this one.
    drop(DEFERRED.take());
    while !input.is_empty() {
        if !items.started(index) {
            break; // the parent took the rest of the batch for another worker
        }
        index += 1;
        // What was deferred is followed by this item's result (only a
        // vector can have been: a constant test for any other output).
        if maybe_vec::<W::Output>() {
            flush_deferred(out);
        }
        let Some((status, body, _)) = next_item(&mut input) else {
            return Err("truncated argument item".to_owned());
        };
        if status != ITEM_OK {
            return Err(format!("argument item with status {status}"));
        }
        let args = match decode_exact::<W::Args>(body) {
            Ok(args) => args,
            Err(e) => {
                if std::mem::take(&mut dense_so_far) {
                    reframe::<W::Output>(out, start);
                }
                put_raw_item(
                    out,
                    ITEM_DECODE_ERROR,
                    format!("{e} (type `{}`)", type_name::<W::Args>()).as_bytes(),
                );
                continue;
            }
        };
        match catch_unwind(AssertUnwindSafe(|| W::call(args))) {
            Ok(value) if dense_so_far => {
                let width = dense.unwrap_or(0);
                out.extend_from_slice(&dense_bytes(&value)[..width]);
            }
            Ok(value) => put_call_result::<W>(out, value),
            Err(payload) => {
                if std::mem::take(&mut dense_so_far) {
                    reframe::<W::Output>(out, start);
                }
                put_panic(out, &*payload);
            }
        }
    }
    Ok((index as u32, dense_so_far))
}

/// [`invoke_batch`] of a dense batch (see [`dense_width`]).
fn invoke_dense<W: Worker>(input: &[u8], out: &mut Vec<u8>) -> Result<(u32, bool), String> {
    let Some(width) = dense_width::<W::Args>().filter(|&w| w > 0 && input.len() % w == 0) else {
        return Err(format!(
            "a dense batch of {} bytes for arguments of type `{}`",
            input.len(),
            type_name::<W::Args>()
        ));
    };
    run_dense::<W, _>(input.len() / width, width, input.chunks_exact(width), out)
}

/// [`invoke_batch`] of a range: `count` integers of `width` bytes from
/// `first` ([`take_range`]), made here one at a time.
fn invoke_range<W: Worker>(
    first: u64,
    count: u32,
    width: usize,
    out: &mut Vec<u8>,
) -> Result<(u32, bool), String> {
    if dense_width::<W::Args>() != Some(width) {
        return Err(format!(
            "a range of {width}-byte integers for arguments of type `{}`",
            type_name::<W::Args>()
        ));
    }
    let args = (0..u64::from(count)).map(|k| range_item(first, k));
    run_dense::<W, _>(count as usize, width, args, out)
}

/// The loop of [`invoke_dense`] and [`invoke_range`]: `count` arguments,
/// each the first `width` bytes of what `args` yields.
#[inline(always)]
fn run_dense<W: Worker, B: AsRef<[u8]>>(
    count: usize,
    width: usize,
    args: impl Iterator<Item = B>,
    out: &mut Vec<u8>,
) -> Result<(u32, bool), String> {
    let results = dense_width::<W::Output>();
    let start = out.len();
    crate::mem::huge::reserve(out, count * results.map_or(width + 1, |w| w));
    let mut args = args;
    let mut index = 0u64;
    let items = Items::current();
    let not_dense = |index: u64| {
        format!(
            "argument {index} of a dense batch is not a `{}`",
            type_name::<W::Args>()
        )
    };
    let mut panicked = None;
    if let Some(rw) = results {
        // Dense results go straight into the room reserved for them (in
        // the reply arena if the child offered it, else in `out`), and are
        // counted here: appended one by one, `out`'s length was stored and
        // loaded again for every item, most of what the loop cost (`perf
        // annotate` of a child: 2–3 ns per `x + 1`).
        let direct = match DIRECT.replace(Direct::None) {
            Direct::Offered { room, len } if len >= count * rw => Some(room),
            _ => None,
        };
        let room = match direct {
            // SAFETY: the child offered these bytes for this batch's
            // results alone (`offer_direct`), and nothing else refers to
            // them until it sends the reply.
            Some(room) => unsafe { std::slice::from_raw_parts_mut(room, count * rw) },
            None => &mut out.spare_capacity_mut()[..count * rw],
        };
        let mut bad = false;
        for (slot, bytes) in room.chunks_exact_mut(rw).zip(args.by_ref()) {
            if !items.started(index) {
                break; // the parent took the rest of the batch for another worker
            }
            let Some(args) = get_dense::<W::Args>(&bytes.as_ref()[..width]) else {
                bad = true;
                break;
            };
            match catch_unwind(AssertUnwindSafe(|| W::call(args))) {
                Ok(value) => {
                    for (dst, &src) in slot.iter_mut().zip(&dense_bytes(&value)[..rw]) {
                        dst.write(src);
                    }
                    index += 1;
                }
                Err(payload) => {
                    panicked = Some(payload);
                    break;
                }
            }
        }
        let written = index as usize * rw;
        match direct {
            Some(_) if bad => return Err(not_dense(index)),
            Some(_) if panicked.is_none() => {
                DIRECT.set(Direct::Used(written));
                return Ok((index as u32, true));
            }
            Some(_) => {
                // The results so far go on framed in `out`, after a copy.
                // SAFETY: the loop initialised the first `written` bytes.
                let done =
                    unsafe { std::slice::from_raw_parts(room.as_ptr().cast::<u8>(), written) };
                out.extend_from_slice(done);
            }
            // SAFETY: the loop initialised one slot of `rw` bytes per item
            // counted in `index`, from the start of the spare capacity.
            None => unsafe { out.set_len(start + written) },
        }
        if bad {
            return Err(not_dense(index));
        }
        let Some(payload) = panicked.take() else {
            return Ok((index as u32, true));
        };
        // From the first panic on, every result is framed.
        reframe::<W::Output>(out, start);
        put_panic(out, &*payload);
        index += 1;
    }
    for bytes in args {
        if !items.started(index) {
            break;
        }
        let Some(args) = get_dense::<W::Args>(&bytes.as_ref()[..width]) else {
            return Err(not_dense(index));
        };
        index += 1;
        match catch_unwind(AssertUnwindSafe(|| W::call(args))) {
            Ok(value) => put_result::<W>(out, &value),
            Err(payload) => put_panic(out, &*payload),
        }
    }
    Ok((index as u32, false))
}

/// Room outside `out` for a batch's dense results ([`offer_direct`]).
#[derive(Clone, Copy)]
enum Direct {
    None,
    /// Offered for the batch about to run: `len` bytes at `room`.
    Offered {
        room: *mut std::mem::MaybeUninit<u8>,
        len: usize,
    },
    /// The batch just run wrote this many bytes of results there.
    Used(usize),
}

thread_local! {
    /// The room of this thread's batch: the free reply arena its reply
    /// will go through.
    static DIRECT: std::cell::Cell<Direct> = const { std::cell::Cell::new(Direct::None) };
}

/// Offers the `len` bytes at `room` to the next [`invoke_batch`] on this
/// thread for its results, if they are dense and fit: they are written
/// there instead of after the head in `out`, which saves the child a copy
/// of them into the reply arena. [`take_direct`] says whether they were.
///
/// # Safety
///
/// The bytes must stay writable, and be touched by nothing else (no other
/// process, no reference in this one), until [`take_direct`] is called and
/// then until the reply is sent.
pub(crate) unsafe fn offer_direct(room: *mut std::mem::MaybeUninit<u8>, len: usize) {
    DIRECT.set(Direct::Offered { room, len });
}

/// How many bytes of results the batch just run wrote to the room offered
/// with [`offer_direct`] (`None`: none, they are in `out`); withdraws the
/// offer.
pub(crate) fn take_direct() -> Option<usize> {
    match DIRECT.replace(Direct::None) {
        Direct::Used(n) => Some(n),
        Direct::None | Direct::Offered { .. } => None,
    }
}

thread_local! {
    /// The bytes of a large `Vec<u8>` result that belong at the end of the
    /// reply being built, not copied there: the child writes them after it,
    /// into the reply buffer or the socket ([`take_deferred`]), which saves
    /// one copy of them (about 4 ms at 64 MiB).
    static DEFERRED: std::cell::RefCell<Option<OwnedBlock>> = const { std::cell::RefCell::new(None) };
}

/// Copies a deferred result into `out`: something follows it.
fn flush_deferred(out: &mut Vec<u8>) {
    if let Some(bytes) = DEFERRED.take() {
        out.extend_from_slice(&bytes);
        bytes.recycle();
    }
}

/// The deferred end of the reply just built by [`invoke_batch`], if any:
/// its sender writes these bytes right after it (and counts them in the
/// frame's length).
pub(crate) fn take_deferred() -> Option<OwnedBlock> {
    DEFERRED.take()
}

/// Appends the framed result of a task (or why it could not be encoded),
/// deferring the bytes of a large `Vec<u8>` ([`take_deferred`]).
fn put_call_result<W: Worker>(out: &mut Vec<u8>, value: W::Output) {
    match take_block_call(value) {
        Ok((head, bytes)) => {
            out.extend_from_slice(&head);
            DEFERRED.set(Some(bytes));
        }
        Err(value) => put_result::<W>(out, &value),
    }
}

/// Appends the framed result of a task, or why it could not be encoded.
fn put_result<W: Worker>(out: &mut Vec<u8>, value: &W::Output) {
    if let Err(e) = put_item(out, value) {
        put_raw_item(
            out,
            ITEM_ENCODE_ERROR,
            format!("{e} (type `{}`)", type_name::<W::Output>()).as_bytes(),
        );
    }
}

/// Appends the report of a panic caught in a task.
fn put_panic(out: &mut Vec<u8>, payload: &(dyn Any + Send)) {
    let report = take_panic_report(payload);
    let bytes = crate::codec::encode_vec(&report).unwrap_or_default();
    put_raw_item(out, ITEM_PANIC, &bytes);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::dense::tests::dense_of;
    use crate::proto::PanicReport;

    /// A stand-in for `#[worker]`: panics on 13, doubles the rest.
    #[derive(Clone, Copy)]
    struct Double;

    impl Worker for Double {
        type Args = u32;
        type Output = u64;
        const NAME: &'static str = "double";
        fn call(x: u32) -> u64 {
            assert!(x != 13, "thirteen");
            u64::from(x) * 2
        }
    }

    /// A stand-in for `#[worker]` on `bool`: panics on `false`.
    #[derive(Clone, Copy)]
    struct Not;

    impl Worker for Not {
        type Args = bool;
        type Output = bool;
        const NAME: &'static str = "not";
        fn call(x: bool) -> bool {
            assert!(x, "false");
            !x
        }
    }

    #[test]
    fn a_dense_argument_that_is_not_one_fails_the_batch_and_names_it() {
        // Dense results, and after a panic framed ones: both loops check.
        for input in [[1u8, 1, 2, 1], [1, 0, 2, 1]] {
            let mut out = vec![7];
            let err = invoke_batch::<Not>(BatchArgs::Dense(&input), &mut out).unwrap_err();
            assert!(
                err.contains("argument 2 of a dense batch is not a `bool`"),
                "{err}"
            );
        }
        let mut out = Vec::new();
        assert_eq!(
            invoke_batch::<Not>(BatchArgs::Dense(&[1, 1]), &mut out),
            Ok((2, true))
        );
        assert_eq!(out, [0, 0]);
    }

    #[test]
    fn a_range_batch_runs_as_its_dense_batch_would() {
        let mut dense_out = vec![7];
        let input = dense_of(1u32..13);
        let want = invoke_batch::<Double>(BatchArgs::Dense(&input), &mut dense_out);
        let mut range_out = vec![7];
        let first = u64::from_le_bytes(dense_bytes(&1u32));
        assert_eq!(
            invoke_batch::<Double>(
                BatchArgs::Range {
                    first,
                    count: 12,
                    width: 4
                },
                &mut range_out
            ),
            want
        );
        assert_eq!(range_out, dense_out);
        // Through the panicking item, too: framed from there on, the same.
        let mut dense_out = Vec::new();
        let want = invoke_batch::<Double>(BatchArgs::Dense(&dense_of(10u32..20)), &mut dense_out);
        let mut range_out = Vec::new();
        assert_eq!(
            invoke_batch::<Double>(
                BatchArgs::Range {
                    first: 10,
                    count: 10,
                    width: 4
                },
                &mut range_out
            ),
            want
        );
        assert_eq!(want, Ok((10, false)));
        assert_eq!(range_out, dense_out);
        // A width that is not the arguments' is refused.
        let err = invoke_batch::<Double>(
            BatchArgs::Range {
                first: 0,
                count: 3,
                width: 8,
            },
            &mut Vec::new(),
        )
        .unwrap_err();
        assert!(err.contains("range of 8-byte integers"), "{err}");
    }

    #[test]
    fn dense_results_go_to_the_room_offered_if_they_fit() {
        let input = dense_of([1u32, 2, 3]);
        let mut room = [std::mem::MaybeUninit::new(0xEEu8); 32];
        // Written there, not in `out`, and counted.
        let mut out = vec![7];
        // SAFETY: `room` outlives the batch, and is not touched meanwhile.
        unsafe { offer_direct(room.as_mut_ptr(), 24) };
        let ran = invoke_batch::<Double>(BatchArgs::Dense(&input), &mut out);
        assert_eq!((ran, take_direct()), (Ok((3, true)), Some(24)));
        assert_eq!(out, [7]);
        // SAFETY: initialised above (every byte of `room` was).
        let room_bytes: Vec<u8> = room.iter().map(|b| unsafe { b.assume_init() }).collect();
        assert_eq!(room_bytes[..24], dense_of([2u64, 4, 6])[..]);
        assert_eq!(room_bytes[24..], [0xEE; 8], "nothing past the results");
        // The offer is withdrawn: the next batch writes to `out`.
        assert_eq!(
            invoke_batch::<Double>(BatchArgs::Dense(&input), &mut out),
            Ok((3, true))
        );
        assert_eq!(out[1..], dense_of([2u64, 4, 6])[..]);
        // Too small a room: `out`, as without one.
        let mut out = vec![7];
        // SAFETY: as above.
        unsafe { offer_direct(room.as_mut_ptr(), 23) };
        let ran = invoke_batch::<Double>(BatchArgs::Dense(&input), &mut out);
        assert_eq!((ran, take_direct()), (Ok((3, true)), None));
        assert_eq!(out[1..], dense_of([2u64, 4, 6])[..]);
        // A panic: the results so far are copied to `out` and the batch
        // goes on framed there, as without a room.
        let input = dense_of([1u32, 2, 13, 20]);
        let mut without = vec![7];
        let want = invoke_batch::<Double>(BatchArgs::Dense(&input), &mut without);
        let mut out = vec![7];
        // SAFETY: as above.
        unsafe { offer_direct(room.as_mut_ptr(), 32) };
        let ran = invoke_batch::<Double>(BatchArgs::Dense(&input), &mut out);
        assert_eq!((ran, take_direct()), (want.clone(), None));
        assert_eq!(want, Ok((4, false)));
        assert_eq!(out, without);
        // A range batch uses it too.
        let mut out = vec![7];
        // SAFETY: as above.
        unsafe { offer_direct(room.as_mut_ptr(), 32) };
        let range = BatchArgs::Range {
            first: 5,
            count: 2,
            width: 4,
        };
        let ran = invoke_batch::<Double>(range, &mut out);
        assert_eq!((ran, take_direct()), (Ok((2, true)), Some(16)));
        assert_eq!(out, [7]);
    }

    #[test]
    fn dense_batches_run_dense_until_an_item_fails() {
        let mut input = Vec::new();
        for x in [1u32, 2, 3] {
            put_dense(&mut input, &x);
        }
        let mut out = vec![7];
        assert_eq!(
            invoke_batch::<Double>(BatchArgs::Dense(&input), &mut out),
            Ok((3, true))
        );
        assert_eq!(
            out[1..],
            [2u64, 4, 6]
                .iter()
                .flat_map(|v| v.to_le_bytes())
                .collect::<Vec<_>>()
        );

        // A panic turns the results so far, and those after, into items.
        put_dense(&mut input, &13u32);
        put_dense(&mut input, &20u32);
        let mut out = vec![7];
        assert_eq!(
            invoke_batch::<Double>(BatchArgs::Dense(&input), &mut out),
            Ok((5, false))
        );
        let mut rest = &out[1..];
        for want in [2u64, 4, 6] {
            let (status, body, _) = next_item(&mut rest).unwrap();
            assert_eq!(
                (status, decode_exact::<u64>(body).unwrap()),
                (ITEM_OK, want)
            );
        }
        let (status, body, _) = next_item(&mut rest).unwrap();
        assert_eq!(status, ITEM_PANIC);
        let report: PanicReport = decode_exact(body).unwrap();
        assert!(report.message.contains("thirteen"), "{report:?}");
        let (status, body, _) = next_item(&mut rest).unwrap();
        assert_eq!((status, decode_exact::<u64>(body).unwrap()), (ITEM_OK, 40));
        assert!(rest.is_empty());

        // A dense batch whose length is not a whole number of arguments.
        let err = invoke_batch::<Double>(BatchArgs::Dense(&input[..7]), &mut out).unwrap_err();
        assert!(err.contains("dense batch of 7 bytes"), "{err}");
        // The same items framed: dense results all the same (the output is
        // a primitive) ...
        let mut framed = Vec::new();
        for x in [1u32, 2] {
            put_item(&mut framed, &x).unwrap();
        }
        let mut out = vec![7];
        assert_eq!(
            invoke_batch::<Double>(BatchArgs::Framed(&framed), &mut out),
            Ok((2, true))
        );
        assert_eq!(out[1..], [2u64.to_le_bytes(), 4u64.to_le_bytes()].concat());
        // ... until an item fails: then every result is an item, those
        // before it too.
        for x in [13u32, 5] {
            put_item(&mut framed, &x).unwrap();
        }
        put_raw_item(&mut framed, ITEM_OK, &[0xFF]); // not a u32
        let mut out = vec![7];
        assert_eq!(
            invoke_batch::<Double>(BatchArgs::Framed(&framed), &mut out),
            Ok((5, false))
        );
        let statuses: Vec<u8> = std::iter::from_fn({
            let mut rest = &out[1..];
            move || next_item(&mut rest).map(|i| i.0)
        })
        .collect();
        assert_eq!(
            statuses,
            [ITEM_OK, ITEM_OK, ITEM_PANIC, ITEM_OK, ITEM_DECODE_ERROR]
        );
    }
}
