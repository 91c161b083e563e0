//! One writer per image: a second read-write mount of an image is refused with a message
//! naming the image and how the holder has it (it would corrupt the image otherwise), as a
//! read-write mount of an image that is mounted read-only; read-only mounts share it, and
//! `-o nolock` overrides.

use std::path::Path;
use testkit::{sh, MountGuard};

const FUSEFATFS: &str = env!("CARGO_BIN_EXE_fusefatfs");
const FUSEEXT2: &str = env!("CARGO_BIN_EXE_fuseext2");

fn fuse_unavailable() -> Option<String> {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/fuse")
        .err()
        .map(|e| format!("cannot open /dev/fuse: {e}"))
}

fn refused(bin: &str, options: &str, image: &Path, dir: &Path) -> String {
    std::fs::create_dir_all(dir).unwrap();
    let out = testkit::run_daemon(bin, &[options], image, dir);
    assert!(!out.status.success(), "{bin} -o {options} was accepted");
    assert!(!testkit::is_mounted(dir));
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn mounted(bin: &str, options: &str, image: &Path, dir: &Path) -> MountGuard {
    std::fs::create_dir_all(dir).unwrap();
    testkit::mount_daemon(bin, &[options], image, dir)
}

fn check(bin: &str, rw: &str, image: &Path, tmp: &Path) {
    let (a, b) = (tmp.join("a"), tmp.join("b"));
    let first = mounted(bin, rw, image, &a);
    let err = refused(bin, rw, image, &b);
    assert!(
        err.contains(&format!("{}: in use", image.display())) && err.contains("read-write"),
        "{bin}: {err}"
    );
    let err = refused(bin, "ro", image, &b);
    assert!(err.contains("in use"), "{bin}: {err}");
    // nolock: the user takes the risk.
    let second = mounted(bin, "ro,nolock", image, &b);
    second.unmount();
    first.unmount();
    // Readers share the image; a writer waits for them.
    let r1 = mounted(bin, "ro", image, &a);
    let r2 = mounted(bin, "ro", image, &b);
    let err = refused(bin, rw, image, &tmp.join("c"));
    assert!(err.contains("open read-only"), "{bin}: {err}");
    r1.unmount();
    r2.unmount();
    mounted(bin, rw, image, &a).unmount();
}

#[test]
fn a_second_writer_is_refused_on_fat_and_ext() {
    if let Some(reason) = fuse_unavailable() {
        return testkit::skip(&reason);
    }
    let dir = tempfile::tempdir().unwrap();
    let fat = dir.path().join("f.img");
    sh(&format!(
        "truncate -s 8M '{0}' && mkfs.fat '{0}' >/dev/null",
        fat.display()
    ));
    check(FUSEFATFS, "rw+", &fat, &dir.path().join("fat"));
    testkit::fsck_fat_clean(&fat);
    let ext = dir.path().join("e.img");
    sh(&format!(
        "truncate -s 16M '{0}' && mke2fs -q -F -t ext4 '{0}'",
        ext.display()
    ));
    check(FUSEEXT2, "rw", &ext, &dir.path().join("ext"));
    testkit::e2fsck_clean(&ext);
}
