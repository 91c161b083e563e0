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

/// The blocks reserved for root (s_r_blocks_count, mke2fs -m) are not handed to other users,
/// as the kernel's ext4 keeps them: nobody's writes stop with ENOSPC while the reserve is
/// still free, statfs shows it as free but not available, and root can still write into it.
#[test]
fn fuseext2_keeps_the_blocks_reserved_for_root_from_other_users() {
    if let Some(reason) = other_user_unavailable() {
        return skip(&reason);
    }
    let dir = open_scratch();
    let img = dir.path().join("r.img");
    sh(&format!(
        "truncate -s 16M '{0}' && mke2fs -q -F -t ext4 -m 20 '{0}'",
        img.display()
    ));
    let reserved: u64 = sh(&format!(
        "dumpe2fs -h '{}' 2>/dev/null | sed -n 's/^Reserved block count: *//p'",
        img.display()
    ))
    .trim()
    .parse()
    .unwrap();
    let block: u64 = sh(&format!(
        "dumpe2fs -h '{}' 2>/dev/null | sed -n 's/^Block size: *//p'",
        img.display()
    ))
    .trim()
    .parse()
    .unwrap();
    let mnt = dir.path().join("m");
    let m = mount(FUSEEXT2, &img, &mnt, "rw+,allow_other");
    sh(&format!(
        "mkdir '{0}/pub' && chmod 777 '{0}/pub'",
        mnt.display()
    ));
    let fill = as_nobody(&format!(
        "dd if=/dev/zero of='{}/pub/fill' bs=64k 2>&1; sync",
        mnt.display()
    ));
    let said = String::from_utf8_lossy(&fill.stdout);
    assert!(said.contains("No space left on device"), "{said}");
    // statfs in the fundamental block size: free, available.
    let stat = String::from_utf8_lossy(
        &as_nobody(&format!("stat -f -c '%S %f %a' '{}'", mnt.display())).stdout,
    )
    .into_owned();
    let v: Vec<u64> = stat
        .split_whitespace()
        .map(|n| n.parse().unwrap())
        .collect();
    let (free, avail) = (v[1] * v[0] / block, v[2] * v[0] / block);
    assert_eq!(avail, 0, "statfs: {stat}");
    assert!(
        free >= reserved && free <= reserved + 64,
        "free {free} blocks, reserved {reserved}: {stat}"
    );
    // Root writes into the reserve.
    sh(&format!(
        "head -c 1048576 /dev/zero > '{}/root-file' && sync",
        mnt.display()
    ));
    let nobody_file = std::fs::metadata(mnt.join("pub/fill")).unwrap().len();
    assert!(nobody_file > 0);
    m.unmount();
    testkit::wait_for_daemon_exit("fuseext2", &mnt);
    testkit::e2fsck_clean(&img);
}
