//! Attribute changes: where they apply (copy-up or in place) and applying them.

use super::*;

impl VuFs {
    /// True when `set` changes nothing but to clear the set-user-ID / set-group-ID bits that
    /// `path` has: what the kernel asks after a write by a user other than the owner.
    pub(super) fn only_drops_setid(&self, path: &Path, set: &SetAttr) -> bool {
        let (Some(mode), None, None, None, None, None) =
            (set.mode, set.size, set.uid, set.gid, set.atime, set.mtime)
        else {
            return false;
        };
        let Ok((_, st)) = self.find(path) else {
            return false;
        };
        let current = st.st_mode & 0o7777;
        let setid = libc::S_ISUID | libc::S_ISGID;
        current & setid != 0 && mode & 0o7777 == current & !setid
    }

    /// Applies `set` to `path` in `layer` directly.
    pub(super) fn apply_set(
        &self,
        ctx: &Context,
        layer: Layer,
        path: &Path,
        set: &SetAttr,
        as_caller: bool,
    ) -> Result<()> {
        let _c = if as_caller {
            Some(self.creds(ctx))
        } else {
            None
        };
        let root = self.root(layer);
        let union_upper = layer == Layer::Upper && self.route(path) == Route::Union;
        if let Some(size) = set.size {
            self.set_size(root, path, set.fh, size)?;
        }
        if let Some(mode) = set.mode {
            self.set_mode(root, path, mode, union_upper)?;
        }
        if set.uid.is_some() || set.gid.is_some() {
            self.set_owner(root, path, set.uid, set.gid, union_upper)?;
        }
        if set.atime.is_some() || set.mtime.is_some() {
            let times = rustix::fs::Timestamps {
                last_access: timespec(set.atime),
                last_modification: timespec(set.mtime),
            };
            let at = self.at(root, path)?;
            rustix::fs::utimensat(at.dir(), at.name, &times, AtFlags::SYMLINK_NOFOLLOW)?;
        }
        Ok(())
    }

    /// truncate through the open handle if there is one, else through a new descriptor.
    fn set_size(&self, root: BorrowedFd<'_>, path: &Path, fh: Option<Fh>, size: u64) -> Result<()> {
        match fh {
            Some(fh) => rustix::fs::ftruncate(&*self.handle(fh)?, size)?,
            None => {
                let fd = self.open_in(
                    root,
                    path,
                    OFlags::WRONLY | OFlags::NOFOLLOW,
                    HostMode::empty(),
                )?;
                rustix::fs::ftruncate(&fd, size)?;
            }
        }
        Ok(())
    }

    /// chmod on the host; in SOURCE of a union, a mode the host refuses (or one already
    /// recorded) goes to the file's vstat record instead.
    fn set_mode(
        &self,
        root: BorrowedFd<'_>,
        path: &Path,
        mode: u32,
        union_upper: bool,
    ) -> Result<()> {
        let record = VStat {
            mode: Some(mode & 0o7777),
            ..VStat::default()
        };
        match self.chmod_at(root, path, mode) {
            Ok(()) => {
                if union_upper && self.read_vstat(path).is_some_and(|v| v.mode.is_some()) {
                    self.update_vstat(path, &record)?;
                }
                Ok(())
            }
            Err(Errno::EPERM) if union_upper => self.update_vstat(path, &record),
            Err(e) => Err(e),
        }
    }

    /// chown on the host; in SOURCE of a union, an owner the host refuses (or one already
    /// recorded) goes to the file's vstat record instead.
    fn set_owner(
        &self,
        root: BorrowedFd<'_>,
        path: &Path,
        uid: Option<u32>,
        gid: Option<u32>,
        union_upper: bool,
    ) -> Result<()> {
        let record = VStat {
            uid,
            gid,
            ..VStat::default()
        };
        let at = self.at(root, path)?;
        match rustix::fs::chownat(
            at.dir(),
            at.name,
            uid.map(rustix::fs::Uid::from_raw),
            gid.map(rustix::fs::Gid::from_raw),
            AtFlags::SYMLINK_NOFOLLOW,
        ) {
            Ok(()) => {
                if union_upper
                    && self
                        .read_vstat(path)
                        .is_some_and(|v| v.uid.is_some() || v.gid.is_some())
                {
                    self.update_vstat(path, &record)?;
                }
                Ok(())
            }
            Err(HostErrno::PERM) if union_upper => self.update_vstat(path, &record),
            Err(e) => Err(e.into()),
        }
    }

    /// Readies `path` for a change in union mode: returns the layer to change
    /// it in and whether to act as the caller. `try_lower` is the mincow
    /// attempt on the lower tree (Ok(true): done there).
    pub(super) fn writable(
        &self,
        ctx: &Context,
        path: &Path,
        truncate: Option<u64>,
        try_lower: &dyn Fn() -> Result<()>,
    ) -> Result<Option<Layer>> {
        match self.route(path) {
            Route::Direct(layer) => Ok(Some(layer)),
            Route::Union => {
                let (layer, _) = self.find(path)?;
                match (self.mode(), layer) {
                    (Mode::Merge, Layer::Upper) => Err(Errno::EROFS),
                    (Mode::Merge, Layer::Lower) => Ok(Some(Layer::Lower)),
                    (_, Layer::Upper) => Ok(Some(Layer::Upper)),
                    (Mode::Mincow, Layer::Lower) => {
                        let result = {
                            let _c = self.creds(ctx);
                            try_lower()
                        };
                        match result {
                            Ok(()) => Ok(None),
                            Err(e) if errno_is(e, REFUSED) => {
                                self.copy_up(ctx, path, truncate)?;
                                Ok(Some(Layer::Upper))
                            }
                            Err(e) => Err(e),
                        }
                    }
                    (_, Layer::Lower) => {
                        self.copy_up(ctx, path, truncate)?;
                        Ok(Some(Layer::Upper))
                    }
                }
            }
        }
    }

    /// The part of `set` the caller may apply to the union `path`, checked against the
    /// view's attributes before a copy-up or a vstat change does it as the daemon
    /// (`EPERM` for a chown to root by its owner, as the host would answer).
    pub(super) fn permitted_set(
        &self,
        ctx: &Context,
        path: &Path,
        set: &SetAttr,
    ) -> Result<SetAttr> {
        if !self.acts_for_others(ctx) || self.route(path) != Route::Union {
            return Ok(*set);
        }
        let (_, st) = self.find(path)?;
        Caller::of(ctx).permitted(&self.merged(path, st), set)
    }
}

/// A time for utimensat: unchanged (UTIME_OMIT), now (UTIME_NOW), or the one given.
fn timespec(t: Option<SetTime>) -> rustix::fs::Timespec {
    match t {
        None => rustix::fs::Timespec {
            tv_sec: 0,
            tv_nsec: libc::UTIME_OMIT as _,
        },
        Some(SetTime::Now) => rustix::fs::Timespec {
            tv_sec: 0,
            tv_nsec: libc::UTIME_NOW as _,
        },
        Some(SetTime::At(t)) => {
            let d = t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
            rustix::fs::Timespec {
                tv_sec: d.as_secs() as i64,
                tv_nsec: d.subsec_nanos() as _,
            }
        }
    }
}
