use std::fs::File;

use multiproc::worker;

#[worker]
fn open(path: String) -> File {
    File::open(path).unwrap()
}

fn main() {}
