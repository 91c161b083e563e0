//! rename in union modes (copy-up of trees, whiteouts, exchange).

use super::*;

impl VuFs {
    pub(super) fn rename_union(
        &self,
        ctx: &Context,
        old: &Path,
        new: &Path,
        flags: u32,
    ) -> Result<()> {
        let (olayer, ost) = self.find(old)?;
        let target = self.find(new).ok();
        let old_dir = is_dir(&ost);
        self.check_rename_target(new, flags, old_dir, target.as_ref())?;
        if let Some(done) = self.rename_in_lower(ctx, olayer, old, new, flags) {
            return done;
        }
        // cow (and mincow's fallback): everything happens in SOURCE.
        let exchange = flags & RENAME_EXCHANGE != 0;
        self.copy_up_renamed(ctx, old, olayer, old_dir)?;
        if let Some((tlayer, tst)) = &target {
            if exchange {
                self.copy_up_renamed(ctx, new, *tlayer, is_dir(tst))?;
            }
        }
        self.upper_parents(ctx, new)?;
        let upper_flags = if exchange {
            flags
        } else {
            flags & !RENAME_NOREPLACE
        };
        // A lower-only target is simply covered by the new upper entry.
        self.rename_in(self.upper.as_fd(), old, new, upper_flags)?;
        if let Some((Layer::Upper, tst)) = &target {
            if !exchange && (is_dir(tst) || tst.st_nlink <= 1) {
                // The replaced upper file is gone from the host: its alias goes too.
                self.inodes().numbers.gone(key(Layer::Upper, tst));
            }
        }
        if !exchange {
            self.move_metadata(old, new)?;
            self.hide_old_name(old, new, old_dir)?;
        }
        Ok(())
    }

    /// What rename(2) refuses before anything moves: NOREPLACE onto a name, EXCHANGE with
    /// none, a directory onto a file or back, a directory onto a non-empty one.
    fn check_rename_target(
        &self,
        new: &Path,
        flags: u32,
        old_dir: bool,
        target: Option<&(Layer, Stat)>,
    ) -> Result<()> {
        if flags & RENAME_NOREPLACE != 0 && target.is_some() {
            return Err(Errno::EEXIST);
        }
        if flags & RENAME_EXCHANGE != 0 && target.is_none() {
            return Err(Errno::ENOENT);
        }
        let Some((_, tst)) = target else {
            return Ok(());
        };
        if flags & RENAME_EXCHANGE != 0 {
            return Ok(());
        }
        let new_dir = is_dir(tst);
        if old_dir && !new_dir {
            return Err(Errno::ENOTDIR);
        }
        if !old_dir && new_dir {
            return Err(Errno::EISDIR);
        }
        if new_dir && !self.is_empty_dir(new)? {
            return Err(Errno::ENOTEMPTY);
        }
        Ok(())
    }

    /// The renames done in the lower tree itself: merge's (or EROFS when SOURCE is
    /// involved), and mincow's where the host permits it. `None`: go on in SOURCE.
    fn rename_in_lower(
        &self,
        ctx: &Context,
        olayer: Layer,
        old: &Path,
        new: &Path,
        flags: u32,
    ) -> Option<Result<()>> {
        match self.mode() {
            Mode::Merge => {
                if olayer == Layer::Upper || self.in_upper(new) || self.deleted(new) {
                    return Some(Err(Errno::EROFS));
                }
                let _c = self.creds(ctx);
                Some(self.rename_in(self.lower.as_fd(), old, new, flags))
            }
            Mode::Mincow if olayer == Layer::Lower && !self.in_upper(new) && !self.deleted(new) => {
                let result = {
                    let _c = self.creds(ctx);
                    self.rename_in(self.lower.as_fd(), old, new, flags)
                };
                match result {
                    Err(e) if errno_is(e, REFUSED) => None,
                    other => Some(other),
                }
            }
            _ => None,
        }
    }

    /// renameat2 of `old` to `new`, both under `root`.
    fn rename_in(&self, root: BorrowedFd<'_>, old: &Path, new: &Path, flags: u32) -> Result<()> {
        let a = self.at(root, old)?;
        let b = self.at(root, new)?;
        rustix::fs::renameat_with(
            a.dir(),
            a.name,
            b.dir(),
            b.name,
            rustix::fs::RenameFlags::from_bits_retain(flags),
        )?;
        Ok(())
    }

    /// Brings a name that is about to move into SOURCE: a directory with its whole tree, a
    /// lower file by copy-up.
    fn copy_up_renamed(&self, ctx: &Context, path: &Path, layer: Layer, dir: bool) -> Result<()> {
        if dir {
            self.copy_tree_up(ctx, path)
        } else if layer == Layer::Lower {
            self.copy_up(ctx, path, None)
        } else {
            Ok(())
        }
    }

    /// Metadata records (vstat side files, ownership trees) move with the name.
    fn move_metadata(&self, old: &Path, new: &Path) -> Result<()> {
        let Some(meta) = self.meta() else {
            return Ok(());
        };
        if !self.meta_used.load(Ordering::Relaxed) {
            return Ok(());
        }
        let vold = layer::vstat_path(old);
        let vnew = layer::vstat_path(new);
        let _ = host::remove_tree(meta, new);
        let _ = host::remove_tree(meta, &vnew);
        if self.stat_at(meta, &vold).is_ok() {
            host::make_parents(meta, &vnew, 0o700)?;
            let a = self.at(meta, &vold)?;
            let b = self.at(meta, &vnew)?;
            rustix::fs::renameat(a.dir(), a.name, b.dir(), b.name)?;
        }
        if let Ok(st) = self.stat_at(meta, old) {
            if is_dir(&st) {
                host::make_parents(meta, new, 0o700)?;
                let a = self.at(meta, old)?;
                let b = self.at(meta, new)?;
                rustix::fs::renameat(a.dir(), a.name, b.dir(), b.name)?;
            }
        }
        Ok(())
    }

    /// The old name stays gone (a whiteout over a lower one), the new one shows (no
    /// whiteout), and a moved directory hides whatever the lower tree has at its new name.
    fn hide_old_name(&self, old: &Path, new: &Path, old_dir: bool) -> Result<()> {
        if self.lower_stat(old).is_some() {
            self.whiteout(old)?;
        }
        self.dewhiteout(new);
        if old_dir {
            self.make_opaque(new)?;
        }
        Ok(())
    }
}

/// Whether a stat is a directory's.
fn is_dir(st: &Stat) -> bool {
    st.st_mode & libc::S_IFMT == libc::S_IFDIR
}
