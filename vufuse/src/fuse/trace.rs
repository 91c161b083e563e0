//! The `-d` trace: one line per request, in a form made for grep and awk:
//!
//! ```text
//! lookup(1, "f") -> ok ino=12 mode=0100644 nlink=1 uid=0 gid=0 size=5 pid=812 uid=0
//! lookup(1, "missing") -> ENOENT pid=812 uid=0
//! mkdir(1, "d", 0755) -> ok ino=13 mode=040755 nlink=2 uid=0 gid=0 size=4096 pid=812 uid=0
//! ```
//!
//! The opcode first, its node (the parent for name operations) as the first argument, the
//! result as `ok ...` or the errno's name, modes in octal, then the caller.

use std::fmt::Write;
use vudev::Errno;
use vufuse_api::fs::{Attr, Entry, Fh, Opened, SetAttr, StatFs};

/// How a request's result reads in the trace.
pub(crate) trait Summary {
    /// One line, no newline.
    fn summary(&self) -> String;
}

impl<T: Summary> Summary for Result<T, Errno> {
    fn summary(&self) -> String {
        match self {
            Ok(v) => {
                let s = v.summary();
                if s.is_empty() {
                    "ok".to_string()
                } else {
                    format!("ok {s}")
                }
            }
            Err(e) => errno_name(*e),
        }
    }
}

impl<T: Summary> Summary for Result<T, &Errno> {
    fn summary(&self) -> String {
        match self {
            Ok(v) => Ok::<&T, Errno>(v).summary(),
            Err(e) => errno_name(**e),
        }
    }
}

impl<T: Summary> Summary for &T {
    fn summary(&self) -> String {
        (**self).summary()
    }
}

impl Summary for () {
    fn summary(&self) -> String {
        String::new()
    }
}

impl Summary for usize {
    fn summary(&self) -> String {
        format!("{self} bytes")
    }
}

impl Summary for Vec<u8> {
    fn summary(&self) -> String {
        format!("{} bytes", self.len())
    }
}

impl Summary for Vec<Vec<u8>> {
    fn summary(&self) -> String {
        format!("{} names", self.len())
    }
}

impl Summary for Fh {
    fn summary(&self) -> String {
        format!("fh={}", self.0)
    }
}

impl Summary for Attr {
    fn summary(&self) -> String {
        format!(
            "ino={} mode=0{:o} nlink={} uid={} gid={} size={}",
            self.ino.0,
            self.kind.mode_bits() | u32::from(self.perm),
            self.nlink,
            self.uid,
            self.gid,
            self.size
        )
    }
}

impl Summary for Entry {
    fn summary(&self) -> String {
        self.attr.summary()
    }
}

impl Summary for Opened {
    fn summary(&self) -> String {
        let mut s = format!("fh={}", self.fh.0);
        if self.keep_cache {
            s.push_str(" keep_cache");
        }
        if self.direct_io {
            s.push_str(" direct_io");
        }
        s
    }
}

impl Summary for (Entry, Opened) {
    fn summary(&self) -> String {
        format!("{} {}", self.0.summary(), self.1.summary())
    }
}

impl Summary for StatFs {
    fn summary(&self) -> String {
        format!(
            "blocks={} free={} avail={} files={} ffree={} bsize={}",
            self.blocks,
            self.blocks_free,
            self.blocks_available,
            self.files,
            self.files_free,
            self.block_size
        )
    }
}

/// The changes of a setattr, `mode=0644 uid=5 size=0 ...` (only those asked for).
pub(crate) fn set_attr(set: &SetAttr) -> String {
    let mut s = String::new();
    if let Some(mode) = set.mode {
        let _ = write!(s, " mode=0{mode:o}");
    }
    if let Some(uid) = set.uid {
        let _ = write!(s, " uid={uid}");
    }
    if let Some(gid) = set.gid {
        let _ = write!(s, " gid={gid}");
    }
    if let Some(size) = set.size {
        let _ = write!(s, " size={size}");
    }
    if set.atime.is_some() {
        s.push_str(" atime");
    }
    if set.mtime.is_some() {
        s.push_str(" mtime");
    }
    s.trim_start().to_string()
}

/// `ENOENT` for errno 2 (the names of errno(3)); `errno N` for the rest.
pub(crate) fn errno_name(e: Errno) -> String {
    let name = match e.raw() {
        libc::EPERM => "EPERM",
        libc::ENOENT => "ENOENT",
        libc::EINTR => "EINTR",
        libc::EIO => "EIO",
        libc::ENXIO => "ENXIO",
        libc::E2BIG => "E2BIG",
        libc::EBADF => "EBADF",
        libc::EAGAIN => "EAGAIN",
        libc::ENOMEM => "ENOMEM",
        libc::EACCES => "EACCES",
        libc::EBUSY => "EBUSY",
        libc::EEXIST => "EEXIST",
        libc::EXDEV => "EXDEV",
        libc::ENODEV => "ENODEV",
        libc::ENOTDIR => "ENOTDIR",
        libc::EISDIR => "EISDIR",
        libc::EINVAL => "EINVAL",
        libc::EMFILE => "EMFILE",
        libc::ETXTBSY => "ETXTBSY",
        libc::EFBIG => "EFBIG",
        libc::ENOSPC => "ENOSPC",
        libc::ESPIPE => "ESPIPE",
        libc::EROFS => "EROFS",
        libc::EMLINK => "EMLINK",
        libc::ERANGE => "ERANGE",
        libc::ENAMETOOLONG => "ENAMETOOLONG",
        libc::ENOSYS => "ENOSYS",
        libc::ENOTEMPTY => "ENOTEMPTY",
        libc::ELOOP => "ELOOP",
        libc::ENODATA => "ENODATA",
        libc::EOPNOTSUPP => "EOPNOTSUPP",
        libc::ENOTCONN => "ENOTCONN",
        libc::ETIMEDOUT => "ETIMEDOUT",
        libc::EUCLEAN => "EUCLEAN",
        libc::EOVERFLOW => "EOVERFLOW",
        libc::EDQUOT => "EDQUOT",
        n => return format!("errno {n}"),
    };
    name.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::SystemTime;
    use vufuse_api::fs::{FileKind, Ino};

    #[test]
    fn results_read_as_ok_or_the_errno_name_with_modes_in_octal() {
        let attr = Attr {
            ino: Ino(12),
            size: 5,
            blocks: 8,
            atime: SystemTime::UNIX_EPOCH,
            mtime: SystemTime::UNIX_EPOCH,
            ctime: SystemTime::UNIX_EPOCH,
            crtime: SystemTime::UNIX_EPOCH,
            kind: FileKind::File,
            perm: 0o644,
            nlink: 1,
            uid: 0,
            gid: 0,
            rdev: 0,
            blksize: 4096,
        };
        let r: Result<Attr, Errno> = Ok(attr);
        assert_eq!(
            r.summary(),
            "ok ino=12 mode=0100644 nlink=1 uid=0 gid=0 size=5"
        );
        let r: Result<Entry, Errno> = Err(Errno::ENOENT);
        assert_eq!(r.summary(), "ENOENT");
        let r: Result<(), Errno> = Ok(());
        assert_eq!(r.summary(), "ok");
        assert_eq!(errno_name(Errno::from_raw(4095)), "errno 4095");
        let set = SetAttr {
            mode: Some(0o600),
            size: Some(0),
            ..Default::default()
        };
        assert_eq!(set_attr(&set), "mode=0600 size=0");
    }
}
