//! The inode table: (layer, dev, ino) keys to stable numbers, and (parent, name) dentries to
//! the nodes the kernel holds.

use super::*;

pub(super) struct Node {
    pub(super) kind: FileKind,
    /// Names of this inode, (parent, name); the first is used for paths.
    pub(super) dentries: Vec<(u64, OsString)>,
    pub(super) lookups: u64,
    /// Dentries of other nodes naming this one as their parent.
    pub(super) children: u64,
    /// (mtime, mtime_nsec, size) at the last open, to keep the page cache.
    pub(super) seen: Option<(i64, u64, i64)>,
}

/// Host inode numbers below this fit the derived layout; the device index goes above.
const INO_BITS: u32 = 48;
/// Device indexes that fit below [`ALLOCATED`].
const MAX_DEVS: usize = 1 << (63 - INO_BITS);
/// Numbers from here up are handed out one by one, never derived.
const ALLOCATED: u64 = 1 << 63;

/// The number an object shows, as FUSE node ID and `st_ino` alike (fuser sends a
/// reply's `attr.ino` as the node ID): derived from the object's host identity, so that
/// it stays the same however often the kernel forgets the node and looks it up again.
///
/// - An object on SOURCE's device shows its host `st_ino`; one on the `n`th other
///   device met (the lower tree's, a mount inside either tree) shows
///   `n << 48 | st_ino` (overlayfs's `xino` idea), so numbers of different devices
///   never meet.
/// - The upper copy a copy-up makes shows its lower original's number for the rest of
///   the mount (an alias), so a file keeps its number when it moves to SOURCE.
/// - The root is 1 (FUSE's root ID); an object whose derived number would be 1 or not
///   fit (host inode numbers of 2^48 and up, too many devices), or whose derived number
///   the kernel still holds for an object of another type, gets an allocated number
///   (2^63 and up) that it keeps for the rest of the mount.
///
/// A number thus names one host object (or its copy) while that object lives, and the
/// generation stays 0: a number is given to another object only after the host itself
/// has reused the inode number, as the host's own `st_ino` is.
#[derive(Debug)]
pub(super) struct Numbers {
    /// Host devices in the order met; SOURCE's is first.
    devs: Vec<u64>,
    /// Keys that do not show their derived number: the root, upper copies, allocated.
    fixed: HashMap<Key, u64>,
    /// The next allocated number.
    next: u64,
}

impl Numbers {
    /// The numbering of a view whose root (SOURCE) has `root_key`, over a lower tree on
    /// device `lower_dev`.
    pub(super) fn new(root_key: Key, lower_dev: u64) -> Numbers {
        let mut devs = vec![root_key.1];
        if lower_dev != root_key.1 {
            devs.push(lower_dev);
        }
        let mut n = Numbers {
            devs,
            fixed: HashMap::new(),
            next: ALLOCATED,
        };
        n.fixed.insert(root_key, Ino::ROOT.0);
        n
    }

    /// The number derived from host inode `ino` on the device of index `index`, if it fits.
    fn derived(index: usize, ino: u64) -> Option<u64> {
        if index >= MAX_DEVS || ino == 0 || ino >= 1 << INO_BITS {
            return None;
        }
        let n = ((index as u64) << INO_BITS) | ino;
        (n != Ino::ROOT.0).then_some(n)
    }

    /// The number of the object with `key`.
    pub(super) fn number(&mut self, key: Key) -> u64 {
        if let Some(n) = self.shown(key) {
            return n;
        }
        let (_, dev, ino) = key;
        if !self.devs.contains(&dev) && self.devs.len() < MAX_DEVS {
            self.devs.push(dev);
            if let Some(n) = Self::derived(self.devs.len() - 1, ino) {
                return n;
            }
        }
        self.allocate(key)
    }

    /// The number `key` has, if it has one without [`Self::number`] giving it one (a
    /// directory listing's numbers, which the kernel does not hold).
    pub(super) fn shown(&self, key: Key) -> Option<u64> {
        if let Some(&n) = self.fixed.get(&key) {
            return Some(n);
        }
        let index = self.devs.iter().position(|&d| d == key.1)?;
        Self::derived(index, key.2)
    }

    /// Gives `key` a number of its own, for the rest of the mount.
    pub(super) fn allocate(&mut self, key: Key) -> u64 {
        let n = self.next;
        self.next += 1;
        self.fixed.insert(key, n);
        n
    }

    /// `key` (an upper copy) shows `number` (its original's) from now on.
    pub(super) fn alias(&mut self, key: Key, number: u64) {
        if self.fixed.get(&key) != Some(&Ino::ROOT.0) {
            self.fixed.insert(key, number);
        }
    }

    /// The host object of `key` is gone: its host number may come back for another one.
    pub(super) fn gone(&mut self, key: Key) {
        if self
            .fixed
            .get(&key)
            .is_some_and(|&n| n < ALLOCATED && n != Ino::ROOT.0)
        {
            self.fixed.remove(&key);
        }
    }
}

pub(super) struct Inodes {
    pub(super) nodes: HashMap<u64, Node>,
    pub(super) by_name: HashMap<(u64, OsString), u64>,
    pub(super) numbers: Numbers,
}

impl Inodes {
    pub(super) fn path(&self, ino: u64) -> Result<PathBuf> {
        let mut names: Vec<&OsStr> = Vec::new();
        let mut current = ino;
        while current != Ino::ROOT.0 {
            let node = self.nodes.get(&current).ok_or(Errno::ENOENT)?;
            let (parent, name) = node.dentries.first().ok_or(Errno::ENOENT)?;
            names.push(name);
            current = *parent;
            if names.len() > 4096 {
                return Err(Errno::ELOOP);
            }
        }
        let mut path = PathBuf::new();
        for name in names.iter().rev() {
            path.push(name);
        }
        Ok(path)
    }

    pub(super) fn add_dentry(&mut self, ino: u64, parent: u64, name: &OsStr) {
        if let Some(node) = self.nodes.get_mut(&ino) {
            node.dentries.push((parent, name.to_os_string()));
        }
        if let Some(p) = self.nodes.get_mut(&parent) {
            p.children += 1;
        }
        self.by_name.insert((parent, name.to_os_string()), ino);
    }

    /// Takes a lookup reference on the inode for `name` in `parent` with `key`.
    pub(super) fn attach(&mut self, parent: u64, name: &OsStr, key: Key, kind: FileKind) -> u64 {
        let mut ino = self.numbers.number(key);
        let dentry = (parent, name.to_os_string());
        if let Some(&known) = self.by_name.get(&dentry) {
            if known == ino && self.nodes.get(&ino).is_some_and(|n| n.kind == kind) {
                self.nodes.get_mut(&ino).expect("checked").lookups += 1;
                return ino;
            }
            // Another object has the name now (changed behind the mount).
            self.drop_dentry(parent, name);
        }
        if self.nodes.get(&ino).is_some_and(|n| n.kind != kind) {
            // The kernel may still hold the number for an object of another type whose
            // host inode number the host has reused: this one gets a number of its own.
            ino = self.numbers.allocate(key);
        }
        if let Some(node) = self.nodes.get_mut(&ino) {
            // Another name of a known object (a hard link).
            node.lookups += 1;
            self.add_dentry(ino, parent, name);
            return ino;
        }
        self.nodes.insert(
            ino,
            Node {
                kind,
                dentries: Vec::new(),
                lookups: 1,
                children: 0,
                seen: None,
            },
        );
        self.add_dentry(ino, parent, name);
        ino
    }

    /// Forgets the name `name` in `parent` (after unlink, rmdir, rename).
    pub(super) fn drop_dentry(&mut self, parent: u64, name: &OsStr) {
        let Some(ino) = self.by_name.remove(&(parent, name.to_os_string())) else {
            return;
        };
        if let Some(node) = self.nodes.get_mut(&ino) {
            node.dentries.retain(|(p, n)| !(*p == parent && n == name));
        }
        if let Some(p) = self.nodes.get_mut(&parent) {
            p.children = p.children.saturating_sub(1);
        }
        self.maybe_remove(parent);
        self.maybe_remove(ino);
    }

    pub(super) fn maybe_remove(&mut self, ino: u64) {
        if ino == Ino::ROOT.0 {
            return;
        }
        let remove = self
            .nodes
            .get(&ino)
            .is_some_and(|n| n.lookups == 0 && n.children == 0);
        if !remove {
            return;
        }
        let node = self.nodes.remove(&ino).expect("checked");
        for (parent, name) in node.dentries {
            self.by_name.remove(&(parent, name));
            if let Some(p) = self.nodes.get_mut(&parent) {
                p.children = p.children.saturating_sub(1);
            }
            self.maybe_remove(parent);
        }
    }

    /// The inode a view path names, if the kernel holds it.
    pub(super) fn find_path(&self, path: &Path) -> Option<u64> {
        let mut ino = Ino::ROOT.0;
        for c in path.components() {
            ino = *self.by_name.get(&(ino, c.as_os_str().to_os_string()))?;
        }
        Some(ino)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEV: u64 = 0x801;
    const OTHER: u64 = 0x802;

    #[test]
    fn numbers_are_the_hosts_and_fixed_ones_stay() {
        let root = (0, DEV, 500);
        let mut n = Numbers::new(root, DEV);
        assert_eq!(n.number(root), Ino::ROOT.0, "the root is FUSE's root");
        // SOURCE's device: the host number, from either layer, every time.
        assert_eq!(n.number((0, DEV, 42)), 42);
        assert_eq!(n.number((1, DEV, 42)), 42);
        assert_eq!(n.shown((0, DEV, 42)), Some(42));
        // Another device: its index above bit 48.
        assert_eq!(n.number((1, OTHER, 42)), 1 << 48 | 42);
        assert_eq!(n.number((1, OTHER, 42)), 1 << 48 | 42);
        // What does not fit (or would be the root) is allocated, once.
        let big = n.number((0, DEV, 1 << 48));
        assert!(big >= ALLOCATED);
        assert_eq!(n.number((0, DEV, 1 << 48)), big);
        let one = n.number((0, DEV, 1));
        assert!(one >= ALLOCATED && one != big);
        // A copy shows its original's number until the copy is gone from the host.
        n.alias((0, DEV, 77), 1 << 48 | 42);
        assert_eq!(n.number((0, DEV, 77)), 1 << 48 | 42);
        n.gone((0, DEV, 77));
        assert_eq!(n.number((0, DEV, 77)), 77);
        // Neither the root nor an allocated number is ever dropped.
        n.gone(root);
        n.gone((0, DEV, 1));
        assert_eq!(n.number(root), Ino::ROOT.0);
        assert_eq!(n.number((0, DEV, 1)), one);
    }

    #[test]
    fn the_lower_trees_device_has_index_one_from_the_start() {
        let n = Numbers::new((0, DEV, 2), OTHER);
        assert_eq!(n.shown((1, OTHER, 9)), Some(1 << 48 | 9));
        assert_eq!(
            n.shown((1, 0x999, 9)),
            None,
            "an unknown device has no number yet"
        );
    }

    #[test]
    fn a_held_number_of_another_type_is_not_given_to_a_new_object() {
        let root = (0, DEV, 2);
        let mut t = Inodes {
            nodes: HashMap::new(),
            by_name: HashMap::new(),
            numbers: Numbers::new(root, DEV),
        };
        t.nodes.insert(
            Ino::ROOT.0,
            Node {
                kind: FileKind::Dir,
                dentries: Vec::new(),
                lookups: 1,
                children: 0,
                seen: None,
            },
        );
        let file = t.attach(Ino::ROOT.0, OsStr::new("f"), (0, DEV, 30), FileKind::File);
        assert_eq!(file, 30);
        // The host reused inode 30 for a directory while the kernel holds the file.
        t.drop_dentry(Ino::ROOT.0, OsStr::new("f"));
        let dir = t.attach(Ino::ROOT.0, OsStr::new("d"), (0, DEV, 30), FileKind::Dir);
        assert!(dir >= ALLOCATED, "{dir}");
        // Forgotten and found again: the same numbers.
        for ino in [file, dir] {
            t.nodes.get_mut(&ino).unwrap().lookups = 0;
            t.maybe_remove(ino);
        }
        assert_eq!(
            t.attach(Ino::ROOT.0, OsStr::new("d"), (0, DEV, 30), FileKind::Dir),
            dir
        );
    }
}
