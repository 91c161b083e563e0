//! VDI and VMDK against qemu-img as the oracle.

mod common;

use common::*;
use testkit::s;
use vudev::{BlockDevice, Errno};
use vudev_formats::{
    create_vdi, create_vmdk, info, open_image, open_image_with, Format, OpenOptions,
};

const MIB: usize = 1 << 20;

fn convert(from: &std::path::Path, to: &std::path::Path, format: &str, opts: &[&str]) {
    let mut args = vec!["convert", "-f", "raw", "-O", format];
    args.extend(opts);
    args.extend([s(from), s(to)]);
    qemu_img(&args);
}

#[test]
fn vdi_dynamic_and_fixed_read_what_qemu_wrote() {
    if !have(&["qemu-img"]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let raw = dir.path().join("src.raw");
    let want = random_raw(&raw, 6 * MIB + 512, 1);
    for (name, opts) in [("dyn.vdi", vec![]), ("fixed.vdi", vec!["-o", "static=on"])] {
        let img = dir.path().join(name);
        convert(&raw, &img, "vdi", &opts);
        let dev = open_image(&img, true, None).unwrap();
        assert_same(&read_all(&*dev)[..want.len()], &want, name);
    }
}

#[test]
fn vdi_writes_pass_qemu_img_check() {
    if !have(&["qemu-img"]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    for fixed in [false, true] {
        let img = dir.path().join(format!("w{fixed}.vdi"));
        if fixed {
            qemu_img(&[
                "create",
                "-q",
                "-f",
                "vdi",
                "-o",
                "static=on",
                s(&img),
                "48M",
            ]);
        } else {
            qemu_img(&["create", "-q", "-f", "vdi", s(&img), "48M"]);
        }
        let mut mirror = vec![0u8; 48 * MIB];
        {
            let dev = open_image(&img, false, None).unwrap();
            assert_eq!(dev.size(), 48 * MIB as u64);
            random_writes(&*dev, &mut mirror, 150, 3);
            assert_same(&read_all(&*dev), &mirror, "ours");
        }
        qemu_check_clean(&img, "vdi");
        assert_same(
            &qemu_raw(&img, "vdi"),
            &mirror,
            "qemu's view of our VDI writes",
        );
    }
}

#[test]
fn create_vdi_makes_images_qemu_accepts() {
    if !have(&["qemu-img"]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    for fixed in [false, true] {
        let img = dir.path().join(format!("c{fixed}.vdi"));
        create_vdi(&img, 20 * MIB as u64, fixed).unwrap();
        qemu_check_clean(&img, "vdi");
        let mut mirror = vec![0u8; 20 * MIB];
        {
            let dev = open_image_with(&img, &OpenOptions::default()).unwrap();
            assert_eq!(info(&*dev).format, Format::Vdi);
            let dev = dev.into_block_device();
            random_writes(&*dev, &mut mirror, 60, 8);
        }
        qemu_check_clean(&img, "vdi");
        assert_same(&qemu_raw(&img, "vdi"), &mirror, "qemu's view of create_vdi");
    }
}

#[test]
fn vmdk_sparse_reads_and_writes_pass_qemu_img_check() {
    if !have(&["qemu-img"]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let raw = dir.path().join("src.raw");
    let mut want = random_raw(&raw, 40 * MIB, 2);
    let img = dir.path().join("s.vmdk");
    convert(&raw, &img, "vmdk", &[]);
    {
        let dev = open_image(&img, false, None).unwrap();
        assert_same(&read_all(&*dev), &want, "monolithicSparse read");
        random_writes(&*dev, &mut want, 150, 4);
        assert_same(&read_all(&*dev), &want, "ours after writes");
    }
    qemu_check_clean(&img, "vmdk");
    assert_same(
        &qemu_raw(&img, "vmdk"),
        &want,
        "qemu's view of our VMDK writes",
    );
    // An empty image made by qemu-img create: every grain is new.
    let empty = dir.path().join("e.vmdk");
    qemu_img(&["create", "-q", "-f", "vmdk", s(&empty), "30M"]);
    let mut mirror = vec![0u8; 30 * MIB];
    {
        let dev = open_image(&empty, false, None).unwrap();
        random_writes(&*dev, &mut mirror, 100, 5);
    }
    qemu_check_clean(&empty, "vmdk");
    assert_same(
        &qemu_raw(&empty, "vmdk"),
        &mirror,
        "qemu's view of the new image",
    );
}

#[test]
fn create_vmdk_lays_out_as_qemu_and_passes_qemu_img_check() {
    if !have(&["qemu-img"]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    // Same layout as qemu-img create: header, directories, tables, first grain, length.
    for size in [1u64 << 30, 30 * MIB as u64 + 512, 3 << 20] {
        let ours = dir.path().join("ours.vmdk");
        let theirs = dir.path().join("theirs.vmdk");
        create_vmdk(&ours, size).unwrap();
        qemu_img(&["create", "-q", "-f", "vmdk", s(&theirs), &size.to_string()]);
        let (a, b) = (
            std::fs::read(&ours).unwrap(),
            std::fs::read(&theirs).unwrap(),
        );
        assert_eq!(a.len(), b.len(), "file length for {size}");
        assert_same(&a[..512], &b[..512], "sparse header");
        assert_same(
            &a[21 * 512..],
            &b[21 * 512..],
            "grain directories and tables",
        );
        qemu_check_clean(&ours, "vmdk");
        let info = qemu_img(&["info", "--output=json", s(&ours)]);
        assert!(
            info.contains(&format!("\"virtual-size\": {}", size.div_ceil(512) * 512)),
            "{info}"
        );
        assert!(info.contains("monolithicSparse"), "{info}");
    }
    // Written by us, read by qemu.
    let img = dir.path().join("w.vmdk");
    create_vmdk(&img, 20 * MIB as u64).unwrap();
    let mut mirror = vec![0u8; 20 * MIB];
    {
        let dev = open_image_with(&img, &OpenOptions::default()).unwrap();
        assert_eq!(info(&*dev).format, Format::Vmdk);
        assert_eq!(info(&*dev).allocated_bytes, 0);
        random_writes(&*dev.into_block_device(), &mut mirror, 80, 9);
    }
    qemu_check_clean(&img, "vmdk");
    assert_same(
        &qemu_raw(&img, "vmdk"),
        &mirror,
        "qemu's view of create_vmdk",
    );
}

#[test]
fn vmdk_monolithic_flat_reads_and_writes() {
    if !have(&["qemu-img"]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let raw = dir.path().join("src.raw");
    let mut want = random_raw(&raw, 10 * MIB, 6);
    let img = dir.path().join("f.vmdk");
    convert(&raw, &img, "vmdk", &["-o", "subformat=monolithicFlat"]);
    assert!(dir.path().join("f-flat.vmdk").exists());
    {
        let dev = open_image_with(&img, &OpenOptions::default()).unwrap();
        assert_eq!(dev.image_info().format, Format::Vmdk);
        let dev = dev.into_block_device();
        assert_same(&read_all(&*dev), &want, "monolithicFlat read");
        random_writes(&*dev, &mut want, 80, 7);
    }
    assert_same(
        &qemu_raw(&img, "vmdk"),
        &want,
        "qemu's view of our flat writes",
    );
    // The flat extent is the disk itself.
    assert_same(
        &std::fs::read(dir.path().join("f-flat.vmdk")).unwrap(),
        &want,
        "flat extent",
    );
}

#[test]
fn vmdk_stream_optimized_reads_compressed_grains() {
    if !have(&["qemu-img"]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let raw = dir.path().join("src.raw");
    let want = random_raw(&raw, 9 * MIB, 8);
    let img = dir.path().join("so.vmdk");
    convert(&raw, &img, "vmdk", &["-o", "subformat=streamOptimized"]);
    let dev = open_image(&img, false, None).unwrap();
    assert!(dev.read_only(), "streamOptimized is read-only here");
    assert_eq!(dev.write_at(b"x", 0), Err(Errno::EROFS));
    assert_same(&read_all(&*dev), &want, "streamOptimized read");
}

#[test]
fn vmdk_two_gb_sparse_descriptor_with_sparse_extents() {
    if !have(&["qemu-img"]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let raw = dir.path().join("src.raw");
    let want = random_raw(&raw, 5 * MIB, 9);
    let img = dir.path().join("t.vmdk");
    convert(
        &raw,
        &img,
        "vmdk",
        &["-o", "subformat=twoGbMaxExtentSparse"],
    );
    let dev = open_image(&img, true, None).unwrap();
    assert_same(&read_all(&*dev), &want, "twoGbMaxExtentSparse read");
}

/// A device that records the reads that reach it: (offset, length).
struct Counting {
    inner: vudev::FileDevice,
    reads: std::sync::Mutex<Vec<(u64, usize)>>,
}

impl BlockDevice for Counting {
    fn size(&self) -> u64 {
        self.inner.size()
    }
    fn read_only(&self) -> bool {
        true
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> vudev::Result<usize> {
        self.reads.lock().unwrap().push((offset, buf.len()));
        self.inner.read_at(buf, offset)
    }
    fn write_at(&self, _buf: &[u8], _offset: u64) -> vudev::Result<usize> {
        Err(Errno::EROFS)
    }
    fn flush(&self) -> vudev::Result<()> {
        Ok(())
    }
}

/// `img` opened read-only as a VMDK over a [`Counting`] device.
fn open_counting(img: &std::path::Path) -> (std::sync::Arc<Counting>, vudev_formats::Vmdk) {
    let dev = std::sync::Arc::new(Counting {
        inner: vudev::FileDevice::open(img, true).unwrap(),
        reads: std::sync::Mutex::new(Vec::new()),
    });
    let vmdk = vudev_formats::Vmdk::open_on(dev.clone(), img, true).unwrap();
    (dev, vmdk)
}

#[test]
fn vmdk_reads_neighbouring_grains_with_one_device_read() {
    if !have(&["qemu-img"]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let raw = dir.path().join("src.raw");
    // 256 KiB runs of data (4 grains each) with every third run a hole.
    let want = random_raw(&raw, 8 * MIB, 11);
    let img = dir.path().join("s.vmdk");
    convert(&raw, &img, "vmdk", &[]);
    assert_same(&qemu_raw(&img, "vmdk"), &want, "qemu's view of the source");
    let (dev, vmdk) = open_counting(&img);
    // Load the grain table, then count the reads of 4 grains of data.
    let mut buf = vec![0u8; 256 * 1024];
    vmdk.read_exact_at(&mut buf[..1], 0).unwrap();
    dev.reads.lock().unwrap().clear();
    vmdk.read_exact_at(&mut buf, 0).unwrap();
    assert_same(&buf, &want[..buf.len()], "4 grains");
    let reads: Vec<usize> = dev.reads.lock().unwrap().iter().map(|r| r.1).collect();
    assert_eq!(
        reads,
        [256 * 1024],
        "4 neighbouring grains, one device read"
    );
    // The whole disk in 1 MiB requests: qemu-img convert writes the grains in guest order,
    // so each run of data within a request is one read; the content is qemu's.
    dev.reads.lock().unwrap().clear();
    let got = read_all(&vmdk);
    assert_same(&got, &want, "whole disk");
    let runs: usize = want
        .chunks(MIB)
        .map(|req| {
            let data: Vec<bool> = req
                .chunks(64 * 1024)
                .map(|g| g.iter().any(|&b| b != 0))
                .collect();
            (0..data.len())
                .filter(|&i| data[i] && (i == 0 || !data[i - 1]))
                .count()
        })
        .sum();
    let reads = dev.reads.lock().unwrap().len();
    assert_eq!(
        reads, runs,
        "device reads for 8 MiB in 1 MiB requests (one per grain: 86)"
    );
}
