//! A directory loaded into memory: its entry sets by slot, an index from up-cased name to
//! slot, and the free slot runs, so lookup and create are O(1) rather than a scan per call.
//!
//! A slot is the index of a 32-byte entry in the directory. Parsing stops at the first
//! end-of-directory entry (type 0x00); deleted entries (in-use bit clear) before it are the
//! free runs. A set whose checksum, name hash or structure is wrong is kept as damaged: its
//! slots stay occupied and its name (when readable) answers `EIO`.

use crate::entry_set::{
    Damage, EntrySet, ENTRY, IN_USE, TYPE_BITMAP, TYPE_END, TYPE_FILE, TYPE_LABEL, TYPE_UPCASE,
};
use crate::extents::Extents;
use crate::upcase::Upcase;
use std::collections::{BTreeMap, HashMap};

/// Identifies a directory: its first cluster.
pub type DirId = u32;

/// One named entry of a directory.
#[derive(Clone, Debug)]
pub struct Named {
    /// The name as stored (case preserved).
    pub name: String,
    /// The up-cased name, its key in [`DirIndex::by_key`].
    pub key: Box<[u16]>,
    /// The set; `None` when damaged.
    pub set: Option<EntrySet>,
    /// Entries the set occupies.
    pub entries: u32,
}

/// A special entry of the root directory: its slot and raw bytes.
pub type Special = (u32, [u8; ENTRY]);

/// The parsed contents of one directory.
#[derive(Debug, Default)]
pub struct DirIndex {
    /// Clusters of the directory.
    pub extents: Extents,
    /// Entries available without growing.
    pub capacity: u32,
    /// Sets by the slot of their File entry.
    pub entries: BTreeMap<u32, Named>,
    /// Up-cased name to slot.
    pub by_key: HashMap<Box<[u16]>, u32>,
    /// First slot of the end-of-directory area (all later slots unused).
    pub end: u32,
    /// Free slot runs below `end`: start to length.
    pub free_runs: BTreeMap<u32, u32>,
    /// Root only: the volume label entry.
    pub label: Option<Special>,
    /// Root only: the allocation bitmap entry.
    pub bitmap: Option<Special>,
    /// Root only: the up-case table entry.
    pub upcase: Option<Special>,
}

impl DirIndex {
    /// Parses the raw bytes of a directory.
    pub fn parse(bytes: &[u8], extents: Extents, upcase: &Upcase) -> DirIndex {
        let capacity = (bytes.len() / ENTRY) as u32;
        let mut index = DirIndex {
            extents,
            capacity,
            end: capacity,
            ..DirIndex::default()
        };
        let entry = |i: u32| &bytes[i as usize * ENTRY..(i as usize + 1) * ENTRY];
        let mut free_from: Option<u32> = None;
        let mut i = 0u32;
        while i < capacity {
            let e = entry(i);
            let kind = e[0];
            if kind == TYPE_END {
                index.end = i;
                break;
            }
            if kind & IN_USE == 0 {
                free_from.get_or_insert(i);
                i += 1;
                continue;
            }
            if let Some(start) = free_from.take() {
                index.free_runs.insert(start, i - start);
            }
            let special = || (i, <[u8; ENTRY]>::try_from(e).expect("one entry"));
            match kind {
                TYPE_LABEL => index.label = Some(special()),
                TYPE_BITMAP if index.bitmap.is_none() => index.bitmap = Some(special()),
                TYPE_UPCASE => index.upcase = Some(special()),
                TYPE_FILE => {
                    let count = e[1] as u32 + 1;
                    let end = (i + count).min(capacity);
                    let raw = &bytes[i as usize * ENTRY..end as usize * ENTRY];
                    let found = if end - i == count {
                        EntrySet::decode(raw, |n| crate::entry_set::name_hash(&upcase.key(n)))
                    } else {
                        Err(Damage::Structure)
                    };
                    match found {
                        Ok((set, name)) => index.insert_parsed(i, &name, Some(set), count, upcase),
                        Err(Damage::Checksum(name)) => {
                            index.insert_parsed(i, &name, None, count, upcase)
                        }
                        // Unreadable: this slot stays occupied, nothing is listed, and the
                        // entries after it are looked at on their own.
                        Err(Damage::Structure) => {
                            i += 1;
                            continue;
                        }
                    }
                    i = end;
                    continue;
                }
                _ => {}
            }
            i += 1;
        }
        if let Some(start) = free_from {
            if index.end > start {
                index.free_runs.insert(start, index.end - start);
            }
        }
        index
    }

    fn insert_parsed(
        &mut self,
        slot: u32,
        name: &[u16],
        set: Option<EntrySet>,
        entries: u32,
        up: &Upcase,
    ) {
        let key = up.key(name);
        // A corrupt directory may repeat a name: the first one wins.
        self.by_key.entry(key.clone()).or_insert(slot);
        self.entries.insert(
            slot,
            Named {
                name: String::from_utf16_lossy(name),
                key,
                set,
                entries,
            },
        );
    }

    /// Device offset of `slot` given the volume's cluster offsets.
    pub fn slot_offset(
        &self,
        slot: u32,
        cluster_shift: u32,
        offset_of: impl Fn(u32) -> u64,
    ) -> Option<u64> {
        let byte = slot as u64 * ENTRY as u64;
        let (disk, _) = self.extents.locate((byte >> cluster_shift) as u32)?;
        Some(offset_of(disk) + (byte & ((1u64 << cluster_shift) - 1)))
    }

    /// Finds `count` consecutive free slots, or `None` if the directory must grow.
    pub fn find_free(&mut self, count: u32) -> Option<u32> {
        let found = self
            .free_runs
            .iter()
            .find(|(_, &len)| len >= count)
            .map(|(&s, &l)| (s, l));
        if let Some((start, len)) = found {
            self.free_runs.remove(&start);
            if len > count {
                self.free_runs.insert(start + count, len - count);
            }
            return Some(start);
        }
        if self.end + count <= self.capacity {
            let start = self.end;
            self.end += count;
            return Some(start);
        }
        None
    }

    /// Returns slots to the free runs, merging neighbours.
    pub fn release(&mut self, start: u32, count: u32) {
        let (mut start, mut count) = (start, count);
        if let Some((&prev, &len)) = self.free_runs.range(..start).next_back() {
            if prev + len == start {
                self.free_runs.remove(&prev);
                start = prev;
                count += len;
            }
        }
        if let Some(len) = self.free_runs.remove(&(start + count)) {
            count += len;
        }
        self.free_runs.insert(start, count);
    }

    /// Adds a set written at `slot`.
    pub fn insert(&mut self, slot: u32, key: Box<[u16]>, name: String, set: EntrySet) {
        self.by_key.insert(key.clone(), slot);
        let entries = set.entries();
        self.entries.insert(
            slot,
            Named {
                name,
                key,
                set: Some(set),
                entries,
            },
        );
    }

    /// Forgets the set at `slot` (its entries were marked deleted) and frees its slots.
    pub fn remove(&mut self, slot: u32) -> Option<Named> {
        let named = self.entries.remove(&slot)?;
        if self.by_key.get(&named.key) == Some(&slot) {
            self.by_key.remove(&named.key);
        }
        self.release(slot, named.entries);
        Some(named)
    }

    /// The slot of the set named `key` (up-cased).
    pub fn find(&self, key: &[u16]) -> Option<u32> {
        self.by_key.get(key).copied()
    }

    /// True if no file or directory is in it (damaged sets count as present).
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}
