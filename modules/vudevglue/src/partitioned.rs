//! A disk and its partitions as one vudev driver (`/dev/hda`, `/dev/hda1`, ...), over any
//! source the mount layer opens: a raw image or device, a VM image format by its magic
//! (qcow2 with its backing chain, VDI, VMDK, UML COW), or an NBD URI. Shared by
//! `vudevpartx.so` and `vudevvdi.so`, which differ only in name.

use crate::{chs_geometry, submodule_options, warn, BlockDriver, HdGeometry};
use std::path::Path;
use std::sync::Arc;
use vudev::{BlockDevice, Errno, PartitionedDisk};
use vufuse_api::options::{MountOptions, WritePolicy};

struct PartitionedDriver {
    name: &'static str,
    disk: PartitionedDisk,
}

/// The driver module `name` serves for `source`: its data options are the mount layer's
/// image options (`format=NAME`, `nolock`, `force`); the image is locked as the write mode
/// asks.
pub fn open_partitioned(
    name: &'static str,
    source: Option<&str>,
    read_only: bool,
    data: &str,
) -> Result<Box<dyn BlockDriver>, Errno> {
    let known = submodule_options(name, data, &["format", "nolock", "force"])?;
    let source = source.ok_or(Errno::EINVAL)?;
    let mut options = MountOptions::defaults(WritePolicy::ReadWriteUnlessRo);
    options.read_only = read_only;
    for (key, value) in known {
        match (key, value) {
            ("format", Some(v)) => options.format = Some(v.to_string()),
            ("nolock", None) => options.nolock = true,
            ("force", None) => options.force = true,
            _ => {
                warn(name, &format!("{key}: bad option"));
                return Err(Errno::EINVAL);
            }
        }
    }
    let device = vufuse_mount::open_disk(Path::new(source), &options).map_err(|e| {
        warn(name, &e.to_string());
        e.errno()
    })?;
    let disk = PartitionedDisk::new(device);
    if let Some(e) = disk.table_error() {
        warn(
            name,
            &format!("{source}: partition table unreadable ({e}); serving the whole disk only"),
        );
    }
    Ok(Box::new(PartitionedDriver { name, disk }))
}

impl BlockDriver for PartitionedDriver {
    fn device(&self, subdev: u32) -> Result<Arc<dyn BlockDevice>, Errno> {
        self.disk.device(subdev)
    }

    fn confirm(&self, subdev: u32) -> bool {
        subdev == 0 || self.disk.partition(subdev).is_ok()
    }

    fn reread(&self) -> Result<(), Errno> {
        if let Err(e) = self.disk.reread() {
            warn(
                self.name,
                &format!("partition table unreadable ({e}); serving the whole disk only"),
            );
        }
        Ok(())
    }

    fn geometry(&self, subdev: u32) -> Result<HdGeometry, Errno> {
        let start = if subdev == 0 {
            0
        } else {
            self.disk.partition(subdev)?.start()
        };
        Ok(chs_geometry(self.disk.disk().size(), 255, 63, start / 512))
    }
}
