//! `-o errors=continue|remount-ro|panic`: what a mount does when its driver finds the
//! filesystem corrupt during an operation (the driver answers `EUCLEAN`, ext4's
//! `EFSCORRUPTED`), as ext4 and fuse2fs take the option.
//!
//! [`OnCorruption`] wraps any [`FileSystem`]: with `remount-ro`, once one operation found
//! corruption every later change is refused with `EROFS` (reads go on); with `panic`, the
//! process aborts, leaving a dead mount, as fuse2fs does. `continue` needs no wrapper.

use crate::fs::{
    Attr, Capabilities, Context, DirEntry, Entry, Fh, FileSystem, Ino, Opened, SetAttr, StatFs,
};
use crate::options::ErrorBehavior;
use std::ffi::OsStr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use vudev::{Errno, Result};

/// A driver under an `errors=` policy.
pub struct OnCorruption {
    inner: Arc<dyn FileSystem>,
    behavior: ErrorBehavior,
    /// The program name, for the message.
    name: String,
    /// Set at the first corruption under `remount-ro`: changes are refused from then on.
    read_only: AtomicBool,
}

impl OnCorruption {
    /// Wraps `inner`; `name` prefixes the message printed at the first corruption.
    pub fn new(inner: Arc<dyn FileSystem>, behavior: ErrorBehavior, name: &str) -> OnCorruption {
        OnCorruption {
            inner,
            behavior,
            name: name.to_string(),
            read_only: AtomicBool::new(false),
        }
    }

    /// The driver wrapped as `behavior` asks (`continue`: `inner` itself).
    pub fn wrap(
        inner: Arc<dyn FileSystem>,
        behavior: Option<ErrorBehavior>,
        name: &str,
    ) -> Arc<dyn FileSystem> {
        match behavior {
            None | Some(ErrorBehavior::Continue) => inner,
            Some(b) => Arc::new(OnCorruption::new(inner, b, name)),
        }
    }

    /// True once a corruption switched the mount to read-only.
    pub fn switched_read_only(&self) -> bool {
        self.read_only.load(Ordering::Acquire)
    }

    /// Looks at an operation's result: corruption triggers the policy.
    fn seen<T>(&self, op: &str, result: Result<T>) -> Result<T> {
        if result.as_ref().err() == Some(&Errno::EUCLEAN) {
            match self.behavior {
                ErrorBehavior::Continue => {}
                ErrorBehavior::RemountRo => {
                    if !self.read_only.swap(true, Ordering::AcqRel) {
                        eprintln!(
                            "{}: {op}: the filesystem is corrupt (errors=remount-ro): \
                             refusing every change from now on; run e2fsck after unmounting",
                            self.name
                        );
                    }
                }
                ErrorBehavior::Panic => {
                    eprintln!(
                        "{}: {op}: the filesystem is corrupt (errors=panic): aborting",
                        self.name
                    );
                    std::process::abort();
                }
            }
        }
        result
    }

    /// Refuses a change once switched to read-only.
    fn change(&self) -> Result<()> {
        if self.switched_read_only() {
            Err(Errno::EROFS)
        } else {
            Ok(())
        }
    }
}

/// Whether open flags ask to write (or truncate).
fn writes(flags: i32) -> bool {
    flags & libc::O_ACCMODE != libc::O_RDONLY || flags & libc::O_TRUNC != 0
}

impl FileSystem for OnCorruption {
    fn capabilities(&self) -> Capabilities {
        self.inner.capabilities()
    }

    fn init(&self) -> Result<()> {
        self.inner.init()
    }

    fn destroy(&self) {
        self.inner.destroy()
    }

    fn lookup(&self, ctx: &Context, parent: Ino, name: &OsStr) -> Result<Entry> {
        self.seen("lookup", self.inner.lookup(ctx, parent, name))
    }

    fn forget(&self, ino: Ino, count: u64) {
        self.inner.forget(ino, count)
    }

    fn getattr(&self, ctx: &Context, ino: Ino, fh: Option<Fh>) -> Result<Attr> {
        self.seen("getattr", self.inner.getattr(ctx, ino, fh))
    }

    fn setattr(&self, ctx: &Context, ino: Ino, set: &SetAttr) -> Result<Attr> {
        self.change()?;
        self.seen("setattr", self.inner.setattr(ctx, ino, set))
    }

    fn readlink(&self, ctx: &Context, ino: Ino) -> Result<Vec<u8>> {
        self.seen("readlink", self.inner.readlink(ctx, ino))
    }

    fn mknod(
        &self,
        ctx: &Context,
        parent: Ino,
        name: &OsStr,
        mode: u32,
        rdev: u32,
    ) -> Result<Entry> {
        self.change()?;
        self.seen("mknod", self.inner.mknod(ctx, parent, name, mode, rdev))
    }

    fn mkdir(&self, ctx: &Context, parent: Ino, name: &OsStr, mode: u32) -> Result<Entry> {
        self.change()?;
        self.seen("mkdir", self.inner.mkdir(ctx, parent, name, mode))
    }

    fn unlink(&self, ctx: &Context, parent: Ino, name: &OsStr) -> Result<()> {
        self.change()?;
        self.seen("unlink", self.inner.unlink(ctx, parent, name))
    }

    fn rmdir(&self, ctx: &Context, parent: Ino, name: &OsStr) -> Result<()> {
        self.change()?;
        self.seen("rmdir", self.inner.rmdir(ctx, parent, name))
    }

    fn symlink(&self, ctx: &Context, parent: Ino, name: &OsStr, target: &Path) -> Result<Entry> {
        self.change()?;
        self.seen("symlink", self.inner.symlink(ctx, parent, name, target))
    }

    fn rename(
        &self,
        ctx: &Context,
        parent: Ino,
        name: &OsStr,
        new_parent: Ino,
        new_name: &OsStr,
        flags: u32,
    ) -> Result<()> {
        self.change()?;
        let result = self
            .inner
            .rename(ctx, parent, name, new_parent, new_name, flags);
        self.seen("rename", result)
    }

    fn link(&self, ctx: &Context, ino: Ino, new_parent: Ino, new_name: &OsStr) -> Result<Entry> {
        self.change()?;
        self.seen("link", self.inner.link(ctx, ino, new_parent, new_name))
    }

    fn open(&self, ctx: &Context, ino: Ino, flags: i32) -> Result<Opened> {
        if writes(flags) {
            self.change()?;
        }
        self.seen("open", self.inner.open(ctx, ino, flags))
    }

    fn read(&self, ctx: &Context, ino: Ino, fh: Fh, offset: u64, buf: &mut [u8]) -> Result<usize> {
        self.seen("read", self.inner.read(ctx, ino, fh, offset, buf))
    }

    fn write(&self, ctx: &Context, ino: Ino, fh: Fh, offset: u64, data: &[u8]) -> Result<usize> {
        self.change()?;
        self.seen("write", self.inner.write(ctx, ino, fh, offset, data))
    }

    fn flush(&self, ctx: &Context, ino: Ino, fh: Fh) -> Result<()> {
        self.seen("flush", self.inner.flush(ctx, ino, fh))
    }

    fn release(&self, ctx: &Context, ino: Ino, fh: Fh) -> Result<()> {
        self.seen("release", self.inner.release(ctx, ino, fh))
    }

    fn fsync(&self, ctx: &Context, ino: Ino, fh: Fh, datasync: bool) -> Result<()> {
        self.seen("fsync", self.inner.fsync(ctx, ino, fh, datasync))
    }

    fn opendir(&self, ctx: &Context, ino: Ino) -> Result<Fh> {
        self.seen("opendir", self.inner.opendir(ctx, ino))
    }

    fn readdir(
        &self,
        ctx: &Context,
        ino: Ino,
        fh: Fh,
        offset: u64,
        sink: &mut dyn FnMut(DirEntry<'_>) -> bool,
    ) -> Result<()> {
        self.seen("readdir", self.inner.readdir(ctx, ino, fh, offset, sink))
    }

    fn releasedir(&self, ctx: &Context, ino: Ino, fh: Fh) -> Result<()> {
        self.seen("releasedir", self.inner.releasedir(ctx, ino, fh))
    }

    fn fsyncdir(&self, ctx: &Context, ino: Ino, fh: Fh, datasync: bool) -> Result<()> {
        self.seen("fsyncdir", self.inner.fsyncdir(ctx, ino, fh, datasync))
    }

    fn statfs(&self, ctx: &Context) -> Result<StatFs> {
        self.seen("statfs", self.inner.statfs(ctx))
    }

    fn create(
        &self,
        ctx: &Context,
        parent: Ino,
        name: &OsStr,
        mode: u32,
        flags: i32,
    ) -> Result<(Entry, Opened)> {
        self.change()?;
        self.seen("create", self.inner.create(ctx, parent, name, mode, flags))
    }

    fn getxattr(&self, ctx: &Context, ino: Ino, name: &OsStr) -> Result<Vec<u8>> {
        self.seen("getxattr", self.inner.getxattr(ctx, ino, name))
    }

    fn setxattr(
        &self,
        ctx: &Context,
        ino: Ino,
        name: &OsStr,
        value: &[u8],
        flags: i32,
    ) -> Result<()> {
        self.change()?;
        let result = self.inner.setxattr(ctx, ino, name, value, flags);
        self.seen("setxattr", result)
    }

    fn listxattr(&self, ctx: &Context, ino: Ino) -> Result<Vec<Vec<u8>>> {
        self.seen("listxattr", self.inner.listxattr(ctx, ino))
    }

    fn removexattr(&self, ctx: &Context, ino: Ino, name: &OsStr) -> Result<()> {
        self.change()?;
        self.seen("removexattr", self.inner.removexattr(ctx, ino, name))
    }
}
