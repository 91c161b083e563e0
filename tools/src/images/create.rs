//! `vuimg create IMG SIZE [--format ...]` and the format check of `vuimg grow`.

use crate::cli::ImageFormat;
use crate::fail;
use crate::util::{parse_bytes, Outcome};
use std::path::Path;

/// `vuimg create`: a new empty image (raw: a sparse file), never over an existing file.
pub fn create(image: &Path, size: &str, format: Option<ImageFormat>) -> Outcome {
    let bytes = parse_bytes(size)?;
    let format = super::output_format(image, format);
    // Claim the name (create_new), then fill it in; a failure removes it again.
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(image)
        .map_err(|e| fail!("{}: {e}", image.display()))?;
    super::create_empty(image, format, bytes).inspect_err(|_| {
        let _ = std::fs::remove_file(image);
    })
}

/// Refuses to resize `image` as a file unless it is raw: truncating a qcow2, VDI or VMDK
/// file would not change its disk size and could cut off its data.
pub fn refuse_non_raw(image: &Path, what: &str) -> Outcome {
    let file =
        vudev::FileDevice::open(image, true).map_err(|e| fail!("{}: {e}", image.display()))?;
    let format = vudev_formats::probe(&file);
    if format != vudev_formats::Format::Raw {
        return Err(fail!(
            "{}: is a {format} image; {what} resizes raw images only \
             (resize it with `qemu-img resize`, or convert it to raw first)",
            image.display()
        ));
    }
    Ok(())
}
