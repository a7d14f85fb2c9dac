//! What a worker rank runs: it serves rank 0's pools, one at a time, in a
//! local process pool of its own, and relays each local reply to rank 0 as
//! a `REPLY`.

use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use mpi::topology::SimpleCommunicator;

use crate::codec;
use crate::conn::outcome::{Failure, Outcome, Reply};
use crate::error::{Error, ErrorKind, Result};
use crate::pool::job::{Job, Sink};
use crate::pool::{Initializer, Pool};
use crate::proto;
use crate::registry;

use super::message::{
    CLOSE, CLOSED, Config, EXIT, OPEN, OPENED, Opened, REPLY, REPLY_DONE, REPLY_FAILED, REPLY_HEAD,
    RUN, TERMINATE,
};
use super::transport::{Backoff, Outbox, try_receive};
use super::world::WORLD;

/// The first successful initializer output of this rank's pool, for rank 0
/// to check.
static INIT_OUTPUT: Mutex<Option<Vec<u8>>> = Mutex::new(None);

/// The initializer check of a worker rank's local pool: a panic fails it;
/// a value is kept for rank 0, which knows its type.
fn keep_init_output(worker: &'static str, rest: &mut &[u8]) -> Result<()> {
    let whole = *rest;
    match codec::next_item(&mut &whole[..]) {
        Some((codec::ITEM_OK, _, item)) => {
            INIT_OUTPUT
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .get_or_insert_with(|| item.to_vec());
            Ok(())
        }
        _ => crate::conn::decode::decode_item::<serde::de::IgnoredAny>(worker, None, rest)
            .map(|_| ()),
    }
}

/// A worker rank's open pool.
struct RankPool {
    pool: Pool,
    retries: u32,
    panic_retries: u32,
}

/// Serves rank 0 until it says `EXIT`.
pub(super) fn serve_rank() -> ! {
    let world = WORLD.get().expect("set before serve_rank");
    let comm = &world.comm;
    let (tx, rx) = mpsc::channel::<(u64, Reply)>();
    let mut pool: Option<RankPool> = None;
    let mut out = Outbox::default();
    let mut backoff = Backoff::new(Backoff::BUSY);
    let mut relay = Vec::new();
    loop {
        let mut busy = false;
        while let Some((_, message)) = try_receive(comm, Some(0)) {
            busy = true;
            match message.first().copied() {
                Some(OPEN) => {
                    let opened = open_local(&message[1..]);
                    let answer = match opened {
                        Ok(p) => {
                            let ready = Opened::Ready {
                                workers: p.pool.workers() as u64,
                                host: host_name(),
                                init_output: INIT_OUTPUT
                                    .lock()
                                    .unwrap_or_else(|e| e.into_inner())
                                    .take(),
                            };
                            pool = Some(p);
                            ready
                        }
                        Err(answer) => answer,
                    };
                    let mut bytes = vec![OPENED];
                    bytes.extend(postcard::to_stdvec(&answer).unwrap_or_default());
                    out.send(comm, 0, bytes);
                }
                Some(RUN) => run_batch(&message, pool.as_ref(), &tx),
                Some(kind @ (CLOSE | TERMINATE)) => {
                    if let Some(p) = pool.take() {
                        if kind == TERMINATE {
                            p.pool.terminate();
                        }
                        drop(p);
                    }
                    // Every reply of the closed pool goes before CLOSED (MPI
                    // keeps the order of messages between two ranks).
                    forward(comm, &rx, &mut out, &mut relay);
                    out.send(comm, 0, vec![CLOSED]);
                }
                Some(EXIT) => {
                    drop(pool.take());
                    out.flush();
                    // SAFETY: the last MPI call of this process; every
                    // request is complete.
                    unsafe { mpi::ffi::MPI_Finalize() };
                    std::process::exit(0);
                }
                _ => {}
            }
        }
        busy |= forward(comm, &rx, &mut out, &mut relay);
        busy |= out.poll();
        backoff.cap = if pool.is_some() {
            Backoff::BUSY
        } else {
            Backoff::IDLE
        };
        if busy {
            backoff.reset();
        } else {
            // Sleep on the local replies; rank 0's messages are polled.
            if let Ok(reply) = rx.recv_timeout(backoff.pause().max(Duration::from_micros(1))) {
                send_reply(comm, &mut out, &mut relay, reply);
                backoff.reset();
            }
        }
    }
}

/// Starts the local pool that `OPEN` asks for.
fn open_local(body: &[u8]) -> std::result::Result<RankPool, Opened> {
    let config: Config = postcard::from_bytes(body)
        .map_err(|e| Opened::Failed(format!("undecodable pool options: {e}")))?;
    *INIT_OUTPUT.lock().unwrap_or_else(|e| e.into_inner()) = None;
    let mut builder = Pool::builder()
        .workers(match config.workers {
            0 => default_workers(),
            n => usize::try_from(n).unwrap_or(1),
        })
        .retries(config.retries)
        .retry_panics(config.panic_retries);
    if let Some(k) = config.max_tasks_per_worker {
        builder = builder.max_tasks_per_worker(k);
    }
    if let Some(limit) = config.task_timeout {
        builder = builder.task_timeout(limit);
    }
    if let Some(bytes) = config.max_worker_rss {
        builder = builder.max_worker_memory(bytes);
    }
    if let Some(bytes) = config.memory_limit.filter(|&b| b > 0) {
        builder = builder.memory_limit(bytes);
    }
    if let Some((name, payload)) = config.initializer {
        let Some(entry) = registry::lookup(&name) else {
            return Err(Opened::InitializerFailed(
                Error::new(ErrorKind::UnknownWorker {
                    name,
                    known: registry::known_names(),
                })
                .to_string(),
            ));
        };
        builder.initializer = Some(Ok(Initializer {
            worker: entry.name(),
            payload,
            fds: Vec::new(),
            check: keep_init_output,
        }));
    }
    match builder.build() {
        Ok(pool) => Ok(RankPool {
            pool,
            retries: config.retries,
            panic_retries: config.panic_retries,
        }),
        Err(e) => match e.kind() {
            ErrorKind::Initializer(inner) => Err(Opened::InitializerFailed(inner.to_string())),
            _ => Err(Opened::Failed(e.to_string())),
        },
    }
}

/// Set at launch (`mpirun -x MULTIPROC_WORKERS_PER_RANK=8 ...`) to choose
/// the worker processes per rank of pools that do not set `workers(n)`.
const WORKERS_PER_RANK: &str = "MULTIPROC_WORKERS_PER_RANK";

/// Worker processes per rank by default: [`WORKERS_PER_RANK`] if set, else
/// this node's CPUs shared among the worker ranks on it.
fn default_workers() -> usize {
    static DEFAULT: OnceLock<usize> = OnceLock::new();
    *DEFAULT.get_or_init(|| {
        if let Some(n) = std::env::var(WORKERS_PER_RANK)
            .ok()
            .and_then(|v| v.trim().parse::<usize>().ok())
            .filter(|&n| n > 0)
        {
            return n;
        }
        let cpus = std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get);
        let local: usize = [
            "OMPI_COMM_WORLD_LOCAL_SIZE",
            "MPI_LOCALNRANKS",
            "SLURM_NTASKS_PER_NODE",
        ]
        .iter()
        .find_map(|v| std::env::var(v).ok()?.parse().ok())
        .unwrap_or(1);
        // Rank 0 mostly waits; do not count it against the node's CPUs.
        let ranks = if local > 1 { local - 1 } else { 1 };
        (cpus / ranks).max(1)
    })
}

fn host_name() -> String {
    mpi::environment::processor_name().unwrap_or_else(|_| "an unknown host".to_owned())
}

/// Queues a `RUN` batch on the local pool; its replies go to `tx`.
fn run_batch(message: &[u8], pool: Option<&RankPool>, tx: &Sender<(u64, Reply)>) {
    let parsed = (|| {
        let mut cur = proto::Cursor(message.get(1..)?);
        let batch = cur.u64().ok()?;
        let count = cur.u32().ok()?;
        let len = cur.u32().ok()? as usize;
        let name = std::str::from_utf8(cur.take(len).ok()?).ok()?;
        Some((batch, count, name, cur.rest()))
    })();
    let Some((batch, count, name, payload)) = parsed else {
        return; // rank 0 built it: cannot happen short of memory corruption
    };
    let fail = |failure| {
        let _ = tx.send((
            batch,
            Reply {
                first_index: Some(0),
                count,
                outcome: Outcome::Failed(failure),
            },
        ));
    };
    let Some(p) = pool else {
        fail(Failure::Closed);
        return;
    };
    let Some(entry) = registry::lookup(name) else {
        fail(Failure::UnknownWorker {
            name: name.to_owned(),
            known: registry::known_names(),
        });
        return;
    };
    let sink = Sink::Relay(batch, tx.clone(), entry.reframe());
    let mut job = Job::new(entry.name(), payload.to_vec().into(), count, sink);
    job.first_index = Some(0);
    job.retries = p.retries;
    job.panic_retries = p.panic_retries;
    p.pool.shared.queue.push(job);
}

/// Sends every local reply that is ready; `true` if there was one.
fn forward(
    comm: &SimpleCommunicator,
    rx: &Receiver<(u64, Reply)>,
    out: &mut Outbox,
    relay: &mut Vec<u8>,
) -> bool {
    let mut any = false;
    while let Ok(reply) = rx.try_recv() {
        send_reply(comm, out, relay, reply);
        any = true;
    }
    any
}

fn send_reply(
    comm: &SimpleCommunicator,
    out: &mut Outbox,
    relay: &mut Vec<u8>,
    (batch, reply): (u64, Reply),
) {
    encode_reply(relay, batch, reply);
    out.send(comm, 0, std::mem::take(relay));
}

/// Encodes a local reply as a `REPLY` for rank 0 into `relay` (cleared
/// first).
pub(super) fn encode_reply(relay: &mut Vec<u8>, batch: u64, reply: Reply) {
    let offset = reply.first_index.unwrap_or(0) as u32;
    relay.clear();
    relay.push(REPLY);
    relay.extend_from_slice(&batch.to_le_bytes());
    relay.extend_from_slice(&offset.to_le_bytes());
    relay.extend_from_slice(&reply.count.to_le_bytes());
    let failure = match reply.outcome {
        Outcome::Done { dense: true, .. } => Some(Failure::Protocol(
            "a relayed batch came back dense (a bug)".to_owned(),
        )),
        Outcome::Done {
            data,
            start,
            elapsed_ns,
            dense: false,
        } => {
            let results = &data[start..];
            if i32::try_from(REPLY_HEAD + 8 + results.len()).is_ok() {
                relay.push(REPLY_DONE);
                relay.extend_from_slice(&elapsed_ns.to_le_bytes());
                relay.extend_from_slice(results);
                None
            } else {
                Some(Failure::Protocol(format!(
                    "results of {} bytes are larger than one MPI message can be (2 GiB)",
                    results.len()
                )))
            }
        }
        Outcome::Failed(failure) => Some(failure),
        Outcome::Stored { .. } => Some(Failure::Protocol(
            "a relayed batch was stored in place (a bug)".to_owned(),
        )),
        Outcome::Local(error) => Some(Failure::Protocol(
            error.map_or_else(|| "lost result".to_owned(), |e| e.to_string()),
        )),
    };
    if let Some(failure) = failure {
        relay.truncate(REPLY_HEAD - 1);
        relay.push(REPLY_FAILED);
        relay.extend(postcard::to_stdvec(&failure).unwrap_or_default());
    }
}
