//! The guard that `#[entry]` installs, and the serve loop a child runs.
//!
//! A child is this same executable, started by [`crate::conn::spawn`] with the
//! environment variable [`MARKER`](guard::MARKER) set to `"<protocol>:<fd>"`, where `fd` is
//! its end of a socket pair inherited from the parent. `#[entry]` calls
//! [`entry`] as the first statement of `main`: in a child it removes the
//! marker, serves tasks until the parent says stop or goes away, and exits
//! without returning to `main`.

use std::io::{BufReader, BufWriter, Write};
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::time::Instant;

use crate::proto::Progress;
use crate::proto::arena::{ARENA_FROM, Arena};
use crate::proto::message::{self, RunArgs};
use crate::proto::{self, BatchFailure};
use crate::sys::fdpass::FdReader;
use crate::{exec, guard, registry};

/// Exit code of a child that was started with a marker it cannot use.
const EXIT_BAD_MARKER: i32 = 97;
/// Exit code of a child that could not set the memory limit it was given.
const EXIT_NO_LIMIT: i32 = 98;

/// The process role, first thing in `main` (see the crate's `entry`).
///
/// In a child process this never returns: it serves tasks, then exits. In
/// the parent it records that the guard is in place and returns.
pub(crate) fn entry() {
    if let Some(marker) = std::env::var_os(guard::MARKER) {
        become_child(marker);
    }
    guard::install();
}

/// Called by `#[multiproc::test]` as the first statement of the test.
///
/// `path` is `module_path!()::test_name`; the crate name in front is dropped
/// to get the name the test harness knows.
pub fn test_entry(path: &'static str) {
    let name = path.split_once("::").map_or(path, |(_, rest)| rest);
    // Recorded first, also in a child: a worker that starts a pool of its
    // own must re-run the test binary filtered to this test, not all tests.
    guard::record_test(name);
    if let Some(marker) = std::env::var_os(guard::MARKER) {
        become_child(marker);
    }
    guard::install();
}

fn become_child(marker: std::ffi::OsString) -> ! {
    // SAFETY: `entry` is the first statement of `main` (or of the test
    // function, in a test binary filtered to that one test), before user code
    // has started threads that could read the environment concurrently.
    unsafe { std::env::remove_var(guard::MARKER) };
    let parent = match parse_marker(&marker.to_string_lossy()) {
        Ok(parent) => parent,
        Err(msg) => bad_marker(&msg),
    };
    // SAFETY: as above: no other thread yet.
    if let Err(e) = unsafe { crate::sys::limit::from_parent() } {
        eprintln!(
            "multiproc: worker process {} could not set its memory_limit: {e}",
            std::process::id()
        );
        std::process::exit(EXIT_NO_LIMIT);
    }
    // Die with the thread that spawned us (the worker's driver, which lives
    // as long as the pool), even if it is SIGKILLed (elsewhere than Linux,
    // with its process, from the setup frame on: `sys::parent`); then make
    // sure that thread's process is still our parent (it may have died
    // before, and a hand-made marker names some other process).
    crate::sys::parent::die_with_parent();
    // SAFETY: getppid has no preconditions.
    if unsafe { libc::getppid() } as u32 != parent {
        bad_marker(&format!(
            "it names process {parent} as the parent, which is not this process's parent"
        ));
    }
    // SAFETY: fstat only inspects descriptor 0; a closed or foreign
    // descriptor makes it fail, which we report.
    let is_socket = unsafe {
        let mut st: libc::stat = std::mem::zeroed();
        libc::fstat(0, &mut st) == 0 && (st.st_mode & libc::S_IFMT) == libc::S_IFSOCK
    };
    if !is_socket {
        bad_marker("its stdin is not a control socket");
    }
    // Move the control socket off stdin (close-on-exec, so processes the
    // worker starts do not inherit it) and give stdin /dev/null, as before.
    // SAFETY: F_DUPFD_CLOEXEC duplicates a descriptor we just checked.
    let fd = unsafe { libc::fcntl(0, libc::F_DUPFD_CLOEXEC, 3) };
    if fd < 0 {
        bad_marker(&format!(
            "its control socket cannot be moved: {}",
            std::io::Error::last_os_error()
        ));
    }
    if let Ok(null) = std::fs::File::open("/dev/null") {
        // SAFETY: dup2 onto descriptor 0, which we have duplicated above.
        unsafe { libc::dup2(std::os::fd::AsRawFd::as_raw_fd(&null), 0) };
    }
    // SAFETY: `fd` is the fresh duplicate; nothing else owns it.
    let stream = unsafe { UnixStream::from_raw_fd(fd) };
    // Ctrl-C goes to the whole process group: the parent decides what
    // happens (if it dies, so do we); workers do not print or die on it.
    // SAFETY: setting a signal disposition to SIG_IGN.
    unsafe { libc::signal(libc::SIGINT, libc::SIG_IGN) };
    guard::install();
    exec::install_panic_hook();
    let code = match serve(stream) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!(
                "multiproc: worker process {} lost its parent: {e}",
                std::process::id()
            );
            0
        }
    };
    std::process::exit(code)
}

fn parse_marker(marker: &str) -> Result<u32, String> {
    let (version, parent) = marker
        .split_once(':')
        .ok_or_else(|| format!("malformed value {marker:?}"))?;
    if version != proto::PROTOCOL_VERSION.to_string() {
        return Err(format!(
            "protocol {version} from the parent, this binary speaks {}",
            proto::PROTOCOL_VERSION
        ));
    }
    parent
        .parse()
        .map_err(|_| format!("malformed value {marker:?}"))
}

fn bad_marker(why: &str) -> ! {
    let marker = guard::MARKER;
    eprintln!(
        "multiproc: this process was started with {marker} set, but it is not a worker \
         started by a multiproc pool ({why}); unset {marker} to run the program normally"
    );
    std::process::exit(EXIT_BAD_MARKER)
}

fn serve(stream: UnixStream) -> std::io::Result<()> {
    // One thread reads, runs and writes. That cannot deadlock with the
    // parent: it sends batches ahead only while they fit in the socket
    // buffer together (`driver::PIPELINE_MAX_BYTES`), so its writes never
    // block while this side is busy writing a large result.
    let mut reader = BufReader::with_capacity(64 * 1024, FdReader::new(stream.try_clone()?));
    let mut next_frame = move || -> std::io::Result<(Vec<u8>, Vec<OwnedFd>)> {
        let mut frame = Vec::new();
        match proto::read_frame(&mut reader, &mut frame)?.map(|tag| tag & !proto::DENSE) {
            Some(proto::TAG_RUN | proto::TAG_RUN_SHARED | proto::TAG_RUN_RANGE) => {
                // The handles in the arguments came with the frame.
                let n = frame
                    .get(9..13)
                    .map_or(0, |b| u32::from_le_bytes(b.try_into().expect("4 bytes")));
                let fds = reader.get_mut().take_fds(n as usize)?;
                Ok((frame, fds))
            }
            Some(proto::TAG_SETUP) => {
                let fds = reader.get_mut().take_fds(crate::sys::parent::SETUP_FDS)?;
                Ok((frame, fds))
            }
            Some(proto::TAG_TRACE) => {
                let (_, socket) = message::read_trace(&frame)?;
                let fds = reader.get_mut().take_fds(usize::from(socket))?;
                Ok((frame, fds))
            }
            Some(proto::TAG_ARENAS) => {
                // The request arena's and the reply arenas' descriptors,
                // or none when the parent frees them.
                let release = proto::arena_lengths(&frame)? == (0, 0);
                let n = if release { 0 } else { 1 + proto::REPLY_ARENAS };
                let fds = reader.get_mut().take_fds(n)?;
                Ok((frame, fds))
            }
            Some(_) => Ok((frame, Vec::new())),
            None => Ok((Vec::new(), Vec::new())),
        }
    };
    let mut writer = BufWriter::with_capacity(64 * 1024, stream);
    let mut out = Vec::new();
    // The shared buffers for large frames, once the parent sends them.
    let mut arenas: Option<Arenas> = None;

    // The first frame brings the progress page, and what to watch the
    // parent with where the kernel does not (`sys::parent`).
    let (setup, fds) = next_frame()?;
    if setup.first() != Some(&proto::TAG_SETUP) || fds.len() != crate::sys::parent::SETUP_FDS {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "expected the setup frame",
        ));
    }
    let mut fds = fds.into_iter();
    let page = fds.next().expect("the progress page");
    crate::sys::parent::watch(fds);
    // SAFETY: we own `page`; `from_inherited` checks it is a progress page.
    let progress = unsafe { Progress::from_inherited(std::os::fd::IntoRawFd::into_raw_fd(page)) }?;
    exec::set_progress(progress);
    // A failed allocation aborts the process (Rust's rule); the page then
    // tells the parent why, which reports `OutOfMemory` instead of a crash.
    // Without the note the parent still sees the abort.
    let _ = crate::sys::limit::on_abort(note_abort);

    message::hello(&mut out, std::process::id())?;
    writer.write_all(&out)?;
    writer.flush()?;

    loop {
        let (frame, fds) = next_frame()?;
        let Some(&tag) = frame.first() else {
            return Ok(()); // the parent went away or closed the pool
        };
        let dense = tag & proto::DENSE != 0;
        let tag = tag & !proto::DENSE;
        match tag {
            proto::TAG_ARENAS => {
                let (request, reply) = proto::arena_lengths(&frame)?;
                if request == 0 && reply == 0 {
                    arenas = None; // unmapped: their memory is freed
                    crate::mem::huge::release_spares();
                    if out.capacity() > 16 << 20 {
                        out = Vec::new();
                    }
                    continue;
                }
                let mut fds = fds.into_iter();
                let mut map = |len: u64| {
                    let fd = fds.next().expect("take_fds gave one per arena");
                    Arena::from_fd(fd, usize::try_from(len).unwrap_or(usize::MAX))
                };
                let request = map(request)?;
                let reply = (0..proto::REPLY_ARENAS)
                    .map(|_| map(reply))
                    .collect::<std::io::Result<Vec<_>>>()?;
                arenas = Some(Arenas {
                    request,
                    reply: reply
                        .try_into()
                        .unwrap_or_else(|_| unreachable!("REPLY_ARENAS mapped")),
                    replies: [0; proto::REPLY_ARENAS],
                    next: 0,
                });
            }
            proto::TAG_RUN | proto::TAG_RUN_SHARED | proto::TAG_RUN_RANGE => {
                let run = message::read_run(&frame)?;
                let (batch, name) = (run.batch, run.worker);
                // A range of integers: its first one, count and width.
                let range = match run.args {
                    RunArgs::Range {
                        first,
                        count,
                        width,
                    } => Some((first, count, width)),
                    RunArgs::Inline(_) | RunArgs::Shared { .. } => None,
                };
                let payload = match run.args {
                    RunArgs::Shared { offset, len } => {
                        let request = arenas.as_ref().and_then(|a| {
                            // SAFETY: the parent wrote the payload before
                            // sending this frame and writes those bytes of
                            // the request arena again only when this batch
                            // has been answered (proto::arena).
                            unsafe { a.request.bytes_at(offset, len) }
                        });
                        request.ok_or_else(|| {
                            std::io::Error::new(
                                std::io::ErrorKind::InvalidData,
                                "a shared batch arrived without its shared buffer",
                            )
                        })?
                    }
                    RunArgs::Inline(bytes) => bytes,
                    RunArgs::Range { .. } => &[],
                };
                let Some(entry) = registry::lookup(name) else {
                    let failure = BatchFailure::UnknownWorker {
                        name: name.to_owned(),
                        known: registry::known_names(),
                    };
                    send_failure(&mut writer, &mut out, batch, &failure)?;
                    continue;
                };
                let timing_at = message::done_head(&mut out, batch);
                let started = Instant::now();
                exec::begin_batch(batch);
                let args = match range {
                    Some((first, count, width)) => exec::BatchArgs::Range {
                        first,
                        count,
                        width,
                    },
                    None if dense => exec::BatchArgs::Dense(payload),
                    None => exec::BatchArgs::Framed(payload),
                };
                // Dense results may go straight into a free reply arena,
                // after the head (which is copied there when it is sent).
                let direct = arenas
                    .as_ref()
                    .filter(|_| dense || range.is_some())
                    .and_then(|a| {
                        let i = a.free_reply(0)?;
                        // SAFETY: the parent has released every reply in that
                        // arena (`free_reply`) and reads it again only after
                        // the frame that `send_reply` sends for this batch; the
                        // room is withdrawn (`take_direct`) before then.
                        let (room, len) = unsafe { a.reply[i].room_at(out.len() - 4)? };
                        // SAFETY: as above.
                        unsafe { exec::offer_direct(room, len) };
                        Some(i)
                    });
                let head_len = out.len();
                let result =
                    crate::sys::fdpass::with_table(fds, || (entry.invoke())(args, &mut out));
                let direct = direct.zip(exec::take_direct());
                // Results written to the room leave the head as it was: it
                // goes right before them (`send_reply`).
                debug_assert!(direct.is_none() || out.len() == head_len);
                exec::end_batch();
                let elapsed = u64::try_from(started.elapsed().as_nanos()).unwrap_or(u64::MAX);
                // The batch's events go before its answer.
                crate::trace::outbox::flush();
                match result {
                    Ok((ran, dense_results)) => {
                        message::done_timing(&mut out, timing_at, elapsed, ran);
                        if dense_results {
                            out[4] |= proto::DENSE; // the tag, after the length
                        }
                        send_reply(&mut writer, &mut out, arenas.as_mut(), direct)?;
                    }
                    Err(msg) => {
                        drop(exec::take_deferred());
                        send_failure(&mut writer, &mut out, batch, &BatchFailure::Malformed(msg))?;
                    }
                }
                writer.flush()?;
                // Do not keep a huge buffer alive between batches, unless
                // large frames are coming (the parent holds the arenas; it
                // drops them, and this buffer with them, once idle).
                if out.capacity() > 16 << 20 && arenas.is_none() {
                    out = Vec::new();
                }
            }
            proto::TAG_TRACE => crate::trace::outbox::configure(&frame, fds)?,
            proto::TAG_SHUTDOWN => return Ok(()),
            other => {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!("unknown frame tag {other}"),
                ));
            }
        }
    }
}

/// Called in the `SIGABRT` handler (see [`crate::sys::limit::on_abort`]):
/// atomic stores only.
fn note_abort(in_use: u64, alloc_failed: bool) {
    if let Some(page) = exec::progress() {
        page.note_abort(in_use, alloc_failed);
    }
}

/// The arenas the parent gave this child (see [`crate::proto::arena`]).
struct Arenas {
    request: Arena,
    /// The reply arenas, used in turn.
    reply: [Arena; proto::REPLY_ARENAS],
    /// Replies written to each reply arena so far.
    replies: [u64; proto::REPLY_ARENAS],
    /// The reply arena to try first: the last one used, whose pages are
    /// the likeliest to be in memory (a fresh 64 MiB of shared memory
    /// costs 16,384 page faults).
    next: usize,
}

impl Arenas {
    /// A reply arena the parent is done with that holds `body` bytes: the
    /// one used last if it is free (its pages are the likeliest to be in
    /// memory), else the next free one after it.
    fn free_reply(&self, body: usize) -> Option<usize> {
        let n = self.reply.len();
        (0..n).map(|k| (self.next + k) % n).find(|&i| {
            body <= self.reply[i].capacity() && self.reply[i].released_count() == self.replies[i]
        })
    }
}

/// Sends a `DONE` frame built in `out`, followed by the large result
/// deferred after it if any ([`exec::take_deferred`]): through a reply
/// arena if it is large, fits, and the parent is done with the last reply
/// there; else through the socket. With `direct` (an arena and a length),
/// the batch's results are in that arena already, after the head: the head
/// goes there too.
fn send_reply(
    writer: &mut impl Write,
    out: &mut Vec<u8>,
    arenas: Option<&mut Arenas>,
    direct: Option<(usize, usize)>,
) -> std::io::Result<()> {
    // A large `Vec<u8>` result comes after `out`, not copied into it.
    let deferred = exec::take_deferred();
    let mut tail = deferred.as_deref().unwrap_or_default();
    let body = out.len() - 4 + tail.len() + direct.map_or(0, |(_, n)| n);
    if let Some(a) = arenas {
        let free = match direct {
            Some((i, _)) => Some(i),
            None if body >= ARENA_FROM => a.free_reply(body),
            None => None,
        };
        if let Some(i) = free {
            // SAFETY: the parent has released every earlier reply in this
            // arena (checked by `free_reply`, an acquire load, before the
            // batch ran if its results are there already) and reads it
            // again only after the frame below.
            unsafe {
                a.reply[i].write_at(0, &out[4..]);
                a.reply[i].write_at(out.len() - 4, tail);
            }
            tail = &[];
            a.replies[i] += 1;
            a.next = i;
            message::shared_done(out, i, a.replies[i], body);
        }
    }
    proto::finish_frame_with(out, tail.len())?;
    writer.write_all(out)?;
    writer.write_all(tail)?;
    if let Some(bytes) = deferred {
        bytes.recycle();
    }
    Ok(())
}

fn send_failure(
    writer: &mut impl Write,
    out: &mut Vec<u8>,
    batch: u64,
    failure: &BatchFailure,
) -> std::io::Result<()> {
    message::failed(out, batch, failure)?;
    writer.write_all(out)?;
    writer.flush()
}
