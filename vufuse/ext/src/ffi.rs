//! The C shim's flat API (`shim.c`): the structs it fills and the functions it exports, as
//! Rust sees them. Declarations only; every call site in the driver carries its SAFETY note.

use std::ffi::{c_char, c_int, c_long, c_void};

/// Opaque libext2fs handles.
#[repr(C)]
pub(crate) struct ExtFsHandle {
    pub(crate) _private: [u8; 0],
}

/// The device as the shim sees it (mirrors `struct vx_dev`).
#[repr(C)]
pub(crate) struct VxDev {
    pub(crate) ctx: *mut c_void,
    pub(crate) size: u64,
    pub(crate) read_only: c_int,
    pub(crate) read: extern "C" fn(*mut c_void, u64, *mut c_void, usize) -> c_int,
    pub(crate) write: extern "C" fn(*mut c_void, u64, *const c_void, usize) -> c_int,
    pub(crate) flush: extern "C" fn(*mut c_void) -> c_int,
    pub(crate) prefetch: extern "C" fn(*mut c_void, u64, u64),
    /// Writes blocks the cache holds dirty: all of them (`which` 0), or those that overlap
    /// (1) or miss (2) the `n` byte ranges given as start, end pairs.
    pub(crate) write_back: extern "C" fn(*mut c_void, *const u64, usize, c_int) -> c_int,
    /// The filesystem's block size, the unit the cache keeps.
    pub(crate) set_block_size: extern "C" fn(*mut c_void, u32) -> c_int,
    /// The htree builder (`htree::vx_make_indexed`), called by the shim when a one-block
    /// directory is full.
    pub(crate) make_indexed: unsafe extern "C" fn(*mut ExtFsHandle, u32, *mut c_int) -> c_long,
}

/// Mirrors `struct vx_stat`.
#[repr(C)]
#[derive(Default)]
pub(crate) struct VxStat {
    pub(crate) ino: u64,
    pub(crate) size: u64,
    pub(crate) blocks: u64,
    pub(crate) mode: u32,
    pub(crate) nlink: u32,
    pub(crate) uid: u32,
    pub(crate) gid: u32,
    pub(crate) rdev: u32,
    pub(crate) generation: u32,
    pub(crate) atime: i64,
    pub(crate) mtime: i64,
    pub(crate) ctime: i64,
    pub(crate) crtime: i64,
    pub(crate) atime_ns: u32,
    pub(crate) mtime_ns: u32,
    pub(crate) ctime_ns: u32,
    pub(crate) crtime_ns: u32,
}

/// Mirrors `struct vx_statfs`.
#[repr(C)]
#[derive(Default)]
pub(crate) struct VxStatFs {
    pub(crate) blocks: u64,
    pub(crate) blocks_free: u64,
    pub(crate) blocks_avail: u64,
    pub(crate) files: u64,
    pub(crate) files_free: u64,
    pub(crate) block_size: u32,
    pub(crate) name_max: u32,
}

pub(crate) type DirentCb = extern "C" fn(*mut c_void, u32, c_int, *const c_char, usize) -> c_int;
pub(crate) type XattrCb = extern "C" fn(*mut c_void, *const c_char, *const c_void, usize) -> c_int;

/// Mirrors `struct vx_dir_shape`: what the htree builder (htree.rs) needs of a directory
/// and of the filesystem.
#[repr(C)]
#[derive(Default)]
pub(crate) struct VxDirShape {
    /// The one block of an indexable directory; 0 leaves the directory linear.
    pub(crate) root: u64,
    pub(crate) block_size: u32,
    /// Bytes of a leaf block's checksum tail (0 or 12).
    pub(crate) leaf_tail: u32,
    /// Bytes of an index block's checksum tail (0 or 8).
    pub(crate) dx_tail: u32,
    /// The hash algorithm for `vx_dir_name_hash` (the default, +3 if unsigned).
    pub(crate) hash_alg: i32,
    /// The superblock's default hash version, recorded in the dx root.
    pub(crate) hash_version: u8,
    /// Entries carry file types.
    pub(crate) filetype: u8,
}

/// Mirrors `struct vx_meta_shape`: what the write order (write_order.rs) sizes its tables by.
#[repr(C)]
#[derive(Default)]
pub(crate) struct VxMetaShape {
    pub(crate) groups: u32,
    /// Bytes of one group descriptor.
    pub(crate) desc_size: u32,
    pub(crate) desc_per_block: u32,
    pub(crate) desc_blocks: u32,
    pub(crate) block_size: u32,
    pub(crate) inode_blocks_per_group: u32,
    /// Most blocks `vx_take_marks` reports as newly allocated.
    pub(crate) fresh_max: u32,
    /// Group descriptor checksums (uninit_bg or metadata_csum): the uninit flags count.
    pub(crate) group_desc_csum: i32,
}

/// Mirrors `struct vx_group_counts`: the descriptor fields a group's bitmaps are known by.
#[repr(C)]
#[derive(Default, Clone, Copy)]
pub(crate) struct VxGroupCounts {
    pub(crate) free_blocks: u64,
    pub(crate) free_inodes: u32,
    pub(crate) itable_unused: u32,
    pub(crate) flags: u16,
}

/// The shim's usage check (`struct vx_usage_scan`): its bitmaps and inode scan (usage.rs).
#[repr(C)]
pub(crate) struct VxUsageScan {
    pub(crate) _private: [u8; 0],
}

/// Mirrors `struct vx_usage_inode`: what the usage check needs of the inode scanned.
#[repr(C)]
#[derive(Default)]
pub(crate) struct VxUsageInode {
    /// 0: the scan is over.
    pub(crate) ino: u32,
    pub(crate) links: u32,
    pub(crate) dtime: u32,
    pub(crate) reserved: i32,
    pub(crate) block0: i32,
    pub(crate) marked: i32,
    pub(crate) has_blocks: i32,
    pub(crate) inline_data: i32,
    pub(crate) acl: u64,
}

/// Mirrors `struct vx_orphan_shape`: the orphan list's head and the inode numbers' bounds.
#[repr(C)]
#[derive(Default)]
pub(crate) struct VxOrphanShape {
    pub(crate) head: u32,
    pub(crate) first_ino: u32,
    pub(crate) inodes_count: u32,
}

/// The shim's inode session (`struct vx_wr`): an inode and its extent handle (session.rs).
#[repr(C)]
pub(crate) struct VxWr {
    pub(crate) _private: [u8; 0],
}

/// Mirrors `struct vx_wr_inode`: what the data paths (extent_read.rs, extent_write.rs) need
/// of the inode.
#[repr(C)]
#[derive(Default)]
pub(crate) struct VxWrInode {
    pub(crate) size: u64,
    pub(crate) block_size: u32,
    /// Extent-mapped and not inline: the extent handle applies.
    pub(crate) extents: i32,
    /// A bigalloc filesystem (the write path leaves it to the file API).
    pub(crate) bigalloc: i32,
}

/// Mirrors `struct vx_extent`: one extent as the data paths read it.
#[repr(C)]
#[derive(Default, Clone, Copy)]
pub(crate) struct VxExtent {
    pub(crate) pblk: u64,
    pub(crate) lblk: u64,
    pub(crate) len: u32,
    pub(crate) unwritten: i32,
}

extern "C" {
    pub(crate) fn vx_dir_shape(fs: *mut ExtFsHandle, dir: u32, out: *mut VxDirShape) -> c_int;
    pub(crate) fn vx_dir_block_read(
        fs: *mut ExtFsHandle,
        block: u64,
        buf: *mut c_void,
        dir: u32,
    ) -> c_int;
    pub(crate) fn vx_dir_block_write(
        fs: *mut ExtFsHandle,
        block: u64,
        buf: *mut c_void,
        dir: u32,
    ) -> c_int;
    pub(crate) fn vx_dir_name_hash(
        fs: *mut ExtFsHandle,
        alg: c_int,
        name: *const c_char,
        len: usize,
        hash: *mut u32,
    ) -> c_int;
    pub(crate) fn vx_take_blocks(fs: *mut ExtFsHandle, goal: u64, out: *mut u64, n: usize)
        -> c_int;
    pub(crate) fn vx_give_back_blocks(fs: *mut ExtFsHandle, blocks: *const u64, n: usize);
    pub(crate) fn vx_switch_to_htree(
        fs: *mut ExtFsHandle,
        dir: u32,
        blocks: *const u64,
        n: usize,
        old: u64,
    ) -> c_int;
    pub(crate) fn vx_open(
        dev: *mut VxDev,
        rw: c_int,
        allow_recovery: c_int,
        out: *mut *mut ExtFsHandle,
        msg: *mut c_char,
        msglen: usize,
    ) -> c_int;
    pub(crate) fn vx_close(fs: *mut ExtFsHandle) -> c_int;
    pub(crate) fn vx_set_caller(fs: *mut ExtFsHandle, privileged: c_int);
    pub(crate) fn vx_reserved_ids(fs: *mut ExtFsHandle, uid: *mut u32, gid: *mut u32);
    pub(crate) fn vx_lib_features(incompat: *mut u32, ro_compat: *mut u32);
    pub(crate) fn vx_feature_names(ro_compat: c_int, bits: u32, out: *mut c_char, cap: usize);
    pub(crate) fn vx_needs_recovery(fs: *mut ExtFsHandle) -> c_int;
    pub(crate) fn vx_journal_map(
        fs: *mut ExtFsHandle,
        out: *mut u64,
        max: usize,
        count: *mut usize,
    ) -> c_int;
    pub(crate) fn vx_block_size(fs: *mut ExtFsHandle) -> u32;
    pub(crate) fn vx_stat(fs: *mut ExtFsHandle, ino: u32, st: *mut VxStat) -> c_int;
    pub(crate) fn vx_lookup(
        fs: *mut ExtFsHandle,
        dir: u32,
        name: *const c_char,
        len: usize,
        ino: *mut u32,
    ) -> c_int;
    pub(crate) fn vx_readdir(
        fs: *mut ExtFsHandle,
        dir: u32,
        cb: DirentCb,
        ctx: *mut c_void,
    ) -> c_int;
    pub(crate) fn vx_readlink(
        fs: *mut ExtFsHandle,
        ino: u32,
        buf: *mut c_char,
        cap: usize,
        len: *mut usize,
    ) -> c_int;
    pub(crate) fn vx_statfs(fs: *mut ExtFsHandle, st: *mut VxStatFs) -> c_int;
    pub(crate) fn vx_label(fs: *mut ExtFsHandle, buf: *mut c_char);
    pub(crate) fn vx_xattrs(fs: *mut ExtFsHandle, ino: u32, cb: XattrCb, ctx: *mut c_void)
        -> c_int;
    pub(crate) fn vx_begin_rw(fs: *mut ExtFsHandle) -> c_int;
    pub(crate) fn vx_end_rw(fs: *mut ExtFsHandle) -> c_int;
    pub(crate) fn vx_flush(fs: *mut ExtFsHandle) -> c_int;
    pub(crate) fn vx_mknod(
        fs: *mut ExtFsHandle,
        dir: u32,
        name: *const c_char,
        mode: u32,
        rdev: u32,
        uid: u32,
        gid: u32,
        s: i64,
        ns: u32,
        known_absent: c_int,
        out: *mut u32,
    ) -> c_int;
    pub(crate) fn vx_mkdir(
        fs: *mut ExtFsHandle,
        dir: u32,
        name: *const c_char,
        mode: u32,
        uid: u32,
        gid: u32,
        s: i64,
        ns: u32,
        known_absent: c_int,
        out: *mut u32,
    ) -> c_int;
    pub(crate) fn vx_symlink(
        fs: *mut ExtFsHandle,
        dir: u32,
        name: *const c_char,
        target: *const c_char,
        uid: u32,
        gid: u32,
        s: i64,
        ns: u32,
        known_absent: c_int,
        out: *mut u32,
    ) -> c_int;
    pub(crate) fn vx_link(
        fs: *mut ExtFsHandle,
        ino: u32,
        dir: u32,
        name: *const c_char,
        s: i64,
        ns: u32,
        known_absent: c_int,
    ) -> c_int;
    pub(crate) fn vx_unlink(
        fs: *mut ExtFsHandle,
        dir: u32,
        name: *const c_char,
        want_dir: c_int,
        s: i64,
        ns: u32,
        out_ino: *mut u32,
        out_last: *mut c_int,
    ) -> c_int;
    pub(crate) fn vx_free_inode(fs: *mut ExtFsHandle, ino: u32) -> c_int;
    pub(crate) fn vx_usage_begin(
        fs: *mut ExtFsHandle,
        out: *mut *mut VxUsageScan,
        msg: *mut c_char,
        msglen: usize,
    ) -> c_int;
    pub(crate) fn vx_usage_next(
        s: *mut VxUsageScan,
        out: *mut VxUsageInode,
        msg: *mut c_char,
        msglen: usize,
    ) -> c_int;
    pub(crate) fn vx_usage_walk(
        s: *mut VxUsageScan,
        ino: u32,
        why: *mut c_int,
        bad: *mut u64,
        msg: *mut c_char,
        msglen: usize,
    ) -> c_int;
    pub(crate) fn vx_usage_end(s: *mut VxUsageScan);
    pub(crate) fn vx_block_state(fs: *mut ExtFsHandle, block: u64) -> c_int;
    pub(crate) fn vx_orphan_shape(fs: *mut ExtFsHandle, out: *mut VxOrphanShape);
    pub(crate) fn vx_set_orphan_head(fs: *mut ExtFsHandle, ino: u32);
    pub(crate) fn vx_orphan_node(
        fs: *mut ExtFsHandle,
        ino: u32,
        links: *mut u32,
        next: *mut u32,
    ) -> c_int;
    pub(crate) fn vx_set_orphan_next(fs: *mut ExtFsHandle, ino: u32, next: u32) -> c_int;
    pub(crate) fn vx_settle_orphan(fs: *mut ExtFsHandle, ino: u32) -> c_int;
    pub(crate) fn vx_rename(
        fs: *mut ExtFsHandle,
        sdir: u32,
        sname: *const c_char,
        ddir: u32,
        dname: *const c_char,
        flags: c_int,
        s: i64,
        ns: u32,
        freed: *mut u32,
    ) -> c_int;
    pub(crate) fn vx_truncate(fs: *mut ExtFsHandle, ino: u32, size: u64) -> c_int;
    pub(crate) fn vx_meta_shape(fs: *mut ExtFsHandle, out: *mut VxMetaShape) -> c_int;
    pub(crate) fn vx_take_marks(
        fs: *mut ExtFsHandle,
        dirty: *mut u8,
        ino_dirty: *mut u8,
        fresh: *mut u64,
    ) -> usize;
    pub(crate) fn vx_group_counts(fs: *mut ExtFsHandle, g: u32, out: *mut VxGroupCounts);
    pub(crate) fn vx_inode_table(fs: *mut ExtFsHandle, g: u32) -> u64;
    pub(crate) fn vx_group_desc(fs: *mut ExtFsHandle, g: u32, out: *mut c_void);
    pub(crate) fn vx_super_bytes(fs: *mut ExtFsHandle, out: *mut c_void);
    pub(crate) fn vx_bitmap_image(
        fs: *mut ExtFsHandle,
        g: u32,
        kind: c_int,
        buf: *mut c_void,
        nbytes: *mut usize,
        at: *mut u64,
    ) -> c_int;
    pub(crate) fn vx_read_block(fs: *mut ExtFsHandle, block: u64, buf: *mut c_void) -> c_int;
    pub(crate) fn vx_write_bitmap(
        fs: *mut ExtFsHandle,
        g: u32,
        kind: c_int,
        buf: *mut c_void,
        nbytes: usize,
        at: u64,
    ) -> c_int;
    pub(crate) fn vx_write_desc_block(fs: *mut ExtFsHandle, i: u32, at: *mut u64) -> c_int;
    pub(crate) fn vx_write_super(fs: *mut ExtFsHandle) -> c_int;
    pub(crate) fn vx_write_back(
        fs: *mut ExtFsHandle,
        pairs: *const u64,
        n: usize,
        which: c_int,
    ) -> c_int;
    pub(crate) fn vx_check_extents(fs: *mut ExtFsHandle, ino: u32) -> c_int;
    pub(crate) fn vx_wr_begin(
        fs: *mut ExtFsHandle,
        ino: u32,
        out: *mut *mut VxWr,
        inode: *mut VxWrInode,
    ) -> c_int;
    pub(crate) fn vx_wr_open_extents(wr: *mut VxWr) -> c_int;
    pub(crate) fn vx_wr_extent(
        wr: *mut VxWr,
        lblk: u64,
        out: *mut VxExtent,
        found: *mut c_int,
    ) -> c_int;
    pub(crate) fn vx_wr_hole_end(wr: *mut VxWr, l: u64, missed: c_int, limit: u64) -> u64;
    pub(crate) fn vx_wr_map_hole(wr: *mut VxWr, l: u64, len: u64, got: *mut u64) -> c_int;
    pub(crate) fn vx_wr_bmap(wr: *mut VxWr, lblk: u64) -> u64;
    pub(crate) fn vx_wr_end(
        wr: *mut VxWr,
        update: c_int,
        grow: c_int,
        size: u64,
        s: i64,
        ns: u32,
    ) -> c_int;
    pub(crate) fn vx_write_run(
        fs: *mut ExtFsHandle,
        pblk: u64,
        data: *const c_void,
        bytes: usize,
    ) -> c_int;
    pub(crate) fn vx_read_run(
        fs: *mut ExtFsHandle,
        pblk: u64,
        buf: *mut c_void,
        bytes: usize,
    ) -> c_int;
    pub(crate) fn vx_prefetch(fs: *mut ExtFsHandle, offset: u64, len: u64);
    pub(crate) fn vx_wr_read_file_api(
        wr: *mut VxWr,
        offset: u64,
        buf: *mut c_void,
        len: usize,
        got: *mut usize,
    ) -> c_int;
    pub(crate) fn vx_write_file_api(
        fs: *mut ExtFsHandle,
        ino: u32,
        offset: u64,
        buf: *const c_void,
        len: usize,
        done: *mut usize,
    ) -> c_int;
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn vx_setattr(
        fs: *mut ExtFsHandle,
        ino: u32,
        has_mode: c_int,
        mode: u32,
        has_uid: c_int,
        uid: u32,
        has_gid: c_int,
        gid: u32,
        has_atime: c_int,
        a_s: i64,
        a_ns: u32,
        has_mtime: c_int,
        m_s: i64,
        m_ns: u32,
        now_s: i64,
        now_ns: u32,
    ) -> c_int;
    pub(crate) fn vx_setxattr(
        fs: *mut ExtFsHandle,
        ino: u32,
        name: *const c_char,
        value: *const c_void,
        len: usize,
        flags: c_int,
    ) -> c_int;
}
