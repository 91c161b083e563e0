//! The metadata write-back after every change, in a crash-safe order.
//!
//! libext2fs keeps bitmaps, group descriptors and the superblock in memory and writes them
//! at ext2fs_flush/close. A daemon killed (or an image read) between the change and the
//! close would see blocks in use that the bitmaps call free. [`WriteOrder::sync`] writes,
//! after each modifying operation, the bitmaps and descriptor blocks of the groups that
//! changed since the last call and the primary superblock, the way ext2fs_write_bitmaps and
//! ext2fs_flush lay them out; backups are left to the full flush at close.
//!
//! There is no journal, so the order of the writes is what keeps a kill -9 harmless. The
//! device's cache holds every block the operation wrote (`vudev::CachedDevice` writes none
//! early) and `sync` lets them out in three phases, as soft updates order them: a kill
//! between any two device writes leaves at worst a leak (marked in use, referenced by
//! nothing), which e2fsck -p repairs without loss, or one of the preen-fixable states named
//! below.
//!
//! 1. Allocations: the bitmaps of the groups where the operation took blocks or inodes,
//!    written as old | new (what it took is marked, what it freed still is), with the
//!    descriptors and the superblock.
//! 2. References: the blocks the operation newly allocated (a directory's new block, extent
//!    nodes) first; then, for an operation that adds names (create, mkdir, link, symlink,
//!    write), the rest (the directory blocks whose entries changed) before the inode
//!    tables; for one that removes them (unlink, rmdir, rename, truncate), the inode tables
//!    first. Either way an entry and its inode are two writes and the state between them is
//!    one e2fsck -p repairs on its own: an entry naming an unused inode (cleared), or a link
//!    count off by one (fixed); the other order would leave an unattached inode, which -p
//!    does not.
//! 3. Releases: the final bitmaps of the groups where it freed something, the descriptors
//!    and the superblock.
//!
//! Left: a rename between two directory blocks is two writes that a kill can split, old
//! entry gone first when its block comes first (e2fsck then finds the inode unattached and
//! offers lost+found; the data is kept).
//!
//! The policy is here: which groups changed (the marks libext2fs's allocation callbacks
//! leave in the shim, or a descriptor that differs from its snapshot), which bitmap of a
//! group to write and how (old | new, or final), the phases and their order, the snapshots
//! of descriptors, counts and superblock. The shim's primitives (`ffi.rs`) do what touches
//! libext2fs's structs: the marks, a group's counts, descriptor and bitmap image, and the
//! writes of a bitmap (with its checksums), a descriptor block and the superblock.

use crate::check;
use crate::ffi::{self, ExtFsHandle, VxGroupCounts, VxMetaShape};
use std::ffi::c_int;
use std::ffi::c_void;
use vudev::Result;

/// The shim's bitmap kinds, also the bits of [`WriteOrder::freed`].
const BLOCK_BITMAP: u8 = 1;
const INODE_BITMAP: u8 = 2;

/// bg_flags: the group's inode or block bitmap is not initialised on disk (counts only with
/// group descriptor checksums).
const BG_INODE_UNINIT: u16 = 0x0001;
const BG_BLOCK_UNINIT: u16 = 0x0002;

/// Where the primary superblock lies, in bytes, whatever the block size.
const SUPERBLOCK_OFFSET: u64 = 1024;
const SUPERBLOCK_SIZE: usize = 1024;

/// Which dirty blocks of the device's cache a write-back lets out (`struct vx_dev`).
const WB_ALL: c_int = 0;
const WB_WITHIN: c_int = 1;
const WB_OUTSIDE: c_int = 2;

/// Which of the three phases a bitmap is written for (2 writes no bitmap).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Phase {
    Allocations,
    Releases,
}

/// Byte ranges of blocks (start, end pairs), as the device's write-back takes them.
#[derive(Default)]
struct Ranges {
    pairs: Vec<u64>,
}

impl Ranges {
    /// Adds `count` blocks from `block`, merged with the last range when they touch.
    fn add(&mut self, block_size: u64, block: u64, count: u64) {
        let (start, end) = (block * block_size, (block + count) * block_size);
        match self.pairs.last_mut() {
            Some(last) if *last == start => *last = end,
            _ => self.pairs.extend([start, end]),
        }
    }

    /// Lets out the dirty blocks of the cache that overlap (`WB_WITHIN`) or miss
    /// (`WB_OUTSIDE`) these ranges, or all of them (`WB_ALL`).
    fn write_back(&self, fs: *mut ExtFsHandle, which: c_int) -> Result<()> {
        let n = self.pairs.len() / 2;
        // SAFETY: fs is the open filesystem; pairs holds 2 * n u64 for the call.
        check(unsafe { ffi::vx_write_back(fs, self.pairs.as_ptr(), n, which) })
    }
}

/// The write order's state for one read-write mount: what was last written of every group's
/// descriptor and of the superblock, and the marks of the current sync.
pub(crate) struct WriteOrder {
    shape: VxMetaShape,
    /// Per group: block (de)allocation seen (the shim's marks, taken at each sync).
    dirty: Vec<u8>,
    /// Per group: inode (de)allocation seen.
    ino_dirty: Vec<u8>,
    /// Per group: [`BLOCK_BITMAP`], [`INODE_BITMAP`] freed something (for phase 3).
    freed: Vec<u8>,
    /// Per group: its bitmaps or descriptor written by this sync.
    changed: Vec<bool>,
    /// Per group, the counts its bitmaps are known by, as last written.
    counts: Vec<VxGroupCounts>,
    /// The descriptors as last written, `desc_size` bytes per group.
    desc_snapshot: Vec<u8>,
    /// Per descriptor block: to be written by this sync.
    desc_dirty: Vec<bool>,
    /// The superblock as last written.
    super_snapshot: Vec<u8>,
    /// Every group's inode table.
    itables: Ranges,
    /// Allocation metadata written in the current phase.
    wrote: Ranges,
    /// Scratch: the blocks newly allocated since the last sync (room for `fresh_max`).
    fresh: Vec<u64>,
    /// Scratch, one block each: a bitmap image, and that bitmap as the device holds it.
    buf: Vec<u8>,
    old: Vec<u8>,
    /// Scratch: one descriptor, and the superblock, as they are in memory.
    desc: Vec<u8>,
    super_now: Vec<u8>,
}

impl WriteOrder {
    /// Takes the snapshots the first sync compares with: the filesystem `fs` as just
    /// opened read-write.
    pub(crate) fn new(fs: *mut ExtFsHandle) -> Result<WriteOrder> {
        let mut shape = VxMetaShape::default();
        // SAFETY: fs is the open filesystem; shape is a live struct the shim fills.
        check(unsafe { ffi::vx_meta_shape(fs, &mut shape) })?;
        let groups = shape.groups as usize;
        let (bs, ds) = (shape.block_size as usize, shape.desc_size as usize);
        let mut order = WriteOrder {
            dirty: vec![0; groups],
            ino_dirty: vec![0; groups],
            freed: vec![0; groups],
            changed: vec![false; groups],
            counts: vec![VxGroupCounts::default(); groups],
            desc_snapshot: vec![0; groups * ds],
            desc_dirty: vec![false; shape.desc_blocks as usize + 1],
            super_snapshot: vec![0; SUPERBLOCK_SIZE],
            itables: Ranges::default(),
            wrote: Ranges::default(),
            fresh: vec![0; shape.fresh_max as usize],
            buf: vec![0; bs],
            old: vec![0; bs],
            desc: vec![0; ds],
            super_now: vec![0; SUPERBLOCK_SIZE],
            shape,
        };
        for g in 0..groups {
            group_desc(fs, g, &mut order.desc_snapshot[g * ds..(g + 1) * ds]);
            order.counts[g] = group_counts(fs, g);
            // SAFETY: fs is open; g is one of its groups.
            let itable = unsafe { ffi::vx_inode_table(fs, g as u32) };
            if itable != 0 {
                let per_group = u64::from(order.shape.inode_blocks_per_group);
                order.itables.add(bs as u64, itable, per_group);
            }
        }
        super_bytes(fs, &mut order.super_snapshot);
        Ok(order)
    }

    /// Writes what an operation changed, in the three phases above; `removes` says which
    /// way its names went (unlink, rmdir, rename, truncate: true). Cheap when nothing
    /// changed (a comparison of the descriptors and the superblock with their snapshots).
    pub(crate) fn sync(&mut self, fs: *mut ExtFsHandle, removes: bool) -> Result<()> {
        let fresh = self.take_marks(fs);
        self.phases(fs, removes, &fresh)?;
        let ds = self.shape.desc_size as usize;
        for g in 0..self.shape.groups as usize {
            if self.changed[g] {
                group_desc(fs, g, &mut self.desc_snapshot[g * ds..(g + 1) * ds]);
            }
        }
        self.desc_dirty.fill(false);
        super_bytes(fs, &mut self.super_snapshot);
        Ok(())
    }

    /// Adds the groups the shim marked since the last sync to `dirty` and `ino_dirty`, and
    /// returns the blocks it saw allocated one at a time (cleared there).
    fn take_marks(&mut self, fs: *mut ExtFsHandle) -> Ranges {
        // SAFETY: fs is open; dirty and ino_dirty hold one byte per group, fresh room for
        // the shim's fresh_max blocks.
        let n = unsafe {
            ffi::vx_take_marks(
                fs,
                self.dirty.as_mut_ptr(),
                self.ino_dirty.as_mut_ptr(),
                self.fresh.as_mut_ptr(),
            )
        };
        let bs = u64::from(self.shape.block_size);
        Ranges {
            pairs: self.fresh[..n]
                .iter()
                .flat_map(|&b| [b * bs, (b + 1) * bs])
                .collect(),
        }
    }

    /// The three phases, each device write-back in the order the crash-safety argument
    /// needs.
    fn phases(&mut self, fs: *mut ExtFsHandle, removes: bool, fresh: &Ranges) -> Result<()> {
        let deferred = self.sync_allocations(fs)?;
        fresh.write_back(fs, WB_WITHIN)?;
        // Adds: entries, then inodes; removes: inodes, then entries.
        let (first, then) = if removes {
            (WB_WITHIN, WB_OUTSIDE)
        } else {
            (WB_OUTSIDE, WB_WITHIN)
        };
        self.itables.write_back(fs, first)?;
        self.itables.write_back(fs, then)?;
        self.sync_releases(fs, deferred)
    }

    /// Phase 1: marks what the operation allocated. Returns whether descriptors and
    /// superblock changed but were left for phase 3 (the operation only freed).
    fn sync_allocations(&mut self, fs: *mut ExtFsHandle) -> Result<bool> {
        let ds = self.shape.desc_size as usize;
        let per_block = self.shape.desc_per_block as usize;
        let csum = self.shape.group_desc_csum != 0;
        let mut any = false;
        self.wrote.pairs.clear();
        for g in 0..self.shape.groups as usize {
            self.changed[g] = false;
            self.freed[g] = 0;
            group_desc(fs, g, &mut self.desc);
            if self.dirty[g] == 0
                && self.ino_dirty[g] == 0
                && self.desc_snapshot[g * ds..(g + 1) * ds] == self.desc[..]
            {
                continue;
            }
            // Only the bitmap that changed: block (de)allocation is reported by libext2fs's
            // callbacks, inode (de)allocation by the shim's vx_inode_alloc_stats; a changed
            // free count or flag catches library calls that allocate inside (ext2fs_mkdir,
            // ext2fs_symlink).
            let (now, was) = (group_counts(fs, g), self.counts[g]);
            let flags_changed = now.flags != was.flags;
            let blocks = self.dirty[g] != 0 || now.free_blocks != was.free_blocks || flags_changed;
            let inodes = self.ino_dirty[g] != 0
                || now.free_inodes != was.free_inodes
                || now.itable_unused != was.itable_unused
                || flags_changed;
            if blocks {
                let was_uninit = csum && was.flags & BG_BLOCK_UNINIT != 0;
                self.write_bitmap(fs, g, BLOCK_BITMAP, Phase::Allocations, was_uninit)?;
            }
            if inodes {
                let was_uninit = csum && was.flags & BG_INODE_UNINIT != 0;
                self.write_bitmap(fs, g, INODE_BITMAP, Phase::Allocations, was_uninit)?;
            }
            self.dirty[g] = 0;
            self.ino_dirty[g] = 0;
            self.changed[g] = true;
            self.counts[g] = now;
            self.desc_dirty[g / per_block] = true;
            any = true;
        }
        super_bytes(fs, &mut self.super_now);
        let super_changed = self.super_now != self.super_snapshot;
        if !any && !super_changed {
            return Ok(false);
        }
        if self.wrote.pairs.is_empty() {
            return Ok(true); // nothing taken: descriptors and counts go with the releases
        }
        self.write_descriptors(fs)?;
        self.wrote.write_back(fs, WB_WITHIN)?;
        Ok(false)
    }

    /// Phase 3: releases what the operation freed, then lets every remaining block out.
    fn sync_releases(&mut self, fs: *mut ExtFsHandle, deferred: bool) -> Result<()> {
        let mut any = deferred;
        self.wrote.pairs.clear();
        for g in 0..self.shape.groups as usize {
            let freed = self.freed[g];
            if freed == 0 {
                continue;
            }
            if freed & BLOCK_BITMAP != 0 {
                self.write_bitmap(fs, g, BLOCK_BITMAP, Phase::Releases, false)?;
            }
            if freed & INODE_BITMAP != 0 {
                self.write_bitmap(fs, g, INODE_BITMAP, Phase::Releases, false)?;
            }
            self.freed[g] = 0;
            any = true;
        }
        if any {
            self.write_descriptors(fs)?;
        }
        Ranges::default().write_back(fs, WB_ALL)
    }

    /// Writes bitmap `kind` of group `g` for `phase`. Phase 1 compares with the device's
    /// copy (taken as empty while the group was uninitialised, `was_uninit`): if the
    /// operation set bits there it writes old | new; if it cleared bits it notes the group
    /// for phase 3, which writes the bitmap as it is in memory.
    fn write_bitmap(
        &mut self,
        fs: *mut ExtFsHandle,
        g: usize,
        kind: u8,
        phase: Phase,
        was_uninit: bool,
    ) -> Result<()> {
        let (mut nbytes, mut at) = (0usize, 0u64);
        // SAFETY: fs is open; buf is one block, the image's size; the outputs are live.
        check(unsafe {
            ffi::vx_bitmap_image(
                fs,
                g as u32,
                c_int::from(kind),
                self.buf.as_mut_ptr().cast::<c_void>(),
                &mut nbytes,
                &mut at,
            )
        })?;
        if at == 0 {
            return Ok(());
        }
        if phase == Phase::Allocations {
            if was_uninit {
                self.old.fill(0);
            } else {
                // SAFETY: fs is open; old is one block.
                check(unsafe { ffi::vx_read_block(fs, at, self.old.as_mut_ptr().cast()) })?;
            }
            let (now, was) = (&mut self.buf[..nbytes], &self.old[..nbytes]);
            let set = now.iter().zip(was).any(|(&n, &w)| n & !w != 0);
            let cleared = now.iter().zip(was).any(|(&n, &w)| w & !n != 0);
            if cleared {
                self.freed[g] |= kind;
                now.iter_mut().zip(was).for_each(|(n, &w)| *n |= w);
            }
            if !set {
                return Ok(());
            }
        }
        // SAFETY: fs is open; buf is the block image filled above, nbytes of it meaningful.
        check(unsafe {
            ffi::vx_write_bitmap(
                fs,
                g as u32,
                c_int::from(kind),
                self.buf.as_mut_ptr().cast::<c_void>(),
                nbytes,
                at,
            )
        })?;
        self.wrote.add(u64::from(self.shape.block_size), at, 1);
        Ok(())
    }

    /// The descriptor blocks of the groups written this sync, and the primary superblock.
    fn write_descriptors(&mut self, fs: *mut ExtFsHandle) -> Result<()> {
        let bs = u64::from(self.shape.block_size);
        for i in 0..self.shape.desc_blocks {
            if !self.desc_dirty[i as usize] {
                continue;
            }
            let mut at = 0u64;
            // SAFETY: fs is open; i is one of its descriptor blocks; at is live.
            check(unsafe { ffi::vx_write_desc_block(fs, i, &mut at) })?;
            self.wrote.add(bs, at, 1);
        }
        // SAFETY: fs is open.
        check(unsafe { ffi::vx_write_super(fs) })?;
        let end = SUPERBLOCK_OFFSET + SUPERBLOCK_SIZE as u64;
        let (first, last) = (SUPERBLOCK_OFFSET / bs, (end - 1) / bs);
        self.wrote.add(bs, first, last - first + 1);
        Ok(())
    }
}

/// Group `g`'s counts as they are in memory.
fn group_counts(fs: *mut ExtFsHandle, g: usize) -> VxGroupCounts {
    let mut counts = VxGroupCounts::default();
    // SAFETY: fs is open; g is one of its groups; counts is live.
    unsafe { ffi::vx_group_counts(fs, g as u32, &mut counts) };
    counts
}

/// Group `g`'s descriptor as it is in memory, into `out` (desc_size bytes).
fn group_desc(fs: *mut ExtFsHandle, g: usize, out: &mut [u8]) {
    // SAFETY: fs is open; g is one of its groups; out holds the desc_size bytes written.
    unsafe { ffi::vx_group_desc(fs, g as u32, out.as_mut_ptr().cast()) }
}

/// The superblock as it is in memory, into `out` (SUPERBLOCK_SIZE bytes).
fn super_bytes(fs: *mut ExtFsHandle, out: &mut [u8]) {
    debug_assert_eq!(out.len(), SUPERBLOCK_SIZE);
    // SAFETY: fs is open; out holds the SUPERBLOCK_SIZE bytes written.
    unsafe { ffi::vx_super_bytes(fs, out.as_mut_ptr().cast()) }
}
