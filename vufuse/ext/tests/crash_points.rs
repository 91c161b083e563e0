//! A crash at every write: the driver runs a workload (create, write, mkdir, link,
//! rename, truncate, unlink, rmdir) over a device that records every write that reaches
//! it. The image as it was at mount plus each prefix of that log is what a daemon killed
//! right after that write leaves. Each must be what the write order of docs/EXT-ENGINE.md
//! promises: clean, or only leaks (blocks or inodes marked in use that nothing references),
//! or a state e2fsck -p repairs on its own (an entry and its inode are two writes), and
//! never a block or inode in use that the bitmaps call free. The first prefix that is not
//! fails the test with e2fsck's report.

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::path::Path;
use std::process::Command;
use std::sync::{Arc, Mutex};
use vudev::{BlockDevice, FileDevice, Result};
use vufuse_api::{Context, FileSystem, Ino, SetAttr};
use vufuse_ext::{ExtFs, ExtOptions};

/// A device that keeps every write that reaches it, in order.
struct Recording {
    inner: FileDevice,
    log: Mutex<Vec<(u64, Vec<u8>)>>,
}

impl BlockDevice for Recording {
    fn size(&self) -> u64 {
        self.inner.size()
    }
    fn read_only(&self) -> bool {
        false
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<usize> {
        self.inner.read_at(buf, offset)
    }
    fn write_at(&self, buf: &[u8], offset: u64) -> Result<usize> {
        self.log.lock().unwrap().push((offset, buf.to_vec()));
        self.inner.write_at(buf, offset)
    }
    fn flush(&self) -> Result<()> {
        self.inner.flush()
    }
}

/// The workload: every kind of change the driver orders, with data that spans blocks.
fn workload(fs: &ExtFs) {
    let c = Context::current();
    let name = OsStr::new;
    let dir = fs.mkdir(&c, Ino::ROOT, name("d"), 0o755).unwrap().attr.ino;
    let mut files = Vec::new();
    for i in 0..6u8 {
        let (entry, opened) = fs
            .create(&c, dir, name(&format!("f{i}")), 0o644, libc::O_WRONLY)
            .unwrap();
        let ino = entry.attr.ino;
        for chunk in 0..(i as u64 + 1) {
            let data = vec![b'a' + i; 20_000];
            fs.write(&c, ino, opened.fh, chunk * 20_000, &data).unwrap();
        }
        fs.release(&c, ino, opened.fh).unwrap();
        files.push(ino);
    }
    // Enough names to grow the directory past its first block.
    for i in 0..40 {
        let (entry, opened) = fs
            .create(&c, dir, name(&format!("a-longer-name-{i:03}")), 0o644, 0)
            .unwrap();
        fs.release(&c, entry.attr.ino, opened.fh).unwrap();
    }
    fs.link(&c, files[1], Ino::ROOT, name("hard")).unwrap();
    fs.rename(&c, dir, name("f2"), dir, name("g2"), 0).unwrap();
    fs.rename(&c, dir, name("f3"), dir, name("f4"), 0).unwrap(); // over a target
    let truncate = |size| SetAttr {
        size: Some(size),
        ..SetAttr::default()
    };
    fs.setattr(&c, files[5], &truncate(7_000)).unwrap();
    fs.setattr(&c, files[0], &truncate(0)).unwrap();
    fs.unlink(&c, dir, name("f1")).unwrap();
    fs.unlink(&c, Ino::ROOT, name("hard")).unwrap();
    for i in 0..40 {
        fs.unlink(&c, dir, name(&format!("a-longer-name-{i:03}")))
            .unwrap();
    }
    let sub = fs.mkdir(&c, dir, name("sub"), 0o755).unwrap().attr.ino;
    let (entry, opened) = fs.create(&c, sub, name("x"), 0o644, 0).unwrap();
    fs.write(&c, entry.attr.ino, opened.fh, 0, &[7; 3000])
        .unwrap();
    fs.release(&c, entry.attr.ino, opened.fh).unwrap();
    fs.unlink(&c, sub, name("x")).unwrap();
    fs.rmdir(&c, dir, name("sub")).unwrap();
}

/// The problems e2fsck -p repaired, digits blanked, with how often each was seen.
static PREENED: Mutex<BTreeMap<String, usize>> = Mutex::new(BTreeMap::new());

/// How a crash point left the image.
#[derive(Debug, PartialEq, Eq, PartialOrd, Ord, Clone, Copy)]
enum Verdict {
    /// e2fsck -fn finds nothing.
    Clean,
    /// Only leaks: bitmap entries in use that nothing uses, summary counts, bitmap
    /// checksums (a bitmap and the descriptor with its checksum are two writes).
    Leaks,
    /// e2fsck -p repairs it without asking (an entry naming an unused inode, a link count
    /// off by one), and e2fsck -fn finds nothing after.
    Preened,
}

fn e2fsck(args: &[&str], image: &Path) -> (i32, String) {
    let out = Command::new("e2fsck")
        .args(args)
        .arg(image)
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.code().unwrap_or(-1), text)
}

/// What e2fsck says of one image, or the report that makes it unacceptable: anything
/// e2fsck -p does not repair on its own, and any block or inode in use that the bitmaps
/// call free (a driver mounted again without fsck could hand it out twice).
fn verdict(image: &Path, scratch: &Path) -> std::result::Result<Verdict, String> {
    let (code, text) = e2fsck(&["-fn"], image);
    if code == 0 {
        return Ok(Verdict::Clean);
    }
    if text
        .lines()
        .any(|l| l.contains("bitmap differences:") && l.contains('+'))
    {
        return Err(text);
    }
    let leak = |line: &str| {
        let line = line.trim();
        line.is_empty()
            || line.starts_with("Pass ")
            || line.starts_with("e2fsck ")
            || line.contains(" files (")
            || line.starts_with("Free blocks count wrong")
            || line.starts_with("Free inodes count wrong")
            || line.starts_with("Directories count wrong")
            || line.starts_with("Fix? no")
            || line.contains("Filesystem still has errors")
            || line.starts_with("Padding at end of")
            || line.ends_with("bitmap does not match checksum.")
            || line == "IGNORED."
            || line.starts_with("Block bitmap differences:")
            || line.starts_with("Inode bitmap differences:")
    };
    if text.lines().all(leak) {
        return Ok(Verdict::Leaks);
    }
    for line in text.lines().filter(|l| {
        !leak(l) && !l.trim().starts_with("Fix? no") && !l.trim().starts_with("Clear? no")
    }) {
        let kind: String = line
            .trim()
            .chars()
            .map(|c| if c.is_ascii_digit() { '#' } else { c })
            .collect();
        *PREENED.lock().unwrap().entry(kind).or_default() += 1;
    }
    std::fs::copy(image, scratch).unwrap();
    let (preen, preened) = e2fsck(&["-p"], scratch);
    let (after, again) = e2fsck(&["-fn"], scratch);
    if preen <= 1 && after == 0 {
        Ok(Verdict::Preened)
    } else {
        Err(format!(
            "{text}\ne2fsck -p (exit {preen}):\n{preened}\nthen -fn (exit {after}):\n{again}"
        ))
    }
}

#[test]
fn every_prefix_of_the_write_log_is_clean_leaks_or_preen_repaired() {
    for tool in ["mke2fs", "e2fsck"] {
        let found = Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .output()
            .is_ok_and(|o| o.status.success());
        if !found {
            testkit::skip(&format!("{tool} is missing"));
            return;
        }
    }
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().join("base.img");
    testkit::sh(&format!(
        "truncate -s 16M '{0}' && mke2fs -q -F -t ext4 '{0}'",
        base.display()
    ));
    let work = dir.path().join("work.img");
    std::fs::copy(&base, &work).unwrap();
    let recording = Arc::new(Recording {
        inner: FileDevice::open(&work, false).unwrap(),
        log: Mutex::new(Vec::new()),
    });
    let fs = ExtFs::open(
        recording.clone(),
        ExtOptions {
            read_only: false,
            norecovery: false,
        },
    )
    .unwrap();
    workload(&fs);
    drop(fs);
    let log = std::mem::take(&mut *recording.log.lock().unwrap());
    assert!(
        log.len() > 100,
        "a workload of this size writes more: {}",
        log.len()
    );
    let scratch = dir.path().join("scratch.img");
    assert_eq!(
        verdict(&work, &scratch),
        Ok(Verdict::Clean),
        "the image after a clean close"
    );

    // Replay: the state at mount, then one write at a time, e2fsck after each.
    let replay = dir.path().join("replay.img");
    std::fs::copy(&base, &replay).unwrap();
    let image = FileDevice::open(&replay, false).unwrap();
    let mut tally: BTreeMap<Verdict, usize> = BTreeMap::new();
    for (i, (offset, bytes)) in log.iter().enumerate() {
        image.write_all_at(bytes, *offset).unwrap();
        image.flush().unwrap();
        match verdict(&replay, &scratch) {
            Ok(v) => *tally.entry(v).or_default() += 1,
            Err(report) => {
                if let Some(keep) = std::env::var_os("CRASH_POINTS_KEEP") {
                    std::fs::copy(&replay, &keep).unwrap();
                    std::fs::copy(&base, Path::new(&keep).with_extension("base")).unwrap();
                    let listing: String = log
                        .iter()
                        .enumerate()
                        .map(|(n, (o, b))| format!("{} {} {}\n", n + 1, o / 1024, b.len() / 1024))
                        .collect();
                    std::fs::write(Path::new(&keep).with_extension("log"), listing).unwrap();
                }
                panic!(
                    "killed after write {} of {} ({} bytes at {}): e2fsck -fn says\n{report}",
                    i + 1,
                    log.len(),
                    bytes.len(),
                    offset
                )
            }
        }
    }
    println!("{} crash points: {tally:?}", log.len());
    for (kind, count) in PREENED.lock().unwrap().iter() {
        println!("  repaired by e2fsck -p, {count}x: {kind}");
    }
}
