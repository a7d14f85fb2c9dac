//! `#[multiproc::entry]`: the child-process guard as the first statement of
//! `main`.

use proc_macro2::TokenStream;
use quote::quote;

use crate::guard::{self, Kind};

/// Expands `#[entry(args)] item`.
pub(crate) fn expand(args: TokenStream, item: TokenStream) -> TokenStream {
    guard::expand(
        Kind::Entry,
        args,
        item,
        |_| quote!(::multiproc::__private::entry();),
    )
}
