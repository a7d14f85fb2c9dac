//! `#[multiproc::test]`: a `#[test]` whose first statement is the
//! child-process guard, so the test can start pools.

use proc_macro2::TokenStream;
use quote::quote;
use syn::ext::IdentExt;

use crate::guard::{self, Kind};

/// Expands `#[test(args)] item`.
pub(crate) fn expand(args: TokenStream, item: TokenStream) -> TokenStream {
    guard::expand(Kind::Test, args, item, |item| {
        // The runtime finds the test by the name the harness gives it.
        let name = item.sig.ident.unraw().to_string();
        quote! {
            ::multiproc::__private::test_entry(
                ::core::concat!(::core::module_path!(), "::", #name)
            );
        }
    })
}
