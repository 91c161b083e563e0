//! Formatting a partition or a whole image: FAT in process (vufuse's
//! formatter), ext2/ext4 by running `mke2fs` on the byte range (libext2fs's
//! own mkfs; the ext driver formats nothing itself).

use crate::fail;
use crate::util::{parse_bytes, Outcome};
use std::path::Path;
use std::process::Command;
use vudev::BlockDevice;
use vufuse_fat::bpb::FatType;
use vufuse_fat::format::{self as fatfmt, FormatOptions, Layout};

/// A filesystem type to create.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FsType {
    /// FAT, variant chosen by size.
    Fat,
    /// FAT12.
    Fat12,
    /// FAT16.
    Fat16,
    /// FAT32.
    Fat32,
    /// exFAT.
    ExFat,
    /// ext2.
    Ext2,
    /// ext4.
    Ext4,
}

impl FsType {
    /// Parses `fat`, `fat12`, `fat16`, `fat32`, `vfat`, `ext2`, `ext4`.
    pub fn parse(text: &str) -> Outcome<FsType> {
        Ok(match text.to_ascii_lowercase().as_str() {
            "fat" | "vfat" => FsType::Fat,
            "fat12" => FsType::Fat12,
            "fat16" => FsType::Fat16,
            "fat32" => FsType::Fat32,
            "exfat" => FsType::ExFat,
            "ext2" => FsType::Ext2,
            "ext4" => FsType::Ext4,
            _ => {
                return Err(fail!(
                    "unknown filesystem {text:?} (fat, fat12, fat16, fat32, exfat, ext2, ext4)"
                ))
            }
        })
    }

    /// True for the FAT variants (FAT12/16/32, not exFAT).
    pub fn is_fat(self) -> bool {
        !matches!(self, FsType::Ext2 | FsType::Ext4 | FsType::ExFat)
    }

    /// True for exFAT.
    pub fn is_exfat(self) -> bool {
        self == FsType::ExFat
    }

    /// True where the size unit is a cluster (FAT, exFAT), not an ext block.
    pub fn has_clusters(self) -> bool {
        self.is_fat() || self.is_exfat()
    }

    fn fat_type(self) -> Option<FatType> {
        match self {
            FsType::Fat12 => Some(FatType::Fat12),
            FsType::Fat16 => Some(FatType::Fat16),
            FsType::Fat32 => Some(FatType::Fat32),
            _ => None,
        }
    }
}

/// Everything a format needs besides the device.
#[derive(Clone, Debug, Default)]
pub struct FormatRequest {
    /// Volume label.
    pub label: Option<String>,
    /// FAT cluster size or ext block size, in bytes.
    pub unit: Option<u32>,
    /// Fixed time for reproducible images (seconds since the epoch).
    pub epoch: Option<u64>,
    /// FAT volume serial.
    pub serial: Option<u32>,
    /// ext filesystem UUID (also the directory hash seed).
    pub uuid: Option<uuid::Uuid>,
    /// mke2fs features to turn on or (with a leading ^) off.
    pub features: Vec<String>,
}

/// Parses a cluster or block size ("4K", "4096").
pub fn parse_unit(text: &str) -> Outcome<u32> {
    let n = parse_bytes(text)?;
    u32::try_from(n).map_err(|_| fail!("size {text:?} is too large for a block"))
}

/// Formats `dev` (which starts `start_sector` sectors into its disk) as FAT.
pub fn format_fat(
    dev: &dyn BlockDevice,
    fs: FsType,
    start_sector: u64,
    req: &FormatRequest,
) -> Outcome<Layout> {
    let opts = FormatOptions {
        fat_type: fs.fat_type(),
        cluster_size: req.unit,
        label: req.label.clone(),
        volume_id: req
            .serial
            .unwrap_or_else(|| uuid::Uuid::new_v4().as_u128() as u32),
        hidden_sectors: u32::try_from(start_sector).unwrap_or(u32::MAX),
        time: req.epoch.map(crate::util::epoch_time),
    };
    fatfmt::format(dev, &opts).map_err(|e| fail!("{e}"))
}

/// Formats `dev` as exFAT (layout as mkfs.exfat picks it); returns the cluster size and
/// count.
pub fn format_exfat(dev: &dyn BlockDevice, req: &FormatRequest) -> Outcome<(u64, u32)> {
    let opts = exfat_options(req);
    let layout =
        vufuse_exfat::format::layout(dev.size(), dev.sector_size(), &opts).map_err(|e| {
            fail!(
                "no exFAT layout fits {} bytes with these options: {e}",
                dev.size()
            )
        })?;
    vufuse_exfat::format::format(dev, &opts).map_err(|e| fail!("{e}"))?;
    Ok((layout.cluster_size, layout.cluster_count))
}

/// Checks what an exFAT format would choose without writing; returns the usable bytes and
/// the cluster size.
pub fn check_exfat(bytes: u64, req: &FormatRequest) -> Outcome<(u64, u64)> {
    if let Some(l) = &req.label {
        if l.encode_utf16().count() > 11 {
            return Err(fail!("exFAT label {l:?} is longer than 11 characters"));
        }
    }
    let layout = vufuse_exfat::format::layout(bytes, 512, &exfat_options(req))
        .map_err(|e| fail!("no exFAT layout fits {bytes} bytes with these options: {e}"))?;
    Ok((
        layout.cluster_count as u64 * layout.cluster_size,
        layout.cluster_size,
    ))
}

fn exfat_options(req: &FormatRequest) -> vufuse_exfat::format::FormatOptions {
    vufuse_exfat::format::FormatOptions {
        label: req.label.clone(),
        cluster_size: req.unit,
        serial: req.serial,
    }
}

/// Checks what a FAT format would choose without writing.
pub fn check_fat(bytes: u64, fs: FsType, req: &FormatRequest) -> Outcome<()> {
    let opts = FormatOptions {
        fat_type: fs.fat_type(),
        cluster_size: req.unit,
        label: req.label.clone(),
        ..Default::default()
    };
    fatfmt::layout_for(bytes, &opts)
        .map(|_| ())
        .map_err(|e| fail!("{e}"))
}

/// Checks an ext request: block size and label.
pub fn check_ext(bytes: u64, req: &FormatRequest) -> Outcome<()> {
    if let Some(bs) = req.unit {
        if ![1024, 2048, 4096, 65536].contains(&bs) {
            return Err(fail!(
                "ext block size {bs} is not 1024, 2048, 4096 or 65536"
            ));
        }
    }
    if let Some(l) = &req.label {
        if l.len() > 16 {
            return Err(fail!("ext label {l:?} is longer than 16 bytes"));
        }
    }
    if bytes < 1 << 20 {
        return Err(fail!("{bytes} bytes is too small for an ext filesystem"));
    }
    for f in &req.features {
        let name = f.strip_prefix('^').unwrap_or(f);
        if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
            return Err(fail!(
                "ext feature {f:?} is not a mke2fs feature name (e.g. \"^metadata_csum\")"
            ));
        }
    }
    Ok(())
}

/// The mke2fs command that formats `bytes` at `offset` of `image`.
pub fn mke2fs_command(
    image: &Path,
    offset: u64,
    bytes: u64,
    fs: FsType,
    req: &FormatRequest,
) -> Command {
    let mut cmd = Command::new("mke2fs");
    cmd.arg("-q").arg("-F").arg("-t").arg(match fs {
        FsType::Ext2 => "ext2",
        _ => "ext4",
    });
    if let Some(bs) = req.unit {
        cmd.arg("-b").arg(bs.to_string());
    }
    if let Some(l) = &req.label {
        cmd.arg("-L").arg(l);
    }
    if !req.features.is_empty() {
        cmd.arg("-O").arg(req.features.join(","));
    }
    let mut ext_opts = format!("offset={offset},root_owner=0:0,nodiscard");
    if let Some(u) = req.uuid {
        cmd.arg("-U").arg(u.hyphenated().to_string());
        ext_opts.push_str(&format!(",hash_seed={}", u.hyphenated()));
    }
    if let Some(t) = req.epoch {
        cmd.env("E2FSPROGS_FAKE_TIME", t.to_string());
    }
    cmd.arg("-E").arg(ext_opts);
    cmd.arg(image).arg(format!("{}k", bytes / 1024));
    cmd.env("MKE2FS_CONFIG", "/etc/mke2fs.conf");
    cmd
}

/// Formats the byte range `offset..offset+bytes` of `image` as ext2/ext4 with mke2fs.
pub fn format_ext(
    image: &Path,
    offset: u64,
    bytes: u64,
    fs: FsType,
    req: &FormatRequest,
) -> Outcome<()> {
    check_ext(bytes, req)?;
    let mut cmd = mke2fs_command(image, offset, bytes, fs, req);
    let out = cmd
        .output()
        .map_err(|e| fail!("cannot run mke2fs (install e2fsprogs): {e}"))?;
    if !out.status.success() {
        return Err(fail!(
            "mke2fs failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(())
}
