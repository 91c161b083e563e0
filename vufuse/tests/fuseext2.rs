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
fn read_only_by_default_refuses_writes_and_keeps_the_bytes() {
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
    assert!(
        std::fs::read(&img).unwrap() == before,
        "a read-only mount changed the image"
    );
}

/// Mounts read-write, runs `script` in the mount and in a plain directory,
/// and checks: same tree; after unmount e2fsck -fn is clean and debugfs
/// extracts the same tree.
fn write_workload(img: &Path, work: &Path, script: &str) {
    let mnt = work.join("mnt");
    let model = work.join("model");
    std::fs::create_dir_all(&mnt).unwrap();
    std::fs::create_dir_all(&model).unwrap();
    let out = run(img, &mnt, &["rw+"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let m = Mounted(mnt.clone());
    for root in [&mnt, &model] {
        sh(&format!("set -e; cd '{}'; {script}", root.display()));
    }
    let diff = Command::new("diff")
        .args(["-r", "--no-dereference", "-x", "lost+found"])
        .arg(&model)
        .arg(&mnt)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&diff.stdout);
    let real: Vec<&str> = text
        .lines()
        .filter(|l| !l.contains(" is a fifo while ") && !l.contains("special file"))
        .collect();
    assert!(real.is_empty(), "mount differs from the model: {real:?}");
    compare_metadata(&model, &mnt);
    drop(m);
    wait_for_exit(&mnt);
    let fsck = Command::new("e2fsck").arg("-fn").arg(img).output().unwrap();
    assert!(
        fsck.status.success(),
        "e2fsck -fn: {}{}",
        String::from_utf8_lossy(&fsck.stdout),
        String::from_utf8_lossy(&fsck.stderr)
    );
    let out = work.join("debugfs-out");
    std::fs::create_dir_all(&out).unwrap();
    sh(&format!(
        "debugfs -R 'rdump / {}' '{}' 2>/dev/null",
        out.display(),
        img.display()
    ));
    // rdump skips fifos and device nodes: check those with debugfs stat.
    let cdev = sh(&format!(
        "debugfs -R 'stat /cdev' '{}' 2>/dev/null",
        img.display()
    ));
    assert!(
        cdev.contains("Type: character special") && cdev.contains("major/minor number: 04:05"),
        "{cdev}"
    );
    let fifo = sh(&format!(
        "debugfs -R 'stat /fifo' '{}' 2>/dev/null",
        img.display()
    ));
    assert!(fifo.contains("Type: FIFO"), "{fifo}");
    let diff = Command::new("diff")
        .args([
            "-r",
            "--no-dereference",
            "-x",
            "lost+found",
            "-x",
            "fifo",
            "-x",
            "cdev",
        ])
        .arg(&model)
        .arg(&out)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&diff.stdout);
    let real: Vec<&str> = text
        .lines()
        .filter(|l| !l.contains(" is a fifo while ") && !l.contains("special file"))
        .collect();
    assert!(real.is_empty(), "debugfs extracts something else: {real:?}");
}

/// The daemon writes bitmaps and the superblock back after the kernel
/// unmounts: wait until it has exited.
fn wait_for_exit(mnt: &Path) {
    let needle = mnt.to_str().unwrap().to_string();
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        let busy = std::fs::read_dir("/proc").unwrap().flatten().any(|p| {
            std::fs::read(p.path().join("cmdline"))
                .map(|c| {
                    let t = String::from_utf8_lossy(&c).replace('\0', " ");
                    t.contains("fuseext2") && t.contains(&needle)
                })
                .unwrap_or(false)
        });
        if !busy {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("fuseext2 did not exit");
}

const WORKLOAD: &str = "mkdir -p 'tree/a b/c' empty; seq 1 400000 > 'tree/a b/big'; \
    cp 'tree/a b/big' copy; printf PATCH | dd of=copy bs=1 seek=1000 conv=notrunc status=none; \
    echo hello > tree/f; ln tree/f hard; ln -s tree/f soft; ln -s \"$(printf 'deep/%.0s' $(seq 1 60))x\" slow; \
    truncate -s 100 copy; truncate -s 5000000 tree/sparse; echo mid | dd of=tree/sparse bs=1 seek=2000000 conv=notrunc status=none; \
    mkdir -p many; for i in $(seq 1 3000); do echo $i > many/file_$i.dat; done; rm many/file_7.dat many/file_70.dat; \
    mv tree/f tree/moved; mv 'tree/a b' 'renamed dir'; rmdir empty; mkfifo fifo; mknod cdev c 4 5; \
    chmod 640 hard; touch -d '2021-01-02 03:04:05.123456789 UTC' copy; mkdir gone; rmdir gone";

#[test]
fn write_workloads_pass_e2fsck_and_debugfs_reads_them_back() {
    for (name, options) in [
        ("ext2", "-t ext2"),
        ("ext3", "-t ext3"),
        ("ext4", "-t ext4"),
        ("ext4-1k", "-t ext4 -b 1024"),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let img = dir.path().join(format!("{name}.img"));
        sh(&format!(
            "truncate -s 128M '{0}' && mke2fs -q -F {options} '{0}'",
            img.display()
        ));
        write_workload(&img, dir.path(), WORKLOAD);
    }
}

#[test]
fn unlinked_open_files_rename_flags_and_xattrs() {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("ops.img");
    sh(&format!(
        "truncate -s 64M '{0}' && mke2fs -q -F -t ext4 '{0}'",
        img.display()
    ));
    let mnt = dir.path().join("mnt");
    std::fs::create_dir_all(&mnt).unwrap();
    let out = run(&img, &mnt, &["rw+"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let m = Mounted(mnt.clone());
    let script = r#"
import ctypes, os, sys
m = sys.argv[1]
libc = ctypes.CDLL(None, use_errno=True)
def renameat2(a, b, flags):
    r = libc.renameat2(-100, os.path.join(m, a).encode(), -100, os.path.join(m, b).encode(), flags)
    return 0 if r == 0 else ctypes.get_errno()
open(os.path.join(m, 'a'), 'w').write('A')
open(os.path.join(m, 'b'), 'w').write('B')
os.mkdir(os.path.join(m, 'd'))
assert renameat2('a', 'b', 1) == 17, 'NOREPLACE must give EEXIST'
assert renameat2('a', 'b', 2) == 0
assert open(os.path.join(m, 'a')).read() == 'B' and open(os.path.join(m, 'b')).read() == 'A'
assert renameat2('a', 'd', 2) == 0, 'exchange a file with a directory'
assert os.path.isdir(os.path.join(m, 'a')) and open(os.path.join(m, 'd')).read() == 'B'
# Unlink while open: data stays readable until close.
p = os.path.join(m, 'tmp')
with open(p, 'w') as f: f.write('x' * 100000)
fd = os.open(p, os.O_RDONLY)
os.unlink(p)
assert not os.path.exists(p)
assert len(os.read(fd, 200000)) == 100000
os.close(fd)
# 700 bytes: more than fits in the inode, so an external EA block (1 KiB blocks here).
os.setxattr(os.path.join(m, 'b'), 'user.big', b'v' * 700)
assert os.getxattr(os.path.join(m, 'b'), 'user.big') == b'v' * 700
try:
    os.setxattr(os.path.join(m, 'b'), 'user.big', b'w', os.XATTR_CREATE); raise SystemExit('XATTR_CREATE on an existing name must fail')
except FileExistsError: pass
os.removexattr(os.path.join(m, 'b'), 'user.big')
assert 'user.big' not in os.listxattr(os.path.join(m, 'b'))
"#;
    let out = Command::new("python3")
        .arg("-c")
        .arg(script)
        .arg(&mnt)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    drop(m);
    wait_for_exit(&mnt);
    let fsck = Command::new("e2fsck")
        .arg("-fn")
        .arg(&img)
        .output()
        .unwrap();
    assert!(
        fsck.status.success(),
        "e2fsck -fn: {}",
        String::from_utf8_lossy(&fsck.stdout)
    );
}

#[test]
fn a_full_filesystem_gives_enospc_and_stays_clean() {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("full.img");
    sh(&format!(
        "truncate -s 16M '{0}' && mke2fs -q -F -t ext4 '{0}'",
        img.display()
    ));
    let mnt = dir.path().join("mnt");
    std::fs::create_dir_all(&mnt).unwrap();
    let out = run(&img, &mnt, &["rw+"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let m = Mounted(mnt.clone());
    let err = sh(&format!(
        "dd if=/dev/zero of='{}/fill' bs=1M 2>&1 || true",
        mnt.display()
    ));
    assert!(err.contains("No space left on device"), "{err}");
    drop(m);
    wait_for_exit(&mnt);
    let fsck = Command::new("e2fsck")
        .arg("-fn")
        .arg(&img)
        .output()
        .unwrap();
    assert!(
        fsck.status.success(),
        "e2fsck -fn: {}",
        String::from_utf8_lossy(&fsck.stdout)
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

#[test]
fn htree_directories_made_by_the_kernel_stay_indexed_as_they_grow() {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("htree.img");
    sh(&format!(
        "truncate -s 128M '{0}' && mke2fs -q -F -t ext4 '{0}'",
        img.display()
    ));
    let kmnt = dir.path().join("kernel");
    std::fs::create_dir_all(&kmnt).unwrap();
    let mounted = Command::new("mount")
        .arg("-o")
        .arg("loop")
        .arg(&img)
        .arg(&kmnt)
        .output()
        .unwrap();
    if !mounted.status.success() {
        eprintln!(
            "SKIPPED: the kernel cannot loop-mount ext4 here: {}",
            String::from_utf8_lossy(&mounted.stderr).trim()
        );
        return;
    }
    sh(&format!("mkdir '{0}/big' && cd '{0}/big' && for i in $(seq 1 3000); do : > k$i; done; cd / && umount '{0}'", kmnt.display()));
    let flags = |img: &Path| {
        sh(&format!(
            "debugfs -R 'stat /big' '{}' 2>/dev/null",
            img.display()
        ))
    };
    assert!(
        flags(&img).contains("Flags: 0x81000"),
        "the kernel should have indexed /big"
    );
    let mnt = dir.path().join("mnt");
    std::fs::create_dir_all(&mnt).unwrap();
    let out = run(&img, &mnt, &["rw"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let m = Mounted(mnt.clone());
    sh(&format!(
        "cd '{}/big' && for i in $(seq 1 3000); do : > u$i; done; rm k5 u5",
        mnt.display()
    ));
    assert_eq!(std::fs::read_dir(mnt.join("big")).unwrap().count(), 5998);
    drop(m);
    wait_for_exit(&mnt);
    let fsck = Command::new("e2fsck")
        .arg("-fn")
        .arg(&img)
        .output()
        .unwrap();
    assert!(
        fsck.status.success(),
        "e2fsck -fn: {}",
        String::from_utf8_lossy(&fsck.stdout)
    );
    assert!(
        flags(&img).contains("Flags: 0x81000"),
        "the index must survive 3,000 inserts (node splits)"
    );
    let dump = sh(&format!(
        "debugfs -R 'htree_dump /big' '{}' 2>/dev/null",
        img.display()
    ));
    assert!(
        dump.contains("Root node dump"),
        "{}",
        &dump[..dump.len().min(300)]
    );
}

#[test]
fn a_journal_needing_recovery_is_replayed_in_memory_for_read_only_mounts() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().display().to_string();
    // A file's block gets a new version logged in the journal but not written
    // in place (debugfs's journal commands, as e2fsprogs' own tests make them).
    sh(&format!(
        "set -e; cd '{d}'; mkdir s; python3 -c \"open('s/f','w').write('OLD'*1365+'O')\"; \
         python3 -c \"open('new','wb').write(b'NEW'*1365+b'N')\"; truncate -s 64M j.img; mke2fs -q -F -t ext4 -b 4096 -d s j.img; \
         B=$(debugfs -R 'blocks /f' j.img 2>/dev/null | tr -d ' \\n'); printf 'jo\\njw -b %s {d}/new\\njc\\n' \"$B\" > cmds; \
         debugfs -w -f cmds j.img >/dev/null 2>&1"
    ));
    let img = dir.path().join("j.img");
    assert!(sh(&format!("dumpe2fs -h '{}' 2>/dev/null", img.display())).contains("needs_recovery"));
    assert!(
        sh(&format!(
            "debugfs -R 'cat /f' '{}' 2>/dev/null",
            img.display()
        ))
        .starts_with("OLD"),
        "in place: the old data"
    );
    let before = std::fs::read(&img).unwrap();
    let mnt = dir.path().join("mnt");
    {
        let _m = Mounted::new(&img, &mnt);
        let content = std::fs::read_to_string(mnt.join("f")).unwrap();
        assert!(
            content.starts_with("NEWNEW"),
            "the mount must show the journal's version"
        );
    }
    assert!(
        std::fs::read(&img).unwrap() == before,
        "replay must not write the image"
    );
    // Read-write is refused: recovery is e2fsck's job.
    let out = run(&img, &mnt, &["rw"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("needs recovery"));
    // And e2fsck's recovery agrees with ours.
    sh(&format!(
        "e2fsck -fy '{}' >/dev/null 2>&1 || true",
        img.display()
    ));
    assert!(sh(&format!(
        "debugfs -R 'cat /f' '{}' 2>/dev/null",
        img.display()
    ))
    .starts_with("NEW"));
}
