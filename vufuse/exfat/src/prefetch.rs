//! Readahead across the files of a directory. A reader that opens a directory's files in
//! order (tar, cp -r, a backup) reads each small file once, and in an exFAT heap of 32 KiB or
//! larger clusters their data lie one cluster apart: the host sees strided reads and does no
//! readahead of its own, so each file costs a device round trip. When a file is opened, the
//! data of the files after it in the directory is announced to the device
//! ([`BlockDevice::prefetch`]), a window at a time, so those reads are queued together.

use crate::*;

/// Files announced at once, ahead of the one opened.
const WINDOW_FILES: usize = 64;
/// Bytes announced per file at most (the start of a large file; the reader's own
/// sequential readahead takes over there).
const PER_FILE: u64 = 128 << 10;

/// How far ahead the device was told: the directory and the last slot announced.
#[derive(Clone, Copy, Default)]
pub(crate) struct Announced {
    mark: Option<(DirId, u32)>,
}

impl ExFatFs {
    /// On opening the file at `loc`: announce the next window of files of its directory,
    /// unless the window announced before still reaches well past it.
    pub(crate) fn prefetch_siblings(&self, st: &mut State, loc: Location) {
        let from = match st.announced.mark {
            Some((dir, last)) if dir == loc.dir && last > loc.slot => {
                if last - loc.slot > (WINDOW_FILES as u32) * 2 {
                    return; // plenty announced ahead (a set spans at least 3 slots)
                }
                last
            }
            _ => loc.slot,
        };
        let Some(index) = st.dirs.get(&loc.dir) else {
            return;
        };
        let mut last = from;
        for (&slot, named) in index.entries.range(from + 1..).take(WINDOW_FILES) {
            last = slot;
            let Some(meta) = named.set.as_ref().map(|s| s.meta()) else {
                continue;
            };
            if meta.is_dir() || meta.valid_len == 0 || meta.first_cluster < 2 {
                continue;
            }
            let offset = self.geo.cluster_offset(meta.first_cluster);
            let len = if meta.contiguous() {
                meta.valid_len.min(PER_FILE)
            } else {
                meta.valid_len.min(self.geo.cluster_size as u64) // one cluster: no chain walk
            };
            self.dev.prefetch(offset, len);
        }
        st.announced.mark = Some((loc.dir, last));
    }
}
