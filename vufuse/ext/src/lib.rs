//! ext2/3/4 driver on libext2fs (the engine e2fsck and fuse2fs use; the
//! choice and its measurements are in docs/EXT-ENGINE.md).
//!
//! libext2fs is reached through a small C shim (`shim.c`) with a flat API,
//! so struct layouts stay in C. This module is the FFI edge: the only place
//! in the crate with `unsafe`, each block with its SAFETY reasoning. The
//! library is not thread-safe, so one mutex guards the filesystem handle.
//!
//! Reading and writing as fuse2fs does: changes go straight to their final
//! blocks, not through the journal (which stays empty and consistent); a
//! journal that needs recovery, or a filesystem with errors, is refused
//! read-write. A file unlinked while open keeps its blocks until the last
//! handle closes. Each read or write opens its own libext2fs file handle,
//! because a handle caches the inode and two long-lived ones could write a
//! stale copy back.

#![allow(unsafe_code)]

mod crc32c;
mod extent_read;
mod extent_write;
mod ffi;
mod geometry;
mod htree;
pub mod journal;
mod mounting;
mod names;
mod ops;
mod orphans;
mod session;
mod usage;
mod write_order;

use ffi::*;
use mounting::*;

use names::{Known, Listing, NameCache};
use std::collections::HashMap;
use std::collections::HashSet;
use std::ffi::{c_char, c_int, c_void, OsStr};
use std::os::unix::ffi::OsStrExt;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use vudev::{BlockDevice, CachedDevice, Errno, Result};
use vufuse_api::acl;
use vufuse_api::fs::{
    check_rename_flags, Attr, CachePolicy, Capabilities, Context, DirEntry, Entry, Fh, FileKind,
    FileSystem, Ino, Opened, SetAttr, StatFs, RENAME_EXCHANGE, RENAME_NOREPLACE,
};
use vufuse_api::MountError;

/// Seconds and nanoseconds of `t` since the epoch (negative before it).
fn split_time(t: SystemTime) -> (i64, u32) {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => (d.as_secs() as i64, d.subsec_nanos()),
        Err(e) => {
            let d = e.duration();
            let (s, n) = (d.as_secs() as i64, d.subsec_nanos());
            if n == 0 {
                (-s, 0)
            } else {
                (-s - 1, 1_000_000_000 - n)
            }
        }
    }
}

/// A name as a C string; `EINVAL` if it holds a NUL byte.
fn c_name(name: &OsStr) -> Result<std::ffi::CString> {
    if name.len() > 255 {
        return Err(Errno::ENAMETOOLONG);
    }
    std::ffi::CString::new(name.as_bytes()).map_err(|_| Errno::EINVAL)
}

/// How far ahead of a sequential reader the device is asked to prefetch.
const READAHEAD: u64 = 8 << 20;

fn check(code: c_int) -> Result<()> {
    if code == 0 {
        Ok(())
    } else {
        Err(Errno::from_raw(code))
    }
}

/// Runs a device callback body; a panic becomes EIO instead of unwinding into C.
fn guarded(f: impl FnOnce() -> Result<()>) -> c_int {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(Ok(())) => 0,
        Ok(Err(e)) => e.raw(),
        Err(_) => libc::EIO,
    }
}

extern "C" fn dev_read(ctx: *mut c_void, offset: u64, buf: *mut c_void, len: usize) -> c_int {
    guarded(|| {
        // SAFETY: ctx is the `CachedDevice` boxed in `ExtFs::open_raw`, alive
        // until the filesystem is closed; buf is a writable buffer of len bytes
        // owned by libext2fs for the duration of this call.
        let (dev, buf) = unsafe {
            (
                &*(ctx as *const CachedDevice),
                std::slice::from_raw_parts_mut(buf as *mut u8, len),
            )
        };
        dev.read_exact_at(buf, offset)
    })
}

extern "C" fn dev_write(ctx: *mut c_void, offset: u64, buf: *const c_void, len: usize) -> c_int {
    guarded(|| {
        // SAFETY: as in dev_read; buf is readable for len bytes during the call.
        let (dev, buf) = unsafe {
            (
                &*(ctx as *const CachedDevice),
                std::slice::from_raw_parts(buf as *const u8, len),
            )
        };
        dev.write_all_at(buf, offset)
    })
}

extern "C" fn dev_prefetch(ctx: *mut c_void, offset: u64, len: u64) {
    let _ = catch_unwind(AssertUnwindSafe(|| {
        // SAFETY: as in dev_read.
        let dev = unsafe { &*(ctx as *const CachedDevice) };
        dev.prefetch(offset, len);
    }));
}

extern "C" fn dev_flush(ctx: *mut c_void) -> c_int {
    guarded(|| {
        // SAFETY: as in dev_read.
        let dev = unsafe { &*(ctx as *const CachedDevice) };
        dev.flush()
    })
}

extern "C" fn dev_write_back(ctx: *mut c_void, pairs: *const u64, n: usize, which: c_int) -> c_int {
    guarded(|| {
        // SAFETY: as in dev_read; pairs holds 2 * n readable u64 during the call (none when
        // n is 0, when it may be null).
        let (dev, pairs) = unsafe {
            (
                &*(ctx as *const CachedDevice),
                if n == 0 {
                    &[][..]
                } else {
                    std::slice::from_raw_parts(pairs, 2 * n)
                },
            )
        };
        let ranges: Vec<std::ops::Range<u64>> = pairs.chunks(2).map(|p| p[0]..p[1]).collect();
        match which {
            1 => dev.write_back_within(&ranges),
            2 => dev.write_back_outside(&ranges),
            _ => dev.write_back(),
        }
    })
}

extern "C" fn dev_set_block_size(ctx: *mut c_void, block_size: u32) -> c_int {
    guarded(|| {
        // SAFETY: as in dev_read.
        let dev = unsafe { &*(ctx as *const CachedDevice) };
        dev.set_block_size(block_size as usize)
    })
}

/// What every new name is made with: where, who, when, and whether the name is known to be
/// absent (so the shim skips its directory scan).
struct NewName {
    parent: u32,
    name: std::ffi::CString,
    uid: u32,
    gid: u32,
    secs: i64,
    nanos: u32,
    absent: c_int,
}

/// What the driver itself needs from the mount options.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ExtOptions {
    /// Refuse every change.
    pub read_only: bool,
    /// Never replay the journal (`-o norecovery`): a read-only mount of a volume whose
    /// journal needs recovery shows it as it is on the disk, without the committed
    /// transactions; a read-write one is refused as always.
    pub norecovery: bool,
}

/// The libext2fs handle and the open files; only touched under the mutex.
struct Handles {
    fs: *mut ExtFsHandle,
    /// Open file handles: fh to inode.
    files: HashMap<u64, u32>,
    /// Where a sequential reader of each handle would read next.
    next_read: HashMap<u64, u64>,
    /// Per open file: the file offset at which a sequential reader next asks the device to
    /// prefetch (once per half window, not once per request: each ask walks the page cache).
    prefetch_at: HashMap<u64, u64>,
    /// Directory listings taken at opendir.
    dirs: HashMap<u64, Vec<(u32, FileKind, Vec<u8>)>>,
    /// Inodes whose last link went while open: freed at their last close.
    orphans: HashSet<u32>,
    /// Names of directories looked up in, so lookups (positive and
    /// negative) and the existence check of a create skip libext2fs's
    /// linear scan. Kept in step by every change made here; "." and ".."
    /// are not cached. Bounded in memory (`names::NAME_CACHE_BYTES`).
    names: NameCache,
    /// What the metadata write-back last wrote (read-write mounts only).
    write_order: Option<write_order::WriteOrder>,
}

/// Adds one directory entry to the `names::Listing` behind `ctx`; non-zero stops the
/// iteration (the listing is over budget, or a panic was caught: then marked broken).
extern "C" fn collect_name(
    ctx: *mut c_void,
    ino: u32,
    _file_type: c_int,
    name: *const c_char,
    len: usize,
) -> c_int {
    // SAFETY: ctx is the listing passed by `Handles::lookup_cached`, alive for the whole
    // iteration and touched by nothing else meanwhile.
    let listing = unsafe { &mut *(ctx as *mut Listing) };
    let outcome = catch_unwind(AssertUnwindSafe(|| {
        // SAFETY: name points at len bytes inside libext2fs's block buffer.
        let name = unsafe { std::slice::from_raw_parts(name as *const u8, len) };
        listing.add(name, ino)
    }));
    match outcome {
        Ok(true) => 0,
        Ok(false) => 1,
        Err(_) => {
            listing.set_broken();
            1
        }
    }
}

impl Handles {
    fn open_count(&self, ino: u32) -> usize {
        self.files.values().filter(|&&i| i == ino).count()
    }

    /// Frees `ino` now if nobody has it open, else when the last handle closes.
    fn free_when_closed(&mut self, ino: u32) -> Result<()> {
        self.forget_dir(ino);
        if self.open_count(ino) > 0 {
            if self.orphans.insert(ino) {
                orphans::add(self.fs, ino)?;
            }
            Ok(())
        } else {
            orphans::free_inode(self.fs, ino)
        }
    }

    /// The inode `name` in `dir` leads to, from the name cache (filled from
    /// the directory on first use); `ENOENT` if absent.
    fn lookup_cached(&mut self, dir: u32, name: &[u8]) -> Result<u32> {
        if name == b"." || name == b".." {
            return self.scan_lookup(dir, name);
        }
        if self.names.wants(dir) {
            let mut listing = self.names.listing();
            // SAFETY: self.fs is open; the callback only touches `listing`, alive for the call.
            check(unsafe {
                vx_readdir(
                    self.fs,
                    dir,
                    collect_name,
                    &mut listing as *mut _ as *mut c_void,
                )
            })?;
            self.names.insert_dir(dir, listing);
        }
        match self.names.get(dir, name) {
            Known::Present(ino) => Ok(ino),
            Known::Absent => Err(Errno::ENOENT),
            // Too large a directory for the table: libext2fs scans it (once per lookup, as
            // before the table existed).
            Known::Unknown => self.scan_lookup(dir, name),
        }
    }

    /// `name` in `dir` by libext2fs's scan of the directory's blocks.
    fn scan_lookup(&self, dir: u32, name: &[u8]) -> Result<u32> {
        let mut ino = 0u32;
        // SAFETY: self.fs is open; name is valid for name.len() bytes.
        check(unsafe {
            vx_lookup(
                self.fs,
                dir,
                name.as_ptr() as *const c_char,
                name.len(),
                &mut ino,
            )
        })?;
        Ok(ino)
    }

    /// Whether `name` is known to be absent from `dir` (false: unknown or present).
    fn known_absent(&self, dir: u32, name: &[u8]) -> bool {
        self.names.known_absent(dir, name)
    }

    /// Records that `name` in `dir` now leads to `ino` (after a successful
    /// create or link), or forgets the directory after a failure.
    fn note_added(&mut self, dir: u32, name: &[u8], result: &Result<u32>) {
        match result {
            Ok(ino) => self.names.note_added(dir, name, *ino),
            Err(_) => self.forget_dir(dir),
        }
    }

    /// Drops the cached names of `dir` (changed in a way not tracked, or gone).
    fn forget_dir(&mut self, dir: u32) {
        self.names.forget_dir(dir);
    }

    /// Writes what an operation that adds names or blocks changed (bitmaps and descriptors
    /// of the changed groups, the superblock, then its own blocks, in the crash-safe order
    /// docs/EXT-ENGINE.md gives), so the image is consistent after every operation, not
    /// only at unmount. Runs after failed operations too: they may have changed something
    /// before failing.
    fn commit<T>(&mut self, result: Result<T>) -> Result<T> {
        self.sync_meta(false, result)
    }

    /// As [`Handles::commit`], for an operation that removes names or blocks (unlink, rmdir,
    /// rename, truncate): its inodes reach the device before its directory entries.
    fn commit_removal<T>(&mut self, result: Result<T>) -> Result<T> {
        self.sync_meta(true, result)
    }

    /// The write order's sync (`write_order.rs`); nothing on a read-only mount.
    fn sync_meta<T>(&mut self, removes: bool, result: Result<T>) -> Result<T> {
        let synced = match &mut self.write_order {
            Some(order) => order.sync(self.fs, removes),
            None => Ok(()),
        };
        let value = result?;
        synced.map(|()| value)
    }
}

// SAFETY: libext2fs handles are plain heap data with no thread affinity; the
// library is not thread-safe, so every use goes through `ExtFs::lock`, which
// serialises all calls.
unsafe impl Send for Handles {}

/// A mounted ext2/3/4 volume.
pub struct ExtFs {
    handles: Mutex<Handles>,
    /// Owns the device the shim's `VxDev` points into; freed after close.
    device: *mut VxDev,
    read_only: bool,
    label: String,
    next_fh: AtomicU64,
    view: ExtView,
    /// Who besides root may use the blocks reserved for root (s_def_resuid, s_def_resgid).
    reserved_for: (u32, u32),
}

/// How files are shown and owned, from fuse2fs's mount options. The
/// default shows what is on disk and gives new files the caller's ids.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ExtView {
    /// `uid=N`: every file is reported as owned by user N (the disk keeps its owners).
    pub uid: Option<u32>,
    /// `gid=N`: every file is reported as owned by group N.
    pub gid: Option<u32>,
    /// `umask=M`: every file is reported with permissions `0777 & !M`, as
    /// libfuse's option of that name does for fuse2fs.
    pub umask: Option<u32>,
    /// `fakeroot`: act as if every caller were root: new files and
    /// directories are owned by 0:0 (building an image as an ordinary user).
    pub fakeroot: bool,
}

// SAFETY: `device` is written once in `open` and read only by libext2fs
// under the mutex; `Handles` is Send and guarded by the mutex.
unsafe impl Send for ExtFs {}
// SAFETY: as above; all shared access is serialised by `handles`.
unsafe impl Sync for ExtFs {}

/// True if `dev` carries an ext2/3/4 superblock (magic 0xEF53 at byte 1080).
pub fn looks_like_ext(dev: &dyn BlockDevice) -> bool {
    let mut magic = [0u8; 2];
    dev.read_exact_at(&mut magic, 1024 + 56).is_ok() && magic == [0x53, 0xEF]
}

fn ext_ino(ino: Ino) -> u32 {
    if ino == Ino::ROOT {
        2
    } else {
        ino.0 as u32
    }
}

fn fuse_ino(ino: u32) -> Ino {
    if ino == 2 {
        Ino::ROOT
    } else {
        Ino(ino as u64)
    }
}

fn time(secs: i64, nanos: u32) -> SystemTime {
    if secs >= 0 {
        UNIX_EPOCH + Duration::new(secs as u64, nanos.min(999_999_999))
    } else {
        UNIX_EPOCH - Duration::from_secs(secs.unsigned_abs())
            + Duration::from_nanos(nanos.min(999_999_999) as u64)
    }
}

fn kind_of_mode(mode: u32) -> FileKind {
    FileKind::from_mode(mode).unwrap_or(FileKind::File)
}

fn kind_of_dirent(file_type: c_int) -> Option<FileKind> {
    Some(match file_type {
        1 => FileKind::File,
        2 => FileKind::Dir,
        3 => FileKind::CharDevice,
        4 => FileKind::BlockDevice,
        5 => FileKind::Fifo,
        6 => FileKind::Socket,
        7 => FileKind::Symlink,
        _ => return None,
    })
}

extern "C" fn collect_dirent(
    ctx: *mut c_void,
    ino: u32,
    file_type: c_int,
    name: *const c_char,
    len: usize,
) -> c_int {
    let outcome = catch_unwind(AssertUnwindSafe(|| {
        // SAFETY: ctx is the Vec passed by `ExtFs::list`, alive for the whole
        // iteration; name points at len bytes inside libext2fs's block buffer.
        let (out, name) = unsafe {
            (
                &mut *(ctx as *mut Vec<(u32, c_int, Vec<u8>)>),
                std::slice::from_raw_parts(name as *const u8, len),
            )
        };
        out.push((ino, file_type, name.to_vec()));
    }));
    c_int::from(outcome.is_err())
}

extern "C" fn collect_xattr(
    ctx: *mut c_void,
    name: *const c_char,
    value: *const c_void,
    len: usize,
) -> c_int {
    let outcome = catch_unwind(AssertUnwindSafe(|| {
        // SAFETY: ctx is the Vec passed by `ExtFs::xattrs`; name is a NUL-terminated
        // string and value points at len bytes, both owned by libext2fs during the call.
        let (out, name, value) = unsafe {
            (
                &mut *(ctx as *mut Vec<(Vec<u8>, Vec<u8>)>),
                std::ffi::CStr::from_ptr(name).to_bytes().to_vec(),
                if len == 0 {
                    Vec::new()
                } else {
                    std::slice::from_raw_parts(value as *const u8, len).to_vec()
                },
            )
        };
        out.push((name, value));
    }));
    c_int::from(outcome.is_err())
}

impl ExtFs {
    /// Opens the ext2/3/4 volume on `dev`. A read-only mount of a volume
    /// whose journal needs recovery replays it in memory (unless
    /// `norecovery`); a read-write one is refused (run e2fsck), as fuse2fs does.
    pub fn open(
        dev: Arc<dyn BlockDevice>,
        opts: ExtOptions,
    ) -> std::result::Result<ExtFs, MountError> {
        let read_only = opts.read_only || dev.read_only();
        if !read_only {
            return ExtFs::open_raw(dev, false, false);
        }
        let fs = ExtFs::open_raw(dev.clone(), true, true)?;
        if opts.norecovery || !fs.needs_recovery() {
            return Ok(fs);
        }
        let (map, block_size) = fs.journal_map().map_err(|e| MountError::Volume {
            errno: e,
            message: format!("the journal needs recovery but cannot be read: {e}"),
        })?;
        drop(fs);
        let replayed = journal::replay(dev.as_ref(), &map, block_size as usize).map_err(|e| {
            MountError::Volume {
                errno: e,
                message: format!("the journal needs recovery but is corrupt ({e}): run e2fsck"),
            }
        })?;
        let overlay: Arc<dyn BlockDevice> =
            Arc::new(journal::Overlay::new(dev, replayed, block_size as usize));
        ExtFs::open_raw(overlay, true, true)
    }

    fn needs_recovery(&self) -> bool {
        let h = self.lock();
        // SAFETY: h.fs is open.
        unsafe { vx_needs_recovery(h.fs) != 0 }
    }

    /// Physical blocks of the journal, in order, and the block size.
    fn journal_map(&self) -> Result<(Vec<u64>, u32)> {
        let h = self.lock();
        let mut count = 0usize;
        // SAFETY: h.fs is open; a zero-length buffer only asks for the count.
        check(unsafe { vx_journal_map(h.fs, std::ptr::null_mut(), 0, &mut count) })?;
        let mut map = vec![0u64; count];
        // SAFETY: map has room for count entries.
        check(unsafe { vx_journal_map(h.fs, map.as_mut_ptr(), map.len(), &mut count) })?;
        // SAFETY: h.fs is open.
        Ok((map, unsafe { vx_block_size(h.fs) }))
    }

    fn open_raw(
        dev: Arc<dyn BlockDevice>,
        read_only: bool,
        allow_recovery: bool,
    ) -> std::result::Result<ExtFs, MountError> {
        let read_only = read_only || dev.read_only();
        check_superblock(dev.as_ref(), read_only)?;
        let opening = Opening::open(dev, read_only, allow_recovery)?;
        let fs = opening.fs;
        let write_order = if read_only {
            None
        } else {
            // A read-write mount first checks the bitmaps against the inodes, then takes the
            // write order's snapshots: the filesystem as opened, before anything changes.
            usage::check(fs).map_err(|(errno, message)| MountError::Volume { errno, message })?;
            let order = write_order::WriteOrder::new(fs)
                .map_err(|e| MountError::volume(e, format!("cannot set up the write-back: {e}")))?;
            Some(order)
        };
        check_root(fs)?;
        if !read_only {
            begin_read_write(fs)?;
        }
        let reserved_for = reserved_ids(fs);
        let label = label_of(fs);
        let (fs, device) = opening.into_parts();
        Ok(ExtFs {
            handles: Mutex::new(Handles {
                fs,
                files: HashMap::new(),
                next_read: HashMap::new(),
                prefetch_at: HashMap::new(),
                dirs: HashMap::new(),
                orphans: HashSet::new(),
                names: NameCache::default(),
                write_order,
            }),
            device,
            read_only,
            label,
            next_fh: AtomicU64::new(1),
            view: ExtView::default(),
            reserved_for,
        })
    }

    /// Applies the ownership and permission view of `view` (fuse2fs's
    /// `uid=`, `gid=`, `umask=` and `fakeroot` options).
    pub fn with_view(mut self, view: ExtView) -> ExtFs {
        self.view = view;
        self
    }

    /// The owner given to new files: the caller, or root under `fakeroot`.
    /// Makes one new name in `parent` with `make` (one shim call that writes the new inode
    /// number), then commits, records the name and answers its entry: the steps mknod,
    /// mkdir and symlink share.
    fn make_name(
        &self,
        ctx: &Context,
        parent: Ino,
        name: &OsStr,
        make: impl FnOnce(*mut ExtFsHandle, &NewName, &mut u32) -> c_int,
    ) -> Result<Entry> {
        self.writable()?;
        let name = c_name(name)?;
        let mut h = self.lock_as(ctx);
        let (uid, gid) = self.owner(ctx);
        let (secs, nanos) = split_time(SystemTime::now());
        let new = NewName {
            parent: ext_ino(parent),
            absent: c_int::from(h.known_absent(ext_ino(parent), name.as_bytes())),
            name,
            uid,
            gid,
            secs,
            nanos,
        };
        let mut ino = 0u32;
        let made = check(make(h.fs, &new, &mut ino));
        let made = h.commit(made).map(|()| ino);
        h.note_added(new.parent, new.name.as_bytes(), &made);
        made?;
        self.entry_of(&h, ino)
    }

    fn owner(&self, ctx: &Context) -> (u32, u32) {
        if self.view.fakeroot {
            (0, 0)
        } else {
            (ctx.uid, ctx.gid)
        }
    }

    /// The volume label (may be empty).
    pub fn label(&self) -> &str {
        &self.label
    }

    fn writable(&self) -> Result<()> {
        if self.read_only {
            Err(Errno::EROFS)
        } else {
            Ok(())
        }
    }

    fn entry_of(&self, h: &Handles, ino: u32) -> Result<Entry> {
        let st = Self::stat(h, ino)?;
        Ok(Entry {
            attr: self.attr(&st),
            generation: st.generation as u64,
        })
    }

    fn remove(&self, parent: Ino, name: &OsStr, want_dir: bool) -> Result<()> {
        self.writable()?;
        let name = c_name(name)?;
        let mut h = self.lock();
        let (s, ns) = split_time(SystemTime::now());
        let (mut ino, mut last) = (0u32, 0 as c_int);
        // SAFETY: h.fs is open; name is NUL-terminated; outputs are valid pointers.
        let removed = check(unsafe {
            vx_unlink(
                h.fs,
                ext_ino(parent),
                name.as_ptr(),
                c_int::from(want_dir),
                s,
                ns,
                &mut ino,
                &mut last,
            )
        });
        match &removed {
            Ok(()) => h.names.note_removed(ext_ino(parent), name.as_bytes()),
            Err(_) => h.forget_dir(ext_ino(parent)),
        }
        let result = removed.and_then(|()| {
            if last != 0 {
                h.free_when_closed(ino)
            } else {
                Ok(())
            }
        });
        h.commit_removal(result)
    }

    fn lock(&self) -> MutexGuard<'_, Handles> {
        self.handles.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The lock, for an operation of `ctx` that may allocate blocks: the shim is told
    /// whether this caller may use the blocks reserved for root.
    fn lock_as(&self, ctx: &Context) -> MutexGuard<'_, Handles> {
        let h = self.lock();
        if !self.read_only {
            // SAFETY: h.fs is open read-write (its allocation state exists).
            unsafe { vx_set_caller(h.fs, c_int::from(self.may_use_reserve(ctx))) };
        }
        h
    }

    /// As the kernel's ext4_has_free_clusters: root (CAP_SYS_RESOURCE, approximated by uid
    /// 0), the user s_def_resuid, or a member of the group s_def_resgid when that is not 0
    /// (the caller's own group or a supplementary one, read from /proc/PID/status).
    fn may_use_reserve(&self, ctx: &Context) -> bool {
        let (resuid, resgid) = self.reserved_for;
        if ctx.uid == 0 || ctx.uid == resuid {
            return true;
        }
        resgid != 0 && (ctx.gid == resgid || ctx.supplementary_groups().contains(&resgid))
    }

    fn stat(h: &Handles, ino: u32) -> Result<VxStat> {
        let mut st = VxStat::default();
        // SAFETY: h.fs is open while Handles exists; st is a valid out-pointer.
        check(unsafe { vx_stat(h.fs, ino, &mut st) })?;
        Ok(st)
    }

    /// The attributes reported for `st`, after the `uid=`/`gid=`/`umask=` view.
    fn attr(&self, st: &VxStat) -> Attr {
        let view = &self.view;
        let perm = match view.umask {
            // As libfuse's umask= (what fuse2fs users get): permissions are 0777 minus the mask.
            Some(mask) => (0o777 & !mask) as u16,
            None => (st.mode & 0o7777) as u16,
        };
        Attr {
            perm,
            uid: view.uid.unwrap_or(st.uid),
            gid: view.gid.unwrap_or(st.gid),
            ino: fuse_ino(st.ino as u32),
            size: st.size,
            blocks: st.blocks,
            atime: time(st.atime, st.atime_ns),
            mtime: time(st.mtime, st.mtime_ns),
            ctime: time(st.ctime, st.ctime_ns),
            crtime: time(st.crtime, st.crtime_ns),
            kind: kind_of_mode(st.mode),
            nlink: st.nlink,
            rdev: st.rdev,
            blksize: 4096,
        }
    }

    fn list(h: &Handles, dir: u32) -> Result<Vec<(u32, FileKind, Vec<u8>)>> {
        let mut raw: Vec<(u32, c_int, Vec<u8>)> = Vec::new();
        // SAFETY: h.fs is open; the callback only touches `raw`, alive for the call.
        check(unsafe { vx_readdir(h.fs, dir, collect_dirent, &mut raw as *mut _ as *mut c_void) })?;
        raw.into_iter()
            .map(|(ino, ft, name)| {
                let kind = match kind_of_dirent(ft) {
                    Some(k) => k,
                    // No filetype feature: ask the inode.
                    None => kind_of_mode(Self::stat(h, ino)?.mode),
                };
                Ok((ino, kind, name))
            })
            .collect()
    }

    /// Sets (`Some`) or removes (`None`) one xattr of `ino`, uncommitted.
    fn put_xattr(
        h: &Handles,
        ino: u32,
        name: &std::ffi::CStr,
        value: Option<&[u8]>,
        c_flags: c_int,
    ) -> Result<()> {
        // An empty value is still a value: pass a non-null pointer; null means remove.
        let (ptr, len): (*const c_void, usize) = match value {
            None => (std::ptr::null(), 0),
            Some([]) => (c"".as_ptr() as *const c_void, 0),
            Some(v) => (v.as_ptr() as *const c_void, v.len()),
        };
        // SAFETY: h.fs is open; name is NUL-terminated; ptr is null or readable for len bytes.
        check(unsafe { vx_setxattr(h.fs, ino, name.as_ptr(), ptr, len, c_flags) })
    }

    /// Sets the access ACL of `ino` and the mode it implies (owner, mask, other), as ext4
    /// does; an ACL the mode says in full is not stored (and a stored one goes).
    fn set_access_acl(
        h: &Handles,
        ino: u32,
        name: &std::ffi::CStr,
        value: &[u8],
        c_flags: c_int,
    ) -> Result<()> {
        let acl = acl::Acl::parse(value)?;
        let st = Self::stat(h, ino)?;
        let mode = (st.mode & 0o7000) | acl.mode_bits();
        if acl.is_mode_only() {
            match Self::put_xattr(h, ino, name, None, 0) {
                Ok(()) | Err(Errno::ENODATA) => {}
                Err(e) => return Err(e),
            }
        } else {
            Self::put_xattr(h, ino, name, Some(value), c_flags)?;
        }
        Self::set_mode(h, ino, mode)
    }

    /// After a chmod to `mode`: the access ACL of `ino`, if it has one, takes the new owner,
    /// mask and other bits (posix_acl_chmod).
    fn chmod_access_acl(h: &Handles, ino: u32, mode: u32) -> Result<()> {
        let Some((_, value)) = Self::xattrs(h, ino)?
            .into_iter()
            .find(|(n, _)| n.as_slice() == acl::ACCESS_XATTR)
        else {
            return Ok(());
        };
        // One the kernel would not have taken stays as it is.
        let Ok(mut acl) = acl::Acl::parse(&value) else {
            return Ok(());
        };
        acl.chmod(mode);
        let name = std::ffi::CString::new(acl::ACCESS_XATTR).map_err(|_| Errno::EINVAL)?;
        Self::put_xattr(h, ino, &name, Some(&acl.to_bytes()), 0)
    }

    /// Sets the permission bits of `ino` (its ctime now), uncommitted.
    fn set_mode(h: &Handles, ino: u32, mode: u32) -> Result<()> {
        let (now_s, now_ns) = split_time(SystemTime::now());
        // SAFETY: h.fs is open; all arguments are plain values.
        check(unsafe {
            vx_setattr(
                h.fs, ino, 1, mode, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, now_s, now_ns,
            )
        })
    }

    fn xattrs(h: &Handles, ino: u32) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        let mut out: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
        // SAFETY: h.fs is open; the callback only touches `out`, alive for the call.
        check(unsafe { vx_xattrs(h.fs, ino, collect_xattr, &mut out as *mut _ as *mut c_void) })?;
        Ok(out)
    }
}

impl Drop for ExtFs {
    fn drop(&mut self) {
        let read_only = self.read_only;
        let h = self.handles.get_mut().unwrap_or_else(|e| e.into_inner());
        h.files.clear();
        let left = std::mem::take(&mut h.orphans);
        for &ino in &left {
            // The orphan's last link is gone and no handle remains.
            let _ = orphans::free_inode(h.fs, ino);
        }
        if !left.is_empty() {
            // In the write order, as the last close of each would have.
            let _ = h.commit_removal(Ok(()));
        }
        if !read_only {
            // SAFETY: h.fs is open read-write; this marks it clean before the close writes it.
            unsafe { vx_end_rw(h.fs) };
        }
        // SAFETY: h.fs was opened by vx_open and is closed exactly once, here.
        let code = unsafe { vx_close(h.fs) };
        if code != 0 {
            eprintln!(
                "ext: closing the filesystem failed: {}",
                Errno::from_raw(code)
            );
        }
        // SAFETY: the filesystem is closed, so libext2fs no longer uses the device.
        unsafe { free_device(self.device) };
    }
}
