//! The command lines of the `fusefatfs` and `fuseext2` daemons, as data: the binaries run
//! them, the man page and completion generator (`tools/manpages`) renders them.

use crate::daemon::{DaemonSpec, MountpointKind, SourceArg};
use vufuse_api::options::WritePolicy;

/// `fusefatfs [-o OPTS] IMAGE MOUNTPOINT`.
pub const FUSEFATFS: DaemonSpec = DaemonSpec {
    name: "fusefatfs",
    about: "Mounts a FAT12/16/32 or exFAT filesystem from IMAGE (an image file, a whole disk image \
            with a partition table, or a device). READ-ONLY unless -o rw+ (or -o rw,force) \
            is given.",
    source: SourceArg::Required("IMAGE"),
    mountpoint: MountpointKind::Directory,
    write_policy: WritePolicy::ReadOnlyUnlessForced,
    extra_options: "  part=N                   partition N of a partitioned image (Linux numbering;\n                           default: the only FAT or exFAT partition)\n  codepage=N               accepted for compatibility (names are stored as long names)\n",
};

/// `fuseext2 [-o OPTS] IMAGE MOUNTPOINT`.
pub const FUSEEXT2: DaemonSpec = DaemonSpec {
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
                    fakeroot                 act as root: new files are owned by 0:0\n  \
                    offset=BYTES             the filesystem starts at this byte of IMAGE\n  \
                    norecovery               never replay the journal (one that needs it: ro only)\n  \
                    errors=continue|remount-ro|panic   what a corruption found while serving does\n",
};

/// The clap command of `fusefatfs`.
pub fn fusefatfs() -> clap::Command {
    crate::daemon::command(&FUSEFATFS)
}

/// The clap command of `fuseext2`.
pub fn fuseext2() -> clap::Command {
    crate::daemon::command(&FUSEEXT2)
}
