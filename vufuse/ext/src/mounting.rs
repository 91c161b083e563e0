//! Opening a volume: the raw superblock checked before libext2fs sees it, the open handle
//! and device freed again if a later step refuses the volume, the root and orphan checks of
//! a mount, and what the mount reads from the superblock (label, reserved ids).

use super::*;

/// Checks the raw superblock on `dev` (`geometry::check`) before libext2fs acts on it:
/// a refusal names what is wrong, with the errno a front end reports (EUCLEAN for a corrupt
/// geometry, EOPNOTSUPP for unknown incompatible features, EROFS for a read-write mount of
/// unknown read-only-compatible ones).
pub(super) fn check_superblock(
    dev: &dyn BlockDevice,
    read_only: bool,
) -> std::result::Result<(), MountError> {
    let end = geometry::SUPERBLOCK_OFFSET + geometry::SUPERBLOCK_SIZE as u64;
    if dev.size() < end {
        return Err(MountError::volume(
            Errno::EUCLEAN,
            format!(
                "not an ext2/3/4 filesystem ({} bytes hold no superblock)",
                dev.size()
            ),
        ));
    }
    let mut sb = vec![0u8; geometry::SUPERBLOCK_SIZE];
    dev.read_exact_at(&mut sb, geometry::SUPERBLOCK_OFFSET)
        .map_err(|e| MountError::volume(e, format!("cannot read the superblock: {e}")))?;
    let (mut incompat, mut ro_compat) = (0u32, 0u32);
    // SAFETY: both out-pointers are valid u32s.
    unsafe { vx_lib_features(&mut incompat, &mut ro_compat) };
    let lib = geometry::LibFeatures {
        incompat,
        ro_compat,
    };
    let names = |ro: bool, bits: u32| {
        let mut buf = [0 as c_char; 256];
        // SAFETY: buf is writable for its length; vx_feature_names NUL-terminates within it.
        unsafe { vx_feature_names(c_int::from(ro), bits, buf.as_mut_ptr(), buf.len()) };
        // SAFETY: NUL-terminated above.
        unsafe { std::ffi::CStr::from_ptr(buf.as_ptr()) }
            .to_string_lossy()
            .into_owned()
    };
    geometry::check(&sb, dev.size(), read_only, lib).map_err(|p| match p {
        geometry::Problem::NotExt => MountError::volume(
            Errno::EUCLEAN,
            "not an ext2/3/4 filesystem (bad superblock magic)",
        ),
        geometry::Problem::Incompat(bits) => MountError::volume(
            Errno::EOPNOTSUPP,
            format!(
                "the filesystem uses features this driver does not support ({})",
                names(false, bits)
            ),
        ),
        geometry::Problem::RoCompat(bits) => MountError::volume(
            Errno::EROFS,
            format!(
                "the filesystem uses read-only compatible features this driver cannot write ({}): \
                 mount it read-only",
                names(true, bits)
            ),
        ),
        geometry::Problem::Corrupt(what) => MountError::volume(
            Errno::EUCLEAN,
            format!("corrupt superblock: {what} (e2fsck -fy IMAGE may repair it)"),
        ),
    })
}

/// A volume being opened: the libext2fs handle and the device under it, closed and freed
/// if a later step of the mount refuses the volume.
pub(super) struct Opening {
    pub(super) fs: *mut ExtFsHandle,
    device: *mut VxDev,
}

impl Opening {
    /// The shim's device over `dev` (behind a block cache), and libext2fs opened on it.
    pub(super) fn open(
        dev: Arc<dyn BlockDevice>,
        read_only: bool,
        allow_recovery: bool,
    ) -> std::result::Result<Opening, MountError> {
        let size = dev.size();
        // libext2fs reads the superblock in 1 KiB blocks, then sets its own block size.
        let cached = CachedDevice::new(dev, 1024);
        let ctx = Box::into_raw(Box::new(cached)) as *mut c_void;
        let device = Box::into_raw(Box::new(VxDev {
            ctx,
            size,
            read_only: c_int::from(read_only),
            read: dev_read,
            write: dev_write,
            flush: dev_flush,
            prefetch: dev_prefetch,
            write_back: dev_write_back,
            set_block_size: dev_set_block_size,
            make_indexed: htree::vx_make_indexed,
        }));
        let mut fs: *mut ExtFsHandle = std::ptr::null_mut();
        let mut msg = vec![0u8; 512];
        // SAFETY: device points at a live VxDev that outlives the handle (freed
        // in Drop after vx_close); msg is a writable buffer of its length.
        let code = unsafe {
            vx_open(
                device,
                c_int::from(!read_only),
                c_int::from(allow_recovery),
                &mut fs,
                msg.as_mut_ptr() as *mut c_char,
                msg.len(),
            )
        };
        if code != 0 {
            // SAFETY: both boxes were created above and nothing else holds them.
            unsafe { free_device(device) };
            let end = msg.iter().position(|&b| b == 0).unwrap_or(msg.len());
            return Err(MountError::Volume {
                errno: Errno::from_raw(code),
                message: String::from_utf8_lossy(&msg[..end]).into_owned(),
            });
        }
        Ok(Opening { fs, device })
    }

    /// The mount goes ahead: the handle and the device pass to the volume.
    pub(super) fn into_parts(self) -> (*mut ExtFsHandle, *mut VxDev) {
        let opening = std::mem::ManuallyDrop::new(self);
        (opening.fs, opening.device)
    }
}

impl Drop for Opening {
    fn drop(&mut self) {
        // SAFETY: fs is open and closed once here; then the device is unused.
        unsafe {
            vx_close(self.fs);
            free_device(self.device);
        }
    }
}

/// As the kernel's ext4_fill_super: a root that is not a directory (or is empty) is refused
/// at mount, not served as a mount whose every access fails.
pub(super) fn check_root(fs: *mut ExtFsHandle) -> std::result::Result<(), MountError> {
    let mut root = VxStat::default();
    // SAFETY: fs is an open handle; root is a valid out-pointer.
    let code = unsafe { vx_stat(fs, 2, &mut root) };
    if code == 0 && root.mode & 0o170000 == 0o040000 && root.size != 0 {
        return Ok(());
    }
    let what = if code != 0 {
        format!("cannot be read ({})", Errno::from_raw(code))
    } else {
        format!(
            "is not a directory (mode {:o}, size {})",
            root.mode, root.size
        )
    };
    Err(MountError::volume(
        Errno::EUCLEAN,
        format!("corrupt root inode: inode 2 {what} (e2fsck -fy IMAGE may repair it)"),
    ))
}

/// What a crash left on the orphan list goes first, then the in-use mark is set.
pub(super) fn begin_read_write(fs: *mut ExtFsHandle) -> std::result::Result<(), MountError> {
    let code = match orphans::release(fs) {
        // SAFETY: fs was just opened read-write.
        Ok(()) => unsafe { vx_begin_rw(fs) },
        Err(e) => e.raw(),
    };
    if code == 0 {
        return Ok(());
    }
    Err(MountError::Volume {
        errno: Errno::from_raw(code),
        message: format!(
            "cannot mark the filesystem in use: {}",
            Errno::from_raw(code)
        ),
    })
}

/// s_def_resuid and s_def_resgid: who besides root may use the reserved blocks.
pub(super) fn reserved_ids(fs: *mut ExtFsHandle) -> (u32, u32) {
    let (mut resuid, mut resgid) = (0u32, 0u32);
    // SAFETY: fs is open; both out-pointers are valid.
    unsafe { vx_reserved_ids(fs, &mut resuid, &mut resgid) };
    (resuid, resgid)
}

/// The volume label (up to 16 bytes).
pub(super) fn label_of(fs: *mut ExtFsHandle) -> String {
    let mut label = [0 as c_char; 17];
    // SAFETY: fs is an open handle; label has the 17 bytes vx_label writes.
    unsafe { vx_label(fs, label.as_mut_ptr()) };
    // SAFETY: vx_label NUL-terminates within the buffer.
    unsafe { std::ffi::CStr::from_ptr(label.as_ptr()) }
        .to_string_lossy()
        .into_owned()
}

/// Frees the device descriptor and the boxed device behind it.
///
/// # Safety
/// `device` must come from `Box::into_raw` in `ExtFs::open`, and libext2fs
/// must no longer use it (the filesystem is closed or was never opened).
pub(super) unsafe fn free_device(device: *mut VxDev) {
    // SAFETY: guaranteed by the caller.
    let device = unsafe { Box::from_raw(device) };
    // SAFETY: ctx was created from a Box<CachedDevice> in `open_raw`.
    drop(unsafe { Box::from_raw(device.ctx as *mut CachedDevice) });
}
