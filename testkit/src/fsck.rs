//! The filesystem checkers as test assertions.

use std::path::Path;
use std::process::Command;

/// Asserts that `e2fsck -fn img` finds nothing to fix, showing its report otherwise;
/// returns the report (its stdout), for tests that read the counts in it.
pub fn e2fsck_clean(img: &Path) -> String {
    let fsck = Command::new("e2fsck")
        .arg("-fn")
        .arg(img)
        .output()
        .expect("run e2fsck");
    let report = String::from_utf8_lossy(&fsck.stdout).into_owned();
    assert!(
        fsck.status.success(),
        "e2fsck -fn {}: {report}{}",
        img.display(),
        String::from_utf8_lossy(&fsck.stderr)
    );
    report
}

/// Asserts that `fsck.fat -n img` finds nothing to fix, showing its output otherwise.
pub fn fsck_fat_clean(img: &Path) {
    let out = Command::new("fsck.fat")
        .arg("-n")
        .arg(img)
        .output()
        .expect("run fsck.fat");
    assert!(
        out.status.success(),
        "fsck.fat -n {}: {}{}",
        img.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
