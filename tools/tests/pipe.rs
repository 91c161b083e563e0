//! `vuimg ls IMG | head`: a reader that goes away early ends vuimg quietly, with status 0,
//! whatever command was printing (no "Broken pipe" message, no panic).

mod common;

use common::*;
use std::io::Read;
use std::process::{Command, Stdio};

/// Runs vuimg with its stdout read for one byte only, then closed (as `| head -c 1`): the
/// output is far larger than a pipe's buffer, so vuimg meets EPIPE.
fn read_one_byte_then_close(args: &[&str]) -> (Option<i32>, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_vuimg"))
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let mut byte = [0u8; 1];
    stdout.read_exact(&mut byte).unwrap();
    drop(stdout);
    let out = child.wait_with_output().unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn a_closed_stdout_ends_vuimg_quietly_with_status_0() {
    let dir = tempfile::tempdir().unwrap();
    let tree = dir.path().join("many");
    std::fs::create_dir(&tree).unwrap();
    for i in 0..3000 {
        std::fs::write(
            tree.join(format!("a-rather-long-file-name-{i:05}.txt")),
            "x",
        )
        .unwrap();
    }
    let img = dir.path().join("p.img");
    ok(&["create", s(&img), "64M"]);
    ok(&["format", s(&img), "fat32"]);
    ok(&[
        "cp",
        "-r",
        &format!("{}/.", s(&tree)),
        &format!("{}:/", s(&img)),
    ]);
    let root = format!("{}:/", s(&img));
    for args in [
        vec!["ls", root.as_str()],
        vec!["ls", "-l", root.as_str()],
        vec!["ls", "--json", root.as_str()],
    ] {
        let (code, stderr) = read_one_byte_then_close(&args);
        assert_eq!(code, Some(0), "vuimg {args:?}: {stderr}");
        assert!(stderr.is_empty(), "vuimg {args:?} printed: {stderr}");
    }
    // cat of a file larger than the pipe's buffer.
    std::fs::write(dir.path().join("big"), vec![b'y'; 1 << 20]).unwrap();
    ok(&["cp", s(&dir.path().join("big")), &root]);
    let (code, stderr) = read_one_byte_then_close(&["cat", &format!("{root}big")]);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stderr.is_empty(), "{stderr}");
}
