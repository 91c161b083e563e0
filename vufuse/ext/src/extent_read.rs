//! pread(2) for an extent-mapped file: whole runs per device call.
//!
//! `ext2fs_file_read` maps and reads one block per call. Here the request, clamped to the
//! file's size, is walked one extent at a time: a hole (up to the next extent) or an
//! unwritten extent reads as zeros without the device; a written extent's blocks come in
//! one device read, straight into the caller's buffer when the run is whole blocks, else
//! through a buffer of the blocks it touches. When the reader is sequential (`ahead` > 0)
//! the device is asked, after the last run, to prefetch the rest of that extent up to
//! `ahead` bytes. Block-mapped (ext2/3) and inline files take the libext2fs file API.
//!
//! The steps are here; the shim's primitives (`ffi.rs`) do what touches libext2fs's
//! structs: the session holding the inode and its extent handle (`session.rs`), extent
//! lookups, where a hole ends, the device read of a run, the prefetch, the file API's read.

use crate::check;
use crate::ffi::{self, ExtFsHandle};
use crate::session::{covers, Session};
use vudev::Result;

/// Reads from byte `offset` of inode `ino` into `buf`: the bytes read (fewer than asked at
/// the end of the file, none past it). `ahead` > 0: the reader is sequential; prefetch up
/// to that many bytes past the read.
pub(crate) fn read(
    fs: *mut ExtFsHandle,
    ino: u32,
    offset: u64,
    buf: &mut [u8],
    ahead: u64,
) -> Result<usize> {
    let (session, inode) = Session::begin(fs, ino)?;
    if offset >= inode.size || buf.is_empty() {
        return Ok(0);
    }
    let len = buf
        .len()
        .min(usize::try_from(inode.size - offset).unwrap_or(usize::MAX));
    let buf = &mut buf[..len];
    if inode.extents == 0 {
        return session.read_file_api(offset, buf);
    }
    session.open_extents()?;
    let bs = u64::from(inode.block_size);
    // One past the last logical block of the request: where a hole's zeros stop.
    let limit = (offset + len as u64 - 1) / bs + 1;
    let mut edge: Vec<u8> = Vec::new();
    let mut done = 0usize;
    while done < len {
        let pos = offset + done as u64;
        let (lblk, within) = (pos / bs, pos % bs);
        let want = len - done;
        let found = session.extent(lblk)?;
        let Some(ext) = found.filter(|e| covers(e, lblk)) else {
            // A hole: zeros up to the next extent or the end of the request.
            let end = session.hole_end(lblk, found, limit);
            let n = span_bytes(end - lblk, bs, within, want);
            buf[done..done + n].fill(0);
            done += n;
            continue;
        };
        let n = span_bytes(ext.lblk + u64::from(ext.len) - lblk, bs, within, want);
        if ext.unwritten != 0 {
            // Allocated, never written: zeros too.
            buf[done..done + n].fill(0);
            done += n;
            continue;
        }
        let pblk = ext.pblk + (lblk - ext.lblk);
        let out = &mut buf[done..done + n];
        if within == 0 && n as u64 % bs == 0 {
            read_run(fs, pblk, out)?;
        } else {
            // A run that starts or ends inside a block: its whole blocks, then the part.
            let blocks = (within + n as u64).div_ceil(bs);
            edge.resize((blocks * bs) as usize, 0);
            read_run(fs, pblk, &mut edge)?;
            out.copy_from_slice(&edge[within as usize..within as usize + n]);
        }
        done += n;
        if ahead != 0 && done == len {
            // The rest of this extent, up to `ahead` bytes past what was read.
            let read_end = pblk * bs + within + n as u64;
            let extent_end = (ext.pblk + u64::from(ext.len)) * bs;
            let until = read_end.saturating_add(ahead).min(extent_end);
            if until > read_end {
                // SAFETY: fs is open.
                unsafe { ffi::vx_prefetch(fs, read_end, until - read_end) };
            }
        }
    }
    Ok(done)
}

/// The bytes from byte `within` of the first of `blocks` blocks to their end, at most `want`.
fn span_bytes(blocks: u64, bs: u64, within: u64, want: usize) -> usize {
    usize::try_from(blocks * bs - within).map_or(want, |n| n.min(want))
}

/// Whole blocks at physical block `pblk`, from the device in one call.
fn read_run(fs: *mut ExtFsHandle, pblk: u64, out: &mut [u8]) -> Result<()> {
    // SAFETY: fs is open; out is writable for its length during the call.
    check(unsafe { ffi::vx_read_run(fs, pblk, out.as_mut_ptr().cast(), out.len()) })
}

/// The read path's step of a session: the file API, for the files not extent-mapped.
impl Session {
    /// Reads `buf.len()` bytes (within the size) from byte `offset` with the file API.
    fn read_file_api(&self, offset: u64, buf: &mut [u8]) -> Result<usize> {
        let mut got = 0usize;
        // SAFETY: self.wr is the live session; buf is writable for its length; got is a
        // live out-pointer.
        check(unsafe {
            ffi::vx_wr_read_file_api(
                self.wr,
                offset,
                buf.as_mut_ptr().cast(),
                buf.len(),
                &mut got,
            )
        })?;
        Ok(got)
    }
}
