//! A driver's side of its worker's forwarded `tracing` events (see
//! [`crate::trace`]): they are read while the driver waits for the worker,
//! and each is emitted in the context of the job whose batch it names.

use std::io;
use std::os::fd::AsFd;
use std::time::Duration;

use super::job::Job;
use crate::conn::Conn;
use crate::trace;

/// Waits until the worker's control socket has something to read, for at
/// most `timeout` (`None`: no limit), emitting its forwarded events
/// meanwhile; `in_flight` are its batches in flight (id and job).
/// `Ok(false)` if the time ran out.
///
/// # Errors
///
/// As [`trace::inbox::wait`].
pub(crate) fn wait<'a>(
    worker: &mut Conn,
    in_flight: impl Iterator<Item = (u64, &'a Job)> + Clone,
    timeout: Option<Duration>,
) -> io::Result<bool> {
    let control = worker.reader.get_ref().as_fd();
    let batch = |b| find(in_flight.clone(), b);
    trace::inbox::wait(worker.events.as_mut(), control, timeout, &batch)
}

/// Emits the worker's forwarded events that wait.
///
/// # Errors
///
/// As [`trace::inbox::Inbox::drain`].
pub(crate) fn drain<'a>(
    worker: &mut Conn,
    in_flight: impl Iterator<Item = (u64, &'a Job)> + Clone,
) -> io::Result<()> {
    match &mut worker.events {
        Some(events) => events.drain(&|b| find(in_flight.clone(), b)),
        None => Ok(()),
    }
}

fn find<'a>(
    mut in_flight: impl Iterator<Item = (u64, &'a Job)>,
    batch: u64,
) -> Option<trace::Batch<'a>> {
    let (_, job) = in_flight.find(|&(b, _)| b == batch)?;
    Some(trace::Batch::of(&job.trace, job.first_index, job.count))
}
