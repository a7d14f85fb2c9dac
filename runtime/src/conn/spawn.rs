//! Starting a worker process: re-execute this binary with an inherited
//! control socket, then wait for its hello.
//!
//! The socket pair is created here and one end is inherited by the child
//! alone (it stays close-on-exec everywhere else), so no other process can
//! connect to a pool's control channel, and there is no `accept` that could
//! hang: if the child dies before its hello, the parent reads EOF at once.

use std::ffi::OsString;
use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use crate::guard::MARKER;
use crate::proto;
use crate::proto::Progress;

/// How long a new child may take to say hello. A child that dies is noticed
/// at once (EOF); this only bounds a child that hangs before serving.
const HELLO_TIMEOUT: Duration = Duration::from_secs(60);

/// A started worker process and the parent's end of its control socket.
pub(crate) struct Spawned {
    pub(crate) child: Child,
    pub(crate) stream: UnixStream,
}

fn exe() -> &'static (PathBuf, Option<OsString>) {
    static EXE: OnceLock<(PathBuf, Option<OsString>)> = OnceLock::new();
    EXE.get_or_init(|| {
        (
            crate::sys::process::executable(),
            std::env::args_os().next(),
        )
    })
}

/// Starts one worker process and waits for its hello.
///
/// `test` is the exact name of the `#[multiproc::test]` that creates the
/// pool, if any: the test binary is then re-run filtered to that test.
/// `memory_limit` caps the memory of the process (see
/// [`crate::sys::limit`]) from before it is sent its setup (set by this
/// process on Linux, by the worker as it starts elsewhere), and so before
/// it runs anything of the caller's.
///
/// # Errors
///
/// The io error if the process cannot be started, if its memory limit
/// cannot be set, or if it dies or stays silent before it says hello.
pub(crate) fn spawn_worker(
    test: Option<&str>,
    progress: &Progress,
    memory_limit: Option<u64>,
) -> io::Result<Spawned> {
    let (parent_end, child_end) = crate::sys::socket_pair()?;
    let (path, arg0) = exe();
    let mut cmd = Command::new(path);
    if let Some(arg0) = arg0 {
        cmd.arg0(arg0);
    }
    cmd.env(
        MARKER,
        format!("{}:{}", proto::PROTOCOL_VERSION, std::process::id()),
    );
    // The control socket is the child's stdin: the one descriptor `Command`
    // can hand over without a `pre_exec` hook, which would force a `fork()`
    // of this whole process instead of `posix_spawn` (slow for a large
    // parent). The child moves it off fd 0 and puts /dev/null there.
    cmd.stdin(Stdio::from(OwnedFd::from(child_end)));
    if let Some(name) = test {
        // libtest prints its own banner on stdout; keep the test output clean.
        cmd.args([
            name,
            "--exact",
            "--test-threads=1",
            "--include-ignored",
            "--nocapture",
            "-q",
        ]);
        cmd.stdout(Stdio::null());
    }
    if let Some(bytes) = memory_limit {
        crate::sys::limit::pass(&mut cmd, bytes);
        // Watched for Rust's report of a failed allocation (see
        // `watch::StderrWatch`), which says how much was asked for.
        cmd.stderr(Stdio::piped());
    }
    let mut child = cmd.spawn()?;
    drop(cmd); // closes our copy of the child's end

    let mut stream = parent_end;
    // The progress page goes over the socket, as a descriptor.
    let setup = (|| {
        if let Some(bytes) = memory_limit {
            crate::sys::limit::apply(child.id(), bytes).map_err(|e| {
                io::Error::new(e.kind(), format!("its memory_limit could not be set: {e}"))
            })?;
        }
        let mut frame = Vec::new();
        proto::message::setup(&mut frame)?;
        // The page, then what the worker watches its parent with.
        let mut fds = vec![progress.fd().try_clone_to_owned()?];
        fds.extend(crate::sys::parent::setup_fds()?);
        crate::sys::fdpass::write_with_fds(&mut stream, &frame, &fds)
    })();
    // From here a frame that stalls halfway, or a child that stops reading
    // what it is sent, is an error instead of a wait without end.
    let started = setup
        .and_then(|()| read_hello(&mut stream, child.id()))
        .and_then(|()| stream.set_read_timeout(Some(proto::FRAME_STALL)))
        .and_then(|()| stream.set_write_timeout(Some(proto::FRAME_STALL)));
    match started {
        Ok(()) => Ok(Spawned { child, stream }),
        Err(e) => {
            let _ = child.kill();
            let status = child.wait();
            let mut detail = match status {
                Ok(s) => format!("{e}; the process ended with {s}"),
                Err(_) => e.to_string(),
            };
            if let Some(bytes) = memory_limit {
                detail.push_str(&format!(" (its memory_limit is {bytes} bytes)"));
            }
            Err(io::Error::new(
                e.kind(),
                format!("worker process {} did not start: {detail}", child.id()),
            ))
        }
    }
}

fn read_hello(stream: &mut UnixStream, pid: u32) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    if !crate::sys::process::wait_readable(stream.as_raw_fd(), HELLO_TIMEOUT)? {
        return Err(io::Error::new(
            io::ErrorKind::TimedOut,
            format!("no hello within {HELLO_TIMEOUT:?}"),
        ));
    }
    stream.set_read_timeout(Some(proto::FRAME_STALL))?;
    let mut frame = Vec::new();
    if proto::read_frame(stream, &mut frame)?.is_none() {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "it exited before its hello",
        ));
    }
    proto::reply::read_hello(&frame, pid)
        .map_err(|b| io::Error::new(io::ErrorKind::InvalidData, b.message))
}
