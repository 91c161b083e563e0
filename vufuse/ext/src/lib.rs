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
mod names;
mod orphans;
mod session;
mod usage;
mod write_order;

use ffi::*;

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
    Attr, CachePolicy, Capabilities, Context, DirEntry, Entry, Fh, FileKind, FileSystem, Ino,
    Opened, SetAttr, StatFs, RENAME_EXCHANGE, RENAME_NOREPLACE,
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

/// Checks the raw superblock on `dev` (`geometry::check`) before libext2fs acts on it:
/// a refusal names what is wrong, with the errno a front end reports (EUCLEAN for a corrupt
/// geometry, EOPNOTSUPP for unknown incompatible features, EROFS for a read-write mount of
/// unknown read-only-compatible ones).
fn check_superblock(dev: &dyn BlockDevice, read_only: bool) -> std::result::Result<(), MountError> {
    let end = geometry::SUPERBLOCK_OFFSET + geometry::SUPERBLOCK_SIZE as u64;
    if dev.size() < end {
        return Err(MountError::volume(
            Errno::EUCLEAN,
            format!(
                "not an ext2/3/4 filesystem ({} bytes hold no superblock)",
                dev.size()
            ),
        ));
    }
    let mut sb = vec![0u8; geometry::SUPERBLOCK_SIZE];
    dev.read_exact_at(&mut sb, geometry::SUPERBLOCK_OFFSET)
        .map_err(|e| MountError::volume(e, format!("cannot read the superblock: {e}")))?;
    let (mut incompat, mut ro_compat) = (0u32, 0u32);
    // SAFETY: both out-pointers are valid u32s.
    unsafe { vx_lib_features(&mut incompat, &mut ro_compat) };
    let lib = geometry::LibFeatures {
        incompat,
        ro_compat,
    };
    let names = |ro: bool, bits: u32| {
        let mut buf = [0 as c_char; 256];
        // SAFETY: buf is writable for its length; vx_feature_names NUL-terminates within it.
        unsafe { vx_feature_names(c_int::from(ro), bits, buf.as_mut_ptr(), buf.len()) };
        // SAFETY: NUL-terminated above.
        unsafe { std::ffi::CStr::from_ptr(buf.as_ptr()) }
            .to_string_lossy()
            .into_owned()
    };
    geometry::check(&sb, dev.size(), read_only, lib).map_err(|p| match p {
        geometry::Problem::NotExt => MountError::volume(
            Errno::EUCLEAN,
            "not an ext2/3/4 filesystem (bad superblock magic)",
        ),
        geometry::Problem::Incompat(bits) => MountError::volume(
            Errno::EOPNOTSUPP,
            format!(
                "the filesystem uses features this driver does not support ({})",
                names(false, bits)
            ),
        ),
        geometry::Problem::RoCompat(bits) => MountError::volume(
            Errno::EROFS,
            format!(
                "the filesystem uses read-only compatible features this driver cannot write ({}): \
                 mount it read-only",
                names(true, bits)
            ),
        ),
        geometry::Problem::Corrupt(what) => MountError::volume(
            Errno::EUCLEAN,
            format!("corrupt superblock: {what} (e2fsck -fy IMAGE may repair it)"),
        ),
    })
}

/// Frees the device descriptor and the boxed device behind it.
///
/// A volume being opened: the libext2fs handle and the device under it, closed and freed
/// if a later step of the mount refuses the volume.
struct Opening {
    fs: *mut ExtFsHandle,
    device: *mut VxDev,
}

impl Opening {
    /// The shim's device over `dev` (behind a block cache), and libext2fs opened on it.
    fn open(
        dev: Arc<dyn BlockDevice>,
        read_only: bool,
        allow_recovery: bool,
    ) -> std::result::Result<Opening, MountError> {
        let size = dev.size();
        // libext2fs reads the superblock in 1 KiB blocks, then sets its own block size.
        let cached = CachedDevice::new(dev, 1024);
        let ctx = Box::into_raw(Box::new(cached)) as *mut c_void;
        let device = Box::into_raw(Box::new(VxDev {
            ctx,
            size,
            read_only: c_int::from(read_only),
            read: dev_read,
            write: dev_write,
            flush: dev_flush,
            prefetch: dev_prefetch,
            write_back: dev_write_back,
            set_block_size: dev_set_block_size,
            make_indexed: htree::vx_make_indexed,
        }));
        let mut fs: *mut ExtFsHandle = std::ptr::null_mut();
        let mut msg = vec![0u8; 512];
        // SAFETY: device points at a live VxDev that outlives the handle (freed
        // in Drop after vx_close); msg is a writable buffer of its length.
        let code = unsafe {
            vx_open(
                device,
                c_int::from(!read_only),
                c_int::from(allow_recovery),
                &mut fs,
                msg.as_mut_ptr() as *mut c_char,
                msg.len(),
            )
        };
        if code != 0 {
            // SAFETY: both boxes were created above and nothing else holds them.
            unsafe { free_device(device) };
            let end = msg.iter().position(|&b| b == 0).unwrap_or(msg.len());
            return Err(MountError::Volume {
                errno: Errno::from_raw(code),
                message: String::from_utf8_lossy(&msg[..end]).into_owned(),
            });
        }
        Ok(Opening { fs, device })
    }

    /// The mount goes ahead: the handle and the device pass to the volume.
    fn into_parts(self) -> (*mut ExtFsHandle, *mut VxDev) {
        let opening = std::mem::ManuallyDrop::new(self);
        (opening.fs, opening.device)
    }
}

impl Drop for Opening {
    fn drop(&mut self) {
        // SAFETY: fs is open and closed once here; then the device is unused.
        unsafe {
            vx_close(self.fs);
            free_device(self.device);
        }
    }
}

/// As the kernel's ext4_fill_super: a root that is not a directory (or is empty) is refused
/// at mount, not served as a mount whose every access fails.
fn check_root(fs: *mut ExtFsHandle) -> std::result::Result<(), MountError> {
    let mut root = VxStat::default();
    // SAFETY: fs is an open handle; root is a valid out-pointer.
    let code = unsafe { vx_stat(fs, 2, &mut root) };
    if code == 0 && root.mode & 0o170000 == 0o040000 && root.size != 0 {
        return Ok(());
    }
    let what = if code != 0 {
        format!("cannot be read ({})", Errno::from_raw(code))
    } else {
        format!(
            "is not a directory (mode {:o}, size {})",
            root.mode, root.size
        )
    };
    Err(MountError::volume(
        Errno::EUCLEAN,
        format!("corrupt root inode: inode 2 {what} (e2fsck -fy IMAGE may repair it)"),
    ))
}

/// What a crash left on the orphan list goes first, then the in-use mark is set.
fn begin_read_write(fs: *mut ExtFsHandle) -> std::result::Result<(), MountError> {
    let code = match orphans::release(fs) {
        // SAFETY: fs was just opened read-write.
        Ok(()) => unsafe { vx_begin_rw(fs) },
        Err(e) => e.raw(),
    };
    if code == 0 {
        return Ok(());
    }
    Err(MountError::Volume {
        errno: Errno::from_raw(code),
        message: format!(
            "cannot mark the filesystem in use: {}",
            Errno::from_raw(code)
        ),
    })
}

/// s_def_resuid and s_def_resgid: who besides root may use the reserved blocks.
fn reserved_ids(fs: *mut ExtFsHandle) -> (u32, u32) {
    let (mut resuid, mut resgid) = (0u32, 0u32);
    // SAFETY: fs is open; both out-pointers are valid.
    unsafe { vx_reserved_ids(fs, &mut resuid, &mut resgid) };
    (resuid, resgid)
}

/// The volume label (up to 16 bytes).
fn label_of(fs: *mut ExtFsHandle) -> String {
    let mut label = [0 as c_char; 17];
    // SAFETY: fs is an open handle; label has the 17 bytes vx_label writes.
    unsafe { vx_label(fs, label.as_mut_ptr()) };
    // SAFETY: vx_label NUL-terminates within the buffer.
    unsafe { std::ffi::CStr::from_ptr(label.as_ptr()) }
        .to_string_lossy()
        .into_owned()
}

/// # Safety
/// `device` must come from `Box::into_raw` in `ExtFs::open`, and libext2fs
/// must no longer use it (the filesystem is closed or was never opened).
unsafe fn free_device(device: *mut VxDev) {
    // SAFETY: guaranteed by the caller.
    let device = unsafe { Box::from_raw(device) };
    // SAFETY: ctx was created from a Box<CachedDevice> in `open_raw`.
    drop(unsafe { Box::from_raw(device.ctx as *mut CachedDevice) });
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

impl FileSystem for ExtFs {
    /// 60 s caches (nothing else changes the image while mounted); every write reaches the
    /// image before `write` returns (metadata included, by `commit`), so close(2) has nothing
    /// left to do; libext2fs is not thread-safe, so every call holds `ExtFs::lock` and one
    /// thread serves as well as two. Access checks are the kernel's (`default_permissions`).
    /// The image is this driver's alone (image lock), so the kernel keeps directory listings
    /// across opens. The writeback cache is safe too (`read` ignores the handle's access
    /// mode, `write` takes offsets as given) but not the default: measured on the untar of
    /// /usr/include it saves 14% of the requests (one write per file instead of 3.4, but a
    /// SETATTR of the kernel's times before tar's own), and it costs `rm -rf` one synchronous
    /// SETATTR (ctime) per unlinked file, +33%; `-o writeback_cache` turns it on. ACLs are
    /// kept in the kernel's form (libext2fs converts ext4's short form), so the kernel
    /// caches and checks them: a warm `ls -lR` of /usr/include asks for 44% fewer xattrs.
    fn capabilities(&self) -> Capabilities {
        Capabilities {
            cache: CachePolicy {
                attr_ttl: Duration::from_secs(60),
                entry_ttl: Duration::from_secs(60),
            },
            flush_is_noop: true,
            one_thread_suffices: true,
            cache_dirs: true,
            posix_acls: true,
            ..Capabilities::default()
        }
    }

    fn lookup(&self, _ctx: &Context, parent: Ino, name: &OsStr) -> Result<Entry> {
        let mut h = self.lock();
        let bytes = name.as_bytes();
        if bytes.len() > 255 {
            return Err(Errno::ENAMETOOLONG);
        }
        let ino = h.lookup_cached(ext_ino(parent), bytes)?;
        let st = Self::stat(&h, ino)?;
        Ok(Entry {
            attr: self.attr(&st),
            generation: st.generation as u64,
        })
    }

    fn getattr(&self, _ctx: &Context, ino: Ino, _fh: Option<Fh>) -> Result<Attr> {
        let h = self.lock();
        Ok(self.attr(&Self::stat(&h, ext_ino(ino))?))
    }

    fn readlink(&self, _ctx: &Context, ino: Ino) -> Result<Vec<u8>> {
        let h = self.lock();
        let mut buf = vec![0u8; 4096];
        let mut len = 0usize;
        // SAFETY: h.fs is open; buf is writable for its length.
        check(unsafe {
            vx_readlink(
                h.fs,
                ext_ino(ino),
                buf.as_mut_ptr() as *mut c_char,
                buf.len(),
                &mut len,
            )
        })?;
        buf.truncate(len);
        Ok(buf)
    }

    fn open(&self, _ctx: &Context, ino: Ino, flags: i32) -> Result<Opened> {
        if flags & libc::O_ACCMODE != libc::O_RDONLY && self.read_only {
            return Err(Errno::EROFS);
        }
        let mut h = self.lock();
        let st = Self::stat(&h, ext_ino(ino))?;
        if kind_of_mode(st.mode) == FileKind::Dir {
            return Err(Errno::EISDIR);
        }
        // A corrupt extent tree (a cycle, a node out of place) is refused
        // here, once, rather than read as made-up mappings.
        // SAFETY: h.fs is open.
        check(unsafe { vx_check_extents(h.fs, ext_ino(ino)) })?;
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        h.files.insert(fh, ext_ino(ino));
        Ok(Opened {
            fh: Fh(fh),
            keep_cache: true,
            direct_io: false,
        })
    }

    fn read(&self, _ctx: &Context, ino: Ino, fh: Fh, offset: u64, buf: &mut [u8]) -> Result<usize> {
        let mut h = self.lock();
        // A reader that goes on where it stopped gets the next 8 MiB prefetched.
        let sequential = offset == 0 || h.next_read.get(&fh.0) == Some(&offset);
        let due = offset + buf.len() as u64 > h.prefetch_at.get(&fh.0).copied().unwrap_or(0);
        let ahead = if sequential && (offset == 0 || due) {
            h.prefetch_at.insert(fh.0, offset + READAHEAD / 2);
            READAHEAD
        } else {
            0
        };
        let got = extent_read::read(h.fs, ext_ino(ino), offset, buf, ahead)?;
        h.next_read.insert(fh.0, offset + got as u64);
        Ok(got)
    }

    fn write(&self, ctx: &Context, ino: Ino, _fh: Fh, offset: u64, data: &[u8]) -> Result<usize> {
        self.writable()?;
        let mut h = self.lock_as(ctx);
        let (s, ns) = split_time(SystemTime::now());
        let result = extent_write::write(h.fs, ext_ino(ino), offset, data, s, ns);
        h.commit(result)
    }

    fn release(&self, _ctx: &Context, _ino: Ino, fh: Fh) -> Result<()> {
        let mut h = self.lock();
        h.next_read.remove(&fh.0);
        h.prefetch_at.remove(&fh.0);
        if let Some(ino) = h.files.remove(&fh.0) {
            if h.open_count(ino) == 0 && h.orphans.remove(&ino) {
                // The orphan's last link is gone and its last handle closed.
                let freed = orphans::free_inode(h.fs, ino);
                h.commit_removal(freed)?;
            }
        }
        Ok(())
    }

    fn fsync(&self, _ctx: &Context, _ino: Ino, _fh: Fh, _datasync: bool) -> Result<()> {
        if self.read_only {
            return Ok(());
        }
        let h = self.lock();
        // SAFETY: h.fs is open.
        check(unsafe { vx_flush(h.fs) })
    }

    fn setattr(&self, ctx: &Context, ino: Ino, set: &SetAttr) -> Result<Attr> {
        self.writable()?;
        let mut h = self.lock();
        let target = ext_ino(ino);
        // A size change marks mtime (and ctime) as truncate(2) and O_TRUNC must, unless the
        // caller sets mtime itself.
        let mut resized = false;
        if let Some(size) = set.size {
            let before = Self::stat(&h, target)?;
            if kind_of_mode(before.mode) == FileKind::Dir {
                return Err(Errno::EISDIR);
            }
            resized = before.size != size;
            // SAFETY: h.fs is open.
            check(unsafe { vx_check_extents(h.fs, target) })?;
            // SAFETY: h.fs is open.
            let truncated = check(unsafe { vx_truncate(h.fs, target, size) });
            h.commit_removal(truncated)?;
        }
        let _ = ctx;
        let (now_s, now_ns) = split_time(SystemTime::now());
        let (a_s, a_ns) = set
            .atime
            .map(|t| split_time(t.resolve()))
            .unwrap_or_default();
        let mtime = set
            .mtime
            .or_else(|| resized.then_some(vufuse_api::SetTime::Now));
        let (m_s, m_ns) = mtime.map(|t| split_time(t.resolve())).unwrap_or_default();
        // SAFETY: h.fs is open; all arguments are plain values.
        let changed = check(unsafe {
            vx_setattr(
                h.fs,
                target,
                c_int::from(set.mode.is_some()),
                set.mode.unwrap_or(0),
                c_int::from(set.uid.is_some()),
                set.uid.unwrap_or(0),
                c_int::from(set.gid.is_some()),
                set.gid.unwrap_or(0),
                c_int::from(set.atime.is_some()),
                a_s,
                a_ns,
                c_int::from(mtime.is_some()),
                m_s,
                m_ns,
                now_s,
                now_ns,
            )
        });
        let changed = match set.mode {
            Some(mode) => changed.and_then(|()| Self::chmod_access_acl(&h, target, mode)),
            None => changed,
        };
        h.commit(changed)?;
        Ok(self.attr(&Self::stat(&h, target)?))
    }

    fn mknod(
        &self,
        ctx: &Context,
        parent: Ino,
        name: &OsStr,
        mode: u32,
        rdev: u32,
    ) -> Result<Entry> {
        self.make_name(ctx, parent, name, |fs, new, ino| {
            // SAFETY: fs is open and held under the lock; new.name is NUL-terminated; ino is
            // a valid out-pointer.
            unsafe {
                vx_mknod(
                    fs,
                    new.parent,
                    new.name.as_ptr(),
                    mode,
                    rdev,
                    new.uid,
                    new.gid,
                    new.secs,
                    new.nanos,
                    new.absent,
                    ino,
                )
            }
        })
    }

    fn create(
        &self,
        ctx: &Context,
        parent: Ino,
        name: &OsStr,
        mode: u32,
        _flags: i32,
    ) -> Result<(Entry, Opened)> {
        let entry = self.mknod(ctx, parent, name, libc::S_IFREG | (mode & 0o7777), 0)?;
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        self.lock().files.insert(fh, ext_ino(entry.attr.ino));
        Ok((
            entry,
            Opened {
                fh: Fh(fh),
                keep_cache: true,
                direct_io: false,
            },
        ))
    }

    fn mkdir(&self, ctx: &Context, parent: Ino, name: &OsStr, mode: u32) -> Result<Entry> {
        self.make_name(ctx, parent, name, |fs, new, ino| {
            // SAFETY: as in mknod.
            unsafe {
                vx_mkdir(
                    fs,
                    new.parent,
                    new.name.as_ptr(),
                    mode,
                    new.uid,
                    new.gid,
                    new.secs,
                    new.nanos,
                    new.absent,
                    ino,
                )
            }
        })
    }

    fn symlink(
        &self,
        ctx: &Context,
        parent: Ino,
        name: &OsStr,
        target: &std::path::Path,
    ) -> Result<Entry> {
        let target =
            std::ffi::CString::new(target.as_os_str().as_bytes()).map_err(|_| Errno::EINVAL)?;
        self.make_name(ctx, parent, name, |fs, new, ino| {
            // SAFETY: as in mknod; target is a NUL-terminated string.
            unsafe {
                vx_symlink(
                    fs,
                    new.parent,
                    new.name.as_ptr(),
                    target.as_ptr(),
                    new.uid,
                    new.gid,
                    new.secs,
                    new.nanos,
                    new.absent,
                    ino,
                )
            }
        })
    }

    fn link(&self, ctx: &Context, ino: Ino, new_parent: Ino, new_name: &OsStr) -> Result<Entry> {
        self.writable()?;
        let name = c_name(new_name)?;
        let mut h = self.lock_as(ctx);
        let absent = c_int::from(h.known_absent(ext_ino(new_parent), name.as_bytes()));
        let (s, ns) = split_time(SystemTime::now());
        // SAFETY: h.fs is open; name is NUL-terminated.
        let linked = check(unsafe {
            vx_link(
                h.fs,
                ext_ino(ino),
                ext_ino(new_parent),
                name.as_ptr(),
                s,
                ns,
                absent,
            )
        });
        let linked = h.commit(linked).map(|()| ext_ino(ino));
        h.note_added(ext_ino(new_parent), name.as_bytes(), &linked);
        linked?;
        self.entry_of(&h, ext_ino(ino))
    }

    fn unlink(&self, _ctx: &Context, parent: Ino, name: &OsStr) -> Result<()> {
        self.remove(parent, name, false)
    }

    fn rmdir(&self, _ctx: &Context, parent: Ino, name: &OsStr) -> Result<()> {
        self.remove(parent, name, true)
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
        self.writable()?;
        if flags & !(RENAME_NOREPLACE | RENAME_EXCHANGE) != 0
            || flags == RENAME_NOREPLACE | RENAME_EXCHANGE
        {
            return Err(Errno::EINVAL);
        }
        let (from, to) = (c_name(name)?, c_name(new_name)?);
        let mut h = self.lock_as(ctx);
        let c_flags = c_int::from(flags & RENAME_NOREPLACE != 0)
            | (c_int::from(flags & RENAME_EXCHANGE != 0) << 1);
        let (s, ns) = split_time(SystemTime::now());
        let mut freed = 0u32;
        h.forget_dir(ext_ino(parent));
        h.forget_dir(ext_ino(new_parent));
        // SAFETY: h.fs is open; both names are NUL-terminated; freed is a valid out-pointer.
        let renamed = check(unsafe {
            vx_rename(
                h.fs,
                ext_ino(parent),
                from.as_ptr(),
                ext_ino(new_parent),
                to.as_ptr(),
                c_flags,
                s,
                ns,
                &mut freed,
            )
        });
        let result = renamed.and_then(|()| {
            if freed != 0 {
                h.free_when_closed(freed)
            } else {
                Ok(())
            }
        });
        h.commit_removal(result)
    }

    fn setxattr(
        &self,
        ctx: &Context,
        ino: Ino,
        name: &OsStr,
        value: &[u8],
        flags: i32,
    ) -> Result<()> {
        self.writable()?;
        let name = std::ffi::CString::new(name.as_bytes()).map_err(|_| Errno::EINVAL)?;
        let mut h = self.lock_as(ctx);
        let c_flags = c_int::from(flags & libc::XATTR_CREATE != 0)
            | (c_int::from(flags & libc::XATTR_REPLACE != 0) << 1);
        let target = ext_ino(ino);
        let set = match name.as_bytes() {
            acl::ACCESS_XATTR => Self::set_access_acl(&h, target, &name, value, c_flags),
            acl::DEFAULT_XATTR => acl::Acl::parse(value)
                .and_then(|_| Self::put_xattr(&h, target, &name, Some(value), c_flags)),
            _ => Self::put_xattr(&h, target, &name, Some(value), c_flags),
        };
        h.commit(set)
    }

    fn removexattr(&self, _ctx: &Context, ino: Ino, name: &OsStr) -> Result<()> {
        self.writable()?;
        let name = std::ffi::CString::new(name.as_bytes()).map_err(|_| Errno::EINVAL)?;
        let mut h = self.lock();
        let removed = Self::put_xattr(&h, ext_ino(ino), &name, None, 0);
        h.commit_removal(removed)
    }

    fn destroy(&self) {
        if self.read_only {
            return;
        }
        let h = self.lock();
        // SAFETY: h.fs is open.
        let code = unsafe { vx_flush(h.fs) };
        if code != 0 {
            eprintln!(
                "ext: writing the filesystem back failed: {}",
                Errno::from_raw(code)
            );
        }
    }

    fn opendir(&self, _ctx: &Context, ino: Ino) -> Result<Fh> {
        let mut h = self.lock();
        let entries = Self::list(&h, ext_ino(ino))?;
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        h.dirs.insert(fh, entries);
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
        let mut h = self.lock();
        if !h.dirs.contains_key(&fh.0) {
            // A front end without opendir (e.g. a path-based one): list now.
            let entries = Self::list(&h, ext_ino(ino))?;
            h.dirs.insert(fh.0, entries);
        }
        let entries = &h.dirs[&fh.0];
        for (i, (entry_ino, kind, name)) in entries.iter().enumerate().skip(offset as usize) {
            let entry = DirEntry {
                ino: fuse_ino(*entry_ino),
                next_offset: i as u64 + 1,
                kind: *kind,
                name: OsStr::from_bytes(name),
            };
            if !sink(entry) {
                break;
            }
        }
        Ok(())
    }

    fn releasedir(&self, _ctx: &Context, _ino: Ino, fh: Fh) -> Result<()> {
        self.lock().dirs.remove(&fh.0);
        Ok(())
    }

    fn statfs(&self, _ctx: &Context) -> Result<StatFs> {
        let h = self.lock();
        let mut st = VxStatFs::default();
        // SAFETY: h.fs is open; st is a valid out-pointer.
        check(unsafe { vx_statfs(h.fs, &mut st) })?;
        Ok(StatFs {
            blocks: st.blocks,
            blocks_free: st.blocks_free,
            blocks_available: st.blocks_avail,
            files: st.files,
            files_free: st.files_free,
            block_size: st.block_size,
            name_max: st.name_max,
            fragment_size: st.block_size,
        })
    }

    fn getxattr(&self, _ctx: &Context, ino: Ino, name: &OsStr) -> Result<Vec<u8>> {
        let h = self.lock();
        Self::xattrs(&h, ext_ino(ino))?
            .into_iter()
            .find(|(n, _)| n.as_slice() == name.as_bytes())
            .map(|(_, v)| v)
            .ok_or(Errno::ENODATA)
    }

    fn listxattr(&self, _ctx: &Context, ino: Ino) -> Result<Vec<Vec<u8>>> {
        let h = self.lock();
        Ok(Self::xattrs(&h, ext_ino(ino))?
            .into_iter()
            .map(|(n, _)| n)
            .collect())
    }
}
