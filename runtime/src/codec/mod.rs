//! The bytes of values, written and read by our own serde serializer and
//! deserializer, in items that a batch can be cut between.
//!
//! The format is postcard's 1.x wire format (LEB128 varints for integers
//! wider than a byte, zigzag for signed ones, little-endian floats, length
//! prefixes for strings, sequences and maps, varint variant indices), with
//! one rule of its own: **inside a sequence, every number is fixed-width
//! little-endian** (two's complement for signed integers; `usize` and
//! `isize` as 64 bits, as serde writes them), at any depth below the
//! sequence. Lengths, variant indices and everything outside sequences
//! stay postcard's. So a `Vec<f64>`, `Vec<u32>` or `Vec<[f32; 3]>` on the
//! wire is its length and then its elements' bytes as they lie in memory
//! on a little-endian machine, and travels as one copy ([`block`]); on a
//! big-endian machine the same bytes are written element by element.
//!
//! Inside a batch, each item is framed as a LEB128 header
//! `(len << 2) | status` followed by the `len` bytes of the value, so one
//! bad item can be skipped without losing the others, and a batch can be
//! split after a crash without re-encoding. A batch whose arguments (or
//! results) are all of one primitive type is *dense* instead ([`dense`]).

mod block;
mod decoder;
pub(crate) mod dense;
mod encoder;
mod item;

pub(crate) use block::{OwnedBlock, maybe_vec};
pub(crate) use decoder::*;
pub(crate) use dense::*;
pub(crate) use item::*;
