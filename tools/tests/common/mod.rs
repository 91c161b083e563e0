//! Shared fixtures for vuimg's tests: running the binary, the real checking
//! tools, and partition offsets.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The repository root (for images/).
pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// Runs vuimg with `args` (SOURCE_DATE_EPOCH cleared unless `env` sets it).
pub fn vuimg_env(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_vuimg"));
    cmd.args(args).env_remove("SOURCE_DATE_EPOCH");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().unwrap()
}

/// Runs vuimg.
pub fn vuimg(args: &[&str]) -> Output {
    vuimg_env(args, &[])
}

/// Runs vuimg, which must succeed; returns stdout.
pub fn ok(args: &[&str]) -> String {
    let out = vuimg(args);
    assert!(
        out.status.success(),
        "vuimg {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs vuimg, which must fail with `code` and `needle` in stderr.
pub fn fails(args: &[&str], code: i32, needle: &str) {
    let out = vuimg(args);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(code), "vuimg {args:?}: {stderr}");
    assert!(
        stderr.contains(needle),
        "vuimg {args:?}: expected {needle:?} in {stderr:?}"
    );
}

/// A path as &str.
pub fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// Runs a tool; returns (success, stdout + stderr).
pub fn tool(program: &str, args: &[&str]) -> (bool, String) {
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{program}: {e}"));
    let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

/// Runs a tool that must succeed; returns its stdout bytes.
pub fn tool_bytes(program: &str, args: &[&str]) -> Vec<u8> {
    let out = Command::new(program).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "{program} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// Byte offset and length of partition `n` (from sfdisk --json).
pub fn partition(image: &Path, n: usize) -> (u64, u64) {
    let json: serde_json::Value =
        serde_json::from_slice(&tool_bytes("sfdisk", &["--json", s(image)])).unwrap();
    let p = &json["partitiontable"]["partitions"][n - 1];
    (
        p["start"].as_u64().unwrap() * 512,
        p["size"].as_u64().unwrap() * 512,
    )
}

/// Copies a byte range of `image` into a sparse file (for fsck.fat, which has no offset option).
pub fn extract(image: &Path, offset: u64, len: u64, out: &Path) {
    let (okay, text) = tool(
        "dd",
        &[
            &format!("if={}", s(image)),
            &format!("of={}", s(out)),
            "bs=1M",
            "iflag=skip_bytes,count_bytes",
            &format!("skip={offset}"),
            &format!("count={len}"),
            "conv=sparse",
            "status=none",
        ],
    );
    assert!(okay, "dd: {text}");
}

/// fsck.fat -n on partition `n` must be clean.
pub fn fsck_fat(image: &Path, n: usize, scratch: &Path) -> String {
    let (offset, len) = partition(image, n);
    let part = scratch.join(format!("fat-part{n}.img"));
    extract(image, offset, len, &part);
    let (okay, text) = tool("fsck.fat", &["-n", s(&part)]);
    std::fs::remove_file(&part).unwrap();
    // Clean: the version line and the summary line, nothing else.
    assert!(
        okay && text.trim().lines().count() == 2,
        "fsck.fat -n: {text}"
    );
    text
}

/// e2fsck -fn on partition `n` must be clean.
pub fn e2fsck(image: &Path, n: usize) -> String {
    let (offset, _) = partition(image, n);
    let dev = format!("{}?offset={offset}", s(image));
    let (okay, text) = tool("e2fsck", &["-fn", &dev]);
    assert!(okay, "e2fsck -fn: {text}");
    text
}

/// The `IMAGE@@OFFSET` form mtools takes for partition `n`.
pub fn mtools_image(image: &Path, n: usize) -> String {
    format!("{}@@{}", s(image), partition(image, n).0)
}

/// The `IMAGE?offset=N` form e2fsprogs takes for partition `n`.
pub fn e2fs_image(image: &Path, n: usize) -> String {
    format!("{}?offset={}", s(image), partition(image, n).0)
}

/// SHA-256 of a file (to show a failed command left it unchanged).
pub fn sha256(path: &Path) -> String {
    String::from_utf8(tool_bytes("sha256sum", &[s(path)]))
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .to_string()
}

/// A small card: MBR, FAT32 boot (64M) + ext4 root (rest) of a 128M image.
pub fn small_card(dir: &Path) -> PathBuf {
    let spec = dir.join("small.toml");
    std::fs::write(
        &spec,
        r#"size = "128M"
table = "mbr"
[[partition]]
size = "64M"
fs = "fat32"
label = "BOOT"
bootable = true
[[partition]]
fs = "ext4"
label = "root"
block_size = 4096
"#,
    )
    .unwrap();
    let img = dir.join("small.img");
    ok(&["build", s(&spec), "-o", s(&img)]);
    img
}
