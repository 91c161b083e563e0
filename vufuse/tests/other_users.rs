//! A mount that lets other users in (`allow_other`, how the daemons serve /etc/fstab) keeps
//! their rights: as user nobody, a root-only file can be neither read, appended to nor
//! removed, on every daemon, with or without `default_permissions` asked for.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use testkit::{
    as_nobody, assert_denied, nobody, open_scratch, other_user_unavailable, sh, skip, MountGuard,
};

const FUSEEXT2: &str = env!("CARGO_BIN_EXE_fuseext2");
const FUSEFATFS: &str = env!("CARGO_BIN_EXE_fusefatfs");

fn mount(bin: &str, image: &Path, dir: &Path, options: &str) -> MountGuard {
    std::fs::create_dir_all(dir).unwrap();
    testkit::mount_daemon(bin, &[options], image, dir)
}

#[test]
fn fuseext2_keeps_root_only_files_from_other_users() {
    if let Some(reason) = other_user_unavailable() {
        return skip(&reason);
    }
    let dir = open_scratch();
    let src = dir.path().join("src");
    std::fs::create_dir(&src).unwrap();
    sh(&format!(
        "cd '{}' && echo secret > s && chmod 600 s && echo open > o && chmod 644 o",
        src.display()
    ));
    let img = dir.path().join("e.img");
    sh(&format!(
        "truncate -s 16M '{0}' && mke2fs -q -F -t ext4 -d '{1}' '{0}'",
        img.display(),
        src.display()
    ));
    let mnt = dir.path().join("m");
    for options in ["rw+,allow_other", "rw+,allow_other,default_permissions"] {
        let m = mount(FUSEEXT2, &img, &mnt, options);
        let s = mnt.join("s");
        assert_denied(&format!("cat '{}'", s.display()));
        assert_denied(&format!("echo x >> '{}'", s.display()));
        assert_denied(&format!("rm -f '{}'", s.display()));
        assert_denied(&format!("echo x > '{}/new'", mnt.display()));
        // What the modes allow still works.
        let (ok, err) = nobody(&format!("cat '{}/o'", mnt.display()));
        assert!(ok, "{options}: {err}");
        assert_eq!(
            std::fs::read_to_string(&s).unwrap(),
            "secret\n",
            "{options}"
        );
        m.unmount();
    }
}

#[test]
fn fusefatfs_umask_keeps_other_users_out() {
    if let Some(reason) = other_user_unavailable() {
        return skip(&reason);
    }
    let dir = open_scratch();
    let img = dir.path().join("f.img");
    sh(&format!(
        "truncate -s 8M '{0}' && mkfs.fat -n CARD '{0}' >/dev/null && \
         echo secret > '{1}/s' && mcopy -i '{0}' '{1}/s' ::/s",
        img.display(),
        dir.path().display()
    ));
    let mnt = dir.path().join("m");
    let m = mount(FUSEFATFS, &img, &mnt, "rw+,allow_other,umask=077");
    let mode = std::fs::metadata(&mnt).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o700);
    assert_denied(&format!("ls '{}'", mnt.display()));
    assert_denied(&format!("cat '{}/s'", mnt.display()));
    assert_denied(&format!("rm -f '{}/s'", mnt.display()));
    assert_eq!(std::fs::read_to_string(mnt.join("s")).unwrap(), "secret\n");
    m.unmount();
    // umask=022: others may read, not write.
    let m = mount(FUSEFATFS, &img, &mnt, "rw+,allow_other,umask=022");
    let (ok, err) = nobody(&format!("cat '{}/s'", mnt.display()));
    assert!(ok, "{err}");
    assert_denied(&format!("echo x >> '{}/s'", mnt.display()));
    assert_denied(&format!("rm -f '{}/s'", mnt.display()));
    m.unmount();
}

/// A user who may not open /dev/fuse is told so, not that the mount point is wrong.
#[test]
fn a_closed_dev_fuse_is_named_in_the_error() {
    if let Some(reason) = other_user_unavailable() {
        return skip(&reason);
    }
    if as_nobody("test -r /dev/fuse -a -w /dev/fuse")
        .status
        .success()
    {
        return skip("/dev/fuse is open to every user here: nothing to refuse");
    }
    let dir = open_scratch();
    let img = dir.path().join("f.img");
    sh(&format!(
        "truncate -s 4M '{0}' && mkfs.fat '{0}' >/dev/null && chmod 644 '{0}'",
        img.display()
    ));
    let mnt = dir.path().join("m");
    std::fs::create_dir(&mnt).unwrap();
    sh(&format!("chown nobody '{}'", mnt.display()));
    let out = as_nobody(&format!(
        "'{FUSEFATFS}' '{}' '{}'",
        img.display(),
        mnt.display()
    ));
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("/dev/fuse: permission denied"), "{err}");
    assert!(!err.contains("os error"), "{err}");
}
