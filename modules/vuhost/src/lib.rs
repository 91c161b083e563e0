//! A loader harness for the VUOS modules: it `dlopen`s a built `.so` and drives it through
//! the same C ABI umvu and vudev.so use (VUOS.md sections 3 and 4), providing the host-side
//! symbols the modules import (`vudev_get_private_data`, `vudev_set_devtype`, `vu_mod_getht`,
//! `vuht_pathadd`, `vuht_del`, `vuht_get_service`, `vuht_get_private_data`).
//!
//! The symbols are exported from the test executable itself (`-rdynamic`, set by this
//! package's build script for its tests), so a module resolves them at `dlopen` exactly as it
//! resolves umvu's. Tests call [`host_symbols`] once, which also keeps the linker from
//! dropping them.
#![allow(unsafe_code)]

use std::cell::Cell;
use std::ffi::{c_char, c_int, c_uint, c_ulong, c_void, CStr, CString};
use std::path::{Path, PathBuf};

/// `CHECKPATH`
pub const CHECKPATH: u8 = 1;

/// vudev's device object as this host lays it out (opaque to modules).
#[repr(C)]
#[derive(Debug)]
pub struct HostVudev {
    /// What `init` returned.
    pub private_data: *mut c_void,
    /// What the module set with `vudev_set_devtype` (0 = never called).
    pub devtype: libc::mode_t,
}

/// A hashtable entry registered through `vuht_pathadd` (or the module's own entry).
#[derive(Debug)]
pub struct HostHt {
    /// Entry type (CHECKPATH, ...).
    pub kind: u8,
    /// Mount source.
    pub source: String,
    /// Mount point.
    pub path: String,
    /// Mount type.
    pub fstype: String,
    /// Mount flags.
    pub mountflags: c_ulong,
    /// Mount options.
    pub data: Option<String>,
    /// `vuflags` (VUFLAG_PREFIX...).
    pub vuflags: c_int,
    /// The confirm function.
    pub confirm: Option<ConfirmFun>,
    /// The module's private data.
    pub private_data: *mut c_void,
    /// Set by `vuht_del`.
    pub deleted: bool,
}

/// `confirmfun_t`
pub type ConfirmFun = unsafe extern "C" fn(u8, *mut c_void, c_int, *mut HostHt) -> c_int;

thread_local! {
    static CURRENT_HT: Cell<*mut HostHt> = const { Cell::new(std::ptr::null_mut()) };
}

/// The service pointer handed out by `vuht_get_service` (only compared, never read).
static SERVICE: u8 = 0;

/// Sets the entry `vu_mod_getht()` returns on this thread (as umvu does before each call).
pub fn set_current_ht(ht: *mut HostHt) {
    CURRENT_HT.with(|c| c.set(ht));
}

/// `void *vudev_get_private_data(struct vudev_t *)`
///
/// # Safety
/// `vudev` is NULL or a [`HostVudev`].
#[no_mangle]
pub unsafe extern "C" fn vudev_get_private_data(vudev: *mut HostVudev) -> *mut c_void {
    // SAFETY: per the contract.
    unsafe { vudev.as_ref() }.map_or(std::ptr::null_mut(), |v| v.private_data)
}

/// `void vudev_set_devtype(struct vudev_t *, mode_t)`
///
/// # Safety
/// `vudev` is NULL or a [`HostVudev`].
#[no_mangle]
pub unsafe extern "C" fn vudev_set_devtype(vudev: *mut HostVudev, devtype: libc::mode_t) {
    // SAFETY: per the contract.
    if let Some(v) = unsafe { vudev.as_mut() } {
        v.devtype = devtype;
    }
}

/// `struct vuht_entry_t *vu_mod_getht(void)`
#[no_mangle]
pub extern "C" fn vu_mod_getht() -> *mut HostHt {
    CURRENT_HT.with(|c| c.get())
}

/// `struct vu_service_t *vuht_get_service(struct vuht_entry_t *)`
#[no_mangle]
pub extern "C" fn vuht_get_service(_ht: *mut HostHt) -> *mut c_void {
    &SERVICE as *const u8 as *mut c_void
}

/// `void *vuht_get_private_data(struct vuht_entry_t *)`
///
/// # Safety
/// `ht` is NULL or a [`HostHt`].
#[no_mangle]
pub unsafe extern "C" fn vuht_get_private_data(ht: *mut HostHt) -> *mut c_void {
    // SAFETY: per the contract.
    unsafe { ht.as_ref() }.map_or(std::ptr::null_mut(), |h| h.private_data)
}

fn opt_string(p: *const c_char) -> Option<String> {
    // SAFETY: callers pass NULL or C strings.
    (!p.is_null()).then(|| unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned())
}

/// `vuht_pathadd(type, source, path, fstype, mountflags, mountopts, service, vuflags, confirm,
/// private)`: records the entry; the test owns it afterwards ([`take_registered`]).
///
/// # Safety
/// C strings or NULL, as umvu accepts them.
#[no_mangle]
#[allow(clippy::too_many_arguments)]
pub unsafe extern "C" fn vuht_pathadd(
    kind: u8,
    source: *const c_char,
    path: *const c_char,
    fstype: *const c_char,
    mountflags: c_ulong,
    mountopts: *const c_char,
    service: *mut c_void,
    vuflags: c_int,
    confirm: Option<ConfirmFun>,
    private_data: *mut c_void,
) -> *mut HostHt {
    assert_eq!(
        service,
        vuht_get_service(std::ptr::null_mut()),
        "the module passed a service that is not its own"
    );
    let ht = Box::into_raw(Box::new(HostHt {
        kind,
        source: opt_string(source).unwrap_or_default(),
        path: opt_string(path).unwrap_or_default(),
        fstype: opt_string(fstype).unwrap_or_default(),
        mountflags,
        data: opt_string(mountopts),
        vuflags,
        confirm,
        private_data,
        deleted: false,
    }));
    REGISTERED.with(|r| r.set(ht));
    ht
}

thread_local! {
    static REGISTERED: Cell<*mut HostHt> = const { Cell::new(std::ptr::null_mut()) };
}

/// The entry the last `vuht_pathadd` on this thread registered (NULL if none).
pub fn take_registered() -> *mut HostHt {
    REGISTERED.with(|r| r.replace(std::ptr::null_mut()))
}

/// `int vuht_del(struct vuht_entry_t *, int umountflags)`: marks the entry deleted.
///
/// # Safety
/// `ht` is NULL or a [`HostHt`].
#[no_mangle]
pub unsafe extern "C" fn vuht_del(ht: *mut HostHt, _flags: c_int) -> c_int {
    // SAFETY: per the contract.
    match unsafe { ht.as_mut() } {
        Some(h) if !h.deleted => {
            h.deleted = true;
            0
        }
        Some(_) => -libc::EBUSY,
        None => -libc::EINVAL,
    }
}

/// Every host symbol this harness provides, by name (also keeps them in the executable).
pub fn host_symbols() -> Vec<(&'static str, usize)> {
    vec![
        (
            "vudev_get_private_data",
            vudev_get_private_data as *const () as usize,
        ),
        ("vudev_set_devtype", vudev_set_devtype as *const () as usize),
        ("vu_mod_getht", vu_mod_getht as *const () as usize),
        ("vuht_get_service", vuht_get_service as *const () as usize),
        (
            "vuht_get_private_data",
            vuht_get_private_data as *const () as usize,
        ),
        ("vuht_pathadd", vuht_pathadd as *const () as usize),
        ("vuht_del", vuht_del as *const () as usize),
    ]
}

/// The current thread's errno.
pub fn errno() -> i32 {
    // SAFETY: this thread's errno location.
    unsafe { *libc::__errno_location() }
}

/// Clears errno (so a test sees what the module set).
pub fn clear_errno() {
    // SAFETY: this thread's errno location.
    unsafe { *libc::__errno_location() = 0 };
}

/// Where cargo put the cdylib `lib<name>.so` of a dev-dependency: beside the test executable.
pub fn module_path(lib_name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    let deps = exe.parent().expect("deps dir");
    let path = deps.join(format!("lib{lib_name}.so"));
    assert!(
        path.exists(),
        "{} not built (it is a dev-dependency of vuhost)",
        path.display()
    );
    path
}

/// A `dlopen`ed module.
#[derive(Debug)]
pub struct Module {
    handle: *mut c_void,
    /// The file loaded.
    pub path: PathBuf,
}

// SAFETY: a dlopen handle may be used from any thread.
unsafe impl Send for Module {}
// SAFETY: as above; dlsym is thread-safe.
unsafe impl Sync for Module {}

impl Module {
    /// `dlopen(path, RTLD_NOW)`: every undefined symbol must resolve now (against this host).
    pub fn load(path: &Path) -> Result<Module, String> {
        let _ = host_symbols();
        let c = CString::new(path.as_os_str().as_encoded_bytes()).map_err(|e| e.to_string())?;
        // SAFETY: a valid C string; the module's constructors run here.
        let handle = unsafe { libc::dlopen(c.as_ptr(), libc::RTLD_NOW | libc::RTLD_LOCAL) };
        if handle.is_null() {
            // SAFETY: dlerror returns a C string after a failed dlopen.
            let err = unsafe { CStr::from_ptr(libc::dlerror()) };
            return Err(err.to_string_lossy().into_owned());
        }
        Ok(Module {
            handle,
            path: path.to_path_buf(),
        })
    }

    /// The address of symbol `name`, if exported.
    pub fn symbol(&self, name: &str) -> Option<*mut c_void> {
        let c = CString::new(name).ok()?;
        // SAFETY: valid handle and C string.
        let p = unsafe { libc::dlsym(self.handle, c.as_ptr()) };
        (!p.is_null()).then_some(p)
    }

    /// Symbol `name` as a function pointer of type `F`.
    ///
    /// # Safety
    /// `F` must be the symbol's true C signature.
    pub unsafe fn function<F: Copy>(&self, name: &str) -> F {
        let p = self
            .symbol(name)
            .unwrap_or_else(|| panic!("{name} not exported"));
        assert_eq!(std::mem::size_of::<F>(), std::mem::size_of::<*mut c_void>());
        // SAFETY: per the contract, F is a function pointer type of this symbol.
        unsafe { std::mem::transmute_copy::<*mut c_void, F>(&p) }
    }
}

/// Undefined dynamic symbols of a `.so` that are not versioned libc/libgcc ones (`nm -D`).
pub fn undefined_imports(path: &Path) -> Vec<String> {
    let out = std::process::Command::new("nm")
        .args(["-D", "--undefined-only"])
        .arg(path)
        .output()
        .expect("nm runs");
    assert!(out.status.success(), "nm failed on {}", path.display());
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let mut parts = l.split_whitespace();
            let kind = parts.next()?;
            let name = parts.next()?;
            (kind == "U" && !name.contains('@')).then(|| name.to_string())
        })
        .collect()
}

/// Size in bytes of exported data symbol `name` (`nm -D -S`).
pub fn symbol_size(path: &Path, name: &str) -> Option<u64> {
    let out = std::process::Command::new("nm")
        .args(["-D", "-S", "--defined-only"])
        .arg(path)
        .output()
        .ok()?;
    String::from_utf8_lossy(&out.stdout).lines().find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        (f.len() == 4 && f[3] == name)
            .then(|| u64::from_str_radix(f[1], 16).ok())
            .flatten()
    })
}

/// The 12 pointers of `struct vudev_operations_t`, in order.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct VudevOps {
    /// confirm_subdev
    pub confirm_subdev: Option<unsafe extern "C" fn(c_uint, *mut HostVudev) -> c_int>,
    /// open
    pub open: Option<unsafe extern "C" fn(*const c_char, libc::mode_t, *mut VudevFd) -> c_int>,
    /// close
    pub close: Option<unsafe extern "C" fn(c_int, *mut VudevFd) -> c_int>,
    /// read
    pub read: Option<unsafe extern "C" fn(c_int, *mut c_void, usize, *mut VudevFd) -> isize>,
    /// write
    pub write: Option<unsafe extern "C" fn(c_int, *const c_void, usize, *mut VudevFd) -> isize>,
    /// pread
    pub pread:
        Option<unsafe extern "C" fn(c_int, *mut c_void, usize, libc::off_t, *mut VudevFd) -> isize>,
    /// pwrite
    pub pwrite: Option<
        unsafe extern "C" fn(c_int, *const c_void, usize, libc::off_t, *mut VudevFd) -> isize,
    >,
    /// lseek
    pub lseek: Option<unsafe extern "C" fn(c_int, libc::off_t, c_int, *mut VudevFd) -> libc::off_t>,
    /// ioctl
    pub ioctl: Option<unsafe extern "C" fn(c_int, c_ulong, *mut c_void, *mut VudevFd) -> c_int>,
    /// epoll_ctl
    pub epoll_ctl: Option<unsafe extern "C" fn()>,
    /// init
    pub init: Option<
        unsafe extern "C" fn(*const c_char, c_ulong, *const c_char, *mut HostVudev) -> *mut c_void,
    >,
    /// fini
    pub fini: Option<unsafe extern "C" fn(*mut c_void) -> c_int>,
}

/// `struct vudevfd_t`, as vudev.so allocates it.
#[repr(C)]
#[derive(Debug)]
pub struct VudevFd {
    /// Subdevice.
    pub subdev: libc::dev_t,
    /// vudev's position.
    pub offset: libc::off_t,
    /// open flags.
    pub flags: c_int,
    /// The module's per-open data.
    pub fdprivate: *mut c_void,
    /// The device.
    pub vudev: *mut HostVudev,
}

/// One mounted vudev device, driven as vudev.so drives a submodule.
#[derive(Debug)]
pub struct VudevMount {
    /// The operation table read from the module.
    pub ops: VudevOps,
    /// The device object handed to the module.
    pub vudev: Box<HostVudev>,
    _module: Module,
}

/// An open (sub)device.
#[derive(Debug)]
pub struct DevFd {
    fd: Box<VudevFd>,
    ops: VudevOps,
}

fn cstring(s: &str) -> CString {
    CString::new(s).expect("no NUL")
}

impl VudevMount {
    /// Loads `lib<name>.so` and runs its `init(source, flags, data)` as vudev's mount does.
    pub fn mount(name: &str, source: &str, flags: c_ulong, data: &str) -> Result<VudevMount, i32> {
        let module = Module::load(&module_path(name)).expect("module loads");
        let ops_ptr = module.symbol("vudev_ops").expect("vudev_ops exported") as *const VudevOps;
        // SAFETY: vudev_ops is a 96-byte table of 12 function pointers (checked by the ABI test).
        let ops = unsafe { *ops_ptr };
        let mut vudev = Box::new(HostVudev {
            private_data: std::ptr::null_mut(),
            devtype: 0,
        });
        let (source, data) = (cstring(source), cstring(data));
        clear_errno();
        // SAFETY: the module's init with vudev's argument types.
        let private = unsafe {
            (ops.init.expect("init"))(source.as_ptr(), flags, data.as_ptr(), &mut *vudev)
        };
        if private.is_null() {
            return Err(errno());
        }
        vudev.private_data = private;
        Ok(VudevMount {
            ops,
            vudev,
            _module: module,
        })
    }

    /// `confirm_subdev(n)`
    pub fn confirm(&mut self, subdev: u32) -> bool {
        // SAFETY: the module's function with its ABI.
        unsafe { (self.ops.confirm_subdev.expect("confirm_subdev"))(subdev, &mut *self.vudev) == 1 }
    }

    /// `open` of subdevice `subdev` with open(2) `flags`.
    pub fn open(&mut self, subdev: u32, flags: c_int) -> Result<DevFd, i32> {
        let mut fd = Box::new(VudevFd {
            subdev: libc::dev_t::from(subdev),
            offset: 0,
            flags,
            fdprivate: std::ptr::null_mut(),
            vudev: &mut *self.vudev,
        });
        let path = cstring(
            if subdev == 0 {
                "/".to_string()
            } else {
                subdev.to_string()
            }
            .as_str(),
        );
        clear_errno();
        // SAFETY: the module's open with vudev's arguments.
        let rv = unsafe { (self.ops.open.expect("open"))(path.as_ptr(), 0, &mut *fd) };
        if rv < 0 {
            return Err(errno());
        }
        Ok(DevFd { fd, ops: self.ops })
    }

    /// `fini`
    pub fn unmount(self) -> c_int {
        // SAFETY: the module's fini on its own private data, once.
        unsafe { (self.ops.fini.expect("fini"))(self.vudev.private_data) }
    }
}

/// `_IOC_SIZE` of a (fake) request.
pub fn ioc_size(code: u64) -> usize {
    ((code >> 16) & 0x3fff) as usize
}
/// umvu's `IOC_OUT` test (`_IOC_READ` bit): copy the caller's memory in before the call.
pub fn ioc_copies_in(code: u64) -> bool {
    code & 0x8000_0000 != 0
}
/// umvu's `IOC_IN` test (`_IOC_WRITE` bit): copy the buffer back to the caller after the call.
pub fn ioc_copies_out(code: u64) -> bool {
    code & 0x4000_0000 != 0
}

impl DevFd {
    /// `pread`
    pub fn pread(&mut self, buf: &mut [u8], offset: i64) -> Result<usize, i32> {
        clear_errno();
        // SAFETY: buf valid for its length; the fd record is live.
        let rv = unsafe {
            (self.ops.pread.expect("pread"))(
                0,
                buf.as_mut_ptr() as *mut c_void,
                buf.len(),
                offset,
                &mut *self.fd,
            )
        };
        if rv < 0 {
            Err(errno())
        } else {
            Ok(rv as usize)
        }
    }

    /// `pwrite`
    pub fn pwrite(&mut self, buf: &[u8], offset: i64) -> Result<usize, i32> {
        clear_errno();
        // SAFETY: buf valid for its length; the fd record is live.
        let rv = unsafe {
            (self.ops.pwrite.expect("pwrite"))(
                0,
                buf.as_ptr() as *const c_void,
                buf.len(),
                offset,
                &mut *self.fd,
            )
        };
        if rv < 0 {
            Err(errno())
        } else {
            Ok(rv as usize)
        }
    }

    /// `lseek` (vudev records the result as its position).
    pub fn lseek(&mut self, offset: i64, whence: c_int) -> Result<i64, i32> {
        clear_errno();
        // SAFETY: the fd record is live.
        let rv = unsafe { (self.ops.lseek.expect("lseek"))(0, offset, whence, &mut *self.fd) };
        if rv < 0 {
            Err(errno())
        } else {
            self.fd.offset = rv;
            Ok(rv)
        }
    }

    /// The `fd == -1` probe as umvu sees it through vudev's `int` handler (zero-extended).
    pub fn probe(&mut self, request: c_ulong) -> u64 {
        // SAFETY: the probe reads nothing but the request.
        let rv = unsafe {
            (self.ops.ioctl.expect("ioctl"))(-1, request, std::ptr::null_mut(), &mut *self.fd)
        };
        u64::from(rv as u32)
    }

    /// An ioctl as umvu runs it: probe, allocate the announced size, copy in/out as announced.
    /// `arg` is the caller's memory; it must be at least as large as announced.
    pub fn ioctl(&mut self, request: c_ulong, arg: &mut [u8]) -> Result<c_int, i32> {
        let code = self.probe(request);
        let size = ioc_size(code);
        assert!(
            size <= arg.len(),
            "probe for {request:#x} announced {size} bytes, caller has {}",
            arg.len()
        );
        let mut buf = vec![0xA5u8; size];
        if ioc_copies_in(code) {
            buf.copy_from_slice(&arg[..size]);
        }
        let ptr = if size > 0 {
            buf.as_mut_ptr() as *mut c_void
        } else {
            std::ptr::null_mut()
        };
        clear_errno();
        // SAFETY: ptr is valid for the announced size.
        let rv = unsafe { (self.ops.ioctl.expect("ioctl"))(3, request, ptr, &mut *self.fd) };
        if rv < 0 {
            return Err(errno());
        }
        if ioc_copies_out(code) {
            arg[..size].copy_from_slice(&buf);
        }
        Ok(rv)
    }

    /// An ioctl returning a value of type `T` (e.g. BLKGETSIZE64 -> u64).
    pub fn ioctl_get<T: Copy + Default>(&mut self, request: c_ulong) -> Result<T, i32> {
        let mut arg = vec![0u8; std::mem::size_of::<T>()];
        self.ioctl(request, &mut arg)?;
        // SAFETY: arg holds size_of::<T>() bytes; T is plain data.
        Ok(unsafe { (arg.as_ptr() as *const T).read_unaligned() })
    }

    /// `close`
    pub fn close(mut self) -> Result<(), i32> {
        clear_errno();
        // SAFETY: the fd record is live; closed once (self is consumed).
        let rv = unsafe { (self.ops.close.expect("close"))(0, &mut *self.fd) };
        if rv < 0 {
            Err(errno())
        } else {
            Ok(())
        }
    }
}

/// Runs a shell script, panicking with its output if it fails.
pub fn sh(script: &str) -> String {
    let out = std::process::Command::new("sh")
        .args(["-ec", script])
        .output()
        .expect("sh runs");
    assert!(
        out.status.success(),
        "script failed: {script}\nstdout: {}\nstderr: {}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub mod vufs;
