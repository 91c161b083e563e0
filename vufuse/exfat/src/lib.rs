//! exFAT driver, read-write, over any [`BlockDevice`], behind the [`FileSystem`] trait.
//!
//! Written from Microsoft's published exFAT specification rather than on the young Rust
//! exFAT crates, in the shape of the FAT driver: capped caches, extents per file, a name
//! index per directory, and every operation's metadata on the device before it returns, so
//! `fsck.exfat` is clean right after unmount.
//!
//! On-disk structures, one module each:
//! - [`boot`]: the boot region (geometry, VolumeFlags, its checksum; main and backup);
//! - [`fat`]: the FAT, consulted only for fragmented files;
//! - [`bitmap`]: the allocation bitmap, the authority on free clusters;
//! - [`upcase`]: the up-case table, which makes lookups case-insensitive (names keep their
//!   case);
//! - [`entry_set`]: File + Stream Extension + File Name entries, SetChecksum and NameHash;
//! - [`dir`]: a parsed directory; [`extents`]: a file's cluster runs; [`time`]: timestamps;
//! - [`mod@format`]: the formatter.
//!
//! Allocation: a new file gets one contiguous run (NoFatChain, no FAT writes); it stays
//! contiguous while the clusters after it are free and becomes a FAT chain when they are
//! not. ValidDataLength is honoured: reads past it give zeros, growing by truncate does not
//! write zeros, and a write past it zeroes the gap first (by discarding it on devices that
//! read discarded ranges as zeros).
//!
//! Memory is bounded whatever the volume size: the FAT and the bitmap are page caches of
//! at most 8 MiB each ([`fat::CACHE_CAP`], [`bitmap::CACHE_CAP`]), parsed directories at
//! most [`DIR_CACHE_BYTES`] (least recently used dropped first), the up-case table 128 KiB.
//! What grows is what the kernel holds: a node per inode it references, and for each
//! directory seen its first cluster, size and where its entry set lives (exFAT directories
//! have no `..`, so this is how a directory is found again and how a rename is kept from
//! moving a directory into itself); those records are pruned past [`KNOWN_DIRS_CAP`] down to
//! the ones still referenced.
//!
//! Corruption never panics nor hangs: a bad boot region, up-case table or bitmap refuses the
//! mount with a message naming it; a damaged entry set, a cluster chain that loops or leaves
//! the heap, or clusters the bitmap calls free give `EIO` for that file only. Chain walks
//! are bounded by the cluster count.
//!
//! Inode numbers are derived from where an entry set lives (directory cluster and slot)
//! when first seen and then kept by the node through renames.
#![warn(missing_docs)]

mod data;
mod dir_cache;
mod inodes;
mod names;
mod ops;
mod prefetch;
mod sets;

pub mod bitmap;
pub mod boot;
pub mod dir;
pub mod entry_set;
pub mod extents;
pub mod fat;
pub mod format;
pub mod time;
pub mod upcase;
mod upcase_table;

use bitmap::Bitmap;
use boot::Geometry;
use dir::{DirId, DirIndex};
use entry_set::{
    EntrySet, FileMeta, ATTR_ARCHIVE, ATTR_DIRECTORY, ATTR_READ_ONLY, ENTRY,
    FLAG_ALLOCATION_POSSIBLE, FLAG_NO_FAT_CHAIN, IN_USE, TYPE_END,
};
use extents::Extents;
use fat::Fat;
use std::collections::{HashMap, HashSet};
use std::ffi::OsStr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};
use upcase::Upcase;
use vudev::{BlockDevice, Errno, Result};
use vufuse_api::fs::{
    check_rename_flags, Attr, CachePolicy, Capabilities, Context, DirEntry, Entry, Fh, FileKind,
    FileSystem, Ino, Opened, SetAttr, StatFs, RENAME_NOREPLACE,
};
use vufuse_api::MountError;

/// Mount options the driver itself uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ExFatOptions {
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
    /// Parsed directories kept in memory, in estimated bytes.
    pub dir_cache_bytes: usize,
    /// A fixed time that every timestamp the driver writes takes instead of the clock's
    /// (creation times included), for reproducible images; `None`: the real time.
    pub clock: Option<SystemTime>,
}

impl Default for ExFatOptions {
    /// Read-only, owned by the caller, umask 022.
    fn default() -> Self {
        let ctx = Context::current();
        ExFatOptions {
            read_only: true,
            uid: ctx.uid,
            gid: ctx.gid,
            dmask: 0o022,
            fmask: 0o022,
            dir_cache_bytes: DIR_CACHE_BYTES,
            clock: None,
        }
    }
}

/// Parsed directories are kept within about this many bytes by default.
pub const DIR_CACHE_BYTES: usize = 16 << 20;
/// Estimated bytes per parsed entry set (name, key, raw set, index slots).
const DIR_ENTRY_COST: usize = 320;
/// Estimated bytes per parsed directory besides its entries.
const DIR_COST: usize = 512;
/// Directory records beyond this many are pruned to those still referenced.
pub const KNOWN_DIRS_CAP: usize = 65536;
/// Largest directory the specification allows.
const MAX_DIR_BYTES: u64 = 256 << 20;
/// Inode numbers from here on are never derived from a location.
const SPARE_INO_BASE: u64 = 1 << 62;

/// Where an entry set lives: its directory and the slot of its File entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct Location {
    dir: DirId,
    slot: u32,
}

impl Location {
    fn ino(self) -> Ino {
        Ino(2 + ((self.dir as u64) << 24 | self.slot as u64))
    }
}

/// What is needed to read a directory again: its stream fields and where its set is.
#[derive(Clone, Copy, Debug)]
struct DirInfo {
    first: u32,
    contiguous: bool,
    len: u64,
    /// `None` for the root.
    owner: Option<Location>,
}

/// A file or directory the kernel knows about.
struct Node {
    loc: Option<Location>,
    dir: Option<DirId>,
    lookups: u64,
    opens: u32,
    /// Unlinked while open: the set lives on here until the last close.
    orphan: Option<Box<EntrySet>>,
    extents: Option<Extents>,
    /// Where a sequential reader's next read starts, and how far the device was asked to
    /// prefetch for it (`data.rs`, `readahead`).
    next_read: u64,
    prefetched: u64,
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
            next_read: 0,
            prefetched: 0,
        }
    }
}

struct State {
    fat: Fat,
    bitmap: Bitmap,
    dirs: HashMap<DirId, DirIndex>,
    dir_use: HashMap<DirId, (u64, usize)>,
    dir_bytes: usize,
    op: u64,
    nodes: HashMap<Ino, Node>,
    assigned: HashMap<Location, Ino>,
    owners: HashMap<Ino, Location>,
    next_spare_ino: u64,
    known: HashMap<DirId, DirInfo>,
    announced: prefetch::Announced,
}

/// A mounted exFAT volume.
pub struct ExFatFs {
    dev: Arc<dyn BlockDevice>,
    geo: Geometry,
    opts: ExFatOptions,
    upcase: Upcase,
    label: String,
    mounted_at: SystemTime,
    state: Mutex<State>,
}

/// True if `dev` starts with an exFAT boot sector ("EXFAT   " at offset 3).
pub fn looks_like_exfat(dev: &dyn BlockDevice) -> bool {
    let mut sector = [0u8; 512];
    dev.read_exact_at(&mut sector, 0).is_ok() && boot::has_signature(&sector)
}

fn refuse(message: String) -> MountError {
    MountError::volume(Errno::EINVAL, message)
}

fn le32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

fn le64(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

/// Direction of a data copy.
enum Transfer<'a> {
    Read(&'a mut [u8]),
    Write(&'a [u8]),
    Zero(u64),
}

impl ExFatFs {
    /// Mounts the exFAT volume on `dev`. Read-write needs `opts.read_only == false` and a
    /// writable device; the VolumeDirty flag is then set until [`FileSystem::destroy`].
    pub fn open(
        dev: Arc<dyn BlockDevice>,
        opts: ExFatOptions,
    ) -> std::result::Result<ExFatFs, MountError> {
        let mut opts = opts;
        if dev.read_only() {
            opts.read_only = true;
        }
        let geo = boot::read(&*dev)?;
        let mut fat = Fat::new(dev.clone(), &geo);
        let io = |what: &str| {
            let what = what.to_string();
            move |e: Errno| MountError::volume(Errno::EIO, format!("{what} ({e})"))
        };
        let root_runs = fat
            .chain_runs(geo.root_cluster, None)
            .map_err(io("the root directory's cluster chain is broken"))?;
        let root_extents = Extents::from_runs(&root_runs);
        let root_len = (root_extents.clusters() as u64) << geo.cluster_shift;
        if root_len > MAX_DIR_BYTES {
            return Err(refuse("the root directory is larger than 256 MiB".into()));
        }
        let offset_of = |c: u32| geo.cluster_offset(c);
        let root_bytes =
            read_dir_extents(&*dev, &root_extents, geo.cluster_shift, offset_of, root_len)
                .map_err(io("the root directory is unreadable"))?;
        // The up-case table is needed to index names, and its entry is in the root.
        let scan = DirIndex::parse(&root_bytes, Extents::default(), &Upcase::standard());
        let upcase = Self::load_upcase(&*dev, &geo, &mut fat, scan.upcase)?;
        let bitmap_entry = scan
            .bitmap
            .ok_or_else(|| refuse("the root directory has no allocation bitmap entry".into()))?;
        let mut bitmap = Self::load_bitmap(dev.clone(), &geo, &mut fat, bitmap_entry.1)?;
        for (what, runs) in [("root directory", root_runs.as_slice())] {
            for &(first, len) in runs {
                if !bitmap
                    .all_used(first, len)
                    .map_err(io("the allocation bitmap is unreadable"))?
                {
                    return Err(refuse(format!(
                        "the allocation bitmap marks clusters of the {what} free \
                         (bitmap and FAT disagree)"
                    )));
                }
            }
        }
        let root_index = DirIndex::parse(&root_bytes, root_extents, &upcase);
        let label = root_index
            .label
            .map(|(_, e)| {
                let units: Vec<u16> = (0..(e[1] as usize).min(11))
                    .map(|i| u16::from_le_bytes([e[2 + 2 * i], e[3 + 2 * i]]))
                    .collect();
                String::from_utf16_lossy(&units)
            })
            .unwrap_or_default();
        let root = geo.root_cluster;
        let mut st = State {
            fat,
            bitmap,
            dirs: HashMap::new(),
            dir_use: HashMap::new(),
            dir_bytes: 0,
            op: 0,
            nodes: HashMap::new(),
            assigned: HashMap::new(),
            owners: HashMap::new(),
            next_spare_ino: SPARE_INO_BASE,
            known: HashMap::new(),
            announced: prefetch::Announced::default(),
        };
        st.known.insert(
            root,
            DirInfo {
                first: root,
                contiguous: false,
                len: root_len,
                owner: None,
            },
        );
        let mut root_node = Node::new(None, Some(root));
        root_node.lookups = 1;
        st.nodes.insert(Ino::ROOT, root_node);
        st.dirs.insert(root, root_index);
        let fs = ExFatFs {
            dev,
            geo,
            opts,
            upcase,
            label,
            mounted_at: SystemTime::now(),
            state: Mutex::new(st),
        };
        if !fs.opts.read_only {
            fs.set_volume_dirty(true).map_err(|e| {
                MountError::volume(e, format!("cannot mark the volume in use ({e})"))
            })?;
        }
        Ok(fs)
    }

    fn load_upcase(
        dev: &dyn BlockDevice,
        geo: &Geometry,
        fat: &mut Fat,
        entry: Option<dir::Special>,
    ) -> std::result::Result<Upcase, MountError> {
        let (_, e) =
            entry.ok_or_else(|| refuse("the root directory has no up-case table entry".into()))?;
        let (sum, first, len) = (le32(&e, 4), le32(&e, 20), le64(&e, 24));
        if len == 0 || len > upcase::MAX_BYTES || len % 2 != 0 {
            return Err(refuse(format!(
                "the up-case table has an invalid size ({len} bytes)"
            )));
        }
        let clusters = len.div_ceil(geo.cluster_size as u64);
        let extents = fat
            .chain_runs(first, Some(clusters))
            .map(|r| Extents::from_runs(&r))
            .map_err(|_| refuse("the up-case table's cluster chain is broken".into()))?;
        let bytes = read_extents(
            dev,
            &extents,
            geo.cluster_shift,
            |c| geo.cluster_offset(c),
            len,
        )
        .map_err(|e| MountError::volume(e, format!("cannot read the up-case table ({e})")))?;
        let actual = upcase::checksum(&bytes);
        if actual != sum {
            return Err(refuse(format!(
                "bad up-case table checksum ({actual:#010x}, its entry says {sum:#010x})"
            )));
        }
        Ok(Upcase::from_bytes(&bytes))
    }

    fn load_bitmap(
        dev: Arc<dyn BlockDevice>,
        geo: &Geometry,
        fat: &mut Fat,
        e: [u8; ENTRY],
    ) -> std::result::Result<Bitmap, MountError> {
        let (first, len) = (le32(&e, 20), le64(&e, 24));
        let needed = (geo.cluster_count as u64).div_ceil(8);
        if len < needed {
            return Err(refuse(format!(
                "the allocation bitmap is too short ({len} bytes for {} clusters)",
                geo.cluster_count
            )));
        }
        let clusters = needed.div_ceil(geo.cluster_size as u64);
        let runs = fat
            .chain_runs(first, Some(clusters))
            .map_err(|_| refuse("the allocation bitmap's cluster chain is broken".into()))?;
        let extents = Extents::from_runs(&runs);
        let mut bitmap = Bitmap::open(
            dev,
            &extents,
            geo.cluster_size as u64,
            |c| geo.cluster_offset(c),
            geo.cluster_count,
        )
        .map_err(|e| MountError::volume(e, format!("cannot read the allocation bitmap ({e})")))?;
        for &(s, l) in &runs {
            if !bitmap.all_used(s, l).unwrap_or(false) {
                return Err(refuse(
                    "the allocation bitmap marks its own clusters free (bitmap and FAT disagree)"
                        .into(),
                ));
            }
        }
        Ok(bitmap)
    }

    /// The volume label (empty if none).
    pub fn label(&self) -> String {
        self.label.clone()
    }

    /// Volume geometry.
    pub fn geometry(&self) -> &Geometry {
        &self.geo
    }

    /// The time to stamp: the fixed clock of a reproducible build, else now.
    fn now(&self) -> SystemTime {
        self.opts.clock.unwrap_or_else(SystemTime::now)
    }

    /// A `SetTime` as this driver's clock reads it.
    fn resolve(&self, t: vufuse_api::SetTime) -> SystemTime {
        match t {
            vufuse_api::SetTime::Now => self.now(),
            vufuse_api::SetTime::At(at) => at,
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        st.op += 1;
        st
    }

    fn check_writable(&self) -> Result<()> {
        if self.opts.read_only {
            Err(Errno::EROFS)
        } else {
            Ok(())
        }
    }

    fn cs(&self) -> u64 {
        self.geo.cluster_size as u64
    }

    /// Sets or clears VolumeDirty in the main boot sector (outside the checksum).
    fn set_volume_dirty(&self, dirty: bool) -> Result<()> {
        let flags = if dirty {
            self.geo.flags | boot::VOLUME_DIRTY
        } else {
            self.geo.flags & !boot::VOLUME_DIRTY
        };
        self.dev
            .write_all_at(&flags.to_le_bytes(), boot::FLAGS_OFFSET)?;
        self.dev.flush()
    }

    // ----- directories -------------------------------------------------------------------

    /// Writes the FAT and bitmap changes of the operation just done.
    fn commit(&self, st: &mut State) -> Result<()> {
        if self.opts.read_only {
            return Ok(());
        }
        st.fat.flush()?;
        st.bitmap.flush()
    }

    /// Commits what an operation changed, even when it failed part way.
    fn committed<T>(&self, st: &mut State, result: Result<T>) -> Result<T> {
        let commit = self.commit(st);
        let value = result?;
        commit.map(|()| value)
    }

    fn sync_locked(&self, st: &mut State) -> Result<()> {
        if self.opts.read_only {
            return Ok(());
        }
        self.commit(st)?;
        self.dev.flush()
    }
}

/// The first `len` bytes stored in `extents`, read run by run (the up-case table, whose
/// every byte counts).
fn read_extents(
    dev: &dyn BlockDevice,
    extents: &Extents,
    cluster_shift: u32,
    offset_of: impl Fn(u32) -> u64,
    len: u64,
) -> Result<Vec<u8>> {
    read_runs(dev, extents, cluster_shift, offset_of, len, Until::Length)
}

/// The first piece of a directory read by [`read_dir_extents`]; later pieces double.
const DIR_READ_FIRST: u64 = 4096;
/// The largest piece [`read_dir_extents`] reads at once.
const DIR_READ_MAX: u64 = 1 << 20;

/// A directory's bytes, read only up to its end-of-directory entry (type 0x00): in pieces
/// from 4 KiB, doubling, so a small directory in a large cluster (32 KiB and more are the
/// norm on SDXC cards) costs one small read rather than its whole allocation. The bytes not
/// read stay zero, which is what the specification says follows an end-of-directory entry
/// (every later entry is one too), and what the parser stops at anyway.
fn read_dir_extents(
    dev: &dyn BlockDevice,
    extents: &Extents,
    cluster_shift: u32,
    offset_of: impl Fn(u32) -> u64,
    len: u64,
) -> Result<Vec<u8>> {
    read_runs(
        dev,
        extents,
        cluster_shift,
        offset_of,
        len,
        Until::EndOfDirectory,
    )
}

/// Where [`read_runs`] may stop.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Until {
    /// All `len` bytes, each run in one read.
    Length,
    /// The first piece holding an end-of-directory entry (pieces from 4 KiB, doubling).
    EndOfDirectory,
}

/// Reads up to `len` bytes of `extents` into a zeroed buffer of `len`; EIO when the runs
/// hold fewer bytes (and `until` did not stop the read first).
fn read_runs(
    dev: &dyn BlockDevice,
    extents: &Extents,
    cluster_shift: u32,
    offset_of: impl Fn(u32) -> u64,
    len: u64,
    until: Until,
) -> Result<Vec<u8>> {
    let mut bytes = vec![0u8; len as usize];
    let mut done = 0u64;
    let mut piece = match until {
        Until::Length => u64::MAX,
        Until::EndOfDirectory => DIR_READ_FIRST,
    };
    for (disk, count) in extents.runs() {
        let run_end = (done + ((count as u64) << cluster_shift)).min(len);
        let mut at = offset_of(disk);
        while done < run_end {
            let n = piece.min(run_end - done);
            let chunk = &mut bytes[done as usize..(done + n) as usize];
            dev.read_exact_at(chunk, at)?;
            if until == Until::EndOfDirectory {
                if chunk.chunks_exact(ENTRY).any(|e| e[0] == TYPE_END) {
                    return Ok(bytes);
                }
                piece = (piece * 2).min(DIR_READ_MAX);
            }
            (done, at) = (done + n, at + n);
        }
        if done >= len {
            break;
        }
    }
    if done < len {
        return Err(Errno::EIO);
    }
    Ok(bytes)
}

/// A set with its allocation gone (an orphan whose clusters were freed).
fn emptied(set: &EntrySet) -> EntrySet {
    let mut set = set.clone();
    let mut meta = set.meta();
    meta.first_cluster = 0;
    meta.data_len = 0;
    meta.valid_len = 0;
    meta.flags = FLAG_ALLOCATION_POSSIBLE;
    set.set_meta(&meta);
    set
}

fn touch(meta: &mut FileMeta, now: SystemTime) {
    meta.modified = now;
    meta.accessed = now;
    meta.attr |= ATTR_ARCHIVE;
}
