//! Parsed directories as a cache within a byte budget (least recently used dropped first).

use crate::*;

impl FatFs {
    /// Loads (or returns) the index of directory `id`.
    pub(crate) fn load_dir<'a>(&self, st: &'a mut State, id: DirId) -> Result<&'a mut DirIndex> {
        if !st.dirs.contains_key(&id) {
            let (bytes, clusters) = if id == 0 {
                let mut bytes = vec![0u8; self.geo.root_entries as usize * SLOT];
                self.dev.read_exact_at(&mut bytes, self.geo.root_offset)?;
                (bytes, Vec::new())
            } else {
                let runs = st.fat.chain_runs(id)?;
                let clusters: Vec<u32> = runs.iter().flat_map(|&(s, l)| s..s + l).collect();
                if clusters.len() as u64 * self.geo.cluster_size as u64
                    > MAX_DIR_SLOTS as u64 * SLOT as u64 * 2
                {
                    return Err(Errno::EIO);
                }
                let cs = self.geo.cluster_size as usize;
                let mut bytes = vec![0u8; clusters.len() * cs];
                for &(start, len) in &runs {
                    let index = clusters
                        .iter()
                        .position(|&c| c == start)
                        .expect("run start is in the list");
                    self.dev.read_exact_at(
                        &mut bytes[index * cs..(index + len as usize) * cs],
                        self.geo.cluster_offset(start),
                    )?;
                }
                (bytes, clusters)
            };
            st.dirs
                .insert(id, DirIndex::parse(&bytes, clusters, self.root));
        }
        let cost = DIR_COST + st.dirs[&id].entries.len() * DIR_ENTRY_COST;
        let op = st.op;
        let old = st.dir_use.insert(id, (op, cost)).map_or(0, |(_, c)| c);
        st.dir_bytes = st.dir_bytes + cost - old;
        Self::trim_dirs(st, self.opts.dir_cache_bytes);
        Ok(st.dirs.get_mut(&id).expect("just loaded"))
    }

    /// Drops least recently used parsed directories, never one the current operation used
    /// nor the most recent of the others, when they are over `budget` bytes (so the total
    /// can exceed it by those few directories, at most 65,536 entries each).
    pub(crate) fn trim_dirs(st: &mut State, budget: usize) {
        if st.dir_bytes <= budget {
            return;
        }
        let mut by_age: Vec<(u64, DirId)> = st
            .dir_use
            .iter()
            .filter(|(_, &(used, _))| used < st.op)
            .map(|(&id, &(used, _))| (used, id))
            .collect();
        by_age.sort_unstable();
        // Spare the most recently used one of earlier operations too, so that two
        // directories used in turn (cp big/* other/) do not evict and parse each other.
        by_age.pop();
        for (_, id) in by_age {
            if st.dir_bytes <= budget - budget / 4 {
                break;
            }
            Self::forget_dir(st, id);
        }
    }

    /// Drops the parsed directory `id` (removed, or evicted).
    pub(crate) fn forget_dir(st: &mut State, id: DirId) {
        st.dirs.remove(&id);
        if let Some((_, cost)) = st.dir_use.remove(&id) {
            st.dir_bytes -= cost;
        }
    }
}
