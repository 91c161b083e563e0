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

/// The numbers a listing shows, by name.
fn listed(fs_: &VuFs, dir: Ino) -> std::collections::BTreeMap<String, Ino> {
    let ctx = Context::current();
    let fh = fs_.opendir(&ctx, dir).unwrap();
    let mut out = std::collections::BTreeMap::new();
    fs_.readdir(&ctx, dir, fh, 0, &mut |e| {
        out.insert(e.name.to_string_lossy().into_owned(), e.ino);
        true
    })
    .unwrap();
    fs_.releasedir(&ctx, dir, fh).unwrap();
    out.remove(".");
    out.remove("..");
    out
}

#[test]
fn a_name_keeps_its_number_across_forget_and_copy_up_and_listings_agree() {
    use std::os::unix::fs::MetadataExt;
    let tmp = tempfile::tempdir().unwrap();
    let (upper, lower) = (tmp.path().join("u"), tmp.path().join("l"));
    fs::create_dir(&upper).unwrap();
    fs::create_dir_all(lower.join("d")).unwrap();
    fs::write(lower.join("f"), "x").unwrap();
    let fs_ = cow(&upper, &lower);
    let ctx = Context::current();
    let look = |name: &str| {
        fs_.lookup(&ctx, Ino::ROOT, OsStr::new(name))
            .unwrap()
            .attr
            .ino
    };
    let (f, d) = (look("f"), look("d"));
    // Upper and lower are one device here: the lower tree's own numbers.
    assert_eq!(f.0, fs::metadata(lower.join("f")).unwrap().ino());
    assert_eq!(d.0, fs::metadata(lower.join("d")).unwrap().ino());
    // Forgotten and looked up again: the same numbers (they used to be new ones).
    fs_.forget(f, 1);
    fs_.forget(d, 1);
    assert_eq!((look("f"), look("d")), (f, d));
    // Copy-up (a write; a new child), then forgotten: still the lower numbers.
    let w = fs_.open(&ctx, f, libc::O_WRONLY).unwrap();
    fs_.release(&ctx, f, w.fh).unwrap();
    fs_.create(&ctx, d, OsStr::new("new"), 0o644, libc::O_WRONLY)
        .map(|(entry, opened)| {
            fs_.release(&ctx, entry.attr.ino, opened.fh).unwrap();
            fs_.forget(entry.attr.ino, 1);
        })
        .unwrap();
    assert!(upper.join("f").exists() && upper.join("d/new").exists());
    fs_.forget(f, 2);
    fs_.forget(d, 2);
    // A listing shows the numbers a lookup gives, copies included (the upper copy's own
    // host number is another).
    let names = listed(&fs_, Ino::ROOT);
    assert_eq!(names.get("f"), Some(&f));
    assert_eq!(names.get("d"), Some(&d));
    assert_eq!((look("f"), look("d")), (f, d));
}
