//! vufuseext2.so driven through the C ABI exactly as vufuse drives it (the
//! fusehost harness plays vufuse), with the image checked afterwards by
//! e2fsck -fn and debugfs.

use fusehost::tools::{
    defined_symbols, extract, implant, pattern, run, s, sparse_file, undefined_symbols,
};
use fusehost::{module_path, Module, MountFailure, Mounted};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use testkit::e2fsck_clean;

fn module() -> &'static Module {
    static MODULE: OnceLock<Module> = OnceLock::new();
    MODULE.get_or_init(|| Module::load(&module_path("vufuseext2")).expect("dlopen RTLD_NOW"))
}

/// A fresh ext4 image of `mib` MiB holding `hello.txt` and a symlink to it.
fn ext_image(dir: &Path, name: &str, mib: u64) -> PathBuf {
    let seed = dir.join(format!("{name}.seed"));
    std::fs::create_dir_all(seed.join("docs")).unwrap();
    std::fs::write(seed.join("hello.txt"), b"hello from mke2fs\n").unwrap();
    std::os::unix::fs::symlink("hello.txt", seed.join("link")).unwrap();
    let img = dir.join(name);
    sparse_file(&img, mib << 20);
    run(
        "mke2fs",
        &[
            "-q",
            "-F",
            "-t",
            "ext4",
            "-L",
            "vutest",
            "-d",
            s(&seed),
            s(&img),
        ],
    );
    img
}

fn mount(args: &[&str]) -> Mounted {
    module()
        .mount(args)
        .unwrap_or_else(|e| panic!("mount {args:?} failed: {e:?}"))
}

fn debugfs(img: &Path, request: &str) -> Vec<u8> {
    let out = std::process::Command::new("debugfs")
        .args(["-R", request, s(img)])
        .output()
        .expect("debugfs");
    assert!(out.status.success(), "debugfs {request}");
    out.stdout
}

#[test]
fn exports_main_and_the_reentrant_tag_and_does_not_link_libfuse() {
    let so = module_path("vufuseext2");
    let defined = defined_symbols(&so);
    for name in ["main", "fuse_reentrant_tag"] {
        assert!(
            defined.iter().any(|d| d == name),
            "{name} not exported:\n{defined:?}"
        );
    }
    let fuse_imports: Vec<String> = undefined_symbols(&so)
        .into_iter()
        .filter(|n| n.starts_with("fuse_"))
        .collect();
    assert_eq!(fuse_imports, ["fuse_get_context", "fuse_main_real"]);
    let dynamic = run("readelf", &["-d", s(&so)]);
    assert!(dynamic.contains("libext2fs"), "{dynamic}");
    assert!(!dynamic.contains("libfuse"), "links libfuse:\n{dynamic}");
}

/// libext2fs inside a dlopened module checksums with the driver's crc32c (SSE4.2), as in the
/// fuseext2 executable: the dynamic loader, asked to bind everything at load and report it,
/// binds libext2fs's `ext2fs_crc32c_le` to the module (before: to libext2fs's own table code).
#[test]
fn libext2fs_in_the_module_binds_its_crc32c_to_the_drivers() {
    let so = module_path("vufuseext2");
    let out = std::process::Command::new("python3")
        .args(["-c", "import ctypes, sys; ctypes.CDLL(sys.argv[1])", s(&so)])
        .env("LD_BIND_NOW", "1")
        .env("LD_DEBUG", "bindings")
        .output()
        .expect("python3");
    // The load itself then fails (fuse_main_real and fuse_get_context come from umvu's
    // vufuse), after the loader has bound and reported libext2fs's symbols.
    let log = String::from_utf8_lossy(&out.stderr);
    let binding = log
        .lines()
        .find(|l| l.contains("libext2fs") && l.contains("`ext2fs_crc32c_le'"))
        .unwrap_or_else(|| panic!("no binding of ext2fs_crc32c_le:\n{log}"));
    assert!(
        binding.contains(" to ") && binding.split(" to ").nth(1).unwrap().contains("vufuseext2"),
        "{binding}"
    );
}

#[test]
fn read_write_links_and_metadata_then_e2fsck_and_debugfs_agree() {
    let dir = tempfile::tempdir().unwrap();
    let img = ext_image(dir.path(), "ext4.img", 32);
    let m = mount(&["vufuseext2", "-o", "rw+", s(&img), "/mnt"]);

    assert_eq!(m.read_file("/hello.txt").unwrap(), b"hello from mke2fs\n");
    // readlink: NUL-terminated into the buffer, 0 returned (checked by the harness).
    assert_eq!(m.readlink("/link").unwrap(), b"hello.txt");
    assert_eq!(m.readlink("/hello.txt").unwrap_err(), libc::EINVAL);
    assert_eq!(m.getattr("/nope").unwrap_err(), libc::ENOENT);
    assert_eq!(m.getattr("/hello.txt/x").unwrap_err(), libc::ENOTDIR);

    let big = pattern(5 * (1 << 20) + 77, 3);
    m.write_file("/big.bin", &big).unwrap();
    assert_eq!(m.read_file("/big.bin").unwrap(), big);
    m.mkdir("/dir", 0o750).unwrap();
    assert_eq!(m.getattr("/dir").unwrap().st_mode & 0o7777, 0o750);
    assert_eq!(m.mkdir("/dir", 0o755).unwrap_err(), libc::EEXIST);
    m.write_file("/dir/a.txt", b"alpha").unwrap();
    assert_eq!(m.rmdir("/dir").unwrap_err(), libc::ENOTEMPTY);

    // symlink + hard link + rename + unlink.
    m.symlink("../big.bin", "/dir/biglink").unwrap();
    assert_eq!(m.readlink("/dir/biglink").unwrap(), b"../big.bin");
    let st = m.getattr("/dir/biglink").unwrap();
    assert_eq!(st.st_mode & libc::S_IFMT, libc::S_IFLNK);
    m.link("/dir/a.txt", "/a-hard.txt").unwrap();
    assert_eq!(m.getattr("/a-hard.txt").unwrap().st_nlink, 2);
    assert_eq!(
        m.getattr("/a-hard.txt").unwrap().st_ino,
        m.getattr("/dir/a.txt").unwrap().st_ino
    );
    m.rename("/dir/a.txt", "/dir/b.txt", 0).unwrap();
    assert_eq!(m.getattr("/dir/a.txt").unwrap_err(), libc::ENOENT);
    m.unlink("/a-hard.txt").unwrap();
    assert_eq!(m.getattr("/dir/b.txt").unwrap().st_nlink, 1);
    m.rename("/dir", "/renamed", 0).unwrap();
    assert_eq!(m.read_file("/renamed/b.txt").unwrap(), b"alpha");
    assert_eq!(m.list("/renamed").unwrap(), ["b.txt", "biglink"]);

    // metadata: chmod, chown, utimens, truncate, mknod.
    m.chmod("/renamed/b.txt", 0o600).unwrap();
    m.chown("/renamed/b.txt", 1000, 100).unwrap();
    m.chown("/renamed/b.txt", u32::MAX, 200).unwrap();
    let when = libc::timespec {
        tv_sec: 1_234_567_890,
        tv_nsec: 0,
    };
    let omit = libc::timespec {
        tv_sec: 0,
        tv_nsec: libc::UTIME_OMIT,
    };
    m.utimens("/renamed/b.txt", Some([omit, when])).unwrap();
    let st = m.getattr("/renamed/b.txt").unwrap();
    assert_eq!(st.st_mode & 0o7777, 0o600);
    assert_eq!((st.st_uid, st.st_gid), (1000, 200));
    assert_eq!(st.st_mtime, 1_234_567_890);
    m.truncate("/big.bin", 1000).unwrap();
    m.mknod("/fifo", libc::S_IFIFO | 0o644, 0).unwrap();
    assert_eq!(
        m.getattr("/fifo").unwrap().st_mode & libc::S_IFMT,
        libc::S_IFIFO
    );
    m.mknod("/null", libc::S_IFCHR | 0o666, libc::makedev(1, 3))
        .unwrap();
    assert_eq!(m.getattr("/null").unwrap().st_rdev, libc::makedev(1, 3));

    let mut d = m.opendir("/").unwrap();
    let listed = m.readdir(&mut d).unwrap();
    m.closedir(d).unwrap();
    let link = listed
        .iter()
        .find(|l| l.name == "link")
        .expect("link listed");
    assert_eq!(link.d_type, libc::S_IFLNK >> 12);
    assert_eq!(link.ino, m.getattr("/link").unwrap().st_ino);

    let fs = m.statfs("/").unwrap();
    assert!(fs.f_blocks > 0 && fs.f_bfree < fs.f_blocks && fs.f_files > 0);
    assert_eq!(m.umount(), 0);

    e2fsck_clean(&img);
    assert_eq!(debugfs(&img, "cat /big.bin"), &big[..1000]);
    assert_eq!(debugfs(&img, "cat /renamed/b.txt"), b"alpha");
    let stat = String::from_utf8_lossy(&debugfs(&img, "stat /renamed/b.txt")).into_owned();
    assert!(
        stat.contains("User:  1000") && stat.contains("Group:   200"),
        "{stat}"
    );
    let ls = String::from_utf8_lossy(&debugfs(&img, "ls -l /")).into_owned();
    for name in ["hello.txt", "link", "renamed", "fifo", "null", "big.bin"] {
        assert!(ls.contains(name), "{name} missing:\n{ls}");
    }
    assert!(!ls.contains("a-hard.txt"), "{ls}");
}

#[test]
fn read_only_unless_rw_plus_and_writes_give_erofs() {
    let dir = tempfile::tempdir().unwrap();
    let img = ext_image(dir.path(), "ro.img", 16);
    let before = std::fs::read(&img).unwrap();
    // vufuse's placeholder "rw" (no -o given) is not fuse2fs's rw.
    for opts in ["rw", "ro", "rw+,ro"] {
        let m = mount(&["vufuseext2", "-o", opts, s(&img), "/mnt"]);
        assert_eq!(m.read_file("/hello.txt").unwrap(), b"hello from mke2fs\n");
        assert_eq!(
            m.create("/new", 0o644, libc::O_WRONLY).unwrap_err(),
            libc::EROFS,
            "{opts}"
        );
        assert_eq!(m.mkdir("/d", 0o755).unwrap_err(), libc::EROFS, "{opts}");
        assert_eq!(m.unlink("/hello.txt").unwrap_err(), libc::EROFS, "{opts}");
        assert_eq!(m.symlink("x", "/y").unwrap_err(), libc::EROFS, "{opts}");
        assert_eq!(m.umount(), 0);
    }
    assert!(
        std::fs::read(&img).unwrap() == before,
        "a read-only mount changed the image"
    );
}

#[test]
fn a_partition_of_an_sfdisk_disk_with_part_n() {
    let dir = tempfile::tempdir().unwrap();
    let disk = dir.path().join("disk.img");
    sparse_file(&disk, 48 << 20);
    let mut child = std::process::Command::new("sfdisk")
        .args(["--no-reread", "--no-tell-kernel", "-q", s(&disk)])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("sfdisk");
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"label: dos\nstart=2048, size=8192, type=c\nstart=10240, size=65536, type=83\n")
        .unwrap();
    assert!(child.wait().unwrap().success());
    let part = ext_image(dir.path(), "p2.img", 32);
    implant(&part, &disk, 10240 * 512);
    let data = pattern(300_000, 9);
    let m = mount(&["vufuseext2", "-o", "rw+,part=2", s(&disk), "/mnt"]);
    m.write_file("/data.bin", &data).unwrap();
    assert_eq!(m.umount(), 0);
    let copy = dir.path().join("p2-after.img");
    extract(&disk, 10240 * 512, 32 << 20, &copy);
    e2fsck_clean(&copy);
    assert_eq!(debugfs(&copy, "cat /data.bin"), data);
    // Without part=, the only ext partition is found.
    let m = mount(&["vufuseext2", "-o", "ro", s(&disk), "/mnt"]);
    assert_eq!(m.read_file("/data.bin").unwrap(), data);
    assert_eq!(m.umount(), 0);
    assert_eq!(
        module()
            .mount(&["vufuseext2", "-o", "part=1", s(&disk), "/mnt"])
            .err(),
        Some(MountFailure::MainReturned(1)),
        "partition 1 holds no ext filesystem"
    );
}

#[test]
fn bad_options_and_bad_images_make_main_return_nonzero() {
    let dir = tempfile::tempdir().unwrap();
    let zeros = dir.path().join("zeros.img");
    sparse_file(&zeros, 4 << 20);
    let img = ext_image(dir.path(), "ok.img", 16);
    let truncated = dir.path().join("truncated.img");
    std::fs::write(&truncated, &std::fs::read(&img).unwrap()[..8192]).unwrap();
    let cases: Vec<Vec<&str>> = vec![
        vec!["vufuseext2", "-o", "rw+", "/nonexistent/image", "/mnt"],
        vec!["vufuseext2", "-o", "rw+", s(&zeros), "/mnt"],
        vec!["vufuseext2", "-o", "rw", s(&truncated), "/mnt"],
        vec!["vufuseext2", "-o", "rw+,frobnicate", s(&img), "/mnt"],
        vec!["vufuseext2"],
    ];
    for argv in cases {
        module().assert_mount_refused(&argv);
    }
}

#[test]
fn two_concurrent_mounts_of_the_same_module() {
    let dir = tempfile::tempdir().unwrap();
    let a = ext_image(dir.path(), "a.img", 16);
    let b = ext_image(dir.path(), "b.img", 16);
    let ma = mount(&["vufuseext2", "-o", "rw+", s(&a), "/a"]);
    let mb = mount(&["vufuseext2", "-o", "rw+", s(&b), "/b"]);
    std::thread::scope(|scope| {
        for (m, seed) in [(&ma, 1u32), (&mb, 2u32)] {
            scope.spawn(move || {
                m.mkdir("/d", 0o755).unwrap();
                for i in 0..30u32 {
                    let name = format!("/d/f{i}");
                    m.write_file(&name, &pattern(5000 + i as usize, seed * 100 + i))
                        .unwrap();
                }
                for i in 0..30u32 {
                    let name = format!("/d/f{i}");
                    assert_eq!(
                        m.read_file(&name).unwrap(),
                        pattern(5000 + i as usize, seed * 100 + i)
                    );
                }
            });
        }
    });
    assert_eq!(ma.umount(), 0);
    assert_eq!(mb.umount(), 0);
    for (img, seed) in [(&a, 1u32), (&b, 2u32)] {
        e2fsck_clean(img);
        assert_eq!(debugfs(img, "cat /d/f29"), pattern(5029, seed * 100 + 29));
    }
}

#[test]
fn ownership_options_as_fuseext2() {
    let dir = tempfile::tempdir().unwrap();
    let img = ext_image(dir.path(), "owners.img", 16);
    // uid=/gid=/umask= change what is reported, not what is written.
    let m = mount(&[
        "vufuseext2",
        "-o",
        "rw+,uid=1234,gid=99,umask=027",
        s(&img),
        "/mnt",
    ]);
    m.write_file("/f", b"x").unwrap();
    let f = m.getattr("/f").unwrap();
    assert_eq!((f.st_uid, f.st_gid), (1234, 99));
    // As fuse2fs: umask=M reports every file's permission bits as ~M (0644 on disk).
    assert_eq!(f.st_mode & 0o777, 0o750, "umask=027: {:o}", f.st_mode);
    assert_eq!(m.umount(), 0);
    let on_disk = String::from_utf8_lossy(&debugfs(&img, "stat /f")).into_owned();
    assert!(on_disk.contains("User:     0   Group:     0"), "{on_disk}");
    // fakeroot: a file made by any caller belongs to root.
    let m = mount(&["vufuseext2", "-o", "rw+,fakeroot", s(&img), "/mnt"]);
    m.set_caller(4321, 4321);
    m.write_file("/g", b"y").unwrap();
    m.set_caller(0, 0);
    assert_eq!(m.umount(), 0);
    let on_disk = String::from_utf8_lossy(&debugfs(&img, "stat /g")).into_owned();
    assert!(on_disk.contains("User:     0   Group:     0"), "{on_disk}");
    // Without it the caller owns what it makes.
    let m = mount(&["vufuseext2", "-o", "rw+", s(&img), "/mnt"]);
    m.set_caller(4321, 4321);
    m.write_file("/h", b"z").unwrap();
    m.set_caller(0, 0);
    assert_eq!(m.umount(), 0);
    let on_disk = String::from_utf8_lossy(&debugfs(&img, "stat /h")).into_owned();
    assert!(on_disk.contains("User:  4321   Group:  4321"), "{on_disk}");
    e2fsck_clean(&img);
}

/// Drops CAP_FSETID from the calling thread's effective set (the harness gives each call
/// the calling thread's id as the caller's pid), so that thread writes as an ordinary user
/// would, without the right to keep set-id bits.
fn drop_fsetid_on_this_thread() {
    use rustix::thread::{capabilities, set_capabilities, CapabilitySet};
    let mut sets = capabilities(None).expect("capget");
    sets.effective.remove(CapabilitySet::FSETID);
    set_capabilities(None, sets).expect("capset");
}

/// Under umvu no kernel clears set-id bits, so the module does, as the VFS would: a chown
/// clears set-user-ID (and set-group-ID with group execute) of a file whoever asks; a write
/// or truncate clears them only for a caller without CAP_FSETID; a directory keeps its
/// set-group-ID. debugfs reads the modes from the image.
#[test]
fn chown_write_and_truncate_clear_set_id_bits_as_the_vfs_does() {
    let dir = tempfile::tempdir().unwrap();
    let img = ext_image(dir.path(), "setid.img", 16);
    let m = mount(&["vufuseext2", "-o", "rw+", s(&img), "/mnt"]);
    let mode = |path: &str| m.getattr(path).unwrap().st_mode & 0o7777;
    for f in ["/chowned", "/by-root", "/by-user", "/cut"] {
        m.write_file(f, b"#!/bin/sh\n").unwrap();
        m.chmod(f, 0o6755).unwrap();
    }
    m.mkdir("/shared", 0o2775).unwrap();
    m.chown("/chowned", 1000, 1000).unwrap();
    assert_eq!(mode("/chowned"), 0o755);
    m.chown("/shared", 1000, 1000).unwrap();
    assert_eq!(mode("/shared"), 0o2775);
    // The test runs as root: its own write keeps the bits (CAP_FSETID).
    let mut h = m.open("/by-root", libc::O_WRONLY).unwrap();
    m.write(&mut h, 0, b"#").unwrap();
    m.close(h).unwrap();
    assert_eq!(mode("/by-root"), 0o6755);
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                drop_fsetid_on_this_thread();
                let mut h = m.open("/by-user", libc::O_WRONLY).unwrap();
                m.write(&mut h, 0, b"#").unwrap();
                m.close(h).unwrap();
                m.truncate("/cut", 1).unwrap();
            })
            .join()
            .unwrap();
    });
    assert_eq!(mode("/by-user"), 0o755);
    assert_eq!(mode("/cut"), 0o755);
    assert_eq!(m.umount(), 0);
    let on_disk = String::from_utf8_lossy(&debugfs(&img, "stat /by-user")).into_owned();
    assert!(on_disk.contains("Mode:  0755"), "{on_disk}");
    let on_disk = String::from_utf8_lossy(&debugfs(&img, "stat /by-root")).into_owned();
    assert!(on_disk.contains("Mode:  06755"), "{on_disk}");
    e2fsck_clean(&img);
}
