//! Editing a table in memory: create, add, delete, resize, retype, rename.
//!
//! Every edit is checked against the whole table (bounds, overlaps, MBR
//! limits) before it is applied, so a failed edit leaves the table unchanged.

use super::gpt::{usable_area, DEFAULT_ENTRIES};
use super::{PartType, Partition, PartitionTable, Scheme, TableError};
use uuid::Uuid;

/// One MiB in sectors: the alignment sfdisk, sgdisk and parted use.
pub(crate) fn default_align(sector_size: u32) -> u64 {
    ((1u64 << 20) / sector_size.max(1) as u64).max(1)
}

/// What to create with [`PartitionTable::add`].
#[derive(Clone, Debug)]
pub struct NewPartition {
    /// Number to use; by default the first free slot (the next logical number
    /// for MBR logicals, which always go to the end of the chain).
    pub number: Option<u32>,
    /// First sector; by default the first aligned free sector that fits.
    pub start: Option<u64>,
    /// Length in sectors; by default the rest of the free region.
    pub sectors: Option<u64>,
    /// Partition type.
    pub ptype: PartType,
    /// GPT name.
    pub name: String,
    /// Bootable flag (MBR active flag, GPT legacy BIOS bootable attribute).
    pub bootable: bool,
    /// MBR: create a logical partition inside the extended one.
    pub logical: bool,
    /// GPT: unique partition GUID (random by default).
    pub uuid: Option<Uuid>,
}

impl NewPartition {
    /// A partition of the given type with every other field defaulted.
    pub fn new(ptype: PartType) -> NewPartition {
        NewPartition {
            number: None,
            start: None,
            sectors: None,
            ptype,
            name: String::new(),
            bootable: false,
            logical: false,
            uuid: None,
        }
    }
}

fn align_up(value: u64, align: u64) -> Option<u64> {
    value.checked_next_multiple_of(align.max(1))
}

impl PartitionTable {
    fn empty(
        scheme: Scheme,
        disk_bytes: u64,
        sector_size: u32,
    ) -> Result<PartitionTable, TableError> {
        if sector_size < 512 || !sector_size.is_power_of_two() {
            return Err(TableError::Invalid(format!(
                "sector size {sector_size} is invalid"
            )));
        }
        let disk_sectors = disk_bytes / sector_size as u64;
        if disk_sectors < 2 {
            return Err(TableError::DiskTooSmall(disk_bytes));
        }
        Ok(PartitionTable {
            scheme,
            sector_size,
            disk_sectors,
            mbr_id: 0,
            disk_guid: None,
            usable: (1, disk_sectors - 1),
            gpt_entries: 0,
            partitions: Vec::new(),
            align: default_align(sector_size),
            warnings: Vec::new(),
        })
    }

    /// An empty DOS table for a disk of `disk_bytes`.
    pub fn new_mbr(
        disk_bytes: u64,
        sector_size: u32,
        disk_id: u32,
    ) -> Result<PartitionTable, TableError> {
        let mut t = PartitionTable::empty(Scheme::Mbr, disk_bytes, sector_size)?;
        t.mbr_id = disk_id;
        Ok(t)
    }

    /// An empty GPT (128 entries) for a disk of `disk_bytes`.
    pub fn new_gpt(
        disk_bytes: u64,
        sector_size: u32,
        disk_guid: Uuid,
    ) -> Result<PartitionTable, TableError> {
        let mut t = PartitionTable::empty(Scheme::Gpt, disk_bytes, sector_size)?;
        t.usable = usable_area(t.disk_sectors, sector_size, DEFAULT_ENTRIES)
            .ok_or(TableError::DiskTooSmall(disk_bytes))?;
        t.gpt_entries = DEFAULT_ENTRIES;
        t.disk_guid = Some(disk_guid);
        Ok(t)
    }

    /// Free regions `[start, end)` where a new partition of this kind may go;
    /// for MBR logicals each region keeps its first sector for the EBR.
    pub fn free_regions(&self, logical: bool) -> Vec<(u64, u64)> {
        let (area, taken): ((u64, u64), Vec<(u64, u64)>) = match self.scheme {
            Scheme::Gpt => (
                (self.usable.0, self.usable.1 + 1),
                self.partitions.iter().map(|p| (p.start, p.end())).collect(),
            ),
            Scheme::Mbr if logical => {
                let Some(c) = self.extended() else {
                    return Vec::new();
                };
                let logicals = self.partitions.iter().filter(|p| p.number >= 5);
                (
                    (c.start, c.end()),
                    logicals
                        .map(|p| (p.ebr.unwrap_or(p.start - 1).min(p.start - 1), p.end()))
                        .collect(),
                )
            }
            Scheme::Mbr => (
                (1, self.disk_sectors.min(1 << 32)),
                self.partitions
                    .iter()
                    .filter(|p| p.number <= 4)
                    .map(|p| (p.start, p.end()))
                    .collect(),
            ),
        };
        let mut taken = taken;
        taken.sort_unstable();
        let mut regions = Vec::new();
        let mut cursor = area.0;
        for (s, e) in taken {
            if s > cursor {
                regions.push((cursor, s.min(area.1)));
            }
            cursor = cursor.max(e);
        }
        if cursor < area.1 {
            regions.push((cursor, area.1));
        }
        regions.retain(|(s, e)| s < e);
        regions
    }

    /// Adds a partition and returns its number. Nothing changes on error.
    pub fn add(&mut self, spec: NewPartition) -> Result<u32, TableError> {
        let gpt = self.scheme == Scheme::Gpt;
        if gpt != matches!(spec.ptype, PartType::Gpt(_)) {
            return Err(TableError::Invalid(format!(
                "type {} does not belong on a {} disk",
                spec.ptype,
                self.scheme.sfdisk_label()
            )));
        }
        if spec.logical && (gpt || self.extended().is_none()) {
            return Err(TableError::Invalid(
                "logical partitions need an MBR disk with an extended partition".into(),
            ));
        }
        if spec.ptype.is_extended() && (spec.logical || self.extended().is_some()) {
            return Err(TableError::Invalid(
                "an MBR disk has at most one extended partition, and it is primary".into(),
            ));
        }
        if !gpt && !spec.name.is_empty() {
            return Err(TableError::Invalid("MBR partitions have no names".into()));
        }
        let reserve = u64::from(spec.logical);
        let regions = self.free_regions(spec.logical);
        let (start, region_end) = match spec.start {
            Some(s) => {
                let region = regions
                    .iter()
                    .find(|(a, e)| s >= a + reserve && s < *e)
                    .ok_or_else(|| TableError::NoSpace(format!("sector {s} is not free")))?;
                (s, region.1)
            }
            None => regions
                .iter()
                .filter_map(|&(a, e)| {
                    let s = align_up(a + reserve, self.align)?;
                    let fits = match spec.sectors {
                        Some(n) => s.checked_add(n).is_some_and(|end| end <= e),
                        None => s < e,
                    };
                    fits.then_some((s, e))
                })
                .next()
                .ok_or_else(|| {
                    let largest = regions.iter().map(|(a, e)| e - a).max().unwrap_or(0);
                    TableError::NoSpace(format!(
                        "no free region fits {} (largest free region: {largest} sectors)",
                        spec.sectors
                            .map_or("a partition".to_string(), |n| format!("{n} sectors"))
                    ))
                })?,
        };
        let sectors = spec.sectors.unwrap_or(region_end - start);
        if sectors == 0
            || start
                .checked_add(sectors)
                .is_none_or(|end| end > region_end)
        {
            return Err(TableError::NoSpace(format!(
                "{sectors} sectors at sector {start} do not fit the free region ending at sector {region_end}"
            )));
        }
        let number = self.pick_number(&spec)?;
        let mut candidate = self.clone();
        candidate.partitions.push(Partition {
            number,
            start,
            sectors,
            ptype: spec.ptype,
            bootable: spec.bootable,
            name: spec.name,
            uuid: if gpt {
                Some(spec.uuid.unwrap_or_else(Uuid::new_v4))
            } else {
                None
            },
            attributes: 0,
            ebr: None,
        });
        candidate.commit_into(self)?;
        Ok(number)
    }

    fn pick_number(&self, spec: &NewPartition) -> Result<u32, TableError> {
        let used = |n: u32| self.partitions.iter().any(|p| p.number == n);
        let (range, what) = match self.scheme {
            Scheme::Gpt => (1..=self.gpt_entries, "GPT entries"),
            Scheme::Mbr if spec.logical => {
                let next = 5 + self.partitions.iter().filter(|p| p.number >= 5).count() as u32;
                return match spec.number {
                    None => Ok(next),
                    Some(n) if n == next => Ok(n),
                    Some(n) => Err(TableError::Invalid(format!(
                        "the next logical partition is number {next}, not {n}"
                    ))),
                };
            }
            Scheme::Mbr => (1..=4, "primary slots"),
        };
        match spec.number {
            Some(n) if !range.contains(&n) => Err(TableError::Invalid(format!(
                "partition number {n} is outside the {what}"
            ))),
            Some(n) if used(n) => Err(TableError::Invalid(format!("partition {n} already exists"))),
            Some(n) => Ok(n),
            None => range.into_iter().find(|&n| !used(n)).ok_or_else(|| {
                TableError::NoSpace(format!(
                    "all {what} are used{}",
                    if self.scheme == Scheme::Mbr {
                        "; make an extended partition and add logicals"
                    } else {
                        ""
                    }
                ))
            }),
        }
    }

    fn commit_into(mut self, target: &mut PartitionTable) -> Result<(), TableError> {
        self.partitions.sort_by_key(|p| p.number);
        self.validate(self.disk_sectors)?;
        *target = self;
        Ok(())
    }

    fn index_of(&self, number: u32) -> Result<usize, TableError> {
        self.partitions
            .iter()
            .position(|p| p.number == number)
            .ok_or(TableError::NoSuchPartition(number))
    }

    /// Removes partition `number`; later MBR logicals move down one number,
    /// as Linux numbers them after a re-read.
    pub fn delete(&mut self, number: u32) -> Result<Partition, TableError> {
        let index = self.index_of(number)?;
        let removed = self.partitions[index].clone();
        if removed.ptype.is_extended() && self.partitions.iter().any(|p| p.number >= 5) {
            return Err(TableError::Invalid(format!(
                "extended partition {number} still holds logical partitions; delete them first"
            )));
        }
        let mut candidate = self.clone();
        candidate.partitions.remove(index);
        if self.scheme == Scheme::Mbr && number >= 5 {
            for p in candidate
                .partitions
                .iter_mut()
                .filter(|p| p.number > number)
            {
                p.number -= 1;
            }
        }
        candidate.commit_into(self)?;
        Ok(removed)
    }

    /// Changes the length of partition `number` to `sectors`, keeping its start.
    pub fn resize(&mut self, number: u32, sectors: u64) -> Result<(), TableError> {
        let index = self.index_of(number)?;
        let mut candidate = self.clone();
        candidate.partitions[index].sectors = sectors;
        candidate.commit_into(self)
    }

    /// Grows partition `number` to the end of the free space after it.
    pub fn grow_to_fill(&mut self, number: u32) -> Result<u64, TableError> {
        let index = self.index_of(number)?;
        let p = &self.partitions[index];
        let logical = p.number >= 5 && self.scheme == Scheme::Mbr;
        let end = self
            .free_regions(logical)
            .iter()
            .find(|(a, _)| *a == p.end() || (logical && *a == p.end()))
            .map(|(_, e)| *e)
            .unwrap_or(p.end());
        let sectors = end - p.start;
        self.resize(number, sectors)?;
        Ok(sectors)
    }

    /// Sets the type of partition `number` (an MBR container stays a container).
    pub fn set_type(&mut self, number: u32, ptype: PartType) -> Result<(), TableError> {
        let index = self.index_of(number)?;
        if self.partitions[index].ptype.is_extended() != ptype.is_extended() {
            return Err(TableError::Invalid(
                "cannot turn a partition into or out of an extended one".into(),
            ));
        }
        let mut candidate = self.clone();
        candidate.partitions[index].ptype = ptype;
        candidate.commit_into(self)
    }

    /// Sets the GPT name of partition `number`.
    pub fn set_name(&mut self, number: u32, name: &str) -> Result<(), TableError> {
        if self.scheme != Scheme::Gpt {
            return Err(TableError::Invalid("MBR partitions have no names".into()));
        }
        let index = self.index_of(number)?;
        let mut candidate = self.clone();
        candidate.partitions[index].name = name.to_string();
        candidate.commit_into(self)
    }

    /// Sets or clears the bootable flag of partition `number`.
    pub fn set_bootable(&mut self, number: u32, bootable: bool) -> Result<(), TableError> {
        let index = self.index_of(number)?;
        self.partitions[index].bootable = bootable;
        Ok(())
    }

    /// Looks a partition up by number (`"2"`) or, on GPT, by name.
    pub fn find(&self, key: &str) -> Option<&Partition> {
        match key.parse::<u32>() {
            Ok(n) => self.get(n),
            Err(_) => self
                .partitions
                .iter()
                .find(|p| !p.name.is_empty() && p.name == key),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    fn spec(ptype: &str, gpt: bool, sectors: Option<u64>) -> NewPartition {
        NewPartition {
            sectors,
            ..NewPartition::new(PartType::parse(ptype, gpt).unwrap())
        }
    }

    #[test]
    fn mbr_primaries_align_and_fill() {
        let mut t = PartitionTable::new_mbr(64 * MIB, 512, 0x1234).unwrap();
        assert_eq!(t.add(spec("fat32", false, Some(16 * 2048))).unwrap(), 1);
        assert_eq!(t.add(spec("linux", false, None)).unwrap(), 2);
        assert_eq!(t.get(1).unwrap().start, 2048);
        assert_eq!(t.get(2).unwrap().start, 2048 + 16 * 2048);
        assert_eq!(t.get(2).unwrap().end(), 64 * 2048);
        assert!(matches!(
            t.add(spec("linux", false, None)),
            Err(TableError::NoSpace(_))
        ));
    }

    #[test]
    fn mbr_logicals_keep_room_for_ebrs_and_renumber_on_delete() {
        let mut t = PartitionTable::new_mbr(64 * MIB, 512, 1).unwrap();
        t.add(spec("linux", false, Some(8 * 2048))).unwrap();
        assert_eq!(t.add(spec("extended", false, None)).unwrap(), 2);
        for _ in 0..3 {
            let n = t
                .add(NewPartition {
                    logical: true,
                    ..spec("linux", false, Some(4 * 2048))
                })
                .unwrap();
            assert_eq!(t.get(n).unwrap().start % 2048, 0);
        }
        // Written and read back, the chain starts at the container and each EBR precedes its partition.
        let disk = crate::Ramdisk::new(64 * MIB).unwrap();
        super::super::write(&disk, &t).unwrap();
        let back = super::super::probe(&disk).unwrap().unwrap();
        let logicals: Vec<_> = back.partitions.iter().filter(|p| p.number >= 5).collect();
        assert_eq!(logicals.len(), 3);
        assert_eq!(logicals[0].ebr, Some(t.get(2).unwrap().start));
        assert!(logicals.iter().all(|p| p.ebr.unwrap() < p.start));
        let strip = |t: &PartitionTable| {
            t.partitions
                .iter()
                .map(|p| (p.number, p.start, p.sectors, p.ptype))
                .collect::<Vec<_>>()
        };
        assert_eq!(strip(&back), strip(&t));
        assert_eq!(t.partitions.iter().filter(|p| p.number >= 5).count(), 3);
        assert!(
            t.delete(2).is_err(),
            "container with logicals must not be deleted"
        );
        let six_start = t.get(7).unwrap().start;
        t.delete(6).unwrap();
        assert_eq!(t.get(6).unwrap().start, six_start);
        assert!(t.get(7).is_none());
    }

    #[test]
    fn gpt_edits_validate_before_committing() {
        let mut t = PartitionTable::new_gpt(64 * MIB, 512, Uuid::nil()).unwrap();
        assert_eq!(t.usable, (34, 64 * 2048 - 34));
        t.add(NewPartition {
            name: "boot".into(),
            ..spec("efi", true, Some(2048))
        })
        .unwrap();
        t.add(NewPartition {
            number: Some(5),
            ..spec("linux", true, Some(2048))
        })
        .unwrap();
        let before = t.clone();
        assert!(t.resize(1, 10 * 2048).is_err(), "overlap must be refused");
        assert!(t.set_name(1, &"x".repeat(37)).is_err());
        assert!(
            t.add(spec("linux", false, None)).is_err(),
            "MBR type on GPT"
        );
        assert_eq!(t, before);
        assert_eq!(t.find("boot").unwrap().number, 1);
        assert_eq!(
            t.grow_to_fill(5).unwrap(),
            t.usable.1 + 1 - t.get(5).unwrap().start
        );
    }
}
