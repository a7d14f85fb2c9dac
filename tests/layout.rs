//! The runtime's layout rules, checked on its sources: every file holds
//! at most 1,000 lines, and no file imports one that imports it back,
//! directly or through others (so every import points down a layer).
//!
//! A file's imports are the modules its non-test code names: `crate::`
//! paths (also inside `use crate::{…}` groups), `super::` paths, and the
//! child modules a `mod.rs` declares and then names. The crate root
//! (`lib.rs`) is left out: it declares every module and re-exports the
//! public ones. Tests are left out too: a `#[cfg(test)] mod tests` at the
//! end of a file, and the `*_tests.rs` files beside their modules.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

const MAX_LINES: usize = 1000;

fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("read the runtime's sources") {
        let path = entry.expect("a directory entry").path();
        if path.is_dir() {
            sources(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// `pool/driver.rs` → `pool::driver`; `pool/mod.rs` → `pool`.
fn module_of(src: &Path, file: &Path) -> String {
    let rel = file.strip_prefix(src).expect("under src");
    let mut parts: Vec<String> = rel
        .with_extension("")
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    if parts.last().is_some_and(|p| p == "mod") {
        parts.pop();
    }
    parts.join("::")
}

/// The code of a file without comments and without its test module.
fn code(text: &str) -> String {
    let text = match text.find("#[cfg(test)]\nmod tests") {
        Some(at) => &text[..at],
        None => text,
    };
    text.lines()
        .map(|line| match line.find("//") {
            Some(at) => &line[..at],
            None => line,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// The identifier chain that starts at `at` (`a::b::c`).
fn path_at(code: &str, at: usize) -> String {
    code[at..]
        .chars()
        .take_while(|c| c.is_alphanumeric() || *c == '_' || *c == ':')
        .collect::<String>()
        .trim_end_matches(':')
        .to_owned()
}

/// Every path named after `prefix`, with the items of `prefix{…}` groups
/// (one level of nesting is enough for this crate's imports).
fn paths_after(code: &str, prefix: &str) -> Vec<String> {
    let mut found = Vec::new();
    for (at, _) in code.match_indices(prefix) {
        let before = code[..at].chars().next_back();
        if before.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == ':') {
            continue;
        }
        let rest = at + prefix.len();
        if code[rest..].starts_with('{') {
            let mut depth = 0;
            let mut item = String::new();
            for c in code[rest..].chars() {
                match c {
                    '{' => {
                        depth += 1;
                        if depth > 1 {
                            item.push(c);
                        }
                    }
                    '}' => {
                        depth -= 1;
                        if depth == 0 {
                            found.push(item.trim().to_owned());
                            break;
                        }
                        item.push(c);
                    }
                    ',' if depth == 1 => found.push(std::mem::take(&mut item).trim().to_owned()),
                    _ => item.push(c),
                }
            }
        } else {
            found.push(path_at(code, rest));
        }
    }
    found
        .into_iter()
        .map(|p| {
            p.split(['{', ' ', '\n'])
                .next()
                .unwrap_or_default()
                .trim_end_matches(':')
                .to_owned()
        })
        .filter(|p| !p.is_empty() && p != "self")
        .collect()
}

/// The longest known module that `path` starts with.
fn resolve(modules: &BTreeSet<String>, path: &str) -> Option<String> {
    let parts: Vec<&str> = path.split("::").collect();
    (1..=parts.len())
        .rev()
        .map(|n| parts[..n].join("::"))
        .find(|m| modules.contains(m))
}

fn parent(module: &str) -> &str {
    module.rsplit_once("::").map_or("", |(p, _)| p)
}

#[test]
fn runtime_files_stay_under_the_line_cap_and_import_only_downwards() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("runtime/src");
    let mut files = Vec::new();
    sources(&src, &mut files);
    files.sort();

    let too_long: Vec<String> = files
        .iter()
        .filter_map(|f| {
            let lines = std::fs::read_to_string(f).expect("read").lines().count();
            (lines > MAX_LINES).then(|| format!("{} ({lines} lines)", f.display()))
        })
        .collect();
    assert!(too_long.is_empty(), "over {MAX_LINES} lines: {too_long:?}");

    let texts: BTreeMap<String, String> = files
        .iter()
        .filter(|f| {
            let name = f.file_name().unwrap_or_default().to_string_lossy();
            name != "lib.rs" || f.parent() != Some(&src)
        })
        .filter(|f| !f.to_string_lossy().ends_with("_tests.rs"))
        .map(|f| {
            (
                module_of(&src, f),
                code(&std::fs::read_to_string(f).expect("read")),
            )
        })
        .collect();
    let modules: BTreeSet<String> = texts.keys().cloned().collect();
    assert!(
        modules.len() > 20 && modules.contains("pool::driver"),
        "the runtime's modules were not found: {modules:?}"
    );

    let mut imports: BTreeMap<&str, BTreeSet<String>> = BTreeMap::new();
    for (module, code) in &texts {
        let mut named: Vec<String> = paths_after(code, "crate::");
        for p in paths_after(code, "super::") {
            let base = parent(module);
            named.push(if base.is_empty() {
                p
            } else {
                format!("{base}::{p}")
            });
        }
        // A mod.rs naming the children it declares.
        for line in code.lines() {
            let line = line.trim();
            let decl = line
                .strip_prefix("pub(crate) mod ")
                .or_else(|| line.strip_prefix("mod "))
                .or_else(|| line.strip_prefix("pub mod "));
            if let Some(child) = decl.and_then(|d| d.strip_suffix(';')) {
                if !paths_after(code, &format!("{child}::")).is_empty()
                    || code.contains(&format!("use {child}::"))
                {
                    named.push(format!("{module}::{child}"));
                }
            }
        }
        let targets = imports.entry(module).or_default();
        for path in named {
            if let Some(target) = resolve(&modules, &path) {
                if &target != module {
                    targets.insert(target);
                }
            }
        }
    }

    // Depth-first search for a circle.
    fn visit<'a>(
        m: &'a str,
        imports: &'a BTreeMap<&str, BTreeSet<String>>,
        state: &mut BTreeMap<&'a str, u8>,
        stack: &mut Vec<&'a str>,
    ) -> Option<Vec<String>> {
        match state.get(m) {
            Some(2) => return None,
            Some(1) => {
                let from = stack.iter().position(|s| *s == m).unwrap_or(0);
                let mut circle: Vec<String> = stack[from..].iter().map(|s| s.to_string()).collect();
                circle.push(m.to_owned());
                return Some(circle);
            }
            _ => {}
        }
        state.insert(m, 1);
        stack.push(m);
        for next in imports.get(m).into_iter().flatten() {
            if let Some(c) = visit(next, imports, state, stack) {
                return Some(c);
            }
        }
        stack.pop();
        state.insert(m, 2);
        None
    }
    let mut state = BTreeMap::new();
    for module in imports.keys() {
        let mut stack = Vec::new();
        if let Some(circle) = visit(module, &imports, &mut state, &mut stack) {
            panic!(
                "an import circle among the runtime's files: {}",
                circle.join(" -> ")
            );
        }
    }
}
