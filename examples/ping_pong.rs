//! Plays ping-pong over a pipe between this process and a child `Process`:
//! `multiproc::pipe` and `Process::spawn`, the Rust side of Python's
//! `multiprocessing.Pipe` and `Process`. Prints every round trip and the
//! mean round-trip time.
//!
//! The Python it ports (the tutorials' `Pipe` example, with the parent
//! playing `ping` and the child answering until it is told to quit):
//!
//! ```python
//! def pong(conn):
//!     while True:
//!         msg = conn.recv()
//!         if msg == "QUIT":
//!             break
//!         conn.send(f"pong {msg}")
//!     conn.close()
//!
//! if __name__ == "__main__":
//!     parent_conn, child_conn = Pipe()
//!     p = Process(target=pong, args=(child_conn,))
//!     p.start()
//!     for i in range(10):
//!         parent_conn.send(f"ping {i}")
//!         print(parent_conn.recv())
//!     parent_conn.send("QUIT")
//!     p.join()
//! ```
//!
//! No `"QUIT"` sentinel is needed here: when the parent drops its end, the
//! child's `recv` fails with `Disconnected` and its loop ends.
//!
//! ```text
//! cargo run --release --example ping_pong        # 10 round trips
//! cargo run --release --example ping_pong -- 1000
//! ```

use std::process::ExitCode;
use std::time::{Duration, Instant};

use multiproc::{PipeEnd, Process, entry, worker};

const DEFAULT_ROUNDS: u32 = 10;

/// Only the first rounds are printed one by one; the mean covers all.
const SHOWN: u32 = 10;

/// Answers every ping with a pong that names it and this process, until the
/// other end goes away; returns how many pings it answered.
#[worker]
fn pong(mut end: PipeEnd<String, String>) -> u32 {
    let me = std::process::id();
    let mut answered = 0;
    // `recv` fails once the parent's end is dropped: that is the "QUIT".
    while let Ok(msg) = end.recv() {
        answered += 1;
        if end.send(&format!("pong {msg} from {me}")).is_err() {
            break;
        }
    }
    answered
}

#[entry]
fn main() -> ExitCode {
    let rounds = match std::env::args().nth(1).map(|a| a.parse::<u32>()) {
        None => DEFAULT_ROUNDS,
        Some(Ok(n)) if n > 0 => n,
        Some(_) => {
            eprintln!("usage: ping_pong [ROUNDS]  (a positive number, default {DEFAULT_ROUNDS})");
            return ExitCode::from(2);
        }
    };
    match run(rounds) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(rounds: u32) -> Result<(), multiproc::Error> {
    // The parent's end sends and receives `String`s, and so does the
    // child's: `pipe::<A, B>()` gives an end that sends A and receives B,
    // and one the other way round.
    let (mut parent, child) = multiproc::pipe::<String, String>()?;

    // The child's end is an ordinary argument: it travels to the new process
    // as a file descriptor.
    let p = Process::spawn(pong, child)?;
    let pid = p.pid();
    println!(
        "{rounds} round trips between {} and {pid}",
        std::process::id()
    );

    // `spawn` returns as soon as the child is started, so the first round
    // trip also waits for it to be ready: the mean is shown with and
    // without it.
    let mut first = Duration::ZERO;
    let mut total = Duration::ZERO;
    for i in 0..rounds {
        let ping = format!("ping {i}");
        let t = Instant::now();
        parent.send(&ping)?;
        let reply = parent.recv()?;
        let rtt = t.elapsed();
        total += rtt;
        if i == 0 {
            first = rtt;
        }
        assert_eq!(
            reply,
            format!("pong {ping} from {pid}"),
            "the child must answer each ping in order"
        );
        if i < SHOWN {
            println!("  {ping:<8} -> {reply:<24} {:>7.1} µs", micros(rtt));
        } else if i == SHOWN {
            println!("  ...");
        }
    }

    // Hang up: the child's `recv` now fails, it returns its count and exits.
    drop(parent);
    let answered = p.join()?;
    assert_eq!(answered, rounds, "the child must have answered every ping");
    print!(
        "the child answered {answered} pings; mean round trip {:.1} µs",
        micros(total) / f64::from(rounds)
    );
    if rounds > 1 {
        print!(
            " ({:.1} µs without the first, which waits for the child to start)",
            micros(total - first) / f64::from(rounds - 1)
        );
    }
    println!();
    Ok(())
}

fn micros(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}
