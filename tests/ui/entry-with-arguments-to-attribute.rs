#[multiproc::entry(threads = 4)]
fn main() {}
