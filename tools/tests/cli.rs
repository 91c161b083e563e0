//! vuimg from the outside: exit codes, messages, tables checked by sfdisk, and
//! failed commands leaving the image byte-for-byte unchanged.

mod common;

use common::*;
use std::process::Command;

#[test]
fn builds_a_card_image_that_sfdisk_agrees_with() {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("card.img");
    ok(&["create", s(&img), "256M"]);
    assert_eq!(std::fs::metadata(&img).unwrap().len(), 256 << 20);
    ok(&["part", "new", s(&img), "mbr", "--id", "0xabcdef01"]);
    assert_eq!(
        ok(&[
            "part",
            "add",
            s(&img),
            "fat32",
            "--size",
            "64M",
            "--bootable"
        ])
        .trim(),
        "1"
    );
    assert_eq!(ok(&["part", "add", s(&img), "linux"]).trim(), "2");
    let ours: serde_json::Value =
        serde_json::from_str(&ok(&["part", "list", s(&img), "--json"])).unwrap();
    let sfdisk = Command::new("sfdisk")
        .args(["--json", s(&img)])
        .output()
        .unwrap();
    let theirs: serde_json::Value = serde_json::from_slice(&sfdisk.stdout).unwrap();
    assert_eq!(ours, theirs, "vuimg --json must equal sfdisk --json");
}

#[test]
fn gpt_edits_pass_sgdisk_verify() {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("gpt.img");
    ok(&["create", s(&img), "128M"]);
    ok(&["part", "new", s(&img), "gpt"]);
    ok(&[
        "part",
        "add",
        s(&img),
        "efi",
        "--size",
        "32M",
        "--name",
        "ESP",
    ]);
    ok(&[
        "part",
        "add",
        s(&img),
        "linux",
        "--size",
        "32M",
        "--name",
        "root",
    ]);
    ok(&["part", "resize", s(&img), "2", "max"]);
    ok(&[
        "part",
        "set",
        s(&img),
        "2",
        "--name",
        "rootfs",
        "--bootable",
    ]);
    let out = Command::new("sgdisk")
        .args(["-v", s(&img)])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains("No problems found"));
    let list = ok(&["part", "list", s(&img)]);
    assert!(list.contains("rootfs") && list.contains("efi"), "{list}");
}

#[test]
fn failures_exit_1_and_leave_the_image_unchanged() {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("disk.img");
    ok(&["create", s(&img), "64M"]);
    ok(&["part", "new", s(&img), "mbr"]);
    ok(&["part", "add", s(&img), "linux", "--size", "16M"]);
    let before = std::fs::read(&img).unwrap();
    fails(
        &["part", "add", s(&img), "linux", "--size", "100M"],
        1,
        "no free region fits",
    );
    fails(
        &["part", "add", s(&img), "nonsense"],
        1,
        "unknown MBR partition type",
    );
    fails(
        &["part", "add", s(&img), "linux", "--name", "x"],
        1,
        "no names",
    );
    fails(&["part", "resize", s(&img), "1", "1G"], 1, "past the end");
    fails(&["part", "del", s(&img), "3"], 1, "no partition 3");
    fails(
        &["part", "set", s(&img), "1", "--type", "extended"],
        1,
        "extended",
    );
    assert!(
        std::fs::read(&img).unwrap() == before,
        "a failed command changed the image"
    );
    fails(&["create", s(&img), "1M"], 1, "exists");
    fails(
        &["part", "list", s(&dir.path().join("absent.img"))],
        1,
        "No such file",
    );
    let blank = dir.path().join("blank.img");
    ok(&["create", s(&blank), "1M"]);
    fails(&["part", "list", s(&blank)], 1, "no partition table");
}

#[test]
fn usage_errors_exit_2() {
    fails(&["frobnicate"], 2, "unrecognized subcommand");
    fails(&["part", "new", "x.img", "apm"], 2, "invalid value");
}

#[test]
fn help_is_man_style_and_usage_errors_exit_2() {
    for args in [
        &["--help"][..],
        &["build", "--help"],
        &["cp", "--help"],
        &["format", "--help"],
        &["part", "--help"],
    ] {
        let help = ok(args);
        assert!(help.contains("EXAMPLES:"), "vuimg {args:?}: {help}");
    }
    assert!(ok(&["build", "--help"]).contains("[[partition]]"));
    fails(&["cp", "only-one"], 2, "required");
    fails(&["ls"], 2, "required");
    fails(&["format", "x.img"], 2, "required");
}

/// An image another program holds (an OFD lock, as fusefatfs, fuseext2 and qemu take) is
/// refused for writing with a message naming it; read-only commands share a reader's lock.
#[test]
fn an_image_held_by_another_program_is_not_written() {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("held.img");
    ok(&["create", s(&img), "8M"]);
    ok(&["part", "new", s(&img), "mbr"]);
    // A holder of the kind F_OFD_SETLK (37) gives: F_WRLCK (1) for a writer, F_RDLCK (0) for
    // readers, over the whole file.
    let hold = |l_type: u8| {
        let script = format!(
            "import fcntl, os, struct, sys, time\n\
             fd = os.open(sys.argv[1], os.O_RDWR)\n\
             fcntl.fcntl(fd, 37, struct.pack('hhxxxxqqixxxx', {l_type}, 0, 0, 0, 0))\n\
             print('held', flush=True)\n\
             time.sleep(60)\n"
        );
        let mut child = std::process::Command::new("python3")
            .args(["-c", &script, s(&img)])
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        std::io::BufRead::read_line(
            &mut std::io::BufReader::new(child.stdout.as_mut().unwrap()),
            &mut line,
        )
        .unwrap();
        assert_eq!(line, "held\n");
        child
    };
    let before = std::fs::read(&img).unwrap();
    let mut writer = hold(1);
    fails(
        &["part", "add", s(&img), "fat32"],
        1,
        &format!("{}: in use", img.display()),
    );
    fails(&["part", "list", s(&img)], 1, "open read-write");
    writer.kill().unwrap();
    writer.wait().unwrap();
    let mut reader = hold(0);
    ok(&["part", "list", s(&img)]);
    fails(&["part", "add", s(&img), "fat32"], 1, "open read-only");
    reader.kill().unwrap();
    reader.wait().unwrap();
    assert_eq!(
        std::fs::read(&img).unwrap(),
        before,
        "the image was not written"
    );
    ok(&["part", "add", s(&img), "fat32"]);
}

/// vuimg reads and writes VM images like raw ones: a card built raw, converted to qcow2 by
/// qemu-img, then listed, read and written through vuimg; qemu-img check stays clean.
#[test]
fn vm_images_are_addressed_like_raw_ones() {
    let (have, _) = tool("sh", &["-c", "command -v qemu-img"]);
    if !have {
        eprintln!("skipped vm_images_are_addressed_like_raw_ones: qemu-img missing");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let raw = dir.path().join("card.img");
    ok(&["create", s(&raw), "64M"]);
    ok(&["part", "new", s(&raw), "mbr"]);
    ok(&["part", "add", s(&raw), "fat32"]);
    ok(&[
        "format",
        "-q",
        &format!("{}@1", s(&raw)),
        "fat32",
        "--label",
        "BOOT",
    ]);
    let qcow = dir.path().join("card.qcow2");
    let (converted, text) = tool(
        "qemu-img",
        &["convert", "-f", "raw", "-O", "qcow2", s(&raw), s(&qcow)],
    );
    assert!(converted, "{text}");
    let list = ok(&["part", "list", s(&qcow)]);
    assert!(
        list.contains("fat32") || list.contains("0c") || list.contains("W95"),
        "{list}"
    );
    let note = dir.path().join("note.txt");
    std::fs::write(&note, "in a qcow2\n").unwrap();
    ok(&["cp", "-q", s(&note), &format!("{}@1:/", s(&qcow))]);
    assert_eq!(
        ok(&["cat", &format!("{}@1:/note.txt", s(&qcow))]),
        "in a qcow2\n"
    );
    let (clean, text) = tool("qemu-img", &["check", s(&qcow)]);
    assert!(clean && text.contains("No errors"), "{text}");
}

/// ext is made by mke2fs, which writes the image file itself: a qcow2 image is refused
/// with a message instead of being overwritten as if it were raw.
#[test]
fn ext_format_of_a_vm_image_is_refused_not_done_raw() {
    let (have, _) = tool("sh", &["-c", "command -v qemu-img"]);
    if !have {
        eprintln!("skipped ext_format_of_a_vm_image_is_refused_not_done_raw: qemu-img missing");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let qcow = dir.path().join("disk.qcow2");
    let (made, text) = tool("qemu-img", &["create", "-f", "qcow2", s(&qcow), "64M"]);
    assert!(made, "{text}");
    ok(&["part", "new", s(&qcow), "mbr"]);
    ok(&["part", "add", s(&qcow), "linux"]);
    let before = std::fs::read(&qcow).unwrap();
    fails(
        &["format", "-q", &format!("{}@1", s(&qcow)), "ext4"],
        1,
        "raw images only",
    );
    assert_eq!(std::fs::read(&qcow).unwrap(), before);
    let (clean, text) = tool("qemu-img", &["check", s(&qcow)]);
    assert!(clean, "{text}");
}

#[test]
fn resize_refuses_to_cut_off_a_filesystem_unless_forced() {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("r.img");
    ok(&["create", s(&img), "256M"]);
    ok(&["part", "new", s(&img), "gpt"]);
    ok(&["part", "add", s(&img), "linux", "--size", "100M"]);
    ok(&["part", "add", s(&img), "fat32", "--size", "64M"]);
    ok(&["part", "add", s(&img), "linux", "--size", "64M"]);
    ok(&["-q", "format", &format!("{}@1", s(&img)), "ext4"]);
    ok(&["-q", "format", &format!("{}@2", s(&img)), "fat32"]);
    ok(&["-q", "format", &format!("{}@3", s(&img)), "exfat"]);
    let before = std::fs::read(&img).unwrap();
    for (n, size, kind) in [
        (1, "50M", "ext4 of 100M"),
        (2, "32M", "FAT32"),
        (3, "8M", "exFAT"),
    ] {
        fails(&["part", "resize", s(&img), &n.to_string(), size], 1, kind);
    }
    assert!(
        std::fs::read(&img).unwrap() == before,
        "a refused resize changed the image"
    );
    // Growing, and shrinking a partition to what its filesystem spans, are fine.
    ok(&["part", "resize", s(&img), "3", "max"]);
    ok(&["part", "resize", s(&img), "3", "64M"]);
    ok(&["part", "resize", s(&img), "2", "32M", "--force"]);
    let listed = ok(&["part", "list", s(&img), "--json"]);
    let v: serde_json::Value = serde_json::from_str(&listed).unwrap();
    let sizes: Vec<u64> = v["partitiontable"]["partitions"]
        .as_array()
        .unwrap_or_else(|| panic!("no partitions in {listed}"))
        .iter()
        .map(|p| p["size"].as_u64().unwrap())
        .collect();
    assert_eq!(
        sizes,
        [204800, 65536, 131072],
        "partition 2 forced to 32 MiB: {listed}"
    );
}
