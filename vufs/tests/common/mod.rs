//! Shared helpers: a mount guard for the `vufs` binary and shell runners.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_vufs");

/// Why kernel FUSE tests cannot run here, if they cannot.
pub fn fuse_unavailable() -> Option<String> {
    if let Err(e) = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/fuse")
    {
        return Some(format!("/dev/fuse cannot be opened: {e}"));
    }
    if Command::new("fusermount3").arg("-V").output().is_err() {
        return Some("fusermount3 is not installed".into());
    }
    None
}

/// Skips the test (returns) with a printed reason when FUSE is missing.
#[macro_export]
macro_rules! need_fuse {
    () => {
        if let Some(reason) = common::fuse_unavailable() {
            eprintln!("skipped: {reason}");
            return;
        }
    };
}

/// Runs `sh -c script`, asserting success; returns stdout.
pub fn sh(script: &str) -> String {
    let out = Command::new("sh").args(["-c", script]).output().unwrap();
    assert!(
        out.status.success(),
        "{script}:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs `sh -c script` and returns the whole output.
pub fn sh_out(script: &str) -> Output {
    Command::new("sh").args(["-c", script]).output().unwrap()
}

/// Runs `script` as user nobody (via setpriv); returns the output.
pub fn as_nobody(script: &str) -> Output {
    Command::new("setpriv")
        .args([
            "--reuid=nobody",
            "--regid=nogroup",
            "--clear-groups",
            "sh",
            "-c",
            script,
        ])
        .output()
        .unwrap()
}

pub fn is_mounted(dir: &Path) -> bool {
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap();
    let dir = dir.canonicalize().unwrap();
    mounts
        .lines()
        .any(|l| l.split(' ').nth(1) == Some(dir.to_str().unwrap()))
}

/// A live vufs mount; unmounted (lazily) when dropped.
pub struct Mounted {
    pub dir: PathBuf,
}

pub fn run(source: &Path, dir: &Path, options: &[&str]) -> Output {
    let mut cmd = Command::new(BIN);
    for o in options {
        cmd.arg("-o").arg(o);
    }
    cmd.arg(source).arg(dir).output().unwrap()
}

impl Mounted {
    /// Runs `vufs -o OPTS SOURCE DIR` and waits for the mount.
    pub fn new(source: &Path, dir: &Path, options: &[&str]) -> Mounted {
        let out = run(source, dir, options);
        assert!(
            out.status.success(),
            "vufs failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(is_mounted(dir), "vufs returned before the mount was live");
        Mounted {
            dir: dir.to_path_buf(),
        }
    }

    /// Unmounts and waits for the daemon to exit.
    ///
    /// A plain unmount can meet EBUSY for a moment after the test closed its files: a sibling
    /// test thread that is spawning a process holds a copy of this process's descriptors until
    /// its child calls exec. So EBUSY is retried for a bounded time; any other failure fails.
    pub fn unmount(self) {
        let dir = self.dir.clone();
        std::mem::forget(self);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            let out = Command::new("fusermount3")
                .arg("-u")
                .arg(&dir)
                .output()
                .unwrap();
            if out.status.success() {
                break;
            }
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert!(
                stderr.contains("busy") && std::time::Instant::now() < deadline,
                "fusermount3 -u: {stderr}"
            );
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        wait_for_daemon_exit(&dir);
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = Command::new("fusermount3")
            .arg("-u")
            .arg("-z")
            .arg(&self.dir)
            .output();
        let _ = daemon_gone(&self.dir);
    }
}

/// Waits until no vufs process serves `dir` (bounded: a hang is a failure).
pub fn wait_for_daemon_exit(dir: &Path) {
    assert!(
        daemon_gone(dir),
        "vufs for {} did not exit after unmount",
        dir.display()
    );
}

/// Waits (at most 30 s) until no vufs process serves `dir`; false if one still does.
pub fn daemon_gone(dir: &Path) -> bool {
    let deadline = Instant::now() + Duration::from_secs(30);
    let needle = dir.to_str().unwrap().to_string();
    while Instant::now() < deadline {
        let busy = std::fs::read_dir("/proc").unwrap().flatten().any(|p| {
            std::fs::read(p.path().join("cmdline"))
                .map(|c| {
                    let args: Vec<&[u8]> = c.split(|&b| b == 0).collect();
                    args.first()
                        .is_some_and(|a| String::from_utf8_lossy(a).ends_with("vufs"))
                        && args.contains(&needle.as_bytes())
                })
                .unwrap_or(false)
        });
        if !busy {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

/// A scratch area: `upper` (SOURCE), `lower` (the real tree, also the mount point).
pub struct Scratch {
    pub tmp: tempfile::TempDir,
    pub upper: PathBuf,
    pub lower: PathBuf,
}

impl Scratch {
    pub fn new() -> Scratch {
        let tmp = tempfile::tempdir().unwrap();
        let upper = tmp.path().join("over");
        let lower = tmp.path().join("real");
        std::fs::create_dir(&upper).unwrap();
        std::fs::create_dir(&lower).unwrap();
        Scratch { tmp, upper, lower }
    }

    /// The VUOS.md example: real = {a, b, sub/c}, over = {a, x}.
    pub fn example() -> Scratch {
        let s = Scratch::new();
        std::fs::write(s.lower.join("a"), "real a\n").unwrap();
        std::fs::write(s.lower.join("b"), "real b\n").unwrap();
        std::fs::create_dir(s.lower.join("sub")).unwrap();
        std::fs::write(s.lower.join("sub/c"), "real c\n").unwrap();
        std::fs::write(s.upper.join("a"), "over a\n").unwrap();
        std::fs::write(s.upper.join("x"), "over x\n").unwrap();
        s
    }

    pub fn up(&self, p: &str) -> PathBuf {
        self.upper.join(p)
    }

    pub fn low(&self, p: &str) -> PathBuf {
        self.lower.join(p)
    }

    /// A saved copy of the lower tree (cp -a), for byte comparison later.
    pub fn save_lower(&self) -> PathBuf {
        let saved = self.tmp.path().join("saved");
        sh(&format!(
            "cp -a '{}' '{}'",
            self.lower.display(),
            saved.display()
        ));
        saved
    }
}

/// Sorted names in a directory.
pub fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

/// Asserts that `a` and `b` hold identical trees (contents, types, modes, links).
pub fn assert_same_tree(a: &Path, b: &Path) {
    let listing = |d: &Path| {
        sh(&format!(
            "cd '{}' && find . -printf '%P %y %m %U %G %s %n %T@ %l\\n' | sort && \
             find . -type f -exec md5sum {{}} + | sort -k2",
            d.display()
        ))
    };
    assert_eq!(listing(a), listing(b), "trees differ");
}
