//! VMware VMDK: a hosted sparse extent (monolithicSparse; read-write), a text descriptor
//! naming extents (monolithicFlat, twoGbMaxExtent*, ...; FLAT, SPARSE and ZERO extents,
//! read-write), and streamOptimized (compressed grains with markers; read-only).
//!
//! A sparse extent maps grains (64 KiB by default) through a grain directory (held in
//! memory) to grain tables (an LRU of them). A write to an unallocated grain appends a
//! whole grain at the end of the extent, then sets the entry in the grain table and in its
//! redundant copy, as qemu does. Delta links (a `parentFileNameHint`) are refused.

use crate::error::FormatError;
use crate::storage::{Lru, Storage};
use crate::{le32, le64, Format, ImageDevice, ImageInfo};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use vudev::lock::LockMode;
use vudev::{BlockDevice, Errno, Extent as Run, ExtentList, FileDevice, Result};

/// "KDMV" read as a little-endian u32.
pub const SPARSE_MAGIC: u32 = 0x564d_444b;
const NAME: &str = "VMDK";
const FLAG_RGD: u32 = 1 << 1;
const FLAG_COMPRESSED: u32 = 1 << 16;
const FLAG_MARKERS: u32 = 1 << 17;
const GD_AT_END: u64 = u64::MAX;
const MAX_GD_ENTRIES: u64 = 1 << 24;
const GT_CACHE_TABLES: usize = 256;

/// True when `head` starts like a VMDK text descriptor.
pub fn looks_like_descriptor(head: &[u8]) -> bool {
    let text = String::from_utf8_lossy(head);
    let t = text.trim_start();
    t.starts_with("# Disk DescriptorFile")
        || (t.starts_with('#') && text.contains("createType=") && text.contains("version="))
}

struct Sparse {
    file: Storage,
    grain: u64,
    gtes: u64,
    capacity: u64,
    gd: Vec<u32>,
    rgd: Option<Vec<u32>>,
    stream: bool,
    st: Mutex<Lru<Vec<u32>>>,
}

enum Kind {
    Flat { file: Storage, offset: u64 },
    Sparse(Box<Sparse>),
    Zero,
}

struct Extent {
    start: u64,
    len: u64,
    writable: bool,
    kind: Kind,
}

/// A VMDK image as a block device.
pub struct Vmdk {
    name: PathBuf,
    size: u64,
    extents: Vec<Extent>,
    read_only: bool,
    create_type: String,
}

impl std::fmt::Debug for Vmdk {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vmdk")
            .field("name", &self.name)
            .field("type", &self.create_type)
            .field("size", &self.size)
            .finish()
    }
}

/// What a sparse extent header says about the extent's layout, checked.
struct Layout {
    flags: u32,
    stream: bool,
    /// Bytes per grain.
    grain: u64,
    /// Entries per grain table.
    gtes: u64,
    /// The extent's size in bytes.
    size: u64,
    gd_entries: u64,
}

impl Sparse {
    fn open(file: Storage, read_only: bool) -> std::result::Result<Sparse, FormatError> {
        let path = file.name().to_path_buf();
        let h = Sparse::read_header(&file, &path)?;
        let layout = Sparse::layout(&h, &path)?;
        let gd = Sparse::read_gd(&file, &path, le64(&h, 0x38), layout.gd_entries)?;
        let rgd = if layout.flags & FLAG_RGD != 0 && !layout.stream {
            Some(Sparse::read_gd(
                &file,
                &path,
                le64(&h, 0x30),
                layout.gd_entries,
            )?)
        } else {
            None
        };
        let overhead = le64(&h, 0x40).saturating_mul(512);
        Sparse::refuse_truncated(&file, &path, &layout, overhead, &gd, rgd.as_deref())?;
        let _ = read_only;
        Ok(Sparse {
            file,
            grain: layout.grain,
            gtes: layout.gtes,
            capacity: layout.size,
            gd,
            rgd,
            stream: layout.stream,
            st: Mutex::new(Lru::new(GT_CACHE_TABLES)),
        })
    }

    /// The 512-byte header in force: the first sector, or for streamOptimized (grain
    /// directory "at the end") the footer copy 1024 bytes from the end.
    fn read_header(file: &Storage, path: &Path) -> std::result::Result<Vec<u8>, FormatError> {
        let bad = |why: String| FormatError::corrupt(path, NAME, why);
        let io = |e: Errno| FormatError::io(path, e);
        if file.len() < 512 {
            return Err(bad(format!("truncated header ({} bytes)", file.len())));
        }
        let mut h = vec![0u8; 512];
        file.read_at(&mut h, 0).map_err(io)?;
        if le32(&h, 0) != SPARSE_MAGIC {
            return Err(bad("no KDMV magic".into()));
        }
        let version = le32(&h, 4);
        if !(1..=3).contains(&version) {
            return Err(FormatError::unsupported(
                path,
                NAME,
                format!("sparse extent version {version}"),
            ));
        }
        if le64(&h, 0x38) == GD_AT_END {
            // streamOptimized: the footer (a copy of the header) is 1024 bytes from the end.
            let flen = file.len();
            if flen < 1536 {
                return Err(bad("stream ends before its footer".into()));
            }
            file.read_at(&mut h, flen - 1024).map_err(io)?;
            if le32(&h, 0) != SPARSE_MAGIC {
                return Err(bad("no footer before the end-of-stream marker".into()));
            }
        }
        Ok(h)
    }

    /// The layout header `h` describes; refuses compression other than deflate with
    /// markers, odd grain and table sizes, and grain directories too large to hold.
    fn layout(h: &[u8], path: &Path) -> std::result::Result<Layout, FormatError> {
        let bad = |why: String| FormatError::corrupt(path, NAME, why);
        let flags = le32(h, 8);
        let capacity = le64(h, 0x0c);
        let grain_sectors = le64(h, 0x14);
        let gtes = u64::from(le32(h, 0x2c));
        let compress_algorithm = u16::from_le_bytes([h[0x4d], h[0x4e]]);
        let stream = flags & FLAG_COMPRESSED != 0;
        if stream && compress_algorithm != 1 {
            return Err(FormatError::unsupported(
                path,
                NAME,
                format!("compression algorithm {compress_algorithm}"),
            ));
        }
        if stream && flags & FLAG_MARKERS == 0 {
            return Err(FormatError::unsupported(
                path,
                NAME,
                "compressed grains without markers",
            ));
        }
        if !grain_sectors.is_power_of_two() || grain_sectors > 1 << 16 {
            return Err(bad(format!("grain size {grain_sectors} sectors")));
        }
        if gtes == 0 || gtes > 1 << 16 {
            return Err(bad(format!("{gtes} entries per grain table")));
        }
        let grain = grain_sectors * 512;
        let size = capacity
            .checked_mul(512)
            .filter(|s| *s <= 1 << 62)
            .ok_or_else(|| bad(format!("capacity {capacity} sectors")))?;
        let gd_entries = size.div_ceil(grain * gtes);
        if gd_entries > MAX_GD_ENTRIES {
            return Err(FormatError::unsupported(
                path,
                NAME,
                format!("a grain directory of {gd_entries} entries"),
            ));
        }
        Ok(Layout {
            flags,
            stream,
            grain,
            gtes,
            size,
            gd_entries,
        })
    }

    /// Reads the grain directory (or its redundant copy) of `entries` entries at sector
    /// `at`.
    fn read_gd(
        file: &Storage,
        path: &Path,
        at: u64,
        entries: u64,
    ) -> std::result::Result<Vec<u32>, FormatError> {
        let bytes = at
            .checked_mul(512)
            .filter(|b| *b >= 512 && b + entries * 4 <= file.len())
            .ok_or_else(|| {
                FormatError::corrupt(
                    path,
                    NAME,
                    format!("grain directory at sector {at} misplaced"),
                )
            })?;
        let mut raw = vec![0u8; (entries * 4) as usize];
        file.read_at(&mut raw, bytes)
            .map_err(|e| FormatError::io(path, e))?;
        Ok(raw.chunks_exact(4).map(|c| le32(c, 0)).collect())
    }

    /// Refuses a truncated file, as qemu does: grains starting (`overhead`) or grain
    /// tables ending past its end. (A grain past the end fails its read with EIO.)
    fn refuse_truncated(
        file: &Storage,
        path: &Path,
        layout: &Layout,
        overhead: u64,
        gd: &[u32],
        rgd: Option<&[u32]>,
    ) -> std::result::Result<(), FormatError> {
        let bad = |why: String| FormatError::corrupt(path, NAME, why);
        let flen = file.len();
        if !layout.stream && overhead > flen {
            return Err(bad(format!(
                "truncated: the grains start at {overhead}, past the end of the file \
                 ({flen} bytes)"
            )));
        }
        for (i, &gt) in gd.iter().chain(rgd.into_iter().flatten()).enumerate() {
            let end = u64::from(gt) * 512 + layout.gtes * 4;
            if gt != 0 && end > flen {
                return Err(bad(format!(
                    "truncated: grain table {} ends at {end}, past the end of the file \
                     ({flen} bytes)",
                    i % gd.len().max(1)
                )));
            }
        }
        Ok(())
    }

    /// The grain table at sector `gt` (cached).
    fn table<'a>(&self, cache: &'a mut Lru<Vec<u32>>, gt: u32) -> Result<&'a mut Vec<u32>> {
        let key = u64::from(gt);
        if !cache.contains(key) {
            let off = key * 512;
            if gt < 1 || off + self.gtes * 4 > self.file.len() {
                return Err(Errno::EIO);
            }
            let mut raw = vec![0u8; (self.gtes * 4) as usize];
            self.file.read_at(&mut raw, off)?;
            cache.evict_if_full();
            cache.insert(
                key,
                raw.chunks_exact(4).map(|c| le32(c, 0)).collect(),
                false,
            );
        }
        Ok(cache.get(key).expect("just loaded"))
    }

    fn gte(&self, cache: &mut Lru<Vec<u32>>, grain_no: u64) -> Result<u32> {
        let gt = self.gd[(grain_no / self.gtes) as usize];
        if gt == 0 {
            return Ok(0);
        }
        Ok(self.table(cache, gt)?[(grain_no % self.gtes) as usize])
    }

    /// Adds the grains of `[rel, rel + len)` (extent-relative) to `list`: data where the
    /// grain table points at a grain, zeros where the entry is 0 or 1 or the table is
    /// absent. Returns the bytes added.
    fn push_grains(&self, list: &mut ExtentList, rel: u64, len: u64) -> Result<u64> {
        let mut cache = self.st.lock().unwrap_or_else(|p| p.into_inner());
        let span = self.grain * self.gtes;
        let mut done = 0;
        while done < len {
            let pos = rel + done;
            let grain_no = pos / self.grain;
            // A whole grain table missing is one hole.
            let next = if self.gd[(grain_no / self.gtes) as usize] == 0 {
                (pos / span + 1) * span
            } else {
                (grain_no + 1) * self.grain
            };
            let n = (next - pos).min(len - done);
            let zero = self.gte(&mut cache, grain_no)? <= 1;
            if !list.push(n, zero) {
                break;
            }
            done += n;
        }
        Ok(done)
    }

    /// Reads `buf` at extent-relative `rel`. The grain table entries of the whole span are
    /// looked up under the lock first; then each run of grains that are neighbours both in
    /// the request and in the file is read with one call (as qcow2 reads its clusters).
    /// Unallocated and zeroed grains read as zeros; compressed grains one at a time.
    fn read_span(&self, buf: &mut [u8], rel: u64) -> Result<()> {
        if self.stream {
            let mut done = 0;
            while done < buf.len() {
                let pos = rel + done as u64;
                let within = pos % self.grain;
                let n = ((self.grain - within) as usize).min(buf.len() - done);
                self.read_grain(&mut buf[done..done + n], pos / self.grain, within)?;
                done += n;
            }
            return Ok(());
        }
        // (host offset, offset in buf, length)
        let mut runs: Vec<(u64, usize, usize)> = Vec::new();
        let mut cache = self.st.lock().unwrap_or_else(|p| p.into_inner());
        let mut done = 0;
        while done < buf.len() {
            let pos = rel + done as u64;
            let within = pos % self.grain;
            let n = ((self.grain - within) as usize).min(buf.len() - done);
            let e = self.gte(&mut cache, pos / self.grain)?;
            if e <= 1 {
                buf[done..done + n].fill(0);
            } else {
                let off = u64::from(e) * 512;
                if off >= self.file.len() {
                    // A truncated file: the data is gone, not zeros.
                    return Err(Errno::EIO);
                }
                let host = off + within;
                match runs.last_mut() {
                    Some((start, at, len))
                        if *start + *len as u64 == host && *at + *len == done =>
                    {
                        *len += n
                    }
                    _ => runs.push((host, done, n)),
                }
            }
            done += n;
        }
        drop(cache);
        for (host, at, len) in runs {
            self.file.read_at(&mut buf[at..at + len], host)?;
        }
        Ok(())
    }

    fn read_grain(&self, buf: &mut [u8], grain_no: u64, within: u64) -> Result<()> {
        let mut cache = self.st.lock().unwrap_or_else(|p| p.into_inner());
        let e = self.gte(&mut cache, grain_no)?;
        drop(cache);
        if e <= 1 {
            buf.fill(0);
            return Ok(());
        }
        let off = u64::from(e) * 512;
        if off >= self.file.len() {
            return Err(Errno::EIO);
        }
        if !self.stream {
            return self.file.read_at(buf, off + within);
        }
        let mut marker = [0u8; 12];
        self.file.read_at(&mut marker, off)?;
        let clen = u64::from(le32(&marker, 8));
        if clen == 0 || clen > 2 * self.grain + 4096 {
            return Err(Errno::EIO);
        }
        let mut input = vec![0u8; clen as usize];
        self.file.read_at(&mut input, off + 12)?;
        let mut out = vec![0u8; self.grain as usize];
        flate2::Decompress::new(true)
            .decompress(&input, &mut out, flate2::FlushDecompress::Finish)
            .map_err(|_| Errno::EIO)?;
        buf.copy_from_slice(&out[within as usize..within as usize + buf.len()]);
        Ok(())
    }

    fn write_grain(&self, data: &[u8], grain_no: u64, within: u64) -> Result<()> {
        if self.stream {
            return Err(Errno::EROFS);
        }
        let mut cache = self.st.lock().unwrap_or_else(|p| p.into_inner());
        let gi = (grain_no / self.gtes) as usize;
        let gt = self.gd[gi];
        if gt == 0 {
            // Directories without preallocated tables are not written (qemu preallocates).
            return Err(Errno::EOPNOTSUPP);
        }
        let e = self.table(&mut cache, gt)?[(grain_no % self.gtes) as usize];
        if e > 1 {
            let off = u64::from(e) * 512;
            if off >= self.file.len() {
                return Err(Errno::EIO);
            }
            return self.file.write_at(data, off + within);
        }
        let mut grain = vec![0u8; self.grain as usize];
        grain[within as usize..within as usize + data.len()].copy_from_slice(data);
        let at = self.file.len().div_ceil(512) * 512;
        let sector = u32::try_from(at / 512).map_err(|_| Errno::EFBIG)?;
        self.file.write_at(&grain, at)?;
        let idx = grain_no % self.gtes;
        self.file
            .write_at(&sector.to_le_bytes(), u64::from(gt) * 512 + idx * 4)?;
        if let Some(rgd) = &self.rgd {
            let rgt = rgd[gi];
            if rgt != 0 {
                self.file
                    .write_at(&sector.to_le_bytes(), u64::from(rgt) * 512 + idx * 4)?;
            }
        }
        self.table(&mut cache, gt)?[idx as usize] = sector;
        Ok(())
    }

    fn allocated(&self) -> u64 {
        let mut cache = self.st.lock().unwrap_or_else(|p| p.into_inner());
        let mut n = 0;
        for &gt in &self.gd {
            if gt != 0 {
                if let Ok(t) = self.table(&mut cache, gt) {
                    n += t.iter().filter(|&&e| e > 1).count() as u64;
                }
            }
        }
        n * self.grain
    }
}

fn parse_extent_line(line: &str) -> Option<(String, u64, String, String, u64)> {
    let (before, rest) = line.split_once('"')?;
    let (file, after) = rest.split_once('"')?;
    let mut words = before.split_whitespace();
    let access = words.next()?.to_string();
    let sectors = words.next()?.parse().ok()?;
    let kind = words.next()?.to_string();
    let offset = after.trim().parse().unwrap_or(0);
    Some((access, sectors, kind, file.to_string(), offset))
}

impl Vmdk {
    /// Opens the VMDK image (sparse file or descriptor) at `path`.
    pub fn open(path: &Path, read_only: bool) -> std::result::Result<Vmdk, FormatError> {
        let dev = FileDevice::open(path, read_only).map_err(|e| FormatError::io(path, e))?;
        Vmdk::open_storage(Storage::file(dev), read_only)
    }

    /// Opens a VMDK image stored on any device; the files a descriptor names are resolved
    /// against `name`'s directory.
    pub fn open_on(
        dev: Arc<dyn BlockDevice>,
        name: &Path,
        read_only: bool,
    ) -> std::result::Result<Vmdk, FormatError> {
        Vmdk::open_storage(Storage::device(dev, name), read_only)
    }

    pub(crate) fn open_storage(
        file: Storage,
        read_only: bool,
    ) -> std::result::Result<Vmdk, FormatError> {
        let path = file.name().to_path_buf();
        let read_only = read_only || file.read_only();
        let mut head = [0u8; 4];
        file.read_at(&mut head, 0)
            .map_err(|e| FormatError::io(&path, e))?;
        if u32::from_le_bytes(head) == SPARSE_MAGIC {
            return Vmdk::open_sparse_file(file, path, read_only);
        }
        let text = Vmdk::read_descriptor(&file, &path)?;
        refuse_delta(&path, &text)?;
        let create_type = descriptor_value(&text, "createType").unwrap_or_default();
        let mut extents = Vec::new();
        let mut start = 0u64;
        for line in text.lines().map(str::trim) {
            let Some(first) = line.split_whitespace().next() else {
                continue;
            };
            if !matches!(first, "RW" | "RDONLY" | "NOACCESS") {
                continue;
            }
            let extent = Vmdk::open_extent(&path, line, start, read_only)?;
            start = start
                .checked_add(extent.len)
                .ok_or_else(|| FormatError::corrupt(&path, NAME, "extents overflow"))?;
            extents.push(extent);
        }
        if extents.is_empty() {
            return Err(FormatError::corrupt(
                &path,
                NAME,
                "descriptor names no extent",
            ));
        }
        Ok(Vmdk {
            name: path,
            size: start,
            extents,
            read_only,
            create_type,
        })
    }

    /// A sparse extent file opened as a whole image (monolithicSparse, streamOptimized;
    /// the latter read-only), typed by its embedded descriptor.
    fn open_sparse_file(
        file: Storage,
        path: PathBuf,
        read_only: bool,
    ) -> std::result::Result<Vmdk, FormatError> {
        let sparse = Sparse::open(file, read_only)?;
        let descriptor = embedded_descriptor(&sparse);
        refuse_delta(&path, &descriptor)?;
        let create_type = descriptor_value(&descriptor, "createType")
            .unwrap_or_else(|| "monolithicSparse".into());
        let stream = sparse.stream;
        let size = sparse.capacity;
        Ok(Vmdk {
            name: path,
            size,
            extents: vec![Extent {
                start: 0,
                len: size,
                writable: !read_only && !stream,
                kind: Kind::Sparse(Box::new(sparse)),
            }],
            read_only: read_only || stream,
            create_type,
        })
    }

    /// The text of a descriptor file (at most 1 MiB).
    fn read_descriptor(file: &Storage, path: &Path) -> std::result::Result<String, FormatError> {
        let len = file.len();
        if len > 1 << 20 {
            return Err(FormatError::corrupt(path, NAME, "descriptor over 1 MiB"));
        }
        let mut raw = vec![0u8; len as usize];
        file.read_at(&mut raw, 0)
            .map_err(|e| FormatError::io(path, e))?;
        String::from_utf8(raw)
            .map_err(|_| FormatError::corrupt(path, NAME, "descriptor is not text"))
    }

    /// The extent a descriptor `line` names, placed at guest offset `start`, with its file
    /// opened and locked.
    fn open_extent(
        path: &Path,
        line: &str,
        start: u64,
        read_only: bool,
    ) -> std::result::Result<Extent, FormatError> {
        let (access, sectors, kind, name, offset) = parse_extent_line(line)
            .ok_or_else(|| FormatError::corrupt(path, NAME, format!("bad extent line {line:?}")))?;
        let len = sectors
            .checked_mul(512)
            .filter(|l| *l <= 1 << 62)
            .ok_or_else(|| {
                FormatError::corrupt(path, NAME, format!("extent of {sectors} sectors"))
            })?;
        let writable = !read_only && access == "RW";
        let ext_path = crate::resolve_backing(path, &name);
        let kind = match kind.as_str() {
            "FLAT" | "VMFS" => Kind::Flat {
                file: open_extent_file(&ext_path, writable)?,
                offset: offset
                    .checked_mul(512)
                    .ok_or_else(|| FormatError::corrupt(path, NAME, "extent offset overflows"))?,
            },
            "SPARSE" => {
                let s = Sparse::open(open_extent_file(&ext_path, writable)?, !writable)?;
                if s.capacity < len {
                    return Err(FormatError::corrupt(
                        &ext_path,
                        NAME,
                        "sparse extent smaller than its descriptor line",
                    ));
                }
                Kind::Sparse(Box::new(s))
            }
            "ZERO" => Kind::Zero,
            other => {
                return Err(FormatError::unsupported(
                    path,
                    NAME,
                    format!("{other} extents"),
                ))
            }
        };
        Ok(Extent {
            start,
            len,
            writable: writable && !matches!(kind, Kind::Zero),
            kind,
        })
    }

    /// The descriptor's `createType` (monolithicSparse, monolithicFlat, streamOptimized...).
    pub fn create_type(&self) -> &str {
        &self.create_type
    }

    fn extent_at(&self, pos: u64) -> Option<&Extent> {
        let i = self.extents.partition_point(|e| e.start + e.len <= pos);
        self.extents.get(i)
    }
}

/// Opens the file of a descriptor's extent, locked exclusively when it is written and
/// shared when only read.
fn open_extent_file(ext_path: &Path, writable: bool) -> std::result::Result<Storage, FormatError> {
    let dev = FileDevice::open(ext_path, !writable).map_err(|e| FormatError::io(ext_path, e))?;
    let mode = if writable {
        LockMode::Exclusive
    } else {
        LockMode::Shared
    };
    dev.lock(mode).map_err(|lock| FormatError::Locked {
        path: ext_path.to_path_buf(),
        lock,
    })?;
    Ok(Storage::file(dev))
}

fn embedded_descriptor(s: &Sparse) -> String {
    let mut h = [0u8; 512];
    if s.file.read_at(&mut h, 0).is_err() {
        return String::new();
    }
    let (off, len) = (le64(&h, 0x1c), le64(&h, 0x24));
    if off == 0 || len == 0 || len > 2048 {
        return String::new();
    }
    let Some(at) = off.checked_mul(512) else {
        return String::new();
    };
    let mut raw = vec![0u8; (len * 512) as usize];
    if s.file.read_at(&mut raw, at).is_err() {
        return String::new();
    }
    let end = raw.iter().position(|&b| b == 0).unwrap_or(raw.len());
    String::from_utf8_lossy(&raw[..end]).into_owned()
}

fn descriptor_value(text: &str, key: &str) -> Option<String> {
    text.lines().find_map(|l| {
        let (k, v) = l.split_once('=')?;
        (k.trim() == key).then(|| v.trim().trim_matches('"').to_string())
    })
}

fn refuse_delta(path: &Path, text: &str) -> std::result::Result<(), FormatError> {
    if descriptor_value(text, "parentFileNameHint").is_some() {
        return Err(FormatError::unsupported(
            path,
            NAME,
            "delta links (parentFileNameHint)",
        ));
    }
    Ok(())
}

impl BlockDevice for Vmdk {
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
        let mut done = 0;
        while done < len {
            let pos = offset + done as u64;
            let ext = self.extent_at(pos).ok_or(Errno::EIO)?;
            let rel = pos - ext.start;
            let n = ((ext.len - rel) as usize).min(len - done);
            match &ext.kind {
                Kind::Zero => buf[done..done + n].fill(0),
                Kind::Flat { file, offset } => {
                    file.read_at(&mut buf[done..done + n], offset.saturating_add(rel))?
                }
                Kind::Sparse(s) => s.read_span(&mut buf[done..done + n], rel)?,
            }
            done += n;
        }
        Ok(len)
    }

    /// Per extent: a flat file's own holes, a sparse extent's grain directory and tables
    /// (grain table entries 0, unallocated, and 1, zeroed, read as zeros), a ZERO extent.
    fn extents(&self, offset: u64, len: u64, max: usize) -> Result<Vec<Run>> {
        let end = offset.saturating_add(len).min(self.size);
        let mut list = ExtentList::new(max);
        let mut pos = offset;
        while pos < end {
            let ext = self.extent_at(pos).ok_or(Errno::EIO)?;
            let rel = pos - ext.start;
            let n = (ext.len - rel).min(end - pos);
            let added = match &ext.kind {
                Kind::Zero => {
                    if list.push(n, true) {
                        n
                    } else {
                        0
                    }
                }
                Kind::Flat { file, offset } => {
                    file.push_extents(&mut list, offset.saturating_add(rel), n)?
                }
                Kind::Sparse(s) => s.push_grains(&mut list, rel, n)?,
            };
            if added < n {
                break;
            }
            pos += n;
        }
        Ok(list.into_vec())
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
        let mut done = 0;
        while done < len {
            let pos = offset + done as u64;
            let ext = self.extent_at(pos).ok_or(Errno::EIO)?;
            if !ext.writable {
                return if done > 0 {
                    Ok(done)
                } else {
                    Err(Errno::EROFS)
                };
            }
            let rel = pos - ext.start;
            let mut n = ((ext.len - rel) as usize).min(len - done);
            match &ext.kind {
                Kind::Zero => return Err(Errno::EROFS),
                Kind::Flat { file, offset } => {
                    file.write_at(&buf[done..done + n], offset.saturating_add(rel))?
                }
                Kind::Sparse(s) => {
                    let within = rel % s.grain;
                    n = n.min((s.grain - within) as usize);
                    s.write_grain(&buf[done..done + n], rel / s.grain, within)?;
                }
            }
            done += n;
        }
        Ok(len)
    }

    fn flush(&self) -> Result<()> {
        if self.read_only {
            return Ok(());
        }
        for e in &self.extents {
            match &e.kind {
                Kind::Flat { file, .. } if e.writable => file.flush()?,
                Kind::Sparse(s) if e.writable => s.file.flush()?,
                _ => {}
            }
        }
        Ok(())
    }
}

impl ImageDevice for Vmdk {
    fn image_info(&self) -> ImageInfo {
        let mut allocated = 0;
        let mut host = 0;
        for e in &self.extents {
            match &e.kind {
                Kind::Flat { file, .. } => {
                    allocated += e.len;
                    host += file.host_bytes();
                }
                Kind::Sparse(s) => {
                    allocated += s.allocated();
                    host += s.file.host_bytes();
                }
                Kind::Zero => {}
            }
        }
        ImageInfo {
            path: self.name.clone(),
            format: Format::Vmdk,
            virtual_size: self.size,
            allocated_bytes: allocated,
            host_bytes: host,
            backing: None,
        }
    }
    fn into_block_device(self: Arc<Self>) -> Arc<dyn BlockDevice> {
        self
    }
}

/// Where [`create_vmdk`] puts things, in sectors.
struct NewLayout {
    capacity: u64,
    granularity: u64,
    gtes: u64,
    gt_count: u64,
    gt_sectors: u64,
    gd_sectors: u64,
    desc_offset: u64,
    desc_size: u64,
    rgd_offset: u64,
    gd_offset: u64,
    grain_offset: u64,
}

/// Creates an empty monolithicSparse VMDK of `size` bytes (rounded up to 512-byte sectors)
/// at `path`, laid out as `qemu-img create -f vmdk` does: 64 KiB grains, 512 entries per
/// grain table, a redundant grain directory, every grain table preallocated (zeros) after
/// each directory, and an embedded descriptor naming the file itself. Overwrites `path`.
pub fn create_vmdk(path: &Path, size: u64) -> std::result::Result<(), FormatError> {
    use std::os::unix::fs::FileExt;
    let io = |e: std::io::Error| FormatError::io(path, e.into());
    let l = NewLayout::for_size(path, size)?;
    let h = l.header();
    let desc = l.descriptor(path);
    if desc.len() as u64 > l.desc_size * 512 {
        return Err(FormatError::unsupported(
            path,
            NAME,
            "a file name this long in the descriptor",
        ));
    }
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)
        .map_err(io)?;
    f.write_all_at(&h, 0).map_err(io)?;
    f.write_all_at(desc.as_bytes(), l.desc_offset * 512)
        .map_err(io)?;
    f.write_all_at(&l.directory(l.rgd_offset), l.rgd_offset * 512)
        .map_err(io)?;
    f.write_all_at(&l.directory(l.gd_offset), l.gd_offset * 512)
        .map_err(io)?;
    f.set_len(l.grain_offset * 512).map_err(io)?;
    f.sync_all().map_err(io)?;
    Ok(())
}

impl NewLayout {
    /// The layout of a new image of `size` bytes; refused when its grain directory or
    /// first grain would be out of the format's reach.
    fn for_size(path: &Path, size: u64) -> std::result::Result<NewLayout, FormatError> {
        let capacity = size.div_ceil(512);
        let granularity = 128u64; // sectors: 64 KiB grains
        let gtes = 512u64;
        let grains = capacity.div_ceil(granularity);
        let gt_count = grains.div_ceil(gtes).max(1);
        let too_big = || FormatError::unsupported(path, NAME, format!("a {size}-byte disk"));
        if gt_count > MAX_GD_ENTRIES {
            return Err(too_big());
        }
        let gt_sectors = (gtes * 4).div_ceil(512);
        let gd_sectors = (gt_count * 4).div_ceil(512);
        let (desc_offset, desc_size) = (1u64, 20u64);
        let rgd_offset = desc_offset + desc_size;
        let gd_offset = rgd_offset + gd_sectors + gt_sectors * gt_count;
        let grain_offset =
            (gd_offset + gd_sectors + gt_sectors * gt_count).div_ceil(granularity) * granularity;
        if grain_offset > u64::from(u32::MAX) {
            return Err(too_big());
        }
        Ok(NewLayout {
            capacity,
            granularity,
            gtes,
            gt_count,
            gt_sectors,
            gd_sectors,
            desc_offset,
            desc_size,
            rgd_offset,
            gd_offset,
            grain_offset,
        })
    }

    /// The sparse extent header.
    fn header(&self) -> Vec<u8> {
        let mut h = vec![0u8; 512];
        h[0..4].copy_from_slice(&SPARSE_MAGIC.to_le_bytes());
        h[4..8].copy_from_slice(&1u32.to_le_bytes());
        h[8..12].copy_from_slice(&(1 | FLAG_RGD).to_le_bytes()); // newline test + redundant GD
        h[0x0c..0x14].copy_from_slice(&self.capacity.to_le_bytes());
        h[0x14..0x1c].copy_from_slice(&self.granularity.to_le_bytes());
        h[0x1c..0x24].copy_from_slice(&self.desc_offset.to_le_bytes());
        h[0x24..0x2c].copy_from_slice(&self.desc_size.to_le_bytes());
        h[0x2c..0x30].copy_from_slice(&(self.gtes as u32).to_le_bytes());
        h[0x30..0x38].copy_from_slice(&self.rgd_offset.to_le_bytes());
        h[0x38..0x40].copy_from_slice(&self.gd_offset.to_le_bytes());
        h[0x40..0x48].copy_from_slice(&self.grain_offset.to_le_bytes());
        h[0x49..0x4d].copy_from_slice(b"\n \r\n");
        h
    }

    /// The embedded descriptor: one SPARSE extent, the file at `path` itself, a fresh CID
    /// and qemu's IDE geometry.
    fn descriptor(&self, path: &Path) -> String {
        let capacity = self.capacity;
        let file_name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let cylinders = (capacity / (16 * 63)).min(16383);
        let cid = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u32)
            .unwrap_or(0)
            | 1;
        format!(
            "# Disk DescriptorFile\nversion=1\nCID={cid:08x}\nparentCID=ffffffff\n\
             createType=\"monolithicSparse\"\n\n# Extent description\n\
             RW {capacity} SPARSE \"{file_name}\"\n\n# The Disk Data Base\n#DDB\n\n\
             ddb.virtualHWVersion = \"4\"\nddb.geometry.cylinders = \"{cylinders}\"\n\
             ddb.geometry.heads = \"16\"\nddb.geometry.sectors = \"63\"\n\
             ddb.adapterType = \"ide\"\nddb.toolsVersion = \"2147483647\"\n"
        )
    }

    /// A grain directory at sector `dir` whose tables follow it.
    fn directory(&self, dir: u64) -> Vec<u8> {
        let first = dir + self.gd_sectors;
        let mut gd = vec![0u8; (self.gd_sectors * 512) as usize];
        for i in 0..self.gt_count {
            let at = (i * 4) as usize;
            gd[at..at + 4].copy_from_slice(&((first + i * self.gt_sectors) as u32).to_le_bytes());
        }
        gd
    }
}
