//! The FUSE operations vufuse calls, each a thin adapter: C arguments in, one
//! [`FileSystem`](vufuse_api::FileSystem) call through the path resolver, `-errno` out.
//! Every entry runs inside `vuglue::ret_neg_errno`, so no panic reaches C.

use crate::abi::{FillDir, FuseFileInfo, FuseOperations};
use crate::fuse_get_context;
use crate::mount::{Mount, OpenFile};
use std::ffi::{c_char, c_int, c_uint, c_void, CStr, CString, OsStr};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};
use vufuse_api::acl::{self, Acl};
use vufuse_api::privileges;
use vufuse_api::{Attr, Context, Errno, FileKind, Ino, SetAttr, SetTime};

/// The table handed to `fuse_main_real`.
pub static OPERATIONS: FuseOperations = FuseOperations {
    getattr: Some(getattr),
    readlink: Some(readlink),
    mknod: Some(mknod),
    mkdir: Some(mkdir),
    unlink: Some(unlink),
    rmdir: Some(rmdir),
    symlink: Some(symlink),
    rename: Some(rename),
    link: Some(link),
    chmod: Some(chmod),
    chown: Some(chown),
    truncate: Some(truncate),
    open: Some(open),
    read: Some(read),
    write: Some(write),
    statfs: Some(statfs),
    flush: Some(flush),
    release: Some(release),
    fsync: Some(fsync),
    setxattr: None,
    getxattr: None,
    listxattr: None,
    removexattr: None,
    opendir: Some(opendir),
    readdir: Some(readdir),
    releasedir: Some(releasedir),
    fsyncdir: None,
    init: Some(init),
    destroy: Some(destroy),
    access: Some(access),
    create: Some(create),
    lock: None,
    utimens: Some(utimens),
    bmap: None,
    ioctl: None,
    poll: None,
    write_buf: None,
    read_buf: None,
    flock: None,
    fallocate: None,
    copy_file_range: None,
    lseek: None,
};

/// The largest single read or write passed on (the return value is an `int`).
const MAX_IO: usize = 1 << 30;

/// The mount of the operation being served and its caller.
fn current() -> Result<(&'static Mount, Context), Errno> {
    // SAFETY: vufuse's fuse_get_context returns NULL or this thread's context,
    // valid for the duration of the operation.
    let fc = unsafe { fuse_get_context().as_ref() }.ok_or(Errno::EIO)?;
    // SAFETY: private_data is the Box<Mount> run_main passed (init returns it
    // unchanged); it lives until fuse_main_real returns, after every operation.
    let mount = unsafe { fc.private_data.cast::<Mount>().as_ref() }.ok_or(Errno::EIO)?;
    let ctx = Context {
        uid: fc.uid,
        gid: fc.gid,
        pid: u32::try_from(fc.pid).unwrap_or(0),
        // umvu has already applied the caller's umask to every mode it passes.
        umask: None,
    };
    Ok((mount, ctx))
}

/// Runs an operation of the current mount with the FUSE return convention.
fn serve(body: impl FnOnce(&Mount, &Context) -> Result<c_int, Errno>) -> c_int {
    vuglue::ret_neg_errno(|| {
        let (mount, ctx) = current()?;
        body(mount, &ctx)
    })
}

/// A path argument (mount-relative, `/` for the root).
///
/// # Safety
/// `ptr` is NULL or a NUL-terminated string alive for `'a`.
unsafe fn path<'a>(ptr: *const c_char) -> Result<&'a Path, Errno> {
    if ptr.is_null() {
        return Err(Errno::from_raw(libc::EFAULT));
    }
    // SAFETY: per this function's contract.
    let bytes = unsafe { CStr::from_ptr(ptr) }.to_bytes();
    Ok(Path::new(OsStr::from_bytes(bytes)))
}

/// The open file `fi` names, if `fi` is given.
///
/// # Safety
/// `fi` is NULL or points to a `fuse_file_info` vufuse owns.
unsafe fn opened(mount: &Mount, fi: *mut FuseFileInfo) -> Result<Option<OpenFile>, Errno> {
    // SAFETY: per this function's contract.
    match unsafe { fi.as_ref() } {
        Some(fi) if fi.fh != 0 => mount.get(fi.fh).map(Some),
        _ => Ok(None),
    }
}

/// The inode `fi` names, else the one at `path`.
///
/// # Safety
/// As [`path`] and [`opened`].
unsafe fn target(
    mount: &Mount,
    ctx: &Context,
    path_ptr: *const c_char,
    fi: *mut FuseFileInfo,
) -> Result<(Ino, Option<OpenFile>), Errno> {
    // SAFETY: forwarded contract.
    if let Some(file) = unsafe { opened(mount, fi) }? {
        return Ok((file.ino, Some(file)));
    }
    // SAFETY: forwarded contract.
    let ino = mount.resolver.resolve(ctx, unsafe { path(path_ptr) }?)?;
    Ok((ino, None))
}

/// Kernel (FUSE) device number encoding, as drivers keep `rdev`.
fn encode_dev(dev: libc::dev_t) -> u32 {
    let (major, minor) = (libc::major(dev), libc::minor(dev));
    (minor & 0xff) | ((major & 0xfff) << 8) | ((minor & !0xff) << 12)
}

fn decode_dev(rdev: u32) -> libc::dev_t {
    libc::makedev(
        (rdev >> 8) & 0xfff,
        (rdev & 0xff) | ((rdev >> 12) & 0xfff00),
    )
}

fn split_time(t: SystemTime) -> (i64, i64) {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => (d.as_secs() as i64, i64::from(d.subsec_nanos())),
        Err(e) => {
            let d = e.duration();
            let (secs, nanos) = (d.as_secs() as i64, i64::from(d.subsec_nanos()));
            if nanos == 0 {
                (-secs, 0)
            } else {
                (-secs - 1, 1_000_000_000 - nanos)
            }
        }
    }
}

fn fill_stat(attr: &Attr, st: &mut libc::stat) {
    // SAFETY: libc::stat is plain data; all-zero is a valid value.
    *st = unsafe { std::mem::zeroed() };
    st.st_ino = attr.ino.0;
    st.st_mode = attr.kind.mode_bits() | u32::from(attr.perm & 0o7777);
    st.st_nlink = attr.nlink.into();
    st.st_uid = attr.uid;
    st.st_gid = attr.gid;
    st.st_rdev = decode_dev(attr.rdev);
    st.st_size = i64::try_from(attr.size).unwrap_or(i64::MAX);
    st.st_blksize = attr.blksize.into();
    st.st_blocks = i64::try_from(attr.blocks).unwrap_or(i64::MAX);
    (st.st_atime, st.st_atime_nsec) = split_time(attr.atime);
    (st.st_mtime, st.st_mtime_nsec) = split_time(attr.mtime);
    (st.st_ctime, st.st_ctime_nsec) = split_time(attr.ctime);
}

/// Takes back the lookup reference a name-creating call gave (the resolver
/// keeps its own references for the names it caches).
fn created(mount: &Mount, ino: Ino) -> c_int {
    mount.fs().forget(ino, 1);
    0
}

unsafe extern "C" fn getattr(
    p: *const c_char,
    st: *mut libc::stat,
    fi: *mut FuseFileInfo,
) -> c_int {
    serve(|mount, ctx| {
        // SAFETY: vufuse passes a path, a stat buffer and NULL or its file info.
        let (ino, file) = unsafe { target(mount, ctx, p, fi) }?;
        let attr = mount.fs().getattr(ctx, ino, file.map(|f| f.fh))?;
        // SAFETY: st points to a struct stat vufuse owns.
        fill_stat(
            &attr,
            unsafe { st.as_mut() }.ok_or(Errno::from_raw(libc::EFAULT))?,
        );
        Ok(0)
    })
}

unsafe extern "C" fn readlink(p: *const c_char, buf: *mut c_char, size: usize) -> c_int {
    serve(|mount, ctx| {
        // SAFETY: vufuse passes a path.
        let ino = mount.resolver.resolve(ctx, unsafe { path(p) }?)?;
        let target = mount.fs().readlink(ctx, ino)?;
        if buf.is_null() || size == 0 {
            return Err(Errno::EINVAL);
        }
        let len = target.len().min(size - 1);
        // SAFETY: buf holds size bytes (vufuse: PATH_MAX + 1); len + 1 <= size.
        unsafe {
            std::ptr::copy_nonoverlapping(target.as_ptr(), buf.cast::<u8>(), len);
            *buf.add(len) = 0;
        }
        Ok(0)
    })
}

unsafe extern "C" fn mknod(p: *const c_char, mode: libc::mode_t, dev: libc::dev_t) -> c_int {
    serve(|mount, ctx| {
        // SAFETY: vufuse passes a path.
        let (parent, name) = mount.resolver.resolve_parent(ctx, unsafe { path(p) }?)?;
        let entry = mount.fs().mknod(ctx, parent, name, mode, encode_dev(dev))?;
        Ok(created(mount, entry.attr.ino))
    })
}

unsafe extern "C" fn mkdir(p: *const c_char, mode: libc::mode_t) -> c_int {
    serve(|mount, ctx| {
        // SAFETY: vufuse passes a path.
        let (parent, name) = mount.resolver.resolve_parent(ctx, unsafe { path(p) }?)?;
        let entry = mount.fs().mkdir(ctx, parent, name, mode & 0o7777)?;
        Ok(created(mount, entry.attr.ino))
    })
}

unsafe extern "C" fn unlink(p: *const c_char) -> c_int {
    serve(|mount, ctx| {
        // SAFETY: vufuse passes a path.
        mount.resolver.unlink(ctx, unsafe { path(p) }?)?;
        Ok(0)
    })
}

unsafe extern "C" fn rmdir(p: *const c_char) -> c_int {
    serve(|mount, ctx| {
        // SAFETY: vufuse passes a path.
        mount.resolver.rmdir(ctx, unsafe { path(p) }?)?;
        Ok(0)
    })
}

unsafe extern "C" fn symlink(target_ptr: *const c_char, p: *const c_char) -> c_int {
    serve(|mount, ctx| {
        // SAFETY: vufuse passes the link text verbatim and a path.
        let (target_text, link_path) = unsafe { (path(target_ptr)?, path(p)?) };
        let (parent, name) = mount.resolver.resolve_parent(ctx, link_path)?;
        let entry = mount.fs().symlink(ctx, parent, name, target_text)?;
        Ok(created(mount, entry.attr.ino))
    })
}

unsafe extern "C" fn rename(from: *const c_char, to: *const c_char, flags: c_uint) -> c_int {
    serve(|mount, ctx| {
        // SAFETY: vufuse passes two paths of this mount.
        let (from, to) = unsafe { (path(from)?, path(to)?) };
        mount.resolver.rename(ctx, from, to, flags)?;
        Ok(0)
    })
}

unsafe extern "C" fn link(from: *const c_char, to: *const c_char) -> c_int {
    serve(|mount, ctx| {
        // SAFETY: vufuse passes two paths of this mount.
        let (from, to) = unsafe { (path(from)?, path(to)?) };
        let ino = mount.resolver.resolve(ctx, from)?;
        let (new_parent, new_name) = mount.resolver.resolve_parent(ctx, to)?;
        let entry = mount.fs().link(ctx, ino, new_parent, new_name)?;
        Ok(created(mount, entry.attr.ino))
    })
}

/// `setattr` on the file `fi` or `p` names.
///
/// # Safety
/// As [`target`].
unsafe fn set(p: *const c_char, fi: *mut FuseFileInfo, mut change: SetAttr) -> c_int {
    serve(|mount, ctx| {
        // SAFETY: forwarded contract.
        let (ino, file) = unsafe { target(mount, ctx, p, fi) }?;
        change.fh = file.map(|f| f.fh);
        // No kernel clears set-id bits under umvu: a chown or truncate does it here.
        if !mount.fs().capabilities().checks_access {
            change = privileges::with_privileges_cleared(mount.fs(), ctx, ino, change)?;
        }
        mount.fs().setattr(ctx, ino, &change)?;
        Ok(0)
    })
}

unsafe extern "C" fn chmod(p: *const c_char, mode: libc::mode_t, fi: *mut FuseFileInfo) -> c_int {
    let change = SetAttr {
        mode: Some(mode & 0o7777),
        ..SetAttr::default()
    };
    // SAFETY: vufuse passes a path and NULL or its file info.
    unsafe { set(p, fi, change) }
}

unsafe extern "C" fn chown(
    p: *const c_char,
    uid: libc::uid_t,
    gid: libc::gid_t,
    fi: *mut FuseFileInfo,
) -> c_int {
    // (uid_t)-1 and (gid_t)-1 leave the id alone, as chown(2).
    let change = SetAttr {
        uid: (uid != libc::uid_t::MAX).then_some(uid),
        gid: (gid != libc::gid_t::MAX).then_some(gid),
        ..SetAttr::default()
    };
    // SAFETY: vufuse passes a path and NULL or its file info.
    unsafe { set(p, fi, change) }
}

unsafe extern "C" fn truncate(p: *const c_char, size: libc::off_t, fi: *mut FuseFileInfo) -> c_int {
    let Ok(size) = u64::try_from(size) else {
        return -libc::EINVAL;
    };
    let change = SetAttr {
        size: Some(size),
        ..SetAttr::default()
    };
    // SAFETY: vufuse passes a path and NULL or its file info.
    unsafe { set(p, fi, change) }
}

unsafe extern "C" fn utimens(
    p: *const c_char,
    times: *const libc::timespec,
    fi: *mut FuseFileInfo,
) -> c_int {
    let pick = |t: &libc::timespec| -> Option<SetTime> {
        match t.tv_nsec {
            libc::UTIME_OMIT => None,
            libc::UTIME_NOW => Some(SetTime::Now),
            nsec => {
                let nsec = nsec.clamp(0, 999_999_999) as u32;
                let at = if t.tv_sec >= 0 {
                    UNIX_EPOCH + std::time::Duration::new(t.tv_sec as u64, nsec)
                } else {
                    UNIX_EPOCH - std::time::Duration::from_secs(t.tv_sec.unsigned_abs())
                        + std::time::Duration::from_nanos(u64::from(nsec))
                };
                Some(SetTime::At(at))
            }
        }
    };
    let change = if times.is_null() {
        SetAttr {
            atime: Some(SetTime::Now),
            mtime: Some(SetTime::Now),
            ..SetAttr::default()
        }
    } else {
        // SAFETY: a non-NULL times points to two timespecs (utimensat(2)).
        let (atime, mtime) = unsafe { (&*times, &*times.add(1)) };
        SetAttr {
            atime: pick(atime),
            mtime: pick(mtime),
            ..SetAttr::default()
        }
    };
    // SAFETY: vufuse passes a path and NULL or its file info.
    unsafe { set(p, fi, change) }
}

/// Stores an open file in `fi`.
///
/// # Safety
/// `fi` is NULL or points to a `fuse_file_info` vufuse owns.
unsafe fn give_handle(mount: &Mount, fi: *mut FuseFileInfo, file: OpenFile) -> Result<(), Errno> {
    // SAFETY: per this function's contract.
    match unsafe { fi.as_mut() } {
        Some(fi) => {
            fi.fh = mount.insert(file);
            Ok(())
        }
        None => Err(Errno::EINVAL),
    }
}

unsafe extern "C" fn open(p: *const c_char, fi: *mut FuseFileInfo) -> c_int {
    serve(|mount, ctx| {
        // SAFETY: vufuse passes a path and its file info.
        let ino = mount.resolver.resolve(ctx, unsafe { path(p) }?)?;
        // SAFETY: as above.
        let flags = unsafe { fi.as_ref() }.ok_or(Errno::EINVAL)?.flags;
        let attr = mount.fs().getattr(ctx, ino, None)?;
        let file = if attr.kind == FileKind::Dir && flags & libc::O_ACCMODE == libc::O_RDONLY {
            // open(dir, O_RDONLY) without O_DIRECTORY: a directory handle all the same.
            OpenFile {
                ino,
                fh: mount.fs().opendir(ctx, ino)?,
                dir: true,
            }
        } else {
            OpenFile {
                ino,
                fh: mount.fs().open(ctx, ino, flags)?.fh,
                dir: false,
            }
        };
        // SAFETY: as above.
        unsafe { give_handle(mount, fi, file) }?;
        Ok(0)
    })
}

unsafe extern "C" fn create(p: *const c_char, mode: libc::mode_t, fi: *mut FuseFileInfo) -> c_int {
    serve(|mount, ctx| {
        // SAFETY: vufuse passes a path and its file info.
        let (parent, name) = mount.resolver.resolve_parent(ctx, unsafe { path(p) }?)?;
        // SAFETY: as above.
        let flags = unsafe { fi.as_ref() }.ok_or(Errno::EINVAL)?.flags;
        let (entry, opened) = mount.fs().create(ctx, parent, name, mode, flags)?;
        let file = OpenFile {
            ino: entry.attr.ino,
            fh: opened.fh,
            dir: false,
        };
        created(mount, entry.attr.ino);
        // SAFETY: as above.
        if let Err(e) = unsafe { give_handle(mount, fi, file) } {
            let _ = mount.fs().release(ctx, file.ino, file.fh);
            return Err(e);
        }
        Ok(0)
    })
}

unsafe extern "C" fn read(
    _p: *const c_char,
    buf: *mut c_char,
    size: usize,
    offset: libc::off_t,
    fi: *mut FuseFileInfo,
) -> c_int {
    serve(|mount, ctx| {
        // SAFETY: vufuse passes its file info from open.
        let file = unsafe { opened(mount, fi) }?.ok_or(Errno::EBADF)?;
        let offset = u64::try_from(offset).map_err(|_| Errno::EINVAL)?;
        let size = size.min(MAX_IO);
        if size == 0 {
            return Ok(0);
        }
        if buf.is_null() {
            return Err(Errno::from_raw(libc::EFAULT));
        }
        // SAFETY: vufuse's buffer holds at least `size` writable bytes.
        let out = unsafe { std::slice::from_raw_parts_mut(buf.cast::<u8>(), size) };
        // The driver fills the buffer unless the file ends (FileSystem::read's contract).
        Ok(mount.fs().read(ctx, file.ino, file.fh, offset, out)? as c_int)
    })
}

unsafe extern "C" fn write(
    _p: *const c_char,
    buf: *const c_char,
    size: usize,
    offset: libc::off_t,
    fi: *mut FuseFileInfo,
) -> c_int {
    serve(|mount, ctx| {
        // SAFETY: vufuse passes its file info from open.
        let file = unsafe { opened(mount, fi) }?.ok_or(Errno::EBADF)?;
        let offset = u64::try_from(offset).map_err(|_| Errno::EINVAL)?;
        let size = size.min(MAX_IO);
        if size == 0 {
            return Ok(0);
        }
        if buf.is_null() {
            return Err(Errno::from_raw(libc::EFAULT));
        }
        // SAFETY: vufuse's buffer holds `size` readable bytes.
        let data = unsafe { std::slice::from_raw_parts(buf.cast::<u8>(), size) };
        // No kernel clears set-id bits under umvu: a write by a caller without CAP_FSETID
        // does it here, first, as the VFS does.
        if !mount.fs().capabilities().checks_access {
            let keeps = || privileges::caller_has_fsetid(ctx);
            privileges::clear_for_write(mount.fs(), ctx, file.ino, Some(file.fh), keeps)?;
        }
        let mut done = 0;
        while done < data.len() {
            match mount
                .fs()
                .write(ctx, file.ino, file.fh, offset + done as u64, &data[done..])
            {
                Ok(0) => break,
                Ok(n) => done += n,
                // Report what was written before the error, as write(2) does.
                Err(e) if done == 0 => return Err(e),
                Err(_) => break,
            }
        }
        Ok(done as c_int)
    })
}

unsafe extern "C" fn statfs(_p: *const c_char, out: *mut libc::statvfs) -> c_int {
    serve(|mount, ctx| {
        let s = mount.fs().statfs(ctx)?;
        // SAFETY: vufuse passes a struct statvfs it owns.
        let out = unsafe { out.as_mut() }.ok_or(Errno::from_raw(libc::EFAULT))?;
        // SAFETY: statvfs is plain data; all-zero is a valid value.
        *out = unsafe { std::mem::zeroed() };
        out.f_bsize = s.block_size.into();
        out.f_frsize = if s.fragment_size == 0 {
            s.block_size
        } else {
            s.fragment_size
        }
        .into();
        out.f_blocks = s.blocks;
        out.f_bfree = s.blocks_free;
        out.f_bavail = s.blocks_available;
        out.f_files = s.files;
        out.f_ffree = s.files_free;
        out.f_favail = s.files_free;
        out.f_namemax = s.name_max.into();
        if mount.read_only {
            out.f_flag |= libc::ST_RDONLY;
        }
        Ok(0)
    })
}

unsafe extern "C" fn flush(_p: *const c_char, fi: *mut FuseFileInfo) -> c_int {
    serve(|mount, ctx| {
        // SAFETY: vufuse passes its file info from open.
        let file = unsafe { opened(mount, fi) }?.ok_or(Errno::EBADF)?;
        if !file.dir {
            mount.fs().flush(ctx, file.ino, file.fh)?;
        }
        Ok(0)
    })
}

unsafe extern "C" fn release(_p: *const c_char, fi: *mut FuseFileInfo) -> c_int {
    serve(|mount, ctx| {
        // SAFETY: vufuse passes its file info from open.
        let key = unsafe { fi.as_ref() }.ok_or(Errno::EBADF)?.fh;
        let file = mount.remove(key)?;
        if file.dir {
            mount.fs().releasedir(ctx, file.ino, file.fh)?;
        } else {
            mount.fs().release(ctx, file.ino, file.fh)?;
        }
        Ok(0)
    })
}

unsafe extern "C" fn fsync(_p: *const c_char, datasync: c_int, fi: *mut FuseFileInfo) -> c_int {
    serve(|mount, ctx| {
        // SAFETY: vufuse passes its file info from open.
        let file = unsafe { opened(mount, fi) }?.ok_or(Errno::EBADF)?;
        mount.fs().fsync(ctx, file.ino, file.fh, datasync != 0)?;
        Ok(0)
    })
}

unsafe extern "C" fn opendir(p: *const c_char, fi: *mut FuseFileInfo) -> c_int {
    serve(|mount, ctx| {
        // SAFETY: vufuse passes a path and its file info.
        let ino = mount.resolver.resolve(ctx, unsafe { path(p) }?)?;
        let fh = mount.fs().opendir(ctx, ino)?;
        let file = OpenFile { ino, fh, dir: true };
        // SAFETY: as above.
        if let Err(e) = unsafe { give_handle(mount, fi, file) } {
            let _ = mount.fs().releasedir(ctx, ino, fh);
            return Err(e);
        }
        Ok(0)
    })
}

unsafe extern "C" fn readdir(
    p: *const c_char,
    buf: *mut c_void,
    filler: Option<FillDir>,
    _offset: libc::off_t,
    fi: *mut FuseFileInfo,
    _flags: c_int,
) -> c_int {
    serve(|mount, ctx| {
        let filler = filler.ok_or(Errno::EINVAL)?;
        // SAFETY: vufuse passes a path and its file info from opendir.
        let (ino, file) = unsafe { target(mount, ctx, p, fi) }?;
        // Without a handle (not something vufuse does), open one for this call.
        let (fh, temporary) = match file {
            Some(file) => (file.fh, false),
            None => (mount.fs().opendir(ctx, ino)?, true),
        };
        let listed = mount.fs().readdir(ctx, ino, fh, 0, &mut |entry| {
            let Ok(name) = CString::new(entry.name.as_bytes()) else {
                return true; // a name with NUL cannot be listed; skip it
            };
            // SAFETY: libc::stat is plain data; all-zero is a valid value.
            let mut st: libc::stat = unsafe { std::mem::zeroed() };
            st.st_ino = entry.ino.0;
            st.st_mode = entry.kind.mode_bits();
            // SAFETY: filler is vufuse's, called with its buf, a NUL-terminated
            // name and a stat that outlive the call.
            let full = unsafe { filler(buf, name.as_ptr(), &st, 0, 0) };
            // A full buffer ends the listing (vufuse's filler never fills up).
            full == 0
        });
        if temporary {
            let _ = mount.fs().releasedir(ctx, ino, fh);
        }
        listed?;
        Ok(0)
    })
}

unsafe extern "C" fn releasedir(p: *const c_char, fi: *mut FuseFileInfo) -> c_int {
    // SAFETY: same arguments as release.
    unsafe { release(p, fi) }
}

unsafe extern "C" fn access(p: *const c_char, mask: c_int) -> c_int {
    serve(|mount, ctx| {
        // SAFETY: vufuse passes a path.
        let attr = mount.resolver.getattr(ctx, unsafe { path(p) }?)?;
        let acl = access_acl(mount, ctx, &attr).map_err(|_| Errno::EACCES)?;
        check_access(&attr, acl.as_ref(), ctx, mask, mount.read_only)?;
        Ok(0)
    })
}

/// The access ACL of the file `attr` describes, when its driver keeps one (ext); an error
/// when there is one that cannot be read or parsed (the mode bits may grant more).
fn access_acl(mount: &Mount, ctx: &Context, attr: &Attr) -> Result<Option<Acl>, Errno> {
    if !mount.fs().capabilities().posix_acls {
        return Ok(None);
    }
    let name = OsStr::from_bytes(acl::ACCESS_XATTR);
    acl::access_acl_from(mount.fs().getxattr(ctx, attr.ino, name))
}

/// access(2)'s answer from the mode bits, or from the file's access ACL when it has one
/// (as the kernel checks: named users and groups, the mask); groups are the caller's
/// primary and supplementary ones.
fn check_access(
    attr: &Attr,
    acl: Option<&Acl>,
    ctx: &Context,
    mask: c_int,
    read_only: bool,
) -> Result<(), Errno> {
    let mask = (mask & (libc::R_OK | libc::W_OK | libc::X_OK)) as u16;
    if mask == 0 {
        return Ok(());
    }
    if mask & libc::W_OK as u16 != 0 && read_only {
        return Err(Errno::EROFS);
    }
    let in_group = |gid: u32| ctx.gid == gid || ctx.supplementary_groups().contains(&gid);
    let mode = attr.kind.mode_bits() | u32::from(attr.perm);
    let want = u32::from(mask);
    let allowed = acl::permits(attr.uid, attr.gid, mode, acl, ctx.uid, in_group, want);
    if allowed {
        Ok(())
    } else {
        Err(Errno::EACCES)
    }
}

unsafe extern "C" fn init(_conn: *mut c_void, _cfg: *mut c_void) -> *mut c_void {
    // vufuse passes an uninitialized conn: it is never read. The private data
    // stays the Mount run_main gave (init's result replaces it).
    let kept = vuglue::no_unwind(|| {
        // SAFETY: vufuse calls init inside a pushed context (or NULL).
        let fc = unsafe { fuse_get_context().as_ref() }.ok_or(Errno::EIO)?;
        Ok(fc.private_data)
    });
    kept.unwrap_or(std::ptr::null_mut())
}

unsafe extern "C" fn destroy(private_data: *mut c_void) {
    let _ = vuglue::no_unwind(|| {
        // SAFETY: private_data is what init returned: the Mount, alive until
        // fuse_main_real returns (after destroy).
        if let Some(mount) = unsafe { private_data.cast::<Mount>().as_ref() } {
            mount.destroy();
        }
        Ok(())
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_numbers_round_trip() {
        for (major, minor) in [(0, 0), (1, 3), (8, 17), (259, 300), (4095, 1 << 19)] {
            let dev = libc::makedev(major, minor);
            assert_eq!(decode_dev(encode_dev(dev)), dev, "{major}:{minor}");
        }
        // The kernel's new_encode_dev for 8:17.
        assert_eq!(encode_dev(libc::makedev(8, 17)), 0x811);
    }

    /// What access(2) adds to the shared decision (`acl::permits`, tested there): only the
    /// R/W/X bits count (F_OK passes), a write on a read-only mount is EROFS, the file's
    /// kind reaches the decision (root searches a directory, not an unexecutable file), and
    /// the file's ACL is consulted.
    #[test]
    fn access_checks_the_mask_the_mount_the_kind_and_the_acl() {
        let attr = |kind, perm| Attr {
            ino: Ino(12),
            size: 0,
            blocks: 0,
            atime: UNIX_EPOCH,
            mtime: UNIX_EPOCH,
            ctime: UNIX_EPOCH,
            crtime: UNIX_EPOCH,
            kind,
            perm,
            nlink: 1,
            uid: 1000,
            gid: 100,
            rdev: 0,
            blksize: 4096,
        };
        let caller = |uid| Context {
            uid,
            gid: 5,
            pid: 0,
            umask: None,
        };
        let file = attr(FileKind::File, 0o640);
        let check = |a: &Attr, uid, mask, acl: Option<&Acl>, read_only| {
            check_access(a, acl, &caller(uid), mask, read_only)
        };
        assert_eq!(check(&file, 2000, libc::F_OK, None, false), Ok(()));
        assert_eq!(
            check(&file, 2000, libc::R_OK, None, false),
            Err(Errno::EACCES)
        );
        assert_eq!(check(&file, 1000, libc::W_OK, None, false), Ok(()));
        assert_eq!(
            check(&file, 1000, libc::W_OK, None, true),
            Err(Errno::EROFS)
        );
        assert_eq!(check(&file, 1000, libc::R_OK, None, true), Ok(()));
        assert_eq!(check(&file, 0, libc::X_OK, None, false), Err(Errno::EACCES));
        let dir = attr(FileKind::Dir, 0o600);
        assert_eq!(check(&dir, 0, libc::X_OK, None, false), Ok(()));
        // user 2000 may read and write by a named entry; other may not.
        let bytes = acl::encode(&[
            (acl::USER_OBJ, 6, u32::MAX),
            (acl::USER, 6, 2000),
            (acl::GROUP_OBJ, 4, u32::MAX),
            (acl::MASK, 6, u32::MAX),
            (acl::OTHER, 0, u32::MAX),
        ]);
        let named = Acl::parse(&bytes).unwrap();
        let rw = libc::R_OK | libc::W_OK;
        assert_eq!(check(&file, 2000, rw, Some(&named), false), Ok(()));
        assert_eq!(
            check(&file, 3000, libc::R_OK, Some(&named), false),
            Err(Errno::EACCES)
        );
    }

    #[test]
    fn times_before_the_epoch() {
        let t = UNIX_EPOCH - std::time::Duration::from_millis(1500);
        assert_eq!(split_time(t), (-2, 500_000_000));
        assert_eq!(split_time(UNIX_EPOCH), (0, 0));
    }
}
