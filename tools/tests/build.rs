//! `vuimg build` on the example SPECs, checked with the real tools; two
//! builds with SOURCE_DATE_EPOCH are byte-identical; bad SPECs fail before
//! touching the output.

mod common;
use common::*;
use std::path::Path;

fn build(spec: &Path, out: &Path, env: &[(&str, &str)]) {
    let o = vuimg_env(&["build", "-q", s(spec), "-o", s(out)], env);
    assert!(
        o.status.success(),
        "build {}: {}",
        spec.display(),
        String::from_utf8_lossy(&o.stderr)
    );
}

#[test]
fn raspberry_pi_example_passes_the_standard_tools() {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("card.img");
    build(&repo().join("images/rpi.toml"), &img, &[]);
    let (verified, text) = tool("sfdisk", &["--verify", s(&img)]);
    assert!(verified && text.contains("No errors detected"), "{text}");
    let json: serde_json::Value =
        serde_json::from_slice(&tool_bytes("sfdisk", &["--json", s(&img)])).unwrap();
    let parts = &json["partitiontable"]["partitions"];
    assert_eq!(parts[0]["type"], "c");
    assert_eq!(parts[0]["bootable"], true);
    assert_eq!(parts[1]["type"], "83");
    fsck_fat(&img, 1, dir.path());
    e2fsck(&img, 2);
    // mtools and debugfs read back the same bytes as the sources.
    let sample = repo().join("images/sample");
    let m = mtools_image(&img, 1);
    for (inside, host) in [
        ("::/config.txt", "boot/config.txt"),
        ("::/cmdline.txt", "boot/cmdline.txt"),
        ("::/overlays/README", "boot/overlays/README"),
    ] {
        assert_eq!(
            tool_bytes("mtype", &["-i", &m, inside]),
            std::fs::read(sample.join(host)).unwrap(),
            "{inside}"
        );
    }
    let minfo = String::from_utf8(tool_bytes("minfo", &["-i", &m, "::"])).unwrap();
    assert!(minfo.contains("BOOT"), "{minfo}");
    let e = e2fs_image(&img, 2);
    assert_eq!(
        tool_bytes("debugfs", &["-R", "cat /etc/hostname", &e]),
        std::fs::read(sample.join("root/etc/hostname")).unwrap()
    );
    let fstab = tool_bytes("debugfs", &["-R", "cat /etc/fstab", &e]);
    assert!(String::from_utf8_lossy(&fstab).starts_with("LABEL=rootfs / ext4"));
    // debugfs rdump of the whole root equals the sample tree (plus fstab, lost+found).
    let dump = dir.path().join("dump");
    std::fs::create_dir(&dump).unwrap();
    tool_bytes("debugfs", &["-R", &format!("rdump /etc {}", s(&dump)), &e]);
    assert_eq!(
        std::fs::read(dump.join("etc/hostname")).unwrap(),
        std::fs::read(sample.join("root/etc/hostname")).unwrap()
    );
    // And vuimg reads its own image, by partition number.
    assert_eq!(
        ok(&["cat", &format!("{}@1:/config.txt", s(&img))]).as_bytes(),
        std::fs::read(sample.join("boot/config.txt")).unwrap()
    );
}

#[test]
fn efi_example_passes_sgdisk_and_is_addressed_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("efi.img");
    build(&repo().join("images/efi.toml"), &img, &[]);
    let (_, text) = tool("sgdisk", &["-v", s(&img)]);
    assert!(text.contains("No problems found"), "{text}");
    let json: serde_json::Value =
        serde_json::from_slice(&tool_bytes("sfdisk", &["--json", s(&img)])).unwrap();
    let parts = &json["partitiontable"]["partitions"];
    assert_eq!(parts[0]["type"], "C12A7328-F81F-11D2-BA4B-00A0C93EC93B");
    assert_eq!(parts[0]["name"], "ESP");
    assert_eq!(parts[1]["name"], "root");
    fsck_fat(&img, 1, dir.path());
    e2fsck(&img, 2);
    let conf = ok(&[
        "cat",
        &format!("{}@ESP:/loader/entries/linux.conf", s(&img)),
    ]);
    assert!(conf.starts_with("title Linux"), "{conf}");
    assert_eq!(
        tool_bytes(
            "mtype",
            &["-i", &mtools_image(&img, 1), "::/loader/entries/linux.conf"]
        ),
        conf.as_bytes()
    );
    let listing = ok(&["ls", &format!("{}@root:/etc", s(&img))]);
    assert_eq!(listing.trim(), "hostname");
    // The plan as data, written nowhere.
    let planned = dir.path().join("planned.img");
    let plan: serde_json::Value = serde_json::from_str(&ok(&[
        "build",
        "--dry-run",
        "--json",
        s(&repo().join("images/efi.toml")),
        "-o",
        s(&planned),
    ]))
    .unwrap();
    assert_eq!(plan["table"], "gpt");
    assert_eq!(plan["partitions"][0]["fs"], "fat32");
    assert_eq!(plan["partitions"][0]["files"], 2);
    assert_eq!(plan["partitions"][1]["start"], parts[1]["start"]);
    assert!(!planned.exists());
}

#[test]
fn two_builds_with_source_date_epoch_are_identical() {
    let dir = tempfile::tempdir().unwrap();
    let env = [("SOURCE_DATE_EPOCH", "1700000000")];
    for spec in ["rpi", "efi"] {
        let a = dir.path().join(format!("{spec}-a.img"));
        let b = dir.path().join(format!("{spec}-b.img"));
        let path = repo().join(format!("images/{spec}.toml"));
        build(&path, &a, &env);
        // A second later: nothing may depend on the clock.
        std::thread::sleep(std::time::Duration::from_millis(1100));
        build(&path, &b, &env);
        let (same, text) = tool("cmp", &[s(&a), s(&b)]);
        assert!(same, "{spec}: two builds differ: {text}");
        e2fsck(&a, 2);
        fsck_fat(&a, 1, dir.path());
        // Times are the epoch (clamped), ids are fixed.
        let json = ok(&["ls", "--json", &format!("{}@2:/etc", s(&a))]);
        let v: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert!(v[0]["mtime"].as_i64().unwrap() <= 1_700_000_000, "{json}");
        std::fs::remove_file(&b).unwrap();
    }
    // Without the epoch, ids differ between builds.
    let c = dir.path().join("c.img");
    let d = dir.path().join("d.img");
    build(&repo().join("images/efi.toml"), &c, &[]);
    build(&repo().join("images/efi.toml"), &d, &[]);
    assert!(!tool("cmp", &["-s", s(&c), s(&d)]).0);
}

#[test]
fn bad_specs_fail_before_touching_the_output() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.img");
    std::fs::write(&out, b"the previous image").unwrap();
    let before = sha256(&out);
    let cases = [
        (
            "size = \"64M\"\ntable = \"mbr\"\n[[partition]]\nsize = \"48M\"\nfs = \"fat\"\n[[partition]]\nsize = \"32M\"\nfs = \"ext4\"\n",
            "partition 2",
            "does not fit",
        ),
        (
            "size = \"64M\"\ntable = \"mbr\"\n[[partition]]\nfs = \"fat\"\ncontents = [ { from = \"no/such/dir\", to = \"/\" } ]\n",
            "no/such/dir",
            "No such file",
        ),
        (
            "size = \"16M\"\ntable = \"mbr\"\n[[partition]]\nfs = \"fat\"\ncontents = [ { from = \"big.bin\", to = \"/big.bin\" } ]\n",
            "partition 1",
            "contents need about",
        ),
        (
            "size = \"16M\"\ntable = \"gpt\"\n[[partition]]\nfs = \"fat32\"\n",
            "FAT32",
            "cluster count",
        ),
        (
            "size = \"64M\"\ntable = \"mbr\"\n[[partition]]\nfs = \"xfs\"\n",
            "partition 1",
            "unknown filesystem",
        ),
        ("size = \"64M\"\ntable = \"mbr\"\nsurprise = 1\n", "surprise", "unknown field"),
    ];
    std::fs::write(dir.path().join("big.bin"), vec![7u8; 20 << 20]).unwrap();
    for (i, (text, culprit, why)) in cases.iter().enumerate() {
        let spec = dir.path().join(format!("bad{i}.toml"));
        std::fs::write(&spec, text).unwrap();
        let o = vuimg(&["build", s(&spec), "-o", s(&out)]);
        let stderr = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(1), "case {i}: {stderr}");
        assert!(
            stderr.contains(culprit) && stderr.contains(why),
            "case {i}: expected {culprit:?} and {why:?} in {stderr:?}"
        );
        assert_eq!(sha256(&out), before, "case {i} changed the output");
    }
    // No temporary files are left behind.
    let left: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().contains(".vuimg-"))
        .collect();
    assert!(left.is_empty());
}

/// `vuimg build SPEC -o card.qcow2` writes the VM image directly: qemu-img check is clean,
/// its raw conversion equals the raw build of the same reproducible SPEC, and vuimg reads it.
#[test]
fn build_writes_qcow2_vdi_and_vmdk_by_the_output_name() {
    let (have, _) = tool("sh", &["-c", "command -v qemu-img"]);
    if !have {
        eprintln!("skipped build_writes_qcow2_vdi_and_vmdk_by_the_output_name: qemu-img missing");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let spec = dir.path().join("vm.toml");
    std::fs::write(
        &spec,
        "size = \"48M\"\ntable = \"gpt\"\nreproducible = true\n\
         [[partition]]\nfs = \"fat32\"\nlabel = \"EFI\"\nsize = \"40M\"\n\
         contents = [ { text = \"hello\\n\", to = \"/hello.txt\" } ]\n",
    )
    .unwrap();
    let raw = dir.path().join("vm.img");
    ok(&["build", "-q", s(&spec), "-o", s(&raw)]);
    for ext in ["qcow2", "vdi", "vmdk"] {
        let img = dir.path().join(format!("vm.{ext}"));
        ok(&["build", "-q", s(&spec), "-o", s(&img)]);
        let (clean, text) = tool("qemu-img", &["check", s(&img)]);
        assert!(clean, "{ext}: {text}");
        let (same, text) = tool(
            "qemu-img",
            &["compare", "-f", ext, "-F", "raw", s(&img), s(&raw)],
        );
        assert!(same, "{ext}: {text}");
        assert_eq!(
            ok(&["cat", &format!("{}@1:/hello.txt", s(&img))]),
            "hello\n"
        );
        let leftovers: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with('.'))
            .collect();
        assert!(leftovers.is_empty(), "{leftovers:?}");
    }
}

#[test]
fn an_exfat_build_with_source_date_epoch_is_byte_reproducible() {
    let dir = tempfile::tempdir().unwrap();
    let spec = dir.path().join("x.toml");
    let sample = repo().join("images/sample");
    std::fs::write(
        &spec,
        format!(
            "size = \"64M\"\ntable = \"gpt\"\n[[partition]]\nname = \"data\"\nfs = \"exfat\"\n\
             contents = [ {{ from = \"{}\", to = \"/\" }}, {{ text = \"hi\\n\", to = \"/new/dir/motd\" }} ]\n",
            sample.display()
        ),
    )
    .unwrap();
    let env = [("SOURCE_DATE_EPOCH", "1700000000")];
    let a = dir.path().join("a.img");
    let b = dir.path().join("b.img");
    build(&spec, &a, &env);
    // A second later: creation times must come from the epoch too, not the clock.
    std::thread::sleep(std::time::Duration::from_millis(1100));
    build(&spec, &b, &env);
    let (same, text) = tool("cmp", &[s(&a), s(&b)]);
    assert!(same, "two exFAT builds differ: {text}");
    let (start, len) = partition(&a, 1);
    let part = dir.path().join("p.img");
    extract(&a, start, len, &part);
    let (clean, text) = tool("fsck.exfat", &["-n", s(&part)]);
    assert!(clean, "{text}");
    let json = ok(&["ls", "--json", &format!("{}@data:/new/dir", s(&a))]);
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert!(v[0]["mtime"].as_i64().unwrap() <= 1_700_000_000, "{json}");
}
