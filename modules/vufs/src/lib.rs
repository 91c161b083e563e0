//! `vufs.so`: VUOS's top-level `vufs` module (bind, merge, cow, mincow) built on the same
//! [`VuFs`] the `vufs` FUSE binary serves, so a layer made by one is used by the other.
//!
//! `vumount -t vufs [-o cow,except=/PATH,...] /abs/SOURCE /TARGET`. The glue is thin: umvu's
//! handlers (VUOS.md section 3) take mount-relative paths ("mpaths"), which the shared
//! [`PathResolver`] maps to inodes of the driver; results leave as `-1` + `errno`.
//! `except=` works through the confirm function (umvu then serves those paths from the real
//! tree itself). The module is `VU_USE_PRW`: umvu keeps file positions and sizes.
#![allow(unsafe_code)]

use std::collections::HashMap;
use std::ffi::{c_char, c_int, c_uint, c_ulong, c_void, CStr, OsStr};
use std::os::fd::AsFd;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use vufs_core::{open_layer, Config, Options, VuFs};
use vufuse_api::fs::{Attr, Context, DirEntry, Fh, FileKind, FileSystem, Ino, SetAttr, SetTime};
use vufuse_api::resolver::PathResolver;
use vuglue::{no_unwind, ret_int, ret_isize, Errno};

/// umvu's hashtable entry, opaque here.
#[repr(C)]
pub struct VuhtEntry {
    _opaque: [u8; 0],
}

/// umvu's service object, opaque here.
#[repr(C)]
pub struct VuService {
    _opaque: [u8; 0],
}

/// `confirmfun_t`
pub type ConfirmFun = unsafe extern "C" fn(u8, *mut c_void, c_int, *mut VuhtEntry) -> c_int;

extern "C" {
    // Exported by umvu (built with ENABLE_EXPORTS); resolved when umvu dlopens the module.
    fn vu_mod_getht() -> *mut VuhtEntry;
    fn vuht_get_service(ht: *mut VuhtEntry) -> *mut VuService;
    fn vuht_get_private_data(ht: *mut VuhtEntry) -> *mut c_void;
    #[allow(clippy::too_many_arguments)]
    fn vuht_pathadd(
        kind: u8,
        source: *const c_char,
        path: *const c_char,
        fstype: *const c_char,
        mountflags: c_ulong,
        mountopts: *const c_char,
        service: *mut VuService,
        vuflags: c_int,
        confirm: Option<ConfirmFun>,
        private: *mut c_void,
    ) -> *mut VuhtEntry;
    fn vuht_del(ht: *mut VuhtEntry, umountflags: c_int) -> c_int;
}

/// `CHECKPATH`, the hashtable entry type of a mount.
pub const CHECKPATH: u8 = 1;
/// `VU_USE_PRW`: umvu turns read/write into pread64/pwrite64 and keeps positions.
pub const VU_USE_PRW: u64 = 1;

/// `struct vu_module_t` (32 bytes).
#[repr(C)]
#[derive(Debug)]
pub struct VuModule {
    /// Module name: the symbol prefix `vu_<name>_` and the mount type.
    pub name: *const c_char,
    /// One line for `vu_lsmod`.
    pub description: *const c_char,
    /// `VU_USE_PRW` or 0.
    pub flags: u64,
    /// Reserved.
    pub filler: u64,
}

// SAFETY: the pointers are to static NUL-terminated literals, never written.
unsafe impl Sync for VuModule {}

/// The module descriptor umvu looks up with `dlsym("vu_module")`.
#[no_mangle]
#[allow(non_upper_case_globals)]
pub static vu_module: VuModule = VuModule {
    name: c"vufs".as_ptr(),
    description: c"vufs: bind, merge, cow and mincow views of host trees (Rust)".as_ptr(),
    flags: VU_USE_PRW,
    filler: 0,
};

/// One mount: the driver, its path resolver and the `except=` prefixes.
struct Mount {
    fs: Arc<VuFs>,
    resolver: PathResolver,
    /// `except=` paths as umvu hands tails to confirm: with a leading `/`.
    except: Vec<Vec<u8>>,
    /// `st_dev` shown for every file of the view.
    dev: u64,
    /// Mounted with MS_RDONLY (`vumount -r`): every change is EROFS (umvu does not check).
    read_only: bool,
}

/// Per-open state kept in umvu's `fdprivate`.
struct OpenFile {
    sfd: c_int,
    ino: Ino,
    fh: Fh,
    dir: bool,
    /// A lookup reference taken by create, given back at close.
    holds_lookup: bool,
    /// Opened with `O_PATH`: no driver handle, no I/O (EBADF), only fstat and the like.
    path_only: bool,
    /// Directory cookie of the next entry.
    dir_pos: Mutex<u64>,
}

impl OpenFile {
    /// The driver handle for fd-based attribute calls (regular files opened for I/O).
    fn io_handle(&self) -> Option<Fh> {
        (!self.dir && !self.path_only).then_some(self.fh)
    }
}

static NEXT_SFD: AtomicI32 = AtomicI32::new(3);

/// Live open files: sfd -> `Box<OpenFile>` address. umvu hands `fdprivate` back on every fd
/// call, except in two places where it is wrong (VUOS.md section 9): the mmap write-back calls
/// pwrite64 with garbage in `fdprivate` (right sfd), and readv passes the process fd as sfd
/// (right fdprivate). Checking both against this table makes either mistake harmless.
static OPEN: Mutex<Option<HashMap<c_int, usize>>> = Mutex::new(None);

fn open_table() -> std::sync::MutexGuard<'static, Option<HashMap<c_int, usize>>> {
    OPEN.lock().unwrap_or_else(|e| e.into_inner())
}

/// The caller's identity: umvu's own (modules act on the host as umvu); the mode of new
/// files arrives already masked with the process umask.
fn context() -> Context {
    static CONTEXT: OnceLock<Context> = OnceLock::new();
    *CONTEXT.get_or_init(|| Context {
        umask: Some(0),
        ..Context::current()
    })
}

/// The mount of the current call.
fn mount<'a>() -> Result<&'a Mount, Errno> {
    // SAFETY: umvu sets the current entry for every handler call; its private data is the
    // Box<Mount> leaked at mount time, freed only in cleanup after the last user is gone.
    unsafe {
        let ht = vu_mod_getht();
        if ht.is_null() {
            return Err(Errno::EINVAL);
        }
        (vuht_get_private_data(ht) as *const Mount)
            .as_ref()
            .ok_or(Errno::EINVAL)
    }
}

/// The mount of the current call, for a call that changes something.
fn mount_rw<'a>() -> Result<&'a Mount, Errno> {
    let m = mount()?;
    if m.read_only {
        return Err(Errno::EROFS);
    }
    Ok(m)
}

/// A path argument as bytes (any bytes but NUL, as the kernel takes them).
///
/// # Safety
/// `ptr` must be NULL or a NUL-terminated string alive for `'a`.
unsafe fn c_path<'a>(ptr: *const c_char) -> Result<&'a Path, Errno> {
    if ptr.is_null() {
        return Err(Errno::from_raw(libc::EFAULT));
    }
    // SAFETY: per the contract.
    let bytes = unsafe { CStr::from_ptr(ptr) }.to_bytes();
    Ok(Path::new(OsStr::from_bytes(bytes)))
}

/// The open file of an fd call, found by `sfd` or `fdprivate` in the table of live files
/// (never by dereferencing an unknown pointer).
///
/// # Safety
/// umvu must not close the file while a call on it is running (it holds a reference).
unsafe fn open_file<'a>(sfd: c_int, fdprivate: *mut c_void) -> Result<&'a OpenFile, Errno> {
    let wanted = fdprivate as usize;
    let table = open_table();
    let table = table.as_ref().ok_or(Errno::EBADF)?;
    let found = match table.get(&sfd) {
        Some(&p) => p,
        None if wanted != 0 && table.values().any(|&p| p == wanted) => wanted,
        None => return Err(Errno::EBADF),
    };
    // SAFETY: the address is a live Box<OpenFile> from vu_vufs_open, removed from the table
    // before close frees it.
    Ok(unsafe { &*(found as *const OpenFile) })
}

/// The inode a path call is about: the open file's when umvu passes one (fstat, ftruncate).
///
/// # Safety
/// As [`c_path`] and [`open_file`].
unsafe fn target(
    m: &Mount,
    ctx: &Context,
    path: *const c_char,
    sfd: c_int,
    fdprivate: *mut c_void,
) -> Result<(Ino, Option<Fh>), Errno> {
    if !fdprivate.is_null() || sfd >= 0 {
        // SAFETY: forwarded contract.
        let of = unsafe { open_file(sfd, fdprivate) }?;
        return Ok((of.ino, of.io_handle()));
    }
    // SAFETY: forwarded contract.
    let path = unsafe { c_path(path) }?;
    Ok((m.resolver.resolve(ctx, path)?, None))
}

fn unix_time(t: SystemTime) -> (i64, i64) {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => (d.as_secs() as i64, i64::from(d.subsec_nanos())),
        Err(e) => {
            let d = e.duration();
            let (s, n) = (d.as_secs() as i64, i64::from(d.subsec_nanos()));
            if n == 0 {
                (-s, 0)
            } else {
                (-s - 1, 1_000_000_000 - n)
            }
        }
    }
}

fn fill_stat(m: &Mount, attr: &Attr, st: &mut libc::stat) {
    // SAFETY: libc::stat is plain old data; all-zero is a valid value.
    *st = unsafe { std::mem::zeroed() };
    st.st_dev = m.dev;
    st.st_ino = attr.ino.0;
    st.st_mode = attr.kind.mode_bits() | u32::from(attr.perm);
    st.st_nlink = u64::from(attr.nlink);
    st.st_uid = attr.uid;
    st.st_gid = attr.gid;
    st.st_rdev = u64::from(attr.rdev);
    st.st_size = attr.size as i64;
    st.st_blksize = i64::from(attr.blksize.max(512));
    st.st_blocks = attr.blocks as i64;
    (st.st_atime, st.st_atime_nsec) = unix_time(attr.atime);
    (st.st_mtime, st.st_mtime_nsec) = unix_time(attr.mtime);
    (st.st_ctime, st.st_ctime_nsec) = unix_time(attr.ctime);
}

/// `void *vu_vufs_init(void)`: nothing to set up; the service private data stays NULL.
#[no_mangle]
pub extern "C" fn vu_vufs_init() -> *mut c_void {
    std::ptr::null_mut()
}

/// `int vu_vufs_fini(void *private)`
#[no_mangle]
pub extern "C" fn vu_vufs_fini(_private: *mut c_void) -> c_int {
    0
}

/// Confirm function of a mount: paths under an `except=` prefix are not ours.
///
/// # Safety
/// umvu passes the path tail after the mount point (NUL-terminated) and the mount's entry.
unsafe extern "C" fn confirm(
    _kind: u8,
    arg: *mut c_void,
    _len: c_int,
    ht: *mut VuhtEntry,
) -> c_int {
    no_unwind(|| {
        // SAFETY: ht is the entry registered by vu_vufs_mount, alive while umvu consults it.
        let m = unsafe { (vuht_get_private_data(ht) as *const Mount).as_ref() };
        let Some(m) = m else { return Ok(1) };
        if arg.is_null() {
            return Ok(1);
        }
        // SAFETY: arg is a NUL-terminated path tail.
        let tail = unsafe { CStr::from_ptr(arg as *const c_char) }.to_bytes();
        let excepted = m
            .except
            .iter()
            .any(|e| tail.starts_with(e) && matches!(tail.get(e.len()), None | Some(b'/')));
        Ok(if excepted { 0 } else { 1 })
    })
    .unwrap_or(1)
}

/// `int mount(source, target, fstype, flags, data)`: opens both layers (before the mount is
/// added, so the lower tree is the real one) and registers the mount.
///
/// # Safety
/// umvu passes C strings (data may be NULL).
#[no_mangle]
pub unsafe extern "C" fn vu_vufs_mount(
    source: *const c_char,
    target: *const c_char,
    fstype: *const c_char,
    flags: c_ulong,
    data: *const c_void,
) -> c_int {
    ret_int(|| {
        // SAFETY: umvu's strings.
        let source_path = unsafe { c_path(source) }?;
        // SAFETY: as above.
        let target_path = unsafe { c_path(target) }?;
        // SAFETY: as above; data is a string or NULL for vufs.
        let data_text = unsafe { vuglue::c_str_opt(data as *const c_char) }?.unwrap_or("");
        let (options, rest) = Options::split([data_text]).map_err(|e| {
            vuglue::warn("vufs", &e.to_string());
            Errno::EINVAL
        })?;
        if let Some(bad) = rest.iter().find(|item| item.as_str() != "permanent") {
            vuglue::warn("vufs", &format!("{bad}: unknown option"));
            return Err(Errno::EINVAL);
        }
        let except = options
            .except
            .iter()
            .map(|p| {
                let mut v = b"/".to_vec();
                v.extend_from_slice(p.as_os_str().as_bytes());
                v
            })
            .collect();
        let upper = open_layer(source_path)?;
        let lower = open_layer(target_path)?;
        let dev = rustix::fs::fstat(upper.as_fd())?.st_dev;
        let config = Config {
            options,
            read_only: flags & libc::MS_RDONLY != 0,
        };
        let read_only = config.read_only;
        let fs = Arc::new(VuFs::new(upper, lower, config)?);
        fs.init()?;
        let resolver = PathResolver::new(fs.clone());
        let mount = Box::into_raw(Box::new(Mount {
            fs,
            resolver,
            except,
            dev,
            read_only,
        }));
        // SAFETY: all strings are umvu's own; the service is this module's (the current entry
        // during mount is the module's); `mount` is leaked here and freed in cleanup.
        let ht = unsafe {
            let service = vuht_get_service(vu_mod_getht());
            vuht_pathadd(
                CHECKPATH,
                source,
                target,
                fstype,
                flags,
                data as *const c_char,
                service,
                0,
                Some(confirm),
                mount as *mut c_void,
            )
        };
        if ht.is_null() {
            // SAFETY: not registered, so nobody else holds the pointer.
            drop(unsafe { Box::from_raw(mount) });
            return Err(Errno::ENOMEM);
        }
        Ok(0)
    })
}

/// `int umount2(target, flags)`: only deletes the entry; cleanup frees the mount.
#[no_mangle]
pub extern "C" fn vu_vufs_umount2(_target: *const c_char, flags: c_int) -> c_int {
    ret_int(|| {
        // SAFETY: during umount2 the current entry is the mount's.
        let rv = unsafe { vuht_del(vu_mod_getht(), flags) };
        if rv < 0 {
            Err(Errno::from_raw(-rv))
        } else {
            Ok(0)
        }
    })
}

/// `void cleanup(type, obj, objlen, ht)`: the entry is gone for good; free the mount.
///
/// # Safety
/// `ht` is an entry this module registered, no longer reachable by other calls.
#[no_mangle]
pub unsafe extern "C" fn vu_vufs_cleanup(
    kind: u8,
    _obj: *mut c_void,
    _objlen: c_int,
    ht: *mut VuhtEntry,
) {
    let _ = no_unwind(|| {
        if kind != CHECKPATH || ht.is_null() {
            return Ok(());
        }
        // SAFETY: the private data is the Box<Mount> leaked by vu_vufs_mount, freed once here.
        let private = unsafe { vuht_get_private_data(ht) } as *mut Mount;
        if !private.is_null() {
            // SAFETY: as above.
            let mount = unsafe { Box::from_raw(private) };
            mount.resolver.clear();
            mount.fs.destroy();
        }
        Ok(())
    });
}

/// `int lstat(path, buf, flags, sfd, fdprivate)`
///
/// # Safety
/// umvu's arguments: `buf` valid for a `struct stat`.
#[no_mangle]
pub unsafe extern "C" fn vu_vufs_lstat(
    path: *const c_char,
    buf: *mut libc::stat,
    _flags: c_int,
    sfd: c_int,
    fdprivate: *mut c_void,
) -> c_int {
    ret_int(|| {
        let m = mount()?;
        let ctx = context();
        // SAFETY: forwarded contract.
        let (ino, fh) = unsafe { target(m, &ctx, path, sfd, fdprivate) }?;
        let attr = m.fs.getattr(&ctx, ino, fh)?;
        // SAFETY: buf is umvu's struct stat.
        let buf = unsafe { buf.as_mut() }.ok_or(Errno::from_raw(libc::EFAULT))?;
        fill_stat(m, &attr, buf);
        Ok(0)
    })
}

/// `ssize_t readlink(path, buf, bufsiz)`: NUL-terminated, as umvu copies strlen+1 bytes.
///
/// # Safety
/// `buf` valid for `bufsiz` bytes.
#[no_mangle]
pub unsafe extern "C" fn vu_vufs_readlink(
    path: *const c_char,
    buf: *mut c_char,
    bufsiz: usize,
) -> isize {
    ret_isize(|| {
        let m = mount()?;
        let ctx = context();
        // SAFETY: umvu's path.
        let ino = m.resolver.resolve(&ctx, unsafe { c_path(path) }?)?;
        let target = m.fs.readlink(&ctx, ino)?;
        if buf.is_null() || bufsiz == 0 {
            return Err(Errno::EINVAL);
        }
        let n = target.len().min(bufsiz);
        // SAFETY: buf is valid for bufsiz bytes; we write n <= bufsiz and the NUL if room.
        unsafe {
            std::ptr::copy_nonoverlapping(target.as_ptr(), buf as *mut u8, n);
            if n < bufsiz {
                *buf.add(n) = 0;
            }
        }
        Ok(n as isize)
    })
}

fn new_sfd() -> c_int {
    NEXT_SFD.fetch_add(1, Ordering::Relaxed) & 0x3fff_ffff
}

/// `int open(path, flags, mode, void **fdprivate)`
///
/// # Safety
/// umvu's arguments; `fdprivate` valid for one pointer write.
#[no_mangle]
pub unsafe extern "C" fn vu_vufs_open(
    path: *const c_char,
    flags: c_int,
    mode: libc::mode_t,
    fdprivate: *mut *mut c_void,
) -> c_int {
    ret_int(|| {
        let m = mount()?;
        let ctx = context();
        // SAFETY: umvu's path.
        let path = unsafe { c_path(path) }?;
        let mut created = None;
        let writes = flags & libc::O_ACCMODE != libc::O_RDONLY || flags & libc::O_TRUNC != 0;
        if writes && m.read_only {
            return Err(Errno::EROFS);
        }
        let ino = if flags & libc::O_CREAT != 0 && path.file_name().is_some() {
            let (parent, name) = m.resolver.resolve_parent(&ctx, path)?;
            match m.resolver.child(&ctx, parent, name) {
                Ok(_) if flags & libc::O_EXCL != 0 => return Err(Errno::EEXIST),
                Ok(ino) => ino,
                Err(Errno::ENOENT) if m.read_only => return Err(Errno::EROFS),
                Err(Errno::ENOENT) => {
                    let (entry, opened) =
                        m.fs.create(&ctx, parent, name, libc::S_IFREG | (mode & 0o7777), flags)?;
                    created = Some(opened.fh);
                    entry.attr.ino
                }
                Err(e) => return Err(e),
            }
        } else {
            m.resolver.resolve(&ctx, path)?
        };
        let path_only = flags & libc::O_PATH != 0 && created.is_none();
        let (fh, dir, holds_lookup) = match created {
            Some(fh) => (fh, false, true),
            None => {
                let attr = m.fs.getattr(&ctx, ino, None)?;
                let dir = attr.kind == FileKind::Dir;
                if path_only {
                    // O_PATH: nothing is opened (no directory listing, no read permission).
                    if flags & libc::O_DIRECTORY != 0 && !dir {
                        return Err(Errno::ENOTDIR);
                    }
                    (Fh(0), dir, false)
                } else if dir {
                    if flags & libc::O_ACCMODE != libc::O_RDONLY {
                        return Err(Errno::EISDIR);
                    }
                    (m.fs.opendir(&ctx, ino)?, true, false)
                } else {
                    if flags & libc::O_DIRECTORY != 0 {
                        return Err(Errno::ENOTDIR);
                    }
                    (m.fs.open(&ctx, ino, flags)?.fh, false, false)
                }
            }
        };
        let sfd = new_sfd();
        let of = Box::new(OpenFile {
            sfd,
            ino,
            fh,
            dir,
            holds_lookup,
            path_only,
            dir_pos: Mutex::new(0),
        });
        if fdprivate.is_null() {
            return Err(Errno::from_raw(libc::EFAULT));
        }
        let ptr = Box::into_raw(of);
        open_table()
            .get_or_insert_with(HashMap::new)
            .insert(sfd, ptr as usize);
        // SAFETY: fdprivate is valid for a pointer write (umvu's local).
        unsafe { *fdprivate = ptr as *mut c_void };
        Ok(sfd)
    })
}

/// `int close(sfd, fdprivate)`
///
/// # Safety
/// `fdprivate` made by [`vu_vufs_open`], closed once.
#[no_mangle]
pub unsafe extern "C" fn vu_vufs_close(sfd: c_int, fdprivate: *mut c_void) -> c_int {
    ret_int(|| {
        // SAFETY: umvu closes an sfd once, with no other call on it running.
        let ptr = unsafe { open_file(sfd, fdprivate) }? as *const OpenFile as *mut OpenFile;
        // SAFETY: the Box<OpenFile> leaked by open, taken out of the table before freeing.
        let of = unsafe { Box::from_raw(ptr) };
        if let Some(table) = open_table().as_mut() {
            table.remove(&of.sfd);
        }
        let m = mount()?;
        let ctx = context();
        let result = if of.path_only {
            Ok(())
        } else if of.dir {
            m.fs.releasedir(&ctx, of.ino, of.fh)
        } else {
            let flushed = m.fs.flush(&ctx, of.ino, of.fh);
            let released = m.fs.release(&ctx, of.ino, of.fh);
            flushed.and(released)
        };
        if of.holds_lookup {
            m.fs.forget(of.ino, 1);
        }
        result.map(|()| 0)
    })
}

/// The checks pread64 and pwrite64 share: the open file (a regular one, not O_PATH), the
/// offset as unsigned, and `None` for a zero-length transfer (nothing to do).
///
/// # Safety
/// As [`open_file`].
unsafe fn data_io<'a>(
    sfd: c_int,
    fdprivate: *mut c_void,
    offset: libc::off_t,
    count: usize,
    buf_is_null: bool,
) -> Result<Option<(&'a OpenFile, u64)>, Errno> {
    // SAFETY: forwarded contract.
    let of = unsafe { open_file(sfd, fdprivate) }?;
    if of.path_only {
        return Err(Errno::EBADF);
    }
    if of.dir {
        return Err(Errno::EISDIR);
    }
    let offset = u64::try_from(offset).map_err(|_| Errno::EINVAL)?;
    if count == 0 {
        return Ok(None);
    }
    if buf_is_null {
        return Err(Errno::from_raw(libc::EFAULT));
    }
    Ok(Some((of, offset)))
}

/// `ssize_t pread64(sfd, buf, count, offset, flags, fdprivate)`
///
/// # Safety
/// `buf` valid for `count` bytes; `fdprivate` from open.
#[no_mangle]
pub unsafe extern "C" fn vu_vufs_pread64(
    sfd: c_int,
    buf: *mut c_void,
    count: usize,
    offset: libc::off_t,
    _flags: c_int,
    fdprivate: *mut c_void,
) -> isize {
    ret_isize(|| {
        // SAFETY: forwarded contract.
        let Some((of, offset)) =
            (unsafe { data_io(sfd, fdprivate, offset, count, buf.is_null()) })?
        else {
            return Ok(0);
        };
        // SAFETY: buf is valid for count bytes (and not NULL, checked above).
        let buf = unsafe { std::slice::from_raw_parts_mut(buf as *mut u8, count) };
        Ok(mount()?.fs.read(&context(), of.ino, of.fh, offset, buf)? as isize)
    })
}

/// `ssize_t pwrite64(sfd, buf, count, offset, flags, fdprivate)`
///
/// # Safety
/// `buf` valid for `count` bytes; `fdprivate` from open.
#[no_mangle]
pub unsafe extern "C" fn vu_vufs_pwrite64(
    sfd: c_int,
    buf: *const c_void,
    count: usize,
    offset: libc::off_t,
    _flags: c_int,
    fdprivate: *mut c_void,
) -> isize {
    ret_isize(|| {
        // SAFETY: forwarded contract.
        let Some((of, offset)) =
            (unsafe { data_io(sfd, fdprivate, offset, count, buf.is_null()) })?
        else {
            return Ok(0);
        };
        // SAFETY: buf is valid for count bytes (and not NULL, checked above).
        let data = unsafe { std::slice::from_raw_parts(buf as *const u8, count) };
        Ok(mount()?.fs.write(&context(), of.ino, of.fh, offset, data)? as isize)
    })
}

fn dtype(kind: FileKind) -> u8 {
    match kind {
        FileKind::File => libc::DT_REG,
        FileKind::Dir => libc::DT_DIR,
        FileKind::Symlink => libc::DT_LNK,
        FileKind::CharDevice => libc::DT_CHR,
        FileKind::BlockDevice => libc::DT_BLK,
        FileKind::Fifo => libc::DT_FIFO,
        FileKind::Socket => libc::DT_SOCK,
    }
}

/// Size of a `linux_dirent64` record for a name of `len` bytes (8-aligned).
pub fn dirent64_len(len: usize) -> usize {
    (19 + len + 1).next_multiple_of(8)
}

/// `int getdents64(sfd, buf, count, fdprivate)`: `linux_dirent64` records; `d_off` is the
/// cookie of the next entry (usable with lseek/seekdir).
///
/// # Safety
/// `buf` valid for `count` bytes; `fdprivate` from open.
#[no_mangle]
pub unsafe extern "C" fn vu_vufs_getdents64(
    sfd: c_uint,
    buf: *mut c_void,
    count: c_uint,
    fdprivate: *mut c_void,
) -> c_int {
    ret_int(|| {
        // SAFETY: forwarded contract.
        let of = unsafe { open_file(sfd as c_int, fdprivate) }?;
        if of.path_only {
            return Err(Errno::EBADF);
        }
        if !of.dir {
            return Err(Errno::ENOTDIR);
        }
        if buf.is_null() {
            return Err(Errno::from_raw(libc::EFAULT));
        }
        // SAFETY: buf is valid for count bytes.
        let out = unsafe { std::slice::from_raw_parts_mut(buf as *mut u8, count as usize) };
        let m = mount()?;
        let mut pos = of.dir_pos.lock().unwrap_or_else(|e| e.into_inner());
        let mut used = 0usize;
        let mut too_small = false;
        m.fs.readdir(&context(), of.ino, of.fh, *pos, &mut |e: DirEntry<'_>| {
            let name = e.name.as_bytes();
            let reclen = dirent64_len(name.len());
            if used + reclen > out.len() {
                too_small = used == 0;
                return false;
            }
            let rec = &mut out[used..used + reclen];
            rec.fill(0);
            rec[0..8].copy_from_slice(&e.ino.0.to_ne_bytes());
            rec[8..16].copy_from_slice(&(e.next_offset as i64).to_ne_bytes());
            rec[16..18].copy_from_slice(&(reclen as u16).to_ne_bytes());
            rec[18] = dtype(e.kind);
            rec[19..19 + name.len()].copy_from_slice(name);
            used += reclen;
            *pos = e.next_offset;
            true
        })?;
        if too_small {
            return Err(Errno::EINVAL);
        }
        Ok(used as c_int)
    })
}

/// `off_t lseek(sfd, offset, whence, fdprivate)`: umvu keeps positions (VU_USE_PRW) and asks
/// for SEEK_END (the size) and SEEK_SET (to confirm); for directories SEEK_SET moves the cookie.
///
/// # Safety
/// `fdprivate` from open.
#[no_mangle]
pub unsafe extern "C" fn vu_vufs_lseek(
    sfd: c_int,
    offset: libc::off_t,
    whence: c_int,
    fdprivate: *mut c_void,
) -> libc::off_t {
    ret_isize(|| {
        // SAFETY: forwarded contract.
        let of = unsafe { open_file(sfd, fdprivate) }?;
        let pos = match whence {
            libc::SEEK_SET => offset,
            libc::SEEK_CUR if of.dir => {
                let pos = *of.dir_pos.lock().unwrap_or_else(|e| e.into_inner());
                (pos as i64).checked_add(offset).ok_or(Errno::EOVERFLOW)?
            }
            libc::SEEK_END => {
                let attr = mount()?.fs.getattr(&context(), of.ino, of.io_handle())?;
                (attr.size as i64)
                    .checked_add(offset)
                    .ok_or(Errno::EOVERFLOW)?
            }
            _ => return Err(Errno::EINVAL),
        };
        if pos < 0 {
            return Err(Errno::EINVAL);
        }
        if of.dir {
            *of.dir_pos.lock().unwrap_or_else(|e| e.into_inner()) = pos as u64;
        }
        Ok(pos as isize)
    }) as libc::off_t
}

/// `int fcntl(sfd, cmd, arg, fdprivate)`: umvu answers F_GETFL itself on ENOSYS; F_SETFL
/// flags (O_APPEND, O_NONBLOCK) are kept by umvu too.
#[no_mangle]
pub extern "C" fn vu_vufs_fcntl(
    _sfd: c_int,
    cmd: c_int,
    _arg: libc::c_long,
    _p: *mut c_void,
) -> c_int {
    ret_int(|| match cmd {
        libc::F_SETFL => Ok(0),
        _ => Err(Errno::ENOSYS),
    })
}

/// Runs a modifying call on `path` of a writable mount.
///
/// # Safety
/// `path` is umvu's C string.
unsafe fn with_path(
    path: *const c_char,
    f: impl FnOnce(&Mount, &Context, &Path) -> Result<(), Errno>,
) -> c_int {
    ret_int(|| {
        let m = mount_rw()?;
        let ctx = context();
        // SAFETY: forwarded contract.
        let path = unsafe { c_path(path) }?;
        f(m, &ctx, path).map(|()| 0)
    })
}

/// Runs a call on (parent inode, last name) of `path`.
///
/// # Safety
/// `path` is umvu's C string.
unsafe fn with_parent(
    path: *const c_char,
    f: impl FnOnce(&Mount, &Context, Ino, &OsStr) -> Result<(), Errno>,
) -> c_int {
    ret_int(|| {
        let m = mount_rw()?;
        let ctx = context();
        // SAFETY: forwarded contract.
        let path = unsafe { c_path(path) }?;
        let (parent, name) = m.resolver.resolve_parent(&ctx, path)?;
        f(m, &ctx, parent, name).map(|()| 0)
    })
}

/// `int unlink(path)`
///
/// # Safety
/// umvu's C string.
#[no_mangle]
pub unsafe extern "C" fn vu_vufs_unlink(path: *const c_char) -> c_int {
    // SAFETY: forwarded contract.
    unsafe { with_path(path, |m, ctx, path| m.resolver.unlink(ctx, path)) }
}

/// `int rmdir(path)`
///
/// # Safety
/// umvu's C string.
#[no_mangle]
pub unsafe extern "C" fn vu_vufs_rmdir(path: *const c_char) -> c_int {
    // SAFETY: forwarded contract.
    unsafe { with_path(path, |m, ctx, path| m.resolver.rmdir(ctx, path)) }
}

/// `int mkdir(path, mode)`
///
/// # Safety
/// umvu's C string.
#[no_mangle]
pub unsafe extern "C" fn vu_vufs_mkdir(path: *const c_char, mode: libc::mode_t) -> c_int {
    // SAFETY: forwarded contract.
    unsafe {
        with_parent(path, |m, ctx, parent, name| {
            let entry = m.fs.mkdir(ctx, parent, name, mode & 0o7777)?;
            m.fs.forget(entry.attr.ino, 1);
            Ok(())
        })
    }
}

/// `int mknod(path, mode, dev)`
///
/// # Safety
/// umvu's C string.
#[no_mangle]
pub unsafe extern "C" fn vu_vufs_mknod(
    path: *const c_char,
    mode: libc::mode_t,
    dev: libc::dev_t,
) -> c_int {
    // SAFETY: forwarded contract.
    unsafe {
        with_parent(path, |m, ctx, parent, name| {
            let mode = if mode & libc::S_IFMT == 0 {
                mode | libc::S_IFREG
            } else {
                mode
            };
            let entry = m.fs.mknod(ctx, parent, name, mode, dev as u32)?;
            m.fs.forget(entry.attr.ino, 1);
            Ok(())
        })
    }
}

/// `int symlink(target, linkpath)`
///
/// # Safety
/// umvu's C strings.
#[no_mangle]
pub unsafe extern "C" fn vu_vufs_symlink(target: *const c_char, linkpath: *const c_char) -> c_int {
    ret_int(|| {
        // SAFETY: umvu's string (verbatim link target).
        let target = unsafe { c_path(target) }?.to_path_buf();
        // SAFETY: forwarded contract.
        let rv = unsafe {
            with_parent(linkpath, |m, ctx, parent, name| {
                let entry = m.fs.symlink(ctx, parent, name, &target)?;
                m.fs.forget(entry.attr.ino, 1);
                Ok(())
            })
        };
        if rv < 0 {
            Err(Errno::last())
        } else {
            Ok(0)
        }
    })
}

/// `int link(old, new)`
///
/// # Safety
/// umvu's C strings.
#[no_mangle]
pub unsafe extern "C" fn vu_vufs_link(old: *const c_char, new: *const c_char) -> c_int {
    ret_int(|| {
        let m = mount_rw()?;
        let ctx = context();
        // SAFETY: umvu's strings.
        let (old, new) = unsafe { (c_path(old)?, c_path(new)?) };
        let ino = m.resolver.resolve(&ctx, old)?;
        let (parent, name) = m.resolver.resolve_parent(&ctx, new)?;
        let entry = m.fs.link(&ctx, ino, parent, name)?;
        m.fs.forget(entry.attr.ino, 1);
        Ok(0)
    })
}

/// `int rename(old, new, flags)`
///
/// # Safety
/// umvu's C strings.
#[no_mangle]
pub unsafe extern "C" fn vu_vufs_rename(
    old: *const c_char,
    new: *const c_char,
    flags: c_uint,
) -> c_int {
    ret_int(|| {
        let m = mount_rw()?;
        let ctx = context();
        // SAFETY: umvu's strings.
        let (old, new) = unsafe { (c_path(old)?, c_path(new)?) };
        m.resolver.rename(&ctx, old, new, flags)?;
        Ok(0)
    })
}

/// Applies `set` to the target of a path or fd call.
///
/// # Safety
/// As [`target`].
unsafe fn set_attr(
    path: *const c_char,
    sfd: c_int,
    fdprivate: *mut c_void,
    mut set: SetAttr,
) -> c_int {
    ret_int(|| {
        let m = mount_rw()?;
        let ctx = context();
        // SAFETY: forwarded contract.
        let (ino, fh) = unsafe { target(m, &ctx, path, sfd, fdprivate) }?;
        set.fh = fh;
        m.fs.setattr(&ctx, ino, &set)?;
        Ok(0)
    })
}

/// `int truncate(path, length, sfd, fdprivate)` (ftruncate when fdprivate is set)
///
/// # Safety
/// umvu's arguments.
#[no_mangle]
pub unsafe extern "C" fn vu_vufs_truncate(
    path: *const c_char,
    length: libc::off_t,
    sfd: c_int,
    fdprivate: *mut c_void,
) -> c_int {
    let Ok(size) = u64::try_from(length) else {
        vuglue::set_errno(Errno::EINVAL);
        return -1;
    };
    let set = SetAttr {
        size: Some(size),
        ..SetAttr::default()
    };
    // SAFETY: forwarded contract.
    unsafe { set_attr(path, sfd, fdprivate, set) }
}

/// `int chmod(path, mode, sfd, fdprivate)`
///
/// # Safety
/// umvu's arguments.
#[no_mangle]
pub unsafe extern "C" fn vu_vufs_chmod(
    path: *const c_char,
    mode: libc::mode_t,
    sfd: c_int,
    fdprivate: *mut c_void,
) -> c_int {
    let set = SetAttr {
        mode: Some(mode & 0o7777),
        ..SetAttr::default()
    };
    // SAFETY: forwarded contract.
    unsafe { set_attr(path, sfd, fdprivate, set) }
}

/// `int lchown(path, uid, gid, sfd, fdprivate)`; `-1` leaves an id unchanged.
///
/// # Safety
/// umvu's arguments.
#[no_mangle]
pub unsafe extern "C" fn vu_vufs_lchown(
    path: *const c_char,
    uid: libc::uid_t,
    gid: libc::gid_t,
    sfd: c_int,
    fdprivate: *mut c_void,
) -> c_int {
    let set = SetAttr {
        uid: (uid != u32::MAX).then_some(uid),
        gid: (gid != u32::MAX).then_some(gid),
        ..SetAttr::default()
    };
    // SAFETY: forwarded contract.
    unsafe { set_attr(path, sfd, fdprivate, set) }
}

fn set_time(ts: &libc::timespec) -> Result<Option<SetTime>, Errno> {
    match ts.tv_nsec {
        libc::UTIME_OMIT => Ok(None),
        libc::UTIME_NOW => Ok(Some(SetTime::Now)),
        n if (0..1_000_000_000).contains(&n) => {
            let t = if ts.tv_sec >= 0 {
                UNIX_EPOCH + Duration::new(ts.tv_sec as u64, n as u32)
            } else {
                UNIX_EPOCH - Duration::from_secs(ts.tv_sec.unsigned_abs())
                    + Duration::from_nanos(n as u64)
            };
            Ok(Some(SetTime::At(t)))
        }
        _ => Err(Errno::EINVAL),
    }
}

/// `int utimensat(dirfd, path, times[2], flags, sfd, fdprivate)`; NULL times = now.
///
/// # Safety
/// umvu's arguments; `times` NULL or two timespecs.
#[no_mangle]
pub unsafe extern "C" fn vu_vufs_utimensat(
    _dirfd: c_int,
    path: *const c_char,
    times: *const libc::timespec,
    _flags: c_int,
    sfd: c_int,
    fdprivate: *mut c_void,
) -> c_int {
    let set = if times.is_null() {
        Ok(SetAttr {
            atime: Some(SetTime::Now),
            mtime: Some(SetTime::Now),
            ..SetAttr::default()
        })
    } else {
        // SAFETY: non-null times points at two timespecs.
        let (a, m) = unsafe { (&*times, &*times.add(1)) };
        set_time(a).and_then(|atime| {
            Ok(SetAttr {
                atime,
                mtime: set_time(m)?,
                ..SetAttr::default()
            })
        })
    };
    match set {
        // SAFETY: forwarded contract.
        Ok(set) => unsafe { set_attr(path, sfd, fdprivate, set) },
        Err(e) => {
            vuglue::set_errno(e);
            -1
        }
    }
}

/// `int statfs(path, buf, sfd, fdprivate)`
///
/// # Safety
/// `buf` valid for a `struct statfs`.
#[no_mangle]
pub unsafe extern "C" fn vu_vufs_statfs(
    _path: *const c_char,
    buf: *mut libc::statfs,
    _sfd: c_int,
    _fdprivate: *mut c_void,
) -> c_int {
    ret_int(|| {
        let m = mount()?;
        let s = m.fs.statfs(&context())?;
        // SAFETY: buf is umvu's struct statfs.
        let out = unsafe { buf.as_mut() }.ok_or(Errno::from_raw(libc::EFAULT))?;
        // SAFETY: plain old data; zero is valid.
        *out = unsafe { std::mem::zeroed() };
        out.f_type = 0x7675_6673; // "vufs"
        out.f_bsize = i64::from(s.block_size);
        out.f_blocks = s.blocks;
        out.f_bfree = s.blocks_free;
        out.f_bavail = s.blocks_available;
        out.f_files = s.files;
        out.f_ffree = s.files_free;
        out.f_namelen = i64::from(s.name_max);
        out.f_frsize = i64::from(s.fragment_size);
        Ok(0)
    })
}

/// Copies an xattr answer out: size 0 asks for the length; a small buffer is `ERANGE`.
///
/// # Safety
/// `buf` valid for `size` bytes when `size > 0`.
unsafe fn xattr_out(data: &[u8], buf: *mut c_void, size: usize) -> Result<isize, Errno> {
    if size == 0 {
        return Ok(data.len() as isize);
    }
    if data.len() > size {
        return Err(Errno::from_raw(libc::ERANGE));
    }
    if buf.is_null() {
        return Err(Errno::from_raw(libc::EFAULT));
    }
    // SAFETY: buf valid for size >= data.len() bytes.
    unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), buf as *mut u8, data.len()) };
    Ok(data.len() as isize)
}

/// `ssize_t lgetxattr(path, name, value, size, sfd, fdprivate)`
///
/// # Safety
/// umvu's arguments.
#[no_mangle]
pub unsafe extern "C" fn vu_vufs_lgetxattr(
    path: *const c_char,
    name: *const c_char,
    value: *mut c_void,
    size: usize,
    sfd: c_int,
    fdprivate: *mut c_void,
) -> isize {
    ret_isize(|| {
        let m = mount()?;
        let ctx = context();
        // SAFETY: forwarded contract.
        let (ino, _) = unsafe { target(m, &ctx, path, sfd, fdprivate) }?;
        // SAFETY: umvu's string.
        let name = unsafe { c_path(name) }?.as_os_str();
        let data = m.fs.getxattr(&ctx, ino, name)?;
        // SAFETY: value valid for size bytes.
        unsafe { xattr_out(&data, value, size) }
    })
}

/// `int lsetxattr(path, name, value, size, flags, sfd, fdprivate)`
///
/// # Safety
/// umvu's arguments.
#[no_mangle]
pub unsafe extern "C" fn vu_vufs_lsetxattr(
    path: *const c_char,
    name: *const c_char,
    value: *const c_void,
    size: usize,
    flags: c_int,
    sfd: c_int,
    fdprivate: *mut c_void,
) -> c_int {
    ret_int(|| {
        let m = mount_rw()?;
        let ctx = context();
        // SAFETY: forwarded contract.
        let (ino, _) = unsafe { target(m, &ctx, path, sfd, fdprivate) }?;
        // SAFETY: umvu's string.
        let name = unsafe { c_path(name) }?.as_os_str();
        let data: &[u8] = if size == 0 || value.is_null() {
            &[]
        } else {
            // SAFETY: value valid for size bytes.
            unsafe { std::slice::from_raw_parts(value as *const u8, size) }
        };
        m.fs.setxattr(&ctx, ino, name, data, flags)?;
        Ok(0)
    })
}

/// `ssize_t llistxattr(path, list, size, sfd, fdprivate)`: NUL-separated names.
///
/// # Safety
/// umvu's arguments.
#[no_mangle]
pub unsafe extern "C" fn vu_vufs_llistxattr(
    path: *const c_char,
    list: *mut c_char,
    size: usize,
    sfd: c_int,
    fdprivate: *mut c_void,
) -> isize {
    ret_isize(|| {
        let m = mount()?;
        let ctx = context();
        // SAFETY: forwarded contract.
        let (ino, _) = unsafe { target(m, &ctx, path, sfd, fdprivate) }?;
        let mut data = Vec::new();
        for name in m.fs.listxattr(&ctx, ino)? {
            data.extend_from_slice(&name);
            data.push(0);
        }
        // SAFETY: list valid for size bytes.
        unsafe { xattr_out(&data, list as *mut c_void, size) }
    })
}

/// `int lremovexattr(path, name, sfd, fdprivate)`
///
/// # Safety
/// umvu's arguments.
#[no_mangle]
pub unsafe extern "C" fn vu_vufs_lremovexattr(
    path: *const c_char,
    name: *const c_char,
    sfd: c_int,
    fdprivate: *mut c_void,
) -> c_int {
    ret_int(|| {
        let m = mount_rw()?;
        let ctx = context();
        // SAFETY: forwarded contract.
        let (ino, _) = unsafe { target(m, &ctx, path, sfd, fdprivate) }?;
        // SAFETY: umvu's string.
        let name = unsafe { c_path(name) }?.as_os_str();
        m.fs.removexattr(&ctx, ino, name)?;
        Ok(0)
    })
}
