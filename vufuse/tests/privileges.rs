//! Set-user-ID and set-group-ID bits after a write, a truncate and a chown through fuseext2
//! (which takes clearing them over from the kernel, FUSE_HANDLE_KILLPRIV_V2) end as they end
//! on a directory of the host served by the kernel itself, for root and for another user;
//! and the kernel no longer asks for `security.capability` before every write.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use testkit::{as_nobody, open_scratch, other_user_unavailable, s, sh, skip, MountGuard};

const FUSEEXT2: &str = env!("CARGO_BIN_EXE_fuseext2");

/// Each step: (file mode before, who acts, what they do to the file `f`).
const STEPS: &[(u32, &str, &str)] = &[
    (0o4755, "nobody", "echo x >> f"),
    (0o2755, "nobody", "echo x >> f"),
    (0o2745, "nobody", "echo x >> f"),
    (0o6777, "root", "echo x >> f"),
    (0o4777, "nobody", "truncate -s 0 f"),
    (0o6777, "root", "truncate -s 1 f"),
    (0o4777, "nobody", "echo y > f"),
    (0o6755, "root", "chown root f"),
    (0o6745, "root", "chown :nogroup f"),
    (
        0o4755,
        "root",
        "python3 -c 'import os; os.chown(\"f\", -1, -1)'",
    ),
    (0o2775, "root", "chown nobody f"),
];

/// Runs every step in `dir` (as its actor), returning the mode each left, as `stat` shows.
fn modes_after_steps(dir: &Path) -> Vec<String> {
    STEPS
        .iter()
        .map(|&(mode, who, action)| {
            let f = dir.join("f");
            sh(&format!(
                "rm -f '{0}' && echo data > '{0}' && chown nobody:nogroup '{0}'",
                f.display()
            ));
            std::fs::set_permissions(&f, std::fs::Permissions::from_mode(mode)).unwrap();
            let script = format!("cd '{}' && {action}", dir.display());
            if who == "root" {
                sh(&script);
            } else {
                let out = as_nobody(&script);
                assert!(
                    out.status.success(),
                    "{action} as nobody in {}: {}",
                    dir.display(),
                    String::from_utf8_lossy(&out.stderr)
                );
            }
            format!(
                "{mode:o} {who} {action}: {}",
                sh(&format!("stat -c %a '{}'", f.display())).trim()
            )
        })
        .collect()
}

#[test]
fn privileges_are_cleared_as_the_kernel_clears_them() {
    if let Some(reason) = other_user_unavailable() {
        return skip(&reason);
    }
    let scratch = open_scratch();
    let host = scratch.path().join("host");
    std::fs::create_dir(&host).unwrap();
    std::fs::set_permissions(&host, std::fs::Permissions::from_mode(0o777)).unwrap();
    let expected = modes_after_steps(&host);
    // The oracle itself must show the rules at work, or the comparison proves nothing.
    assert!(expected[0].ends_with(": 755"), "{expected:?}");
    assert!(expected[3].ends_with(": 6777"), "{expected:?}");

    let img = scratch.path().join("e.img");
    sh(&format!(
        "truncate -s 16M '{0}' && mkfs.ext4 -q -F '{0}'",
        s(&img)
    ));
    let mnt = scratch.path().join("m");
    let guard = testkit::mount_daemon(FUSEEXT2, &["rw+,allow_other"], &img, &mnt);
    std::fs::set_permissions(&mnt, std::fs::Permissions::from_mode(0o777)).unwrap();
    let through_fuse = modes_after_steps(&mnt);
    guard.unmount();
    assert_eq!(through_fuse, expected);
}

#[test]
fn writes_are_not_preceded_by_a_capability_lookup_each() {
    let scratch = tempfile::tempdir().unwrap();
    let img = scratch.path().join("e.img");
    sh(&format!(
        "truncate -s 16M '{0}' && mkfs.ext4 -q -F '{0}'",
        s(&img)
    ));
    let mnt = scratch.path().join("m");
    let daemon = testkit::spawn_logged(FUSEEXT2, "rw+", &img, &mnt);
    let guard = MountGuard::new(&mnt);
    // 64 writes of 4 KiB to one file, each its own write(2) and WRITE request.
    sh(&format!(
        "dd if=/dev/zero of='{}/f' bs=4k count=64 status=none",
        s(&mnt)
    ));
    guard.unmount();
    let log = String::from_utf8(daemon.wait_with_output().unwrap().stderr).unwrap();
    let writes = log.lines().filter(|l| l.starts_with("write(")).count();
    let lookups = log
        .lines()
        .filter(|l| l.starts_with("getxattr(") && l.contains("security.capability"))
        .count();
    assert!(writes >= 64, "{writes} WRITE requests:\n{log}");
    // The kernel checks a file once after its attributes were refreshed, not per write.
    assert!(
        lookups <= 2,
        "{lookups} capability lookups for {writes} writes"
    );
}
