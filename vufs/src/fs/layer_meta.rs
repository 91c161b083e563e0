//! The layer format in SOURCE/.-: whiteouts (deleted lower names) and vstat side files (attributes a copy cannot hold).

use super::*;

impl VuFs {
    pub(super) fn meta(&self) -> Option<BorrowedFd<'_>> {
        self.meta.as_ref().map(|m| m.as_fd())
    }

    /// A whiteout hides `path` (or one of its ancestors).
    pub(super) fn deleted(&self, path: &Path) -> bool {
        let Some(meta) = self.meta() else {
            return false;
        };
        if !self.meta_used.load(Ordering::Relaxed) || path.as_os_str().is_empty() {
            return false;
        }
        match self.stat_at(meta, path) {
            Ok(st) => st.st_mode & libc::S_IFMT == libc::S_IFREG,
            Err(e) => e == Errno::ENOTDIR,
        }
    }

    pub(super) fn whiteout(&self, path: &Path) -> Result<()> {
        let meta = self.meta().ok_or(Errno::EROFS)?;
        self.meta_used.store(true, Ordering::Relaxed);
        host::make_parents(meta, path, 0o700)?;
        match host::remove_tree(meta, path) {
            Ok(()) => self.dircache.clear(),
            Err(Errno::ENOENT) => {}
            Err(e) => return Err(e),
        }
        let at = self.at(meta, path)?;
        rustix::fs::mknodat(
            at.dir(),
            at.name,
            rustix::fs::FileType::RegularFile,
            HostMode::from_raw_mode(0o644),
            0,
        )?;
        Ok(())
    }

    pub(super) fn dewhiteout(&self, path: &Path) {
        let Some(meta) = self.meta() else { return };
        if !self.meta_used.load(Ordering::Relaxed) {
            return;
        }
        if let Ok(at) = self.at(meta, path) {
            if let Ok(st) = at.stat() {
                if st.st_mode & libc::S_IFMT == libc::S_IFREG
                    && rustix::fs::unlinkat(at.dir(), at.name, AtFlags::empty()).is_ok()
                    && host::remove_empty_parents(meta, path)
                {
                    self.dircache.clear();
                }
            }
        }
    }

    pub(super) fn read_vstat(&self, path: &Path) -> Option<VStat> {
        let meta = self.meta()?;
        if !self.meta_used.load(Ordering::Relaxed) {
            return None;
        }
        let data = host::read_small(meta, &layer::vstat_path(path), 1023).ok()?;
        Some(VStat::parse(&data))
    }

    pub(super) fn write_vstat(&self, path: &Path, v: &VStat) -> Result<()> {
        let Some(meta) = self.meta() else {
            return Ok(());
        };
        let vpath = layer::vstat_path(path);
        if v.is_empty() {
            if self.meta_used.load(Ordering::Relaxed) {
                let at = self.at(meta, &vpath);
                if let Ok(at) = at {
                    if rustix::fs::unlinkat(at.dir(), at.name, AtFlags::empty()).is_ok()
                        && host::remove_empty_parents(meta, &vpath)
                    {
                        self.dircache.clear();
                    }
                }
            }
            return Ok(());
        }
        self.meta_used.store(true, Ordering::Relaxed);
        host::make_parents(meta, &vpath, 0o700)?;
        host::write_small(meta, &vpath, v.render().as_bytes())
    }

    pub(super) fn update_vstat(&self, path: &Path, change: &VStat) -> Result<()> {
        let mut v = self.read_vstat(path).unwrap_or_default();
        v.update(change);
        self.write_vstat(path, &v)
    }

    /// Applies the vstat of `path` to `st` (union modes only).
    pub(super) fn merged(&self, path: &Path, mut st: Stat) -> Stat {
        if self.route(path) == Route::Union {
            if let Some(v) = self.read_vstat(path) {
                v.apply(&mut st);
            }
        }
        st
    }
}
