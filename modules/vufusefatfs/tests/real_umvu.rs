//! vufusefatfs.so under the real VUOS hypervisor: `vu_insmod vufuse`, then
//! `vumount -t vufusefatfs` loads this build (from `$HOME/.vu/modules`, which
//! umvu searches before its own directory). Skips where umvu is absent.

use fusehost::tools::{pattern, run, s, sparse_file};
use testkit::umvu;

#[test]
fn write_read_back_umount_then_fsck_outside() {
    let Some(env) = umvu::prologue(&["vufuse"], &["vufusefatfs"]) else {
        return;
    };
    let dir = env.dir();
    let img = dir.join("fat.img");
    sparse_file(&img, 64 << 20);
    run("mkfs.vfat", &["-F", "32", "-n", "UMVU", s(&img)]);
    let mnt = dir.join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let data = dir.join("data.bin");
    std::fs::write(&data, pattern(3 << 20, 5)).unwrap();

    // uid=4321 is an option only this module knows: ls -n proves which module served.
    let script = format!(
        "set -u
vu_insmod vufuse
vumount -t vufusefatfs -o rw+,uid=4321 {img} {mnt}
mkdir {mnt}/dir
cp {data} {mnt}/dir/data.bin
echo hello > {mnt}/hello.txt
mv {mnt}/hello.txt {mnt}/dir/greeting.txt
cmp {data} {mnt}/dir/data.bin && echo SAME-INSIDE
ls -ln {mnt}/dir
cat {mnt}/dir/greeting.txt
touch {mnt}/ro-probe 2>/dev/null && rm {mnt}/ro-probe
df {mnt}
vuumount {mnt}
",
        img = s(&img),
        mnt = s(&mnt),
        data = s(&data)
    );
    let (code, out) = env.run(&script, 120);
    assert_eq!(code, 0, "umvu failed:\n{out}");
    assert!(out.contains("SAME-INSIDE"), "{out}");
    assert!(out.contains("hello"), "{out}");
    assert!(
        out.lines()
            .any(|l| l.contains(" 4321 ") && l.ends_with("data.bin")),
        "not served by this module (uid=4321 missing):\n{out}"
    );

    testkit::fsck_fat_clean(&img);
    let copied = std::process::Command::new("mtype")
        .args(["-i", s(&img), "::/dir/data.bin"])
        .env("MTOOLS_SKIP_CHECK", "1")
        .output()
        .unwrap();
    assert!(copied.stdout == pattern(3 << 20, 5), "data differs outside");
    let listing = run("mdir", &["-b", "-i", s(&img), "::/dir"]);
    assert!(listing.contains("greeting.txt"), "{listing}");
}

#[test]
fn read_only_by_default_under_umvu() {
    let Some(env) = umvu::prologue(&["vufuse"], &["vufusefatfs"]) else {
        return;
    };
    let dir = env.dir();
    let img = dir.join("fat.img");
    sparse_file(&img, 16 << 20);
    run("mkfs.vfat", &["-n", "RO", s(&img)]);
    run("mcopy", &["-i", s(&img), "/etc/hostname", "::/host.txt"]);
    let before = std::fs::read(&img).unwrap();
    let mnt = dir.join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let script = format!(
        "vu_insmod vufuse
vumount -t vufusefatfs {img} {mnt}
cat {mnt}/host.txt
echo x > {mnt}/new.txt || echo WRITE-REFUSED
vuumount {mnt}
",
        img = s(&img),
        mnt = s(&mnt)
    );
    let (code, out) = env.run(&script, 60);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("WRITE-REFUSED"), "{out}");
    assert!(
        out.contains("Read-only file system"),
        "EROFS expected:\n{out}"
    );
    assert!(std::fs::read(&img).unwrap() == before);
}

#[test]
fn two_concurrent_mounts_under_umvu() {
    let Some(env) = umvu::prologue(&["vufuse"], &["vufusefatfs"]) else {
        return;
    };
    let dir = env.dir();
    let mut imgs = Vec::new();
    for name in ["a", "b"] {
        let img = dir.join(format!("{name}.img"));
        sparse_file(&img, 16 << 20);
        run("mkfs.vfat", &["-n", name, s(&img)]);
        std::fs::create_dir(dir.join(name)).unwrap();
        imgs.push(img);
    }
    let (a, b) = (dir.join("a"), dir.join("b"));
    let script = format!(
        "vu_insmod vufuse
vumount -t vufusefatfs -o rw+ {ia} {a}
vumount -t vufusefatfs -o rw+ {ib} {b}
for i in 1 2 3; do echo a$i > {a}/f$i; echo b$i > {b}/f$i; done
cat {a}/f2 {b}/f3
vuumount {a}
vuumount {b}
",
        ia = s(&imgs[0]),
        ib = s(&imgs[1]),
        a = s(&a),
        b = s(&b)
    );
    let (code, out) = env.run(&script, 60);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("a2\nb3\n"), "{out}");
    for (img, tag) in [(&imgs[0], "a"), (&imgs[1], "b")] {
        testkit::fsck_fat_clean(img);
        let listing = run("mdir", &["-b", "-i", s(img), "::/"]);
        assert_eq!(listing.lines().count(), 3, "{tag}: {listing}");
    }
}

#[test]
fn stacked_on_a_vudevpartx_partition() {
    let Some(env) = umvu::prologue(&["vufuse"], &["vufusefatfs"]) else {
        return;
    };
    if !umvu::has_module("vudevpartx") {
        testkit::skip("umvu installed without vudevpartx");
        return;
    }
    let dir = env.dir();
    let disk = dir.join("disk.img");
    sparse_file(&disk, 64 << 20);
    let mnt = dir.join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    // The partition is made and formatted inside umvu, through vudevpartx.
    let script = format!(
        "vu_insmod vudev vufuse
vumount -t vudevpartx {disk} /dev/hda
sgdisk -n 1:2048:+40M -t 1:0700 /dev/hda > /dev/null
mkfs.vfat /dev/hda1 > /dev/null
vumount -t vufusefatfs -o rw+ /dev/hda1 {mnt}
echo stacked > {mnt}/on-hda1.txt
cat {mnt}/on-hda1.txt
vuumount {mnt}
vuumount /dev/hda
",
        disk = s(&disk),
        mnt = s(&mnt)
    );
    let (code, out) = env.run(&script, 120);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("stacked"), "{out}");
    let at = format!("{}@@{}", s(&disk), 2048 * 512);
    let text = std::process::Command::new("mtype")
        .args(["-i", &at, "::/on-hda1.txt"])
        .env("MTOOLS_SKIP_CHECK", "1")
        .output()
        .unwrap();
    assert_eq!(text.stdout, b"stacked\n");
}

#[test]
fn a_bad_image_or_option_fails_the_mount_with_a_message_and_no_hang() {
    let Some(env) = umvu::prologue(&["vufuse"], &["vufusefatfs"]) else {
        return;
    };
    let dir = env.dir();
    let zeros = dir.join("zeros.img");
    sparse_file(&zeros, 4 << 20);
    let good = dir.join("good.img");
    sparse_file(&good, 16 << 20);
    run("mkfs.vfat", &[s(&good)]);
    let mnt = dir.join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let script = format!(
        "vu_insmod vufuse
vumount -t vufusefatfs -o rw+ {zeros} {mnt}
vumount -t vufusefatfs -o frobnicate {good} {mnt}
vumount -t vufusefatfs -o rw+ {good} {mnt}
echo still-works > {mnt}/ok.txt && cat {mnt}/ok.txt
vuumount {mnt}
",
        zeros = s(&zeros),
        good = s(&good),
        mnt = s(&mnt)
    );
    let (code, out) = env.run(&script, 60);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("no FAT or exFAT filesystem"), "{out}");
    assert!(out.contains("bad mount option 'frobnicate'"), "{out}");
    // vufuse turns main's non-zero return into EFAULT.
    assert_eq!(out.matches("vumount: Bad address").count(), 2, "{out}");
    assert!(out.contains("still-works"), "{out}");
}

/// exFAT (an SDXC card's filesystem) and a qcow2 image are served by the same module under
/// umvu: written inside, then checked outside by fsck.exfat and qemu-img.
#[test]
fn exfat_and_a_qcow2_image_under_umvu() {
    let Some(env) = umvu::prologue(&["vufuse"], &["vufusefatfs"]) else {
        return;
    };
    let dir = env.dir();
    let exfat = dir.join("card.img");
    sparse_file(&exfat, 64 << 20);
    let mkfs = std::process::Command::new("mkfs.exfat")
        .args(["-L", "SDXC", s(&exfat)])
        .output();
    if !mkfs.is_ok_and(|o| o.status.success()) {
        return testkit::skip("mkfs.exfat (exfatprogs) is not installed");
    }
    let raw = dir.join("fat.raw");
    sparse_file(&raw, 32 << 20);
    run("mkfs.vfat", &["-n", "QCOW", s(&raw)]);
    let qcow = dir.join("disk.qcow2");
    run(
        "qemu-img",
        &["convert", "-f", "raw", "-O", "qcow2", s(&raw), s(&qcow)],
    );
    let (m1, m2) = (dir.join("m1"), dir.join("m2"));
    std::fs::create_dir(&m1).unwrap();
    std::fs::create_dir(&m2).unwrap();
    let script = format!(
        "set -eu
vu_insmod vufuse
vumount -t vufusefatfs -o rw+ {exfat} {m1}
vumount -t vufusefatfs -o rw+ {qcow} {m2}
mkdir {m1}/DCIM
echo photo > {m1}/DCIM/IMG_0001.JPG
cat {m1}/dcim/img_0001.jpg
echo inside > {m2}/NOTE.TXT
vuumount {m1}
vuumount {m2}
",
        exfat = s(&exfat),
        qcow = s(&qcow),
        m1 = s(&m1),
        m2 = s(&m2)
    );
    let (code, out) = env.run(&script, 120);
    assert_eq!(code, 0, "umvu failed:\n{out}");
    assert!(out.contains("photo"), "case-insensitive lookup: {out}");
    run("fsck.exfat", &["-n", s(&exfat)]);
    run("qemu-img", &["check", s(&qcow)]);
    let back = dir.join("back.raw");
    run("qemu-img", &["convert", "-O", "raw", s(&qcow), s(&back)]);
    let note = std::process::Command::new("mtype")
        .args(["-i", s(&back), "::/NOTE.TXT"])
        .env("MTOOLS_SKIP_CHECK", "1")
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&note.stdout), "inside\n");
}

/// An NBD export as SOURCE under umvu: nbdkit serves a FAT image on a Unix socket and
/// `vumount -t vufusefatfs nbd+unix:///?socket=S` mounts it; the write reaches the file.
#[test]
fn an_nbd_export_under_umvu() {
    let Some(env) = umvu::prologue(&["vufuse"], &["vufusefatfs"]) else {
        return;
    };
    let dir = env.dir();
    let img = dir.join("fat.img");
    sparse_file(&img, 32 << 20);
    run("mkfs.vfat", &[s(&img)]);
    let sock = dir.join("nbd.sock");
    let Ok(mut server) = std::process::Command::new("nbdkit")
        .args(["-f", "-U", s(&sock), "file", s(&img)])
        .spawn()
    else {
        return testkit::skip("nbdkit is not installed");
    };
    testkit::wait_until(
        "nbdkit's socket",
        std::time::Duration::from_secs(20),
        || sock.exists(),
    );
    let mnt = dir.join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let script = format!(
        "set -eu
vu_insmod vufuse
vumount -t vufusefatfs -o rw+ 'nbd+unix:///?socket={sock}' {mnt}
echo remote > {mnt}/REMOTE.TXT
cat {mnt}/REMOTE.TXT
vuumount {mnt}
",
        sock = s(&sock),
        mnt = s(&mnt)
    );
    let (code, out) = env.run(&script, 120);
    let _ = server.kill();
    let _ = server.wait();
    assert_eq!(code, 0, "umvu failed:\n{out}");
    testkit::fsck_fat_clean(&img);
    let note = std::process::Command::new("mtype")
        .args(["-i", s(&img), "::/REMOTE.TXT"])
        .env("MTOOLS_SKIP_CHECK", "1")
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&note.stdout), "remote\n");
}
