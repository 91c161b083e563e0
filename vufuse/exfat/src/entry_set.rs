//! Directory entry sets: a File entry (0x85), a Stream Extension (0xC0) and 1 to 17 File Name
//! entries (0xC1) of 15 UTF-16 units each, 32 bytes apiece, consecutive in a directory.
//!
//! The File entry carries the attributes, three timestamps and the SetChecksum over all the
//! entries of the set; the Stream Extension the NameLength, NameHash (over the up-cased name),
//! flags (AllocationPossible, NoFatChain), FirstCluster, ValidDataLength and DataLength.
//! A set is kept as its raw bytes, so entries this driver does not interpret (vendor
//! extensions after the name) survive every rewrite; the checksum is recomputed on each.

use crate::time::{self, Stamp};
use std::time::SystemTime;
use vudev::Errno;

/// Bytes per directory entry.
pub const ENTRY: usize = 32;
/// End-of-directory marker: this and every later entry are unused.
pub const TYPE_END: u8 = 0x00;
/// Bit of the entry type: the entry is in use.
pub const IN_USE: u8 = 0x80;
/// Allocation Bitmap entry.
pub const TYPE_BITMAP: u8 = 0x81;
/// Up-case Table entry.
pub const TYPE_UPCASE: u8 = 0x82;
/// Volume Label entry.
pub const TYPE_LABEL: u8 = 0x83;
/// File entry (primary of a file or directory set).
pub const TYPE_FILE: u8 = 0x85;
/// Stream Extension entry.
pub const TYPE_STREAM: u8 = 0xC0;
/// File Name entry.
pub const TYPE_NAME: u8 = 0xC1;

/// File attribute: read-only.
pub const ATTR_READ_ONLY: u16 = 0x01;
/// File attribute: directory.
pub const ATTR_DIRECTORY: u16 = 0x10;
/// File attribute: archive (changed since the last backup).
pub const ATTR_ARCHIVE: u16 = 0x20;

/// Stream flag: the set has an allocation (always set by this driver).
pub const FLAG_ALLOCATION_POSSIBLE: u8 = 0x01;
/// Stream flag: the clusters are contiguous and the FAT is not used for them.
pub const FLAG_NO_FAT_CHAIN: u8 = 0x02;

/// Longest name, in UTF-16 units.
pub const MAX_NAME: usize = 255;
/// Units per File Name entry.
const UNITS_PER_ENTRY: usize = 15;

/// What a set says about its file, decoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FileMeta {
    /// FileAttributes.
    pub attr: u16,
    /// Creation time.
    pub created: SystemTime,
    /// Last modification.
    pub modified: SystemTime,
    /// Last access (2-second resolution).
    pub accessed: SystemTime,
    /// GeneralSecondaryFlags of the stream.
    pub flags: u8,
    /// First cluster (0: none).
    pub first_cluster: u32,
    /// Bytes written; the rest of `data_len` reads as zeros.
    pub valid_len: u64,
    /// Size of the file.
    pub data_len: u64,
}

impl FileMeta {
    /// Metadata of a new, empty file or directory made at `now`.
    pub fn new(attr: u16, now: SystemTime) -> FileMeta {
        FileMeta {
            attr,
            created: now,
            modified: now,
            accessed: now,
            flags: FLAG_ALLOCATION_POSSIBLE,
            first_cluster: 0,
            valid_len: 0,
            data_len: 0,
        }
    }

    /// True for a directory.
    pub fn is_dir(&self) -> bool {
        self.attr & ATTR_DIRECTORY != 0
    }

    /// True if the clusters are one run not described by the FAT.
    pub fn contiguous(&self) -> bool {
        self.flags & FLAG_NO_FAT_CHAIN != 0
    }
}

/// Why a set cannot be used.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Damage {
    /// The set's structure is wrong (counts, entry types): its name is unknown.
    Structure,
    /// The set is readable but its checksum or name hash is wrong: the name is known.
    Checksum(Vec<u16>),
}

/// One entry set, as raw bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EntrySet {
    raw: Box<[u8]>,
}

/// SetChecksum over the entries of a set (bytes 2 and 3 of the first are the checksum itself).
pub fn set_checksum(raw: &[u8]) -> u16 {
    raw.iter().enumerate().fold(0u16, |sum, (i, &b)| {
        if i == 2 || i == 3 {
            sum
        } else {
            sum.rotate_right(1).wrapping_add(b as u16)
        }
    })
}

/// NameHash over an up-cased name (each unit low byte first).
pub fn name_hash(upcased: &[u16]) -> u16 {
    upcased.iter().fold(0u16, |sum, &u| {
        let [lo, hi] = u.to_le_bytes();
        let sum = sum.rotate_right(1).wrapping_add(lo as u16);
        sum.rotate_right(1).wrapping_add(hi as u16)
    })
}

/// The UTF-16 units of a name a user gave, or why it cannot be stored.
pub fn check_name(name: &str) -> Result<Vec<u16>, Errno> {
    let units: Vec<u16> = name.encode_utf16().collect();
    if units.is_empty() || name == "." || name == ".." {
        return Err(Errno::EINVAL);
    }
    if units.len() > MAX_NAME {
        return Err(Errno::ENAMETOOLONG);
    }
    let bad = |u: u16| u < 0x20 || b"\"*/:<>?\\|".iter().any(|&c| c as u16 == u);
    if units.iter().any(|&u| bad(u)) {
        return Err(Errno::EINVAL);
    }
    Ok(units)
}

fn le16(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}
fn le32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}
fn le64(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

impl EntrySet {
    /// Entries needed for a name of `units` UTF-16 units.
    pub fn entries_for(units: usize) -> usize {
        2 + units.div_ceil(UNITS_PER_ENTRY)
    }

    /// Checks and decodes the set whose File entry starts `raw` (which holds exactly its
    /// SecondaryCount + 1 entries); returns it with its name. `hash_of` up-cases a name and
    /// hashes it.
    pub fn decode(
        raw: &[u8],
        hash_of: impl Fn(&[u16]) -> u16,
    ) -> Result<(EntrySet, Vec<u16>), Damage> {
        let count = raw.len() / ENTRY;
        if raw.len() % ENTRY != 0
            || count < 3
            || raw[0] != TYPE_FILE
            || raw[1] as usize + 1 != count
        {
            return Err(Damage::Structure);
        }
        let stream = &raw[ENTRY..2 * ENTRY];
        if stream[0] != TYPE_STREAM {
            return Err(Damage::Structure);
        }
        let name_len = stream[3] as usize;
        let name_entries = name_len.div_ceil(UNITS_PER_ENTRY);
        if name_len == 0 || 2 + name_entries > count {
            return Err(Damage::Structure);
        }
        let mut name = Vec::with_capacity(name_len);
        for e in 0..name_entries {
            let entry = &raw[(2 + e) * ENTRY..(3 + e) * ENTRY];
            if entry[0] != TYPE_NAME {
                return Err(Damage::Structure);
            }
            for u in 0..UNITS_PER_ENTRY {
                if name.len() < name_len {
                    name.push(le16(entry, 2 + 2 * u));
                }
            }
        }
        if raw[2 * ENTRY..]
            .chunks(ENTRY)
            .any(|e| e[0] & IN_USE == 0 || e[0] & 0x40 == 0)
        {
            // A secondary entry that is deleted or not a secondary.
            return Err(Damage::Structure);
        }
        if set_checksum(raw) != le16(raw, 2) || hash_of(&name) != le16(stream, 4) {
            return Err(Damage::Checksum(name));
        }
        Ok((
            EntrySet {
                raw: raw.to_vec().into_boxed_slice(),
            },
            name,
        ))
    }

    /// A new set for `name` (already checked) with `hash` and `meta`.
    pub fn new(name: &[u16], hash: u16, meta: &FileMeta) -> EntrySet {
        let count = Self::entries_for(name.len());
        let mut raw = vec![0u8; count * ENTRY];
        raw[0] = TYPE_FILE;
        raw[ENTRY] = TYPE_STREAM;
        let mut set = EntrySet {
            raw: raw.into_boxed_slice(),
        };
        set.write_name(name, hash, &[]);
        set.set_meta(meta);
        set
    }

    /// The same file under a new name (entries past the name entries are kept).
    pub fn renamed(&self, name: &[u16], hash: u16) -> EntrySet {
        let old_names = (self.raw[ENTRY + 3] as usize).div_ceil(UNITS_PER_ENTRY);
        let extra = self.raw[(2 + old_names) * ENTRY..].to_vec();
        let count = Self::entries_for(name.len()) + extra.len() / ENTRY;
        let mut raw = vec![0u8; count * ENTRY];
        raw[..2 * ENTRY].copy_from_slice(&self.raw[..2 * ENTRY]);
        let mut set = EntrySet {
            raw: raw.into_boxed_slice(),
        };
        set.write_name(name, hash, &extra);
        set.seal();
        set
    }

    fn write_name(&mut self, name: &[u16], hash: u16, extra: &[u8]) {
        let count = self.raw.len() / ENTRY;
        self.raw[1] = (count - 1) as u8;
        self.raw[ENTRY + 3] = name.len() as u8;
        self.raw[ENTRY + 4..ENTRY + 6].copy_from_slice(&hash.to_le_bytes());
        for (e, chunk) in name.chunks(UNITS_PER_ENTRY).enumerate() {
            let entry = &mut self.raw[(2 + e) * ENTRY..(3 + e) * ENTRY];
            entry.fill(0);
            entry[0] = TYPE_NAME;
            for (u, unit) in chunk.iter().enumerate() {
                entry[2 + 2 * u..4 + 2 * u].copy_from_slice(&unit.to_le_bytes());
            }
        }
        let tail = self.raw.len() - extra.len();
        self.raw[tail..].copy_from_slice(extra);
    }

    /// Recomputes the SetChecksum.
    fn seal(&mut self) {
        let sum = set_checksum(&self.raw);
        self.raw[2..4].copy_from_slice(&sum.to_le_bytes());
    }

    /// The raw bytes, as written to the directory.
    pub fn raw(&self) -> &[u8] {
        &self.raw
    }

    /// Number of 32-byte entries.
    pub fn entries(&self) -> u32 {
        (self.raw.len() / ENTRY) as u32
    }

    /// The decoded metadata.
    pub fn meta(&self) -> FileMeta {
        let f = &self.raw[..ENTRY];
        let s = &self.raw[ENTRY..2 * ENTRY];
        let stamp = |at: usize, ms10: Option<usize>, utc: usize| Stamp {
            packed: le32(f, at),
            ms10: ms10.map_or(0, |i| f[i]),
            utc: f[utc],
        };
        FileMeta {
            attr: le16(f, 4),
            created: time::decode(stamp(8, Some(20), 22)),
            modified: time::decode(stamp(12, Some(21), 23)),
            accessed: time::decode(stamp(16, None, 24)),
            flags: s[1],
            first_cluster: le32(s, 20),
            valid_len: le64(s, 8),
            data_len: le64(s, 24),
        }
    }

    /// Stores `meta` in the set and reseals it.
    pub fn set_meta(&mut self, meta: &FileMeta) {
        let created = time::encode(meta.created);
        let modified = time::encode(meta.modified);
        let accessed = time::encode(meta.accessed);
        let f = &mut self.raw[..ENTRY];
        f[4..6].copy_from_slice(&meta.attr.to_le_bytes());
        f[8..12].copy_from_slice(&created.packed.to_le_bytes());
        f[12..16].copy_from_slice(&modified.packed.to_le_bytes());
        f[16..20].copy_from_slice(&accessed.packed.to_le_bytes());
        f[20] = created.ms10;
        f[21] = modified.ms10;
        f[22] = created.utc;
        f[23] = modified.utc;
        f[24] = accessed.utc;
        let s = &mut self.raw[ENTRY..2 * ENTRY];
        s[1] = meta.flags;
        s[8..16].copy_from_slice(&meta.valid_len.to_le_bytes());
        s[20..24].copy_from_slice(&meta.first_cluster.to_le_bytes());
        s[24..32].copy_from_slice(&meta.data_len.to_le_bytes());
        self.seal();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_set_decodes_to_its_name_and_meta_and_a_flipped_bit_is_caught() {
        let name: Vec<u16> = "a fairly long name, over fifteen units"
            .encode_utf16()
            .collect();
        let hash = |n: &[u16]| name_hash(n);
        let mut meta = FileMeta::new(ATTR_ARCHIVE, SystemTime::now());
        meta.data_len = 5_000_000_000;
        meta.valid_len = 1234;
        meta.first_cluster = 77;
        let set = EntrySet::new(&name, name_hash(&name), &meta);
        assert_eq!(set.entries(), 5);
        let (back, got) = EntrySet::decode(set.raw(), hash).unwrap();
        assert_eq!(got, name);
        let m = back.meta();
        assert_eq!(
            (m.data_len, m.valid_len, m.first_cluster),
            (5_000_000_000, 1234, 77)
        );
        let mut raw = set.raw().to_vec();
        raw[40] ^= 1;
        assert_eq!(
            EntrySet::decode(&raw, hash),
            Err(Damage::Checksum(name.clone()))
        );
        let short: Vec<u16> = "x".encode_utf16().collect();
        let renamed = set.renamed(&short, name_hash(&short));
        assert_eq!(renamed.entries(), 3);
        assert_eq!(EntrySet::decode(renamed.raw(), hash).unwrap().1, short);
    }

    #[test]
    fn names_are_checked() {
        assert_eq!(check_name("a:b"), Err(Errno::EINVAL));
        assert_eq!(check_name(&"x".repeat(256)), Err(Errno::ENAMETOOLONG));
        assert_eq!(check_name("😀").unwrap().len(), 2);
    }
}
