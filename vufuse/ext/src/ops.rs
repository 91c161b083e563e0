//! The FileSystem trait over libext2fs: each operation as steps, under the one lock.

use super::*;

impl FileSystem for ExtFs {
    /// 60 s caches (nothing else changes the image while mounted); every write reaches the
    /// image before `write` returns (metadata included, by `commit`), so close(2) has nothing
    /// left to do; libext2fs is not thread-safe, so every call holds `ExtFs::lock` and one
    /// thread serves as well as two. Access checks are the kernel's (`default_permissions`).
    /// The image is this driver's alone (image lock), so the kernel keeps directory listings
    /// across opens. The writeback cache is safe too (`read` ignores the handle's access
    /// mode, `write` takes offsets as given) but not the default: measured on the untar of
    /// /usr/include it saves 14% of the requests (one write per file instead of 3.4, but a
    /// SETATTR of the kernel's times before tar's own), and it costs `rm -rf` one synchronous
    /// SETATTR (ctime) per unlinked file, +33%; `-o writeback_cache` turns it on. ACLs are
    /// kept in the kernel's form (libext2fs converts ext4's short form), so the kernel
    /// caches and checks them: a warm `ls -lR` of /usr/include asks for 44% fewer xattrs.
    fn capabilities(&self) -> Capabilities {
        Capabilities {
            cache: CachePolicy {
                attr_ttl: Duration::from_secs(60),
                entry_ttl: Duration::from_secs(60),
            },
            flush_is_noop: true,
            one_thread_suffices: true,
            cache_dirs: true,
            posix_acls: true,
            ..Capabilities::default()
        }
    }

    fn lookup(&self, _ctx: &Context, parent: Ino, name: &OsStr) -> Result<Entry> {
        let mut h = self.lock();
        let bytes = name.as_bytes();
        if bytes.len() > 255 {
            return Err(Errno::ENAMETOOLONG);
        }
        let ino = h.lookup_cached(ext_ino(parent), bytes)?;
        let st = Self::stat(&h, ino)?;
        Ok(Entry {
            attr: self.attr(&st),
            generation: st.generation as u64,
        })
    }

    fn getattr(&self, _ctx: &Context, ino: Ino, _fh: Option<Fh>) -> Result<Attr> {
        let h = self.lock();
        Ok(self.attr(&Self::stat(&h, ext_ino(ino))?))
    }

    fn readlink(&self, _ctx: &Context, ino: Ino) -> Result<Vec<u8>> {
        let h = self.lock();
        let mut buf = vec![0u8; 4096];
        let mut len = 0usize;
        // SAFETY: h.fs is open; buf is writable for its length.
        check(unsafe {
            vx_readlink(
                h.fs,
                ext_ino(ino),
                buf.as_mut_ptr() as *mut c_char,
                buf.len(),
                &mut len,
            )
        })?;
        buf.truncate(len);
        Ok(buf)
    }

    fn open(&self, _ctx: &Context, ino: Ino, flags: i32) -> Result<Opened> {
        if flags & libc::O_ACCMODE != libc::O_RDONLY && self.read_only {
            return Err(Errno::EROFS);
        }
        let mut h = self.lock();
        let st = Self::stat(&h, ext_ino(ino))?;
        if kind_of_mode(st.mode) == FileKind::Dir {
            return Err(Errno::EISDIR);
        }
        // A corrupt extent tree (a cycle, a node out of place) is refused
        // here, once, rather than read as made-up mappings.
        // SAFETY: h.fs is open.
        check(unsafe { vx_check_extents(h.fs, ext_ino(ino)) })?;
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        h.files.insert(fh, ext_ino(ino));
        Ok(Opened {
            fh: Fh(fh),
            keep_cache: true,
            direct_io: false,
        })
    }

    fn read(&self, _ctx: &Context, ino: Ino, fh: Fh, offset: u64, buf: &mut [u8]) -> Result<usize> {
        let mut h = self.lock();
        // A reader that goes on where it stopped gets the next 8 MiB prefetched.
        let sequential = offset == 0 || h.next_read.get(&fh.0) == Some(&offset);
        let due = offset + buf.len() as u64 > h.prefetch_at.get(&fh.0).copied().unwrap_or(0);
        let ahead = if sequential && (offset == 0 || due) {
            h.prefetch_at.insert(fh.0, offset + READAHEAD / 2);
            READAHEAD
        } else {
            0
        };
        let got = extent_read::read(h.fs, ext_ino(ino), offset, buf, ahead)?;
        h.next_read.insert(fh.0, offset + got as u64);
        Ok(got)
    }

    fn write(&self, ctx: &Context, ino: Ino, _fh: Fh, offset: u64, data: &[u8]) -> Result<usize> {
        self.writable()?;
        let mut h = self.lock_as(ctx);
        let (s, ns) = split_time(SystemTime::now());
        let result = extent_write::write(h.fs, ext_ino(ino), offset, data, s, ns);
        h.commit(result)
    }

    fn release(&self, _ctx: &Context, _ino: Ino, fh: Fh) -> Result<()> {
        let mut h = self.lock();
        h.next_read.remove(&fh.0);
        h.prefetch_at.remove(&fh.0);
        if let Some(ino) = h.files.remove(&fh.0) {
            if h.open_count(ino) == 0 && h.orphans.remove(&ino) {
                // The orphan's last link is gone and its last handle closed.
                let freed = orphans::free_inode(h.fs, ino);
                h.commit_removal(freed)?;
            }
        }
        Ok(())
    }

    fn fsync(&self, _ctx: &Context, _ino: Ino, _fh: Fh, _datasync: bool) -> Result<()> {
        if self.read_only {
            return Ok(());
        }
        let h = self.lock();
        // SAFETY: h.fs is open.
        check(unsafe { vx_flush(h.fs) })
    }

    fn setattr(&self, ctx: &Context, ino: Ino, set: &SetAttr) -> Result<Attr> {
        self.writable()?;
        let mut h = self.lock();
        let target = ext_ino(ino);
        // A size change marks mtime (and ctime) as truncate(2) and O_TRUNC must, unless the
        // caller sets mtime itself.
        let mut resized = false;
        if let Some(size) = set.size {
            let before = Self::stat(&h, target)?;
            if kind_of_mode(before.mode) == FileKind::Dir {
                return Err(Errno::EISDIR);
            }
            resized = before.size != size;
            // SAFETY: h.fs is open.
            check(unsafe { vx_check_extents(h.fs, target) })?;
            // SAFETY: h.fs is open.
            let truncated = check(unsafe { vx_truncate(h.fs, target, size) });
            h.commit_removal(truncated)?;
        }
        let _ = ctx;
        let (now_s, now_ns) = split_time(SystemTime::now());
        let (a_s, a_ns) = set
            .atime
            .map(|t| split_time(t.resolve()))
            .unwrap_or_default();
        let mtime = set
            .mtime
            .or_else(|| resized.then_some(vufuse_api::SetTime::Now));
        let (m_s, m_ns) = mtime.map(|t| split_time(t.resolve())).unwrap_or_default();
        // SAFETY: h.fs is open; all arguments are plain values.
        let changed = check(unsafe {
            vx_setattr(
                h.fs,
                target,
                c_int::from(set.mode.is_some()),
                set.mode.unwrap_or(0),
                c_int::from(set.uid.is_some()),
                set.uid.unwrap_or(0),
                c_int::from(set.gid.is_some()),
                set.gid.unwrap_or(0),
                c_int::from(set.atime.is_some()),
                a_s,
                a_ns,
                c_int::from(mtime.is_some()),
                m_s,
                m_ns,
                now_s,
                now_ns,
            )
        });
        let changed = match set.mode {
            Some(mode) => changed.and_then(|()| Self::chmod_access_acl(&h, target, mode)),
            None => changed,
        };
        h.commit(changed)?;
        Ok(self.attr(&Self::stat(&h, target)?))
    }

    fn mknod(
        &self,
        ctx: &Context,
        parent: Ino,
        name: &OsStr,
        mode: u32,
        rdev: u32,
    ) -> Result<Entry> {
        self.make_name(ctx, parent, name, |fs, new, ino| {
            // SAFETY: fs is open and held under the lock; new.name is NUL-terminated; ino is
            // a valid out-pointer.
            unsafe {
                vx_mknod(
                    fs,
                    new.parent,
                    new.name.as_ptr(),
                    mode,
                    rdev,
                    new.uid,
                    new.gid,
                    new.secs,
                    new.nanos,
                    new.absent,
                    ino,
                )
            }
        })
    }

    fn create(
        &self,
        ctx: &Context,
        parent: Ino,
        name: &OsStr,
        mode: u32,
        _flags: i32,
    ) -> Result<(Entry, Opened)> {
        let entry = self.mknod(ctx, parent, name, libc::S_IFREG | (mode & 0o7777), 0)?;
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        self.lock().files.insert(fh, ext_ino(entry.attr.ino));
        Ok((
            entry,
            Opened {
                fh: Fh(fh),
                keep_cache: true,
                direct_io: false,
            },
        ))
    }

    fn mkdir(&self, ctx: &Context, parent: Ino, name: &OsStr, mode: u32) -> Result<Entry> {
        self.make_name(ctx, parent, name, |fs, new, ino| {
            // SAFETY: as in mknod.
            unsafe {
                vx_mkdir(
                    fs,
                    new.parent,
                    new.name.as_ptr(),
                    mode,
                    new.uid,
                    new.gid,
                    new.secs,
                    new.nanos,
                    new.absent,
                    ino,
                )
            }
        })
    }

    fn symlink(
        &self,
        ctx: &Context,
        parent: Ino,
        name: &OsStr,
        target: &std::path::Path,
    ) -> Result<Entry> {
        let target =
            std::ffi::CString::new(target.as_os_str().as_bytes()).map_err(|_| Errno::EINVAL)?;
        self.make_name(ctx, parent, name, |fs, new, ino| {
            // SAFETY: as in mknod; target is a NUL-terminated string.
            unsafe {
                vx_symlink(
                    fs,
                    new.parent,
                    new.name.as_ptr(),
                    target.as_ptr(),
                    new.uid,
                    new.gid,
                    new.secs,
                    new.nanos,
                    new.absent,
                    ino,
                )
            }
        })
    }

    fn link(&self, ctx: &Context, ino: Ino, new_parent: Ino, new_name: &OsStr) -> Result<Entry> {
        self.writable()?;
        let name = c_name(new_name)?;
        let mut h = self.lock_as(ctx);
        let absent = c_int::from(h.known_absent(ext_ino(new_parent), name.as_bytes()));
        let (s, ns) = split_time(SystemTime::now());
        // SAFETY: h.fs is open; name is NUL-terminated.
        let linked = check(unsafe {
            vx_link(
                h.fs,
                ext_ino(ino),
                ext_ino(new_parent),
                name.as_ptr(),
                s,
                ns,
                absent,
            )
        });
        let linked = h.commit(linked).map(|()| ext_ino(ino));
        h.note_added(ext_ino(new_parent), name.as_bytes(), &linked);
        linked?;
        self.entry_of(&h, ext_ino(ino))
    }

    fn unlink(&self, _ctx: &Context, parent: Ino, name: &OsStr) -> Result<()> {
        self.remove(parent, name, false)
    }

    fn rmdir(&self, _ctx: &Context, parent: Ino, name: &OsStr) -> Result<()> {
        self.remove(parent, name, true)
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
        self.writable()?;
        check_rename_flags(flags, RENAME_NOREPLACE | RENAME_EXCHANGE)?;
        let (from, to) = (c_name(name)?, c_name(new_name)?);
        let mut h = self.lock_as(ctx);
        let c_flags = c_int::from(flags & RENAME_NOREPLACE != 0)
            | (c_int::from(flags & RENAME_EXCHANGE != 0) << 1);
        let (s, ns) = split_time(SystemTime::now());
        let mut freed = 0u32;
        h.forget_dir(ext_ino(parent));
        h.forget_dir(ext_ino(new_parent));
        // SAFETY: h.fs is open; both names are NUL-terminated; freed is a valid out-pointer.
        let renamed = check(unsafe {
            vx_rename(
                h.fs,
                ext_ino(parent),
                from.as_ptr(),
                ext_ino(new_parent),
                to.as_ptr(),
                c_flags,
                s,
                ns,
                &mut freed,
            )
        });
        let result = renamed.and_then(|()| {
            if freed != 0 {
                h.free_when_closed(freed)
            } else {
                Ok(())
            }
        });
        h.commit_removal(result)
    }

    fn setxattr(
        &self,
        ctx: &Context,
        ino: Ino,
        name: &OsStr,
        value: &[u8],
        flags: i32,
    ) -> Result<()> {
        self.writable()?;
        let name = std::ffi::CString::new(name.as_bytes()).map_err(|_| Errno::EINVAL)?;
        let mut h = self.lock_as(ctx);
        let c_flags = c_int::from(flags & libc::XATTR_CREATE != 0)
            | (c_int::from(flags & libc::XATTR_REPLACE != 0) << 1);
        let target = ext_ino(ino);
        let set = match name.as_bytes() {
            acl::ACCESS_XATTR => Self::set_access_acl(&h, target, &name, value, c_flags),
            acl::DEFAULT_XATTR => acl::Acl::parse(value)
                .and_then(|_| Self::put_xattr(&h, target, &name, Some(value), c_flags)),
            _ => Self::put_xattr(&h, target, &name, Some(value), c_flags),
        };
        h.commit(set)
    }

    fn removexattr(&self, _ctx: &Context, ino: Ino, name: &OsStr) -> Result<()> {
        self.writable()?;
        let name = std::ffi::CString::new(name.as_bytes()).map_err(|_| Errno::EINVAL)?;
        let mut h = self.lock();
        let removed = Self::put_xattr(&h, ext_ino(ino), &name, None, 0);
        h.commit_removal(removed)
    }

    fn destroy(&self) {
        if self.read_only {
            return;
        }
        let h = self.lock();
        // SAFETY: h.fs is open.
        let code = unsafe { vx_flush(h.fs) };
        if code != 0 {
            eprintln!(
                "ext: writing the filesystem back failed: {}",
                Errno::from_raw(code)
            );
        }
    }

    fn opendir(&self, _ctx: &Context, ino: Ino) -> Result<Fh> {
        let mut h = self.lock();
        let entries = Self::list(&h, ext_ino(ino))?;
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        h.dirs.insert(fh, entries);
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
        let mut h = self.lock();
        if !h.dirs.contains_key(&fh.0) {
            // A front end without opendir (e.g. a path-based one): list now.
            let entries = Self::list(&h, ext_ino(ino))?;
            h.dirs.insert(fh.0, entries);
        }
        let entries = &h.dirs[&fh.0];
        for (i, (entry_ino, kind, name)) in entries.iter().enumerate().skip(offset as usize) {
            let entry = DirEntry {
                ino: fuse_ino(*entry_ino),
                next_offset: i as u64 + 1,
                kind: *kind,
                name: OsStr::from_bytes(name),
            };
            if !sink(entry) {
                break;
            }
        }
        Ok(())
    }

    fn releasedir(&self, _ctx: &Context, _ino: Ino, fh: Fh) -> Result<()> {
        self.lock().dirs.remove(&fh.0);
        Ok(())
    }

    fn statfs(&self, _ctx: &Context) -> Result<StatFs> {
        let h = self.lock();
        let mut st = VxStatFs::default();
        // SAFETY: h.fs is open; st is a valid out-pointer.
        check(unsafe { vx_statfs(h.fs, &mut st) })?;
        Ok(StatFs {
            blocks: st.blocks,
            blocks_free: st.blocks_free,
            blocks_available: st.blocks_avail,
            files: st.files,
            files_free: st.files_free,
            block_size: st.block_size,
            name_max: st.name_max,
            fragment_size: st.block_size,
        })
    }

    fn getxattr(&self, _ctx: &Context, ino: Ino, name: &OsStr) -> Result<Vec<u8>> {
        let h = self.lock();
        Self::xattrs(&h, ext_ino(ino))?
            .into_iter()
            .find(|(n, _)| n.as_slice() == name.as_bytes())
            .map(|(_, v)| v)
            .ok_or(Errno::ENODATA)
    }

    fn listxattr(&self, _ctx: &Context, ino: Ino) -> Result<Vec<Vec<u8>>> {
        let h = self.lock();
        Ok(Self::xattrs(&h, ext_ino(ino))?
            .into_iter()
            .map(|(n, _)| n)
            .collect())
    }
}
