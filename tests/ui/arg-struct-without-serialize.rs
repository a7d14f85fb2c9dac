use multiproc::worker;

struct Config {
    threads: usize,
}

#[worker]
fn run(id: u64, config: Config) -> usize {
    id as usize + config.threads
}

fn main() {}
