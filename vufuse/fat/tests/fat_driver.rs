//! The FAT driver called directly through the `FileSystem` trait, on images
//! made by mkfs.fat and mcopy, checked afterwards with fsck.fat and mtools.

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use testkit::{fsck_fat_clean, sh};
use vudev::{BlockDevice, FileDevice};
use vufuse_api::{Context, Errno, FileKind, FileSystem, Ino, SetAttr};
use vufuse_fat::{FatFs, FatOptions};

fn ctx() -> Context {
    Context::current()
}

fn mkfs(dir: &Path, name: &str, size_mib: u64, fat_bits: u32) -> PathBuf {
    let img = dir.join(name);
    std::fs::File::create(&img)
        .unwrap()
        .set_len(size_mib << 20)
        .unwrap();
    sh(&format!(
        "mkfs.fat -F {fat_bits} -n TESTVOL {} >/dev/null",
        img.display()
    ));
    img
}

fn mount(img: &Path, read_only: bool) -> FatFs {
    mount_with_dir_cache(img, read_only, vufuse_fat::DIR_CACHE_BYTES)
}

/// `dir_cache_bytes` 1: every directory not used by the current operation is dropped and
/// parsed again from the disk when next needed.
fn mount_with_dir_cache(img: &Path, read_only: bool, dir_cache_bytes: usize) -> FatFs {
    let dev: Arc<dyn BlockDevice> = Arc::new(FileDevice::open(img, read_only).unwrap());
    FatFs::open(
        dev,
        FatOptions {
            read_only,
            dir_cache_bytes,
            ..FatOptions::default()
        },
    )
    .unwrap()
}

/// Everything under `ino` as path -> file bytes (directories map to None).
fn read_tree(fs: &FatFs, ino: Ino, prefix: &Path, out: &mut BTreeMap<PathBuf, Option<Vec<u8>>>) {
    let mut names = Vec::new();
    fs.readdir(&ctx(), ino, vufuse_api::Fh(0), 0, &mut |e| {
        names.push((e.name.to_os_string(), e.kind));
        true
    })
    .unwrap();
    for (name, kind) in names {
        if name == "." || name == ".." {
            continue;
        }
        let entry = fs.lookup(&ctx(), ino, &name).unwrap();
        assert_eq!(entry.attr.kind, kind);
        let path = prefix.join(&name);
        if kind == FileKind::Dir {
            out.insert(path.clone(), None);
            read_tree(fs, entry.attr.ino, &path, out);
        } else {
            let opened = fs.open(&ctx(), entry.attr.ino, libc::O_RDONLY).unwrap();
            let mut data = vec![0u8; entry.attr.size as usize];
            let mut done = 0;
            let len = data.len();
            while done < len {
                let n = fs
                    .read(
                        &ctx(),
                        entry.attr.ino,
                        opened.fh,
                        done as u64,
                        &mut data[done..(done + 131072).min(len)],
                    )
                    .unwrap();
                assert!(n > 0, "short read of {}", path.display());
                done += n;
            }
            fs.release(&ctx(), entry.attr.ino, opened.fh).unwrap();
            out.insert(path, Some(data));
        }
        fs.forget(entry.attr.ino, 1);
    }
}

/// The same map for a host directory.
fn host_tree(root: &Path) -> BTreeMap<PathBuf, Option<Vec<u8>>> {
    let mut out = BTreeMap::new();
    fn walk(dir: &Path, prefix: &Path, out: &mut BTreeMap<PathBuf, Option<Vec<u8>>>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let e = e.unwrap();
            let path = prefix.join(e.file_name());
            if e.file_type().unwrap().is_dir() {
                out.insert(path.clone(), None);
                walk(&e.path(), &path, out);
            } else {
                out.insert(path, Some(std::fs::read(e.path()).unwrap()));
            }
        }
    }
    walk(root, Path::new(""), &mut out);
    out
}

fn sample_tree(root: &Path) {
    std::fs::create_dir_all(root.join("Nested Dir/deeper/deepest")).unwrap();
    std::fs::write(root.join("README.TXT"), "short name\n").unwrap();
    std::fs::write(root.join("readme2.txt"), "lowercase 8.3\n").unwrap();
    std::fs::write(
        root.join("A rather long file name with spaces.text"),
        "long\n",
    )
    .unwrap();
    std::fs::write(root.join("MixedCase.Md"), "mixed\n").unwrap();
    std::fs::write(root.join("empty"), "").unwrap();
    std::fs::write(root.join("Nested Dir/empty too.bin"), "").unwrap();
    std::fs::write(
        root.join("Nested Dir/deeper/deepest/ünïcödé name.txt"),
        "utf-16 in LFN\n",
    )
    .unwrap();
    let big: Vec<u8> = (0..3_000_000u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 24) as u8)
        .collect();
    std::fs::write(root.join("Nested Dir/big.bin"), big).unwrap();
    for i in 0..40 {
        std::fs::write(
            root.join(format!("Nested Dir/deeper/file number {i}.dat")),
            format!("{i}\n").repeat(i),
        )
        .unwrap();
    }
}

#[test]
fn reads_trees_written_by_mcopy_on_fat12_16_32() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    sample_tree(&src);
    for (bits, mib) in [(12, 8), (16, 32), (32, 64)] {
        let img = mkfs(dir.path(), &format!("fat{bits}.img"), mib, bits);
        sh(&format!(
            "cd '{}' && mcopy -s -i '{}' ./* ::/",
            src.display(),
            img.display()
        ));
        let fs = mount(&img, true);
        assert_eq!(fs.label(), "TESTVOL");
        let mut ours = BTreeMap::new();
        read_tree(&fs, Ino::ROOT, Path::new(""), &mut ours);
        assert_eq!(
            ours.keys().collect::<Vec<_>>(),
            host_tree(&src).keys().collect::<Vec<_>>(),
            "FAT{bits}: names differ"
        );
        assert!(ours == host_tree(&src), "FAT{bits}: contents differ");
        // Case-insensitive lookup that preserves the stored case.
        let e = fs
            .lookup(&ctx(), Ino::ROOT, OsStr::new("mixedcase.md"))
            .unwrap();
        assert_eq!(e.attr.size, 6);
        let st = fs.statfs(&ctx()).unwrap();
        assert!(st.blocks_free > 0 && st.blocks_free < st.blocks);
    }
}

fn create_file(fs: &FatFs, parent: Ino, name: &str, data: &[u8]) -> Ino {
    let (entry, opened) = fs
        .create(&ctx(), parent, OsStr::new(name), 0o644, libc::O_WRONLY)
        .unwrap();
    let mut done = 0;
    while done < data.len() {
        let chunk = &data[done..(done + 65536).min(data.len())];
        done += fs
            .write(&ctx(), entry.attr.ino, opened.fh, done as u64, chunk)
            .unwrap();
    }
    fs.release(&ctx(), entry.attr.ino, opened.fh).unwrap();
    entry.attr.ino
}

/// Also with a directory cache of one byte: every operation then parses its directories
/// again from the disk, so nothing a change leaves only in memory can pass.
#[test]
fn write_workload_passes_fsck_and_mtools_reads_it_back() {
    let dir = tempfile::tempdir().unwrap();
    for (bits, dir_cache) in [12, 16, 32]
        .into_iter()
        .flat_map(|bits| [(bits, vufuse_fat::DIR_CACHE_BYTES), (bits, 1)])
    {
        let img = mkfs(
            dir.path(),
            &format!("w{bits}-{dir_cache}.img"),
            if bits == 12 { 4 } else { 64 },
            bits,
        );
        let expected = dir.path().join(format!("expected{bits}-{dir_cache}"));
        std::fs::create_dir_all(&expected).unwrap();
        {
            let fs = mount_with_dir_cache(&img, false, dir_cache);
            let c = ctx();
            let docs = fs
                .mkdir(&c, Ino::ROOT, OsStr::new("Documents and Settings"), 0o755)
                .unwrap()
                .attr
                .ino;
            let sub = fs
                .mkdir(&c, docs, OsStr::new("sub"), 0o755)
                .unwrap()
                .attr
                .ino;
            let payload: Vec<u8> = (0..300_000u32).map(|i| (i % 253) as u8).collect();
            let big = create_file(&fs, docs, "payload.bin", &payload);
            // Overwrite in the middle, then extend past the end with a gap.
            fs.write(&c, big, vufuse_api::Fh(0), 1000, b"MIDDLE")
                .unwrap();
            fs.write(&c, big, vufuse_api::Fh(0), 310_000, b"TAIL")
                .unwrap();
            let mut model = payload.clone();
            model[1000..1006].copy_from_slice(b"MIDDLE");
            model.resize(310_000, 0);
            model.extend_from_slice(b"TAIL");
            // Truncate another file down and up.
            let t = create_file(&fs, sub, "truncated.txt", &[b'x'; 10_000]);
            fs.setattr(
                &c,
                t,
                &SetAttr {
                    size: Some(100),
                    ..SetAttr::default()
                },
            )
            .unwrap();
            fs.setattr(
                &c,
                t,
                &SetAttr {
                    size: Some(5000),
                    ..SetAttr::default()
                },
            )
            .unwrap();
            let mut t_model = vec![b'x'; 100];
            t_model.resize(5000, 0);
            // Rename across directories, rename a directory, delete.
            create_file(&fs, Ino::ROOT, "moved later.txt", b"moving\n");
            fs.rename(
                &c,
                Ino::ROOT,
                OsStr::new("moved later.txt"),
                sub,
                OsStr::new("Moved Now.txt"),
                0,
            )
            .unwrap();
            create_file(&fs, Ino::ROOT, "doomed.txt", b"bye\n");
            fs.unlink(&c, Ino::ROOT, OsStr::new("doomed.txt")).unwrap();
            let gone = fs.mkdir(&c, Ino::ROOT, OsStr::new("gone"), 0o755).unwrap();
            fs.rmdir(&c, Ino::ROOT, OsStr::new("gone")).unwrap();
            fs.forget(gone.attr.ino, 1);
            fs.rename(
                &c,
                docs,
                OsStr::new("sub"),
                Ino::ROOT,
                OsStr::new("Top Level Sub"),
                0,
            )
            .unwrap();
            // Case-only rename keeps one entry.
            create_file(&fs, Ino::ROOT, "case.txt", b"case\n");
            fs.rename(
                &c,
                Ino::ROOT,
                OsStr::new("case.txt"),
                Ino::ROOT,
                OsStr::new("CASE.txt"),
                0,
            )
            .unwrap();
            assert_eq!(
                fs.rmdir(&c, Ino::ROOT, OsStr::new("Documents and Settings")),
                Err(Errno::ENOTEMPTY)
            );
            assert_eq!(
                fs.rename(
                    &c,
                    Ino::ROOT,
                    OsStr::new("CASE.txt"),
                    docs,
                    OsStr::new("payload.bin"),
                    vufuse_api::fs::RENAME_NOREPLACE
                ),
                Err(Errno::EEXIST)
            );
            fs.destroy();

            std::fs::create_dir_all(expected.join("Documents and Settings")).unwrap();
            std::fs::create_dir_all(expected.join("Top Level Sub")).unwrap();
            std::fs::write(expected.join("Documents and Settings/payload.bin"), &model).unwrap();
            std::fs::write(expected.join("Top Level Sub/truncated.txt"), &t_model).unwrap();
            std::fs::write(expected.join("Top Level Sub/Moved Now.txt"), b"moving\n").unwrap();
            std::fs::write(expected.join("CASE.txt"), b"case\n").unwrap();
        }
        fsck_fat_clean(&img);
        let out = dir.path().join(format!("out{bits}-{dir_cache}"));
        std::fs::create_dir_all(&out).unwrap();
        sh(&format!(
            "mcopy -s -n -i '{}' ::/ '{}/'",
            img.display(),
            out.display()
        ));
        assert!(
            host_tree(&out) == host_tree(&expected),
            "FAT{bits}, directory cache {dir_cache}: mcopy extracted something else"
        );
    }
}

#[test]
fn five_thousand_files_in_one_directory() {
    let dir = tempfile::tempdir().unwrap();
    let img = mkfs(dir.path(), "many.img", 64, 32);
    {
        let fs = mount(&img, false);
        let d = fs
            .mkdir(&ctx(), Ino::ROOT, OsStr::new("many"), 0o755)
            .unwrap()
            .attr
            .ino;
        let block = vec![7u8; 4096];
        for i in 0..5000 {
            let ino = create_file(&fs, d, &format!("file_{i:05}.dat"), &block);
            fs.getattr(&ctx(), ino, None).unwrap();
            fs.forget(ino, 1);
        }
        let e = fs.lookup(&ctx(), d, OsStr::new("FILE_04999.DAT")).unwrap();
        assert_eq!(e.attr.size, 4096);
        fs.destroy();
    }
    fsck_fat_clean(&img);
    let listing = sh(&format!("mdir -b -i '{}' ::/many | wc -l", img.display()));
    assert_eq!(listing.trim(), "5000");
}

#[test]
fn full_volume_gives_enospc_and_stays_consistent() {
    let dir = tempfile::tempdir().unwrap();
    let img = mkfs(dir.path(), "full.img", 2, 12);
    {
        let fs = mount(&img, false);
        let c = ctx();
        let (entry, opened) = fs
            .create(
                &c,
                Ino::ROOT,
                OsStr::new("filler.bin"),
                0o644,
                libc::O_WRONLY,
            )
            .unwrap();
        let chunk = vec![1u8; 65536];
        let mut offset = 0u64;
        let mut short_writes = 0;
        let err = loop {
            match fs.write(&c, entry.attr.ino, opened.fh, offset, &chunk) {
                Ok(n) => {
                    short_writes += usize::from(n < chunk.len());
                    offset += n as u64;
                }
                Err(e) => break e,
            }
        };
        assert_eq!(err, Errno::ENOSPC);
        assert!(
            short_writes <= 1,
            "only the last successful write may be short"
        );
        assert_eq!(fs.statfs(&c).unwrap().blocks_free, 0, "the volume is full");
        assert_eq!(
            fs.getattr(&c, entry.attr.ino, None).unwrap().size,
            offset,
            "a failed write must not change the size"
        );
        fs.release(&c, entry.attr.ino, opened.fh).unwrap();
        assert_eq!(
            fs.mkdir(&c, Ino::ROOT, OsStr::new("no room"), 0o755)
                .unwrap_err(),
            Errno::ENOSPC
        );
        fs.destroy();
    }
    fsck_fat_clean(&img);
}

#[test]
fn read_only_mounts_refuse_every_change_and_leave_bytes_alone() {
    let dir = tempfile::tempdir().unwrap();
    let img = mkfs(dir.path(), "ro.img", 32, 16);
    sh(&format!(
        "echo hi | mcopy -i '{}' - ::/hi.txt",
        img.display()
    ));
    let before = std::fs::read(&img).unwrap();
    {
        let fs = mount(&img, true);
        let c = ctx();
        let hi = fs
            .lookup(&c, Ino::ROOT, OsStr::new("hi.txt"))
            .unwrap()
            .attr
            .ino;
        assert_eq!(
            fs.create(&c, Ino::ROOT, OsStr::new("x"), 0o644, libc::O_WRONLY)
                .unwrap_err(),
            Errno::EROFS
        );
        assert_eq!(
            fs.mkdir(&c, Ino::ROOT, OsStr::new("d"), 0o755).unwrap_err(),
            Errno::EROFS
        );
        assert_eq!(
            fs.unlink(&c, Ino::ROOT, OsStr::new("hi.txt")).unwrap_err(),
            Errno::EROFS
        );
        assert_eq!(fs.open(&c, hi, libc::O_RDWR).unwrap_err(), Errno::EROFS);
        assert_eq!(
            fs.write(&c, hi, vufuse_api::Fh(0), 0, b"x").unwrap_err(),
            Errno::EROFS
        );
        assert_eq!(
            fs.setattr(
                &c,
                hi,
                &SetAttr {
                    size: Some(0),
                    ..SetAttr::default()
                }
            )
            .unwrap_err(),
            Errno::EROFS
        );
        assert_eq!(
            fs.rename(
                &c,
                Ino::ROOT,
                OsStr::new("hi.txt"),
                Ino::ROOT,
                OsStr::new("ho"),
                0
            )
            .unwrap_err(),
            Errno::EROFS
        );
        fs.destroy();
    }
    assert!(
        std::fs::read(&img).unwrap() == before,
        "a read-only mount changed the image"
    );
}

#[test]
fn open_unlinked_file_lives_until_release() {
    let dir = tempfile::tempdir().unwrap();
    let img = mkfs(dir.path(), "orphan.img", 32, 16);
    {
        let fs = mount(&img, false);
        let c = ctx();
        let ino = create_file(&fs, Ino::ROOT, "tmpfile", &[5u8; 20000]);
        let opened = fs.open(&c, ino, libc::O_RDWR).unwrap();
        let free_before = fs.statfs(&c).unwrap().blocks_free;
        fs.unlink(&c, Ino::ROOT, OsStr::new("tmpfile")).unwrap();
        assert_eq!(
            fs.lookup(&c, Ino::ROOT, OsStr::new("tmpfile")).unwrap_err(),
            Errno::ENOENT
        );
        assert_eq!(fs.getattr(&c, ino, None).unwrap().nlink, 0, "no name left");
        let mut buf = [0u8; 10];
        assert_eq!(fs.read(&c, ino, opened.fh, 19990, &mut buf).unwrap(), 10);
        assert_eq!(buf, [5u8; 10]);
        assert_eq!(
            fs.statfs(&c).unwrap().blocks_free,
            free_before,
            "clusters stay while open"
        );
        fs.release(&c, ino, opened.fh).unwrap();
        fs.forget(ino, 1);
        assert!(
            fs.statfs(&c).unwrap().blocks_free > free_before,
            "clusters freed at the last close"
        );
        fs.destroy();
    }
    fsck_fat_clean(&img);
}

// ---- bad input ----

#[test]
fn corrupt_images_are_refused_at_mount_with_a_message() {
    let dir = tempfile::tempdir().unwrap();
    let img = mkfs(dir.path(), "bad.img", 32, 16);
    let truncated = dir.path().join("truncated.img");
    std::fs::copy(&img, &truncated).unwrap();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&truncated)
        .unwrap()
        .set_len(1 << 20)
        .unwrap();
    let dev: Arc<dyn BlockDevice> = Arc::new(FileDevice::open(&truncated, true).unwrap());
    let err = FatFs::open(dev, FatOptions::default())
        .err()
        .expect("truncated image must be refused");
    assert!(err.to_string().contains("truncated"), "{}", err.to_string());

    let zeroed = dir.path().join("zeroed.img");
    std::fs::copy(&img, &zeroed).unwrap();
    FileDevice::open(&zeroed, false)
        .unwrap()
        .write_all_at(&[0u8; 512], 0)
        .unwrap();
    let dev: Arc<dyn BlockDevice> = Arc::new(FileDevice::open(&zeroed, true).unwrap());
    let err = FatFs::open(dev, FatOptions::default())
        .err()
        .expect("zeroed boot sector must be refused");
    assert!(
        err.to_string().contains("boot sector"),
        "{}",
        err.to_string()
    );
    assert_eq!(err.errno(), Errno::EINVAL);
}

#[test]
fn a_fat_chain_loop_gives_eio_for_that_file_only() {
    let dir = tempfile::tempdir().unwrap();
    let img = mkfs(dir.path(), "loop.img", 32, 16);
    let data = vec![9u8; 20000];
    std::fs::write(dir.path().join("victim.bin"), &data).unwrap();
    std::fs::write(dir.path().join("bystander.txt"), b"fine\n").unwrap();
    sh(&format!(
        "mcopy -i '{0}' '{1}/victim.bin' ::/victim.bin && mcopy -i '{0}' '{1}/bystander.txt' ::/bystander.txt",
        img.display(),
        dir.path().display()
    ));
    // Point the victim's second cluster back at its first. It was the first
    // file written to a fresh volume, so its chain starts at cluster 2.
    let first_cluster = 2u32;
    let fat_offset = mount(&img, true).geometry().fat_offset;
    let dev = FileDevice::open(&img, false).unwrap();
    let mut entry = [0u8; 2];
    dev.read_exact_at(&mut entry, fat_offset + 2 * first_cluster as u64)
        .unwrap();
    let second = u16::from_le_bytes(entry) as u64;
    assert!(second >= 3, "victim should span several clusters");
    dev.write_all_at(
        &(first_cluster as u16).to_le_bytes(),
        fat_offset + 2 * second,
    )
    .unwrap();
    drop(dev);

    let fs = mount(&img, true);
    let c = ctx();
    let victim = fs
        .lookup(&c, Ino::ROOT, OsStr::new("victim.bin"))
        .unwrap()
        .attr
        .ino;
    let mut buf = vec![0u8; 4096];
    assert_eq!(
        fs.read(&c, victim, vufuse_api::Fh(0), 0, &mut buf)
            .unwrap_err(),
        Errno::EIO
    );
    let fine = fs
        .lookup(&c, Ino::ROOT, OsStr::new("bystander.txt"))
        .unwrap()
        .attr
        .ino;
    assert_eq!(
        fs.read(&c, fine, vufuse_api::Fh(0), 0, &mut buf).unwrap(),
        5
    );
}

#[test]
fn a_directory_cluster_outside_the_volume_gives_eio() {
    let dir = tempfile::tempdir().unwrap();
    let img = mkfs(dir.path(), "dirbad.img", 32, 16);
    sh(&format!(
        "mmd -i '{0}' ::/broken && mmd -i '{0}' ::/healthy",
        img.display()
    ));
    let fs = mount(&img, true);
    let root_offset = fs.geometry().root_offset;
    drop(fs);
    // The first root slot is the volume label; find "BROKEN" and point it past the end.
    let dev = FileDevice::open(&img, false).unwrap();
    let mut root = vec![0u8; 16 * 32];
    dev.read_exact_at(&mut root, root_offset).unwrap();
    let slot = root.chunks(32).position(|s| &s[..6] == b"BROKEN").unwrap();
    dev.write_all_at(
        &0xFFF0u16.to_le_bytes(),
        root_offset + slot as u64 * 32 + 26,
    )
    .unwrap();
    drop(dev);
    let fs = mount(&img, true);
    let c = ctx();
    let broken = fs
        .lookup(&c, Ino::ROOT, OsStr::new("broken"))
        .unwrap()
        .attr
        .ino;
    assert_eq!(fs.opendir(&c, broken).unwrap_err(), Errno::EIO);
    let healthy = fs
        .lookup(&c, Ino::ROOT, OsStr::new("healthy"))
        .unwrap()
        .attr
        .ino;
    assert!(fs.opendir(&c, healthy).is_ok());
}

/// A directory whose `..` entry is gone cannot be moved to another parent (it could not
/// point there): EIO before anything changes, the name stays where it was.
#[test]
fn moving_a_directory_without_dotdot_gives_eio_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let img = mkfs(dir.path(), "nodotdot.img", 32, 16);
    sh(&format!(
        "mmd -i '{0}' ::/lost ::/home && echo hi | mcopy -i '{0}' - ::/lost/f.txt",
        img.display()
    ));
    let fs = mount(&img, true);
    let geo = fs.geometry().clone();
    drop(fs);
    // "lost" is the first directory mmd made: its cluster holds ".", "..", then f.txt.
    let dev = FileDevice::open(&img, false).unwrap();
    let mut root = vec![0u8; 16 * 32];
    dev.read_exact_at(&mut root, geo.root_offset).unwrap();
    let slot = root.chunks(32).find(|s| &s[..4] == b"LOST").unwrap();
    let cluster = u16::from_le_bytes([slot[26], slot[27]]) as u32;
    let dotdot = geo.cluster_offset(cluster) + 32;
    let mut raw = [0u8; 32];
    dev.read_exact_at(&mut raw, dotdot).unwrap();
    assert_eq!(&raw[..2], b"..", "the second slot of a directory is ..");
    dev.write_all_at(&[0xE5], dotdot).unwrap();
    drop(dev);
    for dir_cache in [vufuse_fat::DIR_CACHE_BYTES, 1] {
        let fs = mount_with_dir_cache(&img, false, dir_cache);
        let c = ctx();
        let home = fs
            .lookup(&c, Ino::ROOT, OsStr::new("home"))
            .unwrap()
            .attr
            .ino;
        assert_eq!(
            fs.rename(
                &c,
                Ino::ROOT,
                OsStr::new("lost"),
                home,
                OsStr::new("lost"),
                0
            ),
            Err(Errno::EIO)
        );
        let lost = fs
            .lookup(&c, Ino::ROOT, OsStr::new("lost"))
            .unwrap()
            .attr
            .ino;
        assert!(fs.lookup(&c, lost, OsStr::new("f.txt")).is_ok());
        assert_eq!(
            fs.lookup(&c, home, OsStr::new("lost")).unwrap_err(),
            Errno::ENOENT
        );
        // A rename inside the same parent needs no "..": it still works.
        fs.rename(
            &c,
            Ino::ROOT,
            OsStr::new("lost"),
            Ino::ROOT,
            OsStr::new("found"),
            0,
        )
        .unwrap();
        fs.rename(
            &c,
            Ino::ROOT,
            OsStr::new("found"),
            Ino::ROOT,
            OsStr::new("lost"),
            0,
        )
        .unwrap();
        fs.destroy();
    }
}

#[test]
fn inode_numbers_stay_stable_for_the_life_of_the_mount() {
    let dir = tempfile::tempdir().unwrap();
    let img = mkfs(dir.path(), "ino.img", 32, 16);
    let fs = mount(&img, false);
    let c = ctx();
    let lookup = |name: &str| {
        let e = fs.lookup(&c, Ino::ROOT, OsStr::new(name)).unwrap();
        fs.forget(e.attr.ino, 1);
        e.attr.ino
    };
    let a = create_file(&fs, Ino::ROOT, "first.txt", b"1");
    fs.forget(a, 1);
    assert_eq!(
        lookup("first.txt"),
        a,
        "same number after the kernel forgot it"
    );
    fs.rename(
        &c,
        Ino::ROOT,
        OsStr::new("first.txt"),
        Ino::ROOT,
        OsStr::new("renamed.txt"),
        0,
    )
    .unwrap();
    assert_eq!(lookup("renamed.txt"), a, "a rename keeps the number");
    // A new file may reuse the freed slots: it must not reuse the number.
    let b = create_file(&fs, Ino::ROOT, "first.txt", b"2");
    fs.forget(b, 1);
    assert_ne!(b, a);
    fs.rename(
        &c,
        Ino::ROOT,
        OsStr::new("first.txt"),
        Ino::ROOT,
        OsStr::new("renamed.txt"),
        vufuse_api::fs::RENAME_EXCHANGE,
    )
    .unwrap();
    assert_eq!(
        lookup("renamed.txt"),
        b,
        "exchange swaps the numbers with the files"
    );
    assert_eq!(lookup("first.txt"), a);
    let mut seen = std::collections::HashSet::new();
    fs.readdir(&c, Ino::ROOT, vufuse_api::Fh(0), 2, &mut |e| {
        assert!(seen.insert(e.ino), "readdir reports each number once");
        true
    })
    .unwrap();
    assert!(
        seen.contains(&a) && seen.contains(&b),
        "readdir agrees with lookup"
    );
    fs.destroy();
    drop(fs);
    fsck_fat_clean(&img);
}

/// What POSIX (and pjdfstest) asks of names and directories that FAT can give: a name past
/// 255 UTF-16 units is `ENAMETOOLONG` even to look up, links of either kind are `EPERM`
/// (not `ENOSYS`), and a directory's write time moves when an entry is added, removed or
/// renamed, on disk too.
#[test]
fn long_names_links_and_directory_times_behave_as_the_kernel_vfat() {
    let tmp = tempfile::tempdir().unwrap();
    let img = mkfs(tmp.path(), "names.img", 64, 32);
    let fs = mount(&img, false);
    let too_long = "n".repeat(256);
    assert_eq!(
        fs.lookup(&ctx(), Ino::ROOT, OsStr::new(&too_long)).err(),
        Some(Errno::ENAMETOOLONG)
    );
    assert_eq!(
        fs.lookup(&ctx(), Ino::ROOT, OsStr::new(&"n".repeat(255)))
            .err(),
        Some(Errno::ENOENT)
    );
    let file = create_file(&fs, Ino::ROOT, "file", b"x");
    assert_eq!(
        fs.symlink(&ctx(), Ino::ROOT, OsStr::new("sym"), Path::new("file"))
            .err(),
        Some(Errno::EPERM)
    );
    assert_eq!(
        fs.link(&ctx(), file, Ino::ROOT, OsStr::new("hard")).err(),
        Some(Errno::EPERM)
    );

    let past = std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_000_000_000);
    let a = fs
        .mkdir(&ctx(), Ino::ROOT, OsStr::new("a"), 0o755)
        .unwrap()
        .attr
        .ino;
    let b = fs
        .mkdir(&ctx(), Ino::ROOT, OsStr::new("b"), 0o755)
        .unwrap()
        .attr
        .ino;
    let set_past = |ino| {
        let set = SetAttr {
            mtime: Some(vufuse_api::SetTime::At(past)),
            ..SetAttr::default()
        };
        fs.setattr(&ctx(), ino, &set).unwrap();
        assert_eq!(fs.getattr(&ctx(), ino, None).unwrap().mtime, past);
    };
    let moved = |ino, what: &str| {
        let mtime = fs.getattr(&ctx(), ino, None).unwrap().mtime;
        assert!(mtime > past, "{what}: directory mtime stayed {mtime:?}");
    };
    set_past(a);
    create_file(&fs, a, "f", b"data");
    moved(a, "create");
    set_past(a);
    fs.mkdir(&ctx(), a, OsStr::new("sub"), 0o755).unwrap();
    moved(a, "mkdir");
    set_past(a);
    set_past(b);
    fs.rename(&ctx(), a, OsStr::new("f"), b, OsStr::new("g"), 0)
        .unwrap();
    moved(a, "rename out");
    moved(b, "rename in");
    set_past(b);
    fs.unlink(&ctx(), b, OsStr::new("g")).unwrap();
    moved(b, "unlink");
    set_past(a);
    fs.rmdir(&ctx(), a, OsStr::new("sub")).unwrap();
    moved(a, "rmdir");
    fs.destroy();
    drop(fs);

    let fs = mount(&img, true);
    let a = fs.lookup(&ctx(), Ino::ROOT, OsStr::new("a")).unwrap().attr;
    assert!(a.mtime > past, "the rmdir's time did not reach the disk");
    fsck_fat_clean(&img);
}
