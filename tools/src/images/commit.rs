//! `vuimg commit OVERLAY [DST]`: fold an overlay into its backing file (as `qemu-img
//! commit`), or write the merged disk to a new image (as `uml_moo`).

use super::headers::probe_link;
use crate::cli::ImageFormat;
use crate::fail;
use crate::image_lock::{open_locked, through_format};
use crate::images::ToFormat;
use crate::progress::{note, Progress};
use crate::util::{human, Outcome};
use std::path::Path;
use vudev_formats::Format;

/// `vuimg commit`.
pub fn commit(
    overlay: &Path,
    dst: Option<&Path>,
    format: Option<ImageFormat>,
    force: bool,
) -> Outcome {
    if let Some(dst) = dst {
        let src = super::open_source(overlay)?;
        let format = super::output_format(dst, format);
        super::write_image(src.as_ref(), overlay, dst, format, force)?;
        note(&format!(
            "{}: merged {} as {}",
            dst.display(),
            overlay.display(),
            format.format()
        ));
        return Ok(());
    }
    if format.is_some() {
        return Err(fail!(
            "--format is for a new image DST; commit into the backing file keeps its format"
        ));
    }
    into_backing(overlay)
}

/// Writes what the overlay defines itself (its own map, `vudev_formats::own_ranges`: qcow2
/// data and zero clusters, UML COW written sectors) into its backing file, opened
/// read-write and locked exclusive; the overlay is left as it was (it now reads the same
/// as its backing file).
fn into_backing(overlay: &Path) -> Outcome {
    let (format, link) = probe_link(overlay)?;
    let link = link.ok_or_else(|| match format {
        Format::Qcow2 => fail!(
            "{}: qcow2 image without a backing file: nothing to commit to",
            overlay.display()
        ),
        other => fail!(
            "{}: a {other} image has no backing file to commit to",
            overlay.display()
        ),
    })?;
    let backing = vudev_formats::resolve_backing(overlay, &link.name);
    let same = match (
        std::fs::canonicalize(overlay),
        std::fs::canonicalize(&backing),
    ) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    };
    if same {
        return Err(fail!("{}: is its own backing file", overlay.display()));
    }
    // The overlay is held (exclusive: nobody writes it meanwhile) but read alone, without
    // its chain, which would lock the backing file shared.
    open_locked(overlay, false)?;
    let file = open_locked(overlay, true)?;
    let layer = vudev_formats::open_layer(file).map_err(|e| fail!("{e}"))?;
    let ranges = vudev_formats::own_ranges(layer.as_ref()).map_err(|e| {
        let at = super::map_failure_at(layer.size(), |o, l, m| layer.own_extents(o, l, m));
        fail!(
            "{}: mapping what it holds: {}",
            overlay.display(),
            super::map_error(e, at)
        )
    })?;
    let size = layer.size();
    let view = layer.into_block_device();
    let base_file = open_locked(&backing, false).map_err(|e| {
        fail!(
            "{}: backing file {}: {}",
            overlay.display(),
            backing.display(),
            e.0
        )
    })?;
    let base: std::sync::Arc<dyn vudev::BlockDevice> = if format == Format::UmlCow {
        // UML's rule: the backing file is raw, never probed.
        std::sync::Arc::new(base_file)
    } else {
        let probed = vudev_formats::probe(&base_file);
        if let Some(f) = &link.format {
            if Format::from_name(f) != Some(probed) {
                return Err(fail!(
                    "{}: backing file {} is recorded as {f} but looks like {probed}",
                    overlay.display(),
                    backing.display()
                ));
            }
        }
        through_format(base_file, &backing, false)?
    };
    if base.size() < size {
        return Err(fail!(
            "{}: the overlay is {} but its backing file {} only {}: grow the backing file first",
            overlay.display(),
            human(size),
            backing.display(),
            human(base.size())
        ));
    }
    let total: u64 = ranges.iter().map(|r| r.1).sum();
    let mut progress = Progress::new("committing", total);
    super::copy_ranges(view.as_ref(), base.as_ref(), &ranges, false, &mut progress)
        .map_err(|e| fail!("{} -> {}: {}", overlay.display(), backing.display(), e.0))?;
    progress.finish();
    base.flush()
        .map_err(|e| fail!("{}: {e}", backing.display()))?;
    drop(base);
    if format == Format::UmlCow {
        restamp_uml(overlay, &backing)?;
    }
    note(&format!(
        "{}: committed {} into {}",
        overlay.display(),
        human(total),
        backing.display()
    ));
    Ok(())
}

/// A UML COW overlay records its backing file's mtime and refuses a newer one; after a
/// commit both read the same, so the overlay takes the new mtime (uml_moo -b leaves the
/// overlay unusable instead).
fn restamp_uml(overlay: &Path, backing: &Path) -> Outcome {
    use std::os::unix::fs::{FileExt, MetadataExt};
    let mtime = std::fs::metadata(backing)
        .map_err(|e| fail!("{}: {e}", backing.display()))?
        .mtime();
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(overlay)
        .map_err(|e| fail!("{}: {e}", overlay.display()))?;
    f.write_all_at(&(mtime as u32).to_be_bytes(), 8)
        .and_then(|()| f.sync_all())
        .map_err(|e| fail!("{}: {e}", overlay.display()))
}
