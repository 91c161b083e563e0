//! The C structures of libfuse 3.14's high-level API, as vufuse is built
//! against them (`FUSE_USE_VERSION 314`): `struct fuse_operations` (336 bytes,
//! 42 pointers), `struct fuse_file_info` (40 bytes), `struct fuse_context`
//! (40 bytes) and the readdir filler. vufuse refuses an ops table of any other
//! size, so the layout is checked by tests against the real header.

use std::ffi::{c_char, c_int, c_uint, c_void};

/// `struct fuse_file_info`: per-open state; `fh` is ours to fill.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct FuseFileInfo {
    /// open(2) flags (vufuse strips O_CREAT, O_EXCL, O_NOCTTY, O_TRUNC).
    pub flags: c_int,
    /// The bit fields `writepage` .. `noflush` and padding (unused here).
    pub bits: c_uint,
    /// `padding2`.
    pub padding2: c_uint,
    /// The file handle the filesystem chose at open.
    pub fh: u64,
    /// Lock owner (unused here).
    pub lock_owner: u64,
    /// Poll events (unused here).
    pub poll_events: u32,
}

/// `struct fuse_context`: who calls, and the mount's private data.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct FuseContext {
    /// `struct fuse *` of the mount (opaque).
    pub fuse: *mut c_void,
    /// Caller's effective uid.
    pub uid: libc::uid_t,
    /// Caller's effective gid.
    pub gid: libc::gid_t,
    /// Caller's thread id.
    pub pid: libc::pid_t,
    /// The pointer given to `fuse_main_real`, replaced by `init`'s result.
    pub private_data: *mut c_void,
    /// Caller's umask.
    pub umask: libc::mode_t,
}

/// `fuse_fill_dir_t`: adds one entry to a directory listing; non-zero means full.
pub type FillDir = unsafe extern "C" fn(
    buf: *mut c_void,
    name: *const c_char,
    stat: *const libc::stat,
    off: libc::off_t,
    flags: c_int,
) -> c_int;

/// A slot of the table this module leaves empty (all pointers have one size).
pub type Unused = Option<unsafe extern "C" fn()>;

type PathOp = Option<unsafe extern "C" fn(*const c_char) -> c_int>;
type PathFiOp = Option<unsafe extern "C" fn(*const c_char, *mut FuseFileInfo) -> c_int>;
type TwoPathOp = Option<unsafe extern "C" fn(*const c_char, *const c_char) -> c_int>;

/// `struct fuse_operations` of FUSE 3.14 (with the 3.5 ioctl prototype): the
/// field order is the ABI.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct FuseOperations {
    /// `int getattr(const char *, struct stat *, struct fuse_file_info *)`
    pub getattr:
        Option<unsafe extern "C" fn(*const c_char, *mut libc::stat, *mut FuseFileInfo) -> c_int>,
    /// `int readlink(const char *, char *, size_t)`: NUL-terminated, returns 0.
    pub readlink: Option<unsafe extern "C" fn(*const c_char, *mut c_char, usize) -> c_int>,
    /// `int mknod(const char *, mode_t, dev_t)`
    pub mknod: Option<unsafe extern "C" fn(*const c_char, libc::mode_t, libc::dev_t) -> c_int>,
    /// `int mkdir(const char *, mode_t)`
    pub mkdir: Option<unsafe extern "C" fn(*const c_char, libc::mode_t) -> c_int>,
    /// `int unlink(const char *)`
    pub unlink: PathOp,
    /// `int rmdir(const char *)`
    pub rmdir: PathOp,
    /// `int symlink(const char *target, const char *linkpath)`
    pub symlink: TwoPathOp,
    /// `int rename(const char *, const char *, unsigned int flags)`
    pub rename: Option<unsafe extern "C" fn(*const c_char, *const c_char, c_uint) -> c_int>,
    /// `int link(const char *, const char *)`
    pub link: TwoPathOp,
    /// `int chmod(const char *, mode_t, struct fuse_file_info *)`
    pub chmod:
        Option<unsafe extern "C" fn(*const c_char, libc::mode_t, *mut FuseFileInfo) -> c_int>,
    /// `int chown(const char *, uid_t, gid_t, struct fuse_file_info *)`
    pub chown: Option<
        unsafe extern "C" fn(*const c_char, libc::uid_t, libc::gid_t, *mut FuseFileInfo) -> c_int,
    >,
    /// `int truncate(const char *, off_t, struct fuse_file_info *)`
    pub truncate:
        Option<unsafe extern "C" fn(*const c_char, libc::off_t, *mut FuseFileInfo) -> c_int>,
    /// `int open(const char *, struct fuse_file_info *)`
    pub open: PathFiOp,
    /// `int read(const char *, char *, size_t, off_t, struct fuse_file_info *)`
    pub read: Option<
        unsafe extern "C" fn(
            *const c_char,
            *mut c_char,
            usize,
            libc::off_t,
            *mut FuseFileInfo,
        ) -> c_int,
    >,
    /// `int write(const char *, const char *, size_t, off_t, struct fuse_file_info *)`
    pub write: Option<
        unsafe extern "C" fn(
            *const c_char,
            *const c_char,
            usize,
            libc::off_t,
            *mut FuseFileInfo,
        ) -> c_int,
    >,
    /// `int statfs(const char *, struct statvfs *)`
    pub statfs: Option<unsafe extern "C" fn(*const c_char, *mut libc::statvfs) -> c_int>,
    /// `int flush(const char *, struct fuse_file_info *)`
    pub flush: PathFiOp,
    /// `int release(const char *, struct fuse_file_info *)`
    pub release: PathFiOp,
    /// `int fsync(const char *, int datasync, struct fuse_file_info *)`
    pub fsync: Option<unsafe extern "C" fn(*const c_char, c_int, *mut FuseFileInfo) -> c_int>,
    /// `setxattr` (not called by vufuse).
    pub setxattr: Unused,
    /// `getxattr` (not called by vufuse).
    pub getxattr: Unused,
    /// `listxattr` (not called by vufuse).
    pub listxattr: Unused,
    /// `removexattr` (not called by vufuse).
    pub removexattr: Unused,
    /// `int opendir(const char *, struct fuse_file_info *)`
    pub opendir: PathFiOp,
    /// `int readdir(const char *, void *buf, fuse_fill_dir_t, off_t, struct fuse_file_info *, enum fuse_readdir_flags)`
    pub readdir: Option<
        unsafe extern "C" fn(
            *const c_char,
            *mut c_void,
            Option<FillDir>,
            libc::off_t,
            *mut FuseFileInfo,
            c_int,
        ) -> c_int,
    >,
    /// `int releasedir(const char *, struct fuse_file_info *)`
    pub releasedir: PathFiOp,
    /// `fsyncdir` (not called by vufuse).
    pub fsyncdir: Unused,
    /// `void *init(struct fuse_conn_info *, struct fuse_config *)`: the result replaces private_data.
    pub init: Option<unsafe extern "C" fn(*mut c_void, *mut c_void) -> *mut c_void>,
    /// `void destroy(void *private_data)`
    pub destroy: Option<unsafe extern "C" fn(*mut c_void)>,
    /// `int access(const char *, int mask)`
    pub access: Option<unsafe extern "C" fn(*const c_char, c_int) -> c_int>,
    /// `int create(const char *, mode_t, struct fuse_file_info *)`
    pub create:
        Option<unsafe extern "C" fn(*const c_char, libc::mode_t, *mut FuseFileInfo) -> c_int>,
    /// `lock` (not called by vufuse).
    pub lock: Unused,
    /// `int utimens(const char *, const struct timespec tv[2], struct fuse_file_info *)`
    pub utimens: Option<
        unsafe extern "C" fn(*const c_char, *const libc::timespec, *mut FuseFileInfo) -> c_int,
    >,
    /// `bmap` (unused).
    pub bmap: Unused,
    /// `ioctl` (unused).
    pub ioctl: Unused,
    /// `poll` (unused).
    pub poll: Unused,
    /// `write_buf` (unused).
    pub write_buf: Unused,
    /// `read_buf` (unused).
    pub read_buf: Unused,
    /// `flock` (unused).
    pub flock: Unused,
    /// `fallocate` (unused).
    pub fallocate: Unused,
    /// `copy_file_range` (unused).
    pub copy_file_range: Unused,
    /// `lseek` (unused).
    pub lseek: Unused,
}

/// The FUSE version vufuse is built for (`fuse_version()` returns it).
pub const FUSE_VERSION: c_int = 314;

/// The one `op_size` vufuse accepts.
pub const FUSE_OPERATIONS_SIZE: usize = 336;

const _: () = assert!(std::mem::size_of::<FuseOperations>() == FUSE_OPERATIONS_SIZE);
const _: () = assert!(std::mem::size_of::<FuseFileInfo>() == 40);
const _: () = assert!(std::mem::size_of::<FuseContext>() == 40);
