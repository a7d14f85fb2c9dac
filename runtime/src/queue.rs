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
//!
//! Every process that holds the queue can write its header, so the header
//! is untrusted input: under the lock, each operation checks the words it
//! uses against the ring's size, which this process knows from the length
//! of its own mapping, and checks a message's length against the bytes in
//! the ring before it allocates or copies anything. A header that no
//! correct process writes fails the operation with
//! [`Corrupted`](ErrorKind::Corrupted); this process never panics, loops,
//! or allocates more than the ring over it.

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

/// Bytes of a message's length prefix in the ring: also the smallest a
/// message takes.
const LEN_PREFIX: u64 = 4;

/// The shortest a `*_timeout` or `try_*` call waits for the lock: long
/// enough for any correct holder, short enough that a process that holds
/// the lock and does not let go delays a timed call by little more than
/// its timeout.
const LOCK_GRACE: Duration = Duration::from_millis(10);

/// The header words that locate the messages, read under the lock and
/// checked by [`check_header`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Positions {
    head: u64,
    tail: u64,
    count: u64,
    closed: bool,
}

impl Positions {
    /// Bytes of messages in the ring (`check_header` made it at most the
    /// ring's size).
    fn used(self) -> u64 {
        self.tail - self.head
    }
}

/// Header words as another process may have left them: `RING_LEN`,
/// `HEAD`, `TAIL`, `COUNT`, `CLOSED`.
#[derive(Clone, Copy, Debug)]
struct Header {
    ring_len: u64,
    head: u64,
    tail: u64,
    count: u64,
    closed: u64,
}

/// Checks `h` against a ring of `ring` bytes (the mapping's own size, never
/// the shared `RING_LEN`), naming the first field no correct process
/// writes: `RING_LEN` must be `ring`, `CLOSED` 0 or 1, `HEAD <= TAIL`,
/// `TAIL - HEAD <= ring`, and `COUNT` zero exactly when the ring is empty
/// and at most one message per [`LEN_PREFIX`] bytes.
fn check_header(h: Header, ring: u64) -> std::result::Result<Positions, String> {
    if h.ring_len != ring {
        return Err(format!(
            "RING_LEN is {}, but the ring has {ring} bytes",
            h.ring_len
        ));
    }
    if h.closed > 1 {
        return Err(format!("CLOSED is {}, not 0 or 1", h.closed));
    }
    if h.head > h.tail {
        return Err(format!("HEAD ({}) is past TAIL ({})", h.head, h.tail));
    }
    let used = h.tail - h.head;
    if used > ring {
        return Err(format!(
            "TAIL - HEAD is {used} bytes, more than the ring's {ring}"
        ));
    }
    if h.count > used / LEN_PREFIX || (h.count == 0) != (used == 0) {
        return Err(format!("COUNT is {} for {used} bytes of messages", h.count));
    }
    Ok(Positions {
        head: h.head,
        tail: h.tail,
        count: h.count,
        closed: h.closed == 1,
    })
}

/// Checks the length prefix `len` of the message at `HEAD` against the
/// `used` bytes in the ring (at least [`LEN_PREFIX`]: `COUNT` is not zero);
/// returns the bytes the message takes, prefix included.
fn check_message(len: u32, used: u64) -> std::result::Result<u64, String> {
    let size = LEN_PREFIX + u64::from(len);
    if size > used {
        return Err(format!(
            "the message length at HEAD is {len}, but {} bytes follow it",
            used.saturating_sub(LEN_PREFIX)
        ));
    }
    Ok(size)
}

fn corrupted(why: String) -> Error {
    Error::new(ErrorKind::Corrupted(format!("queue: {why}")))
}

/// How a `get` ended without an error.
enum Got<T> {
    Item(T),
    /// Closed, and no message left.
    Closed,
    /// The deadline passed.
    TimedOut,
}

/// Longest sleep of a waiting `put` or `get` between looks at the queue.
const WAIT_SLICE: Duration = Duration::from_millis(100);

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
/// * Every process holding the queue can write its shared memory, so none
///   is trusted: a header or message length that no correct process
///   writes fails `get` and `put` with [`Corrupted`](ErrorKind::Corrupted)
///   instead of harming this one, and timed calls keep their timeouts
///   whatever the header says.
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
    /// Bytes of the ring: the mapping's length minus the header, which
    /// this process knows itself (the shared `RING_LEN` is only checked
    /// against it).
    ring: u64,
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
            ring: self.ring,
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
    /// A handle over `seg` (longer than [`RING`]), with its condvars made
    /// by `condvar` (`init` in the creator, `open` on the receiving side).
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
            ring: (seg.len() - RING) as u64,
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

    /// The header, checked against the ring; call with the lock held.
    fn positions(&self) -> Result<Positions> {
        check_header(
            Header {
                ring_len: self.word(RING_LEN),
                head: self.word(HEAD),
                tail: self.word(TAIL),
                count: self.word(COUNT),
                closed: self.word(CLOSED),
            },
            self.ring,
        )
        .map_err(corrupted)
    }

    /// Locks, repairing the count if a process died holding the lock.
    fn lock(&self) -> RawGuard<'_> {
        match self.mutex.lock() {
            Ok(guard) => guard,
            Err(died) => self.recovered(died),
        }
    }

    /// Locks, waiting until `deadline` (but at least [`LOCK_GRACE`]);
    /// `None` if the lock stayed taken. Without a deadline, as
    /// [`lock`](Queue::lock).
    fn lock_until(&self, deadline: Option<Instant>) -> Option<RawGuard<'_>> {
        let Some(deadline) = deadline else {
            return Some(self.lock());
        };
        let left = deadline
            .saturating_duration_since(Instant::now())
            .max(LOCK_GRACE);
        match self.mutex.lock_timeout(left) {
            Ok(guard) => guard,
            Err(died) => Some(self.recovered(died)),
        }
    }

    fn recovered<'a>(&self, died: OwnerDied<'a>) -> RawGuard<'a> {
        let guard = OwnerDied::into_guard(died);
        self.recount();
        guard
    }

    /// Recomputes the message count by walking the ring (after a death).
    /// A walk that meets a corrupted header or message length leaves the
    /// count alone: the next operation reports the corruption.
    fn recount(&self) {
        let Ok(p) = check_header(
            Header {
                ring_len: self.word(RING_LEN),
                head: self.word(HEAD),
                tail: self.word(TAIL),
                // Any count that fits the bytes: it is what is recomputed.
                count: u64::from(self.word(TAIL) != self.word(HEAD)),
                closed: self.word(CLOSED),
            },
            self.ring,
        ) else {
            return;
        };
        let mut at = p.head;
        let mut count = 0;
        // Each step takes at least LEN_PREFIX bytes: at most used / 4 steps.
        while at < p.tail {
            let mut len = [0u8; 4];
            self.read_ring(at, &mut len);
            let Ok(size) = check_message(u32::from_le_bytes(len), p.tail - at) else {
                return;
            };
            at += size;
            count += 1;
        }
        self.set(COUNT, count);
    }

    /// Copies `dst.len()` bytes (at most the ring's size) from ring
    /// position `pos`.
    fn read_ring(&self, pos: u64, dst: &mut [u8]) {
        debug_assert!(dst.len() as u64 <= self.ring);
        let start = (pos % self.ring) as usize;
        let first = dst.len().min(self.ring as usize - start);
        self.seg.copy_out(RING + start, &mut dst[..first]);
        if first < dst.len() {
            self.seg.copy_out(RING, &mut dst[first..]);
        }
    }

    /// Copies `src` (at most the ring's size) to ring position `pos`.
    fn write_ring(&self, pos: u64, src: &[u8]) {
        debug_assert!(src.len() as u64 <= self.ring);
        let start = (pos % self.ring) as usize;
        let first = src.len().min(self.ring as usize - start);
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
        self.set(counter, self.word(counter).saturating_add(1));
        // In slices: the sleeper counts that decide whether a notify is
        // sent are words another process can rewrite, so a wake-up may
        // never come; the callers re-check their condition after each.
        let woken = match deadline {
            Some(d) if d <= Instant::now() => false,
            _ => cv.wait_sliced(guard, deadline, WAIT_SLICE),
        };
        // Atomically: a timed wait may return without the lock (its holder
        // kept it past the deadline), and then returns at once.
        let _ = self.seg.atomic_u64(counter).fetch_update(
            std::sync::atomic::Ordering::Relaxed,
            std::sync::atomic::Ordering::Relaxed,
            |n| Some(n.saturating_sub(1)),
        );
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

    /// Number of messages waiting; `0` if the queue's shared header is
    /// corrupted (then `get` and `put` fail with
    /// [`Corrupted`](ErrorKind::Corrupted)).
    pub fn len(&self) -> usize {
        let _guard = self.lock();
        self.positions().map_or(0, |p| p.count as usize)
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
    /// [`task_done`](Queue::task_done) (`JoinableQueue.join`). A process
    /// that corrupts the queue's count of unfinished messages can make this
    /// wait forever, as one that never calls `task_done` can.
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
    /// buffer of `bytes` (at least 64) for their encoded form.
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
        crate::codec::encode_into(&mut buf, item).map_err(|message| {
            Error::new(ErrorKind::MessageCodec {
                what: "queue",
                encode: true,
                type_name: type_name::<T>(),
                message,
            })
        })?;
        let len = buf.len() - 4;
        if (buf.len() as u64) > self.ring {
            return Err(Error::new(ErrorKind::MessageCodec {
                what: "queue",
                encode: true,
                type_name: type_name::<T>(),
                message: format!(
                    "a {len}-byte message does not fit the queue's {}-byte buffer",
                    self.ring
                ),
            }));
        }
        buf[..4].copy_from_slice(&(len as u32).to_le_bytes());
        Ok(buf)
    }

    fn put_until(&self, item: &T, deadline: Option<Instant>) -> Result<bool> {
        let frame = self.encode(item)?;
        let need = frame.len() as u64;
        let Some(guard) = self.lock_until(deadline) else {
            return Ok(false);
        };
        let p = loop {
            let p = self.positions()?;
            if p.closed {
                return Err(closed_error());
            }
            let max = self.word(MAX_ITEMS);
            let room = max == 0 || p.count < max;
            if room && self.ring - p.used() >= need {
                break p;
            }
            if !self.wait_on(&self.not_full, WAIT_NOT_FULL, &guard, deadline) && deadline.is_some()
            {
                return Ok(false);
            }
        };
        let tail = p
            .tail
            .checked_add(need)
            .ok_or_else(|| corrupted(format!("TAIL ({}) is at its end", p.tail)))?;
        let unfinished = self
            .word(UNFINISHED)
            .checked_add(1)
            .ok_or_else(|| corrupted("UNFINISHED is at its end".to_owned()))?;
        self.write_ring(p.tail, &frame);
        self.set(TAIL, tail); // publishes the message
        self.set(COUNT, p.count + 1);
        self.set(UNFINISHED, unfinished);
        self.notify(&self.not_empty, WAIT_NOT_EMPTY, false);
        Ok(true)
    }

    /// Adds a message, waiting while the queue is full.
    ///
    /// # Errors
    ///
    /// [`Disconnected`](ErrorKind::Disconnected) if the queue is closed;
    /// [`MessageCodec`](ErrorKind::MessageCodec) if `item` cannot be encoded
    /// or is larger than the buffer; [`Corrupted`](ErrorKind::Corrupted) if
    /// another process left the queue's shared header in a state no correct
    /// process writes (the message names the field).
    pub fn put(&self, item: &T) -> Result<()> {
        self.put_until(item, None).map(|_| ())
    }

    /// Adds a message if there is room now; `Ok(false)` if the queue is full
    /// (or its lock stayed taken for a few milliseconds).
    ///
    /// # Errors
    ///
    /// As [`put`](Queue::put).
    pub fn try_put(&self, item: &T) -> Result<bool> {
        self.put_until(item, Some(Instant::now()))
    }

    /// Adds a message, waiting at most `timeout` for room; `Ok(false)` if
    /// there was none. The limit holds whatever other processes wrote into
    /// the queue's header; waiting for the queue's lock counts against it
    /// (with a floor of a few milliseconds).
    ///
    /// # Errors
    ///
    /// As [`put`](Queue::put).
    pub fn put_timeout(&self, item: &T, timeout: Duration) -> Result<bool> {
        self.put_until(item, Instant::now().checked_add(timeout))
    }

    /// The next message, or why there is none: closed and drained, or the
    /// deadline passed.
    fn get_until(&self, deadline: Option<Instant>) -> Result<Got<T>> {
        let body = {
            let Some(guard) = self.lock_until(deadline) else {
                return Ok(Got::TimedOut);
            };
            let p = loop {
                let p = self.positions()?;
                if p.count > 0 {
                    break p;
                }
                if p.closed {
                    return Ok(Got::Closed);
                }
                if !self.wait_on(&self.not_empty, WAIT_NOT_EMPTY, &guard, deadline)
                    && deadline.is_some()
                {
                    return Ok(Got::TimedOut);
                }
            };
            let mut len = [0u8; 4];
            self.read_ring(p.head, &mut len);
            let size = check_message(u32::from_le_bytes(len), p.used()).map_err(corrupted)?;
            // At most the ring's size: `size <= used <= ring`.
            let mut body = vec![0u8; (size - LEN_PREFIX) as usize];
            self.read_ring(p.head + LEN_PREFIX, &mut body);
            self.set(HEAD, p.head + size); // takes the message
            self.set(COUNT, p.count - 1);
            self.notify(&self.not_full, WAIT_NOT_FULL, true);
            body
        };
        crate::codec::decode_exact(&body)
            .map(Got::Item)
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
    /// cannot be decoded (it is consumed); [`Corrupted`](ErrorKind::Corrupted)
    /// if another process left the queue's shared header, or the length of
    /// the next message, in a state no correct process writes (the message
    /// names the field; nothing is consumed).
    pub fn get(&self) -> Result<T> {
        match self.get_until(None)? {
            Got::Item(v) => Ok(v),
            Got::Closed | Got::TimedOut => Err(closed_error()),
        }
    }

    /// The next message if one is waiting, else `Ok(None)` at once (also
    /// when closed and empty: check [`is_closed`](Queue::is_closed), or
    /// when the queue's lock stayed taken for a few milliseconds).
    ///
    /// # Errors
    ///
    /// As [`get`](Queue::get).
    pub fn try_get(&self) -> Result<Option<T>> {
        match self.get_until(Some(Instant::now()))? {
            Got::Item(v) => Ok(Some(v)),
            Got::Closed | Got::TimedOut => Ok(None),
        }
    }

    /// Waits at most `timeout` for a message; `Ok(None)` if none came. The
    /// limit holds whatever other processes wrote into the queue's header;
    /// waiting for the queue's lock counts against it (with a floor of a
    /// few milliseconds).
    ///
    /// # Errors
    ///
    /// As [`get`](Queue::get), including `Disconnected` when the queue is
    /// closed and empty.
    pub fn get_timeout(&self, timeout: Duration) -> Result<Option<T>> {
        match self.get_until(Instant::now().checked_add(timeout))? {
            Got::Item(v) => Ok(Some(v)),
            Got::Closed => Err(closed_error()),
            Got::TimedOut => Ok(None),
        }
    }

    /// Iterates over messages until the queue is closed and drained. A
    /// message that cannot be decoded is an `Err` item and iteration goes
    /// on; a [`Corrupted`](ErrorKind::Corrupted) queue is an `Err` item
    /// that ends it.
    pub fn iter(&self) -> impl Iterator<Item = Result<T>> + '_ {
        let mut ended = false;
        std::iter::from_fn(move || {
            if ended {
                return None;
            }
            match self.get_until(None) {
                Ok(Got::Item(v)) => Some(Ok(v)),
                Ok(Got::Closed | Got::TimedOut) => None,
                Err(e) => {
                    ended = e.is_corrupted();
                    Some(Err(e))
                }
            }
        })
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
        if seg.len() <= RING || !seg.is_writable() {
            return Err(D::Error::custom("not a multiproc queue"));
        }
        let mutex = RawMutex::open(&seg, MUTEX).map_err(D::Error::custom)?;
        Ok(Queue::assemble(seg, mutex, RawCondvar::open))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Every header word a process can scribble on, by offset.
    const WORDS: [usize; 10] = [
        HEAD,
        TAIL,
        COUNT,
        MAX_ITEMS,
        UNFINISHED,
        CLOSED,
        RING_LEN,
        WAIT_NOT_EMPTY,
        WAIT_NOT_FULL,
        WAIT_ALL_DONE,
    ];

    fn corruption(e: &Error) -> &str {
        match e.kind() {
            ErrorKind::Corrupted(why) => why,
            _ => panic!("not Corrupted: {e}"),
        }
    }

    #[test]
    fn each_broken_word_is_named() {
        let cases: [(&[(usize, u64)], &str); 5] = [
            (&[(RING_LEN, 0)], "RING_LEN"),
            (&[(HEAD, 9), (TAIL, 5)], "HEAD"),
            (&[(TAIL, 1 << 40)], "TAIL - HEAD"),
            (&[(COUNT, 0)], "COUNT"),
            (&[(CLOSED, 7)], "CLOSED"),
        ];
        for (writes, field) in cases {
            let q: Queue<u64> = Queue::with_buffer(0, 256).unwrap();
            q.put(&1).unwrap();
            for &(at, value) in writes {
                q.set(at, value);
            }
            let e = q.get_timeout(Duration::from_millis(10)).unwrap_err();
            assert!(corruption(&e).contains(field), "{e}");
            let e = q.put_timeout(&2, Duration::from_millis(10)).unwrap_err();
            assert!(corruption(&e).contains(field), "{e}");
            assert_eq!(q.len(), 0);
        }
    }

    #[test]
    fn a_message_length_past_the_ring_is_refused_before_allocating() {
        let q: Queue<u64> = Queue::with_buffer(0, 256).unwrap();
        q.put(&1).unwrap();
        q.seg.copy_in(RING, &u32::MAX.to_le_bytes());
        let e = q.try_get().unwrap_err();
        assert!(corruption(&e).contains("message length"), "{e}");
        // Nothing was consumed: the same error again.
        assert!(q.try_get().unwrap_err().is_corrupted());
    }

    #[test]
    fn messages_wrap_around_the_ring() {
        let q: Queue<Vec<u8>> = Queue::with_buffer(0, 64).unwrap();
        for round in 0..50u8 {
            let m = vec![round; usize::from(round % 40)];
            q.put(&m).unwrap();
            assert_eq!(q.get().unwrap(), m);
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        /// The header check never panics, and what it accepts is a ring
        /// that reads stay inside.
        #[test]
        fn check_header_accepts_only_consistent_words(
            ring_len in prop_oneof![Just(256u64), any::<u64>()],
            head in any::<u64>(),
            tail in prop_oneof![any::<u64>(), (0u64..300)],
            count in prop_oneof![any::<u64>(), (0u64..80)],
            closed in prop_oneof![0u64..3, any::<u64>()],
            len in any::<u32>(),
        ) {
            let ring = 256;
            let tail = if tail < 300 { head.saturating_add(tail) } else { tail };
            let h = Header { ring_len, head, tail, count, closed };
            if let Ok(p) = check_header(h, ring) {
                prop_assert!(ring_len == ring && closed <= 1);
                prop_assert!(p.head <= p.tail && p.used() <= ring);
                prop_assert!(p.count * LEN_PREFIX <= p.used());
                prop_assert_eq!(p.count == 0, p.used() == 0);
                if p.count > 0 {
                    if let Ok(size) = check_message(len, p.used()) {
                        prop_assert!(size <= p.used() && size >= LEN_PREFIX);
                    }
                }
            }
        }

        /// Whatever another process writes into the header and the ring,
        /// `get`, `put` and the recount after a death return (an error, a
        /// message, nothing) and never panic; a fresh queue still works.
        #[test]
        fn scribbled_queues_fail_cleanly(
            before in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..40), 0..6),
            writes in proptest::collection::vec((0usize..WORDS.len(), any::<u64>(), any::<bool>()), 0..6),
            ring_bytes in proptest::collection::vec((0usize..128, any::<u8>()), 0..16),
        ) {
            let q: Queue<Vec<u8>> = Queue::with_buffer(0, 128).unwrap();
            for m in &before {
                let _ = q.try_put(m).unwrap();
            }
            for &(word, value, small) in &writes {
                // Small values hit the interesting edges more often.
                q.set(WORDS[word], if small { value % 300 } else { value });
            }
            for &(at, byte) in &ring_bytes {
                q.seg.copy_in(RING + at, &[byte]);
            }
            let ok = |r: Option<&Error>| r.is_none_or(|e| matches!(
                e.kind(),
                ErrorKind::Corrupted(_) | ErrorKind::MessageCodec { .. } | ErrorKind::Disconnected { .. }
            ));
            for _ in 0..before.len() + 1 {
                let t = Instant::now();
                let got = q.get_timeout(Duration::from_millis(1));
                prop_assert!(t.elapsed() < Duration::from_secs(2));
                if let Ok(Some(m)) = &got {
                    prop_assert!(m.len() as u64 <= q.ring);
                }
                prop_assert!(ok(got.as_ref().err()), "{:?}", got.err());
            }
            let put = q.put_timeout(&vec![1, 2, 3], Duration::from_millis(1));
            prop_assert!(ok(put.as_ref().err()), "{:?}", put.err());
            {
                let _guard = q.lock();
                q.recount();
            }
            let _ = q.len();
            let fresh: Queue<Vec<u8>> = Queue::with_buffer(0, 128).unwrap();
            fresh.put(&vec![7; 9]).unwrap();
            prop_assert_eq!(fresh.get().unwrap(), vec![7; 9]);
        }

        /// What is put comes out, in order, across the ring's end; the
        /// recount agrees with the count.
        #[test]
        fn messages_round_trip(
            messages in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..50), 0..40),
        ) {
            let q: Queue<Vec<u8>> = Queue::with_buffer(0, 200).unwrap();
            let mut pending = std::collections::VecDeque::new();
            for m in messages {
                while !q.try_put(&m).unwrap() {
                    prop_assert_eq!(Some(q.get().unwrap()), pending.pop_front());
                }
                pending.push_back(m);
                let count = q.len();
                {
                    let _guard = q.lock();
                    q.recount();
                }
                prop_assert_eq!(q.len(), count);
            }
            while let Some(m) = pending.pop_front() {
                prop_assert_eq!(q.get().unwrap(), m);
            }
            prop_assert!(q.try_get().unwrap().is_none());
        }
    }
}
