//! vufusefatfs.so driven through the C ABI exactly as vufuse drives it (the
//! fusehost harness plays vufuse), with the image checked afterwards by
//! fsck.fat and mtools.

use fusehost::tools::{
    defined_symbols, extract, implant, pattern, run, s, sparse_file, undefined_symbols,
};
use fusehost::{module_path, Module, MountFailure, Mounted};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use testkit::fsck_fat_clean;

fn module() -> &'static Module {
    static MODULE: OnceLock<Module> = OnceLock::new();
    MODULE.get_or_init(|| Module::load(&module_path("vufusefatfs")).expect("dlopen RTLD_NOW"))
}

/// A fresh FAT image of `mib` MiB (FAT16 below 64 MiB, FAT32 with `fat32`).
fn fat_image(dir: &Path, name: &str, mib: u64, fat32: bool) -> PathBuf {
    let img = dir.join(name);
    sparse_file(&img, mib << 20);
    let mut args = vec!["-n", "VUTEST"];
    if fat32 {
        args.extend(["-F", "32"]);
    }
    args.push(s(&img));
    run("mkfs.vfat", &args);
    img
}

fn mount(args: &[&str]) -> Mounted {
    module()
        .mount(args)
        .unwrap_or_else(|e| panic!("mount {args:?} failed: {e:?}"))
}

fn mtype(img: &str, path: &str) -> Vec<u8> {
    let out = std::process::Command::new("mtype")
        .args(["-i", img, &format!("::{path}")])
        .env("MTOOLS_SKIP_CHECK", "1")
        .output()
        .expect("mtype");
    assert!(
        out.status.success(),
        "mtype {path}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

fn mdir(img: &str, path: &str) -> String {
    let out = std::process::Command::new("mdir")
        .args(["-b", "-i", img, &format!("::{path}")])
        .env("MTOOLS_SKIP_CHECK", "1")
        .output()
        .expect("mdir");
    assert!(
        out.status.success(),
        "mdir {path}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn exports_main_and_the_reentrant_tag_and_does_not_link_libfuse() {
    let so = module_path("vufusefatfs");
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
    assert_eq!(fuse_imports.len(), 2, "{fuse_imports:?}");
    for name in ["fuse_main_real", "fuse_get_context"] {
        assert!(
            fuse_imports.iter().any(|i| i == name),
            "{name} not imported: {fuse_imports:?}"
        );
    }
    let dynamic = run("readelf", &["-d", s(&so)]);
    assert!(dynamic.contains("NEEDED"), "{dynamic}");
    assert!(!dynamic.contains("libfuse"), "links libfuse:\n{dynamic}");
    assert!(module().has_symbol("fuse_reentrant_tag"));
}

#[test]
fn read_write_rename_mkdir_unlink_truncate_then_fsck_and_mtools_agree() {
    let dir = tempfile::tempdir().unwrap();
    let img = fat_image(dir.path(), "fat16.img", 32, false);
    let m = mount(&["vufusefatfs", "-o", "rw+", s(&img), "/mnt"]);

    let root = m.getattr("/").unwrap();
    assert_eq!(root.st_mode & libc::S_IFMT, libc::S_IFDIR);
    assert_eq!(m.getattr("/missing").unwrap_err(), libc::ENOENT);
    assert_eq!(
        m.open("/missing", libc::O_RDONLY).unwrap_err(),
        libc::ENOENT
    );
    assert_eq!(m.getattr("/missing/deeper").unwrap_err(), libc::ENOENT);

    // create + write + read back (several sizes, with an unaligned tail).
    let big = pattern(3 * (1 << 20) + 1234, 1);
    m.write_file("/big.bin", &big).unwrap();
    m.write_file("/hello.txt", b"hello, vufuse\n").unwrap();
    assert_eq!(m.read_file("/big.bin").unwrap(), big);
    let st = m.getattr("/big.bin").unwrap();
    assert_eq!(st.st_size as usize, big.len());
    assert_eq!(st.st_mode & libc::S_IFMT, libc::S_IFREG);

    // positional I/O through one handle, as pread/pwrite do.
    let mut h = m.open("/big.bin", libc::O_RDWR).unwrap();
    assert_eq!(m.write(&mut h, 100, b"XYZ").unwrap(), 3);
    assert_eq!(
        m.read(&mut h, 98, 7).unwrap(),
        [big[98], big[99], b'X', b'Y', b'Z', big[103], big[104]]
    );
    assert_eq!(m.fgetattr(&mut h).unwrap().st_size as usize, big.len());
    m.fsync(&mut h, false).unwrap();
    m.close(h).unwrap();
    let mut expected_big = big.clone();
    expected_big[100..103].copy_from_slice(b"XYZ");

    // mkdir, nested files, errno conventions.
    m.mkdir("/sub", 0o755).unwrap();
    assert_eq!(m.mkdir("/sub", 0o755).unwrap_err(), libc::EEXIST);
    m.mkdir("/sub/deep", 0o755).unwrap();
    m.write_file("/sub/deep/note.txt", b"nested").unwrap();
    assert_eq!(m.rmdir("/sub").unwrap_err(), libc::ENOTEMPTY);
    assert_eq!(m.unlink("/sub").unwrap_err(), libc::EISDIR);
    assert_eq!(m.rmdir("/hello.txt").unwrap_err(), libc::ENOTDIR);
    assert_eq!(m.open("/sub", libc::O_WRONLY).unwrap_err(), libc::EISDIR);
    assert_eq!(
        m.create("/nodir/x", 0o644, libc::O_WRONLY).unwrap_err(),
        libc::ENOENT
    );
    assert_eq!(m.list("/").unwrap(), ["big.bin", "hello.txt", "sub"]);
    let mut d = m.opendir("/sub").unwrap();
    let listed = m.readdir(&mut d).unwrap();
    m.closedir(d).unwrap();
    let deep = listed
        .iter()
        .find(|l| l.name == "deep")
        .expect("deep listed");
    assert_eq!(deep.d_type, libc::S_IFDIR >> 12);
    assert_eq!(deep.ino, m.getattr("/sub/deep").unwrap().st_ino);
    assert!(listed.iter().any(|l| l.name == "."), "{listed:?}");

    // rename (plain, into a directory, over an existing file, NOREPLACE).
    m.rename("/hello.txt", "/greeting.txt", 0).unwrap();
    assert_eq!(m.getattr("/hello.txt").unwrap_err(), libc::ENOENT);
    m.rename("/greeting.txt", "/sub/greeting.txt", 0).unwrap();
    m.write_file("/victim.txt", b"to be replaced").unwrap();
    assert_eq!(
        m.rename("/sub/greeting.txt", "/victim.txt", libc::RENAME_NOREPLACE)
            .unwrap_err(),
        libc::EEXIST
    );
    m.rename("/sub/greeting.txt", "/victim.txt", 0).unwrap();
    assert_eq!(m.read_file("/victim.txt").unwrap(), b"hello, vufuse\n");
    m.rename("/sub/deep", "/moved", 0).unwrap();
    assert_eq!(m.read_file("/moved/note.txt").unwrap(), b"nested");
    assert_eq!(m.getattr("/sub/deep/note.txt").unwrap_err(), libc::ENOENT);

    // truncate: shrink and grow (zeros).
    m.write_file("/trunc.bin", &pattern(10_000, 2)).unwrap();
    m.truncate("/trunc.bin", 4096).unwrap();
    m.truncate("/trunc.bin", 5000).unwrap();
    let mut expected_trunc = pattern(4096, 2);
    expected_trunc.resize(5000, 0);
    assert_eq!(m.read_file("/trunc.bin").unwrap(), expected_trunc);
    // write_file over an existing file: vufuse's O_TRUNC is truncate(0) + open.
    m.write_file("/victim.txt", b"short").unwrap();

    // unlink, and an unlinked file's name is free again.
    m.write_file("/gone.txt", b"bye").unwrap();
    m.unlink("/gone.txt").unwrap();
    assert_eq!(m.getattr("/gone.txt").unwrap_err(), libc::ENOENT);
    assert_eq!(m.unlink("/gone.txt").unwrap_err(), libc::ENOENT);
    m.rmdir("/sub").unwrap();

    // FAT has no symlinks or hard links: an errno, never a crash.
    assert!(m.symlink("/big.bin", "/link").is_err());
    assert!(m.link("/big.bin", "/hard").is_err());

    // times, statfs, access.
    let when = libc::timespec {
        tv_sec: 1_000_000_000,
        tv_nsec: 0,
    };
    m.utimens("/victim.txt", Some([when, when])).unwrap();
    let st = m.getattr("/victim.txt").unwrap();
    assert!(
        (st.st_mtime - 1_000_000_000).abs() <= 2,
        "FAT keeps 2 s mtimes: {}",
        st.st_mtime
    );
    let fs = m.statfs("/").unwrap();
    assert!(
        fs.f_blocks > 0 && fs.f_bfree < fs.f_blocks,
        "{} {}",
        fs.f_blocks,
        fs.f_bfree
    );
    assert!(fs.f_namemax >= 255);
    m.access("/victim.txt", libc::R_OK | libc::W_OK).unwrap();
    assert_eq!(m.access("/nothere", libc::F_OK).unwrap_err(), libc::ENOENT);

    assert_eq!(m.umount(), 0, "main returns 0 after umount");

    fsck_fat_clean(&img);
    let i = s(&img);
    assert_eq!(mtype(i, "/big.bin"), expected_big);
    assert_eq!(mtype(i, "/victim.txt"), b"short");
    assert_eq!(mtype(i, "/moved/note.txt"), b"nested");
    assert_eq!(mtype(i, "/trunc.bin"), expected_trunc);
    let listing = mdir(i, "/");
    for name in ["big.bin", "victim.txt", "moved", "trunc.bin"] {
        assert!(
            listing.contains(name),
            "{name} missing from mdir:\n{listing}"
        );
    }
    assert!(
        !listing.contains("gone.txt") && !listing.contains("/sub"),
        "{listing}"
    );
}

#[test]
fn read_only_unless_rw_plus_and_writes_give_erofs() {
    let dir = tempfile::tempdir().unwrap();
    let img = fat_image(dir.path(), "ro.img", 16, false);
    run("mcopy", &["-i", s(&img), "/etc/hostname", "::/host.txt"]);
    let before = std::fs::read(&img).unwrap();
    // What vufuse passes with no -o ("rw"), with -o force (vumount ate rw), or -r.
    for opts in ["rw", "force", "rw+,ro", "ro"] {
        let m = mount(&["vufusefatfs", "-o", opts, s(&img), "/mnt"]);
        assert_eq!(
            m.read_file("/host.txt").unwrap(),
            std::fs::read("/etc/hostname").unwrap()
        );
        assert_eq!(
            m.create("/new", 0o644, libc::O_WRONLY).unwrap_err(),
            libc::EROFS,
            "{opts}"
        );
        assert_eq!(
            m.open("/host.txt", libc::O_RDWR).unwrap_err(),
            libc::EROFS,
            "{opts}"
        );
        assert_eq!(m.mkdir("/d", 0o755).unwrap_err(), libc::EROFS, "{opts}");
        assert_eq!(m.unlink("/host.txt").unwrap_err(), libc::EROFS, "{opts}");
        assert_eq!(
            m.truncate("/host.txt", 0).unwrap_err(),
            libc::EROFS,
            "{opts}"
        );
        assert_eq!(
            m.access("/host.txt", libc::W_OK).unwrap_err(),
            libc::EROFS,
            "{opts}"
        );
        assert_ne!(m.statfs("/").unwrap().f_flag & libc::ST_RDONLY, 0);
        assert_eq!(m.umount(), 0);
    }
    assert!(
        std::fs::read(&img).unwrap() == before,
        "a read-only mount changed the image"
    );
    // rw,force as fusefatfs (reachable when OPTS are given verbatim).
    let m = mount(&["vufusefatfs", "-o", "rw,force", s(&img), "/mnt"]);
    m.write_file("/new.txt", b"forced").unwrap();
    assert_eq!(m.umount(), 0);
    assert_eq!(mtype(s(&img), "/new.txt"), b"forced");
    fsck_fat_clean(&img);
}

#[test]
fn a_partition_of_an_sfdisk_disk_with_part_n() {
    let dir = tempfile::tempdir().unwrap();
    let disk = dir.path().join("disk.img");
    sparse_file(&disk, 64 << 20);
    let script = "label: dos\nstart=2048, size=40960, type=c\nstart=43008, type=c\n";
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
        .write_all(script.as_bytes())
        .unwrap();
    assert!(child.wait().unwrap().success());
    let part1 = fat_image(dir.path(), "p1.img", 20, false);
    implant(&part1, &disk, 2048 * 512);
    let p2_len = (64 << 20) - 43008 * 512;
    let part2 = dir.path().join("p2.img");
    sparse_file(&part2, p2_len);
    run("mkfs.vfat", &["-n", "PART2", s(&part2)]);
    implant(&part2, &disk, 43008 * 512);

    // Two FAT partitions and no part=: refused, with a message, no hang.
    assert_eq!(
        module()
            .mount(&["vufusefatfs", "-o", "rw+", s(&disk), "/mnt"])
            .err(),
        Some(MountFailure::MainReturned(1))
    );
    assert_eq!(
        module()
            .mount(&["vufusefatfs", "-o", "rw+,part=3", s(&disk), "/mnt"])
            .err(),
        Some(MountFailure::MainReturned(1))
    );
    let data = pattern(200_000, 7);
    let m = mount(&["vufusefatfs", "-o", "rw+,part=2", s(&disk), "/mnt"]);
    m.mkdir("/dir", 0o755).unwrap();
    m.write_file("/dir/data.bin", &data).unwrap();
    assert_eq!(m.umount(), 0);

    let at = format!("{}@@{}", s(&disk), 43008 * 512);
    assert_eq!(mtype(&at, "/dir/data.bin"), data);
    let copy = dir.path().join("p2-after.img");
    extract(&disk, 43008 * 512, p2_len, &copy);
    fsck_fat_clean(&copy);
    // Partition 1 untouched.
    let p1_now = dir.path().join("p1-after.img");
    extract(&disk, 2048 * 512, 20 << 20, &p1_now);
    assert!(std::fs::read(&p1_now).unwrap() == std::fs::read(&part1).unwrap());
}

#[test]
fn bad_options_and_bad_images_make_main_return_nonzero() {
    let dir = tempfile::tempdir().unwrap();
    let zeros = dir.path().join("zeros.img");
    sparse_file(&zeros, 4 << 20);
    let img = fat_image(dir.path(), "ok.img", 16, false);
    let truncated = dir.path().join("truncated.img");
    std::fs::write(&truncated, &std::fs::read(&img).unwrap()[..4096]).unwrap();
    let cases: Vec<Vec<&str>> = vec![
        vec!["vufusefatfs", "-o", "rw+", "/nonexistent/image", "/mnt"],
        vec!["vufusefatfs", "-o", "rw+", s(&zeros), "/mnt"],
        vec!["vufusefatfs", "-o", "rw", s(&truncated), "/mnt"],
        vec!["vufusefatfs", "-o", "rw+,frobnicate", s(&img), "/mnt"],
        vec!["vufusefatfs", "-o", "uid=abc", s(&img), "/mnt"],
        vec!["vufusefatfs", "-o"],
        vec!["vufusefatfs"],
        vec!["vufusefatfs", "-o", "rw+", s(&img), "/mnt", "extra"],
    ];
    for argv in cases {
        module().assert_mount_refused(&argv);
    }
}

#[test]
fn two_concurrent_mounts_of_the_same_module() {
    let dir = tempfile::tempdir().unwrap();
    let a = fat_image(dir.path(), "a.img", 16, false);
    let b = fat_image(dir.path(), "b.img", 40, true);
    let ma = mount(&["vufusefatfs", "-o", "rw+", s(&a), "/a"]);
    let mb = mount(&["vufusefatfs", "-o", "rw+", s(&b), "/b"]);
    assert_ne!(ma.private_data(), mb.private_data(), "per-mount state");
    std::thread::scope(|scope| {
        for (m, seed) in [(&ma, 10u32), (&mb, 20u32)] {
            scope.spawn(move || {
                for i in 0..20u32 {
                    let name = format!("/f{i}.bin");
                    m.write_file(&name, &pattern(10_000 + i as usize * 100, seed + i))
                        .unwrap();
                }
                for i in 0..20u32 {
                    let name = format!("/f{i}.bin");
                    assert_eq!(
                        m.read_file(&name).unwrap(),
                        pattern(10_000 + i as usize * 100, seed + i)
                    );
                }
            });
        }
    });
    assert_eq!(ma.umount(), 0);
    assert_eq!(mb.umount(), 0);
    for (img, seed) in [(&a, 10u32), (&b, 20u32)] {
        fsck_fat_clean(img);
        for i in [0u32, 7, 19] {
            assert_eq!(
                mtype(s(img), &format!("/f{i}.bin")),
                pattern(10_000 + i as usize * 100, seed + i)
            );
        }
    }
}

#[test]
fn uid_gid_umask_options_and_access_checks() {
    let dir = tempfile::tempdir().unwrap();
    let img = fat_image(dir.path(), "ids.img", 16, false);
    let m = mount(&[
        "vufusefatfs",
        "-o",
        "rw+,uid=1234,gid=99,umask=027",
        s(&img),
        "/mnt",
    ]);
    m.write_file("/f", b"x").unwrap();
    m.mkdir("/d", 0o777).unwrap();
    let f = m.getattr("/f").unwrap();
    let d = m.getattr("/d").unwrap();
    assert_eq!((f.st_uid, f.st_gid), (1234, 99));
    assert_eq!(
        f.st_mode & 0o777,
        0o640,
        "umask=027 on a file: {:o}",
        f.st_mode
    );
    assert_eq!(
        d.st_mode & 0o777,
        0o750,
        "umask=027 on a dir: {:o}",
        d.st_mode
    );
    // access(2) from the mode bits for someone else.
    m.set_caller(1234, 1);
    m.access("/f", libc::R_OK | libc::W_OK).unwrap();
    m.set_caller(5000, 99);
    m.access("/f", libc::R_OK).unwrap();
    assert_eq!(m.access("/f", libc::W_OK).unwrap_err(), libc::EACCES);
    m.set_caller(5000, 5000);
    assert_eq!(m.access("/f", libc::R_OK).unwrap_err(), libc::EACCES);
    m.set_caller(0, 0);
    assert_eq!(m.umount(), 0);
    fsck_fat_clean(&img);
}
