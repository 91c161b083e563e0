//! The allocation bitmap: one bit per heap cluster (bit 0 of byte 0 is cluster 2), set when
//! the cluster is in use. It is the authority on free space; the FAT only links fragments.
//!
//! Cached in 64 KiB pages (half a million clusters each), at most [`CACHE_CAP`] bytes: a
//! volume of up to 64 Mi clusters (256 GiB at 4 KiB clusters, 2 TiB at 32 KiB) is held
//! whole after the first scan; larger ones page, least recently used first. The free count
//! is computed at mount in one streaming pass and then kept exact. Dirty pages are written
//! back (whole 512-byte pieces) after every operation.

use crate::extents::Extents;
use std::collections::HashMap;
use std::sync::Arc;
use vudev::{BlockDevice, Errno, Result};

/// Bytes per cached page.
const PAGE: u64 = 64 * 1024;
/// At most this many bytes of bitmap stay in memory.
pub const CACHE_CAP: u64 = 8 << 20;
const PIECE: usize = 512;

struct Page {
    data: Box<[u8]>,
    dirty: u128,
    last_use: u64,
}

/// Where the bitmap lives and what it holds.
pub struct Bitmap {
    dev: Arc<dyn BlockDevice>,
    /// Device offsets of the bitmap's bytes: (first byte, device offset, length).
    spans: Vec<(u64, u64, u64)>,
    cluster_count: u32,
    pages: HashMap<u64, Page>,
    clock: u64,
    free: u32,
    /// Where the next search for free clusters starts.
    hint: u32,
}

impl Bitmap {
    /// Opens the bitmap stored in `extents` (clusters at `offset_of(cluster)`, `cluster_size`
    /// bytes each) and counts the free clusters.
    pub fn open(
        dev: Arc<dyn BlockDevice>,
        extents: &Extents,
        cluster_size: u64,
        offset_of: impl Fn(u32) -> u64,
        cluster_count: u32,
    ) -> Result<Bitmap> {
        let mut spans = Vec::new();
        let mut byte = 0u64;
        let needed = (cluster_count as u64).div_ceil(8);
        for (disk, len) in extents.runs() {
            let bytes = (len as u64 * cluster_size).min(needed.saturating_sub(byte));
            if bytes > 0 {
                spans.push((byte, offset_of(disk), bytes));
            }
            byte += bytes;
        }
        if byte < needed {
            return Err(Errno::EIO);
        }
        let mut bitmap = Bitmap {
            dev,
            spans,
            cluster_count,
            pages: HashMap::new(),
            clock: 0,
            free: 0,
            hint: 2,
        };
        let pages = needed.div_ceil(PAGE);
        let mut used = 0u64;
        for number in 0..pages {
            let page = bitmap.page(number)?;
            used += page.data.iter().map(|b| b.count_ones() as u64).sum::<u64>();
        }
        // Bits past the last cluster do not count.
        let tail_bits = needed * 8 - cluster_count as u64;
        if tail_bits > 0 {
            let last = bitmap.page((needed - 1) / PAGE)?;
            let byte = last.data[((needed - 1) % PAGE) as usize];
            used -= (byte >> (8 - tail_bits)).count_ones() as u64;
        }
        bitmap.free = (cluster_count as u64).saturating_sub(used) as u32;
        Ok(bitmap)
    }

    /// Free clusters.
    pub fn free(&self) -> u32 {
        self.free
    }

    fn page_len(&self, number: u64) -> usize {
        let needed = (self.cluster_count as u64).div_ceil(8);
        PAGE.min(needed - number * PAGE) as usize
    }

    fn io(&self, start: u64, buf: &mut [u8], write: Option<&[u8]>) -> Result<()> {
        let len = write.map_or(buf.len(), <[u8]>::len) as u64;
        for &(first, offset, span) in &self.spans {
            let lo = start.max(first);
            let hi = (start + len).min(first + span);
            if lo >= hi {
                continue;
            }
            let at = offset + (lo - first);
            let range = (lo - start) as usize..(hi - start) as usize;
            match write {
                Some(data) => self.dev.write_all_at(&data[range], at)?,
                None => self.dev.read_exact_at(&mut buf[range], at)?,
            }
        }
        Ok(())
    }

    fn page(&mut self, number: u64) -> Result<&mut Page> {
        self.clock += 1;
        let clock = self.clock;
        if !self.pages.contains_key(&number) {
            if self.pages.len() as u64 * PAGE >= CACHE_CAP {
                self.evict()?;
            }
            let mut data = vec![0u8; self.page_len(number)].into_boxed_slice();
            self.io(number * PAGE, &mut data, None)?;
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
        let Some(page) = self.pages.get(&number) else {
            return Ok(());
        };
        let dirty = page.dirty;
        let data = page.data.clone();
        let mut piece = 0;
        while piece < 128 && dirty >> piece != 0 {
            if dirty & (1 << piece) == 0 {
                piece += 1;
                continue;
            }
            let first = piece;
            while piece < 128 && dirty & (1 << piece) != 0 {
                piece += 1;
            }
            let start = first * PIECE;
            let end = (piece * PIECE).min(data.len());
            self.io(
                number * PAGE + start as u64,
                &mut [],
                Some(&data[start..end]),
            )?;
        }
        if let Some(page) = self.pages.get_mut(&number) {
            page.dirty = 0;
        }
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

    fn valid(&self, cluster: u32) -> bool {
        cluster >= 2 && (cluster as u64) < self.cluster_count as u64 + 2
    }

    /// True if `cluster` is marked in use.
    pub fn is_used(&mut self, cluster: u32) -> Result<bool> {
        if !self.valid(cluster) {
            return Err(Errno::EIO);
        }
        let bit = (cluster - 2) as u64;
        let page = self.page(bit / 8 / PAGE)?;
        Ok(page.data[((bit / 8) % PAGE) as usize] & (1 << (bit % 8)) != 0)
    }

    fn set(&mut self, cluster: u32, used: bool) -> Result<bool> {
        if !self.valid(cluster) {
            return Err(Errno::EIO);
        }
        let bit = (cluster - 2) as u64;
        let page = self.page(bit / 8 / PAGE)?;
        let at = ((bit / 8) % PAGE) as usize;
        let mask = 1u8 << (bit % 8);
        let was = page.data[at] & mask != 0;
        if was != used {
            page.data[at] ^= mask;
            page.dirty |= 1 << (at / PIECE);
        }
        Ok(was)
    }

    /// True if every cluster of the run is marked in use (a file's clusters must be).
    pub fn all_used(&mut self, first: u32, len: u32) -> Result<bool> {
        for c in first..first + len {
            if !self.is_used(c)? {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// True if every cluster of the run exists and is free.
    pub fn all_free(&mut self, first: u32, len: u32) -> Result<bool> {
        if len == 0 {
            return Ok(true);
        }
        if !self.valid(first) || first as u64 + len as u64 > self.cluster_count as u64 + 2 {
            return Ok(false);
        }
        for c in first..first + len {
            if self.is_used(c)? {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// Marks a run in use (the caller checked it was free).
    pub fn mark_used(&mut self, first: u32, len: u32) -> Result<()> {
        for c in first..first + len {
            if !self.set(c, true)? {
                self.free -= 1;
            }
        }
        self.hint = first + len;
        Ok(())
    }

    /// Marks a run free.
    pub fn mark_free(&mut self, first: u32, len: u32) -> Result<()> {
        for c in first..first + len {
            if self.valid(c) && self.set(c, false)? {
                self.free += 1;
            }
        }
        Ok(())
    }

    /// The first run of `len` free clusters, searching from the hint and wrapping.
    pub fn find_run(&mut self, len: u32) -> Result<Option<u32>> {
        if len == 0 || len > self.free {
            return Ok(None);
        }
        let end = self.cluster_count as u64 + 2;
        let start = if self.valid(self.hint) { self.hint } else { 2 };
        for (from, to) in [(start as u64, end), (2, start as u64 + len as u64 - 1)] {
            let mut c = from;
            let mut run_start = c;
            let mut run = 0u64;
            while c < to.min(end) {
                let bit = c - 2;
                // Whole used bytes are skipped at once.
                if bit % 8 == 0 && c + 8 <= end {
                    let page = self.page(bit / 8 / PAGE)?;
                    if page.data[((bit / 8) % PAGE) as usize] == 0xFF {
                        run = 0;
                        c += 8;
                        continue;
                    }
                }
                if self.is_used(c as u32)? {
                    run = 0;
                } else {
                    if run == 0 {
                        run_start = c;
                    }
                    run += 1;
                    if run == len as u64 {
                        return Ok(Some(run_start as u32));
                    }
                }
                c += 1;
            }
        }
        Ok(None)
    }

    /// Allocates `len` clusters, as few runs as first-fit gives (`ENOSPC`, nothing changed,
    /// if fewer are free). Returns the runs in order.
    pub fn allocate(&mut self, len: u32) -> Result<Vec<(u32, u32)>> {
        if len > self.free {
            return Err(Errno::ENOSPC);
        }
        if let Some(start) = self.find_run(len)? {
            self.mark_used(start, len)?;
            return Ok(vec![(start, len)]);
        }
        let mut runs: Vec<(u32, u32)> = Vec::new();
        let mut got = 0;
        let mut c = 2u64;
        let end = self.cluster_count as u64 + 2;
        while got < len && c < end {
            if !self.is_used(c as u32)? {
                match runs.last_mut() {
                    Some((s, l)) if *s as u64 + *l as u64 == c => *l += 1,
                    _ => runs.push((c as u32, 1)),
                }
                got += 1;
            }
            c += 1;
        }
        if got < len {
            // The free count said there was room: the bitmap disagrees.
            return Err(Errno::EIO);
        }
        for &(s, l) in &runs {
            self.mark_used(s, l)?;
        }
        Ok(runs)
    }
}
