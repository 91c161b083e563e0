//! Adding, finding and removing names: long-name entry sets, new entries, unlink, mkdir.

use crate::*;

impl FatFs {
    pub(crate) fn touch(&self, entry: &mut ShortEntry) {
        let now = SystemTime::now();
        entry.modified = now;
        entry.accessed = now;
        entry.attr |= ATTR_ARCHIVE;
    }

    /// Directory `dir` gained, lost or renamed an entry: its write time moves to now, as
    /// the kernel's vfat does (the root has no entry to keep times in).
    pub(crate) fn dir_changed(&self, st: &mut State, dir: Ino) -> Result<()> {
        if dir == Ino::ROOT {
            return Ok(());
        }
        let mut entry = self.entry(st, dir)?;
        let now = SystemTime::now();
        entry.modified = now;
        entry.accessed = now;
        self.put_entry(st, dir, entry)
    }

    /// Writes a new entry (LFN slots + short slot) into directory `dir_id`.
    pub(crate) fn add_entry(
        &self,
        st: &mut State,
        dir_id: DirId,
        name: &str,
        mut entry: ShortEntry,
    ) -> Result<Location> {
        let units = dirent::check_long_name(name)?;
        let dir = self.load_dir(st, dir_id)?;
        if dir.find(name).is_some() {
            return Err(Errno::EEXIST);
        }
        let (short, case, lfn) =
            match dirent::exact_short_name(name).filter(|(s, _)| !dir.shorts.contains(s)) {
                Some((short, case)) => (short, case, Vec::new()),
                None => {
                    let short = dirent::generate_short_name(name, |s| dir.shorts.contains(s))
                        .ok_or(Errno::ENOSPC)?;
                    (
                        short,
                        0,
                        dirent::encode_lfn(&units, dirent::lfn_checksum(&short)),
                    )
                }
            };
        entry.name = short;
        entry.case = case;
        let count = lfn.len() as u32 + 1;
        let first = match self.load_dir(st, dir_id)?.find_free(count) {
            Some(slot) => slot,
            None => {
                self.grow_dir(st, dir_id)?;
                self.load_dir(st, dir_id)?
                    .find_free(count)
                    .ok_or(Errno::ENOSPC)?
            }
        };
        let dir = self.load_dir(st, dir_id)?;
        for (i, slot) in lfn
            .iter()
            .chain(std::iter::once(&entry.encode()))
            .enumerate()
        {
            self.dev
                .write_all_at(slot, dir.slot_offset(&self.geo, first + i as u32))?;
        }
        let short_slot = first + count - 1;
        dir.shorts.insert(short);
        dir.by_key.insert(dirent::name_key(name), short_slot);
        dir.entries.insert(
            short_slot,
            Named {
                name: name.to_string(),
                first_slot: first,
                entry,
            },
        );
        Ok(Location {
            dir: dir_id,
            slot: short_slot,
        })
    }

    /// Adds one zeroed cluster to a directory (`ENOSPC` for a fixed root or a full volume).
    pub(crate) fn grow_dir(&self, st: &mut State, dir_id: DirId) -> Result<()> {
        let cs = self.geo.cluster_size;
        let dir = self.load_dir(st, dir_id)?;
        if dir.clusters.is_empty() || dir.capacity + cs / SLOT as u32 > MAX_DIR_SLOTS {
            return Err(Errno::ENOSPC);
        }
        let last = *dir.clusters.last().expect("non-empty");
        let new = st.fat.allocate(1, Some(last + 1))?[0];
        self.dev
            .write_all_at(&vec![0u8; cs as usize], self.geo.cluster_offset(new))?;
        st.fat.set_next(last, new)?;
        let dir = self.load_dir(st, dir_id)?;
        dir.clusters.push(new);
        dir.capacity += cs / SLOT as u32;
        Ok(())
    }

    /// Marks an entry's slots deleted and forgets it in the index.
    pub(crate) fn remove_entry(&self, st: &mut State, loc: Location) -> Result<Named> {
        let dir = self.load_dir(st, loc.dir)?;
        let first_slot = dir.entries.get(&loc.slot).ok_or(Errno::ENOENT)?.first_slot;
        // The disk first: the index follows only what reached it.
        for slot in first_slot..=loc.slot {
            self.dev
                .write_all_at(&[DELETED], dir.slot_offset(&self.geo, slot))?;
        }
        let named = dir.entries.remove(&loc.slot).ok_or(Errno::ENOENT)?;
        dir.by_key.remove(&dirent::name_key(&named.name));
        dir.shorts.remove(&named.entry.name);
        dir.release(named.first_slot, loc.slot - named.first_slot + 1);
        Ok(named)
    }

    pub(crate) fn find_child(
        &self,
        st: &mut State,
        parent: Ino,
        name: &OsStr,
    ) -> Result<(DirId, u32)> {
        let name = name.to_str().ok_or(Errno::ENOENT)?;
        // No name this long can exist: say so, as the kernel's vfat does.
        if name.encode_utf16().count() > crate::dirent::MAX_NAME_UNITS {
            return Err(Errno::ENAMETOOLONG);
        }
        let dir_id = Self::dir_of(st, parent)?;
        let slot = self.load_dir(st, dir_id)?.find(name).ok_or(Errno::ENOENT)?;
        Ok((dir_id, slot))
    }

    pub(crate) fn lookup_locked(&self, st: &mut State, parent: Ino, name: &OsStr) -> Result<Entry> {
        let (dir_id, slot) = self.find_child(st, parent, name)?;
        let entry = self.load_dir(st, dir_id)?.entries[&slot].entry.clone();
        // A corrupt entry naming its own directory or an ancestor would make
        // the tree infinite (find, du, cp -r would never end).
        if entry.is_dir() && (entry.cluster == 0 || self.is_ancestor(st, entry.cluster, dir_id)?) {
            return Err(Errno::EIO);
        }
        let loc = Location { dir: dir_id, slot };
        let ino = self.intern(st, loc, &entry);
        st.nodes.get_mut(&ino).expect("interned").lookups += 1;
        Ok(Entry {
            attr: self.attr_of(ino, &entry),
            generation: 0,
        })
    }

    pub(crate) fn new_entry(&self, attr: u8, cluster: u32) -> ShortEntry {
        let now = SystemTime::now();
        ShortEntry {
            name: [b' '; 11],
            attr,
            case: 0,
            created: now,
            accessed: now,
            modified: now,
            cluster,
            size: 0,
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
        let (dir_id, slot) = self.find_child(st, parent, name)?;
        let loc = Location { dir: dir_id, slot };
        let entry = self.load_dir(st, dir_id)?.entries[&slot].entry.clone();
        if want_dir != entry.is_dir() {
            return Err(if want_dir {
                Errno::ENOTDIR
            } else {
                Errno::EISDIR
            });
        }
        if want_dir {
            let child = if entry.cluster == 0 {
                return Err(Errno::EIO);
            } else {
                entry.cluster
            };
            if !self.load_dir(st, child)?.is_empty() {
                return Err(Errno::ENOTEMPTY);
            }
        }
        self.remove_entry(st, loc)?;
        let ino = Some(Self::ino_at(st, loc)).filter(|i| st.nodes.contains_key(i));
        Self::drop_ino(st, loc);
        let in_use = ino
            .and_then(|i| st.nodes.get(&i))
            .is_some_and(|n| n.opens > 0);
        if let Some(ino) = ino {
            let node = st.nodes.get_mut(&ino).expect("mapped");
            node.loc = None;
            node.orphan = Some(Box::new(entry.clone()));
            // A removed directory has no contents to load any more.
            node.dir = None;
        }
        if want_dir {
            Self::forget_dir(st, entry.cluster);
        }
        if !in_use {
            let runs = st.fat.chain_runs(entry.cluster)?;
            st.fat.free_runs(&runs)?;
            if let Some(ino) = ino {
                let node = st.nodes.get_mut(&ino).expect("mapped");
                node.orphan = Some(Box::new(ShortEntry {
                    cluster: 0,
                    size: 0,
                    ..entry
                }));
                node.extents = None;
            }
        }
        Ok(())
    }

    pub(crate) fn mkdir_locked(&self, st: &mut State, parent: Ino, name: &OsStr) -> Result<Entry> {
        let name = name.to_str().ok_or(Errno::EINVAL)?;
        let parent_dir = Self::dir_of(st, parent)?;
        if self.load_dir(st, parent_dir)?.find(name).is_some() {
            return Err(Errno::EEXIST);
        }
        let cluster = st.fat.allocate(1, None)?[0];
        let cs = self.geo.cluster_size as usize;
        let mut block = vec![0u8; cs];
        let dot = ShortEntry {
            name: *b".          ",
            ..self.new_entry(ATTR_DIRECTORY, cluster)
        };
        let parent_cluster = if parent_dir == self.root {
            0
        } else {
            parent_dir
        };
        let dotdot = ShortEntry {
            name: *b"..         ",
            ..self.new_entry(ATTR_DIRECTORY, parent_cluster)
        };
        block[..SLOT].copy_from_slice(&dot.encode());
        block[SLOT..2 * SLOT].copy_from_slice(&dotdot.encode());
        let written = self
            .dev
            .write_all_at(&block, self.geo.cluster_offset(cluster));
        let added = written.and_then(|()| {
            self.add_entry(
                st,
                parent_dir,
                name,
                self.new_entry(ATTR_DIRECTORY, cluster),
            )
        });
        let loc = match added {
            Ok(loc) => loc,
            Err(e) => {
                st.fat.free_runs(&[(cluster, 1)])?;
                return Err(e);
            }
        };
        self.lookup_at(st, loc)
    }

    pub(crate) fn lookup_at(&self, st: &mut State, loc: Location) -> Result<Entry> {
        let entry = self.load_dir(st, loc.dir)?.entries[&loc.slot].entry.clone();
        let ino = self.intern(st, loc, &entry);
        st.nodes.get_mut(&ino).expect("interned").lookups += 1;
        Ok(Entry {
            attr: self.attr_of(ino, &entry),
            generation: 0,
        })
    }
}
