//! qcow2 (versions 2 and 3), read-write, after qemu's `docs/interop/qcow2.txt`.
//!
//! Guest clusters map through an L1 table (kept whole in memory, at most 32 MiB as in qemu)
//! to L2 tables, cached in an LRU. Every host cluster carries a refcount in refcount blocks
//! (also an LRU) indexed by the refcount table; allocation finds the lowest free cluster,
//! creates refcount blocks (self-describing) and grows the refcount table when needed, and
//! discard drops refcounts, so a cleanly closed image passes `qemu-img check` with no errors
//! and no leaks.
//!
//! Write ordering keeps a crash to leaks, never to references to free clusters: data is
//! written before its L2 entry, a new L2 table and a new refcount block are zeroed on disk
//! before anything points at them, and dirty refcount blocks are written before any L2
//! table or L1 entry that relies on them.
//!
//! Not supported (refused at open with a message): encryption, external data files,
//! extended L2 entries (subclusters), zstd compression; images with internal snapshots or
//! dirty/corrupt flags or persistent bitmaps open read-only only. Compressed clusters are
//! read; writes over them allocate a normal cluster (qemu does the same).

use crate::error::FormatError;
use crate::storage::{Lru, Storage};
use crate::{be32, be64, open_backing, Ctx, Format, ImageDevice, ImageInfo};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use vudev::{BlockDevice, Errno, Extent, ExtentList, FileDevice, Result};

/// "QFI\xfb".
pub const MAGIC: u32 = 0x5146_49fb;
const NAME: &str = "qcow2";
const OFFSET_MASK: u64 = 0x00ff_ffff_ffff_fe00;
const REFT_OFFSET_MASK: u64 = 0xffff_ffff_ffff_fe00;
const COPIED: u64 = 1 << 63;
const COMPRESSED: u64 = 1 << 62;
const ZERO: u64 = 1;
const MAX_L1_BYTES: u64 = 32 << 20;
const MAX_REFTABLE_BYTES: u64 = 8 << 20;
const EXT_BACKING_FORMAT: u32 = 0xe279_2aca;
const EXT_FEATURE_TABLE: u32 = 0x6803_f857;
const EXT_CRYPTO: u32 = 0x0537_be77;
const EXT_DATA_FILE: u32 = 0x4441_5441;
const INCOMPAT_DIRTY: u64 = 1;
const INCOMPAT_CORRUPT: u64 = 2;
const INCOMPAT_DATA_FILE: u64 = 4;
const INCOMPAT_COMPRESSION: u64 = 8;
const INCOMPAT_EXTL2: u64 = 16;
const AUTOCLEAR_BITMAPS: u64 = 1;
/// Default memory for cached L2 tables (qemu's default is 1 MiB; a little more helps
/// random access on big disks).
pub const DEFAULT_L2_CACHE_BYTES: usize = 4 << 20;
/// Default memory for cached refcount blocks.
pub const DEFAULT_REFCOUNT_CACHE_BYTES: usize = 1 << 20;

/// Where a guest cluster's data is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Map {
    /// Not in this image: the backing file's, or zeros.
    Unallocated,
    /// Reads as zeros; `Some(host)` when a cluster stays preallocated for it.
    Zero(Option<u64>),
    /// A normal cluster at this host offset.
    Data(u64),
    /// Compressed data: host offset and byte length.
    Compressed(u64, usize),
}

struct State {
    l1: Vec<u64>,
    l1_offset: u64,
    rct: Vec<u64>,
    rct_offset: u64,
    rct_clusters: u64,
    l2: Lru<Vec<u64>>,
    rb: Lru<Vec<u8>>,
    free_hint: u64,
    /// The last decompressed cluster, by its L2 entry.
    inflated: Option<(u64, Vec<u8>)>,
}

/// A newly allocated cluster of a write run: the L2 entry to set once its data is written.
struct Fresh {
    l2off: u64,
    g: u64,
    h: u64,
    map: Map,
}

/// Where a grown refcount table goes (see `Qcow2::plan_reftable`).
struct NewReftable {
    /// Entries of the grown table.
    entries: u64,
    /// Its first cluster.
    start: u64,
    /// Its clusters.
    clusters: u64,
    /// The cluster past the table and the new refcount blocks that follow it.
    end: u64,
    /// The refcount table entries that get a new block, in the order of the blocks.
    missing: Vec<u64>,
}

/// Pieces of one write that go to host-contiguous places: written with one call.
struct Run {
    host: u64,
    at: usize,
    len: usize,
    fresh: Vec<Fresh>,
}

/// A qcow2 image as a block device.
pub struct Qcow2 {
    file: Storage,
    backing: Option<Arc<dyn ImageDevice>>,
    backing_name: Option<String>,
    version: u32,
    cluster_bits: u32,
    cs: u64,
    l2_entries: u64,
    size: u64,
    refcount_order: u32,
    rb_entries: u64,
    read_only: bool,
    st: Mutex<State>,
}

impl std::fmt::Debug for Qcow2 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Qcow2")
            .field("file", &self.file.name())
            .field("version", &self.version)
            .field("cluster_size", &self.cs)
            .field("size", &self.size)
            .field("backing", &self.backing_name)
            .finish()
    }
}

/// Cache occupancy, for tests of the memory bound.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CacheStats {
    /// L2 tables cached now.
    pub l2_tables: usize,
    /// The most L2 tables the cache holds.
    pub l2_capacity: usize,
    /// Refcount blocks cached now.
    pub refcount_blocks: usize,
    /// The most refcount blocks the cache holds.
    pub refcount_capacity: usize,
    /// Bytes of one cached table (the cluster size).
    pub table_bytes: usize,
}

fn rc_get(block: &[u8], i: usize, order: u32) -> u64 {
    match order {
        0..=2 => {
            let bits = 1usize << order;
            let per = 8 / bits;
            let shift = (i % per) * bits;
            u64::from((block[i / per] >> shift) & ((1u16 << bits) - 1) as u8)
        }
        3 => u64::from(block[i]),
        4 => u64::from(u16::from_be_bytes([block[2 * i], block[2 * i + 1]])),
        5 => u64::from(be32(block, 4 * i)),
        _ => be64(block, 8 * i),
    }
}

fn rc_set(block: &mut [u8], i: usize, order: u32, v: u64) {
    match order {
        0..=2 => {
            let bits = 1usize << order;
            let per = 8 / bits;
            let shift = (i % per) * bits;
            let mask = (((1u16 << bits) - 1) as u8) << shift;
            block[i / per] = (block[i / per] & !mask) | (((v as u8) << shift) & mask);
        }
        3 => block[i] = v as u8,
        4 => block[2 * i..2 * i + 2].copy_from_slice(&(v as u16).to_be_bytes()),
        5 => block[4 * i..4 * i + 4].copy_from_slice(&(v as u32).to_be_bytes()),
        _ => block[8 * i..8 * i + 8].copy_from_slice(&v.to_be_bytes()),
    }
}

fn to_be_bytes(entries: &[u64]) -> Vec<u8> {
    entries.iter().flat_map(|e| e.to_be_bytes()).collect()
}

fn from_be_bytes(bytes: &[u8]) -> Vec<u64> {
    bytes.chunks_exact(8).map(|c| be64(c, 0)).collect()
}

/// The fields of the qcow2 header that opening an image uses.
struct Header {
    version: u32,
    cluster_bits: u32,
    /// The cluster size, `1 << cluster_bits`.
    cs: u64,
    incompat: u64,
    autoclear: u64,
    refcount_order: u32,
    header_len: u32,
    /// Byte 104 (v3 with a long enough header): the compression type.
    compression_type: u8,
    crypt_method: u32,
    size: u64,
    l1_size: u64,
    l1_offset: u64,
    rct_offset: u64,
    rct_clusters: u64,
    nb_snapshots: u32,
    bf_offset: u64,
    bf_size: u64,
}

fn corrupt(path: &Path, why: impl Into<String>) -> FormatError {
    FormatError::corrupt(path, NAME, why)
}

fn unsupported(path: &Path, what: &str) -> FormatError {
    FormatError::unsupported(path, NAME, what)
}

impl Header {
    /// Reads the header at the start of `file`, refusing a wrong magic, version, cluster
    /// size, header length or refcount width.
    fn read(file: &Storage, path: &Path) -> std::result::Result<Header, FormatError> {
        let flen = file.len();
        if flen < 72 {
            return Err(corrupt(path, format!("truncated header ({flen} bytes)")));
        }
        let mut h = vec![0u8; 112];
        file.read_at(&mut h, 0)
            .map_err(|e| FormatError::io(path, e))?;
        if be32(&h, 0) != MAGIC {
            return Err(corrupt(path, "no QFI\\xfb magic"));
        }
        let version = be32(&h, 4);
        if version != 2 && version != 3 {
            return Err(unsupported(path, &format!("version {version}")));
        }
        let cluster_bits = be32(&h, 20);
        if !(9..=21).contains(&cluster_bits) {
            return Err(corrupt(
                path,
                format!("cluster_bits {cluster_bits} outside 9..=21"),
            ));
        }
        let cs = 1u64 << cluster_bits;
        let (incompat, autoclear, refcount_order, header_len) = if version == 3 {
            if flen < 104 {
                return Err(corrupt(path, format!("truncated v3 header ({flen} bytes)")));
            }
            (be64(&h, 72), be64(&h, 88), be32(&h, 96), be32(&h, 100))
        } else {
            (0, 0, 4, 72)
        };
        if header_len < 72 || u64::from(header_len) > cs || (version == 3 && header_len < 104) {
            return Err(corrupt(path, format!("header length {header_len}")));
        }
        if refcount_order > 6 {
            return Err(corrupt(path, format!("refcount_order {refcount_order}")));
        }
        Ok(Header {
            version,
            cluster_bits,
            cs,
            incompat,
            autoclear,
            refcount_order,
            header_len,
            compression_type: h[104],
            crypt_method: be32(&h, 32),
            size: be64(&h, 24),
            l1_size: u64::from(be32(&h, 36)),
            l1_offset: be64(&h, 40),
            rct_offset: be64(&h, 48),
            rct_clusters: u64::from(be32(&h, 56)),
            nb_snapshots: be32(&h, 60),
            bf_offset: be64(&h, 8),
            bf_size: u64::from(be32(&h, 16)),
        })
    }

    /// Refuses the features this crate does not implement: external data files,
    /// subclusters, zstd, unknown incompatible bits, encryption.
    fn refuse_unsupported(&self, path: &Path) -> std::result::Result<(), FormatError> {
        let incompat = self.incompat;
        if incompat & INCOMPAT_DATA_FILE != 0 {
            return Err(unsupported(path, "external data file"));
        }
        if incompat & INCOMPAT_EXTL2 != 0 {
            return Err(unsupported(path, "extended L2 entries (subclusters)"));
        }
        if incompat & INCOMPAT_COMPRESSION != 0
            && self.header_len > 104
            && self.compression_type != 0
        {
            return Err(unsupported(path, "zstd compression"));
        }
        let unknown = incompat & !0x1f;
        if unknown != 0 {
            return Err(unsupported(
                path,
                &format!("incompatible feature bits {unknown:#x}"),
            ));
        }
        if self.crypt_method != 0 {
            return Err(unsupported(path, "encryption"));
        }
        Ok(())
    }

    /// Checks that the L1 and refcount tables fit the disk, the size limits and the file
    /// (`flen` bytes) without overlapping, before anything reads them.
    fn check_tables(&self, flen: u64, path: &Path) -> std::result::Result<(), FormatError> {
        let Header {
            cs,
            size,
            l1_size,
            l1_offset,
            rct_offset,
            rct_clusters,
            ..
        } = *self;
        let needed_l1 = size.div_ceil(cs * (cs / 8));
        if l1_size * 8 > MAX_L1_BYTES {
            return Err(corrupt(
                path,
                format!("L1 table of {l1_size} entries is too large"),
            ));
        }
        if l1_size < needed_l1 {
            return Err(corrupt(
                path,
                format!("L1 table of {l1_size} entries is too small for a {size}-byte disk"),
            ));
        }
        if l1_size > 0
            && (l1_offset % cs != 0
                || l1_offset < cs
                || l1_offset.saturating_add(l1_size * 8) > flen)
        {
            return Err(corrupt(
                path,
                format!("L1 table at {l1_offset:#x} misplaced (file is {flen} bytes)"),
            ));
        }
        if rct_offset % cs != 0
            || rct_offset < cs
            || rct_clusters == 0
            || rct_clusters * cs > MAX_REFTABLE_BYTES.max(cs)
            || rct_offset.saturating_add(rct_clusters * cs) > flen
        {
            return Err(corrupt(
                path,
                format!("refcount table at {rct_offset:#x} ({rct_clusters} clusters) misplaced"),
            ));
        }
        if rct_offset < l1_offset + l1_size * 8 && l1_offset < rct_offset + rct_clusters * cs {
            return Err(corrupt(path, "L1 table and refcount table overlap"));
        }
        Ok(())
    }

    /// Why the image may only be read, if it may: read-write needs exact refcounts and no
    /// shared clusters (the last reason found wins).
    fn why_read_only(&self) -> Option<&'static str> {
        let mut why_ro = None;
        if self.incompat & INCOMPAT_DIRTY != 0 {
            why_ro = Some("refcounts are dirty (repair with qemu-img check -r all)");
        }
        if self.incompat & INCOMPAT_CORRUPT != 0 {
            why_ro = Some("image is marked corrupt");
        }
        if self.nb_snapshots != 0 {
            why_ro = Some("image has internal snapshots");
        }
        if self.autoclear & AUTOCLEAR_BITMAPS != 0 {
            why_ro = Some("image has persistent dirty bitmaps");
        }
        why_ro
    }

    /// Walks the header extensions in cluster 0 (`c0`): returns the backing format named
    /// there, refuses encryption and external data files.
    fn backing_format(
        &self,
        c0: &[u8],
        path: &Path,
    ) -> std::result::Result<Option<String>, FormatError> {
        let mut backing_format = None;
        let mut pos = self.header_len as usize;
        while pos + 8 <= c0.len() {
            let (ty, len) = (be32(c0, pos), be32(c0, pos + 4) as usize);
            if ty == 0 {
                break;
            }
            let data = c0.get(pos + 8..pos + 8 + len).ok_or_else(|| {
                corrupt(
                    path,
                    format!("header extension {ty:#x} runs past cluster 0"),
                )
            })?;
            match ty {
                EXT_BACKING_FORMAT => {
                    backing_format = Some(String::from_utf8_lossy(data).into_owned());
                }
                EXT_CRYPTO => return Err(unsupported(path, "encryption")),
                EXT_DATA_FILE => return Err(unsupported(path, "external data file")),
                EXT_FEATURE_TABLE => {}
                _ => {}
            }
            pos += 8 + len.div_ceil(8) * 8;
        }
        Ok(backing_format)
    }

    /// The backing file name stored in cluster 0 (`c0`), if the image has one.
    fn backing_name(
        &self,
        c0: &[u8],
        path: &Path,
    ) -> std::result::Result<Option<String>, FormatError> {
        let (bf_offset, bf_size) = (self.bf_offset, self.bf_size);
        if bf_offset == 0 || bf_size == 0 {
            return Ok(None);
        }
        if bf_size > 1023 || bf_offset.saturating_add(bf_size) > self.cs {
            return Err(corrupt(path, "backing file name outside cluster 0"));
        }
        let raw = &c0[bf_offset as usize..(bf_offset + bf_size) as usize];
        String::from_utf8(raw.to_vec())
            .map(Some)
            .map_err(|_| corrupt(path, "backing file name is not UTF-8"))
    }

    /// Reads the L1 and refcount tables whole and sets up the metadata caches, sized by
    /// the open options.
    fn read_tables(
        &self,
        file: &Storage,
        path: &Path,
        ctx: &Ctx,
    ) -> std::result::Result<State, FormatError> {
        let io = |e: Errno| FormatError::io(path, e);
        let mut l1_bytes = vec![0u8; (self.l1_size * 8) as usize];
        file.read_at(&mut l1_bytes, self.l1_offset).map_err(io)?;
        let mut rct_bytes = vec![0u8; (self.rct_clusters * self.cs) as usize];
        file.read_at(&mut rct_bytes, self.rct_offset).map_err(io)?;
        // A cache's size in tables (clusters), 0 bytes standing for the default.
        let tables = |bytes: usize, default: usize| {
            let bytes = if bytes == 0 { default } else { bytes };
            (bytes / self.cs as usize).max(2)
        };
        Ok(State {
            l1: from_be_bytes(&l1_bytes),
            l1_offset: self.l1_offset,
            rct: from_be_bytes(&rct_bytes),
            rct_offset: self.rct_offset,
            rct_clusters: self.rct_clusters,
            l2: Lru::new(tables(ctx.options.l2_cache_bytes, DEFAULT_L2_CACHE_BYTES)),
            rb: Lru::new(tables(
                ctx.options.refcount_cache_bytes,
                DEFAULT_REFCOUNT_CACHE_BYTES,
            )),
            free_hint: 0,
            inflated: None,
        })
    }
}

/// Opens the backing file `name` of the image at `path`, in the format the header
/// extension names (probed when it names none).
fn open_backing_as(
    path: &Path,
    name: &str,
    backing_format: Option<String>,
    ctx: &Ctx,
) -> std::result::Result<Arc<dyn ImageDevice>, FormatError> {
    let format = match &backing_format {
        None => None,
        Some(f) => Some(
            Format::from_name(f)
                .ok_or_else(|| unsupported(path, &format!("backing format {f:?}")))?,
        ),
    };
    open_backing(path, name, format, ctx)
}

impl Qcow2 {
    /// Opens the qcow2 image at `path` (its backing chain through the probe).
    pub fn open(path: &Path, read_only: bool) -> std::result::Result<Qcow2, FormatError> {
        let dev = FileDevice::open(path, read_only).map_err(|e| FormatError::io(path, e))?;
        let ctx = Ctx::new(crate::OpenOptions {
            read_only,
            ..Default::default()
        });
        Qcow2::open_storage(Storage::file(dev), read_only, &ctx)
    }

    /// Opens the qcow2 image at `path` with every option (cache sizes, `force`).
    pub fn open_with(
        path: &Path,
        options: &crate::OpenOptions,
    ) -> std::result::Result<Qcow2, FormatError> {
        let dev =
            FileDevice::open(path, options.read_only).map_err(|e| FormatError::io(path, e))?;
        let ctx = Ctx::new(options.clone());
        let file = Storage::file(dev).writeback_every(options.writeback_step);
        Qcow2::open_storage(file, options.read_only, &ctx)
    }

    /// Opens a qcow2 image stored on any device; a backing file name is resolved against
    /// `name`'s directory.
    pub fn open_on(
        dev: Arc<dyn BlockDevice>,
        name: impl Into<PathBuf>,
        options: &crate::OpenOptions,
    ) -> std::result::Result<Qcow2, FormatError> {
        let ctx = Ctx::new(options.clone());
        let read_only = options.read_only || dev.read_only();
        Qcow2::open_storage(Storage::device(dev, name), read_only, &ctx)
    }

    pub(crate) fn open_storage(
        file: Storage,
        read_only: bool,
        ctx: &Ctx,
    ) -> std::result::Result<Qcow2, FormatError> {
        let path = file.name().to_path_buf();
        let hd = Header::read(&file, &path)?;
        hd.refuse_unsupported(&path)?;
        hd.check_tables(file.len(), &path)?;
        let read_only = read_only || file.read_only();
        if let (Some(reason), false) = (hd.why_read_only(), read_only) {
            return Err(FormatError::ReadOnly {
                path,
                reason: reason.into(),
            });
        }
        let mut c0 = vec![0u8; hd.cs as usize];
        file.read_at(&mut c0, 0)
            .map_err(|e| FormatError::io(&path, e))?;
        let backing_format = hd.backing_format(&c0, &path)?;
        let backing_name = hd.backing_name(&c0, &path)?;
        let backing = match &backing_name {
            // Opened alone (`open_layer`): the backing file is not opened.
            _ if ctx.alone => None,
            None => None,
            Some(name) => Some(open_backing_as(&path, name, backing_format, ctx)?),
        };
        let q = Qcow2 {
            backing,
            backing_name,
            version: hd.version,
            cluster_bits: hd.cluster_bits,
            cs: hd.cs,
            l2_entries: hd.cs / 8,
            size: hd.size,
            refcount_order: hd.refcount_order,
            rb_entries: (hd.cs * 8) >> hd.refcount_order,
            read_only,
            st: Mutex::new(hd.read_tables(&file, &path, ctx)?),
            file,
        };
        // Autoclear bits we do not maintain must be cleared by a writer.
        if !read_only && hd.autoclear != 0 {
            q.file
                .write_at(&0u64.to_be_bytes(), 88)
                .map_err(|e| FormatError::io(&path, e))?;
        }
        Ok(q)
    }

    /// The cluster size in bytes.
    pub fn cluster_size(&self) -> u64 {
        self.cs
    }

    /// The format version (2 or 3).
    pub fn version(&self) -> u32 {
        self.version
    }

    /// The backing file name as stored in the header.
    pub fn backing_name(&self) -> Option<&str> {
        self.backing_name.as_deref()
    }

    /// How full the metadata caches are.
    pub fn cache_stats(&self) -> CacheStats {
        let st = self.lock();
        CacheStats {
            l2_tables: st.l2.len(),
            l2_capacity: st.l2.capacity(),
            refcount_blocks: st.rb.len(),
            refcount_capacity: st.rb.capacity(),
            table_bytes: self.cs as usize,
        }
    }

    /// Writes all metadata and syncs: what a clean close does (Drop calls it too).
    pub fn close(&self) -> Result<()> {
        self.flush()
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.st.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// True when `[off, off+len)` overlaps the header, L1 table or refcount table.
    fn hits_metadata(&self, st: &State, off: u64, len: u64) -> bool {
        let overlaps = |start: u64, n: u64| n > 0 && off < start + n && start < off + len;
        overlaps(0, self.cs)
            || overlaps(st.l1_offset, st.l1.len() as u64 * 8)
            || overlaps(st.rct_offset, st.rct_clusters * self.cs)
    }

    /// A table offset read from L1 or the refcount table, checked: EIO when corrupt.
    fn check_table(&self, st: &State, off: u64) -> Result<()> {
        if off % self.cs != 0
            || self.hits_metadata(st, off, self.cs)
            || off + self.cs > self.file.len()
        {
            return Err(Errno::EIO);
        }
        Ok(())
    }

    fn classify(&self, st: &State, e: u64) -> Result<Map> {
        if e & COMPRESSED != 0 {
            let x = 62 - (self.cluster_bits - 8);
            let off = e & ((1u64 << x) - 1);
            let sectors = ((e & !COPIED & !COMPRESSED) >> x) + 1;
            let len = sectors * 512 - (off & 511);
            if off < self.cs || off >= self.file.len() {
                return Err(Errno::EIO);
            }
            return Ok(Map::Compressed(off, len as usize));
        }
        let off = e & OFFSET_MASK;
        let check = |off: u64| -> Result<u64> {
            if off % self.cs != 0 || self.hits_metadata(st, off, self.cs) {
                Err(Errno::EIO)
            } else {
                Ok(off)
            }
        };
        if self.version >= 3 && e & ZERO != 0 {
            return Ok(Map::Zero(if off == 0 { None } else { Some(check(off)?) }));
        }
        if off == 0 {
            return Ok(Map::Unallocated);
        }
        Ok(Map::Data(check(off)?))
    }

    // --- refcounts -------------------------------------------------------------------

    fn write_back_rb(&self, st: &mut State) -> Result<()> {
        for key in st.rb.dirty_keys() {
            let bytes = st.rb.take_dirty(key).expect("dirty key is cached").clone();
            if let Err(e) = self.file.write_at(&bytes, key) {
                st.rb.set_dirty(key);
                return Err(e);
            }
        }
        Ok(())
    }

    fn write_back_l2(&self, st: &mut State) -> Result<()> {
        for key in st.l2.dirty_keys() {
            let bytes = to_be_bytes(st.l2.take_dirty(key).expect("dirty key is cached"));
            if let Err(e) = self.file.write_at(&bytes, key) {
                st.l2.set_dirty(key);
                return Err(e);
            }
        }
        Ok(())
    }

    /// Writes the dirty refcount blocks, then the dirty L2 tables: on disk a refcount is
    /// never below the references to its cluster (qemu's rule; a crash leaks, at worst).
    fn write_back_meta(&self, st: &mut State) -> Result<()> {
        self.write_back_rb(st)?;
        self.write_back_l2(st)
    }

    fn ensure_rb(&self, st: &mut State, off: u64) -> Result<()> {
        if st.rb.contains(off) {
            return Ok(());
        }
        self.check_table(st, off)?;
        let mut block = vec![0u8; self.cs as usize];
        self.file.read_at(&mut block, off)?;
        if let Some((key, value, dirty)) = st.rb.evict_if_full() {
            if dirty {
                if let Err(e) = self.file.write_at(&value, key) {
                    st.rb.insert(key, value, true);
                    return Err(e);
                }
            }
        }
        st.rb.insert(off, block, false);
        Ok(())
    }

    fn refcount(&self, st: &mut State, cluster: u64) -> Result<u64> {
        let idx = cluster / self.rb_entries;
        let Some(&entry) = st.rct.get(idx as usize) else {
            return Ok(0);
        };
        let off = entry & REFT_OFFSET_MASK;
        if off == 0 {
            return Ok(0);
        }
        self.ensure_rb(st, off)?;
        let block = st.rb.get(off).expect("just loaded");
        Ok(rc_get(
            block,
            (cluster % self.rb_entries) as usize,
            self.refcount_order,
        ))
    }

    /// Adds `delta` to the refcount of host cluster `cluster`; returns the new count.
    fn rc_update(&self, st: &mut State, cluster: u64, delta: i64) -> Result<u64> {
        let e = self.rb_entries;
        let idx = cluster / e;
        if idx >= st.rct.len() as u64 {
            if delta < 0 {
                return Err(Errno::EIO);
            }
            self.grow_reftable(st, idx)?;
        }
        let mut off = st.rct[idx as usize] & REFT_OFFSET_MASK;
        if off == 0 {
            if delta < 0 {
                return Err(Errno::EIO);
            }
            // A new refcount block, inside the range it describes (so it counts itself).
            let first = idx * e;
            let r = if first == cluster { first + 1 } else { first };
            off = r * self.cs;
            if self.hits_metadata(st, off, self.cs) {
                return Err(Errno::EIO);
            }
            let mut block = vec![0u8; self.cs as usize];
            rc_set(&mut block, (r - first) as usize, self.refcount_order, 1);
            self.file.write_at(&block, off)?;
            self.file
                .write_at(&off.to_be_bytes(), st.rct_offset + idx * 8)?;
            st.rct[idx as usize] = off;
            if let Some((key, value, dirty)) = st.rb.evict_if_full() {
                if dirty {
                    self.file.write_at(&value, key)?;
                }
            }
            st.rb.insert(off, block, false);
        }
        self.ensure_rb(st, off)?;
        let order = self.refcount_order;
        let max = if order == 6 {
            u64::MAX
        } else {
            (1u64 << (1 << order)) - 1
        };
        let block = st.rb.get(off).expect("just loaded");
        let i = (cluster % e) as usize;
        let old = rc_get(block, i, order);
        let new = if delta < 0 {
            old.checked_sub(delta.unsigned_abs()).ok_or(Errno::EIO)?
        } else {
            old.checked_add(delta as u64)
                .filter(|&n| n <= max)
                .ok_or(Errno::EIO)?
        };
        rc_set(block, i, order, new);
        st.rb.mark_dirty(off);
        if new == 0 {
            st.free_hint = st.free_hint.min(cluster);
        }
        Ok(new)
    }

    /// Grows the refcount table so that it has entry `need`, moving it to the end of the
    /// file with the refcount blocks that describe its new clusters.
    fn grow_reftable(&self, st: &mut State, need: u64) -> Result<()> {
        let plan = self.plan_reftable(st, need)?;
        let table = self.write_reftable(st, &plan)?;
        let (cs, e) = (self.cs, self.rb_entries);
        let (old_off, old_clusters) = (st.rct_offset, st.rct_clusters);
        st.rct = table;
        st.rct_offset = plan.start * cs;
        st.rct_clusters = plan.clusters;
        for c in plan.start..plan.end {
            if !plan.missing.contains(&(c / e)) {
                self.rc_update(st, c, 1)?;
            }
        }
        for i in 0..old_clusters {
            if self.rc_update(st, old_off / cs + i, -1)? == 0 {
                self.file.punch(old_off + i * cs, cs)?;
            }
        }
        Ok(())
    }

    /// Where a refcount table grown to have entry `need` goes: its entries and clusters,
    /// from the first cluster past the file, followed by the new refcount blocks that
    /// the clusters of the range need (which the table must also have entries for).
    fn plan_reftable(&self, st: &State, need: u64) -> Result<NewReftable> {
        let (cs, e) = (self.cs, self.rb_entries);
        let per_cluster = cs / 8;
        let old_len = st.rct.len() as u64;
        let mut new_len = (need + 1).max(old_len + old_len / 2).div_ceil(per_cluster) * per_cluster;
        let start = self.file.len().div_ceil(cs).max(st.free_hint);
        let missing_in = |st: &State, from: u64, to: u64| -> Vec<u64> {
            (from / e..=(to - 1) / e)
                .filter(|&i| {
                    st.rct
                        .get(i as usize)
                        .is_none_or(|&o| o & REFT_OFFSET_MASK == 0)
                })
                .collect()
        };
        loop {
            if new_len * 8 > MAX_REFTABLE_BYTES {
                return Err(Errno::EFBIG);
            }
            let t = new_len * 8 / cs;
            let mut k = 0u64;
            let missing = loop {
                let m = missing_in(st, start, start + t + k);
                if m.len() as u64 <= k {
                    break m;
                }
                k = m.len() as u64;
            };
            let end = start + t + k;
            if (end - 1) / e >= new_len {
                new_len += per_cluster;
                continue;
            }
            return Ok(NewReftable {
                entries: new_len,
                start,
                clusters: t,
                end,
                missing,
            });
        }
    }

    /// Writes the new refcount blocks and the grown table of `plan`, flushes, then points
    /// the header at the table; returns the table.
    fn write_reftable(&self, st: &mut State, plan: &NewReftable) -> Result<Vec<u64>> {
        let (cs, e) = (self.cs, self.rb_entries);
        let (start, t, end) = (plan.start, plan.clusters, plan.end);
        // Make sure cached blocks that count clusters of the new range are on disk first.
        self.write_back_rb(st)?;
        let mut table = st.rct.clone();
        table.resize(plan.entries as usize, 0);
        for (j, &idx) in plan.missing.iter().enumerate() {
            let boff = (start + t + j as u64) * cs;
            let mut block = vec![0u8; cs as usize];
            for c in start.max(idx * e)..end.min((idx + 1) * e) {
                rc_set(&mut block, (c - idx * e) as usize, self.refcount_order, 1);
            }
            self.file.write_at(&block, boff)?;
            table[idx as usize] = boff;
        }
        self.file.write_at(&to_be_bytes(&table), start * cs)?;
        self.file.flush()?;
        let mut hdr = [0u8; 12];
        hdr[..8].copy_from_slice(&(start * cs).to_be_bytes());
        hdr[8..].copy_from_slice(&(t as u32).to_be_bytes());
        self.file.write_at(&hdr, 48)?;
        Ok(table)
    }

    /// Allocates one host cluster (refcount 1) and returns its offset. The caller writes it.
    fn alloc_cluster(&self, st: &mut State) -> Result<u64> {
        let e = self.rb_entries;
        let mut c = st.free_hint.max(1);
        loop {
            let idx = c / e;
            match st.rct.get(idx as usize) {
                None => {
                    // Grow first: the new table takes clusters here, then look again.
                    self.grow_reftable(st, idx)?;
                    continue;
                }
                Some(&o) if o & REFT_OFFSET_MASK == 0 => break,
                Some(_) => {}
            }
            if self.refcount(st, c)? == 0 && !self.hits_metadata(st, c * self.cs, self.cs) {
                break;
            }
            c += 1;
        }
        if c >= 1u64 << (56 - self.cluster_bits) {
            return Err(Errno::ENOSPC);
        }
        self.rc_update(st, c, 1)?;
        st.free_hint = c + 1;
        Ok(c * self.cs)
    }

    /// Drops one reference to a host cluster, punching it out of the file when free.
    fn free_cluster(&self, st: &mut State, off: u64) -> Result<()> {
        if self.rc_update(st, off / self.cs, -1)? == 0 {
            self.file.punch(off, self.cs)?;
        }
        Ok(())
    }

    fn free_compressed(&self, st: &mut State, off: u64, len: usize) -> Result<()> {
        let start = off & !511;
        let end = off + len as u64;
        for c in start / self.cs..=(end - 1) / self.cs {
            if self.rc_update(st, c, -1)? == 0 {
                self.file.punch(c * self.cs, self.cs)?;
            }
        }
        Ok(())
    }

    // --- L2 tables -------------------------------------------------------------------

    fn ensure_l2(&self, st: &mut State, off: u64) -> Result<()> {
        if st.l2.contains(off) {
            return Ok(());
        }
        self.check_table(st, off)?;
        let mut bytes = vec![0u8; self.cs as usize];
        self.file.read_at(&mut bytes, off)?;
        if let Some((key, value, dirty)) = st.l2.evict_if_full() {
            if dirty {
                let res = self
                    .write_back_rb(st)
                    .and_then(|()| self.file.write_at(&to_be_bytes(&value), key));
                if let Err(e) = res {
                    st.l2.insert(key, value, true);
                    return Err(e);
                }
            }
        }
        st.l2.insert(off, from_be_bytes(&bytes), false);
        Ok(())
    }

    /// The L2 entry of guest cluster `g` (0 when its L2 table is absent).
    fn l2_entry(&self, st: &mut State, g: u64) -> Result<u64> {
        let l1i = (g / self.l2_entries) as usize;
        let l2off = st.l1.get(l1i).copied().unwrap_or(0) & OFFSET_MASK;
        if l2off == 0 {
            return Ok(0);
        }
        self.ensure_l2(st, l2off)?;
        Ok(st.l2.get(l2off).expect("just loaded")[(g % self.l2_entries) as usize])
    }

    /// The L2 table for guest cluster `g`, allocated if absent.
    fn l2_for_write(&self, st: &mut State, g: u64) -> Result<u64> {
        let l1i = (g / self.l2_entries) as usize;
        let l2off = st.l1[l1i] & OFFSET_MASK;
        if l2off != 0 {
            self.ensure_l2(st, l2off)?;
            return Ok(l2off);
        }
        let off = self.alloc_cluster(st)?;
        self.file.write_at(&vec![0u8; self.cs as usize], off)?;
        // The table's refcount reaches the disk before the L1 entry does.
        self.write_back_rb(st)?;
        self.file
            .write_at(&(off | COPIED).to_be_bytes(), st.l1_offset + l1i as u64 * 8)?;
        st.l1[l1i] = off | COPIED;
        if let Some((key, value, dirty)) = st.l2.evict_if_full() {
            if dirty {
                self.file.write_at(&to_be_bytes(&value), key)?;
            }
        }
        st.l2
            .insert(off, vec![0u64; self.l2_entries as usize], false);
        Ok(off)
    }

    fn set_l2(&self, st: &mut State, l2off: u64, g: u64, value: u64) -> Result<()> {
        self.ensure_l2(st, l2off)?;
        st.l2.get(l2off).expect("just loaded")[(g % self.l2_entries) as usize] = value;
        st.l2.mark_dirty(l2off);
        Ok(())
    }

    // --- data ------------------------------------------------------------------------

    fn inflate(&self, st: &mut State, entry: u64, off: u64, len: usize) -> Result<Vec<u8>> {
        if let Some((e, data)) = &st.inflated {
            if *e == entry {
                return Ok(data.clone());
            }
        }
        let mut input = vec![0u8; len];
        self.file.read_at(&mut input, off)?;
        let mut out = vec![0u8; self.cs as usize];
        let mut z = flate2::Decompress::new(false);
        match z.decompress(&input, &mut out, flate2::FlushDecompress::Finish) {
            Ok(_) => {}
            Err(_) => return Err(Errno::EIO),
        }
        st.inflated = Some((entry, out.clone()));
        Ok(out)
    }

    /// Adds what lies below this image at guest `[pos, pos + len)` to `list`: the backing
    /// file's map, or zeros. Returns the bytes added.
    fn push_below(&self, list: &mut ExtentList, pos: u64, len: u64) -> Result<u64> {
        match &self.backing {
            Some(b) => list.push_from(b.as_ref(), pos, len),
            None => Ok(if list.push(len, true) { len } else { 0 }),
        }
    }

    /// Fills `buf` with what guest offset `pos` holds below this image.
    fn read_below(&self, buf: &mut [u8], pos: u64) -> Result<()> {
        buf.fill(0);
        if let Some(b) = &self.backing {
            b.read_until_end(buf, pos)?;
        }
        Ok(())
    }

    /// The current content of guest cluster `g` whose entry maps as `map`.
    fn cluster_content(&self, st: &mut State, g: u64, e: u64, map: Map) -> Result<Vec<u8>> {
        let mut buf = vec![0u8; self.cs as usize];
        match map {
            Map::Unallocated => self.read_below(&mut buf, g * self.cs)?,
            Map::Zero(_) => {}
            Map::Data(h) => self.file.read_at(&mut buf, h)?,
            Map::Compressed(off, len) => buf = self.inflate(st, e, off, len)?,
        }
        Ok(buf)
    }

    fn write_cluster(&self, st: &mut State, g: u64, within: usize, data: &[u8]) -> Result<()> {
        let l2off = self.l2_for_write(st, g)?;
        let e = st.l2.get(l2off).expect("loaded")[(g % self.l2_entries) as usize];
        let map = self.classify(st, e)?;
        if let Map::Data(h) = map {
            return self.file.write_at(data, h + within as u64);
        }
        let mut buf = if data.len() == self.cs as usize {
            data.to_vec()
        } else {
            let mut buf = self.cluster_content(st, g, e, map)?;
            buf[within..within + data.len()].copy_from_slice(data);
            buf
        };
        let h = match map {
            Map::Zero(Some(h)) => h,
            _ => self.alloc_cluster(st)?,
        };
        if let Err(err) = self.file.write_at(&buf, h) {
            if !matches!(map, Map::Zero(Some(_))) {
                let _ = self.rc_update(st, h / self.cs, -1);
            }
            return Err(err);
        }
        buf.clear();
        self.set_l2(st, l2off, g, h | COPIED)?;
        if let Map::Compressed(off, len) = map {
            st.inflated = None;
            // The L2 entry stops pointing at it on disk before its refcount drops.
            self.write_back_meta(st)?;
            self.free_compressed(st, off, len)?;
        }
        Ok(())
    }

    /// Where a write of `n` bytes at `within` of guest cluster `g` goes without reading
    /// anything: into its data cluster, or (a whole cluster) into a newly allocated one,
    /// returned with the L2 update to make once the data is written. None when the
    /// cluster must be read, modified and written (`write_cluster`).
    fn direct_target(
        &self,
        st: &mut State,
        g: u64,
        within: usize,
        n: usize,
    ) -> Result<Option<(u64, Option<Fresh>)>> {
        let l2off = self.l2_for_write(st, g)?;
        let e = st.l2.get(l2off).expect("loaded")[(g % self.l2_entries) as usize];
        let map = self.classify(st, e)?;
        if let Map::Data(h) = map {
            return Ok(Some((h + within as u64, None)));
        }
        if n != self.cs as usize {
            return Ok(None);
        }
        let h = match map {
            Map::Zero(Some(h)) => h,
            _ => self.alloc_cluster(st)?,
        };
        Ok(Some((h, Some(Fresh { l2off, g, h, map }))))
    }

    /// Writes a run of `buf` to its host-contiguous place with one call, then points the
    /// L2 entries of its newly allocated clusters at them (data before metadata); on a
    /// failed write the new clusters' references are dropped again.
    fn write_run(&self, st: &mut State, r: Run, buf: &[u8]) -> Result<()> {
        if let Err(err) = self.file.write_at(&buf[r.at..r.at + r.len], r.host) {
            for f in &r.fresh {
                if !matches!(f.map, Map::Zero(Some(_))) {
                    let _ = self.rc_update(st, f.h / self.cs, -1);
                }
            }
            return Err(err);
        }
        for f in r.fresh {
            self.set_l2(st, f.l2off, f.g, f.h | COPIED)?;
            if let Map::Compressed(off, len) = f.map {
                st.inflated = None;
                // The L2 entry stops pointing at it on disk before its refcount drops.
                self.write_back_meta(st)?;
                self.free_compressed(st, off, len)?;
            }
        }
        Ok(())
    }

    /// Bytes of the disk stored in this image (data and compressed clusters).
    fn allocated_bytes(&self) -> u64 {
        let mut st = self.lock();
        let mut clusters = 0u64;
        for l1i in 0..st.l1.len() {
            let l2off = st.l1[l1i] & OFFSET_MASK;
            if l2off == 0 || self.ensure_l2(&mut st, l2off).is_err() {
                continue;
            }
            let table = st.l2.get(l2off).expect("loaded").clone();
            clusters += table
                .iter()
                .filter(|&&e| e & COMPRESSED != 0 || (e & OFFSET_MASK != 0 && e & ZERO == 0))
                .count() as u64;
        }
        clusters * self.cs
    }

    /// The map of `[offset, offset + len)` as [`BlockDevice::extents`] gives it, or with
    /// `own` this image's own map ([`ImageDevice::own_extents`]): unallocated clusters are
    /// not this image's (`zero`), zero clusters are (they hide the backing file's data).
    fn map_extents(&self, offset: u64, len: u64, max: usize, own: bool) -> Result<Vec<Extent>> {
        let end = offset.saturating_add(len).min(self.size);
        let mut st = self.lock();
        let mut list = ExtentList::new(max);
        // A run of unallocated clusters not yet asked of the backing file: (start, len).
        let mut below: Option<(u64, u64)> = None;
        let mut pos = offset;
        while pos < end {
            let g = pos / self.cs;
            let l1i = (g / self.l2_entries) as usize;
            let next = if st.l1.get(l1i).copied().unwrap_or(0) & OFFSET_MASK == 0 {
                // No L2 table: its whole span is unallocated.
                (g / self.l2_entries + 1) * self.l2_entries * self.cs
            } else {
                (g + 1) * self.cs
            };
            let n = next.min(end) - pos;
            let e = self.l2_entry(&mut st, g)?;
            let zero = match self.classify(&st, e)? {
                Map::Unallocated if own => true,
                Map::Unallocated => {
                    below = match below {
                        Some((s, l)) => Some((s, l + n)),
                        None => Some((pos, n)),
                    };
                    pos += n;
                    continue;
                }
                // A truncated file: the data is gone, not zeros.
                Map::Data(h) if h >= self.file.len() => return Err(Errno::EIO),
                Map::Data(_) | Map::Compressed(..) => false,
                Map::Zero(_) => !own,
            };
            if let Some((s, l)) = below.take() {
                if self.push_below(&mut list, s, l)? < l {
                    return Ok(list.into_vec());
                }
            }
            if !list.push(n, zero) {
                return Ok(list.into_vec());
            }
            pos += n;
        }
        if let Some((s, l)) = below {
            self.push_below(&mut list, s, l)?;
        }
        Ok(list.into_vec())
    }
}

impl BlockDevice for Qcow2 {
    fn size(&self) -> u64 {
        self.size
    }

    fn read_only(&self) -> bool {
        self.read_only
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<usize> {
        if offset >= self.size {
            return Ok(0);
        }
        let len = (self.size - offset).min(buf.len() as u64) as usize;
        let mut st = self.lock();
        // What to read from the file or from below, once the map is known: runs of
        // host-contiguous data clusters (host, at, len) and unallocated pieces (at, len).
        let mut runs: Vec<(u64, usize, usize)> = Vec::new();
        let mut below: Vec<(usize, usize)> = Vec::new();
        let mut done = 0;
        while done < len {
            let pos = offset + done as u64;
            let g = pos / self.cs;
            let within = pos % self.cs;
            let n = ((self.cs - within) as usize).min(len - done);
            let e = self.l2_entry(&mut st, g)?;
            let map = self.classify(&st, e)?;
            let out = &mut buf[done..done + n];
            match map {
                Map::Data(h) => {
                    if h >= self.file.len() {
                        // A truncated file: the data is gone, not zeros.
                        return Err(Errno::EIO);
                    }
                    let host = h + within;
                    match runs.last_mut() {
                        Some((start, at, rlen))
                            if *start + *rlen as u64 == host && *at + *rlen == done =>
                        {
                            *rlen += n
                        }
                        _ => runs.push((host, done, n)),
                    }
                }
                Map::Unallocated => match below.last_mut() {
                    Some((at, blen)) if *at + *blen == done => *blen += n,
                    _ => below.push((done, n)),
                },
                Map::Zero(_) => out.fill(0),
                Map::Compressed(off, clen) => {
                    let data = self.inflate(&mut st, e, off, clen)?;
                    out.copy_from_slice(&data[within as usize..within as usize + n]);
                }
            }
            done += n;
        }
        // A read-only image's map cannot change under us: the reads themselves run
        // unlocked, so that several readers (a conversion's) have reads in flight.
        let guard = if self.read_only {
            drop(st);
            None
        } else {
            Some(st)
        };
        for (host, at, rlen) in runs {
            self.file.read_at(&mut buf[at..at + rlen], host)?;
        }
        for (at, blen) in below {
            self.read_below(&mut buf[at..at + blen], offset + at as u64)?;
        }
        drop(guard);
        Ok(len)
    }

    /// The L1/L2 tables: data and compressed clusters are data, zero clusters are holes,
    /// unallocated clusters (and absent L2 tables) are what the backing file says of
    /// them, or zeros without one.
    fn extents(&self, offset: u64, len: u64, max: usize) -> Result<Vec<Extent>> {
        self.map_extents(offset, len, max, false)
    }
    fn write_at(&self, buf: &[u8], offset: u64) -> Result<usize> {
        if self.read_only {
            return Err(Errno::EROFS);
        }
        if buf.is_empty() {
            return Ok(0);
        }
        if offset >= self.size {
            return Err(Errno::ENOSPC);
        }
        let len = (self.size - offset).min(buf.len() as u64) as usize;
        let mut st = self.lock();
        let mut run: Option<Run> = None;
        let mut done = 0;
        while done < len {
            let pos = offset + done as u64;
            let g = pos / self.cs;
            let within = (pos % self.cs) as usize;
            let n = (self.cs as usize - within).min(len - done);
            match self.direct_target(&mut st, g, within, n) {
                Ok(Some((host, fresh))) => {
                    let joins = run
                        .as_ref()
                        .is_some_and(|r| r.host + r.len as u64 == host && r.at + r.len == done);
                    if !joins {
                        if let Some(r) = run.take() {
                            self.write_run(&mut st, r, buf)?;
                        }
                        run = Some(Run {
                            host,
                            at: done,
                            len: 0,
                            fresh: Vec::new(),
                        });
                    }
                    let r = run.as_mut().expect("just set");
                    r.len += n;
                    r.fresh.extend(fresh);
                }
                Ok(None) => {
                    if let Some(r) = run.take() {
                        self.write_run(&mut st, r, buf)?;
                    }
                    self.write_cluster(&mut st, g, within, &buf[done..done + n])?;
                }
                Err(e) => {
                    if let Some(r) = run.take() {
                        self.write_run(&mut st, r, buf)?;
                    }
                    return Err(e);
                }
            }
            done += n;
        }
        if let Some(r) = run.take() {
            self.write_run(&mut st, r, buf)?;
        }
        Ok(len)
    }

    fn flush(&self) -> Result<()> {
        if self.read_only {
            return Ok(());
        }
        let mut st = self.lock();
        self.write_back_meta(&mut st)?;
        self.file.flush()
    }

    fn discard(&self, offset: u64, len: u64) -> Result<()> {
        if self.read_only {
            return Err(Errno::EROFS);
        }
        if offset >= self.size {
            return Ok(());
        }
        let end = offset.saturating_add(len).min(self.size);
        let zeroes = self.discard_zeroes();
        // Clusters unmapped here are freed at the end, once the L2 tables that no longer
        // point at them are on disk: a refcount must never drop below the references the
        // file holds, or a crash in between leaves a cluster used twice.
        let mut frees: Vec<Map> = Vec::new();
        let res = self.discard_clusters(offset, end, zeroes, &mut frees);
        if !frees.is_empty() {
            let mut st = self.lock();
            self.write_back_meta(&mut st)?;
            for map in frees {
                match map {
                    Map::Data(h) | Map::Zero(Some(h)) => self.free_cluster(&mut st, h)?,
                    Map::Compressed(off, clen) => self.free_compressed(&mut st, off, clen)?,
                    _ => {}
                }
            }
        }
        res
    }

    fn discard_zeroes(&self) -> bool {
        self.backing.is_none() || self.version >= 3
    }
}

impl Qcow2 {
    /// The cluster work of `discard`: unmaps whole clusters of `[offset, end)` (their
    /// clusters go to `frees`) and zeroes partial ones.
    fn discard_clusters(
        &self,
        offset: u64,
        end: u64,
        zeroes: bool,
        frees: &mut Vec<Map>,
    ) -> Result<()> {
        let mut pos = offset;
        while pos < end {
            let g = pos / self.cs;
            let cstart = g * self.cs;
            let cend = (cstart + self.cs).min(self.size);
            let stop = cend.min(end);
            if pos != cstart || stop != cend {
                // Part of a cluster: keep the zeroing promise by writing zeros.
                if zeroes {
                    let mut st = self.lock();
                    let e = self.l2_entry(&mut st, g)?;
                    let map = self.classify(&st, e)?;
                    drop(st);
                    let reads_zero = matches!(map, Map::Zero(_))
                        || (map == Map::Unallocated && self.backing.is_none());
                    if !reads_zero {
                        self.write_at(&vec![0u8; (stop - pos) as usize], pos)?;
                    }
                }
                pos = stop;
                continue;
            }
            let mut st = self.lock();
            let l1i = (g / self.l2_entries) as usize;
            let l2off = st.l1[l1i] & OFFSET_MASK;
            if l2off == 0 && (self.backing.is_none() || self.version < 3) {
                // Nothing here, and nothing below shows through that should not.
                pos = ((l1i as u64 + 1) * self.l2_entries * self.cs)
                    .min(end)
                    .max(stop);
                continue;
            }
            let l2off = if l2off == 0 {
                self.l2_for_write(&mut st, g)?
            } else {
                self.ensure_l2(&mut st, l2off)?;
                l2off
            };
            let e = st.l2.get(l2off).expect("loaded")[(g % self.l2_entries) as usize];
            let map = self.classify(&st, e)?;
            let new = if self.version >= 3 && self.backing.is_some() {
                ZERO
            } else {
                0
            };
            if e != new {
                self.set_l2(&mut st, l2off, g, new)?;
                if let Map::Compressed(..) = map {
                    st.inflated = None;
                }
                frees.push(map);
            }
            pos = stop;
        }
        Ok(())
    }
}

impl Drop for Qcow2 {
    fn drop(&mut self) {
        if let Err(e) = self.flush() {
            eprintln!(
                "qcow2 {}: metadata not written at close: {e}",
                self.file.name().display()
            );
        }
    }
}

impl ImageDevice for Qcow2 {
    fn image_info(&self) -> ImageInfo {
        ImageInfo {
            path: self.file.name().to_path_buf(),
            format: Format::Qcow2,
            virtual_size: self.size,
            allocated_bytes: self.allocated_bytes(),
            host_bytes: self.file.host_bytes(),
            backing: self.backing.as_ref().map(|b| Box::new(b.image_info())),
        }
    }
    fn into_block_device(self: Arc<Self>) -> Arc<dyn BlockDevice> {
        self
    }
    /// Data, compressed and zero clusters; unallocated clusters (and absent L2 tables) are
    /// not this image's.
    fn own_extents(&self, offset: u64, len: u64, max: usize) -> Result<Vec<Extent>> {
        self.map_extents(offset, len, max, true)
    }
}

/// Creates a qcow2 v3 image of `size` bytes (64 KiB clusters, 16-bit refcounts) at `path`,
/// over `backing` if given (stored as written; a relative name is relative to `path`'s
/// directory; its format is probed and recorded). A `size` of 0 with a backing file takes
/// the backing file's size.
pub fn create_qcow2(
    path: &Path,
    size: u64,
    backing: Option<&Path>,
) -> std::result::Result<(), FormatError> {
    let cluster_bits = 16u32;
    let cs = 1u64 << cluster_bits;
    let mut size = size;
    let mut backing_format = None;
    if let Some(b) = backing {
        let (virtual_size, format) = probe_backing(path, b)?;
        if size == 0 {
            size = virtual_size;
        }
        backing_format = Some(format);
    }
    let l2_entries = cs / 8;
    let l1_entries = size.div_ceil(cs * l2_entries).max(1);
    if l1_entries * 8 > MAX_L1_BYTES {
        return Err(FormatError::unsupported(
            path,
            NAME,
            format!("a {size}-byte disk (L1 table over 32 MiB)"),
        ));
    }
    let l1_clusters = (l1_entries * 8).div_ceil(cs);
    let (rct_off, rb_off, l1_off) = (cs, 2 * cs, 3 * cs);
    let total = 3 + l1_clusters;
    let mut h = vec![0u8; cs as usize];
    h[0..4].copy_from_slice(&MAGIC.to_be_bytes());
    h[4..8].copy_from_slice(&3u32.to_be_bytes());
    h[20..24].copy_from_slice(&cluster_bits.to_be_bytes());
    h[24..32].copy_from_slice(&size.to_be_bytes());
    h[36..40].copy_from_slice(&(l1_entries as u32).to_be_bytes());
    h[40..48].copy_from_slice(&l1_off.to_be_bytes());
    h[48..56].copy_from_slice(&rct_off.to_be_bytes());
    h[56..60].copy_from_slice(&1u32.to_be_bytes());
    h[96..100].copy_from_slice(&4u32.to_be_bytes());
    h[100..104].copy_from_slice(&112u32.to_be_bytes());
    if let (Some(b), Some(fmt)) = (backing, backing_format) {
        put_backing(&mut h, path, b, fmt)?;
    }
    let mut rct = vec![0u8; cs as usize];
    rct[0..8].copy_from_slice(&rb_off.to_be_bytes());
    let mut rb = vec![0u8; cs as usize];
    for c in 0..total as usize {
        rc_set(&mut rb, c, 4, 1);
    }
    let pieces = [
        (h.as_slice(), 0),
        (rct.as_slice(), rct_off),
        (rb.as_slice(), rb_off),
    ];
    write_new_image(path, &pieces, total * cs)
}

/// Opens the backing file `b` of the image to create at `path`: its virtual size and
/// format.
fn probe_backing(path: &Path, b: &Path) -> std::result::Result<(u64, &'static str), FormatError> {
    let name = b.to_str().ok_or_else(|| {
        FormatError::unsupported(path, NAME, "backing file names that are not UTF-8")
    })?;
    let resolved = crate::resolve_backing(path, name);
    let dev = crate::open_image_with(
        &resolved,
        &crate::OpenOptions {
            read_only: true,
            ..Default::default()
        },
    )
    .map_err(|e| FormatError::Backing {
        path: path.to_path_buf(),
        backing: resolved.clone(),
        source: Box::new(e),
    })?;
    let info = dev.image_info();
    Ok((info.virtual_size, info.format.name()))
}

/// Writes into the new header cluster `h` the backing format extension (`fmt`), the
/// end of the extensions and the backing file name `b`, with the name's place.
fn put_backing(
    h: &mut [u8],
    path: &Path,
    b: &Path,
    fmt: &str,
) -> std::result::Result<(), FormatError> {
    let mut pos = 112usize;
    h[pos..pos + 4].copy_from_slice(&EXT_BACKING_FORMAT.to_be_bytes());
    h[pos + 4..pos + 8].copy_from_slice(&(fmt.len() as u32).to_be_bytes());
    h[pos + 8..pos + 8 + fmt.len()].copy_from_slice(fmt.as_bytes());
    pos += 8 + fmt.len().div_ceil(8) * 8;
    pos += 8; // end-of-extensions marker (zeros)
    let name = b.to_str().unwrap_or_default().as_bytes();
    if name.len() > 1023 {
        return Err(FormatError::unsupported(
            path,
            NAME,
            "backing file names over 1023 bytes",
        ));
    }
    h[8..16].copy_from_slice(&(pos as u64).to_be_bytes());
    h[16..20].copy_from_slice(&(name.len() as u32).to_be_bytes());
    h[pos..pos + name.len()].copy_from_slice(name);
    Ok(())
}

/// Creates (or truncates) the file at `path`, writes each `(bytes, offset)` piece, sets
/// its length to `len` and syncs it.
fn write_new_image(
    path: &Path,
    pieces: &[(&[u8], u64)],
    len: u64,
) -> std::result::Result<(), FormatError> {
    use std::os::unix::fs::FileExt;
    let io = |e: std::io::Error| FormatError::io(path, e.into());
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)
        .map_err(io)?;
    for (bytes, at) in pieces {
        f.write_all_at(bytes, *at).map_err(io)?;
    }
    f.set_len(len).map_err(io)?;
    f.sync_all().map_err(io)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refcount_widths_round_trip() {
        for order in 0..=6u32 {
            let mut block = vec![0u8; 512];
            let max = if order == 6 {
                u64::MAX
            } else {
                (1u64 << (1 << order)) - 1
            };
            let entries = (512 * 8) >> order;
            for i in 0..entries {
                rc_set(&mut block, i, order, (i as u64 * 7) & max);
            }
            for i in 0..entries {
                assert_eq!(
                    rc_get(&block, i, order),
                    (i as u64 * 7) & max,
                    "order {order}"
                );
            }
        }
    }
}
