//! Finding a view path in the layers, and attaching what was found to an inode.

use super::*;

impl VuFs {
    /// Where `path` lives in the view, and its host `lstat`.
    pub(super) fn find(&self, path: &Path) -> Result<(Layer, Stat)> {
        self.in_shown_layer(path, |root| self.stat_at(root, path))
    }

    /// `path` opened `O_PATH` in the layer that shows it, as [`find`](Self::find) would
    /// choose it, without its stat: for calls that need only a handle (xattrs).
    pub(super) fn open_shown(&self, path: &Path) -> Result<(Layer, OwnedFd)> {
        self.in_shown_layer(path, |root| self.open_o_path(root, path))
    }

    /// `at` applied to `path` in the layer that shows it: its route's layer, or in a union
    /// SOURCE, then (unless a whiteout hides it) the lower tree; `at` failing with ENOENT,
    /// ENOTDIR or ELOOP is how a layer says it does not hold the name.
    fn in_shown_layer<T>(
        &self,
        path: &Path,
        at: impl Fn(BorrowedFd<'_>) -> Result<T>,
    ) -> Result<(Layer, T)> {
        match self.route(path) {
            Route::Direct(layer) => Ok((layer, at(self.root(layer))?)),
            Route::Union => match at(self.upper.as_fd()) {
                Ok(found) => Ok((Layer::Upper, found)),
                Err(e) if errno_is(e, &[Errno::ENOENT, Errno::ENOTDIR, Errno::ELOOP]) => {
                    if self.deleted(path) {
                        return Err(Errno::ENOENT);
                    }
                    match at(self.lower.as_fd()) {
                        Ok(found) => Ok((Layer::Lower, found)),
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
