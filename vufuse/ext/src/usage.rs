//! Before a read-write mount: do the bitmaps cover what the inodes use?
//!
//! Nothing in a filesystem marks bitmaps that miss blocks or inodes in use, blocks claimed
//! twice, or a file's block inside an inode table: e2fsck finds them by walking every inode,
//! and a read-write mount would hand such blocks out again. So the mount walks the inodes in
//! use and their block maps once (docs/EXT-ENGINE.md): every inode in use must be marked in
//! the inode bitmap; every block it maps (the bad-block list's too) marked, claimed once and
//! outside every group's bitmaps and inode table; its extended attribute block inside the
//! filesystem and marked. The first that does not add up refuses the mount, naming it and
//! e2fsck.
//!
//! Which inodes, what is checked of each and the messages are here; the shim's primitives
//! (`ffi.rs`) run the inode scan, walk an inode's blocks against the bitmaps (the per-block
//! tests stay in C, next to libext2fs's bitmaps) and test a block.

use crate::ffi::{self, ExtFsHandle, VxUsageInode, VxUsageScan};
use std::ffi::c_char;
use vudev::Errno;

/// The bad-block list's inode: its blocks are mapped like a file's, without a file type.
const BAD_INO: u32 = 1;

/// What the shim says of an offending block, by its `why`.
const WHY: [&str; 6] = [
    "",
    "is marked free in the block bitmap",
    "is claimed by another inode too",
    "lies in a group's bitmaps or inode table",
    "lies outside the filesystem",
    "could not be checked (out of memory)",
];

const FIX: &str = "mount read-only, or run e2fsck -fy IMAGE";

/// Ok, or the errno and the message that refuse the read-write mount.
pub(crate) fn check(fs: *mut ExtFsHandle) -> Result<(), (Errno, String)> {
    let scan = Scan::begin(fs)?;
    loop {
        let inode = scan.next()?;
        if inode.ino == 0 {
            return Ok(());
        }
        let ino = inode.ino;
        let in_use = inode.links != 0 && inode.dtime == 0;
        let reserved = inode.reserved != 0;
        // Free inodes are skipped, but for reserved ones that map blocks (the bad-block
        // list, the resize inode).
        let checked = in_use || (reserved && inode.block0 != 0);
        if !checked {
            continue;
        }
        if in_use && !reserved && inode.marked == 0 {
            return Err((
                Errno::EUCLEAN,
                format!("inode {ino} is in use but its bitmap marks it free: {FIX}"),
            ));
        }
        let mapped = if ino == BAD_INO {
            inode.block0 != 0
        } else {
            inode.has_blocks != 0
        };
        let (mut why, mut bad) = (0usize, 0u64);
        if mapped && inode.inline_data == 0 {
            (why, bad) = scan.walk(ino)?;
        }
        if why == 0 && inode.acl != 0 {
            // SAFETY: fs is open.
            match unsafe { ffi::vx_block_state(fs, inode.acl) } {
                0 => (why, bad) = (4, inode.acl),
                1 => (why, bad) = (1, inode.acl),
                _ => {}
            }
        }
        if why != 0 {
            let what = WHY.get(why).copied().unwrap_or("does not add up");
            let message = if ino == BAD_INO {
                format!("bad block {bad} {what}: {FIX}")
            } else {
                format!("block {bad} of inode {ino} {what}: {FIX}")
            };
            return Err((Errno::EUCLEAN, message));
        }
    }
}

/// The shim's scan: the bitmaps it fills and the inode scan; ended on drop.
struct Scan {
    s: *mut VxUsageScan,
}

/// A message buffer's text.
fn text(msg: &[u8]) -> String {
    let end = msg.iter().position(|&b| b == 0).unwrap_or(msg.len());
    String::from_utf8_lossy(&msg[..end]).into_owned()
}

impl Scan {
    fn begin(fs: *mut ExtFsHandle) -> Result<Scan, (Errno, String)> {
        let mut s = std::ptr::null_mut();
        let mut msg = [0u8; 256];
        // SAFETY: fs is open; s and msg are live for the call.
        let code = unsafe {
            ffi::vx_usage_begin(fs, &mut s, msg.as_mut_ptr().cast::<c_char>(), msg.len())
        };
        let scan = Scan { s };
        if code != 0 {
            return Err((Errno::from_raw(code), text(&msg)));
        }
        Ok(scan)
    }

    /// The next inode (`ino` 0: none left).
    fn next(&self) -> Result<VxUsageInode, (Errno, String)> {
        let mut inode = VxUsageInode::default();
        let mut msg = [0u8; 256];
        // SAFETY: self.s is the live scan; inode and msg are live for the call.
        let code = unsafe {
            ffi::vx_usage_next(
                self.s,
                &mut inode,
                msg.as_mut_ptr().cast::<c_char>(),
                msg.len(),
            )
        };
        if code != 0 {
            return Err((Errno::from_raw(code), text(&msg)));
        }
        Ok(inode)
    }

    /// Walks inode `ino`'s blocks: the first offending one's `why` and number (why 0: none).
    fn walk(&self, ino: u32) -> Result<(usize, u64), (Errno, String)> {
        let (mut why, mut bad) = (0i32, 0u64);
        let mut msg = [0u8; 256];
        // SAFETY: self.s is the live scan at inode ino; the out-pointers are live.
        let code = unsafe {
            ffi::vx_usage_walk(
                self.s,
                ino,
                &mut why,
                &mut bad,
                msg.as_mut_ptr().cast::<c_char>(),
                msg.len(),
            )
        };
        if code != 0 {
            let cause = text(&msg);
            return Err((
                Errno::EUCLEAN,
                format!("inode {ino} has an unreadable block map ({cause}): {FIX}"),
            ));
        }
        Ok((usize::try_from(why).unwrap_or(0), bad))
    }
}

impl Drop for Scan {
    fn drop(&mut self) {
        // SAFETY: self.s is the scan from vx_usage_begin (or null), ended once here.
        unsafe { ffi::vx_usage_end(self.s) };
    }
}
