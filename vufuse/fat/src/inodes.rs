//! Inode numbers from entry locations, and the short entries and attributes behind them.

use crate::*;

impl FatFs {
    pub(crate) fn node(st: &State, ino: Ino) -> Result<&Node> {
        st.nodes.get(&ino).ok_or(Errno::ENOENT)
    }

    pub(crate) fn dir_of(st: &State, ino: Ino) -> Result<DirId> {
        Self::node(st, ino)?.dir.ok_or(Errno::ENOTDIR)
    }

    /// The entry of a non-root inode.
    pub(crate) fn entry(&self, st: &mut State, ino: Ino) -> Result<ShortEntry> {
        let node = Self::node(st, ino)?;
        if let Some(orphan) = &node.orphan {
            return Ok(ShortEntry::clone(orphan));
        }
        let loc = node.loc.ok_or(Errno::EINVAL)?;
        let dir = self.load_dir(st, loc.dir)?;
        dir.entries
            .get(&loc.slot)
            .map(|n| n.entry.clone())
            .ok_or(Errno::EIO)
    }

    /// Stores a changed entry in memory and on disk.
    pub(crate) fn put_entry(&self, st: &mut State, ino: Ino, entry: ShortEntry) -> Result<()> {
        let node = st.nodes.get_mut(&ino).ok_or(Errno::ENOENT)?;
        if node.orphan.is_some() {
            node.orphan = Some(Box::new(entry));
            return Ok(());
        }
        let loc = node.loc.ok_or(Errno::EINVAL)?;
        self.write_entry(st, loc, entry)
    }

    pub(crate) fn write_entry(
        &self,
        st: &mut State,
        loc: Location,
        entry: ShortEntry,
    ) -> Result<()> {
        let dir = self.load_dir(st, loc.dir)?;
        let offset = dir.slot_offset(&self.geo, loc.slot);
        self.dev.write_all_at(&entry.encode(), offset)?;
        if let Some(named) = dir.entries.get_mut(&loc.slot) {
            named.entry = entry;
        }
        Ok(())
    }

    pub(crate) fn attr_of(&self, ino: Ino, entry: &ShortEntry) -> Attr {
        let dir = entry.is_dir();
        let mut perm = if dir {
            0o777 & !self.opts.dmask
        } else {
            0o666 & !self.opts.fmask
        };
        if entry.attr & ATTR_READ_ONLY != 0 {
            perm &= !0o222;
        }
        let cs = self.geo.cluster_size as u64;
        let size = if dir { cs } else { entry.size as u64 };
        Attr {
            ino,
            size,
            blocks: size.div_ceil(cs) * cs / 512,
            atime: entry.accessed,
            mtime: entry.modified,
            ctime: entry.modified,
            crtime: entry.created,
            kind: if dir { FileKind::Dir } else { FileKind::File },
            perm: perm as u16,
            nlink: if dir { 2 } else { 1 },
            uid: self.opts.uid,
            gid: self.opts.gid,
            rdev: 0,
            blksize: self.geo.cluster_size,
        }
    }

    pub(crate) fn root_attr(&self) -> Attr {
        let cs = self.geo.cluster_size as u64;
        Attr {
            ino: Ino::ROOT,
            size: cs,
            blocks: cs / 512,
            atime: self.mounted_at,
            mtime: self.mounted_at,
            ctime: self.mounted_at,
            crtime: self.mounted_at,
            kind: FileKind::Dir,
            perm: (0o777 & !self.opts.dmask) as u16,
            nlink: 2,
            uid: self.opts.uid,
            gid: self.opts.gid,
            rdev: 0,
            blksize: self.geo.cluster_size,
        }
    }

    pub(crate) fn getattr_locked(&self, st: &mut State, ino: Ino) -> Result<Attr> {
        if ino == Ino::ROOT {
            return Ok(self.root_attr());
        }
        let entry = self.entry(st, ino)?;
        let mut attr = self.attr_of(ino, &entry);
        if Self::node(st, ino)?.orphan.is_some() {
            // Unlinked while open: no name links to it any more.
            attr.nlink = 0;
        }
        Ok(attr)
    }

    /// The inode number of the entry at `loc`: derived from the location
    /// unless an override says otherwise or the derived number is taken.
    pub(crate) fn ino_at(st: &mut State, loc: Location) -> Ino {
        if let Some(&ino) = st.assigned.get(&loc) {
            return ino;
        }
        let derived = loc.ino();
        let taken = st.owners.contains_key(&derived)
            || st.nodes.get(&derived).is_some_and(|n| n.loc != Some(loc));
        if !taken {
            return derived;
        }
        let spare = Ino(st.next_spare_ino);
        st.next_spare_ino += 1;
        st.assigned.insert(loc, spare);
        st.owners.insert(spare, loc);
        spare
    }

    /// The entry at `from` now lives at `to`: its inode number goes with it.
    pub(crate) fn move_ino(st: &mut State, from: Location, to: Location) -> Ino {
        let ino = Self::ino_at(st, from);
        if st.assigned.remove(&from).is_some() {
            st.owners.remove(&ino);
        }
        if let Some(stale) = st.assigned.remove(&to) {
            st.owners.remove(&stale);
        }
        if ino != to.ino() {
            st.assigned.insert(to, ino);
            st.owners.insert(ino, to);
        }
        if let Some(node) = st.nodes.get_mut(&ino) {
            node.loc = Some(to);
        }
        ino
    }

    /// The entry at `loc` is gone: forget any override it had.
    pub(crate) fn drop_ino(st: &mut State, loc: Location) {
        if let Some(ino) = st.assigned.remove(&loc) {
            st.owners.remove(&ino);
        }
    }

    /// The inode of the entry at `loc`, creating its node (no lookup counted).
    pub(crate) fn intern(&self, st: &mut State, loc: Location, entry: &ShortEntry) -> Ino {
        let ino = Self::ino_at(st, loc);
        // A directory entry without a cluster is corrupt: it gets no contents.
        let dir = (entry.is_dir() && entry.cluster != 0).then_some(entry.cluster);
        st.nodes
            .entry(ino)
            .or_insert_with(|| Node::new(Some(loc), dir));
        ino
    }

    /// Drops a node nobody references any more, freeing an orphan's clusters.
    pub(crate) fn maybe_drop(&self, st: &mut State, ino: Ino) -> Result<()> {
        if ino == Ino::ROOT {
            return Ok(());
        }
        let Some(node) = st.nodes.get(&ino) else {
            return Ok(());
        };
        if node.opens > 0 {
            return Ok(());
        }
        if let Some(orphan) = node.orphan.clone() {
            // The last user of an unlinked file is gone: its clusters go back.
            let runs = st.fat.chain_runs(orphan.cluster)?;
            st.fat.free_runs(&runs)?;
            let node = st.nodes.get_mut(&ino).expect("present");
            node.orphan = Some(Box::new(ShortEntry {
                cluster: 0,
                size: 0,
                ..*orphan
            }));
            node.extents = None;
        }
        if st.nodes.get(&ino).expect("present").lookups == 0 {
            st.nodes.remove(&ino);
        }
        Ok(())
    }
}
