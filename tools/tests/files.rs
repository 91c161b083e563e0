//! File commands on image addresses: a tree with long names, empty files and
//! a 100 MiB file goes into FAT and ext4 and back unchanged (`diff -r`);
//! ls/mkdir/rm/mv; every bad input exits 1 and leaves the image's bytes as
//! they were.

mod common;
use common::*;
use std::io::Write;
use std::path::Path;

fn make_tree(root: &Path) {
    let deep = root.join("a directory with a rather long name/and another level");
    std::fs::create_dir_all(&deep).unwrap();
    std::fs::create_dir_all(root.join("empty dir")).unwrap();
    std::fs::write(root.join("README.md"), b"hello\n").unwrap();
    std::fs::write(root.join("empty"), b"").unwrap();
    std::fs::write(deep.join("empty file.txt"), b"").unwrap();
    std::fs::write(
        deep.join("A File Name That Is Much Longer Than Eight Dot Three.configuration"),
        b"long names survive\n",
    )
    .unwrap();
    for i in 0..40 {
        std::fs::write(
            root.join(format!("file_{i:03}.dat")),
            vec![i as u8; i * 1000 + 1],
        )
        .unwrap();
    }
    // 100 MiB with varying content (a repeating but position-dependent pattern).
    let mut big = std::fs::File::create(root.join("big.bin")).unwrap();
    let mut block = vec![0u8; 1 << 20];
    for mib in 0..100u32 {
        for (i, b) in block.iter_mut().enumerate() {
            *b = (i as u32 ^ mib.wrapping_mul(2_654_435_761)) as u8;
        }
        big.write_all(&block).unwrap();
    }
}

fn diff_r(a: &Path, b: &Path) {
    let (same, text) = tool("diff", &["-r", s(a), s(b)]);
    assert!(same, "diff -r {} {}: {text}", a.display(), b.display());
}

#[test]
fn a_tree_round_trips_through_fat_and_ext4() {
    let dir = tempfile::tempdir().unwrap();
    let tree = dir.path().join("tree");
    make_tree(&tree);
    let img = dir.path().join("rt.img");
    let spec = dir.path().join("rt.toml");
    std::fs::write(
        &spec,
        "size = \"512M\"\ntable = \"gpt\"\n[[partition]]\nname = \"fat\"\nsize = \"180M\"\nfs = \"fat32\"\n[[partition]]\nname = \"ext\"\nfs = \"ext4\"\n",
    )
    .unwrap();
    ok(&["build", "-q", s(&spec), "-o", s(&img)]);
    for (n, name) in [(1, "fat"), (2, "ext")] {
        let inside = format!("{}@{name}:/copy", s(&img));
        ok(&["mkdir", &inside]);
        ok(&["cp", "-r", &format!("{}/.", s(&tree)), &inside]);
        let back = dir.path().join(format!("back-{name}"));
        ok(&["cp", "-r", &inside, s(&back)]);
        diff_r(&tree, &back);
        // Times survive (FAT keeps 2-second steps).
        let src = std::fs::metadata(tree.join("README.md")).unwrap();
        let got = std::fs::metadata(back.join("README.md")).unwrap();
        let delta = src
            .modified()
            .unwrap()
            .duration_since(got.modified().unwrap())
            .unwrap_or_default();
        assert!(delta.as_secs() < 2, "{name}: mtime moved by {delta:?}");
        std::fs::remove_dir_all(&back).unwrap();
        if n == 1 {
            fsck_fat(&img, 1, dir.path());
            // mtools reads the long name and the big file's bytes.
            let m = mtools_image(&img, 1);
            let long = tool_bytes(
                "mtype",
                &[
                    "-i",
                    &m,
                    "::/copy/a directory with a rather long name/and another level/A File Name That Is Much Longer Than Eight Dot Three.configuration",
                ],
            );
            assert_eq!(long, b"long names survive\n");
        } else {
            e2fsck(&img, 2);
            let e = e2fs_image(&img, 2);
            let dump = dir.path().join("rdump");
            std::fs::create_dir(&dump).unwrap();
            tool_bytes("debugfs", &["-R", &format!("rdump /copy {}", s(&dump)), &e]);
            diff_r(&tree, &dump.join("copy"));
            // Modes are kept on ext.
            let json = ok(&["ls", "--json", &format!("{}@ext:/copy", s(&img))]);
            assert!(json.contains("\"mode\": \"0644\""), "{json}");
        }
    }
    // Image to image: FAT partition to ext partition.
    ok(&[
        "cp",
        &format!("{}@fat:/copy/big.bin", s(&img)),
        &format!("{}@ext:/big-from-fat.bin", s(&img)),
    ]);
    let e = e2fs_image(&img, 2);
    let out = dir.path().join("big-from-fat.bin");
    tool_bytes(
        "debugfs",
        &["-R", &format!("dump /big-from-fat.bin {}", s(&out)), &e],
    );
    let (same, _) = tool("cmp", &[s(&out), s(&tree.join("big.bin"))]);
    assert!(same);
    e2fsck(&img, 2);
}

#[test]
fn ls_mkdir_mv_rm_edit_a_card() {
    let dir = tempfile::tempdir().unwrap();
    let img = small_card(dir.path());
    let hello = dir.path().join("hello.txt");
    std::fs::write(&hello, b"hi\n").unwrap();
    for n in ["1", "2"] {
        let at = |p: &str| format!("{}@{n}:{p}", s(&img));
        ok(&["mkdir", "-p", &at("/a/b/c")]);
        ok(&["cp", s(&hello), &at("/a/b/c/")]);
        assert_eq!(ok(&["ls", &at("/a/b/c")]).trim(), "hello.txt");
        ok(&["mv", &at("/a/b/c/hello.txt"), &at("/a/renamed.txt")]);
        assert_eq!(ok(&["cat", &at("/a/renamed.txt")]), "hi\n");
        let long = ok(&["ls", "-l", &at("/a")]);
        assert!(
            long.contains("renamed.txt") && long.starts_with('d'),
            "{long}"
        );
        fails(&["rm", &at("/a/b")], 1, "is a directory");
        ok(&["rm", "-r", &at("/a/b")]);
        ok(&["rm", &at("/a/renamed.txt")]);
        assert_eq!(ok(&["ls", &at("/a")]).trim(), "");
    }
    // Within one filesystem, and a symbolic link (ext keeps it; FAT has none).
    let at2 = |p: &str| format!("{}@2:{p}", s(&img));
    ok(&["cp", s(&hello), &at2("/one.txt")]);
    ok(&["cp", &at2("/one.txt"), &at2("/two.txt")]);
    assert_eq!(ok(&["cat", &at2("/two.txt")]), "hi\n");
    let link = dir.path().join("link");
    std::os::unix::fs::symlink("one.txt", &link).unwrap();
    ok(&["cp", s(&link), &at2("/link")]);
    assert!(ok(&["ls", "-l", &at2("/")]).contains("link -> one.txt"));
    let e = e2fs_image(&img, 2);
    let (_, stat) = tool("debugfs", &["-R", "stat /link", &e]);
    assert!(stat.contains("Type: symlink"), "{stat}");
    fsck_fat(&img, 1, dir.path());
    e2fsck(&img, 2);
}

#[test]
fn bad_inputs_exit_1_and_leave_the_image_unchanged() {
    let dir = tempfile::tempdir().unwrap();
    let img = small_card(dir.path());
    let i = s(&img);
    let big = dir.path().join("big.bin");
    std::fs::File::create(&big)
        .unwrap()
        .set_len(100 << 20)
        .unwrap();
    let before = sha256(&img);
    let check = |args: &[&str], needle: &str| {
        fails(args, 1, needle);
        assert_eq!(sha256(&img), before, "vuimg {args:?} changed the image");
    };
    // A copy larger than the free space (64M FAT partition).
    check(&["cp", s(&big), &format!("{i}@1:/big.bin")], "only");
    // A missing source.
    check(
        &["cp", "/no/such/file", &format!("{i}@1:/x")],
        "/no/such/file: No such file",
    );
    check(&["cp", &format!("{i}@2:/absent"), s(dir.path())], "/absent");
    // An address naming no partition.
    check(&["ls", &format!("{i}@7:/")], "@7: no such partition");
    check(
        &["cp", s(&big), &format!("{i}@boot:/b")],
        "@boot: no such partition",
    );
    // Not an image address.
    check(&["cat", "/no/such.img:/x"], "no image file");
    // A directory without -r.
    check(&["cp", s(dir.path()), &format!("{i}@2:/d")], "use -r");
    // A corrupt filesystem: damage the FAT boot sector and ext superblock of a copy.
    let bad = dir.path().join("corrupt.img");
    std::fs::copy(&img, &bad).unwrap();
    let (fat_off, _) = partition(&bad, 1);
    let (ext_off, _) = partition(&bad, 2);
    {
        use std::os::unix::fs::FileExt;
        let f = std::fs::OpenOptions::new().write(true).open(&bad).unwrap();
        // FAT: 0 sectors per cluster is impossible but keeps the signature.
        f.write_all_at(&[0], fat_off + 13).unwrap();
        // ext: a superblock claiming more blocks than the partition has.
        f.write_all_at(&u32::MAX.to_le_bytes(), ext_off + 1024 + 4)
            .unwrap();
    }
    let bad_sum = sha256(&bad);
    for (n, needle) in [
        ("1", "corrupt FAT filesystem"),
        ("2", "corrupt or unsupported ext"),
    ] {
        fails(
            &[
                "cp",
                s(&dir.path().join("small.toml")),
                &format!("{}@{n}:/x", s(&bad)),
            ],
            1,
            needle,
        );
        assert_eq!(sha256(&bad), bad_sum);
    }
}
