//! A test harness that plays vufuse, the VUOS module that loads FUSE
//! submodules: it defines the host symbols a submodule imports
//! (`fuse_main_real`, `fuse_get_context`, `fuse_version`), dlopens the built
//! `.so` with `RTLD_NOW`, runs its `main` in a thread of its own with
//! vufuse's argv, captures the operations table `fuse_main_real` receives,
//! calls `init` with an uninitialized `conn` as vufuse does, and then drives
//! the operations with the same arguments vufuse passes (mount-relative
//! paths, a `fuse_file_info` per open file, a filler for `readdir`).
//!
//! The host symbols live in the test executable, which must export them
//! (`-rdynamic`, set by the module crates' build scripts for their tests).
#![allow(unsafe_code)]

use std::cell::{Cell, RefCell};
use std::ffi::{c_char, c_int, c_uint, c_void, CStr, CString};
use std::path::Path;
use std::sync::mpsc::{channel, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;
pub use vufuseglue::abi::{FuseContext, FuseFileInfo, FuseOperations, FUSE_OPERATIONS_SIZE};

/// How long a mount may take before the harness calls it a hang.
const MOUNT_TIMEOUT: Duration = Duration::from_secs(60);

/// What `fuse_main_real` tells the harness.
enum Event {
    Started(Arc<Session>),
    Mismatch(usize),
    MainReturned(c_int),
}

/// One mount as fuse_main_real registered it.
struct Session {
    ops: FuseOperations,
    user_data: *mut c_void,
    stop: Mutex<bool>,
    stopped: Condvar,
}

// SAFETY: user_data is only handed back to the module, whose operations of
// one mount the harness serializes (as vufuse does with its mount mutex).
unsafe impl Send for Session {}
// SAFETY: as above.
unsafe impl Sync for Session {}

thread_local! {
    /// The context `fuse_get_context` returns on this thread.
    static CONTEXT: Cell<*mut FuseContext> = const { Cell::new(std::ptr::null_mut()) };
    /// Where fuse_main_real reports, set in the thread that runs `main`.
    static STARTER: RefCell<Option<Sender<Event>>> = const { RefCell::new(None) };
}

/// vufuse's `fuse_main_real`: registers the table and blocks until umount.
///
/// # Safety
/// `op` must point to `op_size` bytes of operations table.
#[no_mangle]
pub unsafe extern "C" fn fuse_main_real(
    _argc: c_int,
    _argv: *mut *mut c_char,
    op: *const FuseOperations,
    op_size: usize,
    user_data: *mut c_void,
) -> c_int {
    let Some(tx) = STARTER.with(|s| s.borrow_mut().take()) else {
        eprintln!("fusehost: fuse_main_real called outside a harness mount");
        return -1;
    };
    if op_size != FUSE_OPERATIONS_SIZE || op.is_null() {
        eprintln!("fusehost: Fuse module vs vufuse support version mismatch ({op_size} bytes)");
        let _ = tx.send(Event::Mismatch(op_size));
        return -1;
    }
    let session = Arc::new(Session {
        // SAFETY: op points to a table of the right size (checked above).
        ops: unsafe { *op },
        user_data,
        stop: Mutex::new(false),
        stopped: Condvar::new(),
    });
    let _ = tx.send(Event::Started(session.clone()));
    let mut stop = session.stop.lock().unwrap();
    while !*stop {
        stop = session.stopped.wait(stop).unwrap();
    }
    0
}

/// vufuse's `fuse_get_context`: the context of the operation being served.
#[no_mangle]
pub extern "C" fn fuse_get_context() -> *mut FuseContext {
    CONTEXT.with(Cell::get)
}

/// vufuse's `fuse_version`.
#[no_mangle]
pub extern "C" fn fuse_version() -> c_int {
    vufuseglue::abi::FUSE_VERSION
}

/// Finds a built cdylib (`libNAME.so`) next to the running test executable.
pub use testkit::umvu::module_path;

type MainFn = unsafe extern "C" fn(c_int, *mut *mut c_char) -> c_int;

/// A loaded submodule.
pub struct Module {
    handle: *mut c_void,
    main: MainFn,
}

// SAFETY: the handle and main are process-wide and thread-agnostic.
unsafe impl Send for Module {}
// SAFETY: as above.
unsafe impl Sync for Module {}

/// Why a mount did not start.
#[derive(Debug, PartialEq, Eq)]
pub enum MountFailure {
    /// `main` returned (with this value) without calling `fuse_main_real`.
    MainReturned(c_int),
    /// The table had the wrong size.
    VersionMismatch(usize),
}

impl Module {
    /// dlopens `path` with `RTLD_NOW`, as `vu_mod_dlopen` does: every import
    /// must resolve (to this executable's host symbols).
    pub fn load(path: &Path) -> Result<Module, String> {
        // Keep the host symbols linked in and exported.
        std::hint::black_box([
            fuse_main_real as *const () as usize,
            fuse_get_context as *const () as usize,
            fuse_version as *const () as usize,
        ]);
        let c_path =
            CString::new(path.as_os_str().as_encoded_bytes()).map_err(|e| e.to_string())?;
        // SAFETY: a valid C path; RTLD_NOW resolves every import at once.
        let handle = unsafe { libc::dlopen(c_path.as_ptr(), libc::RTLD_NOW) };
        if handle.is_null() {
            return Err(dlerror());
        }
        // SAFETY: handle is live; "main" is a NUL-terminated name.
        let sym = unsafe { libc::dlsym(handle, c"main".as_ptr()) };
        if sym.is_null() {
            return Err(format!("no main: {}", dlerror()));
        }
        // SAFETY: the module's main has the C signature int main(int, char **).
        let main = unsafe { std::mem::transmute::<*mut c_void, MainFn>(sym) };
        Ok(Module { handle, main })
    }

    /// True if the module defines `name` (as vufuse checks `fuse_reentrant_tag`).
    pub fn has_symbol(&self, name: &str) -> bool {
        let name = CString::new(name).expect("symbol name");
        // SAFETY: live handle, NUL-terminated name.
        !unsafe { libc::dlsym(self.handle, name.as_ptr()) }.is_null()
    }

    /// Asserts that mounting `argv` is refused the way vufuse sees a refusal: the module's
    /// `main` returns non-zero, without mounting and without failing any other way.
    pub fn assert_mount_refused(&self, argv: &[&str]) {
        match self.mount(argv) {
            Err(MountFailure::MainReturned(rc)) => assert_ne!(rc, 0, "{argv:?}"),
            Err(other) => panic!("{argv:?}: {other:?}"),
            Ok(m) => {
                m.umount();
                panic!("{argv:?} mounted");
            }
        }
    }

    /// Mounts as vufuse does: runs `main(argv)` in a new thread and waits for
    /// it to call `fuse_main_real`; then calls `init`.
    pub fn mount(&self, argv: &[&str]) -> Result<Mounted, MountFailure> {
        let (tx, rx) = channel();
        let args: Vec<CString> = argv.iter().map(|a| CString::new(*a).unwrap()).collect();
        let main = self.main;
        let thread = std::thread::spawn(move || {
            let mut ptrs: Vec<*mut c_char> = args.iter().map(|a| a.as_ptr().cast_mut()).collect();
            let argc = ptrs.len() as c_int;
            ptrs.push(std::ptr::null_mut());
            STARTER.with(|s| *s.borrow_mut() = Some(tx.clone()));
            // SAFETY: argv is argc NUL-terminated strings plus a NULL, alive for the call.
            let rc = unsafe { main(argc, ptrs.as_mut_ptr()) };
            let _ = tx.send(Event::MainReturned(rc));
            rc
        });
        match rx.recv_timeout(MOUNT_TIMEOUT) {
            Ok(Event::Started(session)) => {
                let mut mounted = Mounted {
                    session,
                    private_data: std::ptr::null_mut(),
                    thread: Some(thread),
                    _events: rx,
                    caller: Mutex::new((geteuid(), getegid())),
                };
                mounted.private_data = mounted.session.user_data;
                if let Some(init) = mounted.session.ops.init {
                    // vufuse passes an uninitialized conn; garbage stands in for it.
                    let mut conn = [0xa5u8; 512];
                    let mut cfg = [0u8; 512];
                    let private = mounted.with_context(|| {
                        // SAFETY: init takes (struct fuse_conn_info *, struct fuse_config *);
                        // both buffers are larger than those structs (128 bytes each).
                        unsafe { init(conn.as_mut_ptr().cast(), cfg.as_mut_ptr().cast()) }
                    });
                    mounted.private_data = private;
                }
                Ok(mounted)
            }
            Ok(Event::Mismatch(size)) => {
                let _ = thread.join();
                Err(MountFailure::VersionMismatch(size))
            }
            Ok(Event::MainReturned(rc)) => {
                let _ = thread.join();
                Err(MountFailure::MainReturned(rc))
            }
            Err(RecvTimeoutError::Timeout) => {
                panic!("mount hangs: main neither served nor returned")
            }
            Err(RecvTimeoutError::Disconnected) => {
                panic!("main's thread died (panic across the C ABI?)")
            }
        }
    }
}

fn dlerror() -> String {
    // SAFETY: dlerror returns NULL or a NUL-terminated message.
    let msg = unsafe { libc::dlerror() };
    if msg.is_null() {
        "unknown dlerror".into()
    } else {
        // SAFETY: non-null, NUL-terminated.
        unsafe { CStr::from_ptr(msg) }
            .to_string_lossy()
            .into_owned()
    }
}

fn geteuid() -> u32 {
    // SAFETY: no arguments, cannot fail.
    unsafe { libc::geteuid() }
}

fn getegid() -> u32 {
    // SAFETY: no arguments, cannot fail.
    unsafe { libc::getegid() }
}

/// An open file or directory: the `fuse_file_info` vufuse keeps per open.
#[derive(Debug)]
pub struct Handle {
    fi: Box<FuseFileInfo>,
    path: CString,
}

/// One directory entry as the filler saw it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Listed {
    /// Name.
    pub name: String,
    /// `st_ino` of the entry's stat.
    pub ino: u64,
    /// `st_mode >> 12`, as vufuse turns into `d_type`.
    pub d_type: u32,
}

/// A live mount: call its operations, then [`Mounted::umount`].
pub struct Mounted {
    session: Arc<Session>,
    private_data: *mut c_void,
    thread: Option<JoinHandle<c_int>>,
    _events: Receiver<Event>,
    caller: Mutex<(u32, u32)>,
}

// SAFETY: the harness serializes the operations of a mount (the mutex in
// with_context), as vufuse does.
unsafe impl Send for Mounted {}
// SAFETY: as above.
unsafe impl Sync for Mounted {}

fn c(path: &str) -> CString {
    CString::new(path).expect("path without NUL")
}

/// FUSE convention: a negative value is -errno.
fn check(rv: c_int) -> Result<c_int, i32> {
    if rv < 0 {
        Err(-rv)
    } else {
        Ok(rv)
    }
}

impl Mounted {
    /// The raw operations table the module registered.
    pub fn ops(&self) -> &FuseOperations {
        &self.session.ops
    }

    /// The pointer init returned (vufuse's private data from then on).
    pub fn private_data(&self) -> *mut c_void {
        self.private_data
    }

    /// Later calls come from this uid and gid.
    pub fn set_caller(&self, uid: u32, gid: u32) {
        *self.caller.lock().unwrap() = (uid, gid);
    }

    /// Runs `body` with a context pushed as vufuse's `fuse_push_context` does,
    /// holding the mount's lock (vufuse serializes a mount's operations).
    pub fn with_context<R>(&self, body: impl FnOnce() -> R) -> R {
        let caller = self.caller.lock().unwrap();
        let mut ctx = FuseContext {
            fuse: Arc::as_ptr(&self.session).cast_mut().cast(),
            uid: caller.0,
            gid: caller.1,
            // SAFETY: gettid has no arguments and cannot fail.
            pid: unsafe { libc::gettid() },
            private_data: self.private_data,
            umask: 0o022,
        };
        let old = CONTEXT.with(|c| c.replace(&mut ctx));
        let result = body();
        CONTEXT.with(|c| c.set(old));
        drop(caller);
        result
    }

    /// `getattr(path, &stat, NULL)`.
    pub fn getattr(&self, path: &str) -> Result<libc::stat, i32> {
        self.getattr_fi(path, None)
    }

    /// `getattr(path, &stat, fi)` (fstat).
    pub fn fgetattr(&self, handle: &mut Handle) -> Result<libc::stat, i32> {
        let path = handle.path.clone();
        self.getattr_fi(path.to_str().unwrap(), Some(handle))
    }

    fn getattr_fi(&self, path: &str, handle: Option<&mut Handle>) -> Result<libc::stat, i32> {
        let op = self.ops().getattr.expect("getattr");
        let p = c(path);
        // SAFETY: libc::stat is plain data.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        let fi = handle.map_or(std::ptr::null_mut(), |h| &mut *h.fi as *mut FuseFileInfo);
        // SAFETY: the arguments vufuse passes: a path, a stat buffer, NULL or a file info.
        check(self.with_context(|| unsafe { op(p.as_ptr(), &mut st, fi) }))?;
        Ok(st)
    }

    /// `readlink(path, buf, PATH_MAX + 1)`; checks the NUL termination vufuse relies on.
    pub fn readlink(&self, path: &str) -> Result<Vec<u8>, i32> {
        let op = self.ops().readlink.expect("readlink");
        let p = c(path);
        let mut buf = vec![0xffu8; libc::PATH_MAX as usize + 1];
        // SAFETY: buf holds PATH_MAX + 1 bytes, the size passed.
        let rv =
            self.with_context(|| unsafe { op(p.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) });
        check(rv)?;
        assert_eq!(rv, 0, "readlink returns 0 on success");
        let len = buf
            .iter()
            .position(|&b| b == 0)
            .expect("readlink must NUL-terminate");
        buf.truncate(len);
        Ok(buf)
    }

    fn path_op(
        &self,
        op: Option<unsafe extern "C" fn(*const c_char) -> c_int>,
        path: &str,
    ) -> Result<(), i32> {
        let op = op.expect("operation present");
        let p = c(path);
        // SAFETY: a path argument.
        check(self.with_context(|| unsafe { op(p.as_ptr()) })).map(drop)
    }

    /// `mknod(path, mode, dev)`.
    pub fn mknod(&self, path: &str, mode: u32, dev: u64) -> Result<(), i32> {
        let op = self.ops().mknod.expect("mknod");
        let p = c(path);
        // SAFETY: a path, a mode, a device number.
        check(self.with_context(|| unsafe { op(p.as_ptr(), mode, dev) })).map(drop)
    }

    /// `mkdir(path, mode)`.
    pub fn mkdir(&self, path: &str, mode: u32) -> Result<(), i32> {
        let op = self.ops().mkdir.expect("mkdir");
        let p = c(path);
        // SAFETY: a path and a mode.
        check(self.with_context(|| unsafe { op(p.as_ptr(), mode) })).map(drop)
    }

    /// `unlink(path)`.
    pub fn unlink(&self, path: &str) -> Result<(), i32> {
        self.path_op(self.ops().unlink, path)
    }

    /// `rmdir(path)`.
    pub fn rmdir(&self, path: &str) -> Result<(), i32> {
        self.path_op(self.ops().rmdir, path)
    }

    /// `symlink(target, linkpath)`.
    pub fn symlink(&self, target: &str, linkpath: &str) -> Result<(), i32> {
        let op = self.ops().symlink.expect("symlink");
        let (t, l) = (c(target), c(linkpath));
        // SAFETY: two strings.
        check(self.with_context(|| unsafe { op(t.as_ptr(), l.as_ptr()) })).map(drop)
    }

    /// `link(from, to)`.
    pub fn link(&self, from: &str, to: &str) -> Result<(), i32> {
        let op = self.ops().link.expect("link");
        let (f, t) = (c(from), c(to));
        // SAFETY: two paths.
        check(self.with_context(|| unsafe { op(f.as_ptr(), t.as_ptr()) })).map(drop)
    }

    /// `rename(from, to, flags)`.
    pub fn rename(&self, from: &str, to: &str, flags: u32) -> Result<(), i32> {
        let op = self.ops().rename.expect("rename");
        let (f, t) = (c(from), c(to));
        // SAFETY: two paths and flags.
        check(self.with_context(|| unsafe { op(f.as_ptr(), t.as_ptr(), flags as c_uint) }))
            .map(drop)
    }

    /// `chmod(path, mode, NULL)`.
    pub fn chmod(&self, path: &str, mode: u32) -> Result<(), i32> {
        let op = self.ops().chmod.expect("chmod");
        let p = c(path);
        // SAFETY: a path, a mode, no file info.
        check(self.with_context(|| unsafe { op(p.as_ptr(), mode, std::ptr::null_mut()) })).map(drop)
    }

    /// `chown(path, uid, gid, NULL)`.
    pub fn chown(&self, path: &str, uid: u32, gid: u32) -> Result<(), i32> {
        let op = self.ops().chown.expect("chown");
        let p = c(path);
        // SAFETY: a path, ids, no file info.
        check(self.with_context(|| unsafe { op(p.as_ptr(), uid, gid, std::ptr::null_mut()) }))
            .map(drop)
    }

    /// `truncate(path, size, NULL)`.
    pub fn truncate(&self, path: &str, size: i64) -> Result<(), i32> {
        let op = self.ops().truncate.expect("truncate");
        let p = c(path);
        // SAFETY: a path, a size, no file info.
        check(self.with_context(|| unsafe { op(p.as_ptr(), size, std::ptr::null_mut()) })).map(drop)
    }

    /// `utimens(path, times, NULL)`; `None` means both now.
    pub fn utimens(&self, path: &str, times: Option<[libc::timespec; 2]>) -> Result<(), i32> {
        let op = self.ops().utimens.expect("utimens");
        let p = c(path);
        let ptr = times.as_ref().map_or(std::ptr::null(), |t| t.as_ptr());
        // SAFETY: a path, NULL or two timespecs, no file info.
        check(self.with_context(|| unsafe { op(p.as_ptr(), ptr, std::ptr::null_mut()) })).map(drop)
    }

    /// `access(path, mask)`.
    pub fn access(&self, path: &str, mask: i32) -> Result<(), i32> {
        let op = self.ops().access.expect("access");
        let p = c(path);
        // SAFETY: a path and a mask.
        check(self.with_context(|| unsafe { op(p.as_ptr(), mask) })).map(drop)
    }

    /// `statfs(path, &statvfs)`.
    pub fn statfs(&self, path: &str) -> Result<libc::statvfs, i32> {
        let op = self.ops().statfs.expect("statfs");
        let p = c(path);
        // SAFETY: plain data.
        let mut out: libc::statvfs = unsafe { std::mem::zeroed() };
        // SAFETY: a path and a statvfs buffer.
        check(self.with_context(|| unsafe { op(p.as_ptr(), &mut out) }))?;
        Ok(out)
    }

    fn fi_op(
        &self,
        op: Option<unsafe extern "C" fn(*const c_char, *mut FuseFileInfo) -> c_int>,
        handle: &mut Handle,
    ) -> Result<(), i32> {
        let op = op.expect("operation present");
        let p = handle.path.clone();
        // SAFETY: a path and the file info of this open.
        check(self.with_context(|| unsafe { op(p.as_ptr(), &mut *handle.fi) })).map(drop)
    }

    /// `open(path, fi)` with `fi.flags` = `flags` (vufuse strips O_CREAT/O_EXCL/O_TRUNC).
    pub fn open(&self, path: &str, flags: i32) -> Result<Handle, i32> {
        let mut handle = Handle {
            fi: Box::new(FuseFileInfo {
                flags: flags & !(libc::O_CREAT | libc::O_EXCL | libc::O_NOCTTY | libc::O_TRUNC),
                ..FuseFileInfo::default()
            }),
            path: c(path),
        };
        self.fi_op(self.ops().open, &mut handle)?;
        Ok(handle)
    }

    /// `create(path, S_IFREG | mode, fi)`.
    pub fn create(&self, path: &str, mode: u32, flags: i32) -> Result<Handle, i32> {
        let op = self.ops().create.expect("create");
        let mut handle = Handle {
            fi: Box::new(FuseFileInfo {
                flags: flags & !(libc::O_CREAT | libc::O_EXCL | libc::O_NOCTTY | libc::O_TRUNC),
                ..FuseFileInfo::default()
            }),
            path: c(path),
        };
        let p = handle.path.clone();
        // SAFETY: a path, a mode and this open's file info.
        check(
            self.with_context(|| unsafe { op(p.as_ptr(), libc::S_IFREG | mode, &mut *handle.fi) }),
        )?;
        Ok(handle)
    }

    /// `read(path, buf, size, offset, fi)`.
    pub fn read(&self, handle: &mut Handle, offset: i64, size: usize) -> Result<Vec<u8>, i32> {
        let op = self.ops().read.expect("read");
        let mut buf = vec![0u8; size];
        let p = handle.path.clone();
        // SAFETY: buf holds size bytes; the file info of this open.
        let n = check(self.with_context(|| unsafe {
            op(
                p.as_ptr(),
                buf.as_mut_ptr().cast(),
                size,
                offset,
                &mut *handle.fi,
            )
        }))?;
        buf.truncate(n as usize);
        Ok(buf)
    }

    /// `write(path, data, len, offset, fi)`; returns the count written.
    pub fn write(&self, handle: &mut Handle, offset: i64, data: &[u8]) -> Result<usize, i32> {
        let op = self.ops().write.expect("write");
        let p = handle.path.clone();
        // SAFETY: data holds len bytes; the file info of this open.
        let n = check(self.with_context(|| unsafe {
            op(
                p.as_ptr(),
                data.as_ptr().cast(),
                data.len(),
                offset,
                &mut *handle.fi,
            )
        }))?;
        Ok(n as usize)
    }

    /// `fsync(path, datasync, fi)`.
    pub fn fsync(&self, handle: &mut Handle, datasync: bool) -> Result<(), i32> {
        let op = self.ops().fsync.expect("fsync");
        let p = handle.path.clone();
        // SAFETY: a path, a flag, the file info of this open.
        check(self.with_context(|| unsafe { op(p.as_ptr(), datasync as c_int, &mut *handle.fi) }))
            .map(drop)
    }

    /// vufuse's close of a file: `flush` then `release`.
    pub fn close(&self, mut handle: Handle) -> Result<(), i32> {
        let flushed = self.fi_op(self.ops().flush, &mut handle);
        self.fi_op(self.ops().release, &mut handle)?;
        flushed
    }

    /// `opendir(path, fi)` with O_DIRECTORY.
    pub fn opendir(&self, path: &str) -> Result<Handle, i32> {
        let mut handle = Handle {
            fi: Box::new(FuseFileInfo {
                flags: libc::O_RDONLY | libc::O_DIRECTORY,
                ..FuseFileInfo::default()
            }),
            path: c(path),
        };
        self.fi_op(self.ops().opendir, &mut handle)?;
        Ok(handle)
    }

    /// `readdir(path, buf, filler, 0, fi, 0)`, once, as vufuse calls it.
    pub fn readdir(&self, handle: &mut Handle) -> Result<Vec<Listed>, i32> {
        let op = self.ops().readdir.expect("readdir");
        let mut listed: Vec<Listed> = Vec::new();
        let p = handle.path.clone();
        // SAFETY: buf is the Vec the filler appends to; the file info of this open.
        check(self.with_context(|| unsafe {
            op(
                p.as_ptr(),
                (&mut listed as *mut Vec<Listed>).cast(),
                Some(filler),
                0,
                &mut *handle.fi,
                0,
            )
        }))?;
        Ok(listed)
    }

    /// vufuse's close of a directory: `releasedir`.
    pub fn closedir(&self, mut handle: Handle) -> Result<(), i32> {
        self.fi_op(self.ops().releasedir, &mut handle)
    }

    /// Lists a directory (opendir, readdir, releasedir), names sorted, without `.` and `..`.
    pub fn list(&self, path: &str) -> Result<Vec<String>, i32> {
        let mut dir = self.opendir(path)?;
        let listed = self.readdir(&mut dir);
        self.closedir(dir)?;
        let mut names: Vec<String> = listed?
            .into_iter()
            .map(|l| l.name)
            .filter(|n| n != "." && n != "..")
            .collect();
        names.sort();
        Ok(names)
    }

    /// vufuse's sequence for `open(O_CREAT|O_WRONLY|O_TRUNC)` + write + close.
    pub fn write_file(&self, path: &str, data: &[u8]) -> Result<(), i32> {
        let mut handle = match self.getattr(path) {
            Ok(_) => {
                self.truncate(path, 0)?;
                self.open(path, libc::O_WRONLY)?
            }
            Err(libc::ENOENT) => self.create(path, 0o644, libc::O_WRONLY)?,
            Err(e) => return Err(e),
        };
        let mut done = 0;
        for chunk in data.chunks(1 << 20) {
            let n = self.write(&mut handle, done as i64, chunk)?;
            assert_eq!(n, chunk.len(), "short write");
            done += n;
        }
        self.close(handle)
    }

    /// vufuse's sequence for `cat`: open read-only, read until a short read, close.
    pub fn read_file(&self, path: &str) -> Result<Vec<u8>, i32> {
        let mut handle = self.open(path, libc::O_RDONLY)?;
        let mut out = Vec::new();
        loop {
            let chunk = self.read(&mut handle, out.len() as i64, 1 << 16)?;
            let short = chunk.len() < 1 << 16;
            out.extend_from_slice(&chunk);
            if short {
                break;
            }
        }
        self.close(handle)?;
        Ok(out)
    }

    /// vufuse's umount: `destroy(private_data)`, then the loop ends and
    /// `main` returns; gives main's return value.
    pub fn umount(mut self) -> c_int {
        if let Some(destroy) = self.ops().destroy {
            let private = self.private_data;
            // SAFETY: destroy takes the private data init returned.
            self.with_context(|| unsafe { destroy(private) });
        }
        *self.session.stop.lock().unwrap() = true;
        self.session.stopped.notify_all();
        self.thread
            .take()
            .expect("mounted once")
            .join()
            .expect("main's thread must not panic")
    }
}

unsafe extern "C" fn filler(
    buf: *mut c_void,
    name: *const c_char,
    st: *const libc::stat,
    _off: libc::off_t,
    _flags: c_int,
) -> c_int {
    // SAFETY: buf is the Vec readdir passed; name is NUL-terminated; st is NULL or a stat.
    let (listed, name, st) = unsafe {
        (
            &mut *buf.cast::<Vec<Listed>>(),
            CStr::from_ptr(name),
            st.as_ref(),
        )
    };
    listed.push(Listed {
        name: name.to_string_lossy().into_owned(),
        ino: st.map_or(u64::MAX, |s| s.st_ino),
        d_type: st.map_or(0, |s| s.st_mode >> 12),
    });
    0
}

/// Small helpers the module tests share: run a tool, make images.
pub mod tools {
    use std::path::Path;
    use std::process::Command;

    /// Runs `program args`, panicking with its output unless it exits 0; returns stdout.
    pub use testkit::run_ok as run;

    /// The path as &str (test paths are UTF-8).
    pub use testkit::s;

    /// Runs `program args` and gives (exit code, stdout + stderr).
    pub fn run_status(program: &str, args: &[&str]) -> (i32, String) {
        let out = Command::new(program)
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("{program}: {e}"));
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.code().unwrap_or(-1), text)
    }

    /// A sparse file of `bytes`.
    pub fn sparse_file(path: &Path, bytes: u64) {
        std::fs::File::create(path)
            .and_then(|f| f.set_len(bytes))
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    }

    /// Copies `len` bytes at `offset` of `from` into a new file `to` (a partition out of a disk).
    pub fn extract(from: &Path, offset: u64, len: u64, to: &Path) {
        use std::os::unix::fs::FileExt;
        let src = std::fs::File::open(from).expect("open disk");
        let mut buf = vec![0u8; len as usize];
        src.read_exact_at(&mut buf, offset).expect("read partition");
        std::fs::write(to, buf).expect("write partition copy");
    }

    /// Writes the whole file `from` into `to` at `offset` (a filesystem into a partition).
    pub fn implant(from: &Path, to: &Path, offset: u64) {
        use std::os::unix::fs::FileExt;
        let data = std::fs::read(from).expect("read filesystem image");
        let dst = std::fs::OpenOptions::new()
            .write(true)
            .open(to)
            .expect("open disk");
        dst.write_all_at(&data, offset).expect("write partition");
    }

    /// The names of the dynamic symbols the shared object `so` defines
    /// (`nm -D --defined-only`).
    pub fn defined_symbols(so: &Path) -> Vec<String> {
        symbol_names(&run("nm", &["-D", "--defined-only", s(so)]))
    }

    /// The names of the dynamic symbols the shared object `so` imports
    /// (`nm -D --undefined-only`).
    pub fn undefined_symbols(so: &Path) -> Vec<String> {
        symbol_names(&run("nm", &["-D", "--undefined-only", s(so)]))
    }

    /// The last word of each line of an `nm` listing: the symbol names.
    fn symbol_names(listing: &str) -> Vec<String> {
        listing
            .lines()
            .filter_map(|l| l.split_whitespace().last())
            .map(str::to_string)
            .collect()
    }

    /// A deterministic pseudo-random byte pattern.
    pub fn pattern(len: usize, seed: u32) -> Vec<u8> {
        let mut x = seed.wrapping_mul(2_654_435_761).wrapping_add(1);
        (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                x as u8
            })
            .collect()
    }
}
