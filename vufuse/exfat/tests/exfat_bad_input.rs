//! Damaged volumes: what cannot be trusted at all is refused at open with a message naming
//! it; damage local to one file gives `EIO` for that file alone. Images come from
//! mkfs.exfat (64 MiB: FAT at 1 MiB, heap at 2 MiB, 4 KiB clusters; bitmap in cluster 2,
//! up-case table in 3-4, root in 5) and the driver's own writes, then are patched.

mod common;

use common::*;
use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use testkit::skip;
use vudev::{BlockDevice, FileDevice};
use vufuse_api::{Errno, FileSystem, Ino};
use vufuse_exfat::{entry_set, ExFatFs, ExFatOptions};

const MIB: u64 = 1 << 20;
const HEAP: u64 = 2 * MIB;
const FAT: u64 = MIB;
const ROOT: u64 = HEAP + 3 * 4096;

fn cluster_offset(c: u64) -> u64 {
    HEAP + (c - 2) * 4096
}

fn try_open(img: &Path) -> Result<ExFatFs, String> {
    let dev: Arc<dyn BlockDevice> = Arc::new(FileDevice::open(img, true).unwrap());
    ExFatFs::open(dev, ExFatOptions::default()).map_err(|e| e.to_string())
}

fn patch(img: &Path, offset: u64, bytes: &[u8]) {
    let dev = FileDevice::open(img, false).unwrap();
    dev.write_all_at(bytes, offset).unwrap();
}

fn peek(img: &Path, offset: u64, len: usize) -> Vec<u8> {
    let mut buf = vec![0u8; len];
    FileDevice::open(img, true)
        .unwrap()
        .read_exact_at(&mut buf, offset)
        .unwrap();
    buf
}

/// A volume with "a" (clusters 6, 8, 9: a FAT chain) and "b" (cluster 7, contiguous), root
/// slots 3-5 and 6-8.
fn two_files(dir: &Path) -> (PathBuf, Vec<u8>, Vec<u8>) {
    let img = mkfs(dir, "two.img", 64 * MIB, None);
    let fs = open(&img, false);
    let c = ctx();
    let a = pattern(3 * 4096, 1);
    let b = pattern(4096, 2);
    let (ea, oa) = fs.create(&c, Ino::ROOT, OsStr::new("a"), 0o644, 0).unwrap();
    fs.write(&c, ea.attr.ino, oa.fh, 0, &a[..4096]).unwrap();
    let (eb, ob) = fs.create(&c, Ino::ROOT, OsStr::new("b"), 0o644, 0).unwrap();
    fs.write(&c, eb.attr.ino, ob.fh, 0, &b).unwrap();
    fs.write(&c, ea.attr.ino, oa.fh, 4096, &a[4096..]).unwrap();
    fs.release(&c, ea.attr.ino, oa.fh).unwrap();
    fs.release(&c, eb.attr.ino, ob.fh).unwrap();
    fs.destroy();
    drop(fs);
    fsck_clean(&img);
    assert_eq!(
        peek(&img, FAT + 6 * 4, 4),
        8u32.to_le_bytes(),
        "a is chained 6 -> 8"
    );
    (img, a, b)
}

fn read_all(fs: &ExFatFs, name: &str) -> Result<Vec<u8>, Errno> {
    let e = fs.lookup(&ctx(), Ino::ROOT, OsStr::new(name))?;
    let o = fs.open(&ctx(), e.attr.ino, libc::O_RDONLY)?;
    let mut buf = vec![0u8; e.attr.size as usize];
    let n = fs.read(&ctx(), e.attr.ino, o.fh, 0, &mut buf)?;
    buf.truncate(n);
    Ok(buf)
}

#[test]
fn a_bad_boot_region_checksum_is_refused_by_name() {
    if let Some(why) = exfatprogs_missing() {
        return skip(&why);
    }
    let dir = tempfile::tempdir().unwrap();
    let img = mkfs(dir.path(), "boot.img", 8 * MIB, None);
    let byte = peek(&img, 300, 1)[0];
    patch(&img, 300, &[byte ^ 0x40]);
    let err = try_open(&img).err().expect("refused");
    assert!(err.contains("boot region checksum"), "{err}");
    // Flags and PercentInUse are outside the checksum.
    patch(&img, 300, &[byte]);
    patch(&img, 112, &[42]);
    assert!(try_open(&img).is_ok());
}

#[test]
fn a_truncated_image_is_refused_by_name() {
    if let Some(why) = exfatprogs_missing() {
        return skip(&why);
    }
    let dir = tempfile::tempdir().unwrap();
    let img = mkfs(dir.path(), "cut.img", 64 * MIB, None);
    std::fs::OpenOptions::new()
        .write(true)
        .open(&img)
        .unwrap()
        .set_len(40 * MIB)
        .unwrap();
    let err = try_open(&img).err().expect("refused");
    assert!(err.contains("truncated"), "{err}");
    std::fs::OpenOptions::new()
        .write(true)
        .open(&img)
        .unwrap()
        .set_len(3000)
        .unwrap();
    let err = try_open(&img).err().expect("refused");
    assert!(err.contains("truncated"), "{err}");
}

#[test]
fn a_damaged_up_case_table_is_refused_by_name() {
    if let Some(why) = exfatprogs_missing() {
        return skip(&why);
    }
    let dir = tempfile::tempdir().unwrap();
    let img = mkfs(dir.path(), "upcase.img", 64 * MIB, None);
    let at = cluster_offset(3) + 100;
    let byte = peek(&img, at, 1)[0];
    patch(&img, at, &[byte ^ 1]);
    let err = try_open(&img).err().expect("refused");
    assert!(err.contains("up-case table checksum"), "{err}");
}

#[test]
fn a_bitmap_that_frees_the_root_directory_is_refused() {
    if let Some(why) = exfatprogs_missing() {
        return skip(&why);
    }
    let dir = tempfile::tempdir().unwrap();
    let img = mkfs(dir.path(), "bitmap.img", 64 * MIB, None);
    let byte = peek(&img, HEAP, 1)[0];
    assert_eq!(byte & 0x08, 0x08, "cluster 5 (root) is bit 3");
    patch(&img, HEAP, &[byte & !0x08]);
    let err = try_open(&img).err().expect("refused");
    assert!(
        err.contains("allocation bitmap") && err.contains("root directory"),
        "{err}"
    );
}

#[test]
fn clusters_the_bitmap_calls_free_give_eio_for_that_file_alone() {
    if let Some(why) = exfatprogs_missing() {
        return skip(&why);
    }
    let dir = tempfile::tempdir().unwrap();
    let (img, a, _) = two_files(dir.path());
    let byte = peek(&img, HEAP, 1)[0];
    patch(&img, HEAP, &[byte & !(1 << 5)]); // cluster 7, "b"
    let fs = try_open(&img).unwrap();
    assert_eq!(read_all(&fs, "b"), Err(Errno::EIO));
    assert_eq!(read_all(&fs, "a").unwrap(), a);
}

#[test]
fn a_cluster_loop_or_a_cluster_outside_the_heap_gives_eio_for_that_file_alone() {
    if let Some(why) = exfatprogs_missing() {
        return skip(&why);
    }
    let dir = tempfile::tempdir().unwrap();
    let (img, _, b) = two_files(dir.path());
    patch(&img, FAT + 8 * 4, &6u32.to_le_bytes()); // 6 -> 8 -> 6 -> ...
    let fs = try_open(&img).unwrap();
    assert_eq!(read_all(&fs, "a"), Err(Errno::EIO));
    assert_eq!(read_all(&fs, "b").unwrap(), b);
    drop(fs);
    patch(&img, FAT + 8 * 4, &0x0FFF_FFF0u32.to_le_bytes());
    let fs = try_open(&img).unwrap();
    assert_eq!(read_all(&fs, "a"), Err(Errno::EIO));
    assert_eq!(read_all(&fs, "b").unwrap(), b);
    // Read-write too: the damaged file refuses writes, the volume takes others.
    drop(fs);
    let fs = open(&img, false);
    let e = fs.lookup(&ctx(), Ino::ROOT, OsStr::new("a")).unwrap();
    assert_eq!(
        fs.write(&ctx(), e.attr.ino, vufuse_api::Fh(0), 0, b"x"),
        Err(Errno::EIO)
    );
    fs.mkdir(&ctx(), Ino::ROOT, OsStr::new("still works"), 0o755)
        .unwrap();
    fs.destroy();
}

#[test]
fn an_entry_set_with_a_bad_checksum_gives_eio_for_that_entry_alone() {
    if let Some(why) = exfatprogs_missing() {
        return skip(&why);
    }
    let dir = tempfile::tempdir().unwrap();
    let (img, a, _) = two_files(dir.path());
    // A timestamp byte of "b"'s File entry (slot 6): name intact, checksum wrong.
    let at = ROOT + 6 * 32 + 10;
    let byte = peek(&img, at, 1)[0];
    patch(&img, at, &[byte ^ 0x11]);
    let fs = try_open(&img).unwrap();
    assert_eq!(
        fs.lookup(&ctx(), Ino::ROOT, OsStr::new("b")).map(|_| ()),
        Err(Errno::EIO)
    );
    assert_eq!(read_all(&fs, "a").unwrap(), a);
    let mut names = Vec::new();
    fs.readdir(&ctx(), Ino::ROOT, vufuse_api::Fh(0), 0, &mut |e| {
        names.push(e.name.to_string_lossy().into_owned());
        true
    })
    .unwrap();
    assert!(
        names.contains(&"a".to_string()) && names.contains(&"b".to_string()),
        "{names:?}"
    );
    // Its slots are not reused.
    drop(fs);
    let fs = open(&img, false);
    assert_eq!(
        fs.create(&ctx(), Ino::ROOT, OsStr::new("B"), 0o644, 0)
            .map(|_| ()),
        Err(Errno::EEXIST)
    );
    fs.create(&ctx(), Ino::ROOT, OsStr::new("c"), 0o644, 0)
        .unwrap();
    fs.destroy();
    drop(fs);
    assert_eq!(peek(&img, ROOT + 6 * 32 + 10, 1)[0], byte ^ 0x11);
    // A structurally broken set (stream entry gone) is skipped without harm.
    patch(&img, ROOT + 4 * 32, &[0x40]);
    let fs = try_open(&img).unwrap();
    assert_eq!(
        fs.lookup(&ctx(), Ino::ROOT, OsStr::new("a")).map(|_| ()),
        Err(Errno::ENOENT)
    );
    assert!(fs.lookup(&ctx(), Ino::ROOT, OsStr::new("c")).is_ok());
}

#[test]
fn a_directory_that_contains_itself_gives_eio() {
    if let Some(why) = exfatprogs_missing() {
        return skip(&why);
    }
    let dir = tempfile::tempdir().unwrap();
    let img = mkfs(dir.path(), "cycle.img", 64 * MIB, None);
    let fs = open(&img, false);
    let d = fs
        .mkdir(&ctx(), Ino::ROOT, OsStr::new("d"), 0o755)
        .unwrap()
        .attr
        .ino;
    fs.mkdir(&ctx(), d, OsStr::new("inner"), 0o755).unwrap();
    fs.destroy();
    drop(fs);
    // Point "d" (root slots 3-5) at the root cluster, with a correct checksum.
    let mut set = peek(&img, ROOT + 3 * 32, 96);
    set[32 + 20..32 + 24].copy_from_slice(&5u32.to_le_bytes());
    let sum = entry_set::set_checksum(&set);
    set[2..4].copy_from_slice(&sum.to_le_bytes());
    patch(&img, ROOT + 3 * 32, &set);
    let fs = try_open(&img).unwrap();
    assert_eq!(
        fs.lookup(&ctx(), Ino::ROOT, OsStr::new("d")).map(|_| ()),
        Err(Errno::EIO)
    );
}
