//! Property tests for the partition-table codec: random and mutated sectors
//! never panic or hang the probe, and whatever it accepts is consistent;
//! random edit sequences always round-trip through write and probe.

use proptest::prelude::*;
use std::sync::Arc;
use vudev::part::{self, NewPartition, PartType, PartitionTable, Scheme};
use vudev::{BlockDevice, PartitionedDisk, Ramdisk};

const DISK: u64 = 16 << 20;

/// Checks what a successful probe promises.
fn check_probe(disk: &Ramdisk) {
    match part::probe(disk) {
        Ok(Some(table)) => {
            let sectors = disk.size() / table.sector_size as u64;
            table
                .validate(sectors)
                .expect("an accepted table validates");
            for p in &table.partitions {
                let (start, len) = table.byte_range(p);
                assert!(
                    start + len <= disk.size(),
                    "partition {} past the end",
                    p.number
                );
            }
        }
        Ok(None) => {}
        Err(e) => assert!(!e.to_string().is_empty()),
    }
}

fn sample_mbr(disk: &Ramdisk) {
    let mut t = PartitionTable::new_mbr(disk.size(), 512, 0xDEADBEEF).unwrap();
    let linux = PartType::Mbr(0x83);
    t.add(NewPartition {
        sectors: Some(4096),
        ..NewPartition::new(linux)
    })
    .unwrap();
    t.add(NewPartition::new(PartType::Mbr(0x05))).unwrap();
    for _ in 0..3 {
        t.add(NewPartition {
            sectors: Some(4096),
            logical: true,
            ..NewPartition::new(linux)
        })
        .unwrap();
    }
    part::write(disk, &t).unwrap();
}

fn sample_gpt(disk: &Ramdisk) {
    let mut t = PartitionTable::new_gpt(disk.size(), 512, uuid::Uuid::from_u128(7)).unwrap();
    let linux = PartType::parse("linux", true).unwrap();
    for n in [1, 2, 9] {
        t.add(NewPartition {
            number: Some(n),
            sectors: Some(4096),
            name: format!("p{n}"),
            ..NewPartition::new(linux)
        })
        .unwrap();
    }
    part::write(disk, &t).unwrap();
}

/// Byte offsets where the tables live: sector 0, the GPT header and entries,
/// the EBRs of the sample MBR, and the backup GPT at the end.
fn metadata_offset() -> impl Strategy<Value = u64> {
    prop_oneof![
        0u64..1024,
        1024u64..(34 * 512),
        (0u64..3, 0u64..66).prop_map(|(i, b)| (6144 + i * 6144) * 512 + 446 + b),
        (DISK - 34 * 512)..DISK,
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

    #[test]
    fn random_sectors_never_panic(head in proptest::collection::vec(any::<u8>(), 1024), signed in any::<bool>(), protective in any::<bool>()) {
        let disk = Ramdisk::new(DISK).unwrap();
        let mut head = head;
        if signed { head[510] = 0x55; head[511] = 0xAA; }
        if protective { head[446] = 0; head[450] = 0xEE; head[512..520].copy_from_slice(b"EFI PART"); }
        disk.write_all_at(&head, 0).unwrap();
        check_probe(&disk);
    }

    #[test]
    fn mutated_tables_never_panic(gpt in any::<bool>(), edits in proptest::collection::vec((metadata_offset(), any::<u8>()), 1..24)) {
        let disk = Ramdisk::new(DISK).unwrap();
        if gpt { sample_gpt(&disk) } else { sample_mbr(&disk) }
        for (offset, byte) in edits {
            disk.write_all_at(&[byte], offset).unwrap();
        }
        check_probe(&disk);
        // Serving the partitions of whatever was accepted is safe too.
        let pd = PartitionedDisk::new(Arc::new(disk));
        for n in pd.numbers() {
            let w = pd.partition(n).unwrap();
            let mut buf = [0u8; 512];
            w.read_at(&mut buf, w.size().saturating_sub(512)).unwrap();
        }
    }
}

#[derive(Debug, Clone)]
enum Edit {
    Add {
        logical: bool,
        sectors: Option<u64>,
        code: u8,
    },
    Delete(u32),
    Resize(u32, u64),
    Bootable(u32),
}

fn edit() -> impl Strategy<Value = Edit> {
    prop_oneof![
        4 => (any::<bool>(), proptest::option::of(1u64..8192), prop_oneof![Just(0x83u8), Just(0x0c), Just(0x05), Just(0x82)])
            .prop_map(|(logical, sectors, code)| Edit::Add { logical, sectors, code }),
        1 => (1u32..9).prop_map(Edit::Delete),
        1 => (1u32..9, 1u64..16384).prop_map(|(n, s)| Edit::Resize(n, s)),
        1 => (1u32..9).prop_map(Edit::Bootable),
    ]
}

type Summary = Vec<(u32, u64, u64, PartType, bool, String)>;

fn summary(t: &PartitionTable) -> Summary {
    t.partitions
        .iter()
        .map(|p| {
            (
                p.number,
                p.start,
                p.sectors,
                p.ptype,
                p.bootable,
                p.name.clone(),
            )
        })
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

    #[test]
    fn random_edits_round_trip(gpt in any::<bool>(), edits in proptest::collection::vec(edit(), 1..16)) {
        let disk = Ramdisk::new(DISK).unwrap();
        let mut t = if gpt {
            PartitionTable::new_gpt(disk.size(), 512, uuid::Uuid::from_u128(1)).unwrap()
        } else {
            PartitionTable::new_mbr(disk.size(), 512, 1).unwrap()
        };
        for e in edits {
            let before = t.clone();
            let result = match e {
                Edit::Add { logical, sectors, code } => {
                    let ptype = if gpt { PartType::parse("linux", true).unwrap() } else { PartType::Mbr(code) };
                    t.add(NewPartition { sectors, logical, ..NewPartition::new(ptype) }).map(|_| ())
                }
                Edit::Delete(n) => t.delete(n).map(|_| ()),
                Edit::Resize(n, s) => t.resize(n, s),
                Edit::Bootable(n) => t.set_bootable(n, true),
            };
            match result {
                Ok(()) => t.validate(t.disk_sectors).unwrap(),
                Err(_) => prop_assert_eq!(&t, &before, "a failed edit changed the table"),
            }
        }
        part::write(&disk, &t).unwrap();
        let back = part::probe(&disk).unwrap().unwrap();
        prop_assert_eq!(back.scheme, if gpt { Scheme::Gpt } else { Scheme::Mbr });
        prop_assert_eq!(summary(&back), summary(&t));
    }
}

#[test]
fn samples_are_the_tables_the_mutations_start_from() {
    let disk = Ramdisk::new(DISK).unwrap();
    sample_mbr(&disk);
    let t = part::probe(&disk).unwrap().unwrap();
    let ebrs: Vec<u64> = t.partitions.iter().filter_map(|p| p.ebr).collect();
    assert_eq!(
        ebrs,
        vec![6144, 12288, 18432],
        "metadata_offset() aims at these EBRs"
    );
    let disk = Ramdisk::new(DISK).unwrap();
    sample_gpt(&disk);
    assert_eq!(part::probe(&disk).unwrap().unwrap().partitions.len(), 3);
}
