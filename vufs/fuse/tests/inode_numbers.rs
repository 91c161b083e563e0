//! A name's `st_ino` through the real kernel FUSE stays what it was when the kernel forgets
//! the node (memory pressure, here `drop_caches`) and looks the name up again, in every
//! mode and across copy-up; bind shows the host's numbers. GNU tar checks this: a
//! directory whose (st_dev, st_ino) changed between its creation and the end of the
//! extraction is reported as "renamed before its status could be extracted".

mod common;

use common::*;
use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

const DROP_CACHES: &str = "/proc/sys/vm/drop_caches";

/// Skips the test (returns) when the kernel cannot be made to forget (not root).
macro_rules! need_drop_caches {
    () => {
        if fs::OpenOptions::new()
            .write(true)
            .open(DROP_CACHES)
            .is_err()
        {
            testkit::skip(&format!("{DROP_CACHES} is not writable here"));
            return;
        }
    };
}

/// Makes the kernel drop every unused dentry and inode of the mounts, so that it sends
/// FORGET for them, and gives the daemon a moment to handle those.
fn forget_all() {
    fs::write(DROP_CACHES, "2\n").unwrap();
    std::thread::sleep(std::time::Duration::from_millis(300));
}

/// `st_ino` of every name below `dir` (`dir` itself as "").
fn numbers(dir: &Path) -> BTreeMap<String, u64> {
    let mut out = BTreeMap::new();
    let mut stack = vec![String::new()];
    while let Some(rel) = stack.pop() {
        let path = dir.join(&rel);
        let meta = fs::symlink_metadata(&path).unwrap();
        out.insert(rel.clone(), meta.ino());
        if meta.is_dir() {
            for e in fs::read_dir(&path).unwrap() {
                let name = e.unwrap().file_name().into_string().unwrap();
                stack.push(if rel.is_empty() {
                    name
                } else {
                    format!("{rel}/{name}")
                });
            }
        }
    }
    out
}

/// A few nested directories with files, a symlink and a hard link, under `root`.
fn make_tree(root: &Path) {
    for d in ["d1/d2/d3", "d1/e", "f"] {
        fs::create_dir_all(root.join(d)).unwrap();
    }
    for f in ["top", "d1/a", "d1/d2/b", "d1/d2/d3/c", "f/g"] {
        fs::write(root.join(f), f).unwrap();
    }
    std::os::unix::fs::symlink("../top", root.join("d1/up")).unwrap();
    fs::hard_link(root.join("d1/a"), root.join("f/a-link")).unwrap();
}

fn assert_same_numbers(before: &BTreeMap<String, u64>, after: &BTreeMap<String, u64>, when: &str) {
    let changed: Vec<String> = before
        .iter()
        .filter_map(|(name, ino)| match after.get(name) {
            Some(now) if now != ino => Some(format!("{name:?}: {ino} -> {now}")),
            _ => None,
        })
        .collect();
    assert!(changed.is_empty(), "{when}, numbers changed: {changed:?}");
}

#[test]
fn a_name_keeps_its_number_when_the_kernel_forgets_it() {
    need_fuse!();
    need_drop_caches!();
    for mode in ["bind", "merge", "cow", "mincow"] {
        let s = Scratch::new();
        // bind shows SOURCE; the union modes show the lower tree here.
        let host = if mode == "bind" { &s.upper } else { &s.lower };
        make_tree(host);
        let m = mount_vufs(&s.upper, &s.lower, &[mode]);
        let before = numbers(&s.lower);
        assert_eq!(before.len(), 13, "{mode}: {before:?}");
        forget_all();
        assert_same_numbers(
            &before,
            &numbers(&s.lower),
            &format!("{mode}: after a forget"),
        );
        // New names keep theirs too.
        fs::create_dir_all(s.low("new/deeper")).unwrap();
        fs::write(s.low("new/deeper/file"), "n").unwrap();
        let with_new = numbers(&s.lower);
        forget_all();
        assert_same_numbers(&with_new, &numbers(&s.lower), &format!("{mode}: new names"));
        m.unmount();
        if mode == "bind" {
            // bind shows the host's own numbers (the root is FUSE's 1).
            let mut host_numbers = numbers(&s.upper);
            host_numbers.remove("");
            let mut shown = with_new.clone();
            shown.remove("");
            assert_eq!(shown, host_numbers, "bind shows the host's st_ino");
        }
    }
}

#[test]
fn a_copied_up_name_keeps_its_lower_number_after_a_forget() {
    need_fuse!();
    need_drop_caches!();
    let s = Scratch::new();
    make_tree(&s.lower);
    let m = mount_vufs(&s.upper, &s.lower, &["cow"]);
    let before = numbers(&s.lower);
    // Copy-ups: a file's data (and its directories), a directory by its new child, a
    // directory by chmod, both names of a hard link.
    sh(&format!(
        "cd '{}' && echo more >> d1/d2/d3/c && touch d1/e/new && chmod 0700 f && echo x >> f/a-link",
        s.lower.display()
    ));
    assert_same_numbers(&before, &numbers(&s.lower), "right after copy-up");
    forget_all();
    assert_same_numbers(&before, &numbers(&s.lower), "after copy-up and a forget");
    assert_eq!(
        fs::read_to_string(s.low("d1/a")).unwrap(),
        "d1/ax\n",
        "the other name of the link sees the change"
    );
    m.unmount();
    for copied in ["d1/d2/d3/c", "d1/e/new", "f", "f/a-link", "d1/a"] {
        assert!(s.up(copied).exists(), "{copied} is in SOURCE");
    }
}

/// `count` nested directories, each with a symlink whose target has `..` (GNU tar makes
/// those at the end and sets their directories' status after them, checking (st_dev,
/// st_ino) then) and a file of a tar record, so that checkpoints fall in between.
fn make_deep_tree(root: &Path, count: usize) {
    let mut dir = root.join("tree");
    for i in 0..count {
        dir = if i % 20 == 0 {
            root.join(format!("tree/branch{i}"))
        } else {
            dir.join(format!("d{i}"))
        };
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join("data"), vec![b'x'; 10240]).unwrap();
        std::os::unix::fs::symlink("../data", dir.join("up")).unwrap();
    }
}

#[test]
fn tar_extracts_a_deep_tree_while_the_kernel_forgets() {
    need_fuse!();
    need_drop_caches!();
    let work = tempfile::tempdir().unwrap();
    make_deep_tree(work.path(), 200);
    let tarball = work.path().join("tree.tar");
    sh(&format!(
        "tar -C '{}' -cf '{}' tree",
        work.path().display(),
        tarball.display()
    ));
    // What tar makes of it on the host (times in whole seconds).
    let reference = work.path().join("reference");
    fs::create_dir(&reference).unwrap();
    sh(&format!(
        "tar -C '{}' -xf '{}'",
        reference.display(),
        tarball.display()
    ));
    for (mode, over_itself) in [("bind", false), ("cow", false), ("cow", true)] {
        let s = Scratch::new();
        if over_itself {
            // The lower tree already holds the tree: every directory is copied up when
            // tar writes into it.
            sh(&format!(
                "tar -C '{}' -xf '{}'",
                s.lower.display(),
                tarball.display()
            ));
        }
        let m = mount_vufs(&s.upper, &s.lower, &[mode]);
        let out = testkit::sh_output(&format!(
            "tar -C '{}' --checkpoint=32 --checkpoint-action='exec=echo 2 > {DROP_CACHES}' -xf '{}'",
            s.lower.display(),
            tarball.display()
        ));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success() && !stderr.contains("renamed"),
            "{mode} (over the tree: {over_itself}): tar failed: {stderr}"
        );
        assert_same_tree(&reference.join("tree"), &s.low("tree"));
        m.unmount();
    }
}
