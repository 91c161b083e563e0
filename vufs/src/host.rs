//! Safe access to host trees: every path is resolved below a directory fd
//! with `openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS)`,
//! and the last component is always acted on with `*at(parent, name)` and
//! no symlink following. A path never leaves its tree through `..` or a
//! symlink, whatever the tree contains.

use rustix::fs::{AtFlags, Mode, OFlags, ResolveFlags, Stat};
use rustix::io::Errno as HostErrno;
use std::ffi::{OsStr, OsString};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use vudev::Result;

/// The resolution rules for every path.
pub(crate) const RESOLVE: ResolveFlags = ResolveFlags::BENEATH
    .union(ResolveFlags::NO_SYMLINKS)
    .union(ResolveFlags::NO_MAGICLINKS);

/// Opens `path` below `dir` (the empty path is `dir` itself).
pub(crate) fn open_beneath(
    dir: BorrowedFd<'_>,
    path: &Path,
    flags: OFlags,
    mode: Mode,
) -> Result<OwnedFd> {
    let path: &Path = if path.as_os_str().is_empty() {
        Path::new(".")
    } else {
        path
    };
    if let Some((head, tail)) = split_for_path_max(path) {
        let head = open_beneath(dir, head, OFlags::PATH | OFlags::DIRECTORY, Mode::empty())?;
        return open_beneath(head.as_fd(), tail, flags, mode);
    }
    loop {
        match rustix::fs::openat2(dir, path, flags | OFlags::CLOEXEC, mode, RESOLVE) {
            Err(HostErrno::AGAIN) | Err(HostErrno::INTR) => continue,
            Err(e) => return Err(e.into()),
            Ok(fd) => return Ok(fd),
        }
    }
}

/// The kernel's limit on a path argument, the terminating NUL included.
const PATH_MAX: usize = libc::PATH_MAX as usize;

/// For a path too long for one system call (a view path near PATH_MAX, seen below `.-` with
/// its vstat suffix): a leading part that fits, and the rest, split at a `/`. Each part is
/// then resolved beneath the directory the one before it opened, so the rules still hold.
fn split_for_path_max(path: &Path) -> Option<(&Path, &Path)> {
    let bytes = path.as_os_str().as_bytes();
    if bytes.len() < PATH_MAX {
        return None;
    }
    let cut = bytes[..PATH_MAX - 1].iter().rposition(|&b| b == b'/')?;
    let head = Path::new(OsStr::from_bytes(&bytes[..cut]));
    let tail = Path::new(OsStr::from_bytes(&bytes[cut + 1..]));
    (!head.as_os_str().is_empty() && !tail.as_os_str().is_empty()).then_some((head, tail))
}

/// Recently used parent directories (`O_PATH` fds resolved below a layer
/// root), so a deep path is not re-walked on every call. Bounded: emptied
/// when full, and whenever the daemon removes or renames a directory.
pub(crate) struct DirCache {
    map: std::sync::Mutex<
        std::collections::HashMap<(i32, std::path::PathBuf), std::sync::Arc<OwnedFd>>,
    >,
}

/// Entries a [`DirCache`] holds at most.
const DIR_CACHE_MAX: usize = 512;

impl DirCache {
    pub(crate) fn new() -> DirCache {
        DirCache {
            map: std::sync::Mutex::new(std::collections::HashMap::new()),
        }
    }

    pub(crate) fn clear(&self) {
        self.map.lock().unwrap_or_else(|e| e.into_inner()).clear();
    }

    fn get(&self, base: BorrowedFd<'_>, dir: &Path) -> Result<std::sync::Arc<OwnedFd>> {
        use std::os::fd::AsRawFd;
        let key = (base.as_raw_fd(), dir.to_path_buf());
        if let Some(fd) = self.map.lock().unwrap_or_else(|e| e.into_inner()).get(&key) {
            return Ok(fd.clone());
        }
        let fd = std::sync::Arc::new(open_beneath(
            base,
            dir,
            OFlags::PATH | OFlags::DIRECTORY,
            Mode::empty(),
        )?);
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        if map.len() >= DIR_CACHE_MAX {
            map.clear();
        }
        map.insert(key, fd.clone());
        Ok(fd)
    }
}

/// The parent directory of `path` below `dir`, opened `O_PATH`, and the last name.
pub(crate) struct At<'a> {
    base: BorrowedFd<'a>,
    parent: Option<std::sync::Arc<OwnedFd>>,
    /// The last component (empty for the root).
    pub name: &'a OsStr,
}

impl<'a> At<'a> {
    /// Resolves the parent of `path` below `base`.
    pub(crate) fn new(base: BorrowedFd<'a>, path: &'a Path) -> Result<At<'a>> {
        let name = path.file_name().unwrap_or(OsStr::new(""));
        let parent = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => Some(std::sync::Arc::new(open_beneath(
                base,
                p,
                OFlags::PATH | OFlags::DIRECTORY,
                Mode::empty(),
            )?)),
            _ => None,
        };
        Ok(At { base, parent, name })
    }

    /// As [`At::new`], through `cache`.
    pub(crate) fn cached(cache: &DirCache, base: BorrowedFd<'a>, path: &'a Path) -> Result<At<'a>> {
        let name = path.file_name().unwrap_or(OsStr::new(""));
        let parent = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => Some(cache.get(base, p)?),
            _ => None,
        };
        Ok(At { base, parent, name })
    }

    /// Opens the name (the root itself for the empty path) with `flags`.
    pub(crate) fn open(&self, flags: OFlags, mode: Mode) -> Result<OwnedFd> {
        let name: &Path = if self.name.is_empty() {
            Path::new(".")
        } else {
            Path::new(self.name)
        };
        open_beneath(self.dir(), name, flags, mode)
    }

    /// The directory holding the name.
    pub(crate) fn dir(&self) -> BorrowedFd<'_> {
        match &self.parent {
            Some(fd) => fd.as_fd(),
            None => self.base,
        }
    }

    /// `lstat` of the name.
    pub(crate) fn stat(&self) -> Result<Stat> {
        if self.name.is_empty() {
            return Ok(rustix::fs::statat(self.dir(), "", AtFlags::EMPTY_PATH)?);
        }
        Ok(rustix::fs::statat(
            self.dir(),
            self.name,
            AtFlags::SYMLINK_NOFOLLOW,
        )?)
    }
}

/// The `/proc/self/fd/N` name of an `O_PATH` fd: the calls that have no
/// `*at` form (xattrs, chmod without following) act through it on exactly
/// the inode the fd holds.
pub(crate) fn proc_path(fd: BorrowedFd<'_>) -> String {
    use std::os::fd::AsRawFd;
    format!("/proc/self/fd/{}", fd.as_raw_fd())
}

/// `chmod` of the inode an `O_PATH` fd holds (a symlink: EOPNOTSUPP).
pub(crate) fn chmod_fd(fd: BorrowedFd<'_>, mode: u32) -> Result<()> {
    rustix::fs::chmodat(
        rustix::fs::CWD,
        proc_path(fd),
        Mode::from_raw_mode(mode & 0o7777),
        AtFlags::empty(),
    )?;
    Ok(())
}

/// One entry of a host directory listing.
pub(crate) struct HostEntry {
    pub name: OsString,
    pub kind: Option<u32>,
    pub ino: u64,
}

/// Lists the directory `path` below `dir` (without `.` and `..`).
pub(crate) fn list_dir(dir: BorrowedFd<'_>, path: &Path) -> Result<Vec<HostEntry>> {
    let fd = open_beneath(
        dir,
        path,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW,
        Mode::empty(),
    )?;
    let mut d = rustix::fs::Dir::new(fd)?;
    let mut out = Vec::new();
    while let Some(entry) = d.read() {
        let entry = entry?;
        let name = entry.file_name().to_bytes();
        if name == b"." || name == b".." {
            continue;
        }
        use rustix::fs::FileType as T;
        let kind = match entry.file_type() {
            T::RegularFile => Some(libc::S_IFREG),
            T::Directory => Some(libc::S_IFDIR),
            T::Symlink => Some(libc::S_IFLNK),
            T::Fifo => Some(libc::S_IFIFO),
            T::Socket => Some(libc::S_IFSOCK),
            T::CharacterDevice => Some(libc::S_IFCHR),
            T::BlockDevice => Some(libc::S_IFBLK),
            _ => None,
        };
        out.push(HostEntry {
            name: OsStr::from_bytes(name).to_os_string(),
            kind,
            ino: entry.ino(),
        });
    }
    Ok(out)
}

/// Removes `path` below `dir` and, if it is a directory, everything in it.
pub(crate) fn remove_tree(dir: BorrowedFd<'_>, path: &Path) -> Result<()> {
    let at = At::new(dir, path)?;
    match rustix::fs::unlinkat(at.dir(), at.name, AtFlags::empty()) {
        Ok(()) => return Ok(()),
        Err(HostErrno::ISDIR) | Err(HostErrno::PERM) => {}
        Err(e) => return Err(e.into()),
    }
    if let Ok(entries) = list_dir(dir, path) {
        for e in entries {
            remove_tree(dir, &path.join(&e.name))?;
        }
    }
    rustix::fs::unlinkat(at.dir(), at.name, AtFlags::REMOVEDIR)?;
    Ok(())
}

/// Creates every missing ancestor directory of `path` below `dir` with `mode`.
pub(crate) fn make_parents(dir: BorrowedFd<'_>, path: &Path, mode: u32) -> Result<()> {
    let Some(parent) = path.parent() else {
        return Ok(());
    };
    let mut prefix = std::path::PathBuf::new();
    for component in parent.components() {
        prefix.push(component);
        let at = At::new(dir, &prefix)?;
        match rustix::fs::mkdirat(at.dir(), at.name, Mode::from_raw_mode(mode)) {
            Ok(()) | Err(HostErrno::EXIST) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// Removes the empty ancestor directories of `path` below `dir`, deepest
/// first; true if it removed any.
pub(crate) fn remove_empty_parents(dir: BorrowedFd<'_>, path: &Path) -> bool {
    let mut removed = false;
    let mut current = path.parent();
    while let Some(p) = current {
        if p.as_os_str().is_empty() {
            break;
        }
        let Ok(at) = At::new(dir, p) else { break };
        if rustix::fs::unlinkat(at.dir(), at.name, AtFlags::REMOVEDIR).is_err() {
            break;
        }
        removed = true;
        current = p.parent();
    }
    removed
}

/// Reads up to `limit` bytes of the regular file `path` below `dir`.
pub(crate) fn read_small(dir: BorrowedFd<'_>, path: &Path, limit: usize) -> Result<Vec<u8>> {
    let fd = open_beneath(dir, path, OFlags::RDONLY | OFlags::NOFOLLOW, Mode::empty())?;
    let mut buf = vec![0u8; limit];
    let mut filled = 0;
    while filled < limit {
        let n = rustix::io::read(&fd, &mut buf[filled..])?;
        if n == 0 {
            break;
        }
        filled += n;
    }
    buf.truncate(filled);
    Ok(buf)
}

/// Writes `data` as the whole content of `path` below `dir` (created 0644).
pub(crate) fn write_small(dir: BorrowedFd<'_>, path: &Path, data: &[u8]) -> Result<()> {
    let fd = open_beneath(
        dir,
        path,
        OFlags::WRONLY | OFlags::CREATE | OFlags::TRUNC | OFlags::NOFOLLOW,
        Mode::from_raw_mode(0o644),
    )?;
    let mut done = 0;
    while done < data.len() {
        done += rustix::io::write(&fd, &data[done..])?;
    }
    Ok(())
}

/// Copies `len` bytes of `src` to `dst`, keeping holes (SEEK_DATA/SEEK_HOLE,
/// copy_file_range; pread/pwrite where those are not supported).
pub(crate) fn copy_data(src: BorrowedFd<'_>, dst: BorrowedFd<'_>, len: u64) -> Result<()> {
    use rustix::fs::SeekFrom;
    let mut offset = 0u64;
    while offset < len {
        let data = match rustix::fs::seek(src, SeekFrom::Data(offset)) {
            Ok(d) => d,
            Err(HostErrno::NXIO) => break,
            Err(_) => offset,
        };
        if data >= len {
            break;
        }
        let hole = rustix::fs::seek(src, SeekFrom::Hole(data))
            .unwrap_or(len)
            .min(len);
        copy_range(src, dst, data, hole)?;
        offset = hole.max(data + 1);
    }
    rustix::fs::ftruncate(dst, len)?;
    Ok(())
}

fn copy_range(src: BorrowedFd<'_>, dst: BorrowedFd<'_>, start: u64, end: u64) -> Result<()> {
    let mut input = start;
    let mut output = start;
    while input < end {
        let want = usize::try_from(end - input)
            .unwrap_or(usize::MAX)
            .min(1 << 30);
        match rustix::fs::copy_file_range(src, Some(&mut input), dst, Some(&mut output), want) {
            Ok(0) => return Ok(()),
            Ok(_) => {}
            Err(HostErrno::INTR) => {}
            Err(HostErrno::XDEV)
            | Err(HostErrno::INVAL)
            | Err(HostErrno::NOSYS)
            | Err(HostErrno::OPNOTSUPP) => return copy_plain(src, dst, input, end),
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

fn copy_plain(src: BorrowedFd<'_>, dst: BorrowedFd<'_>, mut offset: u64, end: u64) -> Result<()> {
    let mut buf = vec![0u8; 1 << 20];
    while offset < end {
        let want = usize::try_from(end - offset)
            .unwrap_or(usize::MAX)
            .min(buf.len());
        let n = rustix::io::pread(src, &mut buf[..want], offset)?;
        if n == 0 {
            break;
        }
        let mut done = 0;
        while done < n {
            done += rustix::io::pwrite(dst, &buf[done..n], offset + done as u64)?;
        }
        offset += n as u64;
    }
    Ok(())
}

/// Copies the extended attributes of `src` to `dst` (both `O_PATH` fds);
/// names the destination refuses (e.g. `trusted.*` as non-root) are skipped.
pub(crate) fn copy_xattrs(src: BorrowedFd<'_>, dst: BorrowedFd<'_>) {
    let src_path = proc_path(src);
    let dst_path = proc_path(dst);
    let Ok(names) = list_xattrs(&src_path) else {
        return;
    };
    for name in names {
        if let Ok(value) = get_xattr(&src_path, OsStr::from_bytes(&name)) {
            let _ = rustix::fs::setxattr(
                dst_path.as_str(),
                OsStr::from_bytes(&name),
                &value,
                rustix::fs::XattrFlags::empty(),
            );
        }
    }
}

/// All extended attribute names of the file at `path` (a /proc/self/fd name).
pub(crate) fn list_xattrs(path: &str) -> Result<Vec<Vec<u8>>> {
    loop {
        let size = rustix::fs::listxattr_query(path)?;
        let mut buf = vec![0u8; size];
        match rustix::fs::listxattr(path, &mut buf[..]) {
            Ok(n) => {
                buf.truncate(n);
                return Ok(buf
                    .split(|&b| b == 0)
                    .filter(|n| !n.is_empty())
                    .map(<[u8]>::to_vec)
                    .collect());
            }
            Err(HostErrno::RANGE) => continue,
            Err(e) => return Err(e.into()),
        }
    }
}

/// The value of extended attribute `name` of the file at `path`.
pub(crate) fn get_xattr(path: &str, name: &OsStr) -> Result<Vec<u8>> {
    loop {
        let size = rustix::fs::getxattr_query(path, name)?;
        let mut buf = vec![0u8; size];
        match rustix::fs::getxattr(path, name, &mut buf[..]) {
            Ok(n) => {
                buf.truncate(n);
                return Ok(buf);
            }
            Err(HostErrno::RANGE) => continue,
            Err(e) => return Err(e.into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_path_past_path_max_is_opened_in_parts() {
        let tmp = tempfile::tempdir().unwrap();
        let root =
            rustix::fs::open(tmp.path(), OFlags::PATH | OFlags::DIRECTORY, Mode::empty()).unwrap();
        let component = "c".repeat(200);
        let mut deep = std::path::PathBuf::new();
        while deep.as_os_str().len() < PATH_MAX + 300 {
            deep.push(&component);
        }
        let file = deep.join("f\u{7f}");
        assert!(split_for_path_max(&file).is_some());
        make_parents(root.as_fd(), &file, 0o700).unwrap();
        write_small(root.as_fd(), &file, b"type=c\n").unwrap();
        assert_eq!(read_small(root.as_fd(), &file, 64).unwrap(), b"type=c\n");
        assert!(split_for_path_max(Path::new("short/path")).is_none());
    }
}
