//! Corrupt and hostile images: a clear error at open or EIO for the bad cluster, never a
//! panic or a hang.

mod common;

use common::*;
use proptest::prelude::*;
use std::path::{Path, PathBuf};
use testkit::s;
use vudev::{BlockDevice, Errno};
use vudev_formats::{open_image, Format, FormatError};

fn open_err(path: &Path, format: Option<Format>) -> FormatError {
    match open_image(path, true, format) {
        Err(e) => e,
        Ok(_) => panic!("{} opened", path.display()),
    }
}

fn patch(path: &Path, at: u64, bytes: &[u8]) {
    use std::os::unix::fs::FileExt;
    let f = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    f.write_all_at(bytes, at).unwrap();
}

fn be64_at(path: &Path, at: usize) -> u64 {
    let d = std::fs::read(path).unwrap();
    u64::from_be_bytes(d[at..at + 8].try_into().unwrap())
}

#[test]
fn truncated_headers_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let cases: [(&str, Vec<u8>, Format); 4] = [
        ("q", b"QFI\xfb\0\0\0\x03\0\0".to_vec(), Format::Qcow2),
        (
            "v",
            {
                let mut v = vec![0u8; 0x60];
                v[0x40..0x44].copy_from_slice(&0xbeda_107fu32.to_le_bytes());
                v
            },
            Format::Vdi,
        ),
        ("k", b"KDMV\x01\0\0\0".to_vec(), Format::Vmdk),
        ("u", b"OOOM\0\0\0\x03".to_vec(), Format::UmlCow),
    ];
    for (name, bytes, format) in cases {
        let p = dir.path().join(name);
        std::fs::write(&p, bytes).unwrap();
        let e = open_err(&p, None);
        let text = e.to_string();
        assert!(text.contains(s(&p)), "{text}");
        assert!(text.contains("truncated"), "{format}: {text}");
        assert_eq!(e.errno(), Errno::EUCLEAN, "{text}");
    }
}

fn qcow2_image(dir: &Path, cluster: &str) -> PathBuf {
    let raw = dir.join("r.raw");
    random_raw(&raw, 1 << 20, 1);
    let img = dir.join("q.qcow2");
    qemu_img(&[
        "convert",
        "-f",
        "raw",
        "-O",
        "qcow2",
        "-o",
        &format!("cluster_size={cluster}"),
        s(&raw),
        s(&img),
    ]);
    img
}

#[test]
fn qcow2_l1_entries_past_the_file_or_into_metadata_give_eio() {
    if !have(&["qemu-img"]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let img = qcow2_image(dir.path(), "65536");
    let l1 = be64_at(&img, 40);
    let rct = be64_at(&img, 48);
    for (what, entry) in [
        ("past the file", (1u64 << 63) | (1 << 40)),
        ("into the refcount table", (1u64 << 63) | rct),
        ("into the L1 table", (1u64 << 63) | l1),
        ("unaligned", (1u64 << 63) | 0x10200),
    ] {
        let bad = dir.path().join("bad.qcow2");
        std::fs::copy(&img, &bad).unwrap();
        patch(&bad, l1, &entry.to_be_bytes());
        let dev = open_image(&bad, false, None).unwrap();
        let mut buf = vec![0u8; 4096];
        assert_eq!(dev.read_at(&mut buf, 0), Err(Errno::EIO), "{what}: read");
        assert_eq!(dev.extents(0, 4096, 8), Err(Errno::EIO), "{what}: extents");
        assert_eq!(dev.write_at(&buf, 0), Err(Errno::EIO), "{what}: write");
    }
}

#[test]
fn qcow2_l2_entries_into_metadata_give_eio_for_that_cluster_only() {
    if !have(&["qemu-img"]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let img = qcow2_image(dir.path(), "65536");
    let want = std::fs::read(dir.path().join("r.raw")).unwrap();
    let l1 = be64_at(&img, 40);
    let l2 = be64_at(&img, l1 as usize) & 0x00ff_ffff_ffff_fe00;
    let rct = be64_at(&img, 48);
    // Guest cluster 0 now claims to live in the refcount table.
    patch(&img, l2, &((1u64 << 63) | rct).to_be_bytes());
    let dev = open_image(&img, true, None).unwrap();
    let mut buf = vec![0u8; 65536];
    assert_eq!(dev.read_at(&mut buf, 0), Err(Errno::EIO));
    dev.read_exact_at(&mut buf, 3 * 65536).unwrap();
    assert_same(
        &buf,
        &want[3 * 65536..4 * 65536],
        "a good cluster beside the bad one",
    );
}

#[test]
fn qcow2_refcount_loops_and_huge_sizes() {
    if !have(&["qemu-img"]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let img = qcow2_image(dir.path(), "512");
    let rct = be64_at(&img, 48);
    // The first refcount block is the refcount table itself.
    let looped = dir.path().join("loop.qcow2");
    std::fs::copy(&img, &looped).unwrap();
    patch(&looped, rct, &rct.to_be_bytes());
    let dev = open_image(&looped, false, None).unwrap();
    // Allocation needs refcounts: it fails, it does not spin or corrupt.
    let start = std::time::Instant::now();
    let r = dev.write_all_at(&[1u8; 4096], 300 * 1024);
    assert_eq!(r, Err(Errno::EIO));
    assert!(start.elapsed().as_secs() < 10);
    drop(dev);
    // A refcount table pointing at the header.
    let hdr = dir.path().join("hdr.qcow2");
    std::fs::copy(&img, &hdr).unwrap();
    patch(&hdr, rct, &0u64.to_be_bytes());
    let dev = open_image(&hdr, false, None).unwrap();
    assert_eq!(dev.write_all_at(&[1u8; 4096], 300 * 1024), Err(Errno::EIO));
    drop(dev);
    // A virtual size far beyond what the L1 table maps.
    let huge = dir.path().join("huge.qcow2");
    std::fs::copy(&img, &huge).unwrap();
    patch(&huge, 24, &(1u64 << 62).to_be_bytes());
    let e = open_err(&huge, None);
    assert!(e.to_string().contains("L1 table"), "{e}");
    // An L1 table past the end of the file.
    let l1 = dir.path().join("l1.qcow2");
    std::fs::copy(&img, &l1).unwrap();
    patch(&l1, 40, &(1u64 << 40).to_be_bytes());
    let e = open_err(&l1, None);
    assert!(e.to_string().contains("L1 table"), "{e}");
    assert_eq!(e.errno(), Errno::EUCLEAN);
    // Unsupported features name themselves.
    let enc = dir.path().join("enc.qcow2");
    std::fs::copy(&img, &enc).unwrap();
    patch(&enc, 32, &1u32.to_be_bytes());
    let e = open_err(&enc, None);
    assert!(e.to_string().contains("encryption"), "{e}");
    assert_eq!(e.errno(), Errno::EOPNOTSUPP);
}

#[test]
fn vdi_and_vmdk_huge_sizes_are_refused() {
    if !have(&["qemu-img"]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let vdi = dir.path().join("h.vdi");
    qemu_img(&["create", "-q", "-f", "vdi", s(&vdi), "4M"]);
    patch(&vdi, 0x170, &(1u64 << 60).to_le_bytes());
    let e = open_err(&vdi, None);
    assert!(e.to_string().contains("disk size"), "{e}");
    patch(&vdi, 0x180, &u32::MAX.to_le_bytes());
    let e = open_err(&vdi, None);
    assert!(e.to_string().contains("blocks"), "{e}");
    let vmdk = dir.path().join("h.vmdk");
    qemu_img(&["create", "-q", "-f", "vmdk", s(&vmdk), "4M"]);
    patch(&vmdk, 0x0c, &u64::MAX.to_le_bytes());
    let e = open_err(&vmdk, None);
    assert!(e.to_string().contains("capacity"), "{e}");
}

/// Opens a mutated image; when it opens, reads it all (bounded) and writes to it.
fn exercise(path: &Path) {
    let Ok(dev) = open_image(path, false, None) else {
        return;
    };
    let size = dev.size();
    let mut buf = vec![0u8; 1 << 16];
    let mut off = 0;
    while off < size.min(4 << 20) {
        let _ = dev.read_at(&mut buf, off);
        off += buf.len() as u64;
    }
    let _ = dev.read_at(&mut buf, size.saturating_sub(4096));
    // Mapping a damaged image ends (no panic, no endless walk), an error or a map.
    let _ = dev.extents(0, size, 1 << 10);
    let _ = dev.extents(size / 2, size, 3);
    let _ = dev.write_at(&buf[..4096], 0);
    let _ = dev.write_at(&buf[..4096], size / 2);
    let _ = dev.discard(0, 1 << 20);
    let _ = dev.flush();
}

struct Seeds {
    _dir: tempfile::TempDir,
    images: Vec<(PathBuf, Vec<u8>)>,
}

fn seeds() -> Option<Seeds> {
    if !have(&["qemu-img"]) {
        return None;
    }
    let dir = tempfile::tempdir().unwrap();
    let raw = dir.path().join("r.raw");
    random_raw(&raw, 2 << 20, 3);
    let mut images = Vec::new();
    for (name, fmt, opts) in [
        ("a.qcow2", "qcow2", "cluster_size=4096"),
        ("b.qcow2", "qcow2", "compat=0.10,cluster_size=512"),
        ("c.vdi", "vdi", ""),
        ("d.vmdk", "vmdk", ""),
        ("e.vmdk", "vmdk", "subformat=streamOptimized"),
    ] {
        let p = dir.path().join(name);
        let mut args = vec!["convert", "-f", "raw", "-O", fmt];
        if !opts.is_empty() {
            args.extend(["-o", opts]);
        }
        args.extend([s(&raw), s(&p)]);
        qemu_img(&args);
        images.push((p.clone(), std::fs::read(&p).unwrap()));
    }
    let base = dir.path().join("base");
    std::fs::write(&base, vec![1u8; 1 << 20]).unwrap();
    let cow = dir.path().join("f.cow");
    vudev_formats::create_uml_cow(&cow, &base).unwrap();
    images.push((cow.clone(), std::fs::read(&cow).unwrap()));
    Some(Seeds { _dir: dir, images })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    #[test]
    fn mutated_headers_never_panic(
        which in 0usize..6,
        edits in proptest::collection::vec((0usize..1024, any::<u8>()), 1..8),
        cut in proptest::option::weighted(0.15, 0usize..2048),
    ) {
        thread_local! {
            static SEEDS: Option<Seeds> = seeds();
        }
        SEEDS.with(|seeds| {
            let Some(seeds) = seeds else { return };
            let (path, original) = &seeds.images[which % seeds.images.len()];
            let mut bytes = original.clone();
            for (at, v) in &edits {
                let at = at % bytes.len();
                bytes[at] = *v;
            }
            if let Some(cut) = cut {
                bytes.truncate(cut);
            }
            let m = path.with_extension("mutated");
            std::fs::write(&m, &bytes).unwrap();
            exercise(&m);
        });
    }
}
