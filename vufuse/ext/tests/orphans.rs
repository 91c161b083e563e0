//! The orphan list (files unlinked while open, chained from s_last_orphan through
//! i_dtime): closed in any order, left open when the filesystem is dropped, left on the
//! device by a crash and released by the next read-write mount, and a truncate a crash cut
//! short (an orphan with links, made with debugfs) settled at mount. e2fsck must be clean
//! after each.

use std::ffi::OsStr;
use std::path::Path;
use std::sync::Arc;
use vudev::{BlockDevice, FileDevice};
use vufuse_api::{Context, FileSystem, Ino};
use vufuse_ext::{ExtFs, ExtOptions};

fn open(img: &Path) -> ExtFs {
    let dev: Arc<dyn BlockDevice> = Arc::new(FileDevice::open(img, false).unwrap());
    let opts = ExtOptions {
        read_only: false,
        norecovery: false,
    };
    ExtFs::open(dev, opts).unwrap()
}

fn tools_missing() -> bool {
    let found = std::process::Command::new("sh")
        .args([
            "-c",
            "command -v mke2fs && command -v debugfs && command -v e2fsck",
        ])
        .output()
        .is_ok_and(|o| o.status.success());
    if !found {
        testkit::skip("mke2fs, debugfs or e2fsck is missing");
    }
    !found
}

fn n(name: &str) -> &OsStr {
    OsStr::new(name)
}

/// s_last_orphan as dumpe2fs reports it (0: none).
fn last_orphan(img: &Path) -> u32 {
    let out = testkit::sh(&format!("dumpe2fs -h '{}' 2>/dev/null", img.display()));
    out.lines()
        .find_map(|l| l.strip_prefix("First orphan inode:"))
        .map_or(0, |v| v.trim().parse().unwrap())
}

#[test]
fn orphans_are_released_and_the_image_stays_clean() {
    if tools_missing() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    std::fs::create_dir(&src).unwrap();
    for i in 0..6 {
        std::fs::write(
            src.join(format!("f{i}")),
            vec![b'a' + i as u8; 30_000 + i * 5000],
        )
        .unwrap();
    }
    let img = dir.path().join("a.img");
    testkit::sh(&format!(
        "truncate -s 32M '{0}' && mke2fs -q -F -t ext4 -b 4096 -d '{1}' '{0}'",
        img.display(),
        src.display()
    ));
    let c = Context::current();

    // Unlinked while open, closed in another order; two still open when the filesystem is
    // dropped (the drop frees them).
    {
        let fs = open(&img);
        let mut opened = Vec::new();
        for i in 0..6 {
            let e = fs.lookup(&c, Ino::ROOT, n(&format!("f{i}"))).unwrap();
            let o = fs.open(&c, e.attr.ino, libc::O_RDWR).unwrap();
            opened.push((e.attr.ino, o.fh));
        }
        for i in 0..5 {
            fs.unlink(&c, Ino::ROOT, n(&format!("f{i}"))).unwrap();
        }
        for i in [2usize, 4, 0] {
            fs.release(&c, opened[i].0, opened[i].1).unwrap();
        }
    }
    testkit::e2fsck_clean(&img);
    assert_eq!(last_orphan(&img), 0);

    // A crash with two orphans on the list: the next read-write mount frees them.
    {
        let fs = open(&img);
        let e = fs.lookup(&c, Ino::ROOT, n("f5")).unwrap();
        fs.open(&c, e.attr.ino, libc::O_RDWR).unwrap();
        fs.unlink(&c, Ino::ROOT, n("f5")).unwrap();
        let (e, o) = fs
            .create(&c, Ino::ROOT, n("h"), 0o644, libc::O_RDWR)
            .unwrap();
        fs.write(&c, e.attr.ino, o.fh, 0, &[7u8; 50_000]).unwrap();
        fs.unlink(&c, Ino::ROOT, n("h")).unwrap();
        std::mem::forget(fs); // the daemon killed: nothing more reaches the device
    }
    assert_ne!(last_orphan(&img), 0);
    let ino = {
        let fs = open(&img);
        let (e, o) = fs
            .create(&c, Ino::ROOT, n("cut"), 0o644, libc::O_RDWR)
            .unwrap();
        fs.write(&c, e.attr.ino, o.fh, 0, &[3u8; 80_000]).unwrap();
        fs.release(&c, e.attr.ino, o.fh).unwrap();
        e.attr.ino.0
    };
    testkit::e2fsck_clean(&img);
    assert_eq!(last_orphan(&img), 0);

    // A truncate to 5,000 bytes that a crash cut short: the inode on the list with links
    // and its 20 blocks; the mount drops the 18 past the size and unchains it.
    testkit::sh(&format!(
        "debugfs -w -R 'sif <{ino}> size 5000' '{0}' && debugfs -w -R 'ssv last_orphan {ino}' '{0}'",
        img.display()
    ));
    drop(open(&img));
    testkit::e2fsck_clean(&img);
    assert_eq!(last_orphan(&img), 0);
    let stat = testkit::sh(&format!("debugfs -R 'stat <{ino}>' '{}'", img.display()));
    assert!(stat.contains("Size: 5000"), "{stat}");
    assert!(stat.contains("Blockcount: 16"), "{stat}");
}
