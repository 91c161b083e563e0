//! What `commit` and `info` need from overlay headers that the devices do not tell: the
//! backing file name and format as stored. (What an overlay holds itself is the device's
//! own map, `vudev_formats::own_ranges`.) Read-only parsing, bounded by the file's length.

use crate::fail;
use crate::util::Outcome;
use std::path::Path;
use vudev::{BlockDevice, FileDevice};

const QCOW2_MAGIC: u32 = 0x5146_49fb;
const UML_MAGIC: u32 = 0x4f4f_4f4d;
const UML_PATH_LEN: usize = 4096;
const UML_HEADER_LEN: u64 = 4 + 4 + 4 + 8 + 4 + 4 + 4 + UML_PATH_LEN as u64;
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

/// The backing link of a qcow2 file: its name, and the format of the backing-format
/// header extension.
fn qcow2_backing(file: &FileDevice) -> Outcome<Option<BackingLink>> {
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
    Ok(backing)
}

/// The backing file's path recorded in a UML COW (version 3) file.
fn uml_backing(file: &FileDevice) -> Outcome<String> {
    let name = file.path().display();
    let bad = |why: &str| fail!("{name}: UML COW header: {why}");
    if file.size() < UML_HEADER_LEN {
        return Err(bad("truncated"));
    }
    let h = read(file, UML_HEADER_LEN as usize, 0)?;
    if be32(&h, 0) != UML_MAGIC || be32(&h, 4) != 3 {
        return Err(bad("not a version 3 header"));
    }
    let raw = &h[32..32 + UML_PATH_LEN];
    let end = raw.iter().position(|&b| b == 0).unwrap_or(UML_PATH_LEN);
    Ok(String::from_utf8_lossy(&raw[..end]).into_owned())
}

/// The backing link stored in the overlay `file` (probed `format`), if it has one.
pub fn backing_link(
    file: &FileDevice,
    format: vudev_formats::Format,
) -> Outcome<Option<BackingLink>> {
    Ok(match format {
        vudev_formats::Format::Qcow2 => qcow2_backing(file)?,
        vudev_formats::Format::UmlCow => Some(BackingLink {
            name: uml_backing(file)?,
            format: Some("raw".into()),
        }),
        _ => None,
    })
}

/// Reads `path`'s header: its format (probed) and backing link.
pub fn probe_link(path: &Path) -> Outcome<(vudev_formats::Format, Option<BackingLink>)> {
    let file = FileDevice::open(path, true).map_err(|e| fail!("{}: {e}", path.display()))?;
    let format = vudev_formats::probe(&file);
    Ok((format, backing_link(&file, format)?))
}
