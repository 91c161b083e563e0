//! The FileSystem trait over the pieces of this crate: each operation as steps.

use crate::*;

impl FileSystem for ExFatFs {
    /// Every call takes one lock and every write is on the device when it returns: one
    /// serving thread loses nothing, and flush has nothing to do. Nothing but this driver
    /// changes the volume while it is mounted (the image lock): 60 s caches, and the kernel
    /// keeps directory listings across opens (it drops one when it changes that directory).
    /// exFAT has no owners: access is checked by the kernel against the `uid=`/`gid=`/mask
    /// view.
    fn capabilities(&self) -> Capabilities {
        Capabilities {
            cache: CachePolicy {
                attr_ttl: Duration::from_secs(60),
                entry_ttl: Duration::from_secs(60),
            },
            flush_is_noop: true,
            one_thread_suffices: true,
            cache_dirs: true,
            xattrs: false,
            ..Capabilities::default()
        }
    }

    /// Writes everything back, records PercentInUse and clears VolumeDirty.
    fn destroy(&self) {
        let mut st = self.lock();
        if self.opts.read_only {
            return;
        }
        let result = self.sync_locked(&mut st).and_then(|()| {
            let count = self.geo.cluster_count as u64;
            let used = count - st.bitmap.free() as u64;
            let percent = (used * 100 / count.max(1)) as u8;
            self.dev.write_all_at(&[percent], boot::PERCENT_OFFSET)?;
            self.set_volume_dirty(false)
        });
        if let Err(e) = result {
            eprintln!("exfat: writing the volume back at unmount failed: {e}");
        }
    }

    fn lookup(&self, _ctx: &Context, parent: Ino, name: &OsStr) -> Result<Entry> {
        let mut st = self.lock();
        self.lookup_locked(&mut st, parent, name)
    }

    fn forget(&self, ino: Ino, count: u64) {
        let mut st = self.lock();
        if let Some(node) = st.nodes.get_mut(&ino) {
            node.lookups = node.lookups.saturating_sub(count);
        }
        let dropped = self.maybe_drop(&mut st, ino);
        if let Err(e) = self.committed(&mut st, dropped) {
            eprintln!("exfat: freeing unlinked file {}: {e}", ino.0);
        }
    }

    fn getattr(&self, _ctx: &Context, ino: Ino, _fh: Option<Fh>) -> Result<Attr> {
        let mut st = self.lock();
        self.getattr_locked(&mut st, ino)
    }

    fn setattr(&self, _ctx: &Context, ino: Ino, set: &SetAttr) -> Result<Attr> {
        let mut st = self.lock();
        let result = (|| -> Result<Attr> {
            if set.uid.is_some_and(|uid| uid != self.opts.uid)
                || set.gid.is_some_and(|g| g != self.opts.gid)
            {
                return Err(Errno::EPERM);
            }
            if ino == Ino::ROOT {
                if set.size.is_some() {
                    return Err(Errno::EISDIR);
                }
                // The root has no entry set to keep times or attributes in.
                return Ok(self.root_attr(&st));
            }
            let changes = set.size.is_some()
                || set.mode.is_some()
                || set.atime.is_some()
                || set.mtime.is_some();
            if changes {
                self.check_writable()?;
            }
            if let Some(size) = set.size {
                self.resize(&mut st, ino, size)?;
            }
            if set.mode.is_some() || set.atime.is_some() || set.mtime.is_some() {
                let mut entry = self.set_of(&mut st, ino)?;
                let mut meta = entry.meta();
                if let Some(mode) = set.mode {
                    // exFAT keeps only "read-only"; other bits come from the mount options.
                    if mode & 0o200 == 0 {
                        meta.attr |= ATTR_READ_ONLY;
                    } else {
                        meta.attr &= !ATTR_READ_ONLY;
                    }
                }
                if let Some(t) = set.atime {
                    meta.accessed = self.resolve(t);
                }
                if let Some(t) = set.mtime {
                    meta.modified = self.resolve(t);
                }
                entry.set_meta(&meta);
                self.put_set(&mut st, ino, entry)?;
            }
            self.getattr_locked(&mut st, ino)
        })();
        self.committed(&mut st, result)
    }

    fn mknod(
        &self,
        ctx: &Context,
        parent: Ino,
        name: &OsStr,
        mode: u32,
        _rdev: u32,
    ) -> Result<Entry> {
        if FileKind::from_mode(mode) != Some(FileKind::File) {
            return Err(Errno::EPERM);
        }
        let (entry, opened) = self.create(ctx, parent, name, mode, libc::O_RDONLY)?;
        self.release(ctx, entry.attr.ino, opened.fh)?;
        Ok(entry)
    }

    fn mkdir(&self, _ctx: &Context, parent: Ino, name: &OsStr, _mode: u32) -> Result<Entry> {
        self.check_writable()?;
        let mut st = self.lock();
        let result = self.mkdir_locked(&mut st, parent, name);
        let result = result.and_then(|e| self.dir_changed(&mut st, parent).map(|()| e));
        self.committed(&mut st, result)
    }

    fn unlink(&self, _ctx: &Context, parent: Ino, name: &OsStr) -> Result<()> {
        self.check_writable()?;
        let mut st = self.lock();
        let result = self.unlink_locked(&mut st, parent, name, false);
        let result = result.and_then(|()| self.dir_changed(&mut st, parent));
        self.committed(&mut st, result)
    }

    fn rmdir(&self, _ctx: &Context, parent: Ino, name: &OsStr) -> Result<()> {
        self.check_writable()?;
        let mut st = self.lock();
        let result = self.unlink_locked(&mut st, parent, name, true);
        let result = result.and_then(|()| self.dir_changed(&mut st, parent));
        self.committed(&mut st, result)
    }

    /// Renames within and across directories; `RENAME_NOREPLACE` is honoured,
    /// `RENAME_EXCHANGE` is not supported (`EINVAL`).
    fn rename(
        &self,
        _ctx: &Context,
        parent: Ino,
        name: &OsStr,
        new_parent: Ino,
        new_name: &OsStr,
        flags: u32,
    ) -> Result<()> {
        self.check_writable()?;
        check_rename_flags(flags, RENAME_NOREPLACE)?;
        let mut st = self.lock();
        let result = self.rename_locked(&mut st, parent, name, new_parent, new_name, flags);
        let result = result.and_then(|()| self.dir_changed(&mut st, parent));
        let result = if new_parent == parent {
            result
        } else {
            result.and_then(|()| self.dir_changed(&mut st, new_parent))
        };
        self.committed(&mut st, result)
    }

    fn open(&self, _ctx: &Context, ino: Ino, flags: i32) -> Result<Opened> {
        let mut st = self.lock();
        if ino == Ino::ROOT || self.set_of(&mut st, ino)?.meta().is_dir() {
            return Err(Errno::EISDIR);
        }
        if flags & libc::O_ACCMODE != libc::O_RDONLY {
            self.check_writable()?;
        }
        let node = st.nodes.get_mut(&ino).ok_or(Errno::ENOENT)?;
        node.opens += 1;
        if let Some(loc) = node.loc {
            self.prefetch_siblings(&mut st, loc);
        }
        Ok(Opened {
            fh: Fh(0),
            keep_cache: true,
            direct_io: false,
        })
    }

    fn read(
        &self,
        _ctx: &Context,
        ino: Ino,
        _fh: Fh,
        offset: u64,
        buf: &mut [u8],
    ) -> Result<usize> {
        let mut st = self.lock();
        self.read_locked(&mut st, ino, offset, buf)
    }

    fn write(&self, _ctx: &Context, ino: Ino, _fh: Fh, offset: u64, data: &[u8]) -> Result<usize> {
        self.check_writable()?;
        let mut st = self.lock();
        let result = self.write_locked(&mut st, ino, offset, data);
        self.committed(&mut st, result)
    }

    fn release(&self, _ctx: &Context, ino: Ino, _fh: Fh) -> Result<()> {
        let mut st = self.lock();
        if let Some(node) = st.nodes.get_mut(&ino) {
            node.opens = node.opens.saturating_sub(1);
        }
        let result = self.maybe_drop(&mut st, ino);
        self.committed(&mut st, result)
    }

    fn fsync(&self, _ctx: &Context, _ino: Ino, _fh: Fh, _datasync: bool) -> Result<()> {
        let mut st = self.lock();
        self.sync_locked(&mut st)
    }

    fn fsyncdir(&self, _ctx: &Context, _ino: Ino, _fh: Fh, _datasync: bool) -> Result<()> {
        let mut st = self.lock();
        self.sync_locked(&mut st)
    }

    fn opendir(&self, _ctx: &Context, ino: Ino) -> Result<Fh> {
        let mut st = self.lock();
        let dir = Self::dir_of(&st, ino)?;
        self.load_dir(&mut st, dir)?;
        Ok(Fh(0))
    }

    fn readdir(
        &self,
        _ctx: &Context,
        ino: Ino,
        _fh: Fh,
        offset: u64,
        sink: &mut dyn FnMut(DirEntry<'_>) -> bool,
    ) -> Result<()> {
        let mut st = self.lock();
        let dir_id = Self::dir_of(&st, ino)?;
        for (i, name) in [".", ".."].iter().enumerate() {
            if offset <= i as u64
                && !sink(DirEntry {
                    ino: if i == 0 { ino } else { Ino::ROOT },
                    next_offset: i as u64 + 1,
                    kind: FileKind::Dir,
                    name: OsStr::new(name),
                })
            {
                return Ok(());
            }
        }
        let first_slot = offset.saturating_sub(2) as u32;
        let listed: Vec<(u32, String, bool)> = self
            .load_dir(&mut st, dir_id)?
            .entries
            .range(first_slot..)
            .map(|(&slot, n)| {
                (
                    slot,
                    n.name.clone(),
                    n.set.as_ref().is_some_and(|s| s.meta().is_dir()),
                )
            })
            .collect();
        for (slot, name, is_dir) in listed {
            let entry_ino = Self::ino_at(&mut st, Location { dir: dir_id, slot });
            if !sink(DirEntry {
                ino: entry_ino,
                next_offset: slot as u64 + 3,
                kind: if is_dir {
                    FileKind::Dir
                } else {
                    FileKind::File
                },
                name: OsStr::new(&name),
            }) {
                break;
            }
        }
        Ok(())
    }

    fn statfs(&self, _ctx: &Context) -> Result<StatFs> {
        let st = self.lock();
        let free = st.bitmap.free() as u64;
        Ok(StatFs {
            blocks: self.geo.cluster_count as u64,
            blocks_free: free,
            blocks_available: free,
            files: 0,
            files_free: 0,
            block_size: self.geo.cluster_size,
            name_max: 255,
            fragment_size: self.geo.cluster_size,
        })
    }

    fn create(
        &self,
        _ctx: &Context,
        parent: Ino,
        name: &OsStr,
        _mode: u32,
        _flags: i32,
    ) -> Result<(Entry, Opened)> {
        self.check_writable()?;
        let mut st = self.lock();
        let result = self.create_locked(&mut st, parent, name).and_then(|entry| {
            st.nodes.get_mut(&entry.attr.ino).ok_or(Errno::EIO)?.opens += 1;
            self.dir_changed(&mut st, parent)?;
            Ok(entry)
        });
        let entry = self.committed(&mut st, result)?;
        Ok((
            entry,
            Opened {
                fh: Fh(0),
                keep_cache: true,
                direct_io: false,
            },
        ))
    }
}
