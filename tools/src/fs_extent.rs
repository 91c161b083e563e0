//! How many bytes of a partition its filesystem uses, so that `part resize` can refuse to cut
//! one off (as parted does): the end of FAT's cluster heap, exFAT's volume length, ext's
//! block count.

use std::sync::Arc;
use vudev::{BlockDevice, Window};

/// A filesystem found at the start of a partition and the bytes it spans.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FsExtent {
    /// Its kind, for messages ("ext4", "FAT32", "exFAT").
    pub kind: &'static str,
    /// Bytes from the partition's start to the filesystem's last byte.
    pub bytes: u64,
}

/// The filesystem at byte `start` of `disk` in a partition of `len` bytes, if one is
/// recognised.
pub fn filesystem_extent(disk: Arc<dyn BlockDevice>, start: u64, len: u64) -> Option<FsExtent> {
    let part = Window::new(disk, start, len).ok()?;
    let mut head = vec![0u8; 2048.min(len as usize)];
    part.read_exact_at(&mut head, 0).ok()?;
    ext_extent(&head)
        .or_else(|| exfat_extent(&part))
        .or_else(|| fat_extent(&head, len))
}

/// ext2/3/4: the superblock at 1024 (magic 0xEF53), blocks count times block size.
fn ext_extent(head: &[u8]) -> Option<FsExtent> {
    let sb = head.get(1024..2048)?;
    let le32 = |at: usize| u32::from_le_bytes(sb[at..at + 4].try_into().expect("4 bytes"));
    if u16::from_le_bytes([sb[56], sb[57]]) != 0xEF53 {
        return None;
    }
    let log_block = le32(24);
    if log_block > 6 {
        return None;
    }
    let incompat = le32(96);
    let compat_journal = le32(92) & 0x4 != 0;
    let is_64bit = incompat & 0x80 != 0;
    let high = if is_64bit { le32(0x150) as u64 } else { 0 };
    let blocks = (high << 32) | le32(4) as u64;
    let kind = if incompat & 0x40 != 0 || is_64bit {
        "ext4"
    } else if compat_journal {
        "ext3"
    } else {
        "ext2"
    };
    Some(FsExtent {
        kind,
        bytes: blocks.checked_mul(1024u64 << log_block)?,
    })
}

/// exFAT: the volume length of its boot sector.
fn exfat_extent(part: &Window) -> Option<FsExtent> {
    let geo = vufuse_exfat::boot::read(part).ok()?;
    Some(FsExtent {
        kind: "exFAT",
        bytes: geo.volume_bytes,
    })
}

/// FAT12/16/32: the end of the cluster heap.
fn fat_extent(head: &[u8], len: u64) -> Option<FsExtent> {
    let geo = vufuse_fat::bpb::parse(head.get(..512)?, len).ok()?;
    let heap = geo.cluster_count as u64 * geo.cluster_size as u64;
    let kind = match geo.fat_type {
        vufuse_fat::bpb::FatType::Fat12 => "FAT12",
        vufuse_fat::bpb::FatType::Fat16 => "FAT16",
        vufuse_fat::bpb::FatType::Fat32 => "FAT32",
    };
    Some(FsExtent {
        kind,
        bytes: geo.data_offset + heap,
    })
}
