//! Where the thread that reads a worker process's answer leaves replies,
//! for the thread (or the future) that waits for them: [`TaskSlot`] holds
//! the reply of one call, [`waking_channel`] carries many (a stream's).

use std::sync::mpsc::{self, Receiver, RecvError, SendError, Sender, TryRecvError};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::task::{Poll, Waker};
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
    listener: Option<(WakingSender<usize>, usize)>,
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

    pub(crate) fn listen(&self, tx: WakingSender<usize>, index: usize) {
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

/// The task a future registered to be woken when a value is sent (or the
/// last sender is gone).
#[derive(Default)]
struct WakerCell(Mutex<Option<Waker>>);

impl WakerCell {
    fn wake(&self) {
        let waker = self.0.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(w) = waker {
            w.wake();
        }
    }

    fn register(&self, waker: &Waker) {
        let mut cell = self.0.lock().unwrap_or_else(|e| e.into_inner());
        match &*cell {
            Some(w) if w.will_wake(waker) => {}
            _ => *cell = Some(waker.clone()),
        }
    }
}

/// Wakes the registered task when dropped: the last sender's drop is how
/// a future learns that nothing more will come.
struct WakeOnDrop(Arc<WakerCell>);

impl Drop for WakeOnDrop {
    fn drop(&mut self) {
        self.0.wake();
    }
}

/// A channel whose receiver is a thread that blocks ([`WakingReceiver::recv`])
/// or a future that is woken ([`WakingReceiver::poll_recv`]): every send,
/// and every drop of a sender, wakes the waker registered last.
pub(crate) fn waking_channel<T>() -> (WakingSender<T>, WakingReceiver<T>) {
    let (tx, rx) = mpsc::channel();
    let waker = Arc::new(WakerCell::default());
    (
        WakingSender {
            tx,
            wake_on_drop: WakeOnDrop(waker.clone()),
        },
        WakingReceiver { rx, waker },
    )
}

/// The sending end of a [`waking_channel`].
pub(crate) struct WakingSender<T> {
    // Declared first, so dropped first: the channel is disconnected (if
    // this was the last sender) before `wake_on_drop` wakes the receiver.
    tx: Sender<T>,
    wake_on_drop: WakeOnDrop,
}

impl<T> Clone for WakingSender<T> {
    fn clone(&self) -> Self {
        WakingSender {
            tx: self.tx.clone(),
            wake_on_drop: WakeOnDrop(self.wake_on_drop.0.clone()),
        }
    }
}

impl<T> WakingSender<T> {
    /// Sends `value` and wakes the receiver's registered task, if any.
    ///
    /// # Errors
    ///
    /// `value` back if the receiver is gone.
    pub(crate) fn send(&self, value: T) -> Result<(), SendError<T>> {
        self.tx.send(value)?;
        self.wake_on_drop.0.wake();
        Ok(())
    }
}

/// The receiving end of a [`waking_channel`].
pub(crate) struct WakingReceiver<T> {
    rx: Receiver<T>,
    waker: Arc<WakerCell>,
}

impl<T> WakingReceiver<T> {
    /// Blocks until a value comes; an error once every sender is gone.
    pub(crate) fn recv(&self) -> Result<T, RecvError> {
        self.rx.recv()
    }

    /// A value if one is there, `Ready(None)` once every sender is gone,
    /// else `Pending` with `waker` registered to be woken.
    pub(crate) fn poll_recv(&self, waker: &Waker) -> Poll<Option<T>> {
        match self.rx.try_recv() {
            Ok(value) => return Poll::Ready(Some(value)),
            Err(TryRecvError::Disconnected) => return Poll::Ready(None),
            Err(TryRecvError::Empty) => {}
        }
        // Registered before looking again: a sender either sent before
        // the second look (which sees the value) or takes the cell's lock
        // after `register` let go of it (and finds the waker).
        self.waker.register(waker);
        match self.rx.try_recv() {
            Ok(value) => Poll::Ready(Some(value)),
            Err(TryRecvError::Disconnected) => Poll::Ready(None),
            Err(TryRecvError::Empty) => Poll::Pending,
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

    /// Counts its wake-ups.
    struct Count(std::sync::atomic::AtomicUsize);

    impl std::task::Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
    }

    fn counting_waker() -> (Arc<Count>, Waker) {
        let count = Arc::new(Count(std::sync::atomic::AtomicUsize::new(0)));
        (count.clone(), Waker::from(count))
    }

    fn woken(count: &Count) -> usize {
        count.0.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// A pending poll registers its waker; a send from another thread wakes
    /// it and the next poll has the value; the last sender's drop wakes it
    /// and ends the channel. Values sent before a poll need no wake-up.
    #[test]
    fn a_waking_channel_wakes_the_future_that_waits() {
        let (tx, rx) = waking_channel::<u32>();
        let (count, waker) = counting_waker();
        assert_eq!(rx.poll_recv(&waker), Poll::Pending);
        let other = tx.clone();
        std::thread::spawn(move || other.send(7).unwrap())
            .join()
            .unwrap();
        // The send took the waker: the clone's drop had none left to wake.
        assert_eq!(woken(&count), 1, "the send did not wake the waiting future");
        assert_eq!(rx.poll_recv(&waker), Poll::Ready(Some(7)));
        tx.send(8).unwrap();
        assert_eq!(rx.recv(), Ok(8));
        assert_eq!(rx.poll_recv(&waker), Poll::Pending);
        let before = woken(&count);
        drop(tx);
        assert_eq!(woken(&count), before + 1, "the last drop did not wake");
        assert_eq!(rx.poll_recv(&waker), Poll::Ready(None));
        assert!(rx.recv().is_err());
    }
}
