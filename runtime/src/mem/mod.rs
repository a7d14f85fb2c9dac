//! This process's own memory for frames and results: buffers backed by
//! huge pages where the kernel gives them, kept for reuse, and copies
//! that do not pollute the cache when they are large.

pub(crate) mod copy;
pub(crate) mod huge;
