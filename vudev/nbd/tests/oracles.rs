//! vunbd against real NBD clients as oracles: nbdinfo, nbdcopy, qemu-img, qemu-io.

mod common;

use common::*;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use testkit::{run, run_ok, s};

fn image(path: &Path, len: u64) {
    std::fs::File::create(path).unwrap().set_len(len).unwrap();
}

#[test]
fn nbdinfo_reports_size_read_only_and_base_allocation_and_lists_exports() {
    if !have("nbdinfo") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("disk.img");
    image(&img, 8 << 20);
    let sock = dir.path().join("s");
    let v = Vunbd::start(
        &sock,
        &[
            s(&img),
            "--name",
            "disk",
            "--ramdisk",
            "3M",
            "--name",
            "ram",
        ],
    );
    let json = run_ok("nbdinfo", &["--json", &v.uri("disk")]);
    let info: serde_json::Value = serde_json::from_str(&json).unwrap();
    let e = &info["exports"][0];
    assert_eq!(e["export-name"], "disk");
    assert_eq!(e["export-size"], 8 << 20);
    assert_eq!(e["is_read_only"], false);
    assert_eq!(e["can_multi_conn"], true);
    assert_eq!(e["can_flush"], true);
    assert_eq!(e["can_trim"], true);
    assert!(e["contexts"]
        .as_array()
        .unwrap()
        .iter()
        .any(|c| c == "base:allocation"));
    assert_eq!(info["structured"], true);

    let list = run_ok("nbdinfo", &["--json", "--list", &v.uri("")]);
    let list: serde_json::Value = serde_json::from_str(&list).unwrap();
    let names: Vec<&str> = list["exports"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["export-name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["disk", "ram"]);
    assert_eq!(list["exports"][1]["export-size"], 3 << 20);
    drop(v);

    // --read-only shows as such.
    let v = Vunbd::start(&sock, &["--read-only", s(&img)]);
    let json = run_ok("nbdinfo", &["--json", &v.uri("disk.img")]);
    let info: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(info["exports"][0]["is_read_only"], true);
    assert_eq!(info["exports"][0]["can_trim"], false);
    // Unknown export: nbdinfo fails.
    assert!(!run("nbdinfo", &[&v.uri("nope")]).status.success());
}

#[test]
fn nbdcopy_copies_a_random_64mib_image_out_and_in() {
    if !have("nbdcopy") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("disk.img");
    let data = random_bytes(64 << 20, 1);
    std::fs::write(&img, &data).unwrap();
    let sock = dir.path().join("s");
    let v = Vunbd::start(&sock, &[s(&img)]);
    let out = dir.path().join("out.img");
    run_ok("nbdcopy", &[&v.uri("disk.img"), s(&out)]);
    assert!(
        std::fs::read(&out).unwrap() == data,
        "copied out bytes differ"
    );

    let other = dir.path().join("other.img");
    let data2 = random_bytes(64 << 20, 2);
    std::fs::write(&other, &data2).unwrap();
    run_ok("nbdcopy", &[s(&other), &v.uri("disk.img")]);
    // nbdcopy flushes at the end; vunbd's writes reached the file.
    assert!(
        std::fs::read(&img).unwrap() == data2,
        "copied in bytes differ"
    );
    assert!(v.terminate().success());
}

/// 4 KiB requests, 64 in flight on one connection: the small reads served from the page
/// cache and answered in batches (server/batch.rs), on the disk (RWF_NOWAIT) and on tmpfs
/// (always in memory), interleaved with the writes of a copy in, every byte where it belongs.
#[test]
fn nbdcopy_with_many_small_requests_in_flight_moves_every_byte() {
    if !have("nbdcopy") {
        return;
    }
    let on_disk = tempfile::tempdir().unwrap();
    let in_memory = tempfile::tempdir_in("/dev/shm").ok();
    for dir in std::iter::once(&on_disk).chain(in_memory.as_ref()) {
        let img = dir.path().join("disk.img");
        let data = random_bytes(8 << 20, 3);
        std::fs::write(&img, &data).unwrap();
        let sock = dir.path().join("s");
        let v = Vunbd::start(&sock, &[s(&img)]);
        let small = ["--request-size=4096", "--requests=64", "--connections=1"];
        let out = dir.path().join("out.img");
        let mut args: Vec<&str> = small.to_vec();
        let uri = v.uri("disk.img");
        args.extend([uri.as_str(), s(&out)]);
        run_ok("nbdcopy", &args);
        assert!(
            std::fs::read(&out).unwrap() == data,
            "{}: copied out bytes differ",
            dir.path().display()
        );
        let other = dir.path().join("other.img");
        let data2 = random_bytes(8 << 20, 4);
        std::fs::write(&other, &data2).unwrap();
        let mut args: Vec<&str> = small.to_vec();
        args.extend([s(&other), uri.as_str()]);
        run_ok("nbdcopy", &args);
        let back = dir.path().join("back.img");
        let mut args: Vec<&str> = small.to_vec();
        args.extend([uri.as_str(), s(&back)]);
        run_ok("nbdcopy", &args);
        assert!(
            std::fs::read(&back).unwrap() == data2,
            "{}: bytes read back after the copy in differ",
            dir.path().display()
        );
        assert!(v.terminate().success());
    }
}

#[test]
fn nbdcopy_keeps_a_sparse_image_sparse_thanks_to_block_status() {
    if !have("nbdcopy") || !have("nbdinfo") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("sparse.img");
    image(&img, 64 << 20);
    let chunk = random_bytes(1 << 20, 3);
    {
        use std::os::unix::fs::FileExt;
        let f = std::fs::OpenOptions::new().write(true).open(&img).unwrap();
        f.write_all_at(&chunk, 20 << 20).unwrap();
    }
    let sock = dir.path().join("s");
    let v = Vunbd::start(&sock, &[s(&img)]);
    let map = run_ok("nbdinfo", &["--map", &v.uri("sparse.img")]);
    assert!(map.contains("hole,zero"), "no holes in the map:\n{map}");
    assert!(map.contains("data"), "no data in the map:\n{map}");
    // --sparse=0 turns off nbdcopy's own zero detection: only block status can skip holes.
    let copy = |extra: &[&str]| {
        let out = dir.path().join("out.img");
        let _ = std::fs::remove_file(&out);
        image(&out, 64 << 20);
        let mut args = vec!["--sparse=0"];
        args.extend_from_slice(extra);
        let uri = v.uri("sparse.img");
        args.extend_from_slice(&[&uri, s(&out)]);
        run_ok("nbdcopy", &args);
        assert!(std::fs::read(&out).unwrap() == std::fs::read(&img).unwrap());
        std::fs::metadata(&out).unwrap().blocks() * 512
    };
    let allocated = copy(&[]);
    assert!(
        allocated < 4 << 20,
        "copy allocated {allocated} bytes for 1 MiB of data"
    );
    // The oracle discriminates: without extents the copy is fully allocated.
    let without = copy(&["--no-extents"]);
    assert!(
        without >= 60 << 20,
        "--no-extents copy allocated only {without}"
    );
}

#[test]
fn qemu_img_convert_and_qemu_io_write_go_through_the_server() {
    if !have("qemu-img") || !have("qemu-io") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("disk.img");
    let data = random_bytes(16 << 20, 4);
    std::fs::write(&img, &data).unwrap();
    let sock = dir.path().join("s");
    let v = Vunbd::start(&sock, &[s(&img), "--name", "d"]);
    let out = dir.path().join("out.raw");
    run_ok(
        "qemu-img",
        &["convert", "-f", "raw", "-O", "raw", &v.uri("d"), s(&out)],
    );
    assert!(
        std::fs::read(&out).unwrap() == data,
        "qemu-img convert differs"
    );

    let w = run_ok(
        "qemu-io",
        &["-f", "raw", "-c", "write -P 0x5a 1M 64k", &v.uri("d")],
    );
    assert!(w.contains("wrote 65536/65536"), "{w}");
    let r = run_ok(
        "qemu-io",
        &["-f", "raw", "-c", "read -P 0x5a 1M 64k", &v.uri("d")],
    );
    assert!(r.contains("read 65536/65536"), "{r}");
    let now = std::fs::read(&img).unwrap();
    assert!(now[1 << 20..(1 << 20) + 65536].iter().all(|&b| b == 0x5a));
    assert!(now[..1 << 20] == data[..1 << 20]);
    assert!(now[(1 << 20) + 65536..] == data[(1 << 20) + 65536..]);
}

#[test]
fn partition_export_serves_exactly_the_partitions_bytes() {
    if !have("sfdisk") || !have("nbdcopy") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("disk.img");
    std::fs::write(&img, random_bytes(32 << 20, 5)).unwrap();
    testkit::sh(&format!(
        "printf 'label: dos\\nstart=2048, size=8192\\nstart=16384, size=20480\\n' | sfdisk -q {}",
        s(&img)
    ));
    let whole = std::fs::read(&img).unwrap();
    let sock = dir.path().join("s");
    let v = Vunbd::start(
        &sock,
        &[&format!("{}@2", s(&img)), &format!("{}@1", s(&img))],
    );
    let out = dir.path().join("p2");
    run_ok("nbdcopy", &[&v.uri("disk.img@2"), s(&out)]);
    let p2 = std::fs::read(&out).unwrap();
    assert_eq!(p2.len(), 20480 * 512);
    assert!(p2 == whole[16384 * 512..(16384 + 20480) * 512]);
    // Writing through partition 1 lands at its offset in the image.
    if have("qemu-io") {
        run_ok(
            "qemu-io",
            &[
                "-f",
                "raw",
                "-c",
                "write -P 0x77 0 4k",
                &v.uri("disk.img@1"),
            ],
        );
        let now = std::fs::read(&img).unwrap();
        assert!(now[2048 * 512..2048 * 512 + 4096]
            .iter()
            .all(|&b| b == 0x77));
        assert!(now[..2048 * 512] == whole[..2048 * 512]);
    }
}

#[test]
fn read_only_export_refuses_writes_with_eperm() {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("disk.img");
    std::fs::write(&img, random_bytes(1 << 20, 6)).unwrap();
    let before = std::fs::read(&img).unwrap();
    let sock = dir.path().join("s");
    let _v = Vunbd::start(&sock, &["--read-only", s(&img)]);
    let (mut raw, _, flags) = Raw::go(&sock, "disk.img", false);
    assert_ne!(flags & vudev_nbd::proto::FLAG_READ_ONLY, 0);
    raw.send(vudev_nbd::proto::CMD_WRITE, 0, 9, 0, 4);
    std::io::Write::write_all(&mut raw.s, b"abcd").unwrap();
    assert_eq!(raw.simple(), (vudev_nbd::proto::NBD_EPERM, 9));
    raw.send(vudev_nbd::proto::CMD_TRIM, 0, 10, 0, 4096);
    assert_eq!(raw.simple(), (vudev_nbd::proto::NBD_EPERM, 10));
    if have("qemu-io") {
        // qemu refuses to open a read-only export for writing, or the write fails.
        let out = run(
            "qemu-io",
            &["-f", "raw", "-c", "write -P 1 0 4k", &_v.uri("disk.img")],
        );
        let text = String::from_utf8_lossy(&out.stdout).to_string()
            + &String::from_utf8_lossy(&out.stderr);
        assert!(!text.contains("wrote 4096/4096"), "{text}");
    }
    assert!(std::fs::read(&img).unwrap() == before);
}

#[test]
fn snapshot_keeps_writes_in_memory_and_the_image_unchanged() {
    if !have("qemu-io") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("disk.img");
    std::fs::write(&img, random_bytes(4 << 20, 7)).unwrap();
    let before = std::fs::read(&img).unwrap();
    let sock = dir.path().join("s");
    let v = Vunbd::start(&sock, &["--snapshot", s(&img)]);
    run_ok(
        "qemu-io",
        &[
            "-f",
            "raw",
            "-c",
            "write -P 0x33 4097 10000",
            &v.uri("disk.img"),
        ],
    );
    let r = run_ok(
        "qemu-io",
        &[
            "-f",
            "raw",
            "-c",
            "read -P 0x33 4097 10000",
            &v.uri("disk.img"),
        ],
    );
    assert!(r.contains("read 10000/10000"), "{r}");
    assert!(v.terminate().success());
    assert!(
        std::fs::read(&img).unwrap() == before,
        "snapshot wrote to the image"
    );
}

#[test]
fn usage_errors_exit_2_and_runtime_errors_exit_1_without_os_error_suffix() {
    let bin = env!("CARGO_BIN_EXE_vunbd");
    let out = run(bin, &[]);
    assert_eq!(out.status.code(), Some(2));
    let out = run(bin, &["--name", "x", "--ramdisk", "1M"]);
    assert_eq!(out.status.code(), Some(2), "--name before any export");
    let out = run(bin, &["--bogus"]);
    assert_eq!(out.status.code(), Some(2));
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("s");
    let out = run(bin, &["/nonexistent/disk.img", "--unix", s(&sock)]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("No such file or directory"), "{err}");
    assert!(!err.contains("os error"), "{err}");
    // An image held read-write by another vunbd is refused.
    let img = dir.path().join("disk.img");
    image(&img, 1 << 20);
    let _v = Vunbd::start(&sock, &[s(&img)]);
    let out = run(bin, &[s(&img), "--unix", s(&dir.path().join("s2"))]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("in use"));
}

#[test]
fn sigterm_flushes_and_removes_the_socket_and_pidfile() {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("disk.img");
    image(&img, 1 << 20);
    let sock = dir.path().join("s");
    let pid = dir.path().join("pid");
    let v = Vunbd::start(&sock, &[s(&img), "--pidfile", s(&pid)]);
    let written: u32 = std::fs::read_to_string(&pid)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert_eq!(written, v.child.as_ref().unwrap().id());
    let (mut raw, _, _) = Raw::go(&sock, "", false);
    raw.send(vudev_nbd::proto::CMD_WRITE, 0, 1, 512, 5);
    std::io::Write::write_all(&mut raw.s, b"hello").unwrap();
    assert_eq!(raw.simple(), (0, 1));
    assert!(v.terminate().success());
    assert!(!sock.exists() && !pid.exists());
    assert_eq!(&std::fs::read(&img).unwrap()[512..517], b"hello");
    assert!(raw.closed(), "connection closed at shutdown");
}

/// A qcow2 image is exported as the disk it holds: qemu-img reads through the server what
/// it reads from the image itself, and a write through the server lands in the qcow2
/// (qemu-img check clean, the raw conversion shows it).
#[test]
fn a_qcow2_image_is_exported_as_its_disk() {
    if !have("qemu-img") || !have("qemu-io") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let raw = dir.path().join("disk.raw");
    std::fs::write(&raw, random_bytes(8 << 20, 9)).unwrap();
    let qcow = dir.path().join("disk.qcow2");
    run_ok(
        "qemu-img",
        &["convert", "-f", "raw", "-O", "qcow2", s(&raw), s(&qcow)],
    );
    let sock = dir.path().join("s");
    let v = Vunbd::start(&sock, &[s(&qcow), "--name", "q"]);
    let out = dir.path().join("out.raw");
    run_ok(
        "qemu-img",
        &["convert", "-f", "raw", "-O", "raw", &v.uri("q"), s(&out)],
    );
    assert!(
        std::fs::read(&out).unwrap() == std::fs::read(&raw).unwrap(),
        "contents differ"
    );
    let w = run_ok(
        "qemu-io",
        &["-f", "raw", "-c", "write -P 0x77 2M 64k", &v.uri("q")],
    );
    assert!(w.contains("wrote 65536/65536"), "{w}");
    assert!(v.terminate().success());
    run_ok("qemu-img", &["check", s(&qcow)]);
    let r = run_ok(
        "qemu-io",
        &["-f", "qcow2", "-c", "read -P 0x77 2M 64k", s(&qcow)],
    );
    assert!(r.contains("read 65536/65536"), "{r}");
}

/// The ranges `qemu-img map --output=json` of `target` (as `format`) says do not read as
/// zeros, merged.
fn qemu_nonzero(target: &str, format: &str) -> Vec<(u64, u64)> {
    let out = run_ok("qemu-img", &["map", "--output=json", "-f", format, target]);
    let map: serde_json::Value = serde_json::from_str(&out).unwrap();
    let mut ranges: Vec<(u64, u64)> = Vec::new();
    for e in map.as_array().unwrap() {
        if e["zero"].as_bool().unwrap() {
            continue;
        }
        let (start, len) = (e["start"].as_u64().unwrap(), e["length"].as_u64().unwrap());
        match ranges.last_mut() {
            Some((s, l)) if *s + *l == start => *l += len,
            _ => ranges.push((start, len)),
        }
    }
    ranges
}

/// Block status of a qcow2 export (over a raw backing file with holes) is the image's own
/// map: qemu-img map through the server agrees with qemu-img map of the image.
#[test]
fn a_qcow2_exports_block_status_is_its_own_map() {
    if !have("qemu-img") || !have("qemu-io") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().join("base.raw");
    image(&base, 32 << 20);
    run_ok(
        "qemu-io",
        &["-f", "raw", "-c", "write -P 1 4M 1M", s(&base)],
    );
    let qcow = dir.path().join("top.qcow2");
    run_ok(
        "qemu-img",
        &[
            "create",
            "-q",
            "-f",
            "qcow2",
            "-F",
            "raw",
            "-b",
            "base.raw",
            s(&qcow),
            "32M",
        ],
    );
    for cmd in ["write -P 2 10M 256k", "write -z 4M 64k"] {
        run_ok("qemu-io", &["-f", "qcow2", "-c", cmd, s(&qcow)]);
    }
    let want = qemu_nonzero(s(&qcow), "qcow2");
    assert_eq!(
        want,
        vec![
            (4 * (1 << 20) + 65536, (1 << 20) - 65536),
            (10 << 20, 256 << 10)
        ]
    );
    let sock = dir.path().join("s");
    let v = Vunbd::start(&sock, &[s(&qcow), "--read-only", "--name", "q"]);
    assert_eq!(qemu_nonzero(&v.uri("q"), "raw"), want);
    assert!(v.terminate().success());
}
