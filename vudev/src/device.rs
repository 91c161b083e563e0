//! The `BlockDevice` contract that every device implements and every driver uses.

use crate::errno::{Errno, Result};
use crate::extent::Extent;
use std::sync::Arc;

/// A random-access store of bytes with a fixed size: an image file, a real
/// disk, a ramdisk, or a window over one of them.
///
/// Contract (shared by all implementations):
/// - reads at or past [`size`](Self::size) return 0 bytes; a read that straddles
///   the end returns the bytes before the end;
/// - writes at or past the end fail with `ENOSPC`; a write that straddles the end
///   writes what fits and returns that count;
/// - a device opened read-only is never written: writes fail with `EROFS`;
/// - methods take `&self`, so one device serves many threads at once.
pub trait BlockDevice: Send + Sync {
    /// Size in bytes.
    fn size(&self) -> u64;

    /// Logical sector size in bytes (512 unless the underlying disk says otherwise).
    fn sector_size(&self) -> u32 {
        512
    }

    /// True when the device refuses writes.
    fn read_only(&self) -> bool;

    /// Reads up to `buf.len()` bytes at `offset`; returns how many were read.
    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<usize>;

    /// Writes up to `buf.len()` bytes at `offset`; returns how many were written.
    fn write_at(&self, buf: &[u8], offset: u64) -> Result<usize>;

    /// Makes every completed write durable (fsync for files).
    fn flush(&self) -> Result<()>;

    /// Tells the device that a byte range is no longer needed; later reads of it
    /// return zeros on devices that report [`discard_zeroes`](Self::discard_zeroes).
    /// The default does nothing, which is always a valid answer.
    fn discard(&self, offset: u64, len: u64) -> Result<()> {
        let _ = (offset, len);
        if self.read_only() {
            return Err(Errno::EROFS);
        }
        Ok(())
    }

    /// True when discarded ranges are guaranteed to read back as zeros.
    fn discard_zeroes(&self) -> bool {
        false
    }

    /// Hints that a byte range will be read soon, so the device can start
    /// fetching it (readahead for a reader that sees a sequential pattern).
    /// Purely advisory: the default does nothing.
    fn prefetch(&self, offset: u64, len: u64) {
        let _ = (offset, len);
    }

    /// Which of `[offset, offset + len)` may hold data and which reads as zeros: extents
    /// in order from `offset`, at most `max` of them, never past `len` or the device's end,
    /// and covering at least one byte when the range is inside the device (they may cover
    /// less than asked: ask again from where they end). Copies read only the data; the
    /// default, "all of it is data", is always correct. See [`crate::data_ranges`].
    fn extents(&self, offset: u64, len: u64, max: usize) -> Result<Vec<Extent>> {
        let _ = max;
        Ok(crate::extent::all_data(self.size(), offset, len))
    }

    /// Reads at `offset` until `buf` is full or the device ends, and returns how many bytes
    /// were read (fewer only at the end): read(2) semantics for the front ends.
    fn read_until_end(&self, buf: &mut [u8], offset: u64) -> Result<usize> {
        let mut done = 0;
        while done < buf.len() {
            match self.read_at(&mut buf[done..], offset + done as u64)? {
                0 => break,
                n => done += n,
            }
        }
        Ok(done)
    }

    /// Writes `buf` at `offset` until all of it is written or the device ends, and returns
    /// how many bytes were written: write(2) semantics for the front ends (`ENOSPC` only
    /// when not one byte fits).
    fn write_until_end(&self, buf: &[u8], offset: u64) -> Result<usize> {
        let mut done = 0;
        while done < buf.len() {
            match self.write_at(&buf[done..], offset + done as u64) {
                Ok(0) => break,
                Ok(n) => done += n,
                Err(Errno::ENOSPC) if done > 0 => break,
                Err(e) => return Err(e),
            }
        }
        Ok(done)
    }

    /// Reads exactly `buf.len()` bytes at `offset`, or fails with `EIO`
    /// (a range past the end is an I/O error for callers that need it all).
    fn read_exact_at(&self, mut buf: &mut [u8], mut offset: u64) -> Result<()> {
        while !buf.is_empty() {
            match self.read_at(buf, offset)? {
                0 => return Err(Errno::EIO),
                n => {
                    buf = &mut buf[n..];
                    offset += n as u64;
                }
            }
        }
        Ok(())
    }

    /// Writes all of `buf` at `offset`, or fails (`ENOSPC` past the end).
    fn write_all_at(&self, mut buf: &[u8], mut offset: u64) -> Result<()> {
        while !buf.is_empty() {
            match self.write_at(buf, offset)? {
                0 => return Err(Errno::ENOSPC),
                n => {
                    buf = &buf[n..];
                    offset += n as u64;
                }
            }
        }
        Ok(())
    }
}

/// How much of a request of `len` bytes at `offset` lies inside a device of `size` bytes.
///
/// Shared by every implementation so the end-of-device rules are written once.
pub(crate) fn clamp_len(size: u64, offset: u64, len: usize) -> usize {
    if offset >= size {
        0
    } else {
        (size - offset).min(len as u64) as usize
    }
}

/// Checks a write request against the contract and returns how many bytes may be written.
pub(crate) fn writable_len(
    dev_read_only: bool,
    size: u64,
    offset: u64,
    len: usize,
) -> Result<usize> {
    if dev_read_only {
        return Err(Errno::EROFS);
    }
    if len == 0 {
        return Ok(0);
    }
    match clamp_len(size, offset, len) {
        0 => Err(Errno::ENOSPC),
        n => Ok(n),
    }
}

macro_rules! forward_block_device {
    ($ty:ty) => {
        impl<T: BlockDevice + ?Sized> BlockDevice for $ty {
            fn size(&self) -> u64 {
                (**self).size()
            }
            fn sector_size(&self) -> u32 {
                (**self).sector_size()
            }
            fn read_only(&self) -> bool {
                (**self).read_only()
            }
            fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<usize> {
                (**self).read_at(buf, offset)
            }
            fn write_at(&self, buf: &[u8], offset: u64) -> Result<usize> {
                (**self).write_at(buf, offset)
            }
            fn flush(&self) -> Result<()> {
                (**self).flush()
            }
            fn discard(&self, offset: u64, len: u64) -> Result<()> {
                (**self).discard(offset, len)
            }
            fn discard_zeroes(&self) -> bool {
                (**self).discard_zeroes()
            }
            fn prefetch(&self, offset: u64, len: u64) {
                (**self).prefetch(offset, len)
            }
            fn extents(&self, offset: u64, len: u64, max: usize) -> Result<Vec<Extent>> {
                (**self).extents(offset, len, max)
            }
        }
    };
}

forward_block_device!(Arc<T>);
forward_block_device!(Box<T>);
forward_block_device!(&T);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clamp_follows_the_end_of_device_rules() {
        assert_eq!(clamp_len(100, 0, 10), 10);
        assert_eq!(clamp_len(100, 95, 10), 5);
        assert_eq!(clamp_len(100, 100, 10), 0);
        assert_eq!(clamp_len(100, u64::MAX, 10), 0);
        assert_eq!(writable_len(false, 100, 100, 1), Err(Errno::ENOSPC));
        assert_eq!(writable_len(false, 100, 99, 8), Ok(1));
        assert_eq!(writable_len(true, 100, 0, 1), Err(Errno::EROFS));
        assert_eq!(writable_len(false, 100, 100, 0), Ok(0));
    }

    /// A device that moves at most 3 bytes a call, so the loops are exercised.
    struct Trickle(crate::Ramdisk);

    impl BlockDevice for Trickle {
        fn size(&self) -> u64 {
            self.0.size()
        }
        fn read_only(&self) -> bool {
            false
        }
        fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<usize> {
            let n = buf.len().min(3);
            self.0.read_at(&mut buf[..n], offset)
        }
        fn write_at(&self, buf: &[u8], offset: u64) -> Result<usize> {
            let n = buf.len().min(3);
            self.0.write_at(&buf[..n], offset)
        }
        fn flush(&self) -> Result<()> {
            Ok(())
        }
    }

    #[test]
    fn until_end_reads_and_writes_stop_only_at_the_end_of_the_device() {
        let dev = Trickle(crate::Ramdisk::new(4096).unwrap());
        let data: Vec<u8> = (0..100u8).collect();
        assert_eq!(dev.write_until_end(&data, 10), Ok(100));
        // Crossing the end: the part that fits; at the end: ENOSPC.
        assert_eq!(dev.write_until_end(&data, 4090), Ok(6));
        assert_eq!(dev.write_until_end(&data, 4096), Err(Errno::ENOSPC));
        let mut buf = vec![0u8; 100];
        assert_eq!(dev.read_until_end(&mut buf, 10), Ok(100));
        assert_eq!(buf, data);
        assert_eq!(dev.read_until_end(&mut buf, 4090), Ok(6));
        assert_eq!(&buf[..6], &data[..6]);
        assert_eq!(dev.read_until_end(&mut buf, 4096), Ok(0));
    }
}
