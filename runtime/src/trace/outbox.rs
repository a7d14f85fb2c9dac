//! In a worker process: the subscriber that forwards the `tracing` events
//! of its tasks to the parent.
//!
//! A worker never runs `main`, so a subscriber the program installs there
//! does not exist in it. When the parent sends a `TRACE` frame with the
//! worker's end of its event socket, this process installs [`Forwarder`]
//! as its global default: each event at or above the level the parent
//! asks for (the most verbose one any of its subscribers wants, kept up
//! to date by later `TRACE` frames) becomes one record ([`proto::log`](crate::proto::log)),
//! with the batch and item the process is running. Spans are not
//! forwarded.
//!
//! The task is never blocked for long, and memory stays bounded:
//! - a record is at most [`MAX_RECORD`] bytes (long values are cut);
//! - it is sent at once if the socket has room; otherwise it waits in a
//!   queue of at most [`QUEUE_RECORDS`] records and [`QUEUE_BYTES`] bytes,
//!   which a thread of this process sends as the parent reads; past that,
//!   events are dropped and counted, and the count is sent when the queue
//!   has drained;
//! - after each batch, the serve loop waits at most [`FLUSH_LIMIT`] for the
//!   queue to drain ([`flush`]), so that the parent reads a batch's events
//!   before its answer and can name their items.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixDatagram;

use crate::sys::fdpass::NO_SIGPIPE;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use rustix::io::Errno;
use rustix::net::SendFlags;
use tracing::field::{Field, Visit};
use tracing::level_filters::LevelFilter;
use tracing::span::{Attributes, Id, Record as SpanRecord};
use tracing::{Event, Level, Metadata, Subscriber};
use tracing_core::subscriber::Interest;

use crate::proto::log::{self, MAX_RECORD, Writer};
use crate::proto::message;

/// Most records waiting to be sent.
pub(crate) const QUEUE_RECORDS: usize = 8192;
/// Most bytes of records waiting to be sent.
pub(crate) const QUEUE_BYTES: usize = 4 << 20;
/// Longest the serve loop waits after a batch for its events to be sent.
pub(crate) const FLUSH_LIMIT: Duration = Duration::from_millis(250);

/// The most verbose level to forward: 0 = none, 1 = ERROR … 5 = TRACE.
static LEVEL: AtomicU8 = AtomicU8::new(0);
static OUTBOX: OnceLock<Outbox> = OnceLock::new();

/// Carries out a `TRACE` frame (`frame` from its tag on; `fds` the
/// descriptors that came with it): the first one with a socket installs
/// the forwarding subscriber; each one sets the level.
///
/// # Errors
///
/// `InvalidData` for a malformed frame.
pub(crate) fn configure(frame: &[u8], fds: Vec<OwnedFd>) -> io::Result<()> {
    let (level, socket) = message::read_trace(frame)?;
    let old = LEVEL.swap(level, Ordering::Relaxed);
    let socket = if socket { fds.into_iter().next() } else { None };
    if let Some(fd) = socket {
        if OUTBOX.set(Outbox::new(UnixDatagram::from(fd))).is_ok() {
            // Fails only if something installed one first; it then keeps
            // its events.
            let _ = tracing::dispatcher::set_global_default(tracing::Dispatch::new(Forwarder));
            return Ok(());
        }
    }
    if old != level {
        tracing_core::callsite::rebuild_interest_cache();
    }
    Ok(())
}

/// Waits, at most [`FLUSH_LIMIT`], until the events queued so far are
/// sent.
pub(crate) fn flush() {
    let Some(outbox) = OUTBOX.get() else {
        return;
    };
    let deadline = Instant::now() + FLUSH_LIMIT;
    let mut q = outbox.lock();
    while q.busy() {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return;
        }
        q = outbox
            .idle
            .wait_timeout(q, left)
            .unwrap_or_else(|e| e.into_inner())
            .0;
    }
}

fn level_byte(level: &Level) -> u8 {
    match *level {
        Level::ERROR => 1,
        Level::WARN => 2,
        Level::INFO => 3,
        Level::DEBUG => 4,
        _ => 5,
    }
}

fn wanted(meta: &Metadata<'_>) -> bool {
    meta.is_event() && level_byte(meta.level()) <= LEVEL.load(Ordering::Relaxed)
}

/// The subscriber of a worker process that forwards events.
struct Forwarder;

impl Subscriber for Forwarder {
    fn register_callsite(&self, meta: &'static Metadata<'static>) -> Interest {
        if wanted(meta) {
            Interest::always()
        } else {
            Interest::never()
        }
    }

    fn max_level_hint(&self) -> Option<LevelFilter> {
        Some(match LEVEL.load(Ordering::Relaxed) {
            0 => LevelFilter::OFF,
            1 => LevelFilter::ERROR,
            2 => LevelFilter::WARN,
            3 => LevelFilter::INFO,
            4 => LevelFilter::DEBUG,
            _ => LevelFilter::TRACE,
        })
    }

    fn enabled(&self, meta: &Metadata<'_>) -> bool {
        wanted(meta)
    }

    fn new_span(&self, _: &Attributes<'_>) -> Id {
        // Spans are never enabled (`wanted`); an id is still owed.
        Id::from_u64(1)
    }

    fn record(&self, _: &Id, _: &SpanRecord<'_>) {}

    fn record_follows_from(&self, _: &Id, _: &Id) {}

    fn event(&self, event: &Event<'_>) {
        let Some(outbox) = OUTBOX.get() else {
            return;
        };
        thread_local! {
            static SCRATCH: RefCell<(Vec<u8>, String)> = const { RefCell::new((Vec::new(), String::new())) };
        }
        let _ = SCRATCH.try_with(|scratch| {
            // Busy: an event emitted while formatting another one's field.
            let Ok(mut scratch) = scratch.try_borrow_mut() else {
                return;
            };
            let (buf, text) = &mut *scratch;
            let meta = event.metadata();
            let (batch, item) = crate::exec::running();
            let mut writer = Writer::begin(
                buf,
                level_byte(meta.level()),
                batch,
                item,
                meta.target(),
                meta.module_path(),
                meta.file(),
                meta.line(),
            );
            event.record(&mut Fields {
                writer: &mut writer,
                text,
            });
            outbox.send(buf);
            if buf.capacity() > 2 * MAX_RECORD {
                *buf = Vec::new();
            }
        });
    }

    fn enter(&self, _: &Id) {}

    fn exit(&self, _: &Id) {}
}

/// Writes an event's fields into its record.
struct Fields<'w, 'b> {
    writer: &'w mut Writer<'b>,
    text: &'w mut String,
}

impl Visit for Fields<'_, '_> {
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.writer.f64(field.name(), value);
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.writer.i64(field.name(), value);
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.writer.u64(field.name(), value);
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.writer.bool(field.name(), value);
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        self.writer.str(field.name(), value);
    }

    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.writer
            .text(field.name(), self.text, format_args!("{value}"));
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.writer
            .text(field.name(), self.text, format_args!("{value:?}"));
    }
}

/// The worker's end of its event socket, and the records waiting for room
/// in it.
struct Outbox {
    socket: UnixDatagram,
    queue: Mutex<Queue>,
    /// The sender thread waits here for records.
    wake: Condvar,
    /// [`flush`] waits here for the queue to drain.
    idle: Condvar,
}

#[derive(Default)]
struct Queue {
    records: VecDeque<Box<[u8]>>,
    bytes: usize,
    /// Events dropped since the last count was sent.
    dropped: u64,
    /// The sender thread is sending a record.
    sending: bool,
    /// The sender thread runs.
    sender: bool,
    /// The sender thread could not be started: records are sent at once
    /// or dropped.
    no_sender: bool,
}

impl Queue {
    /// Records, or a count, are waiting or being sent.
    fn busy(&self) -> bool {
        !self.records.is_empty() || self.sending || self.dropped > 0
    }
}

impl Outbox {
    fn new(socket: UnixDatagram) -> Outbox {
        Outbox {
            socket,
            queue: Mutex::new(Queue::default()),
            wake: Condvar::new(),
            idle: Condvar::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Sends `record` now if the socket has room and nothing is waiting
    /// before it; else queues it, or drops it when the queue is full.
    fn send(&'static self, record: &[u8]) {
        let mut q = self.lock();
        if !q.busy() {
            let flags = SendFlags::DONTWAIT | NO_SIGPIPE;
            match rustix::net::send(&self.socket, record, flags) {
                Ok(_) => return,
                Err(Errno::AGAIN) if !q.no_sender => {}
                // The parent's end is gone: nobody to forward to.
                Err(_) => return,
            }
        }
        if q.records.len() >= QUEUE_RECORDS || q.bytes + record.len() > QUEUE_BYTES {
            q.dropped += 1;
            return;
        }
        if !q.sender {
            let started = std::thread::Builder::new()
                .name("multiproc-trace".to_owned())
                .spawn(move || self.run());
            if started.is_err() {
                q.no_sender = true;
                return;
            }
            q.sender = true;
        }
        q.bytes += record.len();
        q.records.push_back(record.into());
        self.wake.notify_one();
    }

    /// The sender thread: sends the queued records as the socket takes
    /// them, then the count of those dropped.
    fn run(&self) {
        let mut q = self.lock();
        loop {
            let record: Box<[u8]> = if let Some(r) = q.records.pop_front() {
                q.bytes -= r.len();
                r
            } else if q.dropped > 0 {
                Box::new(log::dropped(std::mem::take(&mut q.dropped)))
            } else {
                self.idle.notify_all();
                q = self.wake.wait(q).unwrap_or_else(|e| e.into_inner());
                continue;
            };
            q.sending = true;
            drop(q);
            // Waits for room; fails only once the parent's end is gone.
            while let Err(Errno::INTR) = rustix::net::send(&self.socket, &record, NO_SIGPIPE) {}
            q = self.lock();
            q.sending = false;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Sends `n` numbered records through an outbox whose socket nobody
    /// reads yet, then reads them all: in order, and those that did not
    /// fit counted as dropped.
    #[test]
    fn a_full_socket_queues_then_drops_and_counts() {
        let (child, parent) = UnixDatagram::pair().unwrap();
        let outbox: &'static Outbox = Box::leak(Box::new(Outbox::new(child)));
        let n = QUEUE_RECORDS as u64 * 3;
        let started = Instant::now();
        for i in 0..n {
            let mut record = vec![0xEE];
            record.extend_from_slice(&i.to_le_bytes());
            outbox.send(&record);
        }
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "sending never waits for the reader"
        );
        parent
            .set_read_timeout(Some(Duration::from_millis(500)))
            .unwrap();
        let (mut seen, mut dropped, mut last) = (0u64, 0u64, None);
        let mut buf = [0u8; 64];
        while let Ok(len) = parent.recv(&mut buf) {
            assert_eq!(len, 9);
            let value = u64::from_le_bytes(buf[1..9].try_into().unwrap());
            match buf[0] {
                0xEE => {
                    assert!(last.is_none_or(|l| value > l), "out of order");
                    last = Some(value);
                    seen += 1;
                }
                log::KIND_DROPPED => dropped += value,
                other => panic!("a record of kind {other}"),
            }
        }
        assert!(dropped > 0, "the queue is bounded");
        assert!(seen >= QUEUE_RECORDS as u64, "the queue holds {seen}");
        assert_eq!(seen + dropped, n, "every record is sent or counted");
        let q = outbox.lock();
        assert!(!q.busy() && q.bytes == 0);
    }
}
