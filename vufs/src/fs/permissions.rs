//! Access checks for what the daemon does as itself on a caller's behalf.

use super::*;

impl VuFs {
    /// Reads of SOURCE in union modes are done by the daemon: when it is
    /// root serving another user (allow_other), check read permission
    /// against the view's attributes (vstat included) as the host would.
    pub(super) fn may_read(&self, ctx: &Context, path: &Path, st: Stat) -> Result<()> {
        if !self.acts_for_others(ctx) {
            return Ok(());
        }
        let st = self.merged(path, st);
        if !Caller::of(ctx).may(&st, 0o4) {
            return Err(Errno::EACCES);
        }
        Ok(())
    }

    /// True when the daemon (root) serves a request of another user: what it then does as
    /// itself must first pass that user's access checks.
    pub(super) fn acts_for_others(&self, ctx: &Context) -> bool {
        self.switch_creds && ctx.uid != 0
    }
}
