//! A device backed by a regular file or a real block device, with positional I/O.
//!
//! pread/pwrite rather than a memory map: a mapped image that another process
//! truncates kills the mapping process with SIGBUS (measured, ANCHORS.md A.6),
//! while pread merely returns a short count.

use crate::device::{clamp_len, writable_len, BlockDevice};
use crate::errno::{Errno, Result};
use crate::extent::{all_data, Extent, ExtentList};
use crate::lock::{lock_file, LockError, LockMode};
use rustix::fs::FallocateFlags;
use std::fs::{File, OpenOptions};
use std::io::{Seek, SeekFrom};
use std::os::fd::AsFd;
use std::os::unix::fs::{FileExt, FileTypeExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// An image file or a host block device seen as a [`BlockDevice`].
#[derive(Debug)]
pub struct FileDevice {
    file: File,
    path: PathBuf,
    size: u64,
    sector_size: u32,
    read_only: bool,
    is_block_device: bool,
    /// The last run `[start, end)` that `SEEK_DATA`/`SEEK_HOLE` called data (see
    /// [`FileDevice::extents`]).
    known_data: Mutex<Option<(u64, u64)>>,
}

impl FileDevice {
    /// Opens `path` read-write, or read-only when `read_only` is set.
    ///
    /// The size is fixed at open time, as a disk's is.
    pub fn open(path: impl AsRef<Path>, read_only: bool) -> Result<FileDevice> {
        let path = path.as_ref();
        let mut file = OpenOptions::new().read(true).write(!read_only).open(path)?;
        let meta = file.metadata()?;
        let kind = meta.file_type();
        let is_block_device = kind.is_block_device();
        if meta.is_dir() {
            return Err(Errno::EISDIR);
        }
        if !kind.is_file() && !is_block_device {
            // Character devices, fifos and sockets have no size or random access.
            return Err(Errno::ENOTTY);
        }
        let (size, sector_size) = if is_block_device {
            let size = file.seek(SeekFrom::End(0))?;
            let sector = rustix::fs::ioctl_blksszget(&file).unwrap_or(512);
            (size, sector)
        } else {
            (meta.len(), 512)
        };
        Ok(FileDevice {
            file,
            path: path.to_path_buf(),
            size,
            sector_size,
            read_only,
            is_block_device,
            known_data: Mutex::new(None),
        })
    }

    /// Opens `path` read-write if permitted, otherwise read-only.
    pub fn open_best(path: impl AsRef<Path>) -> Result<FileDevice> {
        match FileDevice::open(path.as_ref(), false) {
            Err(Errno::EACCES) | Err(Errno::EROFS) | Err(Errno::EPERM) => {
                FileDevice::open(path, true)
            }
            other => other,
        }
    }

    /// Forgets the data run [`BlockDevice::extents`] remembers: for a caller that punched
    /// holes or changed the length through [`FileDevice::file`].
    pub fn forget_data_runs(&self) {
        *self.known_data.lock().unwrap_or_else(|e| e.into_inner()) = None;
    }

    /// The path the device was opened from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// True for a host block device (as opposed to an image file).
    pub fn is_block_device(&self) -> bool {
        self.is_block_device
    }

    /// Locks the image against other opens: [`LockMode::Exclusive`] for a writer,
    /// [`LockMode::Shared`] for readers (see [`crate::lock`]). Held until the device is dropped.
    pub fn lock(&self, mode: LockMode) -> std::result::Result<(), LockError> {
        lock_file(self.file.as_fd(), mode)
    }

    /// The underlying file, for front ends that pass ioctls through.
    pub fn file(&self) -> &File {
        &self.file
    }
}

impl BlockDevice for FileDevice {
    fn size(&self) -> u64 {
        self.size
    }

    fn sector_size(&self) -> u32 {
        self.sector_size
    }

    fn read_only(&self) -> bool {
        self.read_only
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<usize> {
        let len = clamp_len(self.size, offset, buf.len());
        let mut done = 0;
        while done < len {
            match self.file.read_at(&mut buf[done..len], offset + done as u64) {
                // The image shrank under us (another process truncated it).
                Ok(0) => return if done == 0 { Err(Errno::EIO) } else { Ok(done) },
                Ok(n) => done += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(done)
    }

    fn write_at(&self, buf: &[u8], offset: u64) -> Result<usize> {
        let len = writable_len(self.read_only, self.size, offset, buf.len())?;
        self.file.write_all_at(&buf[..len], offset)?;
        Ok(len)
    }

    fn flush(&self) -> Result<()> {
        if self.read_only {
            return Ok(());
        }
        self.file.sync_data()?;
        Ok(())
    }

    fn discard(&self, offset: u64, len: u64) -> Result<()> {
        if self.read_only {
            return Err(Errno::EROFS);
        }
        let len = clamp_len(
            self.size,
            offset,
            usize::try_from(len).unwrap_or(usize::MAX),
        ) as u64;
        if len == 0 || self.is_block_device {
            return Ok(());
        }
        // A punched range is no longer data: forget the run extents() remembers.
        self.forget_data_runs();
        let flags = FallocateFlags::PUNCH_HOLE | FallocateFlags::KEEP_SIZE;
        match rustix::fs::fallocate(&self.file, flags, offset, len) {
            Ok(()) => Ok(()),
            // Filesystems without hole punching: keep the zeroing promise by hand.
            Err(rustix::io::Errno::OPNOTSUPP) => write_zeros(self, offset, len),
            Err(e) => Err(e.into()),
        }
    }

    fn discard_zeroes(&self) -> bool {
        !self.is_block_device
    }

    /// Holes as the filesystem reports them (lseek `SEEK_DATA`/`SEEK_HOLE`); a host block
    /// device, or a filesystem without them, is all data.
    ///
    /// The last data run found is remembered, so that a client asking about a large
    /// allocated file piece by piece (NBD block status) costs two lseeks per run, not per
    /// query: on tmpfs each `SEEK_HOLE` walks the page cache up to the next hole, the end of
    /// a full file. Writes only add data, so the run stays true until a hole is punched
    /// here ([`BlockDevice::discard`] forgets it); a hole punched by another program would
    /// be reported as data, which is what a filesystem without holes says anyway.
    fn extents(&self, offset: u64, len: u64, max: usize) -> Result<Vec<Extent>> {
        let end = offset.saturating_add(len).min(self.size);
        if self.is_block_device || offset >= end {
            return Ok(all_data(self.size, offset, len));
        }
        let mut list = ExtentList::new(max);
        let mut pos = offset;
        let known = *self.known_data.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((_, stop)) = known.filter(|&(start, stop)| start <= pos && pos < stop) {
            let run_end = stop.min(end);
            if !list.push(run_end - pos, false) || run_end >= end {
                return Ok(list.into_vec());
            }
            pos = run_end;
        }
        while pos < end {
            let data = match seek(&self.file, rustix::fs::SeekFrom::Data(pos)) {
                Ok(Some(d)) => d.min(end),
                Ok(None) => end,
                Err(Errno::EINVAL) | Err(Errno::EOPNOTSUPP) if pos == offset => {
                    return Ok(all_data(self.size, offset, len))
                }
                Err(e) => return Err(e),
            };
            if !list.push(data - pos, true) {
                break;
            }
            pos = data;
            if pos >= end {
                break;
            }
            // Past the file's end (it shrank under us) the rest is called data.
            let found = seek(&self.file, rustix::fs::SeekFrom::Hole(pos))?;
            if let Some(h) = found.filter(|&h| h > pos) {
                *self.known_data.lock().unwrap_or_else(|e| e.into_inner()) = Some((pos, h));
            }
            let hole = found.map_or(end, |h| h.min(end)).max(pos + 1);
            if !list.push(hole - pos, false) {
                break;
            }
            pos = hole;
        }
        Ok(list.into_vec())
    }

    fn prefetch(&self, offset: u64, len: u64) {
        // The host page cache reads the range in the background.
        let len = clamp_len(
            self.size,
            offset,
            usize::try_from(len).unwrap_or(usize::MAX),
        ) as u64;
        if let Some(len) = std::num::NonZeroU64::new(len) {
            let _ =
                rustix::fs::fadvise(&self.file, offset, Some(len), rustix::fs::Advice::WillNeed);
        }
    }
}

/// lseek to `to`: `None` when there is no data (or no hole) at or after the offset.
fn seek(file: &File, to: rustix::fs::SeekFrom) -> Result<Option<u64>> {
    match rustix::fs::seek(file, to) {
        Ok(pos) => Ok(Some(pos)),
        Err(rustix::io::Errno::NXIO) => Ok(None),
        Err(e) => Err(Errno::from(e)),
    }
}

/// Writes `len` zero bytes at `offset`, in bounded chunks.
pub(crate) fn write_zeros(dev: &dyn BlockDevice, mut offset: u64, mut len: u64) -> Result<()> {
    let zeros = vec![0u8; 1 << 20];
    while len > 0 {
        let n = len.min(zeros.len() as u64) as usize;
        dev.write_all_at(&zeros[..n], offset)?;
        offset += n as u64;
        len -= n as u64;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image(len: u64) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("disk.img");
        File::create(&path).unwrap().set_len(len).unwrap();
        (dir, path)
    }

    #[test]
    fn positional_io_and_end_rules() {
        let (_dir, path) = image(4096);
        let dev = FileDevice::open(&path, false).unwrap();
        assert_eq!(dev.size(), 4096);
        assert_eq!(dev.write_at(b"hello", 4094).unwrap(), 2);
        assert_eq!(dev.write_at(b"x", 4096), Err(Errno::ENOSPC));
        let mut buf = [0u8; 8];
        assert_eq!(dev.read_at(&mut buf, 4092).unwrap(), 4);
        assert_eq!(&buf[..4], b"\0\0he");
        assert_eq!(dev.read_at(&mut buf, 4096).unwrap(), 0);
        // Nothing was written past the end.
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 4096);
    }

    #[test]
    fn read_only_devices_are_never_written() {
        let (_dir, path) = image(4096);
        let dev = FileDevice::open(&path, true).unwrap();
        assert_eq!(dev.write_at(b"x", 0), Err(Errno::EROFS));
        assert_eq!(dev.discard(0, 4096), Err(Errno::EROFS));
        assert!(std::fs::read(&path).unwrap().iter().all(|&b| b == 0));
    }

    #[test]
    fn truncation_by_another_process_gives_eio_not_sigbus() {
        let (_dir, path) = image(1 << 20);
        let dev = FileDevice::open(&path, false).unwrap();
        OpenOptions::new()
            .write(true)
            .open(&path)
            .unwrap()
            .set_len(4096)
            .unwrap();
        let mut buf = [0u8; 512];
        assert_eq!(dev.read_at(&mut buf, 512 * 1024), Err(Errno::EIO));
    }

    #[test]
    fn discard_reads_back_zeros() {
        let (_dir, path) = image(1 << 20);
        let dev = FileDevice::open(&path, false).unwrap();
        dev.write_all_at(&vec![0xAA; 1 << 20], 0).unwrap();
        dev.discard(4096, 65536).unwrap();
        let mut buf = vec![0u8; 1 << 20];
        dev.read_exact_at(&mut buf, 0).unwrap();
        assert!(buf[..4096].iter().all(|&b| b == 0xAA));
        assert!(buf[4096..69632].iter().all(|&b| b == 0));
        assert!(buf[69632..].iter().all(|&b| b == 0xAA));
    }

    #[test]
    fn holes_are_zero_extents_and_windows_shift_them() {
        let (_dir, path) = image(16 << 20);
        let dev = std::sync::Arc::new(FileDevice::open(&path, false).unwrap());
        dev.write_all_at(&vec![1u8; 1 << 20], 4 << 20).unwrap();
        let ex = dev.extents(0, 16 << 20, 100).unwrap();
        assert_eq!(ex.iter().map(|e| e.len).sum::<u64>(), 16 << 20);
        assert_eq!(
            ex[0],
            Extent {
                len: 4 << 20,
                zero: true
            }
        );
        assert!(!ex[1].zero && ex[1].len >= 1 << 20);
        assert_eq!(
            crate::data_ranges(dev.as_ref()).unwrap(),
            vec![(4 << 20, ex[1].len)]
        );
        // A window from 4 MiB on starts with the data; `max` is kept.
        let w = crate::Window::new(dev.clone(), 4 << 20, 1 << 20).unwrap();
        assert_eq!(
            w.extents(0, 1 << 20, 100).unwrap(),
            vec![Extent {
                len: 1 << 20,
                zero: false
            }]
        );
        assert_eq!(dev.extents(0, 16 << 20, 1).unwrap().len(), 1);
    }

    #[test]
    fn a_data_run_found_once_answers_later_queries_until_a_hole_is_punched() {
        let (_dir, path) = image(8 << 20);
        let dev = FileDevice::open(&path, false).unwrap();
        dev.write_all_at(&vec![1u8; 4 << 20], 2 << 20).unwrap();
        let data = |dev: &FileDevice, off, len| {
            let ex = dev.extents(off, len, 100).unwrap();
            ex.iter().filter(|e| !e.zero).map(|e| e.len).sum::<u64>()
        };
        assert_eq!(data(&dev, 0, 8 << 20), 4 << 20);
        // A hole punched behind the device's back is not seen: the run is remembered...
        let flags = FallocateFlags::PUNCH_HOLE | FallocateFlags::KEEP_SIZE;
        rustix::fs::fallocate(dev.file(), flags, 3 << 20, 1 << 20).unwrap();
        assert_eq!(data(&dev, 3 << 20, 1 << 20), 1 << 20);
        // ...until forgotten, and a discard through the device forgets it itself.
        dev.forget_data_runs();
        assert_eq!(data(&dev, 0, 8 << 20), 3 << 20);
        assert_eq!(data(&dev, 2 << 20, 1 << 20), 1 << 20);
        dev.discard(2 << 20, 1 << 20).unwrap();
        assert_eq!(data(&dev, 0, 8 << 20), 2 << 20);
        // Writes only add data: a remembered run stays true across them.
        dev.write_all_at(&[1u8; 4096], 7 << 20).unwrap();
        assert_eq!(data(&dev, 0, 8 << 20), (2 << 20) + 4096);
    }

    #[test]
    fn directories_and_char_devices_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(
            FileDevice::open(dir.path(), true).unwrap_err(),
            Errno::EISDIR
        );
        assert_eq!(
            FileDevice::open("/dev/null", true).unwrap_err(),
            Errno::ENOTTY
        );
        assert_eq!(
            FileDevice::open(dir.path().join("absent"), true).unwrap_err(),
            Errno::ENOENT
        );
    }
}
