//! `#[multiproc::entry]` above `#[tokio::main]`: the guard runs first, then
//! the runtime starts and runs the async body.

#[multiproc::entry]
#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), multiproc::Error> {
    tokio::task::yield_now().await;
    Ok(())
}
