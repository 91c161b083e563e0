//! The POSIX conformance subset (testkit::posix_subset, CI's stand-in for pjdfstest) on
//! every vufs mode mounted `allow_other` over a fresh tree, with and without
//! `default_permissions`.

use testkit::{open_scratch, other_user_unavailable, posix_subset, skip};

#[test]
fn every_mode_passes_the_posix_subset_with_and_without_default_permissions() {
    if let Some(reason) = other_user_unavailable() {
        return skip(&reason);
    }
    let mut failed = Vec::new();
    for mode in ["bind", "merge", "cow", "mincow"] {
        for extra in ["", ",default_permissions"] {
            let dir = open_scratch();
            let (layer, mnt) = (dir.path().join("layer"), dir.path().join("m"));
            std::fs::create_dir(&layer).unwrap();
            std::fs::create_dir(&mnt).unwrap();
            let options = format!("{mode},allow_other{extra}");
            let m = testkit::mount_daemon(env!("CARGO_BIN_EXE_vufs"), &[&options], &layer, &mnt);
            for failure in posix_subset::failures(&mnt, &[]) {
                failed.push(format!("{options}: {failure}"));
            }
            m.unmount();
        }
    }
    assert!(failed.is_empty(), "{}", failed.join("\n"));
}
