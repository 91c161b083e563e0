//! The boot sector (BIOS parameter block): volume geometry, checked before use.

use std::fmt;

/// FAT12, FAT16 or FAT32, decided by the cluster count as the specification says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FatType {
    /// Up to 4084 clusters, 12-bit entries.
    Fat12,
    /// Up to 65524 clusters, 16-bit entries.
    Fat16,
    /// More clusters, 28-bit entries in 32-bit slots.
    Fat32,
}

impl fmt::Display for FatType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            FatType::Fat12 => "FAT12",
            FatType::Fat16 => "FAT16",
            FatType::Fat32 => "FAT32",
        })
    }
}

/// Everything the driver needs from the boot sector, in bytes and clusters.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Geometry {
    /// FAT variant.
    pub fat_type: FatType,
    /// Bytes per logical sector.
    pub sector_size: u32,
    /// Bytes per cluster.
    pub cluster_size: u32,
    /// Byte offset of the first FAT.
    pub fat_offset: u64,
    /// Bytes in one FAT copy.
    pub fat_bytes: u64,
    /// Number of FAT copies.
    pub fat_count: u32,
    /// FAT12/16: byte offset and entry count of the fixed root directory.
    pub root_offset: u64,
    /// FAT12/16: number of 32-byte slots in the fixed root directory.
    pub root_entries: u32,
    /// FAT32: first cluster of the root directory.
    pub root_cluster: u32,
    /// Byte offset of cluster 2.
    pub data_offset: u64,
    /// Number of data clusters (valid cluster numbers are 2 ..= count + 1).
    pub cluster_count: u32,
    /// FAT32: byte offset of the FSInfo sector, if present.
    pub fsinfo_offset: Option<u64>,
    /// Volume label from the boot sector (trimmed; may be empty).
    pub label: String,
    /// Volume serial number.
    pub volume_id: u32,
    /// Media descriptor byte.
    pub media: u8,
    /// Total volume size in bytes as the boot sector states it.
    pub volume_bytes: u64,
}

impl Geometry {
    /// Byte offset of data cluster `cluster` (>= 2).
    pub fn cluster_offset(&self, cluster: u32) -> u64 {
        self.data_offset + (cluster as u64 - 2) * self.cluster_size as u64
    }

    /// True for a number that names a data cluster of this volume.
    pub fn is_valid_cluster(&self, cluster: u32) -> bool {
        cluster >= 2 && cluster <= self.cluster_count + 1
    }

    /// The marker that ends a cluster chain.
    pub fn end_of_chain(&self) -> u32 {
        match self.fat_type {
            FatType::Fat12 => 0xFFF,
            FatType::Fat16 => 0xFFFF,
            FatType::Fat32 => 0x0FFF_FFFF,
        }
    }
}

fn le16(b: &[u8], at: usize) -> u32 {
    u16::from_le_bytes([b[at], b[at + 1]]) as u32
}

fn le32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn label_at(b: &[u8], at: usize) -> String {
    let raw = &b[at..at + 11];
    let text: String = raw
        .iter()
        .map(|&c| {
            if c.is_ascii_graphic() || c == b' ' {
                c as char
            } else {
                '_'
            }
        })
        .collect();
    let text = text.trim_end().to_string();
    if text == "NO NAME" {
        String::new()
    } else {
        text
    }
}

/// Parses and validates a boot sector against a device of `device_bytes`.
/// The message says exactly what is wrong, for the mount error.
pub fn parse(sector: &[u8], device_bytes: u64) -> Result<Geometry, String> {
    check_boot_signature(sector)?;
    let bpb = Bpb::read(sector)?;
    let mut geometry = bpb.layout(device_bytes)?;
    match geometry.fat_type {
        FatType::Fat32 => bpb.read_fat32_extras(sector, &mut geometry)?,
        _ => bpb.read_fat16_extras(sector, &mut geometry)?,
    }
    Ok(geometry)
}

/// A boot sector starts with a jump instruction and ends with 0x55AA.
fn check_boot_signature(sector: &[u8]) -> Result<(), String> {
    if sector.len() < 512 {
        return Err("device is smaller than one sector".into());
    }
    if !matches!(sector[0], 0xEB | 0xE9) {
        return Err(format!(
            "no FAT boot sector (first byte {:#04x} is not a jump instruction)",
            sector[0]
        ));
    }
    if sector[510..512] != [0x55, 0xAA] {
        return Err("no FAT boot sector (missing 0x55AA signature)".into());
    }
    Ok(())
}

/// The BIOS parameter block fields the geometry comes from, each checked on its own.
struct Bpb {
    sector_size: u32,
    per_cluster: u32,
    reserved: u32,
    fat_count: u32,
    root_entries: u32,
    media: u8,
    fat_size16: u32,
    total_sectors: u64,
    fat_sectors: u64,
}

impl Bpb {
    fn read(sector: &[u8]) -> Result<Bpb, String> {
        let sector_size = le16(sector, 11);
        if !matches!(sector_size, 512 | 1024 | 2048 | 4096) {
            return Err(format!(
                "bytes per sector is {sector_size}; must be 512, 1024, 2048 or 4096"
            ));
        }
        let per_cluster = sector[13] as u32;
        if per_cluster == 0 || !per_cluster.is_power_of_two() {
            return Err(format!(
                "sectors per cluster is {per_cluster}; must be a power of two"
            ));
        }
        let cluster_size = per_cluster * sector_size;
        if cluster_size > 256 * 1024 {
            return Err(format!(
                "cluster size {cluster_size} is larger than 256 KiB"
            ));
        }
        let reserved = le16(sector, 14);
        if reserved == 0 {
            return Err("reserved sector count is 0".into());
        }
        let fat_count = sector[16] as u32;
        if fat_count == 0 || fat_count > 4 {
            return Err(format!("number of FATs is {fat_count}"));
        }
        let total16 = le16(sector, 19);
        let fat_size16 = le16(sector, 22);
        let total_sectors = if total16 != 0 {
            total16 as u64
        } else {
            le32(sector, 32) as u64
        };
        let fat_sectors = if fat_size16 != 0 {
            fat_size16 as u64
        } else {
            le32(sector, 36) as u64
        };
        if total_sectors == 0 || fat_sectors == 0 {
            return Err("total sector count or FAT size is 0".into());
        }
        Ok(Bpb {
            sector_size,
            per_cluster,
            reserved,
            fat_count,
            root_entries: le16(sector, 17),
            media: sector[21],
            fat_size16,
            total_sectors,
            fat_sectors,
        })
    }

    /// Where the FATs, the root directory and the data lie, the FAT type, and whether the
    /// device holds the volume and the FATs can map its clusters.
    fn layout(&self, device_bytes: u64) -> Result<Geometry, String> {
        let ss = self.sector_size as u64;
        let root_sectors = (self.root_entries as u64 * 32).div_ceil(ss);
        let fats_end = self.reserved as u64 + self.fat_count as u64 * self.fat_sectors;
        let data_start = fats_end + root_sectors;
        if data_start >= self.total_sectors {
            return Err("the FATs and root directory fill the whole volume".into());
        }
        let clusters = (self.total_sectors - data_start) / self.per_cluster as u64;
        let fat_type = self.fat_type(clusters);
        if clusters > 0x0FFF_FFF5 {
            return Err(format!(
                "{clusters} clusters is more than FAT32 can address"
            ));
        }
        let volume_bytes = self.total_sectors * ss;
        if volume_bytes > device_bytes {
            return Err(format!(
                "the boot sector describes {volume_bytes} bytes but the device has only {device_bytes} (truncated image?)"
            ));
        }
        let bits = match fat_type {
            FatType::Fat12 => 12,
            FatType::Fat16 => 16,
            FatType::Fat32 => 32,
        };
        let fat_bytes = self.fat_sectors * ss;
        if fat_bytes * 8 / bits < clusters + 2 {
            return Err(format!(
                "a FAT of {fat_bytes} bytes cannot map {clusters} clusters"
            ));
        }
        Ok(Geometry {
            fat_type,
            sector_size: self.sector_size,
            cluster_size: self.per_cluster * self.sector_size,
            fat_offset: self.reserved as u64 * ss,
            fat_bytes,
            fat_count: self.fat_count,
            root_offset: fats_end * ss,
            root_entries: self.root_entries,
            root_cluster: 0,
            data_offset: data_start * ss,
            cluster_count: clusters as u32,
            fsinfo_offset: None,
            label: String::new(),
            volume_id: 0,
            media: self.media,
            volume_bytes,
        })
    }

    /// As Linux and mtools decide: a zero 16-bit FAT size means FAT32 (mkfs.fat -F 32 makes
    /// small FAT32 volumes below the spec's 65,525 clusters); otherwise the cluster count
    /// chooses between FAT12 and FAT16.
    fn fat_type(&self, clusters: u64) -> FatType {
        if self.fat_size16 == 0 {
            FatType::Fat32
        } else if clusters < 4085 {
            FatType::Fat12
        } else {
            FatType::Fat16
        }
    }

    /// FAT32's extended BPB: the root directory's cluster, FSInfo, volume id and label.
    fn read_fat32_extras(&self, sector: &[u8], geometry: &mut Geometry) -> Result<(), String> {
        if self.fat_size16 != 0 || self.root_entries != 0 {
            return Err("FAT32 volume with a FAT12/16 root directory or FAT size".into());
        }
        let root = le32(sector, 44);
        if !geometry.is_valid_cluster(root) {
            return Err(format!(
                "root directory cluster {root} is outside the volume"
            ));
        }
        geometry.root_cluster = root;
        let fsinfo = le16(sector, 48);
        if fsinfo != 0 && fsinfo != 0xFFFF && fsinfo < self.reserved {
            geometry.fsinfo_offset = Some(fsinfo as u64 * self.sector_size as u64);
        }
        if sector[66] == 0x29 {
            geometry.volume_id = le32(sector, 67);
            geometry.label = label_at(sector, 71);
        }
        Ok(())
    }

    /// FAT12/16's: a fixed root directory must have entries; volume id and label.
    fn read_fat16_extras(&self, sector: &[u8], geometry: &mut Geometry) -> Result<(), String> {
        if self.root_entries == 0 {
            return Err(format!(
                "{} volume without root directory entries",
                geometry.fat_type
            ));
        }
        if sector[38] == 0x29 {
            geometry.volume_id = le32(sector, 39);
            geometry.label = label_at(sector, 43);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fat16_sector() -> Vec<u8> {
        let mut s = vec![0u8; 512];
        s[0] = 0xEB;
        s[11..13].copy_from_slice(&512u16.to_le_bytes());
        s[13] = 4;
        s[14..16].copy_from_slice(&4u16.to_le_bytes());
        s[16] = 2;
        s[17..19].copy_from_slice(&512u16.to_le_bytes());
        s[19..21].copy_from_slice(&40960u16.to_le_bytes());
        s[21] = 0xF8;
        s[22..24].copy_from_slice(&40u16.to_le_bytes());
        s[38] = 0x29;
        s[43..54].copy_from_slice(b"MYDISK     ");
        s[510] = 0x55;
        s[511] = 0xAA;
        s
    }

    #[test]
    fn parses_a_fat16_boot_sector() {
        let g = parse(&fat16_sector(), 40960 * 512).unwrap();
        assert_eq!(g.fat_type, FatType::Fat16, "10211 clusters");
        assert_eq!(g.cluster_count, 10211);
        assert_eq!(g.cluster_size, 2048);
        assert_eq!(g.label, "MYDISK");
        assert_eq!(g.fat_offset, 4 * 512);
        assert_eq!(g.root_offset, (4 + 80) * 512);
        assert_eq!(g.data_offset, (4 + 80 + 32) * 512);
    }

    #[test]
    fn a_zero_16_bit_fat_size_means_fat32_even_with_few_clusters() {
        // What mkfs.fat -F 32 writes for a 32 MiB volume (~16k clusters).
        let mut s = vec![0u8; 512];
        s[0] = 0xEB;
        s[11..13].copy_from_slice(&512u16.to_le_bytes());
        s[13] = 4;
        s[14..16].copy_from_slice(&32u16.to_le_bytes());
        s[16] = 2;
        s[21] = 0xF8;
        s[32..36].copy_from_slice(&65536u32.to_le_bytes());
        s[36..40].copy_from_slice(&128u32.to_le_bytes());
        s[44..48].copy_from_slice(&2u32.to_le_bytes());
        s[48..50].copy_from_slice(&1u16.to_le_bytes());
        s[510] = 0x55;
        s[511] = 0xAA;
        let g = parse(&s, 32 << 20).unwrap();
        assert_eq!(g.fat_type, FatType::Fat32);
        assert!(g.cluster_count < 65525);
        assert_eq!(g.root_cluster, 2);
        assert_eq!(g.fsinfo_offset, Some(512));
    }

    #[test]
    fn refuses_bad_fields_with_messages() {
        let good = fat16_sector();
        assert!(parse(&good, 1024).unwrap_err().contains("truncated"));
        let mut bad = good.clone();
        bad[0] = 0;
        assert!(parse(&bad, 1 << 30).unwrap_err().contains("jump"));
        let mut bad = good.clone();
        bad[13] = 3;
        assert!(parse(&bad, 1 << 30).unwrap_err().contains("power of two"));
        let mut bad = good.clone();
        bad[11..13].copy_from_slice(&100u16.to_le_bytes());
        assert!(parse(&bad, 1 << 30).is_err());
        let mut bad = good.clone();
        bad[16] = 0;
        assert!(parse(&bad, 1 << 30).is_err());
        let mut bad = good;
        bad[22..24].copy_from_slice(&1u16.to_le_bytes());
        assert!(parse(&bad, 1 << 30).unwrap_err().contains("cannot map"));
    }
}
