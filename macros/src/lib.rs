//! Procedural macros of multiproc (docs to come).

use proc_macro::TokenStream;

mod entry;
mod errors;
mod guard;
mod test;
mod worker;

/// Marks a worker function.
#[proc_macro_attribute]
pub fn worker(args: TokenStream, item: TokenStream) -> TokenStream {
    worker::expand(args.into(), item.into()).into()
}

/// Guards `main`.
#[proc_macro_attribute]
pub fn entry(args: TokenStream, item: TokenStream) -> TokenStream {
    entry::expand(args.into(), item.into()).into()
}

/// A test whose pools work.
#[proc_macro_attribute]
pub fn test(args: TokenStream, item: TokenStream) -> TokenStream {
    test::expand(args.into(), item.into()).into()
}
