//! `fuseext2` (read-only so far) through the real kernel FUSE: trees made by
//! `mke2fs -d` read back exactly, with link counts, inode numbers, device
//! numbers and xattrs; bad images refused.

use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_fuseext2");

fn sh(script: &str) -> String {
    let out = Command::new("sh").args(["-c", script]).output().unwrap();
    assert!(
        out.status.success(),
        "{script}:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn is_mounted(dir: &Path) -> bool {
    let dir = dir.canonicalize().unwrap();
    std::fs::read_to_string("/proc/self/mounts")
        .unwrap()
        .lines()
        .any(|l| l.split(' ').nth(1) == Some(dir.to_str().unwrap()))
}

fn run(image: &Path, dir: &Path, options: &[&str]) -> Output {
    let mut cmd = Command::new(BIN);
    for o in options {
        cmd.arg("-o").arg(o);
    }
    cmd.arg(image).arg(dir).output().unwrap()
}

/// A daemonized mount, unmounted (and waited for) on drop.
struct Mounted(PathBuf);

impl Mounted {
    fn new(image: &Path, dir: &Path) -> Mounted {
        std::fs::create_dir_all(dir).unwrap();
        let out = run(image, dir, &[]);
        assert!(
            out.status.success(),
            "fuseext2: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(is_mounted(dir));
        Mounted(dir.to_path_buf())
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = Command::new("fusermount3")
            .arg("-u")
            .arg("-z")
            .arg(&self.0)
            .output();
        let deadline = Instant::now() + Duration::from_secs(10);
        while is_mounted(&self.0) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

/// Builds the source tree with the kinds of files mke2fs -d copies.
fn sample_tree(root: &Path) {
    sh(&format!(
        "set -e; cd '{r}'; mkdir -p 'a dir/nested/deeper' empty; echo hello > hello.txt; : > empty-file; \
         ln hello.txt hard-link; ln hello.txt 'a dir/another hard link'; ln -s hello.txt fast-link; \
         ln -s \"$(printf 'long/%.0s' $(seq 1 40))target\" slow-link; mkfifo fifo; mknod char-dev c 1 3; mknod block-dev b 7 200; \
         head -c 5000000 /dev/urandom > 'a dir/big.bin'; truncate -s 20M sparse.bin; echo middle | dd of=sparse.bin bs=1 seek=10000000 conv=notrunc status=none; \
         for i in $(seq 1 300); do echo $i > \"a dir/nested/deeper/name number $i with spaces.txt\"; done",
        r = root.display()
    ));
    rustix::fs::setxattr(
        root.join("hello.txt").as_path(),
        "user.color",
        b"blue",
        rustix::fs::XattrFlags::empty(),
    )
    .unwrap();
    rustix::fs::setxattr(
        root.join("a dir").as_path(),
        "user.note",
        &[7u8; 300],
        rustix::fs::XattrFlags::empty(),
    )
    .unwrap();
}

fn xattrs(path: &Path) -> Vec<(String, Vec<u8>)> {
    let mut names = vec![0u8; 4096];
    let n = rustix::fs::llistxattr(path, &mut names).unwrap();
    let mut out: Vec<(String, Vec<u8>)> = names[..n]
        .split(|&b| b == 0)
        .filter(|s| !s.is_empty())
        .map(|name| {
            let name = String::from_utf8_lossy(name).into_owned();
            let mut value = vec![0u8; 65536];
            let len = rustix::fs::lgetxattr(path, name.as_str(), &mut value).unwrap();
            value.truncate(len);
            (name, value)
        })
        .filter(|(name, _)| name.starts_with("user."))
        .collect();
    out.sort();
    out
}

/// Walks both trees and compares what diff -r does not: link counts,
/// device numbers, hard-link identity and xattrs.
fn compare_metadata(src: &Path, mnt: &Path) {
    let mut ino_pairs: Vec<(u64, u64)> = Vec::new();
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        for e in std::fs::read_dir(src.join(&rel)).unwrap() {
            let e = e.unwrap();
            let rel = rel.join(e.file_name());
            let (a, b) = (
                std::fs::symlink_metadata(src.join(&rel)).unwrap(),
                std::fs::symlink_metadata(mnt.join(&rel)).unwrap(),
            );
            assert_eq!(
                a.file_type().is_dir(),
                b.file_type().is_dir(),
                "{}",
                rel.display()
            );
            assert_eq!(
                a.mode() & 0o7777,
                b.mode() & 0o7777,
                "mode of {}",
                rel.display()
            );
            if !a.is_dir() {
                assert_eq!(a.nlink(), b.nlink(), "link count of {}", rel.display());
            }
            if a.file_type().is_char_device() || a.file_type().is_block_device() {
                assert_eq!(a.rdev(), b.rdev(), "device number of {}", rel.display());
            }
            if !a.file_type().is_symlink() {
                assert_eq!(
                    xattrs(&src.join(&rel)),
                    xattrs(&mnt.join(&rel)),
                    "xattrs of {}",
                    rel.display()
                );
            }
            ino_pairs.push((a.ino(), b.ino()));
            if a.is_dir() {
                stack.push(rel);
            }
        }
    }
    // Hard links: same source inode <=> same mounted inode.
    for &(a1, b1) in &ino_pairs {
        for &(a2, b2) in &ino_pairs {
            assert_eq!(a1 == a2, b1 == b2, "hard-link identity differs");
        }
    }
}

#[test]
fn trees_made_by_mke2fs_read_back_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    sample_tree(&src);
    for (name, options) in [
        ("ext2", "-t ext2"),
        ("ext3", "-t ext3"),
        ("ext4", "-t ext4"),
        ("ext4-1k", "-t ext4 -b 1024"),
        ("ext4-plain", "-t ext4 -O ^metadata_csum,^64bit"),
    ] {
        let img = dir.path().join(format!("{name}.img"));
        sh(&format!(
            "truncate -s 96M '{0}' && mke2fs -q -F {options} -L {name} -d '{1}' '{0}'",
            img.display(),
            src.display()
        ));
        let mnt = dir.path().join(format!("mnt-{name}"));
        let m = Mounted::new(&img, &mnt);
        let diff = Command::new("diff")
            .args(["-r", "--no-dereference", "-x", "lost+found"])
            .arg(&src)
            .arg(&mnt)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&diff.stdout);
        // diff reports fifos and devices it cannot compare; nothing else may differ.
        let real: Vec<&str> = text
            .lines()
            .filter(|l| !l.contains(" is a fifo while ") && !l.contains("special file"))
            .collect();
        assert!(real.is_empty(), "{name}: {real:?}");
        compare_metadata(&src, &mnt);
        // Inode numbers are the filesystem's own (debugfs agrees).
        let ours = std::fs::metadata(mnt.join("hello.txt")).unwrap().ino();
        let listing = sh(&format!(
            "debugfs -R 'ls -l /' '{}' 2>/dev/null",
            img.display()
        ));
        let theirs: u64 = listing
            .lines()
            .find(|l| l.trim_end().ends_with(" hello.txt"))
            .unwrap()
            .split_whitespace()
            .next()
            .unwrap()
            .parse()
            .unwrap();
        assert_eq!(ours, theirs, "{name}: inode number");
        let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap();
        assert!(
            mounts.lines().any(|l| l.starts_with(&format!("{name} "))),
            "{name}: the label names the mount"
        );
        drop(m);
    }
}

#[test]
fn read_only_refuses_writes_and_rw_is_refused_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("ro.img");
    sh(&format!(
        "truncate -s 16M '{0}' && mke2fs -q -F -t ext4 '{0}'",
        img.display()
    ));
    let before = std::fs::read(&img).unwrap();
    let mnt = dir.path().join("mnt");
    {
        let _m = Mounted::new(&img, &mnt);
        let err = std::fs::write(mnt.join("new"), "x").unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::EROFS));
        let err = std::fs::create_dir(mnt.join("d")).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::EROFS));
    }
    let out = run(&img, &mnt, &["rw+"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("read-write"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!is_mounted(&mnt));
    assert!(
        std::fs::read(&img).unwrap() == before,
        "a read-only mount changed the image"
    );
}

#[test]
fn bad_images_are_refused_with_a_message() {
    let dir = tempfile::tempdir().unwrap();
    let mnt = dir.path().join("mnt");
    std::fs::create_dir_all(&mnt).unwrap();
    let img = dir.path().join("good.img");
    sh(&format!(
        "truncate -s 16M '{0}' && mke2fs -q -F -t ext4 '{0}'",
        img.display()
    ));
    // Bad magic: the superblock zeroed.
    let zeroed = dir.path().join("zeroed.img");
    sh(&format!(
        "cp '{}' '{1}' && dd if=/dev/zero of='{1}' bs=1024 seek=1 count=1 conv=notrunc status=none",
        img.display(),
        zeroed.display()
    ));
    let out = run(&zeroed, &mnt, &[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no ext2/3/4 filesystem")
            || String::from_utf8_lossy(&out.stderr).contains("not an ext2/3/4"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // A bad superblock checksum.
    let badsum = dir.path().join("badsum.img");
    sh(&format!("cp '{}' '{1}' && printf 'X' | dd of='{1}' bs=1 seek=$((1024+120)) conv=notrunc status=none", img.display(), badsum.display()));
    let out = run(&badsum, &mnt, &[]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // A truncated image: refused, or served with EIO, but never a hang or a panic.
    let truncated = dir.path().join("truncated.img");
    sh(&format!(
        "cp '{}' '{1}' && truncate -s 2M '{1}'",
        img.display(),
        truncated.display()
    ));
    let out = run(&truncated, &mnt, &[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    if out.status.success() {
        let _m = Mounted(mnt.clone());
        let _ = std::fs::read_dir(&mnt).map(|d| d.count());
    }
    assert!(!is_mounted(&mnt) || out.status.success());
}
