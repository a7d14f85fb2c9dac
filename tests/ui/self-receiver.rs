use multiproc::worker;

struct Counter {
    n: u64,
}

impl Counter {
    #[worker]
    fn get(&self) -> u64 {
        self.n
    }
}

fn main() {}
