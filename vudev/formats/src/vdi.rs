//! VirtualBox VDI images (dynamic and fixed), read-write.
//!
//! A header at 0, a block map (one little-endian u32 per block: the block's index in the
//! data area, `0xffffffff` unallocated, `0xfffffffe` discarded, both reading as zeros) and
//! the data area of whole blocks (1 MiB as made by VirtualBox and qemu). The block map is
//! held in memory (4 bytes per block: 4 KiB per GiB of disk). A write to an unallocated
//! block appends a whole block, then writes its map entry, then the allocated count, so a
//! crash leaves at worst an unreferenced block at the end.

use crate::error::FormatError;
use crate::storage::Storage;
use crate::{le32, le64, Format, ImageDevice, ImageInfo};
use std::path::Path;
use std::sync::{Arc, Mutex};
use vudev::{BlockDevice, Errno, Extent, ExtentList, Result};

/// The signature at offset 0x40.
pub const SIGNATURE: u32 = 0xbeda_107f;
const NAME: &str = "VDI";
const UNALLOCATED: u32 = 0xffff_ffff;
const DISCARDED: u32 = 0xffff_fffe;
const TYPE_DYNAMIC: u32 = 1;
const TYPE_FIXED: u32 = 2;
/// Most blocks handled (a 64 MiB block map; 16 TiB with 1 MiB blocks).
const MAX_BLOCKS: u64 = 1 << 24;
const BLOCK_SIZE: u64 = 1 << 20;

/// A VDI image as a block device.
pub struct Vdi {
    file: Storage,
    size: u64,
    block_size: u64,
    offset_bmap: u64,
    offset_data: u64,
    blocks: u64,
    read_only: bool,
    st: Mutex<State>,
}

struct State {
    bmap: Vec<u32>,
    allocated: u32,
}

impl std::fmt::Debug for Vdi {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vdi")
            .field("file", &self.file.name())
            .field("size", &self.size)
            .finish()
    }
}

/// The fields of the VDI header that opening an image uses.
struct Header {
    offset_bmap: u64,
    offset_data: u64,
    sector_size: u32,
    size: u64,
    block_size: u64,
    block_extra: u32,
    blocks: u64,
    allocated: u32,
}

fn corrupt(path: &Path, why: impl Into<String>) -> FormatError {
    FormatError::corrupt(path, NAME, why)
}

impl Header {
    /// Reads the header at the start of `file`, refusing a short file, a wrong signature,
    /// version or image type.
    fn read(file: &Storage, path: &Path) -> std::result::Result<Header, FormatError> {
        let flen = file.len();
        if flen < 0x190 {
            return Err(corrupt(path, format!("truncated header ({flen} bytes)")));
        }
        let mut h = vec![0u8; 0x200];
        file.read_at(&mut h, 0)
            .map_err(|e| FormatError::io(path, e))?;
        if le32(&h, 0x40) != SIGNATURE {
            return Err(corrupt(path, "no VDI signature"));
        }
        let version = le32(&h, 0x44);
        if version >> 16 != 1 {
            return Err(FormatError::unsupported(
                path,
                NAME,
                format!("version {version:#x}"),
            ));
        }
        let image_type = le32(&h, 0x4c);
        if image_type != TYPE_DYNAMIC && image_type != TYPE_FIXED {
            return Err(FormatError::unsupported(
                path,
                NAME,
                format!("image type {image_type} (undo or differencing images)"),
            ));
        }
        Ok(Header {
            offset_bmap: u64::from(le32(&h, 0x154)),
            offset_data: u64::from(le32(&h, 0x158)),
            sector_size: le32(&h, 0x168),
            size: le64(&h, 0x170),
            block_size: u64::from(le32(&h, 0x178)),
            block_extra: le32(&h, 0x17c),
            blocks: u64::from(le32(&h, 0x180)),
            allocated: le32(&h, 0x184),
        })
    }

    /// Checks the sector size, block size and count, the disk size and the allocated
    /// count; refuses block extra data and more than `MAX_BLOCKS` blocks.
    fn check_geometry(&self, path: &Path) -> std::result::Result<(), FormatError> {
        let Header {
            sector_size,
            size,
            block_size,
            block_extra,
            blocks,
            allocated,
            ..
        } = *self;
        if sector_size != 512 {
            return Err(corrupt(path, format!("sector size {sector_size}")));
        }
        if block_extra != 0 {
            return Err(FormatError::unsupported(path, NAME, "block extra data"));
        }
        if !block_size.is_power_of_two() || !(512..=1 << 28).contains(&block_size) {
            return Err(corrupt(path, format!("block size {block_size}")));
        }
        if blocks > MAX_BLOCKS {
            return Err(FormatError::unsupported(
                path,
                NAME,
                format!("{blocks} blocks (at most {MAX_BLOCKS})"),
            ));
        }
        if size > blocks * block_size {
            return Err(corrupt(
                path,
                format!("disk size {size} exceeds {blocks} blocks of {block_size}"),
            ));
        }
        if u64::from(allocated) > blocks {
            return Err(corrupt(
                path,
                format!("{allocated} blocks allocated of {blocks}"),
            ));
        }
        Ok(())
    }

    /// Checks that the block map lies between the header and the data, inside the file
    /// (`flen` bytes).
    fn check_block_map_place(
        &self,
        flen: u64,
        path: &Path,
    ) -> std::result::Result<(), FormatError> {
        let (offset_bmap, map_end) = (self.offset_bmap, self.offset_bmap + self.blocks * 4);
        if offset_bmap < 0x190 || map_end > self.offset_data || map_end > flen {
            return Err(corrupt(
                path,
                format!(
                    "block map at {offset_bmap:#x} overlaps the header or data, or runs past the file"
                ),
            ));
        }
        Ok(())
    }

    /// Reads the block map whole.
    fn read_block_map(
        &self,
        file: &Storage,
        path: &Path,
    ) -> std::result::Result<Vec<u32>, FormatError> {
        let mut raw = vec![0u8; (self.blocks * 4) as usize];
        file.read_at(&mut raw, self.offset_bmap)
            .map_err(|e| FormatError::io(path, e))?;
        Ok(raw.chunks_exact(4).map(|c| le32(c, 0)).collect())
    }

    /// Checks that every allocated block's data is in the file (`flen` bytes): a file cut
    /// short (a copy interrupted, a full disk) is refused here rather than read as zeros.
    fn check_data_in_file(
        &self,
        bmap: &[u32],
        flen: u64,
        path: &Path,
    ) -> std::result::Result<(), FormatError> {
        let Some((b, &i)) = bmap
            .iter()
            .enumerate()
            .filter(|(_, &i)| i != UNALLOCATED && i != DISCARDED)
            .max_by_key(|(_, &i)| i)
        else {
            return Ok(());
        };
        let blocks = self.blocks;
        if u64::from(i) >= blocks {
            return Err(corrupt(
                path,
                format!("block {b} maps to data block {i}, beyond the {blocks} blocks of the disk"),
            ));
        }
        let end = self.offset_data + (u64::from(i) + 1) * self.block_size;
        if end > flen {
            return Err(corrupt(
                path,
                format!(
                    "truncated: block {b}'s data ends at {end}, past the end of the file \
                     ({flen} bytes)"
                ),
            ));
        }
        Ok(())
    }
}

impl Vdi {
    /// Opens the VDI image at `path`.
    pub fn open(path: &Path, read_only: bool) -> std::result::Result<Vdi, FormatError> {
        let dev = vudev::FileDevice::open(path, read_only).map_err(|e| FormatError::io(path, e))?;
        Vdi::open_storage(Storage::file(dev), read_only)
    }

    /// Opens a VDI image stored on any device.
    pub fn open_on(
        dev: Arc<dyn BlockDevice>,
        name: &Path,
        read_only: bool,
    ) -> std::result::Result<Vdi, FormatError> {
        Vdi::open_storage(Storage::device(dev, name), read_only)
    }

    pub(crate) fn open_storage(
        file: Storage,
        read_only: bool,
    ) -> std::result::Result<Vdi, FormatError> {
        let path = file.name().to_path_buf();
        let flen = file.len();
        let h = Header::read(&file, &path)?;
        h.check_geometry(&path)?;
        h.check_block_map_place(flen, &path)?;
        let bmap = h.read_block_map(&file, &path)?;
        h.check_data_in_file(&bmap, flen, &path)?;
        let read_only = read_only || file.read_only();
        Ok(Vdi {
            file,
            size: h.size,
            block_size: h.block_size,
            offset_bmap: h.offset_bmap,
            offset_data: h.offset_data,
            blocks: h.blocks,
            read_only,
            st: Mutex::new(State {
                bmap,
                allocated: h.allocated,
            }),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.st.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The host offset of block `b`'s data, or None if it reads as zeros.
    fn host(&self, st: &State, b: u64) -> Result<Option<u64>> {
        match st.bmap[b as usize] {
            UNALLOCATED | DISCARDED => Ok(None),
            i if u64::from(i) >= self.blocks => Err(Errno::EIO),
            i => {
                let off = self.offset_data + u64::from(i) * self.block_size;
                if off >= self.file.len() {
                    return Err(Errno::EIO);
                }
                Ok(Some(off))
            }
        }
    }
}

impl BlockDevice for Vdi {
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
        let st = self.lock();
        let mut done = 0;
        while done < len {
            let pos = offset + done as u64;
            let within = pos % self.block_size;
            let n = ((self.block_size - within) as usize).min(len - done);
            let out = &mut buf[done..done + n];
            match self.host(&st, pos / self.block_size)? {
                None => out.fill(0),
                Some(h) => self.file.read_at(out, h + within)?,
            }
            done += n;
        }
        Ok(len)
    }

    /// The block map: unallocated and discarded blocks read as zeros.
    fn extents(&self, offset: u64, len: u64, max: usize) -> Result<Vec<Extent>> {
        let end = offset.saturating_add(len).min(self.size);
        let st = self.lock();
        let mut list = ExtentList::new(max);
        let mut pos = offset;
        while pos < end {
            let next = ((pos / self.block_size + 1) * self.block_size).min(end);
            let zero = self.host(&st, pos / self.block_size)?.is_none();
            if !list.push(next - pos, zero) {
                break;
            }
            pos = next;
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
        let mut st = self.lock();
        let mut done = 0;
        while done < len {
            let pos = offset + done as u64;
            let b = pos / self.block_size;
            let within = (pos % self.block_size) as usize;
            let n = (self.block_size as usize - within).min(len - done);
            let data = &buf[done..done + n];
            match self.host(&st, b)? {
                Some(h) => self.file.write_at(data, h + within as u64)?,
                None => {
                    let idx = st.allocated;
                    if u64::from(idx) >= self.blocks {
                        return Err(Errno::EIO);
                    }
                    let mut block = vec![0u8; self.block_size as usize];
                    block[within..within + n].copy_from_slice(data);
                    let h = self.offset_data + u64::from(idx) * self.block_size;
                    self.file.write_at(&block, h)?;
                    self.file
                        .write_at(&idx.to_le_bytes(), self.offset_bmap + b * 4)?;
                    st.bmap[b as usize] = idx;
                    st.allocated = idx + 1;
                    self.file.write_at(&st.allocated.to_le_bytes(), 0x184)?;
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
        self.file.flush()
    }
}

impl ImageDevice for Vdi {
    fn image_info(&self) -> ImageInfo {
        let st = self.lock();
        let mapped = st
            .bmap
            .iter()
            .filter(|&&e| e != UNALLOCATED && e != DISCARDED)
            .count() as u64;
        ImageInfo {
            path: self.file.name().to_path_buf(),
            format: Format::Vdi,
            virtual_size: self.size,
            allocated_bytes: mapped * self.block_size,
            host_bytes: self.file.host_bytes(),
            backing: None,
        }
    }
    fn into_block_device(self: Arc<Self>) -> Arc<dyn BlockDevice> {
        self
    }
}

fn random_uuid() -> [u8; 16] {
    let mut u = [0u8; 16];
    if let Ok(mut f) = std::fs::File::open("/dev/urandom") {
        let _ = std::io::Read::read_exact(&mut f, &mut u);
    }
    u[6] = (u[6] & 0x0f) | 0x40;
    u[8] = (u[8] & 0x3f) | 0x80;
    u
}

/// Creates a VDI image of `size` bytes at `path` with 1 MiB blocks: dynamic (blocks
/// allocated on write) or, with `fixed`, every block allocated up front.
pub fn create_vdi(path: &Path, size: u64, fixed: bool) -> std::result::Result<(), FormatError> {
    let io = |e: std::io::Error| FormatError::io(path, e.into());
    let blocks = size.div_ceil(BLOCK_SIZE);
    if blocks > MAX_BLOCKS {
        return Err(FormatError::unsupported(
            path,
            NAME,
            format!("a {size}-byte disk"),
        ));
    }
    let bmap_size = (blocks * 4).div_ceil(512) * 512;
    let offset_data = 0x200 + bmap_size;
    let mut h = vec![0u8; 0x200];
    let text = b"<<< Oracle VM VirtualBox Disk Image >>>\n";
    h[..text.len()].copy_from_slice(text);
    let put32 = |h: &mut [u8], at: usize, v: u32| h[at..at + 4].copy_from_slice(&v.to_le_bytes());
    put32(&mut h, 0x40, SIGNATURE);
    put32(&mut h, 0x44, 0x0001_0001);
    put32(&mut h, 0x48, 0x180);
    put32(&mut h, 0x4c, if fixed { TYPE_FIXED } else { TYPE_DYNAMIC });
    put32(&mut h, 0x154, 0x200);
    put32(&mut h, 0x158, offset_data as u32);
    put32(&mut h, 0x168, 512);
    h[0x170..0x178].copy_from_slice(&size.to_le_bytes());
    put32(&mut h, 0x178, BLOCK_SIZE as u32);
    put32(&mut h, 0x180, blocks as u32);
    put32(&mut h, 0x184, if fixed { blocks as u32 } else { 0 });
    h[0x188..0x198].copy_from_slice(&random_uuid());
    h[0x198..0x1a8].copy_from_slice(&random_uuid());
    let mut bmap = vec![0u8; bmap_size as usize];
    for b in 0..blocks as usize {
        let v = if fixed { b as u32 } else { UNALLOCATED };
        bmap[b * 4..b * 4 + 4].copy_from_slice(&v.to_le_bytes());
    }
    use std::os::unix::fs::FileExt;
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)
        .map_err(io)?;
    f.write_all_at(&h, 0).map_err(io)?;
    f.write_all_at(&bmap, 0x200).map_err(io)?;
    let end = if fixed {
        offset_data + blocks * BLOCK_SIZE
    } else {
        offset_data
    };
    f.set_len(end).map_err(io)?;
    f.sync_all().map_err(io)?;
    Ok(())
}
