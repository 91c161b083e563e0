//! Open file handles, re-openable on the upper copy after a copy-up.

use super::*;

impl VuFs {
    /// Registers an open file of `ino` on `fd`, opened in `layer` for the view's `path`.
    pub(super) fn new_handle(
        &self,
        ino: u64,
        flags: OFlags,
        fd: OwnedFd,
        layer: Layer,
        path: &Path,
    ) -> Fh {
        // Only a lower file of a copying union can move (to SOURCE) while it is open.
        let stable = layer == Layer::Upper
            || self.route(path) != Route::Union
            || !matches!(self.mode(), Mode::Cow | Mode::Mincow);
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        let reopen = flags & !(OFlags::CREATE | OFlags::EXCL | OFlags::TRUNC | OFlags::NOCTTY);
        self.handles
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(
                fh,
                Arc::new(Handle {
                    ino,
                    flags: reopen | OFlags::NOFOLLOW,
                    fd: RwLock::new(Arc::new(fd)),
                    stable,
                }),
            );
        Fh(fh)
    }

    /// The host file of handle `fh` when it cannot move while open (see [`Handle::stable`]).
    pub(super) fn stable_handle(&self, fh: Fh) -> Option<Arc<OwnedFd>> {
        let h = self
            .handles
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&fh.0)
            .cloned()?;
        if !h.stable {
            return None;
        }
        let fd = h.fd.read().unwrap_or_else(|e| e.into_inner()).clone();
        Some(fd)
    }

    pub(super) fn handle(&self, fh: Fh) -> Result<Arc<OwnedFd>> {
        let h = self
            .handles
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&fh.0)
            .cloned()
            .ok_or(Errno::EBADF)?;
        let fd = h.fd.read().unwrap_or_else(|e| e.into_inner()).clone();
        Ok(fd)
    }

    /// An open handle of inode `ino`, if any: what still knows a file unlinked while open
    /// when the kernel asks for its attributes without naming the handle (fstat does).
    pub(super) fn any_handle_of(&self, ino: u64) -> Option<Arc<OwnedFd>> {
        let handles = self.handles.lock().unwrap_or_else(|e| e.into_inner());
        let h = handles.values().find(|h| h.ino == ino)?;
        let fd = h.fd.read().unwrap_or_else(|e| e.into_inner()).clone();
        Some(fd)
    }

    pub(super) fn open_file(
        &self,
        ctx: &Context,
        layer: Layer,
        path: &Path,
        flags: OFlags,
        as_caller: bool,
    ) -> Result<OwnedFd> {
        let _c = if as_caller {
            Some(self.creds(ctx))
        } else {
            None
        };
        self.open_in(self.root(layer), path, flags, HostMode::empty())
    }
}
