//! How long the kernel trusts what it saw: by default (`cache=auto`) a listing is read
//! afresh at every open, so a name added behind the mount shows at once; with
//! `cache=always` listings and attributes stay in the kernel, a second `ls -lR` reaches the
//! daemon only for what the kernel cannot cache (security.selinux), and changes made
//! through the mount still show at once.

mod common;
use common::*;
use testkit::{s, MountGuard};

#[test]
fn by_default_a_name_added_behind_the_mount_is_listed_at_once() {
    need_fuse!();
    let sc = Scratch::new();
    std::fs::write(sc.up("a"), "a").unwrap();
    let mnt = sc.tmp.path().join("view");
    let guard = mount_vufs(&sc.upper, &mnt, &["bind"]);
    assert_eq!(sh(&format!("ls '{}'", s(&mnt))), "a\n");
    std::fs::write(sc.up("b"), "b").unwrap();
    assert_eq!(sh(&format!("ls '{}'", s(&mnt))), "a\nb\n");
    guard.unmount();
}

#[test]
fn cache_always_keeps_listings_and_attributes_in_the_kernel() {
    need_fuse!();
    let sc = Scratch::new();
    sh(&format!(
        "cd '{}' && mkdir -p d1 d2/d3 && touch f $(seq 1 20) d1/x d2/y d2/d3/z",
        s(&sc.upper)
    ));
    // The request log (-d) goes to a file, read between the listings.
    let log_path = sc.tmp.path().join("requests.log");
    let daemon = std::process::Command::new(BIN)
        .args(["-f", "-d", "-o", "cow,cache=always"])
        .arg(&sc.upper)
        .arg(&sc.lower)
        .stderr(std::fs::File::create(&log_path).unwrap())
        .spawn()
        .unwrap();
    testkit::wait_until_mounted(&sc.lower, std::time::Duration::from_secs(10));
    let guard = MountGuard::new(&sc.lower);
    let settled_log = || {
        // Releases come in after the listing returns.
        std::thread::sleep(std::time::Duration::from_millis(300));
        std::fs::read_to_string(&log_path).unwrap()
    };
    let first = sh(&format!("ls -lR '{}'", s(&sc.lower)));
    let before = settled_log().len();
    let second = sh(&format!("ls -lR '{}'", s(&sc.lower)));
    let log = settled_log();
    assert_eq!(first, second);
    // (The root's attributes are fetched again, and with them its ACLs: ino 1 aside.)
    let asked: Vec<&str> = log[before..]
        .lines()
        .filter(|l| !l.contains("(1,"))
        .filter(|l| {
            l.starts_with("readdir")
                || l.starts_with("lookup(")
                || (l.starts_with("getxattr(") && l.contains("posix_acl"))
        })
        .collect();
    assert!(
        asked.is_empty(),
        "a second ls -lR of 27 names asked the daemon: {asked:?}"
    );
    assert!(
        log[before..].contains("security.selinux"),
        "the second listing reached the daemon at all (for security.selinux): {}",
        &log[before..]
    );
    // A change made through the mount shows at once: the kernel drops what it changed.
    std::fs::write(sc.lower.join("made-through-the-mount"), "m").unwrap();
    let third = sh(&format!("ls '{}'", s(&sc.lower)));
    assert!(third.contains("made-through-the-mount"), "{third}");
    guard.unmount();
    let mut daemon = daemon;
    daemon.wait().unwrap();
    assert!(sc.up("made-through-the-mount").exists());
}
