//! The kernel FUSE front end: the adapter that serves any [`FileSystem`] through `fuser`, and
//! the daemon (command line, daemonizing, signals, session end) that the `fusefatfs`,
//! `fuseext2`, `vudevpartx`, `vudevramdisk` and `vufs` binaries share. Drivers live in
//! crates of their own (`vufuse-fat`, `vufuse-ext`, `vufs`) and never see this one.

#![warn(missing_docs)]

pub mod cli;
pub mod daemon;
pub mod fuse;

pub use vufuse_api::{self as api, FileSystem};
