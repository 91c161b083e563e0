//! `vuimg format`: FAT12/16/32 written in process at several sizes and
//! cluster sizes pass fsck.fat, agree with file(1) and minfo, and hold files
//! that mtools and our driver both read; ext4 through mke2fs passes e2fsck.

mod common;
use common::*;

/// (size, type, cluster size, expected `file -s` FAT width, sectors/cluster)
const CASES: &[(&str, &str, Option<&str>, &str, u32)] = &[
    ("2M", "fat", None, "FAT (12 bit)", 4),
    ("4M", "fat12", Some("1K"), "FAT (12 bit)", 2),
    ("16M", "fat", None, "FAT (16 bit)", 4),
    ("64M", "fat16", Some("8K"), "FAT (16 bit)", 16),
    ("200M", "fat", None, "FAT (16 bit)", 8),
    ("40M", "fat32", None, "FAT (32 bit)", 1),
    ("600M", "fat", None, "FAT (32 bit)", 8),
    ("1G", "fat32", Some("1K"), "FAT (32 bit)", 2),
];

#[test]
fn fat_formats_pass_fsck_and_agree_with_file_and_minfo() {
    let dir = tempfile::tempdir().unwrap();
    let payload = dir.path().join("payload.txt");
    std::fs::write(&payload, b"written by vuimg after format\n").unwrap();
    let via_mtools = dir.path().join("mtools.txt");
    std::fs::write(&via_mtools, b"written by mcopy\n").unwrap();
    for (i, (size, fs, cluster, width, spc)) in CASES.iter().enumerate() {
        let img = dir.path().join(format!("f{i}.img"));
        ok(&["create", s(&img), size]);
        let mut args = vec!["format", "-q", s(&img), fs, "--label", "VOL"];
        if let Some(c) = cluster {
            args.extend(["--cluster-size", c]);
        }
        ok(&args);
        let (clean, text) = tool("fsck.fat", &["-n", s(&img)]);
        assert!(
            clean && text.trim().lines().count() == 2,
            "{size} {fs}: {text}"
        );
        let file = String::from_utf8(tool_bytes("file", &["-s", s(&img)])).unwrap();
        assert!(file.contains(width), "{size} {fs}: {file}");
        assert!(file.contains("label: \"VOL        \""), "{file}");
        if *spc > 1 {
            assert!(file.contains(&format!("sectors/cluster {spc}")), "{file}");
        }
        let minfo = String::from_utf8(tool_bytes("minfo", &["-i", s(&img), "::"])).unwrap();
        assert!(
            minfo.contains(&format!("cluster size: {spc} sectors")),
            "{size} {fs}: {minfo}"
        );
        // Our driver writes, mtools reads; mtools writes, our driver reads.
        ok(&["cp", s(&payload), &format!("{}:/payload.txt", s(&img))]);
        assert_eq!(
            tool_bytes("mtype", &["-i", s(&img), "::/payload.txt"]),
            std::fs::read(&payload).unwrap()
        );
        tool_bytes("mcopy", &["-i", s(&img), s(&via_mtools), "::/mtools.txt"]);
        assert_eq!(
            ok(&["cat", &format!("{}:/mtools.txt", s(&img))]).as_bytes(),
            std::fs::read(&via_mtools).unwrap()
        );
        let (clean, text) = tool("fsck.fat", &["-n", s(&img)]);
        assert!(
            clean && text.trim().lines().count() == 2,
            "{size} {fs} after copies: {text}"
        );
        std::fs::remove_file(&img).unwrap();
    }
}

#[test]
fn partitions_are_formatted_in_place() {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("disk.img");
    ok(&["create", s(&img), "96M"]);
    ok(&["part", "new", s(&img), "mbr", "--id", "0x01020304"]);
    ok(&["part", "add", s(&img), "fat16", "--size", "32M"]);
    ok(&["part", "add", s(&img), "linux"]);
    ok(&[
        "format",
        "-q",
        &format!("{}@1", s(&img)),
        "fat",
        "-L",
        "DATA",
    ]);
    let out = vuimg(&["format", &format!("{}@2", s(&img)), "ext4", "-L", "root"]);
    assert!(out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("mke2fs"),
        "the ext format says which tool it runs"
    );
    let (offset, len) = partition(&img, 1);
    let part = dir.path().join("p1.img");
    extract(&img, offset, len, &part);
    let file = String::from_utf8(tool_bytes("file", &["-s", s(&part)])).unwrap();
    assert!(
        file.contains("hidden sectors 2048") && file.contains("FAT (16 bit)"),
        "{file}"
    );
    fsck_fat(&img, 1, dir.path());
    e2fsck(&img, 2);
    let (_, dump) = tool("dumpe2fs", &["-h", &e2fs_image(&img, 2)]);
    assert!(dump.contains("Filesystem volume name:   root"), "{dump}");
    // The table is untouched by formatting.
    let (verified, text) = tool("sfdisk", &["--verify", s(&img)]);
    assert!(verified, "{text}");
    // Bad requests fail and leave the image alone.
    let before = sha256(&img);
    fails(
        &["format", &format!("{}@1", s(&img)), "fat32"],
        1,
        "cannot hold FAT32",
    );
    fails(
        &[
            "format",
            &format!("{}@1", s(&img)),
            "fat",
            "--cluster-size",
            "3K",
        ],
        1,
        "power of two",
    );
    fails(
        &[
            "format",
            &format!("{}@1", s(&img)),
            "fat",
            "-L",
            "much too long label",
        ],
        1,
        "11 ASCII",
    );
    fails(
        &["format", &format!("{}@5", s(&img)), "fat"],
        1,
        "no such partition",
    );
    fails(&["format", s(&img), "ntfs"], 1, "unknown filesystem");
    assert_eq!(sha256(&img), before);
}

/// `vuimg format IMG@N exfat` (label, cluster size) passes fsck.exfat and dump.exfat agrees;
/// `vuimg cp/ls/cat` then write and read it, and the tree passes fsck.exfat again; `vuimg
/// build` takes `fs = "exfat"`.
#[test]
fn exfat_formats_copies_and_builds_pass_fsck_exfat() {
    let (have, _) = tool(
        "sh",
        &["-c", "command -v fsck.exfat && command -v dump.exfat"],
    );
    if !have {
        eprintln!("skipped exfat_formats_copies_and_builds_pass_fsck_exfat: exfatprogs missing");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("card.img");
    ok(&["create", s(&img), "96M"]);
    ok(&["part", "new", s(&img), "mbr"]);
    ok(&["part", "add", s(&img), "exfat"]);
    let part = format!("{}@1", s(&img));
    ok(&[
        "format",
        "-q",
        &part,
        "exfat",
        "--label",
        "SDXC",
        "--cluster-size",
        "32K",
    ]);
    let p1 = dir.path().join("p1.img");
    let (offset, len) = partition(&img, 1);
    extract(&img, offset, len, &p1);
    let (clean, text) = tool("fsck.exfat", &["-n", s(&p1)]);
    assert!(clean, "{text}");
    let (_, dump) = tool("dump.exfat", &[s(&p1)]);
    assert!(dump.contains("SDXC"), "{dump}");
    assert!(dump.contains("32768"), "cluster size: {dump}");

    let src = dir.path().join("src");
    std::fs::create_dir_all(src.join("DCIM/100CANON")).unwrap();
    std::fs::write(src.join("DCIM/100CANON/IMG_0001.JPG"), vec![7u8; 200_000]).unwrap();
    std::fs::write(src.join("naïve 日本.txt"), "unicode\n").unwrap();
    std::os::unix::fs::symlink("naïve 日本.txt", src.join("link")).unwrap();
    ok(&[
        "cp",
        "-q",
        "-r",
        &format!("{}/.", s(&src)),
        &format!("{part}:/"),
    ]);
    let listing = ok(&["ls", &format!("{part}:/")]);
    assert!(
        listing.contains("DCIM") && listing.contains("naïve 日本.txt"),
        "{listing}"
    );
    assert!(
        !listing.contains("link"),
        "symlinks are skipped on exFAT: {listing}"
    );
    assert_eq!(
        ok(&["cat", &format!("{part}:/NAÏVE 日本.TXT")]),
        "unicode\n"
    );
    extract(&img, offset, len, &p1);
    let (clean, text) = tool("fsck.exfat", &["-n", s(&p1)]);
    assert!(clean, "{text}");

    let spec = dir.path().join("card.toml");
    std::fs::write(
        &spec,
        format!(
            "size = \"64M\"\ntable = \"gpt\"\n[[partition]]\nfs = \"exfat\"\nlabel = \"BUILT\"\n\
             contents = [ {{ from = \"{}\", to = \"/\" }} ]\n",
            s(&src)
        ),
    )
    .unwrap();
    let built = dir.path().join("built.img");
    ok(&["build", "-q", s(&spec), "-o", s(&built)]);
    assert_eq!(
        ok(&["cat", &format!("{}@1:/naïve 日本.txt", s(&built))]),
        "unicode\n"
    );
}
