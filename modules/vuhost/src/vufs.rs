//! Driving `vufs.so` as umvu does: `init` with the module's own entry current, `mount`
//! registering a path entry through `vuht_pathadd`, handlers called with that entry current
//! and mount-relative paths, `umount2` then `cleanup`.

use super::*;

type Fn0 = unsafe extern "C" fn() -> *mut c_void;
type MountFn = unsafe extern "C" fn(
    *const c_char,
    *const c_char,
    *const c_char,
    c_ulong,
    *const c_void,
) -> c_int;
type LstatFn =
    unsafe extern "C" fn(*const c_char, *mut libc::stat, c_int, c_int, *mut c_void) -> c_int;
type OpenFn = unsafe extern "C" fn(*const c_char, c_int, libc::mode_t, *mut *mut c_void) -> c_int;
type PathFn = unsafe extern "C" fn(*const c_char) -> c_int;
type PathModeFn = unsafe extern "C" fn(*const c_char, libc::mode_t) -> c_int;
type TwoPathFn = unsafe extern "C" fn(*const c_char, *const c_char) -> c_int;

/// The loaded `vufs.so`.
#[derive(Debug)]
pub struct VufsModule {
    /// The module.
    pub module: Module,
    own_ht: Box<HostHt>,
}

/// One mount of it.
#[derive(Debug)]
pub struct VufsMount<'a> {
    vufs: &'a VufsModule,
    /// The registered entry.
    pub ht: *mut HostHt,
}

/// A file opened through the module.
#[derive(Debug)]
pub struct VufsFd<'a> {
    mount: &'a VufsMount<'a>,
    /// The sfd the module returned.
    pub sfd: c_int,
    /// The module's per-open data.
    pub fdprivate: *mut c_void,
}

fn check(rv: c_int) -> Result<c_int, i32> {
    if rv < 0 {
        Err(errno())
    } else {
        Ok(rv)
    }
}

fn check_isize(rv: isize) -> Result<usize, i32> {
    if rv < 0 {
        Err(errno())
    } else {
        Ok(rv as usize)
    }
}

impl VufsModule {
    /// Loads `libvufs.so` and runs `vu_vufs_init` as `vu_insmod` does.
    pub fn load() -> VufsModule {
        let module = Module::load(&module_path("vufs")).expect("vufs.so loads");
        let mut own_ht = Box::new(HostHt {
            kind: 0,
            source: String::new(),
            path: String::new(),
            fstype: "vufs".into(),
            mountflags: 0,
            data: None,
            vuflags: 0,
            confirm: None,
            private_data: std::ptr::null_mut(),
            deleted: false,
        });
        set_current_ht(&mut *own_ht);
        // SAFETY: vu_vufs_init(void) -> void *.
        let private = unsafe { module.function::<Fn0>("vu_vufs_init")() };
        own_ht.private_data = private;
        VufsModule { module, own_ht }
    }

    /// `vu_<name>_<call>` of this module.
    ///
    /// # Safety
    /// `F` must be the handler's C signature.
    pub unsafe fn handler<F: Copy>(&self, call: &str) -> F {
        // SAFETY: forwarded contract.
        unsafe { self.module.function::<F>(&format!("vu_vufs_{call}")) }
    }

    /// `vumount -t vufs -o DATA SOURCE TARGET`
    pub fn mount(
        &self,
        source: &Path,
        target: &Path,
        data: Option<&str>,
        flags: c_ulong,
    ) -> Result<VufsMount<'_>, i32> {
        let (s, t, ty) = (
            cstring(source.to_str().expect("utf-8")),
            cstring(target.to_str().expect("utf-8")),
            cstring("vufs"),
        );
        let d = data.map(cstring);
        set_current_ht(&*self.own_ht as *const HostHt as *mut HostHt);
        let _ = take_registered();
        clear_errno();
        // SAFETY: umvu's mount arguments.
        let rv = unsafe {
            self.handler::<MountFn>("mount")(
                s.as_ptr(),
                t.as_ptr(),
                ty.as_ptr(),
                flags,
                d.as_ref()
                    .map_or(std::ptr::null(), |d| d.as_ptr() as *const c_void),
            )
        };
        check(rv)?;
        let ht = take_registered();
        assert!(!ht.is_null(), "mount returned 0 without vuht_pathadd");
        Ok(VufsMount { vufs: self, ht })
    }
}

impl<'a> VufsMount<'a> {
    fn enter(&self) {
        set_current_ht(self.ht);
        clear_errno();
    }

    /// The registered entry.
    pub fn entry(&self) -> &HostHt {
        // SAFETY: the entry lives until umount consumes self.
        unsafe { &*self.ht }
    }

    /// Asks the confirm function about `tail` (the path after the mount point).
    pub fn confirm(&self, tail: &str) -> bool {
        let t = cstring(tail);
        let f = self.entry().confirm.expect("confirm function registered");
        // SAFETY: umvu's confirm arguments.
        unsafe {
            f(
                CHECKPATH,
                t.as_ptr() as *mut c_void,
                tail.len() as c_int,
                self.ht,
            ) == 1
        }
    }

    /// `lstat(mpath)`
    pub fn lstat(&self, path: &str) -> Result<libc::stat, i32> {
        self.enter();
        let p = cstring(path);
        // SAFETY: plain data.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        // SAFETY: umvu's lstat arguments.
        check(unsafe {
            self.vufs.handler::<LstatFn>("lstat")(
                p.as_ptr(),
                &mut st,
                libc::AT_SYMLINK_NOFOLLOW,
                -1,
                std::ptr::null_mut(),
            )
        })?;
        Ok(st)
    }

    /// `open(mpath, flags, mode)`
    pub fn open(&'a self, path: &str, flags: c_int, mode: libc::mode_t) -> Result<VufsFd<'a>, i32> {
        self.enter();
        let p = cstring(path);
        let mut fdprivate = std::ptr::null_mut();
        // SAFETY: umvu's open arguments.
        let sfd = check(unsafe {
            self.vufs.handler::<OpenFn>("open")(p.as_ptr(), flags, mode, &mut fdprivate)
        })?;
        Ok(VufsFd {
            mount: self,
            sfd,
            fdprivate,
        })
    }

    fn path_call(&self, call: &str, path: &str) -> Result<(), i32> {
        self.enter();
        let p = cstring(path);
        // SAFETY: int call(const char *).
        check(unsafe { self.vufs.handler::<PathFn>(call)(p.as_ptr()) }).map(|_| ())
    }

    /// `unlink(mpath)`
    pub fn unlink(&self, path: &str) -> Result<(), i32> {
        self.path_call("unlink", path)
    }

    /// `rmdir(mpath)`
    pub fn rmdir(&self, path: &str) -> Result<(), i32> {
        self.path_call("rmdir", path)
    }

    /// `mkdir(mpath, mode)`
    pub fn mkdir(&self, path: &str, mode: libc::mode_t) -> Result<(), i32> {
        self.enter();
        let p = cstring(path);
        // SAFETY: int mkdir(const char *, mode_t).
        check(unsafe { self.vufs.handler::<PathModeFn>("mkdir")(p.as_ptr(), mode) }).map(|_| ())
    }

    /// `mknod(mpath, mode, dev)`
    pub fn mknod(&self, path: &str, mode: libc::mode_t, dev: libc::dev_t) -> Result<(), i32> {
        self.enter();
        let p = cstring(path);
        type F = unsafe extern "C" fn(*const c_char, libc::mode_t, libc::dev_t) -> c_int;
        // SAFETY: int mknod(const char *, mode_t, dev_t).
        check(unsafe { self.vufs.handler::<F>("mknod")(p.as_ptr(), mode, dev) }).map(|_| ())
    }

    /// `symlink(target, mpath)`
    pub fn symlink(&self, target: &str, path: &str) -> Result<(), i32> {
        self.enter();
        let (t, p) = (cstring(target), cstring(path));
        // SAFETY: int symlink(const char *, const char *).
        check(unsafe { self.vufs.handler::<TwoPathFn>("symlink")(t.as_ptr(), p.as_ptr()) })
            .map(|_| ())
    }

    /// `link(old, new)`
    pub fn link(&self, old: &str, new: &str) -> Result<(), i32> {
        self.enter();
        let (o, n) = (cstring(old), cstring(new));
        // SAFETY: int link(const char *, const char *).
        check(unsafe { self.vufs.handler::<TwoPathFn>("link")(o.as_ptr(), n.as_ptr()) }).map(|_| ())
    }

    /// `rename(old, new, flags)`
    pub fn rename(&self, old: &str, new: &str, flags: c_uint) -> Result<(), i32> {
        self.enter();
        let (o, n) = (cstring(old), cstring(new));
        type F = unsafe extern "C" fn(*const c_char, *const c_char, c_uint) -> c_int;
        // SAFETY: int rename(const char *, const char *, int).
        check(unsafe { self.vufs.handler::<F>("rename")(o.as_ptr(), n.as_ptr(), flags) })
            .map(|_| ())
    }

    /// `readlink(mpath)` with umvu's PATH_MAX+1 buffer; checks the NUL terminator.
    pub fn readlink(&self, path: &str) -> Result<String, i32> {
        self.enter();
        let p = cstring(path);
        let mut buf = vec![0xffu8; libc::PATH_MAX as usize + 1];
        type F = unsafe extern "C" fn(*const c_char, *mut c_char, usize) -> isize;
        // SAFETY: ssize_t readlink(const char *, char *, size_t).
        let n = check_isize(unsafe {
            self.vufs.handler::<F>("readlink")(
                p.as_ptr(),
                buf.as_mut_ptr() as *mut c_char,
                buf.len(),
            )
        })?;
        assert_eq!(buf[n], 0, "readlink result must be NUL-terminated for umvu");
        Ok(String::from_utf8_lossy(&buf[..n]).into_owned())
    }

    /// `truncate(mpath, len)`
    pub fn truncate(&self, path: &str, len: i64) -> Result<(), i32> {
        self.enter();
        let p = cstring(path);
        type F = unsafe extern "C" fn(*const c_char, libc::off_t, c_int, *mut c_void) -> c_int;
        // SAFETY: umvu's truncate arguments.
        check(unsafe {
            self.vufs.handler::<F>("truncate")(p.as_ptr(), len, -1, std::ptr::null_mut())
        })
        .map(|_| ())
    }

    /// `chmod(mpath, mode)`
    pub fn chmod(&self, path: &str, mode: libc::mode_t) -> Result<(), i32> {
        self.enter();
        let p = cstring(path);
        type F = unsafe extern "C" fn(*const c_char, libc::mode_t, c_int, *mut c_void) -> c_int;
        // SAFETY: umvu's chmod arguments.
        check(unsafe {
            self.vufs.handler::<F>("chmod")(p.as_ptr(), mode, -1, std::ptr::null_mut())
        })
        .map(|_| ())
    }

    /// `statfs(mpath)`
    pub fn statfs(&self, path: &str) -> Result<libc::statfs, i32> {
        self.enter();
        let p = cstring(path);
        // SAFETY: plain data.
        let mut sf: libc::statfs = unsafe { std::mem::zeroed() };
        type F =
            unsafe extern "C" fn(*const c_char, *mut libc::statfs, c_int, *mut c_void) -> c_int;
        // SAFETY: umvu's statfs arguments.
        check(unsafe {
            self.vufs.handler::<F>("statfs")(p.as_ptr(), &mut sf, -1, std::ptr::null_mut())
        })?;
        Ok(sf)
    }

    /// Lists a directory through open + getdents64 (small buffers, several calls) + close.
    pub fn list(&'a self, path: &str) -> Result<Vec<(String, u8)>, i32> {
        let fd = self.open(path, libc::O_RDONLY | libc::O_DIRECTORY, 0)?;
        let mut names = Vec::new();
        let mut buf = vec![0u8; 96];
        loop {
            let n = fd.getdents64(&mut buf)?;
            if n == 0 {
                break;
            }
            let mut off = 0;
            while off < n {
                let reclen = u16::from_ne_bytes([buf[off + 16], buf[off + 17]]) as usize;
                assert!(reclen % 8 == 0 && reclen >= 24, "bad d_reclen {reclen}");
                let name = &buf[off + 19..off + reclen];
                let end = name.iter().position(|&b| b == 0).expect("NUL in record");
                names.push((
                    String::from_utf8_lossy(&name[..end]).into_owned(),
                    buf[off + 18],
                ));
                off += reclen;
            }
        }
        fd.close()?;
        names.sort();
        Ok(names)
    }

    /// `vuumount`: umount2 (vuht_del) then, as umvu does when the entry is released, cleanup.
    pub fn umount(self) -> Result<(), i32> {
        self.enter();
        let t = cstring(&self.entry().path);
        type F = unsafe extern "C" fn(*const c_char, c_int) -> c_int;
        // SAFETY: umvu's umount2 arguments.
        check(unsafe { self.vufs.handler::<F>("umount2")(t.as_ptr(), 0) })?;
        assert!(self.entry().deleted, "umount2 must call vuht_del");
        type C = unsafe extern "C" fn(u8, *mut c_void, c_int, *mut HostHt);
        // SAFETY: umvu's cleanup arguments; the entry is ours and freed right after.
        unsafe {
            self.vufs.handler::<C>("cleanup")(CHECKPATH, std::ptr::null_mut(), 0, self.ht);
            drop(Box::from_raw(self.ht));
        }
        Ok(())
    }
}

impl VufsFd<'_> {
    /// `pread64`
    pub fn pread(&self, buf: &mut [u8], off: i64) -> Result<usize, i32> {
        self.pread_as(self.sfd, self.fdprivate, buf, off)
    }

    /// `pread64` with the given sfd and fdprivate (umvu's readv passes the wrong sfd, its
    /// mmap write-back a garbage fdprivate). The module only compares `fdprivate` with its
    /// table of open files, so any value is safe to pass.
    #[allow(clippy::not_unsafe_ptr_arg_deref)]
    pub fn pread_as(
        &self,
        sfd: c_int,
        fdprivate: *mut c_void,
        buf: &mut [u8],
        off: i64,
    ) -> Result<usize, i32> {
        self.mount.enter();
        type F = unsafe extern "C" fn(
            c_int,
            *mut c_void,
            usize,
            libc::off_t,
            c_int,
            *mut c_void,
        ) -> isize;
        // SAFETY: umvu's pread64 arguments.
        check_isize(unsafe {
            self.mount.vufs.handler::<F>("pread64")(
                sfd,
                buf.as_mut_ptr() as *mut c_void,
                buf.len(),
                off,
                0,
                fdprivate,
            )
        })
    }

    /// `pwrite64`
    pub fn pwrite(&self, buf: &[u8], off: i64) -> Result<usize, i32> {
        self.mount.enter();
        type F = unsafe extern "C" fn(
            c_int,
            *const c_void,
            usize,
            libc::off_t,
            c_int,
            *mut c_void,
        ) -> isize;
        // SAFETY: umvu's pwrite64 arguments.
        check_isize(unsafe {
            self.mount.vufs.handler::<F>("pwrite64")(
                self.sfd,
                buf.as_ptr() as *const c_void,
                buf.len(),
                off,
                0,
                self.fdprivate,
            )
        })
    }

    /// `lseek`
    pub fn lseek(&self, off: i64, whence: c_int) -> Result<i64, i32> {
        self.mount.enter();
        type F = unsafe extern "C" fn(c_int, libc::off_t, c_int, *mut c_void) -> libc::off_t;
        // SAFETY: umvu's lseek arguments.
        let rv =
            unsafe { self.mount.vufs.handler::<F>("lseek")(self.sfd, off, whence, self.fdprivate) };
        if rv < 0 {
            Err(errno())
        } else {
            Ok(rv)
        }
    }

    /// `getdents64`
    pub fn getdents64(&self, buf: &mut [u8]) -> Result<usize, i32> {
        self.mount.enter();
        type F = unsafe extern "C" fn(c_uint, *mut c_void, c_uint, *mut c_void) -> c_int;
        // SAFETY: umvu's getdents64 arguments.
        check(unsafe {
            self.mount.vufs.handler::<F>("getdents64")(
                self.sfd as c_uint,
                buf.as_mut_ptr() as *mut c_void,
                buf.len() as c_uint,
                self.fdprivate,
            )
        })
        .map(|n| n as usize)
    }

    /// fstat: lstat with this file's sfd and fdprivate.
    pub fn fstat(&self, path: &str) -> Result<libc::stat, i32> {
        self.mount.enter();
        let p = cstring(path);
        // SAFETY: plain data.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        // SAFETY: umvu's lstat arguments for fstat.
        check(unsafe {
            self.mount.vufs.handler::<LstatFn>("lstat")(
                p.as_ptr(),
                &mut st,
                libc::AT_SYMLINK_NOFOLLOW,
                self.sfd,
                self.fdprivate,
            )
        })?;
        Ok(st)
    }

    /// `close`
    pub fn close(self) -> Result<(), i32> {
        self.mount.enter();
        type F = unsafe extern "C" fn(c_int, *mut c_void) -> c_int;
        // SAFETY: umvu's close arguments, once.
        check(unsafe { self.mount.vufs.handler::<F>("close")(self.sfd, self.fdprivate) })
            .map(|_| ())
    }
}
