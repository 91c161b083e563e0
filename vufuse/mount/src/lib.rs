//! The mount layer: "source + options -> opened volume", once for every front end (the FUSE
//! daemons, the VUOS modules, vuimg). It opens the source, locks the image (exclusive for
//! read-write, shared for read-only; `-o nolock` skips it), opens its format by the magic
//! (qcow2 with its backing chain, VDI, VMDK, UML COW; `-o format=raw` forces raw), chooses
//! the partition, and hands the device to the driver with the driver's own options; every
//! failure is one [`MountError`]. Drivers never see [`MountOptions`].

#![warn(missing_docs)]

pub mod source;

use std::path::Path;
use std::sync::Arc;
use vudev::lock::{LockError, LockMode};
use vudev::{BlockDevice, FileDevice};
use vudev_formats::Format;
pub use vufuse_api::options::MountOptions;
pub use vufuse_api::MountError;

/// What a driver looks for in a source: its name for messages and a quick probe.
#[derive(Clone, Copy)]
pub struct Probe {
    /// The filesystem as messages name it ("FAT", "ext2/3/4").
    pub kind: &'static str,
    /// Whether a device starts with this filesystem.
    pub looks_right: fn(&dyn BlockDevice) -> bool,
}

/// Opens `path` for a mount: read-only when `read_only`, locked unless `lock` is false.
/// The lock lasts as long as the returned device.
pub fn open_image(path: &Path, read_only: bool, lock: bool) -> Result<Arc<FileDevice>, MountError> {
    open_file_device(path, read_only, lock).map(Arc::new)
}

/// [`open_image`] for callers that keep the device by value (vuimg's table edits).
pub fn open_file_device(
    path: &Path,
    read_only: bool,
    lock: bool,
) -> Result<FileDevice, MountError> {
    let device = FileDevice::open(path, read_only).map_err(|errno| MountError::Source {
        source: path.to_path_buf(),
        errno,
    })?;
    if lock {
        let mode = if read_only {
            LockMode::Shared
        } else {
            LockMode::Exclusive
        };
        match device.lock(mode) {
            Ok(()) => {}
            Err(LockError::Busy { held }) => {
                return Err(MountError::Locked {
                    source: path.to_path_buf(),
                    held,
                })
            }
            // A filesystem without locks (some network ones) cannot protect the image;
            // refusing would make it unusable, so the mount goes on as the C tools' do.
            Err(LockError::Failed(_)) => {}
        }
    }
    Ok(device)
}

/// Opens the device a mount of `source` with `options` serves: the image, locked as its
/// write mode asks, then its format, then the partition holding `probe`'s filesystem.
pub fn open_device(
    source: &Path,
    options: &MountOptions,
    probe: Probe,
) -> Result<Arc<dyn BlockDevice>, MountError> {
    let disk = open_disk(source, options)?;
    if let Some(offset) = options.offset {
        return offset_window(disk, offset, options, source);
    }
    source::select(disk, options.partition, probe.kind, probe.looks_right).map_err(|message| {
        MountError::Partition {
            source: source.to_path_buf(),
            message,
        }
    })
}

/// `offset=BYTES` (fuse2fs's): the filesystem starts at that byte of the disk and runs to its
/// end; no partition is looked for, so `part=` cannot be given with it.
fn offset_window(
    disk: Arc<dyn BlockDevice>,
    offset: u64,
    options: &MountOptions,
    source: &Path,
) -> Result<Arc<dyn BlockDevice>, MountError> {
    let refuse = |message: String| MountError::Partition {
        source: source.to_path_buf(),
        message,
    };
    if options.partition.is_some() {
        return Err(refuse(
            "offset= and part= cannot be given together (offset= says where the \
             filesystem starts)"
                .to_string(),
        ));
    }
    let size = disk.size();
    if offset >= size {
        return Err(refuse(format!(
            "offset={offset} is not inside the image ({size} bytes)"
        )));
    }
    vudev::Window::new(disk, offset, size - offset)
        .map(|w| Arc::new(w) as Arc<dyn BlockDevice>)
        .map_err(|e| refuse(format!("offset={offset}: {e}")))
}

/// True when `source` is an NBD URI (`nbd://host[:port]/export`, `nbd+unix:///export?socket=
/// PATH`, libnbd's syntax) rather than a path: front ends must not make it absolute.
pub fn is_uri(source: &str) -> bool {
    ["nbd://", "nbd+unix://", "nbds://", "nbds+unix://"]
        .iter()
        .any(|scheme| source.starts_with(scheme))
}

/// The whole disk `source` holds: an NBD export for a URI, else the image file (locked
/// unless `nolock`) read through its format, probed by magic unless `format=` names it.
pub fn open_disk(
    source: &Path,
    options: &MountOptions,
) -> Result<Arc<dyn BlockDevice>, MountError> {
    if let Some(uri) = source.to_str().filter(|s| is_uri(s)) {
        return open_export(uri, source);
    }
    let format = match options.format.as_deref() {
        None => None,
        Some(name) => Some(Format::from_name(name).ok_or_else(|| MountError::Image {
            source: source.to_path_buf(),
            errno: vudev::Errno::EINVAL,
            message: format!(
                "{}: format={name}: not one of raw, qcow2, vdi, vmdk, cow",
                source.display()
            ),
        })?),
    };
    let file = open_file_device(source, options.read_only, !options.nolock)?;
    if format == Some(Format::Raw)
        || (format.is_none() && vudev_formats::probe(&file) == Format::Raw)
    {
        return Ok(Arc::new(file));
    }
    let open = vudev_formats::OpenOptions {
        read_only: options.read_only,
        format,
        force: options.force,
        ..Default::default()
    };
    vudev_formats::open_file(file, source, &open).map_err(|e| MountError::Image {
        source: source.to_path_buf(),
        errno: e.errno(),
        message: e.to_string(),
    })
}

/// The NBD export `uri` as a device (the server holds the image; no lock here).
fn open_export(uri: &str, source: &Path) -> Result<Arc<dyn BlockDevice>, MountError> {
    match vudev_nbd::NbdDevice::connect(uri) {
        Ok(device) => Ok(Arc::new(device)),
        Err(e) => Err(MountError::Image {
            source: source.to_path_buf(),
            errno: e.errno(),
            message: format!("{uri}: {e}"),
        }),
    }
}

/// The FAT volume a mount asks for, with fusefatfs's options: files owned by the mounting
/// user unless `uid=`/`gid=` say otherwise, masked with `dmask`/`fmask` (else `umask`, else
/// 022).
#[cfg(feature = "fat")]
pub fn open_fat(source: &Path, options: &MountOptions) -> Result<vufuse_fat::FatFs, MountError> {
    use vufuse_fat::FatFs;
    let probe = Probe {
        kind: "FAT",
        looks_right: vufuse_fat::looks_like_fat,
    };
    let device = open_device(source, options, probe)?;
    FatFs::open(device, fat_options(options)).map_err(|e| e.at(source))
}

/// The FAT driver options of a mount's `-o` options (see [`open_fat`]).
#[cfg(feature = "fat")]
pub fn fat_options(options: &MountOptions) -> vufuse_fat::FatOptions {
    let me = vufuse_api::Context::current();
    vufuse_fat::FatOptions {
        read_only: options.read_only,
        uid: options.uid.unwrap_or(me.uid),
        gid: options.gid.unwrap_or(me.gid),
        dmask: options.dmask.or(options.umask).unwrap_or(0o022),
        fmask: options.fmask.or(options.umask).unwrap_or(0o022),
        dir_cache_bytes: vufuse_fat::DIR_CACHE_BYTES,
    }
}

/// A FAT or exFAT volume, as fusefatfs and vufusefatfs.so serve them (the C fusefatfs, on
/// FatFs, mounts both).
#[cfg(all(feature = "fat", feature = "exfat"))]
pub struct FatFamily {
    /// The driver.
    pub fs: Arc<dyn vufuse_api::FileSystem>,
    /// The volume label (names the mount).
    pub label: String,
    /// "FAT" or "exFAT", for messages.
    pub kind: &'static str,
}

/// The FAT12/16/32 or exFAT volume a mount asks for, told apart by the boot sector (the
/// whole device, or the only partition holding one, or `part=N`), with fusefatfs's options.
#[cfg(all(feature = "fat", feature = "exfat"))]
pub fn open_fat_family(source: &Path, options: &MountOptions) -> Result<FatFamily, MountError> {
    let probe = Probe {
        kind: "FAT or exFAT",
        looks_right: |dev| vufuse_fat::looks_like_fat(dev) || vufuse_exfat::looks_like_exfat(dev),
    };
    let device = open_device(source, options, probe)?;
    if vufuse_exfat::looks_like_exfat(device.as_ref()) {
        let fs = vufuse_exfat::ExFatFs::open(device, exfat_options(options))
            .map_err(|e| e.at(source))?;
        return Ok(FatFamily {
            label: fs.label(),
            fs: Arc::new(fs),
            kind: "exFAT",
        });
    }
    let fs = vufuse_fat::FatFs::open(device, fat_options(options)).map_err(|e| e.at(source))?;
    Ok(FatFamily {
        label: fs.label().to_string(),
        fs: Arc::new(fs),
        kind: "FAT",
    })
}

/// The exFAT driver options of a mount's `-o` options (as [`fat_options`]).
#[cfg(feature = "exfat")]
pub fn exfat_options(options: &MountOptions) -> vufuse_exfat::ExFatOptions {
    let me = vufuse_api::Context::current();
    vufuse_exfat::ExFatOptions {
        read_only: options.read_only,
        uid: options.uid.unwrap_or(me.uid),
        gid: options.gid.unwrap_or(me.gid),
        dmask: options.dmask.or(options.umask).unwrap_or(0o022),
        fmask: options.fmask.or(options.umask).unwrap_or(0o022),
        dir_cache_bytes: vufuse_exfat::DIR_CACHE_BYTES,
        clock: None,
    }
}

/// The ext2/3/4 volume a mount asks for, with fuse2fs's ownership view (`uid=`, `gid=`,
/// `umask=`, `fakeroot`).
#[cfg(feature = "ext")]
pub fn open_ext(source: &Path, options: &MountOptions) -> Result<vufuse_ext::ExtFs, MountError> {
    use vufuse_ext::{ExtFs, ExtOptions, ExtView};
    let probe = Probe {
        kind: "ext2/3/4",
        looks_right: vufuse_ext::looks_like_ext,
    };
    let device = open_device(source, options, probe)?;
    let fs = ExtFs::open(
        device,
        ExtOptions {
            read_only: options.read_only,
            norecovery: options.norecovery,
        },
    )
    .map_err(|e| e.at(source))?;
    Ok(fs.with_view(ExtView {
        uid: options.uid,
        gid: options.gid,
        umask: options.umask,
        fakeroot: options.fakeroot,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use vufuse_api::options::WritePolicy;

    fn options(text: &str) -> MountOptions {
        MountOptions::parse(text, WritePolicy::ReadOnlyUnlessRw).unwrap()
    }

    #[test]
    fn a_second_writer_is_refused_and_nolock_overrides() {
        let dir = tempfile::tempdir().unwrap();
        let image = dir.path().join("disk.img");
        std::fs::write(&image, vec![0u8; 4096]).unwrap();
        let reader = open_image(&image, true, true).unwrap();
        let second_reader = open_image(&image, true, true).unwrap();
        let err = open_image(&image, false, true).unwrap_err();
        assert_eq!(
            err,
            MountError::Locked {
                source: image.clone(),
                held: LockMode::Shared
            }
        );
        assert_eq!(err.errno(), vudev::Errno::EBUSY);
        assert!(err.to_string().contains("disk.img: in use"), "{err}");
        assert!(open_image(&image, false, false).is_ok(), "nolock");
        drop((reader, second_reader));
        let writer = open_image(&image, false, true).unwrap();
        let err = open_image(&image, true, true).unwrap_err();
        assert!(err.to_string().contains("open read-write"), "{err}");
        drop(writer);
    }

    #[test]
    fn errors_name_the_source_and_the_problem() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing.img");
        let probe = Probe {
            kind: "test",
            looks_right: |_| false,
        };
        let err = open_device(&missing, &options(""), probe).err().unwrap();
        assert!(matches!(err, MountError::Source { .. }), "{err:?}");
        assert_eq!(err.errno(), vudev::Errno::ENOENT);
        let blank = dir.path().join("blank.img");
        std::fs::write(&blank, vec![0u8; 1 << 20]).unwrap();
        let err = open_device(&blank, &options("part=2"), probe)
            .err()
            .unwrap();
        assert!(matches!(err, MountError::Partition { .. }), "{err:?}");
        assert!(err.to_string().contains("blank.img: part=2 given"), "{err}");
    }
}
