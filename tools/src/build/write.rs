//! Writing a planned image: into a temporary file beside the output (table, then each
//! partition formatted and filled), renamed over the output only at the end, so a failure
//! leaves the old image untouched.

use super::plan::{Plan, PlannedPart};
use crate::copy::{self, MetaPolicy};
use crate::fail;
use crate::format as fmt;
use crate::progress::{note, Progress};
use crate::util::{epoch_time, Outcome};
use crate::volume::{FsKind, Meta, Volume};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use vudev::part;
use vudev::{BlockDevice, FileDevice, Window};
use vufuse_api::Ino;

/// Deletes the temporary image unless the build got to the end.
struct TempImage {
    path: PathBuf,
    keep: bool,
}

impl Drop for TempImage {
    fn drop(&mut self) {
        if !self.keep {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// Writes `plan` to `output`.
pub(super) fn write(plan: &Plan, output: &Path) -> Outcome {
    let mut temp = temp_image(output, plan.size)?;
    let disk: Arc<dyn BlockDevice> = Arc::new(
        FileDevice::open(&temp.path, false).map_err(|e| fail!("{}: {e}", temp.path.display()))?,
    );
    part::write(disk.as_ref(), &plan.table).map_err(|e| fail!("{}: {e}", output.display()))?;
    if !plan.hybrid_mbr.is_empty() {
        part::write_hybrid_mbr(disk.as_ref(), &plan.table, &plan.hybrid_mbr)
            .map_err(|e| fail!("{}: {e}", output.display()))?;
    }
    let total: u64 = plan.parts.iter().map(|p| copy::total_bytes(&p.items)).sum();
    let files = plan.parts.iter().map(|p| copy::file_count(&p.items)).sum();
    let mut progress = Progress::with_files("building", total, files);
    for p in &plan.parts {
        fill_partition(plan, p, &disk, &temp.path, output, &mut progress)
            .map_err(|e| fail!("{}: {}: {}", plan.name, p.what, e.0))?;
    }
    progress.finish();
    super::raw::write(&plan.raw, disk.as_ref()).map_err(|e| fail!("{}: {}", plan.name, e.0))?;
    disk.flush()
        .map_err(|e| fail!("{}: {e}", temp.path.display()))?;
    drop(disk);
    if plan.fill {
        allocate_all(&temp.path, plan.size)?;
    }
    // A VM image output (by its extension: .qcow2, .vdi, .vmdk) is converted from the
    // finished raw build, sparsely; the temporary raw file then goes.
    match crate::images::output_format(output, None) {
        crate::cli::ImageFormat::Raw => {
            std::fs::rename(&temp.path, output).map_err(|e| fail!("{}: {e}", output.display()))?;
            temp.keep = true;
        }
        format => crate::images::convert::convert(&temp.path, output, Some(format), true)?,
    }
    note(&format!(
        "{}: {} image with {} partitions{}",
        output.display(),
        crate::util::human(plan.size),
        plan.parts.len(),
        if plan.epoch.is_some() {
            " (reproducible)"
        } else {
            ""
        }
    ));
    Ok(())
}

/// Copies the image file `image` to byte `offset` of `disk`, leaving its holes as holes.
fn copy_image_in(image: &Path, disk: &dyn BlockDevice, offset: u64) -> Outcome {
    let mut file = std::fs::File::open(image).map_err(|e| fail!("{}: {e}", image.display()))?;
    let mut buf = vec![0u8; 1 << 20];
    let mut at = 0u64;
    loop {
        let n = crate::volume::read_full(&mut file, &mut buf)
            .map_err(|e| fail!("{}: {e}", image.display()))?;
        if n == 0 {
            return Ok(());
        }
        if buf[..n].iter().any(|&b| b != 0) {
            disk.write_all_at(&buf[..n], offset + at)
                .map_err(|e| fail!("{}: {e}", image.display()))?;
        }
        at += n as u64;
    }
}

/// Gives every byte of the raw image `path` a block on the host (zeros where it had holes),
/// as genimage's `fill` asks.
fn allocate_all(path: &Path, size: u64) -> Outcome {
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(path)
        .map_err(|e| fail!("{}: {e}", path.display()))?;
    rustix::fs::fallocate(&f, rustix::fs::FallocateFlags::empty(), 0, size)
        .map_err(|e| fail!("{}: allocating: {e}", path.display()))
}

/// A sparse file of `size` bytes beside `output`, removed unless kept.
fn temp_image(output: &Path, size: u64) -> Outcome<TempImage> {
    let dir = output
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let file_name = output
        .file_name()
        .ok_or_else(|| fail!("{}: not a file name", output.display()))?;
    let temp = TempImage {
        path: dir.join(format!(
            ".{}.vuimg-build-{}",
            file_name.to_string_lossy(),
            std::process::id()
        )),
        keep: false,
    };
    let f = std::fs::File::create(&temp.path).map_err(|e| fail!("{}: {e}", temp.path.display()))?;
    f.set_len(size)
        .map_err(|e| fail!("{}: {e}", temp.path.display()))?;
    Ok(temp)
}

/// Formats partition `p` and copies its contents in; a reproducible build then clamps
/// every time to the epoch.
fn fill_partition(
    plan: &Plan,
    p: &PlannedPart,
    disk: &Arc<dyn BlockDevice>,
    temp: &Path,
    output: &Path,
    progress: &mut Progress,
) -> Outcome {
    if let Some(image) = &p.image {
        return copy_image_in(image, disk.as_ref(), p.start_sector * 512);
    }
    let Some(fs) = p.fs else { return Ok(()) };
    let offset = p.start_sector * 512;
    let window: Arc<dyn BlockDevice> =
        Arc::new(Window::new(disk.clone(), offset, p.bytes).map_err(|e| fail!("{e}"))?);
    progress.set_message(&p.what);
    if fs.is_exfat() {
        fmt::format_exfat(window.as_ref(), &p.req)?;
    } else if fs.is_fat() {
        fmt::format_fat(window.as_ref(), fs, p.start_sector, &p.req)?;
    } else {
        disk.flush().map_err(|e| fail!("{e}"))?;
        fmt::format_ext(temp, offset, p.bytes, fs, &p.req)?;
    }
    if p.items.is_empty() && plan.epoch.is_none() {
        return Ok(());
    }
    let policy = MetaPolicy {
        clamp: plan.epoch.map(epoch_time),
        owner: Some((0, 0)),
    };
    let vol = Volume::open_at(
        window.clone(),
        true,
        &format!("{}@{}", output.display(), p.number),
        policy.clamp,
    )?;
    let filled = (|| -> Outcome {
        copy::check_fits(&vol, &p.items)?;
        copy::into_volume(&p.items, None, &vol, policy, progress)?;
        if let (Some(t), FsKind::Ext) = (policy.clamp, vol.kind) {
            let root = Meta {
                perm: 0o755,
                uid: 0,
                gid: 0,
                mtime: t,
                atime: t,
            };
            vol.set_meta(Ino::ROOT, &root, "/")?;
        }
        Ok(())
    })();
    let touched = vol.touched_inodes();
    let kind = vol.kind;
    vol.close();
    filled?;
    if let Some(e) = plan.epoch {
        match kind {
            FsKind::Fat => crate::repro::clamp_fat_times(window, e)?,
            // Every time the driver stamped is the epoch (its clock), the copy clamped the rest.
            FsKind::ExFat => {}
            FsKind::Ext => {
                disk.flush().map_err(|e| fail!("{e}"))?;
                crate::repro::fix_ext_times(temp, offset, &touched, e)?
            }
        }
    }
    Ok(())
}
