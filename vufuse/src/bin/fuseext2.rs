//! `fuseext2 [-o OPTS] IMAGE MOUNTPOINT`: an ext2/3/4 filesystem from an image
//! file, a partition of a disk image (`-o part=N`) or a device, through the
//! kernel's FUSE, on libext2fs. Read-only unless `-o rw+` (fuse-ext2's
//! spelling) or `-o rw` (fuse2fs's).

use std::process::ExitCode;
use std::sync::Arc;
use vufuse::daemon::{self, DaemonSpec, MountpointKind, Served, SourceArg};
use vufuse_api::options::WritePolicy;

const SPEC: DaemonSpec = DaemonSpec {
    name: "fuseext2",
    about: "Mounts an ext2/3/4 filesystem from IMAGE (an image file, a whole disk image \
            with a partition table, or a device). READ-ONLY unless -o rw+ or -o rw is given. \
            Writes go straight to their blocks, as fuse2fs does (not through the journal).",
    source: SourceArg::Required("IMAGE"),
    mountpoint: MountpointKind::Directory,
    write_policy: WritePolicy::ReadOnlyUnlessRw,
    extra_options: "  part=N                   partition N of a partitioned image (Linux numbering;\n                           default: the only ext partition)\n  \
                    uid=N, gid=N             report every file as owned by user N / group N\n  \
                    umask=M                  report every file with permissions 0777 & ~M (octal)\n  \
                    fakeroot                 act as root: new files are owned by 0:0\n",
};

fn main() -> ExitCode {
    daemon::main(&SPEC, |invocation| {
        let options = &invocation.options;
        let source = invocation.source.as_deref().ok_or("no IMAGE given")?;
        let fs = vufuse_mount::open_ext(source, options)?;
        let label = fs.label().to_string();
        let mut served = Served::new(Arc::new(fs));
        served.fsname = (!label.is_empty()).then_some(label);
        // The daemon asks the kernel for a wide read-ahead on every mount (daemon.rs).
        Ok(served)
    })
}
