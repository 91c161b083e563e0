//! The README's VUOS walk-through under the real umvu, with this build's modules first in the
//! search path (`$HOME/.vu/modules`). Skips with a printed reason where umvu is absent.

use std::process::Command;
use testkit::umvu::{self, UmvuEnv};
use vuhost::sh;

/// This build's modules that the tests put first in umvu's search path.
const MODULES: [&str; 3] = ["vudevramdisk", "vudevpartx", "vufs"];

/// Runs `script` under `umvu bash` in the scratch directory (killed after 120 s); it must
/// succeed; returns stdout and stderr.
fn under_umvu(env: &UmvuEnv, script: &str) -> (String, String) {
    let out = Command::new("timeout")
        .args(["-s", "KILL", "120", "umvu", "bash", "-c", script])
        .env("HOME", env.home())
        .current_dir(env.dir())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        out.status.success(),
        "umvu script failed ({:?})\nstdout:\n{stdout}\nstderr:\n{stderr}",
        out.status
    );
    (stdout, stderr)
}

#[test]
fn ramdisk_and_mkfs_ext4_under_umvu() {
    let Some(env) = umvu::prologue(&[], &MODULES) else {
        return;
    };
    let (out, _) = under_umvu(
        &env,
        "set -e; vu_insmod vudev
         vumount -t vudevramdisk -o size=64M none /dev/ramdisk
         stat -c '%F' /dev/ramdisk
         blockdev --getsize64 --getsize --getss /dev/ramdisk
         mkfs.ext4 -q /dev/ramdisk
         e2fsck -fn /dev/ramdisk >/dev/null && echo e2fsck-clean
         vuumount /dev/ramdisk",
    );
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(
        lines,
        [
            "block special file",
            "67108864",
            "131072",
            "512",
            "e2fsck-clean"
        ],
        "BLKGETSIZE in sectors proves the Rust module answered"
    );
}

#[test]
fn partx_sgdisk_mkfs_vfat_and_vufusefatfs_under_umvu() {
    let Some(env) = umvu::prologue(&[], &MODULES) else {
        return;
    };
    let d = env.dir().display();
    sh(&format!("truncate -s 256M {d}/disk.img && mkdir {d}/mnt"));
    let fat_module = umvu::has_module("vufusefatfs");
    let fat_steps = if fat_module {
        format!(
            "vu_insmod vufuse
             vumount -t vufusefatfs -o rw+ /dev/hda1 {d}/mnt
             echo hello > {d}/mnt/hello.txt
             cat {d}/mnt/hello.txt
             vuumount {d}/mnt"
        )
    } else {
        eprintln!("note: no vufusefatfs.so installed; the FAT mount step is left out");
        String::new()
    };
    let (out, _) = under_umvu(
        &env,
        &format!(
            "set -e; vu_insmod vudev
             vumount -t vudevpartx {d}/disk.img /dev/hda
             sgdisk -n 1:2048:+100M -t 1:0700 -n 2:0:+50M -t 2:8300 /dev/hda >/dev/null
             stat -c '%n %t:%T' /dev/hda1 /dev/hda2
             blockdev --getsize /dev/hda1
             mkfs.vfat /dev/hda1 >/dev/null
             mkfs.ext4 -q /dev/hda2
             {fat_steps}
             vuumount /dev/hda"
        ),
    );
    assert!(
        out.contains("/dev/hda1 0:1") && out.contains("/dev/hda2 0:2"),
        "{out}"
    );
    assert!(
        out.contains("204800"),
        "BLKGETSIZE of hda1 in sectors: {out}"
    );
    let img = format!("{d}/disk.img");
    sh(&format!("sgdisk -v {img} | grep -q 'No problems found'"));
    sh(&format!(
        "dd if={img} of={d}/p1 bs=512 skip=2048 count=204800 status=none && fsck.fat -n {d}/p1 && \
         dd if={img} of={d}/p2 bs=512 skip=206848 count=102400 status=none && e2fsck -fn {d}/p2"
    ));
    if fat_module {
        assert!(out.contains("hello"));
        assert_eq!(sh(&format!("mtype -i {img}@@1M ::/hello.txt")), "hello\n");
    }
}

#[test]
fn vufs_cow_over_a_system_dir_under_umvu() {
    let Some(env) = umvu::prologue(&[], &MODULES) else {
        return;
    };
    let d = env.dir().display();
    sh(&format!("mkdir {d}/layer"));
    let etc_before = sh("ls -la --time-style=+%s /etc | md5sum");
    let (out, _) = under_umvu(
        &env,
        &format!(
            "set -e; vu_insmod vufs
             vu_lsmod | grep -q Rust
             vumount -t vufs -o cow {d}/layer /etc
             echo from-umvu > /etc/vufs-walkthrough
             cat /etc/vufs-walkthrough
             rm /etc/issue.net
             test ! -e /etc/issue.net && echo issue.net-gone
             mkdir /etc/vufs-dir && cp -a /etc/hostname /etc/vufs-dir/
             ls /etc/vufs-dir
             vuumount /etc
             test ! -e /etc/vufs-walkthrough && echo real-etc-untouched"
        ),
    );
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(
        lines,
        [
            "from-umvu",
            "issue.net-gone",
            "hostname",
            "real-etc-untouched"
        ]
    );
    assert_eq!(sh("ls -la --time-style=+%s /etc | md5sum"), etc_before);
    assert_eq!(
        std::fs::read_to_string(env.dir().join("layer/vufs-walkthrough")).unwrap(),
        "from-umvu\n"
    );
    assert!(
        env.dir().join("layer/.-/issue.net").is_file(),
        "whiteout in the layer"
    );
    assert!(env.dir().join("layer/vufs-dir/hostname").is_file());
}

/// `vumount -t vudevvdi disk.vdi /dev/hda` without VirtualBox (the C module needs its
/// library): a VDI, and a qcow2 through vudevpartx, partitioned and formatted inside umvu,
/// then `qemu-img check` and the raw conversion's FAT are clean outside.
#[test]
fn vdi_and_qcow2_disks_under_umvu() {
    let Some(env) = umvu::prologue(&[], &["vudevpartx", "vudevvdi"]) else {
        return;
    };
    if Command::new("qemu-img").arg("--version").output().is_err() {
        return testkit::skip("qemu-img is not installed");
    }
    let d = env.dir().display();
    sh(&format!(
        "qemu-img create -q -f vdi {d}/disk.vdi 128M && qemu-img create -q -f qcow2 {d}/disk.qcow2 128M"
    ));
    let (out, _) = under_umvu(
        &env,
        &format!(
            "set -e; vu_insmod vudev
             vumount -t vudevvdi {d}/disk.vdi /dev/hda
             vumount -t vudevpartx {d}/disk.qcow2 /dev/hdb
             for disk in /dev/hda /dev/hdb; do
               sgdisk -n 1:2048:+64M -t 1:0700 $disk >/dev/null
               mkfs.vfat -n INSIDE ${{disk}}1 >/dev/null
               blockdev --getsize64 $disk
             done
             vuumount /dev/hda
             vuumount /dev/hdb"
        ),
    );
    assert_eq!(
        out.matches("134217728").count(),
        2,
        "both disks are 128 MiB: {out}"
    );
    for image in ["disk.vdi", "disk.qcow2"] {
        sh(&format!(
            "qemu-img check -q {d}/{image} && qemu-img convert -O raw {d}/{image} {d}/back.raw && \
             sgdisk -v {d}/back.raw | grep -q 'No problems found' && \
             dd if={d}/back.raw of={d}/p1 bs=512 skip=2048 count=131072 status=none && \
             fsck.fat -n {d}/p1 >/dev/null"
        ));
    }
}
