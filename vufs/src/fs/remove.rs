//! unlink and rmdir in every mode (whiteouts in union modes).

use super::*;

impl VuFs {
    pub(super) fn unlink_common(
        &self,
        ctx: &Context,
        parent: Ino,
        name: &OsStr,
        dir: bool,
    ) -> Result<()> {
        let path = self.child_path(parent, name)?;
        let flags = if dir {
            AtFlags::REMOVEDIR
        } else {
            AtFlags::empty()
        };
        let remove = |root: BorrowedFd<'_>| -> Result<()> {
            let at = self.at(root, &path)?;
            rustix::fs::unlinkat(at.dir(), at.name, flags)?;
            Ok(())
        };
        let _g = self.lock_big();
        match self.route(&path) {
            Route::Direct(layer) => {
                let _c = self.creds(ctx);
                remove(self.root(layer))?;
            }
            Route::Union => {
                let (layer, st) = self.find(&path)?;
                let is_dir = st.st_mode & libc::S_IFMT == libc::S_IFDIR;
                if dir && !is_dir {
                    return Err(Errno::ENOTDIR);
                }
                if !dir && is_dir {
                    return Err(Errno::EISDIR);
                }
                if dir && !self.is_empty_dir(&path)? {
                    return Err(Errno::ENOTEMPTY);
                }
                let in_lower = self.lower_stat(&path).is_some();
                match (self.mode(), layer) {
                    (Mode::Merge, Layer::Upper) => return Err(Errno::EROFS),
                    (Mode::Merge, Layer::Lower) => {
                        let _c = self.creds(ctx);
                        remove(self.lower.as_fd())?;
                    }
                    (_, Layer::Upper) => {
                        if dir {
                            // An empty view dir may still hold whiteouts below it in `.-`.
                            if let Some(meta) = self.meta() {
                                if let Ok(st) = self.stat_at(meta, &path) {
                                    if st.st_mode & libc::S_IFMT == libc::S_IFDIR {
                                        let _ = host::remove_tree(meta, &path);
                                    }
                                }
                            }
                        }
                        remove(self.upper.as_fd())?;
                        if is_dir || st.st_nlink <= 1 {
                            // Gone from the host: a copy's alias must not outlive it.
                            self.inodes().numbers.gone(key(Layer::Upper, &st));
                        }
                        if in_lower {
                            self.whiteout(&path)?;
                        }
                    }
                    (Mode::Mincow, Layer::Lower) => {
                        let result = {
                            let _c = self.creds(ctx);
                            remove(self.lower.as_fd())
                        };
                        match result {
                            Ok(()) => {}
                            Err(e) if errno_is(e, REFUSED) => self.whiteout(&path)?,
                            Err(e) => return Err(e),
                        }
                    }
                    (_, Layer::Lower) => self.whiteout(&path)?,
                }
                self.write_vstat(&path, &VStat::default())?;
            }
        }
        if dir {
            self.dircache.clear();
        }
        self.inodes().drop_dentry(parent.0, name);
        Ok(())
    }
}
