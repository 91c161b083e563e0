//! GUID partition tables: header and entry-array CRCs checked, backup used
//! when the primary is damaged.

use super::{read_sectors, PartType, Partition, PartitionTable, Scheme, TableError};
use crate::device::BlockDevice;
use uuid::Uuid;

const SIGNATURE: &[u8; 8] = b"EFI PART";
const REVISION: u32 = 0x0001_0000;
const HEADER_SIZE: u32 = 92;
const ENTRY_SIZE: u32 = 128;
/// Default number of entries: what sgdisk, sfdisk and the kernel expect.
pub(super) const DEFAULT_ENTRIES: u32 = 128;
/// Largest entry array accepted (the spec's minimum is 16 KiB; tools use that).
const MAX_ARRAY_BYTES: u64 = 1 << 20;
/// GPT attribute bit 2: legacy BIOS bootable, what sfdisk shows as bootable.
const LEGACY_BOOTABLE: u64 = 1 << 2;
/// UTF-16 code units in an entry's name field.
pub(super) const NAME_UNITS: usize = 36;

struct Header {
    alternate: u64,
    first_usable: u64,
    last_usable: u64,
    disk_guid: Uuid,
    entries_lba: u64,
    num_entries: u32,
    entry_size: u32,
}

fn le32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

fn le64(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

fn guid_at(b: &[u8], at: usize) -> Uuid {
    Uuid::from_bytes_le(b[at..at + 16].try_into().expect("16 bytes"))
}

/// Reads and checks the header at `lba` and its entry array.
fn read_table(
    dev: &dyn BlockDevice,
    ss: u32,
    lba: u64,
    disk_sectors: u64,
) -> Result<(Header, Vec<u8>), String> {
    let sector = read_sectors(dev, ss, lba, 1).map_err(|e| e.to_string())?;
    if &sector[..8] != SIGNATURE {
        return Err(format!("no GPT signature at sector {lba}"));
    }
    let header_size = le32(&sector, 12);
    if header_size < HEADER_SIZE || header_size > ss {
        return Err(format!("header size {header_size} is invalid"));
    }
    let mut copy = sector[..header_size as usize].to_vec();
    copy[16..20].fill(0);
    if crc32fast::hash(&copy) != le32(&sector, 16) {
        return Err(format!("header CRC mismatch at sector {lba}"));
    }
    let my_lba = le64(&sector, 24);
    if my_lba != lba {
        return Err(format!(
            "header at sector {lba} says it is at sector {my_lba}"
        ));
    }
    let header = Header {
        alternate: le64(&sector, 32),
        first_usable: le64(&sector, 40),
        last_usable: le64(&sector, 48),
        disk_guid: guid_at(&sector, 56),
        entries_lba: le64(&sector, 72),
        num_entries: le32(&sector, 80),
        entry_size: le32(&sector, 84),
    };
    if header.first_usable > header.last_usable || header.last_usable >= disk_sectors {
        return Err(format!(
            "usable area {}..={} does not fit a disk of {disk_sectors} sectors",
            header.first_usable, header.last_usable
        ));
    }
    if header.entry_size < ENTRY_SIZE
        || !header.entry_size.is_power_of_two()
        || header.entry_size > 4096
    {
        return Err(format!("entry size {} is invalid", header.entry_size));
    }
    let array_bytes = header.num_entries as u64 * header.entry_size as u64;
    if array_bytes > MAX_ARRAY_BYTES {
        return Err(format!("entry array of {array_bytes} bytes is too large"));
    }
    let array_sectors = array_bytes.div_ceil(ss as u64);
    if header
        .entries_lba
        .checked_add(array_sectors)
        .is_none_or(|end| end > disk_sectors)
    {
        return Err(format!(
            "entry array at sector {} lies past the end of the disk",
            header.entries_lba
        ));
    }
    let mut array =
        read_sectors(dev, ss, header.entries_lba, array_sectors).map_err(|e| e.to_string())?;
    array.truncate(array_bytes as usize);
    if crc32fast::hash(&array) != le32(&sector, 88) {
        return Err(format!(
            "entry array CRC mismatch (array at sector {})",
            header.entries_lba
        ));
    }
    Ok((header, array))
}

/// The sector size whose LBA 1 (or last LBA) carries a GPT signature.
fn detect_sector_size(dev: &dyn BlockDevice) -> u32 {
    let native = dev.sector_size().max(512);
    let mut candidates = vec![native];
    if native == 512 {
        candidates.push(4096);
    }
    for &ss in &candidates {
        let sectors = dev.size() / ss as u64;
        for lba in [1, sectors.saturating_sub(1)] {
            let mut sig = [0u8; 8];
            if lba >= 1 && dev.read_exact_at(&mut sig, lba * ss as u64).is_ok() && &sig == SIGNATURE
            {
                return ss;
            }
        }
    }
    native
}

pub(super) fn probe(dev: &dyn BlockDevice, lba0: &[u8]) -> Result<PartitionTable, TableError> {
    let ss = detect_sector_size(dev);
    let disk_sectors = dev.size() / ss as u64;
    if disk_sectors < 3 {
        return Err(TableError::DiskTooSmall(dev.size()));
    }
    let last = disk_sectors - 1;
    let mut warnings = Vec::new();
    let (header, array) = match read_table(dev, ss, 1, disk_sectors) {
        Ok(found) => {
            let backup_lba = if found.0.alternate > 1 && found.0.alternate < disk_sectors {
                found.0.alternate
            } else {
                last
            };
            if let Err(why) = read_table(dev, ss, backup_lba, disk_sectors) {
                warnings.push(format!("backup GPT damaged ({why}); the primary is intact"));
            }
            found
        }
        Err(primary) => match read_table(dev, ss, last, disk_sectors) {
            Ok(found) => {
                warnings.push(format!(
                    "primary GPT damaged ({primary}); using the backup at sector {last}"
                ));
                found
            }
            Err(backup) => return Err(TableError::GptCorrupt { primary, backup }),
        },
    };
    let mut partitions = Vec::new();
    for slot in 0..header.num_entries as usize {
        let e = &array[slot * header.entry_size as usize..][..ENTRY_SIZE as usize];
        let type_guid = guid_at(e, 0);
        if type_guid.is_nil() {
            continue;
        }
        let number = slot as u32 + 1;
        let (first, last_lba) = (le64(e, 32), le64(e, 40));
        if last_lba < first {
            return Err(TableError::Invalid(format!(
                "partition {number} ends (sector {last_lba}) before it starts ({first})"
            )));
        }
        let units: Vec<u16> = e[56..128]
            .chunks_exact(2)
            .map(|c| u16::from_le_bytes([c[0], c[1]]))
            .collect();
        let name_len = units.iter().position(|&u| u == 0).unwrap_or(units.len());
        let attrs = le64(e, 48);
        partitions.push(Partition {
            number,
            start: first,
            sectors: last_lba - first + 1,
            ptype: PartType::Gpt(type_guid),
            bootable: attrs & LEGACY_BOOTABLE != 0,
            name: String::from_utf16_lossy(&units[..name_len]),
            uuid: Some(guid_at(e, 16)),
            attributes: attrs & !LEGACY_BOOTABLE,
            ebr: None,
        });
    }
    let table = PartitionTable {
        scheme: Scheme::Gpt,
        sector_size: ss,
        disk_sectors,
        mbr_id: u32::from_le_bytes([lba0[440], lba0[441], lba0[442], lba0[443]]),
        disk_guid: Some(header.disk_guid),
        usable: (header.first_usable, header.last_usable),
        gpt_entries: header.num_entries,
        partitions,
        align: super::edit::default_align(ss),
        warnings,
    };
    table.validate(disk_sectors)?;
    Ok(table)
}

/// First and last usable sector of a disk with `entries` 128-byte entries.
pub(super) fn usable_area(disk_sectors: u64, ss: u32, entries: u32) -> Option<(u64, u64)> {
    let array_sectors = (entries as u64 * ENTRY_SIZE as u64).div_ceil(ss as u64);
    let first = 2 + array_sectors;
    let last = disk_sectors.checked_sub(2 + array_sectors)?;
    (first <= last).then_some((first, last))
}

/// GPT-specific consistency: slot numbers, names, types, usable area.
pub(super) fn validate(table: &PartitionTable) -> Result<(), TableError> {
    for p in &table.partitions {
        if p.number == 0 || p.number > table.gpt_entries {
            return Err(TableError::Invalid(format!(
                "partition number {} is outside the {} GPT entries",
                p.number, table.gpt_entries
            )));
        }
        if p.name.encode_utf16().count() > NAME_UNITS {
            return Err(TableError::Invalid(format!(
                "name of partition {} is longer than {NAME_UNITS} UTF-16 units",
                p.number
            )));
        }
        let PartType::Gpt(guid) = p.ptype else {
            return Err(TableError::Invalid(format!(
                "partition {} has an MBR type on a GPT disk",
                p.number
            )));
        };
        if guid.is_nil() {
            return Err(TableError::Invalid(format!(
                "partition {} has the nil type GUID",
                p.number
            )));
        }
        if p.start < table.usable.0 || p.end() > table.usable.1 + 1 {
            return Err(TableError::Invalid(format!(
                "partition {} (sectors {}..{}) lies outside the usable area {}..={}",
                p.number,
                p.start,
                p.end(),
                table.usable.0,
                table.usable.1
            )));
        }
    }
    let mut numbers: Vec<u32> = table.partitions.iter().map(|p| p.number).collect();
    numbers.sort_unstable();
    if let Some(w) = numbers.windows(2).find(|w| w[0] == w[1]) {
        return Err(TableError::Invalid(format!(
            "two partitions are numbered {}",
            w[0]
        )));
    }
    super::check_overlaps(table.partitions.iter())
}

/// What the primary and backup headers have in common.
struct HeaderCommon {
    sector_size: u32,
    usable: (u64, u64),
    disk_guid: Uuid,
    entries: u32,
    array_crc: u32,
}

fn header_sector(common: &HeaderCommon, my: u64, alternate: u64, entries_lba: u64) -> Vec<u8> {
    let mut h = vec![0u8; common.sector_size as usize];
    h[..8].copy_from_slice(SIGNATURE);
    h[8..12].copy_from_slice(&REVISION.to_le_bytes());
    h[12..16].copy_from_slice(&HEADER_SIZE.to_le_bytes());
    h[24..32].copy_from_slice(&my.to_le_bytes());
    h[32..40].copy_from_slice(&alternate.to_le_bytes());
    h[40..48].copy_from_slice(&common.usable.0.to_le_bytes());
    h[48..56].copy_from_slice(&common.usable.1.to_le_bytes());
    h[56..72].copy_from_slice(&common.disk_guid.to_bytes_le());
    h[72..80].copy_from_slice(&entries_lba.to_le_bytes());
    h[80..84].copy_from_slice(&common.entries.to_le_bytes());
    h[84..88].copy_from_slice(&ENTRY_SIZE.to_le_bytes());
    h[88..92].copy_from_slice(&common.array_crc.to_le_bytes());
    let crc = crc32fast::hash(&h[..HEADER_SIZE as usize]);
    h[16..20].copy_from_slice(&crc.to_le_bytes());
    h
}

/// Writes backup array and header, then primary array and header, then the
/// protective MBR. Partitions without a GUID get a random one.
pub(super) fn write(
    dev: &dyn BlockDevice,
    table: &PartitionTable,
    disk_sectors: u64,
) -> Result<(), TableError> {
    let ss = table.sector_size;
    let entries = table.gpt_entries;
    let usable =
        usable_area(disk_sectors, ss, entries).ok_or(TableError::DiskTooSmall(dev.size()))?;
    let array_sectors = (entries as u64 * ENTRY_SIZE as u64).div_ceil(ss as u64);
    let mut array = vec![0u8; (array_sectors * ss as u64) as usize];
    for p in &table.partitions {
        let e = &mut array[(p.number as usize - 1) * ENTRY_SIZE as usize..][..ENTRY_SIZE as usize];
        let PartType::Gpt(type_guid) = p.ptype else {
            unreachable!("validated")
        };
        e[..16].copy_from_slice(&type_guid.to_bytes_le());
        e[16..32].copy_from_slice(&p.uuid.unwrap_or_else(Uuid::new_v4).to_bytes_le());
        e[32..40].copy_from_slice(&p.start.to_le_bytes());
        e[40..48].copy_from_slice(&(p.end() - 1).to_le_bytes());
        let attrs = p.attributes & !LEGACY_BOOTABLE | if p.bootable { LEGACY_BOOTABLE } else { 0 };
        e[48..56].copy_from_slice(&attrs.to_le_bytes());
        for (i, unit) in p.name.encode_utf16().enumerate() {
            e[56 + 2 * i..58 + 2 * i].copy_from_slice(&unit.to_le_bytes());
        }
    }
    let array_crc = crc32fast::hash(&array[..(entries as usize * ENTRY_SIZE as usize)]);
    let common = HeaderCommon {
        sector_size: ss,
        usable,
        disk_guid: table.disk_guid.unwrap_or_else(Uuid::new_v4),
        entries,
        array_crc,
    };
    let last = disk_sectors - 1;
    let backup_array_lba = last - array_sectors;
    let ssz = ss as u64;
    dev.write_all_at(&array, backup_array_lba * ssz)?;
    dev.write_all_at(
        &header_sector(&common, last, 1, backup_array_lba),
        last * ssz,
    )?;
    dev.write_all_at(&array, 2 * ssz)?;
    dev.write_all_at(&header_sector(&common, 1, last, 2), ssz)?;
    super::mbr::write_protective(dev, table, disk_sectors)?;
    Ok(())
}
