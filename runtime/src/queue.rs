//! [`Queue`]: a multi-producer, multi-consumer queue between any number of
//! processes, Python's `multiprocessing.Queue` and `JoinableQueue`.
//!
//! The buffer is a ring of encoded messages in a shared-memory segment,
//! guarded by a robust process-shared mutex with futex condition variables
//! (`shm::sync`). A `put` or `get` is a lock, a copy and an unlock — no
//! broker thread, no system call unless somebody has to wait — which is why
//! the buffer lives in shared memory rather than behind a socket (measured
//! in `benches/`).
//!
//! A process that dies while holding the lock cannot corrupt the queue:
//! data is copied before the position that publishes it is advanced, and
//! the next locker recounts the messages from the ring.

use std::any::type_name;
use std::marker::PhantomData;
use std::time::{Duration, Instant};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::error::{Error, ErrorKind, Result};
use crate::shm::{OwnerDied, RawCondvar, RawGuard, RawMutex, Segment, shm_error};

// Layout of the segment.
const MUTEX: usize = 0;
const NOT_EMPTY: usize = 64;
const NOT_FULL: usize = 128;
const ALL_DONE: usize = 192;
const HEAD: usize = 256; // bytes consumed, ever
const TAIL: usize = 264; // bytes produced, ever
const COUNT: usize = 272; // messages in the ring
const MAX_ITEMS: usize = 280; // 0: no limit
const UNFINISHED: usize = 288; // put and not yet task_done
const CLOSED: usize = 296;
const RING_LEN: usize = 304;
const WAIT_NOT_EMPTY: usize = 312; // sleepers, so that notify can be skipped
const WAIT_NOT_FULL: usize = 320;
const WAIT_ALL_DONE: usize = 328;
const RING: usize = 512;

/// Buffer of a queue made with [`Queue::unbounded`] or [`Queue::bounded`].
pub const DEFAULT_BUFFER_BYTES: usize = 16 << 20;

/// A queue shared by processes: put in one, get in another.
///
/// Handles are cheap clones of one queue; pass them to workers as ordinary
/// `#[worker]` arguments (the shared memory travels as a descriptor, not as
/// a copy). Messages are any serde type, encoded with postcard.
///
/// * [`close`](Queue::close) ends the stream: puts fail from then on, and
///   consumers drain what is left and then see the end — iterating a queue
///   stops there, so no sentinel values are needed.
/// * `JoinableQueue` semantics are built in: every `put` counts as an
///   unfinished task until a consumer calls [`task_done`](Queue::task_done);
///   [`join`](Queue::join) waits until all are done.
///
/// ```ignore
/// let q: Queue<u64> = Queue::bounded(1000)?;
/// let consumer = Process::spawn(sum_all, q.clone())?;   // fn sum_all(q: Queue<u64>) -> u64
/// for i in 0..10_000 { q.put(&i)?; }
/// q.close();
/// assert_eq!(consumer.join()?, 49_995_000);
/// ```
pub struct Queue<T> {
    seg: Segment,
    mutex: RawMutex,
    not_empty: RawCondvar,
    not_full: RawCondvar,
    all_done: RawCondvar,
    _items: PhantomData<fn(T) -> T>,
}

impl<T> Clone for Queue<T> {
    fn clone(&self) -> Self {
        Queue {
            seg: self.seg.clone(),
            mutex: self.mutex.clone(),
            not_empty: self.not_empty.clone(),
            not_full: self.not_full.clone(),
            all_done: self.all_done.clone(),
            _items: PhantomData,
        }
    }
}

impl<T> std::fmt::Debug for Queue<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Queue")
            .field("len", &self.word(COUNT))
            .field("closed", &self.is_closed())
            .finish()
    }
}

fn closed_error() -> Error {
    Error::new(ErrorKind::Disconnected { what: "queue" })
}

impl<T> Queue<T> {
    /// A handle over `seg`, with its condvars made by `condvar` (`init` in
    /// the creator, `open` on the receiving side).
    fn assemble(
        seg: Segment,
        mutex: RawMutex,
        condvar: fn(&Segment, usize) -> RawCondvar,
    ) -> Queue<T> {
        Queue {
            not_empty: condvar(&seg, NOT_EMPTY),
            not_full: condvar(&seg, NOT_FULL),
            all_done: condvar(&seg, ALL_DONE),
            mutex,
            seg,
            _items: PhantomData,
        }
    }

    fn word(&self, offset: usize) -> u64 {
        self.seg
            .atomic_u64(offset)
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    fn set(&self, offset: usize, value: u64) {
        self.seg
            .atomic_u64(offset)
            .store(value, std::sync::atomic::Ordering::Relaxed);
    }

    fn ring_len(&self) -> u64 {
        self.word(RING_LEN)
    }

    /// Locks, repairing the count if a process died holding the lock.
    fn lock(&self) -> RawGuard<'_> {
        match self.mutex.lock() {
            Ok(guard) => guard,
            Err(died) => {
                let guard = OwnerDied::into_guard(died);
                self.recount();
                guard
            }
        }
    }

    /// Recomputes the message count by walking the ring (after a death).
    fn recount(&self) {
        let (mut at, tail) = (self.word(HEAD), self.word(TAIL));
        let mut count = 0;
        while at < tail {
            let mut len = [0u8; 4];
            self.read_ring(at, &mut len);
            at += 4 + u64::from(u32::from_le_bytes(len));
            count += 1;
        }
        self.set(COUNT, count);
    }

    fn read_ring(&self, pos: u64, dst: &mut [u8]) {
        let ring = self.ring_len();
        let start = (pos % ring) as usize;
        let first = dst.len().min(ring as usize - start);
        self.seg.copy_out(RING + start, &mut dst[..first]);
        if first < dst.len() {
            let rest = dst.len() - first;
            self.seg.copy_out(RING, &mut dst[first..first + rest]);
        }
    }

    fn write_ring(&self, pos: u64, src: &[u8]) {
        let ring = self.ring_len();
        let start = (pos % ring) as usize;
        let first = src.len().min(ring as usize - start);
        self.seg.copy_in(RING + start, &src[..first]);
        if first < src.len() {
            self.seg.copy_in(RING, &src[first..]);
        }
    }

    fn wait_on(
        &self,
        cv: &RawCondvar,
        counter: usize,
        guard: &RawGuard<'_>,
        deadline: Option<Instant>,
    ) -> bool {
        self.set(counter, self.word(counter) + 1);
        let woken = match deadline {
            None => {
                cv.wait(guard);
                true
            }
            Some(d) => {
                let left = d.saturating_duration_since(Instant::now());
                !left.is_zero() && cv.wait_timeout(guard, left)
            }
        };
        self.set(counter, self.word(counter).saturating_sub(1));
        woken
    }

    fn notify(&self, cv: &RawCondvar, counter: usize, all: bool) {
        if self.word(counter) > 0 {
            if all {
                cv.notify_all();
            } else {
                cv.notify_one();
            }
        }
    }

    /// Closes the queue: later puts fail with
    /// [`Disconnected`](ErrorKind::Disconnected); consumers get what is left,
    /// then the end. Closing twice is harmless.
    pub fn close(&self) {
        let _guard = self.lock();
        self.set(CLOSED, 1);
        self.notify(&self.not_empty, WAIT_NOT_EMPTY, true);
        self.notify(&self.not_full, WAIT_NOT_FULL, true);
    }

    /// `true` once [`close`](Queue::close) was called (by any process).
    pub fn is_closed(&self) -> bool {
        let _guard = self.lock();
        self.word(CLOSED) != 0
    }

    /// Number of messages waiting.
    pub fn len(&self) -> usize {
        let _guard = self.lock();
        self.word(COUNT) as usize
    }

    /// `true` if no message is waiting.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Marks one message taken with `get` as processed (`JoinableQueue`).
    ///
    /// # Errors
    ///
    /// [`Protocol`](ErrorKind::Protocol) if called more times than messages
    /// were put.
    pub fn task_done(&self) -> Result<()> {
        let _guard = self.lock();
        let unfinished = self.word(UNFINISHED);
        if unfinished == 0 {
            return Err(Error::new(ErrorKind::Protocol(
                "task_done() called more times than messages were put".to_owned(),
            )));
        }
        self.set(UNFINISHED, unfinished - 1);
        if unfinished == 1 {
            self.notify(&self.all_done, WAIT_ALL_DONE, true);
        }
        Ok(())
    }

    /// Waits until every message put so far has been marked with
    /// [`task_done`](Queue::task_done) (`JoinableQueue.join`).
    pub fn join(&self) {
        let guard = self.lock();
        while self.word(UNFINISHED) > 0 {
            self.wait_on(&self.all_done, WAIT_ALL_DONE, &guard, None);
        }
    }
}

impl<T: Serialize + DeserializeOwned> Queue<T> {
    /// A queue that holds at most `max_items` messages; `put` waits while it
    /// is full.
    ///
    /// # Errors
    ///
    /// [`SharedMemory`](ErrorKind::SharedMemory) if the segment cannot be
    /// created.
    ///
    /// # Panics
    ///
    /// If `max_items` is zero.
    pub fn bounded(max_items: usize) -> Result<Queue<T>> {
        assert!(
            max_items > 0,
            "a bounded queue needs room for at least one message"
        );
        Queue::with_buffer(max_items, DEFAULT_BUFFER_BYTES)
    }

    /// A queue without a limit on the number of messages. Its buffer still
    /// has a size ([`DEFAULT_BUFFER_BYTES`] of encoded messages; memory is
    /// only used as it fills): `put` waits when the buffer is full.
    ///
    /// # Errors
    ///
    /// As [`bounded`](Queue::bounded).
    pub fn unbounded() -> Result<Queue<T>> {
        Queue::with_buffer(0, DEFAULT_BUFFER_BYTES)
    }

    /// A queue with at most `max_items` messages (`0`: no limit) and a
    /// buffer of `bytes` for their encoded form.
    ///
    /// # Errors
    ///
    /// As [`bounded`](Queue::bounded).
    pub fn with_buffer(max_items: usize, bytes: usize) -> Result<Queue<T>> {
        let bytes = bytes.max(64);
        let seg = Segment::create(c"multiproc-queue", RING + bytes).map_err(shm_error)?;
        let mutex = RawMutex::init(&seg, MUTEX).map_err(shm_error)?;
        let queue = Queue::assemble(seg, mutex, RawCondvar::init);
        queue.set(MAX_ITEMS, max_items as u64);
        queue.set(RING_LEN, bytes as u64);
        Ok(queue)
    }

    fn encode(&self, item: &T) -> Result<Vec<u8>> {
        let mut buf = vec![0u8; 4];
        postcard::to_io(item, &mut buf).map_err(|e| {
            Error::new(ErrorKind::MessageCodec {
                what: "queue",
                encode: true,
                type_name: type_name::<T>(),
                message: e.to_string(),
            })
        })?;
        let len = buf.len() - 4;
        if (buf.len() as u64) > self.ring_len() {
            return Err(Error::new(ErrorKind::MessageCodec {
                what: "queue",
                encode: true,
                type_name: type_name::<T>(),
                message: format!(
                    "a {len}-byte message does not fit the queue's {}-byte buffer",
                    self.ring_len()
                ),
            }));
        }
        buf[..4].copy_from_slice(&(len as u32).to_le_bytes());
        Ok(buf)
    }

    fn put_until(&self, item: &T, deadline: Option<Instant>) -> Result<bool> {
        let frame = self.encode(item)?;
        let need = frame.len() as u64;
        let guard = self.lock();
        loop {
            if self.word(CLOSED) != 0 {
                return Err(closed_error());
            }
            let max = self.word(MAX_ITEMS);
            let room = max == 0 || self.word(COUNT) < max;
            let free = self.ring_len() - (self.word(TAIL) - self.word(HEAD));
            if room && free >= need {
                break;
            }
            if !self.wait_on(&self.not_full, WAIT_NOT_FULL, &guard, deadline) && deadline.is_some()
            {
                return Ok(false);
            }
        }
        let tail = self.word(TAIL);
        self.write_ring(tail, &frame);
        self.set(TAIL, tail + need); // publishes the message
        self.set(COUNT, self.word(COUNT) + 1);
        self.set(UNFINISHED, self.word(UNFINISHED) + 1);
        self.notify(&self.not_empty, WAIT_NOT_EMPTY, false);
        Ok(true)
    }

    /// Adds a message, waiting while the queue is full.
    ///
    /// # Errors
    ///
    /// [`Disconnected`](ErrorKind::Disconnected) if the queue is closed;
    /// [`MessageCodec`](ErrorKind::MessageCodec) if `item` cannot be encoded
    /// or is larger than the buffer.
    pub fn put(&self, item: &T) -> Result<()> {
        self.put_until(item, None).map(|_| ())
    }

    /// Adds a message if there is room now; `Ok(false)` if the queue is full.
    ///
    /// # Errors
    ///
    /// As [`put`](Queue::put).
    pub fn try_put(&self, item: &T) -> Result<bool> {
        self.put_until(item, Some(Instant::now()))
    }

    /// Adds a message, waiting at most `timeout` for room; `Ok(false)` if
    /// there was none.
    ///
    /// # Errors
    ///
    /// As [`put`](Queue::put).
    pub fn put_timeout(&self, item: &T, timeout: Duration) -> Result<bool> {
        self.put_until(item, Instant::now().checked_add(timeout))
    }

    /// `Ok(Some)` with a message, `Ok(None)` when closed and drained (or,
    /// with a deadline, when it passed).
    fn get_until(&self, deadline: Option<Instant>) -> Result<Option<T>> {
        let frame = {
            let guard = self.lock();
            loop {
                if self.word(COUNT) > 0 {
                    break;
                }
                if self.word(CLOSED) != 0 {
                    return Ok(None);
                }
                if !self.wait_on(&self.not_empty, WAIT_NOT_EMPTY, &guard, deadline)
                    && deadline.is_some()
                {
                    return Ok(None);
                }
            }
            let head = self.word(HEAD);
            let mut len = [0u8; 4];
            self.read_ring(head, &mut len);
            let len = u32::from_le_bytes(len) as u64;
            let mut frame = vec![0u8; len as usize];
            self.read_ring(head + 4, &mut frame);
            self.set(HEAD, head + 4 + len); // takes the message
            self.set(COUNT, self.word(COUNT) - 1);
            self.notify(&self.not_full, WAIT_NOT_FULL, true);
            frame
        };
        crate::codec::decode_exact(&frame)
            .map(Some)
            .map_err(|message| {
                Error::new(ErrorKind::MessageCodec {
                    what: "queue",
                    encode: false,
                    type_name: type_name::<T>(),
                    message,
                })
            })
    }

    /// Takes the next message, waiting while the queue is empty.
    ///
    /// # Errors
    ///
    /// [`Disconnected`](ErrorKind::Disconnected) once the queue is closed
    /// and empty; [`MessageCodec`](ErrorKind::MessageCodec) if the message
    /// cannot be decoded (it is consumed).
    pub fn get(&self) -> Result<T> {
        self.get_until(None)?.ok_or_else(closed_error)
    }

    /// The next message if one is waiting, else `Ok(None)` at once (also
    /// when closed and empty: check [`is_closed`](Queue::is_closed)).
    ///
    /// # Errors
    ///
    /// As [`get`](Queue::get).
    pub fn try_get(&self) -> Result<Option<T>> {
        self.get_until(Some(Instant::now()))
    }

    /// Waits at most `timeout` for a message; `Ok(None)` if none came.
    ///
    /// # Errors
    ///
    /// As [`get`](Queue::get), including `Disconnected` when the queue is
    /// closed and empty.
    pub fn get_timeout(&self, timeout: Duration) -> Result<Option<T>> {
        match self.get_until(Instant::now().checked_add(timeout))? {
            Some(v) => Ok(Some(v)),
            None if self.is_closed() && self.is_empty() => Err(closed_error()),
            None => Ok(None),
        }
    }

    /// Iterates over messages until the queue is closed and drained.
    pub fn iter(&self) -> impl Iterator<Item = Result<T>> + '_ {
        std::iter::from_fn(move || self.get_until(None).transpose())
    }
}

impl<T> Serialize for Queue<T> {
    fn serialize<S: Serializer>(&self, serializer: S) -> std::result::Result<S::Ok, S::Error> {
        self.seg.serialize(serializer)
    }
}

impl<'de, T> Deserialize<'de> for Queue<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> std::result::Result<Self, D::Error> {
        use serde::de::Error as _;
        let seg = Segment::deserialize(deserializer)?;
        if seg.len() <= RING {
            return Err(D::Error::custom("not a multiproc queue"));
        }
        let mutex = RawMutex::open(&seg, MUTEX).map_err(D::Error::custom)?;
        Ok(Queue::assemble(seg, mutex, RawCondvar::open))
    }
}
