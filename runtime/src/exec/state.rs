//! What the executor keeps per process and per thread of a worker process:
//! its progress page, the batch running, and the last panic caught.

use std::cell::{Cell, RefCell};
use std::panic::PanicHookInfo;
use std::sync::OnceLock;

use crate::proto::PanicReport;
use crate::proto::Progress;

static PROGRESS: OnceLock<Progress> = OnceLock::new();

thread_local! {
    static TIMED: Cell<bool> = const { Cell::new(false) };
    static BATCH: Cell<u64> = const { Cell::new(0) };
}

/// Where the items of the running batch record their start in the progress
/// page, so that the parent knows which one runs (for timeouts) and can
/// take the rest of the batch for another worker.
pub(crate) struct Items {
    log: Option<crate::proto::ItemLog<'static>>,
}

impl Items {
    /// The batch this thread is running, looked up once for all its items
    /// instead of once per item (a thread-local and a `OnceLock` read in
    /// the loop of every dense batch).
    pub(crate) fn current() -> Items {
        let (batch, timed) = (BATCH.with(Cell::get), TIMED.with(Cell::get));
        Items {
            log: PROGRESS.get().map(|p| p.items(batch, timed)),
        }
    }

    /// Records that item `index` of the batch starts; `false` if the
    /// parent has taken it (and those after it) for another worker.
    #[inline]
    pub(crate) fn started(&self, index: u64) -> bool {
        match &self.log {
            Some(log) => log.begin(index),
            None => true,
        }
    }
}

/// The progress page this worker process writes (set once, at setup).
pub(crate) fn set_progress(progress: Progress) {
    let _ = PROGRESS.set(progress);
}

/// The progress page this worker process writes, once set.
pub(crate) fn progress() -> Option<&'static Progress> {
    PROGRESS.get()
}

/// The batch and item this process's progress page says run (the item
/// [`IDLE`](crate::proto::IDLE) between items), `(0, IDLE)` before setup.
pub(crate) fn running() -> (u64, u64) {
    PROGRESS
        .get()
        .map_or((0, crate::proto::IDLE), Progress::snapshot)
}

/// A batch starts on this thread: its items are recorded in the progress
/// page, and panics are kept for the report instead of printed.
pub(crate) fn begin_batch(batch: u64) {
    if let Some(p) = PROGRESS.get() {
        TIMED.with(|t| t.set(p.begin_batch(batch)));
        BATCH.with(|b| b.set(batch));
    }
    IN_TASK.with(|t| t.set(true));
}

/// The batch that [`begin_batch`] started is over.
pub(crate) fn end_batch() {
    IN_TASK.with(|t| t.set(false));
    if let Some(p) = PROGRESS.get() {
        p.end_batch();
    }
}

thread_local! {
    static IN_TASK: Cell<bool> = const { Cell::new(false) };
    static LAST_PANIC: RefCell<Option<PanicReport>> = const { RefCell::new(None) };
}

pub(crate) fn install_panic_hook() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info: &PanicHookInfo<'_>| {
        if IN_TASK.with(Cell::get) {
            // The parent reports it; keep the child quiet.
            let report = PanicReport {
                message: payload_text(info.payload()),
                location: info.location().map(|l| l.to_string()),
            };
            LAST_PANIC.with(|p| *p.borrow_mut() = Some(report));
        } else {
            default(info);
        }
    }));
}

fn payload_text(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "Box<dyn Any>".to_owned()
    }
}

/// The report of the panic that `catch_unwind` just caught on this thread.
pub(crate) fn take_panic_report(payload: &(dyn std::any::Any + Send)) -> PanicReport {
    LAST_PANIC
        .with(|p| p.borrow_mut().take())
        .unwrap_or_else(|| PanicReport {
            message: payload_text(payload),
            location: None,
        })
}
