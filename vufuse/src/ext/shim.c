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
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <ext2fs/ext2fs.h>

/* ---- the device, implemented in Rust ---- */

struct vx_dev {
	void *ctx;
	uint64_t size;
	int read_only;
	int (*read)(void *ctx, uint64_t offset, void *buf, size_t len);
	int (*write)(void *ctx, uint64_t offset, const void *buf, size_t len);
	int (*flush)(void *ctx);
};

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

/* ---- io_manager over struct vx_dev ---- */

struct vx_chan {
	struct vx_dev *dev;
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
	chan->dev = dev;
	err = ext2fs_get_mem(strlen(name) + 1, &io->name);
	if (err) {
		ext2fs_free_mem(&chan);
		ext2fs_free_mem(&io);
		return err;
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
	ext2fs_free_mem(&io->private_data);
	ext2fs_free_mem(&io->name);
	ext2fs_free_mem(&io);
	return 0;
}

static errcode_t vx_io_set_blksize(io_channel io, int blksize)
{
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
	struct vx_dev *dev = ((struct vx_chan *)io->private_data)->dev;
	if (!(io->flags & IO_FLAG_RW))
		return EXT2_ET_RO_FILSYS;
	return dev->write(dev->ctx, offset, data, (size_t)size);
}

static errcode_t vx_io_flush(io_channel io)
{
	struct vx_dev *dev = ((struct vx_chan *)io->private_data)->dev;
	if (!(io->flags & IO_FLAG_RW))
		return 0;
	return dev->flush(dev->ctx);
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

/* Features this driver refuses even though libext2fs may parse them. */
static const struct {
	uint32_t bit;
	const char *name;
} vx_refused_incompat[] = {
	{ EXT4_FEATURE_INCOMPAT_ENCRYPT, "encrypt" },
	{ EXT4_FEATURE_INCOMPAT_CASEFOLD, "casefold" },
	{ EXT3_FEATURE_INCOMPAT_JOURNAL_DEV, "journal_dev" },
};

int vx_open(struct vx_dev *dev, int rw, ext2_filsys *out, char *msg, size_t msglen)
{
	char name[64];
	snprintf(name, sizeof name, "vudev:%p", (void *)dev);
	ext2_filsys fs = NULL;
	int flags = EXT2_FLAG_64BITS | EXT2_FLAG_THREADS | (rw ? EXT2_FLAG_RW : 0);
	errcode_t err = ext2fs_open2(name, NULL, flags, 0, 0, &vx_io_manager, &fs);
	if (err) {
		if (err == EXT2_ET_UNSUPP_FEATURE || err == EXT2_ET_RO_UNSUPP_FEATURE)
			snprintf(msg, msglen, "the filesystem uses features this libext2fs does not support (%s)", error_message(err));
		else if (err == EXT2_ET_BAD_MAGIC)
			snprintf(msg, msglen, "not an ext2/3/4 filesystem (bad superblock magic)");
		else
			snprintf(msg, msglen, "%s", error_message(err));
		return vx_errno(err) ? vx_errno(err) : EIO;
	}
	for (size_t i = 0; i < sizeof vx_refused_incompat / sizeof vx_refused_incompat[0]; i++) {
		if (fs->super->s_feature_incompat & vx_refused_incompat[i].bit) {
			snprintf(msg, msglen, "the filesystem uses the '%s' feature, which this driver does not support", vx_refused_incompat[i].name);
			ext2fs_close_free(&fs);
			return EOPNOTSUPP;
		}
	}
	if (ext2fs_has_feature_journal_needs_recovery(fs->super)) {
		snprintf(msg, msglen, "the journal needs recovery: run e2fsck on the image first");
		ext2fs_close_free(&fs);
		return EUCLEAN;
	}
	if (rw && (fs->super->s_state & EXT2_ERROR_FS)) {
		snprintf(msg, msglen, "the filesystem has errors: run e2fsck before mounting read-write");
		ext2fs_close_free(&fs);
		return EUCLEAN;
	}
	err = ext2fs_read_bitmaps(fs);
	if (err) {
		snprintf(msg, msglen, "cannot read the allocation bitmaps: %s", error_message(err));
		ext2fs_close_free(&fs);
		return vx_errno(err);
	}
	*out = fs;
	return 0;
}

int vx_close(ext2_filsys fs)
{
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
};

static int vx_xattr_iter(char *name, char *value, size_t value_len, void *data)
{
	struct vx_xiter *it = data;
	return it->cb(it->ctx, name, value, value_len) ? XATTR_ABORT : 0;
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
		struct vx_xiter it = { cb, ctx };
		err = ext2fs_xattrs_iterate(h, vx_xattr_iter, &it);
	}
	ext2fs_xattrs_close(&h);
	return vx_errno(err);
}
