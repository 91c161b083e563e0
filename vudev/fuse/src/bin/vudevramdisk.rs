//! `vudevramdisk -o size=64M FILE`: a sparse ramdisk mounted on a regular
//! file, so `mkfs`, `fsck` and `dd` can use FILE as a disk.

use std::process::ExitCode;
use std::sync::Arc;
use vudev::Ramdisk;
use vudev_fuse::DevFs;
use vufuse::daemon::{self, DaemonSpec, Served};

/// The size when `size=` is not given, as VUOS's vudevramdisk.
const DEFAULT_SIZE: u64 = 32 << 20;

const SPEC: DaemonSpec = vudev_fuse::cli::VUDEVRAMDISK;

fn main() -> ExitCode {
    daemon::main(&SPEC, |invocation| {
        let size = invocation.options.size.unwrap_or(DEFAULT_SIZE);
        let mut ramdisk =
            Ramdisk::new(size).map_err(|e| format!("a ramdisk of {size} bytes: {e}"))?;
        ramdisk.set_read_only(invocation.options.read_only);
        let mount_file = std::fs::metadata(&invocation.mountpoint)
            .map_err(|e| format!("{}: {e}", invocation.mountpoint.display()))?;
        let fs = DevFs::single(Arc::new(ramdisk), &invocation.options)
            .owned_like(&mount_file, &invocation.options);
        Ok(Served::new(Arc::new(fs)))
    })
}
