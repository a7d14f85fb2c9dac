//! The process role: whether `#[entry]` (or `#[multiproc::test]`) ran,
//! the marker that makes a process a worker, and the test a thread runs.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

/// Environment variable that marks a process as a worker child.
pub(crate) const MARKER: &str = "MULTIPROC_CHILD";

static GUARD: AtomicBool = AtomicBool::new(false);

/// Records that `#[entry]` or `#[multiproc::test]` ran in this process.
pub(crate) fn install() {
    GUARD.store(true, Ordering::Release);
}

/// Records that this thread runs the test `name` (its exact name, as the
/// test harness knows it).
pub(crate) fn record_test(name: &str) {
    TEST_NAMES
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .push((std::thread::current().id(), name.to_owned()));
}

/// The exact name of the `#[multiproc::test]` that this thread runs, if any;
/// children of pools made on this thread re-run the test binary filtered to it.
static TEST_NAMES: Mutex<Vec<(std::thread::ThreadId, String)>> = Mutex::new(Vec::new());

/// `true` once `#[entry]` or `#[multiproc::test]` ran in this process.
pub(crate) fn guard_installed() -> bool {
    GUARD.load(Ordering::Acquire)
}

/// The test this thread runs, for children of a pool created on it.
pub(crate) fn current_test() -> Option<String> {
    let id = std::thread::current().id();
    let names = TEST_NAMES.lock().unwrap_or_else(|e| e.into_inner());
    names
        .iter()
        .rev()
        .find(|(t, _)| *t == id)
        .or(names.last())
        .map(|(_, n)| n.clone())
}
