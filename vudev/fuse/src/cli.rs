//! The command lines of the `vudevpartx` and `vudevramdisk` daemons, as data: the binaries
//! run them, the man page and completion generator (`tools/manpages`) renders them.

use vufuse::daemon::{DaemonSpec, MountpointKind, SourceArg};
use vufuse_api::options::WritePolicy;

/// `vudevpartx [-o OPTS] IMAGE MOUNTDIR`.
pub const VUDEVPARTX: DaemonSpec = DaemonSpec {
    name: "vudevpartx",
    about: "Shows a disk image (or block device) as the file `disk` and each of its \
            partitions as `disk1`, `disk2`, ... in MOUNTDIR. A table rewritten through \
            `disk` (sfdisk, sgdisk) is followed when the writer closes it.",
    source: SourceArg::Required("IMAGE"),
    mountpoint: MountpointKind::Directory,
    write_policy: WritePolicy::ReadWriteUnlessRo,
    extra_options: "",
};

/// `vudevramdisk -o size=N FILE`.
pub const VUDEVRAMDISK: DaemonSpec = DaemonSpec {
    name: "vudevramdisk",
    about: "Mounts a sparse in-memory disk on the regular file FILE (its contents \
            vanish at unmount). Memory is taken only for the parts written.",
    source: SourceArg::Ignored,
    mountpoint: MountpointKind::RegularFile,
    write_policy: WritePolicy::ReadWriteUnlessRo,
    extra_options:
        "  size=N[K|M|G|T]          ramdisk size (a bare N counts 512-byte sectors; default 32M)\n",
};

/// The clap command of `vudevpartx`.
pub fn vudevpartx() -> clap::Command {
    vufuse::daemon::command(&VUDEVPARTX)
}

/// The clap command of `vudevramdisk`.
pub fn vudevramdisk() -> clap::Command {
    vufuse::daemon::command(&VUDEVRAMDISK)
}
