//! The adapter: every fuser request mapped to one [`FileSystem`] call.

use super::busy_poll::BusyPoll;
use super::trace::Summary;
use fuser::{
    FileAttr, FileHandle, FileType, FopenFlags, Generation, INodeNo, InitFlags, KernelConfig,
    LockOwner, OpenFlags, RenameFlags, ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory,
    ReplyDirectoryPlus, ReplyEmpty, ReplyEntry, ReplyOpen, ReplyStatfs, ReplyWrite, ReplyXattr,
    Request, TimeOrNow, WriteFlags,
};
use std::cell::RefCell;
use std::collections::HashMap;
use std::ffi::OsStr;
use std::fmt::Debug;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use vudev::Errno;
use vufuse_api::fs::{
    Attr, Capabilities, Context, DirEntry, Entry, Fh, FileKind, FileSystem, Ino, SetAttr, SetTime,
    StatFs,
};
use vufuse_api::options::FuseTuning;
use vufuse_api::privileges;

/// The largest write the kernel may send in one request (and so the largest read it asks for).
pub const MAX_WRITE: u32 = 1 << 20;

/// Names listed per READDIRPLUS request: more than fit in the kernel's buffer (a page holds
/// about 26 entries), so a reply is never short for want of listing.
const READDIRPLUS_BATCH: usize = 64;

/// Serves any [`FileSystem`] through fuser's [`fuser::Filesystem`] trait.
///
/// Holds no state of its own besides the driver, so it is as thread-safe as
/// the driver is; fuser calls it from several threads at once.
pub struct FuseAdapter {
    fs: Arc<dyn FileSystem>,
    caps: Capabilities,
    /// `kernel_cache`: every open keeps the kernel's pages of the file.
    kernel_cache: bool,
    /// `negative_timeout=`: how long the kernel may remember that a looked-up name is absent.
    negative_ttl: Option<Duration>,
    debug: bool,
    busy_poll: Option<Arc<BusyPoll>>,
    lifecycle: Arc<Lifecycle>,
    /// The kernel agreed to passthrough at init (the driver offers it, the kernel has it).
    passthrough: bool,
    /// The kernel left clearing set-user-ID and set-group-ID bits to this daemon at init
    /// (FUSE_HANDLE_KILLPRIV_V2, see `privileges`).
    kills_privileges: bool,
    /// Inodes with open handles, for passthrough: the kernel keeps one I/O mode per inode
    /// (all handles through one backing file, or none), so every open follows the first.
    open_files: std::sync::Mutex<HashMap<u64, OpenInode>>,
}

/// The open handles of one inode (see [`FuseAdapter::open_files`]).
#[derive(Debug, Default)]
struct OpenInode {
    handles: u64,
    /// The backing file every handle of the inode passes through to, when passthrough.
    backing: Option<Arc<fuser::BackingId>>,
}

/// Whether the driver was started; ends it exactly once (from fuser's FUSE_DESTROY or its
/// session's end); and tells the daemon when fuser has let go of the adapter, i.e. the
/// session loop is over and the driver has been written back.
#[derive(Debug, Default)]
pub struct Lifecycle {
    initialized: AtomicBool,
    destroyed: AtomicBool,
    ended: std::sync::Mutex<bool>,
    ended_cv: std::sync::Condvar,
}

impl Lifecycle {
    /// Runs `fs.destroy()` if the driver was initialized and not destroyed yet.
    fn destroy(&self, fs: &dyn FileSystem, debug: bool) {
        // A driver that never started has nothing to write back.
        if self.initialized.load(Ordering::Acquire) && !self.destroyed.swap(true, Ordering::AcqRel)
        {
            if debug {
                eprintln!("destroy");
            }
            fs.destroy();
        }
    }

    fn mark_ended(&self) {
        *self.ended.lock().unwrap_or_else(|e| e.into_inner()) = true;
        self.ended_cv.notify_all();
    }

    /// Blocks until the adapter is dropped: the session is over and the driver written back.
    pub fn wait_ended(&self) {
        let mut ended = self.ended.lock().unwrap_or_else(|e| e.into_inner());
        while !*ended {
            ended = self.ended_cv.wait(ended).unwrap_or_else(|e| e.into_inner());
        }
    }
}

impl Drop for FuseAdapter {
    fn drop(&mut self) {
        // fuser drops the adapter after calling destroy; make sure it ran, then tell.
        self.lifecycle.destroy(&*self.fs, self.debug);
        self.lifecycle.mark_ended();
    }
}

impl std::fmt::Debug for FuseAdapter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FuseAdapter")
            .field("debug", &self.debug)
            .field("lifecycle", &self.lifecycle)
            .finish_non_exhaustive()
    }
}

impl FuseAdapter {
    /// Wraps `fs`; with `debug`, every request and its result go to stderr.
    pub fn new(fs: Arc<dyn FileSystem>, debug: bool) -> FuseAdapter {
        FuseAdapter {
            caps: fs.capabilities(),
            kernel_cache: false,
            negative_ttl: None,
            fs,
            debug,
            busy_poll: None,
            lifecycle: Arc::new(Lifecycle::default()),
            passthrough: false,
            kills_privileges: false,
            open_files: std::sync::Mutex::new(HashMap::new()),
        }
    }

    /// Notes a new handle `fh` of `ino` and says which backing file (if any) its I/O passes
    /// through to: for the inode's first handle, the driver's host file registered with
    /// `register` (the reply's `open_backing`); for the others, whatever the first got. The
    /// kernel fails (EIO) an open that does not follow the inode's mode, so a later handle
    /// follows it even when the driver offers no file of its own for it.
    fn open_io(
        &self,
        ino: u64,
        fh: Fh,
        register: impl FnOnce(&std::os::fd::OwnedFd) -> std::io::Result<fuser::BackingId>,
    ) -> Option<Arc<fuser::BackingId>> {
        if !self.passthrough {
            return None;
        }
        let file = self.fs.backing_file(Ino(ino), fh);
        let mut files = self.open_files.lock().unwrap_or_else(|e| e.into_inner());
        let open = files.entry(ino).or_default();
        let first = open.handles == 0;
        open.handles += 1;
        if first {
            open.backing = None;
            if let Some(file) = file {
                match register(&file) {
                    Ok(id) => open.backing = Some(Arc::new(id)),
                    Err(e) if self.debug => eprintln!("passthrough of inode {ino}: {e}"),
                    Err(_) => {}
                }
            }
        }
        open.backing.clone()
    }

    /// Forgets a handle of `ino` (release): the backing file goes with the last one.
    fn release_io(&self, ino: u64) {
        if !self.passthrough {
            return;
        }
        let mut files = self.open_files.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(open) = files.get_mut(&ino) {
            open.handles = open.handles.saturating_sub(1);
            if open.handles == 0 {
                files.remove(&ino);
            }
        }
    }

    /// The handle that ends the driver once, for a daemon that ends the session itself.
    pub fn lifecycle(&self) -> Arc<Lifecycle> {
        self.lifecycle.clone()
    }

    /// Applies libfuse's tuning options: `attr_timeout=`/`entry_timeout=` replace the
    /// driver's cache lifetimes, `kernel_cache` keeps file pages across opens.
    pub fn with_tuning(mut self, tuning: &FuseTuning) -> FuseAdapter {
        if let Some(t) = tuning.attr_timeout {
            self.caps.cache.attr_ttl = t;
        }
        if let Some(t) = tuning.entry_timeout {
            self.caps.cache.entry_ttl = t;
        }
        self.kernel_cache = tuning.kernel_cache;
        self.negative_ttl = tuning.negative_timeout;
        if let Some(on) = tuning.writeback_cache {
            self.caps.writeback_cache = on;
        }
        self
    }

    /// `ENOSYS` for an xattr request to a driver that keeps none (`Capabilities::xattrs`):
    /// the kernel stops sending them and answers `EOPNOTSUPP` itself.
    fn without_xattrs(&self) -> Option<Errno> {
        (!self.caps.xattrs).then_some(Errno::ENOSYS)
    }

    /// `set` with the mode that clears privileges added, for a chown or a truncate that
    /// clears them, when this mount took that over from the kernel (FUSE_HANDLE_KILLPRIV_V2).
    fn with_privileges_cleared(
        &self,
        ctx: &Context,
        ino: Ino,
        set: SetAttr,
    ) -> Result<SetAttr, Errno> {
        if !self.kills_privileges {
            return Ok(set);
        }
        privileges::with_privileges_cleared(&*self.fs, ctx, ino, set)
    }

    /// Reports every request to `poll` (the `busy_poll` mount option).
    pub fn with_busy_poll(mut self, poll: Arc<BusyPoll>) -> FuseAdapter {
        self.busy_poll = Some(poll);
        self
    }

    /// Prints `op` and its result when debugging; `describe` runs only then. Every request
    /// passes here once, so it is also where busy polling learns that requests keep coming.
    fn trace<T: Summary>(&self, req: &Request, describe: impl FnOnce() -> String, result: &T) {
        if let Some(poll) = &self.busy_poll {
            poll.on_request();
        }
        if self.debug {
            // One greppable line: `op(node, args) -> ok ... | ERRNO pid=N uid=N` (trace.rs).
            eprintln!(
                "{} -> {} pid={} uid={}",
                describe(),
                result.summary(),
                req.pid(),
                req.uid()
            );
        }
    }

    fn attr_ttl(&self) -> Duration {
        self.caps.cache.attr_ttl
    }

    /// Traces a request's `result` and sends it: the last two steps of every callback.
    fn answer<T: Summary, R: Answer<T>>(
        &self,
        req: &Request,
        describe: impl FnOnce() -> String,
        result: Result<T, Errno>,
        reply: R,
    ) {
        self.trace(req, describe, &result);
        reply.send(self, result);
    }
}

/// A fuser reply that carries a driver's answer of type `T` (or its errno).
trait Answer<T> {
    /// Sends `result`, with the adapter's cache lifetimes where the reply has them.
    fn send(self, adapter: &FuseAdapter, result: Result<T, Errno>);
}

impl Answer<Entry> for ReplyEntry {
    fn send(self, adapter: &FuseAdapter, result: Result<Entry, Errno>) {
        match result {
            Ok(entry) => {
                let policy = adapter.caps.cache;
                self.entry_with_ttls(
                    &policy.attr_ttl,
                    &policy.entry_ttl,
                    &to_file_attr(&entry.attr),
                    Generation(entry.generation),
                )
            }
            Err(e) => self.error(errno(e)),
        }
    }
}

impl Answer<()> for ReplyEmpty {
    fn send(self, _adapter: &FuseAdapter, result: Result<(), Errno>) {
        match result {
            Ok(()) => self.ok(),
            Err(e) => self.error(errno(e)),
        }
    }
}

impl Answer<Attr> for ReplyAttr {
    fn send(self, adapter: &FuseAdapter, result: Result<Attr, Errno>) {
        match result {
            Ok(attr) => self.attr(&adapter.attr_ttl(), &to_file_attr(&attr)),
            Err(e) => self.error(errno(e)),
        }
    }
}

impl Answer<Vec<u8>> for ReplyData {
    fn send(self, _adapter: &FuseAdapter, result: Result<Vec<u8>, Errno>) {
        match result {
            Ok(data) => self.data(&data),
            Err(e) => self.error(errno(e)),
        }
    }
}

/// The caller of a request, as the driver sees it.
fn context(req: &Request, umask: Option<u32>) -> Context {
    Context {
        uid: req.uid(),
        gid: req.gid(),
        pid: req.pid(),
        umask,
    }
}

/// The one place a driver's errno becomes fuser's.
fn errno(e: Errno) -> fuser::Errno {
    fuser::Errno::from_i32(e.raw())
}

fn file_type(kind: FileKind) -> FileType {
    match kind {
        FileKind::File => FileType::RegularFile,
        FileKind::Dir => FileType::Directory,
        FileKind::Symlink => FileType::Symlink,
        FileKind::CharDevice => FileType::CharDevice,
        FileKind::BlockDevice => FileType::BlockDevice,
        FileKind::Fifo => FileType::NamedPipe,
        FileKind::Socket => FileType::Socket,
    }
}

/// Attributes for a readdirplus entry the kernel does not link ("." and ".."): only the
/// inode number and type are read from it.
fn placeholder_attr(ino: Ino, kind: FileKind) -> FileAttr {
    FileAttr {
        ino: INodeNo(ino.0),
        size: 0,
        blocks: 0,
        atime: SystemTime::UNIX_EPOCH,
        mtime: SystemTime::UNIX_EPOCH,
        ctime: SystemTime::UNIX_EPOCH,
        crtime: SystemTime::UNIX_EPOCH,
        kind: file_type(kind),
        perm: 0,
        nlink: 0,
        uid: 0,
        gid: 0,
        rdev: 0,
        blksize: 0,
        flags: 0,
    }
}

fn to_file_attr(attr: &Attr) -> FileAttr {
    FileAttr {
        ino: INodeNo(attr.ino.0),
        size: attr.size,
        blocks: attr.blocks,
        atime: attr.atime,
        mtime: attr.mtime,
        ctime: attr.ctime,
        crtime: attr.crtime,
        kind: file_type(attr.kind),
        perm: attr.perm,
        nlink: attr.nlink,
        uid: attr.uid,
        gid: attr.gid,
        rdev: attr.rdev,
        blksize: attr.blksize,
        flags: 0,
    }
}

/// The attributes of a negative entry: node ID 0 ("no such name"); the rest is ignored.
fn negative_attr() -> FileAttr {
    FileAttr {
        ino: INodeNo(0),
        size: 0,
        blocks: 0,
        atime: SystemTime::UNIX_EPOCH,
        mtime: SystemTime::UNIX_EPOCH,
        ctime: SystemTime::UNIX_EPOCH,
        crtime: SystemTime::UNIX_EPOCH,
        kind: fuser::FileType::RegularFile,
        perm: 0,
        nlink: 0,
        uid: 0,
        gid: 0,
        rdev: 0,
        blksize: 0,
        flags: 0,
    }
}

fn set_time(t: Option<TimeOrNow>) -> Option<SetTime> {
    t.map(|t| match t {
        TimeOrNow::SpecificTime(at) => SetTime::At(at),
        TimeOrNow::Now => SetTime::Now,
    })
}

fn fopen_flags(keep_cache: bool, direct_io: bool) -> FopenFlags {
    let mut flags = FopenFlags::empty();
    if keep_cache {
        flags |= FopenFlags::FOPEN_KEEP_CACHE;
    }
    if direct_io {
        flags |= FopenFlags::FOPEN_DIRECT_IO;
    }
    flags
}

/// A directory's open flags: with `cache` the kernel keeps its listing across opens and
/// serves `readdir` from it (it drops the listing when the directory changes).
fn dir_open_flags(cache: bool) -> FopenFlags {
    if cache {
        FopenFlags::FOPEN_CACHE_DIR | FopenFlags::FOPEN_KEEP_CACHE
    } else {
        FopenFlags::empty()
    }
}

/// The open flags the kernel takes beside FOPEN_PASSTHROUGH (its FOPEN_PASSTHROUGH_MASK: any
/// other, FOPEN_KEEP_CACHE included, fails the open with EIO). The page cache is the backing
/// file's then, so keeping it is moot.
fn passthrough_flags(flags: FopenFlags) -> FopenFlags {
    flags & (FopenFlags::FOPEN_DIRECT_IO | FopenFlags::FOPEN_NOFLUSH)
}

/// The xattr protocol: size 0 asks for the length, a too small size is `ERANGE`.
fn reply_xattr(reply: ReplyXattr, size: u32, result: Result<Vec<u8>, Errno>) {
    match result {
        Ok(value) if size == 0 => match u32::try_from(value.len()) {
            Ok(len) => reply.size(len),
            Err(_) => reply.error(fuser::Errno::E2BIG),
        },
        Ok(value) if value.len() > size as usize => reply.error(fuser::Errno::ERANGE),
        Ok(value) => reply.data(&value),
        Err(e) => reply.error(errno(e)),
    }
}

thread_local! {
    /// One read buffer per fuser thread, reused: its size is bounded by the
    /// kernel's largest read (max_pages), so memory stays bounded.
    static READ_BUF: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

impl fuser::Filesystem for FuseAdapter {
    fn init(&mut self, req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        // 1 MiB writes (fuser's default of 16 MiB exceeds what the kernel
        // takes and what VUOS's vudevfuse can pass in one write).
        let _ = config.set_max_write(MAX_WRITE);
        // Lookups in one directory may run in parallel; reads may be async.
        // READDIRPLUS answers `ls -l`/`find` with one request per directory chunk instead
        // of one LOOKUP per name. Always on (no READDIRPLUS_AUTO): the adaptive mode falls
        // back to plain READDIR after the first chunk when the reader lists a whole directory
        // before it stats the names (ls, find), which costs a LOOKUP per name again.
        let wanted = InitFlags::FUSE_PARALLEL_DIROPS
            | InitFlags::FUSE_ASYNC_READ
            | InitFlags::FUSE_DO_READDIRPLUS;
        let mut offered = config.capabilities() & wanted;
        // Passthrough: file I/O of handles with a backing file goes to that file in the
        // kernel, no request each (Linux 6.9+; opening a backing file needs CAP_SYS_ADMIN,
        // failing which a handle is served as usual).
        if self.caps.passthrough
            && config.capabilities().contains(InitFlags::FUSE_PASSTHROUGH)
            && config.set_max_stack_depth(1).is_ok()
        {
            offered |= InitFlags::FUSE_PASSTHROUGH;
            self.passthrough = true;
        }
        // The writeback cache: writes land in the page cache and reach the driver in large
        // chunks, at the latest on close, fsync and unmount.
        if self.caps.writeback_cache {
            offered |= config.capabilities() & InitFlags::FUSE_WRITEBACK_CACHE;
        }
        // Clearing privileges on write, truncate and chown here instead of in the kernel,
        // which then stops asking for security.capability before every write: for drivers
        // that apply the mode they are given (the kernel checks permissions for them).
        if !self.caps.checks_access
            && config
                .capabilities()
                .contains(InitFlags::FUSE_HANDLE_KILLPRIV_V2)
        {
            offered |= InitFlags::FUSE_HANDLE_KILLPRIV_V2;
            self.kills_privileges = true;
        }
        // ACLs kept in the kernel's cache and checked there (with default_permissions).
        if self.caps.posix_acls && self.caps.xattrs && !self.caps.checks_access {
            offered |= config.capabilities() & InitFlags::FUSE_POSIX_ACL;
        }
        let _ = config.add_capabilities(offered);
        let result = self.fs.init();
        self.trace(req, || "init".to_string(), &result);
        if result.is_ok() {
            self.lifecycle.initialized.store(true, Ordering::Release);
        }
        result.map_err(std::io::Error::from)
    }

    fn destroy(&mut self) {
        // fuser may call this from the session and again on drop: once is enough.
        self.lifecycle.destroy(&*self.fs, self.debug);
    }

    fn lookup(&self, req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let result = self.fs.lookup(&context(req, None), Ino(parent.0), name);
        if let (Err(Errno::ENOENT), Some(ttl)) = (&result, self.negative_ttl) {
            // negative_timeout: an entry with node ID 0 is the kernel's negative entry,
            // remembered for `ttl` (the name stays absent to every caller meanwhile).
            self.trace(req, || format!("lookup({}, {name:?})", parent.0), &result);
            return reply.entry_with_ttls(&ttl, &ttl, &negative_attr(), Generation(0));
        }
        self.answer(
            req,
            || format!("lookup({}, {name:?})", parent.0),
            result,
            reply,
        );
    }

    fn forget(&self, req: &Request, ino: INodeNo, nlookup: u64) {
        self.trace(req, || format!("forget({}, {nlookup})", ino.0), &());
        self.fs.forget(Ino(ino.0), nlookup);
    }

    fn getattr(&self, req: &Request, ino: INodeNo, fh: Option<FileHandle>, reply: ReplyAttr) {
        let result = self
            .fs
            .getattr(&context(req, None), Ino(ino.0), fh.map(|f| Fh(f.0)));
        self.answer(req, || format!("getattr({}, {fh:?})", ino.0), result, reply);
    }

    fn setattr(
        &self,
        req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let set = SetAttr {
            mode,
            uid,
            gid,
            size,
            atime: set_time(atime),
            mtime: set_time(mtime),
            fh: fh.map(|f| Fh(f.0)),
        };
        let ctx = context(req, None);
        let result = self
            .with_privileges_cleared(&ctx, Ino(ino.0), set)
            .and_then(|set| self.fs.setattr(&ctx, Ino(ino.0), &set));
        self.answer(
            req,
            || format!("setattr({}, {})", ino.0, super::trace::set_attr(&set)),
            result,
            reply,
        );
    }

    fn readlink(&self, req: &Request, ino: INodeNo, reply: ReplyData) {
        let result = self.fs.readlink(&context(req, None), Ino(ino.0));
        self.answer(req, || format!("readlink({})", ino.0), result, reply);
    }

    fn mknod(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        rdev: u32,
        reply: ReplyEntry,
    ) {
        let result = self
            .fs
            .mknod(&context(req, Some(umask)), Ino(parent.0), name, mode, rdev);
        self.answer(
            req,
            || format!("mknod({}, {name:?}, 0{mode:o}, {rdev})", parent.0),
            result,
            reply,
        );
    }

    fn mkdir(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        reply: ReplyEntry,
    ) {
        let result = self
            .fs
            .mkdir(&context(req, Some(umask)), Ino(parent.0), name, mode);
        self.answer(
            req,
            || format!("mkdir({}, {name:?}, 0{mode:o})", parent.0),
            result,
            reply,
        );
    }

    fn unlink(&self, req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let result = self.fs.unlink(&context(req, None), Ino(parent.0), name);
        self.answer(
            req,
            || format!("unlink({}, {name:?})", parent.0),
            result,
            reply,
        );
    }

    fn rmdir(&self, req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let result = self.fs.rmdir(&context(req, None), Ino(parent.0), name);
        self.answer(
            req,
            || format!("rmdir({}, {name:?})", parent.0),
            result,
            reply,
        );
    }

    fn symlink(
        &self,
        req: &Request,
        parent: INodeNo,
        link_name: &OsStr,
        target: &Path,
        reply: ReplyEntry,
    ) {
        let result = self
            .fs
            .symlink(&context(req, None), Ino(parent.0), link_name, target);
        self.answer(
            req,
            || format!("symlink({}, {link_name:?}, {target:?})", parent.0),
            result,
            reply,
        );
    }

    fn rename(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        let result = self.fs.rename(
            &context(req, None),
            Ino(parent.0),
            name,
            Ino(newparent.0),
            newname,
            flags.bits(),
        );
        self.answer(
            req,
            || {
                format!(
                    "rename({}, {name:?}, {}, {newname:?}, {:#x})",
                    parent.0,
                    newparent.0,
                    flags.bits()
                )
            },
            result,
            reply,
        );
    }

    fn link(
        &self,
        req: &Request,
        ino: INodeNo,
        newparent: INodeNo,
        newname: &OsStr,
        reply: ReplyEntry,
    ) {
        let result = self
            .fs
            .link(&context(req, None), Ino(ino.0), Ino(newparent.0), newname);
        self.answer(
            req,
            || format!("link({}, {}, {newname:?})", ino.0, newparent.0),
            result,
            reply,
        );
    }

    fn open(&self, req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let result = self.fs.open(&context(req, None), Ino(ino.0), flags.0);
        self.trace(req, || format!("open({}, 0{:o})", ino.0, flags.0), &result);
        match result {
            Ok(opened) => {
                let backing = self.open_io(ino.0, opened.fh, |fd| reply.open_backing(fd));
                let flags = fopen_flags(opened.keep_cache || self.kernel_cache, opened.direct_io);
                match backing {
                    Some(id) => reply.opened_passthrough(
                        FileHandle(opened.fh.0),
                        passthrough_flags(flags),
                        &id,
                    ),
                    None => reply.opened(FileHandle(opened.fh.0), flags),
                }
            }
            Err(e) => reply.error(errno(e)),
        }
    }

    fn read(
        &self,
        req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        READ_BUF.with(|cell| {
            let mut buf = cell.borrow_mut();
            let size = size as usize;
            if buf.len() < size {
                buf.resize(size, 0);
            }
            let result = self.fs.read(
                &context(req, None),
                Ino(ino.0),
                Fh(fh.0),
                offset,
                &mut buf[..size],
            );
            self.trace(
                req,
                || format!("read({}, fh {}, {offset}, {size})", ino.0, fh.0),
                &result,
            );
            match result {
                Ok(n) => reply.data(&buf[..n.min(size)]),
                Err(e) => reply.error(errno(e)),
            }
        });
    }

    fn write(
        &self,
        req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        let ctx = context(req, None);
        // The kernel flags a write whose caller lacks CAP_FSETID; the bits go first, as
        // the VFS clears them before it writes.
        let kill =
            self.kills_privileges && write_flags.contains(WriteFlags::FUSE_WRITE_KILL_SUIDGID);
        let result = if kill {
            privileges::clear_for_write(&*self.fs, &ctx, Ino(ino.0), Some(Fh(fh.0)), || false)
        } else {
            Ok(())
        }
        .and_then(|()| self.fs.write(&ctx, Ino(ino.0), Fh(fh.0), offset, data));
        self.trace(
            req,
            || format!("write({}, fh {}, {offset}, {})", ino.0, fh.0, data.len()),
            &result,
        );
        match result {
            Ok(n) => match u32::try_from(n) {
                Ok(n) => reply.written(n),
                Err(_) => reply.error(fuser::Errno::EIO),
            },
            Err(e) => reply.error(errno(e)),
        }
    }

    fn flush(
        &self,
        req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        // ENOSYS makes the kernel stop sending FLUSH for the rest of the mount (close(2)
        // succeeds without a round trip); only for drivers with nothing to do there.
        let result = if self.caps.flush_is_noop {
            Err(Errno::ENOSYS)
        } else {
            self.fs.flush(&context(req, None), Ino(ino.0), Fh(fh.0))
        };
        self.answer(
            req,
            || format!("flush({}, fh {})", ino.0, fh.0),
            result,
            reply,
        );
    }

    fn release(
        &self,
        req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        let result = self.fs.release(&context(req, None), Ino(ino.0), Fh(fh.0));
        self.release_io(ino.0);
        self.answer(
            req,
            || format!("release({}, fh {})", ino.0, fh.0),
            result,
            reply,
        );
    }

    fn fsync(
        &self,
        req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        datasync: bool,
        reply: ReplyEmpty,
    ) {
        let result = self
            .fs
            .fsync(&context(req, None), Ino(ino.0), Fh(fh.0), datasync);
        self.answer(
            req,
            || format!("fsync({}, fh {}, {datasync})", ino.0, fh.0),
            result,
            reply,
        );
    }

    fn opendir(&self, req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        let result = self.fs.opendir(&context(req, None), Ino(ino.0));
        self.trace(req, || format!("opendir({})", ino.0), &result);
        match result {
            Ok(fh) => reply.opened(FileHandle(fh.0), dir_open_flags(self.caps.cache_dirs)),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn readdir(
        &self,
        req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let mut count = 0usize;
        // `add` returns true when the entry did not fit: the driver stops
        // there and the kernel resumes from the last accepted entry's cookie.
        let mut sink = |entry: DirEntry<'_>| {
            let full = reply.add(
                INodeNo(entry.ino.0),
                entry.next_offset,
                file_type(entry.kind),
                entry.name,
            );
            if !full {
                count += 1;
            }
            !full
        };
        let result = self
            .fs
            .readdir(&context(req, None), Ino(ino.0), Fh(fh.0), offset, &mut sink);
        self.trace(
            req,
            || {
                format!(
                    "readdir({}, fh {}, {offset}) [{count} entries]",
                    ino.0, fh.0
                )
            },
            &result,
        );
        match result {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn readdirplus(
        &self,
        req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectoryPlus,
    ) {
        // The driver lists first (it may hold its own locks while listing), then each name is
        // looked up outside the listing. Every entry the kernel accepts, but for "." and "..",
        // counts as one lookup reference, exactly like LOOKUP; one that did not fit is
        // forgotten again at once.
        let mut batch: Vec<(Ino, u64, FileKind, std::ffi::OsString)> = Vec::new();
        let mut sink = |entry: DirEntry<'_>| {
            batch.push((
                entry.ino,
                entry.next_offset,
                entry.kind,
                entry.name.to_owned(),
            ));
            batch.len() < READDIRPLUS_BATCH
        };
        let ctx = context(req, None);
        let listed = self
            .fs
            .readdir(&ctx, Ino(ino.0), Fh(fh.0), offset, &mut sink);
        if let Err(e) = listed {
            self.trace(req, || format!("readdirplus({}, {offset})", ino.0), &listed);
            return reply.error(errno(e));
        }
        let policy = self.caps.cache;
        let ttl = policy.attr_ttl.min(policy.entry_ttl);
        let mut count = 0usize;
        for (entry_ino, next_offset, kind, name) in &batch {
            let full = if name == "." || name == ".." {
                // The kernel neither links nor counts these: attributes are not needed.
                let attr = placeholder_attr(*entry_ino, *kind);
                reply.add(
                    INodeNo(entry_ino.0),
                    *next_offset,
                    name,
                    &ttl,
                    &attr,
                    Generation(0),
                )
            } else {
                match self.fs.lookup(&ctx, Ino(ino.0), name) {
                    Ok(entry) => {
                        let full = reply.add(
                            INodeNo(entry.attr.ino.0),
                            *next_offset,
                            name,
                            &ttl,
                            &to_file_attr(&entry.attr),
                            Generation(entry.generation),
                        );
                        if full {
                            self.fs.forget(entry.attr.ino, 1);
                        }
                        full
                    }
                    // Gone since the listing, or unreadable: leave it out rather than hand
                    // the kernel attributes that are not true.
                    Err(_) => false,
                }
            };
            if full {
                break;
            }
            count += 1;
        }
        self.trace(
            req,
            || {
                format!(
                    "readdirplus({}, fh {}, {offset}) [{count} entries]",
                    ino.0, fh.0
                )
            },
            &listed,
        );
        reply.ok()
    }

    fn releasedir(
        &self,
        req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        let result = self
            .fs
            .releasedir(&context(req, None), Ino(ino.0), Fh(fh.0));
        self.answer(
            req,
            || format!("releasedir({}, fh {})", ino.0, fh.0),
            result,
            reply,
        );
    }

    fn fsyncdir(
        &self,
        req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        datasync: bool,
        reply: ReplyEmpty,
    ) {
        let result = self
            .fs
            .fsyncdir(&context(req, None), Ino(ino.0), Fh(fh.0), datasync);
        self.answer(
            req,
            || format!("fsyncdir({}, fh {}, {datasync})", ino.0, fh.0),
            result,
            reply,
        );
    }

    fn statfs(&self, req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        let result = self.fs.statfs(&context(req, None));
        self.trace(req, || "statfs".to_string(), &result);
        match result {
            Ok(StatFs {
                blocks,
                blocks_free,
                blocks_available,
                files,
                files_free,
                block_size,
                name_max,
                fragment_size,
            }) => reply.statfs(
                blocks,
                blocks_free,
                blocks_available,
                files,
                files_free,
                block_size,
                name_max,
                fragment_size,
            ),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn setxattr(
        &self,
        req: &Request,
        ino: INodeNo,
        name: &OsStr,
        value: &[u8],
        flags: i32,
        _position: u32,
        reply: ReplyEmpty,
    ) {
        let result = self.without_xattrs().map_or_else(
            || {
                self.fs
                    .setxattr(&context(req, None), Ino(ino.0), name, value, flags)
            },
            Err,
        );
        self.answer(
            req,
            || {
                format!(
                    "setxattr({}, {name:?}, {} bytes, {flags:#x})",
                    ino.0,
                    value.len()
                )
            },
            result,
            reply,
        );
    }

    fn getxattr(&self, req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        let result = self.without_xattrs().map_or_else(
            || self.fs.getxattr(&context(req, None), Ino(ino.0), name),
            Err,
        );
        self.trace(
            req,
            || format!("getxattr({}, {name:?}, {size})", ino.0),
            &result.as_ref().map(Vec::len),
        );
        reply_xattr(reply, size, result);
    }

    fn listxattr(&self, req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        let result = self
            .without_xattrs()
            .map_or_else(|| self.fs.listxattr(&context(req, None), Ino(ino.0)), Err)
            .map(|names| {
                // The protocol's list: each name followed by a NUL.
                let mut list = Vec::new();
                for name in names {
                    list.extend_from_slice(&name);
                    list.push(0);
                }
                list
            });
        self.trace(
            req,
            || format!("listxattr({}, {size})", ino.0),
            &result.as_ref().map(Vec::len),
        );
        reply_xattr(reply, size, result);
    }

    fn removexattr(&self, req: &Request, ino: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let result = self.without_xattrs().map_or_else(
            || self.fs.removexattr(&context(req, None), Ino(ino.0), name),
            Err,
        );
        self.answer(
            req,
            || format!("removexattr({}, {name:?})", ino.0),
            result,
            reply,
        );
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        let result = self
            .fs
            .create(&context(req, Some(umask)), Ino(parent.0), name, mode, flags);
        self.trace(
            req,
            || format!("create({}, {name:?}, 0{mode:o}, 0{flags:o})", parent.0),
            &result,
        );
        match result {
            Ok((entry, opened)) => {
                let backing =
                    self.open_io(entry.attr.ino.0, opened.fh, |fd| reply.open_backing(fd));
                let flags = fopen_flags(opened.keep_cache || self.kernel_cache, opened.direct_io);
                let (ttl, attr) = (&self.caps.cache.entry_ttl, to_file_attr(&entry.attr));
                let (generation, fh) = (Generation(entry.generation), FileHandle(opened.fh.0));
                match backing {
                    Some(id) => {
                        let flags = passthrough_flags(flags);
                        reply.created_passthrough(ttl, &attr, generation, fh, flags, &id)
                    }
                    None => reply.created(ttl, &attr, generation, fh, flags),
                }
            }
            Err(e) => reply.error(errno(e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attributes_convert_field_by_field() {
        let t = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let attr = Attr {
            ino: Ino(42),
            size: 12345,
            blocks: 25,
            atime: t,
            mtime: t + Duration::from_secs(1),
            ctime: t + Duration::from_secs(2),
            crtime: t + Duration::from_secs(3),
            kind: FileKind::Symlink,
            perm: 0o751,
            nlink: 3,
            uid: 1000,
            gid: 100,
            rdev: 0x0801,
            blksize: 4096,
        };
        let f = to_file_attr(&attr);
        assert_eq!(f.ino, INodeNo(42));
        assert_eq!((f.size, f.blocks, f.perm, f.nlink), (12345, 25, 0o751, 3));
        assert_eq!((f.uid, f.gid, f.rdev, f.blksize), (1000, 100, 0x0801, 4096));
        assert_eq!(f.kind, FileType::Symlink);
        assert_eq!(f.mtime, attr.mtime);
        assert_eq!(f.crtime, attr.crtime);
    }

    #[test]
    fn errno_values_cross_unchanged() {
        assert_eq!(errno(Errno::EROFS).code(), libc::EROFS);
        assert_eq!(errno(Errno::ENOSPC).code(), libc::ENOSPC);
        assert_eq!(errno(Errno::from_raw(0)).code(), libc::EIO);
    }

    #[test]
    fn open_flags_follow_the_driver() {
        assert_eq!(fopen_flags(false, false), FopenFlags::empty());
        assert_eq!(fopen_flags(true, false), FopenFlags::FOPEN_KEEP_CACHE);
        assert_eq!(fopen_flags(false, true), FopenFlags::FOPEN_DIRECT_IO);
        assert_eq!(dir_open_flags(false), FopenFlags::empty());
        assert!(dir_open_flags(true).contains(FopenFlags::FOPEN_CACHE_DIR));
        // The kernel refuses passthrough opens with any flag outside its mask.
        let all = fopen_flags(true, true) | FopenFlags::FOPEN_NOFLUSH;
        assert_eq!(
            passthrough_flags(all),
            FopenFlags::FOPEN_DIRECT_IO | FopenFlags::FOPEN_NOFLUSH
        );
    }

    #[test]
    fn every_kind_maps() {
        for (kind, ty) in [
            (FileKind::File, FileType::RegularFile),
            (FileKind::Dir, FileType::Directory),
            (FileKind::Symlink, FileType::Symlink),
            (FileKind::CharDevice, FileType::CharDevice),
            (FileKind::BlockDevice, FileType::BlockDevice),
            (FileKind::Fifo, FileType::NamedPipe),
            (FileKind::Socket, FileType::Socket),
        ] {
            assert_eq!(file_type(kind), ty);
        }
    }
}
