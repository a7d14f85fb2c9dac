//! OS calls: passing descriptors over a socket, waiting for one to be
//! readable, a child's pidfd and resident memory, and a worker's hard
//! memory limit.

pub(crate) mod fdpass;
pub(crate) mod limit;
pub(crate) mod process;
