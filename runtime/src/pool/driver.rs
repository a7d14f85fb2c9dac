//! One driver thread per worker slot: starts the worker process, feeds it
//! batches (short ones queued ahead, so the child never waits for the
//! parent), hands replies back, and replaces the process when it dies or
//! retires.
//!
//! The driver thread spawns its child itself and lives as long as the pool,
//! which is what Linux's parent-death signal is tied to.

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Write};
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::sync::mpsc::Sender;
use std::time::Duration;

use super::deliver::{Delivery, deliver_done};
use super::forward;
use super::job::{Job, Next, Sink};
use super::send::{Sent, cut_piece, regions, send_job};
use super::shared::{Initializer, PoolShared};
use crate::conn::outcome::{Failure, Outcome, ReplyBytes};
use crate::conn::reap::{exit_reason, reap, wait_exit};
use crate::conn::runner::Runner;
use crate::conn::spawn::{self, Spawned};
use crate::conn::watch::StderrWatch;
use crate::conn::{Conn, encode_run, ring_offset, send_run};
use crate::error::{Error, ErrorKind, ExitReason, Result};
use crate::proto;
use crate::proto::Progress;
use crate::proto::arena::{ARENA_FROM, Lease};
use crate::proto::message;
use crate::proto::reply;
use crate::sys::process::{rss_bytes, wait_readable};
use crate::trace::events::{self, Death};
use crate::trace::inbox::Inbox;

/// Batches sent to one child before its first answer (as many as it has
/// reply arenas, so that each can be answered through one).
const PIPELINE_DEPTH: usize = proto::REPLY_ARENAS;
/// Batches are sent ahead of the running one only while all of them
/// together stay under this many bytes: well under a Unix socket's send
/// buffer (about 208 KiB by default), so that writing them never blocks
/// while the child is busy writing a result (the child reads, runs and
/// writes on one thread).
pub(crate) const PIPELINE_MAX_BYTES: usize = 96 * 1024;
/// Frame bytes besides the payload, counted generously.
const FRAME_OVERHEAD: usize = 1024;
/// A second batch is sent ahead only while batches are this short: for
/// longer ones the round trip does not matter, and holding a batch back
/// keeps the load balanced at the end of a `map`.
const PIPELINE_BELOW_NS: u64 = 2_000_000;
/// How long a worker keeps its shared buffers for large frames (shared
/// with the child), and the process its spare buffers (`shm::huge`), while
/// it has nothing to do. Reusing them is what makes large frames cheap
/// (their pages stay faulted in); an idle pool gives the memory back, and
/// has its workers do the same. (At 1 s, a program that used its pool
/// about once a second, as the primes bench does between its rounds,
/// sometimes found the buffers gone and paid 3–6 ms at the start of a map
/// to make and fault them in again; allocators hold freed memory for
/// seconds too, jemalloc for 10.)
const ARENAS_KEPT_IDLE: Duration = Duration::from_secs(3);
/// How often a driver with nothing to do looks at its child: one that died
/// meanwhile (killed from outside, say) is reaped and replaced within this
/// long, not when work next comes (Python's pool looks every 100 ms too).
const WATCH_IDLE: Duration = Duration::from_millis(100);
/// How long a worker that aborted may keep its stderr pipe open (through
/// a process it started) before its death is judged without the rest.
const STDERR_DRAIN: Duration = Duration::from_millis(500);
/// Replacement workers that may fail to start in a row before the slot
/// gives up.
const MAX_START_FAILURES: u32 = 3;

/// What went wrong with a worker process, as its driver saw it: the
/// parent's own observations, never the child's word.
#[derive(Default)]
struct Fault {
    /// Its running item overstayed the task time limit: the batch, and the
    /// item if the progress page named a plausible one.
    timed_out: Option<(u64, Option<u64>)>,
    /// It broke the protocol: what it did.
    breach: Option<String>,
    /// The breach was an answer repeated for a batch already settled: the
    /// item that wrote it is done, so the items in flight are bystanders.
    repeated: bool,
}

enum End {
    /// The pool is closed and the queue is empty.
    Shutdown,
    /// The worker reached `max_tasks_per_worker`.
    Retire,
    /// The worker process died (or was killed) with these batches in flight.
    Died(VecDeque<Sent>),
}

/// Drivers to panic, for the test that a driver thread's panic (a bug)
/// fails the work it held instead of hanging its callers.
static PANIC_SOON: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

/// Makes the next driver that sends a batch panic right after (a test
/// hook: see `multiproc::__private`).
pub(crate) fn panic_a_driver() {
    PANIC_SOON.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
}

/// Runs the driver of one worker slot (see [`run_slot`]). Should it panic
/// (a bug), the batches it held are answered with an error as they are
/// dropped (see `Job`'s `Drop`), its child is killed and reaped, and the
/// slot counts as failed: when no slot is left, queued work fails too.
pub(crate) fn run(shared: Arc<PoolShared>, runner: Arc<Runner>, ready: Sender<Result<()>>) {
    let run = std::panic::AssertUnwindSafe(|| run_slot(shared.clone(), runner.clone(), ready));
    if let Err(panic) = std::panic::catch_unwind(run) {
        runner.kill_if_running(None);
        if let Some(pid) = runner.take_pid() {
            // SAFETY: our own child, not reaped yet (its `Child` was
            // dropped while unwinding), so the pid cannot name another
            // process; waiting for it only reaps it.
            unsafe { libc::waitpid(pid as libc::pid_t, std::ptr::null_mut(), 0) };
        }
        let message = crate::exec::take_panic_report(&*panic).message;
        shared.slot_failed(Failure::Protocol(format!(
            "a worker slot's driver thread panicked (a bug in multiproc): {message}"
        )));
    }
}

fn run_slot(shared: Arc<PoolShared>, runner: Arc<Runner>, ready: Sender<Result<()>>) {
    let progress = match Progress::create() {
        Ok(p) => Arc::new(p),
        Err(e) => {
            let _ = ready.send(Err(Error::new(ErrorKind::Spawn(e))));
            return;
        }
    };
    runner.set_progress(progress.clone());
    let mut ready = Some(ready);
    let mut failures = 0;
    let mut replaced = None; // the process the next one replaces
    loop {
        if shared.queue.is_terminated() {
            break;
        }
        progress.reset();
        let mut worker = match start(&shared, &progress) {
            Ok(w) => w,
            Err(e) => {
                events::worker_start_failed(runner.id, &e);
                if let Some(ready) = ready.take() {
                    let _ = ready.send(Err(e));
                    break;
                }
                failures += 1;
                if failures >= MAX_START_FAILURES {
                    shared.slot_failed(Failure::Spawn(e.to_string()));
                    break;
                }
                std::thread::sleep(Duration::from_millis(50 << failures));
                continue;
            }
        };
        runner.set_pid(Some(worker.pid));
        events::worker_started(worker.pid, runner.id, replaced.take());
        if let Some(ready) = ready.take() {
            let _ = ready.send(Ok(()));
        }
        let mut fault = Fault::default();
        match serve(&shared, &runner, &progress, &mut worker, &mut fault) {
            End::Shutdown => {
                stop(&runner, worker);
                break;
            }
            End::Retire => {
                let over = shared.max_worker_rss.filter(|_| worker.retiring);
                events::worker_recycled(worker.pid, worker.done, over);
                replaced = Some(worker.pid);
                stop(&runner, worker);
                failures = 0;
            }
            End::Died(in_flight) => {
                if worker.done > 0 {
                    failures = 0;
                }
                replaced = Some(worker.pid);
                died(&shared, &runner, &progress, fault, worker, in_flight);
            }
        }
    }
}

/// Starts a worker process and runs the pool's initializer in it.
fn start(shared: &PoolShared, progress: &Progress) -> Result<Conn> {
    let Spawned { mut child, stream } =
        spawn::spawn_worker(shared.test_name.as_deref(), progress, shared.memory_limit)
            .map_err(|e| Error::new(ErrorKind::Spawn(e)))?;
    let pid = child.id();
    let stderr = match child.stderr.take().map(|e| StderrWatch::start(e, pid)) {
        Some(Err(e)) => {
            let _ = child.kill();
            let _ = child.wait();
            return Err(Error::new(ErrorKind::Spawn(e)));
        }
        watch => watch.and_then(Result::ok),
    };
    if let Some(limit) = shared.task_timeout.filter(|&t| t < proto::FRAME_STALL) {
        // A frame that stalls this long is an item that overstays; not
        // below half a second, which a descheduled child may take to go
        // on writing a frame on a loaded machine.
        stream
            .set_read_timeout(Some(limit.max(Duration::from_millis(500))))
            .map_err(|e| Error::new(ErrorKind::Spawn(e)))?;
    }
    let reader = BufReader::with_capacity(
        256 * 1024,
        stream
            .try_clone()
            .map_err(|e| Error::new(ErrorKind::Spawn(e)))?,
    );
    let mut worker = Conn {
        child,
        writer: stream,
        reader,
        pid,
        done: 0,
        // Unknown until the first batch comes back: no read-ahead before that.
        last_batch_ns: u64::MAX,
        last_item: None,
        retiring: false,
        arenas: None,
        reply_wanted: 0,
        stderr,
        events: None,
    };
    if shared.forward_tracing {
        // Before the initializer, whose events are forwarded too.
        let opened = Inbox::open(&mut worker.writer, pid).map(|inbox| worker.events = Some(inbox));
        if let Err(e) = opened {
            let _ = worker.child.kill();
            let _ = worker.child.wait();
            return Err(Error::new(ErrorKind::Spawn(e)));
        }
    }
    if let Some(init) = &shared.initializer {
        if let Err(e) = run_initializer(shared, progress, &mut worker, init) {
            let _ = worker.child.kill();
            let _ = worker.child.wait();
            return Err(Error::new(ErrorKind::Initializer(e)));
        }
    }
    Ok(worker)
}

fn run_initializer(
    shared: &PoolShared,
    progress: &Progress,
    worker: &mut Conn,
    init: &Initializer,
) -> Result<()> {
    let batch = shared.queue.next_batch_id();
    let mut buf = Vec::new();
    encode_run(&mut buf, batch, init.worker, &init.payload, init.fds.len()).map_err(io_protocol)?;
    let mut frame = Vec::new();
    let answer = send_run(&mut worker.writer, &buf, &init.payload, &init.fds)
        .and_then(|()| proto::read_frame(&mut worker.reader, &mut frame));
    let failure = match reply::read_single(answer, &frame, batch) {
        Ok(reply::Answer::Done { .. }) => {
            let mut rest = &frame[proto::DONE_HEADER..];
            return (init.check)(init.worker, &mut rest);
        }
        Ok(reply::Answer::Failed(failure)) => Failure::from(failure),
        Err(Some(breach)) => Failure::breach(worker.pid, &breach),
        Err(None) => {
            let reason = reap(&mut worker.child);
            death(shared, progress, worker, reason)
        }
    };
    Err(failure.to_error(init.worker, None))
}

fn io_protocol(e: std::io::Error) -> Error {
    Error::new(ErrorKind::Protocol(e.to_string()))
}

fn serve(
    shared: &PoolShared,
    runner: &Arc<Runner>,
    progress: &Progress,
    worker: &mut Conn,
    fault: &mut Fault,
) -> End {
    let mut pending = None;
    let end = serve_batches(shared, runner, progress, worker, fault, &mut pending);
    Delivery::flush(&mut pending, shared);
    end
}

fn serve_batches(
    shared: &PoolShared,
    runner: &Arc<Runner>,
    progress: &Progress,
    worker: &mut Conn,
    fault: &mut Fault,
    pending: &mut Option<Delivery>,
) -> End {
    let mut in_flight: VecDeque<Sent> = VecDeque::with_capacity(PIPELINE_DEPTH);
    let mut buf = Vec::new();
    let mut frame = Vec::new();
    let limit = shared.max_tasks_per_worker;
    // A send found the child gone: only its last answers are left to read.
    let mut gone = false;
    // Since when the child has had nothing to do.
    let mut idle_since: Option<std::time::Instant> = None;
    // The batch this child answered last.
    let mut last_answered: Option<u64> = None;
    loop {
        // Keep the child busy: up to PIPELINE_DEPTH batches in flight.
        let depth = if worker.last_batch_ns < PIPELINE_BELOW_NS {
            PIPELINE_DEPTH
        } else {
            1
        };
        while !gone && in_flight.len() < depth {
            if worker.retiring {
                if in_flight.is_empty() {
                    return End::Retire;
                }
                break;
            }
            let queued: u64 = in_flight.iter().map(|s| u64::from(s.job.count)).sum();
            if let Some(limit) = limit {
                if worker.done + queued >= limit {
                    if in_flight.is_empty() {
                        return End::Retire;
                    }
                    break;
                }
            }
            let steal = || shared.steal_for(runner);
            // Ahead of a running batch, only frames that cannot block: small
            // enough for the socket's buffer, or with room in the request
            // arena.
            let socket_room = if in_flight.is_empty() {
                usize::MAX
            } else {
                let ahead: usize = in_flight
                    .iter()
                    .skip(1)
                    .map(|s| s.region.map_or(s.job.payload.sent_len(), |_| 0) + FRAME_OVERHEAD)
                    .sum();
                PIPELINE_MAX_BYTES.saturating_sub(ahead + FRAME_OVERHEAD)
            };
            let ring = worker.arenas.as_ref().map(|a| a.request.capacity());
            let fits = |n: usize| {
                n <= socket_room
                    || (n >= ARENA_FROM
                        && ring
                            .is_some_and(|cap| ring_offset(regions(&in_flight), cap, n).is_some()))
            };
            // Wait for work only with nothing in flight and nothing held
            // back, looking at the child every WATCH_IDLE; a worker that
            // holds shared buffers (or a process that holds spare ones,
            // `shm::huge`) frees them once it has been idle for a while,
            // and has its child free its own.
            let block = in_flight.is_empty() && pending.is_none();
            let idle = block.then_some(WATCH_IDLE);
            let job = match shared.queue.next(runner.id, block, &fits, &steal, idle) {
                Next::Job(job) => {
                    idle_since = None;
                    job
                }
                Next::Idle => {
                    // Nothing in flight: anything to read means the child
                    // is gone (or broke the protocol).
                    let fd = worker.reader.get_ref().as_raw_fd();
                    if !worker.reader.buffer().is_empty()
                        || wait_readable(fd, Duration::ZERO).unwrap_or(true)
                    {
                        if worker.reader.fill_buf().is_ok_and(|b| !b.is_empty()) {
                            return breach(
                                runner,
                                fault,
                                in_flight,
                                "it sent a frame while no batch was in flight".to_owned(),
                            );
                        }
                        return End::Died(in_flight);
                    }
                    // Events its tasks' threads emitted after their batch.
                    if let Err(e) = forward::drain(worker, batches(&in_flight)) {
                        return breach(runner, fault, in_flight, e.to_string());
                    }
                    let since = *idle_since.get_or_insert_with(std::time::Instant::now);
                    let holds = worker.arenas.is_some() || crate::mem::huge::has_spares();
                    if holds && since.elapsed() >= ARENAS_KEPT_IDLE {
                        crate::mem::huge::release_spares();
                        if worker.release_arenas().is_err() {
                            return End::Died(in_flight);
                        }
                    }
                    continue;
                }
                Next::Nothing if pending.is_some() => {
                    Delivery::flush(pending, shared);
                    continue;
                }
                Next::Nothing => {
                    if in_flight.is_empty() {
                        return End::Shutdown;
                    }
                    break;
                }
            };
            let job = cut_piece(shared, worker, job);
            let batch = shared.queue.next_batch_id();
            if let Some(control) = &job.control {
                if !control.start(batch, runner) {
                    continue; // cancelled while queued; already answered
                }
            }
            if in_flight.is_empty() {
                runner.set_front(Some((batch, job.count)));
            }
            let sent = send_job(worker, &mut buf, batch, &job, &in_flight);
            let region = match sent {
                Ok(region) => region,
                Err(e) => {
                    if e.kind() == std::io::ErrorKind::InvalidInput {
                        // Frame too large: this job alone fails.
                        if let Some(control) = &job.control {
                            control.finish();
                        }
                        job.deliver(Outcome::Failed(Failure::Protocol(e.to_string())));
                        continue;
                    }
                    // The child is gone; this job never reached it. What it
                    // answered before it died is still in the socket: read
                    // that first, so that the batch it died in is the front
                    // one (and is blamed, and counts a retry), not one whose
                    // answer merely went unread.
                    if let Some(control) = &job.control {
                        control.requeue();
                    }
                    shared.queue.requeue_front(vec![job]);
                    if in_flight.is_empty() {
                        return End::Died(in_flight);
                    }
                    gone = true;
                    break;
                }
            };
            in_flight.push_back(Sent { job, batch, region });
            if PANIC_SOON.load(std::sync::atomic::Ordering::Relaxed) > 0
                && PANIC_SOON.fetch_sub(1, std::sync::atomic::Ordering::Relaxed) > 0
            {
                panic!("a driver panic injected by a test");
            }
            Delivery::flush(pending, shared);
        }
        Delivery::flush(pending, shared);
        if buf.capacity() > 16 << 20 {
            buf = Vec::new();
        }

        // A large reply is decoded where the child put it when that is soon:
        // a submitted task's by the caller, a `map` batch stored in place
        // by this thread (the child has the other reply buffers meanwhile).
        // An `imap` may hold a reply a long while: those are copied out.
        let lease_ok = in_flight
            .front()
            .is_some_and(|s| matches!(s.job.sink, Sink::Task(_) | Sink::Collect(_)));
        let mut lease = None;
        match read_reply(
            shared,
            runner,
            progress,
            worker,
            &in_flight,
            (&mut frame, &mut lease, lease_ok),
            fault,
        ) {
            Ok(Some(_)) => {}
            Ok(None) => return End::Died(in_flight),
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut && shared.task_timeout.is_some() => {
                // A frame stalled for the task time limit (the socket's
                // read timeout then): the item overstayed.
                if let Some(front) = in_flight.front() {
                    let item = page_item(progress, front, None).ok().flatten();
                    fault.timed_out = Some((front.batch, item));
                }
                runner.kill_if_running(None);
                return End::Died(in_flight);
            }
            Err(e) if proto::is_breach(&e) => {
                return breach(runner, fault, in_flight, e.to_string());
            }
            Err(_) => return End::Died(in_flight),
        };
        let Some(front) = in_flight.front() else {
            return breach(
                runner,
                fault,
                in_flight,
                "it sent a frame while no batch was in flight".to_owned(),
            );
        };
        let thief = runner.thief(); // before set_front forgets it
        let expect = reply::Expect {
            batch: front.batch,
            count: front.job.count,
            stop_asked: thief.is_some(),
        };
        let answer = reply::read_answer(lease.as_deref().unwrap_or(&frame), expect, None);
        let answer = match answer {
            Ok(answer) => answer,
            Err(e) => {
                fault.repeated = e.other_batch.is_some() && e.other_batch == last_answered;
                return breach(runner, fault, in_flight, e.message);
            }
        };
        last_answered = Some(front.batch);
        let Some(front) = in_flight.pop_front() else {
            unreachable!("the front was just read");
        };
        runner.set_front(in_flight.front().map(|s| (s.batch, s.job.count)));
        match answer {
            reply::Answer::Done {
                ran,
                elapsed_ns,
                dense,
            } => {
                worker.done += u64::from(ran);
                worker.last_batch_ns = elapsed_ns;
                // A time per item from a batch under 1 ms is mostly start-up
                // (a single `apply` takes microseconds): it would cut the next
                // large batch into a great many tiny pieces.
                if ran > 0 && elapsed_ns >= 1_000_000 {
                    worker.last_item = Some((front.job.worker, elapsed_ns / u64::from(ran)));
                }
                if let Some(limit) = shared.max_worker_rss {
                    worker.retiring = rss_bytes(worker.pid).is_some_and(|rss| rss > limit);
                }
                let data = match lease.take() {
                    Some(lease) => ReplyBytes::Shared(lease),
                    None => ReplyBytes::Owned(std::mem::take(&mut frame)),
                };
                let job = if ran < front.job.count {
                    // Stopped early for an idle worker: the rest is split, the
                    // front half kept for this worker and the back half for the
                    // one that asked (see `Runner::steal_half`).
                    let (head, tail) = split(front.job, ran);
                    let now = std::time::Instant::now();
                    let halves = match (tail, thief) {
                        (Some(tail), Some(thief)) if tail.count >= 2 => {
                            let half = tail.count / 2;
                            let (mut mine, mut theirs) = tail.split_at(half);
                            mine.reserved = Some((runner.id, now));
                            theirs.reserved = Some((thief, now));
                            vec![mine, theirs]
                        }
                        (Some(mut tail), Some(thief)) => {
                            tail.reserved = Some((thief, now));
                            vec![tail]
                        }
                        (tail, _) => tail.into_iter().collect(),
                    };
                    shared.queue.requeue_front(halves);
                    head
                } else {
                    Some(front.job)
                };
                match job {
                    // The child has more queued: hand over at once (when the
                    // caller's thread is what limits a `map`, it should not
                    // wait for the next send).
                    Some(job) if !in_flight.is_empty() => {
                        deliver_done(shared, job, data, elapsed_ns, dense);
                    }
                    // The child is idle: feed it first.
                    Some(job) => {
                        *pending = Some(Delivery {
                            job,
                            data,
                            elapsed_ns,
                            dense,
                        });
                    }
                    None => {}
                }
            }
            reply::Answer::Failed(failure) => {
                if let Some(control) = &front.job.control {
                    control.finish();
                }
                front.job.deliver(Outcome::Failed(Failure::from(failure)));
            }
        }
    }
}

/// Ends a worker process that broke the protocol: it is killed, and the
/// batch it was running fails (or is retried) as after a crash.
fn breach(runner: &Runner, fault: &mut Fault, in_flight: VecDeque<Sent>, what: String) -> End {
    runner.kill_if_running(None);
    fault.breach = Some(what);
    End::Died(in_flight)
}

/// Reads the next frame from the child. With a task time limit, watches the
/// progress page while waiting and kills the child when its running item
/// overstays (the caller then sees EOF, and `fault` says which item).
///
/// Time is this thread's clock, never the child's: an item's start is when
/// this thread first saw the page name it. The page only says which item
/// runs, and is believed only for an item of the front batch that comes
/// after the one seen before; and the whole batch gets at most the limit
/// for each of its items from when this thread began to wait for it. So a
/// child that forges its page can delay its own kill to no later than
/// that, and cannot stop it.
fn read_reply(
    shared: &PoolShared,
    runner: &Runner,
    progress: &Progress,
    worker: &mut Conn,
    in_flight: &VecDeque<Sent>,
    (frame, lease, lease_ok): (&mut Vec<u8>, &mut Option<Lease>, bool),
    fault: &mut Fault,
) -> std::io::Result<Option<u8>> {
    if let (Some(limit), Some(front)) = (shared.task_timeout, in_flight.front()) {
        let tick = (limit / 8).clamp(Duration::from_millis(1), Duration::from_millis(100));
        let fd = worker.reader.get_ref().as_raw_fd();
        let waiting_since = std::time::Instant::now();
        let batch_limit = limit.saturating_mul(front.job.count.max(1));
        // The item the page named last, and when this thread first saw it.
        let mut seen: (Option<u64>, std::time::Instant) = (None, waiting_since);
        while worker.reader.buffer().is_empty()
            && !forward::wait(worker, batches(in_flight), Some(tick))?
        {
            if fault.timed_out.is_some() || fault.breach.is_some() {
                continue; // killed; waiting for the EOF
            }
            let named = match page_item(progress, front, seen.0) {
                Ok(named) => named,
                // A child answers a batch before it begins the next: a page
                // ahead of the front batch is fine once its answer is here.
                Err(_) if wait_readable(fd, Duration::ZERO)? => break,
                Err(what) => {
                    fault.breach = Some(what);
                    runner.kill_if_running(None);
                    continue;
                }
            };
            if named.is_some() && named > seen.0 {
                seen = (named, std::time::Instant::now());
            }
            if seen.1.elapsed() > limit || waiting_since.elapsed() > batch_limit {
                fault.timed_out = Some((front.batch, seen.0));
                runner.kill_if_running(None);
            }
        }
    }
    if worker.events.as_ref().is_some_and(Inbox::listening) {
        while worker.reader.buffer().is_empty() && !forward::wait(worker, batches(in_flight), None)?
        {
        }
    }
    let got = worker.receive(frame, lease, lease_ok)?;
    // While its batch is in flight: the child sent a batch's events first.
    forward::drain(worker, batches(in_flight))?;
    Ok(got)
}

/// The batches in flight, for [`forward`].
fn batches(in_flight: &VecDeque<Sent>) -> impl Iterator<Item = (u64, &Job)> + Clone {
    in_flight.iter().map(|s| (s.batch, &s.job))
}

/// Asks a worker to exit and reaps it.
fn stop(runner: &Runner, mut worker: Conn) {
    let _ = forward::drain(&mut worker, std::iter::empty());
    let mut buf = Vec::new();
    let asked = message::shutdown(&mut buf)
        .and_then(|()| worker.writer.write_all(&buf))
        .is_ok();
    drop(worker.writer);
    // The runner forgets the pid before reaping can free it for reuse, so
    // that no other thread (`terminate`, a cancel) kills it by number once
    // it may name a new process; from here only `worker.child` kills it.
    runner.set_pid(None);
    if !asked {
        let _ = worker.child.kill();
    }
    // The child exits on SHUTDOWN or EOF and is reaped the moment it has
    // (see `wait_exit`). A child that hangs on its way out gets two
    // seconds, then SIGKILL.
    let fd = worker.reader.get_ref().as_raw_fd();
    let status = wait_exit(&mut worker.child, Some(fd), Duration::from_secs(2)).or_else(|| {
        let _ = worker.child.kill();
        worker.child.wait().ok()
    });
    events::worker_exited(worker.pid, status.map(exit_reason));
}

/// Accounts for a dead worker: blames the item it was running (from its
/// progress page, or by splitting the batch when the page cannot tell), and
/// puts every innocent item back in the queue.
fn died(
    shared: &PoolShared,
    runner: &Runner,
    progress: &Progress,
    fault: Fault,
    mut worker: Conn,
    in_flight: VecDeque<Sent>,
) {
    let killed_on_purpose = fault.repeated
        || (runner.was_killed() && fault.timed_out.is_none() && fault.breach.is_none());
    let front_batch = in_flight.front().map(|s| s.batch);
    let timed = fault.timed_out.is_some_and(|(b, _)| Some(b) == front_batch);
    let running = in_flight.front().and_then(|s| match fault.timed_out {
        Some((batch, item)) if batch == s.batch => item,
        _ => page_item(progress, s, None).ok().flatten(),
    });
    runner.set_pid(None);
    let reason = reap(&mut worker.child);
    // How the item it ran failed, if it did not break the protocol: an
    // allocation that failed is not a crash to retry (it would ask for as
    // much again), any other death is.
    let failure = death(shared, progress, &worker, reason);
    let out_of_memory = matches!(failure, Failure::OutOfMemory { .. });
    let terminated = shared.queue.is_terminated();
    // Its last events, then how it ended, in the front batch's context.
    let _ = forward::drain(&mut worker, batches(&in_flight));
    let front = in_flight.front();
    let death = Death {
        pid: worker.pid,
        reason,
        breach: fault.breach.as_deref(),
        timed_out: shared.task_timeout.filter(|_| timed),
        worker: front.map(|s| s.job.worker),
        item: front.and_then(|s| Some(s.job.first_index? + running?)),
    };
    events::report_death(
        front.map(|s| &*s.job.trace),
        &death,
        killed_on_purpose || terminated,
    );
    let mut requeue = Vec::new();
    let requeue_job = |job: Job, requeue: &mut Vec<Job>| {
        if let Some(control) = &job.control {
            control.requeue();
        }
        requeue.push(job);
    };
    for (i, sent) in in_flight.into_iter().enumerate() {
        let job = sent.job;
        if terminated {
            job.deliver(Outcome::Failed(Failure::Cancelled));
            continue;
        }
        if job.control.as_ref().is_some_and(|c| c.is_settled()) {
            continue; // cancelled or timed out by its Task: already answered
        }
        if i > 0 || killed_on_purpose {
            // Never started, or an innocent bystander of a kill.
            requeue_job(job, &mut requeue);
            continue;
        }
        let culprit = match running {
            Some(k) if k < u64::from(job.count) => {
                let k = k as u32;
                let (before, rest) = split(job, k);
                let rest = rest.expect("k < count leaves the running item");
                let (culprit, after) = split(rest, 1);
                // Items before it finished (their results died with the
                // process); items after it never started.
                for job in before.into_iter().chain(after) {
                    requeue_job(job, &mut requeue);
                }
                culprit.expect("split keeps the first item")
            }
            _ if job.count == 1 => job,
            _ => {
                // The page cannot tell: bisect. Each half runs again; a half
                // that crashes is split again, down to one item.
                let half = job.count / 2;
                let (a, b) = job.split_at(half);
                requeue_job(a, &mut requeue);
                requeue_job(b, &mut requeue);
                continue;
            }
        };
        if timed {
            let limit = shared.task_timeout.unwrap_or_default();
            if let Some(control) = &culprit.control {
                control.finish();
            }
            culprit.deliver(Outcome::Failed(Failure::Timeout(limit)));
        } else if culprit.retries > 0 && (!out_of_memory || fault.breach.is_some()) {
            let mut culprit = culprit;
            culprit.retries -= 1;
            let (name, item, left) = (culprit.worker, culprit.first_index, culprit.retries);
            culprit
                .trace
                .scope(|| events::item_retried(worker.pid, name, item, left));
            requeue_job(culprit, &mut requeue);
        } else {
            if let Some(control) = &culprit.control {
                control.finish();
            }
            culprit.deliver(Outcome::Failed(match &fault.breach {
                Some(what) => Failure::breach(worker.pid, what),
                None => failure.clone(),
            }));
        }
    }
    if !requeue.is_empty() {
        shared.queue.requeue_front(requeue);
    }
}

/// How a worker process that died of `reason` fails the item it ran (see
/// [`Failure::of_death`]).
fn death(shared: &PoolShared, progress: &Progress, worker: &Conn, reason: ExitReason) -> Failure {
    let aborted = reason == ExitReason::Signal(libc::SIGABRT);
    // What is left in its stderr pipe is read first (it wrote the report
    // before it aborted).
    let requested = worker
        .stderr
        .as_ref()
        .filter(|_| aborted)
        .and_then(|w| w.requested(STDERR_DRAIN));
    Failure::of_death(
        worker.pid,
        reason,
        progress.abort_note(),
        requested,
        shared.memory_limit,
    )
}

/// The item of the front batch `front` that a worker's progress page says
/// runs (`None`: none yet, or it is between items), checked against what
/// this thread knows: a child runs the items of its oldest batch in order,
/// marks itself idle between batches, and names no item past the batch's
/// count; it names no item before `after` (one it was already seen on).
///
/// # Errors
///
/// What the page says that no correct child writes.
fn page_item(progress: &Progress, front: &Sent, after: Option<u64>) -> Result<Option<u64>, String> {
    let (batch, item) = progress.snapshot();
    let count = u64::from(front.job.count);
    if item == crate::proto::IDLE {
        Ok(None)
    } else if batch != front.batch {
        Err(format!(
            "its progress page names item {item} of batch {batch} while batch {} is the one it runs",
            front.batch
        ))
    } else if item >= count {
        Err(format!(
            "its progress page names item {item} of batch {batch}, which has {count}"
        ))
    } else if after.is_some_and(|a| item < a) {
        Err(format!(
            "its progress page went back from item {} to item {item} of batch {batch}",
            after.unwrap_or_default()
        ))
    } else {
        Ok(Some(item))
    }
}

/// `split_at` that tolerates the edges.
fn split(job: Job, n: u32) -> (Option<Job>, Option<Job>) {
    if n == 0 {
        (None, Some(job))
    } else if n >= job.count {
        (Some(job), None)
    } else {
        let (a, b) = job.split_at(n);
        (Some(a), Some(b))
    }
}
