//! A worker process's stderr, passed on to this process's stderr by a
//! thread that watches it for Rust's report of a failed allocation
//! ("memory allocation of N bytes failed"), the one place a stable Rust
//! program says how much it asked for before it aborts.
//!
//! Used under a pool's `memory_limit` only. What a worker writes there is
//! its own word: it says what was asked only of a worker that did die by
//! `SIGABRT`, and about nothing else.

use std::io::{Read, Write};
use std::process::ChildStderr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::time::Duration;

/// Lines longer than this are matched on their last bytes only: what is
/// kept of a line never grows past it, whatever a worker writes.
const LINE_KEPT: usize = 256;

const BEFORE: &[u8] = b"memory allocation of ";
const AFTER: &[u8] = b" bytes failed";

/// The watcher of one worker process's stderr.
pub(crate) struct StderrWatch {
    /// The size in the first report of a failed allocation, plus one (0:
    /// none yet). The first: printing the backtrace of a failure under a
    /// memory limit can fail to allocate in turn, and report that too.
    requested: Arc<AtomicU64>,
    /// Disconnected when the thread has read the pipe to its end.
    ended: mpsc::Receiver<()>,
}

impl StderrWatch {
    /// Starts the thread that passes `stderr` on and watches it.
    ///
    /// # Errors
    ///
    /// If the thread cannot be started.
    pub(crate) fn start(mut stderr: ChildStderr, pid: u32) -> std::io::Result<StderrWatch> {
        let requested = Arc::new(AtomicU64::new(0));
        let (alive, ended) = mpsc::channel::<()>();
        let seen = requested.clone();
        std::thread::Builder::new()
            .name(format!("multiproc-stderr-{pid}"))
            .spawn(move || {
                let _alive = alive;
                let mut lines = Lines::default();
                let mut buf = vec![0u8; 16 * 1024];
                loop {
                    let n = match stderr.read(&mut buf) {
                        Ok(0) => return,
                        Ok(n) => n,
                        Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                        Err(_) => return,
                    };
                    // Passed on whether or not this process's stderr takes
                    // it: the pipe is drained either way, so the worker
                    // never blocks on it.
                    let _ = std::io::stderr().write_all(&buf[..n]);
                    if let Some(size) = lines.feed(&buf[..n]) {
                        let first = size.saturating_add(1);
                        let _ =
                            seen.compare_exchange(0, first, Ordering::Relaxed, Ordering::Relaxed);
                    }
                }
            })?;
        Ok(StderrWatch { requested, ended })
    }

    /// The size of the first failed allocation the worker reported, once
    /// it has exited: waits at most `limit` for the thread to read what is
    /// left in the pipe (a process the worker started may hold the pipe
    /// open after it).
    pub(crate) fn requested(&self, limit: Duration) -> Option<u64> {
        let _ = self.ended.recv_timeout(limit);
        self.requested.load(Ordering::Relaxed).checked_sub(1)
    }
}

/// Splits what a worker writes into lines and finds the reports of a
/// failed allocation among them.
#[derive(Default)]
struct Lines {
    /// The end of the line so far, at most [`LINE_KEPT`] bytes.
    line: Vec<u8>,
}

impl Lines {
    /// Takes the next bytes; the size of the first report of a failed
    /// allocation that a line they end holds.
    fn feed(&mut self, bytes: &[u8]) -> Option<u64> {
        let mut found = None;
        for piece in bytes.split_inclusive(|&b| b == b'\n') {
            let (text, ends) = match piece.split_last() {
                Some((b'\n', text)) => (text, true),
                _ => (piece, false),
            };
            let keep = text.len().min(LINE_KEPT);
            self.line.extend_from_slice(&text[text.len() - keep..]);
            if self.line.len() > LINE_KEPT {
                self.line.drain(..self.line.len() - LINE_KEPT);
            }
            if ends {
                found = found.or_else(|| reported_size(&self.line));
                self.line.clear();
            }
        }
        found
    }
}

/// `N` if `line` holds "memory allocation of N bytes failed".
fn reported_size(line: &[u8]) -> Option<u64> {
    let start = line.windows(BEFORE.len()).position(|w| w == BEFORE)? + BEFORE.len();
    let rest = &line[start..];
    let digits = rest.iter().take_while(|b| b.is_ascii_digit()).count();
    if digits == 0 || !rest[digits..].starts_with(AFTER) {
        return None;
    }
    rest[..digits].iter().try_fold(0u64, |n, &d| {
        n.checked_mul(10)?.checked_add(u64::from(d - b'0'))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_report_is_found_whatever_the_pieces() {
        let text = b"noise\nmemory allocation of 4294967296 bytes failed\nstack backtrace:\n";
        for cut in 0..text.len() {
            let mut lines = Lines::default();
            let a = lines.feed(&text[..cut]);
            let b = lines.feed(&text[cut..]);
            assert_eq!(b.or(a), Some(4 << 30), "cut at {cut}");
        }
        let mut lines = Lines::default();
        let two = b"memory allocation of 5 bytes failed\nmemory allocation of 7 bytes failed\n";
        assert_eq!(lines.feed(two), Some(5), "the first one");
    }

    #[test]
    fn lookalikes_and_floods_are_not_reports() {
        for line in [
            &b"memory allocation of  bytes failed\n"[..],
            b"memory allocation of 12 bytes\n",
            b"memory allocation of 99999999999999999999999 bytes failed\n",
            b"memory allocation of -3 bytes failed\n",
            b"memory allocation of 12 bytes failed", // no end of line yet
        ] {
            assert_eq!(
                Lines::default().feed(line),
                None,
                "{:?}",
                String::from_utf8_lossy(line)
            );
        }
        // A line of a megabyte keeps its last bytes only, and still ends
        // in a report that counts.
        let mut lines = Lines::default();
        let flood = vec![b'x'; 1 << 20];
        assert_eq!(lines.feed(&flood), None);
        assert!(lines.line.len() <= LINE_KEPT);
        assert_eq!(
            lines.feed(b"memory allocation of 64 bytes failed\n"),
            Some(64)
        );
        assert!(lines.line.is_empty());
    }
}
