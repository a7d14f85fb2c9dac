//! [`Process`]: one call of a `#[worker]` function in its own process, the
//! process-flavoured `std::thread::spawn`.

use std::io::{BufReader, Write};
use std::marker::PhantomData;
use std::sync::Arc;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde::de::DeserializeOwned;

use crate::codec;
use crate::conn::decode::decode_single;
use crate::conn::outcome::{Failure, Outcome, Reply};
use crate::conn::reap::reap;
use crate::conn::runner::Runner;
use crate::conn::slot::TaskSlot;
use crate::conn::spawn;
use crate::conn::{encode_run, send_run};
use crate::error::{Error, ErrorKind, Result};
use crate::proto;
use crate::proto::Progress;
use crate::proto::reply;
use crate::worker::Worker;
use crate::{guard, registry};

/// A `#[worker]` call running in a process of its own: Python's
/// `multiprocessing.Process`, shaped like [`std::thread::JoinHandle`].
///
/// The process is a fresh copy of this program (so the call cannot touch
/// the caller's memory); it runs the one call and exits. A panic, a crash
/// or a signal in it comes back from [`join`](Process::join) as an
/// [`Error`], never as a crash of the caller.
///
/// Dropping a `Process` without joining it detaches it: it runs to the end
/// and is reaped in the background. It is still killed if this program
/// dies.
///
/// ```ignore
/// let p = Process::spawn(greet, "A".to_owned())?;
/// println!("started {}", p.pid());
/// let greeting = p.join()?;
/// ```
pub struct Process<R> {
    pid: u32,
    slot: Arc<TaskSlot>,
    runner: Arc<Runner>,
    worker: &'static str,
    _output: PhantomData<fn() -> R>,
}

impl<R> std::fmt::Debug for Process<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Process")
            .field("pid", &self.pid)
            .field("worker", &self.worker)
            .finish()
    }
}

impl<R: DeserializeOwned + Send + 'static> Process<R> {
    /// Starts `worker(args)` in a new process and returns at once.
    ///
    /// # Errors
    ///
    /// [`GuardMissing`](ErrorKind::GuardMissing) without `#[entry]`;
    /// [`Spawn`](ErrorKind::Spawn) if the process cannot start;
    /// [`Codec`](ErrorKind::Codec) if `args` cannot be encoded.
    pub fn spawn<W>(worker: W, args: W::Args) -> Result<Process<R>>
    where
        W: Worker<Output = R>,
    {
        let _ = worker;
        if !guard::guard_installed() {
            return Err(Error::new(ErrorKind::GuardMissing));
        }
        registry::validate()?;
        let (payload, fds) = codec::encode_call::<W>(&args)?;
        let slot = Arc::new(TaskSlot::new());
        let runner = Arc::new(Runner::default());
        let (started_tx, started_rx) = mpsc::channel();
        let test = guard::current_test();
        let (thread_slot, thread_runner) = (slot.clone(), runner.clone());
        // The thread that spawns the child lives until the child is reaped:
        // the child's parent-death signal is tied to it.
        std::thread::Builder::new()
            .name("multiproc-process".to_owned())
            .spawn(move || {
                supervise(
                    W::NAME,
                    (payload, fds),
                    test,
                    &thread_slot,
                    &thread_runner,
                    started_tx,
                )
            })
            .map_err(|e| Error::new(ErrorKind::Spawn(e)))?;
        let pid = started_rx.recv().map_err(|_| {
            Error::new(ErrorKind::Spawn(std::io::Error::other(
                "the supervising thread died",
            )))
        })??;
        Ok(Process {
            pid,
            slot,
            runner,
            worker: W::NAME,
            _output: PhantomData,
        })
    }

    /// The process id of the child.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Waits for the call to finish and returns its result.
    ///
    /// # Errors
    ///
    /// [`Panic`](ErrorKind::Panic) if the call panicked;
    /// [`WorkerDied`](ErrorKind::WorkerDied) with the exit code or signal if
    /// the process died (including after [`kill`](Process::kill));
    /// [`OutOfMemory`](ErrorKind::OutOfMemory) if it aborted because an
    /// allocation failed;
    /// [`Codec`](ErrorKind::Codec) if the result could not be decoded.
    pub fn join(self) -> Result<R> {
        let reply = self
            .slot
            .wait(None)
            .expect("a finished process has a reply");
        decode_single(self.worker, reply)
    }

    /// Like [`join`](Process::join), but kills the process if it has not
    /// finished after `timeout`, and then fails with
    /// [`Timeout`](ErrorKind::Timeout).
    ///
    /// # Errors
    ///
    /// As [`join`](Process::join), plus `Timeout`.
    pub fn join_timeout(self, timeout: Duration) -> Result<R> {
        if let Some(reply) = self.slot.wait(Instant::now().checked_add(timeout)) {
            return decode_single(self.worker, reply);
        }
        self.slot.fill(Reply {
            first_index: None,
            count: 1,
            outcome: Outcome::Failed(Failure::Timeout(timeout)),
        });
        self.runner.kill_if_running(None);
        let reply = self.slot.wait(None).expect("a filled slot has a reply");
        decode_single(self.worker, reply)
    }

    /// `true` once the process has finished (or died).
    pub fn is_finished(&self) -> bool {
        self.slot.is_done()
    }

    /// Kills the process with `SIGKILL`. [`join`](Process::join) then
    /// reports [`WorkerDied`](ErrorKind::WorkerDied) with signal 9, unless
    /// the call had already finished.
    pub fn kill(&self) {
        self.runner.kill_if_running(None);
    }
}

/// Runs on the supervising thread: start the child, hand it the call, wait
/// for the answer or its death, reap it.
fn supervise(
    worker: &'static str,
    (payload, fds): (Vec<u8>, Vec<std::os::fd::OwnedFd>),
    test: Option<String>,
    slot: &TaskSlot,
    runner: &Runner,
    started: mpsc::Sender<Result<u32>>,
) {
    let spawned = Progress::create().and_then(|progress| {
        let s = spawn::spawn_worker(test.as_deref(), &progress, None)?;
        let reader = s.stream.try_clone()?;
        Ok((s, reader, progress))
    });
    let (mut spawned, reader, progress) = match spawned {
        Ok(s) => s,
        Err(e) => {
            let _ = started.send(Err(Error::new(ErrorKind::Spawn(e))));
            return;
        }
    };
    let pid = spawned.child.id();
    runner.set_pid(Some(pid));
    let _ = started.send(Ok(pid));

    let mut reader = BufReader::new(reader);
    let mut buf = Vec::new();
    let mut frame = Vec::new();
    let answer = encode_run(&mut buf, 1, worker, &payload, fds.len())
        .and_then(|()| send_run(&mut spawned.stream, &buf, &payload, &fds))
        .and_then(|()| proto::read_frame(&mut reader, &mut frame));
    // `Err(Some(what))`: the child broke the protocol; `Err(None)`: it
    // ended without an answer.
    let read = reply::read_single(answer, &frame, 1);
    let fill = |outcome| {
        slot.fill(Reply {
            first_index: None,
            count: 1,
            outcome,
        });
    };
    match read {
        Ok(answer) => {
            // The answer first: reaping waits for the child's exit.
            if let reply::Answer::Done { .. } = answer {
                let _ = proto::message::shutdown(&mut buf)
                    .and_then(|()| spawned.stream.write_all(&buf));
            }
            fill(match answer {
                reply::Answer::Done { dense, .. } => Outcome::Done {
                    data: std::mem::take(&mut frame).into(),
                    start: proto::DONE_HEADER,
                    elapsed_ns: 0,
                    dense,
                },
                reply::Answer::Failed(failure) => Outcome::Failed(failure.into()),
            });
            drop(spawned.stream);
            reap(&mut spawned.child);
        }
        Err(Some(breach)) => {
            runner.kill_if_running(None);
            runner.set_pid(None);
            reap(&mut spawned.child);
            fill(Outcome::Failed(Failure::breach(pid, &breach)));
        }
        Err(None) => {
            runner.set_pid(None);
            let reason = reap(&mut spawned.child);
            let note = progress.abort_note();
            fill(Outcome::Failed(Failure::of_death(
                pid, reason, note, None, None,
            )));
        }
    }
    runner.set_pid(None);
}
