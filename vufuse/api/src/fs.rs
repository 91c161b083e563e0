//! The `FileSystem` contract between drivers and front ends.
//!
//! Return-value style over typed inode numbers (in the spirit of
//! fuse-backend-rs), not reply objects: a driver answers `Result<T, Errno>`,
//! so it can be tested directly and served by any front end (FUSE daemon,
//! VUOS module, image tool). Methods take `&self`; drivers keep their state
//! `Send + Sync` with locks inside.
//!
//! Lookup counts follow the FUSE protocol: every successful `lookup`,
//! `create`, `mkdir`, `mknod`, `symlink` and `link` adds one reference to the
//! returned inode; `forget` drops `n` of them. A driver may recycle an inode
//! number only when its count is zero and the file is gone.

use std::ffi::OsStr;
use std::path::Path;
use std::time::{Duration, SystemTime};
pub use vudev::{Errno, Result};

/// An inode number, stable for the life of a mount.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Ino(pub u64);

impl Ino {
    /// The root directory of every filesystem.
    pub const ROOT: Ino = Ino(1);
}

/// A handle returned by `open`, `opendir` or `create`, passed back on I/O.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Fh(pub u64);

/// The type of a file.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FileKind {
    /// Regular file.
    File,
    /// Directory.
    Dir,
    /// Symbolic link.
    Symlink,
    /// Character device.
    CharDevice,
    /// Block device.
    BlockDevice,
    /// Named pipe.
    Fifo,
    /// Unix socket.
    Socket,
}

impl FileKind {
    /// The `S_IFMT` bits of this kind.
    pub fn mode_bits(self) -> u32 {
        match self {
            FileKind::File => libc::S_IFREG,
            FileKind::Dir => libc::S_IFDIR,
            FileKind::Symlink => libc::S_IFLNK,
            FileKind::CharDevice => libc::S_IFCHR,
            FileKind::BlockDevice => libc::S_IFBLK,
            FileKind::Fifo => libc::S_IFIFO,
            FileKind::Socket => libc::S_IFSOCK,
        }
    }

    /// The kind named by the `S_IFMT` bits of `mode`, if any.
    pub fn from_mode(mode: u32) -> Option<FileKind> {
        Some(match mode & libc::S_IFMT {
            libc::S_IFREG => FileKind::File,
            libc::S_IFDIR => FileKind::Dir,
            libc::S_IFLNK => FileKind::Symlink,
            libc::S_IFCHR => FileKind::CharDevice,
            libc::S_IFBLK => FileKind::BlockDevice,
            libc::S_IFIFO => FileKind::Fifo,
            libc::S_IFSOCK => FileKind::Socket,
            _ => return None,
        })
    }
}

/// What `stat` shows of a file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Attr {
    /// Inode number.
    pub ino: Ino,
    /// Size in bytes.
    pub size: u64,
    /// Allocated 512-byte blocks.
    pub blocks: u64,
    /// Last access.
    pub atime: SystemTime,
    /// Last data modification.
    pub mtime: SystemTime,
    /// Last status change.
    pub ctime: SystemTime,
    /// Creation (where the format keeps it; else `mtime`).
    pub crtime: SystemTime,
    /// File type.
    pub kind: FileKind,
    /// Permission bits (`0o7777`).
    pub perm: u16,
    /// Hard links.
    pub nlink: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Device number for device files.
    pub rdev: u32,
    /// Preferred I/O size.
    pub blksize: u32,
}

/// The answer to `lookup` and to calls that create a name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Entry {
    /// Attributes of the inode found or created.
    pub attr: Attr,
    /// Generation number: distinguishes reuses of one inode number.
    pub generation: u64,
}

/// One directory entry handed to `readdir`'s sink.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DirEntry<'a> {
    /// Inode of the entry.
    pub ino: Ino,
    /// Cookie to pass back as `offset` to continue after this entry.
    pub next_offset: u64,
    /// Type of the entry.
    pub kind: FileKind,
    /// Name (no slash, not empty).
    pub name: &'a OsStr,
}

/// A time to set: a given instant or the current time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SetTime {
    /// This instant.
    At(SystemTime),
    /// The time of the call.
    Now,
}

impl SetTime {
    /// The instant this resolves to now.
    pub fn resolve(self) -> SystemTime {
        match self {
            SetTime::At(t) => t,
            SetTime::Now => SystemTime::now(),
        }
    }
}

/// The changes a `setattr` asks for (`None` leaves a field alone).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SetAttr {
    /// New permission bits.
    pub mode: Option<u32>,
    /// New owner.
    pub uid: Option<u32>,
    /// New group.
    pub gid: Option<u32>,
    /// New size (truncate or extend with zeros).
    pub size: Option<u64>,
    /// New access time.
    pub atime: Option<SetTime>,
    /// New modification time.
    pub mtime: Option<SetTime>,
    /// The handle the change came through (ftruncate, futimens), if any.
    pub fh: Option<Fh>,
}

/// Filesystem statistics for `statfs`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StatFs {
    /// Total blocks of `block_size`.
    pub blocks: u64,
    /// Free blocks.
    pub blocks_free: u64,
    /// Free blocks available to unprivileged users.
    pub blocks_available: u64,
    /// Total inodes (0 if the format has no fixed count).
    pub files: u64,
    /// Free inodes.
    pub files_free: u64,
    /// Block size.
    pub block_size: u32,
    /// Longest name.
    pub name_max: u32,
    /// Fragment size.
    pub fragment_size: u32,
}

/// What `open` and `create` return.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Opened {
    /// The handle for later calls.
    pub fh: Fh,
    /// The kernel may keep cached pages of this file from earlier opens
    /// (only when nothing else can change the file behind the driver's back).
    pub keep_cache: bool,
    /// Bypass the page cache for this handle.
    pub direct_io: bool,
}

/// The caller of a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Context {
    /// Effective user id.
    pub uid: u32,
    /// Effective group id.
    pub gid: u32,
    /// Process id (0 when unknown).
    pub pid: u32,
    /// The caller's umask, when the front end knows it.
    pub umask: Option<u32>,
}

impl Context {
    /// The daemon's own credentials (for tools that call the driver directly).
    pub fn current() -> Context {
        Context {
            uid: rustix::process::geteuid().as_raw(),
            gid: rustix::process::getegid().as_raw(),
            pid: std::process::id(),
            umask: None,
        }
    }
}

/// How long front ends may cache what the driver says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CachePolicy {
    /// Validity of attributes.
    pub attr_ttl: Duration,
    /// Validity of name lookups (and negative lookups).
    pub entry_ttl: Duration,
}

/// What a driver tells its front end once, at mount: how long answers may be cached, which
/// round trips can be skipped, how many serving threads pay off, and whether it checks access
/// itself. FUSE tuning lives here, not in per-request trait methods.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Capabilities {
    /// How long the front end may cache attributes and lookups.
    pub cache: CachePolicy,
    /// [`FileSystem::flush`] never has anything to do (every write is where it belongs when
    /// `write` returns, and close reports no deferred error): the FUSE front end answers the
    /// kernel's first FLUSH with `ENOSYS`, after which the kernel stops sending one per close.
    pub flush_is_noop: bool,
    /// Serving with one thread loses nothing (the driver serialises its calls, or they are
    /// short and served from memory; measured, not assumed): the FUSE daemon then polls for
    /// requests by default (`busy_poll`), which needs exactly one serving thread.
    pub one_thread_suffices: bool,
    /// The driver itself refuses what the caller's credentials do not permit (owner, group,
    /// mode bits, sticky directories). When false, a front end that lets other users in
    /// (`allow_other`) must have the kernel check instead (`default_permissions`).
    pub checks_access: bool,
    /// [`FileSystem::backing_file`] may hand out host files: the FUSE front end then asks the
    /// kernel for passthrough (Linux 6.9+, `CAP_SYS_ADMIN`), and reads and writes of such a
    /// handle go straight to the host file without a request each.
    pub passthrough: bool,
    /// The kernel may keep written data in its page cache and send it later, in large
    /// writes (FUSE_WRITEBACK_CACHE): only for a driver that alone changes its files (the
    /// kernel then keeps size and mtime itself, and trusts its cache across opens). Such a
    /// driver must serve `read` on a handle opened write-only (the kernel fills partly
    /// written pages) and take `write` offsets as given (the kernel resolves O_APPEND).
    /// Durability is unchanged: close, fsync and unmount write the cache back first.
    pub writeback_cache: bool,
    /// The kernel may keep directory listings across opens (FOPEN_CACHE_DIR): only for a
    /// driver whose directories change through this mount alone (the kernel drops a cached
    /// listing when it changes the directory itself or sees its mtime change).
    pub cache_dirs: bool,
    /// The driver keeps extended attributes. When false, the FUSE front end answers every
    /// xattr request with `ENOSYS`: the kernel then stops sending them for the mount and
    /// answers `EOPNOTSUPP` itself (the driver's answer), which saves the round trip it makes
    /// before each write and chown to look for `security.capability`.
    pub xattrs: bool,
    /// The driver keeps POSIX ACLs as the `system.posix_acl_access` and `_default` xattrs
    /// in the kernel's form, and leaves access checks to the kernel: the FUSE front end then
    /// lets the kernel cache ACLs and check permissions with them (FUSE_POSIX_ACL, which
    /// turns on `default_permissions`), so `ls -l` asks for no ACL of a file it has seen.
    pub posix_acls: bool,
}

impl Default for Capabilities {
    /// One-second caches, a flush per close, two threads, access left to the kernel.
    fn default() -> Capabilities {
        Capabilities {
            cache: CachePolicy {
                attr_ttl: Duration::from_secs(1),
                entry_ttl: Duration::from_secs(1),
            },
            flush_is_noop: false,
            one_thread_suffices: false,
            checks_access: false,
            passthrough: false,
            writeback_cache: false,
            cache_dirs: false,
            xattrs: true,
            posix_acls: false,
        }
    }
}

/// `rename` flag: fail with `EEXIST` if the target exists.
pub const RENAME_NOREPLACE: u32 = libc::RENAME_NOREPLACE;
/// `rename` flag: swap source and target atomically.
pub const RENAME_EXCHANGE: u32 = libc::RENAME_EXCHANGE;

/// Refuses rename `flags` a driver cannot honour, as renameat2(2) does before any driver
/// sees them: `EINVAL` for a flag outside `supported` (drawn from [`RENAME_NOREPLACE`] and
/// [`RENAME_EXCHANGE`]) and for both flags at once. The VUOS modules and vuimg pass flags
/// straight from their callers, so every driver's rename starts here.
pub fn check_rename_flags(flags: u32, supported: u32) -> Result<()> {
    let both = RENAME_NOREPLACE | RENAME_EXCHANGE;
    if flags & !(supported & both) != 0 || flags == both {
        return Err(Errno::EINVAL);
    }
    Ok(())
}

/// A filesystem driver. Defaults answer `ENOSYS` (or `EOPNOTSUPP` for
/// xattrs; `EPERM` for symlink and link, the kernel's answer for a filesystem that has
/// none), so a read-only driver implements only what it supports.
#[allow(unused_variables)]
pub trait FileSystem: Send + Sync {
    /// What the front end may assume about this driver, asked once at mount (see
    /// [`Capabilities`]).
    fn capabilities(&self) -> Capabilities {
        Capabilities::default()
    }

    /// Called once before the first request.
    fn init(&self) -> Result<()> {
        Ok(())
    }

    /// Called once at unmount: write everything back.
    fn destroy(&self) {}

    /// Finds `name` in directory `parent` and takes a lookup reference.
    fn lookup(&self, ctx: &Context, parent: Ino, name: &OsStr) -> Result<Entry>;

    /// Drops `count` lookup references of `ino`.
    fn forget(&self, ino: Ino, count: u64) {}

    /// Attributes of `ino`.
    fn getattr(&self, ctx: &Context, ino: Ino, fh: Option<Fh>) -> Result<Attr>;

    /// Changes attributes of `ino`; returns the new ones.
    fn setattr(&self, ctx: &Context, ino: Ino, set: &SetAttr) -> Result<Attr> {
        Err(Errno::ENOSYS)
    }

    /// Target of a symbolic link.
    fn readlink(&self, ctx: &Context, ino: Ino) -> Result<Vec<u8>> {
        Err(Errno::ENOSYS)
    }

    /// Creates a file node (regular, device, fifo, socket) with `mode` (type and permissions).
    fn mknod(
        &self,
        ctx: &Context,
        parent: Ino,
        name: &OsStr,
        mode: u32,
        rdev: u32,
    ) -> Result<Entry> {
        Err(Errno::ENOSYS)
    }

    /// Creates a directory.
    fn mkdir(&self, ctx: &Context, parent: Ino, name: &OsStr, mode: u32) -> Result<Entry> {
        Err(Errno::ENOSYS)
    }

    /// Removes a non-directory name.
    fn unlink(&self, ctx: &Context, parent: Ino, name: &OsStr) -> Result<()> {
        Err(Errno::ENOSYS)
    }

    /// Removes an empty directory.
    fn rmdir(&self, ctx: &Context, parent: Ino, name: &OsStr) -> Result<()> {
        Err(Errno::ENOSYS)
    }

    /// Creates a symbolic link `name` in `parent` pointing at `target`. The default is
    /// `EPERM`, what the kernel answers for a filesystem without symlinks (FAT, exFAT); not
    /// `ENOSYS`, which the kernel would remember for the whole mount.
    fn symlink(&self, ctx: &Context, parent: Ino, name: &OsStr, target: &Path) -> Result<Entry> {
        Err(Errno::EPERM)
    }

    /// Renames, honouring [`RENAME_NOREPLACE`] and [`RENAME_EXCHANGE`].
    fn rename(
        &self,
        ctx: &Context,
        parent: Ino,
        name: &OsStr,
        new_parent: Ino,
        new_name: &OsStr,
        flags: u32,
    ) -> Result<()> {
        Err(Errno::ENOSYS)
    }

    /// Adds a hard link to `ino`. The default is `EPERM`, what the kernel answers for a
    /// filesystem with one name per file (FAT, exFAT).
    fn link(&self, ctx: &Context, ino: Ino, new_parent: Ino, new_name: &OsStr) -> Result<Entry> {
        Err(Errno::EPERM)
    }

    /// Opens a file; `flags` are the open(2) flags.
    fn open(&self, ctx: &Context, ino: Ino, flags: i32) -> Result<Opened> {
        Err(Errno::ENOSYS)
    }

    /// Reads into `buf` at `offset`; returns the count. Fills `buf` unless the file ends
    /// first: a short count means end of file (FUSE and vufuse read it so), never "try again".
    fn read(&self, ctx: &Context, ino: Ino, fh: Fh, offset: u64, buf: &mut [u8]) -> Result<usize> {
        Err(Errno::ENOSYS)
    }

    /// Writes `data` at `offset`; returns the count.
    fn write(&self, ctx: &Context, ino: Ino, fh: Fh, offset: u64, data: &[u8]) -> Result<usize> {
        Err(Errno::ENOSYS)
    }

    /// The host file that an open handle `fh` of `ino` reads and writes, if the kernel may do
    /// that file's I/O on it directly for as long as the handle is open (see
    /// [`Capabilities::passthrough`]): only when it stays the file's one true place (no copy-up
    /// may move the file while the handle is open). Asked right after `open` and `create`.
    fn backing_file(&self, ino: Ino, fh: Fh) -> Option<std::sync::Arc<std::os::fd::OwnedFd>> {
        None
    }

    /// Called on each close(2) of a descriptor.
    fn flush(&self, ctx: &Context, ino: Ino, fh: Fh) -> Result<()> {
        Ok(())
    }

    /// The last reference to a handle is gone.
    fn release(&self, ctx: &Context, ino: Ino, fh: Fh) -> Result<()> {
        Ok(())
    }

    /// Makes a file's data (and metadata unless `datasync`) durable.
    fn fsync(&self, ctx: &Context, ino: Ino, fh: Fh, datasync: bool) -> Result<()> {
        Ok(())
    }

    /// Opens a directory for reading.
    fn opendir(&self, ctx: &Context, ino: Ino) -> Result<Fh> {
        Ok(Fh(0))
    }

    /// Lists entries starting after cookie `offset` (0: from the start,
    /// including `.` and `..`). `sink` returns false when it is full; the
    /// driver then stops and the front end resumes later from that entry's
    /// predecessor's `next_offset`.
    fn readdir(
        &self,
        ctx: &Context,
        ino: Ino,
        fh: Fh,
        offset: u64,
        sink: &mut dyn FnMut(DirEntry<'_>) -> bool,
    ) -> Result<()>;

    /// The last reference to a directory handle is gone.
    fn releasedir(&self, ctx: &Context, ino: Ino, fh: Fh) -> Result<()> {
        Ok(())
    }

    /// Makes a directory durable.
    fn fsyncdir(&self, ctx: &Context, ino: Ino, fh: Fh, datasync: bool) -> Result<()> {
        Ok(())
    }

    /// Space and inode counts.
    fn statfs(&self, ctx: &Context) -> Result<StatFs>;

    /// Creates and opens a regular file.
    fn create(
        &self,
        ctx: &Context,
        parent: Ino,
        name: &OsStr,
        mode: u32,
        flags: i32,
    ) -> Result<(Entry, Opened)> {
        Err(Errno::ENOSYS)
    }

    /// Value of extended attribute `name`.
    fn getxattr(&self, ctx: &Context, ino: Ino, name: &OsStr) -> Result<Vec<u8>> {
        Err(Errno::EOPNOTSUPP)
    }

    /// Sets extended attribute `name` (`flags`: XATTR_CREATE / XATTR_REPLACE).
    fn setxattr(
        &self,
        ctx: &Context,
        ino: Ino,
        name: &OsStr,
        value: &[u8],
        flags: i32,
    ) -> Result<()> {
        Err(Errno::EOPNOTSUPP)
    }

    /// Names of the extended attributes of `ino`.
    fn listxattr(&self, ctx: &Context, ino: Ino) -> Result<Vec<Vec<u8>>> {
        Err(Errno::EOPNOTSUPP)
    }

    /// Removes extended attribute `name`.
    fn removexattr(&self, ctx: &Context, ino: Ino, name: &OsStr) -> Result<()> {
        Err(Errno::EOPNOTSUPP)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rename_flags_outside_the_supported_or_both_at_once_are_einval() {
        let both = RENAME_NOREPLACE | RENAME_EXCHANGE;
        assert_eq!(check_rename_flags(0, 0), Ok(()));
        assert_eq!(check_rename_flags(RENAME_NOREPLACE, both), Ok(()));
        assert_eq!(check_rename_flags(RENAME_EXCHANGE, both), Ok(()));
        assert_eq!(check_rename_flags(both, both), Err(Errno::EINVAL));
        assert_eq!(
            check_rename_flags(RENAME_EXCHANGE, RENAME_NOREPLACE),
            Err(Errno::EINVAL)
        );
        assert_eq!(
            check_rename_flags(RENAME_NOREPLACE, RENAME_NOREPLACE),
            Ok(())
        );
        // RENAME_WHITEOUT, and a bit no kernel defines.
        assert_eq!(check_rename_flags(4, both), Err(Errno::EINVAL));
        assert_eq!(check_rename_flags(1 << 20, both), Err(Errno::EINVAL));
    }
}
