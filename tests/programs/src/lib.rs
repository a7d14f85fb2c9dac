//! Helper programs that the integration tests of multiproc start as real
//! processes, and the `/proc` helpers they share.

/// Pids of this process's direct children (any thread's), from `/proc`.
pub fn children() -> Vec<u32> {
    let me = std::process::id();
    let mut found: Vec<u32> = std::fs::read_dir("/proc")
        .expect("/proc is readable")
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| stat_fields(pid).and_then(|f| f.get(1)?.parse().ok()) == Some(me))
        .collect();
    found.sort_unstable();
    found
}

/// `None` if the process does not exist, else its state letter (`Z` for a
/// zombie).
pub fn process_state(pid: u32) -> Option<char> {
    stat_fields(pid)?.first()?.chars().next()
}

/// The fields of `/proc/<pid>/stat` after the command name: state, ppid, ...
fn stat_fields(pid: u32) -> Option<Vec<String>> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, rest) = stat.rsplit_once(')')?;
    Some(rest.split_whitespace().map(str::to_owned).collect())
}
