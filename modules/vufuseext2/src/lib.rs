//! `vufuseext2.so`: the project's ext2/3/4 driver (libext2fs) as a vufuse
//! submodule of the VUOS hypervisor.
//!
//! `vumount -t vufuseext2 [-o OPTS] SOURCE TARGET` loads this file and runs
//! [`main`]. Options as `fuseext2`: read-only unless `rw+` (vumount swallows a
//! plain `rw`), `part=N`, `uid=`, `gid=`, `umask=`, `fakeroot`. SOURCE is an image, a partitioned disk image or a
//! device.
#![allow(unsafe_code)]

use std::ffi::{c_char, c_int};
use std::path::Path;
use std::sync::Arc;
use vufuse_api::options::{MountOptions, WritePolicy};
use vufuse_api::FileSystem;
use vufuseglue::ModuleSpec;

/// Tells vufuse that two mounts of this module may run at once.
#[allow(non_upper_case_globals)]
#[no_mangle]
pub static fuse_reentrant_tag: c_int = 0;

const SPEC: ModuleSpec = ModuleSpec {
    name: "vufuseext2",
    write_policy: WritePolicy::ReadOnlyUnlessRw,
    open: open_ext,
};

fn open_ext(source: &Path, options: &MountOptions) -> Result<Arc<dyn FileSystem>, String> {
    Ok(Arc::new(vufuse_mount::open_ext(source, options)?))
}

/// The submodule entry vufuse calls in a thread of its own with
/// `[vufuseext2, -o, OPTS, SOURCE, TARGET]`; serves until umount.
///
/// # Safety
/// `argv` must hold `argc` NUL-terminated strings, as vufuse passes.
#[no_mangle]
pub unsafe extern "C" fn main(argc: c_int, argv: *mut *mut c_char) -> c_int {
    // SAFETY: forwarded from vufuse, per this function's contract.
    unsafe { vufuseglue::run_main(&SPEC, argc, argv) }
}
