//! Creating, finding, removing and renaming names.

use crate::*;

impl ExFatFs {
    pub(crate) fn lookup_locked(&self, st: &mut State, parent: Ino, name: &OsStr) -> Result<Entry> {
        let loc = self.find_child(st, parent, name)?;
        self.lookup_at(st, loc)
    }

    /// Directory `dir` gained, lost or renamed an entry: its write time moves to now, as
    /// the kernel's exfat does (the root has no entry set to keep times in).
    pub(crate) fn dir_changed(&self, st: &mut State, dir: Ino) -> Result<()> {
        if dir == Ino::ROOT {
            return Ok(());
        }
        let mut set = self.set_of(st, dir)?;
        let mut meta = set.meta();
        let now = self.now();
        meta.modified = now;
        meta.accessed = now;
        set.set_meta(&meta);
        self.put_set(st, dir, set)
    }

    pub(crate) fn create_locked(&self, st: &mut State, parent: Ino, name: &OsStr) -> Result<Entry> {
        let units = entry_set::check_name(name.to_str().ok_or(Errno::EINVAL)?)?;
        let dir = Self::dir_of(st, parent)?;
        let hash = entry_set::name_hash(&self.upcase.key(&units));
        let set = EntrySet::new(&units, hash, &FileMeta::new(ATTR_ARCHIVE, self.now()));
        let loc = self.add_set(st, dir, &units, set)?;
        self.lookup_at(st, loc)
    }

    pub(crate) fn mkdir_locked(&self, st: &mut State, parent: Ino, name: &OsStr) -> Result<Entry> {
        let units = entry_set::check_name(name.to_str().ok_or(Errno::EINVAL)?)?;
        let dir = Self::dir_of(st, parent)?;
        if self
            .load_dir(st, dir)?
            .find(&self.upcase.key(&units))
            .is_some()
        {
            return Err(Errno::EEXIST);
        }
        let mut extents = Extents::default();
        let contiguous = self.extend(st, &mut extents, false, 1, true)?;
        let cluster = extents.last().expect("one cluster");
        let mut meta = FileMeta::new(ATTR_DIRECTORY, self.now());
        self.set_allocation(&mut meta, &extents, contiguous);
        meta.data_len = self.cs();
        meta.valid_len = self.cs();
        let hash = entry_set::name_hash(&self.upcase.key(&units));
        let added = self
            .zero_cluster(cluster)
            .and_then(|()| self.add_set(st, dir, &units, EntrySet::new(&units, hash, &meta)));
        match added {
            Ok(loc) => self.lookup_at(st, loc),
            Err(e) => {
                st.bitmap.mark_free(cluster, 1)?;
                Err(e)
            }
        }
    }

    /// Removes a name; an open file becomes an orphan until its last close.
    pub(crate) fn unlink_locked(
        &self,
        st: &mut State,
        parent: Ino,
        name: &OsStr,
        want_dir: bool,
    ) -> Result<()> {
        let loc = self.find_child(st, parent, name)?;
        let set = self.set_at(st, loc)?;
        let meta = set.meta();
        if want_dir != meta.is_dir() {
            return Err(if want_dir {
                Errno::ENOTDIR
            } else {
                Errno::EISDIR
            });
        }
        if want_dir {
            self.check_dir(st, loc.dir, &meta)?;
            self.register_dir(st, loc, &meta);
            if !self.load_dir(st, meta.first_cluster)?.is_empty() {
                return Err(Errno::ENOTEMPTY);
            }
        }
        // Where the clusters are, before the entry goes (a corrupt chain: they stay marked).
        let runs: Vec<(u32, u32)> = self
            .extents_of(st, meta.first_cluster, meta.contiguous(), meta.data_len)
            .map(|e| e.runs().collect())
            .unwrap_or_default();
        self.remove_set(st, loc)?;
        let ino = Some(Self::ino_at(st, loc)).filter(|i| st.nodes.contains_key(i));
        Self::drop_ino(st, loc);
        let in_use = ino
            .and_then(|i| st.nodes.get(&i))
            .is_some_and(|n| n.opens > 0);
        if let Some(ino) = ino {
            let node = st.nodes.get_mut(&ino).expect("present");
            node.loc = None;
            node.orphan = Some(Box::new(set.clone()));
            node.dir = None;
        }
        if want_dir {
            Self::forget_dir(st, meta.first_cluster);
            st.known.remove(&meta.first_cluster);
        }
        if !in_use {
            Self::free_runs(st, &runs)?;
            if let Some(ino) = ino {
                let node = st.nodes.get_mut(&ino).expect("present");
                node.orphan = Some(Box::new(emptied(&set)));
                node.extents = None;
            }
        }
        Ok(())
    }

    pub(crate) fn rename_locked(
        &self,
        st: &mut State,
        parent: Ino,
        name: &OsStr,
        new_parent: Ino,
        new_name: &OsStr,
        flags: u32,
    ) -> Result<()> {
        let units = entry_set::check_name(new_name.to_str().ok_or(Errno::EINVAL)?)?;
        let src_loc = self.find_child(st, parent, name)?;
        let src_set = self.set_at(st, src_loc)?;
        let src = src_set.meta();
        let src_name = self.load_dir(st, src_loc.dir)?.entries[&src_loc.slot]
            .name
            .clone();
        let dst_dir = Self::dir_of(st, new_parent)?;
        let key = self.upcase.key(&units);
        let dst_slot = self.load_dir(st, dst_dir)?.find(&key);
        if src.is_dir() {
            self.check_dir(st, src_loc.dir, &src)?;
            self.register_dir(st, src_loc, &src);
            if dst_dir != src_loc.dir && self.is_ancestor(st, src.first_cluster, dst_dir)? {
                return Err(Errno::EINVAL);
            }
        }
        match dst_slot {
            Some(slot)
                if (Location { dir: dst_dir, slot }) == src_loc
                    && src_name.encode_utf16().eq(units.iter().copied()) =>
            {
                return Ok(());
            }
            // Same entry, new spelling (a case change): rewritten below.
            Some(slot) if (Location { dir: dst_dir, slot }) == src_loc => {}
            Some(slot) => {
                if flags & RENAME_NOREPLACE != 0 {
                    return Err(Errno::EEXIST);
                }
                let dst = self.set_at(st, Location { dir: dst_dir, slot })?.meta();
                match (src.is_dir(), dst.is_dir()) {
                    (true, false) => return Err(Errno::ENOTDIR),
                    (false, true) => return Err(Errno::EISDIR),
                    _ => {}
                }
                self.unlink_locked(st, new_parent, new_name, dst.is_dir())?;
            }
            None => {}
        }
        self.remove_set(st, src_loc)?;
        let hash = entry_set::name_hash(&key);
        let new_loc = match self.add_set(st, dst_dir, &units, src_set.renamed(&units, hash)) {
            Ok(loc) => loc,
            Err(e) => {
                // Put the source back so nothing is lost.
                let old: Vec<u16> = src_name.encode_utf16().collect();
                let old_hash = entry_set::name_hash(&self.upcase.key(&old));
                let back = self.add_set(st, src_loc.dir, &old, src_set.renamed(&old, old_hash))?;
                Self::move_ino(st, src_loc, back);
                return Err(e);
            }
        };
        Self::move_ino(st, src_loc, new_loc);
        if src.is_dir() {
            self.register_dir(st, new_loc, &src);
        }
        Ok(())
    }

    // ----- write-back --------------------------------------------------------------------
}
