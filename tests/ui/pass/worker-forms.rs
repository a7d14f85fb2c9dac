//! The shapes a `#[worker]` function can take, all still callable in-process.

use multiproc::{Worker, worker};
use serde::{Deserialize, Serialize};

/// Adds two numbers.
#[worker]
pub fn add(a: u64, b: u64) -> u64 {
    a + b
}

#[worker]
fn factorial(n: u64) -> u64 {
    if n == 0 { 1 } else { n * factorial(n - 1) }
}

#[worker(name = "stable::label")]
#[inline]
pub(crate) fn label((x, y): (u8, u8), mut prefix: String) -> String {
    prefix.push_str(&format!("{x}:{y}"));
    prefix
}

#[worker]
fn nothing() {}

#[derive(Serialize, Deserialize, Debug, PartialEq)]
struct Point {
    x: i32,
    y: i32,
}

#[worker]
fn flip(Point { x, y }: Point) -> Point {
    Point { x: y, y: x }
}

mod nested {
    pub mod deeper {
        use multiproc::worker;

        #[worker]
        pub fn negate(x: i64) -> i64 {
            -super::identity(x)
        }
    }

    fn identity(x: i64) -> i64 {
        x
    }
}

fn args_of<W: Worker>(_: W) -> std::marker::PhantomData<W::Args> {
    std::marker::PhantomData
}

fn main() {
    #[worker]
    fn local(x: u8) -> u8 {
        x * 2
    }

    // Still ordinary calls.
    assert_eq!(add(1, 2), 3);
    assert_eq!(factorial(5), 120);
    assert_eq!(label((1, 2), "at ".to_owned()), "at 1:2");
    nothing();
    assert_eq!(flip(Point { x: 1, y: 2 }), Point { x: 2, y: 1 });
    assert_eq!(nested::deeper::negate(3), -3);
    assert_eq!(local(4), 8);
    let pointer: fn(u64, u64) -> u64 = *add;
    assert_eq!(pointer(2, 2), 4);

    // And workers: bare `Args` for one argument, a tuple for several.
    let _: std::marker::PhantomData<u64> = args_of(factorial);
    let _: std::marker::PhantomData<(u64, u64)> = args_of(add);
    let _: std::marker::PhantomData<()> = args_of(nothing);
    assert_eq!(<add as Worker>::call((3, 4)), 7);
    assert_eq!(<label as Worker>::call(((5, 6), String::new())), "5:6");
    <nothing as Worker>::call(());

    // Named by module path unless renamed.
    assert_eq!(<add as Worker>::NAME, concat!(module_path!(), "::add"));
    assert_eq!(<label as Worker>::NAME, "stable::label");
    assert_eq!(
        <nested::deeper::negate as Worker>::NAME,
        concat!(module_path!(), "::nested::deeper::negate")
    );
    assert_eq!(<local as Worker>::NAME, concat!(module_path!(), "::local"));
    assert_eq!(format!("{add:?}"), <add as Worker>::NAME);

    // Zero-sized and `Copy`.
    assert_eq!(std::mem::size_of_val(&add), 0);
    let copy = add;
    assert_eq!(copy(1, 1) + add(1, 1), 4);
}
