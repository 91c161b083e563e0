//! `fuseext2 [-o OPTS] IMAGE MOUNTPOINT`: an ext2/3/4 filesystem from an image
//! file, a partition of a disk image (`-o part=N`) or a device, through the
//! kernel's FUSE, on libext2fs. Read-only unless `-o rw+` (fuse-ext2's
//! spelling) or `-o rw` (fuse2fs's).

use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;
use vufuse::daemon::{self, DaemonSpec, MountpointKind, Served, SourceArg};
use vufuse::ext::{looks_like_ext, ExtFs, ExtOptions, ExtView};
use vufuse::options::WritePolicy;
use vufuse::source::open_source;

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
        let device = open_source(
            source,
            options.partition,
            options.read_only,
            "ext2/3/4",
            looks_like_ext,
        )?;
        let fs = ExtFs::open(
            device,
            ExtOptions {
                read_only: options.read_only,
            },
        )
        .map_err(|e| format!("{}: {e}", source.display()))?
        .with_view(ExtView {
            uid: options.uid,
            gid: options.gid,
            umask: options.umask,
            fakeroot: options.fakeroot,
        });
        let label = fs.label().to_string();
        let mut served = Served::new(Arc::new(fs));
        served.fsname = (!label.is_empty()).then_some(label);
        let mountpoint = invocation.mountpoint.clone();
        served.on_mounted = Some(Box::new(move |_| {
            widen_readahead(&mountpoint);
            Ok(())
        }));
        Ok(served)
    })
}

/// Kernel read-ahead asked for on this mount, in KiB.
const READ_AHEAD_KB: u32 = 4096;

/// Raises the kernel's read-ahead window for this mount from FUSE's 128 KiB
/// to [`READ_AHEAD_KB`], so a sequential reader gets 1 MiB requests, several
/// in flight, instead of 128 KiB ones (cold reads take half the time). FUSE
/// negotiation cannot raise it; the mount's backing-device setting in sysfs
/// can, for root. Without the privilege it stays as it was: a missed
/// optimisation, not an error. Reads /proc/self/mountinfo rather than
/// stat(2)ing the mount point, which would wait for this very daemon.
fn widen_readahead(mountpoint: &Path) {
    let Ok(mountinfo) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return;
    };
    let mut escaped = String::new();
    for c in mountpoint.to_string_lossy().chars() {
        match c {
            ' ' => escaped.push_str("\\040"),
            '\t' => escaped.push_str("\\011"),
            '\n' => escaped.push_str("\\012"),
            '\\' => escaped.push_str("\\134"),
            c => escaped.push(c),
        }
    }
    // The last mount on that path is ours; field 3 is its device MAJ:MIN.
    let device = mountinfo.lines().rev().find_map(|line| {
        let fields: Vec<&str> = line.split(' ').collect();
        (fields.len() > 4 && fields[4] == escaped).then(|| fields[2].to_string())
    });
    if let Some(device) = device {
        let _ = std::fs::write(
            format!("/sys/class/bdi/{device}/read_ahead_kb"),
            READ_AHEAD_KB.to_string(),
        );
    }
}
