//! `fuseext2 [-o OPTS] IMAGE MOUNTPOINT`: an ext2/3/4 filesystem from an image
//! file, a partition of a disk image (`-o part=N`) or a device, through the
//! kernel's FUSE, on libext2fs. Read-only unless `-o rw+` (fuse-ext2's
//! spelling) or `-o rw` (fuse2fs's).

use std::process::ExitCode;
use std::sync::Arc;
use vufuse::daemon::{self, DaemonSpec, Served};
use vufuse_api::errors::OnCorruption;

const SPEC: DaemonSpec = vufuse::cli::FUSEEXT2;

fn main() -> ExitCode {
    daemon::main(&SPEC, |invocation| {
        let options = &invocation.options;
        let source = invocation.source.as_deref().ok_or("no IMAGE given")?;
        let fs = vufuse_mount::open_ext(source, options)?;
        let label = fs.label().to_string();
        // errors=remount-ro|panic: what a corruption found while serving does.
        let fs = OnCorruption::wrap(Arc::new(fs), options.errors, SPEC.name);
        let mut served = Served::new(fs);
        served.fsname = (!label.is_empty()).then_some(label);
        // The daemon asks the kernel for a wide read-ahead on every mount (daemon.rs).
        Ok(served)
    })
}
