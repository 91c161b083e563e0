//! A mount that lets other users in (`allow_other`, how the daemons serve /etc/fstab) keeps
//! their rights: as user nobody, a root-only file can be neither read, appended to nor
//! removed, on every daemon, with or without `default_permissions` asked for.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use testkit::{as_nobody, other_user_unavailable, sh, skip, MountGuard};

const FUSEEXT2: &str = env!("CARGO_BIN_EXE_fuseext2");
const FUSEFATFS: &str = env!("CARGO_BIN_EXE_fusefatfs");
const VUDEVPARTX: &str = env!("CARGO_BIN_EXE_vudevpartx");

/// A scratch directory other users can enter (tempdirs are 0700).
fn open_scratch() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    dir
}

/// What nobody's `script` did: its exit status and stderr.
fn nobody(script: &str) -> (bool, String) {
    let out = as_nobody(script);
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn assert_denied(script: &str) {
    let (ok, err) = nobody(script);
    assert!(!ok, "nobody was allowed: {script}");
    assert!(
        err.contains("Permission denied") || err.contains("Operation not permitted"),
        "{script}: {err}"
    );
}

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

#[test]
fn vudevpartx_shows_devices_with_the_images_owner_and_mode() {
    if let Some(reason) = other_user_unavailable() {
        return skip(&reason);
    }
    let dir = open_scratch();
    let img = dir.path().join("d.img");
    sh(&format!(
        "truncate -s 8M '{0}' && echo 'start=2048, size=4096, type=83' | sfdisk -q '{0}' && \
         chmod 600 '{0}'",
        img.display()
    ));
    let mnt = dir.path().join("m");
    let m = mount(VUDEVPARTX, &img, &mnt, "allow_other");
    for name in ["disk", "disk1"] {
        let md = std::fs::metadata(mnt.join(name)).unwrap();
        assert_eq!(md.permissions().mode() & 0o777, 0o600, "{name}");
        assert_denied(&format!("head -c 1 '{}/{name}' >/dev/null", mnt.display()));
        assert_denied(&format!("printf x 1<> '{}/{name}'", mnt.display()));
    }
    m.unmount();
}
