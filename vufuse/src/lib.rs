//! Filesystem drivers (FAT, ext2/3/4) behind one `FileSystem` trait, and their
//! front ends (FUSE daemon, VUOS vufuse submodules). The drivers arrive with
//! issues 3 and 5; this crate currently re-exports the device layer they use.

pub use vudev;
