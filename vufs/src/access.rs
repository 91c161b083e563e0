//! Access checks for what vufs does as itself on a caller's behalf.
//!
//! Most host calls run with the caller's fsuid/fsgid, so the host kernel checks them. Some
//! cannot: a copy-up writes SOURCE as the daemon, and layer metadata (vstat side files) is
//! the daemon's. Before such a change, vufs applies the rules the kernel would have applied
//! to the caller (Linux `setattr_prepare`: `chown_ok`, `chgrp_ok`, `inode_owner_or_capable`),
//! against the attributes the view shows, and answers with the kernel's errno.

use rustix::fs::Stat;
use vudev::{Errno, Result};
use vufuse_api::acl::{self, Acl};
use vufuse_api::fs::{Context, SetAttr, SetTime};

/// The caller's identity: uid, primary gid and supplementary groups.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Caller {
    uid: u32,
    gid: u32,
    groups: Vec<u32>,
}

impl Caller {
    /// The caller of a request; supplementary groups are read from `/proc/PID/status`
    /// (none when the process is gone or the pid is unknown: fewer rights, never more).
    pub(crate) fn of(ctx: &Context) -> Caller {
        Caller {
            uid: ctx.uid,
            gid: ctx.gid,
            groups: ctx.supplementary_groups().to_vec(),
        }
    }

    /// Root: every check passes (CAP_CHOWN, CAP_FOWNER, CAP_FSETID, CAP_DAC_OVERRIDE).
    fn privileged(&self) -> bool {
        self.uid == 0
    }

    fn in_group(&self, gid: u32) -> bool {
        self.gid == gid || self.groups.contains(&gid)
    }

    fn owns(&self, st: &Stat) -> bool {
        self.privileged() || self.uid == st.st_uid
    }

    /// Whether the file `st`, with its access ACL when it has one, grants `want` (a mask of
    /// 4 read, 2 write, 1 search) to this caller, as the kernel decides it.
    pub(crate) fn may_with(&self, st: &Stat, acl: Option<&Acl>, want: u32) -> bool {
        acl::permits(
            st.st_uid,
            st.st_gid,
            st.st_mode,
            acl,
            self.uid,
            |g| self.in_group(g),
            want,
        )
    }

    /// Whether the mode bits of `st` grant `want` to this caller (no ACL consulted).
    pub(crate) fn may(&self, st: &Stat, want: u32) -> bool {
        self.may_with(st, None, want)
    }

    /// The part of `set` this caller may apply to a file whose view attributes are `st`, as
    /// the kernel decides it: `EPERM` for a chown, chgrp or chmod by a non-owner (or a chown
    /// to another user, or a chgrp to a group the owner is not in) and for explicit times
    /// set by a non-owner; `EACCES` for times set to now, or a truncate, without write
    /// permission. A chmod by an owner outside the file's group drops the set-group-ID bit.
    pub(crate) fn permitted(&self, st: &Stat, set: &SetAttr) -> Result<SetAttr> {
        if self.privileged() {
            return Ok(*set);
        }
        let mut allowed = *set;
        if let Some(uid) = set.uid {
            if !(self.uid == st.st_uid && uid == st.st_uid) {
                return Err(Errno::EPERM);
            }
        }
        if let Some(gid) = set.gid {
            if !(self.uid == st.st_uid && (gid == st.st_gid || self.in_group(gid))) {
                return Err(Errno::EPERM);
            }
        }
        if let Some(mode) = set.mode {
            // Only set-id bits taken away: what the kernel asks after a write by another
            // user (file_remove_privs); dropping privileges is every writer's right.
            let current = st.st_mode & 0o7777;
            let setid = libc::S_ISUID | libc::S_ISGID;
            let clears_setid_only = mode & 0o7777 == current & !setid && current & setid != 0;
            if !self.owns(st) && !clears_setid_only {
                return Err(Errno::EPERM);
            }
            let group = set.gid.unwrap_or(st.st_gid);
            if mode & libc::S_ISGID != 0 && !self.in_group(group) {
                allowed.mode = Some(mode & !libc::S_ISGID);
            }
        }
        let explicit = |t: Option<SetTime>| matches!(t, Some(SetTime::At(_)));
        if explicit(set.atime) || explicit(set.mtime) {
            if !self.owns(st) {
                return Err(Errno::EPERM);
            }
        } else if (set.atime.is_some() || set.mtime.is_some())
            && !self.owns(st)
            && !self.may(st, 0o2)
        {
            return Err(Errno::EACCES);
        }
        if set.size.is_some() && set.fh.is_none() && !self.may(st, 0o2) {
            return Err(Errno::EACCES);
        }
        Ok(allowed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::SystemTime;

    fn stat(uid: u32, gid: u32, mode: u32) -> Stat {
        let mut st = rustix::fs::stat("/").unwrap();
        st.st_uid = uid;
        st.st_gid = gid;
        st.st_mode = libc::S_IFREG | mode;
        st
    }

    fn caller(uid: u32, gid: u32, groups: &[u32]) -> Caller {
        Caller {
            uid,
            gid,
            groups: groups.to_vec(),
        }
    }

    #[test]
    fn chown_to_another_user_is_root_only() {
        let own = stat(1000, 1000, 0o644);
        let give = SetAttr {
            uid: Some(0),
            gid: Some(0),
            ..SetAttr::default()
        };
        assert_eq!(
            caller(1000, 1000, &[]).permitted(&own, &give),
            Err(Errno::EPERM)
        );
        assert!(caller(0, 0, &[]).permitted(&own, &give).is_ok());
        // Owner to itself is a no-op the kernel allows; a stranger may not do even that.
        let same = SetAttr {
            uid: Some(1000),
            ..SetAttr::default()
        };
        assert!(caller(1000, 1000, &[]).permitted(&own, &same).is_ok());
        assert_eq!(
            caller(2000, 2000, &[]).permitted(&own, &same),
            Err(Errno::EPERM)
        );
    }

    #[test]
    fn chgrp_needs_the_owner_in_the_new_group() {
        let own = stat(1000, 1000, 0o644);
        let to = |gid| SetAttr {
            gid: Some(gid),
            ..SetAttr::default()
        };
        assert!(caller(1000, 1000, &[50]).permitted(&own, &to(50)).is_ok());
        assert_eq!(
            caller(1000, 1000, &[50]).permitted(&own, &to(60)),
            Err(Errno::EPERM)
        );
        assert_eq!(
            caller(2000, 50, &[]).permitted(&own, &to(50)),
            Err(Errno::EPERM)
        );
    }

    #[test]
    fn chmod_is_the_owners_and_drops_setgid_outside_the_group() {
        let own = stat(1000, 500, 0o644);
        let chmod = |mode| SetAttr {
            mode: Some(mode),
            ..SetAttr::default()
        };
        assert_eq!(
            caller(2000, 2000, &[]).permitted(&own, &chmod(0o777)),
            Err(Errno::EPERM)
        );
        let got = caller(1000, 1000, &[])
            .permitted(&own, &chmod(0o2755))
            .unwrap();
        assert_eq!(got.mode, Some(0o755));
        let got = caller(1000, 1000, &[500])
            .permitted(&own, &chmod(0o2755))
            .unwrap();
        assert_eq!(got.mode, Some(0o2755));
    }

    #[test]
    fn times_and_truncate_follow_owner_and_write_permission() {
        let st = stat(1000, 500, 0o664);
        let now = SetAttr {
            atime: Some(SetTime::Now),
            mtime: Some(SetTime::Now),
            ..SetAttr::default()
        };
        let at = SetAttr {
            mtime: Some(SetTime::At(SystemTime::UNIX_EPOCH)),
            ..SetAttr::default()
        };
        let trunc = SetAttr {
            size: Some(0),
            ..SetAttr::default()
        };
        let member = caller(2000, 2000, &[500]);
        let stranger = caller(3000, 3000, &[]);
        assert!(member.permitted(&st, &now).is_ok());
        assert_eq!(member.permitted(&st, &at), Err(Errno::EPERM));
        assert!(member.permitted(&st, &trunc).is_ok());
        assert_eq!(stranger.permitted(&st, &now), Err(Errno::EACCES));
        assert_eq!(stranger.permitted(&st, &trunc), Err(Errno::EACCES));
    }
}
