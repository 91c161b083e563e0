//! `vuimg build` does what genimage users need: a partition filled from an image file,
//! explicit offsets and alignment, raw data outside the table (a bootloader), partition
//! GUIDs, filesystem UUIDs and serials, mke2fs features, MBR logical partitions and `fill`.
//! Judged by sfdisk, sgdisk, dumpe2fs, e2fsck, fsck.fat and the bytes themselves.

mod common;
use common::*;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

fn bytes_at(image: &Path, offset: u64, len: usize) -> Vec<u8> {
    use std::os::unix::fs::FileExt;
    let mut buf = vec![0u8; len];
    std::fs::File::open(image)
        .unwrap()
        .read_exact_at(&mut buf, offset)
        .unwrap();
    buf
}

fn pseudo_random(len: usize, seed: u32) -> Vec<u8> {
    let mut x = seed;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect()
}

#[test]
fn an_mbr_card_with_a_bootloader_an_image_partition_and_logicals() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let loader = pseudo_random(20_000, 7);
    std::fs::write(d.join("u-boot.bin"), &loader).unwrap();
    let vfat = d.join("boot.vfat");
    let (made, text) = tool("mkfs.fat", &["-C", s(&vfat), "8192"]);
    assert!(made, "{text}");
    std::fs::write(
        d.join("card.toml"),
        r#"size = "128M"
table = "mbr"
fill = true
raw = [ { file = "u-boot.bin", offset = "8K" } ]
[[partition]]
image = "boot.vfat"
type = "fat32"
offset = "4M"
[[partition]]
fs = "ext4"
size = "32M"
align = "4M"
fs_uuid = "0b1d2c3e-1111-2222-3333-444455556666"
features = ["^metadata_csum", "^has_journal"]
[[partition]]
type = "extended"
offset = "44M"
[[partition]]
fs = "fat32"
logical = true
size = "33M"
volume_id = "0xdeadbeef"
[[partition]]
fs = "ext2"
logical = true
"#,
    )
    .unwrap();
    let img = d.join("card.img");
    ok(&["build", "-q", s(&d.join("card.toml")), "-o", s(&img)]);

    let (_, table) = tool("sfdisk", &["-d", s(&img)]);
    for line in [
        "card.img1 : start=        8192, size=       16384, type=c",
        "card.img2 : start=       24576, size=       65536, type=83",
        "card.img3 : start=       90112,",
        "card.img5 : start=       92160, size=       67584, type=c",
        "card.img6 : start=      161792,",
    ] {
        assert!(table.contains(line), "no {line:?} in\n{table}");
    }
    assert_eq!(
        bytes_at(&img, 8192, loader.len()),
        loader,
        "the raw bootloader"
    );
    assert_eq!(
        bytes_at(&img, 4 << 20, 8 << 20),
        std::fs::read(&vfat).unwrap(),
        "partition 1 holds boot.vfat"
    );
    let p2 = d.join("p2.img");
    extract(&img, 24576 * 512, 32 << 20, &p2);
    let (_, super_block) = tool("dumpe2fs", &["-h", s(&p2)]);
    assert!(super_block.contains("0b1d2c3e-1111-2222-3333-444455556666"));
    let features = super_block
        .lines()
        .find(|l| l.starts_with("Filesystem features"))
        .unwrap();
    assert!(!features.contains("metadata_csum") && !features.contains("has_journal"));
    let (clean, text) = tool("e2fsck", &["-fn", s(&p2)]);
    assert!(clean, "{text}");
    let p5 = d.join("p5.img");
    extract(&img, 92160 * 512, 33 << 20, &p5);
    assert_eq!(
        bytes_at(&p5, 67, 4),
        0xdeadbeef_u32.to_le_bytes(),
        "FAT32 serial"
    );
    let (clean, text) = tool("fsck.fat", &["-n", s(&p5)]);
    assert!(clean, "{text}");
    let md = std::fs::metadata(&img).unwrap();
    assert!(md.blocks() * 512 >= md.len(), "fill: every byte allocated");
}

#[test]
fn a_gpt_disk_with_given_guids() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(
        d.join("g.toml"),
        r#"size = "64M"
table = "gpt"
id = "11111111-2222-3333-4444-555555555555"
[[partition]]
name = "esp"
fs = "fat32"
size = "34M"
uuid = "aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee"
[[partition]]
name = "root"
fs = "ext4"
align = "8M"
"#,
    )
    .unwrap();
    let img = d.join("g.img");
    ok(&["build", "-q", s(&d.join("g.toml")), "-o", s(&img)]);
    let (verified, text) = tool("sgdisk", &["-v", s(&img)]);
    assert!(verified && text.contains("No problems found"), "{text}");
    let (_, info) = tool("sgdisk", &["-i", "1", s(&img)]);
    assert!(
        info.contains("AAAAAAAA-BBBB-CCCC-DDDD-EEEEEEEEEEEE"),
        "{info}"
    );
    let (_, info) = tool("sgdisk", &["-i", "2", s(&img)]);
    let first = info
        .lines()
        .find(|l| l.starts_with("First sector"))
        .unwrap();
    let sector: u64 = first.split_whitespace().nth(2).unwrap().parse().unwrap();
    assert_eq!(sector % 16384, 0, "8M-aligned: {first}");
    let (_, disk) = tool("sgdisk", &["-p", s(&img)]);
    assert!(
        disk.contains("11111111-2222-3333-4444-555555555555"),
        "{disk}"
    );
}

#[test]
fn raw_data_over_the_table_or_a_partition_and_oversized_images_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(d.join("blob"), vec![1u8; 4096]).unwrap();
    std::fs::write(d.join("big.vfat"), vec![0u8; 2 << 20]).unwrap();
    let cases = [
        (
            "size = \"16M\"\ntable = \"mbr\"\nraw = [ { file = \"blob\", offset = 0 } ]\n",
            "overlaps the MBR",
        ),
        (
            "size = \"16M\"\ntable = \"gpt\"\nraw = [ { file = \"blob\", offset = \"8K\" } ]\n",
            "overlaps the primary GPT",
        ),
        (
            "size = \"16M\"\ntable = \"mbr\"\nraw = [ { file = \"blob\", offset = \"1M\" } ]\n[[partition]]\nsize = \"4M\"\n",
            "overlaps partition 1",
        ),
        (
            "size = \"16M\"\ntable = \"mbr\"\n[[partition]]\nimage = \"big.vfat\"\nsize = \"1M\"\n",
            "larger than the partition",
        ),
        (
            "size = \"16M\"\ntable = \"mbr\"\n[[partition]]\nimage = \"big.vfat\"\nfs = \"fat32\"\n",
            "takes no fs",
        ),
        (
            "size = \"16M\"\ntable = \"mbr\"\n[[partition]]\nfs = \"ext4\"\nfeatures = [\"a,b\"]\n",
            "not a mke2fs feature",
        ),
    ];
    let out = d.join("out.img");
    for (spec, needle) in cases {
        std::fs::write(d.join("bad.toml"), spec).unwrap();
        fails(&["build", s(&d.join("bad.toml")), "-o", s(&out)], 1, needle);
        assert!(!out.exists(), "{needle}: an output was written");
    }
}

#[test]
fn a_hybrid_mbr_lists_gpt_partitions_for_mbr_only_firmware() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(
        d.join("h.toml"),
        "size = \"64M\"\ntable = \"gpt\"\nhybrid_mbr = [1, 2]\n\
         [[partition]]\nname = \"boot\"\nfs = \"fat32\"\nsize = \"34M\"\n\
         [[partition]]\nname = \"root\"\nfs = \"ext4\"\nmbr_type = \"0x83\"\n",
    )
    .unwrap();
    let img = d.join("h.img");
    ok(&["build", "-q", s(&d.join("h.toml")), "-o", s(&img)]);
    let (verified, text) = tool("sgdisk", &["-v", s(&img)]);
    assert!(verified && text.contains("No problems found"), "{text}");
    let (_, mbr) = tool("fdisk", &["-t", "dos", "-l", s(&img)]);
    let rows: Vec<Vec<&str>> = mbr
        .lines()
        .filter(|l| l.starts_with(s(&img)))
        .map(|l| l.split_whitespace().collect())
        .collect();
    // Device Start End Sectors Size Id Type
    let by_id = |id: &str| {
        rows.iter()
            .find(|r| r[5] == id)
            .unwrap_or_else(|| panic!("{mbr}"))
    };
    assert_eq!(by_id("c")[1..4], ["2048", "71679", "69632"]);
    assert_eq!(by_id("83")[1], "71680");
    assert_eq!(by_id("ee")[1..3], ["1", "2047"]);
    // Still read as GPT: both names address partitions.
    ok(&["ls", &format!("{}@boot:/", s(&img))]);
    ok(&["ls", &format!("{}@root:/", s(&img))]);
    std::fs::write(
        d.join("bad.toml"),
        "size = \"16M\"\ntable = \"mbr\"\nhybrid_mbr = [1]\n[[partition]]\n",
    )
    .unwrap();
    fails(
        &["build", s(&d.join("bad.toml")), "-o", s(&d.join("x.img"))],
        1,
        "hybrid_mbr is for",
    );
}
