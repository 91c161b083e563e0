//! Writing a new exFAT volume (what `mkfs.exfat` does), in process.
//!
//! The layout follows exfatprogs 1.2's mkfs.exfat, so an image formatted here matches one it
//! makes: clusters of 4 KiB up to 256 MiB, 32 KiB up to 32 GiB, 128 KiB above; the FAT at the
//! first 1 MiB boundary after the 24 boot sectors and sized for `size / cluster` entries
//! rounded to a cluster; the cluster heap at the next 1 MiB boundary; one FAT; the
//! allocation bitmap, the standard compressed up-case table and a one-cluster root directory
//! (holding the label, bitmap and up-case entries) in clusters 2 onwards, FAT-chained.

use crate::boot::{self, MAX_CLUSTER_SHIFT};
use crate::entry_set::{ENTRY, TYPE_BITMAP, TYPE_LABEL, TYPE_UPCASE};
use crate::fat::END;
use crate::upcase;
use std::time::{SystemTime, UNIX_EPOCH};
use vudev::{BlockDevice, Errno};

/// Alignment of the FAT and the cluster heap (mkfs.exfat's default boundary).
const BOUNDARY: u64 = 1 << 20;
/// Longest label, in UTF-16 units.
pub const MAX_LABEL: usize = 11;

/// What to format with; `None` fields take mkfs.exfat's choice.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FormatOptions {
    /// Volume label (up to 11 UTF-16 units).
    pub label: Option<String>,
    /// Bytes per cluster: a power of two from the sector size to 32 MiB.
    pub cluster_size: Option<u32>,
    /// Volume serial number (fix it for reproducible images); by default from the clock.
    pub serial: Option<u32>,
}

/// Where a format puts things, in bytes from the start of the volume.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Layout {
    /// Bytes per sector.
    pub sector_size: u64,
    /// Bytes per cluster.
    pub cluster_size: u64,
    /// Offset of the FAT.
    pub fat_offset: u64,
    /// Bytes of the FAT.
    pub fat_bytes: u64,
    /// Offset of cluster 2.
    pub heap_offset: u64,
    /// Clusters in the heap.
    pub cluster_count: u32,
    /// Bytes of the allocation bitmap.
    pub bitmap_bytes: u64,
    /// First cluster of the up-case table.
    pub upcase_cluster: u32,
    /// First cluster of the root directory.
    pub root_cluster: u32,
}

/// mkfs.exfat's default cluster size for a volume of `size` bytes.
pub fn default_cluster_size(size: u64) -> u32 {
    if size <= 256 << 20 {
        4096
    } else if size <= 32 << 30 {
        32 << 10
    } else {
        128 << 10
    }
}

/// The layout of a volume of `size` bytes with `sector_size`-byte sectors.
pub fn layout(size: u64, sector_size: u32, opts: &FormatOptions) -> Result<Layout, Errno> {
    let sector = sector_size as u64;
    let cs = opts
        .cluster_size
        .unwrap_or_else(|| default_cluster_size(size)) as u64;
    if !cs.is_power_of_two() || cs < sector || cs > 1 << MAX_CLUSTER_SHIFT {
        return Err(Errno::EINVAL);
    }
    let fat_offset = (24 * sector).next_multiple_of(BOUNDARY);
    let entries = size / cs;
    if entries > u32::MAX as u64 / 4 {
        return Err(Errno::EINVAL);
    }
    let fat_bytes = (entries * 4).next_multiple_of(cs);
    let heap_offset = (fat_offset + fat_bytes).next_multiple_of(BOUNDARY);
    if size <= heap_offset {
        return Err(Errno::ENOSPC);
    }
    let count = (size - heap_offset) / cs;
    if count > boot::MAX_CLUSTERS as u64 {
        return Err(Errno::EINVAL);
    }
    let bitmap_bytes = count.div_ceil(8);
    let bitmap_clusters = bitmap_bytes.div_ceil(cs);
    let upcase_clusters = (upcase::standard_bytes().len() as u64).div_ceil(cs);
    if count < bitmap_clusters + upcase_clusters + 1 {
        return Err(Errno::ENOSPC);
    }
    let upcase_cluster = 2 + bitmap_clusters as u32;
    Ok(Layout {
        sector_size: sector,
        cluster_size: cs,
        fat_offset,
        fat_bytes,
        heap_offset,
        cluster_count: count as u32,
        bitmap_bytes,
        upcase_cluster,
        root_cluster: upcase_cluster + upcase_clusters as u32,
    })
}

/// Formats `dev` as one exFAT volume filling it.
pub fn format(dev: &dyn BlockDevice, opts: &FormatOptions) -> Result<(), Errno> {
    let label: Vec<u16> = opts.label.as_deref().unwrap_or("").encode_utf16().collect();
    if label.len() > MAX_LABEL {
        return Err(Errno::EINVAL);
    }
    let l = layout(dev.size(), dev.sector_size(), opts)?;
    let serial = opts.serial.unwrap_or_else(|| {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        (now.as_secs() as u32).wrapping_mul(0x9E37_79B9) ^ now.subsec_nanos()
    });
    write_boot_regions(dev, &l, serial)?;
    write_fat(dev, &l)?;
    write_bitmap(dev, &l)?;
    let table = upcase::standard_bytes();
    let offset_of = |c: u32| l.heap_offset + (c as u64 - 2) * l.cluster_size;
    dev.write_all_at(&table, offset_of(l.upcase_cluster))?;
    write_root(dev, &l, &label, &table, offset_of(l.root_cluster))?;
    dev.flush()
}

fn write_boot_regions(dev: &dyn BlockDevice, l: &Layout, serial: u32) -> Result<(), Errno> {
    let sector = l.sector_size as usize;
    let mut region = vec![0u8; sector * 12];
    let b = &mut region[..sector];
    b[0..3].copy_from_slice(&[0xEB, 0x76, 0x90]);
    b[3..11].copy_from_slice(b"EXFAT   ");
    b[72..80].copy_from_slice(&(dev.size() / l.sector_size).to_le_bytes());
    b[80..84].copy_from_slice(&((l.fat_offset / l.sector_size) as u32).to_le_bytes());
    b[84..88].copy_from_slice(&((l.fat_bytes / l.sector_size) as u32).to_le_bytes());
    b[88..92].copy_from_slice(&((l.heap_offset / l.sector_size) as u32).to_le_bytes());
    b[92..96].copy_from_slice(&l.cluster_count.to_le_bytes());
    b[96..100].copy_from_slice(&l.root_cluster.to_le_bytes());
    b[100..104].copy_from_slice(&serial.to_le_bytes());
    b[104] = 0;
    b[105] = 1;
    b[108] = l.sector_size.trailing_zeros() as u8;
    b[109] = (l.cluster_size / l.sector_size).trailing_zeros() as u8;
    b[110] = 1;
    b[111] = 0x80;
    b[510] = 0x55;
    b[511] = 0xAA;
    for s in 1..9 {
        // Extended boot sectors: empty, with their signature.
        region[(s + 1) * sector - 2] = 0x55;
        region[(s + 1) * sector - 1] = 0xAA;
    }
    // The OEM parameters sector as mkfs.exfat leaves it; sector 10 stays reserved (zero).
    region[9 * sector..10 * sector].fill(0xFF);
    let sum = boot::region_checksum(&region, sector);
    for word in region[11 * sector..].chunks_exact_mut(4) {
        word.copy_from_slice(&sum.to_le_bytes());
    }
    dev.write_all_at(&region, 0)?;
    dev.write_all_at(&region, 12 * l.sector_size)
}

fn write_fat(dev: &dyn BlockDevice, l: &Layout) -> Result<(), Errno> {
    let used = (l.root_cluster + 1) as usize;
    let zero_len = l.fat_bytes.min(1 << 20) as usize;
    let zeros = vec![0u8; zero_len];
    let mut at = 0;
    while at < l.fat_bytes {
        let n = (l.fat_bytes - at).min(zero_len as u64) as usize;
        dev.write_all_at(&zeros[..n], l.fat_offset + at)?;
        at += n as u64;
    }
    let mut head = vec![0u8; used * 4];
    let mut put = |c: usize, v: u32| head[c * 4..c * 4 + 4].copy_from_slice(&v.to_le_bytes());
    put(0, 0xFFFF_FFF8);
    put(1, 0xFFFF_FFFF);
    for (first, last) in [
        (2, l.upcase_cluster - 1),
        (l.upcase_cluster, l.root_cluster - 1),
        (l.root_cluster, l.root_cluster),
    ] {
        for c in first..last {
            put(c as usize, c + 1);
        }
        put(last as usize, END);
    }
    dev.write_all_at(&head, l.fat_offset)
}

fn write_bitmap(dev: &dyn BlockDevice, l: &Layout) -> Result<(), Errno> {
    let mut bitmap = vec![0u8; l.bitmap_bytes.next_multiple_of(l.cluster_size) as usize];
    for bit in 0..(l.root_cluster - 1) as usize {
        bitmap[bit / 8] |= 1 << (bit % 8);
    }
    dev.write_all_at(&bitmap, l.heap_offset)
}

fn write_root(
    dev: &dyn BlockDevice,
    l: &Layout,
    label: &[u16],
    table: &[u8],
    offset: u64,
) -> Result<(), Errno> {
    let mut root = vec![0u8; l.cluster_size as usize];
    let e = &mut root[..ENTRY];
    e[0] = TYPE_LABEL;
    e[1] = label.len() as u8;
    for (i, u) in label.iter().enumerate() {
        e[2 + 2 * i..4 + 2 * i].copy_from_slice(&u.to_le_bytes());
    }
    let e = &mut root[ENTRY..2 * ENTRY];
    e[0] = TYPE_BITMAP;
    e[20..24].copy_from_slice(&2u32.to_le_bytes());
    e[24..32].copy_from_slice(&l.bitmap_bytes.to_le_bytes());
    let e = &mut root[2 * ENTRY..3 * ENTRY];
    e[0] = TYPE_UPCASE;
    e[4..8].copy_from_slice(&upcase::checksum(table).to_le_bytes());
    e[20..24].copy_from_slice(&l.upcase_cluster.to_le_bytes());
    e[24..32].copy_from_slice(&(table.len() as u64).to_le_bytes());
    dev.write_all_at(&root, offset)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_layout_matches_mkfs_exfat() {
        // mkfs.exfat 1.2.0 on 64 MiB: FAT at sector 2048, 128 sectors, heap at 4096,
        // 15,872 clusters, root at cluster 5.
        let l = layout(64 << 20, 512, &FormatOptions::default()).unwrap();
        assert_eq!(l.fat_offset / 512, 2048);
        assert_eq!(l.fat_bytes / 512, 128);
        assert_eq!(l.heap_offset / 512, 4096);
        assert_eq!(l.cluster_count, 15872);
        assert_eq!(l.root_cluster, 5);
        // 300 MiB: 32 KiB clusters, 9,536 of them, root at cluster 4.
        let l = layout(300 << 20, 512, &FormatOptions::default()).unwrap();
        assert_eq!(
            (l.cluster_size, l.cluster_count, l.root_cluster),
            (32768, 9536, 4)
        );
    }
}
