//! The POSIX conformance subset (testkit::posix_subset, CI's stand-in for pjdfstest) on
//! fuseext2 mounted `allow_other`, with and without `default_permissions`: both ways the
//! same answers, from the daemon's own checks or from the kernel's. Then `e2fsck -fn`.

use testkit::{e2fsck_clean, open_scratch, other_user_unavailable, posix_subset, sh, skip};

#[test]
fn fuseext2_passes_the_posix_subset_with_and_without_default_permissions() {
    if let Some(reason) = other_user_unavailable() {
        return skip(&reason);
    }
    let dir = open_scratch();
    let mut failed = Vec::new();
    for options in ["rw+,allow_other", "rw+,allow_other,default_permissions"] {
        let img = dir.path().join("e.img");
        sh(&format!(
            "truncate -s 64M '{0}' && mkfs.ext4 -q -F '{0}'",
            img.display()
        ));
        let mnt = dir.path().join("m");
        std::fs::create_dir_all(&mnt).unwrap();
        let m = testkit::mount_daemon(env!("CARGO_BIN_EXE_fuseext2"), &[options], &img, &mnt);
        for failure in posix_subset::failures(&mnt, &[]) {
            failed.push(format!("{options}: {failure}"));
        }
        m.unmount();
        e2fsck_clean(&img);
    }
    assert!(failed.is_empty(), "{}", failed.join("\n"));
}
