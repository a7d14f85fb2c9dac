//! The bytes of values: postcard's format, written and read by our own
//! serde serializer and deserializer, in items that a batch can be cut
//! between.
//!
//! Inside a batch, each item is framed as a LEB128 header
//! `(len << 2) | status` followed by `len` bytes of postcard, so one bad
//! item can be skipped without losing the others, and a batch can be split
//! after a crash without re-encoding. A batch whose arguments (or results)
//! are all of one primitive type is *dense* instead ([`dense`]).

mod decoder;
pub(crate) mod dense;
mod encoder;
mod item;

pub(crate) use decoder::*;
pub(crate) use dense::*;
pub(crate) use item::*;
