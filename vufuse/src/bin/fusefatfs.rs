//! `fusefatfs [-o OPTS] IMAGE MOUNTPOINT`: a FAT12/16/32 filesystem from an
//! image file, a partition of a disk image (`-o part=N`) or a device, through
//! the kernel's FUSE. Option-compatible with the C fusefatfs: read-only
//! unless `-o rw+` (or `-o rw,force`).

use std::process::ExitCode;
use std::sync::Arc;
use vufuse::daemon::{self, DaemonSpec, MountpointKind, Served, SourceArg};
use vufuse_api::options::WritePolicy;

const SPEC: DaemonSpec = DaemonSpec {
    name: "fusefatfs",
    about: "Mounts a FAT12/16/32 filesystem from IMAGE (an image file, a whole disk image \
            with a partition table, or a device). READ-ONLY unless -o rw+ (or -o rw,force) \
            is given.",
    source: SourceArg::Required("IMAGE"),
    mountpoint: MountpointKind::Directory,
    write_policy: WritePolicy::ReadOnlyUnlessForced,
    extra_options: "  part=N                   partition N of a partitioned image (Linux numbering;\n                           default: the only FAT partition)\n  codepage=N               accepted for compatibility (names are stored as long names)\n",
};

fn main() -> ExitCode {
    daemon::main(&SPEC, |invocation| {
        let options = &invocation.options;
        let source = invocation.source.as_deref().ok_or("no IMAGE given")?;
        let fs = vufuse_mount::open_fat(source, options)?;
        // The volume label names the mount, as a desktop would show it.
        let label = fs.label().to_string();
        let mut served = Served::new(Arc::new(fs));
        served.fsname = (!label.is_empty()).then_some(label);
        Ok(served)
    })
}
