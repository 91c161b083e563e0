//! Copy-up: a lower file or tree made into SOURCE (data with holes, mode, owner, times, xattrs, hard links), and new names owned by their creator.

use super::*;

impl VuFs {
    /// Makes every ancestor of `path` exist as a directory in SOURCE,
    /// copying mode, owner, times and xattrs from the lower tree.
    pub(super) fn upper_parents(&self, ctx: &Context, path: &Path) -> Result<()> {
        let Some(parent) = path.parent() else {
            return Ok(());
        };
        // Usually the parent already lives in SOURCE, and so do its ancestors.
        if self
            .stat_at(self.upper.as_fd(), parent)
            .is_ok_and(|st| st.st_mode & libc::S_IFMT == libc::S_IFDIR)
        {
            return Ok(());
        }
        let mut prefix = PathBuf::new();
        for c in parent.components() {
            prefix.push(c);
            match self.stat_at(self.upper.as_fd(), &prefix) {
                Ok(st) if st.st_mode & libc::S_IFMT == libc::S_IFDIR => continue,
                Ok(_) => return Err(Errno::ENOTDIR),
                Err(Errno::ENOENT) => {}
                Err(e) => return Err(e),
            }
            self.copy_up_one(ctx, &prefix, None)?;
        }
        Ok(())
    }

    /// Copies the lower `path` (not a directory's contents) into SOURCE.
    /// `truncate` limits the data copied (O_TRUNC, truncate()).
    pub(super) fn copy_up(&self, ctx: &Context, path: &Path, truncate: Option<u64>) -> Result<()> {
        self.upper_parents(ctx, path)?;
        self.copy_up_one(ctx, path, truncate)
    }

    pub(super) fn copy_up_one(
        &self,
        ctx: &Context,
        path: &Path,
        truncate: Option<u64>,
    ) -> Result<()> {
        let lst = self.stat_at(self.lower.as_fd(), path)?;
        let at = self.at(self.upper.as_fd(), path)?;
        let fmt = lst.st_mode & libc::S_IFMT;
        let mut view = VStat::default();
        let mut linked = false;
        match fmt {
            libc::S_IFREG => linked = self.copy_regular(ctx, path, &lst, &at, truncate)?,
            libc::S_IFDIR => {
                rustix::fs::mkdirat(at.dir(), at.name, HostMode::from_raw_mode(0o700))?;
            }
            libc::S_IFLNK => {
                let target = rustix::fs::readlinkat(
                    self.at(self.lower.as_fd(), path)?.dir(),
                    at.name,
                    Vec::new(),
                )?;
                rustix::fs::symlinkat(target.as_c_str(), at.dir(), at.name)?;
            }
            _ => view = make_node_copy(&at, &lst)?,
        }
        if !linked {
            self.copy_meta(path, &lst, view)?;
            if fmt == libc::S_IFREG && lst.st_nlink > 1 {
                self.link_other_names(ctx, path, &lst);
            }
        }
        self.carry_identity(path, &lst, &at)
    }

    /// A regular file's copy: a hard link to the copy of another of its names when there
    /// is one (returns true), else its data (up to `truncate`) in a new file.
    fn copy_regular(
        &self,
        ctx: &Context,
        path: &Path,
        lst: &Stat,
        at: &At<'_>,
        truncate: Option<u64>,
    ) -> Result<bool> {
        let src = {
            let _c = self.creds(ctx);
            self.open_in(
                self.lower.as_fd(),
                path,
                OFlags::RDONLY | OFlags::NOFOLLOW,
                HostMode::empty(),
            )?
        };
        let lkey = key(Layer::Lower, lst);
        if lst.st_nlink > 1 && self.link_to_earlier_copy(&lkey, at) {
            return Ok(true);
        }
        let dst = self.open_in(
            self.upper.as_fd(),
            path,
            OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW,
            HostMode::from_raw_mode(0o600),
        )?;
        let len = (lst.st_size as u64).min(truncate.unwrap_or(u64::MAX));
        if let Err(e) = host::copy_data(src.as_fd(), dst.as_fd(), len) {
            let _ = rustix::fs::unlinkat(at.dir(), at.name, AtFlags::empty());
            return Err(e);
        }
        if lst.st_nlink > 1 {
            self.linked_copies
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(lkey, path.to_path_buf());
        }
        Ok(false)
    }

    /// Links `at` to the copy already made of another name of the same lower file.
    fn link_to_earlier_copy(&self, lkey: &Key, at: &At<'_>) -> bool {
        let other = self
            .linked_copies
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(lkey)
            .cloned();
        let Some(other) = other else {
            return false;
        };
        let Ok(oat) = self.at(self.upper.as_fd(), &other) else {
            return false;
        };
        rustix::fs::linkat(oat.dir(), oat.name, at.dir(), at.name, AtFlags::empty()).is_ok()
    }

    /// The copy shows the original's number (the node's, if the kernel holds one); open
    /// handles move to the copy.
    fn carry_identity(&self, path: &Path, lst: &Stat, at: &At<'_>) -> Result<()> {
        let ust = at.stat()?;
        let ino = {
            let mut inodes = self.inodes();
            let ino = inodes.find_path(path);
            let number = match ino {
                Some(ino) => ino,
                None => inodes.numbers.number(key(Layer::Lower, lst)),
            };
            inodes.numbers.alias(key(Layer::Upper, &ust), number);
            ino
        };
        if let Some(ino) = ino {
            self.redirect_handles(ino, path);
        }
        Ok(())
    }

    /// Hard links survive copy-up: the other view names of the lower file
    /// just copied to `path` become links to the copy. The lower tree is
    /// searched until all `st_nlink` names are found (only files with
    /// several links pay for this).
    #[allow(clippy::unnecessary_cast)]
    pub(super) fn link_other_names(&self, ctx: &Context, path: &Path, lst: &Stat) {
        let mut missing = lst.st_nlink.saturating_sub(1) as u64;
        let mut stack = vec![PathBuf::new()];
        let mut found = Vec::new();
        while let Some(dir) = stack.pop() {
            if missing == 0 {
                break;
            }
            let Ok(entries) = host::list_dir(self.lower.as_fd(), &dir) else {
                continue;
            };
            for e in entries {
                let child = dir.join(&e.name);
                match e.kind {
                    Some(libc::S_IFDIR) => stack.push(child),
                    Some(libc::S_IFREG) | None
                        if e.ino == lst.st_ino
                            && child != path
                            && self.stat_at(self.lower.as_fd(), &child).is_ok_and(|st| {
                                st.st_dev == lst.st_dev && st.st_ino == lst.st_ino
                            }) =>
                    {
                        missing = missing.saturating_sub(1);
                        found.push(child);
                    }
                    _ => {}
                }
            }
        }
        for other in found {
            if self.route(&other) != Route::Union
                || self.in_upper(&other)
                || self.deleted(&other)
                || self.upper_parents(ctx, &other).is_err()
            {
                continue;
            }
            if let (Ok(a), Ok(b)) = (
                self.at(self.upper.as_fd(), path),
                self.at(self.upper.as_fd(), &other),
            ) {
                let _ = rustix::fs::linkat(a.dir(), a.name, b.dir(), b.name, AtFlags::empty());
            }
        }
    }

    /// Gives the upper copy of `path` the mode, owner, times and xattrs of
    /// the lower `lst` (as the view shows it, vstat included); what cannot be
    /// set is recorded in the vstat file.
    pub(super) fn copy_meta(&self, path: &Path, lst: &Stat, extra: VStat) -> Result<()> {
        let upper = self.upper.as_fd();
        let old = self.read_vstat(path).unwrap_or_default();
        let mut want = *lst;
        old.apply(&mut want);
        let at = self.at(upper, path)?;
        let is_link = lst.st_mode & libc::S_IFMT == libc::S_IFLNK;
        if let (Ok(src), Ok(dst)) = (
            self.open_o_path(self.lower.as_fd(), path),
            self.open_o_path(upper, path),
        ) {
            if !is_link {
                host::copy_xattrs(src.as_fd(), dst.as_fd());
            }
        }
        let _ = rustix::fs::chownat(
            at.dir(),
            at.name,
            Some(rustix::fs::Uid::from_raw(want.st_uid)),
            Some(rustix::fs::Gid::from_raw(want.st_gid)),
            AtFlags::SYMLINK_NOFOLLOW,
        );
        if !is_link && self.chmod_at(upper, path, want.st_mode).is_err() {
            let _ = self.chmod_at(upper, path, want.st_mode & 0o777);
        }
        let times = rustix::fs::Timestamps {
            last_access: rustix::fs::Timespec {
                tv_sec: lst.st_atime,
                tv_nsec: lst.st_atime_nsec as _,
            },
            last_modification: rustix::fs::Timespec {
                tv_sec: lst.st_mtime,
                tv_nsec: lst.st_mtime_nsec as _,
            },
        };
        let _ = rustix::fs::utimensat(at.dir(), at.name, &times, AtFlags::SYMLINK_NOFOLLOW);
        let got = at.stat()?;
        let mut v = VStat {
            kind: old.kind.or(extra.kind),
            rdev: old.rdev.or(extra.rdev),
            dev: old.dev,
            ctime: old.ctime,
            ..VStat::default()
        };
        if got.st_mode & 0o7777 != want.st_mode & 0o7777 && !is_link {
            v.mode = Some(want.st_mode & 0o7777);
        }
        if got.st_uid != want.st_uid {
            v.uid = Some(want.st_uid);
        }
        if got.st_gid != want.st_gid {
            v.gid = Some(want.st_gid);
        }
        self.write_vstat(path, &v)
    }

    /// Re-opens every handle of `ino` on the upper copy of `path`.
    pub(super) fn redirect_handles(&self, ino: u64, path: &Path) {
        let handles: Vec<Arc<Handle>> = self
            .handles
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .filter(|h| h.ino == ino)
            .cloned()
            .collect();
        for h in handles {
            if let Ok(fd) = self.open_in(self.upper.as_fd(), path, h.flags, HostMode::empty()) {
                *h.fd.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(fd);
            }
        }
    }

    /// Copies the whole visible tree at `path` into SOURCE (directory rename in cow).
    pub(super) fn copy_tree_up(&self, ctx: &Context, path: &Path) -> Result<()> {
        let (layer, st) = self.find(path)?;
        if layer == Layer::Lower {
            self.copy_up(ctx, path, None)?;
        }
        if st.st_mode & libc::S_IFMT != libc::S_IFDIR {
            return Ok(());
        }
        let Ok(entries) = host::list_dir(self.lower.as_fd(), path) else {
            return Ok(());
        };
        for e in entries {
            let child = path.join(&e.name);
            if self.in_upper(&child) {
                let cst = self.stat_at(self.upper.as_fd(), &child)?;
                if cst.st_mode & libc::S_IFMT == libc::S_IFDIR {
                    self.copy_tree_up(ctx, &child)?;
                }
                continue;
            }
            if self.deleted(&child) {
                continue;
            }
            self.copy_tree_up(ctx, &child)?;
        }
        Ok(())
    }

    /// Hides every lower entry of directory `path` that SOURCE does not have
    /// (a re-created or renamed directory shows none of the old lower entries).
    pub(super) fn make_opaque(&self, path: &Path) -> Result<()> {
        let Some(lst) = self.lower_stat(path) else {
            return Ok(());
        };
        if lst.st_mode & libc::S_IFMT != libc::S_IFDIR {
            return Ok(());
        }
        for e in host::list_dir(self.lower.as_fd(), path)? {
            let child = path.join(&e.name);
            if !self.in_upper(&child) {
                self.whiteout(&child)?;
            }
        }
        Ok(())
    }

    /// Owner and permissions for a name just created in SOURCE by `ctx`.
    pub(super) fn own_new(&self, ctx: &Context, path: &Path, perm: Option<u32>) -> Result<()> {
        self.own_new_known(ctx, path, perm, None).map(|_| ())
    }

    /// [`Self::own_new`] given the new name's stat when the caller has it (an open file):
    /// returns whether the name's mode or owner changed, so that the stat is stale.
    pub(super) fn own_new_known(
        &self,
        ctx: &Context,
        path: &Path,
        perm: Option<u32>,
        known: Option<&Stat>,
    ) -> Result<bool> {
        let upper = self.upper.as_fd();
        let at = self.at(upper, path)?;
        let st = match known {
            Some(st) => *st,
            None => at.stat()?,
        };
        let mut changed = false;
        if let Some(perm) = perm {
            if st.st_mode & 0o7777 != perm & 0o7777 {
                let _ = self.chmod_at(upper, path, perm);
                changed = true;
            }
        }
        let mut v = VStat::default();
        let owner_differs = st.st_uid != ctx.uid || st.st_gid != ctx.gid;
        changed |= owner_differs;
        if owner_differs
            && rustix::fs::chownat(
                at.dir(),
                at.name,
                Some(rustix::fs::Uid::from_raw(ctx.uid)),
                Some(rustix::fs::Gid::from_raw(ctx.gid)),
                AtFlags::SYMLINK_NOFOLLOW,
            )
            .is_err()
            && self.route(path) == Route::Union
        {
            v.uid = Some(ctx.uid);
            v.gid = Some(ctx.gid);
        }
        if self.route(path) == Route::Union {
            self.write_vstat(path, &v)?;
        }
        Ok(changed)
    }
}

/// A device node, fifo or socket's copy: the node itself, or, for a device node that the
/// host will not let this process make, a regular file with the device recorded in the
/// returned view.
fn make_node_copy(at: &At<'_>, lst: &Stat) -> Result<VStat> {
    let fmt = lst.st_mode & libc::S_IFMT;
    let ft = rustix::fs::FileType::from_raw_mode(lst.st_mode);
    let perm = HostMode::from_raw_mode(lst.st_mode & 0o7777);
    let mut view = VStat::default();
    match rustix::fs::mknodat(at.dir(), at.name, ft, perm, lst.st_rdev) {
        Ok(()) => {}
        Err(HostErrno::PERM) if fmt == libc::S_IFCHR || fmt == libc::S_IFBLK => {
            rustix::fs::mknodat(
                at.dir(),
                at.name,
                rustix::fs::FileType::RegularFile,
                perm,
                0,
            )?;
            view.kind = Some(fmt);
            view.rdev = Some((
                libc::major(lst.st_rdev) as u32,
                libc::minor(lst.st_rdev) as u32,
            ));
        }
        Err(e) => return Err(e.into()),
    }
    Ok(view)
}
