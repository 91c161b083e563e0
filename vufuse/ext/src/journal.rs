//! In-memory replay of an ext3/4 (JBD2) journal, for read-only mounts of an
//! image whose journal needs recovery: the committed transactions are read
//! and served through an overlay device; the image itself is never written.
//!
//! The three passes follow the kernel's jbd2 recovery: scan to find the last
//! committed transaction, collect revoke records, then map every logged
//! block of a committed transaction that was not revoked later.

use std::collections::HashMap;
use std::sync::Arc;
use vudev::{BlockDevice, Errno, Result};

const MAGIC: u32 = 0xC03B_3998;
const DESCRIPTOR: u32 = 1;
const COMMIT: u32 = 2;
const SUPERBLOCK_V1: u32 = 3;
const SUPERBLOCK_V2: u32 = 4;
const REVOKE: u32 = 5;

const INCOMPAT_64BIT: u32 = 0x2;
const INCOMPAT_CSUM_V2: u32 = 0x8;
const INCOMPAT_CSUM_V3: u32 = 0x10;

const TAG_ESCAPE: u32 = 0x1;
const TAG_SAME_UUID: u32 = 0x2;
const TAG_LAST: u32 = 0x8;

/// At most this many journal blocks are walked (a journal is at most 2^32
/// blocks; real ones are far smaller): a corrupt journal cannot hang us.
const MAX_WALK: u64 = 1 << 24;

fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

/// The journal as laid out on the device.
struct Journal<'a> {
    dev: &'a dyn BlockDevice,
    /// Physical filesystem block of each journal block.
    map: &'a [u64],
    block_size: usize,
    first: u64,
    last: u64,
    incompat: u32,
}

impl Journal<'_> {
    fn read(&self, jblock: u64) -> Result<Vec<u8>> {
        let physical = *self.map.get(jblock as usize).ok_or(Errno::EUCLEAN)?;
        let mut buf = vec![0u8; self.block_size];
        self.dev
            .read_exact_at(&mut buf, physical * self.block_size as u64)?;
        Ok(buf)
    }

    fn next(&self, jblock: u64) -> u64 {
        if jblock + 1 >= self.last {
            self.first
        } else {
            jblock + 1
        }
    }

    fn tag_bytes(&self) -> usize {
        if self.incompat & INCOMPAT_CSUM_V3 != 0 {
            return 16;
        }
        let mut size = 12;
        if self.incompat & INCOMPAT_CSUM_V2 != 0 {
            size += 2;
        }
        if self.incompat & INCOMPAT_64BIT == 0 {
            size -= 4;
        }
        size
    }

    /// The (target block, flags) pairs of a descriptor block.
    fn tags(&self, block: &[u8]) -> Vec<(u64, u32)> {
        let tag = self.tag_bytes();
        let tail = if self.incompat & (INCOMPAT_CSUM_V2 | INCOMPAT_CSUM_V3) != 0 {
            4
        } else {
            0
        };
        let mut out = Vec::new();
        let mut at = 12;
        while at + tag <= block.len() - tail {
            let low = be32(block, at) as u64;
            let (flags, high) = if self.incompat & INCOMPAT_CSUM_V3 != 0 {
                (be32(block, at + 4), be32(block, at + 8) as u64)
            } else {
                let flags = u16::from_be_bytes([block[at + 6], block[at + 7]]) as u32;
                let high = if self.incompat & INCOMPAT_64BIT != 0 {
                    be32(block, at + 8) as u64
                } else {
                    0
                };
                (flags, high)
            };
            out.push(((high << 32) | low, flags));
            at += tag;
            if flags & TAG_SAME_UUID == 0 {
                at += 16;
            }
            if flags & TAG_LAST != 0 {
                break;
            }
        }
        out
    }

    /// Block numbers revoked by a revoke block.
    fn revoked(&self, block: &[u8]) -> Vec<u64> {
        let count = (be32(block, 12) as usize).min(block.len());
        let wide = self.incompat & INCOMPAT_64BIT != 0;
        let step = if wide { 8 } else { 4 };
        let mut out = Vec::new();
        let mut at = 16;
        while at + step <= count {
            out.push(if wide {
                u64::from_be_bytes(block[at..at + 8].try_into().expect("8"))
            } else {
                be32(block, at) as u64
            });
            at += step;
        }
        out
    }
}

/// A block logged in a transaction: (target filesystem block, journal block, tag flags).
type Logged = (u64, u64, u32);

/// The replayed blocks: filesystem block number to its content.
pub type Replayed = HashMap<u64, Vec<u8>>;

/// Replays the journal whose blocks are at `map` (physical block of each
/// journal block, in order) on a filesystem of `block_size`. Returns the
/// blocks the journal supersedes.
pub fn replay(dev: &dyn BlockDevice, map: &[u64], block_size: usize) -> Result<Replayed> {
    if map.is_empty() || block_size < 1024 {
        return Err(Errno::EUCLEAN);
    }
    let mut journal = Journal {
        dev,
        map,
        block_size,
        first: 1,
        last: map.len() as u64,
        incompat: 0,
    };
    let sb = journal.read(0)?;
    if be32(&sb, 0) != MAGIC || !matches!(be32(&sb, 4), SUPERBLOCK_V1 | SUPERBLOCK_V2) {
        return Err(Errno::EUCLEAN);
    }
    if be32(&sb, 12) as usize != block_size {
        return Err(Errno::EUCLEAN);
    }
    journal.last = (be32(&sb, 16) as u64).min(map.len() as u64);
    journal.first = be32(&sb, 20) as u64;
    let mut sequence = be32(&sb, 24);
    let start = be32(&sb, 28) as u64;
    if be32(&sb, 4) == SUPERBLOCK_V2 {
        journal.incompat = be32(&sb, 40);
    }
    if start == 0 {
        return Ok(Replayed::new()); // clean journal
    }
    if journal.first == 0
        || journal.first >= journal.last
        || start < journal.first
        || start >= journal.last
    {
        return Err(Errno::EUCLEAN);
    }

    // Pass 1 and 2 in one walk: committed transactions and revokes.
    // Each committed transaction: (sequence, [(target, journal block, flags)]).
    let mut committed: Vec<(u32, Vec<Logged>)> = Vec::new();
    let mut revokes: HashMap<u64, u32> = HashMap::new();
    let mut pending: Vec<Logged> = Vec::new();
    let mut pending_revokes: Vec<u64> = Vec::new();
    let mut pos = start;
    let mut walked = 0u64;
    loop {
        walked += 1;
        if walked > MAX_WALK.min(journal.last * 2) {
            break;
        }
        let block = journal.read(pos)?;
        if be32(&block, 0) != MAGIC || be32(&block, 8) != sequence {
            break; // end of the log
        }
        match be32(&block, 4) {
            DESCRIPTOR => {
                let mut data = journal.next(pos);
                for (target, flags) in journal.tags(&block) {
                    pending.push((target, data, flags));
                    data = journal.next(data);
                }
                pos = data;
                continue;
            }
            COMMIT => {
                committed.push((sequence, std::mem::take(&mut pending)));
                for b in pending_revokes.drain(..) {
                    let seq = revokes.entry(b).or_insert(sequence);
                    *seq = (*seq).max(sequence);
                }
                sequence = sequence.wrapping_add(1);
            }
            REVOKE => {
                pending_revokes.extend(journal.revoked(&block));
            }
            _ => break,
        }
        pos = journal.next(pos);
    }

    // Pass 3: the last committed version of every logged, unrevoked block.
    let mut out = Replayed::new();
    for (seq, blocks) in committed {
        for (target, jblock, flags) in blocks {
            if revokes.get(&target).is_some_and(|&r| r >= seq) {
                continue;
            }
            let mut data = journal.read(jblock)?;
            if flags & TAG_ESCAPE != 0 {
                data[..4].copy_from_slice(&MAGIC.to_be_bytes());
            }
            out.insert(target, data);
        }
    }
    Ok(out)
}

/// A read-only view of a device with replayed journal blocks laid over it.
pub struct Overlay {
    inner: Arc<dyn BlockDevice>,
    blocks: Replayed,
    block_size: u64,
}

impl Overlay {
    /// `inner` as it would be after recovery, without writing to it.
    pub fn new(inner: Arc<dyn BlockDevice>, blocks: Replayed, block_size: usize) -> Overlay {
        Overlay {
            inner,
            blocks,
            block_size: block_size as u64,
        }
    }
}

impl BlockDevice for Overlay {
    fn size(&self) -> u64 {
        self.inner.size()
    }

    fn read_only(&self) -> bool {
        true
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<usize> {
        let n = self.inner.read_at(buf, offset)?;
        let bs = self.block_size;
        let mut pos = offset;
        while pos < offset + n as u64 {
            let block = pos / bs;
            let within = (pos % bs) as usize;
            let take = ((bs as usize - within) as u64).min(offset + n as u64 - pos) as usize;
            if let Some(data) = self.blocks.get(&block) {
                let at = (pos - offset) as usize;
                buf[at..at + take].copy_from_slice(&data[within..within + take]);
            }
            pos += take as u64;
        }
        Ok(n)
    }

    fn write_at(&self, _buf: &[u8], _offset: u64) -> Result<usize> {
        Err(Errno::EROFS)
    }

    fn flush(&self) -> Result<()> {
        Ok(())
    }
}
