#[multiproc::test]
async fn runs() {}

fn main() {}
