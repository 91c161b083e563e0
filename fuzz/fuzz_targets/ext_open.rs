//! Fuzzes the ext open path (libext2fs behind the shim, the extent-tree checks, the journal
//! replay of read-only mounts): the input is the start of a 4 MiB ramdisk (seed it with small
//! mke2fs images); whatever opens is walked read-only, then read-write.
#![no_main]

#[path = "walk.rs"]
mod walk;

use libfuzzer_sys::fuzz_target;
use std::sync::Arc;
use vudev::{BlockDevice, Ramdisk};
use vufuse_ext::{ExtFs, ExtOptions};

fuzz_target!(|data: &[u8]| {
    let disk = Arc::new(Ramdisk::new(4 << 20).unwrap());
    disk.write_all_at(&data[..data.len().min(4 << 20)], 0).unwrap();
    for read_only in [true, false] {
        if let Ok(fs) = ExtFs::open(disk.clone(), ExtOptions { read_only, norecovery: false }) {
            walk::exercise(&fs);
        }
    }
});
