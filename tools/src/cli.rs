//! The command line: subcommands, options and their man-style help.

use clap::{Args, Parser, Subcommand, ValueEnum};
use std::path::PathBuf;

const MAIN_HELP: &str = "\
ADDRESSES:
  IMAGE@N:/path   a path in partition N of IMAGE (N: Linux partition number,
                  or the partition's GPT name), e.g. card.img@1:/config.txt
  IMAGE:/path     a path in an unpartitioned image (or in its only partition
                  with a filesystem)
  anything else   a host path
  The filesystem (FAT12/16/32 or ext2/3/4) is found by probing.
  IMAGE may be raw, qcow2 (with its backing chain), VDI, VMDK or UML COW.

EXAMPLES:
  vuimg build images/rpi.toml -o card.img     # a whole Raspberry Pi card
  vuimg create disk.img 512M                  # or disk.qcow2, --format vdi
  vuimg part new disk.img mbr
  vuimg part add disk.img fat32 --size 64M --bootable
  vuimg part add disk.img linux
  vuimg format disk.img@1 fat32 --label BOOT
  vuimg format disk.img@2 ext4 --label rootfs # runs mke2fs
  vuimg cp -r boot/. disk.img@1:/
  vuimg ls -l disk.img@1:/
  vuimg cat disk.img@1:/config.txt
  vuimg cp disk.img@2:/etc/hostname .
  vuimg overlay disk.img test.qcow2           # copy-on-write; then commit
  vuimg convert disk.img disk.vmdk            # raw, qcow2, vdi, vmdk
  vuimg info --json test.qcow2

Sizes take K, M, G or T suffixes (binary units); a bare number is bytes.
Progress bars appear on stderr for work longer than a second, only on a
terminal. With SOURCE_DATE_EPOCH set, ids, serials and times are fixed.
EXIT STATUS: 0 success, 1 failure (the image is left as it was), 2 usage error.";

/// `vuimg`: build and edit disk images without root, loop devices or mounts.
#[derive(Parser)]
#[command(
    name = "vuimg",
    version,
    about = "Build and edit disk images without root, loop devices or mounts",
    after_help = MAIN_HELP
)]
pub struct Cli {
    /// No progress bars or notes.
    #[arg(long, short, global = true)]
    pub quiet: bool,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Subcommand)]
pub enum Command {
    /// Create an empty image of SIZE bytes: raw (sparse), qcow2, VDI or VMDK (never overwrites).
    #[command(after_help = "\
The format is --format, else IMAGE's extension (.qcow2, .vdi, .vmdk), else raw.
qcow2 is v3 with 64 KiB clusters; VDI is dynamic; VMDK is monolithicSparse.

EXAMPLES:
  vuimg create disk.img 512M
  vuimg create disk.qcow2 8G
  vuimg create disk.bin 1G --format vmdk")]
    Create {
        /// Image file to create.
        image: PathBuf,
        /// Size, e.g. 512M.
        size: String,
        /// Image format (default: by IMAGE's extension, else raw).
        #[arg(long, short = 'f')]
        format: Option<ImageFormat>,
    },
    /// Grow a raw image file to SIZE bytes (a GPT's backup moves on the next table write).
    #[command(
        after_help = "EXAMPLES:\n  vuimg grow disk.img 1G\n  vuimg part resize disk.img 2 max"
    )]
    Grow {
        /// Image file.
        image: PathBuf,
        /// New size, e.g. 1G.
        size: String,
    },
    /// Partition tables: new, add, del, resize, set, list.
    #[command(
        subcommand,
        after_help = "\
Types are names (linux, fat32, fat16, efi, swap, lvm, raid, extended,
bios-boot, linux-home, xbootldr, ...), MBR hex codes (83, 0x0c), GPT GUIDs or
sgdisk codes (8300, ef00). New partitions start on 1 MiB boundaries; every
command checks the whole new table before writing it.

EXAMPLES:
  vuimg part new disk.img gpt
  vuimg part add disk.img efi --size 100M --name ESP
  vuimg part add disk.img linux --name root
  vuimg part resize disk.img 2 max
  vuimg part set disk.img 1 --bootable
  vuimg part list disk.img --json"
    )]
    Part(PartCommand),
    /// Create a filesystem on a partition (IMAGE@N) or a whole image.
    #[command(after_help = "\
FAT12/16/32 is written in process: the type and cluster size are chosen as
mkfs.fat does for the size unless given; the boot sector's hidden sectors are
the partition's start. ext2/ext4 run e2fsprogs' `mke2fs` on the partition's
byte range (-E offset=...), and say so.

EXAMPLES:
  vuimg format disk.img@1 fat32 --label BOOT
  vuimg format disk.img@1 fat --cluster-size 4K
  vuimg format disk.img@2 ext4 --label rootfs --block-size 4096
  vuimg format floppy.img fat12")]
    Format(FormatArgs),
    /// List a directory (or show one file).
    #[command(
        after_help = "EXAMPLES:\n  vuimg ls card.img@1:/\n  vuimg ls -l card.img@rootfs:/etc\n  vuimg ls --json card.img@2:/"
    )]
    Ls {
        /// IMAGE@N:/path.
        address: String,
        /// Long listing: mode, links, owner, size, time.
        #[arg(short = 'l', long)]
        long: bool,
        /// JSON array of entries.
        #[arg(long)]
        json: bool,
    },
    /// Write a file of an image to standard output.
    #[command(after_help = "EXAMPLES:\n  vuimg cat card.img@1:/config.txt")]
    Cat {
        /// IMAGE@N:/path.
        address: String,
    },
    /// Copy files host→image, image→host or image→image.
    #[command(after_help = "\
The last argument is the destination; if it is an existing directory, the
sources go inside it. Times are kept; modes and owners too where the format
keeps them (ext). The whole copy is planned first: a missing source or one that
needs more space than is free fails before anything is written.

EXAMPLES:
  vuimg cp config.txt card.img@1:/
  vuimg cp -r images/sample/boot/. card.img@1:/
  vuimg cp -r card.img@2:/etc ./etc-copy
  vuimg cp old.img@1:/kernel.img new.img@1:/kernel.img")]
    Cp {
        /// Copy directories recursively.
        #[arg(short = 'r', short_alias = 'R', long)]
        recursive: bool,
        /// Sources, then the destination.
        #[arg(required = true, num_args = 2..)]
        paths: Vec<String>,
    },
    /// Create a directory in an image.
    #[command(after_help = "EXAMPLES:\n  vuimg mkdir -p card.img@2:/opt/app/data")]
    Mkdir {
        /// Create parents; no error if it exists.
        #[arg(short = 'p', long)]
        parents: bool,
        /// IMAGE@N:/path.
        address: String,
    },
    /// Remove a file (or a tree with -r) from an image.
    #[command(
        after_help = "EXAMPLES:\n  vuimg rm card.img@1:/overlays/README\n  vuimg rm -r card.img@2:/tmp"
    )]
    Rm {
        /// Remove directories and their contents.
        #[arg(short = 'r', short_alias = 'R', long)]
        recursive: bool,
        /// IMAGE@N:/path.
        address: String,
    },
    /// Rename or move a file within one filesystem of an image.
    #[command(after_help = "EXAMPLES:\n  vuimg mv card.img@1:/config.txt card.img@1:/config.bak")]
    Mv {
        /// IMAGE@N:/path.
        from: String,
        /// IMAGE@N:/path (same filesystem).
        to: String,
    },
    /// Convert an image (raw, qcow2, VDI, VMDK, UML COW, with its backing chain) to a new one.
    #[command(after_help = "\
SRC's format is probed; an overlay is read through its whole backing chain.
DST's format is --format, else DST's extension (.qcow2, .vdi, .vmdk), else raw.
Only data that is not zero is written: a raw DST keeps holes, a qcow2, VDI or
VMDK DST allocates no cluster for zeros. DST is written beside itself and
renamed at the end, so a failure leaves it as it was.

EXAMPLES:
  vuimg convert card.img card.qcow2
  vuimg convert disk.vdi disk.img
  vuimg convert top.qcow2 flat.vmdk --format vmdk
  vuimg convert new.img old.img --force")]
    Convert {
        /// Source image.
        src: PathBuf,
        /// Image to write.
        dst: PathBuf,
        /// Output format (default: by DST's extension, else raw).
        #[arg(long, short = 'f')]
        format: Option<ImageFormat>,
        /// Replace DST if it exists.
        #[arg(long)]
        force: bool,
    },
    /// Create a copy-on-write overlay NEW over BASE: writes go to NEW, BASE stays as it is.
    #[command(after_help = "\
qcow2 (default): BASE may be of any format and is recorded with its format;
its name is stored relative to NEW's directory when both are in one directory
tree (below the same top directory), else absolute. The disk size is BASE's.
uml: a UML COW v3 file as uml_mkcow makes (BASE raw, recorded by absolute
path, mtime and size; UML refuses the overlay once BASE changes).

EXAMPLES:
  vuimg overlay card.img card-test.qcow2
  vuimg cp config.txt card-test.qcow2@1:/
  vuimg overlay root.img root.cow --format uml")]
    Overlay {
        /// The image below.
        base: PathBuf,
        /// The overlay to create.
        new: PathBuf,
        /// Overlay format.
        #[arg(long, short = 'f', default_value = "qcow2")]
        format: OverlayFormat,
    },
    /// Fold an overlay into its backing file, or write the merged disk to DST.
    #[command(after_help = "\
Without DST, as `qemu-img commit`: the clusters (qcow2) or sectors (UML COW)
the overlay holds are written into its backing file, opened read-write and
locked exclusive; the overlay is kept (it now reads as its backing file). A
UML overlay takes the backing file's new mtime so UML still accepts it.
With DST, as `uml_moo`: a new image with the merged disk (raw, or by DST's
extension or --format), written atomically like `vuimg convert`.

EXAMPLES:
  vuimg commit card-test.qcow2
  vuimg commit root.cow merged.img")]
    Commit {
        /// The overlay (qcow2 or UML COW).
        overlay: PathBuf,
        /// A new image to write instead (the backing file is then left alone).
        dst: Option<PathBuf>,
        /// With DST: its format (default: by extension, else raw).
        #[arg(long, short = 'f', requires = "dst")]
        format: Option<ImageFormat>,
        /// With DST: replace it if it exists.
        #[arg(long, requires = "dst")]
        force: bool,
    },
    /// Show an image's format, sizes and backing chain, as `qemu-img info`.
    #[command(after_help = "\
disk size is what the file occupies on the host; allocated is the part of
the disk the image itself stores. Every level of the backing chain follows.
--json uses qemu-img info's field names (format, virtual-size, actual-size,
backing-filename, backing-filename-format, full-backing-filename) with the
image below nested as backing-image; allocated-bytes is vuimg's own.

EXAMPLES:
  vuimg info card-test.qcow2
  vuimg info --json disk.vdi")]
    Info {
        /// Image file.
        image: PathBuf,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Build a whole image from a TOML SPEC.
    #[command(after_help = SPEC_HELP)]
    Build {
        /// The SPEC file.
        spec: PathBuf,
        /// Output image (default: `output` in the SPEC, else SPEC's name with .img).
        #[arg(short, long)]
        output: Option<PathBuf>,
        /// Only plan and check; write nothing.
        #[arg(long)]
        dry_run: bool,
        /// With --dry-run: print the plan as JSON.
        #[arg(long, requires = "dry_run")]
        json: bool,
    },
}

/// Formats an image can be written in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum ImageFormat {
    /// QEMU copy-on-write v3.
    Qcow2,
    /// VirtualBox (dynamic).
    Vdi,
    /// VMware monolithicSparse.
    Vmdk,
    /// The disk itself (sparse file).
    Raw,
}

/// Overlay formats.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum OverlayFormat {
    /// qcow2 with a backing file.
    Qcow2,
    /// User-Mode Linux COW v3.
    Uml,
}

/// MBR or GPT.
#[derive(Clone, Copy, ValueEnum)]
pub enum Label {
    /// DOS/MBR table.
    Mbr,
    /// GUID partition table.
    Gpt,
}

/// Partition table subcommands.
#[derive(Subcommand)]
pub enum PartCommand {
    /// Write a new empty table, replacing any existing one.
    New {
        /// Image file.
        image: PathBuf,
        /// Table type.
        label: Label,
        /// MBR disk id (hex, e.g. 0x1234abcd) or GPT disk GUID; random by default.
        #[arg(long)]
        id: Option<String>,
    },
    /// Add a partition of TYPE (linux, fat32, efi, swap, extended, ..., a hex code or a GUID).
    Add(AddArgs),
    /// Delete partition NUMBER (later MBR logicals are renumbered, as Linux does).
    Del {
        /// Image file.
        image: PathBuf,
        /// Partition number.
        number: u32,
    },
    /// Resize partition NUMBER to SIZE, or `max` to fill the free space after it.
    Resize {
        /// Image file.
        image: PathBuf,
        /// Partition number.
        number: u32,
        /// New size or `max`.
        size: String,
        /// Shrink even below the filesystem the partition holds (cutting it off).
        #[arg(long)]
        force: bool,
    },
    /// Change type, name or bootable flag of partition NUMBER.
    Set {
        /// Image file.
        image: PathBuf,
        /// Partition number.
        number: u32,
        /// New type.
        #[arg(long = "type")]
        ptype: Option<String>,
        /// New GPT name.
        #[arg(long)]
        name: Option<String>,
        /// Set the bootable flag.
        #[arg(long, overrides_with = "no_bootable")]
        bootable: bool,
        /// Clear the bootable flag.
        #[arg(long)]
        no_bootable: bool,
    },
    /// Print the table; with --json, the fields of `sfdisk --json`.
    List {
        /// Image file.
        image: PathBuf,
        /// Print JSON as `sfdisk --json` does.
        #[arg(long)]
        json: bool,
    },
}

/// Arguments of `part add`.
#[derive(Args)]
pub struct AddArgs {
    /// Image file.
    pub image: PathBuf,
    /// Partition type.
    #[arg(value_name = "TYPE")]
    pub ptype: String,
    /// Size (e.g. 64M); default: the rest of the first free region.
    #[arg(long)]
    pub size: Option<String>,
    /// First sector; default: the first 1 MiB-aligned free sector.
    #[arg(long)]
    pub start: Option<u64>,
    /// Partition number; default: the first free one.
    #[arg(long)]
    pub number: Option<u32>,
    /// GPT partition name.
    #[arg(long, default_value = "")]
    pub name: String,
    /// Set the bootable flag (MBR active, GPT legacy BIOS bootable).
    #[arg(long)]
    pub bootable: bool,
    /// MBR: create a logical partition inside the extended one.
    #[arg(long)]
    pub logical: bool,
}

/// Arguments of `format`.
#[derive(Args)]
pub struct FormatArgs {
    /// IMAGE@N (a partition) or IMAGE (the whole image).
    pub target: String,
    /// fat, fat12, fat16, fat32, exfat, ext2 or ext4.
    pub fs: String,
    /// Volume label.
    #[arg(long, short = 'L')]
    pub label: Option<String>,
    /// FAT cluster size (e.g. 4K).
    #[arg(long)]
    pub cluster_size: Option<String>,
    /// ext block size (1024, 2048 or 4096).
    #[arg(long)]
    pub block_size: Option<String>,
}

/// Help for `vuimg build`.
pub const SPEC_HELP: &str = r#"SPEC (TOML):
  size = "512M"              # image size
  table = "mbr"              # mbr or gpt
  id = "0x5eed0001"          # optional MBR id / GPT disk GUID
  reproducible = true        # fix ids, serials and times (also: SOURCE_DATE_EPOCH)
  epoch = 1700000000         # the fixed time (default: SOURCE_DATE_EPOCH, else 1980-01-01)
  output = "card.img"        # default output, relative to the SPEC
  hybrid_mbr = [1]           # GPT: also list these (1-3) in the MBR (mbr_type = "0c")
  fill = true                # allocate every byte of a raw output (no holes)
  raw = [ { file = "u-boot.bin", offset = "8K" } ]   # outside the table and partitions

  [[partition]]
  type = "fat32"             # by name (linux, fat32, efi, swap, ...), hex or GUID
  size = "128M"              # or "rest" (the default): the free space left
  name = "boot"              # GPT name (also usable as IMAGE@boot)
  bootable = true
  fs = "fat32"               # fat, fat12, fat16, fat32, exfat, ext2, ext4 or none
  label = "BOOT"
  cluster_size = "4K"        # FAT and exFAT; ext takes block_size = 4096
  offset = "4M"              # start (bytes from the disk's start); or align = "4M"
  uuid = "..."               # GPT partition GUID; fs_uuid = "..." the ext UUID
  volume_id = "0x1234abcd"   # FAT/exFAT serial
  features = ["^metadata_csum"]  # mke2fs -O
  logical = true             # MBR logical (after a type = "extended" partition)
  image = "boot.vfat"        # or: fill from an image file (no fs, no contents)
  contents = [
    { from = "sample/boot", to = "/" },        # a host directory's contents
    { from = "kernel.img", to = "/kernel.img" },  # one file
    { text = "hello\n", to = "/motd", mode = "0644" },  # inline text
  ]

Paths in the SPEC are relative to the SPEC's directory. ext filesystems are
made by running mke2fs (e2fsprogs); FAT is written in process. Files are owned
by root (0:0); times are kept (clamped to the epoch when reproducible).

EXAMPLES:
  vuimg build images/rpi.toml -o card.img
  SOURCE_DATE_EPOCH=1700000000 vuimg build images/efi.toml -o efi.img
  vuimg build --dry-run --json images/rpi.toml   # the plan as JSON, nothing written"#;

/// The clap command of `vuimg`, for the man page and completion generator.
pub fn command() -> clap::Command {
    <Cli as clap::CommandFactory>::command()
}
