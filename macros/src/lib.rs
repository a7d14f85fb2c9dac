//! Procedural macros of multiproc (docs to come).

use proc_macro::TokenStream;

mod errors;
mod worker;

/// Marks a worker function.
#[proc_macro_attribute]
pub fn worker(args: TokenStream, item: TokenStream) -> TokenStream {
    worker::expand(args.into(), item.into()).into()
}

/// Guards `main`.
#[proc_macro_attribute]
pub fn entry(_args: TokenStream, item: TokenStream) -> TokenStream {
    item
}

/// A test whose pools work.
#[proc_macro_attribute]
pub fn test(_args: TokenStream, item: TokenStream) -> TokenStream {
    item
}
