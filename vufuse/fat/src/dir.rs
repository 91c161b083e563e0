//! A directory loaded into memory: its entries in slot order, a name index,
//! the set of short names in use and the free slot runs, so lookups, creates
//! and short-name generation are O(1) instead of a scan per call.

use super::bpb::Geometry;
use super::dirent::{self, LfnPart, ShortEntry, ATTR_LFN, ATTR_VOLUME_ID, DELETED, SLOT};
use std::collections::{BTreeMap, HashMap, HashSet};

/// Identifies a directory: its first cluster (0 for a FAT12/16 fixed root).
pub type DirId = u32;

/// One named entry of a directory.
#[derive(Clone, Debug)]
pub struct Named {
    /// The name shown to users (long name, or short name with case flags).
    pub name: String,
    /// First slot of the entry (its first LFN slot, or the short slot).
    pub first_slot: u32,
    /// The 8.3 entry with the metadata.
    pub entry: ShortEntry,
}

/// The parsed contents of one directory.
#[derive(Debug)]
pub struct DirIndex {
    /// Clusters of the directory (empty for a fixed root).
    pub clusters: Vec<u32>,
    /// Slots available without growing.
    pub capacity: u32,
    /// Entries keyed by the slot of their short entry.
    pub entries: BTreeMap<u32, Named>,
    /// Case-folded name to short slot.
    pub by_key: HashMap<String, u32>,
    /// Short names in use (for generating new ones).
    pub shorts: HashSet<[u8; 11]>,
    /// First slot after the last ever used one (all later slots are 0x00).
    pub end: u32,
    /// Free slot runs below `end`: start to length.
    pub free_runs: BTreeMap<u32, u32>,
    /// The parent directory, from the `..` entry (root for the root).
    pub parent: DirId,
    /// Slot of the `..` entry, to fix it when the directory moves.
    pub dotdot_slot: Option<u32>,
    /// Volume label entry found here (root only).
    pub label: Option<String>,
}

impl DirIndex {
    /// Parses the raw bytes of a directory. `root` is the id the root has.
    pub fn parse(bytes: &[u8], clusters: Vec<u32>, root: DirId) -> DirIndex {
        let capacity = (bytes.len() / SLOT) as u32;
        let mut index = DirIndex {
            clusters,
            capacity,
            entries: BTreeMap::new(),
            by_key: HashMap::new(),
            shorts: HashSet::new(),
            end: capacity,
            free_runs: BTreeMap::new(),
            parent: root,
            dotdot_slot: None,
            label: None,
        };
        // Long name under construction: (first slot, next expected ordinal, checksum, parts)
        let mut lfn: Option<(u32, u8, u8, Vec<[u16; 13]>)> = None;
        let mut free_from: Option<u32> = None;
        for i in 0..capacity {
            let slot = &bytes[i as usize * SLOT..(i as usize + 1) * SLOT];
            if slot[0] == 0 {
                index.end = i;
                break;
            }
            if slot[0] == DELETED {
                free_from.get_or_insert(i);
                lfn = None;
                continue;
            }
            if let Some(start) = free_from.take() {
                index.free_runs.insert(start, i - start);
            }
            if slot[11] & 0x3F == ATTR_LFN {
                let part = LfnPart::decode(slot);
                let ordinal = part.ordinal & 0x1F;
                lfn = if part.ordinal & 0x40 != 0 && ordinal > 0 {
                    Some((i, ordinal - 1, part.checksum, vec![part.units]))
                } else {
                    match lfn.take() {
                        Some((start, expected, sum, mut parts))
                            if ordinal == expected && ordinal > 0 && sum == part.checksum =>
                        {
                            parts.push(part.units);
                            Some((start, expected - 1, sum, parts))
                        }
                        _ => None,
                    }
                };
                continue;
            }
            let entry = ShortEntry::decode(slot);
            let long = lfn.take();
            if entry.attr & ATTR_VOLUME_ID != 0 && !entry.is_dir() {
                index.label = Some(String::from_utf8_lossy(&entry.name).trim_end().to_string());
                continue;
            }
            if &entry.name == b".          " {
                continue;
            }
            if &entry.name == b"..         " {
                index.dotdot_slot = Some(i);
                index.parent = if entry.cluster == 0 {
                    root
                } else {
                    entry.cluster
                };
                continue;
            }
            let (name, first_slot) = match long {
                Some((start, 0, sum, parts)) if sum == dirent::lfn_checksum(&entry.name) => {
                    let units: Vec<u16> = parts
                        .iter()
                        .rev()
                        .flat_map(|p| p.iter().copied())
                        .take_while(|&u| u != 0)
                        .collect();
                    (String::from_utf16_lossy(&units), start)
                }
                _ => (entry.display_name(), i),
            };
            let key = dirent::name_key(&name);
            index.shorts.insert(entry.name);
            // A corrupt directory may repeat a name: the first one wins.
            index.by_key.entry(key).or_insert(i);
            index.entries.insert(
                i,
                Named {
                    name,
                    first_slot,
                    entry,
                },
            );
        }
        if let Some(start) = free_from {
            index.free_runs.insert(start, index.end.max(start) - start);
            index.free_runs.retain(|_, len| *len > 0);
        }
        index
    }

    /// Byte offset of `slot` on the device.
    pub fn slot_offset(&self, geo: &Geometry, slot: u32) -> u64 {
        let byte = slot as u64 * SLOT as u64;
        if self.clusters.is_empty() {
            geo.root_offset + byte
        } else {
            let cs = geo.cluster_size as u64;
            geo.cluster_offset(self.clusters[(byte / cs) as usize]) + byte % cs
        }
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
        let mut start = start;
        let mut count = count;
        if let Some((&prev, &len)) = self.free_runs.range(..start).next_back() {
            if prev + len == start {
                self.free_runs.remove(&prev);
                start = prev;
                count += len;
            }
        }
        if let Some(&len) = self.free_runs.get(&(start + count)) {
            self.free_runs.remove(&(start + count));
            count += len;
        }
        self.free_runs.insert(start, count);
    }

    /// Looks a name up, case-insensitively.
    pub fn find(&self, name: &str) -> Option<u32> {
        self.by_key.get(&dirent::name_key(name)).copied()
    }

    /// Entries other than `.` and `..`.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}
