//! User-Mode Linux COW overlays, version 3 (what `uml_mkcow` writes), read-write.
//!
//! Layout (big-endian): magic 0x4f4f4f4d ("OOOM" on disk), version 3, the backing file's
//! mtime (32 bits) and size (64 bits), sector size, alignment, cow format, then the backing
//! file's path (4096 bytes). The bitmap of written sectors (bit `i` of byte `i / 8`, least
//! significant first) starts at the header size rounded up to the alignment, and the data
//! of sector `i` at the bitmap's end rounded up to the alignment plus `i * sectorsize`.
//! The backing file is raw (UML's rule: it is never probed), opened read-only and
//! shared-locked; one newer than the recorded mtime, or of another size, is refused unless
//! [`OpenOptions::force`](crate::OpenOptions::force).

use crate::error::FormatError;
use crate::storage::Storage;
use crate::{be32, be64, open_backing, Ctx, Format, ImageDevice, ImageInfo};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use vudev::{BlockDevice, Errno, Extent, ExtentList, Result};

/// The magic, read big-endian.
pub const MAGIC: u32 = 0x4f4f_4f4d;
const NAME: &str = "UML COW";
const PATH_LEN: usize = 4096;
const HEADER_LEN: u64 = 4 + 4 + 4 + 8 + 4 + 4 + 4 + PATH_LEN as u64;
/// Largest bitmap held in memory (256 MiB: an 1 TiB disk with 512-byte sectors).
const MAX_BITMAP: u64 = 256 << 20;

/// A UML COW overlay as a block device.
pub struct UmlCow {
    file: Storage,
    /// None when opened alone ([`crate::open_layer`]): what the bitmap does not mark reads
    /// as zeros.
    backing: Option<Arc<dyn ImageDevice>>,
    backing_path: String,
    size: u64,
    sector: u64,
    bitmap_offset: u64,
    data_offset: u64,
    read_only: bool,
    bitmap: Mutex<Vec<u8>>,
}

impl std::fmt::Debug for UmlCow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UmlCow")
            .field("file", &self.file.name())
            .field("backing", &self.backing_path)
            .finish()
    }
}

fn layout(size: u64, sector: u64, align: u64) -> (u64, u64, u64) {
    let bitmap_offset = HEADER_LEN.div_ceil(align) * align;
    let bitmap_len = size.div_ceil(sector).div_ceil(8);
    let data_offset = (bitmap_offset + bitmap_len).div_ceil(align) * align;
    (bitmap_offset, bitmap_len, data_offset)
}

fn bit(map: &[u8], i: u64) -> bool {
    map[(i / 8) as usize] & (1 << (i % 8)) != 0
}

/// The fields of the version 3 header that opening an overlay uses.
struct Header {
    /// The backing file's mtime when the overlay was made.
    mtime: u64,
    size: u64,
    sector: u64,
    align: u64,
    /// The backing file's path field, NUL-padded.
    name: Vec<u8>,
}

fn corrupt(path: &Path, why: impl Into<String>) -> FormatError {
    FormatError::corrupt(path, NAME, why)
}

impl Header {
    /// Reads the header at the start of `file`, refusing a short file, headers of versions
    /// 1 and 2, another version and another cow format.
    fn read(file: &Storage, path: &Path) -> std::result::Result<Header, FormatError> {
        if file.len() < HEADER_LEN {
            return Err(corrupt(
                path,
                format!("truncated header ({} bytes)", file.len()),
            ));
        }
        let mut h = vec![0u8; HEADER_LEN as usize];
        file.read_at(&mut h, 0)
            .map_err(|e| FormatError::io(path, e))?;
        if be32(&h, 0) != MAGIC {
            return Err(FormatError::unsupported(
                path,
                NAME,
                "headers of versions 1 and 2 (host byte order)",
            ));
        }
        let version = be32(&h, 4);
        if version != 3 {
            return Err(FormatError::unsupported(
                path,
                NAME,
                format!("version {version}"),
            ));
        }
        let cow_format = be32(&h, 28);
        if cow_format != 0 {
            return Err(FormatError::unsupported(
                path,
                NAME,
                format!("cow format {cow_format}"),
            ));
        }
        Ok(Header {
            mtime: u64::from(be32(&h, 8)),
            size: be64(&h, 12),
            sector: u64::from(be32(&h, 20)),
            align: u64::from(be32(&h, 24)),
            name: h[32..32 + PATH_LEN].to_vec(),
        })
    }

    /// Checks the sector size and the alignment; refuses a disk whose bitmap would be
    /// larger than `MAX_BITMAP`.
    fn check_geometry(&self, path: &Path) -> std::result::Result<(), FormatError> {
        let Header {
            size,
            sector,
            align,
            ..
        } = *self;
        if !sector.is_power_of_two() || !(512..=65536).contains(&sector) {
            return Err(corrupt(path, format!("sector size {sector}")));
        }
        if !align.is_power_of_two() || align > 1 << 20 {
            return Err(corrupt(path, format!("alignment {align}")));
        }
        if size > 1 << 62 || size.div_ceil(sector).div_ceil(8) > MAX_BITMAP {
            return Err(FormatError::unsupported(
                path,
                NAME,
                format!("a {size}-byte disk"),
            ));
        }
        Ok(())
    }

    /// The backing file's path as recorded: up to the first NUL, UTF-8, not empty.
    fn backing_path(&self, path: &Path) -> std::result::Result<String, FormatError> {
        let end = self.name.iter().position(|&b| b == 0).unwrap_or(PATH_LEN);
        let backing_path = String::from_utf8(self.name[..end].to_vec())
            .map_err(|_| corrupt(path, "backing file name is not UTF-8"))?;
        if backing_path.is_empty() {
            return Err(corrupt(path, "no backing file name"));
        }
        Ok(backing_path)
    }

    /// Refuses a backing file (at `resolved`) newer than the recorded mtime or of another
    /// size than the disk.
    fn check_backing_unchanged(
        &self,
        path: &Path,
        resolved: &Path,
    ) -> std::result::Result<(), FormatError> {
        let meta = std::fs::metadata(resolved).map_err(|e| FormatError::Backing {
            path: path.to_path_buf(),
            backing: resolved.to_path_buf(),
            source: Box::new(FormatError::io(resolved, e.into())),
        })?;
        use std::os::unix::fs::MetadataExt;
        let now = meta.mtime().max(0) as u64;
        let changed = |detail: String| FormatError::BackingChanged {
            path: path.to_path_buf(),
            backing: resolved.to_path_buf(),
            detail,
        };
        let (mtime, size) = (self.mtime, self.size);
        if now > mtime {
            return Err(changed(format!(
                "mtime {now} is newer than the recorded {mtime}"
            )));
        }
        if meta.len() != size {
            return Err(changed(format!(
                "size {} differs from the recorded {size}",
                meta.len()
            )));
        }
        Ok(())
    }
}

/// Reads the bitmap of written sectors whole.
fn read_bitmap(
    file: &Storage,
    path: &Path,
    offset: u64,
    len: u64,
) -> std::result::Result<Vec<u8>, FormatError> {
    let mut bitmap = vec![0u8; len as usize];
    file.read_at(&mut bitmap, offset)
        .map_err(|e| FormatError::io(path, e))?;
    Ok(bitmap)
}

impl UmlCow {
    /// Opens the overlay at `path` (its backing file read-only); `force` accepts a backing
    /// file that changed since the overlay was made.
    pub fn open(
        path: &Path,
        read_only: bool,
        force: bool,
    ) -> std::result::Result<UmlCow, FormatError> {
        let dev = vudev::FileDevice::open(path, read_only).map_err(|e| FormatError::io(path, e))?;
        let ctx = Ctx::new(crate::OpenOptions {
            read_only,
            force,
            ..Default::default()
        });
        UmlCow::open_storage(Storage::file(dev), read_only, &ctx)
    }

    pub(crate) fn open_storage(
        file: Storage,
        read_only: bool,
        ctx: &Ctx,
    ) -> std::result::Result<UmlCow, FormatError> {
        let path = file.name().to_path_buf();
        let h = Header::read(&file, &path)?;
        h.check_geometry(&path)?;
        let backing_path = h.backing_path(&path)?;
        let (bitmap_offset, bitmap_len, data_offset) = layout(h.size, h.sector, h.align);
        if !ctx.options.force && !ctx.alone {
            h.check_backing_unchanged(&path, &crate::resolve_backing(&path, &backing_path))?;
        }
        let backing = if ctx.alone {
            None
        } else {
            Some(open_backing(&path, &backing_path, Some(Format::Raw), ctx)?)
        };
        let bitmap = read_bitmap(&file, &path, bitmap_offset, bitmap_len)?;
        let read_only = read_only || file.read_only();
        Ok(UmlCow {
            file,
            backing,
            backing_path,
            size: h.size,
            sector: h.sector,
            bitmap_offset,
            data_offset,
            read_only,
            bitmap: Mutex::new(bitmap),
        })
    }

    /// The backing file's path as recorded.
    pub fn backing_path(&self) -> &str {
        &self.backing_path
    }

    /// The map as [`BlockDevice::extents`] gives it, or with `own` this overlay's own map
    /// ([`ImageDevice::own_extents`]): the sectors the bitmap marks.
    fn map_extents(&self, offset: u64, len: u64, max: usize, own: bool) -> Result<Vec<Extent>> {
        let end = offset.saturating_add(len).min(self.size);
        let map = self.bitmap.lock().unwrap_or_else(|p| p.into_inner());
        let mut list = ExtentList::new(max);
        let mut pos = offset;
        while pos < end {
            let mine = bit(&map, pos / self.sector);
            let mut next = (pos / self.sector + 1) * self.sector;
            let whole = if mine { 0xff } else { 0 };
            while next < end && bit(&map, next / self.sector) == mine {
                let s = next / self.sector;
                // Eight sectors at once where a bitmap byte is all one side.
                next += if s % 8 == 0 && map[(s / 8) as usize] == whole {
                    8 * self.sector
                } else {
                    self.sector
                };
            }
            let n = next.min(end) - pos;
            let added = match &self.backing {
                Some(b) if !mine && !own => list.push_from(b.as_ref(), pos, n)?,
                // Without a backing file (or for this overlay's own map), the sectors it
                // does not hold read as zeros (are not its own).
                _ => {
                    if list.push(n, !mine) {
                        n
                    } else {
                        0
                    }
                }
            };
            if added < n {
                break;
            }
            pos += n;
        }
        Ok(list.into_vec())
    }
}

impl BlockDevice for UmlCow {
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
        let map = self.bitmap.lock().unwrap_or_else(|p| p.into_inner());
        let mut done = 0;
        while done < len {
            let pos = offset + done as u64;
            let s = pos / self.sector;
            let mine = bit(&map, s);
            // The run of sectors from the same side.
            let mut end = (s + 1) * self.sector;
            while end < offset + len as u64 && bit(&map, end / self.sector) == mine {
                end += self.sector;
            }
            let n = (end.min(offset + len as u64) - pos) as usize;
            let out = &mut buf[done..done + n];
            if mine {
                self.file.read_at(out, self.data_offset + pos)?;
            } else {
                out.fill(0);
                if let Some(b) = &self.backing {
                    b.read_until_end(out, pos)?;
                }
            }
            done += n;
        }
        Ok(len)
    }

    /// Sectors the bitmap marks are this overlay's data; the others are what the backing
    /// file says of them.
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
        let mut map = self.bitmap.lock().unwrap_or_else(|p| p.into_inner());
        let first = offset / self.sector;
        let last = (offset + len as u64 - 1) / self.sector;
        // Whole sectors, with the edges of partial ones filled from their current content.
        let start = first * self.sector;
        let mut data = vec![0u8; ((last - first + 1) * self.sector) as usize];
        for s in [first, last] {
            let at = ((s - first) * self.sector) as usize;
            let chunk = &mut data[at..at + self.sector as usize];
            if bit(&map, s) {
                self.file
                    .read_at(chunk, self.data_offset + s * self.sector)?;
            } else if let Some(b) = &self.backing {
                b.read_until_end(chunk, s * self.sector)?;
            }
        }
        let within = (offset - start) as usize;
        data[within..within + len].copy_from_slice(&buf[..len]);
        self.file.write_at(&data, self.data_offset + start)?;
        for s in first..=last {
            map[(s / 8) as usize] |= 1 << (s % 8);
        }
        let (b0, b1) = ((first / 8) as usize, (last / 8) as usize);
        self.file
            .write_at(&map[b0..=b1], self.bitmap_offset + b0 as u64)?;
        Ok(len)
    }

    fn flush(&self) -> Result<()> {
        if self.read_only {
            return Ok(());
        }
        self.file.flush()
    }
}

impl ImageDevice for UmlCow {
    fn image_info(&self) -> ImageInfo {
        let map = self.bitmap.lock().unwrap_or_else(|p| p.into_inner());
        let set: u64 = map.iter().map(|b| u64::from(b.count_ones())).sum();
        ImageInfo {
            path: self.file.name().to_path_buf(),
            format: Format::UmlCow,
            virtual_size: self.size,
            allocated_bytes: set * self.sector,
            host_bytes: self.file.host_bytes(),
            backing: self.backing.as_ref().map(|b| Box::new(b.image_info())),
        }
    }
    fn into_block_device(self: Arc<Self>) -> Arc<dyn BlockDevice> {
        self
    }
    /// The sectors the bitmap marks.
    fn own_extents(&self, offset: u64, len: u64, max: usize) -> Result<Vec<Extent>> {
        self.map_extents(offset, len, max, true)
    }
}

/// Creates a UML COW v3 overlay at `path` over the raw file `backing` (recorded by its
/// absolute path, mtime and size; 512-byte sectors, 4 KiB alignment), as `uml_mkcow` does.
pub fn create_uml_cow(path: &Path, backing: &Path) -> std::result::Result<(), FormatError> {
    use std::os::unix::fs::{FileExt, MetadataExt};
    let io = |p: &Path, e: std::io::Error| FormatError::io(p, e.into());
    let abs: PathBuf = std::fs::canonicalize(backing).map_err(|e| io(backing, e))?;
    let meta = std::fs::metadata(&abs).map_err(|e| io(&abs, e))?;
    let name = abs.to_str().map(str::as_bytes).unwrap_or_default();
    if name.is_empty() || name.len() >= PATH_LEN {
        return Err(FormatError::unsupported(
            path,
            NAME,
            "a backing path this long",
        ));
    }
    let (sector, align) = (512u64, 4096u64);
    let size = meta.len();
    let mut h = vec![0u8; HEADER_LEN as usize];
    h[0..4].copy_from_slice(&MAGIC.to_be_bytes());
    h[4..8].copy_from_slice(&3u32.to_be_bytes());
    h[8..12].copy_from_slice(&(meta.mtime() as u32).to_be_bytes());
    h[12..20].copy_from_slice(&size.to_be_bytes());
    h[20..24].copy_from_slice(&(sector as u32).to_be_bytes());
    h[24..28].copy_from_slice(&(align as u32).to_be_bytes());
    h[32..32 + name.len()].copy_from_slice(name);
    let (_, _, data_offset) = layout(size, sector, align);
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)
        .map_err(|e| io(path, e))?;
    f.write_all_at(&h, 0).map_err(|e| io(path, e))?;
    f.set_len(data_offset + size.div_ceil(sector) * sector)
        .map_err(|e| io(path, e))?;
    f.sync_all().map_err(|e| io(path, e))?;
    Ok(())
}
