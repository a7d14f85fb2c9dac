use multiproc::worker;

#[worker]
fn name() -> &'static str {
    "name"
}

#[worker]
fn names(n: u64) -> Vec<&'static str> {
    vec!["name"; n as usize]
}

fn main() {}
