//! Procedural macros of [multiproc](https://docs.rs/multiproc): `#[worker]`,
//! `#[entry]` and `#[multiproc::test]`.
//!
//! Use them through the `multiproc` crate, which re-exports them; the code
//! they generate names `::multiproc::__private`, so they do not work without
//! it. The examples below are not compiled here for that reason; the same
//! code is compiled and run by the `multiproc` crate's tests.
//!
//! Each attribute parses its item, checks it, and expands it, in that order
//! (`worker/{ast,valid,expand}.rs`, `guard.rs`). Every problem found is
//! reported at once, at the offending token, with a message that names the
//! fix; the item is still emitted unchanged next to the errors, so one
//! mistake does not turn into many.

use proc_macro::TokenStream;

mod entry;
mod errors;
mod guard;
mod test;
mod worker;

/// Makes a function runnable in a worker process.
///
/// ```rust,ignore
/// use multiproc::{Pool, worker};
///
/// /// Adds two numbers.
/// #[worker]
/// pub fn add(a: u64, b: u64) -> u64 {
///     a + b
/// }
///
/// # fn run(pool: &Pool) -> multiproc::Result<()> {
/// assert_eq!(add(1, 2), 3); // still an ordinary call, in this process
/// let sums = pool.map(add, vec![(1, 2), (3, 4)])?; // in child processes
/// assert_eq!(sums, [3, 7]);
/// # Ok(()) }
/// ```
///
/// `add` becomes a zero-sized `Copy` value that implements
/// `multiproc::Worker` and derefs to `fn(u64, u64) -> u64`, so it can be both
/// called and passed to a pool. The function is registered under its path
/// (`my_crate::add`), which is how a child process, running the same
/// executable, finds it.
///
/// # Arguments and result
///
/// Arguments and the result travel between processes with serde, so each
/// must be `Serialize + DeserializeOwned + Send + 'static`: owned data such
/// as `u64`, `String`, `Vec<T>`, or your own types that derive `Serialize`
/// and `Deserialize`. A type that is not is reported at that type. Pools
/// take the arguments as one value: the bare type for one argument
/// (`Args = u64`), a tuple for several (`Args = (u64, u64)`), `()` for none.
/// Argument patterns (`(x, y): (u8, u8)`, `mut v: Vec<u8>`) work as usual.
///
/// # Attribute arguments
///
/// - `#[worker(name = "stable::name")]`: register under this name instead of
///   the module path, so that moving the function does not change it. Two
///   workers with the same name are an error when the first pool starts,
///   which can happen for `#[worker]` functions of the same name declared
///   inside different function bodies of one module.
///
/// # Rejected, with the fix in the message
///
/// `async fn` (make it synchronous or start a runtime inside), generic
/// parameters and `where` clauses (one worker per concrete type), `self`
/// receivers (use a free function), borrowed arguments or results (`&str` →
/// `String`, `&[T]` → `Vec<T>`, `&T` → `T`), `impl Trait` arguments or
/// results, `const fn`, `unsafe fn`, an `extern` ABI and variadics.
///
/// # Without the attribute
///
/// The example above expands to about this:
///
/// ```rust,ignore
/// /// Adds two numbers.
/// #[allow(non_camel_case_types)]
/// #[derive(Clone, Copy, Default)]
/// pub struct add {}
///
/// #[doc(hidden)]
/// #[allow(non_upper_case_globals, dead_code)]
/// pub const add: add = add {};
///
/// const _: () = {
///     fn __multiproc_worker_add(a: u64, b: u64) -> u64 {
///         a + b
///     }
///
///     impl ::multiproc::__private::Worker for add {
///         type Args = (u64, u64);
///         type Output = u64;
///         const NAME: &'static str = concat!(module_path!(), "::", "add");
///         fn call(args: Self::Args) -> Self::Output {
///             let (__arg0, __arg1) = args;
///             __multiproc_worker_add(__arg0, __arg1)
///         }
///     }
///
///     impl ::core::ops::Deref for add {
///         type Target = fn(u64, u64) -> u64;
///         fn deref(&self) -> &Self::Target {
///             const FUNCTION: fn(u64, u64) -> u64 = __multiproc_worker_add;
///             &FUNCTION
///         }
///     }
///
///     impl ::core::fmt::Debug for add { /* prints the name */ }
///
///     ::multiproc::__private::inventory::submit! {
///         ::multiproc::__private::WorkerEntry::new::<add>()
///     }
/// };
/// ```
///
/// Doc comments, `#[cfg]` and `#[deprecated]` apply to the value; other
/// attributes (`#[inline]`, lint levels) stay on the function.
#[proc_macro_attribute]
pub fn worker(args: TokenStream, item: TokenStream) -> TokenStream {
    worker::expand(args.into(), item.into()).into()
}

/// Makes `main` safe to start worker processes from.
///
/// ```rust,ignore
/// use multiproc::{Pool, entry, worker};
///
/// #[worker]
/// fn square(n: u64) -> u64 {
///     n * n
/// }
///
/// #[entry]
/// fn main() -> Result<(), multiproc::Error> {
///     let pool = Pool::new(0)?;
///     println!("{:?}", pool.map(square, 0..10)?);
///     Ok(())
/// }
/// ```
///
/// Worker processes are the same executable started again. The guard that
/// `#[entry]` inserts as the first statement of `main` tells the two apart:
/// in a worker process it serves tasks and exits, so none of your startup
/// code runs there; in the original process it records that the guard is in
/// place and returns. Pools refuse to start without it (an error, never a
/// fork bomb).
///
/// `main` takes no arguments (read them with `std::env::args()`) and may
/// return a `Result`. The attribute takes no arguments.
///
/// # Async `main`
///
/// Put `#[entry]` above the runtime's attribute, so that the guard runs
/// before the runtime starts its threads:
///
/// ```rust,ignore
/// #[multiproc::entry]
/// #[tokio::main]
/// async fn main() -> Result<(), multiproc::Error> {
///     // ...
///     Ok(())
/// }
/// ```
///
/// An `async fn main` without a runtime attribute (one whose name ends in
/// `main`) is rejected.
///
/// # Without the attribute
///
/// ```rust,ignore
/// fn main() -> Result<(), multiproc::Error> {
///     ::multiproc::__private::entry();
///     let pool = Pool::new(0)?;
///     println!("{:?}", pool.map(square, 0..10)?);
///     Ok(())
/// }
///
/// // and the async one:
/// fn main() -> Result<(), multiproc::Error> {
///     ::multiproc::__private::entry();
///     #[tokio::main]
///     async fn main() -> Result<(), multiproc::Error> {
///         // ...
///         Ok(())
///     }
///     main()
/// }
/// ```
#[proc_macro_attribute]
pub fn entry(args: TokenStream, item: TokenStream) -> TokenStream {
    entry::expand(args.into(), item.into()).into()
}

/// A `#[test]` that can start worker processes.
///
/// ```rust,ignore
/// use multiproc::{Pool, worker};
///
/// #[worker]
/// fn double(n: u64) -> u64 {
///     n * 2
/// }
///
/// #[multiproc::test]
/// fn doubles() -> Result<(), multiproc::Error> {
///     let pool = Pool::new(2)?;
///     assert_eq!(pool.map(double, [1, 2])?, [2, 4]);
///     Ok(())
/// }
/// ```
///
/// A test binary has no `main` of yours to put `#[entry]` on; the worker
/// processes of a test are the test binary started again, running only this
/// test, and the guard that this attribute inserts as the test's first
/// statement turns them into workers. Use it instead of `#[test]`, not
/// together with it. `#[ignore]`, `#[should_panic]` and a `Result` return
/// type work as with `#[test]`. The attribute takes no arguments.
///
/// # Async tests
///
/// Put the runtime's test attribute below it:
///
/// ```rust,ignore
/// #[multiproc::test]
/// #[tokio::test]
/// async fn doubles_async() {
///     // ...
/// }
/// ```
///
/// An `async fn` without such an attribute (one whose name ends in `test`)
/// is rejected.
///
/// # Without the attribute
///
/// ```rust,ignore
/// #[test]
/// fn doubles() -> Result<(), multiproc::Error> {
///     ::multiproc::__private::test_entry(concat!(module_path!(), "::", "doubles"));
///     let pool = Pool::new(2)?;
///     assert_eq!(pool.map(double, [1, 2])?, [2, 4]);
///     Ok(())
/// }
///
/// // and the async one:
/// #[test]
/// #[allow(unnameable_test_items)]
/// fn doubles_async() {
///     ::multiproc::__private::test_entry(concat!(module_path!(), "::", "doubles_async"));
///     #[tokio::test]
///     async fn doubles_async() {
///         // ...
///     }
///     doubles_async()
/// }
/// ```
#[proc_macro_attribute]
pub fn test(args: TokenStream, item: TokenStream) -> TokenStream {
    test::expand(args.into(), item.into()).into()
}
