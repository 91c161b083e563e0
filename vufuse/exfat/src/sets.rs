//! Directory entry sets on disk: where a set lives, adding, rewriting and removing one, growing a directory.

use crate::*;

impl ExFatFs {
    pub(crate) fn slot_offset(&self, dir: &DirIndex, slot: u32) -> Result<u64> {
        dir.slot_offset(slot, self.geo.cluster_shift, |c| self.geo.cluster_offset(c))
            .ok_or(Errno::EIO)
    }

    /// Writes whole entries at `slot` of directory `id` (runs of adjacent entries at once).
    pub(crate) fn write_slots(
        &self,
        st: &mut State,
        id: DirId,
        slot: u32,
        bytes: &[u8],
    ) -> Result<()> {
        let dir = self.load_dir(st, id)?;
        let mut i = 0;
        while i < bytes.len() / ENTRY {
            let start = self.slot_offset(dir, slot + i as u32)?;
            let mut j = i + 1;
            while j < bytes.len() / ENTRY
                && self.slot_offset(dir, slot + j as u32)? == start + ((j - i) * ENTRY) as u64
            {
                j += 1;
            }
            self.dev.write_all_at(&bytes[i * ENTRY..j * ENTRY], start)?;
            i = j;
        }
        Ok(())
    }

    /// Writes a set into directory `id` under `name`; `EEXIST` if the name is taken.
    pub(crate) fn add_set(
        &self,
        st: &mut State,
        id: DirId,
        name: &[u16],
        set: EntrySet,
    ) -> Result<Location> {
        let key = self.upcase.key(name);
        if self.load_dir(st, id)?.find(&key).is_some() {
            return Err(Errno::EEXIST);
        }
        let count = set.entries();
        let slot = loop {
            if let Some(slot) = self.load_dir(st, id)?.find_free(count) {
                break slot;
            }
            self.grow_dir(st, id)?;
        };
        if let Err(e) = self.write_slots(st, id, slot, set.raw()) {
            self.load_dir(st, id)?.release(slot, count);
            return Err(e);
        }
        let name = String::from_utf16_lossy(name);
        self.load_dir(st, id)?.insert(slot, key, name, set);
        Ok(Location { dir: id, slot })
    }

    /// Marks the entries of the set at `loc` deleted and forgets it.
    pub(crate) fn remove_set(&self, st: &mut State, loc: Location) -> Result<dir::Named> {
        let dir = self.load_dir(st, loc.dir)?;
        let named = dir.entries.get(&loc.slot).ok_or(Errno::ENOENT)?;
        let set = named.set.as_ref().ok_or(Errno::EIO)?;
        let types: Vec<u8> = set.raw().chunks(ENTRY).map(|e| e[0] & !IN_USE).collect();
        for (i, t) in types.iter().enumerate() {
            let offset = self.slot_offset(dir, loc.slot + i as u32)?;
            self.dev.write_all_at(&[*t], offset)?;
        }
        dir.remove(loc.slot).ok_or(Errno::ENOENT)
    }

    /// Adds a zeroed cluster to directory `id` and records its new size in its entry set.
    pub(crate) fn grow_dir(&self, st: &mut State, id: DirId) -> Result<()> {
        let info = *st.known.get(&id).ok_or(Errno::EIO)?;
        let cs = self.cs();
        if info.len + cs > MAX_DIR_BYTES {
            return Err(Errno::ENOSPC);
        }
        let mut extents = self.load_dir(st, id)?.extents.clone();
        let is_root = info.owner.is_none();
        let contiguous = self.extend(st, &mut extents, info.contiguous, 1, !is_root)?;
        let new = extents.last().expect("just grown");
        if let Err(e) = self.zero_cluster(new) {
            // Give the cluster back; a FAT link to it stays harmless (the size says where
            // the directory ends).
            st.bitmap.mark_free(new, 1)?;
            return Err(e);
        }
        let len = info.len + cs;
        if let Some(owner) = info.owner {
            let mut set = self.set_at(st, owner)?;
            let mut meta = set.meta();
            meta.data_len = len;
            meta.valid_len = len;
            meta.flags = FLAG_ALLOCATION_POSSIBLE | if contiguous { FLAG_NO_FAT_CHAIN } else { 0 };
            set.set_meta(&meta);
            self.write_set(st, owner, set)?;
        }
        st.known.insert(
            id,
            DirInfo {
                contiguous,
                len,
                ..info
            },
        );
        let dir = self.load_dir(st, id)?;
        dir.extents = extents;
        dir.capacity = (len / ENTRY as u64) as u32;
        Ok(())
    }

    pub(crate) fn zero_cluster(&self, cluster: u32) -> Result<()> {
        self.dev.write_all_at(
            &vec![0u8; self.geo.cluster_size as usize],
            self.geo.cluster_offset(cluster),
        )
    }

    // ----- entry sets and nodes ----------------------------------------------------------

    /// The set at `loc` (`EIO` if it is damaged).
    pub(crate) fn set_at(&self, st: &mut State, loc: Location) -> Result<EntrySet> {
        let dir = self.load_dir(st, loc.dir)?;
        dir.entries
            .get(&loc.slot)
            .ok_or(Errno::ENOENT)?
            .set
            .clone()
            .ok_or(Errno::EIO)
    }

    /// Writes a changed set in place (same entry count) and records it in the index.
    pub(crate) fn write_set(&self, st: &mut State, loc: Location, set: EntrySet) -> Result<()> {
        self.write_slots(st, loc.dir, loc.slot, set.raw())?;
        let dir = self.load_dir(st, loc.dir)?;
        if let Some(named) = dir.entries.get_mut(&loc.slot) {
            named.set = Some(set);
        }
        Ok(())
    }

    /// The set of a non-root inode.
    pub(crate) fn set_of(&self, st: &mut State, ino: Ino) -> Result<EntrySet> {
        let node = Self::node(st, ino)?;
        if let Some(orphan) = &node.orphan {
            return Ok(EntrySet::clone(orphan));
        }
        let loc = node.loc.ok_or(Errno::EINVAL)?;
        self.set_at(st, loc)
    }

    /// Stores a changed set of `ino` (in memory for an orphan).
    pub(crate) fn put_set(&self, st: &mut State, ino: Ino, set: EntrySet) -> Result<()> {
        let node = st.nodes.get_mut(&ino).ok_or(Errno::ENOENT)?;
        if node.orphan.is_some() {
            node.orphan = Some(Box::new(set));
            return Ok(());
        }
        let loc = node.loc.ok_or(Errno::EINVAL)?;
        self.write_set(st, loc, set)
    }
}
