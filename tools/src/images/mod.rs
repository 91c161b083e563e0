//! VM image commands: convert, overlay, commit, info, and `create --format`.
//!
//! The formats themselves are `vudev-formats`' devices; what is here is the plumbing around
//! them: choosing a format, writing outputs atomically (a temporary directory beside the
//! output, renamed at the end), copying only what the source's map
//! (`vudev::data_ranges`) says may hold data and that is not zero, and reading what an
//! overlay holds itself (`vudev_formats::own_ranges`) for `commit`.

pub mod commit;
pub mod convert;
pub mod create;
pub mod headers;
pub mod info;
pub mod overlay;

use crate::cli::ImageFormat;
use crate::fail;
use crate::progress::Progress;
use crate::util::Outcome;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use vudev::BlockDevice;
use vudev_formats::Format;

/// Bytes read per call while copying (a multiple of `ZERO_GRAIN`).
pub const CHUNK: usize = 2 << 20;
/// Reader threads of a copy: several reads in flight (a cold disk, an NBD source).
const READERS: usize = 4;
/// Buffers of `CHUNK` bytes in a copy (readers' and writer's together): the memory cap.
const BUFFERS: usize = 8;
/// Granularity of zero detection: the qcow2 cluster and VMDK grain size.
pub const ZERO_GRAIN: usize = 64 << 10;

/// The formats crate's name for a command-line format (the command line lives in the
/// library, so this is a trait here).
pub trait ToFormat {
    /// The format of the formats crate.
    fn format(self) -> Format;
}

impl ToFormat for ImageFormat {
    fn format(self) -> Format {
        match self {
            ImageFormat::Raw => Format::Raw,
            ImageFormat::Qcow2 => Format::Qcow2,
            ImageFormat::Vdi => Format::Vdi,
            ImageFormat::Vmdk => Format::Vmdk,
        }
    }
}

/// The output format: the chosen one, else by `path`'s extension, else raw.
pub fn output_format(path: &Path, chosen: Option<ImageFormat>) -> ImageFormat {
    if let Some(f) = chosen {
        return f;
    }
    let ext = path
        .extension()
        .map(|e| e.to_string_lossy().to_ascii_lowercase())
        .unwrap_or_default();
    match ext.as_str() {
        "qcow2" | "qcow" => ImageFormat::Qcow2,
        "vdi" => ImageFormat::Vdi,
        "vmdk" => ImageFormat::Vmdk,
        _ => ImageFormat::Raw,
    }
}

/// Creates an empty image of `format` and `size` bytes at `path` (overwriting it).
pub fn create_empty(path: &Path, format: ImageFormat, size: u64) -> Outcome {
    let named = |e: vudev_formats::FormatError| fail!("{e}");
    match format {
        ImageFormat::Raw => {
            let f = std::fs::File::create(path).map_err(|e| fail!("{}: {e}", path.display()))?;
            f.set_len(size)
                .map_err(|e| fail!("{}: {e}", path.display()))?;
        }
        ImageFormat::Qcow2 => vudev_formats::create_qcow2(path, size, None).map_err(named)?,
        ImageFormat::Vdi => {
            if size % 512 != 0 {
                return Err(fail!(
                    "{}: a VDI disk is a whole number of 512-byte sectors, not {size} bytes",
                    path.display()
                ));
            }
            vudev_formats::create_vdi(path, size, false).map_err(named)?
        }
        ImageFormat::Vmdk => {
            if size % 512 != 0 {
                return Err(fail!(
                    "{}: a VMDK disk is a whole number of 512-byte sectors, not {size} bytes",
                    path.display()
                ));
            }
            vudev_formats::create_vmdk(path, size).map_err(named)?
        }
    }
    Ok(())
}

/// An output being written: `path` inside a private directory beside the final name, with
/// the final file name (a VMDK names itself in its descriptor); removed unless committed.
pub struct TempOutput {
    dir: PathBuf,
    /// Where to write.
    pub path: PathBuf,
    target: PathBuf,
    done: bool,
}

impl TempOutput {
    /// A temporary place for `target`; refuses an existing `target` unless `force`.
    pub fn new(target: &Path, force: bool) -> Outcome<TempOutput> {
        let name = target
            .file_name()
            .ok_or_else(|| fail!("{}: not a file name", target.display()))?;
        if !force && std::fs::symlink_metadata(target).is_ok() {
            return Err(fail!(
                "{}: exists (use --force to replace it)",
                target.display()
            ));
        }
        if target.is_dir() {
            return Err(fail!("{}: is a directory", target.display()));
        }
        let parent = target
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        let dir = parent.join(format!(
            ".{}.vuimg-{}",
            name.to_string_lossy(),
            std::process::id()
        ));
        std::fs::create_dir(&dir).map_err(|e| fail!("{}: {e}", dir.display()))?;
        Ok(TempOutput {
            path: dir.join(name),
            dir,
            target: target.to_path_buf(),
            done: false,
        })
    }

    /// Renames the finished output over the target.
    pub fn commit(mut self) -> Outcome {
        std::fs::File::open(&self.path)
            .and_then(|f| f.sync_all())
            .map_err(|e| fail!("{}: {e}", self.path.display()))?;
        std::fs::rename(&self.path, &self.target)
            .map_err(|e| fail!("{}: {e}", self.target.display()))?;
        self.done = true;
        let _ = std::fs::remove_dir(&self.dir);
        Ok(())
    }
}

impl Drop for TempOutput {
    fn drop(&mut self) {
        if !self.done {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// True when every byte of `buf` is zero.
pub fn is_zero(buf: &[u8]) -> bool {
    let mut words = buf.chunks_exact(16);
    words
        .by_ref()
        .all(|w| u128::from_ne_bytes(w.try_into().expect("16 bytes")) == 0)
        && words.remainder().iter().all(|&b| b == 0)
}

/// The pieces `ranges` are copied in: at most `CHUNK` bytes, ending on `ZERO_GRAIN`
/// boundaries so that clusters stay whole.
fn chunks(ranges: &[(u64, u64)]) -> Vec<(u64, usize)> {
    let mut out = Vec::new();
    for &(start, len) in ranges {
        let end = start + len;
        let mut pos = start;
        while pos < end {
            let n = ((end - pos) as usize).min(CHUNK - (pos % ZERO_GRAIN as u64) as usize);
            out.push((pos, n));
            pos += n as u64;
        }
    }
    out
}

/// Copies `src`'s bytes in `ranges` (offset, length) to the same offsets of `dst`, skipping
/// every `ZERO_GRAIN`-aligned piece that reads as zeros when `skip_zeros` (a fresh output),
/// else discarding it when `dst` reads discarded ranges as zeros, or writing zeros.
///
/// Reading and writing overlap: `READERS` threads read pieces of `CHUNK` bytes into a pool
/// of `BUFFERS` buffers (the memory cap) while this thread writes them, in order (so a
/// new qcow2's clusters are laid out as the disk's), each run of data with one call.
pub fn copy_ranges(
    src: &dyn BlockDevice,
    dst: &dyn BlockDevice,
    ranges: &[(u64, u64)],
    skip_zeros: bool,
    progress: &mut Progress,
) -> Outcome {
    use std::collections::BTreeMap;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use std::sync::mpsc;
    use std::sync::Mutex;
    use vudev::PageAligned;

    let pieces = chunks(ranges);
    if pieces.is_empty() {
        return Ok(());
    }
    let next = AtomicUsize::new(0);
    let stop = AtomicBool::new(false);
    // Free buffers go back to the readers through `pool`.
    // Page-aligned: the kernel copies into them at full speed (vudev::PageAligned).
    let (pool_tx, pool_rx) = mpsc::channel::<PageAligned>();
    for _ in 0..BUFFERS.min(pieces.len() + 1) {
        pool_tx
            .send(PageAligned::default())
            .expect("receiver alive");
    }
    let pool_rx = Mutex::new(pool_rx);
    type Filled = (usize, Result<PageAligned, crate::util::Failure>);
    let (full_tx, full_rx) = mpsc::channel::<Filled>();
    std::thread::scope(|scope| {
        for _ in 0..READERS.min(pieces.len()) {
            let full_tx = full_tx.clone();
            let (next, stop, pool_rx, pieces) = (&next, &stop, &pool_rx, &pieces);
            scope.spawn(move || loop {
                // A buffer first, then a piece: the lowest piece not yet written always
                // has a buffer, so the writer never waits on a reader that cannot read.
                let buf = pool_rx.lock().unwrap_or_else(|p| p.into_inner()).recv();
                let Ok(mut buf) = buf else { return };
                if stop.load(Ordering::Relaxed) {
                    return;
                }
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(&(pos, n)) = pieces.get(i) else {
                    return;
                };
                buf.resize(n);
                let res = src
                    .read_exact_at(buf.bytes_mut(), pos)
                    .map(|()| buf)
                    .map_err(|e| fail!("read of {n} bytes at {pos}: {e}"));
                if full_tx.send((i, res)).is_err() {
                    return;
                }
            });
        }
        drop(full_tx);
        let mut waiting: BTreeMap<usize, PageAligned> = BTreeMap::new();
        let mut want = 0;
        let result = (|| {
            while want < pieces.len() {
                let buf = match waiting.remove(&want) {
                    Some(b) => b,
                    None => {
                        let Ok((i, res)) = full_rx.recv() else {
                            return Err(fail!("copy: the readers stopped"));
                        };
                        waiting.insert(i, res?);
                        continue;
                    }
                };
                let (pos, n) = pieces[want];
                write_nonzero(dst, buf.bytes(), pos, skip_zeros)?;
                progress.advance(n as u64);
                want += 1;
                let _ = pool_tx.send(buf);
            }
            Ok(())
        })();
        // Stop the readers (on error) and let them see the pool close.
        stop.store(true, Ordering::Relaxed);
        drop(pool_tx);
        result
    })
}

/// Writes the pieces of `data` (at `pos` of `dst`) that are not all zeros; zero pieces are
/// skipped (`skip_zeros`), discarded or written.
fn write_nonzero(dst: &dyn BlockDevice, data: &[u8], pos: u64, skip_zeros: bool) -> Outcome {
    let werr = |at: u64, e: vudev::Errno| fail!("write at {at}: {e}");
    let mut i = 0;
    while i < data.len() {
        let piece_end = |from: usize| -> usize {
            let abs = pos + from as u64;
            (from + ZERO_GRAIN - (abs % ZERO_GRAIN as u64) as usize).min(data.len())
        };
        // A run of pieces of the same kind.
        let zero = is_zero(&data[i..piece_end(i)]);
        let mut j = piece_end(i);
        while j < data.len() && is_zero(&data[j..piece_end(j)]) == zero {
            j = piece_end(j);
        }
        let at = pos + i as u64;
        if !zero {
            dst.write_all_at(&data[i..j], at).map_err(|e| werr(at, e))?;
        } else if !skip_zeros {
            if dst.discard_zeroes() {
                dst.discard(at, (j - i) as u64).map_err(|e| werr(at, e))?;
            } else {
                dst.write_all_at(&data[i..j], at).map_err(|e| werr(at, e))?;
            }
        }
        i = j;
    }
    Ok(())
}

/// Extents asked per call while locating a map's failure.
const LOCATE_PER_QUERY: usize = 1 << 16;

/// The first guest offset whose map a device cannot read (with `extents`, a device's
/// [`BlockDevice::extents`] or an image's own map): the cluster of a truncated qcow2 whose
/// data is past the end of its file, say. The devices answer with an errno only, so this
/// finds the first failing query of a walk from 0, then halves it: a walk of
/// `[pos, pos + len)` fails exactly when it reaches a bad entry. None when the failure does
/// not come back.
pub fn map_failure_at(
    size: u64,
    extents: impl Fn(u64, u64, usize) -> vudev::Result<Vec<vudev::Extent>>,
) -> Option<u64> {
    // Walks [from, to): Ok(true) when the whole range maps, Ok(false) when the device
    // stops answering, Err(at) with the start of the failing query.
    let walk = |from: u64, to: u64| -> Result<bool, u64> {
        let mut pos = from;
        while pos < to {
            let got = extents(pos, to - pos, LOCATE_PER_QUERY).map_err(|_| pos)?;
            let before = pos;
            for e in got {
                pos = pos.saturating_add(e.len).min(to);
            }
            if pos == before {
                return Ok(false);
            }
        }
        Ok(true)
    };
    let pos = match walk(0, size) {
        Err(at) => at,
        Ok(_) => return None,
    };
    // The shortest failing walk from pos: [pos, pos + good) maps, [pos, pos + bad) fails.
    let (mut good, mut bad) = (0u64, size - pos);
    while bad - good > 1 {
        let mid = good + (bad - good) / 2;
        match walk(pos, pos + mid) {
            Ok(_) => good = mid,
            Err(_) => bad = mid,
        }
    }
    Some(pos + bad - 1)
}

/// A map's failure `e` for a message: where it is (see [`map_failure_at`]) and, for
/// `EIO`, what it usually means.
pub fn map_error(e: vudev::Errno, at: Option<u64>) -> String {
    let mut text = e.to_string();
    if let Some(at) = at {
        text += &format!(" at guest offset {at}");
    }
    if e == vudev::Errno::EIO {
        text += " (the image is truncated or corrupt)";
    }
    text
}

/// Opens `image` read-only, locked shared, through its format.
pub fn open_source(image: &Path) -> Outcome<Arc<dyn BlockDevice>> {
    crate::image_lock::open_disk(image, true)
}

/// Writes the whole of `src` to a new image at `dst` of `format`, atomically: the
/// conversion of `convert` and of `commit OVERLAY DST`.
pub fn write_image(
    src: &dyn BlockDevice,
    src_name: &Path,
    dst: &Path,
    format: ImageFormat,
    force: bool,
) -> Outcome {
    if let (Ok(a), Ok(b)) = (std::fs::canonicalize(src_name), std::fs::canonicalize(dst)) {
        if a == b {
            return Err(fail!("{}: is the source itself", dst.display()));
        }
    }
    let size = src.size();
    // Only what may hold data is read (the device's own map: a raw file's holes, qcow2
    // L2 tables down the backing chain, VDI/VMDK/UML COW maps, an NBD export's block
    // status); the rest of a new image is zeros already. This also reads the allocation
    // tables, refusing a truncated source before anything is written.
    let ranges = vudev::data_ranges(src).map_err(|e| {
        let at = map_failure_at(src.size(), |o, l, m| src.extents(o, l, m));
        fail!(
            "{}: mapping its data: {}",
            src_name.display(),
            map_error(e, at)
        )
    })?;
    let temp = TempOutput::new(dst, force)?;
    create_empty(&temp.path, format, size)?;
    {
        let out: Arc<dyn BlockDevice> = if format == ImageFormat::Raw {
            let file = vudev::FileDevice::open(&temp.path, false)
                .map_err(|e| fail!("{}: {e}", temp.path.display()))?;
            Arc::new(RawOutput::new(file))
        } else {
            // The image file is written front to back too: data appended, metadata
            // updated in place.
            let options = vudev_formats::OpenOptions {
                format: Some(format.format()),
                writeback_step: WRITEBACK_STEP,
                ..Default::default()
            };
            vudev_formats::open_image_with(&temp.path, &options)
                .map_err(|e| fail!("{e}"))?
                .into_block_device()
        };
        let total = ranges.iter().map(|r| r.1).sum();
        let mut progress = Progress::new("converting", total);
        copy_ranges(src, out.as_ref(), &ranges, true, &mut progress)
            .map_err(|e| fail!("{} -> {}: {}", src_name.display(), dst.display(), e.0))?;
        progress.finish();
        out.flush().map_err(|e| fail!("{}: {e}", dst.display()))?;
    }
    temp.commit()
}

/// Bytes written to an output between two starts of their writeback.
const WRITEBACK_STEP: u64 = 16 << 20;

/// A raw output file that starts the writeback of what was written to it every
/// `WRITEBACK_STEP` bytes ([`vudev_formats::WritebackAhead`], as the image formats'
/// outputs do), so that the disk writes while the copy reads, rather than all of it at the
/// final flush.
struct RawOutput {
    file: vudev::FileDevice,
    ahead: vudev_formats::WritebackAhead,
}

impl RawOutput {
    /// `file`, which will be written in order of offsets (as `copy_ranges` writes).
    fn new(file: vudev::FileDevice) -> RawOutput {
        RawOutput {
            file,
            ahead: vudev_formats::WritebackAhead::new(WRITEBACK_STEP),
        }
    }
}

impl BlockDevice for RawOutput {
    fn size(&self) -> u64 {
        self.file.size()
    }
    fn read_only(&self) -> bool {
        self.file.read_only()
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> vudev::Result<usize> {
        self.file.read_at(buf, offset)
    }
    fn write_at(&self, buf: &[u8], offset: u64) -> vudev::Result<usize> {
        let n = self.file.write_at(buf, offset)?;
        self.ahead.wrote(self.file.file(), offset + n as u64);
        Ok(n)
    }
    fn flush(&self) -> vudev::Result<()> {
        self.file.flush()
    }
    fn discard(&self, offset: u64, len: u64) -> vudev::Result<()> {
        self.file.discard(offset, len)
    }
    fn discard_zeroes(&self) -> bool {
        self.file.discard_zeroes()
    }
    fn extents(&self, offset: u64, len: u64, max: usize) -> vudev::Result<Vec<vudev::Extent>> {
        self.file.extents(offset, len, max)
    }
}
