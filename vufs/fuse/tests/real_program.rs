//! Real programs in a cow view: unpack a tarball and build a small C project
//! with make and gcc; the lower tree stays byte-identical, SOURCE holds
//! exactly the changes, and a re-mount of the layer shows the same view.

mod common;

use common::*;
use std::collections::BTreeSet;
use std::fs;
use std::path::Path;
use std::process::Command;

fn have(tool: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {tool} >/dev/null")])
        .status()
        .is_ok_and(|s| s.success())
}

/// Writes a two-file C project with a Makefile and packs it as `project.tar.gz` in `dir`.
fn make_tarball(dir: &Path) {
    let src = dir.join("project-src/project");
    fs::create_dir_all(&src).unwrap();
    fs::write(
        src.join("main.c"),
        "#include <stdio.h>\nint add(int, int);\nint main(void) { printf(\"%d\\n\", add(40, 2)); return 0; }\n",
    )
    .unwrap();
    fs::write(
        src.join("add.c"),
        "int add(int a, int b) { return a + b; }\n",
    )
    .unwrap();
    fs::write(
        src.join("Makefile"),
        "prog: main.o add.o\n\tgcc -o prog main.o add.o\n%.o: %.c\n\tgcc -c -O2 -o $@ $<\nclean:\n\trm -f prog *.o\n",
    )
    .unwrap();
    sh(&format!(
        "tar -C '{}' -czf '{}' project",
        dir.join("project-src").display(),
        dir.join("project.tar.gz").display()
    ));
    fs::remove_dir_all(dir.join("project-src")).unwrap();
}

/// Every path under `dir` (relative), one per line.
fn paths(dir: &Path) -> BTreeSet<String> {
    sh(&format!(
        "cd '{}' && find . -mindepth 1 -printf '%P\\n'",
        dir.display()
    ))
    .lines()
    .map(str::to_string)
    .collect()
}

/// The view as a listing of types, modes, sizes and checksums.
fn view_listing(dir: &Path) -> String {
    sh(&format!(
        "cd '{}' && find . -printf '%P %y %m %s %l\\n' | sort && find . -type f -exec md5sum {{}} + | sort -k2",
        dir.display()
    ))
}

#[test]
fn unpack_and_build_in_a_cow_view() {
    need_fuse!();
    for tool in ["gcc", "make", "tar"] {
        if !have(tool) {
            testkit::skip(&format!("{tool} is not installed"));
            return;
        }
    }
    let s = Scratch::new();
    // A small source tree as the lower layer.
    fs::create_dir_all(s.low("doc")).unwrap();
    fs::write(s.low("README"), "read me\n").unwrap();
    fs::write(s.low("doc/old.txt"), "old\n").unwrap();
    fs::write(s.low("doc/keep.txt"), "keep\n").unwrap();
    make_tarball(&s.lower);
    let saved = s.save_lower();

    let m = mount_vufs(&s.upper, &s.lower, &["cow"]);
    sh(&format!(
        "cd '{}' && tar xzf project.tar.gz && make -C project && ./project/prog > result && \
         echo appended >> README && rm doc/old.txt",
        s.lower.display()
    ));
    assert_eq!(fs::read_to_string(s.low("result")).unwrap(), "42\n");
    let before = view_listing(&s.lower);
    m.unmount();

    // The lower tree is byte-identical to the saved copy.
    assert_same_tree(&s.lower, &saved);
    // SOURCE holds exactly the changes.
    let expected: BTreeSet<String> = [
        "project",
        "project/main.c",
        "project/add.c",
        "project/Makefile",
        "project/main.o",
        "project/add.o",
        "project/prog",
        "result",
        "README",
        ".-",
        ".-/doc",
        ".-/doc/old.txt",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    assert_eq!(paths(&s.upper), expected);
    assert_eq!(
        fs::read_to_string(s.up("README")).unwrap(),
        "read me\nappended\n"
    );
    assert_eq!(fs::metadata(s.up(".-/doc/old.txt")).unwrap().len(), 0);

    // A layer written by vufs, re-mounted, shows the same view.
    let m = mount_vufs(&s.upper, &s.lower, &["cow"]);
    assert_eq!(view_listing(&s.lower), before);
    let out = sh(&format!("'{}'", s.low("project/prog").display()));
    assert_eq!(out, "42\n");
    m.unmount();
}
