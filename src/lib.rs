//! multiproc (docs to come)
#![deny(unsafe_op_in_unsafe_fn)]

pub use multiproc_macros::{entry, test, worker};
pub use multiproc_runtime::{
    AsCompleted, CodecSide, Error, ErrorKind, ExitReason, Imap, ImapUnordered, Pool, PoolBuilder,
    Result, Task, Worker, as_completed,
};

// Not public API. Used by generated code.
#[doc(hidden)]
pub mod __private {
    pub use multiproc_runtime::__private::*;
}
