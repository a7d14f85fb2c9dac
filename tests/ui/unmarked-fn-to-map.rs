fn add_one(x: u64) -> u64 {
    x + 1
}

fn f(pool: &multiproc::Pool) {
    let _ = pool.map(add_one, 0..10u64);
}

fn main() {}
