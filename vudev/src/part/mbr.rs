//! DOS/MBR tables: primaries, one extended container and its chain of EBRs.

use super::types::{is_extended_code, PROTECTIVE_MBR_CODE};
use super::{
    check_overlaps, read_sectors, PartType, Partition, PartitionTable, Scheme, TableError,
};
use crate::device::BlockDevice;
use std::collections::HashSet;

/// At most this many EBRs are followed; Linux stops near the same bound.
const MAX_EBRS: usize = 256;
const SIGNATURE: [u8; 2] = [0x55, 0xAA];
const ENTRIES_AT: usize = 446;

/// What sector 0 holds.
pub(super) enum Kind {
    /// No partition table (blank, or a filesystem boot sector).
    None,
    /// A protective MBR: the disk is GPT.
    Protective,
    /// A DOS partition table.
    Dos,
}

#[derive(Clone, Copy, Default)]
struct Entry {
    boot: u8,
    code: u8,
    start: u32,
    sectors: u32,
}

impl Entry {
    fn read(sector: &[u8], index: usize) -> Entry {
        let e = &sector[ENTRIES_AT + 16 * index..ENTRIES_AT + 16 * (index + 1)];
        Entry {
            boot: e[0],
            code: e[4],
            start: u32::from_le_bytes([e[8], e[9], e[10], e[11]]),
            sectors: u32::from_le_bytes([e[12], e[13], e[14], e[15]]),
        }
    }

    fn is_used(&self) -> bool {
        self.code != 0 && self.sectors != 0
    }

    fn write(&self, sector: &mut [u8], index: usize) {
        let e = &mut sector[ENTRIES_AT + 16 * index..ENTRIES_AT + 16 * (index + 1)];
        e.fill(0);
        if self.code == 0 {
            return;
        }
        e[0] = self.boot;
        e[1..4].copy_from_slice(&chs(self.start as u64));
        e[4] = self.code;
        e[5..8].copy_from_slice(&chs(
            (self.start as u64 + self.sectors as u64).saturating_sub(1)
        ));
        e[8..12].copy_from_slice(&self.start.to_le_bytes());
        e[12..16].copy_from_slice(&self.sectors.to_le_bytes());
    }
}

/// CHS address of `lba` in the 255-head, 63-sector geometry every tool uses,
/// saturated at the 1023/254/63 marker beyond the CHS limit.
fn chs(lba: u64) -> [u8; 3] {
    const HEADS: u64 = 255;
    const SECTORS: u64 = 63;
    if lba >= 1024 * HEADS * SECTORS {
        return [0xFE, 0xFF, 0xFF];
    }
    let cylinder = lba / (HEADS * SECTORS);
    let head = (lba / SECTORS) % HEADS;
    let sector = lba % SECTORS + 1;
    [
        head as u8,
        (sector as u8) | (((cylinder >> 2) & 0xC0) as u8),
        (cylinder & 0xFF) as u8,
    ]
}

fn looks_like_boot_sector(sector: &[u8]) -> bool {
    // x86 jump at the start of every FAT/NTFS/exFAT volume boot record.
    matches!(sector[0], 0xEB | 0xE9)
}

/// Classifies sector 0 as Linux does: a 0x55AA signature and boot flags of
/// 0 or 0x80 make an MBR; an 0xEE entry makes it protective.
pub(super) fn classify(lba0: &[u8]) -> Kind {
    if lba0.len() < 512 || lba0[510..512] != SIGNATURE {
        return Kind::None;
    }
    let entries: Vec<Entry> = (0..4).map(|i| Entry::read(lba0, i)).collect();
    if entries.iter().any(|e| e.boot != 0 && e.boot != 0x80) {
        return Kind::None;
    }
    if entries.iter().any(|e| e.code == PROTECTIVE_MBR_CODE) {
        return Kind::Protective;
    }
    if !entries.iter().any(Entry::is_used) && looks_like_boot_sector(lba0) {
        return Kind::None;
    }
    Kind::Dos
}

/// Reads the primaries and the logical chain and validates the result.
pub(super) fn probe(
    dev: &dyn BlockDevice,
    sector_size: u32,
    lba0: &[u8],
) -> Result<PartitionTable, TableError> {
    let disk_sectors = dev.size() / sector_size as u64;
    let mut partitions = Vec::new();
    for slot in 0..4 {
        let e = Entry::read(lba0, slot);
        if e.is_used() {
            partitions.push(Partition {
                number: slot as u32 + 1,
                start: e.start as u64,
                sectors: e.sectors as u64,
                ptype: PartType::Mbr(e.code),
                bootable: e.boot == 0x80,
                name: String::new(),
                uuid: None,
                attributes: 0,
                ebr: None,
            });
        }
    }
    let containers: Vec<&Partition> = partitions
        .iter()
        .filter(|p| p.ptype.is_extended())
        .collect();
    if containers.len() > 1 {
        return Err(TableError::BadExtended(format!(
            "more than one extended partition ({} and {})",
            containers[0].number, containers[1].number
        )));
    }
    if let Some(container) = containers.first().map(|p| (*p).clone()) {
        if container.end() > disk_sectors {
            return Err(TableError::PastEnd {
                number: container.number,
                start: container.start,
                end: container.end(),
                disk: disk_sectors,
            });
        }
        let logicals = read_chain(dev, sector_size, &container)?;
        partitions.extend(logicals);
    }
    let table = PartitionTable {
        scheme: Scheme::Mbr,
        sector_size,
        disk_sectors,
        mbr_id: u32::from_le_bytes([lba0[440], lba0[441], lba0[442], lba0[443]]),
        disk_guid: None,
        usable: (1, disk_sectors.saturating_sub(1)),
        gpt_entries: 0,
        partitions,
        align: super::edit::default_align(sector_size),
        warnings: Vec::new(),
    };
    table.validate(disk_sectors)?;
    Ok(table)
}

fn read_chain(
    dev: &dyn BlockDevice,
    sector_size: u32,
    container: &Partition,
) -> Result<Vec<Partition>, TableError> {
    let mut logicals = Vec::new();
    let mut visited = HashSet::new();
    let mut ebr = container.start;
    loop {
        if ebr < container.start || ebr >= container.end() {
            return Err(TableError::BadExtended(format!(
                "EBR at sector {ebr} lies outside extended partition {}",
                container.number
            )));
        }
        if !visited.insert(ebr) {
            return Err(TableError::ExtendedLoop(ebr));
        }
        if visited.len() > MAX_EBRS {
            return Err(TableError::BadExtended(format!(
                "more than {MAX_EBRS} EBRs"
            )));
        }
        let sector = read_sectors(dev, sector_size, ebr, 1)?;
        if sector[510..512] != SIGNATURE {
            if ebr == container.start {
                // An extended partition that was never given a logical.
                break;
            }
            return Err(TableError::BadExtended(format!(
                "EBR at sector {ebr} has no 0x55AA signature"
            )));
        }
        let data = Entry::read(&sector, 0);
        if data.is_used() {
            if is_extended_code(data.code) {
                return Err(TableError::BadExtended(format!(
                    "EBR at sector {ebr} describes a nested extended partition"
                )));
            }
            let start = ebr
                .checked_add(data.start as u64)
                .ok_or_else(|| TableError::BadExtended(format!("EBR at sector {ebr} overflows")))?;
            logicals.push(Partition {
                number: 5 + logicals.len() as u32,
                start,
                sectors: data.sectors as u64,
                ptype: PartType::Mbr(data.code),
                bootable: data.boot == 0x80,
                name: String::new(),
                uuid: None,
                attributes: 0,
                ebr: Some(ebr),
            });
        }
        let link = Entry::read(&sector, 1);
        if !(link.is_used() && is_extended_code(link.code)) {
            break;
        }
        ebr = container.start + link.start as u64;
    }
    Ok(logicals)
}

/// The sector each logical's EBR goes to, in chain order (= number order).
///
/// The head of the chain is always the container's first sector. Later EBRs
/// keep their recorded sector while it is still free, otherwise take the first
/// sector after the nearest logical below (as fdisk places them) or the
/// sector just before the partition.
pub(super) fn ebr_positions(table: &PartitionTable) -> Result<Vec<(Partition, u64)>, TableError> {
    let Some(container) = table.extended() else {
        return Ok(Vec::new());
    };
    let mut logicals: Vec<&Partition> = table.partitions.iter().filter(|p| p.number >= 5).collect();
    logicals.sort_by_key(|p| p.number);
    let inside_a_logical = |sector: u64| {
        logicals
            .iter()
            .any(|q| sector >= q.start && sector < q.end())
    };
    let mut taken = HashSet::new();
    let mut out = Vec::new();
    for (i, p) in logicals.iter().enumerate() {
        let usable = |e: u64| {
            e >= container.start && e < p.start && !inside_a_logical(e) && !taken.contains(&e)
        };
        let ebr = if i == 0 {
            Some(container.start).filter(|&e| e < p.start)
        } else {
            let after_lower = logicals
                .iter()
                .map(|q| q.end())
                .filter(|&end| end <= p.start)
                .max()
                .unwrap_or(container.start);
            p.ebr
                .into_iter()
                .chain([after_lower, p.start.saturating_sub(1)])
                .find(|&e| usable(e))
        };
        let Some(ebr) = ebr else {
            return Err(TableError::Invalid(format!(
                "logical partition {} leaves no free sector for its EBR before sector {}",
                p.number, p.start
            )));
        };
        taken.insert(ebr);
        out.push(((*p).clone(), ebr));
    }
    Ok(out)
}

/// MBR-specific consistency: numbering, one container, logicals inside it,
/// 32-bit fields, no overlaps.
pub(super) fn validate(table: &PartitionTable) -> Result<(), TableError> {
    let primaries: Vec<&Partition> = table.partitions.iter().filter(|p| p.number <= 4).collect();
    let logicals: Vec<&Partition> = table.partitions.iter().filter(|p| p.number >= 5).collect();
    for p in &table.partitions {
        if p.number == 0 {
            return Err(TableError::Invalid(
                "partition number 0 does not exist on MBR".into(),
            ));
        }
        if p.start > u32::MAX as u64 || p.sectors > u32::MAX as u64 {
            return Err(TableError::Invalid(format!(
                "partition {} does not fit MBR's 32-bit sector fields (use GPT)",
                p.number
            )));
        }
        if p.start == 0 {
            return Err(TableError::Invalid(format!(
                "partition {} would overwrite the MBR",
                p.number
            )));
        }
        if !matches!(p.ptype, PartType::Mbr(_)) {
            return Err(TableError::Invalid(format!(
                "partition {} has a GPT type on an MBR disk",
                p.number
            )));
        }
    }
    let mut seen = HashSet::new();
    for p in &table.partitions {
        if !seen.insert(p.number) {
            return Err(TableError::Invalid(format!(
                "two partitions are numbered {}",
                p.number
            )));
        }
    }
    if primaries.iter().filter(|p| p.ptype.is_extended()).count() > 1 {
        return Err(TableError::Invalid(
            "only one extended partition is possible".into(),
        ));
    }
    if logicals.iter().any(|p| p.ptype.is_extended()) {
        return Err(TableError::Invalid(
            "a logical partition cannot be extended".into(),
        ));
    }
    check_overlaps(primaries.iter().copied())?;
    check_overlaps(logicals.iter().copied())?;
    if logicals.is_empty() {
        return Ok(());
    }
    let container = table.extended().ok_or_else(|| {
        TableError::Invalid("logical partitions need an extended partition".into())
    })?;
    let mut by_number = logicals.clone();
    by_number.sort_by_key(|p| p.number);
    for (i, p) in by_number.iter().enumerate() {
        if p.start <= container.start || p.end() > container.end() {
            return Err(TableError::BadExtended(format!(
                "logical partition {} (sectors {}..{}) is not inside extended partition {} (sectors {}..{})",
                p.number,
                p.start,
                p.end(),
                container.number,
                container.start,
                container.end()
            )));
        }
        if p.number != 5 + i as u32 {
            return Err(TableError::Invalid(format!(
                "logical partitions must be numbered 5, 6, ... without gaps (found {})",
                p.number
            )));
        }
    }
    for (p, ebr) in ebr_positions(table)? {
        if p.start - ebr > u32::MAX as u64 || ebr - container.start > u32::MAX as u64 {
            return Err(TableError::Invalid(format!(
                "logical partition {} is too far from its EBR",
                p.number
            )));
        }
    }
    Ok(())
}

fn signed_sector(sector_size: u32) -> Vec<u8> {
    let mut s = vec![0u8; sector_size as usize];
    s[510..512].copy_from_slice(&SIGNATURE);
    s
}

/// Writes EBRs first and the MBR last; erases GPT headers a previous label left.
pub(super) fn write(dev: &dyn BlockDevice, table: &PartitionTable) -> Result<(), TableError> {
    let ss = table.sector_size as u64;
    if let Some(container) = table.extended() {
        let chain = ebr_positions(table)?;
        if chain.is_empty() {
            // No logicals: an empty EBR so stale chains are not read back.
            dev.write_all_at(&signed_sector(table.sector_size), container.start * ss)?;
        }
        for (i, (p, ebr)) in chain.iter().enumerate() {
            let mut sector = signed_sector(table.sector_size);
            Entry {
                boot: if p.bootable { 0x80 } else { 0 },
                code: match p.ptype {
                    PartType::Mbr(c) => c,
                    PartType::Gpt(_) => unreachable!("validated"),
                },
                start: (p.start - ebr) as u32,
                sectors: p.sectors as u32,
            }
            .write(&mut sector, 0);
            if let Some((next, next_ebr)) = chain.get(i + 1) {
                Entry {
                    boot: 0,
                    code: 0x05,
                    start: (next_ebr - container.start) as u32,
                    sectors: (next.end() - next_ebr) as u32,
                }
                .write(&mut sector, 1);
            }
            dev.write_all_at(&sector, ebr * ss)?;
        }
    }
    erase_gpt_headers(dev, table.sector_size)?;
    let mut lba0 = read_sectors(dev, table.sector_size, 0, 1)?;
    if !matches!(classify(&lba0), Kind::Dos | Kind::Protective) {
        // Whatever was there (a filesystem boot sector) is no boot code of ours.
        lba0.fill(0);
    }
    lba0[440..444].copy_from_slice(&table.mbr_id.to_le_bytes());
    lba0[444..446].fill(0);
    for slot in 0..4 {
        let entry = table
            .partitions
            .iter()
            .find(|p| p.number == slot as u32 + 1)
            .map(|p| Entry {
                boot: if p.bootable { 0x80 } else { 0 },
                code: match p.ptype {
                    PartType::Mbr(c) => c,
                    PartType::Gpt(_) => 0,
                },
                start: p.start as u32,
                sectors: p.sectors as u32,
            })
            .unwrap_or_default();
        entry.write(&mut lba0, slot);
    }
    lba0[510..512].copy_from_slice(&SIGNATURE);
    dev.write_all_at(&lba0[..512], 0)?;
    Ok(())
}

/// Writes the protective MBR of a GPT disk, keeping existing boot code.
pub(super) fn write_protective(
    dev: &dyn BlockDevice,
    table: &PartitionTable,
    disk_sectors: u64,
) -> Result<(), TableError> {
    let mut lba0 = read_sectors(dev, table.sector_size, 0, 1)?;
    if !matches!(classify(&lba0), Kind::Dos | Kind::Protective) {
        lba0.fill(0);
    }
    lba0[440..444].copy_from_slice(&table.mbr_id.to_le_bytes());
    lba0[444..446].fill(0);
    for slot in 0..4 {
        Entry::default().write(&mut lba0, slot);
    }
    // The protective entry: CHS fields as sgdisk writes them.
    let e = &mut lba0[ENTRIES_AT..ENTRIES_AT + 16];
    e[1..4].copy_from_slice(&[0x00, 0x02, 0x00]);
    e[4] = PROTECTIVE_MBR_CODE;
    e[5..8].copy_from_slice(&[0xFF, 0xFF, 0xFF]);
    e[8..12].copy_from_slice(&1u32.to_le_bytes());
    let covered = (disk_sectors - 1).min(u32::MAX as u64) as u32;
    e[12..16].copy_from_slice(&covered.to_le_bytes());
    lba0[510..512].copy_from_slice(&SIGNATURE);
    dev.write_all_at(&lba0[..512], 0)?;
    Ok(())
}

/// Rewrites the protective MBR of a GPT disk as a hybrid one (as gdisk's `h` does): up to
/// three GPT partitions, given as (number, MBR type code), also listed in the MBR for
/// firmware and systems that read only MBRs, and a 0xEE entry after them over the GPT
/// headers (sector 1 to the sector before the first listed partition).
pub(super) fn write_hybrid(
    dev: &dyn BlockDevice,
    table: &PartitionTable,
    hybrids: &[(u32, u8)],
) -> Result<(), TableError> {
    if table.scheme != super::Scheme::Gpt {
        return Err(TableError::Invalid("a hybrid MBR is for GPT disks".into()));
    }
    if hybrids.is_empty() || hybrids.len() > 3 {
        return Err(TableError::Invalid(
            "a hybrid MBR lists one to three GPT partitions".into(),
        ));
    }
    let mut entries = Vec::new();
    for &(number, code) in hybrids {
        let p = table
            .partitions
            .iter()
            .find(|p| p.number == number)
            .ok_or_else(|| {
                TableError::Invalid(format!("no partition {number} for the hybrid MBR"))
            })?;
        if code == 0 || code == PROTECTIVE_MBR_CODE || super::is_extended_code(code) {
            return Err(TableError::Invalid(format!(
                "MBR type {code:#04x} cannot list partition {number} in a hybrid MBR"
            )));
        }
        let fits = |v: u64| u32::try_from(v).ok();
        let (start, sectors) = fits(p.start)
            .zip(fits(p.sectors))
            .filter(|(s, n)| s.checked_add(*n).is_some())
            .ok_or_else(|| {
                TableError::Invalid(format!(
                    "partition {number} lies beyond what an MBR can address"
                ))
            })?;
        entries.push(Entry {
            boot: 0,
            code,
            start,
            sectors,
        });
    }
    entries.sort_by_key(|e| e.start);
    let first = entries[0].start;
    let mut lba0 = read_sectors(dev, table.sector_size, 0, 1)?;
    for slot in 0..4 {
        Entry::default().write(&mut lba0, slot);
    }
    let count = entries.len();
    for (slot, e) in entries.into_iter().enumerate() {
        e.write(&mut lba0, slot);
    }
    Entry {
        boot: 0,
        code: PROTECTIVE_MBR_CODE,
        start: 1,
        sectors: first - 1,
    }
    .write(&mut lba0, count);
    lba0[510..512].copy_from_slice(&SIGNATURE);
    dev.write_all_at(&lba0[..512], 0)?;
    Ok(())
}

/// Zeroes GPT headers (primary at LBA 1, backup at the last LBA) for both
/// common sector sizes, so a new DOS label is not shadowed by an old GPT.
fn erase_gpt_headers(dev: &dyn BlockDevice, _sector_size: u32) -> Result<(), TableError> {
    for ss in [512u64, 4096] {
        let sectors = dev.size() / ss;
        if sectors < 2 {
            continue;
        }
        for lba in [1, sectors - 1] {
            let mut sig = [0u8; 8];
            dev.read_exact_at(&mut sig, lba * ss)?;
            if &sig == b"EFI PART" {
                dev.write_all_at(&vec![0u8; ss as usize], lba * ss)?;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chs_matches_fdisk() {
        assert_eq!(chs(2048), [32, 33, 0]);
        assert_eq!(chs(0), [0, 1, 0]);
        assert_eq!(chs(1024 * 255 * 63), [0xFE, 0xFF, 0xFF]);
    }
}
