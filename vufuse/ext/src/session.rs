//! The shim's inode session, shared by the data paths (`extent_read.rs`, `extent_write.rs`):
//! an inode as read, and its extent handle once opened. The paths' own steps are `impl
//! Session` blocks in their modules; here are the ones both use.

use crate::check;
use crate::ffi::{self, ExtFsHandle, VxExtent, VxWr, VxWrInode};
use std::ffi::c_int;
use vudev::Result;

/// A session of the shim (`struct vx_wr`); ended (freed) on drop, or by the write path's
/// `Session::end`, which also writes the inode.
pub(crate) struct Session {
    pub(crate) wr: *mut VxWr,
}

impl Session {
    /// Reads inode `ino`.
    pub(crate) fn begin(fs: *mut ExtFsHandle, ino: u32) -> Result<(Session, VxWrInode)> {
        let mut wr = std::ptr::null_mut();
        let mut inode = VxWrInode::default();
        // SAFETY: fs is open; both out-pointers are live.
        check(unsafe { ffi::vx_wr_begin(fs, ino, &mut wr, &mut inode) })?;
        Ok((Session { wr }, inode))
    }

    /// Opens the extent handle (an extent-mapped, not inline, inode only).
    pub(crate) fn open_extents(&self) -> Result<()> {
        // SAFETY: self.wr is the live session; the caller checked the inode's mapping.
        check(unsafe { ffi::vx_wr_open_extents(self.wr) })
    }

    /// The extent that holds, or is nearest before, logical block `lblk`; None when the
    /// lookup finds none.
    pub(crate) fn extent(&self, lblk: u64) -> Result<Option<VxExtent>> {
        let (mut ext, mut found) = (VxExtent::default(), 0 as c_int);
        // SAFETY: self.wr is live with its extent handle open; both out-pointers are live.
        check(unsafe { ffi::vx_wr_extent(self.wr, lblk, &mut ext, &mut found) })?;
        Ok((found != 0).then_some(ext))
    }

    /// Where the hole at `l` ends (the next extent's first block, or `limit`), right after
    /// `extent(l)` gave `found`, which does not cover `l`.
    pub(crate) fn hole_end(&self, l: u64, found: Option<VxExtent>, limit: u64) -> u64 {
        // SAFETY: self.wr is live, its handle just positioned by self.extent(l).
        unsafe { ffi::vx_wr_hole_end(self.wr, l, c_int::from(found.is_none()), limit) }
    }
}

/// Whether `ext` maps logical block `lblk`.
pub(crate) fn covers(ext: &VxExtent, lblk: u64) -> bool {
    lblk >= ext.lblk && lblk < ext.lblk + u64::from(ext.len)
}

impl Drop for Session {
    fn drop(&mut self) {
        if !self.wr.is_null() {
            // SAFETY: self.wr is the live session, ended once here without an update.
            unsafe { ffi::vx_wr_end(self.wr, 0, 0, 0, 0, 0) };
        }
    }
}
