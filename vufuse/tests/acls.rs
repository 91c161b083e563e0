//! POSIX ACLs through fuseext2 are the kernel's to cache and check (FUSE_POSIX_ACL): an ACL
//! set through the mount grants and denies what it says to another user, reads back as the
//! kernel's own ext4 reads it from the image, and a second `ls -l` asks for no ACL again.

use std::os::unix::fs::PermissionsExt;
use testkit::{
    assert_denied, nobody, open_scratch, other_user_unavailable, s, sh, skip, MountGuard,
};

const FUSEEXT2: &str = env!("CARGO_BIN_EXE_fuseext2");

#[test]
fn acls_set_through_the_mount_are_enforced_and_stored_as_ext4_stores_them() {
    if let Some(reason) = other_user_unavailable() {
        return skip(&reason);
    }
    let scratch = open_scratch();
    let img = scratch.path().join("e.img");
    sh(&format!(
        "truncate -s 16M '{0}' && mkfs.ext4 -q -F '{0}'",
        s(&img)
    ));
    let mnt = scratch.path().join("m");
    let guard = testkit::mount_daemon(FUSEEXT2, &["rw+,allow_other"], &img, &mnt);
    std::fs::set_permissions(&mnt, std::fs::Permissions::from_mode(0o755)).unwrap();
    sh(&format!(
        "cd '{}' && echo secret > granted && chmod 600 granted && echo open > refused && \
         chmod 644 refused && setfacl -m u:nobody:r granted && setfacl -m u:nobody:- refused",
        s(&mnt)
    ));
    // The named-user entries decide, not the owner/group/other bits.
    let (ok, err) = nobody(&format!("cat '{}/granted'", s(&mnt)));
    assert!(ok, "the ACL grants nobody read: {err}");
    assert_denied(&format!("cat '{}/refused'", s(&mnt)));
    // chmod rewrites the mask: none for the group class, then read again.
    sh(&format!("chmod 600 '{}/granted'", s(&mnt)));
    assert_denied(&format!("cat '{}/granted'", s(&mnt)));
    sh(&format!("chmod 640 '{}/granted'", s(&mnt)));
    let (ok, err) = nobody(&format!("cat '{}/granted'", s(&mnt)));
    assert!(ok, "chmod 640 gives the mask read again: {err}");
    sh(&format!("chmod 664 '{}/granted'", s(&mnt)));
    let through_fuse = sh(&format!("cd '{}' && getfacl -c granted refused", s(&mnt)));
    let granted = through_fuse.split("\n\n").next().unwrap();
    for entry in ["user:nobody:r--", "mask::rw-", "other::r--"] {
        assert!(granted.contains(entry), "{entry} missing:\n{through_fuse}");
    }
    guard.unmount();

    sh(&format!("e2fsck -fn '{}'", s(&img)));
    // The kernel's ext4 reads the same ACLs from the image (its loop device goes with the
    // mount).
    let kmnt = scratch.path().join("k");
    std::fs::create_dir(&kmnt).unwrap();
    sh(&format!(
        "mount -t ext4 -o loop,ro '{}' '{}'",
        s(&img),
        s(&kmnt)
    ));
    let kernel_mount = MountGuard::new(&kmnt);
    let by_kernel = sh(&format!("cd '{}' && getfacl -c granted refused", s(&kmnt)));
    kernel_mount.unmount();
    assert_eq!(through_fuse, by_kernel);
}

#[test]
fn a_second_listing_asks_for_no_acl() {
    let scratch = tempfile::tempdir().unwrap();
    let img = scratch.path().join("e.img");
    sh(&format!(
        "truncate -s 16M '{0}' && mkfs.ext4 -q -F '{0}'",
        s(&img)
    ));
    let mnt = scratch.path().join("m");
    let daemon = testkit::spawn_logged(FUSEEXT2, "rw+", &img, &mnt);
    let guard = MountGuard::new(&mnt);
    sh(&format!("cd '{}' && touch $(seq 1 40)", s(&mnt)));
    let acl_requests = |log: &str| {
        log.lines()
            .filter(|l| l.starts_with("getxattr(") && l.contains("system.posix_acl"))
            .count()
    };
    sh(&format!("ls -l '{}' > /dev/null", s(&mnt)));
    sh(&format!("ls -l '{}' > /dev/null", s(&mnt)));
    guard.unmount();
    let log = String::from_utf8(daemon.wait_with_output().unwrap().stderr).unwrap();
    let listed = log
        .lines()
        .filter(|l| l.starts_with("readdirplus("))
        .count();
    assert!(listed >= 1, "no listing reached the daemon:\n{log}");
    // ls -l asks for every file's ACL; the kernel answers the second time from its cache.
    assert!(
        acl_requests(&log) <= 50,
        "{} ACL requests for two listings of 40 files",
        acl_requests(&log)
    );
}
