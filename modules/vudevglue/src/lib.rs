//! The vudev submodule ABI (`struct vudev_operations_t`, VUOS.md section 4) and one
//! implementation of it for any set of [`BlockDevice`]s, shared by `vudevramdisk.so` and
//! `vudevpartx.so`.
//!
//! A submodule only says which devices it serves ([`BlockDriver`]); opening, positional I/O,
//! `lseek`, the block ioctls (with explicit VUOS probe codes, so umvu copies exactly the
//! argument) and the errno conventions are written once, here. Each `.so` exports the table
//! with [`export_vudev_ops!`](crate::export_vudev_ops).

#![allow(unsafe_code)]
#![warn(missing_docs)]

use std::collections::BTreeSet;
use std::ffi::{c_char, c_int, c_uint, c_ulong, c_void};
use std::sync::{Arc, Mutex};
use vudev::{BlockDevice, Errno};
use vuglue::{c_str_opt, ret_int, ret_isize, ret_ptr};

/// vudev's per-device object, opaque to submodules.
#[repr(C)]
pub struct VudevT {
    _opaque: [u8; 0],
}

/// `struct vudevfd_t`: one open file of a vudev device (40 bytes).
#[repr(C)]
#[derive(Debug)]
pub struct VudevFd {
    /// Subdevice number (0 = the device itself, N = `/dev/hdaN`).
    pub subdev: libc::dev_t,
    /// vudev's file position (for `SEEK_CUR`).
    pub offset: libc::off_t,
    /// The open(2) flags.
    pub flags: c_int,
    /// The submodule's per-open data.
    pub fdprivate: *mut c_void,
    /// The device, for `vudev_get_private_data`.
    pub vudev: *mut VudevT,
}

/// `confirm_subdev`
pub type ConfirmFn = unsafe extern "C" fn(c_uint, *mut VudevT) -> c_int;
/// `open`
pub type OpenFn = unsafe extern "C" fn(*const c_char, libc::mode_t, *mut VudevFd) -> c_int;
/// `close`
pub type CloseFn = unsafe extern "C" fn(c_int, *mut VudevFd) -> c_int;
/// `read`
pub type ReadFn = unsafe extern "C" fn(c_int, *mut c_void, usize, *mut VudevFd) -> isize;
/// `write`
pub type WriteFn = unsafe extern "C" fn(c_int, *const c_void, usize, *mut VudevFd) -> isize;
/// `pread`
pub type PreadFn =
    unsafe extern "C" fn(c_int, *mut c_void, usize, libc::off_t, *mut VudevFd) -> isize;
/// `pwrite`
pub type PwriteFn =
    unsafe extern "C" fn(c_int, *const c_void, usize, libc::off_t, *mut VudevFd) -> isize;
/// `lseek`
pub type LseekFn = unsafe extern "C" fn(c_int, libc::off_t, c_int, *mut VudevFd) -> libc::off_t;
/// `ioctl`
pub type IoctlFn = unsafe extern "C" fn(c_int, c_ulong, *mut c_void, *mut VudevFd) -> c_int;
/// `epoll_ctl`
pub type EpollCtlFn =
    unsafe extern "C" fn(c_int, c_int, c_int, *mut libc::epoll_event, *mut VudevFd) -> c_int;
/// `init`
pub type InitFn =
    unsafe extern "C" fn(*const c_char, c_ulong, *const c_char, *mut VudevT) -> *mut c_void;
/// `fini`
pub type FiniFn = unsafe extern "C" fn(*mut c_void) -> c_int;

/// `struct vudev_operations_t`: 12 function pointers (96 bytes), NULL where absent.
#[repr(C)]
#[derive(Debug)]
pub struct VudevOperations {
    /// Accept `/dev/NAME<N>`?
    pub confirm_subdev: Option<ConfirmFn>,
    /// Open a (sub)device.
    pub open: Option<OpenFn>,
    /// Close it.
    pub close: Option<CloseFn>,
    /// Char devices only.
    pub read: Option<ReadFn>,
    /// Char devices only.
    pub write: Option<WriteFn>,
    /// Positional read (block devices).
    pub pread: Option<PreadFn>,
    /// Positional write (block devices).
    pub pwrite: Option<PwriteFn>,
    /// Position check / size query.
    pub lseek: Option<LseekFn>,
    /// ioctl, with the `fd == -1` probe.
    pub ioctl: Option<IoctlFn>,
    /// Blocking/poll support (char devices).
    pub epoll_ctl: Option<EpollCtlFn>,
    /// Mount: returns the private data.
    pub init: Option<InitFn>,
    /// Unmount.
    pub fini: Option<FiniFn>,
}

extern "C" {
    // Resolved from vudev.so at load time (no #[link]: the module must not pull a library in).
    fn vudev_get_private_data(vudev: *mut VudevT) -> *mut c_void;
    fn vudev_set_devtype(vudev: *mut VudevT, devtype: libc::mode_t);
}

/// `struct hd_geometry` (16 bytes), the answer to `HDIO_GETGEO`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HdGeometry {
    /// Heads.
    pub heads: u8,
    /// Sectors per track.
    pub sectors: u8,
    /// Cylinders (saturated at 65535, as a 16-bit field must be).
    pub cylinders: u16,
    /// First sector of the (sub)device, in 512-byte sectors.
    pub start: c_ulong,
}

/// The Linux block ioctl request numbers the modules answer (x86_64/generic encoding).
pub mod req {
    use std::ffi::c_ulong;
    /// `_IO(0x12,93)` set read-only (int in)
    pub const BLKROSET: c_ulong = 0x125d;
    /// `_IO(0x12,94)` get read-only (int out)
    pub const BLKROGET: c_ulong = 0x125e;
    /// `_IO(0x12,95)` re-read the partition table
    pub const BLKRRPART: c_ulong = 0x125f;
    /// `_IO(0x12,96)` size in 512-byte sectors (unsigned long out)
    pub const BLKGETSIZE: c_ulong = 0x1260;
    /// `_IO(0x12,97)` flush buffers
    pub const BLKFLSBUF: c_ulong = 0x1261;
    /// `_IO(0x12,104)` logical sector size (int out)
    pub const BLKSSZGET: c_ulong = 0x1268;
    /// `_IOR(0x12,114,size_t)` size in bytes (u64 out)
    pub const BLKGETSIZE64: c_ulong = 0x8008_1272;
    /// `_IO(0x12,119)` discard a range (two u64 in: offset, length)
    pub const BLKDISCARD: c_ulong = 0x1277;
    /// `_IO(0x12,120)` minimum I/O size (unsigned int out)
    pub const BLKIOMIN: c_ulong = 0x1278;
    /// `_IO(0x12,121)` optimal I/O size (unsigned int out)
    pub const BLKIOOPT: c_ulong = 0x1279;
    /// `_IO(0x12,122)` alignment offset (int out)
    pub const BLKALIGNOFF: c_ulong = 0x127a;
    /// `_IO(0x12,123)` physical sector size (unsigned int out)
    pub const BLKPBSZGET: c_ulong = 0x127b;
    /// `_IO(0x12,124)` discarded ranges read as zeros (unsigned int out)
    pub const BLKDISCARDZEROES: c_ulong = 0x127c;
    /// `_IO(0x12,127)` zero a range (two u64 in: offset, length)
    pub const BLKZEROOUT: c_ulong = 0x127f;
    /// `_IOR(0x12,132,u32)` zone size (u32 out; 0 = not zoned)
    pub const BLKGETZONESZ: c_ulong = 0x8004_1284;
    /// `0x0301` geometry (struct hd_geometry out)
    pub const HDIO_GETGEO: c_ulong = 0x0301;
}

/// Fake request codes for the `fd == -1` probe, in VUOS's inverted convention (VUOS.md
/// section 3): `_IOW` = the module writes the argument back to the caller, `_IOR` = the module
/// reads it from the caller, `_IO` = no argument.
pub mod probe {
    const fn code(dir: u32, size: usize) -> u32 {
        (dir << 30) | ((size as u32) << 16) | ((b' ' as u32) << 8)
    }
    /// No argument is copied.
    pub const NONE: u32 = code(0, 0);
    /// The module writes `size` bytes to the caller (`_IOW(' ',0,T)`).
    pub const fn out(size: usize) -> u32 {
        code(1, size)
    }
    /// The module reads `size` bytes from the caller (`_IOR(' ',0,T)`).
    pub const fn input(size: usize) -> u32 {
        code(2, size)
    }
}

/// What a block submodule serves: subdevice 0 and maybe numbered partitions.
pub trait BlockDriver: Send + Sync + 'static {
    /// The device behind subdevice `subdev`, or `ENXIO`.
    fn device(&self, subdev: u32) -> Result<Arc<dyn BlockDevice>, Errno>;
    /// Whether `/dev/NAME<subdev>` exists now.
    fn confirm(&self, subdev: u32) -> bool {
        subdev == 0
    }
    /// `BLKRRPART`: read the partition table again (`EINVAL` for unpartitioned devices).
    fn reread(&self) -> Result<(), Errno> {
        Err(Errno::EINVAL)
    }
    /// `HDIO_GETGEO` for subdevice `subdev`.
    fn geometry(&self, subdev: u32) -> Result<HdGeometry, Errno>;
}

/// Builds a submodule's driver at mount: `(source, read_only, data)`.
pub type MakeDriver = fn(Option<&str>, bool, &str) -> Result<Box<dyn BlockDriver>, Errno>;

/// The private data of one mounted device: the driver plus the `BLKROSET` state.
pub struct Served {
    driver: Box<dyn BlockDriver>,
    read_only_mount: bool,
    ro_subdevs: Mutex<BTreeSet<u32>>,
}

/// Per-open state kept in `vudevfd->fdprivate`.
struct OpenDev {
    subdev: u32,
    device: Arc<dyn BlockDevice>,
}

pub use vuglue::warn;

mod partitioned;
pub use partitioned::open_partitioned;

/// The mount options every vudev submodule receives and vudev itself handles
/// (`mode=`, `uid=`, `gid=`, `major=`, `minor=`, type words, `devid`) plus umvu's `permanent`.
pub const VUDEV_OWN_OPTIONS: &[&str] = &[
    "mode",
    "uid",
    "gid",
    "major",
    "minor",
    "chrdev",
    "chr",
    "char",
    "blkdev",
    "blk",
    "devid",
    "permanent",
];

/// Splits a vudev mount data string into `(key, value)` items, keeping the submodule's own
/// keys (`known`) and skipping vudev's; any other key is `EINVAL` with a message.
pub fn submodule_options<'a>(
    module: &str,
    data: &'a str,
    known: &[&str],
) -> Result<Vec<(&'a str, Option<&'a str>)>, Errno> {
    let mut out = Vec::new();
    for item in data.split(',').filter(|i| !i.is_empty()) {
        let (key, value) = match item.split_once('=') {
            Some((k, v)) => (k, Some(v)),
            None => (item, None),
        };
        if known.contains(&key) {
            out.push((key, value));
        } else if !VUDEV_OWN_OPTIONS.contains(&key) {
            warn(module, &format!("unknown option '{item}'"));
            return Err(Errno::EINVAL);
        }
    }
    Ok(out)
}

/// Geometry in the PC BIOS style: `heads` x `sectors` per cylinder, cylinders rounded up and
/// saturated to 16 bits; `start` in 512-byte sectors.
pub fn chs_geometry(disk_bytes: u64, heads: u8, sectors: u8, start_sector: u64) -> HdGeometry {
    let per_cylinder = u64::from(heads) * u64::from(sectors);
    let cylinders = (disk_bytes / 512).div_ceil(per_cylinder.max(1));
    HdGeometry {
        heads,
        sectors,
        cylinders: u16::try_from(cylinders).unwrap_or(u16::MAX),
        start: start_sector as c_ulong,
    }
}

impl Served {
    fn device_read_only(&self, subdev: u32, device: &dyn BlockDevice) -> bool {
        self.read_only_mount
            || device.read_only()
            || self
                .ro_subdevs
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .contains(&subdev)
    }
}

/// Borrows vudev's fd record.
///
/// # Safety
/// `fd` must be NULL or point to a live `struct vudevfd_t`.
unsafe fn vudevfd<'a>(fd: *mut VudevFd) -> Result<&'a mut VudevFd, Errno> {
    // SAFETY: per the contract, non-null means a live vudevfd_t owned by vudev for this call.
    unsafe { fd.as_mut() }.ok_or(Errno::EBADF)
}

/// The served device behind a `struct vudev_t`.
///
/// # Safety
/// `vudev` must be a vudev object whose private data was set by [`init_with`].
unsafe fn served<'a>(vudev: *mut VudevT) -> Result<&'a Served, Errno> {
    if vudev.is_null() {
        return Err(Errno::EINVAL);
    }
    // SAFETY: vudev.so hands back the pointer our init returned; it stays alive until fini.
    let private = unsafe { vudev_get_private_data(vudev) } as *const Served;
    // SAFETY: non-null private data is always a Box<Served> leaked by init_with.
    unsafe { private.as_ref() }.ok_or(Errno::EINVAL)
}

/// The open device of an fd record.
fn open_dev(fd: &VudevFd) -> Result<&OpenDev, Errno> {
    let private = fd.fdprivate as *const OpenDev;
    // SAFETY: fdprivate is NULL or the Box<OpenDev> leaked by `vudev_open`, freed only in close.
    unsafe { private.as_ref() }.ok_or(Errno::EBADF)
}

/// `init`: parses with `make`, sets the device type to block, and returns the private data.
///
/// # Safety
/// The pointers are those vudev passes to `init` (C strings or NULL, a live vudev object).
pub unsafe fn init_with(
    source: *const c_char,
    mountflags: c_ulong,
    data: *const c_char,
    vudev: *mut VudevT,
    make: MakeDriver,
) -> *mut c_void {
    ret_ptr(|| {
        // SAFETY: vudev passes NUL-terminated strings or NULL.
        let source = unsafe { c_str_opt(source) }?;
        // SAFETY: as above.
        let data = unsafe { c_str_opt(data) }?.unwrap_or("");
        let read_only = mountflags & libc::MS_RDONLY != 0;
        let driver = make(source, read_only, data)?;
        if !vudev.is_null() {
            // SAFETY: vudev is the live device object of this mount.
            unsafe { vudev_set_devtype(vudev, libc::S_IFBLK) };
        }
        let served = Box::new(Served {
            driver,
            read_only_mount: read_only,
            ro_subdevs: Mutex::new(BTreeSet::new()),
        });
        Ok(Box::into_raw(served) as *mut c_void)
    })
}

/// `fini`: frees the private data made by [`init_with`].
///
/// # Safety
/// `private` must be NULL or the pointer `init_with` returned, not yet freed.
pub unsafe extern "C" fn vudev_fini(private: *mut c_void) -> c_int {
    ret_int(|| {
        if !private.is_null() {
            // SAFETY: the pointer came from Box::into_raw in init_with and fini runs once.
            drop(unsafe { Box::from_raw(private as *mut Served) });
        }
        Ok(0)
    })
}

/// `confirm_subdev`
///
/// # Safety
/// `vudev` must be the live device object.
pub unsafe extern "C" fn vudev_confirm(subdev: c_uint, vudev: *mut VudevT) -> c_int {
    vuglue::no_unwind(|| {
        // SAFETY: forwarded contract.
        let served = unsafe { served(vudev) }?;
        Ok(served.driver.confirm(subdev) as c_int)
    })
    .unwrap_or(0)
}

/// `open`: looks the subdevice up and keeps its device for the life of the fd.
///
/// # Safety
/// `fd` must be the live vudevfd of this open.
pub unsafe extern "C" fn vudev_open(
    _path: *const c_char,
    _mode: libc::mode_t,
    fd: *mut VudevFd,
) -> c_int {
    ret_int(|| {
        // SAFETY: forwarded contract.
        let fd = unsafe { vudevfd(fd) }?;
        // SAFETY: fd.vudev is the live device object.
        let served = unsafe { served(fd.vudev) }?;
        let subdev = u32::try_from(fd.subdev).map_err(|_| Errno::ENXIO)?;
        if !served.driver.confirm(subdev) {
            return Err(Errno::ENXIO);
        }
        let device = served.driver.device(subdev)?;
        let wants_write = fd.flags & libc::O_ACCMODE != libc::O_RDONLY;
        if wants_write && served.read_only_mount {
            return Err(Errno::EROFS);
        }
        fd.fdprivate = Box::into_raw(Box::new(OpenDev { subdev, device })) as *mut c_void;
        Ok(0)
    })
}

/// `close`
///
/// # Safety
/// `fd` must be the live vudevfd of an open made by [`vudev_open`].
pub unsafe extern "C" fn vudev_close(_sfd: c_int, fd: *mut VudevFd) -> c_int {
    ret_int(|| {
        // SAFETY: forwarded contract.
        let fd = unsafe { vudevfd(fd) }?;
        if !fd.fdprivate.is_null() {
            // SAFETY: fdprivate is the Box<OpenDev> leaked by vudev_open; close runs once.
            let open = unsafe { Box::from_raw(fd.fdprivate as *mut OpenDev) };
            fd.fdprivate = std::ptr::null_mut();
            // vudev frees its fd record only when close returns 0, so a failed flush is
            // reported, not returned (a revoked partition cannot be flushed at all).
            if fd.flags & libc::O_ACCMODE != libc::O_RDONLY {
                match open.device.flush() {
                    Ok(()) | Err(Errno::EIO) => {}
                    Err(e) => warn("vudev", &format!("flush at close: {e}")),
                }
            }
        }
        Ok(0)
    })
}

/// `pread`: reads past the end give 0 (end of file), as a kernel block device.
///
/// # Safety
/// `buf` must be valid for `count` bytes of writes; `fd` a live vudevfd.
pub unsafe extern "C" fn vudev_pread(
    _sfd: c_int,
    buf: *mut c_void,
    count: usize,
    offset: libc::off_t,
    fd: *mut VudevFd,
) -> isize {
    ret_isize(|| {
        // SAFETY: forwarded contract.
        let fd = unsafe { vudevfd(fd) }?;
        if fd.flags & libc::O_ACCMODE == libc::O_WRONLY {
            return Err(Errno::EBADF);
        }
        let open = open_dev(fd)?;
        let offset = u64::try_from(offset).map_err(|_| Errno::EINVAL)?;
        if count == 0 {
            return Ok(0);
        }
        if buf.is_null() {
            return Err(Errno::from_raw(libc::EFAULT));
        }
        // SAFETY: the caller guarantees buf is valid for count bytes.
        let buf = unsafe { std::slice::from_raw_parts_mut(buf as *mut u8, count) };
        Ok(open.device.read_until_end(buf, offset)? as isize)
    })
}

/// `pwrite`: writes at or past the end give `ENOSPC`; read-only devices `EROFS`.
///
/// # Safety
/// `buf` must be valid for `count` bytes of reads; `fd` a live vudevfd.
pub unsafe extern "C" fn vudev_pwrite(
    _sfd: c_int,
    buf: *const c_void,
    count: usize,
    offset: libc::off_t,
    fd: *mut VudevFd,
) -> isize {
    ret_isize(|| {
        // SAFETY: forwarded contract.
        let fd = unsafe { vudevfd(fd) }?;
        if fd.flags & libc::O_ACCMODE == libc::O_RDONLY {
            return Err(Errno::EBADF);
        }
        // SAFETY: fd.vudev is the live device object.
        let served = unsafe { served(fd.vudev) }?;
        let open = open_dev(fd)?;
        if served.device_read_only(open.subdev, open.device.as_ref()) {
            return Err(Errno::EROFS);
        }
        let offset = u64::try_from(offset).map_err(|_| Errno::EINVAL)?;
        if count == 0 {
            return Ok(0);
        }
        if buf.is_null() {
            return Err(Errno::from_raw(libc::EFAULT));
        }
        // SAFETY: the caller guarantees buf is valid for count bytes.
        let buf = unsafe { std::slice::from_raw_parts(buf as *const u8, count) };
        Ok(open.device.write_until_end(buf, offset)? as isize)
    })
}

/// `lseek`: SEEK_SET, SEEK_CUR (vudev's position) and SEEK_END (the device size).
///
/// # Safety
/// `fd` must be a live vudevfd.
pub unsafe extern "C" fn vudev_lseek(
    _sfd: c_int,
    offset: libc::off_t,
    whence: c_int,
    fd: *mut VudevFd,
) -> libc::off_t {
    ret_isize(|| {
        // SAFETY: forwarded contract.
        let fd = unsafe { vudevfd(fd) }?;
        let open = open_dev(fd)?;
        let base: i64 = match whence {
            libc::SEEK_SET => 0,
            libc::SEEK_CUR => fd.offset,
            libc::SEEK_END => i64::try_from(open.device.size()).map_err(|_| Errno::EOVERFLOW)?,
            _ => return Err(Errno::EINVAL),
        };
        let pos = base.checked_add(offset).ok_or(Errno::EOVERFLOW)?;
        if pos < 0 {
            return Err(Errno::EINVAL);
        }
        Ok(pos as isize)
    }) as libc::off_t
}

/// The probe answer for `request` (`fd == -1`): the fake code telling umvu how many bytes to
/// copy and which way. Unknown requests get "no argument", then `EINVAL` on the real call.
pub fn probe_code(request: c_ulong) -> u32 {
    use std::mem::size_of;
    match request {
        req::BLKGETSIZE64 => probe::out(size_of::<u64>()),
        req::BLKGETSIZE => probe::out(size_of::<c_ulong>()),
        req::BLKSSZGET | req::BLKROGET | req::BLKALIGNOFF => probe::out(size_of::<c_int>()),
        req::BLKPBSZGET | req::BLKIOMIN | req::BLKIOOPT | req::BLKDISCARDZEROES => {
            probe::out(size_of::<c_uint>())
        }
        req::BLKGETZONESZ => probe::out(size_of::<u32>()),
        req::HDIO_GETGEO => probe::out(size_of::<HdGeometry>()),
        req::BLKROSET => probe::input(size_of::<c_int>()),
        req::BLKDISCARD | req::BLKZEROOUT => probe::input(2 * size_of::<u64>()),
        _ => probe::NONE,
    }
}

/// Copies `value` into the ioctl buffer.
///
/// # Safety
/// `buf` must be valid for `size_of::<T>()` bytes of writes (umvu allocated the probe size).
unsafe fn put<T: Copy>(buf: *mut c_void, value: T) -> Result<i32, Errno> {
    if buf.is_null() {
        return Err(Errno::from_raw(libc::EFAULT));
    }
    // SAFETY: per the contract; unaligned because umvu's buffer has no alignment promise.
    unsafe { (buf as *mut T).write_unaligned(value) };
    Ok(0)
}

/// Reads a value from the ioctl buffer.
///
/// # Safety
/// `buf` must be valid for `size_of::<T>()` bytes of reads.
unsafe fn get<T: Copy>(buf: *const c_void) -> Result<T, Errno> {
    if buf.is_null() {
        return Err(Errno::from_raw(libc::EFAULT));
    }
    // SAFETY: per the contract.
    Ok(unsafe { (buf as *const T).read_unaligned() })
}

/// Checks a `[start, len]` range of `BLKDISCARD`/`BLKZEROOUT` as the kernel does.
fn byte_range(range: [u64; 2], device: &dyn BlockDevice) -> Result<(u64, u64), Errno> {
    let [start, len] = range;
    let end = start.checked_add(len).ok_or(Errno::EINVAL)?;
    if start % 512 != 0 || len % 512 != 0 || end > device.size() {
        return Err(Errno::EINVAL);
    }
    Ok((start, len))
}

/// `ioctl`: the probe for `fd == -1`, else the block ioctls in their kernel units.
///
/// # Safety
/// For `fd >= 0`, `buf` must be valid for the size the probe announced; `fd` a live vudevfd.
pub unsafe extern "C" fn vudev_ioctl(
    sfd: c_int,
    request: c_ulong,
    buf: *mut c_void,
    fd: *mut VudevFd,
) -> c_int {
    if sfd == -1 {
        return probe_code(request) as c_int;
    }
    ret_int(|| {
        // SAFETY: forwarded contract.
        let fd = unsafe { vudevfd(fd) }?;
        // SAFETY: fd.vudev is the live device object.
        let served = unsafe { served(fd.vudev) }?;
        let open = open_dev(fd)?;
        let device = open.device.as_ref();
        let sector = device.sector_size();
        // SAFETY (all `put`/`get` below): umvu allocated `buf` with the size `probe_code`
        // announced for this very request, which is the size of the type written or read.
        unsafe {
            match request {
                req::BLKGETSIZE64 => put::<u64>(buf, device.size()),
                req::BLKGETSIZE => put::<c_ulong>(buf, (device.size() / 512) as c_ulong),
                req::BLKSSZGET => put::<c_int>(buf, sector as c_int),
                req::BLKPBSZGET | req::BLKIOMIN => put::<c_uint>(buf, sector),
                req::BLKIOOPT => put::<c_uint>(buf, 0),
                req::BLKALIGNOFF => put::<c_int>(buf, 0),
                req::BLKGETZONESZ => put::<u32>(buf, 0),
                req::BLKDISCARDZEROES => put::<c_uint>(buf, device.discard_zeroes() as c_uint),
                req::BLKROGET => {
                    put::<c_int>(buf, served.device_read_only(open.subdev, device) as c_int)
                }
                req::BLKROSET => {
                    let value = get::<c_int>(buf)?;
                    let mut set = served.ro_subdevs.lock().unwrap_or_else(|e| e.into_inner());
                    if value != 0 {
                        set.insert(open.subdev);
                    } else {
                        if served.read_only_mount || device.read_only() {
                            return Err(Errno::EACCES);
                        }
                        set.remove(&open.subdev);
                    }
                    Ok(0)
                }
                req::HDIO_GETGEO => put::<HdGeometry>(buf, served.driver.geometry(open.subdev)?),
                req::BLKRRPART => served.driver.reread().map(|()| 0),
                req::BLKFLSBUF => device.flush().map(|()| 0),
                req::BLKDISCARD | req::BLKZEROOUT => {
                    let (start, len) = byte_range(get::<[u64; 2]>(buf)?, device)?;
                    if fd.flags & libc::O_ACCMODE == libc::O_RDONLY {
                        return Err(Errno::EBADF);
                    }
                    if served.device_read_only(open.subdev, device) {
                        return Err(Errno::EROFS);
                    }
                    if request == req::BLKDISCARD || device.discard_zeroes() {
                        device.discard(start, len)?;
                    } else {
                        write_zeros(device, start, len)?;
                    }
                    Ok(0)
                }
                _ => Err(Errno::EINVAL),
            }
        }
    })
}

/// Writes zeros over a range, in bounded pieces (`BLKZEROOUT` on devices whose discard keeps data).
fn write_zeros(device: &dyn BlockDevice, mut offset: u64, mut len: u64) -> Result<(), Errno> {
    let zeros = vec![0u8; 1 << 20];
    while len > 0 {
        let n = len.min(zeros.len() as u64) as usize;
        device.write_all_at(&zeros[..n], offset)?;
        offset += n as u64;
        len -= n as u64;
    }
    Ok(())
}

/// Exports `vudev_ops` for a block submodule whose `init` builds its driver with `$make`
/// (`fn(source: Option<&str>, read_only: bool, data: &str) -> Result<Box<dyn BlockDriver>, Errno>`).
#[macro_export]
macro_rules! export_vudev_ops {
    ($make:path) => {
        /// `init`, as vudev calls it at mount.
        unsafe extern "C" fn vudev_init(
            source: *const ::std::ffi::c_char,
            mountflags: ::std::ffi::c_ulong,
            data: *const ::std::ffi::c_char,
            vudev: *mut $crate::VudevT,
        ) -> *mut ::std::ffi::c_void {
            // SAFETY: vudev passes its own arguments through unchanged.
            unsafe { $crate::init_with(source, mountflags, data, vudev, $make) }
        }

        /// The operation table vudev looks up with `dlsym("vudev_ops")`.
        #[no_mangle]
        #[allow(non_upper_case_globals)]
        pub static vudev_ops: $crate::VudevOperations = $crate::VudevOperations {
            confirm_subdev: Some($crate::vudev_confirm),
            open: Some($crate::vudev_open),
            close: Some($crate::vudev_close),
            read: None,
            write: None,
            pread: Some($crate::vudev_pread),
            pwrite: Some($crate::vudev_pwrite),
            lseek: Some($crate::vudev_lseek),
            ioctl: Some($crate::vudev_ioctl),
            epoll_ctl: None,
            init: Some(vudev_init),
            fini: Some($crate::vudev_fini),
        };
    };
}
