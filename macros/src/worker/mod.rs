//! `#[worker]`: parse → validate → expand.

mod ast;
mod expand;
mod valid;

use proc_macro2::TokenStream;

use crate::errors::with_error;

/// Expands `#[worker(args)] item`.
pub(crate) fn expand(args: TokenStream, item: TokenStream) -> TokenStream {
    let worker = match ast::Worker::parse(args, item.clone()) {
        Ok(worker) => worker,
        Err(error) => return with_error(item, error),
    };
    match valid::check(&worker) {
        Ok(()) => expand::expand(&worker),
        Err(error) => with_error(item, error),
    }
}
