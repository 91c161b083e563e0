//! `vudevvdi.so`: the C module of that name shows a VirtualBox disk through VirtualBox's
//! library; this one needs no VirtualBox. `vumount -t vudevvdi disk.vdi /dev/hda` serves the
//! image as `/dev/hda` and its partitions as `/dev/hda1`, ..., like `vudevpartx.so`, and takes
//! every format the project reads (VDI, qcow2 with its backing chain, VMDK, UML COW, raw).
#![allow(unsafe_code)]

use vudev::Errno;
use vudevglue::BlockDriver;

fn make(source: Option<&str>, read_only: bool, data: &str) -> Result<Box<dyn BlockDriver>, Errno> {
    vudevglue::open_partitioned("vudevvdi", source, read_only, data)
}

vudevglue::export_vudev_ops!(make);
