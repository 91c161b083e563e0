//! Layer compatibility with the C vufs module of VUOS, under the real `umvu`.
//!
//! The same workload (copy-up, whiteouts of a file and of a file in both layers, a faked
//! character device, new directories, a symlink, a chmod) is run once through our `vufs` and
//! once through the C vufs inside umvu; each layer is then shown by the other implementation and
//! the two views must be equal. Skipped, with a printed reason, where umvu is not installed.
//!
//! Seen with vuos 0.9.4: the C vufs's `symlink` in cow mode chmods the link's *target* to 0777
//! in SOURCE (its vstat chmod follows the new link), so in the C-written layer `b` is 0777.
//! Both implementations then show that layer identically; ours does not have the bug (the
//! first test's view keeps `b` at 0644).

mod common;

use common::*;
use std::fs;
use std::path::Path;
use std::process::Command;

/// The workload, run inside the view (`$1` is the view's root).
const OPS: &str = r#"set -e
cd "$1"
echo B2 >> b
rm sub/c
rm a
mknod cdev c 1 3
mkdir newdir
echo X > newdir/x
ln -s b link
chmod 600 sub/d
mkdir sub2
echo Y > sub2/y
"#;

/// Prints the view under `$1`: every name with type, mode, size and link target, the content of
/// each regular file (tested with stat, not the directory entry type) and the faked device.
const VIEW: &str = r#"cd "$1" || exit 1
find . -path ./.- -prune -o -printf '%p %y %m %s %l\n' | sort
for f in $(find . -path ./.- -prune -o -print | sort); do
  if [ -f "$f" ] && [ ! -L "$f" ]; then echo "$f: $(cat "$f")"; fi
done
stat -c '%n %F %t,%T' cdev
"#;

struct Tree {
    tmp: tempfile::TempDir,
}

impl Tree {
    /// lower = {a, b, sub/c, sub/d}, an empty upper, and the scripts.
    fn new() -> Tree {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        fs::create_dir_all(root.join("lower/sub")).unwrap();
        fs::create_dir_all(root.join("upper")).unwrap();
        for (name, text) in [("a", "A"), ("b", "B"), ("sub/c", "C"), ("sub/d", "D")] {
            fs::write(root.join("lower").join(name), format!("{text}\n")).unwrap();
        }
        sh(&format!(
            "cp -a '{0}/lower' '{0}/lower.orig'",
            root.display()
        ));
        fs::write(root.join("ops.sh"), OPS).unwrap();
        fs::write(root.join("view.sh"), VIEW).unwrap();
        Tree { tmp }
    }

    fn path(&self, name: &str) -> String {
        self.tmp.path().join(name).display().to_string()
    }

    /// Runs `script` (lines of shell) under umvu with the C vufs mounted in cow mode.
    fn in_umvu(&self, body: &str) -> String {
        let script = format!(
            "vu_insmod vufs\nvumount -t vufs -o cow {up} {low}\n{body}\nvuumount {low}\n",
            up = self.path("upper"),
            low = self.path("lower"),
        );
        fs::write(self.tmp.path().join("umvu.sh"), script).unwrap();
        // umvu left behind by a timeout needs SIGKILL (../shared/VUOS.md, section 9).
        let out = Command::new("timeout")
            .args(["-s", "KILL", "120", "umvu", "bash", &self.path("umvu.sh")])
            .current_dir("/tmp")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "umvu: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Runs `script` with our vufs mounted in cow mode, then unmounts.
    fn in_ours(&self, body: &str) -> String {
        let lower = self.tmp.path().join("lower");
        let m = mount_vufs(&self.tmp.path().join("upper"), &lower, &["cow"]);
        let out = sh(body);
        m.unmount();
        out
    }

    fn assert_lower_unchanged(&self) {
        sh(&format!(
            "diff -r --no-dereference '{0}/lower' '{0}/lower.orig'",
            self.tmp.path().display()
        ));
    }
}

fn view_cmd(tree: &Tree) -> String {
    format!("bash {} {}", tree.path("view.sh"), tree.path("lower"))
}

fn ops_cmd(tree: &Tree) -> String {
    format!("bash {} {}", tree.path("ops.sh"), tree.path("lower"))
}

#[test]
fn a_layer_written_by_our_vufs_reads_the_same_in_the_c_vufs() {
    need_fuse!();
    if let Some(reason) = testkit::umvu::unavailable(&[]) {
        testkit::skip(&format!("{reason}; the C vufs cannot be compared"));
        return;
    }
    let tree = Tree::new();
    let ours = tree.in_ours(&format!("{} && {}", ops_cmd(&tree), view_cmd(&tree)));
    tree.assert_lower_unchanged();
    assert!(ours.contains("\ncdev character special file 1,3"), "{ours}");
    assert!(
        ours.contains("./b f 644 5"),
        "symlink must not chmod its target: {ours}"
    );
    let theirs = tree.in_umvu(&view_cmd(&tree));
    assert_eq!(theirs, ours, "the C vufs shows our layer differently");
    tree.assert_lower_unchanged();
}

#[test]
fn a_layer_written_by_the_c_vufs_reads_the_same_in_ours() {
    need_fuse!();
    if let Some(reason) = testkit::umvu::unavailable(&[]) {
        testkit::skip(&format!("{reason}; the C vufs cannot be compared"));
        return;
    }
    let tree = Tree::new();
    let theirs = tree.in_umvu(&format!("{}\n{}", ops_cmd(&tree), view_cmd(&tree)));
    tree.assert_lower_unchanged();
    assert!(
        theirs.contains("\ncdev character special file 1,3"),
        "{theirs}"
    );
    assert!(Path::new(&tree.path("upper/.-/a")).is_file(), "C whiteout");
    let ours = tree.in_ours(&view_cmd(&tree));
    assert_eq!(ours, theirs, "our vufs shows the C layer differently");
    tree.assert_lower_unchanged();
}
