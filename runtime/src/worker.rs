//! The [`Worker`] trait that `#[worker]` implements.

use serde::Serialize;
use serde::de::DeserializeOwned;

/// A function that can run in a worker process.
///
/// Do not implement this trait by hand: put `#[multiproc::worker]` on a free
/// function. The attribute turns the function into a zero-sized `Copy` value
/// that implements `Worker` and still derefs to the plain function, so it can
/// be called directly (`is_prime(7)`) and passed to a pool
/// (`pool.map(is_prime, 0..100)`).
///
/// A worker with several arguments takes them as a tuple in `map`, `submit`
/// and friends: `fn add(a: u64, b: u64)` has `Args = (u64, u64)`; one argument
/// is passed bare (`Args = u64`), none as `()`.
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not a #[worker] function",
    label = "expected a function marked with #[multiproc::worker]",
    note = "closures and unmarked functions cannot run in a worker process: the child finds the function by name; put #[multiproc::worker] on a free function and pass its name"
)]
pub trait Worker: Copy + Send + Sync + 'static {
    /// The arguments, as one value: the bare type for one argument, a tuple
    /// for several, `()` for none.
    type Args: Serialize + DeserializeOwned + Send + 'static;
    /// What the function returns.
    type Output: Serialize + DeserializeOwned + Send + 'static;
    /// The name under which the child process finds the function:
    /// `module::path::function` unless set with `#[worker(name = "...")]`.
    const NAME: &'static str;
    /// Calls the function in this process.
    fn call(args: Self::Args) -> Self::Output;
}
