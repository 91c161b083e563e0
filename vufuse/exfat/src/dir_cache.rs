//! Parsed directories as a cache within a byte budget, and the records of directories seen (exFAT has no `..`).

use crate::*;

impl ExFatFs {
    /// Loads (or returns) the index of directory `id`.
    pub(crate) fn load_dir<'a>(&self, st: &'a mut State, id: DirId) -> Result<&'a mut DirIndex> {
        if !st.dirs.contains_key(&id) {
            let info = *st.known.get(&id).ok_or(Errno::EIO)?;
            let extents = self.extents_of(st, info.first, info.contiguous, info.len)?;
            let bytes = read_dir_extents(
                &*self.dev,
                &extents,
                self.geo.cluster_shift,
                |c| self.geo.cluster_offset(c),
                info.len,
            )?;
            let index = DirIndex::parse(&bytes, extents, &self.upcase);
            st.dirs.insert(id, index);
        }
        let cost = DIR_COST + st.dirs[&id].entries.len() * DIR_ENTRY_COST;
        let op = st.op;
        let old = st.dir_use.insert(id, (op, cost)).map_or(0, |(_, c)| c);
        st.dir_bytes = st.dir_bytes + cost - old;
        Self::trim_dirs(st, self.opts.dir_cache_bytes, self.geo.root_cluster);
        Ok(st.dirs.get_mut(&id).expect("just loaded"))
    }

    /// Drops least recently used directories (never the root, one the current operation
    /// used, nor the most recent of the others) while over `budget` bytes.
    pub(crate) fn trim_dirs(st: &mut State, budget: usize, root: DirId) {
        if st.dir_bytes <= budget {
            return;
        }
        let mut by_age: Vec<(u64, DirId)> = st
            .dir_use
            .iter()
            .filter(|(&id, &(used, _))| used < st.op && id != root)
            .map(|(&id, &(used, _))| (used, id))
            .collect();
        by_age.sort_unstable();
        by_age.pop();
        for (_, id) in by_age {
            if st.dir_bytes <= budget - budget / 4 {
                break;
            }
            Self::forget_dir(st, id);
        }
    }

    pub(crate) fn forget_dir(st: &mut State, id: DirId) {
        st.dirs.remove(&id);
        if let Some((_, cost)) = st.dir_use.remove(&id) {
            st.dir_bytes -= cost;
        }
    }

    /// Remembers how to read directory `meta` whose set is at `loc`.
    pub(crate) fn register_dir(&self, st: &mut State, loc: Location, meta: &FileMeta) {
        if st.known.len() >= KNOWN_DIRS_CAP {
            Self::prune_known(st, self.geo.root_cluster);
        }
        st.known.insert(
            meta.first_cluster,
            DirInfo {
                first: meta.first_cluster,
                contiguous: meta.contiguous(),
                len: meta.data_len,
                owner: Some(loc),
            },
        );
    }

    /// Keeps the directory records still referenced (by a node, a cached index, a node's
    /// location) and their ancestors.
    pub(crate) fn prune_known(st: &mut State, root: DirId) {
        let mut keep: HashSet<DirId> = st.dirs.keys().copied().collect();
        keep.insert(root);
        for node in st.nodes.values() {
            keep.extend(node.dir);
            keep.extend(node.loc.map(|l| l.dir));
        }
        let mut ancestors = Vec::new();
        for &id in &keep {
            let mut at = id;
            for _ in 0..4096 {
                match st.known.get(&at).and_then(|i| i.owner) {
                    Some(owner) => {
                        ancestors.push(owner.dir);
                        at = owner.dir;
                    }
                    None => break,
                }
            }
        }
        keep.extend(ancestors);
        st.known.retain(|id, _| keep.contains(id));
    }
}
