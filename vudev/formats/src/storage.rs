//! What an image format stores its metadata and data in, and the bounded metadata cache.
//!
//! A [`Storage`] is either an image file, which grows as clusters are allocated (a
//! [`FileDevice`] has a size fixed at open, so growth goes through its `File`), or any
//! [`BlockDevice`] (an LV, a partition window, another layer), whose size is fixed: an
//! allocation past its end fails with `ENOSPC`, as it would on a full disk.
//!
//! An image file written front to back (a conversion's output) may start the host's
//! writeback as it goes ([`Storage::writeback_every`], [`WritebackAhead`]).

use std::collections::HashMap;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use vudev::{BlockDevice, Errno, ExtentList, FileDevice, Result};

enum Backend {
    File {
        dev: FileDevice,
        len: AtomicU64,
        ahead: Option<WritebackAhead>,
    },
    Dev(Arc<dyn BlockDevice>),
}

/// The container an image format reads its structures from and writes them to.
pub struct Storage {
    backend: Backend,
    name: PathBuf,
}

impl std::fmt::Debug for Storage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Storage({})", self.name.display())
    }
}

impl Storage {
    /// An image file, which grows when written past its end.
    pub fn file(dev: FileDevice) -> Storage {
        let name = dev.path().to_path_buf();
        let len = AtomicU64::new(dev.size());
        Storage {
            backend: Backend::File {
                dev,
                len,
                ahead: None,
            },
            name,
        }
    }

    /// This storage, starting the host's writeback of what was written every `step` bytes
    /// written past the last start, when it is a file and `step` is not 0 (see
    /// [`WritebackAhead`]); devices are left alone.
    pub fn writeback_every(mut self, step: u64) -> Storage {
        if let Backend::File { ahead, .. } = &mut self.backend {
            *ahead = (step != 0).then(|| WritebackAhead::new(step));
        }
        self
    }

    /// Any device, of fixed size; `name` is used in messages and to resolve relative paths.
    pub fn device(dev: Arc<dyn BlockDevice>, name: impl Into<PathBuf>) -> Storage {
        Storage {
            backend: Backend::Dev(dev),
            name: name.into(),
        }
    }

    /// The path (or name) of the container.
    pub fn name(&self) -> &Path {
        &self.name
    }

    /// The file device underneath, when the storage is a file.
    pub fn file_device(&self) -> Option<&FileDevice> {
        match &self.backend {
            Backend::File { dev, .. } => Some(dev),
            Backend::Dev(_) => None,
        }
    }

    /// Current length in bytes.
    pub fn len(&self) -> u64 {
        match &self.backend {
            Backend::File { len, .. } => len.load(Ordering::Acquire),
            Backend::Dev(d) => d.size(),
        }
    }

    /// True when the container holds no byte.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// True when the container refuses writes.
    pub fn read_only(&self) -> bool {
        match &self.backend {
            Backend::File { dev, .. } => dev.read_only(),
            Backend::Dev(d) => d.read_only(),
        }
    }

    /// Bytes the container occupies on the host (allocated blocks of a file; the size of a
    /// device).
    pub fn host_bytes(&self) -> u64 {
        use std::os::unix::fs::MetadataExt;
        match &self.backend {
            Backend::File { dev, .. } => {
                dev.file().metadata().map(|m| m.blocks() * 512).unwrap_or(0)
            }
            Backend::Dev(d) => d.size(),
        }
    }

    /// Adds the container's own map of `[offset, offset + len)` to `list` (a flat VMDK
    /// extent's holes); bytes past its end read as zeros. Returns the bytes added.
    pub fn push_extents(&self, list: &mut ExtentList, offset: u64, len: u64) -> Result<u64> {
        match &self.backend {
            Backend::File { dev, .. } => list.push_from(dev, offset, len),
            Backend::Dev(d) => list.push_from(d.as_ref(), offset, len),
        }
    }

    /// Reads `buf` at `offset`; bytes past the end read as zeros.
    pub fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        let len = self.len();
        let avail = if offset >= len {
            0
        } else {
            (len - offset).min(buf.len() as u64) as usize
        };
        let (head, tail) = buf.split_at_mut(avail);
        tail.fill(0);
        match &self.backend {
            Backend::File { dev, .. } => {
                let mut done = 0;
                while done < head.len() {
                    match dev.file().read_at(&mut head[done..], offset + done as u64) {
                        Ok(0) => {
                            head[done..].fill(0);
                            break;
                        }
                        Ok(n) => done += n,
                        Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                        Err(e) => return Err(e.into()),
                    }
                }
                Ok(())
            }
            Backend::Dev(d) => d.read_exact_at(head, offset),
        }
    }

    /// Writes all of `buf` at `offset`, growing a file; `ENOSPC` past a device's end.
    pub fn write_at(&self, buf: &[u8], offset: u64) -> Result<()> {
        if self.read_only() {
            return Err(Errno::EROFS);
        }
        let end = offset.checked_add(buf.len() as u64).ok_or(Errno::EFBIG)?;
        match &self.backend {
            Backend::File { dev, len, ahead } => {
                dev.file().write_all_at(buf, offset)?;
                len.fetch_max(end, Ordering::AcqRel);
                if let Some(ahead) = ahead {
                    ahead.wrote(dev.file(), end);
                }
                Ok(())
            }
            Backend::Dev(d) => {
                if end > d.size() {
                    return Err(Errno::ENOSPC);
                }
                d.write_all_at(buf, offset)
            }
        }
    }

    /// Makes completed writes durable.
    pub fn flush(&self) -> Result<()> {
        match &self.backend {
            Backend::File { dev, .. } => {
                if !dev.read_only() {
                    dev.file().sync_data()?;
                }
                Ok(())
            }
            Backend::Dev(d) => d.flush(),
        }
    }

    /// Gives a byte range back to the host (a hole in a file, a discard on a device).
    /// Advisory: failures other than `EROFS` are ignored, the range stays readable.
    pub fn punch(&self, offset: u64, len: u64) -> Result<()> {
        if self.read_only() {
            return Err(Errno::EROFS);
        }
        match &self.backend {
            Backend::File { dev, .. } => {
                if dev.is_block_device() {
                    return Ok(());
                }
                let flags =
                    rustix::fs::FallocateFlags::PUNCH_HOLE | rustix::fs::FallocateFlags::KEEP_SIZE;
                let _ = rustix::fs::fallocate(dev.file(), flags, offset, len);
                dev.forget_data_runs();
                Ok(())
            }
            Backend::Dev(d) => {
                let _ = d.discard(offset, len);
                Ok(())
            }
        }
    }

    /// Sets the length of a file (used by `create_*`); devices keep theirs.
    pub fn set_len(&self, new_len: u64) -> Result<()> {
        match &self.backend {
            Backend::File { dev, len, .. } => {
                dev.file().set_len(new_len)?;
                dev.forget_data_runs();
                len.store(new_len, Ordering::Release);
                Ok(())
            }
            Backend::Dev(_) => Ok(()),
        }
    }
}

/// Starts the writeback of a file written front to back every `step` bytes written past
/// the last start (`posix_fadvise(POSIX_FADV_DONTNEED)`, which on Linux starts the
/// writeback of the dirty pages without waiting for it, then drops the clean ones), so that
/// the disk writes while the writer goes on, rather than all of it at the final flush.
/// Writes below the last start (metadata updated in place) are left to the flush.
#[derive(Debug)]
pub struct WritebackAhead {
    step: u64,
    /// Writeback was started below this offset.
    started: AtomicU64,
}

impl WritebackAhead {
    /// Starts the writeback every `step` bytes (at least 1).
    pub fn new(step: u64) -> WritebackAhead {
        WritebackAhead {
            step: step.max(1),
            started: AtomicU64::new(0),
        }
    }

    /// Notes a write to `file` that ended at byte `end`: starts the writeback from the
    /// last start up to `end` when that is `step` bytes or more.
    pub fn wrote(&self, file: &std::fs::File, end: u64) {
        let from = self.started.load(Ordering::Relaxed);
        if end < from.saturating_add(self.step) {
            return;
        }
        let Some(len) = std::num::NonZeroU64::new(end - from) else {
            return;
        };
        // One start per range when writers race.
        if self
            .started
            .compare_exchange(from, end, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
        {
            // Advisory: a failure only leaves the writeback to the flush.
            let _ = rustix::fs::fadvise(file, from, Some(len), rustix::fs::Advice::DontNeed);
        }
    }
}

struct Slot<T> {
    value: T,
    dirty: bool,
    used: u64,
}

/// A least-recently-used map from a host offset to a metadata table, with dirty tracking.
/// Capacity is counted in entries; eviction hands dirty entries back for writing.
pub struct Lru<T> {
    map: HashMap<u64, Slot<T>>,
    cap: usize,
    tick: u64,
}

impl<T> Lru<T> {
    /// A cache of at most `cap` entries (at least one).
    pub fn new(cap: usize) -> Lru<T> {
        Lru {
            map: HashMap::new(),
            cap: cap.max(1),
            tick: 0,
        }
    }

    /// Entries cached now.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// True when nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// The most entries ever held.
    pub fn capacity(&self) -> usize {
        self.cap
    }

    /// The entry at `key`, marked as just used.
    pub fn get(&mut self, key: u64) -> Option<&mut T> {
        self.tick += 1;
        let tick = self.tick;
        self.map.get_mut(&key).map(|s| {
            s.used = tick;
            &mut s.value
        })
    }

    /// True when `key` is cached.
    pub fn contains(&self, key: u64) -> bool {
        self.map.contains_key(&key)
    }

    /// Marks the entry at `key` as modified.
    pub fn mark_dirty(&mut self, key: u64) {
        if let Some(s) = self.map.get_mut(&key) {
            s.dirty = true;
        }
    }

    /// The least recently used entry, removed, when the cache is full (to make room).
    pub fn evict_if_full(&mut self) -> Option<(u64, T, bool)> {
        if self.map.len() < self.cap {
            return None;
        }
        let key = *self.map.iter().min_by_key(|(_, s)| s.used)?.0;
        let slot = self.map.remove(&key)?;
        Some((key, slot.value, slot.dirty))
    }

    /// Inserts an entry; the caller made room with [`evict_if_full`](Self::evict_if_full).
    pub fn insert(&mut self, key: u64, value: T, dirty: bool) {
        self.tick += 1;
        self.map.insert(
            key,
            Slot {
                value,
                dirty,
                used: self.tick,
            },
        );
    }

    /// Removes the entry at `key`.
    pub fn remove(&mut self, key: u64) -> Option<T> {
        self.map.remove(&key).map(|s| s.value)
    }

    /// The keys of the modified entries, sorted (so write-back is sequential).
    pub fn dirty_keys(&self) -> Vec<u64> {
        let mut keys: Vec<u64> = self
            .map
            .iter()
            .filter(|(_, s)| s.dirty)
            .map(|(k, _)| *k)
            .collect();
        keys.sort_unstable();
        keys
    }

    /// The entry at `key` without touching its age, and clears its dirty mark.
    pub fn take_dirty(&mut self, key: u64) -> Option<&T> {
        self.map.get_mut(&key).map(|s| {
            s.dirty = false;
            &s.value
        })
    }

    /// Marks an entry dirty again (a write-back that failed).
    pub fn set_dirty(&mut self, key: u64) {
        self.mark_dirty(key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lru_evicts_the_least_recently_used_and_reports_dirtiness() {
        let mut lru = Lru::new(2);
        lru.insert(1, "a", false);
        lru.insert(2, "b", true);
        assert!(lru.get(1).is_some());
        let (k, v, dirty) = lru.evict_if_full().unwrap();
        assert_eq!((k, v, dirty), (2, "b", true));
        assert!(lru.evict_if_full().is_none());
        assert_eq!(lru.len(), 1);
    }
}
