use multiproc::worker;

#[worker]
const fn one() -> u8 {
    1
}

#[worker]
unsafe fn two() -> u8 {
    2
}

#[worker]
extern "C" fn three() -> u8 {
    3
}

fn main() {}
