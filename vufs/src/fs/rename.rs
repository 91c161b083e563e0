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
        if flags & RENAME_NOREPLACE != 0 && target.is_some() {
            return Err(Errno::EEXIST);
        }
        if flags & RENAME_EXCHANGE != 0 && target.is_none() {
            return Err(Errno::ENOENT);
        }
        let old_dir = ost.st_mode & libc::S_IFMT == libc::S_IFDIR;
        if let Some((_, tst)) = &target {
            let new_dir = tst.st_mode & libc::S_IFMT == libc::S_IFDIR;
            if flags & RENAME_EXCHANGE == 0 {
                if old_dir && !new_dir {
                    return Err(Errno::ENOTDIR);
                }
                if !old_dir && new_dir {
                    return Err(Errno::EISDIR);
                }
                if new_dir && !self.is_empty_dir(new)? {
                    return Err(Errno::ENOTEMPTY);
                }
            }
        }
        let rename_in = |root: BorrowedFd<'_>, f: u32| -> Result<()> {
            let a = self.at(root, old)?;
            let b = self.at(root, new)?;
            rustix::fs::renameat_with(
                a.dir(),
                a.name,
                b.dir(),
                b.name,
                rustix::fs::RenameFlags::from_bits_retain(f),
            )?;
            Ok(())
        };
        match self.mode() {
            Mode::Merge => {
                if olayer == Layer::Upper || self.in_upper(new) || self.deleted(new) {
                    return Err(Errno::EROFS);
                }
                let _c = self.creds(ctx);
                return rename_in(self.lower.as_fd(), flags);
            }
            Mode::Mincow if olayer == Layer::Lower && !self.in_upper(new) && !self.deleted(new) => {
                let result = {
                    let _c = self.creds(ctx);
                    rename_in(self.lower.as_fd(), flags)
                };
                match result {
                    Err(e) if errno_is(e, REFUSED) => {}
                    other => return other,
                }
            }
            _ => {}
        }
        // cow (and mincow's fallback): everything happens in SOURCE.
        let exchange = flags & RENAME_EXCHANGE != 0;
        if old_dir {
            self.copy_tree_up(ctx, old)?;
        } else if olayer == Layer::Lower {
            self.copy_up(ctx, old, None)?;
        }
        if let Some((tlayer, tst)) = &target {
            if exchange {
                if tst.st_mode & libc::S_IFMT == libc::S_IFDIR {
                    self.copy_tree_up(ctx, new)?;
                } else if *tlayer == Layer::Lower {
                    self.copy_up(ctx, new, None)?;
                }
            } else if *tlayer == Layer::Lower && self.in_upper(new) {
                // cannot happen: a lower target is not in SOURCE
            }
        }
        self.upper_parents(ctx, new)?;
        let upper_flags = if exchange {
            flags
        } else {
            flags & !RENAME_NOREPLACE
        };
        // A lower-only target is simply covered by the new upper entry.
        rename_in(self.upper.as_fd(), upper_flags)?;
        if let Some((Layer::Upper, tst)) = &target {
            let dir = tst.st_mode & libc::S_IFMT == libc::S_IFDIR;
            if !exchange && (dir || tst.st_nlink <= 1) {
                // The replaced upper file is gone from the host: its alias goes too.
                self.inodes().numbers.gone(key(Layer::Upper, tst));
            }
        }
        // Metadata moves with the name.
        if let Some(meta) = self.meta() {
            if self.meta_used.load(Ordering::Relaxed) && !exchange {
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
                    if st.st_mode & libc::S_IFMT == libc::S_IFDIR {
                        host::make_parents(meta, new, 0o700)?;
                        let a = self.at(meta, old)?;
                        let b = self.at(meta, new)?;
                        rustix::fs::renameat(a.dir(), a.name, b.dir(), b.name)?;
                    }
                }
            }
        }
        if !exchange {
            if self.lower_stat(old).is_some() {
                self.whiteout(old)?;
            }
            self.dewhiteout(new);
            if old_dir {
                self.make_opaque(new)?;
            }
        }
        Ok(())
    }
}
