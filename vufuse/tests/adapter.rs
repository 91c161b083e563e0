//! The FUSE adapter served in process (fuser's session, no daemon): replies that fill the
//! kernel's buffers, lookups, credentials, the read-only flag.

use std::fs::OpenOptions;
use testkit::is_mounted;

/// A directory of many long names, served in-process, to drive the
/// adapter's readdir through many full reply buffers.
struct ManyNames {
    count: u64,
    readdir_calls: std::sync::atomic::AtomicU64,
    lookups: std::sync::atomic::AtomicU64,
    last_uid: std::sync::atomic::AtomicU32,
}

impl ManyNames {
    fn name(i: u64) -> String {
        format!("{i:0>120}")
    }

    fn attr(ino: vufuse_api::Ino, kind: vufuse_api::FileKind) -> vufuse_api::Attr {
        let t = std::time::SystemTime::UNIX_EPOCH;
        vufuse_api::Attr {
            ino,
            size: 0,
            blocks: 0,
            atime: t,
            mtime: t,
            ctime: t,
            crtime: t,
            kind,
            perm: 0o755,
            nlink: 1,
            uid: 0,
            gid: 0,
            rdev: 0,
            blksize: 4096,
        }
    }
}

impl vufuse_api::FileSystem for ManyNames {
    fn lookup(
        &self,
        ctx: &vufuse_api::Context,
        parent: vufuse_api::Ino,
        name: &std::ffi::OsStr,
    ) -> vufuse_api::Result<vufuse_api::Entry> {
        use std::sync::atomic::Ordering;
        self.last_uid.store(ctx.uid, Ordering::Relaxed);
        let i: u64 = name
            .to_str()
            .and_then(|n| n.parse().ok())
            .filter(|&i| {
                parent == vufuse_api::Ino::ROOT && i < self.count && *Self::name(i) == *name
            })
            .ok_or(vufuse_api::Errno::ENOENT)?;
        self.lookups.fetch_add(1, Ordering::Relaxed);
        Ok(vufuse_api::Entry {
            attr: Self::attr(vufuse_api::Ino(i + 2), vufuse_api::FileKind::File),
            generation: 0,
        })
    }

    fn getattr(
        &self,
        _ctx: &vufuse_api::Context,
        ino: vufuse_api::Ino,
        _fh: Option<vufuse_api::Fh>,
    ) -> vufuse_api::Result<vufuse_api::Attr> {
        let kind = if ino == vufuse_api::Ino::ROOT {
            vufuse_api::FileKind::Dir
        } else {
            vufuse_api::FileKind::File
        };
        Ok(Self::attr(ino, kind))
    }

    fn readdir(
        &self,
        _ctx: &vufuse_api::Context,
        _ino: vufuse_api::Ino,
        _fh: vufuse_api::Fh,
        offset: u64,
        sink: &mut dyn FnMut(vufuse_api::DirEntry<'_>) -> bool,
    ) -> vufuse_api::Result<()> {
        self.readdir_calls
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        for position in offset..self.count + 2 {
            let (name, ino, kind) = match position {
                0 => (
                    ".".to_string(),
                    vufuse_api::Ino::ROOT,
                    vufuse_api::FileKind::Dir,
                ),
                1 => (
                    "..".to_string(),
                    vufuse_api::Ino::ROOT,
                    vufuse_api::FileKind::Dir,
                ),
                p => (
                    Self::name(p - 2),
                    vufuse_api::Ino(p),
                    vufuse_api::FileKind::File,
                ),
            };
            let accepted = sink(vufuse_api::DirEntry {
                ino,
                next_offset: position + 1,
                kind,
                name: std::ffi::OsStr::new(&name),
            });
            if !accepted {
                break;
            }
        }
        Ok(())
    }

    fn statfs(&self, _ctx: &vufuse_api::Context) -> vufuse_api::Result<vufuse_api::StatFs> {
        Ok(vufuse_api::StatFs::default())
    }
}

#[test]
fn readdir_resumes_after_full_reply_buffers() {
    if let Err(e) = OpenOptions::new().read(true).write(true).open("/dev/fuse") {
        return testkit::skip(&format!("cannot open /dev/fuse: {e}"));
    }
    use std::sync::atomic::Ordering;
    let dir = tempfile::tempdir().unwrap();
    let mnt = dir.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let fs = std::sync::Arc::new(ManyNames {
        count: 3000,
        readdir_calls: Default::default(),
        lookups: Default::default(),
        last_uid: Default::default(),
    });
    let options = vufuse_api::options::MountOptions::defaults(
        vufuse_api::options::WritePolicy::ReadOnlyUnlessForced,
    );
    let config =
        vufuse::fuse::session_config(&options, &Default::default(), false, "manynames", "vutest");
    let adapter = vufuse::fuse::FuseAdapter::new(fs.clone(), false);
    let session = fuser::Session::new(adapter, &mnt, &config).expect("mount in process");
    let _guard = testkit::MountGuard::new(&mnt);
    let background = session.spawn().unwrap();

    let names: Vec<String> = std::fs::read_dir(&mnt)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    let expected: Vec<String> = (0..3000).map(ManyNames::name).collect();
    assert_eq!(names.len(), 3000, "each name exactly once");
    assert!(names == expected, "in the driver's order");
    let calls = fs.readdir_calls.load(Ordering::Relaxed);
    assert!(
        calls > 10,
        "only {calls} readdir calls: buffers were never full"
    );

    let meta = std::fs::metadata(mnt.join(ManyNames::name(2999))).unwrap();
    assert!(meta.is_file());
    let missing = std::fs::metadata(mnt.join("nope")).unwrap_err();
    assert_eq!(missing.raw_os_error(), Some(libc::ENOENT));
    assert!(fs.lookups.load(Ordering::Relaxed) >= 1);
    assert_eq!(
        fs.last_uid.load(Ordering::Relaxed),
        rustix::process::geteuid().as_raw(),
        "the caller's uid reaches the driver"
    );
    let ro = OpenOptions::new()
        .write(true)
        .open(mnt.join(ManyNames::name(1)))
        .unwrap_err();
    assert_eq!(ro.raw_os_error(), Some(libc::EROFS), "mounted read-only");
    background.umount_and_join().unwrap();
    assert!(!is_mounted(&mnt));
}
