//! [`Encoder`]: a serde serializer that writes the runtime's format
//! (postcard's, with fixed-width numbers inside sequences; see [`super`]).

use serde::Serialize;

/// Why a value could not be encoded: serde's message (kept, unlike
/// postcard's own serializer, which replaces custom messages with a fixed
/// text).
#[derive(Debug)]
pub(crate) struct EncodeError(pub(crate) String);

impl std::fmt::Display for EncodeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for EncodeError {}

impl serde::ser::Error for EncodeError {
    fn custom<T: std::fmt::Display>(msg: T) -> Self {
        EncodeError(msg.to_string())
    }
}

/// A serde serializer that writes the runtime's format straight into a
/// `Vec`, without postcard's flavor layer (one capacity check per varint
/// instead of a call per byte range). Outside sequences it writes byte for
/// byte what `postcard::to_stdvec` writes (see the tests); inside one,
/// numbers are fixed-width little-endian, and a sequence of plain numbers
/// that serde hands over as a slice is copied as one block
/// ([`super::block`]).
pub(crate) struct Encoder<'a> {
    pub(crate) out: &'a mut Vec<u8>,
    /// How many sequences the value being written is inside: numbers are
    /// fixed-width while it is above zero.
    depth: u32,
    /// Where the one byte reserved for the item header of this value is,
    /// if it is an item ([`Encoder::for_item`]).
    header_at: Option<usize>,
    /// Whether the room for the header was widened to [`WIDE_HEADER`]
    /// bytes (before a large block: moving the block up afterwards would
    /// copy it again).
    pub(crate) wide: bool,
}

/// Up to this many bytes written before a large block, the encoder moves
/// them to a spare buffer with room for the block.
const SMALL_PREFIX: usize = 4 << 10;

/// The room a widened item header takes: the longest LEB128 of a `u64`.
pub(crate) const WIDE_HEADER: usize = 10;

impl<'a> Encoder<'a> {
    /// An encoder that appends to `out`.
    pub(crate) fn new(out: &'a mut Vec<u8>) -> Encoder<'a> {
        Encoder {
            out,
            depth: 0,
            header_at: None,
            wide: false,
        }
    }

    /// An encoder for the value of an item whose header has one byte
    /// reserved at `header_at` (the last byte of `out`).
    pub(crate) fn for_item(out: &'a mut Vec<u8>, header_at: usize) -> Encoder<'a> {
        Encoder {
            header_at: Some(header_at),
            ..Encoder::new(out)
        }
    }

    /// Before a block of `len` bytes: widens the item's header room if the
    /// block is large, while what precedes it is still small to move.
    #[inline]
    fn before_block(&mut self, len: usize) {
        if len < BLOCK_RESERVE_FROM {
            return;
        }
        let need = WIDE_HEADER + len;
        if self.out.capacity() - self.out.len() < need && self.out.len() < SMALL_PREFIX {
            // Room from a spare buffer (memory already faulted in) rather
            // than growing this one: what it holds so far is small to move.
            let mut room = Vec::new();
            crate::mem::huge::reserve_bytes(&mut room, self.out.len() + need);
            room.extend_from_slice(self.out);
            *self.out = room;
        }
        crate::mem::huge::reserve(self.out, need);
        if let Some(at) = self.header_at.filter(|_| !self.wide) {
            self.out.splice(at + 1..at + 1, [0; WIDE_HEADER - 1]);
            self.wide = true;
        }
    }

    /// Whether numbers are written fixed-width here (inside a sequence).
    #[inline(always)]
    fn fixed(&self) -> bool {
        self.depth > 0
    }

    #[inline]
    fn le(&mut self, bytes: &[u8]) {
        self.out.extend_from_slice(bytes);
    }

    #[inline]
    fn varint(&mut self, mut v: u64) {
        if v < 0x80 {
            self.out.push(v as u8);
            return;
        }
        self.out.reserve(10);
        let len = self.out.len();
        let spare = self.out.spare_capacity_mut();
        let mut i = 0;
        while v >= 0x80 {
            spare[i].write((v as u8) | 0x80);
            v >>= 7;
            i += 1;
        }
        spare[i].write(v as u8);
        // SAFETY: the `i + 1` bytes after `len` were just written (the
        // writes above are bounds-checked against the spare capacity, which
        // `reserve(10)` made at least 10 bytes, the longest u64 varint).
        unsafe { self.out.set_len(len + i + 1) };
    }

    #[inline]
    fn varint128(&mut self, mut v: u128) {
        while v >= 0x80 {
            self.out.push((v as u8) | 0x80);
            v >>= 7;
        }
        self.out.push(v as u8);
    }

    #[inline]
    fn len(&mut self, len: Option<usize>) -> Result<(), EncodeError> {
        match len {
            Some(n) => {
                self.varint(n as u64);
                Ok(())
            }
            None => Err(EncodeError(
                "The length of a sequence must be known".to_owned(),
            )),
        }
    }

    #[inline]
    fn bytes(&mut self, v: &[u8]) {
        self.varint(v.len() as u64);
        self.out.extend_from_slice(v);
    }
}

/// From this many bytes, a block's room is reserved in huge pages before
/// it is copied (see [`crate::mem::huge`]).
const BLOCK_RESERVE_FROM: usize = 64 << 10;

/// The integers wider than a byte: fixed-width little-endian inside a
/// sequence, else `$varint` (postcard's LEB128, zigzag for signed ones),
/// where `$e` is the encoder and `$v` the value.
macro_rules! wide_integers {
    ($($method:ident: $t:ty = |$e:ident, $v:ident| $varint:expr),* $(,)?) => {$(
        #[inline]
        fn $method(self, $v: $t) -> Result<(), EncodeError> {
            if self.fixed() {
                self.le(&$v.to_le_bytes());
            } else {
                let $e = &mut *self;
                $varint;
            }
            Ok(())
        }
    )*};
}

impl serde::Serializer for &mut Encoder<'_> {
    type Ok = ();
    type Error = EncodeError;
    type SerializeSeq = Self;
    type SerializeTuple = Self;
    type SerializeTupleStruct = Self;
    type SerializeTupleVariant = Self;
    type SerializeMap = Self;
    type SerializeStruct = Self;
    type SerializeStructVariant = Self;

    fn is_human_readable(&self) -> bool {
        false
    }

    #[inline]
    fn serialize_bool(self, v: bool) -> Result<(), EncodeError> {
        self.out.push(u8::from(v));
        Ok(())
    }
    #[inline]
    fn serialize_i8(self, v: i8) -> Result<(), EncodeError> {
        self.out.push(v as u8);
        Ok(())
    }
    wide_integers! {
        serialize_i16: i16 = |e, v| e.varint(u64::from(((v << 1) ^ (v >> 15)) as u16)),
        serialize_i32: i32 = |e, v| e.varint(u64::from(((v << 1) ^ (v >> 31)) as u32)),
        serialize_i64: i64 = |e, v| e.varint(((v << 1) ^ (v >> 63)) as u64),
        serialize_i128: i128 = |e, v| e.varint128(((v << 1) ^ (v >> 127)) as u128),
        serialize_u16: u16 = |e, v| e.varint(u64::from(v)),
        serialize_u32: u32 = |e, v| e.varint(u64::from(v)),
        serialize_u64: u64 = |e, v| e.varint(v),
        serialize_u128: u128 = |e, v| e.varint128(v),
    }
    #[inline]
    fn serialize_u8(self, v: u8) -> Result<(), EncodeError> {
        self.out.push(v);
        Ok(())
    }
    #[inline]
    fn serialize_f32(self, v: f32) -> Result<(), EncodeError> {
        self.out.extend_from_slice(&v.to_bits().to_le_bytes());
        Ok(())
    }
    #[inline]
    fn serialize_f64(self, v: f64) -> Result<(), EncodeError> {
        self.out.extend_from_slice(&v.to_bits().to_le_bytes());
        Ok(())
    }
    #[inline]
    fn serialize_char(self, v: char) -> Result<(), EncodeError> {
        let mut buf = [0u8; 4];
        self.bytes(v.encode_utf8(&mut buf).as_bytes());
        Ok(())
    }
    #[inline]
    fn serialize_str(self, v: &str) -> Result<(), EncodeError> {
        self.bytes(v.as_bytes());
        Ok(())
    }
    #[inline]
    fn serialize_bytes(self, v: &[u8]) -> Result<(), EncodeError> {
        self.bytes(v);
        Ok(())
    }
    #[inline]
    fn serialize_none(self) -> Result<(), EncodeError> {
        self.out.push(0);
        Ok(())
    }
    #[inline]
    fn serialize_some<T: Serialize + ?Sized>(self, value: &T) -> Result<(), EncodeError> {
        self.out.push(1);
        value.serialize(self)
    }
    #[inline]
    fn serialize_unit(self) -> Result<(), EncodeError> {
        Ok(())
    }
    #[inline]
    fn serialize_unit_struct(self, _name: &'static str) -> Result<(), EncodeError> {
        Ok(())
    }
    #[inline]
    fn serialize_unit_variant(
        self,
        _name: &'static str,
        variant_index: u32,
        _variant: &'static str,
    ) -> Result<(), EncodeError> {
        self.varint(u64::from(variant_index));
        Ok(())
    }
    #[inline]
    fn serialize_newtype_struct<T: Serialize + ?Sized>(
        self,
        _name: &'static str,
        value: &T,
    ) -> Result<(), EncodeError> {
        value.serialize(self)
    }
    #[inline]
    fn serialize_newtype_variant<T: Serialize + ?Sized>(
        self,
        _name: &'static str,
        variant_index: u32,
        _variant: &'static str,
        value: &T,
    ) -> Result<(), EncodeError> {
        self.varint(u64::from(variant_index));
        value.serialize(self)
    }
    #[inline]
    fn serialize_seq(self, len: Option<usize>) -> Result<Self, EncodeError> {
        self.len(len)?;
        self.depth += 1;
        Ok(self)
    }
    #[inline]
    fn serialize_tuple(self, _len: usize) -> Result<Self, EncodeError> {
        Ok(self)
    }
    #[inline]
    fn serialize_tuple_struct(self, _name: &'static str, _len: usize) -> Result<Self, EncodeError> {
        Ok(self)
    }
    #[inline]
    fn serialize_tuple_variant(
        self,
        _name: &'static str,
        variant_index: u32,
        _variant: &'static str,
        _len: usize,
    ) -> Result<Self, EncodeError> {
        self.varint(u64::from(variant_index));
        Ok(self)
    }
    #[inline]
    fn serialize_map(self, len: Option<usize>) -> Result<Self, EncodeError> {
        self.len(len)?;
        Ok(self)
    }
    #[inline]
    fn serialize_struct(self, _name: &'static str, _len: usize) -> Result<Self, EncodeError> {
        Ok(self)
    }
    #[inline]
    fn serialize_struct_variant(
        self,
        _name: &'static str,
        variant_index: u32,
        _variant: &'static str,
        _len: usize,
    ) -> Result<Self, EncodeError> {
        self.varint(u64::from(variant_index));
        Ok(self)
    }
    /// A slice of plain numbers is written as one block; any other
    /// sequence element by element (the same bytes: see the codec module).
    #[inline]
    fn collect_seq<I>(self, iter: I) -> Result<(), EncodeError>
    where
        I: IntoIterator,
        I::Item: Serialize,
    {
        if let Some((bytes, count)) = super::block::encode_view(&iter) {
            self.before_block(bytes.len());
            self.varint(count as u64);
            crate::mem::copy::extend(self.out, bytes);
            return Ok(());
        }
        let iter = iter.into_iter();
        let len = match iter.size_hint() {
            (lo, Some(hi)) if lo == hi => Some(lo),
            _ => None,
        };
        let mut seq = self.serialize_seq(len)?;
        for item in iter {
            serde::ser::SerializeSeq::serialize_element(&mut seq, &item)?;
        }
        serde::ser::SerializeSeq::end(seq)
    }
    fn collect_str<T: std::fmt::Display + ?Sized>(self, value: &T) -> Result<(), EncodeError> {
        self.bytes(value.to_string().as_bytes());
        Ok(())
    }
}

/// The compound serializers: every element, field, key and value is simply
/// the next value in the stream.
macro_rules! compound {
    ($($trait:ident $method:ident $(($key:ty))?),* $(,)?) => {$(
        impl serde::ser::$trait for &mut Encoder<'_> {
            type Ok = ();
            type Error = EncodeError;
            #[inline]
            fn $method<T: Serialize + ?Sized>(
                &mut self,
                $(_key: $key,)?
                value: &T,
            ) -> Result<(), EncodeError> {
                value.serialize(&mut **self)
            }
            #[inline]
            fn end(self) -> Result<(), EncodeError> {
                Ok(())
            }
        }
    )*};
}

impl serde::ser::SerializeSeq for &mut Encoder<'_> {
    type Ok = ();
    type Error = EncodeError;
    #[inline]
    fn serialize_element<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), EncodeError> {
        value.serialize(&mut **self)
    }
    #[inline]
    fn end(self) -> Result<(), EncodeError> {
        self.depth -= 1;
        Ok(())
    }
}

compound! {
    SerializeTuple serialize_element,
    SerializeTupleStruct serialize_field,
    SerializeTupleVariant serialize_field,
    SerializeStruct serialize_field (&'static str),
    SerializeStructVariant serialize_field (&'static str),
}

impl serde::ser::SerializeMap for &mut Encoder<'_> {
    type Ok = ();
    type Error = EncodeError;
    #[inline]
    fn serialize_key<T: Serialize + ?Sized>(&mut self, key: &T) -> Result<(), EncodeError> {
        key.serialize(&mut **self)
    }
    #[inline]
    fn serialize_value<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), EncodeError> {
        value.serialize(&mut **self)
    }
    #[inline]
    fn end(self) -> Result<(), EncodeError> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::{decode_exact, decode_fast, put_item};
    use serde::Deserialize;
    use serde::de::DeserializeOwned;

    /// Encodes `v` with [`Encoder`] and checks it against postcard's own
    /// serializer, byte for byte (a value with no number inside a
    /// sequence), and that it decodes back.
    fn same_as_postcard<T>(v: &T)
    where
        T: Serialize + DeserializeOwned + PartialEq + std::fmt::Debug + 'static,
    {
        let ours = round_trips(v);
        let theirs = postcard::to_stdvec(v).unwrap();
        assert_eq!(&ours[..], &theirs[..], "{v:?}");
    }

    /// Encodes `v` with [`Encoder`], checks that it decodes back and that
    /// every strict prefix is refused; gives the bytes.
    fn round_trips<T>(v: &T) -> Vec<u8>
    where
        T: Serialize + DeserializeOwned + PartialEq + std::fmt::Debug + 'static,
    {
        let mut ours = vec![0xAA]; // appends after what is there
        v.serialize(&mut Encoder::new(&mut ours)).unwrap();
        assert_eq!(&decode_exact::<T>(&ours[1..]).unwrap(), v);
        assert_eq!(&decode_fast::<T>(&ours[1..]).unwrap(), v);
        // Every strict prefix is refused, as postcard refuses it.
        for cut in 0..ours.len() - 1 {
            let short = &ours[1..1 + cut];
            assert_eq!(
                decode_fast::<T>(short).is_some(),
                decode_exact::<T>(short).is_ok(),
                "{v:?} cut at {cut}"
            );
            assert!(decode_exact::<T>(short).is_err(), "{v:?} cut at {cut}");
        }
        ours.remove(0);
        ours
    }

    #[test]
    fn encoder_writes_what_postcard_writes() {
        use std::collections::BTreeMap;
        #[derive(Serialize, Deserialize, PartialEq, Debug)]
        struct Unit;
        #[derive(Serialize, Deserialize, PartialEq, Debug)]
        struct Newtype(i32);
        #[derive(Serialize, Deserialize, PartialEq, Debug)]
        struct Tuple(u8, i64, String);
        #[derive(Serialize, Deserialize, PartialEq, Debug)]
        struct Named {
            a: u16,
            b: Option<Vec<u32>>,
            c: (char, bool, f32, f64),
            d: BTreeMap<String, i128>,
            e: u128,
            unit: Unit,
            n: Newtype,
        }
        #[derive(Serialize, Deserialize, PartialEq, Debug)]
        enum E {
            A,
            B(u64),
            C(i8, i16),
            D { x: Option<u8> },
        }
        for v in [0u64, 1, 127, 128, 16_383, 16_384, u32::MAX as u64, u64::MAX] {
            same_as_postcard(&v);
            same_as_postcard(&(v as u32));
            same_as_postcard(&(v as u16));
            same_as_postcard(&(v as i64));
            same_as_postcard(&(v as i64).wrapping_neg());
            same_as_postcard(&(v as i32));
            same_as_postcard(&(v as i16));
            same_as_postcard(&(v as i8));
            same_as_postcard(&(u128::from(v) << 64 | u128::from(v)));
            same_as_postcard(&(i128::from(v) << 63).wrapping_neg());
            same_as_postcard(&(v as usize, v as isize));
        }
        same_as_postcard(&i128::MIN);
        same_as_postcard(&i64::MIN);
        same_as_postcard(&());
        same_as_postcard(&Unit);
        same_as_postcard(&Newtype(-5));
        same_as_postcard(&Tuple(3, -300, "héllo".to_owned()));
        same_as_postcard(&"x".repeat(300));
        same_as_postcard(&vec![7u8; 1000]);
        same_as_postcard(&Some(E::A));
        same_as_postcard(&None::<E>);
        same_as_postcard(&vec![E::A, E::D { x: Some(9) }]);
        round_trips(&vec![
            E::A,
            E::B(1 << 40),
            E::C(-1, 300),
            E::D { x: Some(9) },
        ]);
        same_as_postcard(&Named {
            a: 65_535,
            b: None,
            c: ('€', true, -1.5, f64::MAX),
            d: [("k".to_owned(), -7), ("long key".to_owned(), i128::MAX)]
                .into_iter()
                .collect(),
            e: u128::MAX,
            unit: Unit,
            n: Newtype(i32::MIN),
        });
    }

    #[test]
    fn numbers_inside_sequences_are_fixed_width_on_either_path() {
        use std::collections::{BTreeSet, VecDeque};
        // The rule, byte for byte: lengths and variant indices stay varints,
        // numbers inside a sequence are little-endian at their full width.
        assert_eq!(round_trips(&vec![1u32, 300]), [2, 1, 0, 0, 0, 44, 1, 0, 0]);
        assert_eq!(round_trips(&vec![-2i16]), [1, 0xfe, 0xff]);
        #[derive(Serialize, Deserialize, PartialEq, Debug)]
        enum E {
            B(u64),
        }
        assert_eq!(round_trips(&vec![E::B(5)]), [1, 0, 5, 0, 0, 0, 0, 0, 0, 0]);
        // Outside a sequence, postcard's varints; inside one, at any depth.
        assert_eq!(
            round_trips(&(300u32, vec![(300u32, vec![7u16])])),
            [0xac, 2, 1, 44, 1, 0, 0, 1, 7, 0]
        );
        // A block (a slice of plain numbers) and the element by element
        // path write the same bytes, and each reads the other's.
        let v: Vec<i64> = vec![i64::MIN, -1, 0, 1, i64::MAX];
        let deque: VecDeque<i64> = v.iter().copied().collect();
        assert_eq!(round_trips(&v), round_trips(&deque));
        assert_eq!(
            decode_exact::<VecDeque<i64>>(&round_trips(&v)).unwrap(),
            deque
        );
        let set: BTreeSet<u32> = [5, 1, 70_000].into();
        let as_vec: Vec<u32> = set.iter().copied().collect();
        assert_eq!(round_trips(&set), round_trips(&as_vec));
        let points = [[1.5f32, -0.0, f32::NAN]; 3];
        let bytes = round_trips(
            &points
                .iter()
                .map(|p| p.map(f32::to_bits))
                .collect::<Vec<_>>(),
        );
        let back: Vec<[f32; 3]> = decode_exact(&bytes).unwrap();
        assert_eq!(
            back.iter()
                .flatten()
                .map(|x| x.to_bits())
                .collect::<Vec<_>>(),
            points
                .iter()
                .flatten()
                .map(|x| x.to_bits())
                .collect::<Vec<_>>()
        );
        let boxed: Box<[u128]> = vec![u128::MAX, 1].into();
        assert_eq!(round_trips(&boxed).len(), 1 + 32);
        round_trips(&vec![vec![1usize, usize::MAX], vec![]]);
        round_trips(&Some(vec![i8::MIN, i8::MAX]));
        round_trips(&vec![u128::MAX, 0]);
        round_trips(&vec![i128::MIN, -1]);
    }

    #[test]
    fn malformed_blocks_are_errors() {
        let good = round_trips(&vec![1.5f64, 2.5]);
        let mut over = good.clone();
        over.push(0);
        // A count whose byte length overflows a usize.
        let mut huge = vec![0xff; 9];
        huge.push(0x01);
        for body in [
            &good[..good.len() - 1],
            &over[..],
            &[3, 0, 0, 0, 0][..],
            &huge[..],
        ] {
            assert!(decode_exact::<Vec<f64>>(body).is_err(), "{body:?}");
            assert!(decode_fast::<Vec<f64>>(body).is_none(), "{body:?}");
        }
        assert_eq!(
            decode_exact::<Vec<f64>>(&good[..good.len() - 1]).unwrap_err(),
            "unexpected end of input"
        );
        assert!(
            decode_exact::<Vec<f64>>(&huge)
                .unwrap_err()
                .contains("longer than memory")
        );
    }

    #[test]
    fn encoder_keeps_custom_messages_and_rolls_back() {
        struct Refuse;
        impl Serialize for Refuse {
            fn serialize<S: serde::Serializer>(&self, _: S) -> Result<S::Ok, S::Error> {
                Err(serde::ser::Error::custom("no thanks"))
            }
        }
        let mut out = vec![1, 2, 3];
        assert_eq!(
            put_item(&mut out, &(5u64, Refuse)).unwrap_err(),
            "no thanks"
        );
        assert_eq!(out, [1, 2, 3]);
        struct Unsized;
        impl Serialize for Unsized {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_seq(std::iter::from_fn(|| Some(1u8)).take(3).filter(|_| true))
            }
        }
        assert!(put_item(&mut out, &Unsized).is_err());
        assert_eq!(out, [1, 2, 3]);
    }
}
