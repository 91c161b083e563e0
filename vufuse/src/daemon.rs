//! The command line and lifecycle shared by every FUSE binary.
//!
//! `NAME [-o OPTS]... [-f] [-d] [-h] [-V] SOURCE MOUNTPOINT`, also in the
//! order mount.fuse3 and /etc/fstab use (`NAME SOURCE MOUNTPOINT -o OPTS`),
//! so `mount -t fuse.NAME SOURCE DIR -o ...` works. By default the daemon
//! goes to the background once the mount is live: errors before that reach
//! the terminal and the exit status. `-f` stays in the foreground, `-d` also
//! prints every request. SIGINT, SIGTERM and SIGHUP unmount; an unmount from
//! outside (`fusermount3 -u`, `umount`) ends the daemon too; either way the
//! driver's `destroy` writes everything back before the process exits.
//!
//! Exit status: 0 after a clean unmount (or, for the starting process, once
//! the mount is live), 2 for usage errors (bad arguments or options), 1 for
//! failures (source or mount point unusable, mount refused).

use crate::fuse::{session_config, FuseAdapter, KernelCache};
use clap::{Arg, ArgAction, Command};
use std::ffi::OsString;
use std::fmt;
use std::io::{Read, Write};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use vufuse_api::fs::FileSystem;
use vufuse_api::options::{MountOptions, WritePolicy};

/// What a binary's mount point must be.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MountpointKind {
    /// A directory (filesystems, vudevpartx).
    Directory,
    /// A regular file (a single device shown as the mounted file, vudevramdisk).
    RegularFile,
}

/// Whether a binary needs a SOURCE argument.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SourceArg {
    /// SOURCE is required; the text names it in messages and help (`IMAGE`).
    Required(&'static str),
    /// SOURCE may be left out (or given as `none`) and is then ignored.
    Ignored,
}

/// Describes one FUSE binary for the shared command line.
#[derive(Clone, Copy, Debug)]
pub struct DaemonSpec {
    /// Program name: also the mount's subtype (`fuse.NAME`).
    pub name: &'static str,
    /// One line saying what the program serves.
    pub about: &'static str,
    /// The SOURCE argument.
    pub source: SourceArg,
    /// What the mount point must be.
    pub mountpoint: MountpointKind,
    /// How `ro`/`rw`/`rw+`/`force` decide the write mode.
    pub write_policy: WritePolicy,
    /// Options of this program, listed in `--help` (`"size=N  ramdisk size"` lines).
    pub extra_options: &'static str,
}

/// The parsed command line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Invocation {
    /// SOURCE as an absolute path (None when the binary ignores it or it was left out).
    pub source: Option<PathBuf>,
    /// MOUNTPOINT as an absolute, canonical path.
    pub mountpoint: PathBuf,
    /// The `-o` options, merged and resolved.
    pub options: MountOptions,
    /// Stay in the foreground.
    pub foreground: bool,
    /// Print every request and its result (`-d` or `-o debug`).
    pub debug: bool,
}

/// A step run once the mount is live, given the kernel-cache notifier.
pub type OnMounted = Box<dyn FnOnce(KernelCache) -> Result<(), String>>;

/// What a binary hands back to be mounted.
pub struct Served {
    /// The driver to serve.
    pub fs: Arc<dyn FileSystem>,
    /// Called once the mount is live, with the kernel-cache notifier.
    pub on_mounted: Option<OnMounted>,
    /// The name /proc/mounts shows as the source (e.g. a volume label)
    /// unless `-o fsname=` says otherwise; default: the SOURCE path.
    pub fsname: Option<String>,
}

impl Served {
    /// A driver that needs nothing after the mount.
    pub fn new(fs: Arc<dyn FileSystem>) -> Served {
        Served {
            fs,
            on_mounted: None,
            fsname: None,
        }
    }
}

/// Says what is wrong when the kernel's FUSE device cannot be used, before the mount fails
/// with an error that would seem to be about the mount point.
fn dev_fuse_usable() -> Result<(), DaemonError> {
    match std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/fuse")
    {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(DaemonError::Failed(
            "/dev/fuse does not exist: this kernel or container has no FUSE \
             (modprobe fuse, or run the container with --device /dev/fuse)"
                .to_string(),
        )),
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => Err(DaemonError::Failed(
            "/dev/fuse: permission denied: this user may not open it \
                 (it is usually mode 0666; ask the administrator, or mount as root)"
                .to_string(),
        )),
        Err(e) => Err(DaemonError::Failed(format!(
            "/dev/fuse: {}",
            crate::daemon::plain_io_error(&e)
        ))),
    }
}

/// An I/O error's text without Rust's "(os error N)" suffix.
pub fn plain_io_error(e: &std::io::Error) -> String {
    let text = e.to_string();
    match text.find(" (os error") {
        Some(i) => text[..i].to_string(),
        None => text,
    }
}

/// Why a daemon stopped before or while serving.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DaemonError {
    /// Bad command line or options: exit status 2.
    Usage(String),
    /// The source, the mount point or the mount itself failed: exit status 1.
    Failed(String),
}

impl DaemonError {
    /// The exit status for this error.
    pub fn exit_code(&self) -> u8 {
        match self {
            DaemonError::Usage(_) => 2,
            DaemonError::Failed(_) => 1,
        }
    }
}

impl fmt::Display for DaemonError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DaemonError::Usage(m) | DaemonError::Failed(m) => f.write_str(m),
        }
    }
}

/// Runs a FUSE binary: parses `std::env::args_os()`, checks the mount point,
/// calls `serve` to open the source, mounts, and serves until unmounted.
pub fn main<F>(spec: &DaemonSpec, serve: F) -> ExitCode
where
    F: FnOnce(&Invocation) -> Result<Served, String>,
{
    main_with_args(spec, std::env::args_os(), serve)
}

/// [`main`] with the command line given (`args` includes the program name):
/// for a binary that rewrites its arguments first (e.g. takes its own `-o`
/// words out before the shared parser sees them).
pub fn main_with_args<I, T, F>(spec: &DaemonSpec, args: I, serve: F) -> ExitCode
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
    F: FnOnce(&Invocation) -> Result<Served, String>,
{
    let invocation = match parse_command_line(spec, args) {
        Ok(Parsed::Run(invocation)) => invocation,
        Ok(Parsed::Exit(code)) => return ExitCode::from(code),
        Err(e) => return report(spec, &e),
    };
    for warning in &invocation.options.warnings {
        eprintln!("{}: warning: {warning}", spec.name);
    }
    if let Err(e) = check_mountpoint(&invocation.mountpoint, spec.mountpoint) {
        return report(spec, &e);
    }
    let ready = if invocation.foreground {
        None
    } else {
        match daemonize() {
            Ok(Role::Parent(code)) => return ExitCode::from(code),
            Ok(Role::Daemon(ready)) => Some(ready),
            Err(e) => return report(spec, &e),
        }
    };
    match serve_until_unmounted(spec, &invocation, serve, ready) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => report(spec, &e),
    }
}

fn report(spec: &DaemonSpec, e: &DaemonError) -> ExitCode {
    eprintln!("{}: {e}", spec.name);
    ExitCode::from(e.exit_code())
}

/// The outcome of parsing: run, or exit at once with a status (after `--help`).
#[derive(Debug, PartialEq, Eq)]
pub enum Parsed {
    /// Mount and serve.
    Run(Box<Invocation>),
    /// Help or version was printed: exit with this status.
    Exit(u8),
}

/// The clap [`Command`] of a FUSE binary, as its `--help` shows it: what the man page and
/// shell completion generators render, without running the daemon.
pub fn command(spec: &DaemonSpec) -> Command {
    let source_name = match spec.source {
        SourceArg::Required(name) => name,
        SourceArg::Ignored => "none",
    };
    let mode_note = match spec.write_policy {
        WritePolicy::ReadOnlyUnlessForced => {
            "The filesystem is mounted READ-ONLY unless -o rw+ (or -o rw,force) is given;\n\
             plain -o rw alone warns and stays read-only. -o ro always wins."
        }
        WritePolicy::ReadWriteUnlessRo => "The device is served read-write unless -o ro is given.",
        WritePolicy::ReadOnlyUnlessRw => {
            "The filesystem is mounted READ-ONLY unless -o rw+ or -o rw is given. -o ro always wins."
        }
    };
    let after = format!(
        "{mode_note}\n\n\
         Mount options (-o, comma separated, may be repeated):\n  \
         ro, rw, rw+, force       write mode (see above)\n  \
         uid=N, gid=N             owner shown for every file\n  \
         umask=, dmask=, fmask=   octal permission masks\n  \
         allow_other, allow_root  let other users (or root) use the mount\n  \
         default_permissions      let the kernel check permissions\n  \
         fsname=NAME, subtype=T   what /proc/mounts shows\n  \
         nosuid, nodev, noexec, noatime, sync, dirsync (and their opposites)\n  \
         busy_poll, no_busy_poll  while busy, poll for requests instead of sleeping\n  \
                                  (default: on for fuseext2, fusefatfs and vufs)\n  \
         debug                    same as -d\n  \
         auto_unmount             the mount goes away if the daemon dies (even SIGKILL)\n  \
         negative_timeout=S       seconds the kernel may remember a missing name\n  \
         noforget                 accepted (node IDs stay valid anyway)\n{}\n\
         The daemon goes to the background once the mount is live; end it with\n  \
         fusermount3 -u MOUNTPOINT   (or umount, or SIGTERM).\n\
         Exit status: 0 ok, 1 failure, 2 usage error.\n\
         It can also be started as: mount -t fuse.{} {source_name} MOUNTPOINT -o OPTIONS",
        spec.extra_options, spec.name,
    );
    let positional_help = match spec.source {
        SourceArg::Required(name) => format!("{name} MOUNTPOINT"),
        SourceArg::Ignored => "[none] MOUNTPOINT".to_string(),
    };
    Command::new(spec.name)
        .about(spec.about)
        .version(env!("CARGO_PKG_VERSION"))
        .override_usage(format!(
            "{} [-o OPTIONS]... [-f] [-d] {positional_help}",
            spec.name
        ))
        .after_help(after)
        .arg(
            Arg::new("options")
                .short('o')
                .value_name("OPTIONS")
                .action(ArgAction::Append)
                .allow_hyphen_values(false)
                .help("mount options, comma separated"),
        )
        .arg(
            Arg::new("foreground")
                .short('f')
                .action(ArgAction::SetTrue)
                .help("stay in the foreground"),
        )
        .arg(
            Arg::new("single")
                .short('s')
                .action(ArgAction::SetTrue)
                .help("serve with one thread (as max_threads=1)"),
        )
        .arg(
            Arg::new("debug")
                .short('d')
                .action(ArgAction::SetTrue)
                .help("print every request and its result (implies -f)"),
        )
        .arg(
            Arg::new("paths")
                .value_name("PATHS")
                .value_parser(clap::value_parser!(OsString))
                .num_args(0..)
                .action(ArgAction::Append)
                .help(positional_help),
        )
}

/// Parses a command line (`args` includes the program name).
pub fn parse_command_line<I, T>(spec: &DaemonSpec, args: I) -> Result<Parsed, DaemonError>
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    let matches = match command(spec).try_get_matches_from(args) {
        Ok(m) => m,
        Err(e) => {
            use clap::error::ErrorKind;
            return match e.kind() {
                ErrorKind::DisplayHelp | ErrorKind::DisplayVersion => {
                    let _ = e.print();
                    Ok(Parsed::Exit(0))
                }
                _ => Err(DaemonError::Usage(
                    e.to_string()
                        .trim_start_matches("error: ")
                        .trim_end()
                        .to_string(),
                )),
            };
        }
    };
    let option_texts: Vec<&String> = matches
        .get_many::<String>("options")
        .map(|v| v.collect())
        .unwrap_or_default();
    let mut options = MountOptions::parse_all(option_texts, spec.write_policy)
        .map_err(|e| DaemonError::Usage(e.to_string()))?;
    if matches.get_flag("single") {
        options.fuse.max_threads = Some(1);
    }
    let paths: Vec<&OsString> = matches
        .get_many::<OsString>("paths")
        .map(|v| v.collect())
        .unwrap_or_default();
    let (source, mountpoint) = match (spec.source, paths.as_slice()) {
        (SourceArg::Required(name), []) => {
            return Err(DaemonError::Usage(format!(
                "missing {name} and MOUNTPOINT (try --help)"
            )))
        }
        (SourceArg::Required(_), [_]) => {
            return Err(DaemonError::Usage(
                "missing MOUNTPOINT (try --help)".to_string(),
            ))
        }
        (SourceArg::Required(_), [source, mountpoint]) => (Some(*source), *mountpoint),
        (SourceArg::Ignored, []) => {
            return Err(DaemonError::Usage(
                "missing MOUNTPOINT (try --help)".to_string(),
            ))
        }
        (SourceArg::Ignored, [mountpoint]) => (None, *mountpoint),
        (SourceArg::Ignored, [_, mountpoint]) => (None, *mountpoint),
        (_, [_, _, extra, ..]) => {
            return Err(DaemonError::Usage(format!(
                "unexpected argument {:?} (try --help)",
                extra
            )))
        }
    };
    let source = match source {
        Some(s) if s.is_empty() => {
            return Err(DaemonError::Usage("SOURCE is empty".to_string()));
        }
        // An NBD URI stays as written (it is not a path to make absolute).
        Some(s) if s.to_str().is_some_and(vufuse_mount::is_uri) => Some(PathBuf::from(s)),
        Some(s) => Some(
            std::path::absolute(s)
                .map_err(|e| DaemonError::Failed(format!("{}: {e}", Path::new(s).display())))?,
        ),
        None => None,
    };
    if mountpoint.is_empty() {
        return Err(DaemonError::Usage("MOUNTPOINT is empty".to_string()));
    }
    let mountpoint = std::fs::canonicalize(mountpoint).map_err(|e| {
        DaemonError::Failed(format!(
            "mount point {}: {}",
            Path::new(mountpoint).display(),
            vudev::Errno::from(e)
        ))
    })?;
    let debug = matches.get_flag("debug") || options.debug;
    let foreground = matches.get_flag("foreground") || debug;
    Ok(Parsed::Run(Box::new(Invocation {
        source,
        mountpoint,
        options,
        foreground,
        debug,
    })))
}

/// Checks that `path` exists, has the right kind, and is not already a mount point.
pub fn check_mountpoint(path: &Path, kind: MountpointKind) -> Result<(), DaemonError> {
    let meta = std::fs::metadata(path).map_err(|e| {
        DaemonError::Failed(format!(
            "mount point {}: {}",
            path.display(),
            vudev::Errno::from(e)
        ))
    })?;
    match kind {
        MountpointKind::Directory if !meta.is_dir() => {
            return Err(DaemonError::Failed(format!(
                "mount point {} is not a directory",
                path.display()
            )))
        }
        MountpointKind::RegularFile if !meta.is_file() => {
            return Err(DaemonError::Failed(format!(
                "mount point {} is not a regular file",
                path.display()
            )))
        }
        _ => {}
    }
    let mountinfo = std::fs::read("/proc/self/mountinfo").unwrap_or_default();
    if is_mount_point(&mountinfo, path) {
        return Err(DaemonError::Failed(format!(
            "mount point {} is busy: something is already mounted there",
            path.display()
        )));
    }
    Ok(())
}

/// True if `path` (canonical) is the mount point of a line of `mountinfo`.
pub fn is_mount_point(mountinfo: &[u8], path: &Path) -> bool {
    use std::os::unix::ffi::OsStrExt;
    let wanted = path.as_os_str().as_bytes();
    mountinfo.split(|&b| b == b'\n').any(|line| {
        line.split(|&b| b == b' ')
            .nth(4)
            .is_some_and(|field| unescape_mountinfo(field) == wanted)
    })
}

/// Undoes the kernel's octal escapes (`\040` for a space) in a mountinfo field.
fn unescape_mountinfo(field: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(field.len());
    let mut i = 0;
    while i < field.len() {
        let octal = field
            .get(i + 1..i + 4)
            .filter(|d| field[i] == b'\\' && d.iter().all(|c| (b'0'..=b'7').contains(c)));
        match octal {
            Some(d) => {
                let value = d.iter().fold(0u32, |acc, c| acc * 8 + u32::from(c - b'0'));
                out.push(value as u8);
                i += 4;
            }
            None => {
                out.push(field[i]);
                i += 1;
            }
        }
    }
    out
}

/// The write end of the pipe on which the daemon tells the waiting parent
/// that the mount is live.
struct Ready(OwnedFd);

enum Role {
    /// The starting process: exit with this status.
    Parent(u8),
    /// The daemon: mount, then signal through `Ready`.
    Daemon(Ready),
}

/// Forks before anything else runs: the parent waits until the daemon says
/// the mount is live (exit 0) or the daemon exits (its status).
///
/// Forking before opening the source and mounting, rather than after, keeps
/// the fork in a single-threaded process (a driver may start threads as it
/// opens), while errors still reach the terminal: the daemon keeps the
/// terminal as stderr until it is ready.
#[allow(unsafe_code)]
fn daemonize() -> Result<Role, DaemonError> {
    let (read_end, write_end) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)
        .map_err(|e| DaemonError::Failed(format!("pipe: {}", vudev::Errno::from(e))))?;
    // SAFETY: the process is single-threaded here (nothing has spawned a
    // thread yet: no driver, no fuser session, no signal thread), so the
    // child may run arbitrary code after fork.
    let pid = unsafe { libc::fork() };
    match pid {
        -1 => Err(DaemonError::Failed(format!(
            "fork: {}",
            vudev::Errno::last()
        ))),
        0 => {
            drop(read_end);
            Ok(Role::Daemon(Ready(write_end)))
        }
        child => {
            drop(write_end);
            let mut byte = [0u8; 1];
            let mut pipe = std::fs::File::from(read_end);
            loop {
                match pipe.read(&mut byte) {
                    Ok(1) => return Ok(Role::Parent(0)),
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                    // EOF: the daemon exited before the mount was live; it
                    // printed why. Pass on its status.
                    _ => break,
                }
            }
            let pid = rustix::process::Pid::from_raw(child);
            let status = rustix::process::waitpid(pid, rustix::process::WaitOptions::empty());
            let code = match status {
                Ok(Some((_, status))) => match status.exit_status() {
                    Some(code) if code != 0 => u8::try_from(code).unwrap_or(1),
                    _ => 1,
                },
                _ => 1,
            };
            Ok(Role::Parent(code))
        }
    }
}

impl Ready {
    /// Detaches from the terminal and releases the waiting parent.
    fn signal(self) -> Result<(), DaemonError> {
        let _ = rustix::process::setsid();
        let null = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/null")
            .map_err(|e| DaemonError::Failed(format!("/dev/null: {e}")))?;
        for target in [
            rustix::stdio::dup2_stdin,
            rustix::stdio::dup2_stdout,
            rustix::stdio::dup2_stderr,
        ] {
            target(&null).map_err(|e| {
                DaemonError::Failed(format!("redirecting stdio: {}", vudev::Errno::from(e)))
            })?;
        }
        let _ = std::env::set_current_dir("/");
        let mut pipe = std::fs::File::from(self.0);
        pipe.write_all(&[0])
            .map_err(|e| DaemonError::Failed(format!("telling the parent: {e}")))
    }
}

/// Kernel read-ahead asked for on each mount, in KiB.
const READ_AHEAD_KB: u32 = 4096;

/// Raises the kernel's read-ahead window for the mount on `mountpoint` from FUSE's 128 KiB to
/// [`READ_AHEAD_KB`], so a sequential reader is served by large requests, several in flight,
/// instead of 128 KiB ones: cold sequential reads take about half the time and a third of the
/// daemon's CPU. FUSE's INIT cannot raise it beyond 128 KiB; the mount's backing-device
/// setting in sysfs can, for root. Without the privilege it stays as it was: a missed
/// optimisation, not an error. Reads /proc/self/mountinfo rather than stat(2)ing the mount
/// point, which would wait for this very daemon.
fn widen_readahead(mountpoint: &Path) {
    let Ok(mountinfo) = std::fs::read("/proc/self/mountinfo") else {
        return;
    };
    if let Some(device) = mount_device(&mountinfo, mountpoint) {
        let _ = std::fs::write(
            format!("/sys/class/bdi/{device}/read_ahead_kb"),
            READ_AHEAD_KB.to_string(),
        );
    }
}

/// The device (`MAJ:MIN`) of the last mount on `path` in a mountinfo text: the newest mount
/// on a path is listed last, and that is the one just made.
fn mount_device(mountinfo: &[u8], path: &Path) -> Option<String> {
    use std::os::unix::ffi::OsStrExt;
    let wanted = path.as_os_str().as_bytes();
    mountinfo.split(|&b| b == b'\n').rev().find_map(|line| {
        let fields: Vec<&[u8]> = line.split(|&b| b == b' ').collect();
        (fields.len() > 4 && unescape_mountinfo(fields[4]) == wanted)
            .then(|| String::from_utf8_lossy(fields[2]).into_owned())
    })
}

/// Which mount a daemon made, to tell it later from a newer mount on the same path.
#[derive(Clone, Debug, PartialEq, Eq)]
struct MountIdentity {
    /// The device of the newest mount on the path, from mountinfo. Anonymous device numbers,
    /// like mountinfo's mount IDs, are handed out again as soon as they are freed, so a
    /// mount made right after ours was removed can carry the same one.
    device: String,
    /// The kernel's 64-bit mount ID, never reused (statx `STATX_MNT_ID_UNIQUE`, Linux 6.8+).
    unique: Option<u64>,
}

/// The unique mount ID of the mount on `mountpoint`. A path walk, so only done when needed:
/// `AT_STATX_DONT_SYNC` keeps any FUSE daemon (this very one, or another that may not
/// answer) out of it, `AT_NO_AUTOMOUNT` any automounter.
fn unique_mount_id(mountpoint: &Path) -> Option<u64> {
    use rustix::fs::{statx, AtFlags, StatxFlags, CWD};
    const STATX_MNT_ID_UNIQUE: u32 = 0x4000;
    let unique = StatxFlags::from_bits_retain(STATX_MNT_ID_UNIQUE);
    let st = statx(
        CWD,
        mountpoint,
        AtFlags::STATX_DONT_SYNC | AtFlags::NO_AUTOMOUNT,
        unique,
    )
    .ok()?;
    (st.stx_mask & STATX_MNT_ID_UNIQUE != 0).then_some(st.stx_mnt_id)
}

fn mountinfo_device(mountpoint: &Path) -> Option<String> {
    let mountinfo = std::fs::read("/proc/self/mountinfo").ok()?;
    mount_device(&mountinfo, mountpoint)
}

/// The identity of the mount on `mountpoint` now (right after mounting).
fn mount_identity(mountpoint: &Path) -> Option<MountIdentity> {
    Some(MountIdentity {
        device: mountinfo_device(mountpoint)?,
        unique: unique_mount_id(mountpoint),
    })
}

/// Whether the mount on `mountpoint` is still `ours`. Usually it is gone and mountinfo says
/// so without touching the path; only when the device matches (ours, or a reused number)
/// does the unique ID decide. If that ID cannot be read again, the answer is "not ours":
/// a dead mount may be left behind, never someone else's taken down.
fn still_ours(mountpoint: &Path, ours: &MountIdentity) -> bool {
    if mountinfo_device(mountpoint).as_ref() != Some(&ours.device) {
        return false;
    }
    match ours.unique {
        Some(id) => unique_mount_id(mountpoint) == Some(id),
        None => true,
    }
}

fn serve_until_unmounted<F>(
    spec: &DaemonSpec,
    invocation: &Invocation,
    serve: F,
    ready: Option<Ready>,
) -> Result<(), DaemonError>
where
    F: FnOnce(&Invocation) -> Result<Served, String>,
{
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
    // Catch the signals before mounting, so one that arrives during the
    // mount is handled (by unmounting) once the session runs.
    let signals = signal_hook::iterator::Signals::new([SIGINT, SIGTERM, SIGHUP])
        .map_err(|e| DaemonError::Failed(format!("installing signal handlers: {e}")))?;
    let served = serve(invocation).map_err(DaemonError::Failed)?;
    let fsname = fsname_of(spec, invocation, &served);
    let caps = served.fs.capabilities();
    let polls = polls_for(invocation, &caps);
    let config = session_config(&invocation.options, &caps, polls, &fsname, spec.name);
    // Resolved before mounting: once mounted, resolving it would wait for this very daemon.
    let mountpoint_abs = std::fs::canonicalize(&invocation.mountpoint).ok();
    let busy_poll = polls.then(|| Arc::new(crate::fuse::BusyPoll::new()));
    let mut adapter =
        FuseAdapter::new(served.fs, invocation.debug).with_tuning(&invocation.options.fuse);
    let lifecycle = adapter.lifecycle();
    if let Some(poll) = &busy_poll {
        adapter = adapter.with_busy_poll(poll.clone());
    }
    dev_fuse_usable()?;
    let session = fuser::Session::new(adapter, &invocation.mountpoint, &config).map_err(|e| {
        DaemonError::Failed(format!(
            "cannot mount on {}: {e}",
            invocation.mountpoint.display()
        ))
    })?;
    // Which mount is ours: the newest mount on the mount point, right now.
    let our_mount = mountpoint_abs.as_deref().and_then(|mountpoint| {
        widen_readahead(mountpoint);
        mount_identity(mountpoint)
    });
    if let Some(poll) = &busy_poll {
        attach_busy_poll(&session, poll, spec.name);
    }
    if let Some(on_mounted) = served.on_mounted {
        on_mounted(KernelCache::new(session.notifier())).map_err(DaemonError::Failed)?;
    }
    spawn_signal_thread(signals, invocation, spec.name)?;
    if let Some(ready) = ready {
        ready.signal()?;
    }
    // fuser unmounts *by path* when a session ends, even when the kernel has already removed
    // the mount (its "still mounted?" check reads POLLERR the wrong way round), and by then the
    // path may hold a new mount made right after ours was unmounted: it would take that one
    // down. So the session runs detached from its mount handle, and the handle is never
    // dropped; only a mount that is still ours is unmounted here.
    let background = session
        .spawn()
        .map_err(|e| DaemonError::Failed(format!("starting the session: {e}")))?;
    lifecycle.wait_ended();
    std::mem::forget(background);
    let still_ours = our_mount
        .as_ref()
        .zip(mountpoint_abs.as_deref())
        .is_some_and(|(ours, mountpoint)| still_ours(mountpoint, ours));
    if still_ours {
        let _ = unmount(&invocation.mountpoint);
        return Err(DaemonError::Failed(
            "serving the mount failed; unmounted".to_string(),
        ));
    }
    Ok(())
}

/// The name the mount shows in /proc/mounts: the driver's, else the source, else the daemon's.
fn fsname_of(spec: &DaemonSpec, invocation: &Invocation, served: &Served) -> String {
    served.fsname.clone().unwrap_or_else(|| {
        invocation
            .source
            .as_ref()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| spec.name.to_string())
    })
}

/// Whether the serving thread polls: as asked, else for drivers that lose nothing with one
/// thread and where the poller can see contention for the CPU (to step aside); never with
/// more than one serving thread (max_threads=N), since polling needs exactly one.
fn polls_for(invocation: &Invocation, caps: &vufuse_api::Capabilities) -> bool {
    let many_threads = invocation.options.fuse.max_threads.is_some_and(|n| n > 1);
    !many_threads
        && invocation.options.busy_poll.unwrap_or_else(|| {
            caps.one_thread_suffices && crate::fuse::BusyPoll::can_see_contention()
        })
}

/// Gives the poller its own descriptor of the session's /dev/fuse; serving works without
/// it, only with a sleep per request.
fn attach_busy_poll<FS: fuser::Filesystem>(
    session: &fuser::Session<FS>,
    poll: &Arc<crate::fuse::BusyPoll>,
    name: &str,
) {
    use std::os::fd::AsFd;
    let device = session
        .as_fd()
        .try_clone_to_owned()
        .and_then(|fd| poll.attach(fd));
    if let Err(e) = device {
        eprintln!("{name}: busy_poll: {e}; serving without it");
    }
}

/// SIGINT, SIGTERM and SIGHUP unmount (lazily when files are still open), from a thread of
/// their own.
fn spawn_signal_thread(
    mut signals: signal_hook::iterator::Signals,
    invocation: &Invocation,
    name: &'static str,
) -> Result<(), DaemonError> {
    let mountpoint = invocation.mountpoint.clone();
    let verbose = invocation.foreground;
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            for signal in signals.forever() {
                if verbose {
                    eprintln!(
                        "{name}: signal {signal}: unmounting {}",
                        mountpoint.display()
                    );
                }
                match unmount(&mountpoint) {
                    Ok(Unmounted::Detached) if verbose => eprintln!(
                        "{name}: files are still open: detached; serving them until they are closed"
                    ),
                    Err(e) if verbose => eprintln!("{name}: {e}"),
                    _ => {}
                }
            }
        })
        .map_err(|e| DaemonError::Failed(format!("starting the signal thread: {e}")))?;
    Ok(())
}

/// How [`unmount`] ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unmounted {
    /// The mount is gone.
    Done,
    /// Files were open: the mount left the namespace at once and the session
    /// ends when the last of them is closed.
    Detached,
    /// Nothing was mounted there any more.
    AlreadyGone,
}

/// Unmounts `mountpoint`: plainly, lazily if it is busy, through fusermount3
/// when not privileged. The session then ends and the driver is destroyed.
pub fn unmount(mountpoint: &Path) -> Result<Unmounted, String> {
    use rustix::mount::UnmountFlags;
    match rustix::mount::unmount(mountpoint, UnmountFlags::empty()) {
        Ok(()) => Ok(Unmounted::Done),
        Err(rustix::io::Errno::INVAL) => Ok(Unmounted::AlreadyGone),
        Err(rustix::io::Errno::BUSY) => rustix::mount::unmount(mountpoint, UnmountFlags::DETACH)
            .map(|()| Unmounted::Detached)
            .map_err(|e| format!("unmounting {}: {}", mountpoint.display(), e)),
        Err(rustix::io::Errno::PERM) => {
            let status = std::process::Command::new("fusermount3")
                .arg("-u")
                .arg("-z")
                .arg("--")
                .arg(mountpoint)
                .stdin(std::process::Stdio::null())
                .status()
                .map_err(|e| format!("running fusermount3: {e}"))?;
            if status.success() {
                Ok(Unmounted::Done)
            } else {
                Err(format!(
                    "fusermount3 -u {} failed ({status})",
                    mountpoint.display()
                ))
            }
        }
        Err(e) => Err(format!("unmounting {}: {}", mountpoint.display(), e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_newest_mount_on_a_path_gives_the_device() {
        let info = b"36 35 98:0 / /mnt/a\\040b rw - ext3 /dev/root rw\n\
                     40 36 0:52 / /mnt/a\\040b rw - fuse.vufs x rw\n\
                     37 35 0:5 / /proc rw - proc proc rw\n";
        assert_eq!(
            mount_device(info, Path::new("/mnt/a b")).as_deref(),
            Some("0:52")
        );
        assert_eq!(mount_device(info, Path::new("/mnt")), None);
    }

    /// Two mounts made one after the other on one path get the same anonymous device number
    /// (and mountinfo ID), and a daemon whose mount was removed must not take the second for
    /// its own.
    #[test]
    fn a_new_mount_on_the_same_path_is_not_ours() {
        use rustix::mount::{mount, unmount, MountFlags, UnmountFlags};
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().canonicalize().unwrap();
        let mount_tmpfs = || {
            mount(
                "vutest",
                &path,
                "tmpfs",
                MountFlags::empty(),
                None::<&std::ffi::CStr>,
            )
        };
        if let Err(e) = mount_tmpfs() {
            eprintln!("skipped: cannot mount a tmpfs here ({e}): needs root");
            return;
        }
        let first = mount_identity(&path).unwrap();
        assert!(still_ours(&path, &first));
        unmount(&path, UnmountFlags::empty()).unwrap();
        assert!(!still_ours(&path, &first), "nothing mounted: not ours");
        mount_tmpfs().unwrap();
        let second = mount_identity(&path).unwrap();
        let same_device = second.device == first.device;
        let verdict = still_ours(&path, &first);
        unmount(&path, UnmountFlags::empty()).unwrap();
        if first.unique.is_none() {
            eprintln!("skipped: this kernel has no STATX_MNT_ID_UNIQUE (Linux 6.8+)");
            return;
        }
        assert!(
            !verdict,
            "a new mount (same device: {same_device}) is not ours"
        );
        assert_ne!(first.unique, second.unique);
    }

    const SPEC: DaemonSpec = DaemonSpec {
        name: "vutest",
        about: "test",
        source: SourceArg::Required("IMAGE"),
        mountpoint: MountpointKind::Directory,
        write_policy: WritePolicy::ReadOnlyUnlessForced,
        extra_options: "",
    };

    fn parse(args: &[&str]) -> Result<Parsed, DaemonError> {
        parse_command_line(&SPEC, std::iter::once("vutest").chain(args.iter().copied()))
    }

    fn run(args: &[&str]) -> Invocation {
        match parse(args).unwrap() {
            Parsed::Run(i) => *i,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn options_before_or_after_the_paths() {
        let dir = tempfile::tempdir().unwrap();
        let mp = dir.path().to_str().unwrap();
        let a = run(&["-o", "rw+", "-o", "uid=5", "-f", "img", mp]);
        let b = run(&["img", mp, "-o", "rw+,uid=5", "-f"]);
        let c = run(&["-orw+,uid=5", "img", "-f", mp]);
        assert_eq!(a, b);
        assert_eq!(a, c);
        assert!(!a.options.read_only);
        assert_eq!(a.options.uid, Some(5));
        assert!(a.foreground && !a.debug);
        assert!(a.source.unwrap().is_absolute());
        assert_eq!(a.mountpoint, std::fs::canonicalize(mp).unwrap());
    }

    #[test]
    fn debug_implies_foreground() {
        let dir = tempfile::tempdir().unwrap();
        let mp = dir.path().to_str().unwrap();
        let i = run(&["-d", "img", mp]);
        assert!(i.debug && i.foreground);
        let i = run(&["-o", "debug", "img", mp]);
        assert!(i.debug && i.foreground);
        let i = run(&["img", mp]);
        assert!(!i.debug && !i.foreground, "daemonizes by default");
    }

    #[test]
    fn usage_errors_exit_2_failures_exit_1() {
        let dir = tempfile::tempdir().unwrap();
        let mp = dir.path().to_str().unwrap();
        let e = parse(&[]).unwrap_err();
        assert_eq!(e.exit_code(), 2);
        assert!(e.to_string().contains("missing IMAGE"), "{e}");
        let e = parse(&["img"]).unwrap_err();
        assert!(e.to_string().contains("missing MOUNTPOINT"), "{e}");
        let e = parse(&["-o", "bogus", "img", mp]).unwrap_err();
        assert_eq!(e.exit_code(), 2);
        assert!(e.to_string().contains("'bogus'"), "{e}");
        let e = parse(&["-x", "img", mp]).unwrap_err();
        assert_eq!(e.exit_code(), 2);
        let e = parse(&["img", mp, "extra"]).unwrap_err();
        assert_eq!(e.exit_code(), 2);
        assert!(e.to_string().contains("extra"), "{e}");
        let e = parse(&["img", "/nonexistent/mp"]).unwrap_err();
        assert_eq!(e.exit_code(), 1);
        assert!(e.to_string().contains("/nonexistent/mp"), "{e}");
        assert_eq!(parse(&["--help"]).unwrap(), Parsed::Exit(0));
        assert_eq!(parse(&["-V"]).unwrap(), Parsed::Exit(0));
    }

    #[test]
    fn help_states_the_write_mode() {
        let help = command(&SPEC).render_long_help().to_string();
        assert!(help.contains("READ-ONLY unless -o rw+"), "{help}");
        assert!(help.contains("rw,force"), "{help}");
    }

    #[test]
    fn source_may_be_left_out_when_ignored() {
        let spec = DaemonSpec {
            source: SourceArg::Ignored,
            mountpoint: MountpointKind::RegularFile,
            ..SPEC
        };
        let file = tempfile::NamedTempFile::new().unwrap();
        let path = file.path().to_str().unwrap();
        for args in [vec!["vu", path], vec!["vu", "none", path]] {
            match parse_command_line(&spec, args).unwrap() {
                Parsed::Run(i) => {
                    assert_eq!(i.source, None);
                    assert_eq!(i.mountpoint, std::fs::canonicalize(path).unwrap());
                }
                other => panic!("{other:?}"),
            }
        }
    }

    #[test]
    fn mount_point_checks() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("f");
        std::fs::write(&file, b"").unwrap();
        assert!(check_mountpoint(dir.path(), MountpointKind::Directory).is_ok());
        let e = check_mountpoint(&file, MountpointKind::Directory).unwrap_err();
        assert!(e.to_string().contains("not a directory"), "{e}");
        assert!(check_mountpoint(&file, MountpointKind::RegularFile).is_ok());
        let e = check_mountpoint(dir.path(), MountpointKind::RegularFile).unwrap_err();
        assert!(e.to_string().contains("not a regular file"), "{e}");
        let e = check_mountpoint(Path::new("/proc"), MountpointKind::Directory).unwrap_err();
        assert!(e.to_string().contains("busy"), "{e}");
        assert_eq!(e.exit_code(), 1);
    }

    #[test]
    fn mountinfo_escapes() {
        let info = b"36 35 98:0 / /mnt/with\\040space rw - ext3 /dev/root rw\n\
                     37 35 0:5 / /proc rw - proc proc rw\n";
        assert!(is_mount_point(info, Path::new("/mnt/with space")));
        assert!(is_mount_point(info, Path::new("/proc")));
        assert!(!is_mount_point(info, Path::new("/mnt")));
        assert_eq!(unescape_mountinfo(b"a\\134b\\0"), b"a\\b\\0".to_vec());
    }
}
