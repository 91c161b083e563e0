//! Union directory listings: both layers merged, whiteouts and hidden names left out.

use super::*;

impl VuFs {
    /// True if the view directory `path` has no entries.
    pub(super) fn is_empty_dir(&self, path: &Path) -> Result<bool> {
        let mut empty = true;
        self.list(path, &mut |_, _, _| {
            empty = false;
            false
        })?;
        Ok(empty)
    }

    /// Calls `f(name, kind, key)` for each entry of view directory `path` until it returns
    /// false (the key's device is the layer's: a mount point inside shows its own).
    pub(super) fn list(
        &self,
        path: &Path,
        f: &mut dyn FnMut(&OsStr, FileKind, Key) -> bool,
    ) -> Result<()> {
        let kind_at = |root: BorrowedFd<'_>, e: &host::HostEntry| -> FileKind {
            match e.kind {
                Some(k) => kind_of(k),
                None => self
                    .stat_at(root, &path.join(&e.name))
                    .map(|st| kind_of(st.st_mode))
                    .unwrap_or(FileKind::File),
            }
        };
        match self.route(path) {
            Route::Direct(layer) => {
                for e in host::list_dir(self.root(layer), path)? {
                    let child = path.join(&e.name);
                    if self.hidden(&child) {
                        continue;
                    }
                    if !f(
                        &e.name,
                        kind_at(self.root(layer), &e),
                        self.entry_key(layer, e.ino),
                    ) {
                        break;
                    }
                }
                Ok(())
            }
            Route::Union => {
                let upper = match host::list_dir(self.upper.as_fd(), path) {
                    Ok(list) => Some(list),
                    Err(e) if errno_is(e, &[Errno::ENOENT, Errno::ENOTDIR, Errno::ELOOP]) => None,
                    Err(e) => return Err(e),
                };
                // `.-/PATH` holds the whiteouts of this directory's names and their vstat
                // files; a vstat `type=` (a faked device node) is the entry's type too, so
                // the listing agrees with stat.
                let mut whiteouts: HashSet<OsString> = HashSet::new();
                let mut vstats: HashSet<OsString> = HashSet::new();
                if let (Some(meta), true) = (self.meta(), self.meta_used.load(Ordering::Relaxed)) {
                    if let Ok(entries) = host::list_dir(meta, path) {
                        for e in entries {
                            if e.kind != Some(libc::S_IFREG) {
                                continue;
                            }
                            if layer::is_vstat_name(&e.name) {
                                let mut base = e.name.into_vec();
                                base.pop();
                                vstats.insert(OsString::from_vec(base));
                            } else {
                                whiteouts.insert(e.name);
                            }
                        }
                    }
                }
                let upper_kind = |e: &host::HostEntry| -> FileKind {
                    if vstats.contains(&e.name) {
                        if let Some(kind) =
                            self.read_vstat(&path.join(&e.name)).and_then(|v| v.kind)
                        {
                            return kind_of(kind);
                        }
                    }
                    kind_at(self.upper.as_fd(), e)
                };
                let mut seen: HashSet<OsString> = HashSet::new();
                let upper_is_dir = upper.is_some();
                for e in upper.unwrap_or_default() {
                    let child = path.join(&e.name);
                    if self.hidden(&child) {
                        continue;
                    }
                    seen.insert(e.name.clone());
                    if !f(&e.name, upper_kind(&e), self.entry_key(Layer::Upper, e.ino)) {
                        return Ok(());
                    }
                }
                if !upper_is_dir && self.deleted(path) {
                    return Ok(());
                }
                seen.extend(whiteouts);
                let lower = match host::list_dir(self.lower.as_fd(), path) {
                    Ok(list) => list,
                    Err(_) => return Ok(()),
                };
                for e in lower {
                    if seen.contains(&e.name) || self.hidden(&path.join(&e.name)) {
                        continue;
                    }
                    if !f(
                        &e.name,
                        kind_at(self.lower.as_fd(), &e),
                        self.entry_key(Layer::Lower, e.ino),
                    ) {
                        return Ok(());
                    }
                }
                Ok(())
            }
        }
    }
}
