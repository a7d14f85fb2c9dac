//! Blocks: contiguous sequences of plain numbers, copied in one go.
//!
//! The format's rule (see [`super`]): inside a sequence, every number is
//! written fixed-width little-endian. So a sequence of plain numbers (or of
//! arrays of them) on the wire is its length and then exactly the bytes of
//! its elements in memory, on a little-endian machine. This module
//! recognises, by type, the sequences that serde hands the encoder as a
//! slice (`Vec<T>`, `[T]`, and through them `Box<[T]>`, `Arc<[T]>`,
//! `Cow<[T]>`) and the `Vec<T>` a decoder is asked for (and through it
//! `Box<[T]>`), and copies their bytes instead of visiting the elements.
//! The element by element path writes and reads the very same bytes, so
//! either side may take either path, and a big-endian machine (where this
//! table is empty) takes the slow path with the same bytes.
//!
//! Plain numbers: `u8`…`u128`, `i8`…`i128`, `f32`, `f64`, and `usize` and
//! `isize` where they are 64 bits (serde writes them as 64-bit integers);
//! and arrays `[T; N]` of those for `N` up to 32 (serde's own limit).
//! `bool` and `char` are not: not every bit pattern is one.

use std::any::TypeId;
use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::OnceLock;

/// What the encoder copies for a recognised sequence: the address of the
/// sequence value (`&Vec<T>` or `&[T]`) gives `(first byte, byte length,
/// element count)`.
type View = unsafe fn(*const ()) -> (*const u8, usize, usize);

/// What the decoder does for a recognised `Vec<T>`: given exactly the
/// bytes of `count` elements, writes a `Vec<T>` holding them at `out`.
type Read = unsafe fn(bytes: &[u8], count: usize, out: *mut ());

/// A type whose values are its little-endian bytes on the wire inside a
/// sequence, and every bit pattern of which is a value.
///
/// # Safety
///
/// No padding, no invalid bit patterns, and the bytes of a value in memory
/// are what the encoder writes for it inside a sequence on a little-endian
/// machine.
unsafe trait Plain: Copy + Send + Sync + 'static {}

macro_rules! plain {
    ($($t:ty),*) => {$(
        // SAFETY: a primitive number: no padding, any bits, its memory is
        // its little-endian bytes on a little-endian machine.
        unsafe impl Plain for $t {}
    )*};
}
// SAFETY: an array of a `Plain` type has no padding between elements, and
// its bytes are the elements' in order.
unsafe impl<T: Plain, const N: usize> Plain for [T; N] {}
plain!(u8, u16, u32, u64, u128, i8, i16, i32, i64, i128, f32, f64);
#[cfg(target_pointer_width = "64")]
plain!(usize, isize);

/// `(first byte, byte length, count)` of the `Vec<T>` at `p`.
///
/// # Safety
///
/// `p` points to a live `&Vec<T>`.
unsafe fn view_vec<T: Plain>(p: *const ()) -> (*const u8, usize, usize) {
    // SAFETY: the caller's contract.
    let v: &Vec<T> = unsafe { *p.cast::<&Vec<T>>() };
    (v.as_ptr().cast(), size_of_val(v.as_slice()), v.len())
}

/// As [`view_vec`], for the `&[T]` at `p`.
///
/// # Safety
///
/// `p` points to a live `&[T]`.
unsafe fn view_slice<T: Plain>(p: *const ()) -> (*const u8, usize, usize) {
    // SAFETY: the caller's contract.
    let v: &[T] = unsafe { *p.cast::<&[T]>() };
    (v.as_ptr().cast(), size_of_val(v), v.len())
}

/// Writes at `out` a `Vec<T>` of the `count` elements in `bytes`.
///
/// # Safety
///
/// `bytes.len() == count * size_of::<T>()`, and `out` is valid for a write
/// of a `Vec<T>`.
unsafe fn read_vec<T: Plain>(bytes: &[u8], count: usize, out: *mut ()) {
    debug_assert_eq!(bytes.len(), count * size_of::<T>());
    let mut v = Vec::<T>::new();
    // A spare buffer of the same alignment if one fits (memory already
    // faulted in: a vector sent earlier), else huge pages for a large one
    // (a fresh 64 MiB vector faulted in 4 KiB pages cost as much as its
    // copy).
    crate::mem::huge::reserve_bytes(&mut v, count);
    // SAFETY: `v` has room for `count` elements, which are `bytes.len()`
    // bytes (the caller's contract), all written here; every bit pattern
    // is a `T` (`Plain`), so all `count` are initialised values. `out` is
    // valid for the write (the caller's contract).
    unsafe {
        crate::mem::copy::copy_bytes(bytes.as_ptr(), v.as_mut_ptr().cast(), bytes.len());
        v.set_len(count);
        out.cast::<Vec<T>>().write(v);
    }
}

/// Moves the `Vec<T>` at `src` into an [`OwnedBlock`].
///
/// # Safety
///
/// `src` points to a `Vec<T>` that the caller gives up (it must not be
/// used or dropped again).
unsafe fn take_vec<T: Plain>(src: *mut ()) -> OwnedBlock {
    // SAFETY: the caller's contract.
    OwnedBlock(Box::new(unsafe { src.cast::<Vec<T>>().read() }))
}

/// A vector of plain numbers, owned, seen as its bytes: a large argument
/// or result sent as it is, without being copied into its frame.
pub(crate) struct OwnedBlock(Box<dyn BlockOwner>);

trait BlockOwner: Send + Sync {
    fn bytes(&self) -> &[u8];
    fn into_byte_vec(self: Box<Self>) -> Option<Vec<u8>>;
    fn recycle(self: Box<Self>);
}

impl<T: Plain> BlockOwner for Vec<T> {
    fn bytes(&self) -> &[u8] {
        // SAFETY: `T` is `Plain`: no padding, every byte initialised.
        unsafe { std::slice::from_raw_parts(self.as_ptr().cast(), size_of_val(self.as_slice())) }
    }
    fn into_byte_vec(self: Box<Self>) -> Option<Vec<u8>> {
        let any: Box<dyn std::any::Any> = self;
        any.downcast::<Vec<u8>>().ok().map(|v| *v)
    }
    fn recycle(self: Box<Self>) {
        crate::mem::huge::recycle(*self);
    }
}

impl OwnedBlock {
    /// The vector back if it is a `Vec<u8>` (to keep as a spare buffer).
    pub(crate) fn into_byte_vec(self) -> Option<Vec<u8>> {
        self.0.into_byte_vec()
    }

    /// Keeps the vector's memory as a spare buffer (see
    /// [`crate::mem::huge::recycle`]) if it is large.
    pub(crate) fn recycle(self) {
        self.0.recycle();
    }
}

impl From<Vec<u8>> for OwnedBlock {
    fn from(bytes: Vec<u8>) -> OwnedBlock {
        OwnedBlock(Box::new(bytes))
    }
}

impl std::ops::Deref for OwnedBlock {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        self.0.bytes()
    }
}

impl std::fmt::Debug for OwnedBlock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "OwnedBlock({} bytes)", self.len())
    }
}

/// `value` as an [`OwnedBlock`] and its element count, if it is a
/// `Vec<T>` of a plain `T` of at least `from` bytes; else `value` back.
pub(crate) fn take_block<T: 'static>(value: T, from: usize) -> Result<(OwnedBlock, usize), T> {
    if !maybe_vec::<T>() {
        return Err(value);
    }
    let Some(entry) = decode_entry::<T>() else {
        return Err(value);
    };
    let count = {
        let r = &value;
        match encode_view(&r) {
            Some((bytes, count)) if bytes.len() >= from => count,
            _ => return Err(value),
        }
    };
    let mut value = std::mem::ManuallyDrop::new(value);
    // SAFETY: the entry was found under `T`'s type id, so `T` is the
    // `Vec<E>` its `take` moves; `value` is given up (never dropped here).
    let block = unsafe { (entry.take)((&raw mut *value).cast()) };
    Ok((block, count))
}

/// A recognised element type.
#[derive(Clone, Copy)]
pub(crate) struct Decode {
    /// Bytes per element.
    pub(crate) size: usize,
    read: Read,
    take: unsafe fn(*mut ()) -> OwnedBlock,
}

impl Decode {
    /// A `V` holding the `count` elements in `bytes`.
    ///
    /// # Safety
    ///
    /// `self` is the entry [`decode_entry`] gave for `TypeId` of `V`, and
    /// `bytes.len() == count * self.size`.
    pub(crate) unsafe fn read<V>(self, bytes: &[u8], count: usize) -> V {
        let mut out = std::mem::MaybeUninit::<V>::uninit();
        // SAFETY: the entry was found under `V`'s type id, so `V` is the
        // `Vec<T>` its `read` writes; the length is the caller's contract.
        unsafe {
            (self.read)(bytes, count, out.as_mut_ptr().cast());
            out.assume_init()
        }
    }
}

/// Hashes a `TypeId` as the word it writes: it is a hash already.
#[derive(Default)]
struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
    }
    fn write_u64(&mut self, v: u64) {
        self.0 ^= v;
    }
    fn write_u128(&mut self, v: u128) {
        self.0 ^= (v as u64) ^ ((v >> 64) as u64);
    }
}

type Table<E> = HashMap<TypeId, E, BuildHasherDefault<IdHasher>>;

struct Tables {
    /// Keyed by the type id of `&Vec<T>` and of `&[T]`.
    encode: Table<View>,
    /// Keyed by the type id of `Vec<T>`.
    decode: Table<Decode>,
}

fn add<T: Plain>(t: &mut Tables) {
    t.encode.insert(typeid::of::<&Vec<T>>(), view_vec::<T>);
    t.encode.insert(typeid::of::<&[T]>(), view_slice::<T>);
    t.decode.insert(
        TypeId::of::<Vec<T>>(),
        Decode {
            size: size_of::<T>(),
            read: read_vec::<T>,
            take: take_vec::<T>,
        },
    );
}

/// `T` and the arrays `[T; 1..=32]`.
fn add_with_arrays<T: Plain>(t: &mut Tables) {
    macro_rules! arrays {
        ($($n:literal)*) => {$( add::<[T; $n]>(t); )*};
    }
    add::<T>(t);
    arrays!(1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20 21 22 23 24 25 26 27 28 29 30 31 32);
}

fn tables() -> &'static Tables {
    static TABLES: OnceLock<Tables> = OnceLock::new();
    TABLES.get_or_init(|| {
        let mut t = Tables {
            encode: Table::default(),
            decode: Table::default(),
        };
        if cfg!(target_endian = "little") {
            macro_rules! all {
                ($($t:ty),*) => {$( add_with_arrays::<$t>(&mut t); )*};
            }
            all!(u8, u16, u32, u64, u128, i8, i16, i32, i64, i128, f32, f64);
            #[cfg(target_pointer_width = "64")]
            all!(usize, isize);
        }
        t
    })
}

/// Whether `T` may be a `Vec` of plain numbers: its size and alignment
/// are a `Vec`'s, and it is not a `String`. Constants, folded away: a
/// value of any other type (a number, a record) takes no table lookup.
#[inline(always)]
pub(crate) fn maybe_vec<T: 'static>() -> bool {
    size_of::<T>() == size_of::<Vec<u8>>()
        && align_of::<T>() == align_of::<Vec<u8>>()
        && TypeId::of::<T>() != TypeId::of::<String>()
}

/// The bytes of `seq` if it is a recognised sequence (`&Vec<T>` or `&[T]`
/// of a plain `T`): `(bytes, element count)`.
#[inline]
pub(crate) fn encode_view<I: ?Sized>(seq: &I) -> Option<(&[u8], usize)> {
    let view = tables().encode.get(&typeid::of::<I>())?;
    // SAFETY: the entry was found under `I`'s type id (lifetimes aside,
    // which type ids do not see), so `seq` is the `&Vec<T>` or `&[T]` it
    // reads; the bytes it gives are that sequence's elements, borrowed
    // from it for as long as `seq` is.
    unsafe {
        let (ptr, len, count) = view((seq as *const I).cast());
        Some((std::slice::from_raw_parts(ptr, len), count))
    }
}

/// The entry for decoding a `V` as a block, if `V` is a `Vec<T>` of a
/// plain `T`.
#[inline]
pub(crate) fn decode_entry<V: ?Sized>() -> Option<Decode> {
    tables().decode.get(&typeid::of::<V>()).copied()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recognises_plain_sequences_and_nothing_else() {
        let v = vec![1.5f64, -0.0];
        let r = &v;
        let (bytes, n) = encode_view(&r).unwrap();
        assert_eq!((bytes.len(), n), (16, 2));
        assert_eq!(&bytes[8..], &(-0.0f64).to_le_bytes());
        let points = [[1u16, 2, 3]; 5];
        let r = &points[..];
        assert_eq!(encode_view(&r).unwrap().1, 5);
        assert!(encode_view(&&vec![true]).is_none());
        assert!(encode_view(&&vec!['a']).is_none());
        assert!(encode_view(&&vec![String::new()]).is_none());
        assert!(encode_view(&&vec![[1u8; 33]]).is_none());
        assert!(
            encode_view(&v).is_none(),
            "a Vec by value is not what serde hands over"
        );

        let d = decode_entry::<Vec<[f32; 3]>>().unwrap();
        assert_eq!(d.size, 12);
        // SAFETY: the entry is `Vec<[f32; 3]>`'s; 24 bytes are 2 elements.
        let back: Vec<[f32; 3]> = unsafe { d.read(&[0u8; 24], 2) };
        assert_eq!(back, vec![[0.0; 3]; 2]);
        assert!(decode_entry::<Vec<bool>>().is_none());
        assert!(decode_entry::<std::collections::VecDeque<u8>>().is_none());
        assert!(decode_entry::<[u8; 4]>().is_none());
    }
}
