//! [`VuFs`]: the four vufs modes as one [`FileSystem`] over host directories.
//!
//! The view is addressed by path (as the C vufs is): each inode knows its
//! name and parent, and every operation resolves the view path in the
//! layer(s) it needs, below the layer's root fd (see [`crate::host`]).
//!
//! Inode numbers: the number `stat` shows is also the FUSE node ID (fuser sends a
//! reply's `attr.ino` as both), and it is derived from the object's host identity, a
//! (layer, host st_dev, st_ino) key (see [`inodes::Numbers`]): an object on SOURCE's
//! device shows its host `st_ino`, one on another device that number with the device's
//! index in the bits above 2^48. So a name keeps its number however often the kernel
//! forgets its node and looks it up again (GNU tar compares a directory's (st_dev,
//! st_ino) at creation and when it sets its times at the end). A copy-up makes the upper
//! copy show its lower original's number for the rest of the mount, so a file keeps its
//! number when it moves from the lower tree to SOURCE (after a remount the copy shows its
//! own); hard links (one lower inode under two names) share one number. Nodes go when
//! the kernel forgets them; the numbers stay what they were.
//!
//! Copy-up happens when a lower file is opened for writing (or truncated,
//! chmod/chown/utimes'd, xattr-changed, linked or renamed). Every open
//! handle of that inode, readers included, is then re-opened on the upper
//! copy, so a handle opened before the copy-up keeps seeing current data.

mod copy_up;
mod creds;
mod handles;
mod inodes;
mod layer_meta;
mod listing;
mod lookup;
mod names;
mod ops;
mod permissions;
mod remove;
mod rename;
mod setattr;

use crate::access::Caller;
use crate::host::{self, At};
use crate::layer::{self, VStat};
use crate::options::{Caching, Mode, Options};
use creds::Creds;
use inodes::{Inodes, Node, Numbers};
use rustix::fs::{AtFlags, Mode as HostMode, OFlags, Stat};
use rustix::io::Errno as HostErrno;
use std::collections::{HashMap, HashSet};
use std::ffi::{OsStr, OsString};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::{Duration, SystemTime};
use vudev::{Errno, Result};
use vufuse_api::fs::{
    check_rename_flags, Attr, CachePolicy, Capabilities, Context, DirEntry, Entry, Fh, FileKind,
    FileSystem, Ino, Opened, SetAttr, SetTime, StatFs, RENAME_EXCHANGE, RENAME_NOREPLACE,
};

/// How long the kernel keeps what it saw under `cache=always` (libfuse passthrough_ll's day).
const CACHE_ALWAYS_TTL: Duration = Duration::from_secs(86_400);

/// Which tree an entry lives in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Layer {
    /// SOURCE.
    Upper,
    /// The tree under the mount point.
    Lower,
}

/// How a path is served.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Route {
    /// One tree, passed through (bind: SOURCE; except: the lower tree).
    Direct(Layer),
    /// The union of both.
    Union,
}

type Key = (u8, u64, u64);

/// An open file.
struct Handle {
    ino: u64,
    /// The open flags to re-open with after a copy-up.
    flags: OFlags,
    fd: RwLock<Arc<OwnedFd>>,
    /// No copy-up can re-open this handle elsewhere (it is on SOURCE, or outside a union
    /// that copies up): the kernel may do its I/O on `fd` directly (passthrough).
    stable: bool,
}

/// A snapshot of a directory listing, taken at opendir: names, types and the numbers
/// they show.
struct DirList {
    entries: Vec<(OsString, FileKind, u64)>,
}

/// What a [`VuFs`] is built from.
#[derive(Debug)]
pub struct Config {
    /// The vufs options (mode, except, nochcopy).
    pub options: Options,
    /// The mount is read-only: do not create `.-`.
    pub read_only: bool,
}

/// The vufs filesystem: bind, merge, cow or mincow of two host trees.
pub struct VuFs {
    options: Options,
    upper: OwnedFd,
    lower: OwnedFd,
    /// `SOURCE/.-`, when the mode uses it and it exists.
    meta: Option<OwnedFd>,
    /// Whether `.-` may hold anything (false: skip whiteout and vstat look-ups).
    meta_used: AtomicBool,
    /// The daemon is root: act on the lower tree with the caller's fsuid/fsgid.
    switch_creds: bool,
    inodes: Mutex<Inodes>,
    handles: Mutex<HashMap<u64, Arc<Handle>>>,
    dirs: Mutex<HashMap<u64, Arc<DirList>>>,
    next_fh: AtomicU64,
    /// Serializes changes of the layers (copy-up, whiteouts) in union modes.
    big: Mutex<()>,
    /// Upper copies made in this mount of lower files with several links:
    /// lower key -> upper view path, to link further names to the same copy.
    linked_copies: Mutex<HashMap<Key, PathBuf>>,
    /// Parent directories resolved recently.
    dircache: host::DirCache,
    /// The host devices of SOURCE and of the lower tree (a listing's entries are taken to be
    /// on their directory's layer's device).
    layer_devs: [u64; 2],
}

impl std::fmt::Debug for VuFs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VuFs")
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

fn errno_is(e: Errno, list: &[Errno]) -> bool {
    list.contains(&e)
}

/// The errors on which mincow falls back to SOURCE.
const REFUSED: &[Errno] = &[Errno::EACCES, Errno::EPERM, Errno::EROFS];

fn kind_of(mode: u32) -> FileKind {
    FileKind::from_mode(mode).unwrap_or(FileKind::File)
}

fn time(sec: i64, nsec: u64) -> SystemTime {
    if sec >= 0 {
        SystemTime::UNIX_EPOCH + Duration::new(sec as u64, nsec as u32)
    } else {
        SystemTime::UNIX_EPOCH - Duration::from_secs(sec.unsigned_abs())
            + Duration::from_nanos(nsec)
    }
}

// The casts are no-ops on x86_64 but not for every `Stat` layout.
#[allow(clippy::unnecessary_cast)]
fn to_attr(ino: u64, st: &Stat) -> Attr {
    let mtime = time(st.st_mtime, st.st_mtime_nsec as u64);
    Attr {
        ino: Ino(ino),
        size: st.st_size as u64,
        blocks: st.st_blocks as u64,
        atime: time(st.st_atime, st.st_atime_nsec as u64),
        mtime,
        ctime: time(st.st_ctime, st.st_ctime_nsec as u64),
        crtime: mtime,
        kind: kind_of(st.st_mode),
        perm: (st.st_mode & 0o7777) as u16,
        nlink: st.st_nlink as u32,
        uid: st.st_uid,
        gid: st.st_gid,
        rdev: st.st_rdev as u32,
        blksize: st.st_blksize as u32,
    }
}

fn key(layer: Layer, st: &Stat) -> Key {
    host_key(layer, st.st_dev, st.st_ino)
}

fn host_key(layer: Layer, dev: u64, ino: u64) -> Key {
    (
        match layer {
            Layer::Upper => 0,
            Layer::Lower => 1,
        },
        dev,
        ino,
    )
}

fn check_name(name: &OsStr) -> Result<()> {
    let b = name.as_bytes();
    if b.is_empty() || b == b"." || b == b".." || b.contains(&b'/') {
        return Err(Errno::EINVAL);
    }
    Ok(())
}

impl VuFs {
    /// Builds the view: `upper` is SOURCE, `lower` the tree under the mount
    /// point (both directory fds, opened before the mount hides them).
    pub fn new(upper: OwnedFd, lower: OwnedFd, config: Config) -> Result<VuFs> {
        let options = config.options;
        let mode = options.mode;
        if matches!(mode, Mode::Cow | Mode::Mincow) && !config.read_only {
            match rustix::fs::mkdirat(&upper, layer::META_DIR, HostMode::from_raw_mode(0o755)) {
                Ok(()) | Err(HostErrno::EXIST) => {}
                Err(e) => return Err(e.into()),
            }
        }
        let meta = if mode.is_union() {
            match host::open_beneath(
                upper.as_fd(),
                Path::new(layer::META_DIR),
                OFlags::PATH | OFlags::DIRECTORY | OFlags::NOFOLLOW,
                HostMode::empty(),
            ) {
                Ok(fd) => Some(fd),
                Err(Errno::ENOENT) => None,
                Err(e) => return Err(e),
            }
        } else {
            None
        };
        let meta_used = match &meta {
            Some(m) => !host::list_dir(m.as_fd(), Path::new(""))?.is_empty(),
            None => false,
        };
        let root = rustix::fs::fstat(&upper)?;
        let root_key = key(Layer::Upper, &root);
        let lower_dev = rustix::fs::fstat(&lower)?.st_dev;
        let mut inodes = Inodes {
            nodes: HashMap::new(),
            by_name: HashMap::new(),
            numbers: Numbers::new(root_key, lower_dev),
        };
        inodes.nodes.insert(
            Ino::ROOT.0,
            Node {
                kind: FileKind::Dir,
                dentries: Vec::new(),
                lookups: 1,
                children: 0,
                seen: None,
            },
        );
        Ok(VuFs {
            options,
            upper,
            lower,
            meta,
            meta_used: AtomicBool::new(meta_used),
            switch_creds: rustix::process::geteuid().is_root(),
            inodes: Mutex::new(inodes),
            handles: Mutex::new(HashMap::new()),
            dirs: Mutex::new(HashMap::new()),
            next_fh: AtomicU64::new(1),
            big: Mutex::new(()),
            linked_copies: Mutex::new(HashMap::new()),
            dircache: host::DirCache::new(),
            layer_devs: [root.st_dev, lower_dev],
        })
    }

    fn at<'a>(&self, base: BorrowedFd<'a>, path: &'a Path) -> Result<At<'a>> {
        At::cached(&self.dircache, base, path)
    }

    fn stat_at(&self, base: BorrowedFd<'_>, path: &Path) -> Result<Stat> {
        self.at(base, path)?.stat()
    }

    fn open_in(
        &self,
        base: BorrowedFd<'_>,
        path: &Path,
        flags: OFlags,
        mode: HostMode,
    ) -> Result<OwnedFd> {
        self.at(base, path)?.open(flags, mode)
    }

    fn open_o_path(&self, base: BorrowedFd<'_>, path: &Path) -> Result<OwnedFd> {
        self.open_in(
            base,
            path,
            OFlags::PATH | OFlags::NOFOLLOW,
            HostMode::empty(),
        )
    }

    fn chmod_at(&self, base: BorrowedFd<'_>, path: &Path, mode: u32) -> Result<()> {
        host::chmod_fd(self.open_o_path(base, path)?.as_fd(), mode)
    }

    fn inodes(&self) -> MutexGuard<'_, Inodes> {
        self.inodes.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn lock_big(&self) -> MutexGuard<'_, ()> {
        self.big.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn root(&self, layer: Layer) -> BorrowedFd<'_> {
        match layer {
            Layer::Upper => self.upper.as_fd(),
            Layer::Lower => self.lower.as_fd(),
        }
    }

    /// The key of a listing's entry with host inode `ino` in `layer`.
    fn entry_key(&self, layer: Layer, ino: u64) -> Key {
        let dev = match layer {
            Layer::Upper => self.layer_devs[0],
            Layer::Lower => self.layer_devs[1],
        };
        host_key(layer, dev, ino)
    }

    fn mode(&self) -> Mode {
        self.options.mode
    }

    fn route(&self, path: &Path) -> Route {
        if self.options.except.iter().any(|e| path.starts_with(e)) {
            return Route::Direct(Layer::Lower);
        }
        if self.mode() == Mode::Bind {
            Route::Direct(Layer::Upper)
        } else {
            Route::Union
        }
    }

    /// True for `.-` (and below) at the root of SOURCE: never shown.
    fn hidden(&self, path: &Path) -> bool {
        path.components().next().map(|c| c.as_os_str()) == Some(OsStr::new(layer::META_DIR))
            && self.route(path) != Route::Direct(Layer::Lower)
    }

    fn creds(&self, ctx: &Context) -> Creds {
        Creds::switch(self.switch_creds, ctx)
    }

    fn path_of(&self, ino: Ino) -> Result<PathBuf> {
        self.inodes().path(ino.0)
    }

    fn child_path(&self, parent: Ino, name: &OsStr) -> Result<PathBuf> {
        check_name(name)?;
        let path = self.path_of(parent)?.join(name);
        if self.hidden(&path) {
            return Err(Errno::ENOENT);
        }
        Ok(path)
    }
}

/// The host open flags for a request's flags: openat2 refuses unknown bits
/// (the kernel passes e.g. `__FMODE_EXEC` for execve), so only the ones that
/// matter to the host file are kept. O_DIRECT is left to the kernel's side.
fn oflags(flags: i32) -> OFlags {
    let keep = libc::O_ACCMODE
        | libc::O_APPEND
        | libc::O_NONBLOCK
        | libc::O_DSYNC
        | libc::O_SYNC
        | libc::O_TRUNC;
    OFlags::from_bits_retain((flags & keep) as u32) | OFlags::NOFOLLOW | OFlags::LARGEFILE
}

fn wants_write(flags: i32) -> bool {
    (flags & libc::O_ACCMODE) != libc::O_RDONLY || flags & libc::O_TRUNC != 0
}

trait SameFd {
    fn as_raw_fd_eq(&self, other: BorrowedFd<'_>) -> bool;
}

impl SameFd for BorrowedFd<'_> {
    fn as_raw_fd_eq(&self, other: BorrowedFd<'_>) -> bool {
        use std::os::fd::AsRawFd;
        self.as_raw_fd() == other.as_raw_fd()
    }
}
