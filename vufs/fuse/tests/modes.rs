//! `vufs` through the real kernel FUSE: one test per rule of issue 4.

mod common;

use common::*;
use std::fs;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::Path;
use testkit::{daemon_gone, is_mounted};

fn read(p: &Path) -> String {
    fs::read_to_string(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

fn errno_of(r: std::io::Result<impl Sized>) -> i32 {
    match r {
        Ok(_) => 0,
        Err(e) => e.raw_os_error().unwrap_or(-1),
    }
}

#[test]
fn the_mount_asks_for_a_wide_kernel_readahead() {
    need_fuse!();
    let s = Scratch::example();
    let dir = s.lower.clone();
    let m = mount_vufs(&s.upper, &dir, &["bind"]);
    let dev = sh(&format!("mountpoint -d '{}'", dir.display()));
    let setting = format!("/sys/class/bdi/{}/read_ahead_kb", dev.trim());
    let kb = fs::read_to_string(&setting);
    let writable = fs::OpenOptions::new().write(true).open(&setting).is_ok();
    m.unmount();
    if !writable {
        // The daemon skips it silently too (not root, or sysfs mounted read-only).
        testkit::skip(&format!("{setting} is not writable here"));
        return;
    }
    // FUSE's own default is 128.
    assert_eq!(kb.unwrap().trim(), "4096");
}

#[test]
fn bind_shows_source_alone() {
    need_fuse!();
    let s = Scratch::example();
    let m = mount_vufs(&s.upper, &s.lower, &["bind"]);
    assert_eq!(names(&s.lower), vec!["a", "x"]);
    assert_eq!(read(&s.low("a")), "over a\n");
    assert_eq!(errno_of(fs::metadata(s.low("b"))), libc::ENOENT);
    fs::write(s.low("new"), "n").unwrap();
    m.unmount();
    assert_eq!(read(&s.up("new")), "n");
    assert_eq!(read(&s.low("b")), "real b\n");
    assert!(!s.low("new").exists());
    // `move` is a synonym.
    let m = mount_vufs(&s.upper, &s.lower, &["move"]);
    assert_eq!(names(&s.lower), vec!["a", "new", "x"]);
    m.unmount();
}

#[test]
fn merge_union_source_read_only() {
    need_fuse!();
    let s = Scratch::example();
    let m = mount_vufs(&s.upper, &s.lower, &["merge"]);
    assert_eq!(names(&s.lower), vec!["a", "b", "sub", "x"]);
    assert_eq!(read(&s.low("a")), "over a\n", "SOURCE wins on equal names");
    // Writes to lower files and new names go to the lower tree.
    fs::write(s.low("b"), "changed b\n").unwrap();
    fs::write(s.low("n"), "new n\n").unwrap();
    fs::create_dir(s.low("d")).unwrap();
    fs::remove_file(s.low("sub/c")).unwrap();
    // SOURCE's files are read-only.
    assert_eq!(errno_of(fs::write(s.low("a"), "no")), libc::EROFS);
    assert_eq!(errno_of(fs::remove_file(s.low("x"))), libc::EROFS);
    m.unmount();
    assert_eq!(read(&s.low("b")), "changed b\n");
    assert_eq!(read(&s.low("n")), "new n\n");
    assert!(s.low("d").is_dir());
    assert!(!s.low("sub/c").exists());
    assert_eq!(names(&s.upper), vec!["a", "x"], "SOURCE untouched");
    assert_eq!(read(&s.up("a")), "over a\n");
}

#[test]
fn cow_changes_land_in_source_only() {
    need_fuse!();
    let s = Scratch::example();
    let saved = s.save_lower();
    let m = mount_vufs(&s.upper, &s.lower, &["cow"]);
    assert_eq!(
        names(&s.lower),
        vec!["a", "b", "sub", "x"],
        ".- never listed"
    );
    sh(&format!("echo more >> '{}'", s.low("b").display()));
    assert_eq!(read(&s.low("b")), "real b\nmore\n");
    fs::remove_file(s.low("sub/c")).unwrap();
    assert!(names(&s.low("sub")).is_empty());
    fs::remove_file(s.low("a")).unwrap();
    assert_eq!(errno_of(fs::metadata(s.low("a"))), libc::ENOENT);
    m.unmount();
    assert_same_tree(&s.lower, &saved);
    assert_eq!(read(&s.up("b")), "real b\nmore\n", "b copied up");
    let wh = s.up(".-/sub/c");
    assert!(
        wh.is_file() && fs::metadata(&wh).unwrap().len() == 0,
        "whiteout"
    );
    assert!(s.up(".-/a").is_file(), "a deleted in both layers");
    assert!(!s.up("a").exists());

    // Re-creating a name removes its whiteout.
    let m = mount_vufs(&s.upper, &s.lower, &["cow"]);
    fs::write(s.low("a"), "new a\n").unwrap();
    assert_eq!(read(&s.low("a")), "new a\n");
    m.unmount();
    assert!(!s.up(".-/a").exists(), "whiteout removed");
    assert_same_tree(&s.lower, &saved);
}

#[test]
fn cow_rmdir_becomes_one_whiteout_and_recreated_dir_is_empty() {
    need_fuse!();
    let s = Scratch::example();
    fs::write(s.low("sub/d"), "d").unwrap();
    let saved = s.save_lower();
    let m = mount_vufs(&s.upper, &s.lower, &["cow"]);
    assert_eq!(
        errno_of(fs::remove_dir(s.low("sub"))),
        libc::ENOTEMPTY,
        "lower entries count"
    );
    fs::remove_file(s.low("sub/c")).unwrap();
    fs::remove_file(s.low("sub/d")).unwrap();
    fs::remove_dir(s.low("sub")).unwrap();
    assert!(!s.low("sub").exists());
    m.unmount();
    let wh = s.up(".-/sub");
    assert!(wh.is_file(), "the directory whiteout is one regular file");
    let m = mount_vufs(&s.upper, &s.lower, &["cow"]);
    fs::create_dir(s.low("sub")).unwrap();
    assert!(names(&s.low("sub")).is_empty(), "no old lower entries");
    fs::write(s.low("sub/e"), "e").unwrap();
    assert_eq!(names(&s.low("sub")), vec!["e"]);
    m.unmount();
    assert_same_tree(&s.lower, &saved);
    // The same view after a remount.
    let m = mount_vufs(&s.upper, &s.lower, &["cow"]);
    assert_eq!(names(&s.low("sub")), vec!["e"]);
    m.unmount();
}

#[test]
fn cow_mknod_is_faked_through_vstat() {
    need_fuse!();
    let s = Scratch::example();
    let m = mount_vufs(&s.upper, &s.lower, &["cow"]);
    sh(&format!("mknod '{}' c 1 3", s.low("cdev").display()));
    let meta = fs::symlink_metadata(s.low("cdev")).unwrap();
    assert!(meta.file_type().is_char_device());
    assert_eq!(meta.rdev(), libc::makedev(1, 3));
    sh(&format!("mkfifo '{}'", s.low("fifo").display()));
    assert!(fs::symlink_metadata(s.low("fifo"))
        .unwrap()
        .file_type()
        .is_fifo());
    m.unmount();
    // Re-mounted, the listing's entry types (d_type) agree with stat for the faked device.
    let m = mount_vufs(&s.upper, &s.lower, &["cow"]);
    let listed: Vec<(String, bool)> = fs::read_dir(&s.lower)
        .unwrap()
        .map(|e| e.unwrap())
        .map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            (name, e.file_type().unwrap().is_char_device())
        })
        .filter(|(name, _)| name == "cdev")
        .collect();
    m.unmount();
    assert_eq!(listed, vec![("cdev".to_string(), true)]);
    assert!(s.up("cdev").is_file(), "a regular file in SOURCE");
    let vstat = fs::read_to_string(s.upper.join(".-/cdev\u{7f}")).unwrap();
    assert!(vstat.contains("type=c\n"), "{vstat}");
    assert!(vstat.contains("rdev=1,3\n"), "{vstat}");
    assert!(!s.low("cdev").exists());
}

/// A device name of 255 bytes leaves no room for the vstat suffix: root's mknod then makes a
/// real node in SOURCE (pjdfstest mknod/02, mknod/03), while a 254-byte name is still faked.
#[test]
fn cow_mknod_of_a_name_max_device_makes_a_real_node() {
    need_fuse!();
    let s = Scratch::example();
    let m = mount_vufs(&s.upper, &s.lower, &["cow"]);
    let longest = "d".repeat(255);
    let faked = "f".repeat(254);
    for name in [&longest, &faked] {
        sh(&format!("mknod '{}' b 7 1", s.low(name).display()));
        let meta = fs::symlink_metadata(s.low(name)).unwrap();
        assert!(meta.file_type().is_block_device(), "{name}");
        assert_eq!(meta.rdev(), libc::makedev(7, 1));
    }
    m.unmount();
    assert!(fs::symlink_metadata(s.up(&longest))
        .unwrap()
        .file_type()
        .is_block_device());
    assert!(s.up(&faked).is_file(), "a regular file in SOURCE");
    assert!(s.upper.join(format!(".-/{faked}\u{7f}")).is_file());
}

#[test]
fn cow_except_shows_lower_untouched() {
    need_fuse!();
    let s = Scratch::example();
    let m = mount_vufs(&s.upper, &s.lower, &["cow,except=/sub"]);
    fs::write(s.low("sub/c"), "written through\n").unwrap();
    fs::write(s.low("b"), "cow b\n").unwrap();
    m.unmount();
    assert_eq!(
        read(&s.low("sub/c")),
        "written through\n",
        "writes hit the lower tree"
    );
    assert_eq!(read(&s.low("b")), "real b\n");
    assert!(!s.up("sub").exists());
}

#[test]
fn cow_nochcopy_records_vstat_only() {
    need_fuse!();
    let s = Scratch::example();
    let m = mount_vufs(&s.upper, &s.lower, &["cow", "nochcopy"]);
    sh(&format!("chmod 600 '{}'", s.low("b").display()));
    assert_eq!(fs::metadata(s.low("b")).unwrap().mode() & 0o7777, 0o600);
    m.unmount();
    assert!(!s.up("b").exists(), "not copied up");
    let vstat = fs::read_to_string(s.upper.join(".-/b\u{7f}")).unwrap();
    assert_eq!(vstat, "mode=0600\n");
    assert_eq!(fs::metadata(s.low("b")).unwrap().mode() & 0o777, 0o644);
}

#[test]
fn readdir_lists_each_name_once() {
    need_fuse!();
    let s = Scratch::new();
    for i in 0..300 {
        fs::write(s.low(&format!("f{i:04}")), "l").unwrap();
        if i % 3 == 0 {
            fs::write(s.up(&format!("f{i:04}")), "u").unwrap();
        }
    }
    let m = mount_vufs(&s.upper, &s.lower, &["cow"]);
    for i in (0..300).step_by(7) {
        fs::remove_file(s.low(&format!("f{i:04}"))).unwrap();
    }
    let listed = sh(&format!("ls -f '{}'", s.lower.display()));
    let mut seen = std::collections::HashSet::new();
    for name in listed.lines() {
        assert!(seen.insert(name.to_string()), "{name} listed twice");
    }
    assert!(!seen.contains(".-"));
    let expected: usize = (0..300).filter(|i| i % 7 != 0).count() + 2;
    assert_eq!(seen.len(), expected);
    m.unmount();
}

#[test]
fn inode_numbers_are_stable_and_links_share_one() {
    need_fuse!();
    let s = Scratch::example();
    fs::hard_link(s.low("b"), s.low("b2")).unwrap();
    let m = mount_vufs(&s.upper, &s.lower, &["cow"]);
    let ino = |p: &str| fs::symlink_metadata(s.low(p)).unwrap().ino();
    let (b, b2, sub) = (ino("b"), ino("b2"), ino("sub"));
    assert_eq!(b, b2, "hard links share one inode number");
    sh(&format!("echo x >> '{}'", s.low("b").display()));
    fs::write(s.low("sub/new"), "n").unwrap(); // creates sub in SOURCE
    assert_eq!(ino("b"), b, "same number after copy-up");
    assert_eq!(
        ino("sub"),
        sub,
        "a directory keeps its number once in SOURCE"
    );
    assert_eq!(
        read(&s.low("b2")),
        "real b\nx\n",
        "the other name sees the change"
    );
    m.unmount();
}

#[test]
fn cow_renames_a_lower_only_directory_by_copying_it_up() {
    need_fuse!();
    let s = Scratch::example();
    fs::create_dir_all(s.low("tree/deep")).unwrap();
    fs::write(s.low("tree/deep/f"), "deep").unwrap();
    std::os::unix::fs::symlink("deep/f", s.low("tree/link")).unwrap();
    let saved = s.save_lower();
    let m = mount_vufs(&s.upper, &s.lower, &["cow"]);
    fs::rename(s.low("tree"), s.low("moved")).unwrap();
    assert!(!s.low("tree").exists());
    assert_eq!(read(&s.low("moved/deep/f")), "deep");
    assert_eq!(read(&s.low("moved/link")), "deep");
    // Renaming over a lower directory hides its old entries.
    fs::create_dir(s.low("empty")).unwrap();
    fs::rename(s.low("moved"), s.low("sub2")).unwrap();
    m.unmount();
    assert_same_tree(&s.lower, &saved);
    assert!(s.up(".-/tree").is_file());
    let m = mount_vufs(&s.upper, &s.lower, &["cow"]);
    assert_eq!(names(&s.low("sub2")), vec!["deep", "link"]);
    m.unmount();
}

#[test]
fn copy_up_keeps_links_symlinks_fifos_holes_xattrs_modes_times() {
    need_fuse!();
    let s = Scratch::new();
    // A sparse file: 1 MiB hole, 4 KiB data, 1 MiB hole.
    sh(&format!(
        "cd '{}' && dd if=/dev/urandom of=sparse bs=4096 count=1 seek=256 status=none && \
         truncate -s 2M sparse && echo data > f && chmod 751 f && touch -d @1000000000 f && \
         ln f f2 && ln -s f sym && mkfifo fifo && \
         mkdir d && echo in > d/g && ln d/g d/g2",
        s.lower.display()
    ));
    rustix::fs::setxattr(
        s.low("f"),
        "user.color",
        b"blue",
        rustix::fs::XattrFlags::empty(),
    )
    .unwrap();
    let saved = s.save_lower();
    let m = mount_vufs(&s.upper, &s.lower, &["cow"]);
    rustix::fs::setxattr(s.low("f"), "user.k", b"v", rustix::fs::XattrFlags::empty()).unwrap();
    sh(&format!(
        "cd '{}' && touch -d @2000000000 sparse && \
         chmod 640 fifo && mv d d-moved && ln f f3",
        s.lower.display()
    ));
    let f = fs::metadata(s.low("f")).unwrap();
    assert_eq!(f.nlink(), 3, "f, f2, f3");
    m.unmount();
    assert_same_tree(&s.lower, &saved);
    let up = |p: &str| fs::symlink_metadata(s.up(p)).unwrap();
    assert!(up("sparse").blocks() * 512 < 1 << 20, "holes kept");
    assert_eq!(up("sparse").len(), 2 << 20);
    assert_eq!(
        fs::read(s.up("sparse")).unwrap(),
        fs::read(s.low("sparse")).unwrap()
    );
    assert_eq!(up("f").permissions().mode() & 0o7777, 0o751);
    assert_eq!(up("f").mtime(), 1000000000, "times kept");
    let mut buf = [0u8; 64];
    let n = rustix::fs::getxattr(s.up("f"), "user.color", &mut buf[..]).unwrap();
    assert_eq!(&buf[..n], b"blue", "xattrs copied up");
    let n = rustix::fs::getxattr(s.up("f"), "user.k", &mut buf[..]).unwrap();
    assert_eq!(&buf[..n], b"v", "and set in SOURCE");
    assert_eq!(
        rustix::fs::getxattr(s.low("f"), "user.k", &mut buf[..]),
        Err(rustix::io::Errno::NODATA),
        "not in the lower tree"
    );
    assert_eq!(up("f3").ino(), up("f").ino(), "link made in SOURCE");
    assert!(up("fifo").file_type().is_fifo());
    assert_eq!(up("fifo").permissions().mode() & 0o777, 0o640);
    assert!(up("d-moved/g").is_file());
    assert_eq!(
        up("d-moved/g").ino(),
        up("d-moved/g2").ino(),
        "hard links survive a tree copy-up"
    );
    let m = mount_vufs(&s.upper, &s.lower, &["cow"]);
    assert_eq!(fs::read_link(s.low("sym")).unwrap(), Path::new("f"));
    assert_eq!(read(&s.low("d-moved/g")), "in\n");
    m.unmount();
}

#[test]
fn handle_opened_before_copy_up_sees_current_data() {
    need_fuse!();
    use std::io::{Read, Seek, SeekFrom, Write};
    let s = Scratch::example();
    let m = mount_vufs(&s.upper, &s.lower, &["cow"]);
    let mut reader = fs::File::open(s.low("b")).unwrap();
    let mut first = String::new();
    reader.read_to_string(&mut first).unwrap();
    assert_eq!(first, "real b\n");
    let mut writer = fs::OpenOptions::new().write(true).open(s.low("b")).unwrap();
    writer.write_all(b"COPIED").unwrap();
    writer.sync_all().unwrap();
    reader.seek(SeekFrom::Start(0)).unwrap();
    let mut now = String::new();
    reader.read_to_string(&mut now).unwrap();
    assert_eq!(now, "COPIED\n");
    drop((reader, writer));
    m.unmount();
    assert_eq!(read(&s.low("b")), "real b\n");
}

/// VUOS's mincow "run as nobody" (../shared/VUOS.md, vufs): a user's private view, mounted by
/// that user. What the real tree permits is changed in place; what it refuses is copied up
/// or made in SOURCE, and the copy keeps its owner through the vstat file.
#[test]
fn mincow_mounted_by_an_unprivileged_user() {
    need_fuse!();
    if let Some(reason) = testkit::other_user_unavailable() {
        return testkit::skip(&reason);
    }
    if !as_nobody("test -r /dev/fuse -a -w /dev/fuse")
        .status
        .success()
    {
        return testkit::skip("/dev/fuse is not open to other users here (mode 0600?)");
    }
    let s = Scratch::example();
    fs::write(s.low("w"), "world writable\n").unwrap();
    fs::set_permissions(s.low("w"), fs::Permissions::from_mode(0o666)).unwrap();
    fs::set_permissions(s.tmp.path(), fs::Permissions::from_mode(0o755)).unwrap();
    // nobody owns SOURCE and the mount point; b and sub/ stay root's.
    sh(&format!(
        "chown nobody:nogroup '{}' '{}'",
        s.upper.display(),
        s.lower.display()
    ));
    let mount = as_nobody(&format!(
        "'{BIN}' -o mincow '{}' '{}'",
        s.upper.display(),
        s.lower.display()
    ));
    assert!(
        mount.status.success(),
        "{}",
        String::from_utf8_lossy(&mount.stderr)
    );
    let m = MountGuard::served_by("vufs", &s.lower);
    let out = as_nobody(&format!(
        "cd '{}' && echo nobody >> w && echo nobody >> b && echo n > sub/n && rm sub/c && \
         stat -c '%u:%g' b && cat b",
        s.lower.display()
    ));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.starts_with("0:0\nreal b\nnobody\n"), "{text}");
    m.unmount();
    assert_eq!(
        read(&s.low("w")),
        "world writable\nnobody\n",
        "modified in place"
    );
    assert_eq!(read(&s.low("b")), "real b\n", "read-only file untouched");
    assert_eq!(read(&s.up("b")), "real b\nnobody\n", "copied up");
    assert_eq!(read(&s.up("sub/n")), "n\n", "made in SOURCE");
    assert_eq!(
        read(&s.low("sub/c")),
        "real c\n",
        "removed by a whiteout only"
    );
    let vstat = fs::read_to_string(s.upper.join(".-/b\u{7f}")).unwrap();
    assert!(
        vstat.contains("uid=0\n") && vstat.contains("gid=0\n"),
        "{vstat}"
    );
}

/// A view root shares with other users (`allow_other`) gives them their POSIX rights, in
/// cow and mincow alike: what the view's modes permit works (mincow in place), the rest is
/// refused with the kernel's errno, and no user can give a file of its own to root.
#[test]
fn shared_union_views_keep_other_users_to_their_rights() {
    need_fuse!();
    if let Some(reason) = testkit::other_user_unavailable() {
        return testkit::skip(&reason);
    }
    for mode in ["cow", "mincow"] {
        let s = Scratch::example();
        fs::write(s.low("w"), "world writable\n").unwrap();
        fs::set_permissions(s.low("w"), fs::Permissions::from_mode(0o666)).unwrap();
        fs::create_dir(s.low("pub")).unwrap();
        fs::set_permissions(s.low("pub"), fs::Permissions::from_mode(0o777)).unwrap();
        fs::set_permissions(s.tmp.path(), fs::Permissions::from_mode(0o755)).unwrap();
        let m = mount_vufs(&s.upper, &s.lower, &[&format!("{mode},allow_other")]);
        let nobody = |script: &str| {
            let out = as_nobody(&format!("cd '{}' && {script}", s.lower.display()));
            (
                out.status.success(),
                String::from_utf8_lossy(&out.stderr).into_owned(),
            )
        };
        let (ok, err) = nobody("echo nobody >> w && echo mine > pub/own");
        assert!(ok, "{mode}: {err}");
        for (script, errno) in [
            ("echo nobody >> b", "Permission denied"),
            ("echo n > n", "Permission denied"),
            ("rm -f sub/c", "Permission denied"),
            ("mv b pub/b", "Permission denied"),
            ("chmod 777 b", "Operation not permitted"),
            ("chown 0:0 pub/own", "Operation not permitted"),
        ] {
            let (ok, err) = nobody(script);
            assert!(!ok, "{mode}: nobody could {script}");
            assert!(err.contains(errno), "{mode}: {script}: {err}");
        }
        let own = fs::metadata(s.low("pub/own")).unwrap();
        assert_eq!((own.uid(), own.gid()), (65534, 65534), "{mode}");
        m.unmount();
        assert_eq!(read(&s.low("b")), "real b\n", "{mode}");
        assert_eq!(read(&s.low("sub/c")), "real c\n", "{mode}");
        assert!(!s.up("b").exists() && !s.up("n").exists(), "{mode}");
        let w = if mode == "mincow" {
            s.low("w")
        } else {
            s.up("w")
        };
        assert_eq!(read(&w), "world writable\nnobody\n", "{mode}");
    }
}

#[test]
fn nothing_escapes_through_symlinks_in_the_layers() {
    need_fuse!();
    let s = Scratch::new();
    let outside = s.tmp.path().join("outside");
    fs::create_dir(&outside).unwrap();
    fs::write(outside.join("secret"), "secret").unwrap();
    // The lower tree has `lnk` -> outside; SOURCE has a real directory `lnk`.
    std::os::unix::fs::symlink(&outside, s.low("lnk")).unwrap();
    fs::create_dir(s.up("lnk")).unwrap();
    fs::write(s.low("victim"), "v").unwrap();
    let m = mount_vufs(&s.upper, &s.lower, &["cow"]);
    assert!(
        names(&s.low("lnk")).is_empty(),
        "the daemon did not follow lnk"
    );
    assert_eq!(errno_of(fs::metadata(s.low("lnk/secret"))), libc::ENOENT);
    m.unmount();
    // `.-` replaced by a symlink to outside: the mount is refused, nothing is written there.
    fs::remove_dir_all(s.up(".-")).unwrap();
    std::os::unix::fs::symlink(&outside, s.up(".-")).unwrap();
    let out = run(&s.upper, &s.lower, &["cow"]);
    if out.status.success() {
        let m = MountGuard::served_by("vufs", &s.lower);
        let _ = fs::remove_file(s.low("victim"));
        m.unmount();
    }
    assert_eq!(names(&outside), vec!["secret"], "nothing written outside");
}

#[test]
fn bad_input_exits_2_with_a_message() {
    let s = Scratch::new();
    let file = s.tmp.path().join("file");
    fs::write(&file, "").unwrap();
    let cases: Vec<(Vec<&str>, &Path, &str)> = vec![
        (vec![], Path::new("/nonexistent/src"), "SOURCE"),
        (vec![], &file, "not a directory"),
        (vec!["cow,merge"], &s.upper, "mutually exclusive"),
        (vec!["cow", "mincow"], &s.upper, "mutually exclusive"),
        (vec!["frobnicate"], &s.upper, "frobnicate"),
        (vec!["except=sub"], &s.upper, "except"),
        (vec!["merge=1"], &s.upper, "no value"),
    ];
    for (opts, source, message) in cases {
        let out = run(source, &s.lower, &opts);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{opts:?} {source:?}: {err}");
        assert!(err.contains(message), "{opts:?}: {err}");
        assert!(!is_mounted(&s.lower));
    }
    // A busy mount point.
    let out = run(&s.upper, Path::new("/proc"), &[]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("busy"));
}

#[test]
fn other_users_cannot_read_what_the_view_forbids() {
    need_fuse!();
    if as_nobody("true").status.code() != Some(0) {
        testkit::skip("setpriv cannot switch to nobody here");
        return;
    }
    let s = Scratch::example();
    fs::set_permissions(s.tmp.path(), fs::Permissions::from_mode(0o755)).unwrap();
    fs::write(s.low("secret"), "lower secret").unwrap();
    fs::set_permissions(s.low("secret"), fs::Permissions::from_mode(0o600)).unwrap();
    let m = mount_vufs(&s.upper, &s.lower, &["cow,allow_other"]);
    // Made by root in the view: lives in SOURCE, read by the daemon.
    fs::write(s.low("upper-secret"), "upper secret").unwrap();
    fs::set_permissions(s.low("upper-secret"), fs::Permissions::from_mode(0o600)).unwrap();
    for name in ["secret", "upper-secret"] {
        let out = as_nobody(&format!("cat '{}'", s.low(name).display()));
        assert!(!out.status.success(), "nobody read {name}");
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("Permission denied"),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let out = as_nobody(&format!("cat '{}'", s.low("b").display()));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "real b\n");
    m.unmount();
}

#[test]
fn an_old_daemon_ending_leaves_a_new_mount_on_the_same_path_alone() {
    need_fuse!();
    let s = Scratch::example();
    let first = mount_vufs(&s.upper, &s.lower, &["bind"]);
    // An open file keeps the first mount's connection (and daemon) alive after a lazy unmount.
    let held = fs::File::open(s.low("a")).unwrap();
    sh(&format!("fusermount3 -u -z '{}'", s.lower.display()));
    first.forget();
    let other = s.tmp.path().join("other");
    fs::create_dir(&other).unwrap();
    fs::write(other.join("only-in-other"), "2").unwrap();
    let second = mount_vufs(&other, &s.lower, &["bind"]);
    // The first daemon ends now; it must not unmount the path on its way out.
    drop(held);
    assert!(
        daemon_gone("vufs", &s.upper, std::time::Duration::from_secs(20)),
        "the first daemon did not end"
    );
    assert!(is_mounted(&s.lower), "the second mount was taken down");
    assert_eq!(names(&s.lower), vec!["only-in-other"]);
    second.unmount();
}

#[test]
fn a_file_unlinked_while_open_still_answers_fstat_with_no_links() {
    use std::os::unix::fs::MetadataExt;
    need_fuse!();
    for mode in ["bind", "cow", "mincow"] {
        let s = Scratch::example();
        let m = mount_vufs(&s.upper, &s.lower, &[mode]);
        // A new file and a lower one (copied up in cow when written).
        for name in ["fresh", "b"] {
            let p = s.low(name);
            let mut f = fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&p)
                .unwrap();
            std::io::Write::write_all(&mut f, b"Hello").unwrap();
            fs::remove_file(&p).unwrap();
            let md = f
                .metadata()
                .unwrap_or_else(|e| panic!("{mode}: fstat of {name}: {e}"));
            assert_eq!(md.nlink(), 0, "{mode}: {name} unlinked while open");
            assert!(md.len() >= 5, "{mode}: {name}");
        }
        m.unmount();
    }
}

/// Runs `vufs -d -o MODE` in the foreground with its request log in `log`, until unmounted.
fn mount_logged(s: &Scratch, mode: &str, log: &Path) -> std::process::Child {
    let child = std::process::Command::new(BIN)
        .args(["-d", "-o", mode])
        .arg(&s.upper)
        .arg(&s.lower)
        .stderr(fs::File::create(log).unwrap())
        .spawn()
        .unwrap();
    testkit::wait_until_mounted(&s.lower, std::time::Duration::from_secs(10));
    child
}

/// FUSE passthrough (Linux 6.9+, CAP_SYS_ADMIN): the data of a file that cannot move while
/// open (any file in bind, SOURCE's files in cow) is read and written by the kernel on the
/// host file, with no READ or WRITE request; a lower file open in cow stays with the daemon
/// (a copy-up must be able to move its readers, see the test above), and O_APPEND,
/// truncate, mmap and sizes behave as on the host file.
#[test]
fn file_data_passes_through_to_host_files() {
    need_fuse!();
    use std::io::{Read, Write};
    let s = Scratch::example();
    let log = s.tmp.path().join("bind.log");
    let mut daemon = mount_logged(&s, "bind", &log);
    let data: Vec<u8> = (0..3 << 20).map(|i: u32| (i % 251) as u8).collect();
    fs::write(s.low("big"), &data).unwrap();
    assert_eq!(fs::read(s.low("big")).unwrap(), data);
    let mut f = fs::OpenOptions::new()
        .append(true)
        .open(s.low("a"))
        .unwrap();
    f.write_all(b"appended\n").unwrap();
    drop(f);
    assert_eq!(read(&s.low("a")), "over a\nappended\n");
    fs::OpenOptions::new()
        .write(true)
        .open(s.low("a"))
        .unwrap()
        .set_len(4)
        .unwrap();
    let mut text = String::new();
    fs::File::open(s.low("a"))
        .unwrap()
        .read_to_string(&mut text)
        .unwrap();
    assert_eq!(text, "over");
    assert_eq!(fs::metadata(s.low("big")).unwrap().len(), data.len() as u64);
    testkit::unmount(&s.lower);
    daemon.wait().unwrap();
    assert_eq!(fs::read(s.up("big")).unwrap(), data);
    assert_eq!(read(&s.up("a")), "over");
    let requests = fs::read_to_string(&log).unwrap();
    if requests.contains("passthrough of inode") {
        return testkit::skip(
            "the kernel refused passthrough here (Linux < 6.9, or no CAP_SYS_ADMIN)",
        );
    }
    if !requests.lines().any(|l| l.starts_with("open(")) {
        panic!("no open in the log: {requests}");
    }
    let io = |what: &str| requests.lines().filter(|l| l.starts_with(what)).count();
    // A kernel without passthrough (before 6.9) serves every read and write through the daemon.
    if io("read(") + io("write(") > 0 {
        let release = sh("uname -r");
        let (major, minor) = {
            let mut it = release
                .trim()
                .split(['.', '-'])
                .map(|n| n.parse::<u32>().unwrap_or(0));
            (it.next().unwrap_or(0), it.next().unwrap_or(0))
        };
        assert!(
            (major, minor) < (6, 9),
            "passthrough on Linux {release}, yet {} reads and {} writes reached the daemon",
            io("read("),
            io("write(")
        );
    }
    // cow: SOURCE's file passes through, the lower file is read through the daemon.
    let log = s.tmp.path().join("cow.log");
    let mut daemon = mount_logged(&s, "cow", &log);
    assert_eq!(fs::read(s.low("big")).unwrap(), data);
    assert_eq!(read(&s.low("b")), "real b\n");
    testkit::unmount(&s.lower);
    daemon.wait().unwrap();
    let requests = fs::read_to_string(&log).unwrap();
    let reads: Vec<&str> = requests
        .lines()
        .filter(|l| l.starts_with("read("))
        .collect();
    assert!(
        !reads.is_empty(),
        "the lower file was read through the daemon"
    );
    let b_ino = requests
        .lines()
        .find(|l| l.contains("lookup(1, \"b\")"))
        .and_then(|l| l.split(" ino=").nth(1))
        .and_then(|t| t.split(' ').next())
        .unwrap()
        .to_string();
    assert!(
        reads.iter().all(|l| l.contains(&format!("read({b_ino},"))),
        "only the lower file b (inode {b_ino}) is read through the daemon: {reads:?}"
    );
}

/// A write by a user other than the owner takes the set-user-ID bit (and set-group-ID with
/// group execute) away, as on a local filesystem (pjdfstest chmod/12), in every mode.
#[test]
fn another_users_write_clears_set_id_bits() {
    need_fuse!();
    if let Some(reason) = testkit::other_user_unavailable() {
        return testkit::skip(&reason);
    }
    for mode in ["bind", "cow", "mincow"] {
        let s = Scratch::example();
        fs::set_permissions(s.tmp.path(), fs::Permissions::from_mode(0o755)).unwrap();
        let m = mount_vufs(&s.upper, &s.lower, &[&format!("{mode},allow_other")]);
        for (name, bits) in [("suid", 0o4777), ("sgid", 0o2777)] {
            let p = s.low(name);
            fs::write(&p, "x").unwrap();
            fs::set_permissions(&p, fs::Permissions::from_mode(bits)).unwrap();
            let out = as_nobody(&format!("echo more >> '{}'", p.display()));
            assert!(
                out.status.success(),
                "{mode}: {name}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            let now = fs::metadata(&p).unwrap().permissions().mode() & 0o7777;
            assert_eq!(now, 0o777, "{mode}: {name} after another user's write");
        }
        m.unmount();
    }
}

/// Group bits and chgrp are judged by the caller's supplementary groups, as the kernel
/// would judge them, never by the daemon's: a daemon started with a supplementary group
/// gives it to nobody, and a caller's own group (not its primary one) counts.
#[test]
fn group_rights_are_the_callers_supplementary_groups_never_the_daemons() {
    need_fuse!();
    if let Some(reason) = testkit::other_user_unavailable() {
        return testkit::skip(&reason);
    }
    let s = Scratch::new();
    fs::set_permissions(s.tmp.path(), fs::Permissions::from_mode(0o755)).unwrap();
    fs::set_permissions(&s.upper, fs::Permissions::from_mode(0o755)).unwrap();
    for (name, group) in [("daemons", 4242), ("callers", 4343)] {
        fs::write(s.up(name), format!("{name}\n")).unwrap();
        std::os::unix::fs::chown(s.up(name), Some(0), Some(group)).unwrap();
        fs::set_permissions(s.up(name), fs::Permissions::from_mode(0o640)).unwrap();
    }
    fs::write(s.up("mine"), "mine\n").unwrap();
    std::os::unix::fs::chown(s.up("mine"), Some(65534), Some(65534)).unwrap();
    let started = std::process::Command::new("setpriv")
        .args(["--groups=4242", BIN, "-o", "bind,allow_other"])
        .args([&s.upper, &s.lower])
        .status()
        .unwrap();
    assert!(started.success(), "vufs with a supplementary group");
    let m = MountGuard::served_by("vufs", &s.lower);
    let as_member = |script: &str| {
        let out = std::process::Command::new("setpriv")
            .args([
                "--reuid=nobody",
                "--regid=nogroup",
                "--groups=4343",
                "sh",
                "-c",
            ])
            .arg(format!("cd '{}' && {script}", s.lower.display()))
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    };
    assert_eq!(
        as_member("cat callers"),
        (true, "callers\n".into()),
        "the caller's supplementary group reads"
    );
    assert!(!as_member("cat daemons").0, "the daemon's group leaked");
    assert!(as_member("chgrp 4343 mine").0, "chgrp to its own group");
    assert!(
        !as_member("chgrp 4242 mine").0,
        "chgrp to the daemon's group"
    );
    m.unmount();
    assert_eq!(fs::metadata(s.up("mine")).unwrap().gid(), 4343);
}
