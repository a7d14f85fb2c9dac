//! Counts the lines, words and bytes of many files in parallel, printing
//! each file as soon as a worker process has counted it:
//! `Pool::imap_unordered`, the Rust side of Python's `Pool.imap_unordered`
//! (and of `executor.map` in the tutorials' version). Checks the totals
//! against a sequential recount.
//!
//! The Python it ports (the tutorials' file statistics example):
//!
//! ```python
//! def process_file(filepath):
//!     stat = os.stat(filepath)
//!     with open(filepath, "r", encoding="utf-8", errors="ignore") as f:
//!         lines = f.readlines()
//!     return {"file": filepath, "size": stat.st_size, "lines": len(lines),
//!             "words": sum(len(line.split()) for line in lines)}
//!
//! def parallel_file_stats(directory, pattern="*.py"):
//!     files = list(Path(directory).rglob(pattern))
//!     with ProcessPoolExecutor(max_workers=os.cpu_count()) as executor:
//!         results = list(executor.map(process_file, [str(f) for f in files]))
//!     print(f"total lines: {sum(r['lines'] for r in results)}, "
//!           f"total words: {sum(r['words'] for r in results)}")
//! ```
//!
//! By default it counts the `.rs` files of this repository (skipping
//! `target/` and hidden directories); given paths, it counts those files and
//! every `.rs` file under those directories.
//!
//! ```text
//! cargo run --release --example file_stats
//! cargo run --release --example file_stats -- src runtime/src README.md
//! ```

use std::collections::BTreeMap;
use std::ops::AddAssign;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use multiproc::{Pool, entry, worker};
use serde::{Deserialize, Serialize};

/// The extension of the files looked for in directories (the tutorial's
/// `pattern="*.py"`).
const EXTENSION: &str = "rs";

/// The counts of one file, or of many added up.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
struct Counts {
    lines: u64,
    words: u64,
    bytes: u64,
}

impl AddAssign for Counts {
    fn add_assign(&mut self, other: Counts) {
        self.lines += other.lines;
        self.words += other.words;
        self.bytes += other.bytes;
    }
}

/// Reads one file and counts its lines, words (runs of non-whitespace, as
/// Python's `str.split()`) and bytes. Bytes that are not UTF-8 are replaced,
/// like Python's `errors="ignore"`. Returns the path with the counts, since
/// `imap_unordered` gives results in the order they finish, or the error
/// message if the file cannot be read.
#[worker]
fn count_file(path: PathBuf) -> (PathBuf, Result<Counts, String>) {
    let counts = std::fs::read(&path)
        .map(|data| {
            let text = String::from_utf8_lossy(&data);
            Counts {
                lines: text.lines().count() as u64,
                words: text.split_whitespace().count() as u64,
                bytes: data.len() as u64,
            }
        })
        .map_err(|e| e.to_string());
    (path, counts)
}

#[entry]
fn main() -> ExitCode {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let args: Vec<PathBuf> = std::env::args_os().skip(1).map(PathBuf::from).collect();
    let (base, starts) = if args.is_empty() {
        (root, vec![root.to_path_buf()])
    } else {
        (Path::new(""), args)
    };
    let mut files = Vec::new();
    for start in &starts {
        if let Err(e) = collect(start, &mut files) {
            eprintln!("error: {}: {e}", start.display());
            return ExitCode::from(2);
        }
    }
    files.sort();
    match run(base, files) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(base: &Path, files: Vec<PathBuf>) -> Result<(), multiproc::Error> {
    let shown = |p: &Path| p.strip_prefix(base).unwrap_or(p).display().to_string();
    let t = Instant::now();
    let pool = Pool::new(0)?;
    println!(
        "counting {} files with {} worker processes",
        files.len(),
        pool.workers()
    );
    println!("{:>8} {:>8} {:>9}  file", "lines", "words", "bytes");

    // The paths go to the workers; each (path, counts) comes back as soon as
    // it is done, whatever the input order.
    let mut counted = BTreeMap::new();
    let mut total = Counts::default();
    let mut failed = 0;
    for result in pool.imap_unordered(count_file, files.iter().cloned()) {
        let (path, counts) = result?;
        match &counts {
            Ok(c) => {
                println!(
                    "{:>8} {:>8} {:>9}  {}",
                    c.lines,
                    c.words,
                    c.bytes,
                    shown(&path)
                );
                total += *c;
            }
            Err(e) => {
                println!("{:>27}  {}: {e}", "unreadable", shown(&path));
                failed += 1;
            }
        }
        let previous = counted.insert(path, counts);
        assert!(previous.is_none(), "every file must come back exactly once");
    }
    let elapsed = t.elapsed();
    println!(
        "{:>8} {:>8} {:>9}  total of {} files ({failed} unreadable), {:.3} s",
        total.lines,
        total.words,
        total.bytes,
        counted.len() - failed,
        elapsed.as_secs_f64()
    );

    // The check: the same function called in this process, one file after
    // the other, must give the same counts for every file and in total.
    assert_eq!(counted.len(), files.len(), "every file must come back");
    let mut recount = Counts::default();
    for path in files {
        let (path, counts) = count_file(path);
        assert_eq!(
            counted.get(&path),
            Some(&counts),
            "{}: the pool and the sequential count differ",
            shown(&path)
        );
        if let Ok(c) = counts {
            recount += c;
        }
    }
    assert_eq!(total, recount, "the totals must match a sequential recount");
    println!("ok: the totals match a sequential recount");
    Ok(())
}

/// Adds `path` to `files` if it is a file; if it is a directory, every file
/// with the extension [`EXTENSION`] under it, skipping hidden directories
/// and `target`.
fn collect(path: &Path, files: &mut Vec<PathBuf>) -> std::io::Result<()> {
    if !std::fs::metadata(path)?.is_dir() {
        files.push(path.to_path_buf());
        return Ok(());
    }
    for entry in std::fs::read_dir(path)? {
        let entry = entry?;
        let path = entry.path();
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if entry.file_type()?.is_dir() {
            if !name.starts_with('.') && name != "target" {
                collect(&path, files)?;
            }
        } else if path.extension().is_some_and(|e| e == EXTENSION) {
            files.push(path);
        }
    }
    Ok(())
}
