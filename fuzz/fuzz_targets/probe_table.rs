//! Fuzzes the partition-table probe: the input's first half becomes the start
//! of a 4 MiB disk, the second half its end (where the backup GPT lives).
//! Whatever the probe accepts must validate and be servable.
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::sync::Arc;
use vudev::{part, BlockDevice, PartitionedDisk, Ramdisk};

const DISK: u64 = 4 << 20;

fuzz_target!(|data: &[u8]| {
    let disk = Ramdisk::new(DISK).unwrap();
    let half = data.len() / 2;
    let (head, tail) = data.split_at(half);
    let head = &head[..head.len().min(1 << 20)];
    let tail = &tail[..tail.len().min(1 << 20)];
    disk.write_all_at(head, 0).unwrap();
    disk.write_all_at(tail, DISK - tail.len() as u64).unwrap();
    if let Ok(Some(table)) = part::probe(&disk) {
        table.validate(DISK / table.sector_size as u64).expect("accepted tables validate");
        let pd = PartitionedDisk::new(Arc::new(disk));
        for n in pd.numbers() {
            let w = pd.partition(n).unwrap();
            let mut buf = [0u8; 64];
            w.read_at(&mut buf, w.size() - 1).unwrap();
        }
    }
});
