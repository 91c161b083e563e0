//! Shared helpers: mounting the `vufs` binary and a scratch tree; the generic runners and
//! mount guards come from testkit.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
#[allow(unused_imports)]
pub use testkit::{as_nobody, sh, MountGuard};

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
            testkit::skip(&reason);
            return;
        }
    };
}

/// Runs `vufs -o OPTS... SOURCE DIR` and returns its output (it daemonizes once the mount is live).
pub fn run(source: &Path, dir: &Path, options: &[&str]) -> Output {
    testkit::run_daemon(BIN, options, source, dir)
}

/// Runs `vufs -o OPTS SOURCE DIR`, which must succeed with the mount live when it returns;
/// the guard unmounts it (and waits for the daemon) when dropped.
pub fn mount_vufs(source: &Path, dir: &Path, options: &[&str]) -> MountGuard {
    testkit::mount_daemon(BIN, options, source, dir)
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

#[allow(unused_imports)] // Not every test binary lists a directory.
pub use testkit::names;

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
