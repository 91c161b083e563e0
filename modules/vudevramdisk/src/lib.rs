//! `vudevramdisk.so`: VUOS's vudev ramdisk submodule, built on [`vudev::Ramdisk`].
//!
//! `vumount -t vudevramdisk -o size=64M none /dev/ramdisk` makes a sparse in-memory block
//! device: memory follows what is written, and `BLKDISCARD` gives it back. Options as the C
//! module: `size=N[K|M|G]` (a bare N counts 512-byte sectors; default 32 MiB; rounded up to
//! whole cylinders as the C module does), `mbr` (accepted; BLKGETSIZE is always in sectors
//! here), plus vudev's own `mode=`, `uid=`, `gid=`, `major=`, `minor=`. `-r` (MS_RDONLY)
//! makes it read-only.
#![allow(unsafe_code)]

use std::sync::Arc;
use vudev::{BlockDevice, Errno, Ramdisk};
use vudevglue::{chs_geometry, submodule_options, warn, BlockDriver, HdGeometry};

const NAME: &str = "vudevramdisk";
/// The size when `size=` is absent, as the C module (64 Ki sectors).
const DEFAULT_SIZE: u64 = 32 << 20;

/// One ramdisk: subdevice 0 only.
struct RamdiskDriver {
    disk: Arc<Ramdisk>,
    geometry: HdGeometry,
}

/// The C module's rounding: whole cylinders of 16x16 sectors, or 128x128 past 2^32 sectors.
fn geometry_for(bytes: u64) -> HdGeometry {
    let sectors = bytes.div_ceil(512);
    let (heads, per_track) = if sectors <= u64::from(u32::MAX) {
        (16, 16)
    } else {
        (128, 128)
    };
    chs_geometry(bytes, heads, per_track, 0)
}

/// The size the C module gives for a requested size: rounded up to whole cylinders.
pub fn rounded_size(requested: u64) -> u64 {
    let g = geometry_for(requested);
    let per_cylinder = u64::from(g.heads) * u64::from(g.sectors) * 512;
    requested.div_ceil(per_cylinder) * per_cylinder
}

fn make(_source: Option<&str>, read_only: bool, data: &str) -> Result<Box<dyn BlockDriver>, Errno> {
    let mut size = DEFAULT_SIZE;
    for (key, value) in submodule_options(NAME, data, &["size", "mbr"])? {
        if key == "size" {
            let text = value.ok_or_else(|| {
                warn(NAME, "size= needs a value");
                Errno::EINVAL
            })?;
            size = vudev::parse_size(text).map_err(|e| {
                warn(NAME, &e);
                Errno::EINVAL
            })?;
        }
    }
    let size = rounded_size(size);
    let mut disk = Ramdisk::new(size)?;
    disk.set_read_only(read_only);
    let geometry = geometry_for(disk.size());
    Ok(Box::new(RamdiskDriver {
        disk: Arc::new(disk),
        geometry,
    }))
}

impl BlockDriver for RamdiskDriver {
    fn device(&self, subdev: u32) -> Result<Arc<dyn BlockDevice>, Errno> {
        if subdev == 0 {
            Ok(self.disk.clone())
        } else {
            Err(Errno::ENXIO)
        }
    }

    fn geometry(&self, _subdev: u32) -> Result<HdGeometry, Errno> {
        Ok(self.geometry)
    }
}

vudevglue::export_vudev_ops!(make);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_round_up_to_cylinders_as_the_c_module() {
        assert_eq!(rounded_size(10 << 20), 10 << 20);
        assert_eq!(rounded_size(512_000), 128 * 1024 * 4);
        assert_eq!(rounded_size(1), 128 * 1024);
        let big = 3u64 << 41; // past 2^32 sectors: 128x128 cylinders (8 MiB)
        assert_eq!(rounded_size(big + 1) - big, 8 << 20);
    }
}
