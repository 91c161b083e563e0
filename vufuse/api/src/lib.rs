//! The filesystem API between drivers and front ends: the [`FileSystem`] trait (inode based,
//! errno results), the path resolver the path-based front ends share, and the mount option
//! parser every front end uses. Drivers depend on this crate and on nothing above it.

#![warn(missing_docs)]

pub mod acl;
pub mod error;
pub mod errors;
pub mod fs;
mod groups;
pub mod options;
pub mod privileges;
pub mod readahead;
pub mod resolver;

pub use error::MountError;
pub use fs::{
    Attr, CachePolicy, Capabilities, Context, DirEntry, Entry, Fh, FileKind, FileSystem, Ino,
    Opened, SetAttr, SetTime, StatFs,
};
pub use vudev;
pub use vudev::{Errno, Result};
