//! Inode numbers from entry locations, the attributes behind them, and the tree checks.

use crate::*;

impl ExFatFs {
    pub(crate) fn node(st: &State, ino: Ino) -> Result<&Node> {
        st.nodes.get(&ino).ok_or(Errno::ENOENT)
    }

    pub(crate) fn dir_of(st: &State, ino: Ino) -> Result<DirId> {
        Self::node(st, ino)?.dir.ok_or(Errno::ENOTDIR)
    }

    /// True if directory `ancestor` is `dir` or one of its ancestors.
    pub(crate) fn is_ancestor(&self, st: &State, ancestor: DirId, mut dir: DirId) -> Result<bool> {
        for _ in 0..4096 {
            if dir == ancestor {
                return Ok(true);
            }
            if dir == self.geo.root_cluster {
                return Ok(false);
            }
            dir = st
                .known
                .get(&dir)
                .and_then(|i| i.owner)
                .ok_or(Errno::EIO)?
                .dir;
        }
        Err(Errno::ELOOP)
    }

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

    pub(crate) fn drop_ino(st: &mut State, loc: Location) {
        if let Some(ino) = st.assigned.remove(&loc) {
            st.owners.remove(&ino);
        }
    }

    /// Checks that a directory's stream fields make sense and that it does not contain
    /// itself (a loop would make the tree infinite).
    pub(crate) fn check_dir(&self, st: &State, parent: DirId, meta: &FileMeta) -> Result<()> {
        let first = meta.first_cluster;
        let cs = self.cs();
        if !self.geo.is_valid_cluster(first)
            || meta.data_len == 0
            || meta.data_len % cs != 0
            || meta.data_len > MAX_DIR_BYTES
            || first == self.geo.root_cluster
            || self.is_ancestor(st, first, parent)?
        {
            return Err(Errno::EIO);
        }
        Ok(())
    }

    /// The inode of the set at `loc`, creating its node, with one more lookup.
    pub(crate) fn lookup_at(&self, st: &mut State, loc: Location) -> Result<Entry> {
        let set = self.set_at(st, loc)?;
        let meta = set.meta();
        if meta.is_dir() {
            self.check_dir(st, loc.dir, &meta)?;
            self.register_dir(st, loc, &meta);
        }
        let ino = Self::ino_at(st, loc);
        let dir = meta.is_dir().then_some(meta.first_cluster);
        let node = st
            .nodes
            .entry(ino)
            .or_insert_with(|| Node::new(Some(loc), dir));
        node.lookups += 1;
        Ok(Entry {
            attr: self.attr_of(ino, &meta),
            generation: 0,
        })
    }

    pub(crate) fn find_child(&self, st: &mut State, parent: Ino, name: &OsStr) -> Result<Location> {
        let name = name.to_str().ok_or(Errno::ENOENT)?;
        let units: Vec<u16> = name.encode_utf16().collect();
        // No name this long can exist: say so, as the kernel's exfat does.
        if units.len() > crate::entry_set::MAX_NAME {
            return Err(Errno::ENAMETOOLONG);
        }
        let key = self.upcase.key(&units);
        let dir = Self::dir_of(st, parent)?;
        let slot = self.load_dir(st, dir)?.find(&key).ok_or(Errno::ENOENT)?;
        Ok(Location { dir, slot })
    }

    pub(crate) fn attr_of(&self, ino: Ino, meta: &FileMeta) -> Attr {
        let dir = meta.is_dir();
        let mut perm = if dir {
            0o777 & !self.opts.dmask
        } else {
            0o666 & !self.opts.fmask
        };
        if meta.attr & ATTR_READ_ONLY != 0 {
            perm &= !0o222;
        }
        let cs = self.cs();
        Attr {
            ino,
            size: meta.data_len,
            blocks: meta.data_len.div_ceil(cs) * (cs / 512),
            atime: meta.accessed,
            mtime: meta.modified,
            ctime: meta.modified,
            crtime: meta.created,
            kind: if dir { FileKind::Dir } else { FileKind::File },
            perm: perm as u16,
            nlink: if dir { 2 } else { 1 },
            uid: self.opts.uid,
            gid: self.opts.gid,
            rdev: 0,
            blksize: self.geo.cluster_size.min(1 << 20),
        }
    }

    pub(crate) fn root_attr(&self, st: &State) -> Attr {
        let len = st
            .known
            .get(&self.geo.root_cluster)
            .map_or(self.cs(), |i| i.len);
        Attr {
            ino: Ino::ROOT,
            size: len,
            blocks: len / 512,
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
            blksize: self.geo.cluster_size.min(1 << 20),
        }
    }

    pub(crate) fn getattr_locked(&self, st: &mut State, ino: Ino) -> Result<Attr> {
        if ino == Ino::ROOT {
            return Ok(self.root_attr(st));
        }
        let meta = self.set_of(st, ino)?.meta();
        let mut attr = self.attr_of(ino, &meta);
        if st.nodes.get(&ino).is_some_and(|node| node.orphan.is_some()) {
            // Unlinked while open: no name links to it any more.
            attr.nlink = 0;
        }
        Ok(attr)
    }

    // ----- clusters ----------------------------------------------------------------------

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
            let meta = orphan.meta();
            if let Ok(extents) =
                self.extents_of(st, meta.first_cluster, meta.contiguous(), meta.data_len)
            {
                let runs: Vec<(u32, u32)> = extents.runs().collect();
                Self::free_runs(st, &runs)?;
            }
            let node = st.nodes.get_mut(&ino).expect("present");
            node.orphan = Some(Box::new(emptied(&orphan)));
            node.extents = None;
        }
        if st.nodes.get(&ino).expect("present").lookups == 0 {
            st.nodes.remove(&ino);
        }
        Ok(())
    }
}
