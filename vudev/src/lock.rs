//! Image locks: one writer or many readers per image file, across processes and within one.
//!
//! A second read-write mount of the same image corrupts it (each keeps its own caches), so
//! the mount layer locks every image it opens: exclusive for read-write, shared for read-only,
//! as qemu does. The locks are open-file-description locks (`F_OFD_SETLK`), so two mounts in
//! one process (a VUOS hypervisor serving both) conflict as two processes do, and closing an
//! unrelated descriptor of the file does not drop them. They cover the whole file, so they
//! also conflict with qemu's byte-range locks on the same image.

#![allow(unsafe_code)]

use crate::Errno;
use std::fmt;
use std::os::fd::{AsRawFd, BorrowedFd};

/// How an image is held.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LockMode {
    /// Many readers (a read-only mount).
    Shared,
    /// One writer and no reader (a read-write mount).
    Exclusive,
}

impl fmt::Display for LockMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            LockMode::Shared => "read-only",
            LockMode::Exclusive => "read-write",
        })
    }
}

/// Why an image could not be locked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LockError {
    /// Another open of the image holds a lock that conflicts; `held` is its mode.
    Busy {
        /// How the other holder has the image.
        held: LockMode,
    },
    /// The lock call itself failed (a filesystem without locks answers `ENOLCK`).
    Failed(Errno),
}

/// Takes `mode`'s lock on the whole file open at `fd`, without waiting. The lock lasts as
/// long as the open file description (the `File` and its duplicates).
pub fn lock_file(fd: BorrowedFd<'_>, mode: LockMode) -> Result<(), LockError> {
    let mut request = whole_file(match mode {
        LockMode::Shared => libc::F_RDLCK,
        LockMode::Exclusive => libc::F_WRLCK,
    });
    // SAFETY: fd is an open descriptor for the duration of the call and `request` is a
    // valid, initialised `struct flock` that fcntl only reads for F_OFD_SETLK.
    let rc = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_OFD_SETLK, &mut request) };
    if rc == 0 {
        return Ok(());
    }
    let errno = Errno::last();
    if errno.raw() != libc::EAGAIN && errno != Errno::EACCES {
        return Err(LockError::Failed(errno));
    }
    Err(LockError::Busy {
        held: holder_mode(fd).unwrap_or(LockMode::Exclusive),
    })
}

/// The mode of a lock another open holds on the file, if any (`F_OFD_GETLK` asks what would
/// block a write lock: a reader's or a writer's).
fn holder_mode(fd: BorrowedFd<'_>) -> Option<LockMode> {
    let mut probe = whole_file(libc::F_WRLCK);
    // SAFETY: as in `lock_file`; for F_OFD_GETLK fcntl writes the conflicting lock (or
    // F_UNLCK) into `probe`, which we own.
    let rc = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_OFD_GETLK, &mut probe) };
    match (rc, i32::from(probe.l_type)) {
        (0, libc::F_RDLCK) => Some(LockMode::Shared),
        (0, libc::F_WRLCK) => Some(LockMode::Exclusive),
        _ => None,
    }
}

fn whole_file(l_type: i32) -> libc::flock {
    libc::flock {
        l_type: l_type as libc::c_short,
        l_whence: libc::SEEK_SET as libc::c_short,
        l_start: 0,
        l_len: 0,
        // Must be 0 for OFD locks.
        l_pid: 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs::File;
    use std::os::fd::AsFd;

    fn opened(path: &std::path::Path) -> File {
        std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .unwrap()
    }

    #[test]
    fn one_writer_or_many_readers_even_within_one_process() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("img");
        std::fs::write(&path, [0u8; 512]).unwrap();
        let (a, b, c) = (opened(&path), opened(&path), opened(&path));
        assert_eq!(lock_file(a.as_fd(), LockMode::Shared), Ok(()));
        assert_eq!(lock_file(b.as_fd(), LockMode::Shared), Ok(()));
        assert_eq!(
            lock_file(c.as_fd(), LockMode::Exclusive),
            Err(LockError::Busy {
                held: LockMode::Shared
            })
        );
        drop((a, b));
        assert_eq!(lock_file(c.as_fd(), LockMode::Exclusive), Ok(()));
        // Closing another descriptor of the same file keeps the lock (unlike POSIX locks).
        drop(File::open(&path).unwrap());
        let d = opened(&path);
        assert_eq!(
            lock_file(d.as_fd(), LockMode::Shared),
            Err(LockError::Busy {
                held: LockMode::Exclusive
            })
        );
    }
}
