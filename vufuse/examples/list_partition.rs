//! The library API without any front end: open partition N of a disk image through the mount
//! layer (locked, probed), resolve a path and list that directory.
//! Run: `list_partition IMAGE N /PATH`.

use std::path::Path;
use std::sync::Arc;
use vufuse_api::options::{MountOptions, WritePolicy};
use vufuse_api::resolver::PathResolver;
use vufuse_api::{Context, FileSystem};

fn main() -> Result<(), String> {
    let args: Vec<String> = std::env::args().collect();
    let [_, image, part, dir] = args.as_slice() else {
        return Err("usage: list_partition IMAGE N /PATH".into());
    };
    let options = MountOptions::parse(&format!("ro,part={part}"), WritePolicy::ReadOnlyUnlessRw)
        .map_err(|e| e.to_string())?;
    let fs: Arc<dyn FileSystem> = Arc::new(vufuse_mount::open_fat(Path::new(image), &options)?);
    let ctx = Context::current();
    let resolver = PathResolver::new(fs.clone());
    let ino = resolver
        .resolve(&ctx, Path::new(dir))
        .map_err(|e| format!("{dir}: {e}"))?;
    let fh = fs.opendir(&ctx, ino).map_err(|e| e.to_string())?;
    let mut names = Vec::new();
    fs.readdir(&ctx, ino, fh, 0, &mut |entry| {
        names.push(entry.name.to_string_lossy().into_owned());
        true
    })
    .map_err(|e| e.to_string())?;
    fs.releasedir(&ctx, ino, fh).map_err(|e| e.to_string())?;
    for name in names.iter().filter(|n| *n != "." && *n != "..") {
        println!("{name}");
    }
    Ok(())
}
