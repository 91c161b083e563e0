//! Choosing the device a filesystem lives on inside an opened source: the whole device
//! when the filesystem is written to it, else `part=N` (Linux numbering) or, without it,
//! the only partition holding the wanted filesystem.

use std::sync::Arc;
use vudev::part::{self, Partition};
use vudev::{BlockDevice, PartitionedDisk};

/// The device inside `disk` that holds the filesystem: `looks_right` tells whether a device
/// holds it (for example, a FAT boot sector); `kind` names it in messages.
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
