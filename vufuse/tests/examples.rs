//! The examples are the trait's living documentation: built by `cargo test`, and run here.

use std::path::PathBuf;
use testkit::{run, sh};

/// Where cargo put example `name` (beside this test's own deps directory).
fn example(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let profile_dir = exe.parent().unwrap().parent().unwrap();
    let path = profile_dir.join("examples").join(name);
    assert!(
        path.is_file(),
        "{} not built: cargo test builds the examples unless a single --test is asked for",
        path.display()
    );
    path
}

#[test]
fn list_partition_lists_a_directory_of_a_fat_partition() {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("disk.img");
    sh(&format!(
        "truncate -s 40M '{0}' && printf 'start=2048, size=32768, type=c\\n' | sfdisk -q '{0}' && \
         truncate -s 16M '{0}.p1' && mkfs.fat '{0}.p1' >/dev/null && \
         mmd -i '{0}.p1' ::/docs && echo a | mcopy -i '{0}.p1' - ::/docs/alpha.txt && \
         echo b | mcopy -i '{0}.p1' - ::/docs/Beta.TXT && \
         dd if='{0}.p1' of='{0}' bs=512 seek=2048 conv=notrunc status=none",
        img.display()
    ));
    let out = run(
        example("list_partition").to_str().unwrap(),
        &[img.to_str().unwrap(), "1", "/docs"],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut names: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(String::from)
        .collect();
    names.sort();
    assert_eq!(names, ["Beta.TXT", "alpha.txt"]);
    let out = run(
        example("list_partition").to_str().unwrap(),
        &[img.to_str().unwrap(), "2", "/"],
    );
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no partition 2"));
}

#[test]
fn hello_fs_serves_its_file_through_the_kernel() {
    if let Err(e) = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/fuse")
    {
        return testkit::skip(&format!("cannot open /dev/fuse: {e}"));
    }
    let dir = tempfile::tempdir().unwrap();
    let mnt = dir.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let bin = example("hello_fs");
    let m = testkit::mount_daemon(
        bin.to_str().unwrap(),
        &[],
        std::path::Path::new("none"),
        &mnt,
    );
    assert_eq!(
        std::fs::read_to_string(mnt.join("hello.txt")).unwrap(),
        "hello from a FileSystem\n"
    );
    let names: Vec<_> = std::fs::read_dir(&mnt)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, ["hello.txt"]);
    let err = std::fs::write(mnt.join("hello.txt"), "x").unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EROFS));
    m.unmount();
}
