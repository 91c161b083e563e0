//! libfuse's and fuse2fs's option habits, second batch, through real mounts of `fuseext2`
//! (and `fusefatfs` for the shared ones): `auto_unmount`, `noforget`, `negative_timeout=`,
//! `offset=`, `norecovery`, `errors=continue|remount-ro|panic`; and unknown options still
//! fail loudly.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;
use testkit::{is_mounted, lazy_unmount, sh, wait_for_daemon_exit, wait_until, MountGuard};

const BIN: &str = env!("CARGO_BIN_EXE_fuseext2");
const FAT: &str = env!("CARGO_BIN_EXE_fusefatfs");

fn run(image: &Path, dir: &Path, options: &[&str]) -> Output {
    std::fs::create_dir_all(dir).unwrap();
    testkit::run_daemon(BIN, options, image, dir)
}

/// `fuseext2 -o OPTS IMAGE DIR`, which must succeed; the guard unmounts and waits for the
/// daemon.
fn mount(image: &Path, dir: &Path, options: &[&str]) -> MountGuard {
    let out = run(image, dir, options);
    assert!(
        out.status.success(),
        "fuseext2 {options:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(is_mounted(dir));
    MountGuard::served_by("fuseext2", dir)
}

/// A fresh ext4 image of 16 MiB in `dir`, made by mke2fs from the tree `files` (path, text).
/// Runs `fuseext2 -d [-o OPTIONS] IMG MNT` in the foreground, its request log in `log`,
/// until the mount is there.
fn foreground_logged(img: &Path, mnt: &Path, options: &str, log: &Path) -> std::process::Child {
    let mut cmd = Command::new(BIN);
    cmd.arg("-d");
    if !options.is_empty() {
        cmd.arg("-o").arg(options);
    }
    let child = cmd
        .arg(img)
        .arg(mnt)
        .stdin(Stdio::null())
        .stderr(std::fs::File::create(log).unwrap())
        .spawn()
        .unwrap();
    testkit::wait_until_mounted(mnt, Duration::from_secs(10));
    child
}

fn ext_image(dir: &Path, files: &[(&str, &str)]) -> PathBuf {
    let tree = dir.join("tree");
    std::fs::create_dir_all(&tree).unwrap();
    for (path, text) in files {
        let p = tree.join(path);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    }
    let img = dir.join("ext.img");
    sh(&format!(
        "truncate -s 16M '{}' && mke2fs -q -F -t ext4 -b 4096 -d '{}' '{}'",
        img.display(),
        tree.display(),
        img.display()
    ));
    img
}

fn debugfs_cat(img: &Path, path: &str) -> String {
    sh(&format!(
        "debugfs -R 'cat {path}' '{}' 2>/dev/null",
        img.display()
    ))
}

/// The pid of the `program` daemon serving `dir` (its argv holds `dir`).
fn daemon_pid(program: &str, dir: &Path) -> Option<u32> {
    let dir = dir.as_os_str().as_encoded_bytes();
    std::fs::read_dir("/proc").ok()?.flatten().find_map(|p| {
        let pid: u32 = p.file_name().to_str()?.parse().ok()?;
        let cmdline = std::fs::read(p.path().join("cmdline")).ok()?;
        let mut args = cmdline.split(|&b| b == 0);
        let argv0 = args.next()?;
        (argv0.ends_with(program.as_bytes()) && args.any(|a| a == dir)).then_some(pid)
    })
}

#[test]
fn auto_unmount_takes_the_mount_down_when_the_daemon_is_killed() {
    let dir = tempfile::tempdir().unwrap();
    let img = ext_image(dir.path(), &[("f", "data\n")]);
    let mnt = dir.path().join("mnt");
    let guard = mount(&img, &mnt, &["rw,auto_unmount"]);
    assert_eq!(std::fs::read_to_string(mnt.join("f")).unwrap(), "data\n");
    let pid = daemon_pid("fuseext2", &mnt).expect("the daemon's pid");
    sh(&format!("kill -9 {pid}"));
    // fusermount3 sees the daemon's socket close and unmounts.
    wait_until(
        "the mount to go after kill -9",
        Duration::from_secs(5),
        || !is_mounted(&mnt),
    );
    guard.forget();
    wait_for_daemon_exit("fuseext2", &mnt);
    // The image is usable again (no stale lock, no dead mount in the way).
    let guard = mount(&img, &mnt, &["rw,auto_unmount"]);
    std::fs::write(mnt.join("g"), "again\n").unwrap();
    // A plain unmount still ends the daemon, as without the option.
    guard.unmount();
    assert_eq!(debugfs_cat(&img, "/g"), "again\n");
    // fusefatfs takes it too.
    let fat = dir.path().join("fat.img");
    sh(&format!("mkfs.fat -C '{}' 4096 >/dev/null", fat.display()));
    let fmnt = dir.path().join("fmnt");
    std::fs::create_dir_all(&fmnt).unwrap();
    let out = testkit::run_daemon(FAT, &["rw+,auto_unmount"], &fat, &fmnt);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let pid = daemon_pid("fusefatfs", &fmnt).expect("the daemon's pid");
    sh(&format!("kill -9 {pid}"));
    wait_until(
        "the fusefatfs mount to go after kill -9",
        Duration::from_secs(5),
        || !is_mounted(&fmnt),
    );
}

#[test]
fn noforget_is_accepted_and_the_mount_works() {
    let dir = tempfile::tempdir().unwrap();
    let img = ext_image(dir.path(), &[("d/f", "x")]);
    let mnt = dir.path().join("mnt");
    let guard = mount(&img, &mnt, &["rw,noforget"]);
    for i in 0..50 {
        std::fs::write(mnt.join(format!("n{i}")), "y").unwrap();
    }
    // Drop the kernel's dentries and inodes: forgets reach the daemon, which goes on.
    let _ = std::fs::write("/proc/sys/vm/drop_caches", "2");
    assert_eq!(std::fs::read_dir(&mnt).unwrap().count(), 50 + 2);
    assert_eq!(std::fs::read_to_string(mnt.join("d/f")).unwrap(), "x");
    guard.unmount();
    assert_eq!(debugfs_cat(&img, "/n49"), "y");
}

/// With `-d`, the daemon's stderr (to a file) shows each request it served.
fn lookups_of_a_missing_name(options: &str) -> usize {
    let dir = tempfile::tempdir().unwrap();
    let img = ext_image(dir.path(), &[]);
    let mnt = dir.path().join("mnt");
    std::fs::create_dir_all(&mnt).unwrap();
    let log = dir.path().join("log");
    let mut child = foreground_logged(&img, &mnt, options, &log);
    let guard = MountGuard::new(&mnt);
    for _ in 0..3 {
        assert!(std::fs::metadata(mnt.join("missing")).is_err());
    }
    guard.unmount();
    child.wait().unwrap();
    std::fs::read_to_string(&log)
        .unwrap()
        .lines()
        .filter(|l| l.contains("lookup(1, \"missing\")"))
        .count()
}

#[test]
fn negative_timeout_lets_the_kernel_remember_missing_names() {
    assert_eq!(
        lookups_of_a_missing_name("negative_timeout=60"),
        1,
        "the kernel remembers the absence"
    );
    assert_eq!(
        lookups_of_a_missing_name(""),
        3,
        "without the option every stat asks"
    );
    // A name that appears is found at once: creating it replaces the negative entry.
    let dir = tempfile::tempdir().unwrap();
    let img = ext_image(dir.path(), &[]);
    let mnt = dir.path().join("mnt");
    let guard = mount(&img, &mnt, &["rw,negative_timeout=60"]);
    assert!(std::fs::metadata(mnt.join("later")).is_err());
    std::fs::write(mnt.join("later"), "now").unwrap();
    assert_eq!(std::fs::read_to_string(mnt.join("later")).unwrap(), "now");
    guard.unmount();
}

#[test]
fn offset_says_where_the_filesystem_starts() {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("off.img");
    // 1 MiB of something else, then the filesystem (mke2fs -E offset=, as fuse2fs expects).
    sh(&format!(
        "truncate -s 20M '{0}' && mke2fs -q -F -t ext4 -E offset=1048576 '{0}' 16M",
        img.display()
    ));
    let mnt = dir.path().join("mnt");
    // Without offset= there is nothing at the start of the image.
    let out = run(&img, &mnt, &[]);
    assert_eq!(out.status.code(), Some(1));
    let guard = mount(&img, &mnt, &["rw,offset=1048576"]);
    assert!(mnt.join("lost+found").is_dir());
    std::fs::write(mnt.join("hello"), "at an offset\n").unwrap();
    guard.unmount();
    let inner = dir.path().join("inner.img");
    sh(&format!(
        "dd if='{}' of='{}' bs=1M skip=1 status=none",
        img.display(),
        inner.display()
    ));
    assert_eq!(debugfs_cat(&inner, "/hello"), "at an offset\n");
    testkit::e2fsck_clean(&inner);
    // Refused with a message: past the end, or together with part=.
    let out = run(&img, &mnt, &["offset=999999999"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not inside the image"));
    let out = run(&img, &mnt, &["offset=1048576,part=1"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("part="));
    let out = run(&img, &mnt, &["offset=1M"]);
    assert_eq!(
        out.status.code(),
        Some(2),
        "a malformed value is a usage error"
    );
}

#[test]
fn norecovery_leaves_the_journal_unreplayed() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().display().to_string();
    // A file's block gets a new version logged in the journal but not written in place.
    sh(&format!(
        "set -e; cd '{d}'; mkdir s; python3 -c \"open('s/f','w').write('OLD'*1365+'O')\"; \
         python3 -c \"open('new','wb').write(b'NEW'*1365+b'N')\"; truncate -s 64M j.img; \
         mke2fs -q -F -t ext4 -b 4096 -d s j.img; \
         B=$(debugfs -R 'blocks /f' j.img 2>/dev/null | tr -d ' \\n'); \
         printf 'jo\\njw -b %s {d}/new\\njc\\n' \"$B\" > cmds; \
         debugfs -w -f cmds j.img >/dev/null 2>&1"
    ));
    let img = dir.path().join("j.img");
    assert!(sh(&format!("dumpe2fs -h '{}' 2>/dev/null", img.display())).contains("needs_recovery"));
    let before = std::fs::read(&img).unwrap();
    let mnt = dir.path().join("mnt");
    {
        let guard = mount(&img, &mnt, &["ro,norecovery"]);
        let content = std::fs::read_to_string(mnt.join("f")).unwrap();
        assert!(
            content.starts_with("OLDOLD"),
            "not replayed: the data in place"
        );
        guard.unmount();
    }
    {
        // Without it, the journal is replayed in memory (the default).
        let guard = mount(&img, &mnt, &[]);
        let content = std::fs::read_to_string(mnt.join("f")).unwrap();
        assert!(content.starts_with("NEWNEW"), "replayed");
        guard.unmount();
    }
    // Read-write with recovery suppressed is refused (as the kernel and fuse2fs do).
    let out = run(&img, &mnt, &["rw,norecovery"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("needs recovery"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        std::fs::read(&img).unwrap() == before,
        "the image is untouched"
    );
    // A clean journal: norecovery changes nothing, read-write included.
    let clean = ext_image(&dir.path().join("c"), &[]);
    let guard = mount(&clean, &mnt, &["rw,norecovery"]);
    std::fs::write(mnt.join("x"), "1").unwrap();
    guard.unmount();
    assert_eq!(debugfs_cat(&clean, "/x"), "1");
}

/// An ext4 image whose directory /d has a bad checksum: it mounts, and any use of /d
/// finds the corruption (EUCLEAN); the rest of the filesystem is fine.
fn corrupt_dir_image(dir: &Path) -> PathBuf {
    let img = ext_image(dir, &[("d/a", "a\n"), ("d/b", "b\n"), ("ok", "ok\n")]);
    let block: u64 = sh(&format!(
        "debugfs -R 'blocks /d' '{}' 2>/dev/null",
        img.display()
    ))
    .trim()
    .parse()
    .unwrap();
    sh(&format!(
        "printf XXXXXXXX | dd of='{}' bs=1 seek={} conv=notrunc status=none",
        img.display(),
        block * 4096 + 40
    ));
    img
}

fn errno_of(e: std::io::Error) -> i32 {
    e.raw_os_error().unwrap_or(0)
}

const EUCLEAN: i32 = 117;
const EROFS: i32 = 30;
const ENOTCONN: i32 = 107;
const ECONNABORTED: i32 = 103;

#[test]
fn errors_continue_remount_ro_and_panic() {
    let dir = tempfile::tempdir().unwrap();
    let mnt = dir.path().join("mnt");
    for (behavior, sub) in [("continue", "c"), ("", "n")] {
        let img = corrupt_dir_image(&dir.path().join(sub));
        let options = if behavior.is_empty() {
            "rw".to_string()
        } else {
            format!("rw,errors={behavior}")
        };
        let guard = mount(&img, &mnt, &[&options]);
        let e = std::fs::read_dir(mnt.join("d")).unwrap_err();
        assert_eq!(errno_of(e), EUCLEAN);
        std::fs::write(mnt.join("new"), "written\n").expect("continue: changes go on");
        guard.unmount();
        assert_eq!(debugfs_cat(&img, "/new"), "written\n");
    }
    // remount-ro: the corruption fails its operation; every later change gets EROFS, reads
    // go on.
    let img = corrupt_dir_image(&dir.path().join("r"));
    let guard = mount(&img, &mnt, &["rw,errors=remount-ro"]);
    std::fs::write(mnt.join("before"), "1").expect("writable until an error");
    let e = std::fs::read_dir(mnt.join("d")).unwrap_err();
    assert_eq!(errno_of(e), EUCLEAN);
    let e = std::fs::write(mnt.join("after"), "2").unwrap_err();
    assert_eq!(errno_of(e), EROFS);
    let e = std::fs::create_dir(mnt.join("dir")).unwrap_err();
    assert_eq!(errno_of(e), EROFS);
    let e = std::fs::OpenOptions::new()
        .append(true)
        .open(mnt.join("before"))
        .unwrap_err();
    assert_eq!(errno_of(e), EROFS);
    assert_eq!(std::fs::read_to_string(mnt.join("ok")).unwrap(), "ok\n");
    guard.unmount();
    assert_eq!(debugfs_cat(&img, "/before"), "1");
    // panic: the daemon aborts at the first corruption, leaving a dead mount.
    let img = corrupt_dir_image(&dir.path().join("p"));
    let guard = mount(&img, &mnt, &["rw,errors=panic"]);
    let e = std::fs::read_dir(mnt.join("d")).unwrap_err();
    let code = errno_of(e);
    assert!(
        code == ECONNABORTED || code == ENOTCONN,
        "the daemon is gone: {code}"
    );
    wait_for_daemon_exit("fuseext2", &mnt);
    let e = std::fs::metadata(mnt.join("ok")).unwrap_err();
    assert_eq!(errno_of(e), ENOTCONN);
    guard.forget();
    lazy_unmount(&mnt);
}

#[test]
fn unknown_and_malformed_options_still_fail_loudly() {
    let dir = tempfile::tempdir().unwrap();
    let img = ext_image(dir.path(), &[]);
    let mnt = dir.path().join("mnt");
    for (option, says) in [
        ("no_such_option", "'no_such_option': unknown option"),
        ("errors=reboot", "continue, remount-ro or panic"),
        ("auto_unmount=1", "takes no value"),
        ("negative_timeout=soon", "not a number of seconds"),
        ("norecovery=yes", "takes no value"),
    ] {
        let out = run(&img, &mnt, &[option]);
        assert_eq!(out.status.code(), Some(2), "{option}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(says), "{option}: {stderr}");
        assert!(!is_mounted(&mnt));
    }
}

/// `-d` prints one line per request: `op(node, args) -> ok ...|ERRNO pid=N uid=N`, modes in
/// octal, so `grep '^mkdir('` or `grep ' -> ENOENT '` find requests.
#[test]
fn debug_prints_one_greppable_line_per_request() {
    let dir = tempfile::tempdir().unwrap();
    let img = ext_image(dir.path(), &[]);
    let mnt = dir.path().join("mnt");
    std::fs::create_dir_all(&mnt).unwrap();
    let log = dir.path().join("log");
    let mut child = foreground_logged(&img, &mnt, "rw", &log);
    let guard = MountGuard::new(&mnt);
    sh(&format!(
        "cd '{}' && umask 022 && mkdir d && echo hi > d/f && chmod 640 d/f && \
         ! stat missing 2>/dev/null",
        mnt.display()
    ));
    guard.unmount();
    child.wait().unwrap();
    let text = std::fs::read_to_string(&log).unwrap();
    let line = |prefix: &str| -> String {
        text.lines()
            .find(|l| l.starts_with(prefix))
            .unwrap_or_else(|| panic!("no line starting {prefix:?}:\n{text}"))
            .to_string()
    };
    let mkdir = line("mkdir(1, \"d\", 0");
    assert!(mkdir.contains(" -> ok ino="), "{mkdir}");
    assert!(mkdir.contains(" mode=040755 "), "{mkdir}");
    assert!(
        mkdir.contains(" pid=") && mkdir.ends_with(" uid=0"),
        "{mkdir}"
    );
    let create = line("create(");
    assert!(create.contains("\"f\", 0"), "{create}");
    assert!(create.contains(" mode=0100644 "), "{create}");
    let setattr = line("setattr(");
    assert!(setattr.contains("mode=0"), "{setattr}");
    assert!(setattr.contains(" mode=0100640 "), "{setattr}");
    let missing = line("lookup(1, \"missing\")");
    assert!(missing.contains(" -> ENOENT pid="), "{missing}");
    assert!(line("init").starts_with("init -> ok"));
    assert!(line("write(").contains(" -> ok 3 bytes "), "{text}");
    // Nothing of Rust's Debug form is left.
    assert!(!text.contains("Ok(") && !text.contains("Errno("), "{text}");
}
