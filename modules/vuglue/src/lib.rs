//! The thin FFI edge every VUOS module (`vudev*.so`, `vufuse*.so`, `vufs.so`) shares.
//!
//! umvu calls module handlers from its tracer threads through a C ABI. Two rules hold at every
//! entry point: no panic may unwind into C (it is undefined behaviour and would kill the traced
//! process tree), and errors leave as errno values in the convention the caller expects
//! (`-1` + `errno` for umvu handlers, `-errno` for FUSE operations, `NULL` + `errno` for `init`).
//! The helpers here implement those conventions once so each module's glue stays a few lines.
#![allow(unsafe_code)]

use std::ffi::{c_char, CStr};
use std::panic::{catch_unwind, AssertUnwindSafe};

pub use vudev::Errno;

/// Writes a warning to umvu's stderr (never panics, unlike `eprintln!`).
pub fn warn(module: &str, message: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "{module}: {message}");
}

/// Sets the calling thread's `errno`, as umvu reads it after a handler returns -1.
pub fn set_errno(errno: Errno) {
    // SAFETY: __errno_location returns a valid pointer to this thread's errno for the thread's life.
    unsafe { *libc::__errno_location() = errno.raw() };
}

/// Runs `body`, turning a panic into EIO so it never unwinds across the C ABI.
pub fn no_unwind<T>(body: impl FnOnce() -> Result<T, Errno>) -> Result<T, Errno> {
    match catch_unwind(AssertUnwindSafe(body)) {
        Ok(result) => result,
        Err(_) => Err(Errno::EIO),
    }
}

/// umvu handler convention for `int`-returning calls: the value, or -1 with `errno` set.
pub fn ret_int(body: impl FnOnce() -> Result<i32, Errno>) -> i32 {
    match no_unwind(body) {
        Ok(value) => value,
        Err(errno) => {
            set_errno(errno);
            -1
        }
    }
}

/// umvu handler convention for `ssize_t`/`off_t`-returning calls: the value, or -1 with `errno` set.
pub fn ret_isize(body: impl FnOnce() -> Result<isize, Errno>) -> isize {
    match no_unwind(body) {
        Ok(value) => value,
        Err(errno) => {
            set_errno(errno);
            -1
        }
    }
}

/// `init`-style convention: a non-null pointer, or NULL with `errno` set.
pub fn ret_ptr<T>(body: impl FnOnce() -> Result<*mut T, Errno>) -> *mut T {
    match no_unwind(body) {
        Ok(ptr) => ptr,
        Err(errno) => {
            set_errno(errno);
            std::ptr::null_mut()
        }
    }
}

/// FUSE operation convention: a non-negative value, or `-errno`.
pub fn ret_neg_errno(body: impl FnOnce() -> Result<i32, Errno>) -> i32 {
    match no_unwind(body) {
        Ok(value) => value,
        Err(errno) => -errno.raw(),
    }
}

/// Borrows a C string handed in by umvu; NULL gives EFAULT, invalid UTF-8 gives EINVAL.
///
/// # Safety
/// `ptr` must be NULL or point to a NUL-terminated string that outlives `'a`.
pub unsafe fn c_str<'a>(ptr: *const c_char) -> Result<&'a str, Errno> {
    if ptr.is_null() {
        return Err(Errno::from_raw(libc::EFAULT));
    }
    // SAFETY: non-null and NUL-terminated per this function's contract.
    let bytes = unsafe { CStr::from_ptr(ptr) };
    bytes.to_str().map_err(|_| Errno::EINVAL)
}

/// Like [`c_str`], but NULL means "absent" (mount data, optional sources).
///
/// # Safety
/// As [`c_str`].
pub unsafe fn c_str_opt<'a>(ptr: *const c_char) -> Result<Option<&'a str>, Errno> {
    if ptr.is_null() {
        Ok(None)
    } else {
        // SAFETY: forwarded contract.
        unsafe { c_str(ptr) }.map(Some)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn panics_become_eio_and_minus_one() {
        let value = ret_int(|| panic!("boom"));
        assert_eq!(value, -1);
        // SAFETY: reading this thread's errno.
        assert_eq!(unsafe { *libc::__errno_location() }, libc::EIO);
    }

    #[test]
    fn fuse_convention_is_negative_errno() {
        assert_eq!(ret_neg_errno(|| Err(Errno::ENOENT)), -libc::ENOENT);
        assert_eq!(ret_neg_errno(|| Ok(7)), 7);
    }
}
