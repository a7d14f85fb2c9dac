//! [`Decoder`]: a serde deserializer that reads the runtime's format
//! (postcard's, with fixed-width numbers inside sequences; see [`super`]).

use serde::de::{DeserializeOwned, DeserializeSeed, Visitor};

use super::item::{ITEM_OK, get_varint};

// ---- decoding -------------------------------------------------------------

/// Decodes a value that must fill `body` exactly; `None` if it does not
/// ([`decode_exact`] says why).
#[cfg(test)]
pub(crate) fn decode_fast<T: DeserializeOwned>(body: &[u8]) -> Option<T> {
    decode_fast_at(body, body.len())
}

/// Decodes a value from the `len` bytes at the start of `input`, which may go
/// on past them (the items that follow in the batch): the decoder can then
/// read a varint as one 8-byte word even at the end of a short item. What
/// a value that overruns its `len` bytes read past them does not matter: it
/// is refused. `None` if it does not decode ([`decode_exact`] says why).
#[inline]
pub(crate) fn decode_fast_at<T: DeserializeOwned>(input: &[u8], len: usize) -> Option<T> {
    let mut d = Decoder::new(input);
    let value = T::deserialize(&mut d).ok()?;
    (input.len() - d.input.len() == len).then_some(value)
}

/// Decodes a value that must fill `body` exactly.
///
/// # Errors
///
/// What is wrong with `body`, as a message.
pub(crate) fn decode_exact<T: DeserializeOwned>(body: &[u8]) -> Result<T, String> {
    let mut d = Decoder::new(body);
    let value = T::deserialize(&mut d).map_err(|e| e.0.into_string())?;
    match d.input.len() {
        0 => Ok(value),
        n => Err(format!("{n} trailing bytes")),
    }
}

/// Splits the next item off `input` if it is an `ITEM_OK` one:
/// `(its length, input from its body on)`; `input` moves past it.
#[inline]
pub(crate) fn next_ok_item<'a>(input: &mut &'a [u8]) -> Option<(usize, &'a [u8])> {
    let mut after = *input;
    let header = get_varint(&mut after)?;
    let len = usize::try_from(header >> 2).ok()?;
    if header & 3 != u64::from(ITEM_OK) || after.len() < len {
        return None;
    }
    *input = &after[len..];
    Some((len, after))
}

/// Why [`Decoder`] refused its input. Built only on the error path: a
/// value that decodes costs no message.
#[derive(Debug)]
pub(crate) struct DecodeError(Box<str>);

impl DecodeError {
    #[cold]
    fn new(message: &str) -> DecodeError {
        DecodeError(message.into())
    }
}

impl std::fmt::Display for DecodeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for DecodeError {}

impl serde::de::Error for DecodeError {
    #[cold]
    fn custom<T: std::fmt::Display>(msg: T) -> Self {
        DecodeError(msg.to_string().into())
    }
}

#[cold]
fn end() -> DecodeError {
    DecodeError::new("unexpected end of input")
}

#[cold]
fn bad(what: &str) -> DecodeError {
    DecodeError(format!("malformed input: {what}").into())
}

/// A serde deserializer for what [`Encoder`](super::encoder::Encoder)
/// writes, over a byte slice: the varints are read with one bounds check
/// per byte and no flavor layer (postcard's own `try_take_varint_u64` was
/// the largest single cost of decoding a batch of integers), and a
/// `Vec` of plain numbers is one copy ([`super::block`]).
pub(crate) struct Decoder<'de> {
    input: &'de [u8],
    /// Inside a sequence: numbers are fixed-width.
    fixed: bool,
}

impl<'de> Decoder<'de> {
    /// A decoder reading `input` from its start.
    pub(crate) fn new(input: &'de [u8]) -> Decoder<'de> {
        Decoder {
            input,
            fixed: false,
        }
    }

    /// The next `N` bytes, for a fixed-width number.
    #[inline]
    fn le<const N: usize>(&mut self) -> Result<[u8; N], DecodeError> {
        let (head, rest) = self.input.split_first_chunk::<N>().ok_or_else(end)?;
        self.input = rest;
        Ok(*head)
    }

    #[inline]
    fn byte(&mut self) -> Result<u8, DecodeError> {
        let (&b, rest) = self.input.split_first().ok_or_else(end)?;
        self.input = rest;
        Ok(b)
    }

    #[inline]
    fn take(&mut self, n: usize) -> Result<&'de [u8], DecodeError> {
        if self.input.len() < n {
            return Err(end());
        }
        let (head, rest) = self.input.split_at(n);
        self.input = rest;
        Ok(head)
    }

    #[inline]
    fn varint(&mut self) -> Result<u64, DecodeError> {
        match self.input.split_first() {
            Some((&b, rest)) if b < 0x80 => {
                self.input = rest;
                Ok(u64::from(b))
            }
            _ => self.varint_long(),
        }
    }

    #[inline]
    fn varint_long(&mut self) -> Result<u64, DecodeError> {
        // Up to 8 bytes (56 bits) at once: load a word, find the first
        // byte without the continuation bit, squeeze out the 7-bit groups.
        if let Some(word) = self.input.first_chunk::<8>() {
            let word = u64::from_le_bytes(*word);
            let ends = !word & 0x8080_8080_8080_8080;
            if ends != 0 {
                let n = ends.trailing_zeros() as usize / 8 + 1;
                let keep = if n == 8 {
                    u64::MAX
                } else {
                    (1u64 << (8 * n)) - 1
                };
                let mut x = word & keep & 0x7f7f_7f7f_7f7f_7f7f;
                x = (x & 0x007f_007f_007f_007f) | ((x & 0x7f00_7f00_7f00_7f00) >> 1);
                x = (x & 0x0000_3fff_0000_3fff) | ((x & 0x3fff_0000_3fff_0000) >> 2);
                x = (x & 0x0000_0000_0fff_ffff) | ((x & 0x0fff_ffff_0000_0000) >> 4);
                self.input = &self.input[n..];
                return Ok(x);
            }
        }
        let mut v = 0u64;
        for i in 0..10 {
            let b = self.byte()?;
            v |= u64::from(b & 0x7f) << (7 * i);
            if b < 0x80 {
                // The tenth byte holds the top bit only.
                return if i == 9 && b > 1 {
                    Err(bad("a varint over 64 bits"))
                } else {
                    Ok(v)
                };
            }
        }
        Err(bad("a varint over 64 bits"))
    }

    fn varint128(&mut self) -> Result<u128, DecodeError> {
        let mut v = 0u128;
        for i in 0..19 {
            let b = self.byte()?;
            v |= u128::from(b & 0x7f) << (7 * i);
            if b < 0x80 {
                return if i == 18 && b > 3 {
                    Err(bad("a varint over 128 bits"))
                } else {
                    Ok(v)
                };
            }
        }
        Err(bad("a varint over 128 bits"))
    }

    #[inline]
    fn varint_as<T: TryFrom<u64>>(&mut self) -> Result<T, DecodeError> {
        T::try_from(self.varint()?).map_err(|_| bad("an integer out of range"))
    }

    #[inline]
    fn len(&mut self) -> Result<usize, DecodeError> {
        self.varint_as()
    }

    #[inline]
    fn str(&mut self) -> Result<&'de str, DecodeError> {
        let n = self.len()?;
        let bytes = self.take(n)?;
        if bytes.is_ascii() {
            // SAFETY: ASCII is UTF-8. (For the short strings of records,
            // `is_ascii` reads a word at a time where `from_utf8` walks the
            // bytes: it was 5% of a worker's time on 8–24-byte strings.)
            return Ok(unsafe { std::str::from_utf8_unchecked(bytes) });
        }
        std::str::from_utf8(bytes).map_err(|_| bad("a string that is not UTF-8"))
    }
}

/// The integers wider than a byte: fixed-width little-endian inside a
/// sequence, else `$varint` (postcard's LEB128, zigzag for signed ones),
/// where `$d` is the decoder.
macro_rules! wide_integers {
    ($($method:ident $visit:ident: $t:ty = |$d:ident| $varint:expr),* $(,)?) => {$(
        #[inline]
        fn $method<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DecodeError> {
            if self.fixed {
                return visitor.$visit(<$t>::from_le_bytes(self.le()?));
            }
            let $d = self;
            visitor.$visit($varint)
        }
    )*};
}

impl<'de> serde::Deserializer<'de> for &mut Decoder<'de> {
    type Error = DecodeError;

    fn is_human_readable(&self) -> bool {
        false
    }

    fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, DecodeError> {
        Err(bad("a type that asks for a self-describing format"))
    }
    #[inline]
    fn deserialize_bool<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DecodeError> {
        match self.byte()? {
            0 => visitor.visit_bool(false),
            1 => visitor.visit_bool(true),
            _ => Err(bad("a bool that is neither 0 nor 1")),
        }
    }
    #[inline]
    fn deserialize_i8<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DecodeError> {
        visitor.visit_i8(self.byte()? as i8)
    }
    #[inline]
    fn deserialize_u8<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DecodeError> {
        visitor.visit_u8(self.byte()?)
    }
    wide_integers! {
        deserialize_i16 visit_i16: i16 = |d| { let n: u16 = d.varint_as()?; ((n >> 1) as i16) ^ -((n & 1) as i16) },
        deserialize_i32 visit_i32: i32 = |d| { let n: u32 = d.varint_as()?; ((n >> 1) as i32) ^ -((n & 1) as i32) },
        deserialize_i64 visit_i64: i64 = |d| { let n = d.varint()?; ((n >> 1) as i64) ^ -((n & 1) as i64) },
        deserialize_i128 visit_i128: i128 = |d| { let n = d.varint128()?; ((n >> 1) as i128) ^ -((n & 1) as i128) },
        deserialize_u16 visit_u16: u16 = |d| d.varint_as()?,
        deserialize_u32 visit_u32: u32 = |d| d.varint_as()?,
        deserialize_u64 visit_u64: u64 = |d| d.varint()?,
        deserialize_u128 visit_u128: u128 = |d| d.varint128()?,
    }
    #[inline]
    fn deserialize_f32<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DecodeError> {
        visitor.visit_f32(f32::from_le_bytes(self.le()?))
    }
    #[inline]
    fn deserialize_f64<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DecodeError> {
        visitor.visit_f64(f64::from_le_bytes(self.le()?))
    }
    fn deserialize_char<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DecodeError> {
        let mut chars = self.str()?.chars();
        match (chars.next(), chars.next()) {
            (Some(c), None) => visitor.visit_char(c),
            _ => Err(bad("a char that is not one character")),
        }
    }
    #[inline]
    fn deserialize_str<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DecodeError> {
        visitor.visit_borrowed_str(self.str()?)
    }
    #[inline]
    fn deserialize_string<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DecodeError> {
        visitor.visit_borrowed_str(self.str()?)
    }
    #[inline]
    fn deserialize_bytes<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DecodeError> {
        let n = self.len()?;
        visitor.visit_borrowed_bytes(self.take(n)?)
    }
    #[inline]
    fn deserialize_byte_buf<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DecodeError> {
        let n = self.len()?;
        visitor.visit_borrowed_bytes(self.take(n)?)
    }
    #[inline]
    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DecodeError> {
        match self.byte()? {
            0 => visitor.visit_none(),
            1 => visitor.visit_some(self),
            _ => Err(bad("an option tag that is neither 0 nor 1")),
        }
    }
    #[inline]
    fn deserialize_unit<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DecodeError> {
        visitor.visit_unit()
    }
    #[inline]
    fn deserialize_unit_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, DecodeError> {
        visitor.visit_unit()
    }
    #[inline]
    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, DecodeError> {
        visitor.visit_newtype_struct(self)
    }
    #[inline]
    fn deserialize_seq<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DecodeError> {
        let left = self.len()?;
        if let Some(block) = super::block::decode_entry::<V::Value>() {
            let bytes = left
                .checked_mul(block.size)
                .ok_or_else(|| bad("a sequence longer than memory"))?;
            let bytes = self.take(bytes)?;
            // SAFETY: the entry is `V::Value`'s, and `bytes` holds exactly
            // `left` of its elements.
            return Ok(unsafe { block.read(bytes, left) });
        }
        let outer = std::mem::replace(&mut self.fixed, true);
        let value = visitor.visit_seq(Counted { de: self, left });
        self.fixed = outer;
        value
    }
    #[inline]
    fn deserialize_tuple<V: Visitor<'de>>(
        self,
        len: usize,
        visitor: V,
    ) -> Result<V::Value, DecodeError> {
        visitor.visit_seq(Counted {
            de: self,
            left: len,
        })
    }
    #[inline]
    fn deserialize_tuple_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        len: usize,
        visitor: V,
    ) -> Result<V::Value, DecodeError> {
        visitor.visit_seq(Counted {
            de: self,
            left: len,
        })
    }
    #[inline]
    fn deserialize_map<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DecodeError> {
        let left = self.len()?;
        visitor.visit_map(Counted { de: self, left })
    }
    #[inline]
    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, DecodeError> {
        visitor.visit_seq(Counted {
            de: self,
            left: fields.len(),
        })
    }
    #[inline]
    fn deserialize_enum<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, DecodeError> {
        visitor.visit_enum(self)
    }
    fn deserialize_identifier<V: Visitor<'de>>(self, _: V) -> Result<V::Value, DecodeError> {
        Err(bad("an identifier, which this format does not write"))
    }
    fn deserialize_ignored_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, DecodeError> {
        Err(bad(
            "a value to skip, whose length this format does not say",
        ))
    }
}

/// A sequence, tuple, struct or map of `left` more elements (or entries).
struct Counted<'a, 'de> {
    de: &'a mut Decoder<'de>,
    left: usize,
}

impl<'de> serde::de::SeqAccess<'de> for Counted<'_, 'de> {
    type Error = DecodeError;
    #[inline]
    fn next_element_seed<T: DeserializeSeed<'de>>(
        &mut self,
        seed: T,
    ) -> Result<Option<T::Value>, DecodeError> {
        if self.left == 0 {
            return Ok(None);
        }
        self.left -= 1;
        seed.deserialize(&mut *self.de).map(Some)
    }
    fn size_hint(&self) -> Option<usize> {
        Some(self.left)
    }
}

impl<'de> serde::de::MapAccess<'de> for Counted<'_, 'de> {
    type Error = DecodeError;
    #[inline]
    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, DecodeError> {
        if self.left == 0 {
            return Ok(None);
        }
        self.left -= 1;
        seed.deserialize(&mut *self.de).map(Some)
    }
    #[inline]
    fn next_value_seed<V: DeserializeSeed<'de>>(
        &mut self,
        seed: V,
    ) -> Result<V::Value, DecodeError> {
        seed.deserialize(&mut *self.de)
    }
    fn size_hint(&self) -> Option<usize> {
        Some(self.left)
    }
}

impl<'de> serde::de::EnumAccess<'de> for &mut Decoder<'de> {
    type Error = DecodeError;
    type Variant = Self;
    #[inline]
    fn variant_seed<V: DeserializeSeed<'de>>(
        self,
        seed: V,
    ) -> Result<(V::Value, Self), DecodeError> {
        let index: u32 = self.varint_as()?;
        let value =
            seed.deserialize(serde::de::value::U32Deserializer::<DecodeError>::new(index))?;
        Ok((value, self))
    }
}

impl<'de> serde::de::VariantAccess<'de> for &mut Decoder<'de> {
    type Error = DecodeError;
    #[inline]
    fn unit_variant(self) -> Result<(), DecodeError> {
        Ok(())
    }
    #[inline]
    fn newtype_variant_seed<T: DeserializeSeed<'de>>(
        self,
        seed: T,
    ) -> Result<T::Value, DecodeError> {
        seed.deserialize(self)
    }
    #[inline]
    fn tuple_variant<V: Visitor<'de>>(
        self,
        len: usize,
        visitor: V,
    ) -> Result<V::Value, DecodeError> {
        visitor.visit_seq(Counted {
            de: self,
            left: len,
        })
    }
    #[inline]
    fn struct_variant<V: Visitor<'de>>(
        self,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, DecodeError> {
        visitor.visit_seq(Counted {
            de: self,
            left: fields.len(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decoder_reads_every_varint_length() {
        for bits in 0..64 {
            for v in [1u64 << bits, (1u64 << bits) - 1, (1u64 << bits) | 0x55] {
                let mut bytes = postcard::to_stdvec(&(v, 7u8)).unwrap();
                assert_eq!(decode_fast::<(u64, u8)>(&bytes), Some((v, 7)), "{v}");
                bytes.extend_from_slice(&[0xff; 9]);
                let mut d = Decoder::new(&bytes);
                assert_eq!(d.varint().ok(), Some(v), "{v}");
            }
        }
    }
}
