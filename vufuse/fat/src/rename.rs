//! rename, with the checks that keep directories a tree (no move under itself, `..` kept right).

use crate::*;

impl FatFs {
    /// True if directory `ancestor` is `dir` or one of its ancestors.
    pub(crate) fn is_ancestor(
        &self,
        st: &mut State,
        ancestor: DirId,
        mut dir: DirId,
    ) -> Result<bool> {
        for _ in 0..4096 {
            if dir == ancestor {
                return Ok(true);
            }
            if dir == self.root {
                return Ok(false);
            }
            dir = self.load_dir(st, dir)?.parent;
        }
        Err(Errno::ELOOP)
    }

    /// Points the `..` entry of directory `child` at `parent`.
    /// A directory about to move to another parent must have a `..` entry to point there
    /// (a corrupt one without it would keep its new parent in memory only, and a later
    /// parse would see the root): `EIO` before anything changes.
    pub(crate) fn check_dotdot(&self, st: &mut State, dir: DirId) -> Result<()> {
        match self.load_dir(st, dir)?.dotdot_slot {
            Some(_) => Ok(()),
            None => Err(Errno::EIO),
        }
    }

    pub(crate) fn set_dotdot(&self, st: &mut State, child: DirId, parent: DirId) -> Result<()> {
        let cluster = if parent == self.root { 0 } else { parent };
        let dir = self.load_dir(st, child)?;
        let slot = dir.dotdot_slot.ok_or(Errno::EIO)?;
        let offset = dir.slot_offset(&self.geo, slot);
        let mut raw = [0u8; SLOT];
        self.dev.read_exact_at(&mut raw, offset)?;
        raw[20..22].copy_from_slice(&((cluster >> 16) as u16).to_le_bytes());
        raw[26..28].copy_from_slice(&(cluster as u16).to_le_bytes());
        self.dev.write_all_at(&raw, offset)?;
        dir.parent = parent;
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
        let new_name_str = new_name.to_str().ok_or(Errno::EINVAL)?;
        dirent::check_long_name(new_name_str)?;
        let (src_dir, src_slot) = self.find_child(st, parent, name)?;
        let src_loc = Location {
            dir: src_dir,
            slot: src_slot,
        };
        let src = self.load_dir(st, src_dir)?.entries[&src_slot].clone();
        let dst_dir = Self::dir_of(st, new_parent)?;
        let dst_slot = self.load_dir(st, dst_dir)?.find(new_name_str);
        self.check_dir_move(st, &src, src_dir, dst_dir)?;
        if flags & RENAME_EXCHANGE != 0 {
            let dst_slot = dst_slot.ok_or(Errno::ENOENT)?;
            let dst_loc = Location {
                dir: dst_dir,
                slot: dst_slot,
            };
            return self.exchange(st, src_loc, &src, dst_loc);
        }
        match dst_slot {
            Some(slot)
                if Location { dir: dst_dir, slot } == src_loc && src.name == new_name_str =>
            {
                return Ok(())
            }
            // Same entry, new spelling (a case change): rewritten below.
            Some(slot) if Location { dir: dst_dir, slot } == src_loc => {}
            Some(slot) => {
                if flags & RENAME_NOREPLACE != 0 {
                    return Err(Errno::EEXIST);
                }
                self.remove_target(st, &src, dst_dir, slot, new_parent, new_name)?;
            }
            None => {}
        }
        self.move_entry(st, src_loc, &src, dst_dir, new_name_str)
    }

    /// A directory moving to another parent must not go under itself and must have a `..`
    /// to point at its new parent.
    fn check_dir_move(&self, st: &mut State, moving: &Named, from: DirId, to: DirId) -> Result<()> {
        if !moving.entry.is_dir() || from == to {
            return Ok(());
        }
        if self.is_ancestor(st, moving.entry.cluster, to)? {
            return Err(Errno::EINVAL);
        }
        self.check_dotdot(st, moving.entry.cluster)
    }

    /// RENAME_EXCHANGE: each name keeps its slots and short name, the metadata swaps, and
    /// so do the inode numbers and moved directories' `..`.
    fn exchange(
        &self,
        st: &mut State,
        src_loc: Location,
        src: &Named,
        dst_loc: Location,
    ) -> Result<()> {
        if dst_loc == src_loc {
            return Ok(());
        }
        let (src_dir, dst_dir) = (src_loc.dir, dst_loc.dir);
        let dst = self.load_dir(st, dst_dir)?.entries[&dst_loc.slot].clone();
        self.check_dir_move(st, &dst, dst_dir, src_dir)?;
        let keep_name = |meta: &ShortEntry, slot_owner: &ShortEntry| ShortEntry {
            name: slot_owner.name,
            case: slot_owner.case,
            ..meta.clone()
        };
        self.write_entry(st, src_loc, keep_name(&dst.entry, &src.entry))?;
        self.write_entry(st, dst_loc, keep_name(&src.entry, &dst.entry))?;
        let a = Self::ino_at(st, src_loc);
        let b = Self::ino_at(st, dst_loc);
        Self::drop_ino(st, src_loc);
        Self::drop_ino(st, dst_loc);
        for (ino, loc) in [(a, dst_loc), (b, src_loc)] {
            if ino != loc.ino() {
                st.assigned.insert(loc, ino);
                st.owners.insert(ino, loc);
            }
            if let Some(node) = st.nodes.get_mut(&ino) {
                node.loc = Some(loc);
            }
        }
        if src.entry.is_dir() && src_dir != dst_dir {
            self.set_dotdot(st, src.entry.cluster, dst_dir)?;
        }
        if dst.entry.is_dir() && src_dir != dst_dir {
            self.set_dotdot(st, dst.entry.cluster, src_dir)?;
        }
        Ok(())
    }

    /// The name being replaced goes first (unlink or rmdir of an empty directory), if its
    /// kind matches the one moving.
    fn remove_target(
        &self,
        st: &mut State,
        src: &Named,
        dst_dir: DirId,
        slot: u32,
        new_parent: Ino,
        new_name: &OsStr,
    ) -> Result<()> {
        let dst = &self.load_dir(st, dst_dir)?.entries[&slot];
        match (src.entry.is_dir(), dst.entry.is_dir()) {
            (true, false) => return Err(Errno::ENOTDIR),
            (false, true) => return Err(Errno::EISDIR),
            _ => {}
        }
        let want_dir = dst.entry.is_dir();
        self.unlink_locked(st, new_parent, new_name, want_dir)
    }

    /// Removes the source entry and adds it under its new name (putting it back where it
    /// was if that fails, so nothing is lost); the inode and a moved directory's `..` follow.
    fn move_entry(
        &self,
        st: &mut State,
        src_loc: Location,
        src: &Named,
        dst_dir: DirId,
        new_name: &str,
    ) -> Result<()> {
        let src_dir = src_loc.dir;
        self.remove_entry(st, src_loc)?;
        let new_loc = match self.add_entry(st, dst_dir, new_name, src.entry.clone()) {
            Ok(loc) => loc,
            Err(e) => {
                let back = self.add_entry(st, src_dir, &src.name, src.entry.clone())?;
                Self::move_ino(st, src_loc, back);
                return Err(e);
            }
        };
        Self::move_ino(st, src_loc, new_loc);
        if src.entry.is_dir() && src_dir != dst_dir {
            self.set_dotdot(st, src.entry.cluster, dst_dir)?;
        }
        Ok(())
    }
}
