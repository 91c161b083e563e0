//! Access checks for what the daemon does as itself on a caller's behalf.

use super::*;
use vufuse_api::acl::{self, Acl};

impl VuFs {
    /// Reads of SOURCE in union modes are done by the daemon: when it is
    /// root serving another user (allow_other), check read permission
    /// against the view's attributes (vstat included) as the host would,
    /// with the file's access ACL when it has one (and no vstat changed its mode).
    pub(super) fn may_read(&self, ctx: &Context, path: &Path, st: Stat) -> Result<()> {
        if !self.acts_for_others(ctx) {
            return Ok(());
        }
        let shown = self.merged(path, st);
        let caller = Caller::of(ctx);
        let acl = (shown.st_mode == st.st_mode)
            .then(|| self.upper_access_acl(path))
            .flatten();
        let allowed = match &acl {
            Some(acl) => caller.may_by_acl(&shown, acl, 0o4),
            None => caller.may(&shown, 0o4),
        };
        if !allowed {
            return Err(Errno::EACCES);
        }
        Ok(())
    }

    /// The access ACL of `path` in SOURCE; None without one (or when it cannot be read:
    /// the mode bits then decide, which grant no more than the ACL would).
    fn upper_access_acl(&self, path: &Path) -> Option<Acl> {
        let fd = self.open_o_path(self.root(Layer::Upper), path).ok()?;
        let name = OsStr::from_bytes(acl::ACCESS_XATTR);
        let value = host::get_xattr(&host::proc_path(fd.as_fd()), name).ok()?;
        Acl::parse(&value).ok()
    }

    /// True when the daemon (root) serves a request of another user: what it then does as
    /// itself must first pass that user's access checks.
    pub(super) fn acts_for_others(&self, ctx: &Context) -> bool {
        self.switch_creds && ctx.uid != 0
    }
}
