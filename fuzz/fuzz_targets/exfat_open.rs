//! Fuzzes the exFAT mount path: the input becomes the start of a 4 MiB ramdisk; whatever
//! opens is walked (every directory listed, every file read) and written to a little. No
//! input may panic or hang.
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::ffi::OsStr;
use std::sync::Arc;
use vudev::{BlockDevice, Ramdisk};
use vufuse_api::{Context, FileKind, FileSystem, Ino};
use vufuse_exfat::{ExFatFs, ExFatOptions};

const DISK: u64 = 4 << 20;

fn walk(fs: &ExFatFs, ctx: &Context, ino: Ino, depth: u32, budget: &mut u32) {
    if depth > 8 || *budget == 0 {
        return;
    }
    let mut names = Vec::new();
    let _ = fs.readdir(ctx, ino, vufuse_api::Fh(0), 0, &mut |e| {
        names.push((e.name.to_os_string(), e.kind));
        names.len() < 256
    });
    for (name, kind) in names {
        if *budget == 0 || name == "." || name == ".." {
            continue;
        }
        *budget -= 1;
        let Ok(entry) = fs.lookup(ctx, ino, &name) else {
            continue;
        };
        let child = entry.attr.ino;
        if kind == FileKind::Dir {
            walk(fs, ctx, child, depth + 1, budget);
        } else if let Ok(opened) = fs.open(ctx, child, 2 /* O_RDWR */) {
            let mut buf = vec![0u8; 65536];
            let _ = fs.read(ctx, child, opened.fh, 0, &mut buf);
            let _ = fs.write(ctx, child, opened.fh, 1, b"fuzz");
            let _ = fs.release(ctx, child, opened.fh);
        }
        fs.forget(child, 1);
    }
}

fuzz_target!(|data: &[u8]| {
    let disk = Ramdisk::new(DISK).unwrap();
    disk.write_all_at(&data[..data.len().min(DISK as usize)], 0).unwrap();
    let opts = ExFatOptions {
        read_only: false,
        ..ExFatOptions::default()
    };
    if let Ok(fs) = ExFatFs::open(Arc::new(disk), opts) {
        let ctx = Context::current();
        let mut budget = 1000;
        walk(&fs, &ctx, Ino::ROOT, 0, &mut budget);
        let _ = fs.mkdir(&ctx, Ino::ROOT, OsStr::new("new"), 0o755);
        let _ = fs.statfs(&ctx);
        fs.destroy();
    }
});
