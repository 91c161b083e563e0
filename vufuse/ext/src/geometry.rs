//! The superblock's geometry, checked before libext2fs trusts it.
//!
//! libext2fs's `ext2fs_open2` checks less than e2fsck and the kernel do, and its bitmap code
//! relies on the rest: a hostile `s_first_data_block` (8 or more) made `ext2fs_read_bitmaps`
//! copy a group's bitmap past the end of its heap buffer (found by the `ext_open` fuzz
//! target). So the raw superblock is checked here first, with the checks after which
//! e2fsck's `check_super_block` aborts (e2fsck/super.c) and those of the kernel's
//! `ext4_fill_super`/`ext4_check_geometry`, plus what libext2fs's bitmap splicing needs
//! (mke2fs rounds the per-group counts to multiples of 8 for it). Pure: no FFI, no I/O.

/// Byte offset of the primary superblock on the device.
pub(crate) const SUPERBLOCK_OFFSET: u64 = 1024;
/// Size of the superblock.
pub(crate) const SUPERBLOCK_SIZE: usize = 1024;

const EXT2_MAGIC: u16 = 0xEF53;
const INCOMPAT_META_BG: u32 = 0x10;
const INCOMPAT_JOURNAL_DEV: u32 = 0x8;
const INCOMPAT_64BIT: u32 = 0x80;
const INCOMPAT_FLEX_BG: u32 = 0x200;
const RO_COMPAT_EXTRA_ISIZE: u32 = 0x40;
const RO_COMPAT_BIGALLOC: u32 = 0x200;
/// EXT2_MAX_CLUSTERS_PER_GROUP.
const MAX_CLUSTERS_PER_GROUP: u64 = (1 << 16) - 8;
/// EXT2_MAX_CLUSTER_LOG_SIZE - EXT2_MIN_CLUSTER_LOG_SIZE.
const MAX_LOG_CLUSTER_SIZE: u32 = 29 - 10;
/// EXT2_MAX_BLOCK_LOG_SIZE - EXT2_MIN_BLOCK_LOG_SIZE (64 KiB blocks).
const MAX_LOG_BLOCK_SIZE: u32 = 16 - 10;

/// The feature bits the linked libext2fs supports (`EXT2_LIB_FEATURE_*_SUPP`).
#[derive(Clone, Copy, Debug)]
pub(crate) struct LibFeatures {
    pub(crate) incompat: u32,
    pub(crate) ro_compat: u32,
}

/// Why a superblock is refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Problem {
    /// No ext2/3/4 magic.
    NotExt,
    /// Incompatible features nobody here knows (these bits): no mount at all.
    Incompat(u32),
    /// Read-only-compatible features nobody here knows (these bits): read-only mounts only.
    RoCompat(u32),
    /// The geometry is inconsistent (what is wrong, for the user).
    Corrupt(String),
}

fn u16_at(sb: &[u8], off: usize) -> u16 {
    u16::from_le_bytes([sb[off], sb[off + 1]])
}

fn u32_at(sb: &[u8], off: usize) -> u32 {
    u32::from_le_bytes([sb[off], sb[off + 1], sb[off + 2], sb[off + 3]])
}

/// The superblock fields the checks read (offsets of `struct ext2_super_block`).
struct Fields {
    inodes_count: u32,
    blocks_count: u64,
    r_blocks_count: u64,
    first_data_block: u32,
    log_block_size: u32,
    log_cluster_size: u32,
    blocks_per_group: u32,
    clusters_per_group: u32,
    inodes_per_group: u32,
    magic: u16,
    rev_level: u32,
    first_ino: u32,
    inode_size: u16,
    incompat: u32,
    ro_compat: u32,
    reserved_gdt_blocks: u16,
    desc_size: u16,
    first_meta_bg: u32,
    min_extra_isize: u16,
    want_extra_isize: u16,
    log_groups_per_flex: u8,
}

impl Fields {
    fn parse(sb: &[u8]) -> Fields {
        let incompat = u32_at(sb, 0x60);
        let wide = incompat & INCOMPAT_64BIT != 0;
        let hi = |off| {
            if wide {
                u64::from(u32_at(sb, off)) << 32
            } else {
                0
            }
        };
        Fields {
            inodes_count: u32_at(sb, 0x00),
            blocks_count: u64::from(u32_at(sb, 0x04)) | hi(0x150),
            r_blocks_count: u64::from(u32_at(sb, 0x08)) | hi(0x154),
            first_data_block: u32_at(sb, 0x14),
            log_block_size: u32_at(sb, 0x18),
            log_cluster_size: u32_at(sb, 0x1C),
            blocks_per_group: u32_at(sb, 0x20),
            clusters_per_group: u32_at(sb, 0x24),
            inodes_per_group: u32_at(sb, 0x28),
            magic: u16_at(sb, 0x38),
            rev_level: u32_at(sb, 0x4C),
            first_ino: u32_at(sb, 0x54),
            inode_size: u16_at(sb, 0x58),
            incompat,
            ro_compat: u32_at(sb, 0x64),
            reserved_gdt_blocks: u16_at(sb, 0xCE),
            desc_size: u16_at(sb, 0xFE),
            first_meta_bg: u32_at(sb, 0x104),
            min_extra_isize: u16_at(sb, 0x15C),
            want_extra_isize: u16_at(sb, 0x15E),
            log_groups_per_flex: sb[0x174],
        }
    }
}

fn corrupt(what: String) -> Problem {
    Problem::Corrupt(what)
}

/// Checks the raw superblock `sb` (the 1024 bytes at [`SUPERBLOCK_OFFSET`]) of a device of
/// `device_size` bytes, for a mount that is `read_only` or not, against what the library
/// supports. Feature bits are checked whatever the revision (libext2fs skips its own check
/// on revision 0 yet still acts on the bits).
pub(crate) fn check(
    sb: &[u8],
    device_size: u64,
    read_only: bool,
    lib: LibFeatures,
) -> Result<(), Problem> {
    assert!(sb.len() >= SUPERBLOCK_SIZE, "a whole superblock");
    let f = Fields::parse(sb);
    if f.magic != EXT2_MAGIC {
        return Err(Problem::NotExt);
    }
    check_features(&f, read_only, lib)?;
    if f.incompat & INCOMPAT_JOURNAL_DEV != 0 {
        // An external journal has no groups; the shim refuses it by name.
        return Ok(());
    }
    let blocks = check_blocks(&f, device_size)?;
    let ipg = check_inodes_per_group(&f, &blocks)?;
    let groups = check_groups(&f, &blocks)?;
    check_inode_count(&f, ipg, groups.count)?;
    check_descriptors(&f, &blocks, &groups)
}

/// What the block checks establish, for the inode and descriptor checks.
struct Blocks {
    block_size: u64,
    blocks_per_group: u64,
}

/// The block groups and how many of their descriptors a block holds.
struct Groups {
    count: u64,
    desc_per_block: u64,
}

/// Features this libext2fs cannot handle (ro_compat ones only for a read-write mount).
fn check_features(f: &Fields, read_only: bool, lib: LibFeatures) -> Result<(), Problem> {
    if f.incompat & !lib.incompat != 0 {
        return Err(Problem::Incompat(f.incompat & !lib.incompat));
    }
    if !read_only && f.ro_compat & !lib.ro_compat != 0 {
        return Err(Problem::RoCompat(f.ro_compat & !lib.ro_compat));
    }
    Ok(())
}

/// Revision, block and cluster sizes, groups of clusters, the first data block, and a
/// block count that the device holds.
fn check_blocks(f: &Fields, device_size: u64) -> Result<Blocks, Problem> {
    if f.rev_level > 1 {
        return Err(corrupt(format!(
            "revision {} is newer than any ext2/3/4 revision (1)",
            f.rev_level
        )));
    }
    if f.log_block_size > MAX_LOG_BLOCK_SIZE {
        return Err(corrupt(format!(
            "block size 2^(10+{}) is out of range (1 KiB to 64 KiB)",
            f.log_block_size
        )));
    }
    let block_size = 1024u64 << f.log_block_size;
    let bigalloc = f.ro_compat & RO_COMPAT_BIGALLOC != 0;
    if bigalloc {
        if f.log_cluster_size < f.log_block_size || f.log_cluster_size > MAX_LOG_CLUSTER_SIZE {
            return Err(corrupt(format!(
                "cluster size 2^(10+{}) is out of range for 2^(10+{})-byte blocks",
                f.log_cluster_size, f.log_block_size
            )));
        }
    } else if f.log_cluster_size != f.log_block_size {
        return Err(corrupt(format!(
            "cluster size 2^(10+{}) differs from the block size 2^(10+{}) without bigalloc",
            f.log_cluster_size, f.log_block_size
        )));
    }
    let ratio_bits = f.log_cluster_size - f.log_block_size;
    // Per group: between 8 and the bits of one bitmap block, a multiple of 8 (the bitmaps
    // are read in whole bytes per group), and the blocks exactly the clusters' worth.
    let cpg = u64::from(f.clusters_per_group);
    let cpg_max = (8 * block_size).min(MAX_CLUSTERS_PER_GROUP);
    if !(8..=cpg_max).contains(&cpg) || cpg % 8 != 0 {
        return Err(corrupt(format!(
            "{cpg} clusters per group (must be a multiple of 8 from 8 to {cpg_max})"
        )));
    }
    if u64::from(f.blocks_per_group) != cpg << ratio_bits {
        return Err(corrupt(format!(
            "{} blocks per group is not {cpg} clusters of 2^{ratio_bits} blocks",
            f.blocks_per_group
        )));
    }
    let bpg = u64::from(f.blocks_per_group);
    // The first data block: 1 for 1 KiB blocks without bigalloc, else 0 (e2fsck aborts on
    // anything else; libext2fs's bitmaps overflow on 8 or more).
    let first_data_block = u32::from(block_size == 1024 && ratio_bits == 0);
    if f.first_data_block != first_data_block {
        return Err(corrupt(format!(
            "the first data block is {}, must be {first_data_block} for {}-byte blocks",
            f.first_data_block, block_size
        )));
    }
    if f.blocks_count <= u64::from(f.first_data_block) {
        return Err(corrupt(format!(
            "{} blocks leave no room past the first data block",
            f.blocks_count
        )));
    }
    let device_blocks = device_size / block_size;
    if f.blocks_count > device_blocks {
        return Err(corrupt(format!(
            "the superblock counts {} blocks of {block_size} bytes, the device holds {device_blocks} \
             (a truncated image, or the wrong partition)",
            f.blocks_count
        )));
    }
    if f.r_blocks_count > f.blocks_count / 2 {
        return Err(corrupt(format!(
            "{} reserved blocks are more than half of the {} blocks",
            f.r_blocks_count, f.blocks_count
        )));
    }
    Ok(Blocks {
        block_size,
        blocks_per_group: bpg,
    })
}

/// Inode size and inodes per group; returns the inodes per group.
fn check_inodes_per_group(f: &Fields, blocks: &Blocks) -> Result<u64, Problem> {
    let (block_size, bpg) = (blocks.block_size, blocks.blocks_per_group);
    let inode_size = if f.rev_level == 0 {
        128
    } else {
        u64::from(f.inode_size)
    };
    if !(128..=block_size).contains(&inode_size) || !inode_size.is_power_of_two() {
        return Err(corrupt(format!(
            "inode size {inode_size} (must be a power of 2 from 128 to the block size {block_size})"
        )));
    }
    let inodes_per_block = block_size / inode_size;
    let ipg = u64::from(f.inodes_per_group);
    let ipg_max = (inodes_per_block * (bpg.saturating_sub(4)))
        .min((1 << 16) - inodes_per_block)
        .min(8 * block_size);
    if ipg < inodes_per_block.max(8) || ipg > ipg_max || ipg % 8 != 0 {
        return Err(corrupt(format!(
            "{ipg} inodes per group (must be a multiple of 8 from {} to {ipg_max})",
            inodes_per_block.max(8)
        )));
    }
    Ok(ipg)
}

/// The group count and the descriptor size.
fn check_groups(f: &Fields, blocks: &Blocks) -> Result<Groups, Problem> {
    let (block_size, bpg) = (blocks.block_size, blocks.blocks_per_group);
    let groups = (f.blocks_count - u64::from(f.first_data_block)).div_ceil(bpg);
    let desc_size = if f.incompat & INCOMPAT_64BIT != 0 {
        u64::from(f.desc_size)
    } else {
        32
    };
    if (f.incompat & INCOMPAT_64BIT != 0 && !(64..=1024).contains(&desc_size))
        || !desc_size.is_power_of_two()
    {
        return Err(corrupt(format!(
            "group descriptor size {} (must be a power of 2 from 64 to 1024 with 64bit)",
            f.desc_size
        )));
    }
    let desc_per_block = block_size / desc_size;
    if groups > (1u64 << 32) - desc_per_block {
        return Err(corrupt(format!("{groups} block groups are too many")));
    }
    Ok(Groups {
        count: groups,
        desc_per_block,
    })
}

/// The inode count (groups of `ipg`), the first ordinary inode, the extra inode sizes.
fn check_inode_count(f: &Fields, ipg: u64, groups: u64) -> Result<(), Problem> {
    let inode_size = if f.rev_level == 0 {
        128
    } else {
        u64::from(f.inode_size)
    };
    if groups * ipg != u64::from(f.inodes_count) {
        return Err(corrupt(format!(
            "{} inodes are not {groups} groups of {ipg}",
            f.inodes_count
        )));
    }
    if f.rev_level > 0 && (f.first_ino < 11 || f.first_ino > f.inodes_count) {
        return Err(corrupt(format!(
            "the first ordinary inode is {} (must be from 11 to the {} inodes)",
            f.first_ino, f.inodes_count
        )));
    }
    if f.ro_compat & RO_COMPAT_EXTRA_ISIZE != 0 && inode_size > 128 {
        let max = inode_size - 128;
        for (name, v) in [
            ("minimum", f.min_extra_isize),
            ("wanted", f.want_extra_isize),
        ] {
            if u64::from(v) > max {
                return Err(corrupt(format!(
                    "the {name} extra inode size {v} exceeds the {max} bytes past the old inode"
                )));
            }
        }
    }
    Ok(())
}

/// Where group 0 keeps the descriptors must be inside the filesystem; flexible groups.
fn check_descriptors(f: &Fields, blocks: &Blocks, groups: &Groups) -> Result<(), Problem> {
    let (block_size, desc_per_block, groups) =
        (blocks.block_size, groups.desc_per_block, groups.count);
    if u64::from(f.reserved_gdt_blocks) > block_size / 4 {
        return Err(corrupt(format!(
            "{} reserved descriptor blocks (at most {})",
            f.reserved_gdt_blocks,
            block_size / 4
        )));
    }
    let desc_blocks = groups.div_ceil(desc_per_block);
    let in_group0 = if f.incompat & INCOMPAT_META_BG != 0 {
        if u64::from(f.first_meta_bg) > desc_blocks {
            return Err(corrupt(format!(
                "the first meta block group {} is past the {desc_blocks} descriptor blocks",
                f.first_meta_bg
            )));
        }
        u64::from(f.first_meta_bg)
    } else {
        desc_blocks
    };
    if u64::from(f.first_data_block) + 1 + in_group0 > f.blocks_count {
        return Err(corrupt(format!(
            "{in_group0} descriptor blocks do not fit in the {} blocks",
            f.blocks_count
        )));
    }
    if f.incompat & INCOMPAT_FLEX_BG != 0 && f.log_groups_per_flex > 31 {
        return Err(corrupt(format!(
            "2^{} groups per flexible group",
            f.log_groups_per_flex
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIB: LibFeatures = LibFeatures {
        incompat: 0x0003_f7d6,
        ro_compat: 0x0000_fffb,
    };

    /// A superblock as `mke2fs -t ext2 -b 1024` makes it for 256 blocks and 16 inodes.
    fn small() -> Vec<u8> {
        let mut sb = vec![0u8; SUPERBLOCK_SIZE];
        let mut put = |off: usize, v: u32, n: usize| {
            sb[off..off + n].copy_from_slice(&v.to_le_bytes()[..n]);
        };
        put(0x00, 16, 4); // inodes
        put(0x04, 256, 4); // blocks
        put(0x08, 12, 4); // reserved
        put(0x14, 1, 4); // first data block
        put(0x20, 8192, 4);
        put(0x24, 8192, 4);
        put(0x28, 16, 4);
        put(0x38, 0xEF53, 2);
        put(0x4C, 1, 4);
        put(0x54, 11, 4);
        put(0x58, 256, 2);
        put(0x60, 0x2, 4);
        put(0x64, 0x3, 4);
        sb
    }

    fn set(sb: &mut [u8], off: usize, v: u32) {
        sb[off..off + 4].copy_from_slice(&v.to_le_bytes());
    }

    #[test]
    fn a_small_mke2fs_superblock_passes() {
        assert_eq!(check(&small(), 256 << 10, false, LIB), Ok(()));
    }

    #[test]
    fn the_fuzzers_first_data_block_is_refused() {
        for fdb in [0, 2, 8, 100, 255] {
            let mut sb = small();
            set(&mut sb, 0x14, fdb);
            set(&mut sb, 0x64, 0x3 | 1 << 24);
            let e = check(&sb, 256 << 10, true, LIB).unwrap_err();
            assert!(
                matches!(&e, Problem::Corrupt(m) if m.contains("first data block")),
                "{fdb}: {e:?}"
            );
        }
    }

    #[test]
    fn unknown_features_refuse_by_kind() {
        let mut sb = small();
        set(&mut sb, 0x64, 0x3 | 1 << 24);
        assert_eq!(check(&sb, 256 << 10, true, LIB), Ok(()));
        assert_eq!(
            check(&sb, 256 << 10, false, LIB),
            Err(Problem::RoCompat(1 << 24))
        );
        let mut sb = small();
        set(&mut sb, 0x60, 0x2 | 1 << 29);
        sb[0x4C] = 0; // revision 0 too
        assert_eq!(
            check(&sb, 256 << 10, true, LIB),
            Err(Problem::Incompat(1 << 29))
        );
    }

    #[test]
    fn geometry_inconsistencies_are_refused() {
        let cases: &[(usize, u32)] = &[
            (0x18, 7),           // 128 KiB blocks
            (0x1C, 1),           // cluster size without bigalloc
            (0x20, 0),           // blocks per group
            (0x20, 8193),        // blocks per group, not a multiple of 8
            (0x24, 4096),        // clusters per group differ
            (0x20, 1 << 20),     // more than one bitmap block holds
            (0x28, 0),           // inodes per group
            (0x28, 12),          // not a multiple of 8
            (0x28, 9000),        // more than one bitmap block holds
            (0x00, 32),          // inodes count is not groups * ipg
            (0x04, 1),           // no room past the first data block
            (0x04, 257),         // past the device
            (0x04, 0xffff_ffff), // far past the device
            (0x08, 200),         // reserved blocks
            (0x54, 5),           // first inode
            (0x54, 17),          // first inode past the inodes
            (0x4C, 2),           // revision
        ];
        for &(off, v) in cases {
            let mut sb = small();
            set(&mut sb, off, v);
            assert!(
                matches!(check(&sb, 256 << 10, true, LIB), Err(Problem::Corrupt(_))),
                "{off:#x}={v}"
            );
        }
        let mut sb = small();
        sb[0x58] = 100; // inode size 100
        assert!(matches!(
            check(&sb, 256 << 10, true, LIB),
            Err(Problem::Corrupt(_))
        ));
        let mut sb = small();
        set(&mut sb, 0x60, 0x2 | INCOMPAT_64BIT);
        sb[0xFE] = 48; // desc size
        assert!(matches!(
            check(&sb, 256 << 10, true, LIB),
            Err(Problem::Corrupt(_))
        ));
        sb[0xFE] = 64;
        assert_eq!(check(&sb, 256 << 10, true, LIB), Ok(()));
        let mut sb = small();
        sb[0xCF] = 2; // 512 reserved descriptor blocks, more than 1024 / 4
        assert!(matches!(
            check(&sb, 256 << 10, true, LIB),
            Err(Problem::Corrupt(_))
        ));
        let mut sb = small();
        set(&mut sb, 0x60, 0x2 | INCOMPAT_META_BG);
        set(&mut sb, 0x104, 5);
        assert!(matches!(
            check(&sb, 256 << 10, true, LIB),
            Err(Problem::Corrupt(_))
        ));
        assert!(matches!(
            check(&small()[..], 100 << 10, true, LIB),
            Err(Problem::Corrupt(m)) if m.contains("truncated")
        ));
    }

    #[test]
    fn no_magic_is_not_ext() {
        let mut sb = small();
        sb[0x38] = 0;
        assert_eq!(check(&sb, 256 << 10, true, LIB), Err(Problem::NotExt));
    }
}
