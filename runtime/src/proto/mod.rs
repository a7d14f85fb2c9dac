//! What crosses the trust boundary: the bytes other processes send this
//! one, each format with one reader and one writer, with caps, checked
//! against what this process knows before anything else in the runtime
//! sees them.
//!
//! Every byte another process can write is untrusted input (see the crate
//! docs): a check here that fails is a protocol breach by that process,
//! never a panic in this one.
//!
//! - [`frame`]: the frames on a worker's control socket;
//! - [`message`]: each message on it, written by one function;
//! - [`reply`]: a worker's answer to the batch in flight;
//! - [`log`]: a worker's forwarded `tracing` events, on a socket of their
//!   own;
//! - [`progress`] and [`arena`]: a worker's progress page and the shared
//!   buffers of its large frames, the memory it shares with its parent;
//! - [`stream`]: length-prefixed messages between peers of a pipe or a
//!   `Manager`.

pub(crate) mod arena;
pub(crate) mod frame;
pub(crate) mod log;
pub(crate) mod message;
pub(crate) mod progress;
pub(crate) mod reply;
pub(crate) mod stream;

pub(crate) use frame::*;
pub(crate) use progress::{AbortNote, IDLE, ItemLog, Progress};
