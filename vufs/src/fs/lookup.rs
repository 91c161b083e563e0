//! Finding a view path in the layers, and attaching what was found to an inode.

use super::*;

impl VuFs {
    /// Where `path` lives in the view, and its host `lstat`.
    pub(super) fn find(&self, path: &Path) -> Result<(Layer, Stat)> {
        match self.route(path) {
            Route::Direct(layer) => Ok((layer, self.stat_at(self.root(layer), path)?)),
            Route::Union => match self.stat_at(self.upper.as_fd(), path) {
                Ok(st) => Ok((Layer::Upper, st)),
                Err(e) if errno_is(e, &[Errno::ENOENT, Errno::ENOTDIR, Errno::ELOOP]) => {
                    if self.deleted(path) {
                        return Err(Errno::ENOENT);
                    }
                    match self.stat_at(self.lower.as_fd(), path) {
                        Ok(st) => Ok((Layer::Lower, st)),
                        Err(Errno::ENOTDIR) | Err(Errno::ELOOP) => Err(Errno::ENOENT),
                        Err(e) => Err(e),
                    }
                }
                Err(e) => Err(e),
            },
        }
    }

    /// `path` opened `O_PATH` in the layer that shows it, as [`find`](Self::find) would
    /// choose it, without its stat: for calls that need only a handle (xattrs).
    pub(super) fn open_shown(&self, path: &Path) -> Result<(Layer, OwnedFd)> {
        match self.route(path) {
            Route::Direct(layer) => Ok((layer, self.open_o_path(self.root(layer), path)?)),
            Route::Union => match self.open_o_path(self.upper.as_fd(), path) {
                Ok(fd) => Ok((Layer::Upper, fd)),
                Err(e) if errno_is(e, &[Errno::ENOENT, Errno::ENOTDIR, Errno::ELOOP]) => {
                    if self.deleted(path) {
                        return Err(Errno::ENOENT);
                    }
                    match self.open_o_path(self.lower.as_fd(), path) {
                        Ok(fd) => Ok((Layer::Lower, fd)),
                        Err(Errno::ENOTDIR) | Err(Errno::ELOOP) => Err(Errno::ENOENT),
                        Err(e) => Err(e),
                    }
                }
                Err(e) => Err(e),
            },
        }
    }

    pub(super) fn exists(&self, path: &Path) -> bool {
        self.find(path).is_ok()
    }

    pub(super) fn in_upper(&self, path: &Path) -> bool {
        self.stat_at(self.upper.as_fd(), path).is_ok()
    }

    pub(super) fn lower_stat(&self, path: &Path) -> Option<Stat> {
        self.stat_at(self.lower.as_fd(), path).ok()
    }

    pub(super) fn attach(
        &self,
        parent: Ino,
        name: &OsStr,
        layer: Layer,
        path: &Path,
        st: Stat,
    ) -> Entry {
        // The key is the host's dev and ino, before a vstat `dev=` changes the stat.
        let host_key = key(layer, &st);
        let st = self.merged(path, st);
        let ino = self
            .inodes()
            .attach(parent.0, name, host_key, kind_of(st.st_mode));
        Entry {
            attr: to_attr(ino, &st),
            generation: 0,
        }
    }

    pub(super) fn attr_of(&self, ino: Ino, path: &Path) -> Result<Attr> {
        let (_, st) = self.find(path)?;
        Ok(to_attr(ino.0, &self.merged(path, st)))
    }
}
