//! vufuseext2.so under the real VUOS hypervisor: `vu_insmod vufuse`, then
//! `vumount -t vufuseext2 -o rw+`. Skips where umvu is absent.

use fusehost::tools::{pattern, run, s, sparse_file};
use testkit::umvu;

#[test]
fn write_read_back_umount_then_e2fsck_outside() {
    let Some(env) = umvu::prologue(&["vufuse"], &["vufuseext2"]) else {
        return;
    };
    let dir = env.dir();
    let img = dir.join("ext.img");
    sparse_file(&img, 64 << 20);
    run("mke2fs", &["-q", "-F", "-t", "ext4", s(&img)]);
    let mnt = dir.join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let data = dir.join("data.bin");
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
    let (code, out) = env.run(&script, 120);
    assert_eq!(code, 0, "umvu failed:\n{out}");
    assert!(out.contains("SAME-INSIDE"), "{out}");
    assert!(out.contains("b/data.bin\n"), "{out}");
    assert!(out.contains(&format!("600 {}", 2 << 20)), "{out}");
    testkit::e2fsck_clean(&img);
    let copied = std::process::Command::new("debugfs")
        .args(["-R", "cat /a/b/data.bin", s(&img)])
        .output()
        .unwrap();
    assert!(copied.stdout == pattern(2 << 20, 6), "data differs outside");
}

/// access(2) under umvu answers from a file's POSIX ACL, as the kernel's ext4 does: a
/// named-user entry grants nobody read of a 0600 file, another refuses it a 0644 one.
#[test]
fn access_follows_the_image_acls() {
    let Some(env) = umvu::prologue(&["vufuse"], &["vufuseext2"]) else {
        return;
    };
    let dir = env.dir();
    let img = dir.join("acl.img");
    sparse_file(&img, 16 << 20);
    run("mke2fs", &["-q", "-F", "-t", "ext4", s(&img)]);
    let mnt = dir.join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    // The ACLs are set by the kernel's own ext4, on a loop mount of the image.
    let kmnt = dir.join("k");
    std::fs::create_dir(&kmnt).unwrap();
    run("mount", &["-o", "loop", s(&img), s(&kmnt)]);
    let made = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!(
            "cd '{}' && echo a > granted && chmod 600 granted && setfacl -m u:nobody:r granted \
             && echo b > refused && chmod 644 refused && setfacl -m u:nobody:- refused",
            s(&kmnt)
        ))
        .status()
        .unwrap();
    run("umount", &[s(&kmnt)]);
    assert!(made.success(), "setfacl on the kernel's ext4 failed");
    let script = format!(
        "vu_insmod vufuse
vumount -t vufuseext2 {img} {mnt}
setpriv --reuid=nobody --regid=nogroup --clear-groups sh -c 'test -r {mnt}/granted && echo GRANTED-READABLE; test -r {mnt}/refused || echo REFUSED-UNREADABLE; test -w {mnt}/granted || echo GRANTED-UNWRITABLE'
vuumount {mnt}
",
        img = s(&img),
        mnt = s(&mnt),
    );
    let (code, out) = env.run(&script, 60);
    assert_eq!(code, 0, "umvu failed:\n{out}");
    for said in [
        "GRANTED-READABLE",
        "REFUSED-UNREADABLE",
        "GRANTED-UNWRITABLE",
    ] {
        assert!(out.contains(said), "{said} missing:\n{out}");
    }
}
