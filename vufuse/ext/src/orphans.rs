//! The orphan list: inodes unlinked while open.
//!
//! As the kernel does, an inode whose last name goes while it is open is chained from the
//! superblock's `s_last_orphan` through its `i_dtime` until its last close frees it, so a
//! crash in between leaves e2fsck -p an orphan to release rather than an unattached inode
//! to ask about. A read-write mount finishes what a crash interrupted ([`release`]): an
//! inode of the list with no link left is freed, any other (a truncate the crash cut
//! short) loses its blocks past its size and leaves the list. A chain that points outside
//! the inode table, or longer than the inode count (a cycle), is dropped: e2fsck's to sort
//! out.
//!
//! The walk and what is done to each inode are here; the shim's primitives (`ffi.rs`) read
//! and set the list's head and an inode's link count and next pointer, free an inode and
//! drop the blocks past an inode's size.

use crate::check;
use crate::ffi::{self, ExtFsHandle, VxOrphanShape};
use vudev::Result;

/// The list's head and the inode numbers' bounds.
fn shape(fs: *mut ExtFsHandle) -> VxOrphanShape {
    let mut shape = VxOrphanShape::default();
    // SAFETY: fs is open; shape is a live out-pointer.
    unsafe { ffi::vx_orphan_shape(fs, &mut shape) };
    shape
}

/// Makes `ino` the list's head (0: the list is empty).
fn set_head(fs: *mut ExtFsHandle, ino: u32) {
    // SAFETY: fs is open.
    unsafe { ffi::vx_set_orphan_head(fs, ino) };
}

/// Inode `ino`'s link count and next orphan.
fn node(fs: *mut ExtFsHandle, ino: u32) -> Result<(u32, u32)> {
    let (mut links, mut next) = (0u32, 0u32);
    // SAFETY: fs is open; both out-pointers are live.
    check(unsafe { ffi::vx_orphan_node(fs, ino, &mut links, &mut next) })?;
    Ok((links, next))
}

/// Sets inode `ino`'s next orphan.
fn set_next(fs: *mut ExtFsHandle, ino: u32, next: u32) -> Result<()> {
    // SAFETY: fs is open.
    check(unsafe { ffi::vx_set_orphan_next(fs, ino, next) })
}

/// Chains inode `ino`, whose last link is gone while it is open, at the list's head.
pub(crate) fn add(fs: *mut ExtFsHandle, ino: u32) -> Result<()> {
    set_next(fs, ino, shape(fs).head)?;
    set_head(fs, ino);
    Ok(())
}

/// Unchains inode `ino` from the list if it is there.
fn remove(fs: *mut ExtFsHandle, ino: u32) -> Result<()> {
    let shape = shape(fs);
    let (mut prev, mut cur) = (0u32, shape.head);
    let mut steps = 0u32;
    while cur != 0 && steps <= shape.inodes_count {
        if cur > shape.inodes_count {
            return Ok(()); // a corrupt chain: left to e2fsck
        }
        let (_, next) = node(fs, cur)?;
        if cur == ino {
            if prev == 0 {
                set_head(fs, next);
                return Ok(());
            }
            return set_next(fs, prev, next);
        }
        prev = cur;
        cur = next;
        steps += 1;
    }
    Ok(())
}

/// Frees inode `ino` if its last link is gone (unchained from the list first).
pub(crate) fn free_inode(fs: *mut ExtFsHandle, ino: u32) -> Result<()> {
    if node(fs, ino)?.0 > 0 {
        return Ok(());
    }
    remove(fs, ino)?;
    // SAFETY: fs is open; ino has no link left and is off the list.
    check(unsafe { ffi::vx_free_inode(fs, ino) })
}

/// Finishes what a crash interrupted, as the kernel does at mount: frees the inodes of the
/// list that have no name left and unchains the others, without their blocks past the size.
pub(crate) fn release(fs: *mut ExtFsHandle) -> Result<()> {
    let mut steps = 0u32;
    loop {
        let shape = shape(fs);
        let ino = shape.head;
        if ino == 0 || steps > shape.inodes_count {
            break;
        }
        if ino < shape.first_ino || ino > shape.inodes_count {
            break;
        }
        if node(fs, ino)?.0 == 0 {
            free_inode(fs, ino)?;
        } else {
            // A truncate the crash cut short: the blocks past the end go.
            remove(fs, ino)?;
            // SAFETY: fs is open read-write; ino has links and is off the list.
            check(unsafe { ffi::vx_settle_orphan(fs, ino) })?;
        }
        steps += 1;
    }
    set_head(fs, 0); // processed, or a cycle: dropped
    Ok(())
}
