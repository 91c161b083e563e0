//! Fuzzing the FAT mount path: a small image made by mkfs.fat and mcopy is
//! mutated in its metadata (boot sector, FATs, root directory, directory
//! clusters); mounting, walking the whole tree, reading every file and a few
//! writes must never panic or hang, whatever the bytes say.

use proptest::prelude::*;
use std::ffi::OsStr;
use std::process::Command;
use std::sync::{Arc, OnceLock};
use vudev::{BlockDevice, Ramdisk};
use vufuse_api::{Context, Fh, FileKind, FileSystem, Ino};
use vufuse_fat::{FatFs, FatOptions};

const IMAGE_BYTES: u64 = 1 << 20;

/// The pristine image, built once with the real tools.
fn pristine() -> &'static Vec<u8> {
    static IMAGE: OnceLock<Vec<u8>> = OnceLock::new();
    IMAGE.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let img = dir.path().join("small.img");
        let script = format!(
            "set -e; truncate -s 1M {0}; mkfs.fat -F 12 {0} >/dev/null; \
             mmd -i {0} ::/dir ::/dir/sub; \
             for n in a 'long file name number one.txt' dir/b dir/sub/c 'dir/another long one.bin'; do \
               head -c 3000 /dev/urandom | mcopy -i {0} - \"::/$n\"; done",
            img.display()
        );
        let out = Command::new("sh").args(["-c", &script]).output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        std::fs::read(&img).unwrap()
    })
}

/// Walks the tree (bounded), reading every file; returns the entries seen.
fn walk(fs: &FatFs, ino: Ino, depth: u32, budget: &mut u32) {
    if depth > 16 || *budget == 0 {
        return;
    }
    let ctx = Context::current();
    let Ok(fh) = fs.opendir(&ctx, ino) else {
        return;
    };
    let mut names = Vec::new();
    let _ = fs.readdir(&ctx, ino, fh, 0, &mut |e| {
        names.push((e.name.to_os_string(), e.kind));
        names.len() < 512
    });
    for (name, kind) in names {
        if *budget == 0 {
            return;
        }
        *budget -= 1;
        if name == "." || name == ".." {
            continue;
        }
        let Ok(entry) = fs.lookup(&ctx, ino, &name) else {
            continue;
        };
        let child = entry.attr.ino;
        if kind == FileKind::Dir {
            walk(fs, child, depth + 1, budget);
        } else if let Ok(opened) = fs.open(&ctx, child, libc::O_RDONLY) {
            let mut buf = vec![0u8; 65536];
            let mut offset = 0u64;
            while offset < entry.attr.size.min(1 << 20) {
                match fs.read(&ctx, child, opened.fh, offset, &mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => offset += n as u64,
                }
            }
            let _ = fs.release(&ctx, child, opened.fh);
        }
        fs.forget(child, 1);
    }
}

fn exercise(bytes: &[u8]) {
    let disk = Ramdisk::new(IMAGE_BYTES).unwrap();
    disk.write_all_at(bytes, 0).unwrap();
    let dev: Arc<dyn BlockDevice> = Arc::new(disk);
    // Half the cases with a one-byte directory cache: every operation parses again.
    let dir_cache_bytes = if bytes.iter().map(|&b| b as usize).sum::<usize>() % 2 == 0 {
        1
    } else {
        vufuse_fat::DIR_CACHE_BYTES
    };
    let Ok(fs) = FatFs::open(
        dev,
        FatOptions {
            read_only: false,
            dir_cache_bytes,
            ..FatOptions::default()
        },
    ) else {
        return;
    };
    let mut budget = 2000;
    walk(&fs, Ino::ROOT, 0, &mut budget);
    let ctx = Context::current();
    if let Ok((entry, opened)) = fs.create(
        &ctx,
        Ino::ROOT,
        OsStr::new("new file.txt"),
        0o644,
        libc::O_WRONLY,
    ) {
        let _ = fs.write(&ctx, entry.attr.ino, opened.fh, 0, &[42u8; 5000]);
        let _ = fs.release(&ctx, entry.attr.ino, opened.fh);
    }
    let _ = fs.mkdir(&ctx, Ino::ROOT, OsStr::new("made"), 0o755);
    let _ = fs.unlink(&ctx, Ino::ROOT, OsStr::new("a"));
    let _ = fs.rename(
        &ctx,
        Ino::ROOT,
        OsStr::new("dir"),
        Ino::ROOT,
        OsStr::new("renamed"),
        0,
    );
    let _ = fs.statfs(&ctx);
    let _ = fs.fsync(&ctx, Ino::ROOT, Fh(0), false);
    fs.destroy();
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 400, ..ProptestConfig::default() })]

    #[test]
    fn mutated_images_never_panic(edits in proptest::collection::vec((0usize..(20 * 1024), any::<u8>()), 1..32)) {
        let mut bytes = pristine().clone();
        for (offset, value) in edits {
            bytes[offset] = value;
        }
        exercise(&bytes);
    }
}

#[test]
fn the_pristine_image_walks_completely() {
    // Guards the fuzz target: without mutations everything is found.
    let disk = Ramdisk::new(IMAGE_BYTES).unwrap();
    disk.write_all_at(pristine(), 0).unwrap();
    let fs = FatFs::open(Arc::new(disk), FatOptions::default()).unwrap();
    let ctx = Context::current();
    let dir = fs
        .lookup(&ctx, Ino::ROOT, OsStr::new("dir"))
        .unwrap()
        .attr
        .ino;
    let sub = fs.lookup(&ctx, dir, OsStr::new("sub")).unwrap().attr.ino;
    assert_eq!(
        fs.lookup(&ctx, sub, OsStr::new("c")).unwrap().attr.size,
        3000
    );
    assert_eq!(
        fs.lookup(&ctx, Ino::ROOT, OsStr::new("long file name number one.txt"))
            .unwrap()
            .attr
            .size,
        3000
    );
}

#[test]
fn a_directory_that_contains_itself_is_refused() {
    // Point dir/sub's cluster at dir: a cycle that would make `find` endless.
    let mut bytes = pristine().clone();
    let disk = Ramdisk::new(IMAGE_BYTES).unwrap();
    disk.write_all_at(&bytes, 0).unwrap();
    let fs = FatFs::open(Arc::new(disk), FatOptions::default()).unwrap();
    let geo = fs.geometry().clone();
    let ctx = Context::current();
    let dir = fs.lookup(&ctx, Ino::ROOT, OsStr::new("dir")).unwrap();
    drop(fs);
    // "dir" is the first entry after the root's volume label, if any; find it by name.
    let root = geo.root_offset as usize;
    let slot = (0..geo.root_entries as usize)
        .find(|i| &bytes[root + i * 32..root + i * 32 + 3] == b"DIR")
        .unwrap();
    let dir_cluster =
        u16::from_le_bytes([bytes[root + slot * 32 + 26], bytes[root + slot * 32 + 27]]) as u32;
    let dir_data = geo.cluster_offset(dir_cluster) as usize;
    let sub = (0..64)
        .find(|i| &bytes[dir_data + i * 32..dir_data + i * 32 + 3] == b"SUB")
        .unwrap();
    bytes[dir_data + sub * 32 + 26..dir_data + sub * 32 + 28]
        .copy_from_slice(&(dir_cluster as u16).to_le_bytes());
    let disk = Ramdisk::new(IMAGE_BYTES).unwrap();
    disk.write_all_at(&bytes, 0).unwrap();
    let fs = FatFs::open(Arc::new(disk), FatOptions::default()).unwrap();
    let dir_ino = fs
        .lookup(&ctx, Ino::ROOT, OsStr::new("dir"))
        .unwrap()
        .attr
        .ino;
    assert_eq!(dir.attr.kind, FileKind::Dir);
    assert_eq!(
        fs.lookup(&ctx, dir_ino, OsStr::new("sub")).unwrap_err(),
        vufuse_api::Errno::EIO
    );
}
