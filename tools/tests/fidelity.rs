//! `vuimg cp` copies a tree as faithfully as `mkfs.ext4 -d`: hard links stay links, extended
//! attributes and ACLs are kept, fifos, sockets and device nodes are made, sparse files stay
//! sparse. Judged by debugfs against the image `mkfs.ext4 -d` makes of the same tree, by
//! e2fsck, and by copying the tree back out to the host. FAT takes what it can, with a note
//! for the rest.

mod common;
use common::*;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;

const SPARSE_SIZE: u64 = 16 << 20;

/// A tree with everything `mkfs.ext4 -d` keeps.
fn make_tree(root: &Path) {
    use rustix::fs::{mknodat, FileType, Mode, XattrFlags, CWD};
    std::fs::create_dir_all(root.join("sub")).unwrap();
    std::fs::write(root.join("a"), b"hello\n").unwrap();
    std::fs::hard_link(root.join("a"), root.join("sub/a2")).unwrap();
    std::fs::hard_link(root.join("a"), root.join("a3")).unwrap();
    std::os::unix::fs::symlink("a", root.join("lnk")).unwrap();
    let _socket = std::os::unix::net::UnixListener::bind(root.join("sock")).unwrap();
    mknodat(
        CWD,
        root.join("fifo"),
        FileType::Fifo,
        Mode::from_raw_mode(0o640),
        0,
    )
    .unwrap();
    let null = rustix::fs::makedev(1, 3);
    let node = Mode::from_raw_mode(0o600);
    mknodat(
        CWD,
        root.join("null"),
        FileType::CharacterDevice,
        node,
        null,
    )
    .unwrap();
    // Data at the start, in the middle and at the end of 16 MiB; the rest holes.
    let sparse = std::fs::File::create(root.join("sparse")).unwrap();
    sparse.set_len(SPARSE_SIZE).unwrap();
    for at in [0, SPARSE_SIZE / 2 + 123, SPARSE_SIZE - 5] {
        std::os::unix::fs::FileExt::write_all_at(&sparse, b"data!", at).unwrap();
    }
    let flags = XattrFlags::empty();
    rustix::fs::setxattr(root.join("a"), "user.color", b"blue", flags).unwrap();
    rustix::fs::setxattr(root.join("a"), "user.empty", b"", flags).unwrap();
    rustix::fs::setxattr(root.join("sub"), "trusted.note", b"\x00\x01binary", flags).unwrap();
    setfacl(&["-m", "u:65534:r", s(&root.join("a"))]);
    setfacl(&["-d", "-m", "u:65534:rx", s(&root.join("sub"))]);
}

fn setfacl(args: &[&str]) {
    let (ok, text) = tool("setfacl", args);
    assert!(ok, "setfacl {args:?}: {text}");
}

/// debugfs's `stat` of `path` without what differs between any two images (inode numbers,
/// times, checksums, generations, the extent dump).
fn stat_shape(image: &Path, path: &str) -> String {
    let (_, text) = tool("debugfs", &["-R", &format!("stat {path}"), s(image)]);
    text.lines()
        .filter(|l| {
            ![
                "time",
                "Inode:",
                "Generation",
                "checksum",
                "EXTENTS",
                "(0",
                "debugfs ",
                "File ACL:",
            ]
            .iter()
            .any(|skip| l.contains(skip))
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn ea_list(image: &Path, path: &str) -> String {
    let (_, text) = tool("debugfs", &["-R", &format!("ea_list {path}"), s(image)]);
    text.lines()
        .filter(|l| !l.starts_with("debugfs "))
        .collect::<Vec<_>>()
        .join("\n")
}

fn xattr(path: &Path, name: &str) -> Vec<u8> {
    let mut value = vec![0u8; 256];
    let n = rustix::fs::lgetxattr(path, name, &mut value[..]).unwrap();
    value.truncate(n);
    value
}

fn ext4_image(path: &Path, extra: &[&str]) {
    std::fs::File::create(path)
        .unwrap()
        .set_len(64 << 20)
        .unwrap();
    let mut args = vec!["-q", "-F", "-b", "1024"];
    args.extend_from_slice(extra);
    args.push(s(path));
    let (made, text) = tool("mkfs.ext4", &args);
    assert!(made, "mkfs.ext4: {text}");
}

#[test]
fn a_tree_keeps_links_xattrs_acls_special_files_and_holes_as_mkfs_ext4_d_does() {
    let dir = tempfile::tempdir().unwrap();
    let tree = dir.path().join("t");
    make_tree(&tree);
    let ours = dir.path().join("ours.img");
    ext4_image(&ours, &[]);
    ok(&["cp", "-r", s(&tree), &format!("{}:/", s(&ours))]);
    let theirs = dir.path().join("theirs.img");
    ext4_image(&theirs, &["-d", s(&tree)]);

    let (clean, text) = tool("e2fsck", &["-fn", s(&ours)]);
    assert!(clean, "e2fsck after vuimg cp: {text}");
    for name in [
        "a", "a3", "sub", "sub/a2", "lnk", "sock", "fifo", "null", "sparse",
    ] {
        assert_eq!(
            stat_shape(&ours, &format!("/t/{name}")),
            stat_shape(&theirs, &format!("/{name}")),
            "debugfs stat of {name}: vuimg cp vs mkfs.ext4 -d"
        );
        assert_eq!(
            ea_list(&ours, &format!("/t/{name}")),
            ea_list(&theirs, &format!("/{name}")),
            "debugfs ea_list of {name}"
        );
    }
    assert!(stat_shape(&ours, "/t/a").contains("Links: 3"));

    // And back out to the host.
    let out = dir.path().join("out");
    std::fs::create_dir(&out).unwrap();
    ok(&["cp", "-r", &format!("{}:/t", s(&ours)), s(&out)]);
    let back = out.join("t");
    let inode = |p: &str| std::fs::symlink_metadata(back.join(p)).unwrap().ino();
    assert_eq!(inode("a"), inode("a3"));
    assert_eq!(inode("a"), inode("sub/a2"));
    let md = |p: &str| std::fs::symlink_metadata(back.join(p)).unwrap();
    assert!(md("fifo").file_type().is_fifo());
    assert!(md("sock").file_type().is_socket());
    assert!(md("null").file_type().is_char_device());
    assert_eq!(md("null").rdev(), rustix::fs::makedev(1, 3));
    assert_eq!(md("fifo").mode() & 0o7777, 0o640);
    let sparse = md("sparse");
    assert_eq!(sparse.len(), SPARSE_SIZE);
    assert!(
        sparse.blocks() * 512 <= 64 << 10,
        "sparse file takes {} blocks",
        sparse.blocks()
    );
    let (same, text) = tool("cmp", &[s(&tree.join("sparse")), s(&back.join("sparse"))]);
    assert!(same, "{text}");
    assert_eq!(xattr(&back.join("a"), "user.color"), b"blue");
    assert_eq!(xattr(&back.join("a"), "user.empty"), b"");
    assert_eq!(xattr(&back.join("sub"), "trusted.note"), b"\x00\x01binary");
    for p in ["a", "sub"] {
        let (_, want) = tool("getfacl", &["-p", s(&tree.join(p))]);
        let (_, got) = tool("getfacl", &["-p", s(&back.join(p))]);
        let strip = |t: &str| t.lines().skip(1).collect::<Vec<_>>().join("\n");
        assert_eq!(strip(&got), strip(&want), "getfacl {p}");
        assert!(want.contains("user:nobody:r") || want.contains("user:65534:r"));
    }
}

#[test]
fn fat_takes_the_files_and_notes_what_it_cannot_hold() {
    let dir = tempfile::tempdir().unwrap();
    let tree = dir.path().join("t");
    make_tree(&tree);
    let img = dir.path().join("f.img");
    std::fs::File::create(&img)
        .unwrap()
        .set_len(64 << 20)
        .unwrap();
    let (made, text) = tool("mkfs.fat", &["-F", "32", s(&img)]);
    assert!(made, "{text}");
    let out = vuimg(&["cp", "-r", s(&tree), &format!("{}:/", s(&img))]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    for note in [
        "skipping fifo",
        "skipping socket",
        "skipping character device",
    ] {
        assert!(stderr.contains(note), "no {note:?} in {stderr}");
    }
    assert!(stderr.contains("extended attributes not kept"), "{stderr}");
    assert!(!stderr.contains("os error"), "{stderr}");
    let (clean, text) = tool("fsck.fat", &["-n", s(&img)]);
    assert!(clean, "{text}");
    // Hard links become copies; the sparse file's bytes are all there.
    for name in ["a", "a3", "sub/a2"] {
        let bytes = tool_bytes("mtype", &["-i", s(&img), &format!("::/t/{name}")]);
        assert_eq!(bytes, b"hello\n", "{name}");
    }
    let copied = dir.path().join("sparse.out");
    tool_bytes("mcopy", &["-i", s(&img), "::/t/sparse", s(&copied)]);
    let (same, text) = tool("cmp", &[s(&tree.join("sparse")), s(&copied)]);
    assert!(same, "{text}");
}
