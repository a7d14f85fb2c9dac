use std::rc::Rc;

use multiproc::worker;

#[worker]
fn count(shared: Rc<u8>) -> u8 {
    *shared
}

fn main() {}
