//! The exFAT driver called in process through the `FileSystem` trait, on images made by
//! mkfs.exfat and filled by exfat-fuse, and on images it wrote itself, checked afterwards
//! with fsck.exfat and read back through exfat-fuse.

mod common;

use common::*;
use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use testkit::{s, sh, skip};
use vufuse_api::fs::RENAME_NOREPLACE;
use vufuse_api::{Errno, FileKind, FileSystem, Ino, SetAttr, SetTime};
use vufuse_exfat::ExFatFs;

const MIB: u64 = 1 << 20;

fn sample_tree(root: &Path) {
    std::fs::create_dir_all(root.join("Nested Dir/deeper/deepest")).unwrap();
    std::fs::create_dir_all(root.join("empty dir")).unwrap();
    std::fs::write(root.join("README.TXT"), "short name\n").unwrap();
    std::fs::write(
        root.join("A rather long file name with spaces.text"),
        "long\n",
    )
    .unwrap();
    std::fs::write(root.join("Café crème.txt"), "accents\n").unwrap();
    std::fs::write(root.join("日本語のファイル名.txt"), "cjk\n").unwrap();
    std::fs::write(root.join("emoji 😀🎉.bin"), "emoji\n").unwrap();
    std::fs::write(root.join(format!("{}.x", "n".repeat(253))), "longest\n").unwrap();
    std::fs::write(root.join("empty"), "").unwrap();
    std::fs::write(
        root.join("Nested Dir/big.bin"),
        pattern(3 * MIB as usize + 123, 1),
    )
    .unwrap();
    std::fs::write(root.join("Nested Dir/deeper/deepest/leaf.txt"), "leaf\n").unwrap();
    for i in 0..60 {
        std::fs::write(
            root.join(format!("Nested Dir/deeper/file{i:03}.dat")),
            pattern(i * 700, i as u64),
        )
        .unwrap();
    }
    // Whole seconds (odd ones too): what exfat-fuse stores.
    sh(&format!(
        "find {} -type f | while read -r f; do touch -d @1600000001 \"$f\"; done",
        s(root)
    ));
    sh(&format!(
        "touch -d @1700000000 {}",
        s(&root.join("README.TXT"))
    ));
}

fn files_only(tree: &BTreeMap<PathBuf, Seen>) -> Vec<(PathBuf, Option<usize>)> {
    tree.iter()
        .map(|(p, s)| (p.clone(), s.data.as_ref().map(Vec::len)))
        .collect()
}

#[test]
fn reads_a_tree_that_exfat_fuse_copied_in_identically() {
    if let Some(why) = exfat_fuse_missing() {
        return skip(&why);
    }
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    sample_tree(&src);
    let img = mkfs(dir.path(), "tree.img", 64 * MIB, None);
    let mnt = FuseMount::new(&img, &dir.path().join("mnt"));
    sh(&format!(
        "cp -r --preserve=timestamps {}/. {}/",
        s(&src),
        s(&mnt.dir)
    ));
    // Interleaved appends: exfat-fuse fragments these two into FAT chains.
    sh(&format!(
        "cd {} && for i in $(seq 40); do head -c 5000 /dev/urandom >> frag1; head -c 7000 /dev/urandom >> frag2; done",
        s(&mnt.dir)
    ));
    mnt.finish();
    fsck_clean(&img);
    // The fragmented files are compared against a copy read back by exfat-fuse.
    let mnt = FuseMount::new(&img, &dir.path().join("mnt"));
    sh(&format!(
        "cp --preserve=timestamps {0}/frag1 {0}/frag2 {1}/",
        s(&mnt.dir),
        s(&src)
    ));
    mnt.finish();

    let fs = open(&img, true);
    assert_eq!(fs.label(), "TESTVOL");
    let mut seen = BTreeMap::new();
    driver_tree(&fs, Ino::ROOT, Path::new(""), &mut seen);
    let expected = host_tree(&src);
    assert_eq!(files_only(&seen), files_only(&expected));
    for (path, want) in &expected {
        let got = &seen[path];
        assert_eq!(got.data, want.data, "{}", path.display());
        assert_eq!(got.mtime, want.mtime, "mtime of {}", path.display());
    }
    assert_eq!(
        seen[Path::new("README.TXT")].mtime,
        Some(UNIX_EPOCH + Duration::from_secs(1_700_000_000))
    );
    // Case-insensitive lookup through the volume's up-case table.
    let e = fs
        .lookup(&ctx(), Ino::ROOT, OsStr::new("CAFÉ CRÈME.TXT"))
        .unwrap();
    assert_eq!(e.attr.size, 8);
    let st = fs.statfs(&ctx()).unwrap();
    assert!(st.blocks_free < st.blocks && st.blocks_free > 0);
}

/// Builds a known tree through the driver, with every kind of change.
fn write_through_driver(fs: &ExFatFs) -> BTreeMap<PathBuf, Seen> {
    let c = ctx();
    let mut want = BTreeMap::new();
    let dir_a = fs
        .mkdir(&c, Ino::ROOT, OsStr::new("dir a"), 0o755)
        .unwrap()
        .attr
        .ino;
    let dir_b = fs
        .mkdir(&c, Ino::ROOT, OsStr::new("Dir B"), 0o755)
        .unwrap()
        .attr
        .ino;
    let sub = fs
        .mkdir(&c, dir_a, OsStr::new("sub"), 0o755)
        .unwrap()
        .attr
        .ino;
    let gone = fs
        .mkdir(&c, dir_b, OsStr::new("to be removed"), 0o755)
        .unwrap()
        .attr
        .ino;
    let _ = gone;
    // A file written in pieces, out of order, with a hole in the middle.
    let (e, o) = fs
        .create(&c, dir_a, OsStr::new("pieces.bin"), 0o644, 0)
        .unwrap();
    let mut content = vec![0u8; 300_000];
    let tail = pattern(50_000, 7);
    fs.write(&c, e.attr.ino, o.fh, 250_000, &tail).unwrap();
    content[250_000..].copy_from_slice(&tail);
    let head = pattern(10_000, 8);
    fs.write(&c, e.attr.ino, o.fh, 0, &head).unwrap();
    content[..10_000].copy_from_slice(&head);
    fs.release(&c, e.attr.ino, o.fh).unwrap();
    want.insert(PathBuf::from("dir a/pieces.bin"), content);
    // Extended by truncate (past ValidDataLength: zeros), then shrunk, then appended.
    let (e, o) = fs.create(&c, sub, OsStr::new("resized"), 0o644, 0).unwrap();
    fs.write(&c, e.attr.ino, o.fh, 0, &pattern(9000, 9))
        .unwrap();
    let grow = SetAttr {
        size: Some(200_000),
        ..SetAttr::default()
    };
    assert_eq!(fs.setattr(&c, e.attr.ino, &grow).unwrap().size, 200_000);
    let mut back = vec![0u8; 200_000];
    assert_eq!(
        fs.read(&c, e.attr.ino, o.fh, 0, &mut back).unwrap(),
        200_000
    );
    assert_eq!(&back[..9000], &pattern(9000, 9)[..]);
    assert!(back[9000..].iter().all(|&b| b == 0));
    let shrink = SetAttr {
        size: Some(5000),
        ..SetAttr::default()
    };
    fs.setattr(&c, e.attr.ino, &shrink).unwrap();
    fs.write(&c, e.attr.ino, o.fh, 5000, b"appended").unwrap();
    let mut resized = pattern(9000, 9)[..5000].to_vec();
    resized.extend_from_slice(b"appended");
    fs.release(&c, e.attr.ino, o.fh).unwrap();
    want.insert(PathBuf::from("dir a/sub/resized"), resized);
    // Renamed across directories, with a new name.
    let (e, o) = fs
        .create(&c, dir_a, OsStr::new("mover.txt"), 0o644, 0)
        .unwrap();
    fs.write(&c, e.attr.ino, o.fh, 0, b"moved across").unwrap();
    fs.release(&c, e.attr.ino, o.fh).unwrap();
    fs.rename(
        &c,
        dir_a,
        OsStr::new("mover.txt"),
        dir_b,
        OsStr::new("moved with a much longer name.txt"),
        0,
    )
    .unwrap();
    assert_eq!(fs.getattr(&c, e.attr.ino, None).unwrap().size, 12);
    want.insert(
        PathBuf::from("Dir B/moved with a much longer name.txt"),
        b"moved across".to_vec(),
    );
    // A directory moved into another one, contents and all.
    fs.rename(
        &c,
        dir_a,
        OsStr::new("sub"),
        dir_b,
        OsStr::new("sub moved"),
        0,
    )
    .unwrap();
    let resized = want.remove(Path::new("dir a/sub/resized")).unwrap();
    want.insert(PathBuf::from("Dir B/sub moved/resized"), resized);
    // Not into itself.
    assert_eq!(
        fs.rename(&c, Ino::ROOT, OsStr::new("Dir B"), sub, OsStr::new("x"), 0),
        Err(Errno::EINVAL)
    );
    // Unlinked and removed.
    let (e, o) = fs
        .create(&c, Ino::ROOT, OsStr::new("unlinked"), 0o644, 0)
        .unwrap();
    fs.write(&c, e.attr.ino, o.fh, 0, &pattern(70_000, 3))
        .unwrap();
    fs.release(&c, e.attr.ino, o.fh).unwrap();
    fs.unlink(&c, Ino::ROOT, OsStr::new("unlinked")).unwrap();
    assert_eq!(
        fs.lookup(&c, Ino::ROOT, OsStr::new("unlinked")),
        Err(Errno::ENOENT)
    );
    assert_eq!(
        fs.rmdir(&c, Ino::ROOT, OsStr::new("dir a")),
        Err(Errno::ENOTEMPTY)
    );
    fs.rmdir(&c, dir_b, OsStr::new("to be removed")).unwrap();
    // Times set by utimens, and chmod a-w as the read-only attribute.
    let (e, o) = fs
        .create(&c, Ino::ROOT, OsStr::new("dated"), 0o644, 0)
        .unwrap();
    fs.write(&c, e.attr.ino, o.fh, 0, b"dated").unwrap();
    fs.release(&c, e.attr.ino, o.fh).unwrap();
    let when = UNIX_EPOCH + Duration::from_millis(1_500_000_000_250);
    let times = SetAttr {
        mtime: Some(SetTime::At(when)),
        atime: Some(SetTime::At(when)),
        mode: Some(0o444),
        ..SetAttr::default()
    };
    let attr = fs.setattr(&c, e.attr.ino, &times).unwrap();
    assert_eq!(attr.mtime, when);
    assert_eq!(attr.perm & 0o222, 0);
    want.insert(PathBuf::from("dated"), b"dated".to_vec());
    // RENAME_NOREPLACE onto an existing name.
    assert_eq!(
        fs.rename(
            &c,
            Ino::ROOT,
            OsStr::new("dated"),
            dir_a,
            OsStr::new("PIECES.BIN"),
            RENAME_NOREPLACE
        ),
        Err(Errno::EEXIST)
    );
    // A replacing rename.
    let (e, o) = fs
        .create(&c, Ino::ROOT, OsStr::new("replacer"), 0o644, 0)
        .unwrap();
    fs.write(&c, e.attr.ino, o.fh, 0, b"new content").unwrap();
    fs.release(&c, e.attr.ino, o.fh).unwrap();
    fs.rename(
        &c,
        Ino::ROOT,
        OsStr::new("replacer"),
        dir_a,
        OsStr::new("pieces.bin"),
        0,
    )
    .unwrap();
    want.insert(PathBuf::from("dir a/pieces.bin"), b"new content".to_vec());
    let mut tree: BTreeMap<PathBuf, Seen> = want
        .into_iter()
        .map(|(p, d)| {
            (
                p,
                Seen {
                    data: Some(d),
                    mtime: None,
                },
            )
        })
        .collect();
    for d in ["dir a", "Dir B", "Dir B/sub moved"] {
        tree.insert(
            PathBuf::from(d),
            Seen {
                data: None,
                mtime: None,
            },
        );
    }
    tree
}

fn without_mtimes(tree: BTreeMap<PathBuf, Seen>) -> BTreeMap<PathBuf, Option<Vec<u8>>> {
    tree.into_iter().map(|(p, s)| (p, s.data)).collect()
}

#[test]
fn what_the_driver_writes_passes_fsck_and_reads_back_through_exfat_fuse() {
    if let Some(why) = exfatprogs_missing() {
        return skip(&why);
    }
    let dir = tempfile::tempdir().unwrap();
    let img = mkfs(dir.path(), "rw.img", 64 * MIB, None);
    let fs = open(&img, false);
    let want = write_through_driver(&fs);
    fs.destroy();
    drop(fs);
    fsck_clean(&img);
    let fs = open(&img, true);
    let mut seen = BTreeMap::new();
    driver_tree(&fs, Ino::ROOT, Path::new(""), &mut seen);
    assert_eq!(without_mtimes(seen), without_mtimes(want.clone()));
    drop(fs);
    if let Some(why) = exfat_fuse_missing() {
        return skip(&why);
    }
    let mnt = FuseMount::new(&img, &dir.path().join("mnt"));
    let host = host_tree(&mnt.dir);
    let dated = std::fs::metadata(mnt.dir.join("dated")).unwrap();
    mnt.finish();
    assert_eq!(without_mtimes(host), without_mtimes(want));
    // exfat-fuse keeps whole seconds.
    assert_eq!(
        dated.modified().unwrap(),
        UNIX_EPOCH + Duration::from_secs(1_500_000_000)
    );
    // The read-only attribute survived on disk.
    let attr = open(&img, true)
        .lookup(&ctx(), Ino::ROOT, OsStr::new("dated"))
        .unwrap()
        .attr;
    assert_eq!(attr.perm & 0o222, 0);
}

#[test]
fn format_output_passes_fsck_for_several_cluster_sizes_and_matches_mkfs() {
    if let Some(why) = exfatprogs_missing() {
        return skip(&why);
    }
    let dir = tempfile::tempdir().unwrap();
    for (size, cluster) in [
        (16 * MIB, 512),
        (64 * MIB, 4096),
        (300 * MIB, 32768),
        (64 * MIB, 1 << 20),
        (256 * MIB, 32 << 20),
    ] {
        let img = dir.path().join(format!("fmt{cluster}.img"));
        std::fs::File::create(&img).unwrap().set_len(size).unwrap();
        let dev = vudev::FileDevice::open(&img, false).unwrap();
        let opts = vufuse_exfat::format::FormatOptions {
            label: Some("Formatted".into()),
            cluster_size: Some(cluster),
            serial: Some(0x1234_5678),
        };
        vufuse_exfat::format::format(&dev, &opts).unwrap();
        drop(dev);
        fsck_clean(&img);
        // The same geometry as mkfs.exfat with the same cluster size.
        let theirs = mkfs(dir.path(), "theirs.img", size, Some(cluster));
        let a = std::fs::read(&img).unwrap();
        let b = std::fs::read(&theirs).unwrap();
        assert_eq!(
            a[64..100],
            b[64..100],
            "boot sector geometry, {cluster}-byte clusters"
        );
        // Usable: a file written and read back, still clean.
        let fs = open(&img, false);
        assert_eq!(fs.label(), "Formatted");
        let (e, o) = fs
            .create(&ctx(), Ino::ROOT, OsStr::new("hello"), 0o644, 0)
            .unwrap();
        let data = pattern(cluster as usize * 2 + 17, 5);
        assert_eq!(
            fs.write(&ctx(), e.attr.ino, o.fh, 0, &data).unwrap(),
            data.len()
        );
        fs.release(&ctx(), e.attr.ino, o.fh).unwrap();
        fs.destroy();
        drop(fs);
        fsck_clean(&img);
        let fs = open(&img, true);
        let e = fs.lookup(&ctx(), Ino::ROOT, OsStr::new("HELLO")).unwrap();
        assert_eq!(read_file(&fs, e.attr.ino, e.attr.size), data);
        drop(fs);
        std::fs::remove_file(&img).unwrap();
        std::fs::remove_file(&theirs).unwrap();
    }
}

#[test]
fn unicode_names_keep_their_case_and_match_in_any_case() {
    if let Some(why) = exfatprogs_missing() {
        return skip(&why);
    }
    let dir = tempfile::tempdir().unwrap();
    let img = mkfs(dir.path(), "names.img", 16 * MIB, None);
    let fs = open(&img, false);
    let c = ctx();
    let longest: String = "é".repeat(255);
    let names = [
        "Café",
        "日本語のファイル",
        "emoji 😀🎉 party",
        "ÆØÅ æøå Ωμέγα",
        longest.as_str(),
    ];
    for name in names {
        let (e, o) = fs
            .create(&c, Ino::ROOT, OsStr::new(name), 0o644, 0)
            .unwrap();
        fs.write(&c, e.attr.ino, o.fh, 0, name.as_bytes()).unwrap();
        fs.release(&c, e.attr.ino, o.fh).unwrap();
    }
    assert_eq!(
        fs.create(&c, Ino::ROOT, OsStr::new(&"x".repeat(256)), 0o644, 0)
            .map(|_| ()),
        Err(Errno::ENAMETOOLONG)
    );
    assert_eq!(
        fs.create(&c, Ino::ROOT, OsStr::new("a:b"), 0o644, 0)
            .map(|_| ()),
        Err(Errno::EINVAL)
    );
    // Names differing only in case are one name.
    assert_eq!(
        fs.create(&c, Ino::ROOT, OsStr::new("CAFÉ"), 0o644, 0)
            .map(|_| ()),
        Err(Errno::EEXIST)
    );
    assert_eq!(
        fs.mkdir(&c, Ino::ROOT, OsStr::new("æøå ÆØÅ ΩΜΈΓΑ"), 0o755)
            .map(|_| ()),
        Err(Errno::EEXIST)
    );
    let a = fs.lookup(&c, Ino::ROOT, OsStr::new("café")).unwrap();
    let b = fs.lookup(&c, Ino::ROOT, OsStr::new("CAFÉ")).unwrap();
    assert_eq!(a.attr.ino, b.attr.ino);
    // A case-changing rename keeps the file and shows the new spelling.
    fs.rename(
        &c,
        Ino::ROOT,
        OsStr::new("café"),
        Ino::ROOT,
        OsStr::new("CAFÉ"),
        0,
    )
    .unwrap();
    fs.destroy();
    drop(fs);
    fsck_clean(&img);
    let fs = open(&img, true);
    let mut listed = Vec::new();
    fs.readdir(&c, Ino::ROOT, vufuse_api::Fh(0), 0, &mut |e| {
        listed.push(e.name.to_string_lossy().into_owned());
        true
    })
    .unwrap();
    for name in [
        "CAFÉ",
        "日本語のファイル",
        "emoji 😀🎉 party",
        "ÆØÅ æøå Ωμέγα",
        longest.as_str(),
    ] {
        assert!(listed.iter().any(|l| l == name), "{name} not in {listed:?}");
    }
    let e = fs
        .lookup(&c, Ino::ROOT, OsStr::new("EMOJI 😀🎉 PARTY"))
        .unwrap();
    assert_eq!(
        read_file(&fs, e.attr.ino, e.attr.size),
        "emoji 😀🎉 party".as_bytes()
    );
    drop(fs);
    if let Some(why) = exfat_fuse_missing() {
        return skip(&why);
    }
    let mnt = FuseMount::new(&img, &dir.path().join("mnt"));
    let host: Vec<String> = std::fs::read_dir(&mnt.dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    let content = std::fs::read(mnt.dir.join("日本語のファイル")).unwrap();
    mnt.finish();
    for name in ["CAFÉ", "emoji 😀🎉 party", longest.as_str()] {
        assert!(host.iter().any(|h| h == name), "exfat-fuse lists {host:?}");
    }
    assert_eq!(content, "日本語のファイル".as_bytes());
}

#[test]
fn a_sparse_write_at_five_gigabytes() {
    if let Some(why) = exfatprogs_missing() {
        return skip(&why);
    }
    let dir = tempfile::tempdir().unwrap();
    let img = mkfs(dir.path(), "big.img", 6 << 30, None);
    let fs = open(&img, false);
    let c = ctx();
    let (e, o) = fs
        .create(&c, Ino::ROOT, OsStr::new("big"), 0o644, 0)
        .unwrap();
    fs.write(&c, e.attr.ino, o.fh, 0, b"head").unwrap();
    let at = 5_000_000_000u64;
    assert_eq!(fs.write(&c, e.attr.ino, o.fh, at, b"tail").unwrap(), 4);
    let attr = fs.getattr(&c, e.attr.ino, None).unwrap();
    assert_eq!(attr.size, at + 4);
    let mut buf = [1u8; 8];
    assert_eq!(fs.read(&c, e.attr.ino, o.fh, at - 4, &mut buf).unwrap(), 8);
    assert_eq!(&buf, b"\0\0\0\0tail");
    assert_eq!(
        fs.read(&c, e.attr.ino, o.fh, 3_000_000_000, &mut buf)
            .unwrap(),
        8
    );
    assert_eq!(buf, [0; 8]);
    fs.release(&c, e.attr.ino, o.fh).unwrap();
    fs.destroy();
    drop(fs);
    fsck_clean(&img);
    let fs = open(&img, true);
    let e = fs.lookup(&c, Ino::ROOT, OsStr::new("BIG")).unwrap();
    assert_eq!(e.attr.size, at + 4);
    let mut buf = [0u8; 4];
    fs.open(&c, e.attr.ino, libc::O_RDONLY).unwrap();
    fs.read(&c, e.attr.ino, vufuse_api::Fh(0), 0, &mut buf)
        .unwrap();
    assert_eq!(&buf, b"head");
    // The gap was discarded, not written: the image stays sparse.
    let used_kib: u64 = sh(&format!("du -k {} | cut -f1", s(&img)))
        .trim()
        .parse()
        .unwrap();
    assert!(used_kib < 512 * 1024, "image uses {used_kib} KiB");
}

#[test]
fn ten_thousand_entries_in_one_directory_stay_fast() {
    if let Some(why) = exfatprogs_missing() {
        return skip(&why);
    }
    let dir = tempfile::tempdir().unwrap();
    let img = mkfs(dir.path(), "many.img", 128 * MIB, None);
    let fs = open(&img, false);
    let c = ctx();
    let d = fs
        .mkdir(&c, Ino::ROOT, OsStr::new("many"), 0o755)
        .unwrap()
        .attr
        .ino;
    let started = Instant::now();
    for i in 0..10_000 {
        let (e, o) = fs
            .create(&c, d, OsStr::new(&format!("file_{i:05}.dat")), 0o644, 0)
            .unwrap();
        fs.release(&c, e.attr.ino, o.fh).unwrap();
        fs.forget(e.attr.ino, 1);
    }
    for i in (0..10_000).step_by(7) {
        let e = fs
            .lookup(&c, d, OsStr::new(&format!("FILE_{i:05}.DAT")))
            .unwrap();
        fs.forget(e.attr.ino, 1);
    }
    let elapsed = started.elapsed();
    assert!(
        elapsed < Duration::from_secs(20),
        "10,000 creates took {elapsed:?}"
    );
    assert_eq!(
        fs.create(&c, d, OsStr::new("file_09999.DAT"), 0o644, 0)
            .map(|_| ()),
        Err(Errno::EEXIST)
    );
    fs.destroy();
    drop(fs);
    let report = fsck_clean(&img);
    assert!(report.contains("files 10000"), "{report}");
    let fs = open(&img, true);
    let d = fs
        .lookup(&c, Ino::ROOT, OsStr::new("many"))
        .unwrap()
        .attr
        .ino;
    let mut count = 0;
    fs.readdir(&c, d, vufuse_api::Fh(0), 0, &mut |_| {
        count += 1;
        true
    })
    .unwrap();
    assert_eq!(count, 10_002);
}

#[test]
fn a_full_volume_gives_enospc_and_stays_consistent() {
    if let Some(why) = exfatprogs_missing() {
        return skip(&why);
    }
    let dir = tempfile::tempdir().unwrap();
    let img = mkfs(dir.path(), "full.img", 4 * MIB, None);
    let fs = open(&img, false);
    let c = ctx();
    let (e, o) = fs
        .create(&c, Ino::ROOT, OsStr::new("filler"), 0o644, 0)
        .unwrap();
    let chunk = pattern(256 * 1024, 2);
    let mut offset = 0u64;
    let err = loop {
        match fs.write(&c, e.attr.ino, o.fh, offset, &chunk) {
            Ok(n) => offset += n as u64,
            Err(e) => break e,
        }
        assert!(offset < 8 * MIB, "writes never stopped");
    };
    assert_eq!(err, Errno::ENOSPC);
    assert_eq!(fs.statfs(&c).unwrap().blocks_free, 0);
    fs.release(&c, e.attr.ino, o.fh).unwrap();
    // Creating names still works until the root directory's cluster is full.
    let mut created = 0;
    let err = loop {
        match fs.create(
            &c,
            Ino::ROOT,
            OsStr::new(&format!("name number {created}")),
            0o644,
            0,
        ) {
            Ok((e, o)) => {
                fs.release(&c, e.attr.ino, o.fh).unwrap();
                created += 1;
            }
            Err(e) => break e,
        }
    };
    assert_eq!(err, Errno::ENOSPC);
    assert!(created > 10);
    assert_eq!(
        fs.mkdir(&c, Ino::ROOT, OsStr::new("no room"), 0o755)
            .map(|_| ()),
        Err(Errno::ENOSPC)
    );
    fs.destroy();
    drop(fs);
    fsck_clean(&img);
    let fs = open(&img, true);
    let e = fs.lookup(&c, Ino::ROOT, OsStr::new("filler")).unwrap();
    assert_eq!(e.attr.size, offset);
    assert_eq!(read_file(&fs, e.attr.ino, 256 * 1024), chunk);
}

#[test]
fn a_contiguous_file_becomes_a_fat_chain_when_it_cannot_grow_in_place() {
    if let Some(why) = exfatprogs_missing() {
        return skip(&why);
    }
    let dir = tempfile::tempdir().unwrap();
    let img = mkfs(dir.path(), "chain.img", 16 * MIB, None);
    let fs = open(&img, false);
    let c = ctx();
    let (a, oa) = fs.create(&c, Ino::ROOT, OsStr::new("a"), 0o644, 0).unwrap();
    let (b, ob) = fs.create(&c, Ino::ROOT, OsStr::new("b"), 0o644, 0).unwrap();
    let mut want_a = Vec::new();
    let mut want_b = Vec::new();
    for round in 0..6u64 {
        let pa = pattern(5000, round);
        let pb = pattern(3000, round + 100);
        fs.write(&c, a.attr.ino, oa.fh, want_a.len() as u64, &pa)
            .unwrap();
        fs.write(&c, b.attr.ino, ob.fh, want_b.len() as u64, &pb)
            .unwrap();
        want_a.extend(pa);
        want_b.extend(pb);
    }
    assert_eq!(read_file(&fs, a.attr.ino, want_a.len() as u64), want_a);
    fs.release(&c, a.attr.ino, oa.fh).unwrap();
    fs.release(&c, b.attr.ino, ob.fh).unwrap();
    fs.destroy();
    drop(fs);
    fsck_clean(&img);
    // The root's entry sets: "a" at slot 3, stream flags at byte 1 of slot 4.
    let raw = std::fs::read(&img).unwrap();
    let root = 2 * MIB as usize + 3 * 4096;
    let flags_a = raw[root + 4 * 32 + 1];
    assert_eq!(flags_a & 2, 0, "a should have become a FAT chain");
    let fs = open(&img, true);
    let a = fs.lookup(&c, Ino::ROOT, OsStr::new("a")).unwrap();
    let b = fs.lookup(&c, Ino::ROOT, OsStr::new("b")).unwrap();
    assert_eq!(read_file(&fs, a.attr.ino, a.attr.size), want_a);
    assert_eq!(read_file(&fs, b.attr.ino, b.attr.size), want_b);
}

#[test]
fn the_dirty_flag_is_set_while_mounted_read_write_and_cleared_at_unmount() {
    if let Some(why) = exfatprogs_missing() {
        return skip(&why);
    }
    let dir = tempfile::tempdir().unwrap();
    let img = mkfs(dir.path(), "dirty.img", 8 * MIB, None);
    let flags = |img: &Path| std::fs::read(img).unwrap()[106];
    let fs = open(&img, true);
    assert_eq!(flags(&img) & 2, 0);
    drop(fs);
    let fs = open(&img, false);
    assert_eq!(flags(&img) & 2, 2);
    fs.mkdir(&ctx(), Ino::ROOT, OsStr::new("d"), 0o755).unwrap();
    fs.destroy();
    assert_eq!(flags(&img) & 2, 0);
    fsck_clean(&img);
    let attr = open(&img, true)
        .lookup(&ctx(), Ino::ROOT, OsStr::new("d"))
        .unwrap()
        .attr;
    assert_eq!(attr.kind, FileKind::Dir);
    // The read-only mount refuses changes.
    let fs = open(&img, true);
    assert_eq!(
        fs.mkdir(&ctx(), Ino::ROOT, OsStr::new("e"), 0o755)
            .map(|_| ()),
        Err(Errno::EROFS)
    );
    let _ = SystemTime::now();
}

#[test]
fn an_open_unlinked_file_keeps_its_data_until_released() {
    if let Some(why) = exfatprogs_missing() {
        return skip(&why);
    }
    let dir = tempfile::tempdir().unwrap();
    let img = mkfs(dir.path(), "orphan.img", 8 * MIB, None);
    let fs = open(&img, false);
    let c = ctx();
    let free0 = fs.statfs(&c).unwrap().blocks_free;
    let (e, o) = fs
        .create(&c, Ino::ROOT, OsStr::new("orphan"), 0o644, 0)
        .unwrap();
    fs.write(&c, e.attr.ino, o.fh, 0, &pattern(40_000, 4))
        .unwrap();
    fs.unlink(&c, Ino::ROOT, OsStr::new("orphan")).unwrap();
    assert_eq!(
        fs.getattr(&c, e.attr.ino, None).unwrap().nlink,
        0,
        "no name left"
    );
    let mut buf = vec![0u8; 40_000];
    assert_eq!(fs.read(&c, e.attr.ino, o.fh, 0, &mut buf).unwrap(), 40_000);
    assert_eq!(buf, pattern(40_000, 4));
    assert!(fs.statfs(&c).unwrap().blocks_free < free0);
    fs.release(&c, e.attr.ino, o.fh).unwrap();
    fs.forget(e.attr.ino, 1);
    assert_eq!(fs.statfs(&c).unwrap().blocks_free, free0);
    fs.destroy();
    drop(fs);
    fsck_clean(&img);
}

/// What POSIX (and pjdfstest) asks of names and directories that exFAT can give: a name
/// past 255 UTF-16 units is `ENAMETOOLONG` even to look up, links of either kind are `EPERM`
/// (not `ENOSYS`), and a directory's write time moves when an entry is added, removed or
/// renamed, on disk too.
#[test]
fn long_names_links_and_directory_times_behave_as_the_kernel_exfat() {
    if let Some(why) = exfatprogs_missing() {
        return skip(&why);
    }
    let tmp = tempfile::tempdir().unwrap();
    let img = mkfs(tmp.path(), "names.img", 64 * MIB, None);
    let fs = open(&img, false);
    assert_eq!(
        fs.lookup(&ctx(), Ino::ROOT, OsStr::new(&"n".repeat(256)))
            .err(),
        Some(Errno::ENAMETOOLONG)
    );
    // 128 emoji are 256 UTF-16 units in 512 bytes; 127 of them fit.
    assert_eq!(
        fs.lookup(&ctx(), Ino::ROOT, OsStr::new(&"😀".repeat(128)))
            .err(),
        Some(Errno::ENAMETOOLONG)
    );
    assert_eq!(
        fs.lookup(&ctx(), Ino::ROOT, OsStr::new(&"😀".repeat(127)))
            .err(),
        Some(Errno::ENOENT)
    );
    let (file, opened) = fs
        .create(&ctx(), Ino::ROOT, OsStr::new("file"), 0o644, libc::O_WRONLY)
        .unwrap();
    fs.release(&ctx(), file.attr.ino, opened.fh).unwrap();
    assert_eq!(
        fs.symlink(&ctx(), Ino::ROOT, OsStr::new("sym"), Path::new("file"))
            .err(),
        Some(Errno::EPERM)
    );
    assert_eq!(
        fs.link(&ctx(), file.attr.ino, Ino::ROOT, OsStr::new("hard"))
            .err(),
        Some(Errno::EPERM)
    );

    let past = UNIX_EPOCH + Duration::from_secs(1_000_000_000);
    let mkdir = |parent, name: &str| {
        fs.mkdir(&ctx(), parent, OsStr::new(name), 0o755)
            .unwrap()
            .attr
            .ino
    };
    let (a, b) = (mkdir(Ino::ROOT, "a"), mkdir(Ino::ROOT, "b"));
    let set_past = |ino| {
        let set = SetAttr {
            mtime: Some(SetTime::At(past)),
            ..SetAttr::default()
        };
        fs.setattr(&ctx(), ino, &set).unwrap();
        assert_eq!(fs.getattr(&ctx(), ino, None).unwrap().mtime, past);
    };
    let moved = |ino, what: &str| {
        let mtime = fs.getattr(&ctx(), ino, None).unwrap().mtime;
        assert!(mtime > past, "{what}: directory mtime stayed {mtime:?}");
    };
    set_past(a);
    let (f, opened) = fs
        .create(&ctx(), a, OsStr::new("f"), 0o644, libc::O_WRONLY)
        .unwrap();
    fs.release(&ctx(), f.attr.ino, opened.fh).unwrap();
    moved(a, "create");
    set_past(a);
    mkdir(a, "sub");
    moved(a, "mkdir");
    set_past(a);
    set_past(b);
    fs.rename(&ctx(), a, OsStr::new("f"), b, OsStr::new("g"), 0)
        .unwrap();
    moved(a, "rename out");
    moved(b, "rename in");
    set_past(b);
    fs.unlink(&ctx(), b, OsStr::new("g")).unwrap();
    moved(b, "unlink");
    set_past(a);
    fs.rmdir(&ctx(), a, OsStr::new("sub")).unwrap();
    moved(a, "rmdir");
    fs.destroy();
    drop(fs);

    let fs = open(&img, true);
    let a = fs.lookup(&ctx(), Ino::ROOT, OsStr::new("a")).unwrap().attr;
    assert!(a.mtime > past, "the rmdir's time did not reach the disk");
    fsck_clean(&img);
}

/// Counts the bytes read from an image file.
struct CountingReads {
    inner: vudev::FileDevice,
    read: std::sync::atomic::AtomicU64,
    prefetched: std::sync::Mutex<Vec<(u64, u64)>>,
}

impl vudev::BlockDevice for CountingReads {
    fn size(&self) -> u64 {
        self.inner.size()
    }
    fn read_only(&self) -> bool {
        true
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> vudev::Result<usize> {
        let n = self.inner.read_at(buf, offset)?;
        self.read
            .fetch_add(n as u64, std::sync::atomic::Ordering::Relaxed);
        Ok(n)
    }
    fn write_at(&self, _buf: &[u8], _offset: u64) -> vudev::Result<usize> {
        Err(Errno::EROFS)
    }
    fn flush(&self) -> vudev::Result<()> {
        Ok(())
    }
    fn prefetch(&self, offset: u64, len: u64) {
        self.prefetched.lock().unwrap().push((offset, len));
    }
}

/// The image opened read-only by the driver over a [`CountingReads`] device.
fn open_counting(img: &Path) -> (std::sync::Arc<CountingReads>, ExFatFs) {
    let dev = std::sync::Arc::new(CountingReads {
        inner: vudev::FileDevice::open(img, true).unwrap(),
        read: Default::default(),
        prefetched: Default::default(),
    });
    let options = vufuse_exfat::ExFatOptions {
        read_only: true,
        ..Default::default()
    };
    let fs = ExFatFs::open(dev.clone(), options).unwrap();
    (dev, fs)
}

/// A small directory in a large cluster is read up to its end-of-directory entry, not whole:
/// walking 100 directories of two names each in 256 KiB clusters reads a few hundred KiB
/// (it read 25 MiB when every directory was read whole).
#[test]
fn small_directories_in_large_clusters_are_read_to_their_end_marker_only() {
    if let Some(reason) = exfatprogs_missing() {
        return skip(&reason);
    }
    let dir = tempfile::tempdir().unwrap();
    let img = mkfs(dir.path(), "big-clusters.img", 64 * MIB, Some(256 << 10));
    let c = ctx();
    {
        let fs = open(&img, false);
        for i in 0..100 {
            let d = fs
                .mkdir(&c, Ino::ROOT, OsStr::new(&format!("dir {i}")), 0o755)
                .unwrap();
            for name in ["a", "b"] {
                let (e, o) = fs
                    .create(&c, d.attr.ino, OsStr::new(name), 0o644, 0)
                    .unwrap();
                fs.release(&c, e.attr.ino, o.fh).unwrap();
            }
        }
        fs.destroy();
    }
    fsck_clean(&img);
    let (dev, fs) = open_counting(&img);
    let before = dev.read.load(std::sync::atomic::Ordering::Relaxed);
    let mut seen = BTreeMap::new();
    driver_tree(&fs, Ino::ROOT, Path::new(""), &mut seen);
    assert_eq!(seen.len(), 300);
    let walked = dev.read.load(std::sync::atomic::Ordering::Relaxed) - before;
    assert!(
        walked <= 100 * 8192,
        "walking 100 small directories read {walked} bytes"
    );
}

/// Opening a file announces the data of the files after it in its directory to the device
/// (a reader such as tar opens them in that order): one range per following file, each
/// inside the volume, and not again for the next open, which the window already covers.
#[test]
fn opening_a_file_prefetches_the_files_after_it() {
    if let Some(reason) = exfatprogs_missing() {
        return skip(&reason);
    }
    let dir = tempfile::tempdir().unwrap();
    let img = mkfs(dir.path(), "prefetch.img", 64 * MIB, Some(32 << 10));
    let c = ctx();
    {
        let fs = open(&img, false);
        for i in 0..20 {
            let (e, o) = fs
                .create(&c, Ino::ROOT, OsStr::new(&format!("f{i:02}")), 0o644, 0)
                .unwrap();
            fs.write(&c, e.attr.ino, o.fh, 0, &pattern(3000, i))
                .unwrap();
            fs.release(&c, e.attr.ino, o.fh).unwrap();
        }
        fs.destroy();
    }
    let (dev, fs) = open_counting(&img);
    let first = fs.lookup(&c, Ino::ROOT, OsStr::new("f00")).unwrap();
    let o = fs.open(&c, first.attr.ino, libc::O_RDONLY).unwrap();
    let announced = dev.prefetched.lock().unwrap().clone();
    assert_eq!(announced.len(), 19, "{announced:?}");
    assert!(announced
        .iter()
        .all(|&(at, len)| len == 3000 && at + len <= 64 * MIB));
    fs.release(&c, first.attr.ino, o.fh).unwrap();
    let second = fs.lookup(&c, Ino::ROOT, OsStr::new("f01")).unwrap();
    let o = fs.open(&c, second.attr.ino, libc::O_RDONLY).unwrap();
    assert_eq!(dev.prefetched.lock().unwrap().len(), 19, "announced again");
    fs.release(&c, second.attr.ino, o.fh).unwrap();
}

/// A sequential reader of a large file gets the clusters ahead of it announced to the device
/// (up to 8 MiB ahead, a new window when half of one is used), each range inside the file's
/// data; reads that jump about announce nothing.
#[test]
fn a_sequential_reader_gets_the_clusters_ahead_prefetched() {
    if let Some(reason) = exfatprogs_missing() {
        return skip(&reason);
    }
    let dir = tempfile::tempdir().unwrap();
    let img = mkfs(dir.path(), "readahead.img", 64 * MIB, Some(32 << 10));
    let c = ctx();
    let len = 20 * MIB;
    {
        let fs = open(&img, false);
        let (e, o) = fs
            .create(&c, Ino::ROOT, OsStr::new("big"), 0o644, 0)
            .unwrap();
        for i in 0..20 {
            fs.write(&c, e.attr.ino, o.fh, i * MIB, &pattern(MIB as usize, i))
                .unwrap();
        }
        fs.release(&c, e.attr.ino, o.fh).unwrap();
        fs.destroy();
    }
    let (dev, fs) = open_counting(&img);
    let big = fs.lookup(&c, Ino::ROOT, OsStr::new("big")).unwrap();
    let o = fs.open(&c, big.attr.ino, libc::O_RDONLY).unwrap();
    let mut buf = vec![0u8; MIB as usize];
    for i in 0..12 {
        fs.read(&c, big.attr.ino, o.fh, i * MIB, &mut buf).unwrap();
        assert_eq!(buf, pattern(MIB as usize, i), "MiB {i}");
    }
    let announced = dev.prefetched.lock().unwrap().clone();
    let total: u64 = announced.iter().map(|&(_, n)| n).sum();
    assert!(announced.len() >= 2, "{announced:?}");
    // Reading 12 MiB announced what lies ahead of it: from the first MiB up to 8 MiB past
    // the reader, never past the file.
    assert!(
        total >= 12 * MIB && total <= len,
        "{total} bytes announced: {announced:?}"
    );
    assert!(announced.iter().all(|&(at, n)| at + n <= 64 * MIB));
    // Jumping about: nothing more.
    let before = announced.len();
    for at in [17 * MIB, 3 * MIB, 9 * MIB + 4096] {
        fs.read(&c, big.attr.ino, o.fh, at, &mut buf[..4096])
            .unwrap();
    }
    assert_eq!(
        dev.prefetched.lock().unwrap().len(),
        before,
        "a random read prefetched"
    );
    fs.release(&c, big.attr.ino, o.fh).unwrap();
}
