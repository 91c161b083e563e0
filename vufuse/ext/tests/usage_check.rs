//! A read-write mount first checks that the bitmaps cover what the inodes use (a block of
//! a file marked free, an inode in use marked free, a block claimed by two files, a file's
//! block inside an inode table): a read-write mount would hand such blocks out again and
//! the new files would share them. Each corruption is made with debugfs on a fresh image;
//! the read-write open must be refused with a message naming the problem and e2fsck, the
//! read-only open must still work, and healthy images of every layout mount read-write.

use std::path::Path;
use std::sync::Arc;
use vudev::{BlockDevice, FileDevice};
use vufuse_api::MountError;
use vufuse_ext::{ExtFs, ExtOptions};

fn open(img: &Path, read_only: bool) -> Result<ExtFs, MountError> {
    let dev: Arc<dyn BlockDevice> = Arc::new(FileDevice::open(img, read_only).unwrap());
    ExtFs::open(
        dev,
        ExtOptions {
            read_only,
            norecovery: false,
        },
    )
}

fn tools_missing() -> bool {
    let missing = ["mke2fs", "debugfs"].into_iter().find(|tool| {
        !std::process::Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .output()
            .is_ok_and(|o| o.status.success())
    });
    if let Some(tool) = missing {
        testkit::skip(&format!("{tool} is missing"));
    }
    missing.is_some()
}

/// A fresh ext4 image with two files of a few blocks each, at `img`.
fn image_with_files(img: &Path, mkfs: &str) {
    let src = img.with_extension("src");
    std::fs::create_dir_all(src.join("dir")).unwrap();
    std::fs::write(src.join("a"), vec![1u8; 40_000]).unwrap();
    std::fs::write(src.join("dir/b"), vec![2u8; 40_000]).unwrap();
    testkit::sh(&format!(
        "truncate -s 32M '{0}' && mke2fs -q -F {mkfs} -d '{1}' '{0}'",
        img.display(),
        src.display()
    ));
}

/// The first physical block of `path` in the image.
fn first_block(img: &Path, path: &str) -> u64 {
    let out = testkit::sh(&format!(
        "debugfs -R 'bmap {path} 0' '{}' 2>/dev/null",
        img.display()
    ));
    out.trim()
        .parse()
        .unwrap_or_else(|_| panic!("bmap {path}: {out}"))
}

fn refusal(img: &Path) -> String {
    match open(img, false) {
        Ok(_) => panic!("a read-write open of {} was accepted", img.display()),
        Err(e) => e.to_string(),
    }
}

#[test]
fn bitmaps_that_miss_what_inodes_use_refuse_read_write_but_not_read_only() {
    if tools_missing() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().join("base.img");
    image_with_files(&base, "-t ext4");
    assert!(
        open(&base, false).is_ok(),
        "the healthy image mounts read-write"
    );

    let corrupt = |name: &str, request: String| {
        let img = dir.path().join(name);
        std::fs::copy(&base, &img).unwrap();
        testkit::sh(&format!(
            "debugfs -w -R '{request}' '{}' 2>/dev/null",
            img.display()
        ));
        img
    };
    let block = first_block(&base, "/a");

    let freed = corrupt("freeb.img", format!("freeb {block}"));
    let message = refusal(&freed);
    assert!(
        message.contains(&format!("block {block} of inode")) && message.contains("marked free"),
        "{message}"
    );
    assert!(message.contains("e2fsck -fy"), "{message}");
    assert!(open(&freed, true).is_ok(), "read-only still mounts");

    let inode = corrupt("freei.img", "freei /dir/b".to_string());
    let message = refusal(&inode);
    assert!(
        message.contains("inode") && message.contains("bitmap marks it free"),
        "{message}"
    );

    // /dir/b's first extent (i_block[5]: its start) pointed at /a's: a block claimed twice.
    let shared = corrupt(
        "shared.img",
        format!("sif /dir/b block[5] {}", block & 0xffff_ffff),
    );
    let message = refusal(&shared);
    assert!(message.contains("claimed by another inode"), "{message}");

    // /a's first block moved into group 0's inode table.
    let table = testkit::sh(&format!(
        "dumpe2fs '{}' 2>/dev/null | sed -n 's/.*Inode table at \\([0-9]*\\)-.*/\\1/p' | head -1",
        base.display()
    ));
    let table: u64 = table.trim().parse().unwrap();
    let inside = corrupt("itable.img", format!("sif /a block[5] {}", table + 1));
    let message = refusal(&inside);
    assert!(message.contains("inode table"), "{message}");
}

#[test]
fn healthy_images_of_every_layout_mount_read_write() {
    if tools_missing() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    for (name, mkfs) in [
        ("ext2", "-t ext2"),
        ("ext3", "-t ext3"),
        ("ext4", "-t ext4"),
        ("ext4-1k", "-t ext4 -b 1024"),
        ("bigalloc", "-t ext4 -O bigalloc -C 16384"),
        ("no-flex", "-t ext4 -O ^flex_bg"),
    ] {
        let img = dir.path().join(format!("{name}.img"));
        image_with_files(&img, mkfs);
        if let Err(e) = open(&img, false) {
            panic!("{name} ({mkfs}): {e}");
        }
    }
}
