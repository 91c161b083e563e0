//! Fuzzes the VM image headers and tables (qcow2 header, L1/L2 and refcount tables; VDI
//! header and block map): the input is the image file (a ramdisk); whatever opens is read
//! (and mapped with `extents`) at a spread of offsets and written once. No backing file is reachable from here.
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::sync::Arc;
use vudev::{BlockDevice, Ramdisk};
use vudev_formats::{OpenOptions, Qcow2, Vdi};

fn exercise(dev: &dyn BlockDevice) {
    let size = dev.size();
    let mut buf = vec![0u8; 65536];
    for i in 0..16u64 {
        let off = size / 16 * i;
        let _ = dev.read_at(&mut buf, off);
        let _ = dev.extents(off, size - off, 64);
    }
    let _ = dev.write_at(&[0x5a; 4096], size / 2);
    let _ = dev.flush();
}

fuzz_target!(|data: &[u8]| {
    let len = (data.len() as u64).max(512).next_multiple_of(512);
    let file = Ramdisk::new(len.max(1 << 20)).unwrap();
    file.write_all_at(data, 0).unwrap();
    let file: Arc<dyn BlockDevice> = Arc::new(file);
    let options = OpenOptions::default();
    if let Ok(q) = Qcow2::open_on(file.clone(), "/nonexistent/fuzz.qcow2", &options) {
        exercise(&q);
    }
    if let Ok(v) = Vdi::open_on(file, std::path::Path::new("/nonexistent/fuzz.vdi"), false) {
        exercise(&v);
    }
});
