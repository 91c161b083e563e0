//! Raw files at fixed offsets of the disk, outside the table and every partition: a
//! bootloader such as U-Boot at 8K or a first-stage loader after the MBR (genimage's
//! `holes`-checked raw images).

use super::spec::RawSpec;
use crate::fail;
use crate::util::{parse_bytes, Outcome};
use std::path::{Path, PathBuf};
use vudev::part::{PartitionTable, Scheme};
use vudev::BlockDevice;

/// One file to write at `offset`.
pub(in crate::build) struct RawBlob {
    pub(in crate::build) file: PathBuf,
    pub(in crate::build) offset: u64,
    pub(in crate::build) len: u64,
}

/// Checks every raw file: it exists, lies inside the disk, and overlaps neither the table
/// (MBR: its id, entries and signature, bytes 440 to 511, and every EBR; GPT: the primary
/// and backup headers and entry arrays) nor a partition nor another raw file.
pub(in crate::build) fn plan(
    raws: &[RawSpec],
    base: &Path,
    table: &PartitionTable,
    disk_bytes: u64,
) -> Outcome<Vec<RawBlob>> {
    let mut taken = reserved_ranges(table, disk_bytes);
    let mut out = Vec::new();
    for r in raws {
        let file = base.join(&r.file);
        let len = std::fs::metadata(&file)
            .map_err(|e| fail!("raw {}: {e}", file.display()))?
            .len();
        let offset = parse_bytes(&r.offset.text())?;
        let end = offset
            .checked_add(len)
            .filter(|&e| e <= disk_bytes)
            .ok_or_else(|| {
                fail!(
                    "raw {} at {offset} runs past the disk's end",
                    file.display()
                )
            })?;
        if let Some((_, _, what)) = taken.iter().find(|(a, b, _)| offset < *b && *a < end) {
            return Err(fail!(
                "raw {} (bytes {offset} to {end}) overlaps {what}",
                file.display()
            ));
        }
        taken.push((offset, end, format!("raw {}", file.display())));
        out.push(RawBlob { file, offset, len });
    }
    Ok(out)
}

/// Byte ranges a raw file must not touch, with what they hold.
fn reserved_ranges(table: &PartitionTable, disk_bytes: u64) -> Vec<(u64, u64, String)> {
    let unit = table.sector_size as u64;
    let mut taken = Vec::new();
    match table.scheme {
        Scheme::Mbr => taken.push((440, 512, "the MBR's id and partition entries".to_string())),
        Scheme::Gpt => {
            let (first, last) = table.usable;
            taken.push((0, first * unit, "the primary GPT".to_string()));
            taken.push(((last + 1) * unit, disk_bytes, "the backup GPT".to_string()));
        }
    }
    for p in &table.partitions {
        let what = format!("partition {}", p.number);
        taken.push((p.start * unit, (p.start + p.sectors) * unit, what));
        if let Some(ebr) = p.ebr {
            let what = format!("the EBR of partition {}", p.number);
            taken.push((ebr * unit, (ebr + 1) * unit, what));
        }
    }
    taken
}

/// Writes every raw file into `disk`.
pub(in crate::build) fn write(raws: &[RawBlob], disk: &dyn BlockDevice) -> Outcome {
    for r in raws {
        let bytes = std::fs::read(&r.file).map_err(|e| fail!("raw {}: {e}", r.file.display()))?;
        if bytes.len() as u64 != r.len {
            return Err(fail!(
                "raw {}: changed size while building",
                r.file.display()
            ));
        }
        disk.write_all_at(&bytes, r.offset)
            .map_err(|e| fail!("raw {}: {e}", r.file.display()))?;
    }
    Ok(())
}
