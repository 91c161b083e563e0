//! `fuseext2` through the real kernel FUSE: trees made by `mke2fs -d` read
//! back exactly, with link counts, inode numbers, device numbers and xattrs;
//! write workloads checked with e2fsck and debugfs; bad images (bad magic,
//! checksums, truncated, cycles, unknown features) refused or EIO; the
//! ownership options; consistency after the daemon is killed.

use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;
use testkit::{
    e2fsck_clean, is_mounted, lazy_unmount, names, sh, wait_for_daemon_exit, wait_until,
    wait_until_mounted, MountGuard,
};

const BIN: &str = env!("CARGO_BIN_EXE_fuseext2");

fn run(image: &Path, dir: &Path, options: &[&str]) -> Output {
    testkit::run_daemon(BIN, options, image, dir)
}

/// Runs `fuseext2 -o OPTS IMAGE DIR` (daemonizing), which must succeed; the guard unmounts
/// lazily when dropped and waits until the mount is gone (not for the daemon: tests that
/// read the image afterwards call `wait_for_daemon_exit`).
fn mount(image: &Path, dir: &Path, options: &[&str]) -> MountGuard {
    std::fs::create_dir_all(dir).unwrap();
    let out = run(image, dir, options);
    assert!(
        out.status.success(),
        "fuseext2: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    MountGuard::new(dir)
}

/// What `diff -r --no-dereference -x lost+found [-x EXCLUDE]... a b` reports, less the
/// fifos and device nodes it cannot compare: what really differs.
fn tree_differences(a: &Path, b: &Path, excludes: &[&str]) -> Vec<String> {
    let mut diff = Command::new("diff");
    diff.args(["-r", "--no-dereference", "-x", "lost+found"]);
    for exclude in excludes {
        diff.args(["-x", exclude]);
    }
    let out = diff.arg(a).arg(b).output().unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| !l.contains(" is a fifo while ") && !l.contains("special file"))
        .map(str::to_string)
        .collect()
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
        let m = mount(&img, &mnt, &[]);
        assert!(is_mounted(&mnt));
        // diff reports fifos and devices it cannot compare; nothing else may differ.
        let real = tree_differences(&src, &mnt, &[]);
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
        let _m = mount(&img, &mnt, &[]);
        assert!(is_mounted(&mnt));
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
    let m = mount(img, &mnt, &["rw+"]);
    for root in [&mnt, &model] {
        sh(&format!("set -e; cd '{}'; {script}", root.display()));
    }
    let real = tree_differences(&model, &mnt, &[]);
    assert!(real.is_empty(), "mount differs from the model: {real:?}");
    compare_metadata(&model, &mnt);
    drop(m);
    wait_for_daemon_exit("fuseext2", &mnt);
    e2fsck_clean(img);
    // The 3,000-file directory was turned into an htree (EXT2_INDEX_FL,
    // 0x1000) when its first block filled, and grew as one.
    if script.contains("many/file_") {
        let stat = sh(&format!(
            "debugfs -R 'stat /many' '{}' 2>/dev/null",
            img.display()
        ));
        let flags = stat
            .split("Flags: 0x")
            .nth(1)
            .and_then(|t| u32::from_str_radix(t.split_whitespace().next()?, 16).ok())
            .unwrap_or(0);
        assert!(flags & 0x1000 != 0, "many/ is not indexed: {stat}");
    }
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
    let real = tree_differences(&model, &out, &["fifo", "cdev"]);
    assert!(real.is_empty(), "debugfs extracts something else: {real:?}");
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
    let m = mount(&img, &mnt, &["rw+"]);
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
# O_TRUNC and truncate(2) that change the size mark mtime and ctime (pjdfstest open/00 43).
import time
t = os.path.join(m, 'trunc')
open(t, 'w').write('test\n')
old = os.stat(t)
time.sleep(1.1)
os.close(os.open(t, os.O_WRONLY | os.O_TRUNC))
new = os.stat(t)
assert new.st_size == 0 and new.st_mtime > old.st_mtime and new.st_ctime > old.st_ctime, (old, new)
time.sleep(1.1)
os.truncate(t, 4096)
grown = os.stat(t)
assert grown.st_mtime > new.st_mtime and grown.st_ctime > new.st_ctime, (new, grown)
"#;
    testkit::run_ok("python3", &["-c", script, testkit::s(&mnt)]);
    drop(m);
    wait_for_daemon_exit("fuseext2", &mnt);
    e2fsck_clean(&img);
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
    let m = mount(&img, &mnt, &["rw+"]);
    let err = sh(&format!(
        "dd if=/dev/zero of='{}/fill' bs=1M 2>&1 || true",
        mnt.display()
    ));
    assert!(err.contains("No space left on device"), "{err}");
    drop(m);
    wait_for_daemon_exit("fuseext2", &mnt);
    e2fsck_clean(&img);
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
        let _m = MountGuard::new(&mnt);
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
        testkit::skip(&format!(
            "the kernel cannot loop-mount ext4 here: {}",
            String::from_utf8_lossy(&mounted.stderr).trim()
        ));
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
    let m = mount(&img, &mnt, &["rw"]);
    sh(&format!(
        "cd '{}/big' && for i in $(seq 1 3000); do : > u$i; done; rm k5 u5",
        mnt.display()
    ));
    assert_eq!(std::fs::read_dir(mnt.join("big")).unwrap().count(), 5998);
    drop(m);
    wait_for_daemon_exit("fuseext2", &mnt);
    e2fsck_clean(&img);
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
        let _m = mount(&img, &mnt, &[]);
        assert!(is_mounted(&mnt));
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

/// fuse2fs's ownership options, as libfuse implements them for it: `uid=`
/// and `gid=` report every file as owned by those ids and `umask=` reports
/// permissions `0777 & ~umask`, without changing the disk; `fakeroot`
/// makes the files an ordinary user creates belong to root.
#[test]
fn ownership_options_follow_fuse2fs() {
    let dir = tempfile::tempdir().unwrap();
    // The user below must reach the mount point.
    sh(&format!("chmod 755 '{}'", dir.path().display()));
    let src = dir.path().join("src");
    std::fs::create_dir_all(src.join("sub")).unwrap();
    std::fs::write(src.join("file"), b"data").unwrap();
    sh(&format!(
        "chmod 644 '{0}/file' && chmod 755 '{0}/sub'",
        src.display()
    ));
    let img = dir.path().join("own.img");
    sh(&format!(
        "truncate -s 16M '{0}' && mke2fs -q -F -t ext4 -d '{1}' '{0}'",
        img.display(),
        src.display()
    ));
    let mnt = dir.path().join("mnt");
    std::fs::create_dir_all(&mnt).unwrap();

    let m = mount(&img, &mnt, &["uid=1234,gid=5678,umask=027"]);
    for name in ["file", "sub"] {
        let md = std::fs::symlink_metadata(mnt.join(name)).unwrap();
        assert_eq!((md.uid(), md.gid()), (1234, 5678), "{name}");
        assert_eq!(md.mode() & 0o7777, 0o750, "{name}");
    }
    drop(m);
    wait_for_daemon_exit("fuseext2", &mnt);
    // The disk keeps its owners and modes.
    let stat = sh(&format!(
        "debugfs -R 'stat /file' '{}' 2>/dev/null",
        img.display()
    ));
    assert!(stat.contains("User:     0   Group:     0"), "{stat}");
    assert!(stat.contains("Mode:  0644"), "{stat}");

    // An ordinary user creates a file: its owner, or root under fakeroot. The root
    // directory is made world-writable (sticky) so that the kernel lets the user create.
    sh(&format!(
        "debugfs -w -R 'set_inode_field / mode 041777' '{}' 2>/dev/null",
        img.display()
    ));
    let mut owners = Vec::new();
    for (options, name) in [
        ("rw+,allow_other", "plain"),
        ("rw+,allow_other,fakeroot", "faked"),
    ] {
        let m = mount(&img, &mnt, &[options]);
        sh(&format!(
            "setpriv --reuid 4321 --regid 4321 --clear-groups sh -c 'echo x > \"{}/{name}\"'",
            mnt.display()
        ));
        drop(m);
        wait_for_daemon_exit("fuseext2", &mnt);
        let stat = sh(&format!(
            "debugfs -R 'stat /{name}' '{}' 2>/dev/null",
            img.display()
        ));
        let owner = stat
            .lines()
            .find(|l| l.starts_with("User:"))
            .unwrap_or_default()
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ");
        owners.push(owner);
    }
    assert!(
        owners[0].starts_with("User: 4321 Group: 4321"),
        "{owners:?}"
    );
    assert!(owners[1].starts_with("User: 0 Group: 0"), "{owners:?}");
    e2fsck_clean(&img);
}

/// Runs `script` under `timeout`, so a hang fails the test instead of
/// stalling it; returns whether the script succeeded and its stderr.
fn bounded(script: &str) -> (bool, String) {
    let out = Command::new("timeout")
        .args(["20", "sh", "-c", script])
        .output()
        .unwrap();
    assert_ne!(out.status.code(), Some(124), "hung: {script}");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Cycles made by hand: an extent index pointing at its own block (with the
/// tree one and two levels deep), a directory linked under its own child and
/// a ".." pointing at the directory itself. Each gives an error (EUCLEAN,
/// "Structure needs cleaning", or the kernel's ELOOP for the directory
/// alias), never a hang, a panic or made-up data; the mount stays usable.
#[test]
fn cycles_in_extent_trees_and_directories_give_errors_not_hangs() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    std::fs::create_dir_all(src.join("a/b")).unwrap();
    // Twelve separate runs: more extents than the inode holds, so the tree
    // gets a leaf block.
    let frag = std::fs::File::create(src.join("frag")).unwrap();
    for i in 0..12u64 {
        std::os::unix::fs::FileExt::write_all_at(&frag, &[b'a' + i as u8; 1024], i * 2048).unwrap();
    }
    drop(frag);
    // No metadata_csum: the checksums would catch the edits before the shape does.
    let base = dir.path().join("base.img");
    sh(&format!(
        "truncate -s 16M '{0}' && mke2fs -q -F -t ext4 -b 1024 -O ^metadata_csum -d '{1}' '{0}'",
        base.display(),
        src.display()
    ));
    let leaf: u64 = sh(&format!(
        "debugfs -R 'stat /frag' '{}' 2>/dev/null | grep -o '(ETB0):[0-9]*' | cut -d: -f2",
        base.display()
    ))
    .trim()
    .parse()
    .expect("frag has a leaf block");
    let mnt = dir.path().join("mnt");
    std::fs::create_dir_all(&mnt).unwrap();

    // The leaf rewritten as an index node whose one entry points at itself.
    let selfref = dir.path().join("selfref.img");
    std::fs::copy(&base, &selfref).unwrap();
    let mut node = Vec::new();
    for half in [0xF30Au16, 1, (1024 - 12) / 12, 1] {
        node.extend_from_slice(&half.to_le_bytes());
    }
    node.extend_from_slice(&0u32.to_le_bytes()); // generation
    node.extend_from_slice(&0u32.to_le_bytes()); // ei_block
    node.extend_from_slice(&(leaf as u32).to_le_bytes()); // ei_leaf_lo
    node.extend_from_slice(&[0u8; 4]); // ei_leaf_hi, unused
    let image = std::fs::OpenOptions::new()
        .write(true)
        .open(&selfref)
        .unwrap();
    std::os::unix::fs::FileExt::write_all_at(&image, &node, leaf * 1024).unwrap();
    drop(image);
    // The same, with the inode's root claiming two levels (so the walk
    // would enter the node twice).
    let deeper = dir.path().join("deeper.img");
    std::fs::copy(&selfref, &deeper).unwrap();
    sh(&format!(
        "debugfs -w -R 'sif /frag block[1] 0x20004' '{}' 2>&1",
        deeper.display()
    ));
    for img in [&selfref, &deeper] {
        let _m = mount(img, &mnt, &[]);
        // The name resolves (its inode is fine); only reading its data fails.
        wait_until(
            &format!("frag to be visible in {}", img.display()),
            Duration::from_secs(5),
            || std::fs::symlink_metadata(mnt.join("frag")).is_ok(),
        );
        let (ok, err) = bounded(&format!("cat '{}/frag' > /dev/null", mnt.display()));
        assert!(
            !ok && err.contains("Structure needs cleaning"),
            "{}: {err}",
            img.display()
        );
        assert!(
            std::fs::read_dir(&mnt).unwrap().count() >= 3,
            "the mount still works"
        );
    }

    // /a linked as /a/b/loop, and b's ".." pointing at b.
    let dirs = dir.path().join("dirs.img");
    std::fs::copy(&base, &dirs).unwrap();
    sh(&format!(
        "debugfs -w -R 'ln /a /a/b/loop' '{}' 2>&1",
        dirs.display()
    ));
    let b_block: u64 = sh(&format!(
        "debugfs -R 'blocks /a/b' '{}' 2>/dev/null",
        dirs.display()
    ))
    .split_whitespace()
    .next()
    .unwrap()
    .parse()
    .unwrap();
    let b_ino: u32 = sh(&format!(
        "debugfs -R 'stat /a/b' '{}' 2>/dev/null | head -1 | awk '{{print $2}}'",
        dirs.display()
    ))
    .trim()
    .parse()
    .unwrap();
    // The ".." entry follows the 12-byte "." entry.
    let image = std::fs::OpenOptions::new().write(true).open(&dirs).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&image, &b_ino.to_le_bytes(), b_block * 1024 + 12)
        .unwrap();
    drop(image);
    let m = mount(&dirs, &mnt, &["rw+"]);
    let (ok, err) = bounded(&format!("ls '{}/a/b/loop/b'", mnt.display()));
    assert!(!ok && err.contains("Too many levels"), "{err}");
    let (ok, _) = bounded(&format!("find '{}' > /dev/null", mnt.display()));
    assert!(!ok, "find reports the loop");
    // Moving a directory under b walks b's ".." chain: it never reaches the root.
    std::fs::create_dir(mnt.join("x")).unwrap();
    let (ok, err) = bounded(&format!("mv '{0}/x' '{0}/a/b/'", mnt.display()));
    assert!(!ok && err.contains("Structure needs cleaning"), "{err}");
    assert!(mnt.join("x").is_dir(), "the failed move changed nothing");
    drop(m);
}

/// A fresh 64 MiB ext4 image `name` in `dir`, served in the foreground with `options` on
/// `dir/mnt`, once the mount is live: (image, mount point, daemon).
fn foreground_on_fresh_ext4(
    dir: &Path,
    name: &str,
    options: &str,
) -> (PathBuf, PathBuf, std::process::Child) {
    let img = dir.join(name);
    sh(&format!(
        "truncate -s 64M '{0}' && mke2fs -q -F -t ext4 '{0}'",
        img.display()
    ));
    let mnt = dir.join("mnt");
    std::fs::create_dir_all(&mnt).unwrap();
    let daemon = Command::new(BIN)
        .args(["-f", "-o", options])
        .arg(&img)
        .arg(&mnt)
        .spawn()
        .unwrap();
    wait_until_mounted(&mnt, Duration::from_secs(10));
    (img, mnt, daemon)
}

/// The daemon killed with SIGKILL after `sync` (no unmount, no close):
/// bitmaps, group descriptors and the superblock were written after each
/// operation, so e2fsck finds nothing to fix but the one file that was
/// unlinked while open, which is on the orphan list for e2fsck -p.
#[test]
fn a_killed_daemon_leaves_an_image_e2fsck_accepts() {
    let dir = tempfile::tempdir().unwrap();
    let (img, mnt, mut daemon) = foreground_on_fresh_ext4(dir.path(), "killed.img", "rw+");
    sh(&format!(
        "cd '{}' && mkdir -p d && for i in $(seq 1 300); do echo $i > d/f$i; done && rm d/f1* && \
         head -c 3000000 /dev/urandom > big && truncate -s 1000 big && \
         head -c 2000000 /dev/urandom > big2 && ln big2 hard && mv d e && sync",
        mnt.display()
    ));
    // A file unlinked while open: its inode lives on, on the orphan list.
    sh(&format!(
        "head -c 100000 /dev/urandom > '{}/held'",
        mnt.display()
    ));
    let mut holder = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "exec 3<'{0}/held'; rm '{0}/held'; sync; echo ready; exec sleep 60",
            mnt.display()
        ))
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut ready = [0u8; 6];
    std::io::Read::read_exact(holder.stdout.as_mut().unwrap(), &mut ready).unwrap();
    daemon.kill().unwrap();
    daemon.wait().unwrap();
    holder.kill().unwrap();
    holder.wait().unwrap();
    lazy_unmount(&mnt);
    // Everything but the orphan is consistent...
    let fsck = Command::new("e2fsck")
        .arg("-fn")
        .arg(&img)
        .output()
        .unwrap();
    let report = String::from_utf8_lossy(&fsck.stdout);
    assert!(report.contains("204/16384 files"), "{report}");
    // A read-write mount finishes the job, as the kernel's mount does...
    let copy = dir.path().join("remounted.img");
    std::fs::copy(&img, &copy).unwrap();
    let m = mount(&copy, &mnt, &["rw+"]);
    drop(m);
    wait_for_daemon_exit("fuseext2", &mnt);
    let report = e2fsck_clean(&copy);
    assert!(report.contains("203/16384 files"), "{report}");
    // ...and so does e2fsck -p, no questions asked.
    let preen = Command::new("e2fsck")
        .arg("-fp")
        .arg(&img)
        .output()
        .unwrap();
    let preened = String::from_utf8_lossy(&preen.stdout);
    assert!(
        matches!(preen.status.code(), Some(0) | Some(1))
            && preened.contains("Clearing orphaned inode"),
        "e2fsck -p: {preened}{}",
        String::from_utf8_lossy(&preen.stderr)
    );
    let report = e2fsck_clean(&img);
    assert!(report.contains("203/16384 files"), "{report}");
}

/// Sets `bits` in the 32-bit superblock field at byte `field` of the superblock.
fn set_super_bits(img: &Path, field: u64, bits: u32) {
    use std::os::unix::fs::FileExt;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(img)
        .unwrap();
    let mut word = [0u8; 4];
    file.read_exact_at(&mut word, 1024 + field).unwrap();
    let value = u32::from_le_bytes(word) | bits;
    file.write_all_at(&value.to_le_bytes(), 1024 + field)
        .unwrap();
}

/// Writes the 32-bit superblock field at byte `field` of the superblock.
fn put_super_u32(img: &Path, field: u64, value: u32) {
    use std::os::unix::fs::FileExt;
    let file = std::fs::OpenOptions::new().write(true).open(img).unwrap();
    file.write_all_at(&value.to_le_bytes(), 1024 + field)
        .unwrap();
}

/// Hostile superblock geometry is refused by name before libext2fs acts on it. The first
/// case is what the `ext_open` fuzz target found: on the small image it is seeded with, an
/// unknown read-only-compatible bit (24) let the read-only open go on, and a first data
/// block of 100 made libext2fs's bitmap reader copy past its heap buffer.
#[test]
fn hostile_superblock_geometry_is_refused_before_the_bitmaps_are_read() {
    let dir = tempfile::tempdir().unwrap();
    let mnt = dir.path().join("mnt");
    std::fs::create_dir_all(&mnt).unwrap();
    let base = dir.path().join("base.img");
    sh(&format!(
        "truncate -s 256K '{0}' && mke2fs -q -F -t ext2 -b 1024 -N 16 '{0}'",
        base.display()
    ));
    // (what is changed: superblock field and value, ...; what the refusal says)
    let cases: &[(&[(u64, u32)], &str)] = &[
        (
            &[(0x64, 0x3 | 1 << 24), (0x14, 100)],
            "the first data block is 100",
        ),
        (&[(0x14, 0)], "the first data block is 0"),
        (&[(0x20, 8196), (0x24, 8196)], "8196 clusters per group"),
        (&[(0x24, 4096)], "blocks per group is not"),
        (&[(0x28, 12), (0x00, 12)], "12 inodes per group"),
        (&[(0x00, 32)], "32 inodes are not 1 groups of 16"),
        (&[(0x04, 100_000)], "the device holds 256"),
        (&[(0x18, 7), (0x1C, 7)], "block size"),
        (&[(0x58, 100)], "inode size 100"),
    ];
    for (i, (changes, expected)) in cases.iter().enumerate() {
        let img = dir.path().join(format!("hostile{i}.img"));
        std::fs::copy(&base, &img).unwrap();
        for &(field, value) in changes.iter() {
            put_super_u32(&img, field, value);
        }
        for options in [&[][..], &["rw+"][..]] {
            let out = run(&img, &mnt, options);
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert_eq!(out.status.code(), Some(1), "case {i} {options:?}: {stderr}");
            // A read-write mount of the unknown bit is refused for it first.
            let feature = !options.is_empty() && changes.iter().any(|&(f, _)| f == 0x64);
            assert!(
                if feature {
                    stderr.contains("FEATURE_R24")
                } else {
                    stderr.contains("corrupt superblock") && stderr.contains(expected)
                },
                "case {i} {options:?}: {stderr}"
            );
            assert!(!stderr.contains("panicked"), "{stderr}");
            assert!(!is_mounted(&mnt));
        }
    }
    // A root that is not a directory (e2fsprogs's f_badroot) is refused at mount, as the
    // kernel refuses it, not mounted with every access failing.
    let img = dir.path().join("badroot.img");
    std::fs::copy(&base, &img).unwrap();
    sh(&format!(
        "debugfs -w -R 'sif <2> mode 0100644' '{}' 2>/dev/null",
        img.display()
    ));
    let out = run(&img, &mnt, &[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("corrupt root inode"), "{stderr}");
    assert!(!is_mounted(&mnt));
    // The unknown bit alone still mounts read-only, and only read-only.
    let img = dir.path().join("ro_compat24.img");
    std::fs::copy(&base, &img).unwrap();
    put_super_u32(&img, 0x64, 0x3 | 1 << 24);
    let m = mount(&img, &mnt, &[]);
    assert!(mnt.join("lost+found").is_dir());
    drop(m);
    wait_for_daemon_exit("fuseext2", &mnt);
    let out = run(&img, &mnt, &["rw+"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("FEATURE_R24") && stderr.contains("mount it read-only"),
        "{stderr}"
    );
}

/// Feature bits libext2fs does not know are named in the refusal (as
/// tune2fs spells them); an unknown read-only-compatible one refuses only a
/// read-write mount, as the kernel does, and reads still work.
#[test]
fn unknown_features_are_named_and_ro_compat_ones_still_mount_read_only() {
    let dir = tempfile::tempdir().unwrap();
    let mnt = dir.path().join("mnt");
    std::fs::create_dir_all(&mnt).unwrap();
    let ro = dir.path().join("ro_compat.img");
    // No metadata_csum, so the edited superblock keeps a valid checksum.
    sh(&format!(
        "truncate -s 16M '{0}' && mke2fs -q -F -t ext4 -O ^metadata_csum '{0}'",
        ro.display()
    ));
    let incompat = dir.path().join("incompat.img");
    std::fs::copy(&ro, &incompat).unwrap();
    set_super_bits(&ro, 0x64, 1 << 30); // s_feature_ro_compat
    set_super_bits(&incompat, 0x60, 1 << 29); // s_feature_incompat

    let out = run(&ro, &mnt, &["rw+"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("FEATURE_R30") && stderr.contains("read-only"),
        "{stderr}"
    );
    let m = mount(&ro, &mnt, &[]);
    assert!(mnt.join("lost+found").is_dir());
    drop(m);

    let out = run(&incompat, &mnt, &[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("FEATURE_I29"), "{stderr}");
    assert!(!is_mounted(&mnt));
}

/// Each operation leaves the image whole while the daemon still runs (the shim holds an
/// operation's metadata blocks only until the operation ends), and close(2) costs one
/// FLUSH for the whole mount: the driver answers the first with ENOSYS, so the kernel
/// stops sending them.
#[test]
fn every_operation_reaches_the_image_and_only_the_first_close_sends_flush() {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("live.img");
    sh(&format!(
        "truncate -s 64M '{0}' && mke2fs -q -F -t ext4 '{0}'",
        img.display()
    ));
    let mnt = dir.path().join("mnt");
    let daemon = testkit::spawn_logged(BIN, "rw+", &img, &mnt);
    sh(&format!(
        "cd '{}' && mkdir d && for i in $(seq 1 40); do echo file $i > d/f$i; done && \
         head -c 300000 /dev/urandom > d/big && rm d/f3 && mv d/f4 d/g4 && chmod 600 d/f5",
        mnt.display()
    ));
    // No sync, no unmount: what the image holds now is what a crash would leave.
    let report = e2fsck_clean(&img);
    assert!(report.contains("52/16384 files"), "{report}");
    let cat = sh(&format!("debugfs -R 'cat /d/f40' '{}'", img.display()));
    assert_eq!(cat, "file 40\n");
    let stat = sh(&format!("debugfs -R 'stat /d/f5' '{}'", img.display()));
    assert!(stat.contains("Mode:  0600"), "{stat}");
    let big = sh(&format!(
        "debugfs -R 'dump /d/big {0}/big.out' '{1}' 2>/dev/null; cmp {0}/big.out '{2}/d/big' && echo same",
        dir.path().display(),
        img.display(),
        mnt.display()
    ));
    assert_eq!(big, "same\n");
    let _ = Command::new("fusermount3").arg("-u").arg(&mnt).output();
    let out = daemon.wait_with_output().unwrap();
    let log = String::from_utf8_lossy(&out.stderr);
    let flushes = log.lines().filter(|l| l.starts_with("flush(")).count();
    let releases = log.lines().filter(|l| l.starts_with("release(")).count();
    assert_eq!(flushes, 1, "{log}");
    assert!(releases >= 41, "{releases} releases");
    e2fsck_clean(&img);
}

/// CPU time (user + system, clock ticks) of process `pid`.
/// fuseext2 polls for requests by default (its driver serves one call at a time, so one
/// serving thread loses nothing) and `-o no_busy_poll` turns that off; either way it serves as
/// usual, polling stops when requests stop (an idle mount uses no CPU), and unmounting ends
/// the daemon.
#[test]
fn busy_poll_is_the_default_serves_and_costs_nothing_when_idle() {
    for (options, polls) in [("rw+", true), ("rw+,no_busy_poll", false)] {
        let dir = tempfile::tempdir().unwrap();
        let (img, mnt, mut daemon) = foreground_on_fresh_ext4(dir.path(), "poll.img", options);
        // Unmounts (lazily) if an assertion fails.
        let _guard = MountGuard::new(&mnt);
        let listing = sh(&format!(
            "cd '{}' && mkdir d && for i in $(seq 1 200); do echo $i > d/f$i; done && \
             cat d/f7 d/f200 && ls d | wc -l",
            mnt.display()
        ));
        assert_eq!(listing, "7\n200\n200\n", "{options}");
        testkit::assert_serving(daemon.id(), polls, options);
        let _ = Command::new("fusermount3").arg("-u").arg(&mnt).output();
        assert!(daemon.wait().unwrap().success());
        e2fsck_clean(&img);
    }
}

/// One 1 MiB write to a block-mapped ext2 file with 1 KiB blocks dirties more blocks (data and
/// indirect blocks, through libext2fs's file API) than the shim's block cache has slots: the
/// displaced ones go to the device first, and the file and the image come out right.
#[test]
fn writes_larger_than_the_block_cache_reach_the_image_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("ext2-1k.img");
    sh(&format!(
        "truncate -s 64M '{0}' && mke2fs -q -F -t ext2 -b 1024 '{0}' && \
         head -c 5000000 /dev/urandom > '{1}/data'",
        img.display(),
        dir.path().display()
    ));
    let mnt = dir.path().join("mnt");
    std::fs::create_dir_all(&mnt).unwrap();
    let m = mount(&img, &mnt, &["rw+"]);
    sh(&format!(
        "dd if='{0}/data' of='{1}/file' bs=1M iflag=fullblock status=none && \
         dd if='{0}/data' of='{1}/file' bs=1M seek=1 skip=2 count=1 conv=notrunc status=none && \
         dd if='{0}/data' of='{0}/expect' bs=1M iflag=fullblock status=none && \
         dd if='{0}/data' of='{0}/expect' bs=1M seek=1 skip=2 count=1 conv=notrunc status=none && \
         cmp '{0}/expect' '{1}/file'",
        dir.path().display(),
        mnt.display()
    ));
    drop(m);
    wait_for_daemon_exit("fuseext2", &mnt);
    let dumped = dir.path().join("dumped");
    sh(&format!(
        "debugfs -R 'dump /file {}' '{}' 2>/dev/null",
        dumped.display(),
        img.display()
    ));
    sh(&format!(
        "cmp '{}/expect' '{}'",
        dir.path().display(),
        dumped.display()
    ));
    e2fsck_clean(&img);
}

/// At 0 free blocks, unlink and truncate free what they remove and leave an image e2fsck
/// accepts (issue 17): a file filled up to ENOSPC through the mount, and a file debugfs
/// wrote over the filesystem's very last block (libext2fs's punch refuses a run ending
/// there, after cutting it from the tree).
#[test]
fn a_full_disk_frees_what_unlink_and_truncate_remove() {
    let dir = tempfile::tempdir().unwrap();
    let mnt = dir.path().join("mnt");
    // Filled through the mount until ENOSPC, then removed.
    let img = dir.path().join("full.img");
    sh(&format!(
        "truncate -s 4M '{0}' && mke2fs -q -F -t ext4 '{0}'",
        img.display()
    ));
    let m = mount(&img, &mnt, &["rw"]);
    let filled = Command::new("dd")
        .args([
            "if=/dev/zero",
            &format!("of={}/f", mnt.display()),
            "bs=1M",
            "count=8",
        ])
        .output()
        .unwrap();
    assert!(!filled.status.success(), "the disk never filled");
    std::fs::remove_file(mnt.join("f")).expect("rm on a full disk");
    drop(m);
    wait_for_daemon_exit("fuseext2", &mnt);
    e2fsck_clean(&img);

    // A file that ends at the filesystem's last block (blocks 1330-4095 of 4096).
    let img = dir.path().join("last.img");
    let data = dir.path().join("data");
    sh(&format!(
        "truncate -s 4M '{0}' && mke2fs -q -F -t ext4 -b 1024 '{0}' && \
         head -c 2832384 /dev/urandom > '{1}' && debugfs -w -R 'write {1} a' '{0}' >/dev/null 2>&1",
        img.display(),
        data.display()
    ));
    let extents = sh(&format!(
        "debugfs -R 'ex a' '{}' 2>/dev/null",
        img.display()
    ));
    assert!(
        extents.split_whitespace().any(|w| w == "4095"),
        "a does not reach the last block: {extents}"
    );
    let m = mount(&img, &mnt, &["rw"]);
    std::fs::OpenOptions::new()
        .write(true)
        .open(mnt.join("a"))
        .unwrap()
        .set_len(5000)
        .expect("truncate over the last block");
    let head = std::fs::read(mnt.join("a")).unwrap();
    assert_eq!(head, std::fs::read(&data).unwrap()[..5000]);
    std::fs::remove_file(mnt.join("a")).expect("rm");
    drop(m);
    wait_for_daemon_exit("fuseext2", &mnt);
    e2fsck_clean(&img);
}

/// `-o writeback_cache`: the kernel caches writes and sends them late and large, and the
/// file still behaves: O_APPEND appends at the real end, a write-only handle can change part
/// of a page (the kernel reads the rest through it), truncate then read, mtime moves on a
/// write and keeps what utimens set once the cache is written back; data is in the image
/// after fsync (debugfs, still mounted) and after SIGTERM (e2fsck clean).
#[test]
fn the_writeback_cache_keeps_file_semantics_and_durability() {
    use std::io::Write;
    use std::os::unix::fs::FileExt;
    let dir = tempfile::tempdir().unwrap();
    let (img, mnt, mut daemon) =
        foreground_on_fresh_ext4(dir.path(), "wb.img", "rw+,writeback_cache");
    let f = mnt.join("f");
    std::fs::write(&f, "hello").unwrap();
    let mut append = std::fs::OpenOptions::new().append(true).open(&f).unwrap();
    append.write_all(b" world").unwrap();
    drop(append);
    assert_eq!(std::fs::read_to_string(&f).unwrap(), "hello world");
    let write_only = std::fs::OpenOptions::new().write(true).open(&f).unwrap();
    write_only.write_at(b"X", 2).unwrap();
    drop(write_only);
    assert_eq!(std::fs::read_to_string(&f).unwrap(), "heXlo world");
    let before = std::fs::metadata(&f).unwrap().modified().unwrap();
    std::thread::sleep(Duration::from_millis(20));
    let file = std::fs::OpenOptions::new().write(true).open(&f).unwrap();
    file.set_len(3).unwrap();
    assert_eq!(std::fs::read(&f).unwrap(), b"heX");
    file.set_len(6).unwrap();
    assert_eq!(std::fs::read(&f).unwrap(), b"heX\0\0\0");
    file.write_at(b"!", 6).unwrap();
    assert!(std::fs::metadata(&f).unwrap().modified().unwrap() > before);
    // utimens after a cached write: the write-back must not move mtime again.
    sh(&format!(
        "touch -m -d '2020-02-03 04:05:06 UTC' '{}'",
        f.display()
    ));
    drop(file);
    let mtime = || std::fs::metadata(&f).unwrap().mtime();
    assert_eq!(mtime(), 1_580_702_706);
    // fsync: the data is in the image now.
    let g = mnt.join("g");
    let mut durable = std::fs::File::create(&g).unwrap();
    durable.write_all(b"durable after fsync").unwrap();
    durable.sync_all().unwrap();
    let cat = |name: &str| {
        sh(&format!(
            "debugfs -R 'cat /{name}' '{}' 2>/dev/null",
            img.display()
        ))
    };
    assert_eq!(cat("g"), "durable after fsync");
    // SIGTERM while a file is open with data still in the kernel's cache: the mount is
    // detached, the file served until it is closed, and closing writes the cache back.
    let mut late = std::fs::File::create(mnt.join("late")).unwrap();
    late.write_all(&vec![b'L'; 300_000]).unwrap();
    drop(durable);
    let pid = rustix::process::Pid::from_child(&daemon);
    rustix::process::kill_process(pid, rustix::process::Signal::TERM).unwrap();
    wait_until("the mount is detached", Duration::from_secs(10), || {
        !is_mounted(&mnt)
    });
    late.write_all(b"END").unwrap();
    drop(late);
    assert!(daemon.wait().unwrap().success());
    assert!(!is_mounted(&mnt));
    e2fsck_clean(&img);
    assert_eq!(cat("f"), "heX\0\0\0!");
    let late = cat("late");
    assert_eq!(late.len(), 300_003);
    assert!(late.ends_with("LEND"));
    let stat = sh(&format!(
        "debugfs -R 'stat /f' '{}' 2>/dev/null",
        img.display()
    ));
    assert!(stat.contains("mtime: 0x5e379bf2"), "{stat}");
}

/// Directory listings stay in the kernel across opens (FOPEN_CACHE_DIR), and a change made
/// through the mount drops them: a new name and a removed one show at once.
#[test]
fn cached_directory_listings_follow_changes() {
    let dir = tempfile::tempdir().unwrap();
    let (img, mnt, mut daemon) = foreground_on_fresh_ext4(dir.path(), "dirs.img", "rw+");
    let d = mnt.join("d");
    std::fs::create_dir(&d).unwrap();
    std::fs::write(d.join("a"), "a").unwrap();
    assert_eq!(names(&d), ["a"]);
    assert_eq!(names(&d), ["a"]);
    std::fs::write(d.join("b"), "b").unwrap();
    assert_eq!(names(&d), ["a", "b"]);
    std::fs::remove_file(d.join("a")).unwrap();
    assert_eq!(names(&d), ["b"]);
    std::fs::rename(d.join("b"), mnt.join("moved")).unwrap();
    assert!(names(&d).is_empty());
    assert_eq!(names(&mnt), ["d", "lost+found", "moved"]);
    testkit::unmount(&mnt);
    assert!(daemon.wait().unwrap().success());
    e2fsck_clean(&img);
}

/// A filesystem with the casefold feature mounts read-write: its ordinary directories are
/// written as on any ext4, a directory flagged casefold (chattr +F) is read by exact case and
/// its names are never changed (EOPNOTSUPP: the driver does not fold or hash folded names),
/// and e2fsck finds nothing wrong afterwards.
#[test]
fn casefold_images_mount_and_only_casefolded_directories_refuse_name_changes() {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("casefold.img");
    let made = testkit::sh_output(&format!(
        "truncate -s 32M '{0}' && mke2fs -q -F -t ext4 -O casefold '{0}' && \
         debugfs -w -R 'mkdir /folded' '{0}' && \
         debugfs -w -R 'set_inode_field /folded flags 0x40080000' '{0}'",
        img.display()
    ));
    if !made.status.success() {
        return testkit::skip("this mke2fs cannot make casefold filesystems");
    }
    let mnt = dir.path().join("mnt");
    {
        let _m = mount(&img, &mnt, &["rw+"]);
        std::fs::create_dir(mnt.join("plain")).unwrap();
        std::fs::write(mnt.join("plain/File"), "data\n").unwrap();
        std::fs::rename(mnt.join("plain/File"), mnt.join("plain/Renamed")).unwrap();
        let err = std::fs::write(mnt.join("folded/new"), "x").unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::EOPNOTSUPP));
        let err = std::fs::create_dir(mnt.join("folded/sub")).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::EOPNOTSUPP));
        let err = std::fs::rename(mnt.join("plain/Renamed"), mnt.join("folded/in")).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::EOPNOTSUPP));
    }
    wait_for_daemon_exit("fuseext2", &mnt);
    e2fsck_clean(&img);
    let cat = sh(&format!(
        "debugfs -R 'cat /plain/Renamed' '{}' 2>/dev/null",
        img.display()
    ));
    assert_eq!(cat, "data\n");
}
