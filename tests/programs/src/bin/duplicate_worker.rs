//! Two `#[worker]` functions registered under one name: starting a pool must
//! fail with `DuplicateWorker`, naming it, instead of running the wrong one.

use multiproc::{ErrorKind, Pool, entry, worker};

#[worker(name = "twice")]
fn first(x: u64) -> u64 {
    x
}

#[worker(name = "twice")]
fn second(x: u64) -> u64 {
    x + 1
}

#[entry]
fn main() {
    assert_eq!(first(1) + second(1), 3);
    match Pool::new(1) {
        Err(e) => {
            if let ErrorKind::DuplicateWorker { name } = e.kind() {
                println!("duplicate: {name}");
            }
            println!("error: {e}");
            println!("children: {}", multiproc_test_programs::children().len());
        }
        Ok(pool) => println!("started: {:?}", pool.map(first, 0..3)),
    }
}
