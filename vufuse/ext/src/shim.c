/*
 * A narrow, flat C API over libext2fs for the Rust ext driver.
 *
 * Why a shim: libext2fs has no maintained Rust bindings, and its structs
 * (struct_ext2_filsys, ext2_inode_large, ...) are large and versioned. Here
 * they stay on the C side; Rust sees a dozen functions taking integers and
 * buffers. Every libext2fs error is turned into an errno in vx_errno(), the
 * one place library errors are mapped.
 *
 * I/O goes through an io_manager whose channel calls back into Rust (any
 * vudev BlockDevice: image file, partition window, ramdisk), so the driver
 * works on partitions and VUOS devices without the library opening paths.
 */
#define _GNU_SOURCE /* qsort_r */
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <ext2fs/ext2fs.h>
#include <e2p/e2p.h>

/* ---- the device, implemented in Rust ---- */

struct vx_dev {
	void *ctx;
	uint64_t size;
	int read_only;
	int (*read)(void *ctx, uint64_t offset, void *buf, size_t len);
	int (*write)(void *ctx, uint64_t offset, const void *buf, size_t len);
	int (*flush)(void *ctx);
	void (*prefetch)(void *ctx, uint64_t offset, uint64_t len);
	/* The block cache lives on the Rust side (vudev::CachedDevice): */
	/* Write dirty blocks, sorted and coalesced: all (which == VX_WB_ALL), or those that
	 * overlap (VX_WB_WITHIN) or miss (VX_WB_OUTSIDE) the n byte ranges, start/end pairs. */
	int (*write_back)(void *ctx, const uint64_t *ranges, size_t n, int which);
	int (*set_block_size)(void *ctx, uint32_t block_size); /* the cached unit */
	/* The htree builder (src/htree.rs): indexes the full one-block directory dir (*done 1)
	 * or leaves it (*done 0); an errno. A callback, not an exported symbol, so that a
	 * module linking the crate without using ext drops the shim altogether. */
	long (*make_indexed)(ext2_filsys fs, uint32_t dir, int *done);
};

enum { VX_WB_ALL = 0, VX_WB_WITHIN = 1, VX_WB_OUTSIDE = 2 };

/* ---- errno mapping: the one place ---- */

int vx_errno(errcode_t err)
{
	if (err == 0)
		return 0;
	if (err > 0 && err < 256)
		return (int)err; /* libext2fs passes system errnos through */
	switch (err) {
	case EXT2_ET_FILE_NOT_FOUND:
		return ENOENT;
	case EXT2_ET_DIR_EXISTS:
	case EXT2_ET_FILE_EXISTS:
		return EEXIST;
	case EXT2_ET_NO_DIRECTORY:
		return ENOTDIR;
	case EXT2_ET_DIR_NO_SPACE:
	case EXT2_ET_BLOCK_ALLOC_FAIL:
	case EXT2_ET_INODE_ALLOC_FAIL:
	case EXT2_ET_EA_NO_SPACE:
		return ENOSPC;
	case EXT2_ET_RO_FILSYS:
		return EROFS;
	case EXT2_ET_TOO_MANY_REFS:
		return EMLINK;
	case EXT2_ET_FILE_TOO_BIG:
		return EFBIG;
	case EXT2_ET_NO_MEMORY:
		return ENOMEM;
	case EXT2_ET_EA_KEY_NOT_FOUND:
		return ENODATA;
	case EXT2_ET_EA_BAD_NAME_LEN:
		return ERANGE;
	case EXT2_ET_UNIMPLEMENTED:
		return EOPNOTSUPP;
	case EXT2_ET_BAD_MAGIC:
	case EXT2_ET_SB_CSUM_INVALID:
	case EXT2_ET_INODE_CSUM_INVALID:
	case EXT2_ET_DIR_CSUM_INVALID:
	case EXT2_ET_EXTENT_CSUM_INVALID:
	case EXT2_ET_BLOCK_BITMAP_CSUM_INVALID:
	case EXT2_ET_INODE_BITMAP_CSUM_INVALID:
	case EXT2_ET_EXT_ATTR_CSUM_INVALID:
	case EXT2_ET_DIR_CORRUPTED:
	case EXT2_ET_EXTENT_HEADER_BAD:
	case EXT2_ET_EXTENT_INDEX_BAD:
	case EXT2_ET_EXTENT_LEAF_BAD:
	case EXT2_ET_BAD_EA_HEADER:
	case EXT2_ET_BAD_EA_BLOCK_NUM:
	case EXT2_ET_CORRUPT_SUPERBLOCK:
		return EUCLEAN;
	default:
		return EIO;
	}
}

/* crc32c: ext2fs_crc32c_le is defined in Rust (src/crc32c.rs). */

/* ---- io_manager over struct vx_dev ---- */

/* A pass-through channel: every read and write goes to the Rust device, whose
 * block cache (vudev::CachedDevice) holds single blocks (inode tables, bitmaps,
 * directory blocks) and keeps single-block writes dirty until the write order
 * (src/write_order.rs), run after every modifying operation, lets them out in its
 * crash-safe order (dev->write_back: sorted and coalesced, so a block written
 * several times in one operation costs one device write). No dirty block
 * reaches the device earlier: other requests see or replace them in place. */
struct vx_chan {
	struct vx_dev *dev;
	char *scratch; /* one block, for vx_io_write_byte */
};

static struct struct_io_manager vx_io_manager;

static errcode_t vx_io_open(const char *name, int flags, io_channel *channel)
{
	struct vx_dev *dev = NULL;
	if (!name || sscanf(name, "vudev:%p", (void **)&dev) != 1 || !dev)
		return EXT2_ET_BAD_DEVICE_NAME;
	if ((flags & IO_FLAG_RW) && dev->read_only)
		return EROFS;
	io_channel io;
	errcode_t err = ext2fs_get_mem(sizeof(struct struct_io_channel), &io);
	if (err)
		return err;
	memset(io, 0, sizeof(struct struct_io_channel));
	struct vx_chan *chan;
	err = ext2fs_get_mem(sizeof *chan, &chan);
	if (err) {
		ext2fs_free_mem(&io);
		return err;
	}
	memset(chan, 0, sizeof *chan);
	chan->dev = dev;
	chan->scratch = malloc(1024);
	err = ext2fs_get_mem(strlen(name) + 1, &io->name);
	if (err || !chan->scratch) {
		free(chan->scratch);
		ext2fs_free_mem(&chan);
		ext2fs_free_mem(&io);
		return err ? err : EXT2_ET_NO_MEMORY;
	}
	strcpy(io->name, name);
	io->magic = EXT2_ET_MAGIC_IO_CHANNEL;
	io->manager = &vx_io_manager;
	io->block_size = 1024;
	io->refcount = 1;
	io->flags = flags;
	io->private_data = chan;
	*channel = io;
	return 0;
}

static errcode_t vx_io_close(io_channel io)
{
	if (--io->refcount > 0)
		return 0;
	struct vx_chan *chan = io->private_data;
	errcode_t err = chan->dev->write_back(chan->dev->ctx, NULL, 0, VX_WB_ALL);
	free(chan->scratch);
	ext2fs_free_mem(&io->private_data);
	ext2fs_free_mem(&io->name);
	ext2fs_free_mem(&io);
	return err;
}

static errcode_t vx_io_set_blksize(io_channel io, int blksize)
{
	struct vx_chan *chan = io->private_data;
	if (io->block_size != blksize) {
		char *scratch = malloc((size_t)blksize);
		if (!scratch)
			return EXT2_ET_NO_MEMORY;
		int e = chan->dev->set_block_size(chan->dev->ctx, (uint32_t)blksize);
		if (e) {
			free(scratch);
			return e;
		}
		free(chan->scratch);
		chan->scratch = scratch;
	}
	io->block_size = blksize;
	return 0;
}

/* A negative count is a byte count (libext2fs convention). */
static size_t vx_bytes(io_channel io, int count)
{
	return count < 0 ? (size_t)(-count) : (size_t)count * io->block_size;
}

static errcode_t vx_io_read64(io_channel io, unsigned long long block, int count, void *data)
{
	struct vx_dev *dev = ((struct vx_chan *)io->private_data)->dev;
	size_t len = vx_bytes(io, count);
	int e = dev->read(dev->ctx, block * io->block_size, data, len);
	if (e && io->read_error)
		return io->read_error(io, block, count, data, len, 0, e);
	return e;
}

static errcode_t vx_io_write64(io_channel io, unsigned long long block, int count, const void *data)
{
	struct vx_dev *dev = ((struct vx_chan *)io->private_data)->dev;
	if (!(io->flags & IO_FLAG_RW))
		return EXT2_ET_RO_FILSYS;
	size_t len = vx_bytes(io, count);
	int e = dev->write(dev->ctx, block * io->block_size, data, len);
	if (e && io->write_error)
		return io->write_error(io, block, count, data, len, 0, e);
	return e;
}

static errcode_t vx_io_read(io_channel io, unsigned long block, int count, void *data)
{
	return vx_io_read64(io, block, count, data);
}

static errcode_t vx_io_write(io_channel io, unsigned long block, int count, const void *data)
{
	return vx_io_write64(io, block, count, data);
}

static errcode_t vx_io_write_byte(io_channel io, unsigned long offset, int size, const void *data)
{
	struct vx_chan *chan = io->private_data;
	struct vx_dev *dev = chan->dev;
	if (!(io->flags & IO_FLAG_RW))
		return EXT2_ET_RO_FILSYS;
	unsigned long long block = offset / io->block_size;
	size_t within = offset % io->block_size;
	if (size > 0 && within + (size_t)size <= (size_t)io->block_size) {
		/* Inside one block (the superblock): changed as a whole block, so the
		 * cache sends it out with its neighbours (the descriptors). */
		errcode_t err = vx_io_read64(io, block, 1, chan->scratch);
		if (err)
			return err;
		memcpy(chan->scratch + within, data, (size_t)size);
		return vx_io_write64(io, block, 1, chan->scratch);
	}
	return dev->write(dev->ctx, offset, data, (size_t)size);
}

static errcode_t vx_io_flush(io_channel io)
{
	struct vx_dev *dev = ((struct vx_chan *)io->private_data)->dev;
	if (!(io->flags & IO_FLAG_RW))
		return 0;
	return dev->flush(dev->ctx); /* writes the cache back first */
}

static errcode_t vx_io_set_option(io_channel io, const char *option, const char *arg)
{
	(void)io; (void)option; (void)arg;
	return EXT2_ET_INVALID_ARGUMENT;
}

static struct struct_io_manager vx_io_manager = {
	.magic = EXT2_ET_MAGIC_IO_MANAGER,
	.name = "vudev I/O manager",
	.open = vx_io_open,
	.close = vx_io_close,
	.set_blksize = vx_io_set_blksize,
	.read_blk = vx_io_read,
	.write_blk = vx_io_write,
	.flush = vx_io_flush,
	.write_byte = vx_io_write_byte,
	.set_option = vx_io_set_option,
	.read_blk64 = vx_io_read64,
	.write_blk64 = vx_io_write64,
};

/* ---- open / close ---- */

/* Names the feature bits `bits` (incompat ones, or ro_compat ones when ro_compat is set)
 * as e2p/tune2fs spell them ("FEATURE_R30" for a bit nobody knows). */
void vx_feature_names(int ro_compat, uint32_t bits, char *out, size_t cap)
{
	out[0] = 0;
	size_t used = 0;
	for (int bit = 0; bit < 32; bit++) {
		if (!(bits & (1u << bit)))
			continue;
		const char *name = e2p_feature2string(ro_compat ? E2P_FEATURE_RO_INCOMPAT : E2P_FEATURE_INCOMPAT, 1u << bit);
		int n = snprintf(out + used, cap - used, "%s%s", used ? ", " : "", name);
		if (n < 0 || (size_t)n >= cap - used)
			break;
		used += (size_t)n;
	}
	if (!used)
		snprintf(out, cap, "unknown");
}

/* The feature bits the linked libext2fs supports (what it refuses otherwise). */
void vx_lib_features(uint32_t *incompat, uint32_t *ro_compat)
{
	*incompat = EXT2_LIB_FEATURE_INCOMPAT_SUPP;
	*ro_compat = EXT2_LIB_FEATURE_RO_COMPAT_SUPP;
}

/* The unsupported feature bits of the superblock on dev, named. */
static void vx_unsupported_features(struct vx_dev *dev, int ro_compat, char *out, size_t cap)
{
	struct ext2_super_block sb;
	if (dev->read(dev->ctx, SUPERBLOCK_OFFSET, &sb, sizeof sb)) {
		snprintf(out, cap, "unknown");
		return;
	}
	uint32_t bits = ro_compat ? ext2fs_le32_to_cpu(sb.s_feature_ro_compat) & ~EXT2_LIB_FEATURE_RO_COMPAT_SUPP
				  : ext2fs_le32_to_cpu(sb.s_feature_incompat) & ~EXT2_LIB_FEATURE_INCOMPAT_SUPP;
	vx_feature_names(ro_compat, bits, out, cap);
}

static errcode_t vx_meta_init(ext2_filsys fs);
static blk64_t vx_allowed_blocks(ext2_filsys fs);
void vx_give_back_blocks(ext2_filsys fs, const uint64_t *blocks, size_t n);
static void vx_inode_alloc_stats(ext2_filsys fs, ext2_ino_t ino, int inuse, int isdir);
static void vx_meta_free(ext2_filsys fs);

/* Features this driver refuses even though libext2fs may parse them. */
static const struct {
	uint32_t bit;
	const char *name;
	int read_only_ok; /* a read-only mount may go on */
} vx_refused_incompat[] = {
	{ EXT4_FEATURE_INCOMPAT_ENCRYPT, "encrypt", 0 },
	{ EXT3_FEATURE_INCOMPAT_JOURNAL_DEV, "journal_dev", 0 },
};

/* casefold is not refused: only directories flagged casefold (chattr +F) fold names, and
 * the driver neither folds (their names are found by exact case) nor hashes folded names,
 * so names in such a directory are never added, removed or renamed (EOPNOTSUPP); every
 * other directory of the filesystem is an ordinary one. */
static int vx_names_frozen(ext2_filsys fs, uint32_t dir)
{
	struct ext2_inode in;
	if (!ext2fs_has_feature_casefold(fs->super) || ext2fs_read_inode(fs, dir, &in))
		return 0;
	return (in.i_flags & EXT4_CASEFOLD_FL) ? EOPNOTSUPP : 0;
}

/* libext2fs's messages by code ("Unknown code ext2 60" until the table is registered). */
static void vx_register_messages(void)
{
	static int done;
	if (!__atomic_exchange_n(&done, 1, __ATOMIC_SEQ_CST))
		initialize_ext2_error_table();
}

/* ---- before a read-write mount: do the bitmaps cover what the inodes use? ----
 *
 * Nothing in a filesystem marks bitmaps that miss blocks or inodes in use, blocks claimed
 * twice, or a file's block inside an inode table: e2fsck finds them by walking every inode.
 * A read-write mount would hand such blocks out again and the new files would share them
 * (tests/corpus/ext_corpus.sh found it on f_bitmaps, f_badtable, f_dup_ba,
 * f_ind_inode_collision; the kernel allocates the same way). So before a read-write mount
 * the driver walks the in-use inodes and their block maps once, as e2fsck's pass 1 does
 * but reading only inode tables and extent/indirect blocks: every inode in use must be
 * marked, every block it maps marked, claimed once, and outside every group's bitmaps and
 * inode table. Cost: the inode tables' used part (itable_unused skipped) and the mapping
 * blocks, e.g. a few ms for /usr/include's 8,800 files. Which inodes, what is checked of
 * each and the messages are src/usage.rs; here are the scan and the walk of one inode's
 * blocks against the bitmaps. */

struct vx_usage {
	ext2fs_block_bitmap claimed; /* blocks (clusters) mapped by the inodes walked before */
	ext2fs_block_bitmap meta;    /* every group's bitmaps and inode table */
	blk64_t *mine;               /* bigalloc: the blocks of the current inode, marked after it */
	size_t nmine, capmine;
	ext2_ino_t ino;
	blk64_t bad;                 /* first offending block */
	int why;                     /* 1 free in the bitmap, 2 claimed twice, 3 group metadata, 4 outside */
};

static int vx_usage_block(ext2_filsys fs, blk64_t *blocknr, e2_blkcnt_t blockcnt, blk64_t ref_blk, int ref_offset, void *priv)
{
	(void)blockcnt;
	(void)ref_blk;
	(void)ref_offset;
	struct vx_usage *u = priv;
	blk64_t b = *blocknr;
	int why = 0;
	if (b < fs->super->s_first_data_block || b >= ext2fs_blocks_count(fs->super))
		why = 4;
	else if (!ext2fs_test_block_bitmap2(fs->block_map, b))
		why = 1;
	else if (u->ino != EXT2_RESIZE_INO && ext2fs_test_block_bitmap2(u->meta, b))
		why = 3;
	else if (u->ino != EXT2_RESIZE_INO && ext2fs_test_block_bitmap2(u->claimed, b))
		why = 2;
	if (why) {
		u->bad = b;
		u->why = why;
		return BLOCK_ABORT;
	}
	if (u->ino == EXT2_RESIZE_INO)
		return 0;
	if (!ext2fs_has_feature_bigalloc(fs->super)) {
		ext2fs_mark_block_bitmap2(u->claimed, b);
		return 0;
	}
	/* One file's blocks share clusters: only another file's claim counts. */
	if (u->nmine == u->capmine) {
		size_t cap = u->capmine ? 2 * u->capmine : 256;
		blk64_t *mine = realloc(u->mine, cap * sizeof *mine);
		if (!mine) {
			u->bad = b;
			u->why = 5;
			return BLOCK_ABORT;
		}
		u->mine = mine;
		u->capmine = cap;
	}
	u->mine[u->nmine++] = b;
	return 0;
}

/* The check's state: the bitmaps it fills and the inode scan (src/usage.rs drives it). */
struct vx_usage_scan {
	struct vx_usage u;
	ext2_filsys fs;
	ext2_inode_scan scan;
	struct ext2_inode *in;
	int inode_size;
};

/* Mirrors what usage.rs needs of the inode the scan is at. */
struct vx_usage_inode {
	uint32_t ino; /* 0: the scan is over */
	uint32_t links;
	uint32_t dtime;
	int32_t reserved;   /* below the first non-reserved inode */
	int32_t block0;     /* i_block[0] != 0 */
	int32_t marked;     /* set in the inode bitmap */
	int32_t has_blocks; /* ext2fs_inode_has_valid_blocks2 */
	int32_t inline_data;
	uint64_t acl; /* the extended attribute block, 0: none */
};

static int vx_usage_failed(errcode_t err, char *msg, size_t msglen)
{
	snprintf(msg, msglen, "cannot check the inodes against the bitmaps: %s (e2fsck -fy IMAGE may repair it)", error_message(err));
	return vx_errno(err) ? vx_errno(err) : EIO;
}

void vx_usage_end(struct vx_usage_scan *s)
{
	if (!s)
		return;
	if (s->scan)
		ext2fs_close_inode_scan(s->scan);
	ext2fs_free_mem(&s->in);
	if (s->u.claimed)
		ext2fs_free_block_bitmap(s->u.claimed);
	if (s->u.meta)
		ext2fs_free_block_bitmap(s->u.meta);
	free(s->u.mine);
	free(s);
}

/* Starts the check (*out, ended by vx_usage_end): every group's bitmaps and inode table
 * marked as metadata, the inode scan opened; an errno with msg. */
int vx_usage_begin(ext2_filsys fs, struct vx_usage_scan **out, char *msg, size_t msglen)
{
	struct vx_usage_scan *s = calloc(1, sizeof *s);
	*out = s;
	if (!s)
		return vx_usage_failed(EXT2_ET_NO_MEMORY, msg, msglen);
	s->fs = fs;
	s->inode_size = EXT2_INODE_SIZE(fs->super);
	errcode_t err = ext2fs_allocate_block_bitmap(fs, "claimed", &s->u.claimed);
	if (!err)
		err = ext2fs_allocate_block_bitmap(fs, "metadata", &s->u.meta);
	if (!err)
		err = ext2fs_get_mem(s->inode_size, &s->in);
	if (err)
		return vx_usage_failed(err, msg, msglen);
	for (dgrp_t g = 0; g < fs->group_desc_count; g++) {
		blk64_t b = ext2fs_block_bitmap_loc(fs, g), i = ext2fs_inode_bitmap_loc(fs, g), t = ext2fs_inode_table_loc(fs, g);
		if (b)
			ext2fs_mark_block_bitmap2(s->u.meta, b);
		if (i)
			ext2fs_mark_block_bitmap2(s->u.meta, i);
		if (t)
			ext2fs_mark_block_bitmap_range2(s->u.meta, t, fs->inode_blocks_per_group);
	}
	if ((err = ext2fs_open_inode_scan(fs, 0, &s->scan)))
		return vx_usage_failed(err, msg, msglen);
	ext2fs_inode_scan_flags(s->scan, EXT2_SF_SKIP_MISSING_ITABLE, 0);
	return 0;
}

/* The next inode of the scan (those it cannot read are e2fsck's business, skipped); an errno
 * with msg. */
int vx_usage_next(struct vx_usage_scan *s, struct vx_usage_inode *out, char *msg, size_t msglen)
{
	ext2_filsys fs = s->fs;
	memset(out, 0, sizeof *out);
	for (;;) {
		ext2_ino_t ino = 0;
		errcode_t err = ext2fs_get_next_inode_full(s->scan, &ino, s->in, s->inode_size);
		if (err == EXT2_ET_BAD_BLOCK_IN_INODE_TABLE || err == EXT2_ET_INODE_CSUM_INVALID || err == EXT2_ET_INODE_IS_GARBAGE)
			continue; /* nothing here allocates from it */
		if (err)
			return vx_usage_failed(err, msg, msglen);
		if (!ino)
			return 0;
		struct ext2_inode *in = s->in;
		out->ino = ino;
		out->links = in->i_links_count;
		out->dtime = in->i_dtime;
		out->reserved = ino < EXT2_FIRST_INODE(fs->super);
		out->block0 = in->i_block[0] != 0;
		out->marked = ext2fs_test_inode_bitmap2(fs->inode_map, ino) != 0;
		out->has_blocks = ext2fs_inode_has_valid_blocks2(fs, in) != 0;
		out->inline_data = (in->i_flags & EXT4_INLINE_DATA_FL) != 0;
		out->acl = ext2fs_file_acl_block(fs, in);
		return 0;
	}
}

/* Walks the blocks the scan's current inode maps: *why 0 when they add up, else the first
 * offending one in *bad (*why: 1 free in the block bitmap, 2 claimed by another inode too,
 * 3 in a group's bitmaps or inode table, 4 outside the filesystem, 5 out of memory); an
 * errno with libext2fs's text in msg for a map that cannot be read. */
int vx_usage_walk(struct vx_usage_scan *s, uint32_t ino, int *why, uint64_t *bad, char *msg, size_t msglen)
{
	s->u.ino = ino;
	s->u.nmine = 0;
	s->u.why = 0;
	errcode_t err = ext2fs_block_iterate3(s->fs, ino, BLOCK_FLAG_READ_ONLY, NULL, vx_usage_block, &s->u);
	for (size_t k = 0; k < s->u.nmine; k++)
		ext2fs_mark_block_bitmap2(s->u.claimed, s->u.mine[k]);
	*why = s->u.why;
	*bad = s->u.bad;
	if (err && !s->u.why) {
		snprintf(msg, msglen, "%s", error_message(err));
		return vx_errno(err) ? vx_errno(err) : EIO;
	}
	return 0;
}

/* Whether block b lies inside the filesystem (1), and is marked in use there (2). */
int vx_block_state(ext2_filsys fs, uint64_t b)
{
	if (b >= ext2fs_blocks_count(fs->super))
		return 0;
	return ext2fs_test_block_bitmap2(fs->block_map, b) ? 2 : 1;
}

int vx_open(struct vx_dev *dev, int rw, int allow_recovery, ext2_filsys *out, char *msg, size_t msglen)
{
	vx_register_messages();
	char name[64];
	snprintf(name, sizeof name, "vudev:%p", (void *)dev);
	ext2_filsys fs = NULL;
	int flags = EXT2_FLAG_64BITS | EXT2_FLAG_THREADS | (rw ? EXT2_FLAG_RW : 0);
	errcode_t err = ext2fs_open2(name, NULL, flags, 0, 0, &vx_io_manager, &fs);
	if (err) {
		if (err == EXT2_ET_UNSUPP_FEATURE || err == EXT2_ET_RO_UNSUPP_FEATURE) {
			char names[256];
			vx_unsupported_features(dev, err == EXT2_ET_RO_UNSUPP_FEATURE, names, sizeof names);
			if (err == EXT2_ET_RO_UNSUPP_FEATURE)
				snprintf(msg, msglen, "the filesystem uses read-only compatible features this driver cannot write (%s): mount it read-only", names);
			else
				snprintf(msg, msglen, "the filesystem uses features this driver does not support (%s)", names);
		}
		else if (err == EXT2_ET_BAD_MAGIC)
			snprintf(msg, msglen, "not an ext2/3/4 filesystem (bad superblock magic)");
		else
			snprintf(msg, msglen, "%s (e2fsck -fy IMAGE may repair it)", error_message(err));
		return vx_errno(err) ? vx_errno(err) : EIO;
	}
	for (size_t i = 0; i < sizeof vx_refused_incompat / sizeof vx_refused_incompat[0]; i++) {
		if ((fs->super->s_feature_incompat & vx_refused_incompat[i].bit) && (rw || !vx_refused_incompat[i].read_only_ok)) {
			snprintf(msg, msglen, "the filesystem uses the '%s' feature, which this driver does not support", vx_refused_incompat[i].name);
			ext2fs_close_free(&fs);
			return EOPNOTSUPP;
		}
	}
	if (rw && ext2fs_has_feature_quota(fs->super)) {
		/* Nothing here updates the quota files: a write would leave usage e2fsck disagrees
		 * with (found by tests/corpus/ext_corpus.sh on f_quota_*). */
		snprintf(msg, msglen, "the filesystem keeps quotas (the 'quota' feature), which this driver does not update: mount it read-only, or tune2fs -O ^quota IMAGE");
		ext2fs_close_free(&fs);
		return EROFS;
	}
	if (ext2fs_has_feature_journal_needs_recovery(fs->super) && !allow_recovery) {
		snprintf(msg, msglen, "the journal needs recovery: run e2fsck on the image first");
		ext2fs_close_free(&fs);
		return EUCLEAN;
	}
	if (rw && (fs->super->s_state & EXT2_ERROR_FS)) {
		snprintf(msg, msglen, "the filesystem has errors: run e2fsck before mounting read-write");
		ext2fs_close_free(&fs);
		return EUCLEAN;
	}
	/* As the kernel's ext4_check_descriptors and e2fsck: every group's bitmaps and inode
	 * table inside the filesystem (its group, without flex_bg) and overlapping nothing,
	 * before anything is read through them. */
	err = ext2fs_check_desc(fs);
	if (err) {
		snprintf(msg, msglen, "corrupt group descriptors: %s (e2fsck -fy IMAGE may repair it)", error_message(err));
		ext2fs_close_free(&fs);
		return EUCLEAN;
	}
	if (rw && !ext2fs_has_group_desc_csum(fs)) {
		/* Uninitialized-group marks without uninit_bg/metadata_csum: libext2fs keeps them
		 * as they are, so new inodes would land in what e2fsck takes for the unused area
		 * (found by tests/corpus/ext_corpus.sh on f_uninit_disable). */
		for (dgrp_t g = 0; g < fs->group_desc_count; g++) {
			if (ext2fs_bg_flags_test(fs, g, EXT2_BG_INODE_UNINIT | EXT2_BG_BLOCK_UNINIT) || ext2fs_bg_itable_unused(fs, g)) {
				snprintf(msg, msglen, "group descriptor %u is marked uninitialized without the feature for it: run e2fsck before mounting read-write", g);
				ext2fs_close_free(&fs);
				return EUCLEAN;
			}
		}
	}
	err = ext2fs_read_bitmaps(fs);
	if (!rw && (err == EXT2_ET_BLOCK_BITMAP_CSUM_INVALID || err == EXT2_ET_INODE_BITMAP_CSUM_INVALID)) {
		/* As fuse2fs: a read-only mount reads bitmaps whose checksums are wrong. */
		fs->flags |= EXT2_FLAG_IGNORE_CSUM_ERRORS;
		err = ext2fs_read_bitmaps(fs);
		fs->flags &= ~EXT2_FLAG_IGNORE_CSUM_ERRORS;
	}
	if (err) {
		snprintf(msg, msglen, "cannot read the allocation bitmaps: %s (e2fsck -fy IMAGE may repair it)", error_message(err));
		ext2fs_close_free(&fs);
		return vx_errno(err);
	}
	if (rw) {
		/* The caller checks the bitmaps against the inodes next (src/usage.rs). */
		err = vx_meta_init(fs);
		if (err) {
			snprintf(msg, msglen, "out of memory: %s", error_message(err));
			ext2fs_close_free(&fs);
			return vx_errno(err);
		}
	}
	*out = fs;
	return 0;
}

int vx_close(ext2_filsys fs)
{
	vx_meta_free(fs);
	errcode_t err = ext2fs_close_free(&fs);
	return vx_errno(err);
}

/* ---- reading ---- */

struct vx_stat {
	uint64_t ino;
	uint64_t size;
	uint64_t blocks; /* 512-byte units */
	uint32_t mode;
	uint32_t nlink;
	uint32_t uid;
	uint32_t gid;
	uint32_t rdev;
	uint32_t generation;
	int64_t atime, mtime, ctime, crtime;
	uint32_t atime_ns, mtime_ns, ctime_ns, crtime_ns;
};

static void vx_time(const struct ext2_inode_large *in, uint32_t secs, uint32_t extra, int has_extra, int64_t *s, uint32_t *ns)
{
	(void)in;
	*s = (int64_t)(int32_t)secs;
	*ns = 0;
	if (has_extra) {
		/* Low two bits extend the epoch; the rest are nanoseconds. */
		*s += (int64_t)(extra & EXT4_EPOCH_MASK) << 32;
		*ns = extra >> EXT4_EPOCH_BITS;
	}
}

int vx_stat(ext2_filsys fs, uint32_t ino, struct vx_stat *st)
{
	struct ext2_inode_large in;
	memset(&in, 0, sizeof in);
	errcode_t err = ext2fs_read_inode_full(fs, ino, (struct ext2_inode *)&in, sizeof in);
	if (err)
		return vx_errno(err);
	memset(st, 0, sizeof *st);
	st->ino = ino;
	st->size = EXT2_I_SIZE(&in);
	st->blocks = ext2fs_get_stat_i_blocks(fs, (struct ext2_inode *)&in);
	st->mode = in.i_mode;
	st->nlink = in.i_links_count;
	st->uid = inode_uid(in);
	st->gid = inode_gid(in);
	st->generation = in.i_generation;
	if (LINUX_S_ISCHR(in.i_mode) || LINUX_S_ISBLK(in.i_mode)) {
		/* Old encoding in i_block[0]; new (huge) encoding in i_block[1],
		 * which is also the encoding FUSE expects in attr.rdev. */
		st->rdev = in.i_block[0] ? (in.i_block[0] & 0xffff) : in.i_block[1];
	}
	int big = in.i_extra_isize >= 4 && EXT2_INODE_SIZE(fs->super) > EXT2_GOOD_OLD_INODE_SIZE;
#define HAS(f) (big && in.i_extra_isize >= offsetof(struct ext2_inode_large, f) + sizeof(in.f) - EXT2_GOOD_OLD_INODE_SIZE)
	vx_time(&in, in.i_atime, in.i_atime_extra, HAS(i_atime_extra), &st->atime, &st->atime_ns);
	vx_time(&in, in.i_mtime, in.i_mtime_extra, HAS(i_mtime_extra), &st->mtime, &st->mtime_ns);
	vx_time(&in, in.i_ctime, in.i_ctime_extra, HAS(i_ctime_extra), &st->ctime, &st->ctime_ns);
	if (HAS(i_crtime_extra))
		vx_time(&in, in.i_crtime, in.i_crtime_extra, 1, &st->crtime, &st->crtime_ns);
	else
		st->crtime = st->mtime;
#undef HAS
	return 0;
}

int vx_lookup(ext2_filsys fs, uint32_t dir, const char *name, size_t len, uint32_t *ino)
{
	ext2_ino_t found = 0;
	errcode_t err = ext2fs_lookup(fs, dir, name, (int)len, NULL, &found);
	if (err)
		return vx_errno(err);
	*ino = found;
	return 0;
}

typedef int (*vx_dirent_cb)(void *ctx, uint32_t ino, int file_type, const char *name, size_t len);

struct vx_iter {
	vx_dirent_cb cb;
	void *ctx;
};

static int vx_iter_cb(ext2_ino_t dir, int entry, struct ext2_dir_entry *dirent, int offset, int blocksize, char *buf, void *priv)
{
	(void)dir; (void)entry; (void)offset; (void)blocksize; (void)buf;
	struct vx_iter *it = priv;
	int len = ext2fs_dirent_name_len(dirent);
	int type = ext2fs_dirent_file_type(dirent);
	if (it->cb(it->ctx, dirent->inode, type, dirent->name, (size_t)len))
		return DIRENT_ABORT;
	return 0;
}

/* Calls cb for every entry (including . and ..); cb returns non-zero to stop. */
int vx_readdir(ext2_filsys fs, uint32_t dir, vx_dirent_cb cb, void *ctx)
{
	struct vx_iter it = { cb, ctx };
	errcode_t err = ext2fs_dir_iterate2(fs, dir, 0, NULL, vx_iter_cb, &it);
	return vx_errno(err);
}

int vx_file_open(ext2_filsys fs, uint32_t ino, int write, ext2_file_t *out)
{
	errcode_t err = ext2fs_file_open(fs, ino, write ? EXT2_FILE_WRITE : 0, out);
	return vx_errno(err);
}

int vx_file_read(ext2_file_t f, uint64_t offset, void *buf, size_t len, size_t *got)
{
	errcode_t err = ext2fs_file_llseek(f, offset, EXT2_SEEK_SET, NULL);
	if (err)
		return vx_errno(err);
	size_t done = 0;
	while (done < len) {
		unsigned int n = 0;
		size_t want = len - done > 0x40000000 ? 0x40000000 : len - done;
		err = ext2fs_file_read(f, (char *)buf + done, (unsigned int)want, &n);
		if (err)
			return vx_errno(err);
		if (n == 0)
			break;
		done += n;
	}
	*got = done;
	return 0;
}

int vx_file_close(ext2_file_t f)
{
	return vx_errno(ext2fs_file_close(f));
}

/* Target of a symbolic link (fast ones live in the inode). */
int vx_readlink(ext2_filsys fs, uint32_t ino, char *buf, size_t cap, size_t *len)
{
	struct ext2_inode_large in;
	errcode_t err = ext2fs_read_inode_full(fs, ino, (struct ext2_inode *)&in, sizeof in);
	if (err)
		return vx_errno(err);
	if (!LINUX_S_ISLNK(in.i_mode))
		return EINVAL;
	size_t size = EXT2_I_SIZE(&in);
	if (size > cap)
		return ENAMETOOLONG;
	if (in.i_flags & EXT4_INLINE_DATA_FL) {
		size_t got = 0;
		err = ext2fs_inline_data_get(fs, ino, (struct ext2_inode *)&in, buf, &got);
		if (err)
			return vx_errno(err);
		*len = got < size ? got : size;
		return 0;
	}
	if (ext2fs_is_fast_symlink((struct ext2_inode *)&in)) {
		memcpy(buf, (char *)in.i_block, size);
		*len = size;
		return 0;
	}
	ext2_file_t f;
	err = ext2fs_file_open(fs, ino, 0, &f);
	if (err)
		return vx_errno(err);
	unsigned int n = 0;
	err = ext2fs_file_read(f, buf, (unsigned int)size, &n);
	ext2fs_file_close(f);
	if (err)
		return vx_errno(err);
	*len = n;
	return 0;
}

struct vx_statfs {
	uint64_t blocks, blocks_free, blocks_avail, files, files_free;
	uint32_t block_size, name_max;
};

int vx_statfs(ext2_filsys fs, struct vx_statfs *st)
{
	struct ext2_super_block *sb = fs->super;
	uint64_t reserved = ext2fs_r_blocks_count(sb);
	uint64_t free = ext2fs_free_blocks_count(sb);
	st->blocks = ext2fs_blocks_count(sb);
	st->blocks_free = free;
	st->blocks_avail = free > reserved ? free - reserved : 0;
	st->files = sb->s_inodes_count;
	st->files_free = sb->s_free_inodes_count;
	st->block_size = fs->blocksize;
	st->name_max = EXT2_NAME_LEN;
	return 0;
}

/* The volume label (s_volume_name), NUL-terminated into buf (17 bytes). */
void vx_label(ext2_filsys fs, char *buf)
{
	memcpy(buf, fs->super->s_volume_name, 16);
	buf[16] = 0;
}

/* ---- extended attributes ---- */

typedef int (*vx_xattr_cb)(void *ctx, const char *name, const void *value, size_t len);

struct vx_xiter {
	vx_xattr_cb cb;
	void *ctx;
	struct ext2_xattr_handle *h;
};

static int vx_is_acl(const char *name)
{
	return !strcmp(name, "system.posix_acl_access") || !strcmp(name, "system.posix_acl_default");
}

/* The iterator hands out values as stored; ACLs are stored in ext4's short form, so those
 * go through ext2fs_xattr_get, which gives them in the kernel's xattr form (as getfacl and
 * setxattr(2) use), the form setxattr takes them in. */
static int vx_xattr_iter(char *name, char *value, size_t value_len, void *data)
{
	struct vx_xiter *it = data;
	if (!vx_is_acl(name))
		return it->cb(it->ctx, name, value, value_len) ? XATTR_ABORT : 0;
	void *acl = NULL;
	size_t acl_len = 0;
	if (ext2fs_xattr_get(it->h, name, &acl, &acl_len))
		return XATTR_ABORT;
	int stop = it->cb(it->ctx, name, acl, acl_len);
	ext2fs_free_mem(&acl);
	return stop ? XATTR_ABORT : 0;
}

/* Calls cb with every extended attribute of ino (names as the kernel shows them). */
int vx_xattrs(ext2_filsys fs, uint32_t ino, vx_xattr_cb cb, void *ctx)
{
	struct ext2_xattr_handle *h;
	errcode_t err = ext2fs_xattrs_open(fs, ino, &h);
	if (err)
		return vx_errno(err);
	err = ext2fs_xattrs_read(h);
	if (!err) {
		struct vx_xiter it = { cb, ctx, h };
		err = ext2fs_xattrs_iterate(h, vx_xattr_iter, &it);
	}
	ext2fs_xattrs_close(&h);
	return vx_errno(err);
}

/* ---- writing (as fuse2fs does: straight to the final blocks, no journal) ---- */

static void vx_set_time(uint32_t *secs, uint32_t *extra, int64_t s, uint32_t ns)
{
	*secs = (uint32_t)s;
	if (extra)
		*extra = (ns << EXT4_EPOCH_BITS) | (uint32_t)(((s - (int64_t)(int32_t)*secs) >> 32) & EXT4_EPOCH_MASK);
}

static int vx_has_extra(ext2_filsys fs, const struct ext2_inode_large *in)
{
	return EXT2_INODE_SIZE(fs->super) > EXT2_GOOD_OLD_INODE_SIZE && in->i_extra_isize >= 24;
}

static errcode_t vx_unmap_last_block(ext2_filsys fs, uint32_t ino, blk64_t from);

/* Marks the filesystem in use at a read-write mount (cleared by vx_close); the orphan list
 * is released first (src/orphans.rs). */
int vx_begin_rw(ext2_filsys fs)
{
	fs->super->s_state &= ~EXT2_VALID_FS;
	fs->super->s_mnt_count++;
	fs->super->s_mtime = time(NULL);
	ext2fs_mark_super_dirty(fs);
	return vx_errno(ext2fs_flush2(fs, 0));
}

int vx_end_rw(ext2_filsys fs)
{
	fs->super->s_state |= EXT2_VALID_FS;
	ext2fs_mark_super_dirty(fs);
	return 0;
}

int vx_flush(ext2_filsys fs)
{
	return vx_errno(ext2fs_flush2(fs, 0));
}

static int vx_ft(uint32_t mode)
{
	switch (mode & LINUX_S_IFMT) {
	case LINUX_S_IFREG: return EXT2_FT_REG_FILE;
	case LINUX_S_IFDIR: return EXT2_FT_DIR;
	case LINUX_S_IFCHR: return EXT2_FT_CHRDEV;
	case LINUX_S_IFBLK: return EXT2_FT_BLKDEV;
	case LINUX_S_IFIFO: return EXT2_FT_FIFO;
	case LINUX_S_IFSOCK: return EXT2_FT_SOCK;
	case LINUX_S_IFLNK: return EXT2_FT_SYMLINK;
	}
	return EXT2_FT_UNKNOWN;
}

/* Adds name to the last block of a linear (unindexed) directory when it
 * has room: that is where the free space of a directory filled in order
 * is, and ext2fs_link would scan every block before it (quadratic over a
 * directory of thousands of files). Sets *done when it added the entry;
 * anything unusual (indexed, inline, no room, odd block) leaves it to
 * ext2fs_link. */
static errcode_t vx_append_linear(ext2_filsys fs, uint32_t dir, const char *name, uint32_t ino, int ft, int *done)
{
	*done = 0;
	struct ext2_inode in;
	errcode_t err = ext2fs_read_inode(fs, dir, &in);
	if (err)
		return err;
	if (!LINUX_S_ISDIR(in.i_mode) || (in.i_flags & (EXT2_INDEX_FL | EXT4_INLINE_DATA_FL)))
		return 0;
	uint64_t size = EXT2_I_SIZE(&in);
	if (size < fs->blocksize || size % fs->blocksize)
		return 0;
	blk64_t pblk = 0;
	if (ext2fs_bmap2(fs, dir, &in, NULL, 0, size / fs->blocksize - 1, NULL, &pblk) || !pblk)
		return 0;
	char *buf = malloc(fs->blocksize);
	if (!buf)
		return EXT2_ET_NO_MEMORY;
	if (ext2fs_read_dir_block4(fs, pblk, buf, 0, dir)) {
		free(buf);
		return 0;
	}
	size_t namelen = strlen(name);
	unsigned int need = EXT2_DIR_REC_LEN(namelen);
	unsigned int end = fs->blocksize;
	if (ext2fs_has_feature_metadata_csum(fs->super))
		end -= sizeof(struct ext2_dir_entry_tail);
	unsigned int offset = 0;
	while (offset + 8 <= end) {
		struct ext2_dir_entry *d = (struct ext2_dir_entry *)(buf + offset);
		unsigned int rec_len = 0;
		if (ext2fs_get_rec_len(fs, d, &rec_len) || rec_len < 8 || rec_len % 4 || offset + rec_len > end)
			break; /* not what we expect: let the library deal with it */
		unsigned int used = d->inode ? EXT2_DIR_REC_LEN(ext2fs_dirent_name_len(d)) : 0;
		if (used <= rec_len && rec_len - used >= need) {
			struct ext2_dir_entry *n = d;
			if (used) {
				ext2fs_set_rec_len(fs, used, d);
				n = (struct ext2_dir_entry *)(buf + offset + used);
			}
			ext2fs_set_rec_len(fs, rec_len - used, n);
			n->inode = ino;
			ext2fs_dirent_set_name_len(n, (int)namelen);
			ext2fs_dirent_set_file_type(n, ext2fs_has_feature_filetype(fs->super) ? ft : 0);
			memcpy(n->name, name, namelen);
			err = ext2fs_write_dir_block4(fs, pblk, buf, 0, dir);
			if (!err)
				*done = 1;
			break;
		}
		offset += rec_len;
	}
	free(buf);
	return err;
}

/* ---- primitives of the htree builder (src/htree.rs) ----
 *
 * libext2fs inserts into indexed directories but never creates one; the
 * driver turns a full one-block directory into an htree as the kernel does
 * (make_indexed_dir). The block layout is built in Rust; these are the steps
 * that touch libext2fs's structs: the directory's shape, block reads and
 * writes (libext2fs sets the checksums), the name hash, block allocation and
 * the one inode write that switches the directory to its new blocks. Each
 * returns an errno. */

struct vx_dir_shape {
	uint64_t root;        /* the one block of an indexable directory; 0: leave it linear */
	uint32_t block_size;
	uint32_t leaf_tail;   /* bytes of a leaf block's checksum tail (0 or 12) */
	uint32_t dx_tail;     /* bytes of an index block's checksum tail (0 or 8) */
	int32_t hash_alg;     /* for ext2fs_dirhash2: the default version, +3 if unsigned */
	uint8_t hash_version; /* the superblock's default, recorded in the dx root */
	uint8_t filetype;     /* entries carry file types */
};

int vx_dir_shape(ext2_filsys fs, uint32_t dir, struct vx_dir_shape *out)
{
	memset(out, 0, sizeof *out);
	struct ext2_inode in;
	errcode_t err = ext2fs_read_inode(fs, dir, &in);
	if (err)
		return vx_errno(err);
	out->block_size = fs->blocksize;
	out->leaf_tail = ext2fs_has_feature_metadata_csum(fs->super) ? sizeof(struct ext2_dir_entry_tail) : 0;
	out->dx_tail = ext2fs_has_feature_metadata_csum(fs->super) ? sizeof(struct ext2_dx_tail) : 0;
	out->hash_version = fs->super->s_def_hash_version;
	out->hash_alg = fs->super->s_def_hash_version;
	if (out->hash_alg <= EXT2_HASH_TEA && (fs->super->s_flags & EXT2_FLAGS_UNSIGNED_HASH))
		out->hash_alg += 3;
	out->filetype = ext2fs_has_feature_filetype(fs->super) ? 1 : 0;
	if (!ext2fs_has_feature_dir_index(fs->super) || !LINUX_S_ISDIR(in.i_mode) ||
	    (in.i_flags & (EXT2_INDEX_FL | EXT4_INLINE_DATA_FL)) || EXT2_I_SIZE(&in) != fs->blocksize)
		return 0;
	blk64_t root = 0;
	if (ext2fs_bmap2(fs, dir, &in, NULL, 0, 0, NULL, &root) == 0)
		out->root = root;
	return 0;
}

int vx_dir_block_read(ext2_filsys fs, uint64_t block, void *buf, uint32_t dir)
{
	return vx_errno(ext2fs_read_dir_block4(fs, block, buf, 0, dir));
}

int vx_dir_block_write(ext2_filsys fs, uint64_t block, void *buf, uint32_t dir)
{
	return vx_errno(ext2fs_write_dir_block4(fs, block, buf, 0, dir));
}

int vx_dir_name_hash(ext2_filsys fs, int alg, const char *name, size_t len, uint32_t *hash)
{
	ext2_dirhash_t h = 0;
	errcode_t err = ext2fs_dirhash2(alg, name, (int)len, fs->encoding, 0, fs->super->s_hash_seed, &h, NULL);
	*hash = h;
	return vx_errno(err);
}

/* n new blocks, each after the one before, the first near goal; all or none (ENOSPC when
 * fewer than n are free beyond root's reserve). */
int vx_take_blocks(ext2_filsys fs, uint64_t goal, uint64_t *out, size_t n)
{
	if (vx_allowed_blocks(fs) < n)
		return ENOSPC;
	for (size_t i = 0; i < n; i++) {
		blk64_t b = 0;
		errcode_t err = ext2fs_new_block2(fs, i ? out[i - 1] + 1 : goal, NULL, &b);
		if (err) {
			vx_give_back_blocks(fs, out, i);
			return vx_errno(err);
		}
		ext2fs_block_alloc_stats2(fs, b, +1);
		out[i] = b;
	}
	return 0;
}

void vx_give_back_blocks(ext2_filsys fs, const uint64_t *blocks, size_t n)
{
	for (size_t i = 0; i < n; i++)
		ext2fs_block_alloc_stats2(fs, blocks[i], -1);
}

/* The switch: one inode write maps logical blocks 0..n-1 to blocks, with the index flag
 * and the size; then the old block is freed. A kill before it leaves the linear directory
 * (and a leak), after it the whole htree. */
int vx_switch_to_htree(ext2_filsys fs, uint32_t dir, const uint64_t *blocks, size_t n, uint64_t old)
{
	struct ext2_inode in;
	errcode_t err = ext2fs_read_inode(fs, dir, &in);
	for (blk64_t l = 0; !err && l < n; l++) {
		blk64_t phys = blocks[l];
		err = ext2fs_bmap2(fs, dir, &in, NULL, BMAP_SET, l, NULL, &phys);
	}
	if (!err)
		err = ext2fs_read_inode(fs, dir, &in);
	if (err)
		return vx_errno(err);
	ext2fs_iblk_add_blocks(fs, &in, n - 1);
	if ((err = ext2fs_inode_size_set(fs, &in, n * (uint64_t)fs->blocksize)))
		return vx_errno(err);
	in.i_flags |= EXT2_INDEX_FL;
	if ((err = ext2fs_write_inode(fs, dir, &in)))
		return vx_errno(err);
	ext2fs_block_alloc_stats2(fs, old, -1);
	return 0;
}

/* Makes room in a full directory: an htree from a one-block one, else one more block. */
static errcode_t vx_grow_dir(ext2_filsys fs, uint32_t dir)
{
	int indexed = 0;
	struct vx_dev *dev = ((struct vx_chan *)fs->io->private_data)->dev;
	errcode_t err = dev->make_indexed(fs, dir, &indexed);
	if (!err && !indexed)
		err = ext2fs_expand_dir(fs, dir);
	return err;
}

/* ext2fs_link, growing the directory when it is full (a full one-block
 * directory becomes an htree first, as the kernel does). */
static errcode_t vx_link_grow(ext2_filsys fs, uint32_t dir, const char *name, uint32_t ino, int ft)
{
	int done = 0;
	errcode_t err = vx_append_linear(fs, dir, name, ino, ft, &done);
	if (err || done)
		return err;
	err = ext2fs_link(fs, dir, name, ino, ft);
	if (err == EXT2_ET_DIR_NO_SPACE) {
		err = vx_grow_dir(fs, dir);
		if (!err)
			err = ext2fs_link(fs, dir, name, ino, ft);
	}
	return err;
}

static int vx_name_ok(const char *name)
{
	return name[0] && strlen(name) <= EXT2_NAME_LEN && !strchr(name, '/');
}

/* Touches mtime and ctime of a directory after its entries changed. */
static errcode_t vx_touch_dir(ext2_filsys fs, uint32_t dir, int64_t s, uint32_t ns)
{
	struct ext2_inode_large in;
	memset(&in, 0, sizeof in);
	errcode_t err = ext2fs_read_inode_full(fs, dir, (struct ext2_inode *)&in, sizeof in);
	if (err)
		return err;
	int extra = vx_has_extra(fs, &in);
	vx_set_time(&in.i_mtime, extra ? &in.i_mtime_extra : NULL, s, ns);
	vx_set_time(&in.i_ctime, extra ? &in.i_ctime_extra : NULL, s, ns);
	return ext2fs_write_inode_full(fs, dir, (struct ext2_inode *)&in, sizeof in);
}

/* Creates a non-directory inode (regular, device, fifo, socket) named name in dir. */
int vx_mknod(ext2_filsys fs, uint32_t dir, const char *name, uint32_t mode, uint32_t rdev,
	     uint32_t uid, uint32_t gid, int64_t s, uint32_t ns, int known_absent, uint32_t *out)
{
	if (!vx_name_ok(name))
		return strlen(name) > EXT2_NAME_LEN ? ENAMETOOLONG : EINVAL;
	if (vx_names_frozen(fs, dir))
		return EOPNOTSUPP;
	ext2_ino_t existing;
	if (!known_absent && ext2fs_lookup(fs, dir, name, strlen(name), NULL, &existing) == 0)
		return EEXIST;
	ext2_ino_t ino;
	errcode_t err = ext2fs_new_inode(fs, dir, mode, 0, &ino);
	if (err)
		return vx_errno(err);
	err = vx_link_grow(fs, dir, name, ino, vx_ft(mode));
	if (err)
		return vx_errno(err);
	vx_inode_alloc_stats(fs, ino, +1, 0);
	struct ext2_inode_large in;
	memset(&in, 0, sizeof in);
	in.i_mode = mode;
	in.i_links_count = 1;
	in.i_uid = uid & 0xffff;
	ext2fs_set_i_uid_high(in, uid >> 16);
	in.i_gid = gid & 0xffff;
	ext2fs_set_i_gid_high(in, gid >> 16);
	if (EXT2_INODE_SIZE(fs->super) > EXT2_GOOD_OLD_INODE_SIZE)
		in.i_extra_isize = sizeof(struct ext2_inode_large) - EXT2_GOOD_OLD_INODE_SIZE;
	int extra = vx_has_extra(fs, &in);
	vx_set_time(&in.i_atime, extra ? &in.i_atime_extra : NULL, s, ns);
	vx_set_time(&in.i_mtime, extra ? &in.i_mtime_extra : NULL, s, ns);
	vx_set_time(&in.i_ctime, extra ? &in.i_ctime_extra : NULL, s, ns);
	if (extra)
		vx_set_time(&in.i_crtime, &in.i_crtime_extra, s, ns);
	if (LINUX_S_ISCHR(mode) || LINUX_S_ISBLK(mode)) {
		uint32_t major = (rdev & 0xfff00) >> 8, minor = (rdev & 0xff) | ((rdev >> 12) & 0xfff00);
		if (major < 256 && minor < 256)
			in.i_block[0] = (major << 8) | minor;
		else
			in.i_block[1] = rdev;
	} else if (LINUX_S_ISREG(mode) && ext2fs_has_feature_extents(fs->super)) {
		ext2_extent_handle_t h;
		in.i_flags |= EXT4_EXTENTS_FL;
		err = ext2fs_extent_open2(fs, ino, (struct ext2_inode *)&in, &h);
		if (err)
			return vx_errno(err);
		ext2fs_extent_free(h);
	}
	err = ext2fs_write_new_inode(fs, ino, (struct ext2_inode *)&in);
	if (!err)
		err = ext2fs_write_inode_full(fs, ino, (struct ext2_inode *)&in, sizeof in);
	if (!err)
		err = vx_touch_dir(fs, dir, s, ns);
	if (err)
		return vx_errno(err);
	*out = ino;
	return 0;
}

/* Applies owner and times to a fresh inode made by a library helper. */
static errcode_t vx_own(ext2_filsys fs, uint32_t ino, uint32_t mode_bits, uint32_t uid, uint32_t gid, int64_t s, uint32_t ns)
{
	struct ext2_inode_large in;
	memset(&in, 0, sizeof in);
	errcode_t err = ext2fs_read_inode_full(fs, ino, (struct ext2_inode *)&in, sizeof in);
	if (err)
		return err;
	in.i_mode = (in.i_mode & LINUX_S_IFMT) | (mode_bits & 07777);
	in.i_uid = uid & 0xffff;
	ext2fs_set_i_uid_high(in, uid >> 16);
	in.i_gid = gid & 0xffff;
	ext2fs_set_i_gid_high(in, gid >> 16);
	int extra = vx_has_extra(fs, &in);
	vx_set_time(&in.i_atime, extra ? &in.i_atime_extra : NULL, s, ns);
	vx_set_time(&in.i_mtime, extra ? &in.i_mtime_extra : NULL, s, ns);
	vx_set_time(&in.i_ctime, extra ? &in.i_ctime_extra : NULL, s, ns);
	if (extra)
		vx_set_time(&in.i_crtime, &in.i_crtime_extra, s, ns);
	return ext2fs_write_inode_full(fs, ino, (struct ext2_inode *)&in, sizeof in);
}

int vx_mkdir(ext2_filsys fs, uint32_t dir, const char *name, uint32_t mode, uint32_t uid, uint32_t gid,
	     int64_t s, uint32_t ns, int known_absent, uint32_t *out)
{
	if (!vx_name_ok(name))
		return strlen(name) > EXT2_NAME_LEN ? ENAMETOOLONG : EINVAL;
	if (vx_names_frozen(fs, dir))
		return EOPNOTSUPP;
	ext2_ino_t ino;
	if (!known_absent && ext2fs_lookup(fs, dir, name, strlen(name), NULL, &ino) == 0)
		return EEXIST;
	errcode_t err = ext2fs_mkdir(fs, dir, 0, name);
	if (err == EXT2_ET_DIR_NO_SPACE) {
		err = vx_grow_dir(fs, dir);
		if (!err)
			err = ext2fs_mkdir(fs, dir, 0, name);
	}
	if (!err)
		err = ext2fs_lookup(fs, dir, name, strlen(name), NULL, &ino);
	if (!err)
		err = vx_own(fs, ino, mode, uid, gid, s, ns);
	if (!err)
		err = vx_touch_dir(fs, dir, s, ns);
	if (err)
		return vx_errno(err);
	*out = ino;
	return 0;
}

int vx_symlink(ext2_filsys fs, uint32_t dir, const char *name, const char *target, uint32_t uid, uint32_t gid,
	       int64_t s, uint32_t ns, int known_absent, uint32_t *out)
{
	if (!vx_name_ok(name))
		return strlen(name) > EXT2_NAME_LEN ? ENAMETOOLONG : EINVAL;
	if (vx_names_frozen(fs, dir))
		return EOPNOTSUPP;
	ext2_ino_t ino;
	if (!known_absent && ext2fs_lookup(fs, dir, name, strlen(name), NULL, &ino) == 0)
		return EEXIST;
	if (strlen(target) >= fs->blocksize)
		return ENAMETOOLONG;
	errcode_t err = ext2fs_symlink(fs, dir, 0, name, target);
	if (err == EXT2_ET_DIR_NO_SPACE) {
		err = vx_grow_dir(fs, dir);
		if (!err)
			err = ext2fs_symlink(fs, dir, 0, name, target);
	}
	if (!err)
		err = ext2fs_lookup(fs, dir, name, strlen(name), NULL, &ino);
	if (!err)
		err = vx_own(fs, ino, 0777, uid, gid, s, ns);
	if (!err)
		err = vx_touch_dir(fs, dir, s, ns);
	if (err)
		return vx_errno(err);
	*out = ino;
	return 0;
}

/* Adds a link count (delta +1/-1) and updates ctime. */
static errcode_t vx_adjust_links(ext2_filsys fs, uint32_t ino, int delta, int64_t s, uint32_t ns)
{
	struct ext2_inode_large in;
	memset(&in, 0, sizeof in);
	errcode_t err = ext2fs_read_inode_full(fs, ino, (struct ext2_inode *)&in, sizeof in);
	if (err)
		return err;
	if (delta > 0 && in.i_links_count >= 65000)  /* EXT4_LINK_MAX */
		return EXT2_ET_TOO_MANY_REFS;
	if (delta < 0 && in.i_links_count == 0)
		return 0;
	in.i_links_count += delta;
	vx_set_time(&in.i_ctime, vx_has_extra(fs, &in) ? &in.i_ctime_extra : NULL, s, ns);
	return ext2fs_write_inode_full(fs, ino, (struct ext2_inode *)&in, sizeof in);
}

int vx_link(ext2_filsys fs, uint32_t ino, uint32_t dir, const char *name, int64_t s, uint32_t ns, int known_absent)
{
	if (!vx_name_ok(name))
		return strlen(name) > EXT2_NAME_LEN ? ENAMETOOLONG : EINVAL;
	if (vx_names_frozen(fs, dir))
		return EOPNOTSUPP;
	ext2_ino_t existing;
	if (!known_absent && ext2fs_lookup(fs, dir, name, strlen(name), NULL, &existing) == 0)
		return EEXIST;
	struct ext2_inode in;
	errcode_t err = ext2fs_read_inode(fs, ino, &in);
	if (err)
		return vx_errno(err);
	if (LINUX_S_ISDIR(in.i_mode))
		return EPERM;
	err = vx_adjust_links(fs, ino, +1, s, ns);
	if (!err)
		err = vx_link_grow(fs, dir, name, ino, vx_ft(in.i_mode));
	if (!err)
		err = vx_touch_dir(fs, dir, s, ns);
	return vx_errno(err);
}

/* ---- primitives of the orphan list (src/orphans.rs) ----
 *
 * An inode whose last name goes while it is open is chained from s_last_orphan through
 * i_dtime until its last close frees it; the walks, the additions, the removals and the
 * release at a read-write mount are src/orphans.rs. Here: the list's head and the inode
 * numbers' bounds, an inode's link count and next pointer, and the dropping of the blocks
 * past an inode's size. */

struct vx_orphan_shape {
	uint32_t head; /* s_last_orphan */
	uint32_t first_ino;
	uint32_t inodes_count;
};

void vx_orphan_shape(ext2_filsys fs, struct vx_orphan_shape *out)
{
	out->head = fs->super->s_last_orphan;
	out->first_ino = EXT2_FIRST_INO(fs->super);
	out->inodes_count = fs->super->s_inodes_count;
}

void vx_set_orphan_head(ext2_filsys fs, uint32_t ino)
{
	fs->super->s_last_orphan = ino;
	ext2fs_mark_super_dirty(fs);
}

/* Inode ino's link count and next orphan (i_dtime). */
int vx_orphan_node(ext2_filsys fs, uint32_t ino, uint32_t *links, uint32_t *next)
{
	struct ext2_inode in;
	errcode_t err = ext2fs_read_inode(fs, ino, &in);
	if (err)
		return vx_errno(err);
	*links = in.i_links_count;
	*next = in.i_dtime;
	return 0;
}

int vx_set_orphan_next(ext2_filsys fs, uint32_t ino, uint32_t next)
{
	struct ext2_inode_large in;
	memset(&in, 0, sizeof in);
	errcode_t err = ext2fs_read_inode_full(fs, ino, (struct ext2_inode *)&in, sizeof in);
	if (err)
		return vx_errno(err);
	in.i_dtime = next;
	return vx_errno(ext2fs_write_inode_full(fs, ino, (struct ext2_inode *)&in, sizeof in));
}

/* An orphan with links left, already off the list (a truncate a crash cut short): its
 * orphan link cleared and its blocks past its size dropped. */
int vx_settle_orphan(ext2_filsys fs, uint32_t ino)
{
	struct ext2_inode in;
	errcode_t err = ext2fs_read_inode(fs, ino, &in);
	if (err)
		return vx_errno(err);
	in.i_dtime = 0;
	blk64_t end_blk = (EXT2_I_SIZE(&in) + fs->blocksize - 1) / fs->blocksize;
	if (ext2fs_inode_has_valid_blocks2(fs, &in) &&
	    ((err = ext2fs_write_inode(fs, ino, &in)) || (err = vx_unmap_last_block(fs, ino, end_blk)) ||
	     (err = ext2fs_read_inode(fs, ino, &in)) || (err = ext2fs_punch(fs, ino, &in, NULL, end_blk, ~0ULL))))
		return vx_errno(err);
	return vx_errno(ext2fs_write_inode(fs, ino, &in));
}

/* A run of blocks being released: freed together, one bitmap range at a time. */
struct vx_run {
	blk64_t start;
	blk64_t count;
};

static void vx_release_run(ext2_filsys fs, struct vx_run *run)
{
	if (run->count)
		ext2fs_block_alloc_stats_range(fs, run->start, (unsigned int)run->count, -1);
	run->count = 0;
}

static int vx_release_block_cb(ext2_filsys fs, blk64_t *blocknr, e2_blkcnt_t blockcnt, blk64_t ref_blk,
			       int ref_offset, void *priv)
{
	(void)blockcnt; (void)ref_blk; (void)ref_offset;
	struct vx_run *run = priv;
	if (run->count && *blocknr == run->start + run->count && run->count < (1u << 30)) {
		run->count++;
		return 0;
	}
	vx_release_run(fs, run);
	run->start = *blocknr;
	run->count = 1;
	return 0;
}

/* Frees an inode whose last link is gone and which nobody has open, off the orphan list
 * (orphans::free_inode unchains it first). */
int vx_free_inode(ext2_filsys fs, uint32_t ino)
{
	struct ext2_inode_large in;
	memset(&in, 0, sizeof in);
	errcode_t err = ext2fs_read_inode_full(fs, ino, (struct ext2_inode *)&in, sizeof in);
	if (err)
		return vx_errno(err);
	if (in.i_links_count > 0)
		return 0;
	if (ext2fs_file_acl_block(fs, (struct ext2_inode *)&in)) {
		/* Drop our reference to a shared extended attribute block. */
		blk64_t blk = ext2fs_file_acl_block(fs, (struct ext2_inode *)&in);
		__u32 count = 0;
		err = ext2fs_adjust_ea_refcount3(fs, blk, NULL, -1, &count, ino);
		if (err)
			return vx_errno(err);
		if (count == 0)
			ext2fs_block_alloc_stats2(fs, blk, -1);
		ext2fs_file_acl_block_set(fs, (struct ext2_inode *)&in, 0);
	}
	if (ext2fs_inode_has_valid_blocks2(fs, (struct ext2_inode *)&in)) {
		/* Every block, extent tree nodes included, goes back to the bitmaps as
		 * e2fsck and debugfs release a deleted inode's; not ext2fs_punch, which
		 * refuses a run that ends at the filesystem's last block
		 * (EXT2_ET_BAD_BLOCK_NUM, libext2fs 1.47) after cutting it from the
		 * tree, leaving an inode half deleted. */
		struct vx_run run = { 0, 0 };
		err = ext2fs_block_iterate3(fs, ino, BLOCK_FLAG_READ_ONLY, NULL, vx_release_block_cb, &run);
		if (err)
			return vx_errno(err);
		vx_release_run(fs, &run);
		ext2fs_iblk_set(fs, (struct ext2_inode *)&in, 0);
	}
	in.i_dtime = (uint32_t)time(NULL);
	err = ext2fs_write_inode_full(fs, ino, (struct ext2_inode *)&in, sizeof in);
	if (err)
		return vx_errno(err);
	vx_inode_alloc_stats(fs, ino, -1, LINUX_S_ISDIR(in.i_mode));
	return 0;
}

static int vx_empty_dir_cb(ext2_ino_t dir, int entry, struct ext2_dir_entry *dirent, int offset, int blocksize, char *buf, void *priv)
{
	(void)dir; (void)entry; (void)offset; (void)blocksize; (void)buf;
	int len = ext2fs_dirent_name_len(dirent);
	if (dirent->inode == 0 || (len == 1 && dirent->name[0] == '.') || (len == 2 && dirent->name[0] == '.' && dirent->name[1] == '.'))
		return 0;
	*(int *)priv = 0;
	return DIRENT_ABORT;
}

/* Removes name from dir. Returns the inode and whether its last link went
 * (then the caller frees it with vx_free_inode once no handle is open). */
int vx_unlink(ext2_filsys fs, uint32_t dir, const char *name, int want_dir, int64_t s, uint32_t ns,
	      uint32_t *out_ino, int *out_last)
{
	if (vx_names_frozen(fs, dir))
		return EOPNOTSUPP;
	ext2_ino_t ino;
	errcode_t err = ext2fs_lookup(fs, dir, name, strlen(name), NULL, &ino);
	if (err)
		return vx_errno(err);
	struct ext2_inode in;
	err = ext2fs_read_inode(fs, ino, &in);
	if (err)
		return vx_errno(err);
	int is_dir = LINUX_S_ISDIR(in.i_mode);
	if (want_dir && !is_dir)
		return ENOTDIR;
	if (!want_dir && is_dir)
		return EISDIR;
	if (is_dir) {
		int empty = 1;
		err = ext2fs_dir_iterate2(fs, ino, 0, NULL, vx_empty_dir_cb, &empty);
		if (err)
			return vx_errno(err);
		if (!empty)
			return ENOTEMPTY;
	}
	err = ext2fs_unlink(fs, dir, name, ino, 0);
	if (err)
		return vx_errno(err);
	if (is_dir) {
		/* The directory's own "." and the parent's ".." reference. */
		struct ext2_inode_large d;
		memset(&d, 0, sizeof d);
		err = ext2fs_read_inode_full(fs, ino, (struct ext2_inode *)&d, sizeof d);
		if (!err) {
			d.i_links_count = 0;
			err = ext2fs_write_inode_full(fs, ino, (struct ext2_inode *)&d, sizeof d);
		}
		if (!err)
			err = vx_adjust_links(fs, dir, -1, s, ns);
	} else {
		err = vx_adjust_links(fs, ino, -1, s, ns);
	}
	if (!err)
		err = vx_touch_dir(fs, dir, s, ns);
	if (err)
		return vx_errno(err);
	struct ext2_inode after;
	err = ext2fs_read_inode(fs, ino, &after);
	if (err)
		return vx_errno(err);
	*out_ino = ino;
	*out_last = after.i_links_count == 0;
	return 0;
}

/* Points the ".." entry of directory ino at new_parent. */
struct vx_dotdot {
	uint32_t parent;
};

static int vx_dotdot_cb(ext2_ino_t dir, int entry, struct ext2_dir_entry *dirent, int offset, int blocksize, char *buf, void *priv)
{
	(void)dir; (void)offset; (void)blocksize; (void)buf;
	if (entry != DIRENT_DOT_DOT_FILE)
		return 0;
	dirent->inode = ((struct vx_dotdot *)priv)->parent;
	return DIRENT_CHANGED | DIRENT_ABORT;
}

static errcode_t vx_set_dotdot(ext2_filsys fs, uint32_t ino, uint32_t parent)
{
	struct vx_dotdot dd = { parent };
	return ext2fs_dir_iterate2(fs, ino, DIRENT_FLAG_INCLUDE_EMPTY, NULL, vx_dotdot_cb, &dd);
}

/* Is ancestor a (possibly equal) ancestor of dir? 1 yes, 0 no, -1 the ".."
 * chain is corrupt (unreadable, or a cycle that never reaches the root). */
static int vx_is_ancestor(ext2_filsys fs, uint32_t ancestor, uint32_t dir)
{
	for (int depth = 0; depth < 4096; depth++) {
		if (dir == ancestor)
			return 1;
		if (dir == EXT2_ROOT_INO)
			return 0;
		ext2_ino_t parent;
		if (ext2fs_lookup(fs, dir, "..", 2, NULL, &parent) || parent == dir || parent == 0)
			return -1;
		dir = parent;
	}
	return -1;
}

/* rename(2) with RENAME_NOREPLACE (1) and RENAME_EXCHANGE (2). When a target
 * file loses its last link, its inode is returned in *freed for the caller to
 * free once it is closed. */
int vx_rename(ext2_filsys fs, uint32_t sdir, const char *sname, uint32_t ddir, const char *dname, int flags,
	      int64_t s, uint32_t ns, uint32_t *freed)
{
	*freed = 0;
	if (!vx_name_ok(dname))
		return strlen(dname) > EXT2_NAME_LEN ? ENAMETOOLONG : EINVAL;
	if (vx_names_frozen(fs, sdir) || vx_names_frozen(fs, ddir))
		return EOPNOTSUPP;
	ext2_ino_t src, dst = 0;
	errcode_t err = ext2fs_lookup(fs, sdir, sname, strlen(sname), NULL, &src);
	if (err)
		return vx_errno(err);
	int have_dst = ext2fs_lookup(fs, ddir, dname, strlen(dname), NULL, &dst) == 0;
	struct ext2_inode sin, din;
	if ((err = ext2fs_read_inode(fs, src, &sin)))
		return vx_errno(err);
	int sdirp = LINUX_S_ISDIR(sin.i_mode);
	if (have_dst && dst == src)
		return 0;
	if (sdirp && sdir != ddir) {
		int a = vx_is_ancestor(fs, src, ddir);
		if (a)
			return a < 0 ? EUCLEAN : EINVAL;
	}
	if (flags & 2) {
		if (!have_dst)
			return ENOENT;
		if ((err = ext2fs_read_inode(fs, dst, &din)))
			return vx_errno(err);
		int ddirp = LINUX_S_ISDIR(din.i_mode);
		if (ddirp && sdir != ddir) {
			int a = vx_is_ancestor(fs, dst, sdir);
			if (a)
				return a < 0 ? EUCLEAN : EINVAL;
		}
		/* Swap the two entries: remove both, add them crossed. */
		if ((err = ext2fs_unlink(fs, sdir, sname, src, 0)) || (err = ext2fs_unlink(fs, ddir, dname, dst, 0)))
			return vx_errno(err);
		if ((err = vx_link_grow(fs, sdir, sname, dst, vx_ft(din.i_mode))) ||
		    (err = vx_link_grow(fs, ddir, dname, src, vx_ft(sin.i_mode))))
			return vx_errno(err);
		if (sdir != ddir) {
			if (sdirp && (err = vx_set_dotdot(fs, src, ddir)))
				return vx_errno(err);
			if (ddirp && (err = vx_set_dotdot(fs, dst, sdir)))
				return vx_errno(err);
			if (sdirp != ddirp) {
				/* A directory moved one way and a file the other. */
				uint32_t gains = sdirp ? ddir : sdir, loses = sdirp ? sdir : ddir;
				if ((err = vx_adjust_links(fs, gains, +1, s, ns)) || (err = vx_adjust_links(fs, loses, -1, s, ns)))
					return vx_errno(err);
			}
		}
		vx_touch_dir(fs, sdir, s, ns);
		vx_touch_dir(fs, ddir, s, ns);
		return 0;
	}
	if (have_dst) {
		if (flags & 1)
			return EEXIST;
		if ((err = ext2fs_read_inode(fs, dst, &din)))
			return vx_errno(err);
		int ddirp = LINUX_S_ISDIR(din.i_mode);
		if (sdirp && !ddirp)
			return ENOTDIR;
		if (!sdirp && ddirp)
			return EISDIR;
		uint32_t gone;
		int last = 0;
		int e = vx_unlink(fs, ddir, dname, ddirp, s, ns, &gone, &last);
		if (e)
			return e;
		if (last)
			*freed = gone;
	}
	if ((err = vx_link_grow(fs, ddir, dname, src, vx_ft(sin.i_mode))))
		return vx_errno(err);
	if ((err = ext2fs_unlink(fs, sdir, sname, src, 0)))
		return vx_errno(err);
	if (sdirp && sdir != ddir) {
		if ((err = vx_set_dotdot(fs, src, ddir)) || (err = vx_adjust_links(fs, ddir, +1, s, ns)) ||
		    (err = vx_adjust_links(fs, sdir, -1, s, ns)))
			return vx_errno(err);
	}
	/* rename changes the moved inode's ctime. */
	vx_adjust_links(fs, src, 0, s, ns);
	vx_touch_dir(fs, sdir, s, ns);
	if (ddir != sdir)
		vx_touch_dir(fs, ddir, s, ns);
	return 0;
}

int vx_file_write(ext2_file_t f, uint64_t offset, const void *buf, size_t len, size_t *done)
{
	errcode_t err = ext2fs_file_llseek(f, offset, EXT2_SEEK_SET, NULL);
	if (err)
		return vx_errno(err);
	size_t total = 0;
	while (total < len) {
		unsigned int n = 0;
		size_t want = len - total > 0x40000000 ? 0x40000000 : len - total;
		err = ext2fs_file_write(f, (const char *)buf + total, (unsigned int)want, &n);
		if (err) {
			if (total)
				break; /* a short write: report what went in */
			return vx_errno(err);
		}
		if (n == 0)
			break;
		total += n;
	}
	*done = total;
	return total || !len ? 0 : ENOSPC;
}

int vx_file_flush(ext2_file_t f)
{
	return vx_errno(ext2fs_file_flush(f));
}

/* Truncates or extends (with a hole) the file ino to size. */
/* Unmaps and frees the filesystem's last block if inode ino maps it at a
 * logical block >= from: libext2fs 1.47's punch refuses a freed run that ends
 * at that block (EXT2_ET_BAD_BLOCK_NUM) after cutting it from the extent tree,
 * so a truncate or an unlink would leave the inode half done. The block ends
 * its extent (nothing lies after it), so unmapping it only shortens one
 * extent: no split, no new block, even on a full disk. */
static errcode_t vx_unmap_last_block(ext2_filsys fs, uint32_t ino, blk64_t from)
{
	struct ext2_inode in;
	errcode_t err = ext2fs_read_inode(fs, ino, &in);
	if (err || !(in.i_flags & EXT4_EXTENTS_FL) || (in.i_flags & EXT4_INLINE_DATA_FL))
		return err;
	blk64_t last = ext2fs_blocks_count(fs->super) - 1;
	ext2_extent_handle_t h;
	if ((err = ext2fs_extent_open2(fs, ino, &in, &h)))
		return err;
	struct ext2fs_extent ext;
	int found = 0;
	for (err = ext2fs_extent_get(h, EXT2_EXTENT_ROOT, &ext); !err; err = ext2fs_extent_get(h, EXT2_EXTENT_NEXT_LEAF, &ext)) {
		if ((ext.e_flags & EXT2_EXTENT_FLAGS_LEAF) && ext.e_len && ext.e_pblk + ext.e_len - 1 == last) {
			found = 1;
			break;
		}
	}
	if (!found) {
		ext2fs_extent_free(h);
		return err == EXT2_ET_EXTENT_NO_NEXT || err == EXT2_ET_NO_CURRENT_NODE ? 0 : err;
	}
	if (ext.e_lblk + ext.e_len - 1 < from) {
		ext2fs_extent_free(h);
		return 0;
	}
	if (ext.e_len > 1) {
		ext.e_len--;
		err = ext2fs_extent_replace(h, 0, &ext);
	} else {
		err = ext2fs_extent_delete(h, 0);
	}
	if (!err) {
		err = ext2fs_extent_fix_parents(h);
		if (err == EXT2_ET_NO_CURRENT_NODE)
			err = 0;
	}
	ext2fs_extent_free(h);
	if (err)
		return err;
	/* The handle wrote the tree; the block and its count go now. */
	if ((err = ext2fs_read_inode(fs, ino, &in)))
		return err;
	ext2fs_block_alloc_stats2(fs, last, -1);
	if ((err = ext2fs_iblk_sub_blocks(fs, &in, 1)))
		return err;
	return ext2fs_write_inode(fs, ino, &in);
}

int vx_truncate(ext2_filsys fs, uint32_t ino, uint64_t size)
{
	ext2_file_t f;
	errcode_t err = vx_unmap_last_block(fs, ino, (size + fs->blocksize - 1) / fs->blocksize);
	if (err)
		return vx_errno(err);
	err = ext2fs_file_open(fs, ino, EXT2_FILE_WRITE, &f);
	if (err)
		return vx_errno(err);
	err = ext2fs_file_set_size2(f, size);
	errcode_t err2 = ext2fs_file_close(f);
	return vx_errno(err ? err : err2);
}

/* setattr for mode, owner and times; has_* say which fields apply. */
int vx_setattr(ext2_filsys fs, uint32_t ino, int has_mode, uint32_t mode, int has_uid, uint32_t uid, int has_gid,
	       uint32_t gid, int has_atime, int64_t as, uint32_t ans, int has_mtime, int64_t ms, uint32_t mns,
	       int64_t now_s, uint32_t now_ns)
{
	struct ext2_inode_large in;
	memset(&in, 0, sizeof in);
	errcode_t err = ext2fs_read_inode_full(fs, ino, (struct ext2_inode *)&in, sizeof in);
	if (err)
		return vx_errno(err);
	int extra = vx_has_extra(fs, &in);
	if (has_mode)
		in.i_mode = (in.i_mode & LINUX_S_IFMT) | (mode & 07777);
	if (has_uid) {
		in.i_uid = uid & 0xffff;
		ext2fs_set_i_uid_high(in, uid >> 16);
	}
	if (has_gid) {
		in.i_gid = gid & 0xffff;
		ext2fs_set_i_gid_high(in, gid >> 16);
	}
	if (has_atime)
		vx_set_time(&in.i_atime, extra ? &in.i_atime_extra : NULL, as, ans);
	if (has_mtime)
		vx_set_time(&in.i_mtime, extra ? &in.i_mtime_extra : NULL, ms, mns);
	vx_set_time(&in.i_ctime, extra ? &in.i_ctime_extra : NULL, now_s, now_ns);
	return vx_errno(ext2fs_write_inode_full(fs, ino, (struct ext2_inode *)&in, sizeof in));
}

/* Sets (value != NULL) or removes (value == NULL) one extended attribute.
 * flags: 1 = XATTR_CREATE, 2 = XATTR_REPLACE. */
int vx_setxattr(ext2_filsys fs, uint32_t ino, const char *name, const void *value, size_t len, int flags)
{
	struct ext2_xattr_handle *h;
	errcode_t err = ext2fs_xattrs_open(fs, ino, &h);
	if (err)
		return vx_errno(err);
	err = ext2fs_xattrs_read(h);
	if (!err) {
		void *old = NULL;
		size_t old_len = 0;
		errcode_t found = ext2fs_xattr_get(h, name, &old, &old_len);
		if (!found)
			ext2fs_free_mem(&old);
		if ((flags & 1) && !found)
			err = EEXIST;
		else if (((flags & 2) || !value) && found)
			err = EXT2_ET_EA_KEY_NOT_FOUND;
		else if (value)
			err = ext2fs_xattr_set(h, name, value, len);
		else
			err = ext2fs_xattr_remove(h, name);
	}
	errcode_t err2 = ext2fs_xattrs_close(&h);
	return vx_errno(err ? err : err2);
}

/* ---- the journal, for in-memory replay on read-only mounts ---- */

int vx_needs_recovery(ext2_filsys fs)
{
	return ext2fs_has_feature_journal_needs_recovery(fs->super) ? 1 : 0;
}

/* Physical block of each block of the internal journal, in order; *count
 * is set to the journal's length (blocks beyond `max` are not written). */
int vx_journal_map(ext2_filsys fs, uint64_t *out, size_t max, size_t *count)
{
	ext2_ino_t ino = fs->super->s_journal_inum;
	if (!ext2fs_has_feature_journal(fs->super) || ino == 0 || fs->super->s_journal_dev)
		return EOPNOTSUPP;
	struct ext2_inode in;
	errcode_t err = ext2fs_read_inode(fs, ino, &in);
	if (err)
		return vx_errno(err);
	uint64_t blocks = EXT2_I_SIZE(&in) / fs->blocksize;
	*count = (size_t)blocks;
	for (uint64_t i = 0; i < blocks && i < max; i++) {
		blk64_t phys = 0;
		err = ext2fs_bmap2(fs, ino, &in, NULL, 0, i, NULL, &phys);
		if (err)
			return vx_errno(err);
		if (phys == 0)
			return EUCLEAN;
		out[i] = phys;
	}
	return 0;
}

unsigned int vx_block_size(ext2_filsys fs)
{
	return fs->blocksize;
}

/* ---- primitives of the metadata write order (src/write_order.rs) ----
 *
 * libext2fs keeps bitmaps, group descriptors and the superblock in memory and writes them
 * at ext2fs_flush/close. The order in which the driver writes them after every modifying
 * operation, and why a kill -9 between any two of those writes is harmless, is
 * src/write_order.rs: which groups changed, the three phases, the snapshots. Here is what
 * it needs of libext2fs's structs: the marks libext2fs's allocation callbacks leave between
 * two syncs (vx_take_marks), a group's counts, descriptor and bitmap image, and the writes of
 * a bitmap, of a descriptor block and of the superblock. */

/* Most newly allocated blocks recorded between two syncs (write_order.rs writes them first
 * in its phase 2; past it they go with the rest). */
#define VX_FRESH_MAX 64

/* What the allocation callbacks record between two syncs, and the caller's reserve. Only on
 * a read-write mount (fs->priv_data). */
struct vx_meta {
	dgrp_t groups;
	unsigned char *dirty;     /* groups touched by block (de)allocation */
	unsigned char *ino_dirty; /* groups touched by inode (de)allocation */
	uint64_t fresh[VX_FRESH_MAX]; /* single blocks allocated since the last sync */
	size_t nfresh;
	blk64_t reserve;          /* blocks the current caller may not take (vx_set_caller) */
};

static struct vx_meta *vx_meta_of(ext2_filsys fs)
{
	return fs->priv_data;
}

/* Lets dirty blocks of the device's cache out: all (VX_WB_ALL), or those that overlap
 * (VX_WB_WITHIN) or miss (VX_WB_OUTSIDE) the n byte ranges (start, end pairs). */
int vx_write_back(ext2_filsys fs, const uint64_t *pairs, size_t n, int which)
{
	struct vx_dev *dev = ((struct vx_chan *)fs->io->private_data)->dev;
	return vx_errno(dev->write_back(dev->ctx, pairs, n, which));
}

/* Before each operation: whether its caller may use the blocks reserved for root
 * (s_r_blocks_count), as the kernel's ext4_has_free_clusters decides it (the Rust side
 * knows the caller). Everyone else gets ENOSPC once only the reserve is left. */
void vx_set_caller(ext2_filsys fs, int privileged)
{
	struct vx_meta *m = vx_meta_of(fs);
	if (m)
		m->reserve = privileged ? 0 : ext2fs_r_blocks_count(fs->super);
}

/* s_def_resuid and s_def_resgid: who else may use the reserve. */
void vx_reserved_ids(ext2_filsys fs, uint32_t *uid, uint32_t *gid)
{
	*uid = fs->super->s_def_resuid;
	*gid = fs->super->s_def_resgid;
}

/* Free blocks past the current caller's reserve. */
static blk64_t vx_allowed_blocks(ext2_filsys fs)
{
	struct vx_meta *m = vx_meta_of(fs);
	blk64_t free = ext2fs_free_blocks_count(fs->super);
	blk64_t reserve = m ? m->reserve : 0;
	return free > reserve ? free - reserve : 0;
}

/* Every single-block allocation of libext2fs (extent tree nodes, directory blocks, xattr
 * blocks, the file API's data blocks) comes here: the default allocator, after the reserve. */
static errcode_t vx_get_alloc_block(ext2_filsys fs, blk64_t goal, blk64_t *ret)
{
	if (vx_allowed_blocks(fs) == 0)
		return EXT2_ET_BLOCK_ALLOC_FAIL;
	return ext2fs_new_block2(fs, goal, fs->block_map, ret);
}

static void vx_mark_blocks(ext2_filsys fs, blk64_t blk, blk64_t num)
{
	struct vx_meta *m = vx_meta_of(fs);
	if (!m || num == 0)
		return;
	dgrp_t first = ext2fs_group_of_blk2(fs, blk), last = ext2fs_group_of_blk2(fs, blk + num - 1);
	for (dgrp_t g = first; g <= last && g < m->groups; g++)
		m->dirty[g] = 1;
}

/* Single blocks: metadata the operation may point at (phase 2 writes new ones first). */
static void vx_block_stats_cb(ext2_filsys fs, blk64_t blk, int inuse)
{
	struct vx_meta *m = vx_meta_of(fs);
	vx_mark_blocks(fs, blk, 1);
	if (m && inuse > 0 && m->nfresh < VX_FRESH_MAX)
		m->fresh[m->nfresh++] = blk;
}

static void vx_block_range_cb(ext2_filsys fs, blk64_t blk, blk_t num, int inuse)
{
	(void)inuse;
	vx_mark_blocks(fs, blk, num);
}

/* ext2fs_inode_alloc_stats2, noting the group whose inode bitmap changed. */
static void vx_inode_alloc_stats(ext2_filsys fs, ext2_ino_t ino, int inuse, int isdir)
{
	ext2fs_inode_alloc_stats2(fs, ino, inuse, isdir);
	struct vx_meta *m = vx_meta_of(fs);
	dgrp_t g = ext2fs_group_of_ino(fs, ino);
	if (m && g < m->groups)
		m->ino_dirty[g] = 1;
}

static void vx_meta_release(struct vx_meta *m)
{
	free(m->dirty);
	free(m->ino_dirty);
	free(m);
}

static errcode_t vx_meta_init(ext2_filsys fs)
{
	struct vx_meta *m = calloc(1, sizeof *m);
	if (!m)
		return EXT2_ET_NO_MEMORY;
	m->groups = fs->group_desc_count;
	m->dirty = calloc(m->groups, 1);
	m->ino_dirty = calloc(m->groups, 1);
	if (!m->dirty || !m->ino_dirty) {
		vx_meta_release(m);
		return EXT2_ET_NO_MEMORY;
	}
	fs->priv_data = m;
	ext2fs_set_alloc_block_callback(fs, vx_get_alloc_block, NULL);
	ext2fs_set_block_alloc_stats_callback(fs, vx_block_stats_cb, NULL);
	ext2fs_set_block_alloc_stats_range_callback(fs, vx_block_range_cb, NULL);
	return 0;
}

static void vx_meta_free(ext2_filsys fs)
{
	struct vx_meta *m = vx_meta_of(fs);
	if (!m)
		return;
	vx_meta_release(m);
	fs->priv_data = NULL;
}

/* What write_order.rs needs to size its tables. */
struct vx_meta_shape {
	uint32_t groups;
	uint32_t desc_size;      /* bytes of one group descriptor */
	uint32_t desc_per_block;
	uint32_t desc_blocks;
	uint32_t block_size;
	uint32_t inode_blocks_per_group;
	uint32_t fresh_max;      /* VX_FRESH_MAX */
	int32_t group_desc_csum; /* uninit_bg or metadata_csum: the uninitialised-group flags count */
};

/* EROFS on a read-only mount (no marks are kept). */
int vx_meta_shape(ext2_filsys fs, struct vx_meta_shape *out)
{
	if (!vx_meta_of(fs) || !(fs->flags & EXT2_FLAG_RW))
		return EROFS;
	out->groups = fs->group_desc_count;
	out->desc_size = EXT2_DESC_SIZE(fs->super);
	out->desc_per_block = EXT2_DESC_PER_BLOCK(fs->super);
	out->desc_blocks = (uint32_t)fs->desc_blocks;
	out->block_size = fs->blocksize;
	out->inode_blocks_per_group = fs->inode_blocks_per_group;
	out->fresh_max = VX_FRESH_MAX;
	out->group_desc_csum = ext2fs_has_group_desc_csum(fs);
	return 0;
}

/* Adds the groups marked since the last call to dirty and ino_dirty (m->groups bytes each),
 * copies the fresh blocks to `fresh` (room for VX_FRESH_MAX) and returns their number; the
 * marks are cleared. */
size_t vx_take_marks(ext2_filsys fs, unsigned char *dirty, unsigned char *ino_dirty, uint64_t *fresh)
{
	struct vx_meta *m = vx_meta_of(fs);
	if (!m)
		return 0;
	for (dgrp_t g = 0; g < m->groups; g++) {
		dirty[g] |= m->dirty[g];
		ino_dirty[g] |= m->ino_dirty[g];
	}
	memset(m->dirty, 0, m->groups);
	memset(m->ino_dirty, 0, m->groups);
	size_t n = m->nfresh;
	memcpy(fresh, m->fresh, n * sizeof *fresh);
	m->nfresh = 0;
	return n;
}

/* What a group's bitmaps are known by: a change of these descriptor fields means a bitmap
 * changed. */
struct vx_group_counts {
	uint64_t free_blocks;
	uint32_t free_inodes;
	uint32_t itable_unused;
	uint16_t flags;
};

void vx_group_counts(ext2_filsys fs, uint32_t g, struct vx_group_counts *out)
{
	out->free_blocks = ext2fs_bg_free_blocks_count(fs, g);
	out->free_inodes = ext2fs_bg_free_inodes_count(fs, g);
	out->itable_unused = ext2fs_bg_itable_unused(fs, g);
	out->flags = ext2fs_bg_flags(fs, g);
}

/* The first block of group g's inode table (0: none). */
uint64_t vx_inode_table(ext2_filsys fs, uint32_t g)
{
	return ext2fs_inode_table_loc(fs, g);
}

/* Group g's descriptor as it is in memory: desc_size bytes. */
void vx_group_desc(ext2_filsys fs, uint32_t g, void *out)
{
	memcpy(out, ext2fs_group_desc(fs, fs->group_desc, g), EXT2_DESC_SIZE(fs->super));
}

/* The superblock as it is in memory: SUPERBLOCK_SIZE bytes. */
void vx_super_bytes(ext2_filsys fs, void *out)
{
	memcpy(out, fs->super, SUPERBLOCK_SIZE);
}

enum { VX_BLOCK_BITMAP = 1, VX_INODE_BITMAP = 2 };

/* Group g's bitmap `kind` as ext2fs_write_bitmaps lays it on disk, into buf (one block);
 * *nbytes gets its meaningful length, *where its block (0: none, or not written while
 * uninitialised). */
int vx_bitmap_image(ext2_filsys fs, uint32_t g, int kind, void *out, size_t *nbytes, uint64_t *where)
{
	int csum = ext2fs_has_group_desc_csum(fs);
	char *buf = out;
	errcode_t err;
	*where = 0;
	memset(buf, 0xff, fs->blocksize);
	if (kind == VX_BLOCK_BITMAP) {
		if (!fs->block_map || (csum && ext2fs_bg_flags_test(fs, g, EXT2_BG_BLOCK_UNINIT)))
			return 0;
		*nbytes = EXT2_CLUSTERS_PER_GROUP(fs->super) / 8;
		blk64_t start = EXT2FS_B2C(fs, fs->super->s_first_data_block) + (blk64_t)g * (*nbytes << 3);
		if ((err = ext2fs_get_block_bitmap_range2(fs->block_map, start, *nbytes << 3, buf)))
			return vx_errno(err);
		if (g == fs->group_desc_count - 1) {
			/* Padding past the end of the filesystem reads as in use. */
			blk64_t nbits = EXT2FS_NUM_B2C(fs, ((ext2fs_blocks_count(fs->super) - (__u64)fs->super->s_first_data_block) %
							    (__u64)EXT2_BLOCKS_PER_GROUP(fs->super)));
			if (nbits)
				for (blk64_t j = nbits; j < (blk64_t)fs->blocksize * 8; j++)
					ext2fs_set_bit(j, buf);
		}
		*where = ext2fs_block_bitmap_loc(fs, g);
	} else {
		if (!fs->inode_map || (csum && ext2fs_bg_flags_test(fs, g, EXT2_BG_INODE_UNINIT)))
			return 0;
		*nbytes = EXT2_INODES_PER_GROUP(fs->super) / 8;
		if ((err = ext2fs_get_inode_bitmap_range2(fs->inode_map, 1 + (__u64)g * (*nbytes << 3), *nbytes << 3, buf)))
			return vx_errno(err);
		*where = ext2fs_inode_bitmap_loc(fs, g);
	}
	return 0;
}

/* One block as the device (or its cache) holds it. */
int vx_read_block(ext2_filsys fs, uint64_t block, void *buf)
{
	return vx_errno(io_channel_read_blk64(fs->io, block, 1, buf));
}

/* Writes the bitmap image buf (nbytes meaningful) of group g to its block `where`, after
 * setting its checksum and the group descriptor's in memory. */
int vx_write_bitmap(ext2_filsys fs, uint32_t g, int kind, void *buf, size_t nbytes, uint64_t where)
{
	errcode_t err = kind == VX_BLOCK_BITMAP ? ext2fs_block_bitmap_csum_set(fs, g, buf, nbytes)
						: ext2fs_inode_bitmap_csum_set(fs, g, buf, nbytes);
	if (err)
		return vx_errno(err);
	ext2fs_group_desc_csum_set(fs, g);
	return vx_errno(io_channel_write_blk64(fs->io, where, 1, buf));
}

/* Writes descriptor block i (of desc_blocks) as it is in memory; *where gets its block. */
int vx_write_desc_block(ext2_filsys fs, uint32_t i, uint64_t *where)
{
	*where = ext2fs_descriptor_block_loc2(fs, fs->super->s_first_data_block, i);
	return vx_errno(io_channel_write_blk64(fs->io, *where, 1, (char *)fs->group_desc + (size_t)i * fs->blocksize));
}

/* Writes the primary superblock (SUPERBLOCK_SIZE bytes at SUPERBLOCK_OFFSET) with a new
 * write time and its checksum. fs->orig_super then says what the device holds: the flush of
 * ext2fs_close writes only the fields that differ from it, so a field changed back to its
 * value at the last ext2fs_flush (s_last_orphan, a free count) would stay on the device as
 * this wrote it, under a checksum computed without it. */
int vx_write_super(ext2_filsys fs)
{
	fs->super->s_wtime = (uint32_t)time(NULL);
	ext2fs_superblock_csum_set(fs, fs->super);
	errcode_t err = io_channel_write_byte(fs->io, SUPERBLOCK_OFFSET, SUPERBLOCK_SIZE, fs->super);
	if (!err && fs->orig_super)
		memcpy(fs->orig_super, fs->super, SUPERBLOCK_SIZE); /* the bytes just written */
	return vx_errno(err);
}

/* ---- the data path for writes: holes allocated as whole runs ---- */

/* ext2fs_new_range short of the filesystem's last block: libext2fs 1.47's
 * punch refuses a freed run that ends there (see vx_free_inode), so files this
 * driver writes never hold it and stay truncatable. */
static errcode_t vx_new_range(ext2_filsys fs, blk64_t goal, blk64_t want, blk64_t *pblk, blk64_t *plen)
{
	blk64_t last = ext2fs_blocks_count(fs->super) - 1;
	blk64_t allowed = vx_allowed_blocks(fs);
	if (allowed == 0)
		return EXT2_ET_BLOCK_ALLOC_FAIL;
	if (want > allowed)
		want = allowed;
	errcode_t err = ext2fs_new_range(fs, 0, goal, want, NULL, pblk, plen);
	if (err)
		return err;
	if (*pblk + *plen <= last)
		return 0;
	if (*pblk < last) {
		*plen = last - *pblk;
		return 0;
	}
	/* Only the last block was found from goal: look again from the start. */
	if (goal > fs->super->s_first_data_block) {
		err = ext2fs_new_range(fs, 0, fs->super->s_first_data_block, want, NULL, pblk, plen);
		if (!err && *pblk < last) {
			if (*pblk + *plen > last)
				*plen = last - *pblk;
			return 0;
		}
	}
	return EXT2_ET_BLOCK_ALLOC_FAIL;
}

/* Maps the hole [lblk, lblk + len) of an extent file to newly allocated
 * blocks, appending to the extent on the left when physically contiguous
 * (so a file written front to back stays one extent per 128 MiB).
 * *mapped gets how many blocks from lblk on were mapped before any error. */
static errcode_t vx_map_hole(ext2_filsys fs, uint32_t ino, struct ext2_inode *in, ext2_extent_handle_t h,
			     blk64_t lblk, blk64_t len, blk64_t *mapped)
{
	*mapped = 0;
	while (*mapped < len) {
		blk64_t at = lblk + *mapped, want = len - *mapped, pblk = 0, plen = 0;
		struct ext2fs_extent left;
		int have_left = 0;
		if (at > 0 && ext2fs_extent_goto2(h, 0, at - 1) == 0 &&
		    ext2fs_extent_get(h, EXT2_EXTENT_CURRENT, &left) == 0 &&
		    left.e_lblk + left.e_len == at && !(left.e_flags & EXT2_EXTENT_FLAGS_UNINIT))
			have_left = 1;
		blk64_t goal = have_left ? left.e_pblk + left.e_len : ext2fs_find_inode_goal(fs, ino, in, at);
		errcode_t err = vx_new_range(fs, goal, want, &pblk, &plen);
		if (err == EXT2_ET_BLOCK_ALLOC_FAIL && goal)
			err = vx_new_range(fs, fs->super->s_first_data_block, want, &pblk, &plen);
		if (err)
			return err;
		if (plen > want)
			plen = want;
		if (plen > EXT_INIT_MAX_LEN)
			plen = EXT_INIT_MAX_LEN;
		ext2fs_block_alloc_stats_range(fs, pblk, plen, +1);
		if ((err = ext2fs_iblk_add_blocks(fs, in, plen)))
			return err;
		if (have_left && left.e_pblk + left.e_len == pblk && left.e_len + plen <= EXT_INIT_MAX_LEN) {
			left.e_len += plen;
			err = ext2fs_extent_replace(h, 0, &left);
		} else {
			struct ext2fs_extent newex = { .e_pblk = pblk, .e_lblk = at, .e_len = (uint32_t)plen, .e_flags = 0 };
			struct ext2fs_extent cur;
			ext2fs_extent_goto2(h, 0, at);
			errcode_t e = ext2fs_extent_get(h, EXT2_EXTENT_CURRENT, &cur);
			int op = 0;
			if (e == 0 && cur.e_lblk <= at)
				op = EXT2_EXTENT_INSERT_AFTER;
			else if (e && e != EXT2_ET_NO_CURRENT_NODE && e != EXT2_ET_EXTENT_NOT_FOUND)
				err = e;
			if (!err)
				err = ext2fs_extent_insert(h, op, &newex);
		}
		if (!err)
			err = ext2fs_extent_fix_parents(h);
		if (err) {
			/* Unmapped: give the blocks back. */
			ext2fs_block_alloc_stats_range(fs, pblk, plen, -1);
			ext2fs_iblk_sub_blocks(fs, in, plen);
			return err;
		}
		*mapped += plen;
	}
	return 0;
}

/* ---- primitives of the data paths (src/extent_read.rs, src/extent_write.rs) ----
 *
 * pread(2) and pwrite(2) are driven from Rust. extent_read.rs: the request
 * clamped to the size, which files take the libext2fs file API, holes and
 * unwritten extents as zeros, one device read per physical run (partial
 * edge blocks through a buffer), the prefetch ahead of a sequential reader.
 * extent_write.rs: which files take the file API, the holes of the range
 * allocated front to back, the data one physical run per device call with
 * partial edge blocks merged, and the inode written once. Here is what
 * touches libext2fs's structs: a session holding the inode and its extent
 * handle (src/session.rs), extent lookups, the allocation of a hole
 * (vx_map_hole above), the mapping of one block, the device read and write
 * of a run, the prefetch, the file API's read and write, and the inode's
 * update. */

struct vx_wr {
	ext2_filsys fs;
	uint32_t ino;
	struct ext2_inode_large in;
	ext2_extent_handle_t h;
	struct ext2fs_extent cur; /* what the last vx_wr_extent got */
};

/* Mirrors what the data paths need of the inode. */
struct vx_wr_inode {
	uint64_t size;
	uint32_t block_size;
	int32_t extents;  /* extent-mapped and not inline: the extent handle applies */
	int32_t bigalloc; /* clusters of several blocks (the write path takes the file API) */
};

/* Reads inode ino into a new session *out (ended by vx_wr_end). */
int vx_wr_begin(ext2_filsys fs, uint32_t ino, struct vx_wr **out, struct vx_wr_inode *info)
{
	*out = NULL;
	struct vx_wr *wr = calloc(1, sizeof *wr);
	if (!wr)
		return ENOMEM;
	wr->fs = fs;
	wr->ino = ino;
	errcode_t err = ext2fs_read_inode_full(fs, ino, (struct ext2_inode *)&wr->in, sizeof wr->in);
	if (err) {
		free(wr);
		return vx_errno(err);
	}
	info->size = EXT2_I_SIZE(&wr->in);
	info->block_size = fs->blocksize;
	info->extents = (wr->in.i_flags & EXT4_EXTENTS_FL) && !(wr->in.i_flags & EXT4_INLINE_DATA_FL);
	info->bigalloc = EXT2FS_CLUSTER_RATIO(fs) != 1;
	*out = wr;
	return 0;
}

/* Opens the session's extent handle (an extent-mapped inode only). */
int vx_wr_open_extents(struct vx_wr *wr)
{
	return vx_errno(ext2fs_extent_open2(wr->fs, wr->ino, (struct ext2_inode *)&wr->in, &wr->h));
}

/* Mirrors struct ext2fs_extent's fields the data paths read. */
struct vx_extent {
	uint64_t pblk;
	uint64_t lblk;
	uint32_t len;
	int32_t unwritten;
};

/* The extent that ext2fs_extent_goto2 finds for lblk: *found 0 when it finds none (the
 * handle then rests at the extent before lblk, or the first one; see vx_wr_hole_end). */
int vx_wr_extent(struct vx_wr *wr, uint64_t lblk, struct vx_extent *out, int *found)
{
	*found = 0;
	errcode_t err = ext2fs_extent_goto2(wr->h, 0, lblk);
	if (err == EXT2_ET_EXTENT_NOT_FOUND)
		return 0;
	if (!err)
		err = ext2fs_extent_get(wr->h, EXT2_EXTENT_CURRENT, &wr->cur);
	if (err)
		return vx_errno(err);
	out->pblk = wr->cur.e_pblk;
	out->lblk = wr->cur.e_lblk;
	out->len = wr->cur.e_len;
	out->unwritten = (wr->cur.e_flags & EXT2_EXTENT_FLAGS_UNINIT) != 0;
	*found = 1;
	return 0;
}

/* Where the hole at l ends, right after vx_wr_extent(l) found none (missed) or found an
 * extent not covering l: the start of the next extent, if before `limit`, else limit. */
uint64_t vx_wr_hole_end(struct vx_wr *wr, uint64_t l, int missed, uint64_t limit)
{
	struct ext2fs_extent ext = wr->cur;
	errcode_t err = 0;
	uint64_t end = limit;
	if (missed)
		err = ext2fs_extent_get(wr->h, EXT2_EXTENT_CURRENT, &ext);
	if (!err && ext.e_lblk > l) {
		if (ext.e_lblk < end)
			end = ext.e_lblk;
	} else if (!err && ext2fs_extent_get(wr->h, EXT2_EXTENT_NEXT_LEAF, &ext) == 0 && ext.e_lblk > l &&
		   ext.e_lblk < end) {
		end = ext.e_lblk;
	}
	return end;
}

/* Allocates the hole [l, l + len) (vx_map_hole); *got: blocks mapped before an error. */
int vx_wr_map_hole(struct vx_wr *wr, uint64_t l, uint64_t len, uint64_t *got)
{
	blk64_t mapped = 0;
	errcode_t err = vx_map_hole(wr->fs, wr->ino, (struct ext2_inode *)&wr->in, wr->h, l, len, &mapped);
	*got = mapped;
	return vx_errno(err);
}

/* The physical block of lblk (0: a hole, or unknown). */
uint64_t vx_wr_bmap(struct vx_wr *wr, uint64_t lblk)
{
	blk64_t phys = 0;
	ext2fs_bmap2(wr->fs, wr->ino, (struct ext2_inode *)&wr->in, NULL, 0, lblk, NULL, &phys);
	return phys;
}

/* Writes whole blocks at physical block pblk straight to the device. */
int vx_write_run(ext2_filsys fs, uint64_t pblk, const void *data, size_t bytes)
{
	struct vx_dev *dev = ((struct vx_chan *)fs->io->private_data)->dev;
	return dev->write(dev->ctx, pblk * fs->blocksize, data, bytes); /* the cache forgets what it overlaps */
}

/* Reads whole blocks at physical block pblk from the device, one call (through its cache,
 * which lays dirty blocks over what it reads). */
int vx_read_run(ext2_filsys fs, uint64_t pblk, void *buf, size_t bytes)
{
	struct vx_dev *dev = ((struct vx_chan *)fs->io->private_data)->dev;
	return dev->read(dev->ctx, pblk * fs->blocksize, buf, bytes);
}

/* Asks the device to read len bytes at byte offset ahead of a sequential reader. */
void vx_prefetch(ext2_filsys fs, uint64_t offset, uint64_t len)
{
	struct vx_dev *dev = ((struct vx_chan *)fs->io->private_data)->dev;
	if (dev->prefetch)
		dev->prefetch(dev->ctx, offset, len);
}

/* pread(2) of the session's inode through the libext2fs file API (block-mapped, inline);
 * offset and len within the file's size. */
int vx_wr_read_file_api(struct vx_wr *wr, uint64_t offset, void *buf, size_t len, size_t *got)
{
	ext2_file_t f;
	*got = 0;
	errcode_t err = ext2fs_file_open2(wr->fs, wr->ino, (struct ext2_inode *)&wr->in, 0, &f);
	if (err)
		return vx_errno(err);
	int e = vx_file_read(f, offset, buf, len, got);
	ext2fs_file_close(f);
	return e;
}

/* Ends the session: frees the extent handle and, if `update`, writes the inode with size
 * `size` when `grow` and with mtime and ctime s.ns. */
int vx_wr_end(struct vx_wr *wr, int update, int grow, uint64_t size, int64_t s, uint32_t ns)
{
	if (!wr)
		return 0;
	if (wr->h)
		ext2fs_extent_free(wr->h);
	errcode_t err = 0;
	if (update) {
		if (grow)
			ext2fs_inode_size_set(wr->fs, (struct ext2_inode *)&wr->in, size);
		int extra = vx_has_extra(wr->fs, &wr->in);
		vx_set_time(&wr->in.i_mtime, extra ? &wr->in.i_mtime_extra : NULL, s, ns);
		vx_set_time(&wr->in.i_ctime, extra ? &wr->in.i_ctime_extra : NULL, s, ns);
		err = ext2fs_write_inode_full(wr->fs, wr->ino, (struct ext2_inode *)&wr->in, sizeof wr->in);
	}
	free(wr);
	return vx_errno(err);
}

/* pwrite(2) through the libext2fs file API (block-mapped, inline, bigalloc, or unwritten
 * extents in the range). */
int vx_write_file_api(ext2_filsys fs, uint32_t ino, uint64_t offset, const void *buf, size_t len, size_t *done)
{
	ext2_file_t f;
	errcode_t err = ext2fs_file_open(fs, ino, EXT2_FILE_WRITE, &f);
	if (err)
		return vx_errno(err);
	int e = vx_file_write(f, offset, buf, len, done);
	errcode_t closed = ext2fs_file_close(f);
	return e ? e : vx_errno(closed);
}

/* Checks the shape of an extent tree before it is used: every index entry
 * must point inside the filesystem at a node whose header has the extent
 * magic and the depth one below its parent's. Depth strictly decreasing
 * rules out cycles (an index pointing at itself or an ancestor), which
 * libext2fs would otherwise read as a leaf of made-up mappings. Trees that
 * live in the inode alone (depth 0, most files) cost nothing. */
int vx_check_extents(ext2_filsys fs, uint32_t ino)
{
	struct ext2_inode in;
	errcode_t err = ext2fs_read_inode(fs, ino, &in);
	if (err)
		return vx_errno(err);
	if (!(in.i_flags & EXT4_EXTENTS_FL) || (in.i_flags & EXT4_INLINE_DATA_FL))
		return 0;
	ext2_extent_handle_t h;
	if ((err = ext2fs_extent_open2(fs, ino, &in, &h)))
		return vx_errno(err);
	struct ext2_extent_info info;
	int result = 0;
	if ((err = ext2fs_extent_get_info(h, &info))) {
		result = vx_errno(err);
	} else if (info.max_depth > 5) {
		result = EUCLEAN; /* deeper than any 32-bit block count needs */
	} else if (info.max_depth > 0) {
		char *buf = malloc(fs->blocksize);
		struct ext2fs_extent ext;
		int op = EXT2_EXTENT_ROOT;
		if (!buf)
			result = ENOMEM;
		while (!result && !(err = ext2fs_extent_get(h, op, &ext))) {
			op = EXT2_EXTENT_NEXT;
			if (ext.e_flags & (EXT2_EXTENT_FLAGS_LEAF | EXT2_EXTENT_FLAGS_SECOND_VISIT))
				continue;
			if ((err = ext2fs_extent_get_info(h, &info)))
				break;
			int child_depth = info.max_depth - info.curr_level - 1;
			if (ext.e_pblk <= fs->super->s_first_data_block || ext.e_pblk >= ext2fs_blocks_count(fs->super)) {
				result = EUCLEAN;
				break;
			}
			if ((err = io_channel_read_blk64(fs->io, ext.e_pblk, 1, buf)))
				break;
			struct ext3_extent_header *eh = (struct ext3_extent_header *)buf;
			if (ext2fs_le16_to_cpu(eh->eh_magic) != EXT3_EXT_MAGIC || ext2fs_le16_to_cpu(eh->eh_depth) != child_depth)
				result = EUCLEAN;
		}
		if (!result && err && err != EXT2_ET_EXTENT_NO_NEXT)
			result = vx_errno(err);
		free(buf);
	}
	ext2fs_extent_free(h);
	return result;
}
