//! The kernel FUSE front end: serves any [`FileSystem`](crate::FileSystem)
//! through the `fuser` crate (pure-Rust mount, no libfuse).
//!
//! [`FuseAdapter`] maps each request to one trait call and each
//! [`Errno`](vufuse_api::Errno) to the reply; [`session_config`] turns the shared
//! [`MountOptions`] into what fuser passes to the kernel; [`KernelCache`]
//! lets a driver drop what the kernel cached when the data changed behind it.

mod adapter;
mod busy_poll;
mod trace;

pub use adapter::{FuseAdapter, Lifecycle, MAX_WRITE};
pub use busy_poll::{BusyPoll, IDLE_AFTER};

use fuser::{Config, INodeNo, MountOption, Notifier, SessionACL};
use std::ffi::OsStr;
use vufuse_api::fs::{Capabilities, Ino};
use vufuse_api::options::MountOptions;

/// fuser threads serving requests (2: one request may block on I/O while another proceeds).
pub const SERVING_THREADS: usize = 2;

/// The fuser configuration for a mount with `options`.
///
/// `fsname` is the mount source shown in /proc/mounts when the options do
/// not name one; `subtype` makes the type show as `fuse.SUBTYPE`. Neither
/// AutoUnmount (it execs fusermount) nor clone_fd (it breaks under umvu) is used.
/// `busy_poll` (resolved from the option and the driver, see [`BusyPoll`]) serves with one
/// thread.
///
/// `allow_other` lets every user in; a driver that does not check access itself
/// (`caps.checks_access` false) then gets the kernel's `default_permissions` whether or not
/// it was asked for, so a root-owned 0600 file stays root's (fuse2fs checks the same rights
/// itself).
pub fn session_config(
    options: &MountOptions,
    caps: &Capabilities,
    busy_poll: bool,
    fsname: &str,
    subtype: &str,
) -> Config {
    let mut mount_options = vec![MountOption::FSName(
        options.fsname.clone().unwrap_or_else(|| fsname.to_string()),
    )];
    // fuser hands its Subtype only to fusermount; the kernel's own mount(2)
    // parser takes `subtype=` directly, and fusermount passes it on too.
    let subtype = options.subtype.as_deref().unwrap_or(subtype);
    if !subtype.is_empty() {
        mount_options.push(MountOption::CUSTOM(format!("subtype={subtype}")));
    }
    if options.read_only {
        mount_options.push(MountOption::RO);
    }
    if kernel_checks_access(options, caps) {
        mount_options.push(MountOption::DefaultPermissions);
    }
    let kernel = &options.kernel;
    let pairs = [
        (kernel.nosuid, MountOption::NoSuid, MountOption::Suid),
        (kernel.nodev, MountOption::NoDev, MountOption::Dev),
        (kernel.noexec, MountOption::NoExec, MountOption::Exec),
        (kernel.noatime, MountOption::NoAtime, MountOption::Atime),
        (kernel.sync, MountOption::Sync, MountOption::Async),
    ];
    for (flag, on, off) in pairs {
        match flag {
            Some(true) => mount_options.push(on),
            Some(false) => mount_options.push(off),
            None => {}
        }
    }
    if kernel.dirsync {
        mount_options.push(MountOption::DirSync);
    }
    if let Some(n) = options.fuse.max_read {
        mount_options.push(MountOption::CUSTOM(format!("max_read={n}")));
    }
    let mut config = Config::default();
    config.acl = if options.allow_other {
        SessionACL::All
    } else if options.allow_root {
        SessionACL::RootAndOwner
    } else {
        SessionACL::Owner
    };
    // auto_unmount: fuser hands the mount to fusermount3, which stays and unmounts when the
    // daemon dies; fuser wants allow_root or allow_other with it, so it brings allow_root
    // (root may use the mount too; the same as before when root mounts).
    if options.fuse.auto_unmount {
        mount_options.push(MountOption::AutoUnmount);
        if config.acl == SessionACL::Owner {
            config.acl = SessionACL::RootAndOwner;
        }
    }
    config.mount_options = mount_options;
    // One thread polls; a second one would poll too (they share the device) and take the
    // caller's core.
    config.n_threads = Some(match options.fuse.max_threads {
        Some(n) => n,
        None if busy_poll => 1,
        None => SERVING_THREADS,
    });
    // Only when asked: one descriptor per thread breaks under umvu's /dev/fuse.
    config.clone_fd = options.fuse.clone_fd;
    config
}

/// Whether the kernel must check permissions: asked for, or needed because other users
/// reach a mount whose driver would not refuse them.
pub fn kernel_checks_access(options: &MountOptions, caps: &Capabilities) -> bool {
    options.default_permissions || (options.allow_other && !caps.checks_access)
}

/// Drops what the kernel cached about names and inodes of one mount, for
/// drivers whose data changes behind the kernel's back (a partition table
/// rewritten through the whole-disk file).
#[derive(Debug)]
pub struct KernelCache {
    notifier: Notifier,
}

impl KernelCache {
    /// Wraps the notifier of a live session.
    pub fn new(notifier: Notifier) -> KernelCache {
        KernelCache { notifier }
    }

    /// Forgets the cached lookup of `name` in `parent`. Errors (the entry was
    /// not cached, the mount is gone) are harmless and ignored.
    pub fn invalidate_entry(&self, parent: Ino, name: &OsStr) {
        let _ = self.notifier.inval_entry(INodeNo(parent.0), name);
    }

    /// Forgets the cached attributes and data of `ino`.
    pub fn invalidate_inode(&self, ino: Ino) {
        let _ = self.notifier.inval_inode(INodeNo(ino.0), 0, 0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vufuse_api::options::WritePolicy;

    fn config(text: &str) -> Config {
        let opts = MountOptions::parse(text, WritePolicy::ReadOnlyUnlessForced).unwrap();
        session_config(&opts, &Capabilities::default(), false, "/img", "fusefatfs")
    }

    #[test]
    fn read_only_name_and_type_reach_the_kernel() {
        let c = config("");
        assert!(c.mount_options.contains(&MountOption::RO));
        assert!(c
            .mount_options
            .contains(&MountOption::FSName("/img".into())));
        assert!(c
            .mount_options
            .contains(&MountOption::CUSTOM("subtype=fusefatfs".into())));
        assert_eq!(c.n_threads, Some(2));
        let opts = MountOptions::parse("", WritePolicy::ReadOnlyUnlessForced).unwrap();
        let caps = Capabilities::default();
        assert_eq!(
            session_config(&opts, &caps, true, "/img", "x").n_threads,
            Some(1)
        );
        assert!(!c.clone_fd);
        assert!(!c.mount_options.contains(&MountOption::AutoUnmount));
        assert_eq!(c.acl, SessionACL::Owner);
        let c = config("rw+,fsname=card,subtype=x,default_permissions,allow_other");
        assert!(!c.mount_options.contains(&MountOption::RO));
        assert!(c
            .mount_options
            .contains(&MountOption::FSName("card".into())));
        assert!(c
            .mount_options
            .contains(&MountOption::CUSTOM("subtype=x".into())));
        assert!(c.mount_options.contains(&MountOption::DefaultPermissions));
        assert_eq!(c.acl, SessionACL::All);
        assert_eq!(config("allow_root").acl, SessionACL::RootAndOwner);
    }

    #[test]
    fn allow_other_turns_on_kernel_checks_unless_the_driver_checks() {
        let opts = |text| MountOptions::parse(text, WritePolicy::ReadOnlyUnlessForced).unwrap();
        let unchecked = Capabilities::default();
        let checked = Capabilities {
            checks_access: true,
            ..Capabilities::default()
        };
        let has_dp = |text, caps: &Capabilities| {
            session_config(&opts(text), caps, false, "/img", "t")
                .mount_options
                .contains(&MountOption::DefaultPermissions)
        };
        assert!(has_dp("allow_other", &unchecked));
        assert!(!has_dp("allow_other", &checked));
        assert!(has_dp("allow_other,default_permissions", &checked));
        assert!(!has_dp("", &unchecked));
        assert!(!has_dp("allow_root", &unchecked));
    }

    #[test]
    fn libfuse_tuning_options_reach_the_session() {
        let c = config("max_threads=4,max_read=131072,clone_fd,nonempty");
        assert_eq!(c.n_threads, Some(4));
        assert!(c.clone_fd);
        assert!(c
            .mount_options
            .contains(&MountOption::CUSTOM("max_read=131072".into())));
        let opts = MountOptions::parse(
            "attr_timeout=2.5,entry_timeout=0,kernel_cache",
            WritePolicy::ReadOnlyUnlessForced,
        )
        .unwrap();
        assert_eq!(
            opts.fuse.attr_timeout,
            Some(std::time::Duration::from_millis(2500))
        );
        assert_eq!(opts.fuse.entry_timeout, Some(std::time::Duration::ZERO));
        assert!(opts.fuse.kernel_cache);
        for bad in [
            "max_threads=0",
            "max_read=12",
            "attr_timeout=-1",
            "attr_timeout=x",
        ] {
            assert!(
                MountOptions::parse(bad, WritePolicy::ReadOnlyUnlessForced).is_err(),
                "{bad}"
            );
        }
    }

    #[test]
    fn the_writeback_cache_option_overrides_the_driver() {
        let parse = |text| MountOptions::parse(text, WritePolicy::ReadOnlyUnlessForced);
        assert_eq!(parse("").unwrap().fuse.writeback_cache, None);
        assert_eq!(
            parse("writeback_cache").unwrap().fuse.writeback_cache,
            Some(true)
        );
        assert_eq!(
            parse("writeback_cache,no_writeback_cache")
                .unwrap()
                .fuse
                .writeback_cache,
            Some(false)
        );
        assert!(parse("writeback_cache=1").is_err());
    }

    #[test]
    fn kernel_flags_pass_through() {
        let c = config("nosuid,dev,noexec,atime,sync,dirsync");
        for o in [
            MountOption::NoSuid,
            MountOption::Dev,
            MountOption::NoExec,
            MountOption::Atime,
            MountOption::Sync,
            MountOption::DirSync,
        ] {
            assert!(c.mount_options.contains(&o), "{o:?} missing");
        }
        assert!(!c.mount_options.contains(&MountOption::Suid));
    }
}
