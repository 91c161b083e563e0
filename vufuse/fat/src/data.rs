//! File data: extent lists, reads through the page cache with readahead, growing and resizing cluster chains.

use crate::*;
use vufuse_api::readahead;

/// Direction of a data copy.
pub(crate) enum Transfer<'a> {
    Read(&'a mut [u8]),
    Write(&'a [u8]),
    Zero(usize),
}

impl Transfer<'_> {
    fn len(&self) -> usize {
        match self {
            Transfer::Read(b) => b.len(),
            Transfer::Write(b) => b.len(),
            Transfer::Zero(n) => *n,
        }
    }
}

impl FatFs {
    /// Reads with only the shared lock when the file's entry and extents are
    /// already in memory (the common case after the first read); `None` if not.
    pub(crate) fn read_cached(
        &self,
        st: &State,
        ino: Ino,
        offset: u64,
        buf: &mut [u8],
    ) -> Option<Result<usize>> {
        let node = st.nodes.get(&ino)?;
        let extents = node.extents.as_ref()?;
        let entry = match (&node.orphan, node.loc) {
            (Some(orphan), _) => orphan,
            (None, Some(loc)) => &st.dirs.get(&loc.dir)?.entries.get(&loc.slot)?.entry,
            (None, None) => return None,
        };
        Some(self.read_extents(node, extents, entry, offset, buf))
    }

    pub(crate) fn read_extents(
        &self,
        node: &Node,
        extents: &Extents,
        entry: &ShortEntry,
        offset: u64,
        buf: &mut [u8],
    ) -> Result<usize> {
        if entry.is_dir() {
            return Err(Errno::EISDIR);
        }
        let size = entry.size as u64;
        if offset >= size {
            return Ok(0);
        }
        if (extents.clusters as u64) * (self.geo.cluster_size as u64) < size {
            // The chain is shorter than the size says: corrupt.
            return Err(Errno::EIO);
        }
        let n = ((size - offset) as usize).min(buf.len());
        self.readahead(node, extents, offset, n as u64, size);
        self.transfer(extents, offset, Transfer::Read(&mut buf[..n]))?;
        Ok(n)
    }

    /// On a sequential read, asks the device to prefetch the next clusters of
    /// the file, so disk I/O overlaps with the FUSE round trips.
    pub(crate) fn readahead(
        &self,
        node: &Node,
        extents: &Extents,
        offset: u64,
        len: u64,
        size: u64,
    ) {
        let expected = node.next_read.swap(offset + len, Ordering::Relaxed);
        let prefetched = node.prefetched.load(Ordering::Relaxed);
        let Some((done, until)) = readahead::window(expected, prefetched, offset, len, size) else {
            return;
        };
        let cs = self.geo.cluster_size as u64;
        let mut pos = done;
        while pos < until {
            let Some((disk, following)) = extents.locate((pos / cs) as u32) else {
                break;
            };
            let within = pos % cs;
            let n = (following as u64 * cs - within).min(until - pos);
            self.dev.prefetch(self.geo.cluster_offset(disk) + within, n);
            pos += n;
        }
        node.prefetched.store(until, Ordering::Relaxed);
    }

    pub(crate) fn extents(&self, st: &mut State, ino: Ino) -> Result<Extents> {
        if let Some(e) = Self::node(st, ino)?.extents.clone() {
            return Ok(e);
        }
        let entry = self.entry(st, ino)?;
        let runs = st.fat.chain_runs(entry.cluster)?;
        let extents = Extents::from_runs(&runs);
        st.nodes.get_mut(&ino).expect("present").extents = Some(extents.clone());
        Ok(extents)
    }

    /// Makes sure `ino` owns at least `clusters` clusters.
    pub(crate) fn grow(&self, st: &mut State, ino: Ino, clusters: u32) -> Result<()> {
        let mut extents = self.extents(st, ino)?;
        if extents.clusters >= clusters {
            return Ok(());
        }
        let near = extents.last().map(|c| c + 1);
        let new = st.fat.allocate(clusters - extents.clusters, near)?;
        match extents.last() {
            Some(last) => st.fat.set_next(last, new[0])?,
            None => {
                let entry = self.entry(st, ino)?;
                self.put_entry(
                    st,
                    ino,
                    ShortEntry {
                        cluster: new[0],
                        ..entry
                    },
                )?;
            }
        }
        let mut run_start = new[0];
        let mut run_len = 1;
        for pair in new.windows(2) {
            if pair[1] == pair[0] + 1 {
                run_len += 1;
            } else {
                extents.push(run_start, run_len);
                run_start = pair[1];
                run_len = 1;
            }
        }
        extents.push(run_start, run_len);
        st.nodes.get_mut(&ino).expect("present").extents = Some(extents);
        Ok(())
    }

    /// Copies between `buf` and the file's clusters at `offset` (all inside its allocation).
    pub(crate) fn transfer(
        &self,
        extents: &Extents,
        offset: u64,
        mut buf: Transfer<'_>,
    ) -> Result<()> {
        let cs = self.geo.cluster_size as u64;
        let mut done = 0usize;
        let total = buf.len();
        while done < total {
            let pos = offset + done as u64;
            let (disk, following) = extents.locate((pos / cs) as u32).ok_or(Errno::EIO)?;
            let within = pos % cs;
            let n = ((following as u64 * cs - within) as usize).min(total - done);
            let at = self.geo.cluster_offset(disk) + within;
            match &mut buf {
                Transfer::Read(b) => self.dev.read_exact_at(&mut b[done..done + n], at)?,
                Transfer::Write(b) => self.dev.write_all_at(&b[done..done + n], at)?,
                Transfer::Zero(_) => {
                    let zeros = vec![0u8; n.min(1 << 20)];
                    let mut z = 0;
                    while z < n {
                        let k = zeros.len().min(n - z);
                        self.dev.write_all_at(&zeros[..k], at + z as u64)?;
                        z += k;
                    }
                }
            }
            done += n;
        }
        Ok(())
    }

    /// Changes a file's size: frees clusters past it, or allocates and zeroes up to it.
    pub(crate) fn resize(&self, st: &mut State, ino: Ino, new_size: u64) -> Result<()> {
        if new_size > u32::MAX as u64 {
            return Err(Errno::EFBIG);
        }
        let entry = self.entry(st, ino)?;
        if entry.is_dir() {
            return Err(Errno::EISDIR);
        }
        let old = entry.size as u64;
        let cs = self.geo.cluster_size as u64;
        let keep = new_size.div_ceil(cs) as u32;
        if new_size < old {
            let mut extents = self.extents(st, ino)?;
            let freed = extents.truncate(keep);
            let mut entry = entry;
            if keep == 0 {
                entry.cluster = 0;
            } else if let Some(last) = extents.last() {
                st.fat.set_end(last)?;
            }
            st.fat.free_runs(&freed)?;
            st.nodes.get_mut(&ino).expect("present").extents = Some(extents);
            entry.size = new_size as u32;
            self.touch(&mut entry);
            self.put_entry(st, ino, entry)?;
        } else if new_size > old {
            self.grow(st, ino, keep)?;
            let extents = self.extents(st, ino)?;
            self.transfer(&extents, old, Transfer::Zero((new_size - old) as usize))?;
            let mut entry = self.entry(st, ino)?;
            entry.size = new_size as u32;
            self.touch(&mut entry);
            self.put_entry(st, ino, entry)?;
        }
        Ok(())
    }
}
