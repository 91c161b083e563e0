//! Partition tables read and written by vudev, checked against sfdisk, sgdisk,
//! mkfs.vfat, fsck.fat and mtools.

use integration::*;
use std::path::Path;
use std::sync::Arc;
use vudev::part::{self, NewPartition, PartitionTable, Scheme, TableError};
use vudev::{BlockDevice, DeviceCursor, Errno, FileDevice, PartitionedDisk, Window};

const MIB: u64 = 1 << 20;

fn probe_file(path: &Path) -> Result<Option<PartitionTable>, TableError> {
    let dev = FileDevice::open(path, true).unwrap();
    part::probe(&dev)
}

fn path_str(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[test]
fn four_primaries_from_sfdisk() {
    let dir = tempfile::tempdir().unwrap();
    let img = sparse_image(dir.path(), "disk.img", 64 * MIB);
    sh(&format!(
        "printf 'label: dos\\nlabel-id: 0x1234abcd\\n,8M,c,*\\n,8M,83\\n,8M,82\\n,,ef\\n' | sfdisk -q {}",
        path_str(&img)
    ));
    let table = probe_file(&img).unwrap().expect("a table");
    assert_eq!(table.scheme, Scheme::Mbr);
    assert_eq!(table.partitions.len(), 4);
    assert!(table.get(1).unwrap().bootable);
    assert_same_as_sfdisk(&table, &img);
}

#[test]
fn extended_with_three_logicals_from_sfdisk() {
    let dir = tempfile::tempdir().unwrap();
    let img = sparse_image(dir.path(), "disk.img", 128 * MIB);
    sh(&format!(
        "printf 'label: dos\\n,16M,c\\n,,5\\n,8M,83\\n,8M,82\\n,,83\\n' | sfdisk -q {}",
        path_str(&img)
    ));
    let table = probe_file(&img).unwrap().unwrap();
    let numbers: Vec<u32> = table.partitions.iter().map(|p| p.number).collect();
    assert_eq!(numbers, vec![1, 2, 5, 6, 7]);
    assert!(table.get(2).unwrap().ptype.is_extended());
    assert_same_as_sfdisk(&table, &img);
}

#[test]
fn gpt_with_gaps_between_slots_from_sgdisk() {
    let dir = tempfile::tempdir().unwrap();
    let img = sparse_image(dir.path(), "disk.img", 128 * MIB);
    run_ok(
        "sgdisk",
        &[
            "-n",
            "1:2048:+8M",
            "-t",
            "1:ef00",
            "-c",
            "1:EFI system",
            "-n",
            "3:0:+16M",
            "-t",
            "3:8300",
            "-c",
            "3:rootfs",
            "-A",
            "3:set:2",
            "-n",
            "7:0:+4M",
            "-t",
            "7:8200",
            "-n",
            "128:0:0",
            "-t",
            "128:0700",
            "-c",
            "128:data",
            path_str(&img),
        ],
    );
    let table = probe_file(&img).unwrap().unwrap();
    assert_eq!(table.scheme, Scheme::Gpt);
    let numbers: Vec<u32> = table.partitions.iter().map(|p| p.number).collect();
    assert_eq!(numbers, vec![1, 3, 7, 128]);
    assert_eq!(table.get(3).unwrap().name, "rootfs");
    assert!(table.get(3).unwrap().bootable);
    assert!(table.warnings.is_empty(), "{:?}", table.warnings);
    assert_same_as_sfdisk(&table, &img);
}

fn zero_sector(img: &Path, lba: u64) {
    let dev = FileDevice::open(img, false).unwrap();
    dev.write_all_at(&[0u8; 512], lba * 512).unwrap();
}

#[test]
fn gpt_with_zeroed_primary_header_uses_the_backup() {
    let dir = tempfile::tempdir().unwrap();
    let img = sparse_image(dir.path(), "disk.img", 64 * MIB);
    run_ok(
        "sgdisk",
        &[
            "-n",
            "1:0:+8M",
            "-t",
            "1:8300",
            "-n",
            "2:0:0",
            "-t",
            "2:0700",
            path_str(&img),
        ],
    );
    let intact = probe_file(&img).unwrap().unwrap();
    zero_sector(&img, 1);
    let recovered = probe_file(&img).unwrap().unwrap();
    assert_eq!(recovered.partitions, intact.partitions);
    assert!(
        recovered
            .warnings
            .iter()
            .any(|w| w.contains("primary GPT damaged")),
        "expected a warning, got {:?}",
        recovered.warnings
    );
}

#[test]
fn gpt_with_damaged_entry_array_uses_the_backup() {
    let dir = tempfile::tempdir().unwrap();
    let img = sparse_image(dir.path(), "disk.img", 64 * MIB);
    run_ok("sgdisk", &["-n", "1:0:+8M", "-t", "1:8300", path_str(&img)]);
    let intact = probe_file(&img).unwrap().unwrap();
    // Sector 2 holds the first entries; the header CRC stays valid.
    let dev = FileDevice::open(&img, false).unwrap();
    dev.write_all_at(b"garbage!", 2 * 512 + 40).unwrap();
    let recovered = probe_file(&img).unwrap().unwrap();
    assert_eq!(recovered.partitions, intact.partitions);
    assert!(
        recovered
            .warnings
            .iter()
            .any(|w| w.contains("entry array CRC")),
        "{:?}",
        recovered.warnings
    );
}

#[test]
fn tables_we_write_pass_sfdisk_and_sgdisk_and_read_back_identically() {
    let dir = tempfile::tempdir().unwrap();

    // MBR: two primaries (one bootable), an extended with three logicals.
    let img = sparse_image(dir.path(), "mbr.img", 256 * MIB);
    let dev = FileDevice::open(&img, false).unwrap();
    let mut t = PartitionTable::new_mbr(dev.size(), 512, 0xC0FFEE01).unwrap();
    t.add(NewPartition {
        sectors: Some(64 * 2048),
        bootable: true,
        ..NewPartition::new(ptype("fat32", false))
    })
    .unwrap();
    t.add(NewPartition {
        sectors: Some(32 * 2048),
        ..NewPartition::new(ptype("linux", false))
    })
    .unwrap();
    t.add(NewPartition::new(ptype("extended", false))).unwrap();
    for (name, size) in [
        ("linux", Some(16 * 2048)),
        ("swap", Some(8 * 2048)),
        ("linux", None),
    ] {
        t.add(NewPartition {
            sectors: size,
            logical: true,
            ..NewPartition::new(ptype(name, false))
        })
        .unwrap();
    }
    part::write(&dev, &t).unwrap();
    assert_sfdisk_verify_clean(&img);
    assert_same_as_sfdisk(&t, &img);
    let back = part::probe(&dev).unwrap().unwrap();
    assert_eq!(as_sfdisk(&back), as_sfdisk(&t));

    // GPT: names, bootable attribute, a gap in numbering.
    let img = sparse_image(dir.path(), "gpt.img", 256 * MIB);
    let dev = FileDevice::open(&img, false).unwrap();
    let mut t = PartitionTable::new_gpt(dev.size(), 512, uuid::Uuid::new_v4()).unwrap();
    t.add(NewPartition {
        sectors: Some(100 * 2048),
        name: "EFI system".into(),
        ..NewPartition::new(ptype("efi", true))
    })
    .unwrap();
    t.add(NewPartition {
        number: Some(4),
        name: "root".into(),
        bootable: true,
        ..NewPartition::new(ptype("linux", true))
    })
    .unwrap();
    part::write(&dev, &t).unwrap();
    assert_sgdisk_verify_clean(&img);
    assert_sfdisk_verify_clean(&img);
    assert_same_as_sfdisk(&t, &img);
    assert_eq!(part::probe(&dev).unwrap().unwrap().partitions, t.partitions);
}

#[test]
fn relabelling_replaces_the_old_table_completely() {
    let dir = tempfile::tempdir().unwrap();
    let img = sparse_image(dir.path(), "disk.img", 64 * MIB);
    run_ok("sgdisk", &["-n", "1:0:+8M", path_str(&img)]);
    let dev = FileDevice::open(&img, false).unwrap();
    let mut t = PartitionTable::new_mbr(dev.size(), 512, 7).unwrap();
    t.add(NewPartition::new(ptype("linux", false))).unwrap();
    part::write(&dev, &t).unwrap();
    // No GPT header is left for tools to find.
    assert_same_as_sfdisk(&t, &img);
    let out = run("sgdisk", &["-v", path_str(&img)]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(!text.contains("GPT: present"), "{text}");
}

#[test]
fn mkfs_vfat_through_a_window_is_clean_and_stays_inside() {
    let dir = tempfile::tempdir().unwrap();
    let img = sparse_image(dir.path(), "disk.img", 64 * MIB);
    let dev: Arc<dyn BlockDevice> = Arc::new(FileDevice::open(&img, false).unwrap());
    // Canary pattern over the whole disk, then a table.
    let canary = vec![0x5Au8; MIB as usize];
    for i in 0..64 {
        dev.write_all_at(&canary, i * MIB).unwrap();
    }
    let mut t = PartitionTable::new_mbr(dev.size(), 512, 42).unwrap();
    t.add(NewPartition {
        sectors: Some(16 * 2048),
        ..NewPartition::new(ptype("linux", false))
    })
    .unwrap();
    t.add(NewPartition {
        sectors: Some(24 * 2048),
        ..NewPartition::new(ptype("fat32", false))
    })
    .unwrap();
    part::write(dev.as_ref(), &t).unwrap();

    let disk = PartitionedDisk::new(dev.clone());
    let window: Window = disk.partition(2).unwrap();
    // mkfs.vfat writes a file of the partition's size; we copy it through the window adapter.
    let fs_file = dir.path().join("fat.part");
    std::fs::File::create(&fs_file)
        .unwrap()
        .set_len(window.size())
        .unwrap();
    run_ok(
        "mkfs.vfat",
        &["-F", "32", "-n", "WINDOW", path_str(&fs_file)],
    );
    std::io::copy(
        &mut std::fs::File::open(&fs_file).unwrap(),
        &mut DeviceCursor::new(window.clone()),
    )
    .unwrap();
    window.flush().unwrap();

    // fsck.fat on the region as read back through the window.
    let back = dir.path().join("back.part");
    std::io::copy(
        &mut DeviceCursor::new(window.clone()),
        &mut std::fs::File::create(&back).unwrap(),
    )
    .unwrap();
    let out = run("fsck.fat", &["-n", path_str(&back)]);
    assert!(
        out.status.success(),
        "fsck.fat: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    // mtools finds the filesystem at the partition's offset in the disk image itself.
    let offset = t.get(2).unwrap().start * 512;
    let label = run_ok(
        "minfo",
        &["-i", &format!("{}@@{offset}", path_str(&img)), "::"],
    );
    assert!(label.contains("WINDOW"), "{label}");
    // Every byte outside the window is untouched canary (apart from the MBR).
    let (start, len) = (offset, window.size());
    let mut buf = vec![0u8; MIB as usize];
    for i in 0..64u64 {
        dev.read_exact_at(&mut buf, i * MIB).unwrap();
        for (j, &b) in buf.iter().enumerate() {
            let pos = i * MIB + j as u64;
            if pos >= 512 && !(start..start + len).contains(&pos) {
                assert_eq!(b, 0x5A, "byte {pos} outside the window changed");
            }
        }
    }
}

#[test]
fn reread_follows_sgdisk_rewrites() {
    let dir = tempfile::tempdir().unwrap();
    let img = sparse_image(dir.path(), "disk.img", 64 * MIB);
    run_ok(
        "sgdisk",
        &["-n", "1:0:+8M", "-n", "2:0:+8M", path_str(&img)],
    );
    let dev: Arc<dyn BlockDevice> = Arc::new(FileDevice::open(&img, false).unwrap());
    let disk = PartitionedDisk::new(dev);
    let one = disk.partition(1).unwrap();
    let two = disk.partition(2).unwrap();
    two.write_all_at(b"precious", 0).unwrap();

    run_ok(
        "sgdisk",
        &["-d", "2", "-n", "2:0:+16M", "-n", "3:0:+4M", path_str(&img)],
    );
    disk.reread().unwrap();
    let mut buf = [0u8; 8];
    assert!(
        one.read_exact_at(&mut buf, 0).is_ok(),
        "unchanged partition 1 keeps working"
    );
    assert_eq!(
        two.write_at(b"misplace", 0),
        Err(Errno::EIO),
        "resized partition 2 must not be written"
    );
    assert_eq!(disk.numbers(), vec![1, 2, 3]);
    assert_same_as_sfdisk(&disk.table().unwrap(), &img);
    assert_eq!(disk.partition(2).unwrap().size(), 16 * MIB);
}

// ---- bad input: clear errors, never a panic or a hang ----

#[test]
fn truncated_image_is_refused_with_past_end() {
    let dir = tempfile::tempdir().unwrap();
    let img = sparse_image(dir.path(), "disk.img", 64 * MIB);
    sh(&format!(
        "printf 'label: dos\\n,16M,83\\n,,83\\n' | sfdisk -q {}",
        path_str(&img)
    ));
    std::fs::OpenOptions::new()
        .write(true)
        .open(&img)
        .unwrap()
        .set_len(32 * MIB)
        .unwrap();
    match probe_file(&img) {
        Err(TableError::PastEnd { number: 2, .. }) => {}
        other => panic!("expected PastEnd for partition 2, got {other:?}"),
    }
}

#[test]
fn truncated_gpt_image_loses_backup_and_reports_past_end() {
    let dir = tempfile::tempdir().unwrap();
    let img = sparse_image(dir.path(), "disk.img", 64 * MIB);
    run_ok("sgdisk", &["-n", "1:0:0", path_str(&img)]);
    std::fs::OpenOptions::new()
        .write(true)
        .open(&img)
        .unwrap()
        .set_len(16 * MIB)
        .unwrap();
    let err = probe_file(&img).unwrap_err();
    assert!(
        matches!(
            err,
            TableError::GptCorrupt { .. } | TableError::PastEnd { .. }
        ),
        "{err:?}"
    );
    assert!(!err.to_string().is_empty());
}

#[test]
fn looping_extended_chain_is_detected() {
    let dir = tempfile::tempdir().unwrap();
    let img = sparse_image(dir.path(), "disk.img", 64 * MIB);
    sh(&format!(
        "printf 'label: dos\\n,,5\\n,8M,83\\n,8M,83\\n' | sfdisk -q {}",
        path_str(&img)
    ));
    let t = probe_file(&img).unwrap().unwrap();
    let ext_start = t.get(1).unwrap().start;
    let second_ebr = t.get(6).unwrap().ebr.unwrap();
    // Make the second EBR link back to itself.
    let dev = FileDevice::open(&img, false).unwrap();
    let link = ((second_ebr - ext_start) as u32).to_le_bytes();
    dev.write_all_at(&[0, 0, 0, 0, 0x05, 0, 0, 0], second_ebr * 512 + 446 + 16)
        .unwrap();
    dev.write_all_at(&link, second_ebr * 512 + 446 + 16 + 8)
        .unwrap();
    dev.write_all_at(&1u32.to_le_bytes(), second_ebr * 512 + 446 + 16 + 12)
        .unwrap();
    match probe_file(&img) {
        Err(TableError::ExtendedLoop(s)) => assert_eq!(s, second_ebr),
        other => panic!("expected a loop error, got {other:?}"),
    }
}

#[test]
fn overlapping_partitions_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let img = sparse_image(dir.path(), "disk.img", 64 * MIB);
    sh(&format!(
        "printf 'label: dos\\n,16M,83\\n,16M,83\\n' | sfdisk -q {}",
        path_str(&img)
    ));
    // Move partition 2's start into partition 1.
    let dev = FileDevice::open(&img, false).unwrap();
    dev.write_all_at(&4096u32.to_le_bytes(), 446 + 16 + 8)
        .unwrap();
    assert_eq!(probe_file(&img).unwrap_err(), TableError::Overlap(1, 2));
}

#[test]
fn garbage_gpt_headers_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let img = sparse_image(dir.path(), "disk.img", 64 * MIB);
    run_ok("sgdisk", &["-n", "1:0:0", path_str(&img)]);
    let dev = FileDevice::open(&img, false).unwrap();
    let junk: Vec<u8> = (0..512u32).map(|i| (i * 7 + 3) as u8).collect();
    let mut signed = junk.clone();
    signed[..8].copy_from_slice(b"EFI PART");
    dev.write_all_at(&signed, 512).unwrap();
    dev.write_all_at(&junk, dev.size() - 512).unwrap();
    let err = probe_file(&img).unwrap_err();
    assert!(matches!(err, TableError::GptCorrupt { .. }), "{err:?}");
    assert_eq!(Errno::from(err), Errno::EUCLEAN);
}

#[test]
fn zero_size_and_tiny_disks_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let empty = sparse_image(dir.path(), "empty.img", 0);
    assert_eq!(probe_file(&empty).unwrap_err(), TableError::DiskTooSmall(0));
    let tiny = sparse_image(dir.path(), "tiny.img", 700);
    assert_eq!(
        probe_file(&tiny).unwrap_err(),
        TableError::DiskTooSmall(700)
    );
}

#[test]
fn blank_disks_and_whole_disk_filesystems_have_no_table() {
    let dir = tempfile::tempdir().unwrap();
    let blank = sparse_image(dir.path(), "blank.img", 8 * MIB);
    assert_eq!(probe_file(&blank).unwrap(), None);
    let fat = sparse_image(dir.path(), "fat.img", 8 * MIB);
    run_ok("mkfs.vfat", &[path_str(&fat)]);
    assert_eq!(probe_file(&fat).unwrap(), None);
}
