//! Access checks for what the daemon does as itself on a caller's behalf.

use super::*;
use vufuse_api::acl::{self, Acl};

impl VuFs {
    /// Reads of SOURCE in union modes are done by the daemon: when it is
    /// root serving another user (allow_other), check read permission
    /// against the view's attributes (vstat included) as the host would,
    /// with the file's access ACL when it has one (its owner, mask and other
    /// entries rewritten to a vstat mode, as chmod would have). An ACL that
    /// cannot be read refuses the read: the mode bits may grant more.
    pub(super) fn may_read(&self, ctx: &Context, path: &Path, st: Stat) -> Result<()> {
        if !self.acts_for_others(ctx) {
            return Ok(());
        }
        let shown = self.merged(path, st);
        let caller = Caller::of(ctx);
        let mut acl = self.upper_access_acl(path).map_err(|_| Errno::EACCES)?;
        if let (Some(acl), true) = (acl.as_mut(), shown.st_mode != st.st_mode) {
            acl.chmod(shown.st_mode & 0o777);
        }
        let allowed = caller.may_with(&shown, acl.as_ref(), 0o4);
        if !allowed {
            return Err(Errno::EACCES);
        }
        Ok(())
    }

    /// A file's access ACL as the view shows it: when a vstat entry gives the file another
    /// mode (`nochcopy` chmod), its owner, mask and other entries rewritten to that mode as
    /// chmod would have (the kernel checks with them); unchanged otherwise.
    pub(super) fn acl_as_shown(&self, path: &Path, st: Stat, value: Vec<u8>) -> Vec<u8> {
        let shown = self.merged(path, st);
        if shown.st_mode == st.st_mode {
            return value;
        }
        match Acl::parse(&value) {
            Ok(mut acl) => {
                acl.chmod(shown.st_mode & 0o777);
                acl.to_bytes()
            }
            Err(_) => value,
        }
    }

    /// The access ACL of `path` in SOURCE; None when it has none (or its filesystem keeps
    /// none); an error when one is there and cannot be read or parsed.
    fn upper_access_acl(&self, path: &Path) -> Result<Option<Acl>> {
        let fd = self.open_o_path(self.root(Layer::Upper), path)?;
        let name = OsStr::from_bytes(acl::ACCESS_XATTR);
        acl::access_acl_from(host::get_xattr(&host::proc_path(fd.as_fd()), name))
    }

    /// True when the daemon (root) serves a request of another user: what it then does as
    /// itself must first pass that user's access checks.
    pub(super) fn acts_for_others(&self, ctx: &Context) -> bool {
        self.switch_creds && ctx.uid != 0
    }
}
