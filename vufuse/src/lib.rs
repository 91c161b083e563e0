//! Filesystem drivers (FAT, ext2/3/4) behind one [`FileSystem`] trait, and
//! their front ends (FUSE daemon, VUOS vufuse submodules).

#![warn(missing_docs)]

pub mod ext;
pub mod fat;
pub mod fs;
pub mod resolver;
pub mod source;

pub mod daemon;
pub mod devfs;
pub mod fuse;
pub mod options;

pub use fs::{
    Attr, CachePolicy, Capabilities, Context, DirEntry, Entry, Fh, FileKind, FileSystem, Ino,
    Opened, SetAttr, SetTime, StatFs,
};
pub use vudev;
pub use vudev::{Errno, Result};
