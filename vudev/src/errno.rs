//! The one error type that crosses every layer: a POSIX errno value.
//!
//! FUSE and VUOS both speak errno, so devices, drivers and front ends return
//! [`Errno`] and library errors are mapped to it once, here or in the `From`
//! impls next to each library error type.

use std::fmt;
use std::io;

/// A POSIX error number (always positive).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Errno(i32);

/// Result alias used throughout the project.
pub type Result<T, E = Errno> = std::result::Result<T, E>;

impl Errno {
    /// Operation not permitted.
    pub const EPERM: Errno = Errno(libc::EPERM);
    /// No such file or directory.
    pub const ENOENT: Errno = Errno(libc::ENOENT);
    /// I/O error: also used for devices whose extent vanished under an open handle.
    pub const EIO: Errno = Errno(libc::EIO);
    /// No such device or address (e.g. a partition number that does not exist).
    pub const ENXIO: Errno = Errno(libc::ENXIO);
    /// Bad file descriptor.
    pub const EBADF: Errno = Errno(libc::EBADF);
    /// Out of memory.
    pub const ENOMEM: Errno = Errno(libc::ENOMEM);
    /// Permission denied.
    pub const EACCES: Errno = Errno(libc::EACCES);
    /// Device or resource busy.
    pub const EBUSY: Errno = Errno(libc::EBUSY);
    /// File exists.
    pub const EEXIST: Errno = Errno(libc::EEXIST);
    /// Cross-device link.
    pub const EXDEV: Errno = Errno(libc::EXDEV);
    /// No such device.
    pub const ENODEV: Errno = Errno(libc::ENODEV);
    /// Not a directory.
    pub const ENOTDIR: Errno = Errno(libc::ENOTDIR);
    /// Is a directory.
    pub const EISDIR: Errno = Errno(libc::EISDIR);
    /// Invalid argument.
    pub const EINVAL: Errno = Errno(libc::EINVAL);
    /// File too large.
    pub const EFBIG: Errno = Errno(libc::EFBIG);
    /// No space left on device: also the answer to writes past a device's end.
    pub const ENOSPC: Errno = Errno(libc::ENOSPC);
    /// Read-only file system: writes to a device opened read-only.
    pub const EROFS: Errno = Errno(libc::EROFS);
    /// Too many links.
    pub const EMLINK: Errno = Errno(libc::EMLINK);
    /// File name too long.
    pub const ENAMETOOLONG: Errno = Errno(libc::ENAMETOOLONG);
    /// Function not implemented.
    pub const ENOSYS: Errno = Errno(libc::ENOSYS);
    /// Directory not empty.
    pub const ENOTEMPTY: Errno = Errno(libc::ENOTEMPTY);
    /// Too many levels of symbolic links.
    pub const ELOOP: Errno = Errno(libc::ELOOP);
    /// No data available (missing xattr).
    pub const ENODATA: Errno = Errno(libc::ENODATA);
    /// Value too large for defined data type.
    pub const EOVERFLOW: Errno = Errno(libc::EOVERFLOW);
    /// Operation not supported.
    pub const EOPNOTSUPP: Errno = Errno(libc::EOPNOTSUPP);
    /// Structure needs cleaning: the on-disk data is corrupt.
    pub const EUCLEAN: Errno = Errno(libc::EUCLEAN);
    /// Inappropriate ioctl for device.
    pub const ENOTTY: Errno = Errno(libc::ENOTTY);

    /// Wraps a raw errno value; zero or negative values become `EIO`.
    pub fn from_raw(code: i32) -> Errno {
        if code > 0 {
            Errno(code)
        } else {
            Errno::EIO
        }
    }

    /// The raw (positive) errno value.
    pub fn raw(self) -> i32 {
        self.0
    }

    /// The errno of the calling thread's last failed libc call.
    pub fn last() -> Errno {
        Errno::from(io::Error::last_os_error())
    }
}

impl fmt::Debug for Errno {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Errno({}: {})", self.0, self)
    }
}

impl fmt::Display for Errno {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // std renders "<message> (os error N)"; keep only the message.
        let text = io::Error::from_raw_os_error(self.0).to_string();
        let message = text.split(" (os error").next().unwrap_or(&text);
        f.write_str(message)
    }
}

impl std::error::Error for Errno {}

impl From<io::Error> for Errno {
    fn from(err: io::Error) -> Errno {
        if let Some(code) = err.raw_os_error() {
            return Errno::from_raw(code);
        }
        // Errors built by libraries carry only a kind: map the ones with an errno twin.
        match err.kind() {
            io::ErrorKind::NotFound => Errno::ENOENT,
            io::ErrorKind::PermissionDenied => Errno::EACCES,
            io::ErrorKind::AlreadyExists => Errno::EEXIST,
            io::ErrorKind::InvalidInput => Errno::EINVAL,
            io::ErrorKind::InvalidData => Errno::EUCLEAN,
            io::ErrorKind::UnexpectedEof => Errno::EIO,
            io::ErrorKind::OutOfMemory => Errno::ENOMEM,
            io::ErrorKind::Unsupported => Errno::EOPNOTSUPP,
            io::ErrorKind::StorageFull => Errno::ENOSPC,
            io::ErrorKind::ReadOnlyFilesystem => Errno::EROFS,
            io::ErrorKind::NotADirectory => Errno::ENOTDIR,
            io::ErrorKind::IsADirectory => Errno::EISDIR,
            io::ErrorKind::DirectoryNotEmpty => Errno::ENOTEMPTY,
            io::ErrorKind::FileTooLarge => Errno::EFBIG,
            _ => Errno::EIO,
        }
    }
}

impl From<rustix::io::Errno> for Errno {
    fn from(err: rustix::io::Errno) -> Errno {
        Errno::from_raw(err.raw_os_error())
    }
}

impl From<Errno> for io::Error {
    fn from(err: Errno) -> io::Error {
        io::Error::from_raw_os_error(err.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn io_errors_keep_their_errno() {
        let err = io::Error::from_raw_os_error(libc::ENOSPC);
        assert_eq!(Errno::from(err), Errno::ENOSPC);
        let kind_only = io::Error::new(io::ErrorKind::NotFound, "gone");
        assert_eq!(Errno::from(kind_only), Errno::ENOENT);
        assert_eq!(
            io::Error::from(Errno::EROFS).raw_os_error(),
            Some(libc::EROFS)
        );
    }

    #[test]
    fn display_is_the_bare_message() {
        assert_eq!(Errno::ENOSPC.to_string(), "No space left on device");
        assert_eq!(Errno::from_raw(0), Errno::EIO);
        assert_eq!(Errno::from_raw(-5), Errno::EIO);
    }
}
