#[multiproc::entry]
fn main(args: Vec<String>) {
    drop(args);
}
