//! Clearing the set-user-ID and set-group-ID bits on write, truncate and chown, as the VFS
//! would, by a front end that takes this over from the kernel: the FUSE adapter under
//! FUSE_HANDLE_KILLPRIV_V2, and the VUOS glue, which has no kernel in the loop.
//!
//! Why FUSE takes it over: otherwise the kernel asks the daemon for `security.capability`
//! before every write(2) (fuse clears SB_NOSEC: 27,000 GETXATTR round trips of the 115,000
//! requests of untarring /usr/include into fuseext2) and fetches the attributes again
//! before every chown. With it, the kernel checks an inode for capabilities once per
//! attribute refresh (SB_NOSEC, and still removes `security.capability` itself when it
//! finds one), and leaves the mode bits to the daemon. The rules, those of
//! `include/uapi/linux/fuse.h` and of the VFS:
//! - write: by a caller without CAP_FSETID (the kernel flags such a write,
//!   FUSE_WRITE_KILL_SUIDGID); then set-user-ID goes, and set-group-ID when the group may
//!   execute.
//! - truncate: the same rule. fuser does not pass the kernel's FATTR_KILL_SUIDGID, so the
//!   caller's CAP_FSETID is read from /proc, only for a file that has one of the bits.
//! - chown, and the empty SETATTR the kernel sends for chown(-1, -1) (its kill flags are
//!   stripped under this protocol), of anything but a directory: the same bits, whoever the
//!   caller.
//!
//! Only for drivers whose `setattr` applies the mode it is given without a permission check
//! of its own (`Capabilities::checks_access` false: the front end checked the write,
//! truncate or chown).

use crate::fs::{Attr, Context, Fh, FileKind, FileSystem, Ino, SetAttr};
use vudev::Result;

const S_ISUID: u32 = 0o4000;
const S_ISGID: u32 = 0o2000;
const S_IXGRP: u32 = 0o0010;

/// CAP_FSETID's bit in a capability set (linux/capability.h).
const CAP_FSETID: u32 = 4;

/// The permission bits `attr` keeps once a write, truncate or chown has cleared its
/// privileges, or `None` when it has none to clear: set-user-ID goes, set-group-ID when the
/// group may execute (without, it marks mandatory locking); a directory keeps both
/// (set-group-ID there is inheritance).
pub fn killed_mode(attr: &Attr) -> Option<u32> {
    if attr.kind == FileKind::Dir {
        return None;
    }
    let perm = u32::from(attr.perm);
    let mut kept = perm & !S_ISUID;
    if perm & (S_ISGID | S_IXGRP) == S_ISGID | S_IXGRP {
        kept &= !S_ISGID;
    }
    (kept != perm).then_some(kept)
}

/// Whether a SETATTR clears privileges: an owner change (uid, gid, or nothing at all:
/// chown(-1, -1) under FUSE_HANDLE_KILLPRIV_V2), whoever the caller; a size change by a
/// caller without CAP_FSETID (`has_fsetid` is asked only then). One that sets the mode
/// itself decides the bits.
pub fn setattr_kills(set: &SetAttr, has_fsetid: impl FnOnce() -> bool) -> bool {
    if set.mode.is_some() {
        return false;
    }
    if changes_owner(set) {
        return true;
    }
    set.size.is_some() && !has_fsetid()
}

/// Whether a SETATTR may clear privileges (before the attributes are read): it sets no
/// mode, and changes the owner or the size.
pub fn setattr_may_kill(set: &SetAttr) -> bool {
    set.mode.is_none() && (changes_owner(set) || set.size.is_some())
}

/// A chown: uid or gid, or nothing at all (chown(-1, -1), or the kernel's own request to
/// clear the bits, whose flags this protocol strips).
fn changes_owner(set: &SetAttr) -> bool {
    let empty = set.size.is_none() && set.atime.is_none() && set.mtime.is_none();
    set.uid.is_some() || set.gid.is_some() || empty
}

/// Before a write to `ino` (through `fh`), as the VFS does it: clears its set-id bits when it
/// has any and `caller_keeps()` says no (the caller lacks CAP_FSETID). The attributes are
/// read first, so the caller is asked about only for a file with set-id bits.
pub fn clear_for_write(
    fs: &dyn FileSystem,
    ctx: &Context,
    ino: Ino,
    fh: Option<Fh>,
    caller_keeps: impl FnOnce() -> bool,
) -> Result<()> {
    let attr = fs.getattr(ctx, ino, fh)?;
    if let Some(mode) = killed_mode(&attr) {
        if !caller_keeps() {
            let set = SetAttr {
                mode: Some(mode),
                fh,
                ..SetAttr::default()
            };
            fs.setattr(ctx, ino, &set)?;
        }
    }
    Ok(())
}

/// `set` with the mode that clears the set-id bits of `ino` added, for a chown or a
/// truncate that clears them ([`setattr_kills`]) of a file that has them.
pub fn with_privileges_cleared(
    fs: &dyn FileSystem,
    ctx: &Context,
    ino: Ino,
    mut set: SetAttr,
) -> Result<SetAttr> {
    if !setattr_may_kill(&set) {
        return Ok(set);
    }
    let attr = fs.getattr(ctx, ino, set.fh)?;
    if let Some(mode) = killed_mode(&attr) {
        if setattr_kills(&set, || caller_has_fsetid(ctx)) {
            set.mode = Some(mode);
        }
    }
    Ok(set)
}

/// Whether the process `ctx.pid` has CAP_FSETID in its effective set (its `CapEff` line
/// in /proc). An unknown or gone process has not: the bits are cleared, the safe side.
pub fn caller_has_fsetid(ctx: &Context) -> bool {
    if ctx.pid == 0 {
        return false;
    }
    std::fs::read_to_string(format!("/proc/{}/status", ctx.pid))
        .ok()
        .and_then(|status| effective_caps(&status))
        .is_some_and(|caps| caps & (1 << CAP_FSETID) != 0)
}

/// The `CapEff:` mask of a /proc/PID/status text.
fn effective_caps(status: &str) -> Option<u64> {
    let line = status.lines().find_map(|l| l.strip_prefix("CapEff:"))?;
    u64::from_str_radix(line.trim(), 16).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fs::SetTime;
    use std::time::UNIX_EPOCH;

    fn attr(kind: FileKind, perm: u16) -> Attr {
        Attr {
            ino: Ino(2),
            size: 0,
            blocks: 0,
            atime: UNIX_EPOCH,
            mtime: UNIX_EPOCH,
            ctime: UNIX_EPOCH,
            crtime: UNIX_EPOCH,
            kind,
            perm,
            nlink: 1,
            uid: 0,
            gid: 0,
            rdev: 0,
            blksize: 4096,
        }
    }

    #[test]
    fn suid_always_goes_and_sgid_only_with_group_execute() {
        assert_eq!(killed_mode(&attr(FileKind::File, 0o4755)), Some(0o755));
        assert_eq!(killed_mode(&attr(FileKind::File, 0o2755)), Some(0o755));
        // Set-group-ID without group execute is mandatory locking, not a privilege.
        assert_eq!(killed_mode(&attr(FileKind::File, 0o2745)), None);
        assert_eq!(killed_mode(&attr(FileKind::File, 0o6711)), Some(0o711));
        assert_eq!(killed_mode(&attr(FileKind::File, 0o644)), None);
        // A directory's set-group-ID is inheritance, never cleared.
        assert_eq!(killed_mode(&attr(FileKind::Dir, 0o2775)), None);
    }

    #[test]
    fn setattr_kills_as_the_kernel_requests_follow_the_kernel_requests() {
        let unprivileged = || false;
        let privileged = || true;
        let chown = SetAttr {
            uid: Some(1000),
            ..SetAttr::default()
        };
        assert!(setattr_kills(&chown, privileged));
        assert!(
            setattr_kills(&SetAttr::default(), privileged),
            "chown(-1, -1) arrives as an empty SETATTR"
        );
        let truncate = SetAttr {
            size: Some(0),
            ..SetAttr::default()
        };
        assert!(setattr_kills(&truncate, unprivileged));
        assert!(!setattr_kills(&truncate, privileged));
        let chmod = SetAttr {
            mode: Some(0o4755),
            uid: Some(1),
            ..SetAttr::default()
        };
        assert!(!setattr_kills(&chmod, unprivileged));
        let touch = SetAttr {
            mtime: Some(SetTime::Now),
            ..SetAttr::default()
        };
        assert!(!setattr_kills(&touch, unprivileged));
    }

    #[test]
    fn capabilities_are_read_from_the_status_text() {
        let status = "Name:\tx\nCapInh:\t0000000000000000\nCapEff:\t000001ffffffffff\n";
        assert_eq!(effective_caps(status), Some(0x1ff_ffff_ffff));
        assert_eq!(effective_caps("Name:\tx\n"), None);
        let nobody = Context {
            pid: 0,
            ..Context::current()
        };
        assert!(!caller_has_fsetid(&nobody));
    }
}
