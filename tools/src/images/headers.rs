//! What `commit` and `info` need from overlay headers that the devices do not tell: the
//! backing file name and format as stored, and which ranges the overlay itself holds
//! (qcow2 L1/L2 tables, UML COW bitmap). Read-only parsing, bounded by the file's length.

use crate::fail;
use crate::util::Outcome;
use std::path::Path;
use std::sync::Arc;
use vudev::{BlockDevice, Errno, FileDevice};

const QCOW2_MAGIC: u32 = 0x5146_49fb;
const UML_MAGIC: u32 = 0x4f4f_4f4d;
const UML_PATH_LEN: usize = 4096;
const UML_HEADER_LEN: u64 = 4 + 4 + 4 + 8 + 4 + 4 + 4 + UML_PATH_LEN as u64;
const L2_OFFSET_MASK: u64 = 0x00ff_ffff_ffff_fe00;
const COPIED: u64 = 1 << 63;
const COMPRESSED: u64 = 1 << 62;
const EXT_BACKING_FORMAT: u32 = 0xe279_2aca;

fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

fn be64(b: &[u8], at: usize) -> u64 {
    u64::from_be_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

fn read(file: &FileDevice, len: usize, at: u64) -> Outcome<Vec<u8>> {
    let mut buf = vec![0u8; len];
    file.read_exact_at(&mut buf, at).map_err(|e| {
        fail!(
            "{}: read of {len} bytes at {at}: {e}",
            file.path().display()
        )
    })?;
    Ok(buf)
}

/// An overlay's link to the image below it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BackingLink {
    /// The backing file name as stored in the header.
    pub name: String,
    /// The backing format recorded in the header, if any (UML COW: always raw).
    pub format: Option<String>,
}

/// The qcow2 header fields `commit` needs.
struct Qcow2Header {
    cluster_bits: u32,
    size: u64,
    l1_size: u64,
    l1_offset: u64,
    backing: Option<BackingLink>,
}

fn qcow2_header(file: &FileDevice) -> Outcome<Qcow2Header> {
    let name = file.path().display();
    let bad = |why: &str| fail!("{name}: qcow2 header: {why}");
    if file.size() < 72 {
        return Err(bad("truncated"));
    }
    let h = read(file, 72.max(file.size().min(104) as usize), 0)?;
    if be32(&h, 0) != QCOW2_MAGIC {
        return Err(bad("no magic"));
    }
    let version = be32(&h, 4);
    let cluster_bits = be32(&h, 20);
    if !(9..=21).contains(&cluster_bits) {
        return Err(bad("cluster size"));
    }
    let cs = 1u64 << cluster_bits;
    let header_len = if version >= 3 && h.len() >= 104 {
        u64::from(be32(&h, 100))
    } else {
        72
    };
    let cluster0 = read(file, cs.min(file.size()) as usize, 0)?;
    let (bf_offset, bf_size) = (be64(&h, 8), u64::from(be32(&h, 16)));
    let mut backing = None;
    if bf_offset != 0 && bf_size != 0 {
        let end = bf_offset
            .checked_add(bf_size)
            .filter(|e| *e <= cluster0.len() as u64)
            .ok_or_else(|| bad("backing file name outside cluster 0"))?;
        let name = String::from_utf8_lossy(&cluster0[bf_offset as usize..end as usize]);
        // Header extensions: (type, length, data padded to 8) until type 0.
        let mut format = None;
        let mut at = header_len as usize;
        while at + 8 <= cluster0.len() {
            let (kind, len) = (be32(&cluster0, at), be32(&cluster0, at + 4) as usize);
            if kind == 0 || at + 8 + len > cluster0.len() {
                break;
            }
            if kind == EXT_BACKING_FORMAT {
                format = Some(String::from_utf8_lossy(&cluster0[at + 8..at + 8 + len]).into());
            }
            at += 8 + len.div_ceil(8) * 8;
        }
        backing = Some(BackingLink {
            name: name.into_owned(),
            format,
        });
    }
    Ok(Qcow2Header {
        cluster_bits,
        size: be64(&h, 24),
        l1_size: u64::from(be32(&h, 36)),
        l1_offset: be64(&h, 40),
        backing,
    })
}

/// The UML COW header fields `commit` needs.
pub struct UmlHeader {
    /// The backing file's path.
    pub backing: String,
    /// The disk size.
    pub size: u64,
    sector: u64,
    bitmap_offset: u64,
    bitmap_len: u64,
    data_offset: u64,
}

fn uml_header(file: &FileDevice) -> Outcome<UmlHeader> {
    let name = file.path().display();
    let bad = |why: &str| fail!("{name}: UML COW header: {why}");
    if file.size() < UML_HEADER_LEN {
        return Err(bad("truncated"));
    }
    let h = read(file, UML_HEADER_LEN as usize, 0)?;
    if be32(&h, 0) != UML_MAGIC || be32(&h, 4) != 3 {
        return Err(bad("not a version 3 header"));
    }
    let size = be64(&h, 12);
    let sector = u64::from(be32(&h, 20));
    let align = u64::from(be32(&h, 24));
    if !sector.is_power_of_two() || !align.is_power_of_two() || size > 1 << 62 {
        return Err(bad("sector size, alignment or size"));
    }
    let raw = &h[32..32 + UML_PATH_LEN];
    let end = raw.iter().position(|&b| b == 0).unwrap_or(UML_PATH_LEN);
    let bitmap_offset = UML_HEADER_LEN.div_ceil(align) * align;
    let bitmap_len = size.div_ceil(sector).div_ceil(8);
    let data_offset = (bitmap_offset + bitmap_len).div_ceil(align) * align;
    Ok(UmlHeader {
        backing: String::from_utf8_lossy(&raw[..end]).into_owned(),
        size,
        sector,
        bitmap_offset,
        bitmap_len,
        data_offset,
    })
}

/// The backing link stored in the overlay `file` (probed `format`), if it has one.
pub fn backing_link(
    file: &FileDevice,
    format: vudev_formats::Format,
) -> Outcome<Option<BackingLink>> {
    Ok(match format {
        vudev_formats::Format::Qcow2 => qcow2_header(file)?.backing,
        vudev_formats::Format::UmlCow => Some(BackingLink {
            name: uml_header(file)?.backing,
            format: Some("raw".into()),
        }),
        _ => None,
    })
}

/// Adds the range (start, len) to `ranges`, merging with the last one when adjacent.
fn push(ranges: &mut Vec<(u64, u64)>, start: u64, len: u64) {
    match ranges.last_mut() {
        Some((s, l)) if *s + *l == start => *l += len,
        _ => ranges.push((start, len)),
    }
}

/// The guest ranges whose L2 entries are set (data, zeros or compressed) in a qcow2 file.
fn qcow2_map(file: &FileDevice, h: &Qcow2Header) -> Outcome<Vec<(u64, u64)>> {
    let name = file.path().display();
    let cs = 1u64 << h.cluster_bits;
    let l2_entries = cs / 8;
    let flen = file.size();
    let bad = |why: String| fail!("{name}: qcow2: {why}");
    if h.l1_size > (32 << 20) / 8 || h.l1_offset.saturating_add(h.l1_size * 8) > flen {
        return Err(bad("L1 table outside the file".into()));
    }
    let l1 = read(file, (h.l1_size * 8) as usize, h.l1_offset)?;
    let mut ranges = Vec::new();
    for i in 0..h.l1_size {
        let l2 = be64(&l1, (i * 8) as usize) & L2_OFFSET_MASK;
        if l2 == 0 {
            continue;
        }
        if l2 + cs > flen {
            return Err(bad(format!("L2 table at {l2} past the end of the file")));
        }
        let table = read(file, cs as usize, l2)?;
        for j in 0..l2_entries {
            let e = be64(&table, (j * 8) as usize) & !COPIED;
            if e == 0 {
                continue;
            }
            let start = (i * l2_entries + j) * cs;
            // Where the data is (qemu reads past the end as zeros; a truncated file is
            // an error here, as qemu-img check says).
            let host = if e & COMPRESSED != 0 {
                e & ((1u64 << (62 - (h.cluster_bits - 8))) - 1)
            } else {
                e & L2_OFFSET_MASK
            };
            if host != 0 && host >= flen {
                return Err(bad(format!(
                    "the data of guest offset {start} is at {host}, past the end of the \
                     file ({flen} bytes): the image is truncated"
                )));
            }
            if start < h.size {
                push(&mut ranges, start, cs.min(h.size - start));
            }
        }
    }
    Ok(ranges)
}

/// The guest ranges of the sectors a UML COW file's bitmap marks written.
fn uml_map(file: &FileDevice, h: &UmlHeader) -> Outcome<Vec<(u64, u64)>> {
    if h.bitmap_offset + h.bitmap_len > file.size() {
        return Err(fail!(
            "{}: UML COW bitmap past the end",
            file.path().display()
        ));
    }
    let bitmap = read(file, h.bitmap_len as usize, h.bitmap_offset)?;
    let mut ranges = Vec::new();
    let sectors = h.size.div_ceil(h.sector);
    for (byte_no, &byte) in bitmap.iter().enumerate() {
        if byte == 0 {
            continue;
        }
        for bit in 0..8u64 {
            let s = byte_no as u64 * 8 + bit;
            if byte & (1 << bit) != 0 && s < sectors {
                let start = s * h.sector;
                push(&mut ranges, start, h.sector.min(h.size - start));
            }
        }
    }
    Ok(ranges)
}

/// What an overlay holds itself: its size, the guest ranges it has data (or zeros) for,
/// and a device that reads those ranges from the overlay alone.
pub struct OverlayData {
    /// The disk size.
    pub size: u64,
    /// Guest ranges (offset, length) the overlay itself defines.
    pub ranges: Vec<(u64, u64)>,
    /// Reads the overlay without its backing file (valid inside `ranges`).
    pub view: Arc<dyn BlockDevice>,
}

/// The data of the qcow2 or UML COW overlay open at `file` (read-only), without touching its
/// backing file: for folding it into that backing file.
pub fn overlay_data(file: FileDevice, format: vudev_formats::Format) -> Outcome<OverlayData> {
    let name = file.path().to_path_buf();
    match format {
        vudev_formats::Format::Qcow2 => {
            let h = qcow2_header(&file)?;
            let ranges = qcow2_map(&file, &h)?;
            let options = vudev_formats::OpenOptions {
                read_only: true,
                ..Default::default()
            };
            let view = vudev_formats::Qcow2::open_on(
                Arc::new(WithoutBacking(file)),
                name.clone(),
                &options,
            )
            .map_err(|e| fail!("{e}"))?;
            Ok(OverlayData {
                size: h.size,
                ranges,
                view: Arc::new(view),
            })
        }
        vudev_formats::Format::UmlCow => {
            let h = uml_header(&file)?;
            let ranges = uml_map(&file, &h)?;
            Ok(OverlayData {
                size: h.size,
                ranges,
                view: Arc::new(Shifted {
                    file,
                    offset: h.data_offset,
                    size: h.size,
                }),
            })
        }
        other => Err(fail!(
            "{}: a {other} image has no backing file to commit to",
            name.display()
        )),
    }
}

/// A qcow2 file seen with its backing file name cleared (header bytes 8..20 read as zero):
/// the overlay's own clusters, everything else zeros.
struct WithoutBacking(FileDevice);

impl BlockDevice for WithoutBacking {
    fn size(&self) -> u64 {
        self.0.size()
    }
    fn read_only(&self) -> bool {
        true
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> vudev::Result<usize> {
        let n = self.0.read_at(buf, offset)?;
        for at in 8u64..20 {
            if at >= offset && at < offset + n as u64 {
                buf[(at - offset) as usize] = 0;
            }
        }
        Ok(n)
    }
    fn write_at(&self, _: &[u8], _: u64) -> vudev::Result<usize> {
        Err(Errno::EROFS)
    }
    fn flush(&self) -> vudev::Result<()> {
        Ok(())
    }
}

/// The data area of a UML COW file: sector `i` at `offset + i * sector`.
struct Shifted {
    file: FileDevice,
    offset: u64,
    size: u64,
}

impl BlockDevice for Shifted {
    fn size(&self) -> u64 {
        self.size
    }
    fn read_only(&self) -> bool {
        true
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> vudev::Result<usize> {
        if offset >= self.size {
            return Ok(0);
        }
        let n = (buf.len() as u64).min(self.size - offset) as usize;
        let got = self
            .file
            .read_until_end(&mut buf[..n], self.offset + offset)?;
        buf[got..n].fill(0);
        Ok(n)
    }
    fn write_at(&self, _: &[u8], _: u64) -> vudev::Result<usize> {
        Err(Errno::EROFS)
    }
    fn flush(&self) -> vudev::Result<()> {
        Ok(())
    }
}

/// Reads `path`'s header: its format (probed) and backing link.
pub fn probe_link(path: &Path) -> Outcome<(vudev_formats::Format, Option<BackingLink>)> {
    let file = FileDevice::open(path, true).map_err(|e| fail!("{}: {e}", path.display()))?;
    let format = vudev_formats::probe(&file);
    Ok((format, backing_link(&file, format)?))
}
