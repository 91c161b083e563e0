//! The inode table: (layer, dev, ino) keys and (parent, name) dentries to stable FUSE inodes.

use super::*;

pub(super) struct Node {
    pub(super) kind: FileKind,
    /// Names of this inode, (parent, name); the first is used for paths.
    pub(super) dentries: Vec<(u64, OsString)>,
    pub(super) lookups: u64,
    /// Dentries of other nodes naming this one as their parent.
    pub(super) children: u64,
    pub(super) keys: Vec<Key>,
    /// (mtime, mtime_nsec, size) at the last open, to keep the page cache.
    pub(super) seen: Option<(i64, u64, i64)>,
}

pub(super) struct Inodes {
    pub(super) nodes: HashMap<u64, Node>,
    pub(super) by_key: HashMap<Key, u64>,
    pub(super) by_name: HashMap<(u64, OsString), u64>,
    pub(super) next: u64,
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
        let dentry = (parent, name.to_os_string());
        if let Some(&ino) = self.by_name.get(&dentry) {
            let same = self.nodes.get(&ino).is_some_and(|n| n.kind == kind);
            if same {
                let node = self.nodes.get_mut(&ino).expect("checked");
                node.lookups += 1;
                if !node.keys.contains(&key) {
                    node.keys.push(key);
                    self.by_key.insert(key, ino);
                }
                return ino;
            }
            self.drop_dentry(parent, name);
        }
        if let Some(&ino) = self.by_key.get(&key) {
            if self.nodes.get(&ino).is_some_and(|n| n.kind == kind) {
                self.nodes.get_mut(&ino).expect("checked").lookups += 1;
                self.add_dentry(ino, parent, name);
                return ino;
            }
        }
        let ino = self.next;
        self.next += 1;
        self.nodes.insert(
            ino,
            Node {
                kind,
                dentries: Vec::new(),
                lookups: 1,
                children: 0,
                keys: vec![key],
                seen: None,
            },
        );
        self.by_key.insert(key, ino);
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
        for key in &node.keys {
            if self.by_key.get(key) == Some(&ino) {
                self.by_key.remove(key);
            }
        }
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
