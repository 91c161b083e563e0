//! The File Allocation Table: one 32-bit entry per cluster, naming the next cluster of a
//! chain (0xFFFFFFFF ends it, 0xFFFFFFF7 marks a bad cluster). exFAT uses it only for
//! fragmented files: a NoFatChain file's entries mean nothing, and whether a cluster is free
//! is the allocation bitmap's business, not the FAT's.
//!
//! Cached in 64 KiB pages, at most [`CACHE_CAP`] bytes, written back per 512-byte piece on
//! `flush` (after every operation) or on eviction.

use crate::boot::Geometry;
use std::collections::HashMap;
use std::sync::Arc;
use vudev::{BlockDevice, Errno, Result};

/// Bytes per cached page.
const PAGE: u64 = 64 * 1024;
/// At most this many bytes of FAT stay in memory.
pub const CACHE_CAP: u64 = 8 << 20;
const PIECE: usize = 512;
/// End of a chain.
pub const END: u32 = 0xFFFF_FFFF;
/// A bad cluster.
pub const BAD: u32 = 0xFFFF_FFF7;

struct Page {
    data: Box<[u8]>,
    dirty: u128,
    last_use: u64,
}

/// The cached FAT of one volume.
pub struct Fat {
    dev: Arc<dyn BlockDevice>,
    offset: u64,
    bytes: u64,
    cluster_count: u32,
    pages: HashMap<u64, Page>,
    clock: u64,
}

impl Fat {
    /// The FAT described by `geo`; nothing is read yet.
    pub fn new(dev: Arc<dyn BlockDevice>, geo: &Geometry) -> Fat {
        Fat {
            dev,
            offset: geo.fat_offset,
            bytes: geo.fat_bytes,
            cluster_count: geo.cluster_count,
            pages: HashMap::new(),
            clock: 0,
        }
    }

    fn valid(&self, cluster: u32) -> bool {
        cluster >= 2 && (cluster as u64) < self.cluster_count as u64 + 2
    }

    fn page(&mut self, number: u64) -> Result<&mut Page> {
        self.clock += 1;
        let clock = self.clock;
        if !self.pages.contains_key(&number) {
            if self.pages.len() as u64 * PAGE >= CACHE_CAP {
                self.evict()?;
            }
            let start = number * PAGE;
            let len = PAGE.min(self.bytes - start) as usize;
            let mut data = vec![0u8; len].into_boxed_slice();
            self.dev.read_exact_at(&mut data, self.offset + start)?;
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
            let first = piece;
            while piece < 128 && page.dirty & (1 << piece) != 0 {
                piece += 1;
            }
            let start = first * PIECE;
            let end = (piece * PIECE).min(page.data.len());
            self.dev.write_all_at(
                &page.data[start..end],
                self.offset + number * PAGE + start as u64,
            )?;
        }
        page.dirty = 0;
        Ok(())
    }

    /// Writes every changed piece back.
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

    /// The entry of `cluster`.
    pub fn get(&mut self, cluster: u32) -> Result<u32> {
        let offset = cluster as u64 * 4;
        let page = self.page(offset / PAGE)?;
        let at = (offset % PAGE) as usize;
        Ok(u32::from_le_bytes(
            page.data[at..at + 4].try_into().expect("4 bytes"),
        ))
    }

    /// Sets the entry of `cluster`.
    pub fn set(&mut self, cluster: u32, value: u32) -> Result<()> {
        if !self.valid(cluster) {
            return Err(Errno::EIO);
        }
        let offset = cluster as u64 * 4;
        let page = self.page(offset / PAGE)?;
        let at = (offset % PAGE) as usize;
        page.data[at..at + 4].copy_from_slice(&value.to_le_bytes());
        page.dirty |= 1 << (at / PIECE);
        Ok(())
    }

    /// Links the runs into one chain, in order, ending it after the last.
    pub fn write_chain(&mut self, runs: &[(u32, u32)]) -> Result<()> {
        let clusters = runs.iter().flat_map(|&(s, l)| s..s + l);
        let mut prev: Option<u32> = None;
        for c in clusters {
            if let Some(p) = prev {
                self.set(p, c)?;
            }
            prev = Some(c);
        }
        match prev {
            Some(p) => self.set(p, END),
            None => Ok(()),
        }
    }

    /// The first `want` clusters of the chain from `first` as runs (`None`: the whole
    /// chain). A loop, an entry outside the heap, a bad cluster or a chain that ends early
    /// is corruption: `EIO`. Walks at most the cluster count, so it always ends.
    pub fn chain_runs(&mut self, first: u32, want: Option<u64>) -> Result<Vec<(u32, u32)>> {
        let mut runs: Vec<(u32, u32)> = Vec::new();
        if want == Some(0) {
            return Ok(runs);
        }
        if !self.valid(first) {
            return Err(Errno::EIO);
        }
        let mut cluster = first;
        let mut length: u64 = 0;
        loop {
            length += 1;
            if length > self.cluster_count as u64 {
                return Err(Errno::EIO);
            }
            match runs.last_mut() {
                Some((start, len)) if *start + *len == cluster => *len += 1,
                _ => runs.push((cluster, 1)),
            }
            if want == Some(length) {
                return no_overlap(runs);
            }
            match self.get(cluster)? {
                END if want.is_none() => return no_overlap(runs),
                next if self.valid(next) => cluster = next,
                _ => return Err(Errno::EIO),
            }
        }
    }
}

/// The runs of a chain, unless two of them share a cluster (a loop that came back).
fn no_overlap(runs: Vec<(u32, u32)>) -> Result<Vec<(u32, u32)>> {
    let mut sorted = runs.clone();
    sorted.sort_unstable();
    if sorted
        .windows(2)
        .any(|w| w[0].0 as u64 + w[0].1 as u64 > w[1].0 as u64)
    {
        return Err(Errno::EIO);
    }
    Ok(runs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overlapping_runs_are_a_loop() {
        assert!(no_overlap(vec![(5, 2), (9, 1), (6, 1)]).is_err());
        assert_eq!(no_overlap(vec![(9, 1), (5, 2)]), Ok(vec![(9, 1), (5, 2)]));
    }
}
