//! [`VuFs`]: the four vufs modes as one [`FileSystem`] over host directories.
//!
//! The view is addressed by path (as the C vufs is): each inode knows its
//! name and parent, and every operation resolves the view path in the
//! layer(s) it needs, below the layer's root fd (see [`crate::host`]).
//!
//! Inode numbers: a (layer, host st_dev, st_ino) key maps to one FUSE inode
//! for the life of the mount, and so does a (parent, name) pair while the
//! kernel holds it: a copy-up adds the upper key to the same inode, so a
//! file keeps its number when it moves from the lower tree to SOURCE, and
//! hard links (one lower inode under two names) share one number. Entries
//! go when the kernel forgets them.
//!
//! Copy-up happens when a lower file is opened for writing (or truncated,
//! chmod/chown/utimes'd, xattr-changed, linked or renamed). Every open
//! handle of that inode, readers included, is then re-opened on the upper
//! copy, so a handle opened before the copy-up keeps seeing current data.

use crate::access::Caller;
use crate::host::{self, At};
use crate::layer::{self, VStat};
use crate::options::{Mode, Options};
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
    Attr, Capabilities, Context, DirEntry, Entry, Fh, FileKind, FileSystem, Ino, Opened, SetAttr,
    SetTime, StatFs, RENAME_EXCHANGE, RENAME_NOREPLACE,
};

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

struct Node {
    kind: FileKind,
    /// Names of this inode, (parent, name); the first is used for paths.
    dentries: Vec<(u64, OsString)>,
    lookups: u64,
    /// Dentries of other nodes naming this one as their parent.
    children: u64,
    keys: Vec<Key>,
    /// (mtime, mtime_nsec, size) at the last open, to keep the page cache.
    seen: Option<(i64, u64, i64)>,
}

struct Inodes {
    nodes: HashMap<u64, Node>,
    by_key: HashMap<Key, u64>,
    by_name: HashMap<(u64, OsString), u64>,
    next: u64,
}

impl Inodes {
    fn path(&self, ino: u64) -> Result<PathBuf> {
        let mut names: Vec<&OsStr> = Vec::new();
        let mut current = ino;
        while current != Ino::ROOT.0 {
            let node = self.nodes.get(&current).ok_or(Errno::ENOENT)?;
            let (parent, name) = node.dentries.first().ok_or(Errno::ENOENT)?;
            names.push(name);
            current = *parent;
            if names.len() > 4096 {
                return Err(Errno::ELOOP);
            }
        }
        let mut path = PathBuf::new();
        for name in names.iter().rev() {
            path.push(name);
        }
        Ok(path)
    }

    fn add_dentry(&mut self, ino: u64, parent: u64, name: &OsStr) {
        if let Some(node) = self.nodes.get_mut(&ino) {
            node.dentries.push((parent, name.to_os_string()));
        }
        if let Some(p) = self.nodes.get_mut(&parent) {
            p.children += 1;
        }
        self.by_name.insert((parent, name.to_os_string()), ino);
    }

    /// Takes a lookup reference on the inode for `name` in `parent` with `key`.
    fn attach(&mut self, parent: u64, name: &OsStr, key: Key, kind: FileKind) -> u64 {
        let dentry = (parent, name.to_os_string());
        if let Some(&ino) = self.by_name.get(&dentry) {
            let same = self.nodes.get(&ino).is_some_and(|n| n.kind == kind);
            if same {
                let node = self.nodes.get_mut(&ino).expect("checked");
                node.lookups += 1;
                if !node.keys.contains(&key) {
                    node.keys.push(key);
                    self.by_key.insert(key, ino);
                }
                return ino;
            }
            self.drop_dentry(parent, name);
        }
        if let Some(&ino) = self.by_key.get(&key) {
            if self.nodes.get(&ino).is_some_and(|n| n.kind == kind) {
                self.nodes.get_mut(&ino).expect("checked").lookups += 1;
                self.add_dentry(ino, parent, name);
                return ino;
            }
        }
        let ino = self.next;
        self.next += 1;
        self.nodes.insert(
            ino,
            Node {
                kind,
                dentries: Vec::new(),
                lookups: 1,
                children: 0,
                keys: vec![key],
                seen: None,
            },
        );
        self.by_key.insert(key, ino);
        self.add_dentry(ino, parent, name);
        ino
    }

    /// Forgets the name `name` in `parent` (after unlink, rmdir, rename).
    fn drop_dentry(&mut self, parent: u64, name: &OsStr) {
        let Some(ino) = self.by_name.remove(&(parent, name.to_os_string())) else {
            return;
        };
        if let Some(node) = self.nodes.get_mut(&ino) {
            node.dentries.retain(|(p, n)| !(*p == parent && n == name));
        }
        if let Some(p) = self.nodes.get_mut(&parent) {
            p.children = p.children.saturating_sub(1);
        }
        self.maybe_remove(parent);
        self.maybe_remove(ino);
    }

    fn maybe_remove(&mut self, ino: u64) {
        if ino == Ino::ROOT.0 {
            return;
        }
        let remove = self
            .nodes
            .get(&ino)
            .is_some_and(|n| n.lookups == 0 && n.children == 0);
        if !remove {
            return;
        }
        let node = self.nodes.remove(&ino).expect("checked");
        for key in &node.keys {
            if self.by_key.get(key) == Some(&ino) {
                self.by_key.remove(key);
            }
        }
        for (parent, name) in node.dentries {
            self.by_name.remove(&(parent, name));
            if let Some(p) = self.nodes.get_mut(&parent) {
                p.children = p.children.saturating_sub(1);
            }
            self.maybe_remove(parent);
        }
    }

    /// The inode a view path names, if the kernel holds it.
    fn find_path(&self, path: &Path) -> Option<u64> {
        let mut ino = Ino::ROOT.0;
        for c in path.components() {
            ino = *self.by_name.get(&(ino, c.as_os_str().to_os_string()))?;
        }
        Some(ino)
    }
}

/// An open file.
struct Handle {
    ino: u64,
    /// The open flags to re-open with after a copy-up.
    flags: OFlags,
    fd: RwLock<Arc<OwnedFd>>,
}

/// A snapshot of a directory listing, taken at opendir.
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
    (
        match layer {
            Layer::Upper => 0,
            Layer::Lower => 1,
        },
        st.st_dev,
        st.st_ino,
    )
}

fn check_name(name: &OsStr) -> Result<()> {
    let b = name.as_bytes();
    if b.is_empty() || b == b"." || b == b".." || b.contains(&b'/') {
        return Err(Errno::EINVAL);
    }
    Ok(())
}

/// Runs lower-tree operations with the caller's fsuid/fsgid (when the
/// daemon is root), so the host checks permissions and new files belong to
/// the caller. Restores the daemon's ids on drop.
struct Creds {
    active: bool,
}

impl Creds {
    #[allow(unsafe_code)]
    fn switch(on: bool, ctx: &Context) -> Creds {
        if !on || ctx.uid == 0 {
            return Creds { active: false };
        }
        // SAFETY: setfsgid/setfsuid take plain integers, change only the
        // calling thread's filesystem ids (the raw syscalls are per thread),
        // and cannot fail in a way that corrupts memory.
        unsafe {
            libc::setfsgid(ctx.gid);
            libc::setfsuid(ctx.uid);
        }
        Creds { active: true }
    }
}

impl Drop for Creds {
    #[allow(unsafe_code)]
    fn drop(&mut self) {
        if self.active {
            // SAFETY: as in `switch`; back to the daemon's (root) ids.
            unsafe {
                libc::setfsuid(0);
                libc::setfsgid(0);
            }
        }
    }
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
        let mut inodes = Inodes {
            nodes: HashMap::new(),
            by_key: HashMap::new(),
            by_name: HashMap::new(),
            next: 2,
        };
        let root_key = key(Layer::Upper, &root);
        inodes.nodes.insert(
            Ino::ROOT.0,
            Node {
                kind: FileKind::Dir,
                dentries: Vec::new(),
                lookups: 1,
                children: 0,
                keys: vec![root_key],
                seen: None,
            },
        );
        inodes.by_key.insert(root_key, Ino::ROOT.0);
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

    // ---- the layer format -------------------------------------------------

    fn meta(&self) -> Option<BorrowedFd<'_>> {
        self.meta.as_ref().map(|m| m.as_fd())
    }

    /// A whiteout hides `path` (or one of its ancestors).
    fn deleted(&self, path: &Path) -> bool {
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

    fn whiteout(&self, path: &Path) -> Result<()> {
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

    fn dewhiteout(&self, path: &Path) {
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

    fn read_vstat(&self, path: &Path) -> Option<VStat> {
        let meta = self.meta()?;
        if !self.meta_used.load(Ordering::Relaxed) {
            return None;
        }
        let data = host::read_small(meta, &layer::vstat_path(path), 1023).ok()?;
        Some(VStat::parse(&data))
    }

    fn write_vstat(&self, path: &Path, v: &VStat) -> Result<()> {
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

    fn update_vstat(&self, path: &Path, change: &VStat) -> Result<()> {
        let mut v = self.read_vstat(path).unwrap_or_default();
        v.update(change);
        self.write_vstat(path, &v)
    }

    /// Applies the vstat of `path` to `st` (union modes only).
    fn merged(&self, path: &Path, mut st: Stat) -> Stat {
        if self.route(path) == Route::Union {
            if let Some(v) = self.read_vstat(path) {
                v.apply(&mut st);
            }
        }
        st
    }

    // ---- finding things -----------------------------------------------------

    /// Where `path` lives in the view, and its host `lstat`.
    fn find(&self, path: &Path) -> Result<(Layer, Stat)> {
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

    fn exists(&self, path: &Path) -> bool {
        self.find(path).is_ok()
    }

    fn in_upper(&self, path: &Path) -> bool {
        self.stat_at(self.upper.as_fd(), path).is_ok()
    }

    fn lower_stat(&self, path: &Path) -> Option<Stat> {
        self.stat_at(self.lower.as_fd(), path).ok()
    }

    fn attach(&self, parent: Ino, name: &OsStr, layer: Layer, path: &Path, st: Stat) -> Entry {
        let st = self.merged(path, st);
        let ino = self.inodes().attach(
            parent.0,
            name,
            key(layer, &st_raw_key(&st)),
            kind_of(st.st_mode),
        );
        Entry {
            attr: to_attr(ino, &st),
            generation: 0,
        }
    }

    fn attr_of(&self, ino: Ino, path: &Path) -> Result<Attr> {
        let (_, st) = self.find(path)?;
        Ok(to_attr(ino.0, &self.merged(path, st)))
    }

    // ---- copy-up ------------------------------------------------------------

    /// Makes every ancestor of `path` exist as a directory in SOURCE,
    /// copying mode, owner, times and xattrs from the lower tree.
    fn upper_parents(&self, ctx: &Context, path: &Path) -> Result<()> {
        let Some(parent) = path.parent() else {
            return Ok(());
        };
        // Usually the parent already lives in SOURCE, and so do its ancestors.
        if self
            .stat_at(self.upper.as_fd(), parent)
            .is_ok_and(|st| st.st_mode & libc::S_IFMT == libc::S_IFDIR)
        {
            return Ok(());
        }
        let mut prefix = PathBuf::new();
        for c in parent.components() {
            prefix.push(c);
            match self.stat_at(self.upper.as_fd(), &prefix) {
                Ok(st) if st.st_mode & libc::S_IFMT == libc::S_IFDIR => continue,
                Ok(_) => return Err(Errno::ENOTDIR),
                Err(Errno::ENOENT) => {}
                Err(e) => return Err(e),
            }
            self.copy_up_one(ctx, &prefix, None)?;
        }
        Ok(())
    }

    /// Copies the lower `path` (not a directory's contents) into SOURCE.
    /// `truncate` limits the data copied (O_TRUNC, truncate()).
    fn copy_up(&self, ctx: &Context, path: &Path, truncate: Option<u64>) -> Result<()> {
        self.upper_parents(ctx, path)?;
        self.copy_up_one(ctx, path, truncate)
    }

    fn copy_up_one(&self, ctx: &Context, path: &Path, truncate: Option<u64>) -> Result<()> {
        let lst = self.stat_at(self.lower.as_fd(), path)?;
        let upper = self.upper.as_fd();
        let at = self.at(upper, path)?;
        let fmt = lst.st_mode & libc::S_IFMT;
        let mut view = VStat::default();
        let mut linked = false;
        match fmt {
            libc::S_IFREG => {
                let src = {
                    let _c = self.creds(ctx);
                    self.open_in(
                        self.lower.as_fd(),
                        path,
                        OFlags::RDONLY | OFlags::NOFOLLOW,
                        HostMode::empty(),
                    )?
                };
                let lkey = key(Layer::Lower, &lst);
                if lst.st_nlink > 1 {
                    let other = self
                        .linked_copies
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .get(&lkey)
                        .cloned();
                    if let Some(other) = other {
                        if let Ok(oat) = self.at(upper, &other) {
                            linked = rustix::fs::linkat(
                                oat.dir(),
                                oat.name,
                                at.dir(),
                                at.name,
                                AtFlags::empty(),
                            )
                            .is_ok();
                        }
                    }
                }
                if !linked {
                    let dst = self.open_in(
                        upper,
                        path,
                        OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW,
                        HostMode::from_raw_mode(0o600),
                    )?;
                    let len = (lst.st_size as u64).min(truncate.unwrap_or(u64::MAX));
                    if let Err(e) = host::copy_data(src.as_fd(), dst.as_fd(), len) {
                        let _ = rustix::fs::unlinkat(at.dir(), at.name, AtFlags::empty());
                        return Err(e);
                    }
                    if lst.st_nlink > 1 {
                        self.linked_copies
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .insert(lkey, path.to_path_buf());
                    }
                }
            }
            libc::S_IFDIR => {
                rustix::fs::mkdirat(at.dir(), at.name, HostMode::from_raw_mode(0o700))?;
            }
            libc::S_IFLNK => {
                let target = rustix::fs::readlinkat(
                    self.at(self.lower.as_fd(), path)?.dir(),
                    at.name,
                    Vec::new(),
                )?;
                rustix::fs::symlinkat(target.as_c_str(), at.dir(), at.name)?;
            }
            _ => {
                let ft = rustix::fs::FileType::from_raw_mode(lst.st_mode);
                let perm = HostMode::from_raw_mode(lst.st_mode & 0o7777);
                match rustix::fs::mknodat(at.dir(), at.name, ft, perm, lst.st_rdev) {
                    Ok(()) => {}
                    Err(HostErrno::PERM) if fmt == libc::S_IFCHR || fmt == libc::S_IFBLK => {
                        rustix::fs::mknodat(
                            at.dir(),
                            at.name,
                            rustix::fs::FileType::RegularFile,
                            perm,
                            0,
                        )?;
                        view.kind = Some(fmt);
                        view.rdev = Some((
                            libc::major(lst.st_rdev) as u32,
                            libc::minor(lst.st_rdev) as u32,
                        ));
                    }
                    Err(e) => return Err(e.into()),
                }
            }
        }
        if !linked {
            self.copy_meta(path, &lst, view)?;
            if fmt == libc::S_IFREG && lst.st_nlink > 1 {
                self.link_other_names(ctx, path, &lst);
            }
        }
        // The inode keeps its number: add the upper key; move open handles.
        let ust = at.stat()?;
        let ino = {
            let mut inodes = self.inodes();
            let ino = inodes.find_path(path);
            if let Some(ino) = ino {
                let k = key(Layer::Upper, &ust);
                if let Some(node) = inodes.nodes.get_mut(&ino) {
                    if !node.keys.contains(&k) {
                        node.keys.push(k);
                    }
                }
                inodes.by_key.insert(k, ino);
            }
            ino
        };
        if let Some(ino) = ino {
            self.redirect_handles(ino, path);
        }
        Ok(())
    }

    /// Hard links survive copy-up: the other view names of the lower file
    /// just copied to `path` become links to the copy. The lower tree is
    /// searched until all `st_nlink` names are found (only files with
    /// several links pay for this).
    #[allow(clippy::unnecessary_cast)]
    fn link_other_names(&self, ctx: &Context, path: &Path, lst: &Stat) {
        let mut missing = lst.st_nlink.saturating_sub(1) as u64;
        let mut stack = vec![PathBuf::new()];
        let mut found = Vec::new();
        while let Some(dir) = stack.pop() {
            if missing == 0 {
                break;
            }
            let Ok(entries) = host::list_dir(self.lower.as_fd(), &dir) else {
                continue;
            };
            for e in entries {
                let child = dir.join(&e.name);
                match e.kind {
                    Some(libc::S_IFDIR) => stack.push(child),
                    Some(libc::S_IFREG) | None
                        if e.ino == lst.st_ino
                            && child != path
                            && self.stat_at(self.lower.as_fd(), &child).is_ok_and(|st| {
                                st.st_dev == lst.st_dev && st.st_ino == lst.st_ino
                            }) =>
                    {
                        missing = missing.saturating_sub(1);
                        found.push(child);
                    }
                    _ => {}
                }
            }
        }
        for other in found {
            if self.route(&other) != Route::Union
                || self.in_upper(&other)
                || self.deleted(&other)
                || self.upper_parents(ctx, &other).is_err()
            {
                continue;
            }
            if let (Ok(a), Ok(b)) = (
                self.at(self.upper.as_fd(), path),
                self.at(self.upper.as_fd(), &other),
            ) {
                let _ = rustix::fs::linkat(a.dir(), a.name, b.dir(), b.name, AtFlags::empty());
            }
        }
    }

    /// Gives the upper copy of `path` the mode, owner, times and xattrs of
    /// the lower `lst` (as the view shows it, vstat included); what cannot be
    /// set is recorded in the vstat file.
    fn copy_meta(&self, path: &Path, lst: &Stat, extra: VStat) -> Result<()> {
        let upper = self.upper.as_fd();
        let old = self.read_vstat(path).unwrap_or_default();
        let mut want = *lst;
        old.apply(&mut want);
        let at = self.at(upper, path)?;
        let is_link = lst.st_mode & libc::S_IFMT == libc::S_IFLNK;
        if let (Ok(src), Ok(dst)) = (
            self.open_o_path(self.lower.as_fd(), path),
            self.open_o_path(upper, path),
        ) {
            if !is_link {
                host::copy_xattrs(src.as_fd(), dst.as_fd());
            }
        }
        let _ = rustix::fs::chownat(
            at.dir(),
            at.name,
            Some(rustix::fs::Uid::from_raw(want.st_uid)),
            Some(rustix::fs::Gid::from_raw(want.st_gid)),
            AtFlags::SYMLINK_NOFOLLOW,
        );
        if !is_link && self.chmod_at(upper, path, want.st_mode).is_err() {
            let _ = self.chmod_at(upper, path, want.st_mode & 0o777);
        }
        let times = rustix::fs::Timestamps {
            last_access: rustix::fs::Timespec {
                tv_sec: lst.st_atime,
                tv_nsec: lst.st_atime_nsec as _,
            },
            last_modification: rustix::fs::Timespec {
                tv_sec: lst.st_mtime,
                tv_nsec: lst.st_mtime_nsec as _,
            },
        };
        let _ = rustix::fs::utimensat(at.dir(), at.name, &times, AtFlags::SYMLINK_NOFOLLOW);
        let got = at.stat()?;
        let mut v = VStat {
            kind: old.kind.or(extra.kind),
            rdev: old.rdev.or(extra.rdev),
            dev: old.dev,
            ctime: old.ctime,
            ..VStat::default()
        };
        if got.st_mode & 0o7777 != want.st_mode & 0o7777 && !is_link {
            v.mode = Some(want.st_mode & 0o7777);
        }
        if got.st_uid != want.st_uid {
            v.uid = Some(want.st_uid);
        }
        if got.st_gid != want.st_gid {
            v.gid = Some(want.st_gid);
        }
        self.write_vstat(path, &v)
    }

    /// Re-opens every handle of `ino` on the upper copy of `path`.
    fn redirect_handles(&self, ino: u64, path: &Path) {
        let handles: Vec<Arc<Handle>> = self
            .handles
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .filter(|h| h.ino == ino)
            .cloned()
            .collect();
        for h in handles {
            if let Ok(fd) = self.open_in(self.upper.as_fd(), path, h.flags, HostMode::empty()) {
                *h.fd.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(fd);
            }
        }
    }

    /// Copies the whole visible tree at `path` into SOURCE (directory rename in cow).
    fn copy_tree_up(&self, ctx: &Context, path: &Path) -> Result<()> {
        let (layer, st) = self.find(path)?;
        if layer == Layer::Lower {
            self.copy_up(ctx, path, None)?;
        }
        if st.st_mode & libc::S_IFMT != libc::S_IFDIR {
            return Ok(());
        }
        let Ok(entries) = host::list_dir(self.lower.as_fd(), path) else {
            return Ok(());
        };
        for e in entries {
            let child = path.join(&e.name);
            if self.in_upper(&child) {
                let cst = self.stat_at(self.upper.as_fd(), &child)?;
                if cst.st_mode & libc::S_IFMT == libc::S_IFDIR {
                    self.copy_tree_up(ctx, &child)?;
                }
                continue;
            }
            if self.deleted(&child) {
                continue;
            }
            self.copy_tree_up(ctx, &child)?;
        }
        Ok(())
    }

    /// Hides every lower entry of directory `path` that SOURCE does not have
    /// (a re-created or renamed directory shows none of the old lower entries).
    fn make_opaque(&self, path: &Path) -> Result<()> {
        let Some(lst) = self.lower_stat(path) else {
            return Ok(());
        };
        if lst.st_mode & libc::S_IFMT != libc::S_IFDIR {
            return Ok(());
        }
        for e in host::list_dir(self.lower.as_fd(), path)? {
            let child = path.join(&e.name);
            if !self.in_upper(&child) {
                self.whiteout(&child)?;
            }
        }
        Ok(())
    }

    /// Owner and permissions for a name just created in SOURCE by `ctx`.
    fn own_new(&self, ctx: &Context, path: &Path, perm: Option<u32>) -> Result<()> {
        self.own_new_known(ctx, path, perm, None).map(|_| ())
    }

    /// [`Self::own_new`] given the new name's stat when the caller has it (an open file):
    /// returns whether the name's mode or owner changed, so that the stat is stale.
    fn own_new_known(
        &self,
        ctx: &Context,
        path: &Path,
        perm: Option<u32>,
        known: Option<&Stat>,
    ) -> Result<bool> {
        let upper = self.upper.as_fd();
        let at = self.at(upper, path)?;
        let st = match known {
            Some(st) => *st,
            None => at.stat()?,
        };
        let mut changed = false;
        if let Some(perm) = perm {
            if st.st_mode & 0o7777 != perm & 0o7777 {
                let _ = self.chmod_at(upper, path, perm);
                changed = true;
            }
        }
        let mut v = VStat::default();
        let owner_differs = st.st_uid != ctx.uid || st.st_gid != ctx.gid;
        changed |= owner_differs;
        if owner_differs
            && rustix::fs::chownat(
                at.dir(),
                at.name,
                Some(rustix::fs::Uid::from_raw(ctx.uid)),
                Some(rustix::fs::Gid::from_raw(ctx.gid)),
                AtFlags::SYMLINK_NOFOLLOW,
            )
            .is_err()
            && self.route(path) == Route::Union
        {
            v.uid = Some(ctx.uid);
            v.gid = Some(ctx.gid);
        }
        if self.route(path) == Route::Union {
            self.write_vstat(path, &v)?;
        }
        Ok(changed)
    }

    /// Where a new name goes: the layer, and whether to act as the caller.
    fn create_target(&self, ctx: &Context, path: &Path) -> Result<Layer> {
        match self.route(path) {
            Route::Direct(layer) => Ok(layer),
            Route::Union => match self.mode() {
                Mode::Merge => {
                    if self.in_upper(path) || self.deleted(path) {
                        Err(Errno::EROFS)
                    } else {
                        Ok(Layer::Lower)
                    }
                }
                Mode::Cow => {
                    if self.exists(path) {
                        return Err(Errno::EEXIST);
                    }
                    self.upper_parents(ctx, path)?;
                    Ok(Layer::Upper)
                }
                _ => {
                    if self.exists(path) {
                        return Err(Errno::EEXIST);
                    }
                    if self.deleted(path) {
                        self.upper_parents(ctx, path)?;
                        return Ok(Layer::Upper);
                    }
                    Ok(Layer::Lower)
                }
            },
        }
    }

    /// Runs `make` in the target layer; mincow retries in SOURCE when the
    /// lower tree refuses. Returns the layer the name was made in.
    fn make_name(
        &self,
        ctx: &Context,
        path: &Path,
        make: &dyn Fn(BorrowedFd<'_>) -> Result<()>,
    ) -> Result<Layer> {
        let layer = self.create_target(ctx, path)?;
        let direct = self.route(path) != Route::Union;
        if layer == Layer::Lower || direct {
            let result = {
                let _c = self.creds(ctx);
                make(self.root(layer))
            };
            match result {
                Ok(()) => return Ok(layer),
                Err(e)
                    if self.mode() == Mode::Mincow
                        && !direct
                        && errno_is(
                            e,
                            &[Errno::EACCES, Errno::EPERM, Errno::EROFS, Errno::ENOENT],
                        ) =>
                {
                    self.upper_parents(ctx, path)?;
                }
                Err(e) => return Err(e),
            }
        }
        make(self.upper.as_fd())?;
        self.dewhiteout(path);
        Ok(Layer::Upper)
    }

    fn new_handle(&self, ino: u64, flags: OFlags, fd: OwnedFd) -> Fh {
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
                }),
            );
        Fh(fh)
    }

    fn handle(&self, fh: Fh) -> Result<Arc<OwnedFd>> {
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

    /// Applies `set` to `path` in `layer` directly.
    fn apply_set(
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
            match set.fh {
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
        }
        if let Some(mode) = set.mode {
            match self.chmod_at(root, path, mode) {
                Ok(()) => {
                    if union_upper && self.read_vstat(path).is_some_and(|v| v.mode.is_some()) {
                        self.update_vstat(
                            path,
                            &VStat {
                                mode: Some(mode & 0o7777),
                                ..VStat::default()
                            },
                        )?;
                    }
                }
                Err(Errno::EPERM) if union_upper => self.update_vstat(
                    path,
                    &VStat {
                        mode: Some(mode & 0o7777),
                        ..VStat::default()
                    },
                )?,
                Err(e) => return Err(e),
            }
        }
        if set.uid.is_some() || set.gid.is_some() {
            let at = self.at(root, path)?;
            match rustix::fs::chownat(
                at.dir(),
                at.name,
                set.uid.map(rustix::fs::Uid::from_raw),
                set.gid.map(rustix::fs::Gid::from_raw),
                AtFlags::SYMLINK_NOFOLLOW,
            ) {
                Ok(()) => {
                    if union_upper
                        && self
                            .read_vstat(path)
                            .is_some_and(|v| v.uid.is_some() || v.gid.is_some())
                    {
                        self.update_vstat(
                            path,
                            &VStat {
                                uid: set.uid,
                                gid: set.gid,
                                ..VStat::default()
                            },
                        )?;
                    }
                }
                Err(HostErrno::PERM) if union_upper => self.update_vstat(
                    path,
                    &VStat {
                        uid: set.uid,
                        gid: set.gid,
                        ..VStat::default()
                    },
                )?,
                Err(e) => return Err(e.into()),
            }
        }
        if set.atime.is_some() || set.mtime.is_some() {
            let ts = |t: Option<SetTime>| match t {
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
            };
            let times = rustix::fs::Timestamps {
                last_access: ts(set.atime),
                last_modification: ts(set.mtime),
            };
            let at = self.at(root, path)?;
            rustix::fs::utimensat(at.dir(), at.name, &times, AtFlags::SYMLINK_NOFOLLOW)?;
        }
        Ok(())
    }

    /// Readies `path` for a change in union mode: returns the layer to change
    /// it in and whether to act as the caller. `try_lower` is the mincow
    /// attempt on the lower tree (Ok(true): done there).
    fn writable(
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

    /// True if the view directory `path` has no entries.
    fn is_empty_dir(&self, path: &Path) -> Result<bool> {
        let mut empty = true;
        self.list(path, &mut |_, _, _| {
            empty = false;
            false
        })?;
        Ok(empty)
    }

    /// Calls `f(name, kind, host ino)` for each entry of view directory `path`
    /// until it returns false.
    fn list(&self, path: &Path, f: &mut dyn FnMut(&OsStr, FileKind, u64) -> bool) -> Result<()> {
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
                    if !f(&e.name, kind_at(self.root(layer), &e), e.ino) {
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
                    if !f(&e.name, upper_kind(&e), e.ino) {
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
                    if !f(&e.name, kind_at(self.lower.as_fd(), &e), e.ino) {
                        return Ok(());
                    }
                }
                Ok(())
            }
        }
    }

    fn unlink_common(&self, ctx: &Context, parent: Ino, name: &OsStr, dir: bool) -> Result<()> {
        let path = self.child_path(parent, name)?;
        let flags = if dir {
            AtFlags::REMOVEDIR
        } else {
            AtFlags::empty()
        };
        let remove = |root: BorrowedFd<'_>| -> Result<()> {
            let at = self.at(root, &path)?;
            rustix::fs::unlinkat(at.dir(), at.name, flags)?;
            Ok(())
        };
        let _g = self.lock_big();
        match self.route(&path) {
            Route::Direct(layer) => {
                let _c = self.creds(ctx);
                remove(self.root(layer))?;
            }
            Route::Union => {
                let (layer, st) = self.find(&path)?;
                let is_dir = st.st_mode & libc::S_IFMT == libc::S_IFDIR;
                if dir && !is_dir {
                    return Err(Errno::ENOTDIR);
                }
                if !dir && is_dir {
                    return Err(Errno::EISDIR);
                }
                if dir && !self.is_empty_dir(&path)? {
                    return Err(Errno::ENOTEMPTY);
                }
                let in_lower = self.lower_stat(&path).is_some();
                match (self.mode(), layer) {
                    (Mode::Merge, Layer::Upper) => return Err(Errno::EROFS),
                    (Mode::Merge, Layer::Lower) => {
                        let _c = self.creds(ctx);
                        remove(self.lower.as_fd())?;
                    }
                    (_, Layer::Upper) => {
                        if dir {
                            // An empty view dir may still hold whiteouts below it in `.-`.
                            if let Some(meta) = self.meta() {
                                if let Ok(st) = self.stat_at(meta, &path) {
                                    if st.st_mode & libc::S_IFMT == libc::S_IFDIR {
                                        let _ = host::remove_tree(meta, &path);
                                    }
                                }
                            }
                        }
                        remove(self.upper.as_fd())?;
                        if in_lower {
                            self.whiteout(&path)?;
                        }
                    }
                    (Mode::Mincow, Layer::Lower) => {
                        let result = {
                            let _c = self.creds(ctx);
                            remove(self.lower.as_fd())
                        };
                        match result {
                            Ok(()) => {}
                            Err(e) if errno_is(e, REFUSED) => self.whiteout(&path)?,
                            Err(e) => return Err(e),
                        }
                    }
                    (_, Layer::Lower) => self.whiteout(&path)?,
                }
                self.write_vstat(&path, &VStat::default())?;
            }
        }
        if dir {
            self.dircache.clear();
        }
        self.inodes().drop_dentry(parent.0, name);
        Ok(())
    }

    fn rename_union(&self, ctx: &Context, old: &Path, new: &Path, flags: u32) -> Result<()> {
        let (olayer, ost) = self.find(old)?;
        let target = self.find(new).ok();
        if flags & RENAME_NOREPLACE != 0 && target.is_some() {
            return Err(Errno::EEXIST);
        }
        if flags & RENAME_EXCHANGE != 0 && target.is_none() {
            return Err(Errno::ENOENT);
        }
        let old_dir = ost.st_mode & libc::S_IFMT == libc::S_IFDIR;
        if let Some((_, tst)) = &target {
            let new_dir = tst.st_mode & libc::S_IFMT == libc::S_IFDIR;
            if flags & RENAME_EXCHANGE == 0 {
                if old_dir && !new_dir {
                    return Err(Errno::ENOTDIR);
                }
                if !old_dir && new_dir {
                    return Err(Errno::EISDIR);
                }
                if new_dir && !self.is_empty_dir(new)? {
                    return Err(Errno::ENOTEMPTY);
                }
            }
        }
        let rename_in = |root: BorrowedFd<'_>, f: u32| -> Result<()> {
            let a = self.at(root, old)?;
            let b = self.at(root, new)?;
            rustix::fs::renameat_with(
                a.dir(),
                a.name,
                b.dir(),
                b.name,
                rustix::fs::RenameFlags::from_bits_retain(f),
            )?;
            Ok(())
        };
        match self.mode() {
            Mode::Merge => {
                if olayer == Layer::Upper || self.in_upper(new) || self.deleted(new) {
                    return Err(Errno::EROFS);
                }
                let _c = self.creds(ctx);
                return rename_in(self.lower.as_fd(), flags);
            }
            Mode::Mincow if olayer == Layer::Lower && !self.in_upper(new) && !self.deleted(new) => {
                let result = {
                    let _c = self.creds(ctx);
                    rename_in(self.lower.as_fd(), flags)
                };
                match result {
                    Err(e) if errno_is(e, REFUSED) => {}
                    other => return other,
                }
            }
            _ => {}
        }
        // cow (and mincow's fallback): everything happens in SOURCE.
        let exchange = flags & RENAME_EXCHANGE != 0;
        if old_dir {
            self.copy_tree_up(ctx, old)?;
        } else if olayer == Layer::Lower {
            self.copy_up(ctx, old, None)?;
        }
        if let Some((tlayer, tst)) = &target {
            if exchange {
                if tst.st_mode & libc::S_IFMT == libc::S_IFDIR {
                    self.copy_tree_up(ctx, new)?;
                } else if *tlayer == Layer::Lower {
                    self.copy_up(ctx, new, None)?;
                }
            } else if *tlayer == Layer::Lower && self.in_upper(new) {
                // cannot happen: a lower target is not in SOURCE
            }
        }
        self.upper_parents(ctx, new)?;
        let upper_flags = if exchange {
            flags
        } else {
            flags & !RENAME_NOREPLACE
        };
        // A lower-only target is simply covered by the new upper entry.
        rename_in(self.upper.as_fd(), upper_flags)?;
        // Metadata moves with the name.
        if let Some(meta) = self.meta() {
            if self.meta_used.load(Ordering::Relaxed) && !exchange {
                let vold = layer::vstat_path(old);
                let vnew = layer::vstat_path(new);
                let _ = host::remove_tree(meta, new);
                let _ = host::remove_tree(meta, &vnew);
                if self.stat_at(meta, &vold).is_ok() {
                    host::make_parents(meta, &vnew, 0o700)?;
                    let a = self.at(meta, &vold)?;
                    let b = self.at(meta, &vnew)?;
                    rustix::fs::renameat(a.dir(), a.name, b.dir(), b.name)?;
                }
                if let Ok(st) = self.stat_at(meta, old) {
                    if st.st_mode & libc::S_IFMT == libc::S_IFDIR {
                        host::make_parents(meta, new, 0o700)?;
                        let a = self.at(meta, old)?;
                        let b = self.at(meta, new)?;
                        rustix::fs::renameat(a.dir(), a.name, b.dir(), b.name)?;
                    }
                }
            }
        }
        if !exchange {
            if self.lower_stat(old).is_some() {
                self.whiteout(old)?;
            }
            self.dewhiteout(new);
            if old_dir {
                self.make_opaque(new)?;
            }
        }
        Ok(())
    }

    /// Reads of SOURCE in union modes are done by the daemon: when it is
    /// root serving another user (allow_other), check read permission
    /// against the view's attributes (vstat included) as the host would.
    fn may_read(&self, ctx: &Context, path: &Path, st: Stat) -> Result<()> {
        if !self.acts_for_others(ctx) {
            return Ok(());
        }
        let st = self.merged(path, st);
        if !Caller::of(ctx).may(&st, 0o4) {
            return Err(Errno::EACCES);
        }
        Ok(())
    }

    /// True when the daemon (root) serves a request of another user: what it then does as
    /// itself must first pass that user's access checks.
    fn acts_for_others(&self, ctx: &Context) -> bool {
        self.switch_creds && ctx.uid != 0
    }

    /// The part of `set` the caller may apply to the union `path`, checked against the
    /// view's attributes before a copy-up or a vstat change does it as the daemon
    /// (`EPERM` for a chown to root by its owner, as the host would answer).
    fn permitted_set(&self, ctx: &Context, path: &Path, set: &SetAttr) -> Result<SetAttr> {
        if !self.acts_for_others(ctx) || self.route(path) != Route::Union {
            return Ok(*set);
        }
        let (_, st) = self.find(path)?;
        Caller::of(ctx).permitted(&self.merged(path, st), set)
    }

    fn open_file(
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

/// The key of a stat whose vstat may have changed fields other than dev/ino.
fn st_raw_key(st: &Stat) -> Stat {
    *st
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

impl FileSystem for VuFs {
    /// Host calls may block (two threads); the host tree may change behind the mount (1 s
    /// caches). Access is left to the kernel (`default_permissions` under `allow_other`):
    /// in union modes vufs looks up, copies up and makes names as itself, so only a check
    /// against the view's attributes (search bits, sticky directories, chown rules) is
    /// complete; bind's host calls are checked again by the host as the caller.
    fn capabilities(&self) -> Capabilities {
        Capabilities::default()
    }

    fn lookup(&self, _ctx: &Context, parent: Ino, name: &OsStr) -> Result<Entry> {
        let path = self.child_path(parent, name)?;
        let (layer, st) = self.find(&path)?;
        Ok(self.attach(parent, name, layer, &path, st))
    }

    fn forget(&self, ino: Ino, count: u64) {
        let mut inodes = self.inodes();
        if let Some(node) = inodes.nodes.get_mut(&ino.0) {
            node.lookups = node.lookups.saturating_sub(count);
        }
        inodes.maybe_remove(ino.0);
    }

    fn getattr(&self, _ctx: &Context, ino: Ino, fh: Option<Fh>) -> Result<Attr> {
        let path = self.path_of(ino);
        if let Ok(path) = &path {
            match self.attr_of(ino, path) {
                Ok(a) => return Ok(a),
                Err(e) if fh.is_none() => return Err(e),
                Err(_) => {}
            }
        }
        // Unlinked but open: the handle still knows the file.
        let fh = fh.ok_or(Errno::ENOENT)?;
        let st = rustix::fs::fstat(&*self.handle(fh)?)?;
        Ok(to_attr(ino.0, &st))
    }

    fn setattr(&self, ctx: &Context, ino: Ino, set: &SetAttr) -> Result<Attr> {
        let path = self.path_of(ino)?;
        {
            let _g = self.lock_big();
            let set = &self.permitted_set(ctx, &path, set)?;
            let only_ch = set.size.is_none() && set.atime.is_none() && set.mtime.is_none();
            if self.route(&path) == Route::Union
                && only_ch
                && self.options.nochcopy
                && matches!(self.mode(), Mode::Cow | Mode::Mincow)
                && self.find(&path)?.0 == Layer::Lower
            {
                let v = VStat {
                    mode: set.mode.map(|m| m & 0o7777),
                    uid: set.uid,
                    gid: set.gid,
                    ..VStat::default()
                };
                let done = self.mode() == Mode::Mincow && {
                    let _c = self.creds(ctx);
                    self.apply_set(ctx, Layer::Lower, &path, set, false).is_ok()
                };
                if !done {
                    self.update_vstat(&path, &v)?;
                }
            } else {
                let try_lower = || self.apply_set(ctx, Layer::Lower, &path, set, false);
                if let Some(layer) = self.writable(ctx, &path, set.size, &try_lower)? {
                    let as_caller = layer == Layer::Lower || self.route(&path) != Route::Union;
                    self.apply_set(ctx, layer, &path, set, as_caller)?;
                }
            }
        }
        self.getattr(ctx, ino, set.fh)
    }

    fn readlink(&self, _ctx: &Context, ino: Ino) -> Result<Vec<u8>> {
        let path = self.path_of(ino)?;
        let (layer, _) = self.find(&path)?;
        let at = self.at(self.root(layer), &path)?;
        Ok(rustix::fs::readlinkat(at.dir(), at.name, Vec::new())?.into_bytes())
    }

    fn mknod(
        &self,
        ctx: &Context,
        parent: Ino,
        name: &OsStr,
        mode: u32,
        rdev: u32,
    ) -> Result<Entry> {
        let path = self.child_path(parent, name)?;
        let _g = self.lock_big();
        let fmt = mode & libc::S_IFMT;
        let perm = mode & 0o7777;
        let faked = std::cell::Cell::new(false);
        let union = self.route(&path) == Route::Union;
        let make = |root: BorrowedFd<'_>| -> Result<()> {
            let at = self.at(root, &path)?;
            let ft = rustix::fs::FileType::from_raw_mode(mode);
            // Device nodes in SOURCE are always faked (a regular file and a
            // vstat entry), as the C vufs does without privileges: a daemon
            // running as root must not let a user make real device nodes.
            let fake = union
                && root.as_fd().as_raw_fd_eq(self.upper.as_fd())
                && (fmt == libc::S_IFCHR || fmt == libc::S_IFBLK);
            let made = if fake {
                Err(HostErrno::PERM)
            } else {
                rustix::fs::mknodat(
                    at.dir(),
                    at.name,
                    ft,
                    HostMode::from_raw_mode(perm),
                    rdev as u64,
                )
            };
            match made {
                Ok(()) => Ok(()),
                Err(HostErrno::PERM) if fake => {
                    rustix::fs::mknodat(
                        at.dir(),
                        at.name,
                        rustix::fs::FileType::RegularFile,
                        HostMode::from_raw_mode(perm),
                        0,
                    )?;
                    faked.set(true);
                    Ok(())
                }
                Err(e) => Err(e.into()),
            }
        };
        let layer = self.make_name(ctx, &path, &make)?;
        if layer == Layer::Upper && union {
            self.own_new(ctx, &path, Some(perm))?;
            if faked.get() {
                let dev = libc::makedev(libc::major(rdev as u64), libc::minor(rdev as u64));
                self.update_vstat(
                    &path,
                    &VStat {
                        kind: Some(fmt),
                        mode: Some(perm),
                        rdev: Some((libc::major(dev) as u32, libc::minor(dev) as u32)),
                        ..VStat::default()
                    },
                )?;
            }
        }
        let st = self.stat_at(self.root(layer), &path)?;
        Ok(self.attach(parent, name, layer, &path, st))
    }

    fn mkdir(&self, ctx: &Context, parent: Ino, name: &OsStr, mode: u32) -> Result<Entry> {
        let path = self.child_path(parent, name)?;
        let _g = self.lock_big();
        let was_deleted = self.route(&path) == Route::Union && self.deleted(&path);
        let make = |root: BorrowedFd<'_>| -> Result<()> {
            let at = self.at(root, &path)?;
            rustix::fs::mkdirat(at.dir(), at.name, HostMode::from_raw_mode(mode & 0o7777))?;
            Ok(())
        };
        let layer = self.make_name(ctx, &path, &make)?;
        if layer == Layer::Upper && self.route(&path) == Route::Union {
            self.own_new(ctx, &path, Some(mode & 0o7777))?;
            if was_deleted {
                self.make_opaque(&path)?;
            }
        } else {
            let _c = self.creds(ctx);
            let st = self.stat_at(self.root(layer), &path)?;
            if st.st_mode & 0o7777 != mode & 0o7777 {
                let _ = self.chmod_at(self.root(layer), &path, mode);
            }
        }
        let st = self.stat_at(self.root(layer), &path)?;
        Ok(self.attach(parent, name, layer, &path, st))
    }

    fn unlink(&self, ctx: &Context, parent: Ino, name: &OsStr) -> Result<()> {
        self.unlink_common(ctx, parent, name, false)
    }

    fn rmdir(&self, ctx: &Context, parent: Ino, name: &OsStr) -> Result<()> {
        self.unlink_common(ctx, parent, name, true)
    }

    fn symlink(&self, ctx: &Context, parent: Ino, name: &OsStr, target: &Path) -> Result<Entry> {
        let path = self.child_path(parent, name)?;
        let _g = self.lock_big();
        let make = |root: BorrowedFd<'_>| -> Result<()> {
            let at = self.at(root, &path)?;
            rustix::fs::symlinkat(target, at.dir(), at.name)?;
            Ok(())
        };
        let layer = self.make_name(ctx, &path, &make)?;
        if layer == Layer::Upper && self.route(&path) == Route::Union {
            self.own_new(ctx, &path, None)?;
        }
        let st = self.stat_at(self.root(layer), &path)?;
        Ok(self.attach(parent, name, layer, &path, st))
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
        if flags & !(RENAME_NOREPLACE | RENAME_EXCHANGE) != 0 {
            return Err(Errno::EINVAL);
        }
        let old = self.child_path(parent, name)?;
        let new = self.child_path(new_parent, new_name)?;
        let _g = self.lock_big();
        match (self.route(&old), self.route(&new)) {
            (Route::Direct(a), Route::Direct(b)) if a == b => {
                let _c = self.creds(ctx);
                let x = self.at(self.root(a), &old)?;
                let y = self.at(self.root(a), &new)?;
                rustix::fs::renameat_with(
                    x.dir(),
                    x.name,
                    y.dir(),
                    y.name,
                    rustix::fs::RenameFlags::from_bits_retain(flags),
                )?;
            }
            (Route::Union, Route::Union) => {
                let result = self.rename_union(ctx, &old, &new, flags);
                self.dircache.clear();
                result?
            }
            _ => return Err(Errno::EXDEV),
        }
        self.dircache.clear();
        let mut inodes = self.inodes();
        let moved = inodes
            .by_name
            .get(&(parent.0, name.to_os_string()))
            .copied();
        let other = inodes
            .by_name
            .get(&(new_parent.0, new_name.to_os_string()))
            .copied();
        if flags & RENAME_EXCHANGE != 0 {
            inodes.drop_dentry(parent.0, name);
            inodes.drop_dentry(new_parent.0, new_name);
            if let (Some(m), Some(o)) = (moved, other) {
                for (ino, p, n) in [(m, new_parent.0, new_name), (o, parent.0, name)] {
                    if inodes.nodes.contains_key(&ino) {
                        inodes.add_dentry(ino, p, n);
                        if let Some(node) = inodes.nodes.get_mut(&ino) {
                            let last = node.dentries.pop().expect("just added");
                            node.dentries.insert(0, last);
                        }
                    }
                }
            }
        } else {
            inodes.drop_dentry(new_parent.0, new_name);
            if let Some(m) = moved {
                // Keep the node alive while its name moves.
                if let Some(node) = inodes.nodes.get_mut(&m) {
                    node.lookups += 1;
                }
                inodes.drop_dentry(parent.0, name);
                if inodes.nodes.contains_key(&m) {
                    inodes.add_dentry(m, new_parent.0, new_name);
                    if let Some(node) = inodes.nodes.get_mut(&m) {
                        let last = node.dentries.pop().expect("just added");
                        node.dentries.insert(0, last);
                        node.lookups -= 1;
                    }
                    inodes.maybe_remove(m);
                }
            }
        }
        Ok(())
    }

    fn link(&self, ctx: &Context, ino: Ino, new_parent: Ino, new_name: &OsStr) -> Result<Entry> {
        let old = self.path_of(ino)?;
        let new = self.child_path(new_parent, new_name)?;
        let _g = self.lock_big();
        let link_in = |root: BorrowedFd<'_>| -> Result<()> {
            let a = self.at(root, &old)?;
            let b = self.at(root, &new)?;
            rustix::fs::linkat(a.dir(), a.name, b.dir(), b.name, AtFlags::empty())?;
            Ok(())
        };
        let layer = match (self.route(&old), self.route(&new)) {
            (Route::Direct(a), Route::Direct(b)) if a == b => {
                let _c = self.creds(ctx);
                link_in(self.root(a))?;
                a
            }
            (Route::Union, Route::Union) => {
                if self.exists(&new) {
                    return Err(Errno::EEXIST);
                }
                let (olayer, _) = self.find(&old)?;
                let mut done = None;
                match self.mode() {
                    Mode::Merge => {
                        if olayer == Layer::Upper || self.in_upper(&new) || self.deleted(&new) {
                            return Err(Errno::EROFS);
                        }
                        let _c = self.creds(ctx);
                        link_in(self.lower.as_fd())?;
                        done = Some(Layer::Lower);
                    }
                    Mode::Mincow if olayer == Layer::Lower && !self.deleted(&new) => {
                        let result = {
                            let _c = self.creds(ctx);
                            link_in(self.lower.as_fd())
                        };
                        match result {
                            Ok(()) => done = Some(Layer::Lower),
                            Err(e) if errno_is(e, REFUSED) || e == Errno::ENOENT => {}
                            Err(e) => return Err(e),
                        }
                    }
                    _ => {}
                }
                match done {
                    Some(l) => l,
                    None => {
                        if olayer == Layer::Lower {
                            self.copy_up(ctx, &old, None)?;
                        }
                        self.upper_parents(ctx, &new)?;
                        link_in(self.upper.as_fd())?;
                        if let Some(meta) = self.meta() {
                            let vold = layer::vstat_path(&old);
                            if self.meta_used.load(Ordering::Relaxed)
                                && self.stat_at(meta, &vold).is_ok()
                            {
                                let vnew = layer::vstat_path(&new);
                                host::make_parents(meta, &vnew, 0o700)?;
                                let a = self.at(meta, &vold)?;
                                let b = self.at(meta, &vnew)?;
                                let _ = rustix::fs::linkat(
                                    a.dir(),
                                    a.name,
                                    b.dir(),
                                    b.name,
                                    AtFlags::empty(),
                                );
                            }
                        }
                        self.dewhiteout(&new);
                        Layer::Upper
                    }
                }
            }
            _ => return Err(Errno::EXDEV),
        };
        let st = self.stat_at(self.root(layer), &new)?;
        Ok(self.attach(new_parent, new_name, layer, &new, st))
    }

    fn open(&self, ctx: &Context, ino: Ino, flags: i32) -> Result<Opened> {
        let path = self.path_of(ino)?;
        let write = wants_write(flags);
        let of = oflags(flags);
        let (layer, fd) = if write {
            let _g = self.lock_big();
            let lower_fd: std::cell::RefCell<Option<OwnedFd>> = std::cell::RefCell::new(None);
            let truncate = (flags & libc::O_TRUNC != 0).then_some(0);
            let try_lower = || -> Result<()> {
                let fd = self.open_in(self.lower.as_fd(), &path, of, HostMode::empty())?;
                *lower_fd.borrow_mut() = Some(fd);
                Ok(())
            };
            match self.writable(ctx, &path, truncate, &try_lower)? {
                None => (Layer::Lower, lower_fd.into_inner().ok_or(Errno::EIO)?),
                Some(layer) => {
                    let as_caller = layer == Layer::Lower || self.route(&path) != Route::Union;
                    (layer, self.open_file(ctx, layer, &path, of, as_caller)?)
                }
            }
        } else {
            let (layer, st) = self.find(&path)?;
            let as_caller = layer == Layer::Lower || self.route(&path) != Route::Union;
            if !as_caller {
                self.may_read(ctx, &path, st)?;
            }
            (layer, self.open_file(ctx, layer, &path, of, as_caller)?)
        };
        let _ = layer;
        if (flags & libc::O_ACCMODE) == libc::O_RDONLY {
            // Sequential reads are the common case: a larger host readahead.
            let _ = rustix::fs::fadvise(&fd, 0, None, rustix::fs::Advice::Sequential);
        }
        let st = rustix::fs::fstat(&fd)?;
        let now = (st.st_mtime, st.st_mtime_nsec as u64, st.st_size);
        let keep_cache = {
            let mut inodes = self.inodes();
            match inodes.nodes.get_mut(&ino.0) {
                Some(node) => {
                    let keep = node.seen == Some(now);
                    node.seen = Some(now);
                    keep
                }
                None => false,
            }
        };
        let fh = self.new_handle(ino.0, of, fd);
        Ok(Opened {
            fh,
            keep_cache,
            direct_io: false,
        })
    }

    fn read(
        &self,
        _ctx: &Context,
        _ino: Ino,
        fh: Fh,
        offset: u64,
        buf: &mut [u8],
    ) -> Result<usize> {
        let fd = self.handle(fh)?;
        let mut done = 0;
        while done < buf.len() {
            let n = rustix::io::pread(&*fd, &mut buf[done..], offset + done as u64)?;
            if n == 0 {
                break;
            }
            done += n;
        }
        Ok(done)
    }

    fn write(&self, _ctx: &Context, ino: Ino, fh: Fh, offset: u64, data: &[u8]) -> Result<usize> {
        let fd = self.handle(fh)?;
        let mut done = 0;
        while done < data.len() {
            done += rustix::io::pwrite(&*fd, &data[done..], offset + done as u64)?;
        }
        if let Some(node) = self.inodes().nodes.get_mut(&ino.0) {
            node.seen = None;
        }
        Ok(done)
    }

    fn release(&self, _ctx: &Context, _ino: Ino, fh: Fh) -> Result<()> {
        self.handles
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&fh.0);
        Ok(())
    }

    fn fsync(&self, _ctx: &Context, _ino: Ino, fh: Fh, datasync: bool) -> Result<()> {
        let fd = self.handle(fh)?;
        if datasync {
            rustix::fs::fdatasync(&*fd)?;
        } else {
            rustix::fs::fsync(&*fd)?;
        }
        Ok(())
    }

    fn opendir(&self, ctx: &Context, ino: Ino) -> Result<Fh> {
        let path = self.path_of(ino)?;
        if self.route(&path) == Route::Union {
            let (layer, st) = self.find(&path)?;
            if layer == Layer::Upper {
                self.may_read(ctx, &path, st)?;
            }
        }
        let mut entries = Vec::new();
        self.list(&path, &mut |name, kind, hino| {
            entries.push((name.to_os_string(), kind, hino));
            true
        })?;
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        self.dirs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(fh, Arc::new(DirList { entries }));
        Ok(Fh(fh))
    }

    fn readdir(
        &self,
        _ctx: &Context,
        ino: Ino,
        fh: Fh,
        offset: u64,
        sink: &mut dyn FnMut(DirEntry<'_>) -> bool,
    ) -> Result<()> {
        let list = self
            .dirs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&fh.0)
            .cloned()
            .ok_or(Errno::EBADF)?;
        let parent_ino = {
            let inodes = self.inodes();
            inodes
                .nodes
                .get(&ino.0)
                .and_then(|n| n.dentries.first().map(|d| d.0))
                .unwrap_or(Ino::ROOT.0)
        };
        let mut index = offset;
        while index < list.entries.len() as u64 + 2 {
            let (name, kind, eino): (&OsStr, FileKind, u64) = match index {
                0 => (OsStr::new("."), FileKind::Dir, ino.0),
                1 => (OsStr::new(".."), FileKind::Dir, parent_ino),
                i => {
                    let (name, kind, hino) = &list.entries[(i - 2) as usize];
                    let known = self.inodes().by_name.get(&(ino.0, name.clone())).copied();
                    (name.as_os_str(), *kind, known.unwrap_or(*hino))
                }
            };
            if !sink(DirEntry {
                ino: Ino(eino),
                next_offset: index + 1,
                kind,
                name,
            }) {
                break;
            }
            index += 1;
        }
        Ok(())
    }

    fn releasedir(&self, _ctx: &Context, _ino: Ino, fh: Fh) -> Result<()> {
        self.dirs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&fh.0);
        Ok(())
    }

    fn statfs(&self, _ctx: &Context) -> Result<StatFs> {
        let fd = if self.mode() == Mode::Merge {
            &self.lower
        } else {
            &self.upper
        };
        let s = rustix::fs::fstatfs(fd)?;
        Ok(StatFs {
            blocks: s.f_blocks,
            blocks_free: s.f_bfree,
            blocks_available: s.f_bavail,
            files: s.f_files,
            files_free: s.f_ffree,
            block_size: s.f_bsize as u32,
            name_max: s.f_namelen as u32,
            fragment_size: s.f_frsize as u32,
        })
    }

    fn create(
        &self,
        ctx: &Context,
        parent: Ino,
        name: &OsStr,
        mode: u32,
        flags: i32,
    ) -> Result<(Entry, Opened)> {
        let path = self.child_path(parent, name)?;
        let _g = self.lock_big();
        let of = oflags(flags);
        let perm = mode & 0o7777;
        let made: std::cell::RefCell<Option<OwnedFd>> = std::cell::RefCell::new(None);
        let make = |root: BorrowedFd<'_>| -> Result<()> {
            let fd = self.open_in(
                root,
                &path,
                of | OFlags::CREATE | OFlags::EXCL,
                HostMode::from_raw_mode(perm),
            )?;
            *made.borrow_mut() = Some(fd);
            Ok(())
        };
        let layer = self.make_name(ctx, &path, &make)?;
        let fd = made.into_inner().ok_or(Errno::EIO)?;
        // One fstat of the new file, taken again only if its mode or owner was changed.
        let mut st = rustix::fs::fstat(&fd)?;
        let stale = if layer == Layer::Upper && self.route(&path) == Route::Union {
            self.own_new_known(ctx, &path, Some(perm), Some(&st))?
        } else if st.st_mode & 0o7777 != perm {
            let _c = self.creds(ctx);
            let _ = rustix::fs::fchmod(&fd, HostMode::from_raw_mode(perm));
            true
        } else {
            false
        };
        if stale {
            st = rustix::fs::fstat(&fd)?;
        }
        let entry = self.attach(parent, name, layer, &path, st);
        let fh = self.new_handle(entry.attr.ino.0, of, fd);
        Ok((
            entry,
            Opened {
                fh,
                keep_cache: false,
                direct_io: false,
            },
        ))
    }

    fn getxattr(&self, _ctx: &Context, ino: Ino, name: &OsStr) -> Result<Vec<u8>> {
        let path = self.path_of(ino)?;
        let (layer, _) = self.find(&path)?;
        let fd = self.open_o_path(self.root(layer), &path)?;
        host::get_xattr(&host::proc_path(fd.as_fd()), name)
    }

    fn listxattr(&self, _ctx: &Context, ino: Ino) -> Result<Vec<Vec<u8>>> {
        let path = self.path_of(ino)?;
        let (layer, _) = self.find(&path)?;
        let fd = self.open_o_path(self.root(layer), &path)?;
        host::list_xattrs(&host::proc_path(fd.as_fd()))
    }

    fn setxattr(
        &self,
        ctx: &Context,
        ino: Ino,
        name: &OsStr,
        value: &[u8],
        flags: i32,
    ) -> Result<()> {
        let path = self.path_of(ino)?;
        let _g = self.lock_big();
        let set = |root: BorrowedFd<'_>| -> Result<()> {
            let fd = self.open_o_path(root, &path)?;
            rustix::fs::setxattr(
                host::proc_path(fd.as_fd()).as_str(),
                name,
                value,
                rustix::fs::XattrFlags::from_bits_retain(flags as u32),
            )?;
            Ok(())
        };
        let try_lower = || set(self.lower.as_fd());
        if let Some(layer) = self.writable(ctx, &path, None, &try_lower)? {
            let _c = (layer == Layer::Lower || self.route(&path) != Route::Union)
                .then(|| self.creds(ctx));
            set(self.root(layer))?;
        }
        Ok(())
    }

    fn removexattr(&self, ctx: &Context, ino: Ino, name: &OsStr) -> Result<()> {
        let path = self.path_of(ino)?;
        let _g = self.lock_big();
        let remove = |root: BorrowedFd<'_>| -> Result<()> {
            let fd = self.open_o_path(root, &path)?;
            rustix::fs::removexattr(host::proc_path(fd.as_fd()).as_str(), name)?;
            Ok(())
        };
        let try_lower = || remove(self.lower.as_fd());
        if let Some(layer) = self.writable(ctx, &path, None, &try_lower)? {
            let _c = (layer == Layer::Lower || self.route(&path) != Route::Union)
                .then(|| self.creds(ctx));
            remove(self.root(layer))?;
        }
        Ok(())
    }
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
