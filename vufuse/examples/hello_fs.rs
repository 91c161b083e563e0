//! The smallest useful driver: one read-only file, `hello.txt`, served through the kernel by
//! the shared FUSE daemon. Run: `hello_fs none MOUNTPOINT` (then `cat MOUNTPOINT/hello.txt`).

use std::ffi::OsStr;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::SystemTime;
use vufuse::daemon::{self, DaemonSpec, MountpointKind, Served, SourceArg};
use vufuse_api::options::WritePolicy;
use vufuse_api::{
    Attr, Context, DirEntry, Entry, Errno, Fh, FileKind, FileSystem, Ino, Opened, StatFs,
};

const TEXT: &[u8] = b"hello from a FileSystem\n";
const FILE: Ino = Ino(2);

struct Hello;

fn attr(ino: Ino, kind: FileKind, size: u64, perm: u16) -> Attr {
    let t = SystemTime::UNIX_EPOCH;
    #[rustfmt::skip]
    let a = Attr { ino, size, blocks: size.div_ceil(512), atime: t, mtime: t, ctime: t,
        crtime: t, kind, perm, nlink: 1, uid: 0, gid: 0, rdev: 0, blksize: 4096 };
    a
}

impl FileSystem for Hello {
    fn lookup(&self, _: &Context, parent: Ino, name: &OsStr) -> vufuse_api::Result<Entry> {
        if parent != Ino::ROOT || name != "hello.txt" {
            return Err(Errno::ENOENT);
        }
        let attr = attr(FILE, FileKind::File, TEXT.len() as u64, 0o444);
        Ok(Entry {
            attr,
            generation: 0,
        })
    }

    fn getattr(&self, _: &Context, ino: Ino, _: Option<Fh>) -> vufuse_api::Result<Attr> {
        match ino {
            Ino::ROOT => Ok(attr(Ino::ROOT, FileKind::Dir, 0, 0o555)),
            FILE => Ok(attr(FILE, FileKind::File, TEXT.len() as u64, 0o444)),
            _ => Err(Errno::ENOENT),
        }
    }

    fn open(&self, _: &Context, _: Ino, _: i32) -> vufuse_api::Result<Opened> {
        Ok(Opened {
            fh: Fh(0),
            keep_cache: true,
            direct_io: false,
        })
    }

    fn read(
        &self,
        _: &Context,
        _: Ino,
        _: Fh,
        offset: u64,
        buf: &mut [u8],
    ) -> vufuse_api::Result<usize> {
        let rest = TEXT.get(offset as usize..).unwrap_or_default();
        let n = rest.len().min(buf.len());
        buf[..n].copy_from_slice(&rest[..n]);
        Ok(n)
    }

    fn readdir(
        &self,
        _: &Context,
        _: Ino,
        _: Fh,
        offset: u64,
        sink: &mut dyn FnMut(DirEntry<'_>) -> bool,
    ) -> vufuse_api::Result<()> {
        if offset == 0 {
            sink(DirEntry {
                ino: FILE,
                next_offset: 1,
                kind: FileKind::File,
                name: OsStr::new("hello.txt"),
            });
        }
        Ok(())
    }

    fn statfs(&self, _: &Context) -> vufuse_api::Result<StatFs> {
        Ok(StatFs {
            block_size: 4096,
            name_max: 255,
            ..StatFs::default()
        })
    }
}

const SPEC: DaemonSpec = DaemonSpec {
    name: "hello_fs",
    about: "Serves one read-only file, hello.txt.",
    source: SourceArg::Ignored,
    mountpoint: MountpointKind::Directory,
    write_policy: WritePolicy::ReadOnlyUnlessForced,
    extra_options: "",
};

fn main() -> ExitCode {
    daemon::main(&SPEC, |_| Ok(Served::new(Arc::new(Hello))))
}
