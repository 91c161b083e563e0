//! MBR and GPT partition tables: probe, edit, write.
//!
//! Written by hand on purpose: the `gpt` crate (4.1) panics on a CRC-valid
//! header whose entry size is not 128 (`assert_eq!`), never checks the entry
//! array CRC and so never falls back to the backup when only the entries are
//! damaged; `mbrman` (0.6) adds EBR offsets in unchecked `u32` and does not
//! bound them by the disk. A probe that must survive fuzzed images needs
//! checked arithmetic everywhere, so the codec lives here, on one model used
//! for reading and writing. Both crates remain test oracles.
//!
//! Numbering follows Linux: MBR primaries are 1 to 4, logicals start at 5 in
//! chain order; GPT partitions keep their entry slot number (1-based).

mod edit;
mod gpt;
mod mbr;
mod types;

pub use edit::NewPartition;
pub use types::{is_extended_code, PartType, PROTECTIVE_MBR_CODE};

use crate::device::BlockDevice;
use crate::errno::Errno;
use uuid::Uuid;

/// The partitioning scheme of a disk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scheme {
    /// DOS/MBR table with up to 4 primaries and a chain of logicals.
    Mbr,
    /// GUID partition table behind a protective MBR.
    Gpt,
}

impl Scheme {
    /// The label sfdisk prints for this scheme (`dos` or `gpt`).
    pub fn sfdisk_label(&self) -> &'static str {
        match self {
            Scheme::Mbr => "dos",
            Scheme::Gpt => "gpt",
        }
    }
}

/// One partition, in sectors of its table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Partition {
    /// Linux number: MBR 1..=4 primaries, 5.. logicals; GPT slot + 1.
    pub number: u32,
    /// First sector.
    pub start: u64,
    /// Length in sectors.
    pub sectors: u64,
    /// Type code or GUID.
    pub ptype: PartType,
    /// MBR active flag, or GPT attribute bit 2 (legacy BIOS bootable).
    pub bootable: bool,
    /// GPT partition name (empty on MBR).
    pub name: String,
    /// GPT unique partition GUID.
    pub uuid: Option<Uuid>,
    /// GPT attribute bits other than bit 2.
    pub attributes: u64,
    /// MBR logicals: the sector of the EBR that describes this partition.
    pub ebr: Option<u64>,
}

impl Partition {
    /// One past the last sector.
    pub fn end(&self) -> u64 {
        self.start.saturating_add(self.sectors)
    }

    /// True for an MBR logical partition.
    pub fn is_logical(&self) -> bool {
        self.number >= 5 && self.ebr.is_some()
    }
}

/// An in-memory partition table: what [`probe()`] finds and [`write()`] stores.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PartitionTable {
    /// MBR or GPT.
    pub scheme: Scheme,
    /// Bytes per sector the table is expressed in.
    pub sector_size: u32,
    /// Disk size in sectors when the table was read or created.
    pub disk_sectors: u64,
    /// MBR disk signature (also kept in the protective MBR of GPT disks).
    pub mbr_id: u32,
    /// GPT disk GUID.
    pub disk_guid: Option<Uuid>,
    /// GPT: first and last sector partitions may use.
    pub usable: (u64, u64),
    /// GPT: number of entries in the entry array.
    pub gpt_entries: u32,
    /// Partitions, sorted by number.
    pub partitions: Vec<Partition>,
    /// Default alignment of new partitions, in sectors (1 MiB by default).
    pub align: u64,
    /// Problems the probe recovered from (e.g. a damaged primary GPT header).
    pub warnings: Vec<String>,
}

/// Why a table could not be read, edited or written.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum TableError {
    /// The device could not be read or written.
    #[error("I/O error: {0}")]
    Io(Errno),
    /// The device is too small to hold any table.
    #[error("disk of {0} bytes is too small for a partition table")]
    DiskTooSmall(u64),
    /// A partition extends past the end of the disk.
    #[error("partition {number} (sectors {start}..{end}) extends past the end of the disk ({disk} sectors)")]
    PastEnd {
        /// The partition.
        number: u32,
        /// Its first sector.
        start: u64,
        /// One past its last sector.
        end: u64,
        /// Disk size in sectors.
        disk: u64,
    },
    /// Two partitions share sectors.
    #[error("partitions {0} and {1} overlap")]
    Overlap(u32, u32),
    /// The chain of extended boot records revisits a sector.
    #[error("the extended partition chain loops back to sector {0}")]
    ExtendedLoop(u64),
    /// The chain of extended boot records is otherwise malformed.
    #[error("bad extended partition chain: {0}")]
    BadExtended(String),
    /// A GPT disk whose primary and backup tables are both unusable.
    #[error("GPT unusable: primary: {primary}; backup: {backup}")]
    GptCorrupt {
        /// Why the primary header or entries were rejected.
        primary: String,
        /// Why the backup was rejected.
        backup: String,
    },
    /// An edit that the table cannot take.
    #[error("{0}")]
    Invalid(String),
    /// No free space for the requested partition.
    #[error("{0}")]
    NoSpace(String),
    /// The named partition does not exist.
    #[error("no partition {0}")]
    NoSuchPartition(u32),
}

impl From<Errno> for TableError {
    fn from(e: Errno) -> Self {
        TableError::Io(e)
    }
}

impl From<TableError> for Errno {
    fn from(e: TableError) -> Errno {
        match e {
            TableError::Io(errno) => errno,
            TableError::NoSuchPartition(_) => Errno::ENXIO,
            TableError::NoSpace(_) => Errno::ENOSPC,
            TableError::Invalid(_) => Errno::EINVAL,
            // On-disk corruption, as filesystems report it.
            _ => Errno::EUCLEAN,
        }
    }
}

/// Reads `count` sectors at `lba`, or an I/O error if they are not all there.
pub(crate) fn read_sectors(
    dev: &dyn BlockDevice,
    sector_size: u32,
    lba: u64,
    count: u64,
) -> Result<Vec<u8>, TableError> {
    let offset = lba
        .checked_mul(sector_size as u64)
        .ok_or(TableError::Io(Errno::EIO))?;
    let len = count
        .checked_mul(sector_size as u64)
        .ok_or(TableError::Io(Errno::EIO))?;
    let len = usize::try_from(len).map_err(|_| TableError::Io(Errno::ENOMEM))?;
    let mut buf = vec![0u8; len];
    dev.read_exact_at(&mut buf, offset)?;
    Ok(buf)
}

/// Finds the partition table of `dev`, if it has one.
///
/// `Ok(None)`: no table (blank disk, or a filesystem written to the whole
/// disk). `Err`: a table is there but cannot be trusted; the message says why.
/// A damaged primary GPT falls back to the backup and records a warning.
pub fn probe(dev: &dyn BlockDevice) -> Result<Option<PartitionTable>, TableError> {
    let sector_size = dev.sector_size().max(512);
    if dev.size() < 2 * sector_size as u64 {
        return Err(TableError::DiskTooSmall(dev.size()));
    }
    let lba0 = read_sectors(dev, sector_size, 0, 1)?;
    match mbr::classify(&lba0) {
        mbr::Kind::None => Ok(None),
        mbr::Kind::Protective => gpt::probe(dev, &lba0).map(Some),
        mbr::Kind::Dos => mbr::probe(dev, sector_size, &lba0).map(Some),
    }
}

/// Writes `table` to `dev`: the whole table, validated first, so nothing is
/// written if the table is inconsistent or does not fit the device.
pub fn write(dev: &dyn BlockDevice, table: &PartitionTable) -> Result<(), TableError> {
    if dev.read_only() {
        return Err(TableError::Io(Errno::EROFS));
    }
    let disk_sectors = dev.size() / table.sector_size as u64;
    let mut table = table.clone();
    if table.scheme == Scheme::Gpt {
        // The backup goes to the end of the disk as it is now (it may have grown).
        table.usable = gpt::usable_area(disk_sectors, table.sector_size, table.gpt_entries)
            .ok_or(TableError::DiskTooSmall(dev.size()))?;
    }
    table.validate(disk_sectors)?;
    match table.scheme {
        Scheme::Mbr => mbr::write(dev, &table)?,
        Scheme::Gpt => gpt::write(dev, &table, disk_sectors)?,
    }
    dev.flush()?;
    Ok(())
}

/// Makes the protective MBR of GPT disk `dev` (holding `table`) a hybrid MBR that also
/// lists `hybrids` (partition number, MBR type code; one to three), for firmware that reads
/// only MBRs (e.g. a Raspberry Pi's boot ROM).
pub fn write_hybrid_mbr(
    dev: &dyn BlockDevice,
    table: &PartitionTable,
    hybrids: &[(u32, u8)],
) -> Result<(), TableError> {
    if dev.read_only() {
        return Err(TableError::Io(Errno::EROFS));
    }
    mbr::write_hybrid(dev, table, hybrids)?;
    dev.flush()?;
    Ok(())
}

impl PartitionTable {
    /// The partition numbered `number`.
    pub fn get(&self, number: u32) -> Option<&Partition> {
        self.partitions.iter().find(|p| p.number == number)
    }

    /// The MBR extended container, if any.
    pub fn extended(&self) -> Option<&Partition> {
        self.partitions
            .iter()
            .find(|p| p.ptype.is_extended() && p.number <= 4)
    }

    /// Byte range (offset, length) of a partition.
    pub fn byte_range(&self, p: &Partition) -> (u64, u64) {
        let ss = self.sector_size as u64;
        (p.start.saturating_mul(ss), p.sectors.saturating_mul(ss))
    }

    /// Checks that every partition lies on a `disk_sectors` disk (and in the
    /// usable area for GPT), that none overlap, and that MBR logicals sit
    /// inside the extended container.
    pub fn validate(&self, disk_sectors: u64) -> Result<(), TableError> {
        for p in &self.partitions {
            if p.sectors == 0 {
                return Err(TableError::Invalid(format!(
                    "partition {} has no sectors",
                    p.number
                )));
            }
            if p.start
                .checked_add(p.sectors)
                .is_none_or(|end| end > disk_sectors)
            {
                return Err(TableError::PastEnd {
                    number: p.number,
                    start: p.start,
                    end: p.end(),
                    disk: disk_sectors,
                });
            }
        }
        match self.scheme {
            Scheme::Mbr => mbr::validate(self)?,
            Scheme::Gpt => gpt::validate(self)?,
        }
        Ok(())
    }
}

/// Fails with the first pair of partitions that share a sector.
pub(crate) fn check_overlaps<'a>(
    parts: impl Iterator<Item = &'a Partition>,
) -> Result<(), TableError> {
    let mut sorted: Vec<&Partition> = parts.collect();
    sorted.sort_by_key(|p| (p.start, p.number));
    for pair in sorted.windows(2) {
        if pair[1].start < pair[0].end() {
            let (a, b) = (
                pair[0].number.min(pair[1].number),
                pair[0].number.max(pair[1].number),
            );
            return Err(TableError::Overlap(a, b));
        }
    }
    Ok(())
}
