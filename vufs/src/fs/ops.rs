//! The FileSystem trait over the pieces of this module: each operation as steps.

use super::*;

impl FileSystem for VuFs {
    /// One serving thread suffices, so the daemon polls for requests (`busy_poll`): host
    /// calls are short metadata calls (file data passes through, FIFOs and devices are the
    /// kernel's), and one thread was faster than two on every figure of a real tree, two
    /// cold readers at once on a disk included; `max_threads=N` still serves with N. The
    /// host tree may change behind the mount (1 s caches). Access is left to the kernel
    /// (`default_permissions` under `allow_other`): in union modes vufs looks up, copies up
    /// and makes names as itself, so only a check against the view's attributes (search
    /// bits, sticky directories, chown rules) is complete; bind's host calls are checked
    /// again by the host as the caller.
    /// File data passes through to the host files where they cannot move while open
    /// ([`FileSystem::backing_file`]): reads and writes then need no request each. `flush`
    /// has nothing to do (host files are closed at release), so close(2) sends none.
    /// POSIX ACLs are the host's xattrs, in the kernel's form, and the host keeps mode and
    /// ACL in step when one is set: the kernel may cache them (`ls -l` then asks for no ACL
    /// of a file it has seen) and checks with them, always (default_permissions).
    /// With `cache=always` the kernel keeps attributes, names and listings for a day.
    fn capabilities(&self) -> Capabilities {
        let defaults = Capabilities::default();
        let always = self.options.caching == Caching::Always;
        Capabilities {
            passthrough: true,
            flush_is_noop: true,
            one_thread_suffices: true,
            posix_acls: true,
            cache: if always {
                CachePolicy {
                    attr_ttl: CACHE_ALWAYS_TTL,
                    entry_ttl: CACHE_ALWAYS_TTL,
                }
            } else {
                defaults.cache
            },
            cache_dirs: always,
            ..defaults
        }
    }

    fn lookup(&self, _ctx: &Context, parent: Ino, name: &OsStr) -> Result<Entry> {
        let path = self.child_path(parent, name)?;
        let (layer, st) = self.find(&path)?;
        Ok(self.attach(parent, name, layer, &path, st))
    }

    fn forget(&self, ino: Ino, count: u64) {
        let mut inodes = self.inodes();
        if let Some(node) = inodes.nodes.get_mut(&ino.0) {
            node.lookups = node.lookups.saturating_sub(count);
        }
        inodes.maybe_remove(ino.0);
    }

    fn getattr(&self, _ctx: &Context, ino: Ino, fh: Option<Fh>) -> Result<Attr> {
        let path = self.path_of(ino);
        if let Ok(path) = &path {
            match self.attr_of(ino, path) {
                Ok(a) => return Ok(a),
                Err(e) if fh.is_none() && e != Errno::ENOENT => return Err(e),
                Err(_) => {}
            }
        }
        // Unlinked but open: the handle still knows the file (the kernel names it on reads
        // and writes, not on fstat, so any open handle of the inode will do).
        let fd = match fh {
            Some(fh) => self.handle(fh)?,
            None => self.any_handle_of(ino.0).ok_or(Errno::ENOENT)?,
        };
        let st = rustix::fs::fstat(&*fd)?;
        Ok(to_attr(ino.0, &st))
    }

    fn setattr(&self, ctx: &Context, ino: Ino, set: &SetAttr) -> Result<Attr> {
        let path = self.path_of(ino)?;
        {
            let _g = self.lock_big();
            let set = &self.permitted_set(ctx, &path, set)?;
            let only_ch = set.size.is_none() && set.atime.is_none() && set.mtime.is_none();
            if self.route(&path) == Route::Union
                && only_ch
                && self.options.nochcopy
                && matches!(self.mode(), Mode::Cow | Mode::Mincow)
                && self.find(&path)?.0 == Layer::Lower
            {
                let v = VStat {
                    mode: set.mode.map(|m| m & 0o7777),
                    uid: set.uid,
                    gid: set.gid,
                    ..VStat::default()
                };
                let done = self.mode() == Mode::Mincow && {
                    let _c = self.creds(ctx);
                    self.apply_set(ctx, Layer::Lower, &path, set, false).is_ok()
                };
                if !done {
                    self.update_vstat(&path, &v)?;
                }
            } else {
                let try_lower = || self.apply_set(ctx, Layer::Lower, &path, set, false);
                if let Some(layer) = self.writable(ctx, &path, set.size, &try_lower)? {
                    let as_caller = layer == Layer::Lower || self.route(&path) != Route::Union;
                    // Taking set-id bits away after a write is the kernel's request
                    // (file_remove_privs) for any writer, owner or not: done as vufs.
                    let as_caller = as_caller && !self.only_drops_setid(&path, set);
                    self.apply_set(ctx, layer, &path, set, as_caller)?;
                }
            }
        }
        self.getattr(ctx, ino, set.fh)
    }

    fn readlink(&self, _ctx: &Context, ino: Ino) -> Result<Vec<u8>> {
        let path = self.path_of(ino)?;
        let (layer, _) = self.find(&path)?;
        let at = self.at(self.root(layer), &path)?;
        Ok(rustix::fs::readlinkat(at.dir(), at.name, Vec::new())?.into_bytes())
    }

    fn mknod(
        &self,
        ctx: &Context,
        parent: Ino,
        name: &OsStr,
        mode: u32,
        rdev: u32,
    ) -> Result<Entry> {
        let path = self.child_path(parent, name)?;
        let _g = self.lock_big();
        let fmt = mode & libc::S_IFMT;
        let perm = mode & 0o7777;
        let faked = std::cell::Cell::new(false);
        let union = self.route(&path) == Route::Union;
        let make = |root: BorrowedFd<'_>| -> Result<()> {
            let at = self.at(root, &path)?;
            let ft = rustix::fs::FileType::from_raw_mode(mode);
            // Device nodes in SOURCE are faked (a regular file and a vstat
            // entry), as the C vufs does without privileges: a daemon running
            // as root must not let a user make real device nodes. A name one
            // byte short of NAME_MAX has no room for the vstat suffix: then
            // only a root caller gets a node, a real one.
            let device = union
                && root.as_fd().as_raw_fd_eq(self.upper.as_fd())
                && (fmt == libc::S_IFCHR || fmt == libc::S_IFBLK);
            let recordable = layer::vstat_name_fits(name);
            if device && !recordable && ctx.uid != 0 {
                return Err(Errno::ENAMETOOLONG);
            }
            let fake = device && recordable;
            let made = if fake {
                Err(HostErrno::PERM)
            } else {
                rustix::fs::mknodat(
                    at.dir(),
                    at.name,
                    ft,
                    HostMode::from_raw_mode(perm),
                    rdev as u64,
                )
            };
            match made {
                Ok(()) => Ok(()),
                Err(HostErrno::PERM) if fake => {
                    rustix::fs::mknodat(
                        at.dir(),
                        at.name,
                        rustix::fs::FileType::RegularFile,
                        HostMode::from_raw_mode(perm),
                        0,
                    )?;
                    faked.set(true);
                    Ok(())
                }
                Err(e) => Err(e.into()),
            }
        };
        let layer = self.make_name(ctx, &path, &make)?;
        if layer == Layer::Upper && union {
            self.own_new(ctx, &path, Some(perm))?;
            if faked.get() {
                let dev = libc::makedev(libc::major(rdev as u64), libc::minor(rdev as u64));
                self.update_vstat(
                    &path,
                    &VStat {
                        kind: Some(fmt),
                        mode: Some(perm),
                        rdev: Some((libc::major(dev) as u32, libc::minor(dev) as u32)),
                        ..VStat::default()
                    },
                )?;
            }
        }
        let st = self.stat_at(self.root(layer), &path)?;
        Ok(self.attach(parent, name, layer, &path, st))
    }

    fn mkdir(&self, ctx: &Context, parent: Ino, name: &OsStr, mode: u32) -> Result<Entry> {
        let path = self.child_path(parent, name)?;
        let _g = self.lock_big();
        let was_deleted = self.route(&path) == Route::Union && self.deleted(&path);
        let make = |root: BorrowedFd<'_>| -> Result<()> {
            let at = self.at(root, &path)?;
            rustix::fs::mkdirat(at.dir(), at.name, HostMode::from_raw_mode(mode & 0o7777))?;
            Ok(())
        };
        let layer = self.make_name(ctx, &path, &make)?;
        if layer == Layer::Upper && self.route(&path) == Route::Union {
            self.own_new(ctx, &path, Some(mode & 0o7777))?;
            if was_deleted {
                self.make_opaque(&path)?;
            }
        } else {
            let _c = self.creds(ctx);
            let st = self.stat_at(self.root(layer), &path)?;
            if st.st_mode & 0o7777 != mode & 0o7777 {
                let _ = self.chmod_at(self.root(layer), &path, mode);
            }
        }
        let st = self.stat_at(self.root(layer), &path)?;
        Ok(self.attach(parent, name, layer, &path, st))
    }

    fn unlink(&self, ctx: &Context, parent: Ino, name: &OsStr) -> Result<()> {
        self.unlink_common(ctx, parent, name, false)
    }

    fn rmdir(&self, ctx: &Context, parent: Ino, name: &OsStr) -> Result<()> {
        self.unlink_common(ctx, parent, name, true)
    }

    fn symlink(&self, ctx: &Context, parent: Ino, name: &OsStr, target: &Path) -> Result<Entry> {
        let path = self.child_path(parent, name)?;
        let _g = self.lock_big();
        let make = |root: BorrowedFd<'_>| -> Result<()> {
            let at = self.at(root, &path)?;
            rustix::fs::symlinkat(target, at.dir(), at.name)?;
            Ok(())
        };
        let layer = self.make_name(ctx, &path, &make)?;
        if layer == Layer::Upper && self.route(&path) == Route::Union {
            self.own_new(ctx, &path, None)?;
        }
        let st = self.stat_at(self.root(layer), &path)?;
        Ok(self.attach(parent, name, layer, &path, st))
    }

    fn rename(
        &self,
        ctx: &Context,
        parent: Ino,
        name: &OsStr,
        new_parent: Ino,
        new_name: &OsStr,
        flags: u32,
    ) -> Result<()> {
        check_rename_flags(flags, RENAME_NOREPLACE | RENAME_EXCHANGE)?;
        let old = self.child_path(parent, name)?;
        let new = self.child_path(new_parent, new_name)?;
        let _g = self.lock_big();
        match (self.route(&old), self.route(&new)) {
            (Route::Direct(a), Route::Direct(b)) if a == b => {
                let _c = self.creds(ctx);
                let x = self.at(self.root(a), &old)?;
                let y = self.at(self.root(a), &new)?;
                rustix::fs::renameat_with(
                    x.dir(),
                    x.name,
                    y.dir(),
                    y.name,
                    rustix::fs::RenameFlags::from_bits_retain(flags),
                )?;
            }
            (Route::Union, Route::Union) => {
                let result = self.rename_union(ctx, &old, &new, flags);
                self.dircache.clear();
                result?
            }
            _ => return Err(Errno::EXDEV),
        }
        self.dircache.clear();
        let mut inodes = self.inodes();
        let moved = inodes
            .by_name
            .get(&(parent.0, name.to_os_string()))
            .copied();
        let other = inodes
            .by_name
            .get(&(new_parent.0, new_name.to_os_string()))
            .copied();
        if flags & RENAME_EXCHANGE != 0 {
            inodes.drop_dentry(parent.0, name);
            inodes.drop_dentry(new_parent.0, new_name);
            if let (Some(m), Some(o)) = (moved, other) {
                for (ino, p, n) in [(m, new_parent.0, new_name), (o, parent.0, name)] {
                    if inodes.nodes.contains_key(&ino) {
                        inodes.add_dentry(ino, p, n);
                        if let Some(node) = inodes.nodes.get_mut(&ino) {
                            let last = node.dentries.pop().expect("just added");
                            node.dentries.insert(0, last);
                        }
                    }
                }
            }
        } else {
            inodes.drop_dentry(new_parent.0, new_name);
            if let Some(m) = moved {
                // Keep the node alive while its name moves.
                if let Some(node) = inodes.nodes.get_mut(&m) {
                    node.lookups += 1;
                }
                inodes.drop_dentry(parent.0, name);
                if inodes.nodes.contains_key(&m) {
                    inodes.add_dentry(m, new_parent.0, new_name);
                    if let Some(node) = inodes.nodes.get_mut(&m) {
                        let last = node.dentries.pop().expect("just added");
                        node.dentries.insert(0, last);
                        node.lookups -= 1;
                    }
                    inodes.maybe_remove(m);
                }
            }
        }
        Ok(())
    }

    fn link(&self, ctx: &Context, ino: Ino, new_parent: Ino, new_name: &OsStr) -> Result<Entry> {
        let old = self.path_of(ino)?;
        let new = self.child_path(new_parent, new_name)?;
        let _g = self.lock_big();
        let link_in = |root: BorrowedFd<'_>| -> Result<()> {
            let a = self.at(root, &old)?;
            let b = self.at(root, &new)?;
            rustix::fs::linkat(a.dir(), a.name, b.dir(), b.name, AtFlags::empty())?;
            Ok(())
        };
        let layer = match (self.route(&old), self.route(&new)) {
            (Route::Direct(a), Route::Direct(b)) if a == b => {
                let _c = self.creds(ctx);
                link_in(self.root(a))?;
                a
            }
            (Route::Union, Route::Union) => {
                if self.exists(&new) {
                    return Err(Errno::EEXIST);
                }
                let (olayer, _) = self.find(&old)?;
                let mut done = None;
                match self.mode() {
                    Mode::Merge => {
                        if olayer == Layer::Upper || self.in_upper(&new) || self.deleted(&new) {
                            return Err(Errno::EROFS);
                        }
                        let _c = self.creds(ctx);
                        link_in(self.lower.as_fd())?;
                        done = Some(Layer::Lower);
                    }
                    Mode::Mincow if olayer == Layer::Lower && !self.deleted(&new) => {
                        let result = {
                            let _c = self.creds(ctx);
                            link_in(self.lower.as_fd())
                        };
                        match result {
                            Ok(()) => done = Some(Layer::Lower),
                            Err(e) if errno_is(e, REFUSED) || e == Errno::ENOENT => {}
                            Err(e) => return Err(e),
                        }
                    }
                    _ => {}
                }
                match done {
                    Some(l) => l,
                    None => {
                        if olayer == Layer::Lower {
                            self.copy_up(ctx, &old, None)?;
                        }
                        self.upper_parents(ctx, &new)?;
                        link_in(self.upper.as_fd())?;
                        if let Some(meta) = self.meta() {
                            let vold = layer::vstat_path(&old);
                            if self.meta_used.load(Ordering::Relaxed)
                                && self.stat_at(meta, &vold).is_ok()
                            {
                                let vnew = layer::vstat_path(&new);
                                host::make_parents(meta, &vnew, 0o700)?;
                                let a = self.at(meta, &vold)?;
                                let b = self.at(meta, &vnew)?;
                                let _ = rustix::fs::linkat(
                                    a.dir(),
                                    a.name,
                                    b.dir(),
                                    b.name,
                                    AtFlags::empty(),
                                );
                            }
                        }
                        self.dewhiteout(&new);
                        Layer::Upper
                    }
                }
            }
            _ => return Err(Errno::EXDEV),
        };
        let st = self.stat_at(self.root(layer), &new)?;
        Ok(self.attach(new_parent, new_name, layer, &new, st))
    }

    fn open(&self, ctx: &Context, ino: Ino, flags: i32) -> Result<Opened> {
        let path = self.path_of(ino)?;
        let write = wants_write(flags);
        let of = oflags(flags);
        let (layer, fd) = if write {
            let _g = self.lock_big();
            let lower_fd: std::cell::RefCell<Option<OwnedFd>> = std::cell::RefCell::new(None);
            let truncate = (flags & libc::O_TRUNC != 0).then_some(0);
            let try_lower = || -> Result<()> {
                let fd = self.open_in(self.lower.as_fd(), &path, of, HostMode::empty())?;
                *lower_fd.borrow_mut() = Some(fd);
                Ok(())
            };
            match self.writable(ctx, &path, truncate, &try_lower)? {
                None => (Layer::Lower, lower_fd.into_inner().ok_or(Errno::EIO)?),
                Some(layer) => {
                    let as_caller = layer == Layer::Lower || self.route(&path) != Route::Union;
                    (layer, self.open_file(ctx, layer, &path, of, as_caller)?)
                }
            }
        } else {
            let (layer, st) = self.find(&path)?;
            let as_caller = layer == Layer::Lower || self.route(&path) != Route::Union;
            if !as_caller {
                self.may_read(ctx, &path, st)?;
            }
            (layer, self.open_file(ctx, layer, &path, of, as_caller)?)
        };
        if (flags & libc::O_ACCMODE) == libc::O_RDONLY {
            // Sequential reads are the common case: a larger host readahead.
            let _ = rustix::fs::fadvise(&fd, 0, None, rustix::fs::Advice::Sequential);
        }
        let st = rustix::fs::fstat(&fd)?;
        let now = (st.st_mtime, st.st_mtime_nsec as u64, st.st_size);
        let keep_cache = {
            let mut inodes = self.inodes();
            match inodes.nodes.get_mut(&ino.0) {
                Some(node) => {
                    let keep = node.seen == Some(now);
                    node.seen = Some(now);
                    keep
                }
                None => false,
            }
        };
        let fh = self.new_handle(ino.0, of, fd, layer, &path);
        Ok(Opened {
            fh,
            keep_cache,
            direct_io: false,
        })
    }

    fn read(
        &self,
        _ctx: &Context,
        _ino: Ino,
        fh: Fh,
        offset: u64,
        buf: &mut [u8],
    ) -> Result<usize> {
        let fd = self.handle(fh)?;
        let mut done = 0;
        while done < buf.len() {
            let n = rustix::io::pread(&*fd, &mut buf[done..], offset + done as u64)?;
            if n == 0 {
                break;
            }
            done += n;
        }
        Ok(done)
    }

    fn write(&self, _ctx: &Context, ino: Ino, fh: Fh, offset: u64, data: &[u8]) -> Result<usize> {
        let fd = self.handle(fh)?;
        let mut done = 0;
        while done < data.len() {
            done += rustix::io::pwrite(&*fd, &data[done..], offset + done as u64)?;
        }
        if let Some(node) = self.inodes().nodes.get_mut(&ino.0) {
            node.seen = None;
        }
        Ok(done)
    }

    fn backing_file(&self, _ino: Ino, fh: Fh) -> Option<Arc<OwnedFd>> {
        self.stable_handle(fh)
    }

    fn release(&self, _ctx: &Context, _ino: Ino, fh: Fh) -> Result<()> {
        self.handles
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&fh.0);
        Ok(())
    }

    fn fsync(&self, _ctx: &Context, _ino: Ino, fh: Fh, datasync: bool) -> Result<()> {
        let fd = self.handle(fh)?;
        if datasync {
            rustix::fs::fdatasync(&*fd)?;
        } else {
            rustix::fs::fsync(&*fd)?;
        }
        Ok(())
    }

    fn opendir(&self, ctx: &Context, ino: Ino) -> Result<Fh> {
        let path = self.path_of(ino)?;
        if self.route(&path) == Route::Union {
            let (layer, st) = self.find(&path)?;
            if layer == Layer::Upper {
                self.may_read(ctx, &path, st)?;
            }
        }
        let mut listed = Vec::new();
        self.list(&path, &mut |name, kind, key| {
            listed.push((name.to_os_string(), kind, key));
            true
        })?;
        // The numbers the entries show when looked up (else the host's).
        let entries = {
            let inodes = self.inodes();
            listed
                .into_iter()
                .map(|(name, kind, key)| {
                    let number = inodes.numbers.shown(key).unwrap_or(key.2);
                    (name, kind, number)
                })
                .collect()
        };
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        self.dirs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(fh, Arc::new(DirList { entries }));
        Ok(Fh(fh))
    }

    fn readdir(
        &self,
        _ctx: &Context,
        ino: Ino,
        fh: Fh,
        offset: u64,
        sink: &mut dyn FnMut(DirEntry<'_>) -> bool,
    ) -> Result<()> {
        let list = self
            .dirs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&fh.0)
            .cloned()
            .ok_or(Errno::EBADF)?;
        let parent_ino = {
            let inodes = self.inodes();
            inodes
                .nodes
                .get(&ino.0)
                .and_then(|n| n.dentries.first().map(|d| d.0))
                .unwrap_or(Ino::ROOT.0)
        };
        let mut index = offset;
        while index < list.entries.len() as u64 + 2 {
            let (name, kind, eino): (&OsStr, FileKind, u64) = match index {
                0 => (OsStr::new("."), FileKind::Dir, ino.0),
                1 => (OsStr::new(".."), FileKind::Dir, parent_ino),
                i => {
                    let (name, kind, number) = &list.entries[(i - 2) as usize];
                    let known = self.inodes().by_name.get(&(ino.0, name.clone())).copied();
                    (name.as_os_str(), *kind, known.unwrap_or(*number))
                }
            };
            if !sink(DirEntry {
                ino: Ino(eino),
                next_offset: index + 1,
                kind,
                name,
            }) {
                break;
            }
            index += 1;
        }
        Ok(())
    }

    fn releasedir(&self, _ctx: &Context, _ino: Ino, fh: Fh) -> Result<()> {
        self.dirs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&fh.0);
        Ok(())
    }

    fn statfs(&self, _ctx: &Context) -> Result<StatFs> {
        let fd = if self.mode() == Mode::Merge {
            &self.lower
        } else {
            &self.upper
        };
        let s = rustix::fs::fstatfs(fd)?;
        Ok(StatFs {
            blocks: s.f_blocks,
            blocks_free: s.f_bfree,
            blocks_available: s.f_bavail,
            files: s.f_files,
            files_free: s.f_ffree,
            block_size: s.f_bsize as u32,
            name_max: s.f_namelen as u32,
            fragment_size: s.f_frsize as u32,
        })
    }

    fn create(
        &self,
        ctx: &Context,
        parent: Ino,
        name: &OsStr,
        mode: u32,
        flags: i32,
    ) -> Result<(Entry, Opened)> {
        let path = self.child_path(parent, name)?;
        let _g = self.lock_big();
        let of = oflags(flags);
        let perm = mode & 0o7777;
        let made: std::cell::RefCell<Option<OwnedFd>> = std::cell::RefCell::new(None);
        let make = |root: BorrowedFd<'_>| -> Result<()> {
            let fd = self.open_in(
                root,
                &path,
                of | OFlags::CREATE | OFlags::EXCL,
                HostMode::from_raw_mode(perm),
            )?;
            *made.borrow_mut() = Some(fd);
            Ok(())
        };
        let layer = self.make_name(ctx, &path, &make)?;
        let fd = made.into_inner().ok_or(Errno::EIO)?;
        // One fstat of the new file, taken again only if its mode or owner was changed.
        let mut st = rustix::fs::fstat(&fd)?;
        let stale = if layer == Layer::Upper && self.route(&path) == Route::Union {
            self.own_new_known(ctx, &path, Some(perm), Some(&st))?
        } else if st.st_mode & 0o7777 != perm {
            let _c = self.creds(ctx);
            let _ = rustix::fs::fchmod(&fd, HostMode::from_raw_mode(perm));
            true
        } else {
            false
        };
        if stale {
            st = rustix::fs::fstat(&fd)?;
        }
        let entry = self.attach(parent, name, layer, &path, st);
        let fh = self.new_handle(entry.attr.ino.0, of, fd, layer, &path);
        Ok((
            entry,
            Opened {
                fh,
                keep_cache: false,
                direct_io: false,
            },
        ))
    }

    fn getxattr(&self, _ctx: &Context, ino: Ino, name: &OsStr) -> Result<Vec<u8>> {
        let path = self.path_of(ino)?;
        let (_, fd) = self.open_shown(&path)?;
        let value = host::get_xattr(&host::proc_path(fd.as_fd()), name)?;
        if name.as_bytes() == vufuse_api::acl::ACCESS_XATTR {
            let st = rustix::fs::fstat(&fd)?;
            return Ok(self.acl_as_shown(&path, st, value));
        }
        Ok(value)
    }

    fn listxattr(&self, _ctx: &Context, ino: Ino) -> Result<Vec<Vec<u8>>> {
        let path = self.path_of(ino)?;
        let (_, fd) = self.open_shown(&path)?;
        host::list_xattrs(&host::proc_path(fd.as_fd()))
    }

    fn setxattr(
        &self,
        ctx: &Context,
        ino: Ino,
        name: &OsStr,
        value: &[u8],
        flags: i32,
    ) -> Result<()> {
        let path = self.path_of(ino)?;
        let _g = self.lock_big();
        let set = |root: BorrowedFd<'_>| -> Result<()> {
            let fd = self.open_o_path(root, &path)?;
            rustix::fs::setxattr(
                host::proc_path(fd.as_fd()).as_str(),
                name,
                value,
                rustix::fs::XattrFlags::from_bits_retain(flags as u32),
            )?;
            Ok(())
        };
        let try_lower = || set(self.lower.as_fd());
        if let Some(layer) = self.writable(ctx, &path, None, &try_lower)? {
            let _c = (layer == Layer::Lower || self.route(&path) != Route::Union)
                .then(|| self.creds(ctx));
            set(self.root(layer))?;
        }
        Ok(())
    }

    fn removexattr(&self, ctx: &Context, ino: Ino, name: &OsStr) -> Result<()> {
        let path = self.path_of(ino)?;
        let _g = self.lock_big();
        let remove = |root: BorrowedFd<'_>| -> Result<()> {
            let fd = self.open_o_path(root, &path)?;
            rustix::fs::removexattr(host::proc_path(fd.as_fd()).as_str(), name)?;
            Ok(())
        };
        let try_lower = || remove(self.lower.as_fd());
        if let Some(layer) = self.writable(ctx, &path, None, &try_lower)? {
            let _c = (layer == Layer::Lower || self.route(&path) != Route::Union)
                .then(|| self.creds(ctx));
            remove(self.root(layer))?;
        }
        Ok(())
    }
}
