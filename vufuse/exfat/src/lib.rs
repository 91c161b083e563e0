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
//! - [`format`]: the formatter.
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
    FLAG_ALLOCATION_POSSIBLE, FLAG_NO_FAT_CHAIN, IN_USE,
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
    Attr, CachePolicy, Capabilities, Context, DirEntry, Entry, Fh, FileKind, FileSystem, Ino,
    Opened, SetAttr, StatFs, RENAME_EXCHANGE, RENAME_NOREPLACE,
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
        let root_bytes = read_extents(&*dev, &root_extents, geo.cluster_shift, offset_of, root_len)
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

    /// Loads (or returns) the index of directory `id`.
    fn load_dir<'a>(&self, st: &'a mut State, id: DirId) -> Result<&'a mut DirIndex> {
        if !st.dirs.contains_key(&id) {
            let info = *st.known.get(&id).ok_or(Errno::EIO)?;
            let extents = self.extents_of(st, info.first, info.contiguous, info.len)?;
            let bytes = read_extents(
                &*self.dev,
                &extents,
                self.geo.cluster_shift,
                |c| self.geo.cluster_offset(c),
                info.len,
            )?;
            let index = DirIndex::parse(&bytes, extents, &self.upcase);
            st.dirs.insert(id, index);
        }
        let cost = DIR_COST + st.dirs[&id].entries.len() * DIR_ENTRY_COST;
        let op = st.op;
        let old = st.dir_use.insert(id, (op, cost)).map_or(0, |(_, c)| c);
        st.dir_bytes = st.dir_bytes + cost - old;
        Self::trim_dirs(st, self.opts.dir_cache_bytes, self.geo.root_cluster);
        Ok(st.dirs.get_mut(&id).expect("just loaded"))
    }

    /// Drops least recently used directories (never the root, one the current operation
    /// used, nor the most recent of the others) while over `budget` bytes.
    fn trim_dirs(st: &mut State, budget: usize, root: DirId) {
        if st.dir_bytes <= budget {
            return;
        }
        let mut by_age: Vec<(u64, DirId)> = st
            .dir_use
            .iter()
            .filter(|(&id, &(used, _))| used < st.op && id != root)
            .map(|(&id, &(used, _))| (used, id))
            .collect();
        by_age.sort_unstable();
        by_age.pop();
        for (_, id) in by_age {
            if st.dir_bytes <= budget - budget / 4 {
                break;
            }
            Self::forget_dir(st, id);
        }
    }

    fn forget_dir(st: &mut State, id: DirId) {
        st.dirs.remove(&id);
        if let Some((_, cost)) = st.dir_use.remove(&id) {
            st.dir_bytes -= cost;
        }
    }

    /// Remembers how to read directory `meta` whose set is at `loc`.
    fn register_dir(&self, st: &mut State, loc: Location, meta: &FileMeta) {
        if st.known.len() >= KNOWN_DIRS_CAP {
            Self::prune_known(st, self.geo.root_cluster);
        }
        st.known.insert(
            meta.first_cluster,
            DirInfo {
                first: meta.first_cluster,
                contiguous: meta.contiguous(),
                len: meta.data_len,
                owner: Some(loc),
            },
        );
    }

    /// Keeps the directory records still referenced (by a node, a cached index, a node's
    /// location) and their ancestors.
    fn prune_known(st: &mut State, root: DirId) {
        let mut keep: HashSet<DirId> = st.dirs.keys().copied().collect();
        keep.insert(root);
        for node in st.nodes.values() {
            keep.extend(node.dir);
            keep.extend(node.loc.map(|l| l.dir));
        }
        let mut ancestors = Vec::new();
        for &id in &keep {
            let mut at = id;
            for _ in 0..4096 {
                match st.known.get(&at).and_then(|i| i.owner) {
                    Some(owner) => {
                        ancestors.push(owner.dir);
                        at = owner.dir;
                    }
                    None => break,
                }
            }
        }
        keep.extend(ancestors);
        st.known.retain(|id, _| keep.contains(id));
    }

    fn node(st: &State, ino: Ino) -> Result<&Node> {
        st.nodes.get(&ino).ok_or(Errno::ENOENT)
    }

    fn dir_of(st: &State, ino: Ino) -> Result<DirId> {
        Self::node(st, ino)?.dir.ok_or(Errno::ENOTDIR)
    }

    /// True if directory `ancestor` is `dir` or one of its ancestors.
    fn is_ancestor(&self, st: &State, ancestor: DirId, mut dir: DirId) -> Result<bool> {
        for _ in 0..4096 {
            if dir == ancestor {
                return Ok(true);
            }
            if dir == self.geo.root_cluster {
                return Ok(false);
            }
            dir = st
                .known
                .get(&dir)
                .and_then(|i| i.owner)
                .ok_or(Errno::EIO)?
                .dir;
        }
        Err(Errno::ELOOP)
    }

    fn slot_offset(&self, dir: &DirIndex, slot: u32) -> Result<u64> {
        dir.slot_offset(slot, self.geo.cluster_shift, |c| self.geo.cluster_offset(c))
            .ok_or(Errno::EIO)
    }

    /// Writes whole entries at `slot` of directory `id` (runs of adjacent entries at once).
    fn write_slots(&self, st: &mut State, id: DirId, slot: u32, bytes: &[u8]) -> Result<()> {
        let dir = self.load_dir(st, id)?;
        let mut i = 0;
        while i < bytes.len() / ENTRY {
            let start = self.slot_offset(dir, slot + i as u32)?;
            let mut j = i + 1;
            while j < bytes.len() / ENTRY
                && self.slot_offset(dir, slot + j as u32)? == start + ((j - i) * ENTRY) as u64
            {
                j += 1;
            }
            self.dev.write_all_at(&bytes[i * ENTRY..j * ENTRY], start)?;
            i = j;
        }
        Ok(())
    }

    /// Writes a set into directory `id` under `name`; `EEXIST` if the name is taken.
    fn add_set(&self, st: &mut State, id: DirId, name: &[u16], set: EntrySet) -> Result<Location> {
        let key = self.upcase.key(name);
        if self.load_dir(st, id)?.find(&key).is_some() {
            return Err(Errno::EEXIST);
        }
        let count = set.entries();
        let slot = loop {
            if let Some(slot) = self.load_dir(st, id)?.find_free(count) {
                break slot;
            }
            self.grow_dir(st, id)?;
        };
        if let Err(e) = self.write_slots(st, id, slot, set.raw()) {
            self.load_dir(st, id)?.release(slot, count);
            return Err(e);
        }
        let name = String::from_utf16_lossy(name);
        self.load_dir(st, id)?.insert(slot, key, name, set);
        Ok(Location { dir: id, slot })
    }

    /// Marks the entries of the set at `loc` deleted and forgets it.
    fn remove_set(&self, st: &mut State, loc: Location) -> Result<dir::Named> {
        let dir = self.load_dir(st, loc.dir)?;
        let named = dir.entries.get(&loc.slot).ok_or(Errno::ENOENT)?;
        let set = named.set.as_ref().ok_or(Errno::EIO)?;
        let types: Vec<u8> = set.raw().chunks(ENTRY).map(|e| e[0] & !IN_USE).collect();
        for (i, t) in types.iter().enumerate() {
            let offset = self.slot_offset(dir, loc.slot + i as u32)?;
            self.dev.write_all_at(&[*t], offset)?;
        }
        dir.remove(loc.slot).ok_or(Errno::ENOENT)
    }

    /// Adds a zeroed cluster to directory `id` and records its new size in its entry set.
    fn grow_dir(&self, st: &mut State, id: DirId) -> Result<()> {
        let info = *st.known.get(&id).ok_or(Errno::EIO)?;
        let cs = self.cs();
        if info.len + cs > MAX_DIR_BYTES {
            return Err(Errno::ENOSPC);
        }
        let mut extents = self.load_dir(st, id)?.extents.clone();
        let is_root = info.owner.is_none();
        let contiguous = self.extend(st, &mut extents, info.contiguous, 1, !is_root)?;
        let new = extents.last().expect("just grown");
        if let Err(e) = self.zero_cluster(new) {
            // Give the cluster back; a FAT link to it stays harmless (the size says where
            // the directory ends).
            st.bitmap.mark_free(new, 1)?;
            return Err(e);
        }
        let len = info.len + cs;
        if let Some(owner) = info.owner {
            let mut set = self.set_at(st, owner)?;
            let mut meta = set.meta();
            meta.data_len = len;
            meta.valid_len = len;
            meta.flags = FLAG_ALLOCATION_POSSIBLE | if contiguous { FLAG_NO_FAT_CHAIN } else { 0 };
            set.set_meta(&meta);
            self.write_set(st, owner, set)?;
        }
        st.known.insert(
            id,
            DirInfo {
                contiguous,
                len,
                ..info
            },
        );
        let dir = self.load_dir(st, id)?;
        dir.extents = extents;
        dir.capacity = (len / ENTRY as u64) as u32;
        Ok(())
    }

    fn zero_cluster(&self, cluster: u32) -> Result<()> {
        self.dev.write_all_at(
            &vec![0u8; self.geo.cluster_size as usize],
            self.geo.cluster_offset(cluster),
        )
    }

    // ----- entry sets and nodes ----------------------------------------------------------

    /// The set at `loc` (`EIO` if it is damaged).
    fn set_at(&self, st: &mut State, loc: Location) -> Result<EntrySet> {
        let dir = self.load_dir(st, loc.dir)?;
        dir.entries
            .get(&loc.slot)
            .ok_or(Errno::ENOENT)?
            .set
            .clone()
            .ok_or(Errno::EIO)
    }

    /// Writes a changed set in place (same entry count) and records it in the index.
    fn write_set(&self, st: &mut State, loc: Location, set: EntrySet) -> Result<()> {
        self.write_slots(st, loc.dir, loc.slot, set.raw())?;
        let dir = self.load_dir(st, loc.dir)?;
        if let Some(named) = dir.entries.get_mut(&loc.slot) {
            named.set = Some(set);
        }
        Ok(())
    }

    /// The set of a non-root inode.
    fn set_of(&self, st: &mut State, ino: Ino) -> Result<EntrySet> {
        let node = Self::node(st, ino)?;
        if let Some(orphan) = &node.orphan {
            return Ok(EntrySet::clone(orphan));
        }
        let loc = node.loc.ok_or(Errno::EINVAL)?;
        self.set_at(st, loc)
    }

    /// Stores a changed set of `ino` (in memory for an orphan).
    fn put_set(&self, st: &mut State, ino: Ino, set: EntrySet) -> Result<()> {
        let node = st.nodes.get_mut(&ino).ok_or(Errno::ENOENT)?;
        if node.orphan.is_some() {
            node.orphan = Some(Box::new(set));
            return Ok(());
        }
        let loc = node.loc.ok_or(Errno::EINVAL)?;
        self.write_set(st, loc, set)
    }

    fn ino_at(st: &mut State, loc: Location) -> Ino {
        if let Some(&ino) = st.assigned.get(&loc) {
            return ino;
        }
        let derived = loc.ino();
        let taken = st.owners.contains_key(&derived)
            || st.nodes.get(&derived).is_some_and(|n| n.loc != Some(loc));
        if !taken {
            return derived;
        }
        let spare = Ino(st.next_spare_ino);
        st.next_spare_ino += 1;
        st.assigned.insert(loc, spare);
        st.owners.insert(spare, loc);
        spare
    }

    /// The entry at `from` now lives at `to`: its inode number goes with it.
    fn move_ino(st: &mut State, from: Location, to: Location) -> Ino {
        let ino = Self::ino_at(st, from);
        if st.assigned.remove(&from).is_some() {
            st.owners.remove(&ino);
        }
        if let Some(stale) = st.assigned.remove(&to) {
            st.owners.remove(&stale);
        }
        if ino != to.ino() {
            st.assigned.insert(to, ino);
            st.owners.insert(ino, to);
        }
        if let Some(node) = st.nodes.get_mut(&ino) {
            node.loc = Some(to);
        }
        ino
    }

    fn drop_ino(st: &mut State, loc: Location) {
        if let Some(ino) = st.assigned.remove(&loc) {
            st.owners.remove(&ino);
        }
    }

    /// Checks that a directory's stream fields make sense and that it does not contain
    /// itself (a loop would make the tree infinite).
    fn check_dir(&self, st: &State, parent: DirId, meta: &FileMeta) -> Result<()> {
        let first = meta.first_cluster;
        let cs = self.cs();
        if !self.geo.is_valid_cluster(first)
            || meta.data_len == 0
            || meta.data_len % cs != 0
            || meta.data_len > MAX_DIR_BYTES
            || first == self.geo.root_cluster
            || self.is_ancestor(st, first, parent)?
        {
            return Err(Errno::EIO);
        }
        Ok(())
    }

    /// The inode of the set at `loc`, creating its node, with one more lookup.
    fn lookup_at(&self, st: &mut State, loc: Location) -> Result<Entry> {
        let set = self.set_at(st, loc)?;
        let meta = set.meta();
        if meta.is_dir() {
            self.check_dir(st, loc.dir, &meta)?;
            self.register_dir(st, loc, &meta);
        }
        let ino = Self::ino_at(st, loc);
        let dir = meta.is_dir().then_some(meta.first_cluster);
        let node = st
            .nodes
            .entry(ino)
            .or_insert_with(|| Node::new(Some(loc), dir));
        node.lookups += 1;
        Ok(Entry {
            attr: self.attr_of(ino, &meta),
            generation: 0,
        })
    }

    fn find_child(&self, st: &mut State, parent: Ino, name: &OsStr) -> Result<Location> {
        let name = name.to_str().ok_or(Errno::ENOENT)?;
        let units: Vec<u16> = name.encode_utf16().collect();
        let key = self.upcase.key(&units);
        let dir = Self::dir_of(st, parent)?;
        let slot = self.load_dir(st, dir)?.find(&key).ok_or(Errno::ENOENT)?;
        Ok(Location { dir, slot })
    }

    fn attr_of(&self, ino: Ino, meta: &FileMeta) -> Attr {
        let dir = meta.is_dir();
        let mut perm = if dir {
            0o777 & !self.opts.dmask
        } else {
            0o666 & !self.opts.fmask
        };
        if meta.attr & ATTR_READ_ONLY != 0 {
            perm &= !0o222;
        }
        let cs = self.cs();
        Attr {
            ino,
            size: meta.data_len,
            blocks: meta.data_len.div_ceil(cs) * (cs / 512),
            atime: meta.accessed,
            mtime: meta.modified,
            ctime: meta.modified,
            crtime: meta.created,
            kind: if dir { FileKind::Dir } else { FileKind::File },
            perm: perm as u16,
            nlink: if dir { 2 } else { 1 },
            uid: self.opts.uid,
            gid: self.opts.gid,
            rdev: 0,
            blksize: self.geo.cluster_size.min(1 << 20),
        }
    }

    fn root_attr(&self, st: &State) -> Attr {
        let len = st
            .known
            .get(&self.geo.root_cluster)
            .map_or(self.cs(), |i| i.len);
        Attr {
            ino: Ino::ROOT,
            size: len,
            blocks: len / 512,
            atime: self.mounted_at,
            mtime: self.mounted_at,
            ctime: self.mounted_at,
            crtime: self.mounted_at,
            kind: FileKind::Dir,
            perm: (0o777 & !self.opts.dmask) as u16,
            nlink: 2,
            uid: self.opts.uid,
            gid: self.opts.gid,
            rdev: 0,
            blksize: self.geo.cluster_size.min(1 << 20),
        }
    }

    fn getattr_locked(&self, st: &mut State, ino: Ino) -> Result<Attr> {
        if ino == Ino::ROOT {
            return Ok(self.root_attr(st));
        }
        let meta = self.set_of(st, ino)?.meta();
        Ok(self.attr_of(ino, &meta))
    }

    // ----- clusters ----------------------------------------------------------------------

    /// The clusters of a stream: its first cluster, whether it is contiguous, its length.
    /// Clusters outside the heap, a broken chain, or clusters the bitmap says are free:
    /// `EIO`.
    fn extents_of(
        &self,
        st: &mut State,
        first: u32,
        contiguous: bool,
        len: u64,
    ) -> Result<Extents> {
        let need = len.div_ceil(self.cs());
        if need == 0 {
            return Ok(Extents::default());
        }
        if need > self.geo.cluster_count as u64 {
            return Err(Errno::EIO);
        }
        let runs = if contiguous {
            if !self.geo.is_valid_run(first, need) {
                return Err(Errno::EIO);
            }
            vec![(first, need as u32)]
        } else {
            st.fat.chain_runs(first, Some(need))?
        };
        for &(s, l) in &runs {
            if !st.bitmap.all_used(s, l)? {
                return Err(Errno::EIO);
            }
        }
        Ok(Extents::from_runs(&runs))
    }

    /// The extents of file `ino` (cached in its node).
    fn file_extents(&self, st: &mut State, ino: Ino) -> Result<Extents> {
        if let Some(e) = Self::node(st, ino)?.extents.clone() {
            return Ok(e);
        }
        let meta = self.set_of(st, ino)?.meta();
        if meta.valid_len > meta.data_len {
            return Err(Errno::EIO);
        }
        let extents = self.extents_of(st, meta.first_cluster, meta.contiguous(), meta.data_len)?;
        st.nodes.get_mut(&ino).ok_or(Errno::ENOENT)?.extents = Some(extents.clone());
        Ok(extents)
    }

    /// Adds `add` clusters to `extents`; returns whether they are still one contiguous run
    /// without a FAT chain. `may_be_contiguous` false (the root) always writes the chain.
    /// `ENOSPC` with nothing changed if the volume has too few free clusters.
    fn extend(
        &self,
        st: &mut State,
        extents: &mut Extents,
        contiguous: bool,
        add: u32,
        may_be_contiguous: bool,
    ) -> Result<bool> {
        if add == 0 {
            return Ok(contiguous);
        }
        if add > st.bitmap.free() {
            return Err(Errno::ENOSPC);
        }
        match extents.last() {
            None => {
                if may_be_contiguous {
                    if let Some(start) = st.bitmap.find_run(add)? {
                        st.bitmap.mark_used(start, add)?;
                        extents.push(start, add);
                        return Ok(true);
                    }
                }
                let runs = st.bitmap.allocate(add)?;
                st.fat.write_chain(&runs)?;
                for (s, l) in runs {
                    extents.push(s, l);
                }
                Ok(false)
            }
            Some(last) => {
                let in_place = last
                    .checked_add(1)
                    .filter(|&n| st.bitmap.all_free(n, add).unwrap_or(false));
                if let Some(next) = in_place {
                    st.bitmap.mark_used(next, add)?;
                    if !contiguous {
                        st.fat.write_chain(&[(last, 1), (next, add)])?;
                    }
                    extents.push(next, add);
                    return Ok(contiguous);
                }
                let runs = st.bitmap.allocate(add)?;
                if contiguous {
                    // No room after it: the file becomes a FAT chain.
                    let mut all: Vec<(u32, u32)> = extents.runs().collect();
                    all.extend(&runs);
                    st.fat.write_chain(&all)?;
                } else {
                    let mut all = vec![(last, 1)];
                    all.extend(&runs);
                    st.fat.write_chain(&all)?;
                }
                for (s, l) in runs {
                    extents.push(s, l);
                }
                Ok(false)
            }
        }
    }

    fn free_runs(st: &mut State, runs: &[(u32, u32)]) -> Result<()> {
        for &(s, l) in runs {
            st.bitmap.mark_free(s, l)?;
        }
        Ok(())
    }

    /// Copies between `buf` and the file's clusters at `offset` (all inside its allocation).
    fn transfer(&self, extents: &Extents, offset: u64, mut buf: Transfer<'_>) -> Result<()> {
        let cs = self.cs();
        let total = match &buf {
            Transfer::Read(b) => b.len() as u64,
            Transfer::Write(b) => b.len() as u64,
            Transfer::Zero(n) => *n,
        };
        let mut done = 0u64;
        while done < total {
            let pos = offset + done;
            let index = u32::try_from(pos / cs).map_err(|_| Errno::EIO)?;
            let (disk, following) = extents.locate(index).ok_or(Errno::EIO)?;
            let within = pos % cs;
            let n = (following as u64 * cs - within).min(total - done);
            let at = self.geo.cluster_offset(disk) + within;
            let (d, e) = (done as usize, (done + n) as usize);
            match &mut buf {
                Transfer::Read(b) => self.dev.read_exact_at(&mut b[d..e], at)?,
                Transfer::Write(b) => self.dev.write_all_at(&b[d..e], at)?,
                Transfer::Zero(_) => self.zero(at, n)?,
            }
            done += n;
        }
        Ok(())
    }

    /// Zeroes `len` bytes at `at`: discarded where the device promises zeros, else written.
    fn zero(&self, at: u64, len: u64) -> Result<()> {
        if len >= 64 << 10 && self.dev.discard_zeroes() && self.dev.discard(at, len).is_ok() {
            return Ok(());
        }
        let zeros = vec![0u8; len.min(1 << 20) as usize];
        let mut z = 0;
        while z < len {
            let k = (zeros.len() as u64).min(len - z);
            self.dev.write_all_at(&zeros[..k as usize], at + z)?;
            z += k;
        }
        Ok(())
    }

    /// Reads from `ino` at `offset`; bytes past ValidDataLength are zeros.
    fn read_locked(&self, st: &mut State, ino: Ino, offset: u64, buf: &mut [u8]) -> Result<usize> {
        let meta = self.set_of(st, ino)?.meta();
        if meta.is_dir() {
            return Err(Errno::EISDIR);
        }
        let extents = self.file_extents(st, ino)?;
        if offset >= meta.data_len {
            return Ok(0);
        }
        let n = (meta.data_len - offset).min(buf.len() as u64) as usize;
        let valid = meta.valid_len.saturating_sub(offset).min(n as u64) as usize;
        self.transfer(&extents, offset, Transfer::Read(&mut buf[..valid]))?;
        buf[valid..n].fill(0);
        Ok(n)
    }

    fn write_locked(&self, st: &mut State, ino: Ino, offset: u64, data: &[u8]) -> Result<usize> {
        let set = self.set_of(st, ino)?;
        let mut meta = set.meta();
        if meta.is_dir() {
            return Err(Errno::EISDIR);
        }
        if data.is_empty() {
            return Ok(0);
        }
        let cs = self.cs();
        let end = offset.checked_add(data.len() as u64).ok_or(Errno::EFBIG)?;
        let mut extents = self.file_extents(st, ino)?;
        // A write that does not fit writes what fits, as on any POSIX filesystem.
        let room = (extents.clusters() as u64 + st.bitmap.free() as u64) * cs;
        let end = end.min(room);
        if end <= offset {
            return Err(Errno::ENOSPC);
        }
        let data = &data[..(end - offset) as usize];
        let need = end.div_ceil(cs) as u32;
        let add = need.saturating_sub(extents.clusters());
        let contiguous = self.extend(st, &mut extents, meta.contiguous(), add, true)?;
        self.set_allocation(&mut meta, &extents, contiguous);
        let node = st.nodes.get_mut(&ino).ok_or(Errno::ENOENT)?;
        node.extents = Some(extents.clone());
        if offset > meta.valid_len {
            self.transfer(
                &extents,
                meta.valid_len,
                Transfer::Zero(offset - meta.valid_len),
            )?;
        }
        let written = self.transfer(&extents, offset, Transfer::Write(data));
        if written.is_ok() {
            meta.valid_len = meta.valid_len.max(end);
            meta.data_len = meta.data_len.max(end);
        }
        touch(&mut meta);
        let mut set = set;
        set.set_meta(&meta);
        self.put_set(st, ino, set)?;
        written.map(|()| data.len())
    }

    /// Records the allocation in a set's stream fields.
    fn set_allocation(&self, meta: &mut FileMeta, extents: &Extents, contiguous: bool) {
        match extents.runs().next() {
            Some((first, _)) => {
                meta.first_cluster = first;
                meta.flags =
                    FLAG_ALLOCATION_POSSIBLE | if contiguous { FLAG_NO_FAT_CHAIN } else { 0 };
            }
            None => {
                meta.first_cluster = 0;
                meta.flags = FLAG_ALLOCATION_POSSIBLE;
            }
        }
    }

    /// Changes a file's size: frees clusters past it, or allocates up to it (the new part
    /// lies past ValidDataLength, so it reads as zeros without being written).
    fn resize(&self, st: &mut State, ino: Ino, new_size: u64) -> Result<()> {
        let mut set = self.set_of(st, ino)?;
        let mut meta = set.meta();
        if meta.is_dir() {
            return Err(Errno::EISDIR);
        }
        let cs = self.cs();
        let keep = new_size.div_ceil(cs);
        if keep > self.geo.cluster_count as u64 {
            return Err(Errno::EFBIG);
        }
        let keep = keep as u32;
        let mut extents = self.file_extents(st, ino)?;
        if new_size < meta.data_len {
            let freed = extents.truncate(keep);
            if !meta.contiguous() {
                if let Some(last) = extents.last() {
                    st.fat.set(last, fat::END)?;
                }
            }
            Self::free_runs(st, &freed)?;
            let contiguous = meta.contiguous();
            self.set_allocation(&mut meta, &extents, contiguous);
            meta.valid_len = meta.valid_len.min(new_size);
        } else if new_size > meta.data_len {
            let add = keep.saturating_sub(extents.clusters());
            let contiguous = self.extend(st, &mut extents, meta.contiguous(), add, true)?;
            self.set_allocation(&mut meta, &extents, contiguous);
        } else {
            return Ok(());
        }
        meta.data_len = new_size;
        touch(&mut meta);
        st.nodes.get_mut(&ino).ok_or(Errno::ENOENT)?.extents = Some(extents);
        set.set_meta(&meta);
        self.put_set(st, ino, set)
    }

    // ----- names -------------------------------------------------------------------------

    fn lookup_locked(&self, st: &mut State, parent: Ino, name: &OsStr) -> Result<Entry> {
        let loc = self.find_child(st, parent, name)?;
        self.lookup_at(st, loc)
    }

    fn create_locked(&self, st: &mut State, parent: Ino, name: &OsStr) -> Result<Entry> {
        let units = entry_set::check_name(name.to_str().ok_or(Errno::EINVAL)?)?;
        let dir = Self::dir_of(st, parent)?;
        let hash = entry_set::name_hash(&self.upcase.key(&units));
        let set = EntrySet::new(&units, hash, &FileMeta::new(ATTR_ARCHIVE));
        let loc = self.add_set(st, dir, &units, set)?;
        self.lookup_at(st, loc)
    }

    fn mkdir_locked(&self, st: &mut State, parent: Ino, name: &OsStr) -> Result<Entry> {
        let units = entry_set::check_name(name.to_str().ok_or(Errno::EINVAL)?)?;
        let dir = Self::dir_of(st, parent)?;
        if self
            .load_dir(st, dir)?
            .find(&self.upcase.key(&units))
            .is_some()
        {
            return Err(Errno::EEXIST);
        }
        let mut extents = Extents::default();
        let contiguous = self.extend(st, &mut extents, false, 1, true)?;
        let cluster = extents.last().expect("one cluster");
        let mut meta = FileMeta::new(ATTR_DIRECTORY);
        self.set_allocation(&mut meta, &extents, contiguous);
        meta.data_len = self.cs();
        meta.valid_len = self.cs();
        let hash = entry_set::name_hash(&self.upcase.key(&units));
        let added = self
            .zero_cluster(cluster)
            .and_then(|()| self.add_set(st, dir, &units, EntrySet::new(&units, hash, &meta)));
        match added {
            Ok(loc) => self.lookup_at(st, loc),
            Err(e) => {
                st.bitmap.mark_free(cluster, 1)?;
                Err(e)
            }
        }
    }

    /// Removes a name; an open file becomes an orphan until its last close.
    fn unlink_locked(
        &self,
        st: &mut State,
        parent: Ino,
        name: &OsStr,
        want_dir: bool,
    ) -> Result<()> {
        let loc = self.find_child(st, parent, name)?;
        let set = self.set_at(st, loc)?;
        let meta = set.meta();
        if want_dir != meta.is_dir() {
            return Err(if want_dir {
                Errno::ENOTDIR
            } else {
                Errno::EISDIR
            });
        }
        if want_dir {
            self.check_dir(st, loc.dir, &meta)?;
            self.register_dir(st, loc, &meta);
            if !self.load_dir(st, meta.first_cluster)?.is_empty() {
                return Err(Errno::ENOTEMPTY);
            }
        }
        // Where the clusters are, before the entry goes (a corrupt chain: they stay marked).
        let runs: Vec<(u32, u32)> = self
            .extents_of(st, meta.first_cluster, meta.contiguous(), meta.data_len)
            .map(|e| e.runs().collect())
            .unwrap_or_default();
        self.remove_set(st, loc)?;
        let ino = Some(Self::ino_at(st, loc)).filter(|i| st.nodes.contains_key(i));
        Self::drop_ino(st, loc);
        let in_use = ino
            .and_then(|i| st.nodes.get(&i))
            .is_some_and(|n| n.opens > 0);
        if let Some(ino) = ino {
            let node = st.nodes.get_mut(&ino).expect("present");
            node.loc = None;
            node.orphan = Some(Box::new(set.clone()));
            node.dir = None;
        }
        if want_dir {
            Self::forget_dir(st, meta.first_cluster);
            st.known.remove(&meta.first_cluster);
        }
        if !in_use {
            Self::free_runs(st, &runs)?;
            if let Some(ino) = ino {
                let node = st.nodes.get_mut(&ino).expect("present");
                node.orphan = Some(Box::new(emptied(&set)));
                node.extents = None;
            }
        }
        Ok(())
    }

    /// Drops a node nobody references any more, freeing an orphan's clusters.
    fn maybe_drop(&self, st: &mut State, ino: Ino) -> Result<()> {
        if ino == Ino::ROOT {
            return Ok(());
        }
        let Some(node) = st.nodes.get(&ino) else {
            return Ok(());
        };
        if node.opens > 0 {
            return Ok(());
        }
        if let Some(orphan) = node.orphan.clone() {
            let meta = orphan.meta();
            if let Ok(extents) =
                self.extents_of(st, meta.first_cluster, meta.contiguous(), meta.data_len)
            {
                let runs: Vec<(u32, u32)> = extents.runs().collect();
                Self::free_runs(st, &runs)?;
            }
            let node = st.nodes.get_mut(&ino).expect("present");
            node.orphan = Some(Box::new(emptied(&orphan)));
            node.extents = None;
        }
        if st.nodes.get(&ino).expect("present").lookups == 0 {
            st.nodes.remove(&ino);
        }
        Ok(())
    }

    fn rename_locked(
        &self,
        st: &mut State,
        parent: Ino,
        name: &OsStr,
        new_parent: Ino,
        new_name: &OsStr,
        flags: u32,
    ) -> Result<()> {
        let units = entry_set::check_name(new_name.to_str().ok_or(Errno::EINVAL)?)?;
        let src_loc = self.find_child(st, parent, name)?;
        let src_set = self.set_at(st, src_loc)?;
        let src = src_set.meta();
        let src_name = self.load_dir(st, src_loc.dir)?.entries[&src_loc.slot]
            .name
            .clone();
        let dst_dir = Self::dir_of(st, new_parent)?;
        let key = self.upcase.key(&units);
        let dst_slot = self.load_dir(st, dst_dir)?.find(&key);
        if src.is_dir() {
            self.check_dir(st, src_loc.dir, &src)?;
            self.register_dir(st, src_loc, &src);
            if dst_dir != src_loc.dir && self.is_ancestor(st, src.first_cluster, dst_dir)? {
                return Err(Errno::EINVAL);
            }
        }
        match dst_slot {
            Some(slot)
                if (Location { dir: dst_dir, slot }) == src_loc
                    && src_name.encode_utf16().eq(units.iter().copied()) =>
            {
                return Ok(());
            }
            // Same entry, new spelling (a case change): rewritten below.
            Some(slot) if (Location { dir: dst_dir, slot }) == src_loc => {}
            Some(slot) => {
                if flags & RENAME_NOREPLACE != 0 {
                    return Err(Errno::EEXIST);
                }
                let dst = self.set_at(st, Location { dir: dst_dir, slot })?.meta();
                match (src.is_dir(), dst.is_dir()) {
                    (true, false) => return Err(Errno::ENOTDIR),
                    (false, true) => return Err(Errno::EISDIR),
                    _ => {}
                }
                self.unlink_locked(st, new_parent, new_name, dst.is_dir())?;
            }
            None => {}
        }
        self.remove_set(st, src_loc)?;
        let hash = entry_set::name_hash(&key);
        let new_loc = match self.add_set(st, dst_dir, &units, src_set.renamed(&units, hash)) {
            Ok(loc) => loc,
            Err(e) => {
                // Put the source back so nothing is lost.
                let old: Vec<u16> = src_name.encode_utf16().collect();
                let old_hash = entry_set::name_hash(&self.upcase.key(&old));
                let back = self.add_set(st, src_loc.dir, &old, src_set.renamed(&old, old_hash))?;
                Self::move_ino(st, src_loc, back);
                return Err(e);
            }
        };
        Self::move_ino(st, src_loc, new_loc);
        if src.is_dir() {
            self.register_dir(st, new_loc, &src);
        }
        Ok(())
    }

    // ----- write-back --------------------------------------------------------------------

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

/// Reads the first `len` bytes of the clusters of `extents`.
fn read_extents(
    dev: &dyn BlockDevice,
    extents: &Extents,
    cluster_shift: u32,
    offset_of: impl Fn(u32) -> u64,
    len: u64,
) -> Result<Vec<u8>> {
    let mut bytes = vec![0u8; len as usize];
    let mut done = 0u64;
    for (disk, count) in extents.runs() {
        if done >= len {
            break;
        }
        let n = ((count as u64) << cluster_shift).min(len - done);
        dev.read_exact_at(
            &mut bytes[done as usize..(done + n) as usize],
            offset_of(disk),
        )?;
        done += n;
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

fn touch(meta: &mut FileMeta) {
    let now = SystemTime::now();
    meta.modified = now;
    meta.accessed = now;
    meta.attr |= ATTR_ARCHIVE;
}

impl FileSystem for ExFatFs {
    /// Every call takes one lock and every write is on the device when it returns: one
    /// serving thread loses nothing, and flush has nothing to do. Nothing but this driver
    /// changes the volume while it is mounted (60 s caches). exFAT has no owners: access is
    /// checked by the kernel against the `uid=`/`gid=`/mask view.
    fn capabilities(&self) -> Capabilities {
        Capabilities {
            cache: CachePolicy {
                attr_ttl: Duration::from_secs(60),
                entry_ttl: Duration::from_secs(60),
            },
            flush_is_noop: true,
            one_thread_suffices: true,
            ..Capabilities::default()
        }
    }

    /// Writes everything back, records PercentInUse and clears VolumeDirty.
    fn destroy(&self) {
        let mut st = self.lock();
        if self.opts.read_only {
            return;
        }
        let result = self.sync_locked(&mut st).and_then(|()| {
            let count = self.geo.cluster_count as u64;
            let used = count - st.bitmap.free() as u64;
            let percent = (used * 100 / count.max(1)) as u8;
            self.dev.write_all_at(&[percent], boot::PERCENT_OFFSET)?;
            self.set_volume_dirty(false)
        });
        if let Err(e) = result {
            eprintln!("exfat: writing the volume back at unmount failed: {e}");
        }
    }

    fn lookup(&self, _ctx: &Context, parent: Ino, name: &OsStr) -> Result<Entry> {
        let mut st = self.lock();
        self.lookup_locked(&mut st, parent, name)
    }

    fn forget(&self, ino: Ino, count: u64) {
        let mut st = self.lock();
        if let Some(node) = st.nodes.get_mut(&ino) {
            node.lookups = node.lookups.saturating_sub(count);
        }
        let dropped = self.maybe_drop(&mut st, ino);
        if let Err(e) = self.committed(&mut st, dropped) {
            eprintln!("exfat: freeing unlinked file {}: {e}", ino.0);
        }
    }

    fn getattr(&self, _ctx: &Context, ino: Ino, _fh: Option<Fh>) -> Result<Attr> {
        let mut st = self.lock();
        self.getattr_locked(&mut st, ino)
    }

    fn setattr(&self, _ctx: &Context, ino: Ino, set: &SetAttr) -> Result<Attr> {
        let mut st = self.lock();
        let result = (|| -> Result<Attr> {
            if set.uid.is_some_and(|uid| uid != self.opts.uid)
                || set.gid.is_some_and(|g| g != self.opts.gid)
            {
                return Err(Errno::EPERM);
            }
            if ino == Ino::ROOT {
                if set.size.is_some() {
                    return Err(Errno::EISDIR);
                }
                // The root has no entry set to keep times or attributes in.
                return Ok(self.root_attr(&st));
            }
            let changes = set.size.is_some()
                || set.mode.is_some()
                || set.atime.is_some()
                || set.mtime.is_some();
            if changes {
                self.check_writable()?;
            }
            if let Some(size) = set.size {
                self.resize(&mut st, ino, size)?;
            }
            if set.mode.is_some() || set.atime.is_some() || set.mtime.is_some() {
                let mut entry = self.set_of(&mut st, ino)?;
                let mut meta = entry.meta();
                if let Some(mode) = set.mode {
                    // exFAT keeps only "read-only"; other bits come from the mount options.
                    if mode & 0o200 == 0 {
                        meta.attr |= ATTR_READ_ONLY;
                    } else {
                        meta.attr &= !ATTR_READ_ONLY;
                    }
                }
                if let Some(t) = set.atime {
                    meta.accessed = t.resolve();
                }
                if let Some(t) = set.mtime {
                    meta.modified = t.resolve();
                }
                entry.set_meta(&meta);
                self.put_set(&mut st, ino, entry)?;
            }
            self.getattr_locked(&mut st, ino)
        })();
        self.committed(&mut st, result)
    }

    fn mknod(
        &self,
        ctx: &Context,
        parent: Ino,
        name: &OsStr,
        mode: u32,
        _rdev: u32,
    ) -> Result<Entry> {
        if FileKind::from_mode(mode) != Some(FileKind::File) {
            return Err(Errno::EPERM);
        }
        let (entry, opened) = self.create(ctx, parent, name, mode, libc::O_RDONLY)?;
        self.release(ctx, entry.attr.ino, opened.fh)?;
        Ok(entry)
    }

    fn mkdir(&self, _ctx: &Context, parent: Ino, name: &OsStr, _mode: u32) -> Result<Entry> {
        self.check_writable()?;
        let mut st = self.lock();
        let result = self.mkdir_locked(&mut st, parent, name);
        self.committed(&mut st, result)
    }

    fn unlink(&self, _ctx: &Context, parent: Ino, name: &OsStr) -> Result<()> {
        self.check_writable()?;
        let mut st = self.lock();
        let result = self.unlink_locked(&mut st, parent, name, false);
        self.committed(&mut st, result)
    }

    fn rmdir(&self, _ctx: &Context, parent: Ino, name: &OsStr) -> Result<()> {
        self.check_writable()?;
        let mut st = self.lock();
        let result = self.unlink_locked(&mut st, parent, name, true);
        self.committed(&mut st, result)
    }

    /// Renames within and across directories; `RENAME_NOREPLACE` is honoured,
    /// `RENAME_EXCHANGE` is not supported (`EINVAL`).
    fn rename(
        &self,
        _ctx: &Context,
        parent: Ino,
        name: &OsStr,
        new_parent: Ino,
        new_name: &OsStr,
        flags: u32,
    ) -> Result<()> {
        self.check_writable()?;
        if flags & !RENAME_NOREPLACE != 0 || flags & RENAME_EXCHANGE != 0 {
            return Err(Errno::EINVAL);
        }
        let mut st = self.lock();
        let result = self.rename_locked(&mut st, parent, name, new_parent, new_name, flags);
        self.committed(&mut st, result)
    }

    fn open(&self, _ctx: &Context, ino: Ino, flags: i32) -> Result<Opened> {
        let mut st = self.lock();
        if ino == Ino::ROOT || self.set_of(&mut st, ino)?.meta().is_dir() {
            return Err(Errno::EISDIR);
        }
        if flags & libc::O_ACCMODE != libc::O_RDONLY {
            self.check_writable()?;
        }
        st.nodes.get_mut(&ino).ok_or(Errno::ENOENT)?.opens += 1;
        Ok(Opened {
            fh: Fh(0),
            keep_cache: true,
            direct_io: false,
        })
    }

    fn read(
        &self,
        _ctx: &Context,
        ino: Ino,
        _fh: Fh,
        offset: u64,
        buf: &mut [u8],
    ) -> Result<usize> {
        let mut st = self.lock();
        self.read_locked(&mut st, ino, offset, buf)
    }

    fn write(&self, _ctx: &Context, ino: Ino, _fh: Fh, offset: u64, data: &[u8]) -> Result<usize> {
        self.check_writable()?;
        let mut st = self.lock();
        let result = self.write_locked(&mut st, ino, offset, data);
        self.committed(&mut st, result)
    }

    fn release(&self, _ctx: &Context, ino: Ino, _fh: Fh) -> Result<()> {
        let mut st = self.lock();
        if let Some(node) = st.nodes.get_mut(&ino) {
            node.opens = node.opens.saturating_sub(1);
        }
        let result = self.maybe_drop(&mut st, ino);
        self.committed(&mut st, result)
    }

    fn fsync(&self, _ctx: &Context, _ino: Ino, _fh: Fh, _datasync: bool) -> Result<()> {
        let mut st = self.lock();
        self.sync_locked(&mut st)
    }

    fn fsyncdir(&self, _ctx: &Context, _ino: Ino, _fh: Fh, _datasync: bool) -> Result<()> {
        let mut st = self.lock();
        self.sync_locked(&mut st)
    }

    fn opendir(&self, _ctx: &Context, ino: Ino) -> Result<Fh> {
        let mut st = self.lock();
        let dir = Self::dir_of(&st, ino)?;
        self.load_dir(&mut st, dir)?;
        Ok(Fh(0))
    }

    fn readdir(
        &self,
        _ctx: &Context,
        ino: Ino,
        _fh: Fh,
        offset: u64,
        sink: &mut dyn FnMut(DirEntry<'_>) -> bool,
    ) -> Result<()> {
        let mut st = self.lock();
        let dir_id = Self::dir_of(&st, ino)?;
        for (i, name) in [".", ".."].iter().enumerate() {
            if offset <= i as u64
                && !sink(DirEntry {
                    ino: if i == 0 { ino } else { Ino::ROOT },
                    next_offset: i as u64 + 1,
                    kind: FileKind::Dir,
                    name: OsStr::new(name),
                })
            {
                return Ok(());
            }
        }
        let first_slot = offset.saturating_sub(2) as u32;
        let listed: Vec<(u32, String, bool)> = self
            .load_dir(&mut st, dir_id)?
            .entries
            .range(first_slot..)
            .map(|(&slot, n)| {
                (
                    slot,
                    n.name.clone(),
                    n.set.as_ref().is_some_and(|s| s.meta().is_dir()),
                )
            })
            .collect();
        for (slot, name, is_dir) in listed {
            let entry_ino = Self::ino_at(&mut st, Location { dir: dir_id, slot });
            if !sink(DirEntry {
                ino: entry_ino,
                next_offset: slot as u64 + 3,
                kind: if is_dir {
                    FileKind::Dir
                } else {
                    FileKind::File
                },
                name: OsStr::new(&name),
            }) {
                break;
            }
        }
        Ok(())
    }

    fn statfs(&self, _ctx: &Context) -> Result<StatFs> {
        let st = self.lock();
        let free = st.bitmap.free() as u64;
        Ok(StatFs {
            blocks: self.geo.cluster_count as u64,
            blocks_free: free,
            blocks_available: free,
            files: 0,
            files_free: 0,
            block_size: self.geo.cluster_size,
            name_max: 255,
            fragment_size: self.geo.cluster_size,
        })
    }

    fn create(
        &self,
        _ctx: &Context,
        parent: Ino,
        name: &OsStr,
        _mode: u32,
        _flags: i32,
    ) -> Result<(Entry, Opened)> {
        self.check_writable()?;
        let mut st = self.lock();
        let result = self.create_locked(&mut st, parent, name).and_then(|entry| {
            st.nodes.get_mut(&entry.attr.ino).ok_or(Errno::EIO)?.opens += 1;
            Ok(entry)
        });
        let entry = self.committed(&mut st, result)?;
        Ok((
            entry,
            Opened {
                fh: Fh(0),
                keep_cache: true,
                direct_io: false,
            },
        ))
    }
}
