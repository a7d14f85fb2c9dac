//! The parent's end of a worker's event socket: reads the records of the
//! events a task emitted in the worker process, checks each
//! ([`proto::log::read`](crate::proto::log::read)), and emits it again
//! into the dispatcher of the call that sent the item, inside that call's
//! span, with the fields `pid` and `item` added (see [`super::callsite`]
//! for the callsites).
//!
//! The socket is a datagram socket pair made for each worker process; the
//! child's end goes to it in a `TRACE` frame. Its records are the child's
//! word: one that breaks a rule of [`proto::log`](crate::proto::log) is a
//! protocol breach, and one may name any batch and item, so the item is
//! believed only for a batch in flight and within its count. Memory stays
//! bounded: one buffer of [`MAX_RECORD`] bytes here, and the kernel's send
//! buffer on the child's side.

use std::io::{self, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::net::{UnixDatagram, UnixStream};
use std::time::{Duration, Instant};

use rustix::event::{PollFd, PollFlags, Timespec};
use rustix::io::Errno;
use rustix::net::RecvFlags;
use tracing::level_filters::LevelFilter;
use tracing::{Dispatch, Event, Value};

use super::Batch;
use super::callsite::{self, Layout};
use super::events;
use crate::proto::log::{self, MAX_FIELDS, MAX_RECORD, Message, Record};
use crate::proto::message;

/// Records emitted in one go before the control socket gets its turn again.
const MAX_DRAIN: usize = 4096;

/// The parent's end of one worker's event socket.
pub(crate) struct Inbox {
    socket: UnixDatagram,
    buf: Vec<u8>,
    /// The level the child was last told.
    level: u8,
    pid: u32,
}

/// The most verbose level any subscriber of this process wants, as a
/// `TRACE` frame says it (0 = none, 1 = ERROR … 5 = TRACE).
fn level_now() -> u8 {
    match LevelFilter::current().into_level() {
        None => 0,
        Some(tracing::Level::ERROR) => 1,
        Some(tracing::Level::WARN) => 2,
        Some(tracing::Level::INFO) => 3,
        Some(tracing::Level::DEBUG) => 4,
        Some(_) => 5,
    }
}

impl Inbox {
    /// Makes the event socket of worker process `pid` and sends it its end
    /// on `control`, with the level to forward.
    ///
    /// # Errors
    ///
    /// If the socket cannot be made, or the child cannot be written to.
    pub(crate) fn open(control: &mut UnixStream, pid: u32) -> io::Result<Inbox> {
        let (mine, theirs) = UnixDatagram::pair()?;
        crate::sys::no_sigpipe(&theirs)?;
        mine.set_nonblocking(true)?;
        let level = level_now();
        let mut frame = Vec::new();
        message::trace(&mut frame, level, true)?;
        crate::sys::fdpass::write_with_fds(control, &frame, &[OwnedFd::from(theirs)])?;
        Ok(Inbox {
            socket: mine,
            buf: vec![0; MAX_RECORD + 1],
            level,
            pid,
        })
    }

    /// Tells the child the level to forward, if it changed since it was
    /// last told (a subscriber came or went). Between batches: the child
    /// reads it before its next batch.
    ///
    /// # Errors
    ///
    /// If the child cannot be written to.
    pub(crate) fn sync_level(&mut self, control: &mut UnixStream) -> io::Result<()> {
        let level = level_now();
        if level == self.level {
            return Ok(());
        }
        self.level = level;
        let mut frame = Vec::new();
        message::trace(&mut frame, level, false)?;
        control.write_all(&frame)
    }

    /// `false` while the child forwards nothing (no subscriber here wants
    /// any event): its socket is then left unread, and the waits are those
    /// of the control socket alone.
    pub(crate) fn listening(&self) -> bool {
        self.level > 0
    }

    /// Emits the records waiting (at most [`MAX_DRAIN`]), each in the
    /// context of the batch `batch` finds for it.
    ///
    /// # Errors
    ///
    /// `InvalidData` naming the breach, for a record that breaks the rules
    /// (see [`proto::is_breach`](crate::proto::is_breach)).
    pub(crate) fn drain<'a>(&mut self, batch: &dyn Fn(u64) -> Option<Batch<'a>>) -> io::Result<()> {
        if !self.listening() {
            return Ok(());
        }
        for _ in 0..MAX_DRAIN {
            // `buf` holds one byte more than a record may have: a longer
            // datagram is cut to that and refused below (no `MSG_TRUNC`,
            // which not every system takes on a receive).
            let len = match rustix::net::recv(&self.socket, &mut self.buf[..], RecvFlags::DONTWAIT)
            {
                Ok((_, len)) => len,
                Err(Errno::INTR) => continue,
                // Nothing waiting (or the child's end is gone, which the
                // control socket reports).
                Err(_) => return Ok(()),
            };
            if len > MAX_RECORD {
                return Err(breach(format!("a record of more than {MAX_RECORD} bytes")));
            }
            let message = log::read(&self.buf[..len]).map_err(breach)?;
            match message {
                Message::Dropped(count) => events::events_dropped(self.pid, count),
                Message::Event(record) => emit(&record, self.pid, batch(record.batch)),
            }
        }
        Ok(())
    }

    /// Waits until `control` has something to read (or has reached its
    /// end), for at most `timeout` (`None`: no limit), emitting the events
    /// that arrive meanwhile. `Ok(false)` if the time ran out.
    ///
    /// # Errors
    ///
    /// `InvalidData` for a record that breaks the rules (a breach, see
    /// [`proto::is_breach`](crate::proto::is_breach)); the error of `poll`.
    pub(crate) fn wait<'a>(
        &mut self,
        control: BorrowedFd<'_>,
        timeout: Option<Duration>,
        batch: &dyn Fn(u64) -> Option<Batch<'a>>,
    ) -> io::Result<bool> {
        let deadline = timeout.map(|t| Instant::now().checked_add(t));
        loop {
            let left = match deadline {
                Some(Some(d)) => Some(d.saturating_duration_since(Instant::now())),
                // No limit, or one past the clock's end.
                _ => None,
            };
            let spec = left.and_then(|l| Timespec::try_from(l).ok());
            let mut fds = [
                PollFd::from_borrowed_fd(control, PollFlags::IN),
                PollFd::from_borrowed_fd(self.socket.as_fd(), PollFlags::IN),
            ];
            match rustix::event::poll(&mut fds, spec.as_ref()) {
                Ok(_) => {}
                Err(Errno::INTR) => continue,
                Err(e) => return Err(e.into()),
            }
            let control_ready = !fds[0].revents().is_empty();
            if !fds[1].revents().is_empty() {
                self.drain(batch)?;
            }
            if control_ready {
                return Ok(true);
            }
            if left.is_some_and(|l| l.is_zero()) {
                return Ok(false);
            }
        }
    }
}

fn breach(what: String) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("on its tracing event socket, {what}"),
    )
}

/// Waits until `control` (a worker's control socket) has something to
/// read, for at most `timeout` (`None`: no limit), emitting the events
/// that arrive on `events` meanwhile. `Ok(false)` if the time ran out.
///
/// # Errors
///
/// As [`Inbox::wait`].
pub(crate) fn wait<'a>(
    events: Option<&mut Inbox>,
    control: BorrowedFd<'_>,
    timeout: Option<Duration>,
    batch: &dyn Fn(u64) -> Option<Batch<'a>>,
) -> io::Result<bool> {
    match events {
        Some(inbox) if inbox.listening() => inbox.wait(control, timeout, batch),
        _ => crate::sys::process::wait_readable(
            std::os::fd::AsRawFd::as_raw_fd(&control),
            timeout.unwrap_or(Duration::MAX),
        ),
    }
}

/// Emits `r`, from worker process `pid`, in the context of `batch` (the
/// batch it names, if in flight) or else into this thread's default
/// dispatcher.
fn emit(r: &Record<'_>, pid: u32, batch: Option<Batch<'_>>) {
    if callsite::level(r.level) > LevelFilter::current() {
        return;
    }
    let item = batch.as_ref().and_then(|b| {
        let first = b.first_index?;
        (r.item != log::NO_ITEM && r.item < u64::from(b.count)).then(|| first + r.item)
    });
    match batch {
        Some(b) => {
            let parent = b.context.span.id();
            emit_into(&b.context.dispatch, parent, r, pid, item);
        }
        None => tracing::dispatcher::get_default(|d| emit_into(d, None, r, pid, item)),
    }
}

/// Slots of a forwarded event's values: its own fields and two more.
const SLOTS: usize = MAX_FIELDS + 2;

fn emit_into(
    dispatch: &Dispatch,
    parent: Option<tracing::Id>,
    r: &Record<'_>,
    pid: u32,
    item: Option<u64>,
) {
    let (site, layout) = callsite::site_for(r, dispatch);
    emit_at(site, layout, dispatch, parent, r, (pid, item));
}

/// Emits `r` at `site`, whose fields are laid out as `layout` says.
fn emit_at(
    site: &'static callsite::Site,
    layout: Layout,
    dispatch: &Dispatch,
    parent: Option<tracing::Id>,
    r: &Record<'_>,
    (pid, item): (u32, Option<u64>),
) {
    if !site.wanted() {
        return;
    }
    let meta = tracing_core::Callsite::metadata(site);
    if !dispatch.enabled(meta) {
        return;
    }
    let pid = u64::from(pid);
    let mut all = meta.fields().iter();
    let fields: [Option<tracing::field::Field>; SLOTS] = std::array::from_fn(|_| all.next());
    let Some(first) = fields[0].as_ref() else {
        return; // every site has `pid` and `item`
    };
    let message = r
        .fields
        .iter()
        .find(|(name, _)| *name == "message")
        .and_then(|(_, v)| match v {
            log::Value::Str(s) => Some(tracing::field::display(*s)),
            _ => None,
        });
    let joined;
    let line;
    let mut vals: [Option<&dyn Value>; SLOTS] = [None; SLOTS];
    match layout {
        Layout::Own => {
            let n = r.fields.len();
            for (i, (name, value)) in r.fields.iter().enumerate() {
                vals[i] = Some(match (&message, *name) {
                    (Some(m), "message") => m as &dyn Value,
                    _ => as_value(value),
                });
            }
            vals[n] = Some(&pid);
            vals[n + 1] = item.as_ref().map(|i| i as &dyn Value);
        }
        Layout::Fixed => {
            joined = joined_fields(r);
            line = r.line.map(u64::from);
            vals[0] = message.as_ref().map(|m| m as &dyn Value);
            vals[1] = Some(&r.target);
            vals[2] = r.module_path.as_ref().map(|m| m as &dyn Value);
            vals[3] = r.file.as_ref().map(|f| f as &dyn Value);
            vals[4] = line.as_ref().map(|l| l as &dyn Value);
            vals[5] = Some(&joined);
            vals[6] = Some(&pid);
            vals[7] = item.as_ref().map(|i| i as &dyn Value);
        }
    }
    // Slots past the site's fields repeat its first field with no value.
    let values: [(&tracing::field::Field, Option<&dyn Value>); SLOTS] =
        std::array::from_fn(|i| match &fields[i] {
            Some(field) => (field, vals[i]),
            None => (first, None),
        });
    let values = meta.fields().value_set(&values);
    let event = match parent {
        Some(id) => Event::new_child_of(id, meta, &values),
        None => Event::new(meta, &values),
    };
    dispatch.event(&event);
}

fn as_value<'v>(value: &'v log::Value<'_>) -> &'v dyn Value {
    match value {
        log::Value::Str(s) => s,
        log::Value::I64(n) => n,
        log::Value::U64(n) => n,
        log::Value::F64(x) => x,
        log::Value::Bool(b) => b,
    }
}

/// A record's fields other than its message, as `name=value` text.
fn joined_fields(r: &Record<'_>) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    for (name, value) in r.fields.iter().filter(|(n, _)| *n != "message") {
        let sep = if out.is_empty() { "" } else { " " };
        let _ = match value {
            log::Value::Str(s) => write!(out, "{sep}{name}={s:?}"),
            log::Value::I64(n) => write!(out, "{sep}{name}={n}"),
            log::Value::U64(n) => write!(out, "{sep}{name}={n}"),
            log::Value::F64(x) => write!(out, "{sep}{name}={x}"),
            log::Value::Bool(b) => write!(out, "{sep}{name}={b}"),
        };
    }
    out
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use tracing::field::{Field, Visit};
    use tracing::span::{Attributes, Id, Record as SpanRecord};
    use tracing::{Metadata, Subscriber};

    use super::*;
    use crate::proto::log::Value as V;

    /// An event's target, level and fields as text.
    type Kept = (String, tracing::Level, Vec<(String, String)>);

    /// Keeps each event.
    #[derive(Clone, Default)]
    struct Keep(Arc<Mutex<Vec<Kept>>>);

    struct Text(Vec<(String, String)>);

    impl Visit for Text {
        fn record_debug(&mut self, f: &Field, v: &dyn std::fmt::Debug) {
            self.0.push((f.name().to_owned(), format!("{v:?}")));
        }
    }

    impl Subscriber for Keep {
        fn enabled(&self, _: &Metadata<'_>) -> bool {
            true
        }
        fn new_span(&self, _: &Attributes<'_>) -> Id {
            Id::from_u64(1)
        }
        fn record(&self, _: &Id, _: &SpanRecord<'_>) {}
        fn record_follows_from(&self, _: &Id, _: &Id) {}
        fn event(&self, e: &Event<'_>) {
            let mut text = Text(Vec::new());
            e.record(&mut text);
            let m = e.metadata();
            self.0
                .lock()
                .unwrap()
                .push((m.target().to_owned(), *m.level(), text.0));
        }
        fn enter(&self, _: &Id) {}
        fn exit(&self, _: &Id) {}
    }

    fn record(target: &str) -> Record<'_> {
        Record {
            level: 2,
            batch: 1,
            item: 0,
            line: Some(7),
            target,
            module_path: Some("app"),
            file: Some("src/app.rs"),
            fields: vec![
                ("message", V::Str("hi")),
                ("pid", V::I64(-1)),
                ("n", V::U64(3)),
            ],
        }
    }

    fn fields(v: &[(String, String)]) -> Vec<(&str, &str)> {
        v.iter().map(|(a, b)| (a.as_str(), b.as_str())).collect()
    }

    #[test]
    fn a_record_is_emitted_with_its_own_metadata_or_at_the_fixed_site() {
        let keep = Keep::default();
        let dispatch = Dispatch::new(keep.clone());
        let r = record("app::inbox_test");
        emit_into(&dispatch, None, &r, 42, Some(9));
        let (site, layout) = callsite::site_for(&r, &dispatch);
        assert_eq!(layout, Layout::Own);
        let m = tracing_core::Callsite::metadata(site);
        assert_eq!(
            (m.file(), m.line(), m.module_path()),
            (Some("src/app.rs"), Some(7), Some("app"))
        );
        emit_at(
            callsite::fixed(tracing::Level::WARN, &dispatch),
            Layout::Fixed,
            &dispatch,
            None,
            &r,
            (42, None),
        );
        let got = keep.0.lock().unwrap().clone();
        assert_eq!(got.len(), 2);
        assert_eq!(
            (got[0].0.as_str(), got[0].1),
            ("app::inbox_test", tracing::Level::WARN)
        );
        assert_eq!(
            fields(&got[0].2),
            [
                ("message", "hi"),
                ("task.pid", "-1"),
                ("n", "3"),
                ("pid", "42"),
                ("item", "9")
            ]
        );
        assert_eq!(
            (got[1].0.as_str(), got[1].1),
            ("multiproc::task", tracing::Level::WARN)
        );
        assert_eq!(
            fields(&got[1].2),
            [
                ("message", "hi"),
                ("target", "\"app::inbox_test\""),
                ("module_path", "\"app\""),
                ("file", "\"src/app.rs\""),
                ("line", "7"),
                ("fields", "\"pid=-1 n=3\""),
                ("pid", "42"),
            ]
        );
    }
}
