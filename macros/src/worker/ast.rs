//! The typed view of a `#[worker]` function; keeps the syn nodes for spans.

use proc_macro2::TokenStream;
use syn::parse::Parser;
use syn::{FnArg, ItemFn, LitStr, PatType, ReturnType, Type};

use crate::errors::Errors;

/// A function under `#[worker]`, with its attribute's arguments.
pub(crate) struct Worker {
    /// The function as written.
    pub(crate) item: ItemFn,
    /// `#[worker(name = "...")]`, if given.
    pub(crate) name: Option<LitStr>,
}

impl Worker {
    /// Parses the attribute's arguments and the item, reporting every
    /// problem with either.
    pub(crate) fn parse(args: TokenStream, item: TokenStream) -> syn::Result<Worker> {
        let mut errors = Errors::default();
        let name = match parse_args(args) {
            Ok(name) => name,
            Err(error) => {
                errors.push(error);
                None
            }
        };
        let item = match syn::parse2::<ItemFn>(item.clone()) {
            Ok(item) => Some(item),
            Err(_) => {
                errors.spanned(
                    item,
                    "#[worker] goes on a free function: `fn name(arg: Type) -> Output { ... }`",
                );
                None
            }
        };
        errors.finish()?;
        Ok(Worker {
            item: item.expect("no error, so the item parsed"),
            name,
        })
    }

    /// The typed arguments, in order (receivers are rejected by validation).
    pub(crate) fn args(&self) -> impl Iterator<Item = &PatType> {
        self.item.sig.inputs.iter().filter_map(|arg| match arg {
            FnArg::Typed(arg) => Some(arg),
            FnArg::Receiver(_) => None,
        })
    }

    /// The declared return type, `None` for `()`.
    pub(crate) fn output(&self) -> Option<&Type> {
        match &self.item.sig.output {
            ReturnType::Default => None,
            ReturnType::Type(_, ty) => Some(ty),
        }
    }
}

/// Parses `name = "..."`, the only argument.
fn parse_args(args: TokenStream) -> syn::Result<Option<LitStr>> {
    let mut name: Option<LitStr> = None;
    let parser = syn::meta::parser(|meta| {
        if meta.path.is_ident("name") {
            let value: LitStr = meta.value()?.parse()?;
            if name.is_some() {
                return Err(meta.error("duplicate #[worker] argument `name`; give it once"));
            }
            if value.value().trim().is_empty() {
                return Err(syn::Error::new(
                    value.span(),
                    "#[worker(name = \"...\")] cannot be empty; give a name such as \"my_crate::task\"",
                ));
            }
            name = Some(value);
            Ok(())
        } else {
            Err(syn::Error::new_spanned(
                &meta.path,
                format!(
                    "unknown #[worker] argument `{}`; the only argument is `name = \"...\"`",
                    crate::errors::pretty(&meta.path)
                ),
            ))
        }
    });
    parser.parse2(args)?;
    Ok(name)
}
