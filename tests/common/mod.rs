//! `/proc` helpers shared by the integration tests that check which worker
//! processes exist (each test file is its own crate and includes this one
//! with `mod common;`).

#![allow(dead_code)] // each test crate uses some of these

/// State letter (`Z` = zombie), ppid and start time (clock ticks since boot)
/// of process `pid`; `None` if it does not exist.
pub fn stat(pid: u32) -> Option<(char, u32, u64)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // After the parenthesised command: state ppid pgrp session tty_nr tpgid
    // flags minflt cminflt majflt cmajflt utime stime cutime cstime priority
    // nice num_threads itrealvalue starttime
    let fields: Vec<&str> = text.rsplit_once(')')?.1.split_whitespace().collect();
    Some((
        fields.first()?.chars().next()?,
        fields.get(1)?.parse().ok()?,
        fields.get(19)?.parse().ok()?,
    ))
}

/// `None` if the process is gone, else its state letter (`Z` = zombie).
pub fn process_state(pid: u32) -> Option<char> {
    stat(pid).map(|(state, _, _)| state)
}

/// Direct children of this process, with their states, by pid.
pub fn my_children() -> Vec<(u32, char)> {
    let me = std::process::id();
    let mut found: Vec<(u32, char)> = std::fs::read_dir("/proc")
        .expect("/proc is readable")
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(|pid| {
            let (state, ppid, _) = stat(pid)?;
            (ppid == me).then_some((pid, state))
        })
        .collect();
    found.sort_unstable();
    found
}

/// Direct children of this process whose command line names `test`: the
/// workers of pools created by that test (a test's worker re-runs the
/// binary filtered to its test; other tests' pools have other names).
/// Zombies count only with `zombies`.
pub fn workers_of(test: &str, zombies: bool) -> Vec<u32> {
    my_children()
        .into_iter()
        .filter(|&(_, state)| zombies || state != 'Z')
        .map(|(pid, _)| pid)
        .filter(|pid| {
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            cmdline.split(|&b| b == 0).any(|arg| arg == test.as_bytes())
        })
        .collect()
}
