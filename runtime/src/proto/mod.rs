//! What crosses the trust boundary: the frames a worker process sends, read
//! once and checked against what the parent knows before anything else in
//! the runtime sees them.
//!
//! Every byte another process can write is untrusted input (see the crate
//! docs): a check here that fails is a protocol breach by that process,
//! never a panic in this one.

pub(crate) mod frame;
pub(crate) mod reply;

pub(crate) use frame::*;
