//! Path resolution with a dentry cache, shared by the path-based front ends
//! (VUOS modules, whose calls carry paths relative to the mount, and the
//! image tool), so a deep path is not re-walked from the root on every call.
//!
//! Each cached entry holds one lookup reference of the driver; evicting it
//! gives the reference back with `forget`, so the driver's counts stay true.
//! Callers that change names go through [`PathResolver::invalidate`].

use crate::fs::{Attr, Context, FileSystem, Ino};
use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::path::{Component, Path};
use std::sync::{Arc, Mutex};
use vudev::{Errno, Result};

/// Entries kept before the least recently used half is dropped.
const DEFAULT_CAPACITY: usize = 8192;

struct Cached {
    ino: Ino,
    last_use: u64,
}

struct Cache {
    entries: HashMap<(Ino, OsString), Cached>,
    clock: u64,
}

/// Resolves mount-relative paths (`/`, `/dir/file`) to inodes of a driver.
pub struct PathResolver {
    fs: Arc<dyn FileSystem>,
    cache: Mutex<Cache>,
    capacity: usize,
}

impl PathResolver {
    /// A resolver over `fs` with the default cache size.
    pub fn new(fs: Arc<dyn FileSystem>) -> PathResolver {
        PathResolver::with_capacity(fs, DEFAULT_CAPACITY)
    }

    /// A resolver keeping at most `capacity` cached names.
    pub fn with_capacity(fs: Arc<dyn FileSystem>, capacity: usize) -> PathResolver {
        PathResolver {
            fs,
            cache: Mutex::new(Cache {
                entries: HashMap::new(),
                clock: 0,
            }),
            capacity: capacity.max(1),
        }
    }

    /// The driver behind this resolver.
    pub fn fs(&self) -> &Arc<dyn FileSystem> {
        &self.fs
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Cache> {
        self.cache.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The inode of `name` in `parent`, from the cache or the driver.
    pub fn child(&self, ctx: &Context, parent: Ino, name: &OsStr) -> Result<Ino> {
        {
            let mut cache = self.lock();
            cache.clock += 1;
            let clock = cache.clock;
            if let Some(hit) = cache.entries.get_mut(&(parent, name.to_os_string())) {
                hit.last_use = clock;
                return Ok(hit.ino);
            }
        }
        let entry = self.fs.lookup(ctx, parent, name)?;
        let ino = entry.attr.ino;
        let mut cache = self.lock();
        let clock = cache.clock;
        let previous = cache.entries.insert(
            (parent, name.to_os_string()),
            Cached {
                ino,
                last_use: clock,
            },
        );
        if let Some(old) = previous {
            // Another thread cached it meanwhile: keep one reference only.
            self.fs.forget(old.ino, 1);
        }
        if cache.entries.len() > self.capacity {
            self.evict(&mut cache);
        }
        Ok(ino)
    }

    fn evict(&self, cache: &mut Cache) {
        let mut by_age: Vec<(u64, (Ino, OsString))> = cache
            .entries
            .iter()
            .map(|(k, v)| (v.last_use, k.clone()))
            .collect();
        by_age.sort_unstable_by_key(|(age, _)| *age);
        for (_, key) in by_age.into_iter().take(cache.entries.len() / 2) {
            if let Some(gone) = cache.entries.remove(&key) {
                self.fs.forget(gone.ino, 1);
            }
        }
    }

    /// Resolves a whole path; `.` is skipped and `..` goes up (never above the root).
    /// Symbolic links are not followed: the caller (umvu, the tool) resolves them.
    pub fn resolve(&self, ctx: &Context, path: &Path) -> Result<Ino> {
        let mut stack = vec![Ino::ROOT];
        for component in path.components() {
            match component {
                Component::RootDir | Component::CurDir => {}
                Component::ParentDir => {
                    if stack.len() > 1 {
                        stack.pop();
                    }
                }
                Component::Normal(name) => {
                    let parent = *stack.last().expect("root stays");
                    stack.push(self.child(ctx, parent, name)?);
                }
                Component::Prefix(_) => return Err(Errno::EINVAL),
            }
        }
        Ok(*stack.last().expect("root stays"))
    }

    /// Resolves everything but the last component: (parent inode, last name).
    /// `ENOENT` for the root itself, which has no parent entry.
    pub fn resolve_parent<'p>(&self, ctx: &Context, path: &'p Path) -> Result<(Ino, &'p OsStr)> {
        let name = path.file_name().ok_or(Errno::ENOENT)?;
        let parent = path.parent().unwrap_or(Path::new("/"));
        Ok((self.resolve(ctx, parent)?, name))
    }

    /// Attributes of the file at `path`.
    pub fn getattr(&self, ctx: &Context, path: &Path) -> Result<Attr> {
        let ino = self.resolve(ctx, path)?;
        self.fs.getattr(ctx, ino, None)
    }

    /// Removes the file at `path` and the name from the cache. Front ends (VUOS glue, vuimg)
    /// remove and rename through the resolver so its cache never outlives a name.
    pub fn unlink(&self, ctx: &Context, path: &Path) -> Result<()> {
        let (parent, name) = self.resolve_parent(ctx, path)?;
        self.unlink_in(ctx, parent, name)
    }

    /// Removes the empty directory at `path` and the name from the cache.
    pub fn rmdir(&self, ctx: &Context, path: &Path) -> Result<()> {
        let (parent, name) = self.resolve_parent(ctx, path)?;
        self.rmdir_in(ctx, parent, name)
    }

    /// Renames `from` to `to` (`renameat2` flags) and drops both names from the cache.
    pub fn rename(&self, ctx: &Context, from: &Path, to: &Path, flags: u32) -> Result<()> {
        let (parent, name) = self.resolve_parent(ctx, from)?;
        let (new_parent, new_name) = self.resolve_parent(ctx, to)?;
        self.rename_in(ctx, parent, name, new_parent, new_name, flags)
    }

    /// [`PathResolver::unlink`] of `name` in the directory `parent`.
    pub fn unlink_in(&self, ctx: &Context, parent: Ino, name: &OsStr) -> Result<()> {
        let result = self.fs.unlink(ctx, parent, name);
        self.invalidate(parent, name);
        result
    }

    /// [`PathResolver::rmdir`] of `name` in the directory `parent`.
    pub fn rmdir_in(&self, ctx: &Context, parent: Ino, name: &OsStr) -> Result<()> {
        let result = self.fs.rmdir(ctx, parent, name);
        self.invalidate(parent, name);
        result
    }

    /// [`PathResolver::rename`] by directory and name: after a rename, and an exchange in
    /// particular, neither name leads where it did, so both are dropped.
    pub fn rename_in(
        &self,
        ctx: &Context,
        parent: Ino,
        name: &OsStr,
        new_parent: Ino,
        new_name: &OsStr,
        flags: u32,
    ) -> Result<()> {
        let result = self
            .fs
            .rename(ctx, parent, name, new_parent, new_name, flags);
        self.invalidate(parent, name);
        self.invalidate(new_parent, new_name);
        result
    }

    /// Drops the cached entry `name` of `parent` (after unlink, rmdir, rename).
    pub fn invalidate(&self, parent: Ino, name: &OsStr) {
        let removed = self.lock().entries.remove(&(parent, name.to_os_string()));
        if let Some(gone) = removed {
            self.fs.forget(gone.ino, 1);
        }
    }

    /// Drops every cached entry (unmount), giving all references back.
    pub fn clear(&self) {
        let drained: Vec<Cached> = self.lock().entries.drain().map(|(_, v)| v).collect();
        for gone in drained {
            self.fs.forget(gone.ino, 1);
        }
    }

    /// Number of cached names.
    pub fn cached(&self) -> usize {
        self.lock().entries.len()
    }
}

impl Drop for PathResolver {
    fn drop(&mut self) {
        self.clear();
    }
}
