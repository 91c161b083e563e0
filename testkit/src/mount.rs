//! Kernel FUSE mounts in tests: is a directory mounted, waiting for a mount or for its daemon
//! to go, unmounting, and a guard that takes a mount down when a test fails half way.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// How long [`unmount`] retries while `fusermount3 -u` says the mount is busy.
const BUSY_RETRY: Duration = Duration::from_secs(10);

/// How long a guard's drop waits for the mount to leave the mount table.
const DROP_PATIENCE: Duration = Duration::from_secs(10);

/// How long [`wait_for_daemon_exit`] waits: a daemon writes its volume back after the kernel
/// unmounts, so it may take a while; a hang is still a failure.
const DAEMON_EXIT_PATIENCE: Duration = Duration::from_secs(30);

/// True if `dir` is a mount point in this process's mount namespace
/// (`/proc/self/mountinfo`). A path that cannot be resolved (a dead FUSE mount gives
/// ENOTCONN) is compared as given.
pub fn is_mounted(dir: &Path) -> bool {
    let wanted = std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf());
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    info.lines()
        .filter_map(|l| l.split(' ').nth(4))
        .any(|mount_point| Path::new(mount_point) == wanted)
}

/// Waits until `done` holds, polling every 10 ms; panics with "gave up waiting: `what`"
/// after `patience` (a hang guard, never reached when things work).
pub fn wait_until(what: &str, patience: Duration, mut done: impl FnMut() -> bool) {
    let start = Instant::now();
    while !done() {
        assert!(start.elapsed() < patience, "gave up waiting: {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Waits until `dir` is mounted (a daemon started in the foreground mounts in its own
/// time); panics after `patience`.
pub fn wait_until_mounted(dir: &Path, patience: Duration) {
    wait_until(
        &format!("{} to be mounted", dir.display()),
        patience,
        || is_mounted(dir),
    );
}

/// `fusermount3 -u dir`, which must succeed.
///
/// EBUSY is retried for a bounded time (10 s): right after a test closed its files the mount
/// can still be busy for a moment, because a sibling test thread that is spawning a process
/// holds copies of this process's descriptors until its child calls exec. Any other failure,
/// or EBUSY past the bound, fails the test.
pub fn unmount(dir: &Path) {
    let deadline = Instant::now() + BUSY_RETRY;
    loop {
        let out = Command::new("fusermount3")
            .arg("-u")
            .arg(dir)
            .output()
            .expect("run fusermount3");
        if out.status.success() {
            return;
        }
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains("busy") && Instant::now() < deadline,
            "fusermount3 -u: {stderr}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `fusermount3 -u -z dir`: detaches the mount at once, whatever holds it; errors ignored
/// (for cleanup, where the mount may already be gone).
pub fn lazy_unmount(dir: &Path) {
    let _ = Command::new("fusermount3")
        .args(["-u", "-z"])
        .arg(dir)
        .output();
}

/// True if some process runs `program` (its argv\[0\] ends with that name) with `dir` as one
/// of its arguments: the daemon serving that mount; or if a `program` process is exiting.
///
/// An exiting process loses its command line (its memory goes first) before its files are
/// closed, and an image's lock goes only with the last of those: such a process counts as
/// running until it is a zombie, or a test that mounts the same image again right after
/// would find it still locked.
fn daemon_running(program: &str, dir: &Path) -> bool {
    let dir = dir.as_os_str().as_encoded_bytes();
    let Ok(processes) = std::fs::read_dir("/proc") else {
        return false;
    };
    processes.flatten().any(|p| {
        let Ok(cmdline) = std::fs::read(p.path().join("cmdline")) else {
            return false;
        };
        if cmdline.is_empty() {
            return exiting(&p.path(), program);
        }
        let mut args = cmdline.split(|&b| b == 0);
        args.next()
            .is_some_and(|argv0| argv0.ends_with(program.as_bytes()))
            && args.any(|a| a == dir)
    })
}

/// True if the process at `proc_dir` is `program` (by its command name, which the kernel
/// keeps to 15 bytes) and not yet a zombie.
fn exiting(proc_dir: &Path, program: &str) -> bool {
    let Ok(stat) = std::fs::read_to_string(proc_dir.join("stat")) else {
        return false;
    };
    // "PID (COMM) STATE ...": COMM may hold spaces and parentheses, so split at the last ')'.
    let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
        return false;
    };
    let comm = &stat[open + 1..close];
    let state = stat[close + 1..].trim_start().chars().next();
    let wanted = &program.as_bytes()[..program.len().min(15)];
    comm.as_bytes() == wanted && !matches!(state, Some('Z') | Some('X') | None)
}

/// Waits (at most `patience`) until no `program` process serves `dir`; false if one still
/// does.
pub fn daemon_gone(program: &str, dir: &Path, patience: Duration) -> bool {
    let deadline = Instant::now() + patience;
    while Instant::now() < deadline {
        if !daemon_running(program, dir) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

/// Waits until the `program` daemon serving `dir` has exited: daemons write their volume
/// back after the kernel unmounts, so the image is final only then. Bounded (30 s): a daemon
/// that stays is a failure.
pub fn wait_for_daemon_exit(program: &str, dir: &Path) {
    assert!(
        daemon_gone(program, dir, DAEMON_EXIT_PATIENCE),
        "{program} for {} did not exit after unmount",
        dir.display()
    );
}

/// Runs `program -o OPTION... SOURCE DIR` (making DIR first), which must succeed with the
/// mount live when it returns (this project's daemons go to the background only once the
/// kernel mount is up); the guard takes the mount down, and waits for the daemon, when
/// dropped or unmounted.
pub fn mount_daemon(program: &str, options: &[&str], source: &Path, dir: &Path) -> MountGuard {
    let name = Path::new(program)
        .file_name()
        .map_or(program.into(), |n| n.to_string_lossy());
    std::fs::create_dir_all(dir).expect("mount point");
    let out = crate::run_daemon(program, options, source, dir);
    assert!(
        out.status.success(),
        "{name} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(is_mounted(dir), "{name} returned before the mount was live");
    MountGuard::served_by(&name, dir)
}

/// Runs `program -f -d -o OPTIONS SOURCE DIR` in the foreground (making DIR first) with its
/// request log (`-d`, on stderr) piped, and returns once the mount is live: unmount DIR, then
/// `wait_with_output` gives the log of every request.
pub fn spawn_logged(
    program: &str,
    options: &str,
    source: &Path,
    dir: &Path,
) -> std::process::Child {
    std::fs::create_dir_all(dir).expect("mount point");
    let child = std::process::Command::new(program)
        .args(["-f", "-d", "-o", options])
        .arg(source)
        .arg(dir)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {program}: {e}"));
    wait_until_mounted(dir, Duration::from_secs(10));
    child
}

/// A live mount that is taken down (lazily) when dropped, so a failing test leaves no mount
/// behind; [`MountGuard::unmount`] is the checked way down.
pub struct MountGuard {
    dir: PathBuf,
    daemon: Option<String>,
}

impl MountGuard {
    /// Guards the mount at `dir`.
    pub fn new(dir: &Path) -> MountGuard {
        MountGuard {
            dir: dir.to_path_buf(),
            daemon: None,
        }
    }

    /// Guards the mount at `dir` served by a `program` daemon: taking it down also waits for
    /// that daemon to exit.
    pub fn served_by(program: &str, dir: &Path) -> MountGuard {
        MountGuard {
            dir: dir.to_path_buf(),
            daemon: Some(program.to_string()),
        }
    }

    /// The mount point.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Unmounts with [`unmount`] (EBUSY retried for a bounded time, any other failure fails)
    /// and, for a known daemon, waits for it to exit.
    pub fn unmount(self) {
        let dir = self.dir.clone();
        let daemon = self.daemon.clone();
        self.forget();
        unmount(&dir);
        if let Some(program) = daemon {
            wait_for_daemon_exit(&program, &dir);
        }
    }

    /// Drops the guard without unmounting (the test took the mount down another way).
    pub fn forget(self) {
        std::mem::forget(self);
    }
}

impl Drop for MountGuard {
    /// `fusermount3 -u -z`, then a bounded wait for the mount and its daemon to go; never
    /// panics (it may run while a failed test unwinds).
    fn drop(&mut self) {
        lazy_unmount(&self.dir);
        let deadline = Instant::now() + DROP_PATIENCE;
        while is_mounted(&self.dir) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        if let Some(program) = &self.daemon {
            let _ = daemon_gone(program, &self.dir, DAEMON_EXIT_PATIENCE);
        }
    }
}
