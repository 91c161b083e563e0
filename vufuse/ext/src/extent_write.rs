//! pwrite(2) for an extent-mapped file: whole runs per device call.
//!
//! `ext2fs_file_write` maps and writes one block per call and rewrites the inode as each
//! block joins its extent. Here the holes of the range are allocated first, front to back
//! and as whole runs (the shim's `vx_map_hole`: `ext2fs_new_range`, appended to the extent
//! on the left when physically contiguous, so a file written front to back stays one extent
//! per 128 MiB); then the data goes to the device one physical run per call, a partial first
//! or last block merged with what is on disk (or zeros, for a block new to the file); then
//! the inode (size, mtime, ctime) is written once. Files that are block-mapped, inline, on a
//! bigalloc filesystem or with unwritten extents in the range take the libext2fs file API. A
//! disk that fills mid-request gives a short write and an inode size that covers exactly the
//! blocks mapped.
//!
//! The steps and their order are here; the shim's primitives (`ffi.rs`) do what touches
//! libext2fs's structs: the session that holds the inode and its extent handle
//! (`session.rs`), extent lookups, the allocation of a hole, the mapping of one block, the
//! device write of a run, the inode's update.

use crate::check;
use crate::ffi::{self, ExtFsHandle};
use crate::session::{covers, Session};
use std::ffi::c_int;
use vudev::{Errno, Result};

/// The last logical block an ext4 extent can map (32-bit logical block numbers).
const MAX_LBLK: u64 = 0xffff_ffff;

/// Writes `data` at `offset` of inode `ino`, times `s`.`ns`; the bytes written (fewer than
/// asked: the disk filled up).
pub(crate) fn write(
    fs: *mut ExtFsHandle,
    ino: u32,
    offset: u64,
    data: &[u8],
    s: i64,
    ns: u32,
) -> Result<usize> {
    if data.is_empty() {
        return Ok(0);
    }
    let (session, inode) = Session::begin(fs, ino)?;
    let bs = u64::from(inode.block_size);
    let end = offset.checked_add(data.len() as u64).ok_or(Errno::EFBIG)?;
    if (end - 1) / bs > MAX_LBLK {
        return Err(Errno::EFBIG);
    }
    let (first, last) = (offset / bs, (end - 1) / bs);
    if inode.extents == 0 || inode.bigalloc != 0 || session.has_unwritten(first, last)? {
        drop(session);
        return write_file_api(fs, ino, offset, data);
    }
    let old_size = inode.size;
    // Which edge blocks hold data already (the rest of a new one is zeros).
    let had_first = session.bmap(first) != 0;
    let had_last = session.bmap(last) != 0;
    let (covered, map_err) = session.map_holes(first, last);
    let writable = if covered > last {
        data.len()
    } else {
        (covered * bs).saturating_sub(offset) as usize
    };
    // Now the data, one physical run per device call.
    let mut edge: Vec<u8> = Vec::new();
    let mut put = 0usize;
    let mut result = Ok(());
    while put < writable {
        let pos = offset + put as u64;
        let (lblk, within) = (pos / bs, pos % bs);
        let ext = match session.extent(lblk) {
            Ok(Some(e)) if covers(&e, lblk) => e,
            Ok(_) => {
                result = Err(Errno::EIO);
                break;
            }
            Err(e) => {
                result = Err(e);
                break;
            }
        };
        let pblk = ext.pblk + (lblk - ext.lblk);
        let n =
            (((ext.lblk + u64::from(ext.len) - lblk) * bs - within) as usize).min(writable - put);
        let src = &data[put..];
        // Whole blocks go straight out; a partial first or last block is merged.
        let head = if within != 0 {
            ((bs - within) as usize).min(n)
        } else {
            0
        };
        if head != 0 {
            let had = lblk != first || had_first;
            let keep = had && pos < old_size + bs;
            let within = within as usize;
            let step = merge_edge(fs, &mut edge, bs, pblk, keep, within, &src[..head]);
            if let Err(e) = step {
                result = Err(e);
                break;
            }
            put += head;
            continue;
        }
        let whole = n / bs as usize * bs as usize;
        if whole != 0 {
            if let Err(e) = write_run(fs, pblk, &src[..whole]) {
                result = Err(e);
                break;
            }
            put += whole;
            continue;
        }
        // A partial last block.
        let had = lblk != last || had_last;
        let keep = had && lblk * bs < old_size;
        if let Err(e) = merge_edge(fs, &mut edge, bs, pblk, keep, 0, &src[..n]) {
            result = Err(e);
            break;
        }
        put += n;
    }
    // The inode: size if the file grew (also past a short write), times.
    let grown = offset + put as u64;
    let written = session.end(grown > old_size, grown, s, ns);
    if put == 0 {
        result?;
        written?;
        map_err?;
    }
    Ok(put)
}

/// Writes `part` at byte `within` of block `pblk`, the rest of the block being what is on
/// the device if `keep`, else zeros; `edge` is the one-block buffer for it.
fn merge_edge(
    fs: *mut ExtFsHandle,
    edge: &mut Vec<u8>,
    bs: u64,
    pblk: u64,
    keep: bool,
    within: usize,
    part: &[u8],
) -> Result<()> {
    edge.resize(bs as usize, 0);
    if keep {
        // SAFETY: fs is open; edge is one block.
        check(unsafe { ffi::vx_read_block(fs, pblk, edge.as_mut_ptr().cast()) })?;
    } else {
        edge.fill(0);
    }
    edge[within..within + part.len()].copy_from_slice(part);
    write_run(fs, pblk, edge)
}

/// Whole blocks at physical block `pblk`, straight to the device.
fn write_run(fs: *mut ExtFsHandle, pblk: u64, bytes: &[u8]) -> Result<()> {
    // SAFETY: fs is open; bytes is readable for its length during the call.
    check(unsafe { ffi::vx_write_run(fs, pblk, bytes.as_ptr().cast(), bytes.len()) })
}

/// The libext2fs file API's write, for the files the run path leaves to it.
fn write_file_api(fs: *mut ExtFsHandle, ino: u32, offset: u64, data: &[u8]) -> Result<usize> {
    let mut done = 0usize;
    // SAFETY: fs is open; data is readable for its length; done is a live out-pointer.
    check(unsafe {
        ffi::vx_write_file_api(fs, ino, offset, data.as_ptr().cast(), data.len(), &mut done)
    })?;
    Ok(done)
}

/// The write path's steps of a session: the shim's write session holds the inode as read
/// and its extent handle.
impl Session {
    /// Whether an extent of logical blocks `first..=last` is unwritten (opening the extent
    /// handle the later steps use).
    fn has_unwritten(&self, first: u64, last: u64) -> Result<bool> {
        self.open_extents()?;
        let mut l = first;
        while l <= last {
            match self.extent(l)? {
                None => l += 1,
                Some(ext) if ext.unwritten != 0 => return Ok(true),
                Some(ext) => l = (ext.lblk + u64::from(ext.len)).max(l + 1),
            }
        }
        Ok(false)
    }

    /// Allocates every hole of logical blocks `first..=last`, front to back: the first
    /// block left unmapped (`last + 1` when none) and the error that stopped it.
    fn map_holes(&self, first: u64, last: u64) -> (u64, Result<()>) {
        let mut l = first;
        while l <= last {
            let found = match self.extent(l) {
                Ok(found) => found,
                Err(e) => return (l, Err(e)),
            };
            if let Some(ext) = found.filter(|e| covers(e, l)) {
                l = ext.lblk + u64::from(ext.len);
                continue;
            }
            // A hole from l: up to the next extent or the end of the range.
            let end = self.hole_end(l, found, last + 1);
            let mut got = 0u64;
            // SAFETY: self.wr is live; got is a live out-pointer.
            let mapped = check(unsafe { ffi::vx_wr_map_hole(self.wr, l, end - l, &mut got) });
            if let Err(e) = mapped {
                return (l + got, Err(e));
            }
            l = end;
        }
        (last + 1, Ok(()))
    }

    /// The physical block of logical block `lblk` (0: none).
    fn bmap(&self, lblk: u64) -> u64 {
        // SAFETY: self.wr is live.
        unsafe { ffi::vx_wr_bmap(self.wr, lblk) }
    }

    /// Ends the session, writing the inode: size `size` if `grow`, mtime and ctime.
    fn end(mut self, grow: bool, size: u64, s: i64, ns: u32) -> Result<()> {
        let wr = std::mem::replace(&mut self.wr, std::ptr::null_mut());
        // SAFETY: wr is the live session, ended once here (Drop then sees null).
        check(unsafe { ffi::vx_wr_end(wr, 1, c_int::from(grow), size, s, ns) })
    }
}
