//! Running host calls with the caller's fsuid/fsgid while the daemon is root.

use super::*;

/// Runs lower-tree operations with the caller's fsuid/fsgid (when the
/// daemon is root), so the host checks permissions and new files belong to
/// the caller. Restores the daemon's ids on drop.
pub(super) struct Creds {
    active: bool,
}

impl Creds {
    #[allow(unsafe_code)]
    pub(super) fn switch(on: bool, ctx: &Context) -> Creds {
        if !on || ctx.uid == 0 {
            return Creds { active: false };
        }
        // SAFETY: setfsgid/setfsuid take plain integers, change only the
        // calling thread's filesystem ids (the raw syscalls are per thread),
        // and cannot fail in a way that corrupts memory.
        unsafe {
            libc::setfsgid(ctx.gid);
            libc::setfsuid(ctx.uid);
        }
        Creds { active: true }
    }
}

impl Drop for Creds {
    #[allow(unsafe_code)]
    fn drop(&mut self) {
        if self.active {
            // SAFETY: as in `switch`; back to the daemon's (root) ids.
            unsafe {
                libc::setfsuid(0);
                libc::setfsgid(0);
            }
        }
    }
}
