#[multiproc::entry]
async fn main() {}
