//! vufuseext2.so under the real VUOS hypervisor: `vu_insmod vufuse`, then
//! `vumount -t vufuseext2 -o rw+`. Skips where umvu is absent.

use fusehost::tools::{pattern, run, run_status, s, sparse_file};
use fusehost::{module_path, umvu};

#[test]
fn write_read_back_umount_then_e2fsck_outside() {
    if let Some(reason) = umvu::unavailable() {
        println!("skipped: {reason}");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("home");
    umvu::install_module(&home, &module_path("vufuseext2"), "vufuseext2");
    let img = dir.path().join("ext.img");
    sparse_file(&img, 64 << 20);
    run("mke2fs", &["-q", "-F", "-t", "ext4", s(&img)]);
    let mnt = dir.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let data = dir.path().join("data.bin");
    std::fs::write(&data, pattern(2 << 20, 6)).unwrap();
    let script = format!(
        "vu_insmod vufuse
vumount -t vufuseext2 -o rw+ {img} {mnt}
mkdir -p {mnt}/a/b
cp {data} {mnt}/a/b/data.bin
ln -s b/data.bin {mnt}/a/link
cmp {data} {mnt}/a/link && echo SAME-INSIDE
readlink {mnt}/a/link
chmod 600 {mnt}/a/b/data.bin
stat -c '%a %s' {mnt}/a/b/data.bin
vuumount {mnt}
",
        img = s(&img),
        mnt = s(&mnt),
        data = s(&data)
    );
    let (code, out) = umvu::run(&home, &script, 120);
    assert_eq!(code, 0, "umvu failed:\n{out}");
    assert!(out.contains("SAME-INSIDE"), "{out}");
    assert!(out.contains("b/data.bin\n"), "{out}");
    assert!(out.contains(&format!("600 {}", 2 << 20)), "{out}");
    let (fsck, report) = run_status("e2fsck", &["-fn", s(&img)]);
    assert_eq!(fsck, 0, "{report}");
    let copied = std::process::Command::new("debugfs")
        .args(["-R", "cat /a/b/data.bin", s(&img)])
        .output()
        .unwrap();
    assert!(copied.stdout == pattern(2 << 20, 6), "data differs outside");
}
