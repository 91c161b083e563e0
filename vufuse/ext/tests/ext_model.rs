//! Randomized operation sequences on the ext driver, checked against an
//! in-memory model after every step and with e2fsck -fn after every run.

use proptest::prelude::*;
use std::collections::{BTreeMap, HashMap};
use std::ffi::OsStr;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use vudev::{BlockDevice, FileDevice};
use vufuse_api::{Context, Errno, Fh, FileKind, FileSystem, Ino, SetAttr};
use vufuse_ext::{ExtFs, ExtOptions};

const DIRS: [&str; 3] = ["", "x", "x/y"];
const NAMES: [&str; 4] = ["a", "b", "long name with spaces", "d"];

#[derive(Debug, Clone)]
enum Op {
    Create(usize, usize),
    Write(usize, usize, u32, u16, u8),
    Truncate(usize, usize, u32),
    Unlink(usize, usize),
    Rename(usize, usize, usize, usize),
    Link(usize, usize, usize, usize),
}

fn op() -> impl Strategy<Value = Op> {
    let d = 0..DIRS.len();
    let n = 0..NAMES.len();
    prop_oneof![
        3 => (d.clone(), n.clone()).prop_map(|(d, n)| Op::Create(d, n)),
        4 => (d.clone(), n.clone(), 0u32..200_000, 1u16..20_000, any::<u8>()).prop_map(|(d, n, o, l, b)| Op::Write(d, n, o, l, b)),
        2 => (d.clone(), n.clone(), 0u32..150_000).prop_map(|(d, n, s)| Op::Truncate(d, n, s)),
        2 => (d.clone(), n.clone()).prop_map(|(d, n)| Op::Unlink(d, n)),
        2 => (d.clone(), n.clone(), d.clone(), n.clone()).prop_map(|(a, b, c, e)| Op::Rename(a, b, c, e)),
        1 => (d.clone(), n.clone(), d, n).prop_map(|(a, b, c, e)| Op::Link(a, b, c, e)),
    ]
}

/// Names to file ids, and file ids to contents (hard links share an id).
#[derive(Default)]
struct Model {
    names: BTreeMap<String, usize>,
    files: HashMap<usize, Vec<u8>>,
    next: usize,
}

fn path(d: usize, n: usize) -> String {
    if DIRS[d].is_empty() {
        NAMES[n].to_string()
    } else {
        format!("{}/{}", DIRS[d], NAMES[n])
    }
}

struct Under {
    fs: ExtFs,
    dirs: Vec<Ino>,
}

impl Under {
    fn lookup(&self, d: usize, n: usize) -> Result<Ino, Errno> {
        Ok(self
            .fs
            .lookup(&Context::current(), self.dirs[d], OsStr::new(NAMES[n]))?
            .attr
            .ino)
    }
}

fn apply(u: &Under, m: &mut Model, op: &Op) {
    let c = Context::current();
    match *op {
        Op::Create(d, n) => {
            let exists = m.names.contains_key(&path(d, n));
            let r =
                u.fs.create(&c, u.dirs[d], OsStr::new(NAMES[n]), 0o644, libc::O_WRONLY);
            assert_eq!(r.is_ok(), !exists, "{op:?}: {:?}", r.as_ref().err());
            if let Ok((e, opened)) = r {
                u.fs.release(&c, e.attr.ino, opened.fh).unwrap();
                m.names.insert(path(d, n), m.next);
                m.files.insert(m.next, Vec::new());
                m.next += 1;
            }
        }
        Op::Write(d, n, offset, len, byte) => {
            let Some(&id) = m.names.get(&path(d, n)) else {
                return;
            };
            let ino = u.lookup(d, n).unwrap();
            let data = vec![byte; len as usize];
            let opened = u.fs.open(&c, ino, libc::O_WRONLY).unwrap();
            assert_eq!(
                u.fs.write(&c, ino, opened.fh, offset as u64, &data)
                    .unwrap(),
                data.len()
            );
            u.fs.release(&c, ino, opened.fh).unwrap();
            let content = m.files.get_mut(&id).unwrap();
            let end = offset as usize + data.len();
            if content.len() < end {
                content.resize(end, 0);
            }
            content[offset as usize..end].copy_from_slice(&data);
        }
        Op::Truncate(d, n, size) => {
            let Some(&id) = m.names.get(&path(d, n)) else {
                return;
            };
            let ino = u.lookup(d, n).unwrap();
            u.fs.setattr(
                &c,
                ino,
                &SetAttr {
                    size: Some(size as u64),
                    ..SetAttr::default()
                },
            )
            .unwrap();
            m.files.get_mut(&id).unwrap().resize(size as usize, 0);
        }
        Op::Unlink(d, n) => {
            let r = u.fs.unlink(&c, u.dirs[d], OsStr::new(NAMES[n]));
            let gone = m.names.remove(&path(d, n));
            assert_eq!(r.is_ok(), gone.is_some(), "{op:?}: {r:?}");
        }
        Op::Rename(d1, n1, d2, n2) => {
            let r = u.fs.rename(
                &c,
                u.dirs[d1],
                OsStr::new(NAMES[n1]),
                u.dirs[d2],
                OsStr::new(NAMES[n2]),
                0,
            );
            match m.names.get(&path(d1, n1)).copied() {
                None => assert_eq!(r, Err(Errno::ENOENT), "{op:?}"),
                Some(id) => {
                    r.unwrap();
                    // POSIX: renaming onto another link of the same file does nothing.
                    let same_file = m.names.get(&path(d2, n2)) == Some(&id);
                    if path(d1, n1) != path(d2, n2) && !same_file {
                        m.names.remove(&path(d1, n1));
                        m.names.insert(path(d2, n2), id);
                    }
                }
            }
        }
        Op::Link(d1, n1, d2, n2) => {
            let (src, dst) = (
                m.names.get(&path(d1, n1)).copied(),
                m.names.contains_key(&path(d2, n2)),
            );
            let Some(id) = src else { return };
            let ino = u.lookup(d1, n1).unwrap();
            let r = u.fs.link(&c, ino, u.dirs[d2], OsStr::new(NAMES[n2]));
            assert_eq!(r.is_ok(), !dst, "{op:?}: {r:?}");
            if r.is_ok() {
                m.names.insert(path(d2, n2), id);
            }
        }
    }
}

/// Every name the model has exists with its content and link count; no other.
fn check(u: &Under, m: &Model) {
    let c = Context::current();
    let mut links: HashMap<usize, u32> = HashMap::new();
    for id in m.names.values() {
        *links.entry(*id).or_default() += 1;
    }
    for (d, _) in DIRS.iter().enumerate() {
        let mut listed = Vec::new();
        let fh = u.fs.opendir(&c, u.dirs[d]).unwrap();
        u.fs.readdir(&c, u.dirs[d], fh, 0, &mut |e| {
            if e.kind == FileKind::File {
                listed.push(e.name.to_string_lossy().into_owned());
            }
            true
        })
        .unwrap();
        u.fs.releasedir(&c, u.dirs[d], fh).unwrap();
        listed.sort();
        let mut expected: Vec<String> = (0..NAMES.len())
            .filter(|&n| m.names.contains_key(&path(d, n)))
            .map(|n| NAMES[n].to_string())
            .collect();
        expected.sort();
        assert_eq!(listed, expected, "names in /{}", DIRS[d]);
        for (n, name) in NAMES.iter().enumerate() {
            let Some(&id) = m.names.get(&path(d, n)) else {
                continue;
            };
            let attr = u.fs.lookup(&c, u.dirs[d], OsStr::new(name)).unwrap().attr;
            let want = &m.files[&id];
            assert_eq!(attr.size, want.len() as u64, "size of {}", path(d, n));
            assert_eq!(attr.nlink, links[&id], "links of {}", path(d, n));
            let mut got = vec![0u8; want.len()];
            let opened = u.fs.open(&c, attr.ino, libc::O_RDONLY).unwrap();
            let mut done = 0;
            while done < got.len() {
                let k =
                    u.fs.read(&c, attr.ino, opened.fh, done as u64, &mut got[done..])
                        .unwrap();
                assert!(k > 0);
                done += k;
            }
            u.fs.release(&c, attr.ino, opened.fh).unwrap();
            assert!(&got == want, "content of {}", path(d, n));
        }
    }
}

fn fresh(dir: &Path, options: &str) -> (Under, std::path::PathBuf) {
    let img = dir.join("model.img");
    testkit::sh(&format!(
        "truncate -s 32M '{0}' && mke2fs -q -F {options} '{0}'",
        img.display()
    ));
    let dev: Arc<dyn BlockDevice> = Arc::new(FileDevice::open(&img, false).unwrap());
    let fs = ExtFs::open(
        dev,
        ExtOptions {
            read_only: false,
            norecovery: false,
        },
    )
    .unwrap();
    let c = Context::current();
    let x = fs
        .mkdir(&c, Ino::ROOT, OsStr::new("x"), 0o755)
        .unwrap()
        .attr
        .ino;
    let y = fs.mkdir(&c, x, OsStr::new("y"), 0o755).unwrap().attr.ino;
    (
        Under {
            fs,
            dirs: vec![Ino::ROOT, x, y],
        },
        img,
    )
}

proptest! {
    // 64 cases in CI; PROPTEST_CASES asks for more (a longer soak).
    #![proptest_config(ProptestConfig {
        cases: std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(64),
        ..ProptestConfig::default()
    })]

    #[test]
    fn random_operations_match_the_model_and_pass_e2fsck(ops in proptest::collection::vec(op(), 1..40), small_blocks in any::<bool>()) {
        let dir = tempfile::tempdir().unwrap();
        let (under, img) = fresh(dir.path(), if small_blocks { "-t ext4 -b 1024" } else { "-t ext4" });
        let mut model = Model::default();
        for op in &ops {
            apply(&under, &mut model, op);
            check(&under, &model);
        }
        under.fs.fsync(&Context::current(), Ino::ROOT, Fh(0), false).unwrap();
        drop(under);
        let fsck = Command::new("e2fsck").arg("-fn").arg(&img).output().unwrap();
        prop_assert!(fsck.status.success(), "e2fsck -fn after {:?}:\n{}", ops, String::from_utf8_lossy(&fsck.stdout));
    }
}
