//! A write-back block cache as a [`BlockDevice`] wrapper, for drivers whose metadata blocks
//! (inode tables, bitmaps, directory blocks, FAT sectors) are read and written over and over.
//!
//! Only requests of exactly one cache block, aligned, are cached; the block size is the
//! driver's (`set_block_size`, 0 turns caching off). The cache is direct-mapped and bounded
//! (at most [`MAX_SLOTS`] blocks and [`MAX_BYTES`] bytes). Single-block writes stay in it,
//! dirty, until [`CachedDevice::write_back`] (a driver calls it at the end of each operation),
//! which writes them in block order with neighbours coalesced into one device write, so a
//! block written several times in one operation costs one write. Every other request keeps
//! the order of writes: dirty blocks go to the device first, and cached copies a write
//! overlaps are forgotten; a dirty block displaced from its slot is written before it goes.

use crate::device::BlockDevice;
use crate::errno::{Errno, Result};
use std::collections::BTreeSet;
use std::sync::{Arc, Mutex, MutexGuard};

/// Most blocks the cache holds.
pub const MAX_SLOTS: usize = 1024;
/// Most bytes the cache holds (large block sizes get fewer slots).
pub const MAX_BYTES: usize = 16 << 20;
/// Longest run of neighbouring dirty blocks written in one device call.
const RUN_MAX: usize = 64;

#[derive(Clone, Copy, Default)]
struct Slot {
    block: u64,
    valid: bool,
    dirty: bool,
}

struct Cache {
    block_size: usize,
    slots: Vec<Slot>,
    data: Vec<u8>,
    /// Dirty blocks, in block order.
    dirty: BTreeSet<u64>,
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
            dirty: BTreeSet::new(),
        }
    }

    fn slot_of(&self, block: u64) -> usize {
        (block % self.slots.len() as u64) as usize
    }

    fn bytes(&self, slot: usize) -> &[u8] {
        &self.data[slot * self.block_size..(slot + 1) * self.block_size]
    }

    fn bytes_mut(&mut self, slot: usize) -> &mut [u8] {
        let bs = self.block_size;
        &mut self.data[slot * bs..(slot + 1) * bs]
    }

    /// The block a single-block request at `offset` of `len` bytes is, if it is one.
    fn cacheable(&self, offset: u64, len: usize) -> Option<u64> {
        let bs = self.block_size;
        (bs != 0 && len == bs && offset % bs as u64 == 0).then(|| offset / bs as u64)
    }

    /// Writes the dirty block in `slot` (if any) so the slot can take another block.
    fn evict(&mut self, inner: &dyn BlockDevice, slot: usize) -> Result<()> {
        let s = self.slots[slot];
        if s.valid && s.dirty {
            inner.write_all_at(self.bytes(slot), s.block * self.block_size as u64)?;
            self.slots[slot].dirty = false;
            self.dirty.remove(&s.block);
        }
        Ok(())
    }

    /// Forgets cached blocks overlapping `[offset, offset + len)`, dirty ones included: the
    /// caller is about to overwrite them on the device.
    fn forget(&mut self, offset: u64, len: u64) {
        if self.block_size == 0 || len == 0 {
            return;
        }
        let bs = self.block_size as u64;
        let (first, last) = (offset / bs, (offset + len).div_ceil(bs));
        if last - first >= self.slots.len() as u64 {
            for slot in &mut self.slots {
                if slot.valid && slot.block >= first && slot.block < last {
                    *slot = Slot::default();
                }
            }
            let stale: Vec<u64> = self.dirty.range(first..last).copied().collect();
            for block in stale {
                self.dirty.remove(&block);
            }
            return;
        }
        for block in first..last {
            let slot = self.slot_of(block);
            if self.slots[slot].valid && self.slots[slot].block == block {
                self.slots[slot] = Slot::default();
                self.dirty.remove(&block);
            }
        }
    }

    /// Writes every dirty block, in block order, runs of neighbours in one call. On an
    /// error the blocks not yet written stay dirty.
    fn write_back(&mut self, inner: &dyn BlockDevice) -> Result<()> {
        let bs = self.block_size;
        let mut run: Vec<u8> = Vec::new();
        while let Some(&first) = self.dirty.iter().next() {
            let blocks: Vec<u64> = self
                .dirty
                .range(first..)
                .copied()
                .enumerate()
                .take_while(|&(i, b)| i < RUN_MAX && b == first + i as u64)
                .map(|(_, b)| b)
                .collect();
            run.clear();
            for &block in &blocks {
                run.extend_from_slice(self.bytes(self.slot_of(block)));
            }
            inner.write_all_at(&run, first * bs as u64)?;
            for block in blocks {
                let slot = self.slot_of(block);
                self.slots[slot].dirty = false;
                self.dirty.remove(&block);
            }
        }
        Ok(())
    }
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
        cache.write_back(self.inner.as_ref())?;
        *cache = Cache::new(block_size);
        Ok(())
    }

    /// Writes every dirty block to the device (sorted, neighbours coalesced).
    pub fn write_back(&self) -> Result<()> {
        self.lock().write_back(self.inner.as_ref())
    }

    /// How many dirty blocks wait for [`CachedDevice::write_back`].
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
            // Keep the order of writes: what waits goes first.
            cache.write_back(self.inner.as_ref())?;
            drop(cache);
            return self.inner.read_at(buf, offset);
        };
        let slot = cache.slot_of(block);
        if cache.slots[slot].valid && cache.slots[slot].block == block {
            buf.copy_from_slice(cache.bytes(slot));
            return Ok(buf.len());
        }
        let got = self.inner.read_at(buf, offset)?;
        if got == buf.len() && cache.evict(self.inner.as_ref(), slot).is_ok() {
            cache.bytes_mut(slot).copy_from_slice(buf);
            cache.slots[slot] = Slot {
                block,
                valid: true,
                dirty: false,
            };
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
                let slot = cache.slot_of(block);
                if !(cache.slots[slot].valid && cache.slots[slot].block == block) {
                    cache.evict(self.inner.as_ref(), slot)?;
                }
                cache.bytes_mut(slot).copy_from_slice(buf);
                cache.slots[slot] = Slot {
                    block,
                    valid: true,
                    dirty: true,
                };
                cache.dirty.insert(block);
                Ok(buf.len())
            }
            None => {
                cache.write_back(self.inner.as_ref())?;
                cache.forget(offset, buf.len() as u64);
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
        cache.write_back(self.inner.as_ref())?;
        cache.forget(offset, len);
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
    fn other_requests_keep_the_order_of_writes() {
        let dev = counting();
        let cache = CachedDevice::new(dev.clone(), 1024);
        cache.write_at(&[1; 1024], 0).unwrap();
        // A two-block write over the cached block: the cached copy must not win later.
        cache.write_at(&[2; 2048], 0).unwrap();
        let mut back = [0u8; 1024];
        cache.read_at(&mut back, 0).unwrap();
        assert_eq!(back, [2; 1024]);
        cache.write_back().unwrap();
        dev.read_at(&mut back, 0).unwrap();
        assert_eq!(back, [2; 1024]);
        // A multi-block read sees dirty blocks (they go first).
        cache.write_at(&[3; 1024], 1024).unwrap();
        let mut two = [0u8; 2048];
        cache.read_at(&mut two, 0).unwrap();
        assert_eq!(&two[1024..], &[3; 1024]);
        assert_eq!(cache.dirty_blocks(), 0);
    }

    #[test]
    fn a_displaced_dirty_block_reaches_the_device_and_memory_stays_bounded() {
        let dev = counting();
        let cache = CachedDevice::new(dev.clone(), 65536);
        let slots = cache.lock().slots.len();
        assert_eq!(slots, MAX_BYTES / 65536);
        assert!(cache.lock().data.len() <= MAX_BYTES);
        cache.write_at(&[7; 65536], 0).unwrap();
        // Same slot, another block: the first is written out before it is replaced.
        cache.write_at(&[8; 65536], slots as u64 * 65536).unwrap();
        let mut back = vec![0u8; 65536];
        dev.read_at(&mut back, 0).unwrap();
        assert!(back.iter().all(|&b| b == 7));
        cache.set_block_size(4096).unwrap();
        dev.read_at(&mut back, slots as u64 * 65536).unwrap();
        assert!(
            back.iter().all(|&b| b == 8),
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
