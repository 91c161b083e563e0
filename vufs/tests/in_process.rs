//! `VuFs` called directly (no kernel cache in between): the mechanisms
//! behind the FUSE-level rules.

use std::ffi::OsStr;
use std::fs;
use vufs::{open_layer, Config, Mode, Options, VuFs};
use vufuse_api::{Context, FileSystem, Ino};

fn cow(upper: &std::path::Path, lower: &std::path::Path) -> VuFs {
    let options = Options {
        mode: Mode::Cow,
        ..Options::default()
    };
    VuFs::new(
        open_layer(upper).unwrap(),
        open_layer(lower).unwrap(),
        Config {
            options,
            read_only: false,
        },
    )
    .unwrap()
}

#[test]
fn a_reader_opened_before_copy_up_follows_the_copy() {
    let tmp = tempfile::tempdir().unwrap();
    let (upper, lower) = (tmp.path().join("u"), tmp.path().join("l"));
    fs::create_dir(&upper).unwrap();
    fs::create_dir(&lower).unwrap();
    fs::write(lower.join("b"), "lower data").unwrap();
    let fs_ = cow(&upper, &lower);
    let ctx = Context::current();
    let entry = fs_.lookup(&ctx, Ino::ROOT, OsStr::new("b")).unwrap();
    let ino = entry.attr.ino;
    let reader = fs_.open(&ctx, ino, libc::O_RDONLY).unwrap();
    let mut buf = [0u8; 64];
    let n = fs_.read(&ctx, ino, reader.fh, 0, &mut buf).unwrap();
    assert_eq!(&buf[..n], b"lower data");
    // Opening for writing copies the file up; the reader's handle follows.
    let writer = fs_.open(&ctx, ino, libc::O_WRONLY).unwrap();
    fs_.write(&ctx, ino, writer.fh, 0, b"UPPER").unwrap();
    let n = fs_.read(&ctx, ino, reader.fh, 0, &mut buf).unwrap();
    assert_eq!(&buf[..n], b"UPPER data");
    assert_eq!(fs::read(lower.join("b")).unwrap(), b"lower data");
    assert_eq!(fs::read(upper.join("b")).unwrap(), b"UPPER data");
    // The inode number did not change with the copy-up.
    let again = fs_.lookup(&ctx, Ino::ROOT, OsStr::new("b")).unwrap();
    assert_eq!(again.attr.ino, ino);
    assert_eq!(fs_.getattr(&ctx, ino, None).unwrap().size, 10);
}

#[test]
fn forget_drops_inodes_and_numbers_are_not_reused_while_held() {
    let tmp = tempfile::tempdir().unwrap();
    let (upper, lower) = (tmp.path().join("u"), tmp.path().join("l"));
    fs::create_dir(&upper).unwrap();
    fs::create_dir(&lower).unwrap();
    for i in 0..100 {
        fs::write(lower.join(format!("f{i}")), "x").unwrap();
    }
    let fs_ = cow(&upper, &lower);
    let ctx = Context::current();
    let mut inos = std::collections::HashSet::new();
    for i in 0..100 {
        let e = fs_
            .lookup(&ctx, Ino::ROOT, OsStr::new(&format!("f{i}")))
            .unwrap();
        assert!(inos.insert(e.attr.ino), "numbers are distinct");
    }
    let first = fs_.lookup(&ctx, Ino::ROOT, OsStr::new("f0")).unwrap();
    assert!(
        inos.contains(&first.attr.ino),
        "same number on a second lookup"
    );
    for ino in &inos {
        fs_.forget(*ino, 2);
    }
    // Everything forgotten: attributes by number are gone (memory bounded).
    assert!(inos
        .iter()
        .all(|ino| fs_.getattr(&ctx, *ino, None).is_err()));
}
