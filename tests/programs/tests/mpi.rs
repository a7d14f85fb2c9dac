//! The MPI pool under Open MPI's `mpirun` (feature `mpi`): runs the
//! `mpi_pool` helper program as a real 3-rank job — rank 0 runs `main`, two
//! worker ranks serve the pool.
//!
//! Needs `mpirun` on `PATH` (`apt-get install openmpi-bin libopenmpi-dev`);
//! without it these tests fail rather than pass vacuously. The tests allow
//! running as root and oversubscribing the cores, which CI needs.

use std::process::Command;

use multiproc_test_programs::{Run, run};

/// `mpirun -n <ranks> mpi_pool <scenario>`.
fn mpirun(ranks: u32, scenario: &str) -> Run {
    mpirun_with(ranks, scenario, &[])
}

/// `mpirun <options> -n <ranks> mpi_pool <scenario>`.
fn mpirun_with(ranks: u32, scenario: &str, options: &[&str]) -> Run {
    let found = Command::new("mpirun").arg("--version").output();
    assert!(
        found.is_ok_and(|o| o.status.success()),
        "mpirun is not installed: apt-get install -y openmpi-bin libopenmpi-dev"
    );
    let mut cmd = Command::new("mpirun");
    cmd.args(options);
    cmd.args([
        "-n",
        &ranks.to_string(),
        env!("CARGO_BIN_EXE_mpi_pool"),
        scenario,
    ])
    .env("OMPI_ALLOW_RUN_AS_ROOT", "1")
    .env("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
    .env("OMPI_MCA_rmaps_base_oversubscribe", "1");
    run(cmd)
}

#[test]
fn map_imap_submit_panic_crash_timeout_and_reopen_across_two_ranks() {
    let run = mpirun(3, "suite");
    assert!(
        run.status.success(),
        "{:?}\nstdout:\n{}\nstderr:\n{}",
        run.status,
        run.stdout,
        run.stderr
    );
    for check in [
        "ok: opened with 2 workers",
        "ok: both worker ranks ran tasks",
        "ok: map",
        "ok: imap",
        "ok: imap_unordered",
        "ok: submit + as_completed",
        "ok: apply",
        "ok: a panicking task fails alone",
        "ok: a crashing task fails alone and the ranks keep serving",
        "ok: a second MPI pool is refused while one is open",
        "ok: terminate cancels running and queued tasks",
        "ok: the initializer ran on every rank",
        "ok: task_timeout applies on the ranks",
        "ok: a failing initializer fails build_mpi",
        "ok: reopened after a failed open",
        "mpi suite passed",
    ] {
        assert!(
            run.stdout.lines().any(|l| l == check),
            "missing {check:?}\nstdout:\n{}\nstderr:\n{}",
            run.stdout,
            run.stderr
        );
    }
}

#[test]
fn the_suite_passes_over_tcp_as_between_machines() {
    // Ranks on one machine talk through shared memory; force the TCP
    // transport that ranks on different machines use.
    let run = mpirun_with(3, "suite", &["--mca", "btl", "tcp,self"]);
    assert!(
        run.status.success() && run.stdout.lines().any(|l| l == "mpi suite passed"),
        "{:?}\nstdout:\n{}\nstderr:\n{}",
        run.status,
        run.stdout,
        run.stderr
    );
}

#[test]
fn a_killed_rank_ends_the_job_instead_of_hanging() {
    // `run` fails the test if the job is still running after 30 s. Over
    // TCP: an aborted job leaves Open MPI's shared-memory transport files in
    // /dev/shm behind (its cleanup dies with the job), TCP leaves nothing.
    let run = mpirun_with(3, "kill-rank", &["--mca", "btl", "tcp,self"]);
    assert!(!run.status.success(), "stdout:\n{}", run.stdout);
    // Rank 0's "killing the rank" line may be lost when the job is torn
    // down; the launcher's report is what proves the kill happened.
    assert!(
        run.stderr.contains("exited on signal 9"),
        "the launcher does not say which rank died and how:\n{}",
        run.stderr
    );
    assert!(
        !run.stdout.contains("the tasks returned"),
        "rank 0 went on after a rank died: {}",
        run.stdout
    );
    // No rank of that job outlives it.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while !ranks_of("kill-rank").is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "ranks left behind: {:?}",
            ranks_of("kill-rank")
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// Pids of `mpi_pool` processes started with `scenario`.
fn ranks_of(scenario: &str) -> Vec<u32> {
    let wanted = format!("mpi_pool\0{scenario}\0");
    std::fs::read_dir("/proc")
        .expect("/proc is readable")
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|c| String::from_utf8_lossy(&c).contains(&wanted))
        })
        .collect()
}

#[test]
fn workers_per_rank_comes_from_the_launch_environment() {
    let run = mpirun_with(3, "open", &["-x", "MULTIPROC_WORKERS_PER_RANK=2"]);
    assert!(run.status.success(), "{:?}\n{}", run.status, run.stderr);
    assert_eq!(run.stdout.trim(), "opened: 4 workers", "{}", run.stderr);
}

#[test]
fn one_rank_is_a_clear_error() {
    let run = mpirun(1, "open");
    assert!(run.status.success(), "{:?}\n{}", run.status, run.stderr);
    assert!(
        run.stdout
            .contains("error: MPI: the MPI job has only one rank"),
        "{}",
        run.stdout
    );
}

#[test]
fn without_a_launcher_the_program_runs_normally_and_the_pool_says_why_not() {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_mpi_pool"));
    cmd.arg("open");
    let run = run(cmd);
    assert!(run.status.success(), "{:?}\n{}", run.status, run.stderr);
    assert!(
        run.stdout
            .contains("error: MPI: this program was not started by an MPI launcher"),
        "{}",
        run.stdout
    );
}

#[test]
fn srun_without_a_pmi_plugin_is_detected_instead_of_running_main_n_times() {
    // What `srun -n 3` without `--mpi=pmix` gives each task: Slurm's
    // variables, and an MPI world of one (a singleton).
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_mpi_pool"));
    cmd.arg("open")
        .env("SLURM_STEP_NUM_TASKS", "3")
        .env("SLURM_PROCID", "1");
    let run = run(cmd);
    assert_eq!(run.status.code(), Some(2), "{}", run.stderr);
    assert!(run.stdout.is_empty(), "main ran: {}", run.stdout);
    assert!(run.stderr.contains("srun --mpi=pmix"), "{}", run.stderr);
}
