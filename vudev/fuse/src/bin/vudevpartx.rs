//! `vudevpartx [-o ro] IMAGE MOUNTDIR`: a disk image and its partitions as
//! files `disk`, `disk1`, `disk2`, ... (Linux numbering) in MOUNTDIR.

use std::process::ExitCode;
use std::sync::Arc;
use vudev::PartitionedDisk;
use vudev_fuse::DevFs;
use vufuse::daemon::{self, DaemonSpec, Served};

const SPEC: DaemonSpec = vudev_fuse::cli::VUDEVPARTX;

fn main() -> ExitCode {
    daemon::main(&SPEC, |invocation| {
        let image = invocation
            .source
            .as_ref()
            .ok_or_else(|| "missing IMAGE".to_string())?;
        let options = &invocation.options;
        // The image's format (qcow2, VDI, VMDK, UML COW) by its magic, or format=NAME.
        let device = vufuse_mount::open_disk(image, options)?;
        // An NBD export has no owner or mode to copy: it is the mounter's alone.
        let image_meta = if vufuse_mount::is_uri(&image.to_string_lossy()) {
            None
        } else {
            Some(std::fs::metadata(image).map_err(|e| format!("{}: {e}", image.display()))?)
        };
        let disk = Arc::new(PartitionedDisk::new(device));
        if let Some(e) = disk.table_error() {
            eprintln!(
                "{}: warning: {}: partition table unreadable ({e}); serving the whole disk only",
                SPEC.name,
                image.display()
            );
        }
        let fs = DevFs::partitioned(disk, &invocation.options);
        let fs = Arc::new(match &image_meta {
            Some(meta) => fs.owned_like(meta, &invocation.options),
            None => fs.owner_only(),
        });
        let follower = fs.clone();
        Ok(Served {
            fs,
            on_mounted: Some(Box::new(move |cache| {
                follower
                    .set_invalidator(Box::new(cache))
                    .map_err(|e| format!("starting the invalidation thread: {e}"))
            })),
            fsname: None,
        })
    })
}
