//! Independent readers as oracles: tables written by vudev are read back by the
//! `mbrman` and `gpt` crates through the `DeviceCursor` adapter.

use std::sync::Arc;
use vudev::part::{self, NewPartition, PartType, PartitionTable};
use vudev::{BlockDevice, DeviceCursor, Ramdisk};

#[test]
fn mbrman_reads_our_mbr_with_logicals() {
    let disk: Arc<dyn BlockDevice> = Arc::new(Ramdisk::new(128 << 20).unwrap());
    let mut t = PartitionTable::new_mbr(disk.size(), 512, 0x01020304).unwrap();
    t.add(NewPartition {
        sectors: Some(20480),
        bootable: true,
        ..NewPartition::new(PartType::Mbr(0x0c))
    })
    .unwrap();
    t.add(NewPartition::new(PartType::Mbr(0x05))).unwrap();
    t.add(NewPartition {
        sectors: Some(8192),
        logical: true,
        ..NewPartition::new(PartType::Mbr(0x83))
    })
    .unwrap();
    t.add(NewPartition {
        logical: true,
        ..NewPartition::new(PartType::Mbr(0x82))
    })
    .unwrap();
    part::write(disk.as_ref(), &t).unwrap();

    let mut cursor = DeviceCursor::new(disk.clone());
    let mbr = mbrman::MBR::read_from(&mut cursor, 512).unwrap();
    assert_eq!(mbr.header.disk_signature, 0x01020304u32.to_le_bytes());
    let theirs: Vec<(usize, u32, u32, u8, bool)> = mbr
        .iter()
        .filter(|(_, p)| p.is_used())
        .map(|(i, p)| (i, p.starting_lba, p.sectors, p.sys, p.is_active()))
        .collect();
    let ours: Vec<(usize, u32, u32, u8, bool)> = t
        .partitions
        .iter()
        .map(|p| {
            let PartType::Mbr(code) = p.ptype else {
                unreachable!()
            };
            (
                p.number as usize,
                p.start as u32,
                p.sectors as u32,
                code,
                p.bootable,
            )
        })
        .collect();
    assert_eq!(theirs, ours);
}

#[test]
fn gpt_crate_reads_our_gpt() {
    let disk: Arc<dyn BlockDevice> = Arc::new(Ramdisk::new(64 << 20).unwrap());
    let guid = uuid::Uuid::new_v4();
    let mut t = PartitionTable::new_gpt(disk.size(), 512, guid).unwrap();
    t.add(NewPartition {
        sectors: Some(4096),
        name: "ESP".into(),
        ..NewPartition::new(PartType::parse("efi", true).unwrap())
    })
    .unwrap();
    t.add(NewPartition {
        number: Some(3),
        name: "rööt".into(),
        ..NewPartition::new(PartType::parse("linux", true).unwrap())
    })
    .unwrap();
    part::write(disk.as_ref(), &t).unwrap();

    let gdisk = gpt::GptConfig::new()
        .writable(false)
        .logical_block_size(gpt::disk::LogicalBlockSize::Lb512)
        .open_from_device(DeviceCursor::new(disk.clone()))
        .unwrap();
    assert_eq!(gdisk.guid().as_bytes(), guid.as_bytes());
    let theirs: Vec<(u32, u64, u64, String, String)> = gdisk
        .partitions()
        .iter()
        .map(|(n, p)| {
            (
                *n,
                p.first_lba,
                p.last_lba,
                p.name.clone(),
                p.part_type_guid.guid.to_string().to_ascii_uppercase(),
            )
        })
        .collect();
    let ours: Vec<(u32, u64, u64, String, String)> = t
        .partitions
        .iter()
        .map(|p| {
            (
                p.number,
                p.start,
                p.end() - 1,
                p.name.clone(),
                p.ptype.sfdisk_string(),
            )
        })
        .collect();
    assert_eq!(theirs, ours);
    assert!(gdisk.primary_header().is_ok() && gdisk.backup_header().is_ok());
}
