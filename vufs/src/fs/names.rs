//! Where a new name is made (lower or SOURCE, by mode) and making it.

use super::*;

impl VuFs {
    /// Where a new name goes: the layer, and whether to act as the caller.
    pub(super) fn create_target(&self, ctx: &Context, path: &Path) -> Result<Layer> {
        match self.route(path) {
            Route::Direct(layer) => Ok(layer),
            Route::Union => match self.mode() {
                Mode::Merge => {
                    if self.in_upper(path) || self.deleted(path) {
                        Err(Errno::EROFS)
                    } else {
                        Ok(Layer::Lower)
                    }
                }
                Mode::Cow => {
                    if self.exists(path) {
                        return Err(Errno::EEXIST);
                    }
                    self.upper_parents(ctx, path)?;
                    Ok(Layer::Upper)
                }
                _ => {
                    if self.exists(path) {
                        return Err(Errno::EEXIST);
                    }
                    if self.deleted(path) {
                        self.upper_parents(ctx, path)?;
                        return Ok(Layer::Upper);
                    }
                    Ok(Layer::Lower)
                }
            },
        }
    }

    /// Runs `make` in the target layer; mincow retries in SOURCE when the
    /// lower tree refuses. Returns the layer the name was made in.
    pub(super) fn make_name(
        &self,
        ctx: &Context,
        path: &Path,
        make: &dyn Fn(BorrowedFd<'_>) -> Result<()>,
    ) -> Result<Layer> {
        let layer = self.create_target(ctx, path)?;
        let direct = self.route(path) != Route::Union;
        if layer == Layer::Lower || direct {
            let result = {
                let _c = self.creds(ctx);
                make(self.root(layer))
            };
            match result {
                Ok(()) => return Ok(layer),
                Err(e)
                    if self.mode() == Mode::Mincow
                        && !direct
                        && errno_is(
                            e,
                            &[Errno::EACCES, Errno::EPERM, Errno::EROFS, Errno::ENOENT],
                        ) =>
                {
                    self.upper_parents(ctx, path)?;
                }
                Err(e) => return Err(e),
            }
        }
        make(self.upper.as_fd())?;
        self.dewhiteout(path);
        Ok(Layer::Upper)
    }
}
