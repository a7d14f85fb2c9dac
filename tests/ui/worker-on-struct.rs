#[multiproc::worker]
struct NotAFunction;

fn main() {}
