//! The code a valid `#[worker]` function turns into.

use proc_macro2::{Delimiter, Group, TokenStream};
use quote::{ToTokens, format_ident, quote};
use syn::ext::IdentExt;
use syn::punctuated::Punctuated;
use syn::{Attribute, ItemFn, LitStr, Meta, Token, Visibility};

use super::ast::Worker;

/// `vis fn f(a: A, b: B) -> R { body }` becomes a zero-sized type `f` that
/// implements `Worker`, derefs to `fn(A, B) -> R` and is registered by name,
/// plus a constant `f` of that type (the value users call and pass); the
/// body moves into a private function inside `const _: () = { ... }`.
///
/// The type is a braced struct with a constant beside it, not a unit struct:
/// a call through a unit struct's name looks like a constructor to clippy
/// (`no_effect` on `f(1, 2);`), a call through a constant does not.
///
/// `type Args` and `type Output` carry the user's spans: the trait's bounds
/// on them (`Serialize + DeserializeOwned + Send + 'static`) are what reports
/// a type that cannot travel, at that type. There are no separate assertions:
/// each would report the same missing impl a second time.
pub(crate) fn expand(worker: &Worker) -> TokenStream {
    let item = &worker.item;
    let ident = &item.sig.ident;
    let vis = &item.vis;
    let inner_ident = format_ident!("__multiproc_worker_{}", ident.unraw());

    let attrs = Attrs::split(&item.attrs);
    let struct_attrs = &attrs.on_struct;
    let const_attrs = &attrs.on_const;
    let cfgs = &attrs.cfg;

    let inner = ItemFn {
        attrs: attrs.on_fn,
        vis: Visibility::Inherited,
        modifiers: item.modifiers.clone(),
        sig: syn::Signature {
            ident: inner_ident.clone(),
            ..item.sig.clone()
        },
        block: item.block.clone(),
    };

    let arg_types: Vec<_> = worker.args().map(|arg| &*arg.ty).collect();
    let (args_type, call) = match arg_types.as_slice() {
        [] => (quote!(()), quote!(let () = args; #inner_ident())),
        [_] => (quote!(#(#arg_types)*), quote!(#inner_ident(args))),
        _ => {
            let names: Vec<_> = (0..arg_types.len())
                .map(|i| format_ident!("__arg{i}"))
                .collect();
            // Spanned on the parameter list, so that a bound the tuple does
            // not meet is reported at `(a: A, b: B)`, not at the attribute.
            let mut tuple = Group::new(Delimiter::Parenthesis, quote!(#(#arg_types),*));
            tuple.set_span(item.sig.paren_token.span.join());
            (
                tuple.into_token_stream(),
                quote!(let (#(#names),*) = args; #inner_ident(#(#names),*)),
            )
        }
    };
    let (output_type, fn_output) = match worker.output() {
        None => (quote!(()), quote!()),
        Some(ty) => (quote!(#ty), quote!(-> #ty)),
    };
    let fn_pointer = quote!(fn(#(#arg_types),*) #fn_output);

    let name = match &worker.name {
        Some(name) => quote!(#name),
        None => {
            let ident = LitStr::new(&ident.unraw().to_string(), ident.span());
            quote!(::core::concat!(::core::module_path!(), "::", #ident))
        }
    };

    quote! {
        #(#struct_attrs)*
        #[allow(non_camel_case_types)]
        #[derive(::core::clone::Clone, ::core::marker::Copy, ::core::default::Default)]
        #vis struct #ident {}

        #(#const_attrs)*
        #[doc(hidden)]
        #[allow(non_upper_case_globals, dead_code)]
        #vis const #ident: #ident = #ident {};

        #(#cfgs)*
        const _: () = {
            #inner

            impl ::multiproc::__private::Worker for #ident {
                type Args = #args_type;
                type Output = #output_type;
                const NAME: &'static str = #name;
                #[inline]
                fn call(args: Self::Args) -> Self::Output {
                    #call
                }
            }

            impl ::core::ops::Deref for #ident {
                type Target = #fn_pointer;
                #[inline]
                fn deref(&self) -> &Self::Target {
                    const FUNCTION: #fn_pointer = #inner_ident;
                    &FUNCTION
                }
            }

            impl ::core::fmt::Debug for #ident {
                fn fmt(&self, f: &mut ::core::fmt::Formatter<'_>) -> ::core::fmt::Result {
                    f.write_str(<Self as ::multiproc::__private::Worker>::NAME)
                }
            }

            ::multiproc::__private::inventory::submit! {
                ::multiproc::__private::WorkerEntry::new::<#ident>()
            }
        };
    }
}

/// The user's attributes, sorted by where they belong.
struct Attrs<'a> {
    /// Docs and `#[cfg]`: about the name the user sees.
    on_struct: Vec<&'a Attribute>,
    /// `#[cfg]` and `#[deprecated]`, for the constant users call.
    on_const: Vec<&'a Attribute>,
    /// `#[cfg]` again, for the `const _` block.
    cfg: Vec<&'a Attribute>,
    /// Everything else (`#[inline]`, lint levels, inner attributes): about
    /// the body.
    on_fn: Vec<Attribute>,
}

impl<'a> Attrs<'a> {
    fn split(attrs: &'a [Attribute]) -> Attrs<'a> {
        let mut split = Attrs {
            on_struct: Vec::new(),
            on_const: Vec::new(),
            cfg: Vec::new(),
            on_fn: Vec::new(),
        };
        for attr in attrs {
            let path = attr.path();
            if path.is_ident("cfg") {
                split.on_struct.push(attr);
                split.on_const.push(attr);
                split.cfg.push(attr);
            } else if path.is_ident("deprecated") {
                split.on_const.push(attr);
            } else if path.is_ident("doc") || is_doc_cfg_attr(attr) {
                split.on_struct.push(attr);
            } else {
                split.on_fn.push(attr.clone());
            }
        }
        split
    }
}

/// `#[cfg_attr(predicate, doc = "...")]`: documentation, so it goes where
/// the docs go.
fn is_doc_cfg_attr(attr: &Attribute) -> bool {
    let Meta::List(list) = &attr.meta else {
        return false;
    };
    if !list.path.is_ident("cfg_attr") {
        return false;
    }
    let Ok(metas) = list.parse_args_with(Punctuated::<Meta, Token![,]>::parse_terminated) else {
        return false;
    };
    metas.len() > 1 && metas.iter().skip(1).all(|meta| meta.path().is_ident("doc"))
}
