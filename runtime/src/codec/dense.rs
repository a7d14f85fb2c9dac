//! Dense batches and ranges: arguments and results of one primitive type
//! as their little-endian bytes, one after the other.

use std::any::{Any, TypeId};

use serde::Serialize;

use super::item::put_item;

// ---- dense batches --------------------------------------------------------
//
// `map(is_prime, 0..n)` moves one integer each way per item; framed, each
// took a header and a varint to write and to read, in the caller, the
// child and the driver: at millions of items that was most of what the
// pool cost on top of the work (see BENCHMARKS.md). A batch whose
// arguments are all of one primitive type (integers, floats, `bool`) is
// sent dense instead: the values little-endian, one after the other, with
// no headers, so that item `k` is at `k * width`. Its results come back
// dense too when they are primitive and every item ran fine; one that
// panicked turns the rest of the reply back into framed items (which say
// what went wrong). `submit` and `apply` send framed items as before.

/// The width of a `T` in a dense batch, if it goes in one: the primitive
/// numbers and `bool`. A comparison of constants, folded away in every
/// instance.
#[inline(always)]
pub(crate) fn dense_width<T: 'static>() -> Option<usize> {
    let t = TypeId::of::<T>();
    macro_rules! widths {
        ($($ty:ty),*) => {$(
            if t == TypeId::of::<$ty>() {
                return Some(std::mem::size_of::<$ty>());
            }
        )*};
    }
    widths!(u64, u32, u16, u8, i64, i32, i16, i8, f64, f32, bool);
    if t == TypeId::of::<usize>() || t == TypeId::of::<isize>() {
        return Some(8); // as 64-bit, whatever this machine's width
    }
    None
}

/// `value` little-endian in the first [`dense_width`] bytes (all zero for a
/// `T` without one).
#[inline(always)]
pub(crate) fn dense_bytes<T: 'static>(value: &T) -> [u8; 8] {
    let any = value as &dyn Any;
    let t = TypeId::of::<T>();
    let mut out = [0u8; 8];
    macro_rules! le {
        ($($ty:ty),*) => {$(
            if t == TypeId::of::<$ty>() {
                if let Some(v) = any.downcast_ref::<$ty>() {
                    let bytes = v.to_le_bytes();
                    out[..bytes.len()].copy_from_slice(&bytes);
                }
                return out;
            }
        )*};
    }
    le!(u64, u32, u16, u8, i64, i32, i16, i8, f64, f32);
    if let Some(&v) = any.downcast_ref::<usize>() {
        out = (v as u64).to_le_bytes();
    } else if let Some(&v) = any.downcast_ref::<isize>() {
        out = (v as i64).to_le_bytes();
    } else if let Some(&v) = any.downcast_ref::<bool>() {
        out[0] = u8::from(v);
    }
    out
}

/// Appends `value` to a dense batch; does nothing for a `T` without a
/// [`dense_width`]. (The hot paths write dense items in place instead:
/// [`fill_dense`], `run_dense`.)
#[cfg(test)]
pub(crate) fn put_dense<T: 'static>(out: &mut Vec<u8>, value: &T) {
    if let Some(width) = dense_width::<T>() {
        out.extend_from_slice(&dense_bytes(value)[..width]);
    }
}

/// Appends up to `limit` items of `input` to a dense batch in `out`, in one
/// tight loop over space reserved beforehand (no capacity check per item:
/// `map` over millions of integers spent most of its caller's time
/// appending them one at a time). Returns how many it appended, and
/// whether `input` ran out first. Appends nothing for a `T` without a
/// [`dense_width`].
pub(crate) fn fill_dense<T: 'static>(
    out: &mut Vec<u8>,
    input: &mut impl Iterator<Item = T>,
    limit: usize,
) -> (usize, bool) {
    let Some(width) = dense_width::<T>() else {
        return (0, false);
    };
    out.reserve(limit.saturating_mul(width));
    let room = &mut out.spare_capacity_mut()[..limit * width];
    let mut count = 0;
    for (slot, value) in room.chunks_exact_mut(width).zip(input.by_ref()) {
        // `zip` asks `room` first: no item is taken that has no slot.
        let bytes = dense_bytes(&value);
        for (dst, &src) in slot.iter_mut().zip(&bytes[..width]) {
            dst.write(src);
        }
        count += 1;
    }
    // SAFETY: the loop initialised the first `count * width` bytes of the
    // spare capacity (`room` is within it).
    unsafe { out.set_len(out.len() + count * width) };
    (count, count < limit)
}

// ---- ranges ---------------------------------------------------------------
//
// `pool.map(f, 0..n)` is the commonest call there is, and its arguments
// need not travel: a batch of a range is its first integer and a count, and
// the child counts on from there. Written out dense, a `map` over 10 M
// `u64` had the caller write 80 MB, the drivers copy them into the request
// buffers and the workers read them back from another core (the caller's
// and the drivers' own CPU time was about a third of the map's).

/// Whether `I` is a range (`a..b` or `a..=b`) of integers with a
/// [`dense_width`]: its items are consecutive, each the one before plus 1.
fn is_integer_range<I: Iterator>() -> bool
where
    I::Item: 'static,
{
    if dense_width::<I::Item>().is_none() {
        return false;
    }
    // `typeid::of` also takes types that are not `'static` (it sees them
    // with their lifetimes made `'static`; a range has none).
    let t = typeid::of::<I>();
    t == typeid::of::<std::ops::Range<I::Item>>()
        || t == typeid::of::<std::ops::RangeInclusive<I::Item>>()
}

/// Takes up to `limit` items of `input` (`limit >= 1`) if it is a range of
/// integers ([`is_integer_range`]), without writing them out: the first
/// one's dense bytes as a `u64` (zero-extended: the child adds to it and
/// keeps the low bytes, which is right for signed types too), how many, and
/// whether `input` ran out. `None` if `input` is not such a range.
pub(crate) fn take_range<I: Iterator>(input: &mut I, limit: usize) -> Option<(u64, usize, bool)>
where
    I::Item: 'static,
{
    if !is_integer_range::<I>() {
        return None;
    }
    let Some(first) = input.next() else {
        return Some((0, 0, true));
    };
    // A range knows its length exactly (or that it is at least
    // `usize::MAX`), and `nth` steps over items without making each.
    let more = input.size_hint().0.min(limit.saturating_sub(1));
    if more > 0 {
        input.nth(more - 1);
    }
    let exhausted = input.size_hint().1 == Some(0);
    Some((u64::from_le_bytes(dense_bytes(&first)), more + 1, exhausted))
}

/// The `k`-th integer of a range batch that starts at `first`, as the
/// dense bytes of its type (the first `width` of the eight).
#[inline(always)]
pub(crate) fn range_item(first: u64, k: u64) -> [u8; 8] {
    first.wrapping_add(k).to_le_bytes()
}

/// The dense batch of `count` integers of `width` bytes from `first` (see
/// [`take_range`]), written out.
pub(crate) fn range_bytes(first: u64, count: u32, width: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(count as usize * width);
    for k in 0..u64::from(count) {
        out.extend_from_slice(&range_item(first, k)[..width]);
    }
    out
}

/// The `T` in `bytes` (exactly its [`dense_width`]); `None` if they are
/// not one (a `bool` other than 0 or 1, a `usize` too large for this
/// machine) or `T` has no dense form.
#[inline(always)]
pub(crate) fn get_dense<T: 'static>(bytes: &[u8]) -> Option<T> {
    #[inline(always)]
    fn cast<T: 'static, U: 'static>(value: U) -> Option<T> {
        (&mut Some(value) as &mut dyn Any)
            .downcast_mut::<Option<T>>()?
            .take()
    }
    let t = TypeId::of::<T>();
    macro_rules! le {
        ($($ty:ty),*) => {$(
            if t == TypeId::of::<$ty>() {
                return cast(<$ty>::from_le_bytes(bytes.try_into().ok()?));
            }
        )*};
    }
    le!(u64, u32, u16, u8, i64, i32, i16, i8, f64, f32);
    if t == TypeId::of::<usize>() {
        return cast(usize::try_from(u64::from_le_bytes(bytes.try_into().ok()?)).ok()?);
    }
    if t == TypeId::of::<isize>() {
        return cast(isize::try_from(i64::from_le_bytes(bytes.try_into().ok()?)).ok()?);
    }
    if t == TypeId::of::<bool>() {
        return match bytes {
            [0] => cast(false),
            [1] => cast(true),
            _ => None,
        };
    }
    None
}

/// Whether a `T`'s dense form is its bytes in memory: every bit pattern of
/// its [`dense_width`] is a `T`, and this machine is little-endian (the
/// integers and floats; `usize` and `isize` where they are 64 bits wide;
/// not `bool`, whose bytes must be 0 or 1). Such results are copied out
/// of a reply in one go instead of one at a time ([`copy_plain`]).
#[inline(always)]
pub(crate) fn dense_is_plain<T: 'static>() -> bool {
    // The dense types are all numbers but `bool`; `usize` and `isize` go
    // as 8 bytes, which is their size only on a 64-bit machine.
    cfg!(target_endian = "little")
        && dense_width::<T>() == Some(size_of::<T>())
        && TypeId::of::<T>() != TypeId::of::<bool>()
}

/// Copies the dense `T`s at the start of `bytes`, at most `max` of them,
/// to `dst` in one go, and returns how many; `None` (nothing copied) if
/// `T`'s dense form is not plain ([`dense_is_plain`]).
///
/// # Safety
///
/// `dst` must be valid for writes of `max` `T`s that do not overlap
/// `bytes`; what was there is overwritten, not dropped.
#[inline]
pub(crate) unsafe fn copy_plain<T: 'static>(
    bytes: &[u8],
    max: usize,
    dst: *mut T,
) -> Option<usize> {
    if !dense_is_plain::<T>() {
        return None;
    }
    let n = (bytes.len() / size_of::<T>()).min(max);
    // SAFETY: `n` whole `T`s are in `bytes` and fit at `dst` (the caller's
    // contract: `max` do); every bit pattern of them is a `T` on this
    // machine (`dense_is_plain`), which is what the dense encoding wrote.
    unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), dst.cast::<u8>(), n * size_of::<T>()) };
    Some(n)
}

/// Turns the first `n` dense results at `out[start..]` into framed items,
/// in place: the reply goes on framed once an item has failed.
#[cold]
pub(crate) fn reframe<R: Serialize + 'static>(out: &mut Vec<u8>, start: usize) {
    let Some(width) = dense_width::<R>() else {
        return;
    };
    let dense = out.split_off(start);
    for bytes in dense.chunks_exact(width) {
        let value: R = get_dense(bytes).expect("written as dense just now");
        put_item(out, &value).expect("a primitive always encodes");
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use serde::de::DeserializeOwned;
    use std::any::type_name;

    fn dense_round_trip<T: Serialize + DeserializeOwned + PartialEq + std::fmt::Debug + 'static>(
        values: &[T],
        width: usize,
    ) {
        assert_eq!(dense_width::<T>(), Some(width), "{}", type_name::<T>());
        let mut out = vec![0xAA];
        for v in values {
            put_dense(&mut out, v);
        }
        assert_eq!(out.len(), 1 + width * values.len(), "{}", type_name::<T>());
        for (v, bytes) in values.iter().zip(out[1..].chunks_exact(width)) {
            assert_eq!(get_dense::<T>(bytes).as_ref(), Some(v));
        }
        // The batch encoder writes the same bytes, in one go.
        let mut filled = vec![0xAA];
        let mut input = values
            .iter()
            .map(|v| postcard::from_bytes::<T>(&postcard::to_allocvec(v).unwrap()).unwrap());
        assert_eq!(
            fill_dense(&mut filled, &mut input, values.len() + 1),
            (values.len(), true)
        );
        assert_eq!(filled, out, "{}", type_name::<T>());
        // Copied out in one go where the type allows it: the same values,
        // and no more than asked for or than the bytes hold.
        let mut copied: Vec<T> = Vec::with_capacity(values.len());
        // SAFETY: room for `values.len()` values, not overlapping `out`.
        let n = unsafe { copy_plain(&out[1..], values.len(), copied.as_mut_ptr()) };
        if let Some(n) = n {
            assert_eq!(n, values.len(), "{}", type_name::<T>());
            // SAFETY: `copy_plain` wrote the first `n`.
            unsafe { copied.set_len(n) };
            assert_eq!(copied, values, "{}", type_name::<T>());
            let mut two: Vec<T> = Vec::with_capacity(2);
            // SAFETY: room for 2; the bytes hold fewer when `values` does.
            let n = unsafe { copy_plain(&out[1..], 2, two.as_mut_ptr()) };
            assert_eq!(n, Some(values.len().min(2)));
        }
        assert_eq!(n.is_some(), dense_is_plain::<T>());
    }

    #[test]
    fn plain_dense_types_are_the_numbers_and_not_bool() {
        assert!(dense_is_plain::<u8>() && dense_is_plain::<i64>() && dense_is_plain::<f32>());
        assert_eq!(dense_is_plain::<usize>(), cfg!(target_pointer_width = "64"));
        assert!(!dense_is_plain::<bool>(), "a bool's byte must be checked");
        assert!(!dense_is_plain::<String>() && !dense_is_plain::<(u8, u8)>());
        let mut out: Vec<bool> = Vec::with_capacity(1);
        // SAFETY: room for one; nothing is written for a bool.
        assert_eq!(unsafe { copy_plain(&[2], 1, out.as_mut_ptr()) }, None);
    }

    #[test]
    fn fill_dense_stops_at_its_limit_without_taking_more() {
        let mut out = vec![7];
        let mut input = 10u32..15;
        assert_eq!(fill_dense(&mut out, &mut input, 3), (3, false));
        assert_eq!(input.next(), Some(13), "no item taken beyond the limit");
        assert_eq!(out, [7, 10, 0, 0, 0, 11, 0, 0, 0, 12, 0, 0, 0]);
        // Exactly as many as are left: not known to be exhausted yet.
        assert_eq!(fill_dense(&mut out, &mut input, 1), (1, false));
        assert_eq!(fill_dense(&mut out, &mut input, 4), (0, true));
        assert_eq!(out.len(), 1 + 4 * 4);
        assert_eq!(fill_dense(&mut out, &mut (0u8..0), 0), (0, false));
        // No dense form: nothing taken.
        let mut strings = ["a".to_owned()].into_iter();
        assert_eq!(fill_dense(&mut out, &mut strings, 5), (0, false));
        assert_eq!(strings.len(), 1);
    }

    #[test]
    fn dense_values_round_trip_at_their_extremes() {
        dense_round_trip(&[0u64, 1, u64::MAX], 8);
        dense_round_trip(&[0u32, u32::MAX], 4);
        dense_round_trip(&[0u16, u16::MAX], 2);
        dense_round_trip(&[0u8, 255], 1);
        dense_round_trip(&[i64::MIN, -1, 0, i64::MAX], 8);
        dense_round_trip(&[i32::MIN, i32::MAX], 4);
        dense_round_trip(&[i16::MIN, i16::MAX], 2);
        dense_round_trip(&[i8::MIN, i8::MAX], 1);
        dense_round_trip(&[usize::MAX, 0], 8);
        dense_round_trip(&[isize::MIN, isize::MAX], 8);
        dense_round_trip(&[-0.0f64, f64::MIN_POSITIVE, f64::INFINITY], 8);
        dense_round_trip(&[1.5f32, f32::MAX], 4);
        dense_round_trip(&[false, true], 1);
        let nan = get_dense::<f64>(&f64::NAN.to_le_bytes()).unwrap();
        assert!(nan.is_nan());
        // Not one of them.
        assert_eq!(get_dense::<bool>(&[2]), None);
        assert_eq!(get_dense::<u64>(&[1, 2, 3]), None, "too short");
        assert_eq!(dense_width::<()>(), None);
        assert_eq!(dense_width::<(u64, u64)>(), None);
        assert_eq!(dense_width::<String>(), None);
        assert_eq!(dense_width::<char>(), None);
    }

    /// What `take_range` takes of `input` with `limit`, written out as
    /// the dense bytes the child would make, with the items it left.
    fn taken<I: Iterator + Clone>(mut input: I, limit: usize) -> Option<(Vec<u8>, bool, Vec<u8>)>
    where
        I::Item: Serialize + 'static,
    {
        let width = dense_width::<I::Item>()?;
        let (first, count, exhausted) = take_range(&mut input, limit)?;
        let mut left = Vec::new();
        for x in input {
            put_dense(&mut left, &x);
        }
        Some((range_bytes(first, count as u32, width), exhausted, left))
    }

    pub(crate) fn dense_of<T: Serialize + 'static>(values: impl IntoIterator<Item = T>) -> Vec<u8> {
        let mut out = Vec::new();
        for v in values {
            put_dense(&mut out, &v);
        }
        out
    }

    #[test]
    fn ranges_are_taken_as_their_first_integer_and_a_count() {
        // Signed types across zero and at their ends, unsigned at the top,
        // inclusive ranges up to the last value, limits short of the end.
        assert_eq!(taken(-3i8..3, 100), Some((dense_of(-3i8..3), true, vec![])));
        assert_eq!(
            taken(i8::MIN..=i8::MAX, 1_000),
            Some((dense_of(i8::MIN..=i8::MAX), true, vec![]))
        );
        assert_eq!(
            taken(-70_000i32..70_000, 100_000),
            Some((
                dense_of(-70_000i32..30_000),
                false,
                dense_of(30_000i32..70_000)
            ))
        );
        assert_eq!(
            taken(u64::MAX - 5..=u64::MAX, 4),
            Some((
                dense_of(u64::MAX - 5..u64::MAX - 1),
                false,
                dense_of(u64::MAX - 1..=u64::MAX)
            ))
        );
        assert_eq!(
            taken(u16::MAX - 2..=u16::MAX, 3),
            Some((dense_of(u16::MAX - 2..=u16::MAX), true, vec![]))
        );
        assert_eq!(
            taken(isize::MIN..isize::MIN + 3, 1),
            Some((
                dense_of([isize::MIN]),
                false,
                dense_of(isize::MIN + 1..isize::MIN + 3)
            ))
        );
        assert_eq!(taken(7u32..7, 5), Some((vec![], true, vec![])));
        // Not ranges of integers: nothing is taken.
        assert_eq!(taken((0u64..10).map(|x| x + 1), 5), None);
        assert_eq!(taken((0u64..10).step_by(2), 5), None);
        assert_eq!(taken(vec![1u64, 2].into_iter(), 5), None);
        assert_eq!(taken('a'..='z', 5), None);
        let mut untouched = (0u64..10).rev();
        assert_eq!(take_range(&mut untouched, 5), None);
        assert_eq!(untouched.next(), Some(9));
    }
}
