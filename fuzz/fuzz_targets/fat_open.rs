//! Fuzzes the FAT mount path: the input is the start of a 4 MiB ramdisk (seed it with small
//! FAT12/16 images); whatever opens is walked and written to. No input may panic or hang.
#![no_main]

#[path = "walk.rs"]
mod walk;

use libfuzzer_sys::fuzz_target;
use std::sync::Arc;
use vudev::{BlockDevice, Ramdisk};
use vufuse_fat::{FatFs, FatOptions};

fuzz_target!(|data: &[u8]| {
    let disk = Ramdisk::new(4 << 20).unwrap();
    disk.write_all_at(&data[..data.len().min(4 << 20)], 0).unwrap();
    let opts = FatOptions {
        read_only: false,
        ..FatOptions::default()
    };
    if let Ok(fs) = FatFs::open(Arc::new(disk), opts) {
        walk::exercise(&fs);
    }
});
