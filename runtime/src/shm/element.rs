//! [`Element`]: the plain numeric types that may live in shared memory, each
//! with the atomic type of the same size used to access it.

use std::fmt::Debug;
use std::sync::atomic::{
    AtomicI8, AtomicI16, AtomicI32, AtomicI64, AtomicIsize, AtomicU8, AtomicU16, AtomicU32,
    AtomicU64, AtomicUsize, Ordering,
};

pub(crate) mod private {
    use std::sync::atomic::Ordering;

    /// The atomic access behind [`Element`](super::Element); sealed.
    pub trait Sealed: Copy {
        /// The atomic type of the same size and alignment.
        type Atomic: Sync;
        /// Identifies the type in a segment header, so that a handle cannot
        /// be received as an array of another type.
        const TAG: u64;
        fn load(a: &Self::Atomic, order: Ordering) -> Self;
        fn store(a: &Self::Atomic, v: Self, order: Ordering);
    }

    /// Read-modify-write access behind [`IntElement`](super::IntElement).
    pub trait IntSealed: Sealed {
        fn fetch_add(a: &Self::Atomic, v: Self, order: Ordering) -> Self;
        fn fetch_sub(a: &Self::Atomic, v: Self, order: Ordering) -> Self;
        fn compare_exchange(a: &Self::Atomic, current: Self, new: Self) -> Result<Self, Self>;
    }
}

/// A plain numeric type that can live in shared memory: `u8`, `u16`,
/// `u32`, `u64`, `usize`, `i8`, `i16`, `i32`, `i64`, `isize`, `f32`, `f64`.
///
/// Every bit pattern is a valid value and there are no pointers, so the
/// bytes mean the same in every process. Sealed: it cannot be implemented
/// outside this crate.
pub trait Element: private::Sealed + Send + Sync + PartialEq + Debug + Default + 'static {}

/// An integer [`Element`]: supports lock-free `fetch_add`, `fetch_sub` and
/// `compare_exchange` in shared memory (shared counters without locks).
pub trait IntElement: Element + private::IntSealed {}

macro_rules! int_element {
    ($($t:ty => $atomic:ty, $tag:expr;)*) => {$(
        const _: () = assert!(
            std::mem::size_of::<$t>() == std::mem::size_of::<$atomic>()
                && std::mem::align_of::<$atomic>() == std::mem::size_of::<$t>()
        );
        impl private::Sealed for $t {
            type Atomic = $atomic;
            const TAG: u64 = $tag;
            #[inline]
            fn load(a: &$atomic, order: Ordering) -> $t {
                a.load(order)
            }
            #[inline]
            fn store(a: &$atomic, v: $t, order: Ordering) {
                a.store(v, order)
            }
        }
        impl private::IntSealed for $t {
            #[inline]
            fn fetch_add(a: &$atomic, v: $t, order: Ordering) -> $t {
                a.fetch_add(v, order)
            }
            #[inline]
            fn fetch_sub(a: &$atomic, v: $t, order: Ordering) -> $t {
                a.fetch_sub(v, order)
            }
            #[inline]
            fn compare_exchange(a: &$atomic, current: $t, new: $t) -> Result<$t, $t> {
                a.compare_exchange(current, new, Ordering::AcqRel, Ordering::Acquire)
            }
        }
        impl Element for $t {}
        impl IntElement for $t {}
    )*};
}

int_element! {
    u8 => AtomicU8, 1;
    u16 => AtomicU16, 2;
    u32 => AtomicU32, 3;
    u64 => AtomicU64, 4;
    usize => AtomicUsize, 5;
    i8 => AtomicI8, 6;
    i16 => AtomicI16, 7;
    i32 => AtomicI32, 8;
    i64 => AtomicI64, 9;
    isize => AtomicIsize, 10;
}

macro_rules! float_element {
    ($($t:ty => $atomic:ty, $tag:expr;)*) => {$(
        const _: () = assert!(
            std::mem::size_of::<$t>() == std::mem::size_of::<$atomic>()
                && std::mem::align_of::<$atomic>() == std::mem::size_of::<$t>()
        );
        impl private::Sealed for $t {
            type Atomic = $atomic;
            const TAG: u64 = $tag;
            #[inline]
            fn load(a: &$atomic, order: Ordering) -> $t {
                <$t>::from_bits(a.load(order))
            }
            #[inline]
            fn store(a: &$atomic, v: $t, order: Ordering) {
                a.store(v.to_bits(), order)
            }
        }
        impl Element for $t {}
    )*};
}

float_element! {
    f32 => AtomicU32, 11;
    f64 => AtomicU64, 12;
}
