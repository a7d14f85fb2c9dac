//! Comparison bench (being written): sequential Rust, rayon, multiproc and
//! Python's multiprocessing on the same workloads.

#[multiproc::entry]
fn main() {
    println!("the comparison bench is not written yet");
}
