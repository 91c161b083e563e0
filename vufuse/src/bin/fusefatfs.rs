//! `fusefatfs [-o OPTS] IMAGE MOUNTPOINT`: a FAT12/16/32 or exFAT filesystem from an
//! image file, a partition of a disk image (`-o part=N`) or a device, through
//! the kernel's FUSE. Option-compatible with the C fusefatfs: read-only
//! unless `-o rw+` (or `-o rw,force`).

use std::process::ExitCode;
use vufuse::daemon::{self, DaemonSpec, MountpointKind, Served, SourceArg};
use vufuse_api::options::WritePolicy;

const SPEC: DaemonSpec = DaemonSpec {
    name: "fusefatfs",
    about: "Mounts a FAT12/16/32 or exFAT filesystem from IMAGE (an image file, a whole disk image \
            with a partition table, or a device). READ-ONLY unless -o rw+ (or -o rw,force) \
            is given.",
    source: SourceArg::Required("IMAGE"),
    mountpoint: MountpointKind::Directory,
    write_policy: WritePolicy::ReadOnlyUnlessForced,
    extra_options: "  part=N                   partition N of a partitioned image (Linux numbering;\n                           default: the only FAT or exFAT partition)\n  codepage=N               accepted for compatibility (names are stored as long names)\n",
};

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
