//! FAT12/16/32 driver with long names, read-write, over any [`BlockDevice`].
//!
//! Written here rather than on the `fatfs` crate: 0.3.6 leaves images that
//! fail fsck.fat after `create_dir`, creates files in quadratic time (41 s
//! for 1,000), walks the cluster chain from the start on every seek, and its
//! handles borrow a `!Send` filesystem (ANCHORS.md A.2). Here:
//! - the FAT is a capped page cache with an exact free count ([`table`]);
//! - each directory is indexed once (name hash, short-name set, free slot
//!   runs), so lookup and create are O(1) ([`dir`]);
//! - each file keeps its cluster runs, so a read at any offset is a binary
//!   search, not a chain walk;
//! - short names get a Windows-style hashed tail, so 5,000 `file_NNNNN.dat`
//!   names do not probe `~1`..`~999999` one by one ([`dirent`]).
//!
//! Inode numbers are derived from the entry's location (directory cluster and
//! slot) when first seen and then kept by the node through renames.

mod data;
mod dir_cache;
mod inodes;
mod names;
mod ops;
mod rename;

use data::Transfer;

pub mod bpb;
pub mod dir;
pub mod dirent;
pub mod format;
pub mod table;

use bpb::{FatType, Geometry};
use dir::{DirId, DirIndex, Named};
use dirent::{ShortEntry, ATTR_ARCHIVE, ATTR_DIRECTORY, ATTR_READ_ONLY, DELETED, SLOT};
use std::collections::HashMap;
use std::ffi::OsStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::{Duration, SystemTime};
use table::Fat;
use vudev::{BlockDevice, Errno, Result};
use vufuse_api::fs::{
    check_rename_flags, Attr, CachePolicy, Capabilities, Context, DirEntry, Entry, Fh, FileKind,
    FileSystem, Ino, Opened, SetAttr, StatFs, RENAME_EXCHANGE, RENAME_NOREPLACE,
};
use vufuse_api::MountError;

/// Mount options the driver itself uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FatOptions {
    /// Refuse every change (`EROFS`).
    pub read_only: bool,
    /// Owner shown for every file.
    pub uid: u32,
    /// Group shown for every file.
    pub gid: u32,
    /// Permission bits cleared from directories.
    pub dmask: u32,
    /// Permission bits cleared from files.
    pub fmask: u32,
    /// Parsed directories kept in memory, in estimated bytes ([`DIR_CACHE_BYTES`] unless a
    /// test wants eviction on every operation).
    pub dir_cache_bytes: usize,
}

impl Default for FatOptions {
    fn default() -> Self {
        let ctx = Context::current();
        FatOptions {
            read_only: true,
            uid: ctx.uid,
            gid: ctx.gid,
            dmask: 0o022,
            fmask: 0o022,
            dir_cache_bytes: DIR_CACHE_BYTES,
        }
    }
}

/// Where an entry lives: directory and short-entry slot.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct Location {
    dir: DirId,
    slot: u32,
}

impl Location {
    fn ino(self) -> Ino {
        Ino(2 + ((self.dir as u64) << 16 | self.slot as u64))
    }
}

/// Cluster runs of a file: (first file cluster, first disk cluster, length).
#[derive(Clone, Debug, Default)]
struct Extents {
    runs: Vec<(u32, u32, u32)>,
    clusters: u32,
}

impl Extents {
    fn from_runs(runs: &[(u32, u32)]) -> Extents {
        let mut e = Extents::default();
        for &(start, len) in runs {
            e.push(start, len);
        }
        e
    }

    fn push(&mut self, disk: u32, len: u32) {
        match self.runs.last_mut() {
            Some((_, d, l)) if *d + *l == disk => *l += len,
            _ => self.runs.push((self.clusters, disk, len)),
        }
        self.clusters += len;
    }

    /// Disk cluster of file cluster `index` and how many follow it contiguously.
    fn locate(&self, index: u32) -> Option<(u32, u32)> {
        let i = self
            .runs
            .partition_point(|&(f, _, _)| f <= index)
            .checked_sub(1)?;
        let (f, d, l) = self.runs[i];
        (index < f + l).then(|| (d + (index - f), f + l - index))
    }

    fn last(&self) -> Option<u32> {
        self.runs.last().map(|&(_, d, l)| d + l - 1)
    }

    fn truncate(&mut self, keep: u32) -> Vec<(u32, u32)> {
        let mut freed = Vec::new();
        while let Some(&(f, d, l)) = self.runs.last() {
            if f >= keep {
                freed.push((d, l));
                self.runs.pop();
            } else if f + l > keep {
                let kept = keep - f;
                freed.push((d + kept, l - kept));
                self.runs.last_mut().expect("non-empty").2 = kept;
                break;
            } else {
                break;
            }
        }
        self.clusters = self.clusters.min(keep);
        freed
    }
}

/// A file or directory the kernel knows about.
struct Node {
    /// Where its entry is (None for the root and for unlinked files).
    loc: Option<Location>,
    /// For directories: their id.
    dir: Option<DirId>,
    lookups: u64,
    opens: u32,
    /// Unlinked while open: the entry lives on here until the last close (boxed: rare, and
    /// the kernel may hold a node for every file of the volume).
    orphan: Option<Box<ShortEntry>>,
    extents: Option<Extents>,
    /// Where a sequential reader would read next, for readahead.
    next_read: AtomicU64,
    /// File offset up to which the device was asked to prefetch.
    prefetched: AtomicU64,
}

impl Node {
    fn new(loc: Option<Location>, dir: Option<DirId>) -> Node {
        Node {
            loc,
            dir,
            lookups: 0,
            opens: 0,
            orphan: None,
            extents: None,
            next_read: AtomicU64::new(0),
            prefetched: AtomicU64::new(0),
        }
    }
}

/// Parsed directories are kept within about this many bytes by default; least recently
/// used ones are dropped first, down to three quarters of it.
pub const DIR_CACHE_BYTES: usize = 16 << 20;

/// Estimated bytes per parsed directory entry (measured: 330 bytes of resident memory per
/// file while a volume filled with 120,000 files: names, short name, index slots).
const DIR_ENTRY_COST: usize = 336;

/// Estimated bytes per parsed directory besides its entries.
const DIR_COST: usize = 512;

struct State {
    fat: Fat,
    /// Parsed directories, a cache within `FatOptions::dir_cache_bytes` (every change is written
    /// through, so a directory dropped here is parsed again from the disk when needed).
    dirs: HashMap<DirId, DirIndex>,
    /// Per cached directory: the operation that last used it, and its estimated bytes.
    dir_use: HashMap<DirId, (u64, usize)>,
    /// Estimated bytes of `dirs`.
    dir_bytes: usize,
    /// Counts operations (write-lock acquisitions): directories used by the current one are
    /// never evicted, so an operation's directories stay put while it runs.
    op: u64,
    nodes: HashMap<Ino, Node>,
    /// Locations whose inode is not the one derived from them (moved
    /// entries, or slots whose derived number was taken): kept for the life
    /// of the mount so numbers never change; grows only with renames.
    assigned: HashMap<Location, Ino>,
    /// Reverse of `assigned`.
    owners: HashMap<Ino, Location>,
    next_spare_ino: u64,
    /// Free count last written to FSInfo.
    fsinfo_free: Option<u32>,
}

/// A mounted FAT volume.
pub struct FatFs {
    dev: Arc<dyn BlockDevice>,
    geo: Geometry,
    opts: FatOptions,
    root: DirId,
    /// FAT32: offset of an FSInfo sector whose signatures checked out.
    fsinfo: Option<u64>,
    label: String,
    mounted_at: SystemTime,
    state: RwLock<State>,
}

/// Directory ids above this never collide with location-derived inode numbers.
const SPARE_INO_BASE: u64 = 1 << 62;
/// Largest directory the format allows (65,536 slots).
const MAX_DIR_SLOTS: u32 = 65536;

fn io_context(e: Errno) -> MountError {
    MountError::Volume {
        errno: e,
        message: format!("cannot read the volume: {e}"),
    }
}

/// True if `dev` starts with a FAT boot sector this driver accepts.
pub fn looks_like_fat(dev: &dyn BlockDevice) -> bool {
    let mut sector = [0u8; 512];
    dev.read_exact_at(&mut sector, 0).is_ok() && bpb::parse(&sector, dev.size()).is_ok()
}

impl FatFs {
    /// Mounts the FAT volume on `dev`. Read-write needs `opts.read_only == false`
    /// and a writable device.
    pub fn open(
        dev: Arc<dyn BlockDevice>,
        opts: FatOptions,
    ) -> std::result::Result<FatFs, MountError> {
        let mut opts = opts;
        if dev.read_only() {
            opts.read_only = true;
        }
        let mut sector = vec![0u8; 512];
        if dev.size() < 512 {
            return Err(MountError::Volume {
                errno: Errno::EINVAL,
                message: "device is smaller than one sector".into(),
            });
        }
        dev.read_exact_at(&mut sector, 0).map_err(io_context)?;
        let geo = bpb::parse(&sector, dev.size()).map_err(|message| MountError::Volume {
            errno: Errno::EINVAL,
            message,
        })?;
        let fat = Fat::open(dev.clone(), geo.clone()).map_err(io_context)?;
        let fsinfo = geo.fsinfo_offset.filter(|&offset| {
            let mut info = [0u8; 512];
            dev.read_exact_at(&mut info, offset).is_ok()
                && info[0..4] == 0x4161_5252u32.to_le_bytes()
                && info[484..488] == 0x6141_7272u32.to_le_bytes()
        });
        let root = if geo.fat_type == FatType::Fat32 {
            geo.root_cluster
        } else {
            0
        };
        let mut fs = FatFs {
            dev,
            geo,
            opts,
            root,
            fsinfo,
            label: String::new(),
            mounted_at: SystemTime::now(),
            state: RwLock::new(State {
                fat,
                dirs: HashMap::new(),
                dir_use: HashMap::new(),
                dir_bytes: 0,
                op: 0,
                nodes: HashMap::new(),
                assigned: HashMap::new(),
                owners: HashMap::new(),
                next_spare_ino: SPARE_INO_BASE,
                fsinfo_free: None,
            }),
        };
        {
            let mut st = fs.state.write().unwrap_or_else(|e| e.into_inner());
            let mut root_node = Node::new(None, Some(root));
            root_node.lookups = 1;
            st.nodes.insert(Ino::ROOT, root_node);
            let label = fs.load_dir(&mut st, root).map_err(|e| MountError::Volume {
                errno: e,
                message: format!("the root directory is unreadable ({e})"),
            })?;
            let label = label
                .label
                .clone()
                .filter(|l| !l.is_empty())
                .unwrap_or_else(|| fs.geo.label.clone());
            drop(st);
            fs.label = label;
        }
        Ok(fs)
    }

    /// The volume label (from the root directory, else the boot sector).
    pub fn label(&self) -> &str {
        &self.label
    }

    /// Volume geometry.
    pub fn geometry(&self) -> &Geometry {
        &self.geo
    }

    /// The state, for one operation (see [`State::op`]).
    fn lock(&self) -> RwLockWriteGuard<'_, State> {
        let mut st = self.state.write().unwrap_or_else(|e| e.into_inner());
        st.op += 1;
        st
    }

    fn read_lock(&self) -> RwLockReadGuard<'_, State> {
        self.state.read().unwrap_or_else(|e| e.into_inner())
    }

    fn check_writable(&self) -> Result<()> {
        if self.opts.read_only {
            Err(Errno::EROFS)
        } else {
            Ok(())
        }
    }

    /// Writes the FAT changes of the operation just done (dirty sectors, to
    /// every copy) and FSInfo, so the image is consistent whenever no
    /// operation is running: `fusermount3 -u` followed at once by fsck or
    /// mtools sees a clean volume even before the daemon has exited. No
    /// volume-dirty bit is set for the same reason (fsck.fat -n fails on it).
    fn commit(&self, st: &mut State) -> Result<()> {
        if self.opts.read_only {
            return Ok(());
        }
        st.fat.flush()?;
        let free = st.fat.free_clusters();
        if st.fsinfo_free == Some(free) {
            return Ok(());
        }
        if let Some(offset) = self.fsinfo {
            // Free count and next-free hint, side by side at byte 488.
            let mut counts = [0u8; 8];
            counts[..4].copy_from_slice(&free.to_le_bytes());
            counts[4..].copy_from_slice(&st.fat.next_free_hint().to_le_bytes());
            self.dev.write_all_at(&counts, offset + 488)?;
        }
        st.fsinfo_free = Some(free);
        Ok(())
    }

    /// Runs a mutating operation and commits what it changed, even on error
    /// (a partial change must still reach the image consistently).
    fn committed<T>(&self, st: &mut State, result: Result<T>) -> Result<T> {
        let commit = self.commit(st);
        let value = result?;
        commit.map(|()| value)
    }

    /// [`commit`](Self::commit), then makes it durable on the device.
    fn sync_locked(&self, st: &mut State) -> Result<()> {
        if self.opts.read_only {
            return Ok(());
        }
        self.commit(st)?;
        self.dev.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extents_locate_and_truncate() {
        let mut e = Extents::from_runs(&[(10, 3), (20, 2)]);
        e.push(22, 1);
        assert_eq!(e.clusters, 6);
        assert_eq!(e.locate(0), Some((10, 3)));
        assert_eq!(e.locate(2), Some((12, 1)));
        assert_eq!(e.locate(3), Some((20, 3)));
        assert_eq!(e.locate(5), Some((22, 1)));
        assert_eq!(e.locate(6), None);
        assert_eq!(e.truncate(2), vec![(20, 3), (12, 1)]);
        assert_eq!(e.clusters, 2);
        assert_eq!(e.last(), Some(11));
    }
}
