//! vufs.so driven as umvu drives it: mount through vuht_pathadd, handlers on mpaths with
//! -1 + errno, the layer written on disk (copy-up, whiteouts, vstat files), `except=` through
//! the confirm function, and the same layer served by the `vufs` FUSE binary.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use vuhost::vufs::VufsModule;
use vuhost::*;

struct Scratch {
    _dir: tempfile::TempDir,
    real: PathBuf,
    over: PathBuf,
}

/// real = {a, b, sub/c}, over = {a, x}: the VUOS.md example.
fn scratch() -> Scratch {
    let dir = tempfile::tempdir().unwrap();
    let real = dir.path().join("real");
    let over = dir.path().join("over");
    fs::create_dir_all(real.join("sub")).unwrap();
    fs::create_dir_all(&over).unwrap();
    fs::write(real.join("a"), "A\n").unwrap();
    fs::write(real.join("b"), "B\n").unwrap();
    fs::write(real.join("sub/c"), "C\n").unwrap();
    fs::write(over.join("a"), "AO\n").unwrap();
    fs::write(over.join("x"), "X\n").unwrap();
    Scratch {
        _dir: dir,
        real,
        over,
    }
}

fn names(list: &[(String, u8)]) -> Vec<&str> {
    list.iter().map(|(n, _)| n.as_str()).collect()
}

fn read_all(m: &vuhost::vufs::VufsMount<'_>, path: &str) -> String {
    let fd = m.open(path, libc::O_RDONLY, 0).unwrap();
    let mut buf = vec![0u8; 4096];
    let n = fd.pread(&mut buf, 0).unwrap();
    fd.close().unwrap();
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

fn tree(dir: &Path) -> Vec<String> {
    let out = Command::new("find")
        .arg(".")
        .current_dir(dir)
        .output()
        .unwrap();
    let mut v: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect();
    v.sort();
    v
}

/// Descriptors of this process on this test's scratch trees (tests run in parallel threads,
/// so only names under the given directory count).
fn open_fds(under: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir("/proc/self/fd")
        .unwrap()
        .filter_map(|e| fs::read_link(e.ok()?.path()).ok())
        .filter(|p| p.starts_with(under))
        .map(|p| p.display().to_string())
        .collect();
    v.sort();
    v
}

#[test]
fn cow_mount_through_the_handlers_writes_the_c_layer_format() {
    let s = scratch();
    let real_before = tree(&s.real);
    let vufs = VufsModule::load();
    let fds_before = open_fds(s._dir.path());
    let m = vufs.mount(&s.over, &s.real, Some("cow"), 0).expect("mount");
    assert!(
        open_fds(s._dir.path()).len() >= 2,
        "the mount holds both layers open"
    );
    let e = m.entry();
    assert_eq!(e.kind, CHECKPATH);
    assert_eq!(e.path, s.real.to_str().unwrap());
    assert_eq!(e.fstype, "vufs");
    assert_eq!(e.vuflags, 0, "a path mount, not a prefix one");
    assert_eq!(e.data.as_deref(), Some("cow"));

    assert_eq!(
        names(&m.list("/").unwrap()),
        [".", "..", "a", "b", "sub", "x"],
        "union view; .- hidden"
    );
    assert_eq!(read_all(&m, "/a"), "AO\n", "upper wins");
    assert_eq!(read_all(&m, "/sub/c"), "C\n");
    let st = m.lstat("/sub").unwrap();
    assert_eq!(st.st_mode & libc::S_IFMT, libc::S_IFDIR);

    // Append to b (umvu turns O_APPEND writes into pwrite64 at the size): copy-up.
    let fd = m.open("/b", libc::O_WRONLY | libc::O_APPEND, 0).unwrap();
    let size = fd.lseek(0, libc::SEEK_END).unwrap();
    assert_eq!(size, 2);
    assert_eq!(fd.pwrite(b"more\n", size), Ok(5));
    assert_eq!(
        fd.fstat("/b").unwrap().st_size,
        7,
        "fstat through sfd/fdprivate"
    );
    fd.close().unwrap();
    assert_eq!(fs::read_to_string(s.over.join("b")).unwrap(), "B\nmore\n");
    assert_eq!(fs::read_to_string(s.real.join("b")).unwrap(), "B\n");

    // Whiteouts: a file, then its directory.
    m.unlink("/sub/c").unwrap();
    assert_eq!(m.lstat("/sub/c").err(), Some(libc::ENOENT));
    let wh = s.over.join(".-/sub/c");
    assert!(
        wh.is_file() && fs::metadata(&wh).unwrap().len() == 0,
        "whiteout file"
    );
    m.rmdir("/sub").unwrap();
    assert!(
        s.over.join(".-/sub").is_file(),
        "the directory whiteout replaces the tree"
    );
    assert_eq!(m.list("/sub").err(), Some(libc::ENOENT));

    // A device node: a regular file plus a vstat side file.
    m.mknod("/cdev", libc::S_IFCHR | 0o644, libc::makedev(1, 3))
        .unwrap();
    let st = m.lstat("/cdev").unwrap();
    assert_eq!(st.st_mode & libc::S_IFMT, libc::S_IFCHR);
    assert_eq!(st.st_rdev, libc::makedev(1, 3));
    let vstat = fs::read_to_string(s.over.join(".-/cdev\u{7f}")).unwrap();
    assert!(
        vstat.contains("type=c") && vstat.contains("rdev=1,3"),
        "{vstat}"
    );

    // Create, exclusive create, write, truncate, rename, symlink, link, mkdir, chmod.
    let fd = m
        .open("/new", libc::O_CREAT | libc::O_EXCL | libc::O_RDWR, 0o640)
        .unwrap();
    assert_eq!(fd.pwrite(b"0123456789", 0), Ok(10));
    let mut b = [0u8; 4];
    assert_eq!(fd.pread(&mut b, 3), Ok(4));
    assert_eq!(&b, b"3456");
    fd.close().unwrap();
    assert_eq!(
        m.open("/new", libc::O_CREAT | libc::O_EXCL | libc::O_RDWR, 0o640)
            .err(),
        Some(libc::EEXIST)
    );
    m.truncate("/new", 4).unwrap();
    assert_eq!(m.lstat("/new").unwrap().st_size, 4);
    assert_eq!(m.lstat("/new").unwrap().st_mode & 0o777, 0o640);
    m.mkdir("/d", 0o755).unwrap();
    m.rename("/new", "/d/moved", 0).unwrap();
    assert_eq!(m.lstat("/new").err(), Some(libc::ENOENT));
    assert_eq!(read_all(&m, "/d/moved"), "0123");
    m.symlink("../a", "/d/link").unwrap();
    assert_eq!(m.readlink("/d/link").unwrap(), "../a");
    m.link("/d/moved", "/d/hard").unwrap();
    assert_eq!(m.lstat("/d/hard").unwrap().st_nlink, 2);
    m.chmod("/a", 0o600).unwrap();
    assert_eq!(m.lstat("/a").unwrap().st_mode & 0o777, 0o600);
    // rm of a name present in both layers: unlinks upper and whites out lower.
    m.unlink("/a").unwrap();
    assert!(s.over.join(".-/a").is_file());
    assert!(!s.over.join("a").exists());
    assert_eq!(m.lstat("/a").err(), Some(libc::ENOENT));

    // umvu's own slips: readv passes the process fd as sfd; mmap write-back passes garbage
    // as fdprivate. The module finds the file by whichever of the two is right.
    let fd = m.open("/x", libc::O_RDONLY, 0).unwrap();
    let mut b = [0u8; 2];
    assert_eq!(fd.pread_as(9999, fd.fdprivate, &mut b, 0), Ok(2));
    assert_eq!(&b, b"X\n");
    let garbage = 0x10 as *mut std::ffi::c_void;
    assert_eq!(fd.pread_as(fd.sfd, garbage, &mut b, 0), Ok(2));
    assert_eq!(
        fd.pread_as(9999, garbage, &mut b, 0),
        Err(libc::EBADF),
        "an unknown file is EBADF, never a dereference"
    );
    fd.close().unwrap();

    // O_PATH opens nothing: fstat works, I/O is EBADF; a directory is not listed.
    let fd = m.open("/d", libc::O_PATH | libc::O_DIRECTORY, 0).unwrap();
    assert_eq!(
        fd.fstat("/d").unwrap().st_mode & libc::S_IFMT,
        libc::S_IFDIR
    );
    assert_eq!(fd.getdents64(&mut [0u8; 256]), Err(libc::EBADF));
    fd.close().unwrap();
    let fd = m.open("/x", libc::O_PATH, 0).unwrap();
    assert_eq!(fd.pread(&mut [0u8; 4], 0), Err(libc::EBADF));
    assert_eq!(fd.fstat("/x").unwrap().st_size, 2);
    fd.close().unwrap();
    assert_eq!(
        m.open("/x", libc::O_PATH | libc::O_DIRECTORY, 0).err(),
        Some(libc::ENOTDIR)
    );

    // errno conventions.
    assert_eq!(m.lstat("/nope").err(), Some(libc::ENOENT));
    assert_eq!(m.open("/nope", libc::O_RDONLY, 0).err(), Some(libc::ENOENT));
    assert_eq!(m.rmdir("/d").err(), Some(libc::ENOTEMPTY));
    assert_eq!(m.mkdir("/d", 0o755).err(), Some(libc::EEXIST));
    assert_eq!(m.open("/d", libc::O_RDWR, 0).err(), Some(libc::EISDIR));
    assert_eq!(
        m.open("/x", libc::O_RDONLY | libc::O_DIRECTORY, 0).err(),
        Some(libc::ENOTDIR)
    );
    assert_eq!(m.readlink("/x").err(), Some(libc::EINVAL));
    assert!(m.statfs("/").unwrap().f_blocks > 0);

    // Many entries over several small getdents64 calls, each name once.
    for i in 0..40 {
        m.open(
            &format!("/d/f{i:02}"),
            libc::O_CREAT | libc::O_WRONLY,
            0o644,
        )
        .unwrap()
        .close()
        .unwrap();
    }
    let listed = m.list("/d").unwrap();
    assert_eq!(listed.len(), 2 + 3 + 40);
    assert!(listed.contains(&("link".to_string(), libc::DT_LNK)));

    m.umount().unwrap();
    assert_eq!(
        open_fds(s._dir.path()),
        fds_before,
        "cleanup closed every layer and file descriptor"
    );
    assert_eq!(
        tree(&s.real),
        real_before,
        "cow never writes the lower tree"
    );
    assert_eq!(fs::read_to_string(s.real.join("a")).unwrap(), "A\n");
}

#[test]
fn except_goes_through_confirm_and_bad_options_are_einval() {
    let s = scratch();
    let vufs = VufsModule::load();
    let m = vufs
        .mount(&s.over, &s.real, Some("cow,except=/sub"), 0)
        .unwrap();
    assert!(m.confirm(""), "the mount root is ours");
    assert!(m.confirm("/a"));
    assert!(!m.confirm("/sub"), "excepted");
    assert!(!m.confirm("/sub/c"), "below the exception");
    assert!(m.confirm("/subway"), "a longer name is not below /sub");
    m.umount().unwrap();

    for bad in ["cow,merge", "bogus", "except", "except=rel", "cow=1"] {
        assert_eq!(
            vufs.mount(&s.over, &s.real, Some(bad), 0).err(),
            Some(libc::EINVAL),
            "{bad}"
        );
    }
    let missing = s.over.join("missing");
    assert_eq!(
        vufs.mount(&missing, &s.real, Some("cow"), 0).err(),
        Some(libc::ENOENT)
    );
    // vumount -r (MS_RDONLY): every change is EROFS, reads work (umvu itself does not check).
    let m = vufs
        .mount(&s.over, &s.real, Some("cow"), libc::MS_RDONLY)
        .unwrap();
    assert_eq!(read_all(&m, "/b"), "B\n");
    assert_eq!(m.open("/b", libc::O_WRONLY, 0).err(), Some(libc::EROFS));
    assert_eq!(
        m.open("/b", libc::O_RDONLY | libc::O_TRUNC, 0).err(),
        Some(libc::EROFS)
    );
    assert_eq!(
        m.open("/new", libc::O_CREAT | libc::O_WRONLY, 0o644).err(),
        Some(libc::EROFS)
    );
    assert_eq!(m.unlink("/a").err(), Some(libc::EROFS));
    assert_eq!(m.mkdir("/d", 0o755).err(), Some(libc::EROFS));
    assert_eq!(m.rename("/a", "/z", 0).err(), Some(libc::EROFS));
    assert_eq!(m.chmod("/a", 0o600).err(), Some(libc::EROFS));
    assert_eq!(m.truncate("/a", 0).err(), Some(libc::EROFS));
    assert_eq!(m.symlink("a", "/l").err(), Some(libc::EROFS));
    m.umount().unwrap();
    assert_eq!(fs::read_to_string(s.over.join("a")).unwrap(), "AO\n");
    assert!(!s.over.join("b").exists() && !s.over.join("z").exists());

    // Read-only merge: upper files refuse writes (SOURCE is read-only in merge mode).
    let m = vufs.mount(&s.over, &s.real, Some("merge"), 0).unwrap();
    assert_eq!(m.open("/a", libc::O_WRONLY, 0).err(), Some(libc::EROFS));
    m.umount().unwrap();
}

fn vufs_binary() -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    let bin = exe.parent()?.parent()?.join("vufs");
    bin.exists().then_some(bin)
}

#[test]
fn a_layer_made_by_the_module_is_the_fuse_binarys_view() {
    let Some(bin) = vufs_binary() else {
        testkit::skip("target/debug/vufs not built (cargo build -p vufs)");
        return;
    };
    if fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/fuse")
        .is_err()
    {
        testkit::skip("/dev/fuse cannot be opened");
        return;
    }
    let s = scratch();
    let vufs = VufsModule::load();
    let m = vufs.mount(&s.over, &s.real, Some("cow"), 0).unwrap();
    m.unlink("/sub/c").unwrap();
    let fd = m.open("/b", libc::O_WRONLY | libc::O_TRUNC, 0).unwrap();
    fd.pwrite(b"changed\n", 0).unwrap();
    fd.close().unwrap();
    m.mknod("/cdev", libc::S_IFCHR | 0o644, libc::makedev(1, 3))
        .unwrap();
    m.mkdir("/newdir", 0o750).unwrap();
    let module_view = m.list("/").unwrap();
    m.umount().unwrap();

    // The FUSE binary mounts the same layer over the same lower tree.
    let out = testkit::run_daemon(testkit::s(&bin), &["cow"], &s.over, &s.real);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let check = || -> Result<(), String> {
        let mut fuse_view: Vec<(String, u8)> = fs::read_dir(&s.real)
            .map_err(|e| e.to_string())?
            .map(|e| {
                let e = e.unwrap();
                let ft = e.file_type().unwrap();
                let t = if ft.is_dir() {
                    libc::DT_DIR
                } else if ft.is_char_device() {
                    libc::DT_CHR
                } else {
                    libc::DT_REG
                };
                (e.file_name().to_string_lossy().into_owned(), t)
            })
            .collect();
        fuse_view.push((".".into(), libc::DT_DIR));
        fuse_view.push(("..".into(), libc::DT_DIR));
        fuse_view.sort();
        if fuse_view != module_view {
            return Err(format!(
                "views differ: fuse {fuse_view:?} module {module_view:?}"
            ));
        }
        let b = fs::read_to_string(s.real.join("b")).map_err(|e| e.to_string())?;
        if b != "changed\n" {
            return Err(format!("b = {b:?}"));
        }
        if s.real.join("sub/c").exists() {
            return Err("whiteout ignored".into());
        }
        let st = fs::symlink_metadata(s.real.join("cdev")).map_err(|e| e.to_string())?;
        use std::os::unix::fs::{FileTypeExt, MetadataExt};
        if !st.file_type().is_char_device() || st.rdev() != libc::makedev(1, 3) {
            return Err("cdev not a 1,3 char device".into());
        }
        Ok(())
    };
    let result = check();
    let _ = Command::new("fusermount3").arg("-u").arg(&s.real).status();
    result.unwrap();
}
