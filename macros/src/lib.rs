//! Procedural macros of multiproc (placeholder, being written).
use proc_macro::TokenStream;

/// Marks a worker function.
#[proc_macro_attribute]
pub fn worker(_args: TokenStream, item: TokenStream) -> TokenStream {
    item
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
