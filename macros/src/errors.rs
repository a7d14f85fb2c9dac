//! Collecting errors so that every mistake is reported at once, and emitting
//! them next to the user's item so one mistake does not cascade.

use proc_macro2::TokenStream;
use std::fmt::Display;
use syn::Error;

/// Every error found while validating one item, reported together.
#[derive(Default)]
pub(crate) struct Errors {
    combined: Option<Error>,
}

impl Errors {
    /// Records `error` besides the ones found so far.
    pub(crate) fn push(&mut self, error: Error) {
        match &mut self.combined {
            Some(combined) => combined.combine(error),
            None => self.combined = Some(error),
        }
    }

    /// Records an error spanned on `tokens`.
    pub(crate) fn spanned(&mut self, tokens: impl quote::ToTokens, message: impl Display) {
        self.push(Error::new_spanned(tokens, message));
    }

    /// `Ok` when nothing was recorded, else every error combined.
    pub(crate) fn finish(self) -> Result<(), Error> {
        match self.combined {
            Some(error) => Err(error),
            None => Ok(()),
        }
    }
}

/// The user's item, unchanged, followed by `compile_error!`s: the item still
/// exists, so its uses do not add errors of their own and IDEs keep working.
pub(crate) fn with_error(mut item: TokenStream, error: Error) -> TokenStream {
    item.extend(error.into_compile_error());
    item
}

/// Renders a type or path the way a person writes it (`Vec<u8>`, not
/// `Vec < u8 >`), for error messages.
pub(crate) fn pretty(tokens: &impl quote::ToTokens) -> String {
    let mut out = String::new();
    write_tokens(&mut out, tokens.to_token_stream());
    out
}

fn write_tokens(out: &mut String, tokens: TokenStream) {
    use proc_macro2::{Delimiter, TokenTree};
    let mut prev_word = false;
    let mut iter = tokens.into_iter().peekable();
    while let Some(token) = iter.next() {
        match token {
            TokenTree::Ident(ident) => {
                if prev_word {
                    out.push(' ');
                }
                out.push_str(&ident.to_string());
                prev_word = true;
            }
            TokenTree::Literal(lit) => {
                if prev_word {
                    out.push(' ');
                }
                out.push_str(&lit.to_string());
                prev_word = true;
            }
            TokenTree::Punct(punct) => {
                let ch = punct.as_char();
                let arrow = ch == '-'
                    && matches!(iter.peek(), Some(TokenTree::Punct(p)) if p.as_char() == '>');
                if arrow {
                    iter.next();
                    out.push_str(" -> ");
                } else {
                    match ch {
                        ',' | ';' => out.push_str(&format!("{ch} ")),
                        '+' | '=' => out.push_str(&format!(" {ch} ")),
                        '\'' => {
                            if prev_word {
                                out.push(' ');
                            }
                            out.push(ch);
                        }
                        _ => out.push(ch),
                    }
                }
                prev_word = false;
            }
            TokenTree::Group(group) => {
                let (open, close) = match group.delimiter() {
                    Delimiter::Parenthesis => ("(", ")"),
                    Delimiter::Bracket => ("[", "]"),
                    Delimiter::Brace => ("{ ", " }"),
                    Delimiter::None => ("", ""),
                };
                if prev_word && group.delimiter() == Delimiter::Brace {
                    out.push(' ');
                }
                out.push_str(open);
                write_tokens(out, group.stream());
                out.push_str(close);
                prev_word = group.delimiter() == Delimiter::None;
            }
        }
    }
}
