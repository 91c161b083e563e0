//! The name table of directories looked up in, so lookups, negative lookups and the
//! existence check of a create cost a hash lookup instead of `ext2fs_lookup`'s scan of every
//! block of the directory.
//!
//! Bounded in memory: each directory's table is all its names or nothing, charged at
//! [`DIR_COST`] bytes plus [`ENTRY_COST`] bytes and the name per entry (measured through
//! fuseext2: 81 bytes of resident memory per short name, hash table included), within
//! [`NAME_CACHE_BYTES`]. A directory that would not fit evicts the least recently used ones,
//! down to three quarters of the budget so that eviction's sort is paid once per batch; one
//! larger than the whole budget is not cached (its lookups scan, as libext2fs does).

use std::collections::{HashMap, HashSet};

/// The most the name table may hold, in estimated bytes (about 170,000 short names).
pub const NAME_CACHE_BYTES: usize = 16 << 20;

/// Estimated bytes per cached name besides the name itself (the key's heap block and
/// header, the inode number, the hash table slot).
pub const ENTRY_COST: usize = 96;

/// Estimated bytes per cached directory besides its names (its slot, its empty table).
pub const DIR_COST: usize = 128;

/// What the table knows of a name in a directory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Known {
    /// The directory is not cached: ask the filesystem.
    Unknown,
    /// The directory is cached and has no such name.
    Absent,
    /// The name leads to this inode.
    Present(u32),
}

#[derive(Debug, Default)]
struct Dir {
    names: HashMap<Box<[u8]>, u32>,
    /// Estimated bytes charged for this directory.
    cost: usize,
    /// When it was last used (a counter of the table's uses).
    used: u64,
}

/// A directory's names as they are read, for [`NameCache::insert_dir`]: reading stops (and
/// the listing is refused) as soon as it is over the cache's whole budget.
#[derive(Debug)]
pub struct Listing {
    names: HashMap<Vec<u8>, u32>,
    cost: usize,
    budget: usize,
    /// Over budget: reading stopped.
    overflowed: bool,
    /// Reading failed part-way (the names are not all there).
    broken: bool,
}

impl Listing {
    /// Adds one entry ("." and ".." are left out); false when reading should stop.
    pub fn add(&mut self, name: &[u8], ino: u32) -> bool {
        if name == b"." || name == b".." || ino == 0 {
            return true;
        }
        self.cost += entry_cost(name);
        if self.cost > self.budget {
            self.overflowed = true;
            self.names = HashMap::new();
            return false;
        }
        self.names.insert(name.to_vec(), ino);
        true
    }

    /// Marks the listing as incomplete (the reader failed part-way).
    pub fn set_broken(&mut self) {
        self.broken = true;
    }
}

/// Per-directory name tables within a memory budget.
#[derive(Debug)]
pub struct NameCache {
    dirs: HashMap<u32, Dir>,
    /// Directories found larger than the budget: not read again until they change.
    oversize: HashSet<u32>,
    budget: usize,
    cost: usize,
    clock: u64,
}

impl Default for NameCache {
    fn default() -> NameCache {
        NameCache::with_budget(NAME_CACHE_BYTES)
    }
}

fn entry_cost(name: &[u8]) -> usize {
    ENTRY_COST + name.len()
}

impl NameCache {
    /// An empty table holding at most `budget` estimated bytes.
    pub fn with_budget(budget: usize) -> NameCache {
        NameCache {
            dirs: HashMap::new(),
            oversize: HashSet::new(),
            budget,
            cost: 0,
            clock: 0,
        }
    }

    fn tick(&mut self) -> u64 {
        self.clock += 1;
        self.clock
    }

    /// Whether `dir`'s names are held.
    #[cfg(test)]
    pub fn holds(&self, dir: u32) -> bool {
        self.dirs.contains_key(&dir)
    }

    /// Whether reading `dir`'s names is worth it: not held, and not known to be too large.
    pub fn wants(&self, dir: u32) -> bool {
        !self.dirs.contains_key(&dir) && !self.oversize.contains(&dir)
    }

    /// An empty listing to fill and give to [`NameCache::insert_dir`].
    pub fn listing(&self) -> Listing {
        Listing {
            names: HashMap::new(),
            cost: DIR_COST,
            budget: self.budget,
            overflowed: false,
            broken: false,
        }
    }

    /// What is known of `name` in `dir` (marks `dir` as used).
    pub fn get(&mut self, dir: u32, name: &[u8]) -> Known {
        let now = self.tick();
        match self.dirs.get_mut(&dir) {
            None => Known::Unknown,
            Some(d) => {
                d.used = now;
                d.names
                    .get(name)
                    .map_or(Known::Absent, |&ino| Known::Present(ino))
            }
        }
    }

    /// Whether `name` is known to be absent from `dir` (false: unknown or present).
    pub fn known_absent(&self, dir: u32, name: &[u8]) -> bool {
        self.dirs
            .get(&dir)
            .is_some_and(|d| !d.names.contains_key(name))
    }

    /// Holds every name of `dir` from a complete listing, evicting the least recently used
    /// directories to make room (sparing the most recently used other one, so that two
    /// directories used in turn do not evict each other). A listing over the whole budget
    /// marks `dir` as too large; a broken one is dropped.
    pub fn insert_dir(&mut self, dir: u32, listing: Listing) {
        self.forget_dir(dir);
        if listing.broken {
            return;
        }
        if listing.overflowed {
            self.oversize.insert(dir);
            return;
        }
        let cost = listing.cost;
        self.make_room(cost, true);
        let names = listing
            .names
            .into_iter()
            .map(|(name, ino)| (name.into_boxed_slice(), ino))
            .collect();
        let used = self.tick();
        self.cost += cost;
        self.dirs.insert(dir, Dir { names, cost, used });
    }

    /// Records that `name` in `dir` now leads to `ino` (a create or link), if `dir` is held.
    pub fn note_added(&mut self, dir: u32, name: &[u8], ino: u32) {
        let Some(d) = self.dirs.get_mut(&dir) else {
            return;
        };
        if d.names.insert(name.into(), ino).is_some() {
            return;
        }
        let cost = entry_cost(name);
        d.cost += cost;
        self.cost += cost;
        if self.cost > self.budget {
            // Others go first; the growing directory last, when it alone is over budget.
            let keep = d.used;
            d.used = u64::MAX;
            self.make_room(0, false);
            if let Some(d) = self.dirs.get_mut(&dir) {
                d.used = keep;
            }
            if self.cost > self.budget {
                self.forget_dir(dir);
            }
        }
    }

    /// Records that `name` is gone from `dir`, if `dir` is held.
    pub fn note_removed(&mut self, dir: u32, name: &[u8]) {
        if let Some(d) = self.dirs.get_mut(&dir) {
            if d.names.remove(name).is_some() {
                let cost = entry_cost(name);
                d.cost -= cost;
                self.cost -= cost;
            }
        }
    }

    /// Drops `dir`'s names (changed in a way not tracked, or gone), and its mark of too large.
    pub fn forget_dir(&mut self, dir: u32) {
        self.oversize.remove(&dir);
        if let Some(d) = self.dirs.remove(&dir) {
            self.cost -= d.cost;
        }
    }

    /// When `extra` more bytes do not fit, evicts least recently used directories (not those
    /// marked in use with `u64::MAX`, nor the most recently used one if `spare_recent`)
    /// until they fit in three quarters of the budget. Sparing one lets the total exceed the
    /// budget by at most one directory, itself within the budget.
    fn make_room(&mut self, extra: usize, spare_recent: bool) {
        if self.cost + extra <= self.budget {
            return;
        }
        let target = self.budget - self.budget / 4;
        let mut by_age: Vec<(u64, u32)> = self
            .dirs
            .iter()
            .filter(|(_, d)| d.used != u64::MAX)
            .map(|(&dir, d)| (d.used, dir))
            .collect();
        by_age.sort_unstable();
        if spare_recent {
            by_age.pop();
        }
        for (_, dir) in by_age {
            if self.cost + extra <= target {
                break;
            }
            self.forget_dir(dir);
        }
    }

    /// Estimated bytes held now.
    #[cfg(test)]
    pub fn cost(&self) -> usize {
        self.cost
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn listing(c: &NameCache, prefix: &str, n: usize) -> Listing {
        let mut l = c.listing();
        for i in 0..n {
            if !l.add(format!("{prefix}{i}").as_bytes(), i as u32 + 100) {
                break;
            }
        }
        l
    }

    #[test]
    fn lookups_answer_from_a_held_directory() {
        let mut c = NameCache::default();
        assert_eq!(c.get(2, b"a"), Known::Unknown);
        assert!(!c.known_absent(2, b"a"));
        c.insert_dir(2, listing(&c, "f", 3));
        assert_eq!(c.get(2, b"f1"), Known::Present(101));
        assert_eq!(c.get(2, b"nope"), Known::Absent);
        assert!(c.known_absent(2, b"nope"));
        c.note_added(2, b"new", 7);
        assert_eq!(c.get(2, b"new"), Known::Present(7));
        c.note_removed(2, b"f1");
        assert_eq!(c.get(2, b"f1"), Known::Absent);
        c.note_added(3, b"x", 9); // not held: stays unknown
        assert_eq!(c.get(3, b"x"), Known::Unknown);
        c.forget_dir(2);
        assert_eq!(c.get(2, b"f0"), Known::Unknown);
        assert_eq!(c.cost(), 0);
    }

    #[test]
    fn the_budget_evicts_the_least_recently_used_directory() {
        let per_dir = DIR_COST + 10 * entry_cost(b"f0");
        // Room for four; a fifth evicts down to three quarters: three are left.
        let mut c = NameCache::with_budget(4 * per_dir);
        for dir in 1..=4 {
            c.insert_dir(dir, listing(&c, "f", 10));
        }
        assert!((1..=4).all(|d| c.holds(d)));
        c.get(1, b"f0"); // 2, then 3, are now the least recently used
        c.insert_dir(5, listing(&c, "f", 10));
        assert!(c.holds(1) && !c.holds(2) && !c.holds(3) && c.holds(4) && c.holds(5));
        assert!(c.cost() <= 4 * per_dir);
    }

    #[test]
    fn a_directory_larger_than_the_budget_is_not_held() {
        let mut c = NameCache::with_budget(DIR_COST + 5 * entry_cost(b"f0"));
        c.insert_dir(1, listing(&c, "f", 3));
        c.insert_dir(2, listing(&c, "f", 100));
        assert!(!c.holds(2));
        assert!(c.holds(1), "a listing that cannot fit evicts nothing");
        // Growing past the budget evicts the others first, then the growing one.
        let budget = 2 * DIR_COST + 6 * entry_cost(b"f0");
        let mut c = NameCache::with_budget(budget);
        c.insert_dir(1, listing(&c, "f", 2));
        c.insert_dir(2, listing(&c, "f", 2));
        c.note_added(2, b"g0", 1);
        c.note_added(2, b"g1", 2);
        c.note_added(2, b"g2", 3);
        assert!(!c.holds(1) && c.holds(2));
        assert!(c.cost() <= budget);
        for i in 3..10 {
            c.note_added(2, format!("g{i}").as_bytes(), i);
        }
        assert!(!c.holds(2));
        assert_eq!(c.cost(), 0);
    }

    #[test]
    fn a_directory_over_budget_is_read_once_then_left_to_the_scan() {
        let mut c = NameCache::with_budget(DIR_COST + 10 * entry_cost(b"f0"));
        let mut l = c.listing();
        let taken = (0..100)
            .take_while(|i| l.add(format!("f{i}").as_bytes(), *i))
            .count();
        assert!(
            taken < 11,
            "reading stops once over budget ({taken} names taken)"
        );
        assert!(c.wants(7));
        c.insert_dir(7, l);
        assert!(
            !c.holds(7) && !c.wants(7),
            "known too large: not read again"
        );
        assert_eq!(c.get(7, b"f1"), Known::Unknown);
        c.forget_dir(7); // changed: worth a new look
        assert!(c.wants(7));
        // A listing whose reader failed part-way is neither held nor marked.
        let mut l = listing(&c, "g", 3);
        l.set_broken();
        c.insert_dir(8, l);
        assert!(!c.holds(8) && c.wants(8));
    }

    #[test]
    fn two_directories_used_in_turn_do_not_evict_each_other() {
        // Each fits, both together do not: the most recently used other one is spared.
        let one = DIR_COST + 60 * entry_cost(b"f00");
        let mut c = NameCache::with_budget(one + one / 2);
        for _ in 0..3 {
            c.insert_dir(1, listing(&c, "f", 60));
            c.get(1, b"f1");
            if !c.holds(2) {
                c.insert_dir(2, listing(&c, "f", 60));
            }
            assert!(c.holds(1) && c.holds(2));
        }
        // A third evicts the older of the two.
        c.get(2, b"f1");
        c.insert_dir(3, listing(&c, "f", 60));
        assert!(!c.holds(1) && c.holds(2) && c.holds(3));
    }

    #[test]
    fn cost_stays_within_the_budget_whatever_the_order() {
        let budget = 4 * DIR_COST + 50 * entry_cost(b"f00");
        let mut c = NameCache::with_budget(budget);
        for step in 0u32..2000 {
            let dir = step % 17;
            match step % 5 {
                0 => c.insert_dir(dir, listing(&c, "f", (step % 40) as usize)),
                1 => c.note_removed(dir, format!("f{}", step % 7).as_bytes()),
                4 => c.forget_dir(dir),
                _ => c.note_added(dir, format!("n{step}").as_bytes(), step),
            }
            // Within the budget, but for the most recently used directory, which is spared
            // and is itself within it.
            assert!(
                c.cost() <= 2 * budget,
                "step {step}: {} > 2 x {budget}",
                c.cost()
            );
        }
    }
}
