//! `vudevpartx.so`: VUOS's vudev partition submodule, built on [`vudev::PartitionedDisk`].
//!
//! `vumount -t vudevpartx /abs/disk.img /dev/hda` serves the image as `/dev/hda` and its
//! partitions as `/dev/hda1`, ... with Linux numbering (MBR primaries 1-4, logicals from 5,
//! GPT entry slots). `BLKRRPART` on any of them re-reads the table; partitions that moved or
//! vanished fail with `EIO` on fds still open. `-r` (MS_RDONLY) opens the image read-only.
//! The image may be a VM image (qcow2, VDI, VMDK, UML COW, by its magic; `-o format=raw`
//! forces raw) or an NBD URI; it is locked (`-o nolock` skips that).
#![allow(unsafe_code)]

use vudev::Errno;
use vudevglue::BlockDriver;

fn make(source: Option<&str>, read_only: bool, data: &str) -> Result<Box<dyn BlockDriver>, Errno> {
    vudevglue::open_partitioned("vudevpartx", source, read_only, data)
}

vudevglue::export_vudev_ops!(make);
