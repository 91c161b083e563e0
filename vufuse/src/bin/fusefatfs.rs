//! `fusefatfs [-o OPTS] IMAGE MOUNTPOINT`: a FAT12/16/32 or exFAT filesystem from an
//! image file, a partition of a disk image (`-o part=N`) or a device, through
//! the kernel's FUSE. Option-compatible with the C fusefatfs: read-only
//! unless `-o rw+` (or `-o rw,force`).

use std::process::ExitCode;
use vufuse::daemon::{self, DaemonSpec, Served};

const SPEC: DaemonSpec = vufuse::cli::FUSEFATFS;

fn main() -> ExitCode {
    daemon::main(&SPEC, |invocation| {
        let options = &invocation.options;
        let source = invocation.source.as_deref().ok_or("no IMAGE given")?;
        let volume = vufuse_mount::open_fat_family(source, options)?;
        // The volume label names the mount, as a desktop would show it.
        let mut served = Served::new(volume.fs);
        served.fsname = (!volume.label.is_empty()).then_some(volume.label);
        Ok(served)
    })
}
