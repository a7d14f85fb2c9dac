use multiproc::worker;

#[worker]
fn shout(text: &str) -> String {
    text.to_uppercase()
}

#[worker]
fn sum(values: &[u64], extra: &u64) -> u64 {
    values.iter().sum::<u64>() + extra
}

fn main() {}
