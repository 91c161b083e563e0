//! The state of one mount: the driver, its path resolver and the open files.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use vufuse_api::resolver::PathResolver;
use vufuse_api::{Errno, Fh, FileSystem, Ino};

/// One open file or directory: what `fuse_file_info.fh` stands for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct OpenFile {
    /// The inode, so I/O needs no path walk (and survives renames).
    pub ino: Ino,
    /// The driver's handle.
    pub fh: Fh,
    /// Opened with `opendir` (released with `releasedir`).
    pub dir: bool,
}

#[derive(Default)]
struct Handles {
    next: u64,
    open: HashMap<u64, OpenFile>,
}

/// Everything one mount owns; vufuse hands it back as the context's private data.
pub struct Mount {
    pub(crate) resolver: PathResolver,
    pub(crate) read_only: bool,
    handles: Mutex<Handles>,
    destroyed: AtomicBool,
}

impl Mount {
    /// A mount serving `fs`.
    pub fn new(fs: Arc<dyn FileSystem>, read_only: bool) -> Mount {
        Mount {
            resolver: PathResolver::new(fs),
            read_only,
            handles: Mutex::new(Handles::default()),
            destroyed: AtomicBool::new(false),
        }
    }

    /// The driver.
    pub(crate) fn fs(&self) -> &dyn FileSystem {
        self.resolver.fs().as_ref()
    }

    fn handles(&self) -> MutexGuard<'_, Handles> {
        self.handles.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records an open file; the number goes into `fuse_file_info.fh`.
    pub(crate) fn insert(&self, file: OpenFile) -> u64 {
        let mut handles = self.handles();
        handles.next += 1;
        let key = handles.next;
        handles.open.insert(key, file);
        key
    }

    /// The open file behind `key`; EBADF for a handle this mount never gave.
    pub(crate) fn get(&self, key: u64) -> Result<OpenFile, Errno> {
        self.handles().open.get(&key).copied().ok_or(Errno::EBADF)
    }

    /// Forgets `key`, returning what it stood for.
    pub(crate) fn remove(&self, key: u64) -> Result<OpenFile, Errno> {
        self.handles().open.remove(&key).ok_or(Errno::EBADF)
    }

    /// Writes everything back, once (vufuse's `destroy`, or the end of `main`).
    pub fn destroy(&self) {
        if self.destroyed.swap(true, Ordering::AcqRel) {
            return;
        }
        // Files vufuse never released (it should have) are released now.
        let leftover: Vec<OpenFile> = self.handles().open.drain().map(|(_, f)| f).collect();
        let ctx = vufuse_api::Context::current();
        for file in leftover {
            let _ = if file.dir {
                self.fs().releasedir(&ctx, file.ino, file.fh)
            } else {
                self.fs().release(&ctx, file.ino, file.fh)
            };
        }
        self.resolver.clear();
        self.fs().destroy();
    }
}
