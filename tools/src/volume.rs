//! A filesystem inside an image, opened through vufuse's drivers (FAT or
//! ext, found by probing) and used by path: the [`FileSystem`] trait's
//! inode calls wrapped for a command-line tool.

use crate::fail;
use crate::util::{Failure, Outcome};
use std::ffi::{OsStr, OsString};
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;
use vudev::BlockDevice;
use vufuse_api::resolver::PathResolver;
use vufuse_api::{Attr, Context, Errno, Fh, FileKind, FileSystem, Ino, SetAttr, SetTime, StatFs};
use vufuse_ext::{looks_like_ext, ExtFs, ExtOptions};
use vufuse_fat::{looks_like_fat, FatFs, FatOptions};

/// The filesystem kinds vuimg works with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FsKind {
    /// FAT12/16/32.
    Fat,
    /// exFAT.
    ExFat,
    /// ext2/3/4.
    Ext,
}

impl FsKind {
    /// True where the format keeps permission bits and owners.
    pub fn keeps_modes(self) -> bool {
        self == FsKind::Ext
    }

    /// True where the format has symbolic links (ext; not FAT or exFAT).
    pub fn has_symlinks(self) -> bool {
        self == FsKind::Ext
    }

    /// True where a file can have several names (ext).
    pub fn has_hard_links(self) -> bool {
        self == FsKind::Ext
    }

    /// True where the format has fifos, sockets and device nodes (ext).
    pub fn has_special_files(self) -> bool {
        self == FsKind::Ext
    }

    /// Its name in messages.
    pub fn name(self) -> &'static str {
        match self {
            FsKind::Fat => "FAT",
            FsKind::ExFat => "exFAT",
            FsKind::Ext => "ext",
        }
    }
}

/// An extended attribute: name (with its namespace, "user.x") and value.
pub type Xattr = (Vec<u8>, Vec<u8>);

/// What is kept of a file besides its data.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Meta {
    /// Permission bits.
    pub perm: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Modification time.
    pub mtime: SystemTime,
    /// Access time.
    pub atime: SystemTime,
}

impl Meta {
    /// The metadata of a host file.
    pub fn of_host(md: &std::fs::Metadata) -> Meta {
        use std::os::unix::fs::MetadataExt;
        Meta {
            perm: md.mode() & 0o7777,
            uid: md.uid(),
            gid: md.gid(),
            mtime: md.modified().unwrap_or(SystemTime::UNIX_EPOCH),
            atime: md.accessed().unwrap_or(SystemTime::UNIX_EPOCH),
        }
    }

    /// The metadata a driver reports.
    pub fn of_attr(a: &Attr) -> Meta {
        Meta {
            perm: a.perm as u32,
            uid: a.uid,
            gid: a.gid,
            mtime: a.mtime,
            atime: a.atime,
        }
    }
}

/// An opened filesystem.
pub struct Volume {
    fs: Arc<dyn FileSystem>,
    /// Paths to inodes, with vufuse's dentry cache.
    resolver: PathResolver,
    /// FAT or ext.
    pub kind: FsKind,
    /// `IMAGE@N` as the user wrote it, for messages.
    pub name: String,
    ctx: Context,
    /// ext inode numbers created or changed (for timestamp normalisation).
    touched: Mutex<Vec<u32>>,
    /// Directories `mkdir_p` created as parents, in creation order.
    created_dirs: Mutex<Vec<(Ino, String)>>,
}

/// Why a device that carries FAT's signature and type string is still not a
/// valid FAT volume, if it is one of those.
fn broken_fat(dev: &dyn BlockDevice) -> Option<String> {
    let mut sector = [0u8; 512];
    dev.read_exact_at(&mut sector, 0).ok()?;
    let signed = sector[510..512] == [0x55, 0xAA];
    let says_fat = &sector[54..57] == b"FAT" || &sector[82..87] == b"FAT32";
    if !(signed && says_fat) {
        return None;
    }
    vufuse_fat::bpb::parse(&sector, dev.size()).err()
}

fn errno_text(e: Errno) -> String {
    e.to_string()
}

impl Volume {
    /// Opens the filesystem on `dev`, detecting FAT or ext.
    pub fn open(dev: Arc<dyn BlockDevice>, writable: bool, name: &str) -> Outcome<Volume> {
        Volume::open_at(dev, writable, name, None)
    }

    /// [`Volume::open`] with a fixed `clock` for the times a driver stamps by itself (exFAT's
    /// creation times), so a reproducible build gives the same bytes every time.
    pub fn open_at(
        dev: Arc<dyn BlockDevice>,
        writable: bool,
        name: &str,
        clock: Option<SystemTime>,
    ) -> Outcome<Volume> {
        let (fs, kind): (Arc<dyn FileSystem>, FsKind) =
            if vufuse_exfat::looks_like_exfat(dev.as_ref()) {
                let opts = vufuse_exfat::ExFatOptions {
                    read_only: !writable,
                    uid: 0,
                    gid: 0,
                    dmask: 0o022,
                    fmask: 0o022,
                    clock,
                    ..vufuse_exfat::ExFatOptions::default()
                };
                let fs = vufuse_exfat::ExFatFs::open(dev, opts)
                    .map_err(|e| fail!("{name}: corrupt or unsupported exFAT filesystem: {e}"))?;
                (Arc::new(fs), FsKind::ExFat)
            } else if looks_like_fat(dev.as_ref()) {
                let opts = FatOptions {
                    read_only: !writable,
                    uid: 0,
                    gid: 0,
                    dmask: 0o022,
                    fmask: 0o022,
                    ..FatOptions::default()
                };
                let fs = FatFs::open(dev, opts)
                    .map_err(|e| fail!("{name}: corrupt or unsupported FAT filesystem: {e}"))?;
                (Arc::new(fs), FsKind::Fat)
            } else if looks_like_ext(dev.as_ref()) {
                // The ext driver is gaining mount options; defaults for the rest.
                #[allow(clippy::needless_update)]
                let opts = ExtOptions {
                    read_only: !writable,
                    ..Default::default()
                };
                let fs = ExtFs::open(dev, opts)
                    .map_err(|e| fail!("{name}: corrupt or unsupported ext filesystem: {e}"))?;
                (Arc::new(fs), FsKind::Ext)
            } else {
                if let Some(why) = broken_fat(dev.as_ref()) {
                    return Err(fail!(
                        "{name}: corrupt FAT filesystem: {why} (fsck.fat may repair it)"
                    ));
                }
                return Err(fail!(
                    "{name}: no FAT or ext2/3/4 filesystem found (format it with `vuimg format`)"
                ));
            };
        fs.init()
            .map_err(|e| fail!("{name}: cannot start the filesystem: {e}"))?;
        Ok(Volume {
            // No eviction: the tool keeps inode numbers it resolved for the
            // whole command, and an evicted entry's forget could let the
            // driver drop a directory still in use. A command is short-lived.
            resolver: PathResolver::with_capacity(fs.clone(), usize::MAX),
            fs,
            kind,
            name: name.to_string(),
            ctx: Context {
                uid: 0,
                gid: 0,
                pid: std::process::id(),
                umask: Some(0),
            },
            touched: Mutex::new(vec![2]),
            created_dirs: Mutex::new(Vec::new()),
        })
    }

    /// Writes everything back and closes the filesystem.
    pub fn close(self) {
        self.fs.destroy();
    }

    /// ext inode numbers this session created or changed.
    pub fn touched_inodes(&self) -> Vec<u32> {
        let mut v = self.touched.lock().expect("not poisoned").clone();
        v.sort_unstable();
        v.dedup();
        v
    }

    fn touch(&self, ino: Ino) {
        if self.kind == FsKind::Ext {
            let raw = if ino == Ino::ROOT { 2 } else { ino.0 as u32 };
            self.touched.lock().expect("not poisoned").push(raw);
        }
    }

    fn err(&self, path: &str, e: Errno) -> Failure {
        fail!("{}:{path}: {}", self.name, errno_text(e))
    }

    /// Space and inode counts.
    pub fn statfs(&self) -> Outcome<StatFs> {
        self.fs
            .statfs(&self.ctx)
            .map_err(|e| fail!("{}: statfs: {e}", self.name))
    }

    /// The entry `name` in directory `parent`, if any.
    pub fn lookup(&self, parent: Ino, name: &OsStr) -> Result<Option<Attr>, Errno> {
        match self.fs.lookup(&self.ctx, parent, name) {
            Ok(e) => Ok(Some(e.attr)),
            Err(Errno::ENOENT) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Attributes of an inode.
    pub fn getattr(&self, ino: Ino) -> Result<Attr, Errno> {
        self.fs.getattr(&self.ctx, ino, None)
    }

    /// Follows an absolute path; `None` if some component is missing.
    pub fn resolve(&self, path: &str) -> Outcome<Option<Attr>> {
        match self.resolver.getattr(&self.ctx, std::path::Path::new(path)) {
            Ok(a) => Ok(Some(a)),
            Err(Errno::ENOENT) => Ok(None),
            Err(e) => Err(self.err(path, e)),
        }
    }

    /// Like [`Volume::resolve`] but a missing path is an error.
    pub fn resolve_existing(&self, path: &str) -> Outcome<Attr> {
        self.resolve(path)?
            .ok_or_else(|| self.err(path, Errno::ENOENT))
    }

    /// Entries of a directory without `.` and `..`, sorted by name.
    pub fn list(&self, dir: Ino) -> Result<Vec<(OsString, Ino, FileKind)>, Errno> {
        let fh = self.fs.opendir(&self.ctx, dir)?;
        let mut out = Vec::new();
        let mut offset = 0;
        loop {
            let mut got = 0;
            let result = self.fs.readdir(&self.ctx, dir, fh, offset, &mut |e| {
                got += 1;
                offset = e.next_offset;
                if e.name != "." && e.name != ".." {
                    out.push((e.name.to_os_string(), e.ino, e.kind));
                }
                true
            });
            if let Err(e) = result {
                let _ = self.fs.releasedir(&self.ctx, dir, fh);
                return Err(e);
            }
            if got == 0 {
                break;
            }
        }
        let _ = self.fs.releasedir(&self.ctx, dir, fh);
        out.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(out)
    }

    /// Target of a symbolic link.
    pub fn readlink(&self, ino: Ino) -> Result<Vec<u8>, Errno> {
        self.fs.readlink(&self.ctx, ino)
    }

    /// A reader over a file's bytes.
    pub fn reader(&self, ino: Ino) -> Result<FileReader<'_>, Errno> {
        let opened = self.fs.open(&self.ctx, ino, libc::O_RDONLY)?;
        Ok(FileReader {
            vol: self,
            ino,
            fh: opened.fh,
            offset: 0,
        })
    }

    /// The directory at `path`, created with its parents if missing.
    pub fn mkdir_p(&self, path: &str, meta: Option<&Meta>) -> Outcome<Ino> {
        if let Some(a) = self.resolve(path)? {
            if a.kind != FileKind::Dir {
                return Err(self.err(path, Errno::ENOTDIR));
            }
            return Ok(a.ino);
        }
        let mut ino = Ino::ROOT;
        let mut so_far = String::new();
        for part in path.split('/').filter(|p| !p.is_empty()) {
            so_far.push('/');
            so_far.push_str(part);
            ino = match self.resolver.child(&self.ctx, ino, OsStr::new(part)) {
                Ok(child) => {
                    let a = self.getattr(child).map_err(|e| self.err(&so_far, e))?;
                    if a.kind != FileKind::Dir {
                        return Err(self.err(&so_far, Errno::ENOTDIR));
                    }
                    child
                }
                Err(Errno::ENOENT) => {
                    let made = self.mkdir(ino, OsStr::new(part), meta, &so_far)?;
                    self.created_dirs
                        .lock()
                        .expect("not poisoned")
                        .push((made, so_far.clone()));
                    made
                }
                Err(e) => return Err(self.err(&so_far, e)),
            };
        }
        Ok(ino)
    }

    /// Directories created by [`Volume::mkdir_p`] since the last call.
    pub fn take_created_dirs(&self) -> Vec<(Ino, String)> {
        std::mem::take(&mut *self.created_dirs.lock().expect("not poisoned"))
    }

    /// Creates directory `name` in `parent`.
    pub fn mkdir(
        &self,
        parent: Ino,
        name: &OsStr,
        meta: Option<&Meta>,
        shown: &str,
    ) -> Outcome<Ino> {
        let mode = meta.map_or(0o755, |m| m.perm);
        let entry = self
            .fs
            .mkdir(&self.ctx, parent, name, mode)
            .map_err(|e| self.err(shown, e))?;
        self.touch(parent);
        self.touch(entry.attr.ino);
        Ok(entry.attr.ino)
    }

    /// Writes a regular file `name` in `parent` from `data` (replacing one
    /// that exists) and returns its inode.
    pub fn write_file(
        &self,
        parent: Ino,
        name: &OsStr,
        data: &mut dyn Read,
        meta: Option<&Meta>,
        shown: &str,
        progress: &mut dyn FnMut(u64),
    ) -> Outcome<Ino> {
        let mode = meta.map_or(0o644, |m| m.perm);
        let existing = self.lookup(parent, name).map_err(|e| self.err(shown, e))?;
        let (ino, fh) = match existing {
            Some(a) if a.kind == FileKind::Dir => return Err(self.err(shown, Errno::EISDIR)),
            Some(a) => {
                let opened = self
                    .fs
                    .open(&self.ctx, a.ino, libc::O_WRONLY | libc::O_TRUNC)
                    .map_err(|e| self.err(shown, e))?;
                let trunc = SetAttr {
                    size: Some(0),
                    fh: Some(opened.fh),
                    ..Default::default()
                };
                self.fs
                    .setattr(&self.ctx, a.ino, &trunc)
                    .map_err(|e| self.err(shown, e))?;
                (a.ino, opened.fh)
            }
            None => {
                let (entry, opened) = self
                    .fs
                    .create(
                        &self.ctx,
                        parent,
                        name,
                        libc::S_IFREG | mode,
                        libc::O_WRONLY,
                    )
                    .map_err(|e| self.err(shown, e))?;
                (entry.attr.ino, opened.fh)
            }
        };
        self.touch(parent);
        self.touch(ino);
        // Holes where the format has them: whole zero blocks are not written (as mkfs.ext4 -d).
        let grain = match self.kind {
            FsKind::Ext => Some(self.statfs()?.block_size.max(512) as usize),
            _ => None,
        };
        let sparse = grain.is_some();
        let mut buf = vec![0u8; 1 << 20];
        let mut offset = 0u64;
        let outcome = (|| -> Outcome {
            loop {
                let n = read_full(data, &mut buf).map_err(|e| fail!("{shown}: reading: {e}"))?;
                if n == 0 {
                    return Ok(());
                }
                for run in data_runs(&buf[..n], grain) {
                    self.write_all(ino, fh, offset + run.start as u64, &buf[run], shown)?;
                }
                offset += n as u64;
                progress(n as u64);
            }
        })()
        .and_then(|()| {
            // A file that ends in a hole: its size from the last byte read.
            let set = SetAttr {
                size: Some(offset),
                fh: Some(fh),
                ..Default::default()
            };
            let ends_in_hole = sparse && offset > 0;
            match ends_in_hole {
                true => self.fs.setattr(&self.ctx, ino, &set).map(drop),
                false => Ok(()),
            }
            .map_err(|e| self.err(shown, e))
        });
        let released = self.fs.release(&self.ctx, ino, fh);
        outcome?;
        released.map_err(|e| self.err(shown, e))?;
        if let Some(m) = meta {
            self.set_meta(ino, m, shown)?;
        }
        Ok(ino)
    }

    /// Removes a non-directory `name` from `parent` if it exists, so that a copy replaces it.
    fn clear_name(&self, parent: Ino, name: &OsStr, shown: &str) -> Outcome {
        match self.lookup(parent, name).map_err(|e| self.err(shown, e))? {
            Some(a) if a.kind == FileKind::Dir => Err(self.err(shown, Errno::EISDIR)),
            Some(_) => self.remove(parent, name, false, shown),
            None => Ok(()),
        }
    }

    /// Creates a fifo, socket or device node (ext only), replacing a file of that name.
    pub fn mknod(
        &self,
        parent: Ino,
        name: &OsStr,
        kind: FileKind,
        perm: u32,
        rdev: u32,
        shown: &str,
    ) -> Outcome<Ino> {
        self.clear_name(parent, name, shown)?;
        let entry = self
            .fs
            .mknod(&self.ctx, parent, name, kind.mode_bits() | perm, rdev)
            .map_err(|e| self.err(shown, e))?;
        self.touch(parent);
        self.touch(entry.attr.ino);
        Ok(entry.attr.ino)
    }

    /// Gives file `ino` the further name `name` in `parent` (a hard link), replacing a file of
    /// that name.
    pub fn link(&self, ino: Ino, parent: Ino, name: &OsStr, shown: &str) -> Outcome {
        self.clear_name(parent, name, shown)?;
        self.fs
            .link(&self.ctx, ino, parent, name)
            .map_err(|e| self.err(shown, e))?;
        self.touch(parent);
        self.touch(ino);
        Ok(())
    }

    /// The extended attributes of `ino` (none on formats without them).
    pub fn xattrs(&self, ino: Ino) -> Result<Vec<Xattr>, Errno> {
        if !self.kind.keeps_modes() {
            return Ok(Vec::new());
        }
        let mut out = Vec::new();
        for name in self.fs.listxattr(&self.ctx, ino)? {
            let value = self.fs.getxattr(&self.ctx, ino, OsStr::from_bytes(&name))?;
            out.push((name, value));
        }
        Ok(out)
    }

    /// Sets extended attributes on `ino` (ext).
    pub fn set_xattrs(&self, ino: Ino, xattrs: &[Xattr], shown: &str) -> Outcome {
        for (name, value) in xattrs {
            self.fs
                .setxattr(&self.ctx, ino, OsStr::from_bytes(name), value, 0)
                .map_err(|e| {
                    fail!(
                        "{}:{shown}: extended attribute {}: {e}",
                        self.name,
                        String::from_utf8_lossy(name)
                    )
                })?;
        }
        self.touch(ino);
        Ok(())
    }

    /// Creates a symbolic link (ext only; FAT has none), replacing a file of that name.
    pub fn symlink(&self, parent: Ino, name: &OsStr, target: &[u8], shown: &str) -> Outcome<Ino> {
        if !self.kind.has_symlinks() {
            return Err(fail!(
                "{}:{shown}: {} has no symbolic links",
                self.name,
                self.kind.name()
            ));
        }
        let target = std::path::Path::new(OsStr::from_bytes(target));
        self.clear_name(parent, name, shown)?;
        let entry = self
            .fs
            .symlink(&self.ctx, parent, name, target)
            .map_err(|e| self.err(shown, e))?;
        self.touch(parent);
        self.touch(entry.attr.ino);
        Ok(entry.attr.ino)
    }

    /// Writes all of `data` at `offset` of open file `ino`.
    fn write_all(&self, ino: Ino, fh: Fh, mut offset: u64, data: &[u8], shown: &str) -> Outcome {
        let mut done = 0;
        while done < data.len() {
            let w = self
                .fs
                .write(&self.ctx, ino, fh, offset, &data[done..])
                .map_err(|e| self.err(shown, e))?;
            if w == 0 {
                return Err(self.err(shown, Errno::ENOSPC));
            }
            done += w;
            offset += w as u64;
        }
        Ok(())
    }

    /// Applies times (and, where the format keeps them, mode and owner).
    pub fn set_meta(&self, ino: Ino, meta: &Meta, shown: &str) -> Outcome {
        let mut set = SetAttr {
            mtime: Some(SetTime::At(meta.mtime)),
            atime: Some(SetTime::At(meta.atime)),
            ..Default::default()
        };
        if self.kind.keeps_modes() {
            set.mode = Some(meta.perm);
            set.uid = Some(meta.uid);
            set.gid = Some(meta.gid);
        }
        self.fs
            .setattr(&self.ctx, ino, &set)
            .map_err(|e| self.err(shown, e))?;
        self.touch(ino);
        Ok(())
    }

    /// Removes `name` from `parent`; directories only when `recursive`.
    pub fn remove(&self, parent: Ino, name: &OsStr, recursive: bool, shown: &str) -> Outcome {
        let attr = self
            .lookup(parent, name)
            .map_err(|e| self.err(shown, e))?
            .ok_or_else(|| self.err(shown, Errno::ENOENT))?;
        self.touch(parent);
        if attr.kind == FileKind::Dir {
            if !recursive {
                return Err(fail!("{}:{shown}: is a directory (use -r)", self.name));
            }
            for (child, _, _) in self.list(attr.ino).map_err(|e| self.err(shown, e))? {
                let child_shown = format!(
                    "{}/{}",
                    shown.trim_end_matches('/'),
                    child.to_string_lossy()
                );
                self.remove(attr.ino, &child, true, &child_shown)?;
            }
            self.resolver
                .rmdir_in(&self.ctx, parent, name)
                .map_err(|e| self.err(shown, e))?;
        } else {
            self.resolver
                .unlink_in(&self.ctx, parent, name)
                .map_err(|e| self.err(shown, e))?;
        }
        Ok(())
    }

    /// Renames within this filesystem.
    pub fn rename(
        &self,
        parent: Ino,
        name: &OsStr,
        new_parent: Ino,
        new_name: &OsStr,
        shown: &str,
    ) -> Outcome {
        self.resolver
            .rename_in(&self.ctx, parent, name, new_parent, new_name, 0)
            .map_err(|e| self.err(shown, e))?;
        self.touch(parent);
        self.touch(new_parent);
        Ok(())
    }
}

/// The byte ranges of `buf` (which starts on a block boundary) to write: all of it, or with
/// a `grain` (the volume's block size) only the blocks that are not all zeros, adjacent ones
/// merged, so that zero blocks stay holes.
pub(crate) fn data_runs(buf: &[u8], grain: Option<usize>) -> Vec<std::ops::Range<usize>> {
    let Some(grain) = grain else {
        return std::iter::once(0..buf.len()).collect();
    };
    let mut runs: Vec<std::ops::Range<usize>> = Vec::new();
    for (i, block) in buf.chunks(grain).enumerate() {
        if block.iter().all(|&b| b == 0) {
            continue;
        }
        let (start, end) = (i * grain, i * grain + block.len());
        match runs.last_mut() {
            Some(last) if last.end == start => last.end = end,
            _ => runs.push(start..end),
        }
    }
    runs
}

/// Reads until `buf` is full or the end.
pub fn read_full(r: &mut dyn Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// A file in a volume read as a stream; the handle is released on drop.
pub struct FileReader<'a> {
    vol: &'a Volume,
    ino: Ino,
    fh: vufuse_api::Fh,
    offset: u64,
}

impl Read for FileReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self
            .vol
            .fs
            .read(&self.vol.ctx, self.ino, self.fh, self.offset, buf)
            .map_err(|e| std::io::Error::from_raw_os_error(e.raw()))?;
        self.offset += n as u64;
        Ok(n)
    }
}

impl Drop for FileReader<'_> {
    fn drop(&mut self) {
        let _ = self.vol.fs.release(&self.vol.ctx, self.ino, self.fh);
    }
}
