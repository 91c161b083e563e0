//! Turning a full one-block directory into an htree, as the kernel does (make_indexed_dir).
//! libext2fs inserts into indexed directories but never creates one, so a directory grown
//! through it alone would stay a linear list, searched name by name. The entries are sorted
//! by name hash and split over two leaf blocks under a dx root ("." and ".." kept).
//!
//! Without a journal this is copy-on-write: root and leaves go to three new blocks, and one
//! inode write switches the directory to them, so a kill leaves either the old linear block
//! or the whole htree (plus a leak). Later inserts go through ext2fs_link's htree code.
//!
//! The block layout is built here; the shim's primitives (`ffi.rs`) do what touches
//! libext2fs's structs: the directory's shape, block I/O (libext2fs sets the checksums and,
//! on big-endian hosts, swaps the entry headers, hence native-endian headers here), the name
//! hash, taking blocks and the switch.

use crate::ffi::{self, ExtFsHandle, VxDirShape};
use std::ffi::{c_char, c_int, c_long, c_void};

/// A directory entry's fixed header: inode (4), rec_len (2), name_len and file type (2).
const HEADER: usize = 8;
/// A leaf's checksum tail: a fake entry of 12 bytes with this name_len/file type word.
const TAIL_NAME_LEN: u16 = 0xDE00;
/// The dx root: "." (12 bytes), ".." from 12, the root info at 24, the count/limit at 32.
const ROOT_INFO: usize = 24;
const COUNT_LIMIT: usize = 32;
/// Bytes of one index entry (hash, block).
const DX_ENTRY: usize = 8;
/// ext2's file type of a directory.
const FT_DIR: u8 = 2;

/// One live entry of the linear block.
struct Entry {
    hash: u32,
    ino: u32,
    file_type: u8,
    name: Vec<u8>,
}

/// Indexes the one-block directory `dir` when it is full, for the shim's `vx_grow_dir`
/// (through `VxDev::make_indexed`): `*done` says whether it did (if not, the directory
/// grows linearly); returns 0 or an errno.
///
/// # Safety
/// `fs` must be the shim's open filesystem and `done` point to a writable int.
pub(crate) unsafe extern "C" fn vx_make_indexed(
    fs: *mut ExtFsHandle,
    dir: u32,
    done: *mut c_int,
) -> c_long {
    let result = make_indexed(fs, dir);
    // SAFETY: the caller passes a pointer to its own int.
    unsafe { *done = c_int::from(matches!(result, Ok(true))) };
    match result {
        Ok(_) => 0,
        Err(errno) => c_long::from(errno),
    }
}

/// The steps: shape, read, parse, hash and sort, split, take blocks, write, switch.
fn make_indexed(fs: *mut ExtFsHandle, dir: u32) -> Result<bool, c_int> {
    let shape = dir_shape(fs, dir)?;
    if shape.root == 0 {
        return Ok(false);
    }
    let bs = shape.block_size as usize;
    let mut block = vec![0u8; bs];
    read_block(fs, shape.root, &mut block, dir)?;
    let Some((parent, mut entries)) = parse_linear(&block, shape.leaf_tail as usize) else {
        return Ok(false); // an odd block: leave it linear
    };
    for e in &mut entries {
        e.hash = name_hash(fs, shape.hash_alg, &e.name)? & !1;
    }
    entries.sort_by_key(|e| e.hash);
    let Some(split) = split_point(&entries) else {
        return Ok(false);
    };
    let mut blocks = [0u64; 3];
    match take_blocks(fs, shape.root, &mut blocks) {
        Ok(()) => {}
        Err(libc::ENOSPC) => return Ok(false), // no room to index: grow linearly, or fail there
        Err(e) => return Err(e),
    }
    let written = write_htree(fs, dir, &shape, parent, &entries, split, &blocks);
    if let Err(e) = written {
        give_back_blocks(fs, &blocks);
        return Err(e);
    }
    switch_to_htree(fs, dir, &blocks, shape.root)?;
    Ok(true)
}

/// The leaves (entries before `split`, then the rest) and the root that indexes them.
fn write_htree(
    fs: *mut ExtFsHandle,
    dir: u32,
    shape: &VxDirShape,
    parent: u32,
    entries: &[Entry],
    split: usize,
    blocks: &[u64; 3],
) -> Result<(), c_int> {
    let bs = shape.block_size as usize;
    let mut buf = vec![0u8; bs];
    fill_leaf(&mut buf, &entries[..split], shape.leaf_tail as usize);
    write_block(fs, blocks[1], &mut buf, dir)?;
    fill_leaf(&mut buf, &entries[split..], shape.leaf_tail as usize);
    write_block(fs, blocks[2], &mut buf, dir)?;
    fill_root(&mut buf, shape, dir, parent, entries[split].hash);
    write_block(fs, blocks[0], &mut buf, dir)
}

/// The entries of a linear block with ".", ".." first, and ".."'s inode; None when the
/// block is not such a block.
fn parse_linear(block: &[u8], tail: usize) -> Option<(u32, Vec<Entry>)> {
    let end = block.len().checked_sub(tail)?;
    let mut entries = Vec::new();
    let (mut offset, mut seen, mut parent) = (0usize, 0usize, 0u32);
    while offset + HEADER <= end {
        let ino = u32::from_ne_bytes(block[offset..offset + 4].try_into().ok()?);
        let rec_len = decode_rec_len(
            u16::from_ne_bytes(block[offset + 4..offset + 6].try_into().ok()?),
            block.len(),
        );
        let word = u16::from_ne_bytes(block[offset + 6..offset + 8].try_into().ok()?);
        let (len, file_type) = (usize::from(word & 0xff), (word >> 8) as u8);
        if rec_len < HEADER || offset + rec_len > end || HEADER + len > rec_len {
            return None;
        }
        let name = &block[offset + HEADER..offset + HEADER + len];
        match seen {
            0 if name != b"." => return None,
            1 if name != b".." => return None,
            1 => parent = ino,
            _ if seen >= 2 && ino != 0 => entries.push(Entry {
                hash: 0,
                ino,
                file_type,
                name: name.to_vec(),
            }),
            _ => {}
        }
        seen += 1;
        offset += rec_len;
    }
    (seen >= 2).then_some((parent, entries))
}

/// Where to split the sorted entries: by size near the middle, never between two equal
/// hashes (a hash's entries must share a leaf); None when there is no such place.
fn split_point(entries: &[Entry]) -> Option<usize> {
    if entries.len() < 2 {
        return None;
    }
    let total: usize = entries.iter().map(|e| rec_len_for(e.name.len())).sum();
    let (mut split, mut half) = (0usize, 0usize);
    while split < entries.len() && half + rec_len_for(entries[split].name.len()) <= total / 2 {
        half += rec_len_for(entries[split].name.len());
        split += 1;
    }
    while split > 0 && split < entries.len() && entries[split].hash == entries[split - 1].hash {
        split += 1;
    }
    (split > 0 && split < entries.len()).then_some(split)
}

/// Packs `entries` into a leaf block, the last one spanning to the tail (when checksums
/// are on, the tail's fake entry; libext2fs fills in its checksum).
fn fill_leaf(buf: &mut [u8], entries: &[Entry], tail: usize) {
    buf.fill(0);
    let bs = buf.len();
    let end = bs - tail;
    let mut offset = 0usize;
    let mut last = 0usize;
    for e in entries {
        let len = rec_len_for(e.name.len());
        put_entry(buf, offset, e.ino, len, e.name.len() as u8, e.file_type);
        buf[offset + HEADER..offset + HEADER + e.name.len()].copy_from_slice(&e.name);
        last = offset;
        offset += len;
    }
    put_rec_len(buf, last, end - last);
    if tail > 0 {
        put_entry(buf, end, 0, tail, 0, 0);
        buf[end + 6..end + 8].copy_from_slice(&TAIL_NAME_LEN.to_ne_bytes());
    }
}

/// The dx root: "." and "..", ".." spanning the block, then one level of two index
/// entries: leaf 1 for hashes below `split_hash`, leaf 2 from it.
fn fill_root(buf: &mut [u8], shape: &VxDirShape, dir: u32, parent: u32, split_hash: u32) {
    buf.fill(0);
    let bs = buf.len();
    let ft = if shape.filetype != 0 { FT_DIR } else { 0 };
    put_entry(buf, 0, dir, 12, 1, ft);
    buf[HEADER] = b'.';
    put_entry(buf, 12, parent, bs - 12, 2, ft);
    buf[12 + HEADER..12 + HEADER + 2].copy_from_slice(b"..");
    buf[ROOT_INFO + 4] = shape.hash_version;
    buf[ROOT_INFO + 5] = 8; // info_length
    let limit = (bs - COUNT_LIMIT - shape.dx_tail as usize) / DX_ENTRY;
    put_le16(buf, COUNT_LIMIT, limit as u16);
    put_le16(buf, COUNT_LIMIT + 2, 2);
    put_le32(buf, COUNT_LIMIT + 4, 1); // entry 0: its hash is the count/limit, block 1
    put_le32(buf, COUNT_LIMIT + DX_ENTRY, split_hash);
    put_le32(buf, COUNT_LIMIT + DX_ENTRY + 4, 2);
}

/// An entry header at `offset` (native-endian, as libext2fs hands blocks over).
fn put_entry(buf: &mut [u8], offset: usize, ino: u32, rec_len: usize, len: u8, file_type: u8) {
    buf[offset..offset + 4].copy_from_slice(&ino.to_ne_bytes());
    put_rec_len(buf, offset, rec_len);
    let word = u16::from(len) | (u16::from(file_type) << 8);
    buf[offset + 6..offset + 8].copy_from_slice(&word.to_ne_bytes());
}

fn put_rec_len(buf: &mut [u8], offset: usize, rec_len: usize) {
    let raw = encode_rec_len(rec_len, buf.len());
    buf[offset + 4..offset + 6].copy_from_slice(&raw.to_ne_bytes());
}

fn put_le16(buf: &mut [u8], offset: usize, v: u16) {
    buf[offset..offset + 2].copy_from_slice(&v.to_le_bytes());
}

fn put_le32(buf: &mut [u8], offset: usize, v: u32) {
    buf[offset..offset + 4].copy_from_slice(&v.to_le_bytes());
}

/// The record length an entry with a name of `len` bytes takes (EXT2_DIR_REC_LEN).
fn rec_len_for(len: usize) -> usize {
    (len + HEADER + 3) & !3
}

/// rec_len as stored (ext2fs_get_rec_len): blocks of 64 KiB or more keep the top bits low.
fn decode_rec_len(raw: u16, block_size: usize) -> usize {
    let raw = usize::from(raw);
    if block_size < 65536 {
        raw
    } else if raw == 65535 || raw == 0 {
        block_size
    } else {
        (raw & 65532) | ((raw & 3) << 16)
    }
}

/// rec_len to store (ext2fs_set_rec_len).
fn encode_rec_len(len: usize, block_size: usize) -> u16 {
    if len < 65536 {
        len as u16
    } else if len == block_size {
        if block_size == 65536 {
            65535
        } else {
            0
        }
    } else {
        ((len & 65532) | ((len >> 16) & 3)) as u16
    }
}

fn dir_shape(fs: *mut ExtFsHandle, dir: u32) -> Result<VxDirShape, c_int> {
    let mut shape = VxDirShape::default();
    // SAFETY: fs is the open filesystem; shape is a live struct the shim fills.
    errno(unsafe { ffi::vx_dir_shape(fs, dir, &mut shape) })?;
    Ok(shape)
}

fn read_block(fs: *mut ExtFsHandle, block: u64, buf: &mut [u8], dir: u32) -> Result<(), c_int> {
    // SAFETY: buf is a live buffer of one block (the size the shim reported).
    errno(unsafe { ffi::vx_dir_block_read(fs, block, buf.as_mut_ptr().cast::<c_void>(), dir) })
}

fn write_block(fs: *mut ExtFsHandle, block: u64, buf: &mut [u8], dir: u32) -> Result<(), c_int> {
    // SAFETY: as read_block; libext2fs may swap and checksum the buffer in place.
    errno(unsafe { ffi::vx_dir_block_write(fs, block, buf.as_mut_ptr().cast::<c_void>(), dir) })
}

fn name_hash(fs: *mut ExtFsHandle, alg: i32, name: &[u8]) -> Result<u32, c_int> {
    let mut hash = 0u32;
    // SAFETY: name is a live slice passed with its length; hash a live u32.
    errno(unsafe {
        ffi::vx_dir_name_hash(
            fs,
            alg,
            name.as_ptr().cast::<c_char>(),
            name.len(),
            &mut hash,
        )
    })?;
    Ok(hash)
}

fn take_blocks(fs: *mut ExtFsHandle, goal: u64, out: &mut [u64; 3]) -> Result<(), c_int> {
    // SAFETY: out holds the 3 blocks asked for.
    errno(unsafe { ffi::vx_take_blocks(fs, goal, out.as_mut_ptr(), out.len()) })
}

fn give_back_blocks(fs: *mut ExtFsHandle, blocks: &[u64; 3]) {
    // SAFETY: the 3 blocks take_blocks gave.
    unsafe { ffi::vx_give_back_blocks(fs, blocks.as_ptr(), blocks.len()) }
}

fn switch_to_htree(
    fs: *mut ExtFsHandle,
    dir: u32,
    blocks: &[u64; 3],
    old: u64,
) -> Result<(), c_int> {
    // SAFETY: blocks is live for the call, with its length.
    errno(unsafe { ffi::vx_switch_to_htree(fs, dir, blocks.as_ptr(), blocks.len(), old) })
}

fn errno(code: c_int) -> Result<(), c_int> {
    if code == 0 {
        Ok(())
    } else {
        Err(code)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(name: &str, hash: u32) -> Entry {
        Entry {
            hash,
            ino: 12,
            file_type: 1,
            name: name.as_bytes().to_vec(),
        }
    }

    #[test]
    fn a_filled_leaf_parses_back_with_the_tail_kept() {
        let entries: Vec<Entry> = (0..20).map(|i| entry(&format!("name-{i}"), i)).collect();
        let mut head = vec![0u8; 1024];
        let mut leaf = entries;
        leaf.insert(0, entry("..", 0));
        leaf.insert(0, entry(".", 0));
        fill_leaf(&mut head, &leaf, 12);
        let (parent, parsed) = parse_linear(&head, 12).unwrap();
        assert_eq!(parent, 12);
        let names: Vec<String> = parsed
            .iter()
            .map(|e| String::from_utf8_lossy(&e.name).into_owned())
            .collect();
        assert_eq!(
            names,
            (0..20).map(|i| format!("name-{i}")).collect::<Vec<_>>()
        );
        assert_eq!(&head[1024 - 12 + 4..1024 - 12 + 8], &[12, 0, 0, 0xDE]);
    }

    #[test]
    fn a_block_without_dot_entries_or_with_a_bad_length_stays_linear() {
        let mut block = vec![0u8; 1024];
        fill_leaf(&mut block, &[entry("a", 0), entry("b", 0)], 0);
        assert!(parse_linear(&block, 0).is_none());
        let mut block = vec![0u8; 1024];
        fill_leaf(
            &mut block,
            &[entry(".", 0), entry("..", 0), entry("x", 0)],
            0,
        );
        block[12 + 6] = 200; // ".."'s name length past its record
        assert!(parse_linear(&block, 0).is_none());
    }

    #[test]
    fn the_split_never_parts_equal_hashes() {
        let entries = vec![
            entry("a", 1),
            entry("b", 2),
            entry("c", 2),
            entry("d", 2),
            entry("e", 3),
        ];
        let split = split_point(&entries).unwrap();
        assert_ne!(entries[split].hash, entries[split - 1].hash);
        let same = vec![entry("a", 5), entry("b", 5)];
        assert!(split_point(&same).is_none());
    }

    #[test]
    fn rec_len_round_trips_at_every_block_size() {
        for bs in [1024usize, 4096, 65536, 131072] {
            for len in [12usize, 1000, bs / 2, bs - 12, bs] {
                assert_eq!(
                    decode_rec_len(encode_rec_len(len, bs), bs),
                    len,
                    "{bs} {len}"
                );
            }
        }
    }
}
