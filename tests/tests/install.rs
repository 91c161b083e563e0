//! `make install` and `make uninstall` into a DESTDIR, and the installed daemons used the
//! way users use them: `mount -t fuse.fuseext2` (mount(8) runs mount.fuse3, which runs
//! `fuseext2` from the PATH with mount's options) and `mount -t fuse.fusefatfs`.
//!
//! One test does it all, in order: two `make` runs at once would share the build's
//! generated pages.

use std::path::{Path, PathBuf};
use std::process::Command;
use testkit::{run_ok, s, skip, wait_for_daemon_exit};

const BINS: &[&str] = &[
    "fusefatfs",
    "fuseext2",
    "vudevpartx",
    "vudevramdisk",
    "vufs",
    "vuimg",
    "vunbd",
];

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// `make -C WORKSPACE ARGS...`, with the profile `cargo test` built (its artifacts are
/// reused, nothing is compiled twice); must succeed.
fn make(args: &[&str]) -> String {
    let out = Command::new("make")
        .arg("-s")
        .arg("-C")
        .arg(workspace())
        .arg("PROFILE=test")
        .args(args)
        .output()
        .expect("run make");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "make {args:?}:\n{text}");
    text
}

/// The module file names: every cdylib crate under modules/ (its lib name, else its
/// package name with `-` as `_`).
fn module_names() -> Vec<String> {
    let mut names = Vec::new();
    for entry in std::fs::read_dir(workspace().join("modules")).unwrap() {
        let toml = entry.unwrap().path().join("Cargo.toml");
        let Ok(text) = std::fs::read_to_string(&toml) else {
            continue;
        };
        if !text.contains("\"cdylib\"") {
            continue;
        }
        let value = |line: &str| line.split('"').nth(1).map(str::to_string);
        let mut section = String::new();
        let (mut package, mut lib) = (None, None);
        for line in text.lines() {
            let line = line.trim();
            if line.starts_with('[') {
                section = line.to_string();
            } else if line.starts_with("name") {
                match section.as_str() {
                    "[package]" => package = value(line),
                    "[lib]" => lib = value(line),
                    _ => {}
                }
            }
        }
        names.push(lib.unwrap_or_else(|| package.unwrap().replace('-', "_")));
    }
    names.sort();
    names
}

fn installed_files(prefix: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for b in BINS {
        files.push(prefix.join("bin").join(b));
        files.push(prefix.join("share/man/man1").join(format!("{b}.1")));
        files.push(prefix.join("share/bash-completion/completions").join(b));
        files.push(
            prefix
                .join("share/zsh/site-functions")
                .join(format!("_{b}")),
        );
        files.push(
            prefix
                .join("share/fish/vendor_completions.d")
                .join(format!("{b}.fish")),
        );
    }
    for m in module_names() {
        files.push(prefix.join("lib/vu/modules").join(format!("{m}.so")));
    }
    files
}

fn everything_under(dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            found.push(path.clone());
            if path.is_dir() && !path.is_symlink() {
                stack.push(path);
            }
        }
    }
    found.sort();
    found
}

fn have(tool: &str) -> bool {
    Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {tool}"))
        .output()
        .is_ok_and(|o| o.status.success())
}

/// Runs `script` with `sh -e` in a private mount namespace where the installed bin directory
/// is bind-mounted over /usr/local/bin: mount(8) runs its helpers (mount.fuse3, then the
/// daemon through /bin/sh) without the caller's PATH, so the daemon is found only in the
/// shell's default path, where `make install` with the default PREFIX puts it. The real
/// /usr/local/bin is never touched. The daemon outlives the script (and keeps the
/// namespace); its mount is gone once the script unmounted it.
fn in_namespace(bin: &Path, script: &str) -> String {
    let out = Command::new("unshare")
        .args(["-m", "--propagation", "private", "sh", "-e", "-c"])
        .arg(format!(
            "mount --bind '{}' /usr/local/bin\n{script}",
            s(bin)
        ))
        .output()
        .expect("run unshare");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{script}\n{text}");
    text
}

/// `mount -t fuse.fuseext2 -o rw+ IMG DIR` through the installed binary: a file written
/// there is seen by debugfs after the unmount.
fn mount_t_fuseext2(bin: &Path, scratch: &Path) {
    let img = scratch.join("ext.img");
    let dir = scratch.join("ext");
    std::fs::create_dir(&dir).unwrap();
    run_ok("mke2fs", &["-q", "-F", "-t", "ext4", s(&img), "16M"]);
    let (img_s, dir_s) = (s(&img), s(&dir));
    let text = in_namespace(
        bin,
        &format!(
            "mount -t fuse.fuseext2 -o rw+ {img_s} {dir_s}\n\
             grep ' {dir_s} fuse.fuseext2 rw,' /proc/self/mounts\n\
             echo 'written through mount -t' > {dir_s}/hello.txt\n\
             umount {dir_s}"
        ),
    );
    assert!(text.contains("fuse.fuseext2"), "{text}");
    wait_for_daemon_exit("fuseext2", &dir);
    let cat = run_ok("debugfs", &["-R", "cat /hello.txt", img_s]);
    assert!(cat.contains("written through mount -t"), "debugfs: {cat}");
}

/// `mount -t fuse.fusefatfs`: without rw+ the mount is read-only (mount(8) passes plain rw,
/// which fusefatfs does not take for read-write), with -o rw+ it writes.
fn mount_t_fusefatfs(bin: &Path, scratch: &Path) {
    let img = scratch.join("fat.img");
    let dir = scratch.join("fat");
    std::fs::create_dir(&dir).unwrap();
    run_ok("mkfs.fat", &["-C", s(&img), "8192"]);
    let (img_s, dir_s) = (s(&img), s(&dir));
    let text = in_namespace(
        bin,
        &format!(
            "mount -t fuse.fusefatfs {img_s} {dir_s}\n\
             grep ' {dir_s} fuse.fusefatfs ro,' /proc/self/mounts\n\
             if echo x > {dir_s}/no.txt; then echo WROTE; fi\n\
             umount {dir_s}"
        ),
    );
    assert!(!text.contains("WROTE"), "{text}");
    assert!(text.contains("Read-only file system"), "{text}");
    wait_for_daemon_exit("fusefatfs", &dir);
    in_namespace(
        bin,
        &format!(
            "mount -t fuse.fusefatfs -o rw+ {img_s} {dir_s}\n\
             grep ' {dir_s} fuse.fusefatfs rw,' /proc/self/mounts\n\
             echo fat > {dir_s}/yes.txt\n\
             umount {dir_s}"
        ),
    );
    wait_for_daemon_exit("fusefatfs", &dir);
    if have("mtype") {
        let text = run_ok("mtype", &["-i", img_s, "::/yes.txt"]);
        assert_eq!(text, "fat\n");
    }
}

/// `make install-files` without DESTDIR says when mount(8) would not run what it installed:
/// with another `fusefatfs` first in /bin/sh's default PATH (here a program bind-mounted over
/// /usr/local/bin, as a C fusefatfs installed there shadows ours in /usr/bin) it names that
/// program, and a prefix outside that PATH is named too; installed where mount(8) looks
/// first, it says nothing.
fn install_warns_of_what_mount_would_run(scratch: &Path) {
    let shadow = scratch.join("shadow");
    std::fs::create_dir(&shadow).unwrap();
    std::fs::copy("/bin/true", shadow.join("fusefatfs")).unwrap();
    let prefix = scratch.join("prefix");
    let ws = s(&workspace()).to_string();
    let text = in_namespace(
        &shadow,
        &format!(
            "make -s -C {ws} PROFILE=test install-files PREFIX={} 2>&1",
            s(&prefix)
        ),
    );
    let installed = prefix.join("bin/fusefatfs");
    assert!(installed.is_file(), "{text}");
    assert!(
        text.contains(&format!(
            "mount -t fuse.fusefatfs will run /usr/local/bin/fusefatfs, not {}",
            s(&installed)
        )),
        "{text}"
    );
    // The installed daemons themselves over /usr/local/bin: mount(8) finds them, no warning.
    let text = in_namespace(
        &prefix.join("bin"),
        &format!("make -s -C {ws} PROFILE=test check-mount-path BINDIR=/usr/local/bin 2>&1"),
    );
    assert!(!text.contains("warning"), "{text}");
}

#[test]
fn make_install_then_mount_t_then_uninstall() {
    if !have("make") {
        return skip("no make");
    }
    let dest = tempfile::tempdir().unwrap();
    let destdir = format!("DESTDIR={}", s(dest.path()));
    make(&["install", &destdir, "PREFIX=/usr"]);
    let prefix = dest.path().join("usr");
    let expected = installed_files(&prefix);
    for file in &expected {
        assert!(
            file.is_file(),
            "make install did not install {}",
            file.display()
        );
    }
    assert!(module_names().contains(&"vufusefatfs".to_string()));
    // Nothing else than what is listed (directories aside).
    let files: Vec<PathBuf> = everything_under(dest.path())
        .into_iter()
        .filter(|p| !p.is_dir())
        .collect();
    let mut sorted = expected.clone();
    sorted.sort();
    assert_eq!(files, sorted);
    let help = run_ok(s(&prefix.join("bin/fuseext2")), &["--help"]);
    assert!(help.contains("rw+"), "{help}");

    let root = is_root();
    let tools = ["unshare", "mount.fuse3", "mke2fs", "debugfs", "mkfs.fat"];
    if !root || !Path::new("/dev/fuse").exists() || !tools.iter().all(|t| have(t)) {
        skip("mount -t fuse.NAME needs root, /dev/fuse, unshare, mount.fuse3, mke2fs, debugfs, mkfs.fat");
    } else {
        let scratch = tempfile::tempdir().unwrap();
        let bin = prefix.join("bin");
        mount_t_fuseext2(&bin, scratch.path());
        mount_t_fusefatfs(&bin, scratch.path());
        install_warns_of_what_mount_would_run(scratch.path());
    }

    make(&["uninstall", &destdir, "PREFIX=/usr"]);
    let left = everything_under(dest.path());
    assert!(left.is_empty(), "make uninstall left {left:?}");
}

fn is_root() -> bool {
    // /proc/self/status: "Uid:\treal\teffective\t...".
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|l| l.split_whitespace().nth(1).map(|e| e == "0"))
        .unwrap_or(false)
}
