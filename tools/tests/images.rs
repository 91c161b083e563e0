//! VM image commands (convert, overlay, commit, info, create --format) against the real
//! tools: qemu-img compare/check/info, uml_mkcow and uml_moo.

mod common;
use common::*;
use serde_json::Value;
use std::path::{Path, PathBuf};

/// True when every program is installed; else prints why `test` is skipped.
fn have(test: &str, programs: &[&str]) -> bool {
    for p in programs {
        let (found, _) = tool("sh", &["-c", &format!("command -v {p}")]);
        if !found {
            eprintln!("skipped {test}: {p} missing");
            return false;
        }
    }
    true
}

fn qemu_img(args: &[&str]) -> String {
    let (okay, text) = tool("qemu-img", args);
    assert!(okay, "qemu-img {args:?}: {text}");
    text
}

/// `qemu-img compare` (formats probed unless given) must say identical.
fn assert_identical(a: &Path, a_fmt: &str, b: &Path, b_fmt: &str) {
    let text = qemu_img(&["compare", "-f", a_fmt, "-F", b_fmt, s(a), s(b)]);
    assert!(text.contains("Images are identical"), "{text}");
}

/// `qemu-img check` must find no errors and no leaks.
fn assert_clean(img: &Path, fmt: &str) {
    let text = qemu_img(&["check", "-f", fmt, s(img)]);
    assert!(
        !text.contains("ERROR") && !text.to_lowercase().contains("leaked"),
        "qemu-img check {}: {text}",
        img.display()
    );
}

fn qemu_info(img: &Path) -> Value {
    serde_json::from_str(&qemu_img(&["info", "--output=json", s(img)])).unwrap()
}

/// Bytes the file occupies on the host.
fn disk_usage(path: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).unwrap().blocks() * 512
}

/// A raw disk of `size` with an MBR, one FAT32 partition of 64M and a file in it.
fn fat_disk(dir: &Path, name: &str, size: &str) -> PathBuf {
    let img = dir.join(name);
    ok(&["create", s(&img), size, "--format", "raw"]);
    ok(&["part", "new", s(&img), "mbr"]);
    ok(&["part", "add", s(&img), "fat32", "--size", "64M"]);
    ok(&["format", "-q", &format!("{}@1", s(&img)), "fat32"]);
    let f = dir.join("base.txt");
    std::fs::write(&f, "in the base\n").unwrap();
    ok(&["cp", s(&f), &format!("{}@1:/", s(&img))]);
    img
}

/// Seeded bytes (xorshift), for data that is not zero.
fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

#[test]
fn convert_round_trips_raw_through_qcow2_vdi_and_vmdk() {
    if !have(
        "convert_round_trips_raw_through_qcow2_vdi_and_vmdk",
        &["qemu-img"],
    ) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let raw = fat_disk(dir.path(), "disk.img", "1G");
    for fmt in ["qcow2", "vdi", "vmdk"] {
        // The format comes from the extension.
        let img = dir.path().join(format!("disk.{fmt}"));
        ok(&["convert", "-q", s(&raw), s(&img)]);
        assert_eq!(qemu_info(&img)["format"], fmt);
        assert_eq!(qemu_info(&img)["virtual-size"], 1u64 << 30);
        assert_clean(&img, fmt);
        assert_identical(&raw, "raw", &img, fmt);
        // Existing commands work on the converted image.
        let listing = ok(&["ls", &format!("{}@1:/", s(&img))]);
        assert!(listing.contains("base.txt"), "{fmt}: {listing}");
        // And back to raw: identical, and sparse.
        let back = dir.path().join(format!("back-{fmt}.img"));
        ok(&["convert", "-q", s(&img), s(&back)]);
        assert_eq!(std::fs::metadata(&back).unwrap().len(), 1 << 30);
        assert_identical(&raw, "raw", &back, "raw");
        assert!(
            disk_usage(&back) < 4 << 20,
            "{fmt} -> raw is not sparse: {} bytes used",
            disk_usage(&back)
        );
    }
    // A mostly empty 1 GiB disk makes a small qcow2 (no cluster for zeros).
    let qcow = dir.path().join("disk.qcow2");
    let actual = qemu_info(&qcow)["actual-size"].as_u64().unwrap();
    assert!(actual < 2 << 20, "qcow2 actual size {actual}");
    let vmdk_used = disk_usage(&dir.path().join("disk.vmdk"));
    assert!(vmdk_used < 2 << 20, "vmdk uses {vmdk_used}");
    // --format wins over the extension.
    let odd = dir.path().join("disk.bin");
    ok(&["convert", "-q", s(&raw), s(&odd), "--format", "vmdk"]);
    assert_eq!(qemu_info(&odd)["format"], "vmdk");
    assert_clean(&odd, "vmdk");
    // An existing DST is refused without --force (and left alone), replaced with it.
    let before = sha256(&odd);
    fails(&["convert", s(&qcow), s(&odd)], 1, "exists");
    assert_eq!(sha256(&odd), before);
    ok(&[
        "convert",
        "-q",
        s(&qcow),
        s(&odd),
        "--force",
        "--format",
        "qcow2",
    ]);
    assert_eq!(qemu_info(&odd)["format"], "qcow2");
    assert_identical(&raw, "raw", &odd, "qcow2");
}

#[test]
fn convert_keeps_dense_data_and_zero_clusters_exact() {
    if !have(
        "convert_keeps_dense_data_and_zero_clusters_exact",
        &["qemu-img"],
    ) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let raw = dir.path().join("mixed.img");
    // Noise, zeros written explicitly (allocated, not holes), noise at unaligned places.
    let mut data = noise(24 << 20, 7);
    data[3 << 20..9 << 20].fill(0);
    data[(12 << 20) + 100..(12 << 20) + 70_000].fill(0);
    std::fs::write(&raw, &data).unwrap();
    for fmt in ["qcow2", "vdi", "vmdk"] {
        let img = dir.path().join(format!("m.{fmt}"));
        ok(&["convert", "-q", s(&raw), s(&img)]);
        assert_clean(&img, fmt);
        assert_identical(&raw, "raw", &img, fmt);
        let back = dir.path().join(format!("m-{fmt}.img"));
        ok(&["convert", "-q", s(&img), s(&back)]);
        assert_eq!(std::fs::read(&back).unwrap(), data, "{fmt} round trip");
    }
    // The 6 MiB of zeros took no qcow2 clusters.
    let q = dir.path().join("m.qcow2");
    let used = qemu_info(&q)["actual-size"].as_u64().unwrap();
    assert!(
        used < (24 - 5) << 20,
        "qcow2 of 24M with 6M zeros uses {used}"
    );
}

/// The guest offset of the first 64 KiB cluster of the qcow2 `img` whose data starts at or
/// past host offset `cut`, from `qemu-img map` (taken before the file is cut there).
fn first_cluster_past(img: &Path, cut: u64) -> u64 {
    let map: Value = serde_json::from_str(&qemu_img(&["map", "--output=json", s(img)])).unwrap();
    let mut first = u64::MAX;
    for e in map.as_array().unwrap() {
        let (Some(start), Some(host)) = (e["start"].as_u64(), e["offset"].as_u64()) else {
            continue;
        };
        let len = e["length"].as_u64().unwrap();
        let mut g = start;
        while g < start + len {
            if host + (g - start) >= cut {
                first = first.min(g);
                break;
            }
            g += 64 << 10;
        }
    }
    assert_ne!(
        first,
        u64::MAX,
        "{} holds no data past {cut}",
        img.display()
    );
    first
}

#[test]
fn commit_of_a_truncated_overlay_names_it_and_the_guest_offset() {
    if !have(
        "commit_of_a_truncated_overlay_names_it_and_the_guest_offset",
        &["qemu-img", "qemu-io"],
    ) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().join("base.img");
    std::fs::write(&base, vec![0x11u8; 8 << 20]).unwrap();
    let top = dir.path().join("top.qcow2");
    ok(&["overlay", "-q", s(&base), s(&top)]);
    let (w, text) = tool(
        "qemu-io",
        &["-f", "qcow2", "-c", "write -P 0x5a 1M 4M", s(&top)],
    );
    assert!(w, "{text}");
    let len = std::fs::metadata(&top).unwrap().len();
    let lost = first_cluster_past(&top, len - (1 << 20));
    let f = std::fs::OpenOptions::new().write(true).open(&top).unwrap();
    f.set_len(len - (1 << 20)).unwrap();
    drop(f);
    let before = sha256(&base);
    fails(
        &["commit", s(&top)],
        1,
        &format!(
            "top.qcow2: mapping what it holds: Input/output error at guest offset {lost} \
             (the image is truncated or corrupt)"
        ),
    );
    assert_eq!(sha256(&base), before, "a failed commit wrote the base");
}

#[test]
fn convert_of_a_truncated_qcow2_fails_and_leaves_dst_alone() {
    if !have(
        "convert_of_a_truncated_qcow2_fails_and_leaves_dst_alone",
        &["qemu-img"],
    ) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let raw = dir.path().join("src.img");
    std::fs::write(&raw, noise(8 << 20, 3)).unwrap();
    let qcow = dir.path().join("cut.qcow2");
    qemu_img(&["convert", "-f", "raw", "-O", "qcow2", s(&raw), s(&qcow)]);
    let len = std::fs::metadata(&qcow).unwrap().len();
    let lost = first_cluster_past(&qcow, len / 2);
    // Data clusters cut off: the L2 tables point past the end.
    let f = std::fs::OpenOptions::new().write(true).open(&qcow).unwrap();
    f.set_len(len / 2).unwrap();
    drop(f);
    let out = dir.path().join("out.img");
    fails(&["convert", s(&qcow), s(&out)], 1, "truncated");
    // The message names the image and the first guest offset whose data is gone.
    fails(
        &["convert", s(&qcow), s(&out)],
        1,
        &format!("cut.qcow2: mapping its data: Input/output error at guest offset {lost} "),
    );
    assert!(!out.exists(), "a failed convert left {}", out.display());
    let names: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names.len(), 2, "leftovers: {names:?}");
    // An existing DST (with --force) stays as it was.
    std::fs::write(&out, b"keep me").unwrap();
    fails(&["convert", "--force", s(&qcow), s(&out)], 1, "cut.qcow2");
    assert_eq!(std::fs::read(&out).unwrap(), b"keep me");
    // A header cut short is refused at open, with the reason.
    let f = std::fs::OpenOptions::new().write(true).open(&qcow).unwrap();
    f.set_len(50).unwrap();
    drop(f);
    fails(&["convert", "--force", s(&qcow), s(&out)], 1, "truncated");
    assert_eq!(std::fs::read(&out).unwrap(), b"keep me");
    // Usage errors exit 2.
    fails(&["convert", s(&qcow)], 2, "DST");
    fails(&["convert", s(&qcow), s(&out), "--format", "qed"], 2, "qed");
}

#[test]
fn overlay_chain_leaves_base_alone_and_commit_folds_it_down() {
    if !have(
        "overlay_chain_leaves_base_alone_and_commit_folds_it_down",
        &["qemu-img", "sfdisk", "fsck.fat"],
    ) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let base = fat_disk(dir.path(), "base.img", "256M");
    std::fs::create_dir(dir.path().join("sub")).unwrap();
    let mid = dir.path().join("sub/mid.qcow2");
    let top = dir.path().join("top.qcow2");
    ok(&["overlay", "-q", s(&base), s(&mid)]);
    ok(&["overlay", "-q", s(&mid), s(&top)]);
    fails(&["overlay", s(&base), s(&top)], 1, "exists");
    let base_sum = sha256(&base);
    let mid_sum = sha256(&mid);
    // Written through vuimg: a file into the FAT partition of the top overlay.
    let note = dir.path().join("note.txt");
    std::fs::write(&note, "written into the overlay\n").unwrap();
    ok(&["cp", s(&note), &format!("{}@1:/", s(&top))]);
    assert_eq!(
        ok(&["cat", &format!("{}@1:/note.txt", s(&top))]),
        "written into the overlay\n"
    );
    assert_eq!(sha256(&base), base_sum, "a write reached the base");
    assert_eq!(sha256(&mid), mid_sum, "a write reached the middle layer");
    assert_clean(&top, "qcow2");
    // qemu sees the chain, with relative names and recorded formats.
    let chain: Value = serde_json::from_str(&qemu_img(&[
        "info",
        "--backing-chain",
        "--output=json",
        s(&top),
    ]))
    .unwrap();
    let chain = chain.as_array().unwrap();
    let formats: Vec<&str> = chain
        .iter()
        .map(|i| i["format"].as_str().unwrap())
        .collect();
    assert_eq!(formats, ["qcow2", "qcow2", "raw"]);
    assert_eq!(chain[0]["backing-filename"], "sub/mid.qcow2");
    assert_eq!(chain[0]["backing-filename-format"], "qcow2");
    assert_eq!(chain[1]["backing-filename"], "../base.img");
    assert_eq!(chain[1]["backing-filename-format"], "raw");
    // What the overlay shows, as qemu reads it.
    let shown = dir.path().join("shown.raw");
    qemu_img(&["convert", "-O", "raw", s(&top), s(&shown)]);
    // Commit the top into the middle layer, then the middle into the base.
    ok(&["commit", "-q", s(&top)]);
    assert_identical(&mid, "qcow2", &shown, "raw");
    assert_clean(&mid, "qcow2");
    assert_eq!(sha256(&base), base_sum, "commit went past the backing file");
    assert_identical(&top, "qcow2", &shown, "raw");
    ok(&["commit", "-q", s(&mid)]);
    assert_identical(&base, "raw", &shown, "raw");
    assert_eq!(
        ok(&["cat", &format!("{}@1:/note.txt", s(&base))]),
        "written into the overlay\n"
    );
    fsck_fat(&base, 1, dir.path());
    // A raw image has nothing below it.
    fails(&["commit", s(&base)], 1, "no backing file");
}

#[test]
fn commit_refuses_a_backing_file_in_use() {
    if !have(
        "commit_refuses_a_backing_file_in_use",
        &["qemu-img", "qemu-io"],
    ) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().join("base.img");
    std::fs::write(&base, vec![0u8; 4 << 20]).unwrap();
    let top = dir.path().join("top.qcow2");
    ok(&["overlay", "-q", s(&base), s(&top)]);
    let (w, text) = tool(
        "qemu-io",
        &["-f", "qcow2", "-c", "write -P 0x5a 65536 131072", s(&top)],
    );
    assert!(w, "{text}");
    // Another program reading the base: commit must not write under it.
    let mut reader = std::process::Command::new("qemu-io")
        .args(["-f", "raw", "-r", s(&base)])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(300));
    let before = sha256(&base);
    fails(&["commit", s(&top)], 1, "in use");
    drop(reader.stdin.take());
    reader.wait().unwrap();
    assert_eq!(sha256(&base), before);
    ok(&["commit", "-q", s(&top)]);
    let data = std::fs::read(&base).unwrap();
    assert!(data[65536..196608].iter().all(|&b| b == 0x5a));
    assert!(data[..65536].iter().all(|&b| b == 0));
    assert!(data[196608..].iter().all(|&b| b == 0));
}

#[test]
fn commit_writes_the_overlays_own_data_and_zero_clusters_only() {
    if !have(
        "commit_writes_the_overlays_own_data_and_zero_clusters_only",
        &["qemu-img", "qemu-io"],
    ) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().join("base.img");
    std::fs::write(&base, vec![0x11u8; 4 << 20]).unwrap();
    let top = dir.path().join("top.qcow2");
    ok(&["overlay", "-q", s(&base), s(&top)]);
    for cmd in ["write -z 1M 128k", "write -P 0x5a 2M 64k"] {
        let (w, text) = tool("qemu-io", &["-f", "qcow2", "-c", cmd, s(&top)]);
        assert!(w, "{text}");
    }
    let map = qemu_img(&["map", "--output=json", s(&top)]);
    assert!(
        map.contains("\"zero\": true, \"data\": false"),
        "no zero cluster: {map}"
    );
    let shown = dir.path().join("shown.raw");
    qemu_img(&["convert", "-O", "raw", s(&top), s(&shown)]);
    ok(&["commit", "-q", s(&top)]);
    // The zero cluster hid the base's bytes: they are zeros now; what the overlay does
    // not hold (read alone, zeros) was not written over the base.
    let data = std::fs::read(&base).unwrap();
    assert!(data[1 << 20..(1 << 20) + (128 << 10)]
        .iter()
        .all(|&b| b == 0));
    assert!(data[2 << 20..(2 << 20) + (64 << 10)]
        .iter()
        .all(|&b| b == 0x5a));
    assert!(data[..1 << 20].iter().all(|&b| b == 0x11));
    assert!(data[(2 << 20) + (64 << 10)..].iter().all(|&b| b == 0x11));
    assert_identical(&base, "raw", &shown, "raw");
}

#[test]
fn uml_overlay_is_what_uml_mkcow_makes_and_commit_matches_uml_moo() {
    if !have(
        "uml_overlay_is_what_uml_mkcow_makes_and_commit_matches_uml_moo",
        &["uml_mkcow", "uml_moo", "qemu-img", "sfdisk"],
    ) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let base = fat_disk(dir.path(), "root.img", "96M");
    let cow = dir.path().join("root.cow");
    ok(&["overlay", "-q", "--format", "uml", s(&base), s(&cow)]);
    // Same file as uml_mkcow's.
    let mk = dir.path().join("mk.cow");
    let (made, text) = tool("uml_mkcow", &["-f", s(&mk), s(&base)]);
    assert!(made, "uml_mkcow: {text}");
    assert_eq!(
        std::fs::metadata(&cow).unwrap().len(),
        std::fs::metadata(&mk).unwrap().len()
    );
    assert_eq!(
        std::fs::read(&cow).unwrap()[..4128],
        std::fs::read(&mk).unwrap()[..4128],
        "header differs from uml_mkcow's"
    );
    let base_sum = sha256(&base);
    let note = dir.path().join("note.txt");
    std::fs::write(&note, "written into the COW file\n").unwrap();
    ok(&["cp", s(&note), &format!("{}@1:/", s(&cow))]);
    assert_eq!(sha256(&base), base_sum, "a write reached the backing file");
    // uml_moo accepts it; our merge is byte-identical to uml_moo's.
    let moo = dir.path().join("moo.img");
    let (merged, text) = tool("uml_moo", &[s(&cow), s(&moo)]);
    assert!(merged, "uml_moo: {text}");
    let ours = dir.path().join("merged.img");
    ok(&["commit", "-q", s(&cow), s(&ours)]);
    assert_identical(&moo, "raw", &ours, "raw");
    assert_eq!(sha256(&moo), sha256(&ours));
    assert_eq!(
        ok(&["cat", &format!("{}@1:/note.txt", s(&ours))]),
        "written into the COW file\n"
    );
    // By extension, a merged qcow2.
    let as_qcow = dir.path().join("merged.qcow2");
    ok(&["commit", "-q", s(&cow), s(&as_qcow)]);
    assert_identical(&moo, "raw", &as_qcow, "qcow2");
    // In place, as `uml_moo -d` does on a copy.
    let copy = dir.path().join("copy.img");
    let copy_cow = dir.path().join("copy.cow");
    for (from, to) in [(&base, &copy), (&cow, &copy_cow)] {
        let (copied, text) = tool("cp", &["-p", s(from), s(to)]);
        assert!(copied, "{text}");
    }
    let (inplace, text) = tool("uml_moo", &["-d", "-b", s(&copy), s(&copy_cow)]);
    assert!(inplace, "uml_moo -d: {text}");
    ok(&["commit", "-q", s(&cow)]);
    assert_eq!(sha256(&base), sha256(&copy), "in-place commit differs");
    assert_eq!(sha256(&base), sha256(&moo));
    // The overlay still opens (it took the base's new mtime).
    assert_eq!(
        ok(&["cat", &format!("{}@1:/note.txt", s(&cow))]),
        "written into the COW file\n"
    );
    // A UML overlay's backing file is raw.
    let q = dir.path().join("b.qcow2");
    ok(&["convert", "-q", s(&base), s(&q)]);
    fails(
        &[
            "overlay",
            "--format",
            "uml",
            s(&q),
            s(&dir.path().join("x.cow")),
        ],
        1,
        "raw",
    );
    assert!(!dir.path().join("x.cow").exists());
}

#[test]
fn info_json_agrees_with_qemu_img_info() {
    if !have("info_json_agrees_with_qemu_img_info", &["qemu-img"]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().join("base.img");
    std::fs::write(&base, noise(3 << 20, 5)).unwrap();
    let mid = dir.path().join("mid.qcow2");
    let top = dir.path().join("top.qcow2");
    ok(&["overlay", "-q", s(&base), s(&mid)]);
    ok(&["overlay", "-q", s(&mid), s(&top)]);
    let (w, text) = tool(
        "qemu-io",
        &["-f", "qcow2", "-c", "write -P 7 0 200k", s(&top)],
    );
    assert!(w, "{text}");
    let vdi = dir.path().join("d.vdi");
    let vmdk = dir.path().join("d.vmdk");
    qemu_img(&["convert", "-O", "vdi", s(&base), s(&vdi)]);
    qemu_img(&["convert", "-O", "vmdk", s(&base), s(&vmdk)]);
    for img in [&top, &mid, &base, &vdi, &vmdk] {
        let ours: Value = serde_json::from_str(&ok(&["info", "--json", s(img)])).unwrap();
        let theirs = qemu_info(img);
        for key in [
            "format",
            "virtual-size",
            "actual-size",
            "backing-filename",
            "backing-filename-format",
            "full-backing-filename",
        ] {
            assert_eq!(ours[key], theirs[key], "{}: {key}", img.display());
        }
    }
    let ours: Value = serde_json::from_str(&ok(&["info", "--json", s(&top)])).unwrap();
    assert_eq!(ours["backing-filename"], "mid.qcow2");
    assert_eq!(ours["backing-image"]["format"], "qcow2");
    assert_eq!(ours["backing-image"]["backing-filename"], "base.img");
    assert_eq!(ours["backing-image"]["backing-image"]["format"], "raw");
    assert_eq!(ours["allocated-bytes"], 4 * 65536);
    assert!(ours["backing-image"]["backing-image"]["backing-image"].is_null());
    // The text form names every level.
    let text = ok(&["info", s(&top)]);
    assert!(text.contains("file format: qcow2"), "{text}");
    assert!(
        text.contains("virtual size: 3 MiB (3145728 bytes)"),
        "{text}"
    );
    assert!(text.contains("backing file: mid.qcow2"), "{text}");
    assert_eq!(text.matches("image: ").count(), 3, "{text}");
    fails(&["info", s(&dir.path().join("none.img"))], 1, "none.img");
}

#[test]
fn create_makes_each_format_and_grow_refuses_non_raw() {
    if !have(
        "create_makes_each_format_and_grow_refuses_non_raw",
        &["qemu-img", "sfdisk", "fsck.fat"],
    ) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    for (name, flag, fmt) in [
        ("a.qcow2", None, "qcow2"),
        ("b.vdi", None, "vdi"),
        ("c.vmdk", None, "vmdk"),
        ("d.bin", Some("vmdk"), "vmdk"),
        ("e.img", None, "raw"),
    ] {
        let img = dir.path().join(name);
        let mut args = vec!["create", s(&img), "96M"];
        if let Some(f) = flag {
            args.extend(["--format", f]);
        }
        ok(&args);
        let info = qemu_info(&img);
        assert_eq!(info["format"], fmt, "{name}");
        assert_eq!(info["virtual-size"], 96u64 << 20, "{name}");
        if fmt != "raw" {
            assert_clean(&img, fmt);
        }
        // Partitioned, formatted and written through vuimg; qemu reads a clean FAT.
        ok(&["part", "new", s(&img), "mbr"]);
        ok(&["part", "add", s(&img), "fat32"]);
        ok(&["format", "-q", &format!("{}@1", s(&img)), "fat32"]);
        let f = dir.path().join("f.txt");
        std::fs::write(&f, name).unwrap();
        ok(&["cp", s(&f), &format!("{}@1:/", s(&img))]);
        assert_eq!(ok(&["cat", &format!("{}@1:/f.txt", s(&img))]), name);
        if fmt != "raw" {
            assert_clean(&img, fmt);
            let raw = dir.path().join("as-raw.img");
            qemu_img(&["convert", "-O", "raw", s(&img), s(&raw)]);
            fsck_fat(&raw, 1, dir.path());
            std::fs::remove_file(&raw).unwrap();
            // grow would truncate the container, not the disk: refused.
            let before = sha256(&img);
            fails(&["grow", s(&img), "200M"], 1, &format!("is a {fmt} image"));
            assert_eq!(sha256(&img), before);
        }
        fails(&["create", s(&img), "1M"], 1, "exists");
    }
    ok(&["grow", s(&dir.path().join("e.img")), "128M"]);
    assert_eq!(
        std::fs::metadata(dir.path().join("e.img")).unwrap().len(),
        128 << 20
    );
}

/// Waits (at most 5 s) for a server to create its socket `sock`.
fn wait_for_socket(sock: &Path) {
    for _ in 0..200 {
        if sock.exists() {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(25));
    }
}

/// An NBD server for `img` on a Unix socket in `dir`: vunbd when it was built beside
/// vuimg, else nbdkit; None (the test skips) when neither is there.
fn nbd_server(dir: &Path, img: &Path) -> Option<(std::process::Child, String)> {
    let sock = dir.join("nbd.sock");
    let vunbd = Path::new(env!("CARGO_BIN_EXE_vuimg")).with_file_name("vunbd");
    let mut cmd = if vunbd.exists() {
        let mut c = std::process::Command::new(&vunbd);
        c.args([s(img), "--name", "disk", "--unix", s(&sock)]);
        c
    } else if have("nbd_uris", &["nbdkit"]) {
        let mut c = std::process::Command::new("nbdkit");
        c.args(["-f", "-e", "disk", "--unix", s(&sock), "file"]);
        c.arg(img);
        c
    } else {
        return None;
    };
    let child = cmd.spawn().unwrap();
    wait_for_socket(&sock);
    Some((child, format!("nbd+unix:///disk?socket={}", s(&sock))))
}

#[test]
fn nbd_uris_work_wherever_an_image_does() {
    if !have("nbd_uris", &["qemu-img"]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let img = fat_disk(dir.path(), "disk.img", "80M");
    let Some((mut server, uri)) = nbd_server(dir.path(), &img) else {
        return;
    };
    let run = || -> Result<(), String> {
        // Files: ls, cat, cp in and out, through a partition of the export.
        let listing = ok(&["ls", &format!("{uri}@1:/")]);
        assert!(listing.contains("base.txt"), "{listing}");
        assert_eq!(ok(&["cat", &format!("{uri}@1:/base.txt")]), "in the base\n");
        let f = dir.path().join("new.txt");
        std::fs::write(&f, "over nbd\n").unwrap();
        ok(&["cp", s(&f), &format!("{uri}@1:/")]);
        assert_eq!(ok(&["cat", &format!("{uri}@1:/new.txt")]), "over nbd\n");
        let back = dir.path().join("back.txt");
        ok(&["cp", &format!("{uri}@1:/new.txt"), s(&back)]);
        assert_eq!(std::fs::read_to_string(&back).unwrap(), "over nbd\n");
        // Images: info, part list, convert out of the export.
        let info = ok(&["info", &uri]);
        assert!(info.contains("virtual size: 80 MiB"), "{info}");
        let parts = ok(&["part", "list", &uri]);
        assert!(parts.contains("fat32") || parts.contains('1'), "{parts}");
        let out = dir.path().join("out.qcow2");
        ok(&["convert", "-q", &uri, s(&out)]);
        assert_clean(&out, "qcow2");
        Ok(())
    };
    let res = std::panic::catch_unwind(std::panic::AssertUnwindSafe(run));
    let _ = server.kill();
    let _ = server.wait();
    res.unwrap().unwrap();
    // The export was the image itself: the converted copy equals it.
    assert_identical(&img, "raw", &dir.path().join("out.qcow2"), "qcow2");
}

/// `vuimg convert` of an NBD export reads only what the server's block status says holds
/// data (nbdkit's stats filter counts the bytes read), and the copy equals the source.
#[test]
fn convert_out_of_an_nbd_export_reads_only_its_data() {
    if !have("nbd_block_status", &["nbdkit"]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("sparse.img");
    {
        use std::os::unix::fs::FileExt;
        let f = std::fs::File::create(&img).unwrap();
        f.set_len(256 << 20).unwrap();
        let data: Vec<u8> = (0..1u32 << 20).map(|i| (i * 7 + 3) as u8).collect();
        f.write_all_at(&data, 100 << 20).unwrap();
        f.write_all_at(b"the end", (256 << 20) - 7).unwrap();
    }
    let sock = dir.path().join("nbd.sock");
    let stats = dir.path().join("stats.txt");
    let mut kit = std::process::Command::new("nbdkit")
        .args(["-f", "--unix", s(&sock), "--filter=stats", "file", s(&img)])
        .arg(format!("statsfile={}", s(&stats)))
        .spawn()
        .unwrap();
    wait_for_socket(&sock);
    let out = dir.path().join("out.raw");
    let converted = std::panic::catch_unwind(|| {
        ok(&[
            "convert",
            "-q",
            &format!("nbd+unix:///?socket={}", s(&sock)),
            s(&out),
        ])
    });
    // nbdkit writes its statistics when it exits.
    terminate(&mut kit);
    converted.unwrap();
    assert!(std::fs::read(&out).unwrap() == std::fs::read(&img).unwrap());
    let stats = std::fs::read_to_string(&stats).unwrap();
    let read_line = stats
        .lines()
        .find(|l| l.starts_with("read:"))
        .unwrap_or_else(|| panic!("no reads counted: {stats}"));
    // "read: N ops, T s, X MiB, ...": about 1 MiB of data and the last block, not 256 MiB.
    let mib: f64 = read_line
        .split(", ")
        .find_map(|f| f.strip_suffix(" MiB").and_then(|n| n.parse().ok()))
        .unwrap_or_else(|| panic!("unexpected stats line: {read_line}"));
    assert!(mib <= 4.0, "read {mib} MiB of a 1 MiB export: {read_line}");
}

/// Stops `child` with SIGTERM (so it exits cleanly) and waits for it.
fn terminate(child: &mut std::process::Child) {
    let _ = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let _ = child.wait();
}

#[test]
fn nbds_uris_reach_a_tls_only_export() {
    if !have("nbds_uris", &["nbdkit", "certtool"]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let pki = dir.path().join("pki");
    std::fs::create_dir(&pki).unwrap();
    // A CA and a server certificate for localhost, as nbdkit's docs make them.
    let script = r#"set -e
printf 'cn = CA\nca\ncert_signing_key\n' > ca.info
printf 'cn = localhost\ndns_name = localhost\ntls_www_server\nencryption_key\nsigning_key\n' > s.info
certtool --generate-privkey --outfile ca-key.pem 2>/dev/null
certtool --generate-self-signed --load-privkey ca-key.pem --template ca.info --outfile ca-cert.pem >/dev/null 2>&1
certtool --generate-privkey --outfile server-key.pem 2>/dev/null
certtool --generate-certificate --load-ca-certificate ca-cert.pem --load-ca-privkey ca-key.pem \
  --load-privkey server-key.pem --template s.info --outfile server-cert.pem >/dev/null 2>&1"#;
    let made = std::process::Command::new("sh")
        .args(["-c", script])
        .current_dir(&pki)
        .status()
        .unwrap();
    assert!(made.success(), "certtool failed");
    let sock = dir.path().join("tls.sock");
    let mut kit = std::process::Command::new("nbdkit")
        .args(["-f", "-U", s(&sock), "--tls=require", "--tls-certificates"])
        .arg(&pki)
        .args(["memory", "24M"])
        .spawn()
        .unwrap();
    wait_for_socket(&sock);
    let uri = format!(
        "nbds+unix:///?socket={}&tls-certificates={}",
        s(&sock),
        s(&pki)
    );
    let (info_ok, info) = tool(env!("CARGO_BIN_EXE_vuimg"), &["info", &uri]);
    let (plain_ok, plain) = tool(
        env!("CARGO_BIN_EXE_vuimg"),
        &["info", &format!("nbd+unix:///?socket={}", s(&sock))],
    );
    let _ = kit.kill();
    let _ = kit.wait();
    assert!(info_ok, "{info}");
    assert!(info.contains("virtual size: 24 MiB"), "{info}");
    assert!(!plain_ok, "{plain}");
    assert!(plain.contains("TLS"), "{plain}");
}

/// Bytes `vuimg convert SRC DST` reads with pread(2) (image data and metadata; a few KiB of
/// shared libraries besides), counted by strace; the conversion must succeed.
fn convert_counting_reads(src: &Path, dst: &Path) -> u64 {
    let log = dst.with_extension("strace");
    let (done, text) = tool(
        "strace",
        &[
            "-f",
            "-qq",
            "-e",
            "trace=pread64",
            "-o",
            s(&log),
            env!("CARGO_BIN_EXE_vuimg"),
            "convert",
            "-q",
            s(src),
            s(dst),
        ],
    );
    assert!(done, "vuimg convert {}: {text}", src.display());
    let trace = std::fs::read_to_string(&log).unwrap();
    // "PID pread64(fd, ..., len, off) = N", or split into "<unfinished ...>" and
    // "<... pread64 resumed>) = N" when threads interleave.
    trace
        .lines()
        .filter(|l| l.contains("pread64"))
        .filter_map(|l| {
            l.rsplit_once(" = ")?
                .1
                .split_whitespace()
                .next()?
                .parse::<u64>()
                .ok()
        })
        .sum()
}

#[test]
fn convert_to_raw_starts_the_writeback_while_it_copies() {
    if !have(
        "convert_to_raw_starts_the_writeback_while_it_copies",
        &["strace", "qemu-img"],
    ) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let raw = dir.path().join("src.img");
    std::fs::write(&raw, noise(64 << 20, 5)).unwrap();
    let qcow = dir.path().join("src.qcow2");
    qemu_img(&["convert", "-f", "raw", "-O", "qcow2", s(&raw), s(&qcow)]);
    let out = dir.path().join("out.raw");
    let trace = traced_convert(&qcow, &out, &dir.path().join("trace"));
    // Every 16 MiB written, the writeback of what was written is started; the final
    // flush then has little left to wait for.
    let starts = trace.matches("POSIX_FADV_DONTNEED").count();
    assert!(
        starts >= 3,
        "{starts} writeback starts for 64 MiB:\n{trace}"
    );
    assert!(trace.contains("fdatasync("), "no flush:\n{trace}");
    assert_identical(&qcow, "qcow2", &out, "raw");
}

/// `vuimg convert -q SRC OUT` under strace, its fadvise64 and fdatasync calls logged to
/// `log`: the log's text (the conversion must succeed).
fn traced_convert(src: &Path, out: &Path, log: &Path) -> String {
    let (done, text) = tool(
        "strace",
        &[
            "-f",
            "-qq",
            "-e",
            "trace=fadvise64,fdatasync",
            "-o",
            s(log),
            env!("CARGO_BIN_EXE_vuimg"),
            "convert",
            "-q",
            s(src),
            s(out),
        ],
    );
    assert!(done, "{} -> {}: {text}", src.display(), out.display());
    std::fs::read_to_string(log).unwrap()
}

#[test]
fn convert_to_qcow2_vdi_and_vmdk_starts_the_writeback_while_it_copies() {
    if !have(
        "convert_to_qcow2_vdi_and_vmdk_starts_the_writeback_while_it_copies",
        &["strace", "qemu-img"],
    ) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let raw = dir.path().join("src.img");
    std::fs::write(&raw, noise(64 << 20, 7)).unwrap();
    for fmt in ["qcow2", "vdi", "vmdk"] {
        let out = dir.path().join(format!("out.{fmt}"));
        let trace = traced_convert(&raw, &out, &dir.path().join(format!("trace.{fmt}")));
        // The image file is written front to back (data appended, metadata in place):
        // every 16 MiB appended, the writeback of what was written is started.
        let starts = trace.matches("POSIX_FADV_DONTNEED").count();
        assert!(
            starts >= 3,
            "{fmt}: {starts} writeback starts for 64 MiB:\n{trace}"
        );
        assert!(trace.contains("fdatasync("), "{fmt}: no flush:\n{trace}");
        assert_identical(&raw, "raw", &out, fmt);
        assert_clean(&out, fmt);
    }
}

fn qemu_io(img: &Path, fmt: &str, cmd: &str) {
    let (done, text) = tool("qemu-io", &["-f", fmt, "-c", cmd, s(img)]);
    assert!(done, "qemu-io {cmd}: {text}");
}

/// A sparse raw file of `size` bytes with `runs` (offset, length) of nonzero bytes.
fn sparse_raw(path: &Path, size: u64, runs: &[(u64, usize)]) {
    use std::os::unix::fs::FileExt;
    let f = std::fs::File::create(path).unwrap();
    f.set_len(size).unwrap();
    for &(at, len) in runs {
        let data: Vec<u8> = (0..len).map(|i| (i % 251 + 1) as u8).collect();
        f.write_all_at(&data, at).unwrap();
    }
}

/// Converts `src` (of format `fmt`, holding `data` bytes of data in a 256 MiB disk) to raw:
/// the result is identical (qemu-img compare), sparse, and no more than the data and the
/// metadata was read.
fn converts_reading_only_data(src: &Path, fmt: &str, data: u64) {
    const SLACK: u64 = 2 << 20;
    let out = src.with_file_name(format!(
        "{}.out.raw",
        src.file_name().unwrap().to_string_lossy()
    ));
    let read = convert_counting_reads(src, &out);
    assert!(
        read <= data + SLACK,
        "{}: read {read} bytes for {data} bytes of data",
        src.display()
    );
    assert_identical(src, fmt, &out, "raw");
    use std::os::unix::fs::MetadataExt;
    let on_disk = std::fs::metadata(&out).unwrap().blocks() * 512;
    assert!(
        on_disk <= data + SLACK,
        "{}: output holds {on_disk} bytes",
        src.display()
    );
}

#[test]
fn convert_reads_only_the_data_of_each_format() {
    if !have(
        "convert_reads_only_the_data_of_each_format",
        &["strace", "qemu-img", "qemu-io"],
    ) {
        return;
    }
    const MIB: u64 = 1 << 20;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let raw = d.join("disk.raw");
    sparse_raw(&raw, 256 * MIB, &[(MIB, 4096), (100 * MIB, MIB as usize)]);
    converts_reading_only_data(&raw, "raw", MIB + 4096);

    // VMDK, sparse (with a zeroed grain), as a backing file of a qcow2 chain.
    let vmdk = d.join("base.vmdk");
    qemu_img(&[
        "create",
        "-q",
        "-f",
        "vmdk",
        "-o",
        "zeroed_grain=on",
        s(&vmdk),
        "256M",
    ]);
    qemu_io(&vmdk, "vmdk", "write -P 1 10M 1M");
    qemu_io(&vmdk, "vmdk", "write -z 10M 64k");
    qemu_io(&vmdk, "vmdk", "write -P 2 255M 4k");
    converts_reading_only_data(&vmdk, "vmdk", MIB + 64 * 1024);
    let mid = d.join("mid.qcow2");
    qemu_img(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-F",
        "vmdk",
        "-b",
        "base.vmdk",
        s(&mid),
        "256M",
    ]);
    qemu_io(&mid, "qcow2", "write -P 3 100M 512k");
    qemu_io(&mid, "qcow2", "write -z 10M 512k");
    let top = d.join("top.qcow2");
    qemu_img(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-F",
        "qcow2",
        "-b",
        "mid.qcow2",
        s(&top),
        "256M",
    ]);
    qemu_io(&top, "qcow2", "write -c -P 4 200M 256k");
    converts_reading_only_data(&top, "qcow2", 3 * MIB);

    let stream = d.join("stream.vmdk");
    qemu_img(&[
        "convert",
        "-f",
        "raw",
        "-O",
        "vmdk",
        "-o",
        "subformat=streamOptimized",
        s(&raw),
        s(&stream),
    ]);
    converts_reading_only_data(&stream, "vmdk", 2 * MIB);
    let flat = d.join("flat.vmdk");
    qemu_img(&[
        "create",
        "-q",
        "-f",
        "vmdk",
        "-o",
        "subformat=monolithicFlat",
        s(&flat),
        "256M",
    ]);
    qemu_io(&flat, "vmdk", "write -P 5 7M 1M");
    // Before the device-layer map, a flat extent's holes were read (256 MiB of preads).
    converts_reading_only_data(&flat, "vmdk", MIB);
    // A qcow2 over the flat VMDK: the chain's map goes down to the flat file's holes.
    let over = d.join("over-flat.qcow2");
    qemu_img(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-F",
        "vmdk",
        "-b",
        "flat.vmdk",
        s(&over),
        "256M",
    ]);
    qemu_io(&over, "qcow2", "write -P 6 30M 1M");
    converts_reading_only_data(&over, "qcow2", 2 * MIB);

    let vdi = d.join("disk.vdi");
    qemu_img(&["create", "-q", "-f", "vdi", s(&vdi), "256M"]);
    qemu_io(&vdi, "vdi", "write -P 6 3M 4k");
    qemu_io(&vdi, "vdi", "write -P 6 150M 1M");
    converts_reading_only_data(&vdi, "vdi", 2 * MIB);
}

#[test]
fn convert_of_a_32_gib_sparse_vmdk_skips_its_holes() {
    // A sparse VMDK's holes cost no pread even when read, so what shows a copy that walks
    // them is CPU time: 32 GiB of zeros filled and checked take seconds (measured: 2.7 s
    // of CPU for 16 GiB, release build, before the device-layer map), the grain tables
    // of 1 MiB of data milliseconds.
    if !have(
        "convert_of_a_32_gib_sparse_vmdk_skips_its_holes",
        &["qemu-img", "qemu-io", "/usr/bin/time"],
    ) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("big.vmdk");
    qemu_img(&["create", "-q", "-f", "vmdk", s(&img), "32G"]);
    qemu_io(&img, "vmdk", "write -P 1 20G 1M");
    let out = dir.path().join("big.raw");
    let (done, text) = tool(
        "/usr/bin/time",
        &[
            "-f",
            "cpu %U %S",
            env!("CARGO_BIN_EXE_vuimg"),
            "convert",
            "-q",
            s(&img),
            s(&out),
        ],
    );
    assert!(done, "vuimg convert: {text}");
    let cpu: f64 = text
        .lines()
        .find_map(|l| l.strip_prefix("cpu "))
        .unwrap_or_else(|| panic!("no time line: {text}"))
        .split_whitespace()
        .map(|t| t.parse::<f64>().unwrap())
        .sum();
    assert!(cpu < 1.5, "{cpu} s of CPU to convert 1 MiB of data");
    assert_identical(&img, "vmdk", &out, "raw");
}
