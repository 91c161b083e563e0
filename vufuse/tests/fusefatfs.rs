//! `fusefatfs` through the real kernel FUSE, checked with diff, fsck.fat and mtools.

use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;
use testkit::{
    fsck_fat_clean, is_mounted, sh, wait_for_daemon_exit, wait_until_mounted, MountGuard,
};

const BIN: &str = env!("CARGO_BIN_EXE_fusefatfs");

fn run_daemon(image: &Path, dir: &Path, options: &[&str]) -> Output {
    testkit::run_daemon(BIN, options, image, dir)
}

/// Runs `fusefatfs -o OPTS IMAGE DIR` (daemonizing) and checks that the mount is live when
/// it returns; the guard unmounts it when dropped, and `unmount()` also waits for the daemon,
/// which writes the volume back after the kernel unmounts.
fn mount(image: &Path, dir: &Path, options: &[&str]) -> MountGuard {
    testkit::mount_daemon(BIN, options, image, dir)
}

fn sample_tree(root: &Path, big_mib: usize) {
    sh(&format!(
        "set -e; cd '{r}'; mkdir -p 'Long Directory Name/nested/deeper' empty_dir; \
         echo hello > README.TXT; echo lower > lower.txt; echo mixed > MixedCase.Txt; : > empty; \
         : > 'Long Directory Name/empty file.bin'; \
         printf 'unicode\\n' > 'Long Directory Name/nested/ünïcödé ñame.txt'; \
         for i in $(seq 1 30); do echo $i > \"Long Directory Name/nested/deeper/file $i.dat\"; done; \
         head -c {big}M /dev/urandom > 'Long Directory Name/big.bin'",
        r = root.display(),
        big = big_mib
    ));
}

#[test]
fn mounted_tree_equals_the_mcopy_source_on_fat12_16_32() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    for (bits, mib, big) in [(12, 8, 2), (16, 64, 20), (32, 256, 100)] {
        let tree = src.join(format!("t{bits}"));
        std::fs::create_dir_all(&tree).unwrap();
        sample_tree(&tree, big);
        let img = dir.path().join(format!("fat{bits}.img"));
        sh(&format!(
            "truncate -s {mib}M '{0}' && mkfs.fat -F {bits} '{0}' >/dev/null && cd '{1}' && mcopy -s -i '{0}' ./* ::/",
            img.display(),
            tree.display()
        ));
        let mnt = dir.path().join(format!("mnt{bits}"));
        let m = mount(&img, &mnt, &[]);
        sh(&format!("diff -r '{}' '{}'", tree.display(), mnt.display()));
        // Case-insensitive lookup that preserves case.
        assert_eq!(
            std::fs::read_to_string(mnt.join("mixedcase.txt")).unwrap(),
            "mixed\n"
        );
        let listing = sh(&format!("ls '{}'", mnt.display()));
        assert!(listing.contains("MixedCase.Txt"), "{listing}");
        m.unmount();
    }
}

#[test]
fn writes_through_the_mount_pass_fsck_and_mtools_reads_them() {
    let dir = tempfile::tempdir().unwrap();
    let tree = dir.path().join("tree");
    std::fs::create_dir_all(&tree).unwrap();
    sample_tree(&tree, 3);
    let img = dir.path().join("rw.img");
    sh(&format!(
        "truncate -s 64M '{0}' && mkfs.fat -F 32 -n RWTEST '{0}' >/dev/null",
        img.display()
    ));
    let mnt = dir.path().join("mnt");
    let model = dir.path().join("model");
    let m = mount(&img, &mnt, &["rw+"]);
    // The same operations on the mount and on a plain directory (the model).
    for root in [&mnt, &model] {
        sh(&format!(
            "set -e; mkdir -p '{r}'; cd '{r}'; cp -r '{t}/.' .; \
             printf 'PATCH' | dd of='Long Directory Name/big.bin' bs=1 seek=1000 conv=notrunc status=none; \
             truncate -s 100 'Long Directory Name/nested/deeper/file 7.dat'; \
             truncate -s 5000 lower.txt; \
             mv 'Long Directory Name/nested/deeper/file 8.dat' 'moved to top.dat'; \
             mv 'Long Directory Name/nested' 'Renamed Nested'; \
             rm 'Renamed Nested/deeper/file 9.dat'; rmdir empty_dir; \
             echo appended >> README.TXT",
            r = root.display(),
            t = tree.display()
        ));
    }
    sh(&format!(
        "diff -r '{}' '{}'",
        model.display(),
        mnt.display()
    ));
    m.unmount();
    fsck_fat_clean(&img);
    let out = dir.path().join("out");
    std::fs::create_dir_all(&out).unwrap();
    sh(&format!(
        "mcopy -s -n -i '{}' ::/ '{}/'",
        img.display(),
        out.display()
    ));
    sh(&format!(
        "diff -r '{}' '{}'",
        model.display(),
        out.display()
    ));
}

#[test]
fn read_only_by_default_refuses_writes_and_keeps_the_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("ro.img");
    sh(&format!("truncate -s 16M '{0}' && mkfs.fat '{0}' >/dev/null && echo x | mcopy -i '{0}' - ::/file.txt", img.display()));
    let before = std::fs::read(&img).unwrap();
    let mnt = dir.path().join("mnt");
    // Plain `rw` without `force` stays read-only too, as in the C fusefatfs.
    for options in [&[][..], &["rw"][..]] {
        let m = mount(&img, &mnt, options);
        for attempt in [
            std::fs::write(mnt.join("new.txt"), "x").err(),
            std::fs::create_dir(mnt.join("d")).err(),
            std::fs::remove_file(mnt.join("file.txt")).err(),
            std::fs::OpenOptions::new()
                .write(true)
                .open(mnt.join("file.txt"))
                .err(),
            std::fs::rename(mnt.join("file.txt"), mnt.join("f2.txt")).err(),
        ] {
            let e = attempt.expect("a write on a read-only mount succeeded");
            assert_eq!(e.raw_os_error(), Some(libc::EROFS), "{e}");
        }
        m.unmount();
    }
    assert!(
        std::fs::read(&img).unwrap() == before,
        "a read-only mount changed the image"
    );
}

#[test]
fn partitions_are_chosen_by_number_or_by_content_and_a_full_one_gives_enospc() {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("disk.img");
    sh(&format!(
        "truncate -s 64M '{0}' && printf 'label: dos\\n,16M,83\\n,8M,c\\n,,83\\n' | sfdisk -q '{0}'",
        img.display()
    ));
    let json: serde_json::Value =
        serde_json::from_str(&sh(&format!("sfdisk --json '{}'", img.display()))).unwrap();
    let p2 = &json["partitiontable"]["partitions"][1];
    let (start, size) = (p2["start"].as_u64().unwrap(), p2["size"].as_u64().unwrap());
    // Format partition 2 in place, through mtools' offset syntax.
    let part = dir.path().join("p2.img");
    sh(&format!(
        "truncate -s {} '{}' && mkfs.fat -n PARTTWO '{}' >/dev/null",
        size * 512,
        part.display(),
        part.display()
    ));
    sh(&format!(
        "dd if='{}' of='{}' bs=512 seek={start} conv=notrunc status=none",
        part.display(),
        img.display()
    ));

    let mnt = dir.path().join("mnt");
    // No part=: the only FAT partition is taken.
    let m = mount(&img, &mnt, &["rw+"]);
    let err = sh(&format!(
        "dd if=/dev/zero of='{}/fill' bs=64k 2>&1 || true",
        mnt.display()
    ));
    assert!(err.contains("No space left on device"), "{err}");
    sh(&format!(
        "echo more > '{}/small' 2>/dev/null || true",
        mnt.display()
    ));
    m.unmount();
    sh(&format!(
        "dd if='{}' of='{}' bs=512 skip={start} count={size} status=none",
        img.display(),
        part.display()
    ));
    fsck_fat_clean(&part);

    // part=3 holds no FAT filesystem; part=9 does not exist: clear errors, exit 1.
    for (option, needle) in [("part=3", "boot sector"), ("part=9", "no partition 9")] {
        let out = run_daemon(&img, &mnt, &[option]);
        assert_eq!(out.status.code(), Some(1), "{option}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(needle), "{option}: {stderr}");
        assert!(!is_mounted(&mnt));
    }
    let m = mount(&img, &mnt, &["part=2"]);
    assert!(mnt.join("fill").exists());
    m.unmount();
}

#[test]
fn bad_images_fail_at_mount_or_with_eio_and_the_daemon_keeps_serving() {
    let dir = tempfile::tempdir().unwrap();
    let mnt = dir.path().join("mnt");
    std::fs::create_dir_all(&mnt).unwrap();
    let img = dir.path().join("good.img");
    sh(&format!(
        "truncate -s 16M '{0}' && mkfs.fat -F 16 '{0}' >/dev/null",
        img.display()
    ));
    // Truncated image and zeroed boot sector: refused at mount with a message.
    let truncated = dir.path().join("truncated.img");
    sh(&format!(
        "cp '{}' '{1}' && truncate -s 1M '{1}'",
        img.display(),
        truncated.display()
    ));
    let zeroed = dir.path().join("zeroed.img");
    sh(&format!(
        "cp '{}' '{1}' && dd if=/dev/zero of='{1}' bs=512 count=1 conv=notrunc status=none",
        img.display(),
        zeroed.display()
    ));
    for (bad, needle) in [(&truncated, "truncated"), (&zeroed, "FAT")] {
        let out = run_daemon(bad, &mnt, &[]);
        assert_eq!(out.status.code(), Some(1));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(needle), "{stderr}");
        assert!(!is_mounted(&mnt));
    }
    // A FAT loop in one file: EIO for it, the rest still served.
    sh(&format!(
        "head -c 20000 /dev/urandom > '{d}/victim' && echo fine > '{d}/ok' && mcopy -i '{i}' '{d}/victim' ::/victim && mcopy -i '{i}' '{d}/ok' ::/ok",
        d = dir.path().display(),
        i = img.display()
    ));
    // victim starts at cluster 2 of this FAT16 volume: make cluster 3 point back at 2.
    let boot = std::fs::read(&img).unwrap();
    let reserved = u16::from_le_bytes([boot[14], boot[15]]) as u64;
    let fat_offset = reserved * 512;
    sh(&format!(
        "printf '\\002\\000' | dd of='{}' bs=1 seek={} conv=notrunc status=none",
        img.display(),
        fat_offset + 6
    ));
    let m = mount(&img, &mnt, &[]);
    let err = std::fs::read(mnt.join("victim")).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EIO), "{err}");
    assert_eq!(std::fs::read_to_string(mnt.join("ok")).unwrap(), "fine\n");
    m.unmount();
}

#[test]
fn mount_dot_fuse3_argument_order_works() {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("fstab.img");
    sh(&format!("truncate -s 16M '{0}' && mkfs.fat '{0}' >/dev/null && echo via-mount | mcopy -i '{0}' - ::/hello.txt", img.display()));
    let mnt = dir.path().join("mnt");
    std::fs::create_dir_all(&mnt).unwrap();
    let bin_dir = Path::new(BIN).parent().unwrap();
    // `mount -t fuse.fusefatfs IMAGE DIR -o OPTS` and /etc/fstab run mount.fuse3,
    // which runs "fusefatfs IMAGE DIR -o OPTS" from PATH; call it the same way.
    let path = format!(
        "{}:{}",
        bin_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let out = Command::new("mount.fuse3")
        .env("PATH", path)
        .arg(&img)
        .arg(&mnt)
        .args(["-t", "fusefatfs", "-o", "ro,allow_other"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "mount.fuse3: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let m = MountGuard::served_by("fusefatfs", &mnt);
    assert_eq!(
        std::fs::read_to_string(mnt.join("hello.txt")).unwrap(),
        "via-mount\n"
    );
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap();
    assert!(
        mounts
            .lines()
            .any(|l| l.contains(mnt.to_str().unwrap()) && l.contains("fuse.fusefatfs")),
        "{mounts}"
    );
    m.unmount();
}

#[test]
fn ownership_permissions_times_and_label_follow_the_options() {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("opts.img");
    sh(&format!("truncate -s 16M '{0}' && mkfs.fat -n CARDLABEL '{0}' >/dev/null && echo x | mcopy -i '{0}' - ::/f.txt && mmd -i '{0}' ::/d", img.display()));
    let mnt = dir.path().join("mnt");
    let m = mount(&img, &mnt, &["rw+,uid=1234,gid=567,umask=027"]);
    let stat = sh(&format!(
        "stat -c '%u %g %a' '{0}/f.txt' '{0}/d'",
        mnt.display()
    ));
    assert_eq!(stat, "1234 567 640\n1234 567 750\n");
    // The volume label names the mount.
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap();
    let line = mounts
        .lines()
        .find(|l| l.contains(mnt.to_str().unwrap()))
        .unwrap();
    assert!(line.starts_with("CARDLABEL "), "{line}");
    // mtime and atime are kept (2-second and 1-day resolution on FAT).
    sh(&format!("touch -m -d '2021-06-15 10:20:31 UTC' '{0}/f.txt' && touch -a -d '2022-01-02 03:04:05 UTC' '{0}/f.txt'", mnt.display()));
    // chmod a-w maps to the read-only attribute.
    sh(&format!("chmod a-w '{}/f.txt'", mnt.display()));
    m.unmount();
    let m = mount(&img, &mnt, &[]);
    let times = sh(&format!(
        "TZ=UTC stat -c '%y|%x|%a' '{}/f.txt'",
        mnt.display()
    ));
    assert!(times.starts_with("2021-06-15 10:20:30"), "{times}");
    assert!(times.contains("|2022-01-02 00:00:00"), "{times}");
    assert!(times.trim_end().ends_with("|444"), "{times}");
    m.unmount();
    let attrs = sh(&format!("mattrib -i '{}' ::/f.txt", img.display()));
    assert!(attrs.contains('R'), "{attrs}");
}

#[test]
fn sigterm_flushes_and_unmounts_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("sig.img");
    // 64 MiB: mtools cannot read FAT32 volumes as small as 32 MiB.
    sh(&format!(
        "truncate -s 64M '{0}' && mkfs.fat -F 32 '{0}' >/dev/null",
        img.display()
    ));
    let mnt = dir.path().join("mnt");
    std::fs::create_dir_all(&mnt).unwrap();
    let mut child = Command::new(BIN)
        .args(["-f", "-o", "rw+"])
        .arg(&img)
        .arg(&mnt)
        .spawn()
        .unwrap();
    wait_until_mounted(&mnt, Duration::from_secs(10));
    let guard = MountGuard::served_by("fusefatfs", &mnt);
    sh(&format!("mkdir '{0}/d' && head -c 3000000 /dev/urandom > '{0}/d/data' && cp '{0}/d/data' '{1}/copy'", mnt.display(), dir.path().display()));
    send_sigterm(child.id());
    let status = child.wait().unwrap();
    assert!(status.success(), "{status}");
    assert!(!is_mounted(&mnt), "SIGTERM must unmount");
    guard.forget();
    fsck_fat_clean(&img);
    let out = dir.path().join("out");
    sh(&format!(
        "mcopy -i '{}' ::/d/data '{}'",
        img.display(),
        out.display()
    ));
    assert!(std::fs::read(&out).unwrap() == std::fs::read(dir.path().join("copy")).unwrap());
}

/// Sends SIGTERM with kill(1) (no unsafe libc call in tests).
fn send_sigterm(pid: u32) {
    sh(&format!("kill -TERM {pid}"));
}

#[test]
fn the_image_is_consistent_as_soon_as_the_unmount_returns() {
    // Users run `fusermount3 -u mnt && fsck.fat img` without waiting for the
    // daemon to exit: every operation commits its FAT changes when it ends.
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("now.img");
    sh(&format!(
        "truncate -s 64M '{0}' && mkfs.fat -F 32 '{0}' >/dev/null",
        img.display()
    ));
    let mnt = dir.path().join("mnt");
    for round in 0..3 {
        let m = mount(&img, &mnt, &["rw+"]);
        sh(&format!(
            "set -e; cd '{0}'; mkdir -p r{round}/a/b; head -c 700000 /dev/urandom > r{round}/a/b/f; \
             for i in $(seq 1 50); do echo $i > r{round}/n$i; done; rm r{round}/n7; mv r{round}/n8 r{round}/a/",
            mnt.display()
        ));
        let dir_path = m.dir().to_path_buf();
        m.forget();
        sh(&format!("fusermount3 -u '{}'", dir_path.display()));
        // No waiting for the daemon here.
        fsck_fat_clean(&img);
        let listing = sh(&format!("mdir -b -i '{}' ::/r{round}", img.display()));
        assert_eq!(listing.lines().count(), 49, "{listing}");
        wait_for_daemon_exit("fusefatfs", &dir_path);
    }
}

/// fusefatfs polls for requests by default (one serving thread loses nothing there: measured
/// with fat_bench.py) and `-o no_busy_poll` keeps two sleeping threads; both serve writes
/// that fsck.fat accepts, and an idle mount uses no CPU.
#[test]
fn polls_by_default_with_one_serving_thread() {
    for (options, polls) in [("rw+", true), ("rw+,no_busy_poll", false)] {
        let dir = tempfile::tempdir().unwrap();
        let img = dir.path().join("poll.img");
        sh(&format!(
            "truncate -s 32M '{0}' && mkfs.fat -F 16 '{0}' >/dev/null",
            img.display()
        ));
        let mnt = dir.path().join("mnt");
        std::fs::create_dir_all(&mnt).unwrap();
        let mut daemon = Command::new(BIN)
            .args(["-f", "-o", options])
            .arg(&img)
            .arg(&mnt)
            .spawn()
            .unwrap();
        wait_until_mounted(&mnt, Duration::from_secs(10));
        // Unmounts (lazily) if an assertion fails.
        let guard = MountGuard::new(&mnt);
        let out = sh(&format!(
            "cd '{}' && mkdir d && for i in $(seq 1 100); do echo $i > d/f$i; done && \
             cat d/f7 d/f100 && ls d | wc -l",
            mnt.display()
        ));
        assert_eq!(out, "7\n100\n100\n", "{options}");
        testkit::assert_serving(daemon.id(), polls, options);
        guard.unmount();
        assert!(daemon.wait().unwrap().success(), "{options}");
        fsck_fat_clean(&img);
    }
}

/// FAT and exFAT keep no extended attributes: the first xattr request is answered ENOSYS,
/// the kernel then asks no more (it looked for security.capability before every write and
/// chown: three round trips per file of an untar) and tells callers EOPNOTSUPP itself.
#[test]
fn xattr_requests_stop_after_the_first_and_callers_see_eopnotsupp() {
    for (mkfs, name) in [("mkfs.fat -F 32", "fat.img"), ("mkfs.exfat", "exfat.img")] {
        let tool = mkfs.split(' ').next().unwrap();
        if Command::new(tool).arg("--help").output().is_err() {
            testkit::skip(&format!("{tool} is not installed"));
            continue;
        }
        let dir = tempfile::tempdir().unwrap();
        let img = dir.path().join(name);
        sh(&format!(
            "truncate -s 64M '{0}' && {mkfs} '{0}' >/dev/null",
            img.display()
        ));
        let mnt = dir.path().join("mnt");
        let daemon = testkit::spawn_logged(BIN, "rw+", &img, &mnt);
        let errors = sh(&format!(
            "cd '{}' && for i in $(seq 1 20); do for k in 1 2 3; do echo $k >> f$i; done; done; \
             getfattr -n user.x f1 2>&1; setfattr -n user.x -v 1 f1 2>&1; getfattr -d f1 2>&1; true",
            mnt.display()
        ));
        assert_eq!(
            errors.matches("Operation not supported").count(),
            3,
            "{name}: {errors}"
        );
        testkit::unmount(&mnt);
        let out = daemon.wait_with_output().unwrap();
        let log = String::from_utf8_lossy(&out.stderr);
        let xattr_requests: Vec<&str> = log.lines().filter(|l| l.contains("xattr(")).collect();
        assert!(
            xattr_requests.len() <= 4 && xattr_requests.iter().all(|l| l.contains("ENOSYS")),
            "{name}: {xattr_requests:#?}"
        );
        let writes = log.lines().filter(|l| l.starts_with("write(")).count();
        assert!(writes >= 60, "{name}: {writes} writes");
    }
}
