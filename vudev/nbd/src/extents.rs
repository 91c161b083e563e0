//! Where an export's data is: the `base:allocation` answers for `NBD_CMD_BLOCK_STATUS`.
//!
//! A `BlockDevice` does not say which of its ranges are holes, so an export carries an
//! [`Allocation`] next to its device. [`FileAllocation`] asks the filesystem (lseek
//! `SEEK_DATA`/`SEEK_HOLE`) about an image file, or a window of one (a partition);
//! [`AllData`] is the always-correct answer for everything else.

use crate::proto::{STATE_HOLE, STATE_ZERO};
use std::sync::Arc;
use vudev::{Errno, FileDevice, Result};

/// One run of a `base:allocation` reply: `len` bytes with `NBD_STATE_*` `flags`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Extent {
    /// Length in bytes (nonzero).
    pub len: u64,
    /// `NBD_STATE_HOLE` / `NBD_STATE_ZERO` bits.
    pub flags: u32,
}

/// Knows which ranges of a device hold data.
pub trait Allocation: Send + Sync {
    /// Extents covering `[offset, offset + len)` in order, at most `max` of them; they may
    /// cover less than `len` (never more) but at least one byte when `len > 0`.
    fn extents(&self, offset: u64, len: u64, max: usize) -> Result<Vec<Extent>>;
}

/// Reports everything as data: correct for any device (the spec allows status 0 anywhere).
pub struct AllData;

impl Allocation for AllData {
    fn extents(&self, _offset: u64, len: u64, _max: usize) -> Result<Vec<Extent>> {
        Ok(vec![Extent { len, flags: 0 }])
    }
}

/// Holes of an image file as its filesystem reports them; `base` is where the export starts
/// inside the file (a partition's first byte), so partition exports get their holes too.
pub struct FileAllocation {
    file: Arc<FileDevice>,
    base: u64,
}

impl FileAllocation {
    /// The allocation of `file` from byte `base` on.
    pub fn new(file: Arc<FileDevice>, base: u64) -> FileAllocation {
        FileAllocation { file, base }
    }

    /// The best allocation source for `file`: holes for regular files, all data for
    /// block devices (whose lseek knows no holes).
    pub fn for_device(file: Arc<FileDevice>, base: u64) -> Arc<dyn Allocation> {
        if file.is_block_device() {
            Arc::new(AllData)
        } else {
            Arc::new(FileAllocation::new(file, base))
        }
    }
}

fn seek(file: &std::fs::File, to: rustix::fs::SeekFrom) -> Result<Option<u64>> {
    match rustix::fs::seek(file, to) {
        Ok(pos) => Ok(Some(pos)),
        // No data (or no hole) at or after the offset.
        Err(rustix::io::Errno::NXIO) => Ok(None),
        Err(e) => Err(Errno::from(e)),
    }
}

impl Allocation for FileAllocation {
    fn extents(&self, offset: u64, len: u64, max: usize) -> Result<Vec<Extent>> {
        let file = self.file.file();
        let start = self.base.checked_add(offset).ok_or(Errno::EINVAL)?;
        let end = start.checked_add(len).ok_or(Errno::EINVAL)?;
        let mut out: Vec<Extent> = Vec::new();
        let push = |out: &mut Vec<Extent>, len: u64, flags: u32| {
            if len == 0 {
                return;
            }
            match out.last_mut() {
                Some(last) if last.flags == flags => last.len += len,
                _ => out.push(Extent { len, flags }),
            }
        };
        let mut pos = start;
        while pos < end && out.len() < max.max(1) {
            let data = match seek(file, rustix::fs::SeekFrom::Data(pos)) {
                Ok(Some(d)) => d.min(end),
                Ok(None) => end,
                // A filesystem without SEEK_DATA: call the rest data.
                Err(Errno::EINVAL) | Err(Errno::EOPNOTSUPP) if out.is_empty() => {
                    return AllData.extents(offset, len, max)
                }
                Err(e) => return Err(e),
            };
            if data > pos {
                push(&mut out, data - pos, STATE_HOLE | STATE_ZERO);
                pos = data;
                continue;
            }
            let hole = seek(file, rustix::fs::SeekFrom::Hole(pos))?
                .unwrap_or(end)
                .min(end);
            // Past the file's end (cannot happen for a fixed-size image) would loop: stop.
            if hole <= pos {
                push(&mut out, end - pos, 0);
                break;
            }
            push(&mut out, hole - pos, 0);
            pos = hole;
        }
        if out.len() > max.max(1) {
            out.truncate(max.max(1));
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vudev::BlockDevice;

    #[test]
    fn file_holes_are_reported_and_partitions_are_offset() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("img");
        std::fs::File::create(&path)
            .unwrap()
            .set_len(16 << 20)
            .unwrap();
        let dev = Arc::new(FileDevice::open(&path, false).unwrap());
        dev.write_all_at(&vec![1u8; 1 << 20], 4 << 20).unwrap();
        let a = FileAllocation::new(dev.clone(), 0);
        let ex = a.extents(0, 16 << 20, 100).unwrap();
        let total: u64 = ex.iter().map(|e| e.len).sum();
        assert_eq!(total, 16 << 20);
        assert_eq!(
            ex[0],
            Extent {
                len: 4 << 20,
                flags: STATE_HOLE | STATE_ZERO
            }
        );
        assert_eq!(ex[1].flags, 0);
        assert!(ex[1].len >= 1 << 20);
        // A window starting at 4 MiB begins with data.
        let w = FileAllocation::new(dev, 4 << 20);
        assert_eq!(
            w.extents(0, 1 << 20, 100).unwrap(),
            vec![Extent {
                len: 1 << 20,
                flags: 0
            }]
        );
        // REQ_ONE style cap.
        assert_eq!(a.extents(0, 16 << 20, 1).unwrap().len(), 1);
    }
}
