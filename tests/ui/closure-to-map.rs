fn f(pool: &multiproc::Pool) {
    let _ = pool.map(|x: u64| x + 1, 0..10u64);
}

fn main() {}
