//! What a `#[worker]` function cannot be, each rejected at the offending
//! token with the fix in the message.

use syn::{
    FnArg, GenericArgument, GenericParam, PathArguments, ReturnType, Safety, Signature, Type,
    TypeReference,
};

use super::ast::Worker;
use crate::errors::{Errors, pretty};

/// Checks the signature; every problem found is reported.
pub(crate) fn check(worker: &Worker) -> syn::Result<()> {
    let mut errors = Errors::default();
    check_signature(&worker.item.sig, &mut errors);
    for arg in &worker.item.sig.inputs {
        match arg {
            FnArg::Receiver(receiver) => errors.spanned(
                receiver,
                "#[worker] functions cannot take `self`; make it a free function and pass the value as an argument",
            ),
            FnArg::Typed(arg) => check_type(&arg.ty, Position::Argument, &mut errors),
        }
    }
    if let ReturnType::Type(_, ty) = &worker.item.sig.output {
        check_type(ty, Position::Return, &mut errors);
    }
    errors.finish()
}

fn check_signature(sig: &Signature, errors: &mut Errors) {
    if let Some(token) = &sig.constness {
        errors.spanned(
            token,
            "#[worker] functions cannot be `const`, they are called at run time in another process; remove `const`",
        );
    }
    if let Some(token) = &sig.asyncness {
        errors.spanned(
            token,
            "#[worker] functions cannot be async; make it synchronous or start a runtime inside",
        );
    }
    if let Safety::Unsafe(token) = &sig.safety {
        errors.spanned(
            token,
            "#[worker] functions cannot be `unsafe`, a pool calls them with whatever it is given; make the function safe and put an `unsafe` block inside",
        );
    }
    if let Some(abi) = &sig.abi {
        errors.spanned(
            abi,
            format!(
                "#[worker] functions use the Rust ABI; remove `{}`",
                pretty(abi)
            ),
        );
    }
    let generics = &sig.generics;
    if !generics.params.is_empty() {
        let only_lifetimes = generics
            .params
            .iter()
            .all(|param| matches!(param, GenericParam::Lifetime(_)));
        let message = if only_lifetimes {
            "#[worker] functions cannot have lifetime parameters, their arguments are sent to another process and cannot borrow; use owned types"
        } else {
            "#[worker] functions cannot be generic, the child process finds them by name and needs concrete types; write one #[worker] function per type"
        };
        errors.spanned(generics, message);
    } else if let Some(where_clause) = &generics.where_clause {
        errors.spanned(
            where_clause,
            "#[worker] functions cannot have a `where` clause; use concrete types",
        );
    }
    if let Some(variadic) = &sig.variadic {
        errors.spanned(
            variadic,
            "#[worker] functions cannot be variadic; take a `Vec` instead",
        );
    }
}

/// Where a type appears, for the wording of the messages.
#[derive(Clone, Copy)]
enum Position {
    Argument,
    Return,
}

/// Rejects borrowed and `impl Trait` types, at any depth that the compiler
/// would otherwise report in generated code.
fn check_type(ty: &Type, position: Position, errors: &mut Errors) {
    match ty {
        Type::Reference(reference) => {
            let (owned, borrowed) = owned_suggestion(reference);
            let message = match position {
                Position::Argument => format!(
                    "#[worker] arguments are sent to another process and cannot borrow; take {owned} instead of `{borrowed}`"
                ),
                Position::Return => format!(
                    "#[worker] results are sent back to the calling process and cannot borrow; return {owned} instead of `{borrowed}`"
                ),
            };
            errors.spanned(reference, message);
        }
        Type::ImplTrait(impl_trait) => {
            let message = match position {
                Position::Argument => {
                    "#[worker] arguments cannot be `impl Trait`, the child process must know the concrete type to decode them; take a concrete type"
                }
                Position::Return => {
                    "#[worker] functions cannot return `impl Trait`, the calling process must know the concrete type to decode the result; return a concrete type"
                }
            };
            errors.spanned(impl_trait, message);
        }
        Type::Path(path) => {
            if let Some(qself) = &path.qself {
                check_type(&qself.ty, position, errors);
            }
            for segment in &path.path.segments {
                let PathArguments::AngleBracketed(arguments) = &segment.arguments else {
                    continue;
                };
                for argument in &arguments.args {
                    match argument {
                        GenericArgument::Type(ty) => check_type(ty, position, errors),
                        GenericArgument::AssocType(assoc) => {
                            check_type(&assoc.ty, position, errors);
                        }
                        GenericArgument::Lifetime(lifetime) if lifetime.ident != "static" => {
                            let message = match position {
                                Position::Argument => format!(
                                    "#[worker] arguments are sent to another process and cannot borrow; use `'static` or an owned type instead of `{}`",
                                    pretty(lifetime)
                                ),
                                Position::Return => format!(
                                    "#[worker] results are sent back to the calling process and cannot borrow; use `'static` or an owned type instead of `{}`",
                                    pretty(lifetime)
                                ),
                            };
                            errors.spanned(lifetime, message);
                        }
                        _ => {}
                    }
                }
            }
        }
        Type::Tuple(tuple) => {
            for elem in &tuple.elems {
                check_type(elem, position, errors);
            }
        }
        Type::Array(array) => check_type(&array.elem, position, errors),
        Type::Slice(slice) => check_type(&slice.elem, position, errors),
        Type::Paren(paren) => check_type(&paren.elem, position, errors),
        Type::Group(group) => check_type(&group.elem, position, errors),
        _ => {}
    }
}

/// The owned type to suggest for a reference, quoted, and the reference as
/// written: `&str` → `String`, `&[T]` → `Vec<T>`, `&T` → `T`.
fn owned_suggestion(reference: &TypeReference) -> (String, String) {
    let borrowed = pretty(reference);
    let elem = &*reference.elem;
    let owned = match elem {
        Type::Slice(slice) => format!("`Vec<{}>`", pretty(&slice.elem)),
        Type::Path(path) if path.qself.is_none() => {
            let last = path.path.segments.last().map(|s| s.ident.to_string());
            match last.as_deref() {
                Some("str") => "`String`".to_owned(),
                Some("Path") => "`PathBuf`".to_owned(),
                Some("OsStr") => "`OsString`".to_owned(),
                Some("CStr") => "`CString`".to_owned(),
                _ => format!("`{}`", pretty(elem)),
            }
        }
        Type::TraitObject(_) => "an owned type".to_owned(),
        _ => format!("`{}`", pretty(elem)),
    };
    (owned, borrowed)
}
