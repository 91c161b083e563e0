//! The glue between vufuse (the VUOS hypervisor's FUSE-compatible module) and
//! this project's filesystem drivers: what `vufusefatfs.so` and
//! `vufuseext2.so` share.
//!
//! A vufuse submodule exports `main`; vufuse calls it in a thread of its own
//! with `[name, "-o", OPTS, SOURCE, TARGET]`. [`run_main`] parses that argv
//! with the project's option parser, opens the source (image, partition or
//! device) with the shared `open_source`, and hands vufuse the FUSE 3.14
//! operations table of [`ops`] through `fuse_main_real`, which blocks until
//! the mount goes away. The operations get mount-relative paths and turn them
//! into inodes through the shared [`PathResolver`](vufuse_api::resolver::PathResolver);
//! every per-mount value lives in the mount's private data, so two mounts of
//! one `.so` run side by side.
#![allow(unsafe_code)]
#![warn(missing_docs)]

pub mod abi;
mod mount;
pub mod ops;

use abi::{FuseContext, FuseOperations};
use std::ffi::{c_char, c_int, c_void, CStr, OsStr, OsString};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use vufuse_api::options::{MountOptions, WritePolicy};
use vufuse_api::FileSystem;

pub use mount::Mount;

// The host side of the ABI: vufuse.so (loaded RTLD_GLOBAL by umvu) defines
// these; the module does not link libfuse.
extern "C" {
    /// Registers `op` for the mount in progress and serves until umount.
    fn fuse_main_real(
        argc: c_int,
        argv: *mut *mut c_char,
        op: *const FuseOperations,
        op_size: usize,
        user_data: *mut c_void,
    ) -> c_int;
    /// The context of the operation being served (NULL outside one).
    fn fuse_get_context() -> *mut FuseContext;
}

/// Opens the filesystem a mount serves, from SOURCE and the parsed options;
/// an error is a message for the user.
pub type OpenFs = fn(&Path, &MountOptions) -> Result<Arc<dyn FileSystem>, String>;

/// What differs between the submodules.
pub struct ModuleSpec {
    /// The fstype and file name (`vufusefatfs`), used in messages.
    pub name: &'static str,
    /// How `ro`/`rw`/`rw+`/`force` decide the write mode (as the matching daemon).
    pub write_policy: WritePolicy,
    /// Opens the driver.
    pub open: OpenFs,
}

/// Mount-flag words vufuse appends to OPTS that the shared option parser does
/// not know and that mean nothing to a filesystem driver.
const VUMOUNT_ONLY_WORDS: &[&str] = &["remount", "mand", "acl"];

/// What a submodule's command line says.
#[derive(Debug, PartialEq, Eq)]
pub struct MainArgs {
    /// The options, resolved.
    pub options: MountOptions,
    /// The image, disk or device to mount.
    pub source: PathBuf,
}

/// Parses `[name, -o OPTS..., SOURCE, TARGET]` as vufuse builds it.
///
/// vumount swallows `rw`, and vufuse passes `rw` when no option is left, so
/// an OPTS of exactly `rw` means "nothing given" (the read-only default, with
/// no warning); `rw+` (or `rw,force` for FAT) asks for writes.
pub fn parse_args(policy: WritePolicy, args: &[OsString]) -> Result<MainArgs, String> {
    let mut texts: Vec<String> = Vec::new();
    let mut positionals: Vec<&OsStr> = Vec::new();
    let mut rest = args.iter().skip(1);
    while let Some(arg) = rest.next() {
        let bytes = arg.as_bytes();
        if bytes == b"-o" {
            let value = rest.next().ok_or("-o needs an argument")?;
            texts.push(utf8(value)?);
        } else if let Some(value) = bytes.strip_prefix(b"-o") {
            texts.push(utf8(OsStr::from_bytes(value))?);
        } else if matches!(bytes, b"-f" | b"-s" | b"-d") {
            // libfuse's foreground/single-thread/debug switches: meaningless here.
        } else if bytes.starts_with(b"-") && bytes.len() > 1 {
            return Err(format!("unknown argument {}", arg.to_string_lossy()));
        } else {
            positionals.push(arg);
        }
    }
    if texts.len() == 1 && texts[0] == "rw" {
        texts.clear();
    }
    let words: Vec<String> = texts
        .iter()
        .flat_map(|t| t.split(','))
        .filter(|w| !VUMOUNT_ONLY_WORDS.contains(w))
        .map(str::to_owned)
        .collect();
    let options = MountOptions::parse_all([words.join(",")], policy).map_err(|e| e.to_string())?;
    let source = match positionals.as_slice() {
        [source] | [source, _] => PathBuf::from(source),
        [] => return Err("no SOURCE given".into()),
        _ => return Err("too many arguments (expected SOURCE [TARGET])".into()),
    };
    Ok(MainArgs { options, source })
}

fn utf8(text: &OsStr) -> Result<String, String> {
    text.to_str()
        .map(str::to_owned)
        .ok_or_else(|| format!("options are not UTF-8: {}", text.to_string_lossy()))
}

/// The body of a submodule's `main`: parse, open, serve until umount.
/// Returns 0 after a clean umount, 1 when the options or the source are bad
/// (vufuse then fails the mount with EFAULT; the reason goes to stderr).
///
/// # Safety
/// `argv` must hold `argc` NUL-terminated strings, as vufuse passes.
pub unsafe fn run_main(spec: &ModuleSpec, argc: c_int, argv: *mut *mut c_char) -> c_int {
    let outcome = vuglue::no_unwind(|| {
        // SAFETY: vufuse passes argc valid NUL-terminated strings in argv.
        let args = unsafe { argv_to_vec(argc, argv) };
        Ok(prepare(spec, &args))
    });
    let mount = match outcome {
        Ok(Ok(mount)) => mount,
        Ok(Err(message)) => {
            eprintln!("{}: {message}", spec.name);
            return 1;
        }
        Err(e) => {
            eprintln!("{}: internal error: {e}", spec.name);
            return 1;
        }
    };
    let user_data = Box::into_raw(Box::new(mount));
    // SAFETY: the table is a static with the exact FUSE 3.14 layout; user_data
    // stays valid until fuse_main_real returns (vufuse calls no operation after).
    let rc = unsafe {
        fuse_main_real(
            argc,
            argv,
            &ops::OPERATIONS,
            std::mem::size_of::<FuseOperations>(),
            user_data.cast(),
        )
    };
    // SAFETY: user_data came from Box::into_raw above and vufuse is done with it.
    let mount = unsafe { Box::from_raw(user_data) };
    let _ = vuglue::no_unwind(|| {
        // Flushes if vufuse never called destroy (an aborted mount).
        mount.destroy();
        drop(mount);
        Ok(())
    });
    rc
}

/// `errors=` as the FUSE daemons apply it, except `panic`: under umvu an abort would end
/// every process of the partial virtual machine, not one daemon, so that mount is refused.
fn on_corruption(
    spec: &ModuleSpec,
    options: &MountOptions,
    fs: Arc<dyn FileSystem>,
) -> Result<Arc<dyn FileSystem>, String> {
    use vufuse_api::options::ErrorBehavior;
    if options.errors == Some(ErrorBehavior::Panic) {
        return Err(format!(
            "{}: errors=panic would end every process under umvu; use errors=remount-ro",
            spec.name
        ));
    }
    Ok(vufuse_api::errors::OnCorruption::wrap(
        fs,
        options.errors,
        spec.name,
    ))
}

fn prepare(spec: &ModuleSpec, args: &[OsString]) -> Result<Mount, String> {
    let parsed = parse_args(spec.write_policy, args)?;
    for warning in &parsed.options.warnings {
        eprintln!("{}: warning: {warning}", spec.name);
    }
    let fs = on_corruption(
        spec,
        &parsed.options,
        (spec.open)(&parsed.source, &parsed.options)?,
    )?;
    fs.init()
        .map_err(|e| format!("{}: {e}", parsed.source.display()))?;
    Ok(Mount::new(fs, parsed.options.read_only))
}

/// Copies argv into owned strings.
///
/// # Safety
/// `argv` must hold `argc` pointers to NUL-terminated strings (NULLs are skipped).
unsafe fn argv_to_vec(argc: c_int, argv: *mut *mut c_char) -> Vec<OsString> {
    if argv.is_null() {
        return Vec::new();
    }
    (0..argc.max(0) as usize)
        .filter_map(|i| {
            // SAFETY: i < argc, per the contract.
            let ptr = unsafe { *argv.add(i) };
            // SAFETY: non-null entries are NUL-terminated strings.
            (!ptr.is_null())
                .then(|| OsStr::from_bytes(unsafe { CStr::from_ptr(ptr) }.to_bytes()).to_owned())
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> Vec<OsString> {
        list.iter().map(OsString::from).collect()
    }

    const FAT: WritePolicy = WritePolicy::ReadOnlyUnlessForced;
    const EXT: WritePolicy = WritePolicy::ReadOnlyUnlessRw;

    #[test]
    fn vufuse_argv_shapes() {
        let a = parse_args(FAT, &args(&["vufusefatfs", "-o", "rw", "/i", "/m"])).unwrap();
        assert!(a.options.read_only, "the vufuse placeholder is no request");
        assert!(a.options.warnings.is_empty());
        assert_eq!(a.source, PathBuf::from("/i"));
        let a = parse_args(EXT, &args(&["vufuseext2", "-o", "rw", "/i", "/m"])).unwrap();
        assert!(
            a.options.read_only,
            "ext: placeholder rw is not fuse2fs's rw"
        );
        let a = parse_args(
            FAT,
            &args(&["x", "-o", "rw+,nosuid,mand,remount", "/i", "/m"]),
        )
        .unwrap();
        assert!(!a.options.read_only);
        assert_eq!(a.options.kernel.nosuid, Some(true));
        let a = parse_args(FAT, &args(&["x", "-o", "rw+,ro", "/i", "/m"])).unwrap();
        assert!(a.options.read_only, "vumount -r appends ro");
        let a = parse_args(FAT, &args(&["x", "-o", "force", "/i", "/m"])).unwrap();
        assert!(
            a.options.read_only,
            "force alone (vumount ate rw) stays read-only"
        );
        let a = parse_args(FAT, &args(&["x", "-orw,force,part=2,uid=7", "/i"])).unwrap();
        assert!(!a.options.read_only);
        assert_eq!((a.options.partition, a.options.uid), (Some(2), Some(7)));
        let a = parse_args(EXT, &args(&["x", "-o", "rw+", "/i", "/m"])).unwrap();
        assert!(!a.options.read_only);
    }

    #[test]
    fn bad_argv_is_an_error() {
        let e = parse_args(FAT, &args(&["x", "-o", "frob", "/i", "/m"])).unwrap_err();
        assert!(e.contains("frob"), "{e}");
        assert!(parse_args(FAT, &args(&["x", "-o"])).is_err());
        assert!(parse_args(FAT, &args(&["x"]))
            .unwrap_err()
            .contains("SOURCE"));
        assert!(parse_args(FAT, &args(&["x", "a", "b", "c"])).is_err());
        assert!(parse_args(FAT, &args(&["x", "-z", "a"])).is_err());
    }

    #[test]
    fn errors_option_wraps_the_driver_and_panic_is_refused() {
        struct Corrupt;
        impl FileSystem for Corrupt {
            fn lookup(
                &self,
                _: &vufuse_api::Context,
                _: vufuse_api::Ino,
                _: &OsStr,
            ) -> vufuse_api::Result<vufuse_api::Entry> {
                Err(vufuse_api::Errno::EUCLEAN)
            }
            fn getattr(
                &self,
                _: &vufuse_api::Context,
                _: vufuse_api::Ino,
                _: Option<vufuse_api::Fh>,
            ) -> vufuse_api::Result<vufuse_api::Attr> {
                Err(vufuse_api::Errno::EUCLEAN)
            }
            fn statfs(&self, _: &vufuse_api::Context) -> vufuse_api::Result<vufuse_api::StatFs> {
                Err(vufuse_api::Errno::EUCLEAN)
            }
            fn readdir(
                &self,
                _: &vufuse_api::Context,
                _: vufuse_api::Ino,
                _: vufuse_api::Fh,
                _: u64,
                _: &mut dyn FnMut(vufuse_api::DirEntry<'_>) -> bool,
            ) -> vufuse_api::Result<()> {
                Err(vufuse_api::Errno::EUCLEAN)
            }
        }
        let spec = ModuleSpec {
            name: "test",
            write_policy: FAT,
            open: |_, _| Ok(Arc::new(Corrupt)),
        };
        let ctx = vufuse_api::Context::current();
        let opts = |o: &str| {
            parse_args(FAT, &args(&["x", "-o", o, "/i", "/m"]))
                .unwrap()
                .options
        };
        let Err(e) = on_corruption(&spec, &opts("rw+,errors=panic"), Arc::new(Corrupt)) else {
            panic!("errors=panic accepted under umvu");
        };
        assert!(e.contains("errors=panic"), "{e}");
        let Ok(fs) = on_corruption(&spec, &opts("rw+,errors=remount-ro"), Arc::new(Corrupt)) else {
            panic!("errors=remount-ro refused");
        };
        assert_eq!(
            fs.lookup(&ctx, vufuse_api::Ino::ROOT, OsStr::new("x"))
                .unwrap_err(),
            vufuse_api::Errno::EUCLEAN
        );
        let made = fs.mkdir(&ctx, vufuse_api::Ino::ROOT, OsStr::new("d"), 0o755);
        assert_eq!(
            made.unwrap_err(),
            vufuse_api::Errno::EROFS,
            "read-only after a corruption"
        );
    }
}
