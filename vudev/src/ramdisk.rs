//! A sparse in-memory disk: memory is taken only for chunks that hold data.

use crate::device::{clamp_len, writable_len, BlockDevice};
use crate::errno::{Errno, Result};
use crate::extent::{Extent, ExtentList};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::RwLock;

/// Bytes per allocation unit. 64 KiB keeps the index small (a 64 GiB disk
/// fully written has 1 Mi entries) while a scattered 4 KiB write costs little.
pub const CHUNK_SIZE: usize = 64 * 1024;
const SHARDS: usize = 16;

type Chunk = Box<[u8]>;

/// A RAM-backed [`BlockDevice`] whose memory use follows what was written,
/// not its size. Never-written ranges read as zeros; `discard` frees memory;
/// writing zeros over an unallocated chunk allocates nothing.
pub struct Ramdisk {
    size: u64,
    read_only: bool,
    shards: Vec<RwLock<HashMap<u64, Chunk>>>,
    allocated_chunks: AtomicU64,
}

impl std::fmt::Debug for Ramdisk {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ramdisk")
            .field("size", &self.size)
            .field("allocated_bytes", &self.allocated_bytes())
            .finish()
    }
}

impl Ramdisk {
    /// A zero-filled ramdisk of `size` bytes (rounded up to whole 512-byte sectors).
    pub fn new(size: u64) -> Result<Ramdisk> {
        let size = size.checked_next_multiple_of(512).ok_or(Errno::EINVAL)?;
        if size == 0 {
            return Err(Errno::EINVAL);
        }
        Ok(Ramdisk {
            size,
            read_only: false,
            shards: (0..SHARDS).map(|_| RwLock::new(HashMap::new())).collect(),
            allocated_chunks: AtomicU64::new(0),
        })
    }

    /// Makes the device refuse further writes.
    pub fn set_read_only(&mut self, read_only: bool) {
        self.read_only = read_only;
    }

    /// Memory held for data, in bytes (whole chunks).
    pub fn allocated_bytes(&self) -> u64 {
        self.allocated_chunks.load(Ordering::Relaxed) * CHUNK_SIZE as u64
    }

    fn shard(&self, chunk: u64) -> &RwLock<HashMap<u64, Chunk>> {
        &self.shards[(chunk % SHARDS as u64) as usize]
    }

    /// Calls `f(chunk_index, offset_in_chunk, range_in_request)` for each chunk a request touches.
    fn for_each_chunk(
        offset: u64,
        len: usize,
        mut f: impl FnMut(u64, usize, std::ops::Range<usize>),
    ) {
        let mut done = 0usize;
        while done < len {
            let pos = offset + done as u64;
            let chunk = pos / CHUNK_SIZE as u64;
            let within = (pos % CHUNK_SIZE as u64) as usize;
            let n = (CHUNK_SIZE - within).min(len - done);
            f(chunk, within, done..done + n);
            done += n;
        }
    }
}

fn lock_poisoned<T>(_: T) -> Errno {
    Errno::EIO
}

impl BlockDevice for Ramdisk {
    fn size(&self) -> u64 {
        self.size
    }

    fn read_only(&self) -> bool {
        self.read_only
    }

    fn discard_zeroes(&self) -> bool {
        true
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<usize> {
        let len = clamp_len(self.size, offset, buf.len());
        let mut result = Ok(len);
        Self::for_each_chunk(offset, len, |chunk, within, range| {
            let dst = &mut buf[range];
            match self.shard(chunk).read() {
                Ok(map) => match map.get(&chunk) {
                    Some(data) => dst.copy_from_slice(&data[within..within + dst.len()]),
                    None => dst.fill(0),
                },
                Err(e) => result = Err(lock_poisoned(e)),
            }
        });
        result
    }

    fn write_at(&self, buf: &[u8], offset: u64) -> Result<usize> {
        let len = writable_len(self.read_only, self.size, offset, buf.len())?;
        let mut result = Ok(len);
        Self::for_each_chunk(offset, len, |chunk, within, range| {
            let src = &buf[range];
            let mut map = match self.shard(chunk).write() {
                Ok(map) => map,
                Err(e) => {
                    result = Err(lock_poisoned(e));
                    return;
                }
            };
            if let Some(data) = map.get_mut(&chunk) {
                data[within..within + src.len()].copy_from_slice(src);
            } else if src.iter().any(|&b| b != 0) {
                let mut data = vec![0u8; CHUNK_SIZE].into_boxed_slice();
                data[within..within + src.len()].copy_from_slice(src);
                map.insert(chunk, data);
                self.allocated_chunks.fetch_add(1, Ordering::Relaxed);
            }
        });
        result
    }

    fn flush(&self) -> Result<()> {
        Ok(())
    }

    /// Chunks never written (or discarded whole) are holes; at most `SCAN_CHUNKS` chunks
    /// are looked at per call, so one call stays short on a huge disk.
    fn extents(&self, offset: u64, len: u64, max: usize) -> Result<Vec<Extent>> {
        const SCAN_CHUNKS: u64 = 1 << 16;
        let end = offset.saturating_add(len).min(self.size);
        let mut list = ExtentList::new(max);
        let mut pos = offset;
        let mut scanned = 0;
        while pos < end && scanned < SCAN_CHUNKS {
            let chunk = pos / CHUNK_SIZE as u64;
            let next = ((chunk + 1) * CHUNK_SIZE as u64).min(end);
            let held = self
                .shard(chunk)
                .read()
                .map_err(lock_poisoned)?
                .contains_key(&chunk);
            if !list.push(next - pos, !held) {
                break;
            }
            pos = next;
            scanned += 1;
        }
        Ok(list.into_vec())
    }

    fn discard(&self, offset: u64, len: u64) -> Result<()> {
        if self.read_only {
            return Err(Errno::EROFS);
        }
        let len = clamp_len(
            self.size,
            offset,
            usize::try_from(len).unwrap_or(usize::MAX),
        );
        let mut result = Ok(());
        Self::for_each_chunk(offset, len, |chunk, within, range| {
            let mut map = match self.shard(chunk).write() {
                Ok(map) => map,
                Err(e) => {
                    result = Err(lock_poisoned(e));
                    return;
                }
            };
            if range.len() == CHUNK_SIZE {
                if map.remove(&chunk).is_some() {
                    self.allocated_chunks.fetch_sub(1, Ordering::Relaxed);
                }
            } else if let Some(data) = map.get_mut(&chunk) {
                data[within..within + range.len()].fill(0);
            }
        });
        result
    }
}

/// Parses a device size as VUOS's `size=` option does: a number with an
/// optional `K`, `M`, `G` or `T` suffix (either case, binary units); a bare
/// number counts 512-byte sectors, as the C `vudevramdisk` does.
pub fn parse_size(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let digits_end = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (digits, suffix) = text.split_at(digits_end);
    if digits.is_empty() {
        return Err(format!("size {text:?} must start with a number"));
    }
    let number: u64 = digits
        .parse()
        .map_err(|_| format!("size {text:?} is too large"))?;
    let unit: u64 = match suffix {
        "" => 512,
        "k" | "K" => 1 << 10,
        "m" | "M" => 1 << 20,
        "g" | "G" => 1 << 30,
        "t" | "T" => 1 << 40,
        other => {
            return Err(format!(
                "size {text:?} has an unknown suffix {other:?} (use K, M, G or T)"
            ))
        }
    };
    let bytes = number
        .checked_mul(unit)
        .ok_or_else(|| format!("size {text:?} is too large"))?;
    if bytes == 0 {
        return Err(format!("size {text:?} is zero"));
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_written_chunks_are_data() {
        let disk = Ramdisk::new(1 << 20).unwrap();
        disk.write_all_at(&[7u8; 10], CHUNK_SIZE as u64 * 3 + 5)
            .unwrap();
        disk.write_all_at(&[0u8; 10], 0).unwrap();
        let c = CHUNK_SIZE as u64;
        assert_eq!(crate::data_ranges(&disk).unwrap(), vec![(3 * c, c)]);
        disk.discard(3 * c, c).unwrap();
        assert!(crate::data_ranges(&disk).unwrap().is_empty());
    }

    #[test]
    fn sizes_parse_like_vuos() {
        assert_eq!(parse_size("64M"), Ok(64 << 20));
        assert_eq!(parse_size("1g"), Ok(1 << 30));
        assert_eq!(parse_size("10k"), Ok(10240));
        assert_eq!(parse_size("1000"), Ok(512_000));
        assert!(parse_size("").is_err());
        assert!(parse_size("M").is_err());
        assert!(parse_size("12Q").is_err());
        assert!(parse_size("0M").is_err());
        assert!(parse_size("99999999999999999999").is_err());
        assert!(parse_size("99999999999T").is_err());
    }

    #[test]
    fn sparse_reads_writes_and_discard() {
        let disk = Ramdisk::new(1 << 30).unwrap();
        let mut buf = vec![0xFFu8; 3 * CHUNK_SIZE];
        disk.read_exact_at(&mut buf, 12345).unwrap();
        assert!(buf.iter().all(|&b| b == 0));
        assert_eq!(disk.allocated_bytes(), 0);

        // A write spanning three chunks allocates exactly those.
        let data: Vec<u8> = (0..2 * CHUNK_SIZE + 10)
            .map(|i| (i % 251) as u8 + 1)
            .collect();
        disk.write_all_at(&data, CHUNK_SIZE as u64 - 5).unwrap();
        assert_eq!(disk.allocated_bytes(), 4 * CHUNK_SIZE as u64);
        let mut back = vec![0u8; data.len()];
        disk.read_exact_at(&mut back, CHUNK_SIZE as u64 - 5)
            .unwrap();
        assert_eq!(back, data);

        // Zeros over holes allocate nothing.
        disk.write_all_at(&vec![0u8; 4 * CHUNK_SIZE], 100 * CHUNK_SIZE as u64)
            .unwrap();
        assert_eq!(disk.allocated_bytes(), 4 * CHUNK_SIZE as u64);

        disk.discard(0, 8 * CHUNK_SIZE as u64).unwrap();
        assert_eq!(disk.allocated_bytes(), 0);
        disk.read_exact_at(&mut back, CHUNK_SIZE as u64 - 5)
            .unwrap();
        assert!(back.iter().all(|&b| b == 0));
    }

    #[test]
    fn partial_discard_zeroes_without_freeing() {
        let disk = Ramdisk::new(1 << 20).unwrap();
        disk.write_all_at(&[7u8; 100], 0).unwrap();
        disk.discard(10, 20).unwrap();
        let mut buf = [0u8; 100];
        disk.read_exact_at(&mut buf, 0).unwrap();
        assert!(buf[..10].iter().all(|&b| b == 7));
        assert!(buf[10..30].iter().all(|&b| b == 0));
        assert!(buf[30..].iter().all(|&b| b == 7));
        assert_eq!(disk.allocated_bytes(), CHUNK_SIZE as u64);
    }

    #[test]
    fn end_of_device_rules() {
        let disk = Ramdisk::new(1000).unwrap();
        assert_eq!(disk.size(), 1024);
        assert_eq!(disk.write_at(&[1; 10], 1020).unwrap(), 4);
        assert_eq!(disk.write_at(&[1; 10], 1024), Err(Errno::ENOSPC));
        assert_eq!(Ramdisk::new(0).unwrap_err(), Errno::EINVAL);
        let mut ro = Ramdisk::new(1024).unwrap();
        ro.set_read_only(true);
        assert_eq!(ro.write_at(&[1], 0), Err(Errno::EROFS));
    }
}
