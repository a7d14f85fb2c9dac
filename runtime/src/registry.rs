//! The table of `#[worker]` functions that every copy of the binary carries.
//!
//! `#[worker]` submits one [`WorkerEntry`] per function to an `inventory`
//! table at link time; the child looks tasks up in it by name.

use std::collections::HashMap;
use std::sync::OnceLock;

use crate::error::{Error, ErrorKind, Result};
use crate::exec::{BatchArgs, invoke_batch};
use crate::worker::Worker;

/// Runs a batch of arguments (framed, dense or a range, see
/// [`crate::exec::BatchArgs`]) and appends the encoded results: how many ran,
/// and whether the results are dense.
pub(crate) type InvokeFn =
    fn(args: BatchArgs<'_>, out: &mut Vec<u8>) -> Result<(u32, bool), String>;

/// One registered worker function: its name and how to run a batch of it.
///
/// Created by `#[worker]`; not meant to be built by hand.
pub struct WorkerEntry {
    name: &'static str,
    invoke: InvokeFn,
    reframe: ReframeFn,
}

/// Turns the dense results of a batch (from byte `start` of `out` on)
/// into framed items, for a relay that forwards framed results only.
pub(crate) type ReframeFn = fn(out: &mut Vec<u8>, start: usize);

impl WorkerEntry {
    /// The entry for worker `W`.
    pub const fn new<W: Worker>() -> WorkerEntry {
        WorkerEntry {
            name: W::NAME,
            invoke: invoke_batch::<W>,
            reframe: crate::codec::reframe::<W::Output>,
        }
    }

    /// The worker's name.
    pub fn name(&self) -> &'static str {
        self.name
    }

    pub(crate) fn invoke(&self) -> InvokeFn {
        self.invoke
    }

    #[cfg_attr(not(feature = "mpi"), allow(dead_code))]
    pub(crate) fn reframe(&self) -> ReframeFn {
        self.reframe
    }
}

inventory::collect!(WorkerEntry);

type Table = HashMap<&'static str, &'static WorkerEntry>;

fn table() -> &'static Result<Table, String> {
    static TABLE: OnceLock<Result<Table, String>> = OnceLock::new();
    TABLE.get_or_init(|| {
        let mut table = Table::new();
        for entry in inventory::iter::<WorkerEntry> {
            if table.insert(entry.name(), entry).is_some() {
                return Err(entry.name().to_owned());
            }
        }
        Ok(table)
    })
}

/// Checks that no two workers share a name.
pub(crate) fn validate() -> Result<()> {
    match table() {
        Ok(_) => Ok(()),
        Err(name) => Err(Error::new(ErrorKind::DuplicateWorker {
            name: name.clone(),
        })),
    }
}

/// Looks a worker up by name.
pub(crate) fn lookup(name: &str) -> Option<&'static WorkerEntry> {
    table().as_ref().ok()?.get(name).copied()
}

/// Every registered name, sorted.
pub(crate) fn known_names() -> Vec<String> {
    let mut names: Vec<String> = inventory::iter::<WorkerEntry>
        .into_iter()
        .map(|e| e.name().to_owned())
        .collect();
    names.sort();
    names
}
