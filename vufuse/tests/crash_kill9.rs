//! Crash safety, short: `tests/crash/kill9.sh` with three trials per driver (ext4 through
//! fuseext2, FAT32 and exFAT through fusefatfs -o rw+): the daemon is killed with SIGKILL at
//! a seeded random moment of a create/write+fsync/rename/overwrite/delete loop; the image
//! must then pass its fsck in no-change mode (or show only the leaks the script names) and
//! every fsynced file must read back intact through debugfs, mtools or exfat-fuse. The long
//! run: `tests/crash/kill9.sh -n 20`.

use std::path::Path;
use std::process::Command;

#[test]
fn kill_9_at_random_points_loses_no_fsynced_file_and_leaves_fsck_clean() {
    let missing: Vec<&str> = [
        "mke2fs",
        "e2fsck",
        "debugfs",
        "mkfs.fat",
        "fsck.fat",
        "mcopy",
        "mkfs.exfat",
        "fsck.exfat",
    ]
    .into_iter()
    .filter(|tool| {
        !Command::new("sh")
            .arg("-c")
            .arg(format!("command -v {tool}"))
            .status()
            .map(|s| s.success())
            .unwrap_or(false)
    })
    .collect();
    if !missing.is_empty() {
        testkit::skip(&format!("missing tools: {}", missing.join(" ")));
        return;
    }
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/crash/kill9.sh");
    let out = Command::new("bash")
        .arg(&script)
        .args(["-n", "3", "-s", "7"])
        .env("FUSEEXT2", env!("CARGO_BIN_EXE_fuseext2"))
        .env("FUSEFATFS", env!("CARGO_BIN_EXE_fusefatfs"))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    println!("{stdout}");
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for driver in ["ext4", "fat32", "exfat"] {
        assert!(
            stdout.contains(&format!("{driver}-ok: 3")),
            "{driver}: {stdout}"
        );
    }
}
