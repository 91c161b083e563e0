//! vuimg's images, locked once per process: a command may open one image several times (a
//! copy between two partitions of the same disk, a read-only plan before the write), and
//! those opens must not lock each other out, while another program holding the image must.
//!
//! One holder descriptor per image carries the process's lock (shared while only reads were
//! asked for, exclusive from the first write on); the devices themselves are opened unlocked.

use crate::util::Failure;
use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use vudev::lock::{lock_file, LockError, LockMode};
use vudev::FileDevice;
use vufuse_mount::MountError;

/// The holder of each image's lock, by canonical path, with its mode.
static HOLDERS: Mutex<Option<HashMap<PathBuf, (File, LockMode)>>> = Mutex::new(None);

/// Opens `image` (read-only when asked) after making sure this process holds its lock in a
/// mode that covers the open; another program's conflicting lock fails with the mount
/// layer's message ("in use ...").
pub fn open_locked(image: &Path, read_only: bool) -> Result<FileDevice, Failure> {
    let device = vufuse_mount::open_file_device(image, read_only, false)
        .map_err(|e| Failure(e.to_string()))?;
    let wanted = if read_only {
        LockMode::Shared
    } else {
        LockMode::Exclusive
    };
    hold(image, wanted).map_err(|e| Failure(e.to_string()))?;
    Ok(device)
}

/// The disk an opened image file holds: the file itself for raw images, else the device of
/// its format (qcow2 with its backing chain, VDI, VMDK, UML COW), probed by magic.
pub fn through_format(
    file: FileDevice,
    image: &Path,
    read_only: bool,
) -> Result<std::sync::Arc<dyn vudev::BlockDevice>, Failure> {
    if vudev_formats::probe(&file) == vudev_formats::Format::Raw {
        return Ok(std::sync::Arc::new(file));
    }
    let options = vudev_formats::OpenOptions {
        read_only,
        ..Default::default()
    };
    vudev_formats::open_file(file, image, &options).map_err(|e| Failure(e.to_string()))
}

/// The disk `image` names: an NBD export when it is an NBD URI (`nbd://`, `nbd+unix://`;
/// the server does the locking), else the file, locked, through its format.
pub fn open_disk(
    image: &Path,
    read_only: bool,
) -> Result<std::sync::Arc<dyn vudev::BlockDevice>, Failure> {
    if is_uri(image) {
        let mut options = vufuse_mount::MountOptions::defaults(
            vufuse_api::options::WritePolicy::ReadWriteUnlessRo,
        );
        options.read_only = read_only;
        let disk = vufuse_mount::open_disk(image, &options).map_err(|e| Failure(e.to_string()))?;
        if !read_only && disk.read_only() {
            return Err(Failure(format!(
                "{}: the export is read-only",
                image.display()
            )));
        }
        return Ok(disk);
    }
    let file = open_locked(image, read_only)?;
    through_format(file, image, read_only)
}

/// True when `image` is an NBD URI rather than a file.
pub fn is_uri(image: &Path) -> bool {
    image.to_str().is_some_and(vufuse_mount::is_uri)
}

fn hold(image: &Path, wanted: LockMode) -> Result<(), MountError> {
    let key = std::fs::canonicalize(image).unwrap_or_else(|_| image.to_path_buf());
    let mut holders = HOLDERS.lock().unwrap_or_else(|e| e.into_inner());
    let holders = holders.get_or_insert_with(HashMap::new);
    if let Some((_, held)) = holders.get(&key) {
        if *held == LockMode::Exclusive || wanted == LockMode::Shared {
            return Ok(());
        }
        // Upgrading: the shared holder goes first, or the new one would conflict with it.
        holders.remove(&key);
    }
    let holder = OpenOptions::new()
        .read(true)
        .write(wanted == LockMode::Exclusive)
        .open(image)
        .map_err(|e| MountError::Source {
            source: image.to_path_buf(),
            errno: e.into(),
        })?;
    match lock_file(holder.as_fd(), wanted) {
        Ok(()) | Err(LockError::Failed(_)) => {
            holders.insert(key, (holder, wanted));
            Ok(())
        }
        Err(LockError::Busy { held }) => Err(MountError::Locked {
            source: image.to_path_buf(),
            held,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_process_may_reopen_and_upgrade_while_others_are_kept_out() {
        let dir = tempfile::tempdir().unwrap();
        let image = dir.path().join("disk.img");
        std::fs::write(&image, vec![0u8; 4096]).unwrap();
        let plan = open_locked(&image, true).unwrap();
        let write = open_locked(&image, false).unwrap();
        let again = open_locked(&image, true).unwrap();
        drop((plan, write, again));
        // Another program (an OFD lock of its own) is refused while the lock is held.
        let other = File::open(&image).unwrap();
        assert_eq!(
            lock_file(other.as_fd(), LockMode::Shared),
            Err(LockError::Busy {
                held: LockMode::Exclusive
            })
        );
    }
}
