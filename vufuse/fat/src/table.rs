//! The file allocation table, cached in pages with a memory cap.
//!
//! Pages of the first FAT copy are loaded on demand and written back to every
//! copy on `flush` (or when evicted). The free count is computed once at mount
//! and kept exact, so statfs and FSInfo are right without rescanning.

use super::bpb::{FatType, Geometry};
use std::collections::HashMap;
use std::sync::Arc;
use vudev::{BlockDevice, Errno, Result};

/// Bytes per cached page of the FAT.
const PAGE: u64 = 64 * 1024;
/// At most this many bytes of FAT stay in memory.
const CACHE_CAP: u64 = 16 << 20;

/// What a FAT entry says about a cluster.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Link {
    /// Unused.
    Free,
    /// The chain goes on at this cluster.
    Next(u32),
    /// Last cluster of its chain.
    End,
    /// Marked bad, or a value outside the volume: the chain is corrupt here.
    Bad(u32),
}

struct Page {
    data: Box<[u8]>,
    /// One bit per 512-byte piece changed since the last write-back, so a
    /// commit after each operation writes a few sectors, not whole pages.
    dirty: u128,
    last_use: u64,
}

/// Granularity of dirty tracking (a page holds 128 of them).
const PIECE: usize = 512;

/// The cached FAT of one volume.
pub struct Fat {
    dev: Arc<dyn BlockDevice>,
    geo: Geometry,
    pages: HashMap<u64, Page>,
    clock: u64,
    free: u32,
    next_free: u32,
}

impl Fat {
    /// Loads nothing yet but the free count (one streaming pass over the FAT).
    pub fn open(dev: Arc<dyn BlockDevice>, geo: Geometry) -> Result<Fat> {
        let mut fat = Fat {
            dev,
            geo,
            pages: HashMap::new(),
            clock: 0,
            free: 0,
            next_free: 2,
        };
        let mut free = 0;
        let mut first_free = None;
        for cluster in 2..=fat.geo.cluster_count + 1 {
            if fat.raw(cluster)? == 0 {
                free += 1;
                first_free.get_or_insert(cluster);
            }
            // Keep the scan itself under the cache cap.
            if fat.pages.len() as u64 * PAGE > CACHE_CAP {
                fat.evict()?;
            }
        }
        fat.free = free;
        fat.next_free = first_free.unwrap_or(2);
        Ok(fat)
    }

    /// Free clusters.
    pub fn free_clusters(&self) -> u32 {
        self.free
    }

    /// The hint for the next allocation (kept in FSInfo on FAT32).
    pub fn next_free_hint(&self) -> u32 {
        self.next_free
    }

    fn entry_offset(&self, cluster: u32) -> u64 {
        let c = cluster as u64;
        match self.geo.fat_type {
            FatType::Fat12 => c + c / 2,
            FatType::Fat16 => c * 2,
            FatType::Fat32 => c * 4,
        }
    }

    fn page(&mut self, number: u64) -> Result<&mut Page> {
        self.clock += 1;
        let clock = self.clock;
        if !self.pages.contains_key(&number) {
            if self.pages.len() as u64 * PAGE >= CACHE_CAP {
                self.evict()?;
            }
            let start = number * PAGE;
            let len = PAGE.min(self.geo.fat_bytes - start) as usize;
            let mut data = vec![0u8; len].into_boxed_slice();
            self.dev
                .read_exact_at(&mut data, self.geo.fat_offset + start)?;
            self.pages.insert(
                number,
                Page {
                    data,
                    dirty: 0,
                    last_use: clock,
                },
            );
        }
        let page = self.pages.get_mut(&number).expect("just inserted");
        page.last_use = clock;
        Ok(page)
    }

    /// Writes back and drops the least recently used half of the cache.
    fn evict(&mut self) -> Result<()> {
        let mut by_age: Vec<(u64, u64)> =
            self.pages.iter().map(|(&n, p)| (p.last_use, n)).collect();
        by_age.sort_unstable();
        for &(_, number) in by_age.iter().take(by_age.len() / 2 + 1) {
            self.write_page(number)?;
            self.pages.remove(&number);
        }
        Ok(())
    }

    fn write_page(&mut self, number: u64) -> Result<()> {
        let Some(page) = self.pages.get_mut(&number) else {
            return Ok(());
        };
        let mut piece = 0;
        while piece < 128 && page.dirty >> piece != 0 {
            if page.dirty & (1 << piece) == 0 {
                piece += 1;
                continue;
            }
            // A run of consecutive dirty pieces becomes one write per copy.
            let first = piece;
            while piece < 128 && page.dirty & (1 << piece) != 0 {
                piece += 1;
            }
            let start = first * PIECE;
            let end = (piece * PIECE).min(page.data.len());
            for copy in 0..self.geo.fat_count as u64 {
                let offset =
                    self.geo.fat_offset + copy * self.geo.fat_bytes + number * PAGE + start as u64;
                self.dev.write_all_at(&page.data[start..end], offset)?;
            }
        }
        page.dirty = 0;
        Ok(())
    }

    /// Writes every dirty page to every FAT copy.
    pub fn flush(&mut self) -> Result<()> {
        let dirty: Vec<u64> = self
            .pages
            .iter()
            .filter(|(_, p)| p.dirty != 0)
            .map(|(&n, _)| n)
            .collect();
        for number in dirty {
            self.write_page(number)?;
        }
        Ok(())
    }

    /// The raw entry value of `cluster` (also clusters 0 and 1).
    pub fn raw(&mut self, cluster: u32) -> Result<u32> {
        let offset = self.entry_offset(cluster);
        let fat_type = self.geo.fat_type;
        let page = self.page(offset / PAGE)?;
        let at = (offset % PAGE) as usize;
        Ok(match fat_type {
            FatType::Fat12 => {
                let pair = u16::from_le_bytes([page.data[at], page.data[at + 1]]) as u32;
                if cluster & 1 == 1 {
                    pair >> 4
                } else {
                    pair & 0xFFF
                }
            }
            FatType::Fat16 => u16::from_le_bytes([page.data[at], page.data[at + 1]]) as u32,
            FatType::Fat32 => {
                u32::from_le_bytes(page.data[at..at + 4].try_into().expect("4 bytes")) & 0x0FFF_FFFF
            }
        })
    }

    fn set_raw(&mut self, cluster: u32, value: u32) -> Result<()> {
        let offset = self.entry_offset(cluster);
        let fat_type = self.geo.fat_type;
        let page = self.page(offset / PAGE)?;
        let at = (offset % PAGE) as usize;
        match fat_type {
            FatType::Fat12 => {
                let pair = u16::from_le_bytes([page.data[at], page.data[at + 1]]);
                let v = (value & 0xFFF) as u16;
                let new = if cluster & 1 == 1 {
                    (pair & 0x000F) | (v << 4)
                } else {
                    (pair & 0xF000) | v
                };
                page.data[at..at + 2].copy_from_slice(&new.to_le_bytes());
            }
            FatType::Fat16 => page.data[at..at + 2].copy_from_slice(&(value as u16).to_le_bytes()),
            FatType::Fat32 => {
                let old = u32::from_le_bytes(page.data[at..at + 4].try_into().expect("4 bytes"));
                let new = (old & 0xF000_0000) | (value & 0x0FFF_FFFF);
                page.data[at..at + 4].copy_from_slice(&new.to_le_bytes());
            }
        }
        // A FAT12 entry may straddle two pieces.
        let width = if fat_type == FatType::Fat32 { 4 } else { 2 };
        page.dirty |= 1 << (at / PIECE);
        page.dirty |= 1 << ((at + width - 1) / PIECE);
        Ok(())
    }

    /// What follows `cluster` in its chain.
    pub fn link(&mut self, cluster: u32) -> Result<Link> {
        if !self.geo.is_valid_cluster(cluster) {
            return Ok(Link::Bad(cluster));
        }
        let value = self.raw(cluster)?;
        let end_min = match self.geo.fat_type {
            FatType::Fat12 => 0xFF8,
            FatType::Fat16 => 0xFFF8,
            FatType::Fat32 => 0x0FFF_FFF8,
        };
        Ok(if value == 0 {
            Link::Free
        } else if value >= end_min {
            Link::End
        } else if self.geo.is_valid_cluster(value) {
            Link::Next(value)
        } else {
            Link::Bad(value)
        })
    }

    /// The clusters of the chain starting at `first`, as runs `(start, len)`.
    /// A loop, a free or bad entry inside the chain, or a chain longer than the
    /// volume is corruption: `EIO`.
    pub fn chain_runs(&mut self, first: u32) -> Result<Vec<(u32, u32)>> {
        let mut runs: Vec<(u32, u32)> = Vec::new();
        if first == 0 {
            return Ok(runs);
        }
        if !self.geo.is_valid_cluster(first) {
            return Err(Errno::EIO);
        }
        let mut cluster = first;
        let mut length: u64 = 0;
        loop {
            length += 1;
            if length > self.geo.cluster_count as u64 {
                return Err(Errno::EIO);
            }
            match runs.last_mut() {
                Some((start, len)) if *start + *len == cluster => *len += 1,
                _ => runs.push((cluster, 1)),
            }
            match self.link(cluster)? {
                Link::End => return Ok(runs),
                Link::Next(next) => cluster = next,
                Link::Free | Link::Bad(_) => return Err(Errno::EIO),
            }
        }
    }

    /// Allocates `count` clusters, preferring ones right after `near`,
    /// chained together and ended. Returns them in chain order. `ENOSPC`
    /// (with nothing allocated) if the volume has fewer free clusters.
    pub fn allocate(&mut self, count: u32, near: Option<u32>) -> Result<Vec<u32>> {
        if count == 0 {
            return Ok(Vec::new());
        }
        if count > self.free {
            return Err(Errno::ENOSPC);
        }
        let first_valid = 2;
        let last_valid = self.geo.cluster_count + 1;
        let mut cursor = near
            .filter(|&c| self.geo.is_valid_cluster(c))
            .unwrap_or(self.next_free);
        let mut got = Vec::with_capacity(count as usize);
        let mut scanned: u64 = 0;
        while (got.len() as u32) < count {
            if scanned > self.geo.cluster_count as u64 {
                // The free count said there was room: the FAT disagrees.
                return Err(Errno::EIO);
            }
            if cursor > last_valid {
                cursor = first_valid;
            }
            if self.raw(cursor)? == 0 {
                got.push(cursor);
            }
            cursor += 1;
            scanned += 1;
        }
        let eoc = self.geo.end_of_chain();
        for pair in got.windows(2) {
            self.set_raw(pair[0], pair[1])?;
        }
        self.set_raw(*got.last().expect("count > 0"), eoc)?;
        self.free -= count;
        self.next_free = if cursor > last_valid {
            first_valid
        } else {
            cursor
        };
        Ok(got)
    }

    /// Points `cluster` at `next` (linking a chain to newly allocated clusters).
    pub fn set_next(&mut self, cluster: u32, next: u32) -> Result<()> {
        self.set_raw(cluster, next)
    }

    /// Ends the chain at `cluster`.
    pub fn set_end(&mut self, cluster: u32) -> Result<()> {
        let eoc = self.geo.end_of_chain();
        self.set_raw(cluster, eoc)
    }

    /// Frees the clusters of `runs`.
    pub fn free_runs(&mut self, runs: &[(u32, u32)]) -> Result<()> {
        for &(start, len) in runs {
            for cluster in start..start + len {
                if self.raw(cluster)? != 0 {
                    self.set_raw(cluster, 0)?;
                    self.free += 1;
                }
            }
            self.next_free = self.next_free.min(start);
        }
        Ok(())
    }
}
