//! The Rust layout of the FUSE 3.14 structures against the real header, as
//! vufuse is built (`FUSE_USE_VERSION 314`, Debian's libfuse3-dev).

use std::mem::{offset_of, size_of};
use std::process::Command;
use vufuseglue::abi::{FuseContext, FuseFileInfo, FuseOperations};

const PROBE: &str = r#"
#define FUSE_USE_VERSION 314
#include <fuse3/fuse.h>
#include <stdio.h>
#include <stddef.h>
#define O(T, F) printf(#T "." #F " %zu\n", offsetof(struct T, F))
int main(void) {
  printf("fuse_operations %zu\nfuse_file_info %zu\nfuse_context %zu\n",
         sizeof(struct fuse_operations), sizeof(struct fuse_file_info), sizeof(struct fuse_context));
  O(fuse_operations, getattr); O(fuse_operations, readlink); O(fuse_operations, rename);
  O(fuse_operations, truncate); O(fuse_operations, open); O(fuse_operations, read);
  O(fuse_operations, write); O(fuse_operations, statfs); O(fuse_operations, fsync);
  O(fuse_operations, opendir); O(fuse_operations, readdir); O(fuse_operations, releasedir);
  O(fuse_operations, init); O(fuse_operations, destroy); O(fuse_operations, access);
  O(fuse_operations, create); O(fuse_operations, utimens); O(fuse_operations, lseek);
  O(fuse_file_info, flags); O(fuse_file_info, fh); O(fuse_file_info, lock_owner);
  O(fuse_file_info, poll_events);
  O(fuse_context, uid); O(fuse_context, gid); O(fuse_context, pid);
  O(fuse_context, private_data); O(fuse_context, umask);
  return 0;
}
"#;

fn rust_layout() -> Vec<(String, usize)> {
    macro_rules! o {
        ($t:ident, $c:literal, $f:ident) => {
            (format!("{}.{}", $c, stringify!($f)), offset_of!($t, $f))
        };
    }
    vec![
        ("fuse_operations".into(), size_of::<FuseOperations>()),
        ("fuse_file_info".into(), size_of::<FuseFileInfo>()),
        ("fuse_context".into(), size_of::<FuseContext>()),
        o!(FuseOperations, "fuse_operations", getattr),
        o!(FuseOperations, "fuse_operations", readlink),
        o!(FuseOperations, "fuse_operations", rename),
        o!(FuseOperations, "fuse_operations", truncate),
        o!(FuseOperations, "fuse_operations", open),
        o!(FuseOperations, "fuse_operations", read),
        o!(FuseOperations, "fuse_operations", write),
        o!(FuseOperations, "fuse_operations", statfs),
        o!(FuseOperations, "fuse_operations", fsync),
        o!(FuseOperations, "fuse_operations", opendir),
        o!(FuseOperations, "fuse_operations", readdir),
        o!(FuseOperations, "fuse_operations", releasedir),
        o!(FuseOperations, "fuse_operations", init),
        o!(FuseOperations, "fuse_operations", destroy),
        o!(FuseOperations, "fuse_operations", access),
        o!(FuseOperations, "fuse_operations", create),
        o!(FuseOperations, "fuse_operations", utimens),
        o!(FuseOperations, "fuse_operations", lseek),
        o!(FuseFileInfo, "fuse_file_info", flags),
        o!(FuseFileInfo, "fuse_file_info", fh),
        o!(FuseFileInfo, "fuse_file_info", lock_owner),
        o!(FuseFileInfo, "fuse_file_info", poll_events),
        o!(FuseContext, "fuse_context", uid),
        o!(FuseContext, "fuse_context", gid),
        o!(FuseContext, "fuse_context", pid),
        o!(FuseContext, "fuse_context", private_data),
        o!(FuseContext, "fuse_context", umask),
    ]
}

#[test]
fn sizes_and_offsets_match_the_fuse_3_14_header() {
    // The sizes vufuse checks, whatever the header says.
    assert_eq!(size_of::<FuseOperations>(), 336);
    assert_eq!(size_of::<FuseFileInfo>(), 40);
    assert_eq!(size_of::<FuseContext>(), 40);
    if !std::path::Path::new("/usr/include/fuse3/fuse.h").exists() {
        testkit::skip("/usr/include/fuse3/fuse.h absent (install libfuse3-dev)");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("probe.c");
    let exe = dir.path().join("probe");
    std::fs::write(&src, PROBE).unwrap();
    let status = Command::new("gcc")
        .arg("-o")
        .arg(&exe)
        .arg(&src)
        .status()
        .expect("gcc");
    assert!(status.success(), "probe did not compile");
    let out = Command::new(&exe).output().expect("probe runs");
    let c_layout: Vec<(String, usize)> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| {
            let (name, value) = l.split_once(' ').unwrap();
            (name.to_string(), value.parse().unwrap())
        })
        .collect();
    assert_eq!(rust_layout(), c_layout);
    // The version the header declares is the one fuse_version reports.
    assert_eq!(vufuseglue::abi::FUSE_VERSION, 314);
}
