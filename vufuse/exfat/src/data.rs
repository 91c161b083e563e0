//! File data: extents (contiguous or FAT-chained), growing, reading and writing, valid data length, resizing.

use crate::*;
use vufuse_api::readahead;

impl ExFatFs {
    /// The clusters of a stream: its first cluster, whether it is contiguous, its length.
    /// Clusters outside the heap, a broken chain, or clusters the bitmap says are free:
    /// `EIO`.
    pub(crate) fn extents_of(
        &self,
        st: &mut State,
        first: u32,
        contiguous: bool,
        len: u64,
    ) -> Result<Extents> {
        let need = len.div_ceil(self.cs());
        if need == 0 {
            return Ok(Extents::default());
        }
        if need > self.geo.cluster_count as u64 {
            return Err(Errno::EIO);
        }
        let runs = if contiguous {
            if !self.geo.is_valid_run(first, need) {
                return Err(Errno::EIO);
            }
            vec![(first, need as u32)]
        } else {
            st.fat.chain_runs(first, Some(need))?
        };
        for &(s, l) in &runs {
            if !st.bitmap.all_used(s, l)? {
                return Err(Errno::EIO);
            }
        }
        Ok(Extents::from_runs(&runs))
    }

    /// The extents of file `ino` (cached in its node).
    pub(crate) fn file_extents(&self, st: &mut State, ino: Ino) -> Result<Extents> {
        if let Some(e) = Self::node(st, ino)?.extents.clone() {
            return Ok(e);
        }
        let meta = self.set_of(st, ino)?.meta();
        if meta.valid_len > meta.data_len {
            return Err(Errno::EIO);
        }
        let extents = self.extents_of(st, meta.first_cluster, meta.contiguous(), meta.data_len)?;
        st.nodes.get_mut(&ino).ok_or(Errno::ENOENT)?.extents = Some(extents.clone());
        Ok(extents)
    }

    /// Adds `add` clusters to `extents`; returns whether they are still one contiguous run
    /// without a FAT chain. `may_be_contiguous` false (the root) always writes the chain.
    /// `ENOSPC` with nothing changed if the volume has too few free clusters.
    pub(crate) fn extend(
        &self,
        st: &mut State,
        extents: &mut Extents,
        contiguous: bool,
        add: u32,
        may_be_contiguous: bool,
    ) -> Result<bool> {
        if add == 0 {
            return Ok(contiguous);
        }
        if add > st.bitmap.free() {
            return Err(Errno::ENOSPC);
        }
        match extents.last() {
            None => {
                if may_be_contiguous {
                    if let Some(start) = st.bitmap.find_run(add)? {
                        st.bitmap.mark_used(start, add)?;
                        extents.push(start, add);
                        return Ok(true);
                    }
                }
                let runs = st.bitmap.allocate(add)?;
                st.fat.write_chain(&runs)?;
                for (s, l) in runs {
                    extents.push(s, l);
                }
                Ok(false)
            }
            Some(last) => {
                let in_place = last
                    .checked_add(1)
                    .filter(|&n| st.bitmap.all_free(n, add).unwrap_or(false));
                if let Some(next) = in_place {
                    st.bitmap.mark_used(next, add)?;
                    if !contiguous {
                        st.fat.write_chain(&[(last, 1), (next, add)])?;
                    }
                    extents.push(next, add);
                    return Ok(contiguous);
                }
                let runs = st.bitmap.allocate(add)?;
                if contiguous {
                    // No room after it: the file becomes a FAT chain.
                    let mut all: Vec<(u32, u32)> = extents.runs().collect();
                    all.extend(&runs);
                    st.fat.write_chain(&all)?;
                } else {
                    let mut all = vec![(last, 1)];
                    all.extend(&runs);
                    st.fat.write_chain(&all)?;
                }
                for (s, l) in runs {
                    extents.push(s, l);
                }
                Ok(false)
            }
        }
    }

    pub(crate) fn free_runs(st: &mut State, runs: &[(u32, u32)]) -> Result<()> {
        for &(s, l) in runs {
            st.bitmap.mark_free(s, l)?;
        }
        Ok(())
    }

    /// Copies between `buf` and the file's clusters at `offset` (all inside its allocation).
    pub(crate) fn transfer(
        &self,
        extents: &Extents,
        offset: u64,
        mut buf: Transfer<'_>,
    ) -> Result<()> {
        let cs = self.cs();
        let total = match &buf {
            Transfer::Read(b) => b.len() as u64,
            Transfer::Write(b) => b.len() as u64,
            Transfer::Zero(n) => *n,
        };
        let mut done = 0u64;
        while done < total {
            let pos = offset + done;
            let index = u32::try_from(pos / cs).map_err(|_| Errno::EIO)?;
            let (disk, following) = extents.locate(index).ok_or(Errno::EIO)?;
            let within = pos % cs;
            let n = (following as u64 * cs - within).min(total - done);
            let at = self.geo.cluster_offset(disk) + within;
            let (d, e) = (done as usize, (done + n) as usize);
            match &mut buf {
                Transfer::Read(b) => self.dev.read_exact_at(&mut b[d..e], at)?,
                Transfer::Write(b) => self.dev.write_all_at(&b[d..e], at)?,
                Transfer::Zero(_) => self.zero(at, n)?,
            }
            done += n;
        }
        Ok(())
    }

    /// Zeroes `len` bytes at `at`: discarded where the device promises zeros, else written.
    pub(crate) fn zero(&self, at: u64, len: u64) -> Result<()> {
        if len >= 64 << 10 && self.dev.discard_zeroes() && self.dev.discard(at, len).is_ok() {
            return Ok(());
        }
        let zeros = vec![0u8; len.min(1 << 20) as usize];
        let mut z = 0;
        while z < len {
            let k = (zeros.len() as u64).min(len - z);
            self.dev.write_all_at(&zeros[..k as usize], at + z)?;
            z += k;
        }
        Ok(())
    }

    /// Reads from `ino` at `offset`; bytes past ValidDataLength are zeros.
    pub(crate) fn read_locked(
        &self,
        st: &mut State,
        ino: Ino,
        offset: u64,
        buf: &mut [u8],
    ) -> Result<usize> {
        let meta = self.set_of(st, ino)?.meta();
        if meta.is_dir() {
            return Err(Errno::EISDIR);
        }
        let extents = self.file_extents(st, ino)?;
        if offset >= meta.data_len {
            return Ok(0);
        }
        let n = (meta.data_len - offset).min(buf.len() as u64) as usize;
        let valid = meta.valid_len.saturating_sub(offset).min(n as u64) as usize;
        self.readahead(st, ino, &extents, offset, valid as u64, meta.valid_len);
        self.transfer(&extents, offset, Transfer::Read(&mut buf[..valid]))?;
        buf[valid..n].fill(0);
        Ok(n)
    }

    /// On a sequential read, asks the device to prefetch the next clusters of the file, so
    /// the disk reads ahead while the FUSE round trips go on (as the FAT driver does; the
    /// host's own readahead does not see one stream in the daemon's shared image file).
    fn readahead(
        &self,
        st: &mut State,
        ino: Ino,
        extents: &Extents,
        offset: u64,
        len: u64,
        size: u64,
    ) {
        let Some(node) = st.nodes.get_mut(&ino) else {
            return;
        };
        let expected = std::mem::replace(&mut node.next_read, offset + len);
        let Some((done, until)) = readahead::window(expected, node.prefetched, offset, len, size)
        else {
            return;
        };
        node.prefetched = until;
        let cs = self.cs();
        let mut pos = done;
        while pos < until {
            let Some((disk, following)) = u32::try_from(pos / cs)
                .ok()
                .and_then(|index| extents.locate(index))
            else {
                break;
            };
            let within = pos % cs;
            let n = (following as u64 * cs - within).min(until - pos);
            self.dev.prefetch(self.geo.cluster_offset(disk) + within, n);
            pos += n;
        }
    }

    pub(crate) fn write_locked(
        &self,
        st: &mut State,
        ino: Ino,
        offset: u64,
        data: &[u8],
    ) -> Result<usize> {
        let set = self.set_of(st, ino)?;
        let mut meta = set.meta();
        if meta.is_dir() {
            return Err(Errno::EISDIR);
        }
        if data.is_empty() {
            return Ok(0);
        }
        let cs = self.cs();
        let end = offset.checked_add(data.len() as u64).ok_or(Errno::EFBIG)?;
        let mut extents = self.file_extents(st, ino)?;
        // A write that does not fit writes what fits, as on any POSIX filesystem.
        let room = (extents.clusters() as u64 + st.bitmap.free() as u64) * cs;
        let end = end.min(room);
        if end <= offset {
            return Err(Errno::ENOSPC);
        }
        let data = &data[..(end - offset) as usize];
        let need = end.div_ceil(cs) as u32;
        let add = need.saturating_sub(extents.clusters());
        let contiguous = self.extend(st, &mut extents, meta.contiguous(), add, true)?;
        self.set_allocation(&mut meta, &extents, contiguous);
        let node = st.nodes.get_mut(&ino).ok_or(Errno::ENOENT)?;
        node.extents = Some(extents.clone());
        if offset > meta.valid_len {
            self.transfer(
                &extents,
                meta.valid_len,
                Transfer::Zero(offset - meta.valid_len),
            )?;
        }
        let written = self.transfer(&extents, offset, Transfer::Write(data));
        if written.is_ok() {
            meta.valid_len = meta.valid_len.max(end);
            meta.data_len = meta.data_len.max(end);
        }
        touch(&mut meta, self.now());
        let mut set = set;
        set.set_meta(&meta);
        self.put_set(st, ino, set)?;
        written.map(|()| data.len())
    }

    /// Records the allocation in a set's stream fields.
    pub(crate) fn set_allocation(&self, meta: &mut FileMeta, extents: &Extents, contiguous: bool) {
        match extents.runs().next() {
            Some((first, _)) => {
                meta.first_cluster = first;
                meta.flags =
                    FLAG_ALLOCATION_POSSIBLE | if contiguous { FLAG_NO_FAT_CHAIN } else { 0 };
            }
            None => {
                meta.first_cluster = 0;
                meta.flags = FLAG_ALLOCATION_POSSIBLE;
            }
        }
    }

    /// Changes a file's size: frees clusters past it, or allocates up to it (the new part
    /// lies past ValidDataLength, so it reads as zeros without being written).
    pub(crate) fn resize(&self, st: &mut State, ino: Ino, new_size: u64) -> Result<()> {
        let mut set = self.set_of(st, ino)?;
        let mut meta = set.meta();
        if meta.is_dir() {
            return Err(Errno::EISDIR);
        }
        let cs = self.cs();
        let keep = new_size.div_ceil(cs);
        if keep > self.geo.cluster_count as u64 {
            return Err(Errno::EFBIG);
        }
        let keep = keep as u32;
        let mut extents = self.file_extents(st, ino)?;
        if new_size < meta.data_len {
            let freed = extents.truncate(keep);
            if !meta.contiguous() {
                if let Some(last) = extents.last() {
                    st.fat.set(last, fat::END)?;
                }
            }
            Self::free_runs(st, &freed)?;
            let contiguous = meta.contiguous();
            self.set_allocation(&mut meta, &extents, contiguous);
            meta.valid_len = meta.valid_len.min(new_size);
        } else if new_size > meta.data_len {
            let add = keep.saturating_sub(extents.clusters());
            let contiguous = self.extend(st, &mut extents, meta.contiguous(), add, true)?;
            self.set_allocation(&mut meta, &extents, contiguous);
        } else {
            return Ok(());
        }
        meta.data_len = new_size;
        touch(&mut meta, self.now());
        st.nodes.get_mut(&ino).ok_or(Errno::ENOENT)?.extents = Some(extents);
        set.set_meta(&meta);
        self.put_set(st, ino, set)
    }

    // ----- names -------------------------------------------------------------------------
}
