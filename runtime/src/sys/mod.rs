//! OS calls: passing descriptors over a socket, waiting for one to be
//! readable, a child's pidfd and resident memory.

pub(crate) mod fdpass;
pub(crate) mod process;
