//! `vuimg convert SRC DST`: any image (probed, with its backing chain) to a new image of
//! the chosen format, writing only what is not zero, atomically.

use crate::cli::ImageFormat;
use crate::images::ToFormat;
use crate::progress::note;
use crate::util::{human, Outcome};
use std::path::Path;

/// `vuimg convert`.
pub fn convert(src: &Path, dst: &Path, format: Option<ImageFormat>, force: bool) -> Outcome {
    let format = super::output_format(dst, format);
    let dev = super::open_source(src)?;
    super::write_image(dev.as_ref(), src, dst, format, force)?;
    note(&format!(
        "{}: {} {} image",
        dst.display(),
        human(dev.size()),
        format.format()
    ));
    Ok(())
}
