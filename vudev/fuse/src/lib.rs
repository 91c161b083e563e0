//! Block devices shown as regular files ("devices over FUSE").
//!
//! Two layouts: a single device as the mount's root file (vudevramdisk
//! mounts a ramdisk on a regular file), or a directory holding `disk` (the
//! whole image) and `disk1`, `disk2`, ... one per partition, Linux numbering
//! (vudevpartx). Each file's size is its device's size and its bytes are the
//! device's bytes. Every open bypasses the page cache (direct I/O), so bytes
//! written through `disk` are seen at once through `disk2` and back.
//!
//! A partition table rewritten through `disk` (sfdisk, sgdisk) is read again
//! when the writer flushes, syncs or closes: the partition files follow, a
//! handle still open on a moved or deleted partition gets `EIO`, and the
//! kernel is told to drop the names and attributes it cached.

pub mod cli;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::OsStrExt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::time::{Duration, SystemTime};
use vudev::{BlockDevice, Errno, PartitionedDisk, Result};
use vufuse::fuse::KernelCache;
use vufuse_api::fs::{
    Attr, CachePolicy, Capabilities, Context, DirEntry, Entry, Fh, FileKind, FileSystem, Ino,
    Opened, SetAttr, StatFs,
};
use vufuse_api::options::MountOptions;

/// Name of the whole-disk file in the partitioned layout.
pub const WHOLE_DISK_NAME: &str = "disk";

/// Something that can drop the kernel's cached view of names and inodes.
pub trait CacheInvalidator: Send + Sync {
    /// Forget the cached lookup of `name` in `parent`.
    fn invalidate_entry(&self, parent: Ino, name: &OsStr);
    /// Forget the cached attributes and data of `ino`.
    fn invalidate_inode(&self, ino: Ino);
}

impl CacheInvalidator for KernelCache {
    fn invalidate_entry(&self, parent: Ino, name: &OsStr) {
        KernelCache::invalidate_entry(self, parent, name)
    }

    fn invalidate_inode(&self, ino: Ino) {
        KernelCache::invalidate_inode(self, ino)
    }
}

enum Layout {
    /// The root inode is the device itself.
    SingleFile(Arc<dyn BlockDevice>),
    /// The root is a directory of `disk` and `diskN`.
    Partitioned(Arc<PartitionedDisk>),
}

/// One open file: the device it was opened on, kept even if the table changes.
struct Handle {
    device: Arc<dyn BlockDevice>,
    /// Writes through this handle may change the partition table.
    may_change_table: bool,
    /// A write happened since the table was last read.
    dirty: AtomicBool,
}

/// Partition numbers whose kernel cache must be dropped, handed to a worker
/// thread: invalidating from a request thread could wait on a directory lock
/// held by a request that itself waits for a free serving thread.
#[derive(Default)]
struct Pending {
    numbers: BTreeSet<u32>,
    stop: bool,
}

#[derive(Default)]
struct InvalidationQueue {
    pending: Mutex<Pending>,
    wake: Condvar,
}

/// A [`FileSystem`] whose files are block devices.
pub struct DevFs {
    layout: Layout,
    read_only: bool,
    uid: u32,
    gid: u32,
    file_perm: u16,
    dir_perm: u16,
    debug: bool,
    mounted_at: SystemTime,
    /// Nanoseconds since the epoch of the last write, for `mtime`.
    modified_ns: AtomicU64,
    handles: Mutex<HashMap<u64, Arc<Handle>>>,
    next_fh: AtomicU64,
    queue: Arc<InvalidationQueue>,
    worker_started: OnceLock<()>,
}

fn ino_of(number: u32) -> Ino {
    Ino(number as u64 + 2)
}

/// `disk` is 0, `diskN` is N (no sign, no leading zero).
fn number_of(name: &OsStr) -> Option<u32> {
    let rest = name.as_bytes().strip_prefix(WHOLE_DISK_NAME.as_bytes())?;
    if rest.is_empty() {
        return Some(0);
    }
    if rest[0] == b'0' || !rest.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(rest)
        .ok()?
        .parse()
        .ok()
        .filter(|&n| n > 0)
}

fn name_of(number: u32) -> OsString {
    if number == 0 {
        OsString::from(WHOLE_DISK_NAME)
    } else {
        OsString::from(format!("{WHOLE_DISK_NAME}{number}"))
    }
}

fn extents(disk: &PartitionedDisk) -> BTreeMap<u32, (u64, u64)> {
    disk.numbers()
        .into_iter()
        .filter_map(|n| disk.partition(n).ok().map(|w| (n, (w.start(), w.size()))))
        .collect()
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl DevFs {
    /// One device served as the mount's root file (the mount point is a regular file).
    pub fn single(device: Arc<dyn BlockDevice>, options: &MountOptions) -> DevFs {
        let read_only = options.read_only || device.read_only();
        DevFs::new(Layout::SingleFile(device), read_only, options)
    }

    /// A disk and its partitions served as `disk`, `disk1`, ... in the root directory.
    pub fn partitioned(disk: Arc<PartitionedDisk>, options: &MountOptions) -> DevFs {
        let read_only = options.read_only || disk.disk().read_only();
        DevFs::new(Layout::Partitioned(disk), read_only, options)
    }

    fn new(layout: Layout, read_only: bool, options: &MountOptions) -> DevFs {
        let me = Context::current();
        let base: u16 = if read_only { 0o444 } else { 0o666 };
        let file_mask = options.fmask.or(options.umask).unwrap_or(0o022) as u16;
        let dir_mask = options.dmask.or(options.umask).unwrap_or(0o022) as u16;
        let now = SystemTime::now();
        DevFs {
            layout,
            read_only,
            uid: options.uid.unwrap_or(me.uid),
            gid: options.gid.unwrap_or(me.gid),
            file_perm: base & !file_mask,
            dir_perm: 0o777 & !dir_mask,
            debug: options.debug,
            mounted_at: now,
            modified_ns: AtomicU64::new(nanos_since_epoch(now)),
            handles: Mutex::new(HashMap::new()),
            next_fh: AtomicU64::new(1),
            queue: Arc::new(InvalidationQueue::default()),
            worker_started: OnceLock::new(),
        }
    }

    /// Shows the device files with the owner, group and read/write bits of `like` (the
    /// image file, or the file a ramdisk is mounted on), as a block device node keeps its
    /// own: a root-only 0600 image stays root-only through the mount. `uid=`, `gid=` and the
    /// masks still apply on top.
    pub fn owned_like(mut self, like: &std::fs::Metadata, options: &MountOptions) -> DevFs {
        use std::os::unix::fs::MetadataExt;
        self.uid = options.uid.unwrap_or(like.uid());
        self.gid = options.gid.unwrap_or(like.gid());
        self.file_perm &= (like.mode() & 0o666) as u16;
        self
    }

    /// Shows the device files as the mounter's alone (mode 0600 at most): for a source
    /// without an owner and mode of its own to copy, such as an NBD export.
    pub fn owner_only(mut self) -> DevFs {
        self.file_perm &= 0o600;
        self
    }

    /// True when every write is refused with `EROFS`.
    pub fn read_only(&self) -> bool {
        self.read_only
    }

    /// Starts telling `invalidator` about partitions that appear, vanish or
    /// change after a table re-read. Only the first call has an effect.
    pub fn set_invalidator(&self, invalidator: Box<dyn CacheInvalidator>) -> Result<()> {
        if self.worker_started.set(()).is_err() {
            return Ok(());
        }
        let queue = self.queue.clone();
        std::thread::Builder::new()
            .name("devfs-inval".into())
            .spawn(move || invalidation_worker(&queue, invalidator.as_ref()))
            .map_err(Errno::from)?;
        Ok(())
    }

    fn device(&self, ino: Ino) -> Result<(u32, Arc<dyn BlockDevice>)> {
        match &self.layout {
            Layout::SingleFile(dev) if ino == Ino::ROOT => Ok((0, dev.clone())),
            Layout::SingleFile(_) => Err(Errno::ENOENT),
            Layout::Partitioned(disk) => {
                let number = ino
                    .0
                    .checked_sub(2)
                    .and_then(|n| u32::try_from(n).ok())
                    .ok_or(Errno::ENOENT)?;
                let device = disk.device(number).map_err(|e| {
                    if e == Errno::ENXIO {
                        Errno::ENOENT
                    } else {
                        e
                    }
                })?;
                Ok((number, device))
            }
        }
    }

    fn file_attr(&self, ino: Ino, device: &dyn BlockDevice) -> Attr {
        let size = device.size();
        let mtime =
            SystemTime::UNIX_EPOCH + Duration::from_nanos(self.modified_ns.load(Ordering::Relaxed));
        Attr {
            ino,
            size,
            blocks: size.div_ceil(512),
            atime: mtime,
            mtime,
            ctime: mtime,
            crtime: self.mounted_at,
            kind: FileKind::File,
            perm: self.file_perm,
            nlink: 1,
            uid: self.uid,
            gid: self.gid,
            rdev: 0,
            blksize: 4096,
        }
    }

    fn dir_attr(&self) -> Attr {
        Attr {
            ino: Ino::ROOT,
            size: 0,
            blocks: 0,
            atime: self.mounted_at,
            mtime: self.mounted_at,
            ctime: self.mounted_at,
            crtime: self.mounted_at,
            kind: FileKind::Dir,
            perm: self.dir_perm,
            nlink: 2,
            uid: self.uid,
            gid: self.gid,
            rdev: 0,
            blksize: 4096,
        }
    }

    fn handle(&self, fh: Fh) -> Result<Arc<Handle>> {
        lock(&self.handles).get(&fh.0).cloned().ok_or(Errno::EBADF)
    }

    /// Whether writes through device `number` can change the partition table:
    /// the whole disk, and an MBR extended partition (it holds the EBR chain).
    fn may_change_table(&self, number: u32) -> bool {
        match &self.layout {
            Layout::SingleFile(_) => false,
            Layout::Partitioned(disk) => {
                number == 0
                    || disk
                        .table()
                        .and_then(|t| t.get(number).map(|p| p.ptype.is_extended()))
                        .unwrap_or(false)
            }
        }
    }

    /// Re-reads the table if `handle` wrote since the last read, and queues
    /// invalidations for every partition that appeared, vanished or moved.
    fn reread_if_written(&self, handle: &Handle) {
        let Layout::Partitioned(disk) = &self.layout else {
            return;
        };
        if !handle.may_change_table || !handle.dirty.swap(false, Ordering::AcqRel) {
            return;
        }
        let before = extents(disk);
        let result = disk.reread();
        let after = extents(disk);
        if self.debug {
            match &result {
                Ok(()) => eprintln!("devfs: partition table re-read: {:?}", after),
                Err(e) => {
                    eprintln!("devfs: partition table unreadable, serving the disk only: {e}")
                }
            }
        }
        let changed: BTreeSet<u32> = before
            .keys()
            .chain(after.keys())
            .copied()
            .filter(|n| before.get(n) != after.get(n))
            .collect();
        if changed.is_empty() {
            return;
        }
        let mut pending = lock(&self.queue.pending);
        pending.numbers.extend(changed);
        self.queue.wake.notify_one();
    }
}

fn nanos_since_epoch(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

fn invalidation_worker(queue: &InvalidationQueue, invalidator: &dyn CacheInvalidator) {
    loop {
        let numbers = {
            let mut pending = lock(&queue.pending);
            while pending.numbers.is_empty() && !pending.stop {
                pending = queue.wake.wait(pending).unwrap_or_else(|e| e.into_inner());
            }
            if pending.stop {
                return;
            }
            std::mem::take(&mut pending.numbers)
        };
        for number in numbers {
            invalidator.invalidate_entry(Ino::ROOT, &name_of(number));
            invalidator.invalidate_inode(ino_of(number));
        }
        invalidator.invalidate_inode(Ino::ROOT);
    }
}

impl FileSystem for DevFs {
    fn capabilities(&self) -> Capabilities {
        let cache = match self.layout {
            // Nothing changes a lone device's name or size.
            Layout::SingleFile(_) => Capabilities::default().cache,
            // A table rewrite changes names and sizes at once: the kernel asks
            // every time (cheap here), and invalidations are only a hint.
            Layout::Partitioned(_) => CachePolicy {
                attr_ttl: Duration::ZERO,
                entry_ttl: Duration::ZERO,
            },
        };
        Capabilities {
            cache,
            xattrs: false,
            ..Capabilities::default()
        }
    }

    fn destroy(&self) {
        let handles: Vec<Arc<Handle>> = lock(&self.handles).drain().map(|(_, h)| h).collect();
        for handle in handles {
            let _ = handle.device.flush();
        }
        match &self.layout {
            Layout::SingleFile(dev) => {
                let _ = dev.flush();
            }
            Layout::Partitioned(disk) => {
                let _ = disk.disk().flush();
            }
        }
        let mut pending = lock(&self.queue.pending);
        pending.stop = true;
        self.queue.wake.notify_all();
    }

    fn lookup(&self, _ctx: &Context, parent: Ino, name: &OsStr) -> Result<Entry> {
        if parent != Ino::ROOT {
            return Err(Errno::ENOENT);
        }
        let Layout::Partitioned(disk) = &self.layout else {
            return Err(Errno::ENOTDIR);
        };
        let number = number_of(name).ok_or(Errno::ENOENT)?;
        let device = disk.device(number).map_err(|_| Errno::ENOENT)?;
        Ok(Entry {
            attr: self.file_attr(ino_of(number), device.as_ref()),
            generation: 0,
        })
    }

    fn getattr(&self, _ctx: &Context, ino: Ino, _fh: Option<Fh>) -> Result<Attr> {
        if ino == Ino::ROOT && matches!(self.layout, Layout::Partitioned(_)) {
            return Ok(self.dir_attr());
        }
        let (_, device) = self.device(ino)?;
        Ok(self.file_attr(ino, device.as_ref()))
    }

    fn setattr(&self, ctx: &Context, ino: Ino, set: &SetAttr) -> Result<Attr> {
        if set.mode.is_some() || set.uid.is_some() || set.gid.is_some() {
            return Err(Errno::EPERM);
        }
        let attr = self.getattr(ctx, ino, set.fh)?;
        if let Some(size) = set.size {
            if attr.kind == FileKind::Dir {
                return Err(Errno::EISDIR);
            }
            if self.read_only {
                return Err(Errno::EROFS);
            }
            // A device keeps its size: opening with O_TRUNC (or dd's ftruncate)
            // leaves it alone, as on a real block device; truncate(2) by name
            // to another size is refused.
            if size != attr.size && set.fh.is_none() {
                return Err(Errno::EINVAL);
            }
        }
        Ok(attr)
    }

    fn open(&self, _ctx: &Context, ino: Ino, flags: i32) -> Result<Opened> {
        if ino == Ino::ROOT && matches!(self.layout, Layout::Partitioned(_)) {
            return Err(Errno::EISDIR);
        }
        let wants_write = flags & libc::O_ACCMODE != libc::O_RDONLY;
        if wants_write && self.read_only {
            return Err(Errno::EROFS);
        }
        let (number, device) = self.device(ino)?;
        let handle = Handle {
            device,
            may_change_table: wants_write && self.may_change_table(number),
            dirty: AtomicBool::new(false),
        };
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        lock(&self.handles).insert(fh, Arc::new(handle));
        Ok(Opened {
            fh: Fh(fh),
            keep_cache: false,
            direct_io: true,
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
        self.handle(fh)?.device.read_until_end(buf, offset)
    }

    fn write(&self, _ctx: &Context, _ino: Ino, fh: Fh, offset: u64, data: &[u8]) -> Result<usize> {
        if self.read_only {
            return Err(Errno::EROFS);
        }
        let handle = self.handle(fh)?;
        let written = handle.device.write_at(data, offset)?;
        if handle.may_change_table {
            handle.dirty.store(true, Ordering::Release);
        }
        self.modified_ns
            .store(nanos_since_epoch(SystemTime::now()), Ordering::Relaxed);
        Ok(written)
    }

    fn flush(&self, _ctx: &Context, _ino: Ino, fh: Fh) -> Result<()> {
        let handle = self.handle(fh)?;
        self.reread_if_written(&handle);
        Ok(())
    }

    fn release(&self, _ctx: &Context, _ino: Ino, fh: Fh) -> Result<()> {
        let handle = lock(&self.handles).remove(&fh.0).ok_or(Errno::EBADF)?;
        self.reread_if_written(&handle);
        Ok(())
    }

    fn fsync(&self, _ctx: &Context, _ino: Ino, fh: Fh, _datasync: bool) -> Result<()> {
        let handle = self.handle(fh)?;
        let result = if self.read_only {
            Ok(())
        } else {
            handle.device.flush()
        };
        self.reread_if_written(&handle);
        result
    }

    fn opendir(&self, _ctx: &Context, ino: Ino) -> Result<Fh> {
        match self.layout {
            Layout::Partitioned(_) if ino == Ino::ROOT => Ok(Fh(0)),
            Layout::Partitioned(_) => Err(Errno::ENOTDIR),
            Layout::SingleFile(_) => Err(Errno::ENOTDIR),
        }
    }

    fn readdir(
        &self,
        _ctx: &Context,
        ino: Ino,
        _fh: Fh,
        offset: u64,
        sink: &mut dyn FnMut(DirEntry<'_>) -> bool,
    ) -> Result<()> {
        let Layout::Partitioned(disk) = &self.layout else {
            return Err(Errno::ENOTDIR);
        };
        if ino != Ino::ROOT {
            return Err(Errno::ENOTDIR);
        }
        // Cookies follow partition numbers, not positions, so a listing
        // resumed after a table re-read neither repeats nor skips a name.
        let dots = [(".", 1u64), ("..", 2u64)];
        for (name, cookie) in dots {
            if cookie > offset
                && !sink(DirEntry {
                    ino: Ino::ROOT,
                    next_offset: cookie,
                    kind: FileKind::Dir,
                    name: OsStr::new(name),
                })
            {
                return Ok(());
            }
        }
        let numbers = std::iter::once(0).chain(disk.numbers());
        for number in numbers {
            let cookie = number as u64 + 3;
            if cookie <= offset {
                continue;
            }
            let name = name_of(number);
            if !sink(DirEntry {
                ino: ino_of(number),
                next_offset: cookie,
                kind: FileKind::File,
                name: &name,
            }) {
                return Ok(());
            }
        }
        Ok(())
    }

    fn statfs(&self, _ctx: &Context) -> Result<StatFs> {
        let (size, files) = match &self.layout {
            Layout::SingleFile(dev) => (dev.size(), 1),
            Layout::Partitioned(disk) => (disk.disk().size(), 1 + disk.numbers().len() as u64),
        };
        Ok(StatFs {
            blocks: size / 512,
            blocks_free: 0,
            blocks_available: 0,
            files,
            files_free: 0,
            block_size: 512,
            name_max: 255,
            fragment_size: 512,
        })
    }
}

impl std::fmt::Debug for DevFs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let layout = match &self.layout {
            Layout::SingleFile(dev) => format!("single file of {} bytes", dev.size()),
            Layout::Partitioned(disk) => format!("disk with partitions {:?}", disk.numbers()),
        };
        f.debug_struct("DevFs")
            .field("layout", &layout)
            .field("read_only", &self.read_only)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vudev::part::{self, NewPartition, PartType, PartitionTable};
    use vudev::Ramdisk;
    use vufuse_api::options::WritePolicy;

    fn ctx() -> Context {
        Context::current()
    }

    fn rw() -> MountOptions {
        MountOptions::defaults(WritePolicy::ReadWriteUnlessRo)
    }

    fn gpt_disk(partitions: &[u64]) -> (Arc<dyn BlockDevice>, PartitionTable) {
        let disk: Arc<dyn BlockDevice> = Arc::new(Ramdisk::new(16 << 20).unwrap());
        let mut t = PartitionTable::new_gpt(disk.size(), 512, uuid_zero()).unwrap();
        let linux = PartType::parse("linux", true).unwrap();
        for &sectors in partitions {
            t.add(NewPartition {
                sectors: Some(sectors),
                ..NewPartition::new(linux)
            })
            .unwrap();
        }
        part::write(disk.as_ref(), &t).unwrap();
        (disk, t)
    }

    fn uuid_zero() -> uuid::Uuid {
        uuid::Uuid::from_u128(0x1234)
    }

    fn names(fs: &DevFs, offset: u64) -> Vec<(String, u64)> {
        let mut out = Vec::new();
        fs.readdir(&ctx(), Ino::ROOT, Fh(0), offset, &mut |e| {
            out.push((e.name.to_string_lossy().into_owned(), e.next_offset));
            true
        })
        .unwrap();
        out
    }

    struct Recorder(Arc<Mutex<Vec<String>>>);
    impl CacheInvalidator for Recorder {
        fn invalidate_entry(&self, _parent: Ino, name: &OsStr) {
            lock(&self.0).push(name.to_string_lossy().into_owned());
        }
        fn invalidate_inode(&self, _ino: Ino) {}
    }

    #[test]
    fn names_parse_strictly() {
        assert_eq!(number_of(OsStr::new("disk")), Some(0));
        assert_eq!(number_of(OsStr::new("disk12")), Some(12));
        assert_eq!(number_of(OsStr::new("disk0")), None);
        assert_eq!(number_of(OsStr::new("disk01")), None);
        assert_eq!(number_of(OsStr::new("disk1a")), None);
        assert_eq!(number_of(OsStr::new("disk+1")), None);
        assert_eq!(number_of(OsStr::new("dis")), None);
        assert_eq!(number_of(OsStr::new("disk99999999999")), None);
        assert_eq!(name_of(0), OsString::from("disk"));
        assert_eq!(name_of(7), OsString::from("disk7"));
    }

    #[test]
    fn partitions_are_files_with_their_sizes_and_bytes() {
        let (disk, t) = gpt_disk(&[2048, 4096]);
        let fs = DevFs::partitioned(Arc::new(PartitionedDisk::new(disk.clone())), &rw());
        let listing = names(&fs, 0);
        let just_names: Vec<&str> = listing.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(just_names, [".", "..", "disk", "disk1", "disk2"]);
        // Resuming after any cookie gives exactly the rest.
        for (i, (_, cookie)) in listing.iter().enumerate() {
            assert_eq!(names(&fs, *cookie), listing[i + 1..].to_vec());
        }
        let e = fs.lookup(&ctx(), Ino::ROOT, OsStr::new("disk2")).unwrap();
        assert_eq!(e.attr.size, 4096 * 512);
        assert_eq!(
            fs.lookup(&ctx(), Ino::ROOT, OsStr::new("disk3")),
            Err(Errno::ENOENT)
        );
        // Bytes written through disk2 are the disk's bytes at the partition's start.
        let (start, _) = t.byte_range(t.get(2).unwrap());
        let o = fs.open(&ctx(), e.attr.ino, libc::O_RDWR).unwrap();
        assert!(o.direct_io && !o.keep_cache);
        assert_eq!(
            fs.write(&ctx(), e.attr.ino, o.fh, 512, b"hello").unwrap(),
            5
        );
        let mut buf = [0u8; 5];
        disk.read_exact_at(&mut buf, start + 512).unwrap();
        assert_eq!(&buf, b"hello");
        // Writes past the end: ENOSPC; reads past the end: 0 bytes.
        assert_eq!(
            fs.write(&ctx(), e.attr.ino, o.fh, 4096 * 512, b"x"),
            Err(Errno::ENOSPC)
        );
        let mut big = vec![0u8; 1024];
        assert_eq!(
            fs.read(&ctx(), e.attr.ino, o.fh, 4096 * 512 - 10, &mut big),
            Ok(10)
        );
        fs.release(&ctx(), e.attr.ino, o.fh).unwrap();
        assert_eq!(
            fs.read(&ctx(), e.attr.ino, o.fh, 0, &mut big),
            Err(Errno::EBADF)
        );
    }

    #[test]
    fn table_rewrite_through_disk_is_followed_on_close() {
        let (disk, mut t) = gpt_disk(&[2048, 4096]);
        let fs = DevFs::partitioned(Arc::new(PartitionedDisk::new(disk.clone())), &rw());
        let seen = Arc::new(Mutex::new(Vec::new()));
        fs.set_invalidator(Box::new(Recorder(seen.clone())))
            .unwrap();
        let two = fs.lookup(&ctx(), Ino::ROOT, OsStr::new("disk2")).unwrap();
        let open_two = fs.open(&ctx(), two.attr.ino, libc::O_RDONLY).unwrap();

        // Rewrite the table image through the `disk` file: partition 2 grows, 3 appears.
        let scratch: Arc<dyn BlockDevice> = Arc::new(Ramdisk::new(disk.size()).unwrap());
        t.resize(2, 8192).unwrap();
        t.add(NewPartition {
            sectors: Some(1024),
            ..NewPartition::new(PartType::parse("linux", true).unwrap())
        })
        .unwrap();
        part::write(scratch.as_ref(), &t).unwrap();
        let whole = fs.lookup(&ctx(), Ino::ROOT, OsStr::new("disk")).unwrap();
        let o = fs.open(&ctx(), whole.attr.ino, libc::O_WRONLY).unwrap();
        let mut sector = vec![0u8; 512];
        for lba in (0..34).chain(disk.size() / 512 - 33..disk.size() / 512) {
            scratch.read_exact_at(&mut sector, lba * 512).unwrap();
            fs.write(&ctx(), whole.attr.ino, o.fh, lba * 512, &sector)
                .unwrap();
        }
        // Not yet closed: the old table still rules.
        assert!(fs.lookup(&ctx(), Ino::ROOT, OsStr::new("disk3")).is_err());
        fs.flush(&ctx(), whole.attr.ino, o.fh).unwrap();
        fs.release(&ctx(), whole.attr.ino, o.fh).unwrap();

        let three = fs.lookup(&ctx(), Ino::ROOT, OsStr::new("disk3")).unwrap();
        assert_eq!(three.attr.size, 1024 * 512);
        assert_eq!(
            fs.getattr(&ctx(), two.attr.ino, None).unwrap().size,
            8192 * 512
        );
        let mut buf = [0u8; 16];
        assert_eq!(
            fs.read(&ctx(), two.attr.ino, open_two.fh, 0, &mut buf),
            Err(Errno::EIO),
            "a handle on the resized partition is revoked"
        );
        // The worker drops the kernel's view of disk2 and disk3 (and not disk1).
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            let got = lock(&seen).clone();
            if got.contains(&"disk2".to_string()) && got.contains(&"disk3".to_string()) {
                assert!(!got.contains(&"disk1".to_string()), "{got:?}");
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "no invalidation: {got:?}"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        fs.destroy();
    }

    #[test]
    fn read_only_refuses_writes() {
        let (disk, _) = gpt_disk(&[2048]);
        let opts = MountOptions::parse("ro", WritePolicy::ReadWriteUnlessRo).unwrap();
        let fs = DevFs::partitioned(Arc::new(PartitionedDisk::new(disk)), &opts);
        assert!(fs.read_only());
        let e = fs.lookup(&ctx(), Ino::ROOT, OsStr::new("disk1")).unwrap();
        assert_eq!(e.attr.perm, 0o444);
        assert_eq!(fs.open(&ctx(), e.attr.ino, libc::O_RDWR), Err(Errno::EROFS));
        let o = fs.open(&ctx(), e.attr.ino, libc::O_RDONLY).unwrap();
        assert_eq!(
            fs.write(&ctx(), e.attr.ino, o.fh, 0, b"x"),
            Err(Errno::EROFS)
        );
    }

    #[test]
    fn device_files_keep_the_owner_and_mode_of_the_image() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let image = dir.path().join("private.img");
        std::fs::write(&image, [0u8; 4096]).unwrap();
        std::fs::set_permissions(&image, std::fs::Permissions::from_mode(0o600)).unwrap();
        let like = std::fs::metadata(&image).unwrap();
        let dev: Arc<dyn BlockDevice> = Arc::new(Ramdisk::new(1 << 20).unwrap());
        let fs = DevFs::single(dev.clone(), &rw()).owned_like(&like, &rw());
        let a = fs.getattr(&ctx(), Ino::ROOT, None).unwrap();
        use std::os::unix::fs::MetadataExt;
        assert_eq!((a.perm, a.uid, a.gid), (0o600, like.uid(), like.gid()));
        // uid= still names the owner shown; a read-only mount drops the write bit.
        let opts = MountOptions::parse("ro,uid=7", WritePolicy::ReadWriteUnlessRo).unwrap();
        let fs = DevFs::single(dev, &opts).owned_like(&like, &opts);
        let a = fs.getattr(&ctx(), Ino::ROOT, None).unwrap();
        assert_eq!((a.perm, a.uid), (0o400, 7));
    }

    #[test]
    fn single_file_root_and_options() {
        let dev: Arc<dyn BlockDevice> = Arc::new(Ramdisk::new(1 << 20).unwrap());
        let opts =
            MountOptions::parse("uid=7,gid=8,umask=027", WritePolicy::ReadWriteUnlessRo).unwrap();
        let fs = DevFs::single(dev, &opts);
        let a = fs.getattr(&ctx(), Ino::ROOT, None).unwrap();
        assert_eq!(a.kind, FileKind::File);
        assert_eq!((a.size, a.uid, a.gid, a.perm), (1 << 20, 7, 8, 0o640));
        assert_eq!(
            fs.lookup(&ctx(), Ino::ROOT, OsStr::new("disk")),
            Err(Errno::ENOTDIR)
        );
        assert_eq!(fs.opendir(&ctx(), Ino::ROOT), Err(Errno::ENOTDIR));
        // O_TRUNC / ftruncate through a handle leave the size alone; truncate by name is refused.
        let o = fs.open(&ctx(), Ino::ROOT, libc::O_RDWR).unwrap();
        let keep = SetAttr {
            size: Some(0),
            fh: Some(o.fh),
            ..SetAttr::default()
        };
        assert_eq!(fs.setattr(&ctx(), Ino::ROOT, &keep).unwrap().size, 1 << 20);
        let by_name = SetAttr {
            size: Some(0),
            ..SetAttr::default()
        };
        assert_eq!(fs.setattr(&ctx(), Ino::ROOT, &by_name), Err(Errno::EINVAL));
        let chmod = SetAttr {
            mode: Some(0o600),
            ..SetAttr::default()
        };
        assert_eq!(fs.setattr(&ctx(), Ino::ROOT, &chmod), Err(Errno::EPERM));
    }
}
