//! What `#[multiproc::entry]` and `#[multiproc::test]` share: parse a
//! function, check it, and make a guard call its first statement, before any
//! async runtime starts.

use proc_macro2::TokenStream;
use quote::{ToTokens, quote};
use syn::{AttrStyle, Attribute, ItemFn, Path, Signature};

use crate::errors::{Errors, with_error};

/// The attribute being expanded, for messages and for which runtime
/// attributes it cooperates with.
#[derive(Clone, Copy)]
pub(crate) enum Kind {
    /// `#[multiproc::entry]` on `main`.
    Entry,
    /// `#[multiproc::test]`.
    Test,
}

impl Kind {
    fn attribute(self) -> &'static str {
        match self {
            Kind::Entry => "#[multiproc::entry]",
            Kind::Test => "#[multiproc::test]",
        }
    }

    /// `#[tokio::main]`, `#[async_std::main]`, … for entry; `#[tokio::test]`
    /// and the like for test: an attribute that turns an `async fn` into a
    /// synchronous one that runs it.
    fn is_runtime_attribute(self, path: &Path) -> bool {
        let Some(last) = path.segments.last() else {
            return false;
        };
        match self {
            Kind::Entry => last.ident == "main",
            Kind::Test => last.ident == "test" && !is_builtin_test(path),
        }
    }
}

/// `#[test]` or `#[core::prelude::v1::test]`.
fn is_builtin_test(path: &Path) -> bool {
    path.is_ident("test")
        || path
            .segments
            .first()
            .is_some_and(|first| first.ident == "core" || first.ident == "std")
}

/// A function under `#[multiproc::entry]` or `#[multiproc::test]`.
pub(crate) struct Guarded {
    kind: Kind,
    /// The function as written.
    item: ItemFn,
}

impl Guarded {
    /// Parses the attribute's (absent) arguments and the function.
    pub(crate) fn parse(
        kind: Kind,
        args: TokenStream,
        item: TokenStream,
    ) -> Result<Guarded, (TokenStream, syn::Error)> {
        let mut errors = Errors::default();
        if !args.is_empty() {
            errors.spanned(
                &args,
                format!("{} takes no arguments; remove `({args})`", kind.attribute()),
            );
        }
        let parsed = match syn::parse2::<ItemFn>(item.clone()) {
            Ok(parsed) => Some(parsed),
            Err(_) => {
                let what = match kind {
                    Kind::Entry => "`fn main() { ... }`",
                    Kind::Test => "a test function: `fn name() { ... }`",
                };
                errors.spanned(&item, format!("{} goes on {what}", kind.attribute()));
                None
            }
        };
        match (errors.finish(), parsed) {
            (Ok(()), Some(item)) => Ok(Guarded { kind, item }),
            (Err(error), _) => Err((item, error)),
            (Ok(()), None) => unreachable!("a parse failure is recorded as an error"),
        }
    }

    /// Checks what the attribute cannot handle.
    pub(crate) fn check(&self) -> syn::Result<()> {
        let mut errors = Errors::default();
        let attribute = self.kind.attribute();
        let sig = &self.item.sig;
        if !sig.generics.params.is_empty() || sig.generics.where_clause.is_some() {
            errors.spanned(
                &sig.generics,
                format!("{attribute} functions cannot be generic; remove the generic parameters"),
            );
        }
        if let Kind::Entry = self.kind {
            if !sig.inputs.is_empty() {
                errors.spanned(
                    &sig.inputs,
                    format!(
                        "{attribute} `{}` cannot take arguments; read them with `std::env::args()`",
                        sig.ident
                    ),
                );
            }
        }
        if let Some(asyncness) = &sig.asyncness {
            let has_runtime = self
                .item
                .attrs
                .iter()
                .any(|attr| self.kind.is_runtime_attribute(attr.path()));
            if !has_runtime {
                let message = match self.kind {
                    Kind::Entry => format!(
                        "async `{}` needs a runtime; add `#[tokio::main]` below `{attribute}`",
                        sig.ident
                    ),
                    Kind::Test => format!(
                        "async tests need a runtime; add `#[tokio::test]` below `{attribute}`, or make the test synchronous and build a runtime inside"
                    ),
                };
                errors.spanned(asyncness, message);
            }
        }
        if let Kind::Test = self.kind {
            for attr in &self.item.attrs {
                if is_builtin_test(attr.path()) {
                    errors.spanned(
                        attr,
                        format!("{attribute} already makes this a test; remove this `#[test]`"),
                    );
                }
            }
        }
        errors.finish()
    }

    /// Puts `guard` first: in the function itself, or, for an `async fn`
    /// under a runtime attribute, in a synchronous function that then calls
    /// the async one, so the guard runs before the runtime starts.
    pub(crate) fn expand(self, guard: TokenStream) -> TokenStream {
        let Guarded { kind, mut item } = self;
        let test_attr = match kind {
            Kind::Entry => quote!(),
            Kind::Test => quote!(#[::core::prelude::v1::test]),
        };
        if item.sig.asyncness.is_none() {
            item.block
                .stmts
                .insert(0, syn::parse2(guard).expect("the guard is one statement"));
            return quote!(#test_attr #item);
        }

        let (runtime, outer): (Vec<Attribute>, Vec<Attribute>) =
            item.attrs.into_iter().partition(|attr| {
                matches!(attr.style, AttrStyle::Inner(_)) || kind.is_runtime_attribute(attr.path())
            });
        let ident = item.sig.ident.clone();
        let inner = ItemFn {
            attrs: runtime,
            vis: syn::Visibility::Inherited,
            modifiers: item.modifiers,
            sig: item.sig.clone(),
            block: item.block,
        };
        let sig = Signature {
            asyncness: None,
            ..item.sig
        };
        let vis = &item.vis;
        let allow = match kind {
            Kind::Entry => quote!(),
            // The runtime attribute marks the inner function `#[test]` too;
            // only the outer one is run.
            Kind::Test => quote!(#[allow(unnameable_test_items)]),
        };
        let outer = outer.iter();
        quote! {
            #test_attr
            #(#outer)*
            #allow
            #vis #sig {
                #guard
                #inner
                #ident()
            }
        }
    }
}

/// Parses, checks and expands; on error, the item unchanged plus the errors.
/// `guard` makes the first statement from the function.
pub(crate) fn expand(
    kind: Kind,
    args: TokenStream,
    item: TokenStream,
    guard: fn(&ItemFn) -> TokenStream,
) -> TokenStream {
    let guarded = match Guarded::parse(kind, args, item) {
        Ok(guarded) => guarded,
        Err((item, error)) => return with_error(item, error),
    };
    match guarded.check() {
        Ok(()) => {
            let guard = guard(&guarded.item);
            guarded.expand(guard)
        }
        Err(error) => with_error(guarded.fallback(), error),
    }
}

impl Guarded {
    /// The user's function, unchanged, for the error path. A `main` that the
    /// compiler would reject as an entry point too (async, with arguments)
    /// goes inside a stand-in `fn main() {}`, so that only our message, which
    /// names the fix, is reported and the body is still checked.
    fn fallback(self) -> TokenStream {
        let item = self.item;
        match self.kind {
            Kind::Entry if item.sig.ident == "main" => quote! {
                fn main() {
                    #[allow(dead_code)]
                    #item
                }
            },
            _ => item.into_token_stream(),
        }
    }
}
