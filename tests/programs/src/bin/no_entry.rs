//! A `main` without `#[entry]`: starting a pool must fail with the
//! guard-missing error instead of spawning children that would run `main`
//! again. Appends a line to the file named by its first argument each time
//! `main` runs, and reports how many children it has.

use std::io::Write;

use multiproc::{ErrorKind, Pool, worker};

#[worker]
fn square(x: u64) -> u64 {
    x * x
}

fn main() {
    let path = std::env::args_os()
        .nth(1)
        .expect("usage: no_entry <file to append to>");
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .expect("open the log file");
    writeln!(file, "main ran in {}", std::process::id()).expect("append");
    drop(file);

    let outcome = Pool::new(2).map(|pool| pool.map(square, 0..10));
    println!("children: {}", multiproc_test_programs::children().len());
    match outcome {
        Err(e) if matches!(e.kind(), ErrorKind::GuardMissing) => {
            eprintln!("error: {e}");
            std::process::exit(2);
        }
        Err(e) => {
            eprintln!("unexpected error: {e:?}");
            std::process::exit(1);
        }
        Ok(result) => {
            eprintln!("a pool started without #[entry]: {result:?}");
            std::process::exit(0);
        }
    }
}
