//! Tree mangling over host directories, as VUOS's vufs module does: `bind`
//! (SOURCE alone), `merge` (union, SOURCE read-only), `cow` (union, every
//! change in SOURCE) and `mincow` (change the lower tree where it permits).
//!
//! One implementation for every front end: the `vufs` FUSE binary serves
//! [`VuFs`] through `vufuse::daemon`; the VUOS module will serve the same
//! type. Options are parsed by [`Options::split`]/[`Options::parse`]; the
//! layer format (whiteouts and vstat side files under `SOURCE/.-`) is the C
//! vufs's, byte for byte ([`layer`]).

#![warn(missing_docs)]

mod access;
mod fs;
mod host;
pub mod layer;
pub mod options;

pub use fs::{Config, VuFs};
pub use options::{Caching, Mode, Options};
pub use vudev;

use std::os::fd::OwnedFd;
use std::path::Path;

/// Opens a host directory for use as a layer (`O_PATH | O_DIRECTORY`).
pub fn open_layer(path: &Path) -> vudev::Result<OwnedFd> {
    use rustix::fs::{Mode as HostMode, OFlags};
    Ok(rustix::fs::open(
        path,
        OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
        HostMode::empty(),
    )?)
}
