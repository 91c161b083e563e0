//! Images cut short (an interrupted copy, a full disk): built by qemu-img, truncated, and
//! opened. Tables past the end are refused at open with a message naming the truncation;
//! data past the end fails its read with EIO. Never a panic, never zeros passed off as data.
//!
//! qemu itself opens truncated VDI and qcow2 images and reads the missing parts as zeros
//! (`qemu-img check` then reports errors for the qcow2 tables and the VDI block map but not
//! for VDI data); it refuses a VMDK whose grain tables are past the end ("File truncated").

mod common;

use common::*;
use testkit::s;
use vudev::{BlockDevice, Errno};
use vudev_formats::open_image;

const MIB: u64 = 1 << 20;

/// A 64 MiB image of `format` with 8 MiB of data at 10 MiB, made by qemu-img.
fn image(dir: &std::path::Path, format: &str) -> std::path::PathBuf {
    let raw = dir.join("src.raw");
    let f = std::fs::File::create(&raw).unwrap();
    f.set_len(64 * MIB).unwrap();
    let mut data = vec![0u8; (8 * MIB) as usize];
    Rng(7).fill(&mut data);
    std::os::unix::fs::FileExt::write_all_at(&f, &data, 10 * MIB).unwrap();
    let img = dir.join(format!("a.{format}"));
    qemu_img(&["convert", "-f", "raw", "-O", format, s(&raw), s(&img)]);
    img
}

fn cut(img: &std::path::Path, len: u64) -> std::path::PathBuf {
    let out = img.with_file_name(format!("cut{len}.img"));
    std::fs::copy(img, &out).unwrap();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&out)
        .unwrap()
        .set_len(len)
        .unwrap();
    out
}

/// Opening fails, and the message says why.
fn refused(img: &std::path::Path, words: &str) {
    match open_image(img, true, None) {
        Ok(_) => panic!("{}: opened a truncated image", img.display()),
        Err(e) => {
            let msg = e.to_string();
            assert!(msg.contains(words), "{}: message {msg:?}", img.display());
        }
    }
}

/// Opens, but reading the whole disk fails with EIO somewhere (never zeros for data).
fn read_fails(img: &std::path::Path) {
    let dev = open_image(img, true, None).unwrap();
    let mut buf = vec![0u8; MIB as usize];
    let mut failed = false;
    for i in 0..dev.size() / MIB {
        match dev.read_exact_at(&mut buf, i * MIB) {
            Ok(()) => {}
            Err(e) => {
                assert_eq!(e, Errno::EIO, "{}: read at {i} MiB", img.display());
                failed = true;
            }
        }
    }
    assert!(failed, "{}: read the truncated data", img.display());
}

#[test]
fn truncated_vdi_is_refused_at_open() {
    if !have(&["qemu-img"]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let img = image(dir.path(), "vdi");
    let full = std::fs::metadata(&img).unwrap().len();
    // Inside the block map, then inside the data area (a whole block, part of a block).
    for len in [600, 3 * MIB, full - 4096] {
        let t = cut(&img, len);
        refused(&t, if len == 600 { "block map" } else { "truncated" });
    }
    assert!(open_image(&img, true, None).is_ok());
}

#[test]
fn truncated_vmdk_is_refused_or_fails_reads() {
    if !have(&["qemu-img"]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let img = image(dir.path(), "vmdk");
    // Inside the grain directory or tables: refused at open, as qemu does.
    for len in [1000, 20000] {
        refused(&cut(&img, len), "");
    }
    // Inside the grains: qemu-img check says "points after EOF"; our read fails.
    for len in [300_000, 5_000_000] {
        read_fails(&cut(&img, len));
    }
}

#[test]
fn truncated_qcow2_is_refused_or_fails_reads() {
    if !have(&["qemu-img"]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let img = image(dir.path(), "qcow2");
    // Inside the header's tables.
    refused(&cut(&img, 100_000), "");
    // Inside the data clusters: tables intact, data gone.
    for len in [400_000, 2_000_000] {
        read_fails(&cut(&img, len));
    }
    let out = run_check(&cut(&img, 2_000_000));
    assert!(out.contains("ERROR"), "qemu-img check saw nothing: {out}");
}

fn run_check(img: &std::path::Path) -> String {
    let o = testkit::run("qemu-img", &["check", s(img)]);
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}
