//! Fuzzing the mount path: a small image made by mkfs.exfat and filled by the driver is
//! mutated in its metadata (boot region, FAT, bitmap, up-case table, directories); opening,
//! walking the whole tree, reading every file and a few writes must never panic or hang.

mod common;

use common::*;
use proptest::prelude::*;
use std::ffi::OsStr;
use std::sync::{Arc, OnceLock};
use vudev::{BlockDevice, Ramdisk};
use vufuse_api::{FileKind, FileSystem, Ino};
use vufuse_exfat::{ExFatFs, ExFatOptions};

const IMAGE_BYTES: u64 = 4 << 20;
const HEAP: usize = 2 << 20;

/// The pristine image (None when mkfs.exfat is missing).
fn pristine() -> Option<&'static Vec<u8>> {
    static IMAGE: OnceLock<Option<Vec<u8>>> = OnceLock::new();
    IMAGE
        .get_or_init(|| exfatprogs_missing().is_none().then(build))
        .as_ref()
}

fn build() -> Vec<u8> {
    let dir = tempfile::tempdir().unwrap();
    let img = mkfs(dir.path(), "small.img", IMAGE_BYTES, None);
    let fs = open(&img, false);
    let c = ctx();
    let d = fs
        .mkdir(&c, Ino::ROOT, OsStr::new("dir"), 0o755)
        .unwrap()
        .attr
        .ino;
    let sub = fs
        .mkdir(&c, d, OsStr::new("sub dir"), 0o755)
        .unwrap()
        .attr
        .ino;
    for (parent, name, len) in [
        (Ino::ROOT, "a", 3000),
        (Ino::ROOT, "long file name number one.txt", 9000),
        (d, "b", 5000),
        (sub, "c 😀", 100),
        (d, "another long one.bin", 13000),
    ] {
        let (e, o) = fs.create(&c, parent, OsStr::new(name), 0o644, 0).unwrap();
        fs.write(&c, e.attr.ino, o.fh, 0, &pattern(len, len as u64))
            .unwrap();
        fs.release(&c, e.attr.ino, o.fh).unwrap();
    }
    // Fragment "a" into a FAT chain.
    let e = fs.lookup(&c, Ino::ROOT, OsStr::new("a")).unwrap();
    fs.write(&c, e.attr.ino, vufuse_api::Fh(0), 3000, &pattern(6000, 9))
        .unwrap();
    fs.destroy();
    drop(fs);
    fsck_clean(&img);
    std::fs::read(&img).unwrap()
}

fn walk(fs: &ExFatFs, ino: Ino, depth: u32, budget: &mut u32) {
    if depth > 16 || *budget == 0 {
        return;
    }
    let c = ctx();
    let Ok(fh) = fs.opendir(&c, ino) else {
        return;
    };
    let mut names = Vec::new();
    let _ = fs.readdir(&c, ino, fh, 0, &mut |e| {
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
        let Ok(entry) = fs.lookup(&c, ino, &name) else {
            continue;
        };
        let child = entry.attr.ino;
        if kind == FileKind::Dir {
            walk(fs, child, depth + 1, budget);
        } else if let Ok(opened) = fs.open(&c, child, libc::O_RDWR) {
            let mut buf = vec![0u8; 65536];
            let mut offset = 0u64;
            while offset < entry.attr.size.min(1 << 20) {
                match fs.read(&c, child, opened.fh, offset, &mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => offset += n as u64,
                }
            }
            let _ = fs.write(&c, child, opened.fh, 10, b"fuzz");
            let _ = fs.release(&c, child, opened.fh);
        }
        fs.forget(child, 1);
    }
}

fn exercise(bytes: &[u8]) {
    let disk = Ramdisk::new(IMAGE_BYTES).unwrap();
    disk.write_all_at(bytes, 0).unwrap();
    let dev: Arc<dyn BlockDevice> = Arc::new(disk);
    let opts = ExFatOptions {
        read_only: false,
        ..ExFatOptions::default()
    };
    if let Ok(fs) = ExFatFs::open(dev, opts) {
        let mut budget = 2000;
        walk(&fs, Ino::ROOT, 0, &mut budget);
        let c = ctx();
        let _ = fs.mkdir(&c, Ino::ROOT, OsStr::new("new dir"), 0o755);
        let _ = fs.rename(
            &c,
            Ino::ROOT,
            OsStr::new("a"),
            Ino::ROOT,
            OsStr::new("dir"),
            0,
        );
        let _ = fs.unlink(&c, Ino::ROOT, OsStr::new("long file name number one.txt"));
        let _ = fs.statfs(&c);
        fs.destroy();
    }
}

/// Offsets worth mutating: boot region, FAT head, bitmap, up-case table, root and the
/// first directory and file clusters.
fn metadata_offset() -> impl Strategy<Value = usize> {
    prop_oneof![
        0usize..24 * 512,
        (1usize << 20)..(1 << 20) + 256,
        HEAP..HEAP + 4096 * 12,
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1024, ..ProptestConfig::default() })]

    /// With `reseal`, the boot region checksum is recomputed, so mutated geometry gets past
    /// it and into the checks behind.
    #[test]
    fn mutated_images_never_panic(
        mutations in proptest::collection::vec((metadata_offset(), any::<u8>()), 1..24),
        reseal in any::<bool>(),
    ) {
        let Some(image) = pristine() else {
            testkit::skip("mkfs.exfat is missing");
            return Ok(());
        };
        let mut bytes = image.clone();
        for (offset, value) in mutations {
            bytes[offset] = value;
        }
        if reseal {
            let sum = vufuse_exfat::boot::region_checksum(&bytes[..12 * 512], 512);
            for word in bytes[11 * 512..12 * 512].chunks_exact_mut(4) {
                word.copy_from_slice(&sum.to_le_bytes());
            }
        }
        exercise(&bytes);
    }
}

#[test]
fn the_pristine_image_walks_clean() {
    let Some(image) = pristine() else {
        return testkit::skip("mkfs.exfat is missing");
    };
    let dev: Arc<dyn BlockDevice> = {
        let disk = Ramdisk::new(IMAGE_BYTES).unwrap();
        disk.write_all_at(image, 0).unwrap();
        Arc::new(disk)
    };
    let fs = ExFatFs::open(dev, ExFatOptions::default()).unwrap();
    let e = fs.lookup(&ctx(), Ino::ROOT, OsStr::new("A")).unwrap();
    assert_eq!(e.attr.size, 9000);
    let mut want = pattern(3000, 3000);
    want.extend(pattern(6000, 9));
    assert_eq!(read_file(&fs, e.attr.ino, 9000), want);
}
