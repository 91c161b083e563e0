//! A write-back block cache as a [`BlockDevice`] wrapper, for drivers whose metadata blocks
//! (inode tables, bitmaps, directory blocks, FAT sectors) are read and written over and over.
//!
//! Only requests of exactly one cache block, aligned, are cached; the block size is the
//! driver's (`set_block_size`, 0 turns caching off). Clean copies live in a direct-mapped,
//! bounded table (at most [`MAX_SLOTS`] blocks and [`MAX_BYTES`] bytes). Single-block writes
//! stay dirty until the driver writes them back, all at once ([`CachedDevice::write_back`]:
//! block order, neighbours coalesced into one device write) or a chosen part first
//! ([`CachedDevice::write_back_within`], [`CachedDevice::write_back_outside`]), so a driver
//! without a journal decides the order in which an operation's blocks reach the device and a
//! kill between two writes leaves at worst a leak (see docs/EXT-ENGINE.md). Nothing else
//! writes a dirty block early: other reads see dirty blocks laid over what the device holds,
//! other writes replace the dirty blocks they cover. The one exception keeps memory bounded:
//! past [`MAX_BYTES`] of dirty blocks, everything dirty is written back in block order.

use crate::device::BlockDevice;
use crate::errno::{Errno, Result};
use std::collections::BTreeMap;
use std::ops::Range;
use std::sync::{Arc, Mutex, MutexGuard};

/// Most blocks the cache holds clean.
pub const MAX_SLOTS: usize = 1024;
/// Most bytes the cache holds clean, and most bytes it holds dirty.
pub const MAX_BYTES: usize = 16 << 20;
/// Longest run of neighbouring dirty blocks written in one device call.
const RUN_MAX: usize = 64;

#[derive(Clone, Copy, Default)]
struct Slot {
    block: u64,
    valid: bool,
}

struct Cache {
    block_size: usize,
    /// Clean copies, direct-mapped.
    slots: Vec<Slot>,
    data: Vec<u8>,
    /// Dirty blocks, in block order.
    dirty: BTreeMap<u64, Box<[u8]>>,
}

impl Cache {
    fn new(block_size: usize) -> Cache {
        let count = MAX_BYTES
            .checked_div(block_size)
            .map_or(0, |fit| MAX_SLOTS.min(fit).max(1));
        Cache {
            block_size,
            slots: vec![Slot::default(); count],
            data: vec![0; count * block_size],
            dirty: BTreeMap::new(),
        }
    }

    fn slot_of(&self, block: u64) -> usize {
        (block % self.slots.len() as u64) as usize
    }

    fn bytes(&self, slot: usize) -> &[u8] {
        &self.data[slot * self.block_size..(slot + 1) * self.block_size]
    }

    /// The clean copy of `block`, if the cache holds one.
    fn clean(&self, block: u64) -> Option<&[u8]> {
        let slot = self.slot_of(block);
        let s = self.slots[slot];
        (s.valid && s.block == block).then(|| self.bytes(slot))
    }

    /// Keeps `bytes` as the clean copy of `block`, displacing whatever shared its slot.
    fn keep_clean(&mut self, block: u64, bytes: &[u8]) {
        let bs = self.block_size;
        let slot = self.slot_of(block);
        self.data[slot * bs..(slot + 1) * bs].copy_from_slice(bytes);
        self.slots[slot] = Slot { block, valid: true };
    }

    fn drop_clean(&mut self, block: u64) {
        let slot = self.slot_of(block);
        if self.slots[slot].valid && self.slots[slot].block == block {
            self.slots[slot] = Slot::default();
        }
    }

    /// The block a single-block request at `offset` of `len` bytes is, if it is one.
    fn cacheable(&self, offset: u64, len: usize) -> Option<u64> {
        let bs = self.block_size;
        (bs != 0 && len == bs && offset % bs as u64 == 0).then(|| offset / bs as u64)
    }

    /// The blocks `[offset, offset + len)` touches.
    fn blocks_of(&self, offset: u64, len: u64) -> Range<u64> {
        let bs = self.block_size as u64;
        offset / bs..(offset + len).div_ceil(bs)
    }

    /// Lays the dirty blocks over `buf`, just read from the device at `offset`.
    fn overlay_dirty(&self, buf: &mut [u8], offset: u64) {
        if self.block_size == 0 || buf.is_empty() {
            return;
        }
        let bs = self.block_size as u64;
        let end = offset + buf.len() as u64;
        for (&block, bytes) in self.dirty.range(self.blocks_of(offset, buf.len() as u64)) {
            let (from, to) = ((block * bs).max(offset), ((block + 1) * bs).min(end));
            buf[(from - offset) as usize..(to - offset) as usize]
                .copy_from_slice(&bytes[(from - block * bs) as usize..(to - block * bs) as usize]);
        }
    }

    /// Before `buf` is written to the device at `offset` (not one cached block): dirty blocks
    /// it covers whole are superseded, the ones it covers in part take its bytes, clean copies
    /// it touches are forgotten.
    fn absorb_write(&mut self, buf: &[u8], offset: u64) {
        if self.block_size == 0 || buf.is_empty() {
            return;
        }
        let bs = self.block_size as u64;
        let end = offset + buf.len() as u64;
        let blocks = self.blocks_of(offset, buf.len() as u64);
        let touched: Vec<u64> = self.dirty.range(blocks.clone()).map(|(&b, _)| b).collect();
        for block in touched {
            let (from, to) = ((block * bs).max(offset), ((block + 1) * bs).min(end));
            if to - from == bs {
                self.dirty.remove(&block);
            } else if let Some(bytes) = self.dirty.get_mut(&block) {
                bytes[(from - block * bs) as usize..(to - block * bs) as usize]
                    .copy_from_slice(&buf[(from - offset) as usize..(to - offset) as usize]);
            }
        }
        self.forget_clean(blocks);
    }

    fn forget_clean(&mut self, blocks: Range<u64>) {
        if blocks.end - blocks.start >= self.slots.len() as u64 {
            for slot in &mut self.slots {
                if slot.valid && blocks.contains(&slot.block) {
                    *slot = Slot::default();
                }
            }
        } else {
            for block in blocks {
                self.drop_clean(block);
            }
        }
    }

    /// Writes the dirty blocks `chosen` picks, in block order, runs of neighbours in one call;
    /// written blocks stay as clean copies. On an error the blocks not yet written stay dirty.
    fn write_back(&mut self, inner: &dyn BlockDevice, chosen: impl Fn(u64) -> bool) -> Result<()> {
        let bs = self.block_size as u64;
        let picked: Vec<u64> = self.dirty.keys().copied().filter(|&b| chosen(b)).collect();
        let mut run: Vec<u8> = Vec::new();
        for blocks in picked.chunk_by(|a, b| b == &(a + 1)) {
            for blocks in blocks.chunks(RUN_MAX) {
                run.clear();
                for block in blocks {
                    run.extend_from_slice(&self.dirty[block]);
                }
                inner.write_all_at(&run, blocks[0] * bs)?;
                for &block in blocks {
                    if let Some(bytes) = self.dirty.remove(&block) {
                        self.keep_clean(block, &bytes);
                    }
                }
            }
        }
        Ok(())
    }

    fn dirty_bytes(&self) -> usize {
        self.dirty.len() * self.block_size
    }
}

/// Whether `block` of `block_size` bytes overlaps one of the byte ranges.
fn overlaps(ranges: &[Range<u64>], block: u64, block_size: u64) -> bool {
    let (start, end) = (block * block_size, (block + 1) * block_size);
    ranges.iter().any(|r| r.start < end && start < r.end)
}

/// A [`BlockDevice`] with a write-back cache of single blocks in front (see the module).
pub struct CachedDevice {
    inner: Arc<dyn BlockDevice>,
    cache: Mutex<Cache>,
}

impl std::fmt::Debug for CachedDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let cache = self.lock();
        f.debug_struct("CachedDevice")
            .field("block_size", &cache.block_size)
            .field("slots", &cache.slots.len())
            .field("dirty", &cache.dirty.len())
            .finish()
    }
}

impl CachedDevice {
    /// Caches blocks of `block_size` bytes (0: none until [`CachedDevice::set_block_size`]).
    pub fn new(inner: Arc<dyn BlockDevice>, block_size: usize) -> CachedDevice {
        CachedDevice {
            inner,
            cache: Mutex::new(Cache::new(block_size)),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Cache> {
        self.cache.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Changes the cached block size: what is dirty is written first, then the cache starts
    /// empty.
    pub fn set_block_size(&self, block_size: usize) -> Result<()> {
        let mut cache = self.lock();
        if cache.block_size == block_size {
            return Ok(());
        }
        cache.write_back(self.inner.as_ref(), |_| true)?;
        *cache = Cache::new(block_size);
        Ok(())
    }

    /// Writes every dirty block to the device (sorted, neighbours coalesced).
    pub fn write_back(&self) -> Result<()> {
        self.lock().write_back(self.inner.as_ref(), |_| true)
    }

    /// Writes the dirty blocks that overlap one of the byte `ranges`, before any other.
    pub fn write_back_within(&self, ranges: &[Range<u64>]) -> Result<()> {
        let mut cache = self.lock();
        let bs = cache.block_size as u64;
        cache.write_back(self.inner.as_ref(), |b| overlaps(ranges, b, bs))
    }

    /// Writes the dirty blocks that overlap none of the byte `ranges`.
    pub fn write_back_outside(&self, ranges: &[Range<u64>]) -> Result<()> {
        let mut cache = self.lock();
        let bs = cache.block_size as u64;
        cache.write_back(self.inner.as_ref(), |b| !overlaps(ranges, b, bs))
    }

    /// How many dirty blocks wait for a write-back.
    pub fn dirty_blocks(&self) -> usize {
        self.lock().dirty.len()
    }
}

impl BlockDevice for CachedDevice {
    fn size(&self) -> u64 {
        self.inner.size()
    }

    fn sector_size(&self) -> u32 {
        self.inner.sector_size()
    }

    fn read_only(&self) -> bool {
        self.inner.read_only()
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<usize> {
        let mut cache = self.lock();
        let Some(block) = cache.cacheable(offset, buf.len()) else {
            let got = self.inner.read_at(buf, offset)?;
            cache.overlay_dirty(&mut buf[..got], offset);
            return Ok(got);
        };
        if let Some(bytes) = cache
            .dirty
            .get(&block)
            .map(|b| &b[..])
            .or(cache.clean(block))
        {
            buf.copy_from_slice(bytes);
            return Ok(buf.len());
        }
        let got = self.inner.read_at(buf, offset)?;
        if got == buf.len() {
            cache.keep_clean(block, buf);
        }
        Ok(got)
    }

    fn write_at(&self, buf: &[u8], offset: u64) -> Result<usize> {
        if self.inner.read_only() {
            return Err(Errno::EROFS);
        }
        let mut cache = self.lock();
        let fits = offset
            .checked_add(buf.len() as u64)
            .is_some_and(|end| end <= self.inner.size());
        match cache.cacheable(offset, buf.len()).filter(|_| fits) {
            Some(block) => {
                cache.drop_clean(block);
                cache.dirty.insert(block, buf.into());
                if cache.dirty_bytes() > MAX_BYTES {
                    cache.write_back(self.inner.as_ref(), |_| true)?;
                }
                Ok(buf.len())
            }
            None => {
                cache.absorb_write(buf, offset);
                drop(cache);
                self.inner.write_at(buf, offset)
            }
        }
    }

    fn flush(&self) -> Result<()> {
        self.write_back()?;
        self.inner.flush()
    }

    fn discard(&self, offset: u64, len: u64) -> Result<()> {
        let mut cache = self.lock();
        if cache.block_size != 0 && len != 0 {
            // Dirty blocks the range covers whole are superseded; one it covers in part keeps
            // its bytes outside the range, so it goes to the device first.
            let bs = cache.block_size as u64;
            let end = offset.saturating_add(len);
            let blocks = cache.blocks_of(offset, len);
            let whole = |b: u64| b * bs >= offset && (b + 1) * bs <= end;
            cache
                .dirty
                .retain(|&b, _| !(blocks.contains(&b) && whole(b)));
            cache.write_back(self.inner.as_ref(), |b| blocks.contains(&b))?;
            cache.forget_clean(blocks);
        }
        drop(cache);
        self.inner.discard(offset, len)
    }

    fn discard_zeroes(&self) -> bool {
        self.inner.discard_zeroes()
    }

    fn prefetch(&self, offset: u64, len: u64) {
        self.inner.prefetch(offset, len);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Ramdisk;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// Counts the writes that reach the device.
    struct Counting {
        inner: Ramdisk,
        writes: AtomicUsize,
    }

    impl BlockDevice for Counting {
        fn size(&self) -> u64 {
            self.inner.size()
        }
        fn read_only(&self) -> bool {
            false
        }
        fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<usize> {
            self.inner.read_at(buf, offset)
        }
        fn write_at(&self, buf: &[u8], offset: u64) -> Result<usize> {
            self.writes.fetch_add(1, Ordering::Relaxed);
            self.inner.write_at(buf, offset)
        }
        fn flush(&self) -> Result<()> {
            Ok(())
        }
    }

    fn counting() -> Arc<Counting> {
        Arc::new(Counting {
            inner: Ramdisk::new(64 << 20).unwrap(),
            writes: AtomicUsize::new(0),
        })
    }

    #[test]
    fn repeated_block_writes_cost_one_coalesced_write() {
        let dev = counting();
        let cache = CachedDevice::new(dev.clone(), 4096);
        for round in 0..5u8 {
            for block in [3u64, 1, 2] {
                cache.write_at(&[round; 4096], block * 4096).unwrap();
            }
        }
        assert_eq!(
            dev.writes.load(Ordering::Relaxed),
            0,
            "held until write_back"
        );
        let mut back = [0u8; 4096];
        cache.read_at(&mut back, 2 * 4096).unwrap();
        assert_eq!(back, [4u8; 4096], "reads see what waits");
        assert_eq!(cache.dirty_blocks(), 3);
        cache.write_back().unwrap();
        assert_eq!(
            dev.writes.load(Ordering::Relaxed),
            1,
            "blocks 1-3 in one run"
        );
        let mut all = vec![0u8; 3 * 4096];
        dev.read_at(&mut all, 4096).unwrap();
        assert!(all.iter().all(|&b| b == 4));
    }

    #[test]
    fn other_requests_see_dirty_blocks_without_writing_them_early() {
        let dev = counting();
        let cache = CachedDevice::new(dev.clone(), 1024);
        cache.write_at(&[1; 1024], 0).unwrap();
        // A two-block write over the dirty block supersedes it.
        cache.write_at(&[2; 2048], 0).unwrap();
        let mut back = [0u8; 1024];
        cache.read_at(&mut back, 0).unwrap();
        assert_eq!(back, [2; 1024]);
        assert_eq!(cache.dirty_blocks(), 0, "superseded, not written");
        // A multi-block read sees a dirty block laid over the device, which keeps it dirty.
        let before = dev.writes.load(Ordering::Relaxed);
        cache.write_at(&[3; 1024], 1024).unwrap();
        let mut two = [0u8; 2048];
        cache.read_at(&mut two, 0).unwrap();
        assert_eq!(&two[..1024], &[2; 1024]);
        assert_eq!(&two[1024..], &[3; 1024]);
        assert_eq!(
            dev.writes.load(Ordering::Relaxed),
            before,
            "nothing written early"
        );
        assert_eq!(cache.dirty_blocks(), 1);
        // A write covering part of a dirty block patches it: both bytes survive write-back.
        cache.write_at(&[4; 512], 1024 + 256).unwrap();
        cache.write_back().unwrap();
        let mut block = [0u8; 1024];
        dev.read_at(&mut block, 1024).unwrap();
        assert_eq!(&block[..256], &[3; 256]);
        assert_eq!(&block[256..768], &[4; 512]);
        assert_eq!(&block[768..], &[3; 256]);
    }

    /// Records the offset of every write that reaches the device.
    struct Recording {
        inner: Ramdisk,
        offsets: Mutex<Vec<u64>>,
    }

    impl BlockDevice for Recording {
        fn size(&self) -> u64 {
            self.inner.size()
        }
        fn read_only(&self) -> bool {
            false
        }
        fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<usize> {
            self.inner.read_at(buf, offset)
        }
        fn write_at(&self, buf: &[u8], offset: u64) -> Result<usize> {
            self.offsets.lock().unwrap().push(offset);
            self.inner.write_at(buf, offset)
        }
        fn flush(&self) -> Result<()> {
            Ok(())
        }
    }

    #[test]
    fn the_driver_chooses_which_blocks_reach_the_device_first() {
        let dev = Arc::new(Recording {
            inner: Ramdisk::new(1 << 20).unwrap(),
            offsets: Mutex::new(Vec::new()),
        });
        let cache = CachedDevice::new(dev.clone(), 1024);
        for block in [9u64, 2, 5, 40] {
            cache.write_at(&[block as u8; 1024], block * 1024).unwrap();
        }
        // Blocks 40 and 5 first (a range ending inside block 5 counts), then the rest in order.
        cache
            .write_back_within(&[40 * 1024..41 * 1024, 5 * 1024 + 10..5 * 1024 + 11])
            .unwrap();
        assert_eq!(*dev.offsets.lock().unwrap(), [5 * 1024, 40 * 1024]);
        let block_2 = [2 * 1024..3 * 1024, 2 * 1024..2 * 1024 + 1];
        cache.write_back_outside(&block_2).unwrap();
        cache.write_back().unwrap();
        assert_eq!(
            *dev.offsets.lock().unwrap(),
            [5 * 1024, 40 * 1024, 9 * 1024, 2 * 1024]
        );
        let mut back = [0u8; 1024];
        dev.read_at(&mut back, 9 * 1024).unwrap();
        assert_eq!(back, [9; 1024]);
        cache.read_at(&mut back, 40 * 1024).unwrap();
        assert_eq!(back, [40; 1024], "written blocks stay cached clean");
    }

    #[test]
    fn memory_stays_bounded_clean_and_dirty() {
        let dev = counting();
        let cache = CachedDevice::new(dev.clone(), 65536);
        let slots = cache.lock().slots.len();
        assert_eq!(slots, MAX_BYTES / 65536);
        assert!(cache.lock().data.len() <= MAX_BYTES);
        // Blocks that share a slot: both stay dirty until write-back.
        cache.write_at(&[7; 65536], 0).unwrap();
        cache.write_at(&[8; 65536], slots as u64 * 65536).unwrap();
        assert_eq!(dev.writes.load(Ordering::Relaxed), 0);
        let mut back = vec![0u8; 65536];
        cache.read_at(&mut back, 0).unwrap();
        assert!(back.iter().all(|&b| b == 7));
        // Past MAX_BYTES of dirty blocks, everything goes to the device.
        for block in slots as u64 + 1..=2 * slots as u64 {
            cache.write_at(&[9; 65536], block * 65536).unwrap();
            assert!(cache.lock().dirty_bytes() <= MAX_BYTES);
        }
        assert!(cache.dirty_blocks() < slots);
        assert!(dev.writes.load(Ordering::Relaxed) > 0);
        dev.read_at(&mut back, slots as u64 * 65536).unwrap();
        assert!(back.iter().all(|&b| b == 8));
        cache.write_at(&[6; 65536], 0).unwrap();
        cache.set_block_size(4096).unwrap();
        dev.read_at(&mut back, 0).unwrap();
        assert!(
            back.iter().all(|&b| b == 6),
            "a block size change writes back"
        );
    }

    #[test]
    fn the_end_of_the_device_and_read_only_follow_the_contract() {
        let dev: Arc<dyn BlockDevice> = Arc::new(Ramdisk::new(8192).unwrap());
        let cache = CachedDevice::new(dev, 4096);
        assert_eq!(cache.write_at(&[1; 4096], 8192), Err(Errno::ENOSPC));
        let mut buf = [0u8; 4096];
        assert_eq!(cache.read_at(&mut buf, 8192).unwrap(), 0);
        let mut ro = Ramdisk::new(8192).unwrap();
        ro.set_read_only(true);
        let cache = CachedDevice::new(Arc::new(ro), 4096);
        assert_eq!(cache.write_at(&[1; 4096], 0), Err(Errno::EROFS));
    }
}
