//! Scaffolding the workspace's test crates share, so that each test file keeps only what it
//! tests: running shell snippets and tools, waiting on kernel FUSE mounts and their daemons,
//! unmounting (with the bounded EBUSY retry), the fsck checks, and the real-umvu prologue.
//!
//! Dev-only: test crates take it as a `[dev-dependencies]` path entry. Everything here panics
//! with the tool's output on failure, as tests want.
#![warn(missing_docs)]

pub mod fsck;
pub mod mount;
pub mod other_user;
pub mod posix_subset;
pub mod run;
pub mod umvu;

pub use fsck::{e2fsck_clean, fsck_fat_clean};
pub use mount::{
    daemon_gone, is_mounted, lazy_unmount, mount_daemon, spawn_logged, unmount,
    wait_for_daemon_exit, wait_until, wait_until_mounted, MountGuard,
};
pub use other_user::{as_nobody, assert_denied, nobody, open_scratch, other_user_unavailable};
pub use run::{
    assert_serving, fuser_serving_threads, names, run, run_daemon, run_ok, s, sh, sh_output, skip,
    thread_names,
};

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn is_mounted_knows_proc_and_not_a_fresh_directory() {
        assert!(is_mounted(std::path::Path::new("/proc")));
        let dir = tempfile::tempdir().unwrap();
        assert!(!is_mounted(dir.path()));
    }

    #[test]
    fn sh_returns_stdout() {
        assert_eq!(sh("echo one; echo two >&2"), "one\n");
    }

    #[test]
    #[should_panic(expected = "boom")]
    fn sh_fails_with_the_scripts_stderr() {
        sh("echo boom >&2; exit 3");
    }

    #[test]
    #[should_panic(expected = "gave up waiting: never")]
    fn wait_until_gives_up_after_its_patience() {
        wait_until("never", Duration::from_millis(50), || false);
    }

    /// Only EBUSY is retried: a directory that is not mounted fails at once.
    #[test]
    #[should_panic(expected = "fusermount3 -u")]
    fn unmount_of_a_plain_directory_fails_without_retrying() {
        let dir = tempfile::tempdir().unwrap();
        unmount(dir.path());
    }

    #[test]
    fn no_daemon_serves_a_fresh_directory() {
        let dir = tempfile::tempdir().unwrap();
        assert!(daemon_gone("vufs", dir.path(), Duration::from_millis(50)));
    }

    #[test]
    fn the_umvu_prologue_skips_when_a_system_module_is_missing() {
        assert!(umvu::prologue(&["no-such-module-anywhere"], &[]).is_none());
    }
}
