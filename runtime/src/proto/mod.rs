//! The bytes other processes send this one: each format has one reader and one writer, with caps.
pub(crate) mod stream;
