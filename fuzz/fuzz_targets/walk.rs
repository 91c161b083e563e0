//! Shared by the filesystem fuzz targets: list every directory, read and write a little of
//! every file, within a budget, through the FileSystem trait alone.

use std::ffi::OsStr;
use vufuse_api::{Context, Fh, FileKind, FileSystem, Ino};

/// Walks the tree under `ino` (depth and entry budget bounded), then makes a directory.
pub fn exercise(fs: &dyn FileSystem) {
    let ctx = Context::current();
    let mut budget = 1000;
    walk(fs, &ctx, Ino::ROOT, 0, &mut budget);
    let _ = fs.mkdir(&ctx, Ino::ROOT, OsStr::new("new"), 0o755);
    let _ = fs.statfs(&ctx);
    fs.destroy();
}

fn walk(fs: &dyn FileSystem, ctx: &Context, ino: Ino, depth: u32, budget: &mut u32) {
    if depth > 8 || *budget == 0 {
        return;
    }
    let Ok(fh) = fs.opendir(ctx, ino) else { return };
    let mut names = Vec::new();
    let _ = fs.readdir(ctx, ino, fh, 0, &mut |e| {
        names.push((e.name.to_os_string(), e.kind));
        names.len() < 256
    });
    let _ = fs.releasedir(ctx, ino, fh);
    for (name, kind) in names {
        if *budget == 0 || name == "." || name == ".." {
            continue;
        }
        *budget -= 1;
        let Ok(entry) = fs.lookup(ctx, ino, &name) else { continue };
        let child = entry.attr.ino;
        if kind == FileKind::Dir {
            walk(fs, ctx, child, depth + 1, budget);
        } else if let Ok(opened) = fs.open(ctx, child, 2 /* O_RDWR */) {
            let mut buf = vec![0u8; 65536];
            let _ = fs.read(ctx, child, opened.fh, 0, &mut buf);
            let _ = fs.write(ctx, child, opened.fh, 1, b"fuzz");
            let _ = fs.release(ctx, child, opened.fh);
        } else {
            let _ = fs.getattr(ctx, child, None::<Fh>);
        }
        fs.forget(child, 1);
    }
}
