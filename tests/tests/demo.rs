//! README's first command, `images/demo.sh`, run as a user runs it: it builds vuimg and
//! fusefatfs with cargo and uses the binaries cargo built, wherever CARGO_TARGET_DIR puts
//! them.

use std::path::PathBuf;
use std::process::Command;
use testkit::{s, skip};

/// The target directory this test binary was built in (`<target>/debug/deps/demo-HASH`).
fn target_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    exe.ancestors().nth(3).expect("target dir").to_path_buf()
}

#[test]
fn demo_uses_the_binaries_of_cargo_target_dir() {
    let target = target_dir();
    let release = target.join("release");
    // The demo runs `cargo build --release`; only where that build exists already (a quick
    // no-op or near it), not a first release build of the workspace inside `cargo test`.
    if !release.join("vuimg").is_file() || !release.join("fusefatfs").is_file() {
        return skip(&format!(
            "no release vuimg and fusefatfs in {} (cargo build --release -p vuimg -p vufuse first)",
            release.display()
        ));
    }
    let ws = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let scratch = tempfile::tempdir().unwrap();
    let image = scratch.path().join("card.img");
    let out = Command::new("bash")
        .arg(ws.join("images/demo.sh"))
        .arg(&image)
        .env("CARGO_TARGET_DIR", &target)
        .output()
        .expect("run images/demo.sh");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "images/demo.sh:\n{text}");
    assert!(
        text.contains("== build the card from images/rpi.toml"),
        "{text}"
    );
    assert!(image.is_file(), "no {} after the demo:\n{text}", s(&image));
    assert!(text.contains("dos table"), "{text}");
}
