//! Running tools and shell snippets from tests.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Output, Stdio};

/// The names of the threads of process `pid` (their `comm`), sorted.
pub fn thread_names(pid: u32) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/task"))
        .map(|tasks| {
            tasks
                .filter_map(|task| std::fs::read_to_string(task.ok()?.path().join("comm")).ok())
                .map(|name| name.trim().to_string())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

/// The number of fuser's serving threads among `names` (fuser-0, fuser-1, ...; its
/// fuser-bg thread is not one).
pub fn fuser_serving_threads(names: &[String]) -> usize {
    names
        .iter()
        .filter(|t| {
            t.strip_prefix("fuser-")
                .is_some_and(|n| n.parse::<u32>().is_ok())
        })
        .count()
}

/// User plus system clock ticks the process `pid` has used (its /proc stat), to tell an
/// idle daemon from a spinning one.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .unwrap()
        .1
        .split_whitespace()
        .collect();
    fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
}

/// Asserts how the FUSE daemon `pid` serves: when it `polls` (busy_poll), one fuser serving
/// thread and the `busy-poll` watchdog, else two serving threads and no watchdog; and either
/// way that once requests stop it spends no CPU (polling ends within milliseconds). `label`
/// names the case in a failure.
pub fn assert_serving(pid: u32, polls: bool, label: &str) {
    let threads = thread_names(pid);
    let poller = threads.iter().any(|t| t == "busy-poll");
    assert_eq!(poller, polls, "{label}: {threads:?}");
    let serving = fuser_serving_threads(&threads);
    assert_eq!(serving, if polls { 1 } else { 2 }, "{label}: {threads:?}");
    std::thread::sleep(std::time::Duration::from_millis(100));
    let before = cpu_ticks(pid);
    std::thread::sleep(std::time::Duration::from_millis(700));
    let spent = cpu_ticks(pid) - before;
    assert!(
        spent <= 5,
        "{label}: an idle mount used {spent} ticks of CPU in 0.7 s"
    );
}

/// The sorted names in the directory `dir` (panics if it cannot be listed).
pub fn names(dir: &std::path::Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("cannot list {}: {e}", dir.display()))
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

/// Runs `program args...` with stdin closed, panicking if it cannot start (a missing tool).
pub fn run(program: &str, args: &[&str]) -> Output {
    Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| {
            panic!("cannot run {program} (is it installed? .ci/setup lists it): {e}")
        })
}

/// Runs `program args...`, which must exit 0; returns its stdout. Panics with both
/// outputs otherwise.
pub fn run_ok(program: &str, args: &[&str]) -> String {
    let out = run(program, args);
    assert!(
        out.status.success(),
        "{program} {args:?} failed ({}):\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs `program -o OPTION... SOURCE MOUNT_POINT`, the command line of this project's FUSE
/// daemons (which return once the mount is live, or fail with a message), and returns its
/// output.
pub fn run_daemon(program: &str, options: &[&str], source: &Path, mount_point: &Path) -> Output {
    let mut cmd = Command::new(program);
    for option in options {
        cmd.arg("-o").arg(option);
    }
    cmd.arg(source)
        .arg(mount_point)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program}: {e}"))
}

/// Runs `sh -c script`, which must succeed; returns its stdout. Panics with the script
/// and both outputs otherwise. For pipelines and loops the tests write in shell.
pub fn sh(script: &str) -> String {
    let out = sh_output(script);
    assert!(
        out.status.success(),
        "{script}:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs `sh -c script` and returns its whole output, whatever its exit status.
pub fn sh_output(script: &str) -> Output {
    Command::new("sh")
        .args(["-c", script])
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run sh: {e}"))
}

/// The path as `&str` (test paths are UTF-8).
pub fn s(path: &Path) -> &str {
    path.to_str().expect("test paths are UTF-8")
}

/// Says why a test is skipped, on stderr past libtest's output capture, so it is always seen;
/// names the test (libtest names each test's thread after it).
pub fn skip(reason: &str) {
    let thread = std::thread::current();
    let _ = match thread.name().filter(|name| *name != "main") {
        Some(test) => writeln!(std::io::stderr(), "skipped {test}: {reason}"),
        None => writeln!(std::io::stderr(), "skipped: {reason}"),
    };
}
