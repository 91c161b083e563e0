//! `fusefatfs` on exFAT and on VM image formats: the same daemon, told apart by the boot
//! sector and the image's magic; checked with fsck.exfat, fsck.fat, qemu-img and mtools.

use std::path::Path;
use testkit::{names, sh, MountGuard};

const BIN: &str = env!("CARGO_BIN_EXE_fusefatfs");

fn fuse_unavailable() -> Option<String> {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/fuse")
        .err()
        .map(|e| format!("cannot open /dev/fuse: {e}"))
}

fn tool_missing(tool: &str) -> bool {
    let found = std::env::var_os("PATH")
        .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(tool).is_file()))
        || Path::new("/sbin").join(tool).is_file();
    if !found {
        testkit::skip(&format!("{tool} is not installed (.ci/packages lists it)"));
    }
    !found
}

fn mount(image: &Path, dir: &Path, options: &str) -> MountGuard {
    std::fs::create_dir_all(dir).unwrap();
    testkit::mount_daemon(BIN, &[options], image, dir)
}

/// A tree written through the mount, then checked by the filesystem's own fsck and read
/// back after a remount.
fn write_and_check(image: &Path, mnt: &Path, fsck: &str) {
    let m = mount(image, mnt, "rw+");
    sh(&format!(
        "set -e; cd '{0}'; mkdir -p 'Docs/Nested dir'; echo hello > Docs/readme.txt; \
         printf 'ünïcödé 日本 🙂\\n' > 'Docs/Nested dir/naïve 日本 🙂.txt'; \
         head -c 3000000 /dev/urandom > big.bin; cp big.bin big.copy; mv big.copy Docs/; \
         echo x > gone; rm gone; touch -d 2020-02-02T12:00:00Z Docs/readme.txt",
        mnt.display()
    ));
    let before = sh(&format!(
        "cd '{}' && md5sum big.bin Docs/big.copy",
        mnt.display()
    ));
    m.unmount();
    sh(&format!("{fsck} '{}'", image.display()));
    let m = mount(image, mnt, "ro");
    let after = sh(&format!(
        "cd '{}' && md5sum big.bin Docs/big.copy",
        mnt.display()
    ));
    assert_eq!(before, after);
    assert_eq!(
        std::fs::read_to_string(mnt.join("Docs/Nested dir/naïve 日本 🙂.txt")).unwrap(),
        "ünïcödé 日本 🙂\n"
    );
    // Case-insensitive lookup through the up-case table, case kept in the listing.
    assert_eq!(
        std::fs::read_to_string(mnt.join("DOCS/README.TXT")).unwrap(),
        "hello\n"
    );
    let names: Vec<String> = std::fs::read_dir(mnt.join("Docs"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert!(names.contains(&"readme.txt".to_string()), "{names:?}");
    assert!(!mnt.join("gone").exists());
    m.unmount();
}

#[test]
fn exfat_made_by_mkfs_exfat_is_mounted_written_and_fsck_clean() {
    if let Some(reason) = fuse_unavailable() {
        return testkit::skip(&reason);
    }
    if tool_missing("mkfs.exfat") || tool_missing("fsck.exfat") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("card.img");
    sh(&format!(
        "truncate -s 64M '{0}' && mkfs.exfat -L SDXC '{0}' >/dev/null",
        img.display()
    ));
    let mnt = dir.path().join("mnt");
    write_and_check(&img, &mnt, "fsck.exfat -n");
    let fsname = {
        let m = mount(&img, &mnt, "ro");
        let line = sh(&format!("findmnt -n -o SOURCE,FSTYPE '{}'", mnt.display()));
        m.unmount();
        line
    };
    assert!(
        fsname.contains("SDXC") && fsname.contains("fuse.fusefatfs"),
        "{fsname}"
    );
}

#[test]
fn exfat_partitions_are_found_in_mbr_and_gpt_disks() {
    if let Some(reason) = fuse_unavailable() {
        return testkit::skip(&reason);
    }
    if tool_missing("mkfs.exfat") || tool_missing("fsck.exfat") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mnt = dir.path().join("mnt");
    let tables = [
        (
            "mbr",
            "label: dos\nstart=2048, size=65536, type=83\nstart=67584, type=7\n",
        ),
        (
            "gpt",
            "label: gpt\nstart=2048, size=65536, type=linux\n\
             start=67584, size=81920, type=EBD0A0A2-B9E5-4433-87C0-68B6B72699C7\n",
        ),
    ];
    for (label, table) in tables {
        let img = dir.path().join(format!("{label}.img"));
        let part = dir.path().join("p2.img");
        sh(&format!(
            "truncate -s 80M '{0}' && printf '{1}' | sfdisk -q '{0}' && \
             rm -f '{2}' && truncate -s 40M '{2}' && mkfs.exfat -L PART2 '{2}' >/dev/null && \
             dd if='{2}' of='{0}' bs=512 seek=67584 conv=notrunc status=none",
            img.display(),
            table.replace('\n', "\\n"),
            part.display()
        ));
        // The only exFAT partition is chosen without part=; part=2 names it too.
        for options in ["rw+", "rw+,part=2"] {
            let m = mount(&img, &mnt, options);
            std::fs::write(mnt.join("hello.txt"), label).unwrap();
            m.unmount();
        }
        sh(&format!(
            "dd if='{0}' of='{1}' bs=512 skip=67584 count=81920 status=none && fsck.exfat -n '{1}' >/dev/null",
            img.display(),
            part.display()
        ));
    }
}

#[test]
fn fat_inside_qcow2_and_vmdk_images_is_served_and_the_image_stays_valid() {
    if let Some(reason) = fuse_unavailable() {
        return testkit::skip(&reason);
    }
    if tool_missing("qemu-img") || tool_missing("mkfs.fat") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let raw = dir.path().join("fat.raw");
    sh(&format!(
        "truncate -s 32M '{0}' && mkfs.fat -F 16 -n VMDISK '{0}' >/dev/null",
        raw.display()
    ));
    let mnt = dir.path().join("mnt");
    for format in ["qcow2", "vmdk", "vdi"] {
        let img = dir.path().join(format!("disk.{format}"));
        sh(&format!(
            "qemu-img convert -f raw -O {format} '{}' '{}'",
            raw.display(),
            img.display()
        ));
        let m = mount(&img, &mnt, "rw+");
        std::fs::write(mnt.join("NOTE.TXT"), format).unwrap();
        m.unmount();
        sh(&format!("qemu-img check -f {format} '{}'", img.display()));
        let back = dir.path().join("back.raw");
        sh(&format!(
            "qemu-img convert -O raw '{}' '{}' && fsck.fat -n '{1}' >/dev/null && \
             mtype -i '{1}' ::/NOTE.TXT",
            img.display(),
            back.display()
        ));
        // format=raw serves the image file itself: no FAT there.
        std::fs::create_dir_all(&mnt).unwrap();
        let out = testkit::run_daemon(BIN, &["ro,format=raw"], &img, &mnt);
        assert!(!out.status.success(), "{format} served as raw");
    }
}

/// On FAT32 and exFAT the kernel keeps directory listings across opens (FOPEN_CACHE_DIR: the
/// image is this daemon's alone): a second listing of an unchanged directory asks the daemon
/// for nothing, and a name created, removed or renamed through the mount shows at once.
#[test]
fn fat_and_exfat_listings_stay_in_the_kernel_and_follow_changes() {
    if let Some(reason) = fuse_unavailable() {
        return testkit::skip(&reason);
    }
    for (mkfs, fsck) in [
        ("mkfs.fat -F 32", "fsck.fat -n"),
        ("mkfs.exfat", "fsck.exfat -n"),
    ] {
        let tool = mkfs.split(' ').next().unwrap();
        if tool_missing(tool) {
            continue;
        }
        let dir = tempfile::tempdir().unwrap();
        let img = dir.path().join("dirs.img");
        sh(&format!(
            "truncate -s 64M '{0}' && {mkfs} '{0}' >/dev/null",
            img.display()
        ));
        let mnt = dir.path().join("mnt");
        let daemon = testkit::spawn_logged(BIN, "rw+", &img, &mnt);
        let guard = MountGuard::new(&mnt);
        let d = mnt.join("d");
        std::fs::create_dir(&d).unwrap();
        std::fs::write(d.join("a"), "a").unwrap();
        std::fs::write(d.join("b"), "b").unwrap();
        assert_eq!(names(&d), ["a", "b"], "{mkfs}");
        // Missing names mark the log around the second listing.
        assert!(!mnt.join("MARK1").exists());
        assert_eq!(names(&d), ["a", "b"], "{mkfs}");
        assert!(!mnt.join("MARK2").exists());
        std::fs::write(d.join("c"), "c").unwrap();
        assert_eq!(names(&d), ["a", "b", "c"], "{mkfs}");
        std::fs::remove_file(d.join("a")).unwrap();
        assert_eq!(names(&d), ["b", "c"], "{mkfs}");
        std::fs::rename(d.join("b"), mnt.join("moved")).unwrap();
        assert_eq!(names(&d), ["c"], "{mkfs}");
        assert_eq!(names(&mnt), ["d", "moved"], "{mkfs}");
        guard.unmount();
        let out = daemon.wait_with_output().unwrap();
        assert!(out.status.success(), "{mkfs}");
        let log = String::from_utf8_lossy(&out.stderr);
        let at = |mark: &str| {
            log.find(&format!("\"{mark}\""))
                .unwrap_or_else(|| panic!("{mkfs}: no lookup of {mark} in the log"))
        };
        let listings = |text: &str| text.lines().filter(|l| l.starts_with("readdir")).count();
        assert!(listings(&log[..at("MARK1")]) > 0, "{mkfs}: {log}");
        let second = &log[at("MARK1")..at("MARK2")];
        assert_eq!(listings(second), 0, "{mkfs}: the second listing: {second}");
        sh(&format!("{fsck} '{}'", img.display()));
    }
}
