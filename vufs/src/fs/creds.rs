//! Running host calls with the caller's fsuid/fsgid and supplementary groups while the
//! daemon is root.

use super::*;
use std::cell::RefCell;

thread_local! {
    /// The supplementary groups this thread has now (those it started with until the first
    /// switch), so that a switch to the groups it already has costs no system call.
    static THREAD_GROUPS: RefCell<Option<Arc<[u32]>>> = const { RefCell::new(None) };
}

/// Runs lower-tree operations with the caller's fsuid/fsgid and supplementary groups (when
/// the daemon is root), so the host checks permissions as it would for the caller (group
/// bits by the caller's groups, never the daemon's; chgrp to one of them) and new files
/// belong to the caller. Restores the daemon's ids on drop; the groups stay until the next
/// switch, as with fsuid 0 the daemon's capabilities make them irrelevant.
pub(super) struct Creds {
    active: bool,
}

impl Creds {
    #[allow(unsafe_code)]
    pub(super) fn switch(on: bool, ctx: &Context) -> Creds {
        if !on || ctx.uid == 0 {
            return Creds { active: false };
        }
        let groups = ctx.supplementary_groups();
        THREAD_GROUPS.with(|current| {
            let mut current = current.borrow_mut();
            if current.as_deref() != Some(&groups[..]) {
                set_thread_groups(&groups);
                *current = Some(groups);
            }
        });
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

/// Sets the calling thread's supplementary groups alone: the raw system call, not glibc's
/// `setgroups`, which would change every thread of the daemon. Should it fail, the thread
/// gets no supplementary groups (fewer rights, never the daemon's).
#[allow(unsafe_code)]
fn set_thread_groups(groups: &[u32]) {
    // SAFETY: the pointer and length describe a live slice of gid_t (u32) values that the
    // kernel only reads; the call changes only this thread's credentials.
    let done = unsafe {
        libc::syscall(
            libc::SYS_setgroups,
            groups.len() as libc::size_t,
            groups.as_ptr() as *const libc::gid_t,
        )
    };
    if done != 0 {
        // SAFETY: a zero-length list with a null pointer is valid for setgroups.
        unsafe {
            libc::syscall(
                libc::SYS_setgroups,
                0 as libc::size_t,
                std::ptr::null::<libc::gid_t>(),
            );
        }
    }
}
