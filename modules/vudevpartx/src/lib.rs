//! `vudevpartx.so`: VUOS's vudev partition submodule, built on [`vudev::PartitionedDisk`].
//!
//! `vumount -t vudevpartx /abs/disk.img /dev/hda` serves the image as `/dev/hda` and its
//! partitions as `/dev/hda1`, ... with Linux numbering (MBR primaries 1-4, logicals from 5,
//! GPT entry slots). `BLKRRPART` on any of them re-reads the table; partitions that moved or
//! vanished fail with `EIO` on fds still open. `-r` (MS_RDONLY) opens the image read-only.
//! No data options besides vudev's own.
#![allow(unsafe_code)]

use std::sync::Arc;
use vudev::{BlockDevice, Errno, FileDevice, PartitionedDisk};
use vudevglue::{chs_geometry, submodule_options, warn, BlockDriver, HdGeometry};

const NAME: &str = "vudevpartx";

struct PartxDriver {
    disk: PartitionedDisk,
}

fn make(source: Option<&str>, read_only: bool, data: &str) -> Result<Box<dyn BlockDriver>, Errno> {
    submodule_options(NAME, data, &[])?;
    let source = source.ok_or(Errno::EINVAL)?;
    let device = FileDevice::open(source, read_only).inspect_err(|e| {
        warn(NAME, &format!("{source}: {e}"));
    })?;
    let disk = PartitionedDisk::new(Arc::new(device));
    if let Some(e) = disk.table_error() {
        warn(
            NAME,
            &format!("{source}: partition table unreadable ({e}); serving the whole disk only"),
        );
    }
    Ok(Box::new(PartxDriver { disk }))
}

impl BlockDriver for PartxDriver {
    fn device(&self, subdev: u32) -> Result<Arc<dyn BlockDevice>, Errno> {
        self.disk.device(subdev)
    }

    fn confirm(&self, subdev: u32) -> bool {
        subdev == 0 || self.disk.partition(subdev).is_ok()
    }

    fn reread(&self) -> Result<(), Errno> {
        if let Err(e) = self.disk.reread() {
            warn(
                NAME,
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

vudevglue::export_vudev_ops!(make);
