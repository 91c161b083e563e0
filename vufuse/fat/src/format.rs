//! Writing a new FAT12/16/32 volume (what `mkfs.fat` does), in process.
//!
//! Written here rather than with `fatfs::format_volume`: fatfs 0.3.6 leaves
//! the FAT32 free-cluster summary uninitialised, which fsck.fat reports
//! (ANCHORS.md A.2). Defaults follow mkfs.fat 4.2: FAT32 from 512 MiB up with
//! Microsoft's cluster-size table, below that FAT12 or FAT16 starting at
//! 2 KiB clusters; two FATs, 512 root entries, media 0xF8, the data area
//! aligned to the cluster size, FSInfo and a backup boot sector on FAT32.

use super::bpb::FatType;
use super::dirent::{ShortEntry, SLOT};
use std::time::SystemTime;
use vudev::{BlockDevice, Errno};

/// Attribute bit of the volume-label entry in the root directory.
const ATTR_VOLUME_ID: u8 = 0x08;
const SECTOR: u64 = 512;
const RESERVED_FAT32: u64 = 32;
const ROOT_ENTRIES: u64 = 512;
const MAX_FAT12: u64 = 4084;
const MAX_FAT16: u64 = 65524;
const MAX_FAT32: u64 = 0x0FFF_FFF5;

/// What to format with; `None` fields take mkfs.fat's choice for the size.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FormatOptions {
    /// FAT variant; by default chosen from the size.
    pub fat_type: Option<FatType>,
    /// Bytes per cluster (a power of two, 512 to 64 KiB).
    pub cluster_size: Option<u32>,
    /// Volume label (up to 11 characters, stored upper case).
    pub label: Option<String>,
    /// Volume serial number (fix it for reproducible images).
    pub volume_id: u32,
    /// Sectors before the volume on its disk (the partition's start), for the BPB.
    pub hidden_sectors: u32,
    /// Timestamp of the volume-label entry.
    pub time: Option<SystemTime>,
}

/// The layout a format produced.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Layout {
    /// FAT variant written.
    pub fat_type: FatType,
    /// Bytes per cluster.
    pub cluster_size: u32,
    /// Data clusters.
    pub clusters: u32,
    /// Sectors in one FAT.
    pub fat_sectors: u32,
    /// Reserved sectors before the first FAT.
    pub reserved_sectors: u32,
}

/// Why a volume cannot be formatted as asked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FormatError {
    /// The errno a caller reports.
    pub errno: Errno,
    /// What is wrong, for the user.
    pub message: String,
}

impl std::fmt::Display for FormatError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for FormatError {}

fn invalid(message: String) -> FormatError {
    FormatError {
        errno: Errno::EINVAL,
        message,
    }
}

fn io(e: Errno) -> FormatError {
    FormatError {
        errno: e,
        message: format!("cannot write the volume: {e}"),
    }
}

fn bits(t: FatType) -> u64 {
    match t {
        FatType::Fat12 => 12,
        FatType::Fat16 => 16,
        FatType::Fat32 => 32,
    }
}

fn cluster_range(t: FatType) -> (u64, u64) {
    match t {
        FatType::Fat12 => (1, MAX_FAT12),
        FatType::Fat16 => (MAX_FAT12 + 1, MAX_FAT16),
        FatType::Fat32 => (MAX_FAT16 + 1, MAX_FAT32),
    }
}

/// Sizes the areas of a volume of `total` sectors with `spc` sectors per
/// cluster: (reserved, sectors per FAT, clusters). The reserved area grows so
/// that the data area starts on a cluster boundary, as mkfs.fat aligns it.
fn plan(total: u64, t: FatType, spc: u64) -> Option<(u64, u64, u64)> {
    let root = if t == FatType::Fat32 {
        0
    } else {
        ROOT_ENTRIES * SLOT as u64 / SECTOR
    };
    let base_reserved = if t == FatType::Fat32 {
        RESERVED_FAT32
    } else {
        1
    };
    let mut fat = 1u64;
    loop {
        let mut reserved = base_reserved;
        let meta = reserved + 2 * fat + root;
        reserved += (spc - meta % spc) % spc;
        let meta = reserved + 2 * fat + root;
        if meta >= total {
            return None;
        }
        let clusters = (total - meta) / spc;
        let need = ((clusters + 2) * bits(t)).div_ceil(8).div_ceil(SECTOR);
        if need <= fat {
            return Some((reserved, fat, clusters));
        }
        fat = need;
    }
}

/// mkfs.fat's FAT32 cluster size for a volume of `bytes` (Microsoft's table).
fn fat32_default_spc(bytes: u64) -> u64 {
    let mb = bytes >> 20;
    if mb > 32 * 1024 {
        64
    } else if mb > 16 * 1024 {
        32
    } else if mb > 8 * 1024 {
        16
    } else if mb > 260 {
        8
    } else {
        1
    }
}

/// Chooses type, sectors per cluster and the layout for `total` sectors.
fn choose(total: u64, opts: &FormatOptions) -> Result<(FatType, u64, u64, u64, u64), FormatError> {
    let spc_given = match opts.cluster_size {
        Some(bytes) => {
            if !bytes.is_power_of_two() || !(512..=65536).contains(&bytes) {
                return Err(invalid(format!(
                    "cluster size {bytes} is not a power of two from 512 to 65536 bytes"
                )));
            }
            Some(bytes as u64 / SECTOR)
        }
        None => None,
    };
    let bytes = total * SECTOR;
    let fits = |t: FatType, spc: u64| -> Option<(FatType, u64, u64, u64, u64)> {
        let (reserved, fat, clusters) = plan(total, t, spc)?;
        let (lo, hi) = cluster_range(t);
        (clusters >= lo && clusters <= hi).then_some((t, spc, reserved, fat, clusters))
    };
    let wanted = opts.fat_type.or(if bytes >= 512 << 20 {
        Some(FatType::Fat32)
    } else {
        None
    });
    let found = match (wanted, spc_given) {
        (Some(t), Some(spc)) => fits(t, spc),
        (Some(FatType::Fat32), None) => {
            let mut spc = fat32_default_spc(bytes);
            loop {
                if let Some(ok) = fits(FatType::Fat32, spc) {
                    break Some(ok);
                }
                // Too many clusters cannot happen below 64 KiB clusters for
                // sane sizes; too few means the volume is too small.
                if spc >= 128 || plan(total, FatType::Fat32, spc).map(|p| p.2) < Some(MAX_FAT16) {
                    break None;
                }
                spc *= 2;
            }
        }
        (Some(t), None) => {
            let mut spc = 4;
            loop {
                if let Some(ok) = fits(t, spc) {
                    break Some(ok);
                }
                let too_many = plan(total, t, spc).is_some_and(|p| p.2 > cluster_range(t).1);
                if !too_many || spc >= 128 {
                    break None;
                }
                spc *= 2;
            }
        }
        (None, Some(spc)) => fits(FatType::Fat12, spc).or_else(|| fits(FatType::Fat16, spc)),
        (None, None) => {
            let mut spc = 4;
            loop {
                if let Some(ok) = fits(FatType::Fat12, spc).or_else(|| fits(FatType::Fat16, spc)) {
                    break Some(ok);
                }
                if spc >= 128 {
                    break None;
                }
                spc *= 2;
            }
        }
    };
    found.ok_or_else(|| {
        let what = wanted.map_or("FAT".to_string(), |t| t.to_string());
        let cluster = spc_given.map_or(String::new(), |spc| {
            format!(" with {}-byte clusters", spc * SECTOR)
        });
        invalid(format!(
            "a {} volume cannot hold {what}{cluster}: the cluster count falls outside what {what} allows",
            human(bytes)
        ))
    })
}

fn human(bytes: u64) -> String {
    if bytes >= 1 << 20 && bytes % (1 << 20) == 0 {
        format!("{} MiB", bytes >> 20)
    } else if bytes >= 1 << 10 && bytes % (1 << 10) == 0 {
        format!("{} KiB", bytes >> 10)
    } else {
        format!("{bytes}-byte")
    }
}

/// The 11-byte label field: upper case, space padded; checked for FAT rules.
fn label_field(label: Option<&str>) -> Result<Option<[u8; 11]>, FormatError> {
    let Some(label) = label.filter(|l| !l.is_empty()) else {
        return Ok(None);
    };
    if label.len() > 11 || !label.is_ascii() {
        return Err(invalid(format!(
            "label {label:?} is not at most 11 ASCII characters"
        )));
    }
    if let Some(c) = label
        .chars()
        .find(|c| c.is_ascii_control() || "\"*+,./:;<=>?[\\]|".contains(*c))
    {
        return Err(invalid(format!(
            "label {label:?} has a character FAT forbids: {c:?}"
        )));
    }
    let mut field = [b' '; 11];
    for (slot, b) in field.iter_mut().zip(label.to_ascii_uppercase().bytes()) {
        *slot = b;
    }
    Ok(Some(field))
}

/// The layout [`format()`] would write on a volume of `bytes`, or why it cannot.
pub fn layout_for(bytes: u64, opts: &FormatOptions) -> Result<Layout, FormatError> {
    label_field(opts.label.as_deref())?;
    let (fat_type, spc, reserved, fat_sectors, clusters) = choose(bytes / SECTOR, opts)?;
    Ok(Layout {
        fat_type,
        cluster_size: (spc * SECTOR) as u32,
        clusters: clusters as u32,
        fat_sectors: fat_sectors as u32,
        reserved_sectors: reserved as u32,
    })
}

/// Formats all of `dev` as a FAT volume. Only the boot area, the FATs and the
/// root directory are written; data clusters are left as they are.
pub fn format(dev: &dyn BlockDevice, opts: &FormatOptions) -> Result<Layout, FormatError> {
    if dev.read_only() {
        return Err(FormatError {
            errno: Errno::EROFS,
            message: "the device is read-only".into(),
        });
    }
    let total = dev.size() / SECTOR;
    if total > u32::MAX as u64 {
        return Err(invalid("volume larger than 2 TiB".into()));
    }
    let label = label_field(opts.label.as_deref())?;
    let (fat_type, spc, reserved, fat_sectors, clusters) = choose(total, opts)?;
    let plan = Plan {
        fat_type,
        total,
        spc,
        reserved,
        fat_sectors,
        clusters,
    };
    let boot = boot_sector(&plan, opts, label);
    dev.write_all_at(&reserved_area(&plan, &boot), 0)
        .map_err(io)?;
    write_fats(dev, &plan)?;
    write_root_directory(dev, &plan, opts, label)?;
    dev.flush().map_err(io)?;
    Ok(Layout {
        fat_type,
        cluster_size: (spc * SECTOR) as u32,
        clusters: clusters as u32,
        fat_sectors: fat_sectors as u32,
        reserved_sectors: reserved as u32,
    })
}

/// What [`choose`] decided, in sectors (`spc`: sectors per cluster).
struct Plan {
    fat_type: FatType,
    total: u64,
    spc: u64,
    reserved: u64,
    fat_sectors: u64,
    clusters: u64,
}

impl Plan {
    fn fat32(&self) -> bool {
        self.fat_type == FatType::Fat32
    }
}

/// The boot sector: the BPB of `plan`, the extended BPB with id and label, halting code.
fn boot_sector(plan: &Plan, opts: &FormatOptions, label: Option<[u8; 11]>) -> [u8; 512] {
    let fat32 = plan.fat32();
    let mut boot = [0u8; 512];
    boot[0..3].copy_from_slice(if fat32 {
        &[0xEB, 0x58, 0x90]
    } else {
        &[0xEB, 0x3C, 0x90]
    });
    boot[3..11].copy_from_slice(b"vuimg   ");
    boot[11..13].copy_from_slice(&(SECTOR as u16).to_le_bytes());
    boot[13] = plan.spc as u8;
    boot[14..16].copy_from_slice(&(plan.reserved as u16).to_le_bytes());
    boot[16] = 2;
    let root_entries = if fat32 { 0 } else { ROOT_ENTRIES as u16 };
    boot[17..19].copy_from_slice(&root_entries.to_le_bytes());
    if plan.total < 65536 && !fat32 {
        boot[19..21].copy_from_slice(&(plan.total as u16).to_le_bytes());
    } else {
        boot[32..36].copy_from_slice(&(plan.total as u32).to_le_bytes());
    }
    boot[21] = 0xF8;
    if !fat32 {
        boot[22..24].copy_from_slice(&(plan.fat_sectors as u16).to_le_bytes());
    }
    boot[24..26].copy_from_slice(&63u16.to_le_bytes());
    boot[26..28].copy_from_slice(&255u16.to_le_bytes());
    boot[28..32].copy_from_slice(&opts.hidden_sectors.to_le_bytes());
    let ebpb = if fat32 {
        boot[36..40].copy_from_slice(&(plan.fat_sectors as u32).to_le_bytes());
        boot[44..48].copy_from_slice(&2u32.to_le_bytes()); // root cluster
        boot[48..50].copy_from_slice(&1u16.to_le_bytes()); // FSInfo sector
        boot[50..52].copy_from_slice(&6u16.to_le_bytes()); // backup boot sector
        64
    } else {
        36
    };
    boot[ebpb] = 0x80;
    boot[ebpb + 2] = 0x29;
    boot[ebpb + 3..ebpb + 7].copy_from_slice(&opts.volume_id.to_le_bytes());
    boot[ebpb + 7..ebpb + 18].copy_from_slice(&label.unwrap_or(*b"NO NAME    "));
    boot[ebpb + 18..ebpb + 26].copy_from_slice(match plan.fat_type {
        FatType::Fat12 => b"FAT12   ",
        FatType::Fat16 => b"FAT16   ",
        FatType::Fat32 => b"FAT32   ",
    });
    // Boot code: halt forever (this volume is not bootable by itself).
    let code = ebpb + 26;
    boot[code..code + 3].copy_from_slice(&[0xF4, 0xEB, 0xFD]);
    boot[510] = 0x55;
    boot[511] = 0xAA;
    boot
}

/// The reserved area: the boot sector, FAT32's FSInfo and their backups; zeros elsewhere.
fn reserved_area(plan: &Plan, boot: &[u8; 512]) -> Vec<u8> {
    let mut area = vec![0u8; (plan.reserved * SECTOR) as usize];
    area[..512].copy_from_slice(boot);
    if plan.fat32() {
        let mut info = [0u8; 512];
        info[0..4].copy_from_slice(&0x4161_5252u32.to_le_bytes());
        info[484..488].copy_from_slice(&0x6141_7272u32.to_le_bytes());
        info[488..492].copy_from_slice(&(plan.clusters as u32 - 1).to_le_bytes());
        info[492..496].copy_from_slice(&3u32.to_le_bytes());
        info[508..512].copy_from_slice(&0xAA55_0000u32.to_le_bytes());
        area[512..1024].copy_from_slice(&info);
        area[6 * 512..7 * 512].copy_from_slice(boot);
        area[7 * 512..8 * 512].copy_from_slice(&info);
    }
    area
}

/// Both FATs: zeroed, then entries 0 and 1 (media, end-of-chain with clean bits) and the
/// FAT32 root directory's single cluster.
fn write_fats(dev: &dyn BlockDevice, plan: &Plan) -> Result<(), FormatError> {
    let mut head = vec![0u8; 12];
    match plan.fat_type {
        FatType::Fat12 => head[..3].copy_from_slice(&[0xF8, 0xFF, 0xFF]),
        FatType::Fat16 => head[..4].copy_from_slice(&[0xF8, 0xFF, 0xFF, 0xFF]),
        FatType::Fat32 => {
            head[0..4].copy_from_slice(&0x0FFF_FFF8u32.to_le_bytes());
            head[4..8].copy_from_slice(&0x0FFF_FFFFu32.to_le_bytes());
            head[8..12].copy_from_slice(&0x0FFF_FFFFu32.to_le_bytes());
        }
    }
    let fat_bytes = plan.fat_sectors * SECTOR;
    for copy in 0..2 {
        let start = (plan.reserved + copy * plan.fat_sectors) * SECTOR;
        write_zeros(dev, start, fat_bytes)?;
        dev.write_all_at(&head, start).map_err(io)?;
    }
    Ok(())
}

/// The root directory: zeroed, with the label entry first.
fn write_root_directory(
    dev: &dyn BlockDevice,
    plan: &Plan,
    opts: &FormatOptions,
    label: Option<[u8; 11]>,
) -> Result<(), FormatError> {
    let root_start = (plan.reserved + 2 * plan.fat_sectors) * SECTOR;
    let root_bytes = if plan.fat32() {
        plan.spc * SECTOR
    } else {
        ROOT_ENTRIES * SLOT as u64
    };
    write_zeros(dev, root_start, root_bytes)?;
    if let Some(name) = label {
        let t = opts.time.unwrap_or_else(SystemTime::now);
        let entry = ShortEntry {
            name,
            attr: ATTR_VOLUME_ID,
            case: 0,
            created: t,
            accessed: t,
            modified: t,
            cluster: 0,
            size: 0,
        };
        let mut slot = entry.encode();
        // A label entry keeps only its write time.
        slot[13..20].fill(0);
        dev.write_all_at(&slot, root_start).map_err(io)?;
    }
    Ok(())
}

fn write_zeros(dev: &dyn BlockDevice, mut offset: u64, mut len: u64) -> Result<(), FormatError> {
    let zeros = vec![0u8; 1 << 20];
    while len > 0 {
        let n = len.min(zeros.len() as u64) as usize;
        dev.write_all_at(&zeros[..n], offset).map_err(io)?;
        offset += n as u64;
        len -= n as u64;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_follow_mkfs_fat() {
        let pick = |mib: u64| {
            let (t, spc, ..) = choose(mib * 2048, &FormatOptions::default()).unwrap();
            (t, spc)
        };
        assert_eq!(pick(2), (FatType::Fat12, 4));
        assert_eq!(pick(16), (FatType::Fat16, 4));
        assert_eq!(pick(200), (FatType::Fat16, 8));
        assert_eq!(pick(300), (FatType::Fat16, 16));
        assert_eq!(pick(600), (FatType::Fat32, 8));
    }

    #[test]
    fn the_driver_mounts_every_type_with_the_free_count_written() {
        use crate::{FatFs, FatOptions};
        use std::sync::Arc;
        use vufuse_api::fs::{Context, FileSystem};
        for (mib, t) in [
            (4, FatType::Fat12),
            (32, FatType::Fat16),
            (64, FatType::Fat32),
        ] {
            let dev: Arc<dyn BlockDevice> = Arc::new(vudev::Ramdisk::new(mib << 20).unwrap());
            let opts = FormatOptions {
                fat_type: Some(t),
                label: Some("Test".into()),
                volume_id: 0x1234_5678,
                ..Default::default()
            };
            let layout = format(dev.as_ref(), &opts).unwrap();
            assert_eq!(layout.fat_type, t);
            let fs = FatFs::open(dev, FatOptions::default()).unwrap();
            assert_eq!(fs.label(), "TEST");
            assert_eq!(fs.geometry().volume_id, 0x1234_5678);
            let st = fs.statfs(&Context::current()).unwrap();
            let root_clusters = u64::from(t == FatType::Fat32);
            assert_eq!(st.blocks_free, layout.clusters as u64 - root_clusters);
        }
    }

    #[test]
    fn impossible_requests_are_refused() {
        let opts = FormatOptions {
            fat_type: Some(FatType::Fat32),
            ..Default::default()
        };
        assert!(choose(8 * 2048, &opts).is_err());
        let opts = FormatOptions {
            cluster_size: Some(3000),
            ..Default::default()
        };
        assert!(choose(8 * 2048, &opts).is_err());
    }
}
