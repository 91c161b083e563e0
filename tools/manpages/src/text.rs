//! The hand-written parts of the pages. The `-o` options listed here are the ones the
//! shared parser (`vufuse_api::options`) and vufs's (`vufs::options`) accept: the tests
//! parse every option's `sample` and fail when one is refused.

use crate::Page;

/// One `-o` option as the page lists it.
pub struct MountOption {
    /// How it is written (`uid=N`, `ro`).
    pub syntax: &'static str,
    /// A valid instance (`uid=1000`): the tests check the parser accepts it.
    pub sample: &'static str,
    /// What it does.
    pub text: &'static str,
}

/// A group of options under one subheading.
pub struct OptionGroup {
    /// The subheading.
    pub title: &'static str,
    /// A paragraph before the options (may be empty).
    pub intro: &'static str,
    /// The options.
    pub options: &'static [MountOption],
    /// Parsed by vufs's own option parser (true) or the shared one (false).
    pub vufs: bool,
}

const fn opt(syntax: &'static str, sample: &'static str, text: &'static str) -> MountOption {
    MountOption {
        syntax,
        sample,
        text,
    }
}

const fn group(title: &'static str, options: &'static [MountOption]) -> OptionGroup {
    OptionGroup {
        title,
        intro: "",
        options,
        vufs: false,
    }
}

const WRITE_FAT: OptionGroup = OptionGroup {
    title: "Write mode",
    intro: "As the C fusefatfs: the filesystem is mounted read-only unless rw+ (or rw together \
with force) is given. Plain rw alone warns and stays read-only; this is also what \
mount(8) passes when no mode is written, so mount -t fuse.fusefatfs needs -o rw+ to write. \
ro wins wherever it stands.",
    options: &[
        opt("ro", "ro", "Read-only (the default)."),
        opt("rw+", "rw+", "Read-write."),
        opt(
            "rw",
            "rw",
            "Read-write only together with force; alone it warns and mounts read-only.",
        ),
        opt("force", "force", "With rw: read-write."),
    ],
    vufs: false,
};

const WRITE_EXT: OptionGroup = OptionGroup {
    title: "Write mode",
    intro: "The filesystem is mounted read-only unless rw+ (fuse-ext2's spelling) or rw \
(fuse2fs's, and what mount(8) passes) is given. ro wins wherever it stands. A filesystem \
whose journal needs recovery, or that has errors recorded, is refused read-write: run e2fsck.",
    options: &[
        opt("ro", "ro", "Read-only (the default)."),
        opt("rw, rw+", "rw+", "Read-write."),
    ],
    vufs: false,
};

const WRITE_DEV: OptionGroup = OptionGroup {
    title: "Write mode",
    intro: "Devices are served read-write unless ro is given.",
    options: &[
        opt("ro", "ro", "Read-only: writes fail with EROFS."),
        opt("rw", "rw", "Read-write (the default)."),
    ],
    vufs: false,
};

const SOURCE_FS: OptionGroup = group(
    "Source",
    &[
        opt(
            "part=N",
            "part=1",
            "Mount partition N of a partitioned image (Linux numbering: MBR primaries 1 to 4, \
logicals from 5; GPT: the entry's slot). Default: the only partition with a filesystem of \
this kind; 0 is the whole disk.",
        ),
        opt(
            "format=NAME",
            "format=raw",
            "The image's format instead of probing its magic: raw, qcow2, vdi, vmdk or cow. \
format=raw serves an image file as the disk it is.",
        ),
        opt(
            "offset=BYTES",
            "offset=1048576",
            "The filesystem starts at this byte offset of the image and runs to its end \
(fuse2fs's offset=); no partition table is looked for, so part= cannot be given with it.",
        ),
        opt(
            "nolock",
            "nolock",
            "Do not lock the image. By default a read-write mount holds an exclusive OFD lock \
over the whole file and a read-only one a shared lock, so a second writer is refused \
(\"in use: another mount or program has it open read-write\"). Overriding risks corrupting it.",
        ),
    ],
);

const SOURCE_DEV: OptionGroup = group(
    "Source",
    &[
        opt(
            "format=NAME",
            "format=raw",
            "The image's format instead of probing its magic: raw, qcow2, vdi, vmdk or cow.",
        ),
        opt(
            "nolock",
            "nolock",
            "Do not lock the image (by default exclusive for read-write, shared for read-only).",
        ),
    ],
);

const OWNERS_FAT: OptionGroup = group(
    "Owners and permissions",
    &[
        opt(
            "uid=N",
            "uid=1000",
            "The owner every file shows (default: the mounting user).",
        ),
        opt(
            "gid=N",
            "gid=1000",
            "The group every file shows (default: the mounting user's).",
        ),
        opt(
            "umask=M",
            "umask=022",
            "Octal permission bits removed from every file and directory (default 022). \
chmod a-w sets the FAT read-only attribute.",
        ),
        opt(
            "dmask=M",
            "dmask=027",
            "As umask, for directories only (overrides umask).",
        ),
        opt(
            "fmask=M",
            "fmask=137",
            "As umask, for files only (overrides umask).",
        ),
        opt(
            "codepage=N",
            "codepage=437",
            "Accepted for compatibility with the C fusefatfs (names are stored as long names).",
        ),
    ],
);

const OWNERS_EXT: OptionGroup = group(
    "Owners and permissions",
    &[
        opt(
            "uid=N",
            "uid=1000",
            "Report every file as owned by user N (the disk is unchanged).",
        ),
        opt(
            "gid=N",
            "gid=1000",
            "Report every file as owned by group N.",
        ),
        opt(
            "umask=M",
            "umask=022",
            "Report every file with permissions 0777 & ~M (octal).",
        ),
        opt(
            "fakeroot",
            "fakeroot",
            "Act as root: the files an ordinary user creates are owned by 0:0, and root-only \
changes (chown) are allowed.",
        ),
    ],
);

const FUSE2FS_EXT: OptionGroup = group(
    "Journal and errors (fuse2fs's)",
    &[
        opt(
            "norecovery, noload",
            "norecovery",
            "Never replay the journal. A read-only mount of a filesystem whose journal \
needs recovery then shows what is on the disk, without the committed transactions (by \
default they are replayed in memory, the image untouched); read-write is refused, as the \
kernel and fuse2fs refuse it. With a clean journal it changes nothing.",
        ),
        opt(
            "errors=continue|remount-ro|panic",
            "errors=remount-ro",
            "What to do when an operation finds the filesystem corrupt (a checksum or \
structure error: the operation fails with EUCLEAN, \"Structure needs cleaning\"). \
continue (the default): only that operation fails. remount-ro: from then on every change \
is refused with EROFS, reads go on. panic: the daemon aborts, leaving a dead mount \
(ENOTCONN) until it is unmounted, as fuse2fs does. The superblock's own errors \
behaviour is not read. Run e2fsck -f after unmounting.",
        ),
    ],
);

const OWNERS_DEV: OptionGroup = group(
    "Owners and permissions",
    &[
        opt(
            "uid=N",
            "uid=1000",
            "The owner the device files show (default: the image file's).",
        ),
        opt(
            "gid=N",
            "gid=1000",
            "The group the device files show (default: the image file's).",
        ),
        opt(
            "umask=M",
            "umask=077",
            "Octal permission bits removed from the files' modes.",
        ),
    ],
);

const ACCESS: OptionGroup = OptionGroup {
    title: "Access and naming",
    intro: "",
    options: &[
        opt(
            "allow_other",
            "allow_other",
            "Let every user reach the mount (a user other than root needs user_allow_other in \
/etc/fuse.conf). The kernel then checks every access against the modes the mount shows: \
default_permissions is turned on with it.",
        ),
        opt(
            "allow_root",
            "allow_root",
            "Let the mounting user and root reach the mount.",
        ),
        opt(
            "default_permissions",
            "default_permissions",
            "Let the kernel check permissions from the modes shown.",
        ),
        opt(
            "fsname=NAME",
            "fsname=card",
            "The source /proc/mounts shows (default: the volume label, else SOURCE).",
        ),
        opt(
            "subtype=T",
            "subtype=x",
            "The type /proc/mounts shows, as fuse.T.",
        ),
    ],
    vufs: false,
};

const KERNEL: OptionGroup = group(
    "Kernel mount flags",
    &[
        opt("nosuid, suid", "nosuid", "Passed to the kernel mount."),
        opt("nodev, dev", "nodev", "Passed to the kernel mount."),
        opt("noexec, exec", "noexec", "Passed to the kernel mount."),
        opt("noatime, atime", "noatime", "Passed to the kernel mount."),
        opt("sync, async", "sync", "Passed to the kernel mount."),
        opt("dirsync", "dirsync", "Passed to the kernel mount."),
    ],
);

const LIBFUSE: OptionGroup = group(
    "libfuse and fuse2fs habits",
    &[
        opt(
            "attr_timeout=S",
            "attr_timeout=1.5",
            "Seconds (a decimal) the kernel may cache attributes (default: the driver's).",
        ),
        opt(
            "entry_timeout=S",
            "entry_timeout=0.5",
            "Seconds the kernel may cache name lookups (default: the driver's).",
        ),
        opt(
            "max_threads=N",
            "max_threads=4",
            "Serve with N threads (1 to 64); -s is max_threads=1.",
        ),
        opt(
            "max_read=N",
            "max_read=131072",
            "The largest read request the kernel sends, in bytes (at least 4096).",
        ),
        opt(
            "kernel_cache",
            "kernel_cache",
            "Keep a file's page cache across opens.",
        ),
        opt(
            "clone_fd",
            "clone_fd",
            "One /dev/fuse descriptor per serving thread.",
        ),
        opt(
            "nonempty",
            "nonempty",
            "Accepted and ignored: mounting over a non-empty directory is allowed anyway.",
        ),
        opt(
            "auto_unmount",
            "auto_unmount",
            "The mount goes away when the daemon dies, even by SIGKILL: a fusermount3 \
process watches the daemon and unmounts. It brings allow_root with it (the library \
underneath needs allow_root or allow_other for it), so a user other than root needs \
user_allow_other in /etc/fuse.conf. Not for use inside umvu.",
        ),
        opt(
            "noforget",
            "noforget",
            "Accepted (libfuse: never forget node IDs, for NFS export). Node IDs here stay \
valid for the life of the mount whatever the kernel forgets (ext shows its own inode \
numbers), so nothing changes.",
        ),
        opt(
            "negative_timeout=S",
            "negative_timeout=5",
            "Seconds the kernel may remember that a looked-up name does not exist (a \
lookup answered \"no such name\" is not asked again meanwhile; creating the name through \
the mount replaces it). Default 0: every lookup of a missing name reaches the daemon.",
        ),
        opt("debug", "debug", "Same as -d."),
        opt(
            "busy_poll, no_busy_poll",
            "no_busy_poll",
            "While requests keep coming, poll for the next one instead of sleeping (the \
default for fuseext2, fusefatfs and vufs where /proc shows scheduler statistics). Polling \
pauses when its thread waits for a CPU and stops 2 ms after the last request.",
        ),
    ],
);

const IGNORED: OptionGroup = group(
    "Accepted and ignored",
    &[opt(
        "defaults, auto, noauto, user, nouser, users, owner, group, nofail, _netdev, relatime, \
norelatime, strictatime, nostrictatime, lazytime, nolazytime, diratime, nodiratime, silent, \
loud, iversion, noiversion",
        "defaults,noauto,user,nofail,_netdev,relatime",
        "What mount(8), mount.fuse3 and /etc/fstab may pass: accepted, meaning nothing here.",
    )],
);

const RAMDISK: OptionGroup = group(
    "Ramdisk",
    &[opt(
        "size=N[K|M|G|T]",
        "size=64M",
        "The ramdisk's size (a bare N counts 512-byte sectors, as VUOS's vudevramdisk; \
default 32M).",
    )],
);

const VUFS_MODES: OptionGroup = OptionGroup {
    title: "Views",
    intro: "The modes are mutually exclusive.",
    options: &[
        opt(
            "bind, move",
            "bind",
            "MOUNTPOINT shows SOURCE alone (the default).",
        ),
        opt(
            "merge",
            "merge",
            "Union, SOURCE wins on equal names; SOURCE is read-only (EROFS on its files); \
writes to lower files and new names go to the lower tree.",
        ),
        opt(
            "cow",
            "cow",
            "Union; every change lands in SOURCE (copy-up, whiteouts in SOURCE/.-); the \
lower tree is never written.",
        ),
        opt(
            "mincow",
            "mincow",
            "Union; act on the lower tree where it permits, copy up (or create in SOURCE) \
only where it refuses with EACCES, EPERM or EROFS.",
        ),
        opt(
            "except=/PATH",
            "except=/tmp",
            "(Repeatable) that subtree shows the lower tree untouched.",
        ),
        opt(
            "nochcopy",
            "nochcopy",
            "chmod and chown of a lower file only record a vstat entry, no copy-up.",
        ),
    ],
    vufs: true,
};

const DAEMON_EXIT: &[(&str, &str)] = &[
    (
        "0",
        "The mount is live (the starting process, once the daemon went to the background), \
or the daemon ended after a clean unmount.",
    ),
    (
        "1",
        "Failure: the source or the mount point is unusable, the image is locked by \
another writer, the mount was refused, or serving failed.",
    ),
    (
        "2",
        "Usage error: bad arguments, an unknown or malformed -o option.",
    ),
];

const DAEMON_FILES: &[(&str, &str)] = &[
    (
        "/dev/fuse",
        "The kernel's FUSE device; the error names it when it is missing or closed to the user.",
    ),
    (
        "/etc/fuse.conf",
        "user_allow_other lets users other than root mount with allow_other.",
    ),
    (
        "/etc/fstab",
        "Mounts of type fuse.NAME are started through mount.fuse3(8).",
    ),
    (
        "/proc/self/mountinfo",
        "Read to check that the mount point is free and to find the mount made.",
    ),
];

const DAEMON_LIFECYCLE: &str = "The daemon goes to the background once the mount is live, so \
errors before that reach the terminal and the exit status; -f keeps it in the foreground and \
-d also prints every request on stderr, one line each: the opcode, its node (the parent for \
name operations) and arguments, then -> ok with the result (ino=, mode= in octal, size=, \
...) or the errno's name, then the caller's pid= and uid=, e.g.

  mkdir(1, \"d\", 0755) -> ok ino=12 mode=040755 nlink=2 uid=0 gid=0 size=1024 pid=812 uid=0
  lookup(1, \"x\") -> ENOENT pid=812 uid=0

The daemon ends when the mount is unmounted (fusermount3 -u, umount) \
or on SIGINT, SIGTERM or SIGHUP, which unmount; either way everything is written back to the \
image before the process exits.

The arguments may also come in the order mount.fuse3 and /etc/fstab use, NAME SOURCE \
MOUNTPOINT -o OPTIONS, so mount -t fuse.NAME SOURCE MOUNTPOINT -o OPTIONS works, and \
/etc/fstab lines of type fuse.NAME, once NAME is installed in /usr/local/bin or /usr/bin: \
mount(8) runs its helpers (mount.fuse3, which runs NAME through /bin/sh) without the \
caller's PATH.";

const SOURCES: &str = "IMAGE is a raw image or block device, a VM image opened by its magic \
(qcow2 v2/v3 with its backing chain, VDI, VMDK sparse/flat/streamOptimized, User-Mode Linux \
COW), or an NBD URI: nbd://host[:port]/export or nbd+unix:///export?socket=PATH, and over \
TLS nbds://host[:port]/export or nbds+unix:///export?socket=PATH, with libnbd's query keys \
tls-certificates=DIR (the server is checked against DIR/ca-cert.pem, else the system's \
roots; DIR/client-cert.pem and client-key.pem are presented when there), \
tls-verify-peer=false and tls-hostname=NAME.";

const VUNBD_TLS: &str = "--tls=on or --tls=require with --tls-certificates DIR offers TLS \
with x509 certificates (NBD_OPT_STARTTLS), as nbdkit does and from the same directory \
layout: server-cert.pem, server-key.pem, and ca-cert.pem when --tls-verify-peer makes \
clients present a certificate signed by it. With on, plaintext clients are served too; with \
require, every option before STARTTLS other than ABORT is answered NBD_REP_ERR_TLS_REQD (no \
export is listed or opened) and NBD_OPT_EXPORT_NAME closes the connection. What was \
negotiated before STARTTLS is forgotten. TLS-PSK is not offered.";

/// Every binary's page.
pub static PAGES: &[Page] = &[
    Page {
        name: "fusefatfs",
        command: vufuse::cli::fusefatfs,
        summary: "mount a FAT12/16/32 or exFAT image through FUSE",
        description: "FAT12, FAT16, FAT32 (long names) and exFAT, read-write, option-compatible \
with the C fusefatfs. Names are case-insensitive and keep their case; FAT has no owners, so \
uid=, gid= and umask= decide what stat shows. Every operation writes its FAT changes before it \
returns, so the image is consistent as soon as fusermount3 -u returns. The mount is named \
after the volume label.

IMAGE may hold a partition table: the only FAT or exFAT partition is used, or the one part= \
names. ",
        mount_options: &[
            WRITE_FAT, SOURCE_FS, OWNERS_FAT, ACCESS, KERNEL, LIBFUSE, IGNORED,
        ],
        sections: &[("sources", SOURCES), ("lifecycle", DAEMON_LIFECYCLE)],
        examples: &[
            ("fusefatfs card.img /mnt", "Mount the only FAT partition of a card image, read-only"),
            ("fusefatfs -o rw+,part=1 card.img /mnt", "Partition 1, read-write"),
            ("fusermount3 -u /mnt", "Unmount; the image is consistent when this returns"),
            (
                "mount -t fuse.fusefatfs card.img /mnt -o rw+,uid=1000",
                "The same through mount(8), for root",
            ),
            (
                "card.img  /mnt/boot  fuse.fusefatfs  rw+,part=1,allow_other,nofail  0  0",
                "An /etc/fstab line",
            ),
            ("fusefatfs -o ro disk.qcow2 /mnt", "A FAT filesystem inside a qcow2 VM image"),
        ],
        exit_status: DAEMON_EXIT,
        files: DAEMON_FILES,
        see_also: &[
            "fuseext2(1)",
            "vudevpartx(1)",
            "fusermount3(1)",
            "mount.fuse3(8)",
            "fstab(5)",
            "mkfs.fat(8)",
            "fsck.fat(8)",
            "vuimg(1)",
            "umvu(1)",
        ],
    },
    Page {
        name: "fuseext2",
        command: vufuse::cli::fuseext2,
        summary: "mount an ext2/3/4 image through FUSE, on libext2fs",
        description: "ext2, ext3 and ext4 (extents, 64bit, flex_bg, htree, metadata_csum, \
inline data) on libext2fs, the library e2fsck and fuse2fs are built on. Real inode numbers, \
owners, modes, device nodes, symlinks and xattrs. An image whose journal needs recovery is replayed in memory for \
a read-only mount (the image is not written) and refused read-write; so is a filesystem with \
errors recorded. The kernel checks permissions with default_permissions or allow_other.

IMAGE may hold a partition table: the only ext partition is used, or the one part= names.",
        mount_options: &[
            WRITE_EXT,
            SOURCE_FS,
            OWNERS_EXT,
            FUSE2FS_EXT,
            ACCESS,
            KERNEL,
            LIBFUSE,
            IGNORED,
        ],
        sections: &[("sources", SOURCES), ("lifecycle", DAEMON_LIFECYCLE)],
        examples: &[
            ("fuseext2 root.img /mnt", "Mount read-only"),
            ("fuseext2 -o rw,part=2 card.img /mnt", "The ext root partition of a card image, read-write"),
            (
                "mount -t fuse.fuseext2 root.img /mnt -o rw+",
                "The same through mount(8), for root",
            ),
            (
                "/srv/root.img  /mnt/root  fuse.fuseext2  rw+,allow_other,nofail  0  0",
                "An /etc/fstab line",
            ),
            ("e2fsck -fn root.img", "Check the image after fusermount3 -u /mnt"),
            (
                "fuseext2 -o rw,offset=1048576,errors=remount-ro,auto_unmount disk.img /mnt",
                "A filesystem 1 MiB into a raw disk; read-only after any corruption; unmounted \
if the daemon dies",
            ),
        ],
        exit_status: DAEMON_EXIT,
        files: DAEMON_FILES,
        see_also: &[
            "fusefatfs(1)",
            "fuse2fs(1)",
            "e2fsck(8)",
            "debugfs(8)",
            "mke2fs(8)",
            "fusermount3(1)",
            "mount.fuse3(8)",
            "fstab(5)",
            "vuimg(1)",
        ],
    },
    Page {
        name: "vudevpartx",
        command: vudev_fuse::cli::vudevpartx,
        summary: "show a disk image and its partitions as files through FUSE",
        description: "MOUNTDIR holds disk (the whole image) and disk1, disk2, ... one file per \
partition, Linux numbering. Each file's bytes are the device's; reads and writes bypass the \
page cache, so data written through disk is never stale through diskN. A table rewritten \
through disk (sfdisk, sgdisk) is followed when the writer closes it; handles open on a \
partition that moved or vanished get EIO.",
        mount_options: &[WRITE_DEV, SOURCE_DEV, OWNERS_DEV, ACCESS, KERNEL, LIBFUSE, IGNORED],
        sections: &[("sources", SOURCES), ("lifecycle", DAEMON_LIFECYCLE)],
        examples: &[
            ("vudevpartx disk.img /mnt/parts", "The disk and its partitions"),
            ("sgdisk -n 3:0:+64M /mnt/parts/disk", "Add a partition: disk3 appears"),
            ("mkfs.vfat /mnt/parts/disk1", "Format a partition"),
        ],
        exit_status: DAEMON_EXIT,
        files: DAEMON_FILES,
        see_also: &[
            "vudevramdisk(1)",
            "fusefatfs(1)",
            "sfdisk(8)",
            "sgdisk(8)",
            "fusermount3(1)",
            "vuimg(1)",
        ],
    },
    Page {
        name: "vudevramdisk",
        command: vudev_fuse::cli::vudevramdisk,
        summary: "a sparse ramdisk mounted on a regular file through FUSE",
        description: "FILE shows a disk held in memory: 64 KiB chunks are taken on the first \
non-zero write, unwritten ranges read as zeros. The contents vanish at unmount. SOURCE is \
ignored and may be left out or given as none.",
        mount_options: &[WRITE_DEV, RAMDISK, OWNERS_DEV, ACCESS, KERNEL, LIBFUSE, IGNORED],
        sections: &[("lifecycle", DAEMON_LIFECYCLE)],
        examples: &[
            ("touch /tmp/ram.img && vudevramdisk -o size=64M /tmp/ram.img", "A 64 MiB ramdisk"),
            ("mkfs.ext4 /tmp/ram.img", "Use it as a disk"),
        ],
        exit_status: DAEMON_EXIT,
        files: DAEMON_FILES,
        see_also: &["vudevpartx(1)", "fusermount3(1)", "mkfs(8)"],
    },
    Page {
        name: "vufs",
        command: vufs_fuse::command,
        summary: "bind, merge and copy-on-write views of host trees through FUSE",
        description: "VUOS's vufs as a FUSE daemon. SOURCE is the upper layer; MOUNTPOINT is \
where the view appears and, for merge, cow and mincow, also the lower tree: vufs opens it \
before mounting and keeps using that handle. Everything vufs needs besides the files \
themselves (whiteouts, vstat entries) lives in SOURCE/.-, in the C vufs's layer format, which \
never shows in the view. Every host path is resolved beneath its layer: a .. or a symlink \
never leads outside it.",
        mount_options: &[VUFS_MODES, ACCESS, KERNEL, LIBFUSE, IGNORED],
        sections: &[("lifecycle", DAEMON_LIFECYCLE)],
        examples: &[
            ("vufs ~/pub /srv/pub", "Bind: /srv/pub shows ~/pub"),
            ("vufs -o cow ~/layer ~/src", "~/src as before, every change lands in ~/layer"),
            ("vufs -o mincow,except=/tmp ~/layer /etc", "Copy up only what the host refuses"),
        ],
        exit_status: DAEMON_EXIT,
        files: &[
            ("SOURCE/.-", "The layer's whiteouts and vstat entries (hidden from the view)."),
            ("/dev/fuse", "The kernel's FUSE device."),
        ],
        see_also: &["fusermount3(1)", "umvu(1)", "fuse-overlayfs(1)"],
    },
    Page {
        name: "vuimg",
        command: vuimg::cli::command,
        summary: "build and edit disk images without root, loop devices or mounts",
        description: "Images, partition tables (MBR, GPT), FAT filesystems (formatted in \
process), ext2/ext4 (made by mke2fs on the partition's byte range), file copies through \
vurs's own FAT and ext drivers, VM image formats (qcow2, VDI, VMDK, UML COW) and whole images \
from a TOML SPEC. Every command validates before writing; on failure the image is left as it \
was.

Files in images are addressed as IMAGE@N:/path (N: the Linux partition number or the GPT \
partition name) or IMAGE:/path (an unpartitioned image); anything else is a host path.",
        mount_options: &[],
        sections: &[(
            "environment",
            "SOURCE_DATE_EPOCH: disk ids, partition GUIDs, FAT serials, ext UUIDs and hash \
seeds are derived from it and every timestamp is clamped to it, so builds are reproducible.",
        )],
        examples: &[
            ("vuimg build images/rpi.toml -o card.img", "A whole card image from a SPEC"),
            ("vuimg create disk.img 512M", "A sparse raw image"),
            ("vuimg part new disk.img gpt", "A new partition table"),
            ("vuimg part add disk.img fat32 --size 128M", "A partition"),
            ("vuimg format disk.img@1 fat32 --label BOOT", "Format it"),
            ("vuimg cp -r boot/. disk.img@1:/", "Copy a directory's contents in"),
            ("vuimg ls -l disk.img@1:/", "List it"),
            ("vuimg convert disk.img disk.qcow2", "Convert to qcow2"),
        ],
        exit_status: &[
            ("0", "Success."),
            ("1", "Failure; the image is left as it was."),
            ("2", "Usage error."),
        ],
        files: &[
            (
                "IMAGE",
                "Locked while in use (an OFD lock: shared to read, exclusive to write), so a \
                 mount or another vuimg cannot write it at the same time.",
            ),
            (
                ".NAME.vuimg-PID/",
                "Beside a new output (build, convert, commit, overlay): the image is written \
                 there and renamed over NAME once complete; removed on failure.",
            ),
            ("SPEC", "The TOML description vuimg build reads (see vuimg build --help)."),
        ],
        see_also: &[
            "sfdisk(8)",
            "sgdisk(8)",
            "mkfs.fat(8)",
            "mke2fs(8)",
            "mtools(1)",
            "qemu-img(1)",
            "fusefatfs(1)",
            "fuseext2(1)",
        ],
    },
    Page {
        name: "vunbd",
        command: vudev_nbd::cli::command,
        summary: "serve images, their partitions and ramdisks over NBD",
        description: "The NBD protocol as the NetworkBlockDevice project specifies it: fixed \
newstyle handshake, structured replies, READ, WRITE, FLUSH, TRIM, WRITE_ZEROES, BLOCK_STATUS \
(base:allocation from the image's map: raw holes, qcow2/VDI/VMDK tables), FUA, multi-conn. vunbd stays in the foreground; \
SIGTERM or SIGINT closes every connection, flushes every export and exits 0. Images are locked \
(exclusive unless read-only).",
        mount_options: &[],
        sections: &[("tls", VUNBD_TLS)],
        examples: &[
            (
                "vunbd --unix /run/nbd.sock disk.img --name disk disk.img@2 --name root",
                "Two exports on a Unix socket",
            ),
            ("vunbd --bind 127.0.0.1:10809 disk.qcow2", "A VM image's disk over TCP"),
            ("vunbd --unix /tmp/s --snapshot base.img", "Writes kept in memory"),
            (
                "vunbd --tls=require --tls-certificates /etc/pki/vunbd disk.img",
                "TLS only; nbdinfo 'nbds://localhost/disk.img?tls-certificates=/etc/pki/vunbd' reaches it",
            ),
            (
                "fusefatfs 'nbd+unix:///disk?socket=/run/nbd.sock' /mnt",
                "Mount an export's filesystem",
            ),
        ],
        exit_status: &[
            ("0", "Ended by SIGTERM or SIGINT after flushing every export."),
            ("1", "Failure (an image cannot be opened or locked, the socket cannot listen)."),
            ("2", "Usage error."),
        ],
        files: &[
            (
                "IMAGE",
                "Locked while exported (an OFD lock: exclusive unless --read-only or \
                 --snapshot), so no mount writes it behind the clients' backs.",
            ),
            ("--unix PATH", "The listening socket; removed at a clean shutdown."),
            ("--pidfile PATH", "Its pid, written once the exports are open; removed at a clean shutdown."),
            (
                "--tls-certificates DIR",
                "ca-cert.pem, server-cert.pem and server-key.pem, nbdkit's layout.",
            ),
        ],
        see_also: &["nbdinfo(1)", "nbdcopy(1)", "nbd-client(8)", "fusefatfs(1)"],
    },
];
