//! Host POSIX ACLs decide for other users through an `allow_other` mount: the kernel checks
//! permissions there (default_permissions) and, with FUSE_POSIX_ACL, with the ACLs too; a
//! mode-only check would refuse what a named-user entry grants.

mod common;
use common::*;
use testkit::{assert_denied, nobody, open_scratch, other_user_unavailable, s, skip};

#[test]
fn named_user_entries_of_host_files_grant_and_refuse_through_the_mount() {
    need_fuse!();
    if let Some(reason) = other_user_unavailable() {
        return skip(&reason);
    }
    let scratch = open_scratch();
    let source = scratch.path().join("source");
    std::fs::create_dir(&source).unwrap();
    sh(&format!(
        "cd '{}' && echo secret > granted && chmod 600 granted && echo open > refused && \
         chmod 644 refused && setfacl -m u:nobody:r granted && setfacl -m u:nobody:- refused \
         && chmod 755 .",
        s(&source)
    ));
    // (The union modes read SOURCE as the daemon: their own check must apply the ACL too;
    // before it did, cow let nobody read `refused`.)
    for mode in ["bind", "merge", "cow", "mincow"] {
        let mnt = scratch.path().join(format!("view-{mode}"));
        let guard = mount_vufs(&source, &mnt, &[&format!("{mode},allow_other")]);
        let (ok, err) = nobody(&format!("cat '{}/granted'", s(&mnt)));
        assert!(ok, "{mode}: the host ACL grants nobody read: {err}");
        assert_denied(&format!("cat '{}/refused'", s(&mnt)));
        if mode == "merge" {
            // SOURCE is read-only in merge.
            guard.unmount();
            continue;
        }
        // An ACL set through the view lands on the host file, and decides at once.
        sh(&format!("setfacl -m u:nobody:r '{}/refused'", s(&mnt)));
        let (ok, err) = nobody(&format!("cat '{}/refused'", s(&mnt)));
        assert!(
            ok,
            "{mode}: the ACL set through the mount grants read: {err}"
        );
        sh(&format!("setfacl -m u:nobody:- '{}/refused'", s(&mnt)));
        assert_denied(&format!("cat '{}/refused'", s(&mnt)));
        guard.unmount();
    }
    let on_host = sh(&format!("getfacl -c '{}/refused'", s(&source)));
    assert!(on_host.contains("user:nobody:---"), "{on_host}");
}

/// A `nochcopy` chmod of a lower file records the mode in a vstat entry and leaves the host
/// file alone: the ACL the view shows follows that mode as chmod would have rewritten it
/// (mask and other), and the kernel checks with it.
#[test]
fn a_vstat_chmod_rewrites_the_acl_the_view_shows() {
    need_fuse!();
    if let Some(reason) = other_user_unavailable() {
        return skip(&reason);
    }
    let scratch = open_scratch();
    let (upper, lower) = (scratch.path().join("up"), scratch.path().join("low"));
    std::fs::create_dir(&upper).unwrap();
    std::fs::create_dir(&lower).unwrap();
    sh(&format!(
        "cd '{}' && echo data > f && chmod 664 f && setfacl -m u:nobody:rw f && chmod 755 . '{}'",
        s(&lower),
        s(&upper)
    ));
    let guard = mount_vufs(&upper, &lower, &["cow,nochcopy,allow_other"]);
    sh(&format!("chmod 644 '{}/f'", s(&lower)));
    let shown = sh(&format!("getfacl -c '{}/f'", s(&lower)));
    assert!(shown.contains("mask::r--"), "{shown}");
    assert!(shown.contains("user:nobody:rw-"), "{shown}");
    let (ok, err) = nobody(&format!("cat '{}/f'", s(&lower)));
    assert!(ok, "the mask still grants read: {err}");
    assert_denied(&format!("echo x >> '{}/f'", s(&lower)));
    guard.unmount();
    // The lower file kept its mode and ACL (nochcopy), and nothing was copied up.
    let real = sh(&format!(
        "stat -c %a '{0}/f' && getfacl -c '{0}/f'",
        s(&lower)
    ));
    assert!(
        real.starts_with("664\n") && real.contains("mask::rw-"),
        "{real}"
    );
    assert!(!upper.join("f").exists());
}
