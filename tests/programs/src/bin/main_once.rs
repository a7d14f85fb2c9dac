//! `#[entry]` main with a side effect: appends one line to the file named by
//! its first argument, then maps over a pool. Children must not run `main`,
//! so the file ends up with exactly one line.

use std::io::Write;

use multiproc::{Pool, entry, worker};

#[worker]
fn square(x: u64) -> u64 {
    x * x
}

#[entry]
fn main() -> Result<(), multiproc::Error> {
    let path = std::env::args_os()
        .nth(1)
        .expect("usage: main_once <file to append to>");
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .expect("open the log file");
    writeln!(file, "main ran in {}", std::process::id()).expect("append");
    drop(file);

    let pool = Pool::new(2)?;
    let squares = pool.map(square, 0..100)?;
    println!("sum of squares: {}", squares.iter().sum::<u64>());
    Ok(())
}
