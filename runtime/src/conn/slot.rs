//! [`TaskSlot`]: where the thread that reads a worker process's answer
//! leaves the reply of one call, for the thread (or the future) that waits
//! for it.

use std::sync::mpsc::Sender;
use std::sync::{Condvar, Mutex, MutexGuard};
use std::task::Waker;
use std::time::Instant;

use super::outcome::Reply;

/// Where the driver leaves the reply of a task.
pub(crate) struct TaskSlot {
    state: Mutex<SlotState>,
    cond: Condvar,
}

#[derive(Default)]
struct SlotState {
    reply: Option<Reply>,
    done: bool,
    waker: Option<Waker>,
    listener: Option<(Sender<usize>, usize)>,
    /// Threads blocked in [`TaskSlot::wait`]: filling the slot notifies the
    /// condition variable only if there is one. A notify is a system call
    /// even with nobody to wake, and a task waited for through
    /// `as_completed` or `.await` has nobody there (`perf` on system calls
    /// of the `submit` row: most of the drivers' futex calls).
    waiting: usize,
}

impl TaskSlot {
    pub(crate) fn new() -> TaskSlot {
        TaskSlot {
            state: Mutex::new(SlotState::default()),
            cond: Condvar::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, SlotState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Stores the reply; the first one wins.
    pub(crate) fn fill(&self, reply: Reply) {
        let mut s = self.lock();
        if s.done {
            return;
        }
        s.done = true;
        s.reply = Some(reply);
        let waker = s.waker.take();
        let listener = s.listener.take();
        let waiting = s.waiting > 0;
        drop(s);
        // Told once the lock is let go of: the listener's thread takes it
        // at once (`as_completed` waits for the slot it was told of), and
        // found it held.
        if let Some((tx, i)) = listener {
            let _ = tx.send(i);
        }
        if waiting {
            self.cond.notify_all();
        }
        if let Some(w) = waker {
            w.wake();
        }
    }

    /// The reply if it is there (taken: once), else `None` with `waker`
    /// registered to be woken when it comes.
    pub(crate) fn poll_reply(&self, waker: &Waker) -> Option<Reply> {
        let mut s = self.lock();
        if s.done {
            return Some(s.reply.take().expect("a task's result is taken once"));
        }
        match &s.waker {
            Some(w) if w.will_wake(waker) => {}
            _ => s.waker = Some(waker.clone()),
        }
        None
    }

    pub(crate) fn is_done(&self) -> bool {
        self.lock().done
    }

    pub(crate) fn listen(&self, tx: Sender<usize>, index: usize) {
        let mut s = self.lock();
        if s.done {
            let _ = tx.send(index);
        } else {
            s.listener = Some((tx, index));
        }
    }

    pub(crate) fn wait(&self, deadline: Option<Instant>) -> Option<Reply> {
        let mut s = self.lock();
        loop {
            if s.done {
                return s.reply.take();
            }
            let left = match deadline {
                None => None,
                Some(d) => match d.checked_duration_since(Instant::now()) {
                    Some(left) if !left.is_zero() => Some(left),
                    _ => return None,
                },
            };
            s.waiting += 1;
            s = match left {
                None => self.cond.wait(s).unwrap_or_else(|e| e.into_inner()),
                Some(left) => {
                    self.cond
                        .wait_timeout(s, left)
                        .unwrap_or_else(|e| e.into_inner())
                        .0
                }
            };
            s.waiting -= 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conn::outcome::Outcome;
    use std::sync::{Arc, mpsc};
    use std::time::Duration;

    fn reply() -> Reply {
        Reply {
            first_index: None,
            count: 1,
            outcome: Outcome::Local(None),
        }
    }

    /// A slot filled while a thread waits wakes it (the fill notifies only
    /// when someone waits), with and without a deadline; one filled before
    /// the wait is there at once.
    #[test]
    fn a_fill_wakes_a_thread_that_waits() {
        for deadline in [None, Some(Duration::from_secs(60))] {
            let slot = Arc::new(TaskSlot::new());
            let (tx, rx) = mpsc::channel();
            {
                let slot = slot.clone();
                std::thread::spawn(move || {
                    let got = slot.wait(deadline.map(|d| Instant::now() + d));
                    let _ = tx.send(got.is_some());
                });
            }
            // Let it block first.
            let start = Instant::now();
            while slot.lock().waiting == 0 {
                assert!(start.elapsed() < Duration::from_secs(10), "never waited");
                std::thread::sleep(Duration::from_millis(1));
            }
            slot.fill(reply());
            let got = rx
                .recv_timeout(Duration::from_secs(10))
                .expect("the fill did not wake the waiter");
            assert!(got, "the waiter got no reply ({deadline:?})");
            assert_eq!(slot.lock().waiting, 0);
        }
        let slot = TaskSlot::new();
        slot.fill(reply());
        assert!(slot.wait(Some(Instant::now())).is_some());
        // A deadline that passes with no reply.
        let empty = TaskSlot::new();
        assert!(
            empty
                .wait(Some(Instant::now() + Duration::from_millis(20)))
                .is_none()
        );
        assert_eq!(empty.lock().waiting, 0);
    }
}
