//! qcow2 against qemu-img and qemu-io as oracles.

mod common;

use common::*;
use std::path::Path;
use std::sync::Arc;
use testkit::s;
use vudev::{BlockDevice, Errno};
use vudev_formats::{create_qcow2, open_image, open_image_with, Format, OpenOptions, Qcow2};

const MIB: usize = 1 << 20;

fn header_u64(path: &Path, at: usize) -> u64 {
    let d = std::fs::read(path).unwrap();
    u64::from_be_bytes(d[at..at + 8].try_into().unwrap())
}

fn header_u32(path: &Path, at: usize) -> u32 {
    let d = std::fs::read(path).unwrap();
    u32::from_be_bytes(d[at..at + 4].try_into().unwrap())
}

#[test]
fn reads_what_qemu_wrote_v2_v3_compressed_and_zero_clusters() {
    if !have(&["qemu-img", "qemu-io"]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let raw = dir.path().join("src.raw");
    let want = random_raw(&raw, 8 * MIB + 4608, 1);
    for (name, opts) in [
        ("v3.qcow2", vec!["-o", "compat=1.1"]),
        ("v2.qcow2", vec!["-o", "compat=0.10"]),
        ("small.qcow2", vec!["-o", "cluster_size=512"]),
        ("zlib.qcow2", vec!["-c"]),
        ("zlib4k.qcow2", vec!["-c", "-o", "cluster_size=4096"]),
    ] {
        let img = dir.path().join(name);
        let mut args = vec!["convert", "-f", "raw", "-O", "qcow2"];
        args.extend(opts);
        args.extend([s(&raw), s(&img)]);
        qemu_img(&args);
        let dev = open_image(&img, true, None).unwrap();
        assert_eq!(dev.size(), want.len() as u64, "{name}");
        assert_same(&read_all(&*dev), &want, name);
        // Unaligned reads across cluster boundaries.
        let mut buf = vec![0u8; 70001];
        assert_eq!(dev.read_at(&mut buf, 65535 * 3), Ok(70001));
        assert_same(&buf, &want[65535 * 3..65535 * 3 + 70001], name);
    }
    // qemu-io patterns and zero clusters (v3 flag; v2 gets all-zero clusters).
    for compat in ["1.1", "0.10"] {
        let img = dir.path().join(format!("io-{compat}.qcow2"));
        qemu_img(&[
            "convert",
            "-f",
            "raw",
            "-O",
            "qcow2",
            "-o",
            &format!("compat={compat}"),
            s(&raw),
            s(&img),
        ]);
        qemu_io(&img, "qcow2", "write -P 0xab 1M 64k");
        qemu_io(&img, "qcow2", "write -z 2M 128k");
        qemu_io(&img, "qcow2", "write -z 3M 4k");
        let mut want = want.clone();
        want[MIB..MIB + 65536].fill(0xab);
        want[2 * MIB..2 * MIB + 131072].fill(0);
        want[3 * MIB..3 * MIB + 4096].fill(0);
        let dev = open_image(&img, true, Some(Format::Qcow2)).unwrap();
        assert_same(
            &read_all(&*dev),
            &want,
            &format!("qemu-io on compat={compat}"),
        );
    }
}

fn write_and_check(compat: &str, cluster: &str, refcount_bits: Option<&str>) {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("w.qcow2");
    let size = 64 * MIB;
    let mut opts = format!("compat={compat},cluster_size={cluster}");
    if let Some(r) = refcount_bits {
        opts.push_str(&format!(",refcount_bits={r}"));
    }
    qemu_img(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-o",
        &opts,
        s(&img),
        &size.to_string(),
    ]);
    let rct_before = (header_u64(&img, 48), header_u32(&img, 56));
    let mut mirror = vec![0u8; size];
    {
        let dev = open_image(&img, false, None).unwrap();
        let written = random_writes(&*dev, &mut mirror, 300, 7);
        assert!(written > 8 << 20, "wrote {written}");
        // Partial overwrite of a written cluster, and reads through our own device.
        dev.write_all_at(&[0x5a; 100], 1000).unwrap();
        mirror[1000..1100].fill(0x5a);
        assert_same(&read_all(&*dev), &mirror, "our view before close");
        dev.flush().unwrap();
    }
    let report = qemu_check_clean(&img, "qcow2");
    assert!(report.contains("No errors"), "{report}");
    eprintln!("qemu-img check (compat={compat}, cluster {cluster}): {report}");
    assert_same(
        &qemu_raw(&img, "qcow2"),
        &mirror,
        "qemu's view after our writes",
    );
    let rct_after = (header_u64(&img, 48), header_u32(&img, 56));
    if cluster == "512" {
        assert_ne!(
            rct_before, rct_after,
            "the refcount table should have grown and moved"
        );
    }
    // Reopen: our view after a round trip.
    let dev = open_image(&img, true, None).unwrap();
    assert_same(&read_all(&*dev), &mirror, "reopened");
}

#[test]
fn writes_pass_qemu_img_check_v3() {
    if !have(&["qemu-img"]) {
        return;
    }
    write_and_check("1.1", "65536", None);
}

#[test]
fn writes_pass_qemu_img_check_v2() {
    if !have(&["qemu-img"]) {
        return;
    }
    write_and_check("0.10", "65536", None);
}

#[test]
fn writes_grow_the_refcount_table_with_512_byte_clusters_v2_and_v3() {
    if !have(&["qemu-img"]) {
        return;
    }
    write_and_check("0.10", "512", None);
    write_and_check("1.1", "512", Some("16"));
}

#[test]
fn writes_with_odd_refcount_widths() {
    if !have(&["qemu-img"]) {
        return;
    }
    write_and_check("1.1", "4096", Some("1"));
    write_and_check("1.1", "4096", Some("64"));
}

#[test]
fn overwriting_compressed_and_zero_clusters_keeps_refcounts_exact() {
    if !have(&["qemu-img", "qemu-io"]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let raw = dir.path().join("src.raw");
    let mut want = random_raw(&raw, 4 * MIB, 3);
    let img = dir.path().join("c.qcow2");
    qemu_img(&[
        "convert",
        "-c",
        "-f",
        "raw",
        "-O",
        "qcow2",
        "-o",
        "cluster_size=4096",
        s(&raw),
        s(&img),
    ]);
    qemu_io(&img, "qcow2", "write -z 1M 64k");
    want[MIB..MIB + 65536].fill(0);
    {
        let dev = open_image(&img, false, None).unwrap();
        let mut rng = Rng(11);
        for _ in 0..200 {
            let len = rng.below(10000) as usize + 1;
            let off = rng.below((want.len() - len) as u64) as usize;
            let mut buf = vec![0u8; len];
            rng.fill(&mut buf);
            dev.write_all_at(&buf, off as u64).unwrap();
            want[off..off + len].copy_from_slice(&buf);
        }
        // Discard a compressed range too.
        dev.discard(2 * MIB as u64, 256 * 1024).unwrap();
        want[2 * MIB..2 * MIB + 256 * 1024].fill(0);
    }
    qemu_check_clean(&img, "qcow2");
    assert_same(
        &qemu_raw(&img, "qcow2"),
        &want,
        "after overwriting compressed clusters",
    );
}

#[test]
fn backing_chain_of_three_with_relative_paths_and_untouched_backings() {
    if !have(&["qemu-img", "qemu-io"]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let raw = d.join("src.raw");
    let mut want = random_raw(&raw, 16 * MIB, 5);
    let sh = |cmd: &str| testkit::sh(&format!("cd {} && {cmd}", s(d)));
    sh("qemu-img convert -f raw -O qcow2 src.raw base.qcow2");
    sh("qemu-img create -q -f qcow2 -b base.qcow2 -F qcow2 mid.qcow2");
    sh("qemu-io -f qcow2 -c 'write -P 0xab 1M 64k' -c 'write -z 3M 64k' mid.qcow2");
    sh("qemu-img create -q -f qcow2 -o compat=0.10 -b mid.qcow2 -F qcow2 top.qcow2");
    sh("qemu-io -f qcow2 -c 'write -P 0xcd 5M 4k' top.qcow2");
    want[MIB..MIB + 65536].fill(0xab);
    want[3 * MIB..3 * MIB + 65536].fill(0);
    want[5 * MIB..5 * MIB + 4096].fill(0xcd);
    let (hb, hm) = (
        file_hash(&d.join("base.qcow2")),
        file_hash(&d.join("mid.qcow2")),
    );
    // The current directory is elsewhere: relative names follow the overlay.
    assert_ne!(std::env::current_dir().unwrap(), d);
    let top = d.join("top.qcow2");
    {
        let dev = open_image_with(&top, &OpenOptions::default()).unwrap();
        assert_same(&read_all(&*dev), &want, "chain read");
        let info = dev.image_info();
        let chain: Vec<_> = info.chain().iter().map(|i| i.format).collect();
        assert_eq!(chain, [Format::Qcow2, Format::Qcow2, Format::Qcow2]);
        assert_eq!(info.chain()[2].path, d.join("base.qcow2"));
        let dev = dev.into_block_device();
        let written = random_writes(&*dev, &mut want, 120, 9);
        assert!(written > 0);
        // A partial write over backing data keeps the rest of the cluster.
        dev.write_all_at(&[1, 2, 3], MIB as u64 + 10).unwrap();
        want[MIB + 10..MIB + 13].copy_from_slice(&[1, 2, 3]);
        assert_same(&read_all(&*dev), &want, "chain after writes");
    }
    assert_eq!(file_hash(&d.join("base.qcow2")), hb, "base changed");
    assert_eq!(file_hash(&d.join("mid.qcow2")), hm, "mid changed");
    qemu_check_clean(&top, "qcow2");
    assert_same(&qemu_raw(&top, "qcow2"), &want, "qemu's view of the chain");
}

#[test]
fn backings_are_opened_read_only_under_a_shared_lock() {
    if !have(&["qemu-img"]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().join("base.raw");
    std::fs::write(&base, vec![7u8; MIB]).unwrap();
    let top = dir.path().join("top.qcow2");
    create_qcow2(&top, 0, Some(Path::new("base.raw"))).unwrap();
    let dev = open_image(&top, false, None).unwrap();
    assert_eq!(dev.size(), MIB as u64);
    // While the chain is open, the base cannot be locked for writing.
    let other = vudev::FileDevice::open(&base, false).unwrap();
    assert!(matches!(
        other.lock(vudev::lock::LockMode::Exclusive),
        Err(vudev::lock::LockError::Busy { .. })
    ));
    assert!(other.lock(vudev::lock::LockMode::Shared).is_ok());
}

#[test]
fn backing_loops_are_refused() {
    if !have(&["qemu-img"]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let a = dir.path().join("a.qcow2");
    let b = dir.path().join("b.qcow2");
    qemu_img(&["create", "-q", "-f", "qcow2", s(&a), "1M"]);
    qemu_img(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-b",
        "a.qcow2",
        "-F",
        "qcow2",
        s(&b),
    ]);
    // Point a at b: a loop qemu-img would not make.
    qemu_img(&["rebase", "-u", "-b", "b.qcow2", "-F", "qcow2", s(&a)]);
    let Err(err) = open_image(&b, true, None) else {
        panic!("a looping chain opened");
    };
    assert_eq!(err.errno(), Errno::ELOOP, "{err}");
    assert!(err.to_string().contains("loop"), "{err}");
}

#[test]
fn discard_frees_clusters_and_reads_zeros() {
    if !have(&["qemu-img"]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("d.qcow2");
    create_qcow2(&img, 32 * MIB as u64, None).unwrap();
    let mut mirror = vec![0u8; 32 * MIB];
    {
        let dev = open_image(&img, false, None).unwrap();
        let mut data = vec![0u8; 8 * MIB];
        Rng(2).fill(&mut data);
        dev.write_all_at(&data, 4 * MIB as u64).unwrap();
        mirror[4 * MIB..12 * MIB].copy_from_slice(&data);
    }
    let full = qemu_check_clean(&img, "qcow2");
    let blocks_full = std::fs::metadata(&img)
        .map(|m| std::os::unix::fs::MetadataExt::blocks(&m))
        .unwrap();
    {
        let dev = open_image(&img, false, None).unwrap();
        assert!(dev.discard_zeroes());
        // Unaligned edges: the partial clusters are zeroed, the whole ones freed.
        dev.discard(5 * MIB as u64 + 100, 4 * MIB as u64).unwrap();
        mirror[5 * MIB + 100..9 * MIB + 100].fill(0);
        assert_same(&read_all(&*dev), &mirror, "after discard");
    }
    let after = qemu_check_clean(&img, "qcow2");
    let blocks_after = std::fs::metadata(&img)
        .map(|m| std::os::unix::fs::MetadataExt::blocks(&m))
        .unwrap();
    assert!(
        blocks_after < blocks_full,
        "file did not shrink: {blocks_full} -> {blocks_after}"
    );
    let allocated = |t: &str| -> u64 {
        t.lines()
            .find_map(|l| l.split('/').next()?.trim().parse().ok())
            .expect("allocation line")
    };
    assert!(allocated(&after) < allocated(&full), "{full}\n{after}");
    assert_same(
        &qemu_raw(&img, "qcow2"),
        &mirror,
        "qemu's view after discard",
    );
    // Discarded clusters are reused.
    {
        let dev = open_image(&img, false, None).unwrap();
        dev.write_all_at(&vec![9u8; 2 * MIB], 20 * MIB as u64)
            .unwrap();
        mirror[20 * MIB..22 * MIB].fill(9);
    }
    qemu_check_clean(&img, "qcow2");
    assert_same(&qemu_raw(&img, "qcow2"), &mirror, "after reuse");
}

#[test]
fn discard_over_a_backing_file_reads_zeros_in_v3() {
    if !have(&["qemu-img"]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().join("base.raw");
    std::fs::write(&base, vec![0x11u8; 4 * MIB]).unwrap();
    let top = dir.path().join("top.qcow2");
    create_qcow2(&top, 0, Some(&base)).unwrap();
    let mut want = vec![0x11u8; 4 * MIB];
    {
        let dev = open_image(&top, false, None).unwrap();
        dev.write_all_at(&vec![0x22; MIB], MIB as u64).unwrap();
        dev.discard(0, 2 * MIB as u64).unwrap();
        want[..2 * MIB].fill(0);
        assert_same(&read_all(&*dev), &want, "ours");
    }
    qemu_check_clean(&top, "qcow2");
    assert_same(&qemu_raw(&top, "qcow2"), &want, "qemu's");
}

#[test]
fn create_qcow2_makes_images_qemu_accepts() {
    if !have(&["qemu-img"]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("new.qcow2");
    create_qcow2(&img, 100 * MIB as u64 + 512, None).unwrap();
    qemu_check_clean(&img, "qcow2");
    let info = qemu_img(&["info", "--output=json", s(&img)]);
    assert!(
        info.contains(&format!("\"virtual-size\": {}", 100 * MIB + 512)),
        "{info}"
    );
    let mut mirror = vec![0u8; 100 * MIB + 512];
    {
        let dev = open_image(&img, false, None).unwrap();
        random_writes(&*dev, &mut mirror, 100, 21);
        dev.write_all_at(&[0xee; 512], (100 * MIB) as u64).unwrap();
        mirror[100 * MIB..].fill(0xee);
    }
    qemu_check_clean(&img, "qcow2");
    assert_same(&qemu_raw(&img, "qcow2"), &mirror, "qemu's view");
    // With a relative backing: qemu follows it and names the probed format.
    let top = dir.path().join("top.qcow2");
    create_qcow2(&top, 0, Some(Path::new("new.qcow2"))).unwrap();
    let info = qemu_img(&["info", "--output=json", s(&top)]);
    assert!(
        info.contains("\"backing-filename-format\": \"qcow2\""),
        "{info}"
    );
    assert!(
        info.contains("\"backing-filename\": \"new.qcow2\""),
        "{info}"
    );
    assert_same(&qemu_raw(&top, "qcow2"), &mirror, "through the new overlay");
}

#[test]
fn caches_stay_within_their_caps_on_a_sparse_4_gib_disk() {
    if !have(&["qemu-img"]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("big.qcow2");
    // 4 KiB clusters: one L2 table per 2 MiB, so 2048 tables for 4 GiB.
    qemu_img(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-o",
        "cluster_size=4096",
        s(&img),
        "4G",
    ]);
    let options = OpenOptions {
        l2_cache_bytes: 16 * 4096,
        refcount_cache_bytes: 4 * 4096,
        ..OpenOptions::default()
    };
    let dev = Arc::new(Qcow2::open_with(&img, &options).unwrap());
    let stats = dev.cache_stats();
    assert_eq!((stats.l2_capacity, stats.refcount_capacity), (16, 4));
    let mut rng = Rng(4);
    let mut written = Vec::new();
    let mut max_l2 = 0;
    let mut max_rb = 0;
    for i in 0..1500u64 {
        let off = (i * 2_863_311 + rng.below(1 << 20)) % ((4u64 << 30) - 8192);
        let mut buf = vec![0u8; 3000];
        rng.fill(&mut buf);
        dev.write_all_at(&buf, off).unwrap();
        written.push((off, buf));
        let st = dev.cache_stats();
        max_l2 = max_l2.max(st.l2_tables);
        max_rb = max_rb.max(st.refcount_blocks);
    }
    for (off, buf) in written.iter().rev().take(700) {
        let mut got = vec![0u8; buf.len()];
        dev.read_exact_at(&mut got, *off).unwrap();
        // Later writes may overlap earlier ones; check only the last write of each range.
        let overlapped = written
            .iter()
            .rev()
            .take_while(|(o, _)| o != off)
            .any(|(o, b)| *o < off + buf.len() as u64 && *off < o + b.len() as u64);
        if !overlapped {
            assert_eq!(&got, buf, "at {off}");
        }
        let st = dev.cache_stats();
        max_l2 = max_l2.max(st.l2_tables);
    }
    assert!(max_l2 <= 16, "L2 cache held {max_l2} tables");
    assert!(max_rb <= 4, "refcount cache held {max_rb} blocks");
    assert_eq!(max_l2, 16, "the test should have filled the L2 cache");
    drop(dev);
    qemu_check_clean(&img, "qcow2");
}

#[test]
fn read_only_images_refuse_writes() {
    if !have(&["qemu-img"]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("ro.qcow2");
    qemu_img(&["create", "-q", "-f", "qcow2", s(&img), "1M"]);
    let dev = open_image(&img, true, None).unwrap();
    assert_eq!(dev.write_at(b"x", 0), Err(Errno::EROFS));
    assert_eq!(dev.discard(0, 4096), Err(Errno::EROFS));
    let rw = open_image(&img, false, None).unwrap();
    assert_eq!(rw.write_at(b"x", 1 << 20), Err(Errno::ENOSPC));
    let mut b = [1u8; 8];
    assert_eq!(rw.read_at(&mut b, 1 << 20), Ok(0));
}

/// Throughput of our qcow2 (run with --ignored --nocapture in release for the numbers in
/// lib.rs).
#[test]
#[ignore]
fn bench_throughput() {
    let dir = tempfile::tempdir_in("/tmp").unwrap();
    let img = dir.path().join("b.qcow2");
    create_qcow2(&img, 4 << 30, None).unwrap();
    let dev = open_image(&img, false, None).unwrap();
    let buf = vec![0x5au8; 65536];
    let total: u64 = 512 << 20;
    let t = std::time::Instant::now();
    let mut off = 0;
    while off < total {
        dev.write_all_at(&buf, off).unwrap();
        off += 65536;
    }
    dev.flush().unwrap();
    let wt = t.elapsed().as_secs_f64();
    let mut rb = vec![0u8; 65536];
    let t = std::time::Instant::now();
    let mut off = 0;
    while off < total {
        dev.read_exact_at(&mut rb, off).unwrap();
        off += 65536;
    }
    let rt = t.elapsed().as_secs_f64();
    let mut rng = Rng(1);
    let mut rb = vec![0u8; 4096];
    let t = std::time::Instant::now();
    for _ in 0..50000 {
        let o = rng.below(total / 4096) * 4096;
        dev.read_exact_at(&mut rb, o).unwrap();
    }
    let r4 = t.elapsed().as_secs_f64();
    println!(
        "ours: seq write 64k {:.0} MiB/s, seq read 64k {:.0} MiB/s, rand read 4k {:.0} kIOPS",
        512.0 / wt,
        512.0 / rt,
        50.0 / r4
    );
}
