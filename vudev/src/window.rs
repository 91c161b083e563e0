//! A (start, length) view over another device, itself a device.

use crate::device::{clamp_len, writable_len, BlockDevice};
use crate::errno::{Errno, Result};
use crate::extent::{Extent, ExtentList};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// A byte range of a parent device, exposed as a device of its own: a partition.
///
/// A window can be revoked (see [`Window::revocation`]): after a table re-read
/// moved or removed its partition, every operation fails with `EIO` instead of
/// touching sectors that now belong to something else.
#[derive(Clone)]
pub struct Window {
    parent: Arc<dyn BlockDevice>,
    start: u64,
    len: u64,
    read_only: bool,
    valid: Arc<AtomicBool>,
}

impl std::fmt::Debug for Window {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Window")
            .field("start", &self.start)
            .field("len", &self.len)
            .field("read_only", &self.read_only)
            .field("valid", &self.is_valid())
            .finish()
    }
}

/// The handle that revokes every copy of a [`Window`].
#[derive(Clone, Debug)]
pub struct Revocation(Arc<AtomicBool>);

impl Revocation {
    /// Makes every operation on the window fail with `EIO` from now on.
    pub fn revoke(&self) {
        self.0.store(false, Ordering::Release);
    }
}

impl Window {
    /// A window of `len` bytes at byte `start` of `parent`; `EINVAL` if it
    /// does not lie inside the parent.
    pub fn new(parent: Arc<dyn BlockDevice>, start: u64, len: u64) -> Result<Window> {
        let end = start.checked_add(len).ok_or(Errno::EINVAL)?;
        if end > parent.size() {
            return Err(Errno::EINVAL);
        }
        let read_only = parent.read_only();
        Ok(Window {
            parent,
            start,
            len,
            read_only,
            valid: Arc::new(AtomicBool::new(true)),
        })
    }

    /// The same window, refusing writes even if the parent accepts them.
    pub fn read_only(mut self) -> Window {
        self.read_only = true;
        self
    }

    /// Byte offset of the window in its parent.
    pub fn start(&self) -> u64 {
        self.start
    }

    /// The device this window looks into.
    pub fn parent(&self) -> &Arc<dyn BlockDevice> {
        &self.parent
    }

    /// False once the window was revoked.
    pub fn is_valid(&self) -> bool {
        self.valid.load(Ordering::Acquire)
    }

    /// A handle that revokes this window and all its clones.
    pub fn revocation(&self) -> Revocation {
        Revocation(self.valid.clone())
    }

    fn check(&self) -> Result<()> {
        if self.is_valid() {
            Ok(())
        } else {
            Err(Errno::EIO)
        }
    }
}

impl BlockDevice for Window {
    fn size(&self) -> u64 {
        self.len
    }

    fn sector_size(&self) -> u32 {
        self.parent.sector_size()
    }

    fn read_only(&self) -> bool {
        self.read_only
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<usize> {
        self.check()?;
        let len = clamp_len(self.len, offset, buf.len());
        if len == 0 {
            return Ok(0);
        }
        self.parent.read_at(&mut buf[..len], self.start + offset)
    }

    fn write_at(&self, buf: &[u8], offset: u64) -> Result<usize> {
        self.check()?;
        let len = writable_len(self.read_only, self.len, offset, buf.len())?;
        if len == 0 {
            return Ok(0);
        }
        self.parent.write_at(&buf[..len], self.start + offset)
    }

    fn flush(&self) -> Result<()> {
        self.check()?;
        if self.read_only {
            return Ok(());
        }
        self.parent.flush()
    }

    fn discard(&self, offset: u64, len: u64) -> Result<()> {
        self.check()?;
        if self.read_only {
            return Err(Errno::EROFS);
        }
        let len = clamp_len(self.len, offset, usize::try_from(len).unwrap_or(usize::MAX)) as u64;
        if len == 0 {
            return Ok(());
        }
        self.parent.discard(self.start + offset, len)
    }

    fn discard_zeroes(&self) -> bool {
        self.parent.discard_zeroes()
    }

    /// The parent's answer for the window's part of it.
    fn extents(&self, offset: u64, len: u64, max: usize) -> Result<Vec<Extent>> {
        self.check()?;
        let len = len.min(self.len.saturating_sub(offset));
        if len == 0 {
            return Ok(Vec::new());
        }
        let mut list = ExtentList::new(max);
        list.push_from(self.parent.as_ref(), self.start + offset, len)?;
        Ok(list.into_vec())
    }

    fn prefetch(&self, offset: u64, len: u64) {
        if !self.is_valid() {
            return;
        }
        let len = clamp_len(self.len, offset, usize::try_from(len).unwrap_or(usize::MAX)) as u64;
        if len > 0 {
            self.parent.prefetch(self.start + offset, len);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Ramdisk;

    #[test]
    fn window_maps_offsets_and_stays_inside() {
        let disk: Arc<dyn BlockDevice> = Arc::new(Ramdisk::new(1 << 20).unwrap());
        let win = Window::new(disk.clone(), 4096, 8192).unwrap();
        assert_eq!(win.size(), 8192);
        assert_eq!(win.write_at(&[9u8; 100], 8150).unwrap(), 42);
        assert_eq!(win.write_at(&[9u8; 1], 8192), Err(Errno::ENOSPC));
        let mut buf = [0u8; 200];
        disk.read_exact_at(&mut buf, 4096 + 8100).unwrap();
        assert!(buf[..50].iter().all(|&b| b == 0));
        assert!(buf[50..92].iter().all(|&b| b == 9));
        assert!(
            buf[92..].iter().all(|&b| b == 0),
            "window wrote past its end"
        );
        assert_eq!(
            Window::new(disk.clone(), 1 << 20, 1).unwrap_err(),
            Errno::EINVAL
        );
        assert_eq!(Window::new(disk, u64::MAX, 2).unwrap_err(), Errno::EINVAL);
    }

    #[test]
    fn revoked_windows_fail_with_eio() {
        let disk: Arc<dyn BlockDevice> = Arc::new(Ramdisk::new(1 << 20).unwrap());
        let win = Window::new(disk, 0, 4096).unwrap();
        let copy = win.clone();
        win.revocation().revoke();
        let mut buf = [0u8; 16];
        assert_eq!(copy.read_at(&mut buf, 0), Err(Errno::EIO));
        assert_eq!(copy.write_at(&buf, 0), Err(Errno::EIO));
        assert_eq!(copy.flush(), Err(Errno::EIO));
    }

    #[test]
    fn read_only_window_over_writable_parent() {
        let disk: Arc<dyn BlockDevice> = Arc::new(Ramdisk::new(1 << 20).unwrap());
        let win = Window::new(disk, 0, 4096).unwrap().read_only();
        assert_eq!(win.write_at(&[1], 0), Err(Errno::EROFS));
    }
}
