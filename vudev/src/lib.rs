//! Block devices and partition tables: the bottom layer of the project.
//!
//! Every filesystem driver reads and writes through [`BlockDevice`]; the
//! devices here are an image file or host disk ([`FileDevice`]), a sparse
//! [`Ramdisk`], and a [`Window`] over another device (a partition). The
//! [`part`] module reads and writes MBR and GPT tables, and
//! [`PartitionedDisk`] serves the partitions of a disk and follows re-reads.
//! Every device also says which of its ranges hold data ([`BlockDevice::extents`]);
//! [`data_ranges`] turns that into the bounded map a whole-device copy reads.

#![warn(missing_docs)]

#[cfg(feature = "oracles")]
pub mod adapters;
mod aligned;
pub mod cache;
mod device;
pub mod errno;
mod extent;
mod file;
pub mod lock;
pub mod part;
mod partx;
mod ramdisk;
mod window;

#[cfg(feature = "oracles")]
pub use adapters::{DeviceCursor, Ext4Reader};
pub use aligned::{PageAligned, PAGE_SIZE};
pub use cache::CachedDevice;
pub use device::BlockDevice;
pub use errno::{Errno, Result};
pub use extent::{all_data, data_ranges, Extent, ExtentList, MAX_QUERIES, MAX_RANGES};
pub use file::FileDevice;
pub use partx::PartitionedDisk;
pub use ramdisk::{parse_size, Ramdisk, CHUNK_SIZE};
pub use window::{Revocation, Window};
