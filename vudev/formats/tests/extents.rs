//! `BlockDevice::extents` of every format against `qemu-img map --output=json` of the
//! same image (the oracle): the ranges qemu says do not read as zeros are exactly the
//! ranges we call data. Images are made by qemu-img and qemu-io with data at known places.

mod common;

use common::*;
use std::path::Path;
use testkit::s;
use vudev::BlockDevice;
use vudev_formats::open_image;

const MIB: u64 = 1 << 20;

/// Adds (start, len) to sorted `ranges`, merging with the last when adjacent.
fn push(ranges: &mut Vec<(u64, u64)>, start: u64, len: u64) {
    match ranges.last_mut() {
        Some((s, l)) if *s + *l == start => *l += len,
        _ if len == 0 => {}
        _ => ranges.push((start, len)),
    }
}

/// The ranges qemu-img map reports as not reading as zeros (data, or backing data).
fn qemu_data(img: &Path, format: &str) -> Vec<(u64, u64)> {
    let out = qemu_img(&["map", "--output=json", "-f", format, s(img)]);
    let map: serde_json::Value = serde_json::from_str(&out).unwrap();
    let mut ranges = Vec::new();
    for e in map.as_array().unwrap() {
        if !e["zero"].as_bool().unwrap() {
            push(
                &mut ranges,
                e["start"].as_u64().unwrap(),
                e["length"].as_u64().unwrap(),
            );
        }
    }
    ranges
}

/// Our data ranges of `img`, through `vudev::data_ranges`, and again asked two extents at
/// a time (the answers must chain up to the same map).
fn our_data(img: &Path) -> Vec<(u64, u64)> {
    let dev = open_image(img, true, None).unwrap();
    let whole = vudev::data_ranges(&*dev).unwrap();
    let mut piecewise = Vec::new();
    let mut pos = 0;
    while pos < dev.size() {
        let got = dev.extents(pos, dev.size() - pos, 2).unwrap();
        assert!(
            (1..=2).contains(&got.len()),
            "{} extents at {pos}",
            got.len()
        );
        for e in got {
            if !e.zero {
                push(&mut piecewise, pos, e.len);
            }
            pos += e.len;
        }
    }
    assert_eq!(pos, dev.size(), "the extents run past the end");
    assert_eq!(whole, piecewise, "{}: piecewise map differs", img.display());
    whole
}

fn assert_map_is_qemus(img: &Path, format: &str) -> Vec<(u64, u64)> {
    let ours = our_data(img);
    assert_eq!(ours, qemu_data(img, format), "{}", img.display());
    ours
}

fn io(img: &Path, format: &str, cmds: &[&str]) {
    for c in cmds {
        qemu_io(img, format, c);
    }
}

#[test]
fn qcow2_map_follows_l2_tables_zero_clusters_and_a_backing_chain() {
    if !have(&["qemu-img", "qemu-io"]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    // raw (with holes) <- qcow2 v3 <- qcow2 v3; the top is bigger than the raw file.
    let base = dir.path().join("base.raw");
    std::fs::File::create(&base)
        .unwrap()
        .set_len(48 * MIB)
        .unwrap();
    io(&base, "raw", &["write -P 1 5M 4k", "write -P 2 40M 1M"]);
    let mid = dir.path().join("mid.qcow2");
    qemu_img(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-F",
        "raw",
        "-b",
        "base.raw",
        s(&mid),
        "64M",
    ]);
    io(
        &mid,
        "qcow2",
        &[
            "write -P 3 1M 256k",
            "write -c -P 4 10M 64k",
            "write -z 40M 512k",
        ],
    );
    let top = dir.path().join("top.qcow2");
    qemu_img(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-F",
        "qcow2",
        "-b",
        "mid.qcow2",
        s(&top),
        "64M",
    ]);
    io(
        &top,
        "qcow2",
        &[
            "write -P 5 20M 128k",
            "write -z 1M 64k",
            "write -P 6 63M 4k",
            "write -z 50M 1M",
        ],
    );
    let ours = assert_map_is_qemus(&top, "qcow2");
    // Known places: the zero cluster at 1M hides the mid's data; the zeroed half of the
    // raw's 40M run stays hidden, the other half shows through.
    assert!(ours.contains(&(MIB + 64 * 1024, 192 * 1024)), "{ours:?}");
    assert!(
        ours.contains(&(40 * MIB + 512 * 1024, 512 * 1024)),
        "{ours:?}"
    );
    assert!(!ours.iter().any(|&(s, l)| s < 51 * MIB && s + l > 50 * MIB));
    assert_map_is_qemus(&mid, "qcow2");
    assert_map_is_qemus(&base, "raw");
}

#[test]
fn qcow2_with_512_byte_clusters_maps_as_qemu() {
    if !have(&["qemu-img", "qemu-io"]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("small.qcow2");
    qemu_img(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-o",
        "cluster_size=512",
        s(&img),
        "8M",
    ]);
    io(
        &img,
        "qcow2",
        &["write -P 1 0 1k", "write -P 2 3M 100k", "write -z 3M 512"],
    );
    assert_map_is_qemus(&img, "qcow2");
}

#[test]
fn vdi_map_is_its_block_map() {
    if !have(&["qemu-img", "qemu-io"]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("disk.vdi");
    qemu_img(&["create", "-q", "-f", "vdi", s(&img), "64M"]);
    io(
        &img,
        "vdi",
        &["write -P 1 3M 4k", "write -P 2 17M 2M", "write -P 3 63M 1M"],
    );
    let ours = assert_map_is_qemus(&img, "vdi");
    assert_eq!(
        ours,
        vec![(3 * MIB, MIB), (17 * MIB, 2 * MIB), (63 * MIB, MIB)]
    );
}

#[test]
fn vmdk_sparse_map_is_its_grain_tables() {
    if !have(&["qemu-img", "qemu-io"]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("disk.vmdk");
    qemu_img(&[
        "create",
        "-q",
        "-f",
        "vmdk",
        "-o",
        "zeroed_grain=on",
        s(&img),
        "100M",
    ]);
    io(
        &img,
        "vmdk",
        &[
            "write -P 1 1M 4k",
            "write -P 2 33M 1M",
            "write -z 33M 64k",
            "write -P 3 99M 1M",
        ],
    );
    let ours = assert_map_is_qemus(&img, "vmdk");
    assert!(ours.contains(&(MIB, 64 * 1024)), "{ours:?}");
    assert!(
        ours.contains(&(33 * MIB + 64 * 1024, MIB - 64 * 1024)),
        "{ours:?}"
    );
}

#[test]
fn vmdk_stream_optimized_and_flat_maps_are_qemus() {
    if !have(&["qemu-img", "qemu-io"]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let raw = dir.path().join("src.raw");
    std::fs::File::create(&raw)
        .unwrap()
        .set_len(40 * MIB)
        .unwrap();
    io(&raw, "raw", &["write -P 7 2M 1M", "write -P 8 30M 64k"]);
    let stream = dir.path().join("stream.vmdk");
    qemu_img(&[
        "convert",
        "-f",
        "raw",
        "-O",
        "vmdk",
        "-o",
        "subformat=streamOptimized",
        s(&raw),
        s(&stream),
    ]);
    assert_eq!(
        assert_map_is_qemus(&stream, "vmdk"),
        vec![(2 * MIB, MIB), (30 * MIB, 64 * 1024)]
    );
    let flat = dir.path().join("flat.vmdk");
    qemu_img(&[
        "create",
        "-q",
        "-f",
        "vmdk",
        "-o",
        "subformat=monolithicFlat",
        s(&flat),
        "40M",
    ]);
    io(&flat, "vmdk", &["write -P 9 7M 1M", "write -P 9 39M 4k"]);
    let ours = assert_map_is_qemus(&flat, "vmdk");
    assert!(ours.contains(&(7 * MIB, MIB)), "{ours:?}");
}

#[test]
fn uml_cow_map_is_its_bitmap_over_the_backing_files_holes() {
    // qemu has no UML COW driver: the oracle is where we wrote and where the raw backing
    // file holds data (SEEK_DATA, asserted by the raw case above against qemu-img map).
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().join("base.raw");
    let f = std::fs::File::create(&base).unwrap();
    f.set_len(16 * MIB).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&f, &[1u8; MIB as usize], 2 * MIB).unwrap();
    drop(f);
    let cow = dir.path().join("disk.cow");
    vudev_formats::create_uml_cow(&cow, &base).unwrap();
    {
        let dev = open_image(&cow, false, None).unwrap();
        dev.write_all_at(&[2u8; 512], 100 * 512).unwrap();
        dev.write_all_at(&[3u8; 65536], 5 * MIB).unwrap();
        // Zeros written over the backing's data are the overlay's: data, still.
        dev.write_all_at(&[0u8; 4096], 2 * MIB).unwrap();
        dev.flush().unwrap();
    }
    assert_eq!(
        our_data(&cow),
        vec![(51200, 512), (2 * MIB, MIB), (5 * MIB, 65536)]
    );
}

/// The ranges qemu-img map says the top image itself holds (depth 0: data or zeros).
fn qemu_own(img: &Path, format: &str) -> Vec<(u64, u64)> {
    let out = qemu_img(&["map", "--output=json", "-f", format, s(img)]);
    let map: serde_json::Value = serde_json::from_str(&out).unwrap();
    let mut ranges = Vec::new();
    for e in map.as_array().unwrap() {
        if e["depth"].as_u64().unwrap() == 0 {
            push(
                &mut ranges,
                e["start"].as_u64().unwrap(),
                e["length"].as_u64().unwrap(),
            );
        }
    }
    ranges
}

/// `img` opened alone (`open_layer`), and its own ranges, asked whole and two extents at a
/// time (the answers must chain up to the same map).
fn our_own(
    img: &Path,
) -> (
    std::sync::Arc<dyn vudev_formats::ImageDevice>,
    Vec<(u64, u64)>,
) {
    let layer = vudev_formats::open_layer(vudev::FileDevice::open(img, true).unwrap()).unwrap();
    let whole = vudev_formats::own_ranges(layer.as_ref()).unwrap();
    let mut piecewise = Vec::new();
    let mut pos = 0;
    while pos < layer.size() {
        for e in layer.own_extents(pos, layer.size() - pos, 2).unwrap() {
            if !e.zero {
                push(&mut piecewise, pos, e.len);
            }
            pos += e.len;
        }
    }
    assert_eq!(
        whole,
        piecewise,
        "{}: piecewise own map differs",
        img.display()
    );
    (layer, whole)
}

#[test]
fn a_qcow2_overlays_own_map_is_qemus_depth_0_and_needs_no_backing_file() {
    if !have(&["qemu-img", "qemu-io"]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().join("base.raw");
    std::fs::File::create(&base)
        .unwrap()
        .set_len(16 * MIB)
        .unwrap();
    io(&base, "raw", &["write -P 1 0 4M", "write -P 2 8M 4M"]);
    let top = dir.path().join("top.qcow2");
    qemu_img(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-F",
        "raw",
        "-b",
        "base.raw",
        s(&top),
        "16M",
    ]);
    io(
        &top,
        "qcow2",
        &[
            "write -P 3 1M 512k",
            "write -c -P 4 6M 64k",
            // A zero cluster hides the base's data: it is the overlay's, though it reads
            // as zeros (its extents call it a hole).
            "write -z 9M 256k",
            "write -P 5 15M 64k",
        ],
    );
    let want = qemu_own(&top, "qcow2");
    assert!(want.contains(&(9 * MIB, 256 * 1024)), "{want:?}");
    let (layer, ours) = our_own(&top);
    assert_eq!(ours, want);
    assert_eq!(
        ours,
        vec![
            (MIB, 512 * 1024),
            (6 * MIB, 64 * 1024),
            (9 * MIB, 256 * 1024),
            (15 * MIB, 64 * 1024)
        ]
    );
    assert!(layer.image_info().backing.is_none());
    // The chain's map is another thing: the base's data shows through.
    let chain = our_data(&top);
    assert!(chain.contains(&(0, 4 * MIB)), "{chain:?}");
    // Alone, the layer reads its own ranges as the chain does, and zeros elsewhere;
    // it does not open the backing file (here gone).
    let shown = qemu_raw(&top, "qcow2");
    std::fs::rename(&base, dir.path().join("gone.raw")).unwrap();
    assert!(open_image(&top, true, None).is_err(), "the chain opened");
    let (layer, again) = our_own(&top);
    assert_eq!(again, ours);
    let alone = read_all(layer.as_ref());
    for &(start, len) in &ours {
        let r = start as usize..(start + len) as usize;
        assert_same(&alone[r.clone()], &shown[r], "an own range read alone");
    }
    assert!(
        alone[..MIB as usize].iter().all(|&b| b == 0),
        "backing data read alone"
    );
}

#[test]
fn a_uml_cow_overlays_own_map_is_its_bitmap_and_needs_no_backing_file() {
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().join("base.raw");
    std::fs::write(&base, vec![1u8; 4 * MIB as usize]).unwrap();
    let cow = dir.path().join("disk.cow");
    vudev_formats::create_uml_cow(&cow, &base).unwrap();
    {
        let dev = open_image(&cow, false, None).unwrap();
        // Sectors 1..=2, whole: the edges are filled from the backing file.
        dev.write_all_at(&[2u8; 600], 700).unwrap();
        dev.write_all_at(&[0u8; 65536], 3 * MIB).unwrap();
        dev.flush().unwrap();
    }
    // The backing file is all data: the chain's map cannot tell the overlay's part.
    assert_eq!(our_data(&cow), vec![(0, 4 * MIB)]);
    let (_, ours) = our_own(&cow);
    assert_eq!(ours, vec![(512, 1024), (3 * MIB, 65536)]);
    std::fs::remove_file(&base).unwrap();
    let (layer, _) = our_own(&cow);
    let alone = read_all(layer.as_ref());
    assert_eq!(alone[511], 0, "a backing byte read alone");
    assert_eq!(
        &alone[512..700],
        &[1u8; 188][..],
        "edge of a written sector"
    );
    assert_eq!(&alone[700..1300], &[2u8; 600][..]);
    assert!(alone[3 * MIB as usize..][..65536].iter().all(|&b| b == 0));
}
