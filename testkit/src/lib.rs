//! Scaffolding the workspace's test crates share, so that each test file keeps only what it
//! tests: running shell snippets and tools, waiting on kernel FUSE mounts and their daemons,
//! unmounting (with the bounded EBUSY retry), the fsck checks, and the real-umvu prologue.
//!
//! Dev-only: test crates take it as a `[dev-dependencies]` path entry. Everything here panics
//! with the tool's output on failure, as tests want.
#![warn(missing_docs)]

pub mod fsck;
pub mod mount;
pub mod run;
pub mod umvu;

pub use fsck::{e2fsck_clean, fsck_fat_clean};
pub use mount::{
    daemon_gone, is_mounted, lazy_unmount, mount_daemon, unmount, wait_for_daemon_exit, wait_until,
    wait_until_mounted, MountGuard,
};
pub use run::{run, run_daemon, run_ok, s, sh, sh_output, skip};
