//! `fusefatfs [-o OPTS] IMAGE MOUNTPOINT`: a FAT12/16/32 or exFAT filesystem from an
//! image file, a partition of a disk image (`-o part=N`) or a device, through
//! the kernel's FUSE. Option-compatible with the C fusefatfs: read-only
//! unless `-o rw+` (or `-o rw,force`).

use std::process::ExitCode;
use vufuse::daemon::{self, DaemonSpec, Served};
use vufuse_api::errors::OnCorruption;

const SPEC: DaemonSpec = vufuse::cli::FUSEFATFS;

fn main() -> ExitCode {
    daemon::main(&SPEC, |invocation| {
        let options = &invocation.options;
        let source = invocation.source.as_deref().ok_or("no IMAGE given")?;
        let volume = vufuse_mount::open_fat_family(source, options)?;
        // The volume label names the mount, as a desktop would show it.
        // errors=remount-ro|panic: what a corruption found while serving does.
        let fs = OnCorruption::wrap(volume.fs, options.errors, SPEC.name);
        let mut served = Served::new(fs);
        served.fsname = (!volume.label.is_empty()).then_some(volume.label);
        Ok(served)
    })
}
