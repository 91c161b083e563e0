//! `vufusefatfs.so`: the project's FAT12/16/32 and exFAT drivers as a vufuse submodule of
//! the VUOS hypervisor, a drop-in replacement for the C vufusefatfs.
//!
//! `vumount -t vufusefatfs [-o OPTS] SOURCE TARGET` loads this file and runs
//! [`main`]. Options as `fusefatfs`: read-only unless `rw+` (or `rw,force`;
//! note vumount swallows `rw`), `part=N`, `uid=`, `gid=`, `umask=`, `dmask=`,
//! `fmask=`. SOURCE is an image, a partitioned disk image or a device.
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
    name: "vufusefatfs",
    write_policy: WritePolicy::ReadOnlyUnlessForced,
    open: open_fat,
};

fn open_fat(source: &Path, options: &MountOptions) -> Result<Arc<dyn FileSystem>, String> {
    Ok(vufuse_mount::open_fat_family(source, options)?.fs)
}

/// The submodule entry vufuse calls in a thread of its own with
/// `[vufusefatfs, -o, OPTS, SOURCE, TARGET]`; serves until umount.
///
/// # Safety
/// `argv` must hold `argc` NUL-terminated strings, as vufuse passes.
#[no_mangle]
pub unsafe extern "C" fn main(argc: c_int, argv: *mut *mut c_char) -> c_int {
    // SAFETY: forwarded from vufuse, per this function's contract.
    unsafe { vufuseglue::run_main(&SPEC, argc, argv) }
}
