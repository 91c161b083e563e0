//! Mount options, parsed once into typed values that every front end uses
//! (the FUSE daemons now, the VUOS modules later).
//!
//! The text is what `-o` carries: comma separated `key` or `key=value`
//! items; several `-o` arguments are merged in order, a later item
//! overriding an earlier one. The read-only rules follow the C fusefatfs:
//! a filesystem is read-only unless `rw+` (or `rw` together with `force`)
//! is given, and `ro` wins wherever it stands. Devices (vudevpartx, vudevramdisk) are
//! read-write unless `ro` is given.

use std::fmt;

/// How a mount decides between read-only and read-write.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WritePolicy {
    /// Filesystem drivers (as fusefatfs): read-only unless `rw+`, or `rw`
    /// with `force`; plain `rw` alone warns and stays read-only.
    ReadOnlyUnlessForced,
    /// Devices: read-write unless `ro`.
    ReadWriteUnlessRo,
    /// Filesystem drivers that follow fuse2fs (fuseext2): read-only unless
    /// `rw+` (fuse-ext2's spelling) or plain `rw` (fuse2fs's); `ro` wins.
    ReadOnlyUnlessRw,
}

/// A generic kernel mount flag, passed through to the kernel mount.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum KernelFlag {
    /// `nosuid` (true) or `suid` (false).
    NoSuid,
    /// `nodev` or `dev`.
    NoDev,
    /// `noexec` or `exec`.
    NoExec,
    /// `noatime` or `atime`.
    NoAtime,
    /// `sync` or `async`.
    Sync,
    /// `dirsync` (no opposite).
    DirSync,
}

/// The kernel flags a mount asked for; `None` leaves the front end's default.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KernelFlags {
    /// `Some(true)` for `nosuid`, `Some(false)` for `suid`.
    pub nosuid: Option<bool>,
    /// `Some(true)` for `nodev`, `Some(false)` for `dev`.
    pub nodev: Option<bool>,
    /// `Some(true)` for `noexec`, `Some(false)` for `exec`.
    pub noexec: Option<bool>,
    /// `Some(true)` for `noatime`, `Some(false)` for `atime`.
    pub noatime: Option<bool>,
    /// `Some(true)` for `sync`, `Some(false)` for `async`.
    pub sync: Option<bool>,
    /// `dirsync` given.
    pub dirsync: bool,
}

/// Everything the `-o` options of one mount say, resolved.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MountOptions {
    /// The mount refuses writes (after applying the [`WritePolicy`]).
    pub read_only: bool,
    /// `force`: accept what the driver would otherwise refuse (with `rw`: read-write).
    pub force: bool,
    /// `uid=N`: owner shown for every file.
    pub uid: Option<u32>,
    /// `gid=N`: group shown for every file.
    pub gid: Option<u32>,
    /// `umask=OCTAL`: permission bits removed from every file and directory.
    pub umask: Option<u32>,
    /// `dmask=OCTAL`: permission bits removed from directories (overrides `umask`).
    pub dmask: Option<u32>,
    /// `fmask=OCTAL`: permission bits removed from non-directories (overrides `umask`).
    pub fmask: Option<u32>,
    /// `part=N`: the partition to mount, Linux numbering (0: the whole disk).
    pub partition: Option<u32>,
    /// `allow_other`: let every user reach the mount.
    pub allow_other: bool,
    /// `allow_root`: let the owner and root reach the mount.
    pub allow_root: bool,
    /// `default_permissions`: the kernel checks permissions from the mode bits.
    pub default_permissions: bool,
    /// `fsname=`: the mount source shown in /proc/mounts.
    pub fsname: Option<String>,
    /// `subtype=`: the type shown as `fuse.SUBTYPE`.
    pub subtype: Option<String>,
    /// `size=`: ramdisk size in bytes (parsed as VUOS does: `64M`, bare number = sectors).
    pub size: Option<u64>,
    /// `codepage=N`: FAT short-name code page.
    pub codepage: Option<u32>,
    /// `fakeroot`: present files as owned by root and allow root-only changes.
    pub fakeroot: bool,
    /// `nolock`: do not lock the image (by default a read-write mount holds it exclusively
    /// and a read-only one shared, so a second writer is refused).
    pub nolock: bool,
    /// `format=NAME`: the image's format (`raw`, `qcow2`, `vdi`, `vmdk`, `cow`) instead of
    /// probing its magic; `format=raw` serves an image file as the disk it is.
    pub format: Option<String>,
    /// `debug`: print every request (same as `-d`).
    pub debug: bool,
    /// `busy_poll` / `no_busy_poll`: while requests keep coming, poll for the next one
    /// instead of sleeping (lower latency per request, one core busy while the mount is; see
    /// `fuse::BusyPoll`). `None`: the driver decides ([`Capabilities::one_thread_suffices`]).
    ///
    /// [`Capabilities::one_thread_suffices`]: crate::Capabilities::one_thread_suffices
    pub busy_poll: Option<bool>,
    /// Generic kernel mount flags to pass through.
    pub kernel: KernelFlags,
    // ---- fuse2fs's source and error options (issue 15) ----
    /// `offset=BYTES`: the filesystem starts at this byte offset of the image (fuse2fs's
    /// `offset=`); no partition is looked for.
    pub offset: Option<u64>,
    /// `norecovery` (or `noload`): never replay the journal. A journal that needs recovery
    /// is then left as it is: the mount must be read-only (as the kernel and fuse2fs do).
    pub norecovery: bool,
    /// `errors=continue|remount-ro|panic`: what to do when the driver finds the filesystem
    /// corrupt during an operation. `None`: continue.
    pub errors: Option<ErrorBehavior>,
    /// libfuse's tuning options, for the FUSE front end.
    pub fuse: FuseTuning,
    /// Messages for the user about options that were accepted but not honoured as written.
    pub warnings: Vec<String>,
}

/// A bad `-o` option: the message names the option and says what is wrong.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OptionError {
    /// The option as written (`key` or `key=value`).
    pub option: String,
    /// What is wrong with it.
    pub reason: String,
}

impl fmt::Display for OptionError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "bad mount option '{}': {}", self.option, self.reason)
    }
}

impl std::error::Error for OptionError {}

/// Options that mount(8), mount.fuse3 or fstab may pass and that mean nothing here.
const IGNORED: &[&str] = &[
    "defaults",
    "auto",
    "noauto",
    "user",
    "nouser",
    "users",
    "owner",
    "group",
    "nofail",
    "_netdev",
    "relatime",
    "norelatime",
    "strictatime",
    "nostrictatime",
    "lazytime",
    "nolazytime",
    "diratime",
    "nodiratime",
    "silent",
    "loud",
    "iversion",
    "noiversion",
    // libfuse3 accepts it and ignores it: mounting over a non-empty directory is allowed.
    "nonempty",
];

/// libfuse's options that tune a FUSE mount (as fuse2fs and the libfuse daemons take them).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FuseTuning {
    /// `attr_timeout=S`: how long the kernel may cache attributes (else the driver's).
    pub attr_timeout: Option<std::time::Duration>,
    /// `entry_timeout=S`: how long the kernel may cache name lookups (else the driver's).
    pub entry_timeout: Option<std::time::Duration>,
    /// `max_threads=N` (or `-s`: 1): serving threads.
    pub max_threads: Option<usize>,
    /// `max_read=N`: the largest read request the kernel sends, in bytes.
    pub max_read: Option<u32>,
    /// `kernel_cache`: keep the page cache of a file across opens.
    pub kernel_cache: bool,
    /// `clone_fd`: one /dev/fuse descriptor per serving thread.
    pub clone_fd: bool,
    // ---- second batch (issue 15) ----
    /// `auto_unmount`: the mount goes away when the daemon dies, even by SIGKILL (a
    /// `fusermount3` process watches the daemon).
    pub auto_unmount: bool,
    /// `noforget`: accepted; node IDs here stay valid for the life of the mount anyway.
    pub noforget: bool,
    /// `negative_timeout=S`: how long the kernel may remember that a name does not exist.
    pub negative_timeout: Option<std::time::Duration>,
    /// `writeback_cache` / `no_writeback_cache`: let the kernel cache writes (else the
    /// driver's choice, `Capabilities::writeback_cache`).
    pub writeback_cache: Option<bool>,
}

/// What a mount does when the driver finds the filesystem corrupt during an operation
/// (`errors=`, as ext4 and fuse2fs take it).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorBehavior {
    /// `errors=continue`: the operation fails (EUCLEAN), the mount goes on.
    Continue,
    /// `errors=remount-ro`: the operation fails and every later change is refused (EROFS).
    RemountRo,
    /// `errors=panic`: the daemon aborts, leaving a dead mount (as fuse2fs does).
    Panic,
}

/// The raw flags before the write policy resolves them.
#[derive(Default)]
struct RawFlags {
    ro: bool,
    rw: bool,
    rw_plus: bool,
}

/// What a switch option (one without a value) sets.
enum Switch<'a> {
    /// A flag the option turns on.
    On(&'a mut bool),
    /// One of a pair (`atime` / `noatime`): the option says which.
    Either(&'a mut Option<bool>, bool),
}

impl Switch<'_> {
    fn turn(self) {
        match self {
            Switch::On(flag) => *flag = true,
            Switch::Either(setting, on) => *setting = Some(on),
        }
    }
}

impl MountOptions {
    /// The options of a mount given no `-o` at all.
    pub fn defaults(policy: WritePolicy) -> MountOptions {
        MountOptions::parse_all(std::iter::empty::<&str>(), policy)
            .unwrap_or_else(|_| unreachable!("empty options always parse"))
    }

    /// Parses one `-o` string.
    pub fn parse(text: &str, policy: WritePolicy) -> Result<MountOptions, OptionError> {
        MountOptions::parse_all([text], policy)
    }

    /// Parses several `-o` strings as one, in order: a later value overrides an
    /// earlier one, except that `ro` anywhere makes the mount read-only.
    pub fn parse_all<I, S>(texts: I, policy: WritePolicy) -> Result<MountOptions, OptionError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let mut opts = MountOptions {
            read_only: false,
            force: false,
            uid: None,
            gid: None,
            umask: None,
            dmask: None,
            fmask: None,
            partition: None,
            allow_other: false,
            allow_root: false,
            default_permissions: false,
            fsname: None,
            subtype: None,
            size: None,
            codepage: None,
            fakeroot: false,
            nolock: false,
            format: None,
            debug: false,
            busy_poll: None,
            kernel: KernelFlags::default(),
            offset: None,
            norecovery: false,
            errors: None,
            fuse: FuseTuning::default(),
            warnings: Vec::new(),
        };
        let mut raw = RawFlags::default();
        for text in texts {
            for item in split_items(text.as_ref()) {
                if item.is_empty() {
                    continue;
                }
                opts.apply(&item, &mut raw)?;
            }
        }
        if opts.allow_other && opts.allow_root {
            return Err(OptionError {
                option: "allow_root".into(),
                reason: "cannot be combined with allow_other".into(),
            });
        }
        opts.read_only = match policy {
            WritePolicy::ReadOnlyUnlessForced => {
                let writable = raw.rw_plus || (raw.rw && opts.force);
                if raw.rw && !opts.force && !raw.rw_plus && !raw.ro {
                    opts.warnings.push(
                        "read-write support is experimental: 'rw' needs 'force' \
                         (use -o rw+ or -o rw,force); mounting read-only"
                            .into(),
                    );
                }
                raw.ro || !writable
            }
            WritePolicy::ReadWriteUnlessRo => raw.ro,
            WritePolicy::ReadOnlyUnlessRw => raw.ro || !(raw.rw || raw.rw_plus),
        };
        Ok(opts)
    }

    /// One `key` or `key=value` item: a switch (no value), an ignored libfuse habit, or a
    /// setting with a value.
    fn apply(&mut self, item: &str, raw: &mut RawFlags) -> Result<(), OptionError> {
        let (key, value) = match item.split_once('=') {
            Some((k, v)) => (k, Some(v)),
            None => (item, None),
        };
        let bad = |reason: String| OptionError {
            option: item.to_string(),
            reason,
        };
        if let Some(switch) = self.switch(key, raw) {
            return match value {
                None => {
                    switch.turn();
                    Ok(())
                }
                Some(_) => Err(bad("takes no value".into())),
            };
        }
        if value.is_none() && IGNORED.contains(&key) {
            return Ok(());
        }
        match self.set(key, value) {
            Ok(true) => Ok(()),
            Ok(false) => Err(bad("unknown option".into())),
            Err(reason) => Err(bad(reason)),
        }
    }

    /// What the switch option `key` (one without a value) turns, if it is one.
    fn switch<'a>(&'a mut self, key: &str, raw: &'a mut RawFlags) -> Option<Switch<'a>> {
        use Switch::{Either, On};
        Some(match key {
            "ro" => On(&mut raw.ro),
            "rw" => On(&mut raw.rw),
            "rw+" => On(&mut raw.rw_plus),
            "force" => On(&mut self.force),
            "allow_other" => On(&mut self.allow_other),
            "allow_root" => On(&mut self.allow_root),
            "default_permissions" => On(&mut self.default_permissions),
            "kernel_cache" => On(&mut self.fuse.kernel_cache),
            "clone_fd" => On(&mut self.fuse.clone_fd),
            "fakeroot" => On(&mut self.fakeroot),
            "nolock" => On(&mut self.nolock),
            "debug" => On(&mut self.debug),
            "dirsync" => On(&mut self.kernel.dirsync),
            "auto_unmount" => On(&mut self.fuse.auto_unmount),
            "noforget" => On(&mut self.fuse.noforget),
            "norecovery" | "noload" => On(&mut self.norecovery),
            // The kernel's writeback cache (issue #18).
            "writeback_cache" | "no_writeback_cache" => {
                Either(&mut self.fuse.writeback_cache, key == "writeback_cache")
            }
            "busy_poll" | "no_busy_poll" => Either(&mut self.busy_poll, key == "busy_poll"),
            "nosuid" | "suid" => Either(&mut self.kernel.nosuid, key == "nosuid"),
            "nodev" | "dev" => Either(&mut self.kernel.nodev, key == "nodev"),
            "noexec" | "exec" => Either(&mut self.kernel.noexec, key == "noexec"),
            "noatime" | "atime" => Either(&mut self.kernel.noatime, key == "noatime"),
            "sync" | "async" => Either(&mut self.kernel.sync, key == "sync"),
            _ => return None,
        })
    }

    /// Sets the option `key` from its value: `Ok(false)` when no option has that name.
    fn set(&mut self, key: &str, value: Option<&str>) -> Result<bool, String> {
        let needs = || match value {
            Some(v) if !v.is_empty() => Ok(v),
            _ => Err("needs a value".to_string()),
        };
        match key {
            "uid" => self.uid = Some(parse_decimal(needs()?)?),
            "gid" => self.gid = Some(parse_decimal(needs()?)?),
            "umask" => self.umask = Some(parse_mask(needs()?)?),
            "dmask" => self.dmask = Some(parse_mask(needs()?)?),
            "fmask" => self.fmask = Some(parse_mask(needs()?)?),
            "part" => self.partition = Some(parse_decimal(needs()?)?),
            "attr_timeout" => self.fuse.attr_timeout = Some(parse_seconds(needs()?)?),
            "entry_timeout" => self.fuse.entry_timeout = Some(parse_seconds(needs()?)?),
            "negative_timeout" => self.fuse.negative_timeout = Some(parse_seconds(needs()?)?),
            "max_threads" => match parse_decimal(needs()?)? {
                n @ 1..=64 => self.fuse.max_threads = Some(n as usize),
                _ => return Err("max_threads must be 1 to 64".into()),
            },
            "max_read" => match parse_decimal(needs()?)? {
                n @ 4096.. => self.fuse.max_read = Some(n),
                _ => return Err("max_read must be at least 4096".into()),
            },
            "fsname" => self.fsname = Some(needs()?.to_string()),
            "subtype" => self.subtype = Some(needs()?.to_string()),
            "format" => self.format = Some(needs()?.to_string()),
            "size" => self.size = Some(vudev::parse_size(needs()?)?),
            "codepage" => self.codepage = Some(parse_decimal(needs()?)?),
            "offset" => {
                let text = needs()?;
                if !text.bytes().all(|b| b.is_ascii_digit()) {
                    return Err("needs a number of bytes".into());
                }
                self.offset = Some(text.parse().map_err(|_| "too large".to_string())?);
            }
            "errors" => {
                self.errors = Some(match needs()? {
                    "continue" => ErrorBehavior::Continue,
                    "remount-ro" => ErrorBehavior::RemountRo,
                    "panic" => ErrorBehavior::Panic,
                    _ => return Err("must be continue, remount-ro or panic".into()),
                })
            }
            _ => return Ok(false),
        }
        Ok(true)
    }

    /// Permission bits removed from directories (`dmask`, else `umask`, else none).
    pub fn dir_mask(&self) -> u32 {
        self.dmask.or(self.umask).unwrap_or(0)
    }

    /// Permission bits removed from files (`fmask`, else `umask`, else none).
    pub fn file_mask(&self) -> u32 {
        self.fmask.or(self.umask).unwrap_or(0)
    }
}

/// Splits an option string at commas; a backslash escapes the next character
/// (as libfuse does), so `fsname=a\,b` is one item. Shared by every option parser.
pub fn split_items(text: &str) -> Vec<String> {
    let mut items = Vec::new();
    let mut current = String::new();
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => match chars.next() {
                Some(next) => current.push(next),
                None => current.push('\\'),
            },
            ',' => items.push(std::mem::take(&mut current)),
            _ => current.push(c),
        }
    }
    items.push(current);
    items
}

/// Joins items back into one option string, escaping commas and backslashes (the inverse
/// of [`split_items`]).
pub fn join_items(items: &[String]) -> String {
    items
        .iter()
        .map(|item| item.replace('\\', "\\\\").replace(',', "\\,"))
        .collect::<Vec<_>>()
        .join(",")
}

/// Seconds as libfuse writes them: a decimal, possibly fractional (`0.5`), not negative.
fn parse_seconds(text: &str) -> Result<std::time::Duration, String> {
    match text.parse::<f64>() {
        Ok(s) if s.is_finite() && (0.0..=1e6).contains(&s) => {
            Ok(std::time::Duration::from_secs_f64(s))
        }
        _ => Err(format!("{text:?} is not a number of seconds")),
    }
}

fn parse_decimal(text: &str) -> Result<u32, String> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("{text:?} is not a decimal number"));
    }
    text.parse().map_err(|_| format!("{text} is too large"))
}

fn parse_mask(text: &str) -> Result<u32, String> {
    let digits = text.strip_prefix("0o").unwrap_or(text);
    if digits.is_empty() || !digits.bytes().all(|b| (b'0'..=b'7').contains(&b)) {
        return Err(format!("{text:?} is not an octal number"));
    }
    match u32::from_str_radix(digits, 8) {
        Ok(mask) if mask <= 0o777 => Ok(mask),
        _ => Err(format!("{text} is larger than 0777")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FS: WritePolicy = WritePolicy::ReadOnlyUnlessForced;
    const DEV: WritePolicy = WritePolicy::ReadWriteUnlessRo;

    fn fs(text: &str) -> MountOptions {
        MountOptions::parse(text, FS).unwrap()
    }

    fn err(text: &str) -> OptionError {
        MountOptions::parse(text, FS).unwrap_err()
    }

    #[test]
    fn filesystems_are_read_only_by_default() {
        assert!(MountOptions::defaults(FS).read_only);
        assert!(fs("").read_only);
        assert!(fs("uid=5").read_only);
        assert!(fs("").warnings.is_empty());
    }

    #[test]
    fn fuse2fs_policy_takes_plain_rw() {
        let p = WritePolicy::ReadOnlyUnlessRw;
        assert!(MountOptions::parse("", p).unwrap().read_only);
        assert!(!MountOptions::parse("rw", p).unwrap().read_only);
        assert!(!MountOptions::parse("rw+", p).unwrap().read_only);
        assert!(MountOptions::parse("rw,ro", p).unwrap().read_only);
        assert!(MountOptions::parse("rw", p).unwrap().warnings.is_empty());
    }

    #[test]
    fn rw_plus_means_read_write() {
        let o = fs("rw+");
        assert!(!o.read_only);
        assert!(o.warnings.is_empty());
    }

    #[test]
    fn rw_needs_force() {
        let o = fs("rw");
        assert!(o.read_only, "plain rw stays read-only");
        assert_eq!(o.warnings.len(), 1);
        assert!(o.warnings[0].contains("rw+"), "{:?}", o.warnings);
        let o = fs("rw,force");
        assert!(!o.read_only);
        assert!(o.force);
        assert!(o.warnings.is_empty());
        // force may come first, or in a later -o.
        assert!(!fs("force,rw").read_only);
        let merged = MountOptions::parse_all(["rw", "force"], FS).unwrap();
        assert!(!merged.read_only);
    }

    #[test]
    fn ro_forces_read_only() {
        assert!(fs("rw+,ro").read_only);
        assert!(fs("rw,force,ro").read_only);
        assert!(fs("ro").warnings.is_empty());
        // ro wins wherever it stands, also in another -o.
        assert!(fs("ro,rw+").read_only);
        assert!(
            MountOptions::parse_all(["ro", "rw,force"], FS)
                .unwrap()
                .read_only
        );
        assert!(
            MountOptions::parse("rw,ro", WritePolicy::ReadWriteUnlessRo)
                .unwrap()
                .read_only
        );
    }

    #[test]
    fn devices_are_read_write_unless_ro() {
        assert!(!MountOptions::defaults(DEV).read_only);
        let o = MountOptions::parse("rw", DEV).unwrap();
        assert!(!o.read_only);
        assert!(o.warnings.is_empty(), "devices accept plain rw");
        assert!(MountOptions::parse("ro", DEV).unwrap().read_only);
    }

    #[test]
    fn ids_and_masks() {
        let o = fs("uid=1000,gid=100,umask=022");
        assert_eq!((o.uid, o.gid, o.umask), (Some(1000), Some(100), Some(0o22)));
        assert_eq!(o.dir_mask(), 0o22);
        assert_eq!(o.file_mask(), 0o22);
        let o = fs("umask=077,dmask=0022,fmask=0o133");
        assert_eq!(o.dir_mask(), 0o22);
        assert_eq!(o.file_mask(), 0o133);
        assert_eq!(MountOptions::defaults(FS).file_mask(), 0);
        assert!(err("uid=-1").to_string().contains("uid=-1"));
        assert!(err("uid=abc").reason.contains("decimal"));
        assert!(err("uid=99999999999").reason.contains("too large"));
        assert!(err("umask=8").reason.contains("octal"));
        assert!(err("umask=1777").reason.contains("0777"));
        assert_eq!(err("gid").reason, "needs a value");
        assert_eq!(err("uid=").reason, "needs a value");
    }

    #[test]
    fn partition_size_codepage() {
        let o = fs("part=5,size=64M,codepage=437");
        assert_eq!(o.partition, Some(5));
        assert_eq!(o.size, Some(64 << 20));
        assert_eq!(o.codepage, Some(437));
        assert_eq!(
            fs("size=1000").size,
            Some(1000 * 512),
            "bare number counts sectors"
        );
        assert!(err("size=12Q").to_string().contains("size=12Q"));
        assert!(err("part=x").reason.contains("decimal"));
    }

    #[test]
    fn access_and_naming() {
        let o = fs("allow_other,default_permissions,fsname=img.raw,subtype=fusefatfs");
        assert!(o.allow_other && o.default_permissions && !o.allow_root);
        assert_eq!(o.fsname.as_deref(), Some("img.raw"));
        assert_eq!(o.subtype.as_deref(), Some("fusefatfs"));
        assert!(fs("allow_root").allow_root);
        assert!(err("allow_other,allow_root")
            .reason
            .contains("cannot be combined"));
        assert_eq!(
            fs(r"fsname=a\,b,ro").fsname.as_deref(),
            Some("a,b"),
            "backslash escapes a comma"
        );
    }

    #[test]
    fn kernel_flags_pass_through_and_last_wins() {
        let o = fs("nosuid,nodev,noexec,noatime,sync,dirsync");
        assert_eq!(
            o.kernel,
            KernelFlags {
                nosuid: Some(true),
                nodev: Some(true),
                noexec: Some(true),
                noatime: Some(true),
                sync: Some(true),
                dirsync: true,
            }
        );
        let o = fs("nosuid,suid,dev,exec,atime,async");
        assert_eq!(o.kernel.nosuid, Some(false));
        assert_eq!(o.kernel.nodev, Some(false));
        assert_eq!(o.kernel.noexec, Some(false));
        assert_eq!(o.kernel.noatime, Some(false));
        assert_eq!(o.kernel.sync, Some(false));
        assert_eq!(fs("").kernel, KernelFlags::default());
    }

    #[test]
    fn misc_flags() {
        let o = fs("fakeroot,force,debug");
        assert!(o.fakeroot && o.force && o.debug && o.busy_poll.is_none());
        assert_eq!(fs("busy_poll").busy_poll, Some(true));
        assert_eq!(fs("no_busy_poll").busy_poll, Some(false));
        assert_eq!(fs("no_busy_poll,busy_poll").busy_poll, Some(true));
        // What mount(8) adds on its own is accepted and ignored.
        let o = fs("defaults,relatime,noauto,user");
        assert_eq!(o, MountOptions::defaults(FS));
    }

    #[test]
    fn empty_items_are_skipped() {
        assert_eq!(fs(",,ro,"), fs("ro"));
    }

    #[test]
    fn unknown_options_are_named() {
        let e = err("ro,frobnicate");
        assert_eq!(e.option, "frobnicate");
        assert_eq!(
            e.to_string(),
            "bad mount option 'frobnicate': unknown option"
        );
        assert_eq!(err("ro=1").reason, "takes no value");
        assert_eq!(err("defaults=1").reason, "unknown option");
        assert_eq!(err("nosuid=yes").option, "nosuid=yes");
    }

    #[test]
    fn second_batch_of_libfuse_and_fuse2fs_habits() {
        let o = fs("auto_unmount,noforget,negative_timeout=2.5");
        assert!(o.fuse.auto_unmount && o.fuse.noforget);
        assert_eq!(
            o.fuse.negative_timeout,
            Some(std::time::Duration::from_millis(2500))
        );
        assert_eq!(fs("offset=1048576").offset, Some(1 << 20));
        assert!(fs("norecovery").norecovery && fs("noload").norecovery);
        assert_eq!(fs("errors=continue").errors, Some(ErrorBehavior::Continue));
        assert_eq!(
            fs("errors=remount-ro").errors,
            Some(ErrorBehavior::RemountRo)
        );
        assert_eq!(fs("errors=panic").errors, Some(ErrorBehavior::Panic));
        assert_eq!(fs("").errors, None);
        assert!(err("errors=reboot").reason.contains("remount-ro"));
        assert_eq!(err("errors").reason, "needs a value");
        assert!(err("offset=1M").reason.contains("bytes"));
        assert!(err("offset=-1").reason.contains("bytes"));
        assert_eq!(err("auto_unmount=1").reason, "takes no value");
        assert!(err("negative_timeout=x").reason.contains("seconds"));
    }
}
