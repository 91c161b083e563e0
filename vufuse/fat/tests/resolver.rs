//! The shared path resolver over a real driver: deep paths, `.`/`..`, the
//! cache holding exactly one lookup reference per entry, invalidation.

use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use vudev::{BlockDevice, FileDevice};
use vufuse_api::resolver::PathResolver;
use vufuse_api::{Context, Errno, FileSystem, Ino};
use vufuse_fat::{FatFs, FatOptions};

#[test]
fn resolves_deep_paths_and_follows_renames_through_invalidation() {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("r.img");
    std::fs::File::create(&img)
        .unwrap()
        .set_len(32 << 20)
        .unwrap();
    let script = format!(
        "mkfs.fat -F 16 {0} >/dev/null && mmd -i {0} ::/a ::/a/b ::/a/b/c && echo deep | mcopy -i {0} - ::/a/b/c/file.txt",
        img.display()
    );
    assert!(Command::new("sh")
        .args(["-c", &script])
        .status()
        .unwrap()
        .success());
    let dev: Arc<dyn BlockDevice> = Arc::new(FileDevice::open(&img, false).unwrap());
    let fs: Arc<dyn FileSystem> = Arc::new(
        FatFs::open(
            dev,
            FatOptions {
                read_only: false,
                ..FatOptions::default()
            },
        )
        .unwrap(),
    );
    let ctx = Context::current();
    let resolver = PathResolver::with_capacity(fs.clone(), 3);

    let file = resolver
        .resolve(&ctx, Path::new("/a/b/c/file.txt"))
        .unwrap();
    assert_eq!(
        resolver
            .getattr(&ctx, Path::new("/a/b/c/file.txt"))
            .unwrap()
            .size,
        5
    );
    assert_eq!(
        resolver
            .resolve(&ctx, Path::new("/a/./b/../b/c/file.txt"))
            .unwrap(),
        file
    );
    assert_eq!(
        resolver
            .resolve(&ctx, Path::new("/../../a/b/c/FILE.TXT"))
            .unwrap(),
        file,
        "case-insensitive, never above root"
    );
    assert_eq!(resolver.resolve(&ctx, Path::new("/")).unwrap(), Ino::ROOT);
    assert_eq!(
        resolver.resolve(&ctx, Path::new("/a/missing/x")),
        Err(Errno::ENOENT)
    );
    assert!(
        resolver.cached() <= 3,
        "the cache stays within its capacity"
    );

    // A rename through the resolver: the old path is gone at once, the new one works, even
    // though both were cached.
    resolver
        .rename(
            &ctx,
            Path::new("/a/b/c/file.txt"),
            Path::new("/moved.txt"),
            0,
        )
        .unwrap();
    assert_eq!(
        resolver.resolve(&ctx, Path::new("/a/b/c/file.txt")),
        Err(Errno::ENOENT)
    );
    assert_eq!(
        resolver.resolve(&ctx, Path::new("/moved.txt")).unwrap(),
        file,
        "inode kept through the rename"
    );

    // Every cached reference is given back: the unlinked file's clusters are freed.
    let before = fs.statfs(&ctx).unwrap().blocks_free;
    resolver.unlink(&ctx, Path::new("/moved.txt")).unwrap();
    assert_eq!(
        resolver.resolve(&ctx, Path::new("/moved.txt")),
        Err(Errno::ENOENT)
    );
    resolver.rmdir(&ctx, Path::new("/a/b/c")).unwrap();
    assert_eq!(
        resolver.resolve(&ctx, Path::new("/a/b/c")),
        Err(Errno::ENOENT)
    );
    assert_eq!(
        resolver.rmdir(&ctx, Path::new("/a")),
        Err(Errno::ENOTEMPTY),
        "errors come through"
    );
    resolver.clear();
    assert_eq!(resolver.cached(), 0);
    assert!(fs.statfs(&ctx).unwrap().blocks_free > before);
}
