//! Opening a filesystem's source, shared by every front end: an image file,
//! a host block device or a whole partitioned disk, with `part=N` choosing a
//! partition (Linux numbering) and, without it, the only partition holding
//! the wanted filesystem.

use std::path::Path;
use std::sync::Arc;
use vudev::part::{self, Partition};
use vudev::{BlockDevice, FileDevice, PartitionedDisk};

/// Opens `path` (read-only when asked) and returns the device the filesystem
/// lives on. `looks_right` tells whether a device holds the wanted filesystem
/// (for example, a FAT boot sector); `kind` names it in messages.
pub fn open_source(
    path: &Path,
    partition: Option<u32>,
    read_only: bool,
    kind: &str,
    looks_right: impl Fn(&dyn BlockDevice) -> bool,
) -> Result<Arc<dyn BlockDevice>, String> {
    let device =
        FileDevice::open(path, read_only).map_err(|e| format!("{}: {e}", path.display()))?;
    let disk: Arc<dyn BlockDevice> = Arc::new(device);
    select(disk, partition, kind, looks_right).map_err(|e| format!("{}: {e}", path.display()))
}

/// Chooses the device inside `disk` as [`open_source`] describes.
pub fn select(
    disk: Arc<dyn BlockDevice>,
    partition: Option<u32>,
    kind: &str,
    looks_right: impl Fn(&dyn BlockDevice) -> bool,
) -> Result<Arc<dyn BlockDevice>, String> {
    // A filesystem written to the whole device wins: no table to consult.
    if partition.is_none() && looks_right(disk.as_ref()) {
        return Ok(disk);
    }
    let table = match part::probe(disk.as_ref()) {
        Ok(Some(table)) => table,
        Ok(None) => {
            return Err(match partition {
                Some(n) => format!("part={n} given, but there is no partition table"),
                None => format!("no {kind} filesystem and no partition table"),
            })
        }
        Err(e) => return Err(format!("partition table unusable: {e}")),
    };
    let disk_parts = PartitionedDisk::new(disk);
    let window = |p: &Partition| -> Result<Arc<dyn BlockDevice>, String> {
        disk_parts
            .device(p.number)
            .map_err(|e| format!("partition {}: {e}", p.number))
    };
    match partition {
        Some(n) => {
            let p = table.get(n).ok_or_else(|| {
                let numbers: Vec<String> = table
                    .partitions
                    .iter()
                    .map(|p| p.number.to_string())
                    .collect();
                format!("no partition {n} (the disk has: {})", numbers.join(", "))
            })?;
            if p.ptype.is_extended() {
                return Err(format!(
                    "partition {n} is an extended partition, not a filesystem"
                ));
            }
            window(p)
        }
        None => {
            let mut found = Vec::new();
            for p in table.partitions.iter().filter(|p| !p.ptype.is_extended()) {
                let dev = window(p)?;
                if looks_right(dev.as_ref()) {
                    found.push((p.number, dev));
                }
            }
            match found.len() {
                1 => Ok(found.pop().expect("one").1),
                0 => Err(format!("no partition holds a {kind} filesystem")),
                _ => {
                    let numbers: Vec<String> = found.iter().map(|(n, _)| n.to_string()).collect();
                    Err(format!(
                        "{} partitions hold a {kind} filesystem ({}): choose one with -o part=N",
                        found.len(),
                        numbers.join(", ")
                    ))
                }
            }
        }
    }
}
