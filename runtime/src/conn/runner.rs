//! [`Runner`]: what other threads may know of, and do to, the worker
//! process one driver runs.

use std::sync::{Arc, Mutex, MutexGuard};

/// A batch must have run this long before an idle worker takes half of
/// what is left of it: short batches are not worth the round trip.
pub(crate) const STEAL_AFTER: std::time::Duration = std::time::Duration::from_millis(2);

/// The per-driver view of the child it runs, so that other threads can kill
/// it (task cancel, timeout, `terminate`) without racing the reaping.
#[derive(Default)]
pub(crate) struct Runner {
    /// Position of the worker slot in its pool.
    pub(crate) id: usize,
    state: Mutex<RunnerState>,
}

#[derive(Default)]
struct RunnerState {
    /// The live child, cleared before it is reaped so its pid is never reused
    /// under our feet.
    pid: Option<u32>,
    /// The batch the child is running (the oldest one sent): id, items, and
    /// since when.
    front: Option<(u64, u32, std::time::Instant)>,
    /// Part of the front batch was already asked for by an idle worker:
    /// the slot id of that worker.
    thief: Option<usize>,
    /// The child's progress page.
    progress: Option<Arc<crate::proto::Progress>>,
    /// Set when we killed the child on purpose.
    killed: bool,
}

impl Runner {
    /// The runner of worker slot `id`.
    pub(crate) fn new(id: usize) -> Runner {
        Runner {
            id,
            ..Runner::default()
        }
    }

    pub(crate) fn set_pid(&self, pid: Option<u32>) {
        let mut s = self.lock();
        s.pid = pid;
        s.front = None;
        s.killed = false;
    }

    /// Forgets the child's pid and returns it (to reap it by hand).
    pub(crate) fn take_pid(&self) -> Option<u32> {
        self.lock().pid.take()
    }

    pub(crate) fn set_progress(&self, progress: Arc<crate::proto::Progress>) {
        self.lock().progress = Some(progress);
    }

    pub(crate) fn set_front(&self, front: Option<(u64, u32)>) {
        let mut s = self.lock();
        s.front = front.map(|(batch, count)| (batch, count, std::time::Instant::now()));
        s.thief = None;
    }

    /// Items of the running batch that have not started yet (`0` if it is
    /// too young to be worth splitting or was split already).
    pub(crate) fn stealable(&self) -> u64 {
        let s = self.lock();
        match (&s.front, &s.progress, s.pid) {
            (Some((batch, count, since)), Some(progress), Some(_))
                if s.thief.is_none() && since.elapsed() >= STEAL_AFTER =>
            {
                let started = progress.running(*batch).map_or(0, |item| item + 1);
                u64::from(*count).saturating_sub(started)
            }
            _ => 0,
        }
    }

    /// Asks the child to stop its running batch after the item it is on;
    /// when it answers, its driver splits what is left in two, one half for
    /// itself and one for `thief`. (Stopping halfway instead would leave
    /// the thief idle until the child got there, and the child idle once
    /// the thief had the rest: the two halves would run one after the
    /// other.) `false` if there is nothing left to split.
    pub(crate) fn steal_half(&self, thief: usize) -> bool {
        let mut s = self.lock();
        let (Some((batch, count, _)), Some(progress), Some(_)) =
            (s.front, s.progress.clone(), s.pid)
        else {
            return false;
        };
        if s.thief.is_some() {
            return false;
        }
        let started = progress.running(batch).map_or(0, |item| item + 1);
        let left = u64::from(count).saturating_sub(started);
        if left < 2 {
            return false;
        }
        progress.request_stop(batch, started);
        s.thief = Some(thief);
        true
    }

    /// The worker that asked for part of the running batch, if any.
    pub(crate) fn thief(&self) -> Option<usize> {
        self.lock().thief
    }

    /// `true` while the child is running a batch.
    pub(crate) fn is_busy(&self) -> bool {
        let s = self.lock();
        s.pid.is_some() && s.front.is_some()
    }

    /// `true` if the child was killed on purpose since it started.
    pub(crate) fn was_killed(&self) -> bool {
        self.lock().killed
    }

    /// Kills the child if it is running `batch` (any batch if `None`).
    pub(crate) fn kill_if_running(&self, batch: Option<u64>) -> bool {
        let mut s = self.lock();
        let Some(pid) = s.pid else { return false };
        if batch.is_some() && s.front.map(|(b, _, _)| b) != batch {
            return false;
        }
        s.killed = true;
        // SAFETY: `pid` is our unreaped child (cleared before `wait`), so it
        // cannot name another process.
        unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
        true
    }

    fn lock(&self) -> MutexGuard<'_, RunnerState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}
