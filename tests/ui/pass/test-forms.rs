//! `#[multiproc::test]` keeps `#[ignore]`, `#[should_panic]`, return types,
//! and works under `#[tokio::test]`. (Built as a binary here, so the tests
//! only have to compile.)

#[multiproc::test]
fn plain() {}

#[multiproc::test]
#[should_panic(expected = "boom")]
fn panics() {
    panic!("boom");
}

#[multiproc::test]
#[ignore = "slow"]
fn ignored() -> Result<(), multiproc::Error> {
    Ok(())
}

#[multiproc::test]
#[tokio::test]
async fn async_test() {
    tokio::task::yield_now().await;
}

fn main() {}
