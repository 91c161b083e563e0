//! The boot region: the main boot sector (geometry), eight extended boot sectors, the OEM
//! parameters, a reserved sector and a checksum sector holding a 32-bit checksum of the
//! eleven before it, repeated. A backup copy of all twelve follows at sector 12.
//!
//! The checksum skips VolumeFlags and PercentInUse (bytes 106, 107, 112), so the driver can
//! set and clear the VolumeDirty flag without rewriting it. A main region whose checksum
//! does not match is refused (the backup is not used silently: fsck.exfat restores it).

use vudev::{BlockDevice, Errno};
use vufuse_api::MountError;

/// Byte offset of VolumeFlags in the boot sector.
pub const FLAGS_OFFSET: u64 = 106;
/// Byte offset of PercentInUse in the boot sector.
pub const PERCENT_OFFSET: u64 = 112;
/// VolumeFlags bit: the volume may be inconsistent (set while mounted read-write).
pub const VOLUME_DIRTY: u16 = 0x0002;
/// VolumeFlags bit: the second FAT and bitmap are the active ones (TexFAT).
pub const ACTIVE_FAT: u16 = 0x0001;
/// Sectors in one copy of the boot region.
pub const REGION_SECTORS: u64 = 12;
/// Largest cluster the specification allows (32 MiB).
pub const MAX_CLUSTER_SHIFT: u32 = 25;
/// Largest cluster count the specification allows.
pub const MAX_CLUSTERS: u32 = 0xFFFF_FFF5;

/// What the boot sector says about the layout, in bytes where the disk says sectors.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Geometry {
    /// Bytes per sector (512 to 4096).
    pub sector_size: u32,
    /// log2 of the bytes per cluster.
    pub cluster_shift: u32,
    /// Bytes per cluster (512 B to 32 MiB).
    pub cluster_size: u32,
    /// Bytes of the volume.
    pub volume_bytes: u64,
    /// Offset of the (active) FAT.
    pub fat_offset: u64,
    /// Bytes of one FAT.
    pub fat_bytes: u64,
    /// Offset of cluster 2.
    pub heap_offset: u64,
    /// Clusters in the heap (numbered 2 to `cluster_count + 1`).
    pub cluster_count: u32,
    /// First cluster of the root directory.
    pub root_cluster: u32,
    /// Volume serial number.
    pub serial: u32,
    /// VolumeFlags as found at mount.
    pub flags: u16,
}

impl Geometry {
    /// Device offset of cluster `cluster` (which must be valid).
    pub fn cluster_offset(&self, cluster: u32) -> u64 {
        self.heap_offset + ((cluster as u64 - 2) << self.cluster_shift)
    }

    /// True for the numbers of heap clusters.
    pub fn is_valid_cluster(&self, cluster: u32) -> bool {
        cluster >= 2 && (cluster as u64) < self.cluster_count as u64 + 2
    }

    /// True if `count` clusters from `first` are all heap clusters.
    pub fn is_valid_run(&self, first: u32, count: u64) -> bool {
        count == 0
            || (self.is_valid_cluster(first)
                && first as u64 + count <= self.cluster_count as u64 + 2)
    }
}

/// Accumulates the boot region checksum over one sector (the first skips bytes 106, 107, 112).
pub fn checksum_sector(sum: u32, sector: &[u8], first: bool) -> u32 {
    sector.iter().enumerate().fold(sum, |sum, (i, &b)| {
        if first && (i == 106 || i == 107 || i == 112) {
            sum
        } else {
            sum.rotate_right(1).wrapping_add(b as u32)
        }
    })
}

/// The checksum of the first eleven sectors of a boot region.
pub fn region_checksum(region: &[u8], sector_size: usize) -> u32 {
    region[..11 * sector_size]
        .chunks(sector_size)
        .enumerate()
        .fold(0, |sum, (i, s)| checksum_sector(sum, s, i == 0))
}

fn refuse(message: String) -> MountError {
    MountError::volume(Errno::EINVAL, message)
}

/// True if the first bytes name an exFAT file system.
pub fn has_signature(sector: &[u8]) -> bool {
    sector.len() >= 11 && &sector[3..11] == b"EXFAT   "
}

/// Reads and checks the main boot region of `dev`.
pub fn read(dev: &dyn BlockDevice) -> Result<Geometry, MountError> {
    let mut first = [0u8; 512];
    if dev.size() < 512 {
        return Err(refuse("device is smaller than one sector".into()));
    }
    dev.read_exact_at(&mut first, 0)
        .map_err(|e| MountError::volume(e, format!("cannot read the boot sector: {e}")))?;
    if !has_signature(&first) {
        return Err(refuse(
            "not an exFAT volume (no \"EXFAT   \" signature)".into(),
        ));
    }
    let shift = first[108] as u32;
    if !(9..=12).contains(&shift) {
        return Err(refuse(format!(
            "boot sector: BytesPerSectorShift {shift} is outside 9..12"
        )));
    }
    let sector = 1usize << shift;
    let mut region = vec![0u8; sector * REGION_SECTORS as usize];
    if dev.size() < region.len() as u64 {
        return Err(refuse(
            "truncated image: the boot region does not fit on the device".into(),
        ));
    }
    dev.read_exact_at(&mut region, 0)
        .map_err(|e| MountError::volume(e, format!("cannot read the boot region: {e}")))?;
    let sum = region_checksum(&region, sector);
    let stored = &region[11 * sector..];
    if stored
        .chunks_exact(4)
        .any(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]) != sum)
    {
        return Err(refuse(format!(
            "bad boot region checksum (sector 11 does not hold {sum:#010x}); \
             fsck.exfat can restore the backup boot region"
        )));
    }
    parse(&region[..sector], dev.size()).map_err(refuse)
}

fn le32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

fn le64(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

/// Checks the fields of a boot sector against each other and the device size.
pub fn parse(b: &[u8], dev_size: u64) -> Result<Geometry, String> {
    if b[11..64].iter().any(|&x| x != 0) {
        return Err("boot sector: MustBeZero (bytes 11-63) is not zero".into());
    }
    if b[510..512] != [0x55, 0xAA] {
        return Err("boot sector: no 0xAA55 boot signature".into());
    }
    if b[105] != 1 {
        return Err(format!(
            "boot sector: file system revision {}.{} is not 1.x",
            b[105], b[104]
        ));
    }
    let sector_shift = b[108] as u32;
    let cluster_shift = sector_shift + b[109] as u32;
    if cluster_shift > MAX_CLUSTER_SHIFT {
        return Err(format!(
            "boot sector: cluster size 2^{cluster_shift} exceeds 32 MiB"
        ));
    }
    let fats = b[110];
    if fats != 1 && fats != 2 {
        return Err(format!("boot sector: NumberOfFats {fats} is not 1 or 2"));
    }
    let sector = 1u64 << sector_shift;
    let volume_sectors = le64(b, 72);
    let fat_offset = le32(b, 80) as u64;
    let fat_length = le32(b, 84) as u64;
    let heap_offset = le32(b, 88) as u64;
    let cluster_count = le32(b, 92);
    let root_cluster = le32(b, 96);
    let flags = u16::from_le_bytes([b[106], b[107]]);
    if fat_offset < 24 || fat_length == 0 {
        return Err("boot sector: FatOffset or FatLength is invalid".into());
    }
    if heap_offset < fat_offset + fat_length * fats as u64 {
        return Err("boot sector: the cluster heap overlaps the FAT".into());
    }
    let spc_shift = cluster_shift - sector_shift;
    if cluster_count == 0
        || cluster_count > MAX_CLUSTERS
        || (heap_offset + ((cluster_count as u64) << spc_shift)) > volume_sectors
    {
        return Err(format!(
            "boot sector: ClusterCount {cluster_count} does not fit in the volume"
        ));
    }
    if fat_length * sector < (cluster_count as u64 + 2) * 4 {
        return Err("boot sector: the FAT is too short for the cluster count".into());
    }
    let geo = Geometry {
        sector_size: sector as u32,
        cluster_shift,
        cluster_size: 1 << cluster_shift,
        volume_bytes: volume_sectors.saturating_mul(sector),
        fat_offset: (fat_offset
            + if flags & ACTIVE_FAT != 0 && fats == 2 {
                fat_length
            } else {
                0
            })
            * sector,
        fat_bytes: fat_length * sector,
        heap_offset: heap_offset * sector,
        cluster_count,
        root_cluster,
        serial: le32(b, 100),
        flags,
    };
    if !geo.is_valid_cluster(root_cluster) {
        return Err(format!(
            "boot sector: FirstClusterOfRootDirectory {root_cluster} is outside the heap"
        ));
    }
    let heap_end = geo.cluster_offset(cluster_count + 1) + geo.cluster_size as u64;
    if heap_end > dev_size {
        return Err(format!(
            "truncated image: the cluster heap ends at byte {heap_end} but the device has {dev_size}"
        ));
    }
    Ok(geo)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_checksum_skips_the_flags_and_percent_bytes() {
        let mut region = vec![0u8; 512 * 12];
        region[0] = 0xEB;
        let a = region_checksum(&region, 512);
        region[106] = 2;
        region[112] = 50;
        assert_eq!(region_checksum(&region, 512), a);
        region[105] = 1;
        assert_ne!(region_checksum(&region, 512), a);
    }
}
