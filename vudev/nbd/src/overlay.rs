//! A copy-on-write overlay kept in memory: `vunbd --snapshot`.
//!
//! Reads come from the overlay where a block was written and from the base device
//! elsewhere; writes never reach the base (opened read-only), so the image is unchanged
//! when the server exits. Memory grows with the blocks written (4 KiB granularity) and is
//! not bounded by anything but the device size.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use vudev::{BlockDevice, Errno, Extent, ExtentList, Result};

/// Granularity of the overlay.
pub const BLOCK: u64 = 4096;

enum Block {
    /// Discarded: reads as zeros, holds no memory.
    Zero,
    Data(Box<[u8]>),
}

/// A writable in-memory layer over a (read-only) base device.
pub struct Overlay {
    base: Arc<dyn BlockDevice>,
    blocks: RwLock<HashMap<u64, Block>>,
}

impl Overlay {
    /// An empty overlay over `base`.
    pub fn new(base: Arc<dyn BlockDevice>) -> Overlay {
        Overlay {
            base,
            blocks: RwLock::new(HashMap::new()),
        }
    }

    /// Bytes of memory held by written blocks.
    pub fn allocated_bytes(&self) -> u64 {
        let blocks = self.blocks.read().unwrap_or_else(|e| e.into_inner());
        blocks
            .values()
            .filter(|b| matches!(b, Block::Data(_)))
            .count() as u64
            * BLOCK
    }

    /// Reads block `index` of the base into a fresh buffer (zeros past the end).
    fn base_block(&self, index: u64) -> Result<Box<[u8]>> {
        let mut buf = vec![0u8; BLOCK as usize].into_boxed_slice();
        self.base.read_until_end(&mut buf, index * BLOCK)?;
        Ok(buf)
    }

    fn clamp(&self, offset: u64, len: usize) -> usize {
        let size = self.size();
        if offset >= size {
            0
        } else {
            (size - offset).min(len as u64) as usize
        }
    }
}

impl BlockDevice for Overlay {
    fn size(&self) -> u64 {
        self.base.size()
    }

    fn sector_size(&self) -> u32 {
        self.base.sector_size()
    }

    fn read_only(&self) -> bool {
        false
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<usize> {
        let len = self.clamp(offset, buf.len());
        let blocks = self.blocks.read().unwrap_or_else(|e| e.into_inner());
        let mut done = 0usize;
        while done < len {
            let pos = offset + done as u64;
            let index = pos / BLOCK;
            let within = (pos % BLOCK) as usize;
            let n = (BLOCK as usize - within).min(len - done);
            let out = &mut buf[done..done + n];
            match blocks.get(&index) {
                Some(Block::Zero) => out.fill(0),
                Some(Block::Data(d)) => out.copy_from_slice(&d[within..within + n]),
                None => self.base.read_exact_at(out, pos)?,
            }
            done += n;
        }
        Ok(len)
    }

    /// Written blocks are data, discarded ones zeros; the rest is what the base says.
    fn extents(&self, offset: u64, len: u64, max: usize) -> Result<Vec<Extent>> {
        let end = offset.saturating_add(len).min(self.size());
        let blocks = self.blocks.read().unwrap_or_else(|e| e.into_inner());
        let mut list = ExtentList::new(max);
        // A run of blocks not in the overlay, not yet asked of the base: (start, len).
        let mut below: Option<(u64, u64)> = None;
        let mut pos = offset;
        while pos < end {
            let n = ((pos / BLOCK + 1) * BLOCK).min(end) - pos;
            let zero = match blocks.get(&(pos / BLOCK)) {
                None => {
                    let (s, l) = below.unwrap_or((pos, 0));
                    below = Some((s, l + n));
                    pos += n;
                    continue;
                }
                Some(Block::Zero) => true,
                Some(Block::Data(_)) => false,
            };
            if let Some((s, l)) = below.take() {
                if list.push_from(self.base.as_ref(), s, l)? < l {
                    return Ok(list.into_vec());
                }
            }
            if !list.push(n, zero) {
                return Ok(list.into_vec());
            }
            pos += n;
        }
        if let Some((s, l)) = below {
            list.push_from(self.base.as_ref(), s, l)?;
        }
        Ok(list.into_vec())
    }

    fn write_at(&self, buf: &[u8], offset: u64) -> Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        let len = self.clamp(offset, buf.len());
        if len == 0 {
            return Err(Errno::ENOSPC);
        }
        let mut blocks = self.blocks.write().unwrap_or_else(|e| e.into_inner());
        let mut done = 0usize;
        while done < len {
            let pos = offset + done as u64;
            let index = pos / BLOCK;
            let within = (pos % BLOCK) as usize;
            let n = (BLOCK as usize - within).min(len - done);
            let src = &buf[done..done + n];
            let block = match blocks.remove(&index) {
                Some(Block::Data(d)) => d,
                Some(Block::Zero) => vec![0u8; BLOCK as usize].into_boxed_slice(),
                None if n == BLOCK as usize => vec![0u8; BLOCK as usize].into_boxed_slice(),
                None => self.base_block(index)?,
            };
            let mut block = block;
            block[within..within + n].copy_from_slice(src);
            blocks.insert(index, Block::Data(block));
            done += n;
        }
        Ok(len)
    }

    fn flush(&self) -> Result<()> {
        Ok(())
    }

    fn discard(&self, offset: u64, len: u64) -> Result<()> {
        let len = self.clamp(offset, usize::try_from(len).unwrap_or(usize::MAX)) as u64;
        let end = offset + len;
        let mut pos = offset;
        while pos < end {
            let index = pos / BLOCK;
            let block_end = ((index + 1) * BLOCK).min(end);
            if pos % BLOCK == 0 && block_end - pos == BLOCK {
                self.blocks
                    .write()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(index, Block::Zero);
            } else {
                let zeros = [0u8; BLOCK as usize];
                self.write_all_at(&zeros[..(block_end - pos) as usize], pos)?;
            }
            pos = block_end;
        }
        Ok(())
    }

    fn discard_zeroes(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vudev::Ramdisk;

    #[test]
    fn the_map_is_the_overlays_blocks_over_the_bases() {
        let base = Arc::new(Ramdisk::new(1 << 20).unwrap());
        base.write_all_at(&[7u8; 100], 0).unwrap();
        let o = Overlay::new(base);
        o.write_all_at(&[1u8; 10], 512 << 10).unwrap();
        o.discard(8 << 10, 4096).unwrap();
        assert_eq!(
            vudev::data_ranges(&o).unwrap(),
            vec![(0, 8 << 10), (12 << 10, 52 << 10), (512 << 10, 4096)]
        );
    }

    #[test]
    fn writes_stay_in_the_overlay_and_reads_merge() {
        let base = Arc::new(Ramdisk::new(64 * 1024).unwrap());
        base.write_all_at(&[7u8; 64 * 1024], 0).unwrap();
        let o = Overlay::new(base.clone());
        o.write_all_at(&[1u8; 10], 4090).unwrap();
        let mut buf = vec![0u8; 20];
        o.read_exact_at(&mut buf, 4085).unwrap();
        assert_eq!(&buf[..5], &[7; 5]);
        assert_eq!(&buf[5..15], &[1; 10]);
        assert_eq!(&buf[15..], &[7; 5]);
        // The base is untouched.
        base.read_exact_at(&mut buf, 4085).unwrap();
        assert_eq!(buf, vec![7u8; 20]);
        assert_eq!(o.allocated_bytes(), 2 * BLOCK);
        // Discard: whole blocks become zero blocks, edges are zero-written.
        o.discard(100, 3 * BLOCK).unwrap();
        let mut all = vec![0u8; 64 * 1024];
        o.read_exact_at(&mut all, 0).unwrap();
        assert!(all[..100].iter().all(|&b| b == 7));
        assert!(all[100..100 + 3 * BLOCK as usize].iter().all(|&b| b == 0));
        assert!(all[100 + 3 * BLOCK as usize..].iter().all(|&b| b == 7));
        // End-of-device rules.
        assert_eq!(o.write_at(&[1], 64 * 1024), Err(Errno::ENOSPC));
        assert_eq!(o.write_at(&[1, 2], 64 * 1024 - 1), Ok(1));
        assert_eq!(o.read_at(&mut buf, 64 * 1024), Ok(0));
    }
}
